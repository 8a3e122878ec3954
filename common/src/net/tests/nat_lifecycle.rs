//! The NAT lifecycle (RFC 5382 / RFC 4787 timers, no leak of expired or
//! unknown flows to the origin, capacity, reclamation, early eviction).

use super::{Spec, build, nat};
use crate::net::addr::{Endpoint, IpAddr};
use crate::net::filter::{self, Decision, DropReason, FixedPolicy};
use crate::net::nat::{Config, ENTRY_BYTES, Entry, FlowKey, FlowState, InsertError, NatTable};
use crate::net::wire::{proto, tcp};
use proptest::prelude::*;

const MIN: u64 = 60_000;
const HOUR: u64 = 60 * MIN;

fn tcp_packet(flags: u8, sport: u16) -> Vec<u8> {
    let mut s = Spec {
        v6: false,
        protocol: proto::TCP,
        src: [0; 16],
        dst: [0; 16],
        sport,
        dport: 80,
        flags,
        payload: vec![],
        v4_options: vec![],
        v6_exts: vec![],
        udp_no_csum: false,
    };
    s.src[..4].copy_from_slice(&[10, 0, 0, 1]);
    s.dst[..4].copy_from_slice(&[203, 0, 113, 10]);
    build(&s)
}

fn reply(flags: u8, dport: u16) -> Vec<u8> {
    let mut s = Spec {
        v6: false,
        protocol: proto::TCP,
        src: [0; 16],
        dst: [0; 16],
        sport: 3128,
        dport,
        flags,
        payload: vec![],
        v4_options: vec![],
        v6_exts: vec![],
        udp_no_csum: false,
    };
    s.src[..4].copy_from_slice(&[192, 0, 2, 1]);
    s.dst[..4].copy_from_slice(&[10, 0, 0, 1]);
    build(&s)
}

type Table = NatTable<Vec<Entry>>;

fn out(t: &mut Table, flags: u8, sport: u16, now: u64) -> Decision {
    let mut p = tcp_packet(flags, sport);
    let n = p.len();
    filter::output(&mut p, n, t, &FixedPolicy::EXAMPLE, now)
}

fn back(t: &mut Table, flags: u8, dport: u16, now: u64) -> Decision {
    let mut p = reply(flags, dport);
    let n = p.len();
    filter::input(&mut p, n, t, now)
}

fn rewritten(d: Decision) -> bool {
    matches!(d, Decision::Rewritten { .. })
}

/// Defect 1 of issue 16: SYN at t=0, ACK at 1 s, ACK at 1 s + 2 h (a
/// keepalive after macOS's 2 h keepalive interval) passed un-translated to
/// the origin.
#[test]
fn a_keepalive_after_two_hours_idle_is_still_translated() {
    let mut table = nat(16, Config::DEFAULT, 3);
    assert!(rewritten(out(&mut table, tcp::SYN, 40000, 0)));
    assert!(rewritten(back(&mut table, tcp::SYN | tcp::ACK, 40000, 500)));
    assert!(rewritten(out(&mut table, tcp::ACK, 40000, 1000)));
    let d = out(&mut table, tcp::ACK, 40000, 1000 + 2 * HOUR);
    assert!(rewritten(d), "keepalive at 2 h: {d:?}");
    // Idle beyond 2 h 4 min: expired, and its next packet is dropped, never
    // passed to the origin.
    let d = out(&mut table, tcp::ACK, 40000, 1000 + 4 * HOUR + 5 * MIN);
    assert_eq!(d, Decision::Drop(DropReason::Untracked));
    assert!(table.is_empty());
    assert_eq!(table.stats().expired, 1);
}

/// Unknown mid-flow TCP to a redirected destination never reaches the
/// origin; to other destinations it passes.
#[test]
fn untracked_mid_flow_tcp_is_dropped_only_where_rules_redirect() {
    let mut table = nat(16, Config::DEFAULT, 3);
    for flags in [
        tcp::ACK,
        tcp::FIN | tcp::ACK,
        tcp::RST,
        tcp::SYN | tcp::ACK,
        0,
    ] {
        assert_eq!(
            out(&mut table, flags, 40000, 0),
            Decision::Drop(DropReason::Untracked),
            "{flags:#x}"
        );
    }
    let mut p = tcp_packet(tcp::ACK, 40000);
    p[16..20].copy_from_slice(&[198, 51, 100, 1]);
    crate::net::wire::ipv4::Packet::new_unchecked(&mut p[..]).fill_checksum();
    let n = p.len();
    assert_eq!(
        filter::output(&mut p, n, &mut table, &FixedPolicy::EXAMPLE, 0),
        Decision::Pass
    );
}

/// Defect 2 of issue 16: an unanswered SYN held its entry for 2 h, so a
/// full table of them refused every new flow.
#[test]
fn unanswered_syns_do_not_hold_the_table() {
    let mut table = nat(16, Config::DEFAULT, 3);
    for port in 0..16 {
        assert!(rewritten(out(&mut table, tcp::SYN, 1000 + port, 0)));
    }
    // Under pressure, the oldest unanswered flow gives way at once.
    assert!(rewritten(out(&mut table, tcp::SYN, 2000, 1)));
    assert_eq!(table.stats().evicted, 1);
    assert_eq!(
        out(&mut table, tcp::ACK, 1000, 1),
        Decision::Drop(DropReason::Untracked)
    );
    // After the transitory timeout (4 min) they are all gone.
    assert!(rewritten(out(&mut table, tcp::SYN, 2001, 4 * MIN + 1)));
    // Each insertion reclaims a bounded number (per-packet cost stays O(1)).
    assert_eq!(table.len(), 16 - crate::net::nat::RECLAIM_PER_INSERT + 1);
    assert_eq!(
        table.sweep(4 * MIN + 1, 16),
        16 - crate::net::nat::RECLAIM_PER_INSERT
    );
    assert_eq!(table.len(), 1);
}

/// Defect 2: 16 UDP datagrams from different ports (any local user) filled
/// the table and blocked every new redirected flow.
#[test]
fn a_udp_flood_cannot_deny_new_flows() {
    let mut table = nat(16, Config::DEFAULT, 3);
    let key = |port| FlowKey {
        protocol: proto::UDP,
        src: Endpoint {
            addr: IpAddr::V4([10, 0, 0, 2]),
            port,
        },
        dst: Endpoint {
            addr: IpAddr::V4([203, 0, 113, 53]),
            port: 53,
        },
    };
    let proxy = Endpoint {
        addr: IpAddr::V4([192, 0, 2, 1]),
        port: 3128,
    };
    for round in 0..10u16 {
        for i in 0..40u16 {
            table
                .insert(key(round * 100 + i), proxy, 0, u64::from(round))
                .unwrap();
        }
        // A legitimate connection opened meanwhile completes its handshake.
        let port = 50000 + round;
        assert!(rewritten(out(&mut table, tcp::SYN, port, u64::from(round))));
        assert!(rewritten(back(
            &mut table,
            tcp::SYN | tcp::ACK,
            port,
            u64::from(round)
        )));
    }
    for round in 0..10u16 {
        assert!(
            rewritten(out(&mut table, tcp::ACK, 50000 + round, 20)),
            "{round}"
        );
    }
    let s = table.stats();
    assert_eq!(s.flows, 16);
    assert!(s.evicted >= 400 - 16, "{s:?}");
    table.check().unwrap();
}

/// Only when every flow is established (or closing) is a new one refused.
#[test]
fn a_table_of_live_established_flows_refuses_and_keeps_them() {
    let mut table = nat(4, Config::DEFAULT, 7);
    for port in 0..4 {
        assert!(rewritten(out(&mut table, tcp::SYN, 100 + port, 0)));
        assert!(rewritten(back(
            &mut table,
            tcp::SYN | tcp::ACK,
            100 + port,
            0
        )));
    }
    assert_eq!(
        out(&mut table, tcp::SYN, 9, 10),
        Decision::Drop(DropReason::TableFull)
    );
    for port in 0..4 {
        assert!(rewritten(out(&mut table, tcp::ACK, 100 + port, 10)));
    }
    // Established flows stay for 2 h 4 min, then make room.
    assert_eq!(
        out(&mut table, tcp::SYN, 9, 10 + 2 * HOUR),
        Decision::Drop(DropReason::TableFull)
    );
    assert!(rewritten(out(
        &mut table,
        tcp::SYN,
        9,
        10 + 2 * HOUR + 4 * MIN
    )));
    assert_eq!(
        table.stats().expired,
        4,
        "all four reclaimed by one insertion"
    );
}

/// FIN and RST make a flow transitory (4 min); a new SYN reopens it.
#[test]
fn fin_and_rst_move_a_flow_to_the_transitory_timeout() {
    let mut table = nat(16, Config::DEFAULT, 3);
    let state = |t: &Table, port| t.flows().find(|f| f.key.src.port == port).map(|f| f.state);
    assert!(rewritten(out(&mut table, tcp::SYN, 1, 0)));
    assert_eq!(state(&table, 1), Some(FlowState::SynSent));
    assert!(rewritten(back(&mut table, tcp::SYN | tcp::ACK, 1, 0)));
    assert_eq!(state(&table, 1), Some(FlowState::Established));
    assert!(rewritten(out(&mut table, tcp::FIN | tcp::ACK, 1, 10)));
    assert_eq!(state(&table, 1), Some(FlowState::Closing));
    // Still there (RFC 5382: ≥ 4 min) for the last ACKs and retransmissions.
    assert!(rewritten(back(
        &mut table,
        tcp::FIN | tcp::ACK,
        1,
        10 + 4 * MIN - 1
    )));
    assert!(rewritten(out(&mut table, tcp::ACK, 1, 10 + 4 * MIN - 1)));
    assert_eq!(
        out(&mut table, tcp::ACK, 1, 10 + 8 * MIN),
        Decision::Drop(DropReason::Untracked)
    );
    // RST (either way): held 4 min too (RFC 7857 §2.2); a SYN reopens.
    assert!(rewritten(out(&mut table, tcp::SYN, 2, 0)));
    assert!(rewritten(back(&mut table, tcp::SYN | tcp::ACK, 2, 0)));
    assert!(rewritten(back(&mut table, tcp::RST, 2, 5)));
    assert_eq!(state(&table, 2), Some(FlowState::Closing));
    assert!(rewritten(out(&mut table, tcp::SYN, 2, 6)));
    assert_eq!(state(&table, 2), Some(FlowState::SynSent));
    table.check().unwrap();
}

#[test]
fn the_defaults_keep_the_rfc_minimums_and_a_flow_costs_what_the_docs_say() {
    assert!(Config::DEFAULT.meets_rfcs());
    assert_eq!(Config::RFC_MIN.tcp_idle_ms, (2 * 60 + 4) * MIN);
    assert_eq!(Config::RFC_MIN.tcp_transitory_ms, 4 * MIN);
    assert_eq!(Config::RFC_MIN.udp_idle_ms, 2 * MIN);
    assert!(
        !Config {
            udp_idle_ms: 60_000,
            ..Config::DEFAULT
        }
        .meets_rfcs()
    );
    // docs/nat.md states the figure.
    assert_eq!(ENTRY_BYTES, 120);
}

#[test]
fn nat_translates_both_ways_and_checks_the_key() {
    let mut t = nat(4, Config::DEFAULT, 42);
    let key = FlowKey {
        protocol: proto::TCP,
        src: ep4(1, 40000),
        dst: ep4(200, 80),
    };
    let proxy = ep4(99, 8080);
    t.insert(key, proxy, tcp::SYN, 0).unwrap();
    assert_eq!(t.outbound(&key, tcp::ACK, 10), Some(proxy));
    assert_eq!(
        t.inbound(proto::TCP, &proxy, &key.src, tcp::SYN | tcp::ACK, 20),
        Some(key.dst)
    );
    assert_eq!(
        t.inbound(proto::TCP, &ep4(98, 8080), &key.src, 0, 20),
        None,
        "only the proxy's replies"
    );
    assert_eq!(
        t.inbound(proto::UDP, &proxy, &key.src, 0, 20),
        None,
        "protocol is part of the key"
    );
    // Reverse-key collision: same client port to another destination, same proxy.
    let other = FlowKey {
        dst: ep4(201, 80),
        ..key
    };
    assert_eq!(
        t.insert(other, proxy, tcp::SYN, 30),
        Err(InsertError::Collision)
    );
    // UDP idle.
    let u = FlowKey {
        protocol: proto::UDP,
        ..key
    };
    t.insert(u, proxy, 0, 0).unwrap();
    assert_eq!(
        t.inbound(proto::UDP, &proxy, &key.src, 0, 5 * MIN - 1),
        Some(key.dst)
    );
    assert_eq!(t.inbound(proto::UDP, &proxy, &key.src, 0, 10 * MIN), None);
}

fn ep4(a: u8, port: u16) -> Endpoint {
    Endpoint {
        addr: IpAddr::V4([10, 0, 0, a]),
        port,
    }
}

#[derive(Debug, Clone)]
enum Op {
    Insert(u8, u16, u8, u8),
    Out(u8, u16, u8, u8),
    In(u8, u16, u8),
    Advance(u16),
}

const FLAGS: [u8; 6] = [
    tcp::SYN,
    tcp::ACK,
    tcp::SYN | tcp::ACK,
    tcp::FIN | tcp::ACK,
    tcp::RST,
    0,
];

/// The model's state machine, written from the RFCs' wording, not from the table's.
fn model_next(s: FlowState, flags: u8, outbound: bool) -> FlowState {
    use FlowState::*;
    let (syn, ack, fin, rst) = (
        flags & tcp::SYN != 0,
        flags & tcp::ACK != 0,
        flags & tcp::FIN != 0,
        flags & tcp::RST != 0,
    );
    match s {
        UdpNew => {
            if outbound {
                UdpNew
            } else {
                UdpReplied
            }
        }
        UdpReplied => UdpReplied,
        _ if fin || rst => Closing,
        SynSent if !outbound && syn && ack => Established,
        Closing if outbound && syn && !ack => SynSent,
        s => s,
    }
}

#[derive(Debug, Clone, Copy)]
struct M {
    proxy: Endpoint,
    state: FlowState,
    last: u64,
    seq: u64,
}

proptest! {
    /// The table behaves like a simple map model under random operations:
    /// lookups both ways, the state machine, expiry per state, capacity,
    /// reclamation (a full table with an expired flow always makes room),
    /// early eviction of exactly the least recently active unestablished
    /// flow, collisions; and its internal invariants hold throughout.
    #[test]
    fn nat_matches_a_model(ops in proptest::collection::vec(
        prop_oneof![
            (0u8..6, 0u16..6, 0u8..3, 0u8..6).prop_map(|(a, p, d, f)| Op::Insert(a, p, d, f)),
            (0u8..6, 0u16..6, 0u8..3, 0u8..6).prop_map(|(a, p, d, f)| Op::Out(a, p, d, f)),
            (0u8..6, 0u16..6, 0u8..6).prop_map(|(a, p, f)| Op::In(a, p, f)),
            (0u16..400).prop_map(Op::Advance),
        ], 1..300)) {
        use std::collections::HashMap;
        let cfg = Config { tcp_idle_ms: 1000, tcp_transitory_ms: 100, udp_idle_ms: 300 };
        let timeout = |s: FlowState| match s {
            FlowState::Established => 1000,
            FlowState::SynSent | FlowState::Closing => 100,
            _ => 300,
        };
        let mut t = nat(8, cfg, 1);
        let mut m: HashMap<FlowKey, M> = HashMap::new();
        let mut now = 0u64;
        let mut seq = 0u64;
        let mut evicted = 0u64;
        let proxy = ep4(99, 3128);
        let key_of = |a: u8, p: u16, d: u8| FlowKey {
            protocol: if d == 2 { proto::UDP } else { proto::TCP },
            src: ep4(a, p),
            dst: ep4(200 + d, 80),
        };
        for op in ops {
            let live = |m: &HashMap<FlowKey, M>, k: &FlowKey, now: u64| m.get(k).is_some_and(|v| now < v.last + timeout(v.state));
            match op {
                Op::Insert(a, p, d, f) => {
                    let key = key_of(a, p, d);
                    let flags = if d == 2 { 0 } else { FLAGS[f as usize] };
                    m.remove(&key);
                    let collide = m.iter().any(|(k, v)| k.src == key.src && k.protocol == key.protocol && k.dst != key.dst && now < v.last + timeout(v.state));
                    let dead = m.iter().filter(|(_, v)| now >= v.last + timeout(v.state)).count();
                    let full = !collide && m.len() >= 8;
                    let got = t.insert(key, proxy, flags, now);
                    // Expired flows the table reclaimed leave the model too.
                    m.retain(|k, v| now < v.last + timeout(v.state) || t.flows().any(|f| f.key == *k));
                    match got {
                        Ok(f) => {
                            prop_assert!(!collide);
                            prop_assert_eq!(f.state, if d == 2 { FlowState::UdpNew } else { model_next(FlowState::SynSent, flags, true) });
                            if full && dead == 0 {
                                // Early eviction: the least recently active unestablished flow.
                                // (of each kind the oldest; on a tie of time, the TCP one)
                                let oldest = |s: FlowState| m.iter()
                                    .filter(|(_, v)| v.state == s)
                                    .min_by_key(|(_, v)| v.seq)
                                    .map(|(k, v)| (v.last, *k));
                                let victim = match (oldest(FlowState::SynSent), oldest(FlowState::UdpNew)) {
                                    (Some(a), Some(b)) => Some(if a.0 <= b.0 { a.1 } else { b.1 }),
                                    (a, b) => a.or(b).map(|x| x.1),
                                };
                                prop_assert!(victim.is_some(), "a full table evicted an established flow");
                                let victim = victim.unwrap();
                                prop_assert!(!t.flows().any(|f| f.key == victim));
                                m.remove(&victim);
                                evicted += 1;
                            }
                            seq += 1;
                            m.insert(key, M { proxy, state: f.state, last: now, seq });
                        }
                        Err(InsertError::Collision) => prop_assert!(collide),
                        Err(InsertError::Full) => {
                            prop_assert!(full, "full with {} live", m.len());
                            prop_assert_eq!(dead, 0, "an expired flow was not reclaimed");
                            prop_assert!(!m.values().any(|v| v.state.unestablished()), "an unestablished flow was not evicted");
                        }
                    }
                    prop_assert_eq!(t.stats().evicted, evicted);
                }
                Op::Out(a, p, d, f) => {
                    let key = key_of(a, p, d);
                    let flags = if d == 2 { 0 } else { FLAGS[f as usize] };
                    let got = t.outbound(&key, flags, now);
                    let want = if live(&m, &key, now) {
                        seq += 1;
                        let v = m.get_mut(&key).unwrap();
                        v.last = now;
                        v.seq = seq;
                        v.state = model_next(v.state, flags, true);
                        Some(v.proxy)
                    } else {
                        m.remove(&key);
                        None
                    };
                    prop_assert_eq!(got, want);
                }
                Op::In(a, p, f) => {
                    for protocol in [proto::TCP, proto::UDP] {
                        let flags = if protocol == proto::UDP { 0 } else { FLAGS[f as usize] };
                        let got = t.inbound(protocol, &proxy, &ep4(a, p), flags, now);
                        let k = m.keys().find(|k| k.protocol == protocol && k.src == ep4(a, p)).copied();
                        let want = match k {
                            Some(k) if live(&m, &k, now) => {
                                seq += 1;
                                let v = m.get_mut(&k).unwrap();
                                v.last = now;
                                v.seq = seq;
                                v.state = model_next(v.state, flags, false);
                                Some(k.dst)
                            }
                            Some(k) => {
                                m.remove(&k);
                                None
                            }
                            None => None,
                        };
                        prop_assert_eq!(got, want);
                    }
                }
                Op::Advance(d) => now += u64::from(d),
            }
            // Every live model flow is in the table with the model's state.
            for (k, v) in &m {
                if now < v.last + timeout(v.state) {
                    let f = t.flows().find(|f| f.key == *k);
                    prop_assert!(f.is_some(), "live flow {:?} missing", k);
                    prop_assert_eq!(f.unwrap().state, v.state);
                }
            }
            prop_assert!(t.len() >= m.values().filter(|v| now < v.last + timeout(v.state)).count());
            prop_assert_eq!(t.check(), Ok(()));
        }
    }
}

mod storage {
    use super::*;
    use crate::net::nat::BadCapacity;

    fn ep(a: [u8; 4], port: u16) -> Endpoint {
        Endpoint {
            addr: IpAddr::V4(a),
            port,
        }
    }

    #[test]
    fn capacities_must_be_powers_of_two() {
        for n in [0usize, 1, 3, 1000] {
            assert_eq!(
                NatTable::new(vec![Entry::EMPTY; n], Config::DEFAULT, 1).err(),
                Some(BadCapacity(n))
            );
        }
        assert!(NatTable::new([Entry::EMPTY; 4], Config::DEFAULT, 1).is_ok());
    }

    #[test]
    fn a_reset_table_reuses_freed_entries() {
        let mut t = NatTable::new([Entry::EMPTY; 2], Config::DEFAULT, 1).unwrap();
        t.reset(Config::DEFAULT, 0x1234);
        let key = |port| FlowKey {
            protocol: proto::UDP,
            src: ep([10, 0, 0, 1], port),
            dst: ep([203, 0, 113, 10], 53),
        };
        let proxy = ep([192, 0, 2, 1], 3128);
        let up = |t: &mut NatTable<[Entry; 2]>, port, now| {
            t.insert(key(port), proxy, 0, now).unwrap();
            t.inbound(proto::UDP, &proxy, &ep([10, 0, 0, 1], port), 0, now)
                .unwrap();
        };
        up(&mut t, 1000, 0);
        up(&mut t, 1001, 0);
        assert_eq!(t.insert(key(1002), proxy, 0, 0), Err(InsertError::Full));
        let later = Config::DEFAULT.udp_idle_ms;
        assert_eq!(t.sweep(later, 8), 2);
        assert!(t.is_empty());
        up(&mut t, 2000, later);
        up(&mut t, 2001, later);
        assert_eq!(t.insert(key(2002), proxy, 0, later), Err(InsertError::Full));
        assert_eq!(t.stats().expired, 2);
        assert_eq!(
            t.client_flow(&ep([10, 0, 0, 1], 2001), later)
                .map(|f| f.key.dst),
            Some(ep([203, 0, 113, 10], 53))
        );
        assert_eq!(t.client_flow(&ep([10, 0, 0, 1], 1000), later), None);
        t.check().unwrap();
    }
}

/// Found by the packet_path fuzz target: an IPv6 "TCP" packet whose payload
/// length (9) leaves less room than a TCP header, followed by padding. It was
/// redirected, its port rewritten inside the payload and its checksum field
/// written in the padding, so the 9 bytes the length covers no longer summed
/// to their checksum. Such a packet hides its ports: dropped as unparseable,
/// nothing rewritten. The same for IPv4, UDP and ICMPv6.
#[test]
fn a_transport_header_longer_than_the_ip_payload_is_malformed() {
    for (v6, protocol, room) in [
        (true, 6u8, 19usize),
        (false, 6, 19),
        (true, 17, 7),
        (false, 17, 7),
        (true, 58, 3),
    ] {
        let mut p = if v6 {
            let mut p = vec![0u8; 40];
            p[0] = 0x60;
            p[4..6].copy_from_slice(&(room as u16).to_be_bytes());
            p[6] = protocol;
            p[7] = 64;
            p[8] = 0xfd;
            p[23] = 1;
            p[24..40].copy_from_slice(&[0x20, 1, 0xd, 0xb8, 2, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10]);
            p
        } else {
            let mut p = vec![0u8; 20];
            p[0] = 0x45;
            p[2..4].copy_from_slice(&((20 + room) as u16).to_be_bytes());
            p[8] = 64;
            p[9] = protocol;
            p[12..16].copy_from_slice(&[10, 0, 0, 1]);
            p[16..20].copy_from_slice(&[203, 0, 113, 10]);
            crate::net::wire::ipv4::Packet::new_unchecked(&mut p[..]).fill_checksum();
            p
        };
        // The transport bytes the length covers, then padding up to a full
        // header (the port 80 within reach of the rewrite).
        let mut l4 = vec![0u8; 24];
        l4[0..2].copy_from_slice(&40000u16.to_be_bytes());
        l4[2..4].copy_from_slice(&80u16.to_be_bytes());
        p.extend_from_slice(&l4);
        let before = p.clone();
        let n = p.len();
        let mut table = Table::new(vec![Entry::EMPTY; 16], Config::DEFAULT, 1).unwrap();
        let d = filter::output(&mut p, n, &mut table, &FixedPolicy::EXAMPLE, 0);
        assert_eq!(
            d,
            Decision::Drop(DropReason::Unparseable),
            "v6 {v6} protocol {protocol} room {room}"
        );
        assert_eq!(p, before, "nothing rewritten");
        // Without the padding too.
        let t = crate::net::wire::ip::transport(&before[..before.len() - 24 + room]);
        assert_eq!(t, Err(crate::net::wire::Error::ShortTransport));
    }
}
