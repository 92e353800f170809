//! The cluster: hubs that share one registry.
//!
//! - [`replicate`]: registry replication between hubs (4002/udp), a pure state machine.
pub mod replicate;
