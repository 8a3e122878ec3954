//! Scenarios, run inside the child process: load the kexts, drive them, stop and
//! unload them as the kernel would, and check the ledgers.

use std::path::{Path, PathBuf};

use super::abi;
use super::events::{self, Event};
use super::fault::FaultPlan;
use super::image;
use super::kernel;
use super::loader::{self, LoadedKext};
use super::traffic;

/// The scenarios the emu backend knows, with a one-line description.
pub const SCENARIOS: &[(&str, &str)] = &[
    (
        "load-unload",
        "load every kext, run its start routine, then stop (retrying while busy) and unload it; check the ledgers",
    ),
    (
        "socket-connect",
        "load-unload, plus: a TCP connection on loopback through the registered socket filters (connect_out may rewrite the destination; the real connect goes where the filter says), data both ways",
    ),
    (
        "sockfilter",
        "load-unload, plus PrxSocketFilter's acceptance: redirects to a proxy on real IPv4/IPv6 loopback sockets with PROXY v2, original-destination lookup and rule changes through the emulated kern_control, direct connections for non-matching/excluded/proxy processes",
    ),
    (
        "ctl-bridge",
        "load-unload, plus: serve the kern_controls on the Unix socket given by --ctl-bridge (prxctl --emu) until a client sends `quit`; see emu::ctl_bridge",
    ),
    (
        "ip-tcp",
        "load-unload, plus: a scripted IPv4 TCP exchange (hand-built SYN, SYN-ACK, request, response) through the registered IP filters (ipf_output, ipf_input)",
    ),
    (
        "nat-tcp4",
        "load-unload, plus: a smoltcp client opens TCP to 203.0.113.10:80 through the IP filters; a smoltcp proxy at 192.0.2.1:3128 accepts; handshake, 1 MiB each way, clean close; every packet leaving the filters checked by etherparse",
    ),
    (
        "nat-tcp6",
        "nat-tcp4 over IPv6: [2001:db8:203::10]:80 redirected to [2001:db8:2::1]:3128",
    ),
    (
        "nat-tcp4-split",
        "nat-tcp4 with every packet handed to the filters as a two-mbuf chain split inside the IP header (headers straddle mbufs)",
    ),
    (
        "nat-tcp4-udp-rules",
        "nat-tcp4 with the IP filter's rules selecting UDP only: the TCP connection must not be redirected (it escapes, and the scenario fails: a negative control of rule protocols)",
    ),
    (
        "nat-udp4",
        "load-unload, plus: a smoltcp UDP request to 203.0.113.10:80, answered by the smoltcp proxy at 192.0.2.1:3128 as from the origin",
    ),
    ("nat-udp6", "nat-udp4 over IPv6"),
    (
        "nat-block-tcp4",
        "load-unload, plus: the IP filter's rules block 203.0.113.0/24 for TCP; a smoltcp client's connection attempts to 203.0.113.10:80 must not leave the host (its SYNs are dropped: none reaches the wire, redirected or not)",
    ),
    (
        "nat-block-tcp6",
        "nat-block-tcp4 over IPv6 (2001:db8:203::/48)",
    ),
    (
        "nat-icmp4",
        "load-unload, plus: ICMP errors about a NATed UDP flow from smoltcp stacks (port unreachable from the proxy host to the client, and from the client to the origin) must arrive translated: as about the client's flow to the origin, and as about the proxy's own datagram; checked by etherparse",
    ),
    (
        "nat-icmp6",
        "nat-icmp4 over IPv6 (ICMPv6, pseudo-header checksum)",
    ),
    (
        "nat-expiry",
        "load-unload, plus: the scenario advances the emulated clock so the NAT's timeouts fire: a TCP flow idle 2 h is still translated, one idle 2 h 5 min is expired and its next packet dropped (never sent to the origin), an unanswered SYN expires after 4 min, an idle UDP flow reopens to the proxy",
    ),
    (
        "mt-nat",
        "load-unload, plus: 4 threads (--threads) push TCP and UDP flows through ipf_output/ipf_input at once, preempted inside the kext's lock operations: every packet redirected or translated back, none dropped or leaked, locks seen contended",
    ),
    (
        "mt-sockfilter",
        "load-unload, plus: for each of many sockets, sf_notify(connected) on one thread while another sends through sf_data_out (xnu drops the socket lock around both): data never before the PROXY v2 header, the header once, callbacks of one socket sharing a lock (cookie-race check)",
    ),
    (
        "soak",
        "load-unload, plus: both kexts under many flows (--soak PACKETS, --threads N), the emulated clock advanced so NAT timeouts fire, the table filling and wrapping, the run's fault plan; ends with a summary line (packets, flows, expired, drops by reason, leaks to the origin, ledger violations)",
    ),
    (
        "nat-hostile",
        "load-unload, plus: malformed and unusual packets (truncated headers, bogus IHL, lengths beyond the buffer, long IPv6 extension-header chains, fragments, IPv6 UDP checksum 0), whole and as split mbuf chains, through ipf_output/ipf_input: each passes, drops or is redirected per the documented policy",
    ),
];

/// How many times the emulator calls a stop routine that returns busy (as a user
/// running kextunload again: the kernel itself never retries), delivering
/// pending kernel work (sf_unregistered, ipf_detach) between attempts. A refused
/// stop must leave everything the kext registered in place (`stop-refused-inert`).
const STOP_ATTEMPTS: u32 = 8;

pub fn step(what: impl Into<String>, ok: bool, detail: impl Into<String>) {
    events::emit(&Event::Step {
        what: what.into(),
        ok,
        detail: detail.into(),
    });
}

/// A loaded kext in the scenario.
pub struct Kext {
    pub loaded: LoadedKext,
    pub label: String,
    pub started: bool,
}

/// Runs scenario `name` with `kexts`; returns whether every step passed (the
/// violations and steps have been emitted as events).
pub fn run(name: &str, kexts: &[PathBuf], faults: FaultPlan) -> Result<bool, String> {
    if !SCENARIOS.iter().any(|(n, _)| *n == name) {
        let names: Vec<&str> = SCENARIOS.iter().map(|(n, _)| *n).collect();
        return Err(format!(
            "unknown scenario `{name}` (known: {})",
            names.join(", ")
        ));
    }
    kernel::reset(faults);
    let mut ok = true;
    let mut soak_line = None;
    let mut ip_configured = false;
    let mut loaded = Vec::new();
    for (i, path) in kexts.iter().enumerate() {
        match load_and_start(path, 100 + i as i32) {
            Ok(Some(k)) => loaded.push(k),
            Ok(None) => ok = false,
            Err(e) => {
                step(format!("load {}", path.display()), false, e);
                ok = false;
            }
        }
    }
    let nat = name.starts_with("nat-") || name == "mt-nat" || name == "soak";
    if ok && nat {
        use super::ipctl::{RuleAction, RuleProtocol};
        // Rules select the scenario's own protocol; `nat-tcp4-udp-rules` selects
        // the other one (a negative control: nothing may be redirected).
        let protocol = if name == "nat-tcp4-udp-rules"
            || name.starts_with("nat-udp")
            || name.starts_with("nat-icmp")
        {
            RuleProtocol::Udp
        } else if name.starts_with("nat-tcp") {
            RuleProtocol::Tcp
        } else {
            RuleProtocol::Any
        };
        let action = if name.starts_with("nat-block") {
            RuleAction::Block
        } else {
            RuleAction::Proxy
        };
        let c = super::ipctl::configure(protocol, action);
        ip_configured = c == Some(true);
        ok &= c != Some(false);
    }
    if ok {
        ok &= match name {
            "socket-connect" => traffic::socket_connect(),
            "ip-tcp" => traffic::ip_tcp(),
            "nat-tcp4" => super::stacks::nat_tcp(false, None),
            "nat-tcp6" => super::stacks::nat_tcp(true, None),
            "nat-tcp4-split" => super::stacks::nat_tcp(false, Some(14)),
            "nat-tcp4-udp-rules" => super::stacks::nat_tcp(false, None),
            "nat-udp4" => super::stacks::nat_udp(false),
            "nat-udp6" => super::stacks::nat_udp(true),
            "nat-hostile" => super::stacks::nat_hostile(),
            "nat-expiry" => super::stacks::nat_expiry(),
            "nat-block-tcp4" => super::stacks::nat_blocked(false),
            "nat-block-tcp6" => super::stacks::nat_blocked(true),
            "nat-icmp4" => super::nat_icmp::nat_icmp(false),
            "nat-icmp6" => super::nat_icmp::nat_icmp(true),
            "sockfilter" => super::sockets::sockfilter(&mut loaded),
            "mt-nat" | "mt-sockfilter" | "soak" => {
                let args = super::soak::args();
                super::mt::enable(0x5052_5816);
                let r = match name {
                    "mt-nat" => super::soak::mt_nat(args.threads, ip_configured),
                    "mt-sockfilter" => super::soak::mt_sockfilter(args.threads),
                    _ => {
                        let (good, line) = super::soak::soak(args);
                        soak_line = Some(line);
                        good
                    }
                };
                super::mt::disable();
                r
            }
            "ctl-bridge" => super::ctl_bridge::ctl_bridge(),
            _ => true,
        };
    }
    if nat {
        let _ = super::ipctl::stats();
    }
    for k in loaded.iter_mut().rev() {
        ok &= stop_and_unload(k);
    }
    // How often each point of the fault plan was reached (a plan whose points
    // the kext never reaches tests nothing: the report says so).
    let reached = kernel::with(|k| {
        let counts = k.faults.counts();
        k.faults
            .rules
            .keys()
            .map(|p| {
                format!(
                    "{} reached {} times",
                    p.name(),
                    counts.get(p).copied().unwrap_or(0)
                )
            })
            .collect::<Vec<_>>()
    });
    if !reached.is_empty() {
        step("fault plan", true, reached.join(", "));
    }
    ok &= check_ledgers();
    let clean = kernel::with(|k| k.violations.is_empty());
    if let Some(line) = soak_line {
        let n = kernel::with(|k| k.violations.len());
        step(
            "soak: summary",
            ok && clean,
            super::soak::summary_line(&line, n),
        );
    }
    Ok(ok && clean)
}

fn load_and_start(path: &Path, tag: i32) -> Result<Option<Kext>, String> {
    let img = image::read(path).map_err(|e| e.to_string())?;
    let kext = loader::load(img, &abi::lookup, tag).map_err(|e| e.to_string())?;
    let label = if kext.name.is_empty() {
        path.display().to_string()
    } else {
        kext.name.clone()
    };
    events::emit(&Event::Loaded {
        kext: label.clone(),
        path: path.display().to_string(),
        base: kext.base,
        size: kext.size,
        stubs: kext.stubs,
        stubs_len: kext.stubs_len,
        stub_symbols: kext.stub_symbols.clone(),
        cputype: Some(kext.image.cputype),
    });
    kernel::with(|k| {
        for (s, e) in kext.code_ranges() {
            k.code.push((s, e, label.clone()));
        }
    });
    step(
        format!("load {label}"),
        true,
        format!(
            "version {}, {} bytes at {:#x}, {} KPI symbols bound {}",
            kext.version,
            kext.size,
            kext.base,
            kext.stub_symbols.len(),
            kext.binding_kind()
        ),
    );
    for init in kext.initialisers("__mod_init_func") {
        abi::invoke(init, &format!("static initialiser of {label}"), || {
            kext.call_void(init)
        });
    }
    if kext.start == 0 {
        step(format!("start {label}"), true, "no start routine");
        return Ok(Some(Kext {
            loaded: kext,
            label,
            started: true,
        }));
    }
    let r = abi::invoke(kext.start, &format!("start {label}"), || {
        kext.call_entry(kext.start)
    });
    match r {
        Some(0) => {
            step(format!("start {label}"), true, "returned KERN_SUCCESS");
            Ok(Some(Kext {
                loaded: kext,
                label,
                started: true,
            }))
        }
        Some(r) => {
            step(
                format!("start {label}"),
                false,
                format!("returned {r}; the kernel unloads the kext without calling stop"),
            );
            // The kernel unloads the kext at once: nothing may still be registered
            // (pending work is not waited for).
            check_nothing_registered(&kext, &label, "start failed");
            deliver_all();
            Ok(None)
        }
        None => Ok(None),
    }
}

/// Delivers all pending deferred kernel work; returns how many items ran.
pub fn deliver_all() -> usize {
    let mut n = 0;
    loop {
        let next = kernel::with(|k| {
            k.deferred.pop_front().or_else(|| {
                // Then late work, in time order (the clock jumps to it).
                let i = (0..k.timed.len()).min_by_key(|&i| k.timed[i].0)?;
                let (at, d) = k.timed.remove(i);
                k.clock_ns = k.clock_ns.max(at);
                Some(d)
            })
        });
        let Some(d) = next else { break };
        abi::net::deliver(d);
        n += 1;
    }
    n
}

fn stop_and_unload(k: &mut Kext) -> bool {
    let label = k.label.clone();
    if k.loaded.stop != 0 {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let before = working(&k.loaded);
            let r = abi::invoke(k.loaded.stop, &format!("stop {label}"), || {
                k.loaded.call_entry(k.loaded.stop)
            });
            if matches!(r, Some(r) if r != 0) {
                // xnu does not retry a refused stop: the kext stays loaded and
                // must keep working as before.
                let after = working(&k.loaded);
                let lost: Vec<&String> = before.difference(&after).collect();
                if !lost.is_empty() {
                    kernel::with(|kern| {
                        kern.violation(
                            "stop-refused-inert",
                            format!(
                                "stop of {label} returned busy after removing {}: the kernel does not call stop again, so the kext stays loaded without them",
                                lost.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                            ),
                        )
                    });
                }
            }
            match r {
                Some(0) => {
                    step(
                        format!("stop {label}"),
                        true,
                        format!("returned KERN_SUCCESS (attempt {attempt})"),
                    );
                    break;
                }
                Some(r) => {
                    let pending = kernel::with(|k| k.deferred.len());
                    step(
                        format!("stop {label}"),
                        true,
                        format!(
                            "attempt {attempt} returned {r} (busy): kept loaded; {pending} pending notification(s) delivered before retrying"
                        ),
                    );
                    let delivered = deliver_all();
                    if attempt >= STOP_ATTEMPTS || (delivered == 0 && attempt >= 2) {
                        step(
                            format!("stop {label}"),
                            false,
                            format!(
                                "still busy after {attempt} attempts with no kernel work pending: the kext can never be unloaded"
                            ),
                        );
                        return false;
                    }
                }
                None => return false,
            }
        }
    }
    check_nothing_registered(&k.loaded, &label, "stop returned KERN_SUCCESS");
    for term in k.loaded.initialisers("__mod_term_func") {
        abi::invoke(term, &format!("static terminator of {label}"), || {
            k.loaded.call_void(term)
        });
    }
    kernel::with(|kern| kern.code.retain(|(_, _, l)| *l != label));
    match k.loaded.unload() {
        Ok(()) => {
            events::emit(&Event::Unloaded {
                kext: label.clone(),
            });
            step(
                format!("unload {label}"),
                true,
                "image unmapped (made inaccessible)",
            );
            true
        }
        Err(e) => {
            step(format!("unload {label}"), false, e.to_string());
            false
        }
    }
}

/// What the kext has registered and working: controls, socket filters, IP filters.
fn working(kext: &LoadedKext) -> std::collections::BTreeSet<String> {
    let owns = |addrs: &[u64]| addrs.iter().any(|&a| a != 0 && kext.contains_code(a));
    kernel::with(|k| {
        let mut set = std::collections::BTreeSet::new();
        for r in k.sflt.regs.values() {
            let addrs: Vec<u64> = r.filter.callbacks().iter().map(|&(_, a)| a).collect();
            if r.state == super::sflt::RegState::Registered && owns(&addrs) {
                set.insert(format!("socket filter '{}'", r.name));
            }
        }
        for r in &k.ipf.regs {
            if r.state == super::ipf::IpfState::Attached
                && owns(&[r.filter.input, r.filter.output, r.filter.detach])
            {
                set.insert(format!("IP filter '{}'", r.name));
            }
        }
        for r in &k.ctl.regs {
            if r.registered && owns(&[r.connect, r.disconnect, r.send, r.setopt, r.getopt]) {
                set.insert(format!("kern_control '{}'", r.name));
            }
        }
        set
    })
}

/// After a successful stop (or a failed start) nothing of this kext may stay
/// registered with the kernel: its callbacks would run in unloaded memory.
fn check_nothing_registered(kext: &LoadedKext, label: &str, when: &str) {
    let owns = |addrs: &[u64]| {
        addrs
            .iter()
            .any(|&a| a != 0 && kext.contains_code(super::arch::strip(a)))
    };
    kernel::with(|k| {
        let mut found = Vec::new();
        for r in k.sflt.live() {
            let addrs: Vec<u64> = r.filter.callbacks().iter().map(|&(_, a)| a).collect();
            if owns(&addrs) {
                found.push(format!(
                    "socket filter '{}' (handle {:#x}) is {}",
                    r.name,
                    r.filter.handle,
                    match r.state {
                        super::sflt::RegState::Registered =>
                            "still registered (sflt_unregister never called)",
                        _ => "unregistering: sf_unregistered has not been delivered yet",
                    }
                ));
            }
        }
        for r in k.ipf.live() {
            if owns(&[r.filter.input, r.filter.output, r.filter.detach]) {
                found.push(format!(
                    "IP filter '{}' is {}",
                    r.name,
                    match r.state {
                        super::ipf::IpfState::Attached =>
                            "still attached (ipf_remove never called)",
                        _ => "being removed: ipf_detach has not run yet",
                    }
                ));
            }
        }
        for r in k.ctl.live() {
            if owns(&[r.connect, r.disconnect, r.send, r.setopt, r.getopt]) {
                found.push(format!("kern_control '{}' is still registered", r.name));
            }
        }
        for f in found {
            k.violation(
                "stop-while-registered",
                format!("{when} for {label} while {f}"),
            );
        }
    });
}

/// End-of-run ledgers: everything the kexts allocated must be returned.
fn check_ledgers() -> bool {
    kernel::with(|k| {
        let allocs: Vec<String> = k
            .allocations
            .iter()
            .map(|(a, al)| {
                format!(
                    "{} bytes at {a:#x} from {} in {}",
                    al.size, al.via, al.during
                )
            })
            .collect();
        for a in allocs {
            k.violation("memory-leak", format!("never freed: {a}"));
        }
        let tags: Vec<String> = k.malloc_tags.values().cloned().collect();
        for t in tags {
            k.violation(
                "malloc-tag-leak",
                format!("OSMallocTag '{t}' never freed with OSMalloc_Tagfree"),
            );
        }
        for l in k.leaked_locks() {
            k.violation("lock-leak", format!("{l} never freed"));
        }
        let leaked = abi::mbuf::leaked(k);
        for m in leaked {
            k.violation("mbuf-leak", m);
        }
        let n = k.violations.len();
        step(
            "ledgers",
            n == 0,
            if n == 0 {
                "memory, locks, mbufs: all returned".to_string()
            } else {
                format!("{n} violation(s)")
            },
        );
        n == 0
    })
}
