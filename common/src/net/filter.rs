//! The IP filter's per-packet decisions, as pure functions over a header
//! prefix (the first bytes of a packet copied out of its mbuf chain), so the
//! kext only moves bytes and the logic is host-tested and fuzzed
//! (`fuzz/fuzz_targets/packet_path.rs`).
//!
//! Output ([`plan_output`], then [`apply`] once the caller has finalized
//! deferred checksums):
//! 1. Parse to the transport header ([`ip::transport_in`]). A packet the stack
//!    built inconsistently passes untouched (the stack owns its sanity); a
//!    header chain the filter cannot see to the end (more than
//!    [`ipv6::MAX_EXT_HEADERS`](super::wire::ipv6::MAX_EXT_HEADERS) extension
//!    headers, headers beyond the prefix, or a TCP/UDP/ICMPv6 header that the
//!    IP length fields leave too little room) is **dropped**, so no packet
//!    escapes redirection by hiding its ports.
//! 2. Non-first fragments pass untouched (they carry no ports; documented
//!    policy: only the first fragment of a redirected datagram is translated,
//!    so fragmented UDP to a redirected destination does not reassemble).
//! 3. Only TCP and UDP are redirected; packets to or from the proxy itself
//!    never are (no loops).
//! 4. A tracked flow is translated to its proxy. An untracked one is created
//!    when the [`Policy`] redirects it, on a TCP SYN (without ACK) or any UDP
//!    datagram. A TCP packet that does not open a flow, of an untracked flow
//!    the policy redirects or blocks (a flow that expired, was never seen, or
//!    was opened before the rule existed), is **dropped** and counted
//!    ([`DropReason::Untracked`]): it never reaches the original destination
//!    (fail-closed; the client's retransmissions and keepalives fail the same
//!    way until it gives up; a RST would need a packet built and injected
//!    inbound, which the filter does not do). A refused flow (table full,
//!    reverse-key collision) is dropped and counted, and so is the opening
//!    packet of a flow the policy blocks ([`NewFlow::Block`]).
//! 5. An ICMP/ICMPv6 error the client host sends about a packet it received
//!    from a translated flow (quoted source = original destination endpoint,
//!    quoted destination = client endpoint, outer source = the client
//!    address) is translated so the proxy recognises its own packet: quoted
//!    source → proxy endpoint, outer destination → proxy address when it is the
//!    original destination address (see item 4 of Input for the checksums and
//!    what passes). Like every translated output packet it is re-injected.
//!    (This check comes right after step 1: such errors are ICMP.)
//!
//! Input ([`plan_input`]):
//! 1. A TCP/UDP packet from a proxy endpoint to a client endpoint of a live
//!    flow gets its source rewritten back to the original destination.
//! 2. An ICMP error (ICMP types 3 destination unreachable, 11 time exceeded,
//!    12 parameter problem; ICMPv6 types 1 destination unreachable, 2 packet
//!    too big, 3 time exceeded, 4 parameter problem) sent to the client address
//!    and quoting a TCP/UDP packet of a live flow as sent after translation
//!    (quoted source = client endpoint, quoted destination = proxy endpoint) is
//!    translated (RFC 5508 §4.2), so PMTU discovery and error reporting work
//!    for redirected flows: quoted destination → original destination; outer
//!    source → original destination address only when the error comes from the
//!    proxy host itself (outer source = proxy address; a router's address is
//!    kept). The quoted IPv4 header checksum, the quoted transport checksum
//!    when the quote holds it, the outer IPv4 header checksum and the ICMP
//!    checksum are updated incrementally ([`icmp_error`]).
//! 3. Looking a flow up for an ICMP error is side-effect free
//!    ([`NatTable::peek_reverse`], [`NatTable::peek_forward`]): it neither
//!    refreshes the flow nor changes its TCP state.
//! 4. Pass untouched: ICMP errors that match no live flow, errors about ICMP
//!    (or any protocol but TCP/UDP) or about a non-first fragment, errors whose
//!    quoted headers up to the ports do not fit in the prefix or the message,
//!    quotes of the other IP family or malformed (a quote may claim more length
//!    than it holds: it is parsed with [`ip::transport_quoted`]), and every
//!    other ICMP message (echo included).
//! 5. Everything else passes untouched.
//!
//! [`Plan::Translate`] carries ICMP errors too: [`apply`] re-parses the
//! prefix, and for an ICMP error of the packet's family `side` is the outer
//! side being translated (input: [`Side::Src`], output: [`Side::Dst`]) and
//! `to` the quoted endpoint's new value (see [`icmp_error::rewrite`]).

use super::addr::{Endpoint, IpAddr};
use super::icmp_error;
use super::nat::{FlowKey, InsertError, NatTable, Store};
use super::translate::{self, L4Sum, Refused, Side};
use super::wire::ip::{self, Transport};
use super::wire::{Error, get_u8, get_u16, proto};

/// Which flows to redirect and where the proxy is. The kext uses the shared
/// rule engine ([`RulesPolicy`]); [`FixedPolicy`] is a fixed configuration for
/// host tests, the fuzz target and benchmarks.
pub trait Policy {
    /// What happens to a new flow of `protocol` from `src` to `dst`.
    fn new_flow(&self, protocol: u8, src: &Endpoint, dst: &Endpoint) -> NewFlow;
    /// True for the proxy's own addresses (never redirected, in either direction).
    fn is_proxy(&self, addr: &IpAddr) -> bool;
    /// True when `a` or `b` is one of the proxy's addresses (one call per
    /// packet; implementations may prepare their addresses once).
    fn is_proxy_either(&self, a: &IpAddr, b: &IpAddr) -> bool {
        self.is_proxy(a) || self.is_proxy(b)
    }
}

/// A [`Policy`]'s answer for a new flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewFlow {
    /// Leave it alone.
    Leave,
    /// Send it to this proxy endpoint instead.
    Redirect(Endpoint),
    /// Refuse it: its opening packets are dropped ([`DropReason::Blocked`]).
    Block,
}

/// One destination prefix per family redirected to one proxy per family
/// (TCP and UDP, any port).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedPolicy {
    /// IPv4 destinations redirected: network and prefix length.
    pub v4: ([u8; 4], u8),
    /// IPv6 destinations redirected.
    pub v6: ([u8; 16], u8),
    /// The IPv4 proxy.
    pub proxy_v4: ([u8; 4], u16),
    /// The IPv6 proxy.
    pub proxy_v6: ([u8; 16], u16),
}

impl FixedPolicy {
    /// The documentation networks: 203.0.113.0/24 → 192.0.2.1:3128 and
    /// 2001:db8:203::/48 → `[2001:db8:2::1]:3128`.
    pub const EXAMPLE: FixedPolicy = FixedPolicy {
        v4: ([203, 0, 113, 0], 24),
        v6: (
            [
                0x20, 0x01, 0x0d, 0xb8, 0x02, 0x03, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ],
            48,
        ),
        proxy_v4: ([192, 0, 2, 1], 3128),
        proxy_v6: (
            [
                0x20, 0x01, 0x0d, 0xb8, 0, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
            ],
            3128,
        ),
    };
}

/// True when the first `bits` bits of `a` and `net` are equal.
pub fn in_prefix(a: &[u8], net: &[u8], bits: u8) -> bool {
    let bits = usize::from(bits);
    let full = bits / 8;
    let rest = bits % 8;
    let (Some(x), Some(y)) = (a.get(..full), net.get(..full)) else {
        return false;
    };
    if x != y {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8usize.wrapping_sub(rest) & 7);
    match (a.get(full), net.get(full)) {
        (Some(p), Some(q)) => p & mask == q & mask,
        _ => false,
    }
}

impl Policy for FixedPolicy {
    fn new_flow(&self, protocol: u8, _src: &Endpoint, dst: &Endpoint) -> NewFlow {
        if protocol != proto::TCP && protocol != proto::UDP {
            return NewFlow::Leave;
        }
        match dst.addr {
            IpAddr::V4(a) if in_prefix(&a, &self.v4.0, self.v4.1) => NewFlow::Redirect(Endpoint {
                addr: IpAddr::V4(self.proxy_v4.0),
                port: self.proxy_v4.1,
            }),
            IpAddr::V6(a) if in_prefix(&a, &self.v6.0, self.v6.1) => NewFlow::Redirect(Endpoint {
                addr: IpAddr::V6(self.proxy_v6.0),
                port: self.proxy_v6.1,
            }),
            _ => NewFlow::Leave,
        }
    }

    fn is_proxy(&self, addr: &IpAddr) -> bool {
        match addr {
            IpAddr::V4(a) => *a == self.proxy_v4.0,
            IpAddr::V6(a) => *a == self.proxy_v6.0,
        }
    }
}

/// Why the filter dropped a packet (the statistics count each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The header chain cannot be followed to the transport header.
    Unparseable,
    /// The NAT table is full of live flows.
    TableFull,
    /// The new flow's reverse key is used by another live flow.
    Collision,
    /// IPv6 UDP with checksum 0 to a redirected destination.
    Udp6ZeroChecksum,
    /// The filter's state was busy (another CPU held the lock).
    Busy,
    /// An mbuf operation failed (copy, pullup, allocation).
    Mbuf,
    /// Re-injection failed (the mbuf was consumed anyway).
    Inject,
    /// A `block` rule refused the new flow.
    Blocked,
    /// A TCP packet that opens no flow, of an untracked flow the policy
    /// redirects or blocks (expired, never seen, or older than the rule).
    Untracked,
}

impl DropReason {
    /// Every reason, in statistics order.
    pub const ALL: [DropReason; 9] = [
        DropReason::Unparseable,
        DropReason::TableFull,
        DropReason::Collision,
        DropReason::Udp6ZeroChecksum,
        DropReason::Busy,
        DropReason::Mbuf,
        DropReason::Inject,
        DropReason::Blocked,
        DropReason::Untracked,
    ];

    /// Index into a statistics array.
    pub fn index(self) -> usize {
        self as usize
    }

    /// `ALL` in step with the enum: each reason at its own index, none
    /// missing (the match below fails to compile when a reason is added,
    /// and the last one's index must be `ALL`'s last).
    #[allow(
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects,
        reason = "evaluated at compile time only: a bad index is a compile error"
    )]
    const fn in_step() -> bool {
        let mut i = 0;
        while i < DropReason::ALL.len() {
            if DropReason::ALL[i] as usize != i {
                return false;
            }
            i += 1;
        }
        match DropReason::ALL[DropReason::ALL.len() - 1] {
            DropReason::Unparseable
            | DropReason::TableFull
            | DropReason::Collision
            | DropReason::Udp6ZeroChecksum
            | DropReason::Busy
            | DropReason::Mbuf
            | DropReason::Inject
            | DropReason::Blocked => false,
            DropReason::Untracked => true,
        }
    }

    /// The counter's key in the stop log (`prx: PrxIPFilter drop_mbuf=0`).
    pub fn key(self) -> &'static core::ffi::CStr {
        match self {
            DropReason::Unparseable => c"drop_unparseable",
            DropReason::TableFull => c"drop_table_full",
            DropReason::Collision => c"drop_collision",
            DropReason::Udp6ZeroChecksum => c"drop_udp6_zero_csum",
            DropReason::Busy => c"drop_busy",
            DropReason::Mbuf => c"drop_mbuf",
            DropReason::Inject => c"drop_inject",
            DropReason::Blocked => c"drop_blocked",
            DropReason::Untracked => c"drop_untracked",
        }
    }

    /// A short name (statistics, logs).
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Unparseable => "unparseable",
            DropReason::TableFull => "table full",
            DropReason::Collision => "flow collision",
            DropReason::Udp6ZeroChecksum => "IPv6 UDP checksum 0",
            DropReason::Busy => "busy",
            DropReason::Mbuf => "mbuf failure",
            DropReason::Inject => "inject failure",
            DropReason::Blocked => "blocked by a rule",
            DropReason::Untracked => "untracked mid-flow TCP",
        }
    }
}

const _: () = assert!(
    DropReason::in_step(),
    "DropReason::ALL must list every reason in declaration order"
);

/// What to do with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Leave it alone.
    Pass,
    /// Drop it.
    Drop(DropReason),
    /// Rewrite `side` to `to` (output: destination to the proxy; input: source
    /// back to the original destination). For an ICMP error, the flow it
    /// quotes is translated instead (see the module docs and
    /// [`icmp_error::rewrite`]).
    Translate {
        /// Which endpoint.
        side: Side,
        /// The new endpoint.
        to: Endpoint,
    },
}

/// The outcome for the packet's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Leave it alone.
    Pass,
    /// Drop it.
    Drop(DropReason),
    /// The first `changed` bytes of the prefix were rewritten: copy them back.
    Rewritten {
        /// Bytes to copy back.
        changed: usize,
    },
}

/// ICMP or ICMPv6 (the only packets [`icmp_error`] looks at): checked inline
/// so TCP and UDP skip the ICMP-error parse.
fn is_icmp(t: &Transport) -> bool {
    matches!(t.protocol, proto::ICMP | proto::ICMPV6)
}

fn endpoints(prefix: &[u8], t: &Transport) -> Option<(Endpoint, Endpoint)> {
    if prefix.len() < t.offset.saturating_add(4) {
        return None;
    }
    let sport = get_u16(prefix, t.offset..t.offset.saturating_add(2));
    let dport = get_u16(
        prefix,
        t.offset.saturating_add(2)..t.offset.saturating_add(4),
    );
    Some((
        Endpoint {
            addr: t.src,
            port: sport,
        },
        Endpoint {
            addr: t.dst,
            port: dport,
        },
    ))
}

fn tcp_flags(prefix: &[u8], t: &Transport) -> u8 {
    if t.protocol == proto::TCP {
        get_u8(prefix, t.offset.saturating_add(13))
    } else {
        0
    }
}

/// The TCP or UDP flow an outbound packet belongs to (for log lines), if it
/// is one whose headers are all in `prefix`.
pub fn outbound_flow(prefix: &[u8], packet_len: usize) -> Option<super::nat::FlowKey> {
    let t = ip::transport_in(prefix, packet_len).ok()?;
    if !t.has_transport || (t.protocol != proto::TCP && t.protocol != proto::UDP) {
        return None;
    }
    let (src, dst) = endpoints(prefix, &t)?;
    Some(FlowKey {
        protocol: t.protocol,
        src,
        dst,
    })
}

/// Decides what to do with an outbound packet of `packet_len` bytes whose
/// first bytes are `prefix`; creates the NAT flow when a rule redirects it.
pub fn plan_output<S: Store>(
    prefix: &[u8],
    packet_len: usize,
    table: &mut NatTable<S>,
    policy: &impl Policy,
    now: u64,
) -> Plan {
    match parse_output(prefix, packet_len) {
        Ok(t) => plan_output_parsed(prefix, packet_len, &t, table, policy, now),
        Err(plan) => plan,
    }
}

/// The output path's parse: the packet's transport location, or the plan for
/// a packet that cannot be parsed (see the module docs, Output 1).
pub fn parse_output(prefix: &[u8], packet_len: usize) -> Result<Transport, Plan> {
    match ip::transport_in(prefix, packet_len) {
        Ok(t) => Ok(t),
        // Ports the filter cannot see: no packet escapes redirection that way.
        Err(Error::TooManyExtHeaders | Error::ShortTransport) => {
            Err(Plan::Drop(DropReason::Unparseable))
        }
        // Headers beyond the prefix of a packet that is long enough to hold them.
        Err(Error::Truncated) if prefix.len() < packet_len => {
            Err(Plan::Drop(DropReason::Unparseable))
        }
        Err(_) => Err(Plan::Pass),
    }
}

/// The parse of a packet's first bytes `head` (a copy of at most the first
/// `head.len()` of `packet_len` bytes), or `None` when the filter needs more
/// of the packet than `head` holds: headers that go beyond it (IP options,
/// IPv6 extension headers, a TCP header past `head`), and every ICMP/ICMPv6
/// packet that is longer than `head` (an error's quote is read to the end of
/// the prefix). The IP filter copies a short head first and the full prefix
/// only when this says so; a `Some` answer is the one the full prefix would
/// give (`Err`: the plan of a packet that does not parse, as
/// [`parse_output`]; the input path passes those).
pub fn first_look(head: &[u8], packet_len: usize) -> Option<Result<Transport, Plan>> {
    if head.len() >= packet_len {
        return Some(parse_output(head, packet_len));
    }
    match ip::transport_in(head, packet_len) {
        Err(Error::Truncated) => None,
        Err(_) => Some(parse_output(head, packet_len)),
        Ok(t) if matches!(t.protocol, proto::ICMP | proto::ICMPV6) => None,
        Ok(t) if head.len() < translate::prefix_len(&t) => None,
        Ok(t) => Some(Ok(t)),
    }
}

/// The parse of a packet whose **first mbuf** holds `first` (all of that
/// buffer's bytes; the packet may go on in further mbufs), when those bytes
/// alone decide it: an IPv4/IPv6 packet whose length fields end within
/// `first` (so the packet holds at least that much, whatever its total
/// length), carrying TCP or UDP with its header up to the checksum within the
/// first `max_prefix` bytes. The answer is the prefix's length `n` (the
/// prefix is `first[..n]`, `n` = `first.len().min(max_prefix)`) and the parse,
/// with `first.len()` standing for the packet's length. Then the headers can
/// be read and rewritten in place, and the packet's total length is not needed: every decision and
/// rewrite of such a packet is the one [`first_look`]/[`parse_output`] give
/// for the whole packet, whatever its length (`packet_len` only bounds the
/// length fields, which `first` already holds). `None`: the caller takes
/// the general path (copy out the prefix with the packet's length).
pub fn parse_in_first(first: &[u8], max_prefix: usize) -> Option<(usize, Transport)> {
    let n = first.len().min(max_prefix);
    let t = ip::transport_in(first.get(..n)?, first.len()).ok()?;
    let fits = t.has_transport
        && matches!(t.protocol, proto::TCP | proto::UDP)
        && n >= translate::prefix_len(&t);
    fits.then_some((n, t))
}

/// [`plan_output`] for a packet already parsed as `t` ([`parse_output`]).
pub fn plan_output_parsed<S: Store>(
    prefix: &[u8],
    packet_len: usize,
    t: &Transport,
    table: &mut NatTable<S>,
    policy: &impl Policy,
    now: u64,
) -> Plan {
    let (key, flags) = match plan_known(prefix, packet_len, t, table, now, policy) {
        Ok(plan) => return plan,
        Err(unknown) => unknown,
    };
    // Only a flow's opening packet (TCP SYN without ACK, any UDP datagram)
    // creates or refuses it; mid-stream TCP of an untracked flow the policy
    // would redirect or block is dropped (never leaked to the origin).
    let opens = key.protocol == proto::UDP
        || flags & super::wire::tcp::SYN != 0 && flags & super::wire::tcp::ACK == 0;
    let to = match policy.new_flow(key.protocol, &key.src, &key.dst) {
        NewFlow::Leave => return Plan::Pass,
        _ if !opens => return Plan::Drop(DropReason::Untracked),
        NewFlow::Block => return Plan::Drop(DropReason::Blocked),
        NewFlow::Redirect(to) => to,
    };
    match table.insert(key, to, flags, now) {
        Ok(_) => Plan::Translate {
            side: Side::Dst,
            to,
        },
        Err(InsertError::Full) => Plan::Drop(DropReason::TableFull),
        Err(InsertError::Collision) => Plan::Drop(DropReason::Collision),
    }
}

/// The output plan when it needs no rules: [`plan_output_parsed`]'s answer
/// for every packet but the TCP/UDP packets of untracked flows (`None`: ask
/// the policy, through [`plan_output_parsed`]). It needs only the proxy
/// endpoints (packets to or from the proxy are never redirected), so the IP
/// filter plans a tracked flow's packets under the table's lock alone.
pub fn plan_output_tracked<S: Store>(
    prefix: &[u8],
    packet_len: usize,
    t: &Transport,
    table: &mut NatTable<S>,
    proxies: &super::policy::Proxies,
    now: u64,
) -> Option<Plan> {
    plan_known(prefix, packet_len, t, table, now, &ProxiesOnly(proxies)).ok()
}

/// The proxy endpoints alone, for [`plan_known`] (which asks a policy only
/// about the proxy's addresses).
struct ProxiesOnly<'a>(&'a super::policy::Proxies);

impl Policy for ProxiesOnly<'_> {
    /// Never asked ([`plan_known`] leaves new flows to its caller); leaves
    /// the flow alone.
    fn new_flow(&self, _protocol: u8, _src: &Endpoint, _dst: &Endpoint) -> NewFlow {
        NewFlow::Leave
    }

    fn is_proxy(&self, addr: &IpAddr) -> bool {
        proxies_contain_either(self.0, addr, addr)
    }

    fn is_proxy_either(&self, a: &IpAddr, b: &IpAddr) -> bool {
        proxies_contain_either(self.0, a, b)
    }
}

/// What a new flow needs decided: its key and TCP flags.
type Unknown = (FlowKey, u8);

/// The part of the output plan that needs no rules (`Err`: a TCP/UDP packet of
/// an untracked flow, for the policy).
fn plan_known<S: Store>(
    prefix: &[u8],
    packet_len: usize,
    t: &Transport,
    table: &mut NatTable<S>,
    now: u64,
    policy: &impl Policy,
) -> Result<Plan, Unknown> {
    let t = *t;
    if let Some(q) = is_icmp(&t).then(|| icmp_error::quote(prefix, &t)).flatten() {
        // About a packet the client received from a translated flow, which
        // then came from the original destination to the client endpoint.
        if t.src != q.dst.addr {
            return Ok(Plan::Pass);
        }
        let key = FlowKey {
            protocol: q.inner.protocol,
            src: q.dst,
            dst: q.src,
        };
        return Ok(match table.peek_forward(&key, now) {
            Some(f) => Plan::Translate {
                side: Side::Dst,
                to: f.proxy,
            },
            None => Plan::Pass,
        });
    }
    if !t.has_transport || (t.protocol != proto::TCP && t.protocol != proto::UDP) {
        return Ok(Plan::Pass);
    }
    if policy.is_proxy_either(&t.dst, &t.src) {
        return Ok(Plan::Pass);
    }
    let Some((src, dst)) = endpoints(prefix, &t) else {
        return Ok(if prefix.len() < packet_len {
            Plan::Drop(DropReason::Unparseable)
        } else {
            Plan::Pass
        });
    };
    let key = FlowKey {
        protocol: t.protocol,
        src,
        dst,
    };
    let flags = tcp_flags(prefix, &t);
    match table.outbound(&key, flags, now) {
        Some(to) => Ok(Plan::Translate {
            side: Side::Dst,
            to,
        }),
        None => Err((key, flags)),
    }
}

/// Decides what to do with an inbound packet: reverse translation of replies
/// from the proxy and of ICMP errors about translated flows.
pub fn plan_input<S: Store>(
    prefix: &[u8],
    packet_len: usize,
    table: &mut NatTable<S>,
    now: u64,
) -> Plan {
    let Ok(t) = ip::transport_in(prefix, packet_len) else {
        return Plan::Pass;
    };
    plan_input_parsed(prefix, &t, table, now)
}

/// [`plan_input`] for a packet already parsed as `t` (an inbound packet that
/// does not parse passes).
pub fn plan_input_parsed<S: Store>(
    prefix: &[u8],
    t: &Transport,
    table: &mut NatTable<S>,
    now: u64,
) -> Plan {
    let t = *t;
    if let Some(q) = is_icmp(&t).then(|| icmp_error::quote(prefix, &t)).flatten() {
        // About a packet the client sent, as translated: from the client
        // endpoint to the proxy endpoint; the error goes to the client.
        if t.dst != q.src.addr {
            return Plan::Pass;
        }
        return match table.peek_reverse(q.inner.protocol, &q.dst, &q.src, now) {
            Some(f) => Plan::Translate {
                side: Side::Src,
                to: f.key.dst,
            },
            None => Plan::Pass,
        };
    }
    if !t.has_transport || (t.protocol != proto::TCP && t.protocol != proto::UDP) {
        return Plan::Pass;
    }
    let Some((from, to)) = endpoints(prefix, &t) else {
        return Plan::Pass;
    };
    match table.inbound(t.protocol, &from, &to, tcp_flags(prefix, &t), now) {
        Some(orig) => Plan::Translate {
            side: Side::Src,
            to: orig,
        },
        None => Plan::Pass,
    }
}

/// Carries out `plan` on `prefix` (re-parsed: the caller may have re-read it
/// after finalizing checksums).
pub fn apply(prefix: &mut [u8], packet_len: usize, plan: Plan) -> Decision {
    match plan {
        Plan::Pass => Decision::Pass,
        Plan::Drop(r) => Decision::Drop(r),
        Plan::Translate { .. } => {
            let Ok(t) = ip::transport_in(prefix, packet_len) else {
                return Decision::Drop(DropReason::Unparseable);
            };
            apply_parsed(prefix, &t, plan, L4Sum::Complete)
        }
    }
}

/// [`apply`] on a prefix whose bytes are those `t` was parsed from (no
/// second parse), with its transport checksum field holding `l4` (a deferred
/// one is adjusted, never completed: see [`translate::rewrite_with`]).
pub fn apply_parsed(prefix: &mut [u8], t: &Transport, plan: Plan, l4: L4Sum) -> Decision {
    match plan {
        Plan::Pass => Decision::Pass,
        Plan::Drop(r) => Decision::Drop(r),
        Plan::Translate { side, to } => {
            let r = if is_icmp(t) && icmp_error::is_error(prefix, t) {
                // An ICMP error: translate the flow it quotes.
                match icmp_error::quote(prefix, t) {
                    Some(q) => icmp_error::rewrite(prefix, t, &q, side, to),
                    None => return Decision::Drop(DropReason::Unparseable),
                }
            } else {
                translate::rewrite_with(prefix, t, side, to.addr, to.port, l4)
            };
            match r {
                Ok(changed) => Decision::Rewritten { changed },
                Err(Refused::Udp6ZeroChecksum) => Decision::Drop(DropReason::Udp6ZeroChecksum),
                Err(_) => Decision::Drop(DropReason::Unparseable),
            }
        }
    }
}

/// [`plan_output`] and [`apply`] for a packet whose checksums are final.
pub fn output<S: Store>(
    prefix: &mut [u8],
    packet_len: usize,
    table: &mut NatTable<S>,
    policy: &impl Policy,
    now: u64,
) -> Decision {
    output_with(prefix, packet_len, table, policy, now, L4Sum::Complete)
}

/// [`output`] with the transport checksum field holding `l4`: one parse, the
/// plan, the rewrite. What the IP filter runs per outbound packet.
pub fn output_with<S: Store>(
    prefix: &mut [u8],
    packet_len: usize,
    table: &mut NatTable<S>,
    policy: &impl Policy,
    now: u64,
    l4: L4Sum,
) -> Decision {
    let t = match parse_output(prefix, packet_len) {
        Ok(t) => t,
        Err(Plan::Drop(r)) => return Decision::Drop(r),
        Err(_) => return Decision::Pass,
    };
    let plan = plan_output_parsed(prefix, packet_len, &t, table, policy, now);
    apply_parsed(prefix, &t, plan, l4)
}

/// [`plan_input`] and [`apply`].
pub fn input<S: Store>(
    prefix: &mut [u8],
    packet_len: usize,
    table: &mut NatTable<S>,
    now: u64,
) -> Decision {
    let Ok(t) = ip::transport_in(prefix, packet_len) else {
        return Decision::Pass;
    };
    let plan = plan_input_parsed(prefix, &t, table, now);
    apply_parsed(prefix, &t, plan, L4Sum::Complete)
}

/// The shared rule engine ([`super::rules`] with [`super::policy`]'s proxy
/// configuration, as the socket filter uses them) as the IP filter's
/// [`Policy`]. At the IP layer:
/// - there is no process: rules are evaluated for pid 0 and an empty name, so
///   rules that select a process never match (and `exclude_process` ones do);
/// - rules are evaluated with the packet's protocol (TCP or UDP; nothing else
///   is redirected): a `proxy` rule with protocol `any` redirects both, one
///   with `tcp` or `udp` only that protocol;
/// - a `block` rule refuses a new flow: its opening packets (TCP SYN, UDP
///   datagrams) are dropped and counted ([`DropReason::Blocked`]), and so are
///   the mid-flow TCP packets of connections it meets already open
///   ([`DropReason::Untracked`]: the filter cannot tell them from expired
///   redirected flows);
/// - the proxy must be of the packet's family (no IPv4-mapped translation).
#[derive(Debug)]
pub struct RulesPolicy<'a, R, I> {
    /// Filtering switched on.
    pub enabled: bool,
    /// The rules.
    pub rules: &'a super::rules::RuleSet<R, I>,
    /// The proxy endpoints.
    pub proxies: &'a super::policy::Proxies,
}

impl<R, I> Policy for RulesPolicy<'_, R, I>
where
    R: AsRef<[super::rules::Rule]>,
    I: AsRef<[super::rules::IndexEntry]> + AsMut<[super::rules::IndexEntry]>,
{
    fn new_flow(&self, protocol: u8, _src: &Endpoint, dst: &Endpoint) -> NewFlow {
        if protocol != proto::TCP && protocol != proto::UDP {
            return NewFlow::Leave;
        }
        let a = dst.addr;
        let d = super::policy::decide(
            self.enabled,
            self.rules,
            self.proxies,
            a.family(),
            &super::rules::Conn {
                dst: super::addr::Endpoint::new(a, dst.port),
                pid: 0,
                name: b"",
                protocol,
            },
        );
        match d {
            super::policy::Connect::Redirect { to, .. } => match (to.addr, dst.addr) {
                (super::addr::IpAddr::V4(p), IpAddr::V4(_)) => NewFlow::Redirect(Endpoint {
                    addr: IpAddr::V4(p),
                    port: to.port,
                }),
                (super::addr::IpAddr::V6(p), IpAddr::V6(_)) if to.addr.v4_mapped().is_none() => {
                    NewFlow::Redirect(Endpoint {
                        addr: IpAddr::V6(p),
                        port: to.port,
                    })
                }
                _ => NewFlow::Leave,
            },
            super::policy::Connect::Block { .. } => NewFlow::Block,
            super::policy::Connect::Pass(_) => NewFlow::Leave,
        }
    }

    fn is_proxy(&self, addr: &IpAddr) -> bool {
        self.is_proxy_either(addr, addr)
    }

    fn is_proxy_either(&self, a: &IpAddr, b: &IpAddr) -> bool {
        proxies_contain_either(self.proxies, a, b)
    }
}

/// True when `a` or `b` is one of `proxies`' addresses: each proxy address is
/// made canonical once and compared with both addresses as they are
/// (`canonical(a) == p` without converting `a`).
#[inline(always)]
fn proxies_contain_either(proxies: &super::policy::Proxies, a: &IpAddr, b: &IpAddr) -> bool {
    [proxies.v4, proxies.v6].iter().flatten().any(|p| {
        let p = p.addr.canonical();
        is_canonically(a, &p) || is_canonically(b, &p)
    })
}

/// True when `a`, made canonical (IPv4-mapped IPv6 as IPv4), equals `p`
/// (canonical already).
fn is_canonically(a: &IpAddr, p: &super::addr::IpAddr) -> bool {
    use super::addr::IpAddr;
    match (a, p) {
        (IpAddr::V4(x), IpAddr::V4(y)) => x == y,
        (IpAddr::V6(x), IpAddr::V6(y)) => x == y,
        // IPv4-mapped (::ffff:a.b.c.d) equal to the IPv4 proxy.
        (IpAddr::V6(x), IpAddr::V4(y)) => match x.split_first_chunk::<12>() {
            Some((head, tail)) => {
                *head == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff] && tail == y.as_slice()
            }
            None => false,
        },
        (IpAddr::V4(_), IpAddr::V6(_)) => false,
    }
}
