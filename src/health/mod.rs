//! Backend health: active checks, passive ejection, and the state every shard reads.
//!
//! A backend is served only while its health is `up` (besides a current heartbeat, not
//! draining, under its hard limit: [`crate::registry::Backend::eligible`]). The state lives in
//! the backend's [`BackendLive`](crate::registry::BackendLive) as relaxed atomics written by the
//! API shard alone, so a change takes effect on every shard at once, with no republish.
//!
//! - **Active checks** run on the API shard ([`check`]): a TCP connect by default, or an HTTP
//!   `GET path` that must answer 2xx, every `interval` with a `timeout`; `fall` failures in a
//!   row take a backend `down`, `rise` successes in a row bring it back `up`. Global
//!   (`--health-check*`) or per backend (`"check"` in the registration). A newly registered
//!   backend starts `up` (served at once, as HAProxy's default): checks take it down if it is
//!   not reachable.
//! - **Passive ejection**: every data-plane shard counts, per backend, its own consecutive
//!   failed connects (a slot written by that shard only; a successful connect resets it) and
//!   pushes the backend's key onto its own [`FailureRing`]. The API shard drains the rings every
//!   [`PASSIVE_POLL`] and decides: `N` failures (summed over shards) within the window eject the
//!   backend for a backoff that doubles with each ejection (capped), after which one active
//!   probe brings it back or ejects it again.
//!
//!   Why the API shard decides rather than each shard on its own: a shard-local verdict would
//!   leave every other shard (and the DNS answers) still choosing the dead backend until each
//!   had paid its own failures, and would need a shard index in the selector. Deciding centrally
//!   costs at most one poll period (10 ms) of extra detection time, during which the connect
//!   retries of [`crate::proxy::connect_backend`] already hide the dead backend from clients.
//!   No lock anywhere: shards write their own slots and rings, the API shard reads them and
//!   writes the health atomics.
//!
//! The state machine ([`Machine`]) is pure: fed `(now, input)`, it returns the transition to
//! apply. The shell around it ([`check`]) only runs probes, moves atomics and keeps time.

pub mod check;

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How often the API shard drains the shards' failure rings.
pub const PASSIVE_POLL: Duration = Duration::from_millis(10);

/// Health as every shard reads it (a `u8` in [`crate::registry::BackendLive`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    /// Served.
    Up = 0,
    /// Active checks failed `fall` times in a row; back after `rise` successes.
    Down = 1,
    /// Too many failed connects from the data plane; out until its backoff ends and a probe
    /// passes.
    Ejected = 2,
}

impl State {
    pub fn from_u8(v: u8) -> State {
        match v {
            0 => State::Up,
            1 => State::Down,
            _ => State::Ejected,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Up => "up",
            State::Down => "down",
            State::Ejected => "ejected",
        }
    }

    pub const ALL: [State; 3] = [State::Up, State::Down, State::Ejected];
}

/// Why a backend is in its state (a code in an atomic, with an optional detail such as the
/// HTTP status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Reason {
    /// Registered (or restored); no check has run yet.
    Registered = 0,
    /// The check passed (`rise` times, or once as the probe after an ejection).
    CheckPassed = 1,
    /// The connect was refused.
    Refused = 2,
    /// No answer within the check's timeout.
    TimedOut = 3,
    /// The connect failed otherwise (unreachable network, reset...).
    ConnectError = 4,
    /// The HTTP check got a status outside 2xx (the detail holds it).
    HttpStatus = 5,
    /// The HTTP check got no valid status line.
    HttpInvalid = 6,
    /// Too many failed connects from the data plane (the detail holds how many).
    ConnectFailures = 7,
    /// The ejection ended and the backend has no check to probe it with.
    EjectionOver = 8,
    /// Active checks were turned off (SIGHUP) while checks had it down.
    ChecksOff = 9,
}

impl Reason {
    fn from_u8(v: u8) -> Reason {
        match v {
            1 => Reason::CheckPassed,
            2 => Reason::Refused,
            3 => Reason::TimedOut,
            4 => Reason::ConnectError,
            5 => Reason::HttpStatus,
            6 => Reason::HttpInvalid,
            7 => Reason::ConnectFailures,
            8 => Reason::EjectionOver,
            9 => Reason::ChecksOff,
            _ => Reason::Registered,
        }
    }
}

/// A reason with its detail, as stored in one `u32` (code in the low byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Why {
    pub reason: Reason,
    pub detail: u16,
}

impl Why {
    pub const fn new(reason: Reason) -> Why {
        Why { reason, detail: 0 }
    }

    pub fn pack(self) -> u32 {
        self.reason as u32 | u32::from(self.detail) << 8
    }

    pub fn unpack(v: u32) -> Why {
        Why {
            reason: Reason::from_u8(v as u8),
            detail: (v >> 8) as u16,
        }
    }

    /// Operator-facing text, `kind` being the check's kind (`tcp`, `http`).
    pub fn describe(self, kind: &str) -> String {
        match self.reason {
            Reason::Registered => "registered, not checked yet".into(),
            Reason::CheckPassed => format!("{kind} check passed"),
            Reason::Refused => format!("{kind} connect refused"),
            Reason::TimedOut => format!("{kind} check timed out"),
            Reason::ConnectError => format!("{kind} connect failed"),
            Reason::HttpStatus => format!("http status {}", self.detail),
            Reason::HttpInvalid => "http check got no valid response".into(),
            Reason::ConnectFailures => {
                format!("{} failed connects from the proxy", self.detail)
            }
            Reason::EjectionOver => "ejection over (no check to probe with)".into(),
            Reason::ChecksOff => "active checks turned off".into(),
        }
    }
}

/// What a check does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// A TCP connect.
    Tcp,
    /// `GET path` over HTTP/1.1, expecting a 2xx status.
    Http,
    /// No active check: the backend is up unless the proxy's connects fail.
    None,
}

impl CheckKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckKind::Tcp => "tcp",
            CheckKind::Http => "http",
            CheckKind::None => "none",
        }
    }
}

/// A backend's override of the hub's check settings, as registered and stored: every absent
/// field takes the hub's value (`--health-check*`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckSpec {
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<CheckKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rise: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fall: Option<u32>,
}

/// The check a backend gets: its override over the hub's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub kind: CheckKind,
    /// The HTTP path (used when `kind` is `Http`).
    pub path: String,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub rise: u32,
    pub fall: u32,
}

impl Check {
    /// `spec` over `defaults`. A `path` without a `type` means an HTTP check.
    pub fn resolve(defaults: &Check, spec: Option<&CheckSpec>) -> Check {
        let Some(s) = spec else {
            return defaults.clone();
        };
        let kind = match (s.kind, &s.path) {
            (Some(k), _) => k,
            (None, Some(_)) => CheckKind::Http,
            (None, None) => defaults.kind,
        };
        Check {
            kind,
            path: s.path.clone().unwrap_or_else(|| defaults.path.clone()),
            interval_ms: s.interval_ms.unwrap_or(defaults.interval_ms),
            timeout_ms: s.timeout_ms.unwrap_or(defaults.timeout_ms),
            rise: s.rise.unwrap_or(defaults.rise),
            fall: s.fall.unwrap_or(defaults.fall),
        }
    }
}

/// Passive ejection settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ejection {
    /// Failed connects within `window_ms` that eject a backend; 0 = passive ejection off.
    pub failures: u32,
    pub window_ms: u64,
    /// First ejection's length; each further one doubles it, up to `backoff_max_ms`.
    pub backoff_ms: u64,
    pub backoff_max_ms: u64,
}

impl Ejection {
    /// The length of ejection number `k` (0 for the first).
    pub fn backoff(&self, k: u32) -> u64 {
        let doubled = self.backoff_ms.saturating_mul(1u64 << k.min(32));
        doubled.min(self.backoff_max_ms.max(self.backoff_ms))
    }
}

/// A state change to apply (to the backend's atomics), log and count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: State,
    pub to: State,
    pub why: Why,
    /// For a check verdict: the streak that decided it and the threshold (`3/3`).
    pub count: Option<(u32, u32)>,
    /// For an ejection: how long, in ms.
    pub ejected_for_ms: Option<u64>,
}

/// The health of one backend, fed check results and the data plane's failure counts. Pure: the
/// caller passes the time (process ms) and applies the transitions returned.
#[derive(Debug, Clone)]
pub struct Machine {
    state: State,
    /// Consecutive active-check results of the kind that would change the state.
    ok_streak: u32,
    fail_streak: u32,
    /// Ejections since the backend last stayed up for the longest backoff.
    ejections: u32,
    ejected_until: u64,
    /// When the backend last became up.
    up_since: u64,
    /// The failure count (summed over shards) last reported, and the passive window: its start
    /// and the count at its start.
    last_failures: u32,
    window: Option<(u64, u32)>,
}

impl Machine {
    /// A backend registered at `now`: up.
    pub fn new(now: u64) -> Machine {
        Machine {
            state: State::Up,
            ok_streak: 0,
            fail_streak: 0,
            ejections: 0,
            ejected_until: 0,
            up_since: now,
            last_failures: 0,
            window: None,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// Consecutive failed checks (what `fall` counts).
    pub fn fail_streak(&self) -> u32 {
        self.fail_streak
    }

    /// Ejections in the current series (what the backoff doubles with).
    pub fn ejections(&self) -> u32 {
        self.ejections
    }

    /// While ejected: when the probe is due.
    pub fn ejected_until(&self) -> Option<u64> {
        (self.state == State::Ejected).then_some(self.ejected_until)
    }

    /// An active check's verdict (`Err`: why it failed). While ejected this is the probe: a
    /// pass brings the backend back at once, a failure ejects it again for longer.
    pub fn on_check(
        &mut self,
        now: u64,
        result: Result<(), Why>,
        check: &Check,
        ej: &Ejection,
    ) -> Option<Transition> {
        let from = self.state;
        match (self.state, result) {
            (State::Ejected, Ok(())) => {
                self.ok_streak = 0;
                self.fail_streak = 0;
                self.become_up(now);
                Some(self.transition(from, Why::new(Reason::CheckPassed), None))
            }
            (State::Ejected, Err(why)) => Some(self.eject(now, why, ej)),
            (State::Up, Ok(())) => {
                self.fail_streak = 0;
                None
            }
            (State::Up, Err(why)) => {
                self.fail_streak += 1;
                if self.fail_streak < check.fall.max(1) {
                    return None;
                }
                self.state = State::Down;
                self.ok_streak = 0;
                let count = Some((self.fail_streak, check.fall.max(1)));
                Some(self.transition(from, why, count))
            }
            (State::Down, Err(_)) => {
                self.ok_streak = 0;
                self.fail_streak = self.fail_streak.saturating_add(1);
                None
            }
            (State::Down, Ok(())) => {
                self.ok_streak += 1;
                if self.ok_streak < check.rise.max(1) {
                    return None;
                }
                let count = Some((self.ok_streak, check.rise.max(1)));
                self.fail_streak = 0;
                self.become_up(now);
                Some(self.transition(from, Why::new(Reason::CheckPassed), count))
            }
        }
    }

    /// The ejection of a backend without active checks ended: it is served again (and ejected
    /// again, for longer, if the proxy's connects still fail).
    pub fn on_ejection_over(&mut self, now: u64) -> Option<Transition> {
        if self.state != State::Ejected || now < self.ejected_until {
            return None;
        }
        self.become_up(now);
        Some(self.transition(State::Ejected, Why::new(Reason::EjectionOver), None))
    }

    /// The data plane's count of consecutive failed connects to this backend, summed over the
    /// shards (each shard resets its own part on a successful connect). Ejects when `failures`
    /// of them happened within the window.
    pub fn on_connect_failures(
        &mut self,
        now: u64,
        total: u32,
        ej: &Ejection,
    ) -> Option<Transition> {
        let last = std::mem::replace(&mut self.last_failures, total);
        if ej.failures == 0 || self.state != State::Up || total == 0 {
            self.window = None;
            return None;
        }
        let (start, base) = match self.window {
            Some((start, base)) if now.saturating_sub(start) <= ej.window_ms => {
                // A shard's success lowers the total: those failures no longer count.
                (start, base.min(total))
            }
            // A new window: the failures already seen before it are too old to count.
            _ => (now, last.min(total)),
        };
        self.window = Some((start, base));
        let recent = total - base;
        if recent < ej.failures {
            return None;
        }
        let why = Why {
            reason: Reason::ConnectFailures,
            detail: recent.min(u32::from(u16::MAX)) as u16,
        };
        Some(self.eject(now, why, ej))
    }

    fn become_up(&mut self, now: u64) {
        self.state = State::Up;
        self.up_since = now;
        self.window = None;
    }

    fn eject(&mut self, now: u64, why: Why, ej: &Ejection) -> Transition {
        let from = self.state;
        // A backend that stayed up for the longest backoff starts a new series.
        if from == State::Up && now.saturating_sub(self.up_since) >= ej.backoff_max_ms {
            self.ejections = 0;
        }
        let len = ej.backoff(self.ejections);
        self.ejections = self.ejections.saturating_add(1);
        self.state = State::Ejected;
        self.ejected_until = now.saturating_add(len);
        self.window = None;
        self.ok_streak = 0;
        let mut t = self.transition(from, why, None);
        t.ejected_for_ms = Some(len);
        t
    }

    fn transition(&self, from: State, why: Why, count: Option<(u32, u32)>) -> Transition {
        Transition {
            from,
            to: self.state,
            why,
            count,
            ejected_for_ms: None,
        }
    }
}

/// Slots of a [`FailureRing`].
const RING: usize = 256;

/// One shard's report of failed connects to the API shard: the keys of the backends, newest
/// last. Single writer (the shard), single reader (the API shard), relaxed slots published by a
/// release store of the head. A reader that falls more than a ring behind is told so and
/// rescans every backend instead.
#[derive(Debug)]
#[repr(align(64))]
pub struct FailureRing {
    head: AtomicU64,
    slots: Box<[AtomicU64]>,
}

impl Default for FailureRing {
    fn default() -> Self {
        FailureRing {
            head: AtomicU64::new(0),
            slots: (0..RING).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

/// What a read of a [`FailureRing`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Drained {
    /// Every key pushed since the last read (possibly with repeats).
    Keys,
    /// More were pushed than the ring holds: some keys were lost, rescan.
    Overflow,
}

impl FailureRing {
    /// Reports a failed connect to the backend with `key`. Only the owning shard may call this.
    #[inline]
    pub fn push(&self, key: u64) {
        let h = self.head.load(Ordering::Relaxed);
        self.slots[(h % RING as u64) as usize].store(key, Ordering::Relaxed);
        self.head.store(h + 1, Ordering::Release);
    }

    /// Reads the keys pushed since `*cursor` into `out`, and advances the cursor.
    pub fn drain(&self, cursor: &mut u64, out: &mut Vec<u64>) -> Drained {
        let head = self.head.load(Ordering::Acquire);
        let from = *cursor;
        *cursor = head;
        if head.saturating_sub(from) > RING as u64 {
            return Drained::Overflow;
        }
        for i in from..head {
            out.push(self.slots[(i % RING as u64) as usize].load(Ordering::Relaxed));
        }
        // The writer may have lapped us while we read: then a slot we read holds a newer key
        // (still a failed backend) and an older one is lost.
        std::sync::atomic::fence(Ordering::Acquire);
        if self.head.load(Ordering::Relaxed).saturating_sub(from) > RING as u64 {
            return Drained::Overflow;
        }
        Drained::Keys
    }
}

#[cfg(test)]
mod tests;
