//! Host tests of common::net: checked against an independent implementation (etherparse) and
//! against full recomputation, with random packets (proptest).

use crate::net::addr::{Endpoint, IpAddr};
use crate::net::checksum;
use crate::net::filter::{self, Decision, DropReason, FixedPolicy};
use crate::net::nat::{Config, Entry, NatTable};
use crate::net::translate::{self, Refused, Side};
use crate::net::wire::ip;
use crate::net::wire::{Error, icmp, ipv4, ipv6, proto, tcp, udp};
use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};
use proptest::prelude::*;

mod fuzz_seeds;
mod icmp_errors;
mod nat_lifecycle;

// ------------------------------------------------------------ generators

#[derive(Debug, Clone)]
struct Spec {
    v6: bool,
    protocol: u8,
    src: [u8; 16],
    dst: [u8; 16],
    sport: u16,
    dport: u16,
    flags: u8,
    payload: Vec<u8>,
    /// IPv4 options (multiple of 4 bytes, ≤ 40) / IPv6 extension headers to splice in.
    v4_options: Vec<u8>,
    v6_exts: Vec<u8>,
    /// IPv4 UDP sent without checksum.
    udp_no_csum: bool,
}

fn v4(a: &[u8; 16]) -> [u8; 4] {
    [a[0], a[1], a[2], a[3]]
}

/// Builds the packet with etherparse, then splices options/extension headers.
fn build(s: &Spec) -> Vec<u8> {
    let b = if s.v6 {
        PacketBuilder::ipv6(s.src, s.dst, 64)
    } else {
        PacketBuilder::ipv4(v4(&s.src), v4(&s.dst), 64)
    };
    let mut out = Vec::new();
    match s.protocol {
        proto::TCP => {
            let mut t = b.tcp(s.sport, s.dport, 1000, 65535);
            if s.flags & tcp::SYN != 0 {
                t = t.syn();
            }
            if s.flags & tcp::FIN != 0 {
                t = t.fin();
            }
            if s.flags & tcp::RST != 0 {
                t = t.rst();
            }
            if s.flags & tcp::ACK != 0 {
                t = t.ack(77);
            }
            t.write(&mut out, &s.payload).unwrap();
        }
        proto::UDP => b.udp(s.sport, s.dport).write(&mut out, &s.payload).unwrap(),
        _ if s.v6 => b
            .icmpv6_echo_request(s.sport, s.dport)
            .write(&mut out, &s.payload)
            .unwrap(),
        _ => b
            .icmpv4_echo_request(s.sport, s.dport)
            .write(&mut out, &s.payload)
            .unwrap(),
    }
    if !s.v6 && s.protocol == proto::UDP && s.udp_no_csum {
        out[26] = 0;
        out[27] = 0;
    }
    if !s.v6 && !s.v4_options.is_empty() {
        let ihl = 5 + s.v4_options.len() / 4;
        out.splice(20..20, s.v4_options.iter().copied());
        out[0] = 0x40 | ihl as u8;
        let total = out.len() as u16;
        out[2..4].copy_from_slice(&total.to_be_bytes());
        out[10] = 0;
        out[11] = 0;
        let c = checksum::checksum(&out[..ihl * 4]);
        out[10..12].copy_from_slice(&c.to_be_bytes());
    }
    if s.v6 && !s.v6_exts.is_empty() {
        // s.v6_exts is a chain whose first header is given by its own first byte
        // position: see ext_chain(); its last next-header byte is patched here.
        let first = s.v6_exts[s.v6_exts.len() - 1];
        let mut chain = s.v6_exts[..s.v6_exts.len() - 1].to_vec();
        patch_last_next(&mut chain, out[6]);
        out[6] = first;
        out.splice(40..40, chain.iter().copied());
        let plen = (out.len() - 40) as u16;
        out[4..6].copy_from_slice(&plen.to_be_bytes());
    }
    out
}

/// Extension headers as (type, body) in canonical order; encoded as the chain
/// bytes followed by one byte: the first header's type.
fn ext_chain(types: &[(u8, u8)]) -> Vec<u8> {
    let mut chain = Vec::new();
    let mut starts = Vec::new();
    for (i, &(t, units)) in types.iter().enumerate() {
        starts.push(chain.len());
        let next = types.get(i + 1).map(|x| x.0).unwrap_or(0xff);
        match t {
            proto::IPV6_FRAG => chain.extend_from_slice(&[next, 0, 0, 0, 0, 0, 0x12, 0x34]),
            proto::AH => {
                // AH length is in 4-byte units minus 2; keep it a multiple of 8 bytes.
                let len = 12 + 8 * units as usize; // ≥ 12 (ICV may be empty + 4 pad)
                let mut h = vec![0u8; len + 4];
                h[0] = next;
                h[1] = ((len + 4) / 4 - 2) as u8;
                chain.extend_from_slice(&h);
            }
            _ => {
                let len = 8 * (units as usize + 1);
                let mut h = vec![0u8; len];
                h[0] = next;
                h[1] = units;
                if t != proto::IPV6_ROUTE {
                    // PadN option filling the rest.
                    h[2] = 1;
                    h[3] = (len - 4) as u8;
                } else {
                    h[2] = 0; // routing type 0 ... segments left 0
                }
                chain.extend_from_slice(&h);
            }
        }
    }
    chain.push(types.first().map(|x| x.0).unwrap_or(0));
    chain
}

fn patch_last_next(chain: &mut [u8], next: u8) {
    // Walk the chain (our encoding) to the last header and set its next byte.
    let mut off = 0;
    let mut last = 0;
    let mut t = None;
    while off < chain.len() {
        last = off;
        let len = if chain[off] == 0xfe { 8 } else { 0 };
        let _ = len;
        let nxt = chain[off];
        let l = match t {
            Some(proto::IPV6_FRAG) => 8,
            Some(proto::AH) => (chain[off + 1] as usize + 2) * 4,
            _ => (chain[off + 1] as usize + 1) * 8,
        };
        t = Some(nxt);
        off += l;
    }
    chain[last] = next;
}

fn addr_strategy() -> impl Strategy<Value = [u8; 16]> {
    any::<[u8; 16]>()
}

fn spec_strategy() -> impl Strategy<Value = Spec> {
    let ext_types = proptest::sample::subsequence(
        vec![
            proto::HOPOPT,
            proto::IPV6_OPTS,
            proto::IPV6_ROUTE,
            proto::IPV6_FRAG,
            proto::AH,
        ],
        0..=5,
    );
    (
        any::<bool>(),
        prop_oneof![Just(proto::TCP), Just(proto::UDP), Just(proto::ICMP)],
        addr_strategy(),
        addr_strategy(),
        any::<u16>(),
        any::<u16>(),
        any::<u8>(),
        proptest::collection::vec(any::<u8>(), 0..600),
        (0usize..=10).prop_flat_map(|n| proptest::collection::vec(any::<u8>(), n * 4)),
        (ext_types, proptest::collection::vec(0u8..4, 5)),
        any::<bool>(),
    )
        .prop_map(
            |(
                v6,
                protocol,
                src,
                dst,
                sport,
                dport,
                flags,
                payload,
                mut opts,
                (types, units),
                udp_no_csum,
            )| {
                // Options: NOPs with an End marker are always well formed; random
                // bytes are fine too for our parser but etherparse checks none.
                if !opts.is_empty() {
                    let n = opts.len();
                    opts.iter_mut().for_each(|b| *b = 1);
                    opts[n - 1] = 0;
                }
                let typed: Vec<(u8, u8)> = types.iter().zip(units).map(|(&t, u)| (t, u)).collect();
                let protocol = if protocol == proto::ICMP && v6 {
                    proto::ICMPV6
                } else {
                    protocol
                };
                Spec {
                    v6,
                    protocol,
                    src,
                    dst,
                    sport,
                    dport,
                    flags: flags & (tcp::SYN | tcp::FIN | tcp::RST | tcp::ACK),
                    payload,
                    v4_options: if v6 { vec![] } else { opts },
                    v6_exts: if v6 && !typed.is_empty() {
                        ext_chain(&typed)
                    } else {
                        vec![]
                    },
                    udp_no_csum,
                }
            },
        )
}

// ------------------------------------------------------------ independent checks

/// What a receiving stack checks, done by etherparse: the packet parses, the
/// IPv4 header checksum and the transport checksum (pseudo-header) are valid.
fn etherparse_verify(p: &[u8]) -> Result<(), String> {
    let s = SlicedPacket::from_ip(p).map_err(|e| format!("etherparse: {e}"))?;
    let net = s.net.as_ref().ok_or("no IP layer")?;
    let (src, dst): (Vec<u8>, Vec<u8>) = if let Some(v4) = net.ipv4_ref() {
        let h = v4.header().to_header();
        if h.calc_header_checksum() != h.header_checksum {
            return Err("bad IPv4 header checksum".into());
        }
        (h.source.to_vec(), h.destination.to_vec())
    } else if let Some(v6) = net.ipv6_ref() {
        (
            v6.header().source().to_vec(),
            v6.header().destination().to_vec(),
        )
    } else {
        return Err("not IP".into());
    };
    let v6 = src.len() == 16;
    match &s.transport {
        Some(TransportSlice::Tcp(t)) => {
            let c = if v6 {
                t.calc_checksum_ipv6(src.try_into().unwrap(), dst.try_into().unwrap())
                    .unwrap()
            } else {
                t.calc_checksum_ipv4(src.try_into().unwrap(), dst.try_into().unwrap())
                    .unwrap()
            };
            if c != t.checksum() {
                return Err(format!(
                    "bad TCP checksum {:#06x}, expected {c:#06x}",
                    t.checksum()
                ));
            }
        }
        Some(TransportSlice::Udp(u)) => {
            let h = u.to_header();
            if h.checksum != 0 || v6 {
                let c = if v6 {
                    h.calc_checksum_ipv6_raw(
                        src.try_into().unwrap(),
                        dst.try_into().unwrap(),
                        u.payload(),
                    )
                    .unwrap()
                } else {
                    h.calc_checksum_ipv4_raw(
                        src.try_into().unwrap(),
                        dst.try_into().unwrap(),
                        u.payload(),
                    )
                    .unwrap()
                };
                if c != h.checksum {
                    return Err(format!(
                        "bad UDP checksum {:#06x}, expected {c:#06x}",
                        h.checksum
                    ));
                }
            }
        }
        Some(TransportSlice::Icmpv6(i)) => {
            let c = i
                .header()
                .icmp_type
                .calc_checksum(
                    src.try_into().unwrap(),
                    dst.try_into().unwrap(),
                    i.payload(),
                )
                .unwrap();
            if c != i.checksum() {
                return Err("bad ICMPv6 checksum".into());
            }
        }
        _ => {}
    }
    Ok(())
}

/// Our own full recomputation: IPv4 header checksum and transport checksum.
fn full_checksums(p: &[u8]) -> (Option<u16>, Option<u16>) {
    let t = ip::transport(p).unwrap();
    let iph = if p[0] >> 4 == 4 {
        let mut h = p[..t.offset].to_vec();
        h[10] = 0;
        h[11] = 0;
        Some(checksum::checksum(&h))
    } else {
        None
    };
    let seg = &p[t.offset..t.offset + t.len];
    let co = match t.protocol {
        proto::TCP => Some(tcp::CHECKSUM_OFFSET),
        proto::UDP => Some(udp::CHECKSUM_OFFSET),
        proto::ICMPV6 => Some(icmp::CHECKSUM_OFFSET),
        _ => None,
    };
    let l4 = co.filter(|_| t.has_transport).map(|co| {
        let mut s = seg.to_vec();
        if t.protocol == proto::UDP && s[6] == 0 && s[7] == 0 && matches!(t.src, IpAddr::V4(_)) {
            return 0; // no checksum stays none
        }
        s[co] = 0;
        s[co + 1] = 0;
        checksum::transport(&t.src, &t.dst, t.protocol, &s)
    });
    (iph, l4)
}

fn stored_checksums(p: &[u8]) -> (Option<u16>, Option<u16>) {
    let t = ip::transport(p).unwrap();
    let iph = (p[0] >> 4 == 4).then(|| u16::from_be_bytes([p[10], p[11]]));
    let co = match t.protocol {
        proto::TCP => Some(tcp::CHECKSUM_OFFSET),
        proto::UDP => Some(udp::CHECKSUM_OFFSET),
        proto::ICMPV6 => Some(icmp::CHECKSUM_OFFSET),
        _ => None,
    };
    let l4 = co
        .filter(|_| t.has_transport)
        .map(|co| u16::from_be_bytes([p[t.offset + co], p[t.offset + co + 1]]));
    (iph, l4)
}

// ------------------------------------------------------------ properties

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Packets built by etherparse parse to the same fields with our views, and
    /// our checksum verification agrees.
    #[test]
    fn views_agree_with_etherparse(s in spec_strategy()) {
        let p = build(&s);
        prop_assert_eq!(etherparse_verify(&p), Ok(()));
        let t = ip::transport(&p).unwrap();
        let e = SlicedPacket::from_ip(&p).unwrap();
        let ipp = e.net.as_ref().unwrap().ip_payload_ref().unwrap();
        prop_assert_eq!(t.protocol, ipp.ip_number.0);
        prop_assert_eq!(t.offset, ipp.payload.as_ptr() as usize - p.as_ptr() as usize);
        prop_assert_eq!(t.len, ipp.payload.len());
        prop_assert!(!ipp.fragmented || t.fragment);
        if s.v6 {
            // The spliced chain is really there: our walk crossed every header.
            let crossed = ipv6::Packet::new_checked(&p[..]).unwrap().walk().unwrap().ext_headers;
            prop_assert_eq!(crossed > 0, !s.v6_exts.is_empty());
        }
        if s.v6 {
            let v = ipv6::Packet::new_checked(&p[..]).unwrap();
            prop_assert_eq!(IpAddr::V6(v.src_addr()), t.src);
            prop_assert_eq!(v.dst_addr(), s.dst);
            prop_assert_eq!(v.hop_limit(), 64);
        } else {
            let v = ipv4::Packet::new_checked(&p[..]).unwrap();
            prop_assert!(v.verify_checksum());
            prop_assert_eq!(v.src_addr(), v4(&s.src));
            prop_assert_eq!(v.dst_addr(), v4(&s.dst));
            prop_assert_eq!(v.options().len(), s.v4_options.len());
            prop_assert_eq!(usize::from(v.total_len()), p.len());
            prop_assert!(!v.is_fragment());
        }
        let seg = &p[t.offset..];
        match (s.protocol, &e.transport) {
            (proto::TCP, Some(TransportSlice::Tcp(et))) => {
                let v = tcp::Packet::new_checked(seg).unwrap();
                prop_assert_eq!((v.src_port(), v.dst_port()), (et.source_port(), et.destination_port()));
                prop_assert_eq!((v.seq_number(), v.ack_number()), (et.sequence_number(), et.acknowledgment_number()));
                prop_assert_eq!(v.header_len(), et.header_len());
                prop_assert_eq!(v.payload(), et.payload());
                prop_assert_eq!(v.checksum(), et.checksum());
                prop_assert!(checksum::verify_transport(&t.src, &t.dst, proto::TCP, seg));
            }
            (proto::UDP, Some(TransportSlice::Udp(eu))) => {
                let v = udp::Packet::new_checked(seg).unwrap();
                prop_assert_eq!((v.src_port(), v.dst_port(), v.len()), (eu.source_port(), eu.destination_port(), eu.length()));
                prop_assert_eq!(v.payload(), eu.payload());
                if v.checksum() != 0 {
                    prop_assert!(checksum::verify_transport(&t.src, &t.dst, proto::UDP, seg));
                }
            }
            (proto::ICMP, Some(TransportSlice::Icmpv4(ei))) => {
                let v = icmp::Packet::new_checked(seg).unwrap();
                prop_assert_eq!((v.msg_type(), v.code(), v.checksum()), (ei.type_u8(), ei.code_u8(), ei.checksum()));
                prop_assert_eq!(v.echo_ident(), s.sport);
                prop_assert_eq!(v.echo_seq(), s.dport);
                prop_assert_eq!(checksum::fold(checksum::sum(seg, 0)), 0xffff);
            }
            (proto::ICMPV6, Some(TransportSlice::Icmpv6(ei))) => {
                let v = icmp::Packet::new_checked(seg).unwrap();
                prop_assert_eq!((v.msg_type(), v.checksum()), (ei.type_u8(), ei.checksum()));
                prop_assert!(checksum::verify_transport(&t.src, &t.dst, proto::ICMPV6, seg));
            }
            (_, None) => prop_assert!(t.fragment),
            (p, other) => prop_assert!(false, "protocol {} but etherparse saw {:?}", p, other.is_some()),
        }
    }

    /// A TCP/UDP checksum the stack deferred (its field holding the
    /// pseudo-header sum) is rewritten by adjusting that sum only; the
    /// interface's completion (summing the segment from the field, as the
    /// emulator and xnu do) then gives a packet whose checksums verify, with
    /// no byte of the payload read by the rewrite.
    #[test]
    fn a_deferred_checksum_stays_deferred_and_completes_valid(
        s in spec_strategy(),
        side_src in any::<bool>(),
        new_addr in addr_strategy(),
        new_port in any::<u16>(),
    ) {
        let mut p = build(&s);
        let t = ip::transport(&p).unwrap();
        if !t.has_transport || !matches!(t.protocol, proto::TCP | proto::UDP) {
            return Ok(());
        }
        let co = t.offset + if t.protocol == proto::TCP { tcp::CHECKSUM_OFFSET } else { udp::CHECKSUM_OFFSET };
        let seed = |t: &ip::Transport| {
            checksum::fold(checksum::pseudo_header(&t.src, &t.dst, t.protocol, t.len))
        };
        p[co..co + 2].copy_from_slice(&seed(&t).to_be_bytes());
        let addr = if s.v6 { IpAddr::V6(new_addr) } else { IpAddr::V4(v4(&new_addr)) };
        let side = if side_src { Side::Src } else { Side::Dst };
        // Only the headers, as the kext holds them.
        let n = translate::prefix_len(&t);
        let mut pre = p[..n].to_vec();
        let r = translate::rewrite_with(&mut pre, &t, side, addr, new_port, translate::L4Sum::Deferred);
        prop_assert_eq!(r, Ok(n));
        p[..n].copy_from_slice(&pre);
        let t2 = ip::transport(&p).unwrap();
        // Still a pseudo-header seed, of the new addresses (0 and 0xFFFF are
        // the same ones'-complement number).
        let got = u16::from_be_bytes([p[co], p[co + 1]]);
        prop_assert_eq!(got % 0xffff, seed(&t2) % 0xffff);
        // The interface completes it.
        let end = t2.offset + t2.len;
        let c = !checksum::fold(checksum::sum(&p[t2.offset..end], 0));
        let c = if c == 0 && t2.protocol == proto::UDP { 0xffff } else { c };
        p[co..co + 2].copy_from_slice(&c.to_be_bytes());
        prop_assert!(checksum::verify_transport(&t2.src, &t2.dst, t2.protocol, &p[t2.offset..end]));
        prop_assert_eq!(etherparse_verify(&p), Ok(()));
    }

    /// The IP filter's first look at a 64-byte head of a packet either asks
    /// for more, or gives exactly what parsing the full 256-byte prefix gives.
    #[test]
    fn a_short_head_decides_as_the_full_prefix_or_asks_for_more(s in spec_strategy()) {
        let p = build(&s);
        let head = &p[..p.len().min(64)];
        let full = &p[..p.len().min(256)];
        match filter::first_look(head, p.len()) {
            None => prop_assert!(head.len() < p.len()),
            Some(r) => prop_assert_eq!(r, filter::parse_output(full, p.len())),
        }
    }

    /// The IP filter's in-place path (`filter::parse_in_first` on the first
    /// mbuf, the packet's length not asked) parses every packet it accepts
    /// exactly as the copying path (64-byte head, then the 256-byte prefix,
    /// with the packet's real length) does, whatever the split of the packet
    /// into mbufs and whatever follows it (trailing bytes).
    #[test]
    fn the_first_mbuf_parses_as_the_copied_prefix(
        s in spec_strategy(),
        split in any::<proptest::sample::Index>(),
        trailing in proptest::collection::vec(any::<u8>(), 0..40),
        hostile in proptest::option::of((any::<proptest::sample::Index>(), any::<u8>())),
    ) {
        let mut p = build(&s);
        if let Some((at, b)) = hostile {
            let i = at.index(p.len());
            p[i] = b;
        }
        p.extend_from_slice(&trailing);
        let first = &p[..split.index(p.len() + 1)];
        let Some((n, t)) = filter::parse_in_first(first, 256) else {
            return Ok(());
        };
        prop_assert_eq!(n, first.len().min(256));
        prop_assert!(matches!(t.protocol, proto::TCP | proto::UDP) && t.has_transport);
        let head = &p[..p.len().min(64)];
        let full = &p[..p.len().min(256)];
        let copied = match filter::first_look(head, p.len()) {
            Some(r) => r,
            None => filter::parse_output(full, p.len()),
        };
        prop_assert_eq!(copied, Ok(t));
        // The input path's parse of the full prefix agrees too.
        prop_assert_eq!(ip::transport_in(full, p.len()), Ok(t));
    }

    /// Rewriting either endpoint with incremental checksums gives exactly the
    /// checksums a full recomputation gives, and etherparse accepts the result.
    #[test]
    fn incremental_equals_full_recomputation(
        s in spec_strategy(),
        side_src in any::<bool>(),
        new_addr in addr_strategy(),
        new_port in any::<u16>(),
        prefix_only in any::<bool>(),
    ) {
        let mut p = build(&s);
        let t = ip::transport(&p).unwrap();
        let addr = if s.v6 { IpAddr::V6(new_addr) } else { IpAddr::V4(v4(&new_addr)) };
        let side = if side_src { Side::Src } else { Side::Dst };
        let r = if prefix_only {
            // As the kext does: rewrite a copy of the headers, copy them back.
            let n = translate::prefix_len(&t);
            let mut pre = p[..n].to_vec();
            let t2 = ip::transport_in(&pre, p.len()).unwrap();
            prop_assert_eq!(t2, t);
            let r = translate::rewrite(&mut pre, &t2, side, addr, new_port);
            if let Ok(k) = r {
                p[..k].copy_from_slice(&pre[..k]);
            }
            r
        } else {
            translate::rewrite(&mut p, &t, side, addr, new_port)
        };
        prop_assert_eq!(r.map(|_| ()), Ok(()));
        prop_assert_eq!(stored_checksums(&p), full_checksums(&p));
        prop_assert_eq!(etherparse_verify(&p), Ok(()));
        let t2 = ip::transport(&p).unwrap();
        let (a, port_at) = if side_src { (t2.src, t2.offset) } else { (t2.dst, t2.offset + 2) };
        prop_assert_eq!(a, addr);
        if matches!(s.protocol, proto::TCP | proto::UDP) {
            prop_assert_eq!(u16::from_be_bytes([p[port_at], p[port_at + 1]]), new_port);
        }
    }

    /// Random bytes never make a view, the transport walk or a rewrite panic or
    /// read out of bounds; whatever parses is internally consistent.
    #[test]
    fn hostile_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..200), ver in prop_oneof![Just(0x45u8), Just(0x60), Just(0x4f), any::<u8>()]) {
        let mut b = b;
        if let Some(x) = b.first_mut() { *x = ver; }
        exercise(&b);
    }

    /// Packets with one byte corrupted or truncated at a random point.
    #[test]
    fn corrupted_packets_never_panic(s in spec_strategy(), at in any::<prop::sample::Index>(), val in any::<u8>(), cut in any::<prop::sample::Index>()) {
        let mut p = build(&s);
        let i = at.index(p.len());
        p[i] = val;
        exercise(&p);
        p.truncate(cut.index(p.len()));
        exercise(&p);
    }

    /// Arbitrary (hostile) IPv6 extension-header chains: bounded walk, no panic.
    #[test]
    fn long_extension_chains_are_bounded(n in 0usize..20, units in 0u8..3, tail in proptest::collection::vec(any::<u8>(), 0..64)) {
        let mut p = vec![0u8; 40];
        p[0] = 0x60;
        p[6] = if n == 0 { proto::TCP } else { proto::IPV6_OPTS };
        for i in 0..n {
            let mut h = vec![0u8; 8 * (units as usize + 1)];
            h[0] = if i + 1 == n { proto::TCP } else { proto::IPV6_OPTS };
            h[1] = units;
            p.extend_from_slice(&h);
        }
        p.extend_from_slice(&tail);
        let plen = (p.len() - 40) as u16;
        p[4..6].copy_from_slice(&plen.to_be_bytes());
        let r = ipv6::Packet::new_checked(&p[..]).unwrap().walk();
        if n > ipv6::MAX_EXT_HEADERS {
            prop_assert_eq!(r, Err(Error::TooManyExtHeaders));
        } else {
            let w = r.unwrap();
            prop_assert_eq!(w.ext_headers, n);
            prop_assert_eq!(w.protocol, proto::TCP);
            prop_assert_eq!(w.offset, 40 + n * 8 * (units as usize + 1));
        }
        exercise(&p);
    }
}

fn exercise(b: &[u8]) {
    // The fuzz target's body: the filter's packet path on a prefix.
    let mut table = nat(16, Config::DEFAULT, 1);
    for cut in [b.len(), b.len() / 2] {
        for output in [true, false, true] {
            let mut pre = b[..cut].to_vec();
            let d = if output {
                filter::output(&mut pre, b.len(), &mut table, &FixedPolicy::EXAMPLE, 0)
            } else {
                filter::input(&mut pre, b.len(), &mut table, 0)
            };
            if let Decision::Rewritten { changed } = d {
                assert!(changed <= pre.len());
                assert!(ip::transport_in(&pre, b.len()).is_ok());
            }
        }
    }
    let v = ipv4::Packet::new_unchecked(b);
    let _ = (
        v.version(),
        v.header_len(),
        v.total_len(),
        v.ident(),
        v.frag_offset(),
        v.ttl(),
        v.protocol(),
    );
    let _ = (
        v.src_addr(),
        v.dst_addr(),
        v.options(),
        v.payload(),
        v.verify_checksum(),
        v.header(),
    );
    let _ = ipv4::Packet::new_checked(b);
    let v = ipv6::Packet::new_unchecked(b);
    let _ = (
        v.payload_len(),
        v.next_header(),
        v.src_addr(),
        v.dst_addr(),
        v.payload(),
        v.walk(),
        v.walk_within(1000),
    );
    let _ = ipv6::Packet::new_checked(b);
    let t = tcp::Packet::new_unchecked(b);
    let _ = (
        t.src_port(),
        t.dst_port(),
        t.seq_number(),
        t.header_len(),
        t.flags(),
        t.payload(),
        t.window(),
    );
    let _ = tcp::Packet::new_checked(b);
    let u = udp::Packet::new_unchecked(b);
    let _ = (u.len(), u.payload(), u.checksum());
    let _ = udp::Packet::new_checked(b);
    let i = icmp::Packet::new_unchecked(b);
    let _ = (i.msg_type(), i.code(), i.echo_ident(), i.payload());
    for len in [b.len(), b.len().saturating_add(100)] {
        if let Ok(t) = ip::transport_in(b, len) {
            assert!(t.offset <= len, "{t:?}");
            let mut c = b.to_vec();
            for side in [Side::Src, Side::Dst] {
                let a = if matches!(t.src, IpAddr::V4(_)) {
                    IpAddr::V4([1, 2, 3, 4])
                } else {
                    IpAddr::V6([7; 16])
                };
                match translate::rewrite(&mut c, &t, side, a, 9) {
                    Ok(n) => assert!(n <= c.len()),
                    Err(Refused::Wire(_) | Refused::Udp6ZeroChecksum) => {}
                    Err(e) => panic!("{e:?}"),
                }
            }
        }
    }
}

// ------------------------------------------------------------ specific cases

#[test]
fn ipv4_checked_constructor_rejects_bad_headers() {
    let mut p = build(&Spec {
        v6: false,
        protocol: proto::TCP,
        src: [10; 16],
        dst: [20; 16],
        sport: 1,
        dport: 2,
        flags: 0,
        payload: b"abc".to_vec(),
        v4_options: vec![],
        v6_exts: vec![],
        udp_no_csum: false,
    });
    assert!(ipv4::Packet::new_checked(&p[..]).is_ok());
    assert_eq!(
        ipv4::Packet::new_checked(&p[..19]).err(),
        Some(Error::Truncated)
    );
    assert_eq!(
        ipv4::Packet::new_checked(&p[..30]).err(),
        Some(Error::Truncated),
        "total_len beyond the buffer"
    );
    p[0] = 0x44; // IHL 4
    assert_eq!(
        ipv4::Packet::new_checked(&p[..]).err(),
        Some(Error::Malformed)
    );
    p[0] = 0x4f; // IHL 15: 60 bytes > total
    assert_eq!(
        ipv4::Packet::new_checked(&p[..]).err(),
        Some(Error::Malformed)
    );
    p[0] = 0x55;
    assert_eq!(
        ipv4::Packet::new_checked(&p[..]).err(),
        Some(Error::Malformed)
    );
}

#[test]
fn ipv4_fragments_are_recognised() {
    let mut p = build(&Spec {
        v6: false,
        protocol: proto::UDP,
        src: [10; 16],
        dst: [20; 16],
        sport: 1,
        dport: 2,
        flags: 0,
        payload: vec![0; 32],
        v4_options: vec![],
        v6_exts: vec![],
        udp_no_csum: false,
    });
    p[6] = 0x20; // MF, offset 0: first fragment
    let t = ip::transport(&p).unwrap();
    assert!(t.fragment && t.has_transport);
    p[6] = 0x00;
    p[7] = 0x03; // offset 24, no MF: last fragment
    ipv4::Packet::new_unchecked(&mut p[..]).fill_checksum();
    let t = ip::transport(&p).unwrap();
    assert!(t.fragment && !t.has_transport);
    assert_eq!(ipv4::Packet::new_checked(&p[..]).unwrap().frag_offset(), 24);
    // A non-first fragment gets only its address rewritten; the IP checksum stays right.
    let mut c = p.clone();
    let n = translate::rewrite(&mut c, &t, Side::Dst, IpAddr::V4([9, 9, 9, 9]), 5).unwrap();
    assert_eq!(n, 20);
    assert_eq!(c[28..], p[28..], "payload (no transport header) untouched");
    assert!(ipv4::Packet::new_checked(&c[..]).unwrap().verify_checksum());
}

#[test]
fn ipv6_udp_zero_checksum_is_refused_and_ipv4_zero_kept() {
    let mut s = Spec {
        v6: true,
        protocol: proto::UDP,
        src: [1; 16],
        dst: [2; 16],
        sport: 53,
        dport: 53,
        flags: 0,
        payload: vec![1, 2, 3],
        v4_options: vec![],
        v6_exts: vec![],
        udp_no_csum: false,
    };
    let mut p = build(&s);
    p[46] = 0;
    p[47] = 0;
    let t = ip::transport(&p).unwrap();
    let before = p.clone();
    assert_eq!(
        translate::rewrite(&mut p, &t, Side::Dst, IpAddr::V6([3; 16]), 1),
        Err(Refused::Udp6ZeroChecksum)
    );
    assert_eq!(p, before, "a refused packet is not modified");
    s.v6 = false;
    s.udp_no_csum = true;
    let mut p = build(&s);
    let t = ip::transport(&p).unwrap();
    translate::rewrite(&mut p, &t, Side::Dst, IpAddr::V4([3; 4]), 1).unwrap();
    assert_eq!(
        &p[26..28],
        &[0, 0],
        "IPv4 UDP without checksum stays without"
    );
    assert_eq!(etherparse_verify(&p), Ok(()));
}

// ------------------------------------------------------------ NAT table

/// A table of `n` flows (a power of two) in a `Vec`.
fn nat(n: usize, cfg: Config, seed: u64) -> NatTable<Vec<Entry>> {
    NatTable::new(vec![Entry::EMPTY; n], cfg, seed).unwrap()
}

#[test]
fn filter_redirects_a_tcp_flow_and_reverse_translates_replies() {
    let mut table = nat(16, Config::DEFAULT, 3);
    let pol = FixedPolicy::EXAMPLE;
    let client = [10, 0, 0, 1];
    let origin = [203, 0, 113, 10];
    let mut s = Spec {
        v6: false,
        protocol: proto::TCP,
        src: [0; 16],
        dst: [0; 16],
        sport: 40000,
        dport: 80,
        flags: tcp::ACK,
        payload: b"GET /".to_vec(),
        v4_options: vec![],
        v6_exts: vec![],
        udp_no_csum: false,
    };
    s.src[..4].copy_from_slice(&client);
    s.dst[..4].copy_from_slice(&origin);
    // Mid-stream TCP of an untracked flow is dropped (never leaked to the
    // origin); a SYN opens the flow.
    let mut p = build(&s);
    assert_eq!(
        filter::output(&mut p, 65535, &mut table, &pol, 0),
        Decision::Drop(DropReason::Untracked)
    );
    s.flags = tcp::SYN;
    let mut p = build(&s);
    let n = p.len();
    assert_eq!(
        filter::output(&mut p, n, &mut table, &pol, 0),
        Decision::Rewritten { changed: 38 }
    );
    assert_eq!(&p[16..20], &[192, 0, 2, 1]);
    assert_eq!(&p[22..24], &3128u16.to_be_bytes());
    assert_eq!(etherparse_verify(&p), Ok(()));
    // The proxy's SYN-ACK comes back as from the origin.
    let mut r = build(&Spec {
        src: {
            let mut a = [0; 16];
            a[..4].copy_from_slice(&[192, 0, 2, 1]);
            a
        },
        dst: s.src,
        sport: 3128,
        dport: 40000,
        flags: tcp::SYN | tcp::ACK,
        payload: vec![],
        ..s.clone()
    });
    let n = r.len();
    assert_eq!(
        filter::input(&mut r, n, &mut table, 1),
        Decision::Rewritten { changed: 38 }
    );
    assert_eq!(&r[12..16], &origin);
    assert_eq!(&r[20..22], &80u16.to_be_bytes());
    assert_eq!(etherparse_verify(&r), Ok(()));
    // Packets to the proxy itself are never redirected.
    let mut d = build(&Spec {
        dst: r[12..16]
            .iter()
            .chain([0u8; 12].iter())
            .copied()
            .collect::<Vec<_>>()
            .try_into()
            .unwrap(),
        ..s.clone()
    });
    d[16..20].copy_from_slice(&[192, 0, 2, 1]);
    ipv4::Packet::new_unchecked(&mut d[..]).fill_checksum();
    let n = d.len();
    assert_eq!(
        filter::output(&mut d, n, &mut table, &pol, 0),
        Decision::Pass
    );
}

#[test]
fn filter_drops_what_it_cannot_see_through() {
    let mut table = nat(16, Config::DEFAULT, 3);
    // 9 extension headers: dropped on output, passed on input.
    let mut p = vec![0u8; 40];
    p[0] = 0x60;
    p[6] = proto::IPV6_OPTS;
    for i in 0..9 {
        p.extend_from_slice(&[
            if i == 8 { proto::TCP } else { proto::IPV6_OPTS },
            0,
            1,
            4,
            0,
            0,
            0,
            0,
        ]);
    }
    p.extend_from_slice(&[0u8; 20]);
    let plen = (p.len() - 40) as u16;
    p[4..6].copy_from_slice(&plen.to_be_bytes());
    let n = p.len();
    assert_eq!(
        filter::output(&mut p.clone(), n, &mut table, &FixedPolicy::EXAMPLE, 0),
        Decision::Drop(DropReason::Unparseable)
    );
    assert_eq!(
        filter::input(&mut p.clone(), n, &mut table, 0),
        Decision::Pass
    );
    // Headers beyond the prefix window are dropped on output too.
    assert_eq!(
        filter::output(
            &mut p[..60].to_vec(),
            n,
            &mut table,
            &FixedPolicy::EXAMPLE,
            0
        ),
        Decision::Drop(DropReason::Unparseable)
    );
    // A packet shorter than its own length fields passes (the stack's problem).
    assert_eq!(
        filter::output(
            &mut p[..60].to_vec(),
            60,
            &mut table,
            &FixedPolicy::EXAMPLE,
            0
        ),
        Decision::Pass
    );
}

#[test]
fn the_shared_rule_engine_drives_the_ip_filter() {
    use crate::net::addr::{Endpoint as Ep, IpAddr};
    use crate::net::filter::RulesPolicy;
    use crate::net::policy::Proxies;
    use crate::net::rules::{Action, Cidr, IndexEntry, Rule, RuleSet};
    let rules = vec![
        Rule {
            dst: Cidr::new(IpAddr::V4([203, 0, 113, 0]), 24),
            port_lo: 80,
            port_hi: 80,
            action: Action::Proxy { proxy_v2: false },
            ..Rule::default()
        },
        Rule {
            dst: Cidr::new(
                IpAddr::V6([0x20, 1, 0xd, 0xb8, 2, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
                48,
            ),
            action: Action::Proxy { proxy_v2: false },
            ..Rule::default()
        },
    ];
    let rs = RuleSet::new(
        rules,
        vec![IndexEntry::default(); crate::net::rules::index_len(2)],
        Action::Direct,
    )
    .unwrap();
    let proxies = Proxies {
        v4: Some(Ep::new(IpAddr::V4([192, 0, 2, 1]), 3128)),
        ..Proxies::default()
    };
    let pol = RulesPolicy {
        enabled: true,
        rules: &rs,
        proxies: &proxies,
    };
    let mut table = nat(16, Config::DEFAULT, 3);
    let mut s = Spec {
        v6: false,
        protocol: proto::TCP,
        src: [10; 16],
        dst: [0; 16],
        sport: 40000,
        dport: 80,
        flags: tcp::SYN,
        payload: vec![],
        v4_options: vec![],
        v6_exts: vec![],
        udp_no_csum: false,
    };
    s.dst[..4].copy_from_slice(&[203, 0, 113, 10]);
    let mut p = build(&s);
    let n = p.len();
    assert!(matches!(
        filter::output(&mut p, n, &mut table, &pol, 0),
        Decision::Rewritten { .. }
    ));
    assert_eq!(&p[16..20], &[192, 0, 2, 1]);
    // Port 443 is not in the rule: left alone.
    s.dport = 443;
    let mut p = build(&s);
    assert_eq!(
        filter::output(&mut p, n, &mut table, &pol, 0),
        Decision::Pass
    );
    // IPv6 rule matches but there is no IPv6 proxy: left alone (no mapped translation at the IP layer).
    s.v6 = true;
    s.dst = [0x20, 1, 0xd, 0xb8, 2, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10];
    let mut p = build(&s);
    let n = p.len();
    assert_eq!(
        filter::output(&mut p, n, &mut table, &pol, 0),
        Decision::Pass
    );
}

#[test]
fn the_ip_filter_redirects_only_the_rules_protocol() {
    use crate::net::addr::{Endpoint as Ep, IpAddr};
    use crate::net::filter::RulesPolicy;
    use crate::net::policy::Proxies;
    use crate::net::rules::{Action, Cidr, IndexEntry, Protocol, Rule, RuleSet};
    let net = Cidr::new(IpAddr::V4([203, 0, 113, 0]), 24);
    let rules = vec![
        Rule {
            protocol: Protocol::Udp,
            dst: net,
            port_lo: 53,
            port_hi: 53,
            action: Action::Proxy { proxy_v2: false },
            ..Rule::default()
        },
        Rule {
            protocol: Protocol::Tcp,
            dst: net,
            port_lo: 80,
            port_hi: 80,
            action: Action::Proxy { proxy_v2: false },
            ..Rule::default()
        },
    ];
    let rs = RuleSet::new(
        rules,
        vec![IndexEntry::default(); crate::net::rules::index_len(2)],
        Action::Direct,
    )
    .unwrap();
    let proxies = Proxies {
        v4: Some(Ep::new(IpAddr::V4([192, 0, 2, 1]), 3128)),
        ..Proxies::default()
    };
    let pol = RulesPolicy {
        enabled: true,
        rules: &rs,
        proxies: &proxies,
    };
    let mut table = nat(16, Config::DEFAULT, 3);
    let mut dst = [0u8; 16];
    dst[..4].copy_from_slice(&[203, 0, 113, 10]);
    let spec = |protocol, sport, dport| Spec {
        v6: false,
        protocol,
        src: [10; 16],
        dst,
        sport,
        dport,
        flags: if protocol == proto::TCP { tcp::SYN } else { 0 },
        payload: vec![],
        v4_options: vec![],
        v6_exts: vec![],
        udp_no_csum: false,
    };
    for (protocol, sport, dport, redirected) in [
        (proto::UDP, 40000, 53, true),
        (proto::TCP, 40001, 53, false),
        (proto::TCP, 40002, 80, true),
        (proto::UDP, 40003, 80, false),
    ] {
        let mut p = build(&spec(protocol, sport, dport));
        let n = p.len();
        let d = filter::output(&mut p, n, &mut table, &pol, 0);
        if redirected {
            assert!(
                matches!(d, Decision::Rewritten { .. }),
                "{protocol}/{dport}: {d:?}"
            );
            assert_eq!(&p[16..20], &[192, 0, 2, 1]);
        } else {
            assert_eq!(d, Decision::Pass, "{protocol}/{dport}");
        }
    }
}

/// A `block` rule at the IP layer drops the opening packets of new flows it
/// matches (TCP SYN, any UDP datagram), counted as `Blocked`; mid-stream TCP
/// of untracked flows and other destinations pass, and earlier rules win.
#[test]
fn the_ip_filter_drops_opening_packets_of_blocked_flows() {
    use crate::net::addr::{Endpoint as Ep, IpAddr};
    use crate::net::filter::RulesPolicy;
    use crate::net::policy::Proxies;
    use crate::net::rules::{Action, Cidr, IndexEntry, Rule, RuleSet};
    let rules = vec![
        Rule {
            dst: Cidr::new(IpAddr::V4([203, 0, 113, 7]), 32),
            action: Action::Proxy { proxy_v2: false },
            ..Rule::default()
        },
        Rule {
            dst: Cidr::new(IpAddr::V4([203, 0, 113, 0]), 24),
            action: Action::Block,
            ..Rule::default()
        },
    ];
    let rs = RuleSet::new(
        rules,
        vec![IndexEntry::default(); crate::net::rules::index_len(2)],
        Action::Direct,
    )
    .unwrap();
    let proxies = Proxies {
        v4: Some(Ep::new(IpAddr::V4([192, 0, 2, 1]), 3128)),
        ..Proxies::default()
    };
    let spec = |protocol, last: u8, flags| {
        let mut dst = [0u8; 16];
        dst[..4].copy_from_slice(&[203, 0, 113, last]);
        Spec {
            v6: false,
            protocol,
            src: [10; 16],
            dst,
            sport: 40000,
            dport: 443,
            flags,
            payload: vec![],
            v4_options: vec![],
            v6_exts: vec![],
            udp_no_csum: false,
        }
    };
    for enabled in [true, false] {
        // A fresh table each time: tracked flows keep being translated when disabled.
        let mut table = nat(16, Config::DEFAULT, 3);
        let pol = RulesPolicy {
            enabled,
            rules: &rs,
            proxies: &proxies,
        };
        for (protocol, last, flags, want) in [
            (proto::TCP, 10, tcp::SYN, Some(DropReason::Blocked)),
            (proto::UDP, 10, 0, Some(DropReason::Blocked)),
            // Mid-flow TCP of a connection the filter never saw open.
            (proto::TCP, 10, tcp::ACK, Some(DropReason::Untracked)),
            (
                proto::TCP,
                10,
                tcp::SYN | tcp::ACK,
                Some(DropReason::Untracked),
            ),
        ] {
            let mut p = build(&spec(protocol, last, flags));
            let n = p.len();
            let before = p.clone();
            let d = filter::output(&mut p, n, &mut table, &pol, 0);
            match want {
                Some(r) if enabled => assert_eq!(d, Decision::Drop(r), "{protocol} {flags:#x}"),
                _ => {
                    assert_eq!(d, Decision::Pass, "{protocol} {flags:#x} enabled={enabled}");
                    assert_eq!(p, before);
                }
            }
        }
        // The earlier proxy rule wins over the block for its host.
        let mut p = build(&spec(proto::TCP, 7, tcp::SYN));
        let n = p.len();
        let d = filter::output(&mut p, n, &mut table, &pol, 0);
        if enabled {
            assert!(matches!(d, Decision::Rewritten { .. }), "{d:?}");
            assert_eq!(table.len(), 1, "blocked flows are not tracked");
        } else {
            assert_eq!(d, Decision::Pass);
            assert!(table.is_empty());
        }
    }
}
