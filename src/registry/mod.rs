//! The registry of backends.
//!
//! - [`Registry`] is owned by the API shard alone (it is `!Sync` by use, not by type: nothing else
//!   holds a `&mut`). Every mutation is followed by [`Registry::publish`], which builds a new
//!   immutable [`Snapshot`] and stores it into the shared [`SnapshotCell`].
//! - [`Snapshot`] is what the data plane reads: every shard loads the current one for the length
//!   of one decision, never mutates it, never waits for it.
//! - [`BackendLive`] is the small part of a backend that changes without a republish: the
//!   heartbeat deadline and the health state (written by the API shard only), and per shard the
//!   live connection count and the failed-connect counts (each slot written by its own shard
//!   only). All are relaxed atomics: single writer, no lock.

mod snapshot;

pub use snapshot::{group_of, AppGroup, Bucket, MemberList, Run, Snapshot, SnapshotCell, GROUPS};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use crate::health::{CheckKind, CheckSpec, Reason, State, Why};
use crate::store::{Record, StoredBackend};

/// A backend as registered: what the API accepted, plus bookkeeping.
#[derive(Debug)]
pub struct Backend {
    pub id: String,
    /// App name, lower-cased (DNS names are case-insensitive).
    pub app: String,
    /// Region code, lower-cased (`sa`, `us`, `eu`, `ap`, or finer codes).
    pub region: String,
    /// ISO country code, upper-cased, when given.
    pub country: Option<String>,
    pub ip: IpAddr,
    pub port: u16,
    /// Relative share of traffic within a tier, 1..=100.
    pub weight: u32,
    /// Connections at which the backend is loaded: it then ranks after every unloaded backend
    /// of its tier (see [`crate::select`]).
    pub soft_limit: Option<u32>,
    /// Connections (over all shards) at which the backend takes no more new ones.
    pub hard_limit: Option<u32>,
    /// Heartbeat TTL for this backend: `None` = the hub's default, `Some(0)` = never expires.
    pub ttl_secs: Option<u64>,
    /// The ALPN protocols the backend speaks, as registered; `None` = `http/1.1` only
    /// (see [`Backend::speaks`]).
    pub alpn: Option<Vec<String>>,
    /// The backend's own health-check settings, as registered (`None`: the hub's).
    pub check: Option<CheckSpec>,
    /// Wall-clock registration time (Unix ms) of the first registration of this id.
    pub registered_unix_ms: u64,
    /// A stable 64-bit hash of `id`: the backend's key for rendezvous hashing.
    pub key: u64,
    /// `region` and `country` as [`code_key`]s, inline: a snapshot build groups members by
    /// these without reading the strings, each a separate allocation (a cache miss per member
    /// in a large registry: 14 % of the API shard's CPU under a registration load).
    pub region_code: u64,
    pub country_code: u64,
    pub live: Arc<BackendLive>,
}

/// A region or country code as a `u64`: up to 7 bytes packed with their length in the top
/// byte (equal keys mean equal codes), or for a longer code its hash with the top bit set
/// (equal keys then need a string compare). 0 for no code.
pub fn code_key(code: Option<&str>) -> u64 {
    let Some(code) = code else { return 0 };
    let b = code.as_bytes();
    if b.len() <= 7 {
        let mut k = [0u8; 8];
        k[..b.len()].copy_from_slice(b);
        k[7] = b.len() as u8 | 0x40;
        u64::from_le_bytes(k)
    } else {
        stable_hash(b) | 1 << 63
    }
}

/// Whether equal [`code_key`]s are enough to say two codes are equal.
#[inline]
pub fn code_key_is_exact(k: u64) -> bool {
    k >> 63 == 0
}

impl Backend {
    /// Whether the backend's heartbeat deadline is still ahead at `now_ms`.
    #[inline]
    pub fn alive(&self, now_ms: u64) -> bool {
        now_ms < self.live.expires_at_ms.load(Ordering::Relaxed)
    }

    /// Live connections to this backend summed over every shard.
    #[inline]
    pub fn connections(&self) -> u32 {
        self.live.connections()
    }

    /// Whether the heartbeat is current and health checks say it is up.
    #[inline]
    pub fn healthy(&self, now_ms: u64) -> bool {
        self.alive(now_ms) && self.live.is_up()
    }

    /// Whether one more connection would stay within the hard limit: counting connections
    /// being opened (reserved, see [`Backend::try_reserve`]) as well as open ones.
    #[inline]
    pub fn has_capacity(&self) -> bool {
        match self.hard_limit {
            Some(limit) => {
                self.live.reserved.load(Ordering::Relaxed) < limit
                    && self.live.connections() < limit
            }
            None => true,
        }
    }

    /// Takes one of the hard limit's slots before connecting, so that shards picking at the
    /// same moment cannot together exceed it (a compare-and-swap on one counter per limited
    /// backend). `false` at the limit. A backend without a hard limit reserves nothing (no
    /// shared write on its hot path) and always succeeds. Give the slot back with
    /// [`Backend::release`] when the connection fails or closes.
    #[inline]
    pub fn try_reserve(&self) -> Reserved {
        let Some(limit) = self.hard_limit else {
            return Reserved::Unlimited;
        };
        if self.live.connections() >= limit {
            return Reserved::Full;
        }
        let r = &self.live.reserved;
        let mut cur = r.load(Ordering::Relaxed);
        loop {
            if cur >= limit {
                return Reserved::Full;
            }
            match r.compare_exchange_weak(cur, cur + 1, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return Reserved::Slot,
                Err(now) => cur = now,
            }
        }
    }

    /// Gives back a slot taken by [`Backend::try_reserve`] (`Reserved::Slot` only).
    #[inline]
    pub fn release(&self) {
        self.live.reserved.fetch_sub(1, Ordering::AcqRel);
    }

    /// Whether the backend is at or above its soft limit (ranks after unloaded ones).
    #[inline]
    pub fn soft_loaded(&self, load: u32) -> bool {
        self.soft_limit.is_some_and(|soft| load >= soft)
    }

    /// Whether the backend speaks the ALPN protocol `proto`. A backend that declared no list is
    /// taken to speak `http/1.1` only: what an HTTP backend that knows nothing of ALPN speaks.
    #[inline]
    pub fn speaks(&self, proto: &[u8]) -> bool {
        match &self.alpn {
            None => proto == DEFAULT_ALPN.as_bytes(),
            Some(list) => list.iter().any(|p| p.as_bytes() == proto),
        }
    }

    /// Whether this backend may be given new traffic at `now_ms`.
    #[inline]
    pub fn eligible(&self, now_ms: u64) -> bool {
        self.alive(now_ms)
            && self.live.is_up()
            && !self.live.draining.load(Ordering::Relaxed)
            && self.has_capacity()
    }
}

/// What [`Backend::try_reserve`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Reserved {
    /// A slot of the hard limit: release it when done.
    Slot,
    /// No hard limit: nothing to release.
    Unlimited,
    /// At the hard limit.
    Full,
}

/// The protocol of a backend that declares no `alpn`.
pub const DEFAULT_ALPN: &str = "http/1.1";

/// One shard's counters for one backend, on their own cache line so shards never write the
/// same line. Written by that shard only.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct ShardSlot {
    /// Live forwarded connections.
    conns: AtomicU32,
    /// Failed connects since this shard's last successful one.
    fail_streak: AtomicU32,
    /// Failed connects, ever.
    failures: AtomicU64,
    /// Wall-clock time (Unix ms) of the last failed connect; 0 = none.
    last_failure_unix_ms: AtomicU64,
}

/// The mutable-without-republish state of a backend (see the module docs).
#[derive(Debug)]
pub struct BackendLive {
    /// Process-clock ms after which the backend is no longer served; `u64::MAX` = never.
    pub expires_at_ms: AtomicU64,
    /// Wall-clock ms (Unix) of the last heartbeat or registration: for display and persistence;
    /// liveness uses `expires_at_ms`, which is monotonic.
    pub last_heartbeat_unix_ms: AtomicU64,
    /// Set while draining: no new connections or DNS answers.
    pub draining: AtomicBool,
    /// The health [`State`] (API shard only: [`BackendLive::set_health`]).
    health: AtomicU8,
    /// Why, as [`Why::pack`].
    health_why: AtomicU32,
    /// Wall-clock ms (Unix) the health state was entered.
    health_since_unix_ms: AtomicU64,
    /// The effective check kind (API shard only), for display.
    check_kind: AtomicU8,
    /// Consecutive failed active checks (API shard only), for display.
    pub check_failures: AtomicU32,
    /// Ejections in the current series (API shard only), for display.
    pub ejections: AtomicU32,
    /// Connections open or being opened to a backend with a hard limit, over every shard:
    /// the one counter shards share, and only for limited backends (see
    /// [`Backend::try_reserve`]).
    pub reserved: AtomicU32,
    /// Per-shard counters, each written only by its shard.
    slots: Box<[ShardSlot]>,
}

impl BackendLive {
    pub fn new(shards: usize) -> Self {
        BackendLive {
            expires_at_ms: AtomicU64::new(u64::MAX),
            last_heartbeat_unix_ms: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            health: AtomicU8::new(State::Up as u8),
            health_why: AtomicU32::new(Why::new(Reason::Registered).pack()),
            health_since_unix_ms: AtomicU64::new(crate::clock::unix_ms()),
            check_kind: AtomicU8::new(CheckKind::Tcp as u8),
            check_failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            reserved: AtomicU32::new(0),
            slots: (0..shards.max(1)).map(|_| ShardSlot::default()).collect(),
        }
    }

    pub fn connections(&self) -> u32 {
        self.slots
            .iter()
            .map(|c| c.conns.load(Ordering::Relaxed))
            .fold(0u32, u32::saturating_add)
    }

    /// The connection counter of shard `shard`. Only that shard may modify it.
    #[inline]
    pub fn shard_counter(&self, shard: usize) -> &AtomicU32 {
        &self.slot(shard).conns
    }

    #[inline]
    fn slot(&self, shard: usize) -> &ShardSlot {
        &self.slots[shard % self.slots.len()]
    }

    /// Whether health checks let the backend be served.
    #[inline]
    pub fn is_up(&self) -> bool {
        self.health.load(Ordering::Relaxed) == State::Up as u8
    }

    pub fn health(&self) -> State {
        State::from_u8(self.health.load(Ordering::Relaxed))
    }

    /// Why the backend is in its health state.
    pub fn health_why(&self) -> Why {
        Why::unpack(self.health_why.load(Ordering::Relaxed))
    }

    /// Since when (Unix ms) the backend is in its health state.
    pub fn health_since_unix_ms(&self) -> u64 {
        self.health_since_unix_ms.load(Ordering::Relaxed)
    }

    /// Enters `state` for `why` (API shard only). The time is kept when the state stays.
    pub fn set_health(&self, state: State, why: Why) {
        if self.health() != state {
            self.health_since_unix_ms
                .store(crate::clock::unix_ms(), Ordering::Relaxed);
        }
        self.health_why.store(why.pack(), Ordering::Relaxed);
        self.health.store(state as u8, Ordering::Relaxed);
    }

    pub fn check_kind(&self) -> CheckKind {
        match self.check_kind.load(Ordering::Relaxed) {
            0 => CheckKind::Tcp,
            1 => CheckKind::Http,
            _ => CheckKind::None,
        }
    }

    /// Notes the effective check kind (API shard only).
    pub fn set_check_kind(&self, kind: CheckKind) {
        self.check_kind.store(kind as u8, Ordering::Relaxed);
    }

    /// Counts a failed connect by shard `shard` (that shard only; single writer, so a load and a
    /// store, no locked instruction).
    #[inline]
    pub fn connect_failed(&self, shard: usize, now_unix_ms: u64) {
        let s = self.slot(shard);
        let streak = s.fail_streak.load(Ordering::Relaxed);
        s.fail_streak
            .store(streak.saturating_add(1), Ordering::Relaxed);
        let total = s.failures.load(Ordering::Relaxed);
        s.failures.store(total + 1, Ordering::Relaxed);
        s.last_failure_unix_ms.store(now_unix_ms, Ordering::Relaxed);
    }

    /// Notes a successful connect by shard `shard` (that shard only): its streak ends.
    #[inline]
    pub fn connect_succeeded(&self, shard: usize) {
        let s = self.slot(shard);
        if s.fail_streak.load(Ordering::Relaxed) != 0 {
            s.fail_streak.store(0, Ordering::Relaxed);
        }
    }

    /// Failed connects since each shard's last successful one, summed over shards.
    pub fn failure_streak(&self) -> u32 {
        self.slots
            .iter()
            .map(|s| s.fail_streak.load(Ordering::Relaxed))
            .fold(0u32, u32::saturating_add)
    }

    /// Failed connects, ever, over every shard.
    pub fn connect_failures(&self) -> u64 {
        self.slots
            .iter()
            .map(|s| s.failures.load(Ordering::Relaxed))
            .sum()
    }

    /// The last failed connect on any shard (Unix ms), if any.
    pub fn last_connect_failure_unix_ms(&self) -> Option<u64> {
        self.slots
            .iter()
            .map(|s| s.last_failure_unix_ms.load(Ordering::Relaxed))
            .max()
            .filter(|&t| t != 0)
    }
}

/// A registration as validated by the API, before it becomes a [`Backend`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendSpec {
    pub id: String,
    pub app: String,
    pub region: String,
    pub country: Option<String>,
    pub ip: IpAddr,
    pub port: u16,
    pub weight: u32,
    pub soft_limit: Option<u32>,
    pub hard_limit: Option<u32>,
    pub ttl_secs: Option<u64>,
    /// ALPN protocols the backend speaks (`None`: `http/1.1` only).
    pub alpn: Option<Vec<String>>,
    /// Health-check override (`None`: the hub's settings).
    pub check: Option<CheckSpec>,
}

impl BackendSpec {
    /// A registration with the required fields and every optional one at its default
    /// (weight 1, no limits, the hub's TTL).
    pub fn new(id: &str, app: &str, region: &str, ip: IpAddr, port: u16) -> BackendSpec {
        BackendSpec {
            id: id.into(),
            app: app.into(),
            region: region.into(),
            country: None,
            ip,
            port,
            weight: 1,
            soft_limit: None,
            hard_limit: None,
            ttl_secs: None,
            alpn: None,
            check: None,
        }
    }
}

/// Whether a registration created a backend or updated an existing id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registered {
    Created,
    Updated,
}

/// What one sweep of the registry did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Sweep {
    /// Ids that missed their heartbeat since the last sweep (now unhealthy).
    pub expired: Vec<String>,
    /// Ids deleted because they stayed unhealthy past the grace period.
    pub removed: Vec<String>,
}

/// The mutable registry. Lives on the API shard; see the module docs.
pub struct Registry {
    backends: BTreeMap<String, Arc<Backend>>,
    /// The same backends grouped by app, each group in id order.
    apps: HashMap<Arc<str>, AppMembers>,
    /// Apps whose membership changed since the last publish.
    dirty_apps: BTreeMap<Arc<str>, Dirty>,
    /// The last published snapshot, which the next one is built from.
    current: Arc<Snapshot>,
    /// Changes not yet handed to persistence (see [`Registry::take_journal`]).
    journal: Vec<Record>,
    /// Whether changes are journaled at all (off without persistence).
    journaling: bool,
    /// Ids already reported as expired (so each expiry is logged once).
    expired: BTreeMap<String, ()>,
    /// Ids registered or updated since the health checker last looked
    /// ([`Registry::take_health_changes`]).
    health_changes: Vec<String>,
    shards: usize,
    default_ttl_ms: u64,
    grace_ms: u64,
    version: u64,
    dirty: bool,
    cell: Arc<SnapshotCell>,
}

/// One app's backends in the registry, split into buckets by id hash (see
/// [`snapshot::BUCKET_TARGET`]): a change rebuilds one bucket of the app's snapshot group.
#[derive(Default)]
struct AppMembers {
    buckets: Vec<BTreeMap<String, Arc<Backend>>>,
    len: usize,
}

/// Which buckets of an app changed since the last publish.
#[derive(Default)]
struct Dirty {
    all: bool,
    buckets: BTreeSet<usize>,
}

/// What a membership change touched.
enum Touched {
    Bucket(usize),
    /// The buckets were re-split: every one changed.
    All,
}

impl Dirty {
    fn add(&mut self, t: Touched) {
        match t {
            Touched::Bucket(i) => {
                self.buckets.insert(i);
            }
            Touched::All => self.all = true,
        }
    }

    fn contains(&self, i: usize) -> bool {
        self.all || self.buckets.contains(&i)
    }
}

impl AppMembers {
    fn bucket_of(&self, key: u64) -> usize {
        // The low bits feed the rendezvous score mixing too, but a bucket only groups storage.
        (key >> 32) as usize & (self.buckets.len() - 1)
    }

    fn insert(&mut self, b: &Arc<Backend>) -> Touched {
        if self.buckets.is_empty() {
            self.buckets.push(BTreeMap::new());
        }
        let i = self.bucket_of(b.key);
        if self.buckets[i].insert(b.id.clone(), b.clone()).is_none() {
            self.len += 1;
        }
        if self.len > 2 * snapshot::BUCKET_TARGET * self.buckets.len() {
            self.resplit(self.buckets.len() * 2);
            return Touched::All;
        }
        Touched::Bucket(i)
    }

    fn remove(&mut self, b: &Backend) -> Touched {
        let i = self.bucket_of(b.key);
        if self.buckets[i].remove(&b.id).is_some() {
            self.len -= 1;
        }
        if self.buckets.len() > 1 && self.len < snapshot::BUCKET_TARGET * self.buckets.len() / 4 {
            self.resplit(self.buckets.len() / 2);
            return Touched::All;
        }
        Touched::Bucket(i)
    }

    fn resplit(&mut self, n: usize) {
        let old = std::mem::take(&mut self.buckets);
        self.buckets = (0..n).map(|_| BTreeMap::new()).collect();
        for (id, b) in old.into_iter().flatten() {
            let i = self.bucket_of(b.key);
            self.buckets[i].insert(id, b);
        }
    }
}

/// `spec`'s region as selection knows it: lower-case, a POP code replaced by its region
/// (`GRU` → `sa`). The API refuses unknown codes; records restored from disk or received from
/// a peer keep theirs (lower-cased) rather than be dropped: such a backend is reached by its own
/// region's clients and by the "any" tier.
fn canonical_region(region: &str) -> String {
    match crate::geo::current().regions().resolve(region) {
        Ok((r, _)) => r.to_string(),
        Err(_) => region.to_ascii_lowercase(),
    }
}

/// The stored form of a backend.
pub fn stored(b: &Backend) -> StoredBackend {
    StoredBackend {
        id: b.id.clone(),
        app: b.app.clone(),
        region: b.region.clone(),
        country: b.country.clone(),
        ip: b.ip,
        port: b.port,
        weight: b.weight,
        soft_limit: b.soft_limit,
        hard_limit: b.hard_limit,
        ttl_secs: b.ttl_secs,
        alpn: b.alpn.clone(),
        check: b.check.clone().map(Box::new),
        registered_unix_ms: b.registered_unix_ms,
        last_heartbeat_unix_ms: b.live.last_heartbeat_unix_ms.load(Ordering::Relaxed),
        draining: b.live.draining.load(Ordering::Relaxed),
        // Versions live in the replica (`cluster::replicate`), which stamps them on the way
        // to the store.
        hlc: 0,
        origin: 0,
    }
}

/// A 64-bit FNV-1a hash followed by a finalizer: stable across runs and processes, so a client
/// is sent to the same backend by every shard and after every restart.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    mix64(h)
}

/// The splitmix64 finalizer: spreads every input bit over the whole output.
#[inline]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Registry {
    /// A registry for `shards` shards publishing into `cell`. `default_ttl_secs` is the heartbeat
    /// TTL of backends that set none (0 = never expire); `grace_secs` how long an expired
    /// backend is kept (unhealthy) before it is deleted.
    pub fn new(
        shards: usize,
        default_ttl_secs: u64,
        grace_secs: u64,
        cell: Arc<SnapshotCell>,
    ) -> Self {
        let current = cell.load_full();
        Registry {
            backends: BTreeMap::new(),
            apps: HashMap::new(),
            dirty_apps: BTreeMap::new(),
            current,
            journal: Vec::new(),
            journaling: false,
            expired: BTreeMap::new(),
            health_changes: Vec::new(),
            shards: shards.max(1),
            default_ttl_ms: default_ttl_secs.saturating_mul(1000),
            grace_ms: grace_secs.saturating_mul(1000),
            version: 0,
            dirty: false,
            cell,
        }
    }

    fn ttl_ms(&self, backend_ttl_secs: Option<u64>) -> u64 {
        match backend_ttl_secs {
            Some(secs) => secs.saturating_mul(1000),
            None => self.default_ttl_ms,
        }
    }

    fn deadline(&self, ttl_ms: u64, now_ms: u64) -> u64 {
        if ttl_ms == 0 {
            u64::MAX
        } else {
            now_ms.saturating_add(ttl_ms)
        }
    }

    /// Registers or updates `spec.id`. Idempotent: re-registering updates in place, keeps the
    /// live connection counts and the first registration time, and renews the heartbeat.
    pub fn register(&mut self, spec: BackendSpec, now_ms: u64) -> Registered {
        let now_unix = crate::clock::unix_ms();
        let ttl_ms = self.ttl_ms(spec.ttl_secs);
        let deadline = self.deadline(ttl_ms, now_ms);
        self.insert(spec, deadline, None, now_unix)
    }

    /// Inserts or replaces a backend with the given heartbeat deadline and times. `registered`
    /// is the first registration time to keep (`None`: the existing one, or now).
    fn insert(
        &mut self,
        spec: BackendSpec,
        deadline: u64,
        registered: Option<u64>,
        last_heartbeat_unix: u64,
    ) -> Registered {
        let (outcome, live, registered_unix_ms) = match self.backends.get(&spec.id) {
            Some(old) => {
                let old = old.clone();
                self.leave_app(&old);
                (
                    Registered::Updated,
                    old.live.clone(),
                    registered.unwrap_or(old.registered_unix_ms),
                )
            }
            None => (
                Registered::Created,
                Arc::new(BackendLive::new(self.shards)),
                registered.unwrap_or(last_heartbeat_unix),
            ),
        };
        live.expires_at_ms.store(deadline, Ordering::Relaxed);
        live.last_heartbeat_unix_ms
            .store(last_heartbeat_unix, Ordering::Relaxed);
        live.draining.store(false, Ordering::Relaxed);
        self.expired.remove(&spec.id);
        let region = canonical_region(&spec.region);
        let country = spec.country.map(|c| c.to_ascii_uppercase());
        let backend = Backend {
            key: stable_hash(spec.id.as_bytes()),
            id: spec.id,
            app: spec.app.to_ascii_lowercase(),
            region_code: code_key(Some(&region)),
            country_code: code_key(country.as_deref()),
            region,
            country,
            ip: spec.ip,
            port: spec.port,
            weight: spec.weight,
            soft_limit: spec.soft_limit,
            hard_limit: spec.hard_limit,
            ttl_secs: spec.ttl_secs,
            alpn: spec.alpn,
            check: spec.check,
            registered_unix_ms,
            live,
        };
        let backend = Arc::new(backend);
        if self.journaling {
            self.journal.push(Record::Put(stored(&backend)));
        }
        self.join_app(&backend);
        self.health_changes.push(backend.id.clone());
        self.backends.insert(backend.id.clone(), backend);
        self.dirty = true;
        outcome
    }

    /// Renews the heartbeat of `id`. Needs no republish: the deadline is an atomic every shard
    /// reads at decision time, so a backend that had expired is served again at once.
    pub fn heartbeat(&mut self, id: &str, now_ms: u64) -> bool {
        let Some(backend) = self.backends.get(id) else {
            return false;
        };
        let deadline = self.deadline(self.ttl_ms(backend.ttl_secs), now_ms);
        let now_unix = crate::clock::unix_ms();
        backend
            .live
            .expires_at_ms
            .store(deadline, Ordering::Relaxed);
        backend
            .live
            .last_heartbeat_unix_ms
            .store(now_unix, Ordering::Relaxed);
        if self.journaling {
            self.journal.push(Record::Beat {
                id: id.to_string(),
                at: now_unix,
            });
        }
        self.expired.remove(id);
        true
    }

    /// Removes `id`. Returns whether it existed.
    pub fn deregister(&mut self, id: &str) -> bool {
        let Some(old) = self.backends.remove(id) else {
            return false;
        };
        self.leave_app(&old);
        if self.journaling {
            self.journal.push(Record::Del { id: id.to_string() });
        }
        self.expired.remove(id);
        self.health_changes.push(id.to_string());
        self.dirty = true;
        true
    }

    /// Drains `id`: no new connections or DNS answers from now on, while its open connections
    /// run to their end. Lifted by re-registering. Needs no republish (an atomic every shard
    /// reads at decision time), but is persisted. Returns whether the id exists.
    pub fn drain(&mut self, id: &str) -> bool {
        let Some(backend) = self.backends.get(id) else {
            return false;
        };
        backend.live.draining.store(true, Ordering::Relaxed);
        if self.journaling {
            self.journal.push(Record::Put(stored(backend)));
        }
        // Marked as a change so the answer waits for the record to be durable.
        self.dirty = true;
        true
    }

    /// The ids registered, updated or removed since the last call, for the health checker
    /// (a removed one is missing from the registry when the checker looks it up).
    pub fn take_health_changes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.health_changes)
    }

    /// Turns on journaling: from now on every change is also recorded for persistence.
    pub fn enable_journal(&mut self) {
        self.journaling = true;
    }

    /// The changes since the last call, oldest first, for persistence.
    pub fn take_journal(&mut self) -> Vec<Record> {
        std::mem::take(&mut self.journal)
    }

    /// Loads backends found on disk at startup. Heartbeat ages carry over: a backend whose TTL
    /// ran out while the hub was down is restored expired (kept, shown unhealthy, not served)
    /// until it heartbeats. Nothing is journaled (it is on disk already).
    pub fn restore(&mut self, stored: impl IntoIterator<Item = StoredBackend>, now_ms: u64) {
        let now_unix = crate::clock::unix_ms();
        let journaling = std::mem::replace(&mut self.journaling, false);
        for b in stored {
            let ttl_ms = self.ttl_ms(b.ttl_secs);
            let age = now_unix.saturating_sub(b.last_heartbeat_unix_ms);
            let deadline = if ttl_ms == 0 {
                u64::MAX
            } else if age >= ttl_ms {
                0
            } else {
                now_ms + (ttl_ms - age)
            };
            let (registered, last) = (b.registered_unix_ms, b.last_heartbeat_unix_ms);
            let id = b.id.clone();
            self.insert(b.spec(), deadline, Some(registered), last);
            if b.draining {
                if let Some(backend) = self.backends.get(&id) {
                    backend.live.draining.store(true, Ordering::Relaxed);
                }
            }
        }
        self.journaling = journaling;
    }

    /// Applies a backend's state replicated from another hub (`cluster::replicate`): its
    /// registration as stored there, and its last heartbeat, which sets how long it is served
    /// here exactly as [`Registry::restore`] does, unless this hub already knows a later
    /// heartbeat. Live connection counts are kept. Journaled (for persistence) and marks the
    /// registry dirty like a local change.
    pub fn apply_remote(&mut self, b: StoredBackend, now_ms: u64) -> Registered {
        let now_unix = crate::clock::unix_ms();
        let ttl_ms = self.ttl_ms(b.ttl_secs);
        let age = now_unix.saturating_sub(b.last_heartbeat_unix_ms);
        let mut deadline = if ttl_ms == 0 {
            u64::MAX
        } else {
            now_ms.saturating_add(ttl_ms).saturating_sub(age)
        };
        let mut last = b.last_heartbeat_unix_ms;
        let mut registered = b.registered_unix_ms;
        if let Some(old) = self.backends.get(&b.id) {
            if ttl_ms != 0 {
                deadline = deadline.max(old.live.expires_at_ms.load(Ordering::Relaxed));
            }
            last = last.max(old.live.last_heartbeat_unix_ms.load(Ordering::Relaxed));
            registered = registered.min(old.registered_unix_ms);
        }
        let (id, draining) = (b.id.clone(), b.draining);
        let outcome = self.insert(b.spec(), deadline, Some(registered), last);
        if draining {
            if let Some(backend) = self.backends.get(&id) {
                backend.live.draining.store(true, Ordering::Relaxed);
                if self.journaling {
                    // The record journaled by insert() said "not draining".
                    self.journal.push(Record::Put(stored(backend)));
                }
            }
        }
        outcome
    }

    /// A heartbeat of `id` taken at another hub at `at_ms` (this process's clock): moves the
    /// deadline forward, never back. Journaled like a local heartbeat.
    pub fn remote_heartbeat(&mut self, id: &str, at_ms: u64, now_ms: u64) -> bool {
        let Some(backend) = self.backends.get(id) else {
            return false;
        };
        let ttl_ms = self.ttl_ms(backend.ttl_secs);
        if ttl_ms == 0 {
            return true;
        }
        let deadline = at_ms.saturating_add(ttl_ms);
        if deadline <= backend.live.expires_at_ms.load(Ordering::Relaxed) {
            return true;
        }
        backend
            .live
            .expires_at_ms
            .store(deadline, Ordering::Relaxed);
        let at_unix = crate::clock::unix_ms().saturating_sub(now_ms.saturating_sub(at_ms));
        backend
            .live
            .last_heartbeat_unix_ms
            .fetch_max(at_unix, Ordering::Relaxed);
        if self.journaling {
            self.journal.push(Record::Beat {
                id: id.to_string(),
                at: at_unix,
            });
        }
        if now_ms < deadline {
            self.expired.remove(id);
        }
        true
    }

    /// The whole registry as stored records (for compaction).
    pub fn image(&self) -> Vec<StoredBackend> {
        self.backends.values().map(|b| stored(b)).collect()
    }

    fn join_app(&mut self, backend: &Arc<Backend>) {
        let app: Arc<str> = match self.apps.get_key_value(backend.app.as_str()) {
            Some((k, _)) => k.clone(),
            None => Arc::from(backend.app.as_str()),
        };
        let touched = self.apps.entry(app.clone()).or_default().insert(backend);
        self.dirty_apps.entry(app).or_default().add(touched);
    }

    fn leave_app(&mut self, backend: &Backend) {
        let app: Arc<str> = match self.apps.get_key_value(backend.app.as_str()) {
            Some((k, _)) => k.clone(),
            None => return,
        };
        if let Some(members) = self.apps.get_mut(&app) {
            let touched = members.remove(backend);
            if members.len == 0 {
                self.apps.remove(&app);
            }
            self.dirty_apps.entry(app).or_default().add(touched);
        }
    }

    /// The last published snapshot (what every shard reads now).
    pub fn snapshot(&self) -> &Arc<Snapshot> {
        &self.current
    }

    pub fn get(&self, id: &str) -> Option<&Arc<Backend>> {
        self.backends.get(id)
    }

    /// Every backend, sorted by id.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Backend>> {
        self.backends.values()
    }

    pub fn len(&self) -> usize {
        self.backends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.backends.is_empty()
    }

    pub fn shards(&self) -> usize {
        self.shards
    }

    /// The grace period in ms after expiry before deletion.
    pub fn grace_ms(&self) -> u64 {
        self.grace_ms
    }

    /// Notes newly expired backends and deletes those past the grace period.
    pub fn sweep(&mut self, now_ms: u64) -> Sweep {
        let mut sweep = Sweep::default();
        for (id, backend) in &self.backends {
            let expires = backend.live.expires_at_ms.load(Ordering::Relaxed);
            if now_ms < expires {
                continue;
            }
            if now_ms >= expires.saturating_add(self.grace_ms) {
                sweep.removed.push(id.clone());
            } else if !self.expired.contains_key(id) {
                sweep.expired.push(id.clone());
            }
        }
        for id in &sweep.expired {
            self.expired.insert(id.clone(), ());
        }
        for id in &sweep.removed {
            if let Some(old) = self.backends.remove(id) {
                self.leave_app(&old);
                if self.journaling {
                    self.journal.push(Record::Del { id: id.clone() });
                }
                self.health_changes.push(id.clone());
            }
            self.expired.remove(id);
            self.dirty = true;
        }
        sweep
    }

    /// Whether a change is waiting to be published.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Builds a snapshot of the current registry and makes it the one every shard reads.
    /// Returns its version.
    pub fn publish(&mut self) -> u64 {
        self.version += 1;
        let dirty = std::mem::take(&mut self.dirty_apps);
        let mut changed = Vec::with_capacity(dirty.len());
        for (app, touched) in dirty {
            let group = self.apps.get(&app).map(|members| {
                let prev = self
                    .current
                    .app_arc(&app)
                    .filter(|g| g.buckets().len() == members.buckets.len());
                let buckets = members
                    .buckets
                    .iter()
                    .enumerate()
                    .map(|(i, bucket)| match prev {
                        Some(g) if !touched.contains(i) => g.buckets()[i].clone(),
                        _ => Arc::new(Bucket::build(bucket.values().cloned().collect())),
                    })
                    .collect();
                Arc::new(AppGroup::new(app.clone(), buckets))
            });
            changed.push((app, group));
        }
        let snapshot = Arc::new(Snapshot::next(&self.current, self.version, changed));
        self.current = snapshot.clone();
        self.cell.store(snapshot);
        self.dirty = false;
        self.version
    }

    /// Publishes only if something changed since the last publish.
    pub fn publish_if_dirty(&mut self) -> u64 {
        if self.dirty {
            self.publish()
        } else {
            self.version
        }
    }

    pub fn version(&self) -> u64 {
        self.version
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: &str, app: &str, region: &str, ip: &str) -> BackendSpec {
        BackendSpec::new(id, app, region, ip.parse().unwrap(), 80)
    }

    fn registry() -> (Registry, Arc<SnapshotCell>) {
        let cell = Arc::new(SnapshotCell::new());
        (Registry::new(2, 60, 600, cell.clone()), cell)
    }

    #[test]
    fn register_is_idempotent_and_keeps_live_state() {
        let (mut reg, cell) = registry();
        assert_eq!(
            reg.register(spec("a", "App", "SA", "10.0.0.1"), 0),
            Registered::Created
        );
        reg.publish();
        let first = cell.load().find("a").unwrap().clone();
        first.live.shard_counter(1).store(3, Ordering::Relaxed);
        assert_eq!(
            reg.register(spec("a", "app", "sa", "10.0.0.2"), 10),
            Registered::Updated
        );
        reg.publish();
        let snap = cell.load();
        let second = snap.find("a").unwrap();
        assert_eq!(second.ip, "10.0.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(second.app, "app");
        assert_eq!(second.region, "sa");
        assert_eq!(second.connections(), 3);
        assert_eq!(second.registered_unix_ms, first.registered_unix_ms);
        assert_eq!(snap.len(), 1);
    }

    #[test]
    fn restored_pop_codes_become_regions_and_unknown_codes_stay() {
        let (mut reg, _cell) = registry();
        reg.register(spec("a", "app", "GRU", "10.0.0.1"), 0);
        reg.register(spec("b", "app", "Mars-1", "10.0.0.2"), 0);
        assert_eq!(reg.get("a").unwrap().region, "sa");
        assert_eq!(reg.get("b").unwrap().region, "mars-1");
    }

    #[test]
    fn heartbeat_ttl_and_grace() {
        let (mut reg, _cell) = registry();
        reg.register(spec("a", "app", "sa", "10.0.0.1"), 1_000);
        let mut never = spec("b", "app", "sa", "10.0.0.2");
        never.ttl_secs = Some(0);
        reg.register(never, 1_000);
        let a = reg.get("a").unwrap().clone();
        assert!(a.alive(60_999));
        assert!(!a.alive(61_000));
        let sweep = reg.sweep(61_000);
        assert_eq!(sweep.expired, vec!["a".to_string()]);
        assert!(sweep.removed.is_empty());
        // Reported once only.
        assert!(reg.sweep(62_000).expired.is_empty());
        // A heartbeat revives it at once.
        assert!(reg.heartbeat("a", 62_000));
        assert!(a.alive(62_001));
        // Past TTL + grace it is deleted; the never-expiring one stays.
        let sweep = reg.sweep(62_000 + 60_000 + 600_000);
        assert_eq!(sweep.removed, vec!["a".to_string()]);
        assert!(reg.get("b").is_some());
        assert!(reg.is_dirty());
        assert!(!reg.heartbeat("a", 0));
    }

    #[test]
    fn deregister_marks_dirty_only_when_present() {
        let (mut reg, _cell) = registry();
        assert!(!reg.deregister("x"));
        assert!(!reg.is_dirty());
        reg.register(spec("x", "app", "sa", "10.0.0.1"), 0);
        reg.publish();
        assert!(reg.deregister("x"));
        assert!(reg.is_dirty());
    }

    #[test]
    fn publish_rebuilds_only_changed_apps() {
        let (mut reg, cell) = registry();
        reg.register(spec("a1", "a", "sa", "10.0.0.1"), 0);
        reg.register(spec("b1", "b", "sa", "10.0.0.2"), 0);
        reg.publish();
        let before = cell.load_full();
        reg.register(spec("a2", "a", "eu", "10.0.0.3"), 0);
        reg.publish();
        let after = cell.load_full();
        assert_eq!(after.len(), 3);
        assert!(std::ptr::eq(
            before.app("b").unwrap(),
            after.app("b").unwrap()
        ));
        assert_eq!(after.app("a").unwrap().len(), 2);
        // Moving a backend to another app leaves the old one.
        reg.register(spec("a2", "b", "eu", "10.0.0.3"), 0);
        reg.publish();
        let moved = cell.load_full();
        assert_eq!(moved.app("a").unwrap().len(), 1);
        assert_eq!(moved.app("b").unwrap().len(), 2);
        assert_eq!(
            moved
                .app("b")
                .unwrap()
                .region_names()
                .into_iter()
                .collect::<Vec<_>>(),
            ["eu", "sa"]
        );
        // The last member leaving removes the app.
        reg.deregister("a1");
        reg.publish();
        let gone = cell.load_full();
        assert!(gone.app("a").is_none());
        assert_eq!(gone.groups().count(), 1);
        assert_eq!(gone.len(), 2);
        assert_eq!(gone.version, 4);
    }

    #[test]
    fn a_big_app_is_split_into_buckets_and_one_change_rebuilds_one() {
        let (mut reg, cell) = registry();
        let n = 5 * snapshot::BUCKET_TARGET;
        for i in 0..n {
            reg.register(spec(&format!("b{i}"), "big", "sa", "10.0.0.1"), 0);
        }
        reg.publish();
        let before = cell.load_full();
        let group = before.app("big").unwrap();
        assert_eq!(group.len(), n);
        assert!(
            group.buckets().len() >= 2,
            "{} buckets",
            group.buckets().len()
        );
        reg.register(spec("b7", "big", "eu", "10.0.0.2"), 0);
        reg.publish();
        let after = cell.load_full();
        let (old, new) = (group.buckets(), after.app("big").unwrap().buckets());
        assert_eq!(old.len(), new.len());
        let rebuilt = old
            .iter()
            .zip(new)
            .filter(|(a, b)| !Arc::ptr_eq(a, b))
            .count();
        assert_eq!(rebuilt, 1);
        assert_eq!(after.app("big").unwrap().region("eu").count(), 1);
        assert_eq!(after.find("b7").unwrap().region, "eu");
        // Shrinking back re-splits, and nothing is lost on the way.
        for i in 10..n {
            reg.deregister(&format!("b{i}"));
        }
        reg.publish();
        let small = cell.load_full();
        let g = small.app("big").unwrap();
        assert_eq!(g.len(), 10);
        assert_eq!(g.buckets().len(), 1);
        let mut ids: Vec<&str> = g.backends().map(|b| b.id.as_str()).collect();
        ids.sort();
        assert_eq!(ids.len(), 10);
        assert_eq!(small.len(), 10);
    }

    #[test]
    fn apply_remote_keeps_the_later_heartbeat_and_the_draining_flag() {
        let (mut reg, cell) = registry();
        reg.enable_journal();
        let now_unix = crate::clock::unix_ms();
        let mut b = stored(&Backend {
            id: "r".into(),
            app: "app".into(),
            region: "sa".into(),
            country: None,
            ip: "10.0.0.9".parse().unwrap(),
            port: 80,
            weight: 1,
            soft_limit: None,
            hard_limit: None,
            ttl_secs: Some(60),
            alpn: None,
            check: None,
            registered_unix_ms: now_unix - 20_000,
            key: 0,
            region_code: code_key(Some("sa")),
            country_code: 0,
            live: Arc::new(BackendLive::new(1)),
        });
        // Heartbeat 20 s ago at the origin: 40 s left here.
        b.last_heartbeat_unix_ms = now_unix - 20_000;
        assert_eq!(reg.apply_remote(b.clone(), 100_000), Registered::Created);
        reg.publish();
        let r = cell.load().find("r").unwrap().clone();
        let left = r.live.expires_at_ms.load(Ordering::Relaxed) - 100_000;
        assert!((39_000..=40_000).contains(&left), "{left}");
        // A later remote heartbeat moves it forward; an older one does not move it back.
        assert!(reg.remote_heartbeat("r", 110_000, 110_000));
        assert_eq!(r.live.expires_at_ms.load(Ordering::Relaxed), 170_000);
        assert!(reg.remote_heartbeat("r", 105_000, 110_000));
        assert_eq!(r.live.expires_at_ms.load(Ordering::Relaxed), 170_000);
        // An update (drained at the origin) keeps the later deadline and drains here.
        b.draining = true;
        assert_eq!(reg.apply_remote(b, 110_000), Registered::Updated);
        reg.publish();
        let r = cell.load().find("r").unwrap().clone();
        assert_eq!(r.live.expires_at_ms.load(Ordering::Relaxed), 170_000);
        assert!(r.live.draining.load(Ordering::Relaxed));
        let journal = reg.take_journal();
        assert!(matches!(journal.last(), Some(Record::Put(s)) if s.draining));
    }

    #[test]
    fn code_keys_are_exact_for_short_codes_and_never_zero() {
        assert_eq!(code_key(None), 0);
        for c in ["", "a", "sa", "gru", "us-east", "BR"] {
            let k = code_key(Some(c));
            assert_ne!(k, 0, "{c}");
            assert!(code_key_is_exact(k), "{c}");
            // Same key from another allocation of the same code.
            let copy = String::from(c);
            assert_eq!(k, code_key(Some(copy.as_str())));
        }
        let all: std::collections::BTreeSet<u64> =
            ["", "a", "sa", "sa ", "as", "us-east", "us-eas"]
                .iter()
                .map(|c| code_key(Some(c)))
                .collect();
        assert_eq!(all.len(), 7);
        let long = code_key(Some("europe-west"));
        assert!(!code_key_is_exact(long));
        assert_ne!(long, code_key(Some("europe-east")));
    }

    #[test]
    fn stable_hash_is_stable() {
        assert_eq!(stable_hash(b"pop-gru"), stable_hash(b"pop-gru"));
        assert_ne!(stable_hash(b"pop-gru"), stable_hash(b"pop-iad"));
    }
}
