//! Graceful shutdown: stop accepting, let open connections finish, flush state, exit.
//!
//! The main thread (not a shard) waits for SIGTERM/SIGINT with `sigwait` (the signals are
//! blocked in every thread, so no handler runs on a shard). On the first one it flips the
//! process-wide [`draining`] flag. Each shard notices within [`POLL`] (a timer is the one
//! cross-thread wake-up that needs no shared channel), its accept loops end and its listeners
//! close, so new connections go to a new process bound beside this one (`SO_REUSEPORT`) or are
//! refused. Open connections run to their end. The API shard makes every pending change durable
//! and says so with [`mark_flushed`]; the cluster driver leaves the cluster (tells the other
//! hubs) and says so with [`mark_left`]. The main thread exits once no forwarded connection is left
//! and the state is flushed, or when the drain timeout runs out. A second signal exits at once.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

static DRAINING: AtomicBool = AtomicBool::new(false);
static FLUSHED: AtomicBool = AtomicBool::new(false);
static LEFT: AtomicBool = AtomicBool::new(false);

/// How often a shard looks at the flag.
pub const POLL: Duration = Duration::from_millis(50);

/// Starts draining. Returns `false` if it had already started.
pub fn begin() -> bool {
    !DRAINING.swap(true, Ordering::SeqCst)
}

/// Whether the process is draining.
#[inline]
pub fn draining() -> bool {
    DRAINING.load(Ordering::Relaxed)
}

/// Resolves once draining has started.
pub async fn drain_started() {
    while !draining() {
        glommio::timer::sleep(POLL).await;
    }
}

/// Runs an accept loop until it completes or draining starts, whichever is first; dropping it
/// closes its listener (the successor's copy stays open after a handover).
///
/// Dropping is safe because an accept never has a connection in flight: glommio's accept is
/// patched to wait with a poll and take the connection with a plain `accept4`
/// (`vendor/glommio/EDGEPROXY-PATCH.md`), and the loop counts the connection active before it
/// yields again. A connection is therefore either still queued in the listener (the
/// successor takes it) or counted, and the drain waits for it.
pub async fn until_drain(fut: impl Future<Output = ()>) {
    let stop = async {
        while !draining() {
            glommio::timer::sleep(POLL).await;
        }
    };
    futures_lite::future::or(fut, stop).await
}

/// Whether an accept loop should stop after serving the connection it just accepted.
#[inline]
pub fn stop_accepting() -> bool {
    draining()
}

/// Called by the API shard once every change is durable after draining started.
pub fn mark_flushed() {
    FLUSHED.store(true, Ordering::SeqCst);
}

/// Whether the API shard has flushed the registry since draining started.
pub fn flushed() -> bool {
    FLUSHED.load(Ordering::SeqCst)
}

/// Called by the cluster driver once it has told the other hubs that this one leaves.
pub fn mark_left() {
    LEFT.store(true, Ordering::SeqCst);
}

/// Whether this hub has left its cluster since draining started.
pub fn left() -> bool {
    LEFT.load(Ordering::SeqCst)
}
