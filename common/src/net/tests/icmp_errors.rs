//! ICMP / ICMPv6 errors about translated flows (RFC 5508 behaviour): real flows
//! created through `filter::output`, errors built with etherparse quoting the
//! translated packets, results checked with etherparse and by full
//! recomputation.

use super::*;
use crate::net::icmp_error;
use etherparse::{Icmpv4Type, Icmpv6Type, Ipv4HeaderSlice, Ipv6HeaderSlice, icmpv4, icmpv6};

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

type Table = NatTable<Vec<Entry>>;

fn wide(a: &[u8]) -> [u8; 16] {
    let mut w = [0u8; 16];
    w[..a.len()].copy_from_slice(a);
    w
}

/// A client packet (UDP datagram or TCP SYN) from `client:cport` to `dst:dport`.
fn client_packet(
    v6: bool,
    protocol: u8,
    client: &[u8],
    cport: u16,
    dst: &[u8],
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    build(&Spec {
        v6,
        protocol,
        src: wide(client),
        dst: wide(dst),
        sport: cport,
        dport,
        flags: tcp::SYN,
        payload: payload.to_vec(),
        v4_options: vec![],
        v6_exts: vec![],
        udp_no_csum: false,
    })
}

/// Sends a new flow's first packet through `filter::output`; returns the
/// packet as translated (client → proxy), as the network sees it.
fn open_flow(table: &mut Table, v6: bool, protocol: u8, cport: u16, payload: &[u8]) -> Vec<u8> {
    let (c, o): (&[u8], &[u8]) = if v6 {
        (&CLIENT6, &ORIG6)
    } else {
        (&CLIENT4, &ORIG4)
    };
    let dport = if protocol == proto::UDP { 53 } else { 80 };
    let mut p = client_packet(v6, protocol, c, cport, o, dport, payload);
    let n = p.len();
    assert!(matches!(
        filter::output(&mut p, n, table, &FixedPolicy::EXAMPLE, 0),
        Decision::Rewritten { .. }
    ));
    assert_eq!(etherparse_verify(&p), Ok(()));
    p
}

fn icmp4_error(src: [u8; 4], dst: [u8; 4], ty: Icmpv4Type, quote: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ipv4(src, dst, 64)
        .icmpv4(ty)
        .write(&mut out, quote)
        .unwrap();
    out
}

fn icmp6_error(src: [u8; 16], dst: [u8; 16], ty: Icmpv6Type, quote: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ipv6(src, dst, 64)
        .icmpv6(ty)
        .write(&mut out, quote)
        .unwrap();
    out
}

fn port_unreachable4() -> Icmpv4Type {
    Icmpv4Type::DestinationUnreachable(icmpv4::DestUnreachableHeader::Port)
}

fn frag_needed4() -> Icmpv4Type {
    Icmpv4Type::DestinationUnreachable(icmpv4::DestUnreachableHeader::FragmentationNeeded {
        next_hop_mtu: 1400,
    })
}

fn port_unreachable6() -> Icmpv6Type {
    Icmpv6Type::DestinationUnreachable(icmpv6::DestUnreachableCode::Port)
}

/// The ICMP message's header (8 bytes) is at `t.offset`; the quote follows.
fn quote_of(p: &[u8]) -> &[u8] {
    let t = ip::transport(p).unwrap();
    &p[t.offset + 8..t.offset + t.len]
}

/// etherparse's view of an ICMP error: outer IPv4 header checksum and ICMP /
/// ICMPv6 checksum (pseudo-header included) valid; returns (outer src, outer
/// dst) and the quote.
fn verify_icmp_error(p: &[u8]) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let s = SlicedPacket::from_ip(p).unwrap();
    let net = s.net.as_ref().unwrap();
    let (src, dst) = if let Some(v4) = net.ipv4_ref() {
        let h = v4.header().to_header();
        assert_eq!(
            h.calc_header_checksum(),
            h.header_checksum,
            "outer IPv4 checksum"
        );
        (h.source.to_vec(), h.destination.to_vec())
    } else {
        let h = net.ipv6_ref().unwrap().header();
        (h.source().to_vec(), h.destination().to_vec())
    };
    let quote = match &s.transport {
        Some(TransportSlice::Icmpv4(i)) => {
            assert_eq!(
                i.icmp_type().calc_checksum(i.payload()),
                i.checksum(),
                "ICMP checksum"
            );
            i.payload().to_vec()
        }
        Some(TransportSlice::Icmpv6(i)) => {
            let c = i
                .icmp_type()
                .calc_checksum(
                    src.clone().try_into().unwrap(),
                    dst.clone().try_into().unwrap(),
                    i.payload(),
                )
                .unwrap();
            assert_eq!(c, i.checksum(), "ICMPv6 checksum");
            i.payload().to_vec()
        }
        _ => panic!("not ICMP"),
    };
    (src, dst, quote)
}

/// etherparse's view of a quoted packet's IP header: (src, dst, header length);
/// for IPv4 the header checksum is checked.
fn quoted_ip(q: &[u8]) -> (Vec<u8>, Vec<u8>, usize) {
    if q[0] >> 4 == 4 {
        let h = Ipv4HeaderSlice::from_slice(q).unwrap();
        assert_eq!(
            h.to_header().calc_header_checksum(),
            h.header_checksum(),
            "quoted IPv4 header checksum"
        );
        (
            h.source().to_vec(),
            h.destination().to_vec(),
            h.slice().len(),
        )
    } else {
        let h = Ipv6HeaderSlice::from_slice(q).unwrap();
        (h.source().to_vec(), h.destination().to_vec(), 40)
    }
}

fn ports(q: &[u8], l4: usize) -> (u16, u16) {
    (
        u16::from_be_bytes([q[l4], q[l4 + 1]]),
        u16::from_be_bytes([q[l4 + 2], q[l4 + 3]]),
    )
}

/// Runs `filter::input` (or output) as the kext does: on a prefix of at most
/// 256 bytes, copying back the changed bytes.
fn run(p: &mut [u8], table: &mut Table, inbound: bool, now: u64) -> Decision {
    let n = p.len().min(256);
    let mut pre = p[..n].to_vec();
    let d = if inbound {
        filter::input(&mut pre, p.len(), table, now)
    } else {
        filter::output(&mut pre, p.len(), table, &FixedPolicy::EXAMPLE, now)
    };
    if let Decision::Rewritten { changed } = d {
        p[..changed].copy_from_slice(&pre[..changed]);
    }
    d
}

#[test]
fn v4_udp_port_unreachable_from_the_proxy_fully_quoted() {
    let mut table = super::nat(16, Config::DEFAULT, 7);
    let sent = open_flow(&mut table, false, proto::UDP, 40000, b"query");
    let mut e = icmp4_error(PROXY4, CLIENT4, port_unreachable4(), &sent);
    let before = e.clone();
    assert!(matches!(
        run(&mut e, &mut table, true, 5),
        Decision::Rewritten { .. }
    ));
    let (src, dst, q) = verify_icmp_error(&e);
    assert_eq!((src.as_slice(), dst.as_slice()), (&ORIG4[..], &CLIENT4[..]));
    let (qs, qd, hl) = quoted_ip(&q);
    assert_eq!((qs.as_slice(), qd.as_slice()), (&CLIENT4[..], &ORIG4[..]));
    assert_eq!(ports(&q, hl), (40000, 53));
    // The whole datagram is quoted: it is the client's original packet again.
    assert_eq!(etherparse_verify(&q), Ok(()));
    assert_eq!(
        q,
        client_packet(false, proto::UDP, &CLIENT4, 40000, &ORIG4, 53, b"query")
    );
    // The ICMP header's type/code are untouched; the length is unchanged.
    assert_eq!(e.len(), before.len());
    assert_eq!(e[20..22], before[20..22]);
}

#[test]
fn v4_tcp_fragmentation_needed_from_a_router_with_an_8_byte_quote() {
    let mut table = super::nat(16, Config::DEFAULT, 7);
    let sent = open_flow(&mut table, false, proto::TCP, 40001, b"");
    // RFC 792: the IP header and the first 8 bytes of the datagram.
    let mut e = icmp4_error(ROUTER4, CLIENT4, frag_needed4(), &sent[..28]);
    assert!(matches!(
        run(&mut e, &mut table, true, 5),
        Decision::Rewritten { .. }
    ));
    let (src, dst, q) = verify_icmp_error(&e);
    // A router's address is kept.
    assert_eq!(
        (src.as_slice(), dst.as_slice()),
        (&ROUTER4[..], &CLIENT4[..])
    );
    let (qs, qd, hl) = quoted_ip(&q);
    assert_eq!((qs.as_slice(), qd.as_slice()), (&CLIENT4[..], &ORIG4[..]));
    assert_eq!(ports(&q, hl), (40001, 80));
    // The sequence number (bytes 4..8) is untouched; the MTU field too.
    assert_eq!(q[hl + 4..hl + 8], sent[24..28]);
    assert_eq!(u16::from_be_bytes([e[26], e[27]]), 1400);
    // The quoted IP header is the client's original one.
    let orig = client_packet(false, proto::TCP, &CLIENT4, 40001, &ORIG4, 80, b"");
    assert_eq!(q[..28], orig[..28]);
}

#[test]
fn v4_tcp_full_header_quote_from_the_proxy() {
    let mut table = super::nat(16, Config::DEFAULT, 7);
    let sent = open_flow(&mut table, false, proto::TCP, 40002, b"");
    let mut e = icmp4_error(PROXY4, CLIENT4, port_unreachable4(), &sent);
    assert!(
        matches!(run(&mut e, &mut table, true, 5), Decision::Rewritten { changed } if changed == 20 + 8 + 20 + 18)
    );
    let (src, _, q) = verify_icmp_error(&e);
    assert_eq!(src.as_slice(), &ORIG4[..]);
    // The TCP checksum (inside the quote) was updated: the quote is valid.
    assert_eq!(etherparse_verify(&q), Ok(()));
    assert_eq!(
        q,
        client_packet(false, proto::TCP, &CLIENT4, 40002, &ORIG4, 80, b"")
    );
}

#[test]
fn v6_udp_port_unreachable_from_the_proxy_and_tcp_packet_too_big_from_a_router() {
    let mut table = super::nat(16, Config::DEFAULT, 7);
    let sent = open_flow(&mut table, true, proto::UDP, 40000, b"query");
    let mut e = icmp6_error(PROXY6, CLIENT6, port_unreachable6(), &sent);
    assert!(matches!(
        run(&mut e, &mut table, true, 5),
        Decision::Rewritten { .. }
    ));
    let (src, dst, q) = verify_icmp_error(&e);
    assert_eq!((src.as_slice(), dst.as_slice()), (&ORIG6[..], &CLIENT6[..]));
    let (qs, qd, _) = quoted_ip(&q);
    assert_eq!((qs.as_slice(), qd.as_slice()), (&CLIENT6[..], &ORIG6[..]));
    assert_eq!(etherparse_verify(&q), Ok(()));
    assert_eq!(
        q,
        client_packet(true, proto::UDP, &CLIENT6, 40000, &ORIG6, 53, b"query")
    );

    let sent = open_flow(&mut table, true, proto::TCP, 40001, &[7u8; 100]);
    let mut e = icmp6_error(
        ROUTER6,
        CLIENT6,
        Icmpv6Type::PacketTooBig { mtu: 1280 },
        &sent,
    );
    assert!(matches!(
        run(&mut e, &mut table, true, 5),
        Decision::Rewritten { .. }
    ));
    let (src, _, q) = verify_icmp_error(&e);
    assert_eq!(src.as_slice(), &ROUTER6[..]);
    assert_eq!(etherparse_verify(&q), Ok(()));
    assert_eq!(
        q,
        client_packet(true, proto::TCP, &CLIENT6, 40001, &ORIG6, 80, &[7u8; 100])
    );
    assert_eq!(u32::from_be_bytes(e[44..48].try_into().unwrap()), 1280);

    // Time exceeded with only the headers quoted (TCP header, its checksum
    // included, but not the payload): the quoted checksum is updated.
    let mut e = icmp6_error(
        ROUTER6,
        CLIENT6,
        Icmpv6Type::TimeExceeded(icmpv6::TimeExceededCode::HopLimitExceeded),
        &sent[..60],
    );
    assert!(matches!(
        run(&mut e, &mut table, true, 5),
        Decision::Rewritten { .. }
    ));
    let (_, _, q) = verify_icmp_error(&e);
    let orig = client_packet(true, proto::TCP, &CLIENT6, 40001, &ORIG6, 80, &[7u8; 100]);
    assert_eq!(q, orig[..60]);
}

#[test]
fn errors_about_unknown_flows_icmp_or_short_quotes_pass_untouched() {
    let mut table = super::nat(16, Config::DEFAULT, 7);
    let sent = open_flow(&mut table, false, proto::UDP, 40000, b"query");
    let pass = |e: &[u8], table: &mut Table| {
        let mut x = e.to_vec();
        assert_eq!(run(&mut x, table, true, 5), Decision::Pass, "{e:02x?}");
        assert_eq!(run(&mut x, table, false, 5), Decision::Pass, "{e:02x?}");
        assert_eq!(x, e);
    };
    // Another client port: no flow.
    let other = client_packet(false, proto::UDP, &CLIENT4, 40009, &PROXY4, 3128, b"query");
    pass(
        &icmp4_error(PROXY4, CLIENT4, port_unreachable4(), &other),
        &mut table,
    );
    // Another protocol with the same ports (TCP quote of a UDP flow).
    let tcp_q = client_packet(false, proto::TCP, &CLIENT4, 40000, &PROXY4, 3128, b"");
    pass(
        &icmp4_error(PROXY4, CLIENT4, port_unreachable4(), &tcp_q),
        &mut table,
    );
    // Sent to someone else than the quoted source.
    pass(
        &icmp4_error(PROXY4, [10, 0, 0, 2], port_unreachable4(), &sent),
        &mut table,
    );
    // An error about ICMP (an echo request to the proxy).
    let mut echo = Vec::new();
    PacketBuilder::ipv4(CLIENT4, PROXY4, 64)
        .icmpv4_echo_request(1, 2)
        .write(&mut echo, b"ping")
        .unwrap();
    pass(
        &icmp4_error(PROXY4, CLIENT4, port_unreachable4(), &echo),
        &mut table,
    );
    // ICMP echo itself, whatever it carries.
    pass(&echo, &mut table);
    let mut echo = Vec::new();
    PacketBuilder::ipv4(PROXY4, CLIENT4, 64)
        .icmpv4_echo_reply(1, 2)
        .write(&mut echo, &sent)
        .unwrap();
    pass(&echo, &mut table);
    // Quotes too short for the ports.
    for n in [0, 1, 19, 20, 23] {
        pass(
            &icmp4_error(PROXY4, CLIENT4, port_unreachable4(), &sent[..n]),
            &mut table,
        );
    }
    // The quote's headers beyond the prefix (packet longer than the prefix).
    let e = icmp4_error(PROXY4, CLIENT4, port_unreachable4(), &sent);
    let mut pre = e[..20 + 8 + 22].to_vec();
    assert_eq!(
        filter::input(&mut pre, e.len(), &mut table, 5),
        Decision::Pass
    );
    // An IPv6 quote in an ICMPv4 error, an IPv4 quote in an ICMPv6 error.
    let sent6 = open_flow(&mut table, true, proto::UDP, 40000, b"query");
    pass(
        &icmp4_error(PROXY4, CLIENT4, port_unreachable4(), &sent6),
        &mut table,
    );
    pass(
        &icmp6_error(PROXY6, CLIENT6, port_unreachable6(), &sent),
        &mut table,
    );
    // Errors of the wrong ICMP version (ICMPv6 type numbers inside IPv4 are echo/other).
    let mut e = icmp6_error(PROXY6, CLIENT6, port_unreachable6(), &sent6);
    e[6] = proto::ICMP;
    pass(&e, &mut table);
    // An expired flow.
    let e = icmp4_error(PROXY4, CLIENT4, port_unreachable4(), &sent);
    let mut x = e.clone();
    let later = Config::DEFAULT.udp_idle_ms + 1;
    assert_eq!(run(&mut x, &mut table, true, later), Decision::Pass);
}

#[test]
fn hostile_quotes_never_panic_and_pass() {
    let mut table = super::nat(16, Config::DEFAULT, 7);
    let sent = open_flow(&mut table, false, proto::UDP, 40000, b"query");
    let sent6 = open_flow(&mut table, true, proto::UDP, 40000, b"query");
    let mut cases: Vec<Vec<u8>> = Vec::new();
    // Bogus quoted IHL: too small, and larger than the quote.
    for ihl in [0u8, 4, 15] {
        let mut q = sent.clone();
        q[0] = 0x40 | ihl;
        cases.push(icmp4_error(PROXY4, CLIENT4, port_unreachable4(), &q[..28]));
    }
    // Quoted total length smaller than its header.
    let mut q = sent.clone();
    q[2..4].copy_from_slice(&10u16.to_be_bytes());
    cases.push(icmp4_error(PROXY4, CLIENT4, port_unreachable4(), &q));
    // A quoted non-first fragment (no ports).
    let mut q = sent.clone();
    q[6..8].copy_from_slice(&0x0010u16.to_be_bytes());
    cases.push(icmp4_error(PROXY4, CLIENT4, port_unreachable4(), &q));
    // IPv6 quotes: a truncated extension header, a chain too long, ESP.
    let mut q = sent6.clone();
    q[6] = proto::IPV6_OPTS;
    cases.push(icmp6_error(PROXY6, CLIENT6, port_unreachable6(), &q[..44]));
    let mut q = sent6[..40].to_vec();
    q[6] = proto::IPV6_OPTS;
    for i in 0..10 {
        q.extend_from_slice(&[
            if i == 9 { proto::UDP } else { proto::IPV6_OPTS },
            0,
            1,
            4,
            0,
            0,
            0,
            0,
        ]);
    }
    q.extend_from_slice(&sent6[40..48]);
    cases.push(icmp6_error(PROXY6, CLIENT6, port_unreachable6(), &q));
    let mut q = sent6.clone();
    q[6] = proto::ESP;
    cases.push(icmp6_error(PROXY6, CLIENT6, port_unreachable6(), &q));
    for e in &cases {
        let mut x = e.clone();
        assert_eq!(run(&mut x, &mut table, true, 5), Decision::Pass, "{e:02x?}");
        assert_eq!(run(&mut x, &mut table, false, 5), Decision::Pass);
        assert_eq!(&x, e);
        // Every truncation of the prefix and corruption of each byte: no panic.
        for cut in 0..=x.len() {
            let mut pre = x[..cut].to_vec();
            let _ = filter::input(&mut pre, x.len(), &mut table, 5);
            let mut pre = x[..cut].to_vec();
            let _ = filter::output(&mut pre, x.len(), &mut table, &FixedPolicy::EXAMPLE, 5);
        }
    }
    // A quote claiming a huge length is still translated (it is a truncated copy).
    let mut q = sent.clone();
    q[2..4].copy_from_slice(&0xffffu16.to_be_bytes());
    ipv4::Packet::new_unchecked(&mut q[..]).fill_checksum();
    let mut e = icmp4_error(PROXY4, CLIENT4, port_unreachable4(), &q);
    assert!(matches!(
        run(&mut e, &mut table, true, 5),
        Decision::Rewritten { .. }
    ));
    let (_, _, q) = verify_icmp_error(&e);
    assert_eq!(quoted_ip(&q).1.as_slice(), &ORIG4[..]);
    let mut q = sent6.clone();
    q[4..6].copy_from_slice(&0xffffu16.to_be_bytes());
    let mut e = icmp6_error(PROXY6, CLIENT6, port_unreachable6(), &q);
    assert!(matches!(
        run(&mut e, &mut table, true, 5),
        Decision::Rewritten { .. }
    ));
    let (_, _, q) = verify_icmp_error(&e);
    assert_eq!(quoted_ip(&q).1.as_slice(), &ORIG6[..]);
}

#[test]
fn quoted_extension_headers_are_walked() {
    let mut table = super::nat(16, Config::DEFAULT, 7);
    let s = Spec {
        v6: true,
        protocol: proto::UDP,
        src: CLIENT6,
        dst: ORIG6,
        sport: 40000,
        dport: 53,
        flags: 0,
        payload: b"q".to_vec(),
        v4_options: vec![],
        v6_exts: ext_chain(&[(proto::IPV6_OPTS, 1)]),
        udp_no_csum: false,
    };
    let orig = build(&s);
    let mut sent = orig.clone();
    let n = sent.len();
    assert!(matches!(
        filter::output(&mut sent, n, &mut table, &FixedPolicy::EXAMPLE, 0),
        Decision::Rewritten { .. }
    ));
    let mut e = icmp6_error(PROXY6, CLIENT6, port_unreachable6(), &sent);
    assert!(matches!(
        run(&mut e, &mut table, true, 5),
        Decision::Rewritten { .. }
    ));
    let (src, _, q) = verify_icmp_error(&e);
    assert_eq!(src.as_slice(), &ORIG6[..]);
    assert_eq!(q, orig);
}

#[test]
fn errors_do_not_touch_the_flow_state() {
    let mut table = super::nat(16, Config::DEFAULT, 7);
    let sent = open_flow(&mut table, false, proto::TCP, 40003, b"");
    let before: Vec<_> = table.flows().collect();
    // An RST quoted in the error does not close the flow, nor refresh it.
    let mut q = sent.clone();
    q[33] = tcp::RST;
    let mut e = icmp4_error(PROXY4, CLIENT4, port_unreachable4(), &q);
    assert!(matches!(
        run(&mut e, &mut table, true, 1000),
        Decision::Rewritten { .. }
    ));
    let after: Vec<_> = table.flows().collect();
    assert_eq!(before, after);
    // The flow expires at the same time as without the error.
    let f = before[0];
    let end = f.expires_at(&Config::DEFAULT);
    assert_eq!(
        end,
        Config::DEFAULT.tcp_transitory_ms,
        "SYN sent: transitory"
    );
    assert_eq!(table.peek_forward(&f.key, end - 1), Some(f));
    assert_eq!(table.peek_forward(&f.key, end), None);
    assert_eq!(
        table.peek_reverse(proto::TCP, &f.proxy, &f.key.src, 5),
        Some(f)
    );
}

#[test]
fn outbound_errors_about_received_packets_go_to_the_proxy() {
    for v6 in [false, true] {
        let mut table = super::nat(16, Config::DEFAULT, 7);
        let _ = open_flow(&mut table, v6, proto::UDP, 40000, b"query");
        let (c, o, p): (&[u8], &[u8], &[u8]) = if v6 {
            (&CLIENT6, &ORIG6, &PROXY6)
        } else {
            (&CLIENT4, &ORIG4, &PROXY4)
        };
        // The proxy's reply, reverse-translated: the client receives it from the origin.
        let mut reply = client_packet(v6, proto::UDP, p, 3128, c, 40000, b"answer");
        let n = reply.len();
        assert!(matches!(
            filter::input(&mut reply, n, &mut table, 1),
            Decision::Rewritten { .. }
        ));
        let received = client_packet(v6, proto::UDP, o, 53, c, 40000, b"answer");
        assert_eq!(reply, received);
        // The client's socket is gone: port unreachable from the client to the origin.
        let mut e = if v6 {
            icmp6_error(CLIENT6, ORIG6, port_unreachable6(), &received)
        } else {
            icmp4_error(CLIENT4, ORIG4, port_unreachable4(), &received)
        };
        assert!(matches!(
            run(&mut e, &mut table, false, 2),
            Decision::Rewritten { .. }
        ));
        let (src, dst, q) = verify_icmp_error(&e);
        assert_eq!((src.as_slice(), dst.as_slice()), (c, p));
        // The proxy sees an error about the datagram it sent.
        let proxy_sent = client_packet(v6, proto::UDP, p, 3128, c, 40000, b"answer");
        assert_eq!(q, proxy_sent);
        assert_eq!(etherparse_verify(&q), Ok(()));
        // The same error inbound matches no flow (it quotes origin → client).
        let mut x = if v6 {
            icmp6_error(ORIG6, CLIENT6, port_unreachable6(), &received)
        } else {
            icmp4_error(ORIG4, CLIENT4, port_unreachable4(), &received)
        };
        assert_eq!(run(&mut x, &mut table, true, 2), Decision::Pass);
        // An outbound error from another local address is left alone.
        let mut x = if v6 {
            icmp6_error(ROUTER6, ORIG6, port_unreachable6(), &received)
        } else {
            icmp4_error(ROUTER4, ORIG4, port_unreachable4(), &received)
        };
        assert_eq!(run(&mut x, &mut table, false, 2), Decision::Pass);
    }
}

// ------------------------------------------------------------ full recomputation

/// Full recomputation of an ICMP error's checksums: (outer IPv4 header, ICMP,
/// quoted IPv4 header, quoted transport when the whole segment is quoted),
/// next to the stored values.
fn recompute(p: &[u8]) -> Vec<(&'static str, u16, u16)> {
    let mut out = Vec::new();
    let t = ip::transport(p).unwrap();
    if p[0] >> 4 == 4 {
        let mut h = p[..t.offset].to_vec();
        h[10] = 0;
        h[11] = 0;
        out.push((
            "outer ip",
            checksum::checksum(&h),
            u16::from_be_bytes([p[10], p[11]]),
        ));
    }
    let mut m = p[t.offset..t.offset + t.len].to_vec();
    let stored = u16::from_be_bytes([m[2], m[3]]);
    m[2] = 0;
    m[3] = 0;
    let full = if t.protocol == proto::ICMP {
        checksum::checksum(&m)
    } else {
        checksum::transport(&t.src, &t.dst, proto::ICMPV6, &m)
    };
    out.push(("icmp", full, stored));
    let q = &p[t.offset + 8..t.offset + t.len];
    let it = ip::transport_quoted(q).unwrap();
    if q[0] >> 4 == 4 {
        let mut h = q[..it.offset].to_vec();
        h[10] = 0;
        h[11] = 0;
        out.push((
            "quoted ip",
            checksum::checksum(&h),
            u16::from_be_bytes([q[10], q[11]]),
        ));
    }
    if q.len() >= it.offset + it.len {
        let mut seg = q[it.offset..it.offset + it.len].to_vec();
        let co = if it.protocol == proto::TCP { 16 } else { 6 };
        let stored = u16::from_be_bytes([seg[co], seg[co + 1]]);
        seg[co] = 0;
        seg[co + 1] = 0;
        out.push((
            "quoted l4",
            checksum::transport(&it.src, &it.dst, it.protocol, &seg),
            stored,
        ));
    }
    out
}

fn flow_strategy() -> impl Strategy<Value = (bool, u8, [u8; 16], u16, u8, u16, Vec<u8>)> {
    (
        any::<bool>(),
        prop_oneof![Just(proto::TCP), Just(proto::UDP)],
        any::<[u8; 16]>(),
        1u16..,
        any::<u8>(),
        any::<u16>(),
        proptest::collection::vec(any::<u8>(), 0..700),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Random flows, random quote lengths, errors from the proxy or a router,
    /// inbound and outbound: after translation (on a 256-byte prefix, copied
    /// back), every checksum equals its full recomputation, the quote holds the
    /// right endpoints, and etherparse accepts the outer packet.
    #[test]
    fn translated_errors_have_the_checksums_of_a_full_recomputation(
        (v6, protocol, client, cport, host, oport, payload) in flow_strategy(),
        quote_len in any::<prop::sample::Index>(),
        from_proxy in any::<bool>(),
        inbound in any::<bool>(),
        kind in 0usize..3,
    ) {
        let (client, orig, proxy, router): (Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>) = if v6 {
            let mut o = ORIG6;
            o[15] = host;
            (client.to_vec(), o.to_vec(), PROXY6.to_vec(), ROUTER6.to_vec())
        } else {
            (client[..4].to_vec(), vec![203, 0, 113, host], PROXY4.to_vec(), ROUTER4.to_vec())
        };
        prop_assume!(client != proxy && client != orig && client != router);
        let mut table = super::nat(16, Config::DEFAULT, 11);
        let mut first = client_packet(v6, protocol, &client, cport, &orig, oport, &payload);
        let n = first.len();
        let d = filter::output(&mut first, n, &mut table, &FixedPolicy::EXAMPLE, 0);
        let ok = matches!(d, Decision::Rewritten { .. });
        prop_assert!(ok, "{:?}", d);
        // Inbound errors quote the translated packet; outbound ones a packet the
        // client received from the origin.
        let quoted = if inbound {
            first
        } else {
            client_packet(v6, protocol, &orig, oport, &client, cport, &payload)
        };
        let k = quote_len.index(quoted.len() + 1);
        let q = &quoted[..k];
        let (esrc, edst) = match (inbound, from_proxy) {
            (true, true) => (proxy.clone(), client.clone()),
            (true, false) => (router.clone(), client.clone()),
            (false, _) => (client.clone(), orig.clone()),
        };
        let mut e = if v6 {
            let ty = match kind {
                0 => port_unreachable6(),
                1 => Icmpv6Type::PacketTooBig { mtu: 1280 },
                _ => Icmpv6Type::TimeExceeded(icmpv6::TimeExceededCode::HopLimitExceeded),
            };
            icmp6_error(esrc.clone().try_into().unwrap(), edst.clone().try_into().unwrap(), ty, q)
        } else {
            let ty = match kind {
                0 => port_unreachable4(),
                1 => frag_needed4(),
                _ => Icmpv4Type::TimeExceeded(icmpv4::TimeExceededCode::TtlExceededInTransit),
            };
            icmp4_error(esrc.clone().try_into().unwrap(), edst.clone().try_into().unwrap(), ty, q)
        };
        let before = e.clone();
        let d = run(&mut e, &mut table, inbound, 1);
        let hl = if v6 { 40 } else { 20 };
        if k < hl + 4 {
            prop_assert_eq!(d, Decision::Pass);
            prop_assert_eq!(&e, &before);
            return Ok(());
        }
        let ok = matches!(d, Decision::Rewritten { changed } if changed <= 256);
        prop_assert!(ok, "{:?}", d);
        for (what, full, stored) in recompute(&e) {
            prop_assert_eq!(full, stored, "{}", what);
        }
        let (src, dst, q2) = verify_icmp_error(&e);
        let (qs, qd, qhl) = quoted_ip(&q2);
        prop_assert_eq!(q2.len(), k);
        // A transport checksum cut in half by the quote cannot be updated (and
        // is left alone): compare up to it.
        let co = qhl + if protocol == proto::TCP { 16 } else { 6 };
        let k = if k == co + 1 { co } else { k };
        if inbound {
            prop_assert_eq!(&src, if from_proxy { &orig } else { &router });
            prop_assert_eq!(&dst, &client);
            prop_assert_eq!((&qs, &qd), (&client, &orig));
            prop_assert_eq!(ports(&q2, qhl), (cport, oport));
            // The quote is exactly what the client sent before translation.
            let sent = client_packet(v6, protocol, &client, cport, &orig, oport, &payload);
            prop_assert_eq!(&q2[..k], &sent[..k]);
        } else {
            prop_assert_eq!((&src, &dst), (&client, &proxy));
            prop_assert_eq!((&qs, &qd), (&proxy, &client));
            prop_assert_eq!(ports(&q2, qhl), (3128, cport));
            let sent = client_packet(v6, protocol, &proxy, 3128, &client, cport, &payload);
            prop_assert_eq!(&q2[..k], &sent[..k]);
        }
    }
}

#[test]
fn quote_parsing_matches_the_module_api() {
    let mut table = super::nat(16, Config::DEFAULT, 7);
    let sent = open_flow(&mut table, false, proto::UDP, 40000, b"query");
    let e = icmp4_error(PROXY4, CLIENT4, port_unreachable4(), &sent);
    let t = ip::transport(&e).unwrap();
    assert!(icmp_error::is_error(&e, &t));
    let q = icmp_error::quote(&e, &t).unwrap();
    assert_eq!(q.offset, 28);
    assert_eq!(q.present, sent.len());
    assert_eq!(
        q.src,
        Endpoint {
            addr: IpAddr::V4(CLIENT4),
            port: 40000
        }
    );
    assert_eq!(
        q.dst,
        Endpoint {
            addr: IpAddr::V4(PROXY4),
            port: 3128
        }
    );
    assert_eq!(quote_of(&e), &sent[..]);
}
