//! SIGHUP re-reads `--config-file`: the log level changes live; other changed settings are
//! named as needing a restart.

mod common;

use common::{Hub, StateDir};

#[test]
fn sighup_applies_the_log_level_and_names_what_needs_a_restart() {
    let dir = StateDir::new();
    let file = dir.0.join("edgeproxy.env");
    std::fs::write(&file, "EDGEPROXY_LOG_LEVEL=info\n").unwrap();
    let arg = format!("--config-file={}", file.display());
    let hub = Hub::start(&[&arg]);
    // At info, an API request logs nothing.
    assert_eq!(hub.api("GET", "/health", None).0, 200);
    std::fs::write(
        &file,
        "# changed\nEDGEPROXY_LOG_LEVEL=debug\nEDGEPROXY_REGION=eu\n",
    )
    .unwrap();
    hub.signal(libc::SIGHUP);
    let before = hub.logs_until("log level is now DEBUG").join("\n");
    assert!(
        !before.contains("GET /health -> 200"),
        "logged at info:\n{before}"
    );
    hub.logs_until("changed EDGEPROXY_REGION");
    // Debug lines now appear: every API request is logged at debug.
    assert_eq!(hub.api("GET", "/health", None).0, 200);
    hub.logs_until("GET /health -> 200");
}
