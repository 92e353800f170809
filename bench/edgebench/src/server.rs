//! Backends edgebench brings along: `echo` (every byte back) and discard (the `--sink` of
//! tcp-bulk). One `SO_REUSEPORT` listener per shard, bound on the main thread first so that a
//! bad address is one error line and port 0 resolves to one port for every shard.
//!
//! Bounded: at most [`MAX_CONNS_PER_SHARD`] connections per shard (more are closed at once),
//! and the server stops by itself at the end of its duration.

use crate::cli::{CpuList, Echo};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use glommio::{LocalExecutorBuilder, Placement};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::cell::Cell;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd, RawFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

pub const MAX_CONNS_PER_SHARD: usize = 20_000;
const BUF: usize = 64 * 1024;

fn listener(addr: SocketAddr) -> std::io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nodelay(true)?;
    s.bind(&SockAddr::from(addr))?;
    s.listen(4096)?;
    Ok(s)
}

/// Binds `n` listeners on `addr` (the first resolves port 0); returns the bound address and the
/// raw descriptors, each to be owned by one shard.
pub fn bind_listeners(addr: SocketAddr, n: usize) -> Result<(SocketAddr, Vec<RawFd>), String> {
    let err = |e: std::io::Error| format!("cannot listen on {addr}: {e}");
    let first = listener(addr).map_err(err)?;
    let bound = first
        .local_addr()
        .map_err(err)?
        .as_socket()
        .ok_or("not an IP socket")?;
    let mut fds = vec![first.into_raw_fd()];
    for _ in 1..n {
        fds.push(listener(bound).map_err(err)?.into_raw_fd());
    }
    Ok((bound, fds))
}

/// Turns a descriptor from [`bind_listeners`] into this shard's listener.
///
/// # Safety
/// `fd` must be an open, listening TCP socket that nothing else owns.
pub unsafe fn adopt(fd: RawFd) -> TcpListener {
    // SAFETY: the caller hands over sole ownership of a listening socket.
    unsafe { TcpListener::from_raw_fd(fd) }
}

/// Accepts until `until`, echoing (or discarding) on every connection.
pub async fn serve(listener: TcpListener, discard: bool, until: Instant) {
    let live = Rc::new(Cell::new(0usize));
    let accept_loop = async {
        loop {
            let Ok(stream) = listener.accept().await else {
                // EMFILE and the like: back off instead of spinning.
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            };
            if live.get() >= MAX_CONNS_PER_SHARD {
                drop(stream);
                continue;
            }
            live.set(live.get() + 1);
            let live = live.clone();
            glommio::spawn_local(async move {
                let _ = pump(stream, discard).await;
                live.set(live.get() - 1);
            })
            .detach();
        }
    };
    let stop = async {
        glommio::timer::sleep(until.saturating_duration_since(Instant::now())).await;
    };
    futures_lite::future::or(accept_loop, stop).await;
}

async fn pump(mut s: TcpStream, discard: bool) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    let mut buf = vec![0u8; BUF];
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        if !discard {
            s.write_all(&buf[..n]).await?;
        }
    }
}

/// Echo (or discard) servers running on their own executors.
pub struct EchoServers {
    pub addr: SocketAddr,
    handles: Vec<glommio::ExecutorJoinHandle<()>>,
}

impl EchoServers {
    /// Waits until every shard has stopped (at the end of its duration).
    pub fn join(self) -> Result<(), String> {
        for h in self.handles {
            h.join().map_err(|err| format!("a shard failed: {err:?}"))?;
        }
        Ok(())
    }
}

/// Starts echo (or discard) servers on `shards` executors; they stop after `duration`.
pub fn spawn_echo(
    listen: SocketAddr,
    shards: usize,
    cpus: Option<&CpuList>,
    discard: bool,
    duration: Duration,
) -> Result<EchoServers, String> {
    if shards == 0 || shards > 256 {
        return Err("--shards must be 1 to 256".into());
    }
    let (addr, fds) = bind_listeners(listen, shards)?;
    let until = Instant::now() + duration;
    let mut handles = Vec::new();
    for (shard, fd) in fds.into_iter().enumerate() {
        let placement = match cpus {
            Some(c) => Placement::Fixed(c.of(shard)),
            None => Placement::Unbound,
        };
        let h = LocalExecutorBuilder::new(placement)
            .name(&format!("edgebench-echo-{shard}"))
            .io_memory(512 * 1024)
            .spawn(move || async move {
                // SAFETY: `fd` came from bind_listeners and is owned by this shard alone.
                let l = unsafe { adopt(fd) };
                serve(l, discard, until).await;
            })
            .map_err(|err| {
                format!("cannot start shard {shard}: {err} (raise `ulimit -l`; check --cpus)")
            })?;
        handles.push(h);
    }
    Ok(EchoServers { addr, handles })
}

/// `edgebench echo`: serves on every shard until `--duration` is over.
pub fn run_echo(e: &Echo) -> Result<(), String> {
    let servers = spawn_echo(e.listen, e.shards, e.cpus.as_ref(), e.discard, e.duration)?;
    eprintln!(
        "edgebench ready: listen={} mode={} shards={}",
        servers.addr,
        if e.discard { "discard" } else { "echo" },
        e.shards
    );
    servers.join()
}
