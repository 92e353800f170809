//! The registration API: `api-register` (registrations with unique ids on kept-alive
//! connections, optionally each followed by heartbeats) and `publish-latency` (how long after
//! the hub acknowledges a registration until DNS answers it from every source port, hence on
//! every shard the kernel spreads those ports to).

use super::{backoff, connect, ensure_connected, io_kind, watched};
use crate::cli::{ApiRegister, PublishLatency};
use crate::dnswire;
use crate::http;
use crate::run::ShardCtx;
use crate::stats::{Done, ErrorKind};
use futures_lite::AsyncWriteExt;
use glommio::net::{TcpStream, UdpSocket};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

fn default_prefix() -> String {
    format!("eb{}", std::process::id())
}

fn check_label(what: &str, s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 40
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} {s:?}: use 1-40 characters of a-z, 0-9 and '-' (it becomes part of DNS-safe ids)"
        ))
    }
}

/// A valid address for registration `n` of a worker. The hub only stores it; distinct
/// registrations of one worker get distinct addresses for 16M registrations.
fn address_for(shard: usize, worker: usize, n: u64) -> Ipv4Addr {
    let k = (n + worker as u64 * 7919 + shard as u64 * 104_729) & 0xFF_FFFF;
    Ipv4Addr::new(10, (k >> 16) as u8, (k >> 8) as u8, k as u8)
}

/// The JSON body of a registration.
pub fn register_body(id: &str, app: &str, region: &str, ip: Ipv4Addr, port: u16) -> String {
    format!(r#"{{"id":"{id}","app":"{app}","region":"{region}","ip":"{ip}","port":{port}}}"#)
}

/// Sends one request on a kept-alive connection and reads its response.
async fn call(s: &mut TcpStream, req: &[u8], buf: &mut Vec<u8>) -> Result<u16, ErrorKind> {
    s.write_all(req).await.map_err(io_kind)?;
    let f = http::read_response(s, buf).await?;
    buf.drain(..f.len);
    Ok(f.status)
}

fn status_error(status: u16) -> ErrorKind {
    match status {
        400 => "http-400",
        404 => "http-404",
        408 => "http-408",
        409 => "http-409",
        413 => "http-413",
        429 => "http-429",
        503 => "http-503",
        s if s < 500 => "http-4xx",
        _ => "http-5xx",
    }
}

pub struct RegisterPlan {
    pub target: SocketAddr,
    pub app: String,
    pub region: String,
    pub heartbeats: u32,
    pub prefix: String,
}

impl RegisterPlan {
    pub fn new(c: &ApiRegister, target: SocketAddr) -> Result<RegisterPlan, String> {
        let prefix = c.id_prefix.clone().unwrap_or_else(default_prefix);
        check_label("--id-prefix", &prefix)?;
        Ok(RegisterPlan {
            target,
            app: c.app.clone(),
            region: c.region.clone(),
            heartbeats: c.heartbeats,
            prefix,
        })
    }

    pub fn params(&self) -> serde_json::Value {
        serde_json::json!({
            "app": self.app,
            "region": self.region,
            "heartbeats_per_registration": self.heartbeats,
            "id_prefix": self.prefix,
        })
    }
}

pub async fn register_worker(ctx: &ShardCtx, p: &RegisterPlan, worker: usize) {
    let watch = ctx.watch();
    let mut conn: Option<TcpStream> = None;
    let mut buf = Vec::with_capacity(4096);
    let mut n = 0u64;
    // Heartbeats still owed to the latest registration.
    let mut owed = 0u32;
    let mut id = String::new();
    while let Some(due) = ctx.next().await {
        let Some(s) = ensure_connected(ctx, &mut conn, p.target, due).await else {
            continue;
        };
        let (req, register) = if owed > 0 {
            owed -= 1;
            (
                http::bodiless("POST", &format!("/api/v1/heartbeat/{id}")),
                false,
            )
        } else {
            n += 1;
            id = format!("{}-{}-{}-{}", p.prefix, ctx.shard, worker, n);
            let body = register_body(
                &id,
                &p.app,
                &p.region,
                address_for(ctx.shard, worker, n),
                8000 + (worker % 1000) as u16,
            );
            owed = p.heartbeats;
            (http::post_json("/api/v1/register", &body), true)
        };
        let fd = s.as_raw_fd();
        let r = match watched(&watch, fd, ctx.timeout, call(s, &req, &mut buf)).await {
            Ok(st) if (200..300).contains(&st) => Ok(Done {
                bytes: 0,
                tag: match (register, st) {
                    (true, 201) => "register 201",
                    (true, 200) => "register 200",
                    (true, _) => "register 2xx",
                    (false, _) => "heartbeat 2xx",
                },
            }),
            Ok(st) => Err(status_error(st)),
            Err(kind) => {
                buf.clear();
                conn = None;
                owed = 0;
                Err(kind)
            }
        };
        ctx.record(due, r);
    }
}

pub struct PublishPlan {
    pub api: SocketAddr,
    pub dns: SocketAddr,
    pub zone: String,
    pub ports: usize,
    pub region: String,
    pub prefix: String,
    pub keep: bool,
}

impl PublishPlan {
    pub fn new(c: &PublishLatency, api: SocketAddr) -> Result<PublishPlan, String> {
        let prefix = c.id_prefix.clone().unwrap_or_else(default_prefix);
        check_label("--id-prefix", &prefix)?;
        if c.ports == 0 || c.ports > 1024 {
            return Err("--ports must be 1 to 1024".into());
        }
        Ok(PublishPlan {
            api,
            dns: c.dns,
            zone: c.zone.trim_matches('.').to_string(),
            ports: c.ports,
            region: c.region.clone(),
            prefix,
            keep: c.keep,
        })
    }

    pub fn params(&self) -> serde_json::Value {
        serde_json::json!({
            "dns": self.dns.to_string(),
            "zone": self.zone,
            "ports_per_worker": self.ports,
            "id_prefix": self.prefix,
            "delete_after": !self.keep,
        })
    }
}

/// How long one probe round waits for its answers before asking again.
const PROBE_ROUND: Duration = Duration::from_millis(20);

/// Asks for `name` from every socket until each has answered with `ip`; returns when the last
/// one did. Sockets that answer anything else (NXDOMAIN: not published there yet) ask again.
async fn probe(
    socks: &[UdpSocket],
    name: &str,
    ip: IpAddr,
    deadline: Instant,
    id: &mut u16,
) -> Result<Instant, ErrorKind> {
    let mut pending: Vec<usize> = (0..socks.len()).collect();
    let mut buf = vec![0u8; 4096];
    let mut ids = vec![0u16; socks.len()];
    loop {
        for &i in &pending {
            *id = id.wrapping_add(1);
            ids[i] = *id;
            let q = dnswire::encode_query(*id, name, 1).map_err(|_| "bad-name")?;
            socks[i]
                .send(&q)
                .await
                .map_err(|e| io_kind(std::io::Error::from(e)))?;
        }
        let mut still = Vec::new();
        for &i in &pending {
            let round_end = (Instant::now() + PROBE_ROUND).min(deadline);
            let mut answered = false;
            loop {
                let left = round_end.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                socks[i]
                    .set_read_timeout(Some(left))
                    .map_err(|_| "socket")?;
                let Ok(n) = socks[i].recv(&mut buf).await else {
                    break;
                };
                match dnswire::parse_reply(&buf[..n]) {
                    Some(r) if r.id == ids[i] => {
                        answered = r.rcode == 0 && r.addrs.contains(&ip);
                        break;
                    }
                    _ => {}
                }
            }
            if !answered {
                still.push(i);
            }
        }
        let now = Instant::now();
        if still.is_empty() {
            return Ok(now);
        }
        if now >= deadline {
            return Err("not-published");
        }
        pending = still;
    }
}

pub async fn publish_worker(ctx: &ShardCtx, p: &PublishPlan, worker: usize) {
    let watch = ctx.watch();
    let mut conn: Option<TcpStream> = None;
    let mut socks: Vec<UdpSocket> = Vec::new();
    let mut buf = Vec::with_capacity(4096);
    let mut n = 0u64;
    let mut qid = (worker as u16).wrapping_mul(7919);
    let any: SocketAddr = if p.dns.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    while let Some(due) = ctx.next().await {
        if conn.is_none() || socks.len() < p.ports {
            let setup = async {
                if conn.is_none() {
                    conn = Some(connect(p.api, ctx.timeout).await?);
                }
                while socks.len() < p.ports {
                    let s = UdpSocket::bind(any).map_err(|_| "socket")?;
                    s.connect(p.dns).await.map_err(|_| "socket")?;
                    socks.push(s);
                }
                Ok::<(), ErrorKind>(())
            };
            if let Err(kind) = setup.await {
                ctx.record(due, Err(kind));
                backoff(ctx).await;
                continue;
            }
        }
        n += 1;
        let id = format!("{}-{}-{}-{}", p.prefix, ctx.shard, worker, n);
        let ip = address_for(ctx.shard, worker, n);
        let body = register_body(&id, &id, &p.region, ip, 80);
        let s = conn.as_mut().expect("connected above");
        let fd = s.as_raw_fd();
        let req = http::post_json("/api/v1/register", &body);
        let acked = match watched(&watch, fd, ctx.timeout, call(s, &req, &mut buf)).await {
            Ok(st) if (200..300).contains(&st) => Ok(Instant::now()),
            Ok(st) => Err(status_error(st)),
            Err(kind) => {
                buf.clear();
                conn = None;
                Err(kind)
            }
        };
        let ack = match acked {
            Ok(t) => t,
            Err(kind) => {
                ctx.record(due, Err(kind));
                continue;
            }
        };
        let name = format!("{id}.{}", p.zone);
        let r = probe(&socks, &name, IpAddr::V4(ip), ack + ctx.timeout, &mut qid).await;
        // The latency of interest starts at the acknowledgement, not at the intended start.
        ctx.record(ack, r.map(|_| Done::bytes(0)));
        if !p.keep {
            if let Some(s) = conn.as_mut() {
                let del = http::bodiless("DELETE", &format!("/api/v1/backends/{id}"));
                let fd = s.as_raw_fd();
                if watched(&watch, fd, ctx.timeout, call(s, &del, &mut buf))
                    .await
                    .is_err()
                {
                    buf.clear();
                    conn = None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_bodies_and_addresses_are_unique_and_valid() {
        let b = register_body("eb1-0-0-1", "bench", "sa", Ipv4Addr::new(10, 1, 2, 3), 80);
        let v: serde_json::Value = serde_json::from_str(&b).unwrap();
        assert_eq!(v["id"], "eb1-0-0-1");
        assert_eq!(v["ip"], "10.1.2.3");
        assert_eq!(v["port"], 80);
        assert_ne!(address_for(0, 0, 1), address_for(0, 0, 2));
        assert_ne!(address_for(0, 0, 1), address_for(0, 1, 1));
        assert_ne!(address_for(0, 0, 1), address_for(1, 0, 1));
        assert!(check_label("--id-prefix", "eb123").is_ok());
        assert!(check_label("--id-prefix", "Bad_Prefix").is_err());
    }
}
