//! The IP filter's fast path for plain TCP and UDP packets: the case of nearly
//! every packet of a redirected flow, done in one pass with no intermediate
//! plan (issue 19: per-packet cost near the floor).
//!
//! A packet is *plain* when its headers are the fixed ones and its IP length
//! ends within the bytes given (the first mbuf): IPv4 with a 20-byte header
//! (no options), not a fragment; IPv6 whose next header is TCP or UDP (no
//! extension headers); the transport header complete (TCP 20 bytes, UDP 8).
//! Everything else — options, extension headers, fragments, ICMP, packets
//! split across mbufs — takes [`super::filter`]'s general path, as before.
//!
//! For a plain packet:
//! 1. [`parse`] reads the flow key (already [`Packed`] as the NAT table hashes
//!    and compares it) and TCP flags straight from the bytes;
//! 2. [`track_output`] / [`track_input`] (under the table's lock) answer what
//!    the general path's plan would: the proxies' own addresses pass, a live
//!    tracked flow gives its proxy (output) or original destination (input)
//!    and is refreshed; an untracked output packet goes to the rules
//!    ([`Tracked::Untracked`]); an untracked input packet passes;
//! 3. [`rewrite`] rewrites one endpoint with RFC 1624 updates, byte for byte
//!    what [`super::translate::rewrite_with`] writes (a deferred TCP/UDP
//!    checksum stays deferred: only the pseudo-header sum it holds moves).
//!
//! The tests check each step against the general path on the same packets and
//! tables: the same answer, the same bytes, the same table afterwards.

use super::addr::Endpoint;
use super::nat::{NatTable, Packed, PackedEndpoint, Store};
use super::policy::Proxies;
use super::translate::{self, L4Sum, Refused, Side};
use super::wire::{Error, proto, tcp, udp};

/// A plain packet's shape, as [`parse`] found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// IPv6 (else IPv4).
    pub v6: bool,
    /// [`proto::TCP`] or [`proto::UDP`].
    pub protocol: u8,
    /// The TCP flags (0 for UDP).
    pub flags: u8,
}

/// Bytes a transport header of `protocol` must have here (TCP's fixed header,
/// UDP's header), or `None` for other protocols.
#[inline(always)]
fn min_transport(protocol: u8) -> Option<usize> {
    match protocol {
        proto::TCP => Some(tcp::HEADER_LEN),
        proto::UDP => Some(udp::HEADER_LEN),
        _ => None,
    }
}

/// A plain packet's fixed headers, checked once: the `IP`-byte IP header
/// (20: IPv4 without options, 40: IPv6) with `A`-byte addresses, and the
/// transport header up to its checksum (`L4` bytes: TCP 18, UDP 8; the
/// checksum is the last two). Every field is at a fixed offset of a
/// fixed-size array, so reading and rewriting it needs no bounds check.
#[derive(Debug)]
pub struct Plain<'a, const IP: usize, const A: usize, const L4: usize> {
    ip: &'a mut [u8; IP],
    l4: &'a mut [u8; L4],
    /// The flow key as the packet carries it (protocol, source, destination).
    pub key: Packed,
    /// The TCP flags (0 for UDP).
    pub flags: u8,
}

/// What runs on a plain packet ([`with_plain`]): one body, compiled for each
/// of the four shapes (IPv4/IPv6, TCP/UDP).
pub trait OnPlain {
    /// Its result.
    type Out;
    /// Runs on `p`.
    fn on<const IP: usize, const A: usize, const L4: usize>(
        self,
        p: Plain<'_, IP, A, L4>,
    ) -> Self::Out;
}

/// Runs `v` on `first` (the packet's first bytes) if the packet is plain
/// (module docs); `None` otherwise: the general path decides.
#[inline(always)]
pub fn with_plain<V: OnPlain>(first: &mut [u8], v: V) -> Option<V::Out> {
    match *first.first()? {
        0x45 => plain::<20, 4, V>(first, v),
        b if b >> 4 == 6 => plain::<40, 16, V>(first, v),
        _ => None,
    }
}

/// [`with_plain`] for an `IP`-byte header with `A`-byte addresses.
#[inline(always)]
fn plain<const IP: usize, const A: usize, V: OnPlain>(first: &mut [u8], v: V) -> Option<V::Out> {
    let v6 = IP == 40;
    let len = first.len();
    let (ip, rest) = first.split_first_chunk_mut::<IP>()?;
    let (protocol, end, addrs) = if v6 {
        let payload = usize::from(translate::be16(ip, 4));
        let addrs = [
            translate::be64(ip, 8),
            translate::be64(ip, 16),
            translate::be64(ip, 24),
            translate::be64(ip, 32),
        ];
        (*ip.get(6)?, payload.wrapping_add(40), addrs)
    } else {
        // Flags and fragment offset: MF or a non-zero offset is a fragment.
        if translate::be16(ip, 6) & 0x3fff != 0 {
            return None;
        }
        let addrs = [
            0,
            u64::from(translate::be32(ip, 12)),
            0,
            u64::from(translate::be32(ip, 16)),
        ];
        (*ip.get(9)?, usize::from(translate::be16(ip, 2)), addrs)
    };
    let min = min_transport(protocol)?;
    if end > len || end < IP.wrapping_add(min) {
        return None;
    }
    let ports = rest.first_chunk::<4>().map(|p| u32::from_be_bytes(*p))?;
    // Both addresses IPv6, or both IPv4 (Packed's layout).
    let meta = u64::from(ports) << 32 | u64::from(protocol) << 8 | if v6 { 3 } else { 0 };
    let [ah, al, bh, bl] = addrs;
    let key = Packed::from_words([meta, ah, al, bh, bl]);
    if protocol == proto::TCP {
        let l4 = rest.first_chunk_mut::<18>()?;
        let flags = *l4.get(13)?;
        Some(v.on(Plain::<IP, A, 18> { ip, l4, key, flags }))
    } else {
        let l4 = rest.first_chunk_mut::<8>()?;
        Some(v.on(Plain::<IP, A, 8> {
            ip,
            l4,
            key,
            flags: 0,
        }))
    }
}

impl<const IP: usize, const A: usize, const L4: usize> Plain<'_, IP, A, L4> {
    /// Its shape.
    pub fn head(&self) -> Head {
        Head {
            v6: IP == 40,
            protocol: self.key.protocol(),
            flags: self.flags,
        }
    }

    /// Rewrites the `side` endpoint to `to` (of the packet's family), with
    /// the transport checksum field holding `l4`; the count of leading bytes
    /// that may have changed, as [`super::translate::rewrite_with`] gives it.
    /// The transport header as `translate::rewrite_ports` does it for the
    /// general path.
    #[inline(always)]
    pub fn rewrite(self, side: Side, to: &PackedEndpoint, l4: L4Sum) -> Result<usize, Refused> {
        if to.v6 != (A == 16) {
            return Err(Refused::FamilyMismatch);
        }
        let src = side == Side::Src;
        // The address's bytes: the last `A` of its two big-endian words.
        let words = (u128::from(to.hi) << 64 | u128::from(to.lo)).to_be_bytes();
        let truncated = Refused::Wire(Error::Truncated);
        let new = words.last_chunk::<A>().ok_or(truncated)?;
        let ip = self.ip;
        // Source address at 12 (IPv4) or 8 (IPv6), destination right after it.
        let at = (if IP == 20 { 12usize } else { 8 }).wrapping_add(if src { 0 } else { A });
        let addr = ip
            .get_mut(at..)
            .and_then(<[u8]>::first_chunk_mut::<A>)
            .ok_or(truncated)?;
        let d = translate::addr_delta(addr, new);
        translate::rewrite_ports(self.l4, if src { 0 } else { 2 }, to.port, d, l4, IP == 40)?;
        *addr = *new;
        if IP == 20 {
            translate::put16(ip, 10, translate::apply(translate::be16(ip, 10), d));
        }
        Ok(IP.wrapping_add(L4))
    }
}

/// Reads a plain packet's shape and flow key (protocol, source, destination)
/// from `first`, the packet's first bytes (lent mutably, as
/// [`with_plain`] takes them; nothing is written); `None`: not plain (module
/// docs), the general path decides.
pub fn parse(first: &mut [u8]) -> Option<(Head, Packed)> {
    struct Read;
    impl OnPlain for Read {
        type Out = (Head, Packed);
        fn on<const IP: usize, const A: usize, const L4: usize>(
            self,
            p: Plain<'_, IP, A, L4>,
        ) -> (Head, Packed) {
            (p.head(), p.key)
        }
    }
    with_plain(first, Read)
}

/// Rewrites the `side` endpoint of the plain packet `first` to `to`
/// ([`Plain::rewrite`]); `None`: not plain.
pub fn rewrite(
    first: &mut [u8],
    side: Side,
    to: &PackedEndpoint,
    l4: L4Sum,
) -> Option<Result<usize, Refused>> {
    struct Rewrite<'t>(Side, &'t PackedEndpoint, L4Sum);
    impl OnPlain for Rewrite<'_> {
        type Out = Result<usize, Refused>;
        fn on<const IP: usize, const A: usize, const L4: usize>(
            self,
            p: Plain<'_, IP, A, L4>,
        ) -> Result<usize, Refused> {
            p.rewrite(self.0, self.1, self.2)
        }
    }
    with_plain(first, Rewrite(side, to, l4))
}

/// The proxy endpoints' addresses as packets carry them, in [`Packed`]'s
/// words: a packet to or from one of them is never translated. Prepared once
/// from the [`Proxies`] (when they change), so the per-packet check is four
/// word compares with no branch per slot: the general path's canonical
/// comparison (an IPv4-mapped IPv6 address equals its IPv4 address) worked
/// out in advance, and a slot without a proxy repeats the other's address.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyAddrs {
    /// IPv4 proxies (`Packed`'s low word), when `any4`.
    v4: [u64; 2],
    any4: bool,
    /// IPv6 proxies (IPv4 ones in their mapped form), when `any6`.
    v6: [(u64, u64); 2],
    any6: bool,
}

impl ProxyAddrs {
    /// Prepared from `p`.
    pub fn of(p: &Proxies) -> ProxyAddrs {
        let mut v4: [Option<u64>; 2] = [None; 2];
        let mut v6: [Option<(u64, u64)>; 2] = [None; 2];
        for ((e, s4), s6) in [p.v4, p.v6].iter().zip(&mut v4).zip(&mut v6) {
            let Some(e) = e else { continue };
            let w = PackedEndpoint::of(&Endpoint::new(e.addr.canonical(), e.port));
            *s6 = Some(if w.v6 {
                (w.hi, w.lo)
            } else {
                *s4 = Some(w.lo);
                // Its IPv4-mapped form: ::ffff:a.b.c.d.
                (0, 0xffff_0000_0000 | w.lo)
            });
        }
        let [a4, b4] = v4;
        let [a6, b6] = v6;
        ProxyAddrs {
            v4: [a4.or(b4).unwrap_or(0), b4.or(a4).unwrap_or(0)],
            any4: a4.or(b4).is_some(),
            v6: [a6.or(b6).unwrap_or((0, 0)), b6.or(a6).unwrap_or((0, 0))],
            any6: a6.or(b6).is_some(),
        }
    }

    /// Whether the address of `e` is a proxy's.
    #[inline(always)]
    fn has(&self, e: &PackedEndpoint) -> bool {
        if e.v6 {
            let [(h0, l0), (h1, l1)] = self.v6;
            self.any6 && ((h0 == e.hi) & (l0 == e.lo) | (h1 == e.hi) & (l1 == e.lo))
        } else {
            let [a, b] = self.v4;
            self.any4 && ((a == e.lo) | (b == e.lo))
        }
    }

    /// Whether either address of `k` is a proxy's.
    #[inline(always)]
    pub fn contains_either(&self, k: &Packed) -> bool {
        self.has(&k.b()) || self.has(&k.a())
    }
}

/// What the table says of a plain packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tracked {
    /// A live tracked flow (refreshed): rewrite the endpoint to this.
    To(PackedEndpoint),
    /// Leave the packet alone (to or from a proxy; an untracked reply).
    Pass,
    /// An outbound packet of no live tracked flow: the rules decide.
    Untracked,
}

/// An outbound plain packet of flow `key` with TCP `flags`: the general
/// path's tracked-flow answer ([`super::filter::plan_output_tracked`]).
#[inline(always)]
pub fn track_output<S: Store>(
    table: &mut NatTable<S>,
    proxies: &ProxyAddrs,
    key: &Packed,
    flags: u8,
    now: u64,
) -> Tracked {
    if proxies.contains_either(key) {
        return Tracked::Pass;
    }
    match table.outbound_packed(key, flags, now) {
        Some(to) => Tracked::To(to),
        None => Tracked::Untracked,
    }
}

/// An inbound plain packet (`key` as it arrives: from, to): the original
/// destination to put back as its source, or pass
/// ([`super::filter::plan_input_parsed`]).
#[inline(always)]
pub fn track_input<S: Store>(
    table: &mut NatTable<S>,
    key: &Packed,
    flags: u8,
    now: u64,
) -> Tracked {
    match table.inbound_packed(key, flags, now) {
        Some(orig) => Tracked::To(orig),
        None => Tracked::Pass,
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
    use crate::net::addr::{Endpoint, IpAddr};
    use crate::net::checksum;
    use crate::net::filter::{self, Plan};
    use crate::net::nat::{Config, Entry, FlowKey};
    use crate::net::translate;
    use crate::net::wire::ip;
    use proptest::prelude::*;

    /// A TCP (or UDP) packet of `family` with the given fields; `payload` bytes.
    #[allow(clippy::too_many_arguments)]
    fn packet(
        v6: bool,
        protocol: u8,
        src: &[u8],
        dst: &[u8],
        sport: u16,
        dport: u16,
        flags: u8,
        csum: u16,
        payload: usize,
    ) -> Vec<u8> {
        let l4len = if protocol == proto::TCP { 20 } else { 8 } + payload;
        let mut p = if v6 {
            let mut h = vec![0u8; 40];
            h[0] = 0x60;
            h[4..6].copy_from_slice(&(l4len as u16).to_be_bytes());
            h[6] = protocol;
            h[7] = 64;
            h[8..24].copy_from_slice(src);
            h[24..40].copy_from_slice(dst);
            h
        } else {
            let mut h = vec![0u8; 20];
            h[0] = 0x45;
            h[2..4].copy_from_slice(&((20 + l4len) as u16).to_be_bytes());
            h[6] = 0x40; // DF
            h[8] = 64;
            h[9] = protocol;
            h[12..16].copy_from_slice(src);
            h[16..20].copy_from_slice(dst);
            let c = checksum::checksum(&h);
            h[10..12].copy_from_slice(&c.to_be_bytes());
            h
        };
        let mut l4 = vec![0u8; l4len];
        l4[0..2].copy_from_slice(&sport.to_be_bytes());
        l4[2..4].copy_from_slice(&dport.to_be_bytes());
        if protocol == proto::TCP {
            l4[12] = 5 << 4;
            l4[13] = flags;
            l4[16..18].copy_from_slice(&csum.to_be_bytes());
        } else {
            l4[4..6].copy_from_slice(&(l4len as u16).to_be_bytes());
            l4[6..8].copy_from_slice(&csum.to_be_bytes());
        }
        for (i, b) in l4
            .iter_mut()
            .enumerate()
            .skip(if protocol == proto::TCP { 20 } else { 8 })
        {
            *b = i as u8;
        }
        p.extend_from_slice(&l4);
        p
    }

    fn table() -> NatTable<Vec<Entry>> {
        NatTable::new(vec![Entry::EMPTY; 64], Config::DEFAULT, 7).unwrap()
    }

    fn ep(a: &[u8], port: u16) -> Endpoint {
        Endpoint::new(
            match a.len() {
                4 => IpAddr::V4(a.try_into().unwrap()),
                _ => IpAddr::V6(a.try_into().unwrap()),
            },
            port,
        )
    }

    fn flows(t: &NatTable<Vec<Entry>>) -> Vec<crate::net::nat::Flow> {
        let mut v: Vec<_> = t.flows().collect();
        v.sort_by_key(|f| format!("{f:?}"));
        v
    }

    fn any_packet() -> impl Strategy<Value = (Vec<u8>, bool)> {
        (
            any::<bool>(),
            prop_oneof![Just(proto::TCP), Just(proto::UDP)],
            0u8..4,
            0u8..4,
            prop_oneof![Just(80u16), Just(443), Just(3128), any::<u16>()],
            any::<u8>(),
            any::<u16>(),
            0usize..40,
            any::<bool>(),
            proptest::collection::vec((0usize..80, any::<u8>()), 0..3),
        )
            .prop_map(
                |(v6, protocol, s, d, port, flags, csum, payload, reply, mutations)| {
                    let n = if v6 { 16 } else { 4 };
                    // A small address space so flows, proxies and replies meet.
                    let addr = |i: u8| {
                        let mut a = vec![0u8; n];
                        a[0] = if v6 { 0x20 } else { 10 };
                        a[n - 1] = i;
                        a
                    };
                    let (src, dst) = (addr(s), addr(d));
                    let (sp, dp) = if reply {
                        (port, 1000 + u16::from(d))
                    } else {
                        (1000 + u16::from(s), port)
                    };
                    let mut p = packet(v6, protocol, &src, &dst, sp, dp, flags, csum, payload);
                    for (at, b) in mutations {
                        if at < p.len() {
                            p[at] = b;
                        }
                    }
                    (p, reply)
                },
            )
    }

    /// A table with flows among the test's addresses (from `client` ports
    /// 1000.. to port 80 and 443), redirected to address 3 port 3128.
    fn filled(v6: bool) -> NatTable<Vec<Entry>> {
        let mut t = table();
        let n = if v6 { 16 } else { 4 };
        let addr = |i: u8| {
            let mut a = vec![0u8; n];
            a[0] = if v6 { 0x20 } else { 10 };
            a[n - 1] = i;
            a
        };
        for s in 0..3u8 {
            for (d, port) in [(1u8, 80u16), (2, 443)] {
                for protocol in [proto::TCP, proto::UDP] {
                    let key = FlowKey {
                        protocol,
                        src: ep(&addr(s), 1000 + u16::from(s)),
                        dst: ep(&addr(d), port),
                    };
                    let syn = if protocol == proto::TCP { tcp::SYN } else { 0 };
                    let _ = t.insert(key, ep(&addr(3), 3128), syn, 1_000);
                }
            }
        }
        t
    }

    fn proxies(v6: bool) -> Proxies {
        let a = |v6: bool| {
            let n = if v6 { 16 } else { 4 };
            let mut a = vec![0u8; n];
            a[0] = if v6 { 0x20 } else { 10 };
            a[n - 1] = 3;
            a
        };
        let _ = v6;
        Proxies {
            v4: Some(ep(&a(false), 3128)),
            v6: Some(ep(&a(true), 3128)),
            ..Proxies::default()
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        /// A plain packet parses as the general path parses it; a packet that
        /// is not plain is left to the general path.
        #[test]
        fn parse_agrees_with_the_general_parse((p, _) in any_packet()) {
            if let Some((h, key)) = parse(&mut p.clone()) {
                let (k, t) = filter::parse_in_first(&p, 256).expect("general parse");
                prop_assert_eq!(k, p.len().min(256));
                prop_assert_eq!(t.protocol, h.protocol);
                prop_assert_eq!(t.offset, if h.v6 { 40 } else { 20 });
                prop_assert!(t.has_transport && !t.fragment);
                prop_assert_eq!(
                    filter::outbound_flow(&p, p.len()).map(|k| Packed::new(k.protocol, &k.src, &k.dst)),
                    Some(key)
                );
            }
        }

        /// Output: the same answer, bytes and table as the general path's
        /// tracked-flow plan and rewrite.
        #[test]
        fn output_agrees_with_the_general_path((p, _) in any_packet(), deferred in any::<bool>(), now in prop_oneof![1_000u64..200_000, 1_000u64..10_000_000_000]) {
            let Some((h, key)) = parse(&mut p.clone()) else { return Ok(()) };
            let l4 = L4Sum::when_deferred(deferred);
            let px = proxies(h.v6);
            let (mut ft, mut gt) = (filled(h.v6), filled(h.v6));
            let (mut fp, mut gp) = (p.clone(), p.clone());
            let fast = track_output(&mut ft, &ProxyAddrs::of(&px), &key, h.flags, now);
            let (_, t) = filter::parse_in_first(&gp, 256).unwrap();
            let general = filter::plan_output_tracked(&gp, gp.len(), &t, &mut gt, &px, now);
            match (fast, general) {
                (Tracked::To(to), Some(plan @ Plan::Translate { side: Side::Dst, to: g })) => {
                    prop_assert_eq!(to.endpoint(), g);
                    let fr = rewrite(&mut fp, Side::Dst, &to, l4).expect("plain");
                    let gr = filter::apply_parsed(&mut gp, &t, plan, l4);
                    match fr {
                        Ok(n) => prop_assert_eq!(gr, filter::Decision::Rewritten { changed: n }),
                        Err(Refused::Udp6ZeroChecksum) => prop_assert_eq!(gr, filter::Decision::Drop(filter::DropReason::Udp6ZeroChecksum)),
                        Err(e) => prop_assert!(false, "fast rewrite refused: {:?}", e),
                    }
                    prop_assert_eq!(&fp, &gp);
                }
                (Tracked::Pass, Some(Plan::Pass)) | (Tracked::Untracked, None) => {}
                (f, g) => prop_assert!(false, "fast {:?}, general {:?}", f, g),
            }
            prop_assert_eq!(flows(&ft), flows(&gt));
            prop_assert_eq!(ft.stats(), gt.stats());
        }

        /// Input: the same answer, bytes and table as the general path's.
        #[test]
        fn input_agrees_with_the_general_path((p, _) in any_packet(), now in prop_oneof![1_000u64..200_000, 1_000u64..10_000_000_000]) {
            let Some((h, key)) = parse(&mut p.clone()) else { return Ok(()) };
            let (mut ft, mut gt) = (filled(h.v6), filled(h.v6));
            let (mut fp, mut gp) = (p.clone(), p.clone());
            let fast = track_input(&mut ft, &key, h.flags, now);
            let (_, t) = filter::parse_in_first(&gp, 256).unwrap();
            let plan = filter::plan_input_parsed(&gp, &t, &mut gt, now);
            match (fast, plan) {
                (Tracked::To(to), Plan::Translate { side: Side::Src, to: g }) => {
                    prop_assert_eq!(to.endpoint(), g);
                    let fr = rewrite(&mut fp, Side::Src, &to, L4Sum::Complete).expect("plain");
                    let gr = filter::apply_parsed(&mut gp, &t, plan, L4Sum::Complete);
                    match fr {
                        Ok(n) => prop_assert_eq!(gr, filter::Decision::Rewritten { changed: n }),
                        Err(Refused::Udp6ZeroChecksum) => prop_assert_eq!(gr, filter::Decision::Drop(filter::DropReason::Udp6ZeroChecksum)),
                        Err(e) => prop_assert!(false, "fast rewrite refused: {:?}", e),
                    }
                    prop_assert_eq!(&fp, &gp);
                }
                (Tracked::Pass, Plan::Pass) => {}
                (f, g) => prop_assert!(false, "fast {:?}, general {:?}", f, g),
            }
            prop_assert_eq!(flows(&ft), flows(&gt));
        }

        /// The rewrite equals the general rewrite for any endpoint, side and
        /// checksum state (not only the tables' proxies).
        #[test]
        fn rewrite_agrees_with_translate((p, _) in any_packet(), a in any::<[u8; 16]>(), port in any::<u16>(), src in any::<bool>(), deferred in any::<bool>()) {
            let Some((h, _)) = parse(&mut p.clone()) else { return Ok(()) };
            let e = if h.v6 { ep(&a, port) } else { ep(&a[..4], port) };
            let to = PackedEndpoint::of(&e);
            let side = if src { Side::Src } else { Side::Dst };
            let l4 = L4Sum::when_deferred(deferred);
            let (mut fp, mut gp) = (p.clone(), p.clone());
            let t = ip::transport(&gp).unwrap();
            let fr = rewrite(&mut fp, side, &to, l4).expect("plain");
            let gr = translate::rewrite_with(&mut gp, &t, side, e.addr, e.port, l4);
            prop_assert_eq!(fr, gr);
            prop_assert_eq!(fp, gp);
        }
    }

    /// Runs the fast path on `p` against `t` (output, or input if `reply`);
    /// what it answered and the packet after.
    fn fast(p: &[u8], t: &mut NatTable<Vec<Entry>>, reply: bool) -> (Tracked, Vec<u8>) {
        let mut p = p.to_vec();
        let (h, key) = parse(&mut p.clone()).expect("plain");
        let r = if reply {
            track_input(t, &key, h.flags, 2_000)
        } else {
            track_output(t, &ProxyAddrs::of(&proxies(h.v6)), &key, h.flags, 2_000)
        };
        if let Tracked::To(to) = r {
            let side = if reply { Side::Src } else { Side::Dst };
            rewrite(&mut p, side, &to, L4Sum::Complete)
                .expect("plain")
                .unwrap();
        }
        (r, p)
    }

    /// `p` with a valid transport checksum.
    fn with_checksum(mut p: Vec<u8>) -> Vec<u8> {
        let t = ip::transport(&p).unwrap();
        let at = t.offset + if t.protocol == proto::TCP { 16 } else { 6 };
        p[at..at + 2].copy_from_slice(&[0, 0]);
        let c = checksum::transport(&t.src, &t.dst, t.protocol, &p[t.offset..]);
        p[at..at + 2].copy_from_slice(&c.to_be_bytes());
        p
    }

    /// Every checksum of `p` verifies, and its endpoints' addresses are `src`, `dst`.
    fn verifies(p: &[u8], src: IpAddr, dst: IpAddr) {
        let t = ip::transport(p).unwrap();
        assert_eq!((t.src, t.dst), (src, dst));
        assert!(checksum::verify_transport(
            &t.src,
            &t.dst,
            t.protocol,
            &p[t.offset..]
        ));
        if t.offset == 20 {
            assert_eq!(checksum::checksum(&p[..20]), 0, "IPv4 header checksum");
        }
    }

    #[test]
    fn a_tracked_flows_packets_are_translated_both_ways_and_verify() {
        for v6 in [false, true] {
            let n = if v6 { 16 } else { 4 };
            let addr = |i: u8| {
                let mut a = vec![0u8; n];
                a[0] = if v6 { 0x20 } else { 10 };
                a[n - 1] = i;
                a
            };
            let a = |i: u8| ep(&addr(i), 0).addr;
            let mut t = filled(v6);
            for protocol in [proto::TCP, proto::UDP] {
                let p = packet(v6, protocol, &addr(0), &addr(1), 1000, 80, tcp::ACK, 0, 30);
                let (r, out) = fast(&with_checksum(p), &mut t, false);
                assert_eq!(
                    r,
                    Tracked::To(PackedEndpoint::of(&ep(&addr(3), 3128))),
                    "v6 {v6} proto {protocol}"
                );
                verifies(&out, a(0), a(3));
                // The proxy's reply, translated back to the original destination.
                let q = packet(v6, protocol, &addr(3), &addr(0), 3128, 1000, tcp::ACK, 0, 5);
                let (r, back) = fast(&with_checksum(q), &mut t, true);
                assert_eq!(r, Tracked::To(PackedEndpoint::of(&ep(&addr(1), 80))));
                verifies(&back, a(1), a(0));
                let off = if v6 { 40 } else { 20 };
                assert_eq!(&back[off..off + 2], &80u16.to_be_bytes());
                // An untracked flow goes to the rules; an untracked reply passes;
                // the proxy's own traffic passes.
                let u = packet(v6, protocol, &addr(0), &addr(1), 1001, 80, tcp::ACK, 0, 0);
                assert_eq!(fast(&u, &mut t, false).0, Tracked::Untracked);
                assert_eq!(fast(&u, &mut t, true).0, Tracked::Pass);
                let to_proxy = packet(v6, protocol, &addr(0), &addr(3), 1000, 3128, tcp::ACK, 0, 0);
                assert_eq!(fast(&to_proxy, &mut t, false).0, Tracked::Pass);
            }
        }
    }

    #[test]
    fn proxy_addresses_are_compared_canonically() {
        let mapped: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 1];
        // An IPv6 proxy written as an IPv4-mapped address is the IPv4 proxy.
        let p = ProxyAddrs::of(&Proxies {
            v6: Some(ep(&mapped, 3128)),
            ..Proxies::default()
        });
        let k = |a: IpAddr, b: IpAddr| {
            Packed::new(proto::TCP, &Endpoint::new(a, 1000), &Endpoint::new(b, 80))
        };
        let v4 = IpAddr::V4([192, 0, 2, 1]);
        let other4 = IpAddr::V4([192, 0, 2, 2]);
        assert!(p.contains_either(&k(v4, other4)));
        assert!(p.contains_either(&k(other4, v4)));
        assert!(p.contains_either(&k(IpAddr::V6(mapped), IpAddr::V6([0; 16]))));
        assert!(!p.contains_either(&k(other4, other4)));
        assert!(!p.contains_either(&k(IpAddr::V6([0; 16]), IpAddr::V6([1; 16]))));
        assert!(!ProxyAddrs::default().contains_either(&k(v4, v4)));
        // An IPv4 proxy is also found in its IPv4-mapped form.
        let q = ProxyAddrs::of(&Proxies {
            v4: Some(ep(&[192, 0, 2, 1], 3128)),
            ..Proxies::default()
        });
        assert!(q.contains_either(&k(IpAddr::V6([0; 16]), IpAddr::V6(mapped))));
        assert!(q.contains_either(&k(other4, v4)));
    }

    #[test]
    fn options_fragments_and_extension_headers_are_not_plain() {
        let a4 = [10, 0, 0, 1];
        let p = packet(false, proto::TCP, &a4, &a4, 1, 2, tcp::ACK, 0, 10);
        assert!(parse(&mut p.clone()).is_some());
        let mut q = p.clone();
        q[0] = 0x46; // options
        assert!(parse(&mut q).is_none());
        let mut q = p.clone();
        q[6] = 0x20; // MF
        assert!(parse(&mut q).is_none());
        let mut q = p.clone();
        q[7] = 1; // offset
        assert!(parse(&mut q).is_none());
        assert!(
            parse(&mut p.clone()[..p.len() - 1]).is_none(),
            "IP length past the bytes"
        );
        let a6 = [0x20; 16];
        let p = packet(true, proto::UDP, &a6, &a6, 1, 2, 0, 1, 0);
        assert!(parse(&mut p.clone()).is_some());
        let mut q = p.clone();
        q[6] = 0; // hop-by-hop options first
        assert!(parse(&mut q).is_none());
    }
}
