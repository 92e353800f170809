//! The registration API through the real binary: the happy path, keep-alive and pipelining,
//! and the whole error matrix (400/404/405/408/411/413/415/431/503).

mod common;

use common::{read_response, Hub, STEP};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const GRU: &str = r#"{"id":"pop-gru","app":"gru.pop","region":"sa","ip":"10.50.1.1","port":80}"#;

fn post_register(hub: &Hub, body: &str) -> (u16, Value) {
    hub.api("POST", "/api/v1/register", Some(body))
}

#[test]
fn register_list_get_heartbeat_deregister() {
    let hub = Hub::start(&[]);
    let (s, j) = post_register(&hub, GRU);
    assert_eq!(s, 201, "{j}");
    assert_eq!(j["registered"], true);
    assert_eq!(j["id"], "pop-gru");
    assert!(j["message"].is_string());
    // Same id again: an update, 200, same body shape.
    let (s, j) = post_register(&hub, GRU);
    assert_eq!(s, 200, "{j}");
    assert_eq!(j["registered"], true);

    post_register(
        &hub,
        r#"{"id":"a-first","app":"x","region":"eu","ip":"2001:db8::1","port":443,"country":"de","weight":7,"soft_limit":10,"hard_limit":20,"ttl_secs":0}"#,
    );
    let (s, j) = hub.api("GET", "/api/v1/backends", None);
    assert_eq!(s, 200);
    assert_eq!(j["total"], 2);
    let ids: Vec<&str> = j["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a-first", "pop-gru"], "sorted by id");

    let (s, b) = hub.api("GET", "/api/v1/backends/a-first", None);
    assert_eq!(s, 200);
    for (k, v) in [
        ("app", Value::from("x")),
        ("region", "eu".into()),
        ("ip", "2001:db8::1".into()),
        ("port", 443.into()),
        ("country", "DE".into()),
        ("weight", 7.into()),
        ("soft_limit", 10.into()),
        ("hard_limit", 20.into()),
        ("ttl_secs", 0.into()),
        ("healthy", true.into()),
    ] {
        assert_eq!(b[k], v, "field {k} in {b}");
    }
    assert!(
        b["last_heartbeat_secs"].is_u64() && b["registered_secs"].is_u64(),
        "{b}"
    );

    let (s, j) = hub.api("POST", "/api/v1/heartbeat/pop-gru", None);
    assert_eq!(
        (s, j["id"].as_str(), j["status"].as_str()),
        (200, Some("pop-gru"), Some("ok"))
    );

    let (s, j) = hub.api("GET", "/health", None);
    assert_eq!(s, 200);
    assert_eq!(j["status"], "ok");
    assert_eq!(j["backends"], 2);
    assert_eq!(j["healthy_backends"], 2);
    assert_eq!(j["shards"], 2);
    assert!(j["version"].is_string() && j["uptime_secs"].is_u64());

    let (s, j) = hub.api("DELETE", "/api/v1/backends/pop-gru", None);
    assert_eq!(
        (s, j["deregistered"].as_bool(), j["id"].as_str()),
        (200, Some(true), Some("pop-gru"))
    );
    let (s, _) = hub.api("GET", "/api/v1/backends/pop-gru", None);
    assert_eq!(s, 404);
}

#[test]
fn validation_errors_name_the_field() {
    let hub = Hub::start(&[]);
    let base = r#""id":"b","app":"a","region":"sa","ip":"10.0.0.1","port":80"#;
    let cases: Vec<(String, Option<&str>)> = vec![
        ("{".into(), None),
        ("[1,2]".into(), None),
        (
            r#"{"app":"a","region":"sa","ip":"10.0.0.1","port":80}"#.into(),
            Some("id"),
        ),
        (
            r#"{"id":"","app":"a","region":"sa","ip":"10.0.0.1","port":80}"#.into(),
            Some("id"),
        ),
        (
            r#"{"id":1,"app":"a","region":"sa","ip":"10.0.0.1","port":80}"#.into(),
            Some("id"),
        ),
        (
            r#"{"id":"a/b","app":"a","region":"sa","ip":"10.0.0.1","port":80}"#.into(),
            Some("id"),
        ),
        (
            r#"{"id":"b","app":"a..b","region":"sa","ip":"10.0.0.1","port":80}"#.into(),
            Some("app"),
        ),
        (
            r#"{"id":"b","region":"sa","ip":"10.0.0.1","port":80}"#.into(),
            Some("app"),
        ),
        (
            r#"{"id":"b","app":"a","region":"","ip":"10.0.0.1","port":80}"#.into(),
            Some("region"),
        ),
        (
            r#"{"id":"b","app":"a","region":"sa","ip":"999.0.0.1","port":80}"#.into(),
            Some("ip"),
        ),
        (
            r#"{"id":"b","app":"a","region":"sa","ip":"host.example","port":80}"#.into(),
            Some("ip"),
        ),
        (
            r#"{"id":"b","app":"a","region":"sa","ip":"10.0.0.1","port":0}"#.into(),
            Some("port"),
        ),
        (
            r#"{"id":"b","app":"a","region":"sa","ip":"10.0.0.1","port":"80"}"#.into(),
            Some("port"),
        ),
        (format!("{{{base},\"weight\":0}}"), Some("weight")),
        (format!("{{{base},\"weight\":101}}"), Some("weight")),
        (
            format!("{{{base},\"soft_limit\":10,\"hard_limit\":9}}"),
            Some("hard_limit"),
        ),
        (
            format!("{{{base},\"hard_limit\":\"x\"}}"),
            Some("hard_limit"),
        ),
    ];
    for (body, field) in cases {
        let (s, j) = post_register(&hub, &body);
        assert_eq!(s, 400, "{body} -> {j}");
        assert!(
            j["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{body} -> {j}"
        );
        assert_eq!(j["field"].as_str(), field, "{body} -> {j}");
    }
    // Nothing was registered by any of them.
    assert_eq!(hub.api("GET", "/api/v1/backends", None).1["total"], 0);
}

#[test]
fn http_error_matrix() {
    let hub = Hub::start(&[]);
    // 404 unknown path and unknown id.
    let (s, j) = hub.api("GET", "/api/v2/nothing", None);
    assert_eq!(s, 404);
    assert!(j["error"].is_string());
    assert_eq!(hub.api("GET", "/api/v1/backends/ghost", None).0, 404);
    assert_eq!(hub.api("DELETE", "/api/v1/backends/ghost", None).0, 404);
    assert_eq!(hub.api("POST", "/api/v1/heartbeat/ghost", None).0, 404);

    // 405 with Allow.
    for (method, path, allow) in [
        ("GET", "/api/v1/register", "POST"),
        ("PUT", "/api/v1/backends/x", "GET, DELETE"),
        ("POST", "/api/v1/backends", "GET"),
        ("DELETE", "/health", "GET"),
        ("GET", "/api/v1/heartbeat/x", "POST"),
    ] {
        let raw = format!("{method} {path} HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n");
        let (s, headers, body) = hub.http(raw.as_bytes());
        assert_eq!(s, 405, "{method} {path}");
        let got = headers
            .iter()
            .find(|(k, _)| k == "allow")
            .map(|(_, v)| v.as_str());
        assert_eq!(got, Some(allow), "{method} {path}");
        let j: Value = serde_json::from_slice(&body).unwrap();
        assert!(j["error"].is_string());
    }

    // 411: a registration without Content-Length, and chunked bodies.
    let (s, _, _) =
        hub.http(b"POST /api/v1/register HTTP/1.1\r\nContent-Type: application/json\r\n\r\n");
    assert_eq!(s, 411);
    let (s, _, _) =
        hub.http(b"POST /api/v1/register HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
    assert_eq!(s, 411);

    // 413: a body over 64 KiB is refused from its Content-Length, before it is sent.
    let (s, _, body) = hub.http(b"POST /api/v1/register HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 70000\r\n\r\n");
    assert_eq!(s, 413);
    assert!(serde_json::from_slice::<Value>(&body).unwrap()["error"].is_string());

    // 415: not JSON.
    let raw = format!(
        "POST /api/v1/register HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{GRU}",
        GRU.len()
    );
    assert_eq!(hub.http(raw.as_bytes()).0, 415);

    // 431: headers over 16 KiB.
    let mut raw = b"GET /health HTTP/1.1\r\nX-Big: ".to_vec();
    raw.extend(std::iter::repeat_n(b'a', 17 * 1024));
    raw.extend_from_slice(b"\r\n\r\n");
    assert_eq!(hub.http(&raw).0, 431);

    // 400: not HTTP at all.
    assert_eq!(hub.http(b"\x16\x03\x01\x02\x00garbage\r\n\r\n").0, 400);

    // After all that the hub still serves.
    assert_eq!(hub.api("GET", "/health", None).0, 200);
}

#[test]
fn keep_alive_and_pipelining() {
    let hub = Hub::start(&[]);
    let mut s = TcpStream::connect(hub.api).unwrap();
    s.set_read_timeout(Some(STEP)).unwrap();
    // Three requests in one write: register, get, health; answered in order.
    let reg = format!(
        "POST /api/v1/register HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{GRU}",
        GRU.len()
    );
    let all =
        format!("{reg}GET /api/v1/backends/pop-gru HTTP/1.1\r\n\r\nGET /health HTTP/1.1\r\n\r\n");
    s.write_all(all.as_bytes()).unwrap();
    // Read everything the three answers take, then split them.
    let mut got = Vec::new();
    let mut statuses = Vec::new();
    let deadline = Instant::now() + STEP;
    while statuses.len() < 3 && Instant::now() < deadline {
        let mut chunk = [0u8; 8192];
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "closed early");
        got.extend_from_slice(&chunk[..n]);
        statuses = String::from_utf8_lossy(&got)
            .match_indices("HTTP/1.1 ")
            .map(|(i, _)| got[i + 9..i + 12].to_vec())
            .collect();
    }
    let statuses: Vec<String> = statuses
        .into_iter()
        .map(|s| String::from_utf8(s).unwrap())
        .collect();
    assert_eq!(statuses, ["201", "200", "200"]);
    // The connection is still usable afterwards (keep-alive).
    s.write_all(b"GET /health HTTP/1.1\r\n\r\n").unwrap();
    let (status, _, _) = read_response(&mut s).unwrap();
    assert_eq!(status, 200);
    // Connection: close is honoured.
    s.write_all(b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let (status, headers, _) = read_response(&mut s).unwrap();
    assert_eq!(status, 200);
    assert!(headers
        .iter()
        .any(|(k, v)| k == "connection" && v == "close"));
    let mut rest = Vec::new();
    assert_eq!(
        s.read_to_end(&mut rest).unwrap(),
        0,
        "closed after Connection: close"
    );
}

#[test]
fn stalled_client_gets_408_and_others_are_served_meanwhile() {
    let hub = Hub::start(&["--api-request-timeout-ms=300"]);
    let mut stalled = TcpStream::connect(hub.api).unwrap();
    stalled.set_read_timeout(Some(STEP)).unwrap();
    stalled
        .write_all(b"POST /api/v1/register HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"id\":")
        .unwrap();
    // While it stalls, others are served.
    assert_eq!(hub.api("GET", "/health", None).0, 200);
    let (status, _, _) = read_response(&mut stalled).expect("a 408 before close");
    assert_eq!(status, 408);
    let mut rest = Vec::new();
    assert_eq!(stalled.read_to_end(&mut rest).unwrap(), 0);
}

#[test]
fn idle_connections_are_closed_and_the_cap_answers_503() {
    let hub = Hub::start(&["--api-max-connections=2", "--api-idle-timeout-secs=1"]);
    let mut a = TcpStream::connect(hub.api).unwrap();
    let b = TcpStream::connect(hub.api).unwrap();
    // Make sure both are accepted (served once) before the third arrives.
    a.write_all(b"GET /health HTTP/1.1\r\n\r\n").unwrap();
    a.set_read_timeout(Some(STEP)).unwrap();
    assert_eq!(read_response(&mut a).unwrap().0, 200);
    let mut b2 = b.try_clone().unwrap();
    b2.set_read_timeout(Some(STEP)).unwrap();
    b2.write_all(b"GET /health HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut b2).unwrap().0, 200);
    let (s, headers, _) = hub.http(b"GET /health HTTP/1.1\r\n\r\n");
    assert_eq!(s, 503);
    assert!(headers.iter().any(|(k, _)| k == "retry-after"));
    // Idle keep-alive connections are closed by the hub after the idle timeout...
    let mut rest = Vec::new();
    assert_eq!(a.read_to_end(&mut rest).unwrap(), 0);
    assert_eq!(b2.read_to_end(&mut rest).unwrap(), 0);
    // ...which frees the slots (bounded polling: the slot frees as the task ends).
    let deadline = Instant::now() + STEP;
    loop {
        let (s, _, _) = hub.http(b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n");
        if s == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "slots never freed");
        std::thread::yield_now();
    }
}

/// Polls `f` until it returns true, failing after `within`.
fn eventually(within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "condition not reached in {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn missed_heartbeat_turns_unhealthy_then_grace_deletes() {
    let hub = Hub::start(&["--expiry-grace-secs=1"]);
    hub.register_json(
        r#"{"id":"short","app":"a","region":"sa","ip":"10.0.0.1","port":80,"ttl_secs":1}"#,
    );
    hub.register_json(
        r#"{"id":"forever","app":"a","region":"sa","ip":"10.0.0.2","port":80,"ttl_secs":0}"#,
    );
    assert_eq!(
        hub.api("GET", "/api/v1/backends/short", None).1["healthy"],
        true
    );
    eventually(Duration::from_secs(5), || {
        hub.api("GET", "/api/v1/backends/short", None).1["healthy"] == false
    });
    // A heartbeat revives it at once.
    assert_eq!(hub.api("POST", "/api/v1/heartbeat/short", None).0, 200);
    assert_eq!(
        hub.api("GET", "/api/v1/backends/short", None).1["healthy"],
        true
    );
    // Without heartbeats it is deleted after TTL + grace; the ttl 0 one stays.
    eventually(Duration::from_secs(8), || {
        hub.api("GET", "/api/v1/backends/short", None).0 == 404
    });
    let (s, j) = hub.api("GET", "/api/v1/backends/forever", None);
    assert_eq!((s, &j["healthy"]), (200, &Value::Bool(true)));
}

#[test]
fn token_protects_changes_and_never_reaches_the_log() {
    let hub = Hub::start_with_env(
        &["--log-level=debug"],
        &[("EDGEPROXY_API_TOKEN", "t0ken-old,t0ken-new")],
    );
    let req = |auth: Option<&str>| {
        let header = auth
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        format!(
            "POST /api/v1/register HTTP/1.1\r\nContent-Type: application/json\r\n{header}Content-Length: {}\r\n\r\n{GRU}",
            GRU.len()
        )
    };
    let (s, headers, body) = hub.http(req(None).as_bytes());
    assert_eq!(s, 401);
    assert!(headers
        .iter()
        .any(|(k, v)| k == "www-authenticate" && v.starts_with("Bearer")));
    assert!(serde_json::from_slice::<Value>(&body).unwrap()["error"].is_string());
    assert_eq!(hub.http(req(Some("nope")).as_bytes()).0, 401);
    assert_eq!(hub.http(req(Some("t0ken-new")).as_bytes()).0, 201);
    assert_eq!(hub.http(req(Some("t0ken-old")).as_bytes()).0, 200);
    assert_eq!(
        hub.http(b"DELETE /api/v1/backends/pop-gru HTTP/1.1\r\n\r\n")
            .0,
        401
    );
    // Reads and /health stay open by default.
    assert_eq!(hub.api("GET", "/api/v1/backends", None).0, 200);
    assert_eq!(hub.api("GET", "/health", None).0, 200);
    // Request logs name the route, never the token. The last request's line marks the end:
    // every earlier line has been read by then.
    let logs = hub.logs_until("GET /health -> 200").join("\n");
    assert!(logs.contains("/api/v1/register"), "{logs}");
    assert!(!logs.contains("t0ken"), "a token reached the log:\n{logs}");
}

#[test]
fn token_file_and_protected_reads() {
    let dir = common::StateDir::new();
    let file = dir.0.join("token");
    std::fs::write(&file, "from-file\n").unwrap();
    let arg = format!("--api-token-file={}", file.display());
    let hub = Hub::start(&[&arg, "--api-auth-reads=true"]);
    assert_eq!(hub.api("GET", "/api/v1/backends", None).0, 401);
    assert_eq!(hub.api("GET", "/health", None).0, 200);
    let (s, _, _) =
        hub.http(b"GET /api/v1/backends HTTP/1.1\r\nAuthorization: Bearer from-file\r\n\r\n");
    assert_eq!(s, 200);
}
