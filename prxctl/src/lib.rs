//! `prxctl`: the user-space control tool of PrxSocketFilter.kext and
//! PrxIPFilter.kext.
//!
//! ```text
//! prxctl [--kext socket|ip] COMMAND   which kext (default: socket); each has its
//!                               own rules, proxies and statistics
//! prxctl rules load FILE        replace the rule set (TOML, see below) atomically
//! prxctl rules check FILE       validate a rule file, change nothing (warns about
//!                               rules the chosen kext can never apply)
//! prxctl rules show             the installed rules, as a file `rules load` takes back
//! prxctl status                 enabled flag, rules, proxies, statistics
//! prxctl lookup ADDR:PORT       the original destination of a redirected client address
//!                               (ip: of the NAT flow whose client endpoint it is)
//! prxctl enable | disable       turn filtering on or off
//! prxctl --kext ip timeouts [--tcp-idle S] [--tcp-closed S] [--udp-idle S]
//!                               (RFC minimums: 7440, 240, 120)
//!                               show or set the IP filter's NAT timeouts
//! prxctl log-level [off|decisions|debug]
//!                               show or set what the kext logs (rate-limited)
//! prxctl proxy set ADDR:PORT [ADDR:PORT] [--pid N] [--name NAME]
//!                               the IPv4 and/or IPv6 proxy, and the proxy's own process
//! ```
//!
//! Everything travels as the versioned, length-checked messages of
//! `common::net::control` over the kext's privileged kern_control
//! (`net.prx.kext.SocketFilter.control`, `net.prx.kext.IPFilter.control`), on macOS through a
//! `PF_SYSTEM`/`SYSPROTO_CONTROL` socket ([`transport::KernCtl`], root only).
//! With `--emu SOCKET` it talks to the KPI emulator's
//! kern_control bridge instead ([`transport::EmuBridge`]), which is how it is
//! tested end to end on Linux.
//!
//! # The rule file
//!
//! See [`rules_file`]: a `default` action and `[[rule]]` tables (`protocol`,
//! `dst`, `ports`, `process` or `pid`, `exclude`, `action`), first match wins;
//! every error names its line and the offending key and value, and a file with
//! an error changes nothing in the kext.

pub mod applicability;
pub mod apply;
pub mod config;
pub mod rules_file;
pub mod show;
pub mod transport;

use std::fmt::Write as _;
use std::io;
use std::net::{IpAddr as StdIp, SocketAddr};

use common::net::addr::{Endpoint, IpAddr};
use common::net::control::{self, GetRequest, Op, Status};
use common::net::origdst::Original;
use common::net::policy::Proxies;
use common::net::rules::{Action, ProcName};
use transport::Transport;

/// Converts a socket address into the protocol's endpoint.
pub fn endpoint(a: SocketAddr) -> Endpoint {
    let ip = match a.ip() {
        StdIp::V4(v) => IpAddr::V4(v.octets()),
        StdIp::V6(v) => IpAddr::V6(v.octets()),
    };
    Endpoint::new(ip, a.port())
}

/// Converts the protocol's endpoint into a socket address.
pub fn socket_addr(e: &Endpoint) -> SocketAddr {
    match e.addr {
        IpAddr::V4(v) => SocketAddr::from((v, e.port)),
        IpAddr::V6(v) => SocketAddr::from((v, e.port)),
    }
}

fn proto(e: control::Error) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("control protocol: {e:?}"),
    )
}

/// Replaces the rule set.
pub fn load_rules(t: &mut dyn Transport, f: &rules_file::RuleFile) -> io::Result<()> {
    let len = control::rules_len(f.rules.len()).ok_or_else(|| proto(control::Error::TooMany))?;
    let mut buf = vec![0u8; len];
    let n = control::encode_rules(f.default, &f.rules, &mut buf).map_err(proto)?;
    t.setopt(Op::SetRules as i32, buf.get(..n).unwrap_or(&buf))
}

/// Enables or disables filtering.
pub fn set_enabled(t: &mut dyn Transport, on: bool) -> io::Result<()> {
    let mut buf = [0u8; control::HEADER_LEN + 4];
    let n = control::encode_enabled(on, &mut buf).map_err(proto)?;
    t.setopt(Op::SetEnabled as i32, buf.get(..n).unwrap_or(&buf))
}

/// Sets the IP filter's NAT timeouts (validated here first: from the RFCs'
/// minimum to `MAX_TIMEOUT_S` seconds each, as the kext requires).
pub fn set_timeouts(t: &mut dyn Transport, to: &control::Timeouts) -> io::Result<()> {
    let min = control::Timeouts::MIN;
    for (name, v, lo, rfc) in [
        ("--tcp-idle", to.tcp_idle_s, min.tcp_idle_s, "RFC 5382"),
        (
            "--tcp-closed",
            to.tcp_closed_s,
            min.tcp_closed_s,
            "RFC 5382",
        ),
        ("--udp-idle", to.udp_idle_s, min.udp_idle_s, "RFC 4787"),
    ] {
        if !(lo..=control::MAX_TIMEOUT_S).contains(&v) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{name} {v}: this timeout is {lo} ({rfc}'s minimum) to {} seconds",
                    control::MAX_TIMEOUT_S
                ),
            ));
        }
    }
    let mut buf = [0u8; control::HEADER_LEN + control::TIMEOUTS_LEN];
    let n = control::encode_timeouts(to, &mut buf).map_err(proto)?;
    t.setopt(Op::SetTimeouts as i32, buf.get(..n).unwrap_or(&buf))
}

/// Reads the IP filter's NAT timeouts (from its statistics).
pub fn timeouts(t: &mut dyn Transport) -> io::Result<control::Timeouts> {
    let c = stats(t)?;
    let get = |id: u32| {
        c.iter()
            .find(|(i, _)| *i == id)
            .and_then(|(_, v)| u32::try_from(*v).ok())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("the kext reports no counter {id:#x}: not the IP filter?"),
                )
            })
    };
    use control::stat::{IP_TCP_CLOSED_S, IP_TCP_IDLE_S, IP_UDP_IDLE_S};
    Ok(control::Timeouts {
        tcp_idle_s: get(IP_TCP_IDLE_S)?,
        tcp_closed_s: get(IP_TCP_CLOSED_S)?,
        udp_idle_s: get(IP_UDP_IDLE_S)?,
    })
}

/// The NAT timeouts, for people.
pub fn render_timeouts(t: &control::Timeouts) -> String {
    format!(
        "TCP idle {} s, TCP SYN-sent/closing {} s, UDP idle {} s\n",
        t.tcp_idle_s, t.tcp_closed_s, t.udp_idle_s
    )
}

/// Sets the proxies.
pub fn set_proxies(t: &mut dyn Transport, p: &Proxies) -> io::Result<()> {
    let mut buf = [0u8; control::HEADER_LEN + control::PROXIES_LEN];
    let n = control::encode_proxies(p, &mut buf).map_err(proto)?;
    t.setopt(Op::SetProxies as i32, buf.get(..n).unwrap_or(&buf))
}

fn get(t: &mut dyn Transport, req: &GetRequest, size: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; size];
    control::encode_get(req, &mut buf).map_err(proto)?;
    let op = match req {
        GetRequest::Stats => Op::GetStats,
        GetRequest::Status => Op::GetStatus,
        GetRequest::Rules => Op::GetRules,
        GetRequest::Lookup(_) => Op::Lookup,
        GetRequest::AuthKey => Op::GetAuthKey,
    };
    let n = t.getopt(op as i32, &mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

/// Reads the status.
pub fn status(t: &mut dyn Transport) -> io::Result<Status> {
    control::decode_status(&get(t, &GetRequest::Status, control::STATUS_RESPONSE_LEN)?)
        .map_err(proto)
}

/// Reads the statistics counters.
pub fn stats(t: &mut dyn Transport) -> io::Result<Vec<(u32, u64)>> {
    let buf = get(t, &GetRequest::Stats, 4096)?;
    let mut out = Vec::new();
    control::decode_stats(&buf, |id, v| out.push((id, v))).map_err(proto)?;
    Ok(out)
}

/// Reads the socket filter's PROXY v2 authentication key (root only: the
/// control is privileged). prxd verifies the kext's headers with it.
pub fn auth_key(t: &mut dyn Transport) -> io::Result<common::net::proxy_v2::AuthKey> {
    let buf = get(t, &GetRequest::AuthKey, control::AUTH_KEY_RESPONSE_LEN)?;
    control::decode_auth_key_response(&buf).map_err(proto)
}

/// Looks up the original destination of a client address.
pub fn lookup(t: &mut dyn Transport, client: SocketAddr) -> io::Result<Option<Original>> {
    let buf = get(
        t,
        &GetRequest::Lookup(endpoint(client)),
        control::LOOKUP_RESPONSE_LEN,
    )?;
    control::decode_lookup_response(&buf).map_err(proto)
}

/// Which kext a status is from (the fields mean slightly different things).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KextKind {
    /// PrxSocketFilter.kext.
    SocketFilter,
    /// PrxIPFilter.kext.
    IpFilter,
}

/// A counter's human name (`common::net::control::stat::StatName`, shared
/// with the emulator's reports).
pub fn stat_name(id: u32) -> String {
    control::stat::StatName(id).to_string()
}

/// Sets the kext's log level.
pub fn set_log_level(t: &mut dyn Transport, level: control::LogLevel) -> io::Result<()> {
    let mut buf = [0u8; control::HEADER_LEN + 4];
    let n = control::encode_log_level(level, &mut buf).map_err(proto)?;
    t.setopt(Op::SetLogLevel as i32, buf.get(..n).unwrap_or(&buf))
}

/// The kext's log level and the lines its rate limiter dropped (from its
/// statistics).
pub fn log_level(t: &mut dyn Transport) -> io::Result<(control::LogLevel, u64)> {
    let c = stats(t)?;
    let get = |id: u32| c.iter().find(|(i, _)| *i == id).map(|(_, v)| *v);
    let level = get(control::stat::LOG_LEVEL)
        .and_then(|v| u8::try_from(v).ok())
        .and_then(control::LogLevel::from_u8)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "the kext reports no log level (built before log levels?)",
            )
        })?;
    Ok((level, get(control::stat::LOG_SUPPRESSED).unwrap_or(0)))
}

fn action_name(a: Action) -> &'static str {
    match a {
        Action::Direct => "direct",
        Action::Proxy { proxy_v2: false } => "proxy",
        Action::Proxy { proxy_v2: true } => "proxy-v2",
        Action::Block => "block",
    }
}

fn name_str(n: &ProcName) -> String {
    String::from_utf8_lossy(n.as_bytes()).into_owned()
}

/// The status and statistics, for people.
pub fn render_status(kind: KextKind, s: &Status, counters: &[(u32, u64)]) -> String {
    let mut o = String::new();
    let ep = |e: &Option<Endpoint>| {
        e.as_ref()
            .map_or("none".to_string(), |e| socket_addr(e).to_string())
    };
    let _ = writeln!(
        o,
        "filtering:        {}",
        if s.enabled { "enabled" } else { "disabled" }
    );
    let _ = writeln!(
        o,
        "rules:            {} (rule sets installed: {})",
        s.rules, s.generation
    );
    match kind {
        KextKind::SocketFilter => {
            let _ = writeln!(o, "sockets attached: {}", s.attached);
        }
        KextKind::IpFilter => {
            let _ = writeln!(o, "filters attached: {} (IPv4, IPv6)", s.attached);
        }
    }
    let _ = writeln!(o, "control clients:  {}", s.clients);
    let _ = writeln!(o, "proxy (IPv4):     {}", ep(&s.proxies.v4));
    let _ = writeln!(o, "proxy (IPv6):     {}", ep(&s.proxies.v6));
    let who = match (s.proxies.pid, &s.proxies.name) {
        (None, None) => "not set".to_string(),
        (Some(p), None) => format!("pid {p}"),
        (None, Some(n)) => format!("name {}", name_str(n)),
        (Some(p), Some(n)) => format!("pid {p}, name {}", name_str(n)),
    };
    if kind == KextKind::SocketFilter {
        // The IP filter sees packets, not processes: it has no use for these.
        let _ = writeln!(o, "proxy process:    {who}");
    }
    let _ = writeln!(o, "statistics:");
    let width = counters
        .iter()
        .map(|(id, _)| stat_name(*id).len())
        .max()
        .unwrap_or(0);
    for (id, v) in counters {
        let _ = writeln!(o, "  {:<width$}  {v:>12}", stat_name(*id));
    }
    o
}

/// A lookup's answer, for people.
pub fn render_lookup(client: SocketAddr, o: Option<&Original>) -> String {
    match o {
        None => format!("{client}: no original destination recorded (not redirected, or closed)\n"),
        Some(o) if o.rule == control::RULE_UNKNOWN => format!(
            "{client} -> original destination {} (NAT flow)\n",
            socket_addr(&o.dst)
        ),
        Some(o) => format!(
            "{client} -> original destination {} (pid {}, rule {})\n",
            socket_addr(&o.dst),
            o.pid,
            o.rule
        ),
    }
}

/// A rule file's summary, for people.
pub fn render_rules(f: &rules_file::RuleFile) -> String {
    format!(
        "{} rules, default {}",
        f.rules.len(),
        action_name(f.default)
    )
}
