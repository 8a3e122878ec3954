//! ICMP and ICMPv6 errors about translated flows (the behaviour RFC 5508 §4.2
//! asks of a NAT): an error quotes the offending packet as it was on the wire,
//! so an error about a redirected packet quotes it *after* translation (client
//! → proxy) and must be translated back before the client's stack can match
//! it to a socket (connected to the original destination), and the other way
//! round for errors the client host sends about packets it received.
//!
//! [`quote`] finds the quoted packet of an error (ICMP types 3, 11, 12; ICMPv6
//! types 1-4) whose quote is TCP or UDP; [`rewrite`] rewrites one endpoint of
//! the quoted packet (address and port), and the matching outer address when
//! it is the same host, with every checksum updated incrementally (RFC 1624):
//! the quoted IPv4 header checksum, the quoted transport checksum when the
//! quote holds it (ICMPv4 errors often quote only 8 transport bytes, before
//! TCP's checksum), the outer IPv4 header checksum, and the ICMP checksum for
//! every word changed inside the message (and, for ICMPv6, for the outer
//! pseudo-header). Only the changed words are needed, so this works on a
//! header prefix although ICMPv4's checksum covers the whole message.
//!
//! Alignment: the ICMP message starts at the transport offset, the quote 8
//! bytes later; the quoted header lengths are multiples of 4 (IPv4) or 8
//! (IPv6), so every field changed lies at an even offset from the start of the
//! message, as the 16-bit incremental updates require.
//!
//! The quote is a truncated copy: it is parsed with
//! [`ip::transport_quoted`], which tolerates length fields claiming more than
//! is present, and every access is bounded by the bytes at hand.

use super::addr::Endpoint;
use super::addr::IpAddr;
use super::checksum;
use super::translate::{Refused, Side};
use super::wire::ip::{self, Transport};
use super::wire::{Error, get_array, get_u8, get_u16, icmp, proto, set_array, set_u16, tcp, udp};

/// The packet quoted by an ICMP error, located in a prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quote {
    /// Offset of the quoted IP header from the start of the (outer) packet.
    pub offset: usize,
    /// The quoted packet's headers (offsets relative to [`Quote::offset`]).
    pub inner: Transport,
    /// Quoted bytes present in the prefix, from [`Quote::offset`].
    pub present: usize,
    /// The quoted packet's source endpoint.
    pub src: Endpoint,
    /// The quoted packet's destination endpoint.
    pub dst: Endpoint,
}

/// The ICMP protocol number of a family.
fn icmp_proto(a: &IpAddr) -> u8 {
    match a {
        IpAddr::V4(_) => proto::ICMP,
        IpAddr::V6(_) => proto::ICMPV6,
    }
}

/// True when the packet parsed as `t` is an ICMP error of its family (ICMP in
/// IPv4, ICMPv6 in IPv6, with its header in `prefix`).
pub fn is_error(prefix: &[u8], t: &Transport) -> bool {
    t.has_transport
        && t.protocol == icmp_proto(&t.src)
        && t.len >= icmp::HEADER_LEN
        && prefix.len() >= t.offset.saturating_add(icmp::HEADER_LEN)
        && icmp::is_error(matches!(t.src, IpAddr::V6(_)), get_u8(prefix, t.offset))
}

/// The quoted packet of the ICMP error parsed as `t`, when it is TCP or UDP of
/// the outer packet's family, not a non-first fragment, and its headers to the
/// ports lie within `prefix`. `None` for everything else (not an error, an
/// error about ICMP or another protocol, a quote too short or malformed).
pub fn quote(prefix: &[u8], t: &Transport) -> Option<Quote> {
    if !is_error(prefix, t) {
        return None;
    }
    let offset = t.offset.checked_add(icmp::HEADER_LEN)?;
    let end = t.offset.saturating_add(t.len).min(prefix.len());
    let q = prefix.get(offset..end)?;
    let inner = ip::transport_quoted(q).ok()?;
    let same_family = matches!(
        (inner.src, t.src),
        (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_))
    );
    if !same_family
        || !inner.has_transport
        || !matches!(inner.protocol, proto::TCP | proto::UDP)
        || q.len() < inner.offset.checked_add(4)?
    {
        return None;
    }
    let l4 = inner.offset;
    Some(Quote {
        offset,
        inner,
        present: q.len(),
        src: Endpoint {
            addr: inner.src,
            port: get_u16(q, l4..l4.saturating_add(2)),
        },
        dst: Endpoint {
            addr: inner.dst,
            port: get_u16(q, l4.saturating_add(2)..l4.saturating_add(4)),
        },
    })
}

/// Address field of `side` in an IP header starting at `base`, for `v6`.
fn addr_field(base: usize, v6: bool, side: Side) -> core::ops::Range<usize> {
    let (s, len) = match (v6, side) {
        (false, Side::Src) => (12, 4),
        (false, Side::Dst) => (16, 4),
        (true, Side::Src) => (8, 16),
        (true, Side::Dst) => (24, 16),
    };
    let at = base.saturating_add(s);
    at..at.saturating_add(len)
}

/// Reads an address of `len` (4 or 16) bytes at `f` into a 16-byte buffer.
fn read_addr(prefix: &[u8], f: core::ops::Range<usize>) -> [u8; 16] {
    let mut a = [0u8; 16];
    if let Some(s) = prefix.get(f) {
        for (d, s) in a.iter_mut().zip(s) {
            *d = *s;
        }
    }
    a
}

/// Rewrites the ICMP error parsed as `t`, quoting `q`, for the outer `side`
/// being translated to `to` (the endpoint the flow's remote end has on the
/// other side of the NAT):
/// - [`Side::Src`] (inbound, an error about a packet the client sent): the
///   quoted *destination* becomes `to`; the outer source too (address only)
///   when it equals the quoted destination address (the error comes from the
///   proxy host itself rather than a router on the path).
/// - [`Side::Dst`] (outbound, an error about a packet the client received):
///   the quoted *source* becomes `to`; the outer destination too when it
///   equals the quoted source address.
///
/// Returns how many bytes from the start of `prefix` may have changed.
pub fn rewrite(
    prefix: &mut [u8],
    t: &Transport,
    q: &Quote,
    side: Side,
    to: Endpoint,
) -> Result<usize, Refused> {
    let v6 = match (to.addr, t.src) {
        (IpAddr::V4(_), IpAddr::V4(_)) => false,
        (IpAddr::V6(_), IpAddr::V6(_)) => true,
        _ => return Err(Refused::FamilyMismatch),
    };
    let inner_side = match side {
        Side::Src => Side::Dst,
        Side::Dst => Side::Src,
    };
    let ip = q.offset;
    let quote_end = ip.saturating_add(q.present);
    let l4 = ip.saturating_add(q.inner.offset);
    let ports_end = l4.saturating_add(4);
    if quote_end > prefix.len() || ports_end > quote_end {
        return Err(Refused::Wire(Error::Truncated));
    }
    let icmp_csum = t.offset.saturating_add(icmp::CHECKSUM_OFFSET)
        ..t.offset
            .saturating_add(icmp::CHECKSUM_OFFSET)
            .saturating_add(2);
    let alen = if v6 { 16 } else { 4 };

    // The quoted endpoint: old and new values.
    let inner_at = addr_field(ip, v6, inner_side);
    let old_buf = read_addr(prefix, inner_at.clone());
    let old = old_buf.get(..alen).unwrap_or(&[]);
    let new = to.addr.octets();
    let port_at = match inner_side {
        Side::Src => l4..l4.saturating_add(2),
        Side::Dst => l4.saturating_add(2)..ports_end,
    };
    let old_port = get_u16(prefix, port_at.clone());
    let mut ic = get_u16(prefix, icmp_csum.clone());

    // The quoted transport checksum, when the quote holds it.
    let (co, is_udp) = if q.inner.protocol == proto::UDP {
        (udp::CHECKSUM_OFFSET, true)
    } else {
        (tcp::CHECKSUM_OFFSET, false)
    };
    let cat = l4.saturating_add(co)..l4.saturating_add(co).saturating_add(2);
    let mut changed = ports_end;
    if cat.end <= quote_end {
        let oc = get_u16(prefix, cat.clone());
        // UDP without checksum (0) keeps none; a computed 0 is sent as 0xFFFF.
        let nc = if is_udp && oc == 0 {
            0
        } else {
            let c = checksum::update_word(checksum::update(oc, old, new), old_port, to.port);
            if is_udp && c == 0 { 0xffff } else { c }
        };
        ic = checksum::update_word(ic, oc, nc);
        set_u16(prefix, cat.clone(), nc);
        changed = changed.max(cat.end);
    }
    // The quoted IPv4 header checksum.
    if !v6 {
        let hat = ip.saturating_add(10)..ip.saturating_add(12);
        let oh = get_u16(prefix, hat.clone());
        let nh = checksum::update(oh, old, new);
        ic = checksum::update_word(ic, oh, nh);
        set_u16(prefix, hat, nh);
    }
    // The quoted address and port.
    ic = checksum::update(ic, old, new);
    ic = checksum::update_word(ic, old_port, to.port);
    if let Some(d) = prefix.get_mut(inner_at) {
        for (d, s) in d.iter_mut().zip(new) {
            *d = *s;
        }
    }
    set_u16(prefix, port_at, to.port);

    // The outer address, when it is the quoted endpoint's host.
    let outer_at = addr_field(0, v6, side);
    if prefix.get(outer_at.clone()) == Some(old) {
        if v6 {
            // ICMPv6's pseudo-header.
            ic = checksum::update(ic, old, new);
            set_array::<16>(prefix, outer_at, get_array(new, 0..16));
        } else {
            let oh = get_u16(prefix, 10..12);
            set_u16(prefix, 10..12, checksum::update(oh, old, new));
            set_array::<4>(prefix, outer_at, get_array(new, 0..4));
        }
    }
    set_u16(prefix, icmp_csum, ic);
    Ok(changed)
}
