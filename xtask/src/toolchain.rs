//! The pinned toolchain and its `rust-src` component (needed by `-Zbuild-std`).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

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
    let out = Command::new("rustc")
        .arg("--print")
        .arg("sysroot")
        .current_dir(root)
        .output()
        .context("running `rustc --print sysroot` (is rustup installed?)")?;
    if !out.status.success() {
        bail!(
            "`rustc --print sysroot` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
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
    let status = Command::new("rustup")
        .args(["component", "add", "rust-src", "--toolchain", &channel])
        .status()
        .context("running rustup (install rustup, or add rust-src to the toolchain by hand)")?;
    if !status.success() || !core.is_file() {
        bail!(
            "could not install rust-src for toolchain {channel}: run `rustup component add rust-src --toolchain {channel}`"
        );
    }
    Ok(())
}
