//! The cluster envelope: every datagram on the gossip (4001) and sync (4002) ports is sealed
//! here before it is sent and opened here before anything else reads it.
//!
//! With a cluster key (`EDGEPROXY_CLUSTER_KEY`, base64 of 32 bytes) the payload is encrypted and
//! authenticated with ChaCha20-Poly1305 (aws-lc-rs); the header travels in clear but is authenticated
//! as associated data. Several keys may be configured for rotation: the first seals, every one
//! opens. Without a key the same header is sent with the payload in clear and no tag ("no key"
//! mode, warned about at startup): a keyed node drops such datagrams, and a keyless node drops
//! keyed ones, so a node with the wrong key (or none) never joins.
//!
//! Header (28 bytes, then the sender's node id):
//!
//! ```text
//! 0 version=1 | 1 mode (0 no key, 1 ChaCha20-Poly1305) | 2 channel | 3 sender id length (1-64)
//! 4..8   key fingerprint (first 4 bytes of SHA-256 of the key; 0 without a key)
//! 8..12  cluster fingerprint (first 4 bytes of SHA-256 of the cluster name)
//! 12..20 sender boot epoch (u64, big endian: Unix ms when the sender started)
//! 20..28 sequence number (u64, big endian, never repeats within one boot)
//! 28..   sender node id (UTF-8), then the payload, then the 16-byte tag (mode 1)
//! ```
//!
//! The nonce is the first 12 bytes of SHA-256 over the header and sender id: unique as long as
//! (sender, epoch, channel, sequence) is, which one process-wide counter guarantees. Replays are
//! refused with a per-sender sliding window of [`WINDOW`] sequence numbers (reordering within it
//! is fine) and the boot epoch (an older boot of a sender is refused); at most [`MAX_SENDERS`]
//! windows are kept, the least recently heard-from is forgotten first.
//!
//! Pure: no socket, no clock of its own (the caller passes `now_ms`). Never panics on input.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use base64::Engine;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// Envelope format version.
pub const VERSION: u8 = 1;
/// Fixed part of the header.
pub const HEADER_LEN: usize = 28;
/// ChaCha20-Poly1305 tag length.
pub const TAG_LEN: usize = 16;
/// Longest node id.
pub const MAX_SENDER_LEN: usize = 64;
/// Most bytes the envelope adds to a payload.
pub const MAX_OVERHEAD: usize = HEADER_LEN + MAX_SENDER_LEN + TAG_LEN;
/// Sequence numbers behind the newest one that may still arrive (reordering tolerance).
pub const WINDOW: u64 = 128;
/// Most senders whose replay window is remembered.
pub const MAX_SENDERS: usize = 1024;

const MODE_PLAIN: u8 = 0;
const MODE_CHACHA: u8 = 1;

/// What a datagram carries; part of the authenticated header, so a datagram captured on one
/// channel cannot be replayed onto another.
pub mod channel {
    /// foca (SWIM) messages, on the gossip port.
    pub const GOSSIP: u8 = 1;
    /// Membership notices of ours beside foca's (a graceful leave), on the gossip port.
    pub const CONTROL: u8 = 2;
    /// Registry replication, on the sync port.
    pub const SYNC: u8 = 3;
}

/// Sequence numbers are process-wide, so two keyrings of one process (gossip and sync) never
/// produce the same (sender, epoch, sequence) and hence never the same nonce.
static NEXT_SEQ: AtomicU64 = AtomicU64::new(1);

/// Why a datagram was dropped. Each is counted (`edgeproxy_cluster_dropped_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Drop {
    /// Not an envelope of ours (too short, unknown version or mode, bad sender id).
    Malformed,
    /// Not sealed with a key we hold (wrong key, tampered, keyed vs. no-key mismatch).
    Auth,
    /// Authentic, but from another cluster name.
    WrongCluster,
    /// Seen already, too old for the window, or from an older boot of its sender.
    Replay,
    /// Sent by this node itself (a bootstrap peer list that names ourselves).
    Own,
}

impl Drop {
    /// Every reason, in the order metrics list them.
    pub const ALL: [Drop; 5] = [
        Drop::Malformed,
        Drop::Auth,
        Drop::WrongCluster,
        Drop::Replay,
        Drop::Own,
    ];

    /// The metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Drop::Malformed => "malformed",
            Drop::Auth => "auth",
            Drop::WrongCluster => "wrong_cluster",
            Drop::Replay => "replay",
            Drop::Own => "own",
        }
    }

    /// Index into [`Drop::ALL`].
    pub fn index(self) -> usize {
        Drop::ALL.iter().position(|d| *d == self).unwrap_or(0)
    }
}

impl std::fmt::Display for Drop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An opened datagram: who sent it, on which channel, and the plain payload (a slice of the
/// datagram buffer, decrypted in place).
#[derive(Debug, PartialEq, Eq)]
pub struct Opened<'a> {
    pub sender: &'a str,
    /// The sender's boot epoch: a larger one than before means it restarted.
    pub epoch: u64,
    pub channel: u8,
    pub payload: &'a [u8],
}

/// Parses `EDGEPROXY_CLUSTER_KEY`: comma-separated base64 keys of 32 bytes each.
pub fn parse_keys(s: &str) -> Result<Vec<[u8; 32]>, String> {
    let mut keys = Vec::new();
    for (i, part) in s.split(',').map(str::trim).enumerate() {
        if part.is_empty() {
            continue;
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(part)
            .map_err(|e| format!("cluster key #{}: not base64: {e}", i + 1))?;
        let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
            format!(
                "cluster key #{}: {} bytes, need 32 (generate one with `openssl rand -base64 32`)",
                i + 1,
                bytes.len()
            )
        })?;
        keys.push(key);
    }
    Ok(keys)
}

fn fingerprint(domain: &[u8], bytes: &[u8]) -> u32 {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(domain);
    ctx.update(bytes);
    let d = ctx.finish();
    let b = d.as_ref();
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn nonce_for(header: &[u8]) -> Nonce {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, header);
    let mut n = [0u8; NONCE_LEN];
    n.copy_from_slice(&d.as_ref()[..NONCE_LEN]);
    Nonce::assume_unique_for_key(n)
}

/// One sender's replay window.
struct Window {
    epoch: u64,
    /// Highest sequence number accepted.
    top: u64,
    /// Bit `i`: `top - i` was accepted.
    seen: u128,
    last_ms: u64,
}

impl Window {
    /// Accepts `seq` once; `false` when it is a replay or too old.
    fn accept(&mut self, seq: u64) -> bool {
        if seq > self.top {
            let shift = seq - self.top;
            self.seen = if shift >= WINDOW {
                0
            } else {
                self.seen << shift
            };
            self.seen |= 1;
            self.top = seq;
            return true;
        }
        let back = self.top - seq;
        if back >= WINDOW || self.seen & (1u128 << back) != 0 {
            return false;
        }
        self.seen |= 1u128 << back;
        true
    }
}

/// This node's keys and identity on the wire, and every sender's replay window.
pub struct Keyring {
    /// (fingerprint, key); the first seals.
    keys: Vec<(u32, LessSafeKey)>,
    node_id: Box<str>,
    cluster: u32,
    epoch: u64,
    windows: HashMap<Box<str>, Window>,
}

impl Keyring {
    /// `keys` empty: the "no key" mode. `node_id` is cut to [`MAX_SENDER_LEN`] bytes (config
    /// validation refuses longer ones). `epoch`: this process's boot time in Unix ms.
    pub fn new(keys: &[[u8; 32]], node_id: &str, cluster_name: &str, epoch: u64) -> Keyring {
        let keys = keys
            .iter()
            .map(|k| {
                let unbound = UnboundKey::new(&CHACHA20_POLY1305, k).expect("32-byte key");
                (
                    fingerprint(b"edgeproxy cluster key\0", k),
                    LessSafeKey::new(unbound),
                )
            })
            .collect();
        let mut end = node_id.len().min(MAX_SENDER_LEN);
        while !node_id.is_char_boundary(end) {
            end -= 1;
        }
        Keyring {
            keys,
            node_id: node_id[..end].into(),
            cluster: fingerprint(b"edgeproxy cluster name\0", cluster_name.as_bytes()),
            epoch,
            windows: HashMap::new(),
        }
    }

    /// Whether datagrams are authenticated (a key is configured).
    pub fn keyed(&self) -> bool {
        !self.keys.is_empty()
    }

    /// This node's id as it goes on the wire.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Senders whose replay window is remembered.
    pub fn senders(&self) -> usize {
        self.windows.len()
    }

    /// Writes into `out` (cleared first) the datagram carrying `payload` on `channel`.
    pub fn seal(&mut self, channel: u8, payload: &[u8], out: &mut Vec<u8>) {
        let seq = NEXT_SEQ.fetch_add(1, Ordering::Relaxed);
        out.clear();
        let (mode, fp) = match self.keys.first() {
            Some((fp, _)) => (MODE_CHACHA, *fp),
            None => (MODE_PLAIN, 0),
        };
        out.extend_from_slice(&[VERSION, mode, channel, self.node_id.len() as u8]);
        out.extend_from_slice(&fp.to_be_bytes());
        out.extend_from_slice(&self.cluster.to_be_bytes());
        out.extend_from_slice(&self.epoch.to_be_bytes());
        out.extend_from_slice(&seq.to_be_bytes());
        out.extend_from_slice(self.node_id.as_bytes());
        let header_len = out.len();
        out.extend_from_slice(payload);
        if let Some((_, key)) = self.keys.first() {
            let (header, body) = out.split_at_mut(header_len);
            let nonce = nonce_for(header);
            // Sealing fails only past ChaCha20's 256 GiB per-message limit.
            let tag = key
                .seal_in_place_separate_tag(nonce, Aad::from(&*header), body)
                .expect("a datagram is far below the AEAD's size limit");
            out.extend_from_slice(tag.as_ref());
        }
    }

    /// Checks and opens a datagram (decrypting it in place). `now_ms` is only used to decide
    /// which sender to forget when [`MAX_SENDERS`] are remembered.
    pub fn open<'a>(&mut self, now_ms: u64, datagram: &'a mut [u8]) -> Result<Opened<'a>, Drop> {
        if datagram.len() < HEADER_LEN || datagram[0] != VERSION {
            return Err(Drop::Malformed);
        }
        let mode = datagram[1];
        let channel = datagram[2];
        let id_len = datagram[3] as usize;
        if id_len == 0 || id_len > MAX_SENDER_LEN || (mode != MODE_PLAIN && mode != MODE_CHACHA) {
            return Err(Drop::Malformed);
        }
        let tag_len = if mode == MODE_CHACHA { TAG_LEN } else { 0 };
        let header_len = HEADER_LEN + id_len;
        if datagram.len() < header_len + tag_len {
            return Err(Drop::Malformed);
        }
        let be32 = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        let be64 = |b: &[u8]| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[..8]);
            u64::from_be_bytes(a)
        };
        let key_fp = be32(&datagram[4..8]);
        let cluster = be32(&datagram[8..12]);
        let epoch = be64(&datagram[12..20]);
        let seq = be64(&datagram[20..28]);
        if std::str::from_utf8(&datagram[HEADER_LEN..header_len]).is_err() {
            return Err(Drop::Malformed);
        }
        let (header, body) = datagram.split_at_mut(header_len);
        let payload: &'a [u8] = match (mode, self.keys.is_empty()) {
            (MODE_PLAIN, true) => body,
            (MODE_CHACHA, false) => {
                let key = self
                    .keys
                    .iter()
                    .find(|(fp, _)| *fp == key_fp)
                    .map(|(_, k)| k)
                    .ok_or(Drop::Auth)?;
                let nonce = nonce_for(header);
                let plain = key
                    .open_in_place(nonce, Aad::from(&*header), body)
                    .map_err(|_| Drop::Auth)?;
                &*plain
            }
            _ => return Err(Drop::Auth),
        };
        let header: &'a [u8] = header;
        if cluster != self.cluster {
            return Err(Drop::WrongCluster);
        }
        // Checked to be UTF-8 above.
        let sender = std::str::from_utf8(&header[HEADER_LEN..]).map_err(|_| Drop::Malformed)?;
        if sender == &*self.node_id {
            return Err(Drop::Own);
        }
        match self.windows.get_mut(sender) {
            Some(w) if epoch < w.epoch => return Err(Drop::Replay),
            Some(w) if epoch == w.epoch => {
                if !w.accept(seq) {
                    return Err(Drop::Replay);
                }
                w.last_ms = now_ms;
            }
            Some(w) => {
                // The sender restarted: a new window.
                *w = Window {
                    epoch,
                    top: seq,
                    seen: 1,
                    last_ms: now_ms,
                };
            }
            None => {
                if self.windows.len() >= MAX_SENDERS {
                    let oldest = self
                        .windows
                        .iter()
                        .min_by_key(|(_, w)| w.last_ms)
                        .map(|(k, _)| k.clone());
                    if let Some(k) = oldest {
                        self.windows.remove(&k);
                    }
                }
                self.windows.insert(
                    sender.into(),
                    Window {
                        epoch,
                        top: seq,
                        seen: 1,
                        last_ms: now_ms,
                    },
                );
            }
        }
        Ok(Opened {
            sender,
            epoch,
            channel,
            payload,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: [u8; 32] = [1; 32];
    const K2: [u8; 32] = [2; 32];

    fn ring(keys: &[[u8; 32]], id: &str) -> Keyring {
        Keyring::new(keys, id, "prod", 1000)
    }

    fn sealed(from: &mut Keyring, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        from.seal(channel::GOSSIP, payload, &mut out);
        out
    }

    #[test]
    fn round_trip_keyed_and_plain() {
        for keys in [&[K1][..], &[][..]] {
            let (mut a, mut b) = (ring(keys, "a"), ring(keys, "b"));
            let mut d = sealed(&mut a, b"hello");
            if !keys.is_empty() {
                assert!(!d.windows(5).any(|w| w == b"hello"), "payload is encrypted");
            }
            let o = b.open(0, &mut d).unwrap();
            assert_eq!(o.sender, "a");
            assert_eq!(o.channel, channel::GOSSIP);
            assert_eq!(o.payload, b"hello");
            assert_eq!(o.epoch, 1000);
        }
    }

    #[test]
    fn tampering_anywhere_is_refused() {
        let (mut a, mut b) = (ring(&[K1], "a"), ring(&[K1], "b"));
        let d = sealed(&mut a, b"payload");
        for i in 0..d.len() {
            let mut t = d.clone();
            t[i] ^= 0x01;
            let r = b.open(0, &mut t);
            assert!(r.is_err(), "byte {i} flipped was accepted");
        }
        // Truncated and extended.
        let mut t = d[..d.len() - 1].to_vec();
        assert_eq!(b.open(0, &mut t), Err(Drop::Auth));
        let mut t = d.clone();
        t.push(0);
        assert_eq!(b.open(0, &mut t), Err(Drop::Auth));
        let mut t = d.clone();
        assert!(b.open(0, &mut t).is_ok(), "the original still opens");
    }

    #[test]
    fn wrong_key_and_mode_mismatch_are_auth_drops() {
        let mut a = ring(&[K1], "a");
        let mut other = ring(&[K2], "b");
        let mut plain = ring(&[], "c");
        assert_eq!(other.open(0, &mut sealed(&mut a, b"x")), Err(Drop::Auth));
        assert_eq!(plain.open(0, &mut sealed(&mut a, b"x")), Err(Drop::Auth));
        assert_eq!(a.open(0, &mut sealed(&mut plain, b"x")), Err(Drop::Auth));
    }

    #[test]
    fn rotation_first_key_seals_every_key_opens() {
        let mut old = ring(&[K1], "old");
        let mut rotating = ring(&[K2, K1], "mid");
        let mut new = ring(&[K2], "new");
        // The rotating node opens both, and its datagrams (K2) open on the new node.
        assert!(rotating.open(0, &mut sealed(&mut old, b"x")).is_ok());
        assert!(rotating.open(0, &mut sealed(&mut new, b"x")).is_ok());
        assert!(new.open(0, &mut sealed(&mut rotating, b"x")).is_ok());
        assert_eq!(
            old.open(0, &mut sealed(&mut rotating, b"x")),
            Err(Drop::Auth)
        );
    }

    #[test]
    fn wrong_cluster_is_told_apart() {
        let mut a = Keyring::new(&[K1], "a", "staging", 1);
        let mut b = ring(&[K1], "b");
        assert_eq!(
            b.open(0, &mut sealed(&mut a, b"x")),
            Err(Drop::WrongCluster)
        );
        let mut a = Keyring::new(&[], "a", "staging", 1);
        let mut b = ring(&[], "b");
        assert_eq!(
            b.open(0, &mut sealed(&mut a, b"x")),
            Err(Drop::WrongCluster)
        );
    }

    #[test]
    fn replay_and_reordering_within_the_window() {
        let (mut a, mut b) = (ring(&[K1], "a"), ring(&[K1], "b"));
        let ds: Vec<Vec<u8>> = (0..10).map(|_| sealed(&mut a, b"x")).collect();
        // Out of order: 3, 1, 2, 9, 0 ... all accepted once.
        for i in [3, 1, 2, 9, 0, 4, 8, 5, 7, 6] {
            assert!(b.open(0, &mut ds[i].clone()).is_ok(), "datagram {i}");
        }
        for (i, d) in ds.iter().enumerate() {
            assert_eq!(b.open(0, &mut d.clone()), Err(Drop::Replay), "replay {i}");
        }
        // Far ahead: whatever fell out of the window is refused, even unseen.
        let late = sealed(&mut a, b"late");
        for _ in 0..WINDOW {
            let mut d = sealed(&mut a, b"x");
            assert!(b.open(0, &mut d).is_ok());
        }
        assert_eq!(b.open(0, &mut late.clone()), Err(Drop::Replay));
    }

    #[test]
    fn a_restart_opens_a_new_window_and_the_old_boot_is_refused() {
        let mut b = ring(&[K1], "b");
        let mut boot1 = Keyring::new(&[K1], "a", "prod", 1000);
        let old = sealed(&mut boot1, b"x");
        assert!(b.open(0, &mut old.clone()).is_ok());
        let mut boot2 = Keyring::new(&[K1], "a", "prod", 2000);
        let mut d = sealed(&mut boot2, b"x");
        assert_eq!(b.open(0, &mut d).unwrap().epoch, 2000);
        assert_eq!(b.open(0, &mut old.clone()), Err(Drop::Replay));
    }

    #[test]
    fn own_datagrams_and_garbage() {
        let mut a = ring(&[K1], "a");
        let mut d = sealed(&mut a, b"x");
        assert_eq!(a.open(0, &mut d), Err(Drop::Own));
        for bad in [&[][..], &[1u8; 10][..], &[9u8; 64][..]] {
            assert_eq!(a.open(0, &mut bad.to_vec()), Err(Drop::Malformed));
        }
        let mut zero_id = sealed(&mut ring(&[K1], "z"), b"x");
        zero_id[3] = 0;
        assert_eq!(a.open(0, &mut zero_id), Err(Drop::Malformed));
    }

    #[test]
    fn memory_is_bounded() {
        let mut b = ring(&[K1], "b");
        for i in 0..(MAX_SENDERS + 10) {
            let mut s = Keyring::new(&[K1], &format!("n{i}"), "prod", 1);
            b.open(i as u64, &mut sealed(&mut s, b"x")).unwrap();
        }
        assert_eq!(b.senders(), MAX_SENDERS);
    }

    #[test]
    fn keys_parse_like_serf_keygen() {
        let k = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        let keys = parse_keys(&format!("{k}, {k}")).unwrap();
        assert_eq!(keys, vec![[7u8; 32], [7u8; 32]]);
        assert!(parse_keys("not base64!").is_err());
        assert!(parse_keys("AAAA").unwrap_err().contains("need 32"));
        assert!(parse_keys("").unwrap().is_empty());
    }
}
