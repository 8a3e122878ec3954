//! The redirection rules: which outgoing connections go to the proxy.
//!
//! A rule matches on the transport protocol (any, TCP or UDP), the destination
//! (an IPv4 or IPv6 CIDR, or any), a destination port range and the process
//! (any, a pid or a process name; `exclude_process` inverts the process test).
//! The socket filter only sees TCP connections; the IP filter sees TCP and
//! UDP. Rules are ordered; the **first match wins**; when none matches, the
//! set's default action applies.
//!
//! Lookups do not scan every rule. [`RuleSet::new`] builds a hierarchical
//! classifier (Gupta & McKeown, "Algorithms for packet classification", IEEE
//! Network 2001, §"hierarchical tries"): the first field is the destination
//! network, the rules of each distinct network are that network's list of
//! candidates (rule order), and each network points to the longest network of
//! its family that contains it. The longest network containing an address is
//! found not with a trie walk but with one binary search among the *elementary
//! intervals* the networks cut the address space into (range search: Lampson,
//! Srinivasan & Varghese, "IP lookups using multiway and multicolumn search",
//! IEEE/ACM ToN 1999): at most `2D + 1` intervals per family for `D` networks.
//! A lookup then scans the candidate lists along the chain of containing
//! networks (at most 33 for IPv4, 129 for IPv6), then the rules without a
//! destination, each scan stopping at its first match or at a rule number past
//! the best match so far; a candidate's port range, protocol and whether it
//! tests the process are packed beside its number, so most are refused
//! without touching the rule. Cost: `O(log(2D + 2) + H + C)`, `H` the chain
//! length, `C` the candidates scanned (at most the rules whose network contains
//! the destination plus those without one). Sets of fewer than
//! [`INDEXED_FROM`] rules are simply scanned in order. ARCHITECTURE.md says why
//! this structure.
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
pub const INDEXED_FROM: usize = 3;

/// From this many rules on, the index has initial tables ([`Table`]): below,
/// the binary search over the bounds is as cheap and the tables' 49 KB not
/// worth it (`cargo xtask bench`).
pub const TABLE_FROM: usize = 1024;

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
        self.process_matches(c)
    }

    /// Whether the rule's process test (with `exclude_process`) selects `c`.
    pub fn process_matches(&self, c: &Conn<'_>) -> bool {
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

/// One slot of the index arena (24 bytes). The arena of a set of `n` rules
/// holds [`index_len`]`(n)` slots in three regions, each slot used as one of:
///
/// - a **candidate** (`[0, n)`): one per rule with a destination, grouped by
///   destination network, in rule order within a group, the rules without a
///   destination first; `a` = rule number, `key[0]` = the rule's port range,
///   protocol and process class packed ([`pack_filter`]), so that most
///   candidates are refused without touching the rule itself, `key[1]` = the
///   process key (pid, or hash of the name). Within a network's group the
///   candidates are ordered by (class, process key, rule): first the rules
///   without a process test, then the pid runs, the name runs, and the rules
///   excluding a process, so a lookup finds its pid's and name's runs by
///   binary search instead of scanning every process rule;
/// - a **node** (`[n, n + D)`, `D` distinct destination networks): `key` = its
///   group ([`group`]), `a` = the node of the longest network of the same
///   family strictly containing it (or [`NONE`]);
/// - a **bound** (`[2n, 2n + B)`, `B ≤ 2D + 2`): the start of an elementary
///   interval of the address space (`key` = address, high and low 64 bits) and
///   `a` = the node of the longest network covering the interval (or [`NONE`]);
///   IPv4's bounds first, then IPv6's, each in address order (the region
///   has `2n + 2` slots);
/// - from [`TABLE_FROM`] rules, two **initial tables** (IPv4, IPv6) of
///   [`TABLE_LEN`] slots after the bounds, four bucket starts per slot
///   ([`Table`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IndexEntry {
    key: [u64; 2],
    a: u32,
    b: u32,
}

/// "No node" / "no rule" in the index.
const NONE: u32 = u32::MAX;

/// Longest chain of nested networks of one family: /0 to /128.
const MAX_DEPTH: usize = 129;

/// Bits of the address an initial table indexes.
const TABLE_BITS: u32 = 12;

/// Entries of one family's initial table: `2^TABLE_BITS + 1` bucket starts,
/// four `u32`s per entry (in `key`).
const TABLE_LEN: usize = ((1usize << TABLE_BITS) + 1).div_ceil(4);

/// How many [`IndexEntry`]s the index of `rules` rules needs: `4 × rules + 2`
/// (candidates `rules`, nodes at most `rules`, bounds at most `2 × rules + 2`),
/// and from [`TABLE_FROM`] rules on two initial tables of [`TABLE_LEN`].
pub const fn index_len(rules: usize) -> usize {
    let base = rules.saturating_mul(4).saturating_add(2);
    if rules >= TABLE_FROM {
        base.saturating_add(TABLE_LEN.saturating_mul(2))
    } else {
        base
    }
}

/// An initial table over one family's bounds (the 16-bit initial array of
/// Lampson, Srinivasan & Varghese, here 12 bits): addresses whose top `o` bits
/// are `top` fall into bucket `(address >> shift) & (2^12 − 1)`, and bucket
/// `b`'s address range holds the bounds `[start(b), start(b + 1))`; the binary
/// search then covers those and the one before. `o` is the number of leading
/// bits all the family's bounds but the first share (the table spreads over
/// the part of the space the rules use).
#[derive(Debug, Clone, Copy)]
struct Table {
    /// Where its entries start in the arena.
    at: usize,
    /// `W − o` (bits below the shared top).
    top_shift: u32,
    /// The shared top bits.
    /// (High and low 64 bits: a `u128` field would make the set 16-byte
    /// aligned, more than the kernel allocator gives.)
    top: [u64; 2],
    /// `W − o − 12`.
    shift: u32,
}

impl Table {
    /// The bucket start `b` (an index among the family's bounds).
    fn start(&self, index: &[IndexEntry], b: usize) -> usize {
        let w = index
            .get(self.at.saturating_add(b / 4))
            .and_then(|e| e.key.get((b % 4) / 2))
            .copied()
            .unwrap_or(0);
        let half = if b.is_multiple_of(2) { w } else { w >> 32 };
        usize::try_from(half & 0xffff_ffff).unwrap_or(0)
    }

    /// The range of the family's bounds an address's search covers, when the
    /// address is in the table's part of the space.
    fn range(&self, index: &[IndexEntry], key: u128) -> Option<(usize, usize)> {
        let mask = (1u64 << TABLE_BITS) - 1;
        let b = if self.top_shift <= 32 {
            // IPv4: 64-bit arithmetic (cheaper than 128-bit shifts).
            let k = key as u64;
            if k.checked_shr(self.top_shift).unwrap_or(0) != self.top[1] {
                return None;
            }
            (k >> self.shift) & mask
        } else {
            if key.checked_shr(self.top_shift).unwrap_or(0) != join(self.top) {
                return None;
            }
            ((key >> self.shift) as u64) & mask
        };
        let b = usize::try_from(b).unwrap_or(0);
        Some((
            self.start(index, b).saturating_sub(1),
            self.start(index, b.saturating_add(1)),
        ))
    }

    /// Builds the table of `bounds` (one family's, `bits` wide) into `out`
    /// (zeroed, [`TABLE_LEN`] entries) at arena position `at`.
    fn build(out: &mut [IndexEntry], at: usize, bounds: &[IndexEntry], bits: u32) -> Table {
        let spread = match (bounds.get(1), bounds.last()) {
            (Some(lo), Some(hi)) => join(lo.key) ^ join(hi.key),
            _ => 0,
        };
        let o = spread
            .leading_zeros()
            .saturating_sub(128u32.saturating_sub(bits))
            .min(bits.saturating_sub(TABLE_BITS));
        let top_shift = bits.saturating_sub(o);
        let first = bounds.get(1).map_or(0, |b| join(b.key));
        let top = first.checked_shr(top_shift).unwrap_or(0);
        let shift = top_shift.saturating_sub(TABLE_BITS);
        let base = top.checked_shl(top_shift).unwrap_or(0);
        let mut p = 0usize;
        for b in 0..=(1usize << TABLE_BITS) {
            // Bucket `b`'s first address; the last "bucket" starts where the
            // table's part of the space ends (`None`: past the family's end).
            let lo = if b == 1usize << TABLE_BITS {
                1u128
                    .checked_shl(top_shift)
                    .and_then(|v| v.checked_add(base))
            } else {
                u128::try_from(b)
                    .ok()
                    .and_then(|b| b.checked_shl(shift))
                    .and_then(|v| v.checked_add(base))
            };
            while bounds
                .get(p)
                .is_some_and(|e| lo.is_none_or(|lo| join(e.key) < lo))
            {
                p = p.saturating_add(1);
            }
            if let Some(e) = out.get_mut(b / 4)
                && let Some(w) = e.key.get_mut((b % 4) / 2)
            {
                let shift = if b.is_multiple_of(2) { 0 } else { 32 };
                *w |= u64::try_from(p).unwrap_or(0) << shift;
            }
        }
        Table {
            at,
            top_shift,
            top: split(top),
            shift,
        }
    }
}

/// Process classes of a candidate (bits 40–41 of its packed filter).
const CLASS_ANY: u64 = 0;
const CLASS_PID: u64 = 1;
const CLASS_NAME: u64 = 2;
/// `exclude_process` rules: every process but one (scanned).
const CLASS_OTHER: u64 = 3;

/// The process class and key of a rule.
fn process_class(r: &Rule) -> (u64, u64) {
    match (r.process, r.exclude_process) {
        (ProcSel::Any, false) => (CLASS_ANY, 0),
        (ProcSel::Pid(p), false) => (CLASS_PID, u64::from(p)),
        (ProcSel::Name(n), false) => (CLASS_NAME, name_key(n.as_bytes())),
        (_, true) => (CLASS_OTHER, 0),
    }
}

/// FNV-1a (64 bits) of a process name: the key its rules are grouped by (a
/// hit is confirmed by comparing the names).
fn name_key(name: &[u8]) -> u64 {
    let name = name.get(..name.len().min(MAX_NAME)).unwrap_or(&[]);
    name.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Bits of the membership filters of the rules without a destination.
const FILTER_BITS: usize = 1024;

/// A membership filter (Bloom, CACM 1970, with one hash): bit `h` set when
/// some rule without a destination selects a pid or name hashing to `h`. A
/// connection whose pid and name hit no bit skips those rules' binary
/// searches (most connections come from processes no rule names).
type Filter = [u64; FILTER_BITS / 64];

/// The filter bit of a pid.
fn pid_bit(pid: u32) -> usize {
    usize::try_from(u64::from(pid).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 54).unwrap_or(0)
}

/// The filter bit of a name (truncated to [`MAX_NAME`]): from its length and
/// first two bytes, cheaper than [`name_key`]; names alike in those only
/// cost the binary search the filter would have saved.
fn name_bit(name: &[u8]) -> usize {
    let len = name.len().min(MAX_NAME);
    let byte = |i: usize| u64::from(name.get(i).copied().unwrap_or(0));
    let x = (len as u64) | (byte(0) << 8) | (byte(1) << 16);
    usize::try_from(x.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 54).unwrap_or(0)
}

fn filter_set(f: &mut Filter, bit: usize) {
    if let Some(w) = f.get_mut(bit / 64) {
        *w |= 1u64 << (bit % 64);
    }
}

fn filter_has(f: &Filter, bit: usize) -> bool {
    f.get(bit / 64)
        .is_some_and(|w| w & (1u64 << (bit % 64)) != 0)
}

/// A rule's cheap tests packed into one word: ports (bits 0–31), IP protocol
/// (bits 32–39, 0 for any) and process class (bits 40–41).
fn pack_filter(r: &Rule) -> u64 {
    u64::from(r.port_lo)
        | (u64::from(r.port_hi) << 16)
        | (u64::from(r.protocol.number().unwrap_or(0)) << 32)
        | (process_class(r).0 << 40)
}

fn class_of(e: &IndexEntry) -> u64 {
    (e.key[0] >> 40) & 3
}

/// A group of candidates: `[start, p0, p1, p2, end]`, its classes any
/// `[start, p0)`, pid `[p0, p1)`, name `[p1, p2)` and other `[p2, end)`. A
/// node stores it as `key = [start | p0 << 32, p1 | p2 << 32]`, `b = end`.
type Group = [u32; 5];

fn group(start: usize, end: usize, counts: [usize; 3]) -> Group {
    let w = |x: usize| u32::try_from(x).unwrap_or(0);
    let p0 = start.saturating_add(counts[0]);
    let p1 = p0.saturating_add(counts[1]);
    let p2 = p1.saturating_add(counts[2]);
    [w(start), w(p0), w(p1), w(p2), w(end)]
}

fn store_group(node: &mut IndexEntry, g: Group) {
    node.key = [
        u64::from(g[0]) | (u64::from(g[1]) << 32),
        u64::from(g[2]) | (u64::from(g[3]) << 32),
    ];
    node.b = g[4];
}

fn load_group(node: &IndexEntry) -> Group {
    [
        node.key[0] as u32,
        (node.key[0] >> 32) as u32,
        node.key[1] as u32,
        (node.key[1] >> 32) as u32,
        node.b,
    ]
}

/// Sorts the candidates of one group into (class, key, rule) order, packs
/// their filters and returns the group.
fn finish_group(cands: &mut [IndexEntry], rules: &[Rule], start: usize, end: usize) -> Group {
    let mut counts = [0usize; 3];
    let Some(g) = cands.get_mut(start..end) else {
        return group(start, start, counts);
    };
    for e in g.iter_mut() {
        let (filter, key) = rules
            .get(e.a as usize)
            .map_or((0, 0), |r| (pack_filter(r), process_class(r).1));
        *e = IndexEntry {
            key: [filter, key],
            a: e.a,
            b: 0,
        };
        if let Some(c) = counts.get_mut(class_of(e) as usize) {
            *c = c.saturating_add(1);
        }
    }
    heapsort_by(g, |x, y| {
        (class_of(x), x.key[1], x.a) < (class_of(y), y.key[1], y.a)
    });
    group(start, end, counts)
}

/// The packed tests of [`pack_filter`] against a connection (not the process).
fn filter_passes(f: u64, port: u16, ip_proto: u8) -> bool {
    let lo = (f & 0xffff) as u16;
    let hi = ((f >> 16) & 0xffff) as u16;
    let p = ((f >> 32) & 0xff) as u8;
    port >= lo && port <= hi && (p == 0 || p == ip_proto)
}

/// An address as a number (IPv4 in the low 32 bits).
fn addr_value(a: &IpAddr) -> u128 {
    match a {
        IpAddr::V4(b) => u128::from(u32::from_be_bytes(*b)),
        IpAddr::V6(b) => u128::from_be_bytes(*b),
    }
}

fn split(v: u128) -> [u64; 2] {
    [(v >> 64) as u64, v as u64]
}

fn join(k: [u64; 2]) -> u128 {
    (u128::from(k[0]) << 64) | u128::from(k[1])
}

/// The highest address of a family.
fn family_max(fam: u8) -> u128 {
    if fam == 4 {
        u128::from(u32::MAX)
    } else {
        u128::MAX
    }
}

/// The last address of the network `start`/`prefix` of family `fam`.
fn net_end(fam: u8, start: u128, prefix: u8) -> u128 {
    let host = if fam == 4 {
        u128::from(u32::MAX.checked_shr(u32::from(prefix)).unwrap_or(0))
    } else {
        u128::MAX.checked_shr(u32::from(prefix)).unwrap_or(0)
    };
    start | host
}

fn family_tag(f: Family) -> u8 {
    match f {
        Family::V4 => 4,
        Family::V6 => 6,
    }
}

/// The result of a lookup: the action for the connection and the rule that
/// chose it (`None`: the default action).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
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
    /// The group of the rules without a destination (candidates `[0, ..)`).
    any: Group,
    /// Pids and names the rules without a destination select ([`Filter`]).
    any_pids: Filter,
    any_names: Filter,
    /// Number of nodes (distinct destination networks).
    nodes: usize,
    /// Bounds of IPv4 `[bounds4.0, bounds4.1)` and IPv6 in the arena.
    bounds4: (usize, usize),
    bounds6: (usize, usize),
    /// The initial tables over them ([`Table`]; sets of [`TABLE_FROM`] rules
    /// or more).
    table4: Option<Table>,
    table6: Option<Table>,
}

/// The sort order of candidates while building: family (0 first), network
/// address, prefix length (containing networks before contained ones), rule.
fn build_key(e: &IndexEntry) -> (u32, [u64; 2], u32, u32) {
    (e.b >> 8, e.key, e.b & 0xff, e.a)
}

/// Appends the bound `(start, node)` at `*len` in `out`: a bound at the same
/// start as the last one replaces it (the later one is the deeper network or
/// the state after leaving one), and one with the last one's node is merged.
fn emit(out: &mut [IndexEntry], len: &mut usize, first: usize, start: u128, node: u32) {
    if *len > first
        && let Some(last) = len.checked_sub(1).and_then(|l| out.get_mut(l))
    {
        if join(last.key) == start {
            last.a = node;
            return;
        }
        if last.a == node {
            return;
        }
    }
    if let Some(slot) = out.get_mut(*len) {
        *slot = IndexEntry {
            key: split(start),
            a: node,
            b: 0,
        };
        *len = len.saturating_add(1);
    }
}

impl<R: AsRef<[Rule]>, I: AsRef<[IndexEntry]> + AsMut<[IndexEntry]>> RuleSet<R, I> {
    /// Validates `rules` and builds the index in `index`, which must have
    /// exactly [`index_len`]`(rules.len())` entries. O(n log n), no allocation,
    /// no recursion.
    pub fn new(rules: R, mut index: I, default: Action) -> Result<Self, RuleError> {
        let rs = rules.as_ref();
        let n = rs.len();
        if n > MAX_RULES {
            return Err(RuleError::TooMany);
        }
        if index.as_ref().len() != index_len(n) {
            return Err(RuleError::IndexSize);
        }
        let arena = index.as_mut();
        let (cands, rest) = arena.split_at_mut(n.min(arena.len()));
        let (nodes, rest) = rest.split_at_mut(n.min(rest.len()));
        let bounds_len = n.saturating_mul(2).saturating_add(2).min(rest.len());
        let (bounds, tables) = rest.split_at_mut(bounds_len);

        // Candidates in build form: key = network, b = family << 8 | prefix.
        for ((i, rule), slot) in rs.iter().enumerate().zip(cands.iter_mut()) {
            rule.validate()?;
            let number = u32::try_from(i).map_err(|_| RuleError::TooMany)?;
            *slot = match &rule.dst {
                None => IndexEntry {
                    key: [0; 2],
                    a: number,
                    b: 0,
                },
                Some(c) => IndexEntry {
                    key: split(addr_value(&c.addr)),
                    a: number,
                    b: (u32::from(family_tag(c.addr.family())) << 8) | u32::from(c.prefix),
                },
            };
        }
        heapsort_by(cands, |x, y| build_key(x) < build_key(y));
        let any_end = cands.iter().take_while(|e| e.b == 0).count();

        // Nodes in build form: key = network, b = family << 8 | prefix, one per
        // distinct network, in candidate order.
        let mut d = 0usize;
        let mut last: Option<(u32, [u64; 2])> = None;
        for e in cands.iter().skip(any_end) {
            if last != Some((e.b, e.key)) {
                last = Some((e.b, e.key));
                if let Some(slot) = nodes.get_mut(d) {
                    *slot = IndexEntry {
                        key: e.key,
                        a: NONE,
                        b: e.b,
                    };
                }
                d = d.saturating_add(1);
            }
        }
        let d = d.min(nodes.len());

        // Parents and elementary intervals, one sweep per family over the
        // networks in (address, prefix) order: networks are nested or
        // disjoint, so a stack of the open ones (at most 129 deep) holds the
        // chain of those containing the current address.
        let mut nb = 0usize;
        let mut ranges = [(0usize, 0usize); 2];
        for (fam, range) in [4u8, 6u8].into_iter().zip(ranges.iter_mut()) {
            let first = nb;
            let mut stack = [0u32; MAX_DEPTH];
            let mut depth = 0usize;
            emit(bounds, &mut nb, first, 0, NONE);
            for j in 0..d {
                let Some(&e) = nodes.get(j) else { break };
                if e.b >> 8 != u32::from(fam) {
                    continue;
                }
                let start = join(e.key);
                // Close the networks that end before this one.
                while let Some(top) = depth.checked_sub(1) {
                    let t = stack.get(top).copied().unwrap_or(NONE);
                    let Some(te) = nodes.get(t as usize) else {
                        return Err(RuleError::Cidr);
                    };
                    let end = net_end(fam, join(te.key), (te.b & 0xff) as u8);
                    if end >= start {
                        break;
                    }
                    depth = top;
                    let parent = depth
                        .checked_sub(1)
                        .and_then(|p| stack.get(p).copied())
                        .unwrap_or(NONE);
                    emit(bounds, &mut nb, first, end.saturating_add(1), parent);
                }
                let parent = depth
                    .checked_sub(1)
                    .and_then(|p| stack.get(p).copied())
                    .unwrap_or(NONE);
                let jn = u32::try_from(j).map_err(|_| RuleError::TooMany)?;
                if let Some(node) = nodes.get_mut(j) {
                    node.a = parent;
                }
                emit(bounds, &mut nb, first, start, jn);
                let Some(slot) = stack.get_mut(depth) else {
                    return Err(RuleError::Cidr);
                };
                *slot = jn;
                depth = depth.saturating_add(1);
            }
            while let Some(top) = depth.checked_sub(1) {
                let t = stack.get(top).copied().unwrap_or(NONE);
                let Some(te) = nodes.get(t as usize) else {
                    return Err(RuleError::Cidr);
                };
                let end = net_end(fam, join(te.key), (te.b & 0xff) as u8);
                depth = top;
                if end < family_max(fam) {
                    let parent = depth
                        .checked_sub(1)
                        .and_then(|p| stack.get(p).copied())
                        .unwrap_or(NONE);
                    emit(bounds, &mut nb, first, end.saturating_add(1), parent);
                }
            }
            *range = (first, nb);
        }

        // The initial tables (large sets only).
        let base = n.saturating_mul(2);
        let mut table = [None; 2];
        if n >= TABLE_FROM {
            let (t4, t6) = tables.split_at_mut(TABLE_LEN.min(tables.len()));
            for (((out, slot), (lo, hi)), (bits, at)) in
                [t4, t6].into_iter().zip(table.iter_mut()).zip(ranges).zip([
                    (32, base.saturating_add(bounds_len)),
                    (
                        128,
                        base.saturating_add(bounds_len).saturating_add(TABLE_LEN),
                    ),
                ])
            {
                out.fill(IndexEntry::default());
                *slot = Some(Table::build(
                    out,
                    at,
                    bounds.get(lo..hi).unwrap_or(&[]),
                    bits,
                ));
            }
        }

        // Final forms: nodes get their groups, candidates their packed
        // filters and process keys.
        let any = finish_group(cands, rs, 0, any_end);
        let mut any_pids = [0u64; FILTER_BITS / 64];
        let mut any_names = [0u64; FILTER_BITS / 64];
        for e in cands.get(..any_end).unwrap_or(&[]) {
            match rs.get(e.a as usize).map(|r| (r.process, r.exclude_process)) {
                Some((ProcSel::Pid(p), false)) => filter_set(&mut any_pids, pid_bit(p)),
                Some((ProcSel::Name(nm), false)) => {
                    filter_set(&mut any_names, name_bit(nm.as_bytes()))
                }
                _ => {}
            }
        }
        let mut j = 0usize;
        let mut i = any_end;
        while i < n {
            let Some(&head) = cands.get(i) else { break };
            let mut end = i;
            while cands
                .get(end)
                .is_some_and(|e| e.b == head.b && e.key == head.key)
            {
                end = end.saturating_add(1);
            }
            let g = finish_group(cands, rs, i, end);
            if let Some(node) = nodes.get_mut(j) {
                store_group(node, g);
            }
            j = j.saturating_add(1);
            i = end.max(i.saturating_add(1));
        }
        Ok(RuleSet {
            rules,
            index,
            default,
            any,
            any_pids,
            any_names,
            nodes: d,
            bounds4: (
                base.saturating_add(ranges[0].0),
                base.saturating_add(ranges[0].1),
            ),
            bounds6: (
                base.saturating_add(ranges[1].0),
                base.saturating_add(ranges[1].1),
            ),
            table4: table[0],
            table6: table[1],
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

    /// Distinct destination networks and elementary intervals (IPv4 + IPv6)
    /// of the index.
    pub fn index_stats(&self) -> (usize, usize) {
        (
            self.nodes,
            self.bounds4
                .1
                .saturating_sub(self.bounds4.0)
                .saturating_add(self.bounds6.1.saturating_sub(self.bounds6.0)),
        )
    }

    /// The action for `c`: the first matching rule's, or the default. Sets of
    /// fewer than [`INDEXED_FROM`] rules are scanned in order (cheaper than the
    /// index there: `cargo xtask bench`), larger ones go through the index
    /// ([`RuleSet::lookup_indexed`]).
    pub fn lookup(&self, c: &Conn<'_>) -> Outcome {
        if self.len() < INDEXED_FROM {
            lookup_linear(self.rules.as_ref(), self.default, c)
        } else {
            self.lookup_indexed(c)
        }
    }

    /// The action for `c` through the index, whatever the set's size: one
    /// binary search among the family's elementary intervals gives the longest
    /// network containing the destination; the candidates of it and of each
    /// network containing it (at most 33 or 129), then those of the rules
    /// without a destination, are scanned in rule order, each scan stopping at
    /// its first match or at a rule number past the best match so far.
    pub fn lookup_indexed(&self, c: &Conn<'_>) -> Outcome {
        let dst = c.dst.canonical();
        let c = Conn { dst, ..*c };
        let index = self.index.as_ref();
        let ((lo, hi), table) = match dst.addr.family() {
            Family::V4 => (self.bounds4, &self.table4),
            Family::V6 => (self.bounds6, &self.table6),
        };
        let bounds = index.get(lo..hi).unwrap_or(&[]);
        let key = addr_value(&dst.addr);
        let (from, to) = table
            .and_then(|t| t.range(index, key))
            .unwrap_or((0, bounds.len()));
        let after = bounds
            .get(from..to)
            .unwrap_or(&[])
            .partition_point(|b| join(b.key) <= key);
        let mut node = from
            .saturating_add(after)
            .checked_sub(1)
            .and_then(|i| bounds.get(i))
            .map_or(NONE, |b| b.a);
        let nodes = index
            .get(self.len()..self.len().saturating_add(self.nodes))
            .unwrap_or(&[]);
        let mut best = NONE;
        let mut name = None;
        // Each step goes to a strictly shorter network: at most MAX_DEPTH.
        for _ in 0..MAX_DEPTH {
            let Some(e) = nodes.get(node as usize) else {
                break;
            };
            self.scan_group(index, load_group(e), None, &c, &mut name, &mut best);
            node = e.a;
        }
        // Rules without a destination last: the best match found so far ends
        // their scan early (the order of the scans does not change the result,
        // the lowest matching rule number).
        self.scan_group(
            index,
            self.any,
            Some((&self.any_pids, &self.any_names)),
            &c,
            &mut name,
            &mut best,
        );
        match self.rules.as_ref().get(best as usize) {
            Some(r) => Outcome {
                action: r.action,
                rule: Some(best),
            },
            None => Outcome {
                action: self.default,
                rule: None,
            },
        }
    }

    /// Scans a group ([`group`]): its candidates without a process test in
    /// order, then the run of the connection's pid and of its name (found by
    /// binary search), then those excluding a process, each in rule order,
    /// setting `best` to the first match below it; `filters` (pids, names),
    /// when given, say which runs may exist. `name` caches the connection's
    /// [`name_key`].
    #[inline]
    fn scan_group(
        &self,
        index: &[IndexEntry],
        g: Group,
        filters: Option<(&Filter, &Filter)>,
        c: &Conn<'_>,
        name: &mut Option<u64>,
        best: &mut u32,
    ) {
        let [start, p0, p1, p2, end] = g.map(|x| x as usize);
        self.scan(index, start, p0, None, c, best);
        if p0 >= end {
            return;
        }
        let (pid_maybe, name_maybe) = match filters {
            Some((pids, names)) => (
                filter_has(pids, pid_bit(c.pid)),
                filter_has(names, name_bit(c.name)),
            ),
            None => (true, true),
        };
        for (from, to, maybe) in [(p0, p1, pid_maybe), (p1, p2, name_maybe)] {
            if from >= to || !maybe {
                continue;
            }
            let key = if from == p1 {
                *name.get_or_insert_with(|| name_key(c.name))
            } else {
                u64::from(c.pid)
            };
            let run = index.get(from..to).unwrap_or(&[]);
            let at = from.wrapping_add(run.partition_point(|e| e.key[1] < key));
            self.scan(index, at, to, Some(key), c, best);
        }
        self.scan(index, p2, end, None, c, best);
    }

    /// Scans the candidates `[from, to)` (with process key `key`, if given) in
    /// rule order, setting `best` to the first (below `best`) whose rule
    /// matches `c`.
    #[inline]
    fn scan(
        &self,
        index: &[IndexEntry],
        from: usize,
        to: usize,
        key: Option<u64>,
        c: &Conn<'_>,
        best: &mut u32,
    ) {
        let rules = self.rules.as_ref();
        for e in index.get(from..to).unwrap_or(&[]) {
            if e.a >= *best || key.is_some_and(|k| e.key[1] != k) {
                break;
            }
            let f = e.key[0];
            if filter_passes(f, c.dst.port, c.protocol)
                && ((f >> 40) & 3 == CLASS_ANY
                    || rules
                        .get(e.a as usize)
                        .is_some_and(|r| r.process_matches(c)))
            {
                *best = e.a;
                break;
            }
        }
    }
}

/// In-place heapsort by `less`: O(n log n), no allocation, no recursion and —
/// unlike `core`'s sorts, which may panic on an inconsistent order — no panic
/// path.
fn heapsort_by<T>(v: &mut [T], less: impl Fn(&T, &T) -> bool) {
    let lt = |v: &[T], a: usize, b: usize| match (v.get(a), v.get(b)) {
        (Some(x), Some(y)) => less(x, y),
        _ => false,
    };
    let sift_down = |v: &mut [T], mut root: usize, end: usize| loop {
        let Some(left) = root.checked_mul(2).and_then(|x| x.checked_add(1)) else {
            return;
        };
        if left >= end {
            return;
        }
        let mut child = left;
        let right = left.saturating_add(1);
        if right < end && lt(v, left, right) {
            child = right;
        }
        if !lt(v, root, child) {
            return;
        }
        if root < v.len() && child < v.len() {
            v.swap(root, child);
        }
        root = child;
    };
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
pub fn lookup_linear(rules: &[Rule], default: Action, c: &Conn<'_>) -> Outcome {
    let c = Conn {
        dst: c.dst.canonical(),
        ..*c
    };
    rules
        .iter()
        .zip(0u32..)
        .find(|(r, _)| r.matches(&c))
        .map(|(r, n)| Outcome {
            action: r.action,
            rule: Some(n),
        })
        .unwrap_or(Outcome {
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

    /// `lookup` (linear below [`INDEXED_FROM`] rules) and the index always agree.
    fn lk<R, I>(rs: &RuleSet<R, I>, c: &Conn<'_>) -> Outcome
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
        RuleSet::new(rules, vec![IndexEntry::default(); index_len(n)], default).unwrap()
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
            Outcome {
                action: PROXY,
                rule: Some(0)
            }
        );
        assert_eq!(
            lk(&rs, &c(v4([203, 0, 113, 10], 81), b"x")),
            Outcome {
                action: Action::Block,
                rule: Some(1)
            }
        );
        assert_eq!(
            lk(&rs, &c(v4([198, 51, 100, 1], 81), b"curl")),
            Outcome {
                action: Action::Block,
                rule: Some(2)
            }
        );
        assert_eq!(
            lk(&rs, &c(v4([198, 51, 100, 1], 81), b"wget")),
            Outcome {
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
            RuleSet::new(
                vec![bad],
                vec![IndexEntry::default(); index_len(1)],
                Action::Direct
            )
            .unwrap_err(),
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
            RuleSet::new(
                vec![bad],
                vec![IndexEntry::default(); index_len(1)],
                Action::Direct
            )
            .unwrap_err(),
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
            heapsort_by(&mut v, |a, b| a < b);
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

    /// Base addresses of the adversarial rule sets: networks of every prefix
    /// length around them nest, touch and overlap.
    const BASES4: [[u8; 4]; 4] = [
        [10, 1, 2, 3],
        [10, 1, 2, 255],
        [10, 1, 255, 0],
        [192, 168, 0, 1],
    ];

    fn base6(i: usize) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0] = 0x20;
        b[1] = 0x01;
        b[2] = 0x0d;
        b[3] = 0xb8;
        b[15] = [3u8, 255, 0, 1][i % 4];
        b[14] = [2u8, 2, 255, 0][i % 4];
        b[7] = i as u8;
        b
    }

    /// Port bounds that ranges and queries share.
    const EDGES: [u16; 10] = [0, 1, 79, 80, 81, 443, 1023, 1024, 65534, 65535];

    fn arb_adversarial_rule() -> impl Strategy<Value = Rule> {
        (
            arb_protocol(),
            proptest::option::weighted(0.9, (0usize..4, any::<bool>(), 0u8..=128)),
            0usize..EDGES.len(),
            0usize..EDGES.len(),
            prop_oneof![
                6 => Just(ProcSel::Any),
                1 => (0u32..3).prop_map(ProcSel::Pid),
                1 => Just(ProcSel::Name(ProcName::new(b"curl")))
            ],
            proptest::bool::weighted(0.1),
            prop_oneof![Just(Action::Direct), Just(Action::Block), Just(PROXY)],
        )
            .prop_map(|(protocol, dst, a, b, process, exclude_process, action)| {
                let dst = dst.and_then(|(i, six, p)| {
                    let addr = if six {
                        IpAddr::V6(base6(i))
                    } else {
                        IpAddr::V4(BASES4[i])
                    };
                    Cidr::new(addr, p % (addr.family().bits() + 1))
                });
                Rule {
                    protocol,
                    dst,
                    port_lo: EDGES[a.min(b)],
                    port_hi: EDGES[a.max(b)],
                    process,
                    exclude_process,
                    action,
                }
            })
    }

    fn from_value(fam: Family, v: u128) -> IpAddr {
        match fam {
            Family::V4 => IpAddr::V4((v as u32).to_be_bytes()),
            Family::V6 => IpAddr::V6(v.to_be_bytes()),
        }
    }

    /// A query at an edge of rule `i`: its network's first or last address or
    /// one outside either end, its ports' ends or one past them.
    fn edge_query(rules: &[Rule], i: usize, at: u8, port_at: u8, other: IpAddr) -> (IpAddr, u16) {
        let Some(r) = rules.get(i) else {
            return (other, 80);
        };
        let addr = match r.dst {
            None => other,
            Some(net) => {
                let fam = net.addr.family();
                let start = addr_value(&net.addr);
                let end = net_end(family_tag(fam), start, net.prefix);
                let max = family_max(family_tag(fam));
                let v = match at % 5 {
                    0 => start,
                    1 => end,
                    2 => start.wrapping_sub(1) & max,
                    3 => end.wrapping_add(1) & max,
                    _ => start.wrapping_add(end.wrapping_sub(start) / 2),
                };
                from_value(fam, v)
            }
        };
        let port = match port_at % 5 {
            0 => r.port_lo,
            1 => r.port_hi,
            2 => r.port_lo.wrapping_sub(1),
            3 => r.port_hi.wrapping_add(1),
            _ => r
                .port_lo
                .wrapping_add(r.port_hi.wrapping_sub(r.port_lo) / 2),
        };
        (addr, port)
    }

    /// The longest network of a rule containing `a`, by brute force.
    fn longest_net(rules: &[Rule], a: &IpAddr) -> Option<Cidr> {
        rules
            .iter()
            .filter_map(|r| r.dst)
            .filter(|n| n.addr.family() == a.family() && n.contains(a))
            .max_by_key(|n| n.prefix)
    }

    proptest! {
        #[test]
        fn adversarial_sets_agree_with_the_linear_first_match(
            rules in proptest::collection::vec(arb_adversarial_rule(), 0..300),
            queries in proptest::collection::vec(
                (any::<proptest::sample::Index>(), 0u8..5, 0u8..5, 0u32..3, any::<bool>(), arb_ip_proto(), arb_addr()),
                1..60,
            ),
        ) {
            let rs = set(rules.clone(), Action::Block);
            let (d, b) = rs.index_stats();
            prop_assert!(d <= rules.len() && b <= 2 * d + 2, "{} networks, {} bounds", d, b);
            for (i, at, port_at, pid, curl, protocol, other) in queries {
                let i = if rules.is_empty() { 0 } else { i.index(rules.len()) };
                let (addr, port) = edge_query(&rules, i, at, port_at, other);
                let name: &[u8] = if curl { b"curl" } else { b"wget" };
                let c = Conn { dst: Endpoint::new(addr, port), pid, name, protocol };
                let linear = lookup_linear(&rules, Action::Block, &c);
                prop_assert_eq!(rs.lookup_indexed(&c), linear);
                prop_assert_eq!(lk(&rs, &c), linear);
                prop_assert_eq!(linear.rule, spec_first_match(&rules, &c));
            }
        }

        #[test]
        fn the_elementary_intervals_give_the_longest_containing_network(
            rules in proptest::collection::vec(arb_adversarial_rule(), 1..200),
            queries in proptest::collection::vec(
                (any::<proptest::sample::Index>(), 0u8..5, arb_addr()),
                1..60,
            ),
        ) {
            let rs = set(rules.clone(), Action::Direct);
            let index = &rs.index;
            for (lo, hi) in [rs.bounds4, rs.bounds6] {
                let bounds = &index[lo..hi];
                prop_assert_eq!(bounds.first().map(|b| join(b.key)), Some(0));
                prop_assert!(bounds.windows(2).all(|w| join(w[0].key) < join(w[1].key)));
            }
            for (i, at, other) in queries {
                let (addr, _) = edge_query(&rules, i.index(rules.len()), at, 0, other);
                let (lo, hi) = match addr.family() {
                    Family::V4 => rs.bounds4,
                    Family::V6 => rs.bounds6,
                };
                let bounds = &index[lo..hi];
                let k = addr_value(&addr);
                let node = bounds[bounds.partition_point(|b| join(b.key) <= k) - 1].a;
                let want = longest_net(&rules, &addr);
                match want {
                    None => prop_assert_eq!(node, NONE),
                    Some(net) => {
                        // The node's candidates are exactly the rules with that network.
                        let e = index[rs.len() + node as usize];
                        let g = load_group(&e);
                        let (from, to) = (g[0] as usize, g[4] as usize);
                        let mut got: Vec<u32> = index[from..to].iter().map(|c| c.a).collect();
                        got.sort();
                        let expect: Vec<u32> = rules
                            .iter()
                            .zip(0u32..)
                            .filter(|(r, _)| r.dst == Some(net))
                            .map(|(_, n)| n)
                            .collect();
                        prop_assert_eq!(got, expect);
                    }
                }
            }
        }
    }

    #[test]
    fn a_rule_set_needs_no_more_than_8_byte_alignment() {
        // `kpi::alloc` gives 8-byte alignment at most (and refuses more): the
        // kexts keep their set inside fallibly allocated state.
        assert!(core::mem::align_of::<RuleSet<Vec<Rule>, Vec<IndexEntry>>>() <= 8);
        assert!(core::mem::align_of::<IndexEntry>() <= 8);
    }

    #[test]
    fn a_full_set_of_nested_networks_and_shared_ports_is_indexed_within_its_bound() {
        // MAX_RULES rules: every prefix length of four bases in both families,
        // then rules all on one network that differ only in their ports.
        let mut rules = Vec::new();
        for p in 0..=128u8 {
            for (i, base4) in BASES4.iter().enumerate() {
                rules.push(Rule {
                    dst: Cidr::new(IpAddr::V6(base6(i)), p),
                    port_lo: u16::from(p),
                    port_hi: u16::from(p),
                    ..Rule::default()
                });
                if p <= 32 {
                    rules.push(Rule {
                        dst: Cidr::new(IpAddr::V4(*base4), p),
                        port_lo: u16::from(p),
                        port_hi: u16::from(p),
                        ..Rule::default()
                    });
                }
            }
        }
        while rules.len() < MAX_RULES {
            let k = rules.len() as u16;
            rules.push(Rule {
                dst: Cidr::new(IpAddr::V4([10, 1, 2, 0]), 24),
                port_lo: 1000 + k % 50_000,
                port_hi: 1000 + k % 50_000,
                action: Action::Block,
                ..Rule::default()
            });
        }
        let rs = set(rules.clone(), Action::Direct);
        let (d, b) = rs.index_stats();
        assert!(b <= 2 * d + 2, "{d} networks, {b} bounds");
        for port in [
            0u16, 7, 24, 32, 64, 128, 999, 1000, 1500, 17_383, 17_384, 65_535,
        ] {
            for addr in [
                IpAddr::V4(BASES4[0]),
                IpAddr::V4(BASES4[3]),
                IpAddr::V4([10, 1, 2, 77]),
                IpAddr::V6(base6(1)),
                IpAddr::V6(base6(2)),
            ] {
                let c = Conn {
                    dst: Endpoint::new(addr, port),
                    pid: 0,
                    name: b"",
                    protocol: proto::TCP,
                };
                assert_eq!(rs.lookup(&c), lookup_linear(&rules, Action::Direct, &c));
            }
        }
        assert!(matches!(
            RuleSet::new(
                vec![Rule::default(); MAX_RULES + 1],
                vec![IndexEntry::default(); index_len(MAX_RULES + 1)],
                Action::Direct
            ),
            Err(RuleError::TooMany)
        ));
    }

    fn arb_wide_rule() -> impl Strategy<Value = Rule> {
        (
            prop_oneof![
                any::<[u8; 4]>().prop_map(IpAddr::V4),
                any::<[u8; 16]>().prop_map(IpAddr::V6),
                any::<[u8; 2]>().prop_map(|b| IpAddr::V6([
                    0xfd, b[0], b[1], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1
                ])),
            ],
            any::<u8>(),
            arb_adversarial_rule(),
        )
            .prop_map(|(addr, p, r)| Rule {
                dst: Cidr::new(addr, p % (addr.family().bits() + 1)),
                ..r
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn sets_spread_over_the_address_space_agree_with_the_linear_first_match(
            rules in proptest::collection::vec(arb_wide_rule(), TABLE_FROM..TABLE_FROM + 200),
            queries in proptest::collection::vec(
                (any::<proptest::sample::Index>(), 0u8..5, 0u8..5, any::<bool>(), arb_ip_proto(), any::<[u8; 16]>()),
                1..60,
            ),
        ) {
            let rs = set(rules.clone(), Action::Direct);
            prop_assert!(rs.table4.is_some() && rs.table6.is_some());
            for (i, at, port_at, four, protocol, raw) in queries {
                let other = if four {
                    IpAddr::V4([raw[0], raw[1], raw[2], raw[3]])
                } else {
                    IpAddr::V6(raw)
                };
                let (addr, port) = edge_query(&rules, i.index(rules.len()), at, port_at, other);
                for addr in [addr, other] {
                    let c = Conn { dst: Endpoint::new(addr, port), pid: 1, name: b"curl", protocol };
                    let linear = lookup_linear(&rules, Action::Direct, &c);
                    prop_assert_eq!(rs.lookup_indexed(&c), linear);
                }
            }
        }
    }
}
