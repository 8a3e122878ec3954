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
//! - The decisions are this kext's; `common::kpi::redirect` carries them out
//!   (counted and logged), records the original destinations and sends the
//!   headers.
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

use common::kpi::alloc::KBox;
use common::kpi::config::{Config, Ctl, Filter as ControlSide};
use common::kpi::errno::{ENOTSUP, Errno};
use common::kpi::global::Global;
use common::kpi::lifecycle::Kext;
use common::kpi::lock::RwLock;
use common::kpi::redirect::{self, Redirected, Redirects, Report};
use common::kpi::sflt::{
    self, Data, Event, FilterDef, Injection, SockAddrMut, Socket, SocketFilter,
};
use common::kpi::{KextError, log, proc};
use common::net::addr::{Endpoint, Family};
use common::net::control::{self as proto, StatCounters, StatsWriter, stat};
use common::net::kextlog::Who;
use common::net::origdst::Original;
use common::net::policy;
use common::net::proxy_v2;
use common::net::rules::{self, ProcName};
use common::net::wire;
use common::sys::{CTL_FLAG_PRIVILEGED, IPPROTO_TCP, PF_INET, PF_INET6, SOCK_STREAM};

const HANDLE_V4: u32 = 0x5052_5834; // 'PRX4'
const HANDLE_V6: u32 = 0x5052_5836; // 'PRX6'
const ORIGDST_CAPACITY: usize = 4096;

/// The counters, in statistics order (`SOCKETS_ATTACHED` is reported from
/// `sflt::attached`, the others counted here and in `common::kpi::redirect`).
static COUNTERS: StatCounters<8> = StatCounters::new([
    stat::CONN_SEEN,
    stat::CONN_REDIRECTED,
    stat::CONN_PASSED,
    stat::CONN_FAILED,
    stat::CONN_BLOCKED,
    stat::PROXY_HEADERS,
    stat::SOCKETS_ATTACHED,
    stat::ORIGDST_FULL,
]);

struct Shared {
    config: RwLock<Config>,
    /// The original destinations, the headers' mbuf tag and their
    /// authentication key (drawn at start).
    redirects: Redirects,
}

static STATE: Global<Shared> = Global::new();

/// Decisions, rule changes and failures (`prxctl log-level`), rate-limited.
static LOG: log::Logger = log::Logger::new(c"PrxSocketFilter");

/// Where the redirects count and log.
const REPORT: Report<'static, 8> = Report {
    counters: &COUNTERS,
    log: &LOG,
};

// ---- the socket filter ----

struct Conn {
    pid: i32,
    name: ProcName,
    family: Family,
    redirect: Option<Redirected>,
}

impl Conn {
    /// The pid and name, for log lines.
    fn who(&self) -> Who<'_> {
        Who(self.pid, &self.name)
    }
}

struct Filter;

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
        })
    }

    fn detach(c: Conn, _so: &Socket) {
        if let Some(r) = c.redirect
            && let Some(st) = STATE.get()
        {
            r.detach(&st.redirects);
        }
    }

    fn connect_out(c: &mut Conn, _so: &Socket, to: &mut SockAddrMut<'_>) -> Result<(), Errno> {
        let Some(st) = STATE.get() else { return Ok(()) };
        let Some(dst) = to.endpoint() else {
            return Ok(());
        };
        COUNTERS.count(stat::CONN_SEEN);
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
        // Pass, refuse (ECONNREFUSED) or rewrite the destination to the
        // proxy (EHOSTUNREACH when it cannot be: never a direct connection
        // against the rules), counted and logged.
        if let Some(r) = redirect::carry_out(decision, dst, to, c.who(), &REPORT)? {
            c.redirect = Some(r);
        }
        Ok(())
    }

    fn notify(c: &mut Conn, so: &Socket, event: Event) -> Option<Injection> {
        if event != Event::Connected {
            return None;
        }
        let st = STATE.get()?;
        let r = c.redirect.as_mut()?;
        // The original destination is recorded under the client's address,
        // and the PROXY v2 header (if the rule asks) is injected, tagged.
        let who = Who(c.pid, &c.name);
        st.redirects.connected(r, so.local(), who, &REPORT)
    }

    fn injected(c: &mut Conn, _so: &Socket, result: Result<(), Errno>) {
        if STATE.get().is_none() {
            return;
        }
        if let Some(r) = c.redirect.as_mut() {
            r.injected(result, Who(c.pid, &c.name), &REPORT);
        }
    }

    fn data_out(c: &mut Conn, _so: &Socket, data: &Data<'_>) -> Result<(), Errno> {
        // Our own header passes; nothing else may overtake it (ENOTCONN),
        // nothing goes without it (EPIPE).
        let ours = || STATE.get().is_some_and(|st| st.redirects.is_ours(data));
        c.redirect.as_ref().map_or(Ok(()), |r| r.admits(ours))
    }
}

common::socket_filter!(static FILTER_V4: Filter = handle HANDLE_V4, name c"net.prx.kext.SocketFilter.v4",
    sockets (PF_INET, SOCK_STREAM, IPPROTO_TCP));
common::socket_filter!(static FILTER_V6: Filter = handle HANDLE_V6, name c"net.prx.kext.SocketFilter.v6",
    sockets (PF_INET6, SOCK_STREAM, IPPROTO_TCP));

// ---- the control ----

impl ControlSide for Shared {
    const STATE: &'static Global<Shared> = &STATE;
    const LOG: &'static log::Logger = &LOG;

    fn config(&self) -> &RwLock<Config> {
        &self.config
    }

    fn attached(&self) -> u32 {
        u32::try_from(sflt::attached()).unwrap_or(u32::MAX)
    }

    // NAT timeouts are the IP filter's (`set_timeouts` refuses).

    fn lookup(&self, client: &Endpoint) -> Option<Original> {
        self.redirects.lookup(client)
    }

    /// The control is privileged (root only): the key goes to prxd.
    fn auth_key(&self) -> Option<&proxy_v2::AuthKey> {
        Some(self.redirects.auth_key())
    }

    fn stats(&self, generation: u32, w: &mut StatsWriter) {
        for (id, n) in COUNTERS.each() {
            match id {
                stat::SOCKETS_ATTACHED => w.push_count(id, sflt::attached()),
                _ => w.push(id, n),
            }
        }
        w.push(stat::RULES_GENERATION, u64::from(generation));
        w.push(stat::LOG_LEVEL, LOG.level() as u64);
        w.push(stat::LOG_SUPPRESSED, LOG.suppressed());
        w.push_count(stat::SOCKETS_UNFILTERED, sflt::unfiltered());
    }
}

common::kern_control!(static CONTROL: Ctl<Shared> = name proto::CONTROL_NAME, flags CTL_FLAG_PRIVILEGED);

// ---- start and stop ----

/// The state, the control and both filters (registered in this order), and
/// how long start and stop wait for `sf_unregistered` and the sockets'
/// `sf_detach` (xnu's socket-filter cleanup thread runs them after
/// `sflt_unregister` when sockets held the filter).
const KEXT: Kext<Shared, (&FilterDef, &FilterDef)> = Kext {
    name: c"net.prx.kext.SocketFilter",
    state: &STATE,
    control: &CONTROL,
    filters: (&FILTER_V4, &FILTER_V6),
    wait_ms: 2_000,
    log: &LOG,
};

fn make_state() -> Result<(), KextError> {
    let redirects = Redirects::try_new(ORIGDST_CAPACITY, KEXT.name)?;
    let shared = Shared {
        config: Config::initial()?,
        redirects,
    };
    let b = KBox::try_new(shared).map_err(|_| KextError::Failed)?;
    STATE.set(b).map_err(|_| KextError::Failed)
}

fn no_sockets() -> bool {
    sflt::attached() == 0
}

fn start() -> Result<(), KextError> {
    if KEXT.start(make_state, no_sockets)? {
        log::line(c"PrxSocketFilter started: filters registered for PF_INET and PF_INET6 TCP");
    }
    Ok(())
}

/// xnu does not call a refused stop again (kextunload reports the failure and
/// the kext stays loaded), so stop refuses before removing anything when it
/// can tell, and once it has unregistered the filters it waits for the kernel
/// to release them rather than return busy with the kext inert.
fn stop() -> Result<(), KextError> {
    // Sockets may hold the filters past 2 s (or the kernel may refuse): a
    // later kextunload completes the stop once the cleanup thread released them.
    let late = c"stop refused: the filters are still being released";
    KEXT.stop(no_sockets, late, || LOG.counters(&COUNTERS))?;
    log::line(c"PrxSocketFilter stopped");
    Ok(())
}

common::kext!(start: start, stop: stop);
