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

/// Rendezvous groups per app: selection first ranks the groups a backend's key falls into
/// (weighted by the group's members), then the members of the best group (see
/// [`crate::select`]). Fixed, so a re-split of the storage buckets moves no client.
pub const GROUPS: usize = 256;

/// The rendezvous group of a backend key. The same bits as the storage bucket
/// ([`AppGroup::buckets`]): with at most `GROUPS` buckets a group lies in one bucket, with
/// more a bucket lies in one group.
#[inline]
pub fn group_of(key: u64) -> usize {
    (key >> 32) as usize & (GROUPS - 1)
}

/// The members of one group within a [`MemberList`].
#[derive(Debug, Clone, Copy)]
pub struct Run {
    pub group: u32,
    /// Range in [`MemberList::members`].
    pub start: u32,
    pub end: u32,
    /// Sum of the members' weights.
    pub weight: u64,
}

/// One region's (or one country's) members of a bucket, ordered by group, then id.
#[derive(Debug)]
pub struct MemberList {
    /// Region code (lower-case) or country code (upper-case).
    pub name: Box<str>,
    /// Indexes into the bucket's backends.
    pub members: Box<[u32]>,
    /// The members' keys and weights, inline: a group's rendezvous race reads these
    /// contiguous arrays, and touches a `Backend` (a cache miss each, in a large registry)
    /// only for the winner.
    pub keys: Box<[u64]>,
    pub weights: Box<[u32]>,
    /// One run per group present, in group order.
    pub runs: Box<[Run]>,
}

impl MemberList {
    fn build(name: &str, mut members: Vec<u32>, backends: &[Arc<Backend>]) -> MemberList {
        members.sort_by_key(|&i| group_of(backends[i as usize].key));
        let mut runs: Vec<Run> = Vec::new();
        for (pos, &i) in members.iter().enumerate() {
            let b = &backends[i as usize];
            let g = group_of(b.key) as u32;
            match runs.last_mut() {
                Some(r) if r.group == g => {
                    r.end += 1;
                    r.weight += u64::from(b.weight.max(1));
                }
                _ => runs.push(Run {
                    group: g,
                    start: pos as u32,
                    end: pos as u32 + 1,
                    weight: u64::from(b.weight.max(1)),
                }),
            }
        }
        let keys = members.iter().map(|&i| backends[i as usize].key).collect();
        let weights = members
            .iter()
            .map(|&i| backends[i as usize].weight.max(1))
            .collect();
        MemberList {
            name: name.into(),
            members: members.into_boxed_slice(),
            keys,
            weights,
            runs: runs.into_boxed_slice(),
        }
    }

    /// The run of group `g`, if it has members here.
    #[inline]
    pub fn run(&self, g: u32) -> Option<&Run> {
        self.runs
            .binary_search_by_key(&g, |r| r.group)
            .ok()
            .map(|i| &self.runs[i])
    }
}

/// Part of an app's backends, immutable.
#[derive(Debug, Default)]
pub struct Bucket {
    /// Members, in id order.
    backends: Box<[Arc<Backend>]>,
    /// Members per region (lower-case code), regions in name order.
    regions: Box<[MemberList]>,
    /// Members per country (those that declared one), countries in code order.
    countries: Box<[MemberList]>,
}

impl Bucket {
    /// A bucket of `backends` (in id order).
    pub fn build(backends: Vec<Arc<Backend>>) -> Bucket {
        // Grouped by the inline code keys; a code's string is read once per group (and on a
        // key match only for codes too long to be packed exactly).
        fn add<'a>(groups: &mut Vec<(u64, &'a str, Vec<u32>)>, key: u64, code: &'a str, i: u32) {
            let exact = crate::registry::code_key_is_exact(key);
            match groups
                .iter_mut()
                .find(|(k, c, _)| *k == key && (exact || *c == code))
            {
                Some((_, _, list)) => list.push(i),
                None => groups.push((key, code, vec![i])),
            }
        }
        let mut regions: Vec<(u64, &str, Vec<u32>)> = Vec::new();
        let mut countries: Vec<(u64, &str, Vec<u32>)> = Vec::new();
        for (i, b) in backends.iter().enumerate() {
            add(&mut regions, b.region_code, b.region.as_str(), i as u32);
            if b.country_code != 0 {
                if let Some(cc) = b.country.as_deref() {
                    add(&mut countries, b.country_code, cc, i as u32);
                }
            }
        }
        regions.sort_by(|a, b| a.1.cmp(b.1));
        countries.sort_by(|a, b| a.1.cmp(b.1));
        let regions = regions
            .into_iter()
            .map(|(_, r, list)| MemberList::build(r, list, &backends))
            .collect();
        let countries = countries
            .into_iter()
            .map(|(_, c, list)| MemberList::build(c, list, &backends))
            .collect();
        Bucket {
            backends: backends.into_boxed_slice(),
            regions,
            countries,
        }
    }

    /// Members, in id order.
    #[inline]
    pub fn backends(&self) -> &[Arc<Backend>] {
        &self.backends
    }

    /// Member lists per region.
    #[inline]
    pub fn regions(&self) -> &[MemberList] {
        &self.regions
    }

    /// Member lists per country.
    #[inline]
    pub fn countries(&self) -> &[MemberList] {
        &self.countries
    }

    fn region<'a, 'r>(
        &'a self,
        region: &'r str,
    ) -> impl Iterator<Item = &'a Arc<Backend>> + use<'a, 'r> {
        self.regions
            .iter()
            .find(|l| &*l.name == region)
            .map(|l| &*l.members)
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

    /// The buckets holding members of rendezvous group `g` (one when there are at most
    /// [`GROUPS`] buckets; else every bucket of that group).
    #[inline]
    pub fn buckets_of_group(&self, g: usize) -> impl Iterator<Item = &Bucket> + '_ {
        let n = self.buckets.len();
        let (first, step) = if n <= GROUPS {
            (g & (n.max(1) - 1), n.max(1))
        } else {
            (g, GROUPS)
        };
        self.buckets[first.min(n)..]
            .iter()
            .step_by(step)
            .map(|b| &**b)
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
            .flat_map(|b| b.regions.iter().map(|l| &*l.name))
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
