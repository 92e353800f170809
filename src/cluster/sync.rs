//! The sync port (4002/udp): registry replication between hubs.
//!
//! **Hook for the replication driver.** This module owns the socket loop and the envelope; the
//! replication state machine (`cluster::replicate`, pure) plugs in at the two places marked
//! `REPLICATE:` below:
//!
//! - [`on_datagram`]: an authenticated datagram from a member (sender node id, its boot epoch,
//!   the plain payload). Feed it to the state machine and apply what it decides to
//!   `ctx.control.registry` (then `control.commit_and_publish()`), send its answers with
//!   [`send`].
//! - a periodic task (anti-entropy, retransmits) can be added beside [`serve`]'s loop, with
//!   [`SyncCtx::peers`] for the live members' sync addresses,
//!   `ctx.state.membership.borrow().changes()` to notice a member joining or rejoining, and
//!   [`ClusterState::sync_status`](super::ClusterState) for what `GET /api/v1/cluster` shows.
//!
//! Until then every datagram is authenticated, counted and otherwise ignored.
//!
//! Three things to keep when plugging in:
//! - A periodic task must be its own glommio task (`glommio::spawn_local`, it inherits the
//!   cluster queue), never `future::or`-ed with [`serve`]'s receive: glommio socket futures keep
//!   a waker clone per poll, and a receive re-polled by a sibling timer overflows the task's
//!   reference count (see [`super::driver::run`]).
//! - The envelope proves a datagram was sealed with the cluster key by the node it names; it
//!   does not prove that node is a live member. Check `sender` against [`SyncCtx::peers`] when
//!   that matters.
//! - Keep a datagram's payload within [`MAX_PAYLOAD`] so the sealed datagram fits a WireGuard
//!   MTU without IP fragmentation.

use super::auth::{channel, Drop, Keyring};
use super::driver::ClusterState;
use glommio::net::UdpSocket;
use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

/// Largest datagram read.
const RECV_BUFFER: usize = 64 * 1024;

/// Largest payload whose sealed datagram fits in a WireGuard MTU (1420 - 28 bytes of IPv4 and
/// UDP) with the longest node id.
pub const MAX_PAYLOAD: usize = 1392 - super::auth::MAX_OVERHEAD;

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

/// One authenticated sync datagram from member `sender` (boot `epoch`).
pub async fn on_datagram(ctx: &SyncCtx, sender: &str, epoch: u64, payload: &[u8]) {
    // REPLICATE: hand (sender, epoch, payload) to the replication state machine here.
    let _ = ctx;
    log::trace!(
        "sync: {} bytes from {sender} (boot {epoch}); replication is not plugged in yet",
        payload.len()
    );
}

/// Reads the sync port until the task is dropped (at shutdown).
pub async fn serve(ctx: SyncCtx) {
    let mut buf = vec![0u8; RECV_BUFFER];
    // The opened payload, copied out so the keyring is not borrowed across an await.
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
            Ok((sender, epoch)) => on_datagram(&ctx, &sender, epoch, &payload).await,
            Err(why) => {
                ctx.state.sync.drop(why);
                log::debug!("sync: dropped a datagram from {from}: {why}");
            }
        }
    }
}
