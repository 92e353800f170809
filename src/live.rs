//! Settings that change without a restart: the TCP route listeners (`EDGEPROXY_ROUTES`), the
//! TLS routes (`EDGEPROXY_TLS_ROUTES`, `EDGEPROXY_TLS_DEFAULT_APP`) and the health-check and
//! ejection settings (`EDGEPROXY_HEALTH_*`, read by the checker on the API shard).
//!
//! They live in a [`LiveCell`], an `ArcSwap` of an immutable [`Live`], like the registry's
//! snapshot: the main thread builds a new `Live` on SIGHUP ([`plan`], [`Reloaded::apply`]) and
//! stores it; shards only ever load it.
//!
//! Route listeners are sockets, so adding one means binding: the main thread binds one
//! `SO_REUSEPORT` listener per shard (never a shard: binding is a blocking call) and parks them
//! in the new [`RouteListener`], one slot per shard. Each shard looks at the cell's generation
//! every [`crate::shutdown::POLL`]; when it changes, it takes the sockets parked for it (an
//! atomic swap: exactly one taker) and starts their accept loops. A route that disappears from
//! the cell stops its accept loops at the next look, closing its listeners; connections
//! already forwarded run on. A route whose port stays but whose app changes keeps its
//! listeners: its accept loops read the app from the cell whenever the generation changes.

use crate::config::{Route, TlsRoute};
use arc_swap::ArcSwap;
use socket2::Socket;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::Arc;

/// One TCP route listener: its address and its per-shard sockets until each shard takes its own.
#[derive(Debug)]
pub struct RouteListener {
    /// Unique for the life of the process (a re-added port gets a new one).
    pub id: u64,
    /// The port as configured (0 = the OS picked [`RouteListener::addr`]'s port).
    pub configured_port: u16,
    /// The bound address.
    pub addr: SocketAddr,
    /// Per shard: the listening socket's fd until that shard takes it, then -1.
    fds: Box<[AtomicI32]>,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl RouteListener {
    /// Parks `sockets` (one per shard, in shard order).
    pub fn new(configured_port: u16, addr: SocketAddr, sockets: Vec<Socket>) -> RouteListener {
        RouteListener {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            configured_port,
            addr,
            fds: sockets
                .into_iter()
                .map(|s| AtomicI32::new(s.into_raw_fd()))
                .collect(),
        }
    }

    /// The socket parked for `shard`, once: later calls (and other shards) get `None`.
    pub fn take(&self, shard: usize) -> Option<Socket> {
        let fd = self.fds.get(shard)?.swap(-1, Ordering::AcqRel);
        // SAFETY: a non-negative value is a listening socket's fd that `new` took ownership of
        // and that the swap above removed from the slot, so it is owned by nobody else now.
        (fd >= 0).then(|| unsafe { Socket::from_raw_fd(fd) })
    }
}

impl Drop for RouteListener {
    fn drop(&mut self) {
        // Sockets no shard took (the route went away before a shard looked): close them.
        for slot in self.fds.iter() {
            let fd = slot.swap(-1, Ordering::AcqRel);
            if fd >= 0 {
                // SAFETY: as in `take`: the fd is owned by this slot alone.
                drop(unsafe { Socket::from_raw_fd(fd) });
            }
        }
    }
}

/// A route listener and the app it serves now.
#[derive(Debug, Clone)]
pub struct LiveRoute {
    pub listener: Arc<RouteListener>,
    pub app: String,
}

/// The TLS routing table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsRoutes {
    pub routes: Vec<TlsRoute>,
    pub default_app: Option<String>,
}

/// The hub's health-check and passive-ejection settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSettings {
    pub check: crate::health::Check,
    pub ejection: crate::health::Ejection,
    pub concurrency: usize,
}

impl HealthSettings {
    pub fn of(cfg: &crate::config::Config) -> HealthSettings {
        HealthSettings {
            check: cfg.health_check.clone(),
            ejection: cfg.health_ejection,
            concurrency: cfg.health_check_concurrency,
        }
    }
}

/// What the data plane reads of the live settings. Immutable once published.
#[derive(Debug)]
pub struct Live {
    /// Bumped by every reload that changed something.
    pub generation: u64,
    pub routes: Vec<LiveRoute>,
    pub tls: TlsRoutes,
    pub health: HealthSettings,
}

impl Default for Live {
    fn default() -> Live {
        Live {
            generation: 0,
            routes: Vec::new(),
            tls: TlsRoutes::default(),
            health: HealthSettings {
                check: crate::health::Check {
                    kind: crate::health::CheckKind::None,
                    path: "/".into(),
                    interval_ms: 5_000,
                    timeout_ms: 2_000,
                    rise: 2,
                    fall: 3,
                },
                ejection: crate::health::Ejection {
                    failures: 0,
                    window_ms: 10_000,
                    backoff_ms: 5_000,
                    backoff_max_ms: 300_000,
                },
                concurrency: 1,
            },
        }
    }
}

impl Live {
    /// The app route listener `id` serves, `None` once the route is gone.
    pub fn app_of(&self, id: u64) -> Option<&str> {
        self.routes
            .iter()
            .find(|r| r.listener.id == id)
            .map(|r| r.app.as_str())
    }
}

/// The shared, swappable live settings.
#[derive(Debug, Default)]
pub struct LiveCell(ArcSwap<Live>);

impl LiveCell {
    pub fn new(live: Live) -> LiveCell {
        LiveCell(ArcSwap::from_pointee(live))
    }

    #[inline]
    pub fn load(&self) -> arc_swap::Guard<Arc<Live>> {
        self.0.load()
    }

    pub fn load_full(&self) -> Arc<Live> {
        self.0.load_full()
    }

    pub fn store(&self, live: Live) {
        self.0.store(Arc::new(live));
    }
}

/// The live settings an environment file asks for, parsed and validated, before any binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub routes: Vec<Route>,
    pub tls: TlsRoutes,
    pub health: HealthSettings,
}

/// The health settings' variables (their flags are `--health-*`).
const HEALTH_VARS: [&str; 11] = [
    "EDGEPROXY_HEALTH_CHECK",
    "EDGEPROXY_HEALTH_CHECK_PATH",
    "EDGEPROXY_HEALTH_CHECK_INTERVAL_MS",
    "EDGEPROXY_HEALTH_CHECK_TIMEOUT_MS",
    "EDGEPROXY_HEALTH_CHECK_RISE",
    "EDGEPROXY_HEALTH_CHECK_FALL",
    "EDGEPROXY_HEALTH_CHECK_CONCURRENCY",
    "EDGEPROXY_HEALTH_EJECT_FAILURES",
    "EDGEPROXY_HEALTH_EJECT_WINDOW_MS",
    "EDGEPROXY_HEALTH_EJECT_BACKOFF_MS",
    "EDGEPROXY_HEALTH_EJECT_BACKOFF_MAX_MS",
];

/// Whether `EDGEPROXY_*` variable `name` is applied live by [`plan`].
pub fn is_live_var(name: &str) -> bool {
    matches!(
        name,
        "EDGEPROXY_ROUTES" | "EDGEPROXY_TLS_ROUTES" | "EDGEPROXY_TLS_DEFAULT_APP"
    ) || HEALTH_VARS.contains(&name)
}

/// The health settings a file asks for, with exactly the flags' parsers and ranges: the file's
/// values are parsed as the `--health-*` flags by the same command-line definition, with
/// environment fallbacks switched off (the fallback rule of [`plan`] is applied per setting).
fn plan_health(
    vars: &BTreeMap<String, String>,
    in_startup_env: &impl Fn(&str) -> bool,
    startup: &HealthSettings,
) -> Result<HealthSettings, String> {
    use clap::{CommandFactory, FromArgMatches};
    let with_env = crate::config::Args::command();
    let mut argv = vec!["edgeproxy".to_string()];
    for name in HEALTH_VARS {
        if let Some(value) = vars.get(name) {
            let long = with_env
                .get_arguments()
                .find(|a| a.get_env().is_some_and(|e| e == name))
                .and_then(|a| a.get_long())
                .ok_or_else(|| format!("{name}: no such setting"))?;
            argv.push(format!("--{long}={value}"));
        }
    }
    let matches = crate::config::Args::command()
        .mut_args(|a| a.env(None))
        .try_get_matches_from(&argv)
        .map_err(|e| {
            let text = e.render().to_string();
            let line = text.lines().next().unwrap_or("invalid value");
            format!("EDGEPROXY_HEALTH_*: {}", line.trim_start_matches("error: "))
        })?;
    let args = crate::config::Args::from_arg_matches(&matches).map_err(|e| e.to_string())?;
    // In the file, or removed from it (the default): what was parsed; else the startup value.
    let take = |name: &str| vars.contains_key(name) || in_startup_env(name);
    let (c, e) = (&startup.check, &startup.ejection);
    Ok(HealthSettings {
        check: crate::health::Check {
            kind: if take(HEALTH_VARS[0]) {
                args.health_check
            } else {
                c.kind
            },
            path: if take(HEALTH_VARS[1]) {
                args.health_check_path
            } else {
                c.path.clone()
            },
            interval_ms: if take(HEALTH_VARS[2]) {
                args.health_check_interval_ms
            } else {
                c.interval_ms
            },
            timeout_ms: if take(HEALTH_VARS[3]) {
                args.health_check_timeout_ms
            } else {
                c.timeout_ms
            },
            rise: if take(HEALTH_VARS[4]) {
                args.health_check_rise
            } else {
                c.rise
            },
            fall: if take(HEALTH_VARS[5]) {
                args.health_check_fall
            } else {
                c.fall
            },
        },
        concurrency: if take(HEALTH_VARS[6]) {
            args.health_check_concurrency as usize
        } else {
            startup.concurrency
        },
        ejection: crate::health::Ejection {
            failures: if take(HEALTH_VARS[7]) {
                args.health_eject_failures
            } else {
                e.failures
            },
            window_ms: if take(HEALTH_VARS[8]) {
                args.health_eject_window_ms
            } else {
                e.window_ms
            },
            backoff_ms: if take(HEALTH_VARS[9]) {
                args.health_eject_backoff_ms
            } else {
                e.backoff_ms
            },
            backoff_max_ms: if take(HEALTH_VARS[10]) {
                args.health_eject_backoff_max_ms
            } else {
                e.backoff_max_ms
            },
        },
    })
}

/// Reads the live settings out of an environment file's variables (pure).
///
/// A variable absent from the file falls back to its default when the process was started
/// with it in its environment (it came from this file, and was removed since), and to its
/// startup value otherwise (it came from a command-line flag, which the file cannot change).
/// `in_startup_env(name)` says whether the process environment had `name` at startup.
pub fn plan(
    vars: &BTreeMap<String, String>,
    in_startup_env: impl Fn(&str) -> bool,
    startup: &Wanted,
    proxy_port: u16,
) -> Result<Wanted, String> {
    let pick = |name: &str| -> Option<Option<&str>> {
        match vars.get(name) {
            Some(v) => Some(Some(v.as_str())),
            None if in_startup_env(name) => Some(None),
            None => None,
        }
    };
    let routes = match pick("EDGEPROXY_ROUTES") {
        Some(text) => {
            parse_list::<Route>(text.unwrap_or("")).map_err(|e| format!("EDGEPROXY_ROUTES: {e}"))?
        }
        None => startup.routes.clone(),
    };
    let mut ports = std::collections::BTreeSet::new();
    for r in &routes {
        if r.port != 0 && !ports.insert(r.port) {
            return Err(format!("EDGEPROXY_ROUTES: port {} given twice", r.port));
        }
        if r.port != 0 && r.port == proxy_port {
            return Err(format!(
                "EDGEPROXY_ROUTES: port {} is already the proxy's listen port",
                r.port
            ));
        }
    }
    let tls_routes = match pick("EDGEPROXY_TLS_ROUTES") {
        Some(text) => parse_list::<TlsRoute>(text.unwrap_or(""))
            .map_err(|e| format!("EDGEPROXY_TLS_ROUTES: {e}"))?,
        None => startup.tls.routes.clone(),
    };
    let default_app = match pick("EDGEPROXY_TLS_DEFAULT_APP") {
        Some(Some(app)) if !app.trim().is_empty() => {
            let app = app.trim().to_ascii_lowercase();
            if !crate::names::is_dns_name(&app) {
                return Err(format!(
                    "EDGEPROXY_TLS_DEFAULT_APP: '{app}' is not an app name"
                ));
            }
            Some(app)
        }
        Some(_) => None,
        None => startup.tls.default_app.clone(),
    };
    let health = plan_health(vars, &in_startup_env, &startup.health)?;
    Ok(Wanted {
        routes,
        tls: TlsRoutes {
            routes: tls_routes,
            default_app,
        },
        health,
    })
}

fn parse_list<T: std::str::FromStr<Err = String>>(text: &str) -> Result<Vec<T>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::parse)
        .collect()
}

/// How the current routes become the wanted ones.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RouteDiff {
    /// Routes to bind: configured port and app.
    pub add: Vec<Route>,
    /// Listener ids to close.
    pub remove: Vec<u64>,
    /// Listener ids that keep their sockets and serve another app.
    pub change: Vec<(u64, String)>,
}

/// Compares the current routes with the wanted ones (pure). Routes are matched by configured
/// port; port-0 routes (the OS picks) by app, since they have no port to match by.
pub fn diff(current: &[LiveRoute], wanted: &[Route]) -> RouteDiff {
    let mut d = RouteDiff::default();
    let mut matched = vec![false; current.len()];
    for w in wanted {
        let found = current.iter().enumerate().position(|(i, c)| {
            !matched[i] && c.listener.configured_port == w.port && (w.port != 0 || c.app == w.app)
        });
        match found {
            Some(i) => {
                matched[i] = true;
                if current[i].app != w.app {
                    d.change.push((current[i].listener.id, w.app.clone()));
                }
            }
            None => d.add.push(w.clone()),
        }
    }
    for (i, c) in current.iter().enumerate() {
        if !matched[i] {
            d.remove.push(c.listener.id);
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(port: u16, app: &str) -> Route {
        Route {
            port,
            app: app.into(),
        }
    }

    fn live(port: u16, app: &str) -> LiveRoute {
        LiveRoute {
            listener: Arc::new(RouteListener::new(
                port,
                SocketAddr::from(([127, 0, 0, 1], port)),
                Vec::new(),
            )),
            app: app.into(),
        }
    }

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn diff_adds_removes_and_renames() {
        let cur = vec![live(9000, "a"), live(9001, "b"), live(0, "c")];
        let d = diff(
            &cur,
            &[route(9000, "a"), route(9001, "x"), route(9002, "d")],
        );
        assert_eq!(d.add, vec![route(9002, "d")]);
        assert_eq!(d.change, vec![(cur[1].listener.id, "x".to_string())]);
        assert_eq!(d.remove, vec![cur[2].listener.id]);
        // Port-0 routes match by app; the same wanted set is no change at all.
        let d = diff(&cur, &[route(0, "c"), route(9001, "b"), route(9000, "a")]);
        assert_eq!(d, RouteDiff::default());
        // A port-0 route of another app is a new listener, the old one goes.
        let d = diff(&cur[2..], &[route(0, "e")]);
        assert_eq!(d.add, vec![route(0, "e")]);
        assert_eq!(d.remove, vec![cur[2].listener.id]);
    }

    fn health() -> HealthSettings {
        Live::default().health
    }

    #[test]
    fn plan_reads_the_file_and_falls_back_by_origin() {
        let startup = Wanted {
            routes: vec![route(9000, "a")],
            tls: TlsRoutes {
                routes: vec!["x.example=a".parse().unwrap()],
                default_app: Some("a".into()),
            },
            health: health(),
        };
        // In the file: taken from it.
        let w = plan(
            &vars(&[
                ("EDGEPROXY_ROUTES", "9001=B, 9002=c"),
                ("EDGEPROXY_TLS_ROUTES", ""),
                ("EDGEPROXY_TLS_DEFAULT_APP", "d"),
            ]),
            |_| true,
            &startup,
            8080,
        )
        .unwrap();
        assert_eq!(w.routes, vec![route(9001, "b"), route(9002, "c")]);
        assert!(w.tls.routes.is_empty());
        assert_eq!(w.tls.default_app.as_deref(), Some("d"));
        // Absent, but started with it from the environment (the file): removed → default.
        let w = plan(&vars(&[]), |_| true, &startup, 8080).unwrap();
        assert!(w.routes.is_empty() && w.tls.routes.is_empty());
        assert_eq!(w.tls.default_app, None);
        // Absent and never in the environment (a flag): the startup value stays.
        let w = plan(&vars(&[]), |_| false, &startup, 8080).unwrap();
        assert_eq!(w, startup);
    }

    #[test]
    fn plan_refuses_bad_values_whole() {
        let startup = Wanted {
            routes: vec![],
            tls: TlsRoutes::default(),
            health: health(),
        };
        for (k, v, why) in [
            ("EDGEPROXY_ROUTES", "9000", "PORT=APP"),
            ("EDGEPROXY_ROUTES", "9000=a,9000=b", "twice"),
            ("EDGEPROXY_ROUTES", "8080=a", "proxy's listen port"),
            ("EDGEPROXY_ROUTES", "9000=bad_app!", "DNS-safe"),
            ("EDGEPROXY_TLS_ROUTES", "x=a:bogus", "unknown option"),
            ("EDGEPROXY_TLS_DEFAULT_APP", "no spaces", "not an app name"),
            ("EDGEPROXY_HEALTH_CHECK", "icmp", "health-check"),
            (
                "EDGEPROXY_HEALTH_CHECK_INTERVAL_MS",
                "10",
                "health-check-interval-ms",
            ),
            (
                "EDGEPROXY_HEALTH_CHECK_PATH",
                "healthz",
                "health-check-path",
            ),
            (
                "EDGEPROXY_HEALTH_EJECT_FAILURES",
                "-1",
                "health-eject-failures",
            ),
        ] {
            let err = plan(&vars(&[(k, v)]), |_| false, &startup, 8080).unwrap_err();
            assert!(
                (err.contains(k) || k.starts_with("EDGEPROXY_HEALTH")) && err.contains(why),
                "{k}={v}: {err}"
            );
        }
    }

    #[test]
    fn health_settings_parse_like_their_flags_and_fall_back_per_setting() {
        let startup = Wanted {
            routes: vec![],
            tls: TlsRoutes::default(),
            health: health(),
        };
        let file = vars(&[
            ("EDGEPROXY_HEALTH_CHECK", "http"),
            ("EDGEPROXY_HEALTH_CHECK_PATH", "/healthz"),
            ("EDGEPROXY_HEALTH_CHECK_FALL", "1"),
        ]);
        // Not in the file and not in the environment: the startup values stay.
        let w = plan(&file, |_| false, &startup, 8080).unwrap();
        assert_eq!(w.health.check.kind, crate::health::CheckKind::Http);
        assert_eq!(w.health.check.path, "/healthz");
        assert_eq!(w.health.check.fall, 1);
        assert_eq!(w.health.check.rise, startup.health.check.rise);
        assert_eq!(w.health.ejection, startup.health.ejection);
        assert_eq!(w.health.concurrency, 1);
        // Removed from a file the process started with: the flags' defaults.
        let w = plan(&file, |_| true, &startup, 8080).unwrap();
        assert_eq!(w.health.check.interval_ms, 5_000);
        assert_eq!(w.health.ejection.failures, 3);
        assert_eq!(w.health.concurrency, 1024);
    }

    #[test]
    fn a_parked_socket_is_taken_once_and_unclaimed_ones_close() {
        let socks: Vec<Socket> = (0..2)
            .map(|_| {
                Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket")
            })
            .collect();
        let l = RouteListener::new(0, SocketAddr::from(([127, 0, 0, 1], 0)), socks);
        assert!(l.take(0).is_some());
        assert!(l.take(0).is_none());
        assert!(l.take(7).is_none());
        drop(l); // closes shard 1's socket (no leak: nothing to assert beyond not crashing)
    }
}
