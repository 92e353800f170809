//! Many replicas in memory over a simulated network: seeded loss, duplication, reordering
//! (random latency), partitions and clock skew. Deterministic: one seed, one run.

use super::*;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// A tiny deterministic RNG (splitmix64).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix64(self.0)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// True with probability `per_mille / 1000`.
    pub fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

#[derive(Debug, Clone, Copy)]
pub struct NetConfig {
    pub loss_per_mille: u64,
    pub dup_per_mille: u64,
    pub min_latency_ms: u64,
    pub max_latency_ms: u64,
}

impl NetConfig {
    pub fn perfect() -> NetConfig {
        NetConfig {
            loss_per_mille: 0,
            dup_per_mille: 0,
            min_latency_ms: 1,
            max_latency_ms: 1,
        }
    }

    pub fn hostile() -> NetConfig {
        NetConfig {
            loss_per_mille: 200,
            dup_per_mille: 100,
            min_latency_ms: 1,
            max_latency_ms: 80,
        }
    }
}

/// One node: its replica and the registry it keeps from the events (what the hub would apply).
pub struct Node {
    pub replica: Replica,
    pub registry: BTreeMap<String, Value>,
    pub beats: BTreeMap<String, u64>,
    pub up: bool,
}

/// A datagram in flight: (deliver at, sequence, to, from, payload).
type Flight = Reverse<(u64, u64, usize, usize, Vec<u8>)>;

pub struct Sim {
    pub now: u64,
    pub nodes: Vec<Node>,
    index: HashMap<NodeId, usize>,
    pub net: NetConfig,
    pub rng: Rng,
    flight: BinaryHeap<Flight>,
    seq: u64,
    /// Partition group per node: datagrams cross only within a group.
    pub group: Vec<u8>,
    pub sent_bytes: Vec<u64>,
    /// Every write made: (id, version, value), for the last-writer-wins oracle.
    pub writes: Vec<(String, Version, Option<Value>)>,
}

impl Sim {
    /// `n` nodes, all peers of each other, with wall clocks skewed by up to `skew_ms` either way.
    pub fn new(n: usize, seed: u64, net: NetConfig, skew_ms: u64, cfg: Config) -> Sim {
        let mut rng = Rng::new(seed);
        let mut nodes = Vec::new();
        let mut index = HashMap::new();
        let epoch = 1_700_000_000_000i64;
        for i in 0..n {
            let id = NodeId(1000 + i as u64);
            let skew = rng.below(2 * skew_ms + 1) as i64 - skew_ms as i64;
            nodes.push(Node {
                replica: Replica::new(id, 0, epoch + skew, cfg.clone()),
                registry: BTreeMap::new(),
                beats: BTreeMap::new(),
                up: true,
            });
            index.insert(id, i);
        }
        let mut sim = Sim {
            now: 0,
            nodes,
            index,
            net,
            rng,
            flight: BinaryHeap::new(),
            seq: 0,
            group: vec![0; n],
            sent_bytes: vec![0; n],
            writes: Vec::new(),
        };
        for i in 0..n {
            for j in 0..n {
                if i != j {
                    let peer = sim.nodes[j].replica.node();
                    sim.nodes[i].replica.add_peer(peer, 0);
                }
            }
        }
        sim
    }

    pub fn id(&self, i: usize) -> NodeId {
        self.nodes[i].replica.node()
    }

    fn apply(&mut self, i: usize, events: Vec<Event>) {
        let node = &mut self.nodes[i];
        for e in events {
            match e {
                Event::Upsert { id, value, .. } => {
                    node.registry.insert(id, value);
                }
                Event::Delete { id, .. } => {
                    node.registry.remove(&id);
                    node.beats.remove(&id);
                }
                Event::Beat { id, at_ms } => {
                    let t = node.beats.entry(id).or_insert(0);
                    *t = (*t).max(at_ms);
                }
            }
        }
    }

    pub fn upsert(&mut self, i: usize, id: &str, value: &[u8]) -> Version {
        let now = self.now;
        let value = Value::from(value);
        let v = self.nodes[i].replica.local_upsert(id, value.clone(), now);
        self.nodes[i].registry.insert(id.to_string(), value.clone());
        self.writes.push((id.to_string(), v, Some(value)));
        self.flush(i);
        v
    }

    pub fn delete(&mut self, i: usize, id: &str) -> Option<Version> {
        let now = self.now;
        let v = self.nodes[i].replica.local_delete(id, now)?;
        self.nodes[i].registry.remove(id);
        self.writes.push((id.to_string(), v, None));
        self.flush(i);
        Some(v)
    }

    pub fn beat(&mut self, i: usize, id: &str) {
        let now = self.now;
        self.nodes[i].replica.local_beat(id, now);
        if self.nodes[i].registry.contains_key(id) {
            self.nodes[i].beats.insert(id.to_string(), now);
        }
    }

    /// Moves node `i`'s queued datagrams into the network.
    fn flush(&mut self, i: usize) {
        let now = self.now;
        while let Some(t) = self.nodes[i].replica.poll_transmit(now) {
            self.sent_bytes[i] += t.payload.len() as u64;
            let Some(&to) = self.index.get(&t.to) else {
                continue;
            };
            if !self.nodes[i].up || self.rng.chance(self.net.loss_per_mille) {
                continue;
            }
            let copies = if self.rng.chance(self.net.dup_per_mille) {
                2
            } else {
                1
            };
            for _ in 0..copies {
                let span = self.net.max_latency_ms - self.net.min_latency_ms + 1;
                let at = self.now + self.net.min_latency_ms + self.rng.below(span);
                self.seq += 1;
                self.flight
                    .push(Reverse((at, self.seq, to, i, t.payload.clone())));
            }
        }
    }

    /// Runs the network and every node's timers up to `until`.
    pub fn run_until(&mut self, until: u64) {
        loop {
            let next_msg = self.flight.peek().map(|Reverse(m)| m.0).unwrap_or(u64::MAX);
            let next_timer = self
                .nodes
                .iter()
                .filter(|n| n.up)
                .map(|n| n.replica.poll_timeout())
                .min()
                .unwrap_or(u64::MAX);
            let next = next_msg.min(next_timer).max(self.now);
            if next > until {
                self.now = until;
                return;
            }
            self.now = next;
            while let Some(Reverse(m)) = self.flight.peek() {
                if m.0 > self.now {
                    break;
                }
                let Reverse((_, _, to, from, payload)) = self.flight.pop().expect("peeked");
                // A partition cuts datagrams still in flight too; a down node hears nothing.
                if !self.nodes[to].up || self.group[to] != self.group[from] {
                    continue;
                }
                let now = self.now;
                let events = self.nodes[to]
                    .replica
                    .handle(now, &payload)
                    .expect("well-formed");
                self.apply(to, events);
                self.flush(to);
            }
            for i in 0..self.nodes.len() {
                if self.nodes[i].up && self.nodes[i].replica.poll_timeout() <= self.now {
                    let now = self.now;
                    self.nodes[i].replica.handle_timeout(now);
                    self.flush(i);
                }
            }
        }
    }

    /// Whether every node that is up holds the same entries.
    pub fn converged(&self) -> bool {
        let mut roots = self.nodes.iter().filter(|n| n.up).map(|n| n.replica.root());
        let first = roots.next();
        roots.all(|r| Some(r) == first)
    }

    /// Runs until converged (checking every `step` ms) or `limit`; returns when it converged.
    pub fn run_until_converged(&mut self, step: u64, limit: u64) -> Option<u64> {
        while self.now < limit {
            if self.converged() {
                return Some(self.now);
            }
            let t = self.now + step;
            self.run_until(t);
        }
        self.converged().then_some(self.now)
    }

    /// What last-writer-wins must have produced: id → value, for the ids whose newest write
    /// is not a deletion.
    pub fn oracle(&self) -> BTreeMap<String, Value> {
        let mut newest: BTreeMap<&str, (Version, &Option<Value>)> = BTreeMap::new();
        for (id, v, value) in &self.writes {
            let e = newest.entry(id).or_insert((*v, value));
            if *v > e.0 {
                *e = (*v, value);
            }
        }
        newest
            .into_iter()
            .filter_map(|(id, (_, v))| v.clone().map(|v| (id.to_string(), v)))
            .collect()
    }

    /// Asserts every node that is up holds exactly what the oracle says, in its replica and
    /// in the registry it built from events.
    pub fn assert_identical(&self) {
        let want = self.oracle();
        for (i, n) in self.nodes.iter().enumerate().filter(|(_, n)| n.up) {
            let live: BTreeMap<String, Value> = n
                .replica
                .entries()
                .filter_map(|(id, e)| e.value.clone().map(|v| (id.clone(), v)))
                .collect();
            assert_eq!(live, want, "replica of node {i}");
            assert_eq!(n.registry, want, "registry of node {i}");
            assert_eq!(n.replica.len(), want.len());
        }
    }
}

fn cfg() -> Config {
    Config {
        max_clock_ahead_ms: 500,
        ..Config::default()
    }
}

fn value(rng: &mut Rng, tag: u64) -> Vec<u8> {
    // Now and then a record bigger than a datagram (a backend with a long ALPN list).
    let len = if rng.chance(100) {
        2_000 + rng.below(3_000) as usize
    } else {
        20 + rng.below(200) as usize
    };
    let mut v = tag.to_be_bytes().to_vec();
    v.resize(len, (tag % 251) as u8);
    v
}

/// Random registrations, deletions and heartbeats at random nodes for `ms`.
fn workload(sim: &mut Sim, ms: u64, ids: u64, ops_per_sec: u64) {
    let end = sim.now + ms;
    let gap = 1000 / ops_per_sec.max(1);
    let mut tag = sim.writes.len() as u64;
    while sim.now < end {
        let t = sim.now + 1 + sim.rng.below(2 * gap);
        sim.run_until(t);
        let i = sim.rng.below(sim.nodes.len() as u64) as usize;
        if !sim.nodes[i].up {
            continue;
        }
        let id = format!("b{}", sim.rng.below(ids));
        match sim.rng.below(10) {
            0..=5 => {
                tag += 1;
                let v = value(&mut sim.rng, tag);
                sim.upsert(i, &id, &v);
            }
            6..=7 => {
                sim.delete(i, &id);
            }
            _ => sim.beat(i, &id),
        }
    }
}

#[test]
fn three_nodes_converge_under_loss_duplication_reordering_and_skew() {
    for seed in 0..20 {
        let mut sim = Sim::new(3, seed, NetConfig::hostile(), 3_000, cfg());
        workload(&mut sim, 20_000, 40, 20);
        let at = sim.run_until_converged(50, sim.now + 120_000);
        assert!(at.is_some(), "seed {seed}: no convergence");
        sim.assert_identical();
        assert!(
            sim.nodes
                .iter()
                .any(|n| n.replica.stats().chunks_reassembled > 0),
            "seed {seed}: the workload should exercise chunking"
        );
    }
}

#[test]
fn ten_nodes_converge_after_partitions_heal() {
    for seed in 0..5 {
        let mut sim = Sim::new(10, 100 + seed, NetConfig::hostile(), 2_000, cfg());
        workload(&mut sim, 5_000, 30, 20);
        // Split into two sides, keep writing on both (same ids: conflicts), then heal.
        for i in 0..10 {
            sim.group[i] = (i % 2) as u8;
        }
        workload(&mut sim, 15_000, 30, 30);
        // A three-way split too.
        for i in 0..10 {
            sim.group[i] = (i % 3) as u8;
        }
        workload(&mut sim, 10_000, 30, 30);
        sim.group.iter_mut().for_each(|g| *g = 0);
        let at = sim.run_until_converged(50, sim.now + 120_000);
        assert!(at.is_some(), "seed {seed}: no convergence");
        sim.assert_identical();
        let conflicts: u64 = sim.nodes.iter().map(|n| n.replica.stats().conflicts).sum();
        assert!(
            conflicts > 0,
            "seed {seed}: the partition should cause conflicts"
        );
    }
}

#[test]
fn a_pushed_change_arrives_without_waiting_for_anti_entropy() {
    let mut sim = Sim::new(3, 7, NetConfig::perfect(), 0, cfg());
    sim.run_until(100);
    sim.upsert(0, "a", b"v1");
    sim.run_until(sim.now + 5);
    assert_eq!(
        sim.nodes[1].registry.get("a").map(|v| &v[..]),
        Some(&b"v1"[..])
    );
    assert_eq!(
        sim.nodes[2].registry.get("a").map(|v| &v[..]),
        Some(&b"v1"[..])
    );
    sim.delete(2, "a");
    sim.run_until(sim.now + 5);
    assert!(sim.nodes.iter().all(|n| n.registry.is_empty()));
    // No anti-entropy round was needed to repair anything.
    assert!(sim.nodes.iter().all(|n| n.replica.stats().repairs == 0));
}

#[test]
fn a_restarted_node_catches_up_with_a_full_sync() {
    for (net, bound) in [(NetConfig::perfect(), 100), (NetConfig::hostile(), 10_000)] {
        let mut sim = Sim::new(3, 11, net, 1_000, cfg());
        workload(&mut sim, 5_000, 50, 20);
        // Node 1 goes down: it misses everything from here on.
        sim.nodes[1].up = false;
        workload(&mut sim, 10_000, 50, 20);
        // It comes back with an empty state (a new node, or one that lost its disk) ...
        let me = sim.id(1);
        let offset = 1_700_000_000_000;
        sim.nodes[1].replica = Replica::new(me, sim.now, offset, cfg());
        sim.nodes[1].registry.clear();
        sim.nodes[1].up = true;
        for j in [0, 2] {
            let peer = sim.id(j);
            sim.nodes[1].replica.add_peer(peer, sim.now);
        }
        sim.flush(1);
        let started = sim.now;
        let at = sim
            .run_until_converged(5, sim.now + 60_000)
            .expect("catches up");
        sim.assert_identical();
        // The full sync starts at once on joining, not at the next anti-entropy round.
        assert!(at - started < bound, "took {} ms", at - started);
    }
}

#[test]
fn a_restarted_node_with_its_old_state_loses_nothing_and_resurrects_nothing() {
    let mut sim = Sim::new(3, 12, NetConfig::hostile(), 1_000, cfg());
    workload(&mut sim, 5_000, 30, 20);
    sim.run_until_converged(50, sim.now + 60_000).unwrap();
    // Node 2 stops, keeping its entries (as the store keeps them), while others delete.
    let saved: Vec<(String, Entry)> = sim.nodes[2]
        .replica
        .entries()
        .filter(|(_, e)| e.value.is_some())
        .map(|(id, e)| (id.clone(), e.clone()))
        .collect();
    sim.nodes[2].up = false;
    for id in saved.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>() {
        sim.delete(0, &id);
    }
    workload(&mut sim, 5_000, 30, 20);
    let me = sim.id(2);
    sim.nodes[2].replica = Replica::new(me, sim.now, 1_700_000_000_000, cfg());
    sim.nodes[2].registry.clear();
    for (id, e) in &saved {
        sim.nodes[2].replica.restore(id, e.value.clone(), e.version);
        sim.nodes[2]
            .registry
            .insert(id.clone(), e.value.clone().unwrap());
    }
    sim.nodes[2].up = true;
    for j in [0, 1] {
        let peer = sim.id(j);
        sim.nodes[2].replica.add_peer(peer, sim.now);
    }
    sim.flush(2);
    sim.run_until_converged(50, sim.now + 60_000)
        .expect("converges");
    sim.assert_identical();
}

#[test]
fn a_local_write_wins_over_a_clock_far_ahead() {
    let mut sim = Sim::new(2, 3, NetConfig::perfect(), 0, cfg());
    // Node 1's clock runs an hour ahead.
    sim.nodes[1].replica.wall_offset_ms += 3_600_000;
    sim.upsert(1, "a", b"from the future");
    sim.run_until(sim.now + 10);
    assert!(sim.nodes[0].replica.stats().skewed > 0);
    // The operator at node 0 then changes it: that change must win, everywhere.
    sim.upsert(0, "a", b"now");
    sim.run_until(sim.now + 10);
    for n in &sim.nodes {
        assert_eq!(&n.registry["a"][..], b"now");
    }
}

#[test]
fn liveness_travels_in_summaries_not_per_heartbeat() {
    let mut sim = Sim::new(3, 5, NetConfig::perfect(), 0, cfg());
    sim.upsert(0, "a", b"x");
    sim.run_until(10_000);
    let quiet = sim.sent_bytes.clone();
    // 100 heartbeats for one backend within one second, at node 0 ...
    for k in 0..100 {
        sim.run_until(10_000 + k * 10);
        sim.beat(0, "a");
    }
    let beat_at = sim.now;
    sim.run_until(12_500);
    // ... reach the others as one time, with at most 3 summaries per peer.
    for n in &sim.nodes[1..] {
        let at = n.beats["a"];
        assert!(at.abs_diff(beat_at) <= 2, "at {at}, beat at {beat_at}");
    }
    let extra = sim.sent_bytes[0] - quiet[0];
    assert!(extra < 400, "{extra} bytes for 100 heartbeats");
}

#[test]
fn tombstones_are_collected_after_the_horizon() {
    let cfg = Config {
        tombstone_horizon_ms: 60_000,
        ..cfg()
    };
    let mut sim = Sim::new(3, 9, NetConfig::perfect(), 0, cfg.clone());
    sim.upsert(0, "a", b"x");
    sim.run_until(1_000);
    // Node 2 misses the deletion and stays away past the horizon.
    sim.nodes[2].up = false;
    sim.delete(1, "a");
    sim.run_until(100_000);
    assert!(sim.nodes[0].replica.get("a").is_none(), "collected");
    assert_eq!(sim.nodes[0].replica.stats().tombstones_collected, 1);
    // Node 2 comes back with "a": it is a stale record. Replication alone cannot tell
    // (the tombstone is gone): the horizon is documented as longer than any outage; past
    // it the record's own heartbeat age expires it. Here we check the tombstone is not
    // re-sent to node 2 as a fresh deletion and nothing crashes; the stale value spreads.
    sim.nodes[2].up = true;
    sim.run_until_converged(50, 200_000).expect("converges");
    assert!(sim
        .nodes
        .iter()
        .all(|n| n.replica.stats().tombstones_collected <= 1));
}

#[test]
fn malformed_datagrams_change_nothing() {
    let mut r = Replica::new(NodeId(1), 0, 0, cfg());
    r.local_upsert("a", Value::from(&b"x"[..]), 0);
    let root = r.root();
    let mut good = Vec::new();
    wire::header(&mut good, Kind::Records, NodeId(2));
    wire::put_u16(&mut good, 1);
    wire::put_bytes(&mut good, b"b");
    wire::put_version(
        &mut good,
        Version {
            hlc: Hlc::new(5, 0),
            origin: NodeId(2),
        },
    );
    good.push(0);
    wire::put_bytes(&mut good, b"y");
    for cut in 0..good.len() {
        assert!(r.handle(0, &good[..cut]).is_err(), "cut at {cut}");
    }
    assert!(r.handle(0, &[b'R', 9, 1]).is_err());
    assert_eq!(r.root(), root);
    let mut bad_chunk = Vec::new();
    wire::header(&mut bad_chunk, Kind::Chunk, NodeId(2));
    wire::put_bytes(&mut bad_chunk, b"c");
    wire::put_version(&mut bad_chunk, Version::default());
    wire::put_u32(&mut bad_chunk, 10);
    wire::put_u32(&mut bad_chunk, 8);
    wire::put_bytes(&mut bad_chunk, b"xyz");
    assert!(r.handle(0, &bad_chunk).is_err());
    assert_eq!(r.handle(0, &good).unwrap().len(), 1);
    assert_ne!(r.root(), root);
}

/// The figures for the closing note: `cargo test --release --lib replicate::sim::figures --
/// --ignored --nocapture`.
#[test]
#[ignore]
fn figures() {
    for &(n, seed) in &[(3usize, 1u64), (50, 2)] {
        let net = NetConfig {
            loss_per_mille: 20,
            dup_per_mille: 5,
            min_latency_ms: 5,
            max_latency_ms: 60,
        };
        let mut sim = Sim::new(n, seed, net, 500, cfg());
        for k in 0..(20 * n) {
            let i = k % n;
            sim.upsert(i, &format!("b{k}"), &[7; 200]);
        }
        sim.run_until_converged(10, 120_000).expect("initial");
        // Propagation of single writes.
        let mut lat = Vec::new();
        let mut each = Vec::new();
        for k in 0..200 {
            let i = sim.rng.below(n as u64) as usize;
            let id = format!("p{k}");
            let v = sim.upsert(i, &id, &[1; 200]);
            let t0 = sim.now;
            let mut got = vec![false; n];
            got[i] = true;
            while got.iter().any(|g| !g) {
                sim.run_until(sim.now + 1);
                for (j, x) in sim.nodes.iter().enumerate() {
                    if !got[j] && x.replica.get(&id).is_some_and(|e| e.version >= v) {
                        got[j] = true;
                        each.push(sim.now - t0);
                    }
                }
            }
            lat.push(sim.now - t0);
            sim.run_until(sim.now + 50);
        }
        lat.sort();
        each.sort();
        // Bandwidth at rest.
        sim.run_until_converged(10, sim.now + 60_000).unwrap();
        let before: u64 = sim.sent_bytes.iter().sum();
        let t = sim.now;
        sim.run_until(t + 60_000);
        let rest = (sim.sent_bytes.iter().sum::<u64>() - before) as f64 / n as f64 / 60.0;
        // Partition into halves for 30 s with writes on both sides, then heal.
        for i in 0..n {
            sim.group[i] = (i % 2) as u8;
        }
        workload(&mut sim, 30_000, 40 * n as u64, 10 * n as u64);
        sim.group.iter_mut().for_each(|g| *g = 0);
        let healed = sim.now;
        let at = sim.run_until_converged(10, healed + 600_000).unwrap();
        sim.assert_identical();
        println!(
            "n={n}: a write reaches one other node in median {} ms, worst {} ms; all nodes in median {} ms, worst {} ms \
             (simulated latency 5-60 ms, 2% loss); at rest {rest:.0} B/s sent per node; \
             convergence after a 30 s partition heals: {} ms",
            each[each.len() / 2],
            each[each.len() - 1],
            lat[lat.len() / 2],
            lat[lat.len() - 1],
            at - healed
        );
    }
}

/// The longest synchronous step, for the "sync never delays registrations by more than a
/// small bound" figure: `cargo test --release --lib replicate::sim::step_cost -- --ignored
/// --nocapture`.
#[test]
#[ignore]
fn step_cost() {
    use std::time::Instant;
    for n in [10_000usize, 100_000] {
        let mut full = Replica::new(NodeId(1), 0, 1_700_000_000_000, cfg());
        let value = Value::from(&[7u8; 250][..]);
        for i in 0..n {
            full.local_upsert(&format!("backend-{i}"), value.clone(), 0);
        }
        let mut empty = Replica::new(NodeId(2), 0, 1_700_000_000_000, cfg());
        full.add_peer(NodeId(2), 0);
        empty.add_peer(NodeId(1), 0);
        // The empty node's digest differs in every bucket: the worst answer.
        let digest = empty.poll_transmit(0).unwrap().payload;
        while full.poll_transmit(0).is_some() {}
        let t = Instant::now();
        full.handle(1, &digest).unwrap();
        let handle = t.elapsed();
        let mut steps = Vec::new();
        let mut biggest = 0;
        loop {
            let t = Instant::now();
            let Some(d) = full.poll_transmit(1) else {
                break;
            };
            steps.push(t.elapsed());
            biggest = biggest.max(d.payload.len());
        }
        let out = steps.len();
        steps.sort();
        let worst = steps[steps.len() - 1];
        let p99 = steps[steps.len() * 99 / 100];
        let t = Instant::now();
        for i in 0..1000 {
            full.local_upsert(&format!("backend-{i}"), value.clone(), 2);
        }
        let upsert = t.elapsed() / 1000;
        println!(
            "{n} entries: answering an empty node's digest: handle {handle:?}, then {out} datagrams (largest {biggest} B), each poll_transmit p99 {p99:?}, worst {worst:?}; one local upsert {upsert:?}"
        );
    }
}
