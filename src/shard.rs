//! Shards: one pinned glommio executor per core, each serving its own `SO_REUSEPORT` sockets.
//!
//! Startup binds every socket of every shard on the main thread first, so that a port already in
//! use or a bad address is reported once, as one line, before any executor starts (exit code 2).
//! Port 0 is resolved by the first bind; the other shards then bind the port it got. Each shard
//! then turns its sockets into glommio listeners and serves them: the TCP proxy (and one
//! listener per `--route`), DNS over UDP and TCP. Shard 0 is also the *API shard*: it owns the
//! [`Registry`], serves the registration API and runs the expiry sweeper and the health checker.
//!
//! A shard never blocks and never locks: it reads the registry through the [`SnapshotCell`].

use crate::config::Config;
use crate::registry::{Registry, SnapshotCell};
use crate::shutdown::until_drain;
use glommio::{LocalExecutorBuilder, Placement};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::cell::RefCell;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// glommio's own minimum memlock for one executor.
const MIN_MEMLOCK_PER_SHARD: u64 = 512 * 1024;
/// Registered io_uring buffer memory per shard: small, since we pass our own buffers.
const IO_MEMORY_PER_SHARD: usize = 512 * 1024;

/// What every task on a shard shares.
pub struct ShardCtx {
    /// This shard's index: 0 is the API shard.
    pub id: usize,
    pub shards: usize,
    pub cfg: Arc<Config>,
    pub cell: Arc<SnapshotCell>,
    /// Wall-clock start time of the process (Unix ms).
    pub started_unix_ms: u64,
    /// Every shard's counters; this shard writes only its own ([`ShardCtx::metrics`]).
    pub all_metrics: Arc<crate::metrics::Metrics>,
    /// Route listeners and TLS routes, replaced on SIGHUP ([`crate::live`]).
    pub live: Arc<crate::live::LiveCell>,
}

impl ShardCtx {
    /// This shard's counters.
    #[inline]
    pub fn metrics(&self) -> &crate::metrics::ShardMetrics {
        &self.all_metrics.shards[self.id]
    }
}

/// A startup failure: one line naming the cause and the fix. The process exits with code 2.
#[derive(Debug)]
pub struct StartError(pub String);

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The addresses the hub actually listens on (port 0 resolved).
#[derive(Debug)]
pub struct BoundAddrs {
    pub proxy: SocketAddr,
    pub routes: Vec<(SocketAddr, String)>,
    /// The route listeners with their sockets parked for the shards, and duplicates of those
    /// sockets for a successor (`--takeover`); taken by [`start`].
    live_routes: Vec<(
        crate::live::LiveRoute,
        Vec<(crate::handover::Describe, OwnedFd)>,
    )>,
    pub api: Option<SocketAddr>,
    pub dns: Option<SocketAddr>,
    /// The TLS listener (termination); `None` when TLS is off.
    pub tls: Option<SocketAddr>,
    /// The TLS passthrough listeners.
    pub tls_passthrough: Vec<SocketAddr>,
    /// Cluster gossip and sync (udp, API shard); `None` when replication is off.
    pub gossip: Option<SocketAddr>,
    pub sync: Option<SocketAddr>,
}

/// One shard's sockets, bound and listening, not yet handed to glommio.
#[derive(Default)]
struct ShardSockets {
    /// (listener, app it serves: `None` = every app)
    proxies: Vec<(Socket, Option<String>)>,
    dns_udp: Option<Socket>,
    dns_tcp: Option<Socket>,
    api: Option<Socket>,
    /// (listener, passthrough only)
    tls: Vec<(Socket, bool)>,
    /// Cluster gossip and sync sockets (shard 0 only).
    gossip: Option<Socket>,
    sync: Option<Socket>,
}

fn bind_error(what: &str, addr: SocketAddr, err: io::Error) -> StartError {
    let fix = match err.kind() {
        io::ErrorKind::AddrInUse => format!(
            ": another process holds it (see `ss -lntup | grep :{}`); stop it or choose another address",
            addr.port()
        ),
        io::ErrorKind::PermissionDenied => {
            " : ports below 1024 need root or CAP_NET_BIND_SERVICE".to_string()
        }
        io::ErrorKind::AddrNotAvailable => ": no local interface has that address".to_string(),
        _ => String::new(),
    };
    StartError(format!("cannot bind {what} on {addr}: {err}{fix}"))
}

fn tcp_listener(addr: SocketAddr, backlog: i32) -> io::Result<Socket> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    if addr.is_ipv6() {
        sock.set_only_v6(false).ok();
    }
    // Accepted sockets inherit TCP_NODELAY on Linux: small request/response traffic must not
    // wait for Nagle.
    sock.set_nodelay(true)?;
    // Non-blocking: the proxy and TLS listeners are accepted from with a plain `accept4`
    // when the shard's epoll set says they are ready (`crate::proxy::sock`); glommio's accept
    // (DNS over TCP, the API) then skips its per-accept O_NONBLOCK on/off round trip
    // (vendor/glommio/EDGEPROXY-PATCH.md).
    sock.set_nonblocking(true)?;
    sock.bind(&SockAddr::from(addr))?;
    sock.listen(backlog)?;
    Ok(sock)
}

fn udp_socket(addr: SocketAddr) -> io::Result<Socket> {
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    if addr.is_ipv6() {
        sock.set_only_v6(false).ok();
    }
    // A burst of queries must not overflow the receive queue; best effort (capped by rmem_max).
    sock.set_recv_buffer_size(4 << 20).ok();
    sock.bind(&SockAddr::from(addr))?;
    Ok(sock)
}

/// A UDP socket of the cluster: no SO_REUSEPORT, so a second hub on the same port is refused
/// at startup instead of silently sharing (and splitting) its datagrams.
fn udp_exclusive(addr: SocketAddr) -> io::Result<Socket> {
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        sock.set_only_v6(false).ok();
    }
    sock.set_recv_buffer_size(1 << 20).ok();
    sock.bind(&SockAddr::from(addr))?;
    Ok(sock)
}

fn local_addr(sock: &Socket) -> io::Result<SocketAddr> {
    sock.local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("not an IP socket"))
}

/// Binds `n` TCP listeners on `addr` (resolving port 0 with the first).
/// Sockets inherited from the previous process (`--takeover`), used instead of binding anew
/// when kind, address and shard match.
#[derive(Default)]
pub(crate) struct Binder {
    inherited: Vec<Option<crate::handover::Inherited>>,
}

impl Binder {
    /// The inherited socket of `kind` for `shard` on `addr` (port 0 matches any port).
    fn take(&mut self, kind: &str, addr: SocketAddr, shard: usize) -> Option<Socket> {
        let slot = self.inherited.iter_mut().find(|s| {
            s.as_ref().is_some_and(|s| {
                // Hubs before live routes described route sockets as `route:<app>`.
                let same_kind = s.what.kind == kind
                    || (kind == ROUTE_KIND && s.what.kind.starts_with("route:"));
                same_kind
                    && s.what.shard == shard
                    && s.what.addr.ip() == addr.ip()
                    && (addr.port() == 0 || s.what.addr.port() == addr.port())
            })
        })?;
        slot.take().map(|s| Socket::from(s.fd))
    }

    /// Inherited sockets nothing matched: closed (a smaller shard count, a changed address).
    fn leftovers(&mut self) -> Vec<crate::handover::Describe> {
        self.inherited.drain(..).flatten().map(|s| s.what).collect()
    }
}

/// Binds (or takes over) `n` listeners of one address. `congestion`: the forwarded listeners'
/// `--tcp-congestion`, set on taken-over listeners too (what they accept from now on).
fn bind_tcp_n(
    what: &str,
    kind: &str,
    addr: SocketAddr,
    n: usize,
    backlog: i32,
    congestion: Option<&str>,
    binder: &mut Binder,
) -> Result<(SocketAddr, Vec<Socket>), StartError> {
    let first = match binder.take(kind, addr, 0) {
        Some(sock) => sock,
        None => tcp_listener(addr, backlog).map_err(|e| bind_error(what, addr, e))?,
    };
    let bound = local_addr(&first).map_err(|e| bind_error(what, addr, e))?;
    let mut socks = vec![first];
    for i in 1..n {
        socks.push(match binder.take(kind, bound, i) {
            Some(sock) => sock,
            None => tcp_listener(bound, backlog).map_err(|e| bind_error(what, bound, e))?,
        });
    }
    if let Some(name) = congestion {
        for sock in &socks {
            // Accepted sockets inherit a listener's congestion control.
            crate::sys::set_tcp_congestion(std::os::fd::AsRawFd::as_raw_fd(sock), name)
                .map_err(|e| crate::sys::explain_congestion_error(name, e))
                .map_err(|e| StartError(format!("--tcp-congestion on {what} ({bound}): {e}")))?;
        }
    }
    Ok((bound, socks))
}

/// Binds one TCP route listener per shard on the proxy's host address (a socket inherited
/// from `--takeover` when one matches), parked for the shards, with duplicates for a successor.
pub(crate) fn bind_route(
    cfg: &Config,
    route: &crate::config::Route,
    binder: &mut Binder,
) -> Result<
    (
        crate::live::RouteListener,
        Vec<(crate::handover::Describe, OwnedFd)>,
    ),
    StartError,
> {
    let addr = SocketAddr::new(cfg.listen_addr.ip(), route.port);
    let what = format!("the TCP route for {}", route.app);
    let (bound, socks) = bind_tcp_n(
        &what,
        ROUTE_KIND,
        addr,
        cfg.shards,
        cfg.backlog,
        cfg.tcp_congestion.as_deref(),
        binder,
    )?;
    let mut dups = Vec::new();
    for (shard, sock) in socks.iter().enumerate() {
        if let Ok(dup) = sock.try_clone() {
            let what = crate::handover::Describe {
                kind: ROUTE_KIND.into(),
                addr: bound,
                shard,
            };
            dups.push((what, OwnedFd::from(dup)));
        }
    }
    Ok((
        crate::live::RouteListener::new(route.port, bound, socks),
        dups,
    ))
}

/// The handover kind of TCP route listeners (which app they serve is configuration, not part
/// of the socket: a successor whose route on that port serves another app takes it too).
const ROUTE_KIND: &str = "route";

/// Binds DNS on UDP and TCP, the same port for both, `n` of each.
fn bind_dns(
    addr: SocketAddr,
    n: usize,
    backlog: i32,
    binder: &mut Binder,
) -> Result<(SocketAddr, Vec<Socket>, Vec<Socket>), StartError> {
    if let Some(first) = binder.take("dns-udp", addr, 0) {
        let bound = local_addr(&first).map_err(|e| bind_error("DNS (udp)", addr, e))?;
        let mut udp = vec![first];
        let mut tcp = Vec::with_capacity(n);
        for i in 0..n {
            if i > 0 {
                udp.push(match binder.take("dns-udp", bound, i) {
                    Some(s) => s,
                    None => udp_socket(bound).map_err(|e| bind_error("DNS (udp)", bound, e))?,
                });
            }
            tcp.push(match binder.take("dns-tcp", bound, i) {
                Some(s) => s,
                None => {
                    tcp_listener(bound, backlog).map_err(|e| bind_error("DNS (tcp)", bound, e))?
                }
            });
        }
        return Ok((bound, udp, tcp));
    }
    // With port 0 the UDP port the kernel picks may be taken on TCP: try a few.
    let attempts = if addr.port() == 0 { 16 } else { 1 };
    let mut last_err = None;
    for _ in 0..attempts {
        let first = udp_socket(addr).map_err(|e| bind_error("DNS (udp)", addr, e))?;
        let bound = local_addr(&first).map_err(|e| bind_error("DNS (udp)", addr, e))?;
        match tcp_listener(bound, backlog) {
            Ok(tcp0) => {
                let mut udp = vec![first];
                let mut tcp = vec![tcp0];
                for _ in 1..n {
                    udp.push(udp_socket(bound).map_err(|e| bind_error("DNS (udp)", bound, e))?);
                    tcp.push(
                        tcp_listener(bound, backlog)
                            .map_err(|e| bind_error("DNS (tcp)", bound, e))?,
                    );
                }
                return Ok((bound, udp, tcp));
            }
            Err(e) => last_err = Some(bind_error("DNS (tcp)", bound, e)),
        }
    }
    Err(last_err.expect("at least one attempt"))
}

/// Binds every listener of every shard.
fn bind_all(
    cfg: &Config,
    binder: &mut Binder,
) -> Result<(BoundAddrs, Vec<ShardSockets>), StartError> {
    let n = cfg.shards;
    let mut shards: Vec<ShardSockets> = (0..n).map(|_| ShardSockets::default()).collect();

    let (proxy, socks) = bind_tcp_n(
        "the TCP proxy",
        "proxy",
        cfg.listen_addr,
        n,
        cfg.backlog,
        cfg.tcp_congestion.as_deref(),
        binder,
    )?;
    for (s, sock) in shards.iter_mut().zip(socks) {
        s.proxies.push((sock, None));
    }
    let mut routes = Vec::new();
    let mut live_routes = Vec::new();
    for route in &cfg.routes {
        let (listener, dups) = bind_route(cfg, route, binder)?;
        routes.push((listener.addr, route.app.clone()));
        live_routes.push((
            crate::live::LiveRoute {
                listener: Arc::new(listener),
                app: route.app.clone(),
            },
            dups,
        ));
    }
    let dns = match cfg.dns_listen_addr {
        Some(addr) => {
            let (bound, udp, tcp) = bind_dns(addr, n, cfg.backlog, binder)?;
            for ((s, u), t) in shards.iter_mut().zip(udp).zip(tcp) {
                s.dns_udp = Some(u);
                s.dns_tcp = Some(t);
            }
            Some(bound)
        }
        None => None,
    };
    let mut tls = None;
    let mut tls_passthrough = Vec::new();
    if let Some(addr) = cfg.tls.listen_addr {
        let (bound, socks) = bind_tcp_n(
            "TLS",
            "tls",
            addr,
            n,
            cfg.backlog,
            cfg.tcp_congestion.as_deref(),
            binder,
        )?;
        for (s, sock) in shards.iter_mut().zip(socks) {
            s.tls.push((sock, false));
        }
        tls = Some(bound);
        for &port in &cfg.tls.passthrough_ports {
            let addr = SocketAddr::new(addr.ip(), port);
            let (bound, socks) = bind_tcp_n(
                "TLS passthrough",
                "tls-passthrough",
                addr,
                n,
                cfg.backlog,
                cfg.tcp_congestion.as_deref(),
                binder,
            )?;
            for (s, sock) in shards.iter_mut().zip(socks) {
                s.tls.push((sock, true));
            }
            tls_passthrough.push(bound);
        }
    }
    let (mut gossip, mut sync) = (None, None);
    if let Some(c) = &cfg.cluster {
        let mut bind = |what: &str, kind: &str, addr: SocketAddr| {
            let sock = match binder.take(kind, addr, 0) {
                Some(sock) => sock,
                None => udp_exclusive(addr).map_err(|e| bind_error(what, addr, e))?,
            };
            let bound = local_addr(&sock).map_err(|e| bind_error(what, addr, e))?;
            Ok::<_, StartError>((bound, sock))
        };
        let (g, gs) = bind("cluster gossip (udp)", "gossip", c.gossip_addr)?;
        let (y, ys) = bind("cluster sync (udp)", "sync", c.sync_addr)?;
        shards[0].gossip = Some(gs);
        shards[0].sync = Some(ys);
        gossip = Some(g);
        sync = Some(y);
    }
    let api = match cfg.api_listen_addr {
        Some(addr) => {
            let (bound, mut socks) = bind_tcp_n("the API", "api", addr, 1, 1024, None, binder)?;
            shards[0].api = socks.pop();
            Some(bound)
        }
        None => None,
    };
    Ok((
        BoundAddrs {
            proxy,
            routes,
            live_routes,
            api,
            dns,
            tls,
            tls_passthrough,
            gossip,
            sync,
        },
        shards,
    ))
}

fn check_memlock(shards: usize) -> Result<(), StartError> {
    let limit = crate::sys::memlock_limit()
        .map_err(|e| StartError(format!("cannot read the memlock limit: {e}")))?;
    let needed = MIN_MEMLOCK_PER_SHARD;
    if limit < needed {
        return Err(StartError(format!(
            "the memlock limit is {} KiB; io_uring needs at least {} KiB per process ({} shards): \
             raise it (`ulimit -l {}`, LimitMEMLOCK= in the systemd unit, or memlock in /etc/security/limits.conf)",
            limit / 1024,
            needed / 1024,
            shards,
            (needed * shards as u64 * 2) / 1024
        )));
    }
    Ok(())
}

/// A running hub: its addresses, and the handles to wait for its shards.
pub struct Hub {
    pub addrs: BoundAddrs,
    pub cell: Arc<SnapshotCell>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Certificates and ticket key: what SIGHUP reloads. `None` when TLS is off.
    pub tls: Option<Arc<crate::tls::TlsShared>>,
    /// Route listeners and TLS routes: what SIGHUP re-reads from the config file (taken by
    /// the thread that waits for signals).
    pub live: Option<LiveReloader>,
    handles: Vec<glommio::ExecutorJoinHandle<()>>,
}

impl Hub {
    /// Waits until every shard has stopped.
    pub fn join(self) -> Result<(), StartError> {
        let mut result = Ok(());
        for h in self.handles {
            if let Err(e) = h.join() {
                result = Err(StartError(format!("a shard failed: {e}")));
            }
        }
        result
    }
}

/// Applies new live settings ([`crate::live`]) from the main thread, never from a shard.
pub struct LiveReloader {
    cfg: Arc<Config>,
    cell: Arc<crate::live::LiveCell>,
    /// The live settings as the process started (what a file without them falls back to).
    startup: crate::live::Wanted,
}

impl LiveReloader {
    pub fn startup(&self) -> &crate::live::Wanted {
        &self.startup
    }

    /// The proxy's configured port (routes may not reuse it).
    pub fn proxy_port(&self) -> u16 {
        self.cfg.listen_addr.port()
    }

    /// Makes `wanted` the live settings: binds added routes (one that cannot bind is logged
    /// and left out; the others apply), retires removed ones, re-points changed ones, and
    /// swaps the TLS routes. Returns one line per change, for the log.
    pub fn apply(&self, wanted: crate::live::Wanted) -> Vec<String> {
        use crate::live::{diff, Live, LiveRoute};
        let current = self.cell.load_full();
        let d = diff(&current.routes, &wanted.routes);
        let mut changes = Vec::new();
        let mut routes: Vec<LiveRoute> = Vec::new();
        for r in &current.routes {
            if d.remove.contains(&r.listener.id) {
                changes.push(format!(
                    "tcp route {} (app {}) removed; its open connections run on",
                    r.listener.addr, r.app
                ));
                crate::handover::forget(r.listener.addr);
                continue;
            }
            let mut r = r.clone();
            if let Some((_, app)) = d.change.iter().find(|(id, _)| *id == r.listener.id) {
                changes.push(format!(
                    "tcp route {} now serves app {app} (was {})",
                    r.listener.addr, r.app
                ));
                r.app = app.clone();
            }
            routes.push(r);
        }
        for route in &d.add {
            match bind_route(&self.cfg, route, &mut Binder::default()) {
                Ok((listener, dups)) => {
                    changes.push(format!(
                        "tcp route listening on {} (app {}), {} shards",
                        listener.addr, route.app, self.cfg.shards
                    ));
                    crate::handover::offer(dups);
                    routes.push(LiveRoute {
                        listener: Arc::new(listener),
                        app: route.app.clone(),
                    });
                }
                Err(e) => log::error!("reload: {e}; the other changes apply"),
            }
        }
        if wanted.tls != current.tls {
            changes.push(format!(
                "tls routes: {} (default app {})",
                wanted
                    .tls
                    .routes
                    .iter()
                    .map(|r| format!("{}={}", r.name, r.app))
                    .collect::<Vec<_>>()
                    .join(","),
                wanted.tls.default_app.as_deref().unwrap_or("none")
            ));
        }
        if wanted.health != current.health {
            let (c, e) = (&wanted.health.check, &wanted.health.ejection);
            changes.push(format!(
                "health checks: {} every {} ms (timeout {} ms, rise {}, fall {}, path {}, {} at once); \
                 ejection after {} failed connects in {} ms for {}..{} ms",
                c.kind.as_str(),
                c.interval_ms,
                c.timeout_ms,
                c.rise,
                c.fall,
                c.path,
                wanted.health.concurrency,
                e.failures,
                e.window_ms,
                e.backoff_ms,
                e.backoff_max_ms
            ));
        }
        if !changes.is_empty() {
            self.cell.store(Live {
                generation: current.generation + 1,
                routes,
                tls: wanted.tls,
                health: wanted.health,
            });
        }
        changes
    }
}

/// Binds every socket, starts every shard, and returns once every shard is serving.
pub fn start(cfg: Config) -> Result<Hub, StartError> {
    crate::clock::init();
    check_memlock(cfg.shards)?;
    match crate::sys::raise_nofile_limit() {
        Ok(n) if n < 65_536 => log::warn!(
            "the open-files limit is {n}: each forwarded connection needs 2 (more when splicing); raise LimitNOFILE"
        ),
        Ok(_) => {}
        Err(e) => log::warn!("cannot raise the open-files limit: {e}"),
    }
    // Certificates before any socket: a bad file is one line naming it, exit code 2.
    let tls = match cfg.tls.listen_addr {
        Some(_) => Some(crate::tls::TlsShared::new(&cfg).map_err(|e| StartError(e.0))?),
        None => None,
    };
    let mut binder = Binder::default();
    if cfg.takeover {
        let Some(dir) = &cfg.state_dir else {
            return Err(StartError(
                "--takeover needs persistence: the running hub is found through its --state-dir"
                    .into(),
            ));
        };
        match crate::handover::take(dir) {
            Ok(Some(socks)) => {
                log::info!(
                    "takeover: received {} listening sockets from the hub running on {}",
                    socks.len(),
                    dir.display()
                );
                binder.inherited = socks.into_iter().map(Some).collect();
            }
            Ok(None) => log::info!(
                "takeover: no hub is running on {}; starting fresh",
                dir.display()
            ),
            Err(e) => {
                return Err(StartError(format!(
                    "takeover from the hub running on {} failed: {e}",
                    dir.display()
                )))
            }
        }
    }
    let (mut addrs, sockets) = bind_all(&cfg, &mut binder)?;
    for d in binder.leftovers() {
        log::warn!(
            "takeover: closing the inherited {} socket {} of shard {}: this hub has no use for it (connections queued on it are lost)",
            d.kind,
            d.addr,
            d.shard
        );
    }
    let mut handover_fds = describe(&sockets);
    let mut routes = Vec::new();
    for (route, dups) in std::mem::take(&mut addrs.live_routes) {
        routes.push(route);
        handover_fds.extend(dups);
    }
    let startup = crate::live::Wanted {
        routes: cfg.routes.clone(),
        tls: crate::live::TlsRoutes {
            routes: cfg.tls.routes.clone(),
            default_app: cfg.tls.default_app.clone(),
        },
        health: crate::live::HealthSettings::of(&cfg),
    };
    let live = Arc::new(crate::live::LiveCell::new(crate::live::Live {
        generation: 0,
        routes,
        tls: startup.tls.clone(),
        health: startup.health.clone(),
    }));
    let cluster = match (&cfg.cluster, addrs.gossip, addrs.sync) {
        (Some(c), Some(gossip), Some(sync)) => Some(cluster_start(c, gossip, sync)?),
        _ => None,
    };
    let cfg = Arc::new(cfg);
    let mut cluster = cluster;
    let cell = Arc::new(SnapshotCell::new());
    // The registry is built (and restored from disk) before any shard runs, so no shard ever
    // answers from an empty snapshot after a restart; it then moves to the API shard.
    let mut registry = Registry::new(
        cfg.shards,
        cfg.heartbeat_ttl_secs,
        cfg.expiry_grace_secs,
        cell.clone(),
    );
    let mut recovered = match &cfg.state_dir {
        Some(dir) => {
            // A hub handing over to us releases the directory once its registry is flushed.
            let wait = if cfg.takeover {
                Duration::from_secs(60)
            } else {
                Duration::ZERO
            };
            let mut r = crate::store::recover(dir, wait).map_err(|e| StartError(e.0))?;
            if let Some((bytes, why)) = &r.discarded {
                log::warn!(
                    "state: cut {bytes} bytes from the end of the registry log ({why}); kept every record before it"
                );
            }
            log::info!(
                "state: restored {} backends from {}",
                r.backends.len(),
                dir.display()
            );
            if let Some(c) = cluster.as_mut() {
                c.restored = r.backends.values().cloned().collect();
            }
            registry.restore(
                std::mem::take(&mut r.backends).into_values(),
                crate::clock::now_ms(),
            );
            registry.enable_journal();
            Some(r)
        }
        None => {
            log::info!("state: persistence is off; the registry lives in memory only");
            None
        }
    };
    if cluster.is_some() {
        // Replication reads local changes from the journal, persisted or not.
        registry.enable_journal();
    }
    registry.publish();
    let mut registry = Some(registry);
    let started_unix_ms = crate::clock::unix_ms();
    let all_metrics = Arc::new(crate::metrics::Metrics::new(cfg.shards));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<usize, String>>();
    let mut handles = Vec::with_capacity(cfg.shards);
    for (id, socks) in sockets.into_iter().enumerate() {
        let ctx = ShardCtx {
            id,
            shards: cfg.shards,
            cfg: cfg.clone(),
            cell: cell.clone(),
            started_unix_ms,
            all_metrics: all_metrics.clone(),
            live: live.clone(),
        };
        let control = (id == 0).then(|| {
            (
                registry.take().expect("one API shard"),
                recovered.take(),
                cluster.take(),
            )
        });
        let ready = ready_tx.clone();
        let tls = tls.clone();
        glommio::set_coop_taskrun(cfg.io_uring_coop_taskrun);
        let builder = LocalExecutorBuilder::new(Placement::Fixed(cfg.cpus[id]))
            .name(&format!("shard-{id}"))
            .io_memory(IO_MEMORY_PER_SHARD)
            .preempt_timer(Duration::from_millis(10));
        let handle = builder
            .spawn(move || async move { run_shard(ctx, socks, tls, control, ready).await })
            .map_err(|e| StartError(format!("cannot start shard {id}: {e}")))?;
        handles.push(handle);
    }
    drop(ready_tx);
    for _ in 0..cfg.shards {
        match ready_rx.recv() {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(StartError(e)),
            Err(_) => return Err(StartError("a shard stopped during startup".into())),
        }
    }
    // Every shard serves: from now on a successor may take our sockets over.
    if let Some(dir) = &cfg.state_dir {
        if let Err(e) = crate::handover::serve(dir, handover_fds) {
            log::warn!(
                "cannot offer takeover on {}: {e}; restarts will not be seamless",
                dir.display()
            );
        }
    }
    Ok(Hub {
        addrs,
        cell,
        metrics: all_metrics,
        tls,
        live: Some(LiveReloader {
            cfg,
            cell: live,
            startup,
        }),
        handles,
    })
}

/// What the API shard needs to run the cluster, prepared on the main thread (where blocking
/// is allowed: the advertised address may need a route lookup or name resolution).
pub struct ClusterStart {
    me: crate::cluster::membership::Node,
    gossip_bound: SocketAddr,
    sync_bound: SocketAddr,
    peers: Arc<arc_swap::ArcSwap<Vec<SocketAddr>>>,
    seed: u64,
    /// The backends restored from disk, with their replication versions, for the replica.
    restored: Vec<crate::store::StoredBackend>,
}

fn cluster_start(
    c: &crate::cluster::ClusterConfig,
    gossip_bound: SocketAddr,
    sync_bound: SocketAddr,
) -> Result<ClusterStart, StartError> {
    let ip = crate::cluster::advertise_ip(c, gossip_bound).map_err(StartError)?;
    let me = crate::cluster::membership::Node {
        id: c.node_id.clone(),
        gossip: SocketAddr::new(ip, gossip_bound.port()),
        sync: SocketAddr::new(ip, sync_bound.port()),
        boot: crate::clock::unix_ms(),
        bump: 0,
    };
    log::info!(
        "cluster: node {} of cluster {} advertises gossip {} and sync {} ({} bootstrap peers, {} key(s))",
        me.id,
        c.cluster_name,
        me.gossip,
        me.sync,
        c.bootstrap_peers.len(),
        c.keys.len()
    );
    let mut seed = [0u8; 8];
    aws_lc_rs::rand::SecureRandom::fill(&aws_lc_rs::rand::SystemRandom::new(), &mut seed)
        .map_err(|_| StartError("cannot read random bytes for gossip".into()))?;
    let retry = c
        .foca_config()
        .probe_period
        .clamp(Duration::from_millis(50), Duration::from_secs(2));
    Ok(ClusterStart {
        peers: crate::cluster::driver::spawn_resolver(c.bootstrap_peers.clone(), retry),
        me,
        gossip_bound,
        sync_bound,
        seed: u64::from_le_bytes(seed),
        restored: Vec::new(),
    })
}

/// A duplicate of every listening socket with what it is, kept for a successor (`--takeover`).
fn describe(shards: &[ShardSockets]) -> Vec<(crate::handover::Describe, std::os::fd::OwnedFd)> {
    let mut out = Vec::new();
    let mut add = |kind: String, sock: &Socket, shard: usize| {
        if let (Ok(addr), Ok(dup)) = (local_addr(sock), sock.try_clone()) {
            out.push((
                crate::handover::Describe { kind, addr, shard },
                std::os::fd::OwnedFd::from(dup),
            ));
        }
    };
    for (i, s) in shards.iter().enumerate() {
        for (sock, app) in &s.proxies {
            let kind = match app {
                Some(_) => ROUTE_KIND.into(),
                None => "proxy".into(),
            };
            add(kind, sock, i);
        }
        if let Some(sock) = &s.dns_udp {
            add("dns-udp".into(), sock, i);
        }
        if let Some(sock) = &s.dns_tcp {
            add("dns-tcp".into(), sock, i);
        }
        if let Some(sock) = &s.api {
            add("api".into(), sock, i);
        }
        if let Some(sock) = &s.gossip {
            add("gossip".into(), sock, i);
        }
        if let Some(sock) = &s.sync {
            add("sync".into(), sock, i);
        }
        for (sock, passthrough) in &s.tls {
            let kind = if *passthrough {
                "tls-passthrough"
            } else {
                "tls"
            };
            add(kind.into(), sock, i);
        }
    }
    out
}

/// Converts a bound socket into a glommio listener on the current executor.
fn glommio_tcp(sock: Socket) -> glommio::net::TcpListener {
    // SAFETY: the fd comes from `into_raw_fd`, so it is open, a listening TCP socket, and owned
    // by nobody else; the listener takes ownership and closes it on drop.
    unsafe { glommio::net::TcpListener::from_raw_fd(sock.into_raw_fd()) }
}

fn glommio_udp(sock: Socket) -> glommio::net::UdpSocket {
    // SAFETY: as above, a bound UDP socket whose ownership moves into the glommio socket.
    unsafe { glommio::net::UdpSocket::from_raw_fd(sock.into_raw_fd()) }
}

async fn run_shard(
    ctx: ShardCtx,
    socks: ShardSockets,
    tls: Option<Arc<crate::tls::TlsShared>>,
    control: Option<(
        Registry,
        Option<crate::store::Recovered>,
        Option<ClusterStart>,
    )>,
    ready: std::sync::mpsc::Sender<Result<usize, String>>,
) {
    let ctx = Rc::new(ctx);
    let mut tasks = Vec::new();
    for (sock, app) in socks.proxies {
        let listener = sock;
        let serves = match app {
            Some(app) => crate::proxy::Serves::App(Rc::from(app)),
            None => crate::proxy::Serves::Every,
        };
        // Accept loops end when draining starts: dropping them closes the listeners, while
        // the connections they spawned run on to their end.
        tasks.push(glommio::spawn_local(until_drain(crate::proxy::serve(
            ctx.clone(),
            listener,
            serves,
        ))));
    }
    // Route listeners: those of startup now, those a reload adds when the watcher sees them.
    start_routes(&ctx);
    tasks.push(glommio::spawn_local(watch_routes(ctx.clone())));
    let tls_for_api = tls.clone();
    if let Some(shared) = tls {
        let shard_tls = match crate::tls::ShardTls::new(&shared, &ctx.cfg) {
            Ok(t) => t,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        for (sock, passthrough) in socks.tls {
            tasks.push(glommio::spawn_local(until_drain(crate::tls::serve(
                ctx.clone(),
                shard_tls.clone(),
                sock,
                passthrough,
            ))));
        }
    }
    if let Some(sock) = socks.dns_udp {
        // DNS over UDP keeps answering while draining, until a successor that took the same
        // sockets over reads them instead.
        tasks.push(glommio::spawn_local(crate::dns::serve_udp(
            ctx.clone(),
            glommio_udp(sock),
        )));
    }
    if let Some(sock) = socks.dns_tcp {
        tasks.push(glommio::spawn_local(until_drain(crate::dns::serve_tcp(
            ctx.clone(),
            glommio_tcp(sock),
        ))));
    }
    if let Some((registry, mut recovered, cluster_start)) = control {
        let store = match recovered {
            Some(_) => match crate::store::Store::open(&mut recovered).await {
                Ok(store) => Some(store),
                Err(e) => {
                    let _ = ready.send(Err(format!("cannot open the registry log: {e}")));
                    return;
                }
            },
            None => None,
        };
        let cluster = match (&ctx.cfg.cluster, &cluster_start) {
            (Some(c), Some(start)) => Some(Rc::new(crate::cluster::ClusterState::new(
                c,
                start.me.clone(),
                start.gossip_bound,
                start.sync_bound,
                start.seed,
            ))),
            _ => None,
        };
        let control = Rc::new(crate::api::Control {
            registry: RefCell::new(registry),
            store,
            auth: ctx.cfg.api_auth.clone(),
            stats: Default::default(),
            tls: tls_for_api,
            health: Default::default(),
            cluster: cluster.clone(),
        });
        // Health checks get their own queue with a smaller share: thousands of checks in
        // flight never delay a registration, and passive ejection still runs every 10 ms.
        let health_queue = glommio::executor().create_task_queue(
            glommio::Shares::Static(250),
            glommio::Latency::Matters(Duration::from_millis(10)),
            "health",
        );
        match glommio::spawn_local_into(
            crate::health::check::run(ctx.clone(), control.clone()),
            health_queue,
        ) {
            Ok(task) => {
                task.detach();
            }
            Err(e) => {
                let _ = ready.send(Err(format!("cannot start health checks on shard 0: {e}")));
                return;
            }
        }
        if let (Some(state), Some(start), Some(c)) = (&cluster, &cluster_start, &ctx.cfg.cluster) {
            let now = crate::clock::now_ms();
            let wall_offset = crate::clock::unix_ms() as i64 - now as i64;
            let replica_cfg = crate::cluster::replicate::Config {
                max_payload: crate::cluster::sync::MAX_PAYLOAD,
                anti_entropy_ms: c.anti_entropy.as_millis() as u64,
                tombstone_horizon_ms: c.tombstone_horizon.as_millis() as u64,
                ..Default::default()
            };
            let hub = crate::cluster::replicate::hub::Replication::new(
                &c.node_id,
                now,
                wall_offset,
                &start.restored,
                replica_cfg,
            );
            let _ = state
                .replication
                .set(Rc::new(crate::cluster::sync::Replicating::new(hub)));
        }
        if let (Some(state), Some(start), Some(c), Some(gossip), Some(sync)) = (
            cluster,
            cluster_start,
            &ctx.cfg.cluster,
            socks.gossip,
            socks.sync,
        ) {
            // Gossip gets its own task queue with fewer shares than the API's, so a burst of
            // cluster datagrams never delays a registration (and the other way round).
            let queue = glommio::executor().create_task_queue(
                glommio::Shares::Static(250),
                glommio::Latency::Matters(Duration::from_millis(10)),
                "cluster",
            );
            let sync_ctx = crate::cluster::sync::SyncCtx {
                socket: Rc::new(glommio_udp(sync)),
                keys: RefCell::new(crate::cluster::ClusterState::keyring(c, &start.me)),
                state: state.clone(),
                control: control.clone(),
            };
            let run =
                crate::cluster::driver::run(state, glommio_udp(gossip), sync_ctx, start.peers);
            match glommio::spawn_local_into(run, queue) {
                Ok(task) => tasks.push(task),
                Err(e) => {
                    let _ = ready.send(Err(format!("cannot start the cluster on shard 0: {e}")));
                    return;
                }
            }
        }
        // The control plane runs in its own task queue with equal shares and a latency
        // bound, so a flood of data-plane work on this shard cannot starve registrations (nor
        // the other way round). Tasks it spawns (API connections) inherit the queue.
        let api_queue = glommio::executor().create_task_queue(
            glommio::Shares::Static(1000),
            glommio::Latency::Matters(Duration::from_millis(2)),
            "api",
        );
        let api_listener = socks.api;
        let control_ctx = ctx.clone();
        let control = async move {
            let sweeper =
                glommio::spawn_local(crate::api::sweeper(control_ctx.clone(), control.clone()));
            let flusher = glommio::spawn_local(crate::api::flush_on_drain(control.clone()));
            if let Some(listener) = api_listener {
                until_drain(crate::api::serve(control_ctx, listener, control)).await;
            }
            flusher.await;
            sweeper.await;
        };
        match glommio::spawn_local_into(control, api_queue) {
            Ok(task) => tasks.push(task),
            Err(e) => {
                let _ = ready.send(Err(format!("cannot start the API on shard 0: {e}")));
                return;
            }
        }
    }
    let _ = ready.send(Ok(ctx.id));
    drop(ready);
    for t in tasks {
        t.await;
    }
}

/// Starts the accept loops of every route listener whose socket for this shard is parked.
fn start_routes(ctx: &Rc<ShardCtx>) {
    let live = ctx.live.load();
    for r in &live.routes {
        if let Some(sock) = r.listener.take(ctx.id) {
            let id = r.listener.id;
            let ctx = ctx.clone();
            glommio::spawn_local(until_drain(serve_route(ctx, sock, id))).detach();
        }
    }
}

/// Looks for route listeners added by a reload until draining starts.
async fn watch_routes(ctx: Rc<ShardCtx>) {
    let mut seen = ctx.live.load().generation;
    while !crate::shutdown::draining() {
        glommio::timer::sleep(crate::shutdown::POLL).await;
        let generation = ctx.live.load().generation;
        if generation != seen {
            seen = generation;
            start_routes(&ctx);
        }
    }
}

/// One route listener's accept loop, until a reload removes the route (which closes the
/// listener; forwarded connections run on).
async fn serve_route(ctx: Rc<ShardCtx>, listener: Socket, id: u64) {
    let removed = {
        let ctx = ctx.clone();
        async move {
            loop {
                glommio::timer::sleep(crate::shutdown::POLL).await;
                if ctx.live.load().app_of(id).is_none() {
                    return;
                }
            }
        }
    };
    futures_lite::future::or(
        crate::proxy::serve(ctx, listener, crate::proxy::Serves::Route(id)),
        removed,
    )
    .await
}

/// Logs one line per listener.
pub fn log_listeners(cfg: &Config, addrs: &BoundAddrs) {
    let n = cfg.shards;
    log::info!(
        "tcp proxy listening on {} (every app), {n} shards",
        addrs.proxy
    );
    for (addr, app) in &addrs.routes {
        log::info!("tcp route listening on {addr} (app {app}), {n} shards");
    }
    if let Some(dns) = addrs.dns {
        log::info!(
            "dns listening on {dns} udp+tcp (zone {}), {n} shards",
            cfg.dns_zone
        );
    }
    if let Some(tls) = addrs.tls {
        log::info!("tls listening on {tls} (termination, SNI routing), {n} shards");
    }
    for addr in &addrs.tls_passthrough {
        log::info!("tls passthrough listening on {addr}, {n} shards");
    }
    if let Some(api) = addrs.api {
        log::info!("api listening on {api}, api shard 0");
    }
}
