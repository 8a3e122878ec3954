//! Helpers shared by the emulator's integration tests. Each test file is its
//! own crate and includes this module (`mod support;`); not every file uses
//! every helper.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use kextld::link::link_buffers;
use kextld::{Arch, MinOs};
use vm::emu::{self, RunOptions, Runner, ScenarioReport};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// A temporary directory for this test process (removed when it exits).
pub fn scratch() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("temp dir"))
        .path()
}

/// Compiles `vm/tests/fixtures/<name>.c` with clang-19 -mkernel (plus `extra`
/// arguments, e.g. `-DBROKEN=2`) and links it with kextld, written as
/// `out_name` in [`scratch`].
pub fn c_kext(name: &str, out_name: &str, extra: &[&str]) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/{name}.c"));
    let obj = scratch().join(format!("{out_name}.o"));
    let out = Command::new("clang-19")
        .args([
            "-target",
            "x86_64-apple-macos10.13",
            "-mkernel",
            "-ffreestanding",
            "-fno-builtin",
            "-O1",
            "-Wall",
            "-Werror",
            "-c",
        ])
        .args(extra)
        .arg(&src)
        .arg("-o")
        .arg(&obj)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run clang-19 ({e}): install Debian's clang-19 (.ci/run does)")
        });
    assert!(
        out.status.success(),
        "clang-19 {name}.c failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let linked = link_buffers(
        Arch::X86_64,
        MinOs {
            major: 10,
            minor: 13,
        },
        0,
        &[(
            obj.display().to_string(),
            std::fs::read(&obj).expect("object"),
        )],
    )
    .unwrap_or_else(|e| panic!("kextld cannot link {name}: {e}"));
    let bin = scratch().join(out_name);
    std::fs::write(&bin, &linked.bytes).expect("write kext");
    bin
}

/// The prx release bundles (socket filter, IP filter), built once per test
/// process by `cargo xtask build --release`'s code.
pub fn prx_bundles() -> &'static [PathBuf] {
    static BUILT: OnceLock<Vec<PathBuf>> = OnceLock::new();
    BUILT.get_or_init(|| {
        let opts = xtask::build::BuildOptions {
            release: true,
            archs: vec![],
            kexts: vec![],
            target_dir: None,
        };
        xtask::build::build(&root(), &opts)
            .unwrap_or_else(|e| panic!("cargo xtask build --release failed: {e:#}"))
            .into_iter()
            .map(|b| b.path)
            .collect()
    })
}

/// The prx bundle whose path contains `name` (e.g. `PrxIPFilter`).
pub fn prx(name: &str) -> PathBuf {
    prx_bundles()
        .iter()
        .find(|p| p.to_string_lossy().contains(name))
        .unwrap_or_else(|| panic!("no {name} among {:?}", prx_bundles()))
        .clone()
}

/// Runs `scenario` in a `prx-emu child` process (with `extra` arguments),
/// the kexts loaded, under the fault plan `faults`, for at most `timeout`;
/// prints and returns the report.
pub fn run(
    scenario: &str,
    kexts: &[PathBuf],
    faults: Option<&str>,
    extra: &[&str],
    timeout: Duration,
) -> ScenarioReport {
    let mut args = vec!["child".to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    let opts = RunOptions {
        runner: Runner {
            program: PathBuf::from(env!("CARGO_BIN_EXE_prx-emu")),
            args,
        },
        kexts: kexts.to_vec(),
        timeout,
        faults: faults.map(str::to_string),
    };
    let r = emu::run(&opts, scenario);
    eprintln!("{}", r.render());
    r
}

/// The detail of the first step named `what`.
pub fn step<'a>(r: &'a ScenarioReport, what: &str) -> &'a str {
    r.steps
        .iter()
        .find(|s| s.what == what)
        .map(|s| s.detail.as_str())
        .unwrap_or_else(|| panic!("no step `{what}`:\n{}", r.render()))
}

/// The detail of the last step named `what`.
pub fn last_step<'a>(r: &'a ScenarioReport, what: &str) -> &'a str {
    r.steps
        .iter()
        .rfind(|s| s.what == what)
        .map(|s| s.detail.as_str())
        .unwrap_or_else(|| panic!("no step `{what}`:\n{}", r.render()))
}

/// The rules the report's violations broke.
pub fn rules(r: &ScenarioReport) -> Vec<&str> {
    r.violations.iter().map(|v| v.rule.as_str()).collect()
}
