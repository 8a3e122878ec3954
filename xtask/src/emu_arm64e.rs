//! The emulator as an aarch64 program, for running the kexts' arm64e slices:
//! `vm-test --backend emu --arch arm64e` and the vm crate's arm64e tests.
//!
//! The `prx-emu` binary is cross-built for `aarch64-unknown-linux-gnu` (rustup
//! target, Debian's aarch64 cross gcc as linker and C compiler) into
//! `target/emu-aarch64`, and each scenario's child runs under
//! `qemu-aarch64 -cpu max` (Debian's qemu-user), whose CPU implements pointer
//! authentication — the arm64e slice's `braa`/`blraa`/`autia` run for real, with
//! pointers the emulator's loader signed. The parent (runner) stays a host program.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use xshell::cmd;

use crate::suite;

/// The Rust target the emulator is cross-built for.
pub const TARGET: &str = "aarch64-unknown-linux-gnu";
/// Where qemu-aarch64 finds the aarch64 dynamic loader and C library.
pub const SYSROOT: &str = "/usr/aarch64-linux-gnu";

/// Installs what is missing (Debian packages, rustup target), saying what and why.
pub fn ensure_tools(root: &Path, who: &str) -> Result<()> {
    suite::ensure_debian_packages_for(suite::ARM64E_NEEDS, who)?;
    let channel = crate::toolchain::pinned_channel(root)?;
    let sh = crate::toolchain::shell(root)?;
    let out = cmd!(sh, "rustup target list --installed --toolchain {channel}")
        .quiet()
        .read()
        .with_context(|| {
            format!(
                "listing the installed targets of toolchain {channel} (rustup: https://rustup.rs)"
            )
        })?;
    let have = out.lines().any(|l| l.trim() == TARGET);
    if !have {
        eprintln!(
            "{who}: adding rustup target {TARGET} to toolchain {channel} (the aarch64 build of the emulator)"
        );
        cmd!(sh, "rustup target add {TARGET} --toolchain {channel}")
            .quiet()
            .run()
            .with_context(|| {
                format!("`rustup target add {TARGET} --toolchain {channel}` failed")
            })?;
    }
    Ok(())
}

/// Cross-builds `prx-emu` for aarch64 and returns the executable's path.
pub fn build_emulator(root: &Path) -> Result<PathBuf> {
    let target_dir = root.join("target/emu-aarch64");
    eprintln!("building the emulator for {TARGET} (prx-emu, for qemu-aarch64 -cpu max)…");
    let sh = crate::toolchain::shell(root)?;
    suite::clean_cargo(&sh)
        .args([
            "build",
            "--package",
            "vm",
            "--bin",
            "prx-emu",
            "--target",
            TARGET,
        ])
        .env("CARGO_TARGET_DIR", &target_dir)
        .env(
            "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER",
            "aarch64-linux-gnu-gcc",
        )
        .env("CC_aarch64_unknown_linux_gnu", "aarch64-linux-gnu-gcc")
        .env("AR_aarch64_unknown_linux_gnu", "aarch64-linux-gnu-ar")
        .quiet()
        .run()
        .with_context(|| format!("cargo build --target {TARGET} of prx-emu failed"))?;
    let exe = target_dir.join(TARGET).join("debug/prx-emu");
    if !exe.is_file() {
        bail!("{} was not produced by the build", exe.display());
    }
    Ok(exe)
}

/// The runner that starts each scenario child as `qemu-aarch64 -cpu max -L
/// /usr/aarch64-linux-gnu prx-emu child …`.
pub fn runner(emulator: &Path) -> vm::emu::Runner {
    vm::emu::Runner {
        program: PathBuf::from("qemu-aarch64"),
        args: vec![
            "-cpu".into(),
            "max".into(),
            "-L".into(),
            SYSROOT.into(),
            emulator.display().to_string(),
            "child".into(),
        ],
    }
}

/// Everything at once: tools, build, runner.
pub fn prepare(root: &Path, who: &str) -> Result<vm::emu::Runner> {
    ensure_tools(root, who)?;
    Ok(runner(&build_emulator(root)?))
}
