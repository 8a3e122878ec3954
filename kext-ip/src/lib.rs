//! PrxIPFilter.kext: packet-level redirection to a proxy as a NAT, for IPv4
//! and IPv6, driven by the same rules and control protocol as the socket filter.
//!
//! Wiring only: the decisions are `common::net::filter` (pure, host-tested),
//! the KPI contracts `common::kpi::{ipf, mbuf, ctl}`.
//!
//! - `ipf_output`: copy the headers out of the chain (`mbuf_copydata`, so
//!   headers straddling mbufs need no pullup), plan with the shared rules
//!   (`filter::RulesPolicy`); for a redirected flow complete deferred checksums
//!   (`mbuf_outbound_finalize`), copy the headers again, rewrite the
//!   destination with incremental checksums, copy them back (`mbuf_copyback`)
//!   and re-inject (`ipf_inject_output`, which always consumes the chain:
//!   EJUSTRETURN).
//! - `ipf_input`: reverse-translate replies from the proxy in place and call
//!   `mbuf_inbound_modified`.
//! - The NAT tables (one per family) are zero-initialised statics (zero-fill,
//!   nothing in the binary), keyed with `read_random` and given their timeouts
//!   in start, and sit behind non-blocking try-locks; the configuration
//!   (enabled, proxies, rules) sits behind a non-blocking reader-writer lock
//!   that the control replaces in one swap. A contended callback drops the
//!   packet (counted as `busy`), it never waits.
//! - A privileged kern_control (`net.prx.kext.IPFilter.control`) carries the
//!   control protocol of `common::net::control` (rules, proxies, enable,
//!   status, statistics, and lookups answered from the NAT tables).
//! - Stop refuses while control clients are connected, removes both filters and
//!   returns busy until both `ipf_detach` ran and no callback uses the state.
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
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use common::kpi::alloc::{self, KBox};
use common::kpi::ctl::{self, Control};
use common::kpi::global::Global;
use common::kpi::ipf::{Family, Input, IpFilter, Output, TryLock, TryRwLock, Verdict};
use common::kpi::mbuf::Packet;
use common::kpi::rules::{self as krules, KRuleSet};
use common::kpi::sflt::Errno;
use common::kpi::{KextError, clock, log, random};
use common::net::control::{self as proto, GetRequest, SetRequest, Status, stat};
use common::net::filter::{self, Decision, DropReason, Plan, RulesPolicy};
use common::net::kextlog::{Ep, LogLevel};
use common::net::nat::{self, Config, NatTable};
use common::net::origdst::Original;
use common::net::policy::Proxies;
use common::net::rules::Action;
use common::sys::CTL_FLAG_PRIVILEGED;

/// Flows per family.
const FLOWS: usize = 1024;
/// Index buckets per family (power of two ≥ 2 × FLOWS).
const SLOTS: usize = 2048;
/// Header bytes copied out of each packet (IP header with options or IPv6
/// extension headers, plus the transport header up to its checksum). Packets
/// whose headers do not fit are handled by `filter`'s policy.
const PREFIX: usize = 256;
/// Spins before a contended callback gives up on a NAT table or the configuration.
const SPINS: u32 = 64;
/// Spins the control (user context) allows itself before answering EBUSY.
const CONTROL_SPINS: u32 = 1 << 20;

const ENOTCONN: Errno = 57;
const EBUSY: Errno = 16;

type Table = NatTable<FLOWS, SLOTS>;

/// The NAT tables: all zero bytes until start configures them.
static NAT_V4: TryLock<Table> = TryLock::new(NatTable::zeroed());
static NAT_V6: TryLock<Table> = TryLock::new(NatTable::zeroed());

/// Counters (statics of zero: zero-fill).
struct Stats {
    redirected: AtomicU64,
    replies: AtomicU64,
    drops: [AtomicU64; DropReason::ALL.len()],
    attached: AtomicU32,
}

static STATS: Stats = Stats {
    redirected: AtomicU64::new(0),
    replies: AtomicU64::new(0),
    drops: [const { AtomicU64::new(0) }; DropReason::ALL.len()],
    attached: AtomicU32::new(0),
};

fn count_drop(r: DropReason) {
    if let Some(c) = STATS.drops.get(r.index()) {
        c.fetch_add(1, Ordering::Relaxed);
    }
    // Blocks are logged with their addresses where they are decided.
    let level = match r {
        DropReason::Blocked => return,
        DropReason::TableFull | DropReason::Collision | DropReason::Mbuf | DropReason::Inject => {
            LogLevel::Decisions
        }
        _ => LogLevel::Debug,
    };
    LOG.log(level, format_args!("packet dropped: {}", r.name()));
}

/// Decisions, rule changes and failures (`prxctl log-level`), rate-limited.
static LOG: log::Logger = log::Logger::new(c"PrxIPFilter");

/// A flow for log lines: `TCP 10.0.0.1:49152 -> 203.0.113.10:80`.
struct FlowText(nat::FlowKey);

impl core::fmt::Display for FlowText {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let p = match self.0.protocol {
            common::net::wire::proto::TCP => "TCP",
            _ => "UDP",
        };
        let src: common::net::addr::Endpoint = self.0.src.into();
        let dst: common::net::addr::Endpoint = self.0.dst.into();
        write!(f, "{p} {} -> {}", Ep(&src), Ep(&dst))
    }
}

/// One consistent configuration: what a new flow is decided with.
struct IpConfig {
    enabled: bool,
    proxies: Proxies,
    rules: KRuleSet,
    generation: u32,
}

struct Shared {
    config: TryRwLock<IpConfig>,
}

static STATE: Global<Shared> = Global::new();

// ---- the IP filters ----

struct Nat {
    family: Family,
    table: &'static TryLock<Table>,
}

/// Copies the header prefix of `pkt` into `buf`; returns its length.
fn prefix(pkt: &Packet<'_>, buf: &mut [u8; PREFIX]) -> Option<usize> {
    let n = pkt.len().min(PREFIX);
    pkt.copy_out(0, buf.get_mut(..n)?).ok()?;
    Some(n)
}

/// Carries out `plan`: re-reads the headers, rewrites and copies them back.
fn rewrite(pkt: &mut Packet<'_>, plan: Plan) -> Decision {
    let mut buf = [0u8; PREFIX];
    let len = pkt.len();
    let Some(n) = prefix(pkt, &mut buf) else {
        return Decision::Drop(DropReason::Mbuf);
    };
    let Some(bytes) = buf.get_mut(..n) else {
        return Decision::Drop(DropReason::Mbuf);
    };
    let d = filter::apply(bytes, len, plan);
    if let Decision::Rewritten { changed } = d {
        let Some(bytes) = bytes.get(..changed) else {
            return Decision::Drop(DropReason::Mbuf);
        };
        if pkt.copy_in(0, bytes).is_err() {
            return Decision::Drop(DropReason::Mbuf);
        }
    }
    d
}

impl Nat {
    /// The output plan under the current configuration.
    fn plan_output(&self, bytes: &[u8], len: usize) -> Plan {
        // Before start finished or after stop began: nothing is redirected.
        let Some(st) = STATE.get() else {
            return Plan::Pass;
        };
        let Some(cfg) = st.config.try_read(SPINS) else {
            return Plan::Drop(DropReason::Busy);
        };
        let policy = RulesPolicy {
            enabled: cfg.enabled,
            rules: &cfg.rules,
            proxies: &cfg.proxies,
        };
        let Some(mut table) = self.table.try_lock(SPINS) else {
            return Plan::Drop(DropReason::Busy);
        };
        let before = table.len();
        let plan = filter::plan_output(bytes, len, &mut table, &policy, clock::uptime_ms());
        let created = table.len() > before;
        drop(table);
        drop(cfg);
        // Logged outside the locks (the logger never blocks).
        let blocked = plan == Plan::Drop(DropReason::Blocked);
        if (created || blocked)
            && LOG.enabled(LogLevel::Decisions)
            && let Some(flow) = filter::outbound_flow(bytes, len)
        {
            match plan {
                Plan::Translate { to, .. } => {
                    let to: common::net::addr::Endpoint = to.into();
                    LOG.log(
                        LogLevel::Decisions,
                        format_args!("redirect {} to {}", FlowText(flow), Ep(&to)),
                    );
                }
                _ => LOG.log(
                    LogLevel::Decisions,
                    format_args!("block {}", FlowText(flow)),
                ),
            }
        }
        plan
    }

    /// The input plan (reverse translation needs only the table).
    fn plan_input(&self, bytes: &[u8], len: usize) -> Plan {
        let Some(mut table) = self.table.try_lock(SPINS) else {
            return Plan::Drop(DropReason::Busy);
        };
        filter::plan_input(bytes, len, &mut table, clock::uptime_ms())
    }
}

/// Settles the packets a plan leaves alone or drops (`Err`: the verdict);
/// `Ok` gives the packet back for rewriting.
fn settle(plan: Plan, pkt: Packet<'_>) -> Result<Packet<'_>, Verdict<'_>> {
    match plan {
        Plan::Pass => Err(Verdict::Pass(pkt)),
        Plan::Drop(r) => {
            count_drop(r);
            Err(Verdict::Drop(pkt))
        }
        Plan::Translate { .. } => Ok(pkt),
    }
}

impl IpFilter for Nat {
    const NAME: &'static core::ffi::CStr = c"net.prx.kext.IPFilter";

    fn output<'a>(&self, pkt: Packet<'a>, out: Output<'a>) -> Verdict<'a> {
        let mut buf = [0u8; PREFIX];
        let len = pkt.len();
        let Some(n) = prefix(&pkt, &mut buf) else {
            return Verdict::Pass(pkt);
        };
        let plan = self.plan_output(buf.get(..n).unwrap_or(&[]), len);
        let mut pkt = match settle(plan, pkt) {
            Ok(p) => p,
            Err(v) => return v,
        };
        // The transport checksum may still be a pseudo-header seed: finalize first.
        pkt.outbound_finalize(self.family.af(), 0);
        match rewrite(&mut pkt, plan) {
            Decision::Rewritten { .. } => {
                STATS.redirected.fetch_add(1, Ordering::Relaxed);
                // The route was chosen for the old destination: re-inject.
                let (taken, r) = out.inject(pkt);
                if r.is_err() {
                    count_drop(DropReason::Inject);
                }
                Verdict::Taken(taken)
            }
            Decision::Drop(r) => {
                count_drop(r);
                Verdict::Drop(pkt)
            }
            Decision::Pass => Verdict::Pass(pkt),
        }
    }

    fn input<'a>(
        &self,
        pkt: Packet<'a>,
        _offset: usize,
        _protocol: u8,
        _inj: Input<'a>,
    ) -> Verdict<'a> {
        let mut buf = [0u8; PREFIX];
        let len = pkt.len();
        let Some(n) = prefix(&pkt, &mut buf) else {
            return Verdict::Pass(pkt);
        };
        let plan = self.plan_input(buf.get(..n).unwrap_or(&[]), len);
        let mut pkt = match settle(plan, pkt) {
            Ok(p) => p,
            Err(v) => return v,
        };
        match rewrite(&mut pkt, plan) {
            Decision::Rewritten { .. } => {
                pkt.inbound_modified();
                STATS.replies.fetch_add(1, Ordering::Relaxed);
                Verdict::Pass(pkt)
            }
            Decision::Drop(r) => {
                count_drop(r);
                Verdict::Drop(pkt)
            }
            Decision::Pass => Verdict::Pass(pkt),
        }
    }
}

common::ip_filter!(
    static V4: Registration<Nat> = Nat {
        family: Family::V4,
        table: &NAT_V4,
    };
);
common::ip_filter!(
    static V6: Registration<Nat> = Nat {
        family: Family::V6,
        table: &NAT_V6,
    };
);

// ---- the control ----

struct Ctl;

fn replace_config(st: &Shared, f: impl FnOnce(&mut IpConfig)) -> Result<(), Errno> {
    let mut cfg = st.config.try_write(CONTROL_SPINS).ok_or(EBUSY)?;
    f(&mut cfg);
    Ok(())
}

fn flows(spins: u32) -> Option<u64> {
    let a = NAT_V4.try_lock(spins)?.len();
    let b = NAT_V6.try_lock(spins)?.len();
    u64::try_from(a.saturating_add(b)).ok()
}

fn lookup(client: &common::net::addr::Endpoint) -> Option<Original> {
    let now = clock::uptime_ms();
    let c = nat::Endpoint::from(*client);
    let table = match client.addr {
        common::net::addr::IpAddr::V4(_) => &NAT_V4,
        common::net::addr::IpAddr::V6(_) => &NAT_V6,
    };
    let f = table.try_lock(CONTROL_SPINS)?.client_flow(&c, now)?;
    Some(Original {
        dst: f.key.dst.into(),
        pid: 0,
        rule: proto::RULE_UNKNOWN,
    })
}

impl Control for Ctl {
    type Unit = ();

    fn connect(_unit: u32) -> Result<(), Errno> {
        Ok(())
    }

    fn setopt(_u: &mut (), opt: c_int, data: &[u8]) -> Result<(), Errno> {
        let st = STATE.get().ok_or(ENOTCONN)?;
        match proto::decode_set(opt, data).map_err(proto::Error::errno)? {
            SetRequest::Rules(m) => {
                let mut set = krules::from_msg(&m)?;
                replace_config(&st, |cfg| {
                    cfg.generation = cfg.generation.wrapping_add(1);
                    core::mem::swap(&mut cfg.rules, &mut set);
                })?;
                drop(set); // the old rules (or the refused new ones), freed outside the lock
                LOG.log(
                    LogLevel::Decisions,
                    format_args!(
                        "rules: {} rule(s), default {:?}",
                        m.count(),
                        m.default_action()
                    ),
                );
                Ok(())
            }
            SetRequest::Proxies(p) => replace_config(&st, |cfg| cfg.proxies = p),
            SetRequest::Enabled(on) => replace_config(&st, |cfg| cfg.enabled = on),
            SetRequest::Timeouts(t) => {
                // Both tables or neither (callbacks hold one table at a time).
                let mut v4 = NAT_V4.try_lock(CONTROL_SPINS).ok_or(EBUSY)?;
                let mut v6 = NAT_V6.try_lock(CONTROL_SPINS).ok_or(EBUSY)?;
                v4.set_config(t.nat_config());
                v6.set_config(t.nat_config());
                Ok(())
            }
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
                let found = lookup(&client);
                proto::encode_lookup_response(found.as_ref(), buf)
            }
            GetRequest::Status => {
                let s = {
                    let cfg = st.config.try_read(CONTROL_SPINS).ok_or(EBUSY)?;
                    Status {
                        enabled: cfg.enabled,
                        rules: u32::try_from(cfg.rules.len()).unwrap_or(u32::MAX),
                        generation: cfg.generation,
                        attached: STATS.attached.load(Ordering::Relaxed),
                        clients: u32::try_from(ctl::clients()).unwrap_or(u32::MAX),
                        proxies: cfg.proxies,
                    }
                };
                proto::encode_status(&s, buf)
            }
            GetRequest::Rules => {
                let cfg = st.config.try_read(CONTROL_SPINS).ok_or(EBUSY)?;
                proto::encode_rules_response(cfg.rules.default_action(), cfg.rules.rules(), buf)
            }
            GetRequest::Stats => {
                let generation = st.config.try_read(CONTROL_SPINS).ok_or(EBUSY)?.generation;
                let mut out = [(0u32, 0u64); 32];
                let mut n = 0usize;
                let mut push = |id: u32, v: u64| {
                    if let Some(o) = out.get_mut(n) {
                        *o = (id, v);
                        n = n.saturating_add(1);
                    }
                };
                if let Some(f) = flows(CONTROL_SPINS) {
                    push(stat::IP_FLOWS, f);
                }
                push(
                    stat::IP_FLOW_CAPACITY,
                    u64::try_from(FLOWS.saturating_mul(2)).unwrap_or(u64::MAX),
                );
                push(
                    stat::IP_REDIRECTED_PACKETS,
                    STATS.redirected.load(Ordering::Relaxed),
                );
                push(
                    stat::IP_REPLY_PACKETS,
                    STATS.replies.load(Ordering::Relaxed),
                );
                push(
                    stat::IP_FILTERS_ATTACHED,
                    u64::from(STATS.attached.load(Ordering::Relaxed)),
                );
                push(stat::RULES_GENERATION, u64::from(generation));
                if let Some(t) = NAT_V4.try_lock(CONTROL_SPINS) {
                    let t = proto::Timeouts::of(&t.config());
                    push(stat::IP_TCP_IDLE_S, u64::from(t.tcp_idle_s));
                    push(stat::IP_TCP_CLOSED_S, u64::from(t.tcp_closed_s));
                    push(stat::IP_UDP_IDLE_S, u64::from(t.udp_idle_s));
                }
                for (r, c) in DropReason::ALL.iter().zip(STATS.drops.iter()) {
                    let id = u32::try_from(r.index())
                        .ok()
                        .and_then(|i| stat::IP_DROP_BASE.checked_add(i));
                    if let Some(id) = id {
                        push(id, c.load(Ordering::Relaxed));
                    }
                }
                push(stat::LOG_LEVEL, LOG.level() as u64);
                push(stat::LOG_SUPPRESSED, LOG.suppressed());
                proto::encode_stats(out.get(..n).unwrap_or(&[]), buf)
            }
        };
        r.map_err(proto::Error::errno)
    }
}

common::kern_control!(static CONTROL: Ctl = name proto::IP_CONTROL_NAME, flags CTL_FLAG_PRIVILEGED);

// ---- start and stop ----

fn make_state() -> Result<(), KextError> {
    let config = IpConfig {
        enabled: true,
        proxies: Proxies::default(),
        rules: krules::empty(Action::Direct).map_err(|_| KextError::Failed)?,
        generation: 0,
    };
    let shared = Shared {
        config: TryRwLock::new(config),
    };
    let b = KBox::try_new(shared).map_err(|_| KextError::Failed)?;
    STATE.set(b).map_err(|_| KextError::Failed)
}

/// Empties both tables, keys their hashes from the kernel's random generator
/// and sets the timeouts (nothing is attached yet: the locks are free).
fn configure_tables() -> Result<(), KextError> {
    for t in [&NAT_V4, &NAT_V6] {
        let mut t = t.try_lock(CONTROL_SPINS).ok_or(KextError::Failed)?;
        t.clear();
        t.configure(Config::DEFAULT, random::u64());
    }
    Ok(())
}

fn teardown_runtime() -> Result<(), KextError> {
    drop(STATE.take().map_err(|_| KextError::Busy)?);
    alloc::fini().map_err(|_| KextError::Busy)
}

fn start() -> Result<(), KextError> {
    alloc::init(c"net.prx.kext.IPFilter").map_err(|_| KextError::Failed)?;
    let ready = configure_tables()
        .and_then(|()| make_state())
        .and_then(|()| ctl::register(&CONTROL).map_err(|_| KextError::Failed));
    if ready.is_err() {
        log::line(c"PrxIPFilter: start failed");
        let _ = ctl::deregister(&CONTROL);
        let _ = teardown_runtime();
        return Err(KextError::Failed);
    }
    let v4 = V4.attach(Family::V4);
    let v6 = V6.attach(Family::V6);
    let attached = u32::from(v4.is_ok()).saturating_add(u32::from(v6.is_ok()));
    STATS.attached.store(attached, Ordering::Relaxed);
    match (v4, v6) {
        (Ok(()), Ok(())) => log::line(c"PrxIPFilter started: IPv4 and IPv6 filters attached"),
        (Ok(()), Err(_)) => log::line(c"PrxIPFilter started: IPv4 only (ipf_addv6 failed)"),
        (Err(_), Ok(())) => log::line(c"PrxIPFilter started: IPv6 only (ipf_addv4 failed)"),
        (Err(_), Err(_)) => {
            log::line(c"PrxIPFilter: ipf_addv4 and ipf_addv6 failed");
            let _ = ctl::deregister(&CONTROL);
            let _ = teardown_runtime();
            return Err(KextError::Failed);
        }
    }
    Ok(())
}

fn stop() -> Result<(), KextError> {
    if ctl::clients() != 0 {
        log::line(c"PrxIPFilter: stop refused: control clients connected");
        return Err(KextError::Busy);
    }
    ctl::deregister(&CONTROL).map_err(|_| KextError::Busy)?;
    V4.remove();
    V6.remove();
    if !(V4.is_detached() && V6.is_detached()) {
        return Err(KextError::Busy);
    }
    STATS.attached.store(0, Ordering::Relaxed);
    teardown_runtime()?;
    let flows = |t: &TryLock<Table>| t.try_lock(SPINS).map(|t| t.len()).unwrap_or(0);
    log::counter(
        c"PrxIPFilter",
        c"flows_v4",
        u64::try_from(flows(&NAT_V4)).unwrap_or(0),
    );
    log::counter(
        c"PrxIPFilter",
        c"flows_v6",
        u64::try_from(flows(&NAT_V6)).unwrap_or(0),
    );
    log::counter(
        c"PrxIPFilter",
        c"redirected",
        STATS.redirected.load(Ordering::Relaxed),
    );
    log::counter(
        c"PrxIPFilter",
        c"reversed",
        STATS.replies.load(Ordering::Relaxed),
    );
    let names: [&core::ffi::CStr; DropReason::ALL.len()] = [
        c"drop_unparseable",
        c"drop_table_full",
        c"drop_collision",
        c"drop_udp6_zero_csum",
        c"drop_busy",
        c"drop_mbuf",
        c"drop_inject",
        c"drop_blocked",
    ];
    for (name, c) in names.iter().zip(STATS.drops.iter()) {
        log::counter(c"PrxIPFilter", name, c.load(Ordering::Relaxed));
    }
    log::line(c"PrxIPFilter stopped");
    Ok(())
}

common::kext!(start: start, stop: stop);
