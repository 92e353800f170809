//! The glommio side of membership, on the API shard: moves datagrams between the gossip socket
//! and [`Membership`], runs its timers, joins through the bootstrap peers until one answers,
//! leaves on shutdown, and counts everything.
//!
//! Two tasks share the state (an `Rc<RefCell<_>>` on one thread, never borrowed across an
//! `.await`): the receiver (one datagram at a time: open, hand to foca, send what it answers)
//! and the timer task (sleeps until foca's next deadline, or until the receiver wakes it because
//! a datagram may have scheduled an earlier one). Host names of bootstrap peers are resolved by
//! a plain thread ([`spawn_resolver`]), never on a shard.

use super::auth::{Drop, Keyring};
use super::membership::{MemberInfo, MemberState, Membership, Node};
use super::ClusterConfig;
use arc_swap::ArcSwap;
use glommio::net::UdpSocket;
use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest datagram read.
const RECV_BUFFER: usize = 64 * 1024;

/// Counters of one port. Written on the API shard only.
#[derive(Debug, Default)]
pub struct PortStats {
    pub datagrams_in: Cell<u64>,
    pub bytes_in: Cell<u64>,
    pub datagrams_out: Cell<u64>,
    pub bytes_out: Cell<u64>,
    pub send_errors: Cell<u64>,
    /// By [`Drop::index`].
    pub dropped: [Cell<u64>; Drop::ALL.len()],
}

fn bump(c: &Cell<u64>, n: u64) {
    c.set(c.get().wrapping_add(n));
}

impl PortStats {
    pub fn received(&self, bytes: usize) {
        bump(&self.datagrams_in, 1);
        bump(&self.bytes_in, bytes as u64);
    }

    pub fn sent(&self, bytes: usize) {
        bump(&self.datagrams_out, 1);
        bump(&self.bytes_out, bytes as u64);
    }

    pub fn drop(&self, why: Drop) {
        bump(&self.dropped[why.index()], 1);
    }

    pub fn send_error(&self) {
        bump(&self.send_errors, 1);
    }
}

/// What registry sync reports in `GET /api/v1/cluster` (`sync`). Filled by the sync driver
/// ([`super::sync`]).
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct SyncStatus {
    /// Whether a replication state machine is plugged into the sync port.
    pub replicating: bool,
    /// The local registry's replication version (e.g. the highest HLC), when replicating.
    pub version: Option<u64>,
    /// Replication datagrams waiting to be sent (and bucket summaries still to produce).
    /// There are no acknowledgements: anti-entropy, not retransmission, repairs losses.
    pub pending: u64,
    /// When the last anti-entropy round finished (Unix ms).
    pub last_anti_entropy_unix_ms: Option<u64>,
    /// Anything else the replication driver wants operators to see.
    pub detail: serde_json::Value,
}

/// The cluster as the API shard sees it.
pub struct ClusterState {
    pub membership: RefCell<Membership>,
    pub gossip_keys: RefCell<Keyring>,
    pub gossip: PortStats,
    pub sync: PortStats,
    pub sync_status: RefCell<SyncStatus>,
    /// Registry replication, set once at startup by the API shard.
    pub replication: std::cell::OnceCell<Rc<super::sync::Replicating>>,
    pub cluster_name: String,
    pub keyed: bool,
    /// The bound gossip and sync sockets' addresses (what we listen on).
    pub gossip_bound: SocketAddr,
    pub sync_bound: SocketAddr,
    /// This process's boot epoch (Unix ms): the envelope's epoch and the identity's boot.
    pub boot: u64,
    join_retry: Duration,
}

impl ClusterState {
    /// `me` is this hub's identity with its advertised addresses.
    pub fn new(
        cfg: &ClusterConfig,
        me: Node,
        gossip_bound: SocketAddr,
        sync_bound: SocketAddr,
        seed: u64,
    ) -> ClusterState {
        let foca_cfg = cfg.foca_config();
        let join_retry = foca_cfg
            .probe_period
            .clamp(Duration::from_millis(50), Duration::from_secs(2));
        ClusterState {
            gossip_keys: RefCell::new(Keyring::new(&cfg.keys, &me.id, &cfg.cluster_name, me.boot)),
            boot: me.boot,
            membership: RefCell::new(Membership::new(me, foca_cfg, seed)),
            gossip: PortStats::default(),
            sync: PortStats::default(),
            sync_status: RefCell::new(SyncStatus::default()),
            replication: std::cell::OnceCell::new(),
            cluster_name: cfg.cluster_name.clone(),
            keyed: !cfg.keys.is_empty(),
            gossip_bound,
            sync_bound,
            join_retry,
        }
    }

    /// A keyring for another port of this node (same keys, id, cluster and epoch).
    pub fn keyring(cfg: &ClusterConfig, me: &Node) -> Keyring {
        Keyring::new(&cfg.keys, &me.id, &cfg.cluster_name, me.boot)
    }

    /// Every other known hub.
    pub fn members(&self) -> Vec<MemberInfo> {
        self.membership.borrow().members()
    }

    /// Members per state (for metrics).
    pub fn counts(&self) -> [usize; 4] {
        let mut c = [0; 4];
        for m in self.members() {
            let i = MemberState::ALL
                .iter()
                .position(|s| *s == m.state)
                .unwrap_or(0);
            c[i] += 1;
        }
        c
    }
}

/// Resolves the bootstrap peers on a plain thread (resolution blocks), again and again: every
/// `retry` until at least one resolves, then every minute (addresses change). The driver reads
/// the latest list without waiting.
pub fn spawn_resolver(peers: Vec<String>, retry: Duration) -> Arc<ArcSwap<Vec<SocketAddr>>> {
    let out = Arc::new(ArcSwap::from_pointee(Vec::new()));
    if peers.is_empty() {
        return out;
    }
    let shared = out.clone();
    let spawned = std::thread::Builder::new()
        .name("cluster-resolve".into())
        .spawn(move || {
            let mut warned = false;
            while !crate::shutdown::draining() {
                let mut addrs = Vec::new();
                for p in &peers {
                    use std::net::ToSocketAddrs;
                    match p.to_socket_addrs() {
                        Ok(a) => addrs.extend(a),
                        Err(e) if !warned => {
                            log::warn!("cluster: cannot resolve bootstrap peer {p}: {e}; retrying")
                        }
                        Err(_) => {}
                    }
                }
                warned = true;
                addrs.sort();
                addrs.dedup();
                let found = !addrs.is_empty();
                shared.store(Arc::new(addrs));
                std::thread::sleep(if found {
                    Duration::from_secs(60)
                } else {
                    retry
                });
            }
        });
    if let Err(e) = spawned {
        log::error!(
            "cluster: cannot start the resolver thread: {e}; bootstrap peers are not joined"
        );
    }
    out
}

/// Seals and sends everything membership has queued.
async fn flush(state: &ClusterState, sock: &UdpSocket, out: &mut Vec<u8>) {
    loop {
        let next = state.membership.borrow_mut().pop_transmit();
        let Some((to, chan, payload)) = next else {
            return;
        };
        state.gossip_keys.borrow_mut().seal(chan, &payload, out);
        match sock.send_to(out, to).await {
            Ok(n) => state.gossip.sent(n),
            Err(e) => {
                state.gossip.send_error();
                log::debug!("cluster: send to {to} failed: {e}");
            }
        }
    }
}

async fn receive(
    state: Rc<ClusterState>,
    sock: Rc<UdpSocket>,
    wake: glommio::channels::local_channel::LocalSender<()>,
) {
    let mut buf = vec![0u8; RECV_BUFFER];
    let mut out = Vec::with_capacity(1500);
    loop {
        let (n, from) = match sock.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                log::debug!("cluster: gossip receive failed: {e}");
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        state.gossip.received(n);
        let now = Instant::now();
        {
            let mut keys = state.gossip_keys.borrow_mut();
            match keys.open(crate::clock::now_ms(), &mut buf[..n]) {
                Ok(o) => {
                    let r = state
                        .membership
                        .borrow_mut()
                        .handle(now, o.sender, o.epoch, o.channel, o.payload);
                    if let Err(e) = r {
                        state.gossip.drop(Drop::Malformed);
                        log::debug!(
                            "cluster: gossip from {from} ({}) refused: {}",
                            o.sender,
                            e.0
                        );
                    }
                }
                Err(why) => {
                    state.gossip.drop(why);
                    log::debug!("cluster: dropped a gossip datagram from {from}: {why}");
                }
            }
        }
        // The datagram may have scheduled a timer earlier than the one being waited for.
        let _ = wake.try_send(());
        flush(&state, &sock, &mut out).await;
    }
}

async fn timers(
    state: Rc<ClusterState>,
    sock: Rc<UdpSocket>,
    wake: glommio::channels::local_channel::LocalReceiver<()>,
    peers: Arc<ArcSwap<Vec<SocketAddr>>>,
) {
    let mut out = Vec::with_capacity(1500);
    let mut next_join = Instant::now();
    let mut attempts = 0u32;
    loop {
        let now = Instant::now();
        let deadline = {
            let mut m = state.membership.borrow_mut();
            m.tick(now);
            let peers = peers.load();
            let joining = !m.joined() && !peers.is_empty();
            if joining && now >= next_join {
                m.join(now, &peers);
                next_join = now + state.join_retry;
                attempts += 1;
                if attempts == 30 {
                    log::warn!(
                        "cluster: no bootstrap peer ({}) has answered yet; still trying",
                        peers
                            .iter()
                            .map(|a| a.to_string())
                            .collect::<Vec<_>>()
                            .join(",")
                    );
                }
            }
            let foca = m.next_deadline();
            let join = joining.then_some(next_join);
            match (foca, join) {
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) => a,
                (None, Some(b)) => b,
                (None, None) => now + Duration::from_secs(1),
            }
        };
        flush(&state, &sock, &mut out).await;
        // Peers may resolve later; look again at least every join_retry.
        let wait = deadline.saturating_duration_since(Instant::now()).clamp(
            Duration::from_millis(1),
            state.join_retry.max(Duration::from_millis(100)),
        );
        futures_lite::future::or(
            async {
                glommio::timer::sleep(wait).await;
            },
            async {
                let _ = wake.recv().await;
            },
        )
        .await;
    }
}

/// Runs membership (and the sync port's driver) until the process drains, then leaves the
/// cluster and tells [`crate::shutdown`] so.
pub async fn run(
    state: Rc<ClusterState>,
    gossip: UdpSocket,
    sync: super::sync::SyncCtx,
    peers: Arc<ArcSwap<Vec<SocketAddr>>>,
) {
    let gossip = Rc::new(gossip);
    let (wake_tx, wake_rx) = glommio::channels::local_channel::new_bounded(1);
    // Separate tasks, not one task polling several futures: glommio's socket futures keep a
    // waker clone per poll (`Source::collect_rw`), so a receive polled again and again because
    // a sibling timer fired overflows the task's 16-bit reference count (a panic after 32767
    // polls; found by flooding the gossip port). Each task here is only woken by its own event.
    // Spawned tasks inherit this task's queue. Dropping them cancels them.
    let receiver = glommio::spawn_local(receive(state.clone(), gossip.clone(), wake_tx));
    let timer = glommio::spawn_local(timers(state.clone(), gossip.clone(), wake_rx, peers));
    let sync = glommio::spawn_local(super::sync::serve(sync));
    crate::shutdown::drain_started().await;
    drop((receiver, timer, sync));
    let leaving = state.membership.borrow().joined();
    state.membership.borrow_mut().leave(Instant::now());
    let mut out = Vec::new();
    flush(&state, &gossip, &mut out).await;
    if leaving {
        log::info!("cluster: left (told the other members)");
    }
    crate::shutdown::mark_left();
}
