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

use super::addr::IpAddr;
use super::checksum;
use super::wire::ip::Transport;
use super::wire::{Error, proto, tcp, udp};

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

/// The IPv4 header checksum field (RFC 791).
const IPV4_CHECKSUM: core::ops::Range<usize> = 10..12;

/// What the transport checksum field of a packet holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4Sum {
    /// The complete checksum: updated incrementally (RFC 1624, eqn. 3) for
    /// the addresses (pseudo-header) and the port.
    Complete,
    /// The stack deferred the TCP/UDP checksum to the interface
    /// (`CSUM_DELAY_DATA`): the field holds the pseudo-header sum the hardware
    /// (or `mbuf_outbound_finalize`) starts from. Only the address change is
    /// added to it; the port is part of the segment the hardware sums, and no
    /// byte of the payload is read. Applies to TCP and UDP; any other
    /// protocol's checksum is updated as [`L4Sum::Complete`].
    Deferred,
}

impl L4Sum {
    /// [`L4Sum::Deferred`] when the stack `deferred` the checksum (what
    /// `mbuf_get_csum_requested` says), else [`L4Sum::Complete`].
    #[inline(always)]
    pub fn when_deferred(deferred: bool) -> L4Sum {
        if deferred {
            L4Sum::Deferred
        } else {
            L4Sum::Complete
        }
    }
}

/// The ones'-complement sum that turns a checksum over `old` into one over
/// `new` (RFC 1624: `~m + m'`), unfolded, over whole 32-bit words: they fold
/// to the same 16-bit sum as their two halves (2^16 ≡ 1 mod 0xFFFF).
#[inline(always)]
pub(crate) fn addr_delta<const N: usize>(old: &[u8; N], new: &[u8; N]) -> u64 {
    let mut s = 0u64;
    let (mut o, mut n) = (old.as_slice(), new.as_slice());
    // (No `chunks_exact`: its division-by-zero check would leave a panic path
    // in the kext.)
    while let (Some((a, ro)), Some((b, rn))) =
        (o.split_first_chunk::<4>(), n.split_first_chunk::<4>())
    {
        s = s
            .wrapping_add(u64::from(!u32::from_be_bytes(*a)))
            .wrapping_add(u64::from(u32::from_be_bytes(*b)));
        o = ro;
        n = rn;
    }
    s
}

/// RFC 1624 eqn. 3 with a precomputed delta: `~(~hc + delta)`.
#[inline(always)]
pub(crate) fn apply(hc: u16, delta: u64) -> u16 {
    !checksum::fold(u64::from(!hc).wrapping_add(delta))
}

/// Reads the big-endian u16 at `at` of a fixed-size header.
#[inline(always)]
pub(crate) fn be16<const N: usize>(h: &[u8; N], at: usize) -> u16 {
    match h.get(at..).and_then(<[u8]>::first_chunk::<2>) {
        Some(b) => u16::from_be_bytes(*b),
        None => 0,
    }
}

/// Reads the big-endian u32 at `at` of a fixed-size header (0 past its end).
#[inline(always)]
pub(crate) fn be32<const N: usize>(h: &[u8; N], at: usize) -> u32 {
    h.get(at..)
        .and_then(<[u8]>::first_chunk::<4>)
        .map_or(0, |b| u32::from_be_bytes(*b))
}

/// Reads the big-endian u64 at `at` of a fixed-size header (0 past its end).
#[inline(always)]
pub(crate) fn be64<const N: usize>(h: &[u8; N], at: usize) -> u64 {
    h.get(at..)
        .and_then(<[u8]>::first_chunk::<8>)
        .map_or(0, |b| u64::from_be_bytes(*b))
}

/// Writes the big-endian u16 `v` at `at` of a fixed-size header.
#[inline(always)]
pub(crate) fn put16<const N: usize>(h: &mut [u8; N], at: usize, v: u16) {
    if let Some(b) = h.get_mut(at..).and_then(<[u8]>::first_chunk_mut::<2>) {
        *b = v.to_be_bytes();
    }
}

/// Sets the port at `port_at` of a TCP or UDP header `h` to `port` and
/// updates its checksum (the last two of its `L` bytes: TCP read up to its
/// checksum, [`tcp::CHECKSUM_OFFSET`] + 2; UDP whole, [`udp::HEADER_LEN`]) for
/// that and an address change summing to `delta`. A checksum field holding a
/// deferred pseudo-header sum (`l4`) takes only the address change (the
/// interface sums the ports); a UDP checksum of zero means none: IPv4 keeps it
/// so, IPv6 (`v6`) is refused, and a computed zero is sent as 0xFFFF.
#[inline(always)]
pub(crate) fn rewrite_ports<const L: usize>(
    h: &mut [u8; L],
    port_at: usize,
    port: u16,
    delta: u64,
    l4: L4Sum,
    v6: bool,
) -> Result<(), Refused> {
    let udp = L == udp::HEADER_LEN;
    let sum_at = L.wrapping_sub(2);
    let hc = be16(h, sum_at);
    let c = match l4 {
        // The pseudo-header seed, not complemented; the port is summed by
        // the interface.
        L4Sum::Deferred => Some(checksum::fold(u64::from(hc).wrapping_add(delta))),
        L4Sum::Complete if udp && hc == 0 => {
            if v6 {
                return Err(Refused::Udp6ZeroChecksum);
            }
            None // IPv4 UDP without checksum stays without.
        }
        L4Sum::Complete => {
            let pd = u64::from(!be16(h, port_at)).wrapping_add(u64::from(port));
            match apply(hc, delta.wrapping_add(pd)) {
                0 if udp => Some(0xffff),
                c => Some(c),
            }
        }
    };
    if let Some(c) = c {
        put16(h, sum_at, c);
    }
    put16(h, port_at, port);
    Ok(())
}

/// Rewrites `side` of the packet whose first bytes are `prefix` (parsed as
/// `t`) to `addr` (and `port`, for TCP/UDP with a transport header). Returns the
/// number of bytes from the start that may have changed (copy them back).
/// The transport checksum is complete ([`rewrite_with`] for a deferred one).
pub fn rewrite(
    prefix: &mut [u8],
    t: &Transport,
    side: Side,
    addr: IpAddr,
    port: u16,
) -> Result<usize, Refused> {
    rewrite_with(prefix, t, side, addr, port, L4Sum::Complete)
}

/// [`rewrite`], with the transport checksum field holding `l4`. Every update
/// is incremental: the address change is one precomputed ones'-complement
/// delta (words of 32 bits, no byte-wise walk), added to the IPv4 header
/// checksum and to the transport checksum (or its pseudo-header seed).
pub fn rewrite_with(
    prefix: &mut [u8],
    t: &Transport,
    side: Side,
    addr: IpAddr,
    port: u16,
    l4: L4Sum,
) -> Result<usize, Refused> {
    let need = prefix_len(t);
    if prefix.len() < need {
        return Err(Refused::Wire(Error::Truncated));
    }
    match (addr, t.src) {
        (IpAddr::V4(a), IpAddr::V4(_)) => {
            let at = if side == Side::Src { 12 } else { 16 };
            rewrite_family(prefix, t, at, a, side, port, l4)?;
        }
        (IpAddr::V6(a), IpAddr::V6(_)) => {
            let at = if side == Side::Src { 8 } else { 24 };
            rewrite_family(prefix, t, at, a, side, port, l4)?;
        }
        _ => return Err(Refused::FamilyMismatch),
    }
    Ok(need)
}

/// [`rewrite_with`] for one family: `N`-byte addresses at `at` (IPv4: 4,
/// with the header checksum; IPv6: 16). The caller checked that `prefix`
/// holds [`prefix_len`] bytes.
fn rewrite_family<const N: usize>(
    prefix: &mut [u8],
    t: &Transport,
    at: usize,
    new: [u8; N],
    side: Side,
    port: u16,
    l4: L4Sum,
) -> Result<(), Refused> {
    let v6 = N == 16;
    let (ip, seg) = prefix
        .split_at_mut_checked(t.offset)
        .ok_or(Refused::Wire(Error::Truncated))?;
    let addr = ip
        .get_mut(at..)
        .and_then(<[u8]>::first_chunk_mut::<N>)
        .ok_or(Refused::Wire(Error::Truncated))?;
    let delta = addr_delta(addr, &new);
    let port_at = if side == Side::Src { 0 } else { 2 };

    // Transport checksum first (it may refuse the packet before anything changes).
    if t.has_transport {
        match t.protocol {
            proto::TCP => {
                let h = seg
                    .first_chunk_mut::<{ tcp::CHECKSUM_OFFSET + 2 }>()
                    .ok_or(Refused::Wire(Error::Truncated))?;
                rewrite_ports(h, port_at, port, delta, l4, v6)?;
            }
            proto::UDP => {
                let h = seg
                    .first_chunk_mut::<{ udp::HEADER_LEN }>()
                    .ok_or(Refused::Wire(Error::Truncated))?;
                rewrite_ports(h, port_at, port, delta, l4, v6)?;
            }
            proto::ICMPV6 => {
                let h = seg
                    .first_chunk_mut::<4>()
                    .ok_or(Refused::Wire(Error::Truncated))?;
                let hc = be16(h, 2);
                put16(h, 2, apply(hc, delta));
            }
            _ => {}
        }
    }
    *addr = new;
    if !v6 && let Some(h) = ip.first_chunk_mut::<20>() {
        let hc = be16(h, IPV4_CHECKSUM.start);
        put16(h, IPV4_CHECKSUM.start, apply(hc, delta));
    }
    Ok(())
}
