//! End to end: the real PrxSocketFilter.kext release binary runs in the KPI
//! emulator (`ctl-bridge` scenario, which serves its kern_control on a Unix
//! socket), and the real `prxctl` binary drives it: an unprivileged client is
//! refused, `proxy set`, `rules load` (a TOML file), `status`, `lookup` of a
//! live redirected connection, a malformed rule file rejected with its line
//! number and nothing changed, `disable`, then the scenario stops and unloads
//! the kext with clean ledgers.
//!
//! `harness = false`: this binary is also the emulator's child process
//! (`e2e child --ctl-bridge PATH --scenario S --kext K`), as `prx-emu child` is,
//! because a package's tests only know their own package's binaries.

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use prxctl::transport::EmuBridge;
use vm::emu::{self, RunOptions, Runner};

fn main() {
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() == Some("child") {
        match emu::ChildArgs::parse(args) {
            Ok(a) => std::process::exit(emu::child_main(&a)),
            Err(e) => {
                eprintln!("e2e child: {e}");
                std::process::exit(emu::child::EXIT_SETUP);
            }
        }
    }
    let tests: [(&str, fn()); 3] = [
        (
            "prxctl_drives_the_socket_filter_in_the_emulator",
            prxctl_drives_the_socket_filter_in_the_emulator,
        ),
        (
            "prxctl_drives_the_ip_filter_in_the_emulator",
            prxctl_drives_the_ip_filter_in_the_emulator,
        ),
        (
            "prxctl_applies_prx_toml_to_both_kexts_in_the_emulator",
            prxctl_applies_prx_toml_to_both_kexts_in_the_emulator,
        ),
    ];
    if std::env::args().any(|a| a == "--list") {
        for (name, _) in &tests {
            println!("{name}: test");
        }
        return;
    }
    // Name filters as libtest takes them (substring match), flags ignored.
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

fn kext(which: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf();
    let opts = xtask::build::BuildOptions {
        release: true,
        archs: vec![],
        kexts: vec![which.into()],
        target_dir: None,
    };
    let built = xtask::build::build(&root, &opts)
        .unwrap_or_else(|e| panic!("cargo xtask build --release failed: {e:#}"));
    built.into_iter().next().expect("one bundle").path
}

struct Ctl {
    sock: PathBuf,
    /// Extra arguments before every command (`--kext ip`).
    pre: Vec<String>,
}

type Scenario = std::thread::JoinHandle<vm::emu::ScenarioReport>;

/// Starts the `ctl-bridge` scenario with `kext` in the emulator; returns when
/// the bridge listens on `sock`.
fn start_bridge(kext: PathBuf, sock: &Path) -> Scenario {
    start_bridge_with(vec![kext], sock)
}

/// [`start_bridge`] with several kexts loaded.
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
            "no bridge socket after 60 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    scenario
}

/// Ends the bridge (`quit`) and checks that the scenario stopped and unloaded
/// the kext with clean ledgers.
fn finish_bridge(sock: &Path, scenario: Scenario) -> vm::emu::ScenarioReport {
    let mut cmd = EmuBridge::raw(sock).expect("bridge");
    assert_eq!(cmd.command("quit").expect("quit"), "bye");
    drop(cmd);
    let r = scenario.join().expect("scenario thread");
    eprintln!("{}", r.render());
    assert!(r.passed, "{}", r.render());
    assert!(r.violations.is_empty(), "{:?}", r.violations);
    r
}

impl Ctl {
    fn run(&self, args: &[&str]) -> Output {
        let out = Command::new(env!("CARGO_BIN_EXE_prxctl"))
            .arg("--emu")
            .arg(&self.sock)
            .args(&self.pre)
            .args(args)
            .output()
            .expect("run prxctl");
        eprintln!(
            "$ prxctl {}\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "prxctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    }

    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(!out.status.success(), "prxctl {args:?} should fail");
        String::from_utf8(out.stderr).expect("utf-8")
    }
}

fn stat(status: &str, name: &str) -> u64 {
    status
        .lines()
        .find(|l| l.trim_start().starts_with(name))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no statistic {name:?} in\n{status}"))
}

/// A rules file without its `#` comment lines.
fn without_comments(text: &str) -> String {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
}

fn prxctl_drives_the_socket_filter_in_the_emulator() {
    let kext = socket_kext();
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("ctl.sock");
    let proxy = TcpListener::bind("127.0.0.1:0").expect("proxy listener");
    let proxy_addr = proxy.local_addr().expect("addr");
    let scenario = start_bridge(kext, &sock);
    let ctl = Ctl {
        sock: sock.clone(),
        pre: vec![],
    };

    // CTL_FLAG_PRIVILEGED: a non-root client is refused before the kext sees
    // it, and told how to fix it.
    let e = ctl.fails(&["--as-uid", "501", "status"]);
    assert!(e.contains("Operation not permitted"), "{e}");
    assert!(
        e.contains("run prxctl with sudo (with --emu: add --as-uid 0)"),
        "{e}"
    );

    // Errors name the expected form; emulator flags have their own heading.
    let e = ctl.fails(&["proxy", "set", "127.0.0.1"]);
    assert!(
        e.contains("expected ADDR:PORT (the port is missing), e.g. 127.0.0.1:3128"),
        "{e}"
    );
    let e = ctl.fails(&["lookup", "localhost"]);
    assert!(e.contains("expected ADDR:PORT, e.g. 127.0.0.1:3128"), "{e}");
    let help = ctl.ok(&["status", "--help"]);
    let heading = help
        .find("Emulator only (trying prxctl on Linux):")
        .unwrap_or_else(|| panic!("{help}"));
    assert!(
        help[heading..].contains("--emu <SOCKET>") && help[heading..].contains("--as-uid <UID>"),
        "{help}"
    );

    ctl.ok(&[
        "--as-uid",
        "0",
        "proxy",
        "set",
        &proxy_addr.to_string(),
        "--pid",
        "5000",
        "--name",
        "prx-proxy",
    ]);
    let s = ctl.ok(&["status"]);
    assert!(s.contains("filtering:        enabled"), "{s}");
    assert!(s.contains("rules:            0 "), "{s}");
    assert!(
        s.contains(&format!("proxy (IPv4):     {proxy_addr}")),
        "{s}"
    );
    assert!(
        s.contains("proxy process:    pid 5000, name prx-proxy"),
        "{s}"
    );

    let rules = dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        "# documentation network to the proxy, with a PROXY v2 header\n\
         default = \"direct\"\n\
         \n\
         [[rule]]\n\
         process = \"excluded-app\"\n\
         action = \"direct\"\n\
         \n\
         [[rule]]\n\
         dst = \"203.0.113.0/24\"\n\
         ports = \"80-443\"\n\
         action = \"proxy-v2\"\n",
    )
    .expect("write rules");
    let out = ctl.ok(&["rules", "load", rules.to_str().expect("utf-8 path")]);
    assert!(out.contains("loaded 2 rules"), "{out}");
    let s = ctl.ok(&["status"]);
    assert!(
        s.contains("rules:            2 (rule sets installed: 1)"),
        "{s}"
    );

    // A live redirected connection (opened inside the emulator as pid 4242).
    let mut cmd = EmuBridge::raw(&sock).expect("bridge");
    let answer = cmd.command("open 203.0.113.10:80").expect("open");
    drop(cmd);
    let mut words = answer.split(' ');
    assert_eq!(words.next(), Some("local"), "{answer}");
    let local: SocketAddr = words
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("{answer}"));
    assert_eq!(
        words.nth(1).and_then(|a| a.parse::<SocketAddr>().ok()),
        Some(proxy_addr),
        "redirected: {answer}"
    );
    proxy.set_nonblocking(false).expect("blocking");
    let (mut at_proxy, _) = proxy
        .accept()
        .expect("the redirected connection reaches the proxy");
    at_proxy
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while let Ok(n) = at_proxy.read(&mut buf) {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got.starts_with(b"\r\n\r\n\0\r\nQUIT\n\x21\x11"),
        "PROXY v2 TCP4 header first: {got:?}"
    );
    assert!(
        got.ends_with(b"hello\n"),
        "then the client's bytes: {got:?}"
    );

    let out = ctl.ok(&["lookup", &local.to_string()]);
    assert!(
        out.contains("original destination 203.0.113.10:80 (pid 4242, rule 1)"),
        "{out}"
    );
    let out = ctl.run(&["lookup", "127.0.0.1:9"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("no original destination"));

    // Malformed rule files: rejected with the line and the key; nothing changes.
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[rule]]\ndst = \"203.0.113.0/24\"\naction = \"proxy\"\n\n[[rule]]\ndst = \"198.51.100.7/24\"\naction = \"direct\"\n",
    )
    .expect("write");
    let e = ctl.fails(&["rules", "load", bad.to_str().expect("utf-8")]);
    assert!(e.contains("bad.toml:6:"), "line 6: {e}");
    assert!(e.contains("rule 2: `dst` = \"198.51.100.7/24\""), "{e}");
    std::fs::write(
        &bad,
        "default = \"direct\"\n[[rule]]\naction = \"proxy\"\nport = 80\n",
    )
    .expect("write");
    let e = ctl.fails(&["rules", "load", bad.to_str().expect("utf-8")]);
    assert!(
        e.contains("bad.toml:4:") && e.contains("port"),
        "line 4, key `port`: {e}"
    );
    let s = ctl.ok(&["status"]);
    assert!(
        s.contains("rules:            2 (rule sets installed: 1)"),
        "unchanged: {s}"
    );
    assert_eq!(stat(&s, "connections redirected"), 1, "{s}");
    assert_eq!(stat(&s, "PROXY v2 headers sent"), 1, "{s}");

    // `rules show`: the installed rules as a file `rules load` takes back.
    let shown = ctl.ok(&["rules", "show"]);
    assert!(
        shown.contains("default = \"direct\"")
            && shown.contains("process = \"excluded-app\"")
            && shown
                .contains("dst = \"203.0.113.0/24\"\nports = \"80-443\"\naction = \"proxy-v2\"")
            && shown.contains("(rule set 1)"),
        "{shown}"
    );
    let back = dir.path().join("shown.toml");
    std::fs::write(&back, &shown).expect("write");
    let out = ctl.ok(&["rules", "load", back.to_str().expect("utf-8")]);
    assert!(out.contains("loaded 2 rules, default direct"), "{out}");
    let again = ctl.ok(&["rules", "show"]);
    assert!(again.contains("(rule set 2)"), "{again}");
    assert_eq!(
        without_comments(&again),
        without_comments(&shown),
        "the same rules after the round trip"
    );

    // A UDP rule can never apply to the socket filter: loaded, with a warning
    // naming the file, the line and the kext it is for.
    let udp = dir.path().join("udp.toml");
    std::fs::write(
        &udp,
        "[[rule]]\ndst = \"203.0.113.0/24\"\naction = \"proxy\"\n\n[[rule]]\nprotocol = \"udp\"\naction = \"block\"\n",
    )
    .expect("write");
    let out = ctl.run(&["rules", "load", udp.to_str().expect("utf-8")]);
    assert!(out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("prxctl: warning: ")
            && e.contains(
                "udp.toml:5: rule 2: protocol \"udp\": the socket filter sees TCP connections only"
            )
            && e.contains("--kext ip"),
        "{e}"
    );
    assert_eq!(e.matches("warning").count(), 1, "{e}");
    assert!(ctl.ok(&["rules", "show"]).contains("protocol = \"udp\""));

    ctl.ok(&["disable"]);
    let s = ctl.ok(&["status"]);
    assert!(s.contains("filtering:        disabled"), "{s}");
    ctl.ok(&["enable"]);
    assert!(ctl.ok(&["status"]).contains("filtering:        enabled"));

    // The log level: decisions by default, set through the control.
    let out = ctl.ok(&["log-level"]);
    assert!(out.starts_with("log level decisions"), "{out}");
    let out = ctl.ok(&["log-level", "debug"]);
    assert!(out.starts_with("log level debug"), "{out}");
    let s = ctl.ok(&["status"]);
    assert_eq!(
        stat(&s, "log level (0 off, 1 decisions, 2 debug)"),
        2,
        "{s}"
    );
    ctl.ok(&["log-level", "off"]);
    let e = ctl.fails(&["log-level", "verbose"]);
    assert!(e.contains("possible values: off, decisions, debug"), "{e}");

    let r = finish_bridge(&sock, scenario);
    // What the kext logged at `decisions`: rule changes and the redirect,
    // each line with the greppable `prx: PrxSocketFilter: ` prefix.
    let logged = |prefix: &str| r.log.iter().any(|l| l.starts_with(prefix));
    assert!(
        logged("prx: PrxSocketFilter: rules: 2 rule(s), default Direct (rule set 1)"),
        "{:#?}",
        r.log
    );
    assert!(
        logged(&format!(
            "prx: PrxSocketFilter: redirect 203.0.113.10:80 -> {proxy_addr} with PROXY v2 (rule 1; pid 4242 "
        )),
        "{:#?}",
        r.log
    );
    assert!(
        logged("prx: PrxSocketFilter: log level debug"),
        "{:#?}",
        r.log
    );
    // Counters are named when the kext stops.
    assert!(
        logged("prx: PrxSocketFilter: connections redirected = 1"),
        "{:#?}",
        r.log
    );
}

/// The IP filter through the same tool: `--kext ip` reaches its own control;
/// proxies and a TOML rule file configure the NAT; smoltcp traffic (run inside
/// the emulator on the bridge's command) is redirected; status shows the flow
/// and the packets; a lookup of the client's address answers from the NAT table.
fn prxctl_drives_the_ip_filter_in_the_emulator() {
    let kext = kext("ip");
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("ctl.sock");
    let scenario = start_bridge(kext, &sock);
    let ip = Ctl {
        sock: sock.clone(),
        pre: vec!["--kext".into(), "ip".into()],
    };
    let socket = Ctl {
        sock: sock.clone(),
        pre: vec![],
    };

    // Only the IP filter is loaded: the socket filter's control is not there.
    let e = socket.fails(&["status"]);
    assert!(e.contains("net.prx.kext.SocketFilter.control"), "{e}");
    let e = ip.fails(&["--as-uid", "501", "status"]);
    assert!(e.contains("Operation not permitted"), "{e}");

    let s = ip.ok(&["--as-uid", "0", "status"]);
    assert!(s.contains("filtering:        enabled"), "{s}");
    assert!(
        s.contains("rules:            0 (rule sets installed: 0)"),
        "{s}"
    );
    assert!(s.contains("filters attached: 2 (IPv4, IPv6)"), "{s}");
    assert_eq!(stat(&s, "NAT flows"), 0, "{s}");
    // kext-ip's [package.metadata.prx-ip] nat-flows, per family.
    assert_eq!(stat(&s, "NAT flow capacity"), 2 * 16384, "{s}");
    assert_eq!(stat(&s, "NAT flows expired"), 0, "{s}");

    ip.ok(&["proxy", "set", "192.0.2.1:3128", "[2001:db8:2::1]:3128"]);
    let rules = dir.path().join("nat.toml");
    std::fs::write(
        &rules,
        "default = \"direct\"\n\
         \n\
         [[rule]]\n\
         dst = \"203.0.113.0/24\"\n\
         protocol = \"tcp\"\n\
         action = \"proxy\"\n\
         \n\
         [[rule]]\n\
         dst = \"2001:db8:203::/48\"\n\
         protocol = \"udp\"\n\
         action = \"proxy\"\n",
    )
    .expect("write rules");
    let out = ip.ok(&["rules", "load", rules.to_str().expect("utf-8 path")]);
    assert!(out.contains("loaded 2 rules"), "{out}");

    let mut cmd = EmuBridge::raw(&sock).expect("bridge");
    assert_eq!(cmd.command("run nat-tcp4").expect("run"), "passed");
    assert_eq!(cmd.command("run nat-udp6").expect("run"), "passed");
    drop(cmd);

    let s = ip.ok(&["status"]);
    assert!(
        s.contains("rules:            2 (rule sets installed: 1)"),
        "{s}"
    );
    assert!(s.contains("proxy (IPv4):     192.0.2.1:3128"), "{s}");
    assert!(s.contains("proxy (IPv6):     [2001:db8:2::1]:3128"), "{s}");
    assert_eq!(stat(&s, "NAT flows"), 2, "a TCP and a UDP flow: {s}");
    assert!(stat(&s, "packets redirected") > 700, "{s}");
    assert!(stat(&s, "reply packets rewritten") > 700, "{s}");
    assert_eq!(stat(&s, "packets dropped: busy"), 0, "{s}");
    assert_eq!(stat(&s, "packets dropped: unparseable"), 0, "{s}");

    // What the proxy asks: where did the client at 10.0.0.1:49152 want to go?
    let out = ip.ok(&["lookup", "10.0.0.1:49152"]);
    assert!(
        out.contains("original destination 203.0.113.10:80 (NAT flow)"),
        "{out}"
    );
    let out = ip.run(&["lookup", "10.0.0.1:1"]);
    assert!(!out.status.success());

    // NAT timeouts: shown, set (one at a time; the others kept), validated, and
    // the socket filter has none.
    let out = ip.ok(&["timeouts"]);
    assert_eq!(
        out,
        "TCP idle 7440 s, TCP SYN-sent/closing 240 s, UDP idle 300 s\n"
    );
    let out = ip.ok(&["timeouts", "--udp-idle", "600", "--tcp-closed", "300"]);
    assert_eq!(
        out,
        "TCP idle 7440 s, TCP SYN-sent/closing 300 s, UDP idle 600 s\n"
    );
    let s = ip.ok(&["status"]);
    assert_eq!(stat(&s, "NAT timeout: UDP idle (s)"), 600, "{s}");
    assert_eq!(
        stat(&s, "NAT timeout: TCP SYN-sent/closing (s)"),
        300,
        "{s}"
    );
    let e = ip.fails(&["timeouts", "--udp-idle", "60"]);
    assert!(
        e.contains("--udp-idle 60: this timeout is 120 (RFC 4787's minimum) to 604800 seconds"),
        "{e}"
    );
    let e = socket.fails(&["timeouts", "--udp-idle", "500"]);
    assert!(e.contains("use --kext ip"), "{e}");
    assert_eq!(
        ip.ok(&["timeouts"]),
        "TCP idle 7440 s, TCP SYN-sent/closing 300 s, UDP idle 600 s\n"
    );

    // Rules the IP filter can never apply as written: a process selector (it
    // sees packets, not processes) and a PROXY v2 header (it sends none). Each
    // is a warning; the file still loads; `rules show` gives it back.
    let odd = dir.path().join("odd.toml");
    std::fs::write(
        &odd,
        "default = \"direct\"\n\n[[rule]]\nprocess = \"curl\"\naction = \"proxy\"\n\n[[rule]]\ndst = \"203.0.113.0/24\"\nprotocol = \"tcp\"\naction = \"proxy-v2\"\n",
    )
    .expect("write");
    let out = ip.run(&["rules", "load", odd.to_str().expect("utf-8")]);
    assert!(out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("odd.toml:3: rule 1: the IP filter sees packets, not processes: a `process` rule never applies there"),
        "{e}"
    );
    assert!(
        e.contains(
            "odd.toml:7: rule 2: action \"proxy-v2\": the IP filter sends no PROXY v2 header"
        ),
        "{e}"
    );
    assert_eq!(e.matches("warning").count(), 2, "{e}");
    // The same file is fine for the socket filter: no warning there.
    let out = socket.run(&["rules", "check", odd.to_str().expect("utf-8")]);
    assert!(out.status.success() && out.stderr.is_empty(), "{out:?}");
    let shown = ip.ok(&["rules", "show"]);
    assert!(
        shown.contains("rules load FILE")
            && shown.contains("--kext ip")
            && shown.contains("process = \"curl\"")
            && shown.contains("action = \"proxy-v2\""),
        "{shown}"
    );
    let back = dir.path().join("ip-shown.toml");
    std::fs::write(&back, &shown).expect("write");
    ip.ok(&["rules", "load", back.to_str().expect("utf-8")]);
    assert_eq!(
        without_comments(&ip.ok(&["rules", "show"])),
        without_comments(&shown)
    );

    ip.ok(&["disable"]);
    assert!(ip.ok(&["status"]).contains("filtering:        disabled"));
    ip.ok(&["enable"]);

    let r = finish_bridge(&sock, scenario);
    // Decisions in the kernel log: the redirected flows and the rule changes.
    assert!(
        r.log
            .iter()
            .any(|l| l == "prx: PrxIPFilter: redirect TCP 10.0.0.1:49152 -> 203.0.113.10:80 to 192.0.2.1:3128"),
        "{:#?}",
        r.log
    );
    assert!(
        r.log
            .iter()
            // The IP filter's line names no rule set (the socket filter's does).
            .any(|l| l == "prx: PrxIPFilter: rules: 2 rule(s), default Direct"),
        "{:#?}",
        r.log
    );
    assert!(
        r.log.iter().any(|l| l == "prx: PrxIPFilter flows_v4=1")
            && r.log.iter().any(|l| l == "prx: PrxIPFilter flows_v6=1"),
        "{:?}",
        r.log
    );
}

/// `prxctl apply`: one prx.toml brings both kexts (loaded together in the
/// emulator) to its state; a second apply changes nothing; an edit changes
/// only what it edits; a bad file changes nothing and names its line.
fn prxctl_applies_prx_toml_to_both_kexts_in_the_emulator() {
    let kexts = vec![kext("socket"), kext("ip")];
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("ctl.sock");
    let state = dir.path().join("state");
    let state_arg = state.to_str().expect("utf-8 path");
    let conf = dir.path().join("prx.toml");
    let conf_arg = conf.to_str().expect("utf-8 path");
    let config = |socket_dst: &str| {
        format!(
            "[socket-filter]\n\
             enabled = true\n\
             proxy = [\"127.0.0.1:1080\"]\n\
             proxy-process = \"microsocks\"\n\
             default = \"direct\"\n\
             [[socket-filter.rule]]\n\
             dst = \"{socket_dst}\"\n\
             action = \"proxy\"\n\
             \n\
             [ip-filter]\n\
             enabled = false\n\
             proxy = [\"192.0.2.1:3128\", \"[2001:db8:2::1]:3128\"]\n\
             [ip-filter.timeouts]\n\
             udp-idle = 900\n\
             [[ip-filter.rule]]\n\
             protocol = \"udp\"\n\
             dst = \"198.51.100.0/24\"\n\
             action = \"proxy\"\n\
             [[ip-filter.rule]]\n\
             dst = \"203.0.113.0/24\"\n\
             action = \"block\"\n"
        )
    };
    std::fs::write(&conf, config("203.0.113.0/24")).expect("write prx.toml");

    // --check needs no kext.
    let nowhere = Ctl {
        sock: dir.path().join("no-bridge.sock"),
        pre: vec![],
    };
    let out = nowhere.ok(&["apply", "--check", conf_arg]);
    assert!(
        out.contains(": ok; socket-filter: enabled, 1 rules"),
        "{out}"
    );
    assert!(out.contains("ip-filter: disabled, 2 rules"), "{out}");

    let scenario = start_bridge_with(kexts, &sock);
    let ctl = Ctl {
        sock: sock.clone(),
        pre: vec!["--as-uid".into(), "0".into()],
    };
    let ip = Ctl {
        sock: sock.clone(),
        pre: vec!["--as-uid".into(), "0".into(), "--kext".into(), "ip".into()],
    };
    let apply = ["apply", conf_arg, "--state-dir", state_arg];

    // The emulator loads its own kexts: --load is refused, nothing changes.
    let e = ctl.fails(&["apply", conf_arg, "--state-dir", state_arg, "--load"]);
    assert!(e.contains("--load"), "{e}");

    let out = ctl.ok(&apply);
    for line in [
        "socket-filter: proxies 127.0.0.1:1080 process microsocks (were none)",
        "socket-filter: rules: 1 rules, default direct",
        "ip-filter: disabled",
        "ip-filter: proxies 192.0.2.1:3128 [2001:db8:2::1]:3128 (were none)",
        "ip-filter: NAT timeouts TCP idle 7440 s, TCP SYN-sent/closing 240 s, UDP idle 900 s",
        "ip-filter: rules: 2 rules, default direct",
    ] {
        assert!(out.contains(line), "{line:?} in\n{out}");
    }
    // The socket filter starts enabled: nothing to say about it.
    assert!(!out.contains("socket-filter: enabled"), "{out}");
    let s = ctl.ok(&["status"]);
    assert!(s.contains("filtering:        enabled"), "{s}");
    assert!(
        s.contains("rules:            1 (rule sets installed: 1)"),
        "{s}"
    );
    assert!(s.contains("proxy process:    name microsocks"), "{s}");
    let s = ip.ok(&["status"]);
    assert!(s.contains("filtering:        disabled"), "{s}");
    assert!(
        s.contains("rules:            2 (rule sets installed: 1)"),
        "{s}"
    );
    assert!(s.contains("proxy (IPv6):     [2001:db8:2::1]:3128"), "{s}");
    assert_eq!(stat(&s, "NAT timeout: UDP idle (s)"), 900, "{s}");

    // Idempotent.
    let out = ctl.ok(&apply);
    assert_eq!(out, "socket-filter: unchanged\nip-filter: unchanged\n");
    let s = ctl.ok(&["status"]);
    assert!(
        s.contains("rules:            1 (rule sets installed: 1)"),
        "{s}"
    );

    // Someone else changes the socket filter's rules: apply puts them back.
    let other = dir.path().join("other.toml");
    std::fs::write(&other, "default = \"block\"\n").expect("write");
    ctl.ok(&["rules", "load", other.to_str().expect("utf-8 path")]);
    let out = ctl.ok(&apply);
    assert_eq!(
        out,
        "socket-filter: rules: 1 rules, default direct\nip-filter: unchanged\n"
    );

    // An edit changes what it edits.
    std::fs::write(&conf, config("198.18.0.0/15")).expect("write prx.toml");
    let out = ctl.ok(&apply);
    assert_eq!(
        out,
        "socket-filter: rules: 1 rules, default direct\nip-filter: unchanged\n"
    );
    let s = ctl.ok(&["status"]);
    assert!(
        s.contains("rules:            1 (rule sets installed: 4)"),
        "{s}"
    );

    // A bad file (an error in the IP filter's part) changes nothing, not even
    // the socket filter's valid part.
    let bad = config("192.0.2.0/24").replace("udp-idle = 900", "udp-idle = 0");
    std::fs::write(&conf, bad).expect("write prx.toml");
    let e = ctl.fails(&apply);
    assert!(
        e.contains(&format!(
            "{conf_arg}:14:12: [ip-filter] `timeouts.udp-idle` = 0"
        )),
        "{e}"
    );
    let s = ctl.ok(&["status"]);
    assert!(
        s.contains("rules:            1 (rule sets installed: 4)"),
        "{s}"
    );
    let s = ip.ok(&["status"]);
    assert_eq!(stat(&s, "NAT timeout: UDP idle (s)"), 900, "{s}");

    finish_bridge(&sock, scenario);
}
