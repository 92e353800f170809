//! The proxy through real loopback sockets, on one glommio executor per test: the hub's
//! listeners, the backends and the clients are all tasks of that executor, so a test ends with
//! everything it started.

use super::{serve, Serves};
use crate::config::{Config, SpliceMode};
use crate::registry::{BackendSpec, Registry, SnapshotCell};
use crate::shard::ShardCtx;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalSender};
use glommio::net::{TcpListener, TcpStream};
use glommio::{LocalExecutorBuilder, Placement};
use std::cell::RefCell;
use std::hash::Hasher;
use std::net::{Shutdown, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

const MODES: [SpliceMode; 3] = [SpliceMode::Never, SpliceMode::Always, SpliceMode::Auto];

/// The hub side of a test: one shard's context, its registry, a listener for every app and a
/// route listener for the app `bulk`.
struct Env {
    ctx: Rc<ShardCtx>,
    registry: RefCell<Registry>,
    proxy: SocketAddr,
    bulk_route: SocketAddr,
}

impl Env {
    fn start(cfg: Config) -> Env {
        let cell = Arc::new(SnapshotCell::new());
        let registry = Registry::new(1, 0, 600, cell.clone());
        let ctx = Rc::new(ShardCtx {
            id: 0,
            shards: 1,
            cfg: Arc::new(cfg),
            cell,
            started_unix_ms: 0,
            all_metrics: Arc::new(crate::metrics::Metrics::new(1)),
            live: Arc::new(crate::live::LiveCell::default()),
        });
        let any = listen();
        let bulk = listen();
        let env = Env {
            ctx: ctx.clone(),
            registry: RefCell::new(registry),
            proxy: any.local_addr().unwrap().as_socket().unwrap(),
            bulk_route: bulk.local_addr().unwrap().as_socket().unwrap(),
        };
        glommio::spawn_local(serve(ctx.clone(), any, Serves::Every)).detach();
        glommio::spawn_local(serve(ctx, bulk, Serves::App(Rc::from("bulk")))).detach();
        env
    }

    fn register(&self, id: &str, app: &str, region: &str, addr: SocketAddr) {
        let mut reg = self.registry.borrow_mut();
        reg.register(
            BackendSpec {
                id: id.into(),
                app: app.into(),
                region: region.into(),
                country: None,
                ip: addr.ip(),
                port: addr.port(),
                weight: 1,
                soft_limit: None,
                hard_limit: None,
                ttl_secs: Some(0),
                alpn: None,
                check: None,
            },
            crate::clock::now_ms(),
        );
        reg.publish();
    }

    fn set_hard_limit(&self, id: &str, limit: u32) {
        let mut reg = self.registry.borrow_mut();
        let mut spec = crate::registry::stored(reg.get(id).unwrap()).spec();
        spec.hard_limit = Some(limit);
        reg.register(spec, crate::clock::now_ms());
        reg.publish();
    }

    fn reserved(&self, id: &str) -> u32 {
        let snap = self.ctx.cell.load();
        snap.find(id)
            .map(|b| b.live.reserved.load(std::sync::atomic::Ordering::Relaxed))
            .unwrap_or(0)
    }

    fn connections(&self, id: &str) -> u32 {
        self.ctx
            .cell
            .load()
            .find(id)
            .map(|b| b.connections())
            .unwrap_or(0)
    }
}

/// A non-blocking listener on an OS port, as the shards bind them.
fn listen() -> socket2::Socket {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_nonblocking(true).unwrap();
    s.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    s.listen(1024).unwrap();
    s
}

fn config(mode: SpliceMode) -> Config {
    let mut cfg = Config::for_tests(1);
    cfg.splice = mode;
    cfg.connect_timeout = Duration::from_secs(2);
    cfg.connect_tries = 3;
    cfg
}

/// Runs `test` on a fresh executor.
fn run<F, Fut>(test: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(512 * 1024)
        .spawn(test)
        .unwrap()
        .join()
        .unwrap();
}

/// Yields until `done` holds (other tasks run meanwhile); panics if it never does.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        glommio::yield_if_needed().await;
        futures_lite::future::yield_now().await;
    }
}

/// A port on 127.0.0.1 with nothing listening (connections are refused).
fn refused_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A backend that answers each connection with `tag` then echoes until end of stream, then
/// closes.
fn echo_backend(tag: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    glommio::spawn_local(async move {
        while let Ok(mut s) = l.accept().await {
            glommio::spawn_local(async move {
                if s.write_all(tag.as_bytes()).await.is_err() {
                    return;
                }
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = s.shutdown(Shutdown::Write).await;
            })
            .detach();
        }
    })
    .detach();
    addr
}

/// Connects through the proxy and does one echo round trip; returns the backend's tag.
async fn echo_round_trip(proxy: SocketAddr, tag_len: usize) -> String {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(b"ping").await.unwrap();
    s.shutdown(Shutdown::Write).await.unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).await.unwrap();
    assert_eq!(got.len(), tag_len + 4, "reply {got:?}");
    assert_eq!(&got[tag_len..], b"ping");
    String::from_utf8(got[..tag_len].to_vec()).unwrap()
}

/// A deterministic byte stream: `len` bytes in chunks of varying size, from a 64 KiB + 13 block
/// of pseudo-random bytes, so that chunk and pattern boundaries never line up.
struct Pattern {
    block: Vec<u8>,
}

impl Pattern {
    fn new(seed: u64) -> Pattern {
        let mut x = seed | 1;
        let block = (0..64 * 1024 + 13)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        Pattern { block }
    }

    /// Writes `len` bytes to `s`, shuts it for writing, and returns the hash of what was sent.
    async fn send(&self, s: &mut TcpStream, len: u64) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        let mut sent = 0u64;
        let mut off = 0usize;
        let mut step = 1000usize;
        while sent < len {
            step = (step * 7 + 4099) % 60_000 + 1;
            let n = step.min(self.block.len() - off).min((len - sent) as usize);
            let chunk = &self.block[off..off + n];
            s.write_all(chunk).await.unwrap();
            h.write(chunk);
            sent += n as u64;
            off = (off + n) % self.block.len();
        }
        s.shutdown(Shutdown::Write).await.unwrap();
        h.finish()
    }
}

/// Reads `s` to end of stream; returns (bytes, hash).
async fn receive(s: &mut TcpStream) -> (u64, u64) {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let mut buf = vec![0u8; 128 * 1024];
    let mut total = 0u64;
    loop {
        let n = s.read(&mut buf).await.unwrap();
        if n == 0 {
            return (total, h.finish());
        }
        h.write(&buf[..n]);
        total += n as u64;
    }
}

/// A backend that, per connection, sends `len` bytes of a pattern while hashing what it
/// receives, and reports (bytes received, hash received, hash sent).
fn bulk_backend(len: u64, report: LocalSender<(u64, u64, u64)>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let report = Rc::new(report);
    glommio::spawn_local(async move {
        while let Ok(s) = l.accept().await {
            let report = report.clone();
            glommio::spawn_local(async move {
                let pattern = Pattern::new(2);
                let mut tx = s;
                // Reads need only `&`, writes `&mut`: read through a dup of the socket.
                let mut rx = dup_stream(&tx);
                let (sent, (got, got_hash)) =
                    futures_lite::future::zip(pattern.send(&mut tx, len), receive(&mut rx)).await;
                report.send((got, got_hash, sent)).await.unwrap();
            })
            .detach();
        }
    })
    .detach();
    addr
}

/// A second glommio stream on a duplicate of `s`'s descriptor (same socket), so that one task
/// can read and write the socket concurrently.
fn dup_stream(s: &TcpStream) -> TcpStream {
    super::splice::dup_stream(s).unwrap()
}

#[test]
fn hash_is_independent_of_chunking() {
    let mut a = std::collections::hash_map::DefaultHasher::new();
    a.write(b"abcdefghijklmnopq");
    let mut b = std::collections::hash_map::DefaultHasher::new();
    b.write(b"abc");
    b.write(b"defghijklm");
    b.write(b"nopq");
    assert_eq!(a.finish(), b.finish());
}

fn transfer_100mib_each_way(mode: SpliceMode) {
    run(move || async move {
        const LEN: u64 = 100 << 20;
        let env = Env::start(config(mode));
        let (tx, rx) = local_channel::new_bounded(4);
        env.register("bulk1", "bulk", "sa", bulk_backend(LEN, tx));
        let started = Instant::now();
        let mut c = TcpStream::connect(env.bulk_route).await.unwrap();
        let mut c_rx = dup_stream(&c);
        let (sent, (got, got_hash)) =
            futures_lite::future::zip(Pattern::new(1).send(&mut c, LEN), receive(&mut c_rx)).await;
        let (b_got, b_got_hash, b_sent) = rx.recv().await.unwrap();
        eprintln!(
            "{mode:?}: 2 x 100 MiB through the proxy in {:?}",
            started.elapsed()
        );
        assert_eq!(b_got, LEN, "backend received");
        assert_eq!(b_got_hash, sent, "client → backend bytes differ");
        assert_eq!(got, LEN, "client received");
        assert_eq!(got_hash, b_sent, "backend → client bytes differ");
        drop((c, c_rx));
        until("the live count to drop", || env.connections("bulk1") == 0).await;
    });
}

#[test]
fn transfer_100mib_each_way_copy() {
    transfer_100mib_each_way(SpliceMode::Never);
}

#[test]
fn transfer_100mib_each_way_splice() {
    transfer_100mib_each_way(SpliceMode::Always);
}

#[test]
fn transfer_100mib_each_way_auto() {
    transfer_100mib_each_way(SpliceMode::Auto);
}

#[test]
fn half_close_both_ways() {
    for mode in MODES {
        run(move || async move {
            let env = Env::start(config(mode));
            // Backend A: reads to end of stream, then replies with the byte count.
            let la = TcpListener::bind("127.0.0.1:0").unwrap();
            env.register("a", "replier", "sa", la.local_addr().unwrap());
            glommio::spawn_local(async move {
                let mut s = la.accept().await.unwrap();
                let mut got = Vec::new();
                s.read_to_end(&mut got).await.unwrap();
                s.write_all(format!("got {}", got.len()).as_bytes())
                    .await
                    .unwrap();
            })
            .detach();
            // Client shuts its write side first and still gets the reply.
            let mut c = TcpStream::connect(env.proxy).await.unwrap();
            c.write_all(b"hello").await.unwrap();
            c.shutdown(Shutdown::Write).await.unwrap();
            let mut reply = Vec::new();
            c.read_to_end(&mut reply).await.unwrap();
            assert_eq!(reply, b"got 5", "{mode:?}");
            drop(c);
            env.registry.borrow_mut().deregister("a");
            env.registry.borrow_mut().publish();

            // Backend B: greets, shuts its write side, then reads what the client still sends.
            let lb = TcpListener::bind("127.0.0.1:0").unwrap();
            env.register("b", "greeter", "sa", lb.local_addr().unwrap());
            let (tx, rx) = local_channel::new_bounded(1);
            glommio::spawn_local(async move {
                let mut s = lb.accept().await.unwrap();
                s.write_all(b"hi").await.unwrap();
                s.shutdown(Shutdown::Write).await.unwrap();
                let mut got = Vec::new();
                s.read_to_end(&mut got).await.unwrap();
                tx.send(got).await.unwrap();
            })
            .detach();
            let mut c = TcpStream::connect(env.proxy).await.unwrap();
            let mut greeting = Vec::new();
            c.read_to_end(&mut greeting).await.unwrap();
            assert_eq!(greeting, b"hi", "{mode:?}");
            c.write_all(b"still talking").await.unwrap();
            c.shutdown(Shutdown::Write).await.unwrap();
            assert_eq!(rx.recv().await.unwrap(), b"still talking", "{mode:?}");
            let mut rest = Vec::new();
            c.read_to_end(&mut rest).await.unwrap();
            until("the live count to drop", || env.connections("b") == 0).await;
        });
    }
}

#[test]
fn dead_backends_are_skipped_and_every_connection_succeeds() {
    for mode in MODES {
        run(move || async move {
            let env = Env::start(config(mode));
            // The dead ones sit in the hub's region, so they are always tried first.
            env.register("dead1", "web", "sa", refused_port());
            env.register("dead2", "web", "sa", refused_port());
            env.register("live", "web", "us", echo_backend("live:"));
            let proxy = env.proxy;
            let tasks: Vec<_> = (0..20)
                .map(|_| {
                    glommio::spawn_local(async move {
                        for _ in 0..5 {
                            assert_eq!(echo_round_trip(proxy, 5).await, "live:");
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await;
            }
            until("the live count to drop", || env.connections("live") == 0).await;
            assert_eq!(env.connections("dead1"), 0);
        });
    }
}

#[test]
fn no_backend_closes_the_client_promptly() {
    for mode in MODES {
        run(move || async move {
            let env = Env::start(config(mode));
            // Nothing registered at all, then only backends that refuse.
            for round in 0..2 {
                if round == 1 {
                    env.register("dead", "bulk", "sa", refused_port());
                }
                for addr in [env.proxy, env.bulk_route] {
                    let started = Instant::now();
                    let mut c = TcpStream::connect(addr).await.unwrap();
                    let mut buf = [0u8; 16];
                    // End of stream or a reset: either way, closed.
                    let n = c.read(&mut buf).await.unwrap_or(0);
                    assert_eq!(n, 0, "{mode:?}");
                    assert!(started.elapsed() < Duration::from_secs(2), "{mode:?}");
                }
            }
        });
    }
}

#[test]
fn route_listener_reaches_only_its_app() {
    run(|| async {
        let env = Env::start(config(SpliceMode::Never));
        // `other` would win everywhere on geography: it is in the hub's region.
        env.register("other", "web", "sa", echo_backend("web: "));
        env.register("bulk1", "bulk", "eu", echo_backend("bulk:"));
        for _ in 0..10 {
            assert_eq!(echo_round_trip(env.bulk_route, 5).await, "bulk:");
        }
        until("the live count to drop", || env.connections("bulk1") == 0).await;
        assert_eq!(env.connections("other"), 0);
    });
}

#[test]
fn live_counter_follows_open_connections() {
    for mode in MODES {
        run(move || async move {
            let env = Env::start(config(mode));
            env.register("e", "web", "sa", echo_backend("e"));
            let mut open = Vec::new();
            for i in 1..=5 {
                let mut c = TcpStream::connect(env.proxy).await.unwrap();
                let mut tag = [0u8; 1];
                c.read_exact(&mut tag).await.unwrap();
                open.push(c);
                assert_eq!(env.connections("e"), i);
            }
            // Abrupt closes (no shutdown first) end the forwarded connections too.
            open.clear();
            until("the live count to drop", || env.connections("e") == 0).await;
        });
    }
}

#[test]
fn hard_limits_hold_through_the_proxy_and_slots_come_back() {
    run(|| async {
        let env = Env::start(config(SpliceMode::Never));
        // `lim` is in the hub's region, so it is every client's first choice until full.
        env.register("lim", "web", "sa", echo_backend("l"));
        env.set_hard_limit("lim", 2);
        env.register("spill", "web", "us", echo_backend("s"));
        let mut open = Vec::new();
        let mut tags = String::new();
        for _ in 0..5 {
            let mut c = TcpStream::connect(env.proxy).await.unwrap();
            let mut tag = [0u8; 1];
            c.read_exact(&mut tag).await.unwrap();
            tags.push(tag[0] as char);
            open.push(c);
        }
        assert_eq!(tags.matches('l').count(), 2, "{tags}");
        assert_eq!((env.connections("lim"), env.reserved("lim")), (2, 2));
        open.clear();
        until("the slots to come back", || env.reserved("lim") == 0).await;
        until("the live count to drop", || env.connections("lim") == 0).await;
        // A limited backend that refuses: each failed connect gives its slot back.
        env.register("dead", "web", "sa", refused_port());
        env.set_hard_limit("dead", 1);
        for _ in 0..5 {
            assert!(!echo_round_trip(env.proxy, 1).await.is_empty());
        }
        assert_eq!(env.reserved("dead"), 0);
        until("the live count to drop", || {
            env.connections("lim") == 0 && env.reserved("lim") == 0
        })
        .await;
    });
}

#[test]
fn idle_connections_are_closed() {
    run(|| async {
        let mut cfg = config(SpliceMode::Always);
        cfg.idle_timeout = Duration::from_millis(300);
        let env = Env::start(cfg);
        env.register("e", "web", "sa", echo_backend("e"));
        let started = Instant::now();
        let mut c = TcpStream::connect(env.proxy).await.unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got).await.unwrap();
        let took = started.elapsed();
        assert_eq!(got, b"e");
        assert!(took >= Duration::from_millis(290), "closed after {took:?}");
        assert!(took < Duration::from_secs(5), "closed after {took:?}");
        until("the live count to drop", || env.connections("e") == 0).await;
    });
}

#[test]
fn at_the_connection_cap_new_clients_wait_in_the_backlog() {
    run(|| async {
        let mut cfg = config(SpliceMode::Auto);
        cfg.max_connections = 1;
        let env = Env::start(cfg);
        env.register("e", "web", "sa", echo_backend("e"));
        let mut a = TcpStream::connect(env.proxy).await.unwrap();
        let mut tag = [0u8; 1];
        a.read_exact(&mut tag).await.unwrap();
        // The kernel completes b's handshake, but the shard must not accept it while a is open.
        let mut b = TcpStream::connect(env.proxy).await.unwrap();
        b.write_all(b"x").await.unwrap();
        for _ in 0..20 {
            a.write_all(b"ping").await.unwrap();
            let mut echo = [0u8; 4];
            a.read_exact(&mut echo).await.unwrap();
            assert_eq!(env.connections("e"), 1);
        }
        drop(a);
        // Once a is gone, b is served.
        let mut got = [0u8; 2];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ex");
        assert_eq!(env.connections("e"), 1);
    });
}

/// A pending accept polled again and again beside another future (as `until_drain` does with
/// its 50 ms timer) must not pile up wakers: glommio's task reference count is 16 bits, and an
/// idle listener's accept loop died after 32,767 polls (vendored glommio, patch 4).
#[test]
fn a_pending_accept_survives_being_polled_forty_thousand_times() {
    run(|| async {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let spin = async {
            for _ in 0..40_000 {
                futures_lite::future::yield_now().await;
            }
        };
        let accept = async {
            let _ = listener.accept().await;
            panic!("nobody connects");
        };
        futures_lite::future::or(accept, spin).await;
    });
}

/// The same for the proxy's own accept ([`super::sock::Acceptor`]): it keeps one waker.
#[test]
fn a_pending_epoll_accept_survives_being_polled_forty_thousand_times() {
    run(|| async {
        let listener = listen();
        let acceptor = super::sock::Acceptor::new(&listener).unwrap();
        let spin = async {
            for _ in 0..40_000 {
                futures_lite::future::yield_now().await;
            }
        };
        let accept = async {
            let _ = acceptor.accept().await;
            panic!("nobody connects");
        };
        futures_lite::future::or(accept, spin).await;
    });
}

/// A read that takes the last bytes before an end of stream the reactor already saw (a short
/// read, which clears the read flag) must still see the end: its edge does not come again.
#[test]
fn end_of_stream_right_after_the_last_bytes_is_seen() {
    run(|| async {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let mut s = super::Sock::connect(addr, Duration::from_secs(2), None)
            .await
            .unwrap();
        let (mut peer, _) = l.accept().unwrap();
        std::io::Write::write_all(&mut peer, b"last").unwrap();
        peer.shutdown(Shutdown::Write).unwrap();
        // Let the reactor harvest data and end of stream in one event.
        until("the end of stream to be harvested", || {
            super::reactor::stats().is_some_and(|(_, _, events, _)| events >= 2)
        })
        .await;
        let mut buf = [0u8; 64];
        assert_eq!(s.read(&mut buf).await.unwrap(), 4);
        assert_eq!(&buf[..4], b"last");
        let end = futures_lite::future::or(async { Some(s.read(&mut buf).await) }, async {
            glommio::timer::sleep(Duration::from_secs(10)).await;
            None
        })
        .await;
        assert_eq!(end.expect("end of stream never seen").unwrap(), 0);
    });
}

/// Dropping an accept in progress takes no connection: a poll of the epoll set takes nothing,
/// so a connection that arrives meanwhile stays queued for whoever accepts next (a successor
/// after a socket handover).
#[test]
fn a_dropped_epoll_accept_takes_no_connection() {
    run(|| async {
        let listener = listen();
        let addr = listener.local_addr().unwrap().as_socket().unwrap();
        let acceptor = super::sock::Acceptor::new(&listener).unwrap();
        let pending = futures_lite::future::or(
            async {
                let _ = acceptor.accept().await;
                true
            },
            async { false },
        )
        .await;
        assert!(!pending, "nothing was queued yet");
        let _client = std::net::TcpStream::connect(addr).unwrap();
        drop(acceptor);
        // Loopback completes the handshake inside connect: the connection is queued.
        let (taken, _) = listener.accept().expect("the connection is still queued");
        drop(taken);
    });
}

/// Connecting: a refused port fails at once, an unroutable one within the timeout, and a
/// live one works both ways.
#[test]
fn epoll_connect_fails_cleanly_and_succeeds() {
    run(|| async {
        let e = super::Sock::connect(refused_port(), Duration::from_secs(2), None)
            .await
            .err()
            .expect("refused");
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
        let addr = echo_backend("tag:");
        let mut s = super::Sock::connect(addr, Duration::from_secs(2), None)
            .await
            .unwrap();
        assert!(s.nodelay().unwrap());
        s.write_all(b"ping").await.unwrap();
        futures_lite::AsyncWriteExt::close(&mut s).await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"tag:ping");
        assert_eq!(s.peer_addr(), addr);
    });
}

/// A vectored write goes out whole, in order (one `sendmsg`), as rustls's flights do.
#[test]
fn vectored_writes_keep_every_buffer_in_order() {
    run(|| async {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut s = super::Sock::connect(l.local_addr().unwrap(), Duration::from_secs(2), None)
            .await
            .unwrap();
        let (mut peer, _) = l.accept().unwrap();
        let bufs = [
            std::io::IoSlice::new(b"server-hello|"),
            std::io::IoSlice::new(b""),
            std::io::IoSlice::new(b"certificate|"),
            std::io::IoSlice::new(b"finished"),
        ];
        let n = s.write_vectored(&bufs).await.unwrap();
        assert_eq!(n, 33);
        drop(s);
        let mut got = Vec::new();
        std::io::Read::read_to_end(&mut peer, &mut got).unwrap();
        assert_eq!(got, b"server-hello|certificate|finished");
    });
}
