//! `dns`: queries from a dnsperf-format file (or one name), round-robin, each worker with its
//! own source port (UDP) or its own kept-open connection (TCP). Answers are counted by rcode;
//! a reply whose id is not the one in flight (a late answer to a query that timed out) is
//! skipped, not counted.

use super::{backoff, connect, io_kind};
use crate::cli::Dns;
use crate::dnswire::{self, Query};
use crate::run::ShardCtx;
use crate::stats::{Done, ErrorKind};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::UdpSocket;
use std::net::SocketAddr;
use std::time::Instant;

pub struct DnsPlan {
    pub target: SocketAddr,
    pub tcp: bool,
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
            queries,
            source,
        })
    }

    pub fn params(&self) -> serde_json::Value {
        serde_json::json!({
            "transport": if self.tcp { "tcp" } else { "udp" },
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

async fn udp_socket(target: SocketAddr, ctx: &ShardCtx) -> Result<UdpSocket, ErrorKind> {
    let sock = UdpSocket::bind(unspecified_for(target)).map_err(|_| "socket")?;
    sock.connect(target).await.map_err(|_| "socket")?;
    sock.set_read_timeout(Some(ctx.timeout))
        .map_err(|_| "socket")?;
    Ok(sock)
}

async fn udp_once(
    sock: &UdpSocket,
    query: &[u8],
    id: u16,
    buf: &mut [u8],
    deadline: Instant,
) -> Result<Done, ErrorKind> {
    sock.send(query)
        .await
        .map_err(|e| io_kind(std::io::Error::from(e)))?;
    loop {
        let n = sock
            .recv(buf)
            .await
            .map_err(|e| io_kind(std::io::Error::from(e)))?;
        if let Some(tag) = rcode_of(&buf[..n], id) {
            return Ok(Done {
                bytes: (query.len() + n) as u64,
                tag,
            });
        }
        if Instant::now() >= deadline {
            return Err("timeout");
        }
    }
}

pub async fn udp_worker(ctx: &ShardCtx, p: &DnsPlan, worker: usize) {
    let mut sock = None;
    let mut i = p.start_index(ctx.shard, worker);
    let mut id = (worker as u16).wrapping_mul(4099);
    let mut query = Vec::with_capacity(512);
    let mut buf = vec![0u8; 65535];
    while let Some(due) = ctx.next().await {
        if sock.is_none() {
            match udp_socket(p.target, ctx).await {
                Ok(s) => sock = Some(s),
                Err(kind) => {
                    ctx.record(due, Err(kind));
                    backoff(ctx).await;
                    continue;
                }
            }
        }
        let q = &p.queries[i];
        i = (i + 1) % p.queries.len();
        id = id.wrapping_add(1);
        query.clear();
        query.extend_from_slice(&q.wire);
        dnswire::set_id(&mut query, id);
        let s = sock.as_ref().expect("bound above");
        let r = udp_once(s, &query, id, &mut buf, Instant::now() + ctx.timeout).await;
        if matches!(r, Err(k) if k != "timeout") {
            // ICMP port unreachable and the like: start over with a fresh socket.
            sock = None;
        }
        ctx.record(due, r);
    }
}

pub async fn tcp_worker(ctx: &ShardCtx, p: &DnsPlan, worker: usize) {
    let mut conn = None;
    let mut i = p.start_index(ctx.shard, worker);
    let mut id = (worker as u16).wrapping_mul(4099);
    let mut frame = Vec::with_capacity(514);
    let mut buf = vec![0u8; 65535];
    while let Some(due) = ctx.next().await {
        if conn.is_none() {
            match connect(p.target, ctx.timeout).await {
                Ok(s) => conn = Some(s),
                Err(kind) => {
                    ctx.record(due, Err(kind));
                    backoff(ctx).await;
                    continue;
                }
            }
        }
        let q = &p.queries[i];
        i = (i + 1) % p.queries.len();
        id = id.wrapping_add(1);
        frame.clear();
        frame.extend_from_slice(&(q.wire.len() as u16).to_be_bytes());
        frame.extend_from_slice(&q.wire);
        dnswire::set_id(&mut frame[2..], id);
        let s = conn.as_mut().expect("connected above");
        let r = async {
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
        }
        .await;
        if r.is_err() {
            conn = None;
        }
        ctx.record(due, r);
    }
}
