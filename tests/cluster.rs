//! Cluster membership through the real binary: hubs on 127.0.0.1/.2/.3 with gossip and sync on
//! ports from the OS, fast gossip timings from flags, every datagram sealed with a cluster key.
//! No sleeps as synchronisation: every wait polls a condition with a deadline.

mod common;

use base64::Engine;
use common::Hub;
use serde_json::Value;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

const FAST: [&str; 3] = [
    "--shards=1",
    "--gossip-probe-interval-ms=100",
    "--gossip-suspect-timeout-ms=500",
];

fn key(byte: u8) -> String {
    base64::engine::general_purpose::STANDARD.encode([byte; 32])
}

/// Starts a hub whose gossip and sync listen on `ip` (port `gossip_port`, 0 = from the OS).
fn hub(id: &str, ip: &str, gossip_port: u16, peers: &[SocketAddr], extra: &[&str]) -> Hub {
    let gossip = format!("--gossip-addr={ip}:{gossip_port}");
    let sync = format!("--sync-addr={ip}:0");
    let node = format!("--node-id={id}");
    let peers = format!(
        "--bootstrap-peers={}",
        peers
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    let mut args: Vec<&str> = FAST.to_vec();
    args.extend([gossip.as_str(), sync.as_str(), node.as_str()]);
    if !peers.ends_with('=') {
        args.push(&peers);
    }
    args.extend_from_slice(extra);
    Hub::start(&args)
}

fn cluster(h: &Hub) -> Value {
    let (status, body) = h.api("GET", "/api/v1/cluster", None);
    assert_eq!(status, 200, "{body}");
    body
}

/// id → state, as `h` sees the others.
fn states(h: &Hub) -> Vec<(String, String)> {
    cluster(h)["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["id"].as_str().unwrap().to_string(),
                m["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn state_of(h: &Hub, id: &str) -> Option<String> {
    states(h).into_iter().find(|(i, _)| i == id).map(|(_, s)| s)
}

/// Polls `ok` every 20 ms until it holds; panics with `what` after `within`. Returns how long
/// it took.
fn eventually(what: &str, within: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if ok() {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn metric(h: &Hub, name: &str, labels: &[(&str, &str)]) -> f64 {
    let (_, _, body) = h.http(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let text = String::from_utf8(body).unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn all_alive(h: &Hub, ids: &[&str]) -> bool {
    let s = states(h);
    ids.iter()
        .all(|id| s.iter().any(|(i, st)| i == id && st == "alive"))
}

#[test]
fn three_hubs_join_detect_a_kill_and_a_rejoin() {
    let k = format!("--cluster-key={}", key(7));
    let a = hub("hub-a", "127.0.0.1", 0, &[], &[&k]);
    let seed = a.gossip.expect("gossip is on by default");
    let b = hub("hub-b", "127.0.0.2", 0, &[seed], &[&k]);
    let mut c = hub("hub-c", "127.0.0.3", 0, &[seed], &[&k]);
    let c_port = c.gossip.unwrap().port();
    let join = eventually(
        "every hub sees the two others alive",
        Duration::from_secs(10),
        || {
            all_alive(&a, &["hub-b", "hub-c"])
                && all_alive(&b, &["hub-a", "hub-c"])
                && all_alive(&c, &["hub-a", "hub-b"])
        },
    );
    eprintln!("3 hubs joined in {join:?}");
    let view = cluster(&a);
    assert_eq!(view["authenticated"], true);
    assert_eq!(view["node"]["id"], "hub-a");
    let c_row = view["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "hub-c")
        .unwrap()
        .clone();
    assert_eq!(c_row["gossip_addr"], c.gossip.unwrap().to_string());
    assert_eq!(c_row["sync_addr"], c.sync.unwrap().to_string());
    assert!(c_row["last_seen_secs"].as_f64().unwrap() < 5.0, "{c_row}");
    let old_boot = c_row["boot_unix_ms"].as_u64().unwrap();

    // kill -9: no goodbye. The others declare it down and keep serving.
    c.kill();
    let detect = eventually("a and b mark hub-c down", Duration::from_secs(10), || {
        state_of(&a, "hub-c").as_deref() == Some("down")
            && state_of(&b, "hub-c").as_deref() == Some("down")
    });
    eprintln!("a killed hub was marked down in {detect:?} (probe 100 ms, suspicion 500 ms)");
    assert_eq!(state_of(&a, "hub-b").as_deref(), Some("alive"));
    a.register("pop-gru", "gru.pop", "sa", "10.50.1.1", 80);
    assert!(metric(&a, "edgeproxy_cluster_members", &[("state", "down")]) >= 1.0);

    // Restarted on the same address, it rejoins with a newer boot.
    let c = hub("hub-c", "127.0.0.3", c_port, &[seed], &[&k]);
    eventually(
        "hub-c is alive again everywhere",
        Duration::from_secs(10),
        || {
            all_alive(&a, &["hub-b", "hub-c"])
                && all_alive(&b, &["hub-a", "hub-c"])
                && all_alive(&c, &["hub-a", "hub-b"])
        },
    );
    let boot = cluster(&a)["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "hub-c")
        .unwrap()["boot_unix_ms"]
        .as_u64()
        .unwrap();
    assert!(boot > old_boot, "the rejoined hub-c has a newer boot");
    // Nothing was dropped between hubs that share the key and the name.
    for h in [&a, &b] {
        for reason in ["auth", "wrong_cluster", "replay", "malformed"] {
            assert_eq!(
                metric(
                    h,
                    "edgeproxy_cluster_dropped_total",
                    &[("port", "gossip"), ("reason", reason)]
                ),
                0.0,
                "{reason}"
            );
        }
    }
}

#[test]
fn wrong_cluster_name_or_key_never_joins() {
    let k = format!("--cluster-key={}", key(7));
    let other_key = format!("--cluster-key={}", key(8));
    let a = hub("hub-a", "127.0.0.1", 0, &[], &[&k]);
    let seed = a.gossip.unwrap();
    let named = hub(
        "hub-x",
        "127.0.0.2",
        0,
        &[seed],
        &[&k, "--cluster-name=staging"],
    );
    let keyed = hub("hub-y", "127.0.0.3", 0, &[seed], &[&other_key]);
    let keyless = hub("hub-z", "127.0.0.2", 0, &[seed], &[]);
    eventually("a drops their announces", Duration::from_secs(10), || {
        metric(
            &a,
            "edgeproxy_cluster_dropped_total",
            &[("port", "gossip"), ("reason", "wrong_cluster")],
        ) >= 2.0
            && metric(
                &a,
                "edgeproxy_cluster_dropped_total",
                &[("port", "gossip"), ("reason", "auth")],
            ) >= 4.0
    });
    assert!(states(&a).is_empty(), "{:?}", states(&a));
    for h in [&named, &keyed, &keyless] {
        assert!(states(h).is_empty(), "{:?}", states(h));
        assert_eq!(cluster(h)["joined"], false);
    }
    assert_eq!(cluster(&keyless)["authenticated"], false);
}

#[test]
fn graceful_shutdown_leaves_the_cluster() {
    let a = hub("hub-a", "127.0.0.1", 0, &[], &[]);
    let mut b = hub("hub-b", "127.0.0.2", 0, &[a.gossip.unwrap()], &[]);
    // Both ways: b can only tell members it knows that it leaves.
    eventually("b joins", Duration::from_secs(10), || {
        all_alive(&a, &["hub-b"]) && all_alive(&b, &["hub-a"])
    });
    b.signal(libc::SIGTERM);
    assert!(b.wait_exit(Duration::from_secs(10)).success());
    eventually("a shows hub-b as left", Duration::from_secs(5), || {
        state_of(&a, "hub-b").as_deref() == Some("left")
    });
}

#[test]
fn garbage_and_replays_are_dropped_and_counted() {
    let k = [7u8; 32];
    let a = hub(
        "hub-a",
        "127.0.0.1",
        0,
        &[],
        &[&format!("--cluster-key={}", key(7))],
    );
    let (gossip, sync) = (a.gossip.unwrap(), a.sync.unwrap());
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    for to in [gossip, sync] {
        s.send_to(b"", to).unwrap();
        s.send_to(&[0xff; 300], to).unwrap();
    }
    // Authentic envelopes: foca cannot parse the payload; sent twice, the copy is a replay.
    let mut ring = edgeproxy::cluster::auth::Keyring::new(&[k], "mallory", "edgeproxy", 1);
    let mut d = Vec::new();
    ring.seal(
        edgeproxy::cluster::auth::channel::GOSSIP,
        b"not swim",
        &mut d,
    );
    s.send_to(&d, gossip).unwrap();
    s.send_to(&d, gossip).unwrap();
    ring.seal(edgeproxy::cluster::auth::channel::SYNC, b"sync", &mut d);
    s.send_to(&d, sync).unwrap();
    s.send_to(&d, sync).unwrap();
    eventually("every drop is counted", Duration::from_secs(5), || {
        let m = |port, reason| {
            metric(
                &a,
                "edgeproxy_cluster_dropped_total",
                &[("port", port), ("reason", reason)],
            )
        };
        m("gossip", "malformed") >= 3.0
            && m("gossip", "replay") >= 1.0
            && m("sync", "malformed") >= 2.0
            && m("sync", "replay") >= 1.0
    });
    assert_eq!(
        metric(
            &a,
            "edgeproxy_cluster_datagrams_total",
            &[("port", "sync"), ("direction", "in")]
        ),
        4.0
    );
    assert!(states(&a).is_empty());
    let (status, _) = a.api("GET", "/health", None);
    assert_eq!(status, 200);
}

#[test]
fn on_by_default_off_on_request_and_v04_names() {
    let on = Hub::start_with_env(
        &["--shards=1"],
        &[
            ("EDGEPROXY_REPLICATION_NODE_ID", "v04-node"),
            ("EDGEPROXY_REPLICATION_CLUSTER_NAME", "v04-cluster"),
        ],
    );
    assert!(on.gossip.is_some() && on.sync.is_some());
    let view = cluster(&on);
    assert_eq!(view["enabled"], true);
    assert_eq!(view["node"]["id"], "v04-node");
    assert_eq!(view["cluster"], "v04-cluster");
    assert_eq!(view["authenticated"], false);
    assert!(on
        .startup_log
        .iter()
        .any(|l| l.contains("WARN") && l.contains("no EDGEPROXY_CLUSTER_KEY")));
    let off = Hub::start(&["--shards=1", "--replication-enabled=false"]);
    assert!(off.gossip.is_none() && off.sync.is_none());
    assert_eq!(cluster(&off)["enabled"], false);
}

#[test]
fn no_routable_address_is_a_startup_error_for_a_hub_told_to_join() {
    // In a network namespace of its own with only `lo`, a hub on 0.0.0.0 that must join a peer
    // has no address that peer could reach: it must refuse to start, naming the setting. (A hub
    // alone advertises loopback with a warning: see `a_lone_hub_with_only_loopback_starts`.)
    let probe = std::process::Command::new("unshare")
        .args(["--net", "true"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!("skipped: cannot create a network namespace here");
        return;
    }
    let out = std::process::Command::new("unshare")
        .args(["--net", "--", env!("CARGO_BIN_EXE_edgeproxy")])
        .args([
            "--shards=1",
            "--persist=false",
            "--listen-addr=127.0.0.1:0",
            "--api-listen-addr=127.0.0.1:0",
            "--dns-listen-addr=127.0.0.1:0",
            "--tls-listen-addr=127.0.0.1:0",
            "--gossip-addr=0.0.0.0:0",
            "--sync-addr=0.0.0.0:0",
            "--node-id=lonely",
            "--bootstrap-peers=192.0.2.1:4001",
        ])
        .env_remove("EDGEPROXY_ADVERTISE_ADDR")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--advertise-addr"), "{err}");
}

#[test]
fn a_lone_hub_with_only_loopback_starts() {
    // The same namespace without a peer to join: the hub serves, advertising loopback, and says
    // so (as the seed's hub would in a sandbox: its default settings must start).
    let probe = std::process::Command::new("unshare")
        .args(["--net", "true"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!("skipped: cannot create a network namespace here");
        return;
    }
    let mut child = std::process::Command::new("unshare")
        .args(["--net", "--", "sh", "-c"])
        .arg(format!(
            "ip link set lo up; exec {} --shards=1 --persist=false --listen-addr=127.0.0.1:0 \
             --api-listen-addr=127.0.0.1:0 --dns-listen-addr=127.0.0.1:0 \
             --tls-listen-addr=127.0.0.1:0 --gossip-addr=0.0.0.0:0 --sync-addr=0.0.0.0:0 \
             --node-id=lonely",
            env!("CARGO_BIN_EXE_edgeproxy")
        ))
        .env_remove("EDGEPROXY_ADVERTISE_ADDR")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::BufRead;
    // Bounded: a hub that neither gets ready nor exits is killed, which ends the read below.
    let pid = child.id() as i32;
    let (done, finished) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if finished.recv_timeout(Duration::from_secs(10)).is_err() {
            // SAFETY: kill has no memory-safety preconditions; the child is not reaped yet
            // (the test waits for this thread first), so the pid is still ours.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    });
    let stderr = child.stderr.take().unwrap();
    let mut seen = Vec::new();
    let mut ready = false;
    for line in std::io::BufReader::new(stderr).lines() {
        let Ok(line) = line else { break };
        ready = line.contains(" ready: ");
        seen.push(line);
        if ready {
            break;
        }
    }
    let _ = done.send(());
    let _ = watchdog.join();
    let _ = child.kill();
    let _ = child.wait();
    let log = seen.join("\n");
    assert!(ready, "{log}");
    assert!(
        log.contains("advertising 127.0.0.1") && log.contains("--advertise-addr"),
        "{log}"
    );
}

#[test]
fn a_flood_of_sealed_datagrams_leaves_the_hub_serving() {
    // 40,000 authentic envelopes (more than glommio's 16-bit task reference count) that foca
    // refuses: the hub keeps gossiping with its peer and answering the API.
    let k = format!("--cluster-key={}", key(7));
    let a = hub("hub-a", "127.0.0.1", 0, &[], &[&k]);
    let b = hub("hub-b", "127.0.0.2", 0, &[a.gossip.unwrap()], &[&k]);
    eventually("b joins", Duration::from_secs(10), || {
        all_alive(&a, &["hub-b"])
    });
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut ring = edgeproxy::cluster::auth::Keyring::new(&[[7u8; 32]], "mallory", "edgeproxy", 1);
    let mut d = Vec::new();
    let handled = || {
        metric(
            &a,
            "edgeproxy_cluster_dropped_total",
            &[("port", "gossip"), ("reason", "malformed")],
        )
    };
    // In bursts of 100, each handled before the next: the point is that every one of them is
    // received and refused (more than 32,767 wake-ups of the receiving task), so the sender
    // must not outrun the socket buffer on a busy machine (the kernel would drop the excess).
    const BURST: u32 = 100;
    for burst in 0..40_000 / BURST {
        for i in burst * BURST..(burst + 1) * BURST {
            ring.seal(
                edgeproxy::cluster::auth::channel::GOSSIP,
                &i.to_be_bytes(),
                &mut d,
            );
            let _ = s.send_to(&d, a.gossip.unwrap());
        }
        let sent = f64::from((burst + 1) * BURST);
        eventually("the hub takes each burst", Duration::from_secs(10), || {
            handled() >= sent
        });
    }
    assert_eq!(a.api("GET", "/health", None).0, 200);
    a.register("pop-gru", "gru.pop", "sa", "10.50.1.1", 80);
    eventually("still a cluster", Duration::from_secs(5), || {
        all_alive(&a, &["hub-b"]) && all_alive(&b, &["hub-a"])
    });
}
