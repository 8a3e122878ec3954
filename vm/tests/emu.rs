//! End-to-end tests of the emu backend: C test kexts (compiled by clang-19
//! -mkernel, linked by kextld) and the prx kexts (built as `cargo xtask build
//! --release` builds them) run in the emulator, each scenario in a child
//! process (`prx-emu child`). clang-19 missing makes these tests fail, not skip.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use support::{prx_bundles, rules, scratch, step};
use vm::emu::ScenarioReport;

/// Compiles `tests/fixtures/<name>.c` with clang-19 -mkernel and links it with kextld.
fn c_kext(name: &str) -> PathBuf {
    support::c_kext(name, name, &[])
}

fn run_with(
    scenario: &str,
    kexts: &[PathBuf],
    faults: Option<&str>,
    timeout: Duration,
) -> ScenarioReport {
    support::run(scenario, kexts, faults, &[], timeout)
}

fn run(scenario: &str, kexts: &[PathBuf]) -> ScenarioReport {
    run_with(scenario, kexts, None, Duration::from_secs(30))
}

#[test]
fn c_kext_loads_starts_logs_stops_and_unloads() {
    let r = run("load-unload", &[c_kext("hello")]);
    assert!(r.passed, "{}", r.render());
    assert_eq!(
        r.log,
        [
            "hello start com.example.hello id=100 mapped=1 size=12288 pid 4242",
            "hello via IOLog 42",
            "hello stop",
        ],
        "printf/IOLog captured, kmod_info filled in (id, address, size) before start"
    );
    let steps: Vec<&str> = r.steps.iter().map(|s| s.what.as_str()).collect();
    assert_eq!(
        steps,
        [
            "load com.example.hello",
            "start com.example.hello",
            "stop com.example.hello",
            "unload com.example.hello",
            "ledgers"
        ]
    );
}

#[test]
fn prx_kexts_load_start_stop_and_unload() {
    let bundles = prx_bundles();
    assert_eq!(bundles.len(), 2, "{bundles:?}");
    let r = run("load-unload", bundles);
    assert!(r.passed, "{}", r.render());
    for name in ["PrxSocketFilter", "PrxIPFilter"] {
        assert!(
            r.log
                .iter()
                .any(|l| l.starts_with(&format!("prx: {name} started"))),
            "{:?}",
            r.log
        );
        assert!(
            r.log.iter().any(|l| l == &format!("prx: {name} stopped")),
            "{:?}",
            r.log
        );
    }
    assert!(
        r.steps
            .iter()
            .any(|s| s.what == "unload net.prx.kext.SocketFilter" && s.ok)
    );
    assert!(
        r.steps
            .iter()
            .any(|s| s.what == "unload net.prx.kext.IPFilter" && s.ok)
    );
}

#[test]
fn a_jump_to_a_bad_address_ends_the_scenario_with_a_report() {
    let r = run("load-unload", &[c_kext("badjump")]);
    assert!(!r.passed);
    let fault = r.fault.as_deref().expect("fault reported");
    assert!(fault.starts_with("SIGSEGV at address 0xdead00"), "{fault}");
    assert!(
        fault.contains("instruction pointer 0xdead00 (outside every kext image and its stubs)"),
        "{fault}"
    );
    assert!(fault.contains("return address on the stack"), "{fault}");
    assert!(
        fault.contains("_badjump_start+") && fault.contains("in com.example.badjump"),
        "{fault}"
    );
    assert_eq!(r.log, ["about to jump"], "the log up to the crash is kept");
}

#[test]
fn a_kext_that_never_returns_is_killed_at_the_time_limit() {
    let r = run_with(
        "load-unload",
        &[c_kext("hang")],
        None,
        Duration::from_secs(2),
    );
    assert!(!r.passed);
    assert!(
        r.failures
            .iter()
            .any(|f| f.starts_with("timed out after 2.0s")),
        "{:?}",
        r.failures
    );
    assert_eq!(r.log, ["spinning"]);
}

#[test]
fn unknown_kpis_are_listed_and_nothing_runs() {
    let r = run("load-unload", &[c_kext("unknown_kpi")]);
    assert!(!r.passed);
    let f = r.failures.join("\n");
    assert!(
        f.contains(
            "does not provide 2 symbol(s) the kext needs: _not_a_kpi_alpha, _not_a_kpi_beta"
        ),
        "{f}"
    );
    assert!(r.log.is_empty());
}

#[test]
fn held_lock_and_leaked_allocation_are_reported() {
    let r = run("load-unload", &[c_kext("leak_lock")]);
    assert!(!r.passed);
    assert_eq!(
        rules(&r),
        ["lock-held-on-return", "memory-leak"],
        "{}",
        r.render()
    );
    assert!(r.violations[0].during == "start com.example.leaklock");
    assert!(
        r.violations[0].detail.contains("Mutex"),
        "{:?}",
        r.violations[0]
    );
    assert!(
        r.violations[1].detail.contains("100 bytes")
            && r.violations[1]
                .detail
                .contains("OSMalloc in start com.example.leaklock")
    );
}

#[test]
fn a_kext_bundle_directory_is_accepted() {
    let bin = c_kext("hello");
    let bundle = scratch().join("Hello.kext");
    std::fs::create_dir_all(bundle.join("Contents/MacOS")).unwrap();
    std::fs::copy(&bin, bundle.join("Contents/MacOS/Hello")).unwrap();
    std::fs::write(
        bundle.join("Contents/Info.plist"),
        r#"<?xml version="1.0" encoding="UTF-8"?>
<plist version="1.0"><dict><key>CFBundleExecutable</key><string>Hello</string></dict></plist>"#,
    )
    .unwrap();
    let r = run("load-unload", &[bundle]);
    assert!(r.passed, "{}", r.render());
}

#[test]
fn ip_filter_redirects_by_reinjection_and_rewrites_replies() {
    let r = run("ip-tcp", &[c_kext("ipf_redirect")]);
    assert!(r.passed, "{}", r.render());
    let out: Vec<&str> = r
        .steps
        .iter()
        .filter(|s| s.what == "wire: outbound")
        .map(|s| s.detail.as_str())
        .collect();
    assert_eq!(
        out,
        [
            "10.0.0.1:40000 > 10.0.0.99:80 flags 0x02 len 0",
            "10.0.0.1:40000 > 10.0.0.99:80 flags 0x18 len 18"
        ],
        "both outbound segments re-injected towards the proxy, with valid checksums"
    );
    let inb: Vec<&str> = r
        .steps
        .iter()
        .filter(|s| s.what == "socket layer: inbound")
        .map(|s| s.detail.as_str())
        .collect();
    assert_eq!(
        inb,
        [
            "93.184.216.34:80 > 10.0.0.1:40000 flags 0x12 len 0",
            "93.184.216.34:80 > 10.0.0.1:40000 flags 0x18 len 19"
        ],
        "replies from the proxy rewritten back to the original server"
    );
    assert!(
        r.log
            .iter()
            .filter(|l| l.starts_with("redirect out"))
            .count()
            == 2,
        "{:?}",
        r.log
    );
    assert!(r.log.contains(&"ipf_detach".to_string()));
    let stops: Vec<&str> = r
        .steps
        .iter()
        .filter(|s| s.what == "stop com.example.ipfredirect")
        .map(|s| s.detail.as_str())
        .collect();
    // ipf_remove ran ipf_detach at once (no packet in the filter), as xnu does.
    assert!(
        stops[0].contains("returned KERN_SUCCESS (attempt 1)"),
        "{stops:?}"
    );
}

#[test]
fn broken_ip_filters_are_each_caught_precisely() {
    let cases: [(&str, &str, &str); 9] = [
        (
            "1",
            "mbuf-leak",
            "never freed; the kext owns it since EJUSTRETURN from ipf_output of 'com.example.ipfbroken'",
        ),
        ("2", "mbuf-double-free", "mbuf_freem: mbuf #"),
        ("3", "mbuf-use-after-handoff", "mbuf_data: mbuf #"),
        (
            "4",
            "stop-while-registered",
            "IP filter 'com.example.ipfbroken' is still attached (ipf_remove never called)",
        ),
        (
            "5",
            "stop-while-registered",
            "IP filter 'com.example.ipfbroken' is being removed: ipf_detach has not run yet",
        ),
        // After ipf_inject_* consumed the mbuf, whatever frees it again is caught.
        ("6", "mbuf-freed-after-inject", "mbuf_freem: mbuf #"),
        (
            "7",
            "mbuf-use-after-handoff",
            "the stack, after ipf_output of 'com.example.ipfbroken' returned 0",
        ),
        (
            "8",
            "mbuf-freed-after-inject",
            "ipf_output of 'com.example.ipfbroken' returned an error, so the stack frees mbuf #",
        ),
        ("9", "mbuf-freed-after-inject", "mbuf_free: mbuf #"),
    ];
    for (n, rule, detail) in cases {
        let define = format!("-DBROKEN={n}");
        // 5 (stop returns before ipf_detach) shows only when the detach comes
        // late, as xnu's does while a packet is in the filter on another CPU.
        let r = run_with(
            "ip-tcp",
            &[support::c_kext(
                "ipf_broken",
                &format!("ipf_broken{n}"),
                &[&define],
            )],
            (n == "5").then_some("ipf-detach-late#1"),
            Duration::from_secs(30),
        );
        assert!(!r.passed, "BROKEN={n} passed:\n{}", r.render());
        let v = r
            .violations
            .iter()
            .find(|v| v.rule == rule)
            .unwrap_or_else(|| panic!("BROKEN={n}: no {rule}:\n{}", r.render()));
        assert!(v.detail.contains(detail), "BROKEN={n}: {v:?}");
        if n == "2" {
            assert!(
                v.detail.contains(
                    "was already freed by mbuf_freem during ipf_output of 'com.example.ipfbroken'"
                ),
                "{v:?}"
            );
        }
        if matches!(n, "3" | "6" | "7" | "8" | "9") {
            assert!(
                v.detail
                    .contains("handed to the stack by ipf_inject_output"),
                "{v:?}"
            );
        }
    }
}

#[test]
fn a_null_required_socket_filter_callback_is_reported() {
    let r = run("load-unload", &[c_kext("sflt_null")]);
    assert!(!r.passed);
    assert_eq!(rules(&r), ["sflt-required-field"], "{}", r.render());
    assert!(
        r.violations[0].detail.contains("sf_detach is NULL"),
        "{:?}",
        r.violations[0]
    );
    assert_eq!(
        r.log,
        ["sflt_register -> 22"],
        "the kernel's EINVAL is returned to the kext"
    );
}

#[test]
fn socket_filter_rewrite_is_used_for_the_real_connection() {
    let r = run("socket-connect", &[c_kext("sflt_redirect")]);
    assert!(r.passed, "{}", r.render());
    let connect = r
        .steps
        .iter()
        .find(|s| s.what == "connect")
        .expect("connect step");
    assert!(
        connect.detail.starts_with("connected to 127.0.0.2:")
            && connect.detail.contains("the filter rewrote 127.0.0.1:"),
        "{connect:?}"
    );
    let out = r
        .steps
        .iter()
        .find(|s| s.what == "data out")
        .expect("data out");
    assert!(
        out.ok
            && out
                .detail
                .contains("\"hello through the socket filter\\n\""),
        "{out:?}"
    );
    let inn = r
        .steps
        .iter()
        .find(|s| s.what == "data in")
        .expect("data in");
    assert!(inn.detail.contains("\"pong\\n\""), "{inn:?}");
    assert_eq!(
        r.log,
        [
            "attach domain=2 type=1 protocol=6",
            "connect_out to 127.0.0.1",
            "data_out 32 bytes",
            "data_in 5 bytes",
            "detach cookie=0x1234",
            "unregistered 50525831",
        ]
    );
}

#[test]
fn fault_plan_fails_the_chosen_pullup_and_the_kext_survives_it() {
    let r = run_with(
        "ip-tcp",
        &[c_kext("ipf_redirect")],
        Some("pullup#1"),
        Duration::from_secs(30),
    );
    assert!(r.passed, "{}", r.render());
    assert_eq!(
        r.log.iter().filter(|l| *l == "pullup failed").count(),
        1,
        "{:?}",
        r.log
    );
    let out: Vec<&str> = r
        .steps
        .iter()
        .filter(|s| s.what == "wire: outbound")
        .map(|s| s.detail.as_str())
        .collect();
    assert_eq!(
        out,
        ["10.0.0.1:40000 > 10.0.0.99:80 flags 0x18 len 18"],
        "the SYN died with its failed pullup"
    );
}

/// The PrxIPFilter bundle built by `cargo xtask build --release`'s code.
fn prx_ip_filter() -> Vec<PathBuf> {
    let v: Vec<PathBuf> = prx_bundles()
        .iter()
        .filter(|p| p.ends_with("PrxIPFilter.kext"))
        .cloned()
        .collect();
    assert_eq!(v.len(), 1, "{:?}", prx_bundles());
    v
}

/// A counter of the IP filter's statistics as the scenario read them back
/// through its kern_control (step `ip control: statistics`: `name value`
/// items, named by `vm::emu::scenarios::stat_names`).
fn ip_stat(r: &ScenarioReport, id: u32) -> Option<u64> {
    let d = step(r, "ip control: statistics");
    let name = vm::emu::scenarios::stat_names::name(id);
    d.split("; ").find_map(|kv| {
        let v = kv.strip_prefix(name.as_str())?.strip_prefix(' ')?;
        v.parse().ok()
    })
}

/// The scenario configured the kext through its control (proxies and rules).
fn assert_configured(r: &ScenarioReport) {
    let c = step(r, "ip control: configure");
    assert!(
        r.steps
            .iter()
            .any(|s| s.what == "ip control: configure" && s.ok),
        "{c}"
    );
}

#[test]
fn prx_ip_filter_nat_tcp_with_smoltcp_stacks_v4_v6_and_split_chains() {
    let kext = prx_ip_filter();
    for (scenario, name, origin) in [
        ("nat-tcp4", "nat-tcp4", "Ipv4(203.0.113.10), port: 80"),
        ("nat-tcp6", "nat-tcp6", "Ipv6(2001:db8:203::10), port: 80"),
        ("nat-tcp4-split", "nat-tcp4", "Ipv4(203.0.113.10), port: 80"),
    ] {
        let r = run(scenario, &kext);
        assert!(r.passed, "{}", r.render());
        let hs = step(&r, &format!("{name} handshake"));
        assert!(
            hs.contains(&format!(
                "client's remote endpoint Some(Endpoint {{ addr: {origin} }})"
            )),
            "{hs}"
        );
        let t = step(&r, &format!("{name} transfer"));
        assert!(
            t.contains("client→proxy 1048576 of 1048576")
                && t.contains("proxy→client 1048576 of 1048576")
                && t.contains("data intact: true"),
            "{t}"
        );
        assert!(step(&r, &format!("{name} close")).starts_with("client TIME-WAIT, proxy CLOSED"));
        let p = step(&r, &format!("{name} packets"));
        assert!(p.contains(", 0 rejected; 0 dropped"), "{p}");
        assert!(
            r.log.iter().any(|l| l == "prx: PrxIPFilter drop_inject=0"),
            "{:?}",
            r.log
        );
        // Configured through the control; its statistics agree with the wire.
        assert_configured(&r);
        let (v4, v6) = if name == "nat-tcp6" { (0, 1) } else { (1, 0) };
        assert_eq!(ip_stat(&r, 0x100), Some(1), "one flow in the tables");
        assert_eq!(ip_stat(&r, 0x104), Some(2), "both filters attached");
        assert_eq!(ip_stat(&r, 0x9), Some(1), "one rule set installed");
        let redirected = ip_stat(&r, 0x101).unwrap_or(0);
        let replies = ip_stat(&r, 0x102).unwrap_or(0);
        assert!(redirected > 700 && replies > 700, "{redirected} {replies}");
        assert!(
            r.log
                .iter()
                .any(|l| *l == format!("prx: PrxIPFilter flows_v4={v4}"))
                && r.log
                    .iter()
                    .any(|l| *l == format!("prx: PrxIPFilter flows_v6={v6}")),
            "{:?}",
            r.log
        );
        for reason in 0x200..0x208 {
            assert_eq!(ip_stat(&r, reason), Some(0), "drops {reason:#x}");
        }
    }
}

/// A C test kext (not prx's) under the smoltcp scenario: its redirect is what
/// the far smoltcp stack (the proxy at 192.0.2.1:3128) sees, and its reverse
/// translation is what keeps the client's TCP connection alive.
#[test]
fn c_ip_filter_kext_carries_smoltcp_tcp_to_the_far_stack() {
    let kext = support::c_kext(
        "ipf_redirect",
        "ipf_redirect_nat",
        &[
            "-DORIGIN=203,0,113,10",
            "-DPROXY=192,0,2,1",
            "-DPROXY_PORT=3128",
        ],
    );
    let r = run("nat-tcp4", &[kext]);
    assert!(r.passed, "{}", r.render());
    let hs = step(&r, "nat-tcp4 handshake");
    assert!(
        hs.contains(
            "client's remote endpoint Some(Endpoint { addr: Ipv4(203.0.113.10), port: 80 })"
        ),
        "{hs}"
    );
    let t = step(&r, "nat-tcp4 transfer");
    assert!(
        t.contains("client→proxy 1048576 of 1048576")
            && t.contains("proxy→client 1048576 of 1048576")
            && t.contains("data intact: true"),
        "{t}"
    );
    assert!(
        r.log.iter().any(|l| l.starts_with("redirect out")),
        "{:?}",
        r.log
    );
    assert!(
        r.log.iter().any(|l| l.starts_with("rewrite in")),
        "{:?}",
        r.log
    );
}

#[test]
fn prx_ip_filter_nat_udp_v4_v6() {
    let kext = prx_ip_filter();
    for (scenario, origin) in [
        ("nat-udp4", "Ipv4(203.0.113.10), port: 80"),
        ("nat-udp6", "Ipv6(2001:db8:203::10), port: 80"),
    ] {
        let r = run(scenario, &kext);
        assert!(r.passed, "{}", r.render());
        let e = step(&r, &format!("{scenario} exchange"));
        assert!(
            e.contains("the client got Some(\"answer to prx udp query\")") && e.contains(origin),
            "{e}"
        );
        assert_configured(&r);
        assert_eq!(ip_stat(&r, 0x101), Some(1), "one request redirected");
        assert_eq!(ip_stat(&r, 0x102), Some(1), "one reply rewritten");
    }
}

#[test]
fn without_a_redirecting_filter_the_nat_scenario_fails() {
    // Negative control: the scenario detects packets that were not redirected.
    let r = run("nat-tcp4", &[c_kext("hello")]);
    assert!(!r.passed);
    assert!(
        r.steps.iter().any(|s| s.what == "wire: escaped" && !s.ok),
        "{}",
        r.render()
    );
}

/// Rules carry a protocol, and the kext honours it: with the same
/// destinations selected for UDP only, the TCP connection is not redirected.
#[test]
fn prx_ip_filter_rules_select_the_protocol() {
    let r = run("nat-tcp4-udp-rules", &prx_ip_filter());
    assert!(!r.passed);
    assert_configured(&r);
    assert!(
        step(&r, "ip control: configure").contains("(Udp)"),
        "{}",
        r.render()
    );
    assert!(
        r.steps.iter().any(|s| s.what == "wire: escaped" && !s.ok),
        "{}",
        r.render()
    );
    assert_eq!(ip_stat(&r, 0x101), Some(0), "nothing redirected");
    assert_eq!(ip_stat(&r, 0x100), Some(0), "no flow");
    assert!(r.violations.is_empty(), "{:?}", r.violations);
    // The configuration the positive scenarios use names their protocol.
    let r = run("nat-tcp4", &prx_ip_filter());
    assert!(
        r.passed && step(&r, "ip control: configure").contains("(Tcp)"),
        "{}",
        r.render()
    );
}

#[test]
fn prx_ip_filter_hostile_packets_pass_drop_or_redirect_per_policy() {
    let r = run("nat-hostile", &prx_ip_filter());
    assert!(r.passed, "{}", r.render());
    assert_eq!(r.steps.iter().filter(|s| s.what == "hostile").count(), 26);
    assert!(
        r.log
            .iter()
            .any(|l| l == "prx: PrxIPFilter drop_unparseable=4"),
        "{:?}",
        r.log
    );
    assert!(
        r.log
            .iter()
            .any(|l| l == "prx: PrxIPFilter drop_udp6_zero_csum=2"),
        "{:?}",
        r.log
    );
    // The same drops, by reason, through the control protocol's statistics.
    assert_eq!(ip_stat(&r, 0x200), Some(4), "unparseable");
    assert_eq!(ip_stat(&r, 0x203), Some(2), "IPv6 UDP checksum 0");
    assert_eq!(ip_stat(&r, 0x208), Some(2), "untracked mid-flow TCP");
}

#[test]
fn prx_ip_filter_survives_inject_failures() {
    for (plan, failed) in [("inject#1", "1"), ("inject%100@3", "98")] {
        let r = run_with(
            "nat-tcp4",
            &prx_ip_filter(),
            Some(plan),
            Duration::from_secs(60),
        );
        assert!(r.passed, "{plan}: {}", r.render());
        assert!(
            r.log
                .iter()
                .any(|l| *l == format!("prx: PrxIPFilter drop_inject={failed}")),
            "{plan}: {:?}",
            r.log
        );
    }
}

/// Every kernel allocation of the IP filter fails in turn (start's rule set
/// and state, the control's new rule set), then seeded mixes with inject
/// failures: no violation, no fault, clean ledgers; each run either passes,
/// or start fails cleanly, or the control client or the rule set is refused
/// with ENOMEM and the traffic is not attempted.
#[test]
fn prx_ip_filter_allocation_failures_leave_clean_ledgers() {
    let mut plans: Vec<String> = (1..=6).map(|n| format!("alloc#{n}")).collect();
    plans.extend((1..=3).map(|s| format!("alloc%300@{s};inject%200@{s}")));
    for p in &plans {
        let r = run_with(
            "nat-udp4",
            &prx_ip_filter(),
            Some(p),
            Duration::from_secs(60),
        );
        assert!(r.violations.is_empty(), "{p}: {:?}", r.violations);
        assert!(r.fault.is_none(), "{p}: {:?}", r.fault);
        let clean_start_failure = r
            .steps
            .iter()
            .any(|s| s.what.starts_with("start ") && !s.ok)
            && r.log.iter().any(|l| l.contains("start failed"));
        let refused = r.steps.iter().any(|s| {
            (s.what == "ip control: configure" || s.what == "ip control: connect")
                && !s.ok
                && s.detail.contains("errno 12")
        });
        assert!(
            r.passed || clean_start_failure || refused,
            "{p}: {}",
            r.render()
        );
    }
    // The first allocation is start's: the kext does not start and leaves nothing behind.
    let r = run_with(
        "nat-udp4",
        &prx_ip_filter(),
        Some("alloc#1"),
        Duration::from_secs(60),
    );
    assert!(
        !r.passed && r.log.iter().any(|l| l.contains("start failed")),
        "{}",
        r.render()
    );
}

/// ICMP errors produced by real stacks about a NATed UDP flow reach each side
/// translated (checked by etherparse inside the scenario: outer, ICMP, quoted
/// IPv4 header and quoted UDP checksums, addresses and ports).
#[test]
fn prx_ip_filter_translates_icmp_errors_both_ways_v4_v6() {
    for name in ["nat-icmp4", "nat-icmp6"] {
        let r = run(name, &prx_ip_filter());
        assert!(r.passed, "{}", r.render());
        assert_configured(&r);
        for what in ["flow", "inbound error", "outbound error"] {
            assert!(
                r.steps
                    .iter()
                    .any(|s| s.what == format!("{name} {what}") && s.ok),
                "{what}: {}",
                r.render()
            );
        }
        // request + late datagram's error + "again" out; answer + error + late in.
        assert_eq!(ip_stat(&r, 0x101), Some(3), "{}", r.render());
        assert_eq!(ip_stat(&r, 0x102), Some(3), "{}", r.render());
    }
}

/// Negative control: a NAT that rewrites only TCP/UDP (the C test kext) lets
/// the proxy host's error reach the client untranslated, and the scenario says so.
#[test]
fn without_icmp_translation_the_icmp_scenario_fails() {
    let kext = support::c_kext(
        "ipf_redirect",
        "ipf_redirect_nat_udp",
        &[
            "-DORIGIN=203,0,113,10",
            "-DPROXY=192,0,2,1",
            "-DPROXY_PORT=3128",
            "-DPROTO=17",
        ],
    );
    let r = run("nat-icmp4", &[kext]);
    assert!(!r.passed);
    // The flow itself works through it; only the errors are wrong.
    assert!(
        r.steps.iter().any(|s| s.what == "nat-icmp4 flow" && s.ok),
        "{}",
        r.render()
    );
    assert!(
        r.steps
            .iter()
            .any(|s| s.what == "nat-icmp4 inbound error" && !s.ok),
        "{}",
        r.render()
    );
}

/// Fault injection on `mbuf_pullup`: PrxIPFilter copies headers out
/// (`mbuf_copydata`) instead of pulling them up, so a pullup plan is never
/// reached — the report counts the calls — and the hostile and split-chain
/// scenarios behave exactly as without it; with inject failures mixed in, the
/// TCP transfer still completes (retransmissions) with clean ledgers.
#[test]
fn prx_ip_filter_under_pullup_and_inject_fault_plans() {
    for scenario in ["nat-hostile", "nat-tcp4-split"] {
        let r = run_with(
            scenario,
            &prx_ip_filter(),
            Some("pullup#1,2,3"),
            Duration::from_secs(60),
        );
        assert!(r.passed, "{scenario}: {}", r.render());
        assert_eq!(
            step(&r, "fault plan"),
            "pullup reached 0 times",
            "{scenario}"
        );
    }
    let r = run_with(
        "nat-tcp4-split",
        &prx_ip_filter(),
        Some("pullup%500@1;inject%50@2"),
        Duration::from_secs(60),
    );
    assert!(r.passed, "{}", r.render());
    assert!(r.violations.is_empty());
    let d = step(&r, "fault plan");
    assert!(
        d.starts_with("pullup reached 0 times, inject reached "),
        "{d}"
    );
    let dropped = ip_stat(&r, 0x206).unwrap_or(0);
    assert!(
        dropped > 0,
        "some injections failed and were counted: {}",
        r.render()
    );
}

/// `block` rules at the IP layer: the client's SYNs (first and retransmitted)
/// are dropped and counted; nothing reaches the wire. Without a blocking
/// filter the same scenario fails (the SYNs escape).
#[test]
fn prx_ip_filter_block_rules_drop_new_flows() {
    for name in ["nat-block-tcp4", "nat-block-tcp6"] {
        let r = run(name, &prx_ip_filter());
        assert!(r.passed, "{}", r.render());
        assert!(
            step(&r, "ip control: configure").contains("→ Block"),
            "{}",
            r.render()
        );
        let d = step(&r, &format!("{name} blocked"));
        let sent: u64 = d
            .strip_prefix("client sent ")
            .and_then(|s| s.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!(sent >= 2, "{d}");
        assert_eq!(
            ip_stat(&r, 0x207),
            Some(sent),
            "every SYN counted as blocked: {d}"
        );
        assert_eq!(ip_stat(&r, 0x100), Some(0), "blocked flows are not tracked");
    }
    let r = run("nat-block-tcp4", &[c_kext("hello")]);
    assert!(!r.passed);
    assert!(
        r.steps
            .iter()
            .any(|s| s.what == "nat-block-tcp4 blocked" && !s.ok),
        "{}",
        r.render()
    );
}

fn prx_bundle(name: &str) -> Vec<PathBuf> {
    prx_bundles()
        .iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|f| f.to_string_lossy().starts_with(name))
        })
        .cloned()
        .collect()
}

/// Issue 16, defect 6: xnu never calls a refused stop again, so a stop that
/// removes the control or a filter and then returns busy leaves the kext
/// loaded and inert. With late unregistration (another CPU or the socket
/// cleanup thread finishing after the remove call returns), each kext's stop
/// must wait for it and succeed, or refuse with everything still in place.
#[test]
fn a_stop_waits_for_late_unregistration_or_leaves_the_kext_working() {
    for (kext, plan) in [
        ("PrxIPFilter", "ipf-detach-late#1"),
        ("PrxIPFilter", "ipf-detach-late#2"),
        ("PrxSocketFilter", "sflt-unregister-late#1"),
        ("PrxSocketFilter", "sflt-unregister-late#2"),
        // A control that cannot be deregistered (a client connecting meanwhile).
        ("PrxIPFilter", "ctl-deregister#1"),
        ("PrxSocketFilter", "ctl-deregister#1"),
    ] {
        let r = run_with(
            "load-unload",
            &prx_bundle(kext),
            Some(plan),
            Duration::from_secs(60),
        );
        assert!(r.passed, "{kext} {plan}: {}", r.render());
        assert!(r.violations.is_empty(), "{kext} {plan}: {:?}", rules(&r));
    }
}

/// Issue 16, defect 5 (and the other registration faults): a start that fails
/// after registering something undoes all of it before returning (waiting for
/// a late `sf_unregistered`), so the kernel can unload the code at once.
#[test]
fn a_failed_start_leaves_nothing_registered() {
    for (kext, plan) in [
        ("PrxSocketFilter", "sflt-register#2;sflt-unregister-late#1"),
        ("PrxSocketFilter", "sflt-register#2"),
        ("PrxSocketFilter", "sflt-register#1"),
        ("PrxSocketFilter", "ctl-register#1"),
        ("PrxIPFilter", "ctl-register#1"),
        ("PrxIPFilter", "ipf-add#1,2"),
    ] {
        let r = run_with(
            "load-unload",
            &prx_bundle(kext),
            Some(plan),
            Duration::from_secs(60),
        );
        assert!(r.violations.is_empty(), "{kext} {plan}: {}", r.render());
        let start = r
            .steps
            .iter()
            .find(|s| s.what.starts_with("start "))
            .unwrap_or_else(|| panic!("{kext} {plan}: no start step: {}", r.render()));
        assert!(!start.ok, "{kext} {plan}: start must fail: {}", r.render());
    }
    // One IP filter family failing is not fatal: the other works (documented).
    let r = run_with(
        "load-unload",
        &prx_bundle("PrxIPFilter"),
        Some("ipf-add#2"),
        Duration::from_secs(60),
    );
    assert!(r.passed, "{}", r.render());
    assert!(r.log.iter().any(|l| l.contains("IPv4 only")), "{:?}", r.log);
}

/// Issue 16, defects 1-2 at the kext level: the scenario advances the
/// emulated clock so the NAT's timeouts fire in the real PrxIPFilter binary;
/// nothing of an expired flow reaches the origin.
#[test]
fn prx_ip_filter_nat_timeouts_fire_and_expired_flows_never_leak() {
    let r = run("nat-expiry", &prx_ip_filter());
    assert!(r.passed, "{}", r.render());
    assert_eq!(r.steps.iter().filter(|s| s.what == "expiry").count(), 9);
    assert_eq!(ip_stat(&r, 0x208), Some(2), "untracked mid-flow TCP drops");
    assert!(
        ip_stat(&r, 0x108).is_some_and(|n| n >= 2),
        "expired flows counted"
    );
}
