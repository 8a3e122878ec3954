//! The guest flow, the same on every real-macOS backend once ssh answers:
//! copy the .pkg, `sudo installer`, then per scenario: load the kexts
//! (`kmutil load` on macOS 11+, `kextload` on 10.15 and older), stop with
//! instructions when macOS has not approved them, run the scenario with built-in
//! macOS tools (`nc -l` as the listener, `curl` as the client, `route` and
//! `ipconfig` for the guest's address) and `prxctl`,
//! unload, collect `log show` for the scenario's window, and look for kernel
//! panics (a new panic report, a changed `kern.boottime`, an unreachable guest).
//!
//! Every command run on the guest is built here, in one place; `sudo -n` is used
//! so that a guest without passwordless sudo for the test user fails at once with
//! sudo's message instead of hanging.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::ssh::{CmdOutput, SshError, SshTarget, sh_quote};
use crate::report::{ScenarioReport, StepReport};

/// The scenarios with a guest version. `load-unload` and `socket-connect` share
/// their names with the emulator's; `non-matching`, `unload-open` and `ip-nat`
/// are guest-only names (the emulator covers the same ground inside `sockfilter`,
/// in `load-unload`'s stop-while-busy retries and in the `nat-*` scenarios).
pub const GUEST_SCENARIOS: &[(&str, &str)] = &[
    (
        "load-unload",
        "install the .pkg, load every kext, check it is loaded, unload it, check it is gone; kext log lines and panic checks",
    ),
    (
        "socket-connect",
        "load, then the redirection shape: `nc -l` listener on the guest, `prxctl` rule redirecting 203.0.113.10:80 to it, `curl` to 203.0.113.10:80; the listener's bytes (and any PROXY v2 header) are the evidence; unload",
    ),
    (
        "non-matching",
        "load, the same listener and rule, `curl` to 198.51.100.7:80 (not matched by the rule): the listener must receive nothing; then, as a control, `curl` to 203.0.113.10:80 must reach it; unload",
    ),
    (
        "unload-open",
        "load, the same listener and rule, a redirected `nc 203.0.113.10 80` kept open; unloading PrxSocketFilter must be refused while it is open (its stop returns busy while sockets are attached) and succeed after it is closed; no panic",
    ),
    (
        "uninstall",
        "load, then `sudo /usr/local/share/prx/uninstall.sh` (the pkg's uninstaller): it must succeed, no prx kext may stay loaded, none of the installed files may remain, and `pkgutil --pkg-info net.prx.kext.pkg` must fail (receipt forgotten); runs last",
    ),
    (
        "ip-nat",
        "load, then PrxIPFilter's NAT: the guest's own IPv4 address (`route -n get 203.0.113.10`, `ipconfig getifaddr IF`) with an `nc -l` listener on it as the proxy, `prxctl --kext ip` proxy and a one-rule file (203.0.113.10, port 80, tcp), `curl` to 203.0.113.10:80 (a new flow: the IP filter translates only flows that start after the rules are loaded); the listener must receive the plain request (a PROXY v2 header would mean the socket filter redirected it) and `prxctl --kext ip status` must count packets redirected > 0 and NAT flows >= 1; `prxctl --kext ip disable`; unload",
    ),
];

/// Where `non-matching` connects: a documentation address (RFC 5737) the
/// one-rule file does not match, so nothing should answer and the listener
/// must stay silent.
pub const NON_MATCHING_DST: &str = "198.51.100.7:80";

/// The bundle id of the kext `unload-open` tries to unload with a connection open.
pub const SOCKET_FILTER_ID: &str = "net.prx.kext.SocketFilter";

/// The PROXY protocol v2 signature (12 bytes).
pub const PROXY_V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// Where the .pkg installs prxctl.
pub const DEFAULT_PRXCTL: &str = "/usr/local/bin/prxctl";
/// Where the .pkg installs its uninstaller.
pub const DEFAULT_UNINSTALLER: &str = "/usr/local/share/prx/uninstall.sh";
/// The package's receipt id.
pub const PKG_ID: &str = "net.prx.kext.pkg";
/// Installed files besides the kexts, prxctl and the uninstaller, which
/// `uninstall` checks are gone.
pub const OTHER_INSTALLED: &[&str] = &[
    "/Library/LaunchDaemons/net.prx.apply.plist",
    "/Library/Application Support/prx/prx.toml.example",
];

/// The version in a package named `prx-VERSION.pkg`, which the installed
/// `prxctl --version` must report.
pub fn pkg_version(pkg: &std::path::Path) -> Option<String> {
    let name = pkg.file_name()?.to_str()?;
    let v = name.strip_prefix("prx-")?.strip_suffix(".pkg")?;
    (!v.is_empty()).then(|| v.to_string())
}

/// The macOS directories where kernel panic reports appear.
pub const DEFAULT_PANIC_REPORT_DIRS: &[&str] = &[
    "/Library/Logs/DiagnosticReports",
    "/Library/Logs/DiagnosticReports/Retired",
];

/// A kext the .pkg installs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct GuestKext {
    pub bundle_id: String,
    /// Installed bundle path, e.g. `/Library/Extensions/PrxSocketFilter.kext`.
    pub path: String,
    /// CFBundleExecutable: the `sender` of its log lines.
    pub executable: String,
}

/// The prx kexts as the .pkg (issue 7) installs them.
pub fn default_kexts() -> Vec<GuestKext> {
    [
        ("net.prx.kext.SocketFilter", "PrxSocketFilter"),
        ("net.prx.kext.IPFilter", "PrxIPFilter"),
    ]
    .into_iter()
    .map(|(id, exe)| GuestKext {
        bundle_id: id.into(),
        path: format!("/Library/Extensions/{exe}.kext"),
        executable: exe.into(),
    })
    .collect()
}

/// What the guest flow needs.
#[derive(Debug, Clone)]
pub struct GuestConfig {
    pub pkg: PathBuf,
    pub kexts: Vec<GuestKext>,
    /// Scratch directory on the guest.
    pub work_dir: String,
    /// Limit for each ordinary command.
    pub command_timeout: Duration,
    /// Limit for copying and `installer`.
    pub install_timeout: Duration,
    pub panic_report_dirs: Vec<String>,
    /// The guest port the `nc -l` listener uses.
    pub listener_port: u16,
    /// Where `curl` connects (a documentation address: only the filter's redirect reaches anything).
    pub redirect_from: String,
    /// The installed prxctl ([`DEFAULT_PRXCTL`]).
    pub prxctl: String,
    /// The installed uninstaller ([`DEFAULT_UNINSTALLER`]).
    pub uninstaller: String,
    /// The version `prxctl --version` must report after the install
    /// ([`pkg_version`] of the package; `None`: not compared).
    pub expect_version: Option<String>,
}

impl GuestConfig {
    pub fn new(pkg: PathBuf) -> Self {
        GuestConfig {
            expect_version: pkg_version(&pkg),
            pkg,
            kexts: default_kexts(),
            work_dir: "/tmp/prx-vmtest".into(), // tidy: a path on the macOS guest
            command_timeout: Duration::from_secs(60),
            install_timeout: Duration::from_secs(600),
            panic_report_dirs: DEFAULT_PANIC_REPORT_DIRS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            listener_port: 18080,
            redirect_from: "203.0.113.10:80".into(),
            prxctl: DEFAULT_PRXCTL.into(),
            uninstaller: DEFAULT_UNINSTALLER.into(),
        }
    }
}

/// What macOS said about a load that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadRefusal {
    /// User approval missing (System Settings › Privacy & Security), or a reboot pending.
    NotApproved,
    /// Signature / SIP refused it.
    Signature,
}

/// Classifies the output of a failed `kmutil load` / `kextload`.
pub fn classify_load_failure(text: &str) -> Option<LoadRefusal> {
    let t = text.to_ascii_lowercase();
    const APPROVAL: &[&str] = &[
        "not approved",
        "needs to be approved",
        "system policy prevents loading",
        "rejected due to system policy",
        "approve",
        "reboot is required",
        "requires a reboot",
    ];
    const SIGNATURE: &[&str] = &[
        "not signed",
        "authentication failures",
        "invalid signature",
        "codesign",
        "system integrity protection",
        "kext-dev-mode",
    ];
    if APPROVAL.iter().any(|p| t.contains(p)) {
        Some(LoadRefusal::NotApproved)
    } else if SIGNATURE.iter().any(|p| t.contains(p)) {
        Some(LoadRefusal::Signature)
    } else {
        None
    }
}

/// What the user must do, once, on the guest.
pub fn refusal_instructions(r: LoadRefusal, major: u32) -> String {
    match r {
        LoadRefusal::NotApproved if major >= 11 => "macOS has not approved the kext. On the guest, once: open System Settings › Privacy & Security (System Preferences › Security & Privacy before macOS 13), click Allow for the prx kexts' developer, and reboot (macOS 11+ rebuilds the auxiliary kernel collection at reboot). On a VM snapshot, take the snapshot after that reboot. Alternatively pre-approve the Team ID from Recovery with `spctl kext-consent add TEAMID` (SIP must allow it). Then run vm-test again.".into(),
        LoadRefusal::NotApproved => "macOS has not approved the kext (User-Approved Kernel Extension Loading, 10.13+). On the guest, once: open System Preferences › Security & Privacy › General, click Allow, then load again (no reboot needed before macOS 11), or pre-approve from Recovery with `spctl kext-consent add TEAMID`. Then run vm-test again.".into(),
        LoadRefusal::Signature => "macOS refused the kext's signature. Either sign with a Developer ID certificate that has the kext entitlement (`cargo xtask package` with signing), or for test builds boot the guest's Recovery and run `csrutil disable` (or `csrutil enable --without kext`), reboot, and approve the kext. Then run vm-test again.".into(),
    }
}

/// A decoded PROXY v2 header (by `common::net::proxy_v2`, the codec the kext
/// and prxd use), described for reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyV2 {
    pub command: u8,
    pub family: u8,
    pub src: String,
    pub dst: String,
    /// The pid and process-name TLVs, if present.
    pub pid: Option<u32>,
    pub process: Option<String>,
    /// Header length in bytes (16 + address block + TLVs).
    pub len: usize,
}

/// Decodes a PROXY v2 header at the start of `b`, if there is a well-formed one.
pub fn parse_proxy_v2(b: &[u8]) -> Option<ProxyV2> {
    use common::net::proxy_v2::{self, Addresses};
    let p = proxy_v2::parse(b).ok()?;
    let show = |e: &common::net::addr::Endpoint| match e.addr {
        common::net::addr::IpAddr::V4(a) => std::net::SocketAddr::from((a, e.port)).to_string(),
        common::net::addr::IpAddr::V6(a) => std::net::SocketAddr::from((a, e.port)).to_string(),
    };
    let (src, dst) = match p.addrs {
        Addresses::Ip { src, dst } => (show(&src), show(&dst)),
        Addresses::None | Addresses::Unix => (String::from("?"), String::from("?")),
    };
    Some(ProxyV2 {
        command: b.get(12).map_or(0, |v| v & 0xF),
        family: b.get(13).copied().unwrap_or(0),
        src,
        dst,
        pid: p.pid(),
        process: p.process().map(|n| String::from_utf8_lossy(n).into_owned()),
        len: p.len,
    })
}

/// Parses `od -An -tx1 -v` output back into bytes.
pub fn parse_od(text: &str) -> Vec<u8> {
    text.split_ascii_whitespace()
        .filter_map(|h| u8::from_str_radix(h, 16).ok())
        .collect()
}

/// Bytes shown for a report: printable ASCII as is, the rest escaped.
pub fn show_bytes(b: &[u8]) -> String {
    b.iter()
        .flat_map(|&c| std::ascii::escape_default(c))
        .map(char::from)
        .collect()
}

/// Panic-report file names in an `ls -1` listing.
pub fn panic_reports(listing: &str) -> Vec<String> {
    let mut v: Vec<String> = listing
        .lines()
        .map(str::trim)
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            l.ends_with(".panic") || l.starts_with("kernel_") || l.starts_with("panic-")
        })
        .map(String::from)
        .collect();
    v.sort();
    v.dedup();
    v
}

/// The macOS major version from `sw_vers -productVersion` (10 for 10.x).
pub fn major_version(v: &str) -> Option<u32> {
    v.trim().split('.').next()?.parse().ok()
}

/// The outgoing interface in `route -n get HOST`'s answer (its `interface: en0` line).
pub fn parse_route_interface(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let v = l.trim().strip_prefix("interface:")?.trim();
        (!v.is_empty() && !v.contains(char::is_whitespace)).then(|| v.to_string())
    })
}

/// The address `ipconfig getifaddr IF` printed: one IPv4 address that another
/// host could send to (not loopback, unspecified, multicast or broadcast).
pub fn parse_ifaddr(text: &str) -> Option<std::net::Ipv4Addr> {
    let a: std::net::Ipv4Addr = text.trim().parse().ok()?;
    (!a.is_loopback() && !a.is_unspecified() && !a.is_multicast() && !a.is_broadcast()).then_some(a)
}

/// The `statistics:` list of `prxctl status` as (name, value): the value is a
/// line's last whitespace-separated field, the name the fields before it.
pub fn parse_status_counters(text: &str) -> Vec<(String, u64)> {
    text.lines()
        .skip_while(|l| l.trim() != "statistics:")
        .skip(1)
        .take_while(|l| l.starts_with(char::is_whitespace) && !l.trim().is_empty())
        .filter_map(|l| {
            let mut f: Vec<&str> = l.split_whitespace().collect();
            let v = f.pop()?.parse().ok()?;
            (!f.is_empty()).then(|| (f.join(" "), v))
        })
        .collect()
}

/// `ip-nat`'s verdict on `prxctl --kext ip status` after the client ran:
/// `packets redirected` > 0 and `NAT flows` >= 1. `Err` names what is missing.
pub fn judge_ip_counters(status: &str) -> Result<String, String> {
    let c = parse_status_counters(status);
    let get = |n: &str| c.iter().find(|(k, _)| k == n).map(|&(_, v)| v);
    match (get("packets redirected"), get("NAT flows")) {
        (Some(p), Some(f)) if p > 0 && f >= 1 => {
            Ok(format!("packets redirected {p}, NAT flows {f}"))
        }
        (Some(p), Some(f)) => Err(format!(
            "packets redirected {p}, NAT flows {f} (expected packets redirected > 0 and NAT flows >= 1: the IP filter did not translate the flow)"
        )),
        (p, f) => Err(format!(
            "no {} counter in the statistics",
            match (p, f) {
                (None, None) => "`packets redirected` or `NAT flows`",
                (None, _) => "`packets redirected`",
                _ => "`NAT flows`",
            }
        )),
    }
}

/// `ip-nat`'s verdict on the listener's bytes: the client's plain request
/// (the IP filter rewrites packets, it adds nothing); a PROXY v2 header means
/// the socket filter redirected the connection, not the IP filter.
pub fn judge_ip_listener(bytes: &[u8], redirect_from: &str, proxy: &str) -> Result<String, String> {
    let shown = || {
        format!(
            "{} byte(s): {}",
            bytes.len(),
            show_bytes(&bytes[..bytes.len().min(400)])
        )
    };
    if bytes.is_empty() {
        return Err(format!(
            "nothing: the connection to {redirect_from} was not redirected to the listener at {proxy}"
        ));
    }
    if bytes.starts_with(PROXY_V2_SIGNATURE) {
        let dst = parse_proxy_v2(bytes).map_or(String::new(), |h| format!(" (dst {})", h.dst));
        return Err(format!(
            "a PROXY v2 header{dst}: the socket filter redirected the connection, not the IP filter; {}",
            shown()
        ));
    }
    if String::from_utf8_lossy(bytes).contains("GET /prx-vmtest HTTP/1.1") {
        Ok(shown())
    } else {
        Err(format!("not the client's request: {}", shown()))
    }
}

/// The listener and rule of the redirection scenarios.
struct Redirect {
    /// Guest file with the listener's bytes.
    out: String,
    /// The listener's pid.
    pid: String,
}

struct Flow<'a> {
    t: &'a SshTarget,
    cfg: &'a GuestConfig,
    major: u32,
    boottime: String,
    panics: Vec<String>,
}

/// One report under construction.
struct Rep {
    r: ScenarioReport,
    started: Instant,
}

impl Rep {
    fn new(name: &str, kexts: &[GuestKext]) -> Rep {
        Rep {
            r: ScenarioReport {
                scenario: name.into(),
                kexts: kexts.iter().map(|k| k.bundle_id.clone()).collect(),
                passed: false,
                failures: Vec::new(),
                steps: Vec::new(),
                violations: Vec::new(),
                log: Vec::new(),
                fault: None,
                duration: Duration::ZERO,
                stderr: String::new(),
            },
            started: Instant::now(),
        }
    }
    fn step(&mut self, what: impl Into<String>, ok: bool, detail: impl Into<String>) -> bool {
        let (what, detail) = (what.into(), detail.into());
        if !ok {
            self.r.failures.push(format!("{what}: {detail}"));
        }
        crate::progress::emit(crate::progress::Event::Step {
            scenario: self.r.scenario.clone(),
            what: what.clone(),
            ok,
            elapsed: self.started.elapsed(),
        });
        self.r.steps.push(StepReport { what, ok, detail });
        ok
    }
    fn fail(&mut self, f: impl Into<String>) {
        self.r.failures.push(f.into());
    }
    fn finish(mut self) -> ScenarioReport {
        self.r.passed = self.r.failures.is_empty();
        self.r.duration = self.started.elapsed();
        crate::progress::emit(crate::progress::Event::Finished {
            scenario: self.r.scenario.clone(),
            passed: self.r.passed,
            elapsed: self.r.duration,
        });
        self.r
    }
}

fn not_run(name: &str, kexts: &[GuestKext], why: &str) -> ScenarioReport {
    let mut r = Rep::new(name, kexts);
    r.fail(format!("not run: {why}"));
    r.finish()
}

impl Flow<'_> {
    /// `sudo -n` and the installed prxctl.
    fn prxctl(&self) -> String {
        format!("sudo -n {}", sh_quote(&self.cfg.prxctl))
    }

    fn run(&self, cmd: &str) -> Result<CmdOutput, SshError> {
        self.t.run(cmd, self.cfg.command_timeout)
    }

    /// Runs `cmd` as a step; the output on success, `None` (and a failed step) otherwise.
    fn step_run(
        &self,
        rep: &mut Rep,
        what: &str,
        cmd: &str,
        timeout: Duration,
    ) -> Option<CmdOutput> {
        match self.t.run(cmd, timeout) {
            Ok(o) if o.ok() => {
                rep.step(what, true, format!("`{cmd}`: {}", o.text()));
                Some(o)
            }
            Ok(o) => {
                rep.step(
                    what,
                    false,
                    format!("`{cmd}` exited with {}: {}", o.status, o.text()),
                );
                None
            }
            Err(e) => {
                rep.step(what, false, e.to_string());
                None
            }
        }
    }

    fn list_panics(&self) -> Result<Vec<String>, SshError> {
        let dirs: Vec<String> = self
            .cfg
            .panic_report_dirs
            .iter()
            .map(|d| sh_quote(d))
            .collect();
        let o = self.run(&format!("ls -1 {} 2>/dev/null; true", dirs.join(" ")))?;
        Ok(panic_reports(&o.stdout))
    }

    fn boottime(&self) -> Result<String, SshError> {
        Ok(self
            .run("sysctl -n kern.boottime")?
            .stdout
            .trim()
            .to_string())
    }

    fn load_cmd(&self, k: &GuestKext) -> String {
        if self.major >= 11 {
            format!("sudo -n kmutil load -p {}", sh_quote(&k.path))
        } else {
            format!("sudo -n kextload {}", sh_quote(&k.path))
        }
    }
    fn unload_cmd(&self, k: &GuestKext) -> String {
        if self.major >= 11 {
            format!("sudo -n kmutil unload -b {}", sh_quote(&k.bundle_id))
        } else {
            format!("sudo -n kextunload -b {}", sh_quote(&k.bundle_id))
        }
    }
    fn loaded_cmd(&self, k: &GuestKext) -> String {
        if self.major >= 11 {
            format!(
                "kmutil showloaded --list-only --bundle-identifier {}",
                sh_quote(&k.bundle_id)
            )
        } else {
            format!("kextstat -l -b {}", sh_quote(&k.bundle_id))
        }
    }

    fn is_loaded(&self, k: &GuestKext) -> Result<bool, SshError> {
        let o = self.run(&self.loaded_cmd(k))?;
        Ok(o.stdout
            .lines()
            .any(|l| l.split_whitespace().any(|w| w == k.bundle_id)))
    }

    /// Loads every kext; `Err(instructions)` when macOS refused one (stop everything).
    fn load_all(&self, rep: &mut Rep, loaded: &mut Vec<GuestKext>) -> Result<bool, String> {
        for k in &self.cfg.kexts {
            let cmd = self.load_cmd(k);
            match self.run(&cmd) {
                Ok(o) if o.ok() => {
                    rep.step(
                        format!("load {}", k.bundle_id),
                        true,
                        format!("`{cmd}`: {}", o.text()),
                    );
                }
                Ok(o) => {
                    let text = o.text();
                    rep.step(
                        format!("load {}", k.bundle_id),
                        false,
                        format!("`{cmd}` exited with {}: {text}", o.status),
                    );
                    if let Some(r) = classify_load_failure(&text) {
                        let how = refusal_instructions(r, self.major);
                        rep.fail(how.clone());
                        return Err(how);
                    }
                    return Ok(false);
                }
                Err(e) => {
                    rep.step(format!("load {}", k.bundle_id), false, e.to_string());
                    return Ok(false);
                }
            }
            loaded.push(k.clone());
            match self.is_loaded(k) {
                Ok(true) => rep.step(
                    format!("{} is loaded", k.bundle_id),
                    true,
                    format!("`{}` lists it", self.loaded_cmd(k)),
                ),
                Ok(false) => rep.step(
                    format!("{} is loaded", k.bundle_id),
                    false,
                    format!(
                        "`{}` does not list it after a successful load",
                        self.loaded_cmd(k)
                    ),
                ),
                Err(e) => rep.step(format!("{} is loaded", k.bundle_id), false, e.to_string()),
            };
        }
        Ok(rep.r.failures.is_empty())
    }

    fn unload_all(&self, rep: &mut Rep, loaded: &[GuestKext]) {
        for k in loaded.iter().rev() {
            let cmd = self.unload_cmd(k);
            if self
                .step_run(
                    rep,
                    &format!("unload {}", k.bundle_id),
                    &cmd,
                    self.cfg.command_timeout,
                )
                .is_some()
            {
                match self.is_loaded(k) {
                    Ok(false) => {
                        rep.step(format!("{} is gone", k.bundle_id), true, "no longer listed")
                    }
                    Ok(true) => rep.step(
                        format!("{} is gone", k.bundle_id),
                        false,
                        "still listed after a successful unload",
                    ),
                    Err(e) => rep.step(format!("{} is gone", k.bundle_id), false, e.to_string()),
                };
            }
        }
    }

    fn collect_log(&self, rep: &mut Rep, since: &str) {
        let pred: Vec<String> = self
            .cfg
            .kexts
            .iter()
            .map(|k| format!("sender == \"{}\"", k.executable))
            .collect();
        let cmd = format!(
            "log show --style syslog --start {} --predicate {}",
            sh_quote(since),
            sh_quote(&pred.join(" OR "))
        );
        match self.run(&cmd) {
            Ok(o) if o.ok() => {
                rep.r.log = o
                    .stdout
                    .lines()
                    .filter(|l| {
                        !l.trim().is_empty()
                            && !l.starts_with("Timestamp")
                            && !l.starts_with("Filtering the log data")
                    })
                    .map(String::from)
                    .collect();
                rep.step(
                    "collect kext log",
                    true,
                    format!("`{cmd}`: {} line(s)", rep.r.log.len()),
                );
            }
            Ok(o) => {
                rep.step(
                    "collect kext log",
                    false,
                    format!("`{cmd}` exited with {}: {}", o.status, o.text()),
                );
            }
            Err(e) => {
                rep.step("collect kext log", false, e.to_string());
            }
        }
    }

    /// New panic reports or a changed boot time: the kernel panicked (or the guest rebooted).
    fn check_panic(&mut self, rep: &mut Rep) -> bool {
        let bt = match self.boottime() {
            Ok(b) => b,
            Err(e) => {
                rep.step("kernel panic check", false, format!("the guest no longer answers ({e}): it probably panicked or rebooted; see the serial console / VM log"));
                return false;
            }
        };
        let mut ok = true;
        if bt != self.boottime {
            ok &= rep.step(
                "kernel panic check: boot time",
                false,
                format!("kern.boottime changed from `{}` to `{bt}`: the guest rebooted unexpectedly, probably a kernel panic", self.boottime),
            );
            self.boottime = bt;
        } else {
            rep.step(
                "kernel panic check: boot time",
                true,
                format!("unchanged: {bt}"),
            );
        }
        match self.list_panics() {
            Ok(now) => {
                let new: Vec<&String> = now.iter().filter(|p| !self.panics.contains(p)).collect();
                if new.is_empty() {
                    rep.step(
                        "kernel panic check: panic reports",
                        true,
                        "no new panic report",
                    );
                } else {
                    let mut detail = format!(
                        "new kernel panic report(s): {}",
                        new.iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                    if let Some(first) = new.first() {
                        for d in &self.cfg.panic_report_dirs {
                            let p = format!("{d}/{first}");
                            if let Ok(o) =
                                self.run(&format!("test -f {0} && head -c 2000 {0}", sh_quote(&p)))
                                && o.ok()
                            {
                                detail.push_str(&format!("\n{p}:\n{}", o.stdout.trim_end()));
                                break;
                            }
                        }
                    }
                    ok &= rep.step("kernel panic check: panic reports", false, detail);
                    self.panics = now;
                }
            }
            Err(e) => ok &= rep.step("kernel panic check: panic reports", false, e.to_string()),
        }
        ok
    }

    /// Starts the `nc -l` listener and loads the one-rule redirect through
    /// prxctl. `None` (with failed steps) when either did not work; the
    /// listener is then already stopped.
    fn redirect_setup(&self, rep: &mut Rep) -> Option<Redirect> {
        let w = &self.cfg.work_dir;
        let port = self.cfg.listener_port;
        let r = self.start_listener(rep, "127.0.0.1")?;
        // prxctl's real interface: the listener is the proxy, and a one-rule file
        // sends the test destination to it with a PROXY v2 header.
        let (dst_host, dst_port) = self
            .cfg
            .redirect_from
            .rsplit_once(':')
            .unwrap_or((self.cfg.redirect_from.as_str(), "80"));
        let rules = format!("{w}/prx-vmtest-rules.toml");
        let setup = format!(
            "{x} proxy set 127.0.0.1:{port} && printf '[[rule]]\\ndst = \"%s\"\\nports = \"%s\"\\naction = \"proxy-v2\"\\n' {} {} > {r} && {x} rules load {r} && {x} enable",
            sh_quote(dst_host),
            sh_quote(dst_port),
            r = sh_quote(&rules),
            x = self.prxctl()
        );
        if self
            .step_run(
                rep,
                "set proxy and load redirect rule (prxctl)",
                &setup,
                self.cfg.command_timeout,
            )
            .is_none()
        {
            self.stop_listener(&r);
            return None;
        }
        let _ = self.step_run(
            rep,
            "status (prxctl)",
            &format!("{} status", self.prxctl()),
            self.cfg.command_timeout,
        );
        Some(r)
    }

    /// Starts `nc -l BIND PORT` in the background, recording what it receives.
    fn start_listener(&self, rep: &mut Rep, bind: &str) -> Option<Redirect> {
        let w = &self.cfg.work_dir;
        let port = self.cfg.listener_port;
        let out = format!("{w}/listener-{port}.bin");
        let listen = format!(
            "rm -f {o}; nohup nc -l {b} {port} > {o} 2> {o}.err < /dev/null & echo $!",
            o = sh_quote(&out),
            b = sh_quote(bind)
        );
        let o = self.step_run(
            rep,
            "start listener (nc -l)",
            &listen,
            self.cfg.command_timeout,
        )?;
        Some(Redirect {
            out,
            pid: o.stdout.trim().to_string(),
        })
    }

    /// `prxctl disable`, then stop the listener.
    fn redirect_teardown(&self, rep: &mut Rep, r: &Redirect) {
        let _ = self.step_run(
            rep,
            "disable redirection (prxctl)",
            &format!("{} disable", self.prxctl()),
            self.cfg.command_timeout,
        );
        self.stop_listener(r);
    }

    fn stop_listener(&self, r: &Redirect) {
        if !r.pid.is_empty() {
            let _ = self.run(&format!("kill {} 2>/dev/null; true", sh_quote(&r.pid)));
        }
    }

    /// `curl` to `dst`; its own status is evidence only: with a listener that
    /// never answers it times out (28), and an unredirected documentation
    /// address answers nothing.
    fn curl(&self, rep: &mut Rep, what: &str, dst: &str) {
        let url = format!("http://{dst}/prx-vmtest");
        let curl = format!(
            "curl -sS -m 5 -o /dev/null {} ; echo curl-exit=$?",
            sh_quote(&url)
        );
        let _ = self.step_run(rep, what, &curl, self.cfg.command_timeout);
    }

    /// What the listener has received so far (after giving it a moment to write).
    fn listener_bytes(&self, r: &Redirect) -> Result<Vec<u8>, SshError> {
        let o = self.run(&format!(
            "sleep 1; od -An -tx1 -v {} 2>/dev/null; true",
            sh_quote(&r.out)
        ))?;
        Ok(parse_od(&o.stdout))
    }

    /// `socket-connect`: listener, rule, client, evidence.
    fn redirection(&self, rep: &mut Rep) {
        let Some(r) = self.redirect_setup(rep) else {
            return;
        };
        self.curl(rep, "client (curl)", &self.cfg.redirect_from);
        match self.listener_bytes(&r) {
            Ok(b) => self.judge_listener(rep, &b),
            Err(e) => {
                rep.step("listener received", false, e.to_string());
            }
        }
        self.redirect_teardown(rep, &r);
    }

    /// `non-matching`: with the rule loaded, a connection the rule does not
    /// match must not reach the listener; a matching one afterwards must (the
    /// control: without it a filter that redirects nothing would pass).
    fn non_matching(&self, rep: &mut Rep) {
        let Some(r) = self.redirect_setup(rep) else {
            return;
        };
        self.curl(
            rep,
            "client to a non-matching destination (curl)",
            NON_MATCHING_DST,
        );
        match self.listener_bytes(&r) {
            Ok(b) if b.is_empty() => {
                rep.step(
                    "non-matching traffic untouched",
                    true,
                    format!(
                        "the listener received nothing from the connection to {NON_MATCHING_DST}"
                    ),
                );
                self.curl(
                    rep,
                    "control: client to the matching destination (curl)",
                    &self.cfg.redirect_from,
                );
                match self.listener_bytes(&r) {
                    Ok(b) => self.judge_listener(rep, &b),
                    Err(e) => {
                        rep.step("listener received", false, e.to_string());
                    }
                }
            }
            Ok(b) => {
                let header = match parse_proxy_v2(&b) {
                    Some(h) => format!("PROXY v2 header dst {}; ", h.dst),
                    None => String::new(),
                };
                rep.step(
                    "non-matching traffic untouched",
                    false,
                    format!(
                        "the connection to {NON_MATCHING_DST}, which the rule ({} only) does not match, reached the listener: {header}{} byte(s): {}",
                        self.cfg.redirect_from,
                        b.len(),
                        show_bytes(&b[..b.len().min(400)])
                    ),
                );
            }
            Err(e) => {
                rep.step("non-matching traffic untouched", false, e.to_string());
            }
        }
        self.redirect_teardown(rep, &r);
    }

    /// `ip-nat`: PrxIPFilter rewrites the destination of the client's packets
    /// to the proxy, so the proxy must be an address those packets can reach:
    /// the guest's own address on the interface towards the test destination,
    /// with the listener bound to it. Only flows that start after the rules are
    /// loaded are translated (TCP: on a SYN); `curl` opens a new one.
    fn ip_nat(&self, rep: &mut Rep) {
        let (host, port) = self
            .cfg
            .redirect_from
            .rsplit_once(':')
            .unwrap_or((self.cfg.redirect_from.as_str(), "80"));
        let route = format!("route -n get {}", sh_quote(host));
        let Some(o) = self.step_run(
            rep,
            "route to the test destination",
            &route,
            self.cfg.command_timeout,
        ) else {
            return;
        };
        let Some(ifname) = parse_route_interface(&o.stdout) else {
            rep.step(
                "outgoing interface",
                false,
                format!("no `interface:` line in `{route}`'s answer: {}", o.text()),
            );
            return;
        };
        let getaddr = format!("ipconfig getifaddr {}", sh_quote(&ifname));
        let Some(o) = self.step_run(
            rep,
            "guest address (ipconfig getifaddr)",
            &getaddr,
            self.cfg.command_timeout,
        ) else {
            return;
        };
        let Some(addr) = parse_ifaddr(&o.stdout) else {
            rep.step(
                "guest address",
                false,
                format!(
                    "`{getaddr}` gave no usable IPv4 address (loopback, unspecified and multicast are not): {}",
                    o.text()
                ),
            );
            return;
        };
        let lport = self.cfg.listener_port;
        let proxy = format!("{addr}:{lport}");
        rep.step(
            "guest address",
            true,
            format!("{addr} on {ifname}: the proxy is {proxy}"),
        );
        let Some(r) = self.start_listener(rep, &addr.to_string()) else {
            return;
        };
        let rules = format!("{}/prx-vmtest-ip-rules.toml", self.cfg.work_dir);
        let setup = format!(
            "{x} --kext ip proxy set {p} && printf '[[rule]]\\ndst = \"%s\"\\nports = \"%s\"\\nprotocol = \"tcp\"\\naction = \"proxy\"\\n' {} {} > {r} && {x} --kext ip rules load {r} && {x} --kext ip enable",
            sh_quote(host),
            sh_quote(port),
            p = sh_quote(&proxy),
            r = sh_quote(&rules),
            x = self.prxctl()
        );
        if self
            .step_run(
                rep,
                "set proxy and load NAT rule (prxctl --kext ip)",
                &setup,
                self.cfg.command_timeout,
            )
            .is_none()
        {
            self.stop_listener(&r);
            return;
        }
        let status = &format!("{} --kext ip status", self.prxctl());
        let _ = self.step_run(
            rep,
            "status before (prxctl --kext ip)",
            status,
            self.cfg.command_timeout,
        );
        self.curl(rep, "client, a new flow (curl)", &self.cfg.redirect_from);
        match self.listener_bytes(&r) {
            Ok(b) => {
                let v = judge_ip_listener(&b, &self.cfg.redirect_from, &proxy);
                let ok = v.is_ok();
                rep.step("listener received", ok, v.unwrap_or_else(|e| e));
            }
            Err(e) => {
                rep.step("listener received", false, e.to_string());
            }
        }
        match self.run(status) {
            Ok(o) if o.ok() => {
                let v = judge_ip_counters(&o.stdout);
                let ok = v.is_ok();
                let d = v.unwrap_or_else(|e| e);
                rep.step(
                    "IP filter counters after the client (prxctl --kext ip status)",
                    ok,
                    format!("{d}; `{status}`: {}", o.text()),
                );
            }
            Ok(o) => {
                rep.step(
                    "IP filter counters after the client (prxctl --kext ip status)",
                    false,
                    format!("`{status}` exited with {}: {}", o.status, o.text()),
                );
            }
            Err(e) => {
                rep.step(
                    "IP filter counters after the client (prxctl --kext ip status)",
                    false,
                    e.to_string(),
                );
            }
        }
        let _ = self.step_run(
            rep,
            "disable NAT (prxctl --kext ip)",
            &format!("{} --kext ip disable", self.prxctl()),
            self.cfg.command_timeout,
        );
        self.stop_listener(&r);
    }

    /// `unload-open`: a redirected connection held open, then unloading the
    /// socket filter. Expected (prx's stop returns busy while sockets are
    /// attached): refused while open, success once closed. Returns whether the
    /// socket-filter kext was unloaded here (the caller then skips it).
    fn unload_open(&mut self, rep: &mut Rep) -> bool {
        let Some(k) = self
            .cfg
            .kexts
            .iter()
            .find(|k| k.bundle_id == SOCKET_FILTER_ID)
            .cloned()
        else {
            rep.fail(format!("no kext {SOCKET_FILTER_ID} in the configuration"));
            return false;
        };
        let Some(r) = self.redirect_setup(rep) else {
            return false;
        };
        let w = &self.cfg.work_dir;
        let (host, port) = self
            .cfg
            .redirect_from
            .rsplit_once(':')
            .unwrap_or((self.cfg.redirect_from.as_str(), "80"));
        let writer_pid = format!("{w}/open-writer.pid");
        let client_out = format!("{w}/open-client.out");
        // The writer sends the request and then keeps nc's stdin open (its pid
        // is recorded; `exec sleep` keeps it), so the connection stays up; $! is nc's pid.
        let open = format!(
            "rm -f {wp}; nohup sh -c 'echo $$ > \"$1\"; printf \"GET /prx-vmtest HTTP/1.1\\r\\nHost: %s\\r\\n\\r\\n\" \"$2\"; exec sleep 600' sh {wp} {h} < /dev/null 2>/dev/null | nohup nc {h} {p} > {co} 2>&1 & echo $!",
            wp = sh_quote(&writer_pid),
            h = sh_quote(host),
            p = sh_quote(port),
            co = sh_quote(&client_out)
        );
        let nc_pid = self
            .step_run(
                rep,
                "open a redirected connection and keep it open (sleep | nc)",
                &open,
                self.cfg.command_timeout,
            )
            .map(|o| o.stdout.trim().to_string())
            .unwrap_or_default();
        let close = format!(
            "kill {} $(cat {} 2>/dev/null) 2>/dev/null; sleep 1; true",
            sh_quote(&nc_pid),
            sh_quote(&writer_pid)
        );
        match self.listener_bytes(&r) {
            Ok(b) => self.judge_listener(rep, &b),
            Err(e) => {
                rep.step("listener received", false, e.to_string());
            }
        }
        if !nc_pid.is_empty() {
            let _ = self.step_run(
                rep,
                "the connection is still open",
                &format!("kill -0 {}", sh_quote(&nc_pid)),
                self.cfg.command_timeout,
            );
        }
        let cmd = self.unload_cmd(&k);
        let mut unloaded = false;
        match self.run(&cmd) {
            Ok(o) if o.ok() => {
                unloaded = true;
                rep.step(
                    "unload refused while the connection is open",
                    false,
                    format!("`{cmd}` succeeded with a redirected connection open (expected a refusal: PrxSocketFilter's stop returns busy while sockets are attached): {}", o.text()),
                );
            }
            Ok(o) => {
                rep.step(
                    "unload refused while the connection is open",
                    true,
                    format!("`{cmd}` exited with {}: {}", o.status, o.text()),
                );
                match self.is_loaded(&k) {
                    Ok(true) => rep.step(
                        format!("{} still loaded after the refusal", k.bundle_id),
                        true,
                        format!("`{}` lists it", self.loaded_cmd(&k)),
                    ),
                    Ok(false) => rep.step(
                        format!("{} still loaded after the refusal", k.bundle_id),
                        false,
                        "no longer listed although the unload was refused",
                    ),
                    Err(e) => rep.step(
                        format!("{} still loaded after the refusal", k.bundle_id),
                        false,
                        e.to_string(),
                    ),
                };
            }
            Err(e) => {
                rep.step(
                    "unload refused while the connection is open",
                    false,
                    e.to_string(),
                );
            }
        }
        // The refused stop is the risky moment: look for a panic before going on.
        self.check_panic(rep);
        let _ = self.step_run(
            rep,
            "close the connection",
            &close,
            self.cfg.command_timeout,
        );
        self.redirect_teardown(rep, &r);
        if !unloaded
            && self
                .step_run(
                    rep,
                    &format!("unload {} after the connection is closed", k.bundle_id),
                    &cmd,
                    self.cfg.command_timeout,
                )
                .is_some()
        {
            unloaded = true;
            match self.is_loaded(&k) {
                Ok(false) => rep.step(format!("{} is gone", k.bundle_id), true, "no longer listed"),
                Ok(true) => rep.step(
                    format!("{} is gone", k.bundle_id),
                    false,
                    "still listed after a successful unload",
                ),
                Err(e) => rep.step(format!("{} is gone", k.bundle_id), false, e.to_string()),
            };
        }
        unloaded
    }

    fn judge_listener(&self, rep: &mut Rep, bytes: &[u8]) {
        if bytes.is_empty() {
            rep.step(
                "listener received",
                false,
                format!(
                    "nothing: the connection to {} was not redirected to the listener",
                    self.cfg.redirect_from
                ),
            );
            return;
        }
        let (body, header) = match parse_proxy_v2(bytes) {
            Some(h) => (bytes.get(h.len..).unwrap_or_default(), Some(h)),
            None => (bytes, None),
        };
        match &header {
            Some(h) => {
                let ok = h.dst == self.cfg.redirect_from;
                rep.step(
                    "PROXY v2 header",
                    ok,
                    format!(
                        "command {} family {:#04x} src {} dst {}{}",
                        h.command,
                        h.family,
                        h.src,
                        h.dst,
                        if ok {
                            String::new()
                        } else {
                            format!(" (expected dst {})", self.cfg.redirect_from)
                        }
                    ),
                );
            }
            None => {
                rep.step(
                    "PROXY v2 header",
                    true,
                    "none (the bytes start with the client's request)",
                );
            }
        }
        let text = String::from_utf8_lossy(body);
        rep.step(
            "listener received",
            text.contains("GET /prx-vmtest HTTP/1.1"),
            format!(
                "{} byte(s): {}",
                bytes.len(),
                show_bytes(&bytes[..bytes.len().min(400)])
            ),
        );
    }

    /// `uninstall`: the pkg's uninstaller, then nothing of prx may remain:
    /// no kext loaded, no installed file, no receipt.
    fn uninstall(&self, rep: &mut Rep) {
        let cmd = format!("sudo -n {}", sh_quote(&self.cfg.uninstaller));
        if self
            .step_run(rep, "run the uninstaller", &cmd, self.cfg.install_timeout)
            .is_none()
        {
            return;
        }
        for k in &self.cfg.kexts {
            match self.is_loaded(k) {
                Ok(false) => rep.step(
                    format!("{} is unloaded", k.bundle_id),
                    true,
                    format!("`{}` does not list it", self.loaded_cmd(k)),
                ),
                Ok(true) => rep.step(
                    format!("{} is unloaded", k.bundle_id),
                    false,
                    "still loaded after the uninstaller",
                ),
                Err(e) => rep.step(format!("{} is unloaded", k.bundle_id), false, e.to_string()),
            };
        }
        let mut paths: Vec<String> = self.cfg.kexts.iter().map(|k| k.path.clone()).collect();
        paths.push(self.cfg.prxctl.clone());
        paths.push(self.cfg.uninstaller.clone());
        paths.extend(OTHER_INSTALLED.iter().map(|p| p.to_string()));
        let quoted: Vec<String> = paths.iter().map(|p| sh_quote(p)).collect();
        let cmd = format!(
            "for p in {}; do [ -e \"$p\" ] && echo \"$p\"; done; true",
            quoted.join(" ")
        );
        match self.run(&cmd) {
            Ok(o) if o.ok() => {
                let left = o.stdout.trim();
                rep.step(
                    "installed files are gone",
                    left.is_empty(),
                    if left.is_empty() {
                        format!("none of {} remains", paths.join(", "))
                    } else {
                        format!("still there: {}", left.replace('\n', ", "))
                    },
                );
            }
            Ok(o) => {
                rep.step(
                    "installed files are gone",
                    false,
                    format!("`{cmd}` exited with {}: {}", o.status, o.text()),
                );
            }
            Err(e) => {
                rep.step("installed files are gone", false, e.to_string());
            }
        }
        let cmd = format!("pkgutil --pkg-info {PKG_ID}");
        match self.run(&cmd) {
            Ok(o) => rep.step(
                "the receipt is forgotten",
                !o.ok(),
                format!("`{cmd}` exited with {}: {}", o.status, o.text()),
            ),
            Err(e) => rep.step("the receipt is forgotten", false, e.to_string()),
        };
    }

    fn scenario(&mut self, name: &str) -> (ScenarioReport, Option<String>) {
        let mut rep = Rep::new(name, &self.cfg.kexts);
        let since = match self.run("date '+%Y-%m-%d %H:%M:%S'") {
            Ok(o) if o.ok() => o.stdout.trim().to_string(),
            Ok(o) => {
                rep.step(
                    "guest clock",
                    false,
                    format!("`date` exited with {}: {}", o.status, o.text()),
                );
                return (rep.finish(), None);
            }
            Err(e) => {
                rep.step("guest clock", false, e.to_string());
                return (rep.finish(), None);
            }
        };
        let mut loaded = Vec::new();
        let refused = match self.load_all(&mut rep, &mut loaded) {
            Err(how) => Some(how),
            Ok(true) => {
                match name {
                    "socket-connect" => self.redirection(&mut rep),
                    "non-matching" => self.non_matching(&mut rep),
                    "ip-nat" => self.ip_nat(&mut rep),
                    "uninstall" => {
                        // The uninstaller unloads the kexts itself.
                        self.uninstall(&mut rep);
                        loaded.clear();
                    }
                    "unload-open" => {
                        // Unloaded there (after the connection closed): not again below.
                        let unloaded = self.unload_open(&mut rep);
                        if unloaded {
                            loaded.retain(|k| k.bundle_id != SOCKET_FILTER_ID);
                        }
                    }
                    _ => {}
                }
                None
            }
            Ok(false) => None,
        };
        self.unload_all(&mut rep, &loaded);
        self.collect_log(&mut rep, &since);
        self.check_panic(&mut rep);
        (rep.finish(), refused)
    }
}

/// Runs the guest flow against `t`. Returns a `setup` report followed by one
/// report per scenario; nothing is left out: scenarios that could not run are
/// failed reports saying why.
pub fn run(t: &SshTarget, cfg: &GuestConfig, scenarios: &[String]) -> Vec<ScenarioReport> {
    let mut setup = Rep::new("setup", &cfg.kexts);
    let mut flow = Flow {
        t,
        cfg,
        major: 0,
        boottime: String::new(),
        panics: Vec::new(),
    };
    let mut reports = Vec::new();
    let fail_all = |setup: Rep, why: &str| {
        let mut v = vec![setup.finish()];
        v.extend(scenarios.iter().map(|s| not_run(s, &cfg.kexts, why)));
        v
    };
    for s in scenarios {
        if !GUEST_SCENARIOS.iter().any(|(n, _)| n == s) {
            let names: Vec<&str> = GUEST_SCENARIOS.iter().map(|(n, _)| *n).collect();
            setup.fail(format!(
                "scenario `{s}` has no guest version (guest scenarios: {})",
                names.join(", ")
            ));
        }
    }
    if let Some(i) = scenarios.iter().position(|s| s == "uninstall")
        && i + 1 != scenarios.len()
    {
        setup.fail("`uninstall` removes prx: list it last".to_string());
    }
    if !setup.r.failures.is_empty() {
        return fail_all(setup, "unknown scenario or order");
    }
    let Some(v) = flow.step_run(
        &mut setup,
        "guest macOS version",
        "sw_vers -productVersion",
        cfg.command_timeout,
    ) else {
        return fail_all(setup, "the guest could not be reached");
    };
    match major_version(&v.stdout) {
        Some(m) => flow.major = m,
        None => {
            setup.fail(format!(
                "cannot read a macOS version from `{}`",
                v.stdout.trim()
            ));
            return fail_all(setup, "not a macOS guest");
        }
    }
    match (flow.boottime(), flow.list_panics()) {
        (Ok(b), Ok(p)) => {
            setup.step(
                "boot time and panic reports before the run",
                true,
                format!("kern.boottime `{b}`; {} existing panic report(s)", p.len()),
            );
            flow.boottime = b;
            flow.panics = p;
        }
        (Err(e), _) | (_, Err(e)) => {
            setup.step(
                "boot time and panic reports before the run",
                false,
                e.to_string(),
            );
            return fail_all(setup, "the guest could not be inspected");
        }
    }
    let name = cfg
        .pkg
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "prx.pkg".into());
    let remote_pkg = format!("{}/{name}", cfg.work_dir);
    if flow
        .step_run(
            &mut setup,
            "guest work directory",
            &format!("mkdir -p {}", sh_quote(&cfg.work_dir)),
            cfg.command_timeout,
        )
        .is_none()
    {
        return fail_all(setup, "setup failed");
    }
    match t.copy_to(&cfg.pkg, &remote_pkg, cfg.install_timeout) {
        Ok(()) => setup.step(
            "copy the package",
            true,
            format!("{} -> {remote_pkg}", cfg.pkg.display()),
        ),
        Err(e) => {
            setup.step("copy the package", false, e.to_string());
            return fail_all(setup, "the package could not be copied");
        }
    };
    let install = format!("sudo -n installer -pkg {} -target /", sh_quote(&remote_pkg));
    if flow
        .step_run(
            &mut setup,
            "install the package",
            &install,
            cfg.install_timeout,
        )
        .is_none()
    {
        return fail_all(setup, "the package did not install");
    }
    // The installed prxctl is the one the package carries.
    let cmd = format!("{} --version", sh_quote(&cfg.prxctl));
    match (flow.run(&cmd), &cfg.expect_version) {
        (Ok(o), Some(v)) if o.ok() => {
            let want = format!("prxctl {v}");
            setup.step(
                "installed prxctl is the built version",
                o.stdout.trim() == want,
                format!("`{cmd}`: {} (expected `{want}`)", o.stdout.trim()),
            );
        }
        (Ok(o), None) if o.ok() => {
            setup.step(
                "installed prxctl answers",
                true,
                format!(
                    "`{cmd}`: {} (the package name has no version to compare)",
                    o.stdout.trim()
                ),
            );
        }
        (Ok(o), _) => {
            setup.step(
                "installed prxctl is the built version",
                false,
                format!("`{cmd}` exited with {}: {}", o.status, o.text()),
            );
        }
        (Err(e), _) => {
            setup.step(
                "installed prxctl is the built version",
                false,
                e.to_string(),
            );
        }
    }
    if !setup.r.failures.is_empty() {
        return fail_all(setup, "the installed prxctl is not the one built");
    }
    reports.push(setup.finish());
    let mut stop: Option<String> = None;
    for s in scenarios {
        if let Some(why) = &stop {
            reports.push(not_run(s, &cfg.kexts, why));
            continue;
        }
        let (r, refused) = flow.scenario(s);
        if refused.is_some() {
            stop = Some(format!(
                "macOS refused to load the kexts in `{s}`; see its instructions"
            ));
        }
        reports.push(r);
    }
    reports
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_refusals_are_classified() {
        assert_eq!(
            classify_load_failure(
                "Error Domain=KMErrorDomain Code=27 \"Extension with identifier net.prx.kext.SocketFilter is not approved to load\""
            ),
            Some(LoadRefusal::NotApproved)
        );
        assert_eq!(
            classify_load_failure(
                "/Library/Extensions/X.kext failed to load - (libkern/kext) system policy prevents loading; check the system/kernel logs"
            ),
            Some(LoadRefusal::NotApproved)
        );
        assert_eq!(
            classify_load_failure("Authentication Failures: File owner/permissions are incorrect"),
            Some(LoadRefusal::Signature)
        );
        assert_eq!(classify_load_failure("(libkern/kext) link error"), None);
        assert!(refusal_instructions(LoadRefusal::NotApproved, 13).contains("reboot"));
    }

    #[test]
    fn proxy_v2_headers_are_decoded() {
        let mut b = PROXY_V2_SIGNATURE.to_vec();
        b.extend([
            0x21, 0x11, 0, 12, 10, 0, 0, 2, 203, 0, 113, 10, 0xC3, 0x50, 0, 80,
        ]);
        b.extend(b"GET / HTTP/1.1\r\n");
        let h = parse_proxy_v2(&b).unwrap();
        assert_eq!((h.command, h.family, h.len), (1, 0x11, 28));
        assert_eq!(h.src, "10.0.0.2:50000");
        assert_eq!(h.dst, "203.0.113.10:80");
        assert!(parse_proxy_v2(b"GET / HTTP/1.1").is_none());
        assert_eq!(parse_od(" 0d 0a 00\n 51\n"), vec![13, 10, 0, 0x51]);
        assert_eq!(show_bytes(b"a\r\n\0"), "a\\r\\n\\x00");
    }

    #[test]
    fn panic_report_names_and_versions() {
        let l = "Kernel_2019-01-01-120000_mac.panic\npanic-full-2024-05-01-101010.0002.panic\nkextd_2020.crash\nRetired\n";
        assert_eq!(
            panic_reports(l),
            vec![
                "Kernel_2019-01-01-120000_mac.panic",
                "panic-full-2024-05-01-101010.0002.panic"
            ]
        );
        assert_eq!(major_version("10.15.7\n"), Some(10));
        assert_eq!(
            pkg_version(std::path::Path::new("/x/prx-0.1.0.pkg")).as_deref(),
            Some("0.1.0")
        );
        assert_eq!(pkg_version(std::path::Path::new("/x/other.pkg")), None);
        assert_eq!(major_version("14.5"), Some(14));
        assert_eq!(major_version("Linux"), None);
    }
    #[test]
    fn guest_address_from_route_and_ipconfig() {
        let route = "   route to: 203.0.113.10\ndestination: default\n       mask: default\n    gateway: 10.0.2.2\n  interface: en0\n      flags: <UP,GATEWAY,DONE,STATIC,PRCLONING>\n recvpipe  sendpipe  ssthresh  rtt,msec    rttvar  hopcount      mtu     expire\n       0         0         0         0         0         0      1500         0\n";
        assert_eq!(parse_route_interface(route).as_deref(), Some("en0"));
        assert_eq!(
            parse_route_interface("route: writing to routing socket: not in table\n"),
            None
        );
        assert_eq!(parse_route_interface("  interface: \n"), None);
        assert_eq!(parse_ifaddr("10.0.2.15\n"), Some([10, 0, 2, 15].into()));
        assert_eq!(parse_ifaddr("127.0.0.1\n"), None);
        assert_eq!(parse_ifaddr("0.0.0.0"), None);
        assert_eq!(parse_ifaddr(""), None);
        assert_eq!(parse_ifaddr("fe80::1"), None);
        assert_eq!(parse_ifaddr("10.0.2.15\n192.168.1.2\n"), None);
    }

    const IP_STATUS: &str = "filtering:        enabled\nrules:            1 (rule sets installed: 1)\nfilters attached: 2 (IPv4, IPv6)\ncontrol clients:  1\nproxy (IPv4):     10.0.2.15:18080\nproxy (IPv6):     none\nstatistics:\n  NAT flows                           1\n  NAT flow capacity                4096\n  packets redirected                 12\n  reply packets rewritten            10\n  packets dropped: busy               0\n";

    #[test]
    fn ip_status_counters_are_parsed_and_judged() {
        let c = parse_status_counters(IP_STATUS);
        assert_eq!(c.len(), 5);
        assert_eq!(c[0], ("NAT flows".to_string(), 1));
        assert_eq!(c[1], ("NAT flow capacity".to_string(), 4096));
        assert_eq!(c[4], ("packets dropped: busy".to_string(), 0));
        assert_eq!(
            judge_ip_counters(IP_STATUS),
            Ok("packets redirected 12, NAT flows 1".into())
        );
        let zero = IP_STATUS.replace(
            "redirected                 12",
            "redirected                  0",
        );
        assert!(
            judge_ip_counters(&zero)
                .unwrap_err()
                .starts_with("packets redirected 0, NAT flows 1")
        );
        let no_flows = IP_STATUS.replace("NAT flows                           1", "NAT flows 0");
        assert!(judge_ip_counters(&no_flows).is_err());
        // Lines before `statistics:` ("rules: 1 ...") are not counters.
        assert_eq!(
            judge_ip_counters("rules:            1\nNAT flows 3\n").unwrap_err(),
            "no `packets redirected` or `NAT flows` counter in the statistics"
        );
    }

    #[test]
    fn ip_listener_bytes_are_judged() {
        let req = b"GET /prx-vmtest HTTP/1.1\r\nHost: 203.0.113.10\r\n\r\n";
        assert!(judge_ip_listener(req, "203.0.113.10:80", "10.0.2.15:18080").is_ok());
        assert_eq!(
            judge_ip_listener(b"", "203.0.113.10:80", "10.0.2.15:18080").unwrap_err(),
            "nothing: the connection to 203.0.113.10:80 was not redirected to the listener at 10.0.2.15:18080"
        );
        let mut v2 = PROXY_V2_SIGNATURE.to_vec();
        v2.extend([
            0x21, 0x11, 0, 12, 10, 0, 0, 2, 203, 0, 113, 10, 0xC3, 0x50, 0, 80,
        ]);
        v2.extend(req);
        let e = judge_ip_listener(&v2, "203.0.113.10:80", "10.0.2.15:18080").unwrap_err();
        assert!(
            e.starts_with("a PROXY v2 header (dst 203.0.113.10:80): the socket filter"),
            "{e}"
        );
        assert!(judge_ip_listener(b"SSH-2.0-x\r\n", "203.0.113.10:80", "p").is_err());
    }
}
