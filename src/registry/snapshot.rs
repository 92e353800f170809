//! The immutable registry view every shard reads.
//!
//! Built whole by the API shard after a change and swapped in atomically through `arc-swap`
//! ([`SnapshotCell`]); a reader holds one only for the length of one decision. Everything a
//! decision needs is precomputed here: backends by id, and per app (and for "any app") the
//! candidates grouped by region.

use super::Backend;
use arc_swap::{ArcSwap, Guard};
use std::collections::HashMap;
use std::sync::Arc;

/// One region's members of a group: (region code, indexes).
pub type RegionMembers = (Box<str>, Box<[u32]>);

/// The candidates of one app (or of every app), as indexes into [`Snapshot::backends`].
#[derive(Debug, Default)]
pub struct AppGroup {
    /// Every member, in id order.
    pub members: Box<[u32]>,
    /// Members per region (lower-case region code), regions in name order.
    pub regions: Box<[RegionMembers]>,
}

impl AppGroup {
    fn build(members: Vec<u32>, backends: &[Arc<Backend>]) -> AppGroup {
        let mut regions: Vec<(Box<str>, Vec<u32>)> = Vec::new();
        for &i in &members {
            let region = backends[i as usize].region.as_str();
            match regions.iter_mut().find(|(r, _)| &**r == region) {
                Some((_, list)) => list.push(i),
                None => regions.push((region.into(), vec![i])),
            }
        }
        regions.sort_by(|a, b| a.0.cmp(&b.0));
        AppGroup {
            members: members.into_boxed_slice(),
            regions: regions
                .into_iter()
                .map(|(r, list)| (r, list.into_boxed_slice()))
                .collect(),
        }
    }

    /// The members in `region`, empty when none.
    #[inline]
    pub fn region(&self, region: &str) -> &[u32] {
        self.regions
            .iter()
            .find(|(r, _)| &**r == region)
            .map(|(_, list)| &**list)
            .unwrap_or(&[])
    }
}

/// An immutable view of the registry.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Increases by one with every publish.
    pub version: u64,
    /// Every backend, sorted by id.
    pub backends: Box<[Arc<Backend>]>,
    by_id: HashMap<Box<str>, u32>,
    apps: HashMap<Box<str>, AppGroup>,
    all: AppGroup,
}

impl Snapshot {
    /// Builds a snapshot from backends sorted by id.
    pub fn build(version: u64, backends: Vec<Arc<Backend>>) -> Snapshot {
        let mut by_id = HashMap::with_capacity(backends.len());
        let mut app_members: HashMap<Box<str>, Vec<u32>> = HashMap::new();
        for (i, b) in backends.iter().enumerate() {
            let i = i as u32;
            by_id.insert(b.id.as_str().into(), i);
            app_members
                .entry(b.app.as_str().into())
                .or_default()
                .push(i);
        }
        let apps = app_members
            .into_iter()
            .map(|(app, members)| (app, AppGroup::build(members, &backends)))
            .collect();
        let all = AppGroup::build((0..backends.len() as u32).collect(), &backends);
        Snapshot {
            version,
            backends: backends.into_boxed_slice(),
            by_id,
            apps,
            all,
        }
    }

    pub fn len(&self) -> usize {
        self.backends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.backends.is_empty()
    }

    #[inline]
    pub fn backend(&self, index: u32) -> &Arc<Backend> {
        &self.backends[index as usize]
    }

    pub fn backend_by_id(&self, id: &str) -> Option<&Arc<Backend>> {
        self.by_id.get(id).map(|&i| &self.backends[i as usize])
    }

    /// The group of `app` (lower-case), if any backend is registered under it.
    #[inline]
    pub fn app(&self, app: &str) -> Option<&AppGroup> {
        self.apps.get(app)
    }

    /// Every app's names, unordered.
    pub fn app_names(&self) -> impl Iterator<Item = &str> {
        self.apps.keys().map(|k| &**k)
    }

    /// Every backend of every app: what a listener that serves any app chooses from.
    #[inline]
    pub fn all(&self) -> &AppGroup {
        &self.all
    }
}

/// The shared slot holding the current snapshot.
pub struct SnapshotCell(ArcSwap<Snapshot>);

impl SnapshotCell {
    /// A cell holding an empty snapshot (version 0).
    pub fn new() -> Self {
        SnapshotCell(ArcSwap::from_pointee(Snapshot::default()))
    }

    /// The current snapshot, cheaply (no reference-count traffic in the common case). Hold the
    /// guard only for the length of one decision.
    #[inline]
    pub fn load(&self) -> Guard<Arc<Snapshot>> {
        self.0.load()
    }

    /// The current snapshot as an owned `Arc`, for holders that outlive one decision.
    pub fn load_full(&self) -> Arc<Snapshot> {
        self.0.load_full()
    }

    pub(super) fn store(&self, snapshot: Arc<Snapshot>) {
        self.0.store(snapshot)
    }
}

impl Default for SnapshotCell {
    fn default() -> Self {
        Self::new()
    }
}
