//! DNS name forms and EDNS Client Subnet through the real binary: backends registered over the
//! API, every form asked over UDP and TCP (see `src/dns/responder.rs` for the grammar).

mod common;

use common::{dns_query, tcp_dns, udp_dns, Hub, SEED};
use dns_parser::{Packet, RData, ResponseCode};
use std::net::IpAddr;

const A: u16 = 1;
const TXT: u16 = 16;
const AAAA: u16 = 28;
const SRV: u16 = 33;
const ANY: u16 = 255;

/// What an answer says, in a form tests compare: rcode, TC, and the answer records as text.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    rcode: ResponseCode,
    truncated: bool,
    records: Vec<String>,
    additional: usize,
}

fn read(reply: &[u8], id: u16) -> Answer {
    let p = Packet::parse(reply).expect("reply parses");
    assert_eq!(p.header.id, id);
    assert!(!p.header.query);
    let records = p
        .answers
        .iter()
        .map(|rr| match rr.data {
            RData::A(ref a) => a.0.to_string(),
            RData::AAAA(ref a) => a.0.to_string(),
            RData::SRV(ref s) => format!("{} {} {} {}", s.priority, s.weight, s.port, s.target),
            RData::TXT(ref t) => String::from_utf8(t.iter().collect::<Vec<_>>().concat()).unwrap(),
            ref other => panic!("unexpected record {other:?}"),
        })
        .collect();
    Answer {
        rcode: p.header.response_code,
        truncated: p.header.truncated,
        records,
        additional: p.additional.len(),
    }
}

/// Asks over UDP (EDNS 1232) and over TCP; both must agree. Returns the answer.
fn ask(hub: &Hub, id: u16, name: &str, qtype: u16) -> Answer {
    let q = dns_query(id, name, qtype, Some(1232));
    let udp = udp_dns(hub.dns, &q).unwrap_or_else(|| panic!("no UDP answer for {name}"));
    let tcp = tcp_dns(hub.dns, &q);
    let (udp, tcp) = (read(&udp, id), read(&tcp, id));
    assert_eq!(udp, tcp, "{name}: UDP and TCP differ");
    udp
}

fn ok(records: &[&str]) -> Answer {
    Answer {
        rcode: ResponseCode::NoError,
        truncated: false,
        records: records.iter().map(|s| s.to_string()).collect(),
        additional: 0,
    }
}

fn nxdomain() -> Answer {
    Answer {
        rcode: ResponseCode::NameError,
        ..ok(&[])
    }
}

/// The seed, plus `web` in sa (two, and one registered as `gru`: region sa, country BR) and eu
/// (v4 and v6).
fn hub_with(extra: &[&str]) -> Hub {
    let hub = Hub::start(extra);
    for (id, app, region, ip) in SEED {
        hub.register(id, app, region, ip, 80);
    }
    hub.register("w-sa1", "web", "sa", "10.9.1.1", 8001);
    hub.register("w-sa2", "web", "sa", "10.9.1.2", 8002);
    hub.register("w-gru", "web", "gru", "10.9.1.3", 8003);
    hub.register("w-eu", "web", "eu", "10.9.3.1", 8004);
    hub.register("w-v6", "web", "eu", "fd00::31", 8005);
    hub
}

#[test]
fn every_name_form_over_udp_and_tcp() {
    let hub = hub_with(&["--dns-pop-addr=10.50.0.1"]);
    // SRV priorities: the client (127.0.0.1) has no region, so the hub's (sa) is 1, others 2.
    let mut id = 0;
    let mut check = |name: &str, qtype: u16, want: Answer| {
        id += 1;
        assert_eq!(ask(&hub, id, name, qtype), want, "{name} type {qtype}");
    };
    check("gru.pop.internal", A, ok(&["10.50.1.1"]));
    check(
        "sa.web.internal",
        A,
        ok(&["10.9.1.1", "10.9.1.2", "10.9.1.3"]),
    );
    // A POP code: the backends of its region registered with it (its country).
    check("GRU.web.internal", A, ok(&["10.9.1.3"]));
    check("eu.web.internal", ANY, ok(&["10.9.3.1", "fd00::31"]));
    check("eu.web.internal", AAAA, ok(&["fd00::31"]));
    check("us.web.internal", A, nxdomain());
    check("sa.web.internal", AAAA, ok(&[]));
    // The client (127.0.0.1) has no region: the hub's (sa) comes first.
    let top3 = ask(&hub, 100, "top3.nearest.of.web.internal", A);
    let mut sa: Vec<String> = top3.records.clone();
    sa.sort();
    assert_eq!(sa, ["10.9.1.1", "10.9.1.2", "10.9.1.3"]);
    let top16 = ask(&hub, 101, "top16.nearest.of.web.internal", A);
    assert_eq!(top16.records.len(), 4);
    assert_eq!(top16.records[..3], top3.records[..]);
    check("top0.nearest.of.web.internal", A, nxdomain());
    check("vm.web.internal", A, ok(&[]));
    check("w-gru.vm.web.internal", A, ok(&["10.9.1.3"]));
    check("w-v6.vm.web.internal", AAAA, ok(&["fd00::31"]));
    check("w-nope.vm.web.internal", A, nxdomain());
    let srv = ask(&hub, 102, "_web._tcp.internal", SRV);
    let mut records = srv.records.clone();
    records.sort();
    assert_eq!(
        records,
        [
            "1 1 8001 w-sa1.vm.web.internal",
            "1 1 8002 w-sa2.vm.web.internal",
            "1 1 8003 w-gru.vm.web.internal",
            "2 1 8004 w-eu.vm.web.internal",
            "2 1 8005 w-v6.vm.web.internal",
        ]
    );
    assert_eq!(srv.additional, 5, "an address per target");
    check(
        "_gru.pop._tcp.internal",
        SRV,
        Answer {
            additional: 1,
            ..ok(&["1 1 80 pop-gru.vm.gru.pop.internal"])
        },
    );
    check("pop-gru.vm.gru.pop.internal", A, ok(&["10.50.1.1"]));
    check(
        "_apps.internal",
        TXT,
        ok(&[
            "cdg.pop,fra.pop,gru.pop,iad.pop,lax.pop,lhr.pop,nrt.pop,ord.pop,sin.pop,syd.pop,web",
        ]),
    );
    check("regions.web.internal", TXT, ok(&["eu,sa"]));
    check(
        "vms.web.internal",
        TXT,
        ok(&["w-eu eu,w-gru sa,w-sa1 sa,w-sa2 sa,w-v6 eu"]),
    );
    check("regions.web.internal", A, ok(&[]));
    check(
        "eu.backends.internal",
        A,
        ok(&["10.9.3.1", "10.50.3.1", "10.50.3.2", "10.50.3.3"]),
    );
    check("hkg.backends.internal", A, nxdomain());
    check("sa.pops.internal", A, ok(&["10.50.0.1"]));
    check("eu.pops.internal", A, nxdomain());
    // A deregistered backend leaves every form at once.
    let (status, _) = hub.api("DELETE", "/api/v1/backends/w-gru", None);
    assert_eq!(status, 200);
    check("gru.web.internal", A, nxdomain());
    check("w-gru.vm.web.internal", A, nxdomain());
    check("regions.web.internal", TXT, ok(&["eu,sa"]));
    // Draining too.
    let (status, _) = hub.api("POST", "/api/v1/backends/w-sa2/drain", None);
    assert_eq!(status, 200);
    check("sa.web.internal", A, ok(&["10.9.1.1"]));
}

#[test]
fn pops_default_to_the_address_the_query_arrived_on() {
    let hub = Hub::start(&["--region=eu"]);
    let a = ask(&hub, 1, "eu.pops.internal", A);
    assert_eq!(a, ok(&[&hub.dns.ip().to_string()]));
    assert_eq!(ask(&hub, 2, "sa.pops.internal", A), nxdomain());
}

/// An ANY query with an OPT record (1232 bytes) carrying one ECS option of `data`. (ANY: the
/// `<app>` answer is the chosen backend's address, whichever its family.)
fn ecs_query(id: u16, name: &str, data: &[u8]) -> Vec<u8> {
    let mut q = dns_query(id, name, ANY, None);
    q[11] = 1;
    q.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0]);
    q.extend_from_slice(&((data.len() + 4) as u16).to_be_bytes());
    q.extend_from_slice(&[0, 8]);
    q.extend_from_slice(&(data.len() as u16).to_be_bytes());
    q.extend_from_slice(data);
    q
}

/// The answer's ECS option data, if its OPT record has one.
fn ecs_echo(reply: &[u8]) -> Option<Vec<u8>> {
    let p = Packet::parse(reply).unwrap();
    let RData::Unknown(mut data) = p.opt?.data else {
        panic!("OPT data not raw")
    };
    while data.len() >= 4 {
        let code = u16::from_be_bytes([data[0], data[1]]);
        let len = usize::from(u16::from_be_bytes([data[2], data[3]]));
        if code == 8 {
            return Some(data[4..4 + len].to_vec());
        }
        data = &data[4 + len..];
    }
    None
}

#[test]
fn client_subnet_chooses_the_region_and_can_be_turned_off() {
    let on = hub_with(&[]);
    let off = hub_with(&["--dns-ecs=false"]);
    // From 127.0.0.1 (no region) the hub's region, sa, wins; ECS from eu moves the answer.
    let sa = ["10.9.1.1", "10.9.1.2", "10.9.1.3"];
    let eu_subnet = [0, 1, 24, 0, 10, 50, 3];
    for (n, hub) in [&on, &off].into_iter().enumerate() {
        let plain = read(
            &udp_dns(hub.dns, &dns_query(1, "web.internal", A, None)).unwrap(),
            1,
        );
        assert!(sa.contains(&plain.records[0].as_str()), "{plain:?}");
        let q = ecs_query(2, "web.internal", &eu_subnet);
        for reply in [udp_dns(hub.dns, &q).unwrap(), tcp_dns(hub.dns, &q)] {
            let a = read(&reply, 2);
            if n == 0 {
                assert!(
                    ["10.9.3.1", "fd00::31"].contains(&a.records[0].as_str()),
                    "{a:?}"
                );
                assert_eq!(a.records.len(), 1);
                assert_eq!(ecs_echo(&reply), Some(vec![0, 1, 24, 24, 10, 50, 3]));
            } else {
                assert!(sa.contains(&a.records[0].as_str()), "{a:?}");
                assert_eq!(ecs_echo(&reply), None);
            }
        }
        // A malformed option: FORMERR when honoured, ignored when not.
        let q = ecs_query(3, "web.internal", &[0, 1, 23, 0, 10, 50, 3]);
        let a = read(&udp_dns(hub.dns, &q).unwrap(), 3);
        let want = if n == 0 {
            ResponseCode::FormatError
        } else {
            ResponseCode::NoError
        };
        assert_eq!(a.rcode, want);
    }
    // top<N> follows the subnet too: eu first.
    let q = ecs_query(4, "top2.nearest.of.web.internal", &eu_subnet);
    let mut top2 = read(&tcp_dns(on.dns, &q), 4).records;
    top2.sort();
    assert_eq!(top2, ["10.9.3.1", "fd00::31"]);
}

#[test]
fn large_answers_are_cut_over_udp_and_whole_over_tcp() {
    let hub = Hub::start(&[]);
    for i in 0..120 {
        hub.register(
            &format!("b{i:03}"),
            "big",
            "sa",
            &format!("10.8.0.{}", i + 1),
            9000 + i,
        );
    }
    // No EDNS: 512 bytes, TC, whole records only.
    let q = dns_query(1, "sa.big.internal", A, None);
    let reply = udp_dns(hub.dns, &q).unwrap();
    assert!(reply.len() <= 512);
    let a = read(&reply, 1);
    assert!(a.truncated && !a.records.is_empty() && a.records.len() < 120);
    // EDNS 1232: more, still cut.
    let q = dns_query(2, "sa.big.internal", A, Some(1232));
    let reply = udp_dns(hub.dns, &q).unwrap();
    assert!(reply.len() <= 1232);
    let b = read(&reply, 2);
    assert!(b.truncated && b.records.len() > a.records.len());
    // TCP: all of them, sorted, for the address set and for SRV with every address.
    let whole = read(&tcp_dns(hub.dns, &q), 2);
    assert!(!whole.truncated);
    let want: Vec<IpAddr> = (0..120)
        .map(|i| format!("10.8.0.{}", i + 1).parse().unwrap())
        .collect();
    let got: Vec<IpAddr> = whole.records.iter().map(|r| r.parse().unwrap()).collect();
    assert_eq!(got, want);
    let srv = read(
        &tcp_dns(hub.dns, &dns_query(3, "_big._tcp.internal", SRV, None)),
        3,
    );
    assert!(!srv.truncated);
    assert_eq!((srv.records.len(), srv.additional), (120, 120));
    let srv_udp = read(
        &udp_dns(hub.dns, &dns_query(4, "_big._tcp.internal", SRV, None)).unwrap(),
        4,
    );
    assert!(srv_udp.truncated && srv_udp.records.len() < 120);
}
