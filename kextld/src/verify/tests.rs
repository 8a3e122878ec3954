//! Unit tests: images from [`super::test_builder`], code from llvm-mc-19.

use std::path::Path;
use std::process::Command;

use super::test_builder::{Built, Spec, build, fat};
use super::*;
use crate::kpi::KpiTables;

fn tables() -> &'static KpiTables {
    KpiTables::builtin()
}

fn run(bytes: &[u8]) -> Report {
    verify(bytes, tables())
}

fn good(undefined: &[&str]) -> Built {
    build(&Spec::good(Arch::X86_64, undefined))
}

/// The messages of the findings of one check, for assertions.
fn messages(report: &Report, check: &str) -> Vec<String> {
    report.by_check(check).map(|f| f.to_string()).collect()
}

fn errors(report: &Report, check: &str) -> Vec<String> {
    report
        .by_check(check)
        .filter(|f| f.severity == Severity::Error)
        .map(|f| f.to_string())
        .collect()
}

fn put32(bytes: &mut [u8], off: usize, v: u32) {
    bytes[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

fn put64(bytes: &mut [u8], off: usize, v: u64) {
    bytes[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

#[test]
fn good_kext_is_clean() {
    let b = good(&["_IOLog", "_printf"]);
    let report = run(&b.bytes);
    assert!(report.findings.is_empty(), "{report}");
    assert!(report.is_ok());
    let s = &report.slices[0];
    assert_eq!(s.arch, Some(Arch::X86_64));
    assert_eq!(s.kmod_name.as_deref(), Some("com.example.prx.test"));
    assert_eq!(s.kmod_version.as_deref(), Some("1.2.3"));
    assert_eq!(s.undefined, ["_IOLog", "_printf"]);
    assert_eq!(
        s.kpi_sets.iter().map(String::as_str).collect::<Vec<_>>(),
        ["com.apple.kpi.iokit", "com.apple.kpi.libkern"]
    );
    let text = report.to_string();
    assert!(text.contains("x86_64: kmod com.example.prx.test 1.2.3, 2 undefined symbols from com.apple.kpi.iokit, com.apple.kpi.libkern"), "{text}");
    assert!(text.ends_with("ok: 0 warnings"), "{text}");
}

#[test]
fn header_rules() {
    let b = good(&["_IOLog"]);
    let mut bytes = b.bytes.clone();
    put32(&mut bytes, 12, 6); // MH_DYLIB
    put32(&mut bytes, 24, 0x200085); // + MH_PIE
    put32(&mut bytes, 8, 8); // x86_64h
    let report = run(&bytes);
    let e = errors(&report, "header");
    assert_eq!(e.len(), 3, "{report}");
    assert!(e[0].contains("MH_KEXT_BUNDLE (11)"));
    assert!(e[1].contains("0x200085") && e[1].contains("0x85"));
    assert!(e[2].contains("cpusubtype is 0x8"));

    let mut bytes = b.bytes.clone();
    put32(&mut bytes, 4, 18); // PowerPC
    let report = run(&bytes);
    assert!(
        errors(&report, "header")[0].contains("neither x86_64"),
        "{report}"
    );

    for (magic, what) in [
        (0xfeedface_u32, "32-bit"),
        (0xcffaedfe, "big-endian"),
        (0x7f454c46, "not a Mach-O"),
    ] {
        let mut bytes = b.bytes.clone();
        put32(&mut bytes, 0, magic);
        let report = run(&bytes);
        assert!(errors(&report, "macho")[0].contains(what), "{report}");
    }
}

#[test]
fn load_command_rules() {
    let b = good(&["_IOLog"]);
    let source_version = b.cmd_offsets[6];
    let uuid = b.cmd_offsets[5];
    let mut bytes = b.bytes.clone();
    put32(&mut bytes, source_version, 0x8000_0034); // LC_DYLD_CHAINED_FIXUPS
    put32(&mut bytes, uuid, 0xe); // LC_LOAD_DYLINKER
    let report = run(&bytes);
    let e = errors(&report, "load-commands");
    assert_eq!(e.len(), 2, "{report}");
    assert!(e[0].contains("LC_LOAD_DYLINKER") && e[0].contains("not loaded by dyld"));
    assert!(
        e[1].contains("LC_DYLD_CHAINED_FIXUPS") && e[1].contains("kxld rejects chained fixups")
    );
    // The loaders do not need a UUID: a missing one is a warning.
    assert!(
        messages(&report, "load-commands")
            .iter()
            .any(|m| m.starts_with("warning[load-commands]") && m.contains("LC_UUID is missing")),
        "{report}"
    );

    let mut bytes = b.bytes.clone();
    put32(&mut bytes, source_version, 0x8000_0028); // LC_MAIN
    put32(&mut bytes, uuid, 0x8000_0018); // LC_LOAD_WEAK_DYLIB
    let report = run(&bytes);
    let e = errors(&report, "load-commands");
    assert!(
        e[0].contains("LC_LOAD_WEAK_DYLIB") && e[0].contains("no dylib"),
        "{report}"
    );
    assert!(
        e[1].contains("LC_MAIN") && e[1].contains("entry point"),
        "{report}"
    );

    let mut bytes = b.bytes.clone();
    put32(&mut bytes, source_version, 0x2c); // LC_ENCRYPTION_INFO_64: unknown to kxld
    let report = run(&bytes);
    assert!(
        errors(&report, "load-commands")[0].contains("load command 0x2c"),
        "{report}"
    );

    // A cmdsize that runs past sizeofcmds stops parsing with a clear message.
    let mut bytes = b.bytes.clone();
    put32(&mut bytes, source_version + 4, 0x1000);
    let report = run(&bytes);
    assert!(
        errors(&report, "macho")[0].contains("cmdsize 0x1000"),
        "{report}"
    );
}

#[test]
fn segment_rules() {
    let b = good(&["_IOLog"]);
    let data_seg = b.cmd_offsets[1];
    let text_seg = b.cmd_offsets[0];
    // __DATA moved up a page in memory: not contiguous, sections outside.
    let mut bytes = b.bytes.clone();
    put64(&mut bytes, data_seg + 24, 0x2000);
    let report = run(&bytes);
    let e = errors(&report, "segments");
    // A file offset below the vmaddr alone is fine (ld64's compact layout) …
    assert!(!e.iter().any(|m| m.contains("file range")), "{report}");
    // … but file ranges must not overlap.
    let mut overlapping = b.bytes.clone();
    put64(&mut overlapping, data_seg + 40, 0);
    let report2 = run(&overlapping);
    assert!(
        errors(&report2, "segments")
            .iter()
            .any(|m| m.contains("segment __DATA: file range starts at 0x0, inside __TEXT's")),
        "{report2}"
    );
    assert!(
        e.iter().any(|m| m.contains("must be contiguous")),
        "{report}"
    );
    assert!(
        e.iter().any(|m| m.contains("section __DATA,__data")),
        "{report}"
    );

    // __TEXT not at 0.
    let mut bytes = b.bytes.clone();
    put64(&mut bytes, text_seg + 40, 0x1000);
    let report = run(&bytes);
    assert!(
        errors(&report, "segments")
            .iter()
            .any(|m| m.contains("must be __TEXT at vmaddr 0")),
        "{report}"
    );

    // maxprot rwx with initprot r-x is what older ld64 wrote: nothing to report.
    let mut bytes = b.bytes.clone();
    put32(&mut bytes, text_seg + 56, 7);
    let report = run(&bytes);
    assert!(report.findings.is_empty(), "{report}");
    // W+X initprot: a warning on x86_64, an error on arm64e.
    put32(&mut bytes, text_seg + 60, 7);
    let report = run(&bytes);
    assert!(report.is_ok(), "{report}");
    assert!(
        messages(&report, "segments")[0]
            .starts_with("warning[segments] x86_64: segment __TEXT is writable and executable")
    );
    let a = build(&Spec::good(Arch::Arm64e, &["_IOLog"]));
    let mut bytes = a.bytes.clone();
    put32(&mut bytes, a.cmd_offsets[0] + 60, 7);
    let report = run(&bytes);
    assert!(
        errors(&report, "segments")[0].contains("writable and executable"),
        "{report}"
    );

    // Segment past the end of the file.
    let mut bytes = b.bytes.clone();
    bytes.truncate(b.symoff + 3);
    let report = run(&bytes);
    assert!(
        errors(&report, "segments")
            .iter()
            .any(|m| m.contains("past the end of the file")),
        "{report}"
    );
    assert!(
        errors(&report, "macho")
            .iter()
            .any(|m| m.contains("LC_SYMTAB")),
        "{report}"
    );
}

#[test]
fn header_padding_for_code_signature() {
    let mut spec = Spec::good(Arch::X86_64, &["_IOLog"]);
    spec.text_offset = 32 + 520 + 16;
    let report = run(&build(&spec).bytes);
    let e = errors(&report, "header-padding");
    assert_eq!(e.len(), 1, "{report}");
    assert!(e[0].contains("only 16 bytes") && e[0].contains("LC_CODE_SIGNATURE"));
    spec.text_offset = 32 + 520 + 32;
    assert!(run(&build(&spec).bytes).is_ok());
}

#[test]
fn relocation_rules() {
    let b = good(&["_IOLog"]);
    // Local relocation with the wrong type/length.
    let mut bytes = b.bytes.clone();
    put32(&mut bytes, b.locrel_off + 4, 1 | (2 << 25) | (1 << 28));
    let report = run(&bytes);
    let e = errors(&report, "relocations");
    assert!(
        e[0].contains("local relocation at _kmod_info+0xb4")
            && e[0].contains("X86_64_RELOC_SIGNED"),
        "{report}"
    );
    // kmod start now lacks a usable local relocation? It has one (wrong type): not double-reported.

    // Local relocation whose slot does not point into the target section.
    let mut bytes = b.bytes.clone();
    put64(&mut bytes, (b.kmod_addr + 188) as usize, 0x5000);
    let report = run(&bytes);
    let e = errors(&report, "relocations");
    assert!(
        e[0].contains("_kmod_info+0xbc") && e[0].contains("holds 0x5000"),
        "{report}"
    );
    assert!(
        errors(&report, "kmod-info")[0].contains("stop holds 0x5000"),
        "{report}"
    );

    // Bad section ordinal.
    let mut bytes = b.bytes.clone();
    put32(&mut bytes, b.locrel_off + 4, 9 | (3 << 25));
    let report = run(&bytes);
    assert!(
        errors(&report, "relocations")[0].contains("section ordinal 9"),
        "{report}"
    );

    // Local relocation outside every section.
    let mut bytes = b.bytes.clone();
    put32(&mut bytes, b.locrel_off, 0x9000);
    let report = run(&bytes);
    assert!(
        errors(&report, "relocations")[0].contains("0x9000"),
        "{report}"
    );

    // External relocation of a GOT_LOAD type.
    let mut bytes = b.bytes.clone();
    let info = 3 | (1 << 24) | (2 << 25) | (1 << 27) | (3 << 28);
    put32(&mut bytes, b.extrel_off + 4, info);
    let report = run(&bytes);
    let e = errors(&report, "relocations");
    assert!(
        e[0].contains("_prx_start+0x5")
            && e[0].contains("_IOLog")
            && e[0].contains("X86_64_RELOC_GOT_LOAD"),
        "{report}"
    );

    // External relocation against a defined symbol.
    let mut bytes = b.bytes.clone();
    let info = 1 | (1 << 24) | (2 << 25) | (1 << 27) | (2 << 28);
    put32(&mut bytes, b.extrel_off + 4, info);
    let report = run(&bytes);
    assert!(
        errors(&report, "relocations")[0].contains("binds _prx_start, which is defined"),
        "{report}"
    );
}

#[test]
fn kpi_symbols() {
    // _prx_start calls each in turn (only undefined[0] is called; add calls).
    let mut spec = Spec::good(
        Arch::X86_64,
        &[
            "_IOLog",
            "_cs_identity_get",
            "_not_a_kernel_function",
            "_prx_panic_path_survived_optimisation",
        ],
    );
    spec.code = vec![
        0x55, 0xe8, 0, 0, 0, 0, 0x5d, 0xc3, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc,
        0xcc, // _prx_start
        0xe8, 0, 0, 0, 0, 0xe8, 0, 0, 0, 0, 0x31, 0xc0, 0xc3, 0xcc, 0xcc, 0xcc, // _prx_stop
        0xe8, 0, 0, 0, 0, 0xe8, 0, 0, 0, 0, 0xc3, // _helper
    ];
    spec.functions.push(("_helper".into(), 0x20));
    spec.calls = vec![(2, 0), (0x11, 1), (0x16, 2), (0x21, 3), (0x26, 2)];
    let report = run(&build(&spec).bytes);
    assert!(!report.is_ok());
    let private = errors(&report, "kpi-private");
    assert_eq!(private.len(), 1, "{report}");
    assert!(private[0].contains("_cs_identity_get is exported only by com.apple.kpi.private"));
    assert!(private[0].contains("referenced from _prx_stop"));
    let unknown = errors(&report, "kpi-symbol");
    assert_eq!(unknown.len(), 1, "{report}");
    assert!(unknown[0].contains("_not_a_kernel_function is exported by no KPI set for x86_64"));
    assert!(unknown[0].contains("referenced from _helper, _prx_stop"));
    let panic = errors(&report, "panic-path");
    assert_eq!(panic.len(), 1, "{report}");
    assert!(
        panic[0].contains("a panic path survived optimisation, reachable from _helper;"),
        "{}",
        panic[0]
    );
    assert!(panic[0].contains("checked_*"));
    assert_eq!(report.slices[0].kpi_sets.len(), 1);
    assert_eq!(report.findings.len(), 3, "{report}");
}

#[test]
fn aliases_at_one_address_report_the_external_name() {
    let (code, mut functions) = assemble(".globl _f\n_f:\nmovaps %xmm0, (%rdi)\nretq\n");
    let mut spec = Spec::good(Arch::X86_64, &[]);
    spec.code = code;
    functions.push(("_f_alias".into(), 0));
    spec.functions = functions;
    let mut b = build(&spec);
    // Make `_f_alias` (symbol #2) a local: it must not win over the external `_f`.
    b.bytes[b.symoff + 2 * 16 + 4] = 0x0e;
    let report = run(&b.bytes);
    let e = errors(&report, "sse");
    assert_eq!(e.len(), 1, "{report}");
    assert!(e[0].contains("_f+0x0 (0x400)"), "{report}");
}

#[test]
fn symbol_table_rules() {
    let b = good(&["_IOLog"]);
    let dysymtab = b.cmd_offsets[4];
    // nextdefsym one too small: _prx_stop lands in the undefined range.
    let mut bytes = b.bytes.clone();
    put32(&mut bytes, dysymtab + 20, 2);
    let report = run(&bytes);
    assert!(
        errors(&report, "symbols")[0].contains("do not tile"),
        "{report}"
    );
    put32(&mut bytes, dysymtab + 24, 2);
    put32(&mut bytes, dysymtab + 28, 2);
    let report = run(&bytes);
    assert!(
        errors(&report, "symbols")[0].contains("_prx_stop (#2, n_type 0xf)"),
        "{report}"
    );

    // n_desc not 0xfe00: a warning only.
    let mut bytes = b.bytes.clone();
    bytes[b.symoff + 3 * 16 + 7] = 0;
    let report = run(&bytes);
    assert!(report.is_ok(), "{report}");
    let w = messages(&report, "symbols");
    assert!(
        w[0].starts_with("warning[symbols] x86_64: undefined symbol _IOLog has n_desc 0x0000"),
        "{report}"
    );

    // A common symbol.
    let mut bytes = b.bytes.clone();
    put64(&mut bytes, b.symoff + 3 * 16 + 8, 16);
    let report = run(&bytes);
    assert!(
        errors(&report, "symbols")[0].contains("_IOLog is a common symbol"),
        "{report}"
    );
}

#[test]
fn kmod_info_rules() {
    let b = good(&["_IOLog"]);
    let kmod = b.kmod_addr as usize;
    let mut bytes = b.bytes.clone();
    put32(&mut bytes, kmod + 8, 2);
    bytes[kmod + 16..kmod + 80].fill(b'a');
    bytes[kmod + 80] = 0x07;
    let report = run(&bytes);
    let e = errors(&report, "kmod-info");
    assert_eq!(e.len(), 3, "{report}");
    assert!(e[0].contains("info_version is 2"));
    assert!(e[1].contains("name is not NUL-terminated"));
    assert!(e[2].contains("version contains the non-printable byte 0x07"));
    assert_eq!(report.slices[0].kmod_name, None);

    // start not relocated, stop into the middle of a function (warning) .
    let mut bytes = b.bytes.clone();
    put32(&mut bytes, b.locrel_off, (b.kmod_addr + 100) as u32);
    put64(&mut bytes, kmod + 188, b.text_addr + 1);
    let report = run(&bytes);
    let e = errors(&report, "kmod-info");
    assert!(
        e[0].contains("start (0x10b4) has no local relocation"),
        "{report}"
    );
    assert!(
        messages(&report, "kmod-info")
            .iter()
            .any(|m| m.starts_with("warning") && m.contains("_prx_start+0x1")),
        "{report}"
    );

    // No _kmod_info at all (renamed).
    let mut bytes = b.bytes.clone();
    let strtab_pos = bytes.windows(10).rposition(|w| w == b"_kmod_info").unwrap();
    bytes[strtab_pos + 1] = b'K';
    let report = run(&bytes);
    assert!(
        errors(&report, "kmod-info")[0].contains("_kmod_info is missing"),
        "{report}"
    );
}

/// Runs an LLVM tool, failing (not skipping) the test if it is not installed.
fn llvm_tool(tool: &str, args: &[&str], input: Option<&Path>) -> std::process::Output {
    let mut cmd = Command::new(tool);
    cmd.args(args);
    if let Some(input) = input {
        cmd.arg(input);
    }
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("{tool} is required by this test and could not be run ({e}): install llvm-19 and clang-19 (apt-get install llvm-19 clang-19)")
    });
    assert!(
        out.status.success(),
        "{tool} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Assembles AT&T x86_64 assembly with llvm-mc-19; returns `__text` and its symbols.
fn assemble(asm: &str) -> (Vec<u8>, Vec<(String, u64)>) {
    use object::{Object, ObjectSection, ObjectSymbol};
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("t.s");
    let obj = dir.path().join("t.o");
    std::fs::write(&src, asm).unwrap();
    llvm_tool(
        "llvm-mc-19",
        &[
            "-triple",
            "x86_64-apple-macos10.13",
            "-filetype=obj",
            "-o",
            obj.to_str().unwrap(),
        ],
        Some(&src),
    );
    let data = std::fs::read(&obj).unwrap();
    let file = object::File::parse(&*data).unwrap();
    let text = file.section_by_name("__text").unwrap();
    let code = text.data().unwrap().to_vec();
    let mut syms: Vec<(String, u64)> = file
        .symbols()
        .filter(|s| s.section_index() == Some(text.index()))
        .map(|s| (s.name().unwrap().to_string(), s.address() - text.address()))
        .collect();
    syms.sort_by_key(|s| s.1);
    (code, syms)
}

fn kext_with_code(asm: &str) -> Report {
    let (code, functions) = assemble(asm);
    let mut spec = Spec::good(Arch::X86_64, &[]);
    spec.code = code;
    spec.start = functions[0].1;
    spec.stop = functions[0].1;
    spec.functions = functions;
    run(&build(&spec).bytes)
}

#[test]
fn sse_x87_mmx_avx_are_rejected() {
    let report = kext_with_code(
        "
        .globl _prx_start
_prx_start:
        xorl %eax, %eax
        retq
        .globl _uses_sse
_uses_sse:
        movaps %xmm0, (%rdi)
        retq
        .globl _uses_x87
_uses_x87:
        fldl (%rdi)
        fstpl 8(%rdi)
        retq
        .globl _uses_mmx
_uses_mmx:
        movq %mm0, %mm1
        emms
        retq
        .globl _uses_avx
_uses_avx:
        vaddps %ymm1, %ymm2, %ymm3
        ldmxcsr (%rdi)
        retq
        ",
    );
    let e = errors(&report, "sse");
    assert_eq!(e.len(), 7, "{report}");
    assert!(
        e[0].contains("_uses_sse+0x0 (0x403): `movaps [rdi],xmm0` uses SSE"),
        "{}",
        e[0]
    );
    assert!(e[0].contains("does not save FPU/SIMD state") && e[0].contains("soft-float"));
    assert!(
        e[1].contains("_uses_x87+0x0") && e[1].contains("fld") && e[1].contains("x87"),
        "{}",
        e[1]
    );
    assert!(
        e[2].contains("_uses_x87+0x2") && e[2].contains("fstp"),
        "{}",
        e[2]
    );
    assert!(
        e[3].contains("_uses_mmx") && e[3].contains("MMX"),
        "{}",
        e[3]
    );
    assert!(e[4].contains("emms") && e[4].contains("MMX"), "{}", e[4]);
    assert!(
        e[5].contains("_uses_avx") && e[5].contains("vaddps") && e[5].contains("AVX"),
        "{}",
        e[5]
    );
    assert!(e[6].contains("ldmxcsr") && e[6].contains("SSE"), "{}", e[6]);
}

#[test]
fn sse_findings_are_capped_per_function() {
    let body = "movaps %xmm0, (%rdi)\n".repeat(9);
    let report = kext_with_code(&format!(".globl _f\n_f:\n{body}retq\n"));
    let e = errors(&report, "sse");
    assert_eq!(e.len(), 6, "{report}");
    assert!(
        e[5].contains("_f: 4 more FPU/SIMD instructions not listed"),
        "{}",
        e[5]
    );
}

#[test]
fn decoding_follows_symbols_so_data_is_not_code() {
    // `_table` holds bytes that, decoded from the end of `_f`, would swallow the
    // start of `_g`; decoding from `_g`'s symbol sees only integer code.
    let report = kext_with_code(
        "
        .globl _f
_f:
        retq
        .globl _table
_table:
        .byte 0x0f, 0x28
        .globl _g
_g:
        xorl %eax, %eax
        retq
        ",
    );
    assert!(report.is_ok(), "{report}");
    // Without symbols the whole section is decoded linearly and the bytes
    // 0f 28 c0 decode as `movaps xmm0, xmm0`.
    let (code, _) = assemble(".byte 0x0f, 0x28, 0xc0\nretq\n");
    let mut spec = Spec::good(Arch::X86_64, &[]);
    spec.code = code;
    spec.functions.clear();
    spec.stop = 0;
    let report = run(&build(&spec).bytes);
    let e = errors(&report, "sse");
    assert!(
        e[0].contains("__TEXT,__text+0x0") && e[0].contains("movaps"),
        "{report}"
    );
}

#[test]
fn integer_code_from_llvm_is_clean() {
    let report = kext_with_code(
        "
        .globl _prx_start
_prx_start:
        pushq %rbp
        movq %rsp, %rbp
        imulq %rsi, %rdi
        leaq 8(%rdi,%rsi,4), %rax
        popcntq %rax, %rax
        rep movsb
        popq %rbp
        retq
        ",
    );
    assert!(report.findings.is_empty(), "{report}");
}

#[test]
fn universal_files() {
    let x = good(&["_IOLog"]).bytes;
    let a = build(&Spec::good(Arch::Arm64e, &["_IOLog"])).bytes;
    let both = fat(&[(0x0100_0007, 3, 12, &x), (0x0100_000c, 0xC000_0002, 14, &a)]);
    let report = run(&both);
    assert_eq!(report.slices.len(), 2);
    assert_eq!(report.slices[1].arch, Some(Arch::Arm64e));
    assert_eq!(
        report.slices[1].kmod_name.as_deref(),
        Some("com.example.prx.test")
    );
    // The builder's arm64e image has the x86_64 layout (no chained fixups, no
    // split-seg info, no __TEXT_EXEC): the arm64e rules reject exactly that.
    // Clean universal files are in `tests_arm64e` (linked C kexts).
    assert!(
        report
            .findings
            .iter()
            .all(|f| f.arch == Some(Arch::Arm64e) && f.severity == Severity::Error),
        "{report}"
    );
    let arm64e: Vec<_> = report
        .findings
        .iter()
        .map(|f| (f.check, f.message.split(':').next().unwrap_or("")))
        .collect();
    assert_eq!(
        arm64e,
        [
            ("load-commands", "LC_DYLD_CHAINED_FIXUPS is missing"),
            ("load-commands", "LC_SEGMENT_SPLIT_INFO is missing"),
            (
                "segments",
                "segments are [__TEXT, __DATA, __LINKEDIT]; an arm64e kext has exactly [__TEXT, \
                 __TEXT_EXEC, __DATA, __DATA_CONST, __LINKEDIT] in that order"
            ),
            (
                "segments",
                "segment __TEXT has initprot 0x5 maxprot 0x5; on arm64e it must be r-- (0x1) for \
                 both"
            ),
        ],
        "{report}"
    );

    // arm64e cpusubtype as LLVM writes it.
    let mut a2 = a.clone();
    put32(&mut a2, 8, 0x8000_0002);
    let report = run(&fat(&[
        (0x0100_0007, 3, 12, &x),
        (0x0100_000c, 0x8000_0002, 14, &a2),
    ]));
    assert!(
        errors(&report, "header")[0].contains("0x80000002 is what LLVM"),
        "{report}"
    );
    // The fat header's subtype check does not hide the slice's own header check.
    assert_eq!(errors(&report, "header").len(), 1, "{report}");

    // Duplicate slice, foreign slice, small alignment, header/slice subtype mismatch.
    let report = run(&fat(&[(0x0100_0007, 3, 12, &x), (0x0100_0007, 3, 12, &x)]));
    assert!(
        errors(&report, "fat")[0].contains("a second x86_64 slice"),
        "{report}"
    );
    // A foreign (i386) slice is ignored with a note, as the kernel ignores it.
    let report = run(&fat(&[(0x0100_0007, 3, 12, &x), (7, 3, 12, &x)]));
    assert!(report.is_ok(), "{report}");
    assert!(
        messages(&report, "fat")[0].starts_with("info[fat]: slice 1 has cputype 0x00000007"),
        "{report}"
    );
    let report = run(&fat(&[
        (0x0100_0007, 3, 12, &x),
        (0x0100_000c, 0xC000_0002, 12, &a),
    ]));
    assert!(
        errors(&report, "fat")[0].contains("arm64e slice alignment is 2^12"),
        "{report}"
    );
    let report = run(&fat(&[(0x0100_000c, 0xC000_0002, 14, &x)]));
    assert!(
        errors(&report, "fat")[0]
            .contains("says this slice is arm64e but its Mach-O header says x86_64"),
        "{report}"
    );

    // cpusubtype disagreeing between the fat header and the slice.
    let report = run(&fat(&[(0x0100_0007, 0x8000_0003, 12, &x)]));
    assert!(
        errors(&report, "fat")[0]
            .contains("cpusubtype 0x80000003 but the slice's Mach-O header has 0x3"),
        "{report}"
    );

    // A slice offset not aligned to its page size.
    let mut bad = fat(&[(0x0100_0007, 3, 12, &x)]);
    bad[16..20].copy_from_slice(&0x4100_u32.to_be_bytes());
    let report = run(&bad);
    let e = errors(&report, "fat");
    assert!(
        e.iter()
            .any(|m| m
                .contains("error[fat] x86_64: x86_64 slice offset 0x4100 is not aligned to 2^12")),
        "{report}"
    );

    // Truncated universal header.
    let report = run(&both[..30]);
    assert!(
        errors(&report, "fat")[0].contains("cannot hold them"),
        "{report}"
    );
}

/// A small deterministic PRNG for the corruption test.
fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn truncated_or_corrupt_input_never_panics() {
    let x = good(&["_IOLog", "_cs_identity_get"]).bytes;
    let a = build(&Spec::good(Arch::Arm64e, &["_IOLog"])).bytes;
    for len in 0..x.len() {
        let report = run(&x[..len]);
        assert!(!report.is_ok(), "prefix of {len} bytes verified ok");
    }
    let both = fat(&[(0x0100_0007, 3, 12, &x), (0x0100_000c, 0xC000_0002, 14, &a)]);
    for len in (0..both.len()).step_by(7) {
        let _ = run(&both[..len]);
    }
    let mut state = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..3000 {
        let mut bytes = x.clone();
        for _ in 0..1 + xorshift(&mut state) % 4 {
            // Bias towards the header, load commands, kmod_info and __LINKEDIT.
            let pos = match xorshift(&mut state) % 3 {
                0 => xorshift(&mut state) as usize % 0x240,
                1 => 0x1000 + xorshift(&mut state) as usize % 0x100,
                _ => 0x2000 + xorshift(&mut state) as usize % (x.len() - 0x2000),
            };
            bytes[pos] ^= 1 << (xorshift(&mut state) % 8);
        }
        let _ = run(&bytes);
    }
    // Extreme values in every header/load-command field and in the symbol table.
    let b = good(&["_IOLog"]);
    let fields = (0..0x240).chain(b.locrel_off..b.bytes.len() - 8).step_by(4);
    for off in fields {
        for v in [u64::MAX, 0x8000_0000_0000_0000, 0xffff_fff0] {
            let mut bytes = b.bytes.clone();
            put64(&mut bytes, off, v);
            let _ = run(&bytes);
        }
    }
    assert!(run(&[]).findings[0].message.contains("too short"));
}

#[test]
fn bundles_and_plist_cross_check() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("Prx.kext");
    std::fs::create_dir_all(bundle.join("Contents/MacOS")).unwrap();
    std::fs::write(bundle.join("Contents/MacOS/Prx"), good(&["_IOLog"]).bytes).unwrap();
    // Without Info.plist: the only file in Contents/MacOS.
    let report = verify_path(&bundle, tables()).unwrap();
    assert!(report.is_ok(), "{report}");
    let plist = |id: &str| {
        format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0"><dict>
<key>CFBundleExecutable</key><string>Prx</string>
<key>CFBundleIdentifier</key><string>{id}</string>
<key>CFBundleVersion</key><string>1.2.3</string>
</dict></plist>"#
        )
    };
    std::fs::write(
        bundle.join("Contents/Info.plist"),
        plist("com.example.prx.test"),
    )
    .unwrap();
    assert!(verify_path(&bundle, tables()).unwrap().is_ok());
    std::fs::write(
        bundle.join("Contents/Info.plist"),
        plist("com.example.other"),
    )
    .unwrap();
    let report = verify_path(&bundle, tables()).unwrap();
    assert!(errors(&report, "bundle")[0].contains("kmod_info.name is \"com.example.prx.test\" but Info.plist CFBundleIdentifier is \"com.example.other\""), "{report}");
    // A plain file path and a missing path.
    assert!(
        verify_path(&bundle.join("Contents/MacOS/Prx"), tables())
            .unwrap()
            .is_ok()
    );
    let err = verify_path(&dir.path().join("nope"), tables()).unwrap_err();
    assert!(err.to_string().contains("cannot read"), "{err}");
    std::fs::write(bundle.join("Contents/Info.plist"), "garbage").unwrap();
    let err = verify_path(&bundle, tables()).unwrap_err();
    assert!(matches!(err, VerifyError::Bundle { .. }));
    let e = err.to_string();
    assert!(
        e.contains("Contents/Info.plist: it is not a property list"),
        "{e}"
    );
    std::fs::write(
        bundle.join("Contents/Info.plist"),
        "<?xml version=\"1.0\"?>\n<plist version=\"1.0\"><dict><key>A</key>",
    )
    .unwrap();
    let e = verify_path(&bundle, tables()).unwrap_err().to_string();
    assert!(e.contains("Contents/Info.plist: parse error: "), "{e}");
    std::fs::write(bundle.join("Contents/Info.plist"), "").unwrap();
    let e = verify_path(&bundle, tables()).unwrap_err().to_string();
    assert!(e.contains("Contents/Info.plist: the file is empty"), "{e}");
}

/// Appends an `LC_DATA_IN_CODE` command covering `[fileoff, fileoff + len)`,
/// its one entry stored in the header padding (room the builder leaves).
fn add_data_in_code(bytes: &mut [u8], fileoff: u32, len: u16) {
    let ncmds = u32::from_le_bytes(bytes[16..20].try_into().unwrap());
    let sizeofcmds = u32::from_le_bytes(bytes[20..24].try_into().unwrap());
    let at = 32 + sizeofcmds as usize;
    let entry_at = (at + 16).div_ceil(8) * 8;
    put32(bytes, at, 0x29); // LC_DATA_IN_CODE
    put32(bytes, at + 4, 16);
    put32(bytes, at + 8, entry_at as u32);
    put32(bytes, at + 12, 8);
    put32(bytes, entry_at, fileoff);
    bytes[entry_at + 4..entry_at + 6].copy_from_slice(&len.to_le_bytes());
    bytes[entry_at + 6..entry_at + 8].copy_from_slice(&2u16.to_le_bytes()); // DICE_KIND_JUMP_TABLE32
    put32(bytes, 16, ncmds + 1);
    put32(bytes, 20, sizeofcmds + 16);
}

/// A jump table of `db f1 ff ff` entries inside a function decodes as `fcomi`
/// (x87) if taken for code; with the data-in-code entry the compiler's linker
/// writes for it, it is not decoded, while the real `movsd` before it still is.
#[test]
fn jump_tables_in_code_are_not_decoded_but_real_sse_is() {
    let (code, functions) = assemble(
        "
        .globl _prx_start
_prx_start:
        xorl %eax, %eax
        retq
        .globl _dispatch
_dispatch:
        movsd (%rdi), %xmm0
        jmpq *%rax
        .byte 0xdb, 0xf1, 0xff, 0xff, 0xdb, 0xf1, 0xff, 0xff
        retq
        ",
    );
    let mut spec = Spec::good(Arch::X86_64, &[]);
    let table = code
        .windows(4)
        .position(|w| w == [0xdb, 0xf1, 0xff, 0xff])
        .unwrap() as u64;
    spec.code = code;
    spec.start = functions[0].1;
    spec.stop = functions[0].1;
    spec.functions = functions;
    let built = build(&spec);
    let report = run(&built.bytes);
    let e = errors(&report, "sse");
    // Without data-in-code the table is taken for x87 code.
    assert!(e.iter().any(|m| m.contains("fcomi")), "{report}");
    let mut bytes = built.bytes.clone();
    add_data_in_code(&mut bytes, (built.text_addr + table) as u32, 8);
    let report = run(&bytes);
    let e = errors(&report, "sse");
    assert_eq!(e.len(), 1, "{report}");
    assert!(
        e[0].contains("_dispatch+0x0") && e[0].contains("movsd") && e[0].contains("SSE"),
        "{report}"
    );
    // For a third-party kext the same finding is a warning: no loader refuses it.
    let history = crate::kpi::KpiHistory::builtin();
    let report = verify_with(&bytes, &Options::third_party(tables(), history));
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.by_check("sse").count(), 1, "{report}");
}

/// Third-party policy: a symbol of older macOS releases' KPI lists and a vtable
/// pad slot are accounted for (noted), where prx's rules make them errors.
#[test]
fn other_releases_and_pad_slots_under_both_policies() {
    let b = good(&["_StartIOKit", "__ZN9IOService19_RESERVEDIOService0Ev"]);
    let strict = run(&b.bytes);
    assert_eq!(errors(&strict, "kpi-symbol").len(), 2, "{strict}");
    let history = crate::kpi::KpiHistory::builtin();
    let report = verify_with(&b.bytes, &Options::third_party(tables(), history));
    assert!(report.is_ok(), "{report}");
    let notes = messages(&report, "kpi-symbol");
    assert!(
        notes
            .iter()
            .any(|m| m.starts_with("info[kpi-symbol]")
                && m.contains("_StartIOKit (macOS 10.13–10.15)")),
        "{report}"
    );
    assert!(
        notes
            .iter()
            .any(|m| m.contains("vtable pad slots (__ZN9IOService19_RESERVEDIOService0Ev)")),
        "{report}"
    );
    assert!(report.slices[0].kpi_sets.contains("com.apple.kpi.iokit"));
}
