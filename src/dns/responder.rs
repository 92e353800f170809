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
use crate::geo::RegionMap;
use crate::registry::Snapshot;
use crate::select::{pick, Client};
use std::net::IpAddr;

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
    region_map: RegionMap,
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
            region_map,
        }
    }

    pub fn from_config(cfg: &Config) -> Zone {
        Zone::new(
            &cfg.dns_zone,
            cfg.dns_ttl_secs,
            cfg.dns_max_udp_size,
            &cfg.region,
            cfg.region_map.clone(),
        )
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
    let Some(header) = Header::read(packet) else {
        return Outcome::Dropped;
    };
    if header.is_response() {
        return Outcome::Dropped;
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
            return Outcome::Answered { rcode, truncated };
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
    Outcome::Answered { rcode, truncated }
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
                let client = Client::new(ex.client, zone.region_map.region_of(ex.client));
                pick(snap, group, &client, &zone.hub_region, ex.now_ms, &[])
            });
            match chosen {
                Some((i, _tier)) => {
                    let ip = snap.backend(i).ip;
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
    snap.app_names().any(|app| {
        app.len() > name.len() + 1
            && app.ends_with(name)
            && app.as_bytes()[app.len() - name.len() - 1] == b'.'
    })
}
