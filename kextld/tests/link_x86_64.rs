//! End-to-end tests of the x86_64 kext linker, cross-checked with the
//! independent LLVM tools (llvm-otool/objdump/nm/readobj 19) and clang-19.
//!
//! Fixtures are compiled by the tests from `tests/fixtures/` (documented there)
//! or from inline assembly. Missing tools make the tests fail, not skip.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use kextld::link::{LinkError, Linked, link_buffers};
use kextld::{Arch, MinOs};

const MIN_OS: MinOs = MinOs {
    major: 10,
    minor: 13,
};

fn run(tool: &str, args: &[&str]) -> String {
    let out = Command::new(tool).args(args).output().unwrap_or_else(|e| {
        panic!("cannot run {tool} ({e}): install llvm-19 and clang-19 (apt-get install llvm-19 clang-19)")
    });
    assert!(
        out.status.success(),
        "{tool} {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 tool output")
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Compiles C or assembly (by extension) to an x86_64 Mach-O object.
fn compile(dir: &Path, src: &Path, extra: &[&str]) -> Vec<u8> {
    let out = dir.join(format!("{}.o", src.file_name().unwrap().to_string_lossy()));
    let mut args = vec!["-target", "x86_64-apple-macos10.13", "-c"];
    if src.extension().is_some_and(|e| e == "c") {
        args.extend(["-mkernel", "-fno-builtin", "-O2"]);
    }
    args.extend(extra);
    args.extend([src.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    run("clang-19", &args);
    std::fs::read(out).unwrap()
}

fn compile_asm(dir: &Path, name: &str, text: &str) -> Vec<u8> {
    let src = dir.join(format!("{name}.s"));
    std::fs::write(&src, text).unwrap();
    compile(dir, &src, &[])
}

fn link(inputs: &[(&str, &[u8])]) -> Result<Linked, LinkError> {
    let inputs: Vec<(String, Vec<u8>)> = inputs
        .iter()
        .map(|(n, b)| (n.to_string(), b.to_vec()))
        .collect();
    link_buffers(Arch::X86_64, MIN_OS, 0, &inputs)
}

fn save(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p.to_str().unwrap().to_string()
}

/// `llvm-nm -m`: name → address for defined symbols.
fn nm_addresses(path: &str) -> BTreeMap<String, u64> {
    run("llvm-nm-19", &["-m", path])
        .lines()
        .filter(|l| !l.contains("(undefined)"))
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let addr = u64::from_str_radix(f.next()?, 16).ok()?;
            Some((f.last()?.to_string(), addr))
        })
        .collect()
}

#[derive(Debug, PartialEq)]
struct Reloc {
    address: u64,
    pcrel: bool,
    length: String,
    external: bool,
    ty: String,
    target: String,
}

/// `llvm-objdump --macho -r` of a linked image: (external, local) relocations.
fn objdump_relocs(path: &str) -> (Vec<Reloc>, Vec<Reloc>) {
    let text = run("llvm-objdump-19", &["--macho", "-r", path]);
    let (mut ext, mut loc) = (Vec::new(), Vec::new());
    let mut cur: Option<bool> = None;
    for l in text.lines() {
        if l.starts_with("External relocation") {
            cur = Some(true);
            continue;
        }
        if l.starts_with("Local relocation") {
            cur = Some(false);
            continue;
        }
        let f: Vec<&str> = l.split_whitespace().collect();
        let Some(is_ext) = cur else { continue };
        let Ok(address) = u64::from_str_radix(f.first().copied().unwrap_or(""), 16) else {
            continue;
        };
        let r = Reloc {
            address,
            pcrel: f[1] == "True",
            length: f[2].to_string(),
            external: f[3] == "True",
            ty: f[4].to_string(),
            target: f[6..].join(" "),
        };
        if is_ext { ext.push(r) } else { loc.push(r) }
    }
    (ext, loc)
}

/// Disassembly lines of `__text`: (address, bytes, text).
fn disassemble(path: &str) -> Vec<(u64, Vec<u8>, String)> {
    run("llvm-objdump-19", &["--macho", "-d", path])
        .lines()
        .filter_map(|l| {
            let (addr, rest) = l.trim_start().split_once(":\t")?;
            let addr = u64::from_str_radix(addr, 16).ok()?;
            let (bytes, text) = rest.split_once('\t')?;
            let bytes = bytes
                .split_whitespace()
                .map(|b| u8::from_str_radix(b, 16).unwrap())
                .collect();
            Some((addr, bytes, text.trim().to_string()))
        })
        .collect()
}

fn u64_at(file: &[u8], addr: u64) -> u64 {
    u64::from_le_bytes(file[addr as usize..][..8].try_into().unwrap())
}

/// The checks every linked kext must pass in the independent tools' eyes.
fn check_structure(path: &str, linked: &Linked) {
    let otool = run("llvm-otool-19", &["-hlv", path]);
    assert!(otool.contains("KEXTBUNDLE"), "{otool}");
    assert!(otool.contains("NOUNDEFS DYLDLINK TWOLEVEL"), "{otool}");
    assert!(otool.contains("X86_64        ALL"), "{otool}");
    let cmds: Vec<&str> = otool
        .lines()
        .filter_map(|l| l.trim().strip_prefix("cmd "))
        .map(str::trim)
        .collect();
    assert_eq!(
        cmds,
        [
            "LC_SEGMENT_64",
            "LC_SEGMENT_64",
            "LC_SEGMENT_64",
            "LC_SYMTAB",
            "LC_DYSYMTAB",
            "LC_UUID",
            "LC_SOURCE_VERSION"
        ]
    );
    let segs: Vec<&str> = otool
        .lines()
        .filter(|l| l.starts_with("  segname"))
        .map(|l| l.split_whitespace().nth(1).unwrap())
        .collect();
    assert_eq!(segs, ["__TEXT", "__DATA", "__LINKEDIT"]);
    // vmaddr == fileoff, contiguous, page aligned.
    let vmaddrs: Vec<u64> = otool
        .lines()
        .filter_map(|l| l.trim().strip_prefix("vmaddr "))
        .map(|v| u64::from_str_radix(v.trim().trim_start_matches("0x"), 16).unwrap())
        .collect();
    let fileoffs: Vec<u64> = otool
        .lines()
        .filter_map(|l| l.trim().strip_prefix("fileoff "))
        .map(|v| v.trim().parse().unwrap())
        .collect();
    assert_eq!(vmaddrs, fileoffs);
    assert_eq!(vmaddrs[0], 0);
    assert!(vmaddrs.iter().all(|a| a % 0x1000 == 0));
    let prots: Vec<&str> = otool
        .lines()
        .filter_map(|l| l.trim().strip_prefix("initprot "))
        .map(str::trim)
        .collect();
    assert_eq!(prots, ["r-x", "rw-", "r--"]);
    // Only local UNSIGNED quads and external UNSIGNED quads / BRANCH longs.
    let (ext, loc) = objdump_relocs(path);
    for r in &loc {
        assert_eq!(
            (r.pcrel, r.length.as_str(), r.external, r.ty.as_str()),
            (false, "quad", false, "UNSIGND"),
            "{r:?}"
        );
    }
    let mut seen_branch = false;
    for r in &ext {
        match r.ty.as_str() {
            "UNSIGND" => {
                assert!(!seen_branch, "UNSIGNED external relocs must come first");
                assert_eq!((r.pcrel, r.length.as_str()), (false, "quad"), "{r:?}");
            }
            "BRANCH" => {
                seen_branch = true;
                assert_eq!((r.pcrel, r.length.as_str()), (true, "long"), "{r:?}");
            }
            other => panic!("unexpected external relocation type {other}: {r:?}"),
        }
        assert!(linked.undefined.contains(&r.target), "{r:?}");
    }
    let mut sorted = loc.iter().map(|r| r.address).collect::<Vec<_>>();
    sorted.sort();
    assert_eq!(
        sorted,
        loc.iter().map(|r| r.address).collect::<Vec<_>>(),
        "local relocs sorted by address"
    );
    // Symbol table order: locals, sorted external definitions, sorted undefined.
    let nm = run("llvm-nm-19", &["-m", "-p", path]);
    let kinds: Vec<(u8, String)> = nm
        .lines()
        .map(|l| {
            let name = l
                .trim_end_matches(" (dynamically looked up)")
                .split_whitespace()
                .last()
                .unwrap()
                .to_string();
            let kind = if l.contains("(undefined)") {
                2
            } else if l.contains("non-external") {
                0
            } else {
                1
            };
            (kind, name)
        })
        .collect();
    let mut expected = kinds.clone();
    expected.sort_by_key(|k| k.0); // stable: keeps local order
    assert_eq!(kinds, expected, "symbol table order");
    let exts: Vec<String> = kinds
        .iter()
        .filter(|k| k.0 == 1)
        .map(|k| k.1.clone())
        .collect();
    let undefs: Vec<String> = kinds
        .iter()
        .filter(|k| k.0 == 2)
        .map(|k| k.1.clone())
        .collect();
    assert!(
        exts.is_sorted() && undefs.is_sorted(),
        "{exts:?} {undefs:?}"
    );
    assert_eq!(exts, linked.defined_exports);
    assert_eq!(undefs, linked.undefined);
    assert!(
        nm.lines()
            .filter(|l| l.contains("(undefined)"))
            .all(|l| l.contains("dynamically looked up"))
    );
    let dysym = run("llvm-readobj-19", &["--macho-dysymtab", path]);
    let field = |name: &str| -> u64 {
        dysym
            .lines()
            .find_map(|l| l.trim().strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("{name} in {dysym}"))
            .parse()
            .unwrap()
    };
    let nlocal = kinds.iter().filter(|k| k.0 == 0).count() as u64;
    assert_eq!(field("ilocalsym"), 0);
    assert_eq!(field("nlocalsym"), nlocal);
    assert_eq!(field("iextdefsym"), nlocal);
    assert_eq!(field("nextdefsym"), exts.len() as u64);
    assert_eq!(field("iundefsym"), nlocal + exts.len() as u64);
    assert_eq!(field("nundefsym"), undefs.len() as u64);
    assert_eq!(field("nextrel"), ext.len() as u64);
    assert_eq!(field("nlocrel"), loc.len() as u64);
    assert_eq!(
        field("ntoc") + field("nmodtab") + field("nindirectsyms") + field("nextrefsyms"),
        0
    );
}

#[test]
fn c_kext_links_and_llvm_tools_agree() {
    let dir = tempfile::tempdir().unwrap();
    let obj = compile(dir.path(), &fixtures().join("ckext.c"), &[]);
    let linked = link(&[("ckext.o", &obj)]).unwrap();
    let path = save(dir.path(), "ckext.kext", &linked.bytes);
    check_structure(&path, &linked);
    assert_eq!(
        linked.undefined,
        [
            "_bzero",
            "_kpi_data_symbol",
            "_kpi_func_symbol",
            "_memset",
            "_printf"
        ]
    );
    assert_eq!(
        linked.defined_exports,
        ["_ckext_call", "_kmod_info", "_kpi_func_ptr"]
    );

    // kmod_info: start/stop are the addresses llvm-nm reports; the name is the bundle id.
    let syms = nm_addresses(&path);
    let ki = syms["_kmod_info"];
    let file = &linked.bytes;
    assert_eq!(u64_at(file, ki + 180), syms["_ckext_start"]);
    assert_eq!(u64_at(file, ki + 188), syms["_ckext_stop"]);
    assert_eq!(&file[ki as usize + 16..][..18], b"com.example.ckext\0");
    let (ext, loc) = objdump_relocs(&path);
    assert!(
        loc.iter()
            .any(|r| r.address == ki + 180 && r.target.contains("__TEXT,__text"))
    );
    assert!(loc.iter().any(|r| r.address == ki + 188));
    // The function table holds helper/other with local relocs.
    let table = syms["_table"];
    assert_eq!(u64_at(file, table), syms["_helper"]);
    assert_eq!(u64_at(file, table + 8), syms["_other"]);
    // kpi_func_ptr: external UNSIGNED, slot holds the addend 0.
    let p = syms["_kpi_func_ptr"];
    assert_eq!(u64_at(file, p), 0);
    assert!(
        ext.iter()
            .any(|r| r.address == p && r.ty == "UNSIGND" && r.target == "_kpi_func_symbol")
    );
    // Every call to the kernel is an external BRANCH on a zero rel32.
    let dis = disassemble(&path);
    let mut kernel_calls = 0;
    for (addr, bytes, text) in &dis {
        if bytes.first() == Some(&0xe8) {
            let r = ext
                .iter()
                .find(|r| r.address == addr + 1)
                .unwrap_or_else(|| panic!("unrelocated call {text}"));
            assert_eq!(r.ty, "BRANCH");
            assert_eq!(&bytes[1..5], [0, 0, 0, 0]);
            assert!(text.ends_with(&r.target), "{text} vs {r:?}");
            kernel_calls += 1;
        }
    }
    assert_eq!(kernel_calls, 5);
    // RIP-relative references resolved to the right symbols (llvm-objdump symbolizes them).
    let all = dis
        .iter()
        .map(|d| d.2.clone())
        .collect::<Vec<_>>()
        .join("\n");
    for sym in [
        "_table(%rip)",
        "_names(%rip)",
        "_buffer(%rip)",
        "_counter(%rip)",
    ] {
        assert!(all.contains(sym), "{sym} missing from\n{all}");
    }
    // GOT_LOAD of the undefined data symbol: movq from a zeroed __got slot with an external UNSIGNED.
    let got_load = dis
        .iter()
        .find(|d| d.1.starts_with(&[0x48, 0x8b, 0x05]))
        .expect("movq from GOT");
    let disp = i32::from_le_bytes(got_load.1[3..7].try_into().unwrap()) as i64;
    let slot = (got_load.0 as i64 + 7 + disp) as u64;
    assert_eq!(u64_at(file, slot), 0);
    assert!(
        ext.iter()
            .any(|r| r.address == slot && r.target == "_kpi_data_symbol" && r.ty == "UNSIGND")
    );
    let otool = run("llvm-otool-19", &["-lv", &path]);
    assert!(otool.contains("sectname __got"), "{otool}");
}

#[test]
fn asm_fixture_resolves_every_relocation_form() {
    let dir = tempfile::tempdir().unwrap();
    let obj = compile(dir.path(), &fixtures().join("relocs.s"), &[]);
    let linked = link(&[("relocs.o", &obj)]).unwrap();
    let path = save(dir.path(), "asm.kext", &linked.bytes);
    check_structure(&path, &linked);
    assert_eq!(linked.undefined, ["_kpi_data", "_kpi_func", "_kpi_tail"]);
    let syms = nm_addresses(&path);
    let file = &linked.bytes;
    let (ext, loc) = objdump_relocs(&path);
    let dd = syms["_defined_data"];
    let entry = syms["_entry"];
    let dis: Vec<_> = disassemble(&path)
        .into_iter()
        .filter(|d| d.0 >= entry && d.0 < syms["_helper"])
        .collect();
    assert_eq!(dis.len(), 12, "{dis:?}");
    // (offset of the rel32 in the instruction)
    let target = |i: usize, disp_at: usize| -> u64 {
        let (addr, bytes, _) = &dis[i];
        let d = i32::from_le_bytes(bytes[disp_at..disp_at + 4].try_into().unwrap()) as i64;
        (*addr as i64 + bytes.len() as i64 + d) as u64
    };
    // GOT_LOAD to a defined symbol relaxed to leaq.
    assert_eq!(dis[0].1[1], 0x8d, "{:?}", dis[0]);
    assert!(dis[0].2.starts_with("leaq"));
    assert_eq!(target(0, 3), dd);
    // GOT_LOAD to an undefined symbol: movq from a __got slot bound externally.
    assert_eq!(dis[1].1[1], 0x8b);
    let slot = target(1, 3);
    assert_eq!(u64_at(file, slot), 0);
    assert!(
        ext.iter()
            .any(|r| r.address == slot && r.target == "_kpi_data" && r.ty == "UNSIGND")
    );
    // GOT (pushq) to a defined symbol: slot holds its address with a local reloc.
    let slot = target(2, 2);
    assert_eq!(u64_at(file, slot), dd);
    assert!(
        loc.iter()
            .any(|r| r.address == slot && r.target.contains("__DATA,__data"))
    );
    // SIGNED_1/2/4 with addends, section-relative SIGNED_4, SIGNED to cstring and with addend.
    assert_eq!(target(3, 2), dd + 8);
    assert_eq!(target(4, 3), dd + 16);
    assert_eq!(target(5, 2), dd + 24);
    assert_eq!(target(6, 2), dd + 44);
    let hello = target(7, 3) as usize;
    assert_eq!(&file[hello..hello + 6], b"hello\0");
    assert_eq!(target(8, 3), dd + 32);
    // BRANCH to a defined symbol resolved; to undefined ones: external BRANCH, rel32 0.
    assert_eq!(target(9, 1), syms["_helper"]);
    for (i, name) in [(10, "_kpi_func"), (11, "_kpi_tail")] {
        assert_eq!(&dis[i].1[1..5], [0, 0, 0, 0]);
        assert!(
            ext.iter()
                .any(|r| r.address == dis[i].0 + 1 && r.target == name && r.ty == "BRANCH")
        );
    }
    // SUBTRACTOR pairs resolved to constants, no relocs there.
    assert_eq!(
        u64_at(file, syms["_difference64"]),
        syms["_helper"] - entry + 3
    );
    let d32 = u32::from_le_bytes(
        file[syms["_difference32"] as usize..][..4]
            .try_into()
            .unwrap(),
    );
    assert_eq!(u64::from(d32), dd - entry);
    assert!(
        !loc.iter()
            .chain(&ext)
            .any(|r| r.address == syms["_difference64"] || r.address == syms["_difference32"])
    );
    // UNSIGNED 64-bit: extern defined (+addend), section-relative, extern undefined (+addend).
    let p = syms["_pointers"];
    assert_eq!(u64_at(file, p), syms["_helper"] + 1);
    assert_eq!(u64_at(file, p + 8), dd + 40);
    assert_eq!(u64_at(file, p + 16), 16);
    assert!(
        loc.iter()
            .any(|r| r.address == p && r.target.contains("__TEXT,__text"))
    );
    assert!(
        loc.iter()
            .any(|r| r.address == p + 8 && r.target.contains("__DATA,__data"))
    );
    assert!(
        ext.iter()
            .any(|r| r.address == p + 16 && r.target == "_kpi_data")
    );
    // External UNSIGNED entries sorted by (symbol, address).
    let unsigned: Vec<u64> = ext
        .iter()
        .filter(|r| r.ty == "UNSIGND")
        .map(|r| r.address)
        .collect();
    let mut sorted = unsigned.clone();
    sorted.sort();
    assert_eq!(unsigned, sorted);
}

const KMOD_INFO_ASM: &str = "
    .section __TEXT,__text,regular,pure_instructions
_start_fn:
    retq
    .section __DATA,__data
    .globl _kmod_info
    .p2align 2
_kmod_info:
    .quad 0
    .long 1, 0xffffffff
    .space 128 + 4 + 32
    .quad _start_fn, _start_fn
";

fn link_err(dir: &Path, name: &str, asm: &str) -> String {
    let obj = compile_asm(dir, name, &format!("{KMOD_INFO_ASM}\n{asm}"));
    let file = format!("{name}.o");
    match link(&[(&file, &obj)]) {
        Ok(_) => panic!("{name}: link succeeded"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn absolute_32bit_reference_is_rejected_precisely() {
    let dir = tempfile::tempdir().unwrap();
    let msg = link_err(
        dir.path(),
        "abs32",
        "    .section __DATA,__data\n_table32:\n    .long _some_symbol\n",
    );
    for part in [
        "abs32.o",
        "section __DATA,__data",
        "offset 0xc4",
        "X86_64_RELOC_UNSIGNED",
        "_some_symbol",
        "32-bit absolute",
        "small code model",
    ] {
        assert!(msg.contains(part), "{part:?} not in: {msg}");
    }
}

#[test]
fn tlv_and_rip_relative_undefined_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let msg = link_err(
        dir.path(),
        "tlv",
        "    .text\n    movq _tlv_var@TLVP(%rip), %rdi\n",
    );
    assert!(
        msg.contains("X86_64_RELOC_TLV") && msg.contains("_tlv_var") && msg.contains("thread"),
        "{msg}"
    );
    let msg = link_err(
        dir.path(),
        "ripundef",
        "    .text\n    leaq _kernel_var(%rip), %rdi\n",
    );
    assert!(
        msg.contains("X86_64_RELOC_SIGNED") && msg.contains("_kernel_var") && msg.contains("GOT"),
        "{msg}"
    );
}

#[test]
fn missing_kmod_info_garbage_truncated_wrong_arch_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let nokmod = compile_asm(d, "nokmod", "    .text\n    .globl _f\n_f:\n    retq\n");
    let e = link(&[("nokmod.o", &nokmod)]).unwrap_err().to_string();
    assert!(
        e.contains("no _kmod_info: did the kext invoke common::kext!?"),
        "{e}"
    );

    let e = link(&[("junk.o", b"this is not an object file")])
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("junk.o: is neither a Mach-O"), "{e}");
    let e = link(&[("trunc.o", &nokmod[..nokmod.len() / 3])])
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("trunc.o: ") && e.contains("truncated or corrupt"),
        "{e}"
    );

    let src = d.join("arm.s");
    std::fs::write(&src, "    .text\n    ret\n").unwrap();
    let out = d.join("arm.o");
    run(
        "clang-19",
        &[
            "-target",
            "arm64-apple-macos11",
            "-c",
            src.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ],
    );
    let arm = std::fs::read(out).unwrap();
    let e = link(&[("arm.o", &arm)]).unwrap_err().to_string();
    assert!(e.starts_with("arm.o: wrong architecture"), "{e}");

    let a = compile_asm(
        d,
        "dup_a",
        &format!("{KMOD_INFO_ASM}\n    .text\n    .globl _dup\n_dup:\n    retq\n"),
    );
    let b = compile_asm(d, "dup_b", "    .text\n    .globl _dup\n_dup:\n    retq\n");
    let e = link(&[("dup_a.o", &a), ("dup_b.o", &b)])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("duplicate symbol _dup") && e.contains("dup_a.o") && e.contains("dup_b.o"),
        "{e}"
    );

    let e = link_buffers(
        Arch::Arm64e,
        MinOs::ARM64E_DEFAULT,
        0,
        &[("x.o".into(), a.clone())],
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("x.o: wrong architecture: cputype 0x1000007, expected 0x100000c"),
        "{e}"
    );
}

#[test]
fn archive_members_load_on_demand_to_a_fixed_point() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // main (kmod_info) → _needed (member b) → _deep (member c); _unneeded (member u) stays out.
    let main = compile_asm(
        d,
        "main",
        &format!("{KMOD_INFO_ASM}\n    .text\n    callq _needed\n"),
    );
    let b = compile_asm(
        d,
        "b",
        "    .text\n    .globl _needed\n_needed:\n    jmp _deep\n",
    );
    let c = compile_asm(
        d,
        "c",
        "    .text\n    .globl _deep\n_deep:\n    jmp _printf\n",
    );
    let u = compile_asm(
        d,
        "u",
        "    .text\n    .globl _unneeded\n_unneeded:\n    jmp _IOLog\n",
    );
    let names = ["c.o", "u.o", "main.o", "b.o"]; // c before b: needs a second pass
    for (n, bytes) in names.iter().zip([&c, &u, &main, &b]) {
        std::fs::write(d.join(n), bytes).unwrap();
    }
    let lib = d.join("libtest.a");
    let mut args = vec!["rcs".to_string(), lib.to_str().unwrap().to_string()];
    args.extend(
        names
            .iter()
            .map(|n| d.join(n).to_str().unwrap().to_string()),
    );
    run(
        "llvm-ar-19",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let archive = std::fs::read(&lib).unwrap();
    let linked = link(&[("libtest.a", &archive)]).unwrap();
    assert_eq!(linked.defined_exports, ["_deep", "_kmod_info", "_needed"]);
    assert_eq!(linked.undefined, ["_printf"]);
    let path = save(d, "ar.kext", &linked.bytes);
    check_structure(&path, &linked);
}

/// The CLI writes the same bytes as the library, atomically. (Linking rustc's
/// staticlibs is tested end to end in `tests/tests/link_rust.rs`, which builds them.)
#[test]
fn cli_links_reproducibly_like_the_library() {
    let dir = tempfile::tempdir().unwrap();
    let obj = compile(dir.path(), &fixtures().join("ckext.c"), &[]);
    let input = dir.path().join("ckext.o");
    std::fs::write(&input, &obj).unwrap();
    let out = dir.path().join("ckext.kext");
    let status = Command::new(env!("CARGO_BIN_EXE_kextld"))
        .args([
            "link",
            "--arch",
            "x86_64",
            "--min-os",
            "10.13",
            "--source-version",
            "1.2.3",
            "-o",
        ])
        .arg(&out)
        .arg(&input)
        .status()
        .unwrap();
    assert!(status.success());
    let first = std::fs::read(&out).unwrap();
    let again = link_buffers(
        Arch::X86_64,
        MIN_OS,
        1 << 40 | 2 << 30 | 3 << 20,
        &[(input.display().to_string(), obj.clone())],
    )
    .unwrap();
    assert_eq!(first, again.bytes, "CLI and library links differ");
    let path = out.to_str().unwrap();
    check_structure(path, &again);
    let otool = run("llvm-otool-19", &["-lv", path]);
    assert!(otool.contains("version 1.2.3"), "{otool}");
    // No temporary file left behind by the atomic write.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn cli_reports_errors_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.o");
    std::fs::write(&junk, b"garbage").unwrap();
    let out = dir.path().join("out.kext");
    let res = Command::new(env!("CARGO_BIN_EXE_kextld"))
        .args(["link", "--arch", "x86_64", "-o"])
        .arg(&out)
        .arg(&junk)
        .output()
        .unwrap();
    assert!(!res.status.success());
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(err.contains("junk.o: is neither"), "{err}");
    assert!(!out.exists());
}

/// Zero-fill takes no file space, as with ld64: a 192 KiB `__bss` leaves the file
/// small, `__LINKEDIT` follows `__DATA`'s file bytes (fileoff below its vmaddr),
/// llvm-otool reads the result and kextld's verifier accepts it.
#[test]
fn zerofill_takes_no_file_space() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("big.c");
    let ckext = std::fs::read_to_string(fixtures().join("ckext.c")).unwrap();
    std::fs::write(
        &src,
        format!(
            "{ckext}\nstatic unsigned char big_table[192 * 1024];\n\
             unsigned char *prx_table(unsigned i) {{ return &big_table[i]; }}\n"
        ),
    )
    .unwrap();
    let obj = compile(dir.path(), &src, &[]);
    let linked = link(&[("big.o", &obj)]).unwrap();
    assert!(
        linked.bytes.len() < 64 * 1024,
        "{} bytes",
        linked.bytes.len()
    );
    let path = save(dir.path(), "big", &linked.bytes);
    let otool = run("llvm-otool-19", &["-l", &path]);
    let field = |seg: &str, key: &str| -> u64 {
        let at = otool.find(&format!("segname {seg}\n")).unwrap();
        let line = otool[at..]
            .lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .unwrap()
            .trim()
            .to_string();
        match line.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16).unwrap(),
            None => line.parse().unwrap(),
        }
    };
    let data_vm = field("__DATA", "vmsize ");
    let data_file = field("__DATA", "filesize ");
    assert!(data_vm >= 192 * 1024 && data_file < data_vm, "{otool}");
    let (le_vm, le_off) = (
        field("__LINKEDIT", "vmaddr "),
        field("__LINKEDIT", "fileoff "),
    );
    assert_eq!(le_off, field("__DATA", "fileoff ") + data_file, "{otool}");
    assert_eq!(le_vm, field("__DATA", "vmaddr ") + data_vm, "{otool}");
    assert!(le_off < le_vm);
    assert_eq!(
        le_off + field("__LINKEDIT", "filesize "),
        linked.bytes.len() as u64
    );
    // llvm-nm reads the symbol table at its (moved) file offset.
    let nm = run("llvm-nm-19", &[&path]);
    assert!(nm.contains(" _kmod_info\n"), "{nm}");
    // The segment rules pass (the fixture's made-up KPI names are its only errors).
    let report = kextld::verify::verify(&linked.bytes, kextld::kpi::KpiTables::builtin());
    assert!(
        report
            .findings
            .iter()
            .all(|f| f.check == "kpi-symbol" && f.message.contains("_kpi_")),
        "{report}"
    );
}
