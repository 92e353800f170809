//! TLS on 8443: termination with rustls on every shard, routing by SNI name, and passthrough.
//!
//! Every connection starts the same way: the ClientHello is read (not decrypted) by our own
//! bounded parser ([`clienthello`]) within the handshake timeout and while holding one of the
//! shard's handshake slots (none free: closed at once). Its SNI name chooses the app ([`route`]); a name that maps to no app
//! is answered with an `unrecognized_name` alert. Then either
//! - **terminate**: the bytes already read are replayed into rustls, which finishes the handshake
//!   with the certificate chosen by SNI ([`certs`]), offering only the ALPN protocols some
//!   eligible backend of the app speaks; the plaintext is copied to a backend chosen exactly as
//!   the TCP proxy chooses ([`crate::proxy::connect_backend`]) among those that speak the
//!   negotiated protocol, or
//! - **passthrough** (a `--tls-passthrough` listener or a route marked so): the untouched bytes
//!   go to the backend, which holds its own certificate, and the rest is spliced like the TCP
//!   proxy's ([`crate::proxy::forward`]).
//!
//! Optionally the backend first receives a PROXY v2 header with the real client address.
//!
//! Certificates live in a [`certs::Certs`] shared by every shard (an `ArcSwap`): SIGHUP reloads
//! them on the main thread and swaps them in whole; open connections keep theirs. Each shard has
//! its own `ServerConfig` (so its session cache is its own, uncontended); session tickets use one
//! key shared by all shards, so a client resumes whichever shard the kernel hands it to.
//!
//! Never blocks, never waits without a deadline before the handshake ends.

pub mod certs;
pub mod clienthello;
mod relay;

use crate::config::{Config, TlsRoute};
use crate::proxy::Sock;
use crate::proxy::{connect_backend, forward, Options};
use crate::shard::ShardCtx;
use clienthello::{Hello, Parse};
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use futures_rustls::TlsAcceptor;
use glommio::sync::Semaphore;
use rustls::crypto::CryptoProvider;
use rustls::server::{ProducesTickets, ServerConfig, ServerSessionMemoryCache};
use socket2::Socket;
use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Reloads as the main thread does them, for `POST /api/v1/tls/reload` to wait on: a request
/// takes a [`Reloads::ticket`], raises SIGHUP, and waits for [`Reloads::outcome_after`] it.
#[derive(Debug)]
pub struct Reloads {
    /// Reloads begun.
    started: AtomicU64,
    /// Reloads finished; `last` is written before this is bumped.
    done: AtomicU64,
    /// The outcome of the last finished reload: certificates loaded, or the error.
    last: arc_swap::ArcSwap<Result<usize, String>>,
}

impl Reloads {
    fn new() -> Reloads {
        Reloads {
            started: AtomicU64::new(0),
            done: AtomicU64::new(0),
            last: arc_swap::ArcSwap::from_pointee(Ok(0)),
        }
    }

    /// Taken before asking for a reload: only a reload that begins after it answers the request
    /// (one already under way may have read the files before they changed).
    pub fn ticket(&self) -> u64 {
        self.started.load(Ordering::Acquire)
    }

    /// The outcome of a reload begun after `ticket` was taken, once one has finished.
    pub fn outcome_after(&self, ticket: u64) -> Option<Arc<Result<usize, String>>> {
        (self.done.load(Ordering::Acquire) > ticket).then(|| self.last.load_full())
    }
}

/// What the whole process shares for TLS: certificates, the ticket key, the crypto provider.
pub struct TlsShared {
    pub certs: Arc<certs::Certs>,
    pub reloads: Reloads,
    sources: certs::CertSources,
    provider: Arc<CryptoProvider>,
    ticketer: Arc<dyn ProducesTickets>,
}

impl std::fmt::Debug for TlsShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsShared")
            .field("certs", &self.certs)
            .finish()
    }
}

/// The one crypto provider of the process: `aws-lc-rs`, installed explicitly so nothing can
/// pick another implicitly.
fn provider() -> Arc<CryptoProvider> {
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    // AES-128-GCM with SHA-256 first, chosen over the client's order (below): as strong for
    // this use, and SHA-256 runs on the CPU's SHA extensions where ring's SHA-384 (the
    // default first suite's hash) does not; a handshake's transcript and key schedule hash
    // with it.
    p.cipher_suites.sort_by_key(|s| match s.suite() {
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256 => 0,
        rustls::CipherSuite::TLS13_AES_256_GCM_SHA384 => 1,
        rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => 2,
        _ => 3,
    });
    let p = Arc::new(p);
    // Already installed (a second hub in one test process): the same provider, fine.
    let _ = CryptoProvider::install_default((*p).clone());
    p
}

impl TlsShared {
    /// Loads the certificates (or generates the self-signed one). Errors name the file.
    pub fn new(cfg: &Config) -> Result<Arc<TlsShared>, certs::CertError> {
        let provider = provider();
        let sources = cfg.tls.sources.clone();
        let set = certs::CertSet::load(&sources, &provider)?;
        if set.self_signed {
            log::warn!(
                "tls: no certificate configured; serving a self-signed one ({}). Set \
                 EDGEPROXY_TLS_CERT and EDGEPROXY_TLS_KEY (PEM chain and key) or \
                 EDGEPROXY_TLS_CERT_DIR (one chain+key per file) for real ones",
                set.summary
            );
        } else {
            log::info!("tls: certificates: {}", set.summary);
        }
        let ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()
            .map_err(|e| certs::CertError(format!("cannot create the session ticket key: {e}")))?;
        Ok(Arc::new(TlsShared {
            certs: Arc::new(certs::Certs::new(set)),
            reloads: Reloads::new(),
            sources,
            provider,
            ticketer,
        }))
    }

    /// Reads the certificates again and swaps them in; on error the old ones stay. Main thread
    /// only (file I/O); the outcome is recorded in [`TlsShared::reloads`].
    pub fn reload(&self) -> Result<String, certs::CertError> {
        self.reloads.started.fetch_add(1, Ordering::AcqRel);
        let result = certs::CertSet::load(&self.sources, &self.provider).map(|set| {
            let out = (set.count, set.summary.clone());
            self.certs.current.store(Arc::new(set));
            out
        });
        let outcome = match &result {
            Ok((count, _)) => Ok(*count),
            Err(e) => Err(e.0.clone()),
        };
        self.reloads.last.store(Arc::new(outcome));
        self.reloads.done.fetch_add(1, Ordering::AcqRel);
        result.map(|(_, summary)| summary)
    }

    /// One shard's server configuration.
    fn server_config(&self, cfg: &Config) -> Result<Arc<ServerConfig>, rustls::Error> {
        let mut sc = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(self.certs.clone());
        sc.alpn_protocols = cfg.tls.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        sc.session_storage = ServerSessionMemoryCache::new(cfg.tls.session_cache);
        sc.ignore_client_order = true;
        sc.ticketer = self.ticketer.clone();
        Ok(Arc::new(sc))
    }
}

/// At most this many `--tls-alpn` protocols: a shard keeps one configuration per subset.
pub const MAX_ALPN: usize = 8;

/// A shard's TLS state: its configurations and its handshake slots.
pub struct ShardTls {
    /// `--tls-alpn`, in preference order; bit `i` of a subset mask is `alpn[i]`.
    alpn: Vec<Vec<u8>>,
    /// One acceptor per subset of `alpn` (index = mask), built the first time it is needed.
    /// They share the certificates, the session cache and the ticket key.
    by_subset: RefCell<Vec<Option<TlsAcceptor>>>,
    base: Arc<ServerConfig>,
    handshakes: Rc<Semaphore>,
}

impl ShardTls {
    pub fn new(shared: &TlsShared, cfg: &Config) -> Result<Rc<ShardTls>, String> {
        let sc = shared
            .server_config(cfg)
            .map_err(|e| format!("cannot build the TLS configuration: {e}"))?;
        let alpn = sc.alpn_protocols.clone();
        Ok(Rc::new(ShardTls {
            by_subset: RefCell::new(vec![None; 1 << alpn.len()]),
            alpn,
            base: sc,
            handshakes: Rc::new(Semaphore::new(cfg.tls.max_handshakes as u64)),
        }))
    }

    /// Every configured protocol.
    fn all(&self) -> u32 {
        (1u32 << self.alpn.len()) - 1
    }

    /// The configured protocols `b` speaks, as a mask.
    fn spoken_by(&self, b: &crate::registry::Backend) -> u32 {
        self.alpn
            .iter()
            .enumerate()
            .filter(|(_, p)| b.speaks(p))
            .fold(0, |m, (i, _)| m | 1 << i)
    }

    /// The acceptor that offers exactly the protocols of `mask`.
    fn acceptor(&self, mask: u32) -> TlsAcceptor {
        let mut by = self.by_subset.borrow_mut();
        by[mask as usize]
            .get_or_insert_with(|| {
                let mut sc = (*self.base).clone();
                sc.alpn_protocols = (0..self.alpn.len())
                    .filter(|i| mask & 1 << i != 0)
                    .map(|i| self.alpn[i].clone())
                    .collect();
                TlsAcceptor::from(Arc::new(sc))
            })
            .clone()
    }

    /// The configured protocol equal to `p`.
    fn configured(&self, p: Option<&[u8]>) -> Option<&[u8]> {
        let p = p?;
        self.alpn
            .iter()
            .find(|q| q.as_slice() == p)
            .map(Vec::as_slice)
    }
}

/// Where a connection goes, decided from its SNI name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// To `app` (`None`: every app, as the TCP proxy's main listener).
    Forward {
        app: Option<String>,
        passthrough: bool,
        proxy_v2: bool,
    },
    /// No app for this name: `unrecognized_name`.
    Unrecognized,
}

/// Chooses the app for `sni` (pure). Order: an explicit `--tls-route`, then `<app>.<zone>` for
/// an app that has backends, then the default app; a name matching none of them is refused. A
/// client without SNI goes to the default app, or to every app like the TCP proxy's listener.
pub fn route(
    cfg: &Config,
    table: &crate::live::TlsRoutes,
    sni: Option<&str>,
    app_exists: impl Fn(&str) -> bool,
    listener_passthrough: bool,
) -> Decision {
    let t = &cfg.tls;
    let forward = |app: Option<&str>, r: Option<&TlsRoute>| Decision::Forward {
        app: app.map(str::to_string),
        passthrough: listener_passthrough || r.is_some_and(|r| r.passthrough),
        proxy_v2: t.proxy_protocol || r.is_some_and(|r| r.proxy_v2),
    };
    let Some(name) = sni else {
        return forward(table.default_app.as_deref(), None);
    };
    if let Some(r) = table.routes.iter().find(|r| r.name == name) {
        return forward(Some(&r.app), Some(r));
    }
    if let Some(app) = name
        .strip_suffix(cfg.dns_zone.as_str())
        .and_then(|p| p.strip_suffix('.'))
    {
        if !app.is_empty() && app_exists(app) {
            return forward(Some(app), None);
        }
    }
    match &table.default_app {
        Some(app) => forward(Some(app), None),
        None => Decision::Unrecognized,
    }
}

/// Serves one TLS listener (`passthrough`: never terminate).
pub async fn serve(ctx: Rc<ShardCtx>, tls: Rc<ShardTls>, listener: Socket, passthrough: bool) {
    let cap = crate::proxy::shard_cap(&ctx);
    let local = listener.local_addr().ok().and_then(|a| a.as_socket());
    // Accepted through the shard's epoll set, like the TCP proxy's (`crate::proxy::reactor`).
    let acceptor = match crate::proxy::sock::Acceptor::new(&listener) {
        Ok(a) => a,
        Err(e) => {
            log::error!("shard {}: cannot watch a TLS listener: {e}", ctx.id);
            return;
        }
    };
    loop {
        let Ok(slot) = cap.acquire_static_permit(1).await else {
            return;
        };
        let client = match acceptor.accept().await {
            Ok(c) => c,
            Err(e) => {
                log::debug!("shard {}: tls accept failed: {e}", ctx.id);
                drop(slot);
                glommio::timer::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Active from accept (see crate::proxy::serve); uncounted when the task ends.
        ctx.metrics().proxy_active.add(1);
        let ctx = ctx.clone();
        let tls = tls.clone();
        glommio::spawn_local(async move {
            connection(&ctx, &tls, client, local, passthrough).await;
            drop(slot);
        })
        .detach();
        // Draining: stop now rather than at the drain flag's next poll.
        if crate::shutdown::stop_accepting() {
            return;
        }
    }
}

/// Why a connection ended before its handshake did.
enum Early {
    TimedOut,
    Io(io::Error),
    Invalid(&'static str),
}

/// Reads until a whole ClientHello is in `buf`.
async fn read_hello(client: &mut Sock, buf: &mut Vec<u8>) -> Result<Hello, Early> {
    let mut chunk = [0u8; 2048];
    loop {
        match clienthello::parse(buf) {
            Parse::Hello(h) => return Ok(h),
            Parse::Invalid(why) => return Err(Early::Invalid(why)),
            Parse::Incomplete if buf.len() >= clienthello::MAX_BUFFER => {
                return Err(Early::Invalid("ClientHello too long"))
            }
            Parse::Incomplete => {}
        }
        let room = (clienthello::MAX_BUFFER - buf.len()).min(chunk.len());
        match client.read(&mut chunk[..room]).await {
            Ok(0) => return Err(Early::Invalid("closed before a whole ClientHello")),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(Early::Io(e)),
        }
    }
}

/// Runs `fut`, or gives `Early::TimedOut` at `deadline`.
async fn by<T>(
    deadline: Instant,
    fut: impl std::future::Future<Output = Result<T, Early>>,
) -> Result<T, Early> {
    let left = deadline.saturating_duration_since(Instant::now());
    futures_lite::future::or(fut, async {
        glommio::timer::sleep(left).await;
        Err(Early::TimedOut)
    })
    .await
}

async fn send_alert(client: &mut Sock, description: u8) {
    let _ = client.write_all(&clienthello::alert(description)).await;
    let _ = client.close().await;
}

async fn connection(
    ctx: &ShardCtx,
    tls: &ShardTls,
    mut client: Sock,
    local: Option<SocketAddr>,
    listener_passthrough: bool,
) {
    let m = ctx.metrics();
    let _active = crate::proxy::ActiveGuard(&m.proxy_active);
    let peer = client.peer_addr();
    m.proxy_accepted.inc();
    let cfg = &ctx.cfg;
    let deadline = Instant::now() + cfg.tls.handshake_timeout;
    // A handshake slot is held from accept until the handshake is over. With every slot taken
    // the connection is closed at once rather than queued: a queued client would hold a socket
    // and a task while waiting, and mostly time out anyway; closed, it retries or goes to
    // another hub, and the refusal shows in a metric.
    let Ok(slot) = tls.handshakes.try_acquire_static_permit(1) else {
        m.tls_refused.inc();
        log::debug!("tls {peer}: every handshake slot is taken; closing");
        return;
    };
    let mut buf = Vec::with_capacity(2048);
    let first = by(deadline, async {
        let hello = read_hello(&mut client, &mut buf).await?;
        Ok(hello)
    })
    .await;
    let hello = match first {
        Ok(x) => x,
        Err(e) => {
            m.tls_failures.inc();
            match e {
                Early::Invalid(why) => {
                    log::debug!("tls {peer}: {why}; decode_error");
                    send_alert(&mut client, clienthello::ALERT_DECODE_ERROR).await;
                }
                Early::TimedOut => log::debug!("tls {peer}: no ClientHello in time; closing"),
                Early::Io(e) => log::debug!("tls {peer}: {e}"),
            }
            return;
        }
    };
    let decision = {
        let snap = ctx.cell.load();
        let live = ctx.live.load();
        route(
            cfg,
            &live.tls,
            hello.sni.as_deref(),
            |app| snap.app(app).is_some(),
            listener_passthrough,
        )
    };
    let Decision::Forward {
        app,
        passthrough,
        proxy_v2,
    } = decision
    else {
        m.tls_failures.inc();
        log::debug!("tls {peer}: no app for {:?}; unrecognized_name", hello.sni);
        send_alert(&mut client, clienthello::ALERT_UNRECOGNIZED_NAME).await;
        return;
    };
    let header =
        proxy_v2.then(|| crate::proxy::proxy_protocol::v2_header(peer, local.unwrap_or(peer)));
    if passthrough {
        drop(slot);
        let Some((mut backend, live)) = connect_backend(ctx, peer.ip(), app.as_deref(), None).await
        else {
            m.proxy_failed.inc();
            return;
        };
        if let Some((h, n)) = &header {
            if backend.write_all(&h[..*n]).await.is_err() {
                return;
            }
        }
        if backend.write_all(&buf).await.is_err() {
            return;
        }
        let opts = Options {
            mode: cfg.splice,
            pipe_size: cfg.splice_pipe_size,
            idle: cfg.idle_timeout,
        };
        let out = forward(client, backend, opts).await;
        m.proxy_bytes_to_backend.add(out.up + buf.len() as u64);
        m.proxy_bytes_to_client.add(out.down);
        drop(live);
        return;
    }
    // ALPN: offer only the configured protocols that some eligible backend of the app speaks,
    // so whatever the client agrees to, a backend speaks it. A client offering none: any.
    let mask = if hello.alpn.is_empty() {
        tls.all()
    } else {
        let snap = ctx.cell.load();
        match crate::select::Scope::of(&snap, app.as_deref()) {
            Some(scope) => {
                crate::select::union_where(scope, crate::clock::now_ms(), tls.all(), |b| {
                    tls.spoken_by(b)
                })
            }
            None => 0,
        }
    };
    let acceptor = tls.acceptor(mask);
    let stream = Replay {
        head: buf,
        pos: 0,
        io: client,
    };
    let accepted = by(deadline, async {
        acceptor.accept(stream).await.map_err(Early::Io)
    })
    .await;
    drop(slot);
    let mut tls_stream = match accepted {
        Ok(s) => s,
        Err(e) => {
            m.tls_failures.inc();
            match e {
                Early::TimedOut => log::debug!("tls {peer}: handshake timed out"),
                Early::Io(e) => log::debug!("tls {peer}: handshake failed: {e}"),
                Early::Invalid(_) => {}
            }
            return;
        }
    };
    m.tls_handshakes.inc();
    // A protocol was agreed: only a backend that speaks it.
    let alpn = tls.configured(tls_stream.get_ref().1.alpn_protocol());
    let Some((mut backend, live)) = connect_backend(ctx, peer.ip(), app.as_deref(), alpn).await
    else {
        m.proxy_failed.inc();
        log::debug!("tls {peer}: no backend reachable (app {app:?}, alpn {alpn:?}); closing");
        let _ = tls_stream.close().await;
        return;
    };
    let _ = backend.set_nodelay(true);
    if let Some((h, n)) = &header {
        if backend.write_all(&h[..*n]).await.is_err() {
            return;
        }
    }
    let out = relay::relay(&mut tls_stream, &mut backend, cfg.idle_timeout).await;
    m.proxy_bytes_to_backend.add(out.up);
    m.proxy_bytes_to_client.add(out.down);
    if let Err(e) = &out.result {
        log::debug!(
            "tls {peer} <-> {}: ended: {e} ({} B up, {} B down)",
            live.backend().id,
            out.up,
            out.down
        );
    }
    drop(live);
}

/// The client's stream with the bytes already read (the ClientHello) put back in front.
struct Replay {
    head: Vec<u8>,
    pos: usize,
    io: Sock,
}

impl AsyncRead for Replay {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.pos < this.head.len() {
            let n = out.len().min(this.head.len() - this.pos);
            out[..n].copy_from_slice(&this.head[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.head.len() {
                this.head = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(n));
        }
        Pin::new(&mut this.io).poll_read(cx, out)
    }
}

impl AsyncWrite for Replay {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, b)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Args;
    use clap::Parser;

    fn cfg(args: &[&str]) -> Config {
        let mut full = vec!["edgeproxy"];
        full.extend_from_slice(args);
        Config::from_args(Args::parse_from(full), &[0]).unwrap()
    }

    fn table_of(c: &Config) -> crate::live::TlsRoutes {
        crate::live::TlsRoutes {
            routes: c.tls.routes.clone(),
            default_app: c.tls.default_app.clone(),
        }
    }

    fn fwd(app: Option<&str>, passthrough: bool, proxy_v2: bool) -> Decision {
        Decision::Forward {
            app: app.map(str::to_string),
            passthrough,
            proxy_v2,
        }
    }

    #[test]
    fn sni_selects_the_app() {
        let c = cfg(&[
            "--tls-route=www.example.com=web.pop",
            "--tls-route=db.example.com=db.pop:passthrough:proxy-v2",
        ]);
        let table = table_of(&c);
        let exists = |a: &str| a == "gru.pop" || a == "web.pop";
        assert_eq!(
            route(&c, &table, Some("gru.pop.internal"), exists, false),
            fwd(Some("gru.pop"), false, false)
        );
        assert_eq!(
            route(&c, &table, Some("www.example.com"), exists, false),
            fwd(Some("web.pop"), false, false)
        );
        assert_eq!(
            route(&c, &table, Some("db.example.com"), exists, false),
            fwd(Some("db.pop"), true, true)
        );
        // No such app, no such route: refused. No SNI: every app.
        assert_eq!(
            route(&c, &table, Some("iad.pop.internal"), exists, false),
            Decision::Unrecognized
        );
        assert_eq!(
            route(&c, &table, Some("internal"), exists, false),
            Decision::Unrecognized
        );
        assert_eq!(
            route(&c, &table, Some("x.example.org"), exists, false),
            Decision::Unrecognized
        );
        assert_eq!(
            route(&c, &table, None, exists, true),
            fwd(None, true, false)
        );
    }

    #[test]
    fn the_default_app_takes_unknown_names() {
        let c = cfg(&["--tls-default-app=gru.pop", "--tls-proxy-protocol=true"]);
        let table = table_of(&c);
        assert_eq!(
            route(&c, &table, Some("nothing.example"), |_| false, false),
            fwd(Some("gru.pop"), false, true)
        );
        assert_eq!(
            route(&c, &table, None, |_| false, false),
            fwd(Some("gru.pop"), false, true)
        );
    }
}
