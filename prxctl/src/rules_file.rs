//! The human rule file (TOML), validated with line-numbered errors and
//! converted into `common::net::rules` values.
//!
//! ```toml
//! # What connections that match no rule do: "direct" (default), "proxy",
//! # "proxy-v2" (proxy, with a PROXY protocol v2 header) or "block".
//! default = "direct"
//!
//! # Rules, first match wins.
//! [[rule]]
//! protocol = "tcp"         # tcp | udp | any (omitted: any)
//! dst = "203.0.113.0/24"   # CIDR (IPv4 or IPv6) or a single address; omitted: any
//! ports = "80-443"         # a port, "LO-HI", or omitted: every port
//! action = "proxy-v2"      # direct | proxy | proxy-v2 | block
//!
//! [[rule]]
//! process = "curl"         # a process name (up to 16 bytes) …
//! # pid = 1234             # … or a pid (not both)
//! exclude = true           # apply to every process *but* the selected one
//! action = "direct"
//! ```
//!
//! The socket filter sees only TCP connections; the IP filter sees TCP and
//! UDP, so `protocol = "udp"` rules only ever match there.
//!
//! Unknown keys, wrong types, unknown protocols, bad addresses, prefixes with host bits set,
//! reversed port ranges, over-long process names and more than
//! [`MAX_RULES`] rules are errors naming the file's line and the key.

use std::net::IpAddr as StdIp;
use std::ops::Range;

use common::net::addr::IpAddr;
use common::net::rules::{Action, Cidr, MAX_NAME, MAX_RULES, ProcName, ProcSel, Protocol, Rule};
use serde::Deserialize;
use toml::Spanned;

/// A rule file that failed validation: where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong, naming the key and value.
    pub message: String,
}

impl std::fmt::Display for FileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "line {}, column {}: {}",
            self.line, self.column, self.message
        )
    }
}

impl std::error::Error for FileError {}

/// A parsed rule file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleFile {
    /// The default action.
    pub default: Action,
    /// The rules, in order.
    pub rules: Vec<Rule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Raw {
    pub(crate) default: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) rule: Vec<RawRule>,
}

/// One `[[rule]]` table as written (also inside `prx.toml`'s kext tables).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRule {
    protocol: Option<Spanned<String>>,
    dst: Option<Spanned<String>>,
    ports: Option<Spanned<toml::Value>>,
    process: Option<Spanned<String>>,
    pid: Option<Spanned<i64>>,
    exclude: Option<Spanned<bool>>,
    action: Spanned<String>,
}

fn position(src: &str, offset: usize) -> (usize, usize) {
    let before = src.get(..offset.min(src.len())).unwrap_or(src);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

pub(crate) fn err_at(src: &str, span: Range<usize>, message: String) -> FileError {
    let (line, column) = position(src, span.start);
    FileError {
        line,
        column,
        message,
    }
}

fn action(s: &str) -> Option<Action> {
    Some(match s {
        "direct" => Action::Direct,
        "proxy" => Action::Proxy { proxy_v2: false },
        "proxy-v2" => Action::Proxy { proxy_v2: true },
        "block" => Action::Block,
        _ => return None,
    })
}

fn protocol(s: &str) -> Option<Protocol> {
    Some(match s {
        "any" => Protocol::Any,
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        _ => return None,
    })
}

fn ip(a: StdIp) -> IpAddr {
    match a {
        StdIp::V4(v) => IpAddr::V4(v.octets()),
        StdIp::V6(v) => IpAddr::V6(v.octets()),
    }
}

fn cidr(s: &str) -> Result<Cidr, String> {
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let addr: StdIp = addr
        .trim()
        .parse()
        .map_err(|_| format!("`{addr}` is not an IPv4 or IPv6 address"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix: u8 = match prefix {
        None => max,
        Some(p) => p
            .trim()
            .parse()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| format!("prefix `/{p}` is not 0..={max}"))?,
    };
    let a = ip(addr);
    let c = Cidr::new(a, prefix).ok_or_else(|| format!("prefix /{prefix} too long"))?;
    if c.addr != a {
        return Err(format!("host bits set after the /{prefix} prefix"));
    }
    Ok(c)
}

fn port(s: &str) -> Result<u16, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a port (0-65535)"))
}

fn ports(v: &toml::Value) -> Result<(u16, u16), String> {
    let (lo, hi) = match v {
        toml::Value::Integer(p) => {
            let p = u16::try_from(*p).map_err(|_| format!("{p} is not a port (0-65535)"))?;
            (p, p)
        }
        toml::Value::String(s) => match s.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => {
                let p = port(s)?;
                (p, p)
            }
        },
        other => {
            return Err(format!(
                "expected a port or \"LO-HI\", found {}",
                other.type_str()
            ));
        }
    };
    if lo > hi {
        return Err(format!("range {lo}-{hi} is reversed"));
    }
    Ok((lo, hi))
}

/// Parses and validates a rule file's text.
pub fn parse(src: &str) -> Result<RuleFile, FileError> {
    let raw: Raw = toml::from_str(src).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        err_at(src, span, e.message().trim().to_string())
    })?;
    from_raw(src, &raw)
}

/// Validates a rule set deserialized from `src` (spans are offsets in `src`).
pub(crate) fn from_raw(src: &str, raw: &Raw) -> Result<RuleFile, FileError> {
    let default = match &raw.default {
        None => Action::Direct,
        Some(d) => action(d.get_ref()).ok_or_else(|| {
            err_at(
                src,
                d.span(),
                format!(
                    "`default` = \"{}\": expected direct, proxy, proxy-v2 or block",
                    d.get_ref()
                ),
            )
        })?,
    };
    if raw.rule.len() > MAX_RULES {
        return Err(err_at(
            src,
            0..0,
            format!("{} rules; at most {MAX_RULES}", raw.rule.len()),
        ));
    }
    let mut rules = Vec::with_capacity(raw.rule.len());
    for (i, r) in raw.rule.iter().enumerate() {
        let n = i + 1;
        let bad = |span: Range<usize>, key: &str, value: String, why: String| {
            err_at(src, span, format!("rule {n}: `{key}` = {value}: {why}"))
        };
        let act = action(r.action.get_ref()).ok_or_else(|| {
            bad(
                r.action.span(),
                "action",
                format!("\"{}\"", r.action.get_ref()),
                "expected direct, proxy, proxy-v2 or block".into(),
            )
        })?;
        let protocol = match &r.protocol {
            None => Protocol::Any,
            Some(p) => protocol(p.get_ref()).ok_or_else(|| {
                bad(
                    p.span(),
                    "protocol",
                    format!("\"{}\"", p.get_ref()),
                    "expected tcp, udp or any".into(),
                )
            })?,
        };
        let dst = match &r.dst {
            None => None,
            Some(d) => Some(
                cidr(d.get_ref())
                    .map_err(|why| bad(d.span(), "dst", format!("\"{}\"", d.get_ref()), why))?,
            ),
        };
        let (port_lo, port_hi) = match &r.ports {
            None => (0, u16::MAX),
            Some(p) => ports(p.get_ref())
                .map_err(|why| bad(p.span(), "ports", p.get_ref().to_string(), why))?,
        };
        let process =
            match (&r.process, &r.pid) {
                (Some(_), Some(p)) => {
                    return Err(bad(
                        p.span(),
                        "pid",
                        p.get_ref().to_string(),
                        "give `process` or `pid`, not both".into(),
                    ));
                }
                (Some(name), None) => {
                    let b = name.get_ref().as_bytes();
                    if b.is_empty() || b.len() > MAX_NAME || b.contains(&0) {
                        return Err(bad(
                            name.span(),
                            "process",
                            format!("\"{}\"", name.get_ref()),
                            format!("a process name is 1 to {MAX_NAME} bytes, without NUL"),
                        ));
                    }
                    ProcSel::Name(ProcName::new(b))
                }
                (None, Some(p)) => ProcSel::Pid(u32::try_from(*p.get_ref()).map_err(|_| {
                    bad(p.span(), "pid", p.get_ref().to_string(), "not a pid".into())
                })?),
                (None, None) => ProcSel::Any,
            };
        let exclude_process = r.exclude.as_ref().is_some_and(|e| *e.get_ref());
        if exclude_process && process == ProcSel::Any {
            let e = r.exclude.as_ref().map_or(0..0, |e| e.span());
            return Err(bad(
                e,
                "exclude",
                "true".into(),
                "needs `process` or `pid` to exclude".into(),
            ));
        }
        let rule = Rule {
            protocol,
            dst,
            port_lo,
            port_hi,
            process,
            exclude_process,
            action: act,
        };
        rule.validate().map_err(|e| {
            bad(
                r.action.span(),
                "action",
                format!("\"{}\"", r.action.get_ref()),
                format!("invalid rule: {e:?}"),
            )
        })?;
        rules.push(rule);
    }
    Ok(RuleFile { default, rules })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_documented_file_parses() {
        let f = parse(
            "default = \"direct\"\n[[rule]]\ndst = \"203.0.113.0/24\"\nports = \"80-443\"\naction = \"proxy-v2\"\n\
             [[rule]]\nprocess = \"curl\"\nexclude = true\naction = \"block\"\n[[rule]]\ndst = \"2001:db8::1\"\nports = 22\npid = 7\naction = \"proxy\"\n",
        )
        .unwrap();
        assert_eq!(f.rules.len(), 3);
        assert_eq!(f.rules[0].port_lo, 80);
        assert_eq!(f.rules[0].action, Action::Proxy { proxy_v2: true });
        assert_eq!(f.rules[1].process, ProcSel::Name(ProcName::new(b"curl")));
        assert!(f.rules[1].exclude_process);
        assert_eq!(f.rules[2].dst.unwrap().prefix, 128);
        assert_eq!(f.rules[2].process, ProcSel::Pid(7));
    }

    #[test]
    fn errors_name_the_line_and_key() {
        let e = parse(
            "[[rule]]\naction = \"proxy\"\n\n[[rule]]\ndst = \"10.0.0.1/8\"\naction = \"direct\"\n",
        )
        .unwrap_err();
        assert_eq!(e.line, 5, "{e}");
        assert!(e.message.contains("rule 2: `dst` = \"10.0.0.1/8\""), "{e}");
        let e = parse("[[rule]]\naction = \"proxy\"\nport = 80\n").unwrap_err();
        assert_eq!(e.line, 3, "{e}");
        assert!(e.message.contains("port"), "{e}");
        let e = parse("[[rule]]\nports = \"90-80\"\naction = \"proxy\"\n").unwrap_err();
        assert_eq!(e.line, 2, "{e}");
        let e = parse("default = \"maybe\"\n").unwrap_err();
        assert_eq!(e.line, 1);
        let e = parse("[[rule]]\naction = \"proxy\"\nprocess = \"a-very-long-process-name\"\n")
            .unwrap_err();
        assert_eq!(e.line, 3);
        let e = parse("[[rule]]\nactio = \n").unwrap_err();
        assert_eq!(e.line, 2, "{e}");
    }

    #[test]
    fn protocol_is_tcp_udp_or_any_and_defaults_to_any() {
        let f = parse(
            "[[rule]]\nprotocol = \"tcp\"\naction = \"proxy\"\n\
             [[rule]]\nprotocol = \"udp\"\nports = 53\naction = \"proxy\"\n\
             [[rule]]\nprotocol = \"any\"\naction = \"block\"\n\
             [[rule]]\naction = \"direct\"\n",
        )
        .unwrap();
        let got: Vec<Protocol> = f.rules.iter().map(|r| r.protocol).collect();
        assert_eq!(
            got,
            [Protocol::Tcp, Protocol::Udp, Protocol::Any, Protocol::Any]
        );
        assert_eq!(f.rules[1].port_lo, 53);
    }

    #[test]
    fn a_bad_protocol_names_the_line_column_key_and_value() {
        let e = parse(
            "[[rule]]\naction = \"proxy\"\n\n[[rule]]\nprotocol = \"icmp\"\naction = \"proxy\"\n",
        )
        .unwrap_err();
        assert_eq!((e.line, e.column), (5, 12), "{e}");
        assert_eq!(
            e.message, "rule 2: `protocol` = \"icmp\": expected tcp, udp or any",
            "{e}"
        );
        // Case matters, like the other keywords.
        let e = parse("[[rule]]\nprotocol = \"TCP\"\naction = \"proxy\"\n").unwrap_err();
        assert_eq!(e.line, 2, "{e}");
        assert!(e.message.contains("`protocol` = \"TCP\""), "{e}");
        // Not a string.
        let e = parse("[[rule]]\nprotocol = 6\naction = \"proxy\"\n").unwrap_err();
        assert_eq!((e.line, e.column), (2, 12), "{e}");
        assert!(e.message.contains("string"), "{e}");
    }
}
