//! prxd behind the real PrxSocketFilter.kext binary running in the KPI
//! emulator (`ctl-bridge` scenario): prxd registers itself as the proxy
//! through the emulated kern_control, a real loopback connection opened
//! inside the emulator (pid 4242, "prx-emu-client") is redirected by the kext
//! to prxd — with a PROXY v2 header (`proxy-v2` rule) or without (`proxy`
//! rule: prxd asks the kext) — and prxd forwards it to a local origin: bytes
//! intact both ways, a clean close, the log line naming the pid/process and
//! the original destination. A header forged by a process the kext did not
//! redirect is refused and counted.
//!
//! `harness = false`: this binary is also the emulator's child process
//! (`emu child --ctl-bridge PATH --scenario S --kext K`).

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::net::proxy_v2;
use prxctl::transport::EmuBridge;
use support::*;
use vm::emu::{self, RunOptions, Runner};

fn main() {
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() == Some("child") {
        match emu::ChildArgs::parse(args) {
            Ok(a) => std::process::exit(emu::child_main(&a)),
            Err(e) => {
                eprintln!("emu child: {e}");
                std::process::exit(emu::child::EXIT_SETUP);
            }
        }
    }
    let tests: [(&str, fn()); 4] = [
        (
            "prxd_serves_connections_redirected_by_the_socket_filter_in_the_emulator",
            prxd_serves_connections_redirected_by_the_socket_filter_in_the_emulator,
        ),
        (
            "prxd_serves_the_ip_filters_nat_flows_in_the_emulator",
            prxd_serves_the_ip_filters_nat_flows_in_the_emulator,
        ),
        (
            "prxd_relays_the_ip_filters_udp_flows_in_the_emulator",
            prxd_relays_the_ip_filters_udp_flows_in_the_emulator,
        ),
        (
            "prxd_relays_the_ip_filters_udp_flows_through_a_socks5_udp_relay",
            prxd_relays_the_ip_filters_udp_flows_through_a_socks5_udp_relay,
        ),
    ];
    if std::env::args().any(|a| a == "--list") {
        for (name, _) in &tests {
            println!("{name}: test");
        }
        return;
    }
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let chosen: Vec<_> = tests
        .iter()
        .filter(|(n, _)| filters.is_empty() || filters.iter().any(|f| n.contains(f.as_str())))
        .collect();
    println!("running {} tests", chosen.len());
    for (name, f) in chosen {
        f();
        println!("test {name} ... ok");
    }
}

fn socket_kext() -> PathBuf {
    kext("socket")
}

fn kext(name: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf();
    let opts = xtask::build::BuildOptions {
        release: true,
        archs: vec![],
        kexts: vec![name.into()],
        target_dir: None,
    };
    let built = xtask::build::build(&root, &opts)
        .unwrap_or_else(|e| panic!("cargo xtask build --release failed: {e:#}"));
    built.into_iter().next().expect("one bundle").path
}

type Scenario = std::thread::JoinHandle<vm::emu::ScenarioReport>;

fn start_bridge(kext: PathBuf, sock: &Path) -> Scenario {
    start_bridge_with(vec![kext], sock)
}

fn start_bridge_with(kexts: Vec<PathBuf>, sock: &Path) -> Scenario {
    let opts = RunOptions {
        runner: Runner {
            program: std::env::current_exe().expect("current exe"),
            args: vec![
                "child".into(),
                "--ctl-bridge".into(),
                sock.display().to_string(),
            ],
        },
        kexts,
        timeout: Duration::from_secs(150),
        faults: None,
    };
    let scenario = std::thread::spawn(move || emu::run(&opts, "ctl-bridge"));
    let start = Instant::now();
    while !sock.exists() {
        if scenario.is_finished() {
            let r = scenario.join().expect("scenario thread");
            panic!("the bridge never listened:\n{}", r.render());
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no bridge socket"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    scenario
}

fn command(sock: &Path, cmd: &str) -> String {
    let mut b = EmuBridge::raw(sock).expect("bridge");
    b.command(cmd).unwrap_or_else(|e| panic!("{cmd}: {e}"))
}

/// An origin that reports each connection's first line on `tx`, answers
/// `pong:` + that line, and closes (after the client's half-close arrives).
fn reporting_origin(tx: mpsc::Sender<Vec<u8>>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("origin");
    let a = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                let mut b = [0u8; 1];
                while !got.ends_with(b"\n") {
                    match s.read(&mut b) {
                        Ok(1) => got.push(b[0]),
                        _ => break,
                    }
                }
                let _ = tx.send(got.clone());
                let mut reply = b"pong:".to_vec();
                reply.extend(&got);
                let _ = s.write_all(&reply);
            });
        }
    });
    a
}

/// Connects to prxd and sends a header for `dst` from this connection's own
/// address (or `src`), ending with a tag under `key`, then `hello\n`;
/// returns what comes back.
fn signed_exchange(
    prxd: SocketAddr,
    dst: SocketAddr,
    key: &proxy_v2::AuthKey,
    src: Option<SocketAddr>,
) -> Vec<u8> {
    let mut s = std::net::TcpStream::connect(prxd).expect("connect to prxd");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let me = src.unwrap_or_else(|| s.local_addr().unwrap());
    let h = proxy_v2::encode_authenticated(&endpoint(me), &endpoint(dst), 77, b"imitator", key);
    let _ = s.write_all(h.as_bytes());
    let _ = s.write_all(b"hello\n");
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    got
}

fn prxd_serves_connections_redirected_by_the_socket_filter_in_the_emulator() {
    let kext = socket_kext();
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("ctl.sock");
    let scenario = start_bridge(kext, &sock);
    let (tx, rx) = mpsc::channel();
    let o_v2 = reporting_origin(tx.clone());
    let o_plain = reporting_origin(tx);

    // Rules through prxctl's library: one origin with a header, one without,
    // and a last rule matching everything else (prxd's own connections must
    // still never come back to it).
    let rules = prxctl::rules_file::parse(&format!(
        "default = \"proxy\"\n\
         [[rule]]\ndst = \"127.0.0.1/32\"\nports = \"{}\"\naction = \"proxy-v2\"\n\
         [[rule]]\ndst = \"127.0.0.1/32\"\nports = \"{}\"\naction = \"proxy\"\n",
        o_v2.port(),
        o_plain.port()
    ))
    .expect("rules");
    {
        let mut c =
            EmuBridge::connect(&sock, common::net::control::CONTROL_NAME, 0).expect("control");
        prxctl::load_rules(&mut c, &rules).expect("load rules");
    }

    let p = Prxd::run(
        &["--controls", "socket", "--emu", sock.to_str().unwrap()],
        &[],
    );
    assert!(
        p.log_text().contains(&format!(
            "registered with PrxSocketFilter as the proxy (pid {}, name prxd)",
            p.child.id()
        )),
        "{}",
        p.log_text()
    );
    {
        let mut c =
            EmuBridge::connect(&sock, common::net::control::CONTROL_NAME, 0).expect("control");
        let st = prxctl::status(&mut c).expect("status");
        let shown = prxctl::render_status(prxctl::KextKind::SocketFilter, &st, &[]);
        assert!(
            shown.contains(&format!("proxy (IPv4):     {}", p.listen)),
            "{shown}"
        );
        assert!(
            shown.contains(&format!(
                "proxy process:    pid {}, name prxd",
                p.child.id()
            )),
            "the kext knows prxd as the proxy process: {shown}"
        );
    }

    // One owner of the kext's proxies: `prxctl apply` of a prx.toml with a
    // [prxd] table (the same rules) changes the rules but never the proxies
    // prxd registered — as at boot, when net.prx.apply may run after prxd.
    {
        let conf = format!(
            "[prxd]\nlisten = [\"{}\"]\ncontrols = [\"socket\"]\n\
             [socket-filter]\ndefault = \"proxy\"\n\
             [[socket-filter.rule]]\ndst = \"127.0.0.1/32\"\nports = \"{}\"\naction = \"proxy-v2\"\n\
             [[socket-filter.rule]]\ndst = \"127.0.0.1/32\"\nports = \"{}\"\naction = \"proxy\"\n",
            p.listen,
            o_v2.port(),
            o_plain.port()
        );
        let c = prxctl::config::parse(&conf).expect("prx.toml");
        let want = c.socket_filter.as_ref().expect("[socket-filter]");
        assert_eq!(want.proxies, None, "prxd owns the socket filter's proxies");
        let mut t =
            EmuBridge::connect(&sock, common::net::control::CONTROL_NAME, 0).expect("control");
        let before = prxctl::status(&mut t).expect("status").proxies;
        let changed = prxctl::apply::apply_kext(
            &mut t,
            &prxctl::apply::KEXTS[0],
            want,
            &dir.path().join("state"),
        )
        .expect("apply");
        assert!(
            !changed.iter().any(|c| c.contains("proxies")),
            "apply left the proxies alone: {changed:?}"
        );
        assert!(
            changed.iter().any(|c| c.starts_with("rules:")),
            "{changed:?}"
        );
        let after = prxctl::status(&mut t).expect("status").proxies;
        assert_eq!(after, before);
        assert_eq!(after.pid, Some(p.child.id()));
    }

    for (origin, action) in [(o_v2, "proxy-v2"), (o_plain, "proxy")] {
        let answer = command(&sock, &format!("open {origin}"));
        assert!(
            answer.ends_with(&format!("target {}", p.listen)),
            "{action}: redirected to prxd: {answer}"
        );
        let got = rx
            .recv_timeout(Duration::from_secs(15))
            .unwrap_or_else(|_| panic!("{action}: nothing reached the origin:\n{}", p.log_text()));
        assert_eq!(
            got, b"hello\n",
            "{action}: the client's bytes, without the header"
        );
        let back = command(&sock, "recv");
        assert_eq!(
            back, "pong:hello\n",
            "{action}: the origin's bytes reach the client"
        );
        assert_eq!(command(&sock, "close"), "closed");
        let line = p.wait_line(&[&format!("dst={origin}")]);
        assert!(line.contains("pid=4242"), "{action}: {line}");
        if action == "proxy-v2" {
            assert!(line.contains("process=prx-emu-client"), "{line}");
            assert!(line.contains("rule=socket:0"), "{line}");
        } else {
            assert!(line.contains("rule=socket:1"), "{line}");
        }
        assert!(line.contains("upstream=direct"), "{line}");
        assert!(line.contains("up=6 down=11"), "{line}");
        assert!(line.contains("outcome=\"ok\""), "{line}");
    }

    // Never a loop: the last rule sends everything else to the proxy, yet a
    // connection by prxd's own process (the pid and name it registered) goes
    // straight to its destination.
    let answer = command(&sock, &format!("open-as {} prxd {o_plain}", p.child.id()));
    assert!(
        answer.ends_with(&format!("target {o_plain}")),
        "prxd's own connection is not redirected: {answer}"
    );
    let got = rx
        .recv_timeout(Duration::from_secs(15))
        .expect("direct to the origin");
    assert_eq!(got, b"hello\n");
    assert_eq!(command(&sock, "close"), "closed");
    // Any other process's connection to a third origin goes to prxd (the
    // default action), and prxd forwards it there: its own connection to
    // that origin was not redirected back to itself.
    let (tx3, rx3) = mpsc::channel();
    let o_other = reporting_origin(tx3);
    let answer = command(&sock, &format!("open {o_other}"));
    assert!(
        answer.ends_with(&format!("target {}", p.listen)),
        "the catch-all rule redirects others: {answer}"
    );
    let got = rx3
        .recv_timeout(Duration::from_secs(15))
        .unwrap_or_else(|_| panic!("nothing reached the third origin:\n{}", p.log_text()));
    assert_eq!(got, b"hello\n");
    assert_eq!(command(&sock, "recv"), "pong:hello\n");
    assert_eq!(command(&sock, "close"), "closed");
    let line = p.wait_line(&[&format!("dst={o_other}")]);
    assert!(line.contains("rule=socket:default"), "{line}");
    assert!(line.contains("outcome=\"ok\""), "{line}");

    // A header of its own making from a process the kext did not redirect.
    let forged = exchange(
        p.listen,
        &header("127.0.0.1:1".parse().unwrap(), o_v2),
        b"x\n",
    );
    assert!(forged.is_empty(), "{forged:?}");
    let line = p.wait_line(&["not vouched for"]);
    assert!(line.contains(&format!("dst={o_v2}")), "{line}");
    assert_eq!(p.counter("refused_forged_header"), 1);
    assert!(rx.try_recv().is_err(), "nothing reached the origin");
    assert_eq!(p.counter("completed"), 3);
    assert_eq!(p.counter("refused_loop"), 0);

    // The per-boot authenticating TLV. The kext's own headers (above)
    // verified: none was refused for its tag.
    assert!(
        p.log_text()
            .contains("PROXY v2 headers are verified with PrxSocketFilter's per-boot key"),
        "{}",
        p.log_text()
    );
    assert_eq!(p.counter("refused_bad_auth"), 0);
    // The one header the kext wrote (the proxy-v2 rule) carried its tag.
    assert_eq!(p.counter("headers_verified"), 1);
    // The key, as root reads it from the privileged control.
    let key = {
        let mut c =
            EmuBridge::connect(&sock, common::net::control::CONTROL_NAME, 0).expect("control");
        prxctl::auth_key(&mut c).expect("GetAuthKey")
    };
    assert_ne!(key.0, [0u8; 32]);
    // A header imitating the kext's, with a tag under another key: refused
    // and counted, nothing reaches the origin.
    let wrong = proxy_v2::AuthKey([0x5a; 32]);
    let forged = signed_exchange(p.listen, o_v2, &wrong, None);
    assert!(forged.is_empty(), "{forged:?}");
    let line = p.wait_line(&["wrong authentication tag"]);
    assert!(line.contains(&format!("dst={o_v2}")), "{line}");
    assert_eq!(p.counter("refused_bad_auth"), 1);
    assert!(rx.try_recv().is_err(), "nothing reached the origin");
    // A header with the right tag vouches for itself, without the kext's
    // record (as when the kext's table is full): served.
    let back = signed_exchange(p.listen, o_v2, &key, None);
    assert_eq!(back, b"pong:hello\n");
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(15)).expect("origin"),
        b"hello\n"
    );
    let line = p.wait_line(&["rule=socket:signed"]);
    assert!(line.contains("outcome=\"ok\""), "{line}");
    assert_eq!(p.counter("headers_verified"), 2);
    // The same signed header replayed on another connection (its source is
    // not that connection's): refused.
    let replay = signed_exchange(p.listen, o_v2, &key, Some("127.0.0.1:9".parse().unwrap()));
    assert!(replay.is_empty(), "{replay:?}");
    let line = p.wait_line(&["replayed"]);
    assert!(line.contains("not vouched for"), "{line}");
    assert_eq!(p.counter("refused_forged_header"), 2);
    assert_eq!(p.counter("completed"), 4);

    drop(p);
    assert_eq!(command(&sock, "quit"), "bye");
    let r = scenario.join().expect("scenario thread");
    assert!(r.passed, "{}", r.render());
    assert!(r.violations.is_empty(), "{:?}", r.violations);
}

/// Through the emulated IP filter's control at `sock`: `protocol` traffic to
/// 127.0.0.3:`port` goes to the proxy (the rest direct), filtering enabled.
fn proxy_port_on_the_ip_filter(sock: &Path, protocol: &str, port: u16) {
    let rules = prxctl::rules_file::parse(&format!(
        "default = \"direct\"\n\
         [[rule]]\nprotocol = \"{protocol}\"\ndst = \"127.0.0.3/32\"\nports = \"{port}\"\naction = \"proxy\"\n"
    ))
    .expect("rules");
    let mut c =
        EmuBridge::connect(sock, common::net::control::IP_CONTROL_NAME, 0).expect("control");
    prxctl::load_rules(&mut c, &rules).expect("load rules");
    prxctl::set_enabled(&mut c, true).expect("enable");
}

/// An origin that echoes everything back, closes after the client's
/// half-close, and reports how many bytes it got.
fn echo_origin(tx: mpsc::Sender<usize>) -> SocketAddr {
    // Not prxd's address: the IP filter never redirects packets to or from
    // its proxy's own address.
    let l = TcpListener::bind("127.0.0.3:0").expect("origin");
    let a = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut n = 0;
                let mut b = [0u8; 16384];
                loop {
                    match s.read(&mut b) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => {
                            n += k;
                            if s.write_all(&b[..k]).is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = tx.send(n);
            });
        }
    });
    a
}

/// The IP filter's path: the real PrxIPFilter binary in the emulator NATs an
/// emulated client's connection (127.0.0.2, smoltcp) to a real origin
/// (127.0.0.3) on to prxd's address (127.0.0.1); the bridge hands the translated connection to the real
/// prxd from the client's own address, prxd recovers the origin through the
/// emulated IP filter's control (`prxctl lookup`, served while the traffic
/// runs) and relays: 256 KiB echoed intact, a clean close on both stacks,
/// and the log line names the original destination (`rule=ip:nat`).
fn prxd_serves_the_ip_filters_nat_flows_in_the_emulator() {
    let kexts = vec![kext("ip")];
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("ctl.sock");
    let scenario = start_bridge_with(kexts, &sock);
    let (tx, rx) = mpsc::channel();
    let origin = echo_origin(tx);

    // The IP filter sends TCP to the origin to its proxy, which prxd sets.
    proxy_port_on_the_ip_filter(&sock, "tcp", origin.port());
    let p = Prxd::run(&["--controls", "ip", "--emu", sock.to_str().unwrap()], &[]);
    assert!(
        p.log_text().contains(&format!(
            "registered with PrxIPFilter as the proxy (pid {}, name prxd)",
            p.child.id()
        )),
        "{}",
        p.log_text()
    );
    let answer = command(&sock, &format!("run nat-prxd {origin} {}", p.listen));
    if answer != "passed" {
        let log = p.log_text();
        drop(p);
        command(&sock, "quit");
        let r = scenario.join().expect("scenario thread");
        panic!("run nat-prxd: {answer}\n{}\nprxd's log:\n{log}", r.render());
    }
    let got = rx
        .recv_timeout(Duration::from_secs(15))
        .expect("the origin's count");
    assert_eq!(
        got,
        vm::emu::scenarios::nat_bridge::BYTES,
        "every byte reached the origin"
    );
    let line = p.wait_line(&[&format!("dst={origin}")]);
    assert!(line.contains("client=127.0.0.2:"), "{line}");
    // The IP filter's lookups answer from its NAT table: no rule number.
    assert!(line.contains("rule=ip:nat"), "{line}");
    let n = vm::emu::scenarios::nat_bridge::BYTES;
    assert!(line.contains(&format!("up={n} down={n}")), "{line}");
    assert!(line.contains("outcome=\"ok\""), "{line}");
    assert_eq!(p.counter("completed"), 1);
    assert!(p.counter("lookups") >= 1);

    drop(p);
    assert_eq!(command(&sock, "quit"), "bye");
    let r = scenario.join().expect("scenario thread");
    assert!(r.passed, "{}", r.render());
    assert!(r.violations.is_empty(), "{:?}", r.violations);
    for what in ["nat-prxd handoff", "nat-prxd transfer", "nat-prxd close"] {
        let s = r
            .steps
            .iter()
            .find(|s| s.what == what)
            .unwrap_or_else(|| panic!("no step {what}"));
        assert!(s.ok, "{what}: {}", s.detail);
        eprintln!("{what}: {}", s.detail);
    }
}

/// The IP filter's UDP flows: an emulated client's datagrams to a real UDP
/// echo origin (127.0.0.3) are NATed to prxd, which recovers the origin
/// through the emulated control and relays them on one socket per flow; the
/// client sees every answer come from the origin, unchanged; the flow ends
/// after the UDP idle timeout with one log line.
fn prxd_relays_the_ip_filters_udp_flows_in_the_emulator() {
    udp_case(None);
}

/// A real SOCKS5 server with UDP ASSOCIATE (Debian's dante-server, `danted`)
/// on loopback, started here.
struct Danted {
    child: std::process::Child,
    addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Danted {
    fn start() -> Danted {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let conf = dir.path().join("danted.conf");
        let log = dir.path().join("danted.log");
        std::fs::write(
            &conf,
            format!(
                "logoutput: {log}\n\
                 debug: 1\n\
                 internal: 127.0.0.1 port = {port}\n\
                 external: 127.0.0.1\n\
                 clientmethod: none\n\
                 socksmethod: none\n\
                 user.privileged: root\n\
                 user.unprivileged: nobody\n\
                 client pass {{\n  from: 127.0.0.0/8 to: 0.0.0.0/0\n}}\n\
                 socks pass {{\n  from: 0.0.0.0/0 to: 0.0.0.0/0\n  command: connect udpassociate udpreply\n  log: connect disconnect\n}}\n",
                log = log.display()
            ),
        )
        .expect("danted.conf");
        let child = std::process::Command::new("danted")
            .arg("-f")
            .arg(&conf)
            .arg("-p")
            .arg(dir.path().join("danted.pid"))
            .arg("-N")
            .arg("1")
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("danted (Debian package dante-server; `cargo xtask test` installs it)");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let start = Instant::now();
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "danted never listened:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Danted {
            child,
            addr,
            log,
            _dir: dir,
        }
    }
}

impl Drop for Danted {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The same UDP flow routed to a `socks5://` upstream: prxd opens a UDP
/// ASSOCIATE with a real dante server and sends the datagrams through its
/// relay (RFC 1928 §7 headers); the answers come back through it.
fn prxd_relays_the_ip_filters_udp_flows_through_a_socks5_udp_relay() {
    let d = Danted::start();
    udp_case(Some(&d));
}

fn udp_case(socks: Option<&Danted>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("ctl.sock");
    let scenario = start_bridge_with(vec![kext("ip")], &sock);
    let origin_sock = std::net::UdpSocket::bind("127.0.0.3:0").expect("origin");
    let origin = origin_sock.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut b = [0u8; 2048];
        while let Ok((k, from)) = origin_sock.recv_from(&mut b) {
            let _ = tx.send(from);
            let _ = origin_sock.send_to(&b[..k], from);
        }
    });
    proxy_port_on_the_ip_filter(&sock, "udp", origin.port());
    let upstream = socks.map_or("direct".to_string(), |d| format!("socks5://{}", d.addr));
    let p = Prxd::run(
        &[
            "--controls",
            "ip",
            "--udp-idle-timeout",
            "1",
            "--upstream",
            &upstream,
            "--emu",
            sock.to_str().unwrap(),
        ],
        &[],
    );
    let answer = command(&sock, &format!("run nat-prxd-udp {origin} {}", p.listen));
    if answer != "passed" {
        let log = p.log_text();
        drop(p);
        command(&sock, "quit");
        let r = scenario.join().expect("scenario thread");
        panic!(
            "run nat-prxd-udp: {answer}\n{}\nprxd's log:\n{log}",
            r.render()
        );
    }
    // The origin heard prxd's flow socket, not the client.
    let from = rx.recv_timeout(Duration::from_secs(5)).expect("origin");
    assert_eq!(from.ip(), "127.0.0.1".parse::<std::net::IpAddr>().unwrap());
    let n = vm::emu::scenarios::nat_bridge::DATAGRAMS;
    let bytes: usize = (0..n).map(|i| format!("prx udp datagram {i}").len()).sum();
    let line = p.wait_line(&["conn udp client=127.0.0.2:", &format!("dst={origin}")]);
    assert!(line.contains("rule=ip:nat"), "{line}");
    assert!(line.contains(&format!("up={bytes} down={bytes}")), "{line}");
    assert!(line.contains("outcome=\"idle timeout\""), "{line}");
    match socks {
        None => assert!(line.contains("upstream=direct"), "{line}"),
        Some(d) => {
            assert!(line.contains("upstream=upstream"), "{line}");
            // dante's own log shows the association and the relayed flow.
            let log = std::fs::read_to_string(&d.log).unwrap_or_default();
            assert!(
                log.contains("udpassociate") || log.contains("UDP"),
                "danted's log:\n{log}"
            );
            assert!(
                log.contains(&origin.ip().to_string()),
                "danted's log:\n{log}"
            );
        }
    }
    assert_eq!(p.counter("udp_flows"), 1);
    assert_eq!(p.counter("udp_idle_timeout"), 1);
    assert_eq!(p.counter("udp_refused"), 0);

    drop(p);
    assert_eq!(command(&sock, "quit"), "bye");
    let r = scenario.join().expect("scenario thread");
    assert!(r.passed, "{}", r.render());
    let s = r
        .steps
        .iter()
        .find(|s| s.what == "nat-prxd-udp exchange")
        .expect("the exchange step");
    assert!(s.ok, "{}", s.detail);
    eprintln!("nat-prxd-udp exchange: {}", s.detail);
}
