//! When each operation starts: closed loop (as soon as a worker is free) or open loop (at a
//! fixed rate, whatever the target does).
//!
//! Open loop hands out *tickets*: ticket `i` is due at `start + phase + i / rate`. A worker
//! takes the next ticket, sleeps until it is due (or starts at once when it is late), and the
//! latency recorded is `done - due`. A target that stalls therefore shows the whole stall in
//! every operation queued behind it, instead of the load generator quietly sending less
//! (coordinated omission). Pure: time is passed in, nothing sleeps here.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// The open-loop schedule of one shard.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    start: Instant,
    /// Nanoseconds between two tickets.
    interval_ns: f64,
}

impl Schedule {
    /// `rate` operations per second over all `shards`; this shard's tickets are offset by its
    /// share of one interval so that shards do not send in lockstep.
    pub fn new(start: Instant, rate: f64, shard: usize, shards: usize) -> Schedule {
        let per_shard = rate / shards as f64;
        let interval_ns = 1e9 / per_shard;
        let phase = interval_ns * shard as f64 / shards as f64;
        Schedule {
            start: start + Duration::from_nanos(phase as u64),
            interval_ns,
        }
    }

    /// The intended start time of ticket `i` (computed from `i`, so errors never accumulate).
    pub fn due(&self, i: u64) -> Instant {
        self.start + Duration::from_nanos((i as f64 * self.interval_ns) as u64)
    }
}

/// The answer of [`Tickets::take_by`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// Start an operation intended to start at this time (now or earlier).
    Due(Instant),
    /// Nothing is due before this time.
    Later(Instant),
    /// The run is over.
    Over,
}

/// Hands out the start times of one shard's operations until `end`.
#[derive(Debug)]
pub struct Tickets {
    schedule: Option<Schedule>,
    next: Cell<u64>,
    end: Instant,
}

impl Tickets {
    pub fn closed(end: Instant) -> Tickets {
        Tickets {
            schedule: None,
            next: Cell::new(0),
            end,
        }
    }

    pub fn open(schedule: Schedule, end: Instant) -> Tickets {
        Tickets {
            schedule: Some(schedule),
            next: Cell::new(0),
            end,
        }
    }

    /// The intended start of the next operation, or `None` once the run is over. Closed loop:
    /// `now`. Open loop: the next ticket's due time, which may lie in the future (sleep until
    /// then) or in the past (the worker is late: start at once, the lateness counts).
    pub fn take(&self, now: Instant) -> Option<Instant> {
        if now >= self.end {
            return None;
        }
        match &self.schedule {
            None => {
                self.next.set(self.next.get() + 1);
                Some(now)
            }
            Some(s) => {
                let i = self.next.get();
                let due = s.due(i);
                if due >= self.end {
                    return None;
                }
                self.next.set(i + 1);
                Some(due)
            }
        }
    }

    /// Like [`Tickets::take`], but takes a ticket only once it is due: for engines that send
    /// in batches and must not sleep per operation.
    pub fn take_by(&self, now: Instant) -> Take {
        if now >= self.end {
            return Take::Over;
        }
        match &self.schedule {
            None => {
                self.next.set(self.next.get() + 1);
                Take::Due(now)
            }
            Some(s) => {
                let i = self.next.get();
                let due = s.due(i);
                if due >= self.end {
                    Take::Over
                } else if due > now {
                    Take::Later(due)
                } else {
                    self.next.set(i + 1);
                    Take::Due(due)
                }
            }
        }
    }

    /// Open loop: tickets that fell due before `end` but were never taken (every worker was
    /// busy). They are reported as missed sends: the target, or the generator, could not keep up.
    pub fn missed(&self) -> u64 {
        match &self.schedule {
            None => 0,
            Some(s) => {
                let mut due_total = 0u64;
                // Solve due(i) < end for the count of tickets, without iterating.
                let span = self.end.saturating_duration_since(s.start).as_nanos() as f64;
                if span > 0.0 {
                    due_total = (span / s.interval_ns).ceil() as u64;
                }
                due_total.saturating_sub(self.next.get())
            }
        }
    }

    pub fn taken(&self) -> u64 {
        self.next.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_loop_due_times_follow_the_rate() {
        let t0 = Instant::now();
        let s = Schedule::new(t0, 1000.0, 0, 1);
        assert_eq!(s.due(0), t0);
        assert_eq!(s.due(1), t0 + Duration::from_millis(1));
        assert_eq!(s.due(1000), t0 + Duration::from_secs(1));
        // No drift after many tickets.
        assert_eq!(s.due(3_600_000), t0 + Duration::from_secs(3600));
    }

    #[test]
    fn shards_split_the_rate_and_interleave() {
        let t0 = Instant::now();
        let a = Schedule::new(t0, 1000.0, 0, 2);
        let b = Schedule::new(t0, 1000.0, 1, 2);
        // 500/s each: 2 ms apart, shard 1 offset by half an interval.
        assert_eq!(a.due(1) - a.due(0), Duration::from_millis(2));
        assert_eq!(b.due(0) - t0, Duration::from_millis(1));
        assert_eq!(b.due(1) - t0, Duration::from_millis(3));
    }

    #[test]
    fn open_tickets_stop_at_the_end_and_count_misses() {
        let t0 = Instant::now();
        let end = t0 + Duration::from_millis(10);
        let tickets = Tickets::open(Schedule::new(t0, 1000.0, 0, 1), end);
        // A worker that is late still gets the due time, not "now".
        let late = t0 + Duration::from_millis(5);
        assert_eq!(tickets.take(late), Some(t0));
        assert_eq!(tickets.take(late), Some(t0 + Duration::from_millis(1)));
        assert_eq!(tickets.taken(), 2);
        // Tickets due at 0..9 ms: 10 in all, 8 not taken.
        assert_eq!(tickets.missed(), 8);
        let mut n = 2;
        while tickets.take(t0).is_some() {
            n += 1;
        }
        assert_eq!(n, 10);
        assert_eq!(tickets.missed(), 0);
        assert_eq!(tickets.take(end), None);
    }

    #[test]
    fn take_by_takes_only_what_is_due() {
        let t0 = Instant::now();
        let end = t0 + Duration::from_millis(3);
        let tickets = Tickets::open(Schedule::new(t0, 1000.0, 0, 1), end);
        let now = t0 + Duration::from_micros(1500);
        assert_eq!(tickets.take_by(now), Take::Due(t0));
        assert_eq!(
            tickets.take_by(now),
            Take::Due(t0 + Duration::from_millis(1))
        );
        assert_eq!(
            tickets.take_by(now),
            Take::Later(t0 + Duration::from_millis(2))
        );
        assert_eq!(tickets.taken(), 2);
        let later = t0 + Duration::from_millis(2);
        assert_eq!(tickets.take_by(later), Take::Due(later));
        assert_eq!(tickets.take_by(later), Take::Over);
        let closed = Tickets::closed(end);
        assert_eq!(closed.take_by(now), Take::Due(now));
        assert_eq!(closed.take_by(end), Take::Over);
    }

    #[test]
    fn closed_tickets_start_now_until_the_end() {
        let t0 = Instant::now();
        let end = t0 + Duration::from_secs(1);
        let tickets = Tickets::closed(end);
        let now = t0 + Duration::from_millis(300);
        assert_eq!(tickets.take(now), Some(now));
        assert_eq!(tickets.take(end), None);
        assert_eq!(tickets.missed(), 0);
    }
}
