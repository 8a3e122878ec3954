//! The socket filter's decision for one outgoing connection: the rules, plus
//! what the rules can never override — the proxy's own process and the proxy's
//! own address are never redirected (that would loop), and a redirect needs a
//! proxy the socket's family can reach.

use super::addr::{Endpoint, Family, IpAddr};
use super::rules::{Action, Conn, IndexEntry, ProcName, Rule, RuleSet};

/// Where redirected connections go, and who the proxy is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Proxies {
    /// The proxy's IPv4 listener.
    pub v4: Option<Endpoint>,
    /// The proxy's IPv6 listener.
    pub v6: Option<Endpoint>,
    /// The proxy's pid: its connections are never redirected.
    pub pid: Option<u32>,
    /// The proxy's process name: its connections are never redirected.
    pub name: Option<ProcName>,
}

/// Why a connection is left alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassReason {
    /// Filtering is disabled.
    Disabled,
    /// The rules say so (a `direct` rule or the default).
    Rules,
    /// The connecting process is the proxy.
    ProxyProcess,
    /// The destination is the proxy itself.
    ProxyAddress,
    /// No proxy is configured that a socket of this family can connect to.
    NoProxy,
}

/// What to do with an outgoing connection (the socket filter's decision; the IP
/// filter's, per packet, is [`super::filter::Decision`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connect {
    /// Connect to the original destination.
    Pass(PassReason),
    /// Connect to `to` instead (same family as the socket), remembering the original.
    Redirect {
        /// The proxy address to write into `to`.
        to: Endpoint,
        /// Send a PROXY v2 header first.
        proxy_v2: bool,
        /// The rule that matched.
        rule: u32,
    },
    /// Refuse the connection.
    Block {
        /// The rule that matched (`u32::MAX`: the default action).
        rule: u32,
    },
}

/// The proxy address a socket of `family` connecting to `proxy` must use, if any:
/// IPv6 sockets reach an IPv4 proxy through its IPv4-mapped address; IPv4 sockets
/// cannot reach an IPv6 proxy.
fn reachable(family: Family, proxies: &Proxies) -> Option<Endpoint> {
    match family {
        Family::V4 => proxies.v4,
        Family::V6 => proxies.v6.or_else(|| {
            proxies
                .v4
                .map(|p| Endpoint::new(IpAddr::V6(p.addr.to_v6_mapped()), p.port))
        }),
    }
}

/// Decides for a socket of `family` making the connection `conn` (its
/// destination, protocol, and the creating process's pid and name).
pub fn decide<R, I>(
    enabled: bool,
    rules: &RuleSet<R, I>,
    proxies: &Proxies,
    family: Family,
    conn: &Conn<'_>,
) -> Connect
where
    R: AsRef<[Rule]>,
    I: AsRef<[IndexEntry]> + AsMut<[IndexEntry]>,
{
    if !enabled {
        return Connect::Pass(PassReason::Disabled);
    }
    let name = conn.name;
    if proxies.pid == Some(conn.pid)
        || proxies
            .name
            .is_some_and(|n| n.as_bytes() == name.get(..name.len().min(16)).unwrap_or(&[]))
    {
        return Connect::Pass(PassReason::ProxyProcess);
    }
    let canon = conn.dst.canonical();
    if [proxies.v4, proxies.v6]
        .iter()
        .flatten()
        .any(|p| p.canonical() == canon)
    {
        return Connect::Pass(PassReason::ProxyAddress);
    }
    let v = rules.lookup(conn);
    match v.action {
        Action::Direct => Connect::Pass(PassReason::Rules),
        Action::Block => Connect::Block {
            rule: v.rule.unwrap_or(u32::MAX),
        },
        Action::Proxy { proxy_v2 } => match reachable(family, proxies) {
            Some(to) => Connect::Redirect {
                to,
                proxy_v2,
                rule: v.rule.unwrap_or(u32::MAX),
            },
            None => Connect::Pass(PassReason::NoProxy),
        },
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    reason = "host tests"
)]
mod tests {
    use super::*;
    use crate::net::rules::{Cidr, Protocol};
    use crate::net::wire::proto;

    fn tcp<'a>(dst: &Endpoint, pid: u32, name: &'a [u8]) -> Conn<'a> {
        Conn {
            dst: *dst,
            pid,
            name,
            protocol: proto::TCP,
        }
    }

    #[test]
    fn the_proxy_is_never_redirected_and_families_are_respected() {
        let rules = vec![Rule {
            dst: None,
            action: Action::Proxy { proxy_v2: false },
            ..Rule::default()
        }];
        let rs = RuleSet::new(
            rules,
            vec![IndexEntry::default(); crate::net::rules::index_len(1)],
            Action::Direct,
        )
        .unwrap();
        let p4 = Endpoint::new(IpAddr::V4([127, 0, 0, 1]), 3128);
        let proxies = Proxies {
            v4: Some(p4),
            v6: None,
            pid: Some(9),
            name: Some(ProcName::new(b"haproxy")),
        };
        let d = Endpoint::new(IpAddr::V4([203, 0, 113, 10]), 80);
        assert_eq!(
            decide(true, &rs, &proxies, Family::V4, &tcp(&d, 9, b"x")),
            Connect::Pass(PassReason::ProxyProcess)
        );
        assert_eq!(
            decide(true, &rs, &proxies, Family::V4, &tcp(&d, 8, b"haproxy")),
            Connect::Pass(PassReason::ProxyProcess)
        );
        assert_eq!(
            decide(true, &rs, &proxies, Family::V4, &tcp(&p4, 8, b"x")),
            Connect::Pass(PassReason::ProxyAddress)
        );
        assert_eq!(
            decide(false, &rs, &proxies, Family::V4, &tcp(&d, 8, b"x")),
            Connect::Pass(PassReason::Disabled)
        );
        assert_eq!(
            decide(true, &rs, &proxies, Family::V4, &tcp(&d, 8, b"x")),
            Connect::Redirect {
                to: p4,
                proxy_v2: false,
                rule: 0
            }
        );
        let d6 = Endpoint::new(
            IpAddr::V6([0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
            80,
        );
        match decide(true, &rs, &proxies, Family::V6, &tcp(&d6, 8, b"x")) {
            Connect::Redirect { to, .. } => assert_eq!(to.addr.canonical(), p4.addr),
            other => panic!("{other:?}"),
        }
        let only6 = Proxies {
            v4: None,
            v6: Some(Endpoint::new(IpAddr::V6([0; 16]), 1)),
            ..proxies
        };
        assert_eq!(
            decide(true, &rs, &only6, Family::V4, &tcp(&d, 8, b"x")),
            Connect::Pass(PassReason::NoProxy)
        );
        let _ = Cidr::new(IpAddr::V4([0; 4]), 0);
    }

    #[test]
    fn the_protocol_is_part_of_the_decision() {
        let rules = vec![
            Rule {
                protocol: Protocol::Udp,
                action: Action::Proxy { proxy_v2: false },
                ..Rule::default()
            },
            Rule {
                protocol: Protocol::Tcp,
                port_lo: 443,
                port_hi: 443,
                action: Action::Block,
                ..Rule::default()
            },
        ];
        let rs = RuleSet::new(
            rules,
            vec![IndexEntry::default(); crate::net::rules::index_len(2)],
            Action::Direct,
        )
        .unwrap();
        let p4 = Endpoint::new(IpAddr::V4([127, 0, 0, 1]), 3128);
        let proxies = Proxies {
            v4: Some(p4),
            ..Proxies::default()
        };
        let d = Endpoint::new(IpAddr::V4([203, 0, 113, 10]), 443);
        let udp = Conn {
            protocol: proto::UDP,
            ..tcp(&d, 8, b"x")
        };
        assert_eq!(
            decide(true, &rs, &proxies, Family::V4, &udp),
            Connect::Redirect {
                to: p4,
                proxy_v2: false,
                rule: 0
            }
        );
        assert_eq!(
            decide(true, &rs, &proxies, Family::V4, &tcp(&d, 8, b"x")),
            Connect::Block { rule: 1 }
        );
        let d80 = Endpoint::new(IpAddr::V4([203, 0, 113, 10]), 80);
        assert_eq!(
            decide(true, &rs, &proxies, Family::V4, &tcp(&d80, 8, b"x")),
            Connect::Pass(PassReason::Rules)
        );
    }
}
