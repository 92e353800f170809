//! Draining through the real binary: `POST /api/v1/backends/{id}/drain` stops new connections
//! and DNS answers for a backend while its open connection runs to its end; re-registering
//! lifts it; it survives a restart.

mod common;

use common::{dns_query, udp_dns, Hub, StateDir};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

/// An echo server that prefixes each answer with its tag, so the test sees who answered.
fn tagged_echo(tag: &'static [u8], ip: &str) -> SocketAddr {
    let l = std::net::TcpListener::bind((ip, 0)).unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { break };
            std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let mut out = tag.to_vec();
                    out.extend_from_slice(&buf[..n]);
                    if c.write_all(&out).is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

fn ask(s: &mut TcpStream) -> Vec<u8> {
    s.write_all(b"?").unwrap();
    let mut got = [0u8; 2];
    s.read_exact(&mut got).unwrap();
    got.to_vec()
}

fn dns_a(hub: &Hub, name: &str) -> Vec<Ipv4Addr> {
    let reply = udp_dns(hub.dns, &dns_query(7, name, 1, None)).expect("an answer");
    let p = dns_parser::Packet::parse(&reply).unwrap();
    p.answers
        .iter()
        .filter_map(|r| match r.data {
            dns_parser::RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

#[test]
fn a_drained_backend_keeps_its_connection_and_gets_no_new_ones() {
    let dir = StateDir::new();
    let hub = Hub::start_in(&dir.0, &[], &[]);
    let a = tagged_echo(b"A", "127.0.0.1");
    let b = tagged_echo(b"B", "127.0.0.2");
    hub.register("a", "web", "sa", "127.0.0.1", a.port());
    hub.register("b", "web", "sa", "127.0.0.2", b.port());

    // Find a connection that landed on A (the choice is sticky per client address; clients
    // here all come from 127.0.0.1, so every connection goes to the same backend).
    let mut open = TcpStream::connect(hub.proxy).unwrap();
    open.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let first = ask(&mut open);
    let (drained, other) = if first[0] == b'A' {
        ("a", b'B')
    } else {
        ("b", b'A')
    };

    let (s, j) = hub.api("POST", &format!("/api/v1/backends/{drained}/drain"), None);
    assert_eq!((s, j["draining"].as_bool()), (200, Some(true)), "{j}");
    assert_eq!(
        hub.api("GET", &format!("/api/v1/backends/{drained}"), None)
            .1["draining"],
        true
    );

    // New connections go to the other backend...
    for _ in 0..10 {
        let mut s = TcpStream::connect(hub.proxy).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(ask(&mut s)[0], other);
    }
    // ...DNS no longer answers with it...
    let drained_ip: Ipv4Addr = if drained == "a" {
        "127.0.0.1"
    } else {
        "127.0.0.2"
    }
    .parse()
    .unwrap();
    for _ in 0..10 {
        assert!(!dns_a(&hub, "web.internal").contains(&drained_ip));
    }
    // ...while the open connection keeps working.
    assert_eq!(ask(&mut open), first);

    // Errors: unknown id, wrong method.
    assert_eq!(hub.api("POST", "/api/v1/backends/ghost/drain", None).0, 404);
    assert_eq!(
        hub.api("GET", &format!("/api/v1/backends/{drained}/drain"), None)
            .0,
        405
    );

    // It survives a restart.
    drop(open);
    drop(hub);
    let hub = Hub::start_in(&dir.0, &[], &[]);
    assert_eq!(
        hub.api("GET", &format!("/api/v1/backends/{drained}"), None)
            .1["draining"],
        true
    );
    // Re-registering lifts it.
    let port = if drained == "a" { a.port() } else { b.port() };
    hub.register(drained, "web", "sa", &drained_ip.to_string(), port);
    assert_eq!(
        hub.api("GET", &format!("/api/v1/backends/{drained}"), None)
            .1["draining"],
        false
    );
}
