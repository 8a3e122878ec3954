//! IPv6 packets (RFC 8200) and the walk over extension headers to the
//! transport header.

use super::{Error, Field, get_array, get_u8, get_u16, proto, set_array};

mod field {
    use super::Field;
    pub const VER_TC_FLOW: Field = 0..4;
    pub const LENGTH: Field = 4..6;
    pub const NXT_HDR: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC_ADDR: Field = 8..24;
    pub const DST_ADDR: Field = 24..40;
}

/// Length of the fixed header.
pub const HEADER_LEN: usize = 40;

/// The longest extension-header chain the walk follows; longer chains are
/// rejected ([`Error::TooManyExtHeaders`]) so hostile packets cost bounded work.
pub const MAX_EXT_HEADERS: usize = 8;

/// An IPv6 address in network order.
pub type Address = [u8; 16];

/// The fragment header's offset and M flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fragment {
    /// Offset of this fragment in bytes.
    pub offset: u16,
    /// More fragments follow.
    pub more: bool,
}

/// Where the extension-header walk ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Walk {
    /// The upper-layer protocol (or ESP / No Next Header, where the walk stops).
    pub protocol: u8,
    /// Offset of the upper-layer header from the start of the IPv6 header.
    pub offset: usize,
    /// The fragment header, if one was crossed.
    pub fragment: Option<Fragment>,
    /// Extension headers crossed.
    pub ext_headers: usize,
}

/// A view of an IPv6 packet in `buffer`.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// A view without checks (accessors stay panic-free).
    pub const fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }

    /// A view after checking: version 6, 40 + payload length ≤ buffer length.
    /// (Jumbograms, payload length 0 with a Jumbo option, are not supported:
    /// such a packet checks as having an empty payload.)
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let p = Packet { buffer };
        let b = p.buffer.as_ref();
        if b.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if p.version() != 6 {
            return Err(Error::Malformed);
        }
        if b.len() < HEADER_LEN.saturating_add(usize::from(p.payload_len())) {
            return Err(Error::Truncated);
        }
        Ok(p)
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The IP version (6 for a checked packet).
    pub fn version(&self) -> u8 {
        get_u8(self.buffer.as_ref(), 0) >> 4
    }

    /// Version, traffic class and flow label.
    pub fn ver_tc_flow(&self) -> [u8; 4] {
        get_array(self.buffer.as_ref(), field::VER_TC_FLOW)
    }

    /// The payload length field (extension headers included).
    pub fn payload_len(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::LENGTH)
    }

    /// The first next-header value.
    pub fn next_header(&self) -> u8 {
        get_u8(self.buffer.as_ref(), field::NXT_HDR)
    }

    /// Hop limit.
    pub fn hop_limit(&self) -> u8 {
        get_u8(self.buffer.as_ref(), field::HOP_LIMIT)
    }

    /// Source address.
    pub fn src_addr(&self) -> Address {
        get_array(self.buffer.as_ref(), field::SRC_ADDR)
    }

    /// Destination address.
    pub fn dst_addr(&self) -> Address {
        get_array(self.buffer.as_ref(), field::DST_ADDR)
    }

    /// Everything after the fixed header, up to the payload length.
    pub fn payload(&self) -> &[u8] {
        let end = HEADER_LEN.saturating_add(usize::from(self.payload_len()));
        self.buffer.as_ref().get(HEADER_LEN..end).unwrap_or(&[])
    }

    /// Walks the extension headers (Hop-by-Hop, Routing, Fragment, Destination
    /// Options, AH) to the upper-layer header. Stops at ESP and No Next Header
    /// (opaque), and at a non-first fragment (the rest of the chain is in the
    /// first fragment). Every header must lie within the payload.
    pub fn walk(&self) -> Result<Walk, Error> {
        self.walk_within(HEADER_LEN.saturating_add(usize::from(self.payload_len())))
    }

    /// [`Packet::walk`] over the first `end` bytes of the buffer only.
    pub fn walk_within(&self, end: usize) -> Result<Walk, Error> {
        let b = self.buffer.as_ref().get(..end).ok_or(Error::Truncated)?;
        let mut next = self.next_header();
        let mut off = HEADER_LEN;
        let mut fragment = None;
        let mut n = 0usize;
        loop {
            let len = match next {
                proto::HOPOPT | proto::IPV6_ROUTE | proto::IPV6_OPTS => {
                    let hdr = b.get(off..off.saturating_add(2)).ok_or(Error::Truncated)?;
                    (usize::from(get_u8(hdr, 1)).wrapping_add(1)).wrapping_mul(8)
                }
                proto::AH => {
                    let hdr = b.get(off..off.saturating_add(2)).ok_or(Error::Truncated)?;
                    (usize::from(get_u8(hdr, 1)).wrapping_add(2)).wrapping_mul(4)
                }
                proto::IPV6_FRAG => {
                    let hdr = b.get(off..off.saturating_add(8)).ok_or(Error::Truncated)?;
                    let fo = get_u16(hdr, 2..4);
                    fragment = Some(Fragment {
                        offset: fo & 0xfff8,
                        more: fo & 1 != 0,
                    });
                    8
                }
                _ => {
                    return Ok(Walk {
                        protocol: next,
                        offset: off,
                        fragment,
                        ext_headers: n,
                    });
                }
            };
            if n >= MAX_EXT_HEADERS {
                return Err(Error::TooManyExtHeaders);
            }
            let hdr = b
                .get(off..off.saturating_add(len))
                .ok_or(Error::Truncated)?;
            next = get_u8(hdr, 0);
            off = off.saturating_add(len);
            n = n.wrapping_add(1);
            if fragment.is_some_and(|f| f.offset != 0) {
                return Ok(Walk {
                    protocol: next,
                    offset: off,
                    fragment,
                    ext_headers: n,
                });
            }
        }
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the source address.
    pub fn set_src_addr(&mut self, a: Address) {
        set_array(self.buffer.as_mut(), field::SRC_ADDR, a);
    }

    /// Sets the destination address.
    pub fn set_dst_addr(&mut self, a: Address) {
        set_array(self.buffer.as_mut(), field::DST_ADDR, a);
    }
}
