//! Version dispatch and the transport location of an IP packet of either
//! family: what the IP filter needs before it looks at ports.

use super::{Error, get_u8, ipv4, ipv6};
use crate::net::addr::IpAddr;

/// Where the transport header of an IP packet is, and what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transport {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// The upper-layer protocol (after IPv6 extension headers).
    pub protocol: u8,
    /// Offset of the transport header from the start of the IP header.
    pub offset: usize,
    /// Length of the transport header plus payload (what the pseudo-header counts).
    pub len: usize,
    /// The packet is a fragment.
    pub fragment: bool,
    /// The packet holds the transport header: not a non-first fragment, and the
    /// protocol is not opaque (ESP, No Next Header).
    pub has_transport: bool,
}

/// Parses an IPv4 or IPv6 packet (by its version nibble) down to its transport header.
pub fn transport(b: &[u8]) -> Result<Transport, Error> {
    transport_in(b, b.len())
}

/// Like [`transport`], for a packet of `packet_len` bytes of which only the
/// first `prefix.len()` are at hand (headers copied out of an mbuf chain):
/// lengths are checked against `packet_len`, headers must lie within `prefix`
/// (else [`Error::Truncated`]).
pub fn transport_in(prefix: &[u8], packet_len: usize) -> Result<Transport, Error> {
    if prefix.len() > packet_len {
        return Err(Error::Malformed);
    }
    parse(prefix, Some(packet_len))
}

/// Parses the IP packet quoted in an ICMP error (RFC 792, RFC 4443 §2.4): a
/// copy of the offending packet's first bytes, usually truncated, so its length
/// fields may claim more than `quote` holds. The headers up to the transport
/// header must lie within `quote` (else [`Error::Truncated`]); the length fields
/// are only checked for consistency with the header (IPv4: `total ≥ IHL·4`),
/// never against `quote.len()`. [`Transport::len`] is what the quoted header
/// claims. IPv6 extension headers are walked within `quote` (at most
/// [`ipv6::MAX_EXT_HEADERS`]).
pub fn transport_quoted(quote: &[u8]) -> Result<Transport, Error> {
    parse(quote, None)
}

/// The fewest bytes a transport header of `protocol` has, where the IP filter
/// reads or rewrites it: TCP's fixed header (RFC 9293), UDP's header, the
/// ICMPv6 type, code and checksum; 0 for the rest.
fn min_transport_len(protocol: u8) -> usize {
    match protocol {
        super::proto::TCP => super::tcp::HEADER_LEN,
        super::proto::UDP => super::udp::HEADER_LEN,
        super::proto::ICMPV6 => 4,
        _ => 0,
    }
}

/// A packet that holds a transport header whose length fields leave it less
/// room than the header needs is malformed: its ports and checksum field would
/// lie past the IP payload (in link-layer padding, or in the next packet).
fn check_transport_room(t: Transport) -> Result<Transport, Error> {
    if t.has_transport && t.len < min_transport_len(t.protocol) {
        return Err(Error::ShortTransport);
    }
    Ok(t)
}

/// The walk shared by [`transport_in`] (`packet_len`: the whole packet's
/// length, which the length fields must fit) and [`transport_quoted`]
/// (`None`: a truncated quote whose length fields are not checked against it).
#[inline(always)]
fn parse(buf: &[u8], packet_len: Option<usize>) -> Result<Transport, Error> {
    match get_u8(buf, 0) >> 4 {
        4 => {
            let p = ipv4::Packet::new_unchecked(buf);
            if buf.len() < ipv4::HEADER_LEN {
                return Err(Error::Truncated);
            }
            let hl = p.header_len();
            let total = usize::from(p.total_len());
            if hl < ipv4::HEADER_LEN || total < hl {
                return Err(Error::Malformed);
            }
            if packet_len.is_some_and(|n| total > n) || hl > buf.len() {
                return Err(Error::Truncated);
            }
            check_transport_room(Transport {
                src: IpAddr::V4(p.src_addr()),
                dst: IpAddr::V4(p.dst_addr()),
                protocol: p.protocol(),
                offset: hl,
                len: total.saturating_sub(hl),
                fragment: p.is_fragment(),
                has_transport: p.has_transport_header(),
            })
        }
        6 => {
            let p = ipv6::Packet::new_unchecked(buf);
            if buf.len() < ipv6::HEADER_LEN {
                return Err(Error::Truncated);
            }
            let end = ipv6::HEADER_LEN.saturating_add(usize::from(p.payload_len()));
            if packet_len.is_some_and(|n| end > n) {
                return Err(Error::Truncated);
            }
            let within = if packet_len.is_some() {
                end.min(buf.len())
            } else {
                buf.len()
            };
            let w = p.walk_within(within)?;
            check_transport_room(Transport {
                src: IpAddr::V6(p.src_addr()),
                dst: IpAddr::V6(p.dst_addr()),
                protocol: w.protocol,
                offset: w.offset,
                len: end.saturating_sub(w.offset),
                fragment: w.fragment.is_some(),
                has_transport: w.fragment.is_none_or(|f| f.offset == 0)
                    && w.protocol != super::proto::ESP
                    && w.protocol != super::proto::IPV6_NONXT,
            })
        }
        _ if buf.is_empty() => Err(Error::Truncated),
        _ => Err(Error::Malformed),
    }
}
