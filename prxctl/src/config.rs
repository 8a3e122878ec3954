//! The system configuration file, `/Library/Application Support/prx/prx.toml`:
//! everything both kexts should be set to, in one TOML file that
//! `prxctl apply` brings them to (and the boot-time daemon applies).
//!
//! ```toml
//! [socket-filter]                 # PrxSocketFilter.kext; left out: not touched
//! enabled = true                  # default true
//! proxy = ["127.0.0.1:1080"]      # one IPv4 and/or one IPv6 listener; omitted: none
//! proxy-process = "microsocks"    # the proxy's own process (never redirected) …
//! # proxy-pid = 1234              # … and/or its pid
//! default = "direct"              # as in rule files
//! [[socket-filter.rule]]          # rules: the keys of a rule file's [[rule]]
//! dst = "203.0.113.0/24"
//! action = "proxy"
//!
//! [ip-filter]                     # PrxIPFilter.kext: the same keys, and
//! [ip-filter.timeouts]            # NAT timeouts in seconds (RFC minimums to 604800);
//! tcp-idle = 7440                 # omitted ones are the kext's defaults
//! tcp-closed = 240
//! udp-idle = 300
//! ```
//!
//! A `[prxd]` table is the prx daemon's (prxd reads and validates it; `prxd
//! check --config FILE`). Who sets a kext's proxies: **prxd, for every kext in
//! its `controls`** (default both) when the file has a `[prxd]` table — it
//! registers its listen addresses and its own pid and name at every start, so
//! the kext always knows the running prxd —; otherwise `prxctl apply`, from
//! the kext table's `proxy`, `proxy-process` and `proxy-pid`. One owner per
//! kext: those keys in the table of a kext prxd registers with are an error,
//! and `apply` then leaves that kext's proxies alone ([`KextConfig::proxies`]
//! is `None`). Every error names the line and column and the key; the rules
//! are validated by [`crate::rules_file`]'s code, so their errors read the same.

use std::net::SocketAddr;
use std::ops::Range;

use common::net::control::{MAX_TIMEOUT_S, Timeouts};
use common::net::policy::Proxies;
use common::net::rules::{MAX_NAME, ProcName};
use serde::Deserialize;
use toml::Spanned;

use crate::rules_file::{self, FileError, RuleFile, err_at};

/// Where the installer puts the configuration, and what `prxctl apply` reads
/// when no file is given.
pub const DEFAULT_PATH: &str = "/Library/Application Support/prx/prx.toml";

/// One kext's desired state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KextConfig {
    /// Filtering on or off.
    pub enabled: bool,
    /// The proxies and the proxy's own process; `None` when prxd sets them
    /// (the file has a `[prxd]` table whose `controls` name this kext).
    pub proxies: Option<Proxies>,
    /// The rule set.
    pub rules: RuleFile,
    /// The NAT timeouts (IP filter only).
    pub timeouts: Option<Timeouts>,
}

/// A validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `[socket-filter]`, if present.
    pub socket_filter: Option<KextConfig>,
    /// `[ip-filter]`, if present.
    pub ip_filter: Option<KextConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(rename = "socket-filter")]
    socket_filter: Option<Spanned<RawKext>>,
    #[serde(rename = "ip-filter")]
    ip_filter: Option<Spanned<RawKext>>,
    prxd: Option<Spanned<toml::Value>>,
}

/// The kexts (by `controls` name: `socket`, `ip`) whose proxies prxd sets:
/// those of its `controls` (default both) when there is a `[prxd]` table.
fn prxd_controls(src: &str, prxd: Option<&Spanned<toml::Value>>) -> Result<Vec<String>, FileError> {
    let Some(p) = prxd else {
        return Ok(Vec::new());
    };
    let Some(table) = p.get_ref().as_table() else {
        return Err(err_at(src, p.span(), "[prxd]: not a table".into()));
    };
    match table.get("controls") {
        None => Ok(vec!["socket".into(), "ip".into()]),
        Some(v) => v
            .as_array()
            .and_then(|a| {
                a.iter()
                    .map(|k| k.as_str().map(str::to_string))
                    .collect::<Option<Vec<_>>>()
            })
            .ok_or_else(|| {
                err_at(
                    src,
                    p.span(),
                    "[prxd] `controls`: a list of \"socket\" and/or \"ip\"".into(),
                )
            }),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawKext {
    enabled: Option<Spanned<bool>>,
    proxy: Option<Spanned<Vec<Spanned<String>>>>,
    proxy_process: Option<Spanned<String>>,
    proxy_pid: Option<Spanned<i64>>,
    timeouts: Option<Spanned<RawTimeouts>>,
    default: Option<Spanned<String>>,
    #[serde(default)]
    rule: Vec<rules_file::RawRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawTimeouts {
    tcp_idle: Option<Spanned<i64>>,
    tcp_closed: Option<Spanned<i64>>,
    udp_idle: Option<Spanned<i64>>,
}

/// The kext's own NAT timeouts (`common::net::nat::Config::DEFAULT`), in seconds.
pub fn default_timeouts() -> Timeouts {
    let d = common::net::nat::Config::DEFAULT;
    let s = |ms: u64| u32::try_from(ms / 1000).unwrap_or(u32::MAX);
    Timeouts {
        tcp_idle_s: s(d.tcp_idle_ms),
        tcp_closed_s: s(d.tcp_transitory_ms),
        udp_idle_s: s(d.udp_idle_ms),
    }
}

/// Parses and validates the whole configuration.
pub fn parse(src: &str) -> Result<Config, FileError> {
    let raw: Raw = toml::from_str(src).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        err_at(src, span, e.message().trim().to_string())
    })?;
    let by_prxd = prxd_controls(src, raw.prxd.as_ref())?;
    let owned = |name: &str| by_prxd.iter().any(|c| c == name);
    let socket_filter = match &raw.socket_filter {
        None => None,
        Some(k) => Some(kext(
            src,
            "socket-filter",
            k.get_ref(),
            k.span(),
            false,
            owned("socket"),
        )?),
    };
    let ip_filter = match &raw.ip_filter {
        None => None,
        Some(k) => Some(kext(
            src,
            "ip-filter",
            k.get_ref(),
            k.span(),
            true,
            owned("ip"),
        )?),
    };
    Ok(Config {
        socket_filter,
        ip_filter,
    })
}

fn kext(
    src: &str,
    table: &str,
    raw: &RawKext,
    span: Range<usize>,
    has_timeouts: bool,
    prxd_owned: bool,
) -> Result<KextConfig, FileError> {
    let bad = |span: Range<usize>, msg: String| err_at(src, span, format!("[{table}] {msg}"));
    if prxd_owned {
        let keys = [
            raw.proxy.as_ref().map(|k| ("proxy", k.span())),
            raw.proxy_process
                .as_ref()
                .map(|k| ("proxy-process", k.span())),
            raw.proxy_pid.as_ref().map(|k| ("proxy-pid", k.span())),
        ];
        if let Some((key, span)) = keys.into_iter().flatten().next() {
            return Err(bad(
                span,
                format!(
                    "`{key}`: this file has a [prxd] table, so prxd sets this kext's proxies \
                     (its `listen` addresses and its own process) at every start; remove `{key}`, \
                     or leave this kext out of [prxd] `controls` to use another proxy"
                ),
            ));
        }
    }
    let mut proxies = Proxies::default();
    if let Some(list) = &raw.proxy {
        if list.get_ref().is_empty() || list.get_ref().len() > 2 {
            return Err(bad(
                list.span(),
                "`proxy`: one IPv4 and/or one IPv6 address, e.g. [\"127.0.0.1:1080\"]".into(),
            ));
        }
        for a in list.get_ref() {
            let addr: SocketAddr = a.get_ref().trim().parse().map_err(|_| {
                bad(
                    a.span(),
                    format!(
                        "`proxy` = \"{}\": not an ADDRESS:PORT (IPv6 as \"[::1]:1080\")",
                        a.get_ref()
                    ),
                )
            })?;
            let slot = if addr.is_ipv4() {
                &mut proxies.v4
            } else {
                &mut proxies.v6
            };
            if slot.is_some() {
                return Err(bad(
                    a.span(),
                    format!(
                        "`proxy`: two {} addresses; give at most one of each family",
                        if addr.is_ipv4() { "IPv4" } else { "IPv6" }
                    ),
                ));
            }
            *slot = Some(crate::endpoint(addr));
        }
    }
    if let Some(n) = &raw.proxy_process {
        let name = n.get_ref();
        if name.is_empty() || name.len() > MAX_NAME || name.contains('\0') {
            return Err(bad(
                n.span(),
                format!("`proxy-process` = \"{name}\": a process name is 1 to {MAX_NAME} bytes"),
            ));
        }
        proxies.name = Some(ProcName::new(name.as_bytes()));
    }
    if let Some(p) = &raw.proxy_pid {
        let pid = u32::try_from(*p.get_ref())
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| {
                bad(
                    p.span(),
                    format!("`proxy-pid` = {}: not a process id", p.get_ref()),
                )
            })?;
        proxies.pid = Some(pid);
    }
    let timeouts = match (&raw.timeouts, has_timeouts) {
        (Some(t), false) => {
            return Err(bad(
                t.span(),
                "`timeouts`: NAT timeouts belong to [ip-filter.timeouts]".into(),
            ));
        }
        (None, false) => None,
        (None, true) => Some(default_timeouts()),
        (Some(t), true) => {
            let d = default_timeouts();
            let get = |v: &Option<Spanned<i64>>, key: &str, dflt: u32, min: u32| {
                match v {
                None => Ok(dflt),
                Some(v) => u32::try_from(*v.get_ref())
                    .ok()
                    .filter(|s| (min..=MAX_TIMEOUT_S).contains(s))
                    .ok_or_else(|| {
                        bad(
                            v.span(),
                            format!(
                                "`timeouts.{key}` = {}: this timeout is {min} to {MAX_TIMEOUT_S} seconds \
                                 (the minimum is RFC 5382/4787's)",
                                v.get_ref()
                            ),
                        )
                    }),
            }
            };
            let t = t.get_ref();
            Some(Timeouts {
                tcp_idle_s: get(
                    &t.tcp_idle,
                    "tcp-idle",
                    d.tcp_idle_s,
                    Timeouts::MIN.tcp_idle_s,
                )?,
                tcp_closed_s: get(
                    &t.tcp_closed,
                    "tcp-closed",
                    d.tcp_closed_s,
                    Timeouts::MIN.tcp_closed_s,
                )?,
                udp_idle_s: get(
                    &t.udp_idle,
                    "udp-idle",
                    d.udp_idle_s,
                    Timeouts::MIN.udp_idle_s,
                )?,
            })
        }
    };
    let rules_raw = rules_file::Raw {
        default: raw.default.clone(),
        rule: raw.rule.clone(),
    };
    let rules = rules_file::from_raw(src, &rules_raw).map_err(|e| FileError {
        message: format!("[{table}] {}", e.message),
        ..e
    })?;
    let _ = span;
    Ok(KextConfig {
        enabled: raw.enabled.as_ref().is_none_or(|e| *e.get_ref()),
        proxies: (!prxd_owned).then_some(proxies),
        rules,
        timeouts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::net::rules::Action;

    #[test]
    fn the_shipped_example_is_valid() {
        let c = parse(include_str!("../prx.toml.example")).unwrap();
        let s = c.socket_filter.unwrap();
        assert!(!s.enabled);
        assert_eq!(s.rules.rules.len(), 2);
        assert_eq!(s.rules.default, Action::Direct);
        // The example runs prxd: it sets both kexts' proxies, apply does not.
        assert_eq!(s.proxies, None);
        assert_eq!(s.timeouts, None);
        let ip = c.ip_filter.unwrap();
        assert_eq!(ip.timeouts, Some(default_timeouts()));
        assert_eq!(ip.rules.rules.len(), 1);
        assert_eq!(ip.proxies, None);
    }

    #[test]
    fn prxd_owns_the_proxies_of_the_kexts_it_registers_with() {
        // No [prxd]: apply sets the proxies.
        let c = parse("[socket-filter]\nproxy = [\"127.0.0.1:1080\"]\n").unwrap();
        assert!(c.socket_filter.unwrap().proxies.unwrap().v4.is_some());
        // [prxd] with the default controls: both kexts' proxies are prxd's.
        let c =
            parse("[prxd]\nlisten = [\"127.0.0.1:7890\"]\n[socket-filter]\n[ip-filter]\n").unwrap();
        assert_eq!(c.socket_filter.unwrap().proxies, None);
        assert_eq!(c.ip_filter.unwrap().proxies, None);
        // A proxy key in such a kext's table: one owner, so an error naming
        // the key, its line and the two ways out.
        for key in [
            "proxy = [\"127.0.0.1:1080\"]",
            "proxy-process = \"x\"",
            "proxy-pid = 7",
        ] {
            let e = parse(&format!(
                "[prxd]\nlisten = [\"127.0.0.1:7890\"]\n[ip-filter]\n{key}\n"
            ))
            .unwrap_err();
            assert_eq!(e.line, 4, "{e}");
            assert!(e.message.starts_with("[ip-filter] `proxy"), "{e}");
            assert!(e.message.contains("prxd sets this kext's proxies"), "{e}");
            assert!(e.message.contains("`controls`"), "{e}");
        }
        // prxd registers with the socket filter only: the IP filter's proxy
        // is apply's.
        let c = parse(
            "[prxd]\nlisten = [\"127.0.0.1:7890\"]\ncontrols = [\"socket\"]\n\
             [socket-filter]\n[ip-filter]\nproxy = [\"192.0.2.1:3128\"]\n",
        )
        .unwrap();
        assert_eq!(c.socket_filter.unwrap().proxies, None);
        assert!(c.ip_filter.unwrap().proxies.unwrap().v4.is_some());
        let c = parse("[prxd]\nlisten = [\"127.0.0.1:7890\"]\ncontrols = []\n[socket-filter]\nproxy-pid = 9\n").unwrap();
        assert_eq!(c.socket_filter.unwrap().proxies.unwrap().pid, Some(9));
        let e = parse("[prxd]\ncontrols = \"socket\"\n").unwrap_err();
        assert!(e.message.contains("`controls`"), "{e}");
    }

    #[test]
    fn errors_name_line_column_and_key() {
        let e = parse("[socket-filter]\nproxy = [\"127.0.0.1\"]\n").unwrap_err();
        assert_eq!((e.line, e.column), (2, 10), "{e}");
        assert!(
            e.message
                .contains("[socket-filter] `proxy` = \"127.0.0.1\""),
            "{e}"
        );

        let e = parse("[ip-filter]\n[[ip-filter.rule]]\nports = \"9-1\"\naction = \"proxy\"\n")
            .unwrap_err();
        assert_eq!(e.line, 3, "{e}");
        assert!(e.message.starts_with("[ip-filter] rule 1: `ports`"), "{e}");

        let e = parse("[ip-filter.timeouts]\ntcp-idle = 0\n").unwrap_err();
        assert_eq!(e.line, 2, "{e}");
        assert!(e.message.contains("tcp-idle"), "{e}");
        // Below RFC 5382's 2 h 4 min: refused before any kext is asked.
        let e = parse("[ip-filter.timeouts]\ntcp-idle = 7200\n").unwrap_err();
        assert!(e.message.contains("7440 to 604800"), "{e}");

        let e = parse("[socket-filter.timeouts]\ntcp-idle = 5\n").unwrap_err();
        assert!(e.message.contains("[ip-filter.timeouts]"), "{e}");

        let e = parse("[socket-filter]\nenable = true\n").unwrap_err();
        assert_eq!(e.line, 2, "{e}");
        assert!(e.message.contains("enable"), "{e}");
    }

    #[test]
    fn left_out_tables_and_keys() {
        let c = parse("").unwrap();
        assert_eq!((c.socket_filter, c.ip_filter), (None, None));
        let c = parse("[ip-filter]\n").unwrap();
        let ip = c.ip_filter.unwrap();
        assert!(ip.enabled);
        assert_eq!(ip.proxies, Some(Proxies::default()));
        assert!(ip.rules.rules.is_empty());
        let c = parse("[ip-filter.timeouts]\nudp-idle = 600\n").unwrap();
        let t = c.ip_filter.unwrap().timeouts.unwrap();
        assert_eq!(t.udp_idle_s, 600);
        assert_eq!(t.tcp_idle_s, default_timeouts().tcp_idle_s);
    }
}
