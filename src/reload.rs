//! What SIGHUP (`systemctl reload`) re-reads besides the TLS certificates.
//!
//! `--config-file` (`EDGEPROXY_CONFIG_FILE`) names the environment file the service was started
//! with (the unit's `EnvironmentFile=`). On SIGHUP the main thread re-reads it and applies what
//! can change live: the log level (`EDGEPROXY_LOG_LEVEL`, or `DEBUG`) here, and the TCP and TLS
//! routes ([`crate::live`], applied by the caller, which owns the listeners). Every other
//! `EDGEPROXY_*` setting whose value in the file differs from the running one is logged as
//! needing a restart (`--takeover` makes that seamless), so an operator never believes a change
//! took effect when it did not. Runs on the main thread only: file reads never reach a shard.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

/// `KEY=VALUE` lines of an environment file (systemd's format, simply: `#` comments, blank
/// lines, optional matching quotes around the value).
pub fn parse_env_file(text: &str) -> BTreeMap<String, String> {
    let mut vars = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(value);
        vars.insert(key.trim().to_string(), value.to_string());
    }
    vars
}

/// The log level a file asks for: `DEBUG` (truthy) means debug, else `EDGEPROXY_LOG_LEVEL`.
pub fn log_level(vars: &BTreeMap<String, String>) -> Option<log::LevelFilter> {
    if vars
        .get("DEBUG")
        .is_some_and(|v| !v.is_empty() && v != "0" && v != "false")
    {
        return Some(log::LevelFilter::Debug);
    }
    vars.get("EDGEPROXY_LOG_LEVEL")
        .and_then(|v| v.trim().parse::<log::LevelFilter>().ok())
}

/// What a re-read of the config file found.
#[derive(Debug)]
pub struct Reread {
    /// Every `KEY=VALUE` of the file.
    pub vars: BTreeMap<String, String>,
    /// Settings that differ from the running process's environment and are not applied live:
    /// they need a restart.
    pub need_restart: Vec<String>,
}

/// Re-reads `path`: applies the log level (unless `RUST_LOG` fixed the filters at startup) and
/// returns the file's settings with those that need a restart. The live ones of
/// [`crate::live`] are applied by the caller, which owns the listeners.
pub fn reload(path: &Path, rust_log_fixed: bool) -> io::Result<Reread> {
    let text = std::fs::read_to_string(path)?;
    let vars = parse_env_file(&text);
    if !rust_log_fixed {
        if let Some(level) = log_level(&vars) {
            if level != log::max_level() {
                log::set_max_level(level);
                log::warn!("SIGHUP: log level is now {level}");
            }
        }
    }
    let live = ["EDGEPROXY_LOG_LEVEL", "EDGEPROXY_CONFIG_FILE"];
    let need_restart = vars
        .iter()
        .filter(|(k, _)| k.starts_with("EDGEPROXY_"))
        .filter(|(k, _)| !live.contains(&k.as_str()) && !crate::live::is_live_var(k))
        .filter(|(k, v)| std::env::var(k).ok().as_deref() != Some(v.as_str()))
        .map(|(k, _)| k.clone())
        .collect();
    Ok(Reread { vars, need_restart })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_file_parsing() {
        let vars = parse_env_file(
            "# comment\n\nEDGEPROXY_LOG_LEVEL=debug\n#EDGEPROXY_REGION=eu\nEDGEPROXY_ROUTES=\"9000=a,9001=b\"\n  RUST_LOG = 'info'\nnonsense\n",
        );
        assert_eq!(
            vars.get("EDGEPROXY_LOG_LEVEL").map(String::as_str),
            Some("debug")
        );
        assert_eq!(
            vars.get("EDGEPROXY_ROUTES").map(String::as_str),
            Some("9000=a,9001=b")
        );
        assert_eq!(vars.get("RUST_LOG").map(String::as_str), Some("info"));
        assert!(!vars.contains_key("EDGEPROXY_REGION"));
        assert_eq!(log_level(&vars), Some(log::LevelFilter::Debug));
        let debug = parse_env_file("DEBUG=1\nEDGEPROXY_LOG_LEVEL=warn\n");
        assert_eq!(log_level(&debug), Some(log::LevelFilter::Debug));
        assert_eq!(log_level(&parse_env_file("EDGEPROXY_LOG_LEVEL=nope")), None);
    }
}
