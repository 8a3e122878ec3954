//! Rewriting one endpoint (address and port) of an IP packet in place, with
//! every checksum updated incrementally (RFC 1624): the IPv4 header checksum,
//! and the TCP, UDP or ICMPv6 checksum through the pseudo-header.
//!
//! The functions work on a *prefix* of the packet: the bytes from the IP header
//! to the end of the transport checksum field are enough, so the IP filter can
//! copy a packet's headers out of an mbuf chain (wherever they straddle mbufs),
//! rewrite them here and copy them back, without touching the payload.
//!
//! Policies: a non-first fragment (no transport header) gets only its address
//! rewritten (its transport checksum lives in the first fragment). IPv4 UDP
//! without checksum stays without. IPv6 UDP with checksum 0 is invalid and
//! refused ([`Refused::Udp6ZeroChecksum`]). ICMP (v4) has no pseudo-header;
//! ICMPv6 does. Other protocols get the address rewritten only.

use super::checksum::{self, UdpZero};
use super::wire::ip::{Addr, Transport};
use super::wire::{Error, get_array, get_u16, ipv4, proto, set_array, set_u16, tcp, udp};

/// Which endpoint to rewrite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Source address and port.
    Src,
    /// Destination address and port.
    Dst,
}

/// Why a packet cannot be rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The prefix does not hold the headers (or the packet is malformed).
    Wire(Error),
    /// The new address's family differs from the packet's.
    FamilyMismatch,
    /// IPv6 UDP with checksum 0 (invalid, RFC 8200 §8.1).
    Udp6ZeroChecksum,
}

impl From<Error> for Refused {
    fn from(e: Error) -> Self {
        Refused::Wire(e)
    }
}

/// How many bytes of a packet the rewrite of `t` reads and writes: the IP
/// header (extension headers included) and the transport header up to the end
/// of its checksum field (for non-first fragments: the IP header only).
pub fn prefix_len(t: &Transport) -> usize {
    let l4 = if !t.has_transport {
        0
    } else {
        match t.protocol {
            proto::TCP => tcp::CHECKSUM_OFFSET.wrapping_add(2),
            proto::UDP => udp::HEADER_LEN,
            proto::ICMPV6 => 4,
            _ => 0,
        }
    };
    t.offset.saturating_add(l4)
}

/// Rewrites `side` of the packet whose first bytes are `prefix` (parsed as
/// `t`) to `addr` (and `port`, for TCP/UDP with a transport header). Returns the
/// number of bytes from the start that may have changed (copy them back).
pub fn rewrite(
    prefix: &mut [u8],
    t: &Transport,
    side: Side,
    addr: Addr,
    port: u16,
) -> Result<usize, Refused> {
    let need = prefix_len(t);
    if prefix.len() < need {
        return Err(Refused::Wire(Error::Truncated));
    }
    // Address field offsets and the old address.
    let (at, old, new): (core::ops::Range<usize>, [u8; 16], [u8; 16]) = match (addr, t.src) {
        (Addr::V4(a), Addr::V4(_)) => {
            let at = if side == Side::Src { 12..16 } else { 16..20 };
            let mut o = [0; 16];
            let mut n = [0; 16];
            set_array::<4>(&mut o, 0..4, get_array(prefix, at.clone()));
            set_array::<4>(&mut n, 0..4, a);
            (at, o, n)
        }
        (Addr::V6(a), Addr::V6(_)) => {
            let at = if side == Side::Src { 8..24 } else { 24..40 };
            (at.clone(), get_array(prefix, at), a)
        }
        _ => return Err(Refused::FamilyMismatch),
    };
    let alen = at.len();
    let old = old.get(..alen).unwrap_or(&[]);
    let new = new.get(..alen).unwrap_or(&[]);
    let v6 = matches!(t.src, Addr::V6(_));
    let l4 = t.offset;
    let port_at = if side == Side::Src {
        l4..l4.saturating_add(2)
    } else {
        l4.saturating_add(2)..l4.saturating_add(4)
    };
    let ports = t.has_transport && matches!(t.protocol, proto::TCP | proto::UDP);
    let old_port = get_u16(prefix, port_at.clone());

    // Transport checksum first (it may refuse the packet before anything changes).
    if t.has_transport {
        match t.protocol {
            proto::TCP | proto::ICMPV6 => {
                let co = if t.protocol == proto::TCP {
                    tcp::CHECKSUM_OFFSET
                } else {
                    2
                };
                let cat = l4.saturating_add(co)..l4.saturating_add(co).saturating_add(2);
                let mut c = checksum::update(get_u16(prefix, cat.clone()), old, new);
                if ports {
                    c = checksum::update_word(c, old_port, port);
                }
                set_u16(prefix, cat, c);
            }
            proto::UDP => {
                let cat =
                    l4.saturating_add(udp::CHECKSUM_OFFSET)..l4.saturating_add(udp::HEADER_LEN);
                let hc = get_u16(prefix, cat.clone());
                match checksum::update_udp(hc, v6, old, new) {
                    Ok(c) => {
                        let c = checksum::update_word(c, old_port, port);
                        set_u16(prefix, cat, if c == 0 { 0xffff } else { c });
                    }
                    Err(UdpZero::NoneV4) => {}
                    Err(UdpZero::InvalidV6) => return Err(Refused::Udp6ZeroChecksum),
                }
            }
            _ => {}
        }
    }
    if ports {
        set_u16(prefix, port_at, port);
    }
    if !v6 {
        let c = checksum::update(ipv4::Packet::new_unchecked(&*prefix).checksum(), old, new);
        ipv4::Packet::new_unchecked(&mut *prefix).set_checksum(c);
    }
    if let Some(d) = prefix.get_mut(at) {
        for (d, s) in d.iter_mut().zip(new) {
            *d = *s;
        }
    }
    Ok(need)
}
