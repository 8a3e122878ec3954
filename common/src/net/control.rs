//! The control protocol between user space (`prxctl`) and the prx kexts, carried
//! over a privileged kern_control socket as socket options.
//!
//! Every message, in both directions, starts with an 8-byte header:
//!
//! ```text
//! 0     version   VERSION (1)
//! 1     op        the socket option number (Op)
//! 2..4  reserved  0
//! 4..8  length    total length of the message including the header, big-endian
//! ```
//!
//! - `setsockopt(opt, buf, len)`: `buf` is one message whose length field equals
//!   `len` exactly and whose op equals `opt`.
//! - `getsockopt(opt, buf, &len)`: in/out. On entry `buf` holds a request message
//!   (its exact length per op, at most `len`); on return a response message whose
//!   length is reported in `len`. A response that does not fit the caller's buffer
//!   is an error ([`Error::NoSpace`]); the reported length never exceeds the given one.
//!
//! Anything malformed — truncated, wrong version, unknown op, a length off in
//! either direction, non-zero reserved bytes, invalid fields — is rejected with
//! an [`Error`] before anything changes. All integers are big-endian.
//!
//! Statistics are an open list of `(id, value)` counters ([`stat`]), so the
//! socket filter and the IP filter report through one message and readers
//! ignore ids they do not know.

use super::addr::{Endpoint, IpAddr};
pub use super::kextlog::LogLevel;
use super::origdst::Original;
use super::policy::Proxies;
use super::rules::{Action, Cidr, MAX_NAME, MAX_RULES, ProcName, ProcSel, Protocol, Rule};
use super::wire::proto;
use crate::kpi::errno::{E2BIG, EINVAL, EMSGSIZE, Errno};

/// The protocol version.
pub const VERSION: u8 = 1;
/// Header length.
pub const HEADER_LEN: usize = 8;
/// The kern_control name of the socket filter's control.
pub const CONTROL_NAME: &str = "net.prx.kext.SocketFilter.control";
/// The kern_control name of the IP filter's control (same protocol; its
/// `Lookup` answers from the NAT table, with pid 0 and rule [`RULE_UNKNOWN`]).
pub const IP_CONTROL_NAME: &str = "net.prx.kext.IPFilter.control";
/// The rule number a lookup reports when the kext does not know it (the IP
/// filter's NAT flows do not record the rule that created them).
pub const RULE_UNKNOWN: u32 = u32::MAX;
/// Length of an encoded [`Endpoint`].
pub const ENDPOINT_LEN: usize = 20;
/// Length of an encoded [`Rule`].
pub const RULE_LEN: usize = 48;
/// Length of the rules message's fixed part (after the header).
pub const RULES_FIXED: usize = 8;
/// Length of a statistics entry.
pub const STAT_LEN: usize = 12;

/// Operations; each is also the socket option number it travels as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    /// set: replace the rule set atomically.
    SetRules = 1,
    /// set: the proxy addresses and the proxy's identity.
    SetProxies = 2,
    /// set: enable or disable filtering.
    SetEnabled = 3,
    /// set: the IP filter's NAT timeouts ([`Timeouts`]; the socket filter refuses it).
    SetTimeouts = 4,
    /// set: the kext's log level (body: level u8 as [`LogLevel`], 3 zero bytes).
    SetLogLevel = 5,
    /// get: statistics.
    GetStats = 16,
    /// get: the original destination of a client address.
    Lookup = 17,
    /// get: enabled flag, rule count, rules generation, proxies.
    GetStatus = 18,
    /// get: the installed rule set, in `SetRules`' layout (op `GetRules`), so
    /// that `prxctl rules show` can print it as a rules file.
    GetRules = 19,
    /// get: the per-boot key of the PROXY v2 header's authenticating TLV
    /// (`proxy_v2::AuthKey`, 32 bytes; the socket filter only — the control
    /// is privileged, so only root gets it).
    GetAuthKey = 20,
}

impl Op {
    /// The op with this number.
    pub fn from_u8(v: u8) -> Option<Op> {
        [
            Op::SetRules,
            Op::SetProxies,
            Op::SetEnabled,
            Op::SetTimeouts,
            Op::SetLogLevel,
            Op::GetStats,
            Op::Lookup,
            Op::GetStatus,
            Op::GetRules,
            Op::GetAuthKey,
        ]
        .into_iter()
        .find(|o| *o as u8 == v)
    }
}

/// Why a message was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// Shorter than its header or than its declared/required length.
    Truncated,
    /// Version is not [`VERSION`].
    Version,
    /// Unknown op, or an op not valid in this direction / for this option.
    Op,
    /// Length field differs from the buffer (set) or the op's fixed size.
    Length,
    /// Reserved bytes are not zero.
    Reserved,
    /// A field has an invalid value (family, prefix, action, port range, …).
    Field,
    /// More rules than [`MAX_RULES`].
    TooMany,
    /// The response does not fit the caller's buffer.
    NoSpace,
}

impl Error {
    /// The errno the kext returns for it.
    pub fn errno(self) -> Errno {
        match self {
            Error::NoSpace => EMSGSIZE,
            Error::TooMany => E2BIG,
            _ => EINVAL,
        }
    }
}

/// Counter ids of the statistics message. Ids below 0x100 are the socket
/// filter's, 0x100.. the IP filter's (issue 6); 0x200 + reason are drops by reason.
pub mod stat {
    /// Connections the socket filter saw in `connect_out`.
    pub const CONN_SEEN: u32 = 1;
    /// Connections redirected to the proxy.
    pub const CONN_REDIRECTED: u32 = 2;
    /// Connections passed unchanged (rules, disabled, proxy's own, no proxy).
    pub const CONN_PASSED: u32 = 3;
    /// Redirects that failed (the connection was refused cleanly).
    pub const CONN_FAILED: u32 = 4;
    /// Connections refused by a `block` rule.
    pub const CONN_BLOCKED: u32 = 5;
    /// PROXY v2 headers injected.
    pub const PROXY_HEADERS: u32 = 6;
    /// Sockets currently attached.
    pub const SOCKETS_ATTACHED: u32 = 7;
    /// Original destinations not remembered (table full).
    pub const ORIGDST_FULL: u32 = 8;
    /// Rule sets installed since start (the generation).
    pub const RULES_GENERATION: u32 = 9;
    /// Sockets left unfiltered because their cookie could not be allocated
    /// (the socket filter's fail-open).
    pub const SOCKETS_UNFILTERED: u32 = 10;
    /// IP filter: flows in the NAT table.
    pub const IP_FLOWS: u32 = 0x100;
    /// IP filter: packets redirected.
    pub const IP_REDIRECTED_PACKETS: u32 = 0x101;
    /// IP filter: packets rewritten back on the reply path.
    pub const IP_REPLY_PACKETS: u32 = 0x102;
    /// IP filter: flows the NAT tables can hold (both families).
    pub const IP_FLOW_CAPACITY: u32 = 0x103;
    /// IP filter: IPv4 and IPv6 filters attached.
    pub const IP_FILTERS_ATTACHED: u32 = 0x104;
    /// IP filter: TCP flows without packets expire after this many seconds.
    pub const IP_TCP_IDLE_S: u32 = 0x105;
    /// IP filter: TCP flows in a transitory state (SYN sent, closing) expire
    /// after this many seconds without packets.
    pub const IP_TCP_CLOSED_S: u32 = 0x106;
    /// IP filter: UDP flows without packets expire after this many seconds.
    pub const IP_UDP_IDLE_S: u32 = 0x107;
    /// IP filter: NAT flows removed because they expired.
    pub const IP_FLOWS_EXPIRED: u32 = 0x108;
    /// IP filter: unestablished NAT flows evicted early to make room.
    pub const IP_FLOWS_EVICTED: u32 = 0x109;
    /// IP filter: drops, by reason: `IP_DROP_BASE + reason` (the order of
    /// `common::net::filter::DropReason::ALL`).
    pub const IP_DROP_BASE: u32 = 0x200;
    /// Both kexts: the log level (`LogLevel` as a number).
    pub const LOG_LEVEL: u32 = 0x300;
    /// Both kexts: log lines dropped by the rate limiter since start.
    pub const LOG_SUPPRESSED: u32 = 0x301;

    /// A counter's name, for every report (`prxctl status`, the emulator's):
    /// `StatName(id).to_string()`; ids nobody named show as `counter 0x…`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct StatName(pub u32);

    impl core::fmt::Display for StatName {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            let id = self.0;
            let fixed = match id {
                CONN_SEEN => "connections seen",
                CONN_REDIRECTED => "connections redirected",
                CONN_PASSED => "connections passed",
                CONN_FAILED => "redirects failed",
                CONN_BLOCKED => "connections blocked",
                PROXY_HEADERS => "PROXY v2 headers sent",
                SOCKETS_ATTACHED => "sockets attached",
                ORIGDST_FULL => "original destinations dropped (table full)",
                RULES_GENERATION => "rule sets installed",
                SOCKETS_UNFILTERED => "sockets left unfiltered (no memory for the cookie)",
                IP_FLOWS => "NAT flows",
                IP_FLOW_CAPACITY => "NAT flow capacity",
                IP_REDIRECTED_PACKETS => "packets redirected",
                IP_REPLY_PACKETS => "reply packets rewritten",
                IP_FILTERS_ATTACHED => "IP filters attached",
                IP_TCP_IDLE_S => "NAT timeout: TCP idle (s)",
                IP_TCP_CLOSED_S => "NAT timeout: TCP SYN-sent/closing (s)",
                IP_FLOWS_EXPIRED => "NAT flows expired",
                IP_FLOWS_EVICTED => "NAT flows evicted early (unestablished)",
                IP_UDP_IDLE_S => "NAT timeout: UDP idle (s)",
                LOG_LEVEL => "log level (0 off, 1 decisions, 2 debug)",
                LOG_SUPPRESSED => "log lines suppressed (rate limit)",
                _ => "",
            };
            if !fixed.is_empty() {
                return f.write_str(fixed);
            }
            let reason = id
                .checked_sub(IP_DROP_BASE)
                .filter(|r| *r < 0x100)
                .and_then(|r| usize::try_from(r).ok());
            match reason {
                Some(r) => match crate::net::filter::DropReason::ALL.get(r) {
                    Some(d) => write!(f, "packets dropped: {}", d.name()),
                    None => write!(
                        f,
                        "packets dropped: reason {}",
                        crate::net::kextlog::Dec::u(r)
                    ),
                },
                None => write!(f, "counter 0x{}", crate::net::kextlog::Hex(u64::from(id))),
            }
        }
    }
}

// ---- cursor helpers (never panic) ----

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        let (a, b) = self.buf.split_at_checked(n).ok_or(Error::Truncated)?;
        self.buf = b;
        Ok(a)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        self.take(N)?.try_into().map_err(|_| Error::Truncated)
    }
    fn u8(&mut self) -> Result<u8, Error> {
        Ok(u8::from_be_bytes(self.array()?))
    }
    fn u16(&mut self) -> Result<u16, Error> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, Error> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    fn zero(&mut self, n: usize) -> Result<(), Error> {
        if self.take(n)?.iter().all(|b| *b == 0) {
            Ok(())
        } else {
            Err(Error::Reserved)
        }
    }
}

struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), Error> {
        let end = self.pos.checked_add(bytes.len()).ok_or(Error::NoSpace)?;
        let dst = self.buf.get_mut(self.pos..end).ok_or(Error::NoSpace)?;
        for (d, s) in dst.iter_mut().zip(bytes) {
            *d = *s;
        }
        self.pos = end;
        Ok(())
    }
}

/// A parsed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The op.
    pub op: Op,
    /// The total length it declares.
    pub len: usize,
}

fn parse_header(buf: &[u8]) -> Result<(Header, Reader<'_>), Error> {
    let mut r = Reader { buf };
    let version = r.u8()?;
    let op = r.u8()?;
    let reserved = r.u16()?;
    let len = r.u32()? as usize;
    if version != VERSION {
        return Err(Error::Version);
    }
    let op = Op::from_u8(op).ok_or(Error::Op)?;
    if reserved != 0 {
        return Err(Error::Reserved);
    }
    if len < HEADER_LEN || len > buf.len() {
        return Err(if len > buf.len() {
            Error::Truncated
        } else {
            Error::Length
        });
    }
    let body = buf.get(HEADER_LEN..len).ok_or(Error::Truncated)?;
    Ok((Header { op, len }, Reader { buf: body }))
}

fn write_header(w: &mut Writer<'_>, op: Op, len: usize) -> Result<(), Error> {
    let len = u32::try_from(len).map_err(|_| Error::NoSpace)?;
    w.put(&[VERSION, op as u8, 0, 0])?;
    w.put(&len.to_be_bytes())
}

// ---- fields ----

fn parse_endpoint(r: &mut Reader<'_>) -> Result<Option<Endpoint>, Error> {
    let fam = r.u8()?;
    r.zero(1)?;
    let port = r.u16()?;
    let addr: [u8; 16] = r.array()?;
    match fam {
        0 if port == 0 && addr == [0; 16] => Ok(None),
        4 => {
            let (v4, rest) = addr.split_at(4);
            if rest.iter().any(|b| *b != 0) {
                return Err(Error::Reserved);
            }
            Ok(Some(Endpoint::new(
                IpAddr::V4(v4.try_into().map_err(|_| Error::Field)?),
                port,
            )))
        }
        6 => Ok(Some(Endpoint::new(IpAddr::V6(addr), port))),
        _ => Err(Error::Field),
    }
}

fn endpoint_bytes(e: Option<&Endpoint>) -> [u8; ENDPOINT_LEN] {
    let mut b = [0u8; ENDPOINT_LEN];
    if let Some(e) = e {
        let fam: u8 = match e.addr {
            IpAddr::V4(_) => 4,
            IpAddr::V6(_) => 6,
        };
        let port = e.port.to_be_bytes();
        let addr = e.addr.to_bytes16();
        for (d, s) in b
            .iter_mut()
            .zip([fam, 0].iter().chain(port.iter()).chain(addr.iter()))
        {
            *d = *s;
        }
    }
    b
}

fn parse_action(kind: u8, flags: u8) -> Result<Action, Error> {
    match (kind, flags) {
        (0, 0) => Ok(Action::Direct),
        (1, f) if f <= 1 => Ok(Action::Proxy { proxy_v2: f == 1 }),
        (2, 0) => Ok(Action::Block),
        _ => Err(Error::Field),
    }
}

fn action_bytes(a: Action) -> [u8; 2] {
    match a {
        Action::Direct => [0, 0],
        Action::Proxy { proxy_v2 } => [1, u8::from(proxy_v2)],
        Action::Block => [2, 0],
    }
}

fn parse_protocol(v: u8) -> Result<Protocol, Error> {
    match v {
        0 => Ok(Protocol::Any),
        proto::TCP => Ok(Protocol::Tcp),
        proto::UDP => Ok(Protocol::Udp),
        _ => Err(Error::Field),
    }
}

fn parse_name(raw: [u8; MAX_NAME]) -> Result<ProcName, Error> {
    // NUL-padded: after the first NUL everything must be NUL; not empty.
    let len = raw.iter().position(|b| *b == 0).unwrap_or(MAX_NAME);
    if len == 0 || raw.get(len..).is_some_and(|t| t.iter().any(|b| *b != 0)) {
        return Err(Error::Field);
    }
    Ok(ProcName::new(&raw))
}

/// Decodes one 48-byte rule record:
///
/// ```text
/// 0      flags    bit0: has destination, bit1: exclude process
/// 1      action   0 direct, 1 proxy, 2 block
/// 2      action flags  bit0 (proxy only): PROXY v2 header
/// 3      process  0 any, 1 pid, 2 name
/// 4..6   port_lo  6..8 port_hi
/// 8      family   4 | 6 (0 without destination)   9 prefix
/// 10     protocol 0 any, 6 TCP, 17 UDP (IP protocol numbers)
/// 11     reserved
/// 12..28 address (IPv4 in the first 4 bytes)
/// 28..32 pid      32..48 name (NUL-padded)
/// ```
///
/// Byte 10 was reserved (zero) before rules had a protocol, so older
/// encoders' records still mean "any protocol".
pub fn parse_rule(rec: &[u8]) -> Result<Rule, Error> {
    if rec.len() != RULE_LEN {
        return Err(Error::Length);
    }
    let mut r = Reader { buf: rec };
    let flags = r.u8()?;
    let action = r.u8()?;
    let action_flags = r.u8()?;
    let proc_kind = r.u8()?;
    let port_lo = r.u16()?;
    let port_hi = r.u16()?;
    let family = r.u8()?;
    let prefix = r.u8()?;
    let protocol = r.u8()?;
    r.zero(1)?;
    let addr: [u8; 16] = r.array()?;
    let pid = r.u32()?;
    let name: [u8; MAX_NAME] = r.array()?;
    if flags & !0b11 != 0 {
        return Err(Error::Reserved);
    }
    let dst = if flags & 1 != 0 {
        let a = match family {
            4 => {
                let (v4, rest) = addr.split_at(4);
                if rest.iter().any(|b| *b != 0) {
                    return Err(Error::Reserved);
                }
                IpAddr::V4(v4.try_into().map_err(|_| Error::Field)?)
            }
            6 => IpAddr::V6(addr),
            _ => return Err(Error::Field),
        };
        let c = Cidr::new(a, prefix).ok_or(Error::Field)?;
        if c.addr != a {
            return Err(Error::Field); // host bits set after the prefix
        }
        Some(c)
    } else {
        if family != 0 || prefix != 0 || addr != [0; 16] {
            return Err(Error::Reserved);
        }
        None
    };
    let process = match proc_kind {
        0 if pid == 0 && name == [0; MAX_NAME] => ProcSel::Any,
        1 if name == [0; MAX_NAME] => ProcSel::Pid(pid),
        2 if pid == 0 => ProcSel::Name(parse_name(name)?),
        0..=2 => return Err(Error::Reserved),
        _ => return Err(Error::Field),
    };
    let rule = Rule {
        protocol: parse_protocol(protocol)?,
        dst,
        port_lo,
        port_hi,
        process,
        exclude_process: flags & 2 != 0,
        action: parse_action(action, action_flags)?,
    };
    rule.validate().map_err(|_| Error::Field)?;
    Ok(rule)
}

/// Encodes one rule record (see [`parse_rule`]).
pub fn rule_bytes(rule: &Rule) -> [u8; RULE_LEN] {
    let mut out = [0u8; RULE_LEN];
    let mut w = Writer {
        buf: &mut out,
        pos: 0,
    };
    let flags = u8::from(rule.dst.is_some()) | (u8::from(rule.exclude_process) << 1);
    let [a, af] = action_bytes(rule.action);
    let (pk, pid, name) = match rule.process {
        ProcSel::Any => (0u8, 0u32, [0u8; MAX_NAME]),
        ProcSel::Pid(p) => (1, p, [0; MAX_NAME]),
        ProcSel::Name(n) => (2, 0, n.padded()),
    };
    let (fam, prefix, addr) = match rule.dst {
        None => (0u8, 0u8, [0u8; 16]),
        Some(c) => (
            if matches!(c.addr, IpAddr::V4(_)) {
                4
            } else {
                6
            },
            c.prefix,
            c.addr.to_bytes16(),
        ),
    };
    // The buffer is exactly RULE_LEN long and the parts add up to it.
    let _ = w.put(&[flags, a, af, pk]);
    let _ = w.put(&rule.port_lo.to_be_bytes());
    let _ = w.put(&rule.port_hi.to_be_bytes());
    let protocol = rule.protocol.number().unwrap_or(0);
    let _ = w.put(&[fam, prefix, protocol, 0]);
    let _ = w.put(&addr);
    let _ = w.put(&pid.to_be_bytes());
    let _ = w.put(&name);
    out
}

// ---- set messages ----

/// A validated `SetRules` message; the records are decoded by [`RulesMsg::rules`].
#[derive(Debug, Clone, Copy)]
pub struct RulesMsg<'a> {
    default: Action,
    records: &'a [u8],
}

impl<'a> RulesMsg<'a> {
    /// Number of rules.
    pub fn count(&self) -> usize {
        self.records.len() / RULE_LEN
    }
    /// The default action.
    pub fn default_action(&self) -> Action {
        self.default
    }
    /// The rules, in order; each decoded (and validated) on the way.
    pub fn rules(&self) -> impl Iterator<Item = Result<Rule, Error>> + 'a {
        self.records.chunks(RULE_LEN).map(parse_rule)
    }
}

/// Longest NAT timeout accepted, in seconds (7 days).
pub const MAX_TIMEOUT_S: u32 = 7 * 24 * 3600;
/// Body length of `SetTimeouts`.
pub const TIMEOUTS_LEN: usize = 12;

/// The IP filter's NAT timeouts, in seconds, each from its RFC minimum
/// ([`Timeouts::MIN`]: 7,440, 240, 120) to [`MAX_TIMEOUT_S`]: body of
/// `SetTimeouts` (three big-endian u32s in this order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Established TCP flows without packets expire after this long.
    pub tcp_idle_s: u32,
    /// TCP flows in a transitory state (SYN sent, or closing after a FIN or
    /// RST) without packets expire after this long.
    pub tcp_closed_s: u32,
    /// UDP flows without packets expire after this long.
    pub udp_idle_s: u32,
}

impl Timeouts {
    /// The smallest timeouts accepted: the RFCs' (`nat::Config::RFC_MIN`).
    pub const MIN: Timeouts = Timeouts {
        tcp_idle_s: 7_440,
        tcp_closed_s: 240,
        udp_idle_s: 120,
    };

    /// The NAT table's configuration (milliseconds).
    pub fn nat_config(&self) -> super::nat::Config {
        let ms = |s: u32| u64::from(s).saturating_mul(1000);
        super::nat::Config {
            tcp_idle_ms: ms(self.tcp_idle_s),
            tcp_transitory_ms: ms(self.tcp_closed_s),
            udp_idle_ms: ms(self.udp_idle_s),
        }
    }

    /// The timeouts of a NAT configuration, in whole seconds (rounded down).
    pub fn of(c: &super::nat::Config) -> Timeouts {
        let s = |ms: u64| u32::try_from(ms / 1000).unwrap_or(u32::MAX);
        Timeouts {
            tcp_idle_s: s(c.tcp_idle_ms),
            tcp_closed_s: s(c.tcp_transitory_ms),
            udp_idle_s: s(c.udp_idle_ms),
        }
    }

    /// True when every timeout is within its bounds.
    pub fn valid(&self) -> bool {
        [
            (self.tcp_idle_s, Self::MIN.tcp_idle_s),
            (self.tcp_closed_s, Self::MIN.tcp_closed_s),
            (self.udp_idle_s, Self::MIN.udp_idle_s),
        ]
        .iter()
        .all(|(t, min)| (*min..=MAX_TIMEOUT_S).contains(t))
    }
}

/// A decoded `setsockopt` message.
#[derive(Debug, Clone, Copy)]
pub enum SetRequest<'a> {
    /// Replace the rules.
    Rules(RulesMsg<'a>),
    /// Set the proxies.
    Proxies(Proxies),
    /// Enable (true) or disable filtering.
    Enabled(bool),
    /// The IP filter's NAT timeouts.
    Timeouts(Timeouts),
    /// The log level.
    LogLevel(LogLevel),
}

/// Decodes a `setsockopt(opt, buf)` message. Every rule record is validated here
/// too, so a message that decodes is one the kext can apply in full.
pub fn decode_set(opt: i32, buf: &[u8]) -> Result<SetRequest<'_>, Error> {
    let (h, mut r) = parse_header(buf)?;
    if h.len != buf.len() {
        return Err(Error::Length);
    }
    if i32::from(h.op as u8) != opt {
        return Err(Error::Op);
    }
    let body_len = r.buf.len();
    match h.op {
        Op::SetRules => Ok(SetRequest::Rules(decode_rules_body(r.buf)?)),
        Op::SetProxies => {
            if body_len != PROXIES_LEN {
                return Err(if body_len < PROXIES_LEN {
                    Error::Truncated
                } else {
                    Error::Length
                });
            }
            let v4 = parse_endpoint(&mut r)?;
            let v6 = parse_endpoint(&mut r)?;
            let flags = r.u32()?;
            let pid = r.u32()?;
            let name: [u8; MAX_NAME] = r.array()?;
            if flags & !0b11 != 0
                || v4.is_some_and(|e| !matches!(e.addr, IpAddr::V4(_)))
                || v6.is_some_and(|e| !matches!(e.addr, IpAddr::V6(_)))
            {
                return Err(Error::Field);
            }
            if (flags & 1 == 0 && pid != 0) || (flags & 2 == 0 && name != [0; MAX_NAME]) {
                return Err(Error::Reserved);
            }
            let name = if flags & 2 != 0 {
                Some(parse_name(name)?)
            } else {
                None
            };
            Ok(SetRequest::Proxies(Proxies {
                v4,
                v6,
                pid: (flags & 1 != 0).then_some(pid),
                name,
            }))
        }
        Op::SetEnabled => {
            if body_len != 4 {
                return Err(if body_len < 4 {
                    Error::Truncated
                } else {
                    Error::Length
                });
            }
            let v = r.u8()?;
            r.zero(3)?;
            match v {
                0 | 1 => Ok(SetRequest::Enabled(v == 1)),
                _ => Err(Error::Field),
            }
        }
        Op::SetTimeouts => {
            if body_len != TIMEOUTS_LEN {
                return Err(if body_len < TIMEOUTS_LEN {
                    Error::Truncated
                } else {
                    Error::Length
                });
            }
            let t = Timeouts {
                tcp_idle_s: r.u32()?,
                tcp_closed_s: r.u32()?,
                udp_idle_s: r.u32()?,
            };
            if !t.valid() {
                return Err(Error::Field);
            }
            Ok(SetRequest::Timeouts(t))
        }
        Op::SetLogLevel => {
            if body_len != 4 {
                return Err(if body_len < 4 {
                    Error::Truncated
                } else {
                    Error::Length
                });
            }
            let v = r.u8()?;
            r.zero(3)?;
            LogLevel::from_u8(v)
                .map(SetRequest::LogLevel)
                .ok_or(Error::Field)
        }
        Op::GetStats | Op::Lookup | Op::GetStatus | Op::GetRules | Op::GetAuthKey => Err(Error::Op),
    }
}

/// The body of `SetRules` (and of the `GetRules` response): default action,
/// count, records; every record validated.
fn decode_rules_body(body: &[u8]) -> Result<RulesMsg<'_>, Error> {
    let mut r = Reader { buf: body };
    let kind = r.u8()?;
    let flags = r.u8()?;
    r.zero(2)?;
    let count = r.u32()? as usize;
    let default = parse_action(kind, flags)?;
    if count > MAX_RULES {
        return Err(Error::TooMany);
    }
    let need = count.checked_mul(RULE_LEN).ok_or(Error::TooMany)?;
    if r.buf.len() != need {
        return Err(if r.buf.len() < need {
            Error::Truncated
        } else {
            Error::Length
        });
    }
    let msg = RulesMsg {
        default,
        records: r.buf,
    };
    for rule in msg.rules() {
        rule?;
    }
    Ok(msg)
}

/// Body length of `SetProxies`: two endpoints, flags, pid, name.
pub const PROXIES_LEN: usize = 2 * ENDPOINT_LEN + 4 + 4 + MAX_NAME;

/// Length of a `SetRules` message with `count` rules.
pub fn rules_len(count: usize) -> Option<usize> {
    count
        .checked_mul(RULE_LEN)?
        .checked_add(HEADER_LEN + RULES_FIXED)
}

/// Encodes `SetRules`; returns the length written.
pub fn encode_rules(default: Action, rules: &[Rule], out: &mut [u8]) -> Result<usize, Error> {
    encode_rules_as(Op::SetRules, default, rules, out)
}

/// Encodes the `GetRules` response: `SetRules`' layout under op `GetRules`
/// ([`Error::NoSpace`] when `out` is too short); returns the length written.
pub fn encode_rules_response(
    default: Action,
    rules: &[Rule],
    out: &mut [u8],
) -> Result<usize, Error> {
    encode_rules_as(Op::GetRules, default, rules, out)
}

/// Decodes a `GetRules` response, every record validated as `SetRules` does.
pub fn decode_rules_response(buf: &[u8]) -> Result<RulesMsg<'_>, Error> {
    let (h, _) = parse_header(buf)?;
    if h.op != Op::GetRules || h.len != buf.len() {
        return Err(Error::Length);
    }
    decode_rules_body(buf.get(HEADER_LEN..).ok_or(Error::Truncated)?)
}

fn encode_rules_as(
    op: Op,
    default: Action,
    rules: &[Rule],
    out: &mut [u8],
) -> Result<usize, Error> {
    if rules.len() > MAX_RULES {
        return Err(Error::TooMany);
    }
    let len = rules_len(rules.len()).ok_or(Error::TooMany)?;
    if len > out.len() {
        return Err(Error::NoSpace);
    }
    let mut w = Writer { buf: out, pos: 0 };
    write_header(&mut w, op, len)?;
    let [k, f] = action_bytes(default);
    w.put(&[k, f, 0, 0])?;
    w.put(&(rules.len() as u32).to_be_bytes())?;
    for r in rules {
        w.put(&rule_bytes(r))?;
    }
    Ok(w.pos)
}

/// Encodes `SetProxies`; returns the length written.
pub fn encode_proxies(p: &Proxies, out: &mut [u8]) -> Result<usize, Error> {
    let mut w = Writer { buf: out, pos: 0 };
    write_header(&mut w, Op::SetProxies, HEADER_LEN + PROXIES_LEN)?;
    w.put(&endpoint_bytes(p.v4.as_ref()))?;
    w.put(&endpoint_bytes(p.v6.as_ref()))?;
    let flags = u32::from(p.pid.is_some()) | (u32::from(p.name.is_some()) << 1);
    w.put(&flags.to_be_bytes())?;
    w.put(&p.pid.unwrap_or(0).to_be_bytes())?;
    w.put(&p.name.map(|n| n.padded()).unwrap_or([0; MAX_NAME]))?;
    Ok(w.pos)
}

/// Encodes `SetEnabled`; returns the length written.
pub fn encode_enabled(on: bool, out: &mut [u8]) -> Result<usize, Error> {
    let mut w = Writer { buf: out, pos: 0 };
    write_header(&mut w, Op::SetEnabled, HEADER_LEN + 4)?;
    w.put(&[u8::from(on), 0, 0, 0])?;
    Ok(w.pos)
}

/// Encodes `SetLogLevel`; returns the length written.
pub fn encode_log_level(level: LogLevel, out: &mut [u8]) -> Result<usize, Error> {
    let mut w = Writer { buf: out, pos: 0 };
    write_header(&mut w, Op::SetLogLevel, HEADER_LEN + 4)?;
    w.put(&[level as u8, 0, 0, 0])?;
    Ok(w.pos)
}

/// Encodes `SetTimeouts`; returns the length written.
pub fn encode_timeouts(t: &Timeouts, out: &mut [u8]) -> Result<usize, Error> {
    let mut w = Writer { buf: out, pos: 0 };
    write_header(&mut w, Op::SetTimeouts, HEADER_LEN + TIMEOUTS_LEN)?;
    w.put(&t.tcp_idle_s.to_be_bytes())?;
    w.put(&t.tcp_closed_s.to_be_bytes())?;
    w.put(&t.udp_idle_s.to_be_bytes())?;
    Ok(w.pos)
}

// ---- get requests and responses ----

/// A decoded `getsockopt` request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GetRequest {
    /// Statistics.
    Stats,
    /// The original destination of this client address.
    Lookup(Endpoint),
    /// Status.
    Status,
    /// The installed rules.
    Rules,
    /// The PROXY v2 authentication key.
    AuthKey,
}

/// Length of a `GetAuthKey` response: the key.
pub const AUTH_KEY_RESPONSE_LEN: usize = HEADER_LEN + 32;

/// Encodes a `GetAuthKey` response.
pub fn encode_auth_key_response(
    key: &super::proxy_v2::AuthKey,
    out: &mut [u8],
) -> Result<usize, Error> {
    let mut w = Writer { buf: out, pos: 0 };
    write_header(&mut w, Op::GetAuthKey, AUTH_KEY_RESPONSE_LEN)?;
    w.put(&key.0)?;
    Ok(w.pos)
}

/// Decodes a `GetAuthKey` response.
pub fn decode_auth_key_response(buf: &[u8]) -> Result<super::proxy_v2::AuthKey, Error> {
    let (h, mut r) = parse_header(buf)?;
    if h.op != Op::GetAuthKey || h.len != AUTH_KEY_RESPONSE_LEN || buf.len() != h.len {
        return Err(Error::Length);
    }
    let k: [u8; 32] = r.take(32)?.try_into().map_err(|_| Error::Length)?;
    Ok(super::proxy_v2::AuthKey(k))
}

/// Length of a `Lookup` request.
pub const LOOKUP_REQUEST_LEN: usize = HEADER_LEN + ENDPOINT_LEN;
/// Length of a `Lookup` response: found flag (4), original destination, pid, rule.
pub const LOOKUP_RESPONSE_LEN: usize = HEADER_LEN + 4 + ENDPOINT_LEN + 4 + 4;
/// Length of a `Status` response: flags (4), rule count, generation, attached, clients, proxies.
pub const STATUS_RESPONSE_LEN: usize = HEADER_LEN + 4 + 4 + 4 + 4 + 4 + PROXIES_LEN;

/// Decodes the request in a `getsockopt(opt, buf)` buffer (which may be longer
/// than the request: it also holds the response).
pub fn decode_get(opt: i32, buf: &[u8]) -> Result<GetRequest, Error> {
    let (h, mut r) = parse_header(buf)?;
    if i32::from(h.op as u8) != opt {
        return Err(Error::Op);
    }
    let want = match h.op {
        Op::GetStats | Op::GetStatus | Op::GetRules | Op::GetAuthKey => HEADER_LEN,
        Op::Lookup => LOOKUP_REQUEST_LEN,
        _ => return Err(Error::Op),
    };
    if h.len != want {
        return Err(Error::Length);
    }
    match h.op {
        Op::GetStats => Ok(GetRequest::Stats),
        Op::GetStatus => Ok(GetRequest::Status),
        Op::GetRules => Ok(GetRequest::Rules),
        Op::GetAuthKey => Ok(GetRequest::AuthKey),
        _ => match parse_endpoint(&mut r)? {
            Some(e) => Ok(GetRequest::Lookup(e)),
            None => Err(Error::Field),
        },
    }
}

/// Encodes a get request; returns its length.
pub fn encode_get(req: &GetRequest, out: &mut [u8]) -> Result<usize, Error> {
    let mut w = Writer { buf: out, pos: 0 };
    match req {
        GetRequest::Stats => write_header(&mut w, Op::GetStats, HEADER_LEN)?,
        GetRequest::Status => write_header(&mut w, Op::GetStatus, HEADER_LEN)?,
        GetRequest::Rules => write_header(&mut w, Op::GetRules, HEADER_LEN)?,
        GetRequest::AuthKey => write_header(&mut w, Op::GetAuthKey, HEADER_LEN)?,
        GetRequest::Lookup(e) => {
            write_header(&mut w, Op::Lookup, LOOKUP_REQUEST_LEN)?;
            w.put(&endpoint_bytes(Some(e)))?;
        }
    }
    Ok(w.pos)
}

/// Encodes a `Lookup` response into `out` (at most `out.len()` bytes).
pub fn encode_lookup_response(found: Option<&Original>, out: &mut [u8]) -> Result<usize, Error> {
    let mut w = Writer { buf: out, pos: 0 };
    write_header(&mut w, Op::Lookup, LOOKUP_RESPONSE_LEN)?;
    w.put(&u32::from(found.is_some()).to_be_bytes())?;
    w.put(&endpoint_bytes(found.map(|o| &o.dst)))?;
    w.put(&found.map(|o| o.pid).unwrap_or(0).to_be_bytes())?;
    w.put(&found.map(|o| o.rule).unwrap_or(0).to_be_bytes())?;
    Ok(w.pos)
}

/// Decodes a `Lookup` response.
pub fn decode_lookup_response(buf: &[u8]) -> Result<Option<Original>, Error> {
    let (h, mut r) = parse_header(buf)?;
    if h.op != Op::Lookup || h.len != LOOKUP_RESPONSE_LEN || buf.len() != h.len {
        return Err(Error::Length);
    }
    let found = r.u32()?;
    let dst = parse_endpoint(&mut r)?;
    let pid = r.u32()?;
    let rule = r.u32()?;
    match (found, dst) {
        (0, None) => Ok(None),
        (1, Some(dst)) => Ok(Some(Original { dst, pid, rule })),
        _ => Err(Error::Field),
    }
}

/// What a `Status` response carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Status {
    /// Filtering enabled.
    pub enabled: bool,
    /// Rules installed.
    pub rules: u32,
    /// Rule sets installed since start.
    pub generation: u32,
    /// Sockets attached.
    pub attached: u32,
    /// Control clients connected.
    pub clients: u32,
    /// The proxies.
    pub proxies: Proxies,
}

/// Encodes a `Status` response.
pub fn encode_status(s: &Status, out: &mut [u8]) -> Result<usize, Error> {
    let mut w = Writer { buf: out, pos: 0 };
    write_header(&mut w, Op::GetStatus, STATUS_RESPONSE_LEN)?;
    w.put(&u32::from(s.enabled).to_be_bytes())?;
    for v in [s.rules, s.generation, s.attached, s.clients] {
        w.put(&v.to_be_bytes())?;
    }
    let mut p = [0u8; HEADER_LEN + PROXIES_LEN];
    encode_proxies(&s.proxies, &mut p)?;
    w.put(p.get(HEADER_LEN..).ok_or(Error::NoSpace)?)?;
    Ok(w.pos)
}

/// Decodes a `Status` response.
pub fn decode_status(buf: &[u8]) -> Result<Status, Error> {
    let (h, mut r) = parse_header(buf)?;
    if h.op != Op::GetStatus || h.len != STATUS_RESPONSE_LEN || buf.len() != h.len {
        return Err(Error::Length);
    }
    let flags = r.u32()?;
    let (rules, generation, attached, clients) = (r.u32()?, r.u32()?, r.u32()?, r.u32()?);
    let mut p = [0u8; HEADER_LEN + PROXIES_LEN];
    let mut w = Writer {
        buf: &mut p,
        pos: 0,
    };
    write_header(&mut w, Op::SetProxies, HEADER_LEN + PROXIES_LEN)?;
    w.put(r.take(PROXIES_LEN)?)?;
    let SetRequest::Proxies(proxies) = decode_set(Op::SetProxies as i32, &p)? else {
        return Err(Error::Op);
    };
    if flags > 1 {
        return Err(Error::Field);
    }
    Ok(Status {
        enabled: flags == 1,
        rules,
        generation,
        attached,
        clients,
        proxies,
    })
}

/// Encodes a statistics response from `(id, value)` counters.
pub fn encode_stats(counters: &[(u32, u64)], out: &mut [u8]) -> Result<usize, Error> {
    let len = counters
        .len()
        .checked_mul(STAT_LEN)
        .and_then(|n| n.checked_add(HEADER_LEN + 4))
        .ok_or(Error::NoSpace)?;
    if len > out.len() {
        return Err(Error::NoSpace);
    }
    let mut w = Writer { buf: out, pos: 0 };
    write_header(&mut w, Op::GetStats, len)?;
    w.put(&(counters.len() as u32).to_be_bytes())?;
    for (id, v) in counters {
        w.put(&id.to_be_bytes())?;
        w.put(&v.to_be_bytes())?;
    }
    Ok(w.pos)
}

/// Most counters one statistics response carries ([`StatsWriter`]'s capacity).
pub const MAX_STATS: usize = 32;

/// Collects `(id, value)` counters for a statistics response, in the order
/// they are pushed; counters past [`MAX_STATS`] are left out.
#[derive(Debug, Clone)]
pub struct StatsWriter {
    out: [(u32, u64); MAX_STATS],
    n: usize,
}

impl Default for StatsWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl StatsWriter {
    /// No counters yet.
    pub const fn new() -> StatsWriter {
        StatsWriter {
            out: [(0, 0); MAX_STATS],
            n: 0,
        }
    }

    /// Adds counter `id`.
    pub fn push(&mut self, id: u32, value: u64) {
        if let Some(o) = self.out.get_mut(self.n) {
            *o = (id, value);
            self.n = self.n.saturating_add(1);
        }
    }

    /// Adds counter `id` from a count (saturating at `u64::MAX`).
    pub fn push_count(&mut self, id: u32, value: usize) {
        self.push(id, u64::try_from(value).unwrap_or(u64::MAX));
    }

    /// Adds the drop counters: reason `r` under `stat::IP_DROP_BASE + r`.
    pub fn push_drops(
        &mut self,
        drops: impl Iterator<Item = (crate::net::filter::DropReason, u64)>,
    ) {
        for (r, v) in drops {
            let id = u32::try_from(r.index())
                .ok()
                .and_then(|i| stat::IP_DROP_BASE.checked_add(i));
            if let Some(id) = id {
                self.push(id, v);
            }
        }
    }

    /// The counters pushed.
    pub fn counters(&self) -> &[(u32, u64)] {
        self.out.get(..self.n).unwrap_or(&[])
    }

    /// Encodes the response ([`encode_stats`]).
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, Error> {
        encode_stats(self.counters(), out)
    }
}

/// Event counters named by `stat` ids, fixed at compile time: one atomic per
/// id, counted from any CPU without a lock.
#[derive(Debug)]
pub struct StatCounters<const N: usize> {
    ids: [u32; N],
    values: [core::sync::atomic::AtomicU64; N],
}

impl<const N: usize> StatCounters<N> {
    /// Counters for `ids`, all zero.
    pub const fn new(ids: [u32; N]) -> Self {
        StatCounters {
            ids,
            values: [const { core::sync::atomic::AtomicU64::new(0) }; N],
        }
    }

    /// Adds one to counter `id` (an id not listed is ignored).
    pub fn count(&self, id: u32) {
        if let Some(c) = self
            .ids
            .iter()
            .position(|i| *i == id)
            .and_then(|i| self.values.get(i))
        {
            c.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Each id with its value, in the order given to [`StatCounters::new`].
    pub fn each(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.ids
            .iter()
            .zip(self.values.iter())
            .map(|(id, v)| (*id, v.load(core::sync::atomic::Ordering::Relaxed)))
    }
}

/// Decodes a statistics response; calls `each(id, value)` per counter; returns the count.
pub fn decode_stats(buf: &[u8], mut each: impl FnMut(u32, u64)) -> Result<usize, Error> {
    let (h, mut r) = parse_header(buf)?;
    if h.op != Op::GetStats || buf.len() != h.len {
        return Err(Error::Length);
    }
    let n = r.u32()? as usize;
    if r.buf.len() != n.checked_mul(STAT_LEN).ok_or(Error::Length)? {
        return Err(Error::Length);
    }
    for _ in 0..n {
        let id = r.u32()?;
        let v = u64::from_be_bytes(r.array()?);
        each(id, v);
    }
    Ok(n)
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
    use proptest::prelude::*;

    #[test]
    fn stats_writer_keeps_order_and_capacity() {
        let mut w = StatsWriter::new();
        w.push(stat::IP_FLOWS, 3);
        w.push_count(stat::IP_FLOW_CAPACITY, usize::MAX);
        w.push_drops(
            crate::net::filter::DropReason::ALL
                .iter()
                .map(|r| (*r, r.index() as u64)),
        );
        let c = w.counters();
        assert_eq!(c[0], (stat::IP_FLOWS, 3));
        assert_eq!(c[1], (stat::IP_FLOW_CAPACITY, u64::MAX));
        assert_eq!(c.len(), 2 + crate::net::filter::DropReason::ALL.len());
        for (i, (id, v)) in c[2..].iter().enumerate() {
            assert_eq!((*id, *v), (stat::IP_DROP_BASE + i as u32, i as u64));
        }
        let mut buf = [0u8; 1024];
        let n = w.encode(&mut buf).unwrap();
        let mut back = Vec::new();
        decode_stats(&buf[..n], |id, v| back.push((id, v))).unwrap();
        assert_eq!(back, c);
        for i in 0..2 * MAX_STATS {
            w.push(i as u32, 0);
        }
        assert_eq!(w.counters().len(), MAX_STATS);
    }

    #[test]
    fn stat_counters_count_listed_ids() {
        let c = StatCounters::new([stat::CONN_SEEN, stat::CONN_PASSED]);
        c.count(stat::CONN_PASSED);
        c.count(stat::CONN_PASSED);
        c.count(stat::CONN_BLOCKED);
        let v: Vec<_> = c.each().collect();
        assert_eq!(v, [(stat::CONN_SEEN, 0), (stat::CONN_PASSED, 2)]);
    }

    fn sample_rules() -> Vec<Rule> {
        vec![
            Rule {
                dst: Cidr::new(IpAddr::V4([203, 0, 113, 0]), 24),
                port_lo: 80,
                port_hi: 443,
                action: Action::Proxy { proxy_v2: true },
                ..Rule::default()
            },
            Rule {
                protocol: Protocol::Tcp,
                process: ProcSel::Name(ProcName::new(b"curl")),
                exclude_process: true,
                action: Action::Block,
                ..Rule::default()
            },
            Rule {
                dst: Cidr::new(
                    IpAddr::V6([0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
                    32,
                ),
                process: ProcSel::Pid(7),
                protocol: Protocol::Udp,
                ..Rule::default()
            },
        ]
    }

    fn rules_msg() -> Vec<u8> {
        let rules = sample_rules();
        let mut buf = vec![0u8; rules_len(rules.len()).unwrap()];
        let n = encode_rules(Action::Direct, &rules, &mut buf).unwrap();
        assert_eq!(n, buf.len());
        buf
    }

    #[test]
    fn rules_round_trip() {
        let buf = rules_msg();
        let SetRequest::Rules(m) = decode_set(1, &buf).unwrap() else {
            panic!()
        };
        let got: Vec<Rule> = m.rules().map(Result::unwrap).collect();
        assert_eq!(got, sample_rules());
        assert_eq!(m.default_action(), Action::Direct);
    }

    #[test]
    fn log_level_messages_and_stat_names() {
        let mut buf = [0u8; HEADER_LEN + 4];
        for l in [LogLevel::Off, LogLevel::Decisions, LogLevel::Debug] {
            assert_eq!(encode_log_level(l, &mut buf), Ok(HEADER_LEN + 4));
            assert!(matches!(decode_set(5, &buf), Ok(SetRequest::LogLevel(x)) if x == l));
        }
        buf[8] = 3;
        assert_eq!(decode_set(5, &buf).err(), Some(Error::Field));
        buf[8] = 1;
        buf[9] = 1;
        assert_eq!(decode_set(5, &buf).err(), Some(Error::Reserved));
        use stat::StatName;
        assert_eq!(StatName(stat::IP_FLOWS).to_string(), "NAT flows");
        assert_eq!(
            StatName(stat::IP_DROP_BASE + 7).to_string(),
            "packets dropped: blocked by a rule"
        );
        assert_eq!(
            StatName(stat::IP_DROP_BASE + 0x80).to_string(),
            "packets dropped: reason 128"
        );
        assert_eq!(StatName(0x4242).to_string(), "counter 0x4242");
        assert_eq!(
            StatName(stat::LOG_SUPPRESSED).to_string(),
            "log lines suppressed (rate limit)"
        );
    }

    #[test]
    fn get_auth_key_request_and_response() {
        let mut req = [0u8; HEADER_LEN];
        assert_eq!(encode_get(&GetRequest::AuthKey, &mut req), Ok(HEADER_LEN));
        assert_eq!(decode_get(20, &req), Ok(GetRequest::AuthKey));
        assert_eq!(decode_set(20, &req).err(), Some(Error::Op));
        let key = super::super::proxy_v2::AuthKey(core::array::from_fn(|i| i as u8 * 3));
        let mut small = [0u8; AUTH_KEY_RESPONSE_LEN - 1];
        assert_eq!(
            encode_auth_key_response(&key, &mut small),
            Err(Error::NoSpace)
        );
        let mut buf = [0u8; AUTH_KEY_RESPONSE_LEN];
        assert_eq!(
            encode_auth_key_response(&key, &mut buf),
            Ok(AUTH_KEY_RESPONSE_LEN)
        );
        assert_eq!(decode_auth_key_response(&buf), Ok(key));
        assert_eq!(
            decode_auth_key_response(&buf[..AUTH_KEY_RESPONSE_LEN - 1]),
            Err(Error::Truncated)
        );
        // A status response is not a key.
        assert!(decode_auth_key_response(&req).is_err());
    }

    #[test]
    fn get_rules_request_and_response() {
        let mut req = [0u8; HEADER_LEN];
        assert_eq!(encode_get(&GetRequest::Rules, &mut req), Ok(HEADER_LEN));
        assert_eq!(decode_get(Op::GetRules as i32, &req), Ok(GetRequest::Rules));
        // A request with a body is refused; so is setting op 19.
        let mut long = [0u8; HEADER_LEN + 4];
        long[..HEADER_LEN].copy_from_slice(&req);
        long[7] = (HEADER_LEN + 4) as u8;
        assert_eq!(decode_get(19, &long), Err(Error::Length));
        assert_eq!(decode_set(19, &req).err(), Some(Error::Op));
        let rules = sample_rules();
        let len = rules_len(rules.len()).unwrap();
        let mut short = vec![0u8; len - 1];
        assert_eq!(
            encode_rules_response(Action::Block, &rules, &mut short),
            Err(Error::NoSpace)
        );
        let mut buf = vec![0u8; len + 10];
        let n = encode_rules_response(Action::Block, &rules, &mut buf).unwrap();
        assert_eq!(n, len);
        let m = decode_rules_response(&buf[..n]).unwrap();
        assert_eq!(m.default_action(), Action::Block);
        assert_eq!(m.rules().map(Result::unwrap).collect::<Vec<_>>(), rules);
        // A SetRules message is not a GetRules response.
        assert_eq!(
            decode_rules_response(&rules_msg()).err(),
            Some(Error::Length)
        );
    }

    #[test]
    fn timeouts_round_trip_and_bounds() {
        let t = Timeouts {
            tcp_idle_s: 7440,
            tcp_closed_s: 240,
            udp_idle_s: 300,
        };
        let mut buf = [0u8; HEADER_LEN + TIMEOUTS_LEN];
        assert_eq!(encode_timeouts(&t, &mut buf), Ok(20));
        assert_eq!(&buf[..8], &[1, 4, 0, 0, 0, 0, 0, 20]);
        assert_eq!(&buf[8..], &[0, 0, 0x1d, 0x10, 0, 0, 0, 240, 0, 0, 1, 44]);
        assert_eq!(Timeouts::MIN.nat_config(), crate::net::nat::Config::RFC_MIN);
        let SetRequest::Timeouts(back) = decode_set(4, &buf).unwrap() else {
            panic!("not timeouts")
        };
        assert_eq!(back, t);
        assert_eq!(back.nat_config(), crate::net::nat::Config::DEFAULT);
        assert_eq!(Timeouts::of(&crate::net::nat::Config::DEFAULT), t);
        // Zero and more than a week are refused, as are wrong lengths and ops.
        for (at, v) in [
            (8, 0u32),
            (12, 0),
            (16, 0),
            (8, MAX_TIMEOUT_S + 1),
            (8, 7439),
            (12, 239),
            (16, 119),
        ] {
            let mut b = buf;
            b[at..at + 4].copy_from_slice(&v.to_be_bytes());
            assert_eq!(decode_set(4, &b).unwrap_err(), Error::Field, "{at} {v}");
        }
        let mut b = buf;
        b[8..12].copy_from_slice(&MAX_TIMEOUT_S.to_be_bytes());
        assert!(decode_set(4, &b).is_ok());
        assert_eq!(decode_set(4, &buf[..19]).unwrap_err(), Error::Truncated);
        assert_eq!(decode_set(3, &buf).unwrap_err(), Error::Op);
        let mut long = buf.to_vec();
        long.extend([0, 0, 0, 0]);
        long[7] = 24;
        assert_eq!(decode_set(4, &long).unwrap_err(), Error::Length);
        assert_eq!(decode_get(4, &buf).unwrap_err(), Error::Op);
    }

    #[test]
    fn every_malformation_is_named() {
        let buf = rules_msg();
        assert_eq!(decode_set(1, &buf[..5]).unwrap_err(), Error::Truncated);
        let mut v = buf.clone();
        v[0] = 2;
        assert_eq!(decode_set(1, &v).unwrap_err(), Error::Version);
        let mut v = buf.clone();
        v[1] = 99;
        assert_eq!(decode_set(1, &v).unwrap_err(), Error::Op);
        assert_eq!(decode_set(2, &buf).unwrap_err(), Error::Op);
        let mut long = buf.clone();
        long.push(0);
        assert_eq!(
            decode_set(1, &long).unwrap_err(),
            Error::Length,
            "buffer one longer than the length field"
        );
        assert_eq!(
            decode_set(1, &buf[..buf.len() - 1]).unwrap_err(),
            Error::Truncated,
            "one shorter"
        );
        let mut v = buf.clone();
        v[2] = 1;
        assert_eq!(decode_set(1, &v).unwrap_err(), Error::Reserved);
        let mut v = buf.clone();
        v[HEADER_LEN + RULES_FIXED + 9] = 33; // prefix of rule 0
        assert_eq!(decode_set(1, &v).unwrap_err(), Error::Field);
    }

    #[test]
    fn the_protocol_is_byte_10_and_byte_11_stays_reserved() {
        let any = rule_bytes(&sample_rules()[0]);
        assert_eq!(any[10], 0, "any protocol encodes as 0, as before");
        assert_eq!(rule_bytes(&sample_rules()[1])[10], 6);
        assert_eq!(rule_bytes(&sample_rules()[2])[10], 17);
        for (byte, want) in [
            (0u8, Protocol::Any),
            (6, Protocol::Tcp),
            (17, Protocol::Udp),
        ] {
            let mut r = any;
            r[10] = byte;
            assert_eq!(parse_rule(&r).unwrap().protocol, want);
        }
        for byte in [1u8, 2, 5, 7, 16, 18, 58, 255] {
            let mut r = any;
            r[10] = byte;
            assert_eq!(parse_rule(&r).unwrap_err(), Error::Field, "protocol {byte}");
        }
        for byte in [1u8, 6, 17, 255] {
            let mut r = any;
            r[11] = byte;
            assert_eq!(
                parse_rule(&r).unwrap_err(),
                Error::Reserved,
                "byte 11 = {byte}"
            );
        }
        // In a message too.
        let mut v = rules_msg();
        v[HEADER_LEN + RULES_FIXED + 10] = 1;
        assert_eq!(decode_set(1, &v).unwrap_err(), Error::Field);
        let mut v = rules_msg();
        v[HEADER_LEN + RULES_FIXED + 11] = 1;
        assert_eq!(decode_set(1, &v).unwrap_err(), Error::Reserved);
    }

    #[test]
    fn get_requests_and_responses() {
        let client = Endpoint::new(IpAddr::V4([127, 0, 0, 1]), 50000);
        let mut buf = [0u8; 64];
        let n = encode_get(&GetRequest::Lookup(client), &mut buf).unwrap();
        assert_eq!(n, LOOKUP_REQUEST_LEN);
        assert_eq!(decode_get(17, &buf).unwrap(), GetRequest::Lookup(client));
        assert_eq!(decode_get(16, &buf).unwrap_err(), Error::Op);
        let o = Original {
            dst: Endpoint::new(IpAddr::V4([203, 0, 113, 10]), 80),
            pid: 5,
            rule: 0,
        };
        let n = encode_lookup_response(Some(&o), &mut buf).unwrap();
        assert_eq!(decode_lookup_response(&buf[..n]).unwrap(), Some(o));
        assert_eq!(
            encode_lookup_response(Some(&o), &mut buf[..LOOKUP_RESPONSE_LEN - 1]).unwrap_err(),
            Error::NoSpace
        );
        let st = Status {
            enabled: true,
            rules: 3,
            generation: 2,
            attached: 1,
            clients: 1,
            proxies: Proxies {
                v4: Some(client),
                ..Proxies::default()
            },
        };
        let mut sb = [0u8; STATUS_RESPONSE_LEN];
        encode_status(&st, &mut sb).unwrap();
        assert_eq!(decode_status(&sb).unwrap(), st);
        let mut out = [0u8; 64];
        let n = encode_stats(
            &[(stat::CONN_SEEN, 3), (stat::IP_DROP_BASE + 2, 9)],
            &mut out,
        )
        .unwrap();
        let mut seen = vec![];
        decode_stats(&out[..n], |i, v| seen.push((i, v))).unwrap();
        assert_eq!(seen, [(1, 3), (0x202, 9)]);
        assert_eq!(
            encode_stats(&[(1, 1); 5], &mut out).unwrap_err(),
            Error::NoSpace
        );
    }

    fn arb_rule() -> impl Strategy<Value = Rule> {
        let addr = prop_oneof![
            any::<[u8; 4]>().prop_map(IpAddr::V4),
            any::<[u8; 16]>().prop_map(IpAddr::V6),
        ];
        let name =
            proptest::collection::vec(1u8..=255, 1..=MAX_NAME).prop_map(|n| ProcName::new(&n));
        (
            prop_oneof![
                Just(Protocol::Any),
                Just(Protocol::Tcp),
                Just(Protocol::Udp)
            ],
            proptest::option::of((addr, 0u8..=128)),
            any::<(u16, u16)>(),
            prop_oneof![
                Just(ProcSel::Any),
                any::<u32>().prop_map(ProcSel::Pid),
                name.prop_map(ProcSel::Name),
            ],
            any::<bool>(),
            prop_oneof![
                Just(Action::Direct),
                Just(Action::Block),
                any::<bool>().prop_map(|v| Action::Proxy { proxy_v2: v })
            ],
        )
            .prop_map(
                |(protocol, dst, (a, b), process, exclude_process, action)| Rule {
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

    proptest! {
        /// Every valid rule set (protocols included) survives encode and decode.
        #[test]
        fn arbitrary_rules_round_trip(
            rules in proptest::collection::vec(arb_rule(), 0..8),
            default in prop_oneof![Just(Action::Direct), Just(Action::Block)],
        ) {
            let mut buf = vec![0u8; rules_len(rules.len()).unwrap()];
            encode_rules(default, &rules, &mut buf).unwrap();
            let SetRequest::Rules(m) = decode_set(1, &buf).unwrap() else {
                panic!()
            };
            let got: Vec<Rule> = m.rules().map(Result::unwrap).collect();
            prop_assert_eq!(&got, &rules);
            prop_assert_eq!(m.default_action(), default);
            // The GetRules response carries the same set back.
            let mut resp = vec![0u8; rules_len(rules.len()).unwrap()];
            encode_rules_response(default, &rules, &mut resp).unwrap();
            let back = decode_rules_response(&resp).unwrap();
            let got: Vec<Rule> = back.rules().map(Result::unwrap).collect();
            prop_assert_eq!(got, rules);
            prop_assert_eq!(back.default_action(), default);
        }

        /// Arbitrary bytes never panic the decoders.
        #[test]
        fn decoders_never_panic(opt in 0i32..20, bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_set(opt, &bytes);
            let _ = decode_get(opt, &bytes);
            let _ = decode_status(&bytes);
            let _ = decode_lookup_response(&bytes);
            let _ = decode_stats(&bytes, |_, _| {});
            let _ = decode_rules_response(&bytes);
        }

        /// Truncating or extending a valid message by any amount, or changing the
        /// length field by any amount, is rejected.
        #[test]
        fn any_length_change_is_rejected(cut in 1usize..150, extra in 1usize..8, delta in -60i64..60) {
            let buf = rules_msg();
            let cut = cut.min(buf.len());
            prop_assert!(decode_set(1, &buf[..buf.len() - cut]).is_err());
            let mut long = buf.clone();
            long.extend(std::iter::repeat_n(0u8, extra));
            prop_assert!(decode_set(1, &long).is_err());
            if delta != 0 {
                let mut v = buf.clone();
                let len = (buf.len() as i64 + delta).max(0) as u32;
                v[4..8].copy_from_slice(&len.to_be_bytes());
                prop_assert!(decode_set(1, &v).is_err());
            }
        }

        /// Flipping any single byte of a valid message either is rejected or
        /// decodes to a message that re-encodes to exactly those bytes (no byte is ignored).
        #[test]
        fn single_byte_changes_are_rejected_or_meaningful(at in 0usize..160, val in any::<u8>()) {
            let buf = rules_msg();
            let at = at % buf.len();
            let mut v = buf.clone();
            v[at] = val;
            if let Ok(SetRequest::Rules(m)) = decode_set(1, &v) {
                let rules: Vec<Rule> = m.rules().map(Result::unwrap).collect();
                let mut again = vec![0u8; v.len()];
                encode_rules(m.default_action(), &rules, &mut again).unwrap();
                prop_assert_eq!(again, v);
            }
        }
    }
}
