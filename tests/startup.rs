//! Startup through the real binary: configuration from flags and edgeProxy v0.4 variables,
//! and one-line errors with exit code 2 for what an operator must fix.

mod common;

use common::Hub;
use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_edgeproxy"));
    for (k, _) in std::env::vars() {
        if k.starts_with("EDGEPROXY_") {
            cmd.env_remove(k);
        }
    }
    // Cluster ports from the OS unless the test says otherwise (parallel tests never share 4001).
    cmd.env("EDGEPROXY_REPLICATION_GOSSIP_ADDR", "127.0.0.1:0")
        .env("EDGEPROXY_REPLICATION_TRANSPORT_ADDR", "127.0.0.1:0")
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null());
    cmd.output().expect("run edgeproxy")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// The one `edgeproxy: ...` line of a run that must have stopped with exit 2.
fn fatal_line(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(2), "{}", stderr(out));
    let err = stderr(out);
    err.lines()
        .find(|l| l.starts_with("edgeproxy: "))
        .expect(&err)
        .to_string()
}

const EPHEMERAL: [&str; 4] = [
    "--listen-addr=127.0.0.1:0",
    "--api-listen-addr=127.0.0.1:0",
    "--dns-listen-addr=127.0.0.1:0",
    "--tls-listen-addr=127.0.0.1:0",
];

#[test]
fn port_in_use_is_one_line_and_exit_2() {
    // A plain listener (no SO_REUSEPORT) holds the port.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let listen = format!("--listen-addr=127.0.0.1:{port}");
    let out = run(&[&listen, EPHEMERAL[1], EPHEMERAL[2], "--shards=2"], &[]);
    let line = fatal_line(&out);
    assert!(
        line.contains("cannot bind the TCP proxy") && line.contains(&port.to_string()),
        "{line}"
    );
    assert!(line.contains("another process holds it"), "{line}");
}

#[test]
fn memlock_too_low_names_the_fix() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_edgeproxy"));
    cmd.args(EPHEMERAL)
        .args(["--gossip-addr=127.0.0.1:0", "--sync-addr=127.0.0.1:0"])
        .stdin(Stdio::null());
    // SAFETY: setrlimit is async-signal-safe; the closure touches nothing else.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 64 * 1024,
                rlim_max: 64 * 1024,
            };
            if libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("memlock limit is 64 KiB") && err.contains("LimitMEMLOCK"),
        "{err}"
    );
}

#[test]
fn invalid_values_are_one_line_and_exit_2() {
    for (args, env) in [
        (vec!["--dns-ttl-secs=abc"], vec![]),
        (vec!["--route=9000"], vec![]),
        (vec!["--region-map=10.0.0.0/40=sa"], vec![]),
        (vec![], vec![("EDGEPROXY_REGION", "x")]),
        (vec![], vec![("EDGEPROXY_LISTEN_ADDR", "nonsense")]),
        (vec![], vec![("EDGEPROXY_HEARTBEAT_TTL_SECS", "-5")]),
        (vec![], vec![("EDGEPROXY_DNS_ENABLED", "perhaps")]),
    ] {
        let out = run(&args, &env);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?} {env:?}: {}",
            stderr(&out)
        );
        assert!(
            stderr(&out).contains("error"),
            "{args:?} {env:?}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn help_documents_every_variable() {
    let out = run(&["--help"], &[]);
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for var in [
        "EDGEPROXY_LISTEN_ADDR",
        "EDGEPROXY_API_LISTEN_ADDR",
        "EDGEPROXY_DNS_LISTEN_ADDR",
        "EDGEPROXY_DNS_DOMAIN",
        "EDGEPROXY_REGION",
        "EDGEPROXY_HEARTBEAT_TTL_SECS",
        "EDGEPROXY_SHARDS",
        "EDGEPROXY_ROUTES",
        "EDGEPROXY_DNS_TTL_SECS",
    ] {
        assert!(help.contains(var), "--help does not mention {var}");
    }
}

#[test]
fn v04_variables_configure_the_hub() {
    let hub = Hub::start_with_env(
        &[],
        &[
            ("EDGEPROXY_REGION", "EU"),
            ("EDGEPROXY_DNS_DOMAIN", "Corp."),
            ("EDGEPROXY_API_ENABLED", "true"),
            ("EDGEPROXY_DB_PATH", "routing.db"),
        ],
    );
    let log = hub.startup_log.join("\n");
    assert!(log.contains("region=eu"), "{log}");
    assert!(log.contains("(zone corp)"), "{log}");
    assert!(
        log.contains("EDGEPROXY_DB_PATH is an edgeProxy v0.4 setting"),
        "{log}"
    );
    let (s, j) = hub.api("GET", "/health", None);
    assert_eq!((s, j["status"].as_str()), (200, Some("ok")));
}

#[test]
fn one_log_line_per_listener() {
    let hub = Hub::start(&["--route=0=gru.pop"]);
    let log = hub.startup_log.join("\n");
    assert!(
        log.contains(&format!(
            "tcp proxy listening on {} (every app), 2 shards",
            hub.proxy
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!("dns listening on {} udp+tcp", hub.dns)),
        "{log}"
    );
    assert!(
        log.contains(&format!("api listening on {}", hub.api)),
        "{log}"
    );
    assert_eq!(hub.routes.len(), 1);
    assert_eq!(hub.routes[0].1, "gru.pop");
}

#[test]
fn an_unknown_congestion_control_is_one_line_and_exit_2() {
    let out = run(
        &[
            EPHEMERAL[0],
            EPHEMERAL[1],
            EPHEMERAL[2],
            "--tcp-congestion=no_such_cc",
        ],
        &[],
    );
    let line = fatal_line(&out);
    assert!(
        line.contains("--tcp-congestion") && line.contains("no congestion control \"no_such_cc\""),
        "{line}"
    );
    // The error lists what the kernel has (reno is always built in).
    assert!(line.contains("reno"), "{line}");
}
