//! The IP filter's control in the NAT scenarios: before the traffic, a prx
//! IP filter (one that registered `net.prx.kext.IPFilter.control`) is given
//! its proxies and rules through the emulated kern_control, as `prxctl --kext
//! ip` would; afterwards its statistics are read back and reported. Kexts
//! without that control (the C test kexts) are driven as they are.
//!
//! The messages are written and read here with the independent encoders of
//! [`super::ctlmsg`], not with `common::net::control`.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use super::ctlmsg::{endpoint, header, rule, rules_msg};
use crate::emu::abi::ctl;
use crate::emu::kernel;
use crate::emu::kernel::events::step;

/// The control name the IP filter registers.
pub const IP_CONTROL_NAME: &str = "net.prx.kext.IPFilter.control";

/// Which transport protocol the scenario's rules select (byte 10 of a rule record).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleProtocol {
    Any = 0,
    Tcp = 6,
    Udp = 17,
}

/// What the scenario's rules do (byte 1 of a rule record).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleAction {
    Proxy = 1,
    Block = 2,
}

fn registered() -> bool {
    kernel::with(|k| k.ctl.live().iter().any(|r| r.name == IP_CONTROL_NAME))
}

/// The scenarios' configuration: proxies 192.0.2.1:3128 and
/// [2001:db8:2::1]:3128; 203.0.113.0/24 and 2001:db8:203::/48 redirected for
/// `protocol` (or blocked, with [`RuleAction::Block`]); everything else direct.
/// Returns `None` when no prx IP filter is loaded, else whether every message
/// was accepted.
pub fn configure(protocol: RuleProtocol, action: RuleAction) -> Option<bool> {
    if !registered() {
        step(
            "ip control",
            true,
            format!("{IP_CONTROL_NAME} not registered: the kext is driven without configuration"),
        );
        return None;
    }
    let c = match ctl::connect(IP_CONTROL_NAME, true) {
        Ok(c) => c,
        Err(e) => {
            step("ip control: connect", false, format!("errno {e}"));
            return Some(false);
        }
    };
    let p4: SocketAddr = ([192, 0, 2, 1], 3128).into();
    let p6: SocketAddr = (Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 1), 3128).into();
    let mut m = header(2, 8 + 64);
    m.extend(endpoint(Some(p4)));
    m.extend(endpoint(Some(p6)));
    m.extend([0u8; 4 + 4 + 16]);
    let e1 = ctl::setopt(c, 2, &m);
    let with_proto = |mut r: Vec<u8>| {
        r[10] = protocol as u8;
        r
    };
    let net4: IpAddr = [203, 0, 113, 0].into();
    let net6: IpAddr = Ipv6Addr::new(0x2001, 0xdb8, 0x203, 0, 0, 0, 0, 0).into();
    let rules = vec![
        with_proto(rule(
            Some((net4, 24)),
            (0, 65535),
            None,
            action as u8,
            false,
        )),
        with_proto(rule(
            Some((net6, 48)),
            (0, 65535),
            None,
            action as u8,
            false,
        )),
    ];
    let e2 = ctl::setopt(c, 1, &rules_msg(&rules));
    ctl::disconnect(c);
    let ok = e1 == 0 && e2 == 0;
    step(
        "ip control: configure",
        ok,
        format!(
            "proxies {p4} and {p6}: errno {e1}; rules {net4}/24 and {net6}/48 ({protocol:?}) → {action:?}: errno {e2}"
        ),
    );
    Some(ok)
}

/// Reads the IP filter's statistics (`(id, value)` pairs), if it is loaded.
pub fn stats() -> Option<Vec<(u32, u64)>> {
    if !registered() {
        return None;
    }
    let c = ctl::connect(IP_CONTROL_NAME, true).ok()?;
    let (e, resp) = ctl::getopt(c, 16, &{
        let mut q = header(16, 8);
        q.resize(4096, 0);
        q
    });
    ctl::disconnect(c);
    let parsed = (e == 0).then(|| parse_stats(&resp)).flatten();
    let detail = match &parsed {
        Some(v) => super::stat_names::render(v),
        None => format!("getsockopt errno {e}, {} bytes", resp.len()),
    };
    step("ip control: statistics", parsed.is_some(), detail);
    parsed
}

pub(crate) fn parse_stats(b: &[u8]) -> Option<Vec<(u32, u64)>> {
    let be32 = |o: usize| Some(u32::from_be_bytes(b.get(o..o + 4)?.try_into().ok()?));
    if b.get(..4)? != [1, 16, 0, 0] || be32(4)? as usize != b.len() {
        return None;
    }
    let n = be32(8)? as usize;
    if b.len() != 12 + 12 * n {
        return None;
    }
    (0..n)
        .map(|i| {
            let o = 12 + 12 * i;
            Some((
                be32(o)?,
                u64::from_be_bytes(b.get(o + 4..o + 12)?.try_into().ok()?),
            ))
        })
        .collect()
}
