//! prxd side by side with haproxy (`mode tcp`), one run, same traffic, on
//! loopback: throughput of one connection streaming to a sink, and resident
//! memory per idle connection with N connections held open (default 10,000).
//! `cargo xtask bench --proxy` builds and runs it:
//!
//! ```text
//! vs_haproxy --prxd PATH [--idle N] [--mib M]
//! ```
//!
//! The origin runs in its own process (`vs_haproxy origin`), so each process's
//! descriptors stay within limits; the harness raises RLIMIT_NOFILE for itself
//! and its children as far as the hard limit (root: further) allows.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::net::addr::{Endpoint, IpAddr};
use common::net::proxy_v2;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("origin") {
        origin();
        return;
    }
    let get = |k: &str| {
        args.iter()
            .position(|a| a == k)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let Some(prxd) = get("--prxd") else {
        eprintln!("usage: vs_haproxy --prxd PATH [--idle N] [--mib M]");
        std::process::exit(2);
    };
    let idle: usize = get("--idle").and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let mib: usize = get("--mib").and_then(|v| v.parse().ok()).unwrap_or(1024);
    let fds = raise_nofile((2 * idle + 256) as u64);
    if fds < (2 * idle + 64) as u64 {
        // Measured anyway: what each proxy holds is counted from its
        // descriptors, so the report shows the ceiling, not a guess.
        eprintln!(
            "vs_haproxy: RLIMIT_NOFILE is {fds} and cannot be raised: {idle} idle connections need about {} descriptors per proxy (two per connection); each proxy holds what fits, and the report says how many",
            2 * idle + 64,
        );
    }
    if fds < idle as u64 + 64 {
        eprintln!(
            "vs_haproxy: RLIMIT_NOFILE is {fds}: this harness itself cannot open {idle} connections (give --idle {})",
            fds.saturating_sub(64)
        );
        std::process::exit(2);
    }
    let mut origin = Command::new(std::env::current_exe().expect("exe"))
        .arg("origin")
        .stdout(Stdio::piped())
        .spawn()
        .expect("origin");
    let mut line = String::new();
    {
        let mut out = origin.stdout.take().expect("stdout");
        let mut b = [0u8; 1];
        while out.read(&mut b).map(|n| n == 1).unwrap_or(false) && b[0] != b'\n' {
            line.push(b[0] as char);
        }
    }
    // Killed when this harness ends, panicking or not.
    let origin = Kill(origin);
    let origin_addr: SocketAddr = line.trim().parse().expect("origin address");
    let pp = free_port();
    let hp = free_port();
    let prxd = Kill(
        Command::new(&prxd)
            .args([
                "run",
                "--listen",
                &format!("127.0.0.1:{pp}"),
                "--trust-header",
            ])
            .args([
                "--controls",
                "none",
                "--max-connections",
                &(idle + 100).to_string(),
            ])
            .stderr(Stdio::null())
            .spawn()
            .expect("prxd"),
    );
    let dir = std::env::temp_dir().join(format!("prx-vs-haproxy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n  maxconn {m}\ndefaults\n  mode tcp\n  maxconn {m}\n  timeout connect 5s\n  timeout client 600s\n  timeout server 600s\n\
             frontend f\n  bind 127.0.0.1:{hp}\n  default_backend b\nbackend b\n  server o {origin_addr}\n",
            // haproxy refuses to start when maxconn needs more descriptors
            // than RLIMIT_NOFILE gives it (two per connection, and its own).
            m = (idle + 100).min((fds as usize).saturating_sub(100) / 2)
        ),
    )
    .expect("haproxy.cfg");
    let haproxy = Kill(
        Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(&cfg)
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy (Debian package haproxy)"),
    );
    let p_addr: SocketAddr = format!("127.0.0.1:{pp}").parse().unwrap();
    let h_addr: SocketAddr = format!("127.0.0.1:{hp}").parse().unwrap();
    wait_listening(p_addr, "prxd");
    wait_listening(h_addr, "haproxy");
    let hdr = header(origin_addr);
    let total = mib << 20;
    println!("throughput, one connection, {mib} MiB to a sink (MB/s; best of 3):");
    let (mut best_p, mut best_h) = (0f64, 0f64);
    for round in 1..=3 {
        let p = throughput(p_addr, &hdr, total);
        let h = throughput(h_addr, &[], total);
        println!("  round {round}: prxd {p:8.0}   haproxy {h:8.0}");
        best_p = best_p.max(p);
        best_h = best_h.max(h);
    }
    println!(
        "  best:    prxd {best_p:8.0}   haproxy {best_h:8.0}   ratio {:.2} (goal >= 0.90)",
        best_p / best_h
    );
    println!(
        "memory, {idle} idle connections opened (KiB of resident memory per connection held; RLIMIT_NOFILE {fds}):"
    );
    let mp = idle_memory(p_addr, &hdr, idle, prxd.0.id());
    let mh = idle_memory(h_addr, &[], idle, haproxy.0.id());
    println!(
        "  prxd {:.1} ({} of {idle} held)   haproxy {:.1} ({} of {idle} held)   ratio {:.2} (goal <= 1.00)",
        mp.kib,
        mp.held,
        mh.kib,
        mh.held,
        mp.kib / mh.kib
    );
    for (name, m) in [("prxd", &mp), ("haproxy", &mh)] {
        println!(
            "  {name}: {} descriptors open at the peak ({} before; {} relayed connections = two each), \
             {} of {idle} client connections still open",
            m.fds_peak, m.fds_before, m.held, m.open
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    drop(origin);
    drop((prxd, haproxy));
}

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn raise_nofile(want: u64) -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        if r.rlim_cur < want {
            let new = libc::rlimit {
                rlim_cur: want.max(r.rlim_cur),
                rlim_max: want.max(r.rlim_max),
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &new) != 0 {
                let capped = libc::rlimit {
                    rlim_cur: r.rlim_max,
                    rlim_max: r.rlim_max,
                };
                libc::setrlimit(libc::RLIMIT_NOFILE, &capped);
            }
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
    }
    r.rlim_cur
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port()
}

fn wait_listening(a: SocketAddr, who: &str) {
    let start = Instant::now();
    while TcpStream::connect(a).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{who} never listened on {a}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn header(dst: SocketAddr) -> Vec<u8> {
    let ep = |a: SocketAddr| match a {
        SocketAddr::V4(v) => Endpoint::new(IpAddr::V4(v.ip().octets()), v.port()),
        SocketAddr::V6(v) => Endpoint::new(IpAddr::V6(v.ip().octets()), v.port()),
    };
    let mut out = vec![0u8; 64];
    let n = proxy_v2::emit(&ep("127.0.0.1:1".parse().unwrap()), &ep(dst), &[], &mut out)
        .expect("header");
    out.truncate(n);
    out
}

/// Streams `total` bytes through `proxy` to the sink; MB/s until the sink's count returns.
fn throughput(proxy: SocketAddr, pre: &[u8], total: usize) -> f64 {
    let mut s = TcpStream::connect(proxy).expect("connect");
    s.write_all(pre).expect("header");
    let chunk = vec![0x5au8; 256 << 10];
    let start = Instant::now();
    let mut sent = 0;
    while sent < total {
        s.write_all(&chunk).expect("write");
        sent += chunk.len();
    }
    s.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let mut reply = String::new();
    s.read_to_string(&mut reply).expect("reply");
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(
        reply.trim().parse::<usize>().ok(),
        Some(sent),
        "the sink got everything"
    );
    sent as f64 / secs / 1e6
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Descriptors `pid` has open (`/proc/PID/fd`).
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// What one proxy held.
struct Idle {
    /// Resident memory growth per connection held, KiB.
    kib: f64,
    /// Connections the proxy relays: its new descriptors / 2 (the client's
    /// and the origin's side).
    held: usize,
    /// Client connections not closed by the proxy (those beyond what it
    /// holds may wait in its listen backlog).
    open: usize,
    fds_before: usize,
    fds_peak: usize,
}

/// Opens `n` connections (each with `pre`), waits, and returns what `pid`
/// holds: resident memory growth per connection held, connections relayed
/// (counted from its descriptors), client connections still open.
fn idle_memory(proxy: SocketAddr, pre: &[u8], n: usize, pid: u32) -> Idle {
    let before = rss_kib(pid);
    let fds_before = fd_count(pid);
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        // A proxy out of descriptors leaves connections in its backlog: stop there.
        let Ok(mut s) = TcpStream::connect_timeout(&proxy, Duration::from_secs(2)) else {
            break;
        };
        if s.write_all(pre).is_err() {
            break;
        }
        held.push(s);
    }
    std::thread::sleep(Duration::from_secs(2));
    let after = rss_kib(pid);
    let fds_peak = fd_count(pid);
    let relayed = fds_peak.saturating_sub(fds_before) / 2;
    let open = held
        .iter()
        .filter(|s| {
            s.set_nonblocking(true).is_ok()
                && matches!(s.peek(&mut [0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        })
        .count();
    drop(held);
    std::thread::sleep(Duration::from_secs(1));
    Idle {
        kib: after.saturating_sub(before) as f64 / relayed.max(1) as f64,
        held: relayed,
        open,
        fds_before,
        fds_peak,
    }
}

/// The origin: a sink that answers each connection with the byte count at EOF,
/// and holds idle connections open.
fn origin() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        println!("{}", l.local_addr().expect("addr"));
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                // No buffer for a connection that never sends.
                if s.readable().await.is_err() {
                    return;
                }
                let mut buf = vec![0u8; 64 << 10];
                let mut n = 0usize;
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(k) => n += k,
                    }
                }
                let _ = s.write_all(n.to_string().as_bytes()).await;
            });
        }
    });
}
