//! Registry replication between hubs (4002/udp): a deterministic state machine, no sockets,
//! no clock of its own.
//!
//! The driver (on the API shard) feeds it local changes ([`Replica::local_upsert`],
//! [`Replica::local_delete`], [`Replica::local_beat`]), datagrams from peers
//! ([`Replica::handle`], which returns the remote changes to apply to the registry), timer
//! expiries ([`Replica::handle_timeout`] at [`Replica::poll_timeout`]) and membership changes
//! ([`Replica::add_peer`], [`Replica::remove_peer`]); it sends what
//! [`Replica::poll_transmit`] returns. Time is the caller's `now` (monotonic ms); the wall clock
//! for versions is `now + wall_offset_ms`. Tests run many replicas in memory over a simulated
//! network (`sim.rs`).
//!
//! # Model
//!
//! - Each id has one [`Entry`]: a value (an opaque, encoded backend) or a tombstone, with a
//!   [`Version`] = (hybrid logical clock, origin node). Merging is last-writer-wins on the
//!   version; equal clocks are ordered by origin node id, so every node picks the same winner
//!   whatever order writes arrive in. A local write is versioned above the entry it replaces,
//!   so an operator's change always wins over the state it saw, even against a clock that
//!   runs ahead.
//! - **Push**: a local change is sent to every peer at once (one datagram, or chunks of at
//!   most `max_payload` bytes for a big record). Remote changes are not relayed.
//! - **Anti-entropy** repairs what pushes lost: every `anti_entropy_ms` a node sends one
//!   random peer a `Ping` with a hash of its whole registry (at rest this is the only traffic:
//!   a 19-byte datagram a second). On a mismatch the two exchange per-bucket hashes
//!   (`Digest`, 64 buckets by id hash), then the entries of differing buckets as (id, version)
//!   lists (`Summary`); each side asks (`Want`) for what the other has newer and gets the
//!   records. A new or restarted node does exactly this with every peer as soon as membership
//!   names it: that is the full sync.
//! - **Tombstones**: a deletion is an entry like any other, so it wins over the older value
//!   everywhere. It is collected once its clock is older than `tombstone_horizon_ms`
//!   (default 24 h) — by the clock it carries, so every node collects it at the same time —
//!   and a tombstone that old is neither accepted nor asked for again. The horizon must be
//!   longer than any partition or outage after which a node rejoins with its old state;
//!   even past it, a stale record is not served long: it carries its last heartbeat, so it
//!   is expired and swept like any backend whose heartbeats stopped.
//! - **Liveness** is not versioned: a heartbeat only moves a time forward, so it merges by
//!   maximum and needs no version. Each node sends its peers, every `liveness_ms`, the ids
//!   that heartbeated *at that node* since its last summaries, with their age in ms (ages, not
//!   times: immune to clock skew but for the transit time), each id in `liveness_repeats`
//!   consecutive summaries so that one lost datagram loses nothing. No datagram per heartbeat.
//! - **A backend registered at a node that dies** stays in every registry and keeps being
//!   served at the other hubs while its last heartbeat (at any hub) is younger than its TTL,
//!   exactly like a local one; a backend that moves its heartbeats to another hub therefore
//!   keeps its record alive everywhere. When heartbeats stop it expires and is swept after the
//!   grace period by every hub; the sweep's deletions are ordinary tombstones, and concurrent
//!   tombstones agree. Nobody "adopts" records: ownership would only matter if one node's
//!   decision had to be preferred, and LWW already makes every decision final.
//!
//! Nothing assumes delivery, order or uniqueness: every message is idempotent and stateless
//! but for chunk reassembly, which is bounded in entries and time.

mod hlc;
pub mod hub;
#[cfg(test)]
mod sim;
pub mod wire;

pub use hlc::{Clock, Hlc};

use crate::registry::{mix64, stable_hash};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::Rc;
use wire::{Kind, WireError};

/// A node of the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct NodeId(pub u64);

impl NodeId {
    /// The id of a node named `name` (stable across restarts and processes).
    pub fn from_name(name: &str) -> NodeId {
        NodeId(stable_hash(name.as_bytes()))
    }
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// The version of an entry. Ordered by clock, then by origin: the deterministic tie-break.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Version {
    pub hlc: Hlc,
    pub origin: NodeId,
}

/// An encoded record (what, is the driver's business).
pub type Value = Rc<[u8]>;

/// One id's state: a value, or a tombstone (`None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub version: Version,
    pub value: Option<Value>,
}

/// What the registry must do about a message from a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `id` now has this value (new, or newer than ours).
    Upsert {
        id: String,
        value: Value,
        version: Version,
    },
    /// `id` was deleted (and we had it).
    Delete { id: String, version: Version },
    /// `id` heartbeated at another hub at (our monotonic) `at_ms`.
    Beat { id: String, at_ms: u64 },
}

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub to: NodeId,
    pub payload: Vec<u8>,
}

/// Tuning; the defaults are what the hub runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Largest datagram payload this machine produces (before the authentication envelope).
    pub max_payload: usize,
    pub anti_entropy_ms: u64,
    /// A local change is pushed once more this long after the first push (0: never): a
    /// push lost to one of many peers would otherwise wait for anti-entropy.
    pub repush_ms: u64,
    pub liveness_ms: u64,
    /// In how many consecutive liveness summaries each heartbeat travels.
    pub liveness_repeats: u8,
    pub tombstone_horizon_ms: u64,
    /// How far ahead of our wall clock a peer's clock may pull ours.
    pub max_clock_ahead_ms: u64,
    /// Datagrams waiting to be sent; beyond it the oldest are dropped (anti-entropy repairs).
    pub max_queue: usize,
    /// Largest record value accepted.
    pub max_value: usize,
    /// Records being reassembled from chunks at once, and how long one may take.
    pub max_partials: usize,
    pub reassembly_timeout_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_payload: 1100,
            anti_entropy_ms: 1_000,
            repush_ms: 250,
            liveness_ms: 1_000,
            liveness_repeats: 3,
            tombstone_horizon_ms: 24 * 3600 * 1000,
            max_clock_ahead_ms: 10_000,
            max_queue: 16_384,
            max_value: 60_000,
            max_partials: 256,
            reassembly_timeout_ms: 10_000,
        }
    }
}

/// Counters, for metrics and the cluster status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub sent: u64,
    pub sent_bytes: u64,
    pub received: u64,
    pub received_bytes: u64,
    /// Datagrams refused as malformed.
    pub malformed: u64,
    /// Datagrams dropped because the send queue was full.
    pub queue_drops: u64,
    /// Remote entries that replaced ours (or were new to us).
    pub applied: u64,
    /// Remote entries older than ours (a concurrent or repeated write lost to ours).
    pub stale: u64,
    /// Remote entries that replaced a *different* entry of ours: conflicting writes resolved.
    pub conflicts: u64,
    /// Remote clocks further ahead than the tolerance (merged, but the clock not followed).
    pub skewed: u64,
    pub anti_entropy_rounds: u64,
    /// Anti-entropy exchanges that found a difference.
    pub repairs: u64,
    pub tombstones_collected: u64,
    pub chunks_reassembled: u64,
}

/// What the API shows.
#[derive(Debug, Clone)]
pub struct Status {
    pub node: NodeId,
    pub entries: usize,
    pub tombstones: usize,
    pub root: u64,
    pub clock: Hlc,
    pub queued: usize,
    /// Each peer, and when (our `now`) we last found it holding the same registry.
    pub peers: Vec<(NodeId, Option<u64>)>,
    pub stats: Stats,
}

/// Ids are spread over this many buckets for digests (one `Digest` datagram: 64 × 8 bytes).
pub const BUCKETS: usize = 64;

#[derive(Debug, Default)]
struct Peer {
    last_sync_ms: Option<u64>,
}

struct Partial {
    total: usize,
    buf: Vec<u8>,
    got: usize,
    offsets: BTreeMap<u32, u32>,
    started_ms: u64,
}

/// One node's replica of the registry's replicated state.
pub struct Replica {
    me: NodeId,
    cfg: Config,
    clock: Clock,
    wall_offset_ms: i64,
    buckets: Vec<BTreeMap<String, Entry>>,
    hashes: [u64; BUCKETS],
    live: usize,
    peers: BTreeMap<NodeId, Peer>,
    queue: VecDeque<Transmit>,
    rng: u64,
    next_ae: u64,
    next_liveness: u64,
    next_gc: u64,
    /// Local changes to push again: (when, id).
    repush: VecDeque<(u64, String)>,
    /// Bucket summaries owed to peers, produced one bucket at a time as the send queue
    /// drains: answering a digest never costs more than one bucket's worth of work at once.
    summaries: VecDeque<(NodeId, usize)>,
    /// Heartbeats taken here still to be sent: id → (when, summaries left).
    recent_beats: BTreeMap<String, (u64, u8)>,
    /// The latest heartbeat known per id, from here or elsewhere (our monotonic ms).
    last_beat: HashMap<String, u64>,
    partials: HashMap<(String, Version), Partial>,
    stats: Stats,
}

fn bucket_of(id: &str) -> usize {
    (stable_hash(id.as_bytes()) >> 58) as usize
}

fn entry_hash(id: &str, e: &Entry) -> u64 {
    let tomb = u64::from(e.value.is_none());
    mix64(
        stable_hash(id.as_bytes())
            ^ mix64(e.version.hlc.0 ^ mix64(e.version.origin.0.wrapping_add(tomb))),
    )
}

impl Replica {
    pub fn new(me: NodeId, now: u64, wall_offset_ms: i64, cfg: Config) -> Replica {
        let clock = Clock::new(cfg.max_clock_ahead_ms);
        Replica {
            me,
            clock,
            wall_offset_ms,
            buckets: (0..BUCKETS).map(|_| BTreeMap::new()).collect(),
            hashes: [0; BUCKETS],
            live: 0,
            peers: BTreeMap::new(),
            queue: VecDeque::new(),
            rng: mix64(me.0 ^ 0x5eed) | 1,
            next_ae: now + cfg.anti_entropy_ms,
            next_liveness: now + cfg.liveness_ms,
            next_gc: now + cfg.anti_entropy_ms * 10,
            repush: VecDeque::new(),
            summaries: VecDeque::new(),
            recent_beats: BTreeMap::new(),
            last_beat: HashMap::new(),
            partials: HashMap::new(),
            stats: Stats::default(),
            cfg,
        }
    }

    pub fn node(&self) -> NodeId {
        self.me
    }

    fn phys(&self, now: u64) -> u64 {
        (now as i64).saturating_add(self.wall_offset_ms).max(0) as u64
    }

    fn next_rand(&mut self) -> u64 {
        // xorshift64*: deterministic per node, which is all the peer choice needs.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    // ---- membership ----

    /// A peer joined (or came back): starts a full sync with it at once.
    pub fn add_peer(&mut self, peer: NodeId, _now: u64) {
        if peer == self.me || self.peers.contains_key(&peer) {
            return;
        }
        self.peers.insert(peer, Peer::default());
        self.send_digest(peer, true);
    }

    pub fn remove_peer(&mut self, peer: NodeId) {
        self.peers.remove(&peer);
        self.summaries.retain(|(p, _)| *p != peer);
    }

    pub fn peers(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.peers.keys().copied()
    }

    // ---- state ----

    pub fn get(&self, id: &str) -> Option<&Entry> {
        self.buckets[bucket_of(id)].get(id)
    }

    /// Every entry, tombstones included, in (bucket, id) order.
    pub fn entries(&self) -> impl Iterator<Item = (&String, &Entry)> {
        self.buckets.iter().flat_map(|b| b.iter())
    }

    /// Entries with a value.
    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// A hash of every entry: equal roots mean equal registries (tombstones included).
    pub fn root(&self) -> u64 {
        self.hashes
            .iter()
            .enumerate()
            .fold(0, |acc, (i, h)| acc ^ mix64(h.wrapping_add(i as u64)))
    }

    pub fn last_beat(&self, id: &str) -> Option<u64> {
        self.last_beat.get(id).copied()
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn status(&self) -> Status {
        let entries: usize = self.buckets.iter().map(|b| b.len()).sum();
        Status {
            node: self.me,
            entries: self.live,
            tombstones: entries - self.live,
            root: self.root(),
            clock: self.clock.last(),
            queued: self.queued(),
            peers: self
                .peers
                .iter()
                .map(|(id, p)| (*id, p.last_sync_ms))
                .collect(),
            stats: self.stats.clone(),
        }
    }

    fn set(&mut self, id: &str, entry: Entry) {
        let b = bucket_of(id);
        let new_hash = entry_hash(id, &entry);
        let live = entry.value.is_some();
        let old = match self.buckets[b].get_mut(id) {
            Some(slot) => Some(std::mem::replace(slot, entry)),
            None => {
                self.buckets[b].insert(id.to_string(), entry);
                None
            }
        };
        if let Some(old) = &old {
            self.hashes[b] ^= entry_hash(id, old);
            if old.value.is_some() {
                self.live -= 1;
            }
        }
        if live {
            self.live += 1;
        } else {
            self.recent_beats.remove(id);
            self.last_beat.remove(id);
        }
        self.hashes[b] ^= new_hash;
    }

    fn remove(&mut self, id: &str) {
        let b = bucket_of(id);
        if let Some(old) = self.buckets[b].remove(id) {
            self.hashes[b] ^= entry_hash(id, &old);
            if old.value.is_some() {
                self.live -= 1;
            }
        }
    }

    /// Loads an entry found on disk at startup: not sent anywhere (anti-entropy compares it).
    pub fn restore(&mut self, id: &str, value: Option<Value>, version: Version) {
        self.clock.witness(version.hlc);
        if self.get(id).is_none_or(|e| e.version < version) {
            self.set(id, Entry { version, value });
        }
    }

    // ---- local changes ----

    /// A registration or update here. Returns its version; the change is queued for every peer.
    pub fn local_upsert(&mut self, id: &str, value: Value, now: u64) -> Version {
        let seen = self.get(id).map(|e| e.version.hlc);
        let version = Version {
            hlc: self.clock.write_version(self.phys(now), seen),
            origin: self.me,
        };
        self.set(
            id,
            Entry {
                version,
                value: Some(value),
            },
        );
        self.last_beat.insert(id.to_string(), now);
        self.push(id);
        self.schedule_repush(id, now);
        version
    }

    /// A deletion here (deregistration, or expiry). `None` when there was nothing to delete.
    pub fn local_delete(&mut self, id: &str, now: u64) -> Option<Version> {
        let seen = self.get(id).filter(|e| e.value.is_some())?.version.hlc;
        let version = Version {
            hlc: self.clock.write_version(self.phys(now), Some(seen)),
            origin: self.me,
        };
        self.set(
            id,
            Entry {
                version,
                value: None,
            },
        );
        self.push(id);
        self.schedule_repush(id, now);
        Some(version)
    }

    /// A heartbeat taken here: travels in the next liveness summaries.
    pub fn local_beat(&mut self, id: &str, now: u64) {
        if self.get(id).is_some_and(|e| e.value.is_some()) {
            self.recent_beats
                .insert(id.to_string(), (now, self.cfg.liveness_repeats));
            self.last_beat.insert(id.to_string(), now);
        }
    }

    fn schedule_repush(&mut self, id: &str, now: u64) {
        if self.cfg.repush_ms > 0 && !self.peers.is_empty() {
            self.repush
                .push_back((now + self.cfg.repush_ms, id.to_string()));
        }
    }

    /// Sends `id`'s entry to every peer.
    fn push(&mut self, id: &str) {
        if self.peers.is_empty() {
            return;
        }
        let entry = self.get(id).expect("just set").clone();
        let payloads = self.encode_records([(id, &entry)].into_iter());
        let peers: Vec<NodeId> = self.peers.keys().copied().collect();
        for p in peers {
            for payload in &payloads {
                self.enqueue(p, payload.clone());
            }
        }
    }

    // ---- output ----

    fn enqueue(&mut self, to: NodeId, payload: Vec<u8>) {
        if self.queue.len() >= self.cfg.max_queue {
            self.queue.pop_front();
            self.stats.queue_drops += 1;
        }
        self.queue.push_back(Transmit { to, payload });
    }

    /// The next datagram to send, if any.
    pub fn poll_transmit(&mut self, now: u64) -> Option<Transmit> {
        while self.queue.is_empty() {
            let (peer, b) = self.summaries.pop_front()?;
            self.send_summary(peer, b, now);
        }
        let t = self.queue.pop_front()?;
        self.stats.sent += 1;
        self.stats.sent_bytes += t.payload.len() as u64;
        Some(t)
    }

    /// Datagrams waiting in the send queue (and bucket summaries still to produce).
    pub fn queued(&self) -> usize {
        self.queue.len() + self.summaries.len()
    }

    /// When [`Replica::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> u64 {
        let repush = self.repush.front().map_or(u64::MAX, |r| r.0);
        self.next_ae
            .min(self.next_liveness)
            .min(self.next_gc)
            .min(repush)
    }

    /// Runs whatever periodic work is due at `now`.
    pub fn handle_timeout(&mut self, now: u64) {
        while self.repush.front().is_some_and(|r| r.0 <= now) {
            let (_, id) = self.repush.pop_front().expect("front");
            // The entry as it is now: a later change to the id is pushed, not the old one.
            if self.get(&id).is_some() {
                self.push(&id);
            }
        }
        if now >= self.next_ae {
            self.next_ae = now + self.cfg.anti_entropy_ms;
            if !self.peers.is_empty() {
                let i = (self.next_rand() % self.peers.len() as u64) as usize;
                let peer = *self.peers.keys().nth(i).expect("in range");
                let mut out = Vec::with_capacity(wire::HEADER_LEN + 8);
                wire::header(&mut out, Kind::Ping, self.me);
                wire::put_u64(&mut out, self.root());
                self.stats.anti_entropy_rounds += 1;
                self.enqueue(peer, out);
            }
        }
        if now >= self.next_liveness {
            self.next_liveness = now + self.cfg.liveness_ms;
            self.send_liveness(now);
        }
        if now >= self.next_gc {
            self.next_gc = now + self.cfg.anti_entropy_ms * 10;
            self.collect(now);
        }
    }

    fn send_liveness(&mut self, now: u64) {
        if self.recent_beats.is_empty() {
            return;
        }
        let mut batch = Batch::new(Kind::Liveness, self.me, self.cfg.max_payload, &[]);
        let mut item = Vec::new();
        self.recent_beats.retain(|id, (at, left)| {
            item.clear();
            wire::put_bytes(&mut item, id.as_bytes());
            wire::put_u32(
                &mut item,
                now.saturating_sub(*at).min(u32::MAX as u64) as u32,
            );
            batch.add(&item);
            *left -= 1;
            *left > 0
        });
        let payloads = batch.finish();
        let peers: Vec<NodeId> = self.peers.keys().copied().collect();
        for p in peers {
            for payload in &payloads {
                self.enqueue(p, payload.clone());
            }
        }
    }

    /// Drops tombstones past the horizon and reassemblies that took too long.
    fn collect(&mut self, now: u64) {
        let horizon = self.phys(now).saturating_sub(self.cfg.tombstone_horizon_ms);
        let mut old = Vec::new();
        for b in &self.buckets {
            for (id, e) in b {
                if e.value.is_none() && e.version.hlc.ms() < horizon {
                    old.push(id.clone());
                }
            }
        }
        self.stats.tombstones_collected += old.len() as u64;
        for id in old {
            self.remove(&id);
        }
        let timeout = self.cfg.reassembly_timeout_ms;
        self.partials
            .retain(|_, p| now.saturating_sub(p.started_ms) < timeout);
    }

    fn expired_tombstone(&self, version: Version, tomb: bool, now: u64) -> bool {
        tomb && version.hlc.ms() < self.phys(now).saturating_sub(self.cfg.tombstone_horizon_ms)
    }

    fn send_digest(&mut self, to: NodeId, reply: bool) {
        let mut out = Vec::with_capacity(wire::HEADER_LEN + 3 + BUCKETS * 8);
        wire::header(&mut out, Kind::Digest, self.me);
        out.push(u8::from(reply));
        wire::put_u16(&mut out, BUCKETS as u16);
        for h in self.hashes {
            wire::put_u64(&mut out, h);
        }
        self.enqueue(to, out);
    }

    /// Records messages for `items`: as many per datagram as fit, big ones in chunks.
    fn encode_records<'a>(
        &self,
        items: impl Iterator<Item = (&'a str, &'a Entry)>,
    ) -> Vec<Vec<u8>> {
        let max = self.cfg.max_payload;
        let mut batch = Batch::new(Kind::Records, self.me, max, &[]);
        let mut chunks = Vec::new();
        let mut item = Vec::new();
        for (id, e) in items {
            item.clear();
            wire::put_bytes(&mut item, id.as_bytes());
            wire::put_version(&mut item, e.version);
            item.push(u8::from(e.value.is_none()));
            let value: &[u8] = e.value.as_deref().unwrap_or(&[]);
            if wire::HEADER_LEN + 2 + item.len() + wire::bytes_len(value) <= max {
                wire::put_bytes(&mut item, value);
                batch.add(&item);
                continue;
            }
            // Too big for one datagram: chunks, each naming the record and its offset.
            let fixed = wire::HEADER_LEN + wire::bytes_len(id.as_bytes()) + 16 + 4 + 4 + 2;
            let room = max.saturating_sub(fixed).max(1);
            for (i, part) in value.chunks(room).enumerate() {
                let mut out = Vec::with_capacity(max);
                wire::header(&mut out, Kind::Chunk, self.me);
                wire::put_bytes(&mut out, id.as_bytes());
                wire::put_version(&mut out, e.version);
                wire::put_u32(&mut out, value.len() as u32);
                wire::put_u32(&mut out, (i * room) as u32);
                wire::put_bytes(&mut out, part);
                chunks.push(out);
            }
        }
        let mut out = batch.finish();
        out.extend(chunks);
        out
    }

    // ---- input ----

    /// Handles one datagram from a peer. Returns what changed in the registry, in order.
    /// A malformed datagram changes nothing and is counted.
    pub fn handle(&mut self, now: u64, payload: &[u8]) -> Result<Vec<Event>, WireError> {
        self.stats.received += 1;
        self.stats.received_bytes += payload.len() as u64;
        let mut events = Vec::new();
        let result = self.handle_inner(now, payload, &mut events);
        if result.is_err() {
            self.stats.malformed += 1;
        }
        // Whatever was merged before a malformed tail stays merged: each item is whole.
        result.map(|()| events)
    }

    fn handle_inner(
        &mut self,
        now: u64,
        payload: &[u8],
        events: &mut Vec<Event>,
    ) -> Result<(), WireError> {
        let (kind, from, mut r) = wire::read_header(payload)?;
        if from == self.me {
            return Ok(());
        }
        match kind {
            Kind::Ping => {
                let root = r.u64()?;
                r.finish()?;
                if root == self.root() {
                    self.synced(from, now);
                } else {
                    self.stats.repairs += 1;
                    self.send_digest(from, true);
                }
            }
            Kind::Digest => {
                let reply = r.u8()? != 0;
                let n = r.u16()? as usize;
                if n != BUCKETS {
                    return Err(WireError::Truncated);
                }
                let mut differ = Vec::new();
                for i in 0..BUCKETS {
                    if r.u64()? != self.hashes[i] {
                        differ.push(i);
                    }
                }
                r.finish()?;
                if differ.is_empty() {
                    self.synced(from, now);
                    return Ok(());
                }
                for b in differ {
                    if !self.summaries.contains(&(from, b)) {
                        self.summaries.push_back((from, b));
                    }
                }
                if reply {
                    self.send_digest(from, false);
                }
            }
            Kind::Summary => {
                let _bucket = r.u16()?;
                let n = r.u16()?;
                let mut want = Batch::new(Kind::Want, self.me, self.cfg.max_payload, &[]);
                let mut item = Vec::new();
                for _ in 0..n {
                    let id = r.str()?;
                    let version = r.version()?;
                    let tomb = r.u8()? != 0;
                    if self.expired_tombstone(version, tomb, now) {
                        continue;
                    }
                    if self.get(id).is_none_or(|e| e.version < version) {
                        item.clear();
                        wire::put_bytes(&mut item, id.as_bytes());
                        want.add(&item);
                    }
                }
                r.finish()?;
                for payload in want.finish() {
                    self.enqueue(from, payload);
                }
            }
            Kind::Want => {
                let n = r.u16()?;
                let mut ids = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    ids.push(r.str()?);
                }
                r.finish()?;
                let found: Vec<(&str, &Entry)> = ids
                    .iter()
                    .filter_map(|id| self.get(id).map(|e| (*id, e)))
                    .collect();
                let payloads = self.encode_records(found.into_iter());
                for payload in payloads {
                    self.enqueue(from, payload);
                }
            }
            Kind::Records => {
                let n = r.u16()?;
                for _ in 0..n {
                    let id = r.str()?;
                    let version = r.version()?;
                    let tomb = r.u8()? != 0;
                    let value = r.bytes()?;
                    let value = (!tomb).then(|| Value::from(value));
                    self.merge(id, version, value, now, events);
                }
                r.finish()?;
            }
            Kind::Chunk => {
                let id = r.str()?;
                let version = r.version()?;
                let total = r.u32()? as usize;
                let offset = r.u32()?;
                let data = r.bytes()?;
                r.finish()?;
                if total > self.cfg.max_value || offset as usize + data.len() > total {
                    return Err(WireError::Truncated);
                }
                self.chunk(id, version, total, offset, data, now, events);
            }
            Kind::Liveness => {
                let n = r.u16()?;
                for _ in 0..n {
                    let id = r.str()?;
                    let age = u64::from(r.u32()?);
                    let at = now.saturating_sub(age);
                    if self.get(id).is_none_or(|e| e.value.is_none()) {
                        continue;
                    }
                    let newer = self.last_beat.get(id).is_none_or(|&t| t < at);
                    if newer {
                        self.last_beat.insert(id.to_string(), at);
                        events.push(Event::Beat {
                            id: id.to_string(),
                            at_ms: at,
                        });
                    }
                }
                r.finish()?;
            }
        }
        Ok(())
    }

    fn synced(&mut self, from: NodeId, now: u64) {
        if let Some(p) = self.peers.get_mut(&from) {
            p.last_sync_ms = Some(now);
        }
    }

    /// Sends `to` the (id, version) list of bucket `b`, in as many datagrams as it takes.
    fn send_summary(&mut self, to: NodeId, b: usize, now: u64) {
        let mut prefix = Vec::new();
        wire::put_u16(&mut prefix, b as u16);
        let mut batch = Batch::new(Kind::Summary, self.me, self.cfg.max_payload, &prefix);
        let mut item = Vec::new();
        for (id, e) in &self.buckets[b] {
            let tomb = e.value.is_none();
            if self.expired_tombstone(e.version, tomb, now) {
                continue;
            }
            item.clear();
            wire::put_bytes(&mut item, id.as_bytes());
            wire::put_version(&mut item, e.version);
            item.push(u8::from(tomb));
            batch.add(&item);
        }
        for payload in batch.finish() {
            self.enqueue(to, payload);
        }
    }

    /// Last-writer-wins merge of one remote entry.
    fn merge(
        &mut self,
        id: &str,
        version: Version,
        value: Option<Value>,
        now: u64,
        events: &mut Vec<Event>,
    ) {
        if self.expired_tombstone(version, value.is_none(), now) {
            return;
        }
        if !self.clock.observe(version.hlc, self.phys(now)) {
            self.stats.skewed += 1;
        }
        let mine = self.get(id).map(|e| (e.version, e.value.is_some()));
        let had_value = match mine {
            Some((v, _)) if v >= version => {
                if v != version {
                    self.stats.stale += 1;
                }
                return;
            }
            Some((v, had)) => {
                // A different, older write: the conflict is resolved in favour of this one.
                if v.origin != version.origin {
                    self.stats.conflicts += 1;
                }
                had
            }
            None => false,
        };
        self.stats.applied += 1;
        self.set(
            id,
            Entry {
                version,
                value: value.clone(),
            },
        );
        match value {
            Some(value) => events.push(Event::Upsert {
                id: id.to_string(),
                value,
                version,
            }),
            None if had_value => events.push(Event::Delete {
                id: id.to_string(),
                version,
            }),
            None => {}
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn chunk(
        &mut self,
        id: &str,
        version: Version,
        total: usize,
        offset: u32,
        data: &[u8],
        now: u64,
        events: &mut Vec<Event>,
    ) {
        if self.get(id).is_some_and(|e| e.version >= version) {
            return;
        }
        let key = (id.to_string(), version);
        if !self.partials.contains_key(&key) && self.partials.len() >= self.cfg.max_partials {
            let oldest = self
                .partials
                .iter()
                .min_by_key(|(k, p)| (p.started_ms, (*k).clone()))
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.partials.remove(&k);
            }
        }
        let p = self.partials.entry(key.clone()).or_insert_with(|| Partial {
            total,
            buf: vec![0; total],
            got: 0,
            offsets: BTreeMap::new(),
            started_ms: now,
        });
        if p.total != total || p.offsets.contains_key(&offset) {
            return;
        }
        let start = offset as usize;
        p.buf[start..start + data.len()].copy_from_slice(data);
        p.offsets.insert(offset, data.len() as u32);
        p.got += data.len();
        if p.got < p.total {
            return;
        }
        let p = self.partials.remove(&key).expect("present");
        self.stats.chunks_reassembled += 1;
        self.merge(id, version, Some(Value::from(p.buf)), now, events);
    }
}

/// Packs items of one message kind into datagrams of at most `max` bytes:
/// `header, prefix, n: u16, items`.
struct Batch {
    kind: Kind,
    from: NodeId,
    max: usize,
    prefix: Vec<u8>,
    buf: Vec<u8>,
    n: u16,
    out: Vec<Vec<u8>>,
}

impl Batch {
    fn new(kind: Kind, from: NodeId, max: usize, prefix: &[u8]) -> Batch {
        let mut b = Batch {
            kind,
            from,
            max,
            prefix: prefix.to_vec(),
            buf: Vec::new(),
            n: 0,
            out: Vec::new(),
        };
        b.start();
        b
    }

    fn start(&mut self) {
        self.buf = Vec::with_capacity(self.max);
        wire::header(&mut self.buf, self.kind, self.from);
        self.buf.extend_from_slice(&self.prefix);
        wire::put_u16(&mut self.buf, 0);
        self.n = 0;
    }

    fn flush(&mut self) {
        if self.n == 0 {
            return;
        }
        let at = wire::HEADER_LEN + self.prefix.len();
        self.buf[at..at + 2].copy_from_slice(&self.n.to_be_bytes());
        let full = std::mem::take(&mut self.buf);
        self.out.push(full);
        self.start();
    }

    /// Adds one encoded item (an item bigger than a datagram still goes, alone).
    fn add(&mut self, item: &[u8]) {
        if self.n > 0 && (self.buf.len() + item.len() > self.max || self.n == u16::MAX) {
            self.flush();
        }
        self.buf.extend_from_slice(item);
        self.n += 1;
    }

    fn finish(mut self) -> Vec<Vec<u8>> {
        self.flush();
        self.out
    }
}
