//! The replication wire format, version 1: compact, hand-encoded, every field bounds-checked.
//!
//! A datagram is `[b'R'][version: u8][kind: u8][from: u64]` followed by the body of its kind.
//! Integers are big-endian; strings and byte strings are `[len: u16][bytes]`. Each datagram is
//! complete in itself: nothing depends on another datagram having arrived, or in order
//! (a record split over several datagrams is reassembled by id, version and offset).
//!
//! | kind | body |
//! |---|---|
//! | 1 Ping | `root: u64` (hash of the whole registry) |
//! | 2 Digest | `reply: u8`, `n: u16`, `n × u64` bucket hashes |
//! | 3 Summary | `bucket: u16`, `n: u16`, `n × (id, hlc: u64, origin: u64, tomb: u8)` |
//! | 4 Want | `n: u16`, `n × id` |
//! | 5 Records | `n: u16`, `n × (id, hlc: u64, origin: u64, tomb: u8, value)` |
//! | 6 Chunk | `id, hlc: u64, origin: u64, total: u32, offset: u32, data` |
//! | 7 Liveness | `n: u16`, `n × (id, age_ms: u32)` |

use super::hlc::Hlc;
use super::{NodeId, Version};

pub const MAGIC: u8 = b'R';
pub const WIRE_VERSION: u8 = 1;
/// Magic, version, kind, sender.
pub const HEADER_LEN: usize = 3 + 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Ping = 1,
    Digest = 2,
    Summary = 3,
    Want = 4,
    Records = 5,
    Chunk = 6,
    Liveness = 7,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Ping,
            2 => Kind::Digest,
            3 => Kind::Summary,
            4 => Kind::Want,
            5 => Kind::Records,
            6 => Kind::Chunk,
            7 => Kind::Liveness,
            _ => return None,
        })
    }
}

/// Why a datagram was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WireError {
    /// Not ours, or a version we do not speak.
    BadHeader,
    UnknownKind(u8),
    /// A field runs past the end, or bytes are left over.
    Truncated,
    /// A field that must be UTF-8 is not.
    BadString,
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::BadHeader => f.write_str("not a replication datagram of wire version 1"),
            WireError::UnknownKind(k) => write!(f, "unknown message kind {k}"),
            WireError::Truncated => f.write_str("truncated or oversized field"),
            WireError::BadString => f.write_str("an id is not UTF-8"),
        }
    }
}

/// Starts a datagram of `kind` from `from`.
pub fn header(out: &mut Vec<u8>, kind: Kind, from: NodeId) {
    out.push(MAGIC);
    out.push(WIRE_VERSION);
    out.push(kind as u8);
    out.extend_from_slice(&from.0.to_be_bytes());
}

pub fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

pub fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

pub fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// `[len: u16][bytes]`; callers keep `bytes` under 64 KiB.
pub fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    debug_assert!(b.len() <= u16::MAX as usize);
    put_u16(out, b.len() as u16);
    out.extend_from_slice(b);
}

pub fn put_version(out: &mut Vec<u8>, v: Version) {
    put_u64(out, v.hlc.0);
    put_u64(out, v.origin.0);
}

/// Encoded size of a string or byte string field.
pub fn bytes_len(b: &[u8]) -> usize {
    2 + b.len()
}

/// A bounds-checked reader over one datagram.
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.buf.len() < n {
            return Err(WireError::Truncated);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    pub fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }

    pub fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(self.take(2)?.try_into().expect("2")))
    }

    pub fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().expect("4")))
    }

    pub fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().expect("8")))
    }

    pub fn bytes(&mut self) -> Result<&'a [u8], WireError> {
        let n = self.u16()? as usize;
        self.take(n)
    }

    pub fn str(&mut self) -> Result<&'a str, WireError> {
        std::str::from_utf8(self.bytes()?).map_err(|_| WireError::BadString)
    }

    pub fn version(&mut self) -> Result<Version, WireError> {
        Ok(Version {
            hlc: Hlc(self.u64()?),
            origin: NodeId(self.u64()?),
        })
    }

    /// Fails unless every byte was read: trailing garbage means a bug or tampering.
    pub fn finish(&self) -> Result<(), WireError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(WireError::Truncated)
        }
    }
}

/// Reads a datagram's header: its kind, sender and the body reader.
pub fn read_header(buf: &[u8]) -> Result<(Kind, NodeId, Reader<'_>), WireError> {
    let mut r = Reader::new(buf);
    let magic = r.u8().map_err(|_| WireError::BadHeader)?;
    let version = r.u8().map_err(|_| WireError::BadHeader)?;
    if magic != MAGIC || version != WIRE_VERSION {
        return Err(WireError::BadHeader);
    }
    let kind = r.u8().map_err(|_| WireError::BadHeader)?;
    let kind = Kind::from_u8(kind).ok_or(WireError::UnknownKind(kind))?;
    let from = NodeId(r.u64().map_err(|_| WireError::BadHeader)?);
    Ok((kind, from, r))
}
