//! prxd's part of the configuration: the `[prxd]` table.
//!
//! ```toml
//! [prxd]
//! listen = ["127.0.0.1:7890", "[::1]:7890"]   # the kexts' proxy addresses
//! default = "direct"            # or the name of an upstream
//! trust_header = false          # accept PROXY v2 headers without the kext's word
//! controls = ["socket", "ip"]   # the kexts to ask and to register with
//! max_connections = 4096        # beyond it: refused and counted
//! buffer_bytes = 65536          # per direction, only while bytes flow
//! connect_timeout_s = 10
//! idle_timeout_s = 300
//! udp_idle_timeout_s = 60       # a UDP flow of the IP filter ends after this long without a datagram
//! header_timeout_s = 5          # a PROXY v2 header must be complete by then
//! header_wait_ms = 100          # how long a vouched client may take to start its header
//! drain_timeout_s = 30          # SIGTERM: live connections get this long
//! status_socket = "/var/run/prxd.status"
//! user = "nobody"               # started as root: drop to this user once the controls are open
//!
//! [prxd.upstream.corp]
//! url = "socks5://alice@10.0.0.1:1080"   # or http://…; never a password in the URL
//! password_file = "/etc/prx/corp.password"   # or password_env = "CORP_PASSWORD"
//!
//! [[prxd.route]]                # first match wins; else `default`
//! rule = 3                      # the kext rule that redirected it, as `prxctl lookup` shows it (0: the first)
//! dst = "10.0.0.0/8"            # and/or the original destination
//! ports = "443"                 # "80-443"
//! upstream = "corp"             # or "direct"
//! ```
//!
//! [`parse`] takes a whole document and reads its `[prxd]` table (so it reads
//! the system-wide `prx.toml` as well as a file holding only that table);
//! every error names the line and column and the key. Unknown keys are errors.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::upstream::{Secret, Upstream};

/// An error in the configuration, with its place in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// 1-based line (0: not tied to a place).
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.message)
        } else {
            write!(
                f,
                "line {}, column {}: {}",
                self.line, self.column, self.message
            )
        }
    }
}

impl std::error::Error for ConfigError {}

/// Which kext controls prxd uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kext {
    /// PrxSocketFilter.kext.
    Socket,
    /// PrxIPFilter.kext.
    Ip,
}

/// Where a connection goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// Straight to the original destination.
    Direct,
    /// Through the named upstream.
    Upstream(String),
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Via::Direct => f.write_str("direct"),
            Via::Upstream(n) => f.write_str(n),
        }
    }
}

/// One `[[prxd.route]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The kext rule number (as `prxctl lookup` shows it: 0 is the first rule), if given.
    pub rule: Option<u32>,
    /// Destination network, if given.
    pub dst: Option<(IpAddr, u8)>,
    /// Destination ports (inclusive), if given.
    pub ports: Option<(u16, u16)>,
    /// Where matching connections go.
    pub via: Via,
}

impl Route {
    fn matches(&self, rule: Option<u32>, dst: SocketAddr) -> bool {
        self.rule.is_none_or(|r| Some(r) == rule)
            && self.dst.is_none_or(|(net, p)| in_prefix(dst.ip(), net, p))
            && self
                .ports
                .is_none_or(|(lo, hi)| (lo..=hi).contains(&dst.port()))
    }
}

fn canonical(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V6(v) => v.to_ipv4_mapped().map_or(a, IpAddr::V4),
        v4 => v4,
    }
}

fn in_prefix(a: IpAddr, net: IpAddr, prefix: u8) -> bool {
    match (canonical(a), net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let m = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(a) & m == u32::from(n) & m
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let m = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(a) & m == u128::from(n) & m
        }
        _ => false,
    }
}

/// prxd's configuration, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listen addresses.
    pub listen: Vec<SocketAddr>,
    /// Where connections go when no route matches.
    pub default: Via,
    /// Accept PROXY v2 headers without the kext's word.
    pub trust_header: bool,
    /// The kexts asked for original destinations and registered with.
    pub controls: Vec<Kext>,
    /// Connection limit.
    pub max_connections: usize,
    /// Relay buffer per direction.
    pub buffer_bytes: usize,
    /// Connect timeout (origin or upstream, including the upstream's handshake).
    pub connect_timeout: Duration,
    /// Idle timeout (no bytes either way).
    pub idle_timeout: Duration,
    /// A UDP flow of the IP filter ends after this long without a datagram.
    pub udp_idle_timeout: Duration,
    /// A PROXY v2 header must be complete within this.
    pub header_timeout: Duration,
    /// How long a vouched client may take to start its header.
    pub header_wait: Duration,
    /// SIGTERM: how long live connections may go on.
    pub drain_timeout: Duration,
    /// The status socket, if any.
    pub status_socket: Option<PathBuf>,
    /// The user to drop to when started as root.
    pub user: Option<String>,
    /// Upstreams by name.
    pub upstreams: BTreeMap<String, Upstream>,
    /// Routes, first match wins.
    pub routes: Vec<Route>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: Vec::new(),
            default: Via::Direct,
            trust_header: false,
            controls: vec![Kext::Socket, Kext::Ip],
            max_connections: 4096,
            buffer_bytes: 64 * 1024,
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            udp_idle_timeout: Duration::from_secs(60),
            header_timeout: Duration::from_secs(5),
            header_wait: Duration::from_millis(100),
            drain_timeout: Duration::from_secs(30),
            status_socket: None,
            user: None,
            upstreams: BTreeMap::new(),
            routes: Vec::new(),
        }
    }
}

impl Config {
    /// Where a connection to `dst`, redirected by kext rule `rule`, goes.
    pub fn route(&self, rule: Option<u32>, dst: SocketAddr) -> &Via {
        self.routes
            .iter()
            .find(|r| r.matches(rule, dst))
            .map_or(&self.default, |r| &r.via)
    }
}

#[derive(Deserialize)]
struct RawFile {
    prxd: Option<Spanned<RawPrxd>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrxd {
    listen: Spanned<Vec<Spanned<String>>>,
    default: Option<Spanned<String>>,
    trust_header: Option<bool>,
    controls: Option<Vec<Kext>>,
    max_connections: Option<Spanned<u64>>,
    buffer_bytes: Option<Spanned<u64>>,
    connect_timeout_s: Option<Spanned<u64>>,
    idle_timeout_s: Option<Spanned<u64>>,
    udp_idle_timeout_s: Option<Spanned<u64>>,
    header_timeout_s: Option<Spanned<u64>>,
    header_wait_ms: Option<Spanned<u64>>,
    drain_timeout_s: Option<Spanned<u64>>,
    status_socket: Option<PathBuf>,
    user: Option<String>,
    #[serde(default)]
    upstream: BTreeMap<String, Spanned<RawUpstream>>,
    #[serde(default)]
    route: Vec<Spanned<RawRoute>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    url: Spanned<String>,
    password_file: Option<Spanned<PathBuf>>,
    password_env: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    rule: Option<u32>,
    dst: Option<Spanned<String>>,
    ports: Option<Spanned<toml::Value>>,
    upstream: Spanned<String>,
}

fn position(src: &str, at: usize) -> (usize, usize) {
    let before = src.get(..at).unwrap_or(src);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

fn err_at(src: &str, span: Range<usize>, message: String) -> ConfigError {
    let (line, column) = position(src, span.start);
    ConfigError {
        line,
        column,
        message,
    }
}

/// Parses a CIDR (`10.0.0.0/8`, `2001:db8::/32`, or one address).
pub fn parse_cidr(s: &str) -> Result<(IpAddr, u8), String> {
    let (a, p) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let ip: IpAddr = a
        .parse()
        .map_err(|_| format!("`{a}` is not an IP address"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let prefix = match p {
        None => max,
        Some(p) => p
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| format!("prefix `/{p}` is not 0 to {max}"))?,
    };
    Ok((canonical(ip), prefix))
}

fn ports(v: &toml::Value) -> Result<(u16, u16), String> {
    let one = |s: &str| {
        s.trim()
            .parse::<u16>()
            .map_err(|_| format!("`{s}` is not a port (0-65535)"))
    };
    match v {
        toml::Value::Integer(p) => u16::try_from(*p)
            .map(|p| (p, p))
            .map_err(|_| format!("{p} is not a port (0-65535)")),
        toml::Value::String(s) => {
            let (lo, hi) = match s.split_once('-') {
                Some((a, b)) => (one(a)?, one(b)?),
                None => (one(s)?, one(s)?),
            };
            if lo > hi {
                return Err(format!("`{s}`: the range is empty (write LOW-HIGH)"));
            }
            Ok((lo, hi))
        }
        other => Err(format!("{other} is not a port or a \"LOW-HIGH\" range")),
    }
}

/// Reads the `[prxd]` table of the TOML document `src` (the file `origin`,
/// for messages). Passwords are read here (files and environment variables),
/// so a configuration that parses is complete.
pub fn parse(src: &str) -> Result<Config, ConfigError> {
    let raw: RawFile = toml::from_str(src).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        err_at(src, span, e.message().trim().to_string())
    })?;
    let Some(p) = raw.prxd else {
        return Err(ConfigError {
            line: 0,
            column: 0,
            message: "no [prxd] table: add one with at least `listen = [\"127.0.0.1:7890\"]`"
                .into(),
        });
    };
    let span = p.span();
    let p = p.into_inner();
    let mut c = Config::default();
    for a in p.listen.get_ref() {
        let addr: SocketAddr = a.get_ref().parse().map_err(|_| {
            err_at(
                src,
                a.span(),
                format!(
                    "`listen`: `{}` is not ADDR:PORT (IPv6 in brackets: \"[::1]:7890\")",
                    a.get_ref()
                ),
            )
        })?;
        c.listen.push(addr);
    }
    if c.listen.is_empty() {
        return Err(err_at(
            src,
            p.listen.span(),
            "`listen` is empty: give at least one ADDR:PORT".into(),
        ));
    }
    let positive =
        |v: &Option<Spanned<u64>>, key: &str, max: u64| -> Result<Option<u64>, ConfigError> {
            match v {
                None => Ok(None),
                Some(s) if (1..=max).contains(s.get_ref()) => Ok(Some(*s.get_ref())),
                Some(s) => Err(err_at(
                    src,
                    s.span(),
                    format!("`{key}` = {}: give 1 to {max}", s.get_ref()),
                )),
            }
        };
    if let Some(v) = positive(&p.max_connections, "max_connections", 1 << 20)? {
        c.max_connections = v as usize;
    }
    if let Some(v) = positive(&p.buffer_bytes, "buffer_bytes", 16 << 20)? {
        c.buffer_bytes = v as usize;
    }
    let day = 86_400;
    if let Some(v) = positive(&p.connect_timeout_s, "connect_timeout_s", day)? {
        c.connect_timeout = Duration::from_secs(v);
    }
    if let Some(v) = positive(&p.idle_timeout_s, "idle_timeout_s", 7 * day)? {
        c.idle_timeout = Duration::from_secs(v);
    }
    if let Some(v) = positive(&p.udp_idle_timeout_s, "udp_idle_timeout_s", day)? {
        c.udp_idle_timeout = Duration::from_secs(v);
    }
    if let Some(v) = positive(&p.header_timeout_s, "header_timeout_s", 600)? {
        c.header_timeout = Duration::from_secs(v);
    }
    if let Some(v) = positive(&p.header_wait_ms, "header_wait_ms", 60_000)? {
        c.header_wait = Duration::from_millis(v);
    }
    if let Some(v) = positive(&p.drain_timeout_s, "drain_timeout_s", day)? {
        c.drain_timeout = Duration::from_secs(v);
    }
    c.trust_header = p.trust_header.unwrap_or(false);
    if let Some(k) = p.controls {
        c.controls = k;
    }
    c.status_socket = p.status_socket;
    c.user = p.user;
    for (name, u) in p.upstream {
        let uspan = u.span();
        let u = u.into_inner();
        let password = match (&u.password_file, &u.password_env) {
            (Some(_), Some(e)) => {
                return Err(err_at(
                    src,
                    e.span(),
                    format!("upstream `{name}`: give `password_file` or `password_env`, not both"),
                ));
            }
            (Some(f), None) => Some(read_password_file(f.get_ref()).map_err(|m| {
                err_at(
                    src,
                    f.span(),
                    format!("upstream `{name}`: `password_file`: {m}"),
                )
            })?),
            (None, Some(e)) => Some(read_password_env(e.get_ref()).map_err(|m| {
                err_at(
                    src,
                    e.span(),
                    format!("upstream `{name}`: `password_env`: {m}"),
                )
            })?),
            (None, None) => None,
        };
        let up = Upstream::parse(u.url.get_ref(), password)
            .map_err(|m| err_at(src, u.url.span(), format!("upstream `{name}`: `url`: {m}")))?;
        if name == "direct" {
            return Err(err_at(
                src,
                uspan,
                "`direct` is not a name an upstream may have (it means: no upstream)".into(),
            ));
        }
        c.upstreams.insert(name, up);
    }
    let via = |s: &Spanned<String>, what: &str| -> Result<Via, ConfigError> {
        let n = s.get_ref();
        if n == "direct" {
            Ok(Via::Direct)
        } else if c.upstreams.contains_key(n) {
            Ok(Via::Upstream(n.clone()))
        } else {
            let known: Vec<&str> = c.upstreams.keys().map(String::as_str).collect();
            Err(err_at(
                src,
                s.span(),
                format!(
                    "{what}: no upstream named `{n}` (defined: {}; define it as [prxd.upstream.{n}] or write \"direct\")",
                    if known.is_empty() {
                        "none".into()
                    } else {
                        known.join(", ")
                    }
                ),
            ))
        }
    };
    if let Some(d) = &p.default {
        c.default = via(d, "`default`")?;
    }
    let mut routes = Vec::new();
    for (i, r) in p.route.iter().enumerate() {
        let n = i + 1;
        let r = r.get_ref();
        let dst = match &r.dst {
            None => None,
            Some(d) => Some(
                parse_cidr(d.get_ref())
                    .map_err(|m| err_at(src, d.span(), format!("route {n}: `dst`: {m}")))?,
            ),
        };
        let ports = match &r.ports {
            None => None,
            Some(v) => Some(
                ports(v.get_ref())
                    .map_err(|m| err_at(src, v.span(), format!("route {n}: `ports`: {m}")))?,
            ),
        };
        routes.push(Route {
            rule: r.rule,
            dst,
            ports,
            via: via(&r.upstream, &format!("route {n}: `upstream`"))?,
        });
    }
    c.routes = routes;
    let _ = span;
    Ok(c)
}

/// Reads and parses the configuration file `path`; errors name the file.
pub fn load(path: &Path) -> Result<Config, String> {
    let src = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    parse(&src).map_err(|e| {
        if e.line == 0 {
            format!("{}: {}", path.display(), e.message)
        } else {
            format!("{}:{}:{}: {}", path.display(), e.line, e.column, e.message)
        }
    })
}

/// Whether the TOML document at `path` has a `[prxd]` table (`None`: the
/// file cannot be read or is not TOML; [`load`] says why). prxd started by
/// launchd on a `prx.toml` without one has nothing to do and exits 0, which
/// its LaunchDaemon (`KeepAlive` = `SuccessfulExit` false) leaves stopped.
pub fn has_prxd_table(path: &Path) -> Option<bool> {
    let src = std::fs::read_to_string(path).ok()?;
    let v: toml::Table = toml::from_str(&src).ok()?;
    Some(v.contains_key("prxd"))
}

/// A password from the first line of a file (trailing newline removed).
pub fn read_password_file(path: &Path) -> Result<Secret, String> {
    let s = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let line = s.lines().next().unwrap_or("");
    if line.is_empty() {
        return Err(format!(
            "{} is empty: write the password on its first line",
            path.display()
        ));
    }
    Ok(Secret::new(line.to_string()))
}

/// A password from an environment variable.
pub fn read_password_env(var: &str) -> Result<Secret, String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Ok(Secret::new(v)),
        _ => Err(format!(
            "the environment variable {var} is not set (or empty)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_table_parses() {
        let c = parse(
            "[prxctl]\nx = 1\n[prxd]\nlisten = [\"127.0.0.1:7890\", \"[::1]:7890\"]\ndefault = \"corp\"\nmax_connections = 10\n\
             [prxd.upstream.corp]\nurl = \"http://proxy.example:3128\"\n\
             [[prxd.route]]\ndst = \"10.0.0.0/8\"\nports = \"80-443\"\nupstream = \"direct\"\n",
        )
        .unwrap();
        assert_eq!(c.listen.len(), 2);
        assert_eq!(c.max_connections, 10);
        assert_eq!(c.route(None, "10.1.2.3:80".parse().unwrap()), &Via::Direct);
        assert_eq!(
            c.route(None, "10.1.2.3:8080".parse().unwrap()),
            &Via::Upstream("corp".into())
        );
        assert_eq!(
            c.route(Some(1), "[::ffff:10.0.0.1]:443".parse().unwrap()),
            &Via::Direct
        );
    }

    #[test]
    fn errors_name_line_column_and_key() {
        let e = parse("[prxd]\nlisten = [\"127.0.0.1:1\"]\nlisten_on = 3\n").unwrap_err();
        assert_eq!(e.line, 3, "{e}");
        assert!(e.message.contains("listen_on"), "{e}");
        let e = parse("[prxd]\nlisten = [\"127.0.0.1\"]\n").unwrap_err();
        assert_eq!((e.line, e.column), (2, 11), "{e}");
        assert!(e.message.contains("ADDR:PORT"), "{e}");
        let e = parse("[prxd]\nlisten = [\"127.0.0.1:1\"]\ndefault = \"nope\"\n").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("line 3, column 11: `default`: no upstream named `nope`"),
            "{e}"
        );
        let e = parse(
            "[prxd]\nlisten = [\"127.0.0.1:1\"]\n[prxd.upstream.a]\nurl = \"socks5://u:pw@h:1\"\n",
        )
        .unwrap_err();
        assert!(e.message.contains("password"), "{e}");
        assert!(
            !e.message.contains("pw"),
            "the password is never echoed: {e}"
        );
        let e = parse("[prxd]\nlisten = [\"127.0.0.1:1\"]\nidle_timeout_s = 0\n").unwrap_err();
        // The example prx.toml the pkg installs is a valid prxd configuration.
        let c = parse(include_str!("../../prxctl/prx.toml.example")).expect("the shipped example");
        assert_eq!(c.listen.len(), 2);
        assert_eq!(c.user.as_deref(), Some("nobody"));
        assert_eq!(c.controls, [Kext::Socket, Kext::Ip]);
        assert_eq!(e.line, 3, "{e}");
        let e = parse("[prxctl]\n").unwrap_err();
        assert!(e.message.contains("no [prxd] table"), "{e}");
    }

    #[test]
    fn passwords_come_from_files_and_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "s3cret\n").unwrap();
        let src = format!(
            "[prxd]\nlisten = [\"127.0.0.1:1\"]\n[prxd.upstream.a]\nurl = \"socks5://alice@h:1\"\npassword_file = {:?}\n",
            f.display().to_string()
        );
        let c = parse(&src).unwrap();
        let up = &c.upstreams["a"];
        assert_eq!(up.password().unwrap().expose(), "s3cret");
        assert!(
            !format!("{up:?}").contains("s3cret"),
            "Debug never shows it"
        );
        let e = parse("[prxd]\nlisten = [\"127.0.0.1:1\"]\n[prxd.upstream.a]\nurl = \"socks5://alice@h:1\"\npassword_env = \"PRXD_TEST_NO_SUCH_VAR\"\n").unwrap_err();
        assert!(
            e.message.contains("PRXD_TEST_NO_SUCH_VAR is not set"),
            "{e}"
        );
    }
}
