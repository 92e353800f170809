//! Recording: every shard owns a [`Recorder`] (no sharing, no locks). It keeps
//!
//! - the totals of the measured phase (after warmup): an HDR histogram of latencies in
//!   microseconds, counts, bytes, errors by kind and outcome tags (DNS rcodes, HTTP statuses);
//! - the current one-second interval, sent to the main thread when the second is over (for the
//!   live progress line and the per-second series). The channel is bounded and the send never
//!   waits: an interval that does not fit is counted as dropped, never queued.
//!
//! At the end each shard sends its [`Totals`]; the main thread [`Totals::merge`]s them.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::mpsc::SyncSender;
use std::time::{Duration, Instant};

/// Latencies are recorded in microseconds, 3 significant digits, 1 µs to 1 hour.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// What a finished operation reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Done {
    /// Payload bytes moved (sent + received) by the operation.
    pub bytes: u64,
    /// An outcome label counted per value (a DNS rcode, an HTTP status); "" for none.
    pub tag: &'static str,
}

impl Done {
    pub const fn bytes(bytes: u64) -> Done {
        Done { bytes, tag: "" }
    }
}

/// Why an operation failed: a short, stable kind ("timeout", "connect", ...).
pub type ErrorKind = &'static str;

/// One shard's one second.
#[derive(Debug, Clone)]
pub struct Interval {
    pub shard: usize,
    /// Seconds since the run started (warmup included).
    pub sec: u64,
    pub ok: u64,
    pub errors: u64,
    pub bytes: u64,
    pub hist: Histogram<u64>,
}

/// A shard's measured-phase totals; merged over shards at the end.
#[derive(Debug, Clone)]
pub struct Totals {
    pub hist: Histogram<u64>,
    pub ok: u64,
    pub bytes: u64,
    pub errors: BTreeMap<String, u64>,
    pub tags: BTreeMap<String, u64>,
    /// Open loop: operations due before the end that no worker was free to start.
    pub missed: u64,
    /// Open loop: how late operations started after their due time (µs): the generator's own
    /// share of the latency (timer wake-ups, busy workers).
    pub lateness: Histogram<u64>,
    /// Intervals the main thread was too busy to take (the series has a gap, totals do not).
    pub dropped_intervals: u64,
}

impl Default for Totals {
    fn default() -> Totals {
        Totals {
            hist: new_histogram(),
            ok: 0,
            bytes: 0,
            errors: BTreeMap::new(),
            tags: BTreeMap::new(),
            missed: 0,
            lateness: new_histogram(),
            dropped_intervals: 0,
        }
    }
}

impl Totals {
    pub fn merge(&mut self, other: &Totals) {
        self.hist
            .add(&other.hist)
            .expect("histograms share their bounds");
        self.ok += other.ok;
        self.bytes += other.bytes;
        for (k, v) in &other.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.tags {
            *self.tags.entry(k.clone()).or_default() += v;
        }
        self.missed += other.missed;
        self.lateness
            .add(&other.lateness)
            .expect("histograms share their bounds");
        self.dropped_intervals += other.dropped_intervals;
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p99_9: u64,
    pub max: u64,
    pub mean: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p99_9: h.value_at_quantile(0.999),
            max: h.max(),
            mean: (h.mean() * 10.0).round() / 10.0,
        }
    }
}

/// Message from a shard to the main thread.
#[derive(Debug)]
pub enum Report {
    Interval(Interval),
    Finished { shard: usize, totals: Box<Totals> },
}

pub struct Recorder {
    shard: usize,
    origin: Instant,
    measure_from: Instant,
    tx: SyncSender<Report>,
    sec: u64,
    interval: Interval,
    totals: Totals,
    finished: bool,
}

impl Recorder {
    pub fn new(
        shard: usize,
        origin: Instant,
        warmup: Duration,
        tx: SyncSender<Report>,
    ) -> Recorder {
        Recorder {
            shard,
            origin,
            measure_from: origin + warmup,
            tx,
            sec: 0,
            interval: Interval {
                shard,
                sec: 0,
                ok: 0,
                errors: 0,
                bytes: 0,
                hist: new_histogram(),
            },
            totals: Totals::default(),
            finished: false,
        }
    }

    fn sec_of(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.origin).as_secs()
    }

    /// Sends the current interval if `now` lies in a later second.
    pub fn tick(&mut self, now: Instant) {
        if self.finished {
            return;
        }
        let sec = self.sec_of(now);
        if sec > self.sec {
            self.flush();
            self.sec = sec;
            self.interval.sec = sec;
        }
    }

    fn flush(&mut self) {
        let fresh = Interval {
            shard: self.shard,
            sec: self.sec,
            ok: 0,
            errors: 0,
            bytes: 0,
            hist: new_histogram(),
        };
        let iv = std::mem::replace(&mut self.interval, fresh);
        if self.tx.try_send(Report::Interval(iv)).is_err() {
            self.totals.dropped_intervals += 1;
        }
    }

    /// Records an operation that was due at `due` and ended at `now`.
    pub fn record(&mut self, due: Instant, now: Instant, result: Result<Done, ErrorKind>) {
        self.tick(now);
        let measured = now >= self.measure_from;
        match result {
            Ok(done) => {
                let us = now.saturating_duration_since(due).as_micros().max(1) as u64;
                self.interval.ok += 1;
                self.interval.bytes += done.bytes;
                self.interval.hist.saturating_record(us);
                if measured {
                    self.totals.ok += 1;
                    self.totals.bytes += done.bytes;
                    self.totals.hist.saturating_record(us);
                    if !done.tag.is_empty() {
                        *self.totals.tags.entry(done.tag.to_string()).or_default() += 1;
                    }
                }
            }
            Err(kind) => {
                self.interval.errors += 1;
                if measured {
                    *self.totals.errors.entry(kind.to_string()).or_default() += 1;
                }
            }
        }
    }

    /// Open loop: records that an operation due at `due` actually started at `now`.
    pub fn started(&mut self, due: Instant, now: Instant) {
        if now >= self.measure_from {
            let us = now.saturating_duration_since(due).as_micros() as u64;
            self.totals.lateness.saturating_record(us);
        }
    }

    /// Records bytes moved outside an operation (bulk streams count every write).
    pub fn add_bytes(&mut self, now: Instant, bytes: u64) {
        self.tick(now);
        self.interval.bytes += bytes;
        if now >= self.measure_from {
            self.totals.bytes += bytes;
        }
    }

    /// Sends the last interval and the totals. Blocks only if the main thread stopped
    /// draining, which happens only once the hard cap has abandoned the run.
    pub fn finish(&mut self, missed: u64) {
        if self.finished {
            return;
        }
        self.finished = true;
        self.flush();
        let mut totals = std::mem::take(&mut self.totals);
        totals.missed = missed;
        let _ = self.tx.send(Report::Finished {
            shard: self.shard,
            totals: Box::new(totals),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::sync_channel;

    #[test]
    fn merge_adds_histograms_counts_and_maps() {
        let mut a = Totals::default();
        let mut b = Totals::default();
        for v in [100, 200, 300] {
            a.hist.record(v).unwrap();
        }
        for v in [1000, 2000] {
            b.hist.record(v).unwrap();
        }
        a.ok = 3;
        b.ok = 2;
        a.errors.insert("timeout".into(), 1);
        b.errors.insert("timeout".into(), 2);
        b.errors.insert("connect".into(), 5);
        b.tags.insert("NOERROR".into(), 2);
        b.missed = 7;
        a.merge(&b);
        assert_eq!(a.hist.len(), 5);
        assert_eq!(a.ok, 5);
        assert_eq!(a.errors["timeout"], 3);
        assert_eq!(a.errors["connect"], 5);
        assert_eq!(a.error_count(), 8);
        assert_eq!(a.tags["NOERROR"], 2);
        assert_eq!(a.missed, 7);
        let p = Percentiles::of(&a.hist);
        assert_eq!(p.p50, 300);
        assert!((1999..=2001).contains(&p.max), "{}", p.max);
    }

    #[test]
    fn recorder_splits_warmup_and_seconds() {
        let (tx, rx) = sync_channel(16);
        let t0 = Instant::now();
        let mut r = Recorder::new(3, t0, Duration::from_secs(1), tx);
        let at = |ms| t0 + Duration::from_millis(ms);
        // Warmup: in the series, not in the totals.
        r.record(at(100), at(150), Ok(Done::bytes(10)));
        r.record(at(200), at(900), Err("timeout"));
        // Measured, second 1 and 2; latency is measured from the due time.
        r.record(
            at(1000),
            at(1002),
            Ok(Done {
                bytes: 5,
                tag: "NOERROR",
            }),
        );
        r.record(at(1500), at(2500), Ok(Done::bytes(1)));
        r.started(at(500), at(700));
        r.started(at(1100), at(1100));
        r.started(at(1200), at(1230));
        r.finish(4);
        let msgs: Vec<_> = rx.try_iter().collect();
        let ivs: Vec<&Interval> = msgs
            .iter()
            .filter_map(|m| match m {
                Report::Interval(iv) => Some(iv),
                _ => None,
            })
            .collect();
        assert_eq!(ivs.len(), 3);
        assert_eq!((ivs[0].sec, ivs[0].ok, ivs[0].errors), (0, 1, 1));
        assert_eq!((ivs[1].sec, ivs[1].ok, ivs[1].bytes), (1, 1, 5));
        assert_eq!((ivs[2].sec, ivs[2].ok), (2, 1));
        assert!(ivs.iter().all(|iv| iv.shard == 3));
        let Some(Report::Finished { shard, totals }) = msgs.last() else {
            panic!("no totals")
        };
        assert_eq!(*shard, 3);
        assert_eq!(totals.ok, 2);
        assert_eq!(totals.bytes, 6);
        assert!(totals.errors.is_empty());
        assert_eq!(totals.tags["NOERROR"], 1);
        assert_eq!(totals.missed, 4);
        // Lateness of the measured phase only: 0 and 30 ms.
        assert_eq!(totals.lateness.len(), 2);
        assert!(totals.lateness.equivalent(totals.lateness.max(), 30_000));
        assert_eq!(totals.hist.min(), 2000);
        assert!(totals.hist.max() >= 1_000_000);
    }

    #[test]
    fn a_full_channel_drops_intervals_without_waiting() {
        let (tx, rx) = sync_channel(1);
        let t0 = Instant::now();
        let mut r = Recorder::new(0, t0, Duration::ZERO, tx);
        for s in 1..5 {
            r.tick(t0 + Duration::from_secs(s));
        }
        assert_eq!(r.totals.dropped_intervals, 3);
        drop(rx);
    }
}
