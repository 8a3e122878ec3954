//! The guest flow, the same on every real-macOS backend once ssh answers:
//! copy the .pkg, `sudo installer`, then per scenario: load the kexts
//! (`kmutil load` on macOS 11+, `kextload` on 10.15 and older), stop with
//! instructions when macOS has not approved them, run the scenario with built-in
//! macOS tools (`nc -l` as the listener, `curl` as the client, `route` and
//! `ipconfig` for the guest's address) and `prxctl`,
//! unload, collect `log show` for the scenario's window, and look for kernel
//! panics (a new panic report, a changed `kern.boottime`, an unreachable guest).
//!
//! Every command run on the guest is built in this module's files, nowhere
//! else; `sudo -n` is used so that a guest without passwordless sudo for the
//! test user fails at once with sudo's message instead of hanging.
//!
//! One file per job: [`setup`] (version, boot time, copy, install), [`kexts`]
//! (load, unload, refusals), [`listener`] (the redirection evidence),
//! [`scenarios`] (each scenario's steps), [`health`] (log and panic checks),
//! [`report`] (a report while it is written) and [`evidence`] (the pure
//! reading of what the guest answered, tested without a guest). The PROXY v2
//! header the listener receives is decoded by `common::net::proxy_v2`, the
//! codec the kext and prxd use.

mod evidence;
mod health;
mod kexts;
mod listener;
mod report;
mod scenarios;
mod setup;

use std::path::PathBuf;
use std::time::Duration;

pub use self::evidence::{
    LoadRefusal, ProxyV2, classify_load_failure, judge_ip_counters, judge_ip_listener,
    major_version, panic_reports, parse_ifaddr, parse_od, parse_proxy_v2, parse_route_interface,
    parse_status_counters, refusal_instructions, show_bytes,
};
use self::report::{Rep, not_run};
use super::ssh::{CmdOutput, SshError, SshTarget, sh_quote};
use crate::report::ScenarioReport;

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

struct Flow<'a> {
    t: &'a SshTarget,
    cfg: &'a GuestConfig,
    major: u32,
    boottime: String,
    panics: Vec<String>,
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
    if let Err(why) = flow.setup(&mut setup) {
        return fail_all(setup, why);
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
