//! Counters and the Prometheus text format.
//!
//! Every data-plane counter lives in its shard's own [`ShardMetrics`] (its own cache lines) and
//! is written by that shard only, so a counter update is a plain relaxed load and store, with
//! no locked instruction and no line bouncing between cores. The API shard reads all of them
//! (relaxed: a scrape sees each counter at some recent value) when `/metrics` is served and
//! sums them, also giving the per-shard values.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// A counter with a single writer (its shard).
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`. Only the owning shard may call this: load + store is not atomic as a whole,
    /// which is fine with one writer and cheaper than `fetch_add`.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    #[inline]
    pub fn inc(&self) {
        self.add(1)
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A gauge with a single writer (its shard).
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    #[inline]
    pub fn add(&self, n: i64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// DNS response codes we count, in this order.
pub const DNS_RCODES: [&str; 7] = [
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "BADVERS",
];

/// DNS query types we count by name; everything else is `other`.
pub const DNS_QTYPES: [(u16, &str); 9] = [
    (1, "A"),
    (28, "AAAA"),
    (2, "NS"),
    (6, "SOA"),
    (33, "SRV"),
    (16, "TXT"),
    (65, "HTTPS"),
    (255, "ANY"),
    (0, "other"),
];

/// One shard's counters. Aligned so two shards never share a cache line.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct ShardMetrics {
    pub proxy_accepted: Counter,
    pub proxy_active: Gauge,
    /// Client connections closed because no backend could be reached.
    pub proxy_failed: Counter,
    /// Backend connects that failed (refused, timed out), each retried elsewhere if possible.
    pub proxy_connect_failures: Counter,
    pub proxy_bytes_to_backend: Counter,
    pub proxy_bytes_to_client: Counter,
    pub dns_udp_queries: Counter,
    pub dns_tcp_queries: Counter,
    pub dns_rcode: [Counter; 7],
    pub dns_qtype: [Counter; 9],
    pub dns_truncated: Counter,
    pub dns_dropped: Counter,
    pub tls_handshakes: Counter,
    pub tls_failures: Counter,
    /// Connections closed at once because every handshake slot of the shard was taken.
    pub tls_refused: Counter,
    /// Keys of the backends this shard failed to connect to, for the API shard's passive
    /// ejection (not a metric, but written by this shard only, like one).
    pub connect_failed: crate::health::FailureRing,
}

impl ShardMetrics {
    /// Counts one answered DNS query.
    #[inline]
    pub fn dns_answered(&self, rcode: u16, qtype: Option<u16>, truncated: bool) {
        let i = match rcode {
            0..=5 => rcode as usize,
            16 => 6,
            _ => 2,
        };
        self.dns_rcode[i].inc();
        if let Some(t) = qtype {
            let j = DNS_QTYPES
                .iter()
                .position(|(code, _)| *code == t)
                .unwrap_or(DNS_QTYPES.len() - 1);
            self.dns_qtype[j].inc();
        }
        if truncated {
            self.dns_truncated.inc();
        }
    }
}

/// Every shard's counters.
#[derive(Debug)]
pub struct Metrics {
    pub shards: Box<[ShardMetrics]>,
}

impl Metrics {
    pub fn new(shards: usize) -> Metrics {
        Metrics {
            shards: (0..shards.max(1))
                .map(|_| ShardMetrics::default())
                .collect(),
        }
    }

    /// Appends every data-plane family, per shard, in the Prometheus text format.
    pub fn render(&self, out: &mut Text) {
        type Get = fn(&ShardMetrics) -> u64;
        let counters: [(&str, &str, Get); 10] = [
            (
                "edgeproxy_proxy_connections_accepted_total",
                "Client connections accepted by the TCP proxy.",
                |m| m.proxy_accepted.get(),
            ),
            (
                "edgeproxy_proxy_connections_failed_total",
                "Client connections closed because no backend could be reached.",
                |m| m.proxy_failed.get(),
            ),
            (
                "edgeproxy_proxy_connect_failures_total",
                "Backend connection attempts that failed (each retried on the next candidate).",
                |m| m.proxy_connect_failures.get(),
            ),
            (
                "edgeproxy_proxy_bytes_to_backend_total",
                "Bytes forwarded from clients to backends.",
                |m| m.proxy_bytes_to_backend.get(),
            ),
            (
                "edgeproxy_proxy_bytes_to_client_total",
                "Bytes forwarded from backends to clients.",
                |m| m.proxy_bytes_to_client.get(),
            ),
            (
                "edgeproxy_dns_truncated_total",
                "DNS answers sent truncated (TC) over UDP.",
                |m| m.dns_truncated.get(),
            ),
            (
                "edgeproxy_dns_dropped_total",
                "DNS packets dropped without an answer (not a query).",
                |m| m.dns_dropped.get(),
            ),
            (
                "edgeproxy_tls_handshakes_total",
                "TLS handshakes completed.",
                |m| m.tls_handshakes.get(),
            ),
            (
                "edgeproxy_tls_handshake_failures_total",
                "TLS handshakes that failed.",
                |m| m.tls_failures.get(),
            ),
            (
                "edgeproxy_tls_handshakes_refused_total",
                "TLS connections closed at once because the shard's --tls-max-handshakes slots were all taken.",
                |m| m.tls_refused.get(),
            ),
        ];
        for (name, help, get) in counters {
            out.family(name, help, "counter");
            for (i, m) in self.shards.iter().enumerate() {
                out.sample(name, &[("shard", &i.to_string())], get(m) as f64);
            }
        }
        out.family(
            "edgeproxy_proxy_connections_active",
            "Forwarded connections open now.",
            "gauge",
        );
        for (i, m) in self.shards.iter().enumerate() {
            out.sample(
                "edgeproxy_proxy_connections_active",
                &[("shard", &i.to_string())],
                m.proxy_active.get() as f64,
            );
        }
        out.family(
            "edgeproxy_dns_queries_total",
            "DNS queries received, by transport.",
            "counter",
        );
        for (i, m) in self.shards.iter().enumerate() {
            let shard = i.to_string();
            out.sample(
                "edgeproxy_dns_queries_total",
                &[("shard", &shard), ("transport", "udp")],
                m.dns_udp_queries.get() as f64,
            );
            out.sample(
                "edgeproxy_dns_queries_total",
                &[("shard", &shard), ("transport", "tcp")],
                m.dns_tcp_queries.get() as f64,
            );
        }
        out.family(
            "edgeproxy_dns_responses_total",
            "DNS answers sent, by response code.",
            "counter",
        );
        for (i, m) in self.shards.iter().enumerate() {
            let shard = i.to_string();
            for (j, rcode) in DNS_RCODES.iter().enumerate() {
                out.sample(
                    "edgeproxy_dns_responses_total",
                    &[("shard", &shard), ("rcode", rcode)],
                    m.dns_rcode[j].get() as f64,
                );
            }
        }
        out.family(
            "edgeproxy_dns_questions_total",
            "DNS questions answered, by query type.",
            "counter",
        );
        for (i, m) in self.shards.iter().enumerate() {
            let shard = i.to_string();
            for (j, (_, qtype)) in DNS_QTYPES.iter().enumerate() {
                out.sample(
                    "edgeproxy_dns_questions_total",
                    &[("shard", &shard), ("qtype", qtype)],
                    m.dns_qtype[j].get() as f64,
                );
            }
        }
    }
}

/// A fixed-bucket histogram with a single writer (the API shard).
#[derive(Debug)]
pub struct Histogram {
    /// Upper bounds in seconds.
    bounds: &'static [f64],
    counts: Vec<Counter>,
    sum_micros: Counter,
    count: Counter,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: (0..bounds.len()).map(|_| Counter::default()).collect(),
            sum_micros: Counter::default(),
            count: Counter::default(),
        }
    }

    pub fn observe(&self, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = self.bounds.iter().position(|&b| secs <= b) {
            self.counts[i].inc();
        }
        self.sum_micros.add(d.as_micros() as u64);
        self.count.inc();
    }

    pub fn render(&self, out: &mut Text, name: &str, help: &str) {
        out.family(name, help, "histogram");
        let mut cumulative = 0;
        let bucket = format!("{name}_bucket");
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            cumulative += c.get();
            out.sample(&bucket, &[("le", &b.to_string())], cumulative as f64);
        }
        out.sample(&bucket, &[("le", "+Inf")], self.count.get() as f64);
        out.sample(
            &format!("{name}_sum"),
            &[],
            self.sum_micros.get() as f64 / 1e6,
        );
        out.sample(&format!("{name}_count"), &[], self.count.get() as f64);
    }
}

/// Prometheus text exposition (version 0.0.4) being written.
#[derive(Debug, Default)]
pub struct Text(pub String);

/// Escapes a label value: backslash, double quote and newline.
fn escape(v: &str) -> std::borrow::Cow<'_, str> {
    if v.contains(['\\', '"', '\n']) {
        v.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
            .into()
    } else {
        v.into()
    }
}

impl Text {
    /// Starts a metric family.
    pub fn family(&mut self, name: &str, help: &str, kind: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    /// One sample.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_rendering() {
        let m = Metrics::new(2);
        m.shards[1].proxy_accepted.add(3);
        m.shards[0].proxy_active.add(2);
        m.shards[0].proxy_active.add(-1);
        m.shards[0].dns_answered(3, Some(1), false);
        m.shards[0].dns_answered(0, Some(99), true);
        let mut t = Text::default();
        m.render(&mut t);
        let s = t.0;
        assert!(s.contains("edgeproxy_proxy_connections_accepted_total{shard=\"1\"} 3\n"));
        assert!(s.contains("edgeproxy_proxy_connections_active{shard=\"0\"} 1\n"));
        assert!(s.contains("edgeproxy_dns_responses_total{shard=\"0\",rcode=\"NXDOMAIN\"} 1\n"));
        assert!(s.contains("edgeproxy_dns_questions_total{shard=\"0\",qtype=\"A\"} 1\n"));
        assert!(s.contains("edgeproxy_dns_questions_total{shard=\"0\",qtype=\"other\"} 1\n"));
        assert!(s.contains("edgeproxy_dns_truncated_total{shard=\"0\"} 1\n"));
    }

    #[test]
    fn histogram_is_cumulative() {
        let h = Histogram::new(&[0.001, 0.01]);
        h.observe(std::time::Duration::from_micros(500));
        h.observe(std::time::Duration::from_millis(5));
        h.observe(std::time::Duration::from_secs(1));
        let mut t = Text::default();
        h.render(&mut t, "x_seconds", "x");
        assert!(t.0.contains("x_seconds_bucket{le=\"0.001\"} 1\n"));
        assert!(t.0.contains("x_seconds_bucket{le=\"0.01\"} 2\n"));
        assert!(t.0.contains("x_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(t.0.contains("x_seconds_count 3\n"));
    }

    #[test]
    fn label_values_are_escaped() {
        let mut t = Text::default();
        t.sample("m", &[("id", "a\"b\\c\nd")], 1.0);
        assert_eq!(t.0, "m{id=\"a\\\"b\\\\c\\nd\"} 1\n");
    }
}
