//! Registry replication through the real binary: three hubs with gossip and sync on
//! 127.0.0.11/.12/.13, every datagram sealed with a cluster key. A registration at one hub is
//! answered by the others' DNS; a deregistration anywhere removes it everywhere; a hub that
//! was down catches up; a partition heals into identical registries. No sleeps as
//! synchronisation: every wait polls a condition with a deadline.

mod common;

use base64::Engine;
use common::{dns_query, udp_dns_on, Hub, StateDir};
use serde_json::Value;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

fn key() -> String {
    let k = base64::engine::general_purpose::STANDARD.encode([42u8; 32]);
    format!("--cluster-key={k}")
}

/// A hub named `id` whose gossip and sync listen on `ip`, joining through `peers`, its
/// registry persisted in `dir`.
fn hub(id: &str, ip: &str, peers: &[SocketAddr], dir: &Path) -> Hub {
    let node = format!("--node-id={id}");
    let gossip = format!("--gossip-addr={ip}:0");
    let sync = format!("--sync-addr={ip}:0");
    let peers = peers
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let peers = format!("--bootstrap-peers={peers}");
    let k = key();
    let mut args = vec![
        "--shards=1",
        "--gossip-probe-interval-ms=100",
        "--gossip-suspect-timeout-ms=500",
        &node,
        &gossip,
        &sync,
        &k,
    ];
    if !peers.ends_with('=') {
        args.push(&peers);
    }
    Hub::start_in(dir, &args, &[])
}

fn eventually(what: &str, within: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if ok() {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn cluster(h: &Hub) -> Value {
    let (status, body) = h.api("GET", "/api/v1/cluster", None);
    assert_eq!(status, 200, "{body}");
    body
}

fn alive(h: &Hub, ids: &[&str]) -> bool {
    let view = cluster(h);
    let members = view["members"].as_array().cloned().unwrap_or_default();
    ids.iter().all(|id| {
        members
            .iter()
            .any(|m| m["id"] == *id && m["state"] == "alive")
    })
}

/// The A record `h`'s DNS answers for `<app>.internal`, if any.
fn resolve(h: &Hub, sock: &UdpSocket, app: &str) -> Option<Ipv4Addr> {
    let q = dns_query(7, &format!("{app}.internal"), 1, None);
    let r = udp_dns_on(sock, h.dns, &q, Duration::from_secs(2))?;
    let answers = u16::from_be_bytes([r[6], r[7]]);
    if r[3] & 0x0f != 0 || answers == 0 {
        return None;
    }
    let n = r.len();
    Some(Ipv4Addr::new(r[n - 4], r[n - 3], r[n - 2], r[n - 1]))
}

/// Backend ids `h` holds.
fn ids(h: &Hub) -> Vec<String> {
    let (_, body) = h.api("GET", "/api/v1/backends", None);
    let mut v: Vec<String> = body["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

/// The replica's hash of its whole registry (tombstones included).
fn root(h: &Hub) -> String {
    cluster(h)["sync"]["detail"]["root"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

fn unix_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

fn converged(hubs: &[&Hub]) -> bool {
    let r = root(hubs[0]);
    !r.is_empty() && hubs.iter().all(|h| root(h) == r)
}

fn register(h: &Hub, id: &str, app: &str, ip: &str) {
    h.register(id, app, "sa", ip, 80);
}

struct Three {
    a: Hub,
    b: Hub,
    c: Hub,
    dirs: [StateDir; 3],
}

fn three() -> Three {
    let dirs = [StateDir::new(), StateDir::new(), StateDir::new()];
    let a = hub("hub-a", "127.0.0.11", &[], &dirs[0].0);
    let seed = a.gossip.unwrap();
    let b = hub("hub-b", "127.0.0.12", &[seed], &dirs[1].0);
    let c = hub("hub-c", "127.0.0.13", &[seed], &dirs[2].0);
    eventually("three hubs see each other", Duration::from_secs(10), || {
        alive(&a, &["hub-b", "hub-c"])
            && alive(&b, &["hub-a", "hub-c"])
            && alive(&c, &["hub-a", "hub-b"])
    });
    Three { a, b, c, dirs }
}

fn percentile(v: &mut [Duration], p: usize) -> Duration {
    v.sort();
    v[(v.len() - 1) * p / 100]
}

#[test]
fn register_at_a_resolves_at_b_and_c_deregister_at_c_is_gone_everywhere() {
    let t = three();
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    register(&t.a, "pop-gru", "gru.pop", "10.50.1.1");
    for h in [&t.b, &t.c] {
        eventually("B and C answer for gru.pop", Duration::from_secs(5), || {
            resolve(h, &sock, "gru.pop") == Some(Ipv4Addr::new(10, 50, 1, 1))
        });
    }
    // Deregistered at C: gone at A and B (DNS and API).
    let (status, _) = t.c.api("DELETE", "/api/v1/backends/pop-gru", None);
    assert_eq!(status, 200);
    for h in [&t.a, &t.b] {
        eventually("gone at A and B", Duration::from_secs(5), || {
            resolve(h, &sock, "gru.pop").is_none()
                && h.api("GET", "/api/v1/backends/pop-gru", None).0 == 404
        });
    }
    // Time from a registration acknowledged at A to an answer at B and at C, many times.
    let mut lat = Vec::new();
    for i in 0..30 {
        let app = format!("lat{i}.pop");
        let ip = format!("10.50.2.{}", i + 1);
        let want: Ipv4Addr = ip.parse().unwrap();
        register(&t.a, &format!("lat-{i}"), &app, &ip);
        let acked = Instant::now();
        let mut pending = vec![&t.b, &t.c];
        while !pending.is_empty() {
            assert!(
                acked.elapsed() < Duration::from_secs(5),
                "lat-{i} never arrived"
            );
            pending.retain(|h| {
                if resolve(h, &sock, &app) == Some(want) {
                    lat.push(acked.elapsed());
                    false
                } else {
                    true
                }
            });
        }
    }
    let median = percentile(&mut lat, 50);
    let worst = percentile(&mut lat, 100);
    eprintln!(
        "registration at A -> DNS answer at B/C: median {median:?}, worst {worst:?} ({} answers)",
        lat.len()
    );
    assert!(
        eventually("replicas converge", Duration::from_secs(5), || converged(
            &[&t.a, &t.b, &t.c]
        )) < Duration::from_secs(5)
    );
    let sync = &cluster(&t.b)["sync"];
    assert_eq!(sync["replicating"], true, "{sync}");
    assert!(
        sync["detail"]["merges"]["applied"].as_u64().unwrap() >= 31,
        "{sync}"
    );
    assert_eq!(sync["detail"]["dropped"]["malformed"], 0, "{sync}");
    let (_, _, body) =
        t.b.http(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let text = String::from_utf8(body).unwrap();
    let applied = text
        .lines()
        .find(|l| l.starts_with("edgeproxy_replication_merges_total{result=\"applied\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok());
    assert!(applied.is_some_and(|v| v >= 31.0), "{text}");
}

#[test]
fn a_hub_that_was_down_catches_up_on_restart() {
    let mut t = three();
    register(&t.a, "before", "before.pop", "10.50.1.1");
    eventually("B has it", Duration::from_secs(5), || {
        ids(&t.b) == ["before"]
    });
    // B dies without a word; the others go on changing the registry.
    t.b.kill();
    for i in 0..20 {
        register(&t.a, &format!("while-{i}"), "while.pop", "10.50.1.2");
    }
    register(&t.c, "from-c", "c.pop", "10.50.1.3");
    assert_eq!(t.c.api("DELETE", "/api/v1/backends/before", None).0, 200);
    let mut want = ids(&t.a);
    eventually("A and C agree", Duration::from_secs(5), || {
        ids(&t.c) == want
    });
    want.sort();
    assert_eq!(want.len(), 21);
    // B restarts on its old state: it must learn the 21 changes and drop "before".
    let seed = t.a.gossip.unwrap();
    let started = Instant::now();
    let b = hub("hub-b", "127.0.0.12", &[seed], &t.dirs[1].0);
    let took = eventually("B catches up", Duration::from_secs(10), || ids(&b) == want);
    eprintln!(
        "a restarted hub caught up with 21 changes in {took:?} after it was ready ({:?} from start)",
        started.elapsed()
    );
    eventually("replicas converge", Duration::from_secs(5), || {
        converged(&[&t.a, &b, &t.c])
    });
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    assert_eq!(
        resolve(&b, &sock, "c.pop"),
        Some(Ipv4Addr::new(10, 50, 1, 3))
    );
    assert!(resolve(&b, &sock, "before.pop").is_none());
}

/// Runs `ip` with `args` in this thread's network namespace.
fn ip(args: &str) {
    let st = std::process::Command::new("ip")
        .args(args.split_whitespace())
        .status()
        .expect("run ip");
    assert!(st.success(), "ip {args}");
}

/// Moves this test's thread (and the hubs it starts) into a network namespace of its own,
/// where a partition can be made with routing rules without touching the host. Needs root
/// (or unprivileged user namespaces); `false` when not possible.
fn private_network() -> bool {
    // SAFETY: unshare has no memory-safety preconditions; it affects this thread only.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return false;
    }
    ip("link set lo up");
    // Policy rules before the local table, so that "blackhole" applies to loopback traffic.
    ip("rule add pref 100 lookup local");
    ip("rule del pref 0");
    true
}

fn cut(x: &str, y: &str) {
    ip(&format!("rule add pref 10 from {x} to {y} blackhole"));
    ip(&format!("rule add pref 10 from {y} to {x} blackhole"));
}

fn heal() {
    while std::process::Command::new("ip")
        .args(["rule", "del", "pref", "10"])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {}
}

#[test]
fn a_partition_heals_into_identical_registries() {
    if !private_network() {
        eprintln!("skipped: cannot create a network namespace here (needs root)");
        return;
    }
    let t = three();
    register(&t.a, "shared", "shared.pop", "10.50.1.1");
    register(&t.a, "doomed", "doomed.pop", "10.50.1.1");
    eventually("everyone has both", Duration::from_secs(5), || {
        ids(&t.c).len() == 2 && ids(&t.b).len() == 2
    });
    // C is cut off from A and B.
    cut("127.0.0.13", "127.0.0.11");
    cut("127.0.0.13", "127.0.0.12");
    eventually("C is down for A", Duration::from_secs(10), || {
        !alive(&t.a, &["hub-c"]) && !alive(&t.c, &["hub-a"])
    });
    // Both sides change the registry, the same ids included.
    register(&t.a, "only-a", "a.pop", "10.50.1.2");
    register(&t.c, "only-c", "c.pop", "10.50.1.3");
    register(&t.a, "shared", "shared.pop", "10.50.1.4");
    // "Later" for last-writer-wins is a later millisecond of the wall clock: two writes at two
    // hubs within the same millisecond are ordered by logical counter and origin, the same way
    // everywhere but not necessarily in real-time order. So C writes in the next millisecond
    // (a wait on the clock itself, at most 1 ms; without it this failed about half the time
    // in release builds).
    let acked = unix_ms();
    while unix_ms() <= acked {
        std::hint::spin_loop();
    }
    register(&t.c, "shared", "shared.pop", "10.50.1.5"); // later: wins
    assert_eq!(t.c.api("DELETE", "/api/v1/backends/doomed", None).0, 200);
    std::thread::sleep(Duration::from_millis(300)); // let the two sides drift (not a sync)
    assert!(!converged(&[&t.a, &t.c]));
    let healed = Instant::now();
    heal();
    let start = Instant::now();
    while !converged(&[&t.a, &t.b, &t.c]) {
        if start.elapsed() > Duration::from_secs(20) {
            for h in [&t.a, &t.b, &t.c] {
                eprintln!("{:#}", cluster(h));
                eprintln!("{:?}", ids(h));
            }
            panic!("the three did not converge within 20 s of the heal");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let took = start.elapsed();
    eprintln!("3 hubs converged {took:?} after the partition healed");
    let want = vec!["only-a", "only-c", "shared"];
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    for h in [&t.a, &t.b, &t.c] {
        if ids(h) != want {
            for h in [&t.a, &t.b, &t.c] {
                eprintln!("{:?}\n{:#}", ids(h), cluster(h));
            }
        }
        assert_eq!(ids(h), want);
        assert_eq!(
            resolve(h, &sock, "shared.pop"),
            Some(Ipv4Addr::new(10, 50, 1, 5))
        );
    }
    let _ = healed;
}

/// Registers `n` backends at `h` over one keep-alive connection, 100 requests in flight.
fn register_many(h: &Hub, prefix: &str, n: usize) {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(h.api).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    for start in (0..n).step_by(100) {
        let end = (start + 100).min(n);
        let mut out = Vec::new();
        for i in start..end {
            let body = format!(
                r#"{{"id":"{prefix}-{i}","app":"{prefix}.pop","region":"sa","ip":"10.60.{}.{}","port":80,"ttl_secs":0}}"#,
                i / 250,
                i % 250 + 1
            );
            write!(
                out,
                "POST /api/v1/register HTTP/1.1\r\nHost: hub\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
        }
        s.write_all(&out).unwrap();
        let mut buf = Vec::new();
        let mut seen = 0;
        while seen < end - start {
            // Whole responses at the front of `buf`: status line, Content-Length, body.
            if let Some(head) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let text = String::from_utf8_lossy(&buf[..head]).to_string();
                let len: usize = text
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                if buf.len() >= head + 4 + len {
                    assert!(
                        text.starts_with("HTTP/1.1 200") || text.starts_with("HTTP/1.1 201"),
                        "{text}"
                    );
                    buf.drain(..head + 4 + len);
                    seen += 1;
                    continue;
                }
            }
            let mut chunk = [0u8; 65536];
            let n = loop {
                match std::io::Read::read(&mut s, &mut chunk) {
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    r => break r.unwrap(),
                }
            };
            assert!(n > 0, "the API closed the connection");
            buf.extend_from_slice(&chunk[..n]);
        }
    }
}

fn sync_bytes_out(h: &Hub) -> (f64, f64) {
    let (_, _, body) = h.http(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let text = String::from_utf8(body).unwrap();
    let get = |port: &str| {
        text.lines()
            .find(|l| {
                l.starts_with("edgeproxy_cluster_bytes_total")
                    && l.contains(&format!("port=\"{port}\""))
                    && l.contains("direction=\"out\"")
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (get("sync"), get("gossip"))
}

/// The figures of the closing note, through the real binary:
/// `cargo test --release --test cluster_sync figures -- --ignored --nocapture`.
#[test]
#[ignore]
fn figures() {
    let netns = private_network();
    let t = three();
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();

    // 1. Registration acknowledged at A -> DNS answer at B and at C.
    let mut lat = Vec::new();
    for i in 0..200 {
        let app = format!("fig{i}.pop");
        let ip = format!("10.50.3.{}", i % 250 + 1);
        let want: Ipv4Addr = ip.parse().unwrap();
        register(&t.a, &format!("fig-{i}"), &app, &ip);
        let acked = Instant::now();
        let mut pending = vec![&t.b, &t.c];
        while !pending.is_empty() {
            assert!(acked.elapsed() < Duration::from_secs(5));
            pending.retain(|h| {
                let got = resolve(h, &sock, &app) == Some(want);
                if got {
                    lat.push(acked.elapsed());
                }
                !got
            });
        }
    }
    let (med, p99, worst) = (
        percentile(&mut lat, 50),
        percentile(&mut lat, 99),
        percentile(&mut lat, 100),
    );
    eprintln!(
        "FIGURE registration at A -> DNS answer at B/C over {} answers: median {med:?}, p99 {p99:?}, worst {worst:?}",
        lat.len()
    );

    // 2. Bandwidth at rest (1,200 backends, no changes), per node.
    register_many(&t.a, "rest", 1000);
    eventually("converged", Duration::from_secs(20), || {
        converged(&[&t.a, &t.b, &t.c])
    });
    // Each change is pushed a second time 250 ms later: let that tail pass before measuring.
    std::thread::sleep(Duration::from_secs(1));
    let before: Vec<(f64, f64)> = [&t.a, &t.b, &t.c]
        .iter()
        .map(|h| sync_bytes_out(h))
        .collect();
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(10)); // measuring a rate over a period, not syncing
    let secs = start.elapsed().as_secs_f64();
    for (h, (s0, g0)) in [&t.a, &t.b, &t.c].iter().zip(before) {
        let (s1, g1) = sync_bytes_out(h);
        eprintln!(
            "FIGURE at rest with 1,200 backends: sync {:.0} B/s, gossip {:.0} B/s (probe every 100 ms here) sent by one hub",
            (s1 - s0) / secs,
            (g1 - g0) / secs
        );
    }

    // 3. Convergence after a partition heals (3 hubs), several times.
    if netns {
        let mut heals = Vec::new();
        for round in 0..5 {
            cut("127.0.0.13", "127.0.0.11");
            cut("127.0.0.13", "127.0.0.12");
            eventually("C is down for A", Duration::from_secs(10), || {
                !alive(&t.a, &["hub-c"])
            });
            register_many(&t.a, &format!("pa{round}"), 50);
            register_many(&t.c, &format!("pc{round}"), 50);
            heal();
            heals.push(eventually("converge", Duration::from_secs(30), || {
                converged(&[&t.a, &t.b, &t.c])
            }));
        }
        heals.sort();
        eprintln!(
            "FIGURE 3 hubs, 50 changes on each side of a partition: converged after the heal in median {:?}, worst {:?} (includes membership noticing the heal)",
            heals[heals.len() / 2],
            heals[heals.len() - 1]
        );
    }

    // 4. Does sync delay registrations? Register at A while A serves a full sync of 10,000
    //    backends to a new hub, against the same without it.
    register_many(&t.a, "bulk", 10_000);
    eventually("converged", Duration::from_secs(60), || {
        converged(&[&t.a, &t.b, &t.c])
    });
    let rtt = |n: usize, tag: &str| {
        let mut v = Vec::new();
        for i in 0..n {
            let t0 = Instant::now();
            register(&t.a, &format!("{tag}-{i}"), "rtt.pop", "10.50.4.1");
            v.push(t0.elapsed());
        }
        v
    };
    let mut idle = rtt(200, "idle");
    let dir = StateDir::new();
    let d = hub("hub-d", "127.0.0.14", &[t.a.gossip.unwrap()], &dir.0);
    let joined = Instant::now();
    let mut busy = Vec::new();
    let total = ids(&t.a).len();
    let mut caught_up = None;
    while caught_up.is_none() || busy.len() < 200 {
        busy.extend(rtt(10, &format!("busy{}", busy.len())));
        if caught_up.is_none() && ids(&d).len() >= total {
            caught_up = Some(joined.elapsed());
        }
        assert!(joined.elapsed() < Duration::from_secs(120));
    }
    eprintln!(
        "FIGURE registration round trip at A (API ack, fsync included): idle median {:?} p99 {:?}; while A serves a full sync of {total} backends to a new hub: median {:?} p99 {:?} worst {:?}; the new hub caught up in {:?}",
        percentile(&mut idle, 50),
        percentile(&mut idle, 99),
        percentile(&mut busy, 50),
        percentile(&mut busy, 99),
        percentile(&mut busy, 100),
        caught_up.unwrap()
    );
}
