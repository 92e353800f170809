//! The registration API (plain HTTP/1.1, keep-alive, pipelining) served by the API shard.
//!
//! - [`http`]: request framing and limits (pure).
//! - [`validate`]: registration bodies → `BackendSpec`, with field-precise errors (pure).
//! - [`routes`]: request → response against the registry (pure but for the registry).
//! - this module: the socket side — accept with a connection cap, per-connection read loop
//!   with an idle timeout between requests and a deadline within one, and read-your-writes:
//!   a mutation is answered only after the snapshot that contains it is published.
//!
//! Mutations that arrive together are published together: a connection that changed the
//! registry yields once before publishing, so every other connection with a request ready
//! applies its change first and one publish covers them all.

pub mod http;
pub mod routes;
pub mod validate;

use crate::registry::Registry;
use crate::shard::ShardCtx;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use http::Parsed;
use std::cell::{Cell, RefCell};
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Largest read buffer: a whole request at the limits, plus room for the next pipelined one.
const MAX_BUFFER: usize = http::MAX_HEADER_BYTES + http::MAX_BODY_BYTES + 16 * 1024;

/// Decrements the open-connection count when a connection task ends, however it ends.
struct ConnSlot(Rc<Cell<usize>>);

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

/// Serves the registration API until the process stops.
pub async fn serve(ctx: Rc<ShardCtx>, listener: TcpListener, registry: Rc<RefCell<Registry>>) {
    let open = Rc::new(Cell::new(0usize));
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                log::warn!("api: accept failed: {e}");
                glommio::timer::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if open.get() >= ctx.cfg.api_max_connections {
            glommio::spawn_local(refuse_busy(stream)).detach();
            continue;
        }
        open.set(open.get() + 1);
        let slot = ConnSlot(open.clone());
        let (ctx, registry) = (ctx.clone(), registry.clone());
        glommio::spawn_local(async move {
            let _slot = slot;
            let peer = stream.peer_addr().ok();
            if let Err(e) = connection(&ctx, stream, &registry).await {
                log::debug!("api: connection from {peer:?} ended: {e}");
            }
        })
        .detach();
    }
}

/// Answers 503 to a connection over the cap, then closes it.
async fn refuse_busy(mut stream: TcpStream) {
    let mut out = Vec::new();
    let body = br#"{"error":"too many API connections; retry later","field":null}"#;
    http::write_response(
        &mut out,
        503,
        "application/json",
        &[("Retry-After", "1")],
        body,
        false,
    );
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    let _ = stream.write_all(&out).await;
    let _ = stream.close().await;
}

fn error_response(out: &mut Vec<u8>, status: u16, message: &str) {
    let body = serde_json::to_vec(&serde_json::json!({ "error": message, "field": null }))
        .unwrap_or_default();
    http::write_response(out, status, "application/json", &[], &body, false);
}

/// Serves one API connection: requests in order, answers in order, until the client closes,
/// asks to close, stalls, or sends something we refuse.
async fn connection(
    ctx: &ShardCtx,
    mut stream: TcpStream,
    registry: &RefCell<Registry>,
) -> io::Result<()> {
    let cfg = &ctx.cfg;
    stream.set_write_timeout(Some(cfg.api_request_timeout))?;
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut out: Vec<u8> = Vec::with_capacity(1024);
    // When the first byte of the request now in `buf` arrived.
    let mut request_started: Option<Instant> = None;
    loop {
        // Answer every whole request already buffered.
        let mut used = 0;
        let mut close = false;
        let mut mutated = false;
        loop {
            match http::parse(&buf[used..]) {
                Parsed::Partial => break,
                Parsed::Error(e) => {
                    log::debug!("api: refused request: {} {}", e.status, e.message);
                    error_response(&mut out, e.status, e.message);
                    close = true;
                    break;
                }
                Parsed::Complete(req, n) => {
                    let env = routes::Env {
                        now_ms: crate::clock::now_ms(),
                        uptime_secs: crate::clock::unix_ms().saturating_sub(ctx.started_unix_ms)
                            / 1000,
                        shards: ctx.shards,
                    };
                    let resp = {
                        let mut reg = registry.borrow_mut();
                        let resp = routes::handle(&req, &mut reg, &env);
                        mutated |= reg.is_dirty();
                        resp
                    };
                    log::debug!("api: {} {} -> {}", req.method_str, req.path, resp.status);
                    let allow = resp.allow.map(|a| [("Allow", a)]);
                    http::write_response(
                        &mut out,
                        resp.status,
                        resp.content_type,
                        allow.as_ref().map(|a| &a[..]).unwrap_or(&[]),
                        &resp.body,
                        req.keep_alive,
                    );
                    used += n;
                    if !req.keep_alive {
                        close = true;
                        break;
                    }
                }
            }
        }
        buf.drain(..used);
        if used > 0 {
            request_started = if buf.is_empty() {
                None
            } else {
                Some(Instant::now())
            };
        }
        if mutated {
            // Let every other connection with a request ready apply it, then publish once.
            futures_lite::future::yield_now().await;
            registry.borrow_mut().publish_if_dirty();
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
        if close {
            let _ = stream.close().await;
            return Ok(());
        }
        // Read more: an idle connection may wait `api_idle_timeout`; a request once started
        // must be complete within `api_request_timeout`.
        let timeout = match request_started {
            None => cfg.api_idle_timeout,
            Some(t) => cfg
                .api_request_timeout
                .saturating_sub(t.elapsed())
                .max(Duration::from_millis(1)),
        };
        stream.set_read_timeout(Some(timeout))?;
        let len = buf.len();
        if len >= MAX_BUFFER {
            // parse() bounds headers and bodies, so this cannot happen; refuse rather than grow.
            error_response(&mut out, 431, "request too large");
            let _ = stream.write_all(&out).await;
            return Ok(());
        }
        buf.resize((len + 16 * 1024).min(MAX_BUFFER), 0);
        let n = match stream.read(&mut buf[len..]).await {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                buf.truncate(len);
                if request_started.is_some() || len > 0 {
                    error_response(&mut out, 408, "request not completed in time");
                    let _ = stream.write_all(&out).await;
                }
                let _ = stream.close().await;
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        buf.truncate(len + n);
        if n == 0 {
            return Ok(());
        }
        if len == 0 {
            request_started = Some(Instant::now());
        }
    }
}

/// Once a second: notes backends that missed their heartbeat, deletes those past the grace
/// period, and republishes when that changed the registry.
pub async fn sweeper(ctx: Rc<ShardCtx>, registry: Rc<RefCell<Registry>>) {
    let _ = ctx;
    loop {
        glommio::timer::sleep(Duration::from_secs(1)).await;
        let now = crate::clock::now_ms();
        let mut reg = registry.borrow_mut();
        let sweep = reg.sweep(now);
        for id in &sweep.expired {
            log::warn!("backend {id} missed its heartbeat: no longer served");
        }
        for id in &sweep.removed {
            log::info!("backend {id} removed after the expiry grace period");
        }
        reg.publish_if_dirty();
    }
}
