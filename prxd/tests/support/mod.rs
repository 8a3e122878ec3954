//! Shared by prxd's tests: the prxd binary as a child, origin servers,
//! PROXY v2 clients, third-party servers on loopback.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::net::addr::{Endpoint, IpAddr};
use common::net::proxy_v2;

/// A free loopback port (bound, then released: the caller binds it again).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

pub fn endpoint(a: SocketAddr) -> Endpoint {
    match a {
        SocketAddr::V4(v) => Endpoint::new(IpAddr::V4(v.ip().octets()), v.port()),
        SocketAddr::V6(v) => Endpoint::new(IpAddr::V6(v.ip().octets()), v.port()),
    }
}

/// A PROXY v2 header claiming `src` -> `dst`.
pub fn header(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let mut out = vec![0u8; 128];
    let n = proxy_v2::emit(&endpoint(src), &endpoint(dst), &[], &mut out).expect("emit");
    out.truncate(n);
    out
}

/// A running prxd; killed (SIGKILL) when dropped unless it exited.
pub struct Prxd {
    pub child: Child,
    pub log: PathBuf,
    pub listen: SocketAddr,
    pub status: PathBuf,
    _dir: tempfile::TempDir,
}

impl Prxd {
    /// `prxd ARGS` with stderr to a log file; waits until it listens on `listen`.
    pub fn start(args: &[String], env: &[(&str, &str)], listen: SocketAddr) -> Prxd {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("prxd.log");
        let status = dir.path().join("status.sock");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_prxd"));
        cmd.args(args)
            .env_remove("PRXD_UPSTREAM_PASSWORD")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut p = Prxd {
            child: cmd.spawn().expect("spawn prxd"),
            log,
            listen,
            status,
            _dir: dir,
        };
        let start = Instant::now();
        loop {
            if p.log_text().contains(&format!("listening on {listen}")) {
                break;
            }
            if let Ok(Some(st)) = p.child.try_wait() {
                panic!("prxd exited ({st}) before listening:\n{}", p.log_text());
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "prxd never listened:\n{}",
                p.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        p
    }

    /// `prxd run --listen ADDR EXTRA… --status-socket S`.
    pub fn run(extra: &[&str], env: &[(&str, &str)]) -> Prxd {
        let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let dir = tempfile::tempdir().expect("tempdir");
        let status = dir.path().join("status.sock");
        let mut args: Vec<String> = vec![
            "run".into(),
            "--listen".into(),
            listen.to_string(),
            "--status-socket".into(),
            status.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut p = Prxd::start(&args, env, listen);
        p.status = status;
        // Keep the status socket's directory alive with the daemon.
        std::mem::forget(dir);
        p
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The `conn` log lines.
    pub fn conn_lines(&self) -> Vec<String> {
        self.log_text()
            .lines()
            .filter(|l| l.contains(" prxd: conn "))
            .map(String::from)
            .collect()
    }

    /// Waits until some `conn` line contains every one of `parts`; returns it.
    pub fn wait_line(&self, parts: &[&str]) -> String {
        let start = Instant::now();
        loop {
            if let Some(l) = self
                .conn_lines()
                .into_iter()
                .find(|l| parts.iter().all(|p| l.contains(p)))
            {
                return l;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "no log line with {parts:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A counter from `prxd status`.
    pub fn counter(&self, name: &str) -> u64 {
        let out = Command::new(env!("CARGO_BIN_EXE_prxd"))
            .args(["status", "--socket"])
            .arg(&self.status)
            .output()
            .expect("prxd status");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no counter {name} in\n{text}"))
    }

    /// Waits until counter `name` is at least `want`.
    pub fn wait_counter(&self, name: &str, want: u64) {
        let start = Instant::now();
        while self.counter(name) < want {
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "{name} stays below {want}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child.
        let r = unsafe { libc::kill(self.child.id() as i32, sig) };
        assert_eq!(r, 0);
    }

    /// Resident memory in KiB (Linux /proc).
    pub fn rss_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Prxd {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A third-party server process, killed when dropped.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    pub fn spawn(
        program: &str,
        args: &[String],
        dir: tempfile::TempDir,
        addr: SocketAddr,
    ) -> Server {
        let log = dir.path().join(format!("{program}.log"));
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).expect("log"))
            .stderr(std::fs::File::create(dir.path().join(format!("{program}.err"))).expect("log"))
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{program} (a Debian package the tests need; `cargo xtask test` installs it): {e}")
            });
        let s = Server {
            child,
            addr,
            log,
            _dir: dir,
        };
        let start = Instant::now();
        while TcpStream::connect(addr).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{program} never listened on {addr}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        s
    }

    pub fn dir(&self) -> &Path {
        self._dir.path()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An origin server: for each connection, reads until EOF, answers
/// `pong:` + what it read, and closes. Returns its address.
pub fn origin() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("origin");
    let a = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut got = Vec::new();
                let _ = s.read_to_end(&mut got);
                let mut reply = b"pong:".to_vec();
                reply.extend(&got);
                let _ = s.write_all(&reply);
            });
        }
    });
    a
}

/// An origin that accepts and holds connections open without reading.
pub fn holding_origin() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("origin");
    let a = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming() {
            held.push(s);
        }
    });
    a
}

/// Connects to `proxy`, sends `pre` (a header), then `data`, half-closes, and
/// reads until EOF. `None` if the connection was refused/reset with nothing read.
pub fn exchange(proxy: SocketAddr, pre: &[u8], data: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(proxy).expect("connect to prxd");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let _ = s.write_all(pre);
    let _ = s.write_all(data);
    let _ = s.shutdown(Shutdown::Write);
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    got
}

/// An origin server for upstreams that do not pass half-closes on (microsocks
/// and tinyproxy close both ways at the client's EOF): reads one line,
/// answers `pong:` + the line, and closes.
pub fn line_origin() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("origin");
    let a = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut got = Vec::new();
                let mut b = [0u8; 1];
                while !got.ends_with(b"\n") {
                    match s.read(&mut b) {
                        Ok(1) => got.push(b[0]),
                        _ => break,
                    }
                }
                let mut reply = b"pong:".to_vec();
                reply.extend(&got);
                let _ = s.write_all(&reply);
            });
        }
    });
    a
}

/// Connects to `proxy`, sends `pre` and `data` (no half-close), reads until EOF.
pub fn exchange_open(proxy: SocketAddr, pre: &[u8], data: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(proxy).expect("connect to prxd");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let _ = s.write_all(pre);
    let _ = s.write_all(data);
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    got
}
