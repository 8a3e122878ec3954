//! Scenarios, run inside the child process: load the kexts, drive them, stop and
//! unload them as the kernel would, and check the ledgers.
//!
//! The top of the emulator's scenario layer: the list of scenarios and the
//! dispatch. Each module below imports only modules below it (checked by the
//! tidy test `emu_layers_import_only_downwards`), bottom to top:
//! [`stat_names`], [`ctlmsg`] (the independent control encoders), [`lifecycle`]
//! (load, start, stop, unload, ledgers), [`ipctl`], [`sockets`] (the socket
//! driver), [`traffic`], [`stacks`], [`nat_icmp`], [`nat_bridge`], [`sockfilter`],
//! [`ctl_bridge`], [`soak`].

use std::path::PathBuf;

use crate::emu::kernel;
use crate::emu::kernel::events::step;
use crate::emu::kernel::fault::FaultPlan;
use lifecycle::{check_ledgers, load_and_start, stop_and_unload};

pub mod ctl_bridge;
pub mod ctlmsg;
pub mod ipctl;
pub mod lifecycle;
pub mod nat_bridge;
pub mod nat_icmp;
pub mod soak;
pub mod sockets;
pub mod sockfilter;
pub mod stacks;
pub mod stat_names;
pub mod traffic;

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
        "load-unload, plus: serve the kern_controls on the Unix socket given by --ctl-bridge (prxctl --emu) until a client sends `quit`; see emu::scenarios::ctl_bridge",
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
        use ipctl::{RuleAction, RuleProtocol};
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
        let c = ipctl::configure(protocol, action);
        ip_configured = c == Some(true);
        ok &= c != Some(false);
    }
    if ok {
        ok &= match name {
            "socket-connect" => traffic::socket_connect(),
            "ip-tcp" => traffic::ip_tcp(),
            "nat-tcp4" => stacks::nat_tcp(false, None),
            "nat-tcp6" => stacks::nat_tcp(true, None),
            "nat-tcp4-split" => stacks::nat_tcp(false, Some(14)),
            "nat-tcp4-udp-rules" => stacks::nat_tcp(false, None),
            "nat-udp4" => stacks::nat_udp(false),
            "nat-udp6" => stacks::nat_udp(true),
            "nat-hostile" => stacks::nat_hostile(),
            "nat-expiry" => stacks::nat_expiry(),
            "nat-block-tcp4" => stacks::nat_blocked(false),
            "nat-block-tcp6" => stacks::nat_blocked(true),
            "nat-icmp4" => nat_icmp::nat_icmp(false),
            "nat-icmp6" => nat_icmp::nat_icmp(true),
            "sockfilter" => sockfilter::sockfilter(&mut loaded),
            "mt-nat" | "mt-sockfilter" | "soak" => {
                let args = soak::args();
                crate::emu::kernel::mt::enable(0x5052_5816);
                let r = match name {
                    "mt-nat" => soak::mt_nat(args.threads, ip_configured),
                    "mt-sockfilter" => soak::mt_sockfilter(args.threads),
                    _ => {
                        let (good, line) = soak::soak(args);
                        soak_line = Some(line);
                        good
                    }
                };
                crate::emu::kernel::mt::disable();
                r
            }
            "ctl-bridge" => ctl_bridge::ctl_bridge(),
            _ => true,
        };
    }
    if nat {
        let _ = ipctl::stats();
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
        step("soak: summary", ok && clean, soak::summary_line(&line, n));
    }
    Ok(ok && clean)
}
