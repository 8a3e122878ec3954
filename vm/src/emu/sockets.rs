//! The socket-filter scenario `sockfilter` (PrxSocketFilter.kext's acceptance
//! list) over **real** loopback sockets, IPv4 and IPv6, with the control
//! protocol driven through the emulated kern_control:
//!
//! - a privileged control client sets the proxies and the rules (an
//!   unprivileged one is refused; a malformed message changes nothing);
//! - 203.0.113.10:80 and [2001:db8::10]:80 (documentation addresses nothing
//!   listens on) reach the proxy listeners on 127.0.0.1 / ::1, with a PROXY v2
//!   header first: the bytes the proxy received are reported in hex for the
//!   test's own parser; the original destination is looked up through the control;
//! - a non-matching destination, an excluded process and the proxy's own
//!   process connect directly; a connection decided before a rule replacement
//!   keeps its decision, one after uses the new rules;
//! - stop is refused while the control client is connected.
//!
//! Per xnu, `connect_out` gets a zeroed 255-byte copy of the address and only
//! `sa_len` bytes are copied back; injected data is run through every filter's
//! `data_out` synchronously ([`reenter_data_out`]).

use std::ffi::c_int;
use std::io::{Read, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use super::abi::{ctl, net};
use super::kernel::{self, Kind};
use super::mbuf::Owner;
use super::scenario::{Kext, deliver_all, step};
use super::sflt::{RegState, SfltFilter};

const EJUSTRETURN: c_int = -2;

/// mbuf tags as the emulator keeps them: (module id, type, data).
pub type Tags = Vec<(u32, u16, Box<[u8]>)>;

/// Runs injected bytes through the `data_out` of every filter attached to `so`
/// (as xnu's `sosend` does for `sock_inject_data_out`), then queues what the
/// filters let through for the wire.
pub fn reenter_data_out(so: u64, bytes: Vec<u8>, tags: Tags) -> c_int {
    let Some(sid) = kernel::unhandle(so, Kind::Socket) else {
        return 22;
    };
    let attached = attached_filters(sid);
    match data_through(so, &attached, bytes, &tags) {
        Ok(b) => {
            kernel::with(|k| {
                if let Some(s) = k.sflt.sockets.get_mut(&sid) {
                    s.injected_out.push(b);
                }
            });
            0
        }
        Err(e) => e,
    }
}

pub(super) fn attached_filters(sid: u64) -> Vec<(u32, SfltFilter, u64)> {
    kernel::with(|k| {
        let pairs = k
            .sflt
            .sockets
            .get(&sid)
            .map(|s| s.attached.clone())
            .unwrap_or_default();
        pairs
            .into_iter()
            .filter_map(|(h, c)| k.sflt.regs.get(&h).map(|r| (h, r.filter, c)))
            .collect()
    })
}

/// Runs `bytes` through each filter's `sf_data_out`; Ok(bytes the stack sends) or the errno.
pub(super) fn data_through(
    so: u64,
    attached: &[(u32, SfltFilter, u64)],
    mut bytes: Vec<u8>,
    tags: &[(u32, u16, Box<[u8]>)],
) -> Result<Vec<u8>, c_int> {
    for (_h, f, cookie) in attached {
        if f.data_out == 0 {
            continue;
        }
        let id = kernel::with(|k| {
            let id = k.mbuf_packet(&bytes);
            if let Some(h) = k.mbuf_mut(id).pkthdr.as_mut() {
                h.tags = tags.to_vec();
            }
            id
        });
        let Some((r, m)) =
            net::call_sf_data(f.data_out, "sf_data_out", *cookie, so, net::mbuf_handle(id))
        else {
            return Err(22);
        };
        match r {
            0 => {
                let mid =
                    kernel::with(|k| k.mbuf_live(m, "the stack, after sf_data_out returned 0"));
                let Some(mid) = mid else { return Err(22) };
                bytes = kernel::with(|k| k.mbuf_bytes(mid));
                kernel::with(|k| {
                    k.mbuf_stack_free(mid);
                    if mid != id {
                        k.mbuf_stack_free(id);
                    }
                });
            }
            EJUSTRETURN => {
                kernel::with(|k| {
                    if let Some(mid) = kernel::unhandle(m, Kind::Mbuf)
                        && matches!(k.mbufs.all.get(&mid).map(|x| &x.owner), Some(Owner::Stack))
                    {
                        k.mbuf_set_owner(
                            mid,
                            Owner::Kext {
                                since: "EJUSTRETURN from sf_data_out".into(),
                            },
                        );
                    }
                });
                return Err(EJUSTRETURN);
            }
            e => {
                kernel::with(|k| k.mbuf_stack_free_returned(m, "sf_data_out"));
                return Err(e);
            }
        }
    }
    Ok(bytes)
}

/// An emulated TCP socket with its real counterpart.
pub(super) struct Live {
    label: String,
    so: u64,
    sid: u64,
    target: Option<SocketAddr>,
    refused: Option<c_int>,
    stream: Option<TcpStream>,
}

fn set_proc(p: Option<(i32, &str)>) {
    kernel::with(|k| k.current_proc = p.map(|(a, b)| (a, b.to_string())));
}

/// socket() + attach + connect_out (the filter decides).
fn begin(label: &str, dest: SocketAddr, proc_: (i32, &str)) -> Live {
    set_proc(Some(proc_));
    let domain = if dest.is_ipv4() { 2 } else { 30 };
    let so = net::new_socket(domain, 1, 6);
    let sid = kernel::unhandle(so, Kind::Socket).unwrap_or(0);
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
            s.attached = attached.clone();
        }
    });
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
fn establish(live: &mut Live, proc_: (i32, &str)) {
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

fn flush_injected(live: &mut Live) {
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
fn send(live: &mut Live, data: &[u8]) -> Result<(), c_int> {
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

fn accept_within(l: &TcpListener) -> Option<TcpStream> {
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

fn read_all(s: &mut TcpStream) -> Vec<u8> {
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

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

// ---- control messages (the wire format of common::net::control, written here
// independently so the emulator does not depend on the kernel crate) ----

pub(super) fn header(op: u8, len: usize) -> Vec<u8> {
    let mut v = vec![1, op, 0, 0];
    v.extend_from_slice(&(len as u32).to_be_bytes());
    v
}

pub(super) fn endpoint(a: Option<SocketAddr>) -> Vec<u8> {
    let mut v = vec![0u8; 20];
    match a {
        Some(SocketAddr::V4(x)) => {
            v[0] = 4;
            v[2..4].copy_from_slice(&x.port().to_be_bytes());
            v[4..8].copy_from_slice(&x.ip().octets());
        }
        Some(SocketAddr::V6(x)) => {
            v[0] = 6;
            v[2..4].copy_from_slice(&x.port().to_be_bytes());
            v[4..20].copy_from_slice(&x.ip().octets());
        }
        None => {}
    }
    v
}

/// One 48-byte rule record (`common::net::control::parse_rule`); byte 10, the
/// protocol, stays 0: any protocol (callers may set it).
pub(super) fn rule(
    dst: Option<(std::net::IpAddr, u8)>,
    ports: (u16, u16),
    name: Option<&str>,
    action: u8,
    v2: bool,
) -> Vec<u8> {
    let mut r = vec![0u8; 48];
    r[0] = u8::from(dst.is_some());
    r[1] = action;
    r[2] = u8::from(v2);
    r[3] = if name.is_some() { 2 } else { 0 };
    r[4..6].copy_from_slice(&ports.0.to_be_bytes());
    r[6..8].copy_from_slice(&ports.1.to_be_bytes());
    if let Some((a, p)) = dst {
        r[9] = p;
        match a {
            std::net::IpAddr::V4(x) => {
                r[8] = 4;
                r[12..16].copy_from_slice(&x.octets());
            }
            std::net::IpAddr::V6(x) => {
                r[8] = 6;
                r[12..28].copy_from_slice(&x.octets());
            }
        }
    }
    if let Some(n) = name {
        r[32..32 + n.len()].copy_from_slice(n.as_bytes());
    }
    r
}

pub(super) fn rules_msg(rules: &[Vec<u8>]) -> Vec<u8> {
    let len = 16 + 48 * rules.len();
    let mut v = header(1, len);
    v.extend_from_slice(&[0, 0, 0, 0]);
    v.extend_from_slice(&(rules.len() as u32).to_be_bytes());
    for r in rules {
        v.extend_from_slice(r);
    }
    v
}

/// The control name the socket filter registers.
pub const CONTROL_NAME: &str = "net.prx.kext.SocketFilter.control";
pub(super) const PROXY_PID: i32 = 5000;
const CLIENT: (i32, &str) = (4242, "prx-emu-client");

/// Whether a fault plan is in force (failures are then expected, bypasses never).
fn faulting() -> bool {
    kernel::with(|k| !k.faults.rules.is_empty())
}

/// A control call, retried (as an administrator would rerun prxctl) while a
/// fault plan makes the kext answer ENOMEM or ENOBUFS; the kext must have
/// changed nothing when it refused.
fn retried(mut call: impl FnMut() -> c_int) -> c_int {
    let mut e = call();
    for _ in 0..16 {
        if !(faulting() && (e == 12 || e == 55)) {
            break;
        }
        e = call();
    }
    e
}

/// How the socket filter treated a connection that the rules redirect or block.
#[derive(Debug, PartialEq, Eq)]
enum Treated {
    /// No filter attached (the cookie could not be allocated): the documented,
    /// counted fail-open (`sockets left unfiltered`). Only under a fault plan.
    Unfiltered,
    /// `connect_out` refused it (fail-closed).
    Refused(c_int),
    /// The destination the filter left.
    To(Option<SocketAddr>),
}

fn treated(c: &Live) -> Treated {
    if attached_filters(c.sid).is_empty() {
        Treated::Unfiltered
    } else if let Some(e) = c.refused {
        Treated::Refused(e)
    } else {
        Treated::To(c.target)
    }
}

/// The `sockfilter` scenario. Strict under every fault plan: a redirect or
/// `block` bypassed, or a PROXY v2 connection whose proxy gets data without
/// the header, fails it; what a fault plan may cause instead is a counted
/// fail-open (a socket left unfiltered, checked against the kext's counter)
/// or a fail-closed connection (refused, or its data refused).
pub fn sockfilter(kexts: &mut [Kext]) -> bool {
    let faults = faulting();
    let mut ok = true;
    let mut unfiltered_seen = 0u64;
    let mut check = |what: &str, cond: bool, detail: String| {
        step(what, cond, detail);
        ok &= cond;
    };
    let bind = |a: &str| TcpListener::bind(a);
    let (Ok(p4), Ok(p6), Ok(direct1)) = (bind("127.0.0.1:0"), bind("[::1]:0"), bind("127.0.0.1:0"))
    else {
        step(
            "listeners",
            false,
            "cannot bind loopback listeners (IPv4 and IPv6)",
        );
        return false;
    };
    let Ok(direct2) = TcpListener::bind(("127.0.0.2", 0)) else {
        step("listeners", false, "cannot bind 127.0.0.2");
        return false;
    };
    let (a4, a6, d1, d2) = (
        p4.local_addr().ok(),
        p6.local_addr().ok(),
        direct1.local_addr().ok(),
        direct2.local_addr().ok(),
    );
    let (Some(a4), Some(a6), Some(d1), Some(d2)) = (a4, a6, d1, d2) else {
        return false;
    };
    step(
        "listeners",
        true,
        format!("proxy {a4} and {a6}; direct servers {d1} and {d2}"),
    );

    let mut unpriv = ctl::connect(CONTROL_NAME, false);
    for _ in 0..16 {
        if !(faults && matches!(unpriv, Err(12) | Err(55))) {
            break;
        }
        unpriv = ctl::connect(CONTROL_NAME, false);
    }
    match unpriv {
        Err(1) => step(
            "control: unprivileged client",
            true,
            "refused with EPERM (CTL_FLAG_PRIVILEGED)",
        ),
        other => check(
            "control: unprivileged client",
            false,
            format!("expected EPERM, got {other:?}"),
        ),
    }
    let mut privileged = ctl::connect(CONTROL_NAME, true);
    for _ in 0..16 {
        if !(faults && matches!(privileged, Err(12) | Err(55))) {
            break;
        }
        privileged = ctl::connect(CONTROL_NAME, true);
    }
    let client = match privileged {
        Ok(c) => c,
        Err(e) => {
            check(
                "control: connect",
                false,
                format!("privileged connect failed: {e}"),
            );
            return ok;
        }
    };
    // The PROXY v2 headers' per-load key (op 20), for the tests to verify
    // the headers' tags with their own SipHash.
    let (e, key) = ctl::getopt(client, 20, &{
        let mut b = header(20, 8);
        b.resize(64, 0);
        b
    });
    check(
        "control: auth key",
        e == 0 && key.len() == 40,
        format!("errno {e}, {}", hex(&key)),
    );
    // Proxies: v4, v6, the proxy's pid and name.
    let mut m = header(2, 8 + 64);
    m.extend(endpoint(Some(a4)));
    m.extend(endpoint(Some(a6)));
    m.extend(3u32.to_be_bytes());
    m.extend((PROXY_PID as u32).to_be_bytes());
    let mut name = [0u8; 16];
    name[..9].copy_from_slice(b"prx-proxy");
    m.extend(name);
    let e = retried(|| ctl::setopt(client, 2, &m));
    check(
        "control: set proxies",
        e == 0,
        format!("setsockopt returned {e}"),
    );
    let doc4: std::net::IpAddr = [203, 0, 113, 0].into();
    let doc6: std::net::IpAddr = "2001:db8::"
        .parse::<Ipv6Addr>()
        .map(Into::into)
        .unwrap_or(doc4);
    let lo2: std::net::IpAddr = [127, 0, 0, 2].into();
    let lo3: std::net::IpAddr = [127, 0, 0, 3].into();
    let gen1 = vec![
        rule(None, (0, 65535), Some("excluded-app"), 0, false),
        rule(Some((doc4, 24)), (80, 80), None, 1, true),
        rule(Some((doc6, 32)), (0, 65535), None, 1, true),
        rule(Some((lo2, 32)), (0, 65535), None, 1, false),
        rule(Some((lo3, 32)), (0, 65535), None, 2, false),
    ];
    let msg = rules_msg(&gen1);
    // Malformed first: one byte short and one byte long; nothing may change.
    let e1 = ctl::setopt(client, 1, &msg[..msg.len() - 1]);
    let mut long = msg.clone();
    long.push(0);
    let e2 = ctl::setopt(client, 1, &long);
    let mut badver = msg.clone();
    badver[0] = 2;
    let e3 = ctl::setopt(client, 1, &badver);
    let mut status = Vec::new();
    let _ = retried(|| {
        let (e, st) = ctl::getopt(client, 18, &{
            let mut b = header(18, 8);
            b.resize(256, 0);
            b
        });
        status = st;
        e
    });
    let rules_before = status
        .get(12..16)
        .map(|b| u32::from_be_bytes(b.try_into().unwrap_or([0; 4])));
    check(
        "control: malformed rules",
        e1 != 0 && e2 != 0 && e3 != 0 && rules_before == Some(0),
        format!("short {e1}, long {e2}, wrong version {e3}; rule count still {rules_before:?}"),
    );
    let e = retried(|| ctl::setopt(client, 1, &msg));
    check(
        "control: set rules",
        e == 0,
        format!("5 rules, setsockopt returned {e}"),
    );
    // NAT timeouts (op 4: TCP idle, TCP SYN-sent/closing, UDP idle seconds) are the IP
    // filter's: valid ones (RFC 5382/4787 minimums) get ENOTSUP from the socket filter.
    let mut t = header(4, 20);
    for v in [7440u32, 240, 300] {
        t.extend(v.to_be_bytes());
    }
    let e = retried(|| ctl::setopt(client, 4, &t));
    check(
        "control: NAT timeouts refused",
        e == 45,
        format!("setsockopt returned {e} (want ENOTSUP, 45)"),
    );

    let request = b"GET / HTTP/1.0\r\nHost: example\r\n\r\n";
    // A: IPv4 documentation address, PROXY v2.
    for (label, dest, listener) in [
        ("A", SocketAddr::from(([203, 0, 113, 10], 80)), &p4),
        (
            "B",
            SocketAddr::new(
                std::net::IpAddr::V6("2001:db8::10".parse().unwrap_or(Ipv6Addr::LOCALHOST)),
                80,
            ),
            &p6,
        ),
    ] {
        let mut c = begin(label, dest, CLIENT);
        let expected = if dest.is_ipv4() { a4 } else { a6 };
        match treated(&c) {
            Treated::Unfiltered | Treated::Refused(_) if faults => {
                if treated(&c) == Treated::Unfiltered {
                    unfiltered_seen += 1;
                }
                step(
                    format!("{label}: redirect"),
                    true,
                    format!(
                        "{dest}: {:?} under the fault plan (a counted fail-open, or fail-closed); not connected",
                        treated(&c)
                    ),
                );
                close(c);
                continue;
            }
            t => check(
                &format!("{label}: redirect"),
                t == Treated::To(Some(expected)),
                format!("{dest} -> {:?} (refused: {:?})", c.target, c.refused),
            ),
        }
        establish(&mut c, CLIENT);
        let sent = send(&mut c, request);
        let got = accept_within(listener)
            .map(|mut s| read_all(&mut s))
            .unwrap_or_default();
        let local = c.stream.as_ref().and_then(|s| s.local_addr().ok());
        // The proxy gets the header, then the request — or, when a fault kept
        // the header from going out, nothing (the data was refused).
        let with_header = common::net::proxy_v2::parse(&got)
            .is_ok_and(|p| got.get(p.len..) == Some(&request[..]));
        let refused = faults && got.is_empty() && sent.is_err();
        check(
            &format!("{label}: at proxy"),
            (with_header && sent.is_ok()) || refused,
            format!(
                "client {} bytes {}{}",
                local.map(|l| l.to_string()).unwrap_or_default(),
                hex(&got),
                if refused {
                    format!(" (data refused with errno {:?}: fail-closed)", sent.err())
                } else {
                    String::new()
                }
            ),
        );
        // Lookup of the live connection through the control.
        let mut q = header(17, 28);
        q.extend(endpoint(local));
        q.resize(64, 0);
        let mut resp = Vec::new();
        let e = retried(|| {
            let (e, r) = ctl::getopt(client, 17, &q);
            resp = r;
            e
        });
        check(
            &format!("{label}: lookup"),
            e == 0 && (resp.len() == 40 || refused),
            format!("errno {e}, response {}", hex(&resp)),
        );
        close(c);
    }
    // Direct cases.
    for (label, dest, proc_, listener) in [
        ("C (no rule)", d1, CLIENT, &direct1),
        ("D (excluded process)", d2, (777, "excluded-app"), &direct2),
        (
            "E (proxy's own process)",
            d2,
            (PROXY_PID, "prx-proxy"),
            &direct2,
        ),
    ] {
        let mut c = begin(label, dest, proc_);
        if faults && treated(&c) == Treated::Unfiltered {
            unfiltered_seen += 1;
        }
        check(
            &format!("{label}: direct"),
            c.target == Some(dest) && c.refused.is_none(),
            format!("{dest} -> {:?} (refused: {:?})", c.target, c.refused),
        );
        establish(&mut c, proc_);
        let _ = send(&mut c, b"direct\n");
        let got = accept_within(listener)
            .map(|mut s| read_all(&mut s))
            .unwrap_or_default();
        check(
            &format!("{label}: at server"),
            got == b"direct\n",
            format!("server got {:?}", String::from_utf8_lossy(&got)),
        );
        close(c);
    }
    // Rules replaced while a connection is in flight.
    let mut g = begin("G", d2, CLIENT);
    let mut gen2 = gen1.clone();
    gen2[3] = rule(Some((lo2, 32)), (0, 65535), None, 1, true);
    let e = retried(|| ctl::setopt(client, 1, &rules_msg(&gen2)));
    check(
        "control: rules replaced",
        e == 0,
        format!("while G is between connect_out and connected: {e}"),
    );
    // Under a fault plan G or H may be left unfiltered (it then reaches the
    // direct server, counted) or refused; redirected, it must reach the proxy
    // as its rules say.
    let g_treated = treated(&g);
    let g_excused = faults && g_treated != Treated::To(Some(a4));
    if g_treated == Treated::Unfiltered {
        unfiltered_seen += 1;
    }
    check(
        "G: redirect",
        g_treated == Treated::To(Some(a4))
            || (g_excused && matches!(g_treated, Treated::Unfiltered | Treated::Refused(_))),
        format!("{d2}: {g_treated:?}"),
    );
    establish(&mut g, CLIENT);
    let sent_g = send(&mut g, b"G\n");
    let got_g = if g_excused {
        Vec::new()
    } else {
        accept_within(&p4)
            .map(|mut s| read_all(&mut s))
            .unwrap_or_default()
    };
    check(
        "G: old rules",
        g_excused || got_g == b"G\n" || (faults && got_g.is_empty() && sent_g.is_err()),
        format!(
            "decided under generation 1 (no PROXY header): proxy got {}",
            hex(&got_g)
        ),
    );
    close(g);
    let mut h = begin("H", d2, CLIENT);
    let h_treated = treated(&h);
    let h_excused = faults && h_treated != Treated::To(Some(a4));
    if h_treated == Treated::Unfiltered {
        unfiltered_seen += 1;
    }
    check(
        "H: redirect",
        h_treated == Treated::To(Some(a4))
            || (h_excused && matches!(h_treated, Treated::Unfiltered | Treated::Refused(_))),
        format!("{d2}: {h_treated:?}"),
    );
    establish(&mut h, CLIENT);
    let sent_h = send(&mut h, b"H\n");
    let got_h = if h_excused {
        Vec::new()
    } else {
        accept_within(&p4)
            .map(|mut s| read_all(&mut s))
            .unwrap_or_default()
    };
    check(
        "H: new rules",
        h_excused
            || common::net::proxy_v2::parse(&got_h)
                .is_ok_and(|p| got_h.get(p.len..) == Some(&b"H\n"[..]))
            || (faults && got_h.is_empty() && sent_h.is_err()),
        format!(
            "decided under generation 2 (PROXY header): proxy got {}",
            hex(&got_h)
        ),
    );
    close(h);
    // K: a `block` rule. Refused at connect (ECONNREFUSED), never connected;
    // left unfiltered (counted) only under a fault plan.
    if let Ok(blocked) = TcpListener::bind(("127.0.0.3", 0))
        && let Ok(kdest) = blocked.local_addr()
    {
        let k = begin("K", kdest, CLIENT);
        let t = treated(&k);
        if faults && t == Treated::Unfiltered {
            unfiltered_seen += 1;
        }
        check(
            "K: blocked",
            t == Treated::Refused(61) || (faults && t == Treated::Unfiltered),
            format!("{kdest}: {t:?} (want refused with ECONNREFUSED, 61)"),
        );
        close(k);
    } else {
        check("K: blocked", false, "cannot bind 127.0.0.3".into());
    }
    // Statistics.
    let mut q = header(16, 8);
    q.resize(256, 0);
    let mut st = Vec::new();
    let e = retried(|| {
        let (e, r) = ctl::getopt(client, 16, &q);
        st = r;
        e
    });
    let parsed = super::ipctl::parse_stats(&st);
    let named = parsed.as_ref().map(|c| super::stat_names::render(c));
    check(
        "control: stats",
        e == 0 && named.is_some(),
        named.unwrap_or_else(|| format!("errno {e}, {}", hex(&st))),
    );
    // Every socket the scenario saw left unfiltered is counted by the kext.
    let counted = parsed
        .as_ref()
        .and_then(|c| {
            c.iter()
                .find(|(id, _)| *id == common::net::control::stat::SOCKETS_UNFILTERED)
        })
        .map(|(_, v)| *v);
    check(
        "fail-open counted",
        counted.is_some_and(|n| n >= unfiltered_seen),
        format!(
            "{unfiltered_seen} connection(s) of the scenario left unfiltered; the kext counts {counted:?} (sockets left unfiltered)"
        ),
    );
    // Stop refused while the client is connected.
    for k in kexts.iter_mut() {
        if k.loaded.stop == 0 {
            continue;
        }
        let r = super::abi::invoke(
            k.loaded.stop,
            &format!("stop {} (control client connected)", k.label),
            || k.loaded.call_entry(k.loaded.stop),
        );
        check(
            "stop while a control client is connected",
            r.is_some_and(|r| r != 0),
            format!("stop returned {r:?}"),
        );
    }
    ctl::disconnect(client);
    step("control: disconnect", true, "client closed");
    ok
}
