//! Real TCP/IP stacks (smoltcp) on both sides of the emulated IP layer, for the
//! IP filter scenarios: a **client** host whose every outbound packet goes
//! through the registered filters' `ipf_output` (with its transport checksum
//! deferred, as xnu hands packets to filters: IPv4 header checksum zero, the
//! TCP/UDP field holding the pseudo-header seed) and whose every inbound packet
//! goes through `ipf_input`; and a remote **proxy** host that receives what
//! reaches the wire. Packets the client sends that were not redirected reach no
//! host and are counted as escaped.
//!
//! Every packet that leaves the filters (onto the wire or up to the client's
//! stack) is checked by etherparse (see [`crate::emu::kernel::packet::etherparse_verify`])
//! after the emulated NIC completed any checksum still left to it.
//!
//! Scenarios: `nat-tcp4`, `nat-tcp6` (handshake, 1 MiB each way, clean close),
//! `nat-udp4`, `nat-udp6` (request/response).

use std::collections::VecDeque;

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::socket::{tcp, udp};
use smoltcp::time::Instant;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, IpEndpoint, Ipv4Address, Ipv6Address};

use super::traffic::{Wire, ip_path};
use crate::emu::abi::mbuf::{REQ_IP, REQ_TCP, REQ_UDP};
use crate::emu::kernel::events::step;
use crate::emu::kernel::flush_log;

/// Bytes sent each way in the TCP scenarios, unless `--transfer` says otherwise.
pub const TRANSFER: usize = 1 << 20;

/// The bytes each way `--transfer` set (0: [`TRANSFER`]).
static TRANSFER_SET: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Sets the bytes each way of `nat-tcp4`/`nat-tcp6` (`--transfer`; the bench
/// runs two sizes and takes the difference as a tracked flow's per-packet cost).
pub fn set_transfer(bytes: usize) {
    TRANSFER_SET.store(bytes, std::sync::atomic::Ordering::Relaxed);
}

/// The bytes each way of the TCP scenarios.
fn transfer() -> usize {
    match TRANSFER_SET.load(std::sync::atomic::Ordering::Relaxed) {
        0 => TRANSFER,
        n => n,
    }
}
/// Simulated milliseconds before a scenario gives up.
const MAX_MS: i64 = 600_000;

/// The addresses of the scenarios (documentation ranges; nothing leaves the process).
pub struct Plan {
    pub client: IpAddress,
    pub origin: IpEndpoint,
    pub proxy: IpEndpoint,
}

impl Plan {
    pub fn v4() -> Plan {
        Plan {
            client: IpAddress::v4(10, 0, 0, 1),
            origin: IpEndpoint::new(IpAddress::v4(203, 0, 113, 10), 80),
            proxy: IpEndpoint::new(IpAddress::v4(192, 0, 2, 1), 3128),
        }
    }

    pub fn v6() -> Plan {
        Plan {
            client: IpAddress::Ipv6(Ipv6Address::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1)),
            origin: IpEndpoint::new(
                IpAddress::Ipv6(Ipv6Address::new(0x2001, 0xdb8, 0x203, 0, 0, 0, 0, 0x10)),
                80,
            ),
            proxy: IpEndpoint::new(
                IpAddress::Ipv6(Ipv6Address::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 1)),
                3128,
            ),
        }
    }
}

/// A point-to-point IP "cable": packets the stack sends and packets it will receive.
#[derive(Default)]
pub struct Pipe {
    pub rx: VecDeque<Vec<u8>>,
    pub tx: VecDeque<Vec<u8>>,
}

pub struct Rx(Vec<u8>);
pub struct Tx<'a>(&'a mut VecDeque<Vec<u8>>);

impl RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut b = vec![0u8; len];
        let r = f(&mut b);
        self.0.push_back(b);
        r
    }
}

impl Device for Pipe {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _t: Instant) -> Option<(Rx, Tx<'_>)> {
        let p = self.rx.pop_front()?;
        Some((Rx(p), Tx(&mut self.tx)))
    }

    fn transmit(&mut self, _t: Instant) -> Option<Tx<'_>> {
        Some(Tx(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ip;
        c.max_transmission_unit = 1500;
        c
    }
}

/// One smoltcp host.
pub struct Host {
    pub iface: Interface,
    pub dev: Pipe,
    pub sockets: SocketSet<'static>,
}

impl Host {
    pub fn new(addr: IpAddress) -> Host {
        let mut dev = Pipe::default();
        let iface_cfg = Config::new(HardwareAddress::Ip);
        let mut iface = Interface::new(iface_cfg, &mut dev, Instant::from_millis(0));
        iface.update_ip_addrs(|a| {
            let _ = a.push(match addr {
                IpAddress::Ipv4(_) => IpCidr::new(addr, 24),
                IpAddress::Ipv6(_) => IpCidr::new(addr, 64),
            });
        });
        // Everything else is "out there", through a gateway on the link.
        match addr {
            IpAddress::Ipv4(a) => {
                let o = a.octets();
                let _ = iface
                    .routes_mut()
                    .add_default_ipv4_route(Ipv4Address::new(o[0], o[1], o[2], 254));
            }
            IpAddress::Ipv6(a) => {
                let mut o = a.segments();
                o[7] = 0xfe;
                let _ = iface
                    .routes_mut()
                    .add_default_ipv6_route(Ipv6Address::from(o));
            }
        }
        Host {
            iface,
            dev,
            sockets: SocketSet::new(vec![]),
        }
    }

    pub fn poll(&mut self, ms: i64) {
        let _ = self
            .iface
            .poll(Instant::from_millis(ms), &mut self.dev, &mut self.sockets);
    }
}

/// Counts of one run.
#[derive(Default, Debug)]
pub struct Counts {
    pub client_sent: usize,
    pub proxy_sent: usize,
    pub to_proxy: usize,
    pub escaped: Vec<String>,
    pub to_client: usize,
    pub wrong_source: Vec<String>,
}

fn endpoints(p: &[u8]) -> Option<(IpAddress, u16, IpAddress, u16)> {
    let t = crate::emu::kernel::packet::transport(p)?;
    let addr = |a: Vec<u8>| match a.len() {
        4 => IpAddress::v4(a[0], a[1], a[2], a[3]),
        _ => IpAddress::Ipv6(Ipv6Address::from(
            <[u8; 16]>::try_from(a.as_slice()).unwrap_or([0; 16]),
        )),
    };
    let port = |o: usize| u16::from_be_bytes([*p.get(o)?, *p.get(o + 1)?]).into();
    let sp: Option<u16> = port(t.offset);
    let dp: Option<u16> = port(t.offset + 2);
    Some((addr(t.src), sp?, addr(t.dst), dp?))
}

/// Makes an outbound packet look as xnu hands it to filters, checksums left to
/// the NIC: IPv4 header checksum zero, the TCP/UDP field holding the
/// pseudo-header seed. Returns the checksums requested of the NIC.
pub(crate) fn defer_checksums(p: &mut [u8]) -> u32 {
    let l4 = match crate::emu::kernel::packet::transport(p).map(|t| t.protocol) {
        Some(6) => REQ_TCP,
        Some(17) => REQ_UDP,
        _ => 0,
    };
    let mut req = l4;
    if p.first().is_some_and(|b| b >> 4 == 4) {
        p[10] = 0;
        p[11] = 0;
        req |= REQ_IP;
    }
    if l4 != 0 {
        crate::emu::kernel::packet::seed_l4(p);
    }
    req
}

/// Moves packets once in each direction: client → filters' output → wire →
/// proxy, and proxy → filters' input → client.
pub(crate) fn shuttle(
    client: &mut Host,
    proxy: &mut Host,
    plan: &Plan,
    wire: &mut Wire,
    n: &mut Counts,
) {
    while let Some(mut p) = client.dev.tx.pop_front() {
        n.client_sent += 1;
        let req = defer_checksums(&mut p);
        ip_path(wire, p, req, true, None);
        for q in wire.out.drain(..) {
            match endpoints(&q) {
                Some((_, _, d, dp)) if d == plan.proxy.addr && dp == plan.proxy.port => {
                    n.to_proxy += 1;
                    proxy.dev.rx.push_back(q);
                }
                e => n.escaped.push(format!("{e:?}")),
            }
        }
    }
    while let Some(p) = proxy.dev.tx.pop_front() {
        n.proxy_sent += 1;
        ip_path(wire, p, 0, false, None);
        for q in wire.delivered_in.drain(..) {
            match endpoints(&q) {
                Some((s, sp, _, _)) if s == plan.origin.addr && sp == plan.origin.port => {}
                e => n.wrong_source.push(format!("{e:?}")),
            }
            n.to_client += 1;
            client.dev.rx.push_back(q);
        }
    }
}

fn pattern(i: usize, salt: u8) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 9)) as u8 ^ salt
}

pub(crate) fn udp_socket() -> udp::Socket<'static> {
    udp::Socket::new(
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 8], vec![0; 8192]),
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 8], vec![0; 8192]),
    )
}

/// A TCP socket on `client` connecting from port 49152 to the plan's origin;
/// `None` (with a failed step) when smoltcp refuses.
fn connect_to_origin(client: &mut Host, plan: &Plan, name: &str) -> Option<SocketHandle> {
    let ch: SocketHandle = client.sockets.add(tcp_socket());
    let cx = client.iface.context();
    match client
        .sockets
        .get_mut::<tcp::Socket>(ch)
        .connect(cx, plan.origin, 49152)
    {
        Ok(()) => Some(ch),
        Err(e) => {
            step(name, false, format!("smoltcp connect: {e}"));
            None
        }
    }
}

pub(crate) fn tcp_socket() -> tcp::Socket<'static> {
    tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; 65536]),
        tcp::SocketBuffer::new(vec![0; 65536]),
    )
}

/// Sends what remains of `total` pattern bytes and reads what arrives,
/// checking it against the peer's pattern. Returns false on corrupt data.
pub(super) fn pump(
    s: &mut tcp::Socket<'_>,
    sent: &mut usize,
    got: &mut usize,
    total: usize,
    mine: u8,
    theirs: u8,
) -> bool {
    let mut ok = true;
    while s.can_send() && *sent < total {
        let chunk: Vec<u8> = (*sent..(*sent + 16384).min(total))
            .map(|i| pattern(i, mine))
            .collect();
        match s.send_slice(&chunk) {
            Ok(0) | Err(_) => break,
            Ok(k) => *sent += k,
        }
    }
    while s.can_recv() {
        let mut buf = [0u8; 16384];
        match s.recv_slice(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(k) => {
                ok &= buf[..k]
                    .iter()
                    .enumerate()
                    .all(|(j, &b)| b == pattern(*got + j, theirs));
                *got += k;
            }
        }
    }
    ok
}

pub(crate) fn report(name: &str, wire: &Wire, n: &Counts) -> bool {
    flush_log();
    let ok = wire.rejected.is_empty() && n.escaped.is_empty() && n.wrong_source.is_empty();
    for r in wire.rejected.iter().take(5) {
        step("wire: rejected", false, r.clone());
    }
    for e in n.escaped.iter().take(5) {
        step(
            "wire: escaped",
            false,
            format!("a client packet was not redirected: {e}"),
        );
    }
    for e in n.wrong_source.iter().take(5) {
        step(
            "client: wrong source",
            false,
            format!("a reply reached the client not as from the origin: {e}"),
        );
    }
    step(
        format!("{name} packets"),
        ok,
        format!(
            "client sent {} packets, {} reached the proxy; proxy sent {}, {} reached the client; {} packets checked by etherparse, {} rejected; {} dropped by filters",
            n.client_sent,
            n.to_proxy,
            n.proxy_sent,
            n.to_client,
            wire.verified,
            wire.rejected.len(),
            wire.dropped.len()
        ),
    );
    ok
}

/// `nat-tcp4`/`nat-tcp6`: handshake, [`TRANSFER`] bytes each way (or
/// `--transfer`'s), clean close.
pub fn nat_tcp(v6: bool, split: Option<usize>) -> bool {
    let total = transfer();
    let plan = if v6 { Plan::v6() } else { Plan::v4() };
    let name = if v6 { "nat-tcp6" } else { "nat-tcp4" };
    let mut client = Host::new(plan.client);
    let mut proxy = Host::new(plan.proxy.addr);
    let ph: SocketHandle = proxy.sockets.add(tcp_socket());
    let _ = proxy
        .sockets
        .get_mut::<tcp::Socket>(ph)
        .listen(plan.proxy.port);
    let Some(ch) = connect_to_origin(&mut client, &plan, name) else {
        return false;
    };
    let mut wire = Wire {
        split,
        ..Wire::default()
    };
    let mut n = Counts::default();
    let (mut c_sent, mut c_got, mut p_sent, mut p_got) = (0, 0, 0, 0);
    let (mut data_ok, mut established, mut client_saw, mut proxy_saw) = (true, false, None, None);
    let mut ms = 0;
    let mut closed_at = None;
    while ms < MAX_MS {
        client.poll(ms);
        {
            let s = client.sockets.get_mut::<tcp::Socket>(ch);
            if s.state() == tcp::State::Established {
                established = true;
                client_saw = s.remote_endpoint();
            }
            data_ok &= pump(s, &mut c_sent, &mut c_got, total, 0x5a, 0xa5);
            if c_sent == total && c_got == total && s.send_queue() == 0 && s.may_send() {
                s.close();
            }
        }
        shuttle(&mut client, &mut proxy, &plan, &mut wire, &mut n);
        proxy.poll(ms);
        {
            let s = proxy.sockets.get_mut::<tcp::Socket>(ph);
            if s.is_active() && proxy_saw.is_none() {
                proxy_saw = s.remote_endpoint().zip(s.local_endpoint());
            }
            data_ok &= pump(s, &mut p_sent, &mut p_got, total, 0xa5, 0x5a);
            if p_sent == total
                && p_got == total
                && s.send_queue() == 0
                && !s.may_recv()
                && s.may_send()
            {
                s.close();
            }
        }
        shuttle(&mut client, &mut proxy, &plan, &mut wire, &mut n);
        let cs = client.sockets.get::<tcp::Socket>(ch).state();
        let ps = proxy.sockets.get::<tcp::Socket>(ph).state();
        if matches!(cs, tcp::State::TimeWait | tcp::State::Closed) && ps == tcp::State::Closed {
            closed_at = Some(ms);
            break;
        }
        ms += 1;
    }
    let cs = client.sockets.get::<tcp::Socket>(ch).state();
    let ps = proxy.sockets.get::<tcp::Socket>(ph).state();
    let believed = client_saw == Some(plan.origin);
    step(
        format!("{name} handshake"),
        established && believed,
        format!(
            "client established: {established}; client's remote endpoint {client_saw:?} (origin {}); the proxy's connection (remote, local): {proxy_saw:?}",
            plan.origin
        ),
    );
    let transfer_ok = data_ok && c_got == total && p_got == total;
    step(
        format!("{name} transfer"),
        transfer_ok,
        format!(
            "client→proxy {p_got} of {total} bytes, proxy→client {c_got} of {total} bytes, data intact: {data_ok}"
        ),
    );
    let closed = closed_at.is_some();
    step(
        format!("{name} close"),
        closed,
        format!(
            "client {cs}, proxy {ps} after {} simulated ms",
            closed_at.unwrap_or(ms)
        ),
    );
    let ok = report(name, &wire, &n);
    ok && established && believed && transfer_ok && closed
}

/// `nat-block-tcp4`/`nat-block-tcp6`: with the origin's network blocked, the
/// client's SYNs (first and retransmitted) must all be taken by the filters:
/// nothing reaches the wire and the client never connects.
pub fn nat_blocked(v6: bool) -> bool {
    let plan = if v6 { Plan::v6() } else { Plan::v4() };
    let name = if v6 {
        "nat-block-tcp6"
    } else {
        "nat-block-tcp4"
    };
    let mut client = Host::new(plan.client);
    let mut proxy = Host::new(plan.proxy.addr);
    let Some(ch) = connect_to_origin(&mut client, &plan, name) else {
        return false;
    };
    let mut wire = Wire::default();
    let mut n = Counts::default();
    // Long enough for the SYN and several retransmissions (smoltcp's RTO starts at 1 s).
    for ms in (0..8_000).step_by(10) {
        client.poll(ms);
        shuttle(&mut client, &mut proxy, &plan, &mut wire, &mut n);
        proxy.poll(ms);
    }
    let state = client.sockets.get::<tcp::Socket>(ch).state();
    let ok = n.client_sent >= 2
        && n.to_proxy == 0
        && n.escaped.is_empty()
        && state == tcp::State::SynSent;
    step(
        format!("{name} blocked"),
        ok,
        format!(
            "client sent {} packets (SYN and retransmissions); {} reached the proxy, {} escaped un-redirected, {} taken by the filters; client {state}",
            n.client_sent,
            n.to_proxy,
            n.escaped.len(),
            wire.taken
        ),
    );
    flush_log();
    ok && wire.rejected.is_empty()
}

/// `nat-udp4`/`nat-udp6`: a request to the origin answered by the proxy.
pub fn nat_udp(v6: bool) -> bool {
    let plan = if v6 { Plan::v6() } else { Plan::v4() };
    let name = if v6 { "nat-udp6" } else { "nat-udp4" };
    let mut client = Host::new(plan.client);
    let mut proxy = Host::new(plan.proxy.addr);
    let ch = client.sockets.add(udp_socket());
    let ph = proxy.sockets.add(udp_socket());
    let _ = client.sockets.get_mut::<udp::Socket>(ch).bind(5000);
    let _ = proxy
        .sockets
        .get_mut::<udp::Socket>(ph)
        .bind(plan.proxy.port);
    let query = b"prx udp query".to_vec();
    let _ = client
        .sockets
        .get_mut::<udp::Socket>(ch)
        .send_slice(&query, plan.origin);
    let mut wire = Wire::default();
    let mut n = Counts::default();
    let mut answer = None;
    let mut proxy_saw = None;
    for ms in 0..200 {
        client.poll(ms);
        shuttle(&mut client, &mut proxy, &plan, &mut wire, &mut n);
        proxy.poll(ms);
        {
            let s = proxy.sockets.get_mut::<udp::Socket>(ph);
            if let Ok((data, meta)) = s.recv() {
                let reply = [b"answer to ".as_slice(), data].concat();
                proxy_saw = Some(meta.endpoint);
                let _ = s.send_slice(&reply, meta.endpoint);
            }
        }
        proxy.poll(ms);
        shuttle(&mut client, &mut proxy, &plan, &mut wire, &mut n);
        client.poll(ms);
        if let Ok((data, meta)) = client.sockets.get_mut::<udp::Socket>(ch).recv() {
            answer = Some((data.to_vec(), meta.endpoint));
            break;
        }
    }
    let ok = answer.as_ref().is_some_and(|(d, from)| {
        *d == [b"answer to ".as_slice(), &query].concat() && *from == plan.origin
    });
    step(
        format!("{name} exchange"),
        ok,
        format!(
            "the proxy got the request from {proxy_saw:?}; the client got {:?} from {:?} (expected from the origin {})",
            answer
                .as_ref()
                .map(|(d, _)| String::from_utf8_lossy(d).into_owned()),
            answer.as_ref().map(|(_, f)| *f),
            plan.origin
        ),
    );
    report(name, &wire, &n) && ok
}

/// One hostile packet and what the filter must do with it.
struct Hostile {
    what: &'static str,
    bytes: Vec<u8>,
    output: bool,
    expect: Outcome,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Left untouched: it reaches the wire (or is rejected there, when malformed).
    Passed,
    /// Translated to the proxy and re-injected.
    Redirected,
    /// Dropped by the filter.
    Dropped,
}

fn v4_udp(dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = etherparse::PacketBuilder::ipv4([10, 0, 0, 1], dst, 64)
        .udp(5000, 80)
        .write(&mut out, payload);
    out
}

fn v6_tcp(dst: [u8; 16], exts: usize, ext_units: u8) -> Vec<u8> {
    let mut out = Vec::new();
    let src = Ipv6Address::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1).octets();
    let _ = etherparse::PacketBuilder::ipv6(src, dst, 64)
        .tcp(40000, 80, 1, 1000)
        .syn()
        .write(&mut out, b"");
    if exts > 0 {
        let mut chain = Vec::new();
        for i in 0..exts {
            let mut h = vec![0u8; 8 * (usize::from(ext_units) + 1)];
            h[0] = if i + 1 == exts { 6 } else { 60 };
            h[1] = ext_units;
            h[2] = 1; // PadN over the rest
            h[3] = (h.len() - 4) as u8;
            chain.extend_from_slice(&h);
        }
        out[6] = 60;
        out.splice(40..40, chain);
        let plen = (out.len() - 40) as u16;
        out[4..6].copy_from_slice(&plen.to_be_bytes());
    }
    out
}

fn hostile_set() -> Vec<Hostile> {
    let origin4 = [203, 0, 113, 10];
    let origin6 = Ipv6Address::new(0x2001, 0xdb8, 0x203, 0, 0, 0, 0, 0x10).octets();
    let mut v = Vec::new();
    let mut h = |what, bytes, output, expect| {
        v.push(Hostile {
            what,
            bytes,
            output,
            expect,
        })
    };
    h(
        "10 bytes of an IPv4 header",
        vec![0x45, 0, 0, 60, 0, 0, 0, 0, 64, 17],
        true,
        Outcome::Passed,
    );
    let mut p = v4_udp(origin4, b"x");
    p[0] = 0x4f; // IHL 15 (60 bytes) in a 29-byte packet
    h("bogus IHL 15", p, true, Outcome::Passed);
    let mut p = v4_udp(origin4, b"x");
    p[0] = 0x43; // IHL 3
    h("bogus IHL 3", p, true, Outcome::Passed);
    let mut p = v4_udp(origin4, b"x");
    p[2..4].copy_from_slice(&1000u16.to_be_bytes());
    h(
        "IPv4 total length beyond the buffer",
        p,
        true,
        Outcome::Passed,
    );
    h(
        "IPv6, 9 extension headers, to a redirected destination",
        v6_tcp(origin6, 9, 0),
        true,
        Outcome::Dropped,
    );
    h(
        "IPv6, 8 extension headers, to a redirected destination",
        v6_tcp(origin6, 8, 0),
        true,
        Outcome::Redirected,
    );
    h(
        "IPv6, extension headers beyond the 256-byte header window",
        v6_tcp(origin6, 2, 20),
        true,
        Outcome::Dropped,
    );
    let mut p = v4_udp(origin4, &[7; 64]);
    p[6] = 0x20; // MF, offset 0: the first fragment
    crate::emu::kernel::packet::finalize_ip(&mut p);
    h(
        "IPv4 UDP first fragment to a redirected destination",
        p,
        true,
        Outcome::Redirected,
    );
    let mut p = v4_udp(origin4, &[7; 64]);
    p[6] = 0x00;
    p[7] = 0x09; // offset 72: a later fragment (no transport header)
    crate::emu::kernel::packet::finalize_ip(&mut p);
    h(
        "IPv4 non-first fragment to a redirected destination",
        p,
        true,
        Outcome::Passed,
    );
    let mut p = Vec::new();
    let src = Ipv6Address::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1).octets();
    let _ = etherparse::PacketBuilder::ipv6(src, origin6, 64)
        .udp(5000, 80)
        .write(&mut p, b"zero");
    p[46] = 0;
    p[47] = 0;
    h(
        "IPv6 UDP with checksum 0 to a redirected destination",
        p,
        true,
        Outcome::Dropped,
    );
    let mut p = Vec::new();
    let _ = etherparse::PacketBuilder::ipv4([10, 0, 0, 1], origin4, 64)
        .tcp(40001, 80, 5, 100)
        .ack(9)
        .write(&mut p, b"mid");
    h(
        "mid-stream TCP of an untracked redirected flow (never leaked to the origin)",
        p,
        true,
        Outcome::Dropped,
    );
    h("inbound: 3 bytes", vec![0x60, 0, 0], false, Outcome::Passed);
    let mut p = v4_udp([10, 0, 0, 1], b"in");
    p[0] = 0x4f;
    h("inbound: bogus IHL", p, false, Outcome::Passed);
    v
}

/// `nat-hostile`: malformed and unusual packets, whole and as two-mbuf chains
/// split inside the headers, through `ipf_output`/`ipf_input`; each must pass,
/// drop or be redirected as `common::net::filter` documents, with no fault,
/// leak or out-of-bounds access (the ledgers and the fault handler check those).
pub fn nat_hostile() -> bool {
    let mut ok = true;
    let proxy4 = Plan::v4().proxy.addr;
    let proxy6 = Plan::v6().proxy.addr;
    for split in [None, Some(7)] {
        for h in hostile_set() {
            let mut wire = Wire {
                split,
                ..Wire::default()
            };
            let req = if h.output { REQ_IP } else { 0 };
            ip_path(&mut wire, h.bytes.clone(), req, h.output, None);
            let reached: Vec<&Vec<u8>> = if h.output {
                wire.out.iter().collect()
            } else {
                wire.delivered_in.iter().collect()
            };
            let got = if let Some(p) = reached.first() {
                match endpoints(p) {
                    Some((_, _, d, _)) if d == proxy4 || d == proxy6 => Outcome::Redirected,
                    _ => Outcome::Passed,
                }
            } else if !wire.rejected.is_empty() {
                Outcome::Passed // untouched; the receiving stack rejects it
            } else {
                Outcome::Dropped
            };
            let good = got == h.expect && wire.dropped.is_empty();
            ok &= good;
            step(
                "hostile",
                good,
                format!(
                    "{}{}: {:?} (expected {:?}){}",
                    h.what,
                    if split.is_some() {
                        " [split chain]"
                    } else {
                        ""
                    },
                    got,
                    h.expect,
                    wire.rejected
                        .first()
                        .map(|r| format!("; wire: {r}"))
                        .unwrap_or_default()
                ),
            );
        }
    }
    flush_log();
    ok
}

/// `nat-expiry`: the emulated clock is advanced by the scenario so the NAT's
/// timeouts fire: a TCP flow idle for 2 h (macOS's keepalive interval) is
/// still translated; one idle for 2 h 4 min and more has expired and its next
/// packet is dropped, never sent to the origin; an unanswered SYN's entry
/// expires after 4 min; a UDP flow idle for more than 5 min opens a new entry
/// to the proxy. Every packet is checked at the wire: translated to the proxy,
/// delivered translated back, or dropped.
pub fn nat_expiry() -> bool {
    const MIN: u64 = 60_000_000_000;
    let origin = [203, 0, 113, 10];
    let proxy4 = Plan::v4().proxy.addr;
    let tcp = |flags: u8, sport: u16| {
        let mut out = Vec::new();
        let b = etherparse::PacketBuilder::ipv4([10, 0, 0, 1], origin, 64).tcp(sport, 80, 1, 1000);
        let b = match flags {
            0x02 => b.syn(),
            0x10 => b.ack(1),
            _ => b,
        };
        let _ = b.write(&mut out, b"");
        out
    };
    let synack = |dport: u16| {
        let mut out = Vec::new();
        let _ = etherparse::PacketBuilder::ipv4([192, 0, 2, 1], [10, 0, 0, 1], 64)
            .tcp(3128, dport, 1, 1000)
            .syn()
            .ack(2)
            .write(&mut out, b"");
        out
    };
    let udp = || v4_udp(origin, b"q");
    // (what, minutes to advance first, packet, outbound, expected)
    let plan: Vec<(&str, u64, Vec<u8>, bool, Outcome)> = vec![
        (
            "SYN opens the flow",
            0,
            tcp(0x02, 40000),
            true,
            Outcome::Redirected,
        ),
        (
            "the proxy's SYN-ACK comes back as the origin's",
            0,
            synack(40000),
            false,
            Outcome::Passed,
        ),
        ("ACK", 0, tcp(0x10, 40000), true, Outcome::Redirected),
        (
            "keepalive after 2 h idle",
            120,
            tcp(0x10, 40000),
            true,
            Outcome::Redirected,
        ),
        (
            "ACK after 2 h 5 min idle: expired, dropped",
            125,
            tcp(0x10, 40000),
            true,
            Outcome::Dropped,
        ),
        (
            "an unanswered SYN",
            0,
            tcp(0x02, 40001),
            true,
            Outcome::Redirected,
        ),
        (
            "its ACK after 4 min 1 s: expired, dropped",
            4,
            tcp(0x10, 40001),
            true,
            Outcome::Dropped,
        ),
        ("UDP opens a flow", 0, udp(), true, Outcome::Redirected),
        (
            "UDP after 5 min 1 s idle: a new flow to the proxy",
            5,
            udp(),
            true,
            Outcome::Redirected,
        ),
    ];
    let mut ok = true;
    for (what, advance, bytes, output, expect) in plan {
        // 1 s more than the whole minutes, so each timeout has passed.
        let d = if advance > 0 {
            advance * MIN + 1_000_000_000
        } else {
            0
        };
        crate::emu::kernel::with(|k| k.clock_ns += d);
        let mut wire = Wire::default();
        let req = if output { REQ_IP } else { 0 };
        ip_path(&mut wire, bytes, req, output, None);
        let reached: Vec<&Vec<u8>> = if output {
            wire.out.iter().collect()
        } else {
            wire.delivered_in.iter().collect()
        };
        let got = match reached.first().and_then(|p| endpoints(p)) {
            Some((_, _, d, _)) if output && d == proxy4 => Outcome::Redirected,
            // Inbound: translated back means it arrives from the origin.
            Some((s, _, _, _)) if !output && s == IpAddress::v4(203, 0, 113, 10) => Outcome::Passed,
            Some(_) => Outcome::Passed,
            None => Outcome::Dropped,
        };
        let leaked = output
            && reached
                .first()
                .and_then(|p| endpoints(p))
                .is_some_and(|(_, _, d, _)| d == IpAddress::v4(203, 0, 113, 10));
        let good =
            got == expect && !leaked && (output || got == Outcome::Passed && !reached.is_empty());
        ok &= good;
        step(
            "expiry",
            good,
            format!(
                "{what} (clock +{advance} min): {got:?} (expected {expect:?}){}",
                if leaked { "; LEAKED to the origin" } else { "" }
            ),
        );
    }
    flush_log();
    ok
}
