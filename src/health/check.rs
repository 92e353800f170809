//! The health checker: the shell around [`Machine`] on the API shard.
//!
//! One task in its own task queue (so checks never delay registrations), waking every
//! [`PASSIVE_POLL`]. Each round it:
//! 1. picks up registrations and updates ([`Registry::take_health_changes`]): a new backend
//!    gets its first check at a random point within one interval, so 100,000 backends
//!    registered together do not fire together; a changed address or check starts afresh;
//! 2. drains every shard's [`FailureRing`] and feeds the failure counts to the machines
//!    (passive ejection);
//! 3. starts the checks that are due, at most `--health-check-concurrency` at once (the rest
//!    wait their turn); a backend deregistered since is forgotten instead;
//! 4. applies the verdicts of the checks that finished: writes the backend's health atomics,
//!    logs each transition once and counts it.
//!
//! Checks are a TCP connect, or an HTTP/1.1 `GET` whose status line must say 2xx, each within
//! the check's timeout. A check never blocks: everything is glommio I/O on the API shard.

use super::{
    Check, CheckKind, CheckSpec, Drained, Ejection, Machine, Reason, State, Transition, Why,
    PASSIVE_POLL,
};
use crate::api::Control;
use crate::metrics::{Counter, Text};
use crate::registry::{mix64, BackendLive, Registry};
use crate::shard::ShardCtx;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest HTTP status line read from a checked backend.
const MAX_STATUS_LINE: usize = 1024;

/// Health counters (API shard only).
#[derive(Debug, Default)]
pub struct Stats {
    /// Transitions, by the state entered ([`State`] order).
    pub transitions: [Counter; 3],
    pub checks_passed: Counter,
    pub checks_failed: Counter,
}

impl Stats {
    pub fn render(&self, t: &mut Text) {
        t.family(
            "edgeproxy_backend_health_transitions_total",
            "Backend health changes, by the state entered.",
            "counter",
        );
        for s in State::ALL {
            t.sample(
                "edgeproxy_backend_health_transitions_total",
                &[("to", s.as_str())],
                self.transitions[s as usize].get() as f64,
            );
        }
        t.family(
            "edgeproxy_health_checks_total",
            "Active health checks (and ejection probes) run, by result.",
            "counter",
        );
        t.sample(
            "edgeproxy_health_checks_total",
            &[("result", "passed")],
            self.checks_passed.get() as f64,
        );
        t.sample(
            "edgeproxy_health_checks_total",
            &[("result", "failed")],
            self.checks_failed.get() as f64,
        );
    }
}

/// Runs one check of `addr` within `timeout`.
pub async fn probe(addr: SocketAddr, check: &Check) -> Result<(), Why> {
    let timeout = Duration::from_millis(check.timeout_ms.max(1));
    let started = Instant::now();
    let stream = TcpStream::connect_timeout(addr, timeout)
        .await
        .map_err(|e| connect_error(e.into()))?;
    match check.kind {
        CheckKind::Tcp | CheckKind::None => Ok(()),
        CheckKind::Http => {
            let left = timeout.saturating_sub(started.elapsed());
            if left.is_zero() {
                return Err(Why::new(Reason::TimedOut));
            }
            http_get(stream, addr, &check.path, left).await
        }
    }
}

fn connect_error(e: io::Error) -> Why {
    Why::new(match e.kind() {
        io::ErrorKind::ConnectionRefused => Reason::Refused,
        io::ErrorKind::TimedOut => Reason::TimedOut,
        _ => Reason::ConnectError,
    })
}

/// `GET path` on `stream`: passes on a 2xx status line.
async fn http_get(
    mut stream: TcpStream,
    addr: SocketAddr,
    path: &str,
    left: Duration,
) -> Result<(), Why> {
    let deadline = Instant::now() + left;
    let host = match addr {
        SocketAddr::V4(a) => a.ip().to_string(),
        SocketAddr::V6(a) => format!("[{}]", a.ip()),
    };
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: edgeproxy-health-check\r\n\
         Accept: */*\r\nConnection: close\r\n\r\n"
    );
    let io_err = |e: io::Error| match e.kind() {
        io::ErrorKind::TimedOut => Why::new(Reason::TimedOut),
        _ => Why::new(Reason::HttpInvalid),
    };
    let _ = stream.set_write_timeout(Some(left));
    stream.write_all(req.as_bytes()).await.map_err(io_err)?;
    let mut buf = [0u8; MAX_STATUS_LINE];
    let mut len = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Why::new(Reason::TimedOut));
        }
        let _ = stream.set_read_timeout(Some(left));
        let n = stream.read(&mut buf[len..]).await.map_err(io_err)?;
        len += n;
        if let Some(status) = status_of(&buf[..len]) {
            let _ = stream.close().await;
            return match status {
                200..=299 => Ok(()),
                _ => Err(Why {
                    reason: Reason::HttpStatus,
                    detail: status,
                }),
            };
        }
        if n == 0 || len == buf.len() || buf[..len].contains(&b'\n') {
            return Err(Why::new(Reason::HttpInvalid));
        }
    }
}

/// The status code of a complete `HTTP/1.x NNN ...` line at the start of `buf`.
pub fn status_of(buf: &[u8]) -> Option<u16> {
    let end = buf.iter().position(|&b| b == b'\n')?;
    let line = std::str::from_utf8(&buf[..end]).ok()?;
    let mut parts = line.trim_end().split(' ');
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok().filter(|c| (100..=999).contains(c))
}

/// What the checker knows of one backend.
struct Entry {
    id: String,
    addr: SocketAddr,
    spec: Option<CheckSpec>,
    /// Shared with every backend on the hub's settings.
    check: Rc<Check>,
    machine: Machine,
    live: Arc<BackendLive>,
    /// Bumped whenever the schedule changes: older heap items and check results are stale.
    gen: u32,
}

/// A finished check: (key, generation, result).
type Verdict = (u64, u32, Result<(), Why>);

/// A check to start.
struct Probe {
    key: u64,
    gen: u32,
    addr: SocketAddr,
    check: Rc<Check>,
}

/// The checker's state (see the module docs).
pub struct Checker {
    defaults: Rc<Check>,
    ejection: Ejection,
    concurrency: usize,
    entries: HashMap<u64, Entry>,
    /// (due, key, generation), soonest first.
    due: BinaryHeap<Reverse<(u64, u64, u32)>>,
    /// Read positions in each shard's failure ring.
    cursors: Vec<u64>,
    in_flight: Rc<Cell<usize>>,
    /// Verdicts of finished checks.
    done: Rc<RefCell<Vec<Verdict>>>,
    seq: u64,
}

impl Checker {
    pub fn new(cfg: &crate::config::Config) -> Checker {
        Checker {
            defaults: Rc::new(cfg.health_check.clone()),
            ejection: cfg.health_ejection,
            concurrency: cfg.health_check_concurrency.max(1),
            entries: HashMap::new(),
            due: BinaryHeap::new(),
            cursors: vec![0; cfg.shards.max(1)],
            in_flight: Rc::new(Cell::new(0)),
            done: Rc::default(),
            seq: 0,
        }
    }

    /// Applies new hub-wide settings (SIGHUP): backends on the hub's check, and the settings
    /// each backend's own check does not fix, change at once; every backend's next check is
    /// rescheduled within one new interval. Health states and their counts carry over.
    pub fn reconfigure(&mut self, settings: &crate::live::HealthSettings, now: u64) {
        self.defaults = Rc::new(settings.check.clone());
        self.ejection = settings.ejection;
        self.concurrency = settings.concurrency.max(1);
        let keys: Vec<u64> = self.entries.keys().copied().collect();
        for key in keys {
            let Some(e) = self.entries.get_mut(&key) else {
                continue;
            };
            e.check = match &e.spec {
                None => self.defaults.clone(),
                Some(spec) => Rc::new(Check::resolve(&self.defaults, Some(spec))),
            };
            e.live.set_check_kind(e.check.kind);
            if e.machine.ejected_until().is_some() {
                continue;
            }
            // Down by checks that no longer run: nothing would ever bring it back.
            if e.check.kind == CheckKind::None && e.live.health() == State::Down {
                e.machine = Machine::new(now);
                e.live.set_health(State::Up, Why::new(Reason::ChecksOff));
                log::info!("backend {}: down -> up (active checks turned off)", e.id);
            }
            if e.check.kind == CheckKind::None {
                // Nothing to run until a passive ejection (which schedules its end).
                e.gen = e.gen.wrapping_add(1);
                continue;
            }
            let first = self.jitter(key, self.entries[&key].check.interval_ms.max(1));
            self.schedule(key, now + first);
        }
    }

    /// A pseudo-random number below `n` (spreading checks; no need for a real generator).
    fn jitter(&mut self, key: u64, n: u64) -> u64 {
        self.seq += 1;
        if n == 0 {
            0
        } else {
            mix64(key ^ self.seq.wrapping_mul(0x9e37_79b9_7f4a_7c15)) % n
        }
    }

    fn schedule(&mut self, key: u64, at: u64) {
        if let Some(e) = self.entries.get_mut(&key) {
            e.gen = e.gen.wrapping_add(1);
            self.due.push(Reverse((at, key, e.gen)));
        }
    }

    /// The next regular check of an entry after one at `now` (interval ± 10 %); while
    /// ejected, the probe at the end of the ejection. A backend without active checks is not
    /// visited until a passive ejection ends (the registry reports deregistrations, so no
    /// visit is needed to notice one: at 100,000 backends such visits were 6-9 % of the API
    /// shard's CPU under a registration load).
    fn next_check(&mut self, key: u64, now: u64) {
        let Some(e) = self.entries.get(&key) else {
            return;
        };
        let at = match e.machine.ejected_until() {
            Some(until) => until,
            None if e.check.kind == CheckKind::None => return,
            None => {
                let interval = e.check.interval_ms.max(1);
                let spread = interval / 5;
                now + interval - spread / 2 + self.jitter(key, spread + 1)
            }
        };
        self.schedule(key, at);
    }

    /// Takes in new, changed and removed registrations.
    fn sync(&mut self, reg: &mut Registry, now: u64) {
        for id in reg.take_health_changes() {
            let Some(b) = reg.get(&id) else {
                // Removed: forget it (its key is the hash of its id).
                let key = crate::registry::stable_hash(id.as_bytes());
                if self.entries.get(&key).is_some_and(|e| e.id == id) {
                    self.entries.remove(&key);
                }
                continue;
            };
            let addr = SocketAddr::new(b.ip, b.port);
            let key = b.key;
            if let Some(e) = self.entries.get(&key) {
                if e.addr == addr && e.spec == b.check && Arc::ptr_eq(&e.live, &b.live) {
                    continue;
                }
            }
            let check = match &b.check {
                None => self.defaults.clone(),
                Some(spec) => Rc::new(Check::resolve(&self.defaults, Some(spec))),
            };
            let live = b.live.clone();
            live.set_check_kind(check.kind);
            if live.health() != State::Up {
                // A new address or check: served again until checks say otherwise.
                live.set_health(State::Up, Why::new(Reason::Registered));
                log::info!("backend {id}: health starts over (new address or check): up");
            }
            live.check_failures.store(0, Ordering::Relaxed);
            live.ejections.store(0, Ordering::Relaxed);
            let first =
                (check.kind != CheckKind::None).then(|| self.jitter(key, check.interval_ms.max(1)));
            self.entries.insert(
                key,
                Entry {
                    id,
                    addr,
                    spec: b.check.clone(),
                    check,
                    machine: Machine::new(now),
                    live,
                    gen: 0,
                },
            );
            if let Some(first) = first {
                self.schedule(key, now + first);
            }
        }
    }

    /// Feeds the shards' failed connects to the machines.
    fn passive(&mut self, ctx: &ShardCtx, now: u64, stats: &Stats) {
        if self.ejection.failures == 0 {
            return;
        }
        let mut keys = Vec::new();
        let mut overflow = false;
        for (i, m) in ctx.all_metrics.shards.iter().enumerate() {
            if let Some(cursor) = self.cursors.get_mut(i) {
                overflow |= m.connect_failed.drain(cursor, &mut keys) == Drained::Overflow;
            }
        }
        if overflow {
            keys = self
                .entries
                .iter()
                .filter(|(_, e)| e.live.failure_streak() > 0)
                .map(|(k, _)| *k)
                .collect();
        }
        if keys.is_empty() {
            return;
        }
        keys.sort_unstable();
        keys.dedup();
        for key in keys {
            let Some(e) = self.entries.get_mut(&key) else {
                continue;
            };
            let total = e.live.failure_streak();
            if let Some(t) = e.machine.on_connect_failures(now, total, &self.ejection) {
                apply(e, &t, stats);
                self.next_check(key, now);
            }
        }
    }

    /// Applies finished checks, then returns the checks to start now.
    fn round(&mut self, reg: &Registry, now: u64, stats: &Stats) -> Vec<Probe> {
        let done = std::mem::take(&mut *self.done.borrow_mut());
        for (key, gen, result) in done {
            let Some(e) = self.entries.get_mut(&key) else {
                continue;
            };
            if e.gen != gen {
                continue;
            }
            match result {
                Ok(()) => stats.checks_passed.inc(),
                Err(_) => stats.checks_failed.inc(),
            }
            let t = e.machine.on_check(now, result, &e.check, &self.ejection);
            e.live
                .check_failures
                .store(e.machine.fail_streak(), Ordering::Relaxed);
            if let Some(t) = t {
                apply(e, &t, stats);
            }
            self.next_check(key, now);
        }
        let mut probes = Vec::new();
        let mut unchecked = Vec::new();
        while self.in_flight.get() + probes.len() < self.concurrency {
            let Some(&Reverse((at, key, gen))) = self.due.peek() else {
                break;
            };
            if at > now {
                break;
            }
            self.due.pop();
            let Some(e) = self.entries.get_mut(&key) else {
                continue;
            };
            if e.gen != gen {
                continue;
            }
            // Deregistered (or replaced by another backend of the same id): forget it.
            match reg.get(&e.id) {
                Some(b) if Arc::ptr_eq(&b.live, &e.live) => {}
                _ => {
                    self.entries.remove(&key);
                    continue;
                }
            }
            if e.check.kind == CheckKind::None {
                if let Some(t) = e.machine.on_ejection_over(now) {
                    apply(e, &t, stats);
                }
                unchecked.push(key);
                continue;
            }
            probes.push(Probe {
                key,
                gen,
                addr: e.addr,
                check: e.check.clone(),
            });
        }
        for key in unchecked {
            self.next_check(key, now);
        }
        probes
    }

    /// Starts `p` on the current task queue; its verdict is applied next round.
    fn start(&self, p: Probe) {
        let in_flight = self.in_flight.clone();
        let done = self.done.clone();
        in_flight.set(in_flight.get() + 1);
        glommio::spawn_local(async move {
            let result = probe(p.addr, &p.check).await;
            done.borrow_mut().push((p.key, p.gen, result));
            in_flight.set(in_flight.get() - 1);
        })
        .detach();
    }
}

/// Writes a transition into the backend's atomics, logs it and counts it.
fn apply(e: &Entry, t: &Transition, stats: &Stats) {
    e.live.set_health(t.to, t.why);
    e.live
        .ejections
        .store(e.machine.ejections(), Ordering::Relaxed);
    stats.transitions[t.to as usize].inc();
    let mut detail = t.why.describe(e.check.kind.as_str());
    if let Some((n, of)) = t.count {
        detail.push_str(&format!(", {n}/{of}"));
    }
    if let Some(ms) = t.ejected_for_ms {
        detail.push_str(&format!("; out for {:.1}s", ms as f64 / 1000.0));
    }
    log::info!(
        "backend {}: {} -> {} ({detail})",
        e.id,
        t.from.as_str(),
        t.to.as_str()
    );
}

/// The checker task: runs until the hub starts draining.
pub async fn run(ctx: Rc<ShardCtx>, control: Rc<Control>) {
    let mut checker = Checker::new(&ctx.cfg);
    let mut generation = ctx.live.load().generation;
    let mut settings = crate::live::HealthSettings::of(&ctx.cfg);
    loop {
        if crate::shutdown::draining() {
            return;
        }
        let now = crate::clock::now_ms();
        {
            let live = ctx.live.load();
            if live.generation != generation {
                generation = live.generation;
                if live.health != settings {
                    settings = live.health.clone();
                    checker.reconfigure(&settings, now);
                }
            }
        }
        checker.sync(&mut control.registry.borrow_mut(), now);
        checker.passive(&ctx, now, &control.health);
        let probes = checker.round(&control.registry.borrow(), now, &control.health);
        for p in probes {
            checker.start(p);
        }
        glommio::timer::sleep(PASSIVE_POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{BackendSpec, SnapshotCell};

    fn setup(n: usize, concurrency: usize) -> (Checker, Registry) {
        let mut cfg = crate::config::Config::for_tests(1);
        cfg.health_check.interval_ms = 1_000;
        cfg.health_check_concurrency = concurrency;
        let mut reg = Registry::new(1, 0, 600, Arc::new(SnapshotCell::new()));
        for i in 0..n {
            let ip = std::net::Ipv4Addr::from(0x7f00_0001 + i as u32);
            reg.register(
                BackendSpec::new(&format!("b{i}"), "app", "sa", ip.into(), 80),
                0,
            );
        }
        (Checker::new(&cfg), reg)
    }

    /// Runs rounds from `from` to `to` ms, every 10 ms, answering every check at once with
    /// `result`; returns the ms at which each check started.
    fn run(
        c: &mut Checker,
        reg: &mut Registry,
        from: u64,
        to: u64,
        result: Result<(), Why>,
    ) -> Vec<(u64, u64)> {
        let stats = Stats::default();
        let mut started = Vec::new();
        let mut now = from;
        while now < to {
            c.sync(reg, now);
            for p in c.round(reg, now, &stats) {
                started.push((now, p.key));
                c.done.borrow_mut().push((p.key, p.gen, result));
            }
            now += 10;
        }
        started
    }

    #[test]
    fn first_checks_are_spread_over_one_interval_then_repeat() {
        let (mut c, mut reg) = setup(1_000, 100_000);
        let started = run(&mut c, &mut reg, 0, 1_010, Ok(()));
        let mut first = std::collections::BTreeMap::new();
        for &(t, k) in &started {
            first.entry(k).or_insert(t);
        }
        assert_eq!(
            first.len(),
            1_000,
            "each backend checked in the first interval"
        );
        // Spread: no 100 ms slice holds more than twice its share.
        for slice in 0..10 {
            let n = first.values().filter(|t| *t / 100 == slice).count();
            assert!((20..=200).contains(&n), "{n} checks in slice {slice}");
        }
        // Every interval (+-10 %) after that.
        let next = run(&mut c, &mut reg, 1_010, 2_000, Ok(()));
        assert!(next.len() >= 800, "{}", next.len());
        assert!(reg.get("b0").unwrap().live.is_up());
    }

    #[test]
    fn at_most_concurrency_checks_in_flight() {
        let (mut c, mut reg) = setup(1_000, 50);
        let stats = Stats::default();
        c.sync(&mut reg, 0);
        let probes = c.round(&reg, 2_000, &stats);
        assert_eq!(probes.len(), 50);
        c.in_flight.set(50);
        assert!(c.round(&reg, 2_000, &stats).is_empty());
        c.in_flight.set(10);
        assert_eq!(c.round(&reg, 2_000, &stats).len(), 40);
    }

    #[test]
    fn failing_checks_take_backends_down_and_deregistered_ones_are_forgotten() {
        let (mut c, mut reg) = setup(10, 1_000);
        let refused = Err(Why::new(Reason::Refused));
        // fall = 3 (default): down within 3 intervals (+10 %) plus the first offset.
        run(&mut c, &mut reg, 0, 4_400, refused);
        for b in reg.iter() {
            assert_eq!(b.live.health(), State::Down, "{}", b.id);
            assert_eq!(b.live.health_why().reason, Reason::Refused);
        }
        for i in 0..5 {
            reg.deregister(&format!("b{i}"));
        }
        let started = run(&mut c, &mut reg, 4_400, 8_000, refused);
        assert_eq!(c.entries.len(), 5);
        let keys: std::collections::BTreeSet<u64> = started.iter().map(|(_, k)| *k).collect();
        assert_eq!(keys.len(), 5);
        assert!(keys.iter().all(|k| reg.iter().any(|b| b.key == *k)));
    }

    #[test]
    fn backends_without_checks_are_never_probed_but_are_forgotten() {
        let (mut c, mut reg) = setup(0, 1_000);
        let mut spec = BackendSpec::new("n", "app", "sa", "127.0.0.1".parse().unwrap(), 80);
        spec.check = Some(CheckSpec {
            kind: Some(CheckKind::None),
            ..CheckSpec::default()
        });
        reg.register(spec, 0);
        assert!(run(&mut c, &mut reg, 0, 5_000, Ok(())).is_empty());
        assert_eq!(c.entries.len(), 1);
        // Not even visited: nothing is scheduled for it.
        assert!(c.due.is_empty());
        reg.deregister("n");
        // Forgotten at the next sync, without a visit.
        c.sync(&mut reg, 5_000);
        assert!(c.entries.is_empty());
        // A backend that expires (swept) is forgotten the same way.
        let mut spec = BackendSpec::new("t", "app", "sa", "127.0.0.1".parse().unwrap(), 81);
        spec.check = Some(CheckSpec {
            kind: Some(CheckKind::None),
            ..CheckSpec::default()
        });
        spec.ttl_secs = Some(1);
        reg.register(spec, 5_000);
        c.sync(&mut reg, 5_000);
        assert_eq!(c.entries.len(), 1);
        let mut now = 5_000;
        while reg.get("t").is_some() {
            now += 1_000;
            assert!(now < 10_000_000, "never swept");
            reg.sweep(now);
        }
        c.sync(&mut reg, now);
        assert!(c.entries.is_empty());
    }

    #[test]
    fn reregistering_elsewhere_starts_over_up() {
        let (mut c, mut reg) = setup(1, 1_000);
        run(&mut c, &mut reg, 0, 4_400, Err(Why::new(Reason::Refused)));
        assert_eq!(reg.get("b0").unwrap().live.health(), State::Down);
        // The same registration again keeps the verdict ...
        let mut spec = BackendSpec::new("b0", "app", "sa", "127.0.0.1".parse().unwrap(), 80);
        reg.register(spec.clone(), 4_400);
        c.sync(&mut reg, 4_400);
        assert_eq!(reg.get("b0").unwrap().live.health(), State::Down);
        // ... another address starts over.
        spec.port = 81;
        reg.register(spec, 4_500);
        c.sync(&mut reg, 4_500);
        assert_eq!(reg.get("b0").unwrap().live.health(), State::Up);
    }

    #[test]
    fn status_lines() {
        assert_eq!(status_of(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(
            status_of(b"HTTP/1.0 503 Service Unavailable\r\nx"),
            Some(503)
        );
        assert_eq!(status_of(b"HTTP/1.1 204\r\n"), Some(204));
        assert_eq!(status_of(b"HTTP/1.1 200 OK"), None);
        assert_eq!(status_of(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(status_of(b"HTTP/1.1 20 OK\r\n"), None);
        assert_eq!(status_of(b"HTTP/1.1 abc OK\r\n"), None);
        assert_eq!(status_of(b"\xff\xfe\n"), None);
    }
}
