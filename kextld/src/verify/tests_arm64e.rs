//! Unit tests of the arm64e rules: a C kext compiled by clang-19 for
//! arm64e-apple-macos11 (-mkernel), linked with `link_buffers`, verified clean;
//! then corrupted byte by byte. clang-19 is required: these tests fail, not
//! skip, without it.
//!
//! The corruptions locate their targets through the symbol table and a small
//! test-local reading of the linkedit payloads (not the verifier's decoder).

use std::path::Path;
use std::process::Command;

use super::image::{Image, u32_at, u64_at};
use super::*;
use crate::MinOs;
use crate::kpi::KpiTables;

const MACOS11: MinOs = MinOs {
    major: 11,
    minor: 0,
};
const MACOS12: MinOs = MinOs {
    major: 12,
    minor: 0,
};

const SOURCE: &str = r#"
typedef int kern_return_t;
typedef struct kmod_info kmod_info_t;
typedef kern_return_t kmod_start_func_t(kmod_info_t *ki, void *data);
#pragma pack(push, 4)
struct kmod_info {
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
    kmod_start_func_t *start;
    kmod_start_func_t *stop;
};
#pragma pack(pop)

extern int printf(const char *fmt, ...);
extern void bzero(void *s, unsigned long n);
#ifdef PANIC
extern void prx_panic_path_survived_optimisation(void);
#endif
#ifdef NOT_KPI
extern int not_a_kpi_variable;
extern int not_a_kpi_function(void);
#endif

static int counter;
static char buffer[256];

__attribute__((noinline)) static int helper(int x) {
#ifdef PANIC
    if (x > 1000) prx_panic_path_survived_optimisation();
#endif
    return printf("helper %d\n", x) + counter;
}
__attribute__((noinline)) static int other(int x) { return x * 3; }

static int (*const table[])(int) = { helper, other };
static const char *const names[] = { "helper", "other" };
/* A plain bind in data: a pointer to a kernel function. */
int (*printf_ptr)(const char *, ...) = printf;

__attribute__((visibility("default"))) int ckext_call(int i) {
    return table[i & 1](i) + names[i & 1][0];
}

static kern_return_t ckext_start(kmod_info_t *ki, void *d) {
    (void)d;
    bzero(buffer, sizeof buffer);
#ifdef NOT_KPI
    counter = not_a_kpi_variable;
#endif
    printf("ckext start %s\n", ki->name);
    return ckext_call(counter);
}

static kern_return_t ckext_stop(kmod_info_t *ki, void *d) {
    (void)ki;
    (void)d;
#ifdef NOT_KPI
    return not_a_kpi_function();
#else
    printf("ckext stop\n");
    return 0;
#endif
}

__attribute__((visibility("default"))) kmod_info_t kmod_info = {
    0, 1, 0xFFFFFFFF, "com.example.ckext64", "2.0.1", -1, 0, 0, 0, 0, ckext_start, ckext_stop,
};
"#;

/// Compiles [`SOURCE`] with clang-19 for `target` with `-D` flags.
fn compile(target: &str, defines: &[&str]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("k.c");
    let obj = dir.path().join("k.o");
    std::fs::write(&src, SOURCE).unwrap();
    let mut cmd = Command::new("clang-19");
    cmd.args(["-target", target, "-mkernel", "-fno-builtin", "-O2", "-c"]);
    for d in defines {
        cmd.arg(format!("-D{d}"));
    }
    cmd.arg(&src).arg("-o").arg(&obj);
    let out = cmd.output().unwrap_or_else(|e| {
        panic!(
            "clang-19 is required by this test and could not be run ({e}): apt-get install clang-19"
        )
    });
    assert!(
        out.status.success(),
        "clang-19 failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(Path::new(&obj)).unwrap()
}

fn link(arch: Arch, min_os: MinOs, obj: Vec<u8>) -> Vec<u8> {
    crate::link::link_buffers(arch, min_os, 0, &[("k.o".to_string(), obj)])
        .unwrap_or_else(|e| panic!("linking for {arch}: {e}"))
        .bytes
}

fn arm64e_kext(min_os: MinOs, defines: &[&str]) -> Vec<u8> {
    link(
        Arch::Arm64e,
        min_os,
        compile("arm64e-apple-macos11", defines),
    )
}

/// The good macOS 11 image, compiled and linked once.
fn good() -> Vec<u8> {
    static GOOD: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    GOOD.get_or_init(|| arm64e_kext(MACOS11, &[])).clone()
}

fn run(bytes: &[u8]) -> Report {
    verify(bytes, KpiTables::builtin())
}

fn errors(report: &Report, check: &str) -> Vec<String> {
    report
        .by_check(check)
        .filter(|f| f.severity == Severity::Error)
        .map(|f| f.to_string())
        .collect()
}

fn has_error(report: &Report, check: &str, text: &str) -> bool {
    errors(report, check).iter().any(|m| m.contains(text))
}

fn put32(bytes: &mut [u8], off: usize, v: u32) {
    bytes[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

fn get64(bytes: &[u8], off: usize) -> u64 {
    u64_at(bytes, off as u64).unwrap()
}

fn put64(bytes: &mut [u8], off: usize, v: u64) {
    bytes[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

/// The address (== file offset) of a defined symbol.
fn symbol(bytes: &[u8], name: &str) -> usize {
    let image = Image::parse(bytes).unwrap();
    let s = image
        .symbols
        .iter()
        .find(|s| s.name == name && !s.is_undefined())
        .unwrap_or_else(|| panic!("no symbol {name}"));
    s.n_value as usize
}

/// File offset of the load command `cmd` and its (dataoff, datasize).
fn linkedit_command(bytes: &[u8], cmd: u32) -> (usize, usize, usize) {
    let image = Image::parse(bytes).unwrap();
    let lc = image.commands.iter().find(|c| c.cmd == cmd).unwrap();
    let off = lc.offset;
    (
        off as usize,
        u32_at(bytes, off + 8).unwrap() as usize,
        u32_at(bytes, off + 12).unwrap() as usize,
    )
}

/// File offsets of the `page_start[]` entries that start a chain.
fn chain_starts(bytes: &[u8]) -> Vec<usize> {
    let (_, data, _) = linkedit_command(bytes, 0x8000_0034);
    let r32 = |o: usize| u32_at(bytes, o as u64).unwrap() as usize;
    let starts = data + r32(data + 4);
    let mut out = Vec::new();
    for i in 0..r32(starts) {
        let info = r32(starts + 4 + 4 * i);
        if info == 0 {
            continue;
        }
        let seg = starts + info;
        let pages = u16::from_le_bytes([bytes[seg + 20], bytes[seg + 21]]) as usize;
        for p in 0..pages {
            let at = seg + 22 + 2 * p;
            if u16::from_le_bytes([bytes[at], bytes[at + 1]]) != 0xFFFF {
                out.push(at);
            }
        }
    }
    out
}

fn uleb(p: &[u8], pos: &mut usize) -> u64 {
    let (mut v, mut shift) = (0u64, 0);
    loop {
        let b = p[*pos];
        *pos += 1;
        v |= u64::from(b & 0x7F) << shift;
        if b & 0x80 == 0 {
            return v;
        }
        shift += 7;
    }
}

fn put_uleb(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let b = (v & 0x7F) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

/// Rewrites the split-seg payload without the records `drop` selects
/// (from section, from offset, kind); returns how many were dropped.
fn drop_split_records(bytes: &mut [u8], mut drop: impl FnMut(u64, u64, u64) -> bool) -> usize {
    let (_, data, size) = linkedit_command(bytes, 0x1e);
    let p = bytes[data..data + size].to_vec();
    assert_eq!(p[0], 0x7F);
    let mut pos = 1;
    // (from, to) → to_off → kind → from offsets.
    type Groups = Vec<((u64, u64), Vec<(u64, Vec<(u64, Vec<u64>)>)>)>;
    let mut groups: Groups = Vec::new();
    let mut dropped = 0;
    for _ in 0..uleb(&p, &mut pos) {
        let (from, to, n) = (uleb(&p, &mut pos), uleb(&p, &mut pos), uleb(&p, &mut pos));
        let mut tos = Vec::new();
        let mut to_off = 0;
        for _ in 0..n {
            to_off += uleb(&p, &mut pos);
            let mut kinds = Vec::new();
            for _ in 0..uleb(&p, &mut pos) {
                let kind = uleb(&p, &mut pos);
                let mut offs = Vec::new();
                let mut off = 0;
                for _ in 0..uleb(&p, &mut pos) {
                    off += uleb(&p, &mut pos);
                    if drop(from, off, kind) {
                        dropped += 1;
                    } else {
                        offs.push(off);
                    }
                }
                if !offs.is_empty() {
                    kinds.push((kind, offs));
                }
            }
            if !kinds.is_empty() {
                tos.push((to_off, kinds));
            }
        }
        if !tos.is_empty() {
            groups.push(((from, to), tos));
        }
    }
    let mut out = vec![0x7F];
    put_uleb(&mut out, groups.len() as u64);
    for ((from, to), tos) in &groups {
        put_uleb(&mut out, *from);
        put_uleb(&mut out, *to);
        put_uleb(&mut out, tos.len() as u64);
        let mut last_to = 0;
        for (to_off, kinds) in tos {
            put_uleb(&mut out, to_off - last_to);
            last_to = *to_off;
            put_uleb(&mut out, kinds.len() as u64);
            for (kind, offs) in kinds {
                put_uleb(&mut out, *kind);
                put_uleb(&mut out, offs.len() as u64);
                let mut last = 0;
                for o in offs {
                    put_uleb(&mut out, o - last);
                    last = *o;
                }
            }
        }
    }
    assert!(out.len() <= size);
    out.resize(size, 0);
    bytes[data..data + size].copy_from_slice(&out);
    dropped
}

/// 1-based ordinal and address of a section.
fn section(bytes: &[u8], seg: &str, sect: &str) -> (u64, u64) {
    let image = Image::parse(bytes).unwrap();
    let (i, s) = image
        .sections
        .iter()
        .enumerate()
        .find(|(_, s)| s.segname == seg && s.sectname == sect)
        .unwrap();
    (i as u64 + 1, s.addr)
}

#[test]
fn good_arm64e_kexts_verify_clean() {
    for (min_os, bytes) in [(MACOS11, good()), (MACOS12, arm64e_kext(MACOS12, &[]))] {
        let report = run(&bytes);
        // The fixture's `_table` of function pointers is plain data (clang-19
        // signs no data pointers without -fptrauth flags): reported, and nothing else.
        let (ptrauth, rest): (Vec<_>, Vec<_>) =
            report.findings.iter().partition(|f| f.check == "ptrauth");
        assert!(rest.is_empty(), "macOS {min_os:?}: {report}");
        assert_eq!(ptrauth.len(), 1, "{report}");
        assert_eq!(ptrauth[0].severity, Severity::Warning);
        assert!(
            ptrauth[0]
                .message
                .starts_with("2 plain (unsigned) rebases point into executable code: _table (")
                && ptrauth[0].message.contains("→ _helper (")
                && ptrauth[0].message.contains("_table+0x8 ("),
            "{report}"
        );
        let s = &report.slices[0];
        assert_eq!(s.arch, Some(Arch::Arm64e));
        assert_eq!(s.kmod_name.as_deref(), Some("com.example.ckext64"));
        assert_eq!(s.kmod_version.as_deref(), Some("2.0.1"));
        assert_eq!(s.undefined, ["_bzero", "_printf"]);
        assert_eq!(
            s.kpi_sets.iter().map(String::as_str).collect::<Vec<_>>(),
            ["com.apple.kpi.libkern"]
        );
    }
}

#[test]
fn universal_c_kext_verifies_clean() {
    let x = link(
        Arch::X86_64,
        MinOs::X86_64_DEFAULT,
        compile("x86_64-apple-macos10.13", &[]),
    );
    let fat = crate::fat::write(&[(Arch::X86_64, &x), (Arch::Arm64e, &good())]).unwrap();
    let report = run(&fat);
    assert!(
        report.findings.iter().all(|f| f.check == "ptrauth"),
        "{report}"
    );
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.slices.len(), 2);
    for (slice, arch) in report.slices.iter().zip(Arch::ALL) {
        assert_eq!(slice.arch, Some(arch));
        assert_eq!(slice.kmod_name.as_deref(), Some("com.example.ckext64"));
    }
}

#[test]
fn wrong_cpusubtype() {
    let mut bytes = good();
    put32(&mut bytes, 8, 0x8000_0002);
    let report = run(&bytes);
    assert_eq!(errors(&report, "header").len(), 1, "{report}");
    assert!(
        has_error(&report, "header", "0x80000002 is what LLVM"),
        "{report}"
    );
    put32(&mut bytes, 8, 2);
    assert!(has_error(&run(&bytes), "header", "exactly 0xc0000002"));
}

#[test]
fn flipped_chain_next_field() {
    // table[0] (a rebase to _helper) chains to table[1] 8 bytes on: next = 2.
    let table = symbol(&good(), "_table");
    let v = get64(&good(), table);
    assert_eq!((v >> 51) & 0x7FF, 2, "{v:#x}");

    // next → 0x7ff: the walk leaves the 4 KiB page.
    let mut bytes = good();
    put64(&mut bytes, table, v | (0x7FF << 51));
    let report = run(&bytes);
    assert!(
        has_error(&report, "chained-fixups", "leaves its 4 KiB page"),
        "{report}"
    );
    assert!(
        errors(&report, "chained-fixups")[0].contains("_table"),
        "{report}"
    );

    // next → 0: the chain ends early; table[1] is never slid.
    let mut bytes = good();
    put64(&mut bytes, table, v & !(0x7FF << 51));
    let report = run(&bytes);
    assert!(
        has_error(&report, "split-seg", "has no chained rebase there"),
        "{report}"
    );

    // next → 1: the next pointer would overlap this one.
    let mut bytes = good();
    put64(&mut bytes, table, (v & !(0x7FF << 51)) | (1 << 51));
    assert!(has_error(&run(&bytes), "chained-fixups", "would overlap"));
}

#[test]
fn misaligned_fixup() {
    let mut bytes = good();
    let starts = chain_starts(&bytes);
    assert!(!starts.is_empty());
    let at = starts[0];
    let start = u16::from_le_bytes([bytes[at], bytes[at + 1]]);
    bytes[at..at + 2].copy_from_slice(&(start + 2).to_le_bytes());
    let report = run(&bytes);
    assert!(
        has_error(&report, "chained-fixups", "is not 4-byte aligned"),
        "{report}"
    );
}

#[test]
fn corrupt_fixup_values() {
    let good = good();
    let table = symbol(&good, "_table");
    let v = get64(&good, table);
    // A rebase target outside the image, and a non-zero high8.
    let mut bytes = good.clone();
    put64(&mut bytes, table, (v & !((1 << 43) - 1)) | 0x7_0000_0000);
    assert!(has_error(
        &run(&bytes),
        "chained-fixups",
        "inside no section"
    ));
    let mut bytes = good.clone();
    put64(&mut bytes, table, v | (0x5A << 43));
    assert!(has_error(&run(&bytes), "chained-fixups", "high8 0x5a"));
    // A bind with an ordinal past the imports.
    let slot = symbol(&good, "_printf_ptr");
    let b = get64(&good, slot);
    assert_eq!(b >> 62, 1, "_printf_ptr is a plain bind: {b:#x}");
    let mut bytes = good.clone();
    put64(&mut bytes, slot, (b & !0xFFFF) | 9);
    assert!(has_error(
        &run(&bytes),
        "chained-fixups",
        "import ordinal 9"
    ));
    // Pointer format and import lib ordinal.
    let (_, data, _) = linkedit_command(&good, 0x8000_0034);
    let mut bytes = good.clone();
    let starts = data + u32_at(&good, data as u64 + 4).unwrap() as usize;
    let seg_count = u32_at(&good, starts as u64).unwrap() as usize;
    let first = (0..seg_count)
        .map(|i| u32_at(&good, (starts + 4 + 4 * i) as u64).unwrap() as usize)
        .find(|&o| o != 0)
        .unwrap();
    bytes[starts + first + 6] = 2; // DYLD_CHAINED_PTR_64
    assert!(has_error(
        &run(&bytes),
        "chained-fixups",
        "pointer_format 2"
    ));
    let imports = data + u32_at(&good, data as u64 + 8).unwrap() as usize;
    let mut bytes = good.clone();
    bytes[imports] = 1;
    assert!(has_error(&run(&bytes), "chained-fixups", "lib_ordinal 0x1"));
}

#[test]
fn dropped_split_seg_records() {
    let (text, text_addr) = section(&good(), "__TEXT_EXEC", "__text");
    // The first ADRP record of __text.
    let mut bytes = good();
    let mut first = None;
    drop_split_records(&mut bytes, |from, off, kind| {
        let hit = from == text && kind == 5 && first.is_none_or(|f| f == off);
        if hit {
            first = Some(off);
        }
        hit
    });
    let off = first.expect("an ADRP record in __text");
    let report = run(&bytes);
    let e = errors(&report, "split-seg");
    assert_eq!(e.len(), 1, "{report}");
    assert!(
        e[0].contains(&format!(
            "({:#x}) has no ARM64_ADRP split-seg record",
            text_addr + off
        )),
        "{report}"
    );
    // Named as function+offset.
    assert!(e[0].contains("ADRP at _"), "{report}");

    // Every BR26 record: each call to a stub is reported.
    let mut bytes = good();
    assert!(drop_split_records(&mut bytes, |_, _, kind| kind == 7) >= 3);
    let report = run(&bytes);
    assert!(
        has_error(&report, "split-seg", "to the stub at"),
        "{report}"
    );

    // The pointer records of table[]: rebases not covered.
    let mut bytes = good();
    let (data_const, dc_addr) = section(&good(), "__DATA_CONST", "__const");
    let table = symbol(&good(), "_table") as u64;
    let rel = table - dc_addr;
    assert_eq!(
        drop_split_records(&mut bytes, |from, off, kind| from == data_const
            && off == rel
            && kind == 2),
        1
    );
    assert!(has_error(
        &run(&bytes),
        "split-seg",
        "has no POINTER_64 split-seg record"
    ));
}

#[test]
fn kmod_start_stop_signing() {
    let good = good();
    let kmod = symbol(&good, "_kmod_info");
    let start = kmod + 180;
    let v = get64(&good, start);
    assert_eq!(v >> 62, 0b10, "start is an auth rebase: {v:#x}");
    assert_eq!((v >> 32) & 0xFFFF, 0xE4FE);

    // Unsigned: a plain rebase to the same target.
    let mut bytes = good.clone();
    put64(&mut bytes, start, (v & 0xFFFF_FFFF) | (v & (0x7FF << 51)));
    let report = run(&bytes);
    let e = errors(&report, "kmod-info");
    assert_eq!(e.len(), 1, "{report}");
    assert!(
        e[0].contains("_kmod_info.start") && e[0].contains("unsigned (plain) rebase"),
        "{report}"
    );
    assert!(
        has_error(&report, "split-seg", "THREADED_POINTER_64"),
        "{report}"
    );

    // Wrong discriminator, key, address diversity (on stop).
    let w = get64(&good, kmod + 188);
    for (patch, text) in [
        (
            (w & !(0xFFFF << 32)) | (0x1234 << 32),
            "discriminator 0x1234",
        ),
        (w | (2 << 49), "key DA"),
        (w | (1 << 48), "address diversity true"),
    ] {
        let mut bytes = good.clone();
        put64(&mut bytes, kmod + 188, patch);
        let report = run(&bytes);
        let e = errors(&report, "kmod-info");
        assert_eq!(e.len(), 1, "{text}: {report}");
        assert!(
            e[0].contains("_kmod_info.stop") && e[0].contains(text),
            "{report}"
        );
    }

    // Pointing outside __text (at kmod_info itself).
    let mut bytes = good.clone();
    put64(&mut bytes, start, (v & !0xFFFF_FFFF) | kmod as u64);
    assert!(has_error(
        &run(&bytes),
        "kmod-info",
        "not inside __TEXT_EXEC,__text"
    ));
}

#[test]
fn load_commands_segments_and_relocations() {
    let good = good();
    // LC_SEGMENT_SPLIT_INFO turned into LC_NOTE: not allowed, and missing.
    let (split_lc, _, _) = linkedit_command(&good, 0x1e);
    let mut bytes = good.clone();
    put32(&mut bytes, split_lc, 0x31);
    let report = run(&bytes);
    assert!(
        has_error(&report, "load-commands", "LC_NOTE at"),
        "{report}"
    );
    assert!(
        has_error(&report, "load-commands", "LC_SEGMENT_SPLIT_INFO is missing"),
        "{report}"
    );
    // No LC_DYLD_CHAINED_FIXUPS.
    let (fix_lc, _, _) = linkedit_command(&good, 0x8000_0034);
    let mut bytes = good.clone();
    put32(&mut bytes, fix_lc, 0x26); // LC_FUNCTION_STARTS: allowed, but the fixups are gone
    let report = run(&bytes);
    assert!(
        has_error(
            &report,
            "load-commands",
            "LC_DYLD_CHAINED_FIXUPS is missing"
        ),
        "{report}"
    );

    // Protections: __TEXT_EXEC writable, __DATA_CONST read-only.
    let image = Image::parse(&good).unwrap();
    let seg_cmd = |name: &str| {
        let k = image.segments.iter().position(|s| s.name == name).unwrap();
        image
            .commands
            .iter()
            .filter(|c| c.cmd == 0x19)
            .nth(k)
            .unwrap()
            .offset as usize
    };
    let mut bytes = good.clone();
    put32(&mut bytes, seg_cmd("__TEXT_EXEC") + 56, 7);
    put32(&mut bytes, seg_cmd("__TEXT_EXEC") + 60, 7);
    let report = run(&bytes);
    assert!(
        has_error(&report, "segments", "writable and executable"),
        "{report}"
    );
    assert!(
        has_error(
            &report,
            "segments",
            "__TEXT_EXEC has initprot 0x7 maxprot 0x7"
        ),
        "{report}"
    );
    let mut bytes = good.clone();
    put32(&mut bytes, seg_cmd("__DATA_CONST") + 56, 1);
    put32(&mut bytes, seg_cmd("__DATA_CONST") + 60, 1);
    let report = run(&bytes);
    assert!(
        has_error(&report, "chained-fixups", "read-only segment __DATA_CONST"),
        "{report}"
    );
    // Segment order: __DATA and __DATA_CONST swapped names.
    let mut bytes = good.clone();
    bytes[seg_cmd("__DATA") + 8..][..16].copy_from_slice(b"__DATA_CONST\0\0\0\0");
    assert!(has_error(&run(&bytes), "segments", "in that order"));

    // Classic relocations.
    let dysymtab = image.commands.iter().find(|c| c.cmd == 0xb).unwrap().offset as usize;
    let mut bytes = good.clone();
    put32(&mut bytes, dysymtab + 8 + 4 * 17, 1); // nlocrel
    assert!(has_error(
        &run(&bytes),
        "relocations",
        "1 local and 0 external relocations"
    ));
}

#[test]
fn kpi_findings_name_the_referencing_functions() {
    let report = run(&arm64e_kext(MACOS12, &["NOT_KPI"]));
    let e = errors(&report, "kpi-symbol");
    assert_eq!(e.len(), 2, "{report}");
    assert!(
        e[0].contains(
            "_not_a_kpi_function is exported by no KPI set for arm64e (referenced from _ckext_stop)"
        ),
        "{report}"
    );
    assert!(
        e[1].contains("_not_a_kpi_variable is exported by no KPI set for arm64e (referenced from _ckext_start)"),
        "{report}"
    );

    let report = run(&arm64e_kext(MACOS11, &["PANIC"]));
    let e = errors(&report, "panic-path");
    assert_eq!(e.len(), 1, "{report}");
    // helper calls the panic (through its stub); clang turns start's call of
    // ckext_call into direct calls, so start is the root.
    assert!(
        e[0].contains("reachable from _ckext_start (through _helper)"),
        "{report}"
    );
    assert_eq!(report.count(Severity::Error), 1, "{report}");
}

/// A small deterministic PRNG for the corruption test.
fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn corrupt_arm64e_input_never_panics() {
    let good = good();
    let image = Image::parse(&good).unwrap();
    let linkedit = image
        .segments
        .iter()
        .find(|s| s.name == "__LINKEDIT")
        .unwrap();
    let (le_start, le_len) = (linkedit.fileoff as usize, linkedit.filesize as usize);
    let data = image
        .segments
        .iter()
        .find(|s| s.name == "__DATA")
        .unwrap()
        .fileoff as usize;
    let mut state = 0x2545_f491_4f6c_dd1d;
    for _ in 0..2000 {
        let mut bytes = good.clone();
        for _ in 0..1 + xorshift(&mut state) % 4 {
            let pos = match xorshift(&mut state) % 3 {
                0 => xorshift(&mut state) as usize % 0x400,
                1 => data + xorshift(&mut state) as usize % 0x400,
                _ => le_start + xorshift(&mut state) as usize % le_len,
            };
            bytes[pos] ^= 1 << (xorshift(&mut state) % 8);
        }
        let _ = run(&bytes);
    }
    for len in (0..good.len()).step_by(97) {
        assert!(
            !run(&good[..len]).is_ok(),
            "prefix of {len} bytes verified ok"
        );
    }
}

/// Differences across segments in both directions and widths: the split-seg
/// DELTA_32/DELTA_64 records must have the width of the value they mark.
const DELTA_ASM: &str = r#"
    .section __TEXT,__text,regular,pure_instructions
    .p2align 2
_start_fn:
    ret
_stop_fn:
    ret

    .section __DATA,__data
    .p2align 3
_in_data:
    .quad 0
    .long _in_const - .
    .long 0
    .quad _in_const - .

    .globl _kmod_info
    .p2align 2
_kmod_info:
    .long 0, 0, 1, 0xffffffff
    .asciz "com.example.delta"
    .space 64 - 18
    .asciz "1.0"
    .space 64 - 4
    .long 0, 0, 0, 0, 0, 0, 0, 0, 0
    .quad _start_fn
    .quad _stop_fn

    .section __DATA,__const
    .p2align 3
_in_const:
    .long _in_data - .
    .long 0
    .quad _in_data - .
"#;

#[test]
fn delta_records_have_the_width_of_their_value() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("d.s");
    let obj = dir.path().join("d.o");
    std::fs::write(&src, DELTA_ASM).unwrap();
    let out = Command::new("clang-19")
        .args(["-target", "arm64e-apple-macos11", "-c"])
        .arg(&src)
        .arg("-o")
        .arg(&obj)
        .output()
        .unwrap_or_else(|e| panic!("clang-19 is required by this test ({e})"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = link(Arch::Arm64e, MACOS11, std::fs::read(&obj).unwrap());
    let report = run(&bytes);
    assert!(report.findings.is_empty(), "{report}");

    // A DELTA_32 record retyped as DELTA_64 (and vice versa): for the negative
    // differences (__DATA_CONST → __DATA) the wider read gives no base in the
    // record's segment.
    let (_, data, size) = linkedit_command(&bytes, 0x1e);
    let mut swapped = bytes.clone();
    // The record kinds, decoded by the test's own reader.
    let mut records = Vec::new();
    drop_split_records(&mut swapped, |from, off, kind| {
        records.push((from, off, kind));
        false
    });
    assert!(
        records.iter().any(|r| r.2 == 3) && records.iter().any(|r| r.2 == 4),
        "{records:?}"
    );
    // Re-encode with kinds 3 and 4 exchanged.
    let mut pos = 1;
    let q = bytes[data..data + size].to_vec();
    let mut out = vec![0x7F];
    let copy = |pos: &mut usize, out: &mut Vec<u8>| {
        let v = uleb(&q, pos);
        put_uleb(out, v);
        v
    };
    for _ in 0..copy(&mut pos, &mut out) {
        copy(&mut pos, &mut out);
        copy(&mut pos, &mut out);
        for _ in 0..copy(&mut pos, &mut out) {
            copy(&mut pos, &mut out);
            for _ in 0..copy(&mut pos, &mut out) {
                let k = uleb(&q, &mut pos);
                put_uleb(
                    &mut out,
                    if k == 3 {
                        4
                    } else if k == 4 {
                        3
                    } else {
                        k
                    },
                );
                for _ in 0..copy(&mut pos, &mut out) {
                    copy(&mut pos, &mut out);
                }
            }
        }
    }
    out.resize(size, 0);
    swapped[data..data + size].copy_from_slice(&out);
    let report = run(&swapped);
    let e = errors(&report, "split-seg");
    assert!(!e.is_empty(), "{report}");
    assert!(
        e.iter()
            .all(|m| m.contains("_in_const") && m.contains("kind (width)")),
        "{report}"
    );
}
