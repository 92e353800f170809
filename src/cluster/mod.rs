//! The cluster: hubs that know each other (membership, gossip port 4001/udp) and share their
//! registries (sync, port 4002/udp).
//!
//! - [`auth`]: the envelope every datagram on both ports travels in (ChaCha20-Poly1305 with
//!   the cluster key, cluster name, replay window). Pure.
//! - [`membership`]: SWIM membership (foca) as a state machine fed `(now, datagram | timer)`,
//!   plus the member table the API shows. Pure.
//! - [`driver`]: the glommio side on the API shard: the gossip socket, timers, joining through
//!   the bootstrap peers (resolved off the shards), leaving on shutdown, counters.
//! - [`replicate`]: registry replication (HLC versions, last-writer-wins, tombstones,
//!   anti-entropy, chunking, liveness summaries) as a pure state machine, and its glue to the
//!   registry ([`replicate::hub`]). Pure.
//! - [`sync`]: the sync socket's driver: moves the replica's datagrams and applies what it
//!   decides to the registry.
//!
//! Everything here runs on the API shard, in its own task queue (never on a data-plane path),
//! never blocks and never locks: host names are resolved by a plain thread and handed over
//! through an `ArcSwap`.

pub mod auth;
pub mod driver;
pub mod membership;
pub mod replicate;
pub mod sync;

use crate::config::{Args, GossipProfile};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

pub use driver::ClusterState;

/// Milliseconds between anti-entropy rounds unless configured (`--sync-anti-entropy-ms`).
pub const DEFAULT_ANTI_ENTROPY_MS: u64 = 1000;

/// Cluster settings, validated.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub gossip_addr: SocketAddr,
    pub sync_addr: SocketAddr,
    /// `HOST:PORT` as given; resolved off the shards, again on every retry.
    pub bootstrap_peers: Vec<String>,
    pub node_id: String,
    pub cluster_name: String,
    /// Given with --advertise-addr; otherwise derived at startup ([`advertise_ip`]).
    pub advertise_ip: Option<IpAddr>,
    /// Cluster keys (the first seals); empty: no authentication.
    pub keys: Vec<[u8; 32]>,
    pub profile: GossipProfile,
    pub probe_interval: Option<Duration>,
    pub suspect_timeout: Option<Duration>,
    /// Registry sync: between anti-entropy rounds, and how long a tombstone is kept.
    pub anti_entropy: Duration,
    pub tombstone_horizon: Duration,
}

fn is_node_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= auth::MAX_SENDER_LEN && s.chars().all(|c| c.is_ascii_graphic())
}

impl ClusterConfig {
    pub fn from_args(args: &Args) -> Result<ClusterConfig, String> {
        let node_id = match &args.node_id {
            Some(id) => id.trim().to_string(),
            None => crate::sys::hostname().map_err(|e| {
                format!("cannot read the host name for the cluster node id ({e}): set --node-id")
            })?,
        };
        if !is_node_name(&node_id) {
            return Err(format!(
                "node id '{node_id}' must be 1-{} printable ASCII characters without spaces (--node-id, EDGEPROXY_REPLICATION_NODE_ID)",
                auth::MAX_SENDER_LEN
            ));
        }
        let cluster_name = args.cluster_name.trim().to_string();
        if !is_node_name(&cluster_name) {
            return Err(format!(
                "cluster name '{cluster_name}' must be 1-{} printable ASCII characters without spaces",
                auth::MAX_SENDER_LEN
            ));
        }
        if let Some(ip) = args.advertise_addr {
            if ip.is_unspecified() || ip.is_multicast() {
                return Err(format!(
                    "--advertise-addr {ip} is not an address other hubs can reach: give this hub's routable address"
                ));
            }
        }
        let mut bootstrap_peers = Vec::new();
        for p in args.bootstrap_peers.iter().map(|p| p.trim()) {
            if p.is_empty() {
                continue;
            }
            let port_ok = p
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !port_ok {
                return Err(format!(
                    "bootstrap peer '{p}' must be HOST:PORT (e.g. hub-2.internal:4001)"
                ));
            }
            bootstrap_peers.push(p.to_string());
        }
        let keys = match &args.cluster_key {
            Some(k) => {
                let keys =
                    auth::parse_keys(k).map_err(|e| format!("EDGEPROXY_CLUSTER_KEY: {e}"))?;
                if keys.is_empty() {
                    return Err("EDGEPROXY_CLUSTER_KEY is set but empty".into());
                }
                keys
            }
            None => Vec::new(),
        };
        let cfg = ClusterConfig {
            gossip_addr: args.gossip_addr,
            sync_addr: args.sync_addr,
            bootstrap_peers,
            node_id,
            cluster_name,
            advertise_ip: args.advertise_addr,
            keys,
            profile: args.gossip_profile,
            probe_interval: args
                .gossip_probe_interval_ms
                .or(args.legacy_gossip_interval_ms)
                .map(Duration::from_millis),
            suspect_timeout: args.gossip_suspect_timeout_ms.map(Duration::from_millis),
            anti_entropy: Duration::from_millis(match args.legacy_sync_interval_ms {
                Some(v0_4) if args.sync_anti_entropy_ms == DEFAULT_ANTI_ENTROPY_MS => v0_4,
                _ => args.sync_anti_entropy_ms,
            }),
            tombstone_horizon: Duration::from_secs(args.sync_tombstone_horizon_secs),
        };
        if cfg.gossip_addr.port() != 0 && cfg.gossip_addr == cfg.sync_addr {
            return Err("--gossip-addr and --sync-addr must differ".into());
        }
        Ok(cfg)
    }

    /// foca's timings for this configuration.
    pub fn foca_config(&self) -> foca::Config {
        // The expected size only tunes retransmissions and suspicion length; a few dozen hubs.
        let size = std::num::NonZeroU32::new(16).expect("nonzero");
        let mut c = match self.profile {
            GossipProfile::Lan => foca::Config::new_lan(size),
            GossipProfile::Wan => foca::Config::new_wan(size),
        };
        if let Some(p) = self.probe_interval {
            c.probe_period = p;
            c.probe_rtt = p / 2;
            if let Some(g) = c.periodic_gossip.as_mut() {
                g.frequency = g.frequency.min(p / 2);
            }
        }
        if let Some(s) = self.suspect_timeout {
            c.suspect_to_down_after = s;
        }
        // Room for the envelope within a WireGuard MTU (1420 - 28 bytes of IP and UDP).
        c.max_packet_size = std::num::NonZeroUsize::new(sync::MAX_PAYLOAD).expect("nonzero");
        c
    }
}

/// The address other hubs reach this one at: --advertise-addr; else the bound gossip address
/// when it is a specific one; else the local end of the route to the first bootstrap peer that
/// resolves (no packet is sent); else the local end of the default route; else the first
/// non-loopback interface address; else, for a hub with no bootstrap peer, loopback (with a
/// warning). Never 0.0.0.0/::. Blocking (name resolution): for the main thread at startup only.
pub fn advertise_ip(cfg: &ClusterConfig, bound_gossip: SocketAddr) -> Result<IpAddr, String> {
    if let Some(ip) = cfg.advertise_ip {
        return Ok(ip);
    }
    if !bound_gossip.ip().is_unspecified() {
        return Ok(bound_gossip.ip());
    }
    // The kernel's choice of source address toward `to`: a route lookup, no packet is sent.
    let route_from = |to: SocketAddr| -> Option<IpAddr> {
        let local = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
        let s = std::net::UdpSocket::bind(local).ok()?;
        s.connect(to).ok()?;
        let ip = s.local_addr().ok()?.ip();
        (!ip.is_unspecified()).then_some(ip)
    };
    for peer in &cfg.bootstrap_peers {
        use std::net::ToSocketAddrs;
        let Ok(addrs) = peer.to_socket_addrs() else {
            continue;
        };
        if let Some(ip) = addrs.into_iter().find_map(route_from) {
            return Ok(ip);
        }
    }
    // The address of the default route (toward TEST-NET-1 / the documentation prefix): needs
    // no netlink, which the systemd unit's RestrictAddressFamilies= does not allow.
    let documentation: [SocketAddr; 2] = [
        "192.0.2.1:9".parse().expect("literal"),
        "[2001:db8::1]:9".parse().expect("literal"),
    ];
    if let Some(ip) = documentation.into_iter().find_map(route_from) {
        return Ok(ip);
    }
    if let Some(ip) = crate::sys::first_interface_addr() {
        return Ok(ip);
    }
    // A hub alone (no bootstrap peer) on a machine with only loopback (a network namespace, a
    // sandbox): it serves; hubs on this machine can still join it. One that was told to join
    // others must be reachable by them, so it refuses to start instead.
    if cfg.bootstrap_peers.is_empty() {
        let ip = if bound_gossip.is_ipv4() {
            IpAddr::from([127, 0, 0, 1])
        } else {
            IpAddr::from(std::net::Ipv6Addr::LOCALHOST)
        };
        log::warn!(
            "cluster: no address other hubs can reach (gossip on {bound_gossip}, only loopback here): advertising {ip}; set --advertise-addr (EDGEPROXY_ADVERTISE_ADDR) before other machines join"
        );
        return Ok(ip);
    }
    Err(format!(
        "cannot tell which address other hubs reach this one at (gossip on {bound_gossip}, no bootstrap peer resolves, no non-loopback interface): set --advertise-addr (EDGEPROXY_ADVERTISE_ADDR)"
    ))
}

#[cfg(test)]
mod tests {
    use crate::config::{Args, Config};
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let mut full = vec!["edgeproxy"];
        full.extend_from_slice(args);
        let args = Args::try_parse_from(full).map_err(|e| e.to_string())?;
        Config::from_args(args, &[0]).map_err(|e| e.0)
    }

    #[test]
    fn on_by_default_on_4001_and_4002() {
        let c = parse(&["--node-id=hub-1"]).unwrap().cluster.unwrap();
        assert_eq!(c.gossip_addr.port(), 4001);
        assert_eq!(c.sync_addr.port(), 4002);
        assert_eq!(c.cluster_name, "edgeproxy");
        assert!(c.keys.is_empty());
        assert!(parse(&["--replication-enabled=false"])
            .unwrap()
            .cluster
            .is_none());
        // The host name is the default node id.
        assert!(!parse(&[]).unwrap().cluster.unwrap().node_id.is_empty());
    }

    #[test]
    fn edgeproxy_v0_4_interval_names_still_apply() {
        // Their flags (hidden) stand for EDGEPROXY_REPLICATION_{GOSSIP,SYNC}_INTERVAL_MS.
        let c = parse(&[
            "--legacy-gossip-interval-ms=2000",
            "--legacy-sync-interval-ms=5000",
        ])
        .unwrap()
        .cluster
        .unwrap();
        assert_eq!(c.probe_interval.map(|d| d.as_millis()), Some(2000));
        assert_eq!(c.anti_entropy.as_millis(), 5000);
        // The new names win.
        let c = parse(&[
            "--legacy-gossip-interval-ms=2000",
            "--gossip-probe-interval-ms=300",
            "--legacy-sync-interval-ms=5000",
            "--sync-anti-entropy-ms=250",
        ])
        .unwrap()
        .cluster
        .unwrap();
        assert_eq!(c.probe_interval.map(|d| d.as_millis()), Some(300));
        assert_eq!(c.anti_entropy.as_millis(), 250);
    }

    #[test]
    fn validation() {
        assert!(parse(&["--node-id=has space"]).is_err());
        assert!(parse(&["--node-id", &"x".repeat(65)]).is_err());
        assert!(parse(&["--advertise-addr=0.0.0.0"])
            .unwrap_err()
            .contains("routable"));
        assert!(parse(&["--bootstrap-peers=hub-2"]).is_err());
        assert!(parse(&["--cluster-key=AAAA"]).unwrap_err().contains("32"));
        assert!(parse(&["--gossip-addr=127.0.0.1:5000", "--sync-addr=127.0.0.1:5000"]).is_err());
        assert!(parse(&["--sync-tombstone-horizon-secs=600"])
            .unwrap_err()
            .contains("--expiry-grace-secs"));
        assert!(parse(&[
            "--sync-tombstone-horizon-secs=600",
            "--heartbeat-ttl-secs=0"
        ])
        .is_ok());
        let c = parse(&["--sync-anti-entropy-ms=250"])
            .unwrap()
            .cluster
            .unwrap();
        assert_eq!(c.anti_entropy.as_millis(), 250);
        assert_eq!(c.tombstone_horizon.as_secs(), 86_400);
        let c = parse(&[
            "--bootstrap-peers=hub-2:4001, 10.0.0.1:4001",
            "--gossip-profile=wan",
        ])
        .unwrap()
        .cluster
        .unwrap();
        assert_eq!(c.bootstrap_peers, vec!["hub-2:4001", "10.0.0.1:4001"]);
        assert_eq!(c.foca_config().probe_period.as_secs(), 5);
    }
}
