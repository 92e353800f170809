//! edgebench: a shard-per-core load generator for TCP, DNS, the registration API and TLS.
//!
//! It drives any `host:port` the user names (our hub, HAProxy, nginx, Knot, ...) and never
//! anything else. Every run is bounded: a duration, a hard cap on top of it, and a timeout on
//! every connect, read and write.
//!
//! # Layout
//!
//! - [`cli`]: the command line (scenarios are subcommands) and its value parsers.
//! - [`pace`]: closed loop or open loop; the open-loop schedule of *intended* send times
//!   (latency is measured from them, so a stalled target cannot hide its stall).
//! - [`stats`]: per-shard recording into HDR histograms, one-second intervals sent to the
//!   main thread, merging at the end.
//! - [`run`]: starting one pinned glommio executor per shard, the worker loop, the live
//!   progress line, the hard cap.
//! - [`report`]: the summary table, `--json` and `--svg`.
//! - [`dnswire`]: the dnsperf query file, DNS query encoding and answer decoding.
//! - [`http`]: the few bytes of HTTP/1.1 a client needs (request building, response framing).
//! - [`tls`]: rustls client configuration (ring provider, `--insecure`, no resumption).
//! - [`server`]: `echo` and discard (sink) servers.
//! - [`sys`]: the only raw syscalls (`sendmmsg`/`recvmmsg`), each `unsafe` block explained.
//! - [`scenario`]: one module per scenario kind; each is a worker loop over one connection
//!   or socket.
//!
//! Nothing is shared between shards except the start time, the settings and a bounded
//! channel to the main thread: shards never lock.

pub mod cli;
pub mod dnswire;
pub mod http;
pub mod pace;
pub mod report;
pub mod run;
pub mod scenario;
pub mod server;
pub mod stats;
pub mod sys;
pub mod tls;

pub use cli::{Cli, Command};
pub use report::Summary;
pub use run::execute;
