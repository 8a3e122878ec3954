//! Multi-threaded scenarios and the soak: the kexts' callbacks delivered from
//! several threads at once ([`crate::emu::kernel::mt`]), as xnu's CPUs deliver them.
//!
//! - `mt-nat`: N threads (default 4) push TCP and UDP flows to 203.0.113.0/24
//!   through `ipf_output`/`ipf_input` at once — SYN, the proxy's SYN-ACK, ACK,
//!   data both ways, FIN both ways; UDP out and back. Every outbound packet
//!   must reach the wire redirected to the proxy (192.0.2.1:3128), every reply
//!   must reach the client as from the origin, none may be dropped (a per-packet
//!   lock that drops under contention fails it), none may leak to the origin;
//!   the run must have seen locks contended and threads preempted inside them.
//! - `mt-sockfilter`: for each of many sockets, one thread delivers
//!   `sf_notify(connected)` (where PrxSocketFilter injects its PROXY v2 header)
//!   while another sends data through `sf_data_out`, as xnu allows (it drops
//!   the socket lock around both). Data may be refused until the header is out,
//!   never pass before it; the header goes out exactly once; the cookie-race
//!   check ([`crate::emu::kernel::sflt::CookieWatch`]) sees a common lock.
//! - `soak`: both kexts, many flows (the IP filter's NAT table fills, wraps and
//!   expires as the emulated clock is advanced), socket connections through
//!   the socket filter, several threads, the run's fault plan; ends with one
//!   summary line (packets, flows, expired, drops by reason, leaks to the
//!   origin, ledger violations). Under faults drops are expected (counted by
//!   reason); a leak to the origin, a mistranslated packet or a connection
//!   redirected without its PROXY v2 header fails it.

use std::ffi::c_int;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use common::sys::{EINVAL, ENOTCONN};

use super::ctlmsg::{CONTROL_NAME, endpoint, header, rule, rules_msg};
use super::sockets::{PROXY_PID, attach_tcp_filters};
use super::stat_names;
use super::traffic::{Wire, ip_path};
use crate::emu::abi::mbuf::REQ_IP;
use crate::emu::abi::net::{attached_filters, data_through};
use crate::emu::abi::{ctl, net};
use crate::emu::kernel;
use crate::emu::kernel::events::step;
use crate::emu::kernel::mt;

/// The IP filter's proxy in every `nat-*`/`mt-*` scenario (see [`super::ipctl`]).
const PROXY4: [u8; 4] = [192, 0, 2, 1];
const PROXY_PORT: u16 = 3128;
/// The socket filter's IPv4 proxy here (nothing listens: no real connection is made).
const SOCK_PROXY4: ([u8; 4], u16) = ([127, 0, 0, 1], 3129);

/// How a load is run.
#[derive(Debug, Clone)]
pub struct Load {
    /// Packets through the IP filter, over all threads (approximate: whole flows).
    pub packets: u64,
    pub threads: usize,
    /// One socket connection through the socket filter per this many IP flows (0: none).
    pub socket_every: u64,
    /// Emulated time added every 100 packets of thread 0 (ns); 0: the clock
    /// moves only as the kexts read it.
    pub advance_ns: u64,
}

/// What a load saw.
#[derive(Debug, Default)]
pub struct Tally {
    pub packets: AtomicU64,
    pub flows: AtomicU64,
    pub redirected: AtomicU64,
    pub translated: AtomicU64,
    pub untranslated: AtomicU64,
    pub dropped_out: AtomicU64,
    pub dropped_in: AtomicU64,
    pub leaks: AtomicU64,
    pub wrong: AtomicU64,
    pub sockets: AtomicU64,
    pub sock_redirected: AtomicU64,
    pub sock_refused: AtomicU64,
    pub sock_unfiltered: AtomicU64,
    pub sock_leaks: AtomicU64,
    pub headers: AtomicU64,
    pub header_missing: AtomicU64,
    pub data_refused: AtomicU64,
    /// The first few problems, described.
    pub problems: std::sync::Mutex<Vec<String>>,
}

impl Tally {
    fn problem(&self, what: String) {
        if let Ok(mut p) = self.problems.lock()
            && p.len() < 8
        {
            p.push(what);
        }
    }
    fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FlowKind {
    TcpFull,
    TcpAbandoned,
    Udp,
}

struct Flow {
    src: [u8; 4],
    sport: u16,
    dst: [u8; 4],
    dport: u16,
    kind: FlowKind,
}

/// Flow `n` of thread `t`: a source (address, port) of its own per thread,
/// 32,000 of them (8,000 ports on 4 addresses) used in turn, so long runs
/// wrap and reuse the 5-tuples of earlier flows (closed, expired, or still
/// established: a new SYN then reopens the entry).
fn flow(t: usize, n: u64) -> Flow {
    let sport = 1024 + (n % 8_000) as u16;
    let hi = (n / 8_000) % 4;
    Flow {
        src: [10, 1 + (t % 250) as u8, 0, hi as u8],
        sport,
        dst: [203, 0, 113, 1 + (n % 250) as u8],
        dport: 80,
        kind: match n % 4 {
            0 | 1 => FlowKind::TcpFull,
            2 => FlowKind::TcpAbandoned,
            _ => FlowKind::Udp,
        },
    }
}

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const PSH: u8 = 0x08;
const FIN: u8 = 0x01;

/// The flow's packets: (outbound, bytes).
fn packets(f: &Flow) -> Vec<(bool, Vec<u8>)> {
    use crate::emu::kernel::packet::tcp_v4;
    let out = |seq, ack, flags, data: &[u8]| {
        (
            true,
            tcp_v4(f.src, f.sport, f.dst, f.dport, seq, ack, flags, data),
        )
    };
    // Replies come from the proxy, to the client's own address and port.
    let back = |seq, ack, flags, data: &[u8]| {
        (
            false,
            tcp_v4(PROXY4, PROXY_PORT, f.src, f.sport, seq, ack, flags, data),
        )
    };
    match f.kind {
        FlowKind::TcpFull => vec![
            out(100, 0, SYN, b""),
            back(500, 101, SYN | ACK, b""),
            out(101, 501, ACK, b""),
            out(101, 501, PSH | ACK, b"GET / HTTP/1.0\r\n\r\n"),
            back(501, 119, PSH | ACK, b"HTTP/1.0 200 OK\r\n\r\n"),
            out(119, 520, FIN | ACK, b""),
            back(520, 120, FIN | ACK, b""),
            out(120, 521, ACK, b""),
        ],
        FlowKind::TcpAbandoned => vec![
            out(100, 0, SYN, b""),
            back(500, 101, SYN | ACK, b""),
            out(101, 501, ACK, b""),
        ],
        FlowKind::Udp => {
            let udp = |src: [u8; 4], sp: u16, dst: [u8; 4], dp: u16, p: &[u8]| {
                let mut v = Vec::new();
                let _ = etherparse::PacketBuilder::ipv4(src, dst, 64)
                    .udp(sp, dp)
                    .write(&mut v, p);
                v
            };
            vec![
                (true, udp(f.src, f.sport, f.dst, 53, b"query")),
                (false, udp(PROXY4, PROXY_PORT, f.src, f.sport, b"answer")),
            ]
        }
    }
}

/// (src, sport, dst, dport) of an IPv4 TCP/UDP packet.
fn ends(p: &[u8]) -> Option<([u8; 4], u16, [u8; 4], u16)> {
    let ihl = usize::from(p.first()? & 0xf) * 4;
    let a = |o: usize| -> Option<[u8; 4]> { p.get(o..o + 4)?.try_into().ok() };
    let port = |o: usize| Some(u16::from_be_bytes([*p.get(o)?, *p.get(o + 1)?]));
    Some((a(12)?, port(ihl)?, a(16)?, port(ihl + 2)?))
}

/// One packet through the filters; tallies where it went.
fn one_packet(f: &Flow, output: bool, bytes: Vec<u8>, tally: &Tally) {
    let dport = if f.kind == FlowKind::Udp { 53 } else { f.dport };
    let mut wire = Wire::default();
    let req = if output { REQ_IP } else { 0 };
    ip_path(&mut wire, bytes, req, output, None);
    tally.packets.fetch_add(1, Ordering::Relaxed);
    if let Some(r) = wire.rejected.first() {
        tally.wrong.fetch_add(1, Ordering::Relaxed);
        tally.problem(format!("a packet of {:?}:{}: {r}", f.src, f.sport));
        return;
    }
    if output {
        match wire.out.first().and_then(|p| ends(p)) {
            Some((s, sp, d, dp))
                if d == PROXY4 && dp == PROXY_PORT && s == f.src && sp == f.sport =>
            {
                tally.redirected.fetch_add(1, Ordering::Relaxed);
            }
            Some((_, _, d, _)) if d[..3] == [203, 0, 113] => {
                tally.leaks.fetch_add(1, Ordering::Relaxed);
                tally.problem(format!(
                    "LEAK: a packet of {:?}:{} reached the wire to the origin {d:?}",
                    f.src, f.sport
                ));
            }
            Some(other) => {
                tally.wrong.fetch_add(1, Ordering::Relaxed);
                tally.problem(format!(
                    "a packet of {:?}:{} reached the wire as {other:?}",
                    f.src, f.sport
                ));
            }
            None => {
                tally.dropped_out.fetch_add(1, Ordering::Relaxed);
            }
        }
    } else {
        match wire.delivered_in.first().and_then(|p| ends(p)) {
            Some((s, sp, d, dp)) if s == f.dst && sp == dport && d == f.src && dp == f.sport => {
                tally.translated.fetch_add(1, Ordering::Relaxed);
            }
            Some((s, sp, _, _)) if s == PROXY4 && sp == PROXY_PORT => {
                tally.untranslated.fetch_add(1, Ordering::Relaxed);
            }
            Some(other) => {
                tally.wrong.fetch_add(1, Ordering::Relaxed);
                tally.problem(format!(
                    "a reply to {:?}:{} arrived as {other:?}",
                    f.src, f.sport
                ));
            }
            None => {
                tally.dropped_in.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// One connection through the socket filter, without a real network: attach,
/// `connect_out`, `sf_notify(connected)` (the PROXY v2 header), data through
/// `sf_data_out`, detach. With `racing_sender`, the data is sent from a second
/// thread while the first delivers the notification.
fn one_socket(t: usize, n: u64, racing_sender: bool, tally: &Tally) {
    tally.sockets.fetch_add(1, Ordering::Relaxed);
    let dest = SocketAddr::from(([203, 0, 113, 1 + (n % 250) as u8], 80));
    let so = net::new_socket(2, 1, 6);
    let Some(sid) = kernel::unhandle(so, kernel::Kind::Socket) else {
        return;
    };
    attach_tcp_filters(so, sid, 2);
    let filters = attached_filters(sid);
    let orig = net::sockaddr(dest);
    let mut buf = vec![0u8; 255];
    buf[..orig.len()].copy_from_slice(&orig);
    let mut refused = None;
    for (_, f, cookie) in &filters {
        if f.connect_out == 0 {
            continue;
        }
        match net::call_sf_connect_out(f.connect_out, *cookie, so, &mut buf) {
            Some(0) => {}
            Some(e) => {
                refused = Some(e);
                break;
            }
            None => {
                refused = Some(EINVAL);
                break;
            }
        }
    }
    let target = net::parse_sockaddr(&buf[..orig.len()]);
    let proxy = SocketAddr::from(SOCK_PROXY4);
    if filters.is_empty() {
        // The cookie could not be allocated: the socket is not filtered
        // (a documented, counted fail-open; see the summary's unfiltered count).
        tally.sock_unfiltered.fetch_add(1, Ordering::Relaxed);
    } else if refused.is_some() {
        tally.sock_refused.fetch_add(1, Ordering::Relaxed);
    } else if target == Some(proxy) {
        tally.sock_redirected.fetch_add(1, Ordering::Relaxed);
    } else {
        tally.sock_leaks.fetch_add(1, Ordering::Relaxed);
        tally.problem(format!(
            "LEAK: socket to {dest} left connect_out with {target:?}, not the proxy"
        ));
    }
    if refused.is_none() && !filters.is_empty() && target == Some(proxy) {
        let local = SocketAddr::from(([10, 200, (t % 250) as u8, 1], 1024 + (n % 60_000) as u16));
        kernel::with(|k| {
            if let Some(s) = k.sflt.sockets.get_mut(&sid) {
                s.local = Some(local);
                s.peer = Some(proxy);
            }
        });
        let notify = || {
            for (_, f, cookie) in &filters {
                if f.notify != 0 {
                    net::call_sf_notify(f.notify, *cookie, so, 2 /* sock_evt_connected */);
                }
            }
        };
        // Send until the filter lets the data through or refuses it for good.
        let send = || -> Result<(), c_int> {
            for _ in 0..200 {
                match data_through(so, &filters, b"hello".to_vec(), &[]) {
                    Err(ENOTCONN) => std::thread::yield_now(), // header not out yet
                    r => return r.map(|_| ()),
                }
            }
            Err(ENOTCONN)
        };
        // What was on the stream when the data passed.
        let on_stream = || {
            kernel::with(|k| {
                k.sflt
                    .sockets
                    .get(&sid)
                    .map(|s| s.injected_out.clone())
                    .unwrap_or_default()
            })
        };
        let (sent, before) = if racing_sender {
            std::thread::scope(|s| {
                let sender = s.spawn(|| {
                    mt::thread_seed(1000 + t as u64);
                    let r = send();
                    (r, on_stream())
                });
                notify();
                sender.join().unwrap_or((Err(EINVAL), Vec::new()))
            })
        } else {
            notify();
            let r = send();
            (r, on_stream())
        };
        let after = on_stream();
        let headers = after
            .iter()
            .filter(|b| common::net::proxy_v2::parse(b).is_ok())
            .count();
        match sent {
            Ok(()) => {
                // The data passed: the header must have been out before it, once.
                let first_is_header = before
                    .first()
                    .is_some_and(|b| common::net::proxy_v2::parse(b).is_ok());
                if !first_is_header || headers != 1 {
                    tally.header_missing.fetch_add(1, Ordering::Relaxed);
                    tally.problem(format!(
                        "socket to {dest}: data passed with {} PROXY v2 header(s) on the stream before it, {headers} in all",
                        usize::from(first_is_header)
                    ));
                } else {
                    tally.headers.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(e) => {
                // Fail-closed: the header could not be sent (EPIPE) or never went
                // out; the data was refused, not sent without it.
                tally.data_refused.fetch_add(1, Ordering::Relaxed);
                if headers > 1 {
                    tally.header_missing.fetch_add(1, Ordering::Relaxed);
                    tally.problem(format!("socket to {dest}: {headers} PROXY v2 headers"));
                }
                let _ = e;
            }
        }
    }
    for (_, f, cookie) in &filters {
        net::call_sf_detach(f.detach, *cookie, so);
    }
    kernel::with(|k| {
        k.sflt.sockets.remove(&sid);
    });
}

/// Runs `load` on its threads; returns the tally.
pub fn run(load: &Load) -> Tally {
    let tally = Tally::default();
    let per_thread = load.packets.div_ceil(load.threads.max(1) as u64);
    let start = std::time::Instant::now();
    let progress = AtomicU64::new(0);
    std::thread::scope(|s| {
        for t in 0..load.threads.max(1) {
            let tally = &tally;
            let progress = &progress;
            s.spawn(move || {
                mt::thread_seed(t as u64);
                let mut sent = 0u64;
                let mut n = 0u64;
                while sent < per_thread {
                    let f = flow(t, n);
                    tally.flows.fetch_add(1, Ordering::Relaxed);
                    for (output, bytes) in packets(&f) {
                        one_packet(&f, output, bytes, tally);
                        sent += 1;
                        if t == 0 && load.advance_ns > 0 && sent.is_multiple_of(100) {
                            kernel::with(|k| k.clock_ns += load.advance_ns);
                        }
                    }
                    if load.socket_every > 0 && n.is_multiple_of(load.socket_every) {
                        one_socket(t, n, t % 2 == 1, tally);
                    }
                    n += 1;
                    let done = progress.fetch_add(1, Ordering::Relaxed) + 1;
                    if done.is_multiple_of(20_000) {
                        step(
                            "progress",
                            true,
                            format!(
                                "{} packets, {done} flows, {:.0} s",
                                Tally::get(&tally.packets),
                                start.elapsed().as_secs_f64()
                            ),
                        );
                    }
                }
                // Late kernel work (ipf_detach, sf_unregistered) is delivered by the scenario.
                crate::emu::kernel::flush_log();
            });
        }
    });
    tally
}

/// Configures the socket filter (if loaded) as the multi-threaded scenarios
/// need it: IPv4 proxy 127.0.0.1:3129, 203.0.113.0/24 redirected with PROXY v2.
pub fn configure_sockets() -> Option<bool> {
    if !kernel::with(|k| k.ctl.live().iter().any(|r| r.name == CONTROL_NAME)) {
        return None;
    }
    let c = match ctl::connect(CONTROL_NAME, true) {
        Ok(c) => c,
        Err(e) => {
            step("socket control: connect", false, format!("errno {e}"));
            return Some(false);
        }
    };
    let mut m = header(2, 8 + 64);
    m.extend(endpoint(Some(SocketAddr::from(SOCK_PROXY4))));
    m.extend(endpoint(None));
    m.extend(3u32.to_be_bytes());
    m.extend((PROXY_PID as u32).to_be_bytes());
    let mut name = [0u8; 16];
    name[..9].copy_from_slice(b"prx-proxy");
    m.extend(name);
    let e1 = ctl::setopt(c, 2, &m);
    let net4: std::net::IpAddr = [203, 0, 113, 0].into();
    let e2 = ctl::setopt(
        c,
        1,
        &rules_msg(&[rule(Some((net4, 24)), (0, 65535), None, 1, true)]),
    );
    ctl::disconnect(c);
    let ok = e1 == 0 && e2 == 0;
    step(
        "socket control: configure",
        ok,
        format!(
            "proxy 127.0.0.1:3129: errno {e1}; 203.0.113.0/24 → proxy with PROXY v2: errno {e2}"
        ),
    );
    Some(ok)
}

/// Drops by reason, expired and evicted flows from the IP filter's statistics.
fn ip_counters(stats: &[(u32, u64)]) -> (Vec<(String, u64)>, u64, u64) {
    use common::net::control::stat;
    let drops = stats
        .iter()
        .filter(|(id, v)| (stat::IP_DROP_BASE..stat::IP_DROP_BASE + 0x100).contains(id) && *v > 0)
        .map(|(id, v)| (stat_names::name(*id), *v))
        .collect();
    let get = |want: u32| {
        stats
            .iter()
            .find(|(id, _)| *id == want)
            .map(|(_, v)| *v)
            .unwrap_or(0)
    };
    (
        drops,
        get(stat::IP_FLOWS_EXPIRED),
        get(stat::IP_FLOWS_EVICTED),
    )
}

fn contention_line() -> String {
    let (pre, contended, skipped) = mt::stats();
    let (overlapped, most) = mt::overlap();
    let sleeps = mt::sleeps();
    format!(
        "{overlapped} callbacks began while another ran (at most {most} at once), {pre} preemptions, {contended} contended lock acquisitions, {sleeps} sleeps for a lock (msleep), {skipped} skipped lock calls (lock-skip)"
    )
}

/// Whether the run really delivered callbacks at once.
fn concurrent() -> bool {
    let (overlapped, most) = mt::overlap();
    overlapped > 0 && most > 1
}

/// `mt-nat`: see the module documentation. `configured`: a prx IP filter was
/// configured (the traffic must then be redirected); other IP filters (the C
/// test kexts) are driven as they are, and only the ledgers, faults and panics
/// judge them.
pub fn mt_nat(threads: usize, configured: bool) -> bool {
    let load = Load {
        packets: 16_000,
        threads,
        socket_every: 0,
        advance_ns: 0,
    };
    let t = run(&load);
    let stats = super::ipctl::stats().unwrap_or_default();
    let (drops, _, _) = ip_counters(&stats);
    let g = Tally::get;
    let problems = t.problems.lock().map(|p| p.join("; ")).unwrap_or_default();
    let all_good = !configured
        || (g(&t.leaks) == 0
            && g(&t.wrong) == 0
            && g(&t.dropped_out) == 0
            && g(&t.dropped_in) == 0
            && g(&t.untranslated) == 0
            && drops.is_empty());
    step(
        "mt-nat: traffic",
        all_good,
        format!(
            "{}{threads} threads, {} packets, {} flows: {} redirected, {} replies translated, {} untranslated, dropped {} out / {} in, {} leaks, {} wrong; kext drops {:?}{}",
            if configured {
                ""
            } else {
                "not a prx IP filter (driven as it is): "
            },
            g(&t.packets),
            g(&t.flows),
            g(&t.redirected),
            g(&t.translated),
            g(&t.untranslated),
            g(&t.dropped_out),
            g(&t.dropped_in),
            g(&t.leaks),
            g(&t.wrong),
            drops,
            if problems.is_empty() {
                String::new()
            } else {
                format!("; {problems}")
            }
        ),
    );
    let concurrent = concurrent();
    step(
        "mt-nat: concurrency",
        concurrent,
        format!(
            "{} (a run without overlapping callbacks tests nothing)",
            contention_line()
        ),
    );
    all_good && concurrent
}

/// `mt-sockfilter`: see the module documentation.
pub fn mt_sockfilter(threads: usize) -> bool {
    let Some(true) = configure_sockets() else {
        step(
            "mt-sockfilter",
            false,
            "PrxSocketFilter's control is not registered or refused the configuration",
        );
        return false;
    };
    let tally = Tally::default();
    let per_thread = 150u64;
    std::thread::scope(|s| {
        for t in 0..threads.max(1) {
            let tally = &tally;
            s.spawn(move || {
                mt::thread_seed(t as u64);
                for n in 0..per_thread {
                    one_socket(t, n, true, tally);
                }
                crate::emu::kernel::flush_log();
            });
        }
    });
    let g = Tally::get;
    let problems = tally
        .problems
        .lock()
        .map(|p| p.join("; "))
        .unwrap_or_default();
    let good = g(&tally.sock_leaks) == 0
        && g(&tally.header_missing) == 0
        && g(&tally.sock_redirected) == g(&tally.sockets)
        && g(&tally.headers) + g(&tally.data_refused) == g(&tally.sock_redirected)
        && g(&tally.headers) > 0;
    step(
        "mt-sockfilter: connections",
        good,
        format!(
            "{threads} threads, {} sockets (notify and data_out of each on two threads at once): {} redirected, {} data after its PROXY v2 header, {} data refused (header not out), {} without header, {} leaks{}",
            g(&tally.sockets),
            g(&tally.sock_redirected),
            g(&tally.headers),
            g(&tally.data_refused),
            g(&tally.header_missing),
            g(&tally.sock_leaks),
            if problems.is_empty() {
                String::new()
            } else {
                format!("; {problems}")
            }
        ),
    );
    let concurrent = concurrent();
    step("mt-sockfilter: concurrency", concurrent, contention_line());
    good && concurrent
}

/// The soak's parameters (`--soak PACKETS --threads N`).
#[derive(Debug, Clone, Copy)]
pub struct SoakArgs {
    pub packets: u64,
    pub threads: usize,
}

static ARGS: std::sync::Mutex<Option<SoakArgs>> = std::sync::Mutex::new(None);

/// Sets the parameters of the `soak` scenario and the threads of `mt-*` (child arguments).
pub fn set_args(a: SoakArgs) {
    if let Ok(mut g) = ARGS.lock() {
        *g = Some(a);
    }
}

/// The parameters set by [`set_args`], or the defaults (a short soak, 4 threads).
pub fn args() -> SoakArgs {
    ARGS.lock().ok().and_then(|g| *g).unwrap_or(SoakArgs {
        packets: 40_000,
        threads: 4,
    })
}

/// `soak`: see the module documentation. Returns whether the traffic passed
/// and the summary line without the ledger count, which the scenario
/// completes after the kexts are stopped and the ledgers checked
/// ([`summary_line`]).
pub fn soak(args: SoakArgs) -> (bool, String) {
    let strict_faults = kernel::with(|k| k.faults.rules.is_empty());
    let _ = configure_sockets();
    let load = Load {
        packets: args.packets,
        threads: args.threads,
        socket_every: 16,
        // 5 s of emulated time every 100 packets of thread 0 (about 75 new
        // flows, a quarter of them left established): transitory (4 min) and
        // UDP (5 min) timeouts fire within 5,000 packets, established ones
        // (2 h 4 min) after about 600,000; meanwhile the abandoned flows fill
        // the table (16,384 IPv4 flows by default).
        advance_ns: 5_000_000_000,
    };
    let start = std::time::Instant::now();
    let t = run(&load);
    let secs = start.elapsed().as_secs_f64();
    let stats = super::ipctl::stats().unwrap_or_default();
    let (drops, expired, evicted) = ip_counters(&stats);
    let g = Tally::get;
    let leaks = g(&t.leaks) + g(&t.sock_leaks);
    let problems = t.problems.lock().map(|p| p.join("; ")).unwrap_or_default();
    let good = leaks == 0
        && g(&t.wrong) == 0
        && g(&t.header_missing) == 0
        && (!strict_faults || g(&t.sock_unfiltered) == 0);
    let drops_text = if drops.is_empty() {
        "none".to_string()
    } else {
        drops
            .iter()
            .map(|(n, v)| format!("{n} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !problems.is_empty() {
        step("soak: problems", false, problems);
    }
    step(
        "soak: concurrency",
        true,
        format!("{} threads; {}", args.threads, contention_line()),
    );
    let line = format!(
        "packets {} flows {} expired {} evicted {} drops [{}] (dropped out {} in {}, replies untranslated {}) sockets {} (redirected {}, PROXY v2 first {}, refused {}, data refused {}, unfiltered {}) leaks-to-origin {} mistranslated {} missing-headers {} traffic {:.1} s",
        g(&t.packets),
        g(&t.flows) + g(&t.sockets),
        expired,
        evicted,
        drops_text,
        g(&t.dropped_out),
        g(&t.dropped_in),
        g(&t.untranslated),
        g(&t.sockets),
        g(&t.sock_redirected),
        g(&t.headers),
        g(&t.sock_refused),
        g(&t.data_refused),
        g(&t.sock_unfiltered),
        leaks,
        g(&t.wrong),
        g(&t.header_missing),
        secs
    );
    step("soak: traffic", good, line.clone());
    (good, line)
}

/// The soak's closing line: the traffic summary and the ledger violations of
/// the whole run (after stop and unload).
pub fn summary_line(traffic: &str, violations: usize) -> String {
    format!("soak summary: {traffic} ledger-violations {violations}")
}
