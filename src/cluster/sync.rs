//! The sync port (4002/udp): registry replication between hubs, the thin driver around the
//! pure [`Replica`](super::replicate::Replica) (through [`Replication`]).
//!
//! Three tasks, all in the cluster's task queue on the API shard (fewer shares than the API's
//! and a looser latency bound, so sync work never holds up a registration; no step of the
//! replica costs more than one bucket summary, see `replicate::sim::step_cost`):
//!
//! - **receive**: opens each datagram's envelope, hands it to the replica, applies what the
//!   replica decided to the registry ([`Replication::receive`]) and asks for a publish;
//! - **send**: feeds the replica membership's live members and its timers, and sends whatever
//!   it queued, sealed;
//! - **publish**: makes remote changes visible on every shard at once, then durable (the
//!   store's group commit), coalescing every change that arrived meanwhile.
//!
//! Both the receive and the send loop offer the scheduler a switch after every datagram
//! (`yield_if_needed`): a burst of sync traffic never runs past the API queue's latency bound.
//!
//! Any datagram sealed with the cluster key by the node it names is merged, member or not yet
//! (a hub that joined a moment ago, a delayed datagram of one just declared down): its records
//! are as valid as anyone's under last-writer-wins. Answers go to live members only.
//!
//! Local changes enter through `Control::persist_journal` (the registry's journal, which the
//! store persists as well), which wakes the send task.

use super::auth::{channel, Drop, Keyring};
use super::driver::ClusterState;
use super::replicate::hub::Replication;
use crate::store::Record;
use glommio::net::UdpSocket;
use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

/// Largest datagram read.
const RECV_BUFFER: usize = 64 * 1024;
/// Largest sealed datagram sent: fits a WireGuard MTU (1420 - 28 bytes of IP and UDP), like
/// gossip's.
pub const MAX_DATAGRAM: usize = 1392;
/// Largest payload whose sealed datagram fits in [`MAX_DATAGRAM`] with the longest node id:
/// the replica's `max_payload`.
pub const MAX_PAYLOAD: usize = MAX_DATAGRAM - super::auth::MAX_OVERHEAD;

/// A single-waiter, single-threaded wake-up: set, then wakes whoever waits.
#[derive(Default)]
pub struct Notify {
    set: Cell<bool>,
    waiter: RefCell<Option<Waker>>,
}

impl Notify {
    pub fn notify(&self) {
        self.set.set(true);
        if let Some(w) = self.waiter.borrow_mut().take() {
            w.wake();
        }
    }

    pub async fn wait(&self) {
        std::future::poll_fn(|cx| {
            if self.set.replace(false) {
                Poll::Ready(())
            } else {
                *self.waiter.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

/// Replication on this hub: the replica and what wakes its tasks. Shared by the sync tasks
/// and the API (`Control`), through [`ClusterState::replication`].
pub struct Replicating {
    pub hub: RefCell<Replication>,
    /// Datagrams were queued: the send task has work.
    pub to_send: Notify,
    /// Remote changes were applied: the publish task has work.
    pub to_publish: Notify,
    /// Remote changes that reached the registry, and publishes made for them.
    pub remote_changes: Cell<u64>,
    pub publishes: Cell<u64>,
}

impl Replicating {
    pub fn new(hub: Replication) -> Replicating {
        Replicating {
            hub: RefCell::new(hub),
            to_send: Notify::default(),
            to_publish: Notify::default(),
            remote_changes: Cell::new(0),
            publishes: Cell::new(0),
        }
    }

    /// Local changes (the registry's journal, on their way to the store): replicated and
    /// stamped with their versions.
    pub fn local(&self, records: &mut [Record]) {
        self.hub.borrow_mut().local(records, crate::clock::now_ms());
        self.to_send.notify();
    }
}

/// Everything the sync port's driver has.
pub struct SyncCtx {
    pub socket: Rc<UdpSocket>,
    /// This node's keyring for the sync port (its own replay windows).
    pub keys: RefCell<Keyring>,
    pub state: Rc<ClusterState>,
    /// The registry and its persistence (API shard).
    pub control: Rc<crate::api::Control>,
}

impl SyncCtx {
    /// (node id, sync address) of every live member.
    pub fn peers(&self) -> Vec<(String, SocketAddr)> {
        self.state.membership.borrow().sync_peers()
    }

    fn replicating(&self) -> Option<&Rc<Replicating>> {
        self.state.replication.get()
    }
}

/// Seals `payload` (channel [`channel::SYNC`]) and sends it to `to`; counted either way.
pub async fn send(ctx: &SyncCtx, to: SocketAddr, payload: &[u8], out: &mut Vec<u8>) {
    ctx.keys.borrow_mut().seal(channel::SYNC, payload, out);
    match ctx.socket.send_to(out, to).await {
        Ok(n) => ctx.state.sync.sent(n),
        Err(e) => {
            ctx.state.sync.send_error();
            log::debug!("sync: send to {to} failed: {e}");
        }
    }
}

/// One authenticated sync datagram from member `sender` (boot `epoch`): replicated local
/// changes first, then the datagram, its decisions applied to the registry
/// ([`Replication::receive`]), every resulting record handed to the store.
fn on_datagram(ctx: &SyncCtx, sender: &str, epoch: u64, payload: &[u8]) {
    let Some(rep) = ctx.replicating() else {
        return;
    };
    let now = crate::clock::now_ms();
    let received = {
        let mut reg = ctx.control.registry.borrow_mut();
        rep.hub
            .borrow_mut()
            .receive(&mut reg, now, sender, epoch, payload)
    };
    match received {
        Ok(r) => {
            if let Some(store) = &ctx.control.store {
                for rec in &r.records {
                    store.append(rec);
                }
            }
            if r.changed > 0 {
                rep.remote_changes
                    .set(rep.remote_changes.get() + r.changed as u64);
                rep.to_publish.notify();
            }
        }
        Err(e) => {
            ctx.state.sync.drop(Drop::Malformed);
            log::debug!("sync: refused a datagram from {sender}: {e}");
        }
    }
    // Answers (digests, summaries, records) may have been queued.
    rep.to_send.notify();
}

async fn receive(ctx: Rc<SyncCtx>) {
    let mut buf = vec![0u8; RECV_BUFFER];
    // The opened payload, copied out so the keyring is not borrowed while the replica runs.
    let mut payload = Vec::with_capacity(1500);
    loop {
        let (n, from) = match ctx.socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                log::debug!("sync: receive failed: {e}");
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        ctx.state.sync.received(n);
        let opened = {
            let mut keys = ctx.keys.borrow_mut();
            match keys.open(crate::clock::now_ms(), &mut buf[..n]) {
                Ok(o) if o.channel == channel::SYNC => {
                    payload.clear();
                    payload.extend_from_slice(o.payload);
                    Ok((o.sender.to_string(), o.epoch))
                }
                Ok(_) => Err(Drop::Malformed),
                Err(why) => Err(why),
            }
        };
        match opened {
            Ok((sender, epoch)) => on_datagram(&ctx, &sender, epoch, &payload),
            Err(why) => {
                ctx.state.sync.drop(why);
                log::debug!("sync: dropped a datagram from {from}: {why}");
            }
        }
        // While datagrams keep arriving the receive never waits: let the API's queue (a
        // tighter latency bound) run as soon as the scheduler wants it to.
        glommio::yield_if_needed().await;
    }
}

/// Membership in, timers, datagrams out.
async fn send_loop(ctx: Rc<SyncCtx>, rep: Rc<Replicating>) {
    let mut out = Vec::with_capacity(MAX_DATAGRAM);
    let mut seen_changes = None;
    loop {
        let now = crate::clock::now_ms();
        let changes = ctx.state.membership.borrow().changes();
        if seen_changes != Some(changes) {
            seen_changes = Some(changes);
            let peers = ctx.peers();
            rep.hub.borrow_mut().set_members(&peers, now);
        }
        let deadline = {
            let mut hub = rep.hub.borrow_mut();
            if hub.replica.poll_timeout() <= now {
                hub.replica.handle_timeout(now);
            }
            hub.replica.poll_timeout()
        };
        loop {
            let next = {
                let mut hub = rep.hub.borrow_mut();
                hub.replica
                    .poll_transmit(crate::clock::now_ms())
                    .map(|t| (hub.addr_of(t.to), t))
            };
            let Some((addr, t)) = next else {
                break;
            };
            let Some(addr) = addr else {
                // A node that is no longer a member: nothing to send it.
                continue;
            };
            send(&ctx, addr, &t.payload, &mut out).await;
            glommio::yield_if_needed().await;
        }
        let wait = Duration::from_millis(deadline.saturating_sub(crate::clock::now_ms()))
            .clamp(Duration::from_millis(1), Duration::from_secs(1));
        futures_lite::future::or(glommio::timer::sleep(wait), rep.to_send.wait()).await;
    }
}

/// Publishes remote changes at once, then makes them durable: unlike a local change (which is
/// acknowledged, so durable first), a remote one lost in a crash before its fsync is simply
/// synced again from the peers, so visibility need not wait for the disk. Every change
/// applied meanwhile goes out with the next publish.
async fn publish_loop(ctx: Rc<SyncCtx>, rep: Rc<Replicating>) {
    loop {
        rep.to_publish.wait().await;
        if ctx.control.registry.borrow().is_dirty() {
            ctx.control.registry.borrow_mut().publish();
            rep.publishes.set(rep.publishes.get() + 1);
        }
        if let Some(store) = &ctx.control.store {
            if let Err(e) = store.commit().await {
                log::error!("sync: cannot persist replicated changes: {e}");
            }
        }
    }
}

/// Fills what `GET /api/v1/cluster` shows under `sync` (called by the route, so it is never
/// stale and costs nothing while nobody asks).
pub fn refresh_status(state: &ClusterState, rep: &Replicating) {
    let hub = rep.hub.borrow();
    let st = hub.replica.status();
    let now = crate::clock::now_ms();
    let unix = crate::clock::unix_ms();
    let ago = |t: u64| unix.saturating_sub(now.saturating_sub(t));
    let peers: Vec<serde_json::Value> = st
        .peers
        .iter()
        .map(|(id, synced)| {
            serde_json::json!({
                "id": hub.name_of(*id),
                "in_sync_unix_ms": synced.map(ago),
            })
        })
        .collect();
    let s = &st.stats;
    let mut out = state.sync_status.borrow_mut();
    out.replicating = true;
    out.version = Some(st.clock.0);
    out.pending = st.queued as u64;
    out.last_anti_entropy_unix_ms = st.peers.iter().filter_map(|(_, t)| *t).max().map(ago);
    out.detail = serde_json::json!({
        "clock": st.clock.to_string(),
        "backends": st.entries,
        "tombstones": st.tombstones,
        "root": format!("{:016x}", st.root),
        "peers": peers,
        "messages": { "sent": s.sent, "received": s.received,
                      "sent_bytes": s.sent_bytes, "received_bytes": s.received_bytes },
        "dropped": { "malformed": s.malformed, "queue_full": s.queue_drops,
                     "spoofed": hub.stats.spoofed, "undecodable": hub.stats.undecodable },
        "merges": { "applied": s.applied, "stale": s.stale, "conflicts": s.conflicts,
                    "skewed_clocks": s.skewed },
        "anti_entropy": { "rounds": s.anti_entropy_rounds, "repairs": s.repairs },
        "remote_changes": rep.remote_changes.get(),
        "publishes": rep.publishes.get(),
    });
}

/// Runs registry sync until the task is dropped (at shutdown).
pub async fn serve(ctx: SyncCtx) {
    let ctx = Rc::new(ctx);
    let Some(rep) = ctx.replicating().cloned() else {
        // Nothing to replicate into: authenticate and count, as before replication existed.
        return receive(ctx).await;
    };
    // One task per loop, not one task polling three futures: glommio's socket futures keep a
    // waker clone per poll, so a receive polled again each time a sibling is woken (every
    // datagram wakes the send loop) overflows the task's reference count after 32767 polls
    // (see cluster::driver::run). Spawned tasks inherit this task's queue; dropping this
    // future (at shutdown) drops their handles, which cancels them.
    let receiver = glommio::spawn_local(receive(ctx.clone()));
    let sender = glommio::spawn_local(send_loop(ctx.clone(), rep.clone()));
    let publisher = glommio::spawn_local(publish_loop(ctx, rep));
    receiver.await;
    sender.await;
    publisher.await;
}
