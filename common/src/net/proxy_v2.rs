//! The PROXY protocol version 2 header (HAProxy, "The PROXY protocol",
//! section 2.2), `PROXY` command over TCP:
//!
//! ```text
//! 0..12   signature  0D 0A 0D 0A 00 0D 0A 51 55 49 54 0A
//! 12      0x21       version 2, command PROXY
//! 13      0x11|0x21  TCP over IPv4 | TCP over IPv6
//! 14..16  length of the address block, big-endian: 12 | 36
//! 16..    source address, destination address, source port, destination port
//! ```
//!
//! The source is the client (the connecting socket's local address), the
//! destination the address the client asked for before the redirect. When the
//! two families differ, both are written as IPv6 (IPv4-mapped).

use super::addr::{Endpoint, IpAddr};

/// The 12-byte signature.
pub const SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];
/// Version 2, command PROXY.
pub const VER_CMD_PROXY: u8 = 0x21;
/// AF_INET, SOCK_STREAM.
pub const FAM_TCP4: u8 = 0x11;
/// AF_INET6, SOCK_STREAM.
pub const FAM_TCP6: u8 = 0x21;
/// The longest header [`encode`] writes (TCP6).
pub const MAX_LEN: usize = 52;

/// A header, at most [`MAX_LEN`] bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    bytes: [u8; MAX_LEN],
    len: u8,
}

impl Header {
    /// The encoded bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..usize::from(self.len)).unwrap_or(&[])
    }
}

/// Encodes the header for a TCP connection from `src` (the client) to `dst`
/// (the original destination).
pub fn encode(src: &Endpoint, dst: &Endpoint) -> Header {
    let mut bytes = [0u8; MAX_LEN];
    let (fam, addrs): (u8, [&[u8]; 2]);
    let (s6, d6);
    match (src.addr, dst.addr) {
        (IpAddr::V4(_), IpAddr::V4(_)) => {
            fam = FAM_TCP4;
            addrs = [src.addr.octets(), dst.addr.octets()];
        }
        _ => {
            fam = FAM_TCP6;
            s6 = src.addr.to_v6_mapped();
            d6 = dst.addr.to_v6_mapped();
            addrs = [&s6, &d6];
        }
    }
    let block: u16 = if fam == FAM_TCP4 { 12 } else { 36 };
    let sp = src.port.to_be_bytes();
    let dp = dst.port.to_be_bytes();
    let parts: [&[u8]; 8] = [
        &SIGNATURE,
        &[VER_CMD_PROXY],
        &[fam],
        &block.to_be_bytes(),
        addrs[0],
        addrs[1],
        &sp,
        &dp,
    ];
    let mut out = bytes.iter_mut();
    let mut len = 0u8;
    for b in parts.iter().flat_map(|p| p.iter()) {
        if let Some(d) = out.next() {
            *d = *b;
            len = len.saturating_add(1);
        }
    }
    Header { bytes, len }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    reason = "host tests"
)]
mod tests {
    use super::*;

    #[test]
    fn tcp4_header_matches_the_spec_byte_for_byte() {
        let h = encode(
            &Endpoint::new(IpAddr::V4([127, 0, 0, 1]), 50000),
            &Endpoint::new(IpAddr::V4([203, 0, 113, 10]), 80),
        );
        let mut want = SIGNATURE.to_vec();
        want.extend([
            0x21, 0x11, 0, 12, 127, 0, 0, 1, 203, 0, 113, 10, 0xC3, 0x50, 0, 80,
        ]);
        assert_eq!(h.as_bytes(), want.as_slice());
    }

    #[test]
    fn tcp6_and_mixed_families() {
        let d = IpAddr::V6([0x20, 1, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10]);
        let h = encode(
            &Endpoint::new(IpAddr::V6([0; 16]), 1),
            &Endpoint::new(d, 443),
        );
        assert_eq!(h.as_bytes().len(), 52);
        assert_eq!(&h.as_bytes()[12..16], &[0x21, 0x21, 0, 36]);
        assert_eq!(&h.as_bytes()[32..48], d.octets());
        assert_eq!(&h.as_bytes()[48..52], &[0, 1, 1, 187]);
        let m = encode(
            &Endpoint::new(IpAddr::V4([1, 2, 3, 4]), 1),
            &Endpoint::new(d, 443),
        );
        assert_eq!(
            &m.as_bytes()[16..32],
            &IpAddr::V4([1, 2, 3, 4]).to_v6_mapped()
        );
    }
}
