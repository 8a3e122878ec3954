//! PrxIPFilter.kext: packet-level redirection to a proxy as a NAT, for IPv4
//! and IPv6, driven by the same rules and control protocol as the socket filter.
//!
//! Wiring only: the decisions are `common::net::filter` (pure, host-tested),
//! the KPI contracts `common::kpi::{ipf, mbuf, ctl}`.
//!
//! - `ipf_output`: read the packet length once, copy the first 64 bytes out of
//!   the chain (`mbuf_copydata`, so headers straddling mbufs need no pullup;
//!   up to 256 only when the headers go further or the packet is ICMP:
//!   `filter::first_look`), parse them once and plan with the shared rules
//!   (`filter::RulesPolicy`); for a redirected flow rewrite the destination
//!   with incremental checksums. A TCP/UDP checksum the stack deferred to the
//!   interface (`mbuf_get_csum_requested`) is left deferred: only the
//!   pseudo-header sum its field holds is adjusted (`translate::L4Sum`), so
//!   the payload is never summed in software; a complete one is updated
//!   incrementally. Then copy the changed bytes back (`mbuf_copyback`) and
//!   re-inject (`ipf_inject_output`, which always consumes the chain:
//!   EJUSTRETURN; the stack completes what is still deferred).
//! - `ipf_input`: reverse-translate replies from the proxy in place (same
//!   copy-out) and call `mbuf_inbound_modified`.
//! - The NAT tables (one per family) are allocated in start with the capacity
//!   configured in `[package.metadata.prx-ip] nat-flows` (build.rs), keyed with
//!   `read_random`, and sit behind xnu mutexes (`lck_mtx`); the configuration
//!   (enabled, proxies, rules) sits behind an xnu reader-writer lock
//!   (`lck_rw`, taken shared per packet) that the control replaces in one
//!   swap. Both callbacks run where blocking is allowed: xnu's `ip_input`,
//!   `ip_output`, `ip6_input` and `ip6_output` call `ipf_ref()`, which takes the
//!   `kipf_lock` mutex, right before calling the filters
//!   (`bsd/netinet/kpi_ipfilter.c`), and `ipf_detach` runs with that lock
//!   dropped. So a contended callback waits a few hundred nanoseconds (the
//!   holders do O(1) work and never call out of the kext while holding a
//!   lock); it never drops the packet and never spins unboundedly. The locks
//!   are leaves: nothing is locked or called into the kernel while one is
//!   held except the lock order config → table (packet path) and v4 → v6
//!   table (the control).
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

use common::kpi::alloc::{self, KBox, KSlice};
use common::kpi::ctl::{self, Control};
use common::kpi::errno::{ENOTCONN, ENOTSUP, Errno};
use common::kpi::global::Global;
use common::kpi::ipf::{Family, Input, IpFilter, Output, Verdict};
use common::kpi::lock::{self, Mutex, RwLock};
use common::kpi::mbuf::{First, Packet};
use common::kpi::rules::{self as krules, KRuleSet};
use common::kpi::{KextError, clock, log, random};
use common::net::control::{self as proto, GetRequest, SetRequest, Status, stat};
use common::net::filter::{self, Decision, DropReason, Plan, RulesPolicy};
use common::net::kextlog::{Dec, Ep, LogLevel};
use common::net::nat::{self, Config, Entry, NatTable};
use common::net::origdst::Original;
use common::net::policy::Proxies;
use common::net::rules::Action;
use common::net::translate::L4Sum;
use common::net::wire::ip::{self, Transport};
use common::net::wire::proto as ipproto;
use common::sys::CTL_FLAG_PRIVILEGED;

/// Flows per family: `[package.metadata.prx-ip] nat-flows` (validated by build.rs).
const FLOWS: usize = parse_usize(env!("PRX_NAT_FLOWS"));
/// Header bytes copied out of each packet first: an IPv4 (20) or IPv6 (40)
/// header and a TCP header to its checksum (18), with room for IPv4 options.
/// Packets whose headers go further, and ICMP, get [`PREFIX`] bytes
/// (`filter::first_look`).
const HEAD: usize = 64;
/// Header bytes copied out at most (IP header with options or IPv6
/// extension headers, plus the transport header up to its checksum, or an
/// ICMP error's quote). Packets whose headers do not fit are handled by
/// `filter`'s policy.
const PREFIX: usize = 256;

/// A decimal number at compile time (build.rs has validated it; anything else
/// gives 0, which `NatTable::new` refuses in start).
const fn parse_usize(s: &str) -> usize {
    let mut b = s.as_bytes();
    let mut n: usize = 0;
    while let [d, rest @ ..] = b {
        let digit = match d.checked_sub(b'0') {
            Some(x) if x <= 9 => x as usize,
            _ => return 0,
        };
        n = match n.checked_mul(10) {
            Some(x) => match x.checked_add(digit) {
                Some(y) => y,
                None => return 0,
            },
            None => return 0,
        };
        b = rest;
    }
    n
}

type Table = NatTable<KSlice<Entry>>;

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

/// One family's flows, with a copy of the proxy endpoints (kept equal to the
/// configuration's by the control, under the configuration's write lock), so
/// a tracked flow's packets are planned under this lock alone.
struct Flows {
    table: Table,
    proxies: Proxies,
}

struct Shared {
    config: RwLock<IpConfig>,
    nat_v4: Mutex<Flows>,
    nat_v6: Mutex<Flows>,
}

impl Shared {
    fn table(&self, f: Family) -> &Mutex<Flows> {
        match f {
            Family::V4 => &self.nat_v4,
            Family::V6 => &self.nat_v6,
        }
    }
}

static STATE: Global<Shared> = Global::new();

// ---- the IP filters ----

struct Nat {
    family: Family,
}

/// The first `n` bytes of `pkt` (`n` ≤ the buffer's size) copied into `buf`.
fn copy_head<'b, const N: usize>(
    pkt: &Packet<'_>,
    buf: &'b mut [u8; N],
    len: usize,
) -> Option<&'b mut [u8]> {
    let bytes = buf.get_mut(..len.min(N))?;
    pkt.copy_out(0, bytes).ok()?;
    Some(bytes)
}

/// Carries out `plan` on the headers `bytes` (parsed as `t`) and copies the
/// changed bytes back.
fn rewrite(
    pkt: &mut Packet<'_>,
    bytes: &mut [u8],
    len: usize,
    t: &Transport,
    plan: Plan,
    l4: L4Sum,
) -> Decision {
    let d = filter::apply_parsed(bytes, t, plan, l4);
    if let Decision::Rewritten { changed } = d {
        let Some(bytes) = bytes.get(..changed) else {
            return Decision::Drop(DropReason::Mbuf);
        };
        if pkt.copy_in_within(0, bytes, len).is_err() {
            return Decision::Drop(DropReason::Mbuf);
        }
    }
    d
}

impl Nat {
    /// The output plan: a tracked flow's under its table's lock alone
    /// (`filter::plan_output_tracked`), a new flow's under the configuration
    /// (read) and then the table (`filter::plan_output_parsed`, which finds
    /// the flow should another packet have created it in between). The clock
    /// is read before any lock is taken.
    fn plan_output(&self, bytes: &[u8], len: usize, t: &Transport) -> Plan {
        // Before start finished or after stop began: nothing is redirected.
        let Some(st) = STATE.get() else {
            return Plan::Pass;
        };
        let now = clock::uptime_ms();
        {
            let mut flows = st.table(self.family).lock();
            let Flows { table, proxies } = &mut *flows;
            if let Some(plan) = filter::plan_output_tracked(bytes, len, t, table, proxies, now) {
                return plan;
            }
        }
        let cfg = st.config.read();
        let policy = RulesPolicy {
            enabled: cfg.enabled,
            rules: &cfg.rules,
            proxies: &cfg.proxies,
        };
        let mut flows = st.table(self.family).lock();
        let before = flows.table.inserted();
        let plan = filter::plan_output_parsed(bytes, len, t, &mut flows.table, &policy, now);
        let created = flows.table.inserted() != before;
        drop(flows);
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
    fn plan_input(&self, bytes: &[u8], t: &Transport) -> Plan {
        let Some(st) = STATE.get() else {
            return Plan::Pass;
        };
        let now = clock::uptime_ms();
        let mut flows = st.table(self.family).lock();
        filter::plan_input_parsed(bytes, t, &mut flows.table, now)
    }

    /// The output path once the headers are parsed: plan, rewrite, re-inject.
    fn output_parsed<'a>(
        &self,
        pkt: Packet<'a>,
        out: Output<'a>,
        bytes: &mut [u8],
        len: usize,
        t: &Transport,
    ) -> Verdict<'a> {
        let plan = self.plan_output(bytes, len, t);
        let mut pkt = match settle(plan, pkt) {
            Ok(p) => p,
            Err(v) => return v,
        };
        let deferred = pkt.l4_csum_deferred();
        let d = if deferred && !matches!(t.protocol, ipproto::TCP | ipproto::UDP) {
            // Only TCP/UDP checksums are deferred by the stack; should an
            // ICMP packet carry the flag, complete the checksums as before
            // and rewrite the final bytes.
            pkt.outbound_finalize(self.family.af(), 0);
            if pkt.copy_out(0, bytes).is_err() {
                return drop_counted(DropReason::Mbuf, pkt);
            }
            match ip::transport_in(bytes, len) {
                Ok(t) => rewrite(&mut pkt, bytes, len, &t, plan, L4Sum::Complete),
                Err(_) => Decision::Drop(DropReason::Unparseable),
            }
        } else {
            let l4 = if deferred {
                L4Sum::Deferred
            } else {
                L4Sum::Complete
            };
            rewrite(&mut pkt, bytes, len, t, plan, l4)
        };
        output_decided(d, pkt, out)
    }

    /// The output path of a packet whose first mbuf holds its headers
    /// (`filter::parse_in_first`): planned and rewritten in place, with no
    /// copy and no length asked (`None`: take the copying path).
    fn output_in_place(&self, pkt: &mut Packet<'_>) -> Option<Decision> {
        let First { bytes, csum } = pkt.first_mut()?;
        let (n, t) = filter::parse_in_first(bytes, PREFIX)?;
        let len = bytes.len();
        let prefix = bytes.get_mut(..n)?;
        let plan = self.plan_output(prefix, len, &t);
        let l4 = match plan {
            // Only a rewrite needs to know whether the stack deferred the
            // TCP/UDP checksum (all this path sees).
            Plan::Translate { .. } if csum.l4_deferred() => L4Sum::Deferred,
            _ => L4Sum::Complete,
        };
        Some(filter::apply_parsed(prefix, &t, plan, l4))
    }

    /// [`Nat::output_in_place`] for the input path.
    fn input_in_place(&self, pkt: &mut Packet<'_>) -> Option<Decision> {
        let First { bytes, .. } = pkt.first_mut()?;
        let (n, t) = filter::parse_in_first(bytes, PREFIX)?;
        let prefix = bytes.get_mut(..n)?;
        let plan = self.plan_input(prefix, &t);
        Some(filter::apply_parsed(prefix, &t, plan, L4Sum::Complete))
    }

    /// The input path once the headers are parsed.
    fn input_parsed<'a>(
        &self,
        pkt: Packet<'a>,
        bytes: &mut [u8],
        len: usize,
        t: &Transport,
    ) -> Verdict<'a> {
        let plan = self.plan_input(bytes, t);
        let mut pkt = match settle(plan, pkt) {
            Ok(p) => p,
            Err(v) => return v,
        };
        let d = rewrite(&mut pkt, bytes, len, t, plan, L4Sum::Complete);
        input_decided(d, pkt)
    }
}

/// Settles an output packet once its headers are rewritten (or not).
fn output_decided<'a>(d: Decision, pkt: Packet<'a>, out: Output<'a>) -> Verdict<'a> {
    match d {
        Decision::Rewritten { .. } => {
            STATS.redirected.fetch_add(1, Ordering::Relaxed);
            // The route was chosen for the old destination: re-inject.
            let (taken, r) = out.inject(pkt);
            if r.is_err() {
                count_drop(DropReason::Inject);
            }
            Verdict::Taken(taken)
        }
        Decision::Drop(r) => drop_counted(r, pkt),
        Decision::Pass => Verdict::Pass(pkt),
    }
}

/// Settles an input packet once its headers are rewritten (or not).
fn input_decided(d: Decision, mut pkt: Packet<'_>) -> Verdict<'_> {
    match d {
        Decision::Rewritten { .. } => {
            pkt.inbound_modified();
            STATS.replies.fetch_add(1, Ordering::Relaxed);
            Verdict::Pass(pkt)
        }
        Decision::Drop(r) => drop_counted(r, pkt),
        Decision::Pass => Verdict::Pass(pkt),
    }
}

/// The verdict for a packet whose headers do not parse (the plan passes or
/// drops it).
fn unparsed(plan: Plan, pkt: Packet<'_>) -> Verdict<'_> {
    match settle(plan, pkt) {
        Ok(p) => Verdict::Pass(p),
        Err(v) => v,
    }
}

/// Counts a drop and drops `pkt`.
fn drop_counted(r: DropReason, pkt: Packet<'_>) -> Verdict<'_> {
    count_drop(r);
    Verdict::Drop(pkt)
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

    fn output<'a>(&self, mut pkt: Packet<'a>, out: Output<'a>) -> Verdict<'a> {
        if let Some(d) = self.output_in_place(&mut pkt) {
            return output_decided(d, pkt, out);
        }
        let len = pkt.len();
        let mut head = [0u8; HEAD];
        let Some(bytes) = copy_head(&pkt, &mut head, len) else {
            // Headers that cannot be read cannot be judged: fail closed.
            return drop_counted(DropReason::Mbuf, pkt);
        };
        match filter::first_look(bytes, len) {
            Some(Ok(t)) => self.output_parsed(pkt, out, bytes, len, &t),
            Some(Err(plan)) => unparsed(plan, pkt),
            None => {
                let mut buf = [0u8; PREFIX];
                let Some(bytes) = copy_head(&pkt, &mut buf, len) else {
                    return drop_counted(DropReason::Mbuf, pkt);
                };
                match filter::parse_output(bytes, len) {
                    Ok(t) => self.output_parsed(pkt, out, bytes, len, &t),
                    Err(plan) => unparsed(plan, pkt),
                }
            }
        }
    }

    fn input<'a>(
        &self,
        pkt: Packet<'a>,
        _offset: usize,
        _protocol: u8,
        _inj: Input<'a>,
    ) -> Verdict<'a> {
        let mut pkt = pkt;
        if let Some(d) = self.input_in_place(&mut pkt) {
            return input_decided(d, pkt);
        }
        let len = pkt.len();
        let mut head = [0u8; HEAD];
        let Some(bytes) = copy_head(&pkt, &mut head, len) else {
            return Verdict::Pass(pkt);
        };
        match filter::first_look(bytes, len) {
            Some(Ok(t)) => self.input_parsed(pkt, bytes, len, &t),
            // An inbound packet that does not parse passes.
            Some(Err(_)) => Verdict::Pass(pkt),
            None => {
                let mut buf = [0u8; PREFIX];
                let Some(bytes) = copy_head(&pkt, &mut buf, len) else {
                    return Verdict::Pass(pkt);
                };
                match ip::transport_in(bytes, len) {
                    Ok(t) => self.input_parsed(pkt, bytes, len, &t),
                    Err(_) => Verdict::Pass(pkt),
                }
            }
        }
    }
}

common::ip_filter!(
    static V4: Registration<Nat> = Nat { family: Family::V4 };
);
common::ip_filter!(
    static V6: Registration<Nat> = Nat { family: Family::V6 };
);

// ---- the control ----

struct Ctl;

fn replace_config(st: &Shared, f: impl FnOnce(&mut IpConfig)) {
    f(&mut st.config.write());
}

fn flows(st: &Shared) -> u64 {
    let a = st.nat_v4.lock().table.len();
    let b = st.nat_v6.lock().table.len();
    u64::try_from(a.saturating_add(b)).unwrap_or(u64::MAX)
}

fn lookup(st: &Shared, client: &common::net::addr::Endpoint) -> Option<Original> {
    let now = clock::uptime_ms();
    let c = nat::Endpoint::from(*client);
    let family = match client.addr {
        common::net::addr::IpAddr::V4(_) => Family::V4,
        common::net::addr::IpAddr::V6(_) => Family::V6,
    };
    let f = st.table(family).lock().table.client_flow(&c, now)?;
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
                });
                drop(set); // the old rules, freed outside the lock
                LOG.log(
                    LogLevel::Decisions,
                    format_args!(
                        "rules: {} rule(s), default {:?}",
                        Dec::u(m.count()),
                        m.default_action()
                    ),
                );
                Ok(())
            }
            SetRequest::Proxies(p) => {
                // The tables' copies change under the configuration's lock
                // (order: configuration, IPv4 table, IPv6 table), so two
                // controls cannot leave them different.
                let mut cfg = st.config.write();
                cfg.proxies = p;
                st.nat_v4.lock().proxies = p;
                st.nat_v6.lock().proxies = p;
                Ok(())
            }
            SetRequest::Enabled(on) => {
                replace_config(&st, |cfg| cfg.enabled = on);
                Ok(())
            }
            SetRequest::Timeouts(t) => {
                // Both tables at once (callbacks hold one table at a time).
                let mut v4 = st.nat_v4.lock();
                let mut v6 = st.nat_v6.lock();
                v4.table.set_config(t.nat_config());
                v6.table.set_config(t.nat_config());
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
                let found = lookup(&st, &client);
                proto::encode_lookup_response(found.as_ref(), buf)
            }
            GetRequest::Status => {
                let s = {
                    let cfg = st.config.read();
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
                let cfg = st.config.read();
                proto::encode_rules_response(cfg.rules.default_action(), cfg.rules.rules(), buf)
            }
            // The IP filter writes no PROXY v2 headers: it has no key.
            GetRequest::AuthKey => return Err(ENOTSUP),
            GetRequest::Stats => {
                let generation = st.config.read().generation;
                let mut out = [(0u32, 0u64); 32];
                let mut n = 0usize;
                let mut push = |id: u32, v: u64| {
                    if let Some(o) = out.get_mut(n) {
                        *o = (id, v);
                        n = n.saturating_add(1);
                    }
                };
                push(stat::IP_FLOWS, flows(&st));
                let (v4s, v6s) = (
                    st.nat_v4.lock().table.stats(),
                    st.nat_v6.lock().table.stats(),
                );
                push(
                    stat::IP_FLOWS_EXPIRED,
                    v4s.expired.saturating_add(v6s.expired),
                );
                push(
                    stat::IP_FLOWS_EVICTED,
                    v4s.evicted.saturating_add(v6s.evicted),
                );
                push(
                    stat::IP_FLOW_CAPACITY,
                    u64::try_from(st.nat_v4.lock().table.capacity().saturating_mul(2))
                        .unwrap_or(u64::MAX),
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
                let t = proto::Timeouts::of(&st.nat_v4.lock().table.config());
                push(stat::IP_TCP_IDLE_S, u64::from(t.tcp_idle_s));
                push(stat::IP_TCP_CLOSED_S, u64::from(t.tcp_closed_s));
                push(stat::IP_UDP_IDLE_S, u64::from(t.udp_idle_s));
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

/// A NAT table of the configured capacity, empty, keyed from the kernel's
/// random generator, with the default (RFC) timeouts.
fn make_table() -> Result<Mutex<Flows>, KextError> {
    let store = KSlice::try_new(FLOWS, Entry::EMPTY).map_err(|_| KextError::Failed)?;
    let table =
        NatTable::new(store, Config::DEFAULT, random::u64()).map_err(|_| KextError::Failed)?;
    let flows = Flows {
        table,
        proxies: Proxies::default(),
    };
    Mutex::try_new(flows).map_err(|_| KextError::Failed)
}

fn make_state() -> Result<(), KextError> {
    let config = IpConfig {
        enabled: true,
        proxies: Proxies::default(),
        rules: krules::empty(Action::Direct).map_err(|_| KextError::Failed)?,
        generation: 0,
    };
    let shared = Shared {
        config: RwLock::try_new(config).map_err(|_| KextError::Failed)?,
        nat_v4: make_table()?,
        nat_v6: make_table()?,
    };
    let b = KBox::try_new(shared).map_err(|_| KextError::Failed)?;
    STATE.set(b).map_err(|_| KextError::Failed)
}

fn teardown_runtime() -> Result<(), KextError> {
    drop(STATE.take().map_err(|_| KextError::Busy)?);
    lock::fini().map_err(|_| KextError::Busy)?;
    alloc::fini().map_err(|_| KextError::Busy)
}

fn start() -> Result<(), KextError> {
    alloc::init(c"net.prx.kext.IPFilter").map_err(|_| KextError::Failed)?;
    if lock::init(c"net.prx.kext.IPFilter").is_err() {
        let _ = alloc::fini();
        return Err(KextError::Failed);
    }
    let ready = make_state().and_then(|()| ctl::register(&CONTROL).map_err(|_| KextError::Failed));
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

/// How long stop waits for a late `ipf_detach` (a packet still in the filter
/// on another CPU when `ipf_remove` ran).
const DETACH_WAIT_MS: u64 = 2_000;

/// xnu does not call a refused stop again (kextunload reports the failure and
/// the kext stays loaded), so stop refuses only before removing anything, and
/// once it has removed the filters it waits for their detach rather than
/// return busy with the kext inert.
fn stop() -> Result<(), KextError> {
    if ctl::clients() != 0 {
        log::line(c"PrxIPFilter: stop refused: control clients connected");
        return Err(KextError::Busy);
    }
    if ctl::deregister(&CONTROL).is_err() {
        log::line(c"PrxIPFilter: stop refused: the control could not be deregistered");
        return Err(KextError::Busy);
    }
    V4.remove();
    V6.remove();
    if !clock::wait_until(DETACH_WAIT_MS, || V4.is_detached() && V6.is_detached()) {
        // Not undoable: the filters are gone. Keep the control so prxctl still
        // works; a later kextunload completes the stop.
        let _ = ctl::register(&CONTROL);
        log::line(c"PrxIPFilter: stop refused: ipf_detach still pending after 2 s");
        return Err(KextError::Busy);
    }
    STATS.attached.store(0, Ordering::Relaxed);
    if let Some(st) = STATE.get() {
        let (a, b) = (
            st.nat_v4.lock().table.stats(),
            st.nat_v6.lock().table.stats(),
        );
        log::counter(
            c"PrxIPFilter",
            c"flows_v4",
            u64::try_from(a.flows).unwrap_or(0),
        );
        log::counter(
            c"PrxIPFilter",
            c"flows_v6",
            u64::try_from(b.flows).unwrap_or(0),
        );
        log::counter(
            c"PrxIPFilter",
            c"flows_expired",
            a.expired.saturating_add(b.expired),
        );
        log::counter(
            c"PrxIPFilter",
            c"flows_evicted",
            a.evicted.saturating_add(b.evicted),
        );
    }
    teardown_runtime()?;
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
        c"drop_untracked",
    ];
    for (name, c) in names.iter().zip(STATS.drops.iter()) {
        log::counter(c"PrxIPFilter", name, c.load(Ordering::Relaxed));
    }
    log::line(c"PrxIPFilter stopped");
    Ok(())
}

common::kext!(start: start, stop: stop);
