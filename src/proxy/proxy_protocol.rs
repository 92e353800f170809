//! The PROXY protocol v2 header (haproxy.org/download/2.6/doc/proxy-protocol.txt): the first
//! bytes a backend receives, telling it the real client and the address it connected to.
//!
//! Pure: addresses in, bytes out, no allocation (the header fits [`MAX_LEN`] bytes).

use std::net::SocketAddr;

/// The 12-byte v2 signature.
const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest header we write (IPv6: 16 + 36).
pub const MAX_LEN: usize = 52;

/// A PROXY v2 header for a TCP connection from `client` to `local` (our listening address).
/// Mixed families (a v4 client on a v6 socket) are written as IPv6 with mapped addresses.
pub fn v2_header(client: SocketAddr, local: SocketAddr) -> ([u8; MAX_LEN], usize) {
    let mut out = [0u8; MAX_LEN];
    out[..12].copy_from_slice(&SIGNATURE);
    out[12] = 0x21; // version 2, command PROXY
    let len = match (client, local) {
        (SocketAddr::V4(c), SocketAddr::V4(l)) => {
            out[13] = 0x11; // AF_INET, STREAM
            out[14..16].copy_from_slice(&12u16.to_be_bytes());
            out[16..20].copy_from_slice(&c.ip().octets());
            out[20..24].copy_from_slice(&l.ip().octets());
            out[24..26].copy_from_slice(&c.port().to_be_bytes());
            out[26..28].copy_from_slice(&l.port().to_be_bytes());
            28
        }
        (c, l) => {
            let v6 = |a: SocketAddr| match a {
                SocketAddr::V4(a) => a.ip().to_ipv6_mapped().octets(),
                SocketAddr::V6(a) => a.ip().octets(),
            };
            out[13] = 0x21; // AF_INET6, STREAM
            out[14..16].copy_from_slice(&36u16.to_be_bytes());
            out[16..32].copy_from_slice(&v6(c));
            out[32..48].copy_from_slice(&v6(l));
            out[48..50].copy_from_slice(&c.port().to_be_bytes());
            out[50..52].copy_from_slice(&l.port().to_be_bytes());
            52
        }
    };
    (out, len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header_is_exact() {
        let (h, n) = v2_header(
            "10.50.1.7:40000".parse().unwrap(),
            "10.50.0.1:8443".parse().unwrap(),
        );
        let mut want = SIGNATURE.to_vec();
        want.extend_from_slice(&[0x21, 0x11, 0, 12, 10, 50, 1, 7, 10, 50, 0, 1]);
        want.extend_from_slice(&40000u16.to_be_bytes());
        want.extend_from_slice(&8443u16.to_be_bytes());
        assert_eq!(&h[..n], &want[..]);
    }

    #[test]
    fn ipv6_and_mixed_use_inet6() {
        let (h, n) = v2_header("[::1]:1".parse().unwrap(), "10.0.0.1:2".parse().unwrap());
        assert_eq!(n, 52);
        assert_eq!(h[13], 0x21);
        assert_eq!(
            &h[32..48],
            &"::ffff:10.0.0.1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets()
        );
    }
}
