//! The parent side: starts each scenario in a child process with a time limit,
//! reads its event stream, and turns it into a [`ScenarioReport`] — including
//! when the child crashed (the fault is mapped back to a kext symbol) or hung.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::child;
use super::image;
use super::kernel::events::Event;
use super::kernel::events::Violation;
use super::loader;

/// How to start a scenario process: `program args… --scenario S --kext K… [--faults F]`.
#[derive(Debug, Clone)]
pub struct Runner {
    pub program: PathBuf,
    pub args: Vec<String>,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub runner: Runner,
    pub kexts: Vec<PathBuf>,
    pub timeout: Duration,
    /// A fault plan (see [`super::kernel::fault::FaultPlan::parse`]).
    pub faults: Option<String>,
}

/// One step of a scenario as reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepReport {
    pub what: String,
    pub ok: bool,
    pub detail: String,
}

/// The outcome of one scenario.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScenarioReport {
    pub scenario: String,
    pub kexts: Vec<String>,
    pub passed: bool,
    /// Why it failed, one line each (empty when passed).
    pub failures: Vec<String>,
    pub steps: Vec<StepReport>,
    pub violations: Vec<Violation>,
    /// The kext's log (printf/IOLog), in order.
    pub log: Vec<String>,
    /// The fault that ended the child, described, if any.
    pub fault: Option<String>,
    pub duration: Duration,
    /// The child's stderr (the emulator's own diagnostics), if any.
    pub stderr: String,
}

struct Mapped {
    kext: String,
    image: Option<image::KextImage>,
    base: u64,
    size: u64,
    stubs: u64,
    stub_symbols: Vec<String>,
    unloaded: bool,
    /// An arm64e slice (run under qemu-aarch64): the return address is the link register.
    arm64: bool,
}

/// Runs `scenario` in a child process and reports on it.
pub fn run(opts: &RunOptions, scenario: &str) -> ScenarioReport {
    let started = Instant::now();
    let mut report = ScenarioReport {
        scenario: scenario.to_string(),
        kexts: opts.kexts.iter().map(|p| p.display().to_string()).collect(),
        passed: false,
        failures: Vec::new(),
        steps: Vec::new(),
        violations: Vec::new(),
        log: Vec::new(),
        fault: None,
        duration: Duration::ZERO,
        stderr: String::new(),
    };
    let mut cmd = Command::new(&opts.runner.program);
    cmd.args(&opts.runner.args).arg("--scenario").arg(scenario);
    for k in &opts.kexts {
        cmd.arg("--kext").arg(k);
    }
    if let Some(f) = &opts.faults {
        cmd.arg("--faults").arg(f);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut proc = match cmd.spawn() {
        Ok(p) => p,
        Err(e) => {
            report.failures.push(format!(
                "cannot start {}: {e}",
                opts.runner.program.display()
            ));
            return report;
        }
    };
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let out = proc.stdout.take();
    let reader = std::thread::spawn(move || {
        if let Some(out) = out {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        }
    });
    let err = proc.stderr.take();
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut e) = err {
            let _ = std::io::Read::read_to_string(&mut e, &mut s);
        }
        s
    });

    let mut timed_out = false;
    let status = loop {
        match proc.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if started.elapsed() > opts.timeout => {
                timed_out = true;
                // Only the child this function started, by its own handle.
                let _ = proc.kill();
                break proc.wait().ok();
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(_) => break None,
        }
    };
    let _ = reader.join();
    report.stderr = err_reader.join().unwrap_or_default();

    let mut mapped: Vec<Mapped> = Vec::new();
    for line in rx.try_iter() {
        let Ok(ev) = serde_json::from_str::<Event>(&line) else {
            report.failures.push(format!(
                "unreadable event from the scenario process: {line}"
            ));
            continue;
        };
        match ev {
            Event::Log { text } => report.log.push(text),
            Event::Loaded {
                kext,
                path,
                base,
                size,
                stubs,
                stub_symbols,
                cputype,
                ..
            } => mapped.push(Mapped {
                kext,
                image: image::read_arch(Path::new(&path), cputype.unwrap_or(image::NATIVE_CPUTYPE))
                    .ok(),
                base,
                size,
                stubs,
                stub_symbols,
                unloaded: false,
                arm64: cputype == Some(image::CPU_TYPE_ARM64),
            }),
            Event::Unloaded { kext } => {
                for m in mapped.iter_mut().filter(|m| m.kext == kext) {
                    m.unloaded = true;
                }
            }
            Event::Step { what, ok, detail } => {
                if !ok {
                    report.failures.push(format!("{what}: {detail}"));
                }
                report.steps.push(StepReport { what, ok, detail });
            }
            Event::Violation(v) => {
                report
                    .failures
                    .push(format!("[{}] during {}: {}", v.rule, v.during, v.detail));
                report.violations.push(v);
            }
            Event::Fault {
                signal,
                addr,
                rip,
                ret,
                call,
            } => {
                let mut f = describe_fault(&mapped, signal, addr, rip, ret);
                if let Some(pac) = describe_pac_failure(&mapped, addr, &call) {
                    f = format!("{pac}; {f}");
                }
                report.failures.push(f.clone());
                report.fault = Some(f);
            }
        }
    }
    if timed_out {
        report.failures.push(format!(
            "timed out after {:.1}s: the scenario process was killed (a kext that loops or blocks forever)",
            opts.timeout.as_secs_f64()
        ));
    } else {
        match status.and_then(|s| s.code()) {
            Some(child::EXIT_DONE) | Some(child::EXIT_FAULT) => {}
            Some(child::EXIT_PANIC) => report
                .failures
                .push("the kext called panic(): the kernel would have panicked".into()),
            Some(child::EXIT_SETUP) => report.failures.push(format!(
                "scenario could not be set up: {}",
                report.stderr.trim()
            )),
            Some(c) => report.failures.push(format!(
                "scenario process exited with status {c}: {}",
                report.stderr.trim()
            )),
            None => {
                use std::os::unix::process::ExitStatusExt;
                let sig = status.and_then(|s| s.signal()).unwrap_or(0);
                if report.fault.is_none() {
                    report.failures.push(format!(
                        "scenario process killed by signal {sig} ({})",
                        signal_name(sig)
                    ));
                }
            }
        }
    }
    if report.steps.is_empty() && report.failures.is_empty() {
        report
            .failures
            .push("the scenario process reported nothing".into());
    }
    report.passed = report.failures.is_empty();
    report.duration = started.elapsed();
    report
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGBUS => "SIGBUS",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGKILL => "SIGKILL",
        libc::SIGABRT => "SIGABRT",
        _ => "signal",
    }
}

fn where_is(mapped: &[Mapped], addr: u64) -> String {
    for m in mapped {
        if let Some(img) = &m.image
            && let Some(d) = loader::describe(img, m.base, m.size, m.stubs, &m.stub_symbols, addr)
        {
            let gone = if m.unloaded {
                ", after it was unloaded"
            } else {
                ""
            };
            return format!("{d} in {}{gone}", m.kext);
        }
    }
    if addr >> 48 == 0xE000 {
        return "an opaque KPI handle (mbuf_t, socket_t, lock…): the kext dereferenced a handle"
            .into();
    }
    if addr < 4096 {
        return "a NULL pointer (page zero)".into();
    }
    "outside every kext image and its stubs".into()
}

/// A fault at an address with the PAC error bits set (arm64e under qemu-aarch64):
/// an authenticated branch or `aut*` whose signature did not verify.
fn describe_pac_failure(mapped: &[Mapped], addr: u64, call: &str) -> Option<String> {
    if !mapped.iter().any(|m| m.arm64) {
        return None;
    }
    let (key, plain) = super::arch::pac_failure(addr)?;
    let calling = if call.is_empty() {
        String::new()
    } else {
        format!(" calling the kext's {call} callback")
    };
    Some(format!(
        "pointer authentication failure (PAC, key {key}){calling}: the signature of the \
         pointer to {plain:#x} ({}) did not verify against the discriminator the kernel uses",
        where_is(mapped, plain)
    ))
}

fn describe_fault(mapped: &[Mapped], signal: i32, addr: u64, rip: u64, ret: u64) -> String {
    let mut s = format!(
        "{} at address {addr:#x} ({}); instruction pointer {rip:#x} ({})",
        signal_name(signal),
        where_is(mapped, addr),
        where_is(mapped, rip)
    );
    let rip_in_kext = mapped
        .iter()
        .any(|m| rip >= m.base && rip < m.base + m.size);
    if !rip_in_kext && ret != 0 {
        let whence = if mapped.iter().any(|m| m.arm64) {
            "in the link register"
        } else {
            "on the stack"
        };
        s.push_str(&format!(
            "; return address {whence} {ret:#x} ({})",
            where_is(mapped, ret)
        ));
    }
    s
}

impl ScenarioReport {
    /// Human-readable report: verdict, failures, steps and the kext's log.
    pub fn render(&self) -> String {
        let mut s = format!(
            "{} {} [{}] ({:.2}s)\n",
            if self.passed { "PASS" } else { "FAIL" },
            self.scenario,
            self.kexts.join(", "),
            self.duration.as_secs_f64()
        );
        for f in &self.failures {
            s.push_str(&format!("  failure: {f}\n"));
        }
        for st in &self.steps {
            s.push_str(&format!(
                "  {} {}: {}\n",
                if st.ok { "ok  " } else { "FAIL" },
                st.what,
                st.detail
            ));
        }
        if self.log.is_empty() {
            s.push_str("  kext log: (empty)\n");
        } else {
            s.push_str("  kext log:\n");
            for l in &self.log {
                s.push_str(&format!("    | {l}\n"));
            }
        }
        s
    }
}

/// Writes a JUnit XML file with one test case per report (see [`crate::report::junit`]).
pub fn junit(reports: &[ScenarioReport]) -> String {
    crate::report::junit("emu", reports)
}
