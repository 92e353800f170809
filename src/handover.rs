//! Zero-downtime restart: a new process takes the listening sockets of the running one.
//!
//! A hub keeps a duplicate of every listening socket and serves a Unix socket,
//! `<state-dir>/handover.sock` (mode 0600: only the same user can take over). A new process
//! started with `--takeover` connects there before binding anything and receives every socket
//! (`SCM_RIGHTS`), with its kind, address and shard. Because it gets the *same* sockets (not new
//! ones beside them), no queued connection and no queued DNS datagram is dropped: whatever
//! arrives while the old process drains and the new one starts waits in those sockets' queues.
//! The old process then drains as on SIGTERM (stops accepting, finishes open connections),
//! flushes the registry and releases the state directory, which the new process waits for
//! before restoring the registry and starting its shards.
//!
//! Protocol: the client writes `TAKEOVER\n`; the server answers with messages whose payload is
//! a JSON array of `{"kind","addr","shard"}` describing the descriptors the message carries, in
//! order, at most [`PER_MESSAGE`] per message; an empty array ends the list.

use serde::{Deserialize, Serialize};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, OnceLock};
use std::time::Duration;

const SOCKET_FILE: &str = "handover.sock";
/// Descriptors per message (the kernel's limit is 253).
const PER_MESSAGE: usize = 200;
const GREETING: &[u8] = b"TAKEOVER\n";
/// Sent by this process's own main thread on a plain shutdown: close the duplicates, so the
/// listening sockets really close and new connections are refused.
const RELEASE: &[u8] = b"RELEASE!\n";
/// Sent by this process's own main thread after a reload changed the sockets: apply the
/// queued [`Update`]s now.
const UPDATE: &[u8] = b"UPDATE!!\n";

static HANDED_OVER: AtomicBool = AtomicBool::new(false);

/// Whether this process has handed its sockets to a successor.
pub fn handed_over() -> bool {
    HANDED_OVER.load(Ordering::SeqCst)
}

/// What one handed-over socket is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Describe {
    /// `proxy`, `route:<app>`, `dns-udp`, `dns-tcp`, `tls`, `tls-passthrough`, `api`.
    pub kind: String,
    pub addr: SocketAddr,
    pub shard: usize,
}

/// A socket received from the previous process.
#[derive(Debug)]
pub struct Inherited {
    pub what: Describe,
    pub fd: OwnedFd,
}

/// A change to the set of sockets offered, made by a reload ([`offer`], [`forget`]).
enum Update {
    Offer(Vec<(Describe, OwnedFd)>),
    Forget(SocketAddr),
}

/// Where the main thread sends [`Update`]s; the handover thread applies them before it hands
/// anything over (a channel between two plain threads; no shard is involved).
static UPDATES: OnceLock<(mpsc::Sender<Update>, PathBuf)> = OnceLock::new();

/// Queues `update` and wakes the handover thread to apply it at once.
fn send_update(update: Update) {
    let Some((tx, path)) = UPDATES.get() else {
        return;
    };
    if tx.send(update).is_err() {
        return;
    }
    if let Ok(mut conn) = UnixStream::connect(path) {
        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
        if conn.write_all(UPDATE).is_ok() {
            let mut ack = [0u8; 3];
            let _ = conn.read_exact(&mut ack);
        }
    }
}

/// Offers more listening sockets to a successor (route listeners a reload added).
pub fn offer(sockets: Vec<(Describe, OwnedFd)>) {
    send_update(Update::Offer(sockets));
}

/// Stops offering the sockets listening on `addr` (a route a reload removed): a duplicate kept
/// here would keep its listener open, and the kernel would queue connections nobody accepts.
pub fn forget(addr: SocketAddr) {
    send_update(Update::Forget(addr));
}

/// Serves takeover requests on `<dir>/handover.sock` from a plain thread (never a shard).
/// After handing its sockets over, the process drains itself as on SIGTERM.
pub fn serve(dir: &Path, mut sockets: Vec<(Describe, OwnedFd)>) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    // One process serves once; a second call (tests) keeps the first channel's receiver
    // unused, so its updates are simply not applied.
    let path = dir.join(SOCKET_FILE);
    let (tx, updates) = mpsc::channel();
    let _ = UPDATES.set((tx, path.clone()));
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    std::thread::Builder::new()
        .name("handover".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                for update in updates.try_iter() {
                    match update {
                        Update::Offer(more) => sockets.extend(more),
                        Update::Forget(addr) => sockets.retain(|(d, _)| d.addr != addr),
                    }
                }
                match hand_over(&mut conn, &sockets) {
                    Ok(Served::Updated) => {
                        // Applied above, before the greeting was read.
                        let _ = conn.write_all(b"ok\n");
                    }
                    Ok(Served::Released) => {
                        // Our own shutdown: drop the duplicates and stop offering takeover.
                        let _ = std::fs::remove_file(&path);
                        drop(sockets);
                        let _ = conn.write_all(b"ok\n");
                        return;
                    }
                    Ok(Served::HandedOver) => {
                        log::info!("handover: sockets handed to a new process; draining");
                        HANDED_OVER.store(true, Ordering::SeqCst);
                        let _ = std::fs::remove_file(&path);
                        // The main thread drains exactly as on SIGTERM.
                        // SAFETY: kill has no memory-safety preconditions.
                        unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
                        return;
                    }
                    Err(e) => log::warn!("handover: a takeover attempt failed: {e}"),
                }
            }
        })?;
    Ok(())
}

/// What a connection to the handover socket asked for, and got.
enum Served {
    HandedOver,
    /// This process's own shutdown.
    Released,
    /// This process's own reload changed the sockets offered.
    Updated,
}

fn hand_over(conn: &mut UnixStream, sockets: &[(Describe, OwnedFd)]) -> io::Result<Served> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut greeting = [0u8; GREETING.len()];
    conn.read_exact(&mut greeting)?;
    if greeting == RELEASE {
        return Ok(Served::Released);
    }
    if greeting == UPDATE {
        return Ok(Served::Updated);
    }
    if greeting != GREETING {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a takeover request",
        ));
    }
    for chunk in sockets.chunks(PER_MESSAGE) {
        let what: Vec<&Describe> = chunk.iter().map(|(d, _)| d).collect();
        let fds: Vec<_> = chunk.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
        let payload = serde_json::to_vec(&what).map_err(io::Error::other)?;
        crate::sys::send_fds(conn.as_raw_fd(), &payload, &fds)?;
    }
    crate::sys::send_fds(conn.as_raw_fd(), b"[]", &[])?;
    conn.flush()?;
    Ok(Served::HandedOver)
}

/// On a plain shutdown (no successor): makes this process's handover thread close its
/// duplicates of the listening sockets, so they close when the shards drop theirs.
pub fn release(dir: &Path) {
    if handed_over() {
        return;
    }
    let Ok(mut conn) = UnixStream::connect(dir.join(SOCKET_FILE)) else {
        return;
    };
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    if conn.write_all(RELEASE).is_ok() {
        let mut ack = [0u8; 3];
        let _ = conn.read_exact(&mut ack);
    }
}

/// Asks the process serving `<dir>/handover.sock` for its sockets. `Ok(None)` when no hub
/// serves there (nothing to take over).
pub fn take(dir: &Path) -> io::Result<Option<Vec<Inherited>>> {
    let path: PathBuf = dir.join(SOCKET_FILE);
    let mut conn = match UnixStream::connect(&path) {
        Ok(c) => c,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    conn.write_all(GREETING)?;
    let mut got = Vec::new();
    loop {
        let (payload, fds) = crate::sys::recv_fds(conn.as_raw_fd(), 1 << 20)?;
        if payload.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the old process closed the handover early",
            ));
        }
        let what: Vec<Describe> = serde_json::from_slice(&payload)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        if what.is_empty() {
            return Ok(Some(got));
        }
        if what.len() != fds.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "handover message: descriptors and descriptions differ",
            ));
        }
        got.extend(
            what.into_iter()
                .zip(fds)
                .map(|(what, fd)| Inherited { what, fd }),
        );
    }
}
