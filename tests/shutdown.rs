//! Graceful shutdown through the real binary: SIGTERM stops accepting, flushes the registry
//! and exits 0; a second signal exits at once.

mod common;

use common::{Hub, StateDir};
use std::net::TcpStream;
use std::time::Duration;

#[test]
fn sigterm_on_an_idle_hub_exits_0_and_closes_listeners() {
    let mut hub = Hub::start(&[]);
    hub.register("pop-gru", "gru.pop", "sa", "10.50.1.1", 80);
    hub.signal(libc::SIGTERM);
    let status = hub.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
    let logs = hub.logs_until("drained: exiting").join("\n");
    assert!(logs.contains("draining"), "{logs}");
    assert!(logs.contains("registry flushed"), "{logs}");
    // (That the listeners close is checked while draining, in the test below: after the exit
    // the port is free, and a parallel test's hub may already have been given it.)
}

#[test]
fn the_last_heartbeat_before_sigterm_is_kept() {
    let dir = StateDir::new();
    let mut hub = Hub::start_in(&dir.0, &[], &[]);
    hub.register_json(
        r#"{"id":"b","app":"a","region":"sa","ip":"10.0.0.1","port":80,"ttl_secs":3600}"#,
    );
    // Age the registration, then heartbeat right before stopping: heartbeats are not synced on
    // the request path, so only the drain flush can have saved this one.
    std::thread::sleep(Duration::from_millis(1_100));
    assert_eq!(hub.api("POST", "/api/v1/heartbeat/b", None).0, 200);
    hub.signal(libc::SIGTERM);
    assert_eq!(hub.wait_exit(Duration::from_secs(10)).code(), Some(0));
    let hub = Hub::start_in(&dir.0, &[], &[]);
    let (_, b) = hub.api("GET", "/api/v1/backends/b", None);
    // The heartbeat came 1.1 s after the registration: if it was kept, the backend's last
    // heartbeat is younger than its registration by at least a second.
    let (beat, registered) = (
        b["last_heartbeat_secs"].as_u64().unwrap(),
        b["registered_secs"].as_u64().unwrap(),
    );
    assert!(beat < registered, "the last heartbeat was lost: {b}");
}

#[test]
fn sigterm_lets_an_open_forwarded_connection_finish() {
    use std::io::{Read, Write};
    // An echo backend.
    let backend = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = backend.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in backend.incoming() {
            let Ok(mut conn) = conn else { break };
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 || conn.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    let mut hub = Hub::start(&[]);
    hub.register("echo", "echo", "sa", "127.0.0.1", port);
    let mut client = TcpStream::connect(hub.proxy).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = [0u8; 5];
    client.write_all(b"hello").unwrap();
    client.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello");

    hub.signal(libc::SIGTERM);
    hub.wait_log("draining");
    // New connections stop being accepted (each shard notices within its poll interval)...
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(hub.proxy).is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "still accepting while draining"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // ...while the open one keeps working, and keeps the hub alive.
    client.write_all(b"again").unwrap();
    client.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"again");
    drop(client);
    let status = hub.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
}
