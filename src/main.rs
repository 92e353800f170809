//! The `edgeproxy` binary: parse the configuration, start the shards, wait.

use clap::Parser;
use edgeproxy::config::{allowed_cpus, Args, Config};
use edgeproxy::metrics::Metrics;
use edgeproxy::{shutdown, sys};
use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Sets up the logger. Without `RUST_LOG`, the level is the one global maximum that SIGHUP can
/// change live ([`edgeproxy::reload`]); `RUST_LOG`'s per-module filters are fixed at startup.
/// Returns whether `RUST_LOG` fixed them.
fn init_logging(level: &str) -> bool {
    let mut builder = env_logger::Builder::new();
    let debug = std::env::var("DEBUG").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false");
    let level = if debug { "debug" } else { level };
    let rust_log = std::env::var("RUST_LOG").ok();
    match &rust_log {
        Some(filters) => {
            builder.parse_filters(level);
            builder.parse_filters(filters);
        }
        // Let every record through the logger's own filter; the global maximum decides.
        None => {
            builder.filter_level(log::LevelFilter::Trace);
        }
    }
    builder
        .format(|buf, record| {
            writeln!(
                buf,
                "{} {:<5} {}: {}",
                buf.timestamp_millis(),
                record.level(),
                record.target(),
                record.args()
            )
        })
        .init();
    if rust_log.is_none() {
        log::set_max_level(level.parse().unwrap_or(log::LevelFilter::Info));
    }
    rust_log.is_some()
}

/// The command line: the hub's settings, or a subcommand with its own.
#[derive(clap::Parser)]
#[command(
    name = "edgeproxy",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(flatten)]
    hub: Args,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Check this machine for running a hub with these settings (sysctls, limits, io_uring,
    /// CPUs, ports); exit 1 if a check fails.
    Doctor(edgeproxy::doctor::DoctorArgs),
}

fn main() -> ExitCode {
    let args = match Cli::try_parse() {
        Ok(Cli {
            command: Some(Command::Doctor(doctor)),
            ..
        }) => return edgeproxy::doctor::run(doctor),
        Ok(cli) => cli.hub,
        Err(e) => {
            // --help and --version are not errors.
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let rust_log_fixed = init_logging(&args.log_level);
    let config_file = args.config_file.clone();
    let cfg = match Config::from_args(args, &allowed_cpus()) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("edgeproxy: {e}");
            return ExitCode::from(2);
        }
    };
    // Client geography and the balance factor: read once here, immutable once shards run.
    edgeproxy::geo::install(cfg.geo.clone());
    edgeproxy::select::install_balance_factor(cfg.balance_factor);
    if let Some(db) = cfg.geo.geoip() {
        log::info!("GeoIP database: {}", db.description());
    }
    for name in &cfg.ignored {
        log::warn!("{name} is an edgeProxy v0.4 setting that no longer applies; ignored");
    }
    if let Some(api) = cfg.api_listen_addr {
        if !cfg.api_auth.enabled() && !api.ip().is_loopback() {
            log::warn!(
                "the API on {api} accepts registrations from anyone who can reach it: set EDGEPROXY_API_TOKEN (or --api-token-file)"
            );
        }
    }
    if let Some(c) = &cfg.cluster {
        if c.keys.is_empty() {
            log::warn!(
                "cluster: no EDGEPROXY_CLUSTER_KEY: gossip and sync datagrams are not authenticated (\"no key\" mode); anyone who reaches {} or {} can join and change the registry. Set a key (`openssl rand -base64 32`) on every hub",
                c.gossip_addr,
                c.sync_addr
            );
        }
    }
    let log_cfg = cfg.clone();
    // Signals are taken by this thread alone (sigwait below), never by a shard: block them
    // before the shards start so they inherit the mask.
    if let Err(e) = sys::block_signals(&SIGNALS) {
        eprintln!("edgeproxy: cannot block signals: {e}");
        return ExitCode::from(2);
    }
    let mut hub = match edgeproxy::shard::start(cfg) {
        Ok(hub) => hub,
        Err(e) => {
            log::error!("{e}");
            eprintln!("edgeproxy: {e}");
            return ExitCode::from(2);
        }
    };
    edgeproxy::shard::log_listeners(&log_cfg, &hub.addrs);
    log::info!(
        "ready: proxy={} api={} dns={} tls={} passthrough={} routes={} gossip={} sync={} shards={} region={}",
        hub.addrs.proxy,
        hub.addrs
            .api
            .map(|a| a.to_string())
            .unwrap_or_else(|| "off".into()),
        hub.addrs
            .dns
            .map(|a| a.to_string())
            .unwrap_or_else(|| "off".into()),
        hub.addrs
            .tls
            .map(|a| a.to_string())
            .unwrap_or_else(|| "off".into()),
        hub.addrs
            .tls_passthrough
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(","),
        hub.addrs
            .routes
            .iter()
            .map(|(a, app)| format!("{a}/{app}"))
            .collect::<Vec<_>>()
            .join(","),
        hub.addrs
            .gossip
            .map(|a| a.to_string())
            .unwrap_or_else(|| "off".into()),
        hub.addrs
            .sync
            .map(|a| a.to_string())
            .unwrap_or_else(|| "off".into()),
        log_cfg.shards,
        log_cfg.region
    );
    // systemd (Type=notify): every shard serves; then keep the watchdog fed while DNS answers.
    edgeproxy::notify::ready(&format!(
        "serving: proxy={} shards={}",
        hub.addrs.proxy, log_cfg.shards
    ));
    edgeproxy::notify::spawn_watchdog(hub.addrs.dns.map(|dns| edgeproxy::notify::Probe {
        dns,
        zone: log_cfg.dns_zone.clone(),
    }));
    let metrics = hub.metrics.clone();
    let tls = hub.tls.clone();
    let live = hub.live.take().expect("the hub's live settings");
    // A shard that stops on its own is a bug: do not keep half a hub running.
    std::thread::spawn(move || {
        let result = hub.join();
        if !shutdown::draining() {
            log::error!("a shard stopped unexpectedly ({result:?}); exiting");
            std::process::exit(1);
        }
    });
    loop {
        match sys::wait_signal(&SIGNALS) {
            Ok(libc::SIGHUP) => {
                if let Some(path) = &config_file {
                    match edgeproxy::reload::reload(path, rust_log_fixed) {
                        Ok(reread) => {
                            if !reread.need_restart.is_empty() {
                                log::warn!(
                                    "SIGHUP: {} changed {} and take effect only on restart (edgeproxy --takeover makes it seamless)",
                                    path.display(),
                                    reread.need_restart.join(", ")
                                );
                            }
                            match edgeproxy::live::plan(
                                &reread.vars,
                                |k| std::env::var_os(k).is_some(),
                                live.startup(),
                                live.proxy_port(),
                            ) {
                                Ok(wanted) => {
                                    for change in live.apply(wanted) {
                                        log::info!("SIGHUP: {change}");
                                    }
                                }
                                Err(e) => {
                                    log::error!("SIGHUP: {}: {e}; routes unchanged", path.display())
                                }
                            }
                        }
                        Err(e) => log::error!("SIGHUP: cannot read {}: {e}", path.display()),
                    }
                }
                match &tls {
                    // Certificates are read here, on the main thread, never on a shard; open
                    // connections keep the certificate they were served.
                    Some(tls) => match tls.reload() {
                        Ok(summary) => log::info!("SIGHUP: tls certificates reloaded: {summary}"),
                        Err(e) => {
                            log::error!(
                                "SIGHUP: tls reload failed, keeping the old certificates: {e}"
                            )
                        }
                    },
                    None => log::info!("SIGHUP: TLS is off; no certificates to reload"),
                }
            }
            Ok(sig) => {
                log::info!(
                    "signal {sig}: draining (no new connections; open ones get {:?})",
                    log_cfg.drain_timeout
                );
                return drain(
                    &metrics,
                    log_cfg.drain_timeout,
                    log_cfg.api_listen_addr.is_some(),
                    log_cfg.cluster.is_some(),
                    log_cfg.state_dir.as_deref(),
                );
            }
            Err(e) => {
                log::error!("cannot wait for signals: {e}");
                return ExitCode::from(1);
            }
        }
    }
}

const SIGNALS: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

/// Stops accepting, waits for open forwarded connections, the registry flush and the cluster
/// leave (bounded by `timeout`), then exits 0. A second SIGTERM/SIGINT exits at once.
fn drain(
    metrics: &Metrics,
    timeout: Duration,
    has_registry: bool,
    in_cluster: bool,
    state_dir: Option<&std::path::Path>,
) -> ExitCode {
    shutdown::begin();
    // Without a successor the listening sockets must really close: drop the duplicates kept
    // for a takeover (a no-op after a handover).
    if let Some(dir) = state_dir {
        edgeproxy::handover::release(dir);
    }
    edgeproxy::notify::stopping();
    let deadline = Instant::now() + timeout;
    loop {
        let active: i64 = metrics.shards.iter().map(|m| m.proxy_active.get()).sum();
        let flushed = shutdown::flushed() || !has_registry;
        let left = shutdown::left() || !in_cluster;
        if active <= 0 && flushed && left {
            log::info!("drained: exiting");
            return ExitCode::SUCCESS;
        }
        let now = Instant::now();
        if now >= deadline {
            log::warn!("drain timeout: exiting with {active} connections still open");
            return ExitCode::SUCCESS;
        }
        let wait = (deadline - now).min(Duration::from_millis(50));
        match sys::wait_signal_timeout(&[libc::SIGTERM, libc::SIGINT], wait) {
            Ok(Some(sig)) => {
                log::warn!(
                    "signal {sig} while draining: exiting now with {active} connections open"
                );
                return ExitCode::from(1);
            }
            Ok(None) => {}
            Err(e) => {
                log::error!("cannot wait for signals: {e}");
                return ExitCode::from(1);
            }
        }
    }
}
