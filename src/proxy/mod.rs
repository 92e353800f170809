//! TCP forwarding: accept, choose a backend, connect with retries, forward both ways.
//!
//! One accept loop per listener per shard; one task per forwarded connection. A shard caps its
//! open forwarded connections at `--max-connections` by not accepting while at the cap (the
//! kernel backlog holds the rest). Each connection:
//!
//! 1. chooses a backend with [`crate::select::pick_with`] from the snapshot current at that
//!    moment (held only for the decision, never across an await), and takes a slot of its hard
//!    limit if it has one ([`Backend::try_reserve`]; a full one is skipped for the next pick);
//!    the decision is logged at debug level;
//! 2. connects within `--connect-timeout-ms`; on failure gives the slot back and picks again
//!    without the backends already tried, up to `--connect-tries` backends; with none left the
//!    client is closed. Each failed connect is counted in the backend's slot for this shard and
//!    reported to the API shard, which ejects a backend that keeps failing ([`crate::health`]);
//! 3. counts itself in the backend's live-connection slot for this shard while it lasts, and
//!    keeps its hard-limit slot until it closes;
//! 4. forwards both ways ([`forward`]), by `splice(2)` or by copying (`--splice`).
//!
//! Sockets are non-blocking [`Sock`]s waiting on the shard's epoll set ([`reactor`]), not
//! glommio streams: see that module for why.
//!
//! Never blocks, never locks, never allocates per forwarded chunk.

mod forward;
pub(crate) mod idle;
pub mod pool;
pub mod proxy_protocol;
pub mod reactor;
pub mod sock;
pub mod splice;
#[cfg(test)]
mod tests;

use crate::registry::{Backend, Reserved};
use crate::select::{pick_with, Client, Policy, Scope};
use crate::shard::ShardCtx;
use glommio::sync::Semaphore;
pub use sock::Sock;
use socket2::Socket;
use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use forward::{forward, Options, Outcome, Stream};

/// Pause after a failed accept (EMFILE, ENOBUFS…) before trying again.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);
/// At most one accept-error log line per this many ms per listener.
const ACCEPT_ERROR_LOG_EVERY_MS: u64 = 1_000;
/// The most `--connect-tries` can be (the flag's range).
const MAX_TRIES: usize = 16;

thread_local! {
    /// The connection cap of the shard running on this thread, keyed by its context so that
    /// every listener of one shard shares one cap.
    static SHARD_CAP: RefCell<Option<(*const ShardCtx, Rc<Semaphore>)>> = const { RefCell::new(None) };
}

pub(crate) fn shard_cap(ctx: &Rc<ShardCtx>) -> Rc<Semaphore> {
    SHARD_CAP.with(|cap| {
        let mut cap = cap.borrow_mut();
        match &*cap {
            Some((owner, sem)) if std::ptr::eq(*owner, Rc::as_ptr(ctx)) => sem.clone(),
            _ => {
                let sem = Rc::new(Semaphore::new(ctx.cfg.max_connections as u64));
                *cap = Some((Rc::as_ptr(ctx), sem.clone()));
                sem
            }
        }
    })
}

/// What a proxy listener serves.
#[derive(Debug, Clone)]
pub enum Serves {
    /// Every app (the main proxy listener).
    Every,
    /// One fixed app.
    App(Rc<str>),
    /// The app of live route listener `id` ([`crate::live`]): it may change on SIGHUP.
    Route(u64),
}

/// Serves one proxy listener (a bound, listening, non-blocking socket; closed when this ends).
pub async fn serve(ctx: Rc<ShardCtx>, listener: Socket, serves: Serves) {
    let cap = shard_cap(&ctx);
    // Accepted through the shard's epoll set, like every forwarded socket ([`reactor`]).
    let acceptor = match sock::Acceptor::new(&listener) {
        Ok(a) => a,
        Err(e) => {
            log::error!("shard {}: cannot watch a proxy listener: {e}", ctx.id);
            return;
        }
    };
    // A route's app, as of live generation `.0` (re-read only when the generation changes).
    let mut route_app: Option<(u64, Option<Rc<str>>)> = None;
    let mut last_log_ms: Option<u64> = None;
    let mut suppressed = 0u64;
    // Whether accepted sockets must be given TCP_NODELAY one by one: unknown until the first
    // one is looked at. Linux copies it from the listener, and the shard's listeners set it,
    // so normally that first look is the only setsockopt-related call per listener.
    let mut set_nodelay: Option<bool> = None;
    loop {
        // At the cap, stop accepting: connections wait in the kernel backlog. Only wait for a
        // free slot here, without keeping it: a slot kept by a listener that nobody connects
        // to would starve the shard's other listeners.
        if cap.acquire(1).await.is_err() {
            return;
        }
        cap.signal(1);
        let client = match acceptor.accept().await {
            Ok(client) => client,
            Err(e) => {
                let now = crate::clock::now_ms();
                if last_log_ms.is_none_or(|t| now.saturating_sub(t) >= ACCEPT_ERROR_LOG_EVERY_MS) {
                    log::warn!(
                        "shard {}: accept failed: {e} ({suppressed} more since the last report); \
                         retrying (EMFILE: raise LimitNOFILE)",
                        ctx.id
                    );
                    last_log_ms = Some(now);
                    suppressed = 0;
                } else {
                    suppressed += 1;
                }
                glommio::timer::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        // Another listener of this shard may have taken the slot meanwhile; then this one
        // connection waits (at most one per listener) and this loop accepts no more.
        let Ok(slot) = cap.acquire_static_permit(1).await else {
            return;
        };
        // Small request/response traffic must not wait for Nagle.
        let must_set = *set_nodelay.get_or_insert_with(|| !client.nodelay().unwrap_or(false));
        if must_set {
            let _ = client.set_nodelay(true);
        }
        let app = match &serves {
            Serves::Every => None,
            Serves::App(app) => Some(app.clone()),
            Serves::Route(id) => {
                let live = ctx.live.load();
                if route_app
                    .as_ref()
                    .is_none_or(|(g, _)| *g != live.generation)
                {
                    route_app = Some((live.generation, live.app_of(*id).map(Rc::from)));
                }
                match route_app.as_ref().and_then(|(_, app)| app.clone()) {
                    Some(app) => Some(app),
                    // The route was just removed: its listener closes within a poll.
                    None => return,
                }
            }
        };
        // Active from accept to close, whatever the path: what a drain waits for. Counted
        // here, not in the task, so there is no moment when a connection is accepted and a
        // process about to exit sees nothing active.
        ctx.metrics().proxy_active.add(1);
        let ctx = ctx.clone();
        glommio::spawn_local(async move {
            proxy_connection(&ctx, client, app.as_deref()).await;
            drop(slot);
        })
        .detach();
        // Draining: stop now rather than at the drain flag's next poll.
        if crate::shutdown::stop_accepting() {
            return;
        }
    }
}

/// Takes one off the shard's active-connection gauge when a client connection ends (TCP and
/// TLS alike; the accept loop counted it).
pub(crate) struct ActiveGuard<'a>(pub(crate) &'a crate::metrics::Gauge);

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.add(-1);
    }
}

/// A slot of a backend's hard limit, given back when dropped (connect failed, or the
/// connection closed).
struct Slot {
    backend: Arc<Backend>,
    held: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.held {
            self.backend.release();
        }
    }
}

/// One live connection to a backend, counted in its slot for this shard until dropped.
pub struct LiveConnection {
    backend: Arc<Backend>,
    shard: usize,
    _slot: Slot,
}

impl LiveConnection {
    fn new(slot: Slot, shard: usize) -> Self {
        let backend = slot.backend.clone();
        backend
            .live
            .shard_counter(shard)
            .fetch_add(1, Ordering::Relaxed);
        LiveConnection {
            backend,
            shard,
            _slot: slot,
        }
    }

    fn counter(&self) -> &AtomicU32 {
        self.backend.live.shard_counter(self.shard)
    }

    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }
}

impl Drop for LiveConnection {
    fn drop(&mut self) {
        self.counter().fetch_sub(1, Ordering::Relaxed);
    }
}

/// Chooses a backend for `client_ip` among `app`'s (or every app's) and connects to it, trying
/// others on failure. `alpn`: only backends that speak this protocol (what a TLS client
/// negotiated; `None` = any backend). `None` when no backend could be reached.
pub async fn connect_backend(
    ctx: &ShardCtx,
    client_ip: IpAddr,
    app: Option<&str>,
    alpn: Option<&[u8]>,
) -> Option<(Sock, LiveConnection)> {
    let cfg = &ctx.cfg;
    let tries = (cfg.connect_tries as usize).clamp(1, MAX_TRIES);
    let policy = Policy {
        hub_region: &cfg.region,
        regions: cfg.geo.regions(),
        balance_factor: cfg.balance_factor,
    };
    let loc = cfg.geo.locate(client_ip);
    let client = Client::at(client_ip, loc);
    // Backends already tried (connect failed, or hard limit full), by key: the snapshot may
    // change between attempts.
    let mut tried_keys = [0u64; MAX_TRIES];
    let mut tried = 0;
    let mut connects = 0;
    while connects < tries && tried < MAX_TRIES {
        let (slot, tier) = {
            let snap = ctx.cell.load();
            let scope = Scope::of(&snap, app)?;
            let (backend, tier) = pick_with(
                scope,
                &client,
                &policy,
                crate::clock::now_ms(),
                &tried_keys[..tried],
                |b| alpn.is_none_or(|p| b.speaks(p)),
            )?;
            tried_keys[tried] = backend.key;
            tried += 1;
            let held = match backend.try_reserve() {
                Reserved::Slot => true,
                Reserved::Unlimited => false,
                Reserved::Full => {
                    log::debug!(
                        "shard {}: {client_ip}: backend {} is at its hard limit; picking again",
                        ctx.id,
                        backend.id
                    );
                    continue;
                }
            };
            let slot = Slot {
                backend: backend.clone(),
                held,
            };
            (slot, tier)
        };
        connects += 1;
        let backend = &slot.backend;
        log::debug!(
            "shard {}: route {client_ip} (region {}, country {}, from {}) app {} -> {} \
             ({}:{}, region {}) tier {tier} load {} weight {} try {connects}",
            ctx.id,
            loc.region.unwrap_or("-"),
            loc.country.as_ref().map_or("-", |c| c.as_str()),
            loc.source.as_str(),
            app.unwrap_or("*"),
            backend.id,
            backend.ip,
            backend.port,
            backend.region,
            backend.connections(),
            backend.weight,
        );
        let addr = SocketAddr::new(backend.ip, backend.port);
        match Sock::connect(addr, cfg.connect_timeout, cfg.tcp_congestion.as_deref()).await {
            Ok(stream) => {
                slot.backend.live.connect_succeeded(ctx.id);
                let live = LiveConnection::new(slot, ctx.id);
                return Some((stream, live));
            }
            Err(e) => {
                ctx.metrics().proxy_connect_failures.inc();
                backend.live.connect_failed(ctx.id, crate::clock::unix_ms());
                ctx.metrics().connect_failed.push(backend.key);
                log::debug!(
                    "shard {}: backend {} ({addr}) failed: {e}; trying another",
                    ctx.id,
                    slot.backend.id
                );
            }
        }
    }
    None
}

async fn proxy_connection(ctx: &ShardCtx, client: Sock, app: Option<&str>) {
    let m = ctx.metrics();
    // Counted active by the accept loop (see `serve`); uncounted here, however this ends.
    let _active = ActiveGuard(&m.proxy_active);
    let peer = client.peer_addr();
    m.proxy_accepted.inc();
    let Some((backend, live)) = connect_backend(ctx, peer.ip(), app, None).await else {
        m.proxy_failed.inc();
        log::debug!(
            "shard {}: no backend reachable for {peer} (app {}); closing",
            ctx.id,
            app.unwrap_or("*")
        );
        return;
    };
    let mut backend = backend;
    if ctx.cfg.proxy_protocol {
        let local = client.local_addr().unwrap_or(peer);
        let (h, n) = proxy_protocol::v2_header(peer, local);
        if let Err(e) = futures_lite::AsyncWriteExt::write_all(&mut backend, &h[..n]).await {
            log::debug!("{peer}: cannot send the PROXY header: {e}");
            return;
        }
    }
    let opts = Options {
        mode: ctx.cfg.splice,
        pipe_size: ctx.cfg.splice_pipe_size,
        idle: ctx.cfg.idle_timeout,
    };
    let out = forward(client, backend, opts).await;
    m.proxy_bytes_to_backend.add(out.up);
    m.proxy_bytes_to_client.add(out.down);
    match &out.result {
        Ok(()) => log::trace!(
            "{peer} <-> {}: closed, {} B up, {} B down",
            live.backend().id,
            out.up,
            out.down
        ),
        Err(e) => log::debug!(
            "{peer} <-> {}: ended: {e} ({} B up, {} B down)",
            live.backend().id,
            out.up,
            out.down
        ),
    }
    drop(live);
}
