//! Backends behind one trait: where the scenarios run.
//!
//! - `emu` ([`Emu`]): the built-in KPI emulator (no macOS involved).
//! - `ssh` ([`Ssh`]): any Intel macOS host or VM that is already running.
//! - `qemu` ([`Qemu`]): boots an Intel macOS image under QEMU/KVM the OSX-KVM way,
//!   then does what `ssh` does, then shuts the VM down.
//! - `vmware` ([`Vmware`]): `vmrun` revert/start/getGuestIPAddress/stop around the same flow.
//!
//! The real-macOS backends share [`guest::run`]: the guest flow over [`ssh`].

pub mod config;
pub mod guest;
pub mod qemu;
pub mod ssh;
pub mod vmware;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::report::{ScenarioReport, StepReport};

/// Where the scenarios run.
pub trait Backend {
    /// `emu`, `ssh`, `qemu`, `vmware`.
    fn name(&self) -> &'static str;
    /// Runs `scenarios`; one report each, plus reports for setup and machine-level
    /// checks (a failed one of those fails the run like a failed scenario).
    fn run(&mut self, scenarios: &[String]) -> Vec<ScenarioReport>;
}

/// The KPI emulator.
pub struct Emu {
    pub opts: crate::emu::RunOptions,
}

impl Backend for Emu {
    fn name(&self) -> &'static str {
        "emu"
    }
    fn run(&mut self, scenarios: &[String]) -> Vec<ScenarioReport> {
        scenarios
            .iter()
            .map(|s| {
                let r = crate::emu::run(&self.opts, s);
                crate::progress::emit(crate::progress::Event::Finished {
                    scenario: r.scenario.clone(),
                    passed: r.passed,
                    elapsed: r.duration,
                });
                r
            })
            .collect()
    }
}

/// A running macOS machine reachable over ssh.
pub struct Ssh {
    pub target: ssh::SshTarget,
    pub guest: guest::GuestConfig,
}

impl Backend for Ssh {
    fn name(&self) -> &'static str {
        "ssh"
    }
    fn run(&mut self, scenarios: &[String]) -> Vec<ScenarioReport> {
        guest::run(&self.target, &self.guest, scenarios)
    }
}

/// A failed machine-level report (`name`: e.g. `qemu-boot`).
pub fn machine_report(
    name: &str,
    ok: bool,
    steps: Vec<StepReport>,
    started: Instant,
) -> ScenarioReport {
    let failures = steps
        .iter()
        .filter(|s| !s.ok)
        .map(|s| format!("{}: {}", s.what, s.detail))
        .collect::<Vec<_>>();
    ScenarioReport {
        scenario: name.into(),
        kexts: Vec::new(),
        passed: ok && failures.is_empty(),
        failures,
        steps,
        violations: Vec::new(),
        log: Vec::new(),
        fault: None,
        duration: started.elapsed(),
        stderr: String::new(),
    }
}

fn step(what: &str, ok: bool, detail: impl Into<String>) -> StepReport {
    StepReport {
        what: what.into(),
        ok,
        detail: detail.into(),
    }
}

/// QEMU/KVM with OpenCore.
pub struct Qemu {
    pub cfg: qemu::QemuConfig,
    /// The ssh side (host 127.0.0.1, port = `cfg.ssh_port`).
    pub target: ssh::SshTarget,
    pub guest: guest::GuestConfig,
    /// Directory for the per-run OVMF vars and the serial log.
    pub run_dir: PathBuf,
    /// `/dev/kvm` (a parameter for tests).
    pub kvm: PathBuf,
}

impl Qemu {
    /// Checks the host and the files, then spawns QEMU; the error says what is missing.
    pub fn start(&self) -> Result<(Child, qemu::RunFiles), String> {
        qemu::preflight(&self.cfg, &self.kvm)?;
        std::fs::create_dir_all(&self.run_dir)
            .map_err(|e| format!("creating {}: {e}", self.run_dir.display()))?;
        let files = qemu::RunFiles {
            ovmf_vars: self.run_dir.join("OVMF_VARS.fd"),
            serial_log: self
                .cfg
                .serial_log
                .clone()
                .unwrap_or_else(|| self.run_dir.join("qemu-serial.log")),
        };
        std::fs::copy(&self.cfg.ovmf_vars, &files.ovmf_vars).map_err(|e| {
            format!(
                "copying the OVMF vars {}: {e}",
                self.cfg.ovmf_vars.display()
            )
        })?;
        let _ = std::fs::remove_file(&files.serial_log);
        let child = Command::new(&self.cfg.binary)
            .args(qemu::command_line(&self.cfg, &files))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(self.run_dir.join("qemu-stderr.log"))
                    .map(Stdio::from)
                    .unwrap_or(Stdio::null()),
            )
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.cfg.binary))?;
        Ok((child, files))
    }
}

/// Waits up to `limit` for `child` to exit; kills it (by its handle) otherwise.
fn wait_or_kill(child: &mut Child, limit: Duration) -> &'static str {
    let started = Instant::now();
    while started.elapsed() < limit {
        if let Ok(Some(_)) = child.try_wait() {
            return "shut down";
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = child.kill();
    let _ = child.wait();
    "did not shut down in time and was killed"
}

impl Backend for Qemu {
    fn name(&self) -> &'static str {
        "qemu"
    }
    fn run(&mut self, scenarios: &[String]) -> Vec<ScenarioReport> {
        let started = Instant::now();
        let (mut child, files) = match self.start() {
            Ok(x) => x,
            Err(e) => {
                return vec![machine_report(
                    "qemu-boot",
                    false,
                    vec![step("start qemu", false, e)],
                    started,
                )];
            }
        };
        let mut steps = vec![step(
            "start qemu",
            true,
            format!("serial console: {}", files.serial_log.display()),
        )];
        let mut reports = Vec::new();
        match self.target.wait_ready(self.cfg.boot_timeout()) {
            Ok(()) => {
                steps.push(step(
                    "ssh answers",
                    true,
                    format!("after {:.0}s", started.elapsed().as_secs_f64()),
                ));
                reports = guest::run(&self.target, &self.guest, scenarios);
                let _ = self
                    .target
                    .run("sudo -n shutdown -h now", Duration::from_secs(20));
            }
            Err(e) => steps.push(step("ssh answers", false, e.to_string())),
        }
        let how = wait_or_kill(&mut child, Duration::from_secs(120));
        steps.push(step("qemu stopped", true, how));
        let serial = std::fs::read_to_string(&files.serial_log).unwrap_or_default();
        let panics = qemu::panic_lines(&serial);
        steps.push(step(
            "serial console: no panic lines",
            panics.is_empty(),
            if panics.is_empty() {
                "none".to_string()
            } else {
                panics.join("\n")
            },
        ));
        let mut all = vec![machine_report("qemu-boot", true, steps, started)];
        all.append(&mut reports);
        all
    }
}

/// VMware Fusion / Workstation through `vmrun`.
pub struct Vmware {
    pub cfg: vmware::VmwareConfig,
    /// The ssh side; its host is replaced by the address VMware Tools reports.
    pub target: ssh::SshTarget,
    pub guest: guest::GuestConfig,
}

impl Vmware {
    fn vmrun(&self, args: Vec<String>, timeout: Duration) -> Result<String, String> {
        let mut c = Command::new(&self.cfg.vmrun);
        c.args(&args);
        match ssh::run_with_timeout(
            c,
            &self.cfg.vmrun,
            &format!("vmrun {}", args.join(" ")),
            timeout,
        ) {
            Ok(o) if o.ok() => Ok(o.stdout),
            Ok(o) => Err(format!(
                "`vmrun {}` exited with {}: {}",
                args.join(" "),
                o.status,
                o.text()
            )),
            Err(e) => Err(e.to_string()),
        }
    }
}

impl Backend for Vmware {
    fn name(&self) -> &'static str {
        "vmware"
    }
    fn run(&mut self, scenarios: &[String]) -> Vec<ScenarioReport> {
        let started = Instant::now();
        let boot = self.cfg.boot_timeout();
        let mut steps = Vec::new();
        let mut reports = Vec::new();
        let ip = self
            .vmrun(self.cfg.revert_args(), Duration::from_secs(300))
            .map(|_| steps.push(step("revert to snapshot", true, self.cfg.snapshot.clone())))
            .and_then(|_| self.vmrun(self.cfg.start_args(), boot))
            .map(|_| steps.push(step("start", true, "")))
            .and_then(|_| self.vmrun(self.cfg.guest_ip_args(), boot))
            .and_then(|o| vmware::parse_guest_ip(&o));
        match ip {
            Ok(ip) => {
                steps.push(step("guest IP address", true, ip.clone()));
                let mut t = self.target.clone();
                t.host = ip;
                match t.wait_ready(boot) {
                    Ok(()) => reports = guest::run(&t, &self.guest, scenarios),
                    Err(e) => steps.push(step("ssh answers", false, e.to_string())),
                }
            }
            Err(e) => steps.push(step("start the VM", false, e)),
        }
        let stopped = self
            .vmrun(self.cfg.stop_args(false), Duration::from_secs(120))
            .or_else(|_| self.vmrun(self.cfg.stop_args(true), Duration::from_secs(60)));
        steps.push(match stopped {
            Ok(_) => step("stop", true, ""),
            Err(e) => step("stop", false, e),
        });
        let mut all = vec![machine_report("vmware-vm", true, steps, started)];
        all.append(&mut reports);
        all
    }
}
