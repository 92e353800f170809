//! The immutable registry view every shard reads.
//!
//! Built by the API shard after a change and swapped in atomically through `arc-swap`
//! ([`SnapshotCell`]); a reader holds one only for the length of one decision.
//!
//! A snapshot is a map from app name to an immutable [`AppGroup`] (the app's backends, grouped
//! by region), shared by `Arc` between successive snapshots. A publish rebuilds only the groups
//! of the apps that changed and re-links the others, so its cost is the size of the changed
//! apps plus one pointer per app, not the size of the registry.

use super::Backend;
use arc_swap::{ArcSwap, Guard};
use std::collections::HashMap;
use std::sync::Arc;

/// One region's members of a group: (region code, indexes into the group's backends).
pub type RegionMembers = (Box<str>, Box<[u32]>);

/// The backends of one app, immutable.
#[derive(Debug)]
pub struct AppGroup {
    name: Arc<str>,
    /// Every member, in id order.
    backends: Box<[Arc<Backend>]>,
    /// Members per region (lower-case region code), regions in name order.
    regions: Box<[RegionMembers]>,
}

impl AppGroup {
    /// Builds the group of `name` from its backends in id order.
    pub fn build(name: Arc<str>, backends: Vec<Arc<Backend>>) -> AppGroup {
        let mut regions: Vec<(Box<str>, Vec<u32>)> = Vec::new();
        for (i, b) in backends.iter().enumerate() {
            let region = b.region.as_str();
            match regions.iter_mut().find(|(r, _)| &**r == region) {
                Some((_, list)) => list.push(i as u32),
                None => regions.push((region.into(), vec![i as u32])),
            }
        }
        regions.sort_by(|a, b| a.0.cmp(&b.0));
        AppGroup {
            name,
            backends: backends.into_boxed_slice(),
            regions: regions
                .into_iter()
                .map(|(r, list)| (r, list.into_boxed_slice()))
                .collect(),
        }
    }

    /// The app's name (lower-case).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Every member, in id order.
    #[inline]
    pub fn backends(&self) -> &[Arc<Backend>] {
        &self.backends
    }

    /// The members in `region`.
    #[inline]
    pub fn region(&self, region: &str) -> impl Iterator<Item = &Arc<Backend>> + '_ {
        self.regions
            .iter()
            .find(|(r, _)| &**r == region)
            .map(|(_, list)| &**list)
            .unwrap_or(&[])
            .iter()
            .map(move |&i| &self.backends[i as usize])
    }

    /// The region codes that have members, in name order.
    pub fn region_names(&self) -> impl Iterator<Item = &str> {
        self.regions.iter().map(|(r, _)| &**r)
    }
}

/// An immutable view of the registry.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Increases by one with every publish.
    pub version: u64,
    apps: HashMap<Arc<str>, Arc<AppGroup>>,
    /// Every group, for listeners that serve any app (unordered).
    groups: Box<[Arc<AppGroup>]>,
    len: usize,
}

impl Snapshot {
    /// The next snapshot after `prev`: `changed` lists the apps whose membership changed, each
    /// with its new members in id order (empty = the app is gone).
    pub fn next(
        prev: &Snapshot,
        version: u64,
        changed: impl IntoIterator<Item = (Arc<str>, Vec<Arc<Backend>>)>,
    ) -> Snapshot {
        let mut apps = prev.apps.clone();
        for (name, members) in changed {
            if members.is_empty() {
                apps.remove(&name);
            } else {
                apps.insert(name.clone(), Arc::new(AppGroup::build(name, members)));
            }
        }
        let groups: Box<[Arc<AppGroup>]> = apps.values().cloned().collect();
        let len = groups.iter().map(|g| g.backends.len()).sum();
        Snapshot {
            version,
            apps,
            groups,
            len,
        }
    }

    /// Number of backends.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The group of `app` (lower-case), if any backend is registered under it.
    #[inline]
    pub fn app(&self, app: &str) -> Option<&AppGroup> {
        self.apps.get(app).map(|g| &**g)
    }

    /// Every app's group, unordered.
    #[inline]
    pub fn groups(&self) -> &[Arc<AppGroup>] {
        &self.groups
    }

    /// Finds a backend by id: a scan, for tests and tools, never for the data plane.
    pub fn find(&self, id: &str) -> Option<&Arc<Backend>> {
        self.groups
            .iter()
            .flat_map(|g| g.backends.iter())
            .find(|b| b.id == id)
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
