//! PrxIPFilter.kext: packet-level redirection to a proxy as a NAT, for IPv4
//! and IPv6, driven by the same rules and control protocol as the socket filter.
//!
//! Wiring only: the decisions are `common::net::filter` (pure, host-tested),
//! the KPI contracts `common::kpi::{ipf, mbuf, ctl}`.
//!
//! - `ipf_output`: the packet path (`common::kpi::natpath`: copy the headers
//!   out or work in the first mbuf, rewrite with incremental checksums, leave
//!   a deferred TCP/UDP checksum deferred, re-inject) asks this kext for the
//!   plan: a tracked flow's under its table's lock, a new flow's from the
//!   shared rules (`filter::RulesPolicy`) under the configuration's.
//! - `ipf_input`: reverse-translate replies from the proxy (same path).
//! - The NAT tables (one per family) are allocated in start with the capacity
//!   configured in `[package.metadata.prx-ip] nat-flows` (build.rs), keyed with
//!   `read_random`, and sit behind `FastMutex`es (an atomic word, sleeping on an
//!   `lck_mtx` with `msleep` only when contended); the configuration
//!   (`common::kpi::config`) behind an xnu reader-writer lock (`lck_rw`, taken
//!   shared per packet) that the control replaces in one swap. Both callbacks
//!   run where blocking is allowed: xnu's `ip_input`, `ip_output`,
//!   `ip6_input` and `ip6_output` call `ipf_ref()`, which takes the
//!   `kipf_lock` mutex, right before calling the filters
//!   (`bsd/netinet/kpi_ipfilter.c`), and `ipf_detach` runs with that lock
//!   dropped. So a contended callback waits a few hundred nanoseconds (the
//!   holders do O(1) work and never call out of the kext while holding a
//!   lock); it never drops the packet and never spins unboundedly. The locks
//!   are leaves: nothing is locked or called into the kernel while one is
//!   held except the lock order config → table (packet path and the
//!   control) and v4 → v6 table (the control).
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

use core::sync::atomic::{AtomicU32, Ordering};

use common::kpi::alloc::{KBox, KSlice};
use common::kpi::config::{Config as IpConfig, Ctl, Filter};
use common::kpi::errno::Errno;
use common::kpi::global::{Global, GlobalRef};
use common::kpi::ipf::{Input, IpFilter, Output, Registration as IpfRegistration, Verdict};
use common::kpi::lifecycle::{Kext, Registration};
use common::kpi::lock::{FastMutex, RwLock};
use common::kpi::mbuf::Packet;
use common::kpi::natpath::{self, Counters, Flows};
use common::kpi::{KextError, clock, log, random};
use common::net::addr::Endpoint;
use common::net::addr::Family;
use common::net::control::{self as proto, StatsWriter, Timeouts, stat};
use common::net::filter::{self, Plan, RulesPolicy};
use common::net::nat::{self, Config, Entry, NatTable};
use common::net::origdst::Original;
use common::net::policy::Proxies;
use common::net::wire::ip::Transport;
use common::sys::CTL_FLAG_PRIVILEGED;

/// Flows per family: `[package.metadata.prx-ip] nat-flows` (validated by
/// build.rs; anything else gives 0, which `NatTable::new` refuses in start).
const FLOWS: usize = nat::parse_count(env!("PRX_NAT_FLOWS"));

/// Packet counters (a static of zeros: zero-fill).
static COUNTERS: Counters = Counters::new();
/// IP filters attached at start.
static ATTACHED: AtomicU32 = AtomicU32::new(0);

/// Decisions, rule changes and failures (`prxctl log-level`), rate-limited.
static LOG: log::Logger = log::Logger::new(c"PrxIPFilter");

struct Shared {
    config: RwLock<IpConfig>,
    nat_v4: FastMutex<Flows>,
    nat_v6: FastMutex<Flows>,
}

impl Shared {
    fn table(&self, f: Family) -> &FastMutex<Flows> {
        match f {
            Family::V4 => &self.nat_v4,
            Family::V6 => &self.nat_v6,
        }
    }

    /// Both tables' statistics (each lock taken in turn).
    fn table_stats(&self) -> (nat::Stats, nat::Stats) {
        (
            self.nat_v4.lock().table.stats(),
            self.nat_v6.lock().table.stats(),
        )
    }
}

static STATE: Global<Shared> = Global::new();

// ---- the IP filters ----

/// The filter of one family (`V6`: IPv6), a type parameter so each
/// callback's table is fixed at compile time.
struct Nat<const V6: bool>;

impl<const V6: bool> natpath::Nat for Nat<V6> {
    type State = Shared;

    #[inline(always)]
    fn state(&self) -> Option<GlobalRef<'static, Shared>> {
        STATE.get()
    }

    #[inline(always)]
    fn flows<'s>(&self, st: &'s Shared) -> &'s FastMutex<Flows> {
        st.table(self.family())
    }

    /// The new-flow plan: the rules under the configuration (read), then the
    /// table (`filter::plan_output_parsed`, which finds the flow should
    /// another packet have created it in between).
    fn plan_untracked(&self, bytes: &[u8], len: usize, t: &Transport) -> Plan {
        let Some(st) = STATE.get() else {
            return Plan::Pass;
        };
        let now = clock::uptime_ms();
        let cfg = st.config.read();
        let policy = RulesPolicy {
            enabled: cfg.enabled,
            rules: &cfg.rules,
            proxies: &cfg.proxies,
        };
        let mut flows = st.table(self.family()).lock();
        let before = flows.table.inserted();
        let plan = filter::plan_output_parsed(bytes, len, t, &mut flows.table, &policy, now);
        let created = flows.table.inserted() != before;
        drop(flows);
        drop(cfg);
        natpath::log_new_flow(&LOG, bytes, len, plan, created);
        plan
    }

    fn counters(&self) -> &'static Counters {
        &COUNTERS
    }

    fn log(&self) -> &'static log::Logger {
        &LOG
    }
}

impl<const V6: bool> IpFilter for Nat<V6> {
    const NAME: &'static core::ffi::CStr = c"net.prx.kext.IPFilter";

    fn family(&self) -> Family {
        if V6 { Family::V6 } else { Family::V4 }
    }

    fn output<'a>(&self, pkt: Packet<'a>, out: Output<'a>) -> Verdict<'a> {
        natpath::output(self, pkt, out)
    }

    fn input<'a>(
        &self,
        pkt: Packet<'a>,
        _offset: usize,
        _proto: u8,
        _in: Input<'a>,
    ) -> Verdict<'a> {
        natpath::input(self, pkt)
    }
}

common::ip_filter!(
    static V4: Registration<Nat<false>> = Nat;
);
common::ip_filter!(
    static V6: Registration<Nat<true>> = Nat;
);

// ---- the control ----

impl Filter for Shared {
    const STATE: &'static Global<Shared> = &STATE;
    const LOG: &'static log::Logger = &LOG;
    const RULES_LINE_NAMES_SET: bool = false;

    fn config(&self) -> &RwLock<IpConfig> {
        &self.config
    }

    fn attached(&self) -> u32 {
        ATTACHED.load(Ordering::Relaxed)
    }

    /// The tables' copies change under the configuration's lock (order:
    /// configuration, IPv4 table, IPv6 table), so two controls cannot leave
    /// them different.
    fn proxies_set(&self, p: Proxies) {
        for t in [&self.nat_v4, &self.nat_v6] {
            t.lock().set_proxies(p);
        }
    }

    fn set_timeouts(&self, t: Timeouts) -> Result<(), Errno> {
        // Both tables at once (callbacks hold one table at a time).
        let mut v4 = self.nat_v4.lock();
        let mut v6 = self.nat_v6.lock();
        v4.table.set_config(t.nat_config());
        v6.table.set_config(t.nat_config());
        Ok(())
    }

    /// Answered from the NAT tables (no pid or rule is known there).
    fn lookup(&self, client: &Endpoint) -> Option<Original> {
        let now = clock::uptime_ms();
        let c = *client;
        let f = self
            .table(client.addr.family())
            .lock()
            .table
            .client_flow(&c, now)?;
        Some(Original {
            dst: f.key.dst,
            pid: 0,
            rule: proto::RULE_UNKNOWN,
        })
    }

    // The IP filter writes no PROXY v2 headers: it has no key (`auth_key`).

    fn stats(&self, generation: u32, w: &mut StatsWriter) {
        let (v4, v6) = self.table_stats();
        natpath::push_flow_stats(w, &v4, &v6, &COUNTERS);
        w.push(stat::IP_FILTERS_ATTACHED, u64::from(self.attached()));
        w.push(stat::RULES_GENERATION, u64::from(generation));
        let t = Timeouts::of(&self.nat_v4.lock().table.config());
        natpath::push_timeouts(w, &t);
        w.push_drops(COUNTERS.drops());
        w.push(stat::LOG_LEVEL, LOG.level() as u64);
        w.push(stat::LOG_SUPPRESSED, LOG.suppressed());
    }
}

common::kern_control!(static CONTROL: Ctl<Shared> = name proto::IP_CONTROL_NAME, flags CTL_FLAG_PRIVILEGED);

// ---- start and stop ----

/// A NAT table of the configured capacity, empty, keyed from the kernel's
/// random generator, with the default (RFC) timeouts.
fn make_table() -> Result<FastMutex<Flows>, KextError> {
    let store = KSlice::try_new(FLOWS, Entry::EMPTY).map_err(|_| KextError::Failed)?;
    let table =
        NatTable::new(store, Config::DEFAULT, random::u64()).map_err(|_| KextError::Failed)?;
    FastMutex::try_new(Flows::new(table)).map_err(|_| KextError::Failed)
}

fn make_state() -> Result<(), KextError> {
    let shared = Shared {
        config: IpConfig::initial()?,
        nat_v4: make_table()?,
        nat_v6: make_table()?,
    };
    let b = KBox::try_new(shared).map_err(|_| KextError::Failed)?;
    STATE.set(b).map_err(|_| KextError::Failed)
}

/// How long stop waits for a late `ipf_detach` (a packet still in the filter
/// on another CPU when `ipf_remove` ran).
const DETACH_WAIT_MS: u64 = 2_000;

const KEXT: Kext<Shared, (&IpfRegistration<Nat<false>>, &IpfRegistration<Nat<true>>)> = Kext {
    name: c"net.prx.kext.IPFilter",
    state: &STATE,
    control: &CONTROL,
    filters: (&V4, &V6),
    wait_ms: DETACH_WAIT_MS,
    log: &LOG,
};

/// The control first, then each filter on its own: one family's filter
/// failing to attach leaves the other working.
fn start() -> Result<(), KextError> {
    KEXT.init()?;
    if make_state().and_then(|()| CONTROL.register()).is_err() {
        log::line(c"PrxIPFilter: start failed");
        let _ = CONTROL.unregister();
        let _ = KEXT.fini();
        return Err(KextError::Failed);
    }
    let v4 = V4.register();
    let v6 = V6.register();
    let attached = u32::from(v4.is_ok()).saturating_add(u32::from(v6.is_ok()));
    ATTACHED.store(attached, Ordering::Relaxed);
    match (v4, v6) {
        (Ok(()), Ok(())) => log::line(c"PrxIPFilter started: IPv4 and IPv6 filters attached"),
        (Ok(()), Err(_)) => log::line(c"PrxIPFilter started: IPv4 only (ipf_addv6 failed)"),
        (Err(_), Ok(())) => log::line(c"PrxIPFilter started: IPv6 only (ipf_addv4 failed)"),
        (Err(_), Err(_)) => {
            log::line(c"PrxIPFilter: ipf_addv4 and ipf_addv6 failed");
            let _ = CONTROL.unregister();
            let _ = KEXT.fini();
            return Err(KextError::Failed);
        }
    }
    Ok(())
}

/// xnu does not call a refused stop again (kextunload reports the failure and
/// the kext stays loaded), so stop refuses only before removing anything, and
/// once it has removed the filters it waits for their detach rather than
/// return busy with the kext inert.
fn stop() -> Result<(), KextError> {
    // Not undoable once the filters are removed: a later kextunload
    // completes the stop.
    let late = c"stop refused: ipf_detach still pending after 2 s";
    KEXT.stop(
        || true,
        late,
        || {
            ATTACHED.store(0, Ordering::Relaxed);
            if let Some(st) = STATE.get() {
                let (a, b) = st.table_stats();
                natpath::log_flow_totals(&LOG, &a, &b);
            }
        },
    )?;
    COUNTERS.log_totals(&LOG);
    log::line(c"PrxIPFilter stopped");
    Ok(())
}

common::kext!(start: start, stop: stop);
