//! `run nat-prxd ORIGIN PRXD` (a `ctl-bridge` command): the IP filter's NAT
//! path handed to a real prxd on loopback.
//!
//! An emulated client host (smoltcp, 127.0.0.2) opens a TCP connection to
//! ORIGIN (a real loopback listener, on another address than PRXD's: the IP
//! filter never redirects packets to or from its proxy's address); its packets go through the loaded
//! IP filter's `ipf_output`, which — under the rules and proxy the bridge's
//! clients configured (prxd registers itself as the proxy) — rewrites them to
//! PRXD. The proxy-side host (smoltcp, at PRXD's address) accepts the
//! translated connection and hands it to the real prxd: a real loopback
//! socket **bound to the emulated client's address and port** (127.0.0.2:P)
//! connects to PRXD, so the peer prxd sees is the address the kext's NAT
//! table knows, and prxd's lookup through the emulated control (`prxctl
//! lookup` over this same bridge) recovers ORIGIN. Bytes are moved both ways
//! between the smoltcp socket and the real one; half-closes are passed on.
//!
//! The emulated kernel is single-threaded, so the bridge's control clients
//! (prxd's lookups) are served from inside this loop: `serve_controls` is
//! called on every round (non-blocking accept on the bridge's listener). The
//! client sends [`BYTES`] pattern bytes, expects them back unchanged (the
//! tests' origin echoes), then closes; the scenario passes when both stacks
//! reach a clean close, every byte came back intact, and the wire checks and
//! counts are clean.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, SocketAddrV4, TcpStream};
use std::time::{Duration, Instant as Wall};

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use smoltcp::wire::{IpAddress, IpEndpoint};

use super::stacks::{Counts, Host, Plan, pump, report, shuttle, tcp_socket};
use super::traffic::Wire;
use crate::emu::kernel::events::step;

/// Bytes the client sends (and expects back).
pub const BYTES: usize = 256 << 10;
/// The emulated client's address (loopback, so a real socket can take it).
pub const CLIENT: [u8; 4] = [127, 0, 0, 2];
/// Wall-clock limit.
const LIMIT: Duration = Duration::from_secs(60);

/// The salt of the pattern the client sends (and the echo returns).
const ECHO_SALT: u8 = 0x3c;

/// The emulated client at [`CLIENT`], its origin and its proxy (prxd), all
/// real loopback endpoints.
fn bridge_plan(origin: SocketAddrV4, prxd: SocketAddrV4) -> Plan {
    let v4 = |a: SocketAddrV4| {
        let o = a.ip().octets();
        IpEndpoint::new(IpAddress::v4(o[0], o[1], o[2], o[3]), a.port())
    };
    Plan {
        client: IpAddress::v4(CLIENT[0], CLIENT[1], CLIENT[2], CLIENT[3]),
        origin: v4(origin),
        proxy: v4(prxd),
    }
}

/// A TCP connection from `local` (bound first, `SO_REUSEADDR`) to `to`.
fn connect_from(local: SocketAddrV4, to: SocketAddrV4) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.bind(&SocketAddr::V4(local).into())?;
    s.connect(&SocketAddr::V4(to).into())?;
    Ok(s.into())
}

/// A free port on the client's loopback address.
fn free_port() -> Option<u16> {
    let l = std::net::TcpListener::bind((std::net::Ipv4Addr::from(CLIENT), 0)).ok()?;
    l.local_addr().ok().map(|a| a.port())
}

/// The proxy side: the accepted smoltcp socket and the real one to prxd.
#[derive(Default)]
struct Hand {
    real: Option<TcpStream>,
    up: Vec<u8>,
    down: Vec<u8>,
    up_shut: bool,
    down_eof: bool,
    closed: bool,
    up_bytes: usize,
    down_bytes: usize,
}

impl Hand {
    /// Moves what can move; returns whether anything did.
    fn pump(&mut self, s: &mut tcp::Socket<'_>) -> bool {
        let Some(real) = self.real.as_mut() else {
            return false;
        };
        let mut moved = false;
        // Emulated client → prxd.
        while s.can_recv() && self.up.len() < 65536 {
            let mut b = [0u8; 16384];
            match s.recv_slice(&mut b) {
                Ok(0) | Err(_) => break,
                Ok(k) => {
                    self.up.extend_from_slice(&b[..k]);
                    moved = true;
                }
            }
        }
        if !self.up.is_empty() {
            match real.write(&self.up) {
                Ok(k) => {
                    self.up.drain(..k);
                    self.up_bytes += k;
                    moved |= k > 0;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => self.up.clear(),
            }
        }
        // The client's FIN (not the handshake, when may_recv is false too).
        let fin = matches!(
            s.state(),
            tcp::State::CloseWait
                | tcp::State::LastAck
                | tcp::State::Closing
                | tcp::State::TimeWait
        );
        if self.up.is_empty() && fin && !s.can_recv() && !self.up_shut {
            let _ = real.shutdown(Shutdown::Write);
            self.up_shut = true;
            moved = true;
        }
        // prxd → emulated client.
        if !self.down_eof && self.down.len() < 65536 {
            let mut b = [0u8; 16384];
            match real.read(&mut b) {
                Ok(0) => {
                    self.down_eof = true;
                    moved = true;
                }
                Ok(k) => {
                    self.down.extend_from_slice(&b[..k]);
                    moved = true;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => self.down_eof = true,
            }
        }
        while s.can_send() && !self.down.is_empty() {
            match s.send_slice(&self.down) {
                Ok(0) | Err(_) => break,
                Ok(k) => {
                    self.down.drain(..k);
                    self.down_bytes += k;
                    moved = true;
                }
            }
        }
        if self.down_eof && self.down.is_empty() && !self.closed {
            s.close();
            self.closed = true;
            moved = true;
        }
        moved
    }
}

/// `run nat-prxd ORIGIN PRXD`; `serve_controls` answers the bridge's control
/// clients (prxd's lookups) that are waiting.
pub fn nat_prxd(origin: SocketAddr, prxd: SocketAddr, serve_controls: &mut dyn FnMut()) -> bool {
    let name = "nat-prxd";
    let (SocketAddr::V4(origin4), SocketAddr::V4(prxd4)) = (origin, prxd) else {
        step(name, false, "ORIGIN and PRXD are IPv4 loopback addresses");
        return false;
    };
    let plan = bridge_plan(origin4, prxd4);
    let Some(port) = free_port() else {
        step(name, false, "no free port on 127.0.0.2");
        return false;
    };
    let mut client = Host::new(plan.client);
    let mut proxy = Host::new(plan.proxy.addr);
    let ph: SocketHandle = proxy.sockets.add(tcp_socket());
    let _ = proxy
        .sockets
        .get_mut::<tcp::Socket>(ph)
        .listen(plan.proxy.port);
    let ch: SocketHandle = client.sockets.add(tcp_socket());
    let cx = client.iface.context();
    if let Err(e) = client
        .sockets
        .get_mut::<tcp::Socket>(ch)
        .connect(cx, plan.origin, port)
    {
        step(name, false, format!("smoltcp connect: {e}"));
        return false;
    }
    let mut wire = Wire::default();
    let mut n = Counts::default();
    let mut hand = Hand::default();
    let (mut sent, mut got, mut intact) = (0usize, 0usize, true);
    let (mut established, mut seen_by_proxy) = (false, None);
    let mut handed = String::new();
    let start = Wall::now();
    let mut ms: i64 = 0;
    let mut closed = false;
    while start.elapsed() < LIMIT {
        serve_controls();
        client.poll(ms);
        {
            let s = client.sockets.get_mut::<tcp::Socket>(ch);
            if s.state() == tcp::State::Established {
                established = true;
            }
            // The origin echoes: the bytes coming back are the ones sent.
            intact &= pump(s, &mut sent, &mut got, BYTES, ECHO_SALT, ECHO_SALT);
            if sent == BYTES && s.send_queue() == 0 && s.may_send() {
                s.close();
            }
        }
        shuttle(&mut client, &mut proxy, &plan, &mut wire, &mut n);
        proxy.poll(ms);
        let moved = {
            let s = proxy.sockets.get_mut::<tcp::Socket>(ph);
            if s.is_active() && hand.real.is_none() && seen_by_proxy.is_none() {
                seen_by_proxy = s.remote_endpoint();
                // The translated connection arrived: hand it to prxd from
                // the client's own address, which the NAT table knows.
                let from = SocketAddrV4::new(CLIENT.into(), port);
                match connect_from(from, prxd4) {
                    Ok(r) => {
                        let _ = r.set_nonblocking(true);
                        let _ = r.set_nodelay(true);
                        handed = format!("{from} -> {prxd4}");
                        hand.real = Some(r);
                    }
                    Err(e) => {
                        step(
                            format!("{name} handoff"),
                            false,
                            format!("{from} -> {prxd4}: {e}"),
                        );
                        s.abort();
                    }
                }
            }
            hand.pump(s)
        };
        shuttle(&mut client, &mut proxy, &plan, &mut wire, &mut n);
        let cs = client.sockets.get::<tcp::Socket>(ch).state();
        let ps = proxy.sockets.get::<tcp::Socket>(ph).state();
        if matches!(cs, tcp::State::TimeWait | tcp::State::Closed)
            && matches!(ps, tcp::State::Closed | tcp::State::TimeWait)
        {
            closed = true;
            break;
        }
        ms += 1;
        if !moved {
            // Waiting for prxd or the origin: real time must pass.
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    let cs = client.sockets.get::<tcp::Socket>(ch).state();
    let ps = proxy.sockets.get::<tcp::Socket>(ph).state();
    drop(hand.real.take());
    step(
        format!("{name} handoff"),
        established && !handed.is_empty(),
        format!(
            "client established: {established}; the proxy host accepted from {seen_by_proxy:?}; handed to prxd: {handed}"
        ),
    );
    let ok_bytes = intact && sent == BYTES && got == BYTES;
    step(
        format!("{name} transfer"),
        ok_bytes,
        format!(
            "client sent {sent} of {BYTES} bytes, got {got} back, intact: {intact}; to prxd {} bytes, from prxd {} bytes",
            hand.up_bytes, hand.down_bytes
        ),
    );
    step(
        format!("{name} close"),
        closed,
        format!(
            "client {cs}, proxy host {ps} after {ms} simulated ms, {:.1} s",
            start.elapsed().as_secs_f64()
        ),
    );
    let clean = report(name, &wire, &n);
    clean && established && ok_bytes && closed
}

/// Datagrams the UDP client sends (and expects echoed).
pub const DATAGRAMS: usize = 3;

/// `run nat-prxd-udp ORIGIN PRXD`: the same for a UDP flow. The emulated
/// client sends [`DATAGRAMS`] datagrams to ORIGIN; the IP filter NATs them
/// to PRXD; the proxy-side host passes each to the real prxd from a real UDP
/// socket bound to the client's own address and port, and passes prxd's
/// answers back to the client, whose stack must see them come from ORIGIN
/// (the IP filter rewrites their source) with the payload the origin echoed.
pub fn nat_prxd_udp(
    origin: SocketAddr,
    prxd: SocketAddr,
    serve_controls: &mut dyn FnMut(),
) -> bool {
    use smoltcp::socket::udp;
    let name = "nat-prxd-udp";
    let (SocketAddr::V4(origin4), SocketAddr::V4(prxd4)) = (origin, prxd) else {
        step(name, false, "ORIGIN and PRXD are IPv4 loopback addresses");
        return false;
    };
    let plan = bridge_plan(origin4, prxd4);
    // The real socket first: its port is the emulated client's.
    let real = match std::net::UdpSocket::bind((std::net::Ipv4Addr::from(CLIENT), 0)) {
        Ok(r) => r,
        Err(e) => {
            step(name, false, format!("UDP socket on 127.0.0.2: {e}"));
            return false;
        }
    };
    let _ = real.set_nonblocking(true);
    let port = real.local_addr().map(|a| a.port()).unwrap_or(0);
    let mut client = Host::new(plan.client);
    let mut proxy = Host::new(plan.proxy.addr);
    let ch = client.sockets.add(super::stacks::udp_socket());
    let ph = proxy.sockets.add(super::stacks::udp_socket());
    let _ = client.sockets.get_mut::<udp::Socket>(ch).bind(port);
    let _ = proxy
        .sockets
        .get_mut::<udp::Socket>(ph)
        .bind(plan.proxy.port);
    let msg = |i: usize| format!("prx udp datagram {i}").into_bytes();
    for i in 0..DATAGRAMS {
        let _ = client
            .sockets
            .get_mut::<udp::Socket>(ch)
            .send_slice(&msg(i), plan.origin);
    }
    let mut wire = Wire::default();
    let mut n = Counts::default();
    let (mut answers, mut wrong, mut to_prxd, mut from_prxd) = (Vec::new(), Vec::new(), 0, 0);
    let start = Wall::now();
    let mut ms: i64 = 0;
    while start.elapsed() < LIMIT && answers.len() < DATAGRAMS {
        serve_controls();
        client.poll(ms);
        shuttle(&mut client, &mut proxy, &plan, &mut wire, &mut n);
        proxy.poll(ms);
        let mut moved = false;
        {
            let s = proxy.sockets.get_mut::<udp::Socket>(ph);
            while let Ok((data, meta)) = s.recv() {
                // From the client's own address: the NAT table's key.
                if meta.endpoint.port == port && real.send_to(data, prxd4).is_ok() {
                    to_prxd += 1;
                    moved = true;
                }
            }
            let mut b = [0u8; 2048];
            while let Ok((k, from)) = real.recv_from(&mut b) {
                if from == SocketAddr::V4(prxd4) {
                    from_prxd += 1;
                    let to = IpEndpoint::new(plan.client, port);
                    let _ = s.send_slice(&b[..k], to);
                    moved = true;
                }
            }
        }
        proxy.poll(ms);
        shuttle(&mut client, &mut proxy, &plan, &mut wire, &mut n);
        client.poll(ms);
        while let Ok((data, meta)) = client.sockets.get_mut::<udp::Socket>(ch).recv() {
            if meta.endpoint == plan.origin {
                answers.push(data.to_vec());
            } else {
                wrong.push(format!("{}", meta.endpoint));
            }
        }
        ms += 1;
        if !moved {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    let mut want: Vec<Vec<u8>> = (0..DATAGRAMS).map(msg).collect();
    let mut got = answers.clone();
    want.sort();
    got.sort();
    let ok = got == want && wrong.is_empty();
    step(
        format!("{name} exchange"),
        ok,
        format!(
            "{} of {DATAGRAMS} datagrams echoed back from the origin {} (intact: {}); {to_prxd} handed to prxd from 127.0.0.2:{port}, {from_prxd} back from prxd; from elsewhere: {wrong:?}; {ms} simulated ms, {:.1} s",
            answers.len(),
            plan.origin,
            got == want,
            start.elapsed().as_secs_f64()
        ),
    );
    report(name, &wire, &n) && ok
}
