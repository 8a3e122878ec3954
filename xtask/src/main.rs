//! `cargo xtask`: prx's build driver. A thin dispatcher over the `xtask` library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use kext_metadata::Arch;

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Build, verify and package the prx kexts"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Compile the kexts for the kernel targets, link, verify and write the bundles
    /// to target/kext/<debug|release>/.
    Build {
        /// Optimised build (target/kext/release).
        #[arg(long)]
        release: bool,
        /// Architecture(s) to build (default: all supported).
        #[arg(long = "arch", value_name = "ARCH")]
        archs: Vec<Arch>,
        /// Kext(s) to build: socket, ip (default: all).
        #[arg(long = "kext", value_name = "NAME")]
        kexts: Vec<String>,
    },
    /// Regenerate kextld's KPI symbol table from xnu's config/*.exports files.
    GenKpi {
        /// Compare instead of writing; fail if the committed table differs.
        #[arg(long)]
        check: bool,
        /// Directory holding the *.exports files (default: $PRX_XNU_EXPORTS or ../shared/xnu-exports).
        #[arg(long, value_name = "DIR")]
        from: Option<PathBuf>,
        /// Regenerate the multi-release table (kextld/kpi/history.txt) instead, from the
        /// xnu tags of every macOS release since 10.13 (needs --xnu-git).
        #[arg(long, requires = "xnu_git")]
        history: bool,
        /// A git clone of https://github.com/apple-oss-distributions/xnu with its tags.
        #[arg(long, value_name = "DIR")]
        xnu_git: Option<PathBuf>,
    },
    /// Regenerate common::sys's KPI bindings with bindgen (needs libclang 19).
    Bindgen {
        /// Compare instead of writing; fail at the first line that differs.
        #[arg(long)]
        check: bool,
        /// Read a macOS SDK's Kernel.framework/Headers (or an xnu/MacKernelSDK header
        /// tree) instead of the project's header set in common/include.
        #[arg(long, value_name = "PATH")]
        sdk: Option<PathBuf>,
    },
    /// Run smoke scenarios: backend emu (the built-in XNU KPI emulator) or ssh/qemu/vmware (a real Intel macOS guest).
    VmTest(Box<xtask::vm_test::Args>),
    /// Codesign the release kexts and write target/pkg/prx-<version>.pkg and a .zip
    /// (or, with --check PKG, expand a package the way Installer does and report).
    #[cfg(feature = "package")]
    Package(Box<xtask::package::Args>),
    /// Codesign the release kexts and write target/pkg/prx-<version>.pkg and a .zip
    /// (or, with --check PKG, expand a package the way Installer does and report).
    /// This xtask was built without the signing stack: it runs
    /// `cargo run -p xtask --features package -- package ARGS…` (compiled once).
    #[cfg(not(feature = "package"))]
    #[command(disable_help_flag = true)]
    Package {
        /// Passed on unchanged (see `cargo xtask package --help` once built).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Serve the release kexts' controls from the KPI emulator on a Unix socket,
    /// for trying `prxctl --emu SOCKET` on Linux.
    EmuBridge(xtask::emu_bridge::Args),
    /// Install what the test suite needs when it is missing (Debian packages,
    /// rustup components and targets; each named with the reason), then run
    /// the whole suite with `cargo test`.
    Test(xtask::suite::Args),
    /// Count the instructions per operation of common::net's hot paths under
    /// callgrind (needs valgrind); prints a table, optionally writes JSON.
    Bench(xtask::bench::Args),
}

/// Runs `cargo xtask package ARGS` in an xtask built with `--features package`
/// (the signing, pkg and notarization stack), building it first if needed.
/// Cargo's own `Compiling …` lines show the build's progress; a note says
/// that the first build takes minutes only when something is really compiled.
/// The package run's exit status is passed on as is (its `error:` line is the
/// only one).
#[cfg(not(feature = "package"))]
fn with_signing_stack(root: &std::path::Path, args: &[String]) -> anyhow::Result<()> {
    use anyhow::{Context, bail};
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let cargo = xtask::toolchain::cargo();
    let mut child = xtask::toolchain::clean_cargo(root)
        .args([
            "build",
            "-p",
            "xtask",
            "--features",
            "package",
            "--message-format=json-render-diagnostics",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", cargo.display()))?;
    // Cargo's status lines and diagnostics, except the `Finished` of a build
    // that had nothing to do.
    let stderr = child.stderr.take().context("cargo's stderr")?;
    let forward = std::thread::spawn(move || {
        let mut compiled = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let t = line.trim_start();
            compiled |= t.starts_with("Compiling ");
            if t.starts_with("Finished ") && !compiled {
                continue;
            }
            eprintln!("{line}");
        }
    });
    let stdout = child.stdout.take().context("cargo's stdout")?;
    let mut exe = None;
    let mut noted = false;
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        // A dependency being compiled: the signing stack itself, not just
        // the workspace's own crates.
        let dependency = msg["package_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("registry+"));
        if msg["fresh"] == false && dependency && !noted {
            noted = true;
            eprintln!(
                "xtask: compiling `package`'s signing stack (apple-codesign, reqwest, …): the first time takes a few minutes, later runs reuse it"
            );
        }
        if msg["target"]["name"] == "xtask"
            && let Some(e) = msg["executable"].as_str()
        {
            exe = Some(std::path::PathBuf::from(e));
        }
    }
    let status = child.wait().context("waiting for cargo")?;
    let _ = forward.join();
    if !status.success() {
        bail!("building xtask with --features package failed (cargo's errors above)");
    }
    let exe = exe.context("cargo built no xtask executable")?;
    let status = Command::new(&exe)
        .arg("package")
        .args(args)
        .status()
        .with_context(|| format!("running {}", exe.display()))?;
    std::process::exit(status.code().unwrap_or(1));
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let root = xtask::workspace_root();
    let result = match cli.command {
        Cmd::Build {
            release,
            archs,
            kexts,
        } => {
            let started = Instant::now();
            xtask::build::build(
                &root,
                &xtask::build::BuildOptions {
                    release,
                    archs,
                    kexts,
                    target_dir: None,
                },
            )
            .map(|bundles| {
                for b in &bundles {
                    let rel = b.path.strip_prefix(&root).unwrap_or(&b.path);
                    let archs: Vec<&str> = b.archs.iter().map(|a| a.name()).collect();
                    println!(
                        "{}  {} bytes  [{}]{}",
                        rel.display(),
                        b.executable_size,
                        archs.join(", "),
                        if b.changed { "" } else { "  (up to date)" }
                    );
                }
                eprintln!(
                    "built {} bundle(s) in {:.1}s",
                    bundles.len(),
                    started.elapsed().as_secs_f64()
                );
            })
            // The macOS executables ([workspace.metadata.prx] tools).
            .and_then(|()| {
                xtask::tools::build_and_report(&root, &xtask::target_dir(&root), release)
            })
        }
        Cmd::GenKpi {
            check,
            from: _,
            history: true,
            xnu_git: Some(git),
        } => xtask::kpi::run_history(&root, &git, check),
        Cmd::GenKpi { check, from, .. } => xtask::kpi::run(&root, from, check),
        Cmd::Bindgen { check, sdk } => xtask::bindgen::run(&root, sdk.as_deref(), check),
        Cmd::VmTest(args) => xtask::vm_test::run(&root, *args),
        #[cfg(feature = "package")]
        Cmd::Package(args) => xtask::package::run(&root, *args),
        #[cfg(not(feature = "package"))]
        Cmd::Package { args } => with_signing_stack(&root, &args),
        Cmd::Bench(args) => xtask::bench::run(&root, args),
        Cmd::EmuBridge(args) => xtask::emu_bridge::run(&root, args),
        Cmd::Test(args) => xtask::suite::run(&root, args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
