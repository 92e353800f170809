//! TCP scenarios: bulk streams (`tcp-bulk`, with an optional discard backend in the same
//! process), request/response on kept-alive connections (`tcp-rr`) and a new connection per
//! request (`tcp-connect`). Requests are either `--size` bytes to an echo backend or, with
//! `--http PATH`, one HTTP/1.1 GET per request.

use super::{ensure_connected, io_kind, watched};
use crate::cli::{RrEngine, TcpBulk, TcpRr};
use crate::run::ShardCtx;
use crate::stats::{Done, ErrorKind};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

pub struct BulkPlan {
    pub target: SocketAddr,
    pub size: usize,
    pub sink: Option<SocketAddr>,
    /// One listening socket per shard for the sink, taken (set to -1) by the shard that
    /// serves it.
    sink_fds: Vec<AtomicI32>,
}

impl BulkPlan {
    pub fn new(c: &TcpBulk) -> Result<BulkPlan, String> {
        let (sink, sink_fds) = match c.sink {
            Some(addr) => {
                let (bound, fds) = crate::server::bind_listeners(addr, c.load.shards)?;
                (Some(bound), fds.into_iter().map(AtomicI32::new).collect())
            }
            None => (None, Vec::new()),
        };
        let target = c.load.target.or(sink).ok_or(
            "tcp-bulk needs --target HOST:PORT, or --sink ADDR to stream into its own backend",
        )?;
        Ok(BulkPlan {
            target,
            size: c.size,
            sink,
            sink_fds,
        })
    }

    pub fn params(&self) -> serde_json::Value {
        serde_json::json!({ "size": self.size, "sink": self.sink.map(|a| a.to_string()) })
    }

    /// Serves this shard's share of the sink until shortly after the run ends.
    pub fn start_sink(&self, ctx: &Rc<ShardCtx>) {
        let Some(slot) = self.sink_fds.get(ctx.shard) else {
            return;
        };
        let fd: RawFd = slot.swap(-1, Ordering::AcqRel);
        if fd < 0 {
            return;
        }
        // SAFETY: the descriptor came from bind_listeners and the swap gave it to this shard only.
        let listener = unsafe { crate::server::adopt(fd) };
        let until = ctx.end + ctx.timeout + Duration::from_secs(1);
        glommio::spawn_local(crate::server::serve(listener, true, until)).detach();
    }
}

impl Drop for BulkPlan {
    fn drop(&mut self) {
        for slot in &self.sink_fds {
            let fd = slot.swap(-1, Ordering::AcqRel);
            if fd >= 0 {
                // SAFETY: an untaken descriptor is still owned by the plan; closed once.
                unsafe { libc::close(fd) };
            }
        }
    }
}

pub struct RrPlan {
    pub target: SocketAddr,
    pub size: usize,
    pub http: Option<String>,
    pub new_connection: bool,
    /// Closed loop on one epoll per shard (see `rr_epoll`) rather than glommio tasks.
    pub epoll: bool,
    pub(crate) request: Vec<u8>,
}

impl RrPlan {
    pub fn new(c: &TcpRr, target: SocketAddr, new_connection: bool) -> RrPlan {
        let request = match &c.http {
            Some(path) => crate::http::get(path, new_connection),
            // A recognisable, non-zero pattern: an echo that mangles it is caught.
            None => (0..c.size).map(|i| b'a' + (i % 26) as u8).collect(),
        };
        let epoll = match c.engine {
            RrEngine::Epoll => true,
            RrEngine::Glommio => false,
            RrEngine::Auto => c.load.rate.is_none(),
        };
        RrPlan {
            target,
            size: c.size,
            http: c.http.clone(),
            new_connection,
            epoll,
            request,
        }
    }

    pub fn params(&self) -> serde_json::Value {
        serde_json::json!({
            "size": self.size,
            "http": self.http,
            "new_connection_per_request": self.new_connection,
            "engine": if self.epoll { "epoll" } else { "glommio" },
        })
    }
}

/// One request and its response on `s`.
async fn exchange(s: &mut TcpStream, p: &RrPlan, buf: &mut Vec<u8>) -> Result<Done, ErrorKind> {
    s.write_all(&p.request).await.map_err(io_kind)?;
    if p.http.is_some() {
        let f = crate::http::read_response(s, buf).await?;
        let status = f.status;
        buf.drain(..f.len);
        if !(200..300).contains(&status) {
            return Err("http-status");
        }
        return Ok(Done {
            bytes: (p.request.len() + f.len) as u64,
            tag: crate::http::status_tag(status),
        });
    }
    buf.resize(p.size, 0);
    s.read_exact(&mut buf[..p.size]).await.map_err(io_kind)?;
    if buf[..p.size] != p.request[..] {
        return Err("echo-mismatch");
    }
    Ok(Done::bytes(2 * p.size as u64))
}

pub async fn rr_worker(ctx: &ShardCtx, p: &RrPlan) {
    let watch = ctx.watch();
    let mut conn: Option<TcpStream> = None;
    let mut buf = Vec::with_capacity(p.size.max(4096));
    while let Some(due) = ctx.next().await {
        let Some(s) = ensure_connected(ctx, &mut conn, p.target, due).await else {
            continue;
        };
        let fd = s.as_raw_fd();
        let r = watched(&watch, fd, ctx.timeout, exchange(s, p, &mut buf)).await;
        // A failed exchange leaves the connection in an unknown state; so does a
        // per-request connection after its response.
        if r.is_err() || p.new_connection {
            buf.clear();
            conn = None;
        }
        ctx.record(due, r);
    }
}

pub async fn bulk_worker(ctx: &ShardCtx, p: &BulkPlan) {
    let watch = ctx.watch();
    let chunk: Vec<u8> = (0..p.size).map(|i| (i % 251) as u8).collect();
    let mut conn: Option<TcpStream> = None;
    while let Some(due) = ctx.next().await {
        let Some(s) = ensure_connected(ctx, &mut conn, p.target, due).await else {
            continue;
        };
        let fd = s.as_raw_fd();
        let r = watched(&watch, fd, ctx.timeout, async {
            s.write_all(&chunk).await.map_err(io_kind)
        })
        .await;
        if r.is_err() {
            conn = None;
        }
        ctx.record(due, r.map(|_| Done::bytes(p.size as u64)));
    }
}
