//! The API's routes: a request in, a response out, against the registry. Pure apart from the
//! registry it is handed: the server publishes the snapshot after mutations, before answering.

use super::http::{Method, Request};
use super::validate;
use crate::registry::{Backend, Registered, Registry};
use serde_json::{json, Value};
use std::sync::atomic::Ordering;

/// What the server needs to know besides the registry.
pub struct Env {
    pub now_ms: u64,
    pub uptime_secs: u64,
    pub shards: usize,
}

/// A response to write.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
    pub content_type: &'static str,
    /// `Allow` header, on 405.
    pub allow: Option<&'static str>,
}

impl Response {
    pub fn json(status: u16, value: Value) -> Response {
        Response {
            status,
            body: serde_json::to_vec(&value).unwrap_or_default(),
            content_type: "application/json",
            allow: None,
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
    let last_heartbeat_ms = b.live.last_heartbeat_ms.load(Ordering::Relaxed);
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
        "healthy": b.alive(now_ms),
        "draining": b.live.draining.load(Ordering::Relaxed),
        "connections": b.connections(),
        "registered_at": b.registered_unix_ms / 1000,
        "registered_secs": now_ms.saturating_sub(b.registered_ms) / 1000,
        "last_heartbeat_secs": now_ms.saturating_sub(last_heartbeat_ms) / 1000,
    })
}

fn is_json(content_type: &str) -> bool {
    let mime = content_type.split(';').next().unwrap_or("").trim();
    mime.eq_ignore_ascii_case("application/json")
        || (mime.len() > 5
            && mime[..mime.len() - 5].contains('/')
            && mime[mime.len() - 5..].eq_ignore_ascii_case("+json"))
}

fn register(req: &Request<'_>, reg: &mut Registry, env: &Env) -> Response {
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

fn not_found(id: &str) -> Response {
    Response::json(
        404,
        json!({ "error": "backend not found", "field": "id", "id": id }),
    )
}

/// Serves one request.
pub fn handle(req: &Request<'_>, reg: &mut Registry, env: &Env) -> Response {
    let path = req
        .path
        .strip_suffix('/')
        .filter(|p| !p.is_empty())
        .unwrap_or(req.path);
    match path {
        "/health" => match req.method {
            Method::Get => {
                let healthy = reg.iter().filter(|b| b.alive(env.now_ms)).count();
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

fn metrics(reg: &Registry, env: &Env) -> Response {
    use std::fmt::Write;
    let healthy = reg.iter().filter(|b| b.alive(env.now_ms)).count();
    let mut s = String::new();
    let _ = writeln!(s, "# HELP edgeproxy_backends Registered backends.");
    let _ = writeln!(s, "# TYPE edgeproxy_backends gauge");
    let _ = writeln!(s, "edgeproxy_backends {}", reg.len());
    let _ = writeln!(
        s,
        "# HELP edgeproxy_backends_healthy Backends whose heartbeat is current."
    );
    let _ = writeln!(s, "# TYPE edgeproxy_backends_healthy gauge");
    let _ = writeln!(s, "edgeproxy_backends_healthy {healthy}");
    let _ = writeln!(
        s,
        "# HELP edgeproxy_snapshot_version Version of the published registry snapshot."
    );
    let _ = writeln!(s, "# TYPE edgeproxy_snapshot_version gauge");
    let _ = writeln!(s, "edgeproxy_snapshot_version {}", reg.version());
    let _ = writeln!(
        s,
        "# HELP edgeproxy_backend_connections Live forwarded connections per backend."
    );
    let _ = writeln!(s, "# TYPE edgeproxy_backend_connections gauge");
    for b in reg.iter() {
        let _ = writeln!(
            s,
            "edgeproxy_backend_connections{{id=\"{}\",app=\"{}\",region=\"{}\"}} {}",
            b.id,
            b.app,
            b.region,
            b.connections()
        );
    }
    let _ = writeln!(
        s,
        "# HELP edgeproxy_uptime_seconds Seconds since the hub started."
    );
    let _ = writeln!(s, "# TYPE edgeproxy_uptime_seconds gauge");
    let _ = writeln!(s, "edgeproxy_uptime_seconds {}", env.uptime_secs);
    Response {
        status: 200,
        body: s.into_bytes(),
        content_type: "text/plain; version=0.0.4",
        allow: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::http::{parse, Parsed};
    use crate::registry::SnapshotCell;
    use std::sync::Arc;

    fn run(reg: &mut Registry, raw: &str) -> (u16, Value, Option<&'static str>) {
        let Parsed::Complete(req, _) = parse(raw.as_bytes()) else {
            panic!("bad test request {raw}");
        };
        let env = Env {
            now_ms: 5_000,
            uptime_secs: 5,
            shards: 2,
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
        let (s, _, allow) = run(&mut reg, "PUT /api/v1/backends/x HTTP/1.1\r\n\r\n");
        assert_eq!((s, allow), (405, Some("GET, DELETE")));
        let (s, _, _) = run(&mut reg, "GET /nope HTTP/1.1\r\n\r\n");
        assert_eq!(s, 404);
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
        assert!(text.contains("edgeproxy_backend_connections{id=\"pop-gru\""));
    }
}
