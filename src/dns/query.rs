//! Reading a DNS query: header, the one question, and the OPT record if any.
//!
//! Hand-written rather than `dns_parser::Packet::parse`, which we use only to check our answers
//! in tests, because for a server that parser does the wrong thing on ordinary traffic:
//! - it refuses every QTYPE it does not know (HTTPS and SVCB, which browsers and stub resolvers
//!   send beside every A/AAAA query, CAA, DS...), so we could not answer those NODATA;
//! - it refuses unknown record types in the additional section (a TSIG, a SIG(0));
//! - its header parser refuses the Z bit;
//! - it allocates four `Vec`s per packet.
//!
//! This reader borrows from the packet, allocates nothing, and never panics: every index is
//! bounds-checked. It accepts exactly what a query may carry: one question whose name has no
//! compression pointer (nothing precedes it to point at), records in the answer and authority
//! sections skipped, at most one OPT record, which must be owned by the root, whose options
//! must tile its data exactly. Of the options, only EDNS Client Subnet (RFC 7871) is read; it
//! is validated here, and whether a bad one matters is the responder's call (it does only
//! when ECS is honoured).

use super::wire::{FLAG_QR, HEADER_LEN, OPCODE_MASK, OPTION_ECS, TYPE_OPT};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The longest name on the wire (RFC 1035).
pub const MAX_NAME_LEN: usize = 255;
/// At most this many labels fit in a 255-byte name.
pub const MAX_LABELS: usize = 127;

/// What the header says, readable whenever at least 12 bytes arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub id: u16,
    pub flags: u16,
    pub qdcount: u16,
    pub ancount: u16,
    pub nscount: u16,
    pub arcount: u16,
}

impl Header {
    pub fn read(packet: &[u8]) -> Option<Header> {
        let h = packet.get(..HEADER_LEN)?;
        let at = |i: usize| u16::from_be_bytes([h[i], h[i + 1]]);
        Some(Header {
            id: at(0),
            flags: at(2),
            qdcount: at(4),
            ancount: at(6),
            nscount: at(8),
            arcount: at(10),
        })
    }

    pub fn is_response(&self) -> bool {
        self.flags & FLAG_QR != 0
    }

    pub fn opcode(&self) -> u16 {
        (self.flags & OPCODE_MASK) >> 11
    }
}

/// The question, borrowed from the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Question<'a> {
    /// Name, type and class exactly as received: what the answer echoes.
    pub raw: &'a [u8],
    /// The name in wire form (length-prefixed labels, ending with the root's zero byte).
    pub name: &'a [u8],
    pub qtype: u16,
    pub qclass: u16,
}

impl<'a> Question<'a> {
    /// The labels of the name, first (leftmost) to last.
    pub fn labels(&self) -> Labels<'a> {
        Labels { rest: self.name }
    }
}

/// An iterator over the labels of a validated uncompressed wire name.
#[derive(Debug, Clone)]
pub struct Labels<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Labels<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let (&len, tail) = self.rest.split_first()?;
        let len = usize::from(len);
        if len == 0 || tail.len() < len {
            self.rest = &[];
            return None;
        }
        let (label, rest) = tail.split_at(len);
        self.rest = rest;
        Some(label)
    }
}

/// The query's EDNS0 record (RFC 6891).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edns {
    /// The largest UDP response the client accepts.
    pub udp_size: u16,
    pub version: u8,
    pub dnssec_ok: bool,
    /// The EDNS Client Subnet option, when the query carries one: valid or why not.
    pub client_subnet: Option<Result<ClientSubnet, BadClientSubnet>>,
}

/// A valid EDNS Client Subnet option (RFC 7871 section 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientSubnet {
    /// 1 = IPv4, 2 = IPv6.
    pub family: u16,
    /// How many leading bits of `addr` the resolver disclosed.
    pub source: u8,
    /// The address, every bit past `source` zero.
    pub addr: IpAddr,
}

impl ClientSubnet {
    /// The address bytes as sent: the first `ceil(source / 8)` of these 16.
    pub fn addr_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        match self.addr {
            IpAddr::V4(v4) => b[..4].copy_from_slice(&v4.octets()),
            IpAddr::V6(v6) => b.copy_from_slice(&v6.octets()),
        }
        b
    }
}

/// Why an ECS option is malformed: each is a FORMERR (RFC 7871 section 7.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadClientSubnet {
    /// Shorter than its fixed 4 bytes.
    Short,
    /// A family other than 1 (IPv4) or 2 (IPv6).
    Family(u16),
    /// A source prefix longer than the family's addresses.
    SourceTooLong,
    /// Not exactly `ceil(source / 8)` address bytes.
    AddressLength,
    /// Address bits set beyond the source prefix.
    BitsBeyondSource,
    /// A scope prefix other than 0 in a query.
    Scope,
    /// More than one ECS option.
    Repeated,
}

/// Reads the data of an ECS option.
fn client_subnet(data: &[u8]) -> Result<ClientSubnet, BadClientSubnet> {
    let [f0, f1, source, scope, addr @ ..] = data else {
        return Err(BadClientSubnet::Short);
    };
    let family = u16::from_be_bytes([*f0, *f1]);
    let width = match family {
        1 => 4,
        2 => 16,
        other => return Err(BadClientSubnet::Family(other)),
    };
    if usize::from(*source) > width * 8 {
        return Err(BadClientSubnet::SourceTooLong);
    }
    if addr.len() != usize::from(*source).div_ceil(8) {
        return Err(BadClientSubnet::AddressLength);
    }
    if *scope != 0 {
        return Err(BadClientSubnet::Scope);
    }
    let mut bytes = [0u8; 16];
    bytes[..addr.len()].copy_from_slice(addr);
    let bits = u128::from_be_bytes(bytes);
    let mask = u128::MAX.checked_shr(u32::from(*source)).unwrap_or(0);
    if bits & mask != 0 {
        return Err(BadClientSubnet::BitsBeyondSource);
    }
    let addr = if width == 4 {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(bytes))
    };
    Ok(ClientSubnet {
        family,
        source: *source,
        addr,
    })
}

/// Reads the options of an OPT record's data: `None` when they do not tile it exactly.
fn options(data: &[u8]) -> Option<Option<Result<ClientSubnet, BadClientSubnet>>> {
    let mut ecs = None;
    let mut rest = data;
    while !rest.is_empty() {
        let [c0, c1, l0, l1, tail @ ..] = rest else {
            return None;
        };
        let len = usize::from(u16::from_be_bytes([*l0, *l1]));
        if tail.len() < len {
            return None;
        }
        let (value, after) = tail.split_at(len);
        if u16::from_be_bytes([*c0, *c1]) == OPTION_ECS {
            ecs = Some(match ecs {
                None => client_subnet(value),
                Some(_) => Err(BadClientSubnet::Repeated),
            });
        }
        rest = after;
    }
    Some(ecs)
}

/// Why a packet is not a well-formed query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// QDCOUNT is not 1.
    QuestionCount(u16),
    /// The packet ends inside a name or record.
    Truncated,
    /// A label with the reserved 0b01/0b10 prefix, or a compression pointer where none may be.
    BadLabel,
    /// A name longer than 255 bytes.
    NameTooLong,
    /// A second OPT record, an OPT record not owned by the root, or options that overrun it.
    BadOpt,
}

/// A query that parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Query<'a> {
    pub header: Header,
    pub question: Question<'a>,
    pub edns: Option<Edns>,
}

fn read_u16(packet: &[u8], at: usize) -> Result<u16, Malformed> {
    match packet.get(at..at + 2) {
        Some(b) => Ok(u16::from_be_bytes([b[0], b[1]])),
        None => Err(Malformed::Truncated),
    }
}

/// The length of the uncompressed name starting at `at`.
fn name_len_uncompressed(packet: &[u8], at: usize) -> Result<usize, Malformed> {
    let mut pos = at;
    loop {
        let len = usize::from(*packet.get(pos).ok_or(Malformed::Truncated)?);
        if len & 0xc0 != 0 {
            return Err(Malformed::BadLabel);
        }
        pos += 1 + len;
        if pos - at > MAX_NAME_LEN {
            return Err(Malformed::NameTooLong);
        }
        if len == 0 {
            return Ok(pos - at);
        }
    }
}

/// Skips a possibly compressed name starting at `at`; returns the offset after it. A pointer
/// ends the name where it stands, so it need not be followed to skip.
fn skip_name(packet: &[u8], at: usize) -> Result<usize, Malformed> {
    let mut pos = at;
    loop {
        let len = usize::from(*packet.get(pos).ok_or(Malformed::Truncated)?);
        match len & 0xc0 {
            0x00 if len == 0 => return Ok(pos + 1),
            0x00 => pos += 1 + len,
            0xc0 => {
                packet.get(pos + 1).ok_or(Malformed::Truncated)?;
                return Ok(pos + 2);
            }
            _ => return Err(Malformed::BadLabel),
        }
        if pos - at > MAX_NAME_LEN {
            return Err(Malformed::NameTooLong);
        }
    }
}

/// Skips one resource record at `at`; returns (offset after it, type, name was the root).
pub(crate) fn skip_record(packet: &[u8], at: usize) -> Result<(usize, u16, bool), Malformed> {
    let after_name = skip_name(packet, at)?;
    let rtype = read_u16(packet, after_name)?;
    let rdlen = usize::from(read_u16(packet, after_name + 8)?);
    let end = after_name + 10 + rdlen;
    if end > packet.len() {
        return Err(Malformed::Truncated);
    }
    Ok((end, rtype, after_name == at + 1))
}

/// Parses the part after the header. The header must already have been read.
pub fn parse(packet: &[u8], header: Header) -> Result<Query<'_>, Malformed> {
    if header.qdcount != 1 {
        return Err(Malformed::QuestionCount(header.qdcount));
    }
    let name_len = name_len_uncompressed(packet, HEADER_LEN)?;
    let name_end = HEADER_LEN + name_len;
    let qtype = read_u16(packet, name_end)?;
    let qclass = read_u16(packet, name_end + 2)?;
    let question = Question {
        raw: &packet[HEADER_LEN..name_end + 4],
        name: &packet[HEADER_LEN..name_end],
        qtype,
        qclass,
    };
    let mut pos = name_end + 4;
    for _ in 0..u32::from(header.ancount) + u32::from(header.nscount) {
        pos = skip_record(packet, pos)?.0;
    }
    let mut edns = None;
    for _ in 0..header.arcount {
        let start = pos;
        let (end, rtype, root) = skip_record(packet, pos)?;
        pos = end;
        if rtype != TYPE_OPT {
            continue;
        }
        if !root || edns.is_some() {
            return Err(Malformed::BadOpt);
        }
        // root(1) type(2) size(2) ext-rcode(1) version(1) flags(2) rdlen(2)
        let udp_size = read_u16(packet, start + 3)?;
        let version = packet[start + 6];
        let flags = read_u16(packet, start + 7)?;
        let client_subnet = options(&packet[start + 11..end]).ok_or(Malformed::BadOpt)?;
        edns = Some(Edns {
            udp_size,
            version,
            dnssec_ok: flags & super::wire::EDNS_FLAG_DO != 0,
            client_subnet,
        });
    }
    // Bytes after the last counted record are ignored, as most servers do.
    Ok(Query {
        header,
        question,
        edns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(name: &[u8], extra: &[u8], arcount: u16) -> Vec<u8> {
        let mut p = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0];
        p.extend_from_slice(&arcount.to_be_bytes());
        p.extend_from_slice(name);
        p.extend_from_slice(&[0, 1, 0, 1]);
        p.extend_from_slice(extra);
        p
    }

    #[test]
    fn reads_question_and_opt() {
        let name = b"\x03GrU\x03pop\x08internal\x00";
        let opt = [0, 0, 41, 0x04, 0xd0, 0, 0, 0x80, 0, 0, 0];
        let p = packet(name, &opt, 1);
        let h = Header::read(&p).unwrap();
        let q = parse(&p, h).unwrap();
        assert_eq!(q.question.name, name);
        assert_eq!(q.question.raw.len(), name.len() + 4);
        assert_eq!((q.question.qtype, q.question.qclass), (1, 1));
        let labels: Vec<&[u8]> = q.question.labels().collect();
        assert_eq!(labels, vec![&b"GrU"[..], b"pop", b"internal"]);
        assert_eq!(
            q.edns,
            Some(Edns {
                udp_size: 1232,
                version: 0,
                dnssec_ok: true,
                client_subnet: None,
            })
        );
    }

    fn ecs_option(data: &[u8]) -> Vec<u8> {
        let mut opt = vec![0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0];
        opt.extend_from_slice(&((data.len() + 4) as u16).to_be_bytes());
        opt.extend_from_slice(&[0, 8]);
        opt.extend_from_slice(&(data.len() as u16).to_be_bytes());
        opt.extend_from_slice(data);
        opt
    }

    fn ecs_of(data: &[u8]) -> Option<Result<ClientSubnet, BadClientSubnet>> {
        let p = packet(b"\x01a\x00", &ecs_option(data), 1);
        parse(&p, Header::read(&p).unwrap())
            .unwrap()
            .edns
            .unwrap()
            .client_subnet
    }

    #[test]
    fn reads_client_subnet() {
        let ok = |family, source, addr: &str| {
            Some(Ok(ClientSubnet {
                family,
                source,
                addr: addr.parse().unwrap(),
            }))
        };
        assert_eq!(ecs_of(&[0, 1, 24, 0, 10, 50, 3]), ok(1, 24, "10.50.3.0"));
        assert_eq!(ecs_of(&[0, 1, 32, 0, 1, 2, 3, 4]), ok(1, 32, "1.2.3.4"));
        assert_eq!(ecs_of(&[0, 1, 0, 0]), ok(1, 0, "0.0.0.0"));
        assert_eq!(
            ecs_of(&[0, 2, 56, 0, 0x20, 1, 0xd, 0xb8, 0, 0, 0x12]),
            ok(2, 56, "2001:db8:0:1200::")
        );
        let bad = |data: &[u8], why| assert_eq!(ecs_of(data), Some(Err(why)), "{data:?}");
        bad(&[0, 1, 24], BadClientSubnet::Short);
        bad(&[0, 3, 0, 0], BadClientSubnet::Family(3));
        bad(
            &[0, 1, 33, 0, 1, 2, 3, 4, 5],
            BadClientSubnet::SourceTooLong,
        );
        bad(&[0, 2, 129, 0], BadClientSubnet::SourceTooLong);
        bad(&[0, 1, 24, 0, 10, 50], BadClientSubnet::AddressLength);
        bad(&[0, 1, 24, 0, 10, 50, 3, 0], BadClientSubnet::AddressLength);
        bad(&[0, 1, 23, 0, 10, 50, 3], BadClientSubnet::BitsBeyondSource);
        bad(&[0, 1, 24, 24, 10, 50, 3], BadClientSubnet::Scope);
        // Two ECS options: the second makes it bad.
        let mut opt = ecs_option(&[0, 1, 8, 0, 10]);
        opt.extend_from_slice(&[0, 8, 0, 5, 0, 1, 8, 0, 10]);
        opt[10] += 9;
        let p = packet(b"\x01a\x00", &opt, 1);
        let edns = parse(&p, Header::read(&p).unwrap()).unwrap().edns.unwrap();
        assert_eq!(edns.client_subnet, Some(Err(BadClientSubnet::Repeated)));
        // Other options are skipped; options that overrun the OPT data are malformed.
        let mut opt = ecs_option(&[0, 1, 8, 0, 10]);
        opt.extend_from_slice(&[0, 10, 0, 2, 7, 7]);
        opt[10] += 6;
        let p = packet(b"\x01a\x00", &opt, 1);
        let edns = parse(&p, Header::read(&p).unwrap()).unwrap().edns.unwrap();
        assert_eq!(edns.client_subnet, ok(1, 8, "10.0.0.0"));
        let mut opt = ecs_option(&[0, 1, 8, 0, 10]);
        opt.extend_from_slice(&[0, 10, 0, 9, 7, 7]);
        opt[10] += 6;
        let p = packet(b"\x01a\x00", &opt, 1);
        assert_eq!(parse(&p, Header::read(&p).unwrap()), Err(Malformed::BadOpt));
    }

    #[test]
    fn refuses_what_a_query_may_not_carry() {
        let name = b"\x01a\x00";
        let opt = [0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0];
        let two_opts = [opt, opt].concat();
        let p = packet(name, &two_opts, 2);
        assert_eq!(parse(&p, Header::read(&p).unwrap()), Err(Malformed::BadOpt));
        let p = packet(b"\xc0\x0c", &[], 0);
        assert_eq!(
            parse(&p, Header::read(&p).unwrap()),
            Err(Malformed::BadLabel)
        );
        let p = packet(b"\x05ab", &[], 0);
        assert_eq!(
            parse(&p, Header::read(&p).unwrap()),
            Err(Malformed::Truncated)
        );
        let long: Vec<u8> = (0..5)
            .flat_map(|_| std::iter::once(63).chain([b'a'; 63]))
            .chain([0])
            .collect();
        let p = packet(&long, &[], 0);
        assert_eq!(
            parse(&p, Header::read(&p).unwrap()),
            Err(Malformed::NameTooLong)
        );
        let mut p = packet(name, &[], 0);
        p[5] = 2;
        assert_eq!(
            parse(&p, Header::read(&p).unwrap()),
            Err(Malformed::QuestionCount(2))
        );
        // An additional record that is not OPT is skipped, even with a compressed name.
        let other = [0xc0, 0x0c, 0, 250, 0, 255, 0, 0, 0, 0, 0, 1, 7];
        let p = packet(name, &other, 1);
        assert!(parse(&p, Header::read(&p).unwrap()).unwrap().edns.is_none());
    }
}
