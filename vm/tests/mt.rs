//! The emulator's multi-threaded scenarios (issue 16): callbacks delivered
//! from several threads at once with preemption inside the kexts' lock
//! operations, the negative controls that show a planted race or double free
//! is caught, and a short soak of both prx kexts.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use support::{c_kext, last_step as step, prx, rules};
use vm::emu::ScenarioReport;

fn run(scenario: &str, kexts: &[PathBuf], faults: Option<&str>, extra: &[&str]) -> ScenarioReport {
    support::run(scenario, kexts, faults, extra, Duration::from_secs(120))
}

/// A number in a step's detail, just before `label` (e.g. "9920 redirected").
fn count_before(detail: &str, label: &str) -> u64 {
    let i = detail
        .find(label)
        .unwrap_or_else(|| panic!("no `{label}` in {detail}"));
    detail[..i]
        .trim_end()
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number before `{label}` in {detail}"))
}

#[test]
fn ip_filter_from_four_threads_redirects_every_packet_and_never_drops_under_contention() {
    // Failing-first (defect 3): with the old per-packet try-lock (64 spins, then
    // drop) restored in kext-ip, this run dropped ~10,000 of 16,024 packets as
    // `busy` (see the issue 16 closing note).
    //
    // The NAT tables' FastMutex must also have slept for a holder (msleep,
    // then wakeup_one) with every packet still through: no wake-up lost (a
    // lost one is a violation, `msleep-lost-wakeup`). Its critical section
    // makes no kernel call, so only the host's scheduler can preempt a holder
    // there: a run on a loaded machine sees a few sleeps or, now and then,
    // none (here 16-50 alone, 0-11 beside the other tests). Each run must
    // pass everything else; up to four runs may be needed for a sleep. (The
    // lock's sleep path is also tested deterministically on the host:
    // `common::kpi::lock::tests`.)
    let mut sleeps = 0;
    for _ in 0..4 {
        let r = run("mt-nat", &[prx("PrxIPFilter")], None, &["--threads", "4"]);
        assert!(r.passed, "{}", r.render());
        let t = step(&r, "mt-nat: traffic");
        let packets = count_before(t, "packets");
        assert!(packets >= 16_000, "{t}");
        assert_eq!(
            count_before(t, "redirected") + count_before(t, "replies translated"),
            packets,
            "{t}"
        );
        assert!(t.contains("0 leaks") && t.contains("kext drops []"), "{t}");
        let c = step(&r, "mt-nat: concurrency");
        assert!(
            count_before(c, "callbacks began while another ran") > 0,
            "{c}"
        );
        assert!(count_before(c, "preemptions") > 0, "{c}");
        assert!(rules(&r).is_empty(), "{:?}", r.violations);
        // A sleep is itself the contention: a thread sleeps only after
        // finding a table's lock held. ("contended lock acquisitions" counts
        // the emulator's lck_mtx/lck_rw, which the fast path no longer takes:
        // a sleeper takes the sleep lock and a waker takes it after `msleep`
        // dropped it, so it may well stay 0.)
        sleeps = count_before(c, "sleeps for a lock");
        if sleeps > 0 {
            break;
        }
    }
    assert!(sleeps > 0, "no run of four slept for a NAT table's lock");
}

#[test]
fn socket_filter_notify_and_data_out_at_once_keep_the_header_first_and_share_the_cookie_lock() {
    // Failing-first (defect 4): the socket filter without the per-cookie mutex
    // (common::kpi::sflt before 46456d8) fails this with `cookie-race`.
    let r = run(
        "mt-sockfilter",
        &[prx("PrxSocketFilter")],
        None,
        &["--threads", "4"],
    );
    assert!(r.passed, "{}", r.render());
    let t = step(&r, "mt-sockfilter: connections");
    assert_eq!(count_before(t, "sockets"), 600, "{t}");
    assert_eq!(count_before(t, "redirected"), 600, "{t}");
    assert!(t.contains("0 without header, 0 leaks"), "{t}");
    assert!(!rules(&r).contains(&"cookie-race"));
}

#[test]
fn a_lock_skipped_in_the_socket_filter_is_caught_as_a_cookie_race() {
    // Negative control: every lock call of the kext made a no-op (a planted race).
    let r = run(
        "mt-sockfilter",
        &[prx("PrxSocketFilter")],
        Some("lock-skip%1000@3"),
        &["--threads", "4"],
    );
    assert!(!r.passed, "{}", r.render());
    let v = r
        .violations
        .iter()
        .find(|v| v.rule == "cookie-race")
        .unwrap_or_else(|| panic!("no cookie-race:\n{}", r.render()));
    assert!(
        v.detail.contains("ran at once on two threads") && v.detail.contains("no common lock"),
        "{v:?}"
    );
}

#[test]
fn a_planted_race_in_an_ip_filter_is_caught_and_its_lock_keeps_it_out() {
    // The fixture checks, inside its critical section (which holds a
    // preemption point), that it is alone; it panics otherwise.
    let locked = c_kext("ipf_count", "ipf_count", &[]);
    let r = run("mt-nat", std::slice::from_ref(&locked), None, &[]);
    assert!(r.passed, "{}", r.render());
    assert!(
        r.log
            .iter()
            .any(|l| l.contains("ipf_count: ") && l.contains(" packets")),
        "{:?}",
        r.log
    );
    for (kext, faults) in [
        (c_kext("ipf_count", "ipf_count_racy", &["-DRACY=1"]), None),
        (locked, Some("lock-skip%1000@1")),
    ] {
        let r = run("mt-nat", &[kext], faults, &[]);
        assert!(!r.passed, "{faults:?}: {}", r.render());
        let v = r
            .violations
            .iter()
            .find(|v| v.rule == "kernel-panic")
            .unwrap_or_else(|| panic!("{faults:?}: no kernel-panic:\n{}", r.render()));
        assert!(
            v.detail.contains("two threads inside the critical section"),
            "{v:?}"
        );
    }
}

#[test]
fn a_planted_double_free_or_free_after_inject_is_caught_under_threads() {
    for (n, rule) in [("2", "mbuf-double-free"), ("6", "mbuf-freed-after-inject")] {
        let k = c_kext(
            "ipf_broken",
            &format!("mt_ipf_broken{n}"),
            &[&format!("-DBROKEN={n}")],
        );
        let r = run("mt-nat", &[k], None, &[]);
        assert!(!r.passed, "BROKEN={n}: {}", r.render());
        assert!(rules(&r).contains(&rule), "BROKEN={n}: {:?}", r.violations);
    }
}

fn soak_summary(r: &ScenarioReport) -> String {
    step(r, "soak: summary").to_string()
}

#[test]
fn a_short_soak_of_both_kexts_expires_flows_and_leaks_nothing() {
    let kexts = [prx("PrxSocketFilter"), prx("PrxIPFilter")];
    let r = run("soak", &kexts, None, &["--soak", "60000", "--threads", "4"]);
    assert!(r.passed, "{}", r.render());
    let s = soak_summary(&r);
    assert!(count_before(&s, "flows") >= 60_000, "{s}"); // the packet count
    let flows: u64 = s
        .split("flows ")
        .nth(1)
        .and_then(|x| x.split(' ').next())
        .and_then(|x| x.parse().ok())
        .unwrap_or(0);
    assert!(flows >= 10_000, "{s}");
    let expired: u64 = s
        .split("expired ")
        .nth(1)
        .and_then(|x| x.split(' ').next())
        .and_then(|x| x.parse().ok())
        .unwrap_or(0);
    assert!(expired > 0, "the clock must make flows expire: {s}");
    assert!(
        s.contains("leaks-to-origin 0")
            && s.contains("mistranslated 0")
            && s.contains("missing-headers 0")
            && s.ends_with("ledger-violations 0"),
        "{s}"
    );
}

#[test]
fn a_short_soak_under_random_faults_drops_but_never_leaks() {
    let kexts = [prx("PrxSocketFilter"), prx("PrxIPFilter")];
    let r = run(
        "soak",
        &kexts,
        Some("alloc%20@1;mbuf-alloc%20@2;inject%20@3;ctl-enqueue%100@4"),
        &["--soak", "30000", "--threads", "4"],
    );
    assert!(r.passed, "{}", r.render());
    let s = soak_summary(&r);
    assert!(
        s.contains("leaks-to-origin 0") && s.ends_with("ledger-violations 0"),
        "{s}"
    );
    assert!(
        s.contains("packets dropped: inject failure"),
        "inject faults must show as drops: {s}"
    );
}
