//! Micro-benchmarks of the hot pure functions: DNS answer building, backend choice, HTTP
//! request reading, and the snapshot build behind every registry change.
//!
//! `cargo bench --bench hot` (all), `cargo bench --bench hot -- publish` (a subset).
//! Figures go to `bench/RESULTS.md` (section "Micro-benchmarks").

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion};
use edgeproxy::api::http::{self, Parsed};
use edgeproxy::dns::responder::{respond, Exchange, Outcome, Transport, Zone};
use edgeproxy::geo::RegionMap;
use edgeproxy::registry::{AppGroup, Backend, BackendSpec, Registry, SnapshotCell};
use edgeproxy::select::{pick, score, Client, Scope};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

const REGIONS: [&str; 4] = ["sa", "us", "eu", "ap"];
const NOW_MS: u64 = 1_000;

fn ip(n: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n))
}

fn spec(i: u32, app: &str) -> BackendSpec {
    BackendSpec {
        ttl_secs: Some(0), // never expires: every backend stays eligible
        ..BackendSpec::new(
            &format!("b{i}"),
            app,
            REGIONS[i as usize % REGIONS.len()],
            ip(i),
            8080,
        )
    }
}

/// `apps` apps of `per_app` backends each (`a0`, `a1`, ...), published once.
fn registry(apps: u32, per_app: u32) -> (Registry, Arc<SnapshotCell>) {
    let cell = Arc::new(SnapshotCell::new());
    let mut reg = Registry::new(1, 0, 600, cell.clone());
    for a in 0..apps {
        let app = format!("a{a}");
        for j in 0..per_app {
            reg.register(spec(a * per_app + j, &app), NOW_MS);
        }
    }
    reg.publish();
    (reg, cell)
}

fn dns_query(name: &str) -> Vec<u8> {
    dns_query_typed(name, 1)
}

fn dns_query_typed(name: &str, qtype: u16) -> Vec<u8> {
    let mut p = vec![0xbe, 0xef, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        p.push(label.len() as u8);
        p.extend_from_slice(label.as_bytes());
    }
    p.push(0); // root
    p.extend_from_slice(&qtype.to_be_bytes());
    p.extend_from_slice(&[0, 1]); // IN
    p
}

/// `p` with an OPT record carrying an EDNS Client Subnet option for 10.50.3.0/24.
fn with_ecs(mut p: Vec<u8>) -> Vec<u8> {
    p[11] = 1;
    p.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 11, 0, 8, 0, 7]);
    p.extend_from_slice(&[0, 1, 24, 0, 10, 50, 3]);
    p
}

fn bench_dns(c: &mut Criterion) {
    let zone = Zone::new("pop.internal", 30, 1232, "sa", RegionMap::overlay_default());
    let ex = Exchange {
        client: "10.50.1.7".parse().unwrap(),
        server: Some("127.0.0.53".parse().unwrap()),
        transport: Transport::Udp { max_size: 1232 },
        now_ms: NOW_MS,
    };
    let mut g = c.benchmark_group("dns_respond");
    // (label, apps, backends per app): the asked app always exists.
    for (label, apps, per_app) in [
        ("10_apps_x1", 10, 1),
        ("1_app_x10", 1, 10),
        ("100k_apps_x1", 100_000, 1),
        ("1_app_x1000", 1, 1000),
    ] {
        let (_reg, cell) = registry(apps, per_app);
        let snap = cell.load_full();
        let packet = dns_query(&format!("a{}.pop.internal", apps / 2));
        let mut out = Vec::with_capacity(1232);
        out.clear();
        assert!(matches!(
            respond(&packet, &zone, &snap, &ex, &mut out),
            Outcome::Answered { .. }
        ));
        g.bench_function(label, |b| {
            b.iter(|| {
                out.clear();
                respond(black_box(&packet), &zone, &snap, &ex, &mut out)
            })
        });
    }
    // The other name forms, on one app of 100 backends over four regions.
    let (_reg, cell) = registry(1, 100);
    let snap = cell.load_full();
    for (label, packet) in [
        ("ecs_1_app_x100", with_ecs(dns_query("a0.pop.internal"))),
        ("region_1_app_x100", dns_query("sa.a0.pop.internal")),
        (
            "top3_1_app_x100",
            dns_query("top3.nearest.of.a0.pop.internal"),
        ),
        (
            "srv_1_app_x100",
            dns_query_typed("_a0._tcp.pop.internal", 33),
        ),
        ("vm_1_app_x100", dns_query("b42.vm.a0.pop.internal")),
        (
            "vms_txt_1_app_x100",
            dns_query_typed("vms.a0.pop.internal", 16),
        ),
    ] {
        let mut out = Vec::with_capacity(1232);
        assert!(matches!(
            respond(&packet, &zone, &snap, &ex, &mut out),
            Outcome::Answered { .. }
        ));
        g.bench_function(label, |b| {
            b.iter(|| {
                out.clear();
                respond(black_box(&packet), &zone, &snap, &ex, &mut out)
            })
        });
    }
    let (_reg, cell) = registry(10, 1);
    let snap = cell.load_full();
    let nx = dns_query("nosuchapp.pop.internal");
    let mut out = Vec::with_capacity(1232);
    g.bench_function("nxdomain", |b| {
        b.iter(|| {
            out.clear();
            respond(black_box(&nx), &zone, &snap, &ex, &mut out)
        })
    });
    g.finish();
}

/// The selector before issue #5 (one level: every member of the tier scored), kept here as
/// the obvious alternative the two-level rendezvous is measured against.
fn flat_pick<'s>(
    group: &'s AppGroup,
    region: &str,
    client: &Client<'_>,
) -> Option<&'s Arc<Backend>> {
    let mut best: Option<(f64, &Arc<Backend>)> = None;
    for b in group.region(region) {
        if !b.eligible(NOW_MS) {
            continue;
        }
        let s = score(client.key, b.key, b.weight);
        if best.is_none_or(|(bs, _)| s > bs) {
            best = Some((s, b));
        }
    }
    best.map(|(_, b)| b)
}

fn bench_pick(c: &mut Criterion) {
    let mut g = c.benchmark_group("select_pick");
    // One app of N backends over 4 regions; the client's region (eu) holds N/4 of them.
    for per_app in [1u32, 10, 100, 1000, 100_000] {
        let (_reg, cell) = registry(1, per_app);
        let snap = cell.load_full();
        let scope = Scope::of(&snap, Some("a0")).unwrap();
        let mut n = 0u32;
        g.bench_function(format!("app_of_{per_app}"), |b| {
            b.iter(|| {
                n = n.wrapping_add(1);
                let client = Client::new(ip(n), Some("eu"));
                pick(black_box(scope), &client, "sa", NOW_MS, &[]).map(|(b, _)| b.key)
            })
        });
        if [10, 1000, 100_000].contains(&per_app) {
            let group = snap.app("a0").unwrap();
            g.bench_function(format!("flat_reference/app_of_{per_app}"), |b| {
                b.iter(|| {
                    n = n.wrapping_add(1);
                    let client = Client::new(ip(n), Some("eu"));
                    flat_pick(black_box(group), "eu", &client).map(|b| b.key)
                })
            });
        }
    }
    // Under load: every backend has connections, so the bounded-load cap is computed.
    for per_app in [10u32, 1000, 100_000] {
        let (_reg, cell) = registry(1, per_app);
        let snap = cell.load_full();
        for (i, b) in snap.app("a0").unwrap().backends().enumerate() {
            b.live
                .shard_counter(0)
                .store(1 + (i % 7) as u32, std::sync::atomic::Ordering::Relaxed);
        }
        let scope = Scope::of(&snap, Some("a0")).unwrap();
        let mut n = 0u32;
        g.bench_function(format!("loaded/app_of_{per_app}"), |b| {
            b.iter(|| {
                n = n.wrapping_add(1);
                let client = Client::new(ip(n), Some("eu"));
                pick(black_box(scope), &client, "sa", NOW_MS, &[]).map(|(b, _)| b.key)
            })
        });
    }
    // The default listener: every app's backends (10 apps of 1), client region unknown.
    let (_reg, cell) = registry(10, 1);
    let snap = cell.load_full();
    let scope = Scope::of(&snap, None).unwrap();
    let mut n = 0u32;
    g.bench_function("all_10_apps_x1", |b| {
        b.iter(|| {
            n = n.wrapping_add(1);
            let client = Client::new(ip(n), None);
            pick(black_box(scope), &client, "sa", NOW_MS, &[]).map(|(b, _)| b.key)
        })
    });
    g.finish();
}

fn bench_http(c: &mut Criterion) {
    let body = br#"{"id":"web-7f3a","app":"web","region":"eu","ip":"10.50.3.17","port":8080,"weight":2,"ttl_secs":30}"#;
    let mut register = format!(
        "POST /api/v1/register HTTP/1.1\r\nHost: 127.0.0.1:8081\r\nUser-Agent: edgebench\r\n\
         Authorization: Bearer 0123456789abcdef\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    register.extend_from_slice(body);
    let heartbeat = b"PUT /api/v1/heartbeat/web-7f3a HTTP/1.1\r\nHost: 127.0.0.1:8081\r\n\
                      Content-Length: 0\r\n\r\n"
        .to_vec();
    let mut g = c.benchmark_group("http_parse");
    for (label, req) in [("register_post", &register), ("heartbeat_put", &heartbeat)] {
        assert!(matches!(http::parse(req), Parsed::Complete(..)));
        g.bench_function(label, |b| {
            b.iter(|| matches!(http::parse(black_box(req)), Parsed::Complete(..)))
        });
    }
    g.finish();
}

/// The snapshot build behind every registry change: only the changed app's group is rebuilt,
/// so "one change" costs O(backends of that app) + O(apps) for the new group table.
fn bench_publish(c: &mut Criterion) {
    let mut g = c.benchmark_group("registry_publish");
    g.sample_size(20).measurement_time(Duration::from_secs(4));
    for n in [10u32, 10_000, 100_000] {
        // One change (a re-registration with another weight) in an app of n backends.
        let (mut reg, _cell) = registry(1, n);
        let mut w = 1;
        g.bench_function(format!("one_change/1_app_x{n}"), |b| {
            b.iter(|| {
                w = w % 100 + 1;
                reg.register(
                    BackendSpec {
                        weight: w,
                        ..spec(0, "a0")
                    },
                    NOW_MS,
                );
                reg.publish()
            })
        });
        // One change among n apps of 1 backend each.
        let (mut reg, _cell) = registry(n, 1);
        g.bench_function(format!("one_change/{n}_apps_x1"), |b| {
            b.iter(|| {
                w = w % 100 + 1;
                reg.register(
                    BackendSpec {
                        weight: w,
                        ..spec(0, "a0")
                    },
                    NOW_MS,
                );
                reg.publish()
            })
        });
    }
    // A full build (every app dirty), as after a restore: n backends registered, then one
    // publish. Only the publish is timed.
    for n in [10u32, 10_000, 100_000] {
        for (label, apps, per_app) in [("1_app", 1, n), ("apps_x1", n, 1)] {
            g.bench_function(format!("full_build/{label}/{n}"), |b| {
                b.iter_batched_ref(
                    || {
                        let cell = Arc::new(SnapshotCell::new());
                        let mut reg = Registry::new(1, 0, 600, cell);
                        for a in 0..apps {
                            let app = format!("a{a}");
                            for j in 0..per_app {
                                reg.register(spec(a * per_app + j, &app), NOW_MS);
                            }
                        }
                        reg
                    },
                    |reg| reg.publish(),
                    BatchSize::PerIteration,
                )
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench_dns, bench_pick, bench_http, bench_publish);
criterion_main!(benches);
