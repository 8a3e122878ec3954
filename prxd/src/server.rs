//! The daemon: listeners, one task per connection (original destination,
//! trust, route, connect, relay), the status socket, SIGHUP and SIGTERM.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use common::net::addr::IpAddr as PIp;
use common::net::proxy_v2::{self, Addresses, Command};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::timeout;

use crate::config::{Config, Kext, Via};
use crate::kext::{self, Controls};
use crate::stats::Stats;
use crate::upstream::{self, HandshakeError, Kind, Target};

/// The longest PROXY v2 header prxd reads (the kext's is at most
/// `proxy_v2::MAX_LEN`; HAProxy's with its TLVs stays far below this).
pub const MAX_HEADER: usize = 4096;

/// The rule of a connection vouched for by its header's tag alone (the kext
/// had no record: its table was full); the header carries no rule number.
const RULE_SIGNED: u32 = u32::MAX - 1;

/// The running daemon's shared state.
pub struct Daemon {
    cfg: RwLock<Arc<Config>>,
    /// The counters.
    pub stats: Stats,
    controls: Controls,
    /// The configuration file (SIGHUP re-reads it), if any.
    config_path: Option<PathBuf>,
    listeners: std::sync::Mutex<HashMap<SocketAddr, JoinHandle<()>>>,
    epoch: Instant,
    /// The socket filter's PROXY v2 key (its control open), else `None`.
    auth_key: Option<proxy_v2::AuthKey>,
}

/// What became of a connection (the log line's `outcome`).
#[derive(Debug)]
enum Outcome {
    Ok,
    RefusedLimit,
    Forged(String),
    BadAuth,
    NoDestination,
    Loop,
    BadHeader(&'static str),
    HeaderTimeout,
    ConnectFailed(String),
    ConnectTimeout,
    UpstreamAuth(String),
    Upstream(String),
    Idle,
    Relay(String),
}

impl Outcome {
    fn text(&self) -> String {
        match self {
            Outcome::Ok => "ok".into(),
            Outcome::RefusedLimit => "refused: connection limit reached".into(),
            Outcome::Forged(m) => {
                format!("refused: PROXY v2 header not vouched for by a kext ({m})")
            }
            Outcome::BadAuth => {
                "refused: PROXY v2 header with a wrong authentication tag (not the kext's)".into()
            }
            Outcome::NoDestination => {
                "refused: no PROXY v2 header and no kext record for this client".into()
            }
            Outcome::Loop => "refused: the destination is prxd itself".into(),
            Outcome::BadHeader(m) => format!("refused: malformed PROXY v2 header ({m})"),
            Outcome::HeaderTimeout => "timed out waiting for the PROXY v2 header".into(),
            Outcome::ConnectFailed(m) => format!("connect failed: {m}"),
            Outcome::ConnectTimeout => "connect timed out".into(),
            Outcome::UpstreamAuth(m) => format!("upstream {m}"),
            Outcome::Upstream(m) => format!("upstream failed: {m}"),
            Outcome::Idle => "idle timeout".into(),
            Outcome::Relay(m) => format!("relay error: {m}"),
        }
    }

    fn count(&self, s: &Stats) {
        let c = match self {
            Outcome::Ok => &s.completed,
            Outcome::RefusedLimit => &s.refused_limit,
            Outcome::Forged(_) => &s.refused_forged_header,
            Outcome::BadAuth => &s.refused_bad_auth,
            Outcome::NoDestination => &s.refused_no_destination,
            Outcome::Loop => &s.refused_loop,
            Outcome::BadHeader(_) => &s.bad_header,
            Outcome::HeaderTimeout => &s.header_timeout,
            Outcome::ConnectFailed(_) => &s.connect_failed,
            Outcome::ConnectTimeout => &s.connect_timeout,
            Outcome::UpstreamAuth(_) => &s.upstream_auth_failed,
            Outcome::Upstream(_) => &s.upstream_failed,
            Outcome::Idle => &s.idle_timeout,
            Outcome::Relay(_) => &s.relay_error,
        };
        Stats::inc(c);
    }
}

/// One connection's log record.
#[derive(Default)]
struct Record {
    client: Option<SocketAddr>,
    pid: Option<u32>,
    process: Option<String>,
    dst: Option<SocketAddr>,
    rule: Option<String>,
    upstream: Option<String>,
    up: u64,
    down: u64,
}

/// The current UTC time, RFC 3339.
pub fn now() -> String {
    let t = time::OffsetDateTime::now_utc();
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// A log line (stderr; launchd sends it to the log file).
pub fn log(msg: &str) {
    eprintln!("{} prxd: {msg}", now());
}

pub(crate) fn socket_addr(e: &common::net::addr::Endpoint) -> SocketAddr {
    let a = match e.addr {
        PIp::V4(v) => SocketAddr::from((v, e.port)),
        PIp::V6(v) => SocketAddr::from((v, e.port)),
    };
    canonical(a)
}

pub(crate) fn canonical(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v) => match v.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::from((v4, v.port())),
            None => a,
        },
        v4 => v4,
    }
}

impl Daemon {
    /// A daemon for `cfg` with the open `controls`.
    pub fn new(
        cfg: Config,
        controls: Controls,
        config_path: Option<PathBuf>,
        auth_key: Option<proxy_v2::AuthKey>,
    ) -> Arc<Self> {
        Arc::new(Daemon {
            cfg: RwLock::new(Arc::new(cfg)),
            stats: Stats::default(),
            controls,
            config_path,
            listeners: std::sync::Mutex::new(HashMap::new()),
            epoch: Instant::now(),
            auth_key,
        })
    }

    /// Seconds since start.
    pub fn uptime(&self) -> u64 {
        self.epoch.elapsed().as_secs()
    }

    /// Re-reads the configuration file and applies it; a bad file changes
    /// nothing. Live connections keep the configuration they started with.
    pub async fn reload(self: &Arc<Self>) {
        let Some(path) = &self.config_path else {
            log("SIGHUP: no configuration file (prxd run): nothing to reload");
            return;
        };
        let new = match crate::config::load(path) {
            Ok(c) => c,
            Err(e) => {
                Stats::inc(&self.stats.reload_failed);
                log(&format!("reload refused, nothing changed: {e}"));
                return;
            }
        };
        let old = self.config();
        if new.controls != old.controls
            || new.status_socket != old.status_socket
            || new.user != old.user
        {
            log("reload: `controls`, `status_socket` and `user` take effect at the next start");
        }
        if let Ok(mut c) = self.cfg.write() {
            *c = Arc::new(new);
        }
        match self.apply_listeners().await {
            Ok(()) => {
                if !self.controls.is_empty() {
                    let listen = self.config().listen.clone();
                    if let Err(e) = tokio::task::block_in_place(|| self.controls.register(&listen))
                    {
                        log(&format!("reload: {e}"));
                    }
                }
                Stats::inc(&self.stats.reloads);
                log(&format!("reloaded {}", path.display()));
            }
            Err(e) => {
                // Put the old configuration back: nothing changes.
                if let Ok(mut c) = self.cfg.write() {
                    *c = old;
                }
                let _ = self.apply_listeners().await;
                Stats::inc(&self.stats.reload_failed);
                log(&format!("reload refused, nothing changed: {e}"));
            }
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        self.cfg
            .read()
            .map(|c| Arc::clone(&c))
            .unwrap_or_else(|p| Arc::clone(&p.into_inner()))
    }

    /// Binds the listeners of the configuration in force that are not bound
    /// yet and stops those no longer configured (their live connections go on).
    pub async fn apply_listeners(self: &Arc<Self>) -> Result<(), String> {
        let want = self.config().listen.clone();
        let mut bound = Vec::new();
        for a in &want {
            let have = self
                .listeners
                .lock()
                .map(|l| l.contains_key(a))
                .unwrap_or(false);
            if !have {
                let l = TcpListener::bind(a)
                    .await
                    .map_err(|e| format!("listen on {a}: {e}"))?;
                // The same address for the IP filter's UDP flows.
                let u = tokio::net::UdpSocket::bind(a)
                    .await
                    .map_err(|e| format!("listen on {a} (UDP): {e}"))?;
                bound.push((*a, l, u));
            }
        }
        let mut map = self
            .listeners
            .lock()
            .map_err(|_| "listener table poisoned".to_string())?;
        for (a, l, u) in bound {
            let d = Arc::clone(self);
            let du = Arc::clone(self);
            map.insert(
                a,
                tokio::spawn(async move {
                    tokio::join!(d.accept_loop(l), crate::udp::serve(du, u));
                }),
            );
            log(&format!("listening on {a}"));
        }
        map.retain(|a, h| {
            let keep = want.contains(a);
            if !keep {
                h.abort();
                log(&format!("stopped listening on {a}"));
            }
            keep
        });
        Ok(())
    }

    /// Stops every listener.
    pub fn stop_listening(&self) {
        if let Ok(mut map) = self.listeners.lock() {
            for (_, h) in map.drain() {
                h.abort();
            }
        }
    }

    async fn accept_loop(self: Arc<Self>, l: TcpListener) {
        loop {
            match l.accept().await {
                Ok((s, peer)) => {
                    Stats::inc(&self.stats.accepted);
                    let cfg = self.config();
                    let active = self.stats.active.load(Ordering::Relaxed);
                    if active >= cfg.max_connections as u64 {
                        let outcome = Outcome::RefusedLimit;
                        outcome.count(&self.stats);
                        drop(s);
                        self.log_conn(
                            &Record {
                                client: Some(peer),
                                ..Record::default()
                            },
                            Duration::ZERO,
                            &outcome,
                        );
                        continue;
                    }
                    self.stats.active.fetch_add(1, Ordering::Relaxed);
                    let d = Arc::clone(&self);
                    tokio::spawn(async move {
                        let start = Instant::now();
                        let mut rec = Record {
                            client: Some(peer),
                            ..Record::default()
                        };
                        let outcome = d.serve(s, peer, &cfg, &mut rec).await;
                        outcome.count(&d.stats);
                        d.stats.bytes_up.fetch_add(rec.up, Ordering::Relaxed);
                        d.stats.bytes_down.fetch_add(rec.down, Ordering::Relaxed);
                        d.log_conn(&rec, start.elapsed(), &outcome);
                        d.stats.active.fetch_sub(1, Ordering::Relaxed);
                    });
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    log(&format!("accept: {e}"));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn log_conn(&self, r: &Record, took: Duration, o: &Outcome) {
        let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        log(&format!(
            "conn client={} pid={} process={} dst={} rule={} upstream={} up={} down={} duration_ms={} outcome=\"{}\"",
            r.client.map_or("-".into(), |a| a.to_string()),
            r.pid.map_or("-".into(), |p| p.to_string()),
            opt(&r.process),
            r.dst.map_or("-".into(), |a| a.to_string()),
            opt(&r.rule),
            opt(&r.upstream),
            r.up,
            r.down,
            took.as_millis(),
            o.text()
        ));
    }

    pub(crate) async fn lookup(
        &self,
        peer: SocketAddr,
    ) -> Option<(Kext, common::net::origdst::Original)> {
        if self.controls.is_empty() {
            return None;
        }
        Stats::inc(&self.stats.lookups);
        // The controls are blocking sockets: ask off the reactor.
        let controls = &self.controls;
        let r = tokio::task::block_in_place(|| controls.lookup(peer));
        match r {
            Ok(v) => v,
            Err(e) => {
                Stats::inc(&self.stats.lookup_errors);
                log(&format!("lookup of {peer}: {e}"));
                None
            }
        }
    }

    /// Reads a PROXY v2 header (or finds there is none). `required`: the
    /// connection is useless without one. Returns the header's fields and the
    /// bytes read past it.
    async fn read_header(
        &self,
        s: &mut TcpStream,
        cfg: &Config,
        required: bool,
    ) -> Result<(Option<HeaderInfo>, Vec<u8>), Outcome> {
        let mut buf = vec![0u8; 0];
        let mut chunk = [0u8; 512];
        let deadline = tokio::time::Instant::now() + cfg.header_timeout;
        // A vouched client that sends nothing at first (server-speaks-first
        // protocols) has no header: wait only briefly for its first byte.
        if !required {
            match timeout(cfg.header_wait, s.peek(&mut chunk[..1])).await {
                Err(_) | Ok(Ok(0)) | Ok(Err(_)) => return Ok((None, buf)),
                Ok(Ok(_)) if chunk[0] != proxy_v2::SIGNATURE[0] => return Ok((None, buf)),
                Ok(Ok(_)) => {}
            }
        }
        loop {
            match proxy_v2::parse(&buf) {
                Ok(h) => {
                    let info = HeaderInfo {
                        command: h.command,
                        auth: self
                            .auth_key
                            .as_ref()
                            .map_or(proxy_v2::Auth::Missing, |k| h.authenticate(k)),
                        addrs: h.addrs,
                        pid: h.pid(),
                        process: h.process().map(|p| String::from_utf8_lossy(p).into_owned()),
                    };
                    let rest = buf.get(h.len..).unwrap_or(&[]).to_vec();
                    return Ok((Some(info), rest));
                }
                Err(proxy_v2::Error::Incomplete { need }) => {
                    if need > MAX_HEADER {
                        return Err(Outcome::BadHeader("longer than prxd accepts"));
                    }
                    // Read only what the header needs: the payload stays in the socket.
                    let want = (need - buf.len()).min(chunk.len());
                    match tokio::time::timeout_at(deadline, s.read(&mut chunk[..want])).await {
                        Err(_) => return Err(Outcome::HeaderTimeout),
                        Ok(Ok(0)) => {
                            return Err(Outcome::BadHeader("truncated: the client closed"));
                        }
                        Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
                        Ok(Err(_)) => return Err(Outcome::BadHeader("read error")),
                    }
                }
                Err(proxy_v2::Error::Signature { .. }) if !required => {
                    // A vouched client whose data merely starts with 0x0D:
                    // no header; what was read is its first bytes.
                    return Ok((None, buf));
                }
                Err(e) => return Err(Outcome::BadHeader(e.describe())),
            }
        }
    }

    async fn serve(
        &self,
        mut s: TcpStream,
        peer: SocketAddr,
        cfg: &Config,
        rec: &mut Record,
    ) -> Outcome {
        let vouched = self.lookup(peer).await;
        let (header, early) = match self.read_header(&mut s, cfg, vouched.is_none()).await {
            Ok(v) => v,
            Err(o) => return o,
        };
        let hdr = header.as_ref().and_then(|h| match (h.command, h.addrs) {
            (Command::Proxy, Addresses::Ip { src, dst }) => Some((src, dst)),
            _ => None,
        });
        if let Some(h) = &header {
            rec.pid = h.pid;
            rec.process = h.process.clone();
            // A tag that does not verify: someone imitating the kext.
            if h.auth == proxy_v2::Auth::Bad {
                rec.dst = hdr.map(|(_, d)| socket_addr(&d));
                return Outcome::BadAuth;
            }
        }
        // A tag that verifies vouches for the header like the kext's record
        // (the kext wrote it this boot), if it is about this very connection.
        let signed = header
            .as_ref()
            .is_some_and(|h| h.auth == proxy_v2::Auth::Good);
        if signed {
            Stats::inc(&self.stats.headers_verified);
        }
        let (dst, rule) = match (&vouched, hdr) {
            (Some((k, o)), Some((src, dst))) => {
                let kd = socket_addr(&o.dst);
                let (hs, hd) = (socket_addr(&src), socket_addr(&dst));
                if kd != hd || hs != canonical(peer) {
                    rec.dst = Some(hd);
                    return Outcome::Forged(format!(
                        "header says {hs} -> {hd}, {} says {} -> {kd}",
                        kext::kext_name(*k),
                        canonical(peer)
                    ));
                }
                rec.pid = rec.pid.or(Some(o.pid));
                (kd, Some((*k, o.rule)))
            }
            (Some((k, o)), None) => {
                rec.pid = Some(o.pid);
                (socket_addr(&o.dst), Some((*k, o.rule)))
            }
            (None, Some((src, dst))) if signed => {
                let hs = socket_addr(&src);
                if hs != canonical(peer) {
                    rec.dst = Some(socket_addr(&dst));
                    return Outcome::Forged(format!(
                        "a signed header for {hs} replayed by {}",
                        canonical(peer)
                    ));
                }
                (socket_addr(&dst), Some((Kext::Socket, RULE_SIGNED)))
            }
            (None, Some((_, dst))) if cfg.trust_header => (socket_addr(&dst), None),
            (None, Some((_, dst))) => {
                rec.dst = Some(socket_addr(&dst));
                return Outcome::Forged(format!("no kext redirected {peer}"));
            }
            (None, None) => return Outcome::NoDestination,
        };
        rec.dst = Some(dst);
        // Rule numbers as `prxctl lookup` shows them (0: the first [[rule]]).
        let unknown = common::net::control::RULE_UNKNOWN;
        rec.rule = Some(match rule {
            Some((Kext::Socket, RULE_SIGNED)) => "socket:signed".into(),
            Some((Kext::Socket, r)) if r == unknown => "socket:default".into(),
            Some((Kext::Socket, r)) => format!("socket:{r}"),
            Some((Kext::Ip, r)) if r == unknown => "ip:nat".into(),
            Some((Kext::Ip, r)) => format!("ip:{r}"),
            None => "header".into(),
        });
        if cfg.listen.iter().any(|l| canonical(*l) == dst) {
            return Outcome::Loop;
        }
        let via = cfg.route(rule.map(|(_, r)| r), dst).clone();
        rec.upstream = Some(via.to_string());
        let connected = timeout(cfg.connect_timeout, self.connect(&via, dst, cfg)).await;
        let (mut out, late) = match connected {
            Err(_) => return Outcome::ConnectTimeout,
            Ok(Err(o)) => return o,
            Ok(Ok(v)) => v,
        };
        let _ = s.set_nodelay(true);
        let _ = out.set_nodelay(true);
        // Bytes that arrived with the handshakes go first.
        if !early.is_empty() {
            if let Err(e) = out.write_all(&early).await {
                return Outcome::Relay(e.to_string());
            }
            rec.up += early.len() as u64;
        }
        if !late.is_empty() {
            if let Err(e) = s.write_all(&late).await {
                return Outcome::Relay(e.to_string());
            }
            rec.down += late.len() as u64;
        }
        self.relay(s, out, cfg, rec).await
    }

    async fn connect(
        &self,
        via: &Via,
        dst: SocketAddr,
        cfg: &Config,
    ) -> Result<(TcpStream, Vec<u8>), Outcome> {
        match via {
            Via::Direct => TcpStream::connect(dst)
                .await
                .map(|s| (s, Vec::new()))
                .map_err(|e| Outcome::ConnectFailed(format!("{dst}: {e}"))),
            Via::Upstream(name) => {
                let Some(up) = cfg.upstreams.get(name) else {
                    return Err(Outcome::Upstream(format!("no upstream `{name}`")));
                };
                let mut s = TcpStream::connect(up.authority()).await.map_err(|e| {
                    Outcome::ConnectFailed(format!("upstream `{name}` at {}: {e}", up.authority()))
                })?;
                let target = Target::Addr(dst);
                let r = match up.kind {
                    Kind::Socks5 => upstream::socks5(&mut s, up, &target)
                        .await
                        .map(|()| Vec::new()),
                    Kind::Http => upstream::http_connect(&mut s, up, &target).await,
                };
                match r {
                    Ok(late) => Ok((s, late)),
                    Err(HandshakeError::Auth(m)) => Err(Outcome::UpstreamAuth(format!(
                        "`{name}` ({up}): authentication failed: {m}"
                    ))),
                    Err(e) => Err(Outcome::Upstream(format!("`{name}` ({up}): {e}"))),
                }
            }
        }
    }

    async fn relay(
        &self,
        mut client: TcpStream,
        mut out: TcpStream,
        cfg: &Config,
        rec: &mut Record,
    ) -> Outcome {
        let last = AtomicU64::new(0);
        let up = AtomicU64::new(0);
        let down = AtomicU64::new(0);
        let (mut cr, mut cw) = client.split();
        let (mut or, mut ow) = out.split();
        let epoch = Instant::now();
        let r = tokio::try_join!(
            pump(&mut cr, &mut ow, cfg, &last, &up, epoch),
            pump(&mut or, &mut cw, cfg, &last, &down, epoch),
        );
        rec.up += up.load(Ordering::Relaxed);
        rec.down += down.load(Ordering::Relaxed);
        match r {
            Ok(_) => Outcome::Ok,
            Err(PumpError::Idle) => Outcome::Idle,
            Err(PumpError::Io(e)) => Outcome::Relay(e.to_string()),
        }
    }
}

struct HeaderInfo {
    command: Command,
    /// The authenticating tag under the socket filter's key.
    auth: proxy_v2::Auth,
    addrs: Addresses,
    pid: Option<u32>,
    process: Option<String>,
}

enum PumpError {
    Idle,
    Io(io::Error),
}

/// Copies `r` to `w` through one bounded buffer (a full `w` stops reading `r`:
/// back-pressure), then half-closes `w`. Fails when neither direction moved a
/// byte for the idle timeout. The buffer exists only while bytes flow: it is
/// allocated when `r` becomes readable and given back when `r` runs dry, so an
/// idle connection holds no relay memory.
async fn pump<W: AsyncWrite + Unpin>(
    r: &mut tokio::net::tcp::ReadHalf<'_>,
    w: &mut W,
    cfg: &Config,
    last: &AtomicU64,
    total: &AtomicU64,
    epoch: Instant,
) -> Result<(), PumpError> {
    let mut buf: Option<Vec<u8>> = None;
    let idle = cfg.idle_timeout;
    let quiet = |last: &AtomicU64| {
        let now = epoch.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(last.load(Ordering::Relaxed))) >= idle
    };
    let touch =
        |last: &AtomicU64| last.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    loop {
        if buf.is_none() {
            match timeout(idle, r.readable()).await {
                Err(_) if quiet(last) => return Err(PumpError::Idle),
                Err(_) => continue,
                Ok(Err(e)) => return Err(PumpError::Io(e)),
                Ok(Ok(())) => {}
            }
        }
        let b = buf.get_or_insert_with(|| vec![0u8; cfg.buffer_bytes]);
        let n = match r.try_read(b) {
            Ok(0) => {
                let _ = w.shutdown().await;
                return Ok(());
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                buf = None; // dry: give the memory back until the next bytes
                continue;
            }
            Err(e) => return Err(PumpError::Io(e)),
        };
        touch(last);
        let mut off = 0;
        while off < n {
            match timeout(idle, w.write(&b[off..n])).await {
                Err(_) if quiet(last) => return Err(PumpError::Idle),
                Err(_) => continue,
                Ok(Ok(0)) => return Err(PumpError::Io(io::ErrorKind::WriteZero.into())),
                Ok(Ok(m)) => {
                    off += m;
                    total.fetch_add(m as u64, Ordering::Relaxed);
                    touch(last);
                }
                Ok(Err(e)) => return Err(PumpError::Io(e)),
            }
        }
    }
}
