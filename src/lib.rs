//! edgeproxy: a thread-per-core edge proxy hub.
//!
//! # Layout
//!
//! The process runs one pinned glommio executor per core (a *shard*). Every shard binds its own
//! `SO_REUSEPORT` sockets for the data plane (TCP forwarding, DNS over UDP and TCP) and reads the
//! registry through an immutable [`registry::Snapshot`] published with `arc-swap`. Exactly one
//! shard (the *API shard*, shard 0) also owns the mutable [`registry::Registry`], serves the
//! registration API and republishes the snapshot after every change.
//!
//! - [`config`]: command-line flags and `EDGEPROXY_*` variables, validated into a [`config::Config`].
//! - [`clock`]: the coarse monotonic clock every shard and the registry agree on.
//! - [`registry`]: `Backend`, the `Registry` (mutations, API shard only) and the `Snapshot`
//!   (read by every shard, never mutated).
//! - [`geo`]: client address → region and country (the overlay's CIDR table, a GeoIP database),
//!   and the region vocabulary (POP codes, countries, distances).
//! - [`select`]: choosing a backend for a client (tiers, weighted rendezvous, bounded loads):
//!   pure, allocation-free.
//! - [`health`]: active checks and passive ejection (a pure state machine, and the checker on
//!   the API shard that feeds it).
//! - [`dns`]: the DNS responder (pure: query bytes + snapshot → answer bytes; the name forms
//!   and EDNS Client Subnet) and its servers.
//! - [`api`]: HTTP/1.1 request reader, routes and JSON for the registration API.
//! - [`proxy`]: TCP forwarding (splice or copy) with connect retries; the per-shard epoll set
//!   (`proxy::reactor`) and non-blocking sockets (`proxy::sock`) that the proxy, TLS and API use.
//! - [`tls`]: TLS on 8443: rustls termination, certificates by SNI, SNI routing, passthrough.
//! - [`live`]: what SIGHUP changes without a restart (TCP route listeners, TLS routes), swapped
//!   like the snapshot.
//! - [`cluster`]: hubs that know each other: SWIM membership on 4001/udp, registry sync on
//!   4002/udp, every datagram authenticated with the cluster key.
//! - [`shard`]: spawning pinned executors, binding listeners on every shard, startup errors.
//! - [`notify`]: systemd readiness and watchdog (`sd_notify`), off the shards.
//! - [`doctor`]: `edgeproxy doctor`, the machine against `tuning/` and the configuration.
//!
//! Nothing on a shard blocks or takes a lock: shared state is either the `ArcSwap` snapshot or
//! single-writer atomics (see [`registry::BackendLive`]).

pub mod api;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod dns;
pub mod doctor;
pub mod geo;
pub mod handover;
pub mod health;
pub mod live;
pub mod metrics;
pub mod names;
pub mod notify;
pub mod proxy;
pub mod registry;
pub mod reload;
pub mod select;
pub mod shard;
pub mod shutdown;
pub mod store;
pub mod sys;
pub mod tls;
