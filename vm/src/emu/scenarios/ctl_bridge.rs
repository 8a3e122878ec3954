//! The `ctl-bridge` scenario: serves the emulated kern_controls to processes
//! outside the emulator (`prxctl --emu SOCKET`) over a Unix socket, so user
//! space is tested end to end against the real kext binary.
//!
//! Started with `prx-emu child --ctl-bridge PATH --scenario ctl-bridge --kext …`.
//! Connections are served one at a time, on the scenario thread (the emulated
//! kernel is single-threaded). One Unix-socket connection is one kern_control
//! client, disconnected at EOF. Frames, big-endian:
//!
//! ```text
//! request:  kind u8, 0 0 0, uid u32, opt i32, len u32, data[len]   (len <= 1 MiB)
//! answer:   errno i32, len u32, data[len]
//! ```
//!
//! - kind 1, connect: data is the control's name; the client is privileged
//!   (`CTL_FLAG_PRIVILEGED`) when the uid is 0. The uid is the one the client
//!   claims: this is a test harness, not a security boundary.
//! - kind 2, setopt: data is the option value; the answer is the kext's errno.
//! - kind 3, getopt: data is the caller's whole in/out buffer (its length is
//!   the buffer size the kext sees); the answer carries the `len` the kext
//!   reported (never more than the buffer: see [`crate::emu::abi::ctl::getopt`]).
//! - kind 4, command (tests, no control client needed): `open ADDR:PORT`
//!   opens a TCP connection as the process (4242, "prx-emu-client") through
//!   the socket filters (as the `sockfilter` scenario does) and keeps it open,
//!   sending `hello\n`; the answer is `local ADDR target ADDR`; `open-as PID
//!   NAME ADDR:PORT` does the same as another process. `recv` reads
//!   what the last opened connection's peer sent until it closed (2 s at
//!   most; the answer is the bytes); `close` closes (detaches) that
//!   connection. `run nat-tcp4`
//!   (`nat-tcp6`, `nat-udp4`, `nat-udp6`) carries that smoltcp traffic through
//!   the IP filters as configured by the bridge's clients (see
//!   [`super::stacks`]); the answer is `passed` or `failed`. `run nat-prxd
//!   ORIGIN PRXD` hands the IP filter's translated connection to a real prxd
//!   on loopback ([`super::nat_bridge`]; `run nat-prxd-udp ORIGIN PRXD` a
//!   UDP flow); while it runs, other clients of this
//!   bridge (prxd's lookups) are served from inside its loop. `quit` ends the
//!   serving: open connections are closed and the scenario stops and unloads
//!   the kexts and checks the ledgers as every scenario does.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::sys::{EINVAL, EISCONN, ENOTCONN};

use super::sockets;
use crate::emu::abi::ctl;
use crate::emu::kernel::events::step;

const CONNECT: u8 = 1;
const SETOPT: u8 = 2;
const GETOPT: u8 = 3;
const COMMAND: u8 = 4;
const MAX_DATA: usize = 1 << 20;
/// How long the scenario serves at most without a `quit`, unless
/// [`set_serve_for`] says otherwise.
const SERVE_FOR: Duration = Duration::from_secs(120);

static SERVE_LIMIT: Mutex<Option<Duration>> = Mutex::new(None);

/// Sets how long the `ctl-bridge` scenario serves without a `quit` (`--serve-for`).
pub fn set_serve_for(d: Duration) {
    if let Ok(mut g) = SERVE_LIMIT.lock() {
        *g = Some(d);
    }
}

static PATH: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Sets the socket path the `ctl-bridge` scenario listens on (`--ctl-bridge`).
pub fn set_path(p: Option<PathBuf>) {
    if let Ok(mut g) = PATH.lock() {
        *g = p;
    }
}

/// The `ctl-bridge` scenario.
pub fn ctl_bridge() -> bool {
    let path = PATH.lock().ok().and_then(|g| g.clone());
    let serve_for = SERVE_LIMIT
        .lock()
        .ok()
        .and_then(|g| *g)
        .unwrap_or(SERVE_FOR);
    let Some(path) = path else {
        step("ctl-bridge: listen", false, "no --ctl-bridge PATH given");
        return false;
    };
    let listener = match bind(&path) {
        Ok(l) => l,
        Err(e) => {
            step(
                "ctl-bridge: listen",
                false,
                format!("{}: {e}", path.display()),
            );
            return false;
        }
    };
    step("ctl-bridge: listen", true, path.display().to_string());
    let mut open: Vec<sockets::Live> = Vec::new();
    let start = Instant::now();
    let mut ok = true;
    let mut quit = false;
    let mut served = 0u32;
    while !quit {
        if start.elapsed() > serve_for {
            step(
                "ctl-bridge: quit",
                false,
                format!("no `quit` within {serve_for:?}"),
            );
            ok = false;
            break;
        }
        match listener.accept() {
            Ok((s, _)) => {
                served += 1;
                quit = serve_one(s, &mut open, Some(&listener));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => {
                step("ctl-bridge: accept", false, e.to_string());
                ok = false;
                break;
            }
        }
    }
    for live in open {
        sockets::close(live);
    }
    let _ = std::fs::remove_file(&path);
    step("ctl-bridge: served", ok, format!("{served} connections"));
    ok
}

fn bind(path: &Path) -> std::io::Result<UnixListener> {
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path)?;
    l.set_nonblocking(true)?;
    Ok(l)
}

struct Frame {
    kind: u8,
    uid: u32,
    opt: i32,
    data: Vec<u8>,
}

fn read_frame(s: &mut UnixStream) -> Option<Frame> {
    let mut h = [0u8; 16];
    s.read_exact(&mut h).ok()?;
    let be32 = |o: usize| {
        h.get(o..o + 4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .unwrap_or([0; 4])
    };
    let len = u32::from_be_bytes(be32(12)) as usize;
    if len > MAX_DATA || h[1..4] != [0, 0, 0] {
        return None;
    }
    let mut data = vec![0u8; len];
    s.read_exact(&mut data).ok()?;
    Some(Frame {
        kind: h[0],
        uid: u32::from_be_bytes(be32(4)),
        opt: i32::from_be_bytes(be32(8)),
        data,
    })
}

fn answer(s: &mut UnixStream, errno: i32, data: &[u8]) -> bool {
    let mut out = Vec::with_capacity(8 + data.len());
    out.extend_from_slice(&errno.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    s.write_all(&out).is_ok()
}

/// Serves one connection until EOF; returns whether it asked to quit.
/// `listener`: the bridge's, for commands that serve other clients while
/// they run (`run nat-prxd`); `None` for those nested clients.
fn serve_one(
    mut s: UnixStream,
    open: &mut Vec<sockets::Live>,
    listener: Option<&UnixListener>,
) -> bool {
    if s.set_nonblocking(false).is_err()
        || s.set_read_timeout(Some(Duration::from_secs(30))).is_err()
    {
        return false;
    }
    let mut client: Option<ctl::Client> = None;
    let mut quit = false;
    while let Some(f) = read_frame(&mut s) {
        let sent = match (f.kind, client) {
            (CONNECT, None) => match ctl::connect(&String::from_utf8_lossy(&f.data), f.uid == 0) {
                Ok(c) => {
                    client = Some(c);
                    answer(&mut s, 0, &[])
                }
                Err(e) => answer(&mut s, e, &[]),
            },
            (CONNECT, Some(_)) => answer(&mut s, EISCONN, &[]),
            (SETOPT, Some(c)) => {
                let e = ctl::setopt(c, f.opt, &f.data);
                answer(&mut s, e, &[])
            }
            (GETOPT, Some(c)) => {
                let (e, out) = ctl::getopt(c, f.opt, &f.data);
                answer(&mut s, e, &out)
            }
            (SETOPT | GETOPT, None) => answer(&mut s, ENOTCONN, &[]),
            (COMMAND, _) => {
                let cmd = String::from_utf8_lossy(&f.data).into_owned();
                let (e, text) = command(&cmd, open, listener);
                quit |= cmd == "quit" && listener.is_some();
                answer(&mut s, e, text.as_bytes())
            }
            _ => answer(&mut s, EINVAL, &[]),
        };
        if !sent || quit {
            break;
        }
    }
    if let Some(c) = client {
        ctl::disconnect(c);
    }
    quit
}

fn command(
    cmd: &str,
    open: &mut Vec<sockets::Live>,
    listener: Option<&UnixListener>,
) -> (i32, String) {
    if cmd == "quit" {
        return (0, "bye".into());
    }
    let udp = cmd.starts_with("run nat-prxd-udp ");
    if let Some(args) = cmd
        .strip_prefix("run nat-prxd ")
        .or_else(|| cmd.strip_prefix("run nat-prxd-udp "))
    {
        let mut w = args.split_whitespace().map(|a| a.parse::<SocketAddr>());
        let (Some(Ok(origin)), Some(Ok(prxd)), None) = (w.next(), w.next(), w.next()) else {
            return (
                EINVAL,
                "usage: run nat-prxd|nat-prxd-udp ORIGIN:PORT PRXD:PORT".into(),
            );
        };
        let Some(l) = listener else {
            return (EINVAL, "run nat-prxd: not from a nested client".into());
        };
        // prxd's lookups arrive while the traffic runs: serve each waiting
        // client to its end (they connect, ask and let go).
        let mut serve = || {
            while let Ok((c, _)) = l.accept() {
                let mut none = Vec::new();
                serve_one(c, &mut none, None);
            }
        };
        let passed = if udp {
            super::nat_bridge::nat_prxd_udp(origin, prxd, &mut serve)
        } else {
            super::nat_bridge::nat_prxd(origin, prxd, &mut serve)
        };
        return (0, if passed { "passed" } else { "failed" }.into());
    }
    if cmd == "recv" {
        return match sockets::recv_kept(open) {
            Some(b) => (0, String::from_utf8_lossy(&b).into_owned()),
            None => (ENOTCONN, "no open connection".into()),
        };
    }
    if cmd == "close" {
        return match open.pop() {
            Some(live) => {
                sockets::close(live);
                (0, "closed".into())
            }
            None => (ENOTCONN, "no open connection".into()),
        };
    }
    if let Some(name) = cmd.strip_prefix("run ") {
        // IP-filter traffic between the smoltcp hosts, under whatever the
        // bridge's clients configured (see `super::stacks`).
        let passed = match name.trim() {
            "nat-tcp4" => super::stacks::nat_tcp(false, None),
            "nat-tcp6" => super::stacks::nat_tcp(true, None),
            "nat-udp4" => super::stacks::nat_udp(false),
            "nat-udp6" => super::stacks::nat_udp(true),
            other => {
                return (
                    EINVAL,
                    format!("unknown traffic `{other}` (nat-tcp4, nat-tcp6, nat-udp4, nat-udp6)"),
                );
            }
        };
        return (0, if passed { "passed" } else { "failed" }.into());
    }
    // `open-as PID NAME ADDR:PORT`: as `open`, by another process.
    let (as_proc, rest) = match cmd.strip_prefix("open-as ").map(|r| {
        let mut w = r.split_whitespace();
        (
            w.next().and_then(|p| p.parse::<i32>().ok()),
            w.next(),
            w.next(),
        )
    }) {
        Some((Some(pid), Some(name), Some(addr))) => (Some((pid, name)), Some(addr)),
        Some(_) => return (EINVAL, "usage: open-as PID NAME ADDR:PORT".into()),
        None => (None, cmd.strip_prefix("open ")),
    };
    let Some(dest) = rest.and_then(|a| a.trim().parse::<SocketAddr>().ok()) else {
        return (EINVAL, format!("unknown command `{cmd}`"));
    };
    let label = format!("bridge {dest}");
    let (local, target) = match as_proc {
        Some(p) => sockets::open_kept_as(&label, dest, b"hello\n", open, p),
        None => sockets::open_kept(&label, dest, b"hello\n", open),
    };
    step(
        format!("ctl-bridge: open {dest}"),
        local.is_some(),
        format!("local {local:?} target {target:?}"),
    );
    match (local, target) {
        (Some(l), Some(t)) => (0, format!("local {l} target {t}")),
        _ => (
            111,
            format!("connection to {dest} failed (target {target:?})"),
        ),
    }
}
