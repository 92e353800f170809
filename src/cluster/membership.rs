//! Cluster membership as a state machine: SWIM (foca: probes, indirect probes, suspicion,
//! incarnations, dissemination) fed `(now, datagram)` and `(now)` for timers, plus the member
//! table the API shows (foca knows alive/suspect/down; this adds *left*, last seen, addresses).
//!
//! No socket, no clock, no randomness of its own: the driver passes `now`, a seed, and sends
//! what [`Membership::pop_transmit`] yields. Tests run several of these in memory.
//!
//! Identity: a [`Node`] is (node id, gossip and sync addresses, boot epoch, bump). A restarted
//! hub has a larger boot epoch, so it wins the address conflict with its former self and
//! rejoins at once; a hub wrongly declared down renews itself (bump + 1) and rejoins.

use super::auth::channel;
use foca::{
    AccumulatingRuntime, Foca, Identity, NoCustomBroadcast, OwnedNotification, PostcardCodec,
};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The payload of a graceful-leave notice (channel [`channel::CONTROL`]).
pub const LEAVE: &[u8] = b"leave";

/// A hub as the cluster knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub id: String,
    pub gossip: SocketAddr,
    pub sync: SocketAddr,
    /// Unix ms when the process started.
    pub boot: u64,
    /// Renewals within one boot (after being wrongly declared down).
    pub bump: u16,
}

impl Identity for Node {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(Node {
            bump: self.bump.wrapping_add(1),
            ..self.clone()
        })
    }

    fn addr(&self) -> SocketAddr {
        self.gossip
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        (self.boot, self.bump) > (adversary.boot, adversary.bump)
    }
}

/// A member's state as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    Alive,
    Suspect,
    Down,
    /// Said goodbye (graceful shutdown).
    Left,
}

impl MemberState {
    pub const ALL: [MemberState; 4] = [
        MemberState::Alive,
        MemberState::Suspect,
        MemberState::Down,
        MemberState::Left,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Alive => "alive",
            MemberState::Suspect => "suspect",
            MemberState::Down => "down",
            MemberState::Left => "left",
        }
    }
}

/// One row of the member table.
#[derive(Debug, Clone)]
pub struct MemberInfo {
    pub node: Node,
    pub state: MemberState,
    pub incarnation: u16,
    /// When a datagram from it last opened here.
    pub last_seen: Option<Instant>,
}

struct Record {
    node: Node,
    left: bool,
    down: bool,
    last_seen: Option<Instant>,
}

/// Why a gossip datagram was not taken (it was authentic: counted as malformed).
#[derive(Debug)]
pub struct Rejected(pub String);

type Swim = Foca<Node, PostcardCodec, SmallRng, NoCustomBroadcast>;

/// SWIM membership of this hub.
pub struct Membership {
    foca: Swim,
    rt: AccumulatingRuntime<Node>,
    /// (deadline, order) → timer; foca wants timers back in the order they fall due.
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    timer_events: HashMap<u64, foca::Timer<Node>>,
    timer_seq: u64,
    records: BTreeMap<String, Record>,
    outbox: VecDeque<(SocketAddr, u8, Vec<u8>)>,
    /// foca has at least one active member.
    active: bool,
    left: bool,
    /// Bumped whenever a member comes up, goes down or rejoins.
    changes: u64,
}

impl Membership {
    pub fn new(me: Node, config: foca::Config, seed: u64) -> Membership {
        Membership {
            foca: Foca::new(me, config, SmallRng::seed_from_u64(seed), PostcardCodec),
            rt: AccumulatingRuntime::new(),
            timers: BinaryHeap::new(),
            timer_events: HashMap::new(),
            timer_seq: 0,
            records: BTreeMap::new(),
            outbox: VecDeque::new(),
            active: false,
            left: false,
            changes: 0,
        }
    }

    /// A counter bumped whenever a member comes up, goes down or rejoins: registry sync
    /// compares it with the last value it saw to notice a new peer (and start anti-entropy).
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// This hub's current identity.
    pub fn me(&self) -> &Node {
        self.foca.identity()
    }

    /// Whether this hub knows at least one other live member.
    pub fn joined(&self) -> bool {
        self.active
    }

    /// Whether [`Membership::leave`] was called.
    pub fn has_left(&self) -> bool {
        self.left
    }

    /// Asks each of `peers` (gossip addresses) to let us in. Repeat until [`Membership::joined`].
    pub fn join(&mut self, now: Instant, peers: &[SocketAddr]) {
        if self.left {
            return;
        }
        let me = self.me().clone();
        for &peer in peers {
            if peer == me.gossip {
                continue;
            }
            // Who answers there is not known yet: foca only needs the address to send to.
            let stranger = Node {
                id: String::new(),
                gossip: peer,
                sync: peer,
                boot: 0,
                bump: 0,
            };
            if let Err(e) = self.foca.announce(stranger, &mut self.rt) {
                log::debug!("cluster: announce to {peer} failed: {e}");
            }
        }
        self.drain(now);
    }

    /// An opened datagram of the gossip port from `sender` (its boot `epoch`).
    pub fn handle(
        &mut self,
        now: Instant,
        sender: &str,
        epoch: u64,
        chan: u8,
        payload: &[u8],
    ) -> Result<(), Rejected> {
        if let Some(r) = self.records.get_mut(sender) {
            if r.node.boot <= epoch {
                r.last_seen = Some(now);
            }
        }
        let result = match chan {
            channel::GOSSIP if !self.left => {
                // foca trusts the identity a message names as its source: it must be the one
                // the envelope authenticated, or any key holder could speak for any member.
                let mut head = payload;
                match <PostcardCodec as foca::Codec<Node>>::decode_header(
                    &mut PostcardCodec,
                    &mut head,
                ) {
                    Ok(h) if h.src.id == sender && h.src.boot == epoch => self
                        .foca
                        .handle_data(payload, &mut self.rt)
                        .map_err(|e| Rejected(e.to_string())),
                    Ok(h) => Err(Rejected(format!(
                        "speaks for {:?} (boot {}) but was sealed by {sender:?} (boot {epoch})",
                        h.src.id, h.src.boot
                    ))),
                    Err(e) => Err(Rejected(format!("not a SWIM message: {e}"))),
                }
            }
            channel::GOSSIP => Ok(()),
            channel::CONTROL if payload == LEAVE => {
                if let Some(r) = self.records.get_mut(sender) {
                    if r.node.boot == epoch {
                        r.left = true;
                    }
                }
                Ok(())
            }
            other => Err(Rejected(format!(
                "unexpected channel {other} on the gossip port"
            ))),
        };
        self.drain(now);
        result
    }

    /// Runs every timer due at `now`.
    pub fn tick(&mut self, now: Instant) {
        while let Some(Reverse((at, seq))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            if let Some(timer) = self.timer_events.remove(&seq) {
                if let Err(e) = self.foca.handle_timer(timer, &mut self.rt) {
                    log::debug!("cluster: timer: {e}");
                }
                self.drain(now);
            }
        }
    }

    /// When [`Membership::tick`] next has work.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((at, _))| *at)
    }

    /// Leaves the cluster: foca declares us down to a few members and we tell every live
    /// member we left; afterwards nothing more is sent. Then send what
    /// [`Membership::pop_transmit`] yields.
    pub fn leave(&mut self, now: Instant) {
        if self.left {
            return;
        }
        // Every member foca knows, and every hub we have heard from that has not left or died
        // (foca may not list a member it is still probing).
        let mut to: Vec<SocketAddr> = self.foca.iter_members().map(|m| m.id().gossip).collect();
        to.extend(
            self.records
                .values()
                .filter(|r| !r.left && !r.down)
                .map(|r| r.node.gossip),
        );
        to.sort();
        to.dedup();
        if let Err(e) = self.foca.leave_cluster(&mut self.rt) {
            log::debug!("cluster: leave: {e}");
        }
        self.drain(now);
        for addr in to {
            self.outbox
                .push_back((addr, channel::CONTROL, LEAVE.to_vec()));
        }
        self.left = true;
        self.timers.clear();
        self.timer_events.clear();
    }

    /// The next datagram to seal and send: (to, channel, payload).
    pub fn pop_transmit(&mut self) -> Option<(SocketAddr, u8, Vec<u8>)> {
        self.outbox.pop_front()
    }

    /// Every known hub but this one, by node id.
    pub fn members(&self) -> Vec<MemberInfo> {
        let me = self.me();
        self.records
            .values()
            .filter(|r| r.node.id != me.id)
            .map(|r| {
                let swim = self
                    .foca
                    .iter_membership_state()
                    .find(|m| m.id() == &r.node);
                let state = match (r.left, swim.map(|m| m.state())) {
                    (true, _) => MemberState::Left,
                    (_, Some(foca::State::Alive)) if !r.down => MemberState::Alive,
                    (_, Some(foca::State::Suspect)) if !r.down => MemberState::Suspect,
                    _ => MemberState::Down,
                };
                MemberInfo {
                    node: r.node.clone(),
                    state,
                    incarnation: swim.map(|m| m.incarnation()).unwrap_or(0),
                    last_seen: r.last_seen,
                }
            })
            .collect()
    }

    /// The live members' sync addresses (where registry sync sends), by node id.
    pub fn sync_peers(&self) -> Vec<(String, SocketAddr)> {
        self.foca
            .iter_members()
            .map(|m| (m.id().id.clone(), m.id().sync))
            .collect()
    }

    /// Moves what foca produced into the outbox, the timer heap and the member table.
    fn drain(&mut self, now: Instant) {
        while let Some((to, data)) = self.rt.to_send() {
            if !self.left {
                self.outbox
                    .push_back((to.gossip, channel::GOSSIP, data.to_vec()));
            }
        }
        while let Some((after, timer)) = self.rt.to_schedule() {
            self.timer_seq += 1;
            self.timers.push(Reverse((now + after, self.timer_seq)));
            self.timer_events.insert(self.timer_seq, timer);
        }
        while let Some(n) = self.rt.to_notify() {
            if matches!(
                n,
                OwnedNotification::MemberUp(_)
                    | OwnedNotification::MemberDown(_)
                    | OwnedNotification::Rename(..)
            ) {
                self.changes += 1;
            }
            match n {
                OwnedNotification::MemberUp(node) => {
                    log::info!("cluster: {} ({}) is up", node.id, node.gossip);
                    self.upsert(node, now);
                }
                OwnedNotification::Rename(old, new) => {
                    log::info!(
                        "cluster: {} rejoined (was boot {}, now {})",
                        new.id,
                        old.boot,
                        new.boot
                    );
                    self.upsert(new, now);
                }
                OwnedNotification::MemberDown(node) => {
                    if let Some(r) = self.records.get_mut(&node.id) {
                        if r.node == node {
                            if !r.left {
                                log::warn!("cluster: {} ({}) is down", node.id, node.gossip);
                            } else {
                                log::info!("cluster: {} ({}) left", node.id, node.gossip);
                            }
                            r.down = true;
                        }
                    }
                }
                OwnedNotification::Active => {
                    self.active = true;
                    log::info!("cluster: joined");
                }
                OwnedNotification::Idle => {
                    self.active = false;
                    log::info!("cluster: no other live member");
                }
                OwnedNotification::Defunct => {
                    self.active = false;
                    log::warn!("cluster: declared down by the others; rejoining");
                }
                OwnedNotification::Rejoin(me) => {
                    log::info!("cluster: rejoined as {} bump {}", me.id, me.bump);
                }
            }
        }
    }

    fn upsert(&mut self, node: Node, now: Instant) {
        match self.records.get_mut(&node.id) {
            Some(r) if (r.node.boot, r.node.bump) > (node.boot, node.bump) => {}
            Some(r) => {
                r.node = node;
                r.left = false;
                r.down = false;
                r.last_seen = r.last_seen.or(Some(now));
            }
            None => {
                self.records.insert(
                    node.id.clone(),
                    Record {
                        node,
                        left: false,
                        down: false,
                        last_seen: Some(now),
                    },
                );
            }
        }
    }
}

/// Time since `t`, for the API.
pub fn age(now: Instant, t: Option<Instant>) -> Option<Duration> {
    t.map(|t| now.saturating_duration_since(t))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::auth::Keyring;

    /// Nodes in memory, wired through the real envelope, with a switch to cut one off.
    struct Net {
        nodes: Vec<(Membership, Keyring, bool)>,
        now: Instant,
    }

    fn node(i: usize, boot: u64) -> Node {
        let gossip: SocketAddr = format!("127.0.0.{}:4001", i + 1).parse().unwrap();
        Node {
            id: format!("hub-{i}"),
            gossip,
            sync: SocketAddr::new(gossip.ip(), 4002),
            boot,
            bump: 0,
        }
    }

    fn config() -> foca::Config {
        let mut c = foca::Config::new_lan(std::num::NonZeroU32::new(4).unwrap());
        c.probe_period = Duration::from_millis(100);
        c.probe_rtt = Duration::from_millis(50);
        c.suspect_to_down_after = Duration::from_millis(300);
        c
    }

    impl Net {
        fn new(n: usize) -> Net {
            let now = Instant::now();
            let nodes = (0..n)
                .map(|i| {
                    let me = node(i, 1);
                    (
                        Membership::new(me.clone(), config(), i as u64),
                        Keyring::new(&[[9; 32]], &me.id, "test", 1),
                        true,
                    )
                })
                .collect();
            Net { nodes, now }
        }

        fn restart(&mut self, i: usize, boot: u64) {
            let me = node(i, boot);
            self.nodes[i] = (
                Membership::new(me.clone(), config(), 100 + boot),
                Keyring::new(&[[9; 32]], &me.id, "test", boot),
                true,
            );
        }

        /// Delivers every queued datagram (through seal/open), then advances time by `step`.
        fn step(&mut self, step: Duration) {
            for _ in 0..20 {
                let mut flights = Vec::new();
                for (i, (m, k, up)) in self.nodes.iter_mut().enumerate() {
                    while let Some((to, ch, p)) = m.pop_transmit() {
                        if *up {
                            let mut d = Vec::new();
                            k.seal(ch, &p, &mut d);
                            flights.push((i, to, d));
                        }
                    }
                }
                if flights.is_empty() {
                    break;
                }
                for (_, to, mut d) in flights {
                    let Some(j) = self.nodes.iter().position(|n| n.0.me().gossip == to) else {
                        continue;
                    };
                    let (m, k, up) = &mut self.nodes[j];
                    if !*up {
                        continue;
                    }
                    if let Ok(o) = k.open(0, &mut d) {
                        let (s, e, c) = (o.sender.to_string(), o.epoch, o.channel);
                        let _ = m.handle(self.now, &s, e, c, o.payload);
                    }
                }
            }
            self.now += step;
            for (m, _, up) in &mut self.nodes {
                if *up {
                    m.tick(self.now);
                }
            }
        }

        fn run(&mut self, d: Duration) {
            let end = self.now + d;
            while self.now < end {
                self.step(Duration::from_millis(10));
            }
        }

        fn states(&self, i: usize) -> BTreeMap<String, MemberState> {
            self.nodes[i]
                .0
                .members()
                .into_iter()
                .map(|m| (m.node.id, m.state))
                .collect()
        }
    }

    fn all(n: &Net, i: usize, state: MemberState, count: usize) -> bool {
        let s = n.states(i);
        s.len() == count && s.values().all(|v| *v == state)
    }

    #[test]
    fn three_join_detect_a_death_and_a_rejoin() {
        let mut net = Net::new(3);
        let seed = net.nodes[0].0.me().gossip;
        let now = net.now;
        for i in 1..3 {
            net.nodes[i].0.join(now, &[seed]);
        }
        net.run(Duration::from_secs(2));
        for i in 0..3 {
            assert!(
                all(&net, i, MemberState::Alive, 2),
                "node {i}: {:?}",
                net.states(i)
            );
        }
        // Node 2 dies silently.
        net.nodes[2].2 = false;
        net.run(Duration::from_secs(3));
        for i in 0..2 {
            assert_eq!(net.states(i)["hub-2"], MemberState::Down, "node {i}");
            assert_eq!(net.states(i)[&format!("hub-{}", 1 - i)], MemberState::Alive);
        }
        // It restarts (a new boot) and rejoins through node 0.
        net.restart(2, 2);
        let now = net.now;
        net.nodes[2].0.join(now, &[seed]);
        net.run(Duration::from_secs(2));
        for i in 0..3 {
            assert!(
                all(&net, i, MemberState::Alive, 2),
                "node {i}: {:?}",
                net.states(i)
            );
        }
        assert_eq!(
            net.nodes[0]
                .0
                .members()
                .iter()
                .find(|m| m.node.id == "hub-2")
                .unwrap()
                .node
                .boot,
            2
        );
    }

    #[test]
    fn a_message_must_come_from_the_member_it_names() {
        let mut net = Net::new(2);
        let now = net.now;
        let seed = net.nodes[0].0.me().gossip;
        net.nodes[1].0.join(now, &[seed]);
        let (to, ch, announce) = net.nodes[1].0.pop_transmit().unwrap();
        assert_eq!((to, ch), (seed, channel::GOSSIP));
        // hub-1's announce, sealed by someone else (or by hub-1 of another boot): refused.
        let n0 = &mut net.nodes[0].0;
        assert!(n0.handle(now, "mallory", 1, ch, &announce).is_err());
        assert!(n0.handle(now, "hub-1", 2, ch, &announce).is_err());
        assert!(n0.handle(now, "hub-1", 1, ch, &[0u8; 200]).is_err());
        assert!(n0.members().is_empty());
        assert!(n0.handle(now, "hub-1", 1, ch, &announce).is_ok());
        net.run(Duration::from_millis(200));
        assert!(all(&net, 0, MemberState::Alive, 1));
    }

    #[test]
    fn a_graceful_leave_shows_as_left() {
        let mut net = Net::new(3);
        let seed = net.nodes[0].0.me().gossip;
        let now = net.now;
        for i in 1..3 {
            net.nodes[i].0.join(now, &[seed]);
        }
        net.run(Duration::from_secs(2));
        let now = net.now;
        net.nodes[1].0.leave(now);
        net.step(Duration::from_millis(10));
        net.nodes[1].2 = false;
        net.run(Duration::from_secs(1));
        for i in [0, 2] {
            assert_eq!(net.states(i)["hub-1"], MemberState::Left, "node {i}");
        }
    }
}
