//! The immutable registry view every shard reads.
//!
//! Built by the API shard after a change and swapped in atomically through `arc-swap`
//! ([`SnapshotCell`]); a reader holds one only for the length of one decision.
//!
//! Two levels of sharing keep a publish proportional to the change, not to the registry:
//! - apps are spread over [`APP_SHARDS`] maps by a hash of their name; a publish rebuilds only
//!   the maps of the apps that changed and re-links the others;
//! - an app's backends are spread over buckets (a power of two of them, about
//!   [`BUCKET_TARGET`] backends each, by a hash of the id); a change rebuilds only its bucket.
//!
//! So registering one backend into an app of 50,000 rebuilds one bucket of ~200 and one map of
//! ~1/64 of the apps, instead of everything.

use super::{stable_hash, Backend};
use arc_swap::{ArcSwap, Guard};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

/// Number of app maps a snapshot is split into.
pub const APP_SHARDS: usize = 64;
/// Backends per bucket an app aims for: it doubles its buckets when above twice this.
pub const BUCKET_TARGET: usize = 128;

/// One region's members of a bucket: (region code, indexes into the bucket's backends).
pub type RegionMembers = (Box<str>, Box<[u32]>);

/// Part of an app's backends, immutable.
#[derive(Debug, Default)]
pub struct Bucket {
    /// Members, in id order.
    backends: Box<[Arc<Backend>]>,
    /// Members per region (lower-case code), regions in name order.
    regions: Box<[RegionMembers]>,
}

impl Bucket {
    /// A bucket of `backends` (in id order).
    pub fn build(backends: Vec<Arc<Backend>>) -> Bucket {
        let mut regions: Vec<(Box<str>, Vec<u32>)> = Vec::new();
        for (i, b) in backends.iter().enumerate() {
            let region = b.region.as_str();
            match regions.iter_mut().find(|(r, _)| &**r == region) {
                Some((_, list)) => list.push(i as u32),
                None => regions.push((region.into(), vec![i as u32])),
            }
        }
        regions.sort_by(|a, b| a.0.cmp(&b.0));
        Bucket {
            backends: backends.into_boxed_slice(),
            regions: regions
                .into_iter()
                .map(|(r, list)| (r, list.into_boxed_slice()))
                .collect(),
        }
    }

    fn region<'a, 'r>(
        &'a self,
        region: &'r str,
    ) -> impl Iterator<Item = &'a Arc<Backend>> + use<'a, 'r> {
        self.regions
            .iter()
            .find(|(r, _)| &**r == region)
            .map(|(_, list)| &**list)
            .unwrap_or(&[])
            .iter()
            .map(move |&i| &self.backends[i as usize])
    }
}

/// The backends of one app, immutable.
#[derive(Debug)]
pub struct AppGroup {
    name: Arc<str>,
    buckets: Box<[Arc<Bucket>]>,
    len: usize,
}

impl AppGroup {
    /// The group of `name` made of `buckets` (as many as the registry keeps for the app).
    pub fn new(name: Arc<str>, buckets: Box<[Arc<Bucket>]>) -> AppGroup {
        let len = buckets.iter().map(|b| b.backends.len()).sum();
        AppGroup { name, buckets, len }
    }

    /// The app's name (lower-case).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Number of backends.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The buckets, for a publish that reuses the unchanged ones.
    pub fn buckets(&self) -> &[Arc<Bucket>] {
        &self.buckets
    }

    /// Every member (bucket by bucket; within a bucket in id order).
    #[inline]
    pub fn backends(&self) -> impl Iterator<Item = &Arc<Backend>> + '_ {
        self.buckets.iter().flat_map(|b| b.backends.iter())
    }

    /// The members in `region`.
    #[inline]
    pub fn region<'a, 'r>(
        &'a self,
        region: &'r str,
    ) -> impl Iterator<Item = &'a Arc<Backend>> + use<'a, 'r> {
        self.buckets.iter().flat_map(move |b| b.region(region))
    }

    /// The member with this id: its bucket by the id's hash (as the registry places it), then
    /// a binary search within the bucket (kept in id order). For DNS `<id>.vm.<app>` names.
    pub fn get(&self, id: &str) -> Option<&Arc<Backend>> {
        let n = self.buckets.len();
        if n == 0 {
            return None;
        }
        let i = (stable_hash(id.as_bytes()) >> 32) as usize & (n - 1);
        let bucket = &self.buckets.get(i)?.backends;
        bucket
            .binary_search_by(|b| b.id.as_str().cmp(id))
            .ok()
            .map(|at| &bucket[at])
    }

    /// The region codes that have members, in name order.
    pub fn region_names(&self) -> BTreeSet<&str> {
        self.buckets
            .iter()
            .flat_map(|b| b.regions.iter().map(|(r, _)| &**r))
            .collect()
    }
}

type AppMap = HashMap<Arc<str>, Arc<AppGroup>>;

/// Which of the app maps holds `app`.
#[inline]
pub fn app_shard(app: &str) -> usize {
    (stable_hash(app.as_bytes()) as usize) % APP_SHARDS
}

/// An immutable view of the registry.
#[derive(Debug)]
pub struct Snapshot {
    /// Increases by one with every publish.
    pub version: u64,
    apps: Box<[Arc<AppMap>]>,
    len: usize,
}

impl Default for Snapshot {
    fn default() -> Self {
        Snapshot {
            version: 0,
            apps: (0..APP_SHARDS).map(|_| Arc::new(AppMap::new())).collect(),
            len: 0,
        }
    }
}

impl Snapshot {
    /// The next snapshot after `prev`: `changed` gives each app whose membership changed, with
    /// its new group (`None` = the app is gone). Everything else is shared with `prev`.
    pub fn next(
        prev: &Snapshot,
        version: u64,
        changed: impl IntoIterator<Item = (Arc<str>, Option<Arc<AppGroup>>)>,
    ) -> Snapshot {
        let mut apps: Vec<Arc<AppMap>> = prev.apps.to_vec();
        let mut len = prev.len;
        let mut copied = [false; APP_SHARDS];
        for (name, group) in changed {
            let s = app_shard(&name);
            if !copied[s] {
                apps[s] = Arc::new((*apps[s]).clone());
                copied[s] = true;
            }
            let map = Arc::get_mut(&mut apps[s]).expect("a fresh copy is not shared");
            let old = match group {
                Some(g) => {
                    len += g.len();
                    map.insert(name, g)
                }
                None => map.remove(&name),
            };
            len -= old.map_or(0, |g| g.len());
        }
        Snapshot {
            version,
            apps: apps.into_boxed_slice(),
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
        self.app_arc(app).map(|g| &**g)
    }

    /// The shared group of `app`, for a publish that reuses its unchanged buckets.
    pub fn app_arc(&self, app: &str) -> Option<&Arc<AppGroup>> {
        self.apps[app_shard(app)].get(app)
    }

    /// Every app's group, unordered.
    pub fn groups(&self) -> impl Iterator<Item = &AppGroup> + '_ {
        self.apps.iter().flat_map(|m| m.values().map(|g| &**g))
    }

    /// Finds a backend by id: a scan, for tests and tools, never for the data plane.
    pub fn find(&self, id: &str) -> Option<&Arc<Backend>> {
        self.groups()
            .flat_map(|g| g.backends())
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
