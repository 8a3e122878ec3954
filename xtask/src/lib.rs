//! prx's build driver, as a library so the end-to-end tests run exactly the code
//! `cargo xtask` runs. The binary (`src/main.rs`) is a thin clap dispatcher.

pub mod bench;
pub mod bench_emu;
pub mod bindgen;
pub mod build;
pub mod emu_arm64e;
pub mod emu_bridge;
pub mod kpi;
#[cfg(feature = "package")]
pub mod package;
pub mod stamp;
pub mod suite;
pub mod toolchain;
pub mod tools;
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
    resolve_target_dir(
        from_env.map(PathBuf::from),
        std::env::current_dir().ok(),
        root,
    )
}

/// [`target_dir`]'s rule, given the variable's value and the current directory.
pub fn resolve_target_dir(
    from_env: Option<PathBuf>,
    cwd: Option<PathBuf>,
    root: &std::path::Path,
) -> PathBuf {
    match (from_env, cwd) {
        (Some(p), _) if p.is_absolute() => p,
        (Some(p), Some(cwd)) => cwd.join(p),
        (Some(p), None) => root.join(p),
        (None, _) => root.join("target"),
    }
}

/// The workspace root (the directory holding the top-level Cargo.toml).
pub fn workspace_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(PathBuf::from).unwrap_or(here)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cargo_target_dir_decides_where_bundles_go() {
        let root = PathBuf::from("/ws");
        let cwd = Some(PathBuf::from("/srv/ws/sub"));
        assert_eq!(
            resolve_target_dir(None, cwd.clone(), &root),
            root.join("target")
        );
        assert_eq!(
            resolve_target_dir(Some("/cache/tgt".into()), cwd.clone(), &root),
            PathBuf::from("/cache/tgt")
        );
        assert_eq!(
            resolve_target_dir(Some("tgt".into()), cwd, &root),
            PathBuf::from("/srv/ws/sub/tgt")
        );
        // The build's bundles and kernel builds follow it.
        let opts = build::BuildOptions {
            release: true,
            archs: vec![],
            kexts: vec![],
            target_dir: Some(PathBuf::from("/cache/tgt")),
        };
        assert_eq!(opts.target_dir(&root), PathBuf::from("/cache/tgt"));
    }
}
