//! The replica on a hub: what connects the pure [`Replica`] to the [`Registry`], the store and
//! membership. Still no sockets and no awaiting (the 4002 driver in `cluster::sync` moves the
//! bytes); everything here runs on the API shard.
//!
//! - Local changes are the registry's journal, the same records the store persists: a
//!   `Put` is replicated as the backend's stored form (JSON, without its version), a `Del` as
//!   a tombstone, a `Beat` goes into the liveness summaries. The versions the replica gives
//!   them are stamped into the records before they reach the store, so a restarted hub
//!   restores its versions and merges correctly with its peers.
//! - Remote changes are applied with [`Registry::apply_remote`], [`Registry::deregister`] and
//!   [`Registry::remote_heartbeat`]; the records those journal go to the store only (never
//!   back into the replica, which would echo them as new local writes). A datagram is judged
//!   only after the local changes still in the journal are replicated ([`Replication::receive`]),
//!   or the registry could take a remote write the replica then overrides with the local one.
//! - Peers are membership's live members, by node name ([`NodeId::from_name`]). A member
//!   whose boot epoch changed restarted: it is dropped and added again, which starts a full
//!   sync with it at once.

use super::{Config, Event, NodeId, Replica, Value, Version, WireError};
use crate::registry::Registry;
use crate::store::{Record, StoredBackend};
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// A backend's replicated value: its stored form without the version (which travels beside).
pub fn encode(b: &StoredBackend) -> Value {
    let mut b = b.clone();
    b.hlc = 0;
    b.origin = 0;
    Value::from(serde_json::to_vec(&b).expect("a backend always serializes"))
}

pub fn decode(v: &[u8]) -> Option<StoredBackend> {
    serde_json::from_slice(v).ok()
}

#[derive(Debug, Clone)]
struct Member {
    name: String,
    addr: SocketAddr,
    epoch: Option<u64>,
}

/// Counters the replica itself does not keep.
#[derive(Debug, Default, Clone)]
pub struct HubStats {
    /// Remote values that did not decode as a backend (a newer hub's format?).
    pub undecodable: u64,
    /// Datagrams whose envelope sender and replication header disagree.
    pub spoofed: u64,
    /// Remote changes applied to the registry.
    pub applied_upserts: u64,
    pub applied_deletes: u64,
    pub applied_beats: u64,
}

/// What [`Replication::receive`] did.
#[derive(Debug)]
pub struct Received {
    /// For the store: first the local changes it replicated, then the remote ones applied.
    pub records: Vec<Record>,
    /// How many of `records` are local changes.
    pub local: usize,
    /// Remote changes that changed the registry (a publish is due when > 0).
    pub changed: usize,
}

/// The replica and the membership it serves.
pub struct Replication {
    pub replica: Replica,
    name: String,
    members: BTreeMap<NodeId, Member>,
    pub stats: HubStats,
}

impl Replication {
    /// The replica of hub `name`, holding the backends restored from disk. Records stored
    /// before replication existed (no version) get one from this hub at their registration
    /// time: old, so that any change made elsewhere since wins, and the same at every restart.
    pub fn new(
        name: &str,
        now_ms: u64,
        wall_offset_ms: i64,
        restored: &[StoredBackend],
        cfg: Config,
    ) -> Replication {
        let me = NodeId::from_name(name);
        let mut replica = Replica::new(me, now_ms, wall_offset_ms, cfg);
        for b in restored {
            let version = if b.hlc != 0 {
                Version {
                    hlc: super::Hlc(b.hlc),
                    origin: NodeId(b.origin),
                }
            } else {
                Version {
                    hlc: super::Hlc::new(b.registered_unix_ms, 0),
                    origin: me,
                }
            };
            replica.restore(&b.id, Some(encode(b)), version);
        }
        Replication {
            replica,
            name: name.to_string(),
            members: BTreeMap::new(),
            stats: HubStats::default(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Replicates the registry's journal (local changes) and stamps each `Put` with its
    /// version for the store.
    pub fn local(&mut self, records: &mut [Record], now_ms: u64) {
        for rec in records.iter_mut() {
            match rec {
                Record::Put(b) => {
                    let v = self.replica.local_upsert(&b.id, encode(b), now_ms);
                    b.hlc = v.hlc.0;
                    b.origin = v.origin.0;
                }
                Record::Del { id } => {
                    self.replica.local_delete(id, now_ms);
                }
                Record::Beat { id, .. } => self.replica.local_beat(id, now_ms),
            }
        }
    }

    /// Stamps records of remote changes (or a compaction image) with the replica's versions.
    pub fn stamp(&self, b: &mut StoredBackend) {
        if let Some(e) = self.replica.get(&b.id) {
            b.hlc = e.version.hlc.0;
            b.origin = e.version.origin.0;
        }
    }

    /// Applies remote changes to the registry. Returns how many changed it.
    pub fn apply(&mut self, reg: &mut Registry, events: Vec<Event>, now_ms: u64) -> usize {
        let mut changed = 0;
        for e in events {
            match e {
                Event::Upsert { id, value, .. } => match decode(&value) {
                    Some(b) if b.id == id => {
                        reg.apply_remote(b, now_ms);
                        self.stats.applied_upserts += 1;
                        changed += 1;
                    }
                    _ => {
                        self.stats.undecodable += 1;
                        log::warn!("sync: the replicated record of {id} is not a backend this hub can read; ignored");
                    }
                },
                Event::Delete { id, .. } => {
                    if reg.deregister(&id) {
                        self.stats.applied_deletes += 1;
                        changed += 1;
                    }
                }
                Event::Beat { id, at_ms } => {
                    if reg.remote_heartbeat(&id, at_ms, now_ms) {
                        self.stats.applied_beats += 1;
                    }
                }
            }
        }
        changed
    }

    /// Handles one authenticated datagram from member `sender` (boot `epoch`) and applies its
    /// decisions to the registry. Local changes still in the registry's journal are replicated
    /// first, so that the datagram is judged against them: judged against the state before
    /// them, an older remote write would overwrite the registry while the replica (given the
    /// local change next) kept the local one. Returns the records for the store.
    pub fn receive(
        &mut self,
        reg: &mut Registry,
        now_ms: u64,
        sender: &str,
        epoch: u64,
        payload: &[u8],
    ) -> Result<Received, WireError> {
        let mut records = reg.take_journal();
        self.local(&mut records, now_ms);
        let events = self.handle(now_ms, sender, epoch, payload)?;
        let changed = self.apply(reg, events, now_ms);
        let start = records.len();
        records.extend(reg.take_journal());
        for r in &mut records[start..] {
            if let Record::Put(b) = r {
                self.stamp(b);
            }
        }
        Ok(Received {
            records,
            local: start,
            changed,
        })
    }

    /// Handles one authenticated datagram from member `sender` (boot `epoch`).
    pub fn handle(
        &mut self,
        now_ms: u64,
        sender: &str,
        epoch: u64,
        payload: &[u8],
    ) -> Result<Vec<Event>, WireError> {
        let from = NodeId::from_name(sender);
        match super::wire::read_header(payload) {
            Ok((_, claimed, _)) if claimed != from => {
                self.stats.spoofed += 1;
                return Err(WireError::BadHeader);
            }
            Err(e) => return Err(e),
            Ok(_) => {}
        }
        if let Some(m) = self.members.get_mut(&from) {
            if m.epoch.is_some_and(|e| e != epoch) {
                // It restarted since we last heard from it: sync it in full, now.
                self.replica.remove_peer(from);
                self.replica.add_peer(from, now_ms);
            }
            m.epoch = Some(epoch);
        }
        self.replica.handle(now_ms, payload)
    }

    /// Takes membership's live members (node name, sync address): new ones get a full sync,
    /// gone ones are dropped.
    pub fn set_members(&mut self, live: &[(String, SocketAddr)], now_ms: u64) {
        let mut seen = BTreeMap::new();
        for (name, addr) in live {
            if name == &self.name {
                continue;
            }
            seen.insert(NodeId::from_name(name), (name, *addr));
        }
        let gone: Vec<NodeId> = self
            .members
            .keys()
            .filter(|id| !seen.contains_key(id))
            .copied()
            .collect();
        for id in gone {
            self.members.remove(&id);
            self.replica.remove_peer(id);
        }
        for (id, (name, addr)) in seen {
            match self.members.get_mut(&id) {
                Some(m) => m.addr = addr,
                None => {
                    self.members.insert(
                        id,
                        Member {
                            name: name.clone(),
                            addr,
                            epoch: None,
                        },
                    );
                    self.replica.add_peer(id, now_ms);
                }
            }
        }
    }

    /// Where to send a datagram for `node`.
    pub fn addr_of(&self, node: NodeId) -> Option<SocketAddr> {
        self.members.get(&node).map(|m| m.addr)
    }

    /// The name of `node`, when it is a member.
    pub fn name_of(&self, node: NodeId) -> Option<&str> {
        self.members.get(&node).map(|m| m.name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{BackendSpec, SnapshotCell};
    use std::sync::Arc;

    struct Hub {
        reg: Registry,
        cell: Arc<SnapshotCell>,
        rep: Replication,
        /// What the store would have been given.
        stored: Vec<Record>,
    }

    impl Hub {
        fn new(name: &str) -> Hub {
            let cell = Arc::new(SnapshotCell::new());
            let mut reg = Registry::new(1, 60, 600, cell.clone());
            reg.enable_journal();
            let rep = Replication::new(
                name,
                0,
                crate::clock::unix_ms() as i64,
                &[],
                Config::default(),
            );
            Hub {
                reg,
                cell,
                rep,
                stored: Vec::new(),
            }
        }

        /// What `Control` does after a local change.
        fn commit_local(&mut self, now: u64) {
            let mut recs = self.reg.take_journal();
            self.rep.local(&mut recs, now);
            self.stored.extend(recs);
            self.reg.publish_if_dirty();
        }

        /// What the sync driver does with a datagram.
        fn receive(&mut self, now: u64, sender: &str, payload: &[u8]) {
            let received = self
                .rep
                .receive(&mut self.reg, now, sender, 1, payload)
                .unwrap();
            self.stored.extend(received.records);
            self.reg.publish_if_dirty();
        }
    }

    /// Delivers every queued datagram between the hubs until none is left.
    fn pump(hubs: &mut [Hub], names: &[&str], now: u64) {
        loop {
            let mut moved = false;
            for i in 0..hubs.len() {
                while let Some(t) = hubs[i].rep.replica.poll_transmit(now) {
                    let j = names
                        .iter()
                        .position(|n| NodeId::from_name(n) == t.to)
                        .unwrap();
                    hubs[j].receive(now, names[i], &t.payload);
                    moved = true;
                }
            }
            if !moved {
                return;
            }
        }
    }

    #[test]
    fn register_here_resolves_there_and_deregister_there_removes_here() {
        let names = ["hub-a", "hub-b", "hub-c"];
        let mut hubs: Vec<Hub> = names.iter().map(|n| Hub::new(n)).collect();
        let addr: SocketAddr = "127.0.0.1:4002".parse().unwrap();
        let members: Vec<(String, SocketAddr)> =
            names.iter().map(|n| (n.to_string(), addr)).collect();
        for h in &mut hubs {
            h.rep.set_members(&members, 0);
        }
        pump(&mut hubs, &names, 0);
        let mut spec =
            BackendSpec::new("pop-gru", "gru.pop", "sa", "10.50.1.1".parse().unwrap(), 80);
        spec.alpn = Some(
            (0..8)
                .map(|i| format!("proto-{i}-{}", "x".repeat(200)))
                .collect(),
        );
        hubs[0].reg.register(spec, 10);
        hubs[0].commit_local(10);
        pump(&mut hubs, &names, 11);
        for h in &hubs {
            let snap = h.cell.load();
            let b = snap.find("pop-gru").expect("replicated");
            assert_eq!(b.app, "gru.pop");
            assert_eq!(
                b.alpn.as_ref().unwrap().len(),
                8,
                "a chunked record arrives whole"
            );
            assert!(b.alive(11));
        }
        // Versions reach the store, on the origin and elsewhere.
        let v = hubs[0].rep.replica.get("pop-gru").unwrap().version;
        for h in &hubs {
            assert!(h.stored.iter().any(
                |r| matches!(r, Record::Put(b) if b.hlc == v.hlc.0 && b.origin == v.origin.0)
            ));
        }
        // A heartbeat at B keeps it alive at A and C past the registration's TTL.
        hubs[1].reg.heartbeat("pop-gru", 50_000);
        hubs[1].commit_local(50_000);
        for h in &mut hubs {
            h.rep.replica.handle_timeout(51_000);
        }
        pump(&mut hubs, &names, 51_000);
        for h in &hubs {
            assert!(h.cell.load().find("pop-gru").unwrap().alive(100_000));
        }
        // Deregistered at C: gone everywhere.
        assert!(hubs[2].reg.deregister("pop-gru"));
        hubs[2].commit_local(60_000);
        pump(&mut hubs, &names, 60_001);
        for h in &hubs {
            assert!(h.cell.load().find("pop-gru").is_none());
            assert!(h.rep.replica.get("pop-gru").unwrap().value.is_none());
        }
        // Nothing echoed: one version per change.
        assert_eq!(hubs[1].rep.replica.stats().stale, 0);
    }

    #[test]
    fn a_local_change_not_yet_committed_is_replicated_before_a_remote_one_is_judged() {
        let names = ["hub-a", "hub-b"];
        let mut hubs: Vec<Hub> = names.iter().map(|n| Hub::new(n)).collect();
        let addr: SocketAddr = "127.0.0.1:4002".parse().unwrap();
        let members: Vec<(String, SocketAddr)> =
            names.iter().map(|n| (n.to_string(), addr)).collect();
        for h in &mut hubs {
            h.rep.set_members(&members, 0);
        }
        pump(&mut hubs, &names, 0);
        let spec = |ip: &str| BackendSpec::new("x", "app", "sa", ip.parse().unwrap(), 80);
        hubs[0].reg.register(spec("10.0.0.1"), 1);
        hubs[0].commit_local(1);
        pump(&mut hubs, &names, 2);
        // B changes x (registry done, journal not yet handed over: the API is waiting for
        // its group commit) while A's newer-than-B-knows change... is A's own next write.
        hubs[1].reg.register(spec("10.0.0.2"), 3);
        hubs[0].reg.register(spec("10.0.0.3"), 3);
        hubs[0].commit_local(3);
        // A's datagram reaches B before B's API commits.
        while let Some(t) = hubs[0].rep.replica.poll_transmit(4) {
            hubs[1].receive(4, "hub-a", &t.payload);
        }
        hubs[1].commit_local(5);
        pump(&mut hubs, &names, 6);
        // Whoever won, both registries hold what both replicas hold.
        let winner = hubs[0].rep.replica.get("x").unwrap().clone();
        for h in &hubs {
            assert_eq!(h.rep.replica.get("x").unwrap(), &winner);
            let ip = h.cell.load().find("x").unwrap().ip.to_string();
            let want = decode(winner.value.as_ref().unwrap())
                .unwrap()
                .ip
                .to_string();
            assert_eq!(
                ip,
                want,
                "the registry of {} disagrees with its replica",
                h.rep.name()
            );
        }
    }

    #[test]
    fn a_restored_hub_merges_with_its_versions() {
        let mut a = Hub::new("hub-a");
        a.reg.register(
            BackendSpec::new("x", "app", "sa", "10.0.0.1".parse().unwrap(), 80),
            0,
        );
        a.commit_local(0);
        let Record::Put(saved) = a.stored[0].clone() else {
            panic!("a put")
        };
        assert_ne!(saved.hlc, 0);
        let b = Replication::new(
            "hub-a",
            0,
            0,
            std::slice::from_ref(&saved),
            Config::default(),
        );
        assert_eq!(
            b.replica.get("x").unwrap().version,
            a.rep.replica.get("x").unwrap().version
        );
        assert_eq!(b.replica.root(), a.rep.replica.root());
        // A record from before replication gets a version from this hub.
        let old = StoredBackend {
            hlc: 0,
            origin: 0,
            ..saved
        };
        let c = Replication::new(
            "hub-c",
            0,
            1_000,
            std::slice::from_ref(&old),
            Config::default(),
        );
        let v = c.replica.get("x").unwrap().version;
        assert_eq!(v.origin, NodeId::from_name("hub-c"));
        assert_eq!(v.hlc.ms(), old.registered_unix_ms);
    }

    #[test]
    fn a_sender_claiming_another_node_is_refused() {
        let mut a = Hub::new("hub-a");
        let mut b = Hub::new("hub-b");
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        b.rep
            .set_members(&[("hub-a".into(), addr), ("hub-b".into(), addr)], 0);
        let t = b.rep.replica.poll_transmit(0).unwrap();
        assert!(a.rep.handle(0, "hub-c", 1, &t.payload).is_err());
        assert_eq!(a.rep.stats.spoofed, 1);
        assert!(a.rep.handle(0, "hub-b", 1, &t.payload).is_ok());
    }
}
