//! The redirection rules: which outgoing connections go to the proxy.
//!
//! A rule matches on the transport protocol (any, TCP or UDP), the destination
//! (an IPv4 or IPv6 CIDR, or any), a destination port range and the process
//! (any, a pid or a process name; `exclude_process` inverts the process test).
//! The socket filter only sees TCP connections; the IP filter sees TCP and
//! UDP. Rules are ordered; the **first match wins**; when none matches, the
//! set's default action applies.
//!
//! Lookups do not scan every rule: [`RuleSet::new`] builds a sorted index of
//! `(family, prefix length, masked destination, rule number)`. A lookup visits
//! only the prefix lengths present in the set (a bitmap per family), finds the
//! rules for each with a binary search, and scans those candidates (then the
//! rules without a destination) in rule order, stopping at the first that
//! matches or at a rule number past the best match so far (the rules without a
//! destination last, so the best match found through the index cuts them
//! short). Sets of fewer than [`INDEXED_FROM`] rules are simply scanned in order.
//!
//! The storage is the caller's (`R: AsRef<[Rule]>`, `I: AsMut<[IndexEntry]>`):
//! the kernel uses fallibly allocated slices, tests use `Vec`s. Nothing here
//! allocates or panics.

use super::addr::{Endpoint, Family, IpAddr, mask};
use super::wire::proto;

/// Longest process name compared (`MAXCOMLEN`): longer names are truncated,
/// as the kernel's `p_comm` is.
pub const MAX_NAME: usize = 16;

/// From this many rules on, [`RuleSet::lookup`] uses the index.
pub const INDEXED_FROM: usize = 32;

/// Most rules one set may hold (the control protocol enforces it too).
pub const MAX_RULES: usize = 16384;

/// A process name, up to [`MAX_NAME`] bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct ProcName {
    bytes: [u8; MAX_NAME],
    len: u8,
}

impl ProcName {
    /// The name, truncated to [`MAX_NAME`] bytes and at the first NUL.
    pub fn new(name: &[u8]) -> Self {
        let mut out = ProcName::default();
        let mut len = 0u8;
        for (d, s) in out
            .bytes
            .iter_mut()
            .zip(name.iter().take_while(|b| **b != 0))
        {
            *d = *s;
            len = len.saturating_add(1);
        }
        out.len = len;
        out
    }

    /// The name's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..usize::from(self.len)).unwrap_or(&[])
    }

    /// The fixed-size, NUL-padded form.
    pub fn padded(&self) -> [u8; MAX_NAME] {
        self.bytes
    }
}

/// Which processes a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProcSel {
    /// Every process.
    #[default]
    Any,
    /// The process with this pid.
    Pid(u32),
    /// Processes with this name.
    Name(ProcName),
}

/// Which transport protocol a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// Every protocol.
    #[default]
    Any,
    /// TCP (IP protocol 6).
    Tcp,
    /// UDP (IP protocol 17).
    Udp,
}

impl Protocol {
    /// The IP protocol number, or `None` for [`Protocol::Any`].
    pub fn number(self) -> Option<u8> {
        match self {
            Protocol::Any => None,
            Protocol::Tcp => Some(proto::TCP),
            Protocol::Udp => Some(proto::UDP),
        }
    }

    /// Whether a connection of IP protocol `ip_proto` is selected.
    pub fn matches(self, ip_proto: u8) -> bool {
        self.number().is_none_or(|n| n == ip_proto)
    }
}

/// A destination network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The network address (bits after `prefix` are cleared by [`Cidr::new`]).
    pub addr: IpAddr,
    /// Prefix length: at most 32 (IPv4) or 128 (IPv6).
    pub prefix: u8,
}

impl Cidr {
    /// A network; `None` when the prefix is longer than the address.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Self> {
        (prefix <= addr.family().bits()).then(|| Cidr {
            addr: mask(&addr, prefix),
            prefix,
        })
    }

    /// Whether `a` is in the network.
    pub fn contains(&self, a: &IpAddr) -> bool {
        a.in_prefix(&self.addr, self.prefix)
    }
}

/// What to do with a matching connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Action {
    /// Connect directly (unchanged).
    #[default]
    Direct,
    /// Redirect to the proxy; with `proxy_v2`, prepend a PROXY protocol v2 header.
    Proxy {
        /// Send a PROXY v2 header naming the original destination first.
        proxy_v2: bool,
    },
    /// Refuse the connection.
    Block,
}

/// One rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// The transport protocol.
    pub protocol: Protocol,
    /// Destination network; `None` matches every destination.
    pub dst: Option<Cidr>,
    /// Lowest destination port (inclusive).
    pub port_lo: u16,
    /// Highest destination port (inclusive).
    pub port_hi: u16,
    /// The process test.
    pub process: ProcSel,
    /// Invert the process test (apply to every process *but* the selected one).
    pub exclude_process: bool,
    /// The action.
    pub action: Action,
}

impl Default for Rule {
    /// Matches everything; connects directly.
    fn default() -> Self {
        Rule {
            protocol: Protocol::Any,
            dst: None,
            port_lo: 0,
            port_hi: u16::MAX,
            process: ProcSel::Any,
            exclude_process: false,
            action: Action::Direct,
        }
    }
}

/// The connection a lookup is about.
#[derive(Debug, Clone, Copy)]
pub struct Conn<'a> {
    /// Where the client is connecting (canonicalised by the lookup).
    pub dst: Endpoint,
    /// The process that created the socket.
    pub pid: u32,
    /// Its name (as `proc_name` reports it; compared up to [`MAX_NAME`] bytes).
    pub name: &'a [u8],
    /// The IP protocol number (`wire::proto::TCP` 6, `wire::proto::UDP` 17).
    pub protocol: u8,
}

impl Rule {
    /// Whether the rule matches `c` (whose destination is canonical).
    pub fn matches(&self, c: &Conn<'_>) -> bool {
        if !self.protocol.matches(c.protocol) {
            return false;
        }
        if let Some(net) = &self.dst
            && !net.contains(&c.dst.addr)
        {
            return false;
        }
        if c.dst.port < self.port_lo || c.dst.port > self.port_hi {
            return false;
        }
        let selected = match &self.process {
            ProcSel::Any => true,
            ProcSel::Pid(p) => *p == c.pid,
            ProcSel::Name(n) => {
                let name = c.name.get(..c.name.len().min(MAX_NAME)).unwrap_or(&[]);
                n.as_bytes() == name
            }
        };
        selected != self.exclude_process
    }

    /// Checks the rule's invariants (canonical network, ordered port range).
    pub fn validate(&self) -> Result<(), RuleError> {
        if self.port_lo > self.port_hi {
            return Err(RuleError::PortRange);
        }
        if let Some(c) = &self.dst
            && (c.prefix > c.addr.family().bits() || mask(&c.addr, c.prefix) != c.addr)
        {
            return Err(RuleError::Cidr);
        }
        Ok(())
    }
}

/// Why a rule set was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleError {
    /// `port_lo > port_hi`.
    PortRange,
    /// A prefix longer than the address, or bits set after the prefix.
    Cidr,
    /// The index storage is not exactly as long as the rules.
    IndexSize,
    /// More than [`MAX_RULES`] rules.
    TooMany,
}

/// One entry of the destination index. Field order is the sort order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct IndexEntry {
    /// 0: rule without destination; 4: IPv4; 6: IPv6.
    family: u8,
    prefix: u8,
    addr: [u8; 16],
    rule: u32,
}

fn family_tag(f: Family) -> u8 {
    match f {
        Family::V4 => 4,
        Family::V6 => 6,
    }
}

/// The result of a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// The action to take.
    pub action: Action,
    /// The matching rule's number (0-based), or `None` for the default action.
    pub rule: Option<u32>,
}

/// An ordered, indexed set of rules and a default action.
#[derive(Debug)]
pub struct RuleSet<R, I> {
    rules: R,
    index: I,
    default: Action,
    /// Bit `p` set: some IPv4 rule has prefix length `p` (0..=32).
    prefixes_v4: u64,
    /// Bit `p` of the 129-bit map: some IPv6 rule has prefix length `p`.
    prefixes_v6: [u64; 3],
}

fn set_bit(map: &mut [u64], bit: u8) {
    if let Some(w) = map.get_mut(usize::from(bit / 64)) {
        *w |= 1u64 << (bit % 64);
    }
}

fn has_bit(map: &[u64], bit: u8) -> bool {
    map.get(usize::from(bit / 64))
        .is_some_and(|w| w & (1u64 << (bit % 64)) != 0)
}

impl<R: AsRef<[Rule]>, I: AsRef<[IndexEntry]> + AsMut<[IndexEntry]>> RuleSet<R, I> {
    /// Validates `rules` and builds the index in `index`, which must have
    /// exactly as many entries as there are rules.
    pub fn new(rules: R, mut index: I, default: Action) -> Result<Self, RuleError> {
        let rs = rules.as_ref();
        if rs.len() > MAX_RULES {
            return Err(RuleError::TooMany);
        }
        if index.as_ref().len() != rs.len() {
            return Err(RuleError::IndexSize);
        }
        let mut prefixes_v4 = 0u64;
        let mut prefixes_v6 = [0u64; 3];
        for ((n, rule), slot) in rs.iter().enumerate().zip(index.as_mut().iter_mut()) {
            rule.validate()?;
            let number = u32::try_from(n).map_err(|_| RuleError::TooMany)?;
            *slot = match &rule.dst {
                None => IndexEntry {
                    family: 0,
                    prefix: 0,
                    addr: [0; 16],
                    rule: number,
                },
                Some(c) => {
                    match c.addr.family() {
                        Family::V4 => set_bit(core::slice::from_mut(&mut prefixes_v4), c.prefix),
                        Family::V6 => set_bit(&mut prefixes_v6, c.prefix),
                    }
                    IndexEntry {
                        family: family_tag(c.addr.family()),
                        prefix: c.prefix,
                        addr: c.addr.to_bytes16(),
                        rule: number,
                    }
                }
            };
        }
        heapsort(index.as_mut());
        Ok(RuleSet {
            rules,
            index,
            default,
            prefixes_v4,
            prefixes_v6,
        })
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.rules.as_ref().len()
    }

    /// Whether the set has no rules.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The default action.
    pub fn default_action(&self) -> Action {
        self.default
    }

    /// The rules, in order.
    pub fn rules(&self) -> &[Rule] {
        self.rules.as_ref()
    }

    /// The action for `c`: the first matching rule's, or the default. Sets of
    /// fewer than [`INDEXED_FROM`] rules are scanned in order (cheaper than the
    /// index's per-prefix walk there: `cargo xtask bench`), larger ones go
    /// through the index ([`RuleSet::lookup_indexed`]).
    pub fn lookup(&self, c: &Conn<'_>) -> Verdict {
        if self.len() < INDEXED_FROM {
            lookup_linear(self.rules.as_ref(), self.default, c)
        } else {
            self.lookup_indexed(c)
        }
    }

    /// The action for `c` through the index, whatever the set's size.
    pub fn lookup_indexed(&self, c: &Conn<'_>) -> Verdict {
        let dst = c.dst.canonical();
        let c = Conn { dst, ..*c };
        let fam = dst.addr.family();
        let mut best: Option<u32> = None;
        let bits = fam.bits();
        let mut p = 0u8;
        loop {
            let present = match fam {
                Family::V4 => has_bit(core::slice::from_ref(&self.prefixes_v4), p),
                Family::V6 => has_bit(&self.prefixes_v6, p),
            };
            if present {
                self.scan(
                    family_tag(fam),
                    p,
                    mask(&dst.addr, p).to_bytes16(),
                    &c,
                    &mut best,
                );
            }
            if p >= bits {
                break;
            }
            p = p.saturating_add(1);
        }
        // Rules without a destination last: the best match found through the
        // index so far ends their scan early (the order of the scans does not
        // change the result, the lowest matching rule number).
        self.scan(0, 0, [0; 16], &c, &mut best);
        match best.and_then(|n| self.rules.as_ref().get(n as usize).map(|r| (n, r))) {
            Some((n, r)) => Verdict {
                action: r.action,
                rule: Some(n),
            },
            None => Verdict {
                action: self.default,
                rule: None,
            },
        }
    }

    /// Scans the index entries with key `(family, prefix, addr)` in rule order,
    /// updating `best` with the first rule (below `best`) that matches `c`.
    fn scan(&self, family: u8, prefix: u8, addr: [u8; 16], c: &Conn<'_>, best: &mut Option<u32>) {
        let index = self.index.as_ref();
        let key = (family, prefix, addr);
        let start = index.partition_point(|e| (e.family, e.prefix, e.addr) < key);
        let rules = self.rules.as_ref();
        for e in index.get(start..).unwrap_or(&[]) {
            if (e.family, e.prefix, e.addr) != key || best.is_some_and(|b| e.rule >= b) {
                break;
            }
            if rules.get(e.rule as usize).is_some_and(|r| r.matches(c)) {
                *best = Some(e.rule);
                break;
            }
        }
    }
}

/// In-place heapsort: O(n log n), no allocation, and — unlike `core`'s sorts,
/// which may panic on an inconsistent `Ord` — no panic path.
fn heapsort<T: Ord>(v: &mut [T]) {
    fn sift_down<T: Ord>(v: &mut [T], mut root: usize, end: usize) {
        loop {
            let Some(left) = root.checked_mul(2).and_then(|x| x.checked_add(1)) else {
                return;
            };
            if left >= end {
                return;
            }
            let mut child = left;
            let right = left.saturating_add(1);
            if right < end && v.get(left) < v.get(right) {
                child = right;
            }
            if v.get(root) >= v.get(child) {
                return;
            }
            if root < v.len() && child < v.len() {
                v.swap(root, child);
            }
            root = child;
        }
    }
    let len = v.len();
    let mut start = len / 2;
    while start > 0 {
        start = start.saturating_sub(1);
        sift_down(v, start, len);
    }
    let mut end = len;
    while end > 1 {
        end = end.saturating_sub(1);
        if end < v.len() {
            v.swap(0, end);
        }
        sift_down(v, 0, end);
    }
}

/// The reference semantics: the first rule in order that matches, by a linear
/// scan. [`RuleSet::lookup_indexed`] must agree with it (property-tested);
/// [`RuleSet::lookup`] uses it for small sets.
pub fn lookup_linear(rules: &[Rule], default: Action, c: &Conn<'_>) -> Verdict {
    let c = Conn {
        dst: c.dst.canonical(),
        ..*c
    };
    rules
        .iter()
        .zip(0u32..)
        .find(|(r, _)| r.matches(&c))
        .map(|(r, n)| Verdict {
            action: r.action,
            rule: Some(n),
        })
        .unwrap_or(Verdict {
            action: default,
            rule: None,
        })
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

    /// `lookup` (linear below INDEXED_FROM rules) and the index always agree.
    fn lk<R, I>(rs: &RuleSet<R, I>, c: &Conn<'_>) -> Verdict
    where
        R: AsRef<[Rule]>,
        I: AsRef<[IndexEntry]> + AsMut<[IndexEntry]>,
    {
        let v = rs.lookup(c);
        assert_eq!(v, rs.lookup_indexed(c), "index and scan disagree");
        v
    }
    use proptest::prelude::*;

    fn v4(a: [u8; 4], port: u16) -> Endpoint {
        Endpoint::new(IpAddr::V4(a), port)
    }

    fn set(rules: Vec<Rule>, default: Action) -> RuleSet<Vec<Rule>, Vec<IndexEntry>> {
        let n = rules.len();
        RuleSet::new(rules, vec![IndexEntry::default(); n], default).unwrap()
    }

    const PROXY: Action = Action::Proxy { proxy_v2: true };

    #[test]
    fn first_match_wins_and_default_applies() {
        let rs = set(
            vec![
                Rule {
                    dst: Cidr::new(IpAddr::V4([203, 0, 113, 0]), 24),
                    port_lo: 80,
                    port_hi: 80,
                    action: PROXY,
                    ..Rule::default()
                },
                Rule {
                    dst: Cidr::new(IpAddr::V4([203, 0, 113, 10]), 32),
                    action: Action::Block,
                    ..Rule::default()
                },
                Rule {
                    dst: None,
                    process: ProcSel::Name(ProcName::new(b"curl")),
                    action: Action::Block,
                    ..Rule::default()
                },
            ],
            Action::Direct,
        );
        let c = |dst, name: &'static [u8]| Conn {
            dst,
            pid: 7,
            name,
            protocol: proto::TCP,
        };
        assert_eq!(
            lk(&rs, &c(v4([203, 0, 113, 10], 80), b"x")),
            Verdict {
                action: PROXY,
                rule: Some(0)
            }
        );
        assert_eq!(
            lk(&rs, &c(v4([203, 0, 113, 10], 81), b"x")),
            Verdict {
                action: Action::Block,
                rule: Some(1)
            }
        );
        assert_eq!(
            lk(&rs, &c(v4([198, 51, 100, 1], 81), b"curl")),
            Verdict {
                action: Action::Block,
                rule: Some(2)
            }
        );
        assert_eq!(
            lk(&rs, &c(v4([198, 51, 100, 1], 81), b"wget")),
            Verdict {
                action: Action::Direct,
                rule: None
            }
        );
    }

    #[test]
    fn exclude_process_inverts_the_process_test_and_mapped_addresses_match_v4_rules() {
        let rs = set(
            vec![Rule {
                dst: Cidr::new(IpAddr::V4([10, 0, 0, 0]), 8),
                process: ProcSel::Pid(1),
                exclude_process: true,
                action: PROXY,
                ..Rule::default()
            }],
            Action::Direct,
        );
        let mapped = Endpoint::new(IpAddr::V6(IpAddr::V4([10, 1, 2, 3]).to_v6_mapped()), 443);
        assert_eq!(
            lk(
                &rs,
                &Conn {
                    dst: mapped,
                    pid: 2,
                    name: b"",
                    protocol: proto::TCP,
                }
            )
            .action,
            PROXY
        );
        assert_eq!(
            lk(
                &rs,
                &Conn {
                    dst: mapped,
                    pid: 1,
                    name: b"",
                    protocol: proto::TCP,
                }
            )
            .action,
            Action::Direct
        );
    }

    #[test]
    fn the_protocol_selects_tcp_udp_or_any() {
        assert!(Protocol::Any.matches(proto::TCP));
        assert!(Protocol::Any.matches(proto::UDP));
        assert!(Protocol::Any.matches(proto::ICMP));
        assert!(Protocol::Tcp.matches(6) && !Protocol::Tcp.matches(17));
        assert!(Protocol::Udp.matches(17) && !Protocol::Udp.matches(6));
        assert!(!Protocol::Tcp.matches(proto::ICMP) && !Protocol::Udp.matches(proto::ICMP));
        assert_eq!(Rule::default().protocol, Protocol::Any);
        let net = Cidr::new(IpAddr::V4([203, 0, 113, 0]), 24);
        let rs = set(
            vec![
                Rule {
                    protocol: Protocol::Udp,
                    dst: net,
                    action: Action::Block,
                    ..Rule::default()
                },
                Rule {
                    protocol: Protocol::Tcp,
                    dst: net,
                    action: PROXY,
                    ..Rule::default()
                },
                Rule {
                    dst: net,
                    action: Action::Direct,
                    ..Rule::default()
                },
            ],
            Action::Block,
        );
        let c = |protocol| Conn {
            dst: v4([203, 0, 113, 10], 53),
            pid: 0,
            name: b"",
            protocol,
        };
        assert_eq!(lk(&rs, &c(proto::UDP)).rule, Some(0));
        assert_eq!(lk(&rs, &c(proto::TCP)).rule, Some(1));
        assert_eq!(lk(&rs, &c(proto::ICMP)).rule, Some(2));
        for p in [proto::UDP, proto::TCP, proto::ICMP] {
            assert_eq!(
                lk(&rs, &c(p)),
                lookup_linear(rs.rules(), Action::Block, &c(p))
            );
        }
    }

    #[test]
    fn bad_rules_are_refused() {
        let bad = Rule {
            port_lo: 2,
            port_hi: 1,
            ..Rule::default()
        };
        assert_eq!(
            RuleSet::new(vec![bad], vec![IndexEntry::default()], Action::Direct).unwrap_err(),
            RuleError::PortRange
        );
        let bad = Rule {
            dst: Some(Cidr {
                addr: IpAddr::V4([10, 0, 0, 1]),
                prefix: 8,
            }),
            ..Rule::default()
        };
        assert_eq!(
            RuleSet::new(vec![bad], vec![IndexEntry::default()], Action::Direct).unwrap_err(),
            RuleError::Cidr
        );
        assert_eq!(
            RuleSet::new(vec![Rule::default()], vec![], Action::Direct).unwrap_err(),
            RuleError::IndexSize
        );
    }

    #[test]
    fn thousands_of_rules_are_looked_up_without_scanning_them_all() {
        // 5000 /32 rules and one /16 at the end: the lookup touches a handful of entries.
        let mut rules: Vec<Rule> = (0..5000u32)
            .map(|i| {
                let b = i.to_be_bytes();
                Rule {
                    dst: Cidr::new(IpAddr::V4([10, b[1], b[2], b[3]]), 32),
                    action: PROXY,
                    ..Rule::default()
                }
            })
            .collect();
        rules.push(Rule {
            dst: Cidr::new(IpAddr::V4([192, 168, 0, 0]), 16),
            action: Action::Block,
            ..Rule::default()
        });
        let rs = set(rules, Action::Direct);
        assert_eq!(
            lk(
                &rs,
                &Conn {
                    dst: v4([10, 0, 19, 135], 1),
                    pid: 0,
                    name: b"",
                    protocol: proto::TCP,
                }
            )
            .rule,
            Some(4999)
        );
        assert_eq!(
            lk(
                &rs,
                &Conn {
                    dst: v4([192, 168, 3, 4], 1),
                    pid: 0,
                    name: b"",
                    protocol: proto::TCP,
                }
            )
            .rule,
            Some(5000)
        );
        assert_eq!(
            lk(
                &rs,
                &Conn {
                    dst: v4([11, 0, 0, 1], 1),
                    pid: 0,
                    name: b"",
                    protocol: proto::TCP,
                }
            )
            .rule,
            None
        );
    }

    fn arb_addr() -> impl Strategy<Value = IpAddr> {
        // A small address space so that rules and connections collide often.
        prop_oneof![
            (0u8..4, 0u8..4).prop_map(|(a, b)| IpAddr::V4([10, a, 0, b])),
            (0u8..4, 0u8..4).prop_map(|(a, b)| IpAddr::V6([
                0x20, 1, 0x0d, 0xb8, a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, b
            ])),
        ]
    }

    fn arb_protocol() -> impl Strategy<Value = Protocol> {
        prop_oneof![
            Just(Protocol::Any),
            Just(Protocol::Tcp),
            Just(Protocol::Udp)
        ]
    }

    /// IP protocol numbers of connections: TCP, UDP, and one neither selects.
    fn arb_ip_proto() -> impl Strategy<Value = u8> {
        prop_oneof![Just(6u8), Just(17u8), Just(1u8)]
    }

    fn arb_rule() -> impl Strategy<Value = Rule> {
        (
            arb_protocol(),
            proptest::option::of((arb_addr(), 0u8..=128)),
            0u16..6,
            0u16..6,
            prop_oneof![
                Just(ProcSel::Any),
                (0u32..3).prop_map(ProcSel::Pid),
                Just(ProcSel::Name(ProcName::new(b"curl")))
            ],
            any::<bool>(),
            prop_oneof![
                Just(Action::Direct),
                Just(Action::Block),
                any::<bool>().prop_map(|v| Action::Proxy { proxy_v2: v })
            ],
        )
            .prop_map(
                |(protocol, dst, a, b, process, exclude_process, action)| Rule {
                    protocol,
                    dst: dst.and_then(|(addr, p)| Cidr::new(addr, p % (addr.family().bits() + 1))),
                    port_lo: a.min(b),
                    port_hi: a.max(b),
                    process,
                    exclude_process,
                    action,
                },
            )
    }

    /// The matching semantics written out independently of [`Rule::matches`],
    /// so a bug there is not mirrored by [`lookup_linear`] (which uses it).
    fn spec_first_match(rules: &[Rule], c: &Conn<'_>) -> Option<u32> {
        let dst = c.dst.canonical();
        rules
            .iter()
            .position(|r| {
                let protocol = matches!(
                    (r.protocol, c.protocol),
                    (Protocol::Any, _) | (Protocol::Tcp, 6) | (Protocol::Udp, 17)
                );
                let net = r.dst.is_none_or(|n| {
                    n.addr.family() == dst.addr.family() && mask(&dst.addr, n.prefix) == n.addr
                });
                let port = (r.port_lo..=r.port_hi).contains(&dst.port);
                let selected = match r.process {
                    ProcSel::Any => true,
                    ProcSel::Pid(p) => p == c.pid,
                    ProcSel::Name(n) => n.as_bytes() == c.name,
                };
                protocol && net && port && selected != r.exclude_process
            })
            .map(|n| n as u32)
    }

    proptest! {
        #[test]
        fn heapsort_sorts(mut v in proptest::collection::vec(any::<(u8, u16)>(), 0..300)) {
            let mut want = v.clone();
            want.sort();
            heapsort(&mut v);
            prop_assert_eq!(v, want);
        }

        #[test]
        fn indexed_lookup_agrees_with_the_linear_first_match(
            rules in proptest::collection::vec(arb_rule(), 0..40),
            conns in proptest::collection::vec(
                (arb_addr(), 0u16..6, 0u32..3, any::<bool>(), arb_ip_proto()),
                1..20,
            ),
        ) {
            let rs = set(rules.clone(), Action::Direct);
            for (addr, port, pid, curl, protocol) in conns {
                let name: &[u8] = if curl { b"curl" } else { b"wget" };
                let c = Conn { dst: Endpoint::new(addr, port), pid, name, protocol };
                let linear = lookup_linear(&rules, Action::Direct, &c);
                prop_assert_eq!(lk(&rs, &c), linear);
                prop_assert_eq!(rs.lookup_indexed(&c), linear);
                prop_assert_eq!(linear.rule, spec_first_match(&rules, &c));
            }
        }
    }
}
