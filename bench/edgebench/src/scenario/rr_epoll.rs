//! The closed-loop engine of `tcp-rr` and `tcp-connect`: all of a shard's connections driven
//! from one level-triggered epoll, as wrk does.
//!
//! Why not glommio streams here: measured against nginx, a glommio stream request/response
//! cost about 20 µs of generator CPU per request against wrk's 12.6 µs; a quarter of it was
//! io_uring poll arming and task-work per wait. Here a request is one `send` and (usually) one
//! `recv`, and one `epoll_wait` serves every connection that became ready.
//!
//! The shard's executor thread blocks in `epoll_wait` for at most [`MAX_WAIT_MS`] and yields
//! to glommio between rounds, so the shard's other tasks still run. Timeouts are checked here
//! (a scan a few times per `--timeout`), not by the shard's watchdog. Open loop keeps the
//! glommio workers, whose timers are finer than epoll's milliseconds.

use super::tcp::RrPlan;
use crate::http;
use crate::pace::Take;
use crate::run::ShardCtx;
use crate::stats::{Done, ErrorKind};
use crate::sys::{Epoll, Interest};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// Longest block in `epoll_wait`: bounds how late the shard's other tasks (the once-a-second
/// interval) and the end of the run are noticed.
const MAX_WAIT_MS: i32 = 5;
/// Pause of a slot after a failed connect, so that a dead target is not hammered.
const RETRY_AFTER: Duration = Duration::from_millis(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
    Connecting,
    Writing,
    Reading,
}

struct Conn {
    sock: Option<Socket>,
    /// What epoll watches on `sock`.
    interest: Interest,
    state: State,
    due: Instant,
    started: Instant,
    written: usize,
    buf: Vec<u8>,
    not_before: Option<Instant>,
}

fn connect_error(e: &io::Error) -> ErrorKind {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connect-refused",
        io::ErrorKind::TimedOut => "connect-timeout",
        io::ErrorKind::AddrNotAvailable => "no-local-port",
        _ => "connect",
    }
}

struct Engine<'a> {
    ctx: &'a ShardCtx,
    p: &'a RrPlan,
    epoll: Epoll,
    conns: Vec<Conn>,
    idle: Vec<usize>,
    /// Slots resting after a failed connect.
    resting: Vec<usize>,
}

impl Engine<'_> {
    fn finish(&mut self, i: usize, now: Instant, r: Result<Done, ErrorKind>) {
        let c = &mut self.conns[i];
        let keep = r.is_ok() && !self.p.new_connection;
        if !keep {
            if let Some(s) = c.sock.take() {
                self.epoll.delete(s.as_raw_fd());
            }
            c.buf.clear();
        }
        if matches!(r, Err(k) if k.starts_with("connect") || k == "no-local-port") {
            c.not_before = Some(now + RETRY_AFTER);
        }
        c.state = State::Idle;
        self.ctx.record_at(c.due, now, r);
        if c.not_before.is_some() {
            self.resting.push(i);
        } else {
            self.idle.push(i);
        }
    }

    /// Starts an operation intended at `due` on slot `i`.
    fn start(&mut self, i: usize, due: Instant, now: Instant) {
        let c = &mut self.conns[i];
        c.due = due;
        c.started = now;
        c.written = 0;
        if c.sock.is_some() {
            c.state = State::Writing;
            return self.write(i, now);
        }
        let sock = match Socket::new(
            Domain::for_address(self.p.target),
            Type::STREAM,
            Some(Protocol::TCP),
        ) {
            Ok(s) => s,
            Err(_) => return self.finish(i, now, Err("socket")),
        };
        let _ = sock.set_nonblocking(true);
        let _ = sock.set_nodelay(true);
        let fd = sock.as_raw_fd();
        match sock.connect(&SockAddr::from(self.p.target)) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return self.finish(i, now, Err(connect_error(&e))),
        }
        if self.epoll.add(fd, i as u64, Interest::Write).is_err() {
            return self.finish(i, now, Err("epoll"));
        }
        let c = &mut self.conns[i];
        c.sock = Some(sock);
        c.interest = Interest::Write;
        c.state = State::Connecting;
    }

    /// Registers interest `want` for slot `i` if it is not already what epoll watches.
    fn want(&mut self, i: usize, want: Interest) -> Result<(), ErrorKind> {
        let c = &mut self.conns[i];
        if c.interest == want {
            return Ok(());
        }
        let fd = c.sock.as_ref().ok_or("closed")?.as_raw_fd();
        self.epoll.modify(fd, i as u64, want).map_err(|_| "epoll")?;
        c.interest = want;
        Ok(())
    }

    fn write(&mut self, i: usize, now: Instant) {
        let req = &self.p.request;
        let c = &mut self.conns[i];
        let outcome = match c.sock.as_mut() {
            None => Err("closed"),
            Some(sock) => loop {
                if c.written == req.len() {
                    break Ok(true);
                }
                match sock.write(&req[c.written..]) {
                    Ok(n) => c.written += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(false),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => break Err(super::io_kind(e)),
                }
            },
        };
        let next = match outcome {
            // All written: wait for the answer.
            Ok(true) => {
                self.conns[i].state = State::Reading;
                self.want(i, Interest::Read)
            }
            // The socket buffer is full: wait until it drains.
            Ok(false) => {
                self.conns[i].state = State::Writing;
                self.want(i, Interest::Write)
            }
            Err(kind) => Err(kind),
        };
        if let Err(kind) = next {
            self.finish(i, now, Err(kind));
        }
    }

    fn on_ready(&mut self, i: usize, bad: bool, now: Instant) {
        match self.conns[i].state {
            State::Idle => {
                // Nothing is expected between requests: the peer closed or misbehaved.
                if let Some(s) = self.conns[i].sock.take() {
                    self.epoll.delete(s.as_raw_fd());
                }
                self.conns[i].buf.clear();
            }
            State::Connecting => {
                let err = self.conns[i]
                    .sock
                    .as_ref()
                    .map(|s| s.take_error())
                    .unwrap_or(Ok(None));
                match err {
                    Ok(None) if !bad => self.write(i, now),
                    Ok(Some(e)) | Err(e) => self.finish(i, now, Err(connect_error(&e))),
                    Ok(None) => self.finish(i, now, Err("connect")),
                }
            }
            State::Writing => self.write(i, now),
            State::Reading => self.read(i, now),
        }
    }

    /// Reads what is there; finishes the operation once a whole answer arrived.
    fn read(&mut self, i: usize, now: Instant) {
        let p = self.p;
        let c = &mut self.conns[i];
        let outcome: Option<Result<Done, ErrorKind>> = match c.sock.as_mut() {
            None => Some(Err("closed")),
            Some(sock) => loop {
                let old = c.buf.len();
                let room = if p.http.is_some() {
                    8192
                } else {
                    p.size.saturating_sub(old).max(1)
                };
                c.buf.resize(old + room, 0);
                let r = sock.read(&mut c.buf[old..]);
                c.buf.truncate(old + *r.as_ref().unwrap_or(&0));
                match r {
                    Ok(0) => break Some(Err("closed")),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break None,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => break Some(Err(super::io_kind(e))),
                }
                if p.http.is_some() {
                    match http::frame(&c.buf) {
                        Ok(None) => {}
                        Ok(Some(f)) => {
                            c.buf.drain(..f.len);
                            break Some(if (200..300).contains(&f.status) {
                                Ok(Done {
                                    bytes: (p.request.len() + f.len) as u64,
                                    tag: http::status_tag(f.status),
                                })
                            } else {
                                Err("http-status")
                            });
                        }
                        Err(kind) => break Some(Err(kind)),
                    }
                } else if c.buf.len() >= p.size {
                    let ok = c.buf[..p.size] == p.request[..];
                    c.buf.drain(..p.size);
                    break Some(if ok {
                        Ok(Done::bytes(2 * p.size as u64))
                    } else {
                        Err("echo-mismatch")
                    });
                }
            },
        };
        if let Some(r) = outcome {
            self.finish(i, now, r);
        }
    }
}

pub async fn run(ctx: &ShardCtx, p: &RrPlan) {
    let epoll = match Epoll::new() {
        Ok(e) => e,
        Err(e) => {
            ctx.record(Instant::now(), Err(super::io_kind(e)));
            return;
        }
    };
    let now = Instant::now();
    let mut eng = Engine {
        ctx,
        p,
        epoll,
        conns: (0..ctx.workers)
            .map(|_| Conn {
                sock: None,
                interest: Interest::Write,
                state: State::Idle,
                due: now,
                started: now,
                written: 0,
                buf: Vec::with_capacity(p.size.max(1024)),
                not_before: None,
            })
            .collect(),
        idle: (0..ctx.workers).rev().collect(),
        resting: Vec::new(),
    };
    let scan_every = (ctx.timeout / 8).clamp(Duration::from_millis(1), Duration::from_millis(250));
    let mut next_scan = now + scan_every;
    let mut ready = Vec::with_capacity(256);
    let mut over = false;
    loop {
        let now = Instant::now();
        ctx.tick(now);
        // Slots back from their rest after a failed connect.
        let mut k = 0;
        while k < eng.resting.len() {
            let i = eng.resting[k];
            if eng.conns[i].not_before.is_some_and(|t| t <= now) {
                eng.conns[i].not_before = None;
                eng.resting.swap_remove(k);
                eng.idle.push(i);
            } else {
                k += 1;
            }
        }
        let mut next_due = None;
        while !over {
            let Some(&i) = eng.idle.last() else { break };
            match ctx.take_by(now) {
                Take::Due(due) => {
                    ctx.started(due, now);
                    eng.idle.pop();
                    eng.start(i, due, now);
                }
                Take::Later(t) => {
                    next_due = Some(t);
                    break;
                }
                Take::Over => over = true,
            }
        }
        let busy = eng.conns.len() - eng.idle.len() - eng.resting.len();
        if over && busy == 0 {
            return;
        }
        if now >= next_scan {
            next_scan = now + scan_every;
            for i in 0..eng.conns.len() {
                let c = &eng.conns[i];
                if c.state != State::Idle && now.duration_since(c.started) >= ctx.timeout {
                    eng.finish(i, now, Err("timeout"));
                }
            }
        }
        // Open loop (--engine epoll --rate): sleep no longer than until the next due start,
        // in epoll's whole milliseconds (the reason open loop defaults to glommio).
        let wait_ms = next_due.map_or(MAX_WAIT_MS, |t| {
            (t.saturating_duration_since(now).as_millis() as i32).min(MAX_WAIT_MS)
        });
        if let Err(e) = eng.epoll.wait(&mut ready, 256, wait_ms) {
            ctx.record(now, Err(super::io_kind(e)));
            return;
        }
        let now = Instant::now();
        for &(token, bad) in &ready {
            eng.on_ready(token as usize, bad, now);
        }
        // Let the shard's other tasks run between rounds.
        futures_lite::future::yield_now().await;
    }
}
