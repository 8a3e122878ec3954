//! prx's build driver, as a library so the end-to-end tests run exactly the code
//! `cargo xtask` runs. The binary (`src/main.rs`) is a thin clap dispatcher.

pub mod bench;
pub mod bindgen;
pub mod build;
pub mod emu_arm64e;
pub mod kpi;
#[cfg(feature = "package")]
pub mod package;
pub mod suite;
pub mod toolchain;
pub mod vm_test;

use std::path::PathBuf;

/// The workspace root (the directory holding the top-level Cargo.toml).
pub fn workspace_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(PathBuf::from).unwrap_or(here)
}
