//! Persistence through the real binary: every acknowledged registration survives kill -9, a
//! torn log tail keeps what came before it, heartbeat ages survive a restart, and the state
//! directory is checked at startup.

mod common;

use common::{read_response, Hub, StateDir};
use std::collections::BTreeSet;
use std::io::Write;
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn ids_of(hub: &Hub) -> Vec<String> {
    let (s, j) = hub.api("GET", "/api/v1/backends", None);
    assert_eq!(s, 200);
    j["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn kill_9_loses_no_acknowledged_registration() {
    let dir = StateDir::new();
    let mut hub = Hub::start_in(&dir.0, &[], &[]);
    let api = hub.api;
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let stop = Arc::new(AtomicBool::new(false));
    // Four clients, each registering its own ids on a kept-alive connection, until the hub dies.
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let (acked, stop) = (acked.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(api).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                for i in 0..2_500 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let id = format!("c{c}-{i}");
                    let body = format!(
                        r#"{{"id":"{id}","app":"kill.test","region":"sa","ip":"10.70.{c}.{}","port":80}}"#,
                        i % 250 + 1
                    );
                    let req = format!(
                        "POST /api/v1/register HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if s.write_all(req.as_bytes()).is_err() {
                        break;
                    }
                    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read_response(&mut s))) {
                        Ok(Some((201, _, _))) => {
                            acked.lock().unwrap().insert(id);
                        }
                        _ => break,
                    }
                }
            })
        })
        .collect();
    // Kill -9 once a good part of the stream is acknowledged (bounded wait).
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.lock().unwrap().len() < 3_000 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    hub.kill();
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.join();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 3_000,
        "only {} acknowledged before the deadline",
        acked.len()
    );

    let hub = Hub::start_in(&dir.0, &[], &[]);
    let ids = ids_of(&hub);
    let stored: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(stored.len(), ids.len(), "an id is listed twice");
    let lost: Vec<_> = acked.difference(&stored).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged registrations lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    // Anything extra must be one of ours that was written but whose answer was cut by the kill.
    assert!(stored.iter().all(|id| id.starts_with('c')));
    assert!(
        stored.len() <= acked.len() + 4,
        "more than one unacknowledged write per client"
    );
    let log = hub.startup_log.join("\n");
    assert!(
        log.contains(&format!("restored {} backends", stored.len())),
        "{log}"
    );
}

#[test]
fn a_corrupt_log_tail_is_cut_and_earlier_data_kept() {
    let dir = StateDir::new();
    {
        let hub = Hub::start_in(&dir.0, &[], &[]);
        hub.register("keep-1", "a", "sa", "10.0.0.1", 80);
        hub.register("keep-2", "a", "sa", "10.0.0.2", 80);
        hub.register("gone", "a", "sa", "10.0.0.3", 80);
        assert_eq!(hub.api("DELETE", "/api/v1/backends/gone", None).0, 200);
    }
    // A torn write: half a record header and some garbage at the end.
    let log = dir.0.join("registry.log");
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    f.write_all(&[200, 0, 0, 0, 0xde, 0xad, b'{', b'"'])
        .unwrap();
    drop(f);
    let hub = Hub::start_in(&dir.0, &[], &[]);
    assert_eq!(ids_of(&hub), ["keep-1", "keep-2"]);
    let startup = hub.startup_log.join("\n");
    assert!(
        startup.contains("cut 8 bytes from the end of the registry log"),
        "{startup}"
    );
    // The hub keeps appending after the last good record.
    hub.register("after", "a", "sa", "10.0.0.4", 80);
    drop(hub);
    let hub = Hub::start_in(&dir.0, &[], &[]);
    assert_eq!(ids_of(&hub), ["after", "keep-1", "keep-2"]);
}

#[test]
fn heartbeat_ages_survive_a_restart() {
    let dir = StateDir::new();
    {
        let hub = Hub::start_in(&dir.0, &[], &[]);
        hub.register_json(
            r#"{"id":"short","app":"a","region":"sa","ip":"10.0.0.1","port":80,"ttl_secs":1}"#,
        );
        hub.register_json(
            r#"{"id":"long","app":"a","region":"sa","ip":"10.0.0.2","port":80,"ttl_secs":3600}"#,
        );
    }
    // Let the short TTL run out while the hub is down (bounded: TTL is 1 s).
    std::thread::sleep(Duration::from_millis(1_100));
    let hub = Hub::start_in(&dir.0, &[], &[]);
    let (_, short) = hub.api("GET", "/api/v1/backends/short", None);
    let (_, long) = hub.api("GET", "/api/v1/backends/long", None);
    assert_eq!(short["healthy"], false, "{short}");
    assert_eq!(long["healthy"], true, "{long}");
    assert!(short["last_heartbeat_secs"].as_u64().unwrap() >= 1);
    // A heartbeat brings it back, and that too is remembered.
    assert_eq!(hub.api("POST", "/api/v1/heartbeat/short", None).0, 200);
    assert_eq!(
        hub.api("GET", "/api/v1/backends/short", None).1["healthy"],
        true
    );
}

#[test]
fn state_dir_problems_are_startup_errors() {
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_edgeproxy"))
            .args([
                "--listen-addr=127.0.0.1:0",
                "--api-listen-addr=127.0.0.1:0",
                "--dns-listen-addr=127.0.0.1:0",
                "--tls-listen-addr=127.0.0.1:0",
                "--gossip-addr=127.0.0.1:0",
                "--sync-addr=127.0.0.1:0",
            ])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = run(&["--state-dir=/proc/edgeproxy-cannot-live-here"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/proc/edgeproxy-cannot-live-here") && err.contains("--state-dir"),
        "{err}"
    );

    let dir = StateDir::new();
    let _first = Hub::start_in(&dir.0, &[], &[]);
    let arg = format!("--state-dir={}", dir.0.display());
    let out = run(&[&arg]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by another edgeproxy"), "{err}");
}
