//! The DNS responder: query bytes + zone + snapshot + who asks → answer bytes. Pure: no socket,
//! no clock (the time comes in), no allocation beyond the caller's reused output buffer.
//!
//! What it answers, for the zone `<zone>` (`internal` by default):
//! - `<app>.<zone>` (app names may contain dots): the best live backend of exactly that app for
//!   this client, chosen by [`crate::select::pick`]; one A or AAAA record. A query for the other
//!   address family, or any other type, gets NOERROR with no answer (NODATA) and the SOA.
//! - An app with no live backend right now: NXDOMAIN with the SOA, as Consul does for a service
//!   without a healthy instance. Resolvers then cache the absence for the SOA minimum (the TTL,
//!   5 s by default) instead of holding on to a dead address.
//! - A name with apps below it but none of its own (`pop.<zone>` when `gru.pop` exists) exists
//!   as an empty non-terminal: NODATA, never NXDOMAIN, which would tell RFC 8020 resolvers that
//!   nothing below it exists either.
//! - The apex: SOA and NS (`ns.<zone>`); `ns.<zone>` answers with the address the query
//!   arrived on when the server knows it. `ns` is therefore not usable as an app name in DNS.
//! - Other names in the zone: NXDOMAIN with the SOA. Names outside it: REFUSED (no recursion).
//! - Class other than IN or ANY: REFUSED: we hold no data in any other class (CHAOS
//!   `version.bind` probes included), the same answer as for a name we are not authoritative for.
//! - Opcode other than QUERY, and zone transfers (AXFR, IXFR): NOTIMP.
//! - Malformed queries: FORMERR when the header is readable, silence when not. Responses
//!   (QR=1) are dropped so that two servers can never be made to bounce packets at each other.
//! - EDNS0: an OPT in the query gets one in the answer; EDNS version > 0 gets BADVERS.
//!   Over UDP the answer must fit the client's size (512 without EDNS, and never more than
//!   our own maximum), else it is cut to header + question (+ OPT) with TC set.

use super::query::{self, Edns, Header, Question, MAX_NAME_LEN};
use super::wire::{
    Message, NameRef, Opt, Rcode, Section, Soa, CLASS_ANY, CLASS_IN, FLAG_AA, FLAG_CD, FLAG_QR,
    FLAG_RD, MIN_UDP_SIZE, OPCODE_MASK, QNAME_OFFSET, TYPE_A, TYPE_AAAA, TYPE_ANY, TYPE_AXFR,
    TYPE_IXFR, TYPE_NS, TYPE_OPT, TYPE_SOA,
};
use crate::config::Config;
use crate::geo::{Geo, RegionMap};
use crate::registry::Snapshot;
use crate::select::{pick_with, Client, Policy, Scope};
use std::net::IpAddr;
use std::sync::Arc;

/// SOA timers. Nothing transfers this zone (no secondaries), so these only need to be sane.
const SOA_REFRESH: u32 = 3600;
const SOA_RETRY: u32 = 600;
const SOA_EXPIRE: u32 = 86_400;

/// The largest DNS message (TCP's 2-byte length).
pub const MAX_MESSAGE: usize = 65_535;

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
}

impl Zone {
    /// `name` is a validated DNS name (see `config`), without trailing dot.
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
            hub_region: hub_region.to_string(),
            geo: Arc::new(Geo::with_map(region_map)),
            balance_factor: crate::select::DEFAULT_BALANCE_FACTOR,
        }
    }

    pub fn from_config(cfg: &Config) -> Zone {
        let mut zone = Zone::new(
            &cfg.dns_zone,
            cfg.dns_ttl_secs,
            cfg.dns_max_udp_size,
            &cfg.region,
            RegionMap::new(Vec::new()),
        );
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
    /// Who asks: chooses the backend (region, stickiness).
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
    Nameserver,
    /// The lower-case app name, as text.
    App(usize),
    /// Labels that cannot be an app name (characters apps may not have).
    Invalid,
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
    let opt = q.edns.map(|e: Edns| Opt {
        udp_size: e
            .udp_size
            .clamp(MIN_UDP_SIZE, zone.max_udp_size.max(MIN_UDP_SIZE)),
        dnssec_ok: e.dnssec_ok,
    });
    msg.question(q.question.raw);
    let rcode = answer(&mut msg, &q, zone, snap, ex);
    msg.set_rcode(rcode);
    let truncated = msg.finish(opt.as_ref(), limit);
    (
        Outcome::Answered { rcode, truncated },
        Some(q.question.qtype),
    )
}

/// Writes the records for a parsed query and returns the rcode.
fn answer(
    msg: &mut Message<'_>,
    q: &query::Query<'_>,
    zone: &Zone,
    snap: &Snapshot,
    ex: &Exchange,
) -> Rcode {
    if q.header.opcode() != 0 {
        return Rcode::NotImp;
    }
    if q.edns.is_some_and(|e| e.version != 0) {
        return Rcode::BadVers;
    }
    let question = &q.question;
    if question.qtype == TYPE_OPT {
        return Rcode::FormErr;
    }
    if question.qclass != CLASS_IN && question.qclass != CLASS_ANY {
        return Rcode::Refused;
    }
    let mut app_buf = [0u8; MAX_NAME_LEN];
    let Some(zone_at) = zone_offset(question, zone) else {
        return Rcode::Refused;
    };
    if question.qtype == TYPE_AXFR || question.qtype == TYPE_IXFR {
        return Rcode::NotImp;
    }
    let place = classify(question, zone, &mut app_buf);
    let soa = Soa {
        zone_at,
        serial: snap.version as u32,
        refresh: SOA_REFRESH,
        retry: SOA_RETRY,
        expire: SOA_EXPIRE,
        minimum: zone.ttl,
    };
    let ttl = zone.ttl;
    let qtype = question.qtype;
    let owner = NameRef::At(QNAME_OFFSET);
    msg.add_flags(FLAG_AA);
    match place {
        Place::Apex => {
            let ns_name = NameRef::LabelThen(b"ns", zone_at);
            let mut any = false;
            if qtype == TYPE_SOA || qtype == TYPE_ANY {
                msg.soa(Section::Answer, ttl, &soa);
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
                msg.soa(Section::Authority, ttl, &soa);
            }
            Rcode::NoError
        }
        Place::Nameserver => {
            match ex.server {
                Some(ip) if wants(qtype, ip) => address(msg, Section::Answer, owner, ttl, ip),
                _ => msg.soa(Section::Authority, ttl, &soa),
            }
            Rcode::NoError
        }
        Place::App(len) => {
            // Only DNS-safe ASCII was copied into the buffer (see `classify`).
            let app = std::str::from_utf8(&app_buf[..len]).unwrap_or("");
            let chosen = snap.app(app).and_then(|group| {
                let client = Client::at(ex.client, zone.geo.locate(ex.client));
                let policy = Policy {
                    hub_region: &zone.hub_region,
                    regions: zone.geo.regions(),
                    balance_factor: zone.balance_factor,
                };
                pick_with(Scope::App(group), &client, &policy, ex.now_ms, &[], |_| {
                    true
                })
            });
            match chosen {
                Some((backend, _tier)) => {
                    let ip = backend.ip;
                    if wants(qtype, ip) {
                        address(msg, Section::Answer, owner, ttl, ip);
                    } else {
                        msg.soa(Section::Authority, ttl, &soa);
                    }
                    Rcode::NoError
                }
                None => {
                    msg.soa(Section::Authority, ttl, &soa);
                    if has_apps_below(snap, app) {
                        Rcode::NoError
                    } else {
                        Rcode::NxDomain
                    }
                }
            }
        }
        Place::Invalid => {
            msg.soa(Section::Authority, ttl, &soa);
            Rcode::NxDomain
        }
    }
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

/// Classifies an in-zone name; for an app, writes its lower-case text form into `buf`.
fn classify(question: &Question<'_>, zone: &Zone, buf: &mut [u8; MAX_NAME_LEN]) -> Place {
    let own = question.labels().count().saturating_sub(zone.labels);
    if own == 0 {
        return Place::Apex;
    }
    let mut len = 0;
    for (n, label) in question.labels().take(own).enumerate() {
        if !label
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
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
    if &buf[..len] == b"ns" {
        Place::Nameserver
    } else {
        Place::App(len)
    }
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
}
