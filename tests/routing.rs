//! Routing through the real binary (issue #5): clients from each overlay subnet reach their own
//! region's backend over TCP and get it from DNS, weights split real connections, the route API
//! explains the choice, and a GeoIP database places public addresses.
//!
//! The overlay is played on loopback: `--region-map` maps 127.0.1.0/24 to `sa`, 127.0.2.0/24 to
//! `us`, … and clients bind a source address in their subnet before connecting (all of
//! 127.0.0.0/8 is local on Linux). Backends listen on their own 127.0.X.10 addresses, so a DNS
//! answer names the region it came from.

mod common;

#[path = "../src/geo/testdb.rs"]
mod testdb;

use common::{dns_query, Hub, STEP};
use dns_parser::{Packet, RData, ResponseCode};
use socket2::{Domain, Socket, Type};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};

const REGION_MAP: &str =
    "--region-map=127.0.1.0/24=sa,127.0.2.0/24=us,127.0.3.0/24=eu,127.0.4.0/24=ap,127.1.0.0/16=sa";
const REGIONS: [&str; 4] = ["sa", "us", "eu", "ap"];

/// A backend on `ip` that answers each connection with `tag`, then closes.
fn tag_backend(ip: &str, tag: &'static str) -> SocketAddr {
    let l = TcpListener::bind((ip, 0)).unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let _ = s.write_all(tag.as_bytes());
            let _ = s.shutdown(Shutdown::Write);
            // Wait for the client's close so the proxy sees an orderly end.
            let mut sink = [0u8; 64];
            let _ = s.read(&mut sink);
        }
    });
    addr
}

/// Connects to `to` from `from` (port chosen by the OS) through the proxy; the backend's tag.
fn fetch_from(from: Ipv4Addr, to: SocketAddr) -> String {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::new(from.into(), 0).into()).unwrap();
    s.connect_timeout(&to.into(), STEP).unwrap();
    let mut s: TcpStream = s.into();
    s.set_read_timeout(Some(STEP)).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// Asks `name` (A) from a UDP socket bound to `from`; the one address answered.
fn resolve_from(from: Ipv4Addr, dns: SocketAddr, name: &str) -> Option<Ipv4Addr> {
    let sock = UdpSocket::bind((from, 0)).unwrap();
    sock.set_read_timeout(Some(STEP)).unwrap();
    sock.send_to(&dns_query(7, name, 1, None), dns).unwrap();
    let mut buf = [0u8; 1500];
    let (n, _) = sock.recv_from(&mut buf).unwrap();
    let p = Packet::parse(&buf[..n]).unwrap();
    if p.header.response_code != ResponseCode::NoError {
        return None;
    }
    p.answers.iter().find_map(|a| match a.data {
        RData::A(a) => Some(a.0),
        _ => None,
    })
}

/// One `web` backend per region on 127.0.X.10, tagged with its region.
fn regional_hub(extra: &[&str]) -> Hub {
    let mut args = vec![REGION_MAP, "--region=sa"];
    args.extend_from_slice(extra);
    let hub = Hub::start(&args);
    for (i, region) in REGIONS.iter().enumerate() {
        let ip = format!("127.0.{}.10", i + 1);
        let tag: &'static str = Box::leak(region.to_string().into_boxed_str());
        let addr = tag_backend(&ip, tag);
        hub.register(&format!("web-{region}"), "web", region, &ip, addr.port());
    }
    hub
}

#[test]
fn each_subnet_reaches_its_region_over_tcp_and_dns_and_the_route_api_explains() {
    let hub = regional_hub(&["--log-level=debug"]);
    for (i, region) in REGIONS.iter().enumerate() {
        for host in [1u8, 2, 77] {
            let client = Ipv4Addr::new(127, 0, i as u8 + 1, host);
            assert_eq!(fetch_from(client, hub.proxy), *region, "TCP from {client}");
            let ip = resolve_from(client, hub.dns, "web.internal");
            assert_eq!(
                ip,
                Some(Ipv4Addr::new(127, 0, i as u8 + 1, 10)),
                "DNS from {client}"
            );
        }
    }
    // The proxied decision is in the debug log.
    let line = hub.wait_log("route 127.0.3.1 (region eu");
    assert!(
        line.contains("-> web-eu") && line.contains("tier region"),
        "{line}"
    );

    // The route API: the eu client's choice, and why each other backend lost.
    let (status, body) = hub.api("GET", "/api/v1/route?app=web&client=127.0.3.9", None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["chosen"]["id"], "web-eu");
    assert_eq!(body["chosen"]["ip"], "127.0.3.10");
    assert_eq!(body["tier"], "region");
    assert_eq!(body["client"]["region"], "eu");
    let cands = body["candidates"].as_array().unwrap();
    let tier_why = |id: &str| {
        let c = cands.iter().find(|c| c["id"] == id).unwrap();
        (
            c["tier"].as_str().unwrap().to_string(),
            c["why"].as_str().unwrap().to_string(),
        )
    };
    assert_eq!(tier_why("web-eu"), ("region".into(), "chosen".into()));
    assert_eq!(
        tier_why("web-sa"),
        ("hub_region".into(), "lower tier".into())
    );
    assert_eq!(tier_why("web-us"), ("near:1".into(), "lower tier".into()));
    assert_eq!(tier_why("web-ap"), ("near:3".into(), "lower tier".into()));
    // Drained, the eu backend is skipped and says why; the hub's region serves eu clients.
    let (s, _) = hub.api("POST", "/api/v1/backends/web-eu/drain", Some(""));
    assert_eq!(s, 200);
    let (_, body) = hub.api("GET", "/api/v1/route?app=web&client=127.0.3.9", None);
    assert_eq!(
        (body["chosen"]["id"].as_str(), body["tier"].as_str()),
        (Some("web-sa"), Some("hub_region"))
    );
    assert_eq!(tier_why_in(&body, "web-eu"), "draining");
    assert_eq!(fetch_from(Ipv4Addr::new(127, 0, 3, 1), hub.proxy), "sa");
    assert_eq!(
        resolve_from(Ipv4Addr::new(127, 0, 3, 1), hub.dns, "web.internal"),
        Some(Ipv4Addr::new(127, 0, 1, 10))
    );
    // Bad questions get JSON errors.
    let (s, body) = hub.api("GET", "/api/v1/route?app=web", None);
    assert_eq!((s, body["field"].as_str()), (400, Some("client")));
    let (s, body) = hub.api("GET", "/api/v1/route?app=web&client=not-an-ip", None);
    assert_eq!((s, body["field"].as_str()), (400, Some("client")));
    let (s, body) = hub.api("GET", "/api/v1/route?app=nope&client=127.0.0.1", None);
    assert_eq!((s, body["field"].as_str()), (404, Some("app")));
}

fn tier_why_in(body: &serde_json::Value, id: &str) -> String {
    body["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .unwrap()["why"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn weights_split_real_connections() {
    let hub = Hub::start(&[REGION_MAP, "--region=sa"]);
    for (w, tag) in [(1, "w1"), (2, "w2"), (3, "w3")] {
        let addr = tag_backend("127.0.1.20", tag);
        hub.register_json(&format!(
            r#"{{"id":"{tag}","app":"split","region":"sa","ip":"127.0.1.20","port":{},"weight":{w}}}"#,
            addr.port()
        ));
    }
    let split = hub.proxy;
    let mut counts = std::collections::BTreeMap::new();
    let clients = 1_200u32;
    for n in 0..clients {
        // Distinct client addresses (stickiness is per address), all in sa's 127.1.0.0/16.
        let client = Ipv4Addr::new(127, 1, (n / 250) as u8, (n % 250) as u8 + 1);
        *counts.entry(fetch_from(client, split)).or_insert(0u32) += 1;
    }
    for (tag, w) in [("w1", 1.0), ("w2", 2.0), ("w3", 3.0)] {
        let got = f64::from(counts.get(tag).copied().unwrap_or(0));
        let want = f64::from(clients) * w / 6.0;
        assert!(
            (got - want).abs() / want < 0.2,
            "{tag}: {got} of {clients}, want about {want}: {counts:?}"
        );
    }
    // Sticky: a client asked again lands where it did.
    let c = Ipv4Addr::new(127, 1, 0, 1);
    let first = fetch_from(c, split);
    for _ in 0..5 {
        assert_eq!(fetch_from(c, split), first);
    }
}

#[test]
fn registrations_resolve_pop_codes_and_refuse_unknown_regions() {
    let hub = Hub::start(&[]);
    hub.register("pop-gru", "gru.pop", "GRU", "10.50.1.1", 80);
    let (_, b) = hub.api("GET", "/api/v1/backends/pop-gru", None);
    assert_eq!(
        (b["region"].as_str(), b["country"].as_str()),
        (Some("sa"), Some("BR"))
    );
    let (s, b) = hub.api(
        "POST",
        "/api/v1/register",
        Some(r#"{"id":"x","app":"x","region":"ue","ip":"10.50.3.1","port":80}"#),
    );
    assert_eq!((s, b["field"].as_str()), (400, Some("region")));
    assert!(
        b["error"].as_str().unwrap().contains("unknown region 'ue'"),
        "{b}"
    );
}

#[test]
fn a_geoip_database_places_public_addresses() {
    let dir = common::StateDir::new();
    let db = dir.0.join("country.mmdb");
    // Loopback stands in for public space: the region map does not cover 127.0.9.0/24.
    std::fs::write(
        &db,
        testdb::country_db(&[("127.0.9.0/24", "JP"), ("127.0.8.0/24", "DE")]),
    )
    .unwrap();
    let geoip = format!("--geoip-db={}", db.display());
    let hub = regional_hub(&[&geoip]);
    assert_eq!(
        resolve_from(Ipv4Addr::new(127, 0, 9, 1), hub.dns, "web.internal"),
        Some(Ipv4Addr::new(127, 0, 4, 10))
    );
    assert_eq!(fetch_from(Ipv4Addr::new(127, 0, 8, 1), hub.proxy), "eu");
    let (_, body) = hub.api("GET", "/api/v1/route?app=web&client=127.0.9.200", None);
    assert_eq!(body["client"]["country"], "JP");
    assert_eq!(body["client"]["source"], "geoip");
    assert_eq!(body["chosen"]["id"], "web-ap");
    // A file that is not a database stops the hub at startup, naming it.
    std::fs::write(&db, b"not a database").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_edgeproxy"))
        .args([
            geoip.as_str(),
            "--persist=false",
            "--listen-addr=127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is not a MaxMind database") && err.contains("country.mmdb"),
        "{err}"
    );
}
