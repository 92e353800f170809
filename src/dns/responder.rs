//! The DNS responder: query bytes + zone + snapshot + who asks → answer bytes. Pure: no socket,
//! no clock (the time comes in), no allocation on the `<app>.<zone>` path beyond the caller's
//! reused output buffer (the TXT listings below collect and sort their items in a `Vec`).
//!
//! # Names
//!
//! Every name answers **live backends only** (heartbeat current, not draining, under the hard
//! limit: [`crate::registry::Backend::eligible`]). In the zone `<zone>` (`internal` by default),
//! after lower-casing:
//!
//! | name | type | answer |
//! |---|---|---|
//! | `<app>` | A/AAAA | the best backend for this client ([`crate::select::pick`]) |
//! | `<region>.<app>` | A/AAAA | every live backend of the app in that region (`sa`); a POP code (`gru`) names its region's backends in its country (`BR`) |
//! | `top<N>.nearest.of.<app>` | A/AAAA | the N best for this client, best first (N ≥ 1, at most [`MAX_NEAREST`]; more is capped) |
//! | `_<app>._tcp` | SRV | every live backend: priority 0 in the client's region, 1 in the hub's, 2 elsewhere; weight = the backend's; its port; target `<id>.vm.<app>` with its address in the additional section |
//! | `<id>.vm.<app>` | A/AAAA | that backend |
//! | `_apps` | TXT | the apps with a live backend, comma-separated |
//! | `regions.<app>` | TXT | the app's regions with a live backend, comma-separated |
//! | `vms.<app>` | TXT | `<id> <region>` of each live backend, comma-separated (Fly.io's format) |
//! | `<region>.backends` | A/AAAA | every live backend in that region, of every app (edgeProxy's `nrt.backends.internal`) |
//! | `<region>.pops` | A/AAAA | the POPs serving that region: this hub, when `<region>` is its `--region`, at `--dns-pop-addr` or else the address the query arrived on (edgeProxy's `hkg.pops.internal`; other hubs are not known here) |
//! | the apex | SOA, NS | `ns.<zone>` answers with the address the query arrived on |
//!
//! TXT lists are sorted, split into character-strings of at most 255 bytes, a new string
//! starting before an item that would not fit; the list is their concatenation.
//! Address sets are sorted by address, each address once.
//!
//! **Precedence.** App names contain dots (`gru.pop`) and are chosen by whoever registers, so a
//! name could read two ways. It is read the first way that applies:
//! 1. `ns` is the nameserver (so `ns` cannot be an app's DNS name);
//! 2. a registered app's exact name is that app: `sa.web` when an app `sa.web` exists, even
//!    though `sa` of app `web` could be meant too; likewise `regions.web`, `top2.nearest.of.web`;
//! 3. `_apps`, then `_<app>._tcp` (app names have no `_`, so these never collide with 2);
//! 4. the keyword forms whose suffix is a registered app: `top<N>.nearest.of.<app>`,
//!    `regions.<app>`, `vms.<app>`, then `<id>.vm.<app>` at the leftmost `vm` label
//!    whose suffix is an app; so a region named `regions`, `vms` or `vm` is not reachable as
//!    `<region>.<app>` (use `_<app>._tcp` or `vms.<app>`), and `top<bad N>.nearest.of.<app>`
//!    (`top0`, `topx`, `top01`) is NXDOMAIN, not a region;
//! 5. `<region>.<app>` when the rest is a registered app;
//! 6. `<region>.backends`, `<region>.pops`: an app named `backends` or `pops` wins by 5.
//!
//! # Answers
//!
//! - A name that does not exist right now: NXDOMAIN with the SOA. An app (or a region of it, a
//!   backend id) with no live backend does not exist, as Consul answers for a service without a
//!   healthy instance; resolvers then cache the absence for the SOA minimum (the TTL, 5 s by
//!   default) instead of holding on to a dead address.
//! - A name that exists with no record of the asked type (AAAA of an IPv4 backend, TXT of an
//!   app...): NOERROR with no answer (NODATA) and the SOA. `<app>` answers ANY with its address.
//! - Empty non-terminals get NODATA, never NXDOMAIN, which would tell RFC 8020 resolvers that
//!   nothing below exists either: `pop` when `gru.pop` exists, `vm.<app>`, `of.<app>`,
//!   `nearest.of.<app>`, `backends`, `pops`, `_tcp`, and `pop._tcp` (above `_gru.pop._tcp`).
//! - Names outside the zone: REFUSED (no recursion). Class other than IN or ANY: REFUSED: we
//!   hold no data in any other class (CHAOS `version.bind` probes included).
//! - Opcode other than QUERY, and zone transfers (AXFR, IXFR): NOTIMP.
//! - Malformed queries: FORMERR when the header is readable, silence when not. Responses
//!   (QR=1) are dropped so that two servers can never be made to bounce packets at each other.
//! - EDNS0: an OPT in the query gets one in the answer; EDNS version > 0 gets BADVERS.
//!   Over UDP the answer must fit the client's size (512 without EDNS, and never more than
//!   our own maximum); over TCP, 64 KiB. What does not fit is cut at record boundaries (see
//!   [`Message::finish`]): additional records silently, answer records with TC set.
//!
//! # EDNS Client Subnet (RFC 7871)
//!
//! With ECS honoured (`--dns-ecs`, on by default: the overlay's resolvers are ours), a query's
//! ECS address, masked to its source prefix, replaces the packet's source as the client for
//! geography and stickiness (a source prefix of 0 discloses nothing: the packet's source is
//! used). The answer echoes the option with SCOPE PREFIX-LENGTH = the source prefix for names
//! whose answer depends on the client (`<app>`, `top<N>.nearest.of.<app>`, `_<app>._tcp`:
//! stickiness hashes every disclosed bit), 0 for the others. A malformed ECS option (wrong
//! length, unknown family, bits past the prefix, a non-zero scope, two options) is FORMERR.
//! With `--dns-ecs=false` the option is ignored and not echoed, as by a server that does not
//! know it.

use super::query::{self, ClientSubnet, Header, Question, MAX_NAME_LEN};
use super::wire::{
    EcsEcho, Message, NameRef, Opt, Rcode, Section, Soa, CLASS_ANY, CLASS_IN, FLAG_AA, FLAG_CD,
    FLAG_QR, FLAG_RD, FLAG_TC, MIN_UDP_SIZE, OPCODE_MASK, QNAME_OFFSET, TYPE_A, TYPE_AAAA,
    TYPE_ANY, TYPE_AXFR, TYPE_IXFR, TYPE_NS, TYPE_OPT, TYPE_SOA, TYPE_SRV, TYPE_TXT,
};
use crate::config::Config;
use crate::geo::{Country, Geo, RegionMap};
use crate::registry::{Backend, Snapshot};
use crate::select::{pick_with, Client, Policy, Scope};
use std::net::IpAddr;
use std::sync::Arc;

/// SOA timers. Nothing transfers this zone (no secondaries), so these only need to be sane.
const SOA_REFRESH: u32 = 3600;
const SOA_RETRY: u32 = 600;
const SOA_EXPIRE: u32 = 86_400;

/// The largest DNS message (TCP's 2-byte length).
pub const MAX_MESSAGE: usize = 65_535;

/// The most backends `top<N>.nearest.of.<app>` answers (a larger N is capped to this).
pub const MAX_NEAREST: usize = 16;

/// What the responder needs from the configuration, prepared once per server.
#[derive(Debug, Clone)]
pub struct Zone {
    /// The zone name in wire form, lower-case, ending with the root byte.
    wire: Vec<u8>,
    /// Its number of labels.
    labels: usize,
    /// TTL of answers, and SOA minimum (negative caching).
    ttl: u32,
    /// The UDP payload size we advertise in OPT, and the most we send over UDP.
    max_udp_size: u16,
    hub_region: String,
    /// Who the asking client is (region map, GeoIP).
    geo: Arc<Geo>,
    balance_factor: f64,
    /// Whether a query's EDNS Client Subnet stands for the client.
    ecs: bool,
    /// This hub's address for `<region>.pops` (else the address the query arrived on).
    pop_addr: Option<IpAddr>,
}

impl Zone {
    /// `name` is a validated DNS name (see `config`), without trailing dot. ECS is honoured;
    /// see [`Zone::with_ecs`].
    pub fn new(
        name: &str,
        ttl: u32,
        max_udp_size: u16,
        hub_region: &str,
        region_map: RegionMap,
    ) -> Zone {
        let mut wire = Vec::with_capacity(name.len() + 2);
        let mut labels = 0;
        for label in name.split('.').filter(|l| !l.is_empty()) {
            wire.push(label.len() as u8);
            wire.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
            labels += 1;
        }
        wire.push(0);
        Zone {
            wire,
            labels,
            ttl,
            max_udp_size,
            hub_region: hub_region.to_ascii_lowercase(),
            geo: Arc::new(Geo::with_map(region_map)),
            balance_factor: crate::select::DEFAULT_BALANCE_FACTOR,
            ecs: true,
            pop_addr: None,
        }
    }

    /// Whether EDNS Client Subnet is honoured (see the module docs).
    pub fn with_ecs(mut self, honour: bool) -> Zone {
        self.ecs = honour;
        self
    }

    /// This hub's address on the overlay, answered for `<hub region>.pops`.
    pub fn with_pop_addr(mut self, addr: Option<IpAddr>) -> Zone {
        self.pop_addr = addr;
        self
    }

    pub fn from_config(cfg: &Config) -> Zone {
        let mut zone = Zone::new(
            &cfg.dns_zone,
            cfg.dns_ttl_secs,
            cfg.dns_max_udp_size,
            &cfg.region,
            RegionMap::new(Vec::new()),
        )
        .with_ecs(cfg.dns_ecs)
        .with_pop_addr(cfg.dns_pop_addr);
        zone.geo = cfg.geo.clone();
        zone.balance_factor = cfg.balance_factor;
        zone
    }

    pub fn max_udp_size(&self) -> u16 {
        self.max_udp_size
    }
}

/// How the answer travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `max_size`: the most we send over UDP (the configured maximum; smaller only in tests).
    Udp {
        max_size: u16,
    },
    Tcp,
}

/// The circumstances of one query.
#[derive(Debug, Clone, Copy)]
pub struct Exchange {
    /// Who asks: chooses the backend (region, stickiness), unless an honoured ECS option says
    /// whom the query is for.
    pub client: IpAddr,
    /// The address the query arrived on, when known: the answer for `ns.<zone>`.
    pub server: Option<IpAddr>,
    pub transport: Transport,
    /// Process clock: backends past their heartbeat deadline are not answered.
    pub now_ms: u64,
}

/// What the responder did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// An answer was appended to the output buffer.
    Answered { rcode: Rcode, truncated: bool },
    /// Nothing to send: not a query, or not even a header.
    Dropped,
}

/// Where a question name falls, relative to the zone.
enum Place {
    Apex,
    /// The lower-case text of the labels below the apex (`len` bytes of the buffer).
    Below(usize),
    /// Labels that cannot be any of our names (characters other than letters, digits, `-`, `_`).
    Invalid,
}

/// What a name below the apex means: see "Precedence" in the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form<'t> {
    Nameserver,
    App(&'t str),
    AppList,
    Srv(&'t str),
    Nearest { n: usize, app: &'t str },
    Regions(&'t str),
    Vms(&'t str),
    Vm { id: &'t str, app: &'t str },
    AppRegion { region: &'t str, app: &'t str },
    Backends(&'t str),
    Pops(&'t str),
    Unknown,
}

/// Answers `packet`, appending the answer to `out` (whose existing bytes are left alone).
pub fn respond(
    packet: &[u8],
    zone: &Zone,
    snap: &Snapshot,
    ex: &Exchange,
    out: &mut Vec<u8>,
) -> Outcome {
    respond_typed(packet, zone, snap, ex, out).0
}

/// [`respond`], also returning the question's type when the query could be read (for metrics).
pub fn respond_typed(
    packet: &[u8],
    zone: &Zone,
    snap: &Snapshot,
    ex: &Exchange,
    out: &mut Vec<u8>,
) -> (Outcome, Option<u16>) {
    let Some(header) = Header::read(packet) else {
        return (Outcome::Dropped, None);
    };
    if header.is_response() {
        return (Outcome::Dropped, None);
    }
    let flags = FLAG_QR | (header.flags & (OPCODE_MASK | FLAG_RD | FLAG_CD));
    let parsed = query::parse(packet, header);
    let limit = match ex.transport {
        Transport::Tcp => MAX_MESSAGE,
        Transport::Udp { max_size } => {
            let client = match parsed {
                Ok(query::Query {
                    edns: Some(edns), ..
                }) => edns.udp_size.max(MIN_UDP_SIZE),
                _ => MIN_UDP_SIZE,
            };
            usize::from(client.min(max_size))
        }
    };
    let mut msg = Message::begin(out, header.id, flags);
    msg.set_limit(limit);
    let q = match parsed {
        Ok(q) => q,
        Err(_) => {
            let rcode = if header.opcode() != 0 {
                Rcode::NotImp
            } else {
                Rcode::FormErr
            };
            msg.set_rcode(rcode);
            let truncated = msg.finish(None, limit);
            return (Outcome::Answered { rcode, truncated }, None);
        }
    };
    let mut opt = q.edns.map(|e| Opt {
        udp_size: e
            .udp_size
            .clamp(MIN_UDP_SIZE, zone.max_udp_size.max(MIN_UDP_SIZE)),
        dnssec_ok: e.dnssec_ok,
        ecs: None,
    });
    let ecs = match q.edns.and_then(|e| e.client_subnet) {
        Some(ecs) if zone.ecs => Some(ecs),
        _ => None,
    };
    msg.question(q.question.raw);
    let (rcode, scoped) = match ecs {
        Some(Err(_)) => (Rcode::FormErr, false),
        Some(Ok(ClientSubnet { source: 0, .. })) | None => {
            answer(&mut msg, &q, zone, snap, ex, ex.client)
        }
        Some(Ok(subnet)) => answer(&mut msg, &q, zone, snap, ex, subnet.addr),
    };
    if let (Some(opt), Some(Ok(subnet))) = (opt.as_mut(), ecs) {
        opt.ecs = Some(EcsEcho {
            family: subnet.family,
            source: subnet.source,
            scope: if scoped { subnet.source } else { 0 },
            addr: subnet.addr_bytes(),
        });
    }
    msg.set_rcode(rcode);
    let truncated = msg.finish(opt.as_ref(), limit);
    (
        Outcome::Answered { rcode, truncated },
        Some(q.question.qtype),
    )
}

/// What one answer needs to know besides the message it writes.
struct Ask<'z> {
    zone: &'z Zone,
    snap: &'z Snapshot,
    ex: &'z Exchange,
    /// The client for geography and stickiness: the packet's source or the ECS address.
    client_ip: IpAddr,
    qtype: u16,
    soa: Soa,
}

impl Ask<'_> {
    fn client(&self) -> Client<'_> {
        Client::at(self.client_ip, self.zone.geo.locate(self.client_ip))
    }

    /// The best live backend of `group` for this client among those `keep` accepts and not
    /// in `exclude`, by the zone's routing policy.
    fn pick<'s>(
        &self,
        group: &'s crate::registry::AppGroup,
        exclude: &[u64],
        keep: impl Fn(&Backend) -> bool,
    ) -> Option<&'s Arc<Backend>> {
        let policy = Policy {
            hub_region: &self.zone.hub_region,
            regions: self.zone.geo.regions(),
            balance_factor: self.zone.balance_factor,
        };
        let client = self.client();
        pick_with(
            Scope::App(group),
            &client,
            &policy,
            self.now(),
            exclude,
            keep,
        )
        .map(|(b, _)| b)
    }

    fn now(&self) -> u64 {
        self.ex.now_ms
    }

    fn wants(&self, ip: IpAddr) -> bool {
        wants(self.qtype, ip)
    }

    /// NODATA: the name exists, without records of the asked type.
    fn nodata(&self, msg: &mut Message<'_>) -> Rcode {
        msg.soa(Section::Authority, self.zone.ttl, &self.soa);
        Rcode::NoError
    }

    /// The name has no live data: NODATA when names exist below it, else NXDOMAIN.
    fn absent(&self, msg: &mut Message<'_>, name: &str) -> Rcode {
        msg.soa(Section::Authority, self.zone.ttl, &self.soa);
        if empty_non_terminal(self.snap, name) {
            Rcode::NoError
        } else {
            Rcode::NxDomain
        }
    }
}

/// Writes the records for a parsed query; returns the rcode, and whether the answer depended
/// on the client's address (the ECS scope).
fn answer(
    msg: &mut Message<'_>,
    q: &query::Query<'_>,
    zone: &Zone,
    snap: &Snapshot,
    ex: &Exchange,
    client_ip: IpAddr,
) -> (Rcode, bool) {
    if q.header.opcode() != 0 {
        return (Rcode::NotImp, false);
    }
    if q.edns.is_some_and(|e| e.version != 0) {
        return (Rcode::BadVers, false);
    }
    let question = &q.question;
    if question.qtype == TYPE_OPT {
        return (Rcode::FormErr, false);
    }
    if question.qclass != CLASS_IN && question.qclass != CLASS_ANY {
        return (Rcode::Refused, false);
    }
    let mut name_buf = [0u8; MAX_NAME_LEN];
    let Some(zone_at) = zone_offset(question, zone) else {
        return (Rcode::Refused, false);
    };
    if question.qtype == TYPE_AXFR || question.qtype == TYPE_IXFR {
        return (Rcode::NotImp, false);
    }
    let place = classify(question, zone, &mut name_buf);
    let ask = Ask {
        zone,
        snap,
        ex,
        client_ip,
        qtype: question.qtype,
        soa: Soa {
            zone_at,
            serial: snap.version as u32,
            refresh: SOA_REFRESH,
            retry: SOA_RETRY,
            expire: SOA_EXPIRE,
            minimum: zone.ttl,
        },
    };
    let ttl = zone.ttl;
    let qtype = question.qtype;
    let owner = NameRef::At(QNAME_OFFSET);
    msg.add_flags(FLAG_AA);
    let text = match place {
        Place::Apex => {
            let ns_name = NameRef::LabelThen(b"ns", zone_at);
            let mut any = false;
            if qtype == TYPE_SOA || qtype == TYPE_ANY {
                msg.soa(Section::Answer, ttl, &ask.soa);
                any = true;
            }
            if qtype == TYPE_NS || qtype == TYPE_ANY {
                msg.ns(Section::Answer, owner, ttl, ns_name);
                if let Some(ip) = ex.server {
                    address(msg, Section::Additional, ns_name, ttl, ip);
                }
                any = true;
            }
            if !any {
                msg.soa(Section::Authority, ttl, &ask.soa);
            }
            return (Rcode::NoError, false);
        }
        Place::Invalid => {
            msg.soa(Section::Authority, ttl, &ask.soa);
            return (Rcode::NxDomain, false);
        }
        // Only DNS-safe ASCII was copied into the buffer (see `classify`).
        Place::Below(len) => std::str::from_utf8(&name_buf[..len]).unwrap_or(""),
    };
    match parse_name(text, snap) {
        Form::Nameserver => {
            match ex.server {
                Some(ip) if wants(qtype, ip) => address(msg, Section::Answer, owner, ttl, ip),
                _ => msg.soa(Section::Authority, ttl, &ask.soa),
            }
            (Rcode::NoError, false)
        }
        Form::App(app) => (best(msg, &ask, app), true),
        Form::Nearest { n, app } => (nearest(msg, &ask, app, n, text), true),
        Form::Srv(app) => (srv(msg, &ask, app, zone_at, text), true),
        Form::AppRegion { region, app } => {
            let (region, country) = region_label(zone, region);
            let group = snap.app(app);
            let live = || {
                group
                    .into_iter()
                    .flat_map(move |g| g.region(region))
                    .filter(|b| b.eligible(ex.now_ms) && in_country(b, country))
            };
            (address_set(msg, &ask, live, text), false)
        }
        Form::Backends(region) => {
            let (region, country) = region_label(zone, region);
            let live = || {
                snap.groups()
                    .flat_map(move |g| g.region(region))
                    .filter(|b| b.eligible(ex.now_ms) && in_country(b, country))
            };
            (address_set(msg, &ask, live, text), false)
        }
        Form::Vm { id, app } => {
            let found = snap
                .app(app)
                .and_then(|g| g.get(id))
                .filter(|b| b.eligible(ex.now_ms));
            let rcode = match found {
                Some(b) if ask.wants(b.ip) => {
                    address(msg, Section::Answer, owner, ttl, b.ip);
                    Rcode::NoError
                }
                Some(_) => ask.nodata(msg),
                None => ask.absent(msg, text),
            };
            (rcode, false)
        }
        Form::Pops(region) => {
            let rcode = if region_label(zone, region).0 == zone.hub_region {
                match zone.pop_addr.or(ex.server) {
                    Some(ip) if ask.wants(ip) => {
                        address(msg, Section::Answer, owner, ttl, ip);
                        Rcode::NoError
                    }
                    _ => ask.nodata(msg),
                }
            } else {
                ask.absent(msg, text)
            };
            (rcode, false)
        }
        Form::AppList => {
            let mut apps: Vec<&str> = snap
                .groups()
                .filter(|g| g.backends().any(|b| b.eligible(ex.now_ms)))
                .map(|g| g.name())
                .collect();
            apps.sort_unstable();
            let rcode = if apps.is_empty() {
                ask.nodata(msg)
            } else {
                listing(msg, &ask, apps.iter().map(|a| [a.as_bytes(), b"", b""]))
            };
            (rcode, false)
        }
        Form::Regions(app) => {
            let mut regions: Vec<&str> = live_members(snap, app, ex.now_ms)
                .map(|b| b.region.as_str())
                .collect();
            regions.sort_unstable();
            regions.dedup();
            let rcode = if regions.is_empty() {
                ask.absent(msg, text)
            } else {
                listing(msg, &ask, regions.iter().map(|r| [r.as_bytes(), b"", b""]))
            };
            (rcode, false)
        }
        Form::Vms(app) => {
            let mut vms: Vec<(&str, &str)> = live_members(snap, app, ex.now_ms)
                .map(|b| (b.id.as_str(), b.region.as_str()))
                .collect();
            vms.sort_unstable();
            let rcode = if vms.is_empty() {
                ask.absent(msg, text)
            } else {
                listing(
                    msg,
                    &ask,
                    vms.iter()
                        .map(|(id, region)| [id.as_bytes(), b" ", region.as_bytes()]),
                )
            };
            (rcode, false)
        }
        Form::Unknown => (ask.absent(msg, text), false),
    }
}

/// The live backends of `app`.
fn live_members<'s>(
    snap: &'s Snapshot,
    app: &str,
    now_ms: u64,
) -> impl Iterator<Item = &'s Arc<Backend>> + 's {
    snap.app(app)
        .into_iter()
        .flat_map(|g| g.backends())
        .filter(move |b| b.eligible(now_ms))
}

/// `<app>`: the best live backend for this client among those of the asked address family
/// (an app with IPv4 and IPv6 backends answers A with the best IPv4 one and AAAA with the best
/// IPv6 one, not NODATA when the overall best has the other family).
fn best(msg: &mut Message<'_>, ask: &Ask<'_>, app: &str) -> Rcode {
    let Some(group) = ask.snap.app(app) else {
        return ask.absent(msg, app);
    };
    if let Some(backend) = ask.pick(group, &[], |b| ask.wants(b.ip)) {
        address(
            msg,
            Section::Answer,
            NameRef::At(QNAME_OFFSET),
            ask.zone.ttl,
            backend.ip,
        );
        return Rcode::NoError;
    }
    // No live backend of that family (or not an address query): NODATA while the app has a
    // live backend at all, else it does not exist (as Consul).
    match ask.pick(group, &[], |_| true) {
        Some(_) => ask.nodata(msg),
        None => ask.absent(msg, app),
    }
}

/// `top<N>.nearest.of.<app>`: the `n` best addresses for this client, best first.
fn nearest(msg: &mut Message<'_>, ask: &Ask<'_>, app: &str, n: usize, name: &str) -> Rcode {
    let Some(group) = ask.snap.app(app) else {
        return ask.absent(msg, name);
    };
    if ask.pick(group, &[], |_| true).is_none() {
        return ask.absent(msg, name);
    }
    // N distinct addresses: backends sharing an address (ports apart) count once, at the cost
    // of more picks, at most twice N (each pick scans the app's candidates).
    let mut tried = [0u64; 2 * MAX_NEAREST];
    let mut sent = [IpAddr::from([0u8; 4]); MAX_NEAREST];
    let (mut k, mut written) = (0, 0);
    while written < n.min(MAX_NEAREST) && k < tried.len() {
        let Some(b) = ask.pick(group, &tried[..k], |b| ask.wants(b.ip)) else {
            break;
        };
        tried[k] = b.key;
        k += 1;
        if !sent[..written].contains(&b.ip) {
            sent[written] = b.ip;
            written += 1;
            let owner = NameRef::At(QNAME_OFFSET);
            address(msg, Section::Answer, owner, ask.zone.ttl, b.ip);
        }
    }
    if written == 0 {
        ask.nodata(msg)
    } else {
        Rcode::NoError
    }
}

/// Every address of `live()` (a repeatable iterator of live backends) as the answer: one
/// sorted, duplicate-free RRset per address family asked for.
fn address_set<'b, I>(
    msg: &mut Message<'_>,
    ask: &Ask<'_>,
    live: impl Fn() -> I,
    name: &str,
) -> Rcode
where
    I: Iterator<Item = &'b Arc<Backend>>,
{
    if live().next().is_none() {
        return ask.absent(msg, name);
    }
    let owner = NameRef::At(QNAME_OFFSET);
    let ttl = ask.zone.ttl;
    let mut stopped = false;
    for v4 in [true, false] {
        let rtype = if v4 { TYPE_A } else { TYPE_AAAA };
        if ask.qtype != rtype && ask.qtype != TYPE_ANY {
            continue;
        }
        let from = msg.len();
        for b in live().filter(|b| b.ip.is_ipv4() == v4) {
            if msg.full() {
                stopped = true;
                break;
            }
            address(msg, Section::Answer, owner, ttl, b.ip);
        }
        if v4 {
            msg.dedupe_answers::<16>(from);
        } else {
            msg.dedupe_answers::<28>(from);
        }
    }
    if stopped {
        // Records were left out (the cut in `finish` may not see it once duplicates went).
        msg.add_flags(FLAG_TC);
    }
    if msg.answers() == 0 {
        ask.nodata(msg)
    } else {
        Rcode::NoError
    }
}

/// `_<app>._tcp`: an SRV record per live backend, by priority, and their addresses.
fn srv(msg: &mut Message<'_>, ask: &Ask<'_>, app: &str, zone_at: u16, name: &str) -> Rcode {
    let now = ask.now();
    let Some(group) = ask.snap.app(app) else {
        return ask.absent(msg, name);
    };
    if !group.backends().any(|b| b.eligible(now)) {
        return ask.absent(msg, name);
    }
    if ask.qtype != TYPE_SRV && ask.qtype != TYPE_ANY {
        return ask.nodata(msg);
    }
    let client = ask.client();
    let hub = ask.zone.hub_region.as_str();
    let priority = |b: &Backend| {
        if client.region == Some(b.region.as_str()) {
            0
        } else if b.region == hub {
            1
        } else {
            2
        }
    };
    let in_order = || {
        (0..3u16).flat_map(move |p| {
            group
                .backends()
                .filter(move |b| b.eligible(now) && priority(b) == p)
                .map(move |b| (p, b))
        })
    };
    // The first target is written out as `<id>.vm.<app>` + zone; later ones as `<id>` + a
    // pointer to its `vm` label.
    let mut first = [0u8; MAX_NAME_LEN];
    first[..3].copy_from_slice(b"\x02vm");
    let Some(app_len) = wire_labels(app, &mut first[3..]) else {
        return ask.nodata(msg);
    };
    let first_len = 3 + app_len;
    let suffix_len = first_len + ask.zone.wire.len();
    let mut vm_at: Option<u16> = None;
    let owner = NameRef::At(QNAME_OFFSET);
    let ttl = ask.zone.ttl;
    let mut written = 0usize;
    let mut id_wire = [0u8; MAX_NAME_LEN];
    for (p, b) in in_order() {
        let Some(id_len) = wire_labels(&b.id, &mut id_wire) else {
            continue;
        };
        if id_len + suffix_len > MAX_NAME_LEN {
            continue;
        }
        if msg.full() {
            msg.add_flags(FLAG_TC);
            break;
        }
        let weight = b.weight.min(u32::from(u16::MAX)) as u16;
        match vm_at {
            Some(at) => {
                msg.srv(
                    Section::Answer,
                    owner,
                    ttl,
                    p,
                    weight,
                    b.port,
                    NameRef::WireThen(&id_wire[..id_len], at),
                );
            }
            None => {
                let mut full = [0u8; MAX_NAME_LEN];
                full[..id_len].copy_from_slice(&id_wire[..id_len]);
                full[id_len..id_len + first_len].copy_from_slice(&first[..first_len]);
                let target = NameRef::WireThen(&full[..id_len + first_len], zone_at);
                let at = msg.srv(Section::Answer, owner, ttl, p, weight, b.port, target);
                vm_at = Some((at + id_len) as u16);
            }
        }
        written += 1;
    }
    let Some(vm_at) = vm_at else {
        return ask.nodata(msg);
    };
    // Additional records: what does not fit is left out without TC (RFC 2181 section 9).
    let mut done = 0;
    for (_, b) in in_order() {
        if done == written || msg.full() {
            break;
        }
        let Some(id_len) = wire_labels(&b.id, &mut id_wire) else {
            continue;
        };
        if id_len + suffix_len > MAX_NAME_LEN {
            continue;
        }
        let target = NameRef::WireThen(&id_wire[..id_len], vm_at);
        address(msg, Section::Additional, target, ttl, b.ip);
        done += 1;
    }
    Rcode::NoError
}

/// Writes `name`'s labels in wire form (no root byte) into `out`; `None` when a label is
/// empty or too long, or `out` too short.
fn wire_labels(name: &str, out: &mut [u8]) -> Option<usize> {
    let mut len = 0;
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 || len + 1 + label.len() > out.len() {
            return None;
        }
        out[len] = label.len() as u8;
        out[len + 1..len + 1 + label.len()].copy_from_slice(label.as_bytes());
        len += 1 + label.len();
    }
    Some(len)
}

/// One TXT record listing `items` (each the concatenation of its three parts), or NODATA
/// when TXT was not asked for.
fn listing<'i>(
    msg: &mut Message<'_>,
    ask: &Ask<'_>,
    items: impl Iterator<Item = [&'i [u8]; 3]>,
) -> Rcode {
    if ask.qtype != TYPE_TXT && ask.qtype != TYPE_ANY {
        return ask.nodata(msg);
    }
    let mut txt = msg.txt_begin(Section::Answer, NameRef::At(QNAME_OFFSET), ask.zone.ttl);
    for parts in items {
        if !msg.txt_item(&mut txt, &parts) {
            break;
        }
    }
    if !msg.txt_end(txt) {
        // The list did not fit one record: say so rather than answer part of it silently.
        msg.add_flags(FLAG_TC);
    }
    Rcode::NoError
}

/// Whether a query of `qtype` is answered by the address `ip`.
fn wants(qtype: u16, ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(_) => qtype == TYPE_A || qtype == TYPE_ANY,
        IpAddr::V6(_) => qtype == TYPE_AAAA || qtype == TYPE_ANY,
    }
}

fn address(msg: &mut Message<'_>, section: Section, name: NameRef<'_>, ttl: u32, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => msg.a(section, name, ttl, v4),
        IpAddr::V6(v6) => msg.aaaa(section, name, ttl, v6),
    }
}

/// Where the zone apex starts in the message, when the question name is in the zone.
fn zone_offset(question: &Question<'_>, zone: &Zone) -> Option<u16> {
    let name = question.name;
    if name.len() < zone.wire.len() {
        return None;
    }
    // Walk label by label so the suffix compared starts on a label boundary.
    let mut at = 0;
    loop {
        let rest = &name[at..];
        if rest.len() == zone.wire.len() {
            // Length bytes are below 64, so ASCII case folding leaves them alone.
            return rest
                .eq_ignore_ascii_case(&zone.wire)
                .then_some(QNAME_OFFSET + at as u16);
        }
        let len = usize::from(*rest.first()?);
        if len == 0 {
            return None;
        }
        at += 1 + len;
        if at > name.len() {
            return None;
        }
    }
}

/// Classifies an in-zone name; below the apex, writes its lower-case text form into `buf`.
fn classify(question: &Question<'_>, zone: &Zone, buf: &mut [u8; MAX_NAME_LEN]) -> Place {
    let own = question.labels().count().saturating_sub(zone.labels);
    if own == 0 {
        return Place::Apex;
    }
    let mut len = 0;
    for (n, label) in question.labels().take(own).enumerate() {
        if !label
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
        {
            return Place::Invalid;
        }
        if n > 0 {
            buf[len] = b'.';
            len += 1;
        }
        // A wire name is at most 255 bytes, so its text form (one byte less) fits.
        for &b in label {
            buf[len] = b.to_ascii_lowercase();
            len += 1;
        }
    }
    Place::Below(len)
}

/// Reads a name below the apex (lower-case text): see "Precedence" in the module docs.
fn parse_name<'t>(text: &'t str, snap: &Snapshot) -> Form<'t> {
    let is_app = |name: &str| snap.app(name).is_some();
    if text == "ns" {
        return Form::Nameserver;
    }
    if is_app(text) {
        return Form::App(text);
    }
    if text == "_apps" {
        return Form::AppList;
    }
    if let Some(app) = text.strip_prefix('_').and_then(|t| t.strip_suffix("._tcp")) {
        return if is_app(app) {
            Form::Srv(app)
        } else {
            Form::Unknown
        };
    }
    let Some((first, rest)) = text.split_once('.') else {
        return Form::Unknown;
    };
    if let (Some(n), Some(app)) = (first.strip_prefix("top"), rest.strip_prefix("nearest.of.")) {
        if is_app(app) {
            return match top_n(n) {
                Some(n) => Form::Nearest { n, app },
                None => Form::Unknown,
            };
        }
    }
    if is_app(rest) {
        match first {
            "regions" => return Form::Regions(rest),
            "vms" => return Form::Vms(rest),
            _ => {}
        }
    }
    // `<id>.vm.<app>`: the leftmost `vm` label whose suffix is an app (ids may have dots).
    let mut from = 0;
    while let Some(i) = text[from..].find(".vm.") {
        let at = from + i;
        let app = &text[at + 4..];
        if is_app(app) {
            return Form::Vm {
                id: &text[..at],
                app,
            };
        }
        from = at + 1;
    }
    if is_app(rest) {
        return Form::AppRegion {
            region: first,
            app: rest,
        };
    }
    match rest {
        "backends" => Form::Backends(first),
        "pops" => Form::Pops(first),
        _ => Form::Unknown,
    }
}

/// The region a name's region label stands for: a region, or a POP code standing for its
/// region and country (`gru` → `sa`, `BR`: the backends registered as `gru`, which are stored
/// as `sa` with country `BR`). A code the vocabulary does not know is kept as it is (records
/// restored or replicated with it still match).
fn region_label<'z>(zone: &'z Zone, label: &'z str) -> (&'z str, Option<Country>) {
    match zone.geo.regions().resolve(label) {
        Ok((region, country)) => (region, country),
        Err(_) => (label, None),
    }
}

/// Whether `b` is in `country` (any country when `None`).
fn in_country(b: &Backend, country: Option<Country>) -> bool {
    country.is_none_or(|cc| b.country.as_deref() == Some(cc.as_str()))
}

/// The N of `top<N>`: a decimal number from 1 without leading zeros, capped at
/// [`MAX_NEAREST`].
fn top_n(digits: &str) -> Option<usize> {
    let b = digits.as_bytes();
    if b.is_empty() || b[0] == b'0' || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if b.len() > 3 {
        return Some(MAX_NEAREST);
    }
    digits.parse::<usize>().ok().map(|n| n.min(MAX_NEAREST))
}

/// Whether `name` has no data of its own but names below it: see the module docs.
fn empty_non_terminal(snap: &Snapshot, name: &str) -> bool {
    if has_apps_below(snap, name) {
        return true;
    }
    if snap.is_empty() {
        return false;
    }
    if matches!(name, "backends" | "pops" | "_tcp") {
        return true;
    }
    if let Some(inner) = name.strip_suffix("._tcp") {
        return !inner.starts_with('_') && has_apps_below(snap, inner);
    }
    ["vm.", "of.", "nearest.of."].iter().any(|kw| {
        name.strip_prefix(kw)
            .is_some_and(|app| snap.app(app).is_some())
    })
}

/// Whether some app's name ends with `.<name>`: `name` is then an empty non-terminal.
fn has_apps_below(snap: &Snapshot, name: &str) -> bool {
    snap.groups().map(|g| g.name()).any(|app| {
        app.len() > name.len() + 1
            && app.ends_with(name)
            && app.as_bytes()[app.len() - name.len() - 1] == b'.'
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::wire::{FLAG_TC, HEADER_LEN};
    use crate::registry::{BackendSpec, Registry, SnapshotCell};
    use dns_parser::{Packet, RData, ResponseCode};
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    const SEED: [(&str, &str, &str, &str); 10] = [
        ("pop-gru", "gru.pop", "sa", "10.50.1.1"),
        ("pop-iad", "iad.pop", "us", "10.50.2.1"),
        ("pop-ord", "ord.pop", "us", "10.50.2.2"),
        ("pop-lax", "lax.pop", "us", "10.50.2.3"),
        ("pop-lhr", "lhr.pop", "eu", "10.50.3.1"),
        ("pop-fra", "fra.pop", "eu", "10.50.3.2"),
        ("pop-cdg", "cdg.pop", "eu", "10.50.3.3"),
        ("pop-nrt", "nrt.pop", "ap", "10.50.4.1"),
        ("pop-sin", "sin.pop", "ap", "10.50.4.2"),
        ("pop-syd", "syd.pop", "ap", "10.50.4.3"),
    ];

    fn spec(id: &str, app: &str, region: &str, ip: &str) -> BackendSpec {
        BackendSpec {
            ttl_secs: Some(60),
            ..BackendSpec::new(id, app, region, ip.parse().unwrap(), 80)
        }
    }

    /// A registry holding `specs`, registered at time 0 (heartbeat TTL 60 s), published.
    fn snapshot(specs: &[BackendSpec]) -> (Registry, Arc<SnapshotCell>) {
        let cell = Arc::new(SnapshotCell::new());
        let mut reg = Registry::new(2, 60, 600, cell.clone());
        for s in specs {
            reg.register(s.clone(), 0);
        }
        reg.publish();
        (reg, cell)
    }

    fn seed() -> (Registry, Arc<SnapshotCell>) {
        let specs: Vec<_> = SEED
            .iter()
            .map(|(id, app, region, ip)| spec(id, app, region, ip))
            .collect();
        snapshot(&specs)
    }

    fn zone() -> Zone {
        Zone::new("internal", 5, 1232, "sa", RegionMap::overlay_default())
    }

    /// EDNS of a query: (UDP size, version, DO).
    type EdnsSpec = (u16, u8, bool);

    fn query_with(id: u16, flags: u16, name: &str, qtype: u16, qclass: u16) -> Vec<u8> {
        let mut p = Vec::new();
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(&flags.to_be_bytes());
        p.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
        for label in name.split('.').filter(|l| !l.is_empty()) {
            p.push(label.len() as u8);
            p.extend_from_slice(label.as_bytes());
        }
        p.push(0);
        p.extend_from_slice(&qtype.to_be_bytes());
        p.extend_from_slice(&qclass.to_be_bytes());
        p
    }

    fn add_edns(p: &mut Vec<u8>, (size, version, dnssec_ok): EdnsSpec) {
        p[11] += 1;
        p.extend_from_slice(&[0, 0, 41]);
        p.extend_from_slice(&size.to_be_bytes());
        p.extend_from_slice(&[0, version]);
        p.extend_from_slice(&(if dnssec_ok { 0x8000u16 } else { 0 }).to_be_bytes());
        p.extend_from_slice(&[0, 0]);
    }

    /// A standard query with RD set.
    fn query(name: &str, qtype: u16) -> Vec<u8> {
        query_with(0xbeef, FLAG_RD, name, qtype, CLASS_IN)
    }

    fn exchange(client: &str, transport: Transport) -> Exchange {
        Exchange {
            client: client.parse().unwrap(),
            server: Some("127.0.0.53".parse().unwrap()),
            transport,
            now_ms: 1_000,
        }
    }

    const UDP: Transport = Transport::Udp { max_size: 1232 };

    fn ask_with(cell: &SnapshotCell, packet: &[u8], ex: &Exchange) -> (Outcome, Vec<u8>) {
        let mut out = Vec::new();
        let outcome = respond(packet, &zone(), &cell.load(), ex, &mut out);
        (outcome, out)
    }

    fn ask(cell: &SnapshotCell, packet: &[u8]) -> (Outcome, Vec<u8>) {
        ask_with(cell, packet, &exchange("10.50.1.77", UDP))
    }

    fn only_ip(p: &Packet<'_>) -> IpAddr {
        assert_eq!(p.answers.len(), 1, "{p:?}");
        match p.answers[0].data {
            RData::A(ref a) => IpAddr::V4(a.0),
            RData::AAAA(ref a) => IpAddr::V6(a.0),
            ref other => panic!("not an address: {other:?}"),
        }
    }

    fn check_soa(p: &Packet<'_>, serial: u64) {
        assert_eq!(p.nameservers.len(), 1, "{p:?}");
        let rr = &p.nameservers[0];
        assert_eq!(rr.name.to_string().to_ascii_lowercase(), "internal");
        assert_eq!(rr.ttl, 5);
        match rr.data {
            RData::SOA(ref soa) => {
                assert_eq!(soa.primary_ns.to_string().to_lowercase(), "ns.internal");
                assert_eq!(
                    soa.mailbox.to_string().to_lowercase(),
                    "hostmaster.internal"
                );
                assert_eq!(u64::from(soa.serial), serial);
                assert_eq!(soa.minimum_ttl, 5);
            }
            ref other => panic!("not an SOA: {other:?}"),
        }
    }

    #[test]
    fn every_seed_name_resolves_to_exactly_its_backend() {
        let (_reg, cell) = seed();
        let clients = [
            "10.50.1.9",
            "10.50.2.9",
            "10.50.3.9",
            "10.50.4.9",
            "127.0.0.1",
            "::1",
        ];
        for (_, app, _, ip) in SEED {
            for client in clients {
                for transport in [UDP, Transport::Tcp] {
                    let q = query(&format!("{app}.internal"), TYPE_A);
                    let (outcome, out) = ask_with(&cell, &q, &exchange(client, transport));
                    assert_eq!(
                        outcome,
                        Outcome::Answered {
                            rcode: Rcode::NoError,
                            truncated: false
                        }
                    );
                    let p = Packet::parse(&out).unwrap();
                    assert_eq!(p.header.id, 0xbeef);
                    assert!(!p.header.query);
                    assert!(p.header.authoritative);
                    assert!(p.header.recursion_desired);
                    assert!(!p.header.recursion_available);
                    assert_eq!(p.header.response_code, ResponseCode::NoError);
                    assert_eq!(only_ip(&p), ip.parse::<IpAddr>().unwrap(), "{app}");
                    assert_eq!(p.answers[0].ttl, 5);
                    assert_eq!(p.answers[0].name.to_string(), format!("{app}.internal"));
                    assert!(p.nameservers.is_empty() && p.additional.is_empty());
                    assert!(p.opt.is_none());
                }
            }
        }
    }

    #[test]
    fn client_case_is_echoed() {
        let (_reg, cell) = seed();
        let q = query("GrU.PoP.InTeRnAl", TYPE_A);
        let (_, out) = ask(&cell, &q);
        // The question section is the client's bytes exactly.
        assert_eq!(&out[HEADER_LEN..q.len()], &q[HEADER_LEN..]);
        let p = Packet::parse(&out).unwrap();
        assert_eq!(p.questions[0].qname.to_string(), "GrU.PoP.InTeRnAl");
        assert_eq!(p.answers[0].name.to_string(), "GrU.PoP.InTeRnAl");
        assert_eq!(only_ip(&p), IpAddr::V4(Ipv4Addr::new(10, 50, 1, 1)));
    }

    #[test]
    fn unknown_names_are_nxdomain_with_soa() {
        let (reg, cell) = seed();
        for name in [
            "nope.internal",
            "x.gru.pop.internal",
            "gru.internal",
            "pop-gru.internal",
            "gru_pop.internal",
        ] {
            let (outcome, out) = ask(&cell, &query(name, TYPE_A));
            assert_eq!(
                outcome,
                Outcome::Answered {
                    rcode: Rcode::NxDomain,
                    truncated: false
                },
                "{name}"
            );
            let p = Packet::parse(&out).unwrap();
            assert_eq!(p.header.response_code, ResponseCode::NameError);
            assert!(p.header.authoritative);
            assert!(p.answers.is_empty());
            check_soa(&p, reg.version());
        }
    }

    #[test]
    fn a_dot_inside_a_label_is_not_an_app_separator() {
        let (_reg, cell) = seed();
        // One label `gru.pop`, then `internal`: not the app gru.pop.
        let mut q = query("x.internal", TYPE_A);
        q.splice(HEADER_LEN..HEADER_LEN + 2, b"\x07gru.pop".iter().copied());
        let (outcome, _) = ask(&cell, &q);
        assert_eq!(
            outcome,
            Outcome::Answered {
                rcode: Rcode::NxDomain,
                truncated: false
            }
        );
    }

    #[test]
    fn a_name_with_apps_below_is_an_empty_non_terminal() {
        let (reg, cell) = seed();
        let (_, out) = ask(&cell, &query("pop.internal", TYPE_A));
        let p = Packet::parse(&out).unwrap();
        assert_eq!(p.header.response_code, ResponseCode::NoError);
        assert!(p.answers.is_empty());
        check_soa(&p, reg.version());
    }

    #[test]
    fn other_types_on_an_app_are_nodata() {
        let (reg, cell) = seed();
        // MX, TXT, SRV, AAAA (the backend is IPv4), and HTTPS (65), which dns-parser cannot
        // even parse: checked by hand below.
        for qtype in [15, 16, 33, TYPE_AAAA, TYPE_NS, TYPE_SOA] {
            let (outcome, out) = ask(&cell, &query("gru.pop.internal", qtype));
            assert_eq!(
                outcome,
                Outcome::Answered {
                    rcode: Rcode::NoError,
                    truncated: false
                }
            );
            let p = Packet::parse(&out).unwrap();
            assert!(p.answers.is_empty(), "type {qtype}");
            assert!(p.header.authoritative);
            check_soa(&p, reg.version());
        }
        let q = query("gru.pop.internal", 65);
        let (outcome, out) = ask(&cell, &q);
        assert_eq!(
            outcome,
            Outcome::Answered {
                rcode: Rcode::NoError,
                truncated: false
            }
        );
        assert_eq!(&out[4..12], &[0, 1, 0, 0, 0, 1, 0, 0]);
        assert_eq!(&out[HEADER_LEN..q.len()], &q[HEADER_LEN..]);
        // ANY gets the address.
        let (_, out) = ask(&cell, &query("gru.pop.internal", TYPE_ANY));
        let p = Packet::parse(&out).unwrap();
        assert_eq!(only_ip(&p), IpAddr::V4(Ipv4Addr::new(10, 50, 1, 1)));
    }

    #[test]
    fn names_outside_the_zone_and_other_classes_are_refused() {
        let (_reg, cell) = seed();
        for q in [
            query("example.com", TYPE_A),
            query("internal.example", TYPE_A),
            query("gru.pop.xinternal", TYPE_A),
            query("", TYPE_NS),
            query_with(7, 0, "gru.pop.internal", TYPE_A, 3),
            query_with(7, 0, "version.bind", 16, 3),
        ] {
            let (outcome, out) = ask(&cell, &q);
            assert_eq!(
                outcome,
                Outcome::Answered {
                    rcode: Rcode::Refused,
                    truncated: false
                }
            );
            let p = Packet::parse(&out).unwrap();
            assert_eq!(p.header.response_code, ResponseCode::Refused);
            assert!(!p.header.authoritative && !p.header.recursion_available);
            assert!(p.answers.is_empty() && p.nameservers.is_empty());
            assert_eq!(p.questions.len(), 1);
        }
        // Class ANY is served like IN.
        let q = query_with(7, 0, "gru.pop.internal", TYPE_A, CLASS_ANY);
        let p_out = ask(&cell, &q).1;
        assert_eq!(
            only_ip(&Packet::parse(&p_out).unwrap()),
            IpAddr::V4(Ipv4Addr::new(10, 50, 1, 1))
        );
    }

    #[test]
    fn other_opcodes_and_zone_transfers_are_notimp() {
        let (_reg, cell) = seed();
        for opcode in [1u16, 2, 4, 5, 15] {
            let q = query_with(0x4242, opcode << 11, "gru.pop.internal", TYPE_A, CLASS_IN);
            let (outcome, out) = ask(&cell, &q);
            assert_eq!(
                outcome,
                Outcome::Answered {
                    rcode: Rcode::NotImp,
                    truncated: false
                }
            );
            let p = Packet::parse(&out).unwrap();
            assert_eq!(p.header.id, 0x4242);
            assert_eq!(Into::<u16>::into(p.header.opcode), opcode);
            assert_eq!(p.header.response_code, ResponseCode::NotImplemented);
            assert!(p.answers.is_empty());
        }
        let (outcome, _) = ask(&cell, &query("internal", TYPE_AXFR));
        assert!(matches!(
            outcome,
            Outcome::Answered {
                rcode: Rcode::NotImp,
                ..
            }
        ));
    }

    #[test]
    fn malformed_queries_get_formerr_with_id_and_opcode() {
        let (_reg, cell) = seed();
        let good = query("gru.pop.internal", TYPE_A);
        let mut no_question = good[..HEADER_LEN].to_vec();
        no_question[5] = 0;
        let mut two_questions = good.clone();
        two_questions[5] = 2;
        let cut = good[..good.len() - 3].to_vec();
        let mut pointer = good[..HEADER_LEN].to_vec();
        pointer.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
        let mut bad_label = good.clone();
        bad_label[HEADER_LEN] = 0x43;
        let mut opt_type = query("gru.pop.internal", TYPE_OPT);
        opt_type[1] = 0xef;
        for q in [
            no_question,
            two_questions,
            cut,
            pointer,
            bad_label,
            opt_type,
        ] {
            let (outcome, out) = ask(&cell, &q);
            assert_eq!(
                outcome,
                Outcome::Answered {
                    rcode: Rcode::FormErr,
                    truncated: false
                },
                "{q:?}"
            );
            assert_eq!(&out[..2], &[0xbe, 0xef]);
            assert_eq!(out[2], 0x80 | 0x01, "QR, opcode 0, RD copied");
            assert_eq!(out[3] & 0x0f, 1);
            check_structure(&out);
            if dns_parser_reads_question(&out) {
                Packet::parse(&out).unwrap();
            }
        }
    }

    #[test]
    fn short_packets_and_responses_get_silence() {
        let (_reg, cell) = seed();
        let good = query("gru.pop.internal", TYPE_A);
        let mut response = good.clone();
        response[2] |= 0x80;
        for p in [&[][..], &good[..1], &good[..11], &response[..]] {
            let mut out = vec![1, 2, 3];
            let outcome = respond(p, &zone(), &cell.load(), &exchange("::1", UDP), &mut out);
            assert_eq!(outcome, Outcome::Dropped);
            assert_eq!(out, vec![1, 2, 3], "nothing written");
        }
    }

    #[test]
    fn edns_is_echoed_with_our_size_and_bad_versions_get_badvers() {
        let (_reg, cell) = seed();
        for (offered, advertised) in [(4096, 1232), (1232, 1232), (600, 600), (100, 512)] {
            let mut q = query("gru.pop.internal", TYPE_A);
            add_edns(&mut q, (offered, 0, true));
            let (_, out) = ask(&cell, &q);
            let p = Packet::parse(&out).unwrap();
            assert_eq!(only_ip(&p), IpAddr::V4(Ipv4Addr::new(10, 50, 1, 1)));
            let opt = p.opt.unwrap();
            assert_eq!(opt.udp, advertised, "offered {offered}");
            assert_eq!((opt.version, opt.extrcode, opt.flags), (0, 0, 0x8000));
        }
        let mut q = query("gru.pop.internal", TYPE_A);
        add_edns(&mut q, (1232, 1, false));
        let (outcome, out) = ask(&cell, &q);
        assert_eq!(
            outcome,
            Outcome::Answered {
                rcode: Rcode::BadVers,
                truncated: false
            }
        );
        let p = Packet::parse(&out).unwrap();
        assert!(p.answers.is_empty());
        assert_eq!(p.header.response_code, ResponseCode::NoError);
        let opt = p.opt.unwrap();
        assert_eq!((opt.extrcode, opt.version), (1, 0));
        // Errors echo OPT too.
        let mut q = query("example.com", TYPE_A);
        add_edns(&mut q, (1232, 0, false));
        let p_out = ask(&cell, &q).1;
        assert!(Packet::parse(&p_out).unwrap().opt.is_some());
    }

    #[test]
    fn too_big_for_udp_is_truncated_and_tcp_is_whole() {
        let (_reg, cell) = seed();
        let mut q = query("gru.pop.internal", TYPE_A);
        add_edns(&mut q, (4096, 0, false));
        // A limit below the answer (only tests go under 512) forces truncation.
        let small = Transport::Udp { max_size: 50 };
        let (outcome, out) = ask_with(&cell, &q, &exchange("10.50.1.2", small));
        assert_eq!(
            outcome,
            Outcome::Answered {
                rcode: Rcode::NoError,
                truncated: true
            }
        );
        let p = Packet::parse(&out).unwrap();
        assert!(p.header.truncated);
        assert!(p.answers.is_empty() && p.nameservers.is_empty());
        assert_eq!(p.questions[0].qname.to_string(), "gru.pop.internal");
        assert!(p.opt.is_some());
        assert_eq!(out[2] & (FLAG_TC >> 8) as u8, (FLAG_TC >> 8) as u8);
        let (outcome, out) = ask_with(&cell, &q, &exchange("10.50.1.2", Transport::Tcp));
        assert_eq!(
            outcome,
            Outcome::Answered {
                rcode: Rcode::NoError,
                truncated: false
            }
        );
        let p = Packet::parse(&out).unwrap();
        assert_eq!(only_ip(&p), IpAddr::V4(Ipv4Addr::new(10, 50, 1, 1)));
    }

    #[test]
    fn expired_backends_are_not_answered() {
        let mut short = spec("a-short", "app", "sa", "10.9.0.1");
        short.ttl_secs = Some(10);
        let (reg, cell) = snapshot(&[short, spec("b-long", "app", "eu", "10.9.0.2")]);
        let q = query("app.internal", TYPE_A);
        let mut ex = exchange("10.50.1.5", UDP);
        let p_out = ask_with(&cell, &q, &ex).1;
        assert_eq!(
            only_ip(&Packet::parse(&p_out).unwrap()),
            IpAddr::V4(Ipv4Addr::new(10, 9, 0, 1))
        );
        ex.now_ms = 10_000;
        let p_out = ask_with(&cell, &q, &ex).1;
        assert_eq!(
            only_ip(&Packet::parse(&p_out).unwrap()),
            IpAddr::V4(Ipv4Addr::new(10, 9, 0, 2))
        );
        // No live backend at all: NXDOMAIN (see the module docs).
        ex.now_ms = 60_000;
        let (outcome, out) = ask_with(&cell, &q, &ex);
        assert_eq!(
            outcome,
            Outcome::Answered {
                rcode: Rcode::NxDomain,
                truncated: false
            }
        );
        check_soa(&Packet::parse(&out).unwrap(), reg.version());
    }

    #[test]
    fn the_client_region_chooses_among_backends() {
        let (_reg, cell) = snapshot(&[
            spec("w-sa", "web", "sa", "10.9.1.1"),
            spec("w-eu", "web", "eu", "10.9.3.1"),
        ]);
        let q = query("web.internal", TYPE_A);
        for (client, ip) in [("10.50.1.9", "10.9.1.1"), ("10.50.3.9", "10.9.3.1")] {
            let out = ask_with(&cell, &q, &exchange(client, UDP)).1;
            assert_eq!(
                only_ip(&Packet::parse(&out).unwrap()),
                ip.parse::<IpAddr>().unwrap()
            );
        }
    }

    #[test]
    fn ipv6_backends_answer_aaaa() {
        let (_reg, cell) = snapshot(&[spec("v6", "six", "sa", "fd00:50::1")]);
        let (_, out) = ask(&cell, &query("six.internal", TYPE_AAAA));
        let p = Packet::parse(&out).unwrap();
        assert_eq!(
            only_ip(&p),
            IpAddr::V6("fd00:50::1".parse::<Ipv6Addr>().unwrap())
        );
        let (outcome, out) = ask(&cell, &query("six.internal", TYPE_A));
        assert_eq!(
            outcome,
            Outcome::Answered {
                rcode: Rcode::NoError,
                truncated: false
            }
        );
        let p = Packet::parse(&out).unwrap();
        assert!(p.answers.is_empty());
        assert_eq!(p.nameservers.len(), 1);
    }

    #[test]
    fn a_dual_stack_app_answers_each_family_with_its_best() {
        // Whichever backend is best overall for each client, A and AAAA both have an answer.
        let (_reg, cell) = snapshot(&[
            spec("v4", "dual", "sa", "10.50.1.9"),
            spec("v6", "dual", "sa", "fd00:50::9"),
        ]);
        for i in 0..64u8 {
            let ex = exchange(&format!("10.50.1.{i}"), UDP);
            let (_, out) = ask_with(&cell, &query("dual.internal", TYPE_A), &ex);
            let v4: IpAddr = "10.50.1.9".parse().unwrap();
            assert_eq!(only_ip(&Packet::parse(&out).unwrap()), v4);
            let (_, out) = ask_with(&cell, &query("dual.internal", TYPE_AAAA), &ex);
            let v6: IpAddr = "fd00:50::9".parse().unwrap();
            assert_eq!(only_ip(&Packet::parse(&out).unwrap()), v6);
        }
    }

    #[test]
    fn the_apex_has_soa_and_ns_and_ns_has_our_address() {
        let (reg, cell) = seed();
        let (_, out) = ask(&cell, &query("Internal", TYPE_SOA));
        let p = Packet::parse(&out).unwrap();
        assert!(p.header.authoritative);
        assert_eq!(p.answers.len(), 1);
        match p.answers[0].data {
            RData::SOA(ref soa) => assert_eq!(u64::from(soa.serial), reg.version()),
            ref other => panic!("{other:?}"),
        }
        let (_, out) = ask(&cell, &query("internal", TYPE_NS));
        let p = Packet::parse(&out).unwrap();
        match p.answers[0].data {
            RData::NS(ref ns) => assert_eq!(ns.0.to_string(), "ns.internal"),
            ref other => panic!("{other:?}"),
        }
        assert_eq!(p.additional[0].name.to_string(), "ns.internal");
        let (_, out) = ask(&cell, &query("internal", TYPE_ANY));
        assert_eq!(Packet::parse(&out).unwrap().answers.len(), 2);
        let (_, out) = ask(&cell, &query("internal", TYPE_A));
        let p = Packet::parse(&out).unwrap();
        assert!(p.answers.is_empty());
        check_soa(&p, reg.version());
        let (_, out) = ask(&cell, &query("NS.internal", TYPE_A));
        assert_eq!(
            only_ip(&Packet::parse(&out).unwrap()),
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 53))
        );
        // Unknown local address (a wildcard bind): NODATA.
        let mut ex = exchange("10.50.1.1", UDP);
        ex.server = None;
        let (outcome, out) = ask_with(&cell, &query("ns.internal", TYPE_A), &ex);
        assert!(matches!(
            outcome,
            Outcome::Answered {
                rcode: Rcode::NoError,
                ..
            }
        ));
        assert!(Packet::parse(&out).unwrap().answers.is_empty());
    }

    #[test]
    fn a_multi_label_zone_and_appending_after_existing_bytes() {
        let (_reg, cell) = seed();
        let zone = Zone::new("corp.internal", 5, 1232, "sa", RegionMap::overlay_default());
        let q = query("IAD.pop.Corp.INTERNAL", TYPE_A);
        let mut out = vec![0xaa, 0xbb];
        respond(&q, &zone, &cell.load(), &exchange("::1", UDP), &mut out);
        let p = Packet::parse(&out[2..]).unwrap();
        assert_eq!(only_ip(&p), IpAddr::V4(Ipv4Addr::new(10, 50, 2, 1)));
        let (_, out) = {
            let mut out = Vec::new();
            let o = respond(
                &query("iad.pop.internal", TYPE_A),
                &zone,
                &cell.load(),
                &exchange("::1", UDP),
                &mut out,
            );
            (o, out)
        };
        assert_eq!(
            Packet::parse(&out).unwrap().header.response_code,
            ResponseCode::Refused
        );
    }

    /// Walks every section of a response as a DNS message; panics when it is not one.
    fn check_structure(resp: &[u8]) {
        let h = query::Header::read(resp).expect("a header");
        assert!(h.is_response());
        let mut pos = HEADER_LEN;
        for _ in 0..h.qdcount {
            let mut p = pos;
            loop {
                let len = usize::from(resp[p]);
                assert!(len < 64);
                p += 1 + len;
                if len == 0 {
                    break;
                }
            }
            pos = p + 4;
            assert!(pos <= resp.len());
        }
        let records = u32::from(h.ancount) + u32::from(h.nscount) + u32::from(h.arcount);
        for _ in 0..records {
            pos = query::skip_record(resp, pos).expect("a record").0;
        }
        assert_eq!(pos, resp.len(), "no trailing bytes");
    }

    /// Whether dns-parser can read this response's question (it refuses types and classes it
    /// does not know, and non-ASCII labels).
    fn dns_parser_reads_question(resp: &[u8]) -> bool {
        let h = query::Header::read(resp).unwrap();
        if h.qdcount == 0 {
            return true;
        }
        let mut p = HEADER_LEN;
        while resp[p] != 0 {
            let len = usize::from(resp[p]);
            if !resp[p + 1..p + 1 + len].is_ascii() {
                return false;
            }
            p += 1 + len;
        }
        let qtype = u16::from_be_bytes([resp[p + 1], resp[p + 2]]);
        let qclass = u16::from_be_bytes([resp[p + 3], resp[p + 4]]);
        dns_parser::QueryType::parse(qtype).is_ok()
            && dns_parser::QueryClass::parse(qclass & 0x7fff).is_ok()
    }

    #[test]
    fn random_and_mutated_packets_never_panic_and_answers_parse() {
        let (_reg, cell) = seed();
        let zone = zone();
        let snap = cell.load();
        let mut seeds = Vec::new();
        for (_, app, _, _) in SEED {
            for qtype in [TYPE_A, TYPE_AAAA, TYPE_ANY, 65] {
                let mut q = query(&format!("{app}.internal"), qtype);
                seeds.push(q.clone());
                add_edns(&mut q, (1232, 0, true));
                seeds.push(q);
            }
        }
        seeds.push(query("internal", TYPE_SOA));
        seeds.push(query("nope.example", TYPE_A));
        for (name, qtype) in [
            ("sa.gru.pop", TYPE_A),
            ("top3.nearest.of.gru.pop", TYPE_A),
            ("_gru.pop._tcp", TYPE_SRV),
            ("pop-gru.vm.gru.pop", TYPE_A),
            ("_apps", TYPE_TXT),
            ("regions.gru.pop", TYPE_TXT),
            ("vms.gru.pop", TYPE_TXT),
            ("us.backends", TYPE_A),
            ("sa.pops", TYPE_ANY),
        ] {
            let mut q = query(&format!("{name}.internal"), qtype);
            seeds.push(q.clone());
            add_edns_options(&mut q, &[(8, &[0, 1, 24, 0, 10, 50, 2])]);
            seeds.push(q);
        }
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state = crate::registry::mix64(state.wrapping_add(0x9e37_79b9_7f4a_7c15));
            state
        };
        let mut out = Vec::new();
        let (mut answered, mut dropped) = (0, 0);
        for i in 0..20_000 {
            let mut p = if i % 10 == 0 {
                let len = (next() % 300) as usize;
                (0..len).map(|_| next() as u8).collect()
            } else {
                seeds[(next() % seeds.len() as u64) as usize].clone()
            };
            let mutations = next() % 6;
            for _ in 0..mutations {
                if p.is_empty() {
                    break;
                }
                let at = (next() % p.len() as u64) as usize;
                match next() % 4 {
                    0 => p[at] = next() as u8,
                    1 => p[at] ^= 1 << (next() % 8),
                    2 => p.truncate(at),
                    _ => p.insert(at, next() as u8),
                }
            }
            if next() % 2 == 0 && p.len() > 2 {
                p[2] &= 0x7f; // mostly queries, not responses
            }
            for transport in [UDP, Transport::Tcp] {
                out.clear();
                let ex = Exchange {
                    client: IpAddr::V4(Ipv4Addr::from(next() as u32)),
                    server: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                    transport,
                    now_ms: next() % 120_000,
                };
                match respond(&p, &zone, &snap, &ex, &mut out) {
                    Outcome::Dropped => {
                        assert!(out.is_empty());
                        dropped += 1;
                    }
                    Outcome::Answered { .. } => {
                        answered += 1;
                        assert_eq!(&out[..2], &p[..2], "id echoed");
                        if transport == UDP {
                            assert!(out.len() <= 1232);
                        }
                        check_structure(&out);
                        if dns_parser_reads_question(&out) {
                            if let Err(e) = Packet::parse(&out) {
                                panic!("{e:?}: query {p:?} answer {out:?}");
                            }
                        }
                    }
                }
            }
        }
        assert!(answered > 10_000 && dropped > 1_000, "{answered} {dropped}");
    }

    // ---- Name forms, truncation and EDNS Client Subnet ----

    /// `web` in sa (two backends and a second port on one of them), gru, eu (v4 and v6), and
    /// the seed's `*.pop` apps.
    fn forms() -> (Registry, Arc<SnapshotCell>) {
        let mut specs: Vec<_> = SEED
            .iter()
            .map(|(id, app, region, ip)| spec(id, app, region, ip))
            .collect();
        // As the API stores a backend registered with region `gru`: region sa, country BR.
        let mut gru = spec("w-gru", "web", "gru", "10.9.1.3");
        gru.country = Some("BR".into());
        let mut dup = spec("w-dup", "web", "sa", "10.9.1.1");
        dup.port = 81;
        specs.extend([
            spec("w-sa1", "web", "sa", "10.9.1.1"),
            spec("w-sa2", "web", "sa", "10.9.1.2"),
            gru,
            spec("w-eu", "web", "eu", "10.9.3.1"),
            spec("w-v6", "web", "eu", "fd00::31"),
            dup,
        ]);
        snapshot(&specs)
    }

    fn ips(p: &Packet<'_>) -> Vec<IpAddr> {
        p.answers
            .iter()
            .map(|rr| match rr.data {
                RData::A(ref a) => IpAddr::V4(a.0),
                RData::AAAA(ref a) => IpAddr::V6(a.0),
                ref other => panic!("not an address: {other:?}"),
            })
            .collect()
    }

    fn ip_list(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    /// The answer's (rcode, addresses), checking the structure on the way.
    fn resolve(cell: &SnapshotCell, name: &str, qtype: u16, client: &str) -> (Rcode, Vec<IpAddr>) {
        let (outcome, out) = ask_with(cell, &query(name, qtype), &exchange(client, UDP));
        check_structure(&out);
        let Outcome::Answered { rcode, truncated } = outcome else {
            panic!("dropped")
        };
        assert!(!truncated, "{name}");
        let p = Packet::parse(&out).unwrap();
        assert!(p.header.authoritative, "{name}");
        if p.answers.is_empty() {
            assert_eq!(p.nameservers.len(), 1, "{name}: SOA with no answer");
        }
        (rcode, ips(&p))
    }

    fn txt_strings(p: &Packet<'_>) -> Vec<Vec<u8>> {
        assert_eq!(p.answers.len(), 1, "{p:?}");
        match p.answers[0].data {
            RData::TXT(ref t) => t.iter().map(|s| s.to_vec()).collect(),
            ref other => panic!("not a TXT: {other:?}"),
        }
    }

    fn txt_of(cell: &SnapshotCell, name: &str) -> String {
        let (_, out) = ask(cell, &query(name, TYPE_TXT));
        let strings = txt_strings(&Packet::parse(&out).unwrap());
        String::from_utf8(strings.concat()).unwrap()
    }

    const NX: Rcode = Rcode::NxDomain;
    const OK: Rcode = Rcode::NoError;

    #[test]
    fn a_region_of_an_app_answers_its_live_backends() {
        let (_reg, cell) = forms();
        let sa = "10.50.1.9";
        assert_eq!(
            resolve(&cell, "sa.web.internal", TYPE_A, sa),
            (OK, ip_list(&["10.9.1.1", "10.9.1.2", "10.9.1.3"])),
            "sorted, the shared address once; w-gru is in sa"
        );
        assert_eq!(
            resolve(&cell, "SA.Web.internal", TYPE_A, "10.50.3.3"),
            (OK, ip_list(&["10.9.1.1", "10.9.1.2", "10.9.1.3"])),
            "case-insensitive, the same for every client"
        );
        assert_eq!(
            resolve(&cell, "gru.web.internal", TYPE_A, sa),
            (OK, ip_list(&["10.9.1.3"])),
            "a POP code: its region's backends registered with that code (country BR)"
        );
        assert_eq!(
            resolve(&cell, "eu.web.internal", TYPE_AAAA, sa),
            (OK, ip_list(&["fd00::31"]))
        );
        assert_eq!(
            resolve(&cell, "eu.web.internal", TYPE_ANY, sa),
            (OK, ip_list(&["10.9.3.1", "fd00::31"]))
        );
        assert_eq!(
            resolve(&cell, "sa.web.internal", TYPE_AAAA, sa),
            (OK, vec![])
        );
        assert_eq!(
            resolve(&cell, "sa.web.internal", TYPE_TXT, sa),
            (OK, vec![])
        );
        assert_eq!(resolve(&cell, "us.web.internal", TYPE_A, sa), (NX, vec![]));
        // Draining takes a backend out; none left in the region: NXDOMAIN.
        let snap = cell.load();
        snap.find("w-sa2")
            .unwrap()
            .live
            .draining
            .store(true, Ordering::Relaxed);
        assert_eq!(
            resolve(&cell, "sa.web.internal", TYPE_A, sa),
            (OK, ip_list(&["10.9.1.1", "10.9.1.3"]))
        );
        snap.find("w-gru")
            .unwrap()
            .live
            .draining
            .store(true, Ordering::Relaxed);
        assert_eq!(resolve(&cell, "gru.web.internal", TYPE_A, sa), (NX, vec![]));
    }

    #[test]
    fn top_n_nearest_answers_the_best_first() {
        let (_reg, cell) = forms();
        let snap = cell.load();
        for client in ["10.50.1.9", "10.50.1.10", "10.50.3.9", "192.0.2.1"] {
            let (_, best) = resolve(&cell, "web.internal", TYPE_A, client);
            let (_, top1) = resolve(&cell, "top1.nearest.of.web.internal", TYPE_A, client);
            assert_eq!(top1, best, "top1 is the <app> answer");
            // The order is repeated picks, each excluding those before.
            let z = zone();
            let ip: IpAddr = client.parse().unwrap();
            let c = Client::at(ip, z.geo.locate(ip));
            let group = snap.app("web").unwrap();
            let mut tried = Vec::new();
            let mut want: Vec<IpAddr> = Vec::new();
            while let Some((b, _)) =
                crate::select::pick_where(Scope::App(group), &c, "sa", 1_000, &tried, |b| {
                    b.ip.is_ipv4()
                })
            {
                tried.push(b.key);
                if !want.contains(&b.ip) {
                    want.push(b.ip);
                }
            }
            assert_eq!(want.len(), 4);
            let (rcode, top2) = resolve(&cell, "top2.nearest.of.web.internal", TYPE_A, client);
            assert_eq!((rcode, &top2[..]), (OK, &want[..2]), "{client}");
            let (_, all) = resolve(&cell, "top16.nearest.of.web.internal", TYPE_A, client);
            assert_eq!(all, want);
            let (_, capped) = resolve(&cell, "top999999.nearest.of.web.internal", TYPE_A, client);
            assert_eq!(capped, want, "a larger N is capped");
        }
        // From sa the sa backends (w-gru among them) come first.
        let (_, top3) = resolve(&cell, "top3.nearest.of.web.internal", TYPE_A, "10.50.1.9");
        let mut sorted = top3.clone();
        sorted.sort();
        assert_eq!(sorted, ip_list(&["10.9.1.1", "10.9.1.2", "10.9.1.3"]));
        assert_eq!(
            resolve(
                &cell,
                "top3.nearest.of.web.internal",
                TYPE_AAAA,
                "10.50.1.9"
            ),
            (OK, ip_list(&["fd00::31"]))
        );
        for bad in ["top0", "topx", "top01", "top", "top-1", "Top2x"] {
            let name = format!("{bad}.nearest.of.web.internal");
            assert_eq!(
                resolve(&cell, &name, TYPE_A, "10.50.1.9"),
                (NX, vec![]),
                "{bad}"
            );
        }
        assert_eq!(
            resolve(&cell, "top2.nearest.of.nope.internal", TYPE_A, "10.50.1.9").0,
            NX
        );
    }

    #[test]
    fn srv_lists_every_live_backend_with_targets_that_resolve() {
        let (_reg, cell) = forms();
        // From us (10.50.2.x): nothing in the client's region; the hub's (sa) is priority 1.
        let (outcome, out) = ask_with(
            &cell,
            &query("_web._tcp.internal", TYPE_SRV),
            &exchange("10.50.2.9", UDP),
        );
        assert_eq!(
            outcome,
            Outcome::Answered {
                rcode: OK,
                truncated: false
            }
        );
        check_structure(&out);
        let p = Packet::parse(&out).unwrap();
        let mut srvs: Vec<(u16, u16, u16, String)> = p
            .answers
            .iter()
            .map(|rr| match rr.data {
                RData::SRV(ref s) => (s.priority, s.weight, s.port, s.target.to_string()),
                ref other => panic!("not an SRV: {other:?}"),
            })
            .collect();
        let priorities: Vec<u16> = srvs.iter().map(|s| s.0).collect();
        assert!(
            priorities.windows(2).all(|w| w[0] <= w[1]),
            "by priority: {priorities:?}"
        );
        srvs.sort();
        assert_eq!(
            srvs,
            vec![
                (1, 1, 80, "w-gru.vm.web.internal".into()),
                (1, 1, 80, "w-sa1.vm.web.internal".into()),
                (1, 1, 80, "w-sa2.vm.web.internal".into()),
                (1, 1, 81, "w-dup.vm.web.internal".into()),
                (2, 1, 80, "w-eu.vm.web.internal".into()),
                (2, 1, 80, "w-v6.vm.web.internal".into()),
            ]
        );
        // The additional section has every target's address, and each target resolves to it.
        assert_eq!(p.additional.len(), 6);
        for rr in &p.additional {
            let name = rr.name.to_string();
            let ip = match rr.data {
                RData::A(ref a) => IpAddr::V4(a.0),
                RData::AAAA(ref a) => IpAddr::V6(a.0),
                ref other => panic!("{other:?}"),
            };
            assert_eq!(
                resolve(&cell, &name, TYPE_ANY, "10.50.2.9"),
                (OK, vec![ip]),
                "{name}"
            );
        }
        // From sa: the sa backends are priority 0; from eu: eu 0, sa (the hub, w-gru's
        // region too) 1.
        let (_, out) = ask_with(
            &cell,
            &query("_web._tcp.internal", TYPE_SRV),
            &exchange("10.50.3.9", UDP),
        );
        let p = Packet::parse(&out).unwrap();
        for rr in &p.answers {
            let RData::SRV(ref s) = rr.data else { panic!() };
            let target = s.target.to_string();
            let want = match target.split('.').next().unwrap() {
                "w-eu" | "w-v6" => 0,
                "w-sa1" | "w-sa2" | "w-dup" | "w-gru" => 1,
                _ => 2,
            };
            assert_eq!(s.priority, want, "{target}");
        }
        // A dotted app: the target repeats the app's labels.
        let (_, out) = ask(&cell, &query("_gru.pop._tcp.internal", TYPE_SRV));
        let p = Packet::parse(&out).unwrap();
        match p.answers[0].data {
            RData::SRV(ref s) => assert_eq!(s.target.to_string(), "pop-gru.vm.gru.pop.internal"),
            ref other => panic!("{other:?}"),
        }
        assert_eq!(
            resolve(&cell, "pop-gru.vm.gru.pop.internal", TYPE_A, "10.50.1.9"),
            (OK, ip_list(&["10.50.1.1"]))
        );
        // Other types: NODATA; unknown apps: NXDOMAIN.
        assert_eq!(
            resolve(&cell, "_web._tcp.internal", TYPE_A, "10.50.1.9"),
            (OK, vec![])
        );
        assert_eq!(
            resolve(&cell, "_nope._tcp.internal", TYPE_SRV, "10.50.1.9").0,
            NX
        );
        assert_eq!(
            resolve(&cell, "_web._udp.internal", TYPE_SRV, "10.50.1.9").0,
            NX
        );
    }

    #[test]
    fn vm_names_answer_their_backend_while_it_is_live() {
        let (_reg, cell) = forms();
        let c = "10.50.1.9";
        assert_eq!(
            resolve(&cell, "w-eu.vm.web.internal", TYPE_A, c),
            (OK, ip_list(&["10.9.3.1"]))
        );
        assert_eq!(
            resolve(&cell, "W-V6.VM.web.internal", TYPE_AAAA, c),
            (OK, ip_list(&["fd00::31"]))
        );
        assert_eq!(
            resolve(&cell, "w-v6.vm.web.internal", TYPE_A, c),
            (OK, vec![])
        );
        assert_eq!(resolve(&cell, "w-nope.vm.web.internal", TYPE_A, c).0, NX);
        assert_eq!(
            resolve(&cell, "pop-gru.vm.web.internal", TYPE_A, c).0,
            NX,
            "another app's id"
        );
        cell.load()
            .find("w-eu")
            .unwrap()
            .live
            .draining
            .store(true, Ordering::Relaxed);
        assert_eq!(resolve(&cell, "w-eu.vm.web.internal", TYPE_A, c).0, NX);
    }

    #[test]
    fn txt_listings_of_apps_regions_and_vms() {
        let (_reg, cell) = forms();
        assert_eq!(
            txt_of(&cell, "_apps.internal"),
            "cdg.pop,fra.pop,gru.pop,iad.pop,lax.pop,lhr.pop,nrt.pop,ord.pop,sin.pop,syd.pop,web"
        );
        // Regions are canonical: w-gru was registered as `gru`, which is `sa`.
        assert_eq!(txt_of(&cell, "regions.web.internal"), "eu,sa");
        assert_eq!(
            txt_of(&cell, "VMS.web.internal"),
            "w-dup sa,w-eu eu,w-gru sa,w-sa1 sa,w-sa2 sa,w-v6 eu"
        );
        assert_eq!(txt_of(&cell, "vms.gru.pop.internal"), "pop-gru sa");
        // Only live backends count.
        cell.load()
            .find("w-gru")
            .unwrap()
            .live
            .draining
            .store(true, Ordering::Relaxed);
        assert_eq!(txt_of(&cell, "regions.web.internal"), "eu,sa");
        // Other types: NODATA. Unknown apps: NXDOMAIN.
        assert_eq!(
            resolve(&cell, "regions.web.internal", TYPE_A, "10.50.1.9"),
            (OK, vec![])
        );
        assert_eq!(
            resolve(&cell, "_apps.internal", TYPE_A, "10.50.1.9"),
            (OK, vec![])
        );
        assert_eq!(
            resolve(&cell, "vms.nope.internal", TYPE_TXT, "10.50.1.9").0,
            NX
        );
    }

    #[test]
    fn long_txt_lists_are_split_into_strings_of_at_most_255_bytes() {
        let specs: Vec<_> = (0..60)
            .map(|i| {
                spec(
                    &format!("b{i}"),
                    &format!("app-with-a-long-name-{i:02}"),
                    "sa",
                    "10.9.0.1",
                )
            })
            .collect();
        let (_reg, cell) = snapshot(&specs);
        let (_, out) = ask_with(
            &cell,
            &query("_apps.internal", TYPE_TXT),
            &exchange("10.50.1.9", Transport::Tcp),
        );
        let strings = txt_strings(&Packet::parse(&out).unwrap());
        assert!(strings.len() > 5);
        assert!(strings.iter().all(|s| s.len() <= 255 && !s.is_empty()));
        // No item is split: every string but the last ends with a comma.
        for s in &strings[..strings.len() - 1] {
            assert_eq!(s.last(), Some(&b','));
        }
        let text = String::from_utf8(strings.concat()).unwrap();
        let want: Vec<String> = (0..60)
            .map(|i| format!("app-with-a-long-name-{i:02}"))
            .collect();
        assert_eq!(text, want.join(","));
        // Over UDP it does not fit: TC, for the client to retry over TCP.
        let (outcome, _) = ask(&cell, &query("_apps.internal", TYPE_TXT));
        assert_eq!(
            outcome,
            Outcome::Answered {
                rcode: OK,
                truncated: true
            }
        );
    }

    #[test]
    fn a_listing_too_long_for_one_message_is_answered_in_part_with_tc() {
        let specs: Vec<_> = (0..6000)
            .map(|i| {
                spec(
                    &format!("b{i}"),
                    &format!("app-number-{i:05}"),
                    "sa",
                    "10.9.0.1",
                )
            })
            .collect();
        let (_reg, cell) = snapshot(&specs);
        let ex = exchange("10.50.1.9", Transport::Tcp);
        let (outcome, out) = ask_with(&cell, &query("_apps.internal", TYPE_TXT), &ex);
        assert_eq!(
            outcome,
            Outcome::Answered {
                rcode: OK,
                truncated: true
            }
        );
        assert!(out.len() <= MAX_MESSAGE);
        let text = String::from_utf8(txt_strings(&Packet::parse(&out).unwrap()).concat()).unwrap();
        let items: Vec<&str> = text.split(',').collect();
        assert!(items.len() > 3500 && items.len() < 6000, "{}", items.len());
        assert_eq!(items[0], "app-number-00000");
        assert!(items.iter().all(|i| i.len() == 16), "whole items only");
    }

    #[test]
    fn backends_and_pops_of_a_region() {
        let (_reg, cell) = forms();
        let c = "10.50.1.9";
        assert_eq!(
            resolve(&cell, "sa.backends.internal", TYPE_A, c),
            (
                OK,
                ip_list(&["10.9.1.1", "10.9.1.2", "10.9.1.3", "10.50.1.1"])
            )
        );
        assert_eq!(
            resolve(&cell, "eu.backends.internal", TYPE_ANY, c),
            (
                OK,
                ip_list(&[
                    "10.9.3.1",
                    "10.50.3.1",
                    "10.50.3.2",
                    "10.50.3.3",
                    "fd00::31"
                ])
            )
        );
        assert_eq!(resolve(&cell, "nrt.backends.internal", TYPE_A, c).0, NX);
        // This hub's region (sa): the address the query arrived on, or the configured one.
        assert_eq!(
            resolve(&cell, "SA.pops.internal", TYPE_A, c),
            (OK, ip_list(&["127.0.0.53"]))
        );
        assert_eq!(
            resolve(&cell, "sa.pops.internal", TYPE_AAAA, c),
            (OK, vec![])
        );
        assert_eq!(resolve(&cell, "eu.pops.internal", TYPE_A, c).0, NX);
        let zone = zone().with_pop_addr(Some("10.50.0.1".parse().unwrap()));
        let mut out = Vec::new();
        respond(
            &query("sa.pops.internal", TYPE_A),
            &zone,
            &cell.load(),
            &exchange(c, UDP),
            &mut out,
        );
        assert_eq!(
            only_ip(&Packet::parse(&out).unwrap()),
            "10.50.0.1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn empty_non_terminals_are_nodata_and_near_misses_nxdomain() {
        let (_reg, cell) = forms();
        let c = "10.50.1.9";
        for name in [
            "vm.web",
            "of.web",
            "nearest.of.web",
            "_tcp",
            "pop._tcp",
            "backends",
            "pops",
            "pop",
        ] {
            assert_eq!(
                resolve(&cell, &format!("{name}.internal"), TYPE_A, c),
                (OK, vec![]),
                "{name}"
            );
        }
        for name in [
            "x.of.web",
            "x.nearest.of.web",
            "vm.nope",
            "x._tcp",
            "regions.nope",
            "a.b.web",
            "sa.web.x",
        ] {
            assert_eq!(
                resolve(&cell, &format!("{name}.internal"), TYPE_A, c).0,
                NX,
                "{name}"
            );
        }
    }

    #[test]
    fn ambiguous_names_resolve_by_the_documented_precedence() {
        let mut dotted = spec("a.vm.b", "web", "eu", "10.9.3.7");
        dotted.port = 82;
        let (_reg, cell) = snapshot(&[
            spec("w1", "web", "sa", "10.9.1.1"),
            spec("w2", "web", "eu", "10.9.3.1"),
            // An app whose name reads as `<region>.<app>`: the app wins.
            spec("s1", "sa.web", "us", "10.9.2.1"),
            // Regions named like keywords: the keyword wins.
            spec("w3", "web", "regions", "10.9.4.1"),
            spec("w4", "web", "vms", "10.9.4.2"),
            // An app named like a keyword form: the app wins.
            spec("t1", "top2.nearest.of.web", "sa", "10.9.5.1"),
            // An app named `backends`: `<region>.backends` is its region, not every backend.
            spec("k1", "backends", "sa", "10.9.6.1"),
            // An id with a `vm` label.
            dotted,
        ]);
        let c = "10.50.1.9";
        assert_eq!(
            resolve(&cell, "sa.web.internal", TYPE_A, c),
            (OK, ip_list(&["10.9.2.1"]))
        );
        assert_eq!(
            resolve(&cell, "eu.web.internal", TYPE_A, c),
            (OK, ip_list(&["10.9.3.1", "10.9.3.7"]))
        );
        assert_eq!(txt_of(&cell, "regions.web.internal"), "eu,regions,sa,vms");
        assert_eq!(
            txt_of(&cell, "vms.web.internal"),
            "a.vm.b eu,w1 sa,w2 eu,w3 regions,w4 vms"
        );
        assert_eq!(
            resolve(&cell, "top2.nearest.of.web.internal", TYPE_A, c),
            (OK, ip_list(&["10.9.5.1"]))
        );
        assert_eq!(
            resolve(&cell, "top1.nearest.of.web.internal", TYPE_A, c),
            (OK, ip_list(&["10.9.1.1"]))
        );
        assert_eq!(
            resolve(&cell, "sa.backends.internal", TYPE_A, c),
            (OK, ip_list(&["10.9.6.1"]))
        );
        assert_eq!(
            resolve(&cell, "eu.backends.internal", TYPE_A, c).0,
            NX,
            "app backends has no eu"
        );
        assert_eq!(
            resolve(&cell, "a.vm.b.vm.web.internal", TYPE_A, c),
            (OK, ip_list(&["10.9.3.7"]))
        );
        // The SRV target of a dotted id resolves.
        let (_, out) = ask(&cell, &query("_web._tcp.internal", TYPE_SRV));
        let p = Packet::parse(&out).unwrap();
        let target = p
            .answers
            .iter()
            .find_map(|rr| match rr.data {
                RData::SRV(ref s) if s.port == 82 => Some(s.target.to_string()),
                _ => None,
            })
            .unwrap();
        assert_eq!(target, "a.vm.b.vm.web.internal");
    }

    #[test]
    fn many_records_are_cut_at_record_boundaries_and_tcp_is_complete() {
        let specs: Vec<_> = (0..300)
            .map(|i| {
                spec(
                    &format!("b{i:03}"),
                    "big",
                    "sa",
                    &format!("10.8.{}.{}", i / 200, i % 200 + 1),
                )
            })
            .collect();
        let (_reg, cell) = snapshot(&specs);
        let plain = query("sa.big.internal", TYPE_A);
        let mut edns = plain.clone();
        add_edns(&mut edns, (1232, 0, false));
        for (q, limit) in [(&plain, 512), (&edns, 1232)] {
            let (outcome, out) = ask(&cell, q);
            assert_eq!(
                outcome,
                Outcome::Answered {
                    rcode: OK,
                    truncated: true
                }
            );
            assert!(
                out.len() <= limit && out.len() + 16 > limit,
                "{} of {limit}",
                out.len()
            );
            check_structure(&out);
            let p = Packet::parse(&out).unwrap();
            assert!(p.header.truncated);
            assert!(!ips(&p).is_empty());
        }
        let (outcome, out) = ask_with(&cell, &plain, &exchange("10.50.1.9", Transport::Tcp));
        assert_eq!(
            outcome,
            Outcome::Answered {
                rcode: OK,
                truncated: false
            }
        );
        let got = ips(&Packet::parse(&out).unwrap());
        let mut want: Vec<IpAddr> = specs.iter().map(|s| s.ip).collect();
        want.sort();
        assert_eq!(got, want);
        // SRV over TCP: all 300, each with its address.
        let (_, out) = ask_with(
            &cell,
            &query("_big._tcp.internal", TYPE_SRV),
            &exchange("10.50.1.9", Transport::Tcp),
        );
        let p = Packet::parse(&out).unwrap();
        assert!(!p.header.truncated);
        assert_eq!((p.answers.len(), p.additional.len()), (300, 300));
        // When only additional records do not fit, they go without TC (RFC 2181 section 9).
        let (_reg, cell) = snapshot(&specs[..12]);
        let (outcome, out) = ask(&cell, &query("_big._tcp.internal", TYPE_SRV));
        assert_eq!(
            outcome,
            Outcome::Answered {
                rcode: OK,
                truncated: false
            }
        );
        assert!(out.len() <= 512);
        let p = Packet::parse(&out).unwrap();
        assert_eq!(p.answers.len(), 12);
        assert!(p.additional.len() < 12, "{}", p.additional.len());
    }

    /// Adds an OPT record (1232 bytes) carrying `options` (code, data) to a query.
    fn add_edns_options(p: &mut Vec<u8>, options: &[(u16, &[u8])]) {
        let data: Vec<u8> = options
            .iter()
            .flat_map(|(code, d)| {
                let mut o = code.to_be_bytes().to_vec();
                o.extend_from_slice(&(d.len() as u16).to_be_bytes());
                o.extend_from_slice(d);
                o
            })
            .collect();
        p[11] += 1;
        p.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0]);
        p.extend_from_slice(&(data.len() as u16).to_be_bytes());
        p.extend_from_slice(&data);
    }

    /// The data of the answer's ECS option, if any.
    fn ecs_echo(resp: &[u8]) -> Option<Vec<u8>> {
        let h = query::Header::read(resp).unwrap();
        let mut pos = HEADER_LEN;
        while resp[pos] != 0 {
            pos += 1 + usize::from(resp[pos]);
        }
        pos += 5;
        let mut found = None;
        for _ in 0..u32::from(h.ancount) + u32::from(h.nscount) + u32::from(h.arcount) {
            let (end, rtype, _) = query::skip_record(resp, pos).unwrap();
            if rtype == TYPE_OPT {
                let mut data = &resp[pos + 11..end];
                while data.len() >= 4 {
                    let code = u16::from_be_bytes([data[0], data[1]]);
                    let len = usize::from(u16::from_be_bytes([data[2], data[3]]));
                    if code == 8 {
                        found = Some(data[4..4 + len].to_vec());
                    }
                    data = &data[4 + len..];
                }
            }
            pos = end;
        }
        found
    }

    #[test]
    fn client_subnet_stands_for_the_client_and_is_echoed_with_a_scope() {
        let (_reg, cell) = snapshot(&[
            spec("w-sa", "web", "sa", "10.9.1.1"),
            spec("w-eu", "web", "eu", "10.9.3.1"),
        ]);
        // The packet comes from sa; its ECS says eu.
        let from_sa = exchange("10.50.1.9", UDP);
        let mut q = query("web.internal", TYPE_A);
        add_edns_options(&mut q, &[(8, &[0, 1, 24, 0, 10, 50, 3])]);
        let (_, out) = ask_with(&cell, &q, &from_sa);
        assert_eq!(
            only_ip(&Packet::parse(&out).unwrap()),
            "10.9.3.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            ecs_echo(&out),
            Some(vec![0, 1, 24, 24, 10, 50, 3]),
            "scope = source"
        );
        // A name that does not depend on the client: scope 0.
        let mut q = query("sa.web.internal", TYPE_A);
        add_edns_options(&mut q, &[(8, &[0, 1, 24, 0, 10, 50, 3])]);
        let (_, out) = ask_with(&cell, &q, &from_sa);
        assert_eq!(ecs_echo(&out), Some(vec![0, 1, 24, 0, 10, 50, 3]));
        // Source prefix 0 discloses nothing: the packet's source decides.
        let mut q = query("web.internal", TYPE_A);
        add_edns_options(&mut q, &[(8, &[0, 1, 0, 0])]);
        let (_, out) = ask_with(&cell, &q, &from_sa);
        assert_eq!(
            only_ip(&Packet::parse(&out).unwrap()),
            "10.9.1.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(ecs_echo(&out), Some(vec![0, 1, 0, 0]));
        // IPv6 ECS, other options beside it.
        let mut q = query("web.internal", TYPE_A);
        add_edns_options(
            &mut q,
            &[
                (10, &[1, 2, 3, 4, 5, 6, 7, 8]),
                (8, &[0, 2, 48, 0, 0x20, 1, 0xd, 0xb8, 0, 1]),
            ],
        );
        let (outcome, out) = ask_with(&cell, &q, &from_sa);
        assert!(matches!(
            outcome,
            Outcome::Answered {
                rcode: Rcode::NoError,
                ..
            }
        ));
        assert_eq!(
            ecs_echo(&out),
            Some(vec![0, 2, 48, 48, 0x20, 1, 0xd, 0xb8, 0, 1])
        );
        // Stickiness follows the subnet: every address of one /24 gets the same answer as the
        // /24 itself.
        let (_reg, many) = snapshot(
            &(0..8)
                .map(|i| spec(&format!("m{i}"), "many", "sa", &format!("10.7.0.{i}")))
                .collect::<Vec<_>>(),
        );
        let answer_for = |ecs: &[u8], from: &str| {
            let mut q = query("many.internal", TYPE_A);
            add_edns_options(&mut q, &[(8, ecs)]);
            only_ip(&Packet::parse(&ask_with(&many, &q, &exchange(from, UDP)).1).unwrap())
        };
        let reference = answer_for(&[0, 1, 24, 0, 10, 50, 1], "127.0.0.1");
        for from in ["127.0.0.2", "10.50.3.3", "::1"] {
            assert_eq!(answer_for(&[0, 1, 24, 0, 10, 50, 1], from), reference);
        }
    }

    #[test]
    fn a_malformed_client_subnet_is_formerr_unless_ecs_is_off() {
        let (_reg, cell) = forms();
        let bad: [&[u8]; 5] = [
            &[0, 1, 24, 0, 10, 50],    // too few address bytes
            &[0, 1, 23, 0, 10, 50, 3], // a bit past the prefix
            &[0, 3, 0, 0],             // unknown family
            &[0, 1, 24, 8, 10, 50, 3], // a scope in a query
            &[0, 1],                   // short
        ];
        for ecs in bad {
            let mut q = query("web.internal", TYPE_A);
            add_edns_options(&mut q, &[(8, ecs)]);
            let (outcome, out) = ask(&cell, &q);
            assert_eq!(
                outcome,
                Outcome::Answered {
                    rcode: Rcode::FormErr,
                    truncated: false
                },
                "{ecs:?}"
            );
            let p = Packet::parse(&out).unwrap();
            assert!(p.answers.is_empty() && p.opt.is_some());
            assert_eq!(ecs_echo(&out), None);
            // With ECS off the option is an unknown one: ignored, not echoed.
            let off = zone().with_ecs(false);
            let mut out = Vec::new();
            let outcome = respond(
                &q,
                &off,
                &cell.load(),
                &exchange("10.50.1.9", UDP),
                &mut out,
            );
            assert!(matches!(
                outcome,
                Outcome::Answered {
                    rcode: Rcode::NoError,
                    ..
                }
            ));
            assert_eq!(ecs_echo(&out), None);
        }
        // Two ECS options: FORMERR.
        let mut q = query("web.internal", TYPE_A);
        add_edns_options(&mut q, &[(8, &[0, 1, 8, 0, 10]), (8, &[0, 1, 8, 0, 10])]);
        assert!(matches!(
            ask(&cell, &q).0,
            Outcome::Answered {
                rcode: Rcode::FormErr,
                ..
            }
        ));
        // With ECS off a good option does not move the client either.
        let off = zone().with_ecs(false);
        let mut q = query("web.internal", TYPE_A);
        add_edns_options(&mut q, &[(8, &[0, 1, 24, 0, 10, 50, 3])]);
        let mut out = Vec::new();
        respond(
            &q,
            &off,
            &cell.load(),
            &exchange("10.50.1.9", UDP),
            &mut out,
        );
        let ip = only_ip(&Packet::parse(&out).unwrap());
        assert!(
            ["10.9.1.1", "10.9.1.2"].contains(&ip.to_string().as_str()),
            "{ip}"
        );
    }
}
