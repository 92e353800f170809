//! Scenarios. [`prepare`] turns a command into a [`Prepared`] plan on the main thread (files
//! read, TLS configured, sink sockets bound: every error reported before any load starts);
//! [`run_shard`] then runs that plan's workers on one shard until the run's end.
//!
//! Every worker is the same loop: take the next intended start time from the shard
//! ([`ShardCtx::next`]), do one operation on its connection or socket, record it. A worker owns
//! its connection; nothing is shared between workers but the shard's recorder.

pub mod api;
pub mod dns;
pub mod rr_epoll;
pub mod tcp;
pub mod tls;

use crate::cli::Command;
use crate::run::{ShardCtx, Watch};
use crate::stats::ErrorKind;
use glommio::net::TcpStream;
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// A scenario, ready to run on every shard.
pub enum Prepared {
    TcpBulk(tcp::BulkPlan),
    TcpRr(tcp::RrPlan),
    Dns(dns::DnsPlan),
    ApiRegister(api::RegisterPlan),
    PublishLatency(api::PublishPlan),
    Tls(tls::TlsPlan),
}

impl Prepared {
    pub fn target(&self) -> Option<SocketAddr> {
        Some(match self {
            Prepared::TcpBulk(p) => p.target,
            Prepared::TcpRr(p) => p.target,
            Prepared::Dns(p) => p.target,
            Prepared::ApiRegister(p) => p.target,
            Prepared::PublishLatency(p) => p.api,
            Prepared::Tls(p) => p.target,
        })
    }

    pub fn params(&self) -> serde_json::Value {
        match self {
            Prepared::TcpBulk(p) => p.params(),
            Prepared::TcpRr(p) => p.params(),
            Prepared::Dns(p) => p.params(),
            Prepared::ApiRegister(p) => p.params(),
            Prepared::PublishLatency(p) => p.params(),
            Prepared::Tls(p) => p.params(),
        }
    }

    /// What one latency sample measures.
    pub fn latency_of(&self) -> &'static str {
        match self {
            Prepared::TcpBulk(_) => "one write",
            Prepared::TcpRr(p) if p.new_connection => "connect + request + response",
            Prepared::TcpRr(_) => "request to response",
            Prepared::Dns(_) => "query to answer",
            Prepared::ApiRegister(_) => "request to response",
            Prepared::PublishLatency(_) => "registration ack to answered on every port",
            Prepared::Tls(p) if p.bulk => "one write",
            Prepared::Tls(_) => "connect + full handshake",
        }
    }
}

/// Reads files, builds configurations and binds sockets for `cmd`.
pub fn prepare(cmd: &Command) -> Result<Prepared, String> {
    let load = cmd.load().expect("client scenario");
    let target = || {
        load.target
            .ok_or_else(|| format!("{} needs --target HOST:PORT", cmd.name()))
    };
    Ok(match cmd {
        Command::TcpBulk(c) => Prepared::TcpBulk(tcp::BulkPlan::new(c)?),
        Command::TcpRr(c) => Prepared::TcpRr(tcp::RrPlan::new(c, target()?, false)),
        Command::TcpConnect(c) => Prepared::TcpRr(tcp::RrPlan::new(c, target()?, true)),
        Command::Dns(c) => Prepared::Dns(dns::DnsPlan::new(c, target()?)?),
        Command::ApiRegister(c) => Prepared::ApiRegister(api::RegisterPlan::new(c, target()?)?),
        Command::PublishLatency(c) => {
            Prepared::PublishLatency(api::PublishPlan::new(c, target()?)?)
        }
        Command::TlsHandshake(c) => Prepared::Tls(tls::TlsPlan::new(c, target()?, false)?),
        Command::TlsBulk(c) => Prepared::Tls(tls::TlsPlan::new(c, target()?, true)?),
        Command::Echo(_) => unreachable!("echo is a server"),
    })
}

/// Runs on each shard before the clock starts (servers the scenario brings along).
pub fn before_start(plan: &Prepared, ctx: &Rc<ShardCtx>) {
    if let Prepared::TcpBulk(p) = plan {
        p.start_sink(ctx);
    }
}

/// Runs the plan's workers on this shard until the run ends.
pub async fn run_shard(plan: Arc<Prepared>, ctx: Rc<ShardCtx>) {
    match &*plan {
        Prepared::Dns(p) if !p.tcp => return dns::run_udp(plan.clone(), ctx).await,
        Prepared::TcpRr(p) if p.epoll => return rr_epoll::run(&ctx, p).await,
        _ => {}
    }
    let mut tasks = Vec::with_capacity(ctx.workers);
    for worker in 0..ctx.workers {
        let (plan, ctx) = (plan.clone(), ctx.clone());
        tasks.push(glommio::spawn_local(async move {
            match &*plan {
                Prepared::TcpBulk(p) => tcp::bulk_worker(&ctx, p).await,
                Prepared::TcpRr(p) => tcp::rr_worker(&ctx, p).await,
                Prepared::Dns(p) => dns::tcp_worker(&ctx, p, worker).await,
                Prepared::ApiRegister(p) => api::register_worker(&ctx, p, worker).await,
                Prepared::PublishLatency(p) => api::publish_worker(&ctx, p, worker).await,
                Prepared::Tls(p) => tls::worker(&ctx, p).await,
            }
        }));
    }
    for t in tasks {
        t.await;
    }
}

/// A short, stable name for an I/O failure.
pub fn io_kind(e: io::Error) -> ErrorKind {
    match e.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => "timeout",
        io::ErrorKind::ConnectionRefused => "refused",
        io::ErrorKind::ConnectionReset => "reset",
        io::ErrorKind::BrokenPipe => "broken-pipe",
        io::ErrorKind::UnexpectedEof => "closed",
        io::ErrorKind::AddrNotAvailable => "no-local-port",
        _ => "io",
    }
}

/// Connects within `--timeout`, TCP_NODELAY set. Reads and writes are bounded by the worker's
/// [`Watch`] (see [`watched`]), not by per-read timers.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ErrorKind> {
    let s = TcpStream::connect_timeout(addr, timeout)
        .await
        .map_err(|e| match io_kind(io::Error::from(e)) {
            "timeout" => "connect-timeout",
            "refused" => "connect-refused",
            "no-local-port" => "no-local-port",
            _ => "connect",
        })?;
    s.set_nodelay(true).map_err(|_| "connect")?;
    Ok(s)
}

/// The worker's kept-alive connection, connecting first if there is none. A failed connect is
/// recorded against the operation due at `due`, followed by a short [`backoff`]; `None` then
/// tells the worker to go on to its next operation.
pub async fn ensure_connected<'c>(
    ctx: &ShardCtx,
    conn: &'c mut Option<TcpStream>,
    target: SocketAddr,
    due: std::time::Instant,
) -> Option<&'c mut TcpStream> {
    if conn.is_none() {
        match connect(target, ctx.timeout).await {
            Ok(s) => *conn = Some(s),
            Err(kind) => {
                ctx.record(due, Err(kind));
                backoff(ctx).await;
                return None;
            }
        }
    }
    conn.as_mut()
}

/// Runs `op` on socket `fd` with the worker's watch armed for `timeout`: if the watchdog had
/// to shut the socket down, the operation counts as a timeout whatever it returned (the
/// caller must then drop the connection).
pub async fn watched<T>(
    watch: &Watch,
    fd: RawFd,
    timeout: Duration,
    op: impl std::future::Future<Output = Result<T, ErrorKind>>,
) -> Result<T, ErrorKind> {
    watch.arm(fd, timeout);
    let r = op.await;
    if watch.disarm() {
        return Err("timeout");
    }
    r
}

/// After a failed connect, wait a little before the next try so that a dead target is not
/// hammered in a tight loop (the failure is already counted).
pub async fn backoff(ctx: &ShardCtx) {
    let pause =
        Duration::from_millis(10).min(ctx.end.saturating_duration_since(std::time::Instant::now()));
    glommio::timer::sleep(pause).await;
}

/// Bounds any future by `timeout`.
pub async fn within<T>(
    timeout: Duration,
    f: impl std::future::Future<Output = Result<T, ErrorKind>>,
) -> Result<T, ErrorKind> {
    futures_lite::future::or(f, async {
        glommio::timer::sleep(timeout).await;
        Err("timeout")
    })
    .await
}
