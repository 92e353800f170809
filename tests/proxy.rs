//! The TCP proxy through the real binary (2 shards), backends registered through the API, in
//! both forwarding modes. Peers are plain blocking std sockets on threads.

mod common;

use common::{echo_backend, Hub, STEP};
use std::collections::hash_map::DefaultHasher;
use std::hash::Hasher;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::Instant;

const MODES: [&str; 3] = ["--splice=never", "--splice=always", "--splice=auto"];

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, STEP).expect("connect");
    s.set_read_timeout(Some(STEP)).unwrap();
    s.set_write_timeout(Some(STEP)).unwrap();
    s
}

/// Sends `len` bytes of a deterministic pattern, shuts the write side, returns the hash sent.
fn send_pattern(mut s: TcpStream, len: usize, seed: u64) -> u64 {
    let mut x = seed | 1;
    let block: Vec<u8> = (0..64 * 1024 + 7)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let mut h = DefaultHasher::new();
    let (mut sent, mut off, mut step) = (0usize, 0usize, 1usize);
    while sent < len {
        step = (step * 7 + 4099) % 50_000 + 1;
        let n = step.min(block.len() - off).min(len - sent);
        s.write_all(&block[off..off + n]).unwrap();
        h.write(&block[off..off + n]);
        sent += n;
        off = (off + n) % block.len();
    }
    s.shutdown(Shutdown::Write).unwrap();
    h.finish()
}

/// Reads to end of stream; returns (bytes, hash).
fn receive(s: &mut TcpStream) -> (usize, u64) {
    let mut h = DefaultHasher::new();
    let mut buf = vec![0u8; 128 * 1024];
    let mut total = 0;
    loop {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            return (total, h.finish());
        }
        h.write(&buf[..n]);
        total += n;
    }
}

/// The live connection count the API reports for `id`.
fn connections(hub: &Hub, id: &str) -> u64 {
    let (status, json) = hub.api("GET", &format!("/api/v1/backends/{id}"), None);
    assert_eq!(status, 200, "{json}");
    json["connections"].as_u64().expect("connections")
}

fn wait_connections_zero(hub: &Hub, id: &str) {
    let deadline = Instant::now() + STEP;
    while connections(hub, id) != 0 {
        assert!(Instant::now() < deadline, "{id} still counts connections");
        thread::yield_now();
    }
}

fn echo_once(addr: SocketAddr) -> Vec<u8> {
    let mut c = connect(addr);
    c.write_all(b"ping").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::new();
    c.read_to_end(&mut got).unwrap();
    got
}

#[test]
fn hundred_mib_each_way_is_intact() {
    const LEN: usize = 100 << 20;
    for mode in MODES {
        let hub = Hub::start(&[mode]);
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        hub.register(
            "bulk1",
            "bulk",
            "sa",
            "127.0.0.1",
            l.local_addr().unwrap().port(),
        );
        let backend = thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let tx = s.try_clone().unwrap();
            let sender = thread::spawn(move || send_pattern(tx, LEN, 2));
            let got = receive(&mut s);
            (got, sender.join().unwrap())
        });
        let mut c = connect(hub.proxy);
        let tx = c.try_clone().unwrap();
        let sender = thread::spawn(move || send_pattern(tx, LEN, 1));
        let (got, got_hash) = receive(&mut c);
        let sent_hash = sender.join().unwrap();
        let ((b_got, b_got_hash), b_sent_hash) = backend.join().unwrap();
        assert_eq!(
            (b_got, b_got_hash),
            (LEN, sent_hash),
            "{mode}: client → backend"
        );
        assert_eq!(
            (got, got_hash),
            (LEN, b_sent_hash),
            "{mode}: backend → client"
        );
        drop(c);
        wait_connections_zero(&hub, "bulk1");
    }
}

#[test]
fn half_close_is_propagated_both_ways() {
    for mode in MODES {
        let hub = Hub::start(&[mode]);
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        hub.register(
            "hc",
            "hc",
            "sa",
            "127.0.0.1",
            l.local_addr().unwrap().port(),
        );
        let backend = thread::spawn(move || {
            // 1: read to end of stream, then reply.
            let (mut s, _) = l.accept().unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap();
            s.write_all(format!("got {}", got.len()).as_bytes())
                .unwrap();
            drop(s);
            // 2: greet, shut the write side, then read what still comes.
            let (mut s, _) = l.accept().unwrap();
            s.write_all(b"hi").unwrap();
            s.shutdown(Shutdown::Write).unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap();
            got
        });
        let mut c = connect(hub.proxy);
        c.write_all(b"hello").unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut reply = Vec::new();
        c.read_to_end(&mut reply).unwrap();
        assert_eq!(reply, b"got 5", "{mode}");

        let mut c = connect(hub.proxy);
        let mut greeting = Vec::new();
        c.read_to_end(&mut greeting).unwrap();
        assert_eq!(greeting, b"hi", "{mode}");
        c.write_all(b"still talking").unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        assert_eq!(backend.join().unwrap(), b"still talking", "{mode}");
        wait_connections_zero(&hub, "hc");
    }
}

#[test]
fn dead_backends_never_fail_a_client_while_one_lives() {
    for mode in MODES {
        let hub = Hub::start(&[mode]);
        // Refused ports, in the hub's region so that they are tried first.
        for id in ["dead1", "dead2"] {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            hub.register(id, "web", "sa", "127.0.0.1", port);
        }
        let live = echo_backend(b"live:");
        hub.register("live", "web", "us", "127.0.0.1", live.port());
        let proxy = hub.proxy;
        let clients: Vec<_> = (0..8)
            .map(|_| {
                thread::spawn(move || {
                    for _ in 0..10 {
                        assert_eq!(echo_once(proxy), b"live:ping");
                    }
                })
            })
            .collect();
        for c in clients {
            c.join().unwrap();
        }
        wait_connections_zero(&hub, "live");
    }
}

#[test]
fn without_backends_clients_are_closed_promptly() {
    let hub = Hub::start(&[]);
    let started = Instant::now();
    let mut c = connect(hub.proxy);
    let mut buf = [0u8; 8];
    assert_eq!(c.read(&mut buf).unwrap_or(0), 0);
    assert!(started.elapsed() < STEP);
}

#[test]
fn a_route_listener_reaches_only_its_app() {
    // --route needs a fixed port: take one the OS just handed out.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let hub = Hub::start(&[&format!("--route={port}=bulk")]);
    let route = hub.routes.iter().find(|(_, app)| app == "bulk").unwrap().0;
    // `web` sits in the hub's region and would win on geography alone.
    hub.register(
        "web1",
        "web",
        "sa",
        "127.0.0.1",
        echo_backend(b"web:").port(),
    );
    hub.register(
        "bulk1",
        "bulk",
        "eu",
        "127.0.0.1",
        echo_backend(b"bulk:").port(),
    );
    for _ in 0..10 {
        assert_eq!(echo_once(route), b"bulk:ping");
    }
    wait_connections_zero(&hub, "bulk1");
    assert_eq!(connections(&hub, "web1"), 0);
}

/// `ss -tniH` lines (state established) matching `filter`, or `None` without `ss`.
fn ss(filter: &str) -> Option<String> {
    let out = std::process::Command::new("ss")
        .args(["-tniH", "state", "established", filter])
        .output()
        .ok()?;
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn tcp_congestion_applies_to_both_legs() {
    // An algorithm that is not the system's, so that the hub's setting is what shows.
    let system =
        std::fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control").unwrap_or_default();
    let want = if system.trim() == "reno" {
        "cubic"
    } else {
        "reno"
    };
    let hub = Hub::start(&[&format!("--tcp-congestion={want}")]);
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let bport = backend.local_addr().unwrap().port();
    hub.register("cc-1", "cc.pop", "sa", "127.0.0.1", bport);
    let mut client = connect(hub.proxy);
    client.write_all(b"ping").unwrap();
    let (mut server, _) = backend.accept().unwrap();
    let mut got = [0u8; 4];
    server.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");
    let Some(client_leg) = ss(&format!("sport = :{}", hub.proxy.port())) else {
        eprintln!("skipped: no `ss` (iproute2) to read the hub's sockets");
        return;
    };
    let backend_leg = ss(&format!("dport = :{bport}")).unwrap();
    // The hub's accepted socket (inherited from its listener) and its socket to the backend.
    for (leg, text) in [("client", &client_leg), ("backend", &backend_leg)] {
        assert!(
            text.lines()
                .any(|l| l.split_whitespace().any(|w| w == want)),
            "{leg} leg not {want}: {text}"
        );
    }
    // The test's own sockets keep the system's.
    let ours = ss(&format!("dport = :{}", hub.proxy.port())).unwrap();
    assert!(
        !ours.split_whitespace().any(|w| w == want),
        "the client socket changed too: {ours}"
    );
}
