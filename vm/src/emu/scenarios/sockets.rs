//! The socket driver of the scenarios: an emulated TCP socket with its real
//! loopback counterpart, driven through the attached socket filters as xnu's
//! socket layer would (socket, attach, `connect_out`, the real connect,
//! `sock_evt_connected`, data through `sf_data_out`, close).
//!
//! Per xnu, `connect_out` gets a zeroed 255-byte copy of the address and only
//! `sa_len` bytes are copied back; injected data is run through every filter's
//! `data_out` synchronously ([`crate::emu::abi::net::reenter_data_out`]).

use std::ffi::c_int;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use crate::emu::abi::net;
use crate::emu::abi::net::{attached_filters, data_through, deliver_all};
use crate::emu::kernel::events::step;
use crate::emu::kernel::sflt::{RegState, SfltFilter};
use crate::emu::kernel::{self, Kind};

/// An emulated TCP socket with its real counterpart.
pub(super) struct Live {
    pub(super) label: String,
    pub(super) so: u64,
    pub(super) sid: u64,
    pub(super) target: Option<SocketAddr>,
    pub(super) refused: Option<c_int>,
    pub(super) stream: Option<TcpStream>,
}

pub(super) fn set_proc(p: Option<(i32, &str)>) {
    kernel::with(|k| k.current_proc = p.map(|(a, b)| (a, b.to_string())));
}

/// Attaches every registered TCP socket filter of `domain` to the new socket
/// `so` (`sid`), as socreate does: the filters whose `sf_attach` accepts it
/// (returns 0) are recorded on the socket, in registration order.
pub(super) fn attach_tcp_filters(so: u64, sid: u64, domain: i32) {
    let filters: Vec<(u32, SfltFilter)> = kernel::with(|k| {
        k.sflt
            .regs
            .values()
            .filter(|r| {
                r.state == RegState::Registered
                    && r.domain == domain
                    && r.ty == 1
                    && (r.protocol == 0 || r.protocol == 6)
            })
            .map(|r| (r.filter.handle, r.filter))
            .collect()
    });
    let mut attached = Vec::new();
    for (h, f) in &filters {
        if let Some((0, cookie)) = net::call_sf_attach(f.attach, so) {
            attached.push((*h, cookie));
        }
    }
    kernel::with(|k| {
        if let Some(s) = k.sflt.sockets.get_mut(&sid) {
            s.attached = attached;
        }
    });
}

/// socket() + attach + connect_out (the filter decides).
pub(super) fn begin(label: &str, dest: SocketAddr, proc_: (i32, &str)) -> Live {
    set_proc(Some(proc_));
    let domain = if dest.is_ipv4() { 2 } else { 30 };
    let so = net::new_socket(domain, 1, 6);
    let sid = kernel::unhandle(so, Kind::Socket).unwrap_or(0);
    attach_tcp_filters(so, sid, domain);
    let mut live = Live {
        label: label.into(),
        so,
        sid,
        target: None,
        refused: None,
        stream: None,
    };
    // xnu: a zeroed SOCK_MAXADDRLEN buffer holding the address; sa_len bytes copied back.
    let orig = net::sockaddr(dest);
    let mut buf = vec![0u8; 255];
    buf[..orig.len()].copy_from_slice(&orig);
    for (_, f, cookie) in attached_filters(sid) {
        if f.connect_out == 0 {
            continue;
        }
        match net::call_sf_connect_out(f.connect_out, cookie, so, &mut buf) {
            Some(0) => {}
            Some(e) => {
                live.refused = Some(e);
                break;
            }
            None => {
                live.refused = Some(22);
                break;
            }
        }
    }
    let back = &buf[..orig.len()];
    live.target = net::parse_sockaddr(back);
    set_proc(None);
    live
}

/// The real connect, then sock_evt_connected (where the filter injects its header).
pub(super) fn establish(live: &mut Live, proc_: (i32, &str)) {
    if live.refused.is_some() {
        return;
    }
    let Some(target) = live.target else { return };
    match TcpStream::connect_timeout(&target, Duration::from_secs(2)) {
        Ok(s) => {
            kernel::with(|k| {
                if let Some(x) = k.sflt.sockets.get_mut(&live.sid) {
                    x.local = s.local_addr().ok();
                    x.peer = Some(target);
                }
            });
            live.stream = Some(s);
        }
        Err(e) => {
            // Under a fault plan a socket may legitimately go direct (a cookie
            // that could not be allocated leaves the socket unfiltered), and
            // documentation addresses are unreachable: reported, not failed.
            let strict = kernel::with(|k| k.faults.rules.is_empty());
            step(
                format!("{}: connect", live.label),
                !strict,
                format!("real connect to {target} failed: {e}"),
            );
            return;
        }
    }
    set_proc(Some(proc_));
    for (_, f, cookie) in attached_filters(live.sid) {
        if f.notify != 0 {
            net::call_sf_notify(f.notify, cookie, live.so, 2 /* sock_evt_connected */);
        }
    }
    set_proc(None);
    flush_injected(live);
}

pub(super) fn flush_injected(live: &mut Live) {
    let out = kernel::with(|k| {
        k.sflt
            .sockets
            .get_mut(&live.sid)
            .map(|s| std::mem::take(&mut s.injected_out))
            .unwrap_or_default()
    });
    if let Some(s) = live.stream.as_mut() {
        for b in out {
            let _ = s.write_all(&b);
        }
    }
}

/// Application data through sf_data_out onto the real stream; Err(errno) when a filter refused it.
pub(super) fn send(live: &mut Live, data: &[u8]) -> Result<(), c_int> {
    let attached = attached_filters(live.sid);
    let r = data_through(live.so, &attached, data.to_vec(), &[]);
    flush_injected(live);
    let b = r?;
    if let Some(s) = live.stream.as_mut() {
        let _ = s.write_all(&b);
    }
    Ok(())
}

pub(super) fn close(live: Live) {
    for (_, f, cookie) in attached_filters(live.sid) {
        net::call_sf_detach(f.detach, cookie, live.so);
    }
    kernel::with(|k| {
        k.sflt.sockets.remove(&live.sid);
    });
    deliver_all();
}

/// Opens a connection to `dest` as [`CLIENT`] through the filters, sends `data`
/// and keeps it in `open` (for the `ctl-bridge` scenario); returns the
/// client's local address and where the real connection went.
pub(super) fn open_kept(
    label: &str,
    dest: SocketAddr,
    data: &[u8],
    open: &mut Vec<Live>,
) -> (Option<SocketAddr>, Option<SocketAddr>) {
    open_kept_as(label, dest, data, open, CLIENT)
}

/// [`open_kept`] as the process `proc_` (pid, name).
pub(super) fn open_kept_as(
    label: &str,
    dest: SocketAddr,
    data: &[u8],
    open: &mut Vec<Live>,
    proc_: (i32, &str),
) -> (Option<SocketAddr>, Option<SocketAddr>) {
    let mut c = begin(label, dest, proc_);
    establish(&mut c, proc_);
    let _ = send(&mut c, data);
    let local = c.stream.as_ref().and_then(|s| s.local_addr().ok());
    let target = c.target;
    open.push(c);
    (local, target)
}

/// What the peer of the last connection in `open` sent, until it closed
/// (or 2 s passed); `None` without a connection.
pub(super) fn recv_kept(open: &mut [Live]) -> Option<Vec<u8>> {
    let s = open.last_mut()?.stream.as_mut()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    Some(read_all(s))
}

pub(super) fn accept_within(l: &TcpListener) -> Option<TcpStream> {
    l.set_nonblocking(true).ok()?;
    let start = std::time::Instant::now();
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).ok()?;
                s.set_read_timeout(Some(Duration::from_millis(300))).ok()?;
                return Some(s);
            }
            Err(_) if start.elapsed() < Duration::from_secs(2) => {
                std::thread::sleep(Duration::from_millis(2))
            }
            Err(_) => return None,
        }
    }
}

pub(super) fn read_all(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 512];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    out
}

/// The pid the proxy process runs as in the scenarios.
pub(super) const PROXY_PID: i32 = 5000;
pub(super) const CLIENT: (i32, &str) = (4242, "prx-emu-client");
