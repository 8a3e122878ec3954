//! `cargo xtask vm-test`: run smoke scenarios against kext bundles.
//!
//! Backend `emu` (the only one so far) runs the x86_64 kext binary in the
//! user-space XNU KPI emulator of the `vm` crate, one child process per scenario
//! with a time limit. The child is this same executable, started as
//! `xtask vm-test --emu-child --scenario S --kext K…`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};

/// Arguments of `cargo xtask vm-test`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where the kexts run: emu (built-in KPI emulator). qemu and ssh are not implemented yet.
    #[arg(long, default_value = "emu")]
    pub backend: String,
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
    /// Time limit for each scenario, in seconds.
    #[arg(long, default_value_t = 30.0, value_name = "SECS")]
    pub timeout: f64,
    /// Fault-injection plan, e.g. `alloc#1` or `pullup%200@7` (see vm::emu::fault).
    #[arg(long, value_name = "PLAN")]
    pub faults: Option<String>,
    /// Internal: run one scenario in this process (the child side of the emu backend).
    #[arg(long, hide = true)]
    pub emu_child: bool,
}

/// Runs `vm-test`; fails when any scenario fails.
pub fn run(root: &Path, args: Args) -> anyhow::Result<()> {
    if args.emu_child {
        let child = vm::emu::ChildArgs {
            scenario: args.scenarios.first().cloned().unwrap_or_default(),
            kexts: args.kexts,
            faults: args.faults,
        };
        std::process::exit(vm::emu::child_main(&child));
    }
    if args.backend != "emu" {
        bail!(
            "backend `{}` is not implemented yet; use --backend emu (the built-in KPI emulator)",
            args.backend
        );
    }
    let mut scenarios = args.scenarios;
    if scenarios.iter().any(|s| s == "list") {
        for (name, what) in vm::emu::SCENARIOS {
            println!("{name:16} {what}");
        }
        return Ok(());
    }
    if scenarios.is_empty() {
        scenarios.push("load-unload".into());
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
    let exe = std::env::current_exe()
        .context("locating the xtask executable (it runs each scenario as a child)")?;
    let opts = vm::emu::RunOptions {
        runner: vm::emu::Runner {
            program: exe,
            args: vec!["vm-test".into(), "--emu-child".into()],
        },
        kexts,
        timeout: Duration::from_secs_f64(args.timeout),
        faults: args.faults,
    };
    let mut reports = Vec::new();
    for s in &scenarios {
        let r = vm::emu::run(&opts, s);
        print!("{}", r.render());
        reports.push(r);
    }
    if let Some(path) = &args.junit {
        std::fs::write(path, vm::emu::junit(&reports))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let failed = reports.iter().filter(|r| !r.passed).count();
    println!(
        "vm-test (emu): {} passed, {failed} failed",
        reports.len() - failed
    );
    if failed > 0 {
        bail!("{failed} of {} scenario(s) failed", reports.len());
    }
    Ok(())
}
