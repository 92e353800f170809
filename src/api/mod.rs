//! The registration API (plain HTTP/1.1, keep-alive, pipelining) served by the API shard.
//!
//! - [`http`]: request framing and limits (pure).
//! - [`validate`]: registration bodies → `BackendSpec`, with field-precise errors (pure).
//! - [`routes`]: request → response against the registry (pure but for the registry).
//! - this module: the socket side — accept with a connection cap, per-connection read loop
//!   with an idle timeout between requests and a deadline within one, and read-your-writes:
//!   a mutation is answered only after the snapshot that contains it is published.
//!
//! Mutations that arrive together are persisted and published together: a connection that
//! changed the registry yields once, so every other connection with a request ready applies its
//! change first; then one group commit (see [`crate::store`]) and one publish cover them all,
//! and only then are the answers written. An answer that says "registered" is on disk and
//! visible on every shard.

pub mod auth;
pub mod http;
pub mod routes;
pub mod validate;

use crate::proxy::sock::{Acceptor, Sock};
use crate::registry::Registry;
use crate::shard::ShardCtx;
use crate::store::Store;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use http::Parsed;
use socket2::Socket;
use std::cell::{Cell, RefCell};
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Largest read buffer: a whole request at the limits, plus room for the next pipelined one.
const MAX_BUFFER: usize = http::MAX_HEADER_BYTES + http::MAX_BODY_BYTES + 16 * 1024;

/// The control plane's state on the API shard: the registry and its persistence.
pub struct Control {
    pub registry: RefCell<Registry>,
    /// `None` when persistence is off.
    pub store: Option<Store>,
    pub auth: auth::Auth,
    pub stats: routes::ApiStats,
    /// TLS, when on: for `POST /api/v1/tls/reload`.
    pub tls: Option<std::sync::Arc<crate::tls::TlsShared>>,
    /// Health-check counters (the checker, [`crate::health::check`], writes them).
    pub health: crate::health::check::Stats,
    /// The cluster, when replication is on: for `GET /api/v1/cluster` and its metrics.
    pub cluster: Option<Rc<crate::cluster::ClusterState>>,
}

impl Control {
    /// Hands the registry's journal to replication (local changes, stamped with their
    /// versions) and to the store (no waiting).
    pub fn persist_journal(&self) {
        let mut records = self.registry.borrow_mut().take_journal();
        if records.is_empty() {
            return;
        }
        if let Some(rep) = self.replication() {
            rep.local(&mut records);
        }
        if let Some(store) = &self.store {
            for rec in &records {
                store.append(rec);
            }
        }
    }

    /// Registry replication, when the cluster is on.
    pub fn replication(&self) -> Option<&Rc<crate::cluster::sync::Replicating>> {
        self.cluster.as_ref()?.replication.get()
    }

    /// Makes every change so far durable, then visible on every shard.
    pub async fn commit_and_publish(&self) -> io::Result<()> {
        let started = Instant::now();
        let changed = self.registry.borrow().is_dirty();
        self.persist_journal();
        if let Some(store) = &self.store {
            store.commit().await?;
        }
        let published = {
            let mut reg = self.registry.borrow_mut();
            let dirty = reg.is_dirty();
            reg.publish_if_dirty();
            dirty
        };
        if changed && published {
            self.stats.publish.observe(started.elapsed());
        }
        Ok(())
    }
}

/// Decrements the open-connection count when a connection task ends, however it ends.
struct ConnSlot(Rc<Cell<usize>>);

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

/// Serves the registration API until the process stops.
pub async fn serve(ctx: Rc<ShardCtx>, listener: Socket, control: Rc<Control>) {
    let open = Rc::new(Cell::new(0usize));
    // Accepted through the shard's epoll set, like the proxy's (`crate::proxy::reactor`).
    let acceptor = match Acceptor::new(&listener) {
        Ok(a) => a,
        Err(e) => {
            log::error!("api: cannot watch the listener: {e}");
            return;
        }
    };
    loop {
        let stream = match acceptor.accept().await {
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
        let (ctx, control) = (ctx.clone(), control.clone());
        glommio::spawn_local(async move {
            let _slot = slot;
            let peer = stream.peer_addr();
            if let Err(e) = connection(&ctx, stream, &control).await {
                log::debug!("api: connection from {peer} ended: {e}");
            }
        })
        .detach();
        // Draining: stop now rather than at the drain flag's next poll.
        if crate::shutdown::stop_accepting() {
            return;
        }
    }
}

/// Answers 503 to a connection over the cap, then closes it.
async fn refuse_busy(mut stream: Sock) {
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
    let _ = write_all_within(&mut stream, &out, Duration::from_secs(1)).await;
    let _ = stream.close().await;
}

/// `write_all`, or `TimedOut` when it is not done within `limit`.
async fn write_all_within(stream: &mut Sock, out: &[u8], limit: Duration) -> io::Result<()> {
    futures_lite::future::or(stream.write_all(out), async {
        glommio::timer::sleep(limit).await;
        Err(io::Error::new(io::ErrorKind::TimedOut, "write timed out"))
    })
    .await
}

/// `read`, or `TimedOut` when nothing came within `limit`.
async fn read_within(stream: &mut Sock, buf: &mut [u8], limit: Duration) -> io::Result<usize> {
    futures_lite::future::or(stream.read(buf), async {
        glommio::timer::sleep(limit).await;
        Err(io::Error::new(io::ErrorKind::TimedOut, "read timed out"))
    })
    .await
}

fn error_response(out: &mut Vec<u8>, status: u16, message: &str) {
    let body = serde_json::to_vec(&serde_json::json!({ "error": message, "field": null }))
        .unwrap_or_default();
    http::write_response(out, status, "application/json", &[], &body, false);
}

/// Serves one API connection: requests in order, answers in order, until the client closes,
/// asks to close, stalls, or sends something we refuse.
async fn connection(ctx: &ShardCtx, mut stream: Sock, control: &Control) -> io::Result<()> {
    let registry = &control.registry;
    let peer = stream.peer_addr().to_string();
    let cfg = &ctx.cfg;
    // Writes must finish within the request timeout (a client that stops reading).
    let write_limit = cfg.api_request_timeout;
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
                        store_syncs: control.store.as_ref().map(|s| s.syncs.get()),
                        api: Some(&control.stats),
                        data_plane: Some(&ctx.all_metrics),
                        health: Some(&control.health),
                        tls: control.tls.is_some(),
                        hub_region: &cfg.region,
                        cluster: control.cluster.as_deref(),
                    };
                    let draining = crate::shutdown::draining();
                    let resp = match control.auth.check(&req) {
                        // Once draining, the registry is flushed and handed on: changes
                        // belong to the successor, so refuse them rather than lose them.
                        Ok(()) if draining && req.method != http::Method::Get => {
                            routes::Response::error(
                                503,
                                "the hub is stopping or restarting: retry in a moment",
                                None,
                            )
                        }
                        Err(denied) => {
                            log::warn!(
                                "api: {peer} {} {}: refused, missing or invalid token",
                                req.method_str,
                                req.path
                            );
                            denied
                        }
                        Ok(()) if req.method == http::Method::Post && is_tls_reload(req.path) => {
                            match &control.tls {
                                Some(tls) => tls_reload(tls, &peer).await,
                                None => routes::handle(&req, &mut registry.borrow_mut(), &env),
                            }
                        }
                        Ok(()) => {
                            let mut reg = registry.borrow_mut();
                            let resp = routes::handle(&req, &mut reg, &env);
                            mutated |= reg.is_dirty();
                            resp
                        }
                    };
                    control.stats.count(req.path, resp.status);
                    log::debug!(
                        "api: {peer} {} {} -> {}",
                        req.method_str,
                        req.path,
                        resp.status
                    );
                    let mut headers: [(&str, &str); 1] = [("", "")];
                    let extra: &[(&str, &str)] = if let Some(allow) = resp.allow {
                        headers[0] = ("Allow", allow);
                        &headers
                    } else if resp.www_authenticate {
                        headers[0] = ("WWW-Authenticate", "Bearer realm=\"edgeproxy\"");
                        &headers
                    } else {
                        &[]
                    };
                    http::write_response(
                        &mut out,
                        resp.status,
                        resp.content_type,
                        extra,
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
            // Let every other connection with a request ready apply it, then persist and
            // publish once for all of them.
            futures_lite::future::yield_now().await;
            if let Err(e) = control.commit_and_publish().await {
                // Not durable: say nothing rather than "registered". The client sees the
                // connection close and retries; the change stays queued for the next commit.
                log::error!("api: cannot persist the registry: {e}");
                let _ = stream.close().await;
                return Err(e);
            }
        } else {
            // Heartbeats are journaled without waiting; the sweeper syncs them within a second.
            control.persist_journal();
        }
        if !out.is_empty() {
            write_all_within(&mut stream, &out, write_limit).await?;
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
        let len = buf.len();
        if len >= MAX_BUFFER {
            // parse() bounds headers and bodies, so this cannot happen; refuse rather than grow.
            error_response(&mut out, 431, "request too large");
            let _ = write_all_within(&mut stream, &out, write_limit).await;
            return Ok(());
        }
        buf.resize((len + 16 * 1024).min(MAX_BUFFER), 0);
        let n = match read_within(&mut stream, &mut buf[len..], timeout).await {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                buf.truncate(len);
                if request_started.is_some() || len > 0 {
                    error_response(&mut out, 408, "request not completed in time");
                    let _ = write_all_within(&mut stream, &out, write_limit).await;
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

fn is_tls_reload(path: &str) -> bool {
    path.strip_suffix('/').unwrap_or(path) == routes::TLS_RELOAD
}

/// How long `POST /api/v1/tls/reload` waits for the main thread.
const TLS_RELOAD_WAIT: Duration = Duration::from_secs(5);

/// `POST /api/v1/tls/reload`: certificates are files, and files are read on the main thread,
/// never on a shard. So this raises SIGHUP on our own process (the main thread's sigwait takes
/// it, exactly as `systemctl reload`) and polls, on a timer, for a reload that began after the
/// request to finish. Other tasks of the shard run meanwhile.
async fn tls_reload(tls: &crate::tls::TlsShared, peer: &str) -> routes::Response {
    use routes::Response;
    let ticket = tls.reloads.ticket();
    log::info!("api: {peer}: TLS certificate reload requested");
    // SAFETY: kill and getpid have no memory-safety preconditions.
    if unsafe { libc::kill(libc::getpid(), libc::SIGHUP) } != 0 {
        let e = io::Error::last_os_error();
        return Response::error(500, &format!("cannot signal the main thread: {e}"), None);
    }
    let deadline = Instant::now() + TLS_RELOAD_WAIT;
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(outcome) = tls.reloads.outcome_after(ticket) {
            return match &*outcome {
                Ok(n) => Response::json(
                    200,
                    serde_json::json!({ "reloaded": true, "certificates": n }),
                ),
                Err(e) => Response::error(
                    500,
                    &format!("reload failed, the old certificates stay: {e}"),
                    None,
                ),
            };
        }
        if Instant::now() >= deadline {
            return Response::error(
                503,
                "the reload did not complete in time (is the hub shutting down?)",
                None,
            );
        }
        glommio::timer::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Once draining starts: makes every pending change durable (heartbeats included) and tells
/// the main thread, which exits only after that (or after the drain timeout).
pub async fn flush_on_drain(control: Rc<Control>) {
    crate::shutdown::drain_started().await;
    match control.commit_and_publish().await {
        Ok(()) => log::info!("shutdown: registry flushed"),
        Err(e) => log::error!("shutdown: cannot flush the registry: {e}"),
    }
    if let Some(store) = &control.store {
        store.release();
    }
    crate::shutdown::mark_flushed();
}

/// Once a second: notes backends that missed their heartbeat, deletes those past the grace
/// period, syncs pending heartbeats, republishes when the registry changed, and compacts the
/// log when it has grown.
pub async fn sweeper(ctx: Rc<ShardCtx>, control: Rc<Control>) {
    let _ = ctx;
    loop {
        glommio::timer::sleep(Duration::from_secs(1)).await;
        if crate::shutdown::draining() {
            // The final flush is flush_on_drain's; nothing is written after it.
            return;
        }
        let now = crate::clock::now_ms();
        let sweep = control.registry.borrow_mut().sweep(now);
        for id in &sweep.expired {
            log::warn!("backend {id} missed its heartbeat: no longer served");
        }
        for id in &sweep.removed {
            log::info!("backend {id} removed after the expiry grace period");
        }
        if let Err(e) = control.commit_and_publish().await {
            log::error!("sweeper: cannot persist the registry: {e}");
            continue;
        }
        if let Some(store) = &control.store {
            if store.wants_compaction() {
                let mut image = control.registry.borrow().image();
                // Versions live in the replica: the compacted image keeps them too.
                if let Some(rep) = control.replication() {
                    let hub = rep.hub.borrow();
                    for b in &mut image {
                        hub.stamp(b);
                    }
                }
                if let Err(e) = store.compact(image).await {
                    log::error!("cannot compact the registry log: {e}");
                }
            }
        }
    }
}
