//! The IP filter's packet path as mechanism: find the headers, ask the kext
//! for a [`Plan`], rewrite them, and settle the packet. The kext supplies the
//! planning ([`Nat`]: which flow goes where, under its locks); everything that
//! touches the mbuf chain is here.
//!
//! - Plain TCP/UDP packets first ([`crate::net::fastpath`]): parsed straight
//!   from the first mbuf, looked up under the table's lock ([`Nat::state`],
//!   [`Nat::flows`], [`fastpath::track_output`]/[`fastpath::track_input`]) and
//!   rewritten in place, by one body per header shape
//!   ([`fastpath::with_plain`]); an untracked output packet goes to the rules
//!   ([`Nat::plan_untracked`]).
//! - Then in place: when the first mbuf holds the headers
//!   ([`filter::parse_in_first`]) they are planned and rewritten there, with no
//!   copy and no length asked.
//! - Otherwise the packet length is read once and the first [`HEAD`] bytes are
//!   copied out (`mbuf_copydata`, so headers straddling mbufs need no pullup),
//!   up to [`PREFIX`] when the headers go further or the packet is ICMP
//!   ([`filter::first_look`]); the changed bytes are copied back
//!   (`mbuf_copyback`).
//! - A TCP/UDP checksum the stack deferred to the interface stays deferred:
//!   only the pseudo-header sum its field holds is adjusted ([`L4Sum`]).
//! - A rewritten output packet is re-injected ([`Output::inject`], which always
//!   consumes it: its route was chosen for the old destination); a rewritten
//!   input packet is marked ([`Packet::inbound_modified`]) and passes.
//! - Output fails closed (headers that cannot be read are dropped), input
//!   fails open (they pass). Every drop is counted ([`Counters`]).
//!
//! Nothing here blocks or allocates; locks are taken only on the tables the
//! kext hands out ([`Nat::flows`], [`Nat::with_flows`]) and through
//! [`Nat::plan_untracked`], after the clock is read.

use core::sync::atomic::{AtomicU64, Ordering};

use super::alloc::KSlice;
use super::clock;
use super::global::GlobalRef;
use super::ipf::{self, IpFilter, Output, Verdict};
use super::lock::FastMutex;
use super::log::Logger;
use super::mbuf::{Csum, First, Packet};
use crate::net::control::{StatsWriter, Timeouts, stat};
use crate::net::fastpath::{self, OnPlain, Plain, ProxyAddrs, Tracked};
use crate::net::filter::{self, Decision, DropReason, Plan};
use crate::net::kextlog::{Ep, Flow, LogLevel};
use crate::net::nat;
use crate::net::nat::{Entry, NatTable};
use crate::net::policy::Proxies;
use crate::net::translate::{L4Sum, Refused, Side};
use crate::net::wire::ip::{self, Transport};
use crate::net::wire::proto as ipproto;

/// Header bytes copied out of each packet first: an IPv4 (20) or IPv6 (40)
/// header and a TCP header to its checksum (18), with room for IPv4 options.
/// Packets whose headers go further, and ICMP, get [`PREFIX`] bytes
/// ([`filter::first_look`]).
pub const HEAD: usize = 64;
/// Header bytes copied out at most (IP header with options or IPv6
/// extension headers, plus the transport header up to its checksum, or an
/// ICMP error's quote). Packets whose headers do not fit are handled by
/// `filter`'s policy.
pub const PREFIX: usize = 256;

/// The packet counters (a static of zeros: zero-fill).
pub struct Counters {
    /// Output packets rewritten and re-injected.
    pub redirected: AtomicU64,
    /// Input packets rewritten (replies).
    pub replies: AtomicU64,
    drops: [AtomicU64; DropReason::ALL.len()],
}

impl Default for Counters {
    fn default() -> Self {
        Self::new()
    }
}

impl Counters {
    /// All zero.
    pub const fn new() -> Counters {
        Counters {
            redirected: AtomicU64::new(0),
            replies: AtomicU64::new(0),
            drops: [const { AtomicU64::new(0) }; DropReason::ALL.len()],
        }
    }

    /// Counts a drop and logs it on `log` (blocks are logged with their
    /// addresses where they are decided).
    pub fn drop(&self, r: DropReason, log: &Logger) {
        if let Some(c) = self.drops.get(r.index()) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        let level = match r {
            DropReason::Blocked => return,
            DropReason::TableFull
            | DropReason::Collision
            | DropReason::Mbuf
            | DropReason::Inject => LogLevel::Decisions,
            _ => LogLevel::Debug,
        };
        log.log(level, format_args!("packet dropped: {}", r.name()));
    }

    /// Each reason with its count, in statistics order.
    pub fn drops(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL
            .iter()
            .zip(self.drops.iter())
            .map(|(r, c)| (*r, c.load(Ordering::Relaxed)))
    }

    /// Logs the totals as `key=value` lines (stop): packets redirected and
    /// reversed, then each drop reason.
    pub fn log_totals(&self, log: &Logger) {
        log.key_value(c"redirected", self.redirected.load(Ordering::Relaxed));
        log.key_value(c"reversed", self.replies.load(Ordering::Relaxed));
        for (r, n) in self.drops() {
            log.key_value(r.key(), n);
        }
    }
}

/// The flow and packet statistics of both families' tables (`v4`, `v6`) and
/// the counters `c`, in statistics order: flows, expired, evicted, capacity,
/// redirected and reply packets.
pub fn push_flow_stats(w: &mut StatsWriter, v4: &nat::Stats, v6: &nat::Stats, c: &Counters) {
    w.push_count(stat::IP_FLOWS, v4.flows.saturating_add(v6.flows));
    w.push(
        stat::IP_FLOWS_EXPIRED,
        v4.expired.saturating_add(v6.expired),
    );
    w.push(
        stat::IP_FLOWS_EVICTED,
        v4.evicted.saturating_add(v6.evicted),
    );
    w.push_count(
        stat::IP_FLOW_CAPACITY,
        v4.capacity.saturating_add(v6.capacity),
    );
    w.push(
        stat::IP_REDIRECTED_PACKETS,
        c.redirected.load(Ordering::Relaxed),
    );
    w.push(stat::IP_REPLY_PACKETS, c.replies.load(Ordering::Relaxed));
}

/// The NAT timeouts `t` as statistics (TCP idle, TCP closed, UDP idle).
pub fn push_timeouts(w: &mut StatsWriter, t: &Timeouts) {
    w.push(stat::IP_TCP_IDLE_S, u64::from(t.tcp_idle_s));
    w.push(stat::IP_TCP_CLOSED_S, u64::from(t.tcp_closed_s));
    w.push(stat::IP_UDP_IDLE_S, u64::from(t.udp_idle_s));
}

/// Logs both tables' flow totals as `key=value` lines (stop).
pub fn log_flow_totals(log: &Logger, v4: &nat::Stats, v6: &nat::Stats) {
    log.key_value(c"flows_v4", u64::try_from(v4.flows).unwrap_or(0));
    log.key_value(c"flows_v6", u64::try_from(v6.flows).unwrap_or(0));
    log.key_value(c"flows_expired", v4.expired.saturating_add(v6.expired));
    log.key_value(c"flows_evicted", v4.evicted.saturating_add(v6.evicted));
}

/// Logs the output plan of a packet that created a flow (`created`) or was
/// blocked, at the decisions level: `redirect FLOW to PROXY` or `block FLOW`
/// (called outside the locks; the logger never blocks).
pub fn log_new_flow(log: &Logger, prefix: &[u8], len: usize, plan: Plan, created: bool) {
    let blocked = plan == Plan::Drop(DropReason::Blocked);
    if !(created || blocked) || !log.enabled(LogLevel::Decisions) {
        return;
    }
    let Some(flow) = filter::outbound_flow(prefix, len) else {
        return;
    };
    match plan {
        Plan::Translate { to, .. } => log.log(
            LogLevel::Decisions,
            format_args!("redirect {} to {}", Flow(flow), Ep(&to)),
        ),
        _ => log.log(LogLevel::Decisions, format_args!("block {}", Flow(flow))),
    }
}

/// One family's NAT table with copies of the proxy endpoints (kept equal to
/// the configuration's by the control, under the configuration's write lock),
/// so a tracked flow's packets are planned under the table's lock alone.
pub struct Flows {
    /// The flows.
    pub table: NatTable<KSlice<Entry>>,
    /// The proxies, for the general path.
    pub proxies: Proxies,
    /// The same, prepared for the fast path.
    pub addrs: ProxyAddrs,
}

impl Flows {
    /// `table`, with no proxies yet.
    pub fn new(table: NatTable<KSlice<Entry>>) -> Flows {
        Flows {
            table,
            proxies: Proxies::default(),
            addrs: ProxyAddrs::default(),
        }
    }

    /// The proxies changed to `p`.
    pub fn set_proxies(&mut self, p: Proxies) {
        self.proxies = p;
        self.addrs = ProxyAddrs::of(&p);
    }
}

/// The kext's side of the packet path: its tables, its rules, counters and
/// log (the family is the filter's, [`IpFilter::family`]).
pub trait Nat: IpFilter {
    /// The kext's state (its tables among it).
    type State: 'static;
    /// The state, counted as in use; `None` before start finished or after
    /// stop began (nothing is translated then).
    fn state(&self) -> Option<GlobalRef<'static, Self::State>>;
    /// This family's flows in `state`.
    fn flows<'s>(&self, state: &'s Self::State) -> &'s FastMutex<Flows>;
    /// Runs `f` on this family's flows under their lock (`None`: no state).
    /// The fast path takes the lock itself, without a closure, so the table's
    /// hit path inlines into the callback.
    #[inline(always)]
    fn with_flows<R>(&self, f: impl FnOnce(&mut Flows) -> R) -> Option<R> {
        let st = self.state()?;
        Some(f(&mut self.flows(&st).lock()))
    }
    /// The plan for an outgoing TCP/UDP packet whose headers `prefix` parse
    /// as `t` (`len`: the packet's length) and whose flow its table does not
    /// track: the rules (the table is asked again under the rules' lock).
    fn plan_untracked(&self, prefix: &[u8], len: usize, t: &Transport) -> Plan;
    /// The counters.
    fn counters(&self) -> &'static Counters;
    /// The log drops are reported on.
    fn log(&self) -> &'static Logger;
}

/// The plan for an outgoing packet: a tracked flow's under its table's lock
/// alone ([`filter::plan_output_tracked`]), a new flow's from the rules
/// ([`Nat::plan_untracked`]). The clock is read before any lock is taken.
fn plan_output<N: Nat>(n: &N, prefix: &[u8], len: usize, t: &Transport) -> Plan {
    let now = clock::uptime_ms();
    let known = n
        .with_flows(|f| filter::plan_output_tracked(prefix, len, t, &mut f.table, &f.proxies, now));
    match known {
        None => Plan::Pass,
        Some(Some(plan)) => plan,
        Some(None) => n.plan_untracked(prefix, len, t),
    }
}

/// The plan for an incoming packet (reverse translation needs only the table).
fn plan_input<N: Nat>(n: &N, prefix: &[u8], t: &Transport) -> Plan {
    let now = clock::uptime_ms();
    n.with_flows(|f| filter::plan_input_parsed(prefix, t, &mut f.table, now))
        .unwrap_or(Plan::Pass)
}

/// The first `len` bytes of `pkt` (at most the buffer's size) copied into `buf`.
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

/// The output path (`ipf_output`).
pub fn output<'a, N: Nat>(n: &N, mut pkt: Packet<'a>, out: Output<'a>) -> Verdict<'a> {
    if let Some(d) = output_in_place(n, &mut pkt) {
        return output_decided(n, d, pkt, out);
    }
    let len = pkt.len();
    let mut head = [0u8; HEAD];
    let Some(bytes) = copy_head(&pkt, &mut head, len) else {
        // Headers that cannot be read cannot be judged: fail closed.
        return drop_counted(n, DropReason::Mbuf, pkt);
    };
    match filter::first_look(bytes, len) {
        Some(Ok(t)) => output_parsed(n, pkt, out, bytes, len, &t),
        Some(Err(plan)) => unparsed(n, plan, pkt),
        None => {
            let mut buf = [0u8; PREFIX];
            let Some(bytes) = copy_head(&pkt, &mut buf, len) else {
                return drop_counted(n, DropReason::Mbuf, pkt);
            };
            match filter::parse_output(bytes, len) {
                Ok(t) => output_parsed(n, pkt, out, bytes, len, &t),
                Err(plan) => unparsed(n, plan, pkt),
            }
        }
    }
}

/// The input path (`ipf_input`).
pub fn input<'a, N: Nat>(n: &N, mut pkt: Packet<'a>) -> Verdict<'a> {
    if let Some(d) = input_in_place(n, &mut pkt) {
        return input_decided(n, d, pkt);
    }
    let len = pkt.len();
    let mut head = [0u8; HEAD];
    let Some(bytes) = copy_head(&pkt, &mut head, len) else {
        return Verdict::Pass(pkt);
    };
    match filter::first_look(bytes, len) {
        Some(Ok(t)) => input_parsed(n, pkt, bytes, len, &t),
        // An inbound packet that does not parse passes.
        Some(Err(_)) => Verdict::Pass(pkt),
        None => {
            let mut buf = [0u8; PREFIX];
            let Some(bytes) = copy_head(&pkt, &mut buf, len) else {
                return Verdict::Pass(pkt);
            };
            match ip::transport_in(bytes, len) {
                Ok(t) => input_parsed(n, pkt, bytes, len, &t),
                Err(_) => Verdict::Pass(pkt),
            }
        }
    }
}

/// The output path once the headers are parsed: plan, rewrite, re-inject.
fn output_parsed<'a, N: Nat>(
    n: &N,
    pkt: Packet<'a>,
    out: Output<'a>,
    bytes: &mut [u8],
    len: usize,
    t: &Transport,
) -> Verdict<'a> {
    let plan = plan_output(n, bytes, len, t);
    let mut pkt = match settle(n, plan, pkt) {
        Ok(p) => p,
        Err(v) => return v,
    };
    let deferred = pkt.l4_csum_deferred();
    let d = if deferred && !matches!(t.protocol, ipproto::TCP | ipproto::UDP) {
        // Only TCP/UDP checksums are deferred by the stack; should an
        // ICMP packet carry the flag, complete the checksums as before
        // and rewrite the final bytes.
        pkt.outbound_finalize(ipf::af(n.family()), 0);
        if pkt.copy_out(0, bytes).is_err() {
            return drop_counted(n, DropReason::Mbuf, pkt);
        }
        match ip::transport_in(bytes, len) {
            Ok(t) => rewrite(&mut pkt, bytes, len, &t, plan, L4Sum::Complete),
            Err(_) => Decision::Drop(DropReason::Unparseable),
        }
    } else {
        rewrite(
            &mut pkt,
            bytes,
            len,
            t,
            plan,
            L4Sum::when_deferred(deferred),
        )
    };
    output_decided(n, d, pkt, out)
}

/// The fast path's body for an output packet ([`fastpath::with_plain`]):
/// the decision, or `None` for a packet of no tracked flow (the rules decide).
struct FastOutput<'n, 'p, N> {
    n: &'n N,
    csum: Csum<'p>,
}

impl<N: Nat> OnPlain for FastOutput<'_, '_, N> {
    type Out = Option<Decision>;

    #[inline(always)]
    fn on<const IP: usize, const A: usize, const L4: usize>(
        self,
        p: Plain<'_, IP, A, L4>,
    ) -> Option<Decision> {
        let now = clock::uptime_ms();
        let (key, flags) = (p.key, p.flags);
        let tracked = match self.n.state() {
            Some(st) => {
                let mut g = self.n.flows(&st).lock();
                let f = &mut *g;
                fastpath::track_output(&mut f.table, &f.addrs, &key, flags, now)
            }
            None => Tracked::Pass,
        };
        match tracked {
            Tracked::To(to) => {
                // Only a rewrite needs to know whether the stack deferred
                // the TCP/UDP checksum.
                let l4 = L4Sum::when_deferred(self.csum.l4_deferred());
                Some(fast_decision(p.rewrite(Side::Dst, &to, l4)))
            }
            Tracked::Pass => Some(Decision::Pass),
            Tracked::Untracked => None,
        }
    }
}

/// The fast path's body for an input packet: an untracked plain reply passes,
/// as the general plan would say.
struct FastInput<'n, N> {
    n: &'n N,
}

impl<N: Nat> OnPlain for FastInput<'_, N> {
    type Out = Decision;

    #[inline(always)]
    fn on<const IP: usize, const A: usize, const L4: usize>(
        self,
        p: Plain<'_, IP, A, L4>,
    ) -> Decision {
        let now = clock::uptime_ms();
        let (key, flags) = (p.key, p.flags);
        let tracked = match self.n.state() {
            Some(st) => {
                let mut f = self.n.flows(&st).lock();
                fastpath::track_input(&mut f.table, &key, flags, now)
            }
            None => Tracked::Pass,
        };
        match tracked {
            Tracked::To(to) => fast_decision(p.rewrite(Side::Src, &to, L4Sum::Complete)),
            Tracked::Pass | Tracked::Untracked => Decision::Pass,
        }
    }
}

/// The output path of a packet whose first mbuf holds its headers
/// ([`filter::parse_in_first`]): planned and rewritten in place, with no
/// copy and no length asked (`None`: take the copying path).
fn output_in_place<N: Nat>(n: &N, pkt: &mut Packet<'_>) -> Option<Decision> {
    let First { bytes, csum } = pkt.first_mut()?;
    let fast = fastpath::with_plain(bytes, FastOutput { n, csum });
    if let Some(Some(d)) = fast {
        return Some(d);
    }
    let (k, t) = filter::parse_in_first(bytes, PREFIX)?;
    let len = bytes.len();
    let prefix = bytes.get_mut(..k)?;
    let plan = if fast.is_some() {
        n.plan_untracked(prefix, len, &t)
    } else {
        plan_output(n, prefix, len, &t)
    };
    let l4 = match plan {
        // Only a rewrite needs to know whether the stack deferred the
        // TCP/UDP checksum (all this path sees).
        Plan::Translate { .. } if csum.l4_deferred() => L4Sum::Deferred,
        _ => L4Sum::Complete,
    };
    Some(filter::apply_parsed(prefix, &t, plan, l4))
}

/// [`output_in_place`] for the input path.
fn input_in_place<N: Nat>(n: &N, pkt: &mut Packet<'_>) -> Option<Decision> {
    let First { bytes, .. } = pkt.first_mut()?;
    if let Some(d) = fastpath::with_plain(bytes, FastInput { n }) {
        return Some(d);
    }
    let (k, t) = filter::parse_in_first(bytes, PREFIX)?;
    let prefix = bytes.get_mut(..k)?;
    let plan = plan_input(n, prefix, &t);
    Some(filter::apply_parsed(prefix, &t, plan, L4Sum::Complete))
}

/// The decision for a fast-path rewrite's result (as [`filter::apply_parsed`]
/// maps [`crate::net::translate::rewrite_with`]'s).
#[inline(always)]
fn fast_decision(r: Result<usize, Refused>) -> Decision {
    match r {
        Ok(changed) => Decision::Rewritten { changed },
        Err(Refused::Udp6ZeroChecksum) => Decision::Drop(DropReason::Udp6ZeroChecksum),
        Err(_) => Decision::Drop(DropReason::Unparseable),
    }
}

/// The input path once the headers are parsed.
fn input_parsed<'a, N: Nat>(
    n: &N,
    pkt: Packet<'a>,
    bytes: &mut [u8],
    len: usize,
    t: &Transport,
) -> Verdict<'a> {
    let plan = plan_input(n, bytes, t);
    let mut pkt = match settle(n, plan, pkt) {
        Ok(p) => p,
        Err(v) => return v,
    };
    let d = rewrite(&mut pkt, bytes, len, t, plan, L4Sum::Complete);
    input_decided(n, d, pkt)
}

/// Settles an output packet once its headers are rewritten (or not).
#[inline(always)]
fn output_decided<'a, N: Nat>(n: &N, d: Decision, pkt: Packet<'a>, out: Output<'a>) -> Verdict<'a> {
    match d {
        Decision::Rewritten { .. } => {
            n.counters().redirected.fetch_add(1, Ordering::Relaxed);
            // The route was chosen for the old destination: re-inject.
            let (taken, r) = out.inject(pkt);
            if r.is_err() {
                n.counters().drop(DropReason::Inject, n.log());
            }
            Verdict::Taken(taken)
        }
        Decision::Drop(r) => drop_counted(n, r, pkt),
        Decision::Pass => Verdict::Pass(pkt),
    }
}

/// Settles an input packet once its headers are rewritten (or not).
#[inline(always)]
fn input_decided<'a, N: Nat>(n: &N, d: Decision, mut pkt: Packet<'a>) -> Verdict<'a> {
    match d {
        Decision::Rewritten { .. } => {
            pkt.inbound_modified();
            n.counters().replies.fetch_add(1, Ordering::Relaxed);
            Verdict::Pass(pkt)
        }
        Decision::Drop(r) => drop_counted(n, r, pkt),
        Decision::Pass => Verdict::Pass(pkt),
    }
}

/// The verdict for a packet whose headers do not parse (the plan passes or
/// drops it).
fn unparsed<'a, N: Nat>(n: &N, plan: Plan, pkt: Packet<'a>) -> Verdict<'a> {
    match settle(n, plan, pkt) {
        Ok(p) => Verdict::Pass(p),
        Err(v) => v,
    }
}

/// Counts a drop and drops `pkt`.
fn drop_counted<'a, N: Nat>(n: &N, r: DropReason, pkt: Packet<'a>) -> Verdict<'a> {
    n.counters().drop(r, n.log());
    Verdict::Drop(pkt)
}

/// Settles the packets a plan leaves alone or drops (`Err`: the verdict);
/// `Ok` gives the packet back for rewriting.
fn settle<'a, N: Nat>(n: &N, plan: Plan, pkt: Packet<'a>) -> Result<Packet<'a>, Verdict<'a>> {
    match plan {
        Plan::Pass => Err(Verdict::Pass(pkt)),
        Plan::Drop(r) => {
            n.counters().drop(r, n.log());
            Err(Verdict::Drop(pkt))
        }
        Plan::Translate { .. } => Ok(pkt),
    }
}
