//! The IP filter's packet path on arbitrary bytes: header views, the transport
//! walk, the output decision (rules, NAT insert, rewrite) and the input
//! decision (reverse translation, ICMP errors about translated flows), as the
//! kext runs them on a header prefix copied out of an mbuf, the changed bytes
//! copied back. Nothing may panic or read out of bounds, every rewritten
//! packet must still parse, and every checksum that was valid before a
//! rewrite (IPv4 header, TCP/UDP/ICMP/ICMPv6, over the whole packet, not only
//! the prefix) must be valid after it.
//!
//! Live flows (UDP and TCP, both families) are opened first, and the second
//! input byte can select a synthetic ICMP error about one of them (quoting the
//! translated packet, or a packet the client received), with the fuzz bytes
//! XOR'ed into and appended to the quote, so translations of ICMP errors are
//! reachable.
//!
//! Each packet the fast path takes (`common::net::fastpath`: plain TCP/UDP,
//! the whole packet as its first mbuf) must get the general path's answer,
//! bytes and table from it.
#![no_main]

use common::net::addr::{Endpoint, IpAddr};
use common::net::checksum;
use common::net::fastpath::{self, ProxyAddrs, Tracked};
use common::net::filter::{self, Decision, FixedPolicy, Plan};
use common::net::nat::{Config, Entry, NatTable};
use common::net::policy::Proxies;
use common::net::translate::{L4Sum, Refused, Side};
use common::net::wire::ip;
use common::net::wire::{ipv4, proto};
use libfuzzer_sys::fuzz_target;

const CLIENT4: [u8; 4] = [10, 0, 0, 1];
const ORIG4: [u8; 4] = [203, 0, 113, 10];
const PROXY4: [u8; 4] = [192, 0, 2, 1];
const ROUTER4: [u8; 4] = [198, 51, 100, 1];
const CLIENT6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const ORIG6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0x02, 0x03, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];
const PROXY6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
];
const ROUTER6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0x99, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
];
const CPORT: u16 = 40000;

fn addr(a: &[u8]) -> IpAddr {
    match a.len() {
        4 => IpAddr::V4(a.try_into().unwrap()),
        _ => IpAddr::V6(a.try_into().unwrap()),
    }
}

/// An IPv4 or IPv6 header (by the address length) in front of `payload`.
fn ip_packet(protocol: u8, src: &[u8], dst: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut p = if src.len() == 4 {
        let mut h = vec![0u8; 20];
        h[0] = 0x45;
        h[2..4].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
        h[8] = 64;
        h[9] = protocol;
        h[12..16].copy_from_slice(src);
        h[16..20].copy_from_slice(dst);
        ipv4::Packet::new_unchecked(&mut h[..]).fill_checksum();
        h
    } else {
        let mut h = vec![0u8; 40];
        h[0] = 0x60;
        h[4..6].copy_from_slice(&(payload.len() as u16).to_be_bytes());
        h[6] = protocol;
        h[7] = 64;
        h[8..24].copy_from_slice(src);
        h[24..40].copy_from_slice(dst);
        h
    };
    p.extend_from_slice(payload);
    p
}

/// A UDP datagram or TCP SYN with valid checksums.
fn segment(protocol: u8, src: &[u8], sport: u16, dst: &[u8], dport: u16) -> Vec<u8> {
    let tcp = protocol == proto::TCP;
    let mut s = vec![0u8; if tcp { 20 } else { 8 }];
    s[0..2].copy_from_slice(&sport.to_be_bytes());
    s[2..4].copy_from_slice(&dport.to_be_bytes());
    if tcp {
        s[12] = 0x50;
        s[13] = 0x02;
        s[14..16].copy_from_slice(&[0xff, 0xff]);
    }
    s.extend_from_slice(b"data");
    if !tcp {
        let l = s.len() as u16;
        s[4..6].copy_from_slice(&l.to_be_bytes());
    }
    let co = if tcp { 16 } else { 6 };
    let c = checksum::transport(&addr(src), &addr(dst), protocol, &s);
    s[co..co + 2].copy_from_slice(&c.to_be_bytes());
    ip_packet(protocol, src, dst, &s)
}

/// An ICMP (IPv4) or ICMPv6 message quoting `quote`, checksum valid.
fn icmp_error(src: &[u8], dst: &[u8], ty: u8, code: u8, quote: &[u8]) -> Vec<u8> {
    let mut m = vec![ty, code, 0, 0, 0, 0, 0x05, 0x78];
    m.extend_from_slice(quote);
    let (protocol, c) = if src.len() == 4 {
        (proto::ICMP, checksum::checksum(&m))
    } else {
        let c = checksum::transport(&addr(src), &addr(dst), proto::ICMPV6, &m);
        (proto::ICMPV6, c)
    };
    m[2..4].copy_from_slice(&c.to_be_bytes());
    ip_packet(protocol, src, dst, &m)
}

/// Which checksums of a whole packet verify: (IPv4 header, transport).
fn valid(p: &[u8]) -> (bool, bool) {
    let Ok(t) = ip::transport(p) else {
        return (false, false);
    };
    let v4 = matches!(t.src, IpAddr::V4(_));
    let iph = v4 && checksum::fold(checksum::sum(&p[..t.offset], 0)) == 0xffff;
    let Some(seg) = p.get(t.offset..t.offset + t.len) else {
        return (iph, false);
    };
    let l4 = t.has_transport
        && !t.fragment
        && match t.protocol {
            proto::ICMP if v4 => checksum::fold(checksum::sum(seg, 0)) == 0xffff,
            proto::UDP if v4 && seg.get(6..8) == Some(&[0, 0]) => false,
            proto::TCP | proto::UDP | proto::ICMPV6 => {
                checksum::verify_transport(&t.src, &t.dst, t.protocol, seg)
            }
            _ => false,
        };
    (iph, l4)
}

/// The fast path on the whole packet `pkt` (its first mbuf) against a copy
/// of `table`: the general path's answer, bytes and table.
fn fast_agrees(pkt: &[u8], table: &NatTable<[Entry; 16]>, policy: &FixedPolicy, output: bool) {
    let Some((h, key)) = fastpath::parse(&mut pkt.to_vec()) else {
        return;
    };
    let proxies = Proxies {
        v4: Some(Endpoint::new(
            IpAddr::V4(policy.proxy_v4.0),
            policy.proxy_v4.1,
        )),
        v6: Some(Endpoint::new(
            IpAddr::V6(policy.proxy_v6.0),
            policy.proxy_v6.1,
        )),
        ..Proxies::default()
    };
    let (mut ft, mut gt) = (table.clone(), table.clone());
    let (mut fp, mut gp) = (pkt.to_vec(), pkt.to_vec());
    let len = gp.len();
    let (k, t) = filter::parse_in_first(&gp, 256).expect("a plain packet parses generally");
    let (fast, general, side) = if output {
        let f = fastpath::track_output(&mut ft, &ProxyAddrs::of(&proxies), &key, h.flags, 0);
        let g = filter::plan_output_tracked(&gp[..k], len, &t, &mut gt, &proxies, 0);
        (f, g, Side::Dst)
    } else {
        let f = fastpath::track_input(&mut ft, &key, h.flags, 0);
        let g = filter::plan_input_parsed(&gp[..k], &t, &mut gt, 0);
        (f, Some(g), Side::Src)
    };
    match (fast, general) {
        (Tracked::To(to), Some(plan @ Plan::Translate { to: g, side: s })) => {
            assert_eq!((to.endpoint(), side), (g, s));
            let fr = fastpath::rewrite(&mut fp, side, &to, L4Sum::Complete).expect("plain");
            let gr = filter::apply_parsed(&mut gp[..k], &t, plan, L4Sum::Complete);
            match fr {
                Ok(n) => assert_eq!(gr, Decision::Rewritten { changed: n }),
                Err(Refused::Udp6ZeroChecksum) => {
                    assert_eq!(gr, Decision::Drop(filter::DropReason::Udp6ZeroChecksum))
                }
                Err(e) => panic!("fast rewrite refused: {e:?}"),
            }
            assert_eq!(fp, gp, "fast and general rewrites differ");
        }
        (Tracked::Pass, Some(Plan::Pass)) | (Tracked::Untracked, None) => {}
        (Tracked::Pass, None) if !output => {}
        (f, g) => panic!("fast path {f:?}, general path {g:?}"),
    }
    let flows = |t: &NatTable<[Entry; 16]>| {
        let mut v: Vec<_> = t.flows().map(|f| format!("{f:?}")).collect();
        v.sort();
        v
    };
    assert_eq!(flows(&ft), flows(&gt), "tables differ");
    assert_eq!(ft.stats(), gt.stats());
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let Some((&mode, rest)) = rest.split_first() else {
        return;
    };
    let Ok(mut table) = NatTable::new([Entry::EMPTY; 16], Config::DEFAULT, 1) else {
        return;
    };
    let policy = FixedPolicy::EXAMPLE;
    // Live flows, opened as the kext would (index: bit 0 IPv6, bit 1 TCP).
    let mut sent = Vec::new();
    for i in 0..4u8 {
        let v6 = i & 1 != 0;
        let protocol = if i & 2 != 0 { proto::TCP } else { proto::UDP };
        let (c, o): (&[u8], &[u8]) = if v6 {
            (&CLIENT6, &ORIG6)
        } else {
            (&CLIENT4, &ORIG4)
        };
        let mut p = segment(protocol, c, CPORT, o, 53);
        let n = p.len();
        let d = filter::output(&mut p, n, &mut table, &policy, 0);
        assert!(matches!(d, Decision::Rewritten { .. }), "{d:?}");
        sent.push(p);
    }
    let mut pkt = if mode & 0x80 == 0 {
        rest.to_vec()
    } else {
        let i = usize::from(mode & 3);
        let v6 = i & 1 != 0;
        let protocol = if i & 2 != 0 { proto::TCP } else { proto::UDP };
        let inbound = mode & 4 == 0;
        let from_proxy = mode & 8 == 0;
        let (c, o, p, r): (&[u8], &[u8], &[u8], &[u8]) = if v6 {
            (&CLIENT6, &ORIG6, &PROXY6, &ROUTER6)
        } else {
            (&CLIENT4, &ORIG4, &PROXY4, &ROUTER4)
        };
        let mut quote = if inbound {
            sent[i].clone()
        } else {
            segment(protocol, o, 53, c, CPORT)
        };
        // rest: quote length, then bytes XOR'ed into the quote (and appended).
        let (qlen, mask) = rest.split_first().map_or((255, &[][..]), |(q, m)| (*q, m));
        quote.truncate(usize::from(qlen));
        for (b, m) in quote.iter_mut().zip(mask) {
            *b ^= m;
        }
        quote.extend_from_slice(mask.get(quote.len()..).unwrap_or(&[]));
        let sel = usize::from(mode >> 4 & 7);
        let ty = if v6 {
            [1, 2, 3, 4, 128, 129, 1, 2][sel]
        } else {
            [3, 11, 12, 0, 8, 5, 3, 3][sel]
        };
        let (src, dst) = match (inbound, from_proxy) {
            (true, true) => (p, c),
            (true, false) => (r, c),
            (false, _) => (c, o),
        };
        icmp_error(src, dst, ty, 4, &quote)
    };
    // The first byte chooses how much of the packet is "in the prefix".
    let len = pkt.len();
    let n = usize::from(split).min(len);
    for output in [true, false, true] {
        fast_agrees(&pkt, &table, &policy, output);
        let before = valid(&pkt);
        let mut prefix = pkt[..n].to_vec();
        let d = if output {
            filter::output(&mut prefix, len, &mut table, &policy, 0)
        } else {
            filter::input(&mut prefix, len, &mut table, 0)
        };
        if let Decision::Rewritten { changed } = d {
            assert!(changed <= prefix.len());
            assert!(ip::transport_in(&prefix, len).is_ok());
            pkt[..changed].copy_from_slice(&prefix[..changed]);
            let after = valid(&pkt);
            assert!(!before.0 || after.0, "IPv4 header checksum broken");
            assert!(!before.1 || after.1, "transport checksum broken");
        }
    }
    assert_eq!(table.check(), Ok(()), "NAT table invariants");
});
