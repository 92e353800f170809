//! The TLS ClientHello, read without decrypting anything: enough to route a connection by its
//! SNI name before (or instead of) terminating it.
//!
//! Pure and bounded: [`parse`] looks at the bytes a client sent so far and says whether a whole
//! ClientHello is there ([`Parse::Hello`]), more bytes are needed ([`Parse::Incomplete`]), or the
//! bytes can never become one ([`Parse::Invalid`]). It never reads past the slice, never
//! allocates more than [`MAX_HELLO`] bytes, and every length is checked against what contains
//! it. A ClientHello split over several records is reassembled. The caller decides how long to
//! wait for more bytes; this module knows no sockets and no clock.

/// The largest ClientHello body we accept (RFC 8446 allows 2^24, real ones are under 2 KiB even
/// with post-quantum key shares; HAProxy's default `tune.ssl.capture` is far smaller).
pub const MAX_HELLO: usize = 16 * 1024;
/// The most bytes a caller should ever buffer waiting for a ClientHello: the body, plus the
/// record headers of a ClientHello fragmented into the smallest sane records.
pub const MAX_BUFFER: usize = MAX_HELLO + 4 + 5 * 66;
/// Records smaller than this are refused (fragmenting a ClientHello into tiny records is only
/// ever done to evade inspection or to make us buffer).
const MIN_FRAGMENT: usize = 256;

const CONTENT_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;
const MAX_RECORD: usize = 16 * 1024;

/// What a client's first bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parse {
    /// A whole ClientHello.
    Hello(Hello),
    /// Not yet a whole ClientHello: read more (up to [`MAX_BUFFER`] bytes in all).
    Incomplete,
    /// Never a ClientHello, whatever follows; the reason, for the debug log.
    Invalid(&'static str),
}

/// What the router needs of a ClientHello.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Hello {
    /// The SNI host name, lower-cased; `None` when the client sent none.
    pub sni: Option<String>,
    /// The ALPN protocols offered, in the client's order.
    pub alpn: Vec<Vec<u8>>,
}

/// A bounds-checked cursor over a byte slice.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn left(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.left() {
            return None;
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Some(s)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    /// A block preceded by its length in `width` bytes (1 or 2).
    fn block(&mut self, width: usize) -> Option<Reader<'a>> {
        let len = match width {
            1 => self.u8()? as usize,
            _ => self.u16()? as usize,
        };
        self.take(len).map(Reader::new)
    }
}

/// Looks at the first bytes a client sent. See the module documentation.
pub fn parse(buf: &[u8]) -> Parse {
    // Reassemble the handshake message from consecutive handshake records. The first record
    // holds at least the 4-byte handshake header (MIN_FRAGMENT), so the body length is known
    // before anything is copied; the copy is bounded by MAX_HELLO.
    let mut pos = 0;
    let mut msg: Option<Vec<u8>> = None;
    let mut want = 0usize;
    loop {
        if buf.len() - pos < 5 {
            return if buf.len() > MAX_BUFFER {
                Parse::Invalid("too long")
            } else {
                Parse::Incomplete
            };
        }
        let h = &buf[pos..pos + 5];
        if h[0] != CONTENT_HANDSHAKE {
            return Parse::Invalid("not a handshake record");
        }
        if h[1] != 3 || h[2] > 4 {
            return Parse::Invalid("not a TLS record version");
        }
        let len = u16::from_be_bytes([h[3], h[4]]) as usize;
        if len == 0 || len > MAX_RECORD {
            return Parse::Invalid("bad record length");
        }
        let body_start = pos + 5;
        let avail = &buf[body_start..buf.len().min(body_start + len)];
        match &mut msg {
            None => {
                if len < 4 {
                    return Parse::Invalid("record too short");
                }
                if avail.len() < 4 {
                    return Parse::Incomplete;
                }
                if avail[0] != HANDSHAKE_CLIENT_HELLO {
                    return Parse::Invalid("not a ClientHello");
                }
                let body_len =
                    (avail[1] as usize) << 16 | (avail[2] as usize) << 8 | avail[3] as usize;
                if body_len > MAX_HELLO {
                    return Parse::Invalid("ClientHello too long");
                }
                want = 4 + body_len;
                if len < want && len < MIN_FRAGMENT {
                    return Parse::Invalid("ClientHello fragmented into tiny records");
                }
                if avail.len() < len.min(want) {
                    return Parse::Incomplete;
                }
                msg = Some(avail[..len.min(want)].to_vec());
            }
            Some(m) => {
                if len < (want - m.len()).min(MIN_FRAGMENT) {
                    return Parse::Invalid("ClientHello fragmented into tiny records");
                }
                let need = want - m.len();
                if avail.len() < len.min(need) {
                    return Parse::Incomplete;
                }
                m.extend_from_slice(&avail[..len.min(need)]);
            }
        }
        pos = body_start + len;
        if msg.as_ref().is_some_and(|m| m.len() >= want) {
            break;
        }
    }
    let msg = msg.expect("a message was started");
    match hello_body(&msg[4..want]) {
        Some(Ok(hello)) => Parse::Hello(hello),
        Some(Err(why)) => Parse::Invalid(why),
        None => Parse::Invalid("malformed ClientHello"),
    }
}

/// Parses a ClientHello body. `None`: a length runs past what contains it.
fn hello_body(body: &[u8]) -> Option<Result<Hello, &'static str>> {
    let mut r = Reader::new(body);
    let version = r.u16()?;
    if version >> 8 != 3 {
        return Some(Err("not a TLS ClientHello version"));
    }
    r.take(32)?; // random
    let session_id = r.block(1)?;
    if session_id.buf.len() > 32 {
        return Some(Err("session id too long"));
    }
    let suites = r.block(2)?;
    if suites.buf.is_empty() || suites.buf.len() % 2 != 0 {
        return Some(Err("bad cipher suite list"));
    }
    let compression = r.block(1)?;
    if compression.buf.is_empty() {
        return Some(Err("no compression method"));
    }
    let mut hello = Hello::default();
    if r.left() == 0 {
        return Some(Ok(hello)); // no extensions at all (old clients)
    }
    let mut exts = r.block(2)?;
    if r.left() != 0 {
        return Some(Err("bytes after the extensions"));
    }
    let mut seen_sni = false;
    let mut seen_alpn = false;
    while exts.left() > 0 {
        let kind = exts.u16()?;
        let mut data = exts.block(2)?;
        match kind {
            EXT_SERVER_NAME => {
                if std::mem::replace(&mut seen_sni, true) {
                    return Some(Err("two server_name extensions"));
                }
                let mut list = data.block(2)?;
                if data.left() != 0 || list.left() == 0 {
                    return Some(Err("bad server_name extension"));
                }
                while list.left() > 0 {
                    let name_type = list.u8()?;
                    let name = list.block(2)?;
                    if name_type == 0 {
                        if hello.sni.is_some() {
                            return Some(Err("two host names"));
                        }
                        match host_name(name.buf) {
                            Some(n) => hello.sni = Some(n),
                            None => return Some(Err("bad host name")),
                        }
                    }
                }
            }
            EXT_ALPN => {
                if std::mem::replace(&mut seen_alpn, true) {
                    return Some(Err("two ALPN extensions"));
                }
                let mut list = data.block(2)?;
                if data.left() != 0 || list.left() == 0 {
                    return Some(Err("bad ALPN extension"));
                }
                while list.left() > 0 {
                    let proto = list.block(1)?;
                    if proto.buf.is_empty() {
                        return Some(Err("empty ALPN protocol"));
                    }
                    hello.alpn.push(proto.buf.to_vec());
                }
            }
            _ => {}
        }
    }
    Some(Ok(hello))
}

/// A valid DNS host name as SNI carries it (RFC 6066: no trailing dot, no IP literal check
/// needed for routing), lower-cased.
fn host_name(raw: &[u8]) -> Option<String> {
    if raw.is_empty() || raw.len() > 253 {
        return None;
    }
    for label in raw.split(|&b| b == b'.') {
        if label.is_empty() || label.len() > 63 {
            return None;
        }
        if !label
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return None;
        }
    }
    Some(String::from_utf8(raw.to_ascii_lowercase()).expect("ASCII"))
}

/// The bytes of a fatal TLS alert record, sent in the clear before any handshake.
pub fn alert(description: u8) -> [u8; 7] {
    [21, 3, 3, 0, 2, 2, description]
}

/// `unrecognized_name` (RFC 6066).
pub const ALERT_UNRECOGNIZED_NAME: u8 = 112;
/// `decode_error`: what was sent is not a ClientHello.
pub const ALERT_DECODE_ERROR: u8 = 50;
/// `handshake_failure`.
pub const ALERT_HANDSHAKE_FAILURE: u8 = 40;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A ClientHello as a client would send it: one record unless `fragment` is given.
    pub(crate) fn client_hello(
        sni: Option<&str>,
        alpn: &[&str],
        fragment: Option<usize>,
    ) -> Vec<u8> {
        let mut exts = Vec::new();
        if let Some(name) = sni {
            let mut entry = vec![0u8];
            entry.extend_from_slice(&(name.len() as u16).to_be_bytes());
            entry.extend_from_slice(name.as_bytes());
            let mut list = (entry.len() as u16).to_be_bytes().to_vec();
            list.extend_from_slice(&entry);
            exts.extend_from_slice(&0u16.to_be_bytes());
            exts.extend_from_slice(&(list.len() as u16).to_be_bytes());
            exts.extend_from_slice(&list);
        }
        // An unrelated extension (supported_versions) to skip over.
        exts.extend_from_slice(&[0x00, 0x2b, 0x00, 0x03, 0x02, 0x03, 0x04]);
        if !alpn.is_empty() {
            let mut list = Vec::new();
            for p in alpn {
                list.push(p.len() as u8);
                list.extend_from_slice(p.as_bytes());
            }
            exts.extend_from_slice(&16u16.to_be_bytes());
            exts.extend_from_slice(&(list.len() as u16 + 2).to_be_bytes());
            exts.extend_from_slice(&(list.len() as u16).to_be_bytes());
            exts.extend_from_slice(&list);
        }
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7u8; 32]);
        body.push(32);
        body.extend_from_slice(&[9u8; 32]);
        body.extend_from_slice(&[0, 4, 0x13, 0x01, 0x13, 0x02]);
        body.extend_from_slice(&[1, 0]);
        body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        body.extend_from_slice(&exts);
        // Pad like real clients do, so fragmented records stay above MIN_FRAGMENT.
        let mut msg = vec![HANDSHAKE_CLIENT_HELLO];
        msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        msg.extend_from_slice(&body);
        let size = fragment.unwrap_or(msg.len());
        let mut out = Vec::new();
        for chunk in msg.chunks(size) {
            out.extend_from_slice(&[22, 3, 1]);
            out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
            out.extend_from_slice(chunk);
        }
        out
    }

    fn hello(sni: Option<&str>, alpn: &[&str]) -> Parse {
        Parse::Hello(Hello {
            sni: sni.map(str::to_string),
            alpn: alpn.iter().map(|p| p.as_bytes().to_vec()).collect(),
        })
    }

    #[test]
    fn sni_and_alpn_are_read() {
        let ch = client_hello(Some("Gru.Pop.Internal"), &["h2", "http/1.1"], None);
        assert_eq!(
            parse(&ch),
            hello(Some("gru.pop.internal"), &["h2", "http/1.1"])
        );
        let ch = client_hello(None, &[], None);
        assert_eq!(parse(&ch), hello(None, &[]));
    }

    #[test]
    fn every_prefix_is_incomplete() {
        let ch = client_hello(Some("a.example"), &["h2"], None);
        for n in 0..ch.len() {
            assert_eq!(parse(&ch[..n]), Parse::Incomplete, "prefix {n}");
        }
        // Bytes after the ClientHello (a client pipelining) do not matter.
        let mut more = ch.clone();
        more.extend_from_slice(b"\x17\x03\x03junk");
        assert_eq!(parse(&more), hello(Some("a.example"), &["h2"]));
    }

    #[test]
    fn fragmented_hello_is_reassembled() {
        let long = format!("{}example", "abcdefghij.".repeat(20));
        let alpn = ["http/1.1"; 40];
        let ch = client_hello(Some(&long), &alpn, Some(300));
        assert!(ch.len() > 610, "at least three records");
        assert_eq!(parse(&ch), hello(Some(&long), &alpn));
        for n in 0..ch.len() {
            assert_eq!(parse(&ch[..n]), Parse::Incomplete, "prefix {n}");
        }
        // Tiny fragments are refused, not buffered.
        let ch = client_hello(Some(&long), &[], Some(16));
        assert!(matches!(parse(&ch), Parse::Invalid(_)));
    }

    #[test]
    fn garbage_is_invalid_at_once() {
        assert!(matches!(parse(b"GET / HTTP/1.1\r\n"), Parse::Invalid(_)));
        assert!(matches!(parse(&[22, 3, 1, 0, 0]), Parse::Invalid(_)));
        assert!(matches!(parse(&[22, 9, 1, 0, 4]), Parse::Invalid(_)));
        assert!(matches!(
            parse(&[22, 3, 1, 0, 4, 2, 0, 0, 0]),
            Parse::Invalid(_)
        ));
        // A body length beyond the bound is refused before waiting for it.
        assert!(matches!(
            parse(&[22, 3, 1, 0x40, 0, 1, 0x01, 0, 0]),
            Parse::Invalid(_)
        ));
        let mut bad_name = client_hello(Some("a.example"), &[], None);
        let at = bad_name.windows(9).position(|w| w == b"a.example").unwrap();
        bad_name[at + 1] = b'/';
        assert!(matches!(parse(&bad_name), Parse::Invalid(_)));
    }

    /// Deterministic mutation fuzzing: every single-byte change, truncation and a few hundred
    /// thousand random multi-byte mutations of real ClientHellos must give an answer (never a
    /// panic), and a buffer can never be `Incomplete` beyond MAX_BUFFER.
    #[test]
    fn mutations_never_panic() {
        let seeds = [
            client_hello(Some("gru.pop.internal"), &["h2", "http/1.1"], None),
            client_hello(None, &[], None),
            client_hello(Some(&"ab.".repeat(80)[..239]), &["x"; 40], Some(300)),
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for seed in &seeds {
            for i in 0..seed.len() {
                for v in [0u8, 1, 0x7f, 0x80, 0xff, seed[i].wrapping_add(1)] {
                    let mut m = seed.clone();
                    m[i] = v;
                    let _ = parse(&m);
                }
            }
            for _ in 0..100_000 {
                let mut m = seed.clone();
                for _ in 0..(rnd() % 4 + 1) {
                    let i = (rnd() as usize) % m.len();
                    match rnd() % 3 {
                        0 => m[i] = rnd() as u8,
                        1 => m.truncate(i.max(1)),
                        _ => m.insert(i, rnd() as u8),
                    }
                }
                let _ = parse(&m);
            }
        }
        let mut big = vec![22, 3, 1, 0x40, 0];
        big.extend_from_slice(&[1, 0, 0x3f, 0xf0]);
        big.resize(MAX_BUFFER + 10, 0);
        assert_ne!(parse(&big), Parse::Incomplete);
        for _ in 0..20_000 {
            let len = (rnd() % 600) as usize;
            let m: Vec<u8> = (0..len).map(|_| rnd() as u8).collect();
            let _ = parse(&m);
        }
    }
}
