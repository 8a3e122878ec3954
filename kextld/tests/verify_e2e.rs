//! End to end: C sources compiled with clang-19 (`-mkernel`), linked with
//! `kextld::link`, then verified, through the library and through `kextld verify`.
//! (The rustc-built kexts' staticlibs are linked and verified in
//! `tests/tests/link_rust.rs`, which builds them.)
//!
//! These tests need clang-19; they fail (they do not skip) when it is missing.

use std::path::Path;
use std::process::Command;

use kextld::kpi::KpiTables;
use kextld::link::link_buffers;
use kextld::verify::{Report, Severity, verify};
use kextld::{Arch, MinOs};

/// A `kmod_info_t` (pack(4)) named com.example.prx.e2e 1.0.0 with start/stop.
const KMOD_C: &str = r#"
typedef int kern_return_t;
#pragma pack(push, 4)
typedef struct kmod_info {
    struct kmod_info *next;
    int info_version;
    unsigned int id;
    char name[64];
    char version[64];
    int reference_count;
    void *reference_list;
    unsigned long address;
    unsigned long size;
    unsigned long hdr_size;
    kern_return_t (*start)(struct kmod_info *, void *);
    kern_return_t (*stop)(struct kmod_info *, void *);
} kmod_info_t;
#pragma pack(pop)
extern int IOLog(const char *, ...);
kern_return_t prx_start(kmod_info_t *ki, void *d);
kern_return_t prx_stop(kmod_info_t *ki, void *d);
kmod_info_t kmod_info = {0, 1, 0xffffffffu, "com.example.prx.e2e", "1.0.0", -1, 0, 0, 0, 0,
                         prx_start, prx_stop};
kern_return_t prx_stop(kmod_info_t *ki, void *d) { (void)ki; (void)d; return 0; }
"#;

/// Compiles C for the x86_64 kernel with clang-19; returns the object's bytes.
fn compile(dir: &Path, name: &str, body: &str) -> Vec<u8> {
    let src = dir.join(format!("{name}.c"));
    let obj = dir.join(format!("{name}.o"));
    std::fs::write(&src, format!("{KMOD_C}\n{body}")).unwrap();
    let out = Command::new("clang-19")
        .args(["-target", "x86_64-apple-macos10.13", "-mkernel", "-O2", "-c", "-o"])
        .arg(&obj)
        .arg(&src)
        .output()
        .unwrap_or_else(|e| {
            panic!("clang-19 is required by this test and could not be run ({e}): install clang-19 (apt-get install clang-19 llvm-19)")
        });
    assert!(
        out.status.success(),
        "clang-19 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(obj).unwrap()
}

fn link_and_verify(name: &str, body: &str) -> (Vec<u8>, Report) {
    let dir = tempfile::tempdir().unwrap();
    let obj = compile(dir.path(), name, body);
    let linked = link_buffers(
        Arch::X86_64,
        MinOs::X86_64_DEFAULT,
        0,
        &[(format!("{name}.o"), obj)],
    )
    .unwrap_or_else(|e| panic!("linking {name}: {e}"));
    let report = verify(&linked.bytes, KpiTables::builtin());
    (linked.bytes, report)
}

fn errors(report: &Report, check: &str) -> Vec<String> {
    report
        .findings
        .iter()
        .filter(|f| f.check == check && f.severity == Severity::Error)
        .map(|f| f.message.clone())
        .collect()
}

#[test]
fn good_c_kext_verifies_clean() {
    let (_, report) = link_and_verify(
        "good",
        r#"kern_return_t prx_start(kmod_info_t *ki, void *d) { (void)d; IOLog("start %s\n", ki->name); return 0; }"#,
    );
    assert!(report.findings.is_empty(), "{report}");
    let s = &report.slices[0];
    assert_eq!(s.kmod_name.as_deref(), Some("com.example.prx.e2e"));
    assert_eq!(s.kmod_version.as_deref(), Some("1.0.0"));
    assert_eq!(s.undefined, ["_IOLog"]);
    assert!(s.kpi_sets.contains("com.apple.kpi.iokit"));
}

#[test]
fn sse_in_c_is_rejected_naming_function_and_instruction() {
    let (_, report) = link_and_verify(
        "sse",
        r#"
        __attribute__((noinline)) void simd_store(void *p) {
            __asm__ volatile("movaps %%xmm0, (%0)" :: "r"(p) : "memory");
        }
        __attribute__((noinline)) void x87_load(double *p) { __asm__ volatile("fldl (%0)" :: "r"(p)); }
        kern_return_t prx_start(kmod_info_t *ki, void *d) { simd_store(d); x87_load(d); IOLog("%s", ki->name); return 0; }
        "#,
    );
    let e = errors(&report, "sse");
    assert_eq!(e.len(), 2, "{report}");
    assert!(
        e.iter()
            .any(|m| m.starts_with("_simd_store+") && m.contains("`movaps [rdi],xmm0` uses SSE")),
        "{report}"
    );
    assert!(
        e.iter()
            .any(|m| m.starts_with("_x87_load+") && m.contains("fld") && m.contains("x87")),
        "{report}"
    );
    assert!(e[0].contains("build with the prx kernel target (soft-float)"));
}

#[test]
fn undefined_private_and_panic_symbols_get_their_own_findings() {
    let (_, report) = link_and_verify(
        "syms",
        r#"
        extern int not_a_kpi_function(int);
        extern void *cs_identity_get(void *);
        extern void prx_panic_path_survived_optimisation(void) __attribute__((noreturn));
        __attribute__((noinline)) int checked_index(const int *a, unsigned i, unsigned n) {
            if (i >= n) prx_panic_path_survived_optimisation();
            return a[i];
        }
        __attribute__((noinline)) int helper(int x) { return not_a_kpi_function(x) + 1; }
        kern_return_t prx_start(kmod_info_t *ki, void *d) {
            (void)ki;
            cs_identity_get(d);
            return helper(checked_index(d, 3, 4));
        }
        "#,
    );
    let unknown = errors(&report, "kpi-symbol");
    assert_eq!(unknown.len(), 1, "{report}");
    assert!(
        unknown[0].starts_with(
            "_not_a_kpi_function is exported by no KPI set for x86_64 (referenced from _helper)"
        ),
        "{report}"
    );
    let private = errors(&report, "kpi-private");
    assert_eq!(private.len(), 1, "{report}");
    assert!(
        private[0].contains("_cs_identity_get is exported only by com.apple.kpi.private")
            && private[0].contains("_prx_start"),
        "{report}"
    );
    let panic = errors(&report, "panic-path");
    assert_eq!(panic.len(), 1, "{report}");
    assert!(
        panic[0].starts_with("a panic path survived optimisation, reachable from _prx_start (through _checked_index);"),
        "{report}"
    );
    assert_eq!(report.findings.len(), 3, "{report}");
}

#[test]
fn data_references_through_got_and_pointers_name_their_users() {
    let (_, report) = link_and_verify(
        "data",
        r#"
        extern int not_a_kpi_variable;
        extern int not_a_kpi_callback(void);
        int (*const callbacks[1])(void) = { not_a_kpi_callback };
        kern_return_t prx_start(kmod_info_t *ki, void *d) { (void)ki; (void)d; return not_a_kpi_variable; }
        "#,
    );
    let e = errors(&report, "kpi-symbol");
    assert_eq!(e.len(), 2, "{report}");
    assert!(e[0].starts_with("_not_a_kpi_callback is exported by no KPI set for x86_64 (referenced from the pointer at _callbacks ("), "{report}");
    assert!(e[1].starts_with("_not_a_kpi_variable is exported by no KPI set for x86_64 (referenced from _prx_start via __DATA,__got+0x0 ("), "{report}");
}

#[test]
fn cli_prints_the_report_and_exits_1_on_errors() {
    let dir = tempfile::tempdir().unwrap();
    let exe = env!("CARGO_BIN_EXE_kextld");
    let good = link_and_verify(
        "good",
        "kern_return_t prx_start(kmod_info_t *ki, void *d) { (void)ki; (void)d; return 0; }",
    )
    .0;
    let bad = link_and_verify(
        "bad",
        "extern int not_a_kpi_function(void);\nkern_return_t prx_start(kmod_info_t *ki, void *d) { (void)ki; (void)d; return not_a_kpi_function(); }",
    )
    .0;
    std::fs::write(dir.path().join("good"), good).unwrap();
    std::fs::write(dir.path().join("bad"), bad).unwrap();
    std::fs::write(dir.path().join("garbage"), b"not a kext").unwrap();

    let run = |name: &str| {
        Command::new(exe)
            .arg("verify")
            .arg(dir.path().join(name))
            .output()
            .unwrap()
    };
    let out = run("good");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert_eq!(
        stdout.trim(),
        "x86_64: kmod com.example.prx.e2e 1.0.0, 0 undefined symbols\nok: 0 warnings"
    );

    let out = run("bad");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout
            .starts_with("error[kpi-symbol] x86_64: _not_a_kpi_function is exported by no KPI set"),
        "{stdout}"
    );
    assert!(
        stdout.contains("x86_64: kmod com.example.prx.e2e 1.0.0, 1 undefined symbols\n"),
        "{stdout}"
    );
    assert!(
        stdout.trim_end().ends_with("FAILED: 1 errors, 0 warnings"),
        "{stdout}"
    );

    let out = run("garbage");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("error[macho]: file is 10 bytes"));

    let out = run("missing");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}

/// Every prefix and many bit flips of a real linked kext: findings, never a panic.
#[test]
fn corrupted_linked_kext_never_panics() {
    let (bytes, report) = link_and_verify(
        "fuzz",
        r#"kern_return_t prx_start(kmod_info_t *ki, void *d) { (void)d; IOLog("start %s\n", ki->name); return 0; }"#,
    );
    assert!(report.is_ok(), "{report}");
    for len in 0..bytes.len() {
        assert!(
            !verify(&bytes[..len], KpiTables::builtin()).is_ok(),
            "prefix {len} verified ok"
        );
    }
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..3000 {
        let mut b = bytes.clone();
        let pos = next() as usize % b.len();
        b[pos] ^= 1 << (next() % 8);
        let _ = verify(&b, KpiTables::builtin());
    }
}
