//! A minimal MaxMind DB writer for tests: an IPv4 database whose records are
//! `{"country": {"iso_code": CC}}`, enough for [`super::GeoIp`]. Shared with the integration
//! tests (`#[path]`), so that no binary database needs to be shipped.
//!
//! Format (MaxMind DB 2.0): a binary search tree of 24-bit records, 16 zero bytes, the data
//! section, then `\xAB\xCD\xEFMaxMind.com` and the metadata map.
#![allow(dead_code)]

fn ctrl(out: &mut Vec<u8>, kind: u8, size: usize) {
    assert!(size < 29);
    if kind <= 7 {
        out.push((kind << 5) | size as u8);
    } else {
        out.push(size as u8);
        out.push(kind - 7);
    }
}

fn string(out: &mut Vec<u8>, s: &str) {
    ctrl(out, 2, s.len());
    out.extend_from_slice(s.as_bytes());
}

fn uint(out: &mut Vec<u8>, kind: u8, v: u64) {
    let bytes = v.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    ctrl(out, kind, 8 - skip);
    out.extend_from_slice(&bytes[skip..]);
}

/// `(prefix "a.b.c.d/n", country)` pairs → the bytes of a database.
pub fn country_db(entries: &[(&str, &str)]) -> Vec<u8> {
    // The trie: node i = [left, right]; a child is Node(j), Data(offset) or Empty.
    #[derive(Clone, Copy)]
    enum Rec {
        Empty,
        Node(usize),
        Data(usize),
    }
    let mut nodes: Vec<[Rec; 2]> = vec![[Rec::Empty, Rec::Empty]];
    let mut data = Vec::new();
    for (cidr, cc) in entries {
        let (net, len) = cidr.split_once('/').expect("a.b.c.d/n");
        let net: std::net::Ipv4Addr = net.parse().expect("IPv4");
        let len: u32 = len.parse().expect("prefix");
        assert!((1..=32).contains(&len));
        let offset = data.len();
        ctrl(&mut data, 7, 1);
        string(&mut data, "country");
        ctrl(&mut data, 7, 1);
        string(&mut data, "iso_code");
        string(&mut data, cc);
        let bits = u32::from(net);
        let mut node = 0;
        for depth in 0..len {
            let bit = ((bits >> (31 - depth)) & 1) as usize;
            if depth == len - 1 {
                nodes[node][bit] = Rec::Data(offset);
            } else {
                node = match nodes[node][bit] {
                    Rec::Node(j) => j,
                    _ => {
                        nodes.push([Rec::Empty, Rec::Empty]);
                        let j = nodes.len() - 1;
                        nodes[node][bit] = Rec::Node(j);
                        j
                    }
                };
            }
        }
    }
    let count = nodes.len();
    let mut out = Vec::new();
    for n in &nodes {
        for r in n {
            let v = match *r {
                Rec::Empty => count,
                Rec::Node(j) => j,
                Rec::Data(off) => count + 16 + off,
            } as u32;
            out.extend_from_slice(&v.to_be_bytes()[1..]);
        }
    }
    out.extend_from_slice(&[0u8; 16]);
    out.extend_from_slice(&data);
    out.extend_from_slice(b"\xAB\xCD\xEFMaxMind.com");
    ctrl(&mut out, 7, 9);
    string(&mut out, "binary_format_major_version");
    uint(&mut out, 5, 2);
    string(&mut out, "binary_format_minor_version");
    uint(&mut out, 5, 0);
    string(&mut out, "build_epoch");
    uint(&mut out, 9, 1_700_000_000);
    string(&mut out, "database_type");
    string(&mut out, "Test-Country");
    string(&mut out, "description");
    ctrl(&mut out, 7, 1);
    string(&mut out, "en");
    string(&mut out, "edgeproxy test");
    string(&mut out, "ip_version");
    uint(&mut out, 5, 4);
    string(&mut out, "languages");
    ctrl(&mut out, 11, 1);
    string(&mut out, "en");
    string(&mut out, "node_count");
    uint(&mut out, 6, count as u64);
    string(&mut out, "record_size");
    uint(&mut out, 5, 24);
    out
}
