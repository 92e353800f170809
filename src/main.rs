//! The `edgeproxy` binary: parse the configuration, start the shards, wait.

use clap::Parser;
use edgeproxy::config::{allowed_cpus, Args, Config};
use std::io::Write;
use std::process::ExitCode;

fn init_logging(level: &str) {
    let mut builder = env_logger::Builder::new();
    let debug = std::env::var("DEBUG").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false");
    builder.parse_filters(if debug { "debug" } else { level });
    if let Ok(filters) = std::env::var("RUST_LOG") {
        builder.parse_filters(&filters);
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
    init_logging(&args.log_level);
    edgeproxy::notify::ignore_reload_signal();
    let cfg = match Config::from_args(args, &allowed_cpus()) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("edgeproxy: {e}");
            return ExitCode::from(2);
        }
    };
    for name in &cfg.ignored {
        log::warn!("{name} is an edgeProxy v0.4 setting that no longer applies; ignored");
    }
    let log_cfg = cfg.clone();
    let hub = match edgeproxy::shard::start(cfg) {
        Ok(hub) => hub,
        Err(e) => {
            log::error!("{e}");
            eprintln!("edgeproxy: {e}");
            return ExitCode::from(2);
        }
    };
    edgeproxy::shard::log_listeners(&log_cfg, &hub.addrs);
    log::info!(
        "ready: proxy={} api={} dns={} routes={} shards={} region={}",
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
            .routes
            .iter()
            .map(|(a, app)| format!("{a}/{app}"))
            .collect::<Vec<_>>()
            .join(","),
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
    let joined = hub.join();
    edgeproxy::notify::stopping();
    match joined {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::from(1)
        }
    }
}
