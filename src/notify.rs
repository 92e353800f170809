//! Telling the service manager how the hub is doing: systemd's `sd_notify` protocol, and a
//! watchdog that pings only while the hub still answers.
//!
//! The protocol is one datagram of `KEY=VALUE` lines to the `AF_UNIX` socket named by
//! `$NOTIFY_SOCKET` (a leading `@` names the abstract namespace). That is all libsystemd does
//! for us here, so it is written out rather than pulled in as a crate. Without `$NOTIFY_SOCKET`
//! (not started by systemd with `Type=notify`) every call is a no-op.
//!
//! - [`ready`]: once every shard serves (`READY=1`), right after the `ready:` log line.
//! - [`stopping`]: when shutdown begins (`STOPPING=1`).
//! - [`watchdog`] / [`watchdog_interval`] / [`spawn_watchdog`]: `WATCHDOG=1` every half of
//!   `$WATCHDOG_USEC`, from a plain thread, never from a shard.
//!
//! Why a thread and not a shard task: a shard timer keeps firing as long as that one executor
//! turns, which says nothing about the others, and a shard must never block on a probe. The
//! watchdog thread instead asks the hub from the outside, the way a client would: before each
//! ping it sends a DNS query for the zone apex to the hub's own DNS port from a fresh socket
//! (so `SO_REUSEPORT` lands successive probes on different shards). No answer within a quarter
//! of the watchdog interval, no ping; systemd then restarts a hub that stays wedged for the
//! whole `WatchdogSec=`. With DNS disabled the thread can only prove that the process is
//! scheduled, and says so at startup.
//!
//! This module never touches a shard, and nothing here is on the data path.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
use std::time::Duration;

/// Sends `state` (newline-separated `KEY=VALUE` lines) to the service manager.
///
/// Returns `Ok(false)` when there is no `$NOTIFY_SOCKET` (not running under systemd).
pub fn notify(state: &str) -> io::Result<bool> {
    match std::env::var_os("NOTIFY_SOCKET") {
        Some(path) => send_to(path.as_encoded_bytes(), state).map(|()| true),
        None => Ok(false),
    }
}

/// Sends `state` to the notify socket named `name` (a path, or `@name` for the abstract
/// namespace).
pub fn send_to(name: &[u8], state: &str) -> io::Result<()> {
    let addr = notify_addr(name)?;
    let sock = UnixDatagram::unbound()?;
    let sent = sock.send_to_addr(state.as_bytes(), &addr)?;
    if sent != state.len() {
        return Err(io::Error::other("notify message truncated"));
    }
    Ok(())
}

fn notify_addr(name: &[u8]) -> io::Result<UnixAddr> {
    match name {
        [] => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "NOTIFY_SOCKET is empty",
        )),
        [b'@', abstract_name @ ..] => UnixAddr::from_abstract_name(abstract_name),
        [b'/', ..] => {
            use std::os::unix::ffi::OsStrExt;
            UnixAddr::from_pathname(std::ffi::OsStr::from_bytes(name))
        }
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "NOTIFY_SOCKET must be an absolute path or start with '@'",
        )),
    }
}

fn notify_logged(state: &str) {
    if let Err(e) = notify(state) {
        log::warn!(
            "cannot notify the service manager ({}): {e}",
            state.lines().next().unwrap_or("")
        );
    }
}

/// Every shard serves: `READY=1`, with a one-line status for `systemctl status`.
pub fn ready(status: &str) {
    notify_logged(&format!("READY=1\nSTATUS={status}\n"));
}

/// Shutdown has begun: `STOPPING=1`.
pub fn stopping() {
    notify_logged("STOPPING=1\nSTATUS=stopping\n");
}

/// One watchdog keep-alive: `WATCHDOG=1`.
pub fn watchdog() {
    notify_logged("WATCHDOG=1\n");
}

/// How often to ping the watchdog: half of `$WATCHDOG_USEC`, when it is set and (if
/// `$WATCHDOG_PID` is set) meant for this process.
pub fn watchdog_interval() -> Option<Duration> {
    ping_interval(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
}

/// The pure part of [`watchdog_interval`].
pub fn ping_interval(usec: Option<&str>, pid: Option<&str>, my_pid: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok()? != my_pid {
            return None;
        }
    }
    // Half the timeout, as sd_watchdog_enabled(3) advises; never busier than every 1 ms.
    Some(Duration::from_micros(usec / 2).max(Duration::from_millis(1)))
}

/// Where the watchdog asks whether the hub still answers.
#[derive(Debug, Clone)]
pub struct Probe {
    /// The hub's DNS address (a wildcard address is probed on loopback).
    pub dns: SocketAddr,
    /// The zone apex to ask for (`SOA`).
    pub zone: String,
}

/// Starts the watchdog thread when systemd asked for one (`$WATCHDOG_USEC`). It pings every
/// interval while `probe` (when given) gets an answer, and stays silent otherwise.
pub fn spawn_watchdog(probe: Option<Probe>) -> Option<std::thread::JoinHandle<()>> {
    let every = watchdog_interval()?;
    match &probe {
        Some(p) => log::info!(
            "watchdog: pinging systemd every {every:?} while DNS on {} answers",
            p.dns
        ),
        None => log::info!(
            "watchdog: pinging systemd every {every:?} (DNS is off: this only proves the process runs)"
        ),
    }
    let spawned = std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || {
            let timeout = (every / 2).max(Duration::from_millis(1));
            let mut id: u16 = 0;
            loop {
                let started = std::time::Instant::now();
                let healthy = match &probe {
                    Some(p) => {
                        id = id.wrapping_add(1);
                        match probe_dns(p.dns, &p.zone, id, timeout) {
                            Ok(()) => true,
                            Err(e) => {
                                log::warn!(
                                    "watchdog: DNS on {} did not answer: {e}; not pinging systemd",
                                    p.dns
                                );
                                false
                            }
                        }
                    }
                    None => true,
                };
                if healthy {
                    watchdog();
                }
                std::thread::sleep(every.saturating_sub(started.elapsed()));
            }
        });
    match spawned {
        Ok(handle) => Some(handle),
        Err(e) => {
            log::error!("cannot start the watchdog thread: {e}");
            None
        }
    }
}

/// Asks `server` for the `SOA` of `zone` over UDP from a fresh socket and waits up to `timeout`
/// for a response with the same id. Any rcode counts: the hub answered.
pub fn probe_dns(server: SocketAddr, zone: &str, id: u16, timeout: Duration) -> io::Result<()> {
    let server = reachable(server);
    let local: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::LOCALHOST, 0).into()
    } else {
        (Ipv6Addr::LOCALHOST, 0).into()
    };
    let sock = UdpSocket::bind(local)?;
    sock.connect(server)?;
    sock.set_read_timeout(Some(timeout))?;
    sock.send(&soa_query(id, zone))?;
    let deadline = std::time::Instant::now() + timeout;
    let mut buf = [0u8; 512];
    loop {
        let n = sock.recv(&mut buf)?;
        // A response (QR set) to our id; anything else is a stray datagram.
        if n >= 12 && buf[..2] == id.to_be_bytes() && buf[2] & 0x80 != 0 {
            return Ok(());
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        sock.set_read_timeout(Some(left))?;
    }
}

/// A listener bound to the wildcard address is reached on loopback.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => {
            (Ipv4Addr::LOCALHOST, addr.port()).into()
        }
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => {
            (Ipv6Addr::LOCALHOST, addr.port()).into()
        }
        _ => addr,
    }
}

/// A minimal query: header (one question, no recursion), `zone` `SOA` `IN`.
fn soa_query(id: u16, zone: &str) -> Vec<u8> {
    let mut q = Vec::with_capacity(17 + zone.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in zone.split('.').filter(|l| !l.is_empty()) {
        // Zone labels are validated DNS labels (at most 63 bytes) by the configuration.
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&6u16.to_be_bytes()); // SOA
    q.extend_from_slice(&1u16.to_be_bytes()); // IN
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_is_half_the_timeout_and_only_for_us() {
        let d = |ms| Some(Duration::from_millis(ms));
        assert_eq!(ping_interval(Some("30000000"), None, 7), d(15_000));
        assert_eq!(ping_interval(Some("30000000"), Some("7"), 7), d(15_000));
        assert_eq!(ping_interval(Some("30000000"), Some("8"), 7), None);
        assert_eq!(ping_interval(Some("30000000"), Some("x"), 7), None);
        assert_eq!(ping_interval(Some("0"), None, 7), None);
        assert_eq!(ping_interval(Some("soon"), None, 7), None);
        assert_eq!(ping_interval(None, Some("7"), 7), None);
        assert_eq!(ping_interval(Some("1"), None, 7), d(1));
    }

    #[test]
    fn socket_names() {
        assert!(notify_addr(b"").is_err());
        assert!(notify_addr(b"relative/path").is_err());
        let a = notify_addr(b"@edgeproxy-test").unwrap();
        assert_eq!(a.as_abstract_name(), Some(&b"edgeproxy-test"[..]));
        let p = notify_addr(b"/run/systemd/notify").unwrap();
        assert_eq!(
            p.as_pathname(),
            Some(std::path::Path::new("/run/systemd/notify"))
        );
    }

    #[test]
    fn datagram_reaches_an_abstract_socket() {
        let name = format!("edgeproxy-notify-test-{}", std::process::id());
        let listener =
            UnixDatagram::bind_addr(&UnixAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        send_to(format!("@{name}").as_bytes(), "READY=1\n").unwrap();
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\n");
    }

    #[test]
    fn query_is_well_formed() {
        let q = soa_query(0x1234, "corp.internal");
        assert_eq!(&q[..4], &[0x12, 0x34, 0, 0]);
        assert_eq!(&q[4..6], &[0, 1]);
        assert_eq!(&q[12..], b"\x04corp\x08internal\x00\x00\x06\x00\x01");
    }

    #[test]
    fn probe_needs_an_answer_with_our_id() {
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        let err = probe_dns(
            silent.local_addr().unwrap(),
            "internal",
            1,
            Duration::from_millis(50),
        )
        .unwrap_err();
        assert!(
            matches!(
                err.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
            "{err}"
        );

        // A responder that first sends a stray reply, then the real one.
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        let echo = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            let (n, peer) = server.recv_from(&mut buf).unwrap();
            let mut reply = buf[..n].to_vec();
            reply[2] |= 0x80;
            let mut stray = reply.clone();
            stray[1] ^= 0xff;
            server.send_to(&stray, peer).unwrap();
            server.send_to(&reply, peer).unwrap();
        });
        probe_dns(addr, "internal", 7, Duration::from_secs(10)).unwrap();
        echo.join().unwrap();
    }

    #[test]
    fn wildcard_is_probed_on_loopback() {
        assert_eq!(
            reachable("0.0.0.0:5353".parse().unwrap()),
            "127.0.0.1:5353".parse().unwrap()
        );
        assert_eq!(
            reachable("[::]:53".parse().unwrap()),
            "[::1]:53".parse().unwrap()
        );
        assert_eq!(
            reachable("10.0.0.1:53".parse().unwrap()),
            "10.0.0.1:53".parse().unwrap()
        );
    }
}
