//! prx's build driver, as a library so the end-to-end tests run exactly the code
//! `cargo xtask` runs. The binary (`src/main.rs`) is a thin clap dispatcher.

pub mod bench;
pub mod bindgen;
pub mod build;
pub mod emu_bridge;
pub mod kpi;
#[cfg(feature = "package")]
pub mod package;
pub mod toolchain;
pub mod vm_test;

use std::path::PathBuf;

/// Cargo's target directory, as cargo itself decides it from the environment:
/// `CARGO_TARGET_DIR` (or `CARGO_BUILD_TARGET_DIR`), relative paths taken from
/// the current directory; else `<root>/target`. Bundles, packages and the
/// kernel builds all go under it, so CI caches and shared target directories
/// find them.
pub fn target_dir(root: &std::path::Path) -> PathBuf {
    let from_env = ["CARGO_TARGET_DIR", "CARGO_BUILD_TARGET_DIR"]
        .iter()
        .filter_map(std::env::var_os)
        .find(|v| !v.is_empty());
    match from_env.map(PathBuf::from) {
        Some(p) if p.is_absolute() => p,
        Some(p) => std::env::current_dir().map_or(p.clone(), |cwd| cwd.join(p)),
        None => root.join("target"),
    }
}

/// The workspace root (the directory holding the top-level Cargo.toml).
pub fn workspace_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(PathBuf::from).unwrap_or(here)
}
