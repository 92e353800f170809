//! Choosing a backend for a client. Pure and allocation-free: the same inputs give the same
//! answer on every shard, which is what makes stickiness work without a shared binding table
//! (`SO_REUSEPORT` spreads one client's connections over every shard).
//!
//! 1. **Candidates**: members of the scope that are [`Backend::eligible`] (heartbeat alive, health up, not
//!    draining, under their hard limit, and whatever else that predicate grows to check), minus
//!    those the caller already tried, and those the caller's filter refuses.
//! 2. **Tiers**, the first with a candidate wins: the client's country (from the region map or
//!    GeoIP, see [`crate::geo`]); its region; the hub's region; the other regions by distance
//!    from the client's region (or from the hub's, when the client's is unknown), nearest first,
//!    regions at the same distance together (`near:1`, `near:2`, …, from
//!    [`crate::geo::Regions`]); then any backend at all.
//! 3. **Within a tier**: weighted rendezvous hashing on the client address, in two levels.
//!    Backends fall into [`GROUPS`] fixed groups by their key; a group scores
//!    `W / -ln(u)` with `W` the weight of its members in the tier and `u` a uniform hash of
//!    (client, group); the best group's members then score `w / -ln(u)` with `u` a hash of
//!    (client, backend), the highest wins. An exponential race at each level: a backend is
//!    chosen with probability `W/ΣW · w/W = w/ΣW`, exactly proportional to its weight, and the
//!    same client gets the same backend on every shard and after every snapshot rebuild. It
//!    costs `O(groups + members of one group)` instead of `O(members)`, and the members' race
//!    runs on keys and weights stored inline in the snapshot: only its leaders are dereferenced
//!    (eligible? loaded?). At 100,000 backends in one app a pick takes 14-25 µs instead of 0.7-1.7 ms
//!    (`cargo bench --bench hot -- select_pick`, `bench/RESULTS.md`). When the best groups'
//!    candidates are all out (a region's outage), the tier is ranked in full: `O(members)`.
//!    Stickiness when a backend leaves: one that stops being eligible (expired, unhealthy,
//!    draining, full) moves only its own clients (group weights are the registered ones);
//!    one that is deregistered changes its group's weight, so besides its own clients about
//!    as many again of its group move (none while groups hold one backend: small apps).
//! 4. **Load**: a backend at or above its `soft_limit` ranks after every unloaded one of the
//!    tier; with `--balance-factor F > 0` (consistent hashing with bounded loads, as HAProxy's
//!    `hash-balance-factor`), a backend whose load reaches `ceil(F · (L+1) · w / W)`, its
//!    weighted share of the tier's load `L` (over the tier's first [`LOAD_SAMPLE`] candidates,
//!    so a fixed cost), is skipped for the next in rank. Loaded backends are used only when no
//!    unloaded one remains. Since the caps add up to more than `L+1`, some backend is always
//!    under its cap.
//! 5. **Hard limits** hold under concurrency: picking is a read, so the caller reserves a slot
//!    with [`Backend::try_reserve`] (a compare-and-swap on one counter per *limited* backend;
//!    unlimited backends never touch a shared counter) and picks again without that backend
//!    when it is full. The slot is released when the connect fails or the connection closes.
//!    A CAS was chosen over splitting the limit across shards because a split strands capacity
//!    on idle shards (a limit of 4 over 8 shards is 0 per shard) and SO_REUSEPORT spreads
//!    connections unevenly.
//!
//! [`Backend::eligible`]: crate::registry::Backend::eligible
//! [`Backend::try_reserve`]: crate::registry::Backend::try_reserve

use crate::geo::{Country, Location, Regions};
use crate::registry::{
    mix64, stable_hash, AppGroup, Backend, Bucket, MemberList, Snapshot, GROUPS,
};
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The default `--balance-factor`.
pub const DEFAULT_BALANCE_FACTOR: f64 = 1.25;

/// How many of a tier's candidates the bounded-load cap's average is taken over: all of them
/// up to this many, a fixed-size sample (storage order, i.e. by id hash) beyond.
pub const LOAD_SAMPLE: usize = 128;

/// How many of the best groups are tried before a full scan of the tier.
const FAST_GROUPS: usize = 4;

/// Mixed into the client key for group scores, so that group and member races are independent.
const GROUP_SALT: u64 = 0x6a09_e667_f3bc_c908;

static BALANCE_FACTOR: AtomicU64 = AtomicU64::new(DEFAULT_BALANCE_FACTOR.to_bits());

/// Sets the process's `--balance-factor` (startup, main thread).
pub fn install_balance_factor(factor: f64) {
    BALANCE_FACTOR.store(factor.to_bits(), Ordering::Relaxed);
}

/// The process's `--balance-factor`.
pub fn balance_factor() -> f64 {
    f64::from_bits(BALANCE_FACTOR.load(Ordering::Relaxed))
}

/// Who is asking, as far as choosing is concerned.
#[derive(Debug, Clone, Copy)]
pub struct Client<'a> {
    /// The client's region (`None` when unknown).
    pub region: Option<&'a str>,
    /// The client's country, when known.
    pub country: Option<Country>,
    /// The client's hashing key, from its address.
    pub key: u64,
}

impl<'a> Client<'a> {
    pub fn new(ip: IpAddr, region: Option<&'a str>) -> Self {
        let key = match ip {
            IpAddr::V4(v4) => stable_hash(&v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => stable_hash(&v4.octets()),
                None => stable_hash(&v6.octets()),
            },
        };
        Client {
            region,
            country: None,
            key,
        }
    }

    /// A client at `ip`, located by [`crate::geo::Geo::locate`].
    pub fn at(ip: IpAddr, loc: Location<'a>) -> Self {
        Client {
            country: loc.country,
            ..Client::new(ip, loc.region)
        }
    }
}

/// How to choose, besides who asks: the hub's region, the region vocabulary (distances) and
/// the balance factor.
#[derive(Debug, Clone, Copy)]
pub struct Policy<'p> {
    pub hub_region: &'p str,
    pub regions: &'p Regions,
    /// 0 = no bounded-load cap.
    pub balance_factor: f64,
}

impl<'p> Policy<'p> {
    /// The process's policy (its installed geography and balance factor) for `hub_region`.
    pub fn current(hub_region: &'p str) -> Policy<'p> {
        Policy {
            hub_region,
            regions: crate::geo::current().regions(),
            balance_factor: balance_factor(),
        }
    }
}

/// Which backends a decision chooses among.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'s> {
    /// One app's backends (a route listener, a DNS name).
    App(&'s AppGroup),
    /// Every app's backends (the default proxy listener).
    All(&'s Snapshot),
}

impl<'s> Scope<'s> {
    /// The scope of `app` in `snap` (`None` = every app). `None` when the app has no backend.
    pub fn of(snap: &'s Snapshot, app: Option<&str>) -> Option<Scope<'s>> {
        match app {
            Some(name) => snap.app(name).map(Scope::App),
            None => Some(Scope::All(snap)),
        }
    }

    #[inline]
    fn for_each_app(self, mut f: impl FnMut(&'s AppGroup)) {
        match self {
            Scope::App(g) => f(g),
            Scope::All(snap) => snap.groups().for_each(f),
        }
    }
}

/// Which tier a choice came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// The client's country.
    Country,
    /// The client's region.
    ClientRegion,
    /// The hub's region.
    HubRegion,
    /// Other regions, `n`-th nearest distance (1 = nearest).
    Near(u32),
    /// Anything.
    Any,
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tier::Country => f.write_str("country"),
            Tier::ClientRegion => f.write_str("region"),
            Tier::HubRegion => f.write_str("hub_region"),
            Tier::Near(n) => write!(f, "near:{n}"),
            Tier::Any => f.write_str("any"),
        }
    }
}

/// A tier as a filter on member lists.
#[derive(Clone, Copy)]
enum Spec<'a> {
    Country(Country),
    Region(&'a str),
    Near {
        regions: &'a Regions,
        from: &'a str,
        rank: u32,
        /// Regions tried by earlier tiers.
        skip: [Option<&'a str>; 2],
    },
    Any,
}

impl<'a> Spec<'a> {
    #[inline]
    fn lists<'b>(self, bucket: &'b Bucket) -> impl Iterator<Item = &'b MemberList> + use<'a, 'b> {
        let lists = match self {
            Spec::Country(_) => bucket.countries(),
            _ => bucket.regions(),
        };
        lists.iter().filter(move |l| self.matches_list(&l.name))
    }

    #[inline]
    fn matches_list(self, name: &str) -> bool {
        match self {
            Spec::Country(cc) => name == cc.as_str(),
            Spec::Region(r) => name == r,
            Spec::Near {
                regions,
                from,
                rank,
                skip,
            } => !skip.contains(&Some(name)) && regions.near_rank(from, name) == Some(rank),
            Spec::Any => true,
        }
    }

    fn matches(self, b: &Backend) -> bool {
        match self {
            Spec::Country(cc) => b.country.as_deref() == Some(cc.as_str()),
            _ => self.matches_list(&b.region),
        }
    }
}

/// The client's tiers in order (see the module docs), produced one at a time: most decisions
/// stop at the first.
struct Tiers<'a> {
    client: Client<'a>,
    policy: Policy<'a>,
    /// 0 country, 1 region, 2 hub, 3 near ranks, 4 any, 5 done.
    stage: u8,
    rank: u32,
}

impl<'a> Tiers<'a> {
    fn new(client: &Client<'a>, policy: &Policy<'a>) -> Self {
        Tiers {
            client: *client,
            policy: *policy,
            stage: 0,
            rank: 0,
        }
    }
}

impl<'a> Iterator for Tiers<'a> {
    type Item = (Tier, Spec<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        let (client, policy) = (&self.client, &self.policy);
        loop {
            let stage = self.stage;
            if stage != 3 {
                self.stage += 1;
            }
            match stage {
                0 => {
                    if let Some(cc) = client.country {
                        return Some((Tier::Country, Spec::Country(cc)));
                    }
                }
                1 => {
                    if let Some(r) = client.region {
                        return Some((Tier::ClientRegion, Spec::Region(r)));
                    }
                }
                2 => {
                    if client.region != Some(policy.hub_region) {
                        return Some((Tier::HubRegion, Spec::Region(policy.hub_region)));
                    }
                }
                3 => {
                    let from = client.region.unwrap_or(policy.hub_region);
                    self.rank += 1;
                    if self.rank > policy.regions.max_rank(from) {
                        self.stage = 4;
                        continue;
                    }
                    let spec = Spec::Near {
                        regions: policy.regions,
                        from,
                        rank: self.rank,
                        skip: [client.region, Some(policy.hub_region)],
                    };
                    return Some((Tier::Near(self.rank), spec));
                }
                4 => return Some((Tier::Any, Spec::Any)),
                _ => return None,
            }
        }
    }
}

/// The rendezvous score of a backend with `key` and `weight` for a client with `client_key`.
#[inline]
pub fn score(client_key: u64, backend_key: u64, weight: u32) -> f64 {
    score_w(client_key, backend_key, f64::from(weight.max(1)))
}

#[inline]
fn score_w(client_key: u64, key: u64, weight: f64) -> f64 {
    let h = mix64(client_key ^ key);
    // 53 random bits -> u in (0, 1]; -ln(u) in [0, 37).
    let u = ((h >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64);
    let x = -u.ln();
    if x <= 0.0 {
        f64::INFINITY
    } else {
        weight / x
    }
}

/// The score of group `g` of tier weight `w` for `client_key`.
#[inline]
fn group_score(client_key: u64, g: usize, w: u64) -> f64 {
    score_w(client_key ^ GROUP_SALT, mix64(g as u64 + 1), w as f64)
}

/// How a candidate ranks by load: unloaded first, then soft-loaded, then over the cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    OverCap = 0,
    SoftLoaded = 1,
    Unloaded = 2,
}

/// What one decision needs besides the tier.
struct Ctx<'c, F> {
    client: &'c Client<'c>,
    policy: &'c Policy<'c>,
    now_ms: u64,
    exclude: &'c [u64],
    keep: &'c F,
}

impl<F: Fn(&Backend) -> bool> Ctx<'_, F> {
    #[inline]
    fn candidate(&self, b: &Backend) -> bool {
        !self.exclude.contains(&b.key) && b.eligible(self.now_ms) && (self.keep)(b)
    }
}

/// The bounded-load cap of one tier, computed on first need (only once a candidate with a
/// load is met: an idle tier never pays for it).
struct Cap {
    /// `F · (L+1) / W`: a backend of weight `w` is over the cap at `ceil(per_weight · w)`.
    per_weight: Option<f64>,
}

impl Cap {
    fn new() -> Cap {
        Cap { per_weight: None }
    }

    #[inline]
    fn class<F: Fn(&Backend) -> bool>(
        &mut self,
        b: &Backend,
        load: u32,
        scope: Scope<'_>,
        spec: Spec<'_>,
        ctx: &Ctx<'_, F>,
    ) -> Class {
        let factor = ctx.policy.balance_factor;
        if load > 0 && factor > 0.0 {
            let per_weight = *self
                .per_weight
                .get_or_insert_with(|| tier_per_weight(scope, spec, ctx, factor));
            let cap = (per_weight * f64::from(b.weight.max(1))).ceil();
            if f64::from(load) >= cap {
                return Class::OverCap;
            }
        }
        if b.soft_loaded(load) {
            Class::SoftLoaded
        } else {
            Class::Unloaded
        }
    }
}

/// `F · (L+1) / W` over the tier's first [`LOAD_SAMPLE`] candidates (see the module docs).
fn tier_per_weight<F: Fn(&Backend) -> bool>(
    scope: Scope<'_>,
    spec: Spec<'_>,
    ctx: &Ctx<'_, F>,
    factor: f64,
) -> f64 {
    let (mut load, mut weight, mut seen) = (0u64, 0u64, 0usize);
    scope.for_each_app(|app| {
        for bucket in app.buckets() {
            if seen >= LOAD_SAMPLE {
                return;
            }
            for list in spec.lists(bucket) {
                for &i in list.members.iter() {
                    let b = &bucket.backends()[i as usize];
                    if seen >= LOAD_SAMPLE {
                        return;
                    }
                    if b.eligible(ctx.now_ms) && (ctx.keep)(b) {
                        load += u64::from(b.connections());
                        weight += u64::from(b.weight.max(1));
                        seen += 1;
                    }
                }
            }
        }
    });
    if weight == 0 {
        return f64::INFINITY;
    }
    factor * (load + 1) as f64 / weight as f64
}

/// The running best of a scan: ordered by (class, group score, member score, key).
#[derive(Clone, Copy)]
struct Best<'s> {
    rank: (Class, f64, f64, u64),
    backend: &'s Arc<Backend>,
}

#[inline]
fn better(a: (Class, f64, f64, u64), b: &Option<Best<'_>>) -> bool {
    match b {
        None => true,
        Some(b) => {
            let r = b.rank;
            (a.0, a.1, a.2, a.3)
                .partial_cmp(&(r.0, r.1, r.2, r.3))
                .is_some_and(|o| o.is_gt())
        }
    }
}

/// The tier's weight per group (registered members, so a backend that stops being eligible
/// moves no other client) and its member count.
fn group_weights(scope: Scope<'_>, spec: Spec<'_>, w: &mut [u64; GROUPS]) -> usize {
    let mut members = 0;
    scope.for_each_app(|app| {
        for bucket in app.buckets() {
            for list in spec.lists(bucket) {
                for run in list.runs.iter() {
                    w[run.group as usize] += run.weight;
                }
                members += list.members.len();
            }
        }
    });
    members
}

/// The best unloaded candidate of group `g` (weight score `gs`), if it has one: the members'
/// race is run on the inline keys and weights, and only the leaders are looked at (eligible?
/// loaded?). `None` also when the leaders are all out: the caller then ranks the whole tier.
#[inline]
fn best_in_group<'s, F: Fn(&Backend) -> bool>(
    scope: Scope<'s>,
    spec: Spec<'_>,
    g: usize,
    ctx: &Ctx<'_, F>,
    cap: &mut Cap,
) -> Option<&'s Arc<Backend>> {
    const LEADERS: usize = 4;
    let key = ctx.client.key;
    let mut lead: [(f64, Option<&'s Arc<Backend>>); LEADERS] = [(f64::NEG_INFINITY, None); LEADERS];
    let mut count = 0usize;
    scope.for_each_app(|app| {
        for bucket in app.buckets_of_group(g) {
            for list in spec.lists(bucket) {
                let Some(run) = list.run(g as u32) else {
                    continue;
                };
                let (start, end) = (run.start as usize, run.end as usize);
                for j in start..end {
                    count += 1;
                    let s = score(key, list.keys[j], list.weights[j]);
                    if s > lead[LEADERS - 1].0 {
                        let b = &bucket.backends()[list.members[j] as usize];
                        let mut i = LEADERS - 1;
                        while i > 0 && s > lead[i - 1].0 {
                            lead[i] = lead[i - 1];
                            i -= 1;
                        }
                        lead[i] = (s, Some(b));
                    }
                }
            }
        }
    });
    for (_, b) in lead.iter() {
        let b = (*b)?;
        if !ctx.candidate(b) {
            continue;
        }
        if cap.class(b, b.connections(), scope, spec, ctx) == Class::Unloaded {
            return Some(b);
        }
        // A loaded leader: an unloaded one further down may exist; rank the group fully.
        break;
    }
    if count <= LEADERS
        && lead
            .iter()
            .all(|(_, b)| b.is_none_or(|b| !ctx.candidate(b)))
    {
        // Every member was looked at and none is a candidate.
        return None;
    }
    // Full ranking of the group by (class, score).
    let mut best: Option<Best<'s>> = None;
    scope.for_each_app(|app| {
        for bucket in app.buckets_of_group(g) {
            for list in spec.lists(bucket) {
                let Some(run) = list.run(g as u32) else {
                    continue;
                };
                for &i in &list.members[run.start as usize..run.end as usize] {
                    let b = &bucket.backends()[i as usize];
                    if !ctx.candidate(b) {
                        continue;
                    }
                    let class = cap.class(b, b.connections(), scope, spec, ctx);
                    let rank = (class, 0.0, score(key, b.key, b.weight), b.key);
                    if better(rank, &best) {
                        best = Some(Best { rank, backend: b });
                    }
                }
            }
        }
    });
    best.filter(|b| b.rank.0 == Class::Unloaded)
        .map(|b| b.backend)
}

/// The best candidate of one tier, if it has any. See the module docs.
fn best_in<'s, F: Fn(&Backend) -> bool>(
    scope: Scope<'s>,
    spec: Spec<'_>,
    ctx: &Ctx<'_, F>,
) -> Option<&'s Arc<Backend>> {
    let key = ctx.client.key;
    // The best few groups, best first.
    let mut top: [(f64, usize); FAST_GROUPS] = [(f64::NEG_INFINITY, usize::MAX); FAST_GROUPS];
    let mut offer = |g: usize, weight: u64| {
        let s = group_score(key, g, weight);
        if s > top[FAST_GROUPS - 1].0 {
            let mut i = FAST_GROUPS - 1;
            while i > 0 && s > top[i - 1].0 {
                top[i] = top[i - 1];
                i -= 1;
            }
            top[i] = (s, g);
        }
    };
    // One app of at most GROUPS buckets and a one-list tier (a region, a country): each group
    // is one run of one list, its weight that run's, so runs are scored as they come. Else
    // the groups' weights are summed first.
    let direct = matches!(scope, Scope::App(app) if app.buckets().len() <= GROUPS)
        && matches!(spec, Spec::Country(_) | Spec::Region(_));
    let mut table = None;
    if direct {
        // A tier of one group (a small app's region) needs no group race: scoring starts
        // with the second run.
        let mut first: Option<(usize, u64)> = None;
        let mut runs = 0usize;
        scope.for_each_app(|app| {
            for bucket in app.buckets() {
                for list in spec.lists(bucket) {
                    for run in list.runs.iter() {
                        runs += 1;
                        match (runs, first) {
                            (1, _) => first = Some((run.group as usize, run.weight)),
                            (2, Some((g, w))) => {
                                offer(g, w);
                                offer(run.group as usize, run.weight);
                            }
                            _ => offer(run.group as usize, run.weight),
                        }
                    }
                }
            }
        });
        match (runs, first) {
            (0, _) => return None,
            (1, Some((g, _))) => top[0] = (f64::INFINITY, g),
            _ => {}
        }
    } else {
        let mut w = [0u64; GROUPS];
        if group_weights(scope, spec, &mut w) == 0 {
            return None;
        }
        for (g, &weight) in w.iter().enumerate() {
            if weight != 0 {
                offer(g, weight);
            }
        }
        table = Some(w);
    }
    let mut cap = Cap::new();
    // Fast path: the first of the best groups with an unloaded candidate.
    for &(_, g) in top.iter().filter(|t| t.1 != usize::MAX) {
        if let Some(b) = best_in_group(scope, spec, g, ctx, &mut cap) {
            return Some(b);
        }
    }
    // Slow path: every candidate of the tier, in (class, group, member) order.
    let mut best: Option<Best<'s>> = None;
    scope.for_each_app(|app| {
        for bucket in app.buckets() {
            for list in spec.lists(bucket) {
                for run in list.runs.iter() {
                    let weight = match &table {
                        Some(w) => w[run.group as usize],
                        None => run.weight,
                    };
                    let gs = group_score(key, run.group as usize, weight);
                    for &i in &list.members[run.start as usize..run.end as usize] {
                        let b = &bucket.backends()[i as usize];
                        if !ctx.candidate(b) {
                            continue;
                        }
                        let load = b.connections();
                        let class = cap.class(b, load, scope, spec, ctx);
                        let rank = (class, gs, score(key, b.key, b.weight), b.key);
                        if better(rank, &best) {
                            best = Some(Best { rank, backend: b });
                        }
                    }
                }
            }
        }
    });
    best.map(|b| b.backend)
}

/// Chooses the backend of `scope` for `client` with the process's policy: see the module
/// docs. `exclude` lists the keys ([`Backend::key`]) of backends already tried for this
/// connection (a handful at most).
pub fn pick<'s>(
    scope: Scope<'s>,
    client: &Client<'_>,
    hub_region: &str,
    now_ms: u64,
    exclude: &[u64],
) -> Option<(&'s Arc<Backend>, Tier)> {
    pick_where(scope, client, hub_region, now_ms, exclude, |_| true)
}

/// [`pick`] among the backends for which `keep` is true (e.g. those that speak the ALPN
/// protocol a TLS client negotiated). Still allocation-free: `keep` is inlined.
pub fn pick_where<'s>(
    scope: Scope<'s>,
    client: &Client<'_>,
    hub_region: &str,
    now_ms: u64,
    exclude: &[u64],
    keep: impl Fn(&Backend) -> bool,
) -> Option<(&'s Arc<Backend>, Tier)> {
    pick_with(
        scope,
        client,
        &Policy::current(hub_region),
        now_ms,
        exclude,
        keep,
    )
}

/// [`pick_where`] with an explicit policy.
pub fn pick_with<'s>(
    scope: Scope<'s>,
    client: &Client<'_>,
    policy: &Policy<'_>,
    now_ms: u64,
    exclude: &[u64],
    keep: impl Fn(&Backend) -> bool,
) -> Option<(&'s Arc<Backend>, Tier)> {
    let ctx = Ctx {
        client,
        policy,
        now_ms,
        exclude,
        keep: &keep,
    };
    Tiers::new(client, policy)
        .find_map(|(tier, spec)| best_in(scope, spec, &ctx).map(|b| (b, tier)))
}

/// One backend of a decision, as [`explain`] sees it.
#[derive(Debug, Clone)]
pub struct Candidate<'s> {
    pub backend: &'s Arc<Backend>,
    /// The first of the client's tiers this backend belongs to.
    pub tier: Tier,
    pub load: u32,
    pub weight: u32,
    /// Its rendezvous score for this client (higher wins within a group).
    pub score: f64,
    pub chosen: bool,
    /// `chosen`, `lower score`, `lower tier`, `draining`, `expired`, `unhealthy`,
    /// `at hard limit`, `over balance cap` or `over soft limit`.
    pub why: &'static str,
}

/// Why `b` was not (or was) chosen.
fn why_not(b: &Backend, now_ms: u64) -> Option<&'static str> {
    if !b.alive(now_ms) {
        Some("expired")
    } else if b.live.draining.load(Ordering::Relaxed) {
        Some("draining")
    } else if !b.has_capacity() {
        Some("at hard limit")
    } else if !b.eligible(now_ms) {
        Some("unhealthy")
    } else {
        None
    }
}

/// The decision [`pick_with`] makes, with every backend of `scope` and why it was or was not
/// chosen, best tier first, then by score. For the route API: allocates, never on a shard.
pub fn explain<'s>(
    scope: Scope<'s>,
    client: &Client<'_>,
    policy: &Policy<'_>,
    now_ms: u64,
) -> (Option<(&'s Arc<Backend>, Tier)>, Vec<Candidate<'s>>) {
    let keep = |_: &Backend| true;
    let chosen = pick_with(scope, client, policy, now_ms, &[], keep);
    let ctx = Ctx {
        client,
        policy,
        now_ms,
        exclude: &[],
        keep: &keep,
    };
    let tiers: Vec<(Tier, Spec<'_>)> = Tiers::new(client, policy).collect();
    let n = tiers.len();
    let chosen_tier = chosen.map(|(_, t)| t);
    let mut out = Vec::new();
    let mut caps: Vec<Cap> = tiers.iter().map(|_| Cap::new()).collect();
    scope.for_each_app(|app| {
        for b in app.backends() {
            let ti = tiers
                .iter()
                .position(|(_, spec)| spec.matches(b))
                .unwrap_or(n - 1);
            let (tier, spec) = tiers[ti];
            let load = b.connections();
            let is_chosen = chosen.is_some_and(|(c, _)| Arc::ptr_eq(c, b));
            let why = if is_chosen {
                "chosen"
            } else if let Some(why) = why_not(b, now_ms) {
                why
            } else if Some(tier) != chosen_tier {
                "lower tier"
            } else {
                match caps[ti].class(b, load, scope, spec, &ctx) {
                    Class::OverCap => "over balance cap",
                    Class::SoftLoaded => "over soft limit",
                    Class::Unloaded => "lower score",
                }
            };
            out.push((
                ti,
                Candidate {
                    backend: b,
                    tier,
                    load,
                    weight: b.weight,
                    score: score(client.key, b.key, b.weight),
                    chosen: is_chosen,
                    why,
                },
            ));
        }
    });
    out.sort_by(|a, b| {
        (a.0, b.1.chosen)
            .cmp(&(b.0, a.1.chosen))
            .then(b.1.score.total_cmp(&a.1.score))
            .then(a.1.backend.id.cmp(&b.1.backend.id))
    });
    (chosen, out.into_iter().map(|(_, c)| c).collect())
}

/// The union over `scope`'s eligible backends of `mask(backend)`, stopping early once every
/// bit of `full` is set (a bitmask per backend, e.g. which configured ALPN protocols it speaks).
pub fn union_where(
    scope: Scope<'_>,
    now_ms: u64,
    full: u32,
    mask: impl Fn(&Backend) -> u32,
) -> u32 {
    // Ends early once every bit of `full` is set.
    let visit = |acc: &mut u32, g: &AppGroup| {
        for b in g.backends() {
            if *acc & full == full {
                return;
            }
            if b.eligible(now_ms) {
                *acc |= mask(b);
            }
        }
    };
    let mut acc = 0u32;
    match scope {
        Scope::App(g) => visit(&mut acc, g),
        Scope::All(snap) => {
            for g in snap.groups() {
                visit(&mut acc, g);
            }
        }
    }
    acc & full
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{BackendSpec, Registry, SnapshotCell};
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    fn spec(id: &str, app: &str, region: &str, weight: u32) -> BackendSpec {
        BackendSpec {
            weight,
            ttl_secs: Some(60),
            ..BackendSpec::new(id, app, region, "10.0.0.1".parse().unwrap(), 80)
        }
    }

    fn build(specs: Vec<BackendSpec>) -> (Registry, Arc<SnapshotCell>) {
        let cell = Arc::new(SnapshotCell::new());
        let mut reg = Registry::new(2, 60, 600, cell.clone());
        for s in specs {
            reg.register(s, 0);
        }
        reg.publish();
        (reg, cell)
    }

    fn id_of(pick: Option<(&Arc<Backend>, Tier)>) -> Option<(&str, Tier)> {
        pick.map(|(b, t)| (b.id.as_str(), t))
    }

    fn app<'s>(snap: &'s Snapshot, name: &str) -> Scope<'s> {
        Scope::of(snap, Some(name)).unwrap()
    }

    fn client(n: u32, region: Option<&str>) -> Client<'_> {
        Client::new(
            IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + n)),
            region,
        )
    }

    #[test]
    fn tiers_in_order() {
        let (_reg, cell) = build(vec![
            spec("a-sa", "app", "sa", 1),
            spec("a-eu", "app", "eu", 1),
            spec("a-ap", "app", "ap", 1),
            spec("other", "other", "us", 1),
        ]);
        let snap = cell.load();
        let group = app(&snap, "app");
        let c = client(1, Some("sa"));
        assert_eq!(
            id_of(pick(group, &c, "eu", 0, &[])),
            Some(("a-sa", Tier::ClientRegion))
        );
        let c = client(1, Some("us"));
        assert_eq!(
            id_of(pick(group, &c, "eu", 0, &[])),
            Some(("a-eu", Tier::HubRegion))
        );
        // Neither the client's region nor the hub's: the nearest other region (from us: eu).
        let c = client(1, Some("us"));
        assert_eq!(
            id_of(pick(group, &c, "us", 0, &[])),
            Some(("a-eu", Tier::Near(1)))
        );
        // An unknown client region: the hub's, then the nearest to the hub (from ap: us, eu…).
        let c = client(1, None);
        assert_eq!(
            id_of(pick(group, &c, "ap", 0, &[])),
            Some(("a-ap", Tier::HubRegion))
        );
        assert_eq!(
            id_of(pick(group, &c, "us", 0, &[])),
            Some(("a-eu", Tier::Near(1)))
        );
        // The every-app scope sees every backend.
        let all = Scope::of(&snap, None).unwrap();
        let c = client(1, Some("us"));
        assert_eq!(
            id_of(pick(all, &c, "eu", 0, &[])),
            Some(("other", Tier::ClientRegion))
        );
        // Never another app's backend.
        for n in 0..200 {
            let c = client(n, None);
            let (id, _) = id_of(pick(group, &c, "us", 0, &[])).unwrap();
            assert_ne!(id, "other");
        }
    }

    #[test]
    fn exclusion_and_expiry_fall_through_tiers() {
        let (_reg, cell) = build(vec![
            spec("a-sa", "app", "sa", 1),
            spec("a-eu", "app", "eu", 1),
        ]);
        let snap = cell.load();
        let group = app(&snap, "app");
        let c = client(7, Some("sa"));
        let (first, _) = pick(group, &c, "eu", 0, &[]).unwrap();
        assert_eq!(first.id, "a-sa");
        let (second, tier) = pick(group, &c, "eu", 0, &[first.key]).unwrap();
        // The hub is eu.
        assert_eq!((second.id.as_str(), tier), ("a-eu", Tier::HubRegion));
        assert!(pick(group, &c, "eu", 0, &[first.key, second.key]).is_none());
        // Past the TTL (60 s) nothing is served.
        assert!(pick(group, &c, "eu", 60_000, &[]).is_none());
    }

    #[test]
    fn hard_limit_and_draining_exclude() {
        let mut limited = spec("a", "app", "sa", 1);
        limited.hard_limit = Some(2);
        let (_reg, cell) = build(vec![limited, spec("b", "app", "eu", 1)]);
        let snap = cell.load();
        let group = app(&snap, "app");
        let c = client(3, Some("sa"));
        let a = snap.find("a").unwrap();
        a.live.shard_counter(0).store(1, Ordering::Relaxed);
        assert_eq!(pick(group, &c, "eu", 0, &[]).unwrap().0.id, "a");
        a.live.shard_counter(1).store(1, Ordering::Relaxed);
        assert_eq!(pick(group, &c, "eu", 0, &[]).unwrap().0.id, "b");
        a.live.shard_counter(1).store(0, Ordering::Relaxed);
        a.live.draining.store(true, Ordering::Relaxed);
        assert_eq!(pick(group, &c, "eu", 0, &[]).unwrap().0.id, "b");
    }

    #[test]
    fn a_filter_narrows_the_choice_and_union_sees_eligible_ones() {
        let mut h2 = spec("h2", "app", "sa", 1);
        h2.alpn = Some(vec!["h2".into()]);
        let (_reg, cell) = build(vec![h2, spec("h1", "app", "sa", 1)]);
        let snap = cell.load();
        let group = app(&snap, "app");
        for n in 0..50 {
            let c = client(n, Some("sa"));
            let b = pick_where(group, &c, "eu", 0, &[], |b| b.speaks(b"h2")).unwrap();
            assert_eq!(b.0.id, "h2");
            let b = pick_where(group, &c, "eu", 0, &[], |b| b.speaks(b"http/1.1")).unwrap();
            assert_eq!(b.0.id, "h1");
        }
        let c = client(1, None);
        assert!(pick_where(group, &c, "eu", 0, &[], |b| b.speaks(b"spdy/3")).is_none());
        let protos: [&[u8]; 3] = [b"h2", b"http/1.1", b"spdy/3"];
        let mask = |b: &Backend| {
            protos
                .iter()
                .enumerate()
                .filter(|(_, p)| b.speaks(p))
                .fold(0, |m, (i, _)| m | 1 << i)
        };
        assert_eq!(union_where(group, 0, 0b111, mask), 0b011);
        assert_eq!(union_where(group, 0, 0b001, mask), 0b001);
        // Expired backends speak nothing.
        assert_eq!(union_where(group, 60_000, 0b111, mask), 0);
    }

    #[test]
    fn sticky_and_weighted() {
        let (_reg, cell) = build(vec![
            spec("w1", "app", "sa", 1),
            spec("w2", "app", "sa", 2),
            spec("w3", "app", "sa", 3),
        ]);
        let snap = cell.load();
        let group = app(&snap, "app");
        let mut counts = [0u32; 3];
        for n in 0..10_000 {
            let c = client(n, Some("sa"));
            let (b, _) = pick(group, &c, "eu", 0, &[]).unwrap();
            // Sticky: the same answer twice.
            assert_eq!(pick(group, &c, "eu", 0, &[]).unwrap().0.id, b.id);
            counts[b.weight as usize - 1] += 1;
        }
        for (i, &n) in counts.iter().enumerate() {
            let expected = 10_000.0 * (i + 1) as f64 / 6.0;
            assert!(
                (f64::from(n) - expected).abs() / expected < 0.05,
                "weight {} got {n}, expected about {expected}",
                i + 1
            );
        }
    }

    #[test]
    fn leaving_backend_moves_only_its_clients() {
        let specs: Vec<_> = (0..5)
            .map(|i| spec(&format!("b{i}"), "app", "sa", 1))
            .collect();
        let (mut reg, cell) = build(specs);
        let before = cell.load_full();
        reg.deregister("b2");
        reg.publish();
        let after = cell.load_full();
        for n in 0..5_000 {
            let c = client(n, Some("sa"));
            let b = pick(app(&before, "app"), &c, "eu", 0, &[]).unwrap().0;
            let a = pick(app(&after, "app"), &c, "eu", 0, &[]).unwrap().0;
            if b.id != "b2" {
                assert_eq!(a.id, b.id, "client {n} moved although its backend stayed");
            }
        }
    }
}

#[cfg(test)]
mod routing_tests {
    use super::*;
    use crate::geo::Country;
    use crate::registry::{BackendSpec, Registry, Reserved, SnapshotCell};
    use std::collections::HashMap;
    use std::sync::atomic::Ordering;

    fn spec(id: &str, region: &str, weight: u32) -> BackendSpec {
        BackendSpec {
            weight,
            ttl_secs: Some(0),
            ..BackendSpec::new(id, "app", region, "10.0.0.1".parse().unwrap(), 80)
        }
    }

    fn build(specs: Vec<BackendSpec>) -> (Registry, Arc<SnapshotCell>) {
        let cell = Arc::new(SnapshotCell::new());
        let mut reg = Registry::new(2, 60, 600, cell.clone());
        for s in specs {
            reg.register(s, 0);
        }
        reg.publish();
        (reg, cell)
    }

    fn client(n: u32, region: Option<&str>) -> Client<'_> {
        Client::new(
            IpAddr::V4(std::net::Ipv4Addr::from(0x0b00_0000 + n)),
            region,
        )
    }

    fn policy(factor: f64) -> Policy<'static> {
        static REGIONS: std::sync::OnceLock<Regions> = std::sync::OnceLock::new();
        Policy {
            hub_region: "eu",
            regions: REGIONS.get_or_init(Regions::default),
            balance_factor: factor,
        }
    }

    fn choose<'s>(snap: &'s Snapshot, c: &Client<'_>, factor: f64) -> &'s Arc<Backend> {
        let scope = Scope::of(snap, Some("app")).unwrap();
        pick_with(scope, c, &policy(factor), 0, &[], |_| true)
            .unwrap()
            .0
    }

    /// The reference: every candidate of the best tier ranked by (class, group score, member
    /// score), by brute force.
    fn brute<'s>(
        snap: &'s Snapshot,
        c: &Client<'_>,
        spec_region: &str,
        factor: f64,
    ) -> &'s Arc<Backend> {
        let group = snap.app("app").unwrap();
        let members: Vec<&Arc<Backend>> = group
            .backends()
            .filter(|b| spec_region == "*" || b.region == spec_region)
            .collect();
        let mut w: HashMap<usize, u64> = HashMap::new();
        for b in &members {
            *w.entry(crate::registry::group_of(b.key)).or_default() += u64::from(b.weight);
        }
        let eligible: Vec<_> = members.iter().filter(|b| b.eligible(0)).collect();
        // The cap's average: the first LOAD_SAMPLE candidates in storage order.
        let sample: Vec<&Arc<Backend>> = group
            .buckets()
            .iter()
            .flat_map(|bucket| {
                bucket
                    .regions()
                    .iter()
                    .filter(|l| spec_region == "*" || &*l.name == spec_region)
                    .flat_map(move |l| {
                        l.members
                            .iter()
                            .map(move |&i| &bucket.backends()[i as usize])
                    })
            })
            .filter(|b| b.eligible(0))
            .take(LOAD_SAMPLE)
            .collect();
        let load: u64 = sample.iter().map(|b| u64::from(b.connections())).sum();
        let weight: u64 = sample.iter().map(|b| u64::from(b.weight)).sum();
        let per_weight = factor * (load + 1) as f64 / weight as f64;
        eligible
            .iter()
            .map(|b| {
                let l = b.connections();
                let class = if factor > 0.0
                    && l > 0
                    && f64::from(l) >= (per_weight * f64::from(b.weight)).ceil()
                {
                    0
                } else if b.soft_loaded(l) {
                    1
                } else {
                    2
                };
                let g = crate::registry::group_of(b.key);
                (
                    (
                        class,
                        group_score(c.key, g, w[&g]),
                        score(c.key, b.key, b.weight),
                    ),
                    **b,
                )
            })
            .max_by(|a, b| a.0.partial_cmp(&b.0).unwrap())
            .unwrap()
            .1
    }

    #[test]
    fn two_level_choice_equals_the_brute_force_ranking() {
        // 3,000 backends: more than one storage bucket and every group populated.
        let specs: Vec<_> = (0..3_000)
            .map(|i| spec(&format!("b{i}"), ["sa", "us"][i % 2], 1 + (i % 3) as u32))
            .collect();
        let (_reg, cell) = build(specs);
        let snap = cell.load_full();
        assert!(snap.app("app").unwrap().buckets().len() > 1);
        // Some ineligible, some loaded.
        for (i, b) in snap.app("app").unwrap().backends().enumerate() {
            if i % 7 == 0 {
                b.live.draining.store(true, Ordering::Relaxed);
            }
            if i % 5 == 0 {
                b.live
                    .shard_counter(0)
                    .store((i % 11) as u32, Ordering::Relaxed);
            }
        }
        for n in 0..200 {
            let c = client(n, Some("sa"));
            for factor in [0.0, 1.25] {
                let got = choose(&snap, &c, factor);
                let want = brute(&snap, &c, "sa", factor);
                assert_eq!(got.id, want.id, "client {n}, factor {factor}");
            }
        }
    }

    #[test]
    fn two_level_choice_in_the_any_tier_and_past_256_buckets() {
        // Regions outside the distance table: only the "any" tier (groups summed over lists).
        let specs: Vec<_> = (0..600)
            .map(|i| spec(&format!("b{i}"), ["zz", "yy"][i % 2], 1 + (i % 4) as u32))
            .collect();
        let (_reg, cell) = build(specs);
        let snap = cell.load_full();
        for n in 0..200 {
            let c = client(n, None);
            assert_eq!(
                choose(&snap, &c, 0.0).id,
                brute(&snap, &c, "*", 0.0).id,
                "client {n}"
            );
        }
        // 70,000 backends: more buckets than groups, a group spans several buckets.
        let specs: Vec<_> = (0..70_000)
            .map(|i| spec(&format!("b{i}"), "sa", 1))
            .collect();
        let (_reg, cell) = build(specs);
        let snap = cell.load_full();
        assert!(snap.app("app").unwrap().buckets().len() > GROUPS);
        for n in 0..8 {
            let c = client(n, Some("sa"));
            assert_eq!(
                choose(&snap, &c, 0.0).id,
                brute(&snap, &c, "sa", 0.0).id,
                "client {n}"
            );
        }
    }

    #[test]
    fn weights_split_clients_in_a_large_app_too() {
        // 1,500 backends of weights 1, 2 and 3 (500 each): ten thousand clients split 1:2:3.
        let specs: Vec<_> = (0..1_500)
            .map(|i| spec(&format!("b{i}"), "sa", 1 + (i % 3) as u32))
            .collect();
        let (_reg, cell) = build(specs);
        let snap = cell.load_full();
        let mut by_weight = [0u32; 3];
        for n in 0..10_000 {
            let b = choose(&snap, &client(n, Some("sa")), 0.0);
            by_weight[b.weight as usize - 1] += 1;
        }
        for (i, &n) in by_weight.iter().enumerate() {
            let expected = 10_000.0 * (i + 1) as f64 / 6.0;
            assert!(
                (f64::from(n) - expected).abs() / expected < 0.05,
                "weight {} got {n}",
                i + 1
            );
        }
    }

    #[test]
    fn sticky_across_rebuilds_and_leaving_backends_move_few_clients() {
        let specs: Vec<_> = (0..2_000)
            .map(|i| spec(&format!("b{i}"), "sa", 1))
            .collect();
        let (mut reg, cell) = build(specs);
        let before = cell.load_full();
        // An unrelated change rebuilds the snapshot: nobody moves.
        reg.register(
            BackendSpec::new("other", "other", "sa", "10.0.0.9".parse().unwrap(), 80),
            0,
        );
        reg.publish();
        let rebuilt = cell.load_full();
        let picks: Vec<String> = (0..5_000)
            .map(|n| choose(&before, &client(n, Some("sa")), 0.0).id.clone())
            .collect();
        for (n, id) in picks.iter().enumerate() {
            assert_eq!(&choose(&rebuilt, &client(n as u32, Some("sa")), 0.0).id, id);
        }
        // A backend that stops being eligible moves only its own clients.
        let leaver = picks[0].clone();
        rebuilt
            .find(&leaver)
            .unwrap()
            .live
            .draining
            .store(true, Ordering::Relaxed);
        for (n, id) in picks.iter().enumerate() {
            let now = choose(&rebuilt, &client(n as u32, Some("sa")), 0.0);
            if *id != leaver {
                assert_eq!(&now.id, id, "client {n} moved");
            } else {
                assert_ne!(now.id, leaver);
            }
        }
        // A deregistered one moves its own clients and about as many of its group's.
        let own = picks.iter().filter(|id| **id == leaver).count();
        reg.deregister(&leaver);
        reg.publish();
        let after = cell.load_full();
        let moved = picks
            .iter()
            .enumerate()
            .filter(|(n, id)| choose(&after, &client(*n as u32, Some("sa")), 0.0).id != **id)
            .count();
        assert!(
            moved >= own && moved <= 3 * own + 5,
            "moved {moved}, own {own}"
        );
    }

    #[test]
    fn bounded_load_skips_a_backend_over_its_share_and_soft_limits_rank_last() {
        let mut soft = spec("s", "sa", 1);
        soft.soft_limit = Some(2);
        let (_reg, cell) = build(vec![spec("a", "sa", 1), spec("b", "sa", 1), soft]);
        let snap = cell.load_full();
        // A client whose first choice is `a`.
        let n = (0..1000)
            .find(|&n| choose(&snap, &client(n, Some("sa")), 1.25).id == "a")
            .unwrap();
        let c = client(n, Some("sa"));
        let a = snap.find("a").unwrap();
        // 4 connections on a, 0 elsewhere: cap = ceil(1.25 * 5 / 3) = 3 -> over.
        a.live.shard_counter(0).store(4, Ordering::Relaxed);
        assert_ne!(choose(&snap, &c, 1.25).id, "a");
        // Factor 0: no cap, stays sticky.
        assert_eq!(choose(&snap, &c, 0.0).id, "a");
        // 2 on a: cap = ceil(1.25 * 3 / 3) = 2 -> still over; 1: cap ceil(1.25*2/3) = 1 -> over;
        // with load elsewhere it fits again.
        a.live.shard_counter(0).store(1, Ordering::Relaxed);
        snap.find("b")
            .unwrap()
            .live
            .shard_counter(1)
            .store(2, Ordering::Relaxed);
        // L = 3, cap(a) = ceil(1.25 * 4 / 3) = 2 > 1.
        assert_eq!(choose(&snap, &c, 1.25).id, "a");
        // Soft limit: s at 2 connections ranks after every unloaded one, for every client.
        let s = snap.find("s").unwrap();
        s.live.shard_counter(0).store(2, Ordering::Relaxed);
        a.live.shard_counter(0).store(0, Ordering::Relaxed);
        snap.find("b")
            .unwrap()
            .live
            .shard_counter(1)
            .store(0, Ordering::Relaxed);
        for n in 0..300 {
            assert_ne!(choose(&snap, &client(n, Some("sa")), 0.0).id, "s");
        }
        // ...but is still used when nothing else is left.
        a.live.draining.store(true, Ordering::Relaxed);
        snap.find("b")
            .unwrap()
            .live
            .draining
            .store(true, Ordering::Relaxed);
        assert_eq!(choose(&snap, &c, 1.25).id, "s");
    }

    #[test]
    fn country_tier_comes_first_and_near_tiers_follow_distance() {
        let mut br = spec("br", "sa", 1);
        br.country = Some("BR".into());
        let (_reg, cell) = build(vec![
            br,
            spec("sa", "sa", 100),
            spec("us", "us", 1),
            spec("ap", "ap", 1),
            spec("eu", "eu", 1),
        ]);
        let snap = cell.load_full();
        let scope = Scope::of(&snap, Some("app")).unwrap();
        let p = Policy {
            hub_region: "ap",
            ..policy(0.0)
        };
        let mut c = client(1, Some("sa"));
        c.country = Country::parse("BR");
        let got = |c: &Client<'_>, ex: &[u64]| {
            pick_with(scope, c, &p, 0, ex, |_| true).map(|(b, t)| (b.id.clone(), t))
        };
        assert_eq!(got(&c, &[]), Some(("br".into(), Tier::Country)));
        let key = |id: &str| snap.find(id).unwrap().key;
        assert_eq!(
            got(&c, &[key("br")]),
            Some(("sa".into(), Tier::ClientRegion))
        );
        let ex = [key("br"), key("sa")];
        assert_eq!(got(&c, &ex), Some(("ap".into(), Tier::HubRegion)));
        let ex = [key("br"), key("sa"), key("ap")];
        assert_eq!(got(&c, &ex), Some(("us".into(), Tier::Near(1))));
        let ex = [key("br"), key("sa"), key("ap"), key("us")];
        assert_eq!(got(&c, &ex), Some(("eu".into(), Tier::Near(2))));
        // A region outside the distance table is reached only by "any".
        let (_reg2, cell2) = build(vec![spec("m", "mars", 1)]);
        let snap2 = cell2.load_full();
        let scope2 = Scope::of(&snap2, Some("app")).unwrap();
        assert_eq!(
            pick_with(scope2, &c, &p, 0, &[], |_| true).map(|(b, t)| (b.id.as_str(), t)),
            Some(("m", Tier::Any))
        );
    }

    #[test]
    fn explain_names_every_reason() {
        let mut full = spec("full", "sa", 1);
        full.hard_limit = Some(1);
        let (_reg, cell) = build(vec![
            spec("a", "sa", 1),
            spec("b", "sa", 1),
            spec("drained", "sa", 1),
            full,
            spec("far", "ap", 1),
        ]);
        let snap = cell.load_full();
        snap.find("drained")
            .unwrap()
            .live
            .draining
            .store(true, Ordering::Relaxed);
        snap.find("full")
            .unwrap()
            .live
            .shard_counter(0)
            .store(1, Ordering::Relaxed);
        let scope = Scope::of(&snap, Some("app")).unwrap();
        let c = client(3, Some("sa"));
        let (chosen, list) = explain(scope, &c, &policy(1.25), 0);
        let (chosen, tier) = chosen.unwrap();
        assert_eq!(tier, Tier::ClientRegion);
        assert!(chosen.id == "a" || chosen.id == "b");
        let why: HashMap<&str, (&str, Tier)> = list
            .iter()
            .map(|c| (c.backend.id.as_str(), (c.why, c.tier)))
            .collect();
        assert_eq!(why[chosen.id.as_str()].0, "chosen");
        let other = if chosen.id == "a" { "b" } else { "a" };
        assert_eq!(why[other].0, "lower score");
        assert_eq!(why["drained"].0, "draining");
        assert_eq!(why["full"].0, "at hard limit");
        assert_eq!(why["far"], ("lower tier", Tier::Near(3)));
        assert_eq!(list[0].backend.id, chosen.id);
        // Expired: past a TTL.
        let (_r, cell) = build(vec![BackendSpec {
            ttl_secs: Some(1),
            ..spec("old", "sa", 1)
        }]);
        let snap = cell.load_full();
        let (none, list) = explain(
            Scope::of(&snap, Some("app")).unwrap(),
            &c,
            &policy(1.25),
            10_000,
        );
        assert!(none.is_none());
        assert_eq!(list[0].why, "expired");
    }

    #[test]
    fn hard_limits_hold_under_concurrent_picks() {
        let mut a = spec("a", "sa", 1);
        a.hard_limit = Some(3);
        let mut b = spec("b", "sa", 1);
        b.hard_limit = Some(2);
        let (_reg, cell) = build(vec![a, b]);
        let snap = cell.load_full();
        let peak: Vec<std::sync::atomic::AtomicU32> = (0..2).map(|_| Default::default()).collect();
        let live: Vec<std::sync::atomic::AtomicU32> = (0..2).map(|_| Default::default()).collect();
        std::thread::scope(|s| {
            for t in 0..8u32 {
                let (snap, peak, live) = (&snap, &peak, &live);
                s.spawn(move || {
                    for n in 0..2_000u32 {
                        let c = client(t * 10_000 + n, Some("sa"));
                        let mut tried = [0u64; 2];
                        for k in 0..2 {
                            let Some((b, _)) = pick_with(
                                Scope::of(snap, Some("app")).unwrap(),
                                &c,
                                &policy(0.0),
                                0,
                                &tried[..k],
                                |_| true,
                            ) else {
                                break;
                            };
                            tried[k] = b.key;
                            if b.try_reserve() != Reserved::Slot {
                                continue;
                            }
                            let i = usize::from(b.id == "b");
                            let now = live[i].fetch_add(1, Ordering::SeqCst) + 1;
                            peak[i].fetch_max(now, Ordering::SeqCst);
                            std::thread::yield_now();
                            live[i].fetch_sub(1, Ordering::SeqCst);
                            b.release();
                            break;
                        }
                    }
                });
            }
        });
        assert!(
            peak[0].load(Ordering::SeqCst) <= 3,
            "a: {}",
            peak[0].load(Ordering::SeqCst)
        );
        assert!(
            peak[1].load(Ordering::SeqCst) <= 2,
            "b: {}",
            peak[1].load(Ordering::SeqCst)
        );
        assert_eq!(
            snap.find("a").unwrap().live.reserved.load(Ordering::SeqCst),
            0
        );
        // Unlimited backends reserve nothing.
        let (_r, cell) = build(vec![spec("u", "sa", 1)]);
        assert_eq!(
            cell.load().find("u").unwrap().try_reserve(),
            Reserved::Unlimited
        );
    }
}
