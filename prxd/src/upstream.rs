//! Upstream proxies: SOCKS5 (RFC 1928 CONNECT, RFC 1929 username/password)
//! and HTTP/1.1 CONNECT (RFC 9110 section 9.3.6, Basic proxy
//! authentication, RFC 7617). Each handshake runs on a connected stream and
//! leaves it carrying the client's bytes to the destination.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use base64::Engine as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A password: never printed, never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a password.
    pub fn new(s: String) -> Self {
        Secret(s)
    }
    /// The password itself (for the handshake only).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// The kind of upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `socks5://`.
    Socks5,
    /// `http://` (CONNECT).
    Http,
}

/// An upstream proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// SOCKS5 or HTTP.
    pub kind: Kind,
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// User name, if it authenticates.
    pub user: Option<String>,
    password: Option<Secret>,
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.kind {
            Kind::Socks5 => "socks5",
            Kind::Http => "http",
        };
        let user = self
            .user
            .as_deref()
            .map(|u| format!("{u}@"))
            .unwrap_or_default();
        write!(f, "{scheme}://{user}{}:{}", self.host, self.port)
    }
}

impl Upstream {
    /// Parses `socks5://[USER@]HOST:PORT` or `http://[USER@]HOST[:PORT]`; the
    /// password is given separately (a file or the environment), never in the URL.
    pub fn parse(url: &str, password: Option<Secret>) -> Result<Self, String> {
        let u = url::Url::parse(url).map_err(|e| format!("`{}` is not a URL: {e}", redact(url)))?;
        let kind = match u.scheme() {
            "socks5" | "socks5h" => Kind::Socks5,
            "http" => Kind::Http,
            s => {
                return Err(format!(
                    "scheme `{s}`: prxd speaks socks5:// and http:// (CONNECT) upstreams"
                ));
            }
        };
        if u.password().is_some() {
            return Err(
                "the URL holds a password: take it out and give it with `password_file` or `password_env` (the environment variable PRXD_UPSTREAM_PASSWORD for `prxd run`)"
                    .into(),
            );
        }
        let host = match u.host() {
            Some(url::Host::Domain(d)) => d.to_string(),
            Some(url::Host::Ipv4(a)) => a.to_string(),
            Some(url::Host::Ipv6(a)) => a.to_string(),
            None => return Err(format!("`{}` names no host", redact(url))),
        };
        let port = match (u.port(), kind) {
            (Some(p), _) => p,
            (None, Kind::Http) => 80,
            (None, Kind::Socks5) => 1080,
        };
        if !(u.path().is_empty() || u.path() == "/") || u.query().is_some() {
            return Err(format!(
                "`{url}`: an upstream URL is only SCHEME://[USER@]HOST:PORT"
            ));
        }
        let user = (!u.username().is_empty()).then(|| {
            url::form_urlencoded::parse(format!("u={}", u.username()).as_bytes())
                .next()
                .map_or_else(|| u.username().to_string(), |(_, v)| v.into_owned())
        });
        if user.is_some() != password.is_some() {
            return Err(if user.is_some() {
                "a user but no password: add `password_file` or `password_env`".into()
            } else {
                "a password but no user: write it as SCHEME://USER@HOST:PORT".into()
            });
        }
        Ok(Upstream {
            kind,
            host,
            port,
            user,
            password,
        })
    }

    /// The password, if any.
    pub fn password(&self) -> Option<&Secret> {
        self.password.as_ref()
    }

    /// `host:port` for connecting (brackets around IPv6).
    pub fn authority(&self) -> String {
        authority(&self.host, self.port)
    }
}

/// `url` for messages: anything between `://` and the last `@` (user and
/// password) replaced, so a password put in the URL is never echoed.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://…@{}", &url[..s], &url[at + 1..]),
        _ => url.to_string(),
    }
}

fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Where the upstream should connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// An address.
    Addr(SocketAddr),
    /// A name and a port (the upstream resolves it).
    Name(String, u16),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Addr(a) => write!(f, "{a}"),
            Target::Name(h, p) => write!(f, "{}", authority(h, *p)),
        }
    }
}

/// Why a handshake failed.
#[derive(Debug)]
pub enum HandshakeError {
    /// I/O.
    Io(std::io::Error),
    /// The upstream refused the credentials.
    Auth(String),
    /// The upstream answered but refused or failed the connection.
    Refused(String),
    /// The upstream does not speak the protocol.
    Protocol(String),
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::Io(e) => write!(f, "{e}"),
            HandshakeError::Auth(m) => write!(f, "authentication failed: {m}"),
            HandshakeError::Refused(m) => write!(f, "refused: {m}"),
            HandshakeError::Protocol(m) => write!(f, "protocol error: {m}"),
        }
    }
}

impl From<std::io::Error> for HandshakeError {
    fn from(e: std::io::Error) -> Self {
        HandshakeError::Io(e)
    }
}

fn socks_reply(code: u8) -> &'static str {
    match code {
        1 => "general SOCKS server failure",
        2 => "connection not allowed by ruleset",
        3 => "network unreachable",
        4 => "host unreachable",
        5 => "connection refused",
        6 => "TTL expired",
        7 => "command not supported",
        8 => "address type not supported",
        _ => "unassigned reply code",
    }
}

/// RFC 1928 CONNECT (with RFC 1929 authentication when `up` has a user).
pub async fn socks5<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    up: &Upstream,
    to: &Target,
) -> Result<(), HandshakeError> {
    socks5_command(s, up, 1, to).await.map(|_| ())
}

/// RFC 1928 §7 UDP ASSOCIATE (with RFC 1929 authentication when `up` has a
/// user): `from` is the address prxd will send the datagrams from (or
/// 0.0.0.0:0). Returns the relay's address (BND.ADDR/BND.PORT; an
/// unspecified BND.ADDR means the server's own address). The association
/// lives as long as `s` stays open.
pub async fn socks5_udp_associate<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    up: &Upstream,
    from: SocketAddr,
) -> Result<Option<SocketAddr>, HandshakeError> {
    socks5_command(s, up, 3, &Target::Addr(from)).await
}

/// Greeting, authentication and one request `cmd`; returns the bound
/// address when it is an IP address.
async fn socks5_command<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    up: &Upstream,
    cmd: u8,
    to: &Target,
) -> Result<Option<SocketAddr>, HandshakeError> {
    let auth = up.user.as_deref().zip(up.password.as_ref());
    // Greeting: offer exactly the method we can use.
    let method = if auth.is_some() { 0x02 } else { 0x00 };
    s.write_all(&[5, 1, method]).await?;
    let mut r = [0u8; 2];
    s.read_exact(&mut r).await?;
    if r[0] != 5 {
        return Err(HandshakeError::Protocol(format!(
            "version {} in the method reply (not a SOCKS5 server?)",
            r[0]
        )));
    }
    match (r[1], auth) {
        (0x00, None) => {}
        (0x02, Some((user, pass))) => {
            let (u, p) = (user.as_bytes(), pass.expose().as_bytes());
            let (Ok(ul), Ok(pl)) = (u8::try_from(u.len()), u8::try_from(p.len())) else {
                return Err(HandshakeError::Auth(
                    "user name or password longer than 255 bytes (RFC 1929)".into(),
                ));
            };
            let mut m = Vec::with_capacity(3 + u.len() + p.len());
            m.extend([1, ul]);
            m.extend(u);
            m.push(pl);
            m.extend(p);
            s.write_all(&m).await?;
            let mut a = [0u8; 2];
            s.read_exact(&mut a).await?;
            if a[1] != 0 {
                return Err(HandshakeError::Auth(format!(
                    "the SOCKS5 server rejected user `{user}` (status {}): check the user and the password",
                    a[1]
                )));
            }
        }
        (0xFF, Some(_)) => {
            return Err(HandshakeError::Auth(
                "the SOCKS5 server accepts no username/password authentication".into(),
            ));
        }
        (0xFF, None) => {
            return Err(HandshakeError::Auth(
                "the SOCKS5 server requires authentication: give the upstream a user and a password".into(),
            ));
        }
        (m, _) => {
            return Err(HandshakeError::Protocol(format!(
                "the SOCKS5 server chose method {m:#04x}, which was not offered"
            )));
        }
    }
    let mut req = vec![5, cmd, 0];
    let port = match to {
        Target::Addr(a) => {
            match a.ip() {
                IpAddr::V4(v) => {
                    req.push(1);
                    req.extend(v.octets());
                }
                IpAddr::V6(v) => match v.to_ipv4_mapped() {
                    Some(v4) => {
                        req.push(1);
                        req.extend(v4.octets());
                    }
                    None => {
                        req.push(4);
                        req.extend(v.octets());
                    }
                },
            }
            a.port()
        }
        Target::Name(h, p) => {
            let n = u8::try_from(h.len())
                .map_err(|_| HandshakeError::Protocol("host name longer than 255 bytes".into()))?;
            req.extend([3, n]);
            req.extend(h.as_bytes());
            *p
        }
    };
    req.extend(port.to_be_bytes());
    s.write_all(&req).await?;
    let mut h = [0u8; 4];
    s.read_exact(&mut h).await?;
    if h[0] != 5 {
        return Err(HandshakeError::Protocol(format!(
            "version {} in the CONNECT reply",
            h[0]
        )));
    }
    if h[1] != 0 {
        return Err(HandshakeError::Refused(format!(
            "SOCKS5 reply {}: {}",
            h[1],
            socks_reply(h[1])
        )));
    }
    // The bound address.
    let skip = match h[3] {
        1 => 4 + 2,
        4 => 16 + 2,
        3 => {
            let mut n = [0u8; 1];
            s.read_exact(&mut n).await?;
            usize::from(n[0]) + 2
        }
        t => {
            return Err(HandshakeError::Protocol(format!(
                "address type {t} in the reply"
            )));
        }
    };
    let mut b = vec![0u8; skip];
    s.read_exact(&mut b).await?;
    Ok(match (h[3], b.len()) {
        (1, 6) => {
            let ip: [u8; 4] = b[..4].try_into().unwrap_or([0; 4]);
            Some(SocketAddr::new(
                IpAddr::from(ip),
                u16::from_be_bytes([b[4], b[5]]),
            ))
        }
        (4, 18) => {
            let ip: [u8; 16] = b[..16].try_into().unwrap_or([0; 16]);
            Some(SocketAddr::new(
                IpAddr::from(ip),
                u16::from_be_bytes([b[16], b[17]]),
            ))
        }
        _ => None,
    })
}

/// The RFC 1928 §7 header of a datagram to `to` through a UDP relay.
pub fn socks5_udp_header(to: SocketAddr) -> Vec<u8> {
    let mut h = vec![0, 0, 0];
    match to.ip() {
        IpAddr::V4(v) => {
            h.push(1);
            h.extend(v.octets());
        }
        IpAddr::V6(v) => match v.to_ipv4_mapped() {
            Some(v4) => {
                h.push(1);
                h.extend(v4.octets());
            }
            None => {
                h.push(4);
                h.extend(v.octets());
            }
        },
    }
    h.extend(to.port().to_be_bytes());
    h
}

/// Splits a datagram from a UDP relay into its source and payload; `None`
/// for a fragment (FRAG != 0: dropped, as RFC 1928 allows) or a malformed one.
pub fn socks5_udp_split(d: &[u8]) -> Option<(SocketAddr, &[u8])> {
    let (&[0, 0, frag, atyp], rest) = d.split_first_chunk::<4>()? else {
        return None;
    };
    if frag != 0 {
        return None;
    }
    match atyp {
        1 => {
            let (a, rest) = rest.split_first_chunk::<6>()?;
            let ip: [u8; 4] = a[..4].try_into().ok()?;
            Some((
                SocketAddr::new(IpAddr::from(ip), u16::from_be_bytes([a[4], a[5]])),
                rest,
            ))
        }
        4 => {
            let (a, rest) = rest.split_first_chunk::<18>()?;
            let ip: [u8; 16] = a[..16].try_into().ok()?;
            Some((
                SocketAddr::new(IpAddr::from(ip), u16::from_be_bytes([a[16], a[17]])),
                rest,
            ))
        }
        _ => None,
    }
}

/// The longest response head an HTTP upstream may send.
const MAX_HEAD: usize = 16 * 1024;

/// HTTP/1.1 CONNECT (with Basic proxy authentication when `up` has a user).
/// Returns any bytes the proxy sent after its response head (the destination's
/// first bytes), which belong to the client.
pub async fn http_connect<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    up: &Upstream,
    to: &Target,
) -> Result<Vec<u8>, HandshakeError> {
    let target = match to {
        Target::Addr(a) => {
            let ip = match a.ip() {
                IpAddr::V6(v) => v.to_ipv4_mapped().map_or(IpAddr::V6(v), IpAddr::V4),
                v4 => v4,
            };
            SocketAddr::new(ip, a.port()).to_string()
        }
        Target::Name(h, p) => authority(h, *p),
    };
    let mut req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let (Some(u), Some(p)) = (&up.user, &up.password) {
        let cred = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{}", p.expose()));
        req.push_str(&format!("Proxy-Authorization: Basic {cred}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(HandshakeError::Protocol(
                "the HTTP proxy closed the connection before answering CONNECT".into(),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let code = resp.code.unwrap_or(0);
                let reason = resp.reason.unwrap_or("").to_string();
                return match code {
                    200..=299 => Ok(buf.split_off(len)),
                    // 407 is the standard answer; some proxies (tinyproxy) send 401.
                    401 | 407 => Err(HandshakeError::Auth(format!(
                        "the HTTP proxy answered {code} {reason}: {}",
                        if up.user.is_some() {
                            "check the user and the password"
                        } else {
                            "it requires a user and a password"
                        }
                    ))),
                    _ => Err(HandshakeError::Refused(format!(
                        "the HTTP proxy answered {code} {reason}"
                    ))),
                };
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
            Ok(httparse::Status::Partial) => {
                return Err(HandshakeError::Protocol(format!(
                    "the HTTP proxy's response head is longer than {MAX_HEAD} bytes"
                )));
            }
            Err(e) => {
                return Err(HandshakeError::Protocol(format!(
                    "the HTTP proxy's response does not parse: {e}"
                )));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_refuse_inline_passwords() {
        let u = Upstream::parse(
            "socks5://alice@127.0.0.1:1080",
            Some(Secret::new("x".into())),
        )
        .unwrap();
        assert_eq!(
            (u.kind, u.host.as_str(), u.port),
            (Kind::Socks5, "127.0.0.1", 1080)
        );
        assert_eq!(u.to_string(), "socks5://alice@127.0.0.1:1080");
        let h = Upstream::parse("http://[::1]:3128", None).unwrap();
        assert_eq!(h.authority(), "[::1]:3128");
        assert!(
            Upstream::parse("http://a:b@h:1", None)
                .unwrap_err()
                .contains("password_file")
        );
        assert!(
            Upstream::parse("socks4://h:1", None)
                .unwrap_err()
                .contains("scheme `socks4`")
        );
        assert!(
            Upstream::parse("socks5://bob@h:1", None)
                .unwrap_err()
                .contains("no password")
        );
    }
}
