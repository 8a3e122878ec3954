//! Zero-copy packet views in the smoltcp `wire` style: one module per protocol,
//! a private `field` module of byte ranges, a `Packet<T: AsRef<[u8]>>` with
//! getters (setters when `T: AsMut<[u8]>`) and a `new_checked` constructor that
//! validates every length once.
//!
//! Contract: after `new_checked` succeeds, no accessor panics or reads out of
//! bounds; `new_unchecked` views are still panic-free (a field outside the
//! buffer reads as zero and writes to it are ignored) but may return nonsense.
//! Designed for use with `-Cpanic=abort`.

pub mod icmp;
pub mod ip;
pub mod ipv4;
pub mod ipv6;
pub mod tcp;
pub mod udp;

/// Why a buffer is not a valid packet of the expected kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The buffer is shorter than a header or a length field says.
    Truncated,
    /// A field has a value no valid packet has (version, IHL, data offset...).
    Malformed,
    /// An IPv6 extension-header chain longer than [`ipv6::MAX_EXT_HEADERS`].
    TooManyExtHeaders,
    /// The IP length fields leave the TCP, UDP or ICMPv6 header less room
    /// than it needs: its ports or checksum would lie past the IP payload.
    ShortTransport,
}

/// A byte range within a header.
pub(crate) type Field = core::ops::Range<usize>;

/// Reads a big-endian u16 at `f` (0 when outside `b`).
pub(crate) fn get_u16(b: &[u8], f: Field) -> u16 {
    b.get(f)
        .and_then(|s| <[u8; 2]>::try_from(s).ok())
        .map(u16::from_be_bytes)
        .unwrap_or(0)
}

/// Reads a big-endian u32 at `f` (0 when outside `b`).
pub(crate) fn get_u32(b: &[u8], f: Field) -> u32 {
    b.get(f)
        .and_then(|s| <[u8; 4]>::try_from(s).ok())
        .map(u32::from_be_bytes)
        .unwrap_or(0)
}

/// Reads the byte at `at` (0 when outside `b`).
pub(crate) fn get_u8(b: &[u8], at: usize) -> u8 {
    b.get(at).copied().unwrap_or(0)
}

/// Reads `N` bytes at `f` (zeros when outside `b`).
pub(crate) fn get_array<const N: usize>(b: &[u8], f: Field) -> [u8; N] {
    b.get(f)
        .and_then(|s| <[u8; N]>::try_from(s).ok())
        .unwrap_or([0; N])
}

/// Writes `v` at `f` when `f` is inside `b` and has `N` bytes.
pub(crate) fn set_array<const N: usize>(b: &mut [u8], f: Field, v: [u8; N]) {
    if let Some(d) = b.get_mut(f).and_then(|s| <&mut [u8; N]>::try_from(s).ok()) {
        *d = v;
    }
}

/// Writes a big-endian u16 at `f` (ignored when outside `b`).
pub(crate) fn set_u16(b: &mut [u8], f: Field, v: u16) {
    set_array(b, f, v.to_be_bytes());
}

/// An IP protocol number (IPv4 `protocol`, IPv6 `next header`).
pub mod proto {
    /// IPv6 Hop-by-Hop Options.
    pub const HOPOPT: u8 = 0;
    /// ICMP (IPv4).
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// IPv6 Routing header.
    pub const IPV6_ROUTE: u8 = 43;
    /// IPv6 Fragment header.
    pub const IPV6_FRAG: u8 = 44;
    /// Encapsulating Security Payload (opaque: the walk stops).
    pub const ESP: u8 = 50;
    /// Authentication Header.
    pub const AH: u8 = 51;
    /// ICMPv6.
    pub const ICMPV6: u8 = 58;
    /// IPv6 No Next Header.
    pub const IPV6_NONXT: u8 = 59;
    /// IPv6 Destination Options.
    pub const IPV6_OPTS: u8 = 60;
}
