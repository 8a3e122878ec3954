//! The `ssh` backend end to end against a REAL OpenSSH server on loopback, with
//! the macOS-only commands (`installer`, `kmutil`, `kextload`, `log`, `sw_vers`,
//! `sysctl kern.boottime`, `nc`, `curl`, `prxctl`, `sudo`, `route`, `ipconfig`) replaced by the shell
//! test doubles in `vm/tests/doubles/` on the remote PATH.
//!
//! THIS DOES NOT TEST macOS. It tests prx's side: the ssh/scp transport and its
//! options, copying the package, time-outs, the order and form of the guest
//! commands, log collection, panic detection and failure reporting. Every test
//! name here ends in `_not_macos`.
//!
//! Each test starts its own `sshd` (Debian `openssh-server`, /usr/sbin/sshd) on a
//! free 127.0.0.1 port with a host key and an authorized key generated into a
//! temporary directory, as the current user, and kills that sshd at the end.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vm::backend::guest::{self, GuestConfig};
use vm::backend::ssh::{HostKeyPolicy, SshTarget};
use vm::backend::{Backend, Ssh};
use vm::report::ScenarioReport;

const SSHD: &str = "/usr/sbin/sshd";

struct Sshd {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        // Only the sshd this test started, by its handle.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn keygen(path: &Path) {
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "prx-vm-test", "-f"])
        .arg(path)
        .status()
        .expect("ssh-keygen (openssh-client)");
    assert!(st.success());
}

fn whoami() -> String {
    let o = Command::new("id").arg("-un").output().unwrap();
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

impl Sshd {
    fn start() -> Sshd {
        assert!(
            Path::new(SSHD).is_file(),
            "{SSHD} missing: install Debian's openssh-server (`.ci/run` does)"
        );
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        keygen(&d.join("host_key"));
        keygen(&d.join("client_key"));
        std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys")).unwrap();
        let state = d.join("state");
        for sub in ["ids", "loaded", "reports"] {
            std::fs::create_dir_all(state.join(sub)).unwrap();
        }
        std::fs::write(
            state.join("ids/PrxSocketFilter"),
            "net.prx.kext.SocketFilter",
        )
        .unwrap();
        std::fs::write(state.join("ids/PrxIPFilter"), "net.prx.kext.IPFilter").unwrap();
        std::fs::write(state.join("version"), "13.6.1\n").unwrap();
        std::fs::write(state.join("boottime"), "1800000000").unwrap();
        let doubles = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/doubles");
        if nix_is_root() {
            // sshd run as root needs its privilege-separation directory.
            let _ = std::fs::create_dir_all("/run/sshd");
        }
        let port = free_port();
        let cfg = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nAuthorizedKeysFile {d}/authorized_keys\n\
             PidFile none\nUsePAM no\nStrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             PubkeyAuthentication yes\nPermitRootLogin prohibit-password\nSubsystem sftp /usr/lib/openssh/sftp-server\n\
             SetEnv PATH={doubles}:/usr/local/bin:/usr/bin:/bin PRX_DOUBLES_STATE={state}\n",
            d = d.display(),
            doubles = doubles.display(),
            state = state.display()
        );
        std::fs::write(d.join("sshd_config"), cfg).unwrap();
        let host_pub = std::fs::read_to_string(d.join("host_key.pub")).unwrap();
        std::fs::write(
            d.join("known_hosts"),
            format!("[127.0.0.1]:{port} {host_pub}"),
        )
        .unwrap();
        let log = std::fs::File::create(d.join("sshd.log")).unwrap();
        let child = Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting sshd");
        let mut s = Sshd { child, dir, port };
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(st)) = s.child.try_wait() {
                panic!("sshd exited ({st}): {}", s.sshd_log());
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "sshd did not listen: {}",
                s.sshd_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    fn sshd_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }
    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }
    fn flag(&self, name: &str) {
        std::fs::write(self.state().join(name), "").unwrap();
    }
    fn calls(&self) -> String {
        std::fs::read_to_string(self.state().join("calls")).unwrap_or_default()
    }

    fn target(&self) -> SshTarget {
        SshTarget {
            host: "127.0.0.1".into(),
            port: self.port,
            user: whoami(),
            identity: Some(self.dir.path().join("client_key")),
            known_hosts: self.dir.path().join("known_hosts"),
            host_key_policy: HostKeyPolicy::Yes,
            connect_timeout: Duration::from_secs(5),
        }
    }

    /// A package to install and the guest configuration pointing at this sshd's doubles.
    fn guest(&self) -> GuestConfig {
        let pkg = self.dir.path().join("prx-0.1.0.pkg");
        std::fs::write(&pkg, b"xar!\0\x1cnot really a pkg: test bytes \x01\x02\x03").unwrap();
        let mut g = GuestConfig::new(pkg);
        g.work_dir = self.dir.path().join("guest-work").display().to_string();
        g.panic_report_dirs = vec![self.state().join("reports").display().to_string()];
        g.command_timeout = Duration::from_secs(20);
        g.install_timeout = Duration::from_secs(20);
        // What the pkg installs at /usr/local/bin/prxctl and
        // /usr/local/share/prx/uninstall.sh: the installer double copies the
        // doubles below the state directory.
        let root = self.state().join("root");
        g.prxctl = root.join("usr/local/bin/prxctl").display().to_string();
        g.uninstaller = root
            .join("usr/local/share/prx/uninstall.sh")
            .display()
            .to_string();
        g
    }
}

fn nix_is_root() -> bool {
    whoami() == "root"
}

fn run(s: &Sshd, g: GuestConfig, scenarios: &[&str]) -> Vec<ScenarioReport> {
    let mut b = Ssh {
        target: s.target(),
        guest: g,
    };
    let names: Vec<String> = scenarios.iter().map(|s| s.to_string()).collect();
    let r = b.run(&names);
    for x in &r {
        eprint!("{}", x.render());
    }
    r
}

fn by_name<'a>(r: &'a [ScenarioReport], name: &str) -> &'a ScenarioReport {
    r.iter()
        .find(|x| x.scenario == name)
        .unwrap_or_else(|| panic!("no report {name}"))
}

fn all_text(r: &ScenarioReport) -> String {
    r.render()
}

#[test]
fn ssh_backend_full_flow_on_loopback_sshd_with_doubles_not_macos() {
    let s = Sshd::start();
    let g = s.guest();
    let pkg_bytes = std::fs::read(&g.pkg).unwrap();
    // Progress as it happens: a line per guest step and per finished scenario
    // (other tests of this binary may add theirs: only presence is checked).
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(Instant, String)>::new()));
    let sink = std::sync::Arc::clone(&seen);
    vm::progress::set_sink(Some(Box::new(move |e| {
        sink.lock().unwrap().push((Instant::now(), e.line()))
    })));
    let r = run(&s, g, &["load-unload", "socket-connect"]);
    vm::progress::set_sink(None);
    let returned = Instant::now();
    assert_eq!(r.len(), 3, "setup + 2 scenarios");
    assert!(r.iter().all(|x| x.passed), "sshd log:\n{}", s.sshd_log());
    let seen = seen.lock().unwrap();
    let at = |needle: &str| {
        seen.iter()
            .find(|(_, l)| l.contains(needle))
            .map(|(t, _)| *t)
            .unwrap_or_else(|| panic!("no progress line with {needle:?}: {seen:#?}"))
    };
    let installed = at("  setup: install the package ok (");
    let first = at("load-unload: passed in ");
    let last = at("socket-connect: passed in ");
    assert!(
        installed < first && first < last && last <= returned,
        "progress lines come as the steps end: {seen:#?}"
    );
    // The package arrived byte for byte and was installed with installer.
    assert_eq!(
        std::fs::read(s.state().join("installed.pkg")).unwrap(),
        pkg_bytes
    );
    let calls = s.calls();
    for needle in [
        "sw_vers -productVersion",
        "sysctl -n kern.boottime",
        "sudo -n installer -pkg ",
        "installer -pkg ",
        "kmutil load -p /Library/Extensions/PrxSocketFilter.kext",
        "kmutil load -p /Library/Extensions/PrxIPFilter.kext",
        "kmutil showloaded --list-only --bundle-identifier net.prx.kext.SocketFilter",
        "kmutil unload -b net.prx.kext.IPFilter",
        "log show --style syslog --start ",
        "--predicate sender == \"PrxSocketFilter\" OR sender == \"PrxIPFilter\"",
        "prxctl proxy set 127.0.0.1:18080",
        "prxctl rules load ",
        "nc -l 127.0.0.1 18080",
        "curl -sS -m 5 -o /dev/null http://203.0.113.10:80/prx-vmtest",
        "prxctl status",
        "prxctl enable",
        "prxctl disable",
        "prxctl --version",
    ] {
        assert!(calls.contains(needle), "`{needle}` not called:\n{calls}");
    }
    // The installed prxctl, by its absolute path, is the one used.
    assert!(
        calls.contains("sudo -n /") && !calls.contains("sudo -n prxctl"),
        "{calls}"
    );
    assert!(
        all_text(&r[0]).contains("installed prxctl is the built version"),
        "{}",
        all_text(&r[0])
    );
    // IP filter unloaded before the socket filter (reverse load order).
    let ip = calls
        .find("kmutil unload -b net.prx.kext.IPFilter")
        .unwrap();
    let so = calls
        .find("kmutil unload -b net.prx.kext.SocketFilter")
        .unwrap();
    assert!(ip < so);
    let lu = by_name(&r, "load-unload");
    assert!(
        lu.log
            .iter()
            .any(|l| l.contains("prx: start net.prx.kext.SocketFilter")),
        "{:?}",
        lu.log
    );
    assert!(!lu.log.iter().any(|l| l.starts_with("Timestamp")));
    let sc = all_text(by_name(&r, "socket-connect"));
    assert!(
        sc.contains(
            "PROXY v2 header: command 1 family 0x11 src 10.0.0.2:50000 dst 203.0.113.10:80"
        ),
        "{sc}"
    );
    assert!(
        sc.contains("listener received: 76 byte(s): \\r\\n\\r\\n\\x00\\r\\nQUIT\\n!"),
        "{sc}"
    );
    assert!(sc.contains("GET /prx-vmtest HTTP/1.1"), "{sc}");
    let xml = vm::report::junit("ssh", &r);
    assert!(
        xml.contains("<testsuite name=\"vm-test ssh\" tests=\"3\" failures=\"0\""),
        "{xml}"
    );
}

#[test]
fn ssh_backend_macos_10_15_uses_kextload_on_loopback_sshd_not_macos() {
    let s = Sshd::start();
    std::fs::write(s.state().join("version"), "10.15.7\n").unwrap();
    let r = run(&s, s.guest(), &["load-unload", "unload-open"]);
    assert!(r.iter().all(|x| x.passed));
    let uo = all_text(by_name(&r, "unload-open"));
    assert!(
        uo.contains("`sudo -n kextunload -b net.prx.kext.SocketFilter` exited with 1"),
        "{uo}"
    );
    let calls = s.calls();
    assert!(
        calls.contains("kextload /Library/Extensions/PrxSocketFilter.kext"),
        "{calls}"
    );
    assert!(
        calls.contains("kextstat -l -b net.prx.kext.IPFilter"),
        "{calls}"
    );
    assert!(
        calls.contains("kextunload -b net.prx.kext.SocketFilter"),
        "{calls}"
    );
    assert!(!calls.contains("kmutil"), "{calls}");
}

#[test]
fn ssh_backend_not_approved_stops_with_instructions_on_loopback_sshd_not_macos() {
    let s = Sshd::start();
    s.flag("not-approved");
    let r = run(&s, s.guest(), &["load-unload", "socket-connect"]);
    assert!(by_name(&r, "setup").passed);
    let lu = by_name(&r, "load-unload");
    assert!(!lu.passed);
    let t = all_text(lu);
    assert!(t.contains("is not approved to load"), "{t}");
    assert!(
        t.contains("Privacy & Security") && t.contains("reboot"),
        "{t}"
    );
    let sc = by_name(&r, "socket-connect");
    assert!(!sc.passed);
    assert!(
        sc.failures[0].starts_with("not run: macOS refused to load the kexts in `load-unload`"),
        "{:?}",
        sc.failures
    );
    // Nothing after the refusal: only the first kext was tried.
    assert!(
        !s.calls()
            .contains("kmutil load -p /Library/Extensions/PrxIPFilter.kext")
    );
    assert!(vm::report::junit("ssh", &r).contains("failures=\"2\""));
}

#[test]
fn ssh_backend_detects_panic_report_and_reboot_on_loopback_sshd_not_macos() {
    let s = Sshd::start();
    s.flag("panic-on-load");
    s.flag("reboot-on-load");
    let r = run(&s, s.guest(), &["load-unload"]);
    let lu = by_name(&r, "load-unload");
    assert!(!lu.passed);
    let t = all_text(lu);
    assert!(
        t.contains("new kernel panic report(s): panic-full-2026-11-28-100000.0002.panic"),
        "{t}"
    );
    assert!(
        t.contains("panic(cpu 0 caller 0xffffff8000000000): prx double"),
        "{t}"
    );
    assert!(
        t.contains("kern.boottime changed from `{ sec = 1800000000"),
        "{t}"
    );
    assert!(t.contains("the guest rebooted unexpectedly"), "{t}");
}

#[test]
fn ssh_backend_redirect_missing_is_a_failure_with_evidence_on_loopback_sshd_not_macos() {
    let s = Sshd::start();
    s.flag("no-redirect");
    let r = run(&s, s.guest(), &["socket-connect"]);
    let t = all_text(by_name(&r, "socket-connect"));
    assert!(
        t.contains(
            "FAIL listener received: nothing: the connection to 203.0.113.10:80 was not redirected"
        ),
        "{t}"
    );
    // The kexts were still unloaded after the failed scenario.
    assert!(
        s.calls()
            .contains("kmutil unload -b net.prx.kext.SocketFilter")
    );
}

#[test]
fn ssh_backend_time_outs_transport_and_copy_failures_on_loopback_sshd_not_macos() {
    let s = Sshd::start();
    // A hanging installer is cut off by the install time limit.
    s.flag("installer-hang");
    let mut g = s.guest();
    g.install_timeout = Duration::from_secs(2);
    let started = Instant::now();
    let r = run(&s, g, &["load-unload"]);
    assert!(started.elapsed() < Duration::from_secs(15));
    let t = all_text(by_name(&r, "setup"));
    assert!(t.contains("timed out after 2s"), "{t}");
    assert!(
        by_name(&r, "load-unload").failures[0].contains("not run: the package did not install")
    );

    // A package that does not exist locally: the copy fails, nothing is installed.
    let mut g = s.guest();
    g.pkg = s.dir.path().join("missing.pkg");
    let r = run(&s, g, &["load-unload"]);
    let t = all_text(by_name(&r, "setup"));
    assert!(
        t.contains("FAIL copy the package: copying") && t.contains("missing.pkg"),
        "{t}"
    );

    // Nobody listening: ssh's own failure (status 255) is reported as such.
    let mut b = Ssh {
        target: SshTarget {
            port: free_port(),
            ..s.target()
        },
        guest: s.guest(),
    };
    let r = b.run(&["load-unload".to_string()]);
    let t = all_text(by_name(&r, "setup"));
    assert!(
        t.contains("failed (status 255)") && t.contains("Connection refused"),
        "{t}"
    );

    // A host key that is not the one in known_hosts is refused (StrictHostKeyChecking=yes).
    std::fs::write(
        s.dir.path().join("known_hosts"),
        format!(
            "[127.0.0.1]:{} {}",
            s.port,
            std::fs::read_to_string(s.dir.path().join("client_key.pub")).unwrap()
        ),
    )
    .unwrap();
    let r = run(&s, s.guest(), &["load-unload"]);
    let t = all_text(by_name(&r, "setup"));
    assert!(
        t.contains("status 255") && t.to_lowercase().contains("host key"),
        "{t}"
    );
    // Unknown scenarios are rejected before anything runs on the guest.
    let r = run(&s, s.guest(), &["ip-tcp"]);
    assert!(all_text(by_name(&r, "setup")).contains("scenario `ip-tcp` has no guest version"));
    let _ = guest::GUEST_SCENARIOS;
}

/// No redirected connection the nc double opened is still alive.
fn open_connections(s: &Sshd) -> Vec<String> {
    let Ok(d) = std::fs::read_dir(s.state().join("open")) else {
        return Vec::new();
    };
    d.filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|pid| Path::new(&format!("/proc/{pid}")).exists())
        .collect()
}

#[test]
fn ssh_backend_non_matching_and_unload_open_on_loopback_sshd_not_macos() {
    let s = Sshd::start();
    let r = run(&s, s.guest(), &["non-matching", "unload-open"]);
    assert_eq!(r.len(), 3, "setup + 2 scenarios");
    assert!(r.iter().all(|x| x.passed), "sshd log:\n{}", s.sshd_log());
    let calls = s.calls();
    for needle in [
        "curl -sS -m 5 -o /dev/null http://198.51.100.7:80/prx-vmtest",
        "curl -sS -m 5 -o /dev/null http://203.0.113.10:80/prx-vmtest",
        "nc 203.0.113.10 80",
        "kmutil unload -b net.prx.kext.SocketFilter",
    ] {
        assert!(calls.contains(needle), "`{needle}` not called:\n{calls}");
    }
    let nm = all_text(by_name(&r, "non-matching"));
    assert!(
        nm.contains("non-matching traffic untouched: the listener received nothing from the connection to 198.51.100.7:80"),
        "{nm}"
    );
    // The control: the matching destination still reaches the listener.
    assert!(
        nm.contains(
            "PROXY v2 header: command 1 family 0x11 src 10.0.0.2:50000 dst 203.0.113.10:80"
        ),
        "{nm}"
    );
    let uo = all_text(by_name(&r, "unload-open"));
    assert!(
        uo.contains(
            "PROXY v2 header: command 1 family 0x11 src 10.0.0.2:50000 dst 203.0.113.10:80"
        ),
        "{uo}"
    );
    assert!(
        uo.contains("unload refused while the connection is open: `sudo -n kmutil unload -b net.prx.kext.SocketFilter` exited with 1")
            && uo.contains("start/stop routine failed"),
        "{uo}"
    );
    assert!(
        uo.contains("net.prx.kext.SocketFilter still loaded after the refusal"),
        "{uo}"
    );
    assert!(
        uo.contains("unload net.prx.kext.SocketFilter after the connection is closed"),
        "{uo}"
    );
    // Refused once, unloaded once; the IP filter unloaded as usual; nothing left behind.
    assert_eq!(
        calls
            .lines()
            .filter(|l| *l == "kmutil unload -b net.prx.kext.SocketFilter")
            .count(),
        // non-matching unloads it once, unload-open twice
        3,
        "{calls}"
    );
    assert!(calls.contains("kmutil unload -b net.prx.kext.IPFilter"));
    assert!(
        std::fs::read_dir(s.state().join("loaded"))
            .unwrap()
            .next()
            .is_none()
    );
    assert!(open_connections(&s).is_empty());
}

#[test]
fn ssh_backend_non_matching_redirected_is_a_failure_with_evidence_on_loopback_sshd_not_macos() {
    let s = Sshd::start();
    // The doubles misbehave: the redirect catches traffic the rule does not match.
    s.flag("redirect-all");
    let r = run(&s, s.guest(), &["non-matching"]);
    let nm = by_name(&r, "non-matching");
    assert!(!nm.passed);
    let t = all_text(nm);
    assert!(
        t.contains("FAIL non-matching traffic untouched: the connection to 198.51.100.7:80, which the rule (203.0.113.10:80 only) does not match, reached the listener: PROXY v2 header dst 198.51.100.7:80; 76 byte(s)"),
        "{t}"
    );
    assert!(
        s.calls().contains("prxctl disable")
            && s.calls()
                .contains("kmutil unload -b net.prx.kext.SocketFilter")
    );
}

#[test]
fn ssh_backend_unload_while_open_is_a_failure_with_evidence_on_loopback_sshd_not_macos() {
    let s = Sshd::start();
    // The doubles misbehave: the socket filter unloads with a redirected connection open.
    s.flag("unload-while-open");
    let r = run(&s, s.guest(), &["unload-open"]);
    let uo = by_name(&r, "unload-open");
    assert!(!uo.passed);
    let t = all_text(uo);
    assert!(
        t.contains("FAIL unload refused while the connection is open: `sudo -n kmutil unload -b net.prx.kext.SocketFilter` succeeded with a redirected connection open"),
        "{t}"
    );
    let calls = s.calls();
    // Not unloaded twice; the connection closed and the IP filter unloaded anyway.
    assert_eq!(
        calls
            .lines()
            .filter(|l| *l == "kmutil unload -b net.prx.kext.SocketFilter")
            .count(),
        1,
        "{calls}"
    );
    assert!(calls.contains("kmutil unload -b net.prx.kext.IPFilter"));
    assert!(open_connections(&s).is_empty());

    // A connection that is never redirected cannot hold the kext: the evidence says so.
    let s = Sshd::start();
    s.flag("no-redirect");
    let r = run(&s, s.guest(), &["unload-open"]);
    let t = all_text(by_name(&r, "unload-open"));
    assert!(
        t.contains(
            "FAIL listener received: nothing: the connection to 203.0.113.10:80 was not redirected"
        ) && t.contains("FAIL unload refused while the connection is open"),
        "{t}"
    );
}

/// Position of `needle` in the calls (panics with the calls when missing).
fn call_at(calls: &str, needle: &str) -> usize {
    calls
        .find(needle)
        .unwrap_or_else(|| panic!("`{needle}` not called:\n{calls}"))
}

#[test]
fn ssh_backend_ip_nat_on_loopback_sshd_not_macos() {
    let s = Sshd::start();
    // The guest's address comes from route/ipconfig, not from a constant.
    std::fs::write(s.state().join("ifaddr"), "192.168.64.5\n").unwrap();
    let g = s.guest();
    let rules = PathBuf::from(&g.work_dir).join("prx-vmtest-ip-rules.toml");
    let r = run(&s, g, &["ip-nat"]);
    assert_eq!(r.len(), 2, "setup + 1 scenario");
    assert!(r.iter().all(|x| x.passed), "sshd log:\n{}", s.sshd_log());
    let calls = s.calls();
    let order = [
        "route -n get 203.0.113.10",
        "ipconfig getifaddr en0",
        "nc -l 192.168.64.5 18080",
        "prxctl --kext ip proxy set 192.168.64.5:18080",
        "prxctl --kext ip rules load ",
        "prxctl --kext ip status",
        "curl -sS -m 5 -o /dev/null http://203.0.113.10:80/prx-vmtest",
        "prxctl --kext ip disable",
        "kmutil unload -b net.prx.kext.IPFilter",
    ];
    let at: Vec<usize> = order.iter().map(|n| call_at(&calls, n)).collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "{calls}");
    // The status is read again after the client (the counters' evidence).
    let curl = call_at(&calls, "curl -sS");
    assert!(calls[curl..].contains("prxctl --kext ip status"), "{calls}");
    // Only the IP filter is configured: the socket filter gets no proxy or rule.
    assert!(!calls.contains("prxctl proxy set"), "{calls}");
    assert!(!calls.contains("prxctl rules load"), "{calls}");
    let toml = std::fs::read_to_string(&rules).unwrap();
    assert_eq!(
        toml,
        "[[rule]]\ndst = \"203.0.113.10\"\nports = \"80\"\nprotocol = \"tcp\"\naction = \"proxy\"\n"
    );
    let t = all_text(by_name(&r, "ip-nat"));
    assert!(
        t.contains("guest address: 192.168.64.5 on en0: the proxy is 192.168.64.5:18080"),
        "{t}"
    );
    assert!(
        t.contains("listener received: 48 byte(s): GET /prx-vmtest HTTP/1.1\\r\\nHost: 203.0.113.10\\r\\n\\r\\n"),
        "{t}"
    );
    assert!(
        t.contains("IP filter counters after the client (prxctl --kext ip status): packets redirected 6, NAT flows 1"),
        "{t}"
    );
    assert!(
        std::fs::read_dir(s.state().join("loaded"))
            .unwrap()
            .next()
            .is_none()
    );
}

#[test]
fn ssh_backend_ip_nat_failures_with_evidence_on_loopback_sshd_not_macos() {
    // The redirect is missing: the listener receives nothing, the counters stay 0.
    let s = Sshd::start();
    s.flag("no-redirect");
    let r = run(&s, s.guest(), &["ip-nat"]);
    let ipn = by_name(&r, "ip-nat");
    assert!(!ipn.passed);
    let t = all_text(ipn);
    assert!(
        t.contains("FAIL listener received: nothing: the connection to 203.0.113.10:80 was not redirected to the listener at 10.0.2.15:18080"),
        "{t}"
    );
    assert!(
        t.contains("FAIL IP filter counters after the client (prxctl --kext ip status): packets redirected 0, NAT flows 0"),
        "{t}"
    );
    // Torn down and unloaded anyway.
    let calls = s.calls();
    assert!(calls.contains("prxctl --kext ip disable"), "{calls}");
    assert!(
        calls.contains("kmutil unload -b net.prx.kext.IPFilter"),
        "{calls}"
    );

    // The request arrives but the IP filter's status counts no redirected packet.
    let s = Sshd::start();
    s.flag("ip-stats-zero");
    let r = run(&s, s.guest(), &["ip-nat"]);
    let ipn = by_name(&r, "ip-nat");
    assert!(!ipn.passed);
    let t = all_text(ipn);
    assert!(
        t.contains("listener received: 48 byte(s)") && !t.contains("FAIL listener received"),
        "{t}"
    );
    assert!(
        t.contains("FAIL IP filter counters after the client (prxctl --kext ip status): packets redirected 0, NAT flows 1"),
        "{t}"
    );
    assert_eq!(ipn.failures.len(), 1, "{:?}", ipn.failures);

    // The socket filter redirected it (a rule left in it): a PROXY v2 header is a failure.
    let s = Sshd::start();
    std::fs::write(s.state().join("rule"), "203.0.113.10:80 10.0.2.15:18080\n").unwrap();
    let r = run(&s, s.guest(), &["ip-nat"]);
    let t = all_text(by_name(&r, "ip-nat"));
    assert!(
        t.contains("FAIL listener received: a PROXY v2 header (dst 203.0.113.10:80): the socket filter redirected the connection, not the IP filter"),
        "{t}"
    );
}

#[test]
fn uninstall_scenario_runs_the_uninstaller_and_checks_nothing_is_left_not_macos() {
    let s = Sshd::start();
    let r = run(&s, s.guest(), &["load-unload", "uninstall"]);
    assert_eq!(r.len(), 3);
    let u = by_name(&r, "uninstall");
    assert!(u.passed, "{}", all_text(u));
    let t = all_text(u);
    for needle in [
        "run the uninstaller",
        "net.prx.kext.SocketFilter is unloaded",
        "installed files are gone",
        "the receipt is forgotten",
    ] {
        assert!(t.contains(needle), "{needle} in {t}");
    }
    let calls = s.calls();
    let un = calls.find("uninstall.sh").expect("uninstaller called");
    assert!(
        calls[un..].contains("pkgutil --pkg-info net.prx.kext.pkg"),
        "{calls}"
    );
    // The uninstaller unloaded the kexts: the flow does not unload them again.
    assert!(!calls[un..].contains("kmutil unload"), "{calls}");

    // An uninstaller that leaves a kext loaded fails the scenario.
    let s = Sshd::start();
    std::fs::write(s.state().join("uninstall-leaves-loaded"), "").unwrap();
    let r = run(&s, s.guest(), &["uninstall"]);
    let u = by_name(&r, "uninstall");
    assert!(!u.passed);
    assert!(
        all_text(u).contains("still loaded after the uninstaller"),
        "{}",
        all_text(u)
    );

    // `uninstall` must come last.
    let s = Sshd::start();
    let r = run(&s, s.guest(), &["uninstall", "load-unload"]);
    assert!(!r[0].passed && all_text(&r[0]).contains("list it last"));
}

#[test]
fn a_different_installed_prxctl_stops_the_run_not_macos() {
    let s = Sshd::start();
    std::fs::write(s.state().join("prxctl-version"), "prxctl 0.0.9\n").unwrap();
    let r = run(&s, s.guest(), &["load-unload"]);
    assert!(!r[0].passed);
    let t = all_text(&r[0]);
    assert!(
        t.contains("installed prxctl is the built version")
            && t.contains("expected `prxctl 0.1.0`"),
        "{t}"
    );
    assert!(!r[1].passed && all_text(&r[1]).contains("not the one built"));
}
