//! The socket-filter scenario `sockfilter` (PrxSocketFilter.kext's acceptance
//! list) over **real** loopback sockets, IPv4 and IPv6, with the control
//! protocol driven through the emulated kern_control:
//!
//! - a privileged control client sets the proxies and the rules (an
//!   unprivileged one is refused; a malformed message changes nothing);
//! - 203.0.113.10:80 and [2001:db8::10]:80 (documentation addresses nothing
//!   listens on) reach the proxy listeners on 127.0.0.1 / ::1, with a PROXY v2
//!   header first: the bytes the proxy received are reported in hex for the
//!   test's own parser; the original destination is looked up through the control;
//! - a non-matching destination, an excluded process and the proxy's own
//!   process connect directly; a connection decided before a rule replacement
//!   keeps its decision, one after uses the new rules;
//! - stop is refused while the control client is connected.

use std::ffi::c_int;
use std::net::{Ipv6Addr, SocketAddr, TcpListener};

use common::sys::{ECONNREFUSED, ENOBUFS, ENOMEM, ENOTSUP, EPERM};

use super::ctlmsg::{CONTROL_NAME, endpoint, header, rule, rules_msg};
use super::lifecycle::Kext;
use super::sockets::{
    CLIENT, Live, PROXY_PID, accept_within, begin, close, establish, read_all, send,
};
use crate::emu::abi::ctl;
use crate::emu::abi::net::attached_filters;
use crate::emu::kernel;
use crate::emu::kernel::events::step;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Whether a fault plan is in force (failures are then expected, bypasses never).
fn faulting() -> bool {
    kernel::with(|k| !k.faults.rules.is_empty())
}

/// A control call, retried (as an administrator would rerun prxctl) while a
/// fault plan makes the kext answer ENOMEM or ENOBUFS; the kext must have
/// changed nothing when it refused.
fn retried(mut call: impl FnMut() -> c_int) -> c_int {
    let mut e = call();
    for _ in 0..16 {
        if !(faulting() && (e == ENOMEM || e == ENOBUFS)) {
            break;
        }
        e = call();
    }
    e
}

/// How the socket filter treated a connection that the rules redirect or block.
#[derive(Debug, PartialEq, Eq)]
enum Treated {
    /// No filter attached (the cookie could not be allocated): the documented,
    /// counted fail-open (`sockets left unfiltered`). Only under a fault plan.
    Unfiltered,
    /// `connect_out` refused it (fail-closed).
    Refused(c_int),
    /// The destination the filter left.
    To(Option<SocketAddr>),
}

fn treated(c: &Live) -> Treated {
    if attached_filters(c.sid).is_empty() {
        Treated::Unfiltered
    } else if let Some(e) = c.refused {
        Treated::Refused(e)
    } else {
        Treated::To(c.target)
    }
}

/// The `sockfilter` scenario. Strict under every fault plan: a redirect or
/// `block` bypassed, or a PROXY v2 connection whose proxy gets data without
/// the header, fails it; what a fault plan may cause instead is a counted
/// fail-open (a socket left unfiltered, checked against the kext's counter)
/// or a fail-closed connection (refused, or its data refused).
pub fn sockfilter(kexts: &mut [Kext]) -> bool {
    let faults = faulting();
    let mut ok = true;
    let mut unfiltered_seen = 0u64;
    let mut check = |what: &str, cond: bool, detail: String| {
        step(what, cond, detail);
        ok &= cond;
    };
    let bind = |a: &str| TcpListener::bind(a);
    let (Ok(p4), Ok(p6), Ok(direct1)) = (bind("127.0.0.1:0"), bind("[::1]:0"), bind("127.0.0.1:0"))
    else {
        step(
            "listeners",
            false,
            "cannot bind loopback listeners (IPv4 and IPv6)",
        );
        return false;
    };
    let Ok(direct2) = TcpListener::bind(("127.0.0.2", 0)) else {
        step("listeners", false, "cannot bind 127.0.0.2");
        return false;
    };
    let (a4, a6, d1, d2) = (
        p4.local_addr().ok(),
        p6.local_addr().ok(),
        direct1.local_addr().ok(),
        direct2.local_addr().ok(),
    );
    let (Some(a4), Some(a6), Some(d1), Some(d2)) = (a4, a6, d1, d2) else {
        return false;
    };
    step(
        "listeners",
        true,
        format!("proxy {a4} and {a6}; direct servers {d1} and {d2}"),
    );

    let mut unpriv = ctl::connect(CONTROL_NAME, false);
    for _ in 0..16 {
        if !(faults && matches!(unpriv, Err(ENOMEM) | Err(ENOBUFS))) {
            break;
        }
        unpriv = ctl::connect(CONTROL_NAME, false);
    }
    match unpriv {
        Err(EPERM) => step(
            "control: unprivileged client",
            true,
            "refused with EPERM (CTL_FLAG_PRIVILEGED)",
        ),
        other => check(
            "control: unprivileged client",
            false,
            format!("expected EPERM, got {other:?}"),
        ),
    }
    let mut privileged = ctl::connect(CONTROL_NAME, true);
    for _ in 0..16 {
        if !(faults && matches!(privileged, Err(ENOMEM) | Err(ENOBUFS))) {
            break;
        }
        privileged = ctl::connect(CONTROL_NAME, true);
    }
    let client = match privileged {
        Ok(c) => c,
        Err(e) => {
            check(
                "control: connect",
                false,
                format!("privileged connect failed: {e}"),
            );
            return ok;
        }
    };
    // The PROXY v2 headers' per-load key (op 20), for the tests to verify
    // the headers' tags with their own SipHash.
    let (e, key) = ctl::getopt(client, 20, &{
        let mut b = header(20, 8);
        b.resize(64, 0);
        b
    });
    check(
        "control: auth key",
        e == 0 && key.len() == 40,
        format!("errno {e}, {}", hex(&key)),
    );
    // Proxies: v4, v6, the proxy's pid and name.
    let mut m = header(2, 8 + 64);
    m.extend(endpoint(Some(a4)));
    m.extend(endpoint(Some(a6)));
    m.extend(3u32.to_be_bytes());
    m.extend((PROXY_PID as u32).to_be_bytes());
    let mut name = [0u8; 16];
    name[..9].copy_from_slice(b"prx-proxy");
    m.extend(name);
    let e = retried(|| ctl::setopt(client, 2, &m));
    check(
        "control: set proxies",
        e == 0,
        format!("setsockopt returned {e}"),
    );
    let doc4: std::net::IpAddr = [203, 0, 113, 0].into();
    let doc6: std::net::IpAddr = "2001:db8::"
        .parse::<Ipv6Addr>()
        .map(Into::into)
        .unwrap_or(doc4);
    let lo2: std::net::IpAddr = [127, 0, 0, 2].into();
    let lo3: std::net::IpAddr = [127, 0, 0, 3].into();
    let gen1 = vec![
        rule(None, (0, 65535), Some("excluded-app"), 0, false),
        rule(Some((doc4, 24)), (80, 80), None, 1, true),
        rule(Some((doc6, 32)), (0, 65535), None, 1, true),
        rule(Some((lo2, 32)), (0, 65535), None, 1, false),
        rule(Some((lo3, 32)), (0, 65535), None, 2, false),
    ];
    let msg = rules_msg(&gen1);
    // Malformed first: one byte short and one byte long; nothing may change.
    let e1 = ctl::setopt(client, 1, &msg[..msg.len() - 1]);
    let mut long = msg.clone();
    long.push(0);
    let e2 = ctl::setopt(client, 1, &long);
    let mut badver = msg.clone();
    badver[0] = 2;
    let e3 = ctl::setopt(client, 1, &badver);
    let mut status = Vec::new();
    let _ = retried(|| {
        let (e, st) = ctl::getopt(client, 18, &{
            let mut b = header(18, 8);
            b.resize(256, 0);
            b
        });
        status = st;
        e
    });
    let rules_before = status
        .get(12..16)
        .map(|b| u32::from_be_bytes(b.try_into().unwrap_or([0; 4])));
    check(
        "control: malformed rules",
        e1 != 0 && e2 != 0 && e3 != 0 && rules_before == Some(0),
        format!("short {e1}, long {e2}, wrong version {e3}; rule count still {rules_before:?}"),
    );
    let e = retried(|| ctl::setopt(client, 1, &msg));
    check(
        "control: set rules",
        e == 0,
        format!("5 rules, setsockopt returned {e}"),
    );
    // NAT timeouts (op 4: TCP idle, TCP SYN-sent/closing, UDP idle seconds) are the IP
    // filter's: valid ones (RFC 5382/4787 minimums) get ENOTSUP from the socket filter.
    let mut t = header(4, 20);
    for v in [7440u32, 240, 300] {
        t.extend(v.to_be_bytes());
    }
    let e = retried(|| ctl::setopt(client, 4, &t));
    check(
        "control: NAT timeouts refused",
        e == ENOTSUP,
        format!("setsockopt returned {e} (want ENOTSUP, 45)"),
    );

    let request = b"GET / HTTP/1.0\r\nHost: example\r\n\r\n";
    // A: IPv4 documentation address, PROXY v2.
    for (label, dest, listener) in [
        ("A", SocketAddr::from(([203, 0, 113, 10], 80)), &p4),
        (
            "B",
            SocketAddr::new(
                std::net::IpAddr::V6("2001:db8::10".parse().unwrap_or(Ipv6Addr::LOCALHOST)),
                80,
            ),
            &p6,
        ),
    ] {
        let mut c = begin(label, dest, CLIENT);
        let expected = if dest.is_ipv4() { a4 } else { a6 };
        match treated(&c) {
            Treated::Unfiltered | Treated::Refused(_) if faults => {
                if treated(&c) == Treated::Unfiltered {
                    unfiltered_seen += 1;
                }
                step(
                    format!("{label}: redirect"),
                    true,
                    format!(
                        "{dest}: {:?} under the fault plan (a counted fail-open, or fail-closed); not connected",
                        treated(&c)
                    ),
                );
                close(c);
                continue;
            }
            t => check(
                &format!("{label}: redirect"),
                t == Treated::To(Some(expected)),
                format!("{dest} -> {:?} (refused: {:?})", c.target, c.refused),
            ),
        }
        establish(&mut c, CLIENT);
        let sent = send(&mut c, request);
        let got = accept_within(listener)
            .map(|mut s| read_all(&mut s))
            .unwrap_or_default();
        let local = c.stream.as_ref().and_then(|s| s.local_addr().ok());
        // The proxy gets the header, then the request — or, when a fault kept
        // the header from going out, nothing (the data was refused).
        let with_header = common::net::proxy_v2::parse(&got)
            .is_ok_and(|p| got.get(p.len..) == Some(&request[..]));
        let refused = faults && got.is_empty() && sent.is_err();
        check(
            &format!("{label}: at proxy"),
            (with_header && sent.is_ok()) || refused,
            format!(
                "client {} bytes {}{}",
                local.map(|l| l.to_string()).unwrap_or_default(),
                hex(&got),
                if refused {
                    format!(" (data refused with errno {:?}: fail-closed)", sent.err())
                } else {
                    String::new()
                }
            ),
        );
        // Lookup of the live connection through the control.
        let mut q = header(17, 28);
        q.extend(endpoint(local));
        q.resize(64, 0);
        let mut resp = Vec::new();
        let e = retried(|| {
            let (e, r) = ctl::getopt(client, 17, &q);
            resp = r;
            e
        });
        check(
            &format!("{label}: lookup"),
            e == 0 && (resp.len() == 40 || refused),
            format!("errno {e}, response {}", hex(&resp)),
        );
        close(c);
    }
    // Direct cases.
    for (label, dest, proc_, listener) in [
        ("C (no rule)", d1, CLIENT, &direct1),
        ("D (excluded process)", d2, (777, "excluded-app"), &direct2),
        (
            "E (proxy's own process)",
            d2,
            (PROXY_PID, "prx-proxy"),
            &direct2,
        ),
    ] {
        let mut c = begin(label, dest, proc_);
        if faults && treated(&c) == Treated::Unfiltered {
            unfiltered_seen += 1;
        }
        check(
            &format!("{label}: direct"),
            c.target == Some(dest) && c.refused.is_none(),
            format!("{dest} -> {:?} (refused: {:?})", c.target, c.refused),
        );
        establish(&mut c, proc_);
        let _ = send(&mut c, b"direct\n");
        let got = accept_within(listener)
            .map(|mut s| read_all(&mut s))
            .unwrap_or_default();
        check(
            &format!("{label}: at server"),
            got == b"direct\n",
            format!("server got {:?}", String::from_utf8_lossy(&got)),
        );
        close(c);
    }
    // Rules replaced while a connection is in flight.
    let mut g = begin("G", d2, CLIENT);
    let mut gen2 = gen1.clone();
    gen2[3] = rule(Some((lo2, 32)), (0, 65535), None, 1, true);
    let e = retried(|| ctl::setopt(client, 1, &rules_msg(&gen2)));
    check(
        "control: rules replaced",
        e == 0,
        format!("while G is between connect_out and connected: {e}"),
    );
    // Under a fault plan G or H may be left unfiltered (it then reaches the
    // direct server, counted) or refused; redirected, it must reach the proxy
    // as its rules say.
    let g_treated = treated(&g);
    let g_excused = faults && g_treated != Treated::To(Some(a4));
    if g_treated == Treated::Unfiltered {
        unfiltered_seen += 1;
    }
    check(
        "G: redirect",
        g_treated == Treated::To(Some(a4))
            || (g_excused && matches!(g_treated, Treated::Unfiltered | Treated::Refused(_))),
        format!("{d2}: {g_treated:?}"),
    );
    establish(&mut g, CLIENT);
    let sent_g = send(&mut g, b"G\n");
    let got_g = if g_excused {
        Vec::new()
    } else {
        accept_within(&p4)
            .map(|mut s| read_all(&mut s))
            .unwrap_or_default()
    };
    check(
        "G: old rules",
        g_excused || got_g == b"G\n" || (faults && got_g.is_empty() && sent_g.is_err()),
        format!(
            "decided under generation 1 (no PROXY header): proxy got {}",
            hex(&got_g)
        ),
    );
    close(g);
    let mut h = begin("H", d2, CLIENT);
    let h_treated = treated(&h);
    let h_excused = faults && h_treated != Treated::To(Some(a4));
    if h_treated == Treated::Unfiltered {
        unfiltered_seen += 1;
    }
    check(
        "H: redirect",
        h_treated == Treated::To(Some(a4))
            || (h_excused && matches!(h_treated, Treated::Unfiltered | Treated::Refused(_))),
        format!("{d2}: {h_treated:?}"),
    );
    establish(&mut h, CLIENT);
    let sent_h = send(&mut h, b"H\n");
    let got_h = if h_excused {
        Vec::new()
    } else {
        accept_within(&p4)
            .map(|mut s| read_all(&mut s))
            .unwrap_or_default()
    };
    check(
        "H: new rules",
        h_excused
            || common::net::proxy_v2::parse(&got_h)
                .is_ok_and(|p| got_h.get(p.len..) == Some(&b"H\n"[..]))
            || (faults && got_h.is_empty() && sent_h.is_err()),
        format!(
            "decided under generation 2 (PROXY header): proxy got {}",
            hex(&got_h)
        ),
    );
    close(h);
    // K: a `block` rule. Refused at connect (ECONNREFUSED), never connected;
    // left unfiltered (counted) only under a fault plan.
    if let Ok(blocked) = TcpListener::bind(("127.0.0.3", 0))
        && let Ok(kdest) = blocked.local_addr()
    {
        let k = begin("K", kdest, CLIENT);
        let t = treated(&k);
        if faults && t == Treated::Unfiltered {
            unfiltered_seen += 1;
        }
        check(
            "K: blocked",
            t == Treated::Refused(ECONNREFUSED) || (faults && t == Treated::Unfiltered),
            format!("{kdest}: {t:?} (want refused with ECONNREFUSED, 61)"),
        );
        close(k);
    } else {
        check("K: blocked", false, "cannot bind 127.0.0.3".into());
    }
    // Statistics.
    let mut q = header(16, 8);
    q.resize(256, 0);
    let mut st = Vec::new();
    let e = retried(|| {
        let (e, r) = ctl::getopt(client, 16, &q);
        st = r;
        e
    });
    let parsed = super::ipctl::parse_stats(&st);
    let named = parsed.as_ref().map(|c| super::stat_names::render(c));
    check(
        "control: stats",
        e == 0 && named.is_some(),
        named.unwrap_or_else(|| format!("errno {e}, {}", hex(&st))),
    );
    // Every socket the scenario saw left unfiltered is counted by the kext.
    let counted = parsed
        .as_ref()
        .and_then(|c| {
            c.iter()
                .find(|(id, _)| *id == common::net::control::stat::SOCKETS_UNFILTERED)
        })
        .map(|(_, v)| *v);
    check(
        "fail-open counted",
        counted.is_some_and(|n| n >= unfiltered_seen),
        format!(
            "{unfiltered_seen} connection(s) of the scenario left unfiltered; the kext counts {counted:?} (sockets left unfiltered)"
        ),
    );
    // Stop refused while the client is connected.
    for k in kexts.iter_mut() {
        if k.loaded.stop == 0 {
            continue;
        }
        let r = crate::emu::abi::call::invoke(
            k.loaded.stop,
            &format!("stop {} (control client connected)", k.label),
            || k.loaded.call_entry(k.loaded.stop),
        );
        check(
            "stop while a control client is connected",
            r.is_some_and(|r| r != 0),
            format!("stop returned {r:?}"),
        );
    }
    ctl::disconnect(client);
    step("control: disconnect", true, "client closed");
    ok
}
