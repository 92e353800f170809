//! `edgeproxy doctor` through the real binary: the shape of its report and its exit code.
//! Nothing here assumes the machine is tuned (CI machines are not), and nothing changes it.

use edgeproxy::doctor::{parse_tuning, TUNING};
use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};

fn doctor(args: &[&str], memlock: Option<u64>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_edgeproxy"));
    for (k, _) in std::env::vars() {
        if k.starts_with("EDGEPROXY_") {
            cmd.env_remove(k);
        }
    }
    // Cluster ports from the OS: the test does not depend on 4001/4002 being free here.
    cmd.env("EDGEPROXY_REPLICATION_GOSSIP_ADDR", "127.0.0.1:0")
        .env("EDGEPROXY_REPLICATION_TRANSPORT_ADDR", "127.0.0.1:0")
        .arg("doctor")
        .args(args)
        .stdin(Stdio::null());
    if let Some(bytes) = memlock {
        // SAFETY: setrlimit is async-signal-safe; the closure touches nothing else.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: bytes,
                    rlim_max: bytes,
                };
                if libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    cmd.output().expect("run edgeproxy doctor")
}

/// (status, check, rest of the line) of every report line; panics on a line of another shape.
fn report(out: &Output) -> Vec<(String, String, String)> {
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    stdout
        .lines()
        .map(|line| {
            let (status, rest) = line.split_once("  ").expect(line);
            let status = status.trim_end();
            assert!(
                ["ok", "warn", "fail"].contains(&status),
                "bad status: {line}"
            );
            let rest = rest.trim_start();
            let (check, value) = rest.split_once("  ").expect(line);
            assert!(!value.trim().is_empty(), "no value: {line}");
            if status != "ok" {
                assert!(line.contains("  fix: "), "no fix: {line}");
            }
            (
                status.to_string(),
                check.trim().to_string(),
                value.trim().to_string(),
            )
        })
        .collect()
}

#[test]
fn report_covers_every_check_and_exit_code_follows_failures() {
    // A port someone holds: reported in use, and its holder is not disturbed.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let listen = format!("--listen-addr=127.0.0.1:{port}");
    let out = doctor(
        &[
            "--shards=1",
            &listen,
            "--api-listen-addr=127.0.0.1:0",
            "--dns-listen-addr=127.0.0.1:0",
        ],
        None,
    );
    let lines = report(&out);
    let any_fail = lines.iter().any(|(s, _, _)| s == "fail");
    assert_eq!(
        out.status.code(),
        Some(if any_fail { 1 } else { 0 }),
        "{lines:#?}"
    );

    let checks: Vec<&str> = lines.iter().map(|(_, c, _)| c.as_str()).collect();
    for s in parse_tuning(TUNING).unwrap() {
        assert!(checks.contains(&s.key.as_str()), "no check of {}", s.key);
    }
    for check in [
        "rlimit NOFILE (this process)",
        "rlimit MEMLOCK (this process)",
        "io_uring",
        "cpus",
        "port 0/tcp (api)",
        "port 0/udp (dns)",
        "port 0/tcp (dns)",
    ] {
        assert!(checks.contains(&check), "no {check} in {checks:?}");
    }
    let proxy = lines
        .iter()
        .find(|(_, c, _)| *c == format!("port {port}/tcp (proxy)"))
        .expect("the proxy port is checked");
    assert_eq!(proxy.0, "warn", "{proxy:?}");
    assert!(proxy.2.contains("in use"), "{proxy:?}");
    let cpus = lines.iter().find(|(_, c, _)| c == "cpus").unwrap();
    assert_eq!(cpus.0, "ok", "one shard fits any machine: {cpus:?}");

    // On loopback the handshake is done when connect returns, so accept does not wait.
    let _client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    holder
        .accept()
        .expect("the holder of the port still accepts");
}

#[test]
fn too_little_locked_memory_fails() {
    let out = doctor(
        &[
            "--shards=1",
            "--listen-addr=127.0.0.1:0",
            "--api-listen-addr=127.0.0.1:0",
            "--dns-listen-addr=127.0.0.1:0",
        ],
        Some(64 * 1024),
    );
    assert_eq!(out.status.code(), Some(1));
    let lines = report(&out);
    let memlock = lines
        .iter()
        .find(|(_, c, _)| c == "rlimit MEMLOCK (this process)")
        .unwrap();
    assert_eq!(memlock.0, "fail", "{memlock:?}");
    assert!(memlock.2.contains("64 KiB"), "{memlock:?}");
}

#[test]
fn bad_configuration_is_exit_2() {
    let out = doctor(&["--shards=0"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--shards"));
}
