//! PrxIPFilter.kext: packet-level redirection to a proxy as a NAT, for IPv4
//! and IPv6.
//!
//! Wiring only: the decisions are `common::net::filter` (pure, host-tested),
//! the KPI contracts `common::kpi::{ipf, mbuf}`.
//!
//! - `ipf_output`: copy the headers out of the chain (`mbuf_copydata`, so
//!   headers straddling mbufs need no pullup), plan; for a redirected flow
//!   complete deferred checksums (`mbuf_outbound_finalize`), copy the headers
//!   again, rewrite the destination with incremental checksums, copy them back
//!   (`mbuf_copyback`) and re-inject (`ipf_inject_output`, which always
//!   consumes the chain: EJUSTRETURN).
//! - `ipf_input`: reverse-translate replies from the proxy in place and call
//!   `mbuf_inbound_modified`.
//! - The NAT tables (one per family) sit behind non-blocking try-locks; a
//!   contended callback drops the packet (counted), it never waits.
//! - Stop removes both filters and returns busy until both `ipf_detach` ran.
//!
//! Rules: the fixed policy `FixedPolicy::EXAMPLE` (203.0.113.0/24 and
//! 2001:db8:203::/48 to the proxy at 192.0.2.1:3128 / [2001:db8:2::1]:3128)
//! until the shared rule engine and control protocol are wired in.
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

use core::sync::atomic::{AtomicU64, Ordering};

use common::kpi::ipf::{Family, Input, IpFilter, Output, TryLock, Verdict};
use common::kpi::mbuf::Packet;
use common::kpi::{KextError, clock, log};
use common::net::filter::{self, Decision, DropReason, FixedPolicy, Plan};
use common::net::nat::{Config, NatTable};

/// Flows per family.
const FLOWS: usize = 1024;
/// Index buckets per family (power of two ≥ 2 × FLOWS).
const SLOTS: usize = 2048;
/// Header bytes copied out of each packet (IP header with options or IPv6
/// extension headers, plus the transport header up to its checksum). Packets
/// whose headers do not fit are handled by `filter`'s policy.
const PREFIX: usize = 256;
/// Spins before a contended callback gives up on the table.
const SPINS: u32 = 64;

static POLICY: FixedPolicy = FixedPolicy::EXAMPLE;

/// Counters (exposed in the log at stop; the control protocol comes with the rules).
struct Stats {
    redirected: AtomicU64,
    reversed: AtomicU64,
    drops: [AtomicU64; 7],
}

static STATS: Stats = Stats {
    redirected: AtomicU64::new(0),
    reversed: AtomicU64::new(0),
    drops: [const { AtomicU64::new(0) }; 7],
};

fn count_drop(r: DropReason) {
    if let Some(c) = STATS.drops.get(r.index()) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

struct Nat {
    family: Family,
    table: TryLock<NatTable<FLOWS, SLOTS>>,
}

impl Nat {
    const fn new(family: Family, seed: u64) -> Nat {
        Nat {
            family,
            table: TryLock::new(NatTable::new(Config::DEFAULT, seed)),
        }
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
        let Some(n) = Self::prefix(pkt, &mut buf) else {
            return Decision::Drop(DropReason::Mbuf);
        };
        let Some(prefix) = buf.get_mut(..n) else {
            return Decision::Drop(DropReason::Mbuf);
        };
        let d = filter::apply(prefix, len, plan);
        if let Decision::Rewritten { changed } = d {
            let Some(bytes) = prefix.get(..changed) else {
                return Decision::Drop(DropReason::Mbuf);
            };
            if pkt.copy_in(0, bytes).is_err() {
                return Decision::Drop(DropReason::Mbuf);
            }
        }
        d
    }
}

impl IpFilter for Nat {
    const NAME: &'static core::ffi::CStr = c"net.prx.kext.IPFilter";

    fn output<'a>(&self, mut pkt: Packet<'a>, out: Output<'a>) -> Verdict<'a> {
        let mut buf = [0u8; PREFIX];
        let len = pkt.len();
        let Some(n) = Self::prefix(&pkt, &mut buf) else {
            return Verdict::Pass(pkt);
        };
        let plan = {
            let Some(mut table) = self.table.try_lock(SPINS) else {
                count_drop(DropReason::Busy);
                return Verdict::Drop(pkt);
            };
            filter::plan_output(
                buf.get(..n).unwrap_or(&[]),
                len,
                &mut table,
                &POLICY,
                clock::uptime_ms(),
            )
        };
        match plan {
            Plan::Pass => return Verdict::Pass(pkt),
            Plan::Drop(r) => {
                count_drop(r);
                return Verdict::Drop(pkt);
            }
            Plan::Translate { .. } => {}
        }
        // The transport checksum may still be a pseudo-header seed: finalize first.
        pkt.outbound_finalize(self.family.af(), 0);
        match Self::rewrite(&mut pkt, plan) {
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
        mut pkt: Packet<'a>,
        _offset: usize,
        _protocol: u8,
        _inj: Input<'a>,
    ) -> Verdict<'a> {
        let mut buf = [0u8; PREFIX];
        let len = pkt.len();
        let Some(n) = Self::prefix(&pkt, &mut buf) else {
            return Verdict::Pass(pkt);
        };
        let plan = {
            let Some(mut table) = self.table.try_lock(SPINS) else {
                count_drop(DropReason::Busy);
                return Verdict::Drop(pkt);
            };
            filter::plan_input(
                buf.get(..n).unwrap_or(&[]),
                len,
                &mut table,
                clock::uptime_ms(),
            )
        };
        if plan == Plan::Pass {
            return Verdict::Pass(pkt);
        }
        match Self::rewrite(&mut pkt, plan) {
            Decision::Rewritten { .. } => {
                pkt.inbound_modified();
                STATS.reversed.fetch_add(1, Ordering::Relaxed);
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
    static V4: Registration<Nat> = Nat::new(Family::V4, 0x9e37_79b9_7f4a_7c15);
);
common::ip_filter!(
    static V6: Registration<Nat> = Nat::new(Family::V6, 0xc2b2_ae3d_27d4_eb4f);
);

fn start() -> Result<(), KextError> {
    let v4 = V4.attach(Family::V4);
    let v6 = V6.attach(Family::V6);
    match (v4, v6) {
        (Ok(()), Ok(())) => log::line(c"PrxIPFilter started: IPv4 and IPv6 filters attached"),
        (Ok(()), Err(_)) => log::line(c"PrxIPFilter started: IPv4 only (ipf_addv6 failed)"),
        (Err(_), Ok(())) => log::line(c"PrxIPFilter started: IPv6 only (ipf_addv4 failed)"),
        (Err(_), Err(_)) => {
            log::line(c"PrxIPFilter: ipf_addv4 and ipf_addv6 failed");
            return Err(KextError::Failed);
        }
    }
    Ok(())
}

fn stop() -> Result<(), KextError> {
    V4.remove();
    V6.remove();
    if !(V4.is_detached() && V6.is_detached()) {
        return Err(KextError::Busy);
    }
    let flows = |r: &common::kpi::ipf::Registration<Nat>| {
        r.filter()
            .table
            .try_lock(SPINS)
            .map(|t| t.len())
            .unwrap_or(0)
    };
    log::counter(
        c"PrxIPFilter",
        c"flows_v4",
        u64::try_from(flows(&V4)).unwrap_or(0),
    );
    log::counter(
        c"PrxIPFilter",
        c"flows_v6",
        u64::try_from(flows(&V6)).unwrap_or(0),
    );
    log::counter(
        c"PrxIPFilter",
        c"redirected",
        STATS.redirected.load(Ordering::Relaxed),
    );
    log::counter(
        c"PrxIPFilter",
        c"reversed",
        STATS.reversed.load(Ordering::Relaxed),
    );
    let names = [
        c"drop_unparseable",
        c"drop_table_full",
        c"drop_collision",
        c"drop_udp6_zero_csum",
        c"drop_busy",
        c"drop_mbuf",
        c"drop_inject",
    ];
    for (name, c) in names.iter().zip(STATS.drops.iter()) {
        log::counter(c"PrxIPFilter", name, c.load(Ordering::Relaxed));
    }
    log::line(c"PrxIPFilter stopped");
    Ok(())
}

common::kext!(start: start, stop: stop);
