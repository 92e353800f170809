//! The DNS answer encoder: header, question echo, A/AAAA/NS/SOA/TXT/SRV/OPT records.
//!
//! Writes into a caller-provided `Vec<u8>` that the servers reuse for every query, so answering
//! allocates nothing once that buffer has grown to its working size. A message is *appended* at
//! the buffer's current end (the TCP server puts the 2-byte length prefix in front of it and
//! several pipelined answers one after the other); every offset inside a message, such as a
//! compression pointer, is relative to the message's own start.
//!
//! Names in records are never written out in full: they are compression pointers into the
//! question name, which the responder has already matched against the zone (the zone apex is a
//! suffix of the question name, so `ns.<zone>` is the label `ns` followed by a pointer).
//!
//! This module knows nothing of apps or snapshots and never fails: the caller decides what to
//! write; [`Message::finish`] enforces the size limit by cutting whole records off the end:
//! records of the additional section go silently (RFC 2181 section 9: TC is not set "merely
//! because some extra information could have been included"); cutting into the answer or
//! authority section sets TC, keeping the records that fit (what `dig` shows) so that the
//! client retries over TCP.

use std::net::{Ipv4Addr, Ipv6Addr};

pub const HEADER_LEN: usize = 12;
/// Offset of the question name within a message: right after the header.
pub const QNAME_OFFSET: u16 = HEADER_LEN as u16;

pub const TYPE_A: u16 = 1;
pub const TYPE_NS: u16 = 2;
pub const TYPE_SOA: u16 = 6;
pub const TYPE_TXT: u16 = 16;
pub const TYPE_AAAA: u16 = 28;
pub const TYPE_SRV: u16 = 33;
pub const TYPE_OPT: u16 = 41;
pub const TYPE_IXFR: u16 = 251;
pub const TYPE_AXFR: u16 = 252;
pub const TYPE_ANY: u16 = 255;

pub const CLASS_IN: u16 = 1;
pub const CLASS_ANY: u16 = 255;

pub const FLAG_QR: u16 = 0x8000;
pub const OPCODE_MASK: u16 = 0x7800;
pub const FLAG_AA: u16 = 0x0400;
pub const FLAG_TC: u16 = 0x0200;
pub const FLAG_RD: u16 = 0x0100;
pub const FLAG_CD: u16 = 0x0010;
/// The DNSSEC OK bit in the OPT record's flags.
pub const EDNS_FLAG_DO: u16 = 0x8000;

/// The EDNS option code of EDNS Client Subnet (RFC 7871).
pub const OPTION_ECS: u16 = 8;

/// The smallest UDP payload every DNS client accepts (RFC 1035), and the EDNS floor (RFC 6891).
pub const MIN_UDP_SIZE: u16 = 512;

/// A response code. Codes above 15 are extended: their high bits travel in the OPT record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rcode {
    NoError,
    FormErr,
    ServFail,
    NxDomain,
    NotImp,
    Refused,
    /// EDNS version not supported (RFC 6891); needs an OPT record to be expressed.
    BadVers,
}

impl Rcode {
    pub fn code(self) -> u16 {
        match self {
            Rcode::NoError => 0,
            Rcode::FormErr => 1,
            Rcode::ServFail => 2,
            Rcode::NxDomain => 3,
            Rcode::NotImp => 4,
            Rcode::Refused => 5,
            Rcode::BadVers => 16,
        }
    }
}

/// The record sections whose counts follow the question count in the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Answer,
    Authority,
    Additional,
}

impl Section {
    fn count_offset(self) -> usize {
        match self {
            Section::Answer => 6,
            Section::Authority => 8,
            Section::Additional => 10,
        }
    }
}

/// An owner or target name, written as a compression pointer (possibly after one label).
#[derive(Debug, Clone, Copy)]
pub enum NameRef<'a> {
    /// The name at this offset of the message.
    At(u16),
    /// One label, then the name at this offset: `ns` + zone.
    LabelThen(&'a [u8], u16),
    /// Labels already in wire form (length-prefixed, no root byte), then the name at this
    /// offset: `<id>.vm.<app>` + zone.
    WireThen(&'a [u8], u16),
}

/// The SOA record's data; names are derived from the zone apex's offset.
#[derive(Debug, Clone, Copy)]
pub struct Soa {
    /// Where the zone apex's name starts in the message.
    pub zone_at: u16,
    pub serial: u32,
    pub refresh: u32,
    pub retry: u32,
    pub expire: u32,
    /// Negative-caching TTL (RFC 2308).
    pub minimum: u32,
}

/// The OPT pseudo-record we send back (RFC 6891).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opt {
    /// The UDP payload size we advertise.
    pub udp_size: u16,
    /// Copied from the query: DNSSEC OK.
    pub dnssec_ok: bool,
    /// The EDNS Client Subnet option echoed back, when the query's was honoured.
    pub ecs: Option<EcsEcho>,
}

/// The ECS option of an answer (RFC 7871 section 7.2.1): the query's family, source prefix
/// length and address, with our scope prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EcsEcho {
    pub family: u16,
    pub source: u8,
    pub scope: u8,
    /// The address, of which the first `ceil(source / 8)` bytes are sent.
    pub addr: [u8; 16],
}

impl EcsEcho {
    fn addr_len(&self) -> usize {
        usize::from(self.source).div_ceil(8)
    }
}

impl Opt {
    /// Its length on the wire.
    pub fn wire_len(&self) -> usize {
        11 + self.ecs.map_or(0, |e| 8 + e.addr_len())
    }
}

/// A TXT record being written: its character-strings are filled up to 255 bytes each.
pub struct Txt {
    /// Where the RDLENGTH is (message offset).
    len_at: usize,
    /// Where the current character-string's length byte is (message offset).
    string_at: usize,
    /// Items written so far.
    items: usize,
    /// Whether an item did not fit into the record's 65,535 bytes.
    cut: bool,
}

/// The most RDATA we put into one TXT record: with the header, a question of at most 259 bytes,
/// the record's head and an OPT, the message still fits TCP's 65,535 bytes, so a list too long
/// for one message is answered in part with TC rather than not at all.
const TXT_MAX_RDATA: usize = 64_000;

/// One DNS message being written at the end of a buffer.
pub struct Message<'a> {
    buf: &'a mut Vec<u8>,
    /// Where this message starts in `buf`.
    base: usize,
    /// Message length at the end of the question (where truncation cuts back to).
    question_end: usize,
    rcode: Rcode,
    /// Size beyond which writers should stop adding records ([`Message::full`]).
    limit: usize,
}

impl<'a> Message<'a> {
    /// Starts a message at the end of `buf`: the header with `id` and `flags` (QR is set by
    /// the caller's flags; the rcode is set by [`Message::set_rcode`]), every count zero.
    pub fn begin(buf: &'a mut Vec<u8>, id: u16, flags: u16) -> Self {
        let base = buf.len();
        buf.extend_from_slice(&id.to_be_bytes());
        buf.extend_from_slice(&(flags & !0x000f).to_be_bytes());
        buf.extend_from_slice(&[0; 8]);
        Message {
            buf,
            base,
            question_end: HEADER_LEN,
            rcode: Rcode::NoError,
            limit: usize::MAX,
        }
    }

    /// Tells writers of many records when to stop ([`Message::full`]); [`Message::finish`]
    /// still enforces its own limit.
    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit;
    }

    /// Whether the message has reached the limit: more records would only be cut.
    pub fn full(&self) -> bool {
        self.len() >= self.limit
    }

    /// The answer section's record count so far.
    pub fn answers(&self) -> u16 {
        self.u16_at(Section::Answer.count_offset())
    }

    /// The length of the message so far.
    pub fn len(&self) -> usize {
        self.buf.len() - self.base
    }

    /// Whether only the header has been written.
    pub fn is_empty(&self) -> bool {
        self.len() <= HEADER_LEN
    }

    fn put_u16_at(&mut self, at: usize, v: u16) {
        let at = self.base + at;
        self.buf[at..at + 2].copy_from_slice(&v.to_be_bytes());
    }

    fn u16_at(&self, at: usize) -> u16 {
        let at = self.base + at;
        u16::from_be_bytes([self.buf[at], self.buf[at + 1]])
    }

    fn put_u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    fn put_u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    fn put_name(&mut self, name: NameRef<'_>) {
        match name {
            NameRef::At(at) => self.put_u16(0xc000 | at),
            NameRef::LabelThen(label, at) => {
                debug_assert!(!label.is_empty() && label.len() < 64);
                self.buf.push(label.len() as u8);
                self.buf.extend_from_slice(label);
                self.put_u16(0xc000 | at);
            }
            NameRef::WireThen(labels, at) => {
                self.buf.extend_from_slice(labels);
                self.put_u16(0xc000 | at);
            }
        }
    }

    fn count(&mut self, section: Section) {
        let at = section.count_offset();
        let n = self.u16_at(at).saturating_add(1);
        self.put_u16_at(at, n);
    }

    /// Sets the header's response code (its low 4 bits; [`Message::finish`] puts the high bits
    /// of an extended code into the OPT record).
    pub fn set_rcode(&mut self, rcode: Rcode) {
        self.rcode = rcode;
        let flags = (self.u16_at(2) & !0x000f) | (rcode.code() & 0x000f);
        self.put_u16_at(2, flags);
    }

    pub fn rcode(&self) -> Rcode {
        self.rcode
    }

    /// Adds header flags (AA, TC).
    pub fn add_flags(&mut self, flags: u16) {
        let f = self.u16_at(2) | flags;
        self.put_u16_at(2, f);
    }

    /// Echoes the question: `raw` is its wire form exactly as received (name, type, class),
    /// which keeps the client's letter case. Call once, right after [`Message::begin`].
    pub fn question(&mut self, raw: &[u8]) {
        debug_assert_eq!(self.len(), HEADER_LEN);
        self.buf.extend_from_slice(raw);
        self.put_u16_at(4, 1);
        self.question_end = self.len();
    }

    fn record_head(&mut self, section: Section, name: NameRef<'_>, rtype: u16, ttl: u32) {
        self.put_name(name);
        self.put_u16(rtype);
        self.put_u16(CLASS_IN);
        self.put_u32(ttl);
        self.count(section);
    }

    pub fn a(&mut self, section: Section, name: NameRef<'_>, ttl: u32, ip: Ipv4Addr) {
        self.record_head(section, name, TYPE_A, ttl);
        self.put_u16(4);
        self.buf.extend_from_slice(&ip.octets());
    }

    pub fn aaaa(&mut self, section: Section, name: NameRef<'_>, ttl: u32, ip: Ipv6Addr) {
        self.record_head(section, name, TYPE_AAAA, ttl);
        self.put_u16(16);
        self.buf.extend_from_slice(&ip.octets());
    }

    pub fn ns(&mut self, section: Section, name: NameRef<'_>, ttl: u32, target: NameRef<'_>) {
        self.record_head(section, name, TYPE_NS, ttl);
        let len_at = self.len();
        self.put_u16(0);
        self.put_name(target);
        self.patch_rdlength(len_at);
    }

    /// The zone's SOA, owned by the apex: `ns.<zone>. hostmaster.<zone>. serial ...`.
    pub fn soa(&mut self, section: Section, ttl: u32, soa: &Soa) {
        self.record_head(section, NameRef::At(soa.zone_at), TYPE_SOA, ttl);
        let len_at = self.len();
        self.put_u16(0);
        self.put_name(NameRef::LabelThen(b"ns", soa.zone_at));
        self.put_name(NameRef::LabelThen(b"hostmaster", soa.zone_at));
        for v in [soa.serial, soa.refresh, soa.retry, soa.expire, soa.minimum] {
            self.put_u32(v);
        }
        self.patch_rdlength(len_at);
    }

    /// An SRV record (RFC 2782); returns the message offset of its target name, for later
    /// names to point into.
    #[allow(clippy::too_many_arguments)]
    pub fn srv(
        &mut self,
        section: Section,
        name: NameRef<'_>,
        ttl: u32,
        priority: u16,
        weight: u16,
        port: u16,
        target: NameRef<'_>,
    ) -> usize {
        self.record_head(section, name, TYPE_SRV, ttl);
        let len_at = self.len();
        self.put_u16(0);
        self.put_u16(priority);
        self.put_u16(weight);
        self.put_u16(port);
        let target_at = self.len();
        self.put_name(target);
        self.patch_rdlength(len_at);
        target_at
    }

    /// Starts a TXT record whose text is a list of items, filled with [`Message::txt_item`]
    /// and closed with [`Message::txt_end`].
    pub fn txt_begin(&mut self, section: Section, name: NameRef<'_>, ttl: u32) -> Txt {
        self.record_head(section, name, TYPE_TXT, ttl);
        let len_at = self.len();
        self.put_u16(0);
        let string_at = self.len();
        self.buf.push(0);
        Txt {
            len_at,
            string_at,
            items: 0,
            cut: false,
        }
    }

    /// Appends one item (the concatenation of `parts`) to the list, after a comma. The text is
    /// the concatenation of the record's character-strings (as for SPF, RFC 7208); a string
    /// holds at most 255 bytes, and a new one starts before an item that would not fit in the
    /// current one, so short items are never split across strings. Returns false (and writes
    /// nothing) once the record is full.
    pub fn txt_item(&mut self, txt: &mut Txt, parts: &[&[u8]]) -> bool {
        let item_len: usize = parts.iter().map(|p| p.len()).sum();
        if txt.cut || self.len() - txt.len_at + item_len + item_len / 255 + 3 > TXT_MAX_RDATA {
            txt.cut = true;
            return false;
        }
        if txt.items > 0 {
            self.txt_bytes(txt, b",");
        }
        let used = self.len() - txt.string_at - 1;
        if used > 0 && used + item_len > 255 && item_len <= 255 {
            self.txt_new_string(txt);
        }
        for part in parts {
            self.txt_bytes(txt, part);
        }
        txt.items += 1;
        true
    }

    fn txt_new_string(&mut self, txt: &mut Txt) {
        let used = self.len() - txt.string_at - 1;
        self.buf[self.base + txt.string_at] = used as u8;
        txt.string_at = self.len();
        self.buf.push(0);
    }

    fn txt_bytes(&mut self, txt: &mut Txt, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let used = self.len() - txt.string_at - 1;
            if used == 255 {
                self.txt_new_string(txt);
                continue;
            }
            let n = bytes.len().min(255 - used);
            self.buf.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
        }
    }

    /// Closes a TXT record; returns whether every item fitted.
    pub fn txt_end(&mut self, txt: Txt) -> bool {
        let used = self.len() - txt.string_at - 1;
        self.buf[self.base + txt.string_at] = used as u8;
        self.patch_rdlength(txt.len_at);
        !txt.cut
    }

    /// Sorts the answer records written since message offset `from`, which must all be
    /// `N` bytes long and alike but for their data (one address RRset), and removes
    /// duplicates: an RRset holds each record once (RFC 2181 section 5). No allocation.
    pub fn dedupe_answers<const N: usize>(&mut self, from: usize) {
        let start = self.base + from;
        let records = &mut self.buf[start..];
        debug_assert_eq!(records.len() % N, 0);
        let n = records.len() / N;
        heap_sort_records::<N>(records, n);
        let mut kept = 0;
        for i in 0..n {
            if kept == 0 || records[i * N..(i + 1) * N] != records[(kept - 1) * N..kept * N] {
                records.copy_within(i * N..(i + 1) * N, kept * N);
                kept += 1;
            }
        }
        if kept < n {
            self.buf.truncate(start + kept * N);
            let at = Section::Answer.count_offset();
            let count = self.u16_at(at) - (n - kept) as u16;
            self.put_u16_at(at, count);
        }
    }

    fn patch_rdlength(&mut self, len_at: usize) {
        let rdlen = (self.len() - len_at - 2) as u16;
        self.put_u16_at(len_at, rdlen);
    }

    fn opt(&mut self, opt: &Opt) {
        self.buf.push(0); // root name
        self.put_u16(TYPE_OPT);
        self.put_u16(opt.udp_size);
        self.buf.push((self.rcode.code() >> 4) as u8); // extended rcode, high 8 bits
        self.buf.push(0); // EDNS version
        self.put_u16(if opt.dnssec_ok { EDNS_FLAG_DO } else { 0 });
        match opt.ecs {
            None => self.put_u16(0),
            Some(ecs) => {
                let n = ecs.addr_len();
                self.put_u16(8 + n as u16);
                self.put_u16(OPTION_ECS);
                self.put_u16(4 + n as u16);
                self.put_u16(ecs.family);
                self.buf.push(ecs.source);
                self.buf.push(ecs.scope);
                self.buf.extend_from_slice(&ecs.addr[..n]);
            }
        }
        self.count(Section::Additional);
    }

    /// Ends the message: appends `opt` when given. When the whole does not fit in `limit`
    /// bytes, whole records are cut off the end until it does (header, question and OPT are
    /// always kept); TC is set when a record of the answer or authority section had to go,
    /// not for the additional section (RFC 2181 section 9). Returns whether TC is set.
    pub fn finish(mut self, opt: Option<&Opt>, limit: usize) -> bool {
        let opt_len = opt.map_or(0, Opt::wire_len);
        if self.len() + opt_len > limit {
            self.cut_to(limit.saturating_sub(opt_len));
        }
        if let Some(opt) = opt {
            self.opt(opt);
        }
        self.u16_at(2) & FLAG_TC != 0
    }

    /// Keeps the longest run of whole records that ends within `limit` bytes.
    fn cut_to(&mut self, limit: usize) {
        let counts = [Section::Answer, Section::Authority, Section::Additional]
            .map(|s| self.u16_at(s.count_offset()));
        let mut kept = [0u16; 3];
        let mut end = self.question_end;
        let msg = &self.buf[self.base..];
        'sections: for (s, &count) in counts.iter().enumerate() {
            for _ in 0..count {
                match super::query::skip_record(msg, end) {
                    Ok((next, _, _)) if next <= limit => {
                        end = next;
                        kept[s] += 1;
                    }
                    _ => break 'sections,
                }
            }
        }
        self.buf.truncate(self.base + end);
        for (s, section) in [Section::Answer, Section::Authority, Section::Additional]
            .into_iter()
            .enumerate()
        {
            self.put_u16_at(section.count_offset(), kept[s]);
        }
        if kept[0] < counts[0] || kept[1] < counts[1] {
            self.add_flags(FLAG_TC);
        }
    }
}

/// Sorts the `n` records of `N` bytes each in `buf` by their bytes: a heap sort, in place and
/// without allocating (`slice::as_chunks_mut` is newer than our minimum Rust).
fn heap_sort_records<const N: usize>(buf: &mut [u8], n: usize) {
    let less = |buf: &[u8], i: usize, j: usize| buf[i * N..(i + 1) * N] < buf[j * N..(j + 1) * N];
    let swap = |buf: &mut [u8], i: usize, j: usize| {
        let mut t = [0u8; N];
        t.copy_from_slice(&buf[i * N..(i + 1) * N]);
        buf.copy_within(j * N..(j + 1) * N, i * N);
        buf[j * N..(j + 1) * N].copy_from_slice(&t);
    };
    let sift_down = |buf: &mut [u8], mut root: usize, end: usize| loop {
        let mut child = 2 * root + 1;
        if child >= end {
            return;
        }
        if child + 1 < end && less(buf, child, child + 1) {
            child += 1;
        }
        if !less(buf, root, child) {
            return;
        }
        swap(buf, root, child);
        root = child;
    };
    for root in (0..n / 2).rev() {
        sift_down(buf, root, n);
    }
    for end in (1..n).rev() {
        swap(buf, 0, end);
        sift_down(buf, 0, end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `a.internal` IN A, as a query would carry it.
    fn raw_question() -> Vec<u8> {
        let mut q = vec![1, b'a', 8];
        q.extend_from_slice(b"internal");
        q.extend_from_slice(&[0, 0, 1, 0, 1]);
        q
    }

    #[test]
    fn writes_a_parseable_answer_after_existing_bytes() {
        let mut buf = vec![0xaa, 0xbb]; // e.g. a TCP length prefix
        let q = raw_question();
        let mut m = Message::begin(&mut buf, 0x1234, FLAG_QR | FLAG_AA);
        m.question(&q);
        m.a(
            Section::Answer,
            NameRef::At(QNAME_OFFSET),
            5,
            Ipv4Addr::new(10, 50, 1, 1),
        );
        m.soa(
            Section::Authority,
            5,
            &Soa {
                zone_at: QNAME_OFFSET + 2,
                serial: 7,
                refresh: 1,
                retry: 2,
                expire: 3,
                minimum: 5,
            },
        );
        let truncated = m.finish(
            Some(&Opt {
                udp_size: 1232,
                dnssec_ok: true,
                ecs: None,
            }),
            512,
        );
        assert!(!truncated);
        assert_eq!(&buf[..2], &[0xaa, 0xbb]);
        let p = dns_parser::Packet::parse(&buf[2..]).unwrap();
        assert_eq!(p.header.id, 0x1234);
        assert!(p.header.authoritative);
        assert_eq!(p.answers.len(), 1);
        assert_eq!(p.answers[0].name.to_string(), "a.internal");
        match p.answers[0].data {
            dns_parser::RData::A(a) => assert_eq!(a.0, Ipv4Addr::new(10, 50, 1, 1)),
            ref other => panic!("not an A: {other:?}"),
        }
        match p.nameservers[0].data {
            dns_parser::RData::SOA(ref soa) => {
                assert_eq!(p.nameservers[0].name.to_string(), "internal");
                assert_eq!(soa.primary_ns.to_string(), "ns.internal");
                assert_eq!(soa.mailbox.to_string(), "hostmaster.internal");
                assert_eq!(
                    (
                        soa.serial,
                        soa.refresh,
                        soa.retry,
                        soa.expire,
                        soa.minimum_ttl
                    ),
                    (7, 1, 2, 3, 5)
                );
            }
            ref other => panic!("not an SOA: {other:?}"),
        }
        let opt = p.opt.unwrap();
        assert_eq!((opt.udp, opt.version, opt.flags), (1232, 0, EDNS_FLAG_DO));
    }

    #[test]
    fn over_the_limit_keeps_question_and_opt_and_sets_tc() {
        let mut buf = Vec::new();
        let q = raw_question();
        let mut m = Message::begin(&mut buf, 9, FLAG_QR);
        m.question(&q);
        for i in 0..4 {
            m.a(
                Section::Answer,
                NameRef::At(QNAME_OFFSET),
                5,
                Ipv4Addr::new(10, 0, 0, i),
            );
        }
        let opt = Opt {
            udp_size: 512,
            dnssec_ok: false,
            ecs: None,
        };
        assert!(m.finish(Some(&opt), 40));
        let p = dns_parser::Packet::parse(&buf).unwrap();
        assert!(p.header.truncated);
        assert_eq!(p.questions.len(), 1);
        assert!(p.answers.is_empty() && p.nameservers.is_empty());
        assert_eq!(p.opt.unwrap().udp, 512);
        assert_eq!(buf.len(), HEADER_LEN + q.len() + 11);
    }

    #[test]
    fn extended_rcode_goes_into_opt() {
        let mut buf = Vec::new();
        let mut m = Message::begin(&mut buf, 1, FLAG_QR);
        m.set_rcode(Rcode::BadVers);
        let opt = Opt {
            udp_size: 1232,
            dnssec_ok: false,
            ecs: None,
        };
        m.finish(Some(&opt), 512);
        let p = dns_parser::Packet::parse(&buf).unwrap();
        // 16 = header 0 + OPT 1 << 4.
        assert_eq!(buf[3] & 0x0f, 0);
        assert_eq!(p.opt.unwrap().extrcode, 1);
    }

    #[test]
    fn address_sets_are_sorted_and_deduplicated() {
        let mut buf = Vec::new();
        let q = raw_question();
        let mut m = Message::begin(&mut buf, 9, FLAG_QR);
        m.question(&q);
        let from = m.len();
        let mut state = 7u64;
        let mut want = Vec::new();
        for _ in 0..500 {
            state = crate::registry::mix64(state);
            let ip = Ipv4Addr::new(10, 0, (state % 3) as u8, (state >> 8) as u8 % 50);
            want.push(ip);
            m.a(Section::Answer, NameRef::At(QNAME_OFFSET), 5, ip);
        }
        m.dedupe_answers::<16>(from);
        assert!(!m.finish(None, usize::MAX));
        want.sort();
        want.dedup();
        let p = dns_parser::Packet::parse(&buf).unwrap();
        let got: Vec<Ipv4Addr> = p
            .answers
            .iter()
            .map(|rr| match rr.data {
                dns_parser::RData::A(a) => a.0,
                ref other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(got, want);
    }
}
