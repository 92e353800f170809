//! Choosing a backend for a client. Pure and allocation-free: the same inputs give the same
//! answer on every shard, which is what makes stickiness work without a shared binding table
//! (`SO_REUSEPORT` spreads one client's connections over every shard).
//!
//! 1. Candidates: members of the app's group that are [`Backend::eligible`]: heartbeat alive,
//!    not draining, under their hard limit; minus those the caller already tried.
//! 2. Tiers, first non-empty wins: the client's region, the hub's region, any region.
//! 3. Within the tier: weighted rendezvous hashing on the client address. Each backend scores
//!    `weight / -ln(u)` with `u` a uniform hash of (client, backend); the highest wins. This is
//!    sticky per client, splits clients in proportion to weight, and when a backend leaves only
//!    its own clients move.
//!
//! [`Backend::eligible`]: crate::registry::Backend::eligible

use crate::registry::{mix64, stable_hash, AppGroup, Snapshot};
use std::net::IpAddr;

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
    // 53 random bits → u in (0, 1]; -ln(u) in [0, 37).
    let u = ((h >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64);
    let x = -u.ln();
    if x <= 0.0 {
        f64::INFINITY
    } else {
        f64::from(weight.max(1)) / x
    }
}

/// The best eligible member of `members` for `client`, skipping `exclude`.
#[inline]
fn best_in(
    snap: &Snapshot,
    members: &[u32],
    client: &Client<'_>,
    now_ms: u64,
    exclude: &[u32],
) -> Option<u32> {
    let mut best: Option<(f64, u32)> = None;
    for &i in members {
        if exclude.contains(&i) {
            continue;
        }
        let b = snap.backend(i);
        if !b.eligible(now_ms) {
            continue;
        }
        let s = score(client.key, b.key, b.weight);
        if best.is_none_or(|(bs, _)| s > bs) {
            best = Some((s, i));
        }
    }
    best.map(|(_, i)| i)
}

/// Chooses the backend of `group` for `client`: see the module docs. `exclude` lists backends
/// already tried for this connection (a handful at most).
pub fn pick(
    snap: &Snapshot,
    group: &AppGroup,
    client: &Client<'_>,
    hub_region: &str,
    now_ms: u64,
    exclude: &[u32],
) -> Option<(u32, Tier)> {
    if let Some(region) = client.region {
        if let Some(i) = best_in(snap, group.region(region), client, now_ms, exclude) {
            return Some((i, Tier::ClientRegion));
        }
    }
    if client.region != Some(hub_region) {
        if let Some(i) = best_in(snap, group.region(hub_region), client, now_ms, exclude) {
            return Some((i, Tier::HubRegion));
        }
    }
    best_in(snap, &group.members, client, now_ms, exclude).map(|i| (i, Tier::Any))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{BackendSpec, Registry, SnapshotCell};
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    fn spec(id: &str, app: &str, region: &str, weight: u32) -> BackendSpec {
        BackendSpec {
            id: id.into(),
            app: app.into(),
            region: region.into(),
            country: None,
            ip: "10.0.0.1".parse().unwrap(),
            port: 80,
            weight,
            soft_limit: None,
            hard_limit: None,
            ttl_secs: Some(60),
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

    fn id_of(snap: &Snapshot, pick: Option<(u32, Tier)>) -> Option<(&str, Tier)> {
        pick.map(|(i, t)| (snap.backend(i).id.as_str(), t))
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
        let group = snap.app("app").unwrap();
        let c = client(1, Some("sa"));
        assert_eq!(
            id_of(&snap, pick(&snap, group, &c, "eu", 0, &[])),
            Some(("a-sa", Tier::ClientRegion))
        );
        let c = client(1, Some("us"));
        assert_eq!(
            id_of(&snap, pick(&snap, group, &c, "eu", 0, &[])),
            Some(("a-eu", Tier::HubRegion))
        );
        let c = client(1, Some("us"));
        let (tier_any, t) = id_of(&snap, pick(&snap, group, &c, "xx", 0, &[])).unwrap();
        assert_eq!(t, Tier::Any);
        assert!(tier_any.starts_with("a-"));
        // Never another app's backend.
        for n in 0..200 {
            let c = client(n, None);
            let (id, _) = id_of(&snap, pick(&snap, group, &c, "us", 0, &[])).unwrap();
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
        let group = snap.app("app").unwrap();
        let c = client(7, Some("sa"));
        let (first, _) = pick(&snap, group, &c, "eu", 0, &[]).unwrap();
        assert_eq!(snap.backend(first).id, "a-sa");
        let (second, tier) = pick(&snap, group, &c, "eu", 0, &[first]).unwrap();
        assert_eq!(
            (snap.backend(second).id.as_str(), tier),
            ("a-eu", Tier::HubRegion)
        );
        assert_eq!(pick(&snap, group, &c, "eu", 0, &[first, second]), None);
        // Past the TTL (60 s) nothing is served.
        assert_eq!(pick(&snap, group, &c, "eu", 60_000, &[]), None);
    }

    #[test]
    fn hard_limit_and_draining_exclude() {
        let mut limited = spec("a", "app", "sa", 1);
        limited.hard_limit = Some(2);
        let (_reg, cell) = build(vec![limited, spec("b", "app", "eu", 1)]);
        let snap = cell.load();
        let group = snap.app("app").unwrap();
        let c = client(3, Some("sa"));
        let a = snap.backend_by_id("a").unwrap();
        a.live.shard_counter(0).store(1, Ordering::Relaxed);
        assert_eq!(
            snap.backend(pick(&snap, group, &c, "eu", 0, &[]).unwrap().0)
                .id,
            "a"
        );
        a.live.shard_counter(1).store(1, Ordering::Relaxed);
        assert_eq!(
            snap.backend(pick(&snap, group, &c, "eu", 0, &[]).unwrap().0)
                .id,
            "b"
        );
        a.live.shard_counter(1).store(0, Ordering::Relaxed);
        a.live.draining.store(true, Ordering::Relaxed);
        assert_eq!(
            snap.backend(pick(&snap, group, &c, "eu", 0, &[]).unwrap().0)
                .id,
            "b"
        );
    }

    #[test]
    fn sticky_and_weighted() {
        let (_reg, cell) = build(vec![
            spec("w1", "app", "sa", 1),
            spec("w2", "app", "sa", 2),
            spec("w3", "app", "sa", 3),
        ]);
        let snap = cell.load();
        let group = snap.app("app").unwrap();
        let mut counts = [0u32; 3];
        for n in 0..12_000 {
            let c = client(n, Some("sa"));
            let (i, _) = pick(&snap, group, &c, "eu", 0, &[]).unwrap();
            // Sticky: the same answer twice.
            assert_eq!(pick(&snap, group, &c, "eu", 0, &[]).unwrap().0, i);
            counts[i as usize] += 1;
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
            let b = before.backend(
                pick(&before, before.app("app").unwrap(), &c, "eu", 0, &[])
                    .unwrap()
                    .0,
            );
            let a = after.backend(
                pick(&after, after.app("app").unwrap(), &c, "eu", 0, &[])
                    .unwrap()
                    .0,
            );
            if b.id != "b2" {
                assert_eq!(a.id, b.id, "client {n} moved although its backend stayed");
            }
        }
    }
}
