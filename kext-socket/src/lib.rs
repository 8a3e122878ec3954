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

use common::kpi::alloc::{KBox, KSlice};
use common::kpi::config::{Config, Ctl, Filter as ControlSide};
use common::kpi::ctl::CtlDef;
use common::kpi::errno::{ECONNREFUSED, EHOSTUNREACH, ENOTCONN, ENOTSUP, EPIPE, Errno};
use common::kpi::global::Global;
use common::kpi::lifecycle;
use common::kpi::lock::{Mutex, RwLock};
use common::kpi::sflt::{
    self, Data, Event, FilterDef, Injection, MbufTag, SockAddrMut, Socket, SocketFilter,
};
use common::kpi::{KextError, log, proc, random};
use common::net::addr::{Endpoint, Family};
use common::net::control::{self as proto, StatCounters, StatsWriter, stat};
use common::net::kextlog::{Ep, LogLevel, RuleNo, Who};
use common::net::origdst::{Original, Slot, Table};
use common::net::policy::{self, Connect};
use common::net::proxy_v2::{self, Held, Sending};
use common::net::rules::{self, ProcName};
use common::net::wire;
use common::sys::{CTL_FLAG_PRIVILEGED, IPPROTO_TCP, PF_INET, PF_INET6, SOCK_STREAM};

const HANDLE_V4: u32 = 0x5052_5834; // 'PRX4'
const HANDLE_V6: u32 = 0x5052_5836; // 'PRX6'
const ORIGDST_CAPACITY: usize = 4096;

/// The counters, in statistics order (`SOCKETS_ATTACHED` is reported from
/// `sflt::attached`, the others counted here).
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
    origdst: Mutex<Table<KSlice<Slot>>>,
    tag: MbufTag,
    /// The PROXY v2 headers' authentication key, drawn at start.
    auth_key: proxy_v2::AuthKey,
}

static STATE: Global<Shared> = Global::new();

/// Decisions, rule changes and failures (`prxctl log-level`), rate-limited.
static LOG: log::Logger = log::Logger::new(c"PrxSocketFilter");

// ---- the socket filter ----

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
    header: Sending,
}

impl Conn {
    /// The pid and name, for log lines.
    fn who(&self) -> Who<'_> {
        Who(self.pid, &self.name)
    }
}

struct Filter;

impl Filter {
    fn header_failed(c: &mut Conn) {
        c.header = Sending::Failed;
        COUNTERS.count(stat::CONN_FAILED);
        LOG.log(
            LogLevel::Decisions,
            format_args!(
                "PROXY v2 header not sent ({}); refusing the connection's data",
                c.who()
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
            header: Sending::None,
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
        match decision {
            Connect::Pass(why) => {
                COUNTERS.count(stat::CONN_PASSED);
                LOG.log(
                    LogLevel::Debug,
                    format_args!("pass {} ({why:?}; {})", Ep(&dst), c.who()),
                );
                Ok(())
            }
            Connect::Block { rule } => {
                COUNTERS.count(stat::CONN_BLOCKED);
                LOG.log(
                    LogLevel::Decisions,
                    format_args!("block {} ({}; {})", Ep(&dst), RuleNo(rule), c.who()),
                );
                Err(ECONNREFUSED)
            }
            Connect::Redirect {
                to: proxy,
                proxy_v2,
                rule,
            } => {
                if to.set(&proxy).is_err() {
                    // The address is untouched: fail the connection rather than
                    // let it go direct against the rules.
                    COUNTERS.count(stat::CONN_FAILED);
                    LOG.log(
                        LogLevel::Decisions,
                        format_args!(
                            "redirect of {} to {} failed: the address could not be rewritten ({})",
                            Ep(&dst),
                            Ep(&proxy),
                            c.who()
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
                        c.who()
                    ),
                );
                c.redirect = Some(Redirected {
                    orig: dst,
                    rule,
                    recorded: None,
                });
                c.header = Sending::wanted(proxy_v2);
                COUNTERS.count(stat::CONN_REDIRECTED);
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
                COUNTERS.count(stat::ORIGDST_FULL);
            }
        }
        if c.header != Sending::Pending {
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
            Self::header_failed(c);
        }
        inj
    }

    fn injected(c: &mut Conn, _so: &Socket, result: Result<(), Errno>) {
        if STATE.get().is_none() {
            return;
        }
        match result {
            Ok(()) => {
                c.header = Sending::Sent;
                COUNTERS.count(stat::PROXY_HEADERS);
            }
            Err(_) => Self::header_failed(c),
        }
    }

    fn data_out(c: &mut Conn, _so: &Socket, data: &Data<'_>) -> Result<(), Errno> {
        // Our own header passes; nothing else may overtake it.
        let ours = || STATE.get().is_some_and(|st| data.has_tag(st.tag));
        c.header.admits(ours).map_err(|held| match held {
            Held::NotYet => ENOTCONN,
            Held::Failed => EPIPE,
        })
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
        self.origdst.lock().get(client)
    }

    /// The control is privileged (root only): the key goes to prxd.
    fn auth_key(&self) -> Option<&proxy_v2::AuthKey> {
        Some(&self.auth_key)
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

fn make_state() -> Result<(), KextError> {
    let slots =
        KSlice::try_new(ORIGDST_CAPACITY, Slot::default()).map_err(|_| KextError::Failed)?;
    let origdst = Mutex::try_new(Table::new(slots)).map_err(|_| KextError::Failed)?;
    let tag = MbufTag::find(c"net.prx.kext.SocketFilter", 1).map_err(|_| KextError::Failed)?;
    // A fresh key per load (and so per boot): read_random never blocks.
    let mut key = [0u8; 32];
    random::fill(&mut key);
    let shared = Shared {
        config: Config::initial()?,
        origdst,
        tag,
        auth_key: proxy_v2::AuthKey(key),
    };
    let b = KBox::try_new(shared).map_err(|_| KextError::Failed)?;
    STATE.set(b).map_err(|_| KextError::Failed)
}

/// The control and both filters, in registration order.
const REGISTRATIONS: (&CtlDef, &FilterDef, &FilterDef) = (&CONTROL, &FILTER_V4, &FILTER_V6);

/// How long start and stop wait for `sf_unregistered` and the sockets'
/// `sf_detach` (xnu's socket-filter cleanup thread runs them after
/// `sflt_unregister` when sockets held the filter).
const UNREGISTER_WAIT_MS: u64 = 2_000;

fn no_sockets() -> bool {
    sflt::attached() == 0
}

fn start() -> Result<(), KextError> {
    lifecycle::init(c"net.prx.kext.SocketFilter")?;
    let regs = REGISTRATIONS;
    if lifecycle::start(
        &STATE,
        make_state,
        regs,
        UNREGISTER_WAIT_MS,
        no_sockets,
        &LOG,
    )? {
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
    let filters = (&FILTER_V4, &FILTER_V6);
    let late = c"stop refused: the filters are still being released";
    lifecycle::unregister_for_stop(
        &CONTROL,
        filters,
        UNREGISTER_WAIT_MS,
        no_sockets,
        &LOG,
        late,
    )?;
    for (id, n) in COUNTERS.each() {
        LOG.counter(id, n);
    }
    lifecycle::fini(&STATE)?;
    log::line(c"PrxSocketFilter stopped");
    Ok(())
}

common::kext!(start: start, stop: stop);
