//! The command line: one subcommand per scenario, the load options every scenario shares,
//! and the value parsers (durations, rates, CPU lists).
//!
//! Parsing only: nothing here opens a socket.

use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "edgebench",
    version,
    about = "Shard-per-core load generator: TCP, DNS, registration API, TLS",
    after_help = "Only ever targets the address you give. Every run ends by itself: \
                  --warmup + --duration, then a hard cap (--hard-cap)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug, Clone)]
pub enum Command {
    /// N streams writing as fast as they can (bytes/s); optionally runs the discard backend too.
    TcpBulk(TcpBulk),
    /// Request/response of --size bytes on kept-alive connections (echo backend, or --http).
    TcpRr(TcpRr),
    /// A new connection per request/response.
    TcpConnect(TcpRr),
    /// DNS queries over UDP (default) or TCP from a dnsperf-format query file.
    Dns(Dns),
    /// POST /api/v1/register with unique ids, optionally followed by heartbeats.
    ApiRegister(ApiRegister),
    /// Time from a registration's HTTP acknowledgement until DNS answers it on every shard.
    PublishLatency(PublishLatency),
    /// Full TLS handshakes, a new connection each.
    TlsHandshake(Tls),
    /// N TLS streams writing as fast as they can (bytes/s).
    TlsBulk(Tls),
    /// Server mode: echo (or discard) every byte received, on every shard.
    Echo(Echo),
}

impl Command {
    /// The scenario's name as typed on the command line.
    pub fn name(&self) -> &'static str {
        match self {
            Command::TcpBulk(_) => "tcp-bulk",
            Command::TcpRr(_) => "tcp-rr",
            Command::TcpConnect(_) => "tcp-connect",
            Command::Dns(_) => "dns",
            Command::ApiRegister(_) => "api-register",
            Command::PublishLatency(_) => "publish-latency",
            Command::TlsHandshake(_) => "tls-handshake",
            Command::TlsBulk(_) => "tls-bulk",
            Command::Echo(_) => "echo",
        }
    }

    /// The load options of a client scenario (`None` for server mode).
    pub fn load(&self) -> Option<&Load> {
        match self {
            Command::TcpBulk(c) => Some(&c.load),
            Command::TcpRr(c) | Command::TcpConnect(c) => Some(&c.load),
            Command::Dns(c) => Some(&c.load),
            Command::ApiRegister(c) => Some(&c.load),
            Command::PublishLatency(c) => Some(&c.load),
            Command::TlsHandshake(c) | Command::TlsBulk(c) => Some(&c.load),
            Command::Echo(_) => None,
        }
    }
}

/// Options every client scenario shares.
#[derive(Args, Debug, Clone)]
pub struct Load {
    /// The address to load (host:port). Required except for tcp-bulk with --sink.
    #[arg(long, short = 't')]
    pub target: Option<SocketAddr>,
    /// Executors (one thread each), pinned round-robin to --cpus.
    #[arg(long, default_value_t = 1)]
    pub shards: usize,
    /// CPUs to pin shards to, e.g. "1" or "0-3,6". Unpinned when absent.
    #[arg(long, value_parser = parse_cpu_list)]
    pub cpus: Option<CpuList>,
    /// Closed loop: operations in flight (connections, streams or sockets) over all shards.
    /// Open loop (--rate): the most operations in flight at once.
    #[arg(long, short = 'c', default_value_t = 64)]
    pub concurrency: usize,
    /// Open loop: start operations at this fixed rate over all shards ("50000", "50k/s");
    /// latency is measured from each operation's intended start time.
    #[arg(long, short = 'r', value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// How long to measure ("10s", "500ms", "2m").
    #[arg(long, short = 'd', default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Load applied before measuring starts; shown in the series, not in the totals.
    #[arg(long, short = 'w', default_value = "0s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Timeout of every connect and of every operation (a read waits at most this long).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// The run is abandoned this long after warmup + duration if a shard still has not ended.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub hard_cap: Duration,
    /// Write the machine-readable result here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Draw latency percentiles and throughput over time here (SVG).
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// No live progress line (it is printed only when stderr is a terminal anyway).
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

#[derive(Args, Debug, Clone)]
pub struct TcpBulk {
    #[command(flatten)]
    pub load: Load,
    /// Bytes per write.
    #[arg(long, default_value_t = 65536, value_parser = parse_size)]
    pub size: usize,
    /// Also run a discard backend on this address (on every shard); with no --target the
    /// streams go straight to it.
    #[arg(long)]
    pub sink: Option<SocketAddr>,
}

#[derive(Args, Debug, Clone)]
pub struct TcpRr {
    #[command(flatten)]
    pub load: Load,
    /// Request size in bytes; an echo backend sends the same number back.
    #[arg(long, default_value_t = 100, value_parser = parse_size)]
    pub size: usize,
    /// Speak HTTP/1.1 instead: GET this path and read one response per request (to compare
    /// with wrk against an HTTP backend).
    #[arg(long)]
    pub http: Option<String>,
    /// auto: one epoll per shard in closed loop (cheapest per request), glommio tasks in open
    /// loop (finer timers).
    #[arg(long, value_enum, default_value_t = RrEngine::Auto)]
    pub engine: RrEngine,
}

/// How tcp-rr and tcp-connect drive their connections.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum RrEngine {
    Auto,
    Epoll,
    Glommio,
}

#[derive(Args, Debug, Clone)]
pub struct Dns {
    #[command(flatten)]
    pub load: Load,
    /// Query file in dnsperf's format: `name TYPE` per line (# comments). Without it, --name.
    #[arg(long, short = 'f')]
    pub queries: Option<PathBuf>,
    /// One name to ask for (type A) when there is no query file.
    #[arg(long, default_value = "gru.pop.internal")]
    pub name: String,
    /// DNS over TCP (2-byte length framing, connections kept open) instead of UDP.
    #[arg(long)]
    pub tcp: bool,
    /// UDP: sockets (source ports) per shard; the queries in flight (--concurrency) are split
    /// among them. TCP: one connection per query in flight.
    #[arg(long, default_value_t = 4)]
    pub sockets: usize,
}

#[derive(Args, Debug, Clone)]
pub struct ApiRegister {
    #[command(flatten)]
    pub load: Load,
    /// App every registered backend belongs to.
    #[arg(long, default_value = "bench")]
    pub app: String,
    #[arg(long, default_value = "sa")]
    pub region: String,
    /// Heartbeats (POST /api/v1/heartbeat/{id}) sent after each registration, same connection.
    #[arg(long, default_value_t = 0)]
    pub heartbeats: u32,
    /// Prefix of the unique ids (default: eb<pid>).
    #[arg(long)]
    pub id_prefix: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct PublishLatency {
    #[command(flatten)]
    pub load: Load,
    /// The hub's DNS address (UDP); --target is its API.
    #[arg(long)]
    pub dns: SocketAddr,
    /// DNS zone of the hub.
    #[arg(long, default_value = "internal")]
    pub zone: String,
    /// UDP sockets (source ports) per worker; every one must get the new answer.
    #[arg(long, default_value_t = 16)]
    pub ports: usize,
    #[arg(long, default_value = "sa")]
    pub region: String,
    /// Prefix of the unique ids and apps (default: eb<pid>).
    #[arg(long)]
    pub id_prefix: Option<String>,
    /// Leave the registered backends in place (default: DELETE each after measuring).
    #[arg(long)]
    pub keep: bool,
}

#[derive(Args, Debug, Clone)]
pub struct Tls {
    #[command(flatten)]
    pub load: Load,
    /// Server name to send (SNI) and to verify.
    #[arg(long, default_value = "localhost")]
    pub sni: String,
    /// Accept any certificate (self-signed targets). Signatures are still checked.
    #[arg(long)]
    pub insecure: bool,
    /// PEM file of trusted CA certificates (default: /etc/ssl/certs/ca-certificates.crt).
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Allow session resumption (default: every handshake is a full one).
    #[arg(long)]
    pub resume: bool,
    /// tls-bulk: bytes per write.
    #[arg(long, default_value_t = 16384, value_parser = parse_size)]
    pub size: usize,
}

#[derive(Args, Debug, Clone)]
pub struct Echo {
    /// Address to listen on (port 0 = any; the chosen one is printed on the `ready:` line).
    #[arg(long, short = 'l')]
    pub listen: SocketAddr,
    #[arg(long, default_value_t = 1)]
    pub shards: usize,
    #[arg(long, value_parser = parse_cpu_list)]
    pub cpus: Option<CpuList>,
    /// Discard what arrives instead of echoing it.
    #[arg(long)]
    pub discard: bool,
    /// The server stops by itself after this long.
    #[arg(long, short = 'd', default_value = "1h", value_parser = parse_duration)]
    pub duration: Duration,
}

/// CPUs to pin shards to, in order (a newtype: clap reads `Option<Vec<_>>` as many values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuList(pub Vec<usize>);

impl CpuList {
    /// The CPU of `shard`: shards go round-robin over the list.
    pub fn of(&self, shard: usize) -> usize {
        self.0[shard % self.0.len()]
    }
}

fn parse_cpu_list(s: &str) -> Result<CpuList, String> {
    parse_cpus(s).map(CpuList)
}

/// "10s", "250ms", "1.5s", "2m", "1h", "20us"; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a duration like 10s, 500ms or 2m"))?;
    let secs = match unit.trim() {
        "" | "s" => v,
        "ms" => v / 1e3,
        "us" | "µs" => v / 1e6,
        "m" | "min" => v * 60.0,
        "h" => v * 3600.0,
        u => return Err(format!("{s:?}: unknown unit {u:?} (use us, ms, s, m or h)")),
    };
    if !(0.0..=7.0 * 86400.0).contains(&secs) {
        return Err(format!("{s:?}: out of range (0 to 7 days)"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// "50000", "50000/s", "50k", "1.5M/s": operations per second, > 0.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let t = s.trim().trim_end_matches("/s");
    let (num, mult) = match t.chars().last() {
        Some('k' | 'K') => (&t[..t.len() - 1], 1e3),
        Some('m' | 'M') => (&t[..t.len() - 1], 1e6),
        _ => (t, 1.0),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a rate like 50000, 50k or 50k/s"))?;
    let v = v * mult;
    if !(v.is_finite() && v > 0.0 && v <= 1e8) {
        return Err(format!(
            "{s:?}: the rate must be above 0 and at most 100M/s"
        ));
    }
    Ok(v)
}

/// "100", "4k" (4096), "64KiB", "1M" (1 MiB): a size in bytes, 1 byte to 16 MiB.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim().trim_end_matches("iB").trim_end_matches('B');
    let (num, mult) = match t.chars().last() {
        Some('k' | 'K') => (&t[..t.len() - 1], 1024),
        Some('m' | 'M') => (&t[..t.len() - 1], 1024 * 1024),
        _ => (t, 1),
    };
    let v: usize = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a size like 100, 4k or 64KiB"))?;
    let v = v * mult;
    if v == 0 || v > 16 << 20 {
        return Err(format!("{s:?}: the size must be 1 byte to 16 MiB"));
    }
    Ok(v)
}

/// "1", "0-3", "0,2,4-5": CPU numbers, in the order given, no duplicates.
pub fn parse_cpus(s: &str) -> Result<Vec<usize>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || format!("{s:?}: expected CPUs like 1, 0-3 or 0,2,4-5");
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (
                a.trim().parse::<usize>().map_err(|_| bad())?,
                b.trim().parse::<usize>().map_err(|_| bad())?,
            ),
            None => {
                let a = part.parse::<usize>().map_err(|_| bad())?;
                (a, a)
            }
        };
        if a > b || b > 4095 {
            return Err(bad());
        }
        for c in a..=b {
            if out.contains(&c) {
                return Err(format!("{s:?}: CPU {c} listed twice"));
            }
            out.push(c);
        }
    }
    if out.is_empty() {
        return Err(format!("{s:?}: no CPU given"));
    }
    Ok(out)
}

impl Load {
    /// Checks what clap cannot: returns an error an operator can act on.
    pub fn validate(&self) -> Result<(), String> {
        if self.shards == 0 || self.shards > 256 {
            return Err("--shards must be 1 to 256".into());
        }
        if self.concurrency < self.shards {
            return Err(format!(
                "--concurrency {} is below --shards {}: every shard needs at least one",
                self.concurrency, self.shards
            ));
        }
        if self.concurrency > 100_000 {
            return Err("--concurrency must be at most 100000".into());
        }
        if self.duration.is_zero() {
            return Err("--duration must be above 0".into());
        }
        if self.timeout.is_zero() {
            return Err("--timeout must be above 0".into());
        }
        Ok(())
    }

    /// The closed-loop workers (or open-loop slots) of one shard: the total split evenly,
    /// the remainder going to the first shards.
    pub fn concurrency_of(&self, shard: usize) -> usize {
        let base = self.concurrency / self.shards;
        base + usize::from(shard < self.concurrency % self.shards)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("edgebench").chain(args.iter().copied()))
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("20us").unwrap(), Duration::from_micros(20));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn rates_sizes_cpus() {
        assert_eq!(parse_rate("50000").unwrap(), 50000.0);
        assert_eq!(parse_rate("50k/s").unwrap(), 50000.0);
        assert_eq!(parse_rate("1.5M").unwrap(), 1.5e6);
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("fast").is_err());
        assert_eq!(parse_size("64KiB").unwrap(), 65536);
        assert_eq!(parse_size("4k").unwrap(), 4096);
        assert_eq!(parse_size("100").unwrap(), 100);
        assert!(parse_size("0").is_err());
        assert!(parse_size("1G").is_err());
        assert_eq!(parse_cpus("1").unwrap(), vec![1]);
        assert_eq!(parse_cpus("0-2,5").unwrap(), vec![0, 1, 2, 5]);
        assert!(parse_cpus("2-1").is_err());
        assert!(parse_cpus("1,1").is_err());
        assert!(parse_cpus("").is_err());
    }

    #[test]
    fn scenarios_parse_with_shared_load_options() {
        let cli = parse(&[
            "dns",
            "--target",
            "127.0.0.1:5353",
            "--shards",
            "2",
            "--cpus",
            "1",
            "-c",
            "200",
            "--rate",
            "100k/s",
            "-d",
            "5s",
            "--warmup",
            "1s",
            "-f",
            "q.txt",
            "--tcp",
        ])
        .unwrap();
        assert_eq!(cli.command.name(), "dns");
        let Command::Dns(d) = &cli.command else {
            panic!("not dns")
        };
        assert!(d.tcp);
        assert_eq!(d.queries.as_deref(), Some(std::path::Path::new("q.txt")));
        let l = cli.command.load().unwrap();
        assert_eq!(l.shards, 2);
        assert_eq!(l.cpus, Some(CpuList(vec![1])));
        assert_eq!(l.rate, Some(100_000.0));
        assert_eq!(l.duration, Duration::from_secs(5));
        assert_eq!(l.warmup, Duration::from_secs(1));
        assert_eq!(l.concurrency_of(0) + l.concurrency_of(1), 200);
        l.validate().unwrap();

        for sub in [
            "tcp-bulk",
            "tcp-rr",
            "tcp-connect",
            "api-register",
            "tls-handshake",
            "tls-bulk",
        ] {
            let cli = parse(&[sub, "-t", "127.0.0.1:1"]).unwrap();
            assert_eq!(cli.command.name(), sub);
            assert_eq!(cli.command.load().unwrap().rate, None);
        }
        let cli = parse(&[
            "publish-latency",
            "-t",
            "127.0.0.1:1",
            "--dns",
            "127.0.0.1:2",
        ])
        .unwrap();
        assert_eq!(cli.command.name(), "publish-latency");
        assert!(parse(&["publish-latency", "-t", "127.0.0.1:1"]).is_err());
        let cli = parse(&["echo", "--listen", "127.0.0.1:0", "--discard"]).unwrap();
        assert!(cli.command.load().is_none());
        assert!(parse(&["dns", "--target", "localhost"]).is_err());
        assert!(parse(&["nope"]).is_err());
    }

    #[test]
    fn validation_names_the_flag() {
        let cli = parse(&["tcp-rr", "-t", "127.0.0.1:1", "--shards", "4", "-c", "2"]).unwrap();
        let e = cli.command.load().unwrap().validate().unwrap_err();
        assert!(e.contains("--concurrency"), "{e}");
        let cli = parse(&["tcp-rr", "-t", "127.0.0.1:1", "-d", "0s"]).unwrap();
        assert!(cli
            .command
            .load()
            .unwrap()
            .validate()
            .unwrap_err()
            .contains("--duration"));
    }

    #[test]
    fn concurrency_splits_evenly() {
        let cli = parse(&["tcp-rr", "-t", "127.0.0.1:1", "--shards", "3", "-c", "10"]).unwrap();
        let l = cli.command.load().unwrap();
        let v: Vec<_> = (0..3).map(|s| l.concurrency_of(s)).collect();
        assert_eq!(v, vec![4, 3, 3]);
    }
}
