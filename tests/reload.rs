//! SIGHUP re-reads `--config-file`: the log level changes live; other changed settings are
//! named as needing a restart.

mod common;

use common::{Hub, StateDir};

#[test]
fn sighup_applies_the_log_level_and_names_what_needs_a_restart() {
    let dir = StateDir::new();
    let file = dir.0.join("edgeproxy.env");
    std::fs::write(&file, "EDGEPROXY_LOG_LEVEL=info\n").unwrap();
    let arg = format!("--config-file={}", file.display());
    let hub = Hub::start(&[&arg]);
    // At info, an API request logs nothing.
    assert_eq!(hub.api("GET", "/health", None).0, 200);
    std::fs::write(
        &file,
        "# changed\nEDGEPROXY_LOG_LEVEL=debug\nEDGEPROXY_REGION=eu\n",
    )
    .unwrap();
    hub.signal(libc::SIGHUP);
    let before = hub.logs_until("log level is now DEBUG").join("\n");
    assert!(
        !before.contains("GET /health -> 200"),
        "logged at info:\n{before}"
    );
    hub.logs_until("changed EDGEPROXY_REGION");
    // Debug lines now appear: every API request is logged at debug.
    assert_eq!(hub.api("GET", "/health", None).0, 200);
    hub.logs_until("GET /health -> 200");
}

/// The first bytes a connection through `addr` receives (the echo backend's tag), or `None`
/// when the connection is refused or closed at once.
fn tag_through(addr: std::net::SocketAddr) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut s =
        std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut tag = [0u8; 1];
    match s.read(&mut tag) {
        Ok(1) => Some(tag.to_vec()),
        _ => None,
    }
}

/// Polls (bounded) until `f` holds.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !f() {
        assert!(std::time::Instant::now() < deadline, "never: {what}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A free TCP port on 127.0.0.1 (bound once by the OS, then released for the hub to take).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn sighup_adds_removes_and_repoints_tcp_routes_without_dropping_connections() {
    use std::io::{Read, Write};
    let dir = StateDir::new();
    let file = dir.0.join("edgeproxy.env");
    std::fs::write(&file, "EDGEPROXY_ROUTES=0=a.app\n").unwrap();
    let arg = format!("--config-file={}", file.display());
    // As under systemd: the file's settings are also the process's environment.
    let hub = Hub::start_with_env(&[&arg], &[("EDGEPROXY_ROUTES", "0=a.app")]);
    let a = common::echo_backend(b"A");
    let b = common::echo_backend(b"B");
    hub.register("a1", "a.app", "sa", "127.0.0.1", a.port());
    hub.register("b1", "b.app", "sa", "127.0.0.1", b.port());
    let first = hub.routes[0].0;
    assert_eq!(tag_through(first).as_deref(), Some(&b"A"[..]));
    // A connection open through the route that is about to go.
    let mut open = std::net::TcpStream::connect(first).unwrap();
    open.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut tag = [0u8; 1];
    open.read_exact(&mut tag).unwrap();
    assert_eq!(&tag, b"A");

    // Replace the route by one on a fixed port for another app.
    let port = free_port();
    std::fs::write(&file, format!("EDGEPROXY_ROUTES={port}=b.app\n")).unwrap();
    hub.signal(libc::SIGHUP);
    let logs = hub.logs_until("SIGHUP: tcp route listening on").join("\n");
    assert!(
        logs.contains(&format!("tcp route {first} (app a.app) removed")),
        "{logs}"
    );
    let second = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    assert_eq!(tag_through(second).as_deref(), Some(&b"B"[..]));
    // The removed route's listeners close (on every shard, and no duplicate kept for a
    // successor keeps them open): connecting is refused, not queued.
    eventually("the removed route refuses connections", || {
        std::net::TcpStream::connect(first).is_err()
    });
    // The connection opened through it runs on.
    open.write_all(b"still here").unwrap();
    let mut echoed = [0u8; 10];
    open.read_exact(&mut echoed).unwrap();
    assert_eq!(&echoed, b"still here");

    // Same port, another app: the listener stays, new connections go to the new app.
    std::fs::write(&file, format!("EDGEPROXY_ROUTES={port}=a.app\n")).unwrap();
    hub.signal(libc::SIGHUP);
    hub.logs_until(&format!(
        "tcp route {second} now serves app a.app (was b.app)"
    ));
    assert_eq!(tag_through(second).as_deref(), Some(&b"A"[..]));

    // A bad value changes nothing.
    std::fs::write(&file, "EDGEPROXY_ROUTES=nonsense\n").unwrap();
    hub.signal(libc::SIGHUP);
    hub.logs_until("routes unchanged");
    assert_eq!(tag_through(second).as_deref(), Some(&b"A"[..]));

    // Gone from the file (it came from the file's environment): no routes.
    std::fs::write(&file, "# no routes\n").unwrap();
    hub.signal(libc::SIGHUP);
    hub.logs_until(&format!("tcp route {second} (app a.app) removed"));
    eventually("the last route refuses connections", || {
        std::net::TcpStream::connect(second).is_err()
    });
}

/// The first byte the hub's TLS listener sends back after a ClientHello for `sni`: an alert
/// record (21) when it refuses the name, or the passthrough backend's tag.
fn first_byte_for_sni(addr: std::net::SocketAddr, sni: &str) -> u8 {
    use rustls::pki_types::ServerName;
    use std::io::{Read, Write};
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cfg = rustls::ClientConfig::builder()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let mut conn = rustls::ClientConnection::new(
        std::sync::Arc::new(cfg),
        ServerName::try_from(sni.to_string()).unwrap(),
    )
    .unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    s.write_all(&hello).unwrap();
    let mut first = [0u8; 1];
    s.read_exact(&mut first).unwrap();
    first[0]
}

#[test]
fn sighup_reloads_tls_routes() {
    let dir = StateDir::new();
    let file = dir.0.join("edgeproxy.env");
    std::fs::write(&file, "EDGEPROXY_LOG_LEVEL=info\n").unwrap();
    let arg = format!("--config-file={}", file.display());
    let hub = Hub::start(&[&arg]);
    let web = common::echo_backend(b"W");
    hub.register("w1", "web.app", "sa", "127.0.0.1", web.port());
    // No route for the name yet: refused with an alert record.
    assert_eq!(first_byte_for_sni(hub.tls, "www.example.com"), 21);
    std::fs::write(
        &file,
        "EDGEPROXY_TLS_ROUTES=www.example.com=web.app:passthrough\nEDGEPROXY_TLS_DEFAULT_APP=web.app\n",
    )
    .unwrap();
    hub.signal(libc::SIGHUP);
    hub.logs_until("SIGHUP: tls routes: www.example.com=web.app (default app web.app)");
    // Now the name is forwarded untouched to the app's backend, which speaks first.
    assert_eq!(first_byte_for_sni(hub.tls, "www.example.com"), b'W');
}

#[test]
fn sighup_changes_health_check_settings_live() {
    let dir = StateDir::new();
    let file = dir.0.join("edgeproxy.env");
    std::fs::write(&file, "# no health settings: the flags' values\n").unwrap();
    let arg = format!("--config-file={}", file.display());
    // The harness starts hubs with --health-check=none.
    let hub = Hub::start(&[&arg]);
    // Nothing listens there: a check would fail, but there are no checks yet.
    let port = free_port();
    hub.register("gone", "gone.app", "sa", "127.0.0.1", port);
    let state = |hub: &Hub| {
        let (status, json) = hub.api("GET", "/api/v1/backends/gone", None);
        assert_eq!(status, 200, "{json}");
        json["health"]["state"].as_str().unwrap_or("").to_string()
    };
    assert_eq!(state(&hub), "up");
    std::fs::write(
        &file,
        "EDGEPROXY_HEALTH_CHECK=tcp\nEDGEPROXY_HEALTH_CHECK_INTERVAL_MS=100\nEDGEPROXY_HEALTH_CHECK_FALL=1\n",
    )
    .unwrap();
    hub.signal(libc::SIGHUP);
    hub.logs_until("SIGHUP: health checks: tcp every 100 ms");
    eventually("the unreachable backend goes down", || {
        state(&hub) == "down"
    });
    // Back to no checks: nothing would bring it back, so it is up again at once.
    std::fs::write(&file, "EDGEPROXY_HEALTH_CHECK=none\n").unwrap();
    hub.signal(libc::SIGHUP);
    hub.logs_until("SIGHUP: health checks: none");
    eventually("the backend is up again", || state(&hub) == "up");
    let (_, json) = hub.api("GET", "/api/v1/backends/gone", None);
    assert_eq!(
        json["health"]["reason"], "active checks turned off",
        "{json}"
    );
}
