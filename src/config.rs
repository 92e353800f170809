//! Configuration: every setting is a command-line flag and an `EDGEPROXY_*` variable.
//!
//! edgeProxy v0.4's variable names keep working (`EDGEPROXY_LISTEN_ADDR`,
//! `EDGEPROXY_API_LISTEN_ADDR`, `EDGEPROXY_DNS_LISTEN_ADDR`, `EDGEPROXY_DNS_DOMAIN`,
//! `EDGEPROXY_REGION`, `EDGEPROXY_HEARTBEAT_TTL_SECS`, `EDGEPROXY_API_ENABLED`,
//! `EDGEPROXY_DNS_ENABLED`, `DEBUG`, and for the cluster `EDGEPROXY_REPLICATION_ENABLED`,
//! `_GOSSIP_ADDR`, `_TRANSPORT_ADDR`, `_BOOTSTRAP_PEERS`, `_NODE_ID`, `_CLUSTER_NAME`, and
//! `_GOSSIP_INTERVAL_MS` / `_SYNC_INTERVAL_MS` as the probe and anti-entropy intervals when
//! `EDGEPROXY_GOSSIP_PROBE_INTERVAL_MS` / `EDGEPROXY_SYNC_ANTI_ENTROPY_MS` leave them at
//! their defaults). v0.4 settings that no longer mean anything here
//! (`EDGEPROXY_DB_PATH`, `EDGEPROXY_DB_RELOAD_SECS`, `EDGEPROXY_BINDING_*`) are accepted and
//! ignored with a warning, so an existing environment file starts the hub unchanged.
//!
//! Parsing and validation are here; nothing in this module touches a socket.

use crate::geo::{self, CidrRegion, Geo, RegionMap};
use clap::Parser;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// The DNS TTL, in seconds, of every answer when not configured.
pub const DEFAULT_DNS_TTL_SECS: u32 = 5;

/// `PORT=APP`: an extra TCP listener that serves one app only (port 0: the OS picks one, which
/// the `ready:` log line then names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub port: u16,
    pub app: String,
}

impl std::str::FromStr for Route {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (port, app) = s
            .split_once('=')
            .ok_or_else(|| format!("invalid route '{s}': expected PORT=APP"))?;
        let port: u16 = port
            .trim()
            .parse()
            .map_err(|_| format!("invalid route '{s}': port must be 0-65535"))?;
        let app = app.trim().to_ascii_lowercase();
        if !crate::names::is_dns_name(&app) {
            return Err(format!("invalid route '{s}': app must be DNS-safe labels"));
        }
        Ok(Route { port, app })
    }
}

/// `NAME=APP[:passthrough][:proxy-v2]`: the TLS clients asking for SNI `NAME` go to `APP`;
/// `passthrough` forwards their TLS untouched (the backend holds the certificate), `proxy-v2`
/// sends the backend a PROXY v2 header first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsRoute {
    pub name: String,
    pub app: String,
    pub passthrough: bool,
    pub proxy_v2: bool,
}

impl std::str::FromStr for TlsRoute {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, rest) = s.split_once('=').ok_or_else(|| {
            format!("invalid TLS route '{s}': expected NAME=APP[:passthrough][:proxy-v2]")
        })?;
        let name = name.trim().trim_end_matches('.').to_ascii_lowercase();
        if !crate::names::is_dns_name(&name) {
            return Err(format!("invalid TLS route '{s}': NAME must be a DNS name"));
        }
        let mut parts = rest.split(':');
        let app = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        if !crate::names::is_dns_name(&app) {
            return Err(format!(
                "invalid TLS route '{s}': APP must be DNS-safe labels"
            ));
        }
        let mut route = TlsRoute {
            name,
            app,
            passthrough: false,
            proxy_v2: false,
        };
        for opt in parts {
            match opt.trim() {
                "passthrough" => route.passthrough = true,
                "proxy-v2" => route.proxy_v2 = true,
                other => {
                    return Err(format!(
                        "invalid TLS route '{s}': unknown option '{other}' (passthrough, proxy-v2)"
                    ))
                }
            }
        }
        Ok(route)
    }
}

/// TLS settings, validated.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// `None`: TLS is off.
    pub listen_addr: Option<SocketAddr>,
    /// Passthrough listeners: ports on the TLS host address.
    pub passthrough_ports: Vec<u16>,
    pub sources: crate::tls::certs::CertSources,
    pub routes: Vec<TlsRoute>,
    pub default_app: Option<String>,
    pub alpn: Vec<String>,
    pub handshake_timeout: Duration,
    pub max_handshakes: usize,
    pub session_cache: usize,
    /// PROXY v2 toward every TLS backend (else per route).
    pub proxy_protocol: bool,
}

/// Gossip timing presets (foca's, derived from memberlist's LAN and WAN defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GossipProfile {
    /// Probe every second, 500 ms round trip, suspicion of a few seconds.
    Lan,
    /// Probe every 5 s, 3 s round trip, suspicion of tens of seconds.
    Wan,
}

/// When to forward with `splice(2)` instead of copying through a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SpliceMode {
    /// Always splice through a pipe.
    Always,
    /// Never splice: copy through a buffer borrowed from the shard's pool while bytes wait.
    Never,
    /// Copy, and switch a direction to splice once it moves a full buffer at a time (bulk).
    Auto,
}

fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(format!(
            "'{s}' is not a boolean (true/false, 1/0, yes/no, on/off)"
        )),
    }
}

fn parse_zone(s: &str) -> Result<String, String> {
    let z = s.trim().trim_end_matches('.').to_ascii_lowercase();
    if crate::names::is_dns_name(&z) {
        Ok(z)
    } else {
        Err(format!("'{s}' is not a DNS zone name"))
    }
}

/// Ranges of the health-check settings, flags and per-backend `check` alike.
pub const CHECK_INTERVAL_MS: std::ops::RangeInclusive<u64> = 100..=86_400_000;
pub const CHECK_TIMEOUT_MS: std::ops::RangeInclusive<u64> = 1..=60_000;
/// (Rise and fall; the flags spell it out, clap wanting the range in its own type.)
pub const CHECK_COUNT: std::ops::RangeInclusive<u64> = 1..=100;
/// Longest HTTP health-check path.
pub const MAX_CHECK_PATH: usize = 1024;

/// Whether `p` can be an HTTP check path: `/`, then printable ASCII without spaces.
pub fn is_check_path(p: &str) -> bool {
    p.starts_with('/') && p.len() <= MAX_CHECK_PATH && p.bytes().all(|b| b.is_ascii_graphic())
}

fn parse_check_path(s: &str) -> Result<String, String> {
    if is_check_path(s) {
        Ok(s.to_string())
    } else {
        Err(format!(
            "'{s}' is not an HTTP path ('/' then up to {MAX_CHECK_PATH} printable characters, no spaces)"
        ))
    }
}

fn parse_region_map(s: &str) -> Result<CidrRegion, String> {
    s.parse::<CidrRegion>().map_err(|e| e.to_string())
}

/// edgeproxy: thread-per-core edge proxy hub (TCP forwarding, internal DNS, registration API).
///
/// Every flag can also be set by the environment variable named beside it.
#[derive(Debug, Clone, Parser)]
#[command(name = "edgeproxy", version, about, long_about = None)]
pub struct Args {
    /// Number of shards (pinned executors, one per core). Default: every CPU this process may use.
    #[arg(long, env = "EDGEPROXY_SHARDS")]
    pub shards: Option<usize>,

    /// First CPU to pin shard 0 to; shard N goes to the Nth allowed CPU from there.
    #[arg(long, env = "EDGEPROXY_CPU_OFFSET", default_value_t = 0)]
    pub cpu_offset: usize,

    /// Address of the TCP proxy that serves every app.
    #[arg(long, env = "EDGEPROXY_LISTEN_ADDR", default_value = "0.0.0.0:8080")]
    pub listen_addr: SocketAddr,

    /// Extra TCP listener serving one app: PORT=APP (repeatable; comma-separated in the variable).
    /// It binds the proxy's host address.
    #[arg(long = "route", env = "EDGEPROXY_ROUTES", value_delimiter = ',')]
    pub routes: Vec<Route>,

    /// Send a PROXY protocol v2 header to backends of the TCP proxy, so they learn the real
    /// client address.
    #[arg(long, env = "EDGEPROXY_PROXY_PROTOCOL", default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub proxy_protocol: bool,

    /// Address of the TLS listener (termination, SNI routing).
    #[arg(
        long,
        env = "EDGEPROXY_TLS_LISTEN_ADDR",
        default_value = "0.0.0.0:8443"
    )]
    pub tls_listen_addr: SocketAddr,

    /// Serve TLS.
    #[arg(long, env = "EDGEPROXY_TLS_ENABLED", default_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub tls_enabled: bool,

    /// PEM certificate chain (leaf first); the default certificate. With EDGEPROXY_TLS_KEY.
    #[arg(long, env = "EDGEPROXY_TLS_CERT")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// PEM private key of EDGEPROXY_TLS_CERT (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "EDGEPROXY_TLS_KEY")]
    pub tls_key: Option<std::path::PathBuf>,

    /// Directory of certificates chosen by SNI: each *.pem/*.crt holds a chain and its key (or
    /// the key is beside it as <stem>.key); names are the subjectAltName DNS names.
    #[arg(long, env = "EDGEPROXY_TLS_CERT_DIR")]
    pub tls_cert_dir: Option<std::path::PathBuf>,

    /// SNI name → app: NAME=APP[:passthrough][:proxy-v2] (repeatable; comma-separated in the
    /// variable). Without a route, `<app>.<zone>` names select their app.
    #[arg(
        long = "tls-route",
        env = "EDGEPROXY_TLS_ROUTES",
        value_delimiter = ','
    )]
    pub tls_routes: Vec<TlsRoute>,

    /// App for TLS names that map to no app (and for clients without SNI). Unset: such names
    /// get an unrecognized_name alert, and clients without SNI may reach every app.
    #[arg(long, env = "EDGEPROXY_TLS_DEFAULT_APP")]
    pub tls_default_app: Option<String>,

    /// Extra TLS listener that never terminates: routes on the ClientHello's SNI and forwards
    /// the TLS bytes untouched (repeatable; comma-separated in the variable).
    #[arg(
        long = "tls-passthrough",
        env = "EDGEPROXY_TLS_PASSTHROUGH",
        value_delimiter = ','
    )]
    pub tls_passthrough: Vec<u16>,

    /// ALPN protocols that may be offered, in order of preference (comma-separated, at most 8);
    /// each connection is offered those that an eligible backend of its app speaks.
    #[arg(
        long,
        env = "EDGEPROXY_TLS_ALPN",
        value_delimiter = ',',
        default_value = "h2,http/1.1"
    )]
    pub tls_alpn: Vec<String>,

    /// Milliseconds a client has from connecting to finishing its TLS handshake.
    #[arg(long, env = "EDGEPROXY_TLS_HANDSHAKE_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub tls_handshake_timeout_ms: u64,

    /// Most TLS handshakes in progress at once, per shard; a client beyond it is closed at once
    /// (counted in edgeproxy_tls_handshakes_refused_total), not queued.
    #[arg(long, env = "EDGEPROXY_TLS_MAX_HANDSHAKES", default_value_t = 1024)]
    pub tls_max_handshakes: usize,

    /// TLS sessions remembered per shard for resumption by session id (tickets need none).
    #[arg(long, env = "EDGEPROXY_TLS_SESSION_CACHE", default_value_t = 4096)]
    pub tls_session_cache: usize,

    /// Send a PROXY protocol v2 header to every TLS backend (else per --tls-route).
    #[arg(long, env = "EDGEPROXY_TLS_PROXY_PROTOCOL", default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub tls_proxy_protocol: bool,

    /// Address of the registration API (plain HTTP/1.1).
    #[arg(
        long,
        env = "EDGEPROXY_API_LISTEN_ADDR",
        default_value = "0.0.0.0:8081"
    )]
    pub api_listen_addr: SocketAddr,

    /// Serve the registration API.
    #[arg(long, env = "EDGEPROXY_API_ENABLED", default_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub api_enabled: bool,

    /// Address of the DNS server (UDP and TCP on the same port).
    #[arg(
        long,
        env = "EDGEPROXY_DNS_LISTEN_ADDR",
        default_value = "0.0.0.0:5353"
    )]
    pub dns_listen_addr: SocketAddr,

    /// Serve DNS.
    #[arg(long, env = "EDGEPROXY_DNS_ENABLED", default_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub dns_enabled: bool,

    /// The DNS zone this hub is authoritative for: `<app>.<zone>`.
    #[arg(long, env = "EDGEPROXY_DNS_DOMAIN", default_value = "internal", value_parser = parse_zone)]
    pub dns_domain: String,

    /// TTL in seconds of DNS answers (short: answers follow backends coming and going).
    #[arg(long, env = "EDGEPROXY_DNS_TTL_SECS", default_value_t = DEFAULT_DNS_TTL_SECS)]
    pub dns_ttl_secs: u32,

    /// Largest UDP DNS response this hub sends, whatever EDNS0 size the client offers.
    #[arg(long, env = "EDGEPROXY_DNS_MAX_UDP_SIZE", default_value_t = 1232, value_parser = clap::value_parser!(u16).range(512..))]
    pub dns_max_udp_size: u16,

    /// Honour EDNS Client Subnet (RFC 7871) in DNS queries: the subnet a resolver forwards
    /// stands for the client (region, stickiness). The overlay's resolvers are trusted.
    #[arg(long, env = "EDGEPROXY_DNS_ECS", default_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub dns_ecs: bool,

    /// This hub's address on the overlay, answered for `<region>.pops.<zone>` when `<region>`
    /// is --region. Unset: the address a DNS query arrived on, when the listener knows it.
    #[arg(long, env = "EDGEPROXY_DNS_POP_ADDR")]
    pub dns_pop_addr: Option<IpAddr>,

    /// The hub's own region: second choice after the client's region.
    #[arg(long, env = "EDGEPROXY_REGION", default_value = "sa", value_parser = crate::geo::region_code)]
    pub region: String,

    /// Client subnet → region table: CIDR=REGION[:CC] (repeatable; comma-separated in the
    /// variable); REGION may be a POP code (gru, iad…). Default: the overlay plan 10.50.0.0/24=hub,
    /// 10.50.1.0/24=sa, 10.50.2.0/24=us, 10.50.3.0/24=eu, 10.50.4.0/24=ap.
    #[arg(long = "region-map", env = "EDGEPROXY_REGION_MAP", value_delimiter = ',', value_parser = parse_region_map)]
    pub region_map: Vec<CidrRegion>,

    /// A file of region map entries (CIDR=REGION[:CC], one per line, # comments), read at
    /// startup; with --region-map, both are used.
    #[arg(long, env = "EDGEPROXY_REGION_MAP_FILE")]
    pub region_map_file: Option<std::path::PathBuf>,

    /// A MaxMind GeoIP2/GeoLite2 Country (or City) database: the country, and so the region, of
    /// public client addresses the region map does not cover. Read at startup.
    #[arg(long, env = "EDGEPROXY_GEOIP_DB")]
    pub geoip_db: Option<std::path::PathBuf>,

    /// Region distances, A-B=N, added to or overriding the built-in ones (sa-us=120,
    /// sa-eu=190, sa-ap=300, us-eu=80, us-ap=150, eu-ap=200); a region named here becomes a known
    /// region. Clients fall back to other regions nearest first.
    #[arg(long, env = "EDGEPROXY_REGION_DISTANCES", value_delimiter = ',', value_parser = geo::parse_distance)]
    pub region_distances: Vec<(String, String, u32)>,

    /// Finer region codes, CODE=REGION[:CC] (e.g. gru=sa:BR), added to or overriding the
    /// built-in POP codes. Registrations and the region map may use them.
    #[arg(long = "region-alias", env = "EDGEPROXY_REGION_ALIASES", value_delimiter = ',', value_parser = geo::parse_alias)]
    pub region_aliases: Vec<(String, String, Option<geo::Country>)>,

    /// Country → region for GeoIP answers, CC=REGION (e.g. MX=us), overriding the built-in table.
    #[arg(long = "country-region", env = "EDGEPROXY_COUNTRY_REGIONS", value_delimiter = ',', value_parser = geo::parse_country_region)]
    pub country_regions: Vec<(geo::Country, String)>,

    /// Bounded-load factor: a backend whose connections reach this many times its weighted share
    /// of its tier's load is skipped for the next in rank (HAProxy's hash-balance-factor / 100).
    /// 0 = off; otherwise at least 1.
    #[arg(long, env = "EDGEPROXY_BALANCE_FACTOR", default_value_t = crate::select::DEFAULT_BALANCE_FACTOR)]
    pub balance_factor: f64,

    /// Seconds a backend stays live after its last heartbeat (per backend: `ttl_secs`; 0 = forever).
    #[arg(long, env = "EDGEPROXY_HEARTBEAT_TTL_SECS", default_value_t = 60)]
    pub heartbeat_ttl_secs: u64,

    /// Seconds an expired backend is kept (unhealthy) before it is deleted.
    #[arg(long, env = "EDGEPROXY_EXPIRY_GRACE_SECS", default_value_t = 600)]
    pub expiry_grace_secs: u64,

    /// Milliseconds to wait for a backend to accept a connection before trying the next.
    #[arg(long, env = "EDGEPROXY_CONNECT_TIMEOUT_MS", default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..))]
    pub connect_timeout_ms: u64,

    /// Backends tried per client connection before giving up.
    #[arg(long, env = "EDGEPROXY_CONNECT_TRIES", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub connect_tries: u32,

    /// Active health check of every backend that registers none of its own: tcp (a connect),
    /// http (GET --health-check-path, expecting 2xx) or none (only passive ejection).
    #[arg(
        long,
        env = "EDGEPROXY_HEALTH_CHECK",
        value_enum,
        default_value = "tcp"
    )]
    pub health_check: crate::health::CheckKind,

    /// Path the http health check asks for.
    #[arg(long, env = "EDGEPROXY_HEALTH_CHECK_PATH", default_value = "/", value_parser = parse_check_path)]
    pub health_check_path: String,

    /// Milliseconds between two health checks of a backend (each spread by +-10%).
    #[arg(long, env = "EDGEPROXY_HEALTH_CHECK_INTERVAL_MS", default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(CHECK_INTERVAL_MS))]
    pub health_check_interval_ms: u64,

    /// Milliseconds a health check may take (connect, and for http the status line).
    #[arg(long, env = "EDGEPROXY_HEALTH_CHECK_TIMEOUT_MS", default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(CHECK_TIMEOUT_MS))]
    pub health_check_timeout_ms: u64,

    /// Passed checks in a row that bring a down backend back up.
    #[arg(long, env = "EDGEPROXY_HEALTH_CHECK_RISE", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub health_check_rise: u32,

    /// Failed checks in a row that take a backend down.
    #[arg(long, env = "EDGEPROXY_HEALTH_CHECK_FALL", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub health_check_fall: u32,

    /// Most health checks in flight at once (the rest wait their turn).
    #[arg(long, env = "EDGEPROXY_HEALTH_CHECK_CONCURRENCY", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub health_check_concurrency: u64,

    /// Failed proxy connects to a backend within --health-eject-window-ms that eject it
    /// (0: no passive ejection).
    #[arg(long, env = "EDGEPROXY_HEALTH_EJECT_FAILURES", default_value_t = 3)]
    pub health_eject_failures: u32,

    /// Window, in milliseconds, in which those failed connects must happen.
    #[arg(long, env = "EDGEPROXY_HEALTH_EJECT_WINDOW_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub health_eject_window_ms: u64,

    /// Milliseconds a backend is first ejected for; doubled at each further ejection, then
    /// a check probes it back.
    #[arg(long, env = "EDGEPROXY_HEALTH_EJECT_BACKOFF_MS", default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub health_eject_backoff_ms: u64,

    /// Longest ejection, in milliseconds (a backend up this long starts over at the first).
    #[arg(long, env = "EDGEPROXY_HEALTH_EJECT_BACKOFF_MAX_MS", default_value_t = 300_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub health_eject_backoff_max_ms: u64,

    /// Seconds a forwarded connection may stay silent in both directions before it is closed.
    #[arg(long, env = "EDGEPROXY_IDLE_TIMEOUT_SECS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_timeout_secs: u64,

    /// Most forwarded connections open at once, per shard; further clients wait in the backlog.
    #[arg(long, env = "EDGEPROXY_MAX_CONNECTIONS", default_value_t = 100_000)]
    pub max_connections: usize,

    /// Forwarding method (measurements behind the default: docs/splice.md).
    #[arg(long, env = "EDGEPROXY_SPLICE", value_enum, default_value = "auto")]
    pub splice: SpliceMode,

    /// Capacity in bytes of each splice pipe (F_SETPIPE_SZ; the kernel rounds up to pages and
    /// caps unprivileged users at /proc/sys/fs/pipe-max-size). Pipes are held only while bytes
    /// are in flight, so this is per busy direction, not per connection.
    #[arg(long, env = "EDGEPROXY_SPLICE_PIPE_SIZE", default_value_t = 256 * 1024, value_parser = clap::value_parser!(u32).range(4096..=(64 << 20)))]
    pub splice_pipe_size: u32,

    /// TCP congestion control of forwarded connections, both legs: set on the proxy, route and
    /// TLS listeners (accepted clients inherit it) and on every connection to a backend
    /// (TCP_CONGESTION). Unset: the system's (net.ipv4.tcp_congestion_control). Checked at
    /// startup against what the kernel offers this user.
    #[arg(long, env = "EDGEPROXY_TCP_CONGESTION", value_parser = parse_congestion)]
    pub tcp_congestion: Option<String>,

    /// Listen backlog of the TCP listeners.
    #[arg(long, env = "EDGEPROXY_BACKLOG", default_value_t = 4096)]
    pub backlog: i32,

    /// Most API connections open at once; more are answered 503 and closed.
    #[arg(long, env = "EDGEPROXY_API_MAX_CONNECTIONS", default_value_t = 1024)]
    pub api_max_connections: usize,

    /// Milliseconds an API client has to send a whole request (headers and body) once it started.
    #[arg(
        long,
        env = "EDGEPROXY_API_REQUEST_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub api_request_timeout_ms: u64,

    /// Seconds an idle keep-alive API connection is kept open.
    #[arg(long, env = "EDGEPROXY_API_IDLE_TIMEOUT_SECS", default_value_t = 60)]
    pub api_idle_timeout_secs: u64,

    /// Most DNS-over-TCP connections open at once, per shard.
    #[arg(
        long,
        env = "EDGEPROXY_DNS_TCP_MAX_CONNECTIONS",
        default_value_t = 1024
    )]
    pub dns_tcp_max_connections: usize,

    /// Seconds an idle DNS-over-TCP connection is kept open.
    #[arg(
        long,
        env = "EDGEPROXY_DNS_TCP_IDLE_TIMEOUT_SECS",
        default_value_t = 10
    )]
    pub dns_tcp_idle_timeout_secs: u64,

    /// Bearer token(s) the API requires on every change (comma-separated: all are accepted, for
    /// rotation). Unset: the API is open; a warning is logged when it listens beyond loopback.
    #[arg(long, env = "EDGEPROXY_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,

    /// File holding the API token(s), one per line or comma-separated (instead of the variable).
    #[arg(long, env = "EDGEPROXY_API_TOKEN_FILE")]
    pub api_token_file: Option<std::path::PathBuf>,

    /// Require the token on read routes too (all but /health).
    #[arg(long, env = "EDGEPROXY_API_AUTH_READS", default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub api_auth_reads: bool,

    /// Directory where the registry is persisted. Default: systemd's $STATE_DIRECTORY, else
    /// /var/lib/edgeproxy for root, else $XDG_STATE_HOME/edgeproxy (~/.local/state/edgeproxy).
    #[arg(long, env = "EDGEPROXY_STATE_DIR")]
    pub state_dir: Option<std::path::PathBuf>,

    /// Persist the registry (every acknowledged change is on disk first). `false` keeps it in
    /// memory only: a restart forgets every backend.
    #[arg(long, env = "EDGEPROXY_PERSIST", default_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub persist: bool,

    /// Create each shard's main io_uring with IORING_SETUP_COOP_TASKRUN: completions are handled
    /// at the shard's next kernel entry instead of by an interrupt. Cuts CPU per proxied request
    /// by about a third on VMs (docs/perf-proxy.md); off by default until a rare startup stall
    /// seen with it under load is understood.
    #[arg(long, env = "EDGEPROXY_IO_URING_COOP_TASKRUN", default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub io_uring_coop_taskrun: bool,

    /// Take over the listening sockets of the hub running on the same --state-dir, then let it
    /// drain: a restart that refuses no connection and loses no DNS query.
    #[arg(long, env = "EDGEPROXY_TAKEOVER", default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub takeover: bool,

    /// Seconds open connections get to finish after SIGTERM/SIGINT before the process exits.
    #[arg(long, env = "EDGEPROXY_DRAIN_TIMEOUT_SECS", default_value_t = 30)]
    pub drain_timeout_secs: u64,

    /// The environment file this hub was started with (the unit's EnvironmentFile=): SIGHUP
    /// re-reads it, applies the log level live and logs which other settings changed and need a
    /// restart.
    #[arg(long, env = "EDGEPROXY_CONFIG_FILE")]
    pub config_file: Option<std::path::PathBuf>,

    /// Log level filter when RUST_LOG is not set (error, warn, info, debug, trace). DEBUG=1 means debug.
    #[arg(long, env = "EDGEPROXY_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// Join a cluster of hubs: gossip membership on --gossip-addr (udp) and registry sync on
    /// --sync-addr (udp). On by default, even for a hub alone; `false` binds neither.
    #[arg(long, env = "EDGEPROXY_REPLICATION_ENABLED", default_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub replication_enabled: bool,

    /// Address of cluster membership gossip (SWIM, udp).
    #[arg(
        long,
        env = "EDGEPROXY_REPLICATION_GOSSIP_ADDR",
        default_value = "0.0.0.0:4001"
    )]
    pub gossip_addr: SocketAddr,

    /// Address of registry sync between hubs (udp).
    #[arg(
        long,
        env = "EDGEPROXY_REPLICATION_TRANSPORT_ADDR",
        default_value = "0.0.0.0:4002"
    )]
    pub sync_addr: SocketAddr,

    /// Gossip addresses (HOST:PORT, comma-separated) of hubs to join through; retried until one
    /// answers. Host names are resolved off the shards and re-resolved on every retry.
    #[arg(
        long,
        env = "EDGEPROXY_REPLICATION_BOOTSTRAP_PEERS",
        value_delimiter = ','
    )]
    pub bootstrap_peers: Vec<String>,

    /// This hub's node id in the cluster (at most 64 bytes). Default: the host name.
    #[arg(long, env = "EDGEPROXY_REPLICATION_NODE_ID")]
    pub node_id: Option<String>,

    /// Cluster name: hubs of another cluster are ignored (it is authenticated in every datagram).
    #[arg(
        long,
        env = "EDGEPROXY_REPLICATION_CLUSTER_NAME",
        default_value = "edgeproxy"
    )]
    pub cluster_name: String,

    /// IP address other hubs reach this one at (gossip and sync ports are the bound ones).
    /// Default: the gossip address when it is not 0.0.0.0/::, else the local address of the
    /// route to the first bootstrap peer, else of the default route, else the first
    /// non-loopback interface address.
    #[arg(long, env = "EDGEPROXY_ADVERTISE_ADDR")]
    pub advertise_addr: Option<std::net::IpAddr>,

    /// Cluster key(s): base64 of 32 random bytes (`openssl rand -base64 32`), comma-separated
    /// for rotation (the first seals, all open). Unset: datagrams are not authenticated (warned).
    #[arg(long, env = "EDGEPROXY_CLUSTER_KEY", hide_env_values = true)]
    pub cluster_key: Option<String>,

    /// Gossip timings: lan (probe every 1 s) or wan (probe every 5 s, longer suspicion).
    #[arg(
        long,
        env = "EDGEPROXY_GOSSIP_PROFILE",
        value_enum,
        default_value = "lan"
    )]
    pub gossip_profile: GossipProfile,

    /// Milliseconds between probes of a random member (overrides the profile).
    #[arg(long, env = "EDGEPROXY_GOSSIP_PROBE_INTERVAL_MS", value_parser = clap::value_parser!(u64).range(10..))]
    pub gossip_probe_interval_ms: Option<u64>,

    /// Milliseconds a suspected member has to refute before it is declared down (overrides the
    /// profile).
    #[arg(long, env = "EDGEPROXY_GOSSIP_SUSPECT_TIMEOUT_MS", value_parser = clap::value_parser!(u64).range(10..))]
    pub gossip_suspect_timeout_ms: Option<u64>,

    /// Milliseconds between anti-entropy rounds of registry sync (each compares this hub's
    /// registry with one random peer's: a 19-byte datagram when they agree).
    #[arg(
        long,
        env = "EDGEPROXY_SYNC_ANTI_ENTROPY_MS",
        default_value_t = crate::cluster::DEFAULT_ANTI_ENTROPY_MS,
        value_parser = clap::value_parser!(u64).range(10..=600_000)
    )]
    pub sync_anti_entropy_ms: u64,

    /// Seconds a deletion (tombstone) is remembered by registry sync. A hub away longer than
    /// this may bring deleted backends back, so it must be longer than any outage or partition
    /// after which a hub rejoins with its old state; and at least --heartbeat-ttl-secs plus
    /// --expiry-grace-secs, so that such a backend is then expired and swept at once.
    #[arg(
        long,
        env = "EDGEPROXY_SYNC_TOMBSTONE_HORIZON_SECS",
        default_value_t = 86_400
    )]
    pub sync_tombstone_horizon_secs: u64,

    // --- edgeProxy v0.4 names of settings that exist under a new name (hidden from --help).
    /// v0.4's gossip ping interval: the probe interval unless --gossip-probe-interval-ms is set.
    #[arg(long, env = "EDGEPROXY_REPLICATION_GOSSIP_INTERVAL_MS", hide = true, value_parser = clap::value_parser!(u64).range(10..))]
    pub legacy_gossip_interval_ms: Option<u64>,

    /// v0.4's sync flush interval: the anti-entropy interval unless --sync-anti-entropy-ms
    /// moves it from its default.
    #[arg(long, env = "EDGEPROXY_REPLICATION_SYNC_INTERVAL_MS", hide = true, value_parser = clap::value_parser!(u64).range(10..=600_000))]
    pub legacy_sync_interval_ms: Option<u64>,

    // --- edgeProxy v0.4 settings that no longer apply; accepted so old environments still work.
    #[arg(long, env = "EDGEPROXY_DB_PATH", hide = true)]
    pub legacy_db_path: Option<String>,
    #[arg(long, env = "EDGEPROXY_DB_RELOAD_SECS", hide = true)]
    pub legacy_db_reload_secs: Option<String>,
    #[arg(long, env = "EDGEPROXY_BINDING_TTL_SECS", hide = true)]
    pub legacy_binding_ttl_secs: Option<String>,
    #[arg(long, env = "EDGEPROXY_BINDING_GC_INTERVAL_SECS", hide = true)]
    pub legacy_binding_gc_interval_secs: Option<String>,
}

/// `--tcp-congestion`: a kernel congestion control name (TCP_CA_NAME_MAX is 16 with the NUL).
fn parse_congestion(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 15 {
        return Err(
            "a congestion control name is 1 to 15 characters (e.g. cubic, bbr, reno)".into(),
        );
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(format!(
            "{s:?} is not a congestion control name (letters, digits, '_' or '-'; e.g. cubic, bbr)"
        ));
    }
    Ok(s.to_string())
}

/// A configuration error: one line for the operator, exit code 2.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The validated configuration every part of the hub reads.
#[derive(Debug, Clone)]
pub struct Config {
    pub shards: usize,
    /// The CPUs shard 0..shards are pinned to.
    pub cpus: Vec<usize>,
    pub listen_addr: SocketAddr,
    pub routes: Vec<Route>,
    /// PROXY v2 header toward TCP proxy backends.
    pub proxy_protocol: bool,
    pub tls: TlsConfig,
    pub api_listen_addr: Option<SocketAddr>,
    pub dns_listen_addr: Option<SocketAddr>,
    pub dns_zone: String,
    pub dns_ttl_secs: u32,
    pub dns_max_udp_size: u16,
    pub dns_ecs: bool,
    pub dns_pop_addr: Option<IpAddr>,
    /// The hub's region (resolved: `--region gru` is `sa`).
    pub region: String,
    /// The CIDR table (resolved), also inside `geo`.
    pub region_map: RegionMap,
    /// Client geography: CIDR table, region vocabulary, GeoIP database.
    pub geo: Arc<Geo>,
    /// `--balance-factor` (0 = off).
    pub balance_factor: f64,
    pub heartbeat_ttl_secs: u64,
    pub expiry_grace_secs: u64,
    pub connect_timeout: Duration,
    pub connect_tries: u32,
    /// The hub's health check (a backend's own `check` overrides it field by field).
    pub health_check: crate::health::Check,
    pub health_check_concurrency: usize,
    /// Passive ejection.
    pub health_ejection: crate::health::Ejection,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub splice: SpliceMode,
    pub splice_pipe_size: usize,
    /// `--tcp-congestion`: the algorithm's name, or `None` for the system's.
    pub tcp_congestion: Option<String>,
    pub backlog: i32,
    pub api_max_connections: usize,
    pub api_request_timeout: Duration,
    pub api_idle_timeout: Duration,
    pub dns_tcp_max_connections: usize,
    pub dns_tcp_idle_timeout: Duration,
    /// Take over the sockets of the hub running on the same state directory.
    pub takeover: bool,
    /// IORING_SETUP_COOP_TASKRUN on each shard's main ring.
    pub io_uring_coop_taskrun: bool,
    /// How long open connections get to finish on shutdown.
    pub drain_timeout: Duration,
    /// API bearer tokens and what they protect.
    pub api_auth: crate::api::auth::Auth,
    /// Where the registry is persisted; `None` = in memory only.
    pub state_dir: Option<std::path::PathBuf>,
    /// Cluster membership and sync; `None` when replication is off.
    pub cluster: Option<crate::cluster::ClusterConfig>,
    /// Settings that were given but no longer apply (warned about at startup).
    pub ignored: Vec<&'static str>,
}

/// Where the registry lives when `--state-dir` is not given.
pub fn default_state_dir() -> std::path::PathBuf {
    use std::path::PathBuf;
    if let Ok(dirs) = std::env::var("STATE_DIRECTORY") {
        if let Some(first) = dirs.split(':').find(|d| !d.is_empty()) {
            return PathBuf::from(first);
        }
    }
    if crate::sys::is_root() {
        return PathBuf::from("/var/lib/edgeproxy");
    }
    if let Ok(xdg) = std::env::var("XDG_STATE_HOME") {
        if !xdg.is_empty() {
            return PathBuf::from(xdg).join("edgeproxy");
        }
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| ".".into());
    PathBuf::from(home).join(".local/state/edgeproxy")
}

/// The CPUs this process may run on, in order.
pub fn allowed_cpus() -> Vec<usize> {
    crate::sys::allowed_cpus()
}

impl Config {
    /// Validates parsed arguments against the CPUs this process may use.
    pub fn from_args(args: Args, allowed: &[usize]) -> Result<Config, ConfigError> {
        if allowed.is_empty() {
            return Err(ConfigError("no CPU is available to this process".into()));
        }
        let shards = args
            .shards
            .unwrap_or(allowed.len().saturating_sub(args.cpu_offset).max(1));
        if shards == 0 {
            return Err(ConfigError("--shards must be at least 1".into()));
        }
        if shards > 1024 {
            return Err(ConfigError(format!("--shards {shards} is more than 1024")));
        }
        // More shards than CPUs is allowed (tests, containers) but shards then share cores.
        let cpus = (0..shards)
            .map(|i| allowed[(args.cpu_offset + i) % allowed.len()])
            .collect();
        let mut seen_ports = std::collections::BTreeSet::new();
        for r in &args.routes {
            if r.port != 0 && !seen_ports.insert(r.port) {
                return Err(ConfigError(format!("--route: port {} given twice", r.port)));
            }
            if r.port == args.listen_addr.port() && args.listen_addr.port() != 0 {
                return Err(ConfigError(format!(
                    "--route: port {} is already the proxy's listen port",
                    r.port
                )));
            }
        }
        if args.dns_ttl_secs > 86_400 {
            return Err(ConfigError("--dns-ttl-secs must be at most 86400".into()));
        }
        if args.backlog < 1 {
            return Err(ConfigError("--backlog must be at least 1".into()));
        }
        if args.api_max_connections == 0
            || args.max_connections == 0
            || args.dns_tcp_max_connections == 0
        {
            return Err(ConfigError("connection limits must be at least 1".into()));
        }
        if args.replication_enabled
            && args.heartbeat_ttl_secs > 0
            && args.sync_tombstone_horizon_secs
                < args
                    .heartbeat_ttl_secs
                    .saturating_add(args.expiry_grace_secs)
        {
            return Err(ConfigError(format!(
                "--sync-tombstone-horizon-secs ({}) must be at least --heartbeat-ttl-secs plus --expiry-grace-secs ({}): a hub back from a longer absence could otherwise serve deleted backends again",
                args.sync_tombstone_horizon_secs,
                args.heartbeat_ttl_secs.saturating_add(args.expiry_grace_secs)
            )));
        }
        let cluster = if args.replication_enabled {
            Some(crate::cluster::ClusterConfig::from_args(&args).map_err(ConfigError)?)
        } else {
            None
        };
        let mut map_entries = Vec::new();
        if let Some(path) = &args.region_map_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError(format!(
                    "cannot read --region-map-file {}: {e}",
                    path.display()
                ))
            })?;
            map_entries = RegionMap::parse_file(&text, &path.display().to_string())
                .map_err(|e| ConfigError(e.0))?;
        }
        map_entries.extend(args.region_map);
        let region_map = if map_entries.is_empty() {
            RegionMap::overlay_default()
        } else {
            RegionMap::new(map_entries)
        };
        let regions = geo::Regions::configure(
            &args.region_distances,
            &args.region_aliases,
            &args.country_regions,
        )
        .map_err(ConfigError)?;
        let hub_region = regions
            .resolve(&args.region)
            .map_err(|e| ConfigError(format!("--region: {e}")))?
            .0
            .to_string();
        let geoip = match &args.geoip_db {
            Some(path) => Some(geo::GeoIp::open(path).map_err(ConfigError)?),
            None => None,
        };
        let geo = Arc::new(Geo::new(region_map, regions, geoip).map_err(|e| ConfigError(e.0))?);
        let region_map = geo.region_map().clone();
        let balance_factor = args.balance_factor;
        if !(balance_factor == 0.0 || (1.0..=100.0).contains(&balance_factor)) {
            return Err(ConfigError(format!(
                "--balance-factor {balance_factor}: must be 0 (off) or from 1 to 100 (e.g. 1.25)"
            )));
        }
        let mut tokens = args.api_token.clone().unwrap_or_default();
        if let Some(path) = &args.api_token_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError(format!(
                    "cannot read --api-token-file {}: {e}",
                    path.display()
                ))
            })?;
            for line in text.lines() {
                tokens.push(',');
                tokens.push_str(line);
            }
        }
        let api_auth = crate::api::auth::Auth::new(&tokens, args.api_auth_reads);
        if (args.api_token.is_some() || args.api_token_file.is_some()) && !api_auth.enabled() {
            return Err(ConfigError("the API token is empty".into()));
        }
        if args.tls_max_handshakes == 0 {
            return Err(ConfigError(
                "--tls-max-handshakes must be at least 1".into(),
            ));
        }
        let tls_default_app = match args.tls_default_app {
            Some(app) => {
                let app = app.trim().to_ascii_lowercase();
                if !crate::names::is_dns_name(&app) {
                    return Err(ConfigError(format!(
                        "--tls-default-app '{app}' is not an app name"
                    )));
                }
                Some(app)
            }
            None => None,
        };
        let tls_alpn: Vec<String> = args
            .tls_alpn
            .iter()
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .collect();
        if tls_alpn.iter().any(|p| p.len() > 255) {
            return Err(ConfigError(
                "--tls-alpn: a protocol name is longer than 255 bytes".into(),
            ));
        }
        if tls_alpn.len() > crate::tls::MAX_ALPN {
            return Err(ConfigError(format!(
                "--tls-alpn: at most {} protocols",
                crate::tls::MAX_ALPN
            )));
        }
        let tls = TlsConfig {
            listen_addr: args.tls_enabled.then_some(args.tls_listen_addr),
            passthrough_ports: args.tls_passthrough,
            sources: crate::tls::certs::CertSources {
                cert: args.tls_cert,
                key: args.tls_key,
                dir: args.tls_cert_dir,
                zone: args.dns_domain.clone(),
            },
            routes: args.tls_routes,
            default_app: tls_default_app,
            alpn: tls_alpn,
            handshake_timeout: Duration::from_millis(args.tls_handshake_timeout_ms),
            max_handshakes: args.tls_max_handshakes,
            session_cache: args.tls_session_cache,
            proxy_protocol: args.tls_proxy_protocol,
        };
        let mut ignored = Vec::new();
        if args.legacy_db_path.is_some() {
            ignored.push("EDGEPROXY_DB_PATH");
        }
        if args.legacy_db_reload_secs.is_some() {
            ignored.push("EDGEPROXY_DB_RELOAD_SECS");
        }
        if args.legacy_binding_ttl_secs.is_some() {
            ignored.push("EDGEPROXY_BINDING_TTL_SECS");
        }
        if args.legacy_binding_gc_interval_secs.is_some() {
            ignored.push("EDGEPROXY_BINDING_GC_INTERVAL_SECS");
        }
        Ok(Config {
            shards,
            cpus,
            listen_addr: args.listen_addr,
            routes: args.routes,
            proxy_protocol: args.proxy_protocol,
            tls,
            api_listen_addr: args.api_enabled.then_some(args.api_listen_addr),
            dns_listen_addr: args.dns_enabled.then_some(args.dns_listen_addr),
            dns_zone: args.dns_domain,
            dns_ttl_secs: args.dns_ttl_secs,
            dns_max_udp_size: args.dns_max_udp_size,
            dns_ecs: args.dns_ecs,
            dns_pop_addr: args.dns_pop_addr,
            region: hub_region,
            region_map,
            geo,
            balance_factor,
            heartbeat_ttl_secs: args.heartbeat_ttl_secs,
            expiry_grace_secs: args.expiry_grace_secs,
            connect_timeout: Duration::from_millis(args.connect_timeout_ms),
            connect_tries: args.connect_tries,
            health_check: crate::health::Check {
                kind: args.health_check,
                path: args.health_check_path,
                interval_ms: args.health_check_interval_ms,
                timeout_ms: args.health_check_timeout_ms,
                rise: args.health_check_rise,
                fall: args.health_check_fall,
            },
            health_check_concurrency: args.health_check_concurrency as usize,
            health_ejection: crate::health::Ejection {
                failures: args.health_eject_failures,
                window_ms: args.health_eject_window_ms,
                backoff_ms: args.health_eject_backoff_ms,
                backoff_max_ms: args.health_eject_backoff_max_ms,
            },
            idle_timeout: Duration::from_secs(args.idle_timeout_secs),
            max_connections: args.max_connections,
            splice: args.splice,
            splice_pipe_size: args.splice_pipe_size as usize,
            tcp_congestion: args.tcp_congestion,
            backlog: args.backlog,
            api_max_connections: args.api_max_connections,
            api_request_timeout: Duration::from_millis(args.api_request_timeout_ms.max(1)),
            api_idle_timeout: Duration::from_secs(args.api_idle_timeout_secs.max(1)),
            dns_tcp_max_connections: args.dns_tcp_max_connections,
            dns_tcp_idle_timeout: Duration::from_secs(args.dns_tcp_idle_timeout_secs.max(1)),
            api_auth,
            drain_timeout: Duration::from_secs(args.drain_timeout_secs),
            takeover: args.takeover,
            io_uring_coop_taskrun: args.io_uring_coop_taskrun,
            state_dir: match (args.persist, args.state_dir) {
                (false, _) => None,
                (true, Some(dir)) => Some(dir),
                (true, None) => Some(default_state_dir()),
            },
            cluster,
            ignored,
        })
    }

    /// A configuration for tests and benchmarks: every listener on 127.0.0.1 port 0.
    pub fn for_tests(shards: usize) -> Config {
        let args = Args::parse_from([
            "edgeproxy",
            "--listen-addr=127.0.0.1:0",
            "--api-listen-addr=127.0.0.1:0",
            "--dns-listen-addr=127.0.0.1:0",
            "--tls-listen-addr=127.0.0.1:0",
            "--gossip-addr=127.0.0.1:0",
            "--sync-addr=127.0.0.1:0",
            "--persist=false",
        ]);
        let allowed = allowed_cpus();
        let mut cfg = Config::from_args(args, &allowed).expect("test config is valid");
        cfg.shards = shards;
        cfg.cpus = (0..shards).map(|i| allowed[i % allowed.len()]).collect();
        cfg
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn congestion_names_are_checked_for_shape() {
        assert_eq!(super::parse_congestion("bbr").unwrap(), "bbr");
        assert_eq!(super::parse_congestion("dctcp").unwrap(), "dctcp");
        for bad in ["", "a b", "cubic;rm", "x".repeat(16).as_str()] {
            assert!(super::parse_congestion(bad).is_err(), "{bad:?}");
        }
    }

    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let mut full = vec!["edgeproxy"];
        full.extend_from_slice(args);
        let args = Args::try_parse_from(full).map_err(|e| e.to_string())?;
        Config::from_args(args, &[0, 1]).map_err(|e| e.0)
    }

    #[test]
    fn defaults_match_the_seed() {
        let cfg = parse(&[]).unwrap();
        assert_eq!(cfg.listen_addr.port(), 8080);
        assert_eq!(cfg.api_listen_addr.unwrap().port(), 8081);
        assert_eq!(cfg.dns_listen_addr.unwrap().port(), 5353);
        assert_eq!(cfg.dns_zone, "internal");
        assert_eq!(cfg.dns_ttl_secs, DEFAULT_DNS_TTL_SECS);
        assert_eq!(cfg.shards, 2);
        assert_eq!(cfg.cpus, vec![0, 1]);
        assert_eq!(cfg.heartbeat_ttl_secs, 60);
        let h = &cfg.health_check;
        assert_eq!(h.kind, crate::health::CheckKind::Tcp);
        assert_eq!(
            (h.interval_ms, h.timeout_ms, h.rise, h.fall),
            (5_000, 2_000, 2, 3)
        );
        assert_eq!(cfg.health_ejection.failures, 3);
    }

    #[test]
    fn health_flags() {
        let cfg = parse(&[
            "--health-check=http",
            "--health-check-path=/healthz",
            "--health-check-interval-ms=250",
            "--health-eject-failures=0",
        ])
        .unwrap();
        assert_eq!(cfg.health_check.kind, crate::health::CheckKind::Http);
        assert_eq!(cfg.health_check.path, "/healthz");
        assert_eq!(cfg.health_check.interval_ms, 250);
        assert_eq!(cfg.health_ejection.failures, 0);
        assert!(parse(&["--health-check=icmp"]).is_err());
        assert!(parse(&["--health-check-path=healthz"]).is_err());
        assert!(parse(&["--health-check-path=/a b"]).is_err());
        assert!(parse(&["--health-check-interval-ms=10"]).is_err());
        assert!(parse(&["--health-check-timeout-ms=0"]).is_err());
        assert!(parse(&["--health-check-rise=0"]).is_err());
        assert!(parse(&["--health-check-fall=101"]).is_err());
    }

    #[test]
    fn routes_and_validation() {
        let cfg = parse(&["--route", "9000=Gru.Pop", "--route=9001=iad.pop"]).unwrap();
        assert_eq!(
            cfg.routes[0],
            Route {
                port: 9000,
                app: "gru.pop".into()
            }
        );
        assert!(parse(&["--route", "9000"]).is_err());
        assert!(parse(&["--route", "x=a"]).is_err());
        assert!(parse(&["--route", "9000=a_b"]).is_err());
        assert!(parse(&["--route", "9000=a", "--route", "9000=b"]).is_err());
        assert!(parse(&["--route", "8080=a"]).is_err());
        assert!(parse(&["--region", "s"]).is_err());
        assert!(parse(&["--region", "mars"])
            .unwrap_err()
            .contains("unknown region 'mars'"));
        assert_eq!(parse(&["--region", "GRU"]).unwrap().region, "sa");
        assert!(parse(&["--region-map", "10.0.0.0/8=mars"]).is_err());
        assert!(parse(&["--region-map", "10.0.0.0/8=ue"])
            .unwrap_err()
            .contains("unknown region 'ue'"));
        assert!(parse(&["--balance-factor", "0.5"]).is_err());
        assert!(parse(&["--balance-factor", "NaN"]).is_err());
        assert_eq!(
            parse(&["--balance-factor", "0"]).unwrap().balance_factor,
            0.0
        );
        let cfg = parse(&[
            "--region-distances",
            "us-af=90",
            "--region=af",
            "--region-map=10.9.0.0/16=af,10.8.0.0/16=fra",
        ])
        .unwrap();
        assert_eq!(cfg.region, "af");
        let loc = cfg.geo.locate("10.8.1.1".parse().unwrap());
        assert_eq!(
            (loc.region, loc.country.map(|c| c.to_string())),
            (Some("eu"), Some("DE".into()))
        );
        assert!(parse(&["--geoip-db", "/nonexistent/geo.mmdb"])
            .unwrap_err()
            .contains("cannot read --geoip-db /nonexistent/geo.mmdb"));
        assert!(parse(&["--region-map-file", "/nonexistent/map"])
            .unwrap_err()
            .contains("--region-map-file"));
        assert!(parse(&["--dns-domain", "bad domain"]).is_err());
        assert!(parse(&["--shards", "0"]).is_err());
        assert!(parse(&["--api-enabled", "maybe"]).is_err());
        assert!(parse(&["--dns-max-udp-size", "100"]).is_err());
        assert_eq!(
            parse(&["--dns-domain", "Corp.Internal."]).unwrap().dns_zone,
            "corp.internal"
        );
        assert!(parse(&["--dns-enabled", "false"])
            .unwrap()
            .dns_listen_addr
            .is_none());
    }
}
