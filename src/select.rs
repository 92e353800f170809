//! Choosing a backend for a client. Pure and allocation-free: the same inputs give the same
//! answer on every shard, which is what makes stickiness work without a shared binding table
//! (`SO_REUSEPORT` spreads one client's connections over every shard).
//!
//! 1. Candidates: members of the app's group that are [`Backend::eligible`]: heartbeat alive,
//!    health up, not draining, under their hard limit; minus those the caller already tried.
//! 2. Tiers, first non-empty wins: the client's region, the hub's region, any region.
//! 3. Within the tier: weighted rendezvous hashing on the client address. Each backend scores
//!    `weight / -ln(u)` with `u` a uniform hash of (client, backend); the highest wins. This is
//!    sticky per client, splits clients in proportion to weight, and when a backend leaves only
//!    its own clients move.
//!
//! [`Backend::eligible`]: crate::registry::Backend::eligible

use crate::registry::{mix64, stable_hash, AppGroup, Backend, Snapshot};
use std::net::IpAddr;
use std::sync::Arc;

/// Who is asking, as far as choosing is concerned.
#[derive(Debug, Clone, Copy)]
pub struct Client<'a> {
    /// The client's region, from the region map (`None` when unknown).
    pub region: Option<&'a str>,
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
        Client { region, key }
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
}

/// Which tier a choice came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    ClientRegion,
    HubRegion,
    Any,
}

/// The rendezvous score of a backend with `key` and `weight` for a client with `client_key`.
#[inline]
pub fn score(client_key: u64, backend_key: u64, weight: u32) -> f64 {
    let h = mix64(client_key ^ backend_key);
    // 53 random bits -> u in (0, 1]; -ln(u) in [0, 37).
    let u = ((h >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64);
    let x = -u.ln();
    if x <= 0.0 {
        f64::INFINITY
    } else {
        f64::from(weight.max(1)) / x
    }
}

/// The running best of one tier.
struct Best<'s> {
    best: Option<(f64, u64, &'s Arc<Backend>)>,
}

impl<'s> Best<'s> {
    #[inline]
    fn offer(
        &mut self,
        b: &'s Arc<Backend>,
        client: &Client<'_>,
        now_ms: u64,
        exclude: &[u64],
        keep: &impl Fn(&Backend) -> bool,
    ) {
        if exclude.contains(&b.key) || !b.eligible(now_ms) || !keep(b) {
            return;
        }
        let s = score(client.key, b.key, b.weight);
        // Ties (astronomically rare) go to the larger key, so every shard agrees.
        if self
            .best
            .is_none_or(|(bs, bk, _)| s > bs || (s == bs && b.key > bk))
        {
            self.best = Some((s, b.key, b));
        }
    }
}

/// The best eligible backend of `scope` in `region` (`None` = any region).
fn best_in<'s>(
    scope: Scope<'s>,
    region: Option<&str>,
    client: &Client<'_>,
    now_ms: u64,
    exclude: &[u64],
    keep: &impl Fn(&Backend) -> bool,
) -> Option<&'s Arc<Backend>> {
    let mut best = Best { best: None };
    let mut visit = |g: &'s AppGroup| match region {
        Some(r) => g
            .region(r)
            .for_each(|b| best.offer(b, client, now_ms, exclude, keep)),
        None => g
            .backends()
            .for_each(|b| best.offer(b, client, now_ms, exclude, keep)),
    };
    match scope {
        Scope::App(g) => visit(g),
        Scope::All(snap) => snap.groups().for_each(visit),
    }
    best.best.map(|(_, _, b)| b)
}

/// Chooses the backend of `scope` for `client`: see the module docs. `exclude` lists the keys
/// ([`Backend::key`]) of backends already tried for this connection (a handful at most).
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
    if let Some(region) = client.region {
        if let Some(b) = best_in(scope, Some(region), client, now_ms, exclude, &keep) {
            return Some((b, Tier::ClientRegion));
        }
    }
    if client.region != Some(hub_region) {
        if let Some(b) = best_in(scope, Some(hub_region), client, now_ms, exclude, &keep) {
            return Some((b, Tier::HubRegion));
        }
    }
    best_in(scope, None, client, now_ms, exclude, &keep).map(|b| (b, Tier::Any))
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
        let c = client(1, Some("us"));
        let (tier_any, t) = id_of(pick(group, &c, "xx", 0, &[])).unwrap();
        assert_eq!(t, Tier::Any);
        assert!(tier_any.starts_with("a-"));
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
        for n in 0..12_000 {
            let c = client(n, Some("sa"));
            let (b, _) = pick(group, &c, "eu", 0, &[]).unwrap();
            // Sticky: the same answer twice.
            assert_eq!(pick(group, &c, "eu", 0, &[]).unwrap().0.id, b.id);
            counts[b.weight as usize - 1] += 1;
        }
        for (i, &n) in counts.iter().enumerate() {
            let expected = 12_000.0 * (i + 1) as f64 / 6.0;
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
