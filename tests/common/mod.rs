//! Test harness: starts the real `edgeproxy` binary on ephemeral ports and talks to it over
//! real sockets (127.0.0.1 only).
//!
//! - [`Hub::start`] runs the binary with 2 shards and every listener on port 0, then waits for
//!   its `ready:` log line, which names the ports it got. No sleeps: the line is printed only
//!   once every shard is serving. Active health checks are off (`--health-check=none`) unless
//!   the test sets `--health-check`: tests register backends at overlay addresses (10.50.x.y)
//!   that a check would send packets to, and tests send traffic to 127.0.0.0/8 only.
//! - [`Hub::api`] is a minimal HTTP/1.1 client; [`Hub::register`] registers a backend.
//! - [`dns_query`] / [`udp_dns`] / [`tcp_dns`] build and send DNS queries.
//!
//! Each integration-test crate uses a different subset of these helpers.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long any one step may take before the test fails instead of hanging.
pub const STEP: Duration = Duration::from_secs(10);

/// (status, headers with lower-case names, body)
pub type HttpResponse = (u16, Vec<(String, String)>, Vec<u8>);

pub struct Hub {
    child: Child,
    pub proxy: SocketAddr,
    pub api: SocketAddr,
    pub dns: SocketAddr,
    /// The TLS listener (termination).
    pub tls: SocketAddr,
    /// The TLS passthrough listeners.
    pub passthrough: Vec<SocketAddr>,
    /// (address, app) of every `--route` listener.
    pub routes: Vec<(SocketAddr, String)>,
    /// Cluster gossip and sync (udp); `None` when replication is off.
    pub gossip: Option<SocketAddr>,
    pub sync: Option<SocketAddr>,
    /// Log lines printed up to and including the `ready:` line.
    pub startup_log: Vec<String>,
    /// The temporary state directory this hub owns, removed on drop.
    state: Option<StateDir>,
    /// Log lines printed after `ready:` (drained on demand).
    logs: mpsc::Receiver<String>,
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|w| w.strip_prefix(key))
}

impl Hub {
    /// Starts the hub with 2 shards (unless `extra` has `--shards=N`), ports from the OS, and
    /// `extra` arguments.
    pub fn start(extra: &[&str]) -> Hub {
        Self::start_with_env(extra, &[])
    }

    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Hub {
        let dir = StateDir::new();
        let mut hub = Self::start_in(&dir.0, extra, env);
        hub.state = Some(dir);
        hub
    }

    /// Starts the hub with its registry persisted in `state_dir` (which the caller owns).
    pub fn start_in(state_dir: &std::path::Path, extra: &[&str], env: &[(&str, &str)]) -> Hub {
        let state_arg = format!("--state-dir={}", state_dir.display());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_edgeproxy"));
        for (k, _) in std::env::vars() {
            if k.starts_with("EDGEPROXY_") || k == "RUST_LOG" || k == "DEBUG" {
                cmd.env_remove(k);
            }
        }
        // A CI run under systemd must not have test hubs talk to its service manager.
        for k in [
            "NOTIFY_SOCKET",
            "WATCHDOG_USEC",
            "WATCHDOG_PID",
            "STATE_DIRECTORY",
        ] {
            cmd.env_remove(k);
        }
        // 2 shards unless the test asks for another count.
        if !extra.iter().any(|a| a.starts_with("--shards=")) {
            cmd.arg("--shards=2");
        }
        // No active checks unless the test asks for them (see the module docs).
        if !extra.iter().any(|a| a.starts_with("--health-check="))
            && !env.iter().any(|(k, _)| *k == "EDGEPROXY_HEALTH_CHECK")
        {
            cmd.arg("--health-check=none");
        }
        // Cluster ports from the OS too (never 4001/4002), unless the test picks them.
        for (flag, default) in [
            ("--gossip-addr=", "--gossip-addr=127.0.0.1:0"),
            ("--sync-addr=", "--sync-addr=127.0.0.1:0"),
        ] {
            if !extra.iter().any(|a| a.starts_with(flag)) {
                cmd.arg(default);
            }
        }
        cmd.args([
            "--listen-addr=127.0.0.1:0",
            "--api-listen-addr=127.0.0.1:0",
            "--dns-listen-addr=127.0.0.1:0",
            "--tls-listen-addr=127.0.0.1:0",
            &state_arg,
        ])
        .args(extra)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start edgeproxy");
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut seen = Vec::new();
        loop {
            match rx.recv_timeout(STEP) {
                Ok(line) => {
                    seen.push(line.clone());
                    if line.contains(" ready: ") {
                        let addr = |k: &str| -> SocketAddr {
                            field(&line, k)
                                .and_then(|v| v.parse().ok())
                                .unwrap_or_else(|| panic!("no {k} in {line}"))
                        };
                        let routes = field(&line, "routes=")
                            .unwrap_or("")
                            .split(',')
                            .filter(|s| !s.is_empty())
                            .map(|r| {
                                let (a, app) = r.split_once('/').expect("addr/app");
                                (a.parse().expect("route addr"), app.to_string())
                            })
                            .collect();
                        let opt = |k: &str| -> Option<SocketAddr> {
                            field(&line, k).and_then(|v| v.parse().ok())
                        };
                        return Hub {
                            gossip: opt("gossip="),
                            sync: opt("sync="),
                            proxy: addr("proxy="),
                            api: addr("api="),
                            dns: addr("dns="),
                            tls: addr("tls="),
                            passthrough: field(&line, "passthrough=")
                                .unwrap_or("")
                                .split(',')
                                .filter(|s| !s.is_empty())
                                .map(|a| a.parse().expect("passthrough addr"))
                                .collect(),
                            routes,
                            startup_log: seen,
                            state: None,
                            child,
                            logs: rx,
                        };
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let status = child.wait().ok();
                    panic!(
                        "edgeproxy did not become ready ({status:?}); log:\n{}",
                        seen.join("\n")
                    );
                }
            }
        }
    }

    /// Log lines printed since the last call.
    pub fn drain_logs(&self) -> Vec<String> {
        self.logs.try_iter().collect()
    }

    /// Every log line up to and including the first containing `needle` (bounded wait).
    pub fn logs_until(&self, needle: &str) -> Vec<String> {
        let deadline = std::time::Instant::now() + STEP;
        let mut lines = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.logs.recv_timeout(left) {
                Ok(line) => {
                    let done = line.contains(needle);
                    lines.push(line);
                    if done {
                        return lines;
                    }
                }
                Err(_) => panic!(
                    "no log line containing {needle:?}; got:\n{}",
                    lines.join("\n")
                ),
            }
        }
    }

    /// Waits (bounded) for a log line containing `needle`.
    pub fn wait_log(&self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + STEP;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.logs.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!("no log line containing {needle:?}"),
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// One HTTP request on a new connection; returns status, headers (lower-case names) and body.
    pub fn http(&self, raw: &[u8]) -> HttpResponse {
        http_exchange(self.api, raw)
    }

    /// A JSON API call: returns the status and the parsed body (Null if not JSON).
    pub fn api(&self, method: &str, path: &str, body: Option<&str>) -> (u16, serde_json::Value) {
        let raw = match body {
            Some(b) => format!(
                "{method} {path} HTTP/1.1\r\nHost: hub\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{b}",
                b.len()
            ),
            None => format!("{method} {path} HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n\r\n"),
        };
        let (status, _, body) = self.http(raw.as_bytes());
        (
            status,
            serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        )
    }

    /// Registers a backend; panics unless the hub says `"registered":true`.
    pub fn register(&self, id: &str, app: &str, region: &str, ip: &str, port: u16) {
        let body = format!(
            r#"{{"id":"{id}","app":"{app}","region":"{region}","ip":"{ip}","port":{port}}}"#
        );
        self.register_json(&body);
    }

    pub fn register_json(&self, body: &str) {
        let (status, json) = self.api("POST", "/api/v1/register", Some(body));
        assert!(
            status == 200 || status == 201,
            "register {body}: {status} {json}"
        );
        assert_eq!(json["registered"], true, "{json}");
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) to the hub.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill has no memory-safety preconditions.
        let rc = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(rc, 0, "kill failed");
    }

    /// Waits (bounded by `within`) for the hub to exit; its exit status.
    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the hub did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends SIGKILL and waits.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A temporary directory, removed on drop.
pub struct StateDir(pub std::path::PathBuf);

impl StateDir {
    pub fn new() -> StateDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "edgeproxy-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a temporary state directory");
        StateDir(dir)
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Sends `raw` on a new connection to `addr` and reads one response (or until close).
pub fn http_exchange(addr: SocketAddr, raw: &[u8]) -> HttpResponse {
    let mut s = TcpStream::connect_timeout(&addr, STEP).expect("connect to API");
    s.set_read_timeout(Some(STEP)).unwrap();
    s.write_all(raw).expect("send request");
    read_response(&mut s).expect("a response")
}

/// Reads one HTTP response from `s`. `None` when the peer closed before sending one.
pub fn read_response(s: &mut TcpStream) -> Option<HttpResponse> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = match s.read(&mut chunk) {
            // A socket read with a timeout is not restarted after the test process was
            // stopped and continued (SIGSTOP/SIGCONT): read again.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => r.expect("read response"),
        };
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .map(|(_, v)| v.parse().unwrap())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = match s.read(&mut chunk) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => r.expect("read body"),
        };
        assert!(n > 0, "connection closed mid-body");
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf[head_end..head_end + len].to_vec();
    // Keep any pipelined remainder for the caller? Tests that pipeline read with their own loop.
    Some((status, headers, body))
}

/// Builds a DNS query for `name` of type `qtype` (1 = A, 28 = AAAA, ...), with an optional
/// EDNS0 OPT record advertising `edns_size`.
pub fn dns_query(id: u16, name: &str, qtype: u16, edns_size: Option<u16>) -> Vec<u8> {
    let mut q = Vec::with_capacity(64);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00]); // RD
    q.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, u8::from(edns_size.is_some())]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    if let Some(size) = edns_size {
        q.push(0);
        q.extend_from_slice(&41u16.to_be_bytes());
        q.extend_from_slice(&size.to_be_bytes());
        q.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    }
    q
}

/// Sends `query` over UDP from a fresh socket and returns the reply (None on timeout).
pub fn udp_dns(server: SocketAddr, query: &[u8]) -> Option<Vec<u8>> {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp_dns_on(&sock, server, query, Duration::from_secs(2))
}

pub fn udp_dns_on(
    sock: &UdpSocket,
    server: SocketAddr,
    query: &[u8],
    wait: Duration,
) -> Option<Vec<u8>> {
    sock.set_read_timeout(Some(wait)).unwrap();
    sock.send_to(query, server).unwrap();
    let mut buf = vec![0u8; 65535];
    match sock.recv_from(&mut buf) {
        Ok((n, _)) => Some(buf[..n].to_vec()),
        Err(_) => None,
    }
}

/// Sends `query` over TCP (2-byte length framing) and returns the reply.
pub fn tcp_dns(server: SocketAddr, query: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect_timeout(&server, STEP).unwrap();
    s.set_read_timeout(Some(STEP)).unwrap();
    tcp_dns_on(&mut s, query)
}

pub fn tcp_dns_on(s: &mut TcpStream, query: &[u8]) -> Vec<u8> {
    let mut framed = (query.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(query);
    s.write_all(&framed).unwrap();
    let mut len = [0u8; 2];
    s.read_exact(&mut len).unwrap();
    let mut reply = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut reply).unwrap();
    reply
}

/// A backend (a thread on 127.0.0.1) answering each connection with `tag` (may be empty), then
/// echoing everything to end of stream, then closing its write side.
pub fn echo_backend(tag: &'static [u8]) -> SocketAddr {
    use std::net::Shutdown;
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let _ = s.write_all(tag);
                let mut buf = [0u8; 16 * 1024];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = s.shutdown(Shutdown::Write);
            });
        }
    });
    addr
}

/// The ten backends of the seed's field test: (id, app, region, ip).
pub const SEED: [(&str, &str, &str, &str); 10] = [
    ("pop-gru", "gru.pop", "sa", "10.50.1.1"),
    ("pop-iad", "iad.pop", "us", "10.50.2.1"),
    ("pop-ord", "ord.pop", "us", "10.50.2.2"),
    ("pop-lax", "lax.pop", "us", "10.50.2.3"),
    ("pop-lhr", "lhr.pop", "eu", "10.50.3.1"),
    ("pop-fra", "fra.pop", "eu", "10.50.3.2"),
    ("pop-cdg", "cdg.pop", "eu", "10.50.3.3"),
    ("pop-nrt", "nrt.pop", "ap", "10.50.4.1"),
    ("pop-sin", "sin.pop", "ap", "10.50.4.2"),
    ("pop-syd", "syd.pop", "ap", "10.50.4.3"),
];
