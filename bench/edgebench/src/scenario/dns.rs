//! `dns`: queries from a dnsperf-format file (or one name), round-robin. UDP: a few sockets
//! per shard (`--sockets`), each keeping its share of `--concurrency` queries in flight and
//! moving them in `sendmmsg`/`recvmmsg` batches (like dnsperf: few sockets, many queries
//! outstanding). TCP: one kept-open connection per query in flight. Answers are counted by
//! rcode; a reply whose id is not the one in flight (a late answer to a query that timed out)
//! is skipped, not counted.

use super::{backoff, ensure_connected, io_kind, watched, Prepared};
use crate::cli::Dns;
use crate::dnswire::{self, Query};
use crate::pace::Take;
use crate::run::ShardCtx;
use crate::stats::{Done, ErrorKind};
use crate::sys::{self, MAX_BATCH};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::UdpSocket;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct DnsPlan {
    pub target: SocketAddr,
    pub tcp: bool,
    /// UDP sockets per shard.
    pub sockets: usize,
    pub queries: Vec<Query>,
    source: String,
}

impl DnsPlan {
    pub fn new(c: &Dns, target: SocketAddr) -> Result<DnsPlan, String> {
        let (queries, source) = match &c.queries {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read query file {}: {e}", path.display()))?;
                let q = dnswire::parse_query_file(&text)
                    .map_err(|e| format!("query file {}: {e}", path.display()))?;
                (q, path.display().to_string())
            }
            None => (
                dnswire::parse_query_file(&format!("{} A", c.name))?,
                format!("--name {}", c.name),
            ),
        };
        Ok(DnsPlan {
            target,
            tcp: c.tcp,
            sockets: c.sockets.max(1),
            queries,
            source,
        })
    }

    pub fn params(&self) -> serde_json::Value {
        serde_json::json!({
            "transport": if self.tcp { "tcp" } else { "udp" },
            "udp_sockets_per_shard": if self.tcp { None } else { Some(self.sockets) },
            "queries": self.source,
            "distinct_queries": self.queries.len(),
        })
    }

    /// Where worker `w` of `shard` starts in the query list, so workers do not ask in lockstep.
    fn start_index(&self, shard: usize, worker: usize) -> usize {
        (shard * 7919 + worker * 104_729) % self.queries.len()
    }
}

fn unspecified_for(target: SocketAddr) -> SocketAddr {
    if target.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    }
}

fn rcode_of(reply: &[u8], id: u16) -> Option<&'static str> {
    (dnswire::reply_id(reply) == Some(id) && reply[2] & 0x80 != 0)
        .then(|| dnswire::rcode_name(reply[3] & 0x0F))
}

async fn udp_socket(target: SocketAddr) -> Result<UdpSocket, ErrorKind> {
    let sock = UdpSocket::bind(unspecified_for(target)).map_err(|_| "socket")?;
    sock.connect(target).await.map_err(|_| "socket")?;
    Ok(sock)
}

/// Runs this shard's UDP sockets, the in-flight queries split among them.
pub async fn run_udp(plan: Arc<Prepared>, ctx: Rc<ShardCtx>) {
    let Prepared::Dns(p) = &*plan else {
        unreachable!("run_udp is called for DNS plans")
    };
    // Query ids carry the slot in their low bits: at most 32768 slots per socket.
    let sockets = p
        .sockets
        .max(ctx.workers.div_ceil(32_768))
        .clamp(1, ctx.workers);
    let mut tasks = Vec::with_capacity(sockets);
    for s in 0..sockets {
        let slots = ctx.workers / sockets + usize::from(s < ctx.workers % sockets);
        let (plan, ctx) = (plan.clone(), ctx.clone());
        tasks.push(glommio::spawn_local(async move {
            let Prepared::Dns(p) = &*plan else {
                unreachable!()
            };
            udp_engine(&ctx, p, s, slots).await
        }));
    }
    for t in tasks {
        t.await;
    }
}

/// Bytes per receive slot: our queries carry no EDNS, so answers fit in 512 bytes; a larger
/// one is truncated here and still counted by its header.
const STRIDE: usize = 1024;

#[derive(Clone, Copy)]
struct InFlight {
    id: u16,
    due: Instant,
    sent: Instant,
}

/// One socket with up to `slots` queries in flight. Sends every query that is due in one
/// `sendmmsg`, drains every answer waiting in one `recvmmsg`, and only then waits (for an
/// answer, the next due query, or the next timeout check). A query's id carries its slot in
/// the low bits and a generation above them, so a late answer to a reused slot is recognised.
async fn udp_engine(ctx: &ShardCtx, p: &DnsPlan, sock_no: usize, slots: usize) {
    let sock = loop {
        match udp_socket(p.target).await {
            Ok(s) => break s,
            Err(kind) => {
                if ctx.over() {
                    return;
                }
                ctx.record(Instant::now(), Err(kind));
                backoff(ctx).await;
            }
        }
    };
    let fd = sock.as_raw_fd();
    let bits = slots.next_power_of_two().trailing_zeros().max(1);
    let mask = (1u32 << bits) - 1;
    let mut generation: u32 = 0;
    let mut pending: Vec<Option<InFlight>> = vec![None; slots];
    let mut free: Vec<usize> = (0..slots).rev().collect();
    let mut qi = p.start_index(ctx.shard, sock_no);
    let mut out: Vec<Vec<u8>> = (0..MAX_BATCH).map(|_| Vec::with_capacity(512)).collect();
    let mut out_slots: Vec<usize> = Vec::with_capacity(MAX_BATCH);
    let mut rbuf = vec![0u8; MAX_BATCH * STRIDE];
    let mut lens = [0usize; MAX_BATCH];
    let scan_every = (ctx.timeout / 4).clamp(Duration::from_millis(1), Duration::from_millis(100));
    let mut next_scan = Instant::now() + scan_every;
    let mut over = false;
    let mut peek = [0u8; 1];
    loop {
        // 1. Send what is due, in batches.
        let now = Instant::now();
        let mut next_due = None;
        while !over && !free.is_empty() {
            match ctx.take_by(now) {
                Take::Due(due) => {
                    ctx.started(due, now);
                    let slot = free.pop().expect("not empty");
                    generation = generation.wrapping_add(1);
                    let id = ((generation << bits) | slot as u32) as u16;
                    let q = &p.queries[qi];
                    qi = (qi + 1) % p.queries.len();
                    let buf = &mut out[out_slots.len()];
                    buf.clear();
                    buf.extend_from_slice(&q.wire);
                    dnswire::set_id(buf, id);
                    pending[slot] = Some(InFlight { id, due, sent: now });
                    out_slots.push(slot);
                    if out_slots.len() == MAX_BATCH {
                        flush(ctx, fd, &out, &mut out_slots, &mut pending, &mut free);
                    }
                }
                Take::Later(t) => {
                    next_due = Some(t);
                    break;
                }
                Take::Over => over = true,
            }
        }
        flush(ctx, fd, &out, &mut out_slots, &mut pending, &mut free);

        // 2. Take every answer already here.
        let mut got = 0;
        loop {
            match sys::recv_batch(fd, &mut rbuf, STRIDE, &mut lens) {
                Ok(0) => break,
                Ok(n) => {
                    let now = Instant::now();
                    for (i, &len) in lens.iter().enumerate().take(n) {
                        let reply = &rbuf[i * STRIDE..i * STRIDE + len.min(STRIDE)];
                        let Some(id) = dnswire::reply_id(reply) else {
                            continue;
                        };
                        let slot = (id as u32 & mask) as usize;
                        match pending.get(slot).copied().flatten() {
                            Some(f) if f.id == id => {
                                let tag = dnswire::rcode_name(reply[3] & 0x0F);
                                let bytes = (p.queries[0].wire.len() + len) as u64;
                                ctx.record_at(f.due, now, Ok(Done { bytes, tag }));
                                pending[slot] = None;
                                free.push(slot);
                                got += 1;
                            }
                            // A late answer to a query already counted as timed out.
                            _ => {}
                        }
                    }
                    if n < MAX_BATCH {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    // ICMP port unreachable is reported here: count it once and go on.
                    ctx.record(Instant::now(), Err(io_kind(e)));
                    break;
                }
            }
        }

        // 3. Time out what waited too long.
        let now = Instant::now();
        if now >= next_scan {
            next_scan = now + scan_every;
            for (slot, entry) in pending.iter_mut().enumerate() {
                if let Some(f) = *entry {
                    if now.duration_since(f.sent) >= ctx.timeout {
                        ctx.record_at(f.due, now, Err("timeout"));
                        *entry = None;
                        free.push(slot);
                    }
                }
            }
        }
        let in_flight = slots - free.len();
        if over && in_flight == 0 {
            return;
        }
        if got > 0 {
            // Answers freed slots: send again at once, but let the shard's other tasks run.
            futures_lite::future::yield_now().await;
            continue;
        }

        // 4. Nothing to do: wait for an answer, the next due query or the next scan.
        let wake = next_due.map_or(next_scan, |d| d.min(next_scan));
        let nap = wake.saturating_duration_since(Instant::now());
        if in_flight > 0 {
            futures_lite::future::or(
                async {
                    let _ = sock.peek(&mut peek).await;
                },
                glommio::timer::sleep(nap),
            )
            .await;
        } else {
            glommio::timer::sleep(nap).await;
        }
    }
}

/// Sends the batch; queries the socket did not take fail with the reason.
fn flush(
    ctx: &ShardCtx,
    fd: std::os::fd::RawFd,
    out: &[Vec<u8>],
    out_slots: &mut Vec<usize>,
    pending: &mut [Option<InFlight>],
    free: &mut Vec<usize>,
) {
    if out_slots.is_empty() {
        return;
    }
    let datagrams: Vec<&[u8]> = out[..out_slots.len()].iter().map(Vec::as_slice).collect();
    let (sent, kind) = match sys::send_batch(fd, &datagrams) {
        Ok(n) => (n, "send-buffer-full"),
        Err(e) => (0, io_kind(e)),
    };
    for &slot in &out_slots[sent..] {
        if let Some(f) = pending[slot].take() {
            ctx.record(f.due, Err(kind));
            free.push(slot);
        }
    }
    out_slots.clear();
}

pub async fn tcp_worker(ctx: &ShardCtx, p: &DnsPlan, worker: usize) {
    let watch = ctx.watch();
    let mut conn = None;
    let mut i = p.start_index(ctx.shard, worker);
    let mut id = (worker as u16).wrapping_mul(4099);
    let mut frame = Vec::with_capacity(514);
    let mut buf = vec![0u8; 65535];
    while let Some(due) = ctx.next().await {
        let Some(s) = ensure_connected(ctx, &mut conn, p.target, due).await else {
            continue;
        };
        let q = &p.queries[i];
        i = (i + 1) % p.queries.len();
        id = id.wrapping_add(1);
        frame.clear();
        frame.extend_from_slice(&(q.wire.len() as u16).to_be_bytes());
        frame.extend_from_slice(&q.wire);
        dnswire::set_id(&mut frame[2..], id);
        let fd = s.as_raw_fd();
        let r = watched(&watch, fd, ctx.timeout, async {
            s.write_all(&frame).await.map_err(io_kind)?;
            let mut len = [0u8; 2];
            s.read_exact(&mut len).await.map_err(io_kind)?;
            let n = u16::from_be_bytes(len) as usize;
            s.read_exact(&mut buf[..n]).await.map_err(io_kind)?;
            match rcode_of(&buf[..n], id) {
                Some(tag) => Ok(Done {
                    bytes: (frame.len() + 2 + n) as u64,
                    tag,
                }),
                None => Err("bad-reply"),
            }
        })
        .await;
        if r.is_err() {
            conn = None;
        }
        ctx.record(due, r);
    }
}
