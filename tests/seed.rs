//! The seed's field test (`shared/seeds/`), replayed on one machine through the real binary:
//! register the ten regional backends over the API, then resolve every `<pop>.pop.internal`
//! name to exactly its backend's address, over UDP and TCP, many times so that every shard
//! answers. Plus read-your-writes: a registration that was acknowledged is answered at once
//! by every shard.

mod common;

use common::{dns_query, tcp_dns, udp_dns, Hub, SEED};
use dns_parser::{Packet, RData, ResponseCode};
use std::net::{Ipv4Addr, UdpSocket};
use std::time::Duration;

/// The A records of a reply, checking the reply is a NOERROR answer to `id`.
fn a_records(reply: &[u8], id: u16) -> Vec<Ipv4Addr> {
    let p = Packet::parse(reply).expect("reply parses");
    assert_eq!(p.header.id, id);
    assert!(!p.header.query, "QR set");
    assert_eq!(p.header.response_code, ResponseCode::NoError);
    p.answers
        .iter()
        .filter_map(|r| match r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

#[test]
fn seed_field_test_ten_regions() {
    let hub = Hub::start(&[]);
    for (id, app, region, ip) in SEED {
        hub.register(id, app, region, ip, 80);
    }
    let (s, list) = hub.api("GET", "/api/v1/backends", None);
    assert_eq!((s, list["total"].as_u64()), (200, Some(10)));

    let mut qid = 1u16;
    for round in 0..20 {
        for (_, app, _, ip) in SEED {
            let name = format!("{app}.internal");
            let want: Ipv4Addr = ip.parse().unwrap();
            // UDP from a fresh socket each time: new source ports spread over both shards.
            let q = dns_query(qid, &name, 1, None);
            let reply = udp_dns(hub.dns, &q).unwrap_or_else(|| panic!("no UDP answer for {name}"));
            assert_eq!(
                a_records(&reply, qid),
                vec![want],
                "{name} over UDP, round {round}"
            );
            qid = qid.wrapping_add(1);
            if round % 4 == 0 {
                let q = dns_query(qid, &name, 1, None);
                let reply = tcp_dns(hub.dns, &q);
                assert_eq!(
                    a_records(&reply, qid),
                    vec![want],
                    "{name} over TCP, round {round}"
                );
                qid = qid.wrapping_add(1);
            }
        }
    }
}

#[test]
fn acknowledged_registration_is_answered_at_once_by_every_shard() {
    let hub = Hub::start(&[]);
    // Forty sockets, each with its own source port; SO_REUSEPORT hashes them over both shards.
    let socks: Vec<UdpSocket> = (0..40)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    for s in &socks {
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    }
    for k in 0..25u8 {
        let app = format!("app{k}.rw");
        let ip = format!("10.60.0.{}", k + 1);
        hub.register(&format!("rw-{k}"), &app, "sa", &ip, 80);
        // Right after the acknowledgement: all queries at once, then all answers.
        let name = format!("{app}.internal");
        for (i, s) in socks.iter().enumerate() {
            s.send_to(&dns_query(i as u16, &name, 1, None), hub.dns)
                .unwrap();
        }
        for (i, s) in socks.iter().enumerate() {
            let mut buf = [0u8; 1500];
            let (n, _) = s.recv_from(&mut buf).expect("an answer");
            let p = Packet::parse(&buf[..n]).unwrap();
            assert_eq!(p.header.id, i as u16);
            assert_eq!(
                p.header.response_code,
                ResponseCode::NoError,
                "{name} from socket {i}"
            );
            assert_eq!(
                a_records(&buf[..n], i as u16),
                vec![ip.parse::<Ipv4Addr>().unwrap()]
            );
        }
    }
}
