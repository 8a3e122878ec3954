//! Hostile clients and upstreams: each refused or timed out and counted, while
//! prxd keeps serving others; reload (SIGHUP) and drain (SIGTERM).

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use support::*;

const DATA: &[u8] = b"still served\n";

fn served(p: &Prxd, origin: SocketAddr) {
    let got = exchange(
        p.listen,
        &header("127.0.0.1:1".parse().unwrap(), origin),
        DATA,
    );
    assert_eq!(got, [&b"pong:"[..], DATA].concat(), "{}", p.log_text());
}

/// Reads until EOF or error; true when the peer closed (or reset) within `t`.
fn closed_within(s: &mut TcpStream, t: Duration) -> bool {
    s.set_read_timeout(Some(t)).unwrap();
    let mut b = [0u8; 64];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}

#[test]
fn garbage_truncated_and_slow_headers_are_refused_and_counted() {
    let origin = origin();
    let p = Prxd::run(
        &[
            "--trust-header",
            "--controls",
            "none",
            "--header-timeout",
            "1",
        ],
        &[],
    );
    // Garbage: refused at once.
    let mut g = TcpStream::connect(p.listen).unwrap();
    g.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert!(closed_within(&mut g, Duration::from_secs(5)));
    p.wait_counter("bad_header", 1);
    // A header whose length field promises more than prxd accepts.
    let mut h = header("127.0.0.1:1".parse().unwrap(), origin);
    h[14..16].copy_from_slice(&60000u16.to_be_bytes());
    let mut g = TcpStream::connect(p.listen).unwrap();
    g.write_all(&h).unwrap();
    assert!(closed_within(&mut g, Duration::from_secs(5)));
    p.wait_counter("bad_header", 2);
    // Truncated: half a header, then the client closes.
    let h = header("127.0.0.1:1".parse().unwrap(), origin);
    let mut t = TcpStream::connect(p.listen).unwrap();
    t.write_all(&h[..20]).unwrap();
    t.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(closed_within(&mut t, Duration::from_secs(5)));
    p.wait_counter("bad_header", 3);
    // Slowloris: a byte at a time, slower than the header timeout allows.
    let mut slow: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect(p.listen).unwrap())
        .collect();
    for s in &mut slow {
        s.write_all(&h[..3]).unwrap();
    }
    // Others are served meanwhile.
    served(&p, origin);
    let start = Instant::now();
    for s in &mut slow {
        assert!(
            closed_within(s, Duration::from_secs(5)),
            "cut at the header timeout"
        );
    }
    assert!(start.elapsed() < Duration::from_secs(5));
    p.wait_counter("header_timeout", 20);
    let line = p.wait_line(&["timed out waiting for the PROXY v2 header"]);
    assert!(line.contains("dst=-"), "{line}");
    served(&p, origin);
    assert_eq!(p.counter("active"), 0);
}

#[test]
fn a_flood_beyond_the_limit_is_refused_and_counted_without_growing() {
    let hold = holding_origin();
    let origin = origin();
    let p = Prxd::run(
        &[
            "--trust-header",
            "--controls",
            "none",
            "--max-connections",
            "8",
            "--idle-timeout",
            "5",
        ],
        &[],
    );
    let rss_before = p.rss_kib();
    // Eight held connections fill the limit.
    let mut held = Vec::new();
    for i in 0..8 {
        let mut s = TcpStream::connect(p.listen).unwrap();
        s.write_all(&header(
            format!("127.0.0.1:{}", 1000 + i).parse().unwrap(),
            hold,
        ))
        .unwrap();
        held.push(s);
    }
    p.wait_counter("active", 8);
    // The flood: refused (closed at once) and counted.
    for _ in 0..300 {
        if let Ok(mut s) = TcpStream::connect(p.listen) {
            assert!(closed_within(&mut s, Duration::from_secs(5)));
        }
    }
    p.wait_counter("refused_limit", 300);
    let rss_after = p.rss_kib();
    assert!(
        rss_after < rss_before + 16 * 1024,
        "memory grew from {rss_before} KiB to {rss_after} KiB"
    );
    // Freed slots serve again.
    drop(held);
    let start = Instant::now();
    while p.counter("active") > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{}",
            p.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    served(&p, origin);
}

#[test]
fn an_upstream_that_never_answers_times_out_while_others_are_served_and_reload_and_drain_work() {
    let origin = origin();
    // Accepts and never answers.
    let black = TcpListener::bind("127.0.0.1:0").unwrap();
    let black_addr = black.local_addr().unwrap();
    let keep = std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in black.incoming().take(1) {
            held.push(s);
        }
        std::thread::sleep(Duration::from_secs(8));
    });
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("prx.toml");
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let status = dir.path().join("status.sock");
    let good = format!(
        "[prxd]\nlisten = [\"{listen}\"]\ntrust_header = true\ncontrols = []\nconnect_timeout_s = 1\n\
         status_socket = {status:?}\ndefault = \"black\"\n\
         [prxd.upstream.black]\nurl = \"socks5://{black_addr}\"\n\
         [[prxd.route]]\ndst = \"{ip}/32\"\nports = \"{port}\"\nupstream = \"direct\"\n",
        ip = origin.ip(),
        port = origin.port(),
        status = status.display().to_string(),
    );
    std::fs::write(&cfg, &good).unwrap();
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_prxd"))
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let mut p = Prxd::start(&["--config".into(), cfg.display().to_string()], &[], listen);
    p.status = status;
    // To the black hole: timed out after connect_timeout_s, counted.
    let start = Instant::now();
    let mut s = TcpStream::connect(listen).unwrap();
    s.write_all(&header(
        "127.0.0.1:1".parse().unwrap(),
        "127.0.0.1:9".parse().unwrap(),
    ))
    .unwrap();
    // Meanwhile the route to the origin is served.
    served(&p, origin);
    assert!(closed_within(&mut s, Duration::from_secs(5)));
    assert!(start.elapsed() >= Duration::from_millis(900));
    p.wait_counter("connect_timeout", 1);
    let line = p.wait_line(&["connect timed out"]);
    assert!(
        line.contains("upstream=black") && line.contains("dst=127.0.0.1:9"),
        "{line}"
    );
    keep.join().unwrap();

    // SIGHUP with a bad file: reported, nothing changes.
    std::fs::write(&cfg, "[prxd]\nlisten = [\"nowhere\"]\n").unwrap();
    p.signal(libc::SIGHUP);
    p.wait_counter("reload_failed", 1);
    assert!(
        p.log_text().contains("reload refused, nothing changed"),
        "{}",
        p.log_text()
    );
    assert!(p.log_text().contains("prx.toml:2:11"), "{}", p.log_text());
    served(&p, origin);
    // A good file: applied (a second listener), live connections unaffected.
    let live_origin = origin;
    let mut live = TcpStream::connect(listen).unwrap();
    live.write_all(&header("127.0.0.1:2".parse().unwrap(), live_origin))
        .unwrap();
    live.write_all(b"part one ").unwrap();
    let second: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    std::fs::write(
        &cfg,
        good.replace(
            &format!("listen = [\"{listen}\"]"),
            &format!("listen = [\"{listen}\", \"{second}\"]"),
        ),
    )
    .unwrap();
    p.signal(libc::SIGHUP);
    p.wait_counter("reloads", 1);
    let got = exchange(
        second,
        &header("127.0.0.1:3".parse().unwrap(), origin),
        DATA,
    );
    assert_eq!(got, [&b"pong:"[..], DATA].concat());

    // SIGTERM: no new connections, the live one finishes, then exit 0.
    p.signal(libc::SIGTERM);
    let start = Instant::now();
    while TcpStream::connect(listen).is_ok() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "still accepting after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    live.write_all(b"part two").unwrap();
    live.shutdown(std::net::Shutdown::Write).unwrap();
    let mut got = Vec::new();
    live.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    live.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"pong:part one part two");
    let st = p.child.wait().unwrap();
    assert!(st.success(), "{st}:\n{}", p.log_text());
    assert!(
        p.log_text().contains("stopped (0 connection(s) cut"),
        "{}",
        p.log_text()
    );
}

#[test]
fn idle_relayed_connections_hold_no_relay_buffers() {
    let hold = holding_origin();
    let p = Prxd::run(&["--trust-header", "--controls", "none"], &[]);
    // Warm up the runtime's own allocations first.
    let warm: Vec<TcpStream> = (0..50)
        .map(|i| {
            let mut s = TcpStream::connect(p.listen).unwrap();
            s.write_all(&header(
                format!("127.0.0.1:{}", 2000 + i).parse().unwrap(),
                hold,
            ))
            .unwrap();
            s
        })
        .collect();
    p.wait_counter("active", 50);
    std::thread::sleep(Duration::from_millis(300));
    let before = p.rss_kib();
    let n = 1000u64;
    let idle: Vec<TcpStream> = (0..n)
        .map(|i| {
            let mut s = TcpStream::connect(p.listen).unwrap();
            s.write_all(&header(
                format!("127.0.0.1:{}", 3000 + i).parse().unwrap(),
                hold,
            ))
            .unwrap();
            s
        })
        .collect();
    p.wait_counter("active", 50 + n);
    std::thread::sleep(Duration::from_millis(300));
    let per = (p.rss_kib().saturating_sub(before)) as f64 / n as f64;
    eprintln!("{per:.1} KiB per idle relayed connection");
    // Two 16 KiB relay buffers would be 32 KiB; an idle connection holds none.
    assert!(per < 12.0, "{per:.1} KiB per idle connection");
    drop((warm, idle));
}
