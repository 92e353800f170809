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

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) => {
            // --help and --version are not errors.
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    init_logging(&args.log_level);
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
    match hub.join() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::from(1)
        }
    }
}
