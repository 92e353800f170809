//! DNS for a load generator: the dnsperf query file, query encoding, and just enough answer
//! decoding to count rcodes and check an address. Pure functions over bytes.

use std::net::IpAddr;

/// One line of a query file, already encoded as a query with id 0 (the id is patched in
/// per send, bytes 0..2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub name: String,
    pub qtype: u16,
    pub wire: Vec<u8>,
}

/// The record types a query file may name (dnsperf accepts these mnemonics or `TYPEnnn`).
pub fn qtype_of(s: &str) -> Option<u16> {
    let t = s.to_ascii_uppercase();
    Some(match t.as_str() {
        "A" => 1,
        "NS" => 2,
        "CNAME" => 5,
        "SOA" => 6,
        "PTR" => 12,
        "MX" => 15,
        "TXT" => 16,
        "AAAA" => 28,
        "SRV" => 33,
        "DS" => 43,
        "DNSKEY" => 48,
        "HTTPS" => 65,
        "ANY" => 255,
        _ => return t.strip_prefix("TYPE").and_then(|n| n.parse().ok()),
    })
}

/// Parses dnsperf's format: `name TYPE` per line; blank lines and `#` comments are skipped.
/// Errors name the line.
pub fn parse_query_file(text: &str) -> Result<Vec<Query>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut words = line.split_whitespace();
        let name = words.next().expect("a non-empty line has a word");
        let ty = words.next().unwrap_or("A");
        if words.next().is_some() {
            return Err(format!(
                "line {}: expected `name TYPE`, got {line:?}",
                i + 1
            ));
        }
        let qtype =
            qtype_of(ty).ok_or_else(|| format!("line {}: unknown record type {ty:?}", i + 1))?;
        let wire = encode_query(0, name, qtype).map_err(|e| format!("line {}: {e}", i + 1))?;
        out.push(Query {
            name: name.to_string(),
            qtype,
            wire,
        });
    }
    if out.is_empty() {
        return Err("the query file has no queries".into());
    }
    Ok(out)
}

/// A standard query (RD set, no EDNS) for `name`/`qtype` with message id `id`.
pub fn encode_query(id: u16, name: &str, qtype: u16) -> Result<Vec<u8>, String> {
    let mut q = Vec::with_capacity(17 + name.len() + 1);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    let trimmed = name.trim_end_matches('.');
    if !trimmed.is_empty() {
        for label in trimmed.split('.') {
            if label.is_empty() || label.len() > 63 {
                return Err(format!("{name:?}: empty label or label over 63 bytes"));
            }
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
    }
    q.push(0);
    if q.len() - 12 > 255 {
        return Err(format!("{name:?}: name over 255 bytes"));
    }
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    Ok(q)
}

/// Sets the message id of an encoded query.
pub fn set_id(wire: &mut [u8], id: u16) {
    wire[..2].copy_from_slice(&id.to_be_bytes());
}

/// The message id of a reply, if it is long enough to be one.
pub fn reply_id(wire: &[u8]) -> Option<u16> {
    (wire.len() >= 12).then(|| u16::from_be_bytes([wire[0], wire[1]]))
}

/// The rcode's name, as counted in results.
pub fn rcode_name(rcode: u8) -> &'static str {
    match rcode {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        6 => "YXDOMAIN",
        7 => "YXRRSET",
        8 => "NXRRSET",
        9 => "NOTAUTH",
        10 => "NOTZONE",
        _ => "RCODE-OTHER",
    }
}

/// What a load generator needs of a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub id: u16,
    pub rcode: u8,
    pub truncated: bool,
    /// A and AAAA records of the answer section.
    pub addrs: Vec<IpAddr>,
}

fn skip_name(wire: &[u8], mut at: usize) -> Option<usize> {
    for _ in 0..128 {
        let len = *wire.get(at)?;
        match len & 0xC0 {
            0x00 if len == 0 => return Some(at + 1),
            0x00 => at += 1 + len as usize,
            0xC0 => return (at + 2 <= wire.len()).then_some(at + 2),
            _ => return None,
        }
    }
    None
}

fn u16_at(wire: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*wire.get(at)?, *wire.get(at + 1)?]))
}

/// Decodes a reply's header and the addresses of its answer section. `None` if malformed.
pub fn parse_reply(wire: &[u8]) -> Option<Reply> {
    if wire.len() < 12 || wire[2] & 0x80 == 0 {
        return None;
    }
    let id = u16_at(wire, 0)?;
    let rcode = wire[3] & 0x0F;
    let truncated = wire[2] & 0x02 != 0;
    let qd = u16_at(wire, 4)?;
    let an = u16_at(wire, 6)?;
    let mut at = 12;
    for _ in 0..qd {
        at = skip_name(wire, at)? + 4;
    }
    let mut addrs = Vec::new();
    for _ in 0..an {
        at = skip_name(wire, at)?;
        let rtype = u16_at(wire, at)?;
        let rdlen = u16_at(wire, at + 8)? as usize;
        let rdata = wire.get(at + 10..at + 10 + rdlen)?;
        match (rtype, rdlen) {
            (1, 4) => addrs.push(IpAddr::from(<[u8; 4]>::try_from(rdata).ok()?)),
            (28, 16) => addrs.push(IpAddr::from(<[u8; 16]>::try_from(rdata).ok()?)),
            _ => {}
        }
        at += 10 + rdlen;
    }
    Some(Reply {
        id,
        rcode,
        truncated,
        addrs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_file_in_dnsperf_format() {
        let text = "# the ten pops\ngru.pop.internal A\n\n  iad.pop.internal   AAAA  \nx.internal TYPE65 # svcb\nbare.internal\n";
        let q = parse_query_file(text).unwrap();
        assert_eq!(q.len(), 4);
        assert_eq!((q[0].name.as_str(), q[0].qtype), ("gru.pop.internal", 1));
        assert_eq!(q[1].qtype, 28);
        assert_eq!(q[2].qtype, 65);
        assert_eq!(q[3].qtype, 1);
        assert_eq!(q[0].wire, encode_query(0, "gru.pop.internal", 1).unwrap());
    }

    #[test]
    fn query_file_errors_name_the_line() {
        assert!(parse_query_file("a.internal BOGUS\n")
            .unwrap_err()
            .contains("line 1"));
        assert!(parse_query_file("ok.internal A\na b c\n")
            .unwrap_err()
            .contains("line 2"));
        let long = format!("{}.internal A", "x".repeat(64));
        assert!(parse_query_file(&long).unwrap_err().contains("63"));
        assert!(parse_query_file("# nothing\n\n").is_err());
    }

    #[test]
    fn encodes_the_wire_format() {
        let q = encode_query(0xBEEF, "gru.pop.internal.", 28).unwrap();
        assert_eq!(&q[..4], &[0xBE, 0xEF, 0x01, 0x00]);
        assert_eq!(&q[4..12], &[0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&q[12..16], b"\x03gru");
        assert_eq!(&q[q.len() - 4..], &[0, 28, 0, 1]);
        let mut q2 = q.clone();
        set_id(&mut q2, 7);
        assert_eq!(&q2[..2], &[0, 7]);
    }

    fn reply_with(rcode: u8, answers: &[(u16, &[u8])]) -> Vec<u8> {
        let mut r = encode_query(42, "gru.pop.internal", 1).unwrap();
        r[2] |= 0x80;
        r[3] |= rcode;
        r[7] = answers.len() as u8;
        for (t, data) in answers {
            r.extend_from_slice(&[0xC0, 12]);
            r.extend_from_slice(&t.to_be_bytes());
            r.extend_from_slice(&[0, 1, 0, 0, 0, 5]);
            r.extend_from_slice(&(data.len() as u16).to_be_bytes());
            r.extend_from_slice(data);
        }
        r
    }

    #[test]
    fn decodes_rcode_and_addresses() {
        let r = parse_reply(&reply_with(0, &[(1, &[10, 50, 1, 1]), (5, b"\x01x\x00")])).unwrap();
        assert_eq!(r.id, 42);
        assert_eq!(r.rcode, 0);
        assert_eq!(r.addrs, vec!["10.50.1.1".parse::<IpAddr>().unwrap()]);
        let r = parse_reply(&reply_with(3, &[])).unwrap();
        assert_eq!(rcode_name(r.rcode), "NXDOMAIN");
        assert!(r.addrs.is_empty());
        // A query (QR clear) and truncated garbage are not replies.
        assert_eq!(parse_reply(&encode_query(1, "a", 1).unwrap()), None);
        let full = reply_with(0, &[(1, &[1, 2, 3, 4])]);
        assert_eq!(parse_reply(&full[..full.len() - 2]), None);
        assert_eq!(reply_id(&full), Some(42));
        assert_eq!(reply_id(&full[..5]), None);
    }
}
