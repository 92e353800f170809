//! Smoke tests of the `edgebench` load generator (bench/edgebench): one short run of every
//! scenario kind, against the real hub where the hub serves it (DNS, API, publish latency),
//! against edgebench's own echo/discard servers for TCP (until the proxy lands on main) and
//! against an in-test rustls server for TLS. 127.0.0.1 only; about a second per run; no
//! assertion on timing, only on what was counted.

mod common;

use clap::Parser;
use common::{Hub, SEED};
use edgebench::{Cli, Summary};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

/// One edgebench run at a time: each starts glommio executors, which lock memory.
static SERIAL: Mutex<()> = Mutex::new(());

fn bench(args: &[&str]) -> Summary {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cli = Cli::try_parse_from(std::iter::once("edgebench").chain(args.iter().copied()))
        .unwrap_or_else(|e| panic!("edgebench {args:?}: {e}"));
    edgebench::execute(cli)
        .unwrap_or_else(|e| panic!("edgebench {args:?}: {e}"))
        .expect("a client scenario has a summary")
}

/// Common arguments: one shard, a short run, quiet.
fn short<'a>(scenario: &'a str, target: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        scenario,
        "--target",
        target,
        "-d",
        "1s",
        "-q",
        "--timeout",
        "2s",
    ];
    v.extend_from_slice(extra);
    v
}

fn temp_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!(
        "edgeproxy-bench-smoke-{}-{name}",
        std::process::id()
    ))
}

#[test]
fn tcp_scenarios_against_edgebench_echo() {
    let echo = {
        let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        edgebench::server::spawn_echo(
            "127.0.0.1:0".parse().unwrap(),
            1,
            None,
            false,
            Duration::from_secs(20),
        )
        .expect("echo server")
    };
    let addr = echo.addr.to_string();

    let rr = bench(&short("tcp-rr", &addr, &["-c", "4", "--size", "64"]));
    assert!(rr.counts.ok > 0, "{rr:?}");
    assert_eq!(rr.counts.errors, 0, "{:?}", rr.errors);
    assert_eq!(rr.counts.bytes, rr.counts.ok * 128);

    // Open loop, 200/s for 1 s: exactly 200 operations fall due, and each one is accounted
    // for (done, failed, or missed because every worker was busy).
    let open = bench(&short("tcp-rr", &addr, &["-c", "4", "--rate", "200"]));
    assert_eq!(open.mode, "open");
    assert!(open.start_lateness_us.is_some() && rr.start_lateness_us.is_none());
    assert!(open.counts.ok > 0, "{open:?}");
    assert_eq!(
        open.counts.ok + open.counts.errors + open.counts.missed,
        200,
        "{open:?}"
    );

    // The same with glommio tasks instead of the epoll engine.
    let tasks = bench(&short("tcp-rr", &addr, &["-c", "2", "--engine", "glommio"]));
    assert!(tasks.counts.ok > 0, "{tasks:?}");
    assert_eq!(tasks.counts.errors, 0, "{:?}", tasks.errors);
    assert_eq!(tasks.params["engine"], "glommio");
    assert_eq!(rr.params["engine"], "epoll");

    let conn = bench(&short("tcp-connect", &addr, &["-c", "2"]));
    assert!(conn.counts.ok > 0, "{conn:?}");
    assert_eq!(conn.counts.errors, 0, "{:?}", conn.errors);

    // Bulk into its own discard backend: one process provides both ends.
    let bulk = bench(&[
        "tcp-bulk",
        "--sink",
        "127.0.0.1:0",
        "-c",
        "2",
        "-d",
        "1s",
        "-q",
        "--size",
        "16k",
    ]);
    assert!(bulk.counts.bytes >= 16384, "{bulk:?}");
    assert_eq!(bulk.counts.errors, 0, "{:?}", bulk.errors);

    // A listener that never accepts: connections complete in its backlog but no answer comes;
    // the watchdog times every request out and the run still ends by itself.
    let mute = TcpListener::bind("127.0.0.1:0").unwrap();
    let stuck = bench(&[
        "tcp-rr",
        "-t",
        &mute.local_addr().unwrap().to_string(),
        "-c",
        "2",
        "-d",
        "300ms",
        "--timeout",
        "200ms",
        "-q",
    ]);
    assert_eq!(stuck.counts.ok, 0);
    assert!(stuck.errors["timeout"] >= 2, "{:?}", stuck.errors);

    // Nothing listening: errors are counted by kind, and the run still ends by itself.
    let dead = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let refused = bench(&short("tcp-rr", &dead.to_string(), &["-c", "1"]));
    assert_eq!(refused.counts.ok, 0);
    assert!(
        refused.errors.contains_key("connect-refused"),
        "{:?}",
        refused.errors
    );
}

#[test]
fn dns_over_udp_and_tcp_against_the_hub() {
    let hub = Hub::start(&[]);
    for (id, app, region, ip) in SEED {
        hub.register(id, app, region, ip, 80);
    }
    let queries = temp_path("queries.txt");
    let mut text = String::from("# dnsperf format\n");
    for (_, app, _, _) in SEED {
        text.push_str(&format!("{app}.internal A\n"));
    }
    text.push_str("nope.internal A\n");
    std::fs::write(&queries, text).unwrap();
    let json = temp_path("dns.json");
    let dns = hub.dns.to_string();
    let q = queries.to_str().unwrap();
    let udp = bench(&short(
        "dns",
        &dns,
        &["-c", "4", "-f", q, "--json", json.to_str().unwrap()],
    ));
    assert!(udp.counts.ok > 0, "{udp:?}");
    assert_eq!(udp.counts.errors, 0, "{:?}", udp.errors);
    // 10 of the 11 names exist: both rcodes are counted.
    assert!(
        udp.outcomes["NOERROR"] > 0 && udp.outcomes["NXDOMAIN"] > 0,
        "{:?}",
        udp.outcomes
    );
    assert_eq!(udp.outcomes.values().sum::<u64>(), udp.counts.ok);
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["scenario"], "dns");
    assert_eq!(v["counts"]["ok"], udp.counts.ok);
    assert!(v["latency_us"]["p99"].is_u64());
    assert!(!v["series"].as_array().unwrap().is_empty());

    let tcp = bench(&short("dns", &dns, &["-c", "2", "-f", q, "--tcp"]));
    assert!(tcp.counts.ok > 0, "{tcp:?}");
    assert_eq!(tcp.counts.errors, 0, "{:?}", tcp.errors);
    assert!(tcp.outcomes["NOERROR"] > 0, "{:?}", tcp.outcomes);

    // A server that never answers: every query times out, and the run still ends by itself.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mute = bench(&[
        "dns",
        "-t",
        &silent.local_addr().unwrap().to_string(),
        "-c",
        "8",
        "-d",
        "300ms",
        "--timeout",
        "200ms",
        "-q",
        "-f",
        q,
    ]);
    assert_eq!(mute.counts.ok, 0);
    assert!(mute.errors["timeout"] >= 8, "{:?}", mute.errors);
    std::fs::remove_file(queries).ok();
    std::fs::remove_file(json).ok();
}

#[test]
fn api_register_and_publish_latency_against_the_hub() {
    let hub = Hub::start(&[]);
    let api = hub.api.to_string();
    let reg = bench(&short(
        "api-register",
        &api,
        &["-c", "2", "--heartbeats", "1", "--id-prefix", "smoke"],
    ));
    assert!(reg.counts.ok > 0, "{reg:?}");
    assert_eq!(reg.counts.errors, 0, "{:?}", reg.errors);
    let registered = reg.outcomes["register 201"];
    assert!(reg.outcomes["heartbeat 2xx"] > 0, "{:?}", reg.outcomes);
    // Every counted registration is in the registry (none outside the measured phase: no warmup).
    let (status, list) = hub.api("GET", "/api/v1/backends", None);
    assert_eq!(status, 200);
    assert!(list["total"].as_u64().unwrap() >= registered, "{list}");

    // HTTP request/response (the mode compared with wrk), kept alive and one per connection,
    // against the API's GET /health.
    for scenario in ["tcp-rr", "tcp-connect"] {
        for engine in ["epoll", "glommio"] {
            let h = bench(&short(
                scenario,
                &api,
                &["-c", "2", "--http", "/health", "--engine", engine],
            ));
            assert!(h.counts.ok > 0, "{scenario} {engine}: {h:?}");
            assert_eq!(h.counts.errors, 0, "{scenario} {engine}: {:?}", h.errors);
            assert_eq!(h.outcomes["200"], h.counts.ok);
        }
    }

    let dns = hub.dns.to_string();
    let publish = bench(&short(
        "publish-latency",
        &api,
        &[
            "-c",
            "1",
            "--dns",
            &dns,
            "--ports",
            "8",
            "--id-prefix",
            "pub",
        ],
    ));
    assert!(publish.counts.ok > 0, "{publish:?}");
    assert_eq!(publish.counts.errors, 0, "{:?}", publish.errors);
    assert!(publish.latency_us.max >= publish.latency_us.p50);
    // Each measured backend was deleted again.
    let (_, after) = hub.api("GET", "/api/v1/backends/pub-0-0-1", None);
    assert!(after.get("error").is_some(), "{after}");
}

/// A TLS server on 127.0.0.1 (rustls, ring, self-signed for "localhost"): a thread per
/// connection that completes the handshake and discards what it reads.
fn tls_server() -> (SocketAddr, String) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let pem = cert.cert.pem();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.cert.der().clone()], key)
    .unwrap();
    let config = Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut tcp) = stream else { continue };
            let config = config.clone();
            std::thread::spawn(move || {
                tcp.set_read_timeout(Some(Duration::from_secs(5))).ok();
                let Ok(mut conn) = rustls::ServerConnection::new(config) else {
                    return;
                };
                let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
                let mut buf = [0u8; 16384];
                while matches!(tls.read(&mut buf), Ok(n) if n > 0) {}
                let _ = tls.flush();
            });
        }
    });
    (addr, pem)
}

#[test]
fn tls_handshake_and_bulk_against_a_rustls_server() {
    let (addr, pem) = tls_server();
    let ca = temp_path("ca.pem");
    std::fs::write(&ca, pem).unwrap();
    let target = addr.to_string();
    // Verified against the self-signed certificate as the CA.
    let hs = bench(&short(
        "tls-handshake",
        &target,
        &[
            "-c",
            "2",
            "--ca",
            ca.to_str().unwrap(),
            "--sni",
            "localhost",
        ],
    ));
    assert!(hs.counts.ok > 0, "{hs:?}");
    assert_eq!(hs.counts.errors, 0, "{:?}", hs.errors);
    // Trusting another CA, verification fails and is counted as a handshake error.
    let other = temp_path("other-ca.pem");
    let stranger = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(&other, stranger.cert.pem()).unwrap();
    let refused = bench(&[
        "tls-handshake",
        "-t",
        &target,
        "-c",
        "1",
        "-d",
        "300ms",
        "-q",
        "--ca",
        other.to_str().unwrap(),
    ]);
    assert_eq!(refused.counts.ok, 0);
    assert!(
        refused.errors.contains_key("tls-handshake"),
        "{:?}",
        refused.errors
    );

    let bulk = bench(&short(
        "tls-bulk",
        &target,
        &["-c", "2", "--insecure", "--size", "4k"],
    ));
    assert!(bulk.counts.bytes >= 4096, "{bulk:?}");
    assert_eq!(bulk.counts.errors, 0, "{:?}", bulk.errors);
    std::fs::remove_file(ca).ok();
    std::fs::remove_file(other).ok();
}
