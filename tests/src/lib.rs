//! Helpers for prx's end-to-end tests: building the kexts once per test binary
//! and running the independent LLVM tools on the results.

pub mod arm64e;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Runs an external tool and returns its stdout; panics with a useful message
/// (including how to install the tool) when it is missing or fails.
pub fn tool(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| {
        panic!("cannot run {program}: {e}; install Debian's llvm-19 and clang-19 packages (.ci/run does)")
    });
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("tool output is UTF-8")
}

/// Like [`tool`] but returns (success, stdout+stderr) instead of asserting.
pub fn tool_status(program: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {program}: {e}; install Debian's llvm-19/clang-19 packages")
        });
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// The release bundles, built once per test process by the same code
/// `cargo xtask build --release` runs.
pub fn release_bundles() -> &'static [xtask::build::BuiltBundle] {
    static BUILT: OnceLock<Vec<xtask::build::BuiltBundle>> = OnceLock::new();
    BUILT.get_or_init(|| {
        let opts = xtask::build::BuildOptions {
            release: true,
            archs: vec![],
            kexts: vec![],
            target_dir: None,
        };
        match xtask::build::build(&root(), &opts) {
            Ok(b) => b,
            Err(e) => panic!("cargo xtask build --release failed: {e:#}"),
        }
    })
}

/// The release macOS tools (universal prxctl, …), built once per test process
/// by the same code `cargo xtask build --release` runs.
pub fn release_tools() -> &'static [xtask::tools::BuiltTool] {
    static BUILT: OnceLock<Vec<xtask::tools::BuiltTool>> = OnceLock::new();
    BUILT.get_or_init(|| {
        let root = root();
        match xtask::tools::build(&root, &root.join("target"), true) {
            Ok(t) => t,
            Err(e) => panic!("building the macOS tools failed: {e:#}"),
        }
    })
}

/// `Contents/MacOS/<CFBundleExecutable>` of a bundle.
pub fn executable_of(bundle: &Path) -> PathBuf {
    let plist =
        plist::Value::from_file(bundle.join("Contents/Info.plist")).expect("Info.plist parses");
    let exe = plist
        .as_dictionary()
        .and_then(|d| d.get("CFBundleExecutable"))
        .and_then(|v| v.as_string())
        .expect("CFBundleExecutable");
    bundle.join("Contents/MacOS").join(exe)
}

/// Extracts one architecture's slice of a universal binary with `llvm-lipo-19
/// -thin` (an independent tool) into a fresh file under the system temp dir.
pub fn thin(universal: &Path, arch: &str) -> PathBuf {
    static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = universal
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("kext");
    let out = std::env::temp_dir().join(format!("prx-{}-{n}-{name}.{arch}", std::process::id()));
    tool(
        "llvm-lipo-19",
        &[
            universal.to_str().expect("UTF-8 path"),
            "-thin",
            arch,
            "-output",
            out.to_str().expect("UTF-8 path"),
        ],
    );
    out
}
