//! Fault injection: a seedable plan that makes chosen KPI calls fail, so a kext
//! can be shown to survive each failure point.
//!
//! A plan names points (`alloc`, `mbuf-alloc`, `pullup`, `inject`, `ctl-enqueue`,
//! `sflt-register`, `ipf-add`, `ctl-register`, `ctl-deregister`,
//! `sflt-unregister-late`, `ipf-detach-late`, and `lock-skip`, a planted race)
//! and either the ordinal calls to fail (`pullup#1,3`: the first and third
//! `mbuf_pullup`) or a seeded rate (`alloc%250@7`: each allocation fails with
//! probability 250/1000, from seed 7). Same plan, same failures.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A KPI call that can be made to fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultPoint {
    /// `OSMalloc*`, `_MALLOC`: return NULL.
    Alloc,
    /// `mbuf_get*`, `mbuf_allocpacket`, `mbuf_dup`, `mbuf_copym`, `mbuf_prepend`: ENOMEM.
    MbufAlloc,
    /// `mbuf_pullup`: ENOMEM, and the chain is freed (as the kernel does).
    Pullup,
    /// `ipf_inject_*`, `sock_inject_data_*`: error (the mbuf is still consumed).
    Inject,
    /// `ctl_enqueuedata`/`ctl_enqueuembuf`: ENOBUFS.
    CtlEnqueue,
    /// `sflt_register`: ENOMEM (nothing registered).
    SfltRegister,
    /// `ipf_addv4`/`ipf_addv6`: ENOMEM (nothing attached).
    IpfAdd,
    /// `ctl_register`: ENOMEM (nothing registered).
    CtlRegister,
    /// `ctl_deregister`: EBUSY (still registered), as when a client connects.
    CtlDeregister,
    /// `sflt_unregister`: `sf_unregistered` comes 1 ms later (emulated time)
    /// instead of at once, as when sockets still hold the filter (xnu's cleanup
    /// thread).
    SfltUnregisterLate,
    /// `ipf_remove`: `ipf_detach` comes 1 ms later, as when a packet is in the
    /// filter on another CPU (`kipf_ref` != 0).
    IpfDetachLate,
    /// `lck_mtx_lock`/`lck_rw_lock_*`/`lck_spin_lock` return without taking
    /// the lock (and the matching unlock does nothing): a planted race, for
    /// negative controls of the multi-threaded scenarios.
    LockSkip,
}

impl FaultPoint {
    pub const ALL: [FaultPoint; 12] = [
        FaultPoint::Alloc,
        FaultPoint::MbufAlloc,
        FaultPoint::Pullup,
        FaultPoint::Inject,
        FaultPoint::CtlEnqueue,
        FaultPoint::SfltRegister,
        FaultPoint::IpfAdd,
        FaultPoint::CtlRegister,
        FaultPoint::CtlDeregister,
        FaultPoint::SfltUnregisterLate,
        FaultPoint::IpfDetachLate,
        FaultPoint::LockSkip,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultPoint::Alloc => "alloc",
            FaultPoint::MbufAlloc => "mbuf-alloc",
            FaultPoint::Pullup => "pullup",
            FaultPoint::Inject => "inject",
            FaultPoint::CtlEnqueue => "ctl-enqueue",
            FaultPoint::SfltRegister => "sflt-register",
            FaultPoint::IpfAdd => "ipf-add",
            FaultPoint::CtlRegister => "ctl-register",
            FaultPoint::CtlDeregister => "ctl-deregister",
            FaultPoint::SfltUnregisterLate => "sflt-unregister-late",
            FaultPoint::IpfDetachLate => "ipf-detach-late",
            FaultPoint::LockSkip => "lock-skip",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == s)
    }
}

/// How one point fails.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rule {
    /// Fail these 1-based call ordinals.
    Calls(Vec<u32>),
    /// Fail with probability `per_mille`/1000, drawn from a generator seeded with `seed`.
    Rate { per_mille: u32, seed: u64 },
}

/// The plan, and the state it needs while running.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultPlan {
    pub rules: BTreeMap<FaultPoint, Rule>,
    #[serde(skip)]
    counts: BTreeMap<FaultPoint, u32>,
    #[serde(skip)]
    rng: BTreeMap<FaultPoint, u64>,
}

impl FaultPlan {
    /// Parses `point#n,m` / `point%per_mille@seed` items separated by `;` or spaces.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut plan = FaultPlan::default();
        for item in text.split([';', ' ']).filter(|s| !s.is_empty()) {
            let (name, rule) = if let Some((n, calls)) = item.split_once('#') {
                let calls: Result<Vec<u32>, _> = calls.split(',').map(str::parse).collect();
                (
                    n,
                    Rule::Calls(calls.map_err(|e| format!("fault plan item `{item}`: {e}"))?),
                )
            } else if let Some((n, rest)) = item.split_once('%') {
                let (rate, seed) = rest.split_once('@').unwrap_or((rest, "0"));
                let per_mille = rate
                    .parse()
                    .map_err(|e| format!("fault plan item `{item}`: {e}"))?;
                let seed = seed
                    .parse()
                    .map_err(|e| format!("fault plan item `{item}`: {e}"))?;
                (n, Rule::Rate { per_mille, seed })
            } else {
                return Err(format!(
                    "fault plan item `{item}`: expected POINT#N,M or POINT%PER_MILLE@SEED"
                ));
            };
            let point = FaultPoint::parse(name).ok_or_else(|| {
                let names: Vec<&str> = FaultPoint::ALL.iter().map(|p| p.name()).collect();
                format!(
                    "fault plan item `{item}`: unknown point `{name}` (known: {})",
                    names.join(", ")
                )
            })?;
            plan.rules.insert(point, rule);
        }
        Ok(plan)
    }

    /// Counts a call at `point` and says whether it must fail.
    pub fn should_fail(&mut self, point: FaultPoint) -> bool {
        let n = self.counts.entry(point).or_insert(0);
        *n += 1;
        let n = *n;
        match self.rules.get(&point) {
            None => false,
            Some(Rule::Calls(calls)) => calls.contains(&n),
            Some(Rule::Rate { per_mille, seed }) => {
                let state = self
                    .rng
                    .entry(point)
                    .or_insert(seed ^ 0x9E37_79B9_7F4A_7C15);
                // xorshift64*: small, seedable, reproducible.
                *state ^= *state >> 12;
                *state ^= *state << 25;
                *state ^= *state >> 27;
                let r = state.wrapping_mul(0x2545_F491_4F6C_DD1D);
                (r % 1000) < u64::from(*per_mille)
            }
        }
    }

    /// How many calls each point has seen.
    pub fn counts(&self) -> &BTreeMap<FaultPoint, u32> {
        &self.counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinal_plan_fails_exactly_the_named_calls() {
        let mut p = FaultPlan::parse("pullup#1,3").unwrap();
        let got: Vec<bool> = (0..4).map(|_| p.should_fail(FaultPoint::Pullup)).collect();
        assert_eq!(got, [true, false, true, false]);
        assert!(!p.should_fail(FaultPoint::Alloc));
    }

    #[test]
    fn seeded_plan_is_reproducible() {
        let run = || {
            let mut p = FaultPlan::parse("alloc%500@7").unwrap();
            (0..64)
                .map(|_| p.should_fail(FaultPoint::Alloc))
                .collect::<Vec<_>>()
        };
        let a = run();
        assert_eq!(a, run());
        assert!(a.iter().any(|&f| f) && a.iter().any(|&f| !f));
    }

    #[test]
    fn bad_plans_are_explained() {
        assert!(
            FaultPlan::parse("nosuch#1")
                .unwrap_err()
                .contains("known: alloc")
        );
        assert!(FaultPlan::parse("alloc").is_err());
    }
}
