//! Internal DNS: the responder (pure) and its UDP and TCP servers (one of each per shard).
//!
//! - [`query`]: reading a query (header, question, OPT) without allocating.
//! - [`wire`]: writing an answer into a reused buffer.
//! - [`responder`]: what to answer, from the snapshot (pure; all the DNS semantics live there).
//! - this module: the servers, which only move bytes. They never panic on input, log bad
//!   packets at debug level only (never good ones), and load the snapshot once per query,
//!   holding it only while answering.
//!
//! Allocation: the UDP server reuses one receive and one response buffer. glommio receives
//! with a direct non-blocking `recvmsg` into our buffer while packets are queued, and falls back
//! to io_uring, which allocates a bounce buffer of the receive buffer's size, only when the
//! socket was empty; that is why the receive buffer is a modest [`UDP_RECV_SIZE`] rather than
//! 64 KiB. Sends go straight out with `sendmsg` unless the socket buffer is full. The TCP
//! server allocates its buffers once per connection.

pub mod query;
pub mod responder;
pub mod wire;

use crate::shard::ShardCtx;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use responder::{respond_typed, Exchange, Outcome, Transport, Zone, MAX_MESSAGE};
use std::cell::Cell;
use std::io;
use std::net::IpAddr;
use std::rc::Rc;
use std::time::Duration;

/// UDP receive buffer: far above any real query (a question is at most 259 bytes, EDNS
/// options a few dozen more); a longer datagram is cut and answered FORMERR.
pub const UDP_RECV_SIZE: usize = 4096;

/// Pause after a failed accept or receive (e.g. out of file descriptors), so that a persistent
/// error cannot spin the shard.
const ERROR_BACKOFF: Duration = Duration::from_millis(10);

/// Datagrams taken per `recvmmsg` when a burst is queued.
const UDP_BATCH: usize = 32;

/// Answers one UDP query into `out` and counts it; `false` when there is nothing to send.
fn answer_udp(
    ctx: &ShardCtx,
    zone: &Zone,
    ex: &Exchange,
    query: &[u8],
    peer: std::net::SocketAddr,
    out: &mut Vec<u8>,
) -> bool {
    out.clear();
    let (outcome, qtype) = {
        let snap = ctx.cell.load();
        respond_typed(query, zone, &snap, ex, out)
    };
    let m = ctx.metrics();
    m.dns_udp_queries.inc();
    count(m, outcome, qtype);
    match outcome {
        Outcome::Dropped => {
            log::debug!(
                "dns/udp: dropped a {}-byte packet from {peer}: not a query",
                query.len()
            );
            out.clear();
            false
        }
        Outcome::Answered {
            rcode: wire::Rcode::FormErr,
            ..
        } => {
            log::debug!("dns/udp: malformed {}-byte query from {peer}", query.len());
            true
        }
        Outcome::Answered { .. } => true,
    }
}

/// Serves DNS over UDP on this shard's socket until the process stops.
///
/// The first datagram after a quiet spell is awaited the glommio way (an io_uring readiness
/// wait); after answering it, whatever else is queued is drained with `recvmmsg` and answered
/// with one `sendmmsg` per batch, so a busy shard makes two system calls per 32 queries
/// instead of two per query.
pub async fn serve_udp(ctx: Rc<ShardCtx>, sock: glommio::net::UdpSocket) {
    use std::os::fd::AsRawFd;
    let zone = Zone::from_config(&ctx.cfg);
    let server = sock.local_addr().ok().map(|a| a.ip()).filter(known);
    let transport = Transport::Udp {
        max_size: zone.max_udp_size(),
    };
    let fd = sock.as_raw_fd();
    let mut rx = vec![0u8; UDP_RECV_SIZE];
    let mut out = Vec::with_capacity(usize::from(zone.max_udp_size()));
    let mut batch =
        crate::sys::UdpBatch::new(UDP_BATCH, UDP_RECV_SIZE, usize::from(zone.max_udp_size()));
    loop {
        let (n, peer) = match sock.recv_from(&mut rx).await {
            Ok(r) => r,
            Err(e) => {
                log::debug!("dns/udp: receive failed: {e}");
                glommio::timer::sleep(ERROR_BACKOFF).await;
                continue;
            }
        };
        let ex = Exchange {
            client: peer.ip(),
            server,
            transport,
            now_ms: crate::clock::now_ms(),
        };
        if answer_udp(&ctx, &zone, &ex, &rx[..n], peer, &mut out) {
            if let Err(e) = sock.send_to(&out, peer).await {
                log::debug!("dns/udp: cannot answer {peer}: {e}");
            }
        }
        // Drain the burst behind it, a batch at a time, without waiting.
        loop {
            let got = match batch.recv(fd) {
                Ok(got) => got,
                Err(e) => {
                    log::debug!("dns/udp: batch receive failed: {e}");
                    break;
                }
            };
            if got == 0 {
                break;
            }
            let now_ms = crate::clock::now_ms();
            for i in 0..got {
                // The answer buffer is moved out while the query is borrowed from the batch.
                let mut reply = std::mem::take(&mut batch.out[i]);
                reply.clear();
                let (query, peer) = batch.datagram(i);
                if let Some(peer) = peer {
                    let ex = Exchange {
                        client: peer.ip(),
                        server,
                        transport,
                        now_ms,
                    };
                    answer_udp(&ctx, &zone, &ex, query, peer, &mut reply);
                }
                batch.out[i] = reply;
            }
            let sent = batch.send(fd, got).unwrap_or(0);
            // Whatever the kernel did not take (a full socket buffer) goes the waiting way.
            if sent < got {
                for i in 0..got {
                    if batch.out[i].is_empty() {
                        continue;
                    }
                    if let (_, Some(peer)) = batch.datagram(i) {
                        let reply = std::mem::take(&mut batch.out[i]);
                        if let Err(e) = sock.send_to(&reply, peer).await {
                            log::debug!("dns/udp: cannot answer {peer}: {e}");
                        }
                        batch.out[i] = reply;
                        batch.out[i].clear();
                    }
                }
            }
            if got < batch.slots() {
                break;
            }
            // A long burst must not starve the shard's other tasks.
            glommio::yield_if_needed().await;
        }
        // Handed over: the successor reads these same sockets. Stop only here, between
        // receives, never by dropping a receive io_uring may be completing (its datagram
        // would be lost).
        if crate::handover::handed_over() {
            return;
        }
    }
}

/// Counts one query's outcome on this shard.
#[inline]
fn count(m: &crate::metrics::ShardMetrics, outcome: Outcome, qtype: Option<u16>) {
    match outcome {
        Outcome::Dropped => m.dns_dropped.inc(),
        Outcome::Answered { rcode, truncated } => m.dns_answered(rcode.code(), qtype, truncated),
    }
}

/// Whether `ip` is a real address (not the wildcard a socket may be bound to).
fn known(ip: &IpAddr) -> bool {
    !ip.is_unspecified()
}

/// Releases a connection slot when the connection's task ends, however it ends.
struct Slot(Rc<Cell<usize>>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

/// Serves DNS over TCP on this shard's listener until the process stops.
pub async fn serve_tcp(ctx: Rc<ShardCtx>, listener: glommio::net::TcpListener) {
    let zone = Rc::new(Zone::from_config(&ctx.cfg));
    let open = Rc::new(Cell::new(0usize));
    let max = ctx.cfg.dns_tcp_max_connections;
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                log::debug!("dns/tcp: accept failed: {e}");
                glommio::timer::sleep(ERROR_BACKOFF).await;
                continue;
            }
        };
        if open.get() >= max {
            log::debug!("dns/tcp: {max} connections open on this shard: closing a new one");
            drop(stream);
            continue;
        }
        open.set(open.get() + 1);
        let slot = Slot(open.clone());
        let ctx = ctx.clone();
        let zone = zone.clone();
        glommio::spawn_local(async move {
            let _slot = slot;
            if let Err(e) = serve_connection(&ctx, &zone, stream).await {
                log::debug!("dns/tcp: connection ended: {e}");
            }
        })
        .detach();
        // Draining: stop now rather than at the drain flag's next poll.
        if crate::shutdown::stop_accepting() {
            return;
        }
    }
}

/// What the start of a TCP receive buffer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// A whole message of this length follows the 2-byte length.
    Complete(usize),
    /// This many bytes in all (length included) are needed before the message is whole.
    Incomplete(usize),
}

/// Framing for DNS over TCP (RFC 1035 4.2.2): each message is preceded by its length.
pub fn frame(buf: &[u8]) -> Frame {
    match buf {
        [hi, lo, rest @ ..] => {
            let len = usize::from(u16::from_be_bytes([*hi, *lo]));
            if rest.len() >= len {
                Frame::Complete(len)
            } else {
                Frame::Incomplete(2 + len)
            }
        }
        _ => Frame::Incomplete(2),
    }
}

async fn serve_connection(
    ctx: &ShardCtx,
    zone: &Zone,
    mut stream: glommio::net::TcpStream,
) -> io::Result<()> {
    let idle = ctx.cfg.dns_tcp_idle_timeout;
    // Every read and write waits at most `idle`; a silent client is closed after that.
    stream.set_read_timeout(Some(idle))?;
    stream.set_write_timeout(Some(idle))?;
    let client = stream.peer_addr()?.ip();
    let server = stream.local_addr().ok().map(|a| a.ip()).filter(known);
    let mut rx = vec![0u8; 1024];
    let mut filled = 0;
    let mut out = Vec::with_capacity(1024);
    loop {
        let n = match stream.read(&mut rx[filled..]).await {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::TimedOut => return Ok(()),
            Err(e) => return Err(e),
        };
        filled += n;
        // Answer every whole query received so far (clients may pipeline), in one write.
        let mut pos = 0;
        out.clear();
        let mut close = false;
        while let Frame::Complete(len) = frame(&rx[pos..filled]) {
            let query = &rx[pos + 2..pos + 2 + len];
            pos += 2 + len;
            let at = out.len();
            out.extend_from_slice(&[0, 0]);
            let ex = Exchange {
                client,
                server,
                transport: Transport::Tcp,
                now_ms: crate::clock::now_ms(),
            };
            let (outcome, qtype) = {
                let snap = ctx.cell.load();
                respond_typed(query, zone, &snap, &ex, &mut out)
            };
            let m = ctx.metrics();
            m.dns_tcp_queries.inc();
            count(m, outcome, qtype);
            if outcome == Outcome::Dropped {
                // The client would wait for an answer that never comes: better to hang up.
                log::debug!("dns/tcp: {client} sent a {len}-byte non-query: closing");
                out.truncate(at);
                close = true;
                break;
            }
            let answer_len = (out.len() - at - 2).min(MAX_MESSAGE) as u16;
            out[at..at + 2].copy_from_slice(&answer_len.to_be_bytes());
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
        }
        if close {
            return Ok(());
        }
        rx.copy_within(pos..filled, 0);
        filled -= pos;
        if let Frame::Incomplete(need) = frame(&rx[..filled]) {
            if need > rx.len() {
                rx.resize(need.min(2 + MAX_MESSAGE), 0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing() {
        assert_eq!(frame(&[]), Frame::Incomplete(2));
        assert_eq!(frame(&[0]), Frame::Incomplete(2));
        assert_eq!(frame(&[0, 3, 1, 2]), Frame::Incomplete(5));
        assert_eq!(frame(&[0, 3, 1, 2, 3]), Frame::Complete(3));
        assert_eq!(frame(&[0, 3, 1, 2, 3, 0, 1]), Frame::Complete(3));
        assert_eq!(frame(&[0, 0]), Frame::Complete(0));
        assert_eq!(frame(&[0xff, 0xff]), Frame::Incomplete(2 + 65_535));
    }
}
