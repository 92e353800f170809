//! The systemd files agree with the binary: every `EDGEPROXY_*` variable `--help` names is in
//! `systemd/edgeproxy.env` with the same default, the file names no variable the binary does not
//! accept, and the unit keeps what the hub cannot run without. (`systemd/verify`, run by CI,
//! has systemd itself check the unit's syntax.)

use std::collections::BTreeMap;
use std::process::{Command, Stdio};

const ENV_FILE: &str = include_str!("../systemd/edgeproxy.env");
const UNIT: &str = include_str!("../systemd/edgeproxy.service");

/// Every variable `--help` names, with its default (`None` when it has none).
fn help_variables() -> BTreeMap<String, Option<String>> {
    let out = Command::new(env!("CARGO_BIN_EXE_edgeproxy"))
        .arg("--help")
        .env_clear()
        .stdin(Stdio::null())
        .output()
        .expect("run edgeproxy --help");
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8(out.stdout).unwrap();
    let mut vars = BTreeMap::new();
    let mut last: Option<String> = None;
    for line in help.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("[env: ") {
            // `[env: NAME=value]`, or `[env: NAME]` for secrets whose value help never shows.
            let name = rest.split(['=', ']']).next().unwrap().to_string();
            vars.insert(name.clone(), None);
            last = Some(name);
        } else if let Some(rest) = line.strip_prefix("[default: ") {
            let name = last.take().expect("a default follows its [env: ...] line");
            vars.insert(name, Some(rest.trim_end_matches(']').to_string()));
        } else if line.starts_with("--") || line.starts_with("-h") {
            last = None;
        }
    }
    vars
}

/// `VAR=value` lines of the environment file, commented out or not.
fn env_file_variables() -> BTreeMap<String, String> {
    let mut vars = BTreeMap::new();
    for line in ENV_FILE.lines() {
        let setting = line.strip_prefix('#').unwrap_or(line);
        let Some((name, value)) = setting.split_once('=') else {
            continue;
        };
        if name.starts_with("EDGEPROXY_") && !name.contains(' ') {
            let old = vars.insert(name.to_string(), value.to_string());
            assert!(old.is_none(), "{name} appears twice in edgeproxy.env");
        }
    }
    vars
}

#[test]
fn env_file_lists_every_variable_with_its_default() {
    let help = help_variables();
    assert!(help.len() >= 20, "parsed too few variables: {help:?}");
    assert_eq!(
        help.get("EDGEPROXY_LISTEN_ADDR"),
        Some(&Some("0.0.0.0:8080".into()))
    );
    let file = env_file_variables();
    for (name, default) in &help {
        let value = file
            .get(name)
            .unwrap_or_else(|| panic!("systemd/edgeproxy.env does not mention {name}"));
        let default = default.as_deref().unwrap_or("");
        assert_eq!(
            value, default,
            "systemd/edgeproxy.env gives {name} the default {value:?}; --help says {default:?}"
        );
    }
    for name in file.keys() {
        assert!(
            help.contains_key(name),
            "systemd/edgeproxy.env names {name}, which `edgeproxy --help` does not"
        );
    }
}

#[test]
fn env_file_sets_nothing_by_default() {
    // Installing the file must not change a hub's behaviour: every setting stays commented.
    for line in ENV_FILE.lines() {
        let line = line.trim();
        assert!(
            line.is_empty() || line.starts_with('#'),
            "active line in edgeproxy.env: {line}"
        );
    }
}

fn unit_values(key: &str) -> Vec<&'static str> {
    UNIT.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .collect()
}

#[test]
fn unit_keeps_what_the_hub_needs() {
    assert_eq!(unit_values("Type"), ["notify"]);
    assert_eq!(unit_values("ExecStart"), ["/usr/local/bin/edgeproxy"]);
    assert_eq!(
        unit_values("EnvironmentFile"),
        ["-/etc/edgeproxy/edgeproxy.env"]
    );
    // glommio does all its I/O through io_uring, which @system-service does not include.
    let allowed = unit_values("SystemCallFilter")
        .into_iter()
        .find(|v| v.starts_with("@system-service"))
        .expect("an allow list based on @system-service");
    for call in ["io_uring_setup", "io_uring_enter", "io_uring_register"] {
        assert!(allowed.split_whitespace().any(|c| c == call), "{call}");
    }
    // Shards pin themselves with sched_setaffinity, which is in @resources.
    for deny in unit_values("SystemCallFilter")
        .into_iter()
        .filter(|v| v.starts_with('~'))
    {
        assert!(!deny.contains("@resources"), "{deny}");
    }
    assert_eq!(
        unit_values("CapabilityBoundingSet"),
        ["CAP_NET_BIND_SERVICE"]
    );
    assert_eq!(unit_values("AmbientCapabilities"), ["CAP_NET_BIND_SERVICE"]);
    assert_eq!(unit_values("StateDirectory"), ["edgeproxy"]);
    // io_uring needs locked memory: at least 512 KiB per shard.
    assert_eq!(unit_values("LimitMEMLOCK").len(), 1);
    assert!(unit_values("LimitNOFILE")[0].parse::<u64>().unwrap() >= 65_536);
}
