//! `edgeproxy doctor`: is this machine ready to run a hub with this configuration?
//!
//! It reads the live machine and prints one line per check,
//! `ok|warn|fail  check  value (recommended X)  fix: <command>`, then exits 1 if any check
//! failed (the hub would not start or not work) and 0 otherwise. A warning is a machine that
//! runs the hub below its best (an untuned sysctl, a low open-files limit).
//!
//! - Kernel settings: every setting of `tuning/99-edgeproxy.conf`, which is compiled in
//!   ([`TUNING`]) and parsed here, so the recommendation and the check are one text. Each
//!   setting's `# doctor:` line says how the live value is judged ([`Rule`]).
//! - Resource limits of this process: open files against what `--shards` x
//!   `--max-connections` needs, locked memory against what io_uring needs per shard.
//! - io_uring: `kernel.io_uring_disabled`, and a real `io_uring_setup` of a 2-entry ring.
//! - CPUs this process may use against `--shards`.
//! - Ports: each configured listener is bound once, without `SO_REUSEPORT` and without
//!   `listen()`, and closed at once: a running hub (or anyone else) holding it makes the bind
//!   fail and is reported as "in use", never disturbed.
//!
//! Doctor changes nothing on the machine.

use crate::config::{allowed_cpus, Args, Config};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::process::ExitCode;

/// The recommended kernel settings: the very file operators install in `/etc/sysctl.d/`.
pub const TUNING: &str = include_str!("../tuning/99-edgeproxy.conf");

/// Locked memory one shard needs: glommio's 512 KiB of registered io_uring buffers, and the
/// rings themselves on kernels that charge them to memlock.
pub const MEMLOCK_PER_SHARD: u64 = 1024 * 1024;
/// Below this the hub refuses to start at all (glommio's own minimum).
pub const MEMLOCK_MIN: u64 = 512 * 1024;
/// Descriptors besides forwarded connections: listeners, DNS-over-TCP and API connections,
/// io_uring and event fds, logging.
pub const NOFILE_BASE: u64 = 1024;

/// `edgeproxy doctor`: the hub's own settings (flags and `EDGEPROXY_*` variables), so it
/// checks the configuration that will run.
#[derive(Debug, Clone, clap::Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub hub: Args,
}

/// How a live sysctl value is judged against the recommended one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Every number of the live value is at least the recommended one.
    AtLeast,
    /// The live value is at most the recommended one.
    AtMost,
    /// The live value equals the recommended one.
    Exact,
    /// The live range `low high` contains the recommended range.
    Covers,
}

/// One recommended kernel setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sysctl {
    pub key: String,
    /// Whitespace-separated numbers, normalised to single spaces.
    pub value: String,
    pub rule: Rule,
    /// A miss fails the check (the hub cannot work) instead of warning.
    pub required: bool,
    /// Written `-key`: the kernel may not have it.
    pub optional: bool,
}

/// Parses the sysctl drop-in: `key = value` lines, each preceded by a `# doctor: RULE
/// [required]` comment. Anything else is an error naming the line, so a setting added to
/// the file without saying how to check it cannot slip through.
pub fn parse_tuning(text: &str) -> Result<Vec<Sysctl>, String> {
    let mut out: Vec<Sysctl> = Vec::new();
    let mut pending: Option<(Rule, bool)> = None;
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.trim();
        if let Some(comment) = line.strip_prefix('#') {
            if let Some(spec) = comment.trim().strip_prefix("doctor:") {
                let mut words = spec.split_whitespace();
                let rule = match words.next() {
                    Some("at-least") => Rule::AtLeast,
                    Some("at-most") => Rule::AtMost,
                    Some("exact") => Rule::Exact,
                    Some("covers") => Rule::Covers,
                    other => return Err(format!("line {n}: unknown doctor rule {other:?}")),
                };
                let required = match words.next() {
                    None => false,
                    Some("required") => true,
                    Some(w) => return Err(format!("line {n}: unexpected {w:?} after the rule")),
                };
                pending = Some((rule, required));
            }
            continue;
        }
        if line.is_empty() || line.starts_with(';') {
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| format!("line {n}: expected key = value"))?;
        let (key, optional) = match key.trim().strip_prefix('-') {
            Some(k) => (k.trim(), true),
            None => (key.trim(), false),
        };
        let value = value.split_whitespace().collect::<Vec<_>>().join(" ");
        if numbers(&value).is_none() {
            return Err(format!("line {n}: {key}: value {value:?} is not numeric"));
        }
        let (rule, required) = pending
            .take()
            .ok_or_else(|| format!("line {n}: {key} has no `# doctor:` line above it"))?;
        if rule == Rule::Covers && numbers(&value).map(|v| v.len()) != Some(2) {
            return Err(format!(
                "line {n}: {key}: `covers` needs a range `low high`"
            ));
        }
        if out.iter().any(|s| s.key == key) {
            return Err(format!("line {n}: {key} is set twice"));
        }
        out.push(Sysctl {
            key: key.to_string(),
            value,
            rule,
            required,
            optional,
        });
    }
    if pending.is_some() {
        return Err("a `# doctor:` line at the end names no setting".into());
    }
    Ok(out)
}

fn numbers(s: &str) -> Option<Vec<u64>> {
    let v: Option<Vec<u64>> = s.split_whitespace().map(|w| w.parse().ok()).collect();
    v.filter(|v| !v.is_empty())
}

/// Whether `live` meets `recommended` under `rule`; `None` when `live` is not comparable.
pub fn meets(rule: Rule, live: &str, recommended: &str) -> Option<bool> {
    let live = numbers(live)?;
    let rec = numbers(recommended)?;
    if live.len() != rec.len() {
        return None;
    }
    let pairs = || live.iter().zip(&rec);
    Some(match rule {
        Rule::AtLeast => pairs().all(|(l, r)| l >= r),
        Rule::AtMost => pairs().all(|(l, r)| l <= r),
        Rule::Exact => live == rec,
        Rule::Covers => live[0] <= rec[0] && live[1] >= rec[1],
    })
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub status: Status,
    pub check: String,
    pub value: String,
    pub recommended: Option<String>,
    /// The exact command that fixes it (only when not ok).
    pub fix: Option<String>,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<4}  {:<34}  {}",
            self.status.as_str(),
            self.check,
            self.value
        )?;
        if let Some(r) = &self.recommended {
            write!(f, " (recommended {r})")?;
        }
        if let Some(fix) = &self.fix {
            write!(f, "  fix: {fix}")?;
        }
        Ok(())
    }
}

fn finding(status: Status, check: impl Into<String>, value: impl Into<String>) -> Finding {
    Finding {
        status,
        check: check.into(),
        value: value.into(),
        recommended: None,
        fix: None,
    }
}

fn rule_text(rule: Rule, value: &str) -> String {
    match rule {
        Rule::AtLeast => format!(">= {value}"),
        Rule::AtMost => format!("<= {value}"),
        Rule::Exact => value.to_string(),
        Rule::Covers => format!("covering {value}"),
    }
}

/// Judges one setting against its live value (`Err` when it could not be read).
pub fn judge_sysctl(s: &Sysctl, live: Result<String, io::Error>) -> Finding {
    let miss = if s.required {
        Status::Fail
    } else {
        Status::Warn
    };
    let fix = if s.value.contains(' ') {
        format!("sysctl -w {}=\"{}\"", s.key, s.value)
    } else {
        format!("sysctl -w {}={}", s.key, s.value)
    };
    let live = match live {
        Ok(v) => v.split_whitespace().collect::<Vec<_>>().join(" "),
        Err(e) if e.kind() == io::ErrorKind::NotFound && s.optional => {
            return finding(Status::Ok, &s.key, "not present (this kernel predates it)");
        }
        Err(e) => return finding(miss, &s.key, format!("cannot read: {e}")),
    };
    let (status, fix) = match meets(s.rule, &live, &s.value) {
        Some(true) => (Status::Ok, None),
        Some(false) | None => (miss, Some(fix)),
    };
    Finding {
        status,
        check: s.key.clone(),
        value: live,
        recommended: Some(rule_text(s.rule, &s.value)),
        fix,
    }
}

use crate::sys::read_sysctl;

fn limit_text(v: u64) -> String {
    if v == libc::RLIM_INFINITY {
        "unlimited".into()
    } else {
        v.to_string()
    }
}

/// Open files: the hub raises its soft limit to the hard one, so the hard limit is what counts.
pub fn judge_nofile(soft: u64, hard: u64, shards: usize, max_connections: usize) -> Finding {
    let need = (shards as u64)
        .saturating_mul(max_connections as u64)
        .saturating_mul(2)
        .saturating_add(NOFILE_BASE);
    let value = format!(
        "hard {} (soft {}) for {shards} shards x {max_connections} connections x 2",
        limit_text(hard),
        limit_text(soft)
    );
    let status = if hard >= need {
        Status::Ok
    } else {
        Status::Warn
    };
    Finding {
        status,
        check: "rlimit NOFILE (this process)".into(),
        value,
        recommended: Some(format!(">= {need}")),
        fix: (status != Status::Ok).then(|| {
            format!("ulimit -Hn {need} && ulimit -n {need}  (systemd: LimitNOFILE={need})")
        }),
    }
}

/// Locked memory: glommio reads the soft limit.
pub fn judge_memlock(soft: u64, shards: usize) -> Finding {
    let need = (shards as u64).saturating_mul(MEMLOCK_PER_SHARD);
    let status = if soft < MEMLOCK_MIN {
        Status::Fail
    } else if soft < need {
        Status::Warn
    } else {
        Status::Ok
    };
    let kib = need / 1024;
    let value = if soft == libc::RLIM_INFINITY {
        "unlimited".to_string()
    } else {
        format!("{} KiB for {shards} shards", soft / 1024)
    };
    Finding {
        status,
        check: "rlimit MEMLOCK (this process)".into(),
        value,
        recommended: Some(format!(">= {kib} KiB")),
        fix: (status != Status::Ok)
            .then(|| format!("ulimit -l {kib}  (systemd: LimitMEMLOCK={kib}K)")),
    }
}

/// Sets up (and closes) a 2-entry io_uring: the same call every shard makes first.
fn try_io_uring() -> io::Result<()> {
    // struct io_uring_params is 120 bytes of u32-aligned fields; all zero asks for defaults.
    let mut params = [0u32; 30];
    // SAFETY: io_uring_setup reads and writes exactly sizeof(struct io_uring_params) = 120
    // bytes at `params`, which is that large, aligned and writable.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 2u32, params.as_mut_ptr()) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is the ring descriptor just returned to us and owned by nobody else.
    unsafe { libc::close(fd as libc::c_int) };
    Ok(())
}

/// What `io_uring_setup` answered.
pub fn judge_io_uring(result: io::Result<()>) -> Finding {
    match result {
        Ok(()) => finding(Status::Ok, "io_uring", "io_uring_setup works"),
        Err(e) => {
            let fix = match e.raw_os_error() {
                Some(libc::ENOSYS) => "upgrade to a kernel built with CONFIG_IO_URING (5.8 or later)",
                Some(libc::EPERM) => "sysctl -w kernel.io_uring_disabled=0  (or allow io_uring_setup, io_uring_enter, io_uring_register in the seccomp filter)",
                Some(libc::ENOMEM) => "ulimit -l 65536",
                _ => "check dmesg; the hub needs io_uring",
            };
            Finding {
                status: Status::Fail,
                check: "io_uring".into(),
                value: format!("io_uring_setup failed: {e}"),
                recommended: None,
                fix: Some(fix.into()),
            }
        }
    }
}

/// Shards against the CPUs this process may run on.
pub fn judge_cpus(shards: usize, allowed: usize) -> Finding {
    let value = format!("{shards} shards on {allowed} allowed CPUs");
    if shards <= allowed {
        finding(Status::Ok, "cpus", value)
    } else {
        Finding {
            status: Status::Warn,
            check: "cpus".into(),
            value: format!("{value}: shards share cores"),
            recommended: Some(format!("shards <= {allowed}")),
            fix: Some(format!(
                "edgeproxy --shards {allowed}  (or EDGEPROXY_SHARDS={allowed})"
            )),
        }
    }
}

/// The congestion control forwarded connections will use: `configured` (`--tcp-congestion`,
/// with `probe` the outcome of setting it on a socket) or else the system's `system`, against
/// `qdisc` (`net.core.default_qdisc`). bbr without fq paces each socket with TCP's own timers,
/// which measured 35-50 % slower forwarding over loopback (docs/splice.md; not measured over a
/// real network).
pub fn judge_congestion(
    configured: Option<&str>,
    probe: io::Result<()>,
    system: &str,
    qdisc: &str,
) -> Finding {
    let check = "tcp congestion control";
    if let Some(name) = configured {
        if let Err(e) = probe {
            return Finding {
                status: Status::Fail,
                check: check.into(),
                value: format!("--tcp-congestion {name}: {e}"),
                recommended: None,
                fix: Some(format!(
                    "modprobe tcp_{name}, or unset EDGEPROXY_TCP_CONGESTION to use the system's"
                )),
            };
        }
    }
    let (used, whose) = match configured {
        Some(name) => (name, "--tcp-congestion"),
        None => (system, "system"),
    };
    let value = format!("{used} ({whose}), default qdisc {qdisc}");
    if used == "bbr" && qdisc != "fq" {
        return Finding {
            status: Status::Warn,
            check: check.into(),
            value: format!(
                "{value}: bbr without fq paces with TCP timers (forwarding over loopback measured \
                 35-50 % slower)"
            ),
            recommended: Some("cubic, or bbr with fq".into()),
            fix: Some(
                "EDGEPROXY_TCP_CONGESTION=cubic (backends on the same host or site; see \
                 docs/splice.md), or sysctl -w net.core.default_qdisc=fq before the interfaces \
                 come up"
                    .into(),
            ),
        };
    }
    finding(Status::Ok, check, value)
}

fn probe_congestion(name: &str) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    crate::sys::set_tcp_congestion(sock.as_raw_fd(), name)
        .map_err(|e| crate::sys::explain_congestion_error(name, e))
}

/// Which transport a listener uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// Binds `addr` once, without `SO_REUSEPORT` (so it fails if anyone holds the port, a running
/// hub included) and without listening (so no connection can ever reach this socket), then
/// closes it.
fn try_bind(addr: SocketAddr, proto: Proto) -> io::Result<()> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let (ty, p) = match proto {
        Proto::Tcp => (Type::STREAM, Protocol::TCP),
        Proto::Udp => (Type::DGRAM, Protocol::UDP),
    };
    let sock = Socket::new(Domain::for_address(addr), ty, Some(p))?;
    // SO_REUSEADDR only lets TIME_WAIT leftovers through; a bound or listening socket still
    // makes the bind fail.
    sock.set_reuse_address(proto == Proto::Tcp)?;
    if addr.is_ipv6() {
        sock.set_only_v6(false).ok();
    }
    sock.bind(&SockAddr::from(addr))
}

/// The result of binding one listener's address.
pub fn judge_port(what: &str, addr: SocketAddr, proto: Proto, result: io::Result<()>) -> Finding {
    let check = format!("port {}/{} ({what})", addr.port(), proto.as_str());
    if addr.port() == 0 {
        return finding(Status::Ok, check, format!("{addr}: the OS picks a port"));
    }
    let ss = match proto {
        Proto::Tcp => "ltnp",
        Proto::Udp => "lunp",
    };
    match result {
        Ok(()) => finding(Status::Ok, check, format!("{addr} free")),
        Err(e) => {
            let (status, value, fix) = match e.kind() {
                io::ErrorKind::AddrInUse => (
                    Status::Warn,
                    format!("{addr} in use (a running hub, or another process)"),
                    format!("ss -{ss} 'sport = :{}'", addr.port()),
                ),
                io::ErrorKind::PermissionDenied => (
                    Status::Warn,
                    format!("{addr}: needs CAP_NET_BIND_SERVICE (the systemd unit grants it)"),
                    "setcap cap_net_bind_service=+ep /usr/local/bin/edgeproxy".to_string(),
                ),
                io::ErrorKind::AddrNotAvailable => (
                    Status::Fail,
                    format!("{addr}: no local interface has this address"),
                    "ip -brief address".to_string(),
                ),
                _ => (
                    Status::Fail,
                    format!("{addr}: {e}"),
                    format!("ss -{ss} 'sport = :{}'", addr.port()),
                ),
            };
            Finding {
                status,
                check,
                value,
                recommended: None,
                fix: Some(fix),
            }
        }
    }
}

/// Every listener the configuration asks for, as (what, address, transport).
pub fn listeners(cfg: &Config) -> Vec<(String, SocketAddr, Proto)> {
    let mut out = vec![("proxy".to_string(), cfg.listen_addr, Proto::Tcp)];
    for r in &cfg.routes {
        let addr = SocketAddr::new(cfg.listen_addr.ip(), r.port);
        out.push((format!("route {}", r.app), addr, Proto::Tcp));
    }
    if let Some(api) = cfg.api_listen_addr {
        out.push(("api".into(), api, Proto::Tcp));
    }
    if let Some(dns) = cfg.dns_listen_addr {
        out.push(("dns".into(), dns, Proto::Udp));
        out.push(("dns".into(), dns, Proto::Tcp));
    }
    if let Some(c) = &cfg.cluster {
        out.push(("cluster gossip".into(), c.gossip_addr, Proto::Udp));
        out.push(("cluster sync".into(), c.sync_addr, Proto::Udp));
    }
    out
}

/// Runs every check against this machine and `cfg`.
pub fn examine(cfg: &Config) -> Vec<Finding> {
    let mut out = Vec::new();
    match parse_tuning(TUNING) {
        Ok(settings) => {
            for s in &settings {
                out.push(judge_sysctl(s, read_sysctl(&s.key)));
            }
        }
        // Unreachable in a released binary (a unit test parses the same text).
        Err(e) => out.push(finding(Status::Fail, "tuning file", e)),
    }
    match crate::sys::getrlimit(libc::RLIMIT_NOFILE) {
        Ok((soft, hard)) => out.push(judge_nofile(soft, hard, cfg.shards, cfg.max_connections)),
        Err(e) => out.push(finding(Status::Warn, "rlimit NOFILE", e.to_string())),
    }
    match crate::sys::getrlimit(libc::RLIMIT_MEMLOCK) {
        Ok((soft, _)) => out.push(judge_memlock(soft, cfg.shards)),
        Err(e) => out.push(finding(Status::Fail, "rlimit MEMLOCK", e.to_string())),
    }
    out.push(judge_io_uring(try_io_uring()));
    out.push(judge_cpus(cfg.shards, allowed_cpus().len()));
    let configured = cfg.tcp_congestion.as_deref();
    out.push(judge_congestion(
        configured,
        configured.map_or(Ok(()), probe_congestion),
        read_sysctl("net.ipv4.tcp_congestion_control")
            .as_deref()
            .unwrap_or("?"),
        read_sysctl("net.core.default_qdisc")
            .as_deref()
            .unwrap_or("?"),
    ));
    for (what, addr, proto) in listeners(cfg) {
        let result = if addr.port() == 0 {
            Ok(())
        } else {
            try_bind(addr, proto)
        };
        out.push(judge_port(&what, addr, proto, result));
    }
    out
}

/// `edgeproxy doctor`: prints the report; exit 1 if any check failed, 2 on a bad configuration.
pub fn run(args: DoctorArgs) -> ExitCode {
    let cfg = match Config::from_args(args.hub, &allowed_cpus()) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("edgeproxy doctor: {e}");
            return ExitCode::from(2);
        }
    };
    let findings = examine(&cfg);
    for f in &findings {
        println!("{f}");
    }
    let count = |s| findings.iter().filter(|f| f.status == s).count();
    let (warn, fail) = (count(Status::Warn), count(Status::Fail));
    eprintln!(
        "edgeproxy doctor: {} checks, {warn} warn, {fail} fail. Persist the sysctl fixes: \
         install -m 0644 tuning/99-edgeproxy.conf /etc/sysctl.d/ && sysctl --system",
        findings.len()
    );
    if fail > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_tuning_file_parses() {
        let settings = parse_tuning(TUNING).unwrap();
        let keys: Vec<&str> = settings.iter().map(|s| s.key.as_str()).collect();
        for key in [
            "net.core.somaxconn",
            "net.ipv4.tcp_max_syn_backlog",
            "net.core.netdev_max_backlog",
            "net.ipv4.ip_local_port_range",
            "net.core.rmem_max",
            "net.core.wmem_max",
            "net.core.rmem_default",
            "net.ipv4.tcp_rmem",
            "net.ipv4.tcp_wmem",
            "net.ipv4.tcp_tw_reuse",
            "net.ipv4.tcp_fin_timeout",
            "fs.file-max",
            "fs.nr_open",
            "kernel.io_uring_disabled",
        ] {
            assert!(keys.contains(&key), "{key} missing from the tuning file");
        }
        let uring = settings
            .iter()
            .find(|s| s.key == "kernel.io_uring_disabled")
            .unwrap();
        assert!(uring.optional && uring.required && uring.rule == Rule::Exact);
        let range = settings
            .iter()
            .find(|s| s.key == "net.ipv4.ip_local_port_range")
            .unwrap();
        assert_eq!(
            (range.value.as_str(), range.rule),
            ("10000 65535", Rule::Covers)
        );
        // The hub's own fixed ports stay out of the ephemeral range.
        let low: u16 = range.value.split(' ').next().unwrap().parse().unwrap();
        for port in [4001, 4002, 5353, 8080, 8081, 8443] {
            assert!(port < low, "{port} is in the ephemeral range");
        }
    }

    #[test]
    fn parse_rejects_what_it_cannot_check() {
        let err = |t: &str| parse_tuning(t).unwrap_err();
        assert!(err("net.core.somaxconn = 1\n").contains("no `# doctor:` line"));
        assert!(err("# doctor: bigger\nx = 1\n").contains("unknown doctor rule"));
        assert!(err("# doctor: exact please\nx = 1\n").contains("unexpected"));
        assert!(err("# doctor: exact\nx = fast\n").contains("not numeric"));
        assert!(err("# doctor: covers\nx = 1\n").contains("range"));
        assert!(err("# doctor: exact\nx = 1\n# doctor: exact\nx = 2\n").contains("twice"));
        assert!(err("# doctor: exact\n").contains("names no setting"));
        assert!(err("# doctor: exact\nno equals sign\n").contains("key = value"));
        let ok = parse_tuning("# why\n\n# doctor: at-most\n - a.b =  1   2 \n").unwrap();
        assert_eq!(
            ok,
            vec![Sysctl {
                key: "a.b".into(),
                value: "1 2".into(),
                rule: Rule::AtMost,
                required: false,
                optional: true,
            }]
        );
    }

    #[test]
    fn rules_compare_every_number() {
        assert_eq!(meets(Rule::AtLeast, "65535", "4096"), Some(true));
        assert_eq!(meets(Rule::AtLeast, "4096", "65535"), Some(false));
        assert_eq!(
            meets(
                Rule::AtLeast,
                "4096\t131072\t33554432",
                "4096 131072 16777216"
            ),
            Some(true)
        );
        assert_eq!(
            meets(Rule::AtLeast, "4096 16384 4194304", "4096 16384 16777216"),
            Some(false)
        );
        assert_eq!(meets(Rule::AtMost, "60", "15"), Some(false));
        assert_eq!(meets(Rule::AtMost, "10", "15"), Some(true));
        assert_eq!(meets(Rule::Exact, "2", "1"), Some(false));
        assert_eq!(meets(Rule::Exact, "1", "1"), Some(true));
        assert_eq!(meets(Rule::Covers, "1024 65535", "10000 65535"), Some(true));
        assert_eq!(
            meets(Rule::Covers, "32768 60999", "10000 65535"),
            Some(false)
        );
        assert_eq!(
            meets(Rule::Covers, "10000 60999", "10000 65535"),
            Some(false)
        );
        assert_eq!(meets(Rule::AtLeast, "1 2", "1"), None);
        assert_eq!(meets(Rule::AtLeast, "", "1"), None);
        assert_eq!(meets(Rule::AtLeast, "lots", "1"), None);
    }

    fn setting(key: &str, value: &str, rule: Rule, required: bool, optional: bool) -> Sysctl {
        Sysctl {
            key: key.into(),
            value: value.into(),
            rule,
            required,
            optional,
        }
    }

    #[test]
    fn sysctl_findings_and_fixes() {
        let s = setting("net.core.somaxconn", "65535", Rule::AtLeast, false, false);
        let f = judge_sysctl(&s, Ok("4096\n".into()));
        assert_eq!(
            f.to_string(),
            format!(
                "warn  {:<34}  4096 (recommended >= 65535)  fix: sysctl -w net.core.somaxconn=65535",
                "net.core.somaxconn"
            )
        );
        let f = judge_sysctl(&s, Ok("65535\n".into()));
        assert_eq!(f.status, Status::Ok);
        assert_eq!(f.fix, None);

        let r = setting(
            "net.ipv4.tcp_rmem",
            "4096 131072 16777216",
            Rule::AtLeast,
            false,
            false,
        );
        let f = judge_sysctl(&r, Ok("4096\t131072\t6291456\n".into()));
        assert_eq!(f.value, "4096 131072 6291456");
        assert_eq!(
            f.fix.as_deref(),
            Some("sysctl -w net.ipv4.tcp_rmem=\"4096 131072 16777216\"")
        );

        let u = setting("kernel.io_uring_disabled", "0", Rule::Exact, true, true);
        assert_eq!(judge_sysctl(&u, Ok("2\n".into())).status, Status::Fail);
        assert_eq!(judge_sysctl(&u, Ok("0\n".into())).status, Status::Ok);
        let missing = || Err(io::Error::from(io::ErrorKind::NotFound));
        let f = judge_sysctl(&u, missing());
        assert_eq!(f.status, Status::Ok);
        assert!(f.value.contains("not present"));
        // A setting that every kernel has but cannot be read is worth a warning.
        assert_eq!(judge_sysctl(&s, missing()).status, Status::Warn);
        assert_eq!(judge_sysctl(&s, Ok("garbage".into())).status, Status::Warn);
    }

    #[test]
    fn limits() {
        let inf = libc::RLIM_INFINITY;
        let f = judge_nofile(20_000, 20_000, 2, 100_000);
        assert_eq!(f.status, Status::Warn);
        assert_eq!(f.recommended.as_deref(), Some(">= 401024"));
        assert!(f.fix.unwrap().contains("LimitNOFILE=401024"));
        assert_eq!(judge_nofile(1024, 1 << 20, 2, 100_000).status, Status::Ok);
        assert_eq!(judge_nofile(inf, inf, 1024, usize::MAX).status, Status::Ok);

        assert_eq!(judge_memlock(64 * 1024, 1).status, Status::Fail);
        let f = judge_memlock(8 << 20, 16);
        assert_eq!(f.status, Status::Warn);
        assert_eq!(
            f.fix.as_deref(),
            Some("ulimit -l 16384  (systemd: LimitMEMLOCK=16384K)")
        );
        assert_eq!(judge_memlock(8 << 20, 8).status, Status::Ok);
        assert_eq!(judge_memlock(inf, 1024).value, "unlimited");
    }

    #[test]
    fn io_uring_and_cpus() {
        assert_eq!(judge_io_uring(Ok(())).status, Status::Ok);
        let f = judge_io_uring(Err(io::Error::from_raw_os_error(libc::EPERM)));
        assert_eq!(f.status, Status::Fail);
        assert!(f.fix.unwrap().contains("io_uring_disabled=0"));
        assert_eq!(judge_cpus(2, 2).status, Status::Ok);
        let f = judge_cpus(8, 2);
        assert_eq!(f.status, Status::Warn);
        assert!(f.fix.unwrap().starts_with("edgeproxy --shards 2"));
    }

    #[test]
    fn congestion_control() {
        let ok = |c: Option<&str>, sys: &str, q: &str| judge_congestion(c, Ok(()), sys, q);
        let f = ok(None, "cubic", "pfifo_fast");
        assert_eq!(f.status, Status::Ok);
        assert_eq!(f.value, "cubic (system), default qdisc pfifo_fast");
        assert_eq!(ok(None, "bbr", "fq").status, Status::Ok);
        let f = ok(None, "bbr", "pfifo_fast");
        assert_eq!(f.status, Status::Warn);
        assert!(f.fix.unwrap().contains("EDGEPROXY_TCP_CONGESTION=cubic"));
        // The hub's own setting is what counts.
        assert_eq!(ok(Some("cubic"), "bbr", "pfifo_fast").status, Status::Ok);
        assert_eq!(ok(Some("bbr"), "cubic", "fq_codel").status, Status::Warn);
        let f = judge_congestion(
            Some("nope"),
            Err(io::Error::other(
                "the kernel has no congestion control \"nope\"",
            )),
            "cubic",
            "fq",
        );
        assert_eq!(f.status, Status::Fail);
        assert!(f.value.contains("no congestion control"), "{}", f.value);
        // A real probe: reno is always built in; a made-up name is refused.
        assert!(probe_congestion("reno").is_ok());
        assert!(probe_congestion("no_such_cc").is_err());
    }

    #[test]
    fn ports() {
        let addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let in_use = judge_port(
            "proxy",
            addr,
            Proto::Tcp,
            Err(io::ErrorKind::AddrInUse.into()),
        );
        assert_eq!(in_use.status, Status::Warn);
        assert!(in_use.value.contains("in use"));
        assert_eq!(in_use.fix.as_deref(), Some("ss -ltnp 'sport = :8080'"));
        let gone = judge_port(
            "dns",
            addr,
            Proto::Udp,
            Err(io::ErrorKind::AddrNotAvailable.into()),
        );
        assert_eq!(gone.status, Status::Fail);
        assert_eq!(
            judge_port("api", addr, Proto::Tcp, Ok(())).status,
            Status::Ok
        );
        let eph = judge_port("api", "127.0.0.1:0".parse().unwrap(), Proto::Tcp, Ok(()));
        assert!(eph.value.contains("OS picks"));
    }

    #[test]
    fn binding_does_not_disturb_a_holder() {
        // A listener like the hub's (SO_REUSEPORT) keeps its port, and still accepts.
        let holder = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )
        .unwrap();
        holder.set_reuse_port(true).unwrap();
        holder
            .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        holder.listen(8).unwrap();
        let addr = holder.local_addr().unwrap().as_socket().unwrap();
        let err = try_bind(addr, Proto::Tcp).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let err = try_bind(udp.local_addr().unwrap(), Proto::Udp).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        let listener: std::net::TcpListener = holder.into();
        let _client = std::net::TcpStream::connect(addr).unwrap();
        listener.accept().unwrap();
    }
}
