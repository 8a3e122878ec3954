//! PrxSocketFilter.kext: rule-based redirection of outgoing TCP connections to a proxy.
//!
//! How it works (see docs/filters.md, "How the socket filter works"):
//! - Two global socket filters (PF_INET and PF_INET6, SOCK_STREAM/TCP) attach to
//!   every TCP socket a user process creates (kernel sockets, pid 0, are left
//!   alone) and remember the creating pid and process name in the cookie.
//! - `connect_out` decides once per connection, under one consistent snapshot
//!   of the configuration (rules, proxies, enabled): pass, refuse (`block`), or
//!   rewrite the destination to the proxy of the socket's family (an IPv6
//!   socket may use the IPv4 proxy through its IPv4-mapped address). The
//!   proxy's own process and connections to the proxy itself are never
//!   redirected. A failed rewrite fails the connection; it is never half-done.
//! - When a redirected connection is established, its original destination is
//!   recorded under the client's address (for `prxctl lookup`) and, if the rule
//!   asks, a PROXY v2 header (with the client's pid and process name as
//!   custom TLVs) is injected as the first bytes of the stream,
//!   tagged so this filter lets it through; application data is refused until
//!   the header is out, and if the header cannot be sent the connection's data
//!   is refused (EPIPE) rather than sent without it.
//! - Each header ends with an authenticating TLV (`proxy_v2::TLV_AUTH`): a
//!   tag keyed by 32 bytes drawn from `read_random` at start, which only
//!   the privileged control hands out (op `GetAuthKey`), so prxd can tell the
//!   kext's headers from any local process's.
//! - A privileged kern_control (`net.prx.kext.SocketFilter.control`) carries the
//!   control protocol of `common::net::control`.
//! - Stop refuses (busy) while control clients are connected, unregisters both
//!   filters once, and succeeds only after both `sf_unregistered` callbacks and
//!   once every socket is detached and no callback uses the state.
#![no_std]
#![forbid(unsafe_code)]
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::float_arithmetic
)]

use core::ffi::c_int;
use core::sync::atomic::{AtomicU64, Ordering};

use common::kpi::alloc::{self, KSlice};
use common::kpi::ctl::{self, Control};
use common::kpi::errno::{ECONNREFUSED, EHOSTUNREACH, ENOTCONN, ENOTSUP, EPIPE, Errno};
use common::kpi::global::Global;
use common::kpi::lock::{self, Mutex, RwLock};
use common::kpi::rules::{self as krules, KRuleSet};
use common::kpi::sflt::{self, Data, Event, Injection, MbufTag, SockAddrMut, Socket, SocketFilter};
use common::kpi::{KextError, clock, log, proc, random};
use common::net::addr::{Endpoint, Family};
use common::net::control::{self as proto, GetRequest, SetRequest, Status, stat};
use common::net::kextlog::{Dec, Ep, LogLevel, RuleNo};
use common::net::origdst::{Original, Slot, Table};
use common::net::policy::{self, Decision, Proxies};
use common::net::proxy_v2;
use common::net::rules::{self, Action, ProcName};
use common::net::wire;
use common::sys::{CTL_FLAG_PRIVILEGED, IPPROTO_TCP, PF_INET, PF_INET6, SOCK_STREAM};

const HANDLE_V4: u32 = 0x5052_5834; // 'PRX4'
const HANDLE_V6: u32 = 0x5052_5836; // 'PRX6'
const ORIGDST_CAPACITY: usize = 4096;

type Rules = KRuleSet;

/// One consistent configuration snapshot: what `connect_out` decides with.
struct Config {
    enabled: bool,
    proxies: Proxies,
    rules: Rules,
    generation: u32,
}

/// Counters, indexed by `stat` id - 1.
const COUNTERS: [u32; 8] = [
    stat::CONN_SEEN,
    stat::CONN_REDIRECTED,
    stat::CONN_PASSED,
    stat::CONN_FAILED,
    stat::CONN_BLOCKED,
    stat::PROXY_HEADERS,
    stat::SOCKETS_ATTACHED,
    stat::ORIGDST_FULL,
];

struct Shared {
    config: RwLock<Config>,
    origdst: Mutex<Table<KSlice<Slot>>>,
    counters: [AtomicU64; 8],
    tag: MbufTag,
    /// The PROXY v2 headers' authentication key, drawn at start.
    auth_key: proxy_v2::AuthKey,
}

impl Shared {
    fn count(&self, id: u32) {
        if let Some(c) = COUNTERS
            .iter()
            .position(|i| *i == id)
            .and_then(|i| self.counters.get(i))
        {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }
}

static STATE: Global<Shared> = Global::new();

/// Decisions, rule changes and failures (`prxctl log-level`), rate-limited.
static LOG: log::Logger = log::Logger::new(c"PrxSocketFilter");

/// The pid and name of a connection, for log lines.
struct Who<'a>(&'a Conn);

impl core::fmt::Display for Who<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let name = core::str::from_utf8(self.0.name.as_bytes()).unwrap_or("?");
        write!(f, "pid {} {name}", Dec(i64::from(self.0.pid)))
    }
}

// ---- the socket filter ----

#[derive(Clone, Copy, PartialEq, Eq)]
enum Header {
    None,
    Pending,
    Sent,
    Failed,
}

struct Redirected {
    orig: Endpoint,
    rule: u32,
    /// The client address the original destination is recorded under.
    recorded: Option<Endpoint>,
}

struct Conn {
    pid: i32,
    name: ProcName,
    family: Family,
    redirect: Option<Redirected>,
    header: Header,
}

struct Filter;

impl Filter {
    fn header_failed(c: &mut Conn, st: &Shared) {
        c.header = Header::Failed;
        st.count(stat::CONN_FAILED);
        LOG.log(
            LogLevel::Decisions,
            format_args!(
                "PROXY v2 header not sent ({}); refusing the connection's data",
                Who(c)
            ),
        );
    }
}

impl SocketFilter for Filter {
    type Cookie = Conn;

    fn attach(so: &Socket) -> Result<Conn, Errno> {
        let pid = proc::self_pid();
        if pid <= 0 {
            return Err(ENOTSUP); // kernel sockets: not ours to redirect
        }
        let family = so.family().ok_or(ENOTSUP)?;
        Ok(Conn {
            pid,
            name: proc::name(pid),
            family,
            redirect: None,
            header: Header::None,
        })
    }

    fn detach(c: Conn, _so: &Socket) {
        if let Some(client) = c.redirect.and_then(|r| r.recorded)
            && let Some(st) = STATE.get()
        {
            st.origdst.lock().remove(&client);
        }
    }

    fn connect_out(c: &mut Conn, _so: &Socket, to: &mut SockAddrMut<'_>) -> Result<(), Errno> {
        let Some(st) = STATE.get() else { return Ok(()) };
        let Some(dst) = to.endpoint() else {
            return Ok(());
        };
        st.count(stat::CONN_SEEN);
        let decision = {
            let cfg = st.config.read();
            let pid = u32::try_from(c.pid).unwrap_or(0);
            // The filters are registered for SOCK_STREAM/IPPROTO_TCP only.
            let conn = rules::Conn {
                dst,
                pid,
                name: c.name.as_bytes(),
                protocol: wire::proto::TCP,
            };
            policy::decide(cfg.enabled, &cfg.rules, &cfg.proxies, c.family, &conn)
        };
        match decision {
            Decision::Pass(why) => {
                st.count(stat::CONN_PASSED);
                LOG.log(
                    LogLevel::Debug,
                    format_args!("pass {} ({why:?}; {})", Ep(&dst), Who(c)),
                );
                Ok(())
            }
            Decision::Block { rule } => {
                st.count(stat::CONN_BLOCKED);
                LOG.log(
                    LogLevel::Decisions,
                    format_args!("block {} ({}; {})", Ep(&dst), RuleNo(rule), Who(c)),
                );
                Err(ECONNREFUSED)
            }
            Decision::Redirect {
                to: proxy,
                proxy_v2,
                rule,
            } => {
                if to.set(&proxy).is_err() {
                    // The address is untouched: fail the connection rather than
                    // let it go direct against the rules.
                    st.count(stat::CONN_FAILED);
                    LOG.log(
                        LogLevel::Decisions,
                        format_args!(
                            "redirect of {} to {} failed: the address could not be rewritten ({})",
                            Ep(&dst),
                            Ep(&proxy),
                            Who(c)
                        ),
                    );
                    return Err(EHOSTUNREACH);
                }
                LOG.log(
                    LogLevel::Decisions,
                    format_args!(
                        "redirect {} -> {}{} ({}; {})",
                        Ep(&dst),
                        Ep(&proxy),
                        if proxy_v2 { " with PROXY v2" } else { "" },
                        RuleNo(rule),
                        Who(c)
                    ),
                );
                c.redirect = Some(Redirected {
                    orig: dst,
                    rule,
                    recorded: None,
                });
                c.header = if proxy_v2 {
                    Header::Pending
                } else {
                    Header::None
                };
                st.count(stat::CONN_REDIRECTED);
                Ok(())
            }
        }
    }

    fn notify(c: &mut Conn, so: &Socket, event: Event) -> Option<Injection> {
        if event != Event::Connected {
            return None;
        }
        let st = STATE.get()?;
        let r = c.redirect.as_mut()?;
        let client = so.local();
        if let Some(client) = client {
            let o = Original {
                dst: r.orig,
                pid: u32::try_from(c.pid).unwrap_or(0),
                rule: r.rule,
            };
            if st.origdst.lock().insert(&client, o).is_ok() {
                r.recorded = Some(client);
            } else {
                st.count(stat::ORIGDST_FULL);
            }
        }
        if c.header != Header::Pending {
            return None;
        }
        // The client's pid and process name ride along as custom TLVs.
        let pid = u32::try_from(c.pid).unwrap_or(0);
        let inj = client.and_then(|client| {
            let h = proxy_v2::encode_authenticated(
                &client,
                &r.orig,
                pid,
                c.name.as_bytes(),
                &st.auth_key,
            );
            Injection::new(h.as_bytes(), Some(st.tag))
        });
        if inj.is_none() {
            Self::header_failed(c, &st);
        }
        inj
    }

    fn injected(c: &mut Conn, _so: &Socket, result: Result<(), Errno>) {
        let Some(st) = STATE.get() else { return };
        match result {
            Ok(()) => {
                c.header = Header::Sent;
                st.count(stat::PROXY_HEADERS);
            }
            Err(_) => Self::header_failed(c, &st),
        }
    }

    fn data_out(c: &mut Conn, _so: &Socket, data: &Data<'_>) -> Result<(), Errno> {
        match c.header {
            Header::None | Header::Sent => Ok(()),
            // Our own header passes; nothing else may overtake it.
            _ if STATE.get().is_some_and(|st| data.has_tag(st.tag)) => Ok(()),
            Header::Pending => Err(ENOTCONN),
            Header::Failed => Err(EPIPE),
        }
    }
}

common::socket_filter!(static FILTER_V4: Filter = handle HANDLE_V4, name c"net.prx.kext.SocketFilter.v4");
common::socket_filter!(static FILTER_V6: Filter = handle HANDLE_V6, name c"net.prx.kext.SocketFilter.v6");

// ---- the control ----

struct Ctl;

fn apply_rules(st: &Shared, msg: &proto::RulesMsg<'_>) -> Result<(), Errno> {
    let set = krules::from_msg(msg)?;
    let (old, generation) = {
        let mut cfg = st.config.write();
        cfg.generation = cfg.generation.wrapping_add(1);
        (core::mem::replace(&mut cfg.rules, set), cfg.generation)
    };
    drop(old); // freed outside the lock
    LOG.log(
        LogLevel::Decisions,
        format_args!(
            "rules: {} rule(s), default {:?} (rule set {})",
            Dec::u(msg.count()),
            msg.default_action(),
            Dec::u(generation)
        ),
    );
    Ok(())
}

impl Control for Ctl {
    type Unit = ();

    fn connect(_unit: u32) -> Result<(), Errno> {
        Ok(())
    }

    fn setopt(_u: &mut (), opt: c_int, data: &[u8]) -> Result<(), Errno> {
        let st = STATE.get().ok_or(ENOTCONN)?;
        match proto::decode_set(opt, data).map_err(proto::Error::errno)? {
            SetRequest::Rules(m) => apply_rules(&st, &m),
            SetRequest::Proxies(p) => {
                st.config.write().proxies = p;
                Ok(())
            }
            SetRequest::Enabled(on) => {
                st.config.write().enabled = on;
                Ok(())
            }
            // NAT timeouts are the IP filter's.
            SetRequest::Timeouts(_) => Err(ENOTSUP),
            SetRequest::LogLevel(l) => {
                LOG.set_level(l);
                Ok(())
            }
        }
    }

    fn getopt(_u: &mut (), opt: c_int, buf: &mut [u8]) -> Result<usize, Errno> {
        let st = STATE.get().ok_or(ENOTCONN)?;
        let r = match proto::decode_get(opt, buf).map_err(proto::Error::errno)? {
            GetRequest::Lookup(client) => {
                let found = st.origdst.lock().get(&client);
                proto::encode_lookup_response(found.as_ref(), buf)
            }
            GetRequest::Status => {
                let s = {
                    let cfg = st.config.read();
                    Status {
                        enabled: cfg.enabled,
                        rules: u32::try_from(cfg.rules.len()).unwrap_or(u32::MAX),
                        generation: cfg.generation,
                        attached: u32::try_from(sflt::attached()).unwrap_or(u32::MAX),
                        clients: u32::try_from(ctl::clients()).unwrap_or(u32::MAX),
                        proxies: cfg.proxies,
                    }
                };
                proto::encode_status(&s, buf)
            }
            GetRequest::Rules => {
                let cfg = st.config.read();
                proto::encode_rules_response(cfg.rules.default_action(), cfg.rules.rules(), buf)
            }
            // The control is privileged (root only): the key goes to prxd.
            GetRequest::AuthKey => proto::encode_auth_key_response(&st.auth_key, buf),
            GetRequest::Stats => {
                let mut out = [(0u32, 0u64); 12];
                for ((o, id), c) in out.iter_mut().zip(COUNTERS).zip(st.counters.iter()) {
                    *o = (id, c.load(Ordering::Relaxed));
                }
                let attached = u64::try_from(sflt::attached()).unwrap_or(u64::MAX);
                let generation = u64::from(st.config.read().generation);
                if let Some(o) = out.get_mut(6) {
                    *o = (stat::SOCKETS_ATTACHED, attached);
                }
                if let Some(o) = out.get_mut(8) {
                    *o = (stat::RULES_GENERATION, generation);
                }
                if let Some(o) = out.get_mut(9) {
                    *o = (stat::LOG_LEVEL, LOG.level() as u64);
                }
                if let Some(o) = out.get_mut(10) {
                    *o = (stat::LOG_SUPPRESSED, LOG.suppressed());
                }
                if let Some(o) = out.get_mut(11) {
                    let n = u64::try_from(sflt::unfiltered()).unwrap_or(u64::MAX);
                    *o = (stat::SOCKETS_UNFILTERED, n);
                }
                let used: &[(u32, u64)] = out.get(..12).unwrap_or(&[]);
                proto::encode_stats(used, buf)
            }
        };
        r.map_err(proto::Error::errno)
    }
}

common::kern_control!(static CONTROL: Ctl = name proto::CONTROL_NAME, flags CTL_FLAG_PRIVILEGED);

// ---- start and stop ----

fn make_state() -> Result<(), KextError> {
    let rules = krules::empty(Action::Direct).map_err(|_| KextError::Failed)?;
    let config = Config {
        enabled: true,
        proxies: Proxies::default(),
        rules,
        generation: 0,
    };
    let config = RwLock::try_new(config).map_err(|_| KextError::Failed)?;
    let slots =
        KSlice::try_new(ORIGDST_CAPACITY, Slot::default()).map_err(|_| KextError::Failed)?;
    let origdst = Mutex::try_new(Table::new(slots)).map_err(|_| KextError::Failed)?;
    let tag = MbufTag::find(c"net.prx.kext.SocketFilter", 1).map_err(|_| KextError::Failed)?;
    // A fresh key per load (and so per boot): read_random never blocks.
    let mut key = [0u8; 32];
    random::fill(&mut key);
    let shared = Shared {
        config,
        origdst,
        counters: [const { AtomicU64::new(0) }; 8],
        tag,
        auth_key: proxy_v2::AuthKey(key),
    };
    let b = alloc::KBox::try_new(shared).map_err(|_| KextError::Failed)?;
    STATE.set(b).map_err(|_| KextError::Failed)
}

fn teardown_runtime() -> Result<(), KextError> {
    drop(STATE.take().map_err(|_| KextError::Busy)?);
    lock::fini().map_err(|_| KextError::Busy)?;
    alloc::fini().map_err(|_| KextError::Busy)
}

fn start() -> Result<(), KextError> {
    alloc::init(c"net.prx.kext.SocketFilter").map_err(|_| KextError::Failed)?;
    if lock::init(c"net.prx.kext.SocketFilter").is_err() {
        let _ = alloc::fini();
        return Err(KextError::Failed);
    }
    let registered = make_state()
        .and_then(|()| ctl::register(&CONTROL).map_err(|_| KextError::Failed))
        .and_then(|()| {
            sflt::register(&FILTER_V4, PF_INET, SOCK_STREAM, IPPROTO_TCP)
                .map_err(|_| KextError::Failed)
        })
        .and_then(|()| {
            sflt::register(&FILTER_V6, PF_INET6, SOCK_STREAM, IPPROTO_TCP)
                .map_err(|_| KextError::Failed)
        });
    if registered.is_err() {
        log::line(c"PrxSocketFilter: start failed; unregistering");
        if !undo_registrations() {
            // The kernel would unload code it can still call: stay loaded,
            // inactive, until stop can complete.
            log::line(
                c"PrxSocketFilter: start failed and could not be undone yet; staying loaded: unload it later",
            );
            return Ok(());
        }
        let _ = teardown_runtime();
        return Err(KextError::Failed);
    }
    log::line(c"PrxSocketFilter started: filters registered for PF_INET and PF_INET6 TCP");
    Ok(())
}

/// The counters, one line each, when the kext stops.
fn log_counters() {
    let Some(st) = STATE.get() else { return };
    for (id, c) in COUNTERS.iter().zip(st.counters.iter()) {
        LOG.counter(*id, c.load(Ordering::Relaxed));
    }
}

/// How long start and stop wait for `sf_unregistered` and the sockets'
/// `sf_detach` (xnu's socket-filter cleanup thread runs them after
/// `sflt_unregister` when sockets held the filter).
const UNREGISTER_WAIT_MS: u64 = 2_000;

fn unregistered() -> bool {
    sflt::is_unregistered(HANDLE_V4) && sflt::is_unregistered(HANDLE_V6) && sflt::attached() == 0
}

/// Deregisters the control and unregisters both filters (those registered),
/// then waits for the kernel to let go of them. True when nothing of the kext
/// is registered any more.
fn undo_registrations() -> bool {
    let ctl_gone = ctl::deregister(&CONTROL).is_ok();
    let a = sflt::unregister(HANDLE_V4);
    let b = sflt::unregister(HANDLE_V6);
    ctl_gone && a.is_ok() && b.is_ok() && clock::wait_until(UNREGISTER_WAIT_MS, unregistered)
}

/// xnu does not call a refused stop again (kextunload reports the failure and
/// the kext stays loaded), so stop refuses before removing anything when it
/// can tell, and once it has unregistered the filters it waits for the kernel
/// to release them rather than return busy with the kext inert.
fn stop() -> Result<(), KextError> {
    if ctl::clients() != 0 {
        log::line(c"PrxSocketFilter: stop refused: control clients connected");
        return Err(KextError::Busy);
    }
    if ctl::deregister(&CONTROL).is_err() {
        log::line(c"PrxSocketFilter: stop refused: the control could not be deregistered");
        return Err(KextError::Busy);
    }
    let a = sflt::unregister(HANDLE_V4);
    let b = sflt::unregister(HANDLE_V6);
    if a.is_err() || b.is_err() || !clock::wait_until(UNREGISTER_WAIT_MS, unregistered) {
        // Sockets still hold the filters after 2 s (or the kernel refused):
        // keep the control so prxctl still works; a later kextunload completes
        // the stop once the cleanup thread has released them.
        let _ = ctl::register(&CONTROL);
        log::line(c"PrxSocketFilter: stop refused: the filters are still being released");
        return Err(KextError::Busy);
    }
    log_counters();
    teardown_runtime()?;
    log::line(c"PrxSocketFilter stopped");
    Ok(())
}

common::kext!(start: start, stop: stop);
