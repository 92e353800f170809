//! DNS through the real binary: the ten seed backends registered over the API and resolved over
//! UDP and TCP on both shards, and crafted edge cases over real sockets.
//!
//! Silence is checked without sleeping: after a packet that must get no answer, the same socket
//! sends a good query; the same 4-tuple reaches the same shard (SO_REUSEPORT hashes it), which
//! handles datagrams in order, so the first reply must be the good query's.

mod common;

use common::{dns_query, tcp_dns, tcp_dns_on, udp_dns, udp_dns_on, Hub, SEED, STEP};
use dns_parser::{Packet, RData, ResponseCode};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpStream, UdpSocket};

fn only_a(reply: &[u8], id: u16) -> Ipv4Addr {
    let p = Packet::parse(reply).expect("reply parses");
    assert_eq!(p.header.id, id);
    assert!(!p.header.query && p.header.authoritative);
    assert_eq!(p.header.response_code, ResponseCode::NoError);
    assert_eq!(p.answers.len(), 1, "{p:?}");
    match p.answers[0].data {
        RData::A(a) => a.0,
        ref other => panic!("not an A record: {other:?}"),
    }
}

fn seeded_hub(extra: &[&str]) -> Hub {
    let hub = Hub::start(extra);
    for (id, app, region, ip) in SEED {
        hub.register(id, app, region, ip, 80);
    }
    hub
}

#[test]
fn seed_names_resolve_to_their_backends_over_udp_and_tcp() {
    let hub = seeded_hub(&[]);
    let mut id = 0u16;
    for round in 0..30 {
        for (_, app, _, ip) in SEED {
            let want: Ipv4Addr = ip.parse().unwrap();
            let name = format!("{app}.internal");
            id = id.wrapping_add(1);
            // A fresh socket per query: new source ports spread over both shards.
            let reply = udp_dns(hub.dns, &dns_query(id, &name, 1, None))
                .unwrap_or_else(|| panic!("no UDP answer for {name}"));
            assert_eq!(only_a(&reply, id), want, "{name} over UDP, round {round}");
            if round % 3 == 0 {
                id = id.wrapping_add(1);
                let reply = tcp_dns(hub.dns, &dns_query(id, &name, 1, Some(1232)));
                assert_eq!(only_a(&reply, id), want, "{name} over TCP, round {round}");
            }
        }
    }
}

#[test]
fn tcp_answers_pipelined_queries_in_order_on_one_connection() {
    let hub = seeded_hub(&[]);
    let mut s = TcpStream::connect_timeout(&hub.dns, STEP).unwrap();
    s.set_read_timeout(Some(STEP)).unwrap();
    let mut burst = Vec::new();
    for (i, (_, app, _, _)) in SEED.iter().enumerate() {
        let q = dns_query(100 + i as u16, &format!("{app}.internal"), 1, None);
        burst.extend_from_slice(&(q.len() as u16).to_be_bytes());
        burst.extend_from_slice(&q);
    }
    // Two rounds, the second written in 7-byte pieces so frames straddle reads.
    for round in 0..2 {
        if round == 0 {
            s.write_all(&burst).unwrap();
        } else {
            for piece in burst.chunks(7) {
                s.write_all(piece).unwrap();
            }
        }
        for (i, (_, _, _, ip)) in SEED.iter().enumerate() {
            let mut len = [0u8; 2];
            s.read_exact(&mut len).unwrap();
            let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
            s.read_exact(&mut reply).unwrap();
            assert_eq!(
                only_a(&reply, 100 + i as u16),
                ip.parse::<Ipv4Addr>().unwrap()
            );
        }
    }
}

#[test]
fn edge_cases_over_udp() {
    let hub = seeded_hub(&[]);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let ask = |q: &[u8]| udp_dns_on(&sock, hub.dns, q, STEP).expect("an answer");

    // The client's letter case comes back in the question.
    let q = dns_query(1, "GrU.PoP.InTeRnAl", 1, None);
    let reply = ask(&q);
    assert_eq!(&reply[12..q.len()], &q[12..]);
    assert_eq!(only_a(&reply, 1), Ipv4Addr::new(10, 50, 1, 1));

    // Unknown name: NXDOMAIN with the SOA.
    let p_raw = ask(&dns_query(2, "nope.internal", 1, None));
    let p = Packet::parse(&p_raw).unwrap();
    assert_eq!(p.header.response_code, ResponseCode::NameError);
    assert!(matches!(p.nameservers[0].data, RData::SOA(_)));

    // Known name, other type: NODATA with the SOA.
    let p_raw = ask(&dns_query(3, "gru.pop.internal", 28, None));
    let p = Packet::parse(&p_raw).unwrap();
    assert_eq!(p.header.response_code, ResponseCode::NoError);
    assert!(p.answers.is_empty());
    assert!(matches!(p.nameservers[0].data, RData::SOA(_)));

    // Outside the zone: REFUSED, no recursion offered.
    let p_raw = ask(&dns_query(4, "example.com", 1, None));
    let p = Packet::parse(&p_raw).unwrap();
    assert_eq!(p.header.response_code, ResponseCode::Refused);
    assert!(!p.header.recursion_available);

    // Opcode STATUS: NOTIMP.
    let mut q = dns_query(5, "gru.pop.internal", 1, None);
    q[2] |= 2 << 3;
    let p_raw = ask(&q);
    assert_eq!(
        Packet::parse(&p_raw).unwrap().header.response_code,
        ResponseCode::NotImplemented
    );

    // No question: FORMERR, ID echoed.
    let mut q = dns_query(6, "gru.pop.internal", 1, None);
    q[5] = 0;
    let p_raw = ask(&q[..12]);
    let p = Packet::parse(&p_raw).unwrap();
    assert_eq!(
        (p.header.id, p.header.response_code),
        (6, ResponseCode::FormatError)
    );

    // EDNS: echoed, with our size (1232 by default) when the client offers more.
    let p_raw = ask(&dns_query(7, "syd.pop.internal", 1, Some(4096)));
    let p = Packet::parse(&p_raw).unwrap();
    assert_eq!(p.opt.as_ref().unwrap().udp, 1232);
    assert_eq!(only_a(&p_raw, 7), Ipv4Addr::new(10, 50, 4, 3));

    // Silence for a short packet and for a response; the next good query is answered first.
    let mut response = dns_query(8, "gru.pop.internal", 1, None);
    response[2] |= 0x80;
    for junk in [&b"\x00\x09\x01"[..], &response[..]] {
        sock.send_to(junk, hub.dns).unwrap();
        let reply = ask(&dns_query(9, "lhr.pop.internal", 1, None));
        assert_eq!(only_a(&reply, 9), Ipv4Addr::new(10, 50, 3, 1));
    }
}

#[test]
fn edge_cases_over_tcp() {
    let hub = seeded_hub(&[]);
    let mut s = TcpStream::connect_timeout(&hub.dns, STEP).unwrap();
    s.set_read_timeout(Some(STEP)).unwrap();
    // A malformed query is answered FORMERR and the connection stays usable.
    let mut q = dns_query(1, "gru.pop.internal", 1, None);
    q[5] = 0;
    let p_raw = tcp_dns_on(&mut s, &q[..12]);
    assert_eq!(
        Packet::parse(&p_raw).unwrap().header.response_code,
        ResponseCode::FormatError
    );
    let reply = tcp_dns_on(&mut s, &dns_query(2, "fra.pop.internal", 1, None));
    assert_eq!(only_a(&reply, 2), Ipv4Addr::new(10, 50, 3, 2));
    // `ns.internal` answers with the address the query arrived on.
    let reply = tcp_dns_on(&mut s, &dns_query(3, "ns.internal", 1, None));
    assert_eq!(IpAddr::V4(only_a(&reply, 3)), hub.dns.ip());
    // A non-query gets no answer: the connection is closed instead of left waiting.
    let mut response = dns_query(4, "gru.pop.internal", 1, None);
    response[2] |= 0x80;
    let mut framed = (response.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&response);
    s.write_all(&framed).unwrap();
    let mut byte = [0u8; 1];
    assert!(matches!(s.read(&mut byte), Ok(0) | Err(_)));
}

#[test]
fn tcp_idle_connections_are_closed() {
    let hub = Hub::start(&["--dns-tcp-idle-timeout-secs=1"]);
    let mut s = TcpStream::connect_timeout(&hub.dns, STEP).unwrap();
    s.set_read_timeout(Some(STEP)).unwrap();
    let started = std::time::Instant::now();
    let mut byte = [0u8; 1];
    assert_eq!(s.read(&mut byte).unwrap(), 0, "closed by the hub");
    assert!(started.elapsed() < STEP);
}

#[test]
fn tcp_connections_beyond_the_cap_are_closed() {
    // One connection per shard, two shards: of three connections held open, at most two are
    // served and at least one is closed, whatever shards the kernel picks.
    let hub = seeded_hub(&["--dns-tcp-max-connections=1"]);
    let conns: Vec<TcpStream> = (0..3)
        .map(|_| {
            let s = TcpStream::connect_timeout(&hub.dns, STEP).unwrap();
            s.set_read_timeout(Some(STEP)).unwrap();
            s
        })
        .collect();
    let mut served = 0;
    for (i, mut s) in conns.iter().enumerate() {
        let q = dns_query(i as u16, "gru.pop.internal", 1, None);
        let mut framed = (q.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&q);
        let _ = s.write_all(&framed);
        let mut len = [0u8; 2];
        if s.read_exact(&mut len).is_ok() {
            served += 1;
        }
    }
    assert!((1..=2).contains(&served), "served {served} of 3");
    drop(conns);
    // Slots come back when connections close: a new one is served (bounded retries, since the
    // hub notices the closes asynchronously).
    let deadline = std::time::Instant::now() + STEP;
    loop {
        let mut s = TcpStream::connect_timeout(&hub.dns, STEP).unwrap();
        s.set_read_timeout(Some(STEP)).unwrap();
        let q = dns_query(9, "gru.pop.internal", 1, None);
        let mut framed = (q.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&q);
        let _ = s.write_all(&framed);
        let mut len = [0u8; 2];
        if s.read_exact(&mut len).is_ok() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no slot came back");
    }
}

/// A burst queued at once is drained in batches (recvmmsg/sendmmsg): every query is answered,
/// each to its own sender and with its own id, none lost or mixed up.
#[test]
fn a_burst_of_queries_is_answered_completely() {
    use std::collections::BTreeSet;
    let hub = Hub::start(&[]);
    hub.register("pop-gru", "gru.pop", "sa", "10.50.1.1", 80);
    let socks: Vec<std::net::UdpSocket> = (0..4)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    for s in &socks {
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
    }
    for id in 0..400u16 {
        let s = &socks[usize::from(id) % socks.len()];
        let name = if id % 5 == 0 {
            "nope.internal"
        } else {
            "gru.pop.internal"
        };
        s.send_to(&common::dns_query(id, name, 1, None), hub.dns)
            .unwrap();
    }
    let mut seen = BTreeSet::new();
    for (k, s) in socks.iter().enumerate() {
        for _ in 0..100 {
            let mut buf = [0u8; 1500];
            let (n, _) = s.recv_from(&mut buf).expect("an answer for every query");
            let p = dns_parser::Packet::parse(&buf[..n]).unwrap();
            let id = p.header.id;
            assert_eq!(
                usize::from(id) % socks.len(),
                k,
                "answer {id} reached the wrong socket"
            );
            let expected = if id.is_multiple_of(5) {
                dns_parser::ResponseCode::NameError
            } else {
                dns_parser::ResponseCode::NoError
            };
            assert_eq!(p.header.response_code, expected, "query {id}");
            assert!(seen.insert(id), "answer {id} twice");
        }
    }
    assert_eq!(seen.len(), 400);
}
