//! End-to-end tests of the emu backend: C test kexts (compiled by clang-19
//! -mkernel, linked by kextld) and the prx kexts (built as `cargo xtask build
//! --release` builds them) run in the emulator, each scenario in a child
//! process (`prx-emu child`). clang-19 missing makes these tests fail, not skip.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use kextld::link::link_buffers;
use kextld::{Arch, MinOs};
use vm::emu::{self, RunOptions, Runner, ScenarioReport};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn scratch() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("temp dir"))
        .path()
}

/// Compiles `tests/fixtures/<name>.c` with clang-19 -mkernel and links it with kextld.
fn c_kext(name: &str) -> PathBuf {
    let src = fixtures().join(format!("{name}.c"));
    let obj = scratch().join(format!("{name}.o"));
    let out = Command::new("clang-19")
        .args([
            "-target",
            "x86_64-apple-macos10.13",
            "-mkernel",
            "-fno-builtin",
            "-O1",
            "-Wall",
            "-Werror",
            "-c",
        ])
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
    let bin = scratch().join(name);
    std::fs::write(&bin, &linked.bytes).expect("write kext");
    bin
}

/// The prx release bundles, built once per test process by `cargo xtask build --release`'s code.
fn prx_bundles() -> &'static [PathBuf] {
    static BUILT: OnceLock<Vec<PathBuf>> = OnceLock::new();
    BUILT.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("workspace root")
            .to_path_buf();
        let opts = xtask::build::BuildOptions {
            release: true,
            archs: vec![],
            kexts: vec![],
            target_dir: None,
        };
        let built = xtask::build::build(&root, &opts)
            .unwrap_or_else(|e| panic!("cargo xtask build --release failed: {e:#}"));
        built.into_iter().map(|b| b.path).collect()
    })
}

fn run_with(
    scenario: &str,
    kexts: &[PathBuf],
    faults: Option<&str>,
    timeout: Duration,
) -> ScenarioReport {
    let opts = RunOptions {
        runner: Runner {
            program: PathBuf::from(env!("CARGO_BIN_EXE_prx-emu")),
            args: vec!["child".into()],
        },
        kexts: kexts.to_vec(),
        timeout,
        faults: faults.map(str::to_string),
    };
    let r = emu::run(&opts, scenario);
    eprintln!("{}", r.render());
    r
}

fn run(scenario: &str, kexts: &[PathBuf]) -> ScenarioReport {
    run_with(scenario, kexts, None, Duration::from_secs(30))
}

fn rules(r: &ScenarioReport) -> Vec<&str> {
    r.violations.iter().map(|v| v.rule.as_str()).collect()
}

#[test]
fn c_kext_loads_starts_logs_stops_and_unloads() {
    let r = run("load-unload", &[c_kext("hello")]);
    assert!(r.passed, "{}", r.render());
    assert_eq!(
        r.log,
        [
            "hello start com.example.hello id=100 mapped=1 size=12288 pid 4242",
            "hello via IOLog 42",
            "hello stop",
        ],
        "printf/IOLog captured, kmod_info filled in (id, address, size) before start"
    );
    let steps: Vec<&str> = r.steps.iter().map(|s| s.what.as_str()).collect();
    assert_eq!(
        steps,
        [
            "load com.example.hello",
            "start com.example.hello",
            "stop com.example.hello",
            "unload com.example.hello",
            "ledgers"
        ]
    );
}

#[test]
fn prx_kexts_load_start_stop_and_unload() {
    let bundles = prx_bundles();
    assert_eq!(bundles.len(), 2, "{bundles:?}");
    let r = run("load-unload", bundles);
    assert!(r.passed, "{}", r.render());
    for name in ["PrxSocketFilter", "PrxIPFilter"] {
        assert!(
            r.log
                .iter()
                .any(|l| l.starts_with(&format!("prx: {name} started"))),
            "{:?}",
            r.log
        );
        assert!(
            r.log.iter().any(|l| l == &format!("prx: {name} stopped")),
            "{:?}",
            r.log
        );
    }
    assert!(
        r.steps
            .iter()
            .any(|s| s.what == "unload net.prx.kext.SocketFilter" && s.ok)
    );
    assert!(
        r.steps
            .iter()
            .any(|s| s.what == "unload net.prx.kext.IPFilter" && s.ok)
    );
}

#[test]
fn a_jump_to_a_bad_address_ends_the_scenario_with_a_report() {
    let r = run("load-unload", &[c_kext("badjump")]);
    assert!(!r.passed);
    let fault = r.fault.as_deref().expect("fault reported");
    assert!(fault.starts_with("SIGSEGV at address 0xdead00"), "{fault}");
    assert!(
        fault.contains("instruction pointer 0xdead00 (outside every kext image and its stubs)"),
        "{fault}"
    );
    assert!(fault.contains("return address on the stack"), "{fault}");
    assert!(
        fault.contains("_badjump_start+") && fault.contains("in com.example.badjump"),
        "{fault}"
    );
    assert_eq!(r.log, ["about to jump"], "the log up to the crash is kept");
}

#[test]
fn a_kext_that_never_returns_is_killed_at_the_time_limit() {
    let r = run_with(
        "load-unload",
        &[c_kext("hang")],
        None,
        Duration::from_secs(2),
    );
    assert!(!r.passed);
    assert!(
        r.failures
            .iter()
            .any(|f| f.starts_with("timed out after 2.0s")),
        "{:?}",
        r.failures
    );
    assert_eq!(r.log, ["spinning"]);
}

#[test]
fn unknown_kpis_are_listed_and_nothing_runs() {
    let r = run("load-unload", &[c_kext("unknown_kpi")]);
    assert!(!r.passed);
    let f = r.failures.join("\n");
    assert!(
        f.contains(
            "does not provide 2 symbol(s) the kext needs: _not_a_kpi_alpha, _not_a_kpi_beta"
        ),
        "{f}"
    );
    assert!(r.log.is_empty());
}

#[test]
fn held_lock_and_leaked_allocation_are_reported() {
    let r = run("load-unload", &[c_kext("leak_lock")]);
    assert!(!r.passed);
    assert_eq!(
        rules(&r),
        ["lock-held-on-return", "memory-leak"],
        "{}",
        r.render()
    );
    assert!(r.violations[0].during == "start com.example.leaklock");
    assert!(
        r.violations[0].detail.contains("Mutex"),
        "{:?}",
        r.violations[0]
    );
    assert!(
        r.violations[1].detail.contains("100 bytes")
            && r.violations[1]
                .detail
                .contains("OSMalloc in start com.example.leaklock")
    );
}

#[test]
fn a_kext_bundle_directory_is_accepted() {
    let bin = c_kext("hello");
    let bundle = scratch().join("Hello.kext");
    std::fs::create_dir_all(bundle.join("Contents/MacOS")).unwrap();
    std::fs::copy(&bin, bundle.join("Contents/MacOS/Hello")).unwrap();
    std::fs::write(
        bundle.join("Contents/Info.plist"),
        r#"<?xml version="1.0" encoding="UTF-8"?>
<plist version="1.0"><dict><key>CFBundleExecutable</key><string>Hello</string></dict></plist>"#,
    )
    .unwrap();
    let r = run("load-unload", &[bundle]);
    assert!(r.passed, "{}", r.render());
}
