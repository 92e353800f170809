//! Zero-downtime restart through the real binary: a new hub started with `--takeover` on the
//! same state directory takes the running hub's sockets; a client looping connections and DNS
//! queries throughout sees no refusal and no lost query, and the registry carries over.

mod common;

use common::{dns_query, echo_backend, Hub, StateDir};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    dns_ok: AtomicU64,
    dns_lost: AtomicU64,
}

/// Loops until `stop`: a new proxied connection with a round trip, then a DNS query.
fn client(proxy: SocketAddr, dns: SocketAddr, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut id = 0u16;
    while !stop.load(Ordering::Relaxed) {
        let round_trip = (|| -> std::io::Result<()> {
            let mut s = TcpStream::connect_timeout(&proxy, Duration::from_secs(5))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"ping")?;
            let mut got = [0u8; 4];
            s.read_exact(&mut got)?;
            if &got != b"ping" {
                return Err(std::io::Error::other("wrong echo"));
            }
            Ok(())
        })();
        match round_trip {
            Ok(()) => tally.ok.fetch_add(1, Ordering::Relaxed),
            Err(_) => tally.failed.fetch_add(1, Ordering::Relaxed),
        };
        id = id.wrapping_add(1);
        udp.send_to(&dns_query(id, "echo.internal", 1, None), dns)
            .unwrap();
        let mut buf = [0u8; 512];
        // Answers to earlier (late) queries may arrive first: read until ours.
        let answered = loop {
            match udp.recv_from(&mut buf) {
                Ok((n, _)) if n >= 2 && u16::from_be_bytes([buf[0], buf[1]]) == id => break true,
                Ok(_) => continue,
                Err(_) => break false,
            }
        };
        if answered {
            tally.dns_ok.fetch_add(1, Ordering::Relaxed);
        } else {
            tally.dns_lost.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[test]
fn takeover_refuses_no_connection_and_loses_no_query() {
    let dir = StateDir::new();
    let mut old = Hub::start_in(&dir.0, &[], &[]);
    let backend = echo_backend(b"");
    old.register("echo", "echo", "sa", "127.0.0.1", backend.port());

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let looping = {
        let (stop, tally) = (stop.clone(), tally.clone());
        let (proxy, dns) = (old.proxy, old.dns);
        std::thread::spawn(move || client(proxy, dns, stop, tally))
    };
    // Let the loop run against the old hub first (bounded wait on its progress).
    let deadline = Instant::now() + Duration::from_secs(10);
    while tally.ok.load(Ordering::Relaxed) < 50 {
        assert!(Instant::now() < deadline, "the client made no progress");
        std::thread::yield_now();
    }

    // The new hub asks for port 0 everywhere: it gets the old hub's sockets, so its ports.
    let new = Hub::start_in(&dir.0, &["--takeover=true"], &[]);
    assert_eq!((new.proxy, new.api, new.dns), (old.proxy, old.api, old.dns));
    let log = new.startup_log.join("\n");
    assert!(log.contains("takeover: received"), "{log}");
    assert!(log.contains("restored 1 backends"), "{log}");
    // The old one drains and exits on its own.
    let exited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        old.wait_exit(Duration::from_secs(20)).code()
    }));
    if !matches!(exited, Ok(Some(0))) {
        panic!(
            "old hub did not exit 0: {exited:?}; its log:\n{}",
            old.drain_logs().join("\n")
        );
    }

    // More traffic, now served by the new hub alone.
    let before = tally.ok.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(10);
    while tally.ok.load(Ordering::Relaxed) < before + 50 {
        assert!(Instant::now() < deadline, "no progress after the takeover");
        std::thread::yield_now();
    }
    stop.store(true, Ordering::Relaxed);
    looping.join().unwrap();

    assert_eq!(
        tally.failed.load(Ordering::Relaxed),
        0,
        "connections failed during the restart"
    );
    assert_eq!(
        tally.dns_lost.load(Ordering::Relaxed),
        0,
        "DNS queries lost during the restart"
    );
    assert!(tally.dns_ok.load(Ordering::Relaxed) >= 100);
    // The registry carried over, and the new hub takes changes.
    assert_eq!(new.api("GET", "/api/v1/backends/echo", None).0, 200);
    new.register("echo-2", "echo", "sa", "127.0.0.1", backend.port());
}

#[test]
fn takeover_with_nothing_running_starts_fresh() {
    let dir = StateDir::new();
    let hub = Hub::start_in(&dir.0, &["--takeover=true"], &[]);
    assert!(hub.startup_log.join("\n").contains("starting fresh"));
    assert_eq!(hub.api("GET", "/health", None).0, 200);
}
