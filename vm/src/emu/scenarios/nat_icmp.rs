//! `nat-icmp4`/`nat-icmp6`: ICMP errors about a NATed UDP flow, produced by
//! real stacks (smoltcp answers a datagram to a port without a socket with a
//! port-unreachable error quoting it), through the IP filters:
//!
//! 1. the client's request to the origin is redirected to the proxy host, which
//!    answers it (the flow exists);
//! 2. **inbound**: the proxy host's socket is gone; the client's next datagram
//!    makes the proxy host send port unreachable (outer source: the proxy,
//!    quoting client → proxy). It must reach the client as an error from the
//!    origin about the client's own datagram (outer source and quoted
//!    destination: the origin);
//! 3. **outbound**: the client's socket is gone; a late datagram from the proxy
//!    (seen by the client as from the origin) makes the client send port
//!    unreachable to the origin, quoting origin → client. It must reach the
//!    proxy host as an error to the proxy about the proxy's own datagram.
//!
//! Every ICMP error leaving the filters is checked here with etherparse (outer
//! IPv4 header checksum, ICMP/ICMPv6 checksum, quoted IPv4 header checksum and
//! quoted UDP checksum), independently of `common::net`.

use etherparse::{Ipv4HeaderSlice, Ipv6HeaderSlice, SlicedPacket, TransportSlice, UdpHeaderSlice};
use smoltcp::socket::udp;
use smoltcp::wire::{IpAddress, IpEndpoint};

use super::stacks::{Host, Plan, defer_checksums, udp_socket};
use super::traffic::{Wire, ip_path};
use crate::emu::kernel::events::step;
use crate::emu::kernel::flush_log;

const CLIENT_PORT: u16 = 5000;

/// What etherparse sees in an ICMP error: outer (src, dst), and the quoted
/// packet's (src, dst, src port, dst port, whether its UDP checksum is valid).
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    outer: (IpAddress, IpAddress),
    quoted: (IpEndpoint, IpEndpoint),
    quoted_udp_checksum_ok: bool,
}

fn addr(b: &[u8]) -> Option<IpAddress> {
    match b.len() {
        4 => Some(IpAddress::v4(b[0], b[1], b[2], b[3])),
        16 => Some(IpAddress::Ipv6(<[u8; 16]>::try_from(b).ok()?.into())),
        _ => None,
    }
}

/// Checks an ICMP error with etherparse; `Err` says what is wrong.
fn examine(p: &[u8]) -> Result<Seen, String> {
    let s = SlicedPacket::from_ip(p).map_err(|e| format!("etherparse: {e}"))?;
    let net = s.net.as_ref().ok_or("no IP layer")?;
    let (src, dst) = if let Some(v4) = net.ipv4_ref() {
        let h = v4.header().to_header();
        if h.calc_header_checksum() != h.header_checksum {
            return Err("bad outer IPv4 header checksum".into());
        }
        (h.source.to_vec(), h.destination.to_vec())
    } else {
        let h = net.ipv6_ref().ok_or("no IP header")?.header();
        (h.source().to_vec(), h.destination().to_vec())
    };
    let quote = match &s.transport {
        Some(TransportSlice::Icmpv4(i)) => {
            if i.icmp_type().calc_checksum(i.payload()) != i.checksum() {
                return Err("bad ICMP checksum".into());
            }
            i.payload().to_vec()
        }
        Some(TransportSlice::Icmpv6(i)) => {
            let (s16, d16) = (
                <[u8; 16]>::try_from(src.as_slice()).map_err(|_| "address")?,
                <[u8; 16]>::try_from(dst.as_slice()).map_err(|_| "address")?,
            );
            let c = i
                .icmp_type()
                .calc_checksum(s16, d16, i.payload())
                .map_err(|e| e.to_string())?;
            if c != i.checksum() {
                return Err("bad ICMPv6 checksum".into());
            }
            i.payload().to_vec()
        }
        other => return Err(format!("not ICMP: {other:?}")),
    };
    let (qs, qd, l4) = if quote.first().is_some_and(|b| b >> 4 == 4) {
        let h = Ipv4HeaderSlice::from_slice(&quote).map_err(|e| format!("quoted IPv4: {e}"))?;
        if h.to_header().calc_header_checksum() != h.header_checksum() {
            return Err("bad quoted IPv4 header checksum".into());
        }
        (
            h.source().to_vec(),
            h.destination().to_vec(),
            h.slice().len(),
        )
    } else {
        let h = Ipv6HeaderSlice::from_slice(&quote).map_err(|e| format!("quoted IPv6: {e}"))?;
        (h.source().to_vec(), h.destination().to_vec(), 40)
    };
    let udp_bytes = quote.get(l4..).ok_or("quote ends before UDP")?;
    let u = UdpHeaderSlice::from_slice(udp_bytes).map_err(|e| format!("quoted UDP: {e}"))?;
    // The quote holds the whole datagram here (smoltcp quotes up to the minimum MTU).
    let payload = udp_bytes
        .get(8..usize::from(u.length()))
        .ok_or("quoted UDP truncated")?;
    let computed = match (qs.len(), qd.len()) {
        (4, 4) => u.to_header().calc_checksum_ipv4_raw(
            qs.as_slice().try_into().map_err(|_| "address")?,
            qd.as_slice().try_into().map_err(|_| "address")?,
            payload,
        ),
        _ => u.to_header().calc_checksum_ipv6_raw(
            qs.as_slice().try_into().map_err(|_| "address")?,
            qd.as_slice().try_into().map_err(|_| "address")?,
            payload,
        ),
    }
    .map_err(|e| e.to_string())?;
    let ep = |a: &[u8], port| addr(a).map(|a| IpEndpoint::new(a, port)).ok_or("address");
    Ok(Seen {
        outer: (addr(&src).ok_or("address")?, addr(&dst).ok_or("address")?),
        quoted: (ep(&qs, u.source_port())?, ep(&qd, u.destination_port())?),
        quoted_udp_checksum_ok: u.checksum() == 0 && qs.len() == 4 || computed == u.checksum(),
    })
}

/// Client → filters' output → what reaches the wire.
fn client_out(client: &mut Host, wire: &mut Wire) -> Vec<Vec<u8>> {
    while let Some(mut p) = client.dev.tx.pop_front() {
        let req = defer_checksums(&mut p);
        ip_path(wire, p, req, true, None);
    }
    wire.out.drain(..).collect()
}

/// Proxy → filters' input → what reaches the client's stack.
fn proxy_in(proxy: &mut Host, wire: &mut Wire) -> Vec<Vec<u8>> {
    while let Some(p) = proxy.dev.tx.pop_front() {
        ip_path(wire, p, 0, false, None);
    }
    wire.delivered_in.drain(..).collect()
}

fn is_icmp(p: &[u8]) -> bool {
    crate::emu::kernel::packet::transport(p).is_some_and(|t| t.protocol == 1 || t.protocol == 58)
}

/// The scenario; `v6` picks the family.
pub fn nat_icmp(v6: bool) -> bool {
    let plan = if v6 { Plan::v6() } else { Plan::v4() };
    let name = if v6 { "nat-icmp6" } else { "nat-icmp4" };
    let client_ep = IpEndpoint::new(plan.client, CLIENT_PORT);
    let mut client = Host::new(plan.client);
    let mut proxy = Host::new(plan.proxy.addr);
    let mut wire = Wire::default();
    let mut ok = true;

    // 1. The flow: a request answered by the proxy host.
    let ch = client.sockets.add(udp_socket());
    let ph = proxy.sockets.add(udp_socket());
    let _ = client.sockets.get_mut::<udp::Socket>(ch).bind(CLIENT_PORT);
    let _ = proxy
        .sockets
        .get_mut::<udp::Socket>(ph)
        .bind(plan.proxy.port);
    let _ = client
        .sockets
        .get_mut::<udp::Socket>(ch)
        .send_slice(b"request", plan.origin);
    client.poll(0);
    for p in client_out(&mut client, &mut wire) {
        proxy.dev.rx.push_back(p);
    }
    proxy.poll(1);
    let asked = proxy
        .sockets
        .get_mut::<udp::Socket>(ph)
        .recv()
        .map(|(_, m)| m.endpoint)
        .ok();
    let _ = proxy
        .sockets
        .get_mut::<udp::Socket>(ph)
        .send_slice(b"answer", client_ep);
    proxy.poll(2);
    for p in proxy_in(&mut proxy, &mut wire) {
        client.dev.rx.push_back(p);
    }
    client.poll(3);
    let answered = client
        .sockets
        .get_mut::<udp::Socket>(ch)
        .recv()
        .map(|(_, m)| m.endpoint)
        .ok();
    let flow = asked == Some(client_ep) && answered == Some(plan.origin);
    step(
        format!("{name} flow"),
        flow,
        format!(
            "the proxy host got the request from {asked:?}; the client got the answer from {answered:?}"
        ),
    );
    ok &= flow;

    // 2. Inbound: the proxy host's socket is gone; its stack answers port unreachable.
    proxy.sockets.remove(ph);
    let _ = client
        .sockets
        .get_mut::<udp::Socket>(ch)
        .send_slice(b"again", plan.origin);
    client.poll(4);
    for p in client_out(&mut client, &mut wire) {
        proxy.dev.rx.push_back(p);
    }
    proxy.poll(5);
    let errors: Vec<Vec<u8>> = proxy_in(&mut proxy, &mut wire)
        .into_iter()
        .filter(|p| is_icmp(p))
        .collect();
    let want = Seen {
        outer: (plan.origin.addr, plan.client),
        quoted: (client_ep, plan.origin),
        quoted_udp_checksum_ok: true,
    };
    let got: Vec<Result<Seen, String>> = errors.iter().map(|p| examine(p)).collect();
    let inbound = got.len() == 1 && got.first().is_some_and(|g| g.as_ref() == Ok(&want));
    step(
        format!("{name} inbound error"),
        inbound,
        format!("the client received {got:?} (want one port unreachable: {want:?})"),
    );
    ok &= inbound;
    for p in errors {
        client.dev.rx.push_back(p);
    }
    client.poll(6);

    // 3. Outbound: the client's socket is gone; a late datagram from the proxy
    //    host (as from the origin) draws port unreachable from the client.
    client.sockets.remove(ch);
    let ph = proxy.sockets.add(udp_socket());
    let _ = proxy
        .sockets
        .get_mut::<udp::Socket>(ph)
        .bind(plan.proxy.port);
    let _ = proxy
        .sockets
        .get_mut::<udp::Socket>(ph)
        .send_slice(b"late", client_ep);
    proxy.poll(7);
    for p in proxy_in(&mut proxy, &mut wire) {
        client.dev.rx.push_back(p);
    }
    client.poll(8);
    let errors: Vec<Vec<u8>> = client_out(&mut client, &mut wire)
        .into_iter()
        .filter(|p| is_icmp(p))
        .collect();
    let want = Seen {
        outer: (plan.client, plan.proxy.addr),
        quoted: (plan.proxy, client_ep),
        quoted_udp_checksum_ok: true,
    };
    let got: Vec<Result<Seen, String>> = errors.iter().map(|p| examine(p)).collect();
    let outbound = got.len() == 1 && got.first().is_some_and(|g| g.as_ref() == Ok(&want));
    step(
        format!("{name} outbound error"),
        outbound,
        format!("the proxy host received {got:?} (want one port unreachable: {want:?})"),
    );
    ok &= outbound;

    flush_log();
    for r in wire.rejected.iter().take(5) {
        step("wire: rejected", false, r.clone());
    }
    for d in wire.dropped.iter().take(5) {
        step("wire: dropped", false, d.clone());
    }
    ok && wire.rejected.is_empty() && wire.dropped.is_empty()
}
