//! Running a scenario: one pinned glommio executor per shard, a start time every shard agrees
//! on, the live progress line, the hard cap, and the summary at the end.
//!
//! The main thread never touches a socket: it drains the bounded report channel, prints the
//! progress line once a second (only when stderr is a terminal) and merges what shards send.

use crate::cli::{Command, CpuList, Load};
use crate::pace::{Schedule, Take, Tickets};
use crate::report::{self, Series, Summary};
use crate::scenario::{self, Prepared};
use crate::stats::{new_histogram, Done, ErrorKind, Percentiles, Recorder, Report, Totals};
use glommio::{LocalExecutorBuilder, Placement};
use std::cell::{Cell, RefCell};
use std::io::IsTerminal;
use std::os::fd::RawFd;
use std::rc::{Rc, Weak};
use std::sync::mpsc::{sync_channel, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Registered io_uring buffer memory per shard: small, since scenarios pass their own buffers
/// (and the default would not fit the usual 8 MiB memlock limit).
const IO_MEMORY_PER_SHARD: usize = 512 * 1024;
/// Time for every executor to start before the clock starts.
const START_DELAY: Duration = Duration::from_millis(100);

/// A worker's timeout: armed around an operation on a socket, checked by the shard's
/// watchdog a few times per `--timeout`; when it expires the socket is shut down, which ends
/// the pending read or write, and the worker records a timeout. One cheap check per shard
/// instead of an io_uring timeout armed and cancelled on every read.
#[derive(Default)]
pub struct Watch {
    deadline: Cell<Option<(Instant, RawFd)>>,
    fired: Cell<bool>,
}

impl Watch {
    /// Arms the watch on socket `fd` until `timeout` from now.
    pub fn arm(&self, fd: RawFd, timeout: Duration) {
        self.fired.set(false);
        self.deadline.set(Some((Instant::now() + timeout, fd)));
    }

    /// Disarms; `true` if the watchdog fired (the socket is shut down: drop the connection).
    pub fn disarm(&self) -> bool {
        self.deadline.set(None);
        self.fired.get()
    }

    fn check(&self, now: Instant) {
        if let Some((at, fd)) = self.deadline.get() {
            if now >= at {
                self.deadline.set(None);
                self.fired.set(true);
                crate::sys::shutdown(fd);
            }
        }
    }
}

/// What every task on a shard shares.
pub struct ShardCtx {
    pub shard: usize,
    pub shards: usize,
    /// This shard's workers (closed loop) or in-flight slots (open loop).
    pub workers: usize,
    pub timeout: Duration,
    /// When load stops: no operation starts after this.
    pub end: Instant,
    /// Open loop (--rate).
    pub open: bool,
    tickets: Tickets,
    rec: RefCell<Recorder>,
    watches: RefCell<Vec<Weak<Watch>>>,
}

impl ShardCtx {
    /// Waits for the next operation's intended start; `None` once the run is over.
    pub async fn next(&self) -> Option<Instant> {
        let now = Instant::now();
        let due = self.tickets.take(now)?;
        if due > now {
            glommio::timer::sleep(due - now).await;
        }
        self.started(due, Instant::now());
        Some(due)
    }

    /// Open loop: notes how late an operation due at `due` started (no-op in closed loop).
    pub fn started(&self, due: Instant, now: Instant) {
        if self.open {
            self.rec.borrow_mut().started(due, now);
        }
    }

    /// The next intended start if it is due by `now` (batching engines).
    pub fn take_by(&self, now: Instant) -> Take {
        self.tickets.take_by(now)
    }

    /// Records an operation intended to start at `due` that ended at `now`.
    pub fn record_at(&self, due: Instant, now: Instant, result: Result<Done, ErrorKind>) {
        self.rec.borrow_mut().record(due, now, result);
    }

    /// Records an operation intended to start at `due`, ending now.
    pub fn record(&self, due: Instant, result: Result<Done, ErrorKind>) {
        self.rec.borrow_mut().record(due, Instant::now(), result);
    }

    /// Sends the finished one-second interval, if a new second began.
    pub fn tick(&self, now: Instant) {
        self.rec.borrow_mut().tick(now);
    }

    /// Counts bytes moved outside an operation.
    pub fn add_bytes(&self, bytes: u64) {
        self.rec.borrow_mut().add_bytes(Instant::now(), bytes);
    }

    pub fn over(&self) -> bool {
        Instant::now() >= self.end
    }

    /// A timeout watch for one worker, checked by this shard's watchdog.
    pub fn watch(&self) -> Rc<Watch> {
        let w = Rc::new(Watch::default());
        self.watches.borrow_mut().push(Rc::downgrade(&w));
        w
    }
}

/// Checks every worker's watch a few times per `--timeout` until the shard is done.
async fn watchdog(ctx: Rc<ShardCtx>) {
    let every = (ctx.timeout / 8).clamp(Duration::from_millis(1), Duration::from_millis(250));
    loop {
        glommio::timer::sleep(every).await;
        let now = Instant::now();
        ctx.watches.borrow_mut().retain(|w| match w.upgrade() {
            Some(w) => {
                w.check(now);
                true
            }
            None => false,
        });
    }
}

/// Runs the command: a client scenario returns its summary; `echo` serves until its duration
/// is over and returns `None`.
pub fn execute(cli: crate::Cli) -> Result<Option<Summary>, String> {
    if let Command::Echo(echo) = &cli.command {
        crate::server::run_echo(echo)?;
        return Ok(None);
    }
    let load = cli
        .command
        .load()
        .expect("client scenarios have load options");
    load.validate()?;
    let prepared = Arc::new(scenario::prepare(&cli.command)?);
    let summary = run_load(&cli.command, load, prepared)?;
    print!("{}", report::table(&summary));
    if let Some(path) = &load.json {
        report::write_json(&summary, path)?;
    }
    if let Some(path) = &load.svg {
        report::write_svg(&summary, path)?;
    }
    Ok(Some(summary))
}

fn placement(cpus: &Option<CpuList>, shard: usize) -> Placement {
    match cpus {
        Some(list) => Placement::Fixed(list.of(shard)),
        None => Placement::Unbound,
    }
}

/// Starts the shards, collects their reports and builds the summary.
pub fn run_load(cmd: &Command, load: &Load, prepared: Arc<Prepared>) -> Result<Summary, String> {
    let shards = load.shards;
    let origin = Instant::now() + START_DELAY;
    let measure_from = origin + load.warmup;
    let end = measure_from + load.duration;
    // Shards finish their in-flight operations (bounded by --timeout) after `end`.
    let abandon_at = end + load.timeout + load.hard_cap;
    let (tx, rx) = sync_channel::<Report>(64 * shards);
    let mut handles = Vec::with_capacity(shards);
    for shard in 0..shards {
        let tx = tx.clone();
        let prepared = prepared.clone();
        let workers = load.concurrency_of(shard);
        let (rate, warmup, timeout) = (load.rate, load.warmup, load.timeout);
        let builder = LocalExecutorBuilder::new(placement(&load.cpus, shard))
            .name(&format!("edgebench-{shard}"))
            .io_memory(IO_MEMORY_PER_SHARD);
        let handle = builder
            .spawn(move || async move {
                let tickets = match rate {
                    Some(r) => Tickets::open(Schedule::new(origin, r, shard, shards), end),
                    None => Tickets::closed(end),
                };
                let ctx = Rc::new(ShardCtx {
                    shard,
                    shards,
                    workers,
                    timeout,
                    end,
                    open: rate.is_some(),
                    tickets,
                    rec: RefCell::new(Recorder::new(shard, origin, warmup, tx)),
                    watches: RefCell::new(Vec::new()),
                });
                scenario::before_start(&prepared, &ctx);
                let now = Instant::now();
                if origin > now {
                    glommio::timer::sleep(origin - now).await;
                }
                let ticker = glommio::spawn_local(tick_every_second(ctx.clone(), origin)).detach();
                let dog = glommio::spawn_local(watchdog(ctx.clone())).detach();
                scenario::run_shard(prepared, ctx.clone()).await;
                ticker.cancel();
                dog.cancel();
                let missed = ctx.tickets.missed();
                ctx.rec.borrow_mut().finish(missed);
            })
            .map_err(|e| {
                format!(
                    "cannot start shard {shard}: {e} (glommio needs about 1 MiB of locked memory \
                     per shard: raise `ulimit -l`; and --cpus must name CPUs this process may use)"
                )
            })?;
        handles.push(handle);
    }
    drop(tx);

    let progress = !load.quiet && std::io::stderr().is_terminal();
    let warmup_secs = load.warmup.as_secs_f64();
    let mut series = Series::new(shards, warmup_secs);
    let mut totals = Totals::default();
    let mut running = new_histogram();
    let mut finished = 0;
    let mut next_print = origin + Duration::from_secs(1);
    while finished < shards {
        let now = Instant::now();
        if now >= abandon_at {
            return Err(format!(
                "{} of {shards} shards did not end within --hard-cap {:?} after the run; \
                 abandoning it (is the target stuck and --timeout large?)",
                shards - finished,
                load.hard_cap
            ));
        }
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(Report::Interval(iv)) => {
                if iv.sec as f64 >= warmup_secs {
                    running.add(&iv.hist).expect("same bounds");
                }
                series.add(iv);
            }
            Ok(Report::Finished { shard, totals: t }) => {
                totals.merge(&t);
                series.shard_finished(shard);
                finished += 1;
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                return Err(format!(
                    "{} of {shards} shards ended without reporting (a shard panicked?)",
                    shards - finished
                ));
            }
        }
        if progress && Instant::now() >= next_print {
            next_print += Duration::from_secs(1);
            eprint!("\r\x1b[2K{}", progress_line(&series, &running, origin));
        }
    }
    if progress {
        eprintln!();
    }
    for h in handles {
        h.join()
            .map_err(|e| format!("a shard failed: {e:?} (see the message above)"))?;
    }
    Ok(report::summarize(
        cmd,
        load,
        &prepared,
        totals,
        series.finish(),
    ))
}

async fn tick_every_second(ctx: Rc<ShardCtx>, origin: Instant) {
    let mut sec = 1u64;
    loop {
        let at = origin + Duration::from_secs(sec);
        let now = Instant::now();
        if at > now {
            glommio::timer::sleep(at - now).await;
        }
        ctx.rec.borrow_mut().tick(Instant::now());
        sec += 1;
    }
}

fn progress_line(
    series: &Series,
    running: &hdrhistogram::Histogram<u64>,
    origin: Instant,
) -> String {
    let t = origin.elapsed().as_secs();
    let (ok, errors) = series.last_second();
    let p = Percentiles::of(running);
    let phase = if series.in_warmup(t) { " (warmup)" } else { "" };
    format!(
        "[{t:>4}s]{phase} {ok:>9}/s  errors {errors:>6}/s  p50 {}µs  p99 {}µs so far",
        p.p50, p.p99
    )
}
