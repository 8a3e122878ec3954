//! The pinned toolchain and its `rust-src` component (needed by `-Zbuild-std`).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use xshell::{Shell, cmd};

/// A shell for xtask's external commands, working in `dir`. xtask runs the
/// programs it needs through xshell's `cmd!`, as the design asks: a value
/// interpolated into a command line is passed as one argument (never split or
/// re-quoted by a shell), and a failure names the command line and its exit
/// code (or "command not found"). Commands xtask already announces are run
/// `quiet()` (no second `$ command` echo); only cargo runs whose JSON output
/// xtask reads as it comes keep `std::process::Command`.
pub fn shell(dir: &Path) -> Result<Shell> {
    let sh = Shell::new().context("starting a shell for external commands")?;
    sh.change_dir(dir);
    Ok(sh)
}

/// The `cargo` to run: the one that started us (so the pinned toolchain), else
/// `cargo` from PATH.
pub fn cargo() -> PathBuf {
    std::env::var_os("CARGO")
        .map(PathBuf::from)
        .unwrap_or_else(|| "cargo".into())
}

/// True for the variables `cargo run` sets for the program it runs
/// (`CARGO_MANIFEST_DIR`, `CARGO_PKG_*`, …), which a nested cargo must not
/// inherit: build scripts that watch them (`ring`'s does) would see another
/// environment than a plain `cargo build`/`cargo test` and rebuild, each way.
pub fn set_by_cargo_run(key: &str) -> bool {
    key.starts_with("CARGO_PKG_")
        || key.starts_with("CARGO_BIN_")
        || matches!(
            key,
            "CARGO_MANIFEST_DIR"
                | "CARGO_MANIFEST_PATH"
                | "CARGO_MANIFEST_LINKS"
                | "CARGO_CRATE_NAME"
                | "CARGO_PRIMARY_PACKAGE"
                | "CARGO_RUSTC_CURRENT_DIR"
                | "OUT_DIR"
        )
}

/// A `cargo` command run in `root` without the variables [`set_by_cargo_run`]
/// names: every cargo xtask starts goes through here.
pub fn clean_cargo(root: &Path) -> Command {
    let mut cmd = Command::new(cargo());
    cmd.current_dir(root);
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(set_by_cargo_run) {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// The toolchain channel pinned in rust-toolchain.toml.
pub fn pinned_channel(root: &Path) -> Result<String> {
    let path = root.join("rust-toolchain.toml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("channel"))
        .filter_map(|rest| rest.trim_start().strip_prefix('='))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .next()
        .with_context(|| format!("{}: no `channel = \"...\"` line", path.display()))
}

/// The sysroot of the toolchain that builds in `root`.
fn sysroot(root: &Path) -> Result<PathBuf> {
    let sh = shell(root)?;
    let out = cmd!(sh, "rustc --print sysroot")
        .quiet()
        .read()
        .context("running `rustc --print sysroot` (is rustup installed?)")?;
    Ok(PathBuf::from(out.trim()))
}

/// Makes sure the pinned toolchain has `rust-src`, installing it with rustup
/// (and saying so) when it is missing.
pub fn ensure_rust_src(root: &Path) -> Result<()> {
    let sysroot = sysroot(root)?;
    let core = sysroot.join("lib/rustlib/src/rust/library/core/Cargo.toml");
    if core.is_file() {
        return Ok(());
    }
    let channel = pinned_channel(root)?;
    eprintln!(
        "xtask: the rust-src component is missing from toolchain {channel} (-Zbuild-std needs it); \
         running `rustup component add rust-src --toolchain {channel}`"
    );
    let sh = shell(root)?;
    cmd!(sh, "rustup component add rust-src --toolchain {channel}")
        .quiet()
        .run()
        .with_context(|| {
            format!(
                "could not install rust-src for toolchain {channel}: install rustup, or run \
                 `rustup component add rust-src --toolchain {channel}`"
            )
        })?;
    if !core.is_file() {
        bail!(
            "could not install rust-src for toolchain {channel}: run `rustup component add rust-src --toolchain {channel}`"
        );
    }
    Ok(())
}
