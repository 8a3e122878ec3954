//! Traffic scenarios: real data through the registered filters.
//!
//! - `socket-connect`: an emulated TCP socket attaches every matching socket
//!   filter; `sf_connect_out` may rewrite the destination and the emulator then
//!   makes the real `connect` on loopback to whatever address the filter left;
//!   data goes out through `sf_data_out` (or what the filter injects) and the
//!   reply comes back through `sf_data_in`.
//! - `ip-tcp`: a scripted TCP exchange (handshake, request, response) as IPv4
//!   packets through `ipf_output` and `ipf_input` of every attached IP filter, in
//!   the kernel's order, with re-injected packets continuing after the injecting
//!   filter. Packets reaching the "wire" get their delayed checksums completed
//!   as a NIC would, then are validated as a receiving stack would; rejected
//!   packets are counted and reported. The packets are hand-built on purpose
//!   (a fixed script any IP filter, C or Rust, must carry byte for byte); the
//!   `nat-*` scenarios run real smoltcp stacks on both sides
//!   ([`super::stacks`]).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use common::sys::EJUSTRETURN;

use crate::emu::abi::mbuf::{REQ_IP, REQ_TCP, REQ_UDP};
use crate::emu::abi::net;
use crate::emu::abi::net::deliver_all;
use crate::emu::kernel::events::step;
use crate::emu::kernel::flush_log;
use crate::emu::kernel::ipf::IpfState;
use crate::emu::kernel::mbuf::Owner;
use crate::emu::kernel::packet;
use crate::emu::kernel::sflt::RegState;
use crate::emu::kernel::{self, Kind};

/// Marks a chain the stack got back from a callback (or its replacement) as freed by the stack.
fn stack_done(id: u64) {
    kernel::with(|k| k.mbuf_stack_free(id));
}

/// Resolves what a callback left in its `mbuf_t *` slot after returning 0.
fn returned_mbuf(h: u64, what: &str) -> Option<u64> {
    kernel::with(|k| {
        if h == 0 {
            k.violation(
                "mbuf-null-return",
                format!("{what} returned 0 but left NULL in its mbuf_t * slot"),
            );
            return None;
        }
        k.mbuf_live(h, &format!("the stack, after {what} returned 0"))
    })
}

// ---------------------------------------------------------------- IP

#[derive(Default)]
pub(crate) struct Wire {
    pub out: Vec<Vec<u8>>,
    pub delivered_in: Vec<Vec<u8>>,
    pub rejected: Vec<String>,
    pub taken: usize,
    pub dropped: Vec<String>,
    /// When set, packets are handed to filters as a two-mbuf chain whose first
    /// mbuf holds this many bytes (headers straddling mbufs).
    pub split: Option<usize>,
    /// Packets that reached the wire or the socket layer and were checked by
    /// etherparse (all of them, when `rejected` is empty).
    pub verified: usize,
}

/// A packet (pkthdr) holding `bytes` as a chain whose first mbuf holds `first`
/// bytes, owned by the stack.
fn mbuf_chain_packet(k: &mut kernel::Kernel, bytes: &[u8], first: usize) -> u64 {
    use crate::emu::kernel::mbuf::{LEADING, MCLBYTES};
    let first = first.min(bytes.len());
    let id = k.mbuf_new(LEADING + first.max(1), LEADING, true, Owner::Stack);
    {
        let m = k.mbuf_mut(id);
        m.buf[LEADING..LEADING + first].copy_from_slice(&bytes[..first]);
        m.len = first;
        if let Some(h) = m.pkthdr.as_mut() {
            h.len = bytes.len();
        }
    }
    let rest = &bytes[first..];
    if !rest.is_empty() {
        let n = k.mbuf_new(rest.len().max(MCLBYTES), 0, false, Owner::Stack);
        let m = k.mbuf_mut(n);
        m.buf[..rest.len()].copy_from_slice(rest);
        m.len = rest.len();
        k.mbuf_mut(id).next = Some(n);
    }
    id
}

/// Runs `bytes` through the IP filters (output or input path), starting after
/// filter `after` (an injected packet), until it reaches the wire/socket layer,
/// is taken by a filter or dropped.
pub(crate) fn ip_path(
    wire: &mut Wire,
    mut bytes: Vec<u8>,
    mut csum: u32,
    output: bool,
    after: Option<u64>,
) {
    let v6 = bytes.first().is_some_and(|b| b >> 4 == 6);
    let order: Vec<u64> = kernel::with(|k| {
        let ids: Vec<u64> = k
            .ipf
            .regs
            .iter()
            .filter(|r| r.v6 == v6)
            .map(|r| r.id)
            .collect();
        match after {
            Some(a) => ids
                .iter()
                .skip_while(|&&i| i != a)
                .skip(1)
                .copied()
                .collect(),
            None => ids,
        }
    });
    for fid in order {
        let Some(reg) = kernel::with(|k| {
            k.ipf
                .regs
                .iter()
                .find(|r| r.id == fid && r.state == IpfState::Attached)
                .cloned()
        }) else {
            continue;
        };
        if (output && reg.filter.output == 0) || (!output && reg.filter.input == 0) {
            continue;
        }
        let split = wire.split;
        let id = kernel::with(|k| {
            let id = match split {
                Some(first) => mbuf_chain_packet(k, &bytes, first),
                None => k.mbuf_packet(&bytes),
            };
            if let Some(h) = k.mbuf_mut(id).pkthdr.as_mut() {
                h.csum_requested = csum;
            }
            id
        });
        // ipf_input's offset and protocol: the transport header after IPv6
        // extension headers, as xnu passes them.
        let (ihl, proto) = match packet::transport(&bytes) {
            Some(t) => (i32::try_from(t.offset).unwrap_or(0), t.protocol),
            None => (
                i32::from(bytes.first().map(|b| b & 0xf).unwrap_or(5)) * 4,
                bytes.get(9).copied().unwrap_or(0),
            ),
        };
        let Some((r, m)) = net::call_ipf(&reg, output, net::mbuf_handle(id), ihl, proto) else {
            return;
        };
        let what = format!(
            "{} of '{}'",
            if output { "ipf_output" } else { "ipf_input" },
            reg.name
        );
        match r {
            0 => {
                let Some(mid) = returned_mbuf(m, &what) else {
                    return;
                };
                kernel::with(|k| {
                    bytes = k.mbuf_bytes(mid);
                    csum = k
                        .mbuf(mid)
                        .pkthdr
                        .as_ref()
                        .map(|h| h.csum_requested)
                        .unwrap_or(0);
                });
                stack_done(mid);
                if mid != id {
                    stack_done(id);
                }
            }
            EJUSTRETURN => {
                kernel::with(|k| k.mbuf_kept_by_kext(m, &what));
                wire.taken += 1;
                drain_injected(wire);
                return;
            }
            e => {
                kernel::with(|k| k.mbuf_stack_free_returned(m, &what));
                wire.dropped
                    .push(format!("{what} returned {e}: packet dropped"));
                drain_injected(wire);
                return;
            }
        }
        drain_injected(wire);
    }
    if output {
        // The NIC completes what the stack left to hardware (a filter that
        // re-injects may leave it deferred, as xnu's ip_output then does):
        // the TCP or UDP checksum from its pseudo-header seed, and the IPv4
        // header checksum (there is none in IPv6).
        if csum & (REQ_TCP | REQ_UDP) != 0 {
            packet::finalize_l4_from_seed(&mut bytes);
        }
        if csum & REQ_IP != 0 && !v6 {
            packet::finalize_ip(&mut bytes);
        }
    }
    let checked = if v6 {
        Ok(())
    } else {
        packet::validate_v4(&bytes)
    }
    .and_then(|()| packet::etherparse_verify(&bytes));
    if checked.is_ok() {
        wire.verified += 1;
    }
    match checked {
        Ok(()) if output => wire.out.push(bytes),
        Ok(()) => wire.delivered_in.push(bytes),
        Err(why) => wire.rejected.push(format!(
            "{} packet rejected by the receiving stack: {why}",
            if output { "outbound" } else { "inbound" }
        )),
    }
}

fn drain_injected(wire: &mut Wire) {
    while let Some(inj) = kernel::with(|k| k.ipf.pop_injected()) {
        ip_path(wire, inj.bytes, inj.csum_requested, inj.output, inj.after);
    }
}

fn describe(p: &[u8]) -> String {
    if p.len() < 40 {
        return format!("{} bytes", p.len());
    }
    let ip = |o: usize| format!("{}.{}.{}.{}", p[o], p[o + 1], p[o + 2], p[o + 3]);
    let port = |o: usize| u16::from_be_bytes([p[o], p[o + 1]]);
    format!(
        "{}:{} > {}:{} flags {:#04x} len {}",
        ip(12),
        port(20),
        ip(16),
        port(22),
        p[33],
        p.len() - 40
    )
}

/// The `ip-tcp` scenario.
pub fn ip_tcp() -> bool {
    let client = [10, 0, 0, 1];
    let server = [93, 184, 216, 34];
    let (cp, sp) = (40000u16, 80u16);
    let mut wire = Wire::default();
    let outbound = |payload: &[u8], flags: u8, seq: u32, ack: u32| {
        let mut p = packet::tcp_v4(client, cp, server, sp, seq, ack, flags, payload);
        // As xnu hands outbound packets to filters: IP and TCP checksums delayed.
        p[10] = 0;
        p[11] = 0;
        packet::seed_l4(&mut p);
        p
    };
    ip_path(
        &mut wire,
        outbound(b"", 0x02, 1000, 0),
        REQ_IP | REQ_TCP,
        true,
        None,
    );
    // The reply comes from wherever the SYN went (a redirected SYN is answered by the proxy).
    let (rsrc, rport) = wire
        .out
        .first()
        .map(|p| {
            (
                [p[16], p[17], p[18], p[19]],
                u16::from_be_bytes([p[22], p[23]]),
            )
        })
        .unwrap_or((server, sp));
    ip_path(
        &mut wire,
        packet::tcp_v4(rsrc, rport, client, cp, 5000, 1001, 0x12, b""),
        0,
        false,
        None,
    );
    ip_path(
        &mut wire,
        outbound(b"GET / HTTP/1.0\r\n\r\n", 0x18, 1001, 5001),
        REQ_IP | REQ_TCP,
        true,
        None,
    );
    ip_path(
        &mut wire,
        packet::tcp_v4(
            rsrc,
            rport,
            client,
            cp,
            5001,
            1019,
            0x18,
            b"HTTP/1.0 200 OK\r\n\r\n",
        ),
        0,
        false,
        None,
    );
    flush_log();
    for p in &wire.out {
        step("wire: outbound", true, describe(p));
    }
    for p in &wire.delivered_in {
        step("socket layer: inbound", true, describe(p));
    }
    for d in &wire.dropped {
        step("ip filter drop", true, d.clone());
    }
    let ok = wire.rejected.is_empty();
    for r in &wire.rejected {
        step("wire: rejected", false, r.clone());
    }
    step(
        "ip-tcp",
        ok,
        format!(
            "{} outbound and {} inbound packets passed, {} taken by filters, {} dropped by filters, {} rejected",
            wire.out.len(),
            wire.delivered_in.len(),
            wire.taken,
            wire.dropped.len(),
            wire.rejected.len()
        ),
    );
    deliver_all();
    ok
}

// ---------------------------------------------------------------- sockets

/// The `socket-connect` scenario.
pub fn socket_connect() -> bool {
    // Two listeners on the same port: 127.0.0.1 (where the app connects) and
    // 127.0.0.2 (where a redirecting filter may send it). Linux routes 127/8 to lo.
    let (a, b) = match bind_pair() {
        Ok(p) => p,
        Err(e) => {
            step(
                "socket-connect",
                false,
                format!("cannot bind loopback listeners: {e}"),
            );
            return false;
        }
    };
    let dest = a.local_addr().ok();
    let Some(dest) = dest else { return false };
    let so = net::new_socket(2, 1, 6);
    let sid = kernel::unhandle(so, Kind::Socket).unwrap_or(0);
    let filters: Vec<(u32, crate::emu::kernel::sflt::SfltFilter)> = kernel::with(|k| {
        k.sflt
            .regs
            .values()
            .filter(|r| {
                r.state == RegState::Registered
                    && r.domain == 2
                    && r.ty == 1
                    && (r.protocol == 0 || r.protocol == 6)
            })
            .map(|r| (r.filter.handle, r.filter))
            .collect()
    });
    let mut attached = Vec::new();
    for (h, f) in &filters {
        match net::call_sf_attach(f.attach, so) {
            Some((0, cookie)) => attached.push((*h, *f, cookie)),
            Some((e, _)) => step(
                "sf_attach",
                true,
                format!("filter {h:#x} declined the socket ({e})"),
            ),
            None => return false,
        }
    }
    kernel::with(|k| {
        if let Some(s) = k.sflt.sockets.get_mut(&sid) {
            s.attached = attached.iter().map(|&(h, _, c)| (h, c)).collect();
        }
    });
    step(
        "socket",
        true,
        format!(
            "TCP socket to {dest}: {} socket filter(s) attached",
            attached.len()
        ),
    );
    let mut to = net::sockaddr(dest);
    for (h, f, cookie) in &attached {
        if f.connect_out == 0 {
            continue;
        }
        match net::call_sf_connect_out(f.connect_out, *cookie, so, &mut to) {
            Some(0) => {}
            Some(e) => {
                step(
                    "connect",
                    true,
                    format!("sf_connect_out of filter {h:#x} rejected the connection ({e})"),
                );
                return finish_socket(so, &attached, true);
            }
            None => return false,
        }
    }
    let Some(target) = net::parse_sockaddr(&to) else {
        step(
            "connect",
            false,
            "sf_connect_out left an address that is not AF_INET/AF_INET6",
        );
        return false;
    };
    let stream = match TcpStream::connect_timeout(&target, Duration::from_secs(2)) {
        Ok(s) => s,
        Err(e) => {
            step(
                "connect",
                false,
                format!("real connect to {target} failed: {e}"),
            );
            return false;
        }
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    kernel::with(|k| {
        if let Some(s) = k.sflt.sockets.get_mut(&sid) {
            s.local = stream.local_addr().ok();
            s.peer = Some(target);
        }
    });
    let redirected = target != dest;
    step(
        "connect",
        true,
        if redirected {
            format!("connected to {target} (the filter rewrote {dest})")
        } else {
            format!("connected to {target}")
        },
    );
    let listener = if target == dest { &a } else { &b };
    let (mut server, _) = match accept_within(listener) {
        Ok(s) => s,
        Err(e) => {
            step(
                "connect",
                false,
                format!("the listener at {target} saw no connection: {e}"),
            );
            return false;
        }
    };
    // Outbound data through sf_data_out, then whatever the filters injected.
    let mut stream = stream;
    let request = b"hello through the socket filter\n".to_vec();
    let mut sent = Vec::new();
    if let Some(data) = data_through(so, &attached, request, true) {
        sent.extend_from_slice(&data);
    }
    for d in kernel::with(|k| {
        k.sflt
            .sockets
            .get_mut(&sid)
            .map(|s| std::mem::take(&mut s.injected_out))
            .unwrap_or_default()
    }) {
        sent.extend_from_slice(&d);
    }
    if !sent.is_empty() && stream.write_all(&sent).is_err() {
        step("data out", false, "write to the real socket failed");
        return false;
    }
    let mut got = vec![0u8; sent.len()];
    let received = server.read_exact(&mut got).is_ok();
    step(
        "data out",
        received,
        format!(
            "{} bytes reached the server at {target}: {:?}",
            got.len(),
            String::from_utf8_lossy(&got)
        ),
    );
    // Reply through sf_data_in.
    let reply = b"pong\n";
    let _ = server.write_all(reply);
    let mut r = vec![0u8; reply.len()];
    let mut app = Vec::new();
    if stream.read_exact(&mut r).is_ok()
        && let Some(data) = data_through(so, &attached, r, false)
    {
        app.extend_from_slice(&data);
    }
    for d in kernel::with(|k| {
        k.sflt
            .sockets
            .get_mut(&sid)
            .map(|s| std::mem::take(&mut s.injected_in))
            .unwrap_or_default()
    }) {
        app.extend_from_slice(&d);
    }
    step(
        "data in",
        true,
        format!(
            "the application received {:?}",
            String::from_utf8_lossy(&app)
        ),
    );
    finish_socket(so, &attached, received)
}

fn finish_socket(
    so: u64,
    attached: &[(u32, crate::emu::kernel::sflt::SfltFilter, u64)],
    ok: bool,
) -> bool {
    let sid = kernel::unhandle(so, Kind::Socket).unwrap_or(0);
    // Close: detach every filter still attached (sflt_unregister may have detached some already).
    let still: Vec<(u32, u64)> = kernel::with(|k| {
        k.sflt
            .sockets
            .get(&sid)
            .map(|s| s.attached.clone())
            .unwrap_or_default()
    });
    for (h, f, cookie) in attached {
        if still.contains(&(*h, *cookie)) {
            net::call_sf_detach(f.detach, *cookie, so);
        }
    }
    kernel::with(|k| {
        k.sflt.sockets.remove(&sid);
    });
    flush_log();
    deliver_all();
    ok
}

/// Runs `data` through each attached filter's data hook; returns what the stack
/// carries on (None when a filter took or dropped it).
fn data_through(
    so: u64,
    attached: &[(u32, crate::emu::kernel::sflt::SfltFilter, u64)],
    data: Vec<u8>,
    out: bool,
) -> Option<Vec<u8>> {
    let mut bytes = data;
    for (h, f, cookie) in attached {
        let hook = if out { f.data_out } else { f.data_in };
        if hook == 0 {
            continue;
        }
        let what = if out { "sf_data_out" } else { "sf_data_in" };
        let id = kernel::with(|k| k.mbuf_packet(&bytes));
        let (r, m) = net::call_sf_data(hook, what, *cookie, so, net::mbuf_handle(id))?;
        match r {
            0 => {
                let mid = returned_mbuf(m, what)?;
                bytes = kernel::with(|k| k.mbuf_bytes(mid));
                stack_done(mid);
                if mid != id {
                    stack_done(id);
                }
            }
            EJUSTRETURN => {
                kernel::with(|k| k.mbuf_kept_by_kext(m, what));
                return None;
            }
            e => {
                kernel::with(|k| k.mbuf_stack_free_returned(m, what));
                step(
                    what,
                    true,
                    format!("filter {h:#x} returned {e}: data dropped"),
                );
                return None;
            }
        }
    }
    Some(bytes)
}

fn bind_pair() -> std::io::Result<(TcpListener, TcpListener)> {
    for _ in 0..20 {
        let a = TcpListener::bind("127.0.0.1:0")?;
        let port = a.local_addr()?.port();
        if let Ok(b) = TcpListener::bind(SocketAddr::from(([127, 0, 0, 2], port))) {
            return Ok((a, b));
        }
    }
    Err(std::io::Error::other(
        "no port free on both 127.0.0.1 and 127.0.0.2",
    ))
}

fn accept_within(l: &TcpListener) -> std::io::Result<(TcpStream, SocketAddr)> {
    l.set_nonblocking(true)?;
    let start = std::time::Instant::now();
    loop {
        match l.accept() {
            Ok((s, a)) => {
                s.set_nonblocking(false)?;
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                return Ok((s, a));
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    && start.elapsed() < Duration::from_secs(2) =>
            {
                std::thread::sleep(Duration::from_millis(2))
            }
            Err(e) => return Err(e),
        }
    }
}
