//! The PROXY protocol version 2 header (HAProxy, "The PROXY protocol",
//! section 2.2): one codec for the socket filter (which writes it), prxd
//! (which reads it) and the tests.
//!
//! ```text
//! 0..12   signature  0D 0A 0D 0A 00 0D 0A 51 55 49 54 0A
//! 12      0x2C       version 2 (high nibble), command (low: 0 LOCAL, 1 PROXY)
//! 13      0xFT       address family (0 UNSPEC, 1 INET, 2 INET6, 3 UNIX),
//!                    transport (0 UNSPEC, 1 STREAM, 2 DGRAM)
//! 14..16  length of the rest, big-endian
//! 16..    addresses (INET 12, INET6 36, UNIX 216 bytes): source address,
//!         destination address, source port, destination port; then TLVs
//!         (type u8, length u16 big-endian, value)
//! ```
//!
//! [`emit`] writes the `PROXY` command over TCP: the source is the client (the
//! connecting socket's local address), the destination the address the
//! client asked for before the redirect; when the two families differ both are
//! written as IPv6 (IPv4-mapped). The socket filter adds the client's pid
//! ([`TLV_PID`], u32 big-endian) and process name ([`TLV_PROCESS`]) as TLVs
//! from the range the specification leaves to custom use (0xE0–0xEF).
//!
//! The socket filter also ends its header with [`TLV_AUTH`]: a 16-byte tag
//! over every byte before it (signature, command, addresses, ports, pid and
//! name TLVs, the auth TLV's own type and length), computed with the
//! [`AuthKey`] the kext draws from the kernel's random generator at start
//! (so, per boot and per kext load) and hands only to privileged control
//! clients. prxd, holding the key, trusts a header whose tag verifies
//! ([`Parsed::authenticate`]) even without the kext's record, and refuses one
//! whose tag is wrong. The tag is two SipHash-2-4 values under two
//! independent 128-bit halves of the key ([`mac`]).
//!
//! [`parse`] reads a header at the start of a buffer and returns either the
//! decoded header, [`Error::Incomplete`] (how many bytes it needs at least:
//! read more and call again), or one error per malformed case. It never
//! allocates and never panics; it is property-tested here and fuzzed
//! (`fuzz/fuzz_targets/proxy_v2_parse.rs`), and checked against headers
//! HAProxy itself sends (prxd's tests).

use super::addr::{Endpoint, IpAddr};
use super::rules::MAX_NAME;

/// The 12-byte signature.
pub const SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];
/// Version 2, command PROXY.
pub const VER_CMD_PROXY: u8 = 0x21;
/// Version 2, command LOCAL (health checks: use the connection's own addresses).
pub const VER_CMD_LOCAL: u8 = 0x20;
/// AF_INET, SOCK_STREAM.
pub const FAM_TCP4: u8 = 0x11;
/// AF_INET6, SOCK_STREAM.
pub const FAM_TCP6: u8 = 0x21;
/// The fixed part: signature, version/command, family, length.
pub const FIXED_LEN: usize = 16;
/// The client's pid: u32, big-endian (custom range).
pub const TLV_PID: u8 = 0xE0;
/// The client's process name: bytes, at most [`MAX_NAME`] (custom range).
pub const TLV_PROCESS: u8 = 0xE1;
/// The authenticating tag: [`AUTH_LEN`] bytes, the header's last TLV (custom range).
pub const TLV_AUTH: u8 = 0xE2;
/// Length of the [`TLV_AUTH`] value.
pub const AUTH_LEN: usize = 16;
/// The longest header [`encode`] writes: TCP6 addresses, a pid TLV, a
/// process-name TLV of [`MAX_NAME`] bytes and the authenticating TLV.
pub const MAX_LEN: usize = FIXED_LEN + 36 + (3 + 4) + (3 + MAX_NAME) + (3 + AUTH_LEN);

/// The per-boot key of the authenticating TLV: 256 bits, two SipHash keys.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct AuthKey(pub [u8; 32]);

impl core::fmt::Debug for AuthKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // Never printed.
        f.write_str("AuthKey(..)")
    }
}

/// The tag of `bytes` under `key`: SipHash-2-4 under the key's first half,
/// then under its second half, each little-endian.
pub fn mac(key: &AuthKey, bytes: &[u8]) -> [u8; AUTH_LEN] {
    let (a, b) = key.0.split_at(16);
    let a: [u8; 16] = a.try_into().unwrap_or([0; 16]);
    let b: [u8; 16] = b.try_into().unwrap_or([0; 16]);
    let lo = super::siphash::siphash24(&a, bytes).to_le_bytes();
    let hi = super::siphash::siphash24(&b, bytes).to_le_bytes();
    let mut out = [0u8; AUTH_LEN];
    // (Element copies: `copy_from_slice`'s length check stays a panic path
    // in a kext built below full optimisation.)
    for (o, v) in out.iter_mut().zip(lo.iter().chain(&hi)) {
        *o = *v;
    }
    out
}

/// What a header's authenticating TLV says ([`Parsed::authenticate`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// No [`TLV_AUTH`].
    Missing,
    /// A [`TLV_AUTH`] that is not the last TLV, not [`AUTH_LEN`] bytes, or
    /// whose tag does not verify under the key.
    Bad,
    /// The tag verifies: the kext wrote this header.
    Good,
}

/// Why bytes are not a PROXY v2 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The bytes so far are a valid beginning; at least `need` bytes in all are
    /// needed to go on.
    Incomplete {
        /// Total bytes needed (at least).
        need: usize,
    },
    /// The first 12 bytes are not the signature (byte `at` differs).
    Signature {
        /// The first differing offset.
        at: usize,
    },
    /// The version nibble is not 2.
    Version(u8),
    /// The command nibble is neither LOCAL (0) nor PROXY (1).
    Command(u8),
    /// The address family nibble is not 0–3.
    Family(u8),
    /// The transport nibble is not 0–2.
    Transport(u8),
    /// The length field is shorter than the family's address block.
    AddressesTooShort {
        /// The family/transport byte.
        family: u8,
        /// The length field.
        len: u16,
    },
    /// A TLV runs past the end of the header.
    TlvTruncated {
        /// Its offset from the start of the header.
        at: usize,
    },
    /// The output buffer is too small ([`emit`]), or a TLV value is longer than
    /// 65535 bytes.
    NoRoom,
}

impl Error {
    /// A short explanation for logs.
    pub fn describe(&self) -> &'static str {
        match self {
            Error::Incomplete { .. } => "incomplete header",
            Error::Signature { .. } => "not a PROXY v2 signature",
            Error::Version(_) => "version is not 2",
            Error::Command(_) => "command is neither LOCAL nor PROXY",
            Error::Family(_) => "unknown address family",
            Error::Transport(_) => "unknown transport protocol",
            Error::AddressesTooShort { .. } => "length shorter than the address block",
            Error::TlvTruncated { .. } => "a TLV runs past the header's end",
            Error::NoRoom => "no room",
        }
    }
}

/// The header's command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// LOCAL: the connection is the sender's own (no addresses apply).
    Local,
    /// PROXY: relayed on behalf of a client.
    Proxy,
}

/// The transport protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Unspecified.
    Unspec,
    /// SOCK_STREAM (TCP).
    Stream,
    /// SOCK_DGRAM (UDP).
    Dgram,
}

/// The addresses carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addresses {
    /// AF_UNSPEC (or the LOCAL command): none.
    None,
    /// AF_INET or AF_INET6: source (client) and destination.
    Ip {
        /// The client.
        src: Endpoint,
        /// The original destination.
        dst: Endpoint,
    },
    /// AF_UNIX: skipped (not used by prx).
    Unix,
}

/// A decoded header; `tlvs` borrows from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed<'a> {
    /// LOCAL or PROXY.
    pub command: Command,
    /// The transport.
    pub transport: Transport,
    /// The addresses.
    pub addrs: Addresses,
    /// The raw TLV area (checked to be well-formed; see [`Parsed::tlvs`]).
    tlv_bytes: &'a [u8],
    /// The whole header.
    bytes: &'a [u8],
    /// The header's total length: the payload starts here.
    pub len: usize,
}

/// One TLV.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tlv<'a> {
    /// Its type.
    pub kind: u8,
    /// Its value.
    pub value: &'a [u8],
}

/// Iterates over well-formed TLVs.
#[derive(Debug, Clone)]
pub struct Tlvs<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Tlvs<'a> {
    type Item = Tlv<'a>;
    fn next(&mut self) -> Option<Tlv<'a>> {
        let (&kind, rest) = self.rest.split_first()?;
        let (l, rest) = rest.split_first_chunk::<2>()?;
        let n = usize::from(u16::from_be_bytes(*l));
        let value = rest.get(..n)?;
        self.rest = rest.get(n..).unwrap_or(&[]);
        Some(Tlv { kind, value })
    }
}

impl<'a> Parsed<'a> {
    /// The TLVs.
    pub fn tlvs(&self) -> Tlvs<'a> {
        Tlvs {
            rest: self.tlv_bytes,
        }
    }

    /// The first TLV of type `kind`.
    pub fn tlv(&self, kind: u8) -> Option<&'a [u8]> {
        self.tlvs().find(|t| t.kind == kind).map(|t| t.value)
    }

    /// The client's pid ([`TLV_PID`]), if present and 4 bytes long.
    pub fn pid(&self) -> Option<u32> {
        let v: [u8; 4] = self.tlv(TLV_PID)?.try_into().ok()?;
        Some(u32::from_be_bytes(v))
    }

    /// The client's process name ([`TLV_PROCESS`]), if present.
    pub fn process(&self) -> Option<&'a [u8]> {
        self.tlv(TLV_PROCESS)
    }

    /// Checks the authenticating TLV under `key`: it must be the last TLV,
    /// [`AUTH_LEN`] bytes, and the tag of every header byte before its value.
    /// The comparison takes the same time whatever the bytes.
    pub fn authenticate(&self, key: &AuthKey) -> Auth {
        let Some(last) = self.tlvs().last() else {
            return Auth::Missing;
        };
        if last.kind != TLV_AUTH {
            return if self.tlv(TLV_AUTH).is_some() {
                Auth::Bad
            } else {
                Auth::Missing
            };
        }
        let Some(covered) = self.bytes.len().checked_sub(AUTH_LEN) else {
            return Auth::Bad;
        };
        if last.value.len() != AUTH_LEN {
            return Auth::Bad;
        }
        let want = mac(key, self.bytes.get(..covered).unwrap_or(&[]));
        let diff = want
            .iter()
            .zip(last.value)
            .fold(0u8, |d, (a, b)| d | (a ^ b));
        if diff == 0 { Auth::Good } else { Auth::Bad }
    }
}

/// Decodes the header at the start of `b` (see the module documentation).
pub fn parse(b: &[u8]) -> Result<Parsed<'_>, Error> {
    for (i, (x, s)) in b.iter().zip(SIGNATURE.iter()).enumerate() {
        if x != s {
            return Err(Error::Signature { at: i });
        }
    }
    let fixed = b
        .first_chunk::<FIXED_LEN>()
        .ok_or(Error::Incomplete { need: FIXED_LEN })?;
    let [.., vc, ft, l0, l1] = *fixed;
    if vc >> 4 != 2 {
        return Err(Error::Version(vc >> 4));
    }
    let command = match vc & 0x0F {
        0 => Command::Local,
        1 => Command::Proxy,
        c => return Err(Error::Command(c)),
    };
    let transport = match ft & 0x0F {
        0 => Transport::Unspec,
        1 => Transport::Stream,
        2 => Transport::Dgram,
        t => return Err(Error::Transport(t)),
    };
    let alen: usize = match ft >> 4 {
        0 => 0,
        1 => 12,
        2 => 36,
        3 => 216,
        f => return Err(Error::Family(f)),
    };
    let len16 = u16::from_be_bytes([l0, l1]);
    let len = usize::from(len16);
    if len < alen {
        return Err(Error::AddressesTooShort {
            family: ft,
            len: len16,
        });
    }
    let total = FIXED_LEN.saturating_add(len);
    let body = b
        .get(FIXED_LEN..total)
        .ok_or(Error::Incomplete { need: total })?;
    let (a, tlv_bytes) = body.split_at_checked(alen).unwrap_or((&[], &[]));
    let addrs = match (command, ft >> 4) {
        (Command::Local, _) | (_, 0) => Addresses::None,
        (_, 3) => Addresses::Unix,
        (_, 1) => {
            let a: &[u8; 12] = a.first_chunk().ok_or(Error::NoRoom)?;
            let [s0, s1, s2, s3, d0, d1, d2, d3, p0, p1, q0, q1] = *a;
            Addresses::Ip {
                src: Endpoint::new(IpAddr::V4([s0, s1, s2, s3]), u16::from_be_bytes([p0, p1])),
                dst: Endpoint::new(IpAddr::V4([d0, d1, d2, d3]), u16::from_be_bytes([q0, q1])),
            }
        }
        _ => {
            let (s, rest) = a.split_first_chunk::<16>().ok_or(Error::NoRoom)?;
            let (d, rest) = rest.split_first_chunk::<16>().ok_or(Error::NoRoom)?;
            let (p, rest) = rest.split_first_chunk::<2>().ok_or(Error::NoRoom)?;
            let (q, _) = rest.split_first_chunk::<2>().ok_or(Error::NoRoom)?;
            Addresses::Ip {
                src: Endpoint::new(IpAddr::V6(*s), u16::from_be_bytes(*p)),
                dst: Endpoint::new(IpAddr::V6(*d), u16::from_be_bytes(*q)),
            }
        }
    };
    // Every TLV must fit exactly.
    let mut rest = tlv_bytes;
    let mut at = FIXED_LEN.saturating_add(alen);
    while !rest.is_empty() {
        let n = rest
            .get(1..3)
            .and_then(|l| <[u8; 2]>::try_from(l).ok())
            .map(|l| usize::from(u16::from_be_bytes(l)).saturating_add(3))
            .ok_or(Error::TlvTruncated { at })?;
        rest = rest.get(n..).ok_or(Error::TlvTruncated { at })?;
        at = at.saturating_add(n);
    }
    Ok(Parsed {
        command,
        transport,
        addrs,
        tlv_bytes,
        bytes: b.get(..total).unwrap_or(&[]),
        len: total,
    })
}

/// Writes a `PROXY` header for a TCP connection from `src` (the client) to
/// `dst` (the original destination) with `tlvs` into `out`; returns its length.
pub fn emit(
    src: &Endpoint,
    dst: &Endpoint,
    tlvs: &[Tlv<'_>],
    out: &mut [u8],
) -> Result<usize, Error> {
    let (fam, s6, d6);
    let addrs: [&[u8]; 2] = match (src.addr, dst.addr) {
        (IpAddr::V4(_), IpAddr::V4(_)) => {
            fam = FAM_TCP4;
            [src.addr.octets(), dst.addr.octets()]
        }
        _ => {
            fam = FAM_TCP6;
            s6 = src.addr.to_v6_mapped();
            d6 = dst.addr.to_v6_mapped();
            [&s6, &d6]
        }
    };
    let mut rest: usize = if fam == FAM_TCP4 { 12 } else { 36 };
    for t in tlvs {
        if t.value.len() > usize::from(u16::MAX) {
            return Err(Error::NoRoom);
        }
        rest = rest.saturating_add(3).saturating_add(t.value.len());
    }
    let block = u16::try_from(rest).map_err(|_| Error::NoRoom)?;
    let sp = src.port.to_be_bytes();
    let dp = dst.port.to_be_bytes();
    let mut w = Writer { out, len: 0 };
    w.put(&SIGNATURE)?;
    w.put(&[VER_CMD_PROXY, fam])?;
    w.put(&block.to_be_bytes())?;
    w.put(addrs[0])?;
    w.put(addrs[1])?;
    w.put(&sp)?;
    w.put(&dp)?;
    for t in tlvs {
        let l = u16::try_from(t.value.len()).map_err(|_| Error::NoRoom)?;
        w.put(&[t.kind])?;
        w.put(&l.to_be_bytes())?;
        w.put(t.value)?;
    }
    Ok(w.len)
}

struct Writer<'o> {
    out: &'o mut [u8],
    len: usize,
}

impl Writer<'_> {
    fn put(&mut self, b: &[u8]) -> Result<(), Error> {
        let end = self.len.checked_add(b.len()).ok_or(Error::NoRoom)?;
        let dst = self.out.get_mut(self.len..end).ok_or(Error::NoRoom)?;
        // Element copies: see `mac`.
        for (o, v) in dst.iter_mut().zip(b) {
            *o = *v;
        }
        self.len = end;
        Ok(())
    }
}

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

/// A header `src` (the client) to `dst` (the original destination), with the
/// client's `pid` and process `name` (truncated to [`MAX_NAME`] bytes) as
/// TLVs; an empty name is left out. Without the authenticating TLV (tests,
/// and the layout the specification shows); the kext writes
/// [`encode_authenticated`].
pub fn encode(src: &Endpoint, dst: &Endpoint, pid: u32, name: &[u8]) -> Header {
    encode_with(src, dst, pid, name, None)
}

/// The socket filter's header: [`encode`]'s, ending with [`TLV_AUTH`], the
/// tag under `key` of every byte before the tag.
pub fn encode_authenticated(
    src: &Endpoint,
    dst: &Endpoint,
    pid: u32,
    name: &[u8],
    key: &AuthKey,
) -> Header {
    encode_with(src, dst, pid, name, Some(key))
}

fn encode_with(
    src: &Endpoint,
    dst: &Endpoint,
    pid: u32,
    name: &[u8],
    key: Option<&AuthKey>,
) -> Header {
    let mut bytes = [0u8; MAX_LEN];
    let pid = pid.to_be_bytes();
    let name = name.get(..MAX_NAME).unwrap_or(name);
    // The tag's place is written as zeros, then filled in.
    let zeros = [0u8; AUTH_LEN];
    let all = [
        Tlv {
            kind: TLV_PID,
            value: &pid,
        },
        Tlv {
            kind: TLV_PROCESS,
            value: name,
        },
        Tlv {
            kind: TLV_AUTH,
            value: &zeros,
        },
    ];
    let mut tlvs = [all[0]; 3];
    let mut n = 0usize;
    for t in all {
        let wanted = match t.kind {
            TLV_PROCESS => !name.is_empty(),
            TLV_AUTH => key.is_some(),
            _ => true,
        };
        if wanted && let Some(slot) = tlvs.get_mut(n) {
            *slot = t;
            n = n.saturating_add(1);
        }
    }
    // Cannot fail: MAX_LEN covers the longest case.
    let mut len = emit(src, dst, tlvs.get(..n).unwrap_or(&[]), &mut bytes).unwrap_or(0);
    if let Some(key) = key {
        match len.checked_sub(AUTH_LEN) {
            Some(covered) => {
                let tag = mac(key, bytes.get(..covered).unwrap_or(&[]));
                if let Some(place) = bytes.get_mut(covered..len) {
                    for (o, v) in place.iter_mut().zip(&tag) {
                        *o = *v;
                    }
                }
            }
            None => len = 0,
        }
    }
    Header {
        bytes,
        len: u8::try_from(len).unwrap_or(0),
    }
}

/// Where a connection's PROXY v2 header is, and so what its outgoing data
/// may do: nothing may overtake the header, and nothing may go without it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sending {
    /// No header is wanted.
    None,
    /// The header is still to be sent.
    Pending,
    /// The header is out.
    Sent,
    /// The header could not be sent.
    Failed,
}

/// Why [`Sending::admits`] refused data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// The header is not out yet (the kext answers ENOTCONN).
    NotYet,
    /// The header failed: the connection's data is refused (EPIPE).
    Failed,
}

impl Sending {
    /// After a redirect: `Pending` when the rule asks for a header.
    pub fn wanted(header: bool) -> Sending {
        if header {
            Sending::Pending
        } else {
            Sending::None
        }
    }

    /// Whether outgoing data passes; `ours()` tells whether it is the header
    /// itself (asked only while the header is pending or failed).
    pub fn admits(self, ours: impl FnOnce() -> bool) -> Result<(), Held> {
        match self {
            Sending::None | Sending::Sent => Ok(()),
            _ if ours() => Ok(()),
            Sending::Pending => Err(Held::NotYet),
            Sending::Failed => Err(Held::Failed),
        }
    }
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
    use proptest::prelude::*;

    #[test]
    fn sending_holds_data_until_the_header_is_out() {
        assert_eq!(Sending::wanted(false), Sending::None);
        assert_eq!(Sending::wanted(true), Sending::Pending);
        for s in [Sending::None, Sending::Sent] {
            assert_eq!(s.admits(|| panic!("not asked")), Ok(()));
        }
        assert_eq!(Sending::Pending.admits(|| true), Ok(()));
        assert_eq!(Sending::Pending.admits(|| false), Err(Held::NotYet));
        assert_eq!(Sending::Failed.admits(|| true), Ok(()));
        assert_eq!(Sending::Failed.admits(|| false), Err(Held::Failed));
    }

    #[test]
    fn the_longest_header_fits_one_injection() {
        const { assert!(MAX_LEN <= crate::kpi::sflt::MAX_INJECTION) };
    }

    fn v4(a: [u8; 4], p: u16) -> Endpoint {
        Endpoint::new(IpAddr::V4(a), p)
    }

    #[test]
    fn tcp4_header_matches_the_spec_byte_for_byte() {
        let h = encode(
            &v4([127, 0, 0, 1], 50000),
            &v4([203, 0, 113, 10], 80),
            4242,
            b"curl",
        );
        let mut want = SIGNATURE.to_vec();
        want.extend([
            0x21, 0x11, 0, 26, 127, 0, 0, 1, 203, 0, 113, 10, 0xC3, 0x50, 0, 80,
        ]);
        want.extend([0xE0, 0, 4, 0, 0, 0x10, 0x92, 0xE1, 0, 4]);
        want.extend(b"curl");
        assert_eq!(h.as_bytes(), want.as_slice());
        let p = parse(&want).unwrap();
        assert_eq!(p.len, want.len());
        assert_eq!(p.pid(), Some(4242));
        assert_eq!(p.process(), Some(&b"curl"[..]));
        assert_eq!(p.command, Command::Proxy);
        assert_eq!(p.transport, Transport::Stream);
        assert_eq!(
            p.addrs,
            Addresses::Ip {
                src: v4([127, 0, 0, 1], 50000),
                dst: v4([203, 0, 113, 10], 80)
            }
        );
    }

    #[test]
    fn tcp6_and_mixed_families() {
        let d = IpAddr::V6([0x20, 1, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10]);
        let h = encode(
            &Endpoint::new(IpAddr::V6([0; 16]), 1),
            &Endpoint::new(d, 443),
            1,
            b"",
        );
        assert_eq!(h.as_bytes().len(), 52 + 7);
        assert_eq!(&h.as_bytes()[12..16], &[0x21, 0x21, 0, 36 + 7]);
        assert_eq!(&h.as_bytes()[32..48], d.octets());
        assert_eq!(&h.as_bytes()[48..52], &[0, 1, 1, 187]);
        let m = encode(&v4([1, 2, 3, 4], 1), &Endpoint::new(d, 443), 1, b"x");
        assert_eq!(
            &m.as_bytes()[16..32],
            &IpAddr::V4([1, 2, 3, 4]).to_v6_mapped()
        );
        let long = encode(&Endpoint::new(d, 1), &Endpoint::new(d, 2), 7, &[b'a'; 40]);
        assert_eq!(long.as_bytes().len(), MAX_LEN - (3 + AUTH_LEN));
        let key = AuthKey([7; 32]);
        let longest = encode_authenticated(
            &Endpoint::new(d, 1),
            &Endpoint::new(d, 2),
            7,
            &[b'a'; 40],
            &key,
        );
        assert_eq!(longest.as_bytes().len(), MAX_LEN);
        assert_eq!(
            parse(longest.as_bytes()).unwrap().authenticate(&key),
            Auth::Good
        );
        assert_eq!(
            parse(long.as_bytes()).unwrap().process(),
            Some(&[b'a'; MAX_NAME][..])
        );
    }

    #[test]
    fn each_malformed_case_has_its_error() {
        let good = encode(&v4([10, 0, 0, 2], 5), &v4([10, 0, 0, 3], 6), 9, b"nc");
        let g = good.as_bytes();
        assert_eq!(parse(&g[..5]), Err(Error::Incomplete { need: 16 }));
        assert_eq!(parse(&g[..20]), Err(Error::Incomplete { need: g.len() }));
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\n"),
            Err(Error::Signature { at: 0 })
        );
        assert_eq!(
            parse(b"\r\n\r\n\0\r\nQUIX"),
            Err(Error::Signature { at: 10 })
        );
        let with = |i: usize, v: u8| {
            let mut b = g.to_vec();
            b[i] = v;
            parse(&b).map(|p| (p.command, p.addrs))
        };
        assert_eq!(with(12, 0x11), Err(Error::Version(1)));
        assert_eq!(with(12, 0x22), Err(Error::Command(2)));
        assert_eq!(with(13, 0x41), Err(Error::Family(4)));
        assert_eq!(with(13, 0x13), Err(Error::Transport(3)));
        assert_eq!(
            with(15, 11),
            Err(Error::AddressesTooShort {
                family: 0x11,
                len: 11
            })
        );
        // Length cut inside the second TLV.
        assert_eq!(with(15, 12 + 7 + 2), Err(Error::TlvTruncated { at: 35 }));
        // LOCAL: addresses ignored; UNSPEC: none.
        assert_eq!(with(12, 0x20), Ok((Command::Local, Addresses::None)));
        let mut unspec = SIGNATURE.to_vec();
        unspec.extend([0x21, 0x00, 0, 0]);
        assert_eq!(parse(&unspec).unwrap().addrs, Addresses::None);
    }

    #[test]
    fn the_authenticating_tlv_verifies_only_under_its_key() {
        let key = AuthKey(core::array::from_fn(|i| i as u8));
        let src = v4([127, 0, 0, 1], 50000);
        let dst = v4([203, 0, 113, 10], 80);
        let h = encode_authenticated(&src, &dst, 4242, b"curl", &key);
        let b = h.as_bytes();
        // The plain header, its length field grown by the TLV, then the TLV.
        let plain = encode(&src, &dst, 4242, b"curl");
        let n = plain.as_bytes().len();
        assert_eq!(b.len(), n + 3 + AUTH_LEN);
        assert_eq!(&b[16..n], &plain.as_bytes()[16..]);
        assert_eq!(u16::from_be_bytes([b[14], b[15]]) as usize, b.len() - 16);
        assert_eq!(&b[n..n + 3], &[TLV_AUTH, 0, AUTH_LEN as u8]);
        assert_eq!(b[n + 3..], mac(&key, &b[..n + 3]));
        let p = parse(b).unwrap();
        assert_eq!(p.authenticate(&key), Auth::Good);
        assert_eq!((p.pid(), p.process()), (Some(4242), Some(&b"curl"[..])));
        // Another boot's key.
        let mut other = key;
        other.0[31] ^= 1;
        assert_eq!(p.authenticate(&other), Auth::Bad);
        // No tag.
        assert_eq!(
            parse(plain.as_bytes()).unwrap().authenticate(&key),
            Auth::Missing
        );
        // The tag not last: a TLV appended after it.
        let mut after = b.to_vec();
        after.extend([0xE5, 0, 0]);
        let len = u16::from_be_bytes([after[14], after[15]]) + 3;
        after[14..16].copy_from_slice(&len.to_be_bytes());
        assert_eq!(parse(&after).unwrap().authenticate(&key), Auth::Bad);
        // A short tag.
        let mut short = b[..b.len() - 1].to_vec();
        short[n + 2] = AUTH_LEN as u8 - 1;
        let len = u16::from_be_bytes([short[14], short[15]]) - 1;
        short[14..16].copy_from_slice(&len.to_be_bytes());
        assert_eq!(parse(&short).unwrap().authenticate(&key), Auth::Bad);
        // Debug never shows the key.
        assert_eq!(format!("{key:?}"), "AuthKey(..)");
    }

    proptest! {
        /// Any change to any byte of an authenticated header (that still
        /// parses) fails the check: addresses, ports, pid, name, tag alike.
        #[test]
        fn a_changed_byte_never_authenticates(
            key in any::<[u8; 32]>(),
            src in endpoint(),
            dst in endpoint(),
            pid in any::<u32>(),
            name in proptest::collection::vec(any::<u8>(), 0..20),
            at in any::<proptest::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let key = AuthKey(key);
            let h = encode_authenticated(&src, &dst, pid, &name, &key);
            let mut b = h.as_bytes().to_vec();
            prop_assert_eq!(parse(&b).unwrap().authenticate(&key), Auth::Good);
            let i = at.index(b.len());
            b[i] ^= flip;
            if let Ok(p) = parse(&b) {
                prop_assert_ne!(p.authenticate(&key), Auth::Good);
            }
        }
    }

    #[test]
    fn emit_refuses_a_short_buffer() {
        let mut small = [0u8; 27];
        assert_eq!(
            emit(&v4([1, 1, 1, 1], 1), &v4([2, 2, 2, 2], 2), &[], &mut small),
            Err(Error::NoRoom)
        );
        let mut ok = [0u8; 28];
        assert_eq!(
            emit(&v4([1, 1, 1, 1], 1), &v4([2, 2, 2, 2], 2), &[], &mut ok),
            Ok(28)
        );
    }

    fn endpoint() -> impl Strategy<Value = Endpoint> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>()).prop_map(|(a, p)| v4(a, p)),
            (any::<[u8; 16]>(), any::<u16>()).prop_map(|(a, p)| Endpoint::new(IpAddr::V6(a), p)),
        ]
    }

    proptest! {
        #[test]
        fn emit_then_parse_round_trips(
            src in endpoint(),
            dst in endpoint(),
            tlvs in proptest::collection::vec((any::<u8>(), proptest::collection::vec(any::<u8>(), 0..40)), 0..5),
            payload in proptest::collection::vec(any::<u8>(), 0..20),
        ) {
            let t: Vec<Tlv<'_>> = tlvs.iter().map(|(k, v)| Tlv { kind: *k, value: v }).collect();
            let mut out = vec![0u8; 1024];
            let n = emit(&src, &dst, &t, &mut out).unwrap();
            out.truncate(n);
            out.extend(&payload);
            let p = parse(&out).unwrap();
            prop_assert_eq!(p.len, n);
            let (s, d) = match (src.addr, dst.addr) {
                (IpAddr::V4(_), IpAddr::V4(_)) => (src, dst),
                _ => (
                    Endpoint::new(IpAddr::V6(src.addr.to_v6_mapped()), src.port),
                    Endpoint::new(IpAddr::V6(dst.addr.to_v6_mapped()), dst.port),
                ),
            };
            prop_assert_eq!(p.addrs, Addresses::Ip { src: s, dst: d });
            let got: Vec<Tlv<'_>> = p.tlvs().collect();
            prop_assert_eq!(got, t);
            // Every strict prefix is incomplete, never an error or a success.
            for cut in 0..n {
                let r = parse(&out[..cut]);
                prop_assert!(matches!(r, Err(Error::Incomplete { need }) if need > cut), "cut {}: {:?}", cut, r);
            }
        }

        #[test]
        fn hostile_bytes_never_panic(
            mut b in proptest::collection::vec(any::<u8>(), 0..300),
            keep in 0usize..17,
        ) {
            // Often a valid beginning, so parsing gets past the signature.
            let k = keep.min(b.len());
            let prefix = [&SIGNATURE[..], &[0x21, 0x11, 0, 12]].concat();
            b[..k].copy_from_slice(&prefix[..k]);
            if let Ok(p) = parse(&b) {
                prop_assert!(p.len <= b.len());
                prop_assert!(p.len >= FIXED_LEN);
                let _ = p.tlvs().count();
            }
        }
    }
}
