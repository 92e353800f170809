//! The API's routes: a request in, a response out, against the registry. Pure apart from the
//! registry it is handed: the server publishes the snapshot after mutations, before answering.

use super::http::{Method, Request};
use super::validate;
use crate::metrics::{Histogram, Metrics, Text};
use crate::registry::{Backend, Registered, Registry};
use serde_json::{json, Value};
use std::sync::atomic::Ordering;

/// What the server needs to know besides the registry.
pub struct Env<'a> {
    pub now_ms: u64,
    pub uptime_secs: u64,
    pub shards: usize,
    /// `fdatasync` calls of the registry store so far (`None`: persistence off).
    pub store_syncs: Option<u64>,
    /// API counters, when served by the API shard.
    pub api: Option<&'a ApiStats>,
    /// Every shard's data-plane counters.
    pub data_plane: Option<&'a Metrics>,
    /// Health-check counters.
    pub health: Option<&'a crate::health::check::Stats>,
    /// Whether TLS is on (so `/api/v1/tls/reload` exists; its POST is served by the server).
    pub tls: bool,
    /// The hub's region (for `/api/v1/route`).
    pub hub_region: &'a str,
    /// The cluster, when replication is on.
    pub cluster: Option<&'a crate::cluster::ClusterState>,
}

/// The cluster's members and sync status.
pub const CLUSTER: &str = "/api/v1/cluster";

/// `GET /api/v1/cluster`: this hub, every other hub it knows (state alive, suspect, down or
/// left; incarnation; seconds since a datagram from it was last authenticated here) and the
/// registry sync status.
fn cluster(c: Option<&crate::cluster::ClusterState>) -> Response {
    let Some(c) = c else {
        return Response::json(
            200,
            json!({ "enabled": false, "members": [], "sync": null }),
        );
    };
    let now = std::time::Instant::now();
    let me = c.membership.borrow().me().clone();
    let mut members: Vec<Value> = c
        .members()
        .into_iter()
        .map(|m| {
            json!({
                "id": m.node.id,
                "gossip_addr": m.node.gossip.to_string(),
                "sync_addr": m.node.sync.to_string(),
                "state": m.state.as_str(),
                "incarnation": m.incarnation,
                "boot_unix_ms": m.node.boot,
                "last_seen_secs": crate::cluster::membership::age(now, m.last_seen)
                    .map(|d| d.as_secs_f64()),
            })
        })
        .collect();
    members.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    let joined = c.membership.borrow().joined();
    if let Some(rep) = c.replication.get() {
        crate::cluster::sync::refresh_status(c, rep);
    }
    Response::json(
        200,
        json!({
            "enabled": true,
            "cluster": c.cluster_name,
            "authenticated": c.keyed,
            "joined": joined,
            "node": {
                "id": me.id,
                "gossip_addr": me.gossip.to_string(),
                "sync_addr": me.sync.to_string(),
                "boot_unix_ms": me.boot,
                "bump": me.bump,
            },
            "members": members,
            "sync": &*c.sync_status.borrow(),
        }),
    )
}

fn cluster_metrics(t: &mut Text, c: &crate::cluster::ClusterState) {
    use crate::cluster::auth::Drop;
    use crate::cluster::membership::MemberState;
    let ports = [("gossip", &c.gossip), ("sync", &c.sync)];
    t.family(
        "edgeproxy_cluster_datagrams_total",
        "Cluster datagrams, by port and direction (in: received, before any check).",
        "counter",
    );
    for (port, s) in ports {
        t.sample(
            "edgeproxy_cluster_datagrams_total",
            &[("port", port), ("direction", "in")],
            s.datagrams_in.get() as f64,
        );
        t.sample(
            "edgeproxy_cluster_datagrams_total",
            &[("port", port), ("direction", "out")],
            s.datagrams_out.get() as f64,
        );
    }
    t.family(
        "edgeproxy_cluster_bytes_total",
        "Cluster datagram bytes (UDP payload), by port and direction.",
        "counter",
    );
    for (port, s) in ports {
        t.sample(
            "edgeproxy_cluster_bytes_total",
            &[("port", port), ("direction", "in")],
            s.bytes_in.get() as f64,
        );
        t.sample(
            "edgeproxy_cluster_bytes_total",
            &[("port", port), ("direction", "out")],
            s.bytes_out.get() as f64,
        );
    }
    t.family(
        "edgeproxy_cluster_dropped_total",
        "Cluster datagrams dropped, by port and reason (auth: wrong or no key, tampered; replay; wrong_cluster; malformed; own).",
        "counter",
    );
    for (port, s) in ports {
        for d in Drop::ALL {
            t.sample(
                "edgeproxy_cluster_dropped_total",
                &[("port", port), ("reason", d.as_str())],
                s.dropped[d.index()].get() as f64,
            );
        }
    }
    t.family(
        "edgeproxy_cluster_send_errors_total",
        "Cluster datagrams the kernel refused to send, by port.",
        "counter",
    );
    for (port, s) in ports {
        t.sample(
            "edgeproxy_cluster_send_errors_total",
            &[("port", port)],
            s.send_errors.get() as f64,
        );
    }
    t.family(
        "edgeproxy_cluster_members",
        "Other hubs known, by state.",
        "gauge",
    );
    let counts = c.counts();
    for (i, s) in MemberState::ALL.iter().enumerate() {
        t.sample(
            "edgeproxy_cluster_members",
            &[("state", s.as_str())],
            counts[i] as f64,
        );
    }
    if let Some(rep) = c.replication.get() {
        replication_metrics(t, rep);
    }
}

/// Registry replication (`cluster::replicate`) counters.
fn replication_metrics(t: &mut Text, rep: &crate::cluster::sync::Replicating) {
    let hub = rep.hub.borrow();
    let st = hub.replica.status();
    let s = &st.stats;
    // (name, help, type, samples of (label, value, number))
    type Family<'a> = (&'a str, &'a str, &'a str, Vec<(&'a str, &'a str, f64)>);
    let families: [Family; 7] = [
        (
            "edgeproxy_replication_messages_total",
            "Replication messages (before the envelope), by direction.",
            "counter",
            vec![
                ("direction", "out", s.sent as f64),
                ("direction", "in", s.received as f64),
            ],
        ),
        (
            "edgeproxy_replication_dropped_total",
            "Replication messages or records dropped, by reason (malformed; queue_full: send queue over its bound, anti-entropy repairs; spoofed: header and envelope name different nodes; undecodable: a record this hub cannot read).",
            "counter",
            vec![
                ("reason", "malformed", s.malformed as f64),
                ("reason", "queue_full", s.queue_drops as f64),
                ("reason", "spoofed", hub.stats.spoofed as f64),
                ("reason", "undecodable", hub.stats.undecodable as f64),
            ],
        ),
        (
            "edgeproxy_replication_merges_total",
            "Remote records merged, by result (applied: newer than ours; stale: older than ours; conflict: replaced a different node's write; skewed_clock: from a clock beyond the tolerance, merged anyway).",
            "counter",
            vec![
                ("result", "applied", s.applied as f64),
                ("result", "stale", s.stale as f64),
                ("result", "conflict", s.conflicts as f64),
                ("result", "skewed_clock", s.skewed as f64),
            ],
        ),
        (
            "edgeproxy_replication_anti_entropy_total",
            "Anti-entropy rounds started here, and rounds (started by either side) that found a difference.",
            "counter",
            vec![
                ("result", "started", s.anti_entropy_rounds as f64),
                ("result", "repaired", s.repairs as f64),
            ],
        ),
        (
            "edgeproxy_replication_entries",
            "Replicated entries held, by kind.",
            "gauge",
            vec![
                ("kind", "backend", st.entries as f64),
                ("kind", "tombstone", st.tombstones as f64),
            ],
        ),
        (
            "edgeproxy_replication_pending",
            "Replication datagrams waiting to be sent.",
            "gauge",
            vec![("queue", "send", st.queued as f64)],
        ),
        (
            "edgeproxy_replication_remote_changes_total",
            "Remote changes applied to the registry, and the publishes made for them.",
            "counter",
            vec![
                ("what", "changes", rep.remote_changes.get() as f64),
                ("what", "publishes", rep.publishes.get() as f64),
            ],
        ),
    ];
    for (name, help, kind, samples) in families {
        t.family(name, help, kind);
        for (label, value, v) in samples {
            t.sample(name, &[(label, value)], v);
        }
    }
}

/// Reloads the TLS certificates: answered by [`crate::api`] itself, since it waits.
pub const TLS_RELOAD: &str = "/api/v1/tls/reload";

/// A response to write.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
    pub content_type: &'static str,
    /// `Allow` header, on 405.
    pub allow: Option<&'static str>,
    /// Whether to send `WWW-Authenticate: Bearer` (on 401).
    pub www_authenticate: bool,
}

impl Response {
    pub fn json(status: u16, value: Value) -> Response {
        Response {
            status,
            body: serde_json::to_vec(&value).unwrap_or_default(),
            content_type: "application/json",
            allow: None,
            www_authenticate: false,
        }
    }

    /// An error answer: `{"error": message, "field": field}`.
    pub fn error(status: u16, message: &str, field: Option<&str>) -> Response {
        Response::json(status, json!({ "error": message, "field": field }))
    }

    fn not_allowed(method: &str, allow: &'static str) -> Response {
        let mut r = Response::error(
            405,
            &format!("method {method} is not allowed here (allowed: {allow})"),
            None,
        );
        r.allow = Some(allow);
        r
    }
}

/// The JSON view of a backend: every stored field, plus its live state.
pub fn backend_json(b: &Backend, now_ms: u64) -> Value {
    let last_heartbeat_unix_ms = b.live.last_heartbeat_unix_ms.load(Ordering::Relaxed);
    let now_unix = crate::clock::unix_ms();
    json!({
        "id": b.id,
        "app": b.app,
        "region": b.region,
        "country": b.country,
        "ip": b.ip.to_string(),
        "port": b.port,
        "weight": b.weight,
        "soft_limit": b.soft_limit,
        "hard_limit": b.hard_limit,
        "ttl_secs": b.ttl_secs,
        "alpn": b.alpn,
        "check": b.check,
        "healthy": b.healthy(now_ms),
        "health": health_json(b),
        "draining": b.live.draining.load(Ordering::Relaxed),
        "connections": b.connections(),
        "registered_at": b.registered_unix_ms / 1000,
        "registered_secs": now_unix.saturating_sub(b.registered_unix_ms) / 1000,
        "last_heartbeat_secs": now_unix.saturating_sub(last_heartbeat_unix_ms) / 1000,
    })
}

/// The health part of a backend's JSON view.
pub fn health_json(b: &Backend) -> Value {
    let live = &b.live;
    let state = live.health();
    let kind = live.check_kind();
    json!({
        "state": state.as_str(),
        "reason": live.health_why().describe(kind.as_str()),
        "since_unix_ms": live.health_since_unix_ms(),
        "check": kind.as_str(),
        "consecutive_check_failures": live.check_failures.load(Ordering::Relaxed),
        "connect_failures": live.connect_failures(),
        "consecutive_connect_failures": live.failure_streak(),
        "last_connect_failure_unix_ms": live.last_connect_failure_unix_ms(),
        "ejections": live.ejections.load(Ordering::Relaxed),
    })
}

fn is_json(content_type: &str) -> bool {
    let mime = content_type.split(';').next().unwrap_or("").trim();
    mime.eq_ignore_ascii_case("application/json")
        || (mime.len() > 5
            && mime[..mime.len() - 5].contains('/')
            && mime[mime.len() - 5..].eq_ignore_ascii_case("+json"))
}

fn register(req: &Request<'_>, reg: &mut Registry, env: &Env<'_>) -> Response {
    if !req.has_length {
        return Response::error(411, "a registration needs a Content-Length body", None);
    }
    if let Some(ct) = req.content_type {
        if !is_json(ct) {
            return Response::error(
                415,
                &format!("Content-Type must be application/json, not '{ct}'"),
                None,
            );
        }
    }
    let spec = match validate::registration(req.body) {
        Ok(spec) => spec,
        Err(e) => return Response::error(400, &e.message, e.field),
    };
    let id = spec.id.clone();
    let app = spec.app.clone();
    let (status, message) = match reg.register(spec, env.now_ms) {
        Registered::Created => (201, "backend registered"),
        Registered::Updated => (200, "backend updated"),
    };
    log::info!("registered backend {id} (app {app}): {message}");
    Response::json(
        status,
        json!({ "id": id, "registered": true, "message": message }),
    )
}

/// Explains the choice for one client: `GET /api/v1/route?app=APP&client=IP`.
pub const ROUTE: &str = "/api/v1/route";

/// The value of `key` in a query string (`%XX` decoded for the characters IPv6 addresses and
/// app names use; anything else is left as sent and then fails validation).
fn query_param<'q>(query: &'q str, key: &str) -> Option<std::borrow::Cow<'q, str>> {
    let raw = query
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == key)?
        .1;
    if !raw.contains('%') {
        return Some(raw.into());
    }
    Some(
        raw.replace("%3A", ":")
            .replace("%3a", ":")
            .replace("%2E", ".")
            .replace("%2e", ".")
            .into(),
    )
}

/// `GET /api/v1/route?app=APP&client=IP`: the backend this hub gives that client for that app
/// right now (as a TCP connection or DNS answer would), and every candidate with its tier, load,
/// weight, score and why it was or was not chosen. 400 for a missing or bad parameter, 404 for
/// an app with no backend.
fn route(req: &Request<'_>, reg: &Registry, env: &Env<'_>) -> Response {
    let Some(app) = query_param(req.query, "app").filter(|a| !a.is_empty()) else {
        return Response::error(400, "missing query parameter 'app'", Some("app"));
    };
    let app = app.to_ascii_lowercase();
    if !crate::names::is_dns_name(&app) {
        return Response::error(400, "'app' must be DNS-safe labels", Some("app"));
    }
    let Some(client) = query_param(req.query, "client").filter(|c| !c.is_empty()) else {
        return Response::error(
            400,
            "missing query parameter 'client' (an IP address)",
            Some("client"),
        );
    };
    let Ok(ip) = client.trim().parse::<std::net::IpAddr>() else {
        return Response::error(
            400,
            &format!("'client' must be an IPv4 or IPv6 address, not '{client}'"),
            Some("client"),
        );
    };
    let snap = reg.snapshot();
    let Some(group) = snap.app(&app) else {
        return Response::json(
            404,
            json!({ "error": format!("no backend is registered for app '{app}'"), "field": "app", "app": app }),
        );
    };
    let geo = crate::geo::current();
    let loc = geo.locate(ip);
    let client = crate::select::Client::at(ip, loc);
    let policy = crate::select::Policy::current(env.hub_region);
    let (chosen, candidates) = crate::select::explain(
        crate::select::Scope::App(group),
        &client,
        &policy,
        env.now_ms,
    );
    let list: Vec<Value> = candidates
        .iter()
        .map(|c| {
            json!({
                "id": c.backend.id,
                "region": c.backend.region,
                "country": c.backend.country,
                "tier": c.tier.to_string(),
                "load": c.load,
                "weight": c.weight,
                "score": if c.score.is_finite() { json!(c.score) } else { json!(null) },
                "chosen": c.chosen,
                "why": c.why,
            })
        })
        .collect();
    Response::json(
        200,
        json!({
            "app": app,
            "client": {
                "ip": ip.to_string(),
                "region": loc.region,
                "country": loc.country.map(|c| c.to_string()),
                "source": loc.source.as_str(),
            },
            "hub_region": env.hub_region,
            "balance_factor": policy.balance_factor,
            "chosen": chosen.map(|(b, _)| backend_json(b, env.now_ms)),
            "tier": chosen.map(|(_, t)| t.to_string()),
            "candidates": list,
        }),
    )
}

fn not_found(id: &str) -> Response {
    Response::json(
        404,
        json!({ "error": "backend not found", "field": "id", "id": id }),
    )
}

/// Serves one request.
pub fn handle(req: &Request<'_>, reg: &mut Registry, env: &Env<'_>) -> Response {
    let path = req
        .path
        .strip_suffix('/')
        .filter(|p| !p.is_empty())
        .unwrap_or(req.path);
    match path {
        "/health" => match req.method {
            Method::Get => {
                let healthy = reg.iter().filter(|b| b.healthy(env.now_ms)).count();
                Response::json(
                    200,
                    json!({
                        "status": "ok",
                        "version": env!("CARGO_PKG_VERSION"),
                        "backends": reg.len(),
                        "healthy_backends": healthy,
                        "uptime_secs": env.uptime_secs,
                        "shards": env.shards,
                    }),
                )
            }
            _ => Response::not_allowed(req.method_str, "GET"),
        },
        "/metrics" => match req.method {
            Method::Get => metrics(reg, env),
            _ => Response::not_allowed(req.method_str, "GET"),
        },
        "/api/v1/register" => match req.method {
            Method::Post => register(req, reg, env),
            _ => Response::not_allowed(req.method_str, "POST"),
        },
        CLUSTER => match req.method {
            Method::Get => cluster(env.cluster),
            _ => Response::not_allowed(req.method_str, "GET"),
        },
        // A POST with TLS on never gets here (see TLS_RELOAD).
        TLS_RELOAD if env.tls => Response::not_allowed(req.method_str, "POST"),
        ROUTE => match req.method {
            Method::Get => route(req, reg, env),
            _ => Response::not_allowed(req.method_str, "GET"),
        },
        "/api/v1/backends" => match req.method {
            Method::Get => {
                let list: Vec<Value> = reg.iter().map(|b| backend_json(b, env.now_ms)).collect();
                let total = list.len();
                Response::json(200, json!({ "backends": list, "total": total }))
            }
            _ => Response::not_allowed(req.method_str, "GET"),
        },
        _ => {
            if let Some(id) = path.strip_prefix("/api/v1/heartbeat/") {
                if req.method != Method::Post {
                    return Response::not_allowed(req.method_str, "POST");
                }
                if reg.heartbeat(id, env.now_ms) {
                    log::debug!("heartbeat from backend {id}");
                    return Response::json(200, json!({ "id": id, "status": "ok" }));
                }
                return not_found(id);
            }
            if let Some(id) = path
                .strip_prefix("/api/v1/backends/")
                .and_then(|rest| rest.strip_suffix("/drain"))
            {
                if req.method != Method::Post {
                    return Response::not_allowed(req.method_str, "POST");
                }
                if reg.drain(id) {
                    log::info!("draining backend {id}: no new connections or DNS answers");
                    return Response::json(200, json!({ "id": id, "draining": true }));
                }
                return not_found(id);
            }
            if let Some(id) = path.strip_prefix("/api/v1/backends/") {
                if id.contains('/') {
                    return Response::error(404, &format!("no such path: {}", req.path), None);
                }
                return match req.method {
                    Method::Get => match reg.get(id) {
                        Some(b) => Response::json(200, backend_json(b, env.now_ms)),
                        None => not_found(id),
                    },
                    Method::Delete => {
                        if reg.deregister(id) {
                            log::info!("deregistered backend {id}");
                            Response::json(200, json!({ "deregistered": true, "id": id }))
                        } else {
                            not_found(id)
                        }
                    }
                    _ => Response::not_allowed(req.method_str, "GET, DELETE"),
                };
            }
            Response::error(404, &format!("no such path: {}", req.path), None)
        }
    }
}

/// Requests served by the API, by route and status, and publish latency (API shard only).
#[derive(Debug)]
pub struct ApiStats {
    requests: std::cell::RefCell<std::collections::BTreeMap<(&'static str, u16), u64>>,
    /// From the moment a batch of changes is ready until it is durable and published.
    pub publish: Histogram,
}

impl Default for ApiStats {
    fn default() -> Self {
        ApiStats {
            requests: Default::default(),
            publish: Histogram::new(&[
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
        }
    }
}

impl ApiStats {
    /// Counts one answered request.
    pub fn count(&self, path: &str, status: u16) {
        *self
            .requests
            .borrow_mut()
            .entry((route_of(path), status))
            .or_default() += 1;
    }
}

/// The route template of a path (a bounded label set: ids never become labels).
pub fn route_of(path: &str) -> &'static str {
    let path = path
        .strip_suffix('/')
        .filter(|p| !p.is_empty())
        .unwrap_or(path);
    match path {
        "/health" => "/health",
        "/metrics" => "/metrics",
        "/api/v1/register" => "/api/v1/register",
        "/api/v1/backends" => "/api/v1/backends",
        ROUTE => ROUTE,
        CLUSTER => CLUSTER,
        TLS_RELOAD => TLS_RELOAD,
        p if p.starts_with("/api/v1/heartbeat/") => "/api/v1/heartbeat/{id}",
        p if p.starts_with("/api/v1/backends/") && p.ends_with("/drain") => {
            "/api/v1/backends/{id}/drain"
        }
        p if p.starts_with("/api/v1/backends/") => "/api/v1/backends/{id}",
        _ => "other",
    }
}

fn metrics(reg: &Registry, env: &Env<'_>) -> Response {
    let mut t = Text::default();
    let healthy = reg.iter().filter(|b| b.healthy(env.now_ms)).count();
    t.family("edgeproxy_backends", "Registered backends.", "gauge");
    t.sample("edgeproxy_backends", &[], reg.len() as f64);
    t.family(
        "edgeproxy_backends_healthy",
        "Backends whose heartbeat is current and whose health is up.",
        "gauge",
    );
    t.sample("edgeproxy_backends_healthy", &[], healthy as f64);
    t.family(
        "edgeproxy_snapshot_version",
        "Version of the published registry snapshot.",
        "gauge",
    );
    t.sample("edgeproxy_snapshot_version", &[], reg.version() as f64);
    per_backend(
        &mut t,
        reg,
        ("edgeproxy_backend_connections", "gauge"),
        "Live forwarded connections per backend.",
        |b| f64::from(b.connections()),
    );
    per_backend(
        &mut t,
        reg,
        ("edgeproxy_backend_up", "gauge"),
        "1 while the backend is served (heartbeat current, health up, not draining).",
        |b| {
            let up = b.healthy(env.now_ms) && !b.live.draining.load(Ordering::Relaxed);
            if up {
                1.0
            } else {
                0.0
            }
        },
    );
    t.family(
        "edgeproxy_backend_health",
        "Health state per backend: 1 for the state it is in, 0 for the others.",
        "gauge",
    );
    for b in reg.iter() {
        let state = b.live.health();
        for s in crate::health::State::ALL {
            let labels = [
                ("id", b.id.as_str()),
                ("app", b.app.as_str()),
                ("region", b.region.as_str()),
                ("state", s.as_str()),
            ];
            let v = if s == state { 1.0 } else { 0.0 };
            t.sample("edgeproxy_backend_health", &labels, v);
        }
    }
    per_backend(
        &mut t,
        reg,
        ("edgeproxy_backend_connect_failures_total", "counter"),
        "Failed proxy connects per backend (refused or timed out), over every shard.",
        |b| b.live.connect_failures() as f64,
    );
    if let Some(health) = env.health {
        health.render(&mut t);
    }
    if let Some(syncs) = env.store_syncs {
        t.family(
            "edgeproxy_store_syncs_total",
            "fdatasync calls made by the registry store.",
            "counter",
        );
        t.sample("edgeproxy_store_syncs_total", &[], syncs as f64);
    }
    if let Some(api) = env.api {
        t.family(
            "edgeproxy_api_requests_total",
            "API requests answered, by route and status.",
            "counter",
        );
        for ((route, status), n) in api.requests.borrow().iter() {
            t.sample(
                "edgeproxy_api_requests_total",
                &[("route", route), ("status", &status.to_string())],
                *n as f64,
            );
        }
        api.publish.render(
            &mut t,
            "edgeproxy_publish_seconds",
            "Time from a batch of registry changes being ready to it being durable and visible on every shard.",
        );
    }
    if let Some(data) = env.data_plane {
        data.render(&mut t);
    }
    if let Some(c) = env.cluster {
        cluster_metrics(&mut t, c);
    }
    t.family(
        "edgeproxy_uptime_seconds",
        "Seconds since the hub started.",
        "gauge",
    );
    t.sample("edgeproxy_uptime_seconds", &[], env.uptime_secs as f64);
    Response {
        status: 200,
        body: t.0.into_bytes(),
        content_type: "text/plain; version=0.0.4",
        allow: None,
        www_authenticate: false,
    }
}

/// One sample per backend of metric family `(name, kind)`, labelled with id, app and region.
fn per_backend(
    t: &mut Text,
    reg: &Registry,
    (name, kind): (&str, &str),
    help: &str,
    value: impl Fn(&Backend) -> f64,
) {
    t.family(name, help, kind);
    for b in reg.iter() {
        let labels = [
            ("id", b.id.as_str()),
            ("app", b.app.as_str()),
            ("region", b.region.as_str()),
        ];
        t.sample(name, &labels, value(b));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::http::{parse, Parsed};
    use crate::registry::SnapshotCell;
    use std::sync::Arc;

    fn run(reg: &mut Registry, raw: &str) -> (u16, Value, Option<&'static str>) {
        run_tls(reg, raw, true)
    }

    fn run_tls(reg: &mut Registry, raw: &str, tls: bool) -> (u16, Value, Option<&'static str>) {
        let Parsed::Complete(req, _) = parse(raw.as_bytes()) else {
            panic!("bad test request {raw}");
        };
        let env = Env {
            now_ms: 5_000,
            uptime_secs: 5,
            shards: 2,
            store_syncs: Some(3),
            api: None,
            data_plane: None,
            health: None,
            tls,
            hub_region: "sa",
            cluster: None,
        };
        let r = handle(&req, reg, &env);
        let body = if r.content_type == "application/json" {
            serde_json::from_slice(&r.body).unwrap()
        } else {
            Value::String(String::from_utf8(r.body).unwrap())
        };
        (r.status, body, r.allow)
    }

    fn post(path: &str, body: &str) -> String {
        format!(
            "POST {path} HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    fn registry() -> Registry {
        Registry::new(2, 60, 600, Arc::new(SnapshotCell::new()))
    }

    const GRU: &str =
        r#"{"id":"pop-gru","app":"gru.pop","region":"sa","ip":"10.50.1.1","port":80}"#;

    #[test]
    fn register_get_list_heartbeat_delete() {
        let mut reg = registry();
        let (s, b, _) = run(&mut reg, &post("/api/v1/register", GRU));
        assert_eq!(s, 201);
        assert_eq!(b["registered"], true);
        assert_eq!(b["id"], "pop-gru");
        assert!(reg.is_dirty());
        let (s, b, _) = run(&mut reg, &post("/api/v1/register", GRU));
        assert_eq!(s, 200);
        assert_eq!(b["registered"], true);
        let (s, b, _) = run(&mut reg, "GET /api/v1/backends/pop-gru HTTP/1.1\r\n\r\n");
        assert_eq!(s, 200);
        assert_eq!(b["ip"], "10.50.1.1");
        assert_eq!(b["healthy"], true);
        assert_eq!(b["port"], 80);
        assert!(b.get("last_heartbeat_secs").is_some() && b.get("registered_secs").is_some());
        let (s, b, _) = run(&mut reg, "GET /api/v1/backends HTTP/1.1\r\n\r\n");
        assert_eq!((s, b["total"].as_u64()), (200, Some(1)));
        let (s, b, _) = run(&mut reg, &post("/api/v1/heartbeat/pop-gru", ""));
        assert_eq!((s, b["status"].as_str()), (200, Some("ok")));
        let (s, _, _) = run(&mut reg, &post("/api/v1/heartbeat/nope", ""));
        assert_eq!(s, 404);
        let (s, b, _) = run(&mut reg, "DELETE /api/v1/backends/pop-gru HTTP/1.1\r\n\r\n");
        assert_eq!((s, b["deregistered"].as_bool()), (200, Some(true)));
        let (s, _, _) = run(&mut reg, "DELETE /api/v1/backends/pop-gru HTTP/1.1\r\n\r\n");
        assert_eq!(s, 404);
        let (s, b, _) = run(&mut reg, "GET /health HTTP/1.1\r\n\r\n");
        assert_eq!(
            (s, b["status"].as_str(), b["backends"].as_u64()),
            (200, Some("ok"), Some(0))
        );
    }

    #[test]
    fn errors() {
        let mut reg = registry();
        let (s, _, allow) = run(&mut reg, "GET /api/v1/register HTTP/1.1\r\n\r\n");
        assert_eq!((s, allow), (405, Some("POST")));
        // Without TLS the reload route does not exist.
        for m in ["GET", "POST"] {
            let raw = format!("{m} /api/v1/tls/reload HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
            assert_eq!(run_tls(&mut reg, &raw, false).0, 404);
        }
        let (s, _, allow) = run(&mut reg, "PUT /api/v1/backends/x HTTP/1.1\r\n\r\n");
        assert_eq!((s, allow), (405, Some("GET, DELETE")));
        let (s, _, _) = run(&mut reg, "GET /nope HTTP/1.1\r\n\r\n");
        assert_eq!(s, 404);
        let (s, _, allow) = run(&mut reg, "GET /api/v1/tls/reload HTTP/1.1\r\n\r\n");
        assert_eq!((s, allow), (405, Some("POST")));
        let (s, b, _) = run(&mut reg, &post("/api/v1/register", "{"));
        assert_eq!(s, 400);
        assert!(b["error"].as_str().unwrap().contains("malformed JSON"));
        assert_eq!(b["field"], Value::Null);
        let raw = format!(
            "POST /api/v1/register HTTP/1.1\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{GRU}",
            GRU.len()
        );
        assert_eq!(run(&mut reg, &raw).0, 415);
        let (s, _, _) = run(&mut reg, "POST /api/v1/register HTTP/1.1\r\n\r\n");
        assert_eq!(s, 411);
        let (s, b, _) = run(
            &mut reg,
            &post(
                "/api/v1/register",
                r#"{"id":"x","app":"a","region":"sa","ip":"1.2.3","port":1}"#,
            ),
        );
        assert_eq!((s, b["field"].as_str()), (400, Some("ip")));
        assert!(!reg.is_dirty());
    }

    #[test]
    fn route_explains_the_choice() {
        let mut reg = registry();
        run(&mut reg, &post("/api/v1/register", GRU));
        let eu = r#"{"id":"pop-fra","app":"gru.pop","region":"fra","ip":"10.50.3.1","port":80}"#;
        run(&mut reg, &post("/api/v1/register", eu));
        reg.publish();
        let get = |q: &str| format!("GET /api/v1/route{q} HTTP/1.1\r\n\r\n");
        let (s, b, _) = run(&mut reg, &get("?app=gru.pop&client=10.50.3.7"));
        assert_eq!(s, 200, "{b}");
        assert_eq!(b["chosen"]["id"], "pop-fra");
        assert_eq!(b["tier"], "region");
        assert_eq!(b["client"]["region"], "eu");
        let c = b["candidates"].as_array().unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(
            (
                c[0]["id"].as_str(),
                c[0]["chosen"].as_bool(),
                c[0]["why"].as_str()
            ),
            (Some("pop-fra"), Some(true), Some("chosen"))
        );
        assert_eq!(
            (
                c[1]["id"].as_str(),
                c[1]["tier"].as_str(),
                c[1]["why"].as_str()
            ),
            (Some("pop-gru"), Some("hub_region"), Some("lower tier"))
        );
        assert!(c[1]["score"].as_f64().is_some() && c[1]["weight"] == 1 && c[1]["load"] == 0);
        // An IPv6 client, percent-encoded, from nowhere known: the hub's region (sa).
        let (s, b, _) = run(&mut reg, &get("?client=2001%3adb8%3A%3A1&app=GRU.pop"));
        assert_eq!(
            (s, b["chosen"]["id"].as_str(), b["tier"].as_str()),
            (200, Some("pop-gru"), Some("hub_region"))
        );
        for (q, field) in [
            ("", "app"),
            ("?app=", "app"),
            ("?app=a_b&client=10.0.0.1", "app"),
            ("?app=gru.pop", "client"),
            ("?app=gru.pop&client=10.0.0", "client"),
        ] {
            let (s, b, _) = run(&mut reg, &get(q));
            assert_eq!((s, b["field"].as_str()), (400, Some(field)), "{q}: {b}");
        }
        let (s, b, _) = run(&mut reg, &get("?app=nope&client=10.0.0.1"));
        assert_eq!((s, b["field"].as_str()), (404, Some("app")));
        let (s, _, allow) = run(
            &mut reg,
            "POST /api/v1/route HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        );
        assert_eq!((s, allow), (405, Some("GET")));
    }

    #[test]
    fn json_content_types() {
        assert!(is_json("application/json"));
        assert!(is_json("Application/JSON; charset=utf-8"));
        assert!(is_json("application/merge+json"));
        assert!(!is_json("text/plain"));
        assert!(!is_json("application/x-www-form-urlencoded"));
    }

    #[test]
    fn metrics_text() {
        let mut reg = registry();
        run(&mut reg, &post("/api/v1/register", GRU));
        let (s, b, _) = run(&mut reg, "GET /metrics HTTP/1.1\r\n\r\n");
        assert_eq!(s, 200);
        let text = b.as_str().unwrap();
        assert!(text.contains("edgeproxy_backends 1\n"));
        assert!(text.contains("edgeproxy_store_syncs_total 3\n"));
        assert!(text.contains("edgeproxy_backend_connections{id=\"pop-gru\""));
        assert!(text.contains(
            "edgeproxy_backend_health{id=\"pop-gru\",app=\"gru.pop\",region=\"sa\",state=\"up\"} 1\n"
        ));
        assert!(text.contains(
            "edgeproxy_backend_health{id=\"pop-gru\",app=\"gru.pop\",region=\"sa\",state=\"ejected\"} 0\n"
        ));
        assert!(text.contains("edgeproxy_backend_connect_failures_total{id=\"pop-gru\""));
    }

    #[test]
    fn backend_json_shows_health() {
        let mut reg = registry();
        run(&mut reg, &post("/api/v1/register", GRU));
        let (_, b, _) = run(&mut reg, "GET /api/v1/backends/pop-gru HTTP/1.1\r\n\r\n");
        let h = &b["health"];
        assert_eq!(h["state"], "up");
        assert_eq!(h["reason"], "registered, not checked yet");
        assert_eq!(h["connect_failures"], 0);
        assert_eq!(h["last_connect_failure_unix_ms"], Value::Null);
        assert!(h["since_unix_ms"].as_u64().unwrap() > 0);
        assert_eq!(b["check"], Value::Null);
        // Down: not healthy, and not counted as healthy.
        let live = reg.get("pop-gru").unwrap().live.clone();
        live.set_health(
            crate::health::State::Down,
            crate::health::Why::new(crate::health::Reason::Refused),
        );
        let (_, b, _) = run(&mut reg, "GET /api/v1/backends/pop-gru HTTP/1.1\r\n\r\n");
        assert_eq!(
            (b["healthy"].as_bool(), b["health"]["state"].as_str()),
            (Some(false), Some("down"))
        );
        assert_eq!(b["health"]["reason"], "tcp connect refused");
        let (_, h, _) = run(&mut reg, "GET /health HTTP/1.1\r\n\r\n");
        assert_eq!(h["healthy_backends"], 0);
    }
}
