//! Internet checksums (RFC 1071), the TCP/UDP/ICMPv6 pseudo-headers for IPv4
//! and IPv6, and incremental updates (RFC 1624, equation 3:
//! `HC' = ~(~HC + ~m + m')`).
//!
//! UDP's zero rules: over IPv4 a checksum field of 0 means "no checksum" and is
//! left 0 by every update; a computed 0 is sent as 0xFFFF (both over IPv4 and
//! IPv6). Over IPv6 a UDP checksum of 0 is invalid (RFC 8200 §8.1);
//! [`update_udp`] reports it and the caller decides (prx passes such packets
//! untouched, see `nat`).

use super::addr::IpAddr;

/// Ones'-complement sum of `data` as big-endian 16-bit words (an odd last byte
/// is padded with zero) added to `init`, not folded. A u64 cannot overflow for
/// any buffer that fits in memory below 2^48 bytes.
pub fn sum(data: &[u8], init: u64) -> u64 {
    let mut s = init;
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        if let Ok(w) = <[u8; 2]>::try_from(w) {
            s = s.wrapping_add(u64::from(u16::from_be_bytes(w)));
        }
    }
    if let [b] = words.remainder() {
        s = s.wrapping_add(u64::from(*b) << 8);
    }
    s
}

/// Folds a sum to 16 bits with end-around carry: the two 32-bit halves added
/// in ones' complement (an add and its carry), then the two 16-bit halves of
/// that. No loop, no branch. (After an add that carried, the sum is at most
/// 2^32 - 2, so adding the carry back cannot carry again; the same holds for
/// the 16-bit step.)
#[inline(always)]
pub fn fold(s: u64) -> u16 {
    let (x, c) = (s as u32).overflowing_add((s >> 32) as u32);
    let x = x.wrapping_add(u32::from(c));
    let (y, c) = (x as u16).overflowing_add((x >> 16) as u16);
    y.wrapping_add(u16::from(c))
}

/// The internet checksum of `data` (its checksum field zeroed by the caller).
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum(data, 0))
}

/// The pseudo-header sum for a transport segment of `len` bytes: IPv4
/// (RFC 9293 §3.1: addresses, zero, protocol, 16-bit length) or IPv6
/// (RFC 8200 §8.1: addresses, 32-bit length, zeros, next header).
pub fn pseudo_header(src: &IpAddr, dst: &IpAddr, protocol: u8, len: usize) -> u64 {
    let s = sum(dst.octets(), sum(src.octets(), 0)).wrapping_add(u64::from(protocol));
    let len = u64::try_from(len).unwrap_or(u64::MAX);
    match src {
        IpAddr::V4(_) => s.wrapping_add(len & 0xffff),
        IpAddr::V6(_) => s
            .wrapping_add(len >> 16 & 0xffff)
            .wrapping_add(len & 0xffff),
    }
}

/// The full TCP/UDP/ICMPv6 checksum of `segment` (its checksum field zeroed by
/// the caller), pseudo-header included. A UDP result of 0 is returned as 0xFFFF.
pub fn transport(src: &IpAddr, dst: &IpAddr, protocol: u8, segment: &[u8]) -> u16 {
    let c = !fold(sum(
        segment,
        pseudo_header(src, dst, protocol, segment.len()),
    ));
    if c == 0 && protocol == super::wire::proto::UDP {
        0xffff
    } else {
        c
    }
}

/// True when `segment` (checksum in place) verifies with its pseudo-header.
pub fn verify_transport(src: &IpAddr, dst: &IpAddr, protocol: u8, segment: &[u8]) -> bool {
    fold(sum(
        segment,
        pseudo_header(src, dst, protocol, segment.len()),
    )) == 0xffff
}

/// RFC 1624 eqn. 3 for one 16-bit word: `old` replaced by `new` in the data
/// covered by checksum `hc`.
pub fn update_word(hc: u16, old: u16, new: u16) -> u16 {
    !fold(
        u64::from(!hc)
            .wrapping_add(u64::from(!old))
            .wrapping_add(u64::from(new)),
    )
}

/// RFC 1624 eqn. 3 for a run of bytes at an even offset (addresses, ports):
/// `old` replaced by `new` (same length; an odd tail counts as a padded word).
pub fn update(hc: u16, old: &[u8], new: &[u8]) -> u16 {
    let mut s = u64::from(!hc);
    let mut o = old.chunks(2);
    let mut n = new.chunks(2);
    while let (Some(a), Some(b)) = (o.next(), n.next()) {
        let w = |c: &[u8]| {
            let hi = c.first().copied().unwrap_or(0);
            let lo = c.get(1).copied().unwrap_or(0);
            u16::from_be_bytes([hi, lo])
        };
        s = s
            .wrapping_add(u64::from(!w(a)))
            .wrapping_add(u64::from(w(b)));
    }
    !fold(s)
}

/// Why a UDP checksum was not updated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpZero {
    /// IPv4 UDP without a checksum: the field stays 0 (not an error).
    NoneV4,
    /// IPv6 UDP with checksum 0: invalid, the packet is malformed.
    InvalidV6,
}

/// [`update`] with UDP's rules: 0 over IPv4 stays 0, 0 over IPv6 is an error,
/// a result of 0 becomes 0xFFFF.
pub fn update_udp(hc: u16, v6: bool, old: &[u8], new: &[u8]) -> Result<u16, UdpZero> {
    if hc == 0 {
        return Err(if v6 {
            UdpZero::InvalidV6
        } else {
            UdpZero::NoneV4
        });
    }
    let c = update(hc, old, new);
    Ok(if c == 0 { 0xffff } else { c })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: the sum of 00 01 f2 03 f4 f5 f6 f7 is ddf2 (folded).
        let d = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(&d, 0)), 0xddf2);
        assert_eq!(checksum(&d), !0xddf2);
    }

    /// The end-around-carry fold, one carry at a time.
    fn fold_by_loop(mut s: u64) -> u16 {
        while s > 0xffff {
            s = (s & 0xffff).wrapping_add(s >> 16);
        }
        s as u16
    }

    #[test]
    fn fold_agrees_with_the_loop_at_its_edges() {
        for s in [
            0,
            0xffff,
            0x1_0000,
            0x1_fffe,
            0x2_fffe,
            0xffff_ffff,
            0x1_ffff_fffe,
            u64::MAX,
            u64::MAX - 1,
            0xffff_0000_ffff_0000,
        ] {
            assert_eq!(fold(s), fold_by_loop(s), "{s:#x}");
        }
    }

    proptest::proptest! {
        #[test]
        fn fold_agrees_with_the_loop(s in proptest::prelude::any::<u64>(), small in 0u64..(1 << 34)) {
            proptest::prop_assert_eq!(fold(s), fold_by_loop(s));
            proptest::prop_assert_eq!(fold(small), fold_by_loop(small));
        }
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(sum(&[0x12, 0x34, 0x56], 0), 0x1234 + 0x5600);
    }

    #[test]
    fn rfc1624_negative_zero_case() {
        // RFC 1624 §4: HC = 0xDD2F, m = 0x5555 -> m' = 0x3285 gives HC' = 0x0000,
        // the correct value (eqn. 2 gave 0xFFFF).
        assert_eq!(update_word(0xdd2f, 0x5555, 0x3285), 0x0000);
    }

    #[test]
    fn udp_zero_rules() {
        assert_eq!(update_udp(0, false, &[1, 2], &[3, 4]), Err(UdpZero::NoneV4));
        assert_eq!(
            update_udp(0, true, &[1, 2], &[3, 4]),
            Err(UdpZero::InvalidV6)
        );
        // A change that makes the checksum 0 yields 0xFFFF.
        let hc = update_word(0xdd2f, 0x5555, 0x3285);
        assert_eq!(hc, 0);
        assert_eq!(
            update_udp(0xdd2f, false, &[0x55, 0x55], &[0x32, 0x85]),
            Ok(0xffff)
        );
    }
}
