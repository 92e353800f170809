//! systemd integration through the real binary: a fake `$NOTIFY_SOCKET` (a datagram socket in a
//! temp dir, or in the abstract namespace) receives `READY=1` once the hub serves, and
//! `WATCHDOG=1` pings when `$WATCHDOG_USEC` asks for them; `systemctl reload` (SIGHUP) is
//! harmless.

mod common;

use common::{Hub, STEP};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
use std::path::PathBuf;

/// A datagram socket bound in a fresh temp dir, removed on drop.
struct FakeNotify {
    dir: PathBuf,
    sock: UnixDatagram,
}

impl FakeNotify {
    fn new(tag: &str) -> FakeNotify {
        let dir = std::env::temp_dir().join(format!(
            "edgeproxy-notify-{tag}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = UnixDatagram::bind(dir.join("notify")).unwrap();
        sock.set_read_timeout(Some(STEP)).unwrap();
        FakeNotify { dir, sock }
    }

    fn path(&self) -> String {
        self.dir.join("notify").to_str().unwrap().to_string()
    }
}

impl Drop for FakeNotify {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Waits (bounded by the socket's read timeout) for a datagram with the line `line`.
fn recv_until(sock: &UnixDatagram, line: &str) -> String {
    let mut buf = [0u8; 4096];
    let mut seen = Vec::new();
    loop {
        match sock.recv(&mut buf) {
            Ok(n) => {
                let msg = String::from_utf8_lossy(&buf[..n]).to_string();
                if msg.lines().any(|l| l == line) {
                    return msg;
                }
                seen.push(msg);
            }
            Err(e) => panic!("no {line:?} within {STEP:?} ({e}); got {seen:?}"),
        }
    }
}

#[test]
fn ready_reaches_the_notify_socket() {
    let fake = FakeNotify::new("ready");
    let hub = Hub::start_with_env(&[], &[("NOTIFY_SOCKET", &fake.path())]);
    let msg = recv_until(&fake.sock, "READY=1");
    assert!(
        msg.lines()
            .any(|l| l.starts_with("STATUS=serving: ") && l.contains("shards=2")),
        "{msg:?}"
    );
    drop(hub);
}

#[test]
fn abstract_socket_and_watchdog_pings() {
    let name = format!("edgeproxy-test-watchdog-{}", std::process::id());
    let sock =
        UnixDatagram::bind_addr(&UnixAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
    sock.set_read_timeout(Some(STEP)).unwrap();
    // 200 ms: a ping every 100 ms, each after a DNS probe of the hub itself.
    let hub = Hub::start_with_env(
        &[],
        &[
            ("NOTIFY_SOCKET", &format!("@{name}")),
            ("WATCHDOG_USEC", "200000"),
        ],
    );
    recv_until(&sock, "READY=1");
    recv_until(&sock, "WATCHDOG=1");
    recv_until(&sock, "WATCHDOG=1");
    hub.wait_log("watchdog: pinging systemd every 100ms while DNS on");
}

#[test]
fn reload_signal_does_not_stop_the_hub() {
    // `systemctl reload` sends SIGHUP; its default action would end the process (and
    // Restart=on-failure would not bring it back). A fatal signal takes the process down as
    // it is sent, so the request below would find no hub.
    let hub = Hub::start(&[]);
    let pid = libc::pid_t::try_from(hub.pid()).unwrap();
    // SAFETY: kill(2) with a pid we own (our child, still unreaped) and a valid signal.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    let (status, _) = hub.api("GET", "/health", None);
    assert_eq!(status, 200);
}
