//! Results: the per-second series (built from the shards' intervals), the [`Summary`], and its
//! three renderings: a table on stdout, `--json` and `--svg`.

use crate::cli::{Command, Load};
use crate::scenario::Prepared;
use crate::stats::{new_histogram, Interval, Percentiles, Totals};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

/// One second of the run, all shards together.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SecondPoint {
    /// Seconds since the start (warmup included).
    pub t: u64,
    pub warmup: bool,
    pub ok: u64,
    pub errors: u64,
    pub bytes: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p99_9_us: u64,
    pub max_us: u64,
}

struct Acc {
    ok: u64,
    errors: u64,
    bytes: u64,
    hist: Histogram<u64>,
}

/// Merges the shards' intervals second by second. A second is final once every shard has
/// reported a later one (or finished); only then is its histogram reduced to percentiles and
/// dropped, so memory stays bounded however long the run.
pub struct Series {
    warmup_secs: f64,
    open: BTreeMap<u64, Acc>,
    /// Per shard: the latest second reported; `u64::MAX` once finished.
    latest: Vec<u64>,
    done: Vec<SecondPoint>,
}

impl Series {
    pub fn new(shards: usize, warmup_secs: f64) -> Series {
        Series {
            warmup_secs,
            open: BTreeMap::new(),
            latest: vec![0; shards],
            done: Vec::new(),
        }
    }

    pub fn in_warmup(&self, sec: u64) -> bool {
        (sec as f64) < self.warmup_secs
    }

    pub fn add(&mut self, iv: Interval) {
        let acc = self.open.entry(iv.sec).or_insert_with(|| Acc {
            ok: 0,
            errors: 0,
            bytes: 0,
            hist: new_histogram(),
        });
        acc.ok += iv.ok;
        acc.errors += iv.errors;
        acc.bytes += iv.bytes;
        acc.hist.add(&iv.hist).expect("same bounds");
        if let Some(l) = self.latest.get_mut(iv.shard) {
            *l = (*l).max(iv.sec);
        }
        self.close_final();
    }

    pub fn shard_finished(&mut self, shard: usize) {
        if let Some(l) = self.latest.get_mut(shard) {
            *l = u64::MAX;
        }
        self.close_final();
    }

    fn close_final(&mut self) {
        let horizon = self.latest.iter().copied().min().unwrap_or(u64::MAX);
        while let Some(entry) = self.open.first_entry() {
            if *entry.key() >= horizon {
                break;
            }
            let (t, acc) = entry.remove_entry();
            let p = Percentiles::of(&acc.hist);
            self.done.push(SecondPoint {
                t,
                warmup: self.in_warmup(t),
                ok: acc.ok,
                errors: acc.errors,
                bytes: acc.bytes,
                p50_us: p.p50,
                p99_us: p.p99,
                p99_9_us: p.p99_9,
                max_us: p.max,
            });
        }
    }

    /// (ok, errors) of the latest final second.
    pub fn last_second(&self) -> (u64, u64) {
        self.done.last().map(|p| (p.ok, p.errors)).unwrap_or((0, 0))
    }

    pub fn finish(mut self) -> Vec<SecondPoint> {
        for l in &mut self.latest {
            *l = u64::MAX;
        }
        self.close_final();
        self.done
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Counts {
    pub ok: u64,
    pub errors: u64,
    /// Open loop: operations due that no free worker could start in time.
    pub missed: u64,
    pub bytes: u64,
}

/// Everything a run measured; `--json` writes exactly this.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub scenario: String,
    pub target: Option<String>,
    /// "closed" or "open".
    pub mode: String,
    pub shards: usize,
    pub cpus: Option<Vec<usize>>,
    pub concurrency: usize,
    /// Open loop: the requested rate (operations/s).
    pub target_rate: Option<f64>,
    pub duration_s: f64,
    pub warmup_s: f64,
    /// Scenario-specific settings.
    pub params: serde_json::Value,
    pub counts: Counts,
    /// Successful operations per second of the measured phase.
    pub rate: f64,
    pub bytes_per_s: f64,
    /// What the latency is: e.g. "request to response".
    pub latency_of: String,
    pub latency_us: Percentiles,
    /// Open loop: how late operations started after their due time (already inside
    /// `latency_us`): the generator's share, to tell it from the target's.
    pub start_lateness_us: Option<Percentiles>,
    pub errors: BTreeMap<String, u64>,
    /// Outcome counts: DNS rcodes, HTTP statuses.
    pub outcomes: BTreeMap<String, u64>,
    pub dropped_intervals: u64,
    pub series: Vec<SecondPoint>,
}

pub fn summarize(
    cmd: &Command,
    load: &Load,
    prepared: &Prepared,
    totals: Totals,
    series: Vec<SecondPoint>,
) -> Summary {
    let secs = load.duration.as_secs_f64();
    Summary {
        scenario: cmd.name().to_string(),
        target: prepared.target().map(|a| a.to_string()),
        mode: if load.rate.is_some() {
            "open"
        } else {
            "closed"
        }
        .into(),
        shards: load.shards,
        cpus: load.cpus.as_ref().map(|c| c.0.clone()),
        concurrency: load.concurrency,
        target_rate: load.rate,
        duration_s: secs,
        warmup_s: load.warmup.as_secs_f64(),
        params: prepared.params(),
        counts: Counts {
            ok: totals.ok,
            errors: totals.error_count(),
            missed: totals.missed,
            bytes: totals.bytes,
        },
        rate: round1(totals.ok as f64 / secs),
        bytes_per_s: round1(totals.bytes as f64 / secs),
        latency_of: prepared.latency_of().into(),
        latency_us: Percentiles::of(&totals.hist),
        start_lateness_us: load.rate.map(|_| Percentiles::of(&totals.lateness)),
        errors: totals.errors,
        outcomes: totals.tags,
        dropped_intervals: totals.dropped_intervals,
        series,
    }
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

fn thousands(v: u64) -> String {
    let s = v.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The human-readable summary.
pub fn table(s: &Summary) -> String {
    let mut o = String::new();
    let mode = match s.target_rate {
        Some(r) => format!("open loop at {r}/s, at most {} in flight", s.concurrency),
        None => format!("closed loop, concurrency {}", s.concurrency),
    };
    let _ = writeln!(
        o,
        "{} -> {}  |  {} shard(s){}  |  {mode}  |  {}s measured after {}s warmup",
        s.scenario,
        s.target.as_deref().unwrap_or("-"),
        s.shards,
        s.cpus
            .as_ref()
            .map(|c| format!(" on cpus {c:?}"))
            .unwrap_or_default(),
        s.duration_s,
        s.warmup_s
    );
    let _ = writeln!(
        o,
        "  ok        {:>14}   {:>12}/s",
        thousands(s.counts.ok),
        thousands(s.rate as u64)
    );
    if s.counts.bytes > 0 {
        let _ = writeln!(
            o,
            "  bytes     {:>14}   {:>12.1} MB/s  {:.2} Gbit/s",
            thousands(s.counts.bytes),
            s.bytes_per_s / 1e6,
            s.bytes_per_s * 8.0 / 1e9
        );
    }
    let errs: Vec<String> = s.errors.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let _ = writeln!(
        o,
        "  errors    {:>14}   {}",
        thousands(s.counts.errors),
        errs.join(", ")
    );
    if s.mode == "open" {
        let _ = writeln!(
            o,
            "  missed    {:>14}   (due, no free worker)",
            s.counts.missed
        );
    }
    let p = &s.latency_us;
    let _ = writeln!(
        o,
        "  latency   ({})  µs: p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  mean {}",
        s.latency_of, p.p50, p.p90, p.p99, p.p99_9, p.max, p.mean
    );
    if let Some(l) = &s.start_lateness_us {
        let _ = writeln!(
            o,
            "  late start (generator, inside latency) µs: p50 {}  p99 {}  max {}",
            l.p50, l.p99, l.max
        );
    }
    if !s.outcomes.is_empty() {
        let tags: Vec<String> = s
            .outcomes
            .iter()
            .map(|(k, v)| format!("{k} {}", thousands(*v)))
            .collect();
        let _ = writeln!(o, "  outcomes  {}", tags.join(", "));
    }
    if s.dropped_intervals > 0 {
        let _ = writeln!(
            o,
            "  note: {} one-second intervals were dropped from the series (totals are complete)",
            s.dropped_intervals
        );
    }
    o
}

pub fn to_json(s: &Summary) -> String {
    serde_json::to_string_pretty(s).expect("a summary always serializes")
}

pub fn write_json(s: &Summary, path: &Path) -> Result<(), String> {
    std::fs::write(path, to_json(s) + "\n")
        .map_err(|e| format!("cannot write --json {}: {e}", path.display()))
}

/// Latency percentiles (top) and throughput (bottom) per second.
pub fn write_svg(s: &Summary, path: &Path) -> Result<(), String> {
    use plotters::prelude::*;
    let err = |e: &dyn std::fmt::Display| format!("cannot draw --svg {}: {e}", path.display());
    let root = SVGBackend::new(path, (1000, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (top, bottom) = root.split_vertically(380);
    let last_t = s.series.last().map(|p| p.t + 1).unwrap_or(1) as f64;
    let max_lat = s
        .series
        .iter()
        .map(|p| p.p99_9_us.max(p.p99_us))
        .max()
        .unwrap_or(1)
        .max(1) as f64
        * 1.1;
    let mut lat = ChartBuilder::on(&top)
        .caption(
            format!(
                "{} -> {}: latency (µs)",
                s.scenario,
                s.target.as_deref().unwrap_or("-")
            ),
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..last_t, 0f64..max_lat)
        .map_err(|e| err(&e))?;
    lat.configure_mesh()
        .x_desc("seconds")
        .draw()
        .map_err(|e| err(&e))?;
    type Pick = fn(&SecondPoint) -> u64;
    let lines: [(&str, RGBColor, Pick); 3] = [
        ("p50", BLUE, |p| p.p50_us),
        ("p99", RED, |p| p.p99_us),
        ("p99.9", MAGENTA, |p| p.p99_9_us),
    ];
    for (name, color, f) in lines {
        lat.draw_series(LineSeries::new(
            s.series.iter().map(|p| (p.t as f64 + 0.5, f(p) as f64)),
            color,
        ))
        .map_err(|e| err(&e))?
        .label(name)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    lat.configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(|e| err(&e))?;

    let bulk = s.counts.bytes > 0 && s.counts.ok > 0 && s.bytes_per_s > s.rate * 1000.0;
    let value = |p: &SecondPoint| {
        if bulk {
            p.bytes as f64 * 8.0 / 1e9
        } else {
            p.ok as f64
        }
    };
    let max_v = s.series.iter().map(value).fold(1e-9, f64::max) * 1.1;
    let unit = if bulk { "Gbit/s" } else { "ok/s" };
    let mut thr = ChartBuilder::on(&bottom)
        .caption(
            format!("throughput ({unit}); errors/s in red"),
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..last_t, 0f64..max_v)
        .map_err(|e| err(&e))?;
    thr.configure_mesh()
        .x_desc("seconds")
        .draw()
        .map_err(|e| err(&e))?;
    thr.draw_series(LineSeries::new(
        s.series.iter().map(|p| (p.t as f64 + 0.5, value(p))),
        GREEN.stroke_width(2),
    ))
    .map_err(|e| err(&e))?;
    if !bulk {
        thr.draw_series(LineSeries::new(
            s.series.iter().map(|p| (p.t as f64 + 0.5, p.errors as f64)),
            RED,
        ))
        .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iv(shard: usize, sec: u64, ok: u64, lat: u64) -> Interval {
        let mut hist = new_histogram();
        for _ in 0..ok {
            hist.record(lat).unwrap();
        }
        Interval {
            shard,
            sec,
            ok,
            errors: 0,
            bytes: ok * 10,
            hist,
        }
    }

    #[test]
    fn series_closes_a_second_only_when_every_shard_moved_on() {
        let mut s = Series::new(2, 1.0);
        s.add(iv(0, 0, 5, 100));
        s.add(iv(0, 1, 5, 100));
        assert_eq!(s.last_second(), (0, 0), "shard 1 has not reported second 0");
        s.add(iv(1, 0, 3, 300));
        s.add(iv(1, 1, 3, 300));
        assert_eq!(s.last_second(), (8, 0));
        s.shard_finished(0);
        s.shard_finished(1);
        let pts = s.finish();
        assert_eq!(pts.len(), 2);
        assert!(pts[0].warmup && !pts[1].warmup);
        assert_eq!((pts[1].ok, pts[1].bytes), (8, 80));
        assert_eq!(pts[1].p50_us, 100);
        assert_eq!(pts[1].max_us, 300);
    }

    fn sample() -> Summary {
        let mut s = Series::new(1, 0.0);
        s.add(iv(0, 0, 10, 50));
        s.add(iv(0, 1, 20, 70));
        let mut errors = BTreeMap::new();
        errors.insert("timeout".to_string(), 2);
        let mut outcomes = BTreeMap::new();
        outcomes.insert("NOERROR".to_string(), 30);
        let mut hist = new_histogram();
        hist.record(50).unwrap();
        Summary {
            scenario: "dns".into(),
            target: Some("127.0.0.1:5353".into()),
            mode: "closed".into(),
            shards: 1,
            cpus: Some(vec![1]),
            concurrency: 8,
            target_rate: None,
            duration_s: 2.0,
            warmup_s: 0.0,
            params: serde_json::json!({"transport": "udp"}),
            counts: Counts {
                ok: 30,
                errors: 2,
                missed: 0,
                bytes: 300,
            },
            rate: 15.0,
            bytes_per_s: 150.0,
            latency_of: "query to answer".into(),
            latency_us: Percentiles::of(&hist),
            start_lateness_us: None,
            errors,
            outcomes,
            dropped_intervals: 0,
            series: s.finish(),
        }
    }

    #[test]
    fn json_has_the_documented_shape() {
        let v: serde_json::Value = serde_json::from_str(&to_json(&sample())).unwrap();
        for key in [
            "scenario",
            "target",
            "mode",
            "shards",
            "concurrency",
            "duration_s",
            "warmup_s",
            "params",
            "counts",
            "rate",
            "latency_us",
            "errors",
            "outcomes",
            "series",
        ] {
            assert!(v.get(key).is_some(), "no {key} in {v}");
        }
        for p in ["p50", "p90", "p99", "p99_9", "max"] {
            assert!(v["latency_us"][p].is_u64(), "latency_us.{p}");
        }
        assert_eq!(v["counts"]["ok"], 30);
        assert_eq!(v["errors"]["timeout"], 2);
        assert_eq!(v["outcomes"]["NOERROR"], 30);
        assert_eq!(v["series"].as_array().unwrap().len(), 2);
        assert_eq!(v["series"][1]["ok"], 20);
        assert_eq!(v["series"][1]["p99_us"], 70);
    }

    #[test]
    fn table_and_svg_render() {
        let s = sample();
        let t = table(&s);
        assert!(t.contains("dns -> 127.0.0.1:5353"), "{t}");
        assert!(t.contains("timeout 2"), "{t}");
        assert!(t.contains("NOERROR 30"), "{t}");
        let path = std::env::temp_dir().join(format!("edgebench-test-{}.svg", std::process::id()));
        write_svg(&s, &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).ok();
        assert!(svg.starts_with("<svg"), "{}", &svg[..40.min(svg.len())]);
        assert!(svg.contains("polyline") || svg.contains("path"));
        assert_eq!(thousands(1234567), "1,234,567");
    }
}
