//! Backend health through the real binary: active checks (TCP and HTTP) take a backend out of
//! DNS answers and proxy choices and bring it back; a backend killed under traffic is ejected
//! by the proxy's own failed connects, with no failed client connection. Backends are threads
//! on 127.0.0.0/8 that the tests start, kill and restart.

mod common;

use common::{dns_query, udp_dns, Hub, STEP};
use dns_parser::{Packet, RData};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A backend that can be killed: its listener stops (new connects are refused), the
/// connections it already accepted run to their end.
struct Backend {
    addr: SocketAddr,
    fd: i32,
    accepter: Option<thread::JoinHandle<()>>,
}

/// What a backend does with each accepted connection.
type Serve = Arc<dyn Fn(TcpStream) + Send + Sync>;

impl Backend {
    fn start(addr: &str, serve: Serve) -> Backend {
        let l = TcpListener::bind(addr).expect("bind a backend");
        let addr = l.local_addr().unwrap();
        let fd = l.as_raw_fd();
        let accepter = thread::spawn(move || {
            // Ends when kill() shuts the listener down; dropping it then closes it.
            for s in l.incoming() {
                let Ok(s) = s else { return };
                let serve = serve.clone();
                thread::spawn(move || serve(s));
            }
        });
        Backend {
            addr,
            fd,
            accepter: Some(accepter),
        }
    }

    /// Answers `tag`, then echoes to end of stream.
    fn echo(addr: &str, tag: &'static [u8]) -> Backend {
        Backend::start(
            addr,
            Arc::new(move |mut s: TcpStream| {
                let _ = s.write_all(tag);
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = s.shutdown(Shutdown::Write);
            }),
        )
    }

    /// Stops listening: from now on connects are refused.
    fn kill(&mut self) {
        // SAFETY: the fd is the listener's, still open (its thread closes it only after this
        // shutdown wakes its accept); shutdown has no memory-safety preconditions.
        unsafe { libc::shutdown(self.fd, libc::SHUT_RDWR) };
        if let Some(t) = self.accepter.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if self.accepter.is_some() {
            self.kill();
        }
    }
}

fn echo_once(addr: SocketAddr) -> std::io::Result<Vec<u8>> {
    let mut c = TcpStream::connect_timeout(&addr, STEP)?;
    c.set_read_timeout(Some(STEP))?;
    c.write_all(b"ping")?;
    c.shutdown(Shutdown::Write)?;
    let mut got = Vec::new();
    c.read_to_end(&mut got)?;
    Ok(got)
}

fn health(hub: &Hub, id: &str) -> serde_json::Value {
    let (status, json) = hub.api("GET", &format!("/api/v1/backends/{id}"), None);
    assert_eq!(status, 200, "{json}");
    json["health"].clone()
}

/// Polls `id`'s health until its state is `state` (bounded); returns how long it took.
fn wait_state(hub: &Hub, id: &str, state: &str, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let h = health(hub, id);
        if h["state"] == state {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "{id} not {state} after {within:?}: {h}"
        );
        thread::sleep(Duration::from_millis(5));
    }
}

/// The one A record the hub answers for `name`.
fn resolve(hub: &Hub, name: &str) -> Ipv4Addr {
    let q = dns_query(7, name, 1, None);
    let reply = udp_dns(hub.dns, &q).expect("a DNS answer");
    let p = Packet::parse(&reply).expect("reply parses");
    assert_eq!(p.answers.len(), 1, "{p:?}");
    match p.answers[0].data {
        RData::A(a) => a.0,
        ref other => panic!("not an A record: {other:?}"),
    }
}

/// Active checks fast enough for a test: detection within fall x interval + timeout.
const FAST_CHECKS: [&str; 5] = [
    "--health-check=tcp",
    "--health-check-interval-ms=100",
    "--health-check-timeout-ms=200",
    "--health-check-rise=2",
    "--health-check-fall=2",
];

#[test]
fn a_closed_listener_goes_down_and_comes_back_when_it_returns() {
    let hub = Hub::start(&FAST_CHECKS);
    // `a` is in the hub's region, so it wins while it is up; `b` is the next best.
    let mut a = Backend::echo("127.0.0.1:0", b"a:");
    let _b = Backend::echo("127.0.0.2:0", b"b:");
    hub.register("a", "web", "sa", "127.0.0.1", a.addr.port());
    hub.register("b", "web", "us", "127.0.0.2", _b.addr.port());
    assert_eq!(health(&hub, "a")["state"], "up");
    assert_eq!(resolve(&hub, "web.internal"), Ipv4Addr::new(127, 0, 0, 1));
    assert_eq!(echo_once(hub.proxy).unwrap(), b"a:ping");

    a.kill();
    // fall (2) x interval (100 ms, +-10%) + the first check's offset: 300 ms; with room for
    // a loaded machine.
    let took = wait_state(&hub, "a", "down", Duration::from_secs(5));
    println!("closed listener detected down in {took:?}");
    let h = health(&hub, "a");
    assert_eq!(h["reason"], "tcp connect refused", "{h}");
    assert_eq!(h["check"], "tcp");
    hub.wait_log("backend a: up -> down (tcp connect refused, 2/2)");
    let (_, json) = hub.api("GET", "/api/v1/backends/a", None);
    assert_eq!(json["healthy"], false);

    // Neither DNS nor the proxy choose it any more, and the proxy does not even try it.
    assert_eq!(resolve(&hub, "web.internal"), Ipv4Addr::new(127, 0, 0, 2));
    for _ in 0..20 {
        assert_eq!(echo_once(hub.proxy).unwrap(), b"b:ping");
    }
    assert_eq!(health(&hub, "a")["connect_failures"], 0);

    // Back on the same port: up again after `rise` checks, and chosen again.
    let port = a.addr.port();
    let _a = Backend::echo(&format!("127.0.0.1:{port}"), b"a:");
    let took = wait_state(&hub, "a", "up", Duration::from_secs(5));
    println!("restarted listener detected up in {took:?}");
    hub.wait_log("backend a: down -> up (tcp check passed, 2/2)");
    assert_eq!(resolve(&hub, "web.internal"), Ipv4Addr::new(127, 0, 0, 1));
    assert_eq!(echo_once(hub.proxy).unwrap(), b"a:ping");

    let (_, _, body) = hub.http(b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n");
    let metrics = String::from_utf8(body).unwrap();
    assert!(
        metrics.contains("edgeproxy_backend_health_transitions_total{to=\"down\"} 1\n"),
        "{metrics}"
    );
    assert!(metrics.contains("edgeproxy_backend_health_transitions_total{to=\"up\"} 1\n"));
    assert!(metrics
        .contains("edgeproxy_backend_health{id=\"a\",app=\"web\",region=\"sa\",state=\"up\"} 1\n"));
}

/// An HTTP backend answering `GET` with the status held in `status`, recording request lines.
fn http_backend(status: Arc<AtomicU16>, seen: Arc<Mutex<Vec<String>>>) -> Backend {
    Backend::start(
        "127.0.0.1:0",
        Arc::new(move |mut s: TcpStream| {
            s.set_read_timeout(Some(STEP)).unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let line = String::from_utf8_lossy(&req)
                .lines()
                .next()
                .unwrap()
                .to_string();
            seen.lock().unwrap().push(line);
            let code = status.load(Ordering::Relaxed);
            let _ = s.write_all(
                format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            );
        }),
    )
}

#[test]
fn an_http_check_takes_a_non_2xx_backend_down() {
    // The hub's checks are plain TCP; this backend asks for HTTP in its registration.
    let hub = Hub::start(&FAST_CHECKS);
    let status = Arc::new(AtomicU16::new(200));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let web = http_backend(status.clone(), seen.clone());
    hub.register_json(&format!(
        r#"{{"id":"h","app":"api","region":"sa","ip":"127.0.0.1","port":{},
            "check":{{"type":"http","path":"/healthz?deep=1","interval_ms":100,"timeout_ms":500,"rise":1,"fall":2}}}}"#,
        web.addr.port()
    ));
    let (_, json) = hub.api("GET", "/api/v1/backends/h", None);
    assert_eq!(json["check"]["type"], "http", "{json}");
    assert_eq!(json["check"]["path"], "/healthz?deep=1");
    // Checks pass: stays up, and asks for the path.
    let deadline = Instant::now() + STEP;
    while seen.lock().unwrap().len() < 2 {
        assert!(Instant::now() < deadline, "no health checks arrived");
        thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(seen.lock().unwrap()[0], "GET /healthz?deep=1 HTTP/1.1");
    assert_eq!(health(&hub, "h")["state"], "up");
    assert_eq!(health(&hub, "h")["check"], "http");

    status.store(503, Ordering::Relaxed);
    wait_state(&hub, "h", "down", STEP);
    assert_eq!(health(&hub, "h")["reason"], "http status 503");
    hub.wait_log("backend h: up -> down (http status 503, 2/2)");
    assert_eq!(resolve_nx(&hub, "api.internal"), None);

    status.store(204, Ordering::Relaxed);
    wait_state(&hub, "h", "up", STEP);
    assert_eq!(health(&hub, "h")["reason"], "http check passed");
    assert_eq!(resolve_nx(&hub, "api.internal"), Some(Ipv4Addr::LOCALHOST));

    // A bad check is refused with the field named.
    let (s, e) = hub.api(
        "POST",
        "/api/v1/register",
        Some(r#"{"id":"x","app":"api","region":"sa","ip":"127.0.0.1","port":1,"check":{"type":"http","rise":0}}"#),
    );
    assert_eq!((s, e["field"].as_str()), (400, Some("check.rise")), "{e}");
}

/// The A record for `name`, or `None` when the answer has none.
fn resolve_nx(hub: &Hub, name: &str) -> Option<Ipv4Addr> {
    let q = dns_query(9, name, 1, None);
    let reply = udp_dns(hub.dns, &q).expect("a DNS answer");
    let p = Packet::parse(&reply).expect("reply parses");
    p.answers.first().map(|a| match a.data {
        RData::A(a) => a.0,
        ref other => panic!("not an A record: {other:?}"),
    })
}

/// Kills the preferred backend while clients loop connects through the proxy. The proxy's
/// connect retries hide the death from every client; its failed connects eject the backend,
/// so later clients are not even tried on it. Prints the time from the death to the last
/// connection the hub sent to the dead backend (bench/health_failover.sh runs this).
#[test]
fn killing_a_backend_mid_traffic_fails_no_client_and_ejects_it() {
    // Default active checks (every 5 s, fall 3): what is measured is passive ejection.
    let hub = Hub::start(&["--health-check=tcp"]);
    let mut a = Backend::echo("127.0.0.1:0", b"a:");
    let b = Backend::echo("127.0.0.2:0", b"b:");
    hub.register("a", "web", "sa", "127.0.0.1", a.addr.port());
    hub.register("b", "web", "us", "127.0.0.2", b.addr.port());

    const CLIENTS: usize = 4;
    let stop = Arc::new(AtomicBool::new(false));
    let to_a = Arc::new(AtomicU64::new(0));
    let proxy = hub.proxy;
    // (answer, when it connected (Unix ms)) of every connection, or the error.
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (stop, to_a) = (stop.clone(), to_a.clone());
            thread::spawn(move || {
                let mut log = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let at = unix_ms();
                    let got = echo_once(proxy).map_err(|e| e.to_string());
                    if got.as_deref() == Ok(b"a:ping".as_slice()) {
                        to_a.fetch_add(1, Ordering::Relaxed);
                    }
                    log.push((got, at));
                }
                log
            })
        })
        .collect();
    // Traffic flows to `a` first.
    let deadline = Instant::now() + STEP;
    while to_a.load(Ordering::Relaxed) < 100 {
        assert!(Instant::now() < deadline, "no traffic reached a");
        thread::sleep(Duration::from_millis(1));
    }
    let died = unix_ms();
    a.kill();
    wait_state(&hub, "a", "ejected", STEP);
    let tried_by_ejection = health(&hub, "a")["connect_failures"].as_u64().unwrap();
    // Keep the clients going a while after the ejection.
    let after = Instant::now();
    while after.elapsed() < Duration::from_millis(300) {
        thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    let logs: Vec<_> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();

    let failed: Vec<_> = logs.iter().filter(|(r, _)| r.is_err()).collect();
    assert!(
        failed.is_empty(),
        "{} failed clients: {failed:?}",
        failed.len()
    );
    // Connections that started after the death all went to `b` (answers from `a` were
    // connections it accepted before).
    let late_to_a = logs
        .iter()
        .filter(|(r, at)| *at > died && r.as_deref() == Ok(b"a:ping".as_slice()))
        .count();
    let after_death = logs.iter().filter(|(_, at)| *at > died).count();
    assert!(after_death > 0);

    let h = health(&hub, "a");
    assert_eq!(h["state"], "ejected", "{h}");
    let tried = h["connect_failures"].as_u64().unwrap();
    let last = h["last_connect_failure_unix_ms"]
        .as_u64()
        .expect("a failed connect");
    // Three failures eject (a few more happen before the API shard's next poll); once
    // ejected, no client is tried on it but those that had chosen it already (one per client).
    assert!(tried >= 3, "{tried} connects to the dead backend");
    assert!(
        tried - tried_by_ejection <= CLIENTS as u64,
        "{} connects to the dead backend after its ejection",
        tried - tried_by_ejection
    );
    hub.wait_log("backend a: up -> ejected (");
    println!(
        "failover: death -> last connection sent to the dead backend: {} ms; {tried} connects \
         tried on it (all retried on the survivor); {} client connections after the death, {} \
         failed; {late_to_a} answered by the dead backend (accepted before it died)",
        last.saturating_sub(died),
        after_death,
        failed.len()
    );
    drop(b);
}

#[test]
fn a_backends_own_check_survives_a_restart_and_runs_again() {
    let dir = common::StateDir::new();
    let status = Arc::new(AtomicU16::new(503));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let web = http_backend(status.clone(), seen.clone());
    let body = format!(
        r#"{{"id":"p","app":"persisted","region":"sa","ip":"127.0.0.1","port":{},
            "check":{{"path":"/ready","interval_ms":100,"fall":1}}}}"#,
        web.addr.port()
    );
    {
        let hub = Hub::start_in(&dir.0, &FAST_CHECKS, &[]);
        hub.register_json(&body);
        wait_state(&hub, "p", "down", STEP);
    }
    // A new hub on the same state: the check is restored, the backend starts up (health is
    // not persisted) and its own check, HTTP on /ready, takes it down again.
    let hub = Hub::start_in(&dir.0, &FAST_CHECKS, &[]);
    let (_, json) = hub.api("GET", "/api/v1/backends/p", None);
    assert_eq!(json["check"]["path"], "/ready", "{json}");
    wait_state(&hub, "p", "down", STEP);
    assert_eq!(health(&hub, "p")["reason"], "http status 503");
    assert!(seen
        .lock()
        .unwrap()
        .iter()
        .all(|l| l == "GET /ready HTTP/1.1"));
}

/// A listener whose accept queue is full: the kernel drops new SYNs, so connects to it time
/// out (a hung backend, on loopback). The returned streams keep the queue full.
fn hung_backend() -> (SocketAddr, socket2::Socket, Vec<TcpStream>) {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    sock.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    sock.listen(0).unwrap();
    let addr = sock.local_addr().unwrap().as_socket().unwrap();
    // Backlog 0 holds one connection; fill it (later ones may time out: that is the point).
    let fill = (0..3)
        .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_millis(100)).ok())
        .collect();
    (addr, sock, fill)
}

#[test]
fn a_hung_backend_is_ejected_after_connect_timeouts_and_no_client_fails() {
    let hub = Hub::start(&["--connect-timeout-ms=200"]);
    let (hung, _sock, _fill) = hung_backend();
    let b = Backend::echo("127.0.0.2:0", b"b:");
    hub.register("hung", "web", "sa", "127.0.0.1", hung.port());
    hub.register("b", "web", "us", "127.0.0.2", b.addr.port());
    let proxy = hub.proxy;
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            thread::spawn(move || {
                let mut results = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    results.push(echo_once(proxy).map_err(|e| e.to_string()));
                }
                results
            })
        })
        .collect();
    wait_state(&hub, "hung", "ejected", STEP);
    let h = health(&hub, "hung");
    // Four clients time out together: three or four failures are seen in one poll.
    let reason = h["reason"].as_str().unwrap();
    assert!(reason.ends_with(" failed connects from the proxy"), "{h}");
    let by_ejection = h["connect_failures"].as_u64().unwrap();
    // The clients carry on a while, on the survivor only.
    let since = Instant::now();
    while since.elapsed() < Duration::from_millis(300) {
        thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    let results: Vec<_> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    let failed: Vec<_> = results.iter().filter(|r| r.is_err()).collect();
    assert!(failed.is_empty(), "{failed:?}");
    assert!(results
        .iter()
        .all(|r| r.as_deref() == Ok(b"b:ping".as_slice())));
    let after = health(&hub, "hung")["connect_failures"].as_u64().unwrap();
    assert!(
        after - by_ejection <= 4,
        "{} connects after the ejection",
        after - by_ejection
    );
}

#[test]
fn a_new_backend_is_served_at_once_before_any_check() {
    // Checks on at their defaults (every 5 s, the first within 5 s); nothing listens there.
    let hub = Hub::start(&["--health-check=tcp"]);
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    hub.register("fresh", "fresh", "sa", "127.0.0.1", port);
    assert_eq!(resolve(&hub, "fresh.internal"), Ipv4Addr::LOCALHOST);
    let h = health(&hub, "fresh");
    assert_eq!(
        (h["state"].as_str(), h["check"].as_str()),
        (Some("up"), Some("tcp")),
        "{h}"
    );
}
