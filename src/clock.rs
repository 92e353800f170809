//! The process clock: milliseconds since an epoch fixed at startup, monotonic.
//!
//! Heartbeat deadlines are stored as such milliseconds in atomics shared by every shard, so every
//! shard must read the same clock. `Instant` is monotonic and consistent across threads on Linux
//! (CLOCK_MONOTONIC), which is what we need; wall-clock time is only used for display.

use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Fixes the epoch. Called once at startup; later calls do nothing.
pub fn init() {
    EPOCH.get_or_init(Instant::now);
}

/// Milliseconds since the process epoch.
#[inline]
pub fn now_ms() -> u64 {
    let epoch = *EPOCH.get_or_init(Instant::now);
    epoch.elapsed().as_millis() as u64
}

/// The wall clock, in milliseconds since the Unix epoch (for display only).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}
