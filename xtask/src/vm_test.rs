//! `cargo xtask vm-test`: run smoke scenarios against kext bundles.
//!
//! Backend `emu` runs the x86_64 kext binary in the user-space XNU KPI emulator
//! of the `vm` crate, one child process per scenario with a time limit. The child
//! is this same executable, started as `xtask vm-test --emu-child --scenario S --kext K…`.
//! Backends `ssh`, `qemu` and `vmware` install the .pkg on a real Intel macOS
//! guest and run the guest versions of the scenarios (`vm::backend`), configured
//! by `vm.toml` (see `vm.example.toml`) and the flags below.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};

/// Arguments of `cargo xtask vm-test`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where the kexts run: emu (built-in KPI emulator), ssh (a running macOS host),
    /// qemu (OSX-KVM style VM), vmware (vmrun). Default: `backend` in vm.toml, else emu.
    #[arg(long)]
    pub backend: Option<String>,
    /// Configuration of the real-macOS backends (default: vm.toml at the repository root, if present).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// ssh/qemu/vmware: the package to install (default: the one target/pkg/prx-*.pkg).
    #[arg(long, value_name = "PKG")]
    pub pkg: Option<PathBuf>,
    /// ssh: the guest, overriding vm.toml's [ssh] host/user/port.
    #[arg(long = "ssh", value_name = "USER@HOST[:PORT]")]
    pub ssh_dest: Option<String>,
    /// ssh/qemu/vmware: private key (default: vm.toml's [ssh] identity, else the ssh agent).
    #[arg(long, value_name = "KEY")]
    pub identity: Option<PathBuf>,
    /// ssh/qemu/vmware: the known_hosts file to check the guest's host key against.
    #[arg(long, value_name = "FILE")]
    pub known_hosts: Option<PathBuf>,
    /// Kext bundle (or binary) to load; repeat for several, loaded together in each scenario.
    /// Default: the prx kexts, built as `cargo xtask build --release` builds them.
    #[arg(long = "kext", value_name = "BUNDLE")]
    pub kexts: Vec<PathBuf>,
    /// Scenario to run; repeat for several (default: load-unload). `--scenario list` lists them.
    #[arg(long = "scenario", value_name = "NAME")]
    pub scenarios: Vec<String>,
    /// Also write a JUnit XML report to FILE.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Time limit for each scenario, in seconds (default 30; with --soak, 60 plus
    /// 1 per 1,000 packets).
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<f64>,
    /// Fault-injection plan, e.g. `alloc#1` or `pullup%200@7` (see vm::emu::kernel::fault).
    #[arg(long, value_name = "PLAN")]
    pub faults: Option<String>,
    /// emu: the slice to run — x86_64 (natively) or arm64e (the emulator cross-built
    /// for aarch64 and run under `qemu-aarch64 -cpu max`, with pointer authentication;
    /// installs qemu-user, the aarch64 cross toolchain and the rustup target when missing).
    #[arg(long, default_value = "x86_64", value_name = "ARCH")]
    pub arch: String,
    /// emu: run the `soak` scenario with PACKETS packets through the IP filter (and a
    /// socket connection through the socket filter every 16 flows), on --threads
    /// threads, under --faults; ends with a summary line.
    #[arg(long, value_name = "PACKETS")]
    pub soak: Option<u64>,
    /// emu: threads delivering callbacks at once in the `mt-*` and `soak` scenarios (1-64, default 4).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Internal: run one scenario in this process (the child side of the emu backend).
    #[arg(long, hide = true)]
    pub emu_child: bool,
    /// Internal (emu child, `cargo xtask emu-bridge`): the ctl-bridge socket.
    #[arg(long, hide = true, value_name = "PATH")]
    pub ctl_bridge: Option<PathBuf>,
    /// Internal (emu child, `cargo xtask emu-bridge`): how long ctl-bridge serves.
    #[arg(long, hide = true, value_name = "SECS")]
    pub serve_for: Option<u64>,
}

/// Runs `vm-test`; fails when any scenario fails.
pub fn run(root: &Path, args: Args) -> anyhow::Result<()> {
    if args.emu_child {
        let child = vm::emu::ChildArgs {
            scenario: args.scenarios.first().cloned().unwrap_or_default(),
            kexts: args.kexts,
            faults: args.faults,
            ctl_bridge: args.ctl_bridge,
            serve_for: args.serve_for.map(Duration::from_secs),
            soak: args.soak,
            threads: args.threads,
            transfer: None,
        };
        std::process::exit(vm::emu::child_main(&child));
    }
    let config_path = args
        .config
        .clone()
        .or_else(|| Some(root.join("vm.toml")).filter(|p| p.is_file()));
    let config = match &config_path {
        Some(p) => vm::backend::config::VmConfig::load(p).map_err(anyhow::Error::msg)?,
        None => vm::backend::config::VmConfig::default(),
    };
    let backend = args
        .backend
        .clone()
        .or_else(|| config.backend.clone())
        .unwrap_or_else(|| "emu".into());
    if backend != "emu" {
        return run_guest(root, &backend, config, args);
    }
    let mut scenarios = args.scenarios;
    if scenarios.iter().any(|s| s == "list") {
        for (name, what) in vm::emu::SCENARIOS {
            println!("{name:16} {what}");
        }
        return Ok(());
    }
    // Usage errors before anything is built.
    if let Some(n) = args.soak {
        if n == 0 {
            bail!("--soak 0: give the number of packets to send (e.g. --soak 1000000)");
        }
        if scenarios.iter().any(|s| s != "soak") {
            bail!(
                "--soak runs the `soak` scenario; leave out --scenario {} (run it separately)",
                scenarios.join(", ")
            );
        }
        if scenarios.is_empty() {
            scenarios.push("soak".into());
        }
    }
    if let Some(t) = args.threads
        && !(1..=64).contains(&t)
    {
        bail!("--threads {t}: use 1 to 64 threads");
    }
    if scenarios.is_empty() {
        scenarios.push("load-unload".into());
    }
    check_scenarios(&scenarios, vm::emu::SCENARIOS, "emu")?;
    for k in &args.kexts {
        if !k.exists() {
            bail!(
                "--kext {}: no such kext bundle or binary (pass a .kext built by `cargo xtask build`, or leave --kext out to build and test the prx kexts)",
                k.display()
            );
        }
    }
    let kexts = if args.kexts.is_empty() {
        let opts = crate::build::BuildOptions {
            release: true,
            archs: vec![],
            kexts: vec![],
            target_dir: None,
        };
        crate::build::build(root, &opts)
            .context("building the prx kexts to test")?
            .into_iter()
            .map(|b| b.path)
            .collect()
    } else {
        args.kexts
    };
    let mut runner = match args.arch.as_str() {
        "x86_64" => vm::emu::Runner {
            program: std::env::current_exe()
                .context("locating the xtask executable (it runs each scenario as a child)")?,
            args: vec!["vm-test".into(), "--emu-child".into()],
        },
        "arm64e" => crate::emu_arm64e::prepare(root, "xtask vm-test")?,
        other => bail!("--arch {other}: the emu backend runs x86_64 or arm64e"),
    };
    if let Some(n) = args.soak {
        runner.args.extend(["--soak".into(), n.to_string()]);
    }
    if let Some(t) = args.threads {
        runner.args.extend(["--threads".into(), t.to_string()]);
    }
    let timeout = args.timeout.unwrap_or_else(|| match args.soak {
        Some(n) => 60.0 + n as f64 / 1000.0,
        None => 30.0,
    });
    let opts = vm::emu::RunOptions {
        runner,
        kexts,
        timeout: Duration::from_secs_f64(timeout),
        faults: args.faults,
    };
    let mut b = vm::backend::Emu { opts };
    finish(&mut b, &scenarios, args.junit.as_deref())
}

/// Fails, listing the valid names, when a scenario is not one of `known`.
fn check_scenarios(
    scenarios: &[String],
    known: &[(&str, &str)],
    backend: &str,
) -> anyhow::Result<()> {
    let unknown: Vec<&str> = scenarios
        .iter()
        .map(String::as_str)
        .filter(|s| !known.iter().any(|(n, _)| n == s))
        .collect();
    if !unknown.is_empty() {
        let names: Vec<&str> = known.iter().map(|(n, _)| *n).collect();
        bail!(
            "--scenario {}: no such scenario for the {backend} backend; valid names: {} (`--scenario list` describes them)",
            unknown.join(", "),
            names.join(", ")
        );
    }
    Ok(())
}

/// Runs `scenarios` on `b`, prints a line per step and scenario as they end
/// (stderr), then each report, writes JUnit; fails on any failure.
fn finish(
    b: &mut dyn vm::backend::Backend,
    scenarios: &[String],
    junit: Option<&Path>,
) -> anyhow::Result<()> {
    let name = b.name();
    let started = std::time::Instant::now();
    eprintln!(
        "vm-test ({name}): running {} scenario(s): {}",
        scenarios.len(),
        scenarios.join(", ")
    );
    vm::progress::set_sink(Some(Box::new(move |e| {
        eprintln!(
            "vm-test ({name}) [{:>6.1} s] {}",
            started.elapsed().as_secs_f64(),
            e.line()
        )
    })));
    let reports = b.run(scenarios);
    vm::progress::set_sink(None);
    for r in &reports {
        print!("{}", r.render());
    }
    if let Some(path) = junit {
        std::fs::write(path, vm::report::junit(b.name(), &reports))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let failed = reports.iter().filter(|r| !r.passed).count();
    println!(
        "vm-test ({}): {} passed, {failed} failed",
        b.name(),
        reports.len() - failed
    );
    // The soak ends with its summary line (packets, flows, expired, drops by
    // reason, leaks to the origin, ledger violations).
    for r in &reports {
        if let Some(s) = r.steps.iter().rfind(|s| s.what == "soak: summary") {
            println!("{}", s.detail);
        }
    }
    if failed > 0 {
        bail!("{failed} of {} report(s) failed", reports.len());
    }
    Ok(())
}

/// The package to install: `--pkg`, else the single `target/pkg/prx-*.pkg`.
fn find_pkg(root: &Path, pkg: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = pkg {
        if !p.is_file() {
            bail!("--pkg {}: no such file", p.display());
        }
        return Ok(p);
    }
    let dir = crate::target_dir(root).join("pkg");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("prx-") && n.ends_with(".pkg"))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => bail!(
            "no package in {}: build it with `cargo xtask package` or pass --pkg PKG",
            dir.display()
        ),
        _ => bail!(
            "several packages in {} ({}): pass --pkg PKG",
            dir.display(),
            found
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Backends ssh, qemu, vmware: the guest flow on real macOS.
fn run_guest(
    root: &Path,
    backend: &str,
    mut config: vm::backend::config::VmConfig,
    args: Args,
) -> anyhow::Result<()> {
    use vm::backend::guest::GUEST_SCENARIOS;
    let mut scenarios = args.scenarios;
    if scenarios.iter().any(|s| s == "list") {
        for (name, what) in GUEST_SCENARIOS {
            println!("{name:16} {what}");
        }
        return Ok(());
    }
    if scenarios.is_empty() {
        scenarios.push("load-unload".into());
    }
    if args.arch != "x86_64" {
        bail!(
            "--arch {} is emu-only: the {backend} backend installs the .pkg on an Intel Mac",
            args.arch
        );
    }
    check_scenarios(&scenarios, GUEST_SCENARIOS, backend)?;
    if !args.kexts.is_empty() || args.faults.is_some() {
        bail!("--kext and --faults are emu-only; the {backend} backend installs the .pkg (--pkg)");
    }
    if let Some(id) = args.identity {
        config.ssh.identity = Some(id);
    }
    if let Some(kh) = args.known_hosts {
        config.ssh.known_hosts = kh;
    }
    let mut host = None;
    let mut port = None;
    if let Some(d) = &args.ssh_dest {
        let (u, h, p) = vm::backend::config::parse_ssh_spec(d).map_err(anyhow::Error::msg)?;
        config.ssh.user = Some(u);
        host = Some(h);
        port = p;
    }
    let mut b: Box<dyn vm::backend::Backend> = match backend {
        "ssh" => {
            let pkg = find_pkg(root, args.pkg)?;
            Box::new(vm::backend::Ssh {
                target: config
                    .ssh_target(host.as_deref(), port)
                    .map_err(anyhow::Error::msg)?,
                guest: config.guest(pkg),
            })
        }
        "qemu" => {
            let q = config.qemu.clone().context(
                "the qemu backend needs a [qemu] table in vm.toml (see vm.example.toml)",
            )?;
            let pkg = find_pkg(root, args.pkg)?;
            let target = config
                .ssh_target(Some("127.0.0.1"), Some(q.ssh_port))
                .map_err(anyhow::Error::msg)?;
            let qb = vm::backend::Qemu {
                cfg: q,
                target,
                guest: config.guest(pkg),
                run_dir: crate::target_dir(root).join("vm/qemu"),
                kvm: PathBuf::from("/dev/kvm"),
            };
            // Fail fast, before anything starts, naming what is missing.
            vm::backend::qemu::preflight(&qb.cfg, &qb.kvm).map_err(anyhow::Error::msg)?;
            Box::new(qb)
        }
        "vmware" => {
            let v = config.vmware.clone().context(
                "the vmware backend needs a [vmware] table in vm.toml (see vm.example.toml)",
            )?;
            let pkg = find_pkg(root, args.pkg)?;
            // The host is replaced by the address VMware Tools reports.
            let target = config
                .ssh_target(Some("0.0.0.0"), None)
                .map_err(anyhow::Error::msg)?;
            Box::new(vm::backend::Vmware {
                cfg: v,
                target,
                guest: config.guest(pkg),
            })
        }
        other => bail!("unknown backend `{other}` (emu, ssh, qemu, vmware)"),
    };
    finish(b.as_mut(), &scenarios, args.junit.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(backend: &str, config: &Path) -> Args {
        Args {
            backend: Some(backend.into()),
            config: Some(config.to_path_buf()),
            pkg: None,
            ssh_dest: None,
            identity: None,
            known_hosts: None,
            kexts: vec![],
            scenarios: vec![],
            junit: None,
            timeout: Some(30.0),
            soak: None,
            threads: None,
            faults: None,
            arch: "x86_64".into(),
            emu_child: false,
            ctl_bridge: None,
            serve_for: None,
        }
    }

    #[test]
    fn vm_test_qemu_fails_fast_naming_what_is_missing() {
        let d = tempfile::tempdir().unwrap();
        let cfg = d.path().join("vm.toml");
        std::fs::write(
            &cfg,
            "[ssh]\nuser = \"prxtest\"\n[qemu]\ndisk = \"no/mac_hdd_ng.img\"\nopencore = \"no/OpenCore.qcow2\"\novmf_code = \"no/OVMF_CODE.fd\"\novmf_vars = \"no/OVMF_VARS.fd\"\n",
        )
        .unwrap();
        let pkg = d.path().join("prx-0.1.0.pkg");
        std::fs::write(&pkg, b"pkg").unwrap();
        let mut a = args("qemu", &cfg);
        a.pkg = Some(pkg);
        let started = std::time::Instant::now();
        let e = format!("{:#}", run(d.path(), a).unwrap_err());
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(e.contains("the qemu backend cannot start"), "{e}");
        assert!(e.contains("no macOS disk image (qemu.disk)"), "{e}");
        assert!(e.contains("no OpenCore image"), "{e}");
        assert!(
            e.contains("no OVMF code") && e.contains("no OVMF vars"),
            "{e}"
        );
    }

    #[test]
    fn soak_and_threads_usage_errors_come_before_any_build() {
        let d = tempfile::tempdir().unwrap();
        let cfg = d.path().join("vm.toml");
        std::fs::write(&cfg, "").unwrap();
        // (--soak, --threads, --scenario, the error)
        type Case = (Option<u64>, Option<usize>, Vec<String>, &'static str);
        let cases: [Case; 4] = [
            (
                Some(0),
                None,
                vec![],
                "--soak 0: give the number of packets",
            ),
            (
                Some(1000),
                None,
                vec!["mt-nat".into()],
                "--soak runs the `soak` scenario; leave out --scenario mt-nat",
            ),
            (None, Some(0), vec![], "--threads 0: use 1 to 64 threads"),
            (
                None,
                Some(65),
                vec!["mt-nat".into()],
                "--threads 65: use 1 to 64",
            ),
        ];
        for (soak, threads, scenarios, want) in cases {
            let mut a = args("emu", &cfg);
            a.soak = soak;
            a.threads = threads;
            a.scenarios = scenarios;
            let started = std::time::Instant::now();
            let e = format!("{:#}", run(d.path(), a).unwrap_err());
            assert!(started.elapsed() < Duration::from_secs(2), "{e}");
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn vm_test_usage_errors_come_before_any_build() {
        let d = tempfile::tempdir().unwrap();
        let cfg = d.path().join("vm.toml");
        std::fs::write(&cfg, "").unwrap();
        // The root has no Cargo.toml: any build attempt would fail differently.
        let mut a = args("emu", &cfg);
        a.scenarios = vec!["load-unload".into(), "nosuch".into()];
        let started = std::time::Instant::now();
        let e = format!("{:#}", run(d.path(), a).unwrap_err());
        assert!(started.elapsed() < Duration::from_secs(2), "{e}");
        assert!(
            e.contains("--scenario nosuch: no such scenario for the emu backend")
                && e.contains("valid names: load-unload"),
            "{e}"
        );
        let mut a = args("emu", &cfg);
        a.kexts = vec![PathBuf::from("/nonexistent/Prx.kext")];
        let started = std::time::Instant::now();
        let e = format!("{:#}", run(d.path(), a).unwrap_err());
        assert!(started.elapsed() < Duration::from_secs(2), "{e}");
        assert!(
            e.contains("--kext /nonexistent/Prx.kext: no such kext bundle"),
            "{e}"
        );
        let mut a = args("ssh", &cfg);
        a.scenarios = vec!["nosuch".into()];
        let e = format!("{:#}", run(d.path(), a).unwrap_err());
        assert!(e.contains("no such scenario for the ssh backend"), "{e}");
    }

    #[test]
    fn vm_test_guest_backends_need_a_package_and_a_config() {
        let d = tempfile::tempdir().unwrap();
        let cfg = d.path().join("vm.toml");
        std::fs::write(&cfg, "[ssh]\nhost = \"mac.example\"\nuser = \"prxtest\"\n").unwrap();
        let e = format!("{:#}", run(d.path(), args("ssh", &cfg)).unwrap_err());
        assert!(
            e.contains("no package in") && e.contains("cargo xtask package"),
            "{e}"
        );
        let e = format!("{:#}", run(d.path(), args("vmware", &cfg)).unwrap_err());
        assert!(e.contains("needs a [vmware] table"), "{e}");
        let e = format!("{:#}", run(d.path(), args("hyperv", &cfg)).unwrap_err());
        assert!(e.contains("unknown backend `hyperv`"), "{e}");
    }
}
