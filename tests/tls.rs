//! TLS on the real binary (2 shards): termination with a rustls client, `openssl s_client` and
//! `curl`; certificates and apps chosen by SNI; ALPN; passthrough; resumption (TLS 1.3, and 1.2
//! by ticket and by session id); PROXY v2 (passthrough and the plain TCP proxy); the handshake timeout;
//! garbage; certificate reload. Certificates come from a CA generated in the test, and the
//! clients verify them for real.

mod common;

use common::{echo_backend, Hub, StateDir, STEP};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl Ca {
    fn new() -> Ca {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "edgeproxy test CA");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    /// (chain+key PEM, leaf DER) of a new ECDSA P-256 leaf for `names`.
    fn leaf(&self, names: &[&str]) -> (String, Vec<u8>) {
        let p =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let c = p.signed_by(&key, &self.cert, &self.key).unwrap();
        (
            format!("{}{}", c.pem(), key.serialize_pem()),
            c.der().to_vec(),
        )
    }

    fn client(&self) -> Arc<ClientConfig> {
        self.client_alpn(&[])
    }

    fn client_alpn(&self, alpn: &[&str]) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert.der().clone()).unwrap();
        let mut cfg = ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        Arc::new(cfg)
    }

    fn write_pem(&self, path: &Path) {
        std::fs::write(path, self.cert.pem()).unwrap();
    }
}

type Tls = StreamOwned<ClientConnection, TcpStream>;

/// Connects and completes the handshake for `sni` (sent unless `send_sni` is false).
fn handshake(
    addr: SocketAddr,
    cfg: &Arc<ClientConfig>,
    sni: &str,
    send_sni: bool,
) -> std::io::Result<Tls> {
    let cfg = if send_sni {
        cfg.clone()
    } else {
        let mut c = (**cfg).clone();
        c.enable_sni = false;
        Arc::new(c)
    };
    let tcp = TcpStream::connect_timeout(&addr, STEP)?;
    tcp.set_read_timeout(Some(STEP))?;
    let conn = ClientConnection::new(cfg, ServerName::try_from(sni.to_string()).unwrap())
        .map_err(std::io::Error::other)?;
    let mut tls = StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(tls)
}

fn leaf_of(tls: &Tls) -> Vec<u8> {
    tls.conn.peer_certificates().expect("a chain")[0].to_vec()
}

/// Sends `msg`, closes (close_notify, then the TCP write side), reads to end of stream.
fn exchange(tls: &mut Tls, msg: &[u8]) -> Vec<u8> {
    tls.write_all(msg).unwrap();
    tls.conn.send_close_notify();
    tls.flush().unwrap();
    tls.sock.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::new();
    tls.read_to_end(&mut got).unwrap();
    got
}

/// A backend that reads one chunk and answers an HTTP/1.1 response with body `tag`, then closes.
fn http_backend(tag: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{tag}",
                    tag.len()
                );
                let _ = s.shutdown(Shutdown::Write);
                let _ = s.read(&mut buf);
            });
        }
    });
    addr
}

fn register(hub: &Hub, id: &str, app: &str, addr: SocketAddr) {
    hub.register(id, app, "sa", "127.0.0.1", addr.port());
}

#[test]
fn sni_picks_the_certificate_and_the_app() {
    let ca = Ca::new();
    let dir = StateDir::new();
    let (default_pem, default_der) = ca.leaf(&["default.example"]);
    let (exact_pem, exact_der) = ca.leaf(&["a.example"]);
    let (wild_pem, wild_der) = ca.leaf(&["*.pop.internal"]);
    std::fs::write(dir.0.join("0-default.pem"), default_pem).unwrap();
    std::fs::write(dir.0.join("a.pem"), exact_pem).unwrap();
    std::fs::write(dir.0.join("wild.pem"), wild_pem).unwrap();
    let cert_dir = format!("--tls-cert-dir={}", dir.0.display());
    let hub = Hub::start(&[&cert_dir, "--tls-route=a.example=iad.pop"]);
    register(&hub, "gru-1", "gru.pop", echo_backend(b"gru:"));
    register(&hub, "iad-1", "iad.pop", echo_backend(b"iad:"));
    let client = ca.client_alpn(&["h2", "http/1.1"]);

    // <app>.<zone> under a wildcard certificate.
    let mut t = handshake(hub.tls, &client, "gru.pop.internal", true).unwrap();
    assert_eq!(leaf_of(&t), wild_der);
    // Its backend declared no ALPN (http/1.1 only): h2 is not offered.
    assert_eq!(t.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(exchange(&mut t, b"ping"), b"gru:ping");
    // An explicit route, exact certificate.
    let mut t = handshake(hub.tls, &client, "a.example", true).unwrap();
    assert_eq!(leaf_of(&t), exact_der);
    assert_eq!(exchange(&mut t, b"ping"), b"iad:ping");
    // A name no app has: unrecognized_name.
    let Err(e) = handshake(hub.tls, &client, "lhr.pop.internal", true) else {
        panic!("lhr.pop.internal was accepted");
    };
    assert!(e.to_string().contains("UnrecognisedName"), "{e}");
    // No SNI: the default certificate (first file), any app.
    let mut t = handshake(hub.tls, &client, "default.example", false).unwrap();
    assert_eq!(leaf_of(&t), default_der);
    let got = exchange(&mut t, b"ping");
    assert!(got == b"gru:ping" || got == b"iad:ping", "{got:?}");
}

#[test]
fn alpn_offers_what_backends_speak_and_picks_a_backend_that_speaks_it() {
    let ca = Ca::new();
    let dir = StateDir::new();
    let (pem, _) = ca.leaf(&["*.pop.internal"]);
    std::fs::write(dir.0.join("c.pem"), &pem).unwrap();
    let hub = Hub::start(&[&format!("--tls-cert-dir={}", dir.0.display())]);
    // gru.pop: one backend speaking h2 only, one declaring nothing (http/1.1 only).
    let h2 = echo_backend(b"h2:");
    hub.register_json(&format!(
        r#"{{"id":"gru-h2","app":"gru.pop","region":"sa","ip":"127.0.0.1","port":{},"alpn":["h2"]}}"#,
        h2.port()
    ));
    register(&hub, "gru-h1", "gru.pop", echo_backend(b"h1:"));
    // iad.pop: http/1.1 backends only.
    register(&hub, "iad-h1", "iad.pop", echo_backend(b"iad:"));
    let (status, json) = hub.api("GET", "/api/v1/backends/gru-h2", None);
    assert_eq!((status, &json["alpn"]), (200, &serde_json::json!(["h2"])));
    let (status, json) = hub.api("GET", "/api/v1/backends/gru-h1", None);
    assert_eq!((status, &json["alpn"]), (200, &serde_json::Value::Null));

    let name = "gru.pop.internal";
    // Repeated: whichever shard and whatever the hash says, the protocol decides.
    for _ in 0..3 {
        let mut t = handshake(hub.tls, &ca.client_alpn(&["h2"]), name, true).unwrap();
        assert_eq!(t.conn.alpn_protocol(), Some(&b"h2"[..]));
        assert_eq!(exchange(&mut t, b"x"), b"h2:x");
        let mut t = handshake(hub.tls, &ca.client_alpn(&["http/1.1"]), name, true).unwrap();
        assert_eq!(t.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
        assert_eq!(exchange(&mut t, b"x"), b"h1:x");
        // The hub's preference (h2 first) when the client offers both.
        let both = ca.client_alpn(&["http/1.1", "h2"]);
        let mut t = handshake(hub.tls, &both, name, true).unwrap();
        assert_eq!(t.conn.alpn_protocol(), Some(&b"h2"[..]));
        assert_eq!(exchange(&mut t, b"x"), b"h2:x");
    }
    // No backend of iad.pop speaks h2: it is not offered.
    let both = ca.client_alpn(&["h2", "http/1.1"]);
    let mut t = handshake(hub.tls, &both, "iad.pop.internal", true).unwrap();
    assert_eq!(t.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(exchange(&mut t, b"x"), b"iad:x");
    // A client that speaks only h2 is refused there rather than sent to an HTTP/1.1 backend.
    // (rustls fails the handshake; the client sees the alert, the close or a reset.)
    assert!(
        handshake(hub.tls, &ca.client_alpn(&["h2"]), "iad.pop.internal", true).is_err(),
        "h2 was agreed with an app that has no h2 backend"
    );
    // No ALPN from the client: any backend of the app.
    let mut t = handshake(hub.tls, &ca.client(), name, true).unwrap();
    assert_eq!(t.conn.alpn_protocol(), None);
    let got = exchange(&mut t, b"x");
    assert!(got == b"h2:x" || got == b"h1:x", "{got:?}");
}

#[test]
fn default_app_takes_unknown_names_and_proxy_v2_tells_the_client() {
    let ca = Ca::new();
    let dir = StateDir::new();
    let (pem, _) = ca.leaf(&["anything.example"]);
    std::fs::write(dir.0.join("c.pem"), &pem).unwrap();
    let cert = dir.0.join("c.pem").display().to_string();
    let hub = Hub::start(&[
        &format!("--tls-cert={cert}"),
        &format!("--tls-key={cert}"),
        "--tls-default-app=web.pop",
        "--tls-proxy-protocol=true",
    ]);
    // The backend reads the PROXY v2 header and answers with the client port it names.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend = l.local_addr().unwrap();
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let mut h = [0u8; 28];
            s.read_exact(&mut h).unwrap();
            assert_eq!(&h[..12], b"\r\n\r\n\0\r\nQUIT\n");
            assert_eq!(&h[12..16], &[0x21, 0x11, 0, 12]);
            let port = u16::from_be_bytes([h[24], h[25]]);
            write!(s, "client-port:{port}").unwrap();
            s.shutdown(Shutdown::Write).unwrap();
        }
    });
    register(&hub, "web-1", "web.pop", backend);
    let mut t = handshake(hub.tls, &ca.client(), "anything.example", true).unwrap();
    let port = t.sock.local_addr().unwrap().port();
    let got = exchange(&mut t, b"");
    assert_eq!(
        String::from_utf8(got).unwrap(),
        format!("client-port:{port}")
    );
}

#[test]
fn openssl_and_curl_terminate_and_reach_the_app() {
    let ca = Ca::new();
    let dir = StateDir::new();
    let (pem, _) = ca.leaf(&["*.pop.internal"]);
    std::fs::write(dir.0.join("c.pem"), &pem).unwrap();
    let ca_file = dir.0.join("ca.crt");
    ca.write_pem(&ca_file);
    let cert = dir.0.join("c.pem").display().to_string();
    let hub = Hub::start(&[&format!("--tls-cert={cert}"), &format!("--tls-key={cert}")]);
    register(&hub, "gru-1", "gru.pop", http_backend("gru-says-hi"));
    let port = hub.tls.port();

    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "--http1.1",
            "--cacert",
            &ca_file.display().to_string(),
            "--resolve",
            &format!("gru.pop.internal:{port}:127.0.0.1"),
            &format!("https://gru.pop.internal:{port}/"),
        ])
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"gru-says-hi");

    let mut s_client = std::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-servername",
            "gru.pop.internal",
            "-CAfile",
            &ca_file.display().to_string(),
            "-verify_return_error",
            "-ign_eof",
            "-quiet",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run openssl");
    s_client
        .stdin
        .take()
        .unwrap()
        .write_all(b"GET / HTTP/1.1\r\nHost: gru.pop.internal\r\n\r\n")
        .unwrap();
    let out = s_client.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.ends_with("gru-says-hi"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A TLS backend holding its own certificate: echoes with a tag, after reading a PROXY v2
/// header when `proxy_v2`.
fn tls_backend(pem: String) -> SocketAddr {
    use rustls::pki_types::pem::PemObject;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap();
    let cfg = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap(),
    );
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { return };
            let cfg = cfg.clone();
            thread::spawn(move || {
                let conn = rustls::ServerConnection::new(cfg).unwrap();
                let mut tls = StreamOwned::new(conn, s);
                let _ = tls.write_all(b"backend:");
                let mut buf = [0u8; 4096];
                while let Ok(n) = tls.read(&mut buf) {
                    if n == 0 || tls.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                tls.conn.send_close_notify();
                let _ = tls.flush();
                let _ = tls.sock.shutdown(Shutdown::Write);
            });
        }
    });
    addr
}

#[test]
fn passthrough_delivers_the_backends_own_certificate() {
    let ca = Ca::new();
    let (backend_pem, backend_der) = ca.leaf(&["db.example"]);
    let hub = Hub::start(&[
        "--tls-passthrough=0",
        "--tls-route=db.example=db.pop:passthrough",
    ]);
    register(&hub, "db-1", "db.pop", tls_backend(backend_pem));
    let client = ca.client();
    // On the passthrough listener and through the route marked passthrough on the main one.
    for addr in [hub.passthrough[0], hub.tls] {
        let mut t = handshake(addr, &client, "db.example", true).unwrap();
        assert_eq!(leaf_of(&t), backend_der, "via {addr}");
        assert_eq!(exchange(&mut t, b"ping"), b"backend:ping");
    }
}

#[test]
fn a_second_connection_resumes() {
    let ca = Ca::new();
    let dir = StateDir::new();
    let (pem, _) = ca.leaf(&["*.pop.internal"]);
    std::fs::write(dir.0.join("c.pem"), &pem).unwrap();
    let hub = Hub::start(&[&format!("--tls-cert-dir={}", dir.0.display())]);
    register(&hub, "gru-1", "gru.pop", echo_backend(b"gru:"));
    let client = ca.client();
    let mut first = handshake(hub.tls, &client, "gru.pop.internal", true).unwrap();
    assert_eq!(
        first.conn.handshake_kind(),
        Some(rustls::HandshakeKind::Full)
    );
    assert_eq!(exchange(&mut first, b"1"), b"gru:1");
    // Whichever shard the kernel picks: tickets are sealed with a key every shard shares.
    for _ in 0..4 {
        let mut again = handshake(hub.tls, &client, "gru.pop.internal", true).unwrap();
        assert_eq!(
            again.conn.handshake_kind(),
            Some(rustls::HandshakeKind::Resumed)
        );
        assert_eq!(exchange(&mut again, b"2"), b"gru:2");
    }
}

/// A client limited to TLS 1.2, resuming by tickets (rustls' default) or by session id only.
fn tls12_client(ca: &Ca, session_id_only: bool) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert.der().clone()).unwrap();
    let mut cfg = ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    if session_id_only {
        cfg.resumption = rustls::client::Resumption::in_memory_sessions(16)
            .tls12_resumption(rustls::client::Tls12Resumption::SessionIdOnly);
    }
    Arc::new(cfg)
}

#[test]
fn tls12_resumes_by_ticket_on_any_shard_and_by_session_id() {
    let ca = Ca::new();
    let dir = StateDir::new();
    let (pem, _) = ca.leaf(&["*.pop.internal"]);
    std::fs::write(dir.0.join("c.pem"), &pem).unwrap();
    let certs = format!("--tls-cert-dir={}", dir.0.display());
    // Tickets: sealed with the key every shard shares, so any shard resumes (2 shards).
    // Session ids: each shard's own cache, so one shard makes the outcome certain.
    for (session_id_only, shards) in [(false, "--shards=2"), (true, "--shards=1")] {
        let hub = Hub::start(&[&certs, shards]);
        register(&hub, "gru-1", "gru.pop", echo_backend(b"gru:"));
        let client = tls12_client(&ca, session_id_only);
        let mut first = handshake(hub.tls, &client, "gru.pop.internal", true).unwrap();
        assert_eq!(
            first.conn.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_2)
        );
        assert_eq!(
            first.conn.handshake_kind(),
            Some(rustls::HandshakeKind::Full)
        );
        assert_eq!(exchange(&mut first, b"1"), b"gru:1");
        for _ in 0..4 {
            let mut again = handshake(hub.tls, &client, "gru.pop.internal", true).unwrap();
            assert_eq!(
                again.conn.handshake_kind(),
                Some(rustls::HandshakeKind::Resumed),
                "session_id_only={session_id_only}"
            );
            assert_eq!(exchange(&mut again, b"2"), b"gru:2");
        }
    }
}

/// A TLS backend behind a PROXY v2 header: reads the header, then completes its own handshake
/// and tells the client the source address the header named.
fn tls_backend_behind_proxy_v2(pem: String) -> SocketAddr {
    use rustls::pki_types::pem::PemObject;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap();
    let cfg = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap(),
    );
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let cfg = cfg.clone();
            thread::spawn(move || {
                let (ip, port) = read_proxy_v2(&mut s);
                let conn = rustls::ServerConnection::new(cfg).unwrap();
                let mut tls = StreamOwned::new(conn, s);
                let _ = write!(tls, "client:{ip}:{port}");
                tls.conn.send_close_notify();
                let _ = tls.flush();
                let mut buf = [0u8; 256];
                let _ = tls.read(&mut buf);
            });
        }
    });
    addr
}

/// Reads a PROXY v2 header for a TCP over IPv4 connection; the source address and port.
fn read_proxy_v2(s: &mut TcpStream) -> (std::net::Ipv4Addr, u16) {
    let mut h = [0u8; 28];
    s.read_exact(&mut h).unwrap();
    assert_eq!(&h[..12], b"\r\n\r\n\0\r\nQUIT\n", "signature");
    assert_eq!(h[12], 0x21, "version 2, PROXY command");
    assert_eq!(h[13], 0x11, "TCP over IPv4");
    assert_eq!(
        u16::from_be_bytes([h[14], h[15]]),
        12,
        "address block length"
    );
    let ip = std::net::Ipv4Addr::new(h[16], h[17], h[18], h[19]);
    (ip, u16::from_be_bytes([h[24], h[25]]))
}

#[test]
fn proxy_v2_on_a_passthrough_route_names_the_client() {
    let ca = Ca::new();
    let (backend_pem, backend_der) = ca.leaf(&["db.example"]);
    let hub = Hub::start(&["--tls-route=db.example=db.pop:passthrough:proxy-v2"]);
    register(
        &hub,
        "db-1",
        "db.pop",
        tls_backend_behind_proxy_v2(backend_pem),
    );
    let mut t = handshake(hub.tls, &ca.client(), "db.example", true).unwrap();
    // The backend's own certificate: the header went before the untouched ClientHello.
    assert_eq!(leaf_of(&t), backend_der);
    let me = t.sock.local_addr().unwrap();
    let mut got = String::new();
    let _ = t.read_to_string(&mut got);
    assert_eq!(got, format!("client:{}:{}", me.ip(), me.port()));
}

#[test]
fn proxy_v2_on_the_plain_tcp_proxy_names_the_client() {
    let hub = Hub::start(&["--proxy-protocol=true"]);
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend = l.local_addr().unwrap();
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let (ip, port) = read_proxy_v2(&mut s);
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).unwrap();
            write!(s, "client:{ip}:{port}:").unwrap();
            s.write_all(&rest).unwrap();
            s.shutdown(Shutdown::Write).unwrap();
        }
    });
    register(&hub, "web-1", "web.pop", backend);
    let mut s = TcpStream::connect_timeout(&hub.proxy, STEP).unwrap();
    s.set_read_timeout(Some(STEP)).unwrap();
    let me = s.local_addr().unwrap();
    s.write_all(b"payload").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut got = String::new();
    s.read_to_string(&mut got).unwrap();
    assert_eq!(got, format!("client:{}:{}:payload", me.ip(), me.port()));
}

/// The sum of a counter's samples over every shard, from `/metrics`.
fn metric(hub: &Hub, name: &str) -> f64 {
    let (status, _, body) =
        hub.http(b"GET /metrics HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n\r\n");
    assert_eq!(status, 200);
    String::from_utf8(body)
        .unwrap()
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with(['{', ' ']))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Polls `/metrics` (bounded) until `name` reaches `want`.
fn wait_metric(hub: &Hub, name: &str, want: f64) {
    let deadline = Instant::now() + STEP;
    loop {
        let got = metric(hub, name);
        if got >= want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} stayed at {got}, not {want}"
        );
        thread::yield_now();
    }
}

#[test]
fn at_the_handshake_cap_new_connections_are_refused_at_once() {
    let ca = Ca::new();
    let dir = StateDir::new();
    let (pem, _) = ca.leaf(&["*.pop.internal"]);
    std::fs::write(dir.0.join("c.pem"), &pem).unwrap();
    let hub = Hub::start(&[
        &format!("--tls-cert-dir={}", dir.0.display()),
        "--shards=1",
        "--tls-max-handshakes=1",
    ]);
    register(&hub, "gru-1", "gru.pop", echo_backend(b"gru:"));
    // A silent client takes the only slot (taken as it is accepted, before any byte).
    let silent = TcpStream::connect_timeout(&hub.tls, STEP).unwrap();
    wait_metric(&hub, "edgeproxy_proxy_connections_accepted_total", 1.0);
    // The next one is closed at once, not queued until the silent one times out (10 s).
    let mut refused = TcpStream::connect_timeout(&hub.tls, STEP).unwrap();
    refused.set_read_timeout(Some(STEP)).unwrap();
    let t0 = Instant::now();
    let mut buf = [0u8; 16];
    let n = refused.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0);
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert_eq!(metric(&hub, "edgeproxy_tls_handshakes_refused_total"), 1.0);
    // The slot comes back when the silent client goes (counted as a failed handshake).
    drop(silent);
    wait_metric(&hub, "edgeproxy_tls_handshake_failures_total", 1.0);
    let mut t = handshake(hub.tls, &ca.client(), "gru.pop.internal", true).unwrap();
    assert_eq!(exchange(&mut t, b"ok"), b"gru:ok");
}

#[test]
fn the_handshake_timeout_closes_silent_and_slow_clients() {
    let hub = Hub::start(&["--tls-handshake-timeout-ms=300"]);
    for first_bytes in [&b""[..], &[22, 3, 1, 0, 200, 1, 0, 0, 196][..]] {
        let mut s = TcpStream::connect(hub.tls).unwrap();
        s.set_read_timeout(Some(STEP)).unwrap();
        s.write_all(first_bytes).unwrap();
        let t0 = Instant::now();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap_or(0);
        let waited = t0.elapsed();
        assert_eq!(n, 0, "closed without an answer");
        assert!(waited >= Duration::from_millis(250), "{waited:?}");
        assert!(waited < Duration::from_secs(5), "{waited:?}");
    }
}

#[test]
fn a_thousand_garbage_connections_leave_the_listener_serving() {
    let ca = Ca::new();
    let dir = StateDir::new();
    let (pem, _) = ca.leaf(&["*.pop.internal"]);
    std::fs::write(dir.0.join("c.pem"), &pem).unwrap();
    let hub = Hub::start(&[&format!("--tls-cert-dir={}", dir.0.display())]);
    register(&hub, "gru-1", "gru.pop", echo_backend(b"gru:"));
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut alerts = 0;
    for i in 0..1000 {
        let mut s = TcpStream::connect(hub.tls).unwrap();
        s.set_read_timeout(Some(STEP)).unwrap();
        let garbage: Vec<u8> = match i % 4 {
            // Random bytes.
            0 => (0..(rnd() % 300 + 1)).map(|_| rnd() as u8).collect(),
            // HTTP on the TLS port.
            1 => b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            // A handshake record that is not a ClientHello.
            2 => vec![22, 3, 3, 0, 4, 2, 0, 0, 0],
            // A truncated ClientHello, then end of stream.
            _ => vec![22, 3, 1, 1, 0, 1, 0, 0, 252, 3, 3],
        };
        let _ = s.write_all(&garbage);
        let _ = s.shutdown(Shutdown::Write);
        let mut reply = Vec::new();
        let _ = s.read_to_end(&mut reply);
        if reply.first() == Some(&21) {
            alerts += 1;
        }
    }
    assert!(alerts >= 750, "{alerts} alerts");
    let mut t = handshake(hub.tls, &ca.client(), "gru.pop.internal", true).unwrap();
    assert_eq!(exchange(&mut t, b"still"), b"gru:still");
}

#[test]
fn reload_changes_new_connections_and_keeps_open_ones() {
    let ca = Ca::new();
    let dir = StateDir::new();
    let (v1, v1_der) = ca.leaf(&["*.pop.internal"]);
    let (v2, v2_der) = ca.leaf(&["*.pop.internal", "extra.example"]);
    let file = dir.0.join("c.pem");
    std::fs::write(&file, &v1).unwrap();
    let hub = Hub::start(&[&format!("--tls-cert-dir={}", dir.0.display())]);
    register(&hub, "gru-1", "gru.pop", echo_backend(b"gru:"));
    let client = ca.client();
    let mut open = handshake(hub.tls, &client, "gru.pop.internal", true).unwrap();
    assert_eq!(leaf_of(&open), v1_der);
    open.write_all(b"a").unwrap();
    let mut got = [0u8; 5];
    open.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"gru:a");

    // Renewal: write the new file beside, rename over (what certbot's deploy hooks do), SIGHUP.
    let tmp = dir.0.join("c.pem.new");
    std::fs::write(&tmp, &v2).unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    hub.signal(libc::SIGHUP);
    hub.wait_log("tls certificates reloaded");
    // A new client (a client resuming its session is not sent a certificate at all).
    let client = ca.client();
    let mut fresh = handshake(hub.tls, &client, "gru.pop.internal", true).unwrap();
    assert_eq!(leaf_of(&fresh), v2_der);
    assert_eq!(exchange(&mut fresh, b"new"), b"gru:new");
    // The connection opened before the reload carries on.
    assert_eq!(exchange(&mut open, b"b"), b"b");

    // A broken file on reload: logged, the old certificates stay.
    std::fs::write(&file, "not a certificate").unwrap();
    hub.signal(libc::SIGHUP);
    let line = hub.wait_log("tls reload failed");
    assert!(line.contains("c.pem"), "{line}");
    let client = ca.client();
    let t = handshake(hub.tls, &client, "gru.pop.internal", true).unwrap();
    assert_eq!(leaf_of(&t), v2_der);
}

/// An API request with a bearer token (or none).
fn api_call(hub: &Hub, method: &str, path: &str, token: Option<&str>) -> (u16, serde_json::Value) {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let raw = format!(
        "{method} {path} HTTP/1.1\r\nHost: hub\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let (status, _, body) = hub.http(raw.as_bytes());
    (
        status,
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    )
}

#[test]
fn reload_by_api_call() {
    let ca = Ca::new();
    let dir = StateDir::new();
    let (v1, v1_der) = ca.leaf(&["*.pop.internal"]);
    let (v2, v2_der) = ca.leaf(&["*.pop.internal"]);
    let (other, _) = ca.leaf(&["other.example"]);
    let file = dir.0.join("c.pem");
    std::fs::write(&file, &v1).unwrap();
    std::fs::write(dir.0.join("d.pem"), &other).unwrap();
    let hub = Hub::start_with_env(
        &[&format!("--tls-cert-dir={}", dir.0.display())],
        &[("EDGEPROXY_API_TOKEN", "s3cret")],
    );
    register_with_token(&hub, "gru-1", "gru.pop", echo_backend(b"gru:"));
    let t = handshake(hub.tls, &ca.client(), "gru.pop.internal", true).unwrap();
    assert_eq!(leaf_of(&t), v1_der);

    // A mutating route: the token is needed; only POST.
    assert_eq!(api_call(&hub, "POST", "/api/v1/tls/reload", None).0, 401);
    let (status, _) = api_call(&hub, "GET", "/api/v1/tls/reload", Some("s3cret"));
    assert_eq!(status, 405);

    std::fs::write(&file, &v2).unwrap();
    let (status, json) = api_call(&hub, "POST", "/api/v1/tls/reload", Some("s3cret"));
    assert_eq!(status, 200, "{json}");
    assert_eq!(
        json,
        serde_json::json!({"reloaded": true, "certificates": 2})
    );
    // The answer came after the swap: a new client (no session to resume) sees v2 at once.
    let t = handshake(hub.tls, &ca.client(), "gru.pop.internal", true).unwrap();
    assert_eq!(leaf_of(&t), v2_der);

    // A broken file: 500 naming it, and the certificates in force stay.
    std::fs::write(&file, "not a certificate").unwrap();
    let (status, json) = api_call(&hub, "POST", "/api/v1/tls/reload/", Some("s3cret"));
    assert_eq!(status, 500, "{json}");
    assert!(json["error"].as_str().unwrap().contains("c.pem"), "{json}");
    let t = handshake(hub.tls, &ca.client(), "gru.pop.internal", true).unwrap();
    assert_eq!(leaf_of(&t), v2_der);
}

fn register_with_token(hub: &Hub, id: &str, app: &str, addr: SocketAddr) {
    let body = format!(
        r#"{{"id":"{id}","app":"{app}","region":"sa","ip":"127.0.0.1","port":{}}}"#,
        addr.port()
    );
    let raw = format!(
        "POST /api/v1/register HTTP/1.1\r\nHost: hub\r\nAuthorization: Bearer s3cret\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let (status, _, _) = hub.http(raw.as_bytes());
    assert_eq!(status, 201);
}

#[test]
fn bad_certificate_files_stop_startup_with_one_line() {
    let ca = Ca::new();
    let dir = StateDir::new();
    let (pem, _) = ca.leaf(&["a.example"]);
    let (other, _) = ca.leaf(&["b.example"]);
    let cert = dir.0.join("a.pem");
    // The certificate of one pair with the key of another.
    let key_start = other.find("-----BEGIN PRIVATE KEY").unwrap();
    std::fs::write(&cert, &pem[..pem.find("-----BEGIN PRIVATE KEY").unwrap()]).unwrap();
    let key = dir.0.join("b.key");
    std::fs::write(&key, &other[key_start..]).unwrap();
    for (c, k, needle) in [
        (cert.clone(), dir.0.join("missing.key"), "missing.key"),
        (cert.clone(), key.clone(), "b.key"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_edgeproxy"))
            .args([
                "--shards=1",
                "--listen-addr=127.0.0.1:0",
                "--api-listen-addr=127.0.0.1:0",
                "--dns-listen-addr=127.0.0.1:0",
                "--tls-listen-addr=127.0.0.1:0",
                "--gossip-addr=127.0.0.1:0",
                "--sync-addr=127.0.0.1:0",
                "--persist=false",
                &format!("--tls-cert={}", c.display()),
                &format!("--tls-key={}", k.display()),
            ])
            .env_remove("EDGEPROXY_TLS_CERT_DIR")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&out.stderr);
        let line = stderr
            .lines()
            .find(|l| l.starts_with("edgeproxy: "))
            .expect("an error line");
        assert!(line.contains(needle), "{line}");
    }
}

#[test]
fn without_certificates_a_self_signed_one_is_served_with_a_warning() {
    let hub = Hub::start(&[]);
    let warned = hub
        .startup_log
        .iter()
        .any(|l| l.contains("self-signed") && l.contains("EDGEPROXY_TLS_CERT"));
    assert!(warned, "{:#?}", hub.startup_log);
}
