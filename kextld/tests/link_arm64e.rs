//! End-to-end tests of the arm64e kext linker. The output is checked with
//! the independent LLVM tools (llvm-otool/objdump/nm 19) and with the
//! test-only decoder of chained fixups and split-seg info in
//! `tests/src/arm64e.rs` (shares no code with kextld; included by path since it
//! depends on std only). llvm-objdump-19 prints the chained-fixups header,
//! starts and imports (`--chained-fixups`) but cannot walk pointer format 7
//! (`--dyld-info` fails with "unsupported chained fixup pointer_format 7"),
//! hence the decoder.
//!
//! Fixtures: `tests/fixtures/ckext.c` compiled with `clang-19 -target
//! arm64e-apple-macos11 -mkernel -c`, and inline assembly. Missing tools make
//! the tests fail, not skip.

#[allow(dead_code)]
#[path = "../../tests/src/arm64e.rs"]
mod decoder;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use decoder::{FixupKind, MachO};
use kextld::link::{LinkError, Linked, link_buffers};
use kextld::{Arch, MinOs};

const MACOS11: MinOs = MinOs {
    major: 11,
    minor: 0,
};
const MACOS12: MinOs = MinOs {
    major: 12,
    minor: 0,
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

fn compile(dir: &Path, name: &str, src: &Path) -> Vec<u8> {
    let out = dir.join(format!("{name}.o"));
    let mut args = vec!["-target", "arm64e-apple-macos11", "-c"];
    if src.extension().is_some_and(|e| e == "c") {
        args.extend(["-mkernel", "-fno-builtin", "-O2"]);
    }
    args.extend([src.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    run("clang-19", &args);
    std::fs::read(out).unwrap()
}

fn compile_asm(dir: &Path, name: &str, text: &str) -> Vec<u8> {
    let src = dir.join(format!("{name}.s"));
    std::fs::write(&src, text).unwrap();
    compile(dir, name, &src)
}

fn link(min_os: MinOs, inputs: &[(&str, &[u8])]) -> Result<Linked, LinkError> {
    let inputs: Vec<(String, Vec<u8>)> = inputs
        .iter()
        .map(|(n, b)| (n.to_string(), b.to_vec()))
        .collect();
    link_buffers(Arch::Arm64e, min_os, 0, &inputs)
}

fn save(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p.to_str().unwrap().to_string()
}

/// `llvm-nm -m`: name → address of defined symbols.
fn nm(path: &str) -> BTreeMap<String, u64> {
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

/// Disassembly of every code section: (address, mnemonic + operands).
fn disassemble(path: &str) -> Vec<(u64, String)> {
    run("llvm-objdump-19", &["--macho", "-d", path])
        .lines()
        .filter_map(|l| {
            let (addr, rest) = l.trim_start().split_once(":\t")?;
            let addr = u64::from_str_radix(addr, 16).ok()?;
            let (_, text) = rest.split_once('\t')?;
            Some((addr, text.trim().to_string()))
        })
        .collect()
}

/// Disassembly of one section (`llvm-objdump -d -j NAME`, which unlike
/// `--macho -d` reaches sections other than __text): (address, text).
fn disassemble_section(path: &str, sect: &str) -> Vec<(u64, String)> {
    run("llvm-objdump-19", &["-d", "-j", sect, path])
        .lines()
        .filter_map(|l| {
            let (addr, rest) = l.trim_start().split_once(": ")?;
            let addr = u64::from_str_radix(addr, 16).ok()?;
            let (_, text) = rest.trim_start().split_once(" \t")?;
            Some((addr, text.trim().to_string()))
        })
        .collect()
}

/// Checks what every arm64e kext must satisfy, with llvm-otool and the
/// independent decoder; returns the decoded fixups by slot address.
fn check_structure(path: &str, bytes: &[u8], auth_stubs: bool) -> BTreeMap<u64, FixupKind> {
    // Header: cputype ARM64, subtype exactly 0xC0000002, MH_KEXT_BUNDLE, flags 0x85.
    assert_eq!(&bytes[4..8], &0x0100_000cu32.to_le_bytes());
    assert_eq!(&bytes[8..12], &0xc000_0002u32.to_le_bytes());
    assert_eq!(&bytes[12..16], &11u32.to_le_bytes());
    assert_eq!(&bytes[24..28], &0x85u32.to_le_bytes());
    let otool = run("llvm-otool-19", &["-hlv", path]);
    assert!(
        otool.contains("ARM64          E  0xc0  KEXTBUNDLE"),
        "{otool}"
    );
    let cmds: Vec<&str> = otool
        .lines()
        .filter_map(|l| l.trim().strip_prefix("cmd "))
        .collect();
    assert_eq!(
        cmds,
        [
            "LC_SEGMENT_64",
            "LC_SEGMENT_64",
            "LC_SEGMENT_64",
            "LC_SEGMENT_64",
            "LC_SEGMENT_64",
            "LC_DYLD_CHAINED_FIXUPS",
            "LC_SYMTAB",
            "LC_DYSYMTAB",
            "LC_UUID",
            "LC_SOURCE_VERSION",
            "LC_SEGMENT_SPLIT_INFO"
        ]
    );
    // Segment names and protections (maxprot/initprot lines belong to segments only).
    let m = MachO::parse(bytes).expect("decoder parses the kext");
    let names: Vec<&str> = m.segments.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "__TEXT",
            "__TEXT_EXEC",
            "__DATA",
            "__DATA_CONST",
            "__LINKEDIT"
        ]
    );
    let first_seg = otool
        .find("segname __TEXT\n")
        .expect("segment __TEXT listed");
    assert!(
        otool[first_seg..].contains("segname __TEXT_EXEC"),
        "otool lists the segments"
    );
    let prots: Vec<&str> = otool
        .lines()
        .filter_map(|l| l.trim().strip_prefix("initprot "))
        .collect();
    assert_eq!(prots, ["r--", "r-x", "rw-", "rw-", "r--"]);
    assert!(
        otool.contains("nextrel 0") && otool.contains("nlocrel 0"),
        "no classic relocations"
    );

    // The independent decoder.
    for s in &m.segments {
        assert_eq!(s.vmaddr % 0x4000, 0, "{} 16 KiB aligned", s.name);
        assert_eq!(s.fileoff, s.vmaddr, "{} fileoff == vmaddr", s.name);
    }
    let fx = m
        .chained_fixups()
        .expect("chained fixups decode")
        .expect("LC_DYLD_CHAINED_FIXUPS");
    assert_eq!((fx.header.imports_format, fx.header.symbols_format), (1, 0));
    assert_eq!(fx.seg_count, 5);
    for st in &fx.starts {
        let seg = &m.segments[st.segment_index];
        assert!(
            ["__DATA", "__DATA_CONST"].contains(&seg.name.as_str()),
            "starts for {}",
            seg.name
        );
        assert_eq!((st.page_size, st.pointer_format), (0x1000, 7));
    }
    for i in &fx.imports {
        assert_eq!(i.lib_ordinal, -2, "{}: flat lookup", i.name);
    }
    let mut out = BTreeMap::new();
    for f in &fx.fixups {
        let seg = m.segment_at(f.vmaddr, 8).expect("fixup inside a segment");
        assert!(
            seg.initprot & 2 != 0,
            "fixup at {:#x} in writable segment {}",
            f.vmaddr,
            seg.name
        );
        assert_eq!(f.vmaddr % 4, 0);
        if let FixupKind::Rebase { target, .. } | FixupKind::AuthRebase { target, .. } = f.kind {
            assert!(
                m.sections
                    .iter()
                    .any(|s| s.addr <= target && target <= s.addr + s.size),
                "rebase target {target:#x} lands in a section"
            );
        }
        out.insert(f.vmaddr, f.kind.clone());
    }

    // Split-seg info covers every adrp and every bl to a stub.
    let split = m
        .split_seg_info()
        .expect("split-seg decodes")
        .expect("LC_SEGMENT_SPLIT_INFO");
    let mut from: BTreeMap<u8, BTreeSet<u64>> = BTreeMap::new();
    for r in &split {
        from.entry(r.kind)
            .or_default()
            .insert(m.split_seg_address(r.from_section, r.from_offset).unwrap());
    }
    for (addr, text) in disassemble(path) {
        if text.starts_with("adrp") {
            assert!(
                from[&5].contains(&addr),
                "adrp at {addr:#x} has a split-seg ADRP record"
            );
        }
        if text.starts_with("bl\t") && text.contains("symbol stub") {
            assert!(
                from[&7].contains(&addr),
                "bl at {addr:#x} has a split-seg BR26 record"
            );
        }
    }
    let stubs = if auth_stubs {
        "__auth_stubs"
    } else {
        "__stubs"
    };
    if m.sections.iter().any(|s| s.sectname == stubs) {
        let code = disassemble_section(path, stubs);
        assert!(!code.is_empty(), "{stubs} disassembles");
        let pattern: &[&str] = if auth_stubs {
            &[
                "adrp\tx17",
                "add\tx17, x17",
                "ldr\tx16, [x17]",
                "braa\tx16, x17",
            ]
        } else {
            &["adrp\tx16", "ldr\tx16, [x16", "br\tx16"]
        };
        for (k, (addr, text)) in code.iter().enumerate() {
            assert!(
                text.starts_with(pattern[k % pattern.len()]),
                "stub instruction at {addr:#x}: {text}"
            );
            if text.starts_with("adrp") {
                assert!(
                    from[&5].contains(addr),
                    "stub adrp at {addr:#x} has a split-seg ADRP record"
                );
            }
        }
    }
    // Every rebase has a POINTER_64 (plain) or THREADED_POINTER_64 (auth) record.
    for (at, k) in &out {
        match k {
            FixupKind::Rebase { .. } => assert!(from[&2].contains(at), "POINTER_64 for {at:#x}"),
            FixupKind::AuthRebase { .. } => {
                assert!(from[&13].contains(at), "THREADED_POINTER_64 for {at:#x}")
            }
            _ => {}
        }
    }
    out
}

/// kmod_info start/stop are auth rebases (key IA, no address diversity,
/// 0xE4FE) to the named functions.
fn check_kmod_info(
    fixups: &BTreeMap<u64, FixupKind>,
    syms: &BTreeMap<String, u64>,
    start: &str,
    stop: &str,
) {
    let k = syms["_kmod_info"];
    for (off, f) in [(180, start), (188, stop)] {
        assert_eq!(
            fixups.get(&(k + off)),
            Some(&FixupKind::AuthRebase {
                target: syms[f],
                key: 0,
                addr_div: false,
                diversity: 0xE4FE
            }),
            "kmod_info+{off}"
        );
    }
}

fn ckext(dir: &Path) -> Vec<u8> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ckext.c");
    compile(dir, "ckext", &src)
}

#[test]
fn c_kext_links_for_macos11_with_plain_stubs() {
    let dir = tempfile::tempdir().unwrap();
    let obj = ckext(dir.path());
    let linked = link(MACOS11, &[("ckext.o", &obj)]).expect("links");
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
    let path = save(dir.path(), "ckext", &linked.bytes);
    let fixups = check_structure(&path, &linked.bytes, false);
    let syms = nm(&path);
    check_kmod_info(&fixups, &syms, "_ckext_start", "_ckext_stop");
    // kpi_func_ptr = kpi_func_symbol: a plain bind; table[] = {helper, other}: plain rebases.
    assert!(
        matches!(&fixups[&syms["_kpi_func_ptr"]], FixupKind::Bind { name, addend: 0, .. } if name == "_kpi_func_symbol")
    );
    assert_eq!(
        fixups[&syms["_table"]],
        FixupKind::Rebase {
            target: syms["_helper"],
            high8: 0
        }
    );
    // Plain stubs: adrp x16 / ldr x16 / br x16 over __got binds; indirect symbols name them.
    let ind = run("llvm-objdump-19", &["--macho", "--indirect-symbols", &path]);
    assert!(
        ind.contains("Indirect symbols for (__TEXT_EXEC,__stubs) 3 entries"),
        "{ind}"
    );
    assert!(
        ind.contains("Indirect symbols for (__DATA_CONST,__got) 4 entries"),
        "{ind}"
    );
    let dis = run("llvm-objdump-19", &["--macho", "-d", &path]);
    assert!(dis.contains("symbol stub for: _memset"), "{dis}");
    let binds: BTreeSet<&str> = fixups
        .values()
        .filter_map(|k| match k {
            FixupKind::Bind { name, .. } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        binds,
        [
            "_bzero",
            "_kpi_data_symbol",
            "_kpi_func_symbol",
            "_memset",
            "_printf"
        ]
        .into()
    );
}

#[test]
fn c_kext_links_for_macos12_with_auth_stubs() {
    let dir = tempfile::tempdir().unwrap();
    let obj = ckext(dir.path());
    let linked = link(MACOS12, &[("ckext.o", &obj)]).expect("links");
    let path = save(dir.path(), "ckext12", &linked.bytes);
    let fixups = check_structure(&path, &linked.bytes, true);
    let syms = nm(&path);
    check_kmod_info(&fixups, &syms, "_ckext_start", "_ckext_stop");
    let ind = run("llvm-objdump-19", &["--macho", "--indirect-symbols", &path]);
    assert!(
        ind.contains("Indirect symbols for (__TEXT_EXEC,__auth_stubs) 3 entries"),
        "{ind}"
    );
    assert!(
        ind.contains("Indirect symbols for (__DATA_CONST,__auth_got) 3 entries"),
        "{ind}"
    );
    assert!(
        ind.contains("Indirect symbols for (__DATA_CONST,__got) 1 entries"),
        "{ind}"
    );
    // __auth_got slots are auth binds: key IA, address-diversified, discriminator 0.
    let auth_binds: Vec<&FixupKind> = fixups
        .values()
        .filter(|k| matches!(k, FixupKind::AuthBind { .. }))
        .collect();
    assert_eq!(auth_binds.len(), 3);
    for k in auth_binds {
        assert!(
            matches!(
                k,
                FixupKind::AuthBind {
                    key: 0,
                    addr_div: true,
                    diversity: 0,
                    ..
                }
            ),
            "{k:?}"
        );
    }
    // The section order in the otool listing: auth GOT before GOT before const.
    let otool = run("llvm-otool-19", &["-lv", &path]);
    let sects: Vec<&str> = otool
        .lines()
        .filter_map(|l| l.trim().strip_prefix("sectname "))
        .collect();
    assert_eq!(
        sects,
        [
            "__cstring",
            "__text",
            "__auth_stubs",
            "__data",
            "__bss",
            "__auth_got",
            "__got",
            "__const"
        ]
    );
}

const ASM: &str = r#"
    .section __TEXT,__text,regular,pure_instructions
    .globl _entry
    .p2align 2
_entry:
    adrp x0, _data@GOTPAGE
    ldr x0, [x0, _data@GOTPAGEOFF]
    adrp x1, _kpi_data@GOTPAGE
    ldr x1, [x1, _kpi_data@GOTPAGEOFF]
    adrp x2, _data@PAGE+16
    ldr x3, [x2, _data@PAGEOFF+16]
    ldr w4, [x2, _data@PAGEOFF+8]
    ldrb w5, [x2, _data@PAGEOFF+3]
    ldr q0, [x2, _data@PAGEOFF+32]
    add x6, x2, _data@PAGEOFF+5
    bl _helper
    bl _kpi_func
    b _kpi_tail
    .globl _helper
_helper:
    ret
_start_fn:
    ret
_stop_fn:
    ret

    .section __DATA,__data
    .globl _data
    .p2align 4
_data:
    .space 64
    .quad _helper
    .quad _kpi_func
    .quad _data + 8
    .quad _other_data - _data
    .long _other_data - _data
    .long 0
    .quad _kpi_data@GOT - .
_other_data:
    .long _kpi_data@GOT - .
    .long 0

    .globl _kmod_info
    .p2align 2
_kmod_info:
    .long 0, 0, 1, 0xffffffff
    .space 164
    .quad _start_fn
    .quad _stop_fn
"#;

fn insn_at(bytes: &[u8], addr: u64) -> u32 {
    u32::from_le_bytes(bytes[addr as usize..][..4].try_into().unwrap())
}

#[test]
fn asm_fixture_resolves_every_relocation_form() {
    let dir = tempfile::tempdir().unwrap();
    let obj = compile_asm(dir.path(), "relocs", ASM);
    let linked = link(MACOS11, &[("relocs.o", &obj)]).expect("links");
    assert_eq!(linked.undefined, ["_kpi_data", "_kpi_func", "_kpi_tail"]);
    let path = save(dir.path(), "relocs", &linked.bytes);
    let b = &linked.bytes;
    let fixups = check_structure(&path, b, false);
    let syms = nm(&path);
    let (entry, data) = (syms["_entry"], syms["_data"]);
    check_kmod_info(&fixups, &syms, "_start_fn", "_stop_fn");
    let dis: BTreeMap<u64, String> = disassemble(&path).into_iter().collect();
    let adrp_target = |at: u64| {
        let i = insn_at(b, at);
        let imm = (((i >> 29) & 3) | (((i >> 5) & 0x7ffff) << 2)) as i64;
        let imm = (imm << 43) >> 43;
        ((at & !0xfff) as i64 + (imm << 12)) as u64
    };
    let imm12 = |at: u64| u64::from((insn_at(b, at) >> 10) & 0xfff);
    // GOT_LOAD to a defined symbol: relaxed to adrp + add of the symbol itself.
    assert_eq!(adrp_target(entry), data & !0xfff);
    assert!(
        dis[&(entry + 4)].starts_with("add\tx0, x0"),
        "{}",
        dis[&(entry + 4)]
    );
    assert_eq!(imm12(entry + 4), data & 0xfff);
    // GOT_LOAD to an undefined symbol: ldr from a __got slot bound to it.
    let slot = adrp_target(entry + 8) + 8 * imm12(entry + 12);
    assert!(matches!(&fixups[&slot], FixupKind::Bind { name, .. } if name == "_kpi_data"));
    // PAGE21 with an addend; PAGEOFF12 scaled by the access size.
    assert_eq!(adrp_target(entry + 16), (data + 16) & !0xfff);
    assert_eq!(imm12(entry + 20) * 8, (data + 16) & 0xfff);
    assert_eq!(imm12(entry + 24) * 4, (data + 8) & 0xfff);
    assert_eq!(imm12(entry + 28), (data + 3) & 0xfff);
    assert_eq!(imm12(entry + 32) * 16, (data + 32) & 0xfff);
    assert_eq!(imm12(entry + 36), (data + 5) & 0xfff);
    // BRANCH26: defined direct, undefined through stubs.
    assert_eq!(dis[&(entry + 40)], "bl\t_helper");
    assert!(
        dis[&(entry + 44)].contains("symbol stub for: _kpi_func"),
        "{}",
        dis[&(entry + 44)]
    );
    assert!(
        dis[&(entry + 48)].contains("symbol stub for: _kpi_tail"),
        "{}",
        dis[&(entry + 48)]
    );
    // Data: rebase, bind, rebase with addend, SUBTRACTOR differences, POINTER_TO_GOT deltas.
    assert_eq!(
        fixups[&(data + 64)],
        FixupKind::Rebase {
            target: syms["_helper"],
            high8: 0
        }
    );
    assert!(
        matches!(&fixups[&(data + 72)], FixupKind::Bind { name, addend: 0, .. } if name == "_kpi_func")
    );
    assert_eq!(
        fixups[&(data + 80)],
        FixupKind::Rebase {
            target: data + 8,
            high8: 0
        }
    );
    let other = syms["_other_data"];
    let u64_at = |a: u64| u64::from_le_bytes(b[a as usize..][..8].try_into().unwrap());
    assert_eq!(u64_at(data + 88), other - data);
    assert_eq!(u64_at(data + 96) as u32 as u64, other - data);
    assert_eq!(
        (data + 104).wrapping_add(u64_at(data + 104)),
        slot,
        "64-bit POINTER_TO_GOT delta"
    );
    assert_eq!(
        other.wrapping_add(u64_at(other) as u32 as i32 as i64 as u64),
        slot,
        "32-bit POINTER_TO_GOT delta"
    );
    // Reproducible.
    assert_eq!(
        link(MACOS11, &[("relocs.o", &obj)]).unwrap().bytes,
        linked.bytes
    );
}

/// Rewrites the type (high nibble of word 1) of the `n`-th relocation of the
/// object (in file order over all sections) and, optionally, 8 bytes at `slot`.
fn patch_reloc(
    obj: &mut [u8],
    sect: &str,
    r_address: u32,
    new_type: u8,
    slot: Option<(usize, u64)>,
) {
    let m = MachO::parse(obj).unwrap();
    let s = m.sections.iter().position(|s| s.sectname == sect).unwrap();
    // section_64: reloff at +56, nreloc at +60 of the header, which follows the segment command.
    let _ = s;
    let hdr = find_section_header(obj, sect);
    let reloff = u32::from_le_bytes(obj[hdr + 56..hdr + 60].try_into().unwrap()) as usize;
    let nreloc = u32::from_le_bytes(obj[hdr + 60..hdr + 64].try_into().unwrap()) as usize;
    let mut done = false;
    for k in 0..nreloc {
        let at = reloff + 8 * k;
        if u32::from_le_bytes(obj[at..at + 4].try_into().unwrap()) == r_address {
            let w = u32::from_le_bytes(obj[at + 4..at + 8].try_into().unwrap());
            let w = (w & 0x0fff_ffff) | (u32::from(new_type) << 28);
            obj[at + 4..at + 8].copy_from_slice(&w.to_le_bytes());
            done = true;
        }
    }
    assert!(done, "relocation at {r_address:#x} in {sect}");
    if let Some((off, v)) = slot {
        obj[off..off + 8].copy_from_slice(&v.to_le_bytes());
    }
}

/// File offset of the `section_64` header named `sect`.
fn find_section_header(obj: &[u8], sect: &str) -> usize {
    let ncmds = u32::from_le_bytes(obj[16..20].try_into().unwrap()) as usize;
    let mut at = 32;
    for _ in 0..ncmds {
        let cmd = u32::from_le_bytes(obj[at..at + 4].try_into().unwrap());
        let size = u32::from_le_bytes(obj[at + 4..at + 8].try_into().unwrap()) as usize;
        if cmd == 0x19 {
            let nsects = u32::from_le_bytes(obj[at + 64..at + 68].try_into().unwrap()) as usize;
            for i in 0..nsects {
                let h = at + 72 + 80 * i;
                let name = &obj[h..h + 16];
                let end = name.iter().position(|&c| c == 0).unwrap_or(16);
                if &name[..end] == sect.as_bytes() {
                    return h;
                }
            }
        }
        at += size;
    }
    panic!("no section {sect}");
}

fn section_file_offset(obj: &[u8], sect: &str) -> usize {
    let h = find_section_header(obj, sect);
    u32::from_le_bytes(obj[h + 48..h + 52].try_into().unwrap()) as usize
}

const KMOD: &str = r#"
    .section __TEXT,__text,regular,pure_instructions
    .p2align 2
_start_fn:
    ret
_stop_fn:
    ret
_callback:
    ret
    nop
    nop
    .section __DATA,__data
    .globl _kmod_info
    .p2align 3
_kmod_info:
    .long 0, 0, 1, 0xffffffff
    .space 164
    .quad _start_fn
    .quad _stop_fn
"#;

#[test]
fn authenticated_pointer_relocations_become_auth_fixups() {
    // clang-19's Mach-O writer emits `@AUTH` pointers as plain UNSIGNED (with
    // the schema lost), so the input is made by patching one: type 11, slot =
    // addend 8 | diversity 0x1234 | addrDiv | key DA | bit 63.
    let dir = tempfile::tempdir().unwrap();
    let asm = format!(
        "{KMOD}\n    .globl _ptrs\n    .p2align 3\n_ptrs:\n    .quad _callback\n    .quad _kpi_func\n"
    );
    let mut obj = compile_asm(dir.path(), "auth", &asm);
    let data = section_file_offset(&obj, "__data");
    let ptrs = 196 + 4; // _kmod_info (196 bytes) rounded up to 8
    let slot = 8 | (0x1234 << 32) | (1 << 48) | (2 << 49) | (1 << 63);
    patch_reloc(
        &mut obj,
        "__data",
        ptrs as u32,
        11,
        Some((data + ptrs, slot)),
    );
    let slot2 = 0xA51Fu64 << 32 | (1 << 63);
    patch_reloc(
        &mut obj,
        "__data",
        ptrs as u32 + 8,
        11,
        Some((data + ptrs + 8, slot2)),
    );
    let linked = link(MACOS11, &[("auth.o", &obj)]).expect("links");
    let path = save(dir.path(), "auth", &linked.bytes);
    let fixups = check_structure(&path, &linked.bytes, false);
    let syms = nm(&path);
    assert_eq!(
        fixups[&syms["_ptrs"]],
        FixupKind::AuthRebase {
            target: syms["_callback"] + 8,
            key: 2,
            addr_div: true,
            diversity: 0x1234
        }
    );
    assert!(matches!(
        &fixups[&(syms["_ptrs"] + 8)],
        FixupKind::AuthBind { name, key: 0, addr_div: false, diversity: 0xA51F, .. } if name == "_kpi_func"
    ));
    // A malformed slot (bit 63 clear) is rejected.
    let mut bad = obj.clone();
    bad[data + ptrs..data + ptrs + 8].copy_from_slice(&8u64.to_le_bytes());
    let err = link(MACOS11, &[("bad.o", &bad)]).unwrap_err().to_string();
    assert!(
        err.contains("ARM64_RELOC_AUTHENTICATED_POINTER") && err.contains("malformed"),
        "{err}"
    );
}

#[test]
fn marked_slots_become_auth_rebases_and_bad_marks_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let marks = |slot_value: &str, disc: u32| {
        format!(
            "{KMOD}\n    .globl _filter\n    .p2align 3\n_filter:\n    .quad 0\n    {slot_value}\n\
             _not_code:\n    .quad 0\n\
             .section __DATA,__prx_auth\n    .p2align 3\n    .quad _filter+8\n    .short {disc}\n    .byte 0, 0\n    .long 0\n"
        )
    };
    let obj = compile_asm(dir.path(), "marked", &marks(".quad _callback", 0x0F74));
    let linked = link(MACOS11, &[("marked.o", &obj)]).expect("links");
    let path = save(dir.path(), "marked", &linked.bytes);
    let fixups = check_structure(&path, &linked.bytes, false);
    let syms = nm(&path);
    assert_eq!(
        fixups[&(syms["_filter"] + 8)],
        FixupKind::AuthRebase {
            target: syms["_callback"],
            key: 0,
            addr_div: false,
            diversity: 0x0F74
        }
    );
    let otool = run("llvm-otool-19", &["-l", &path]);
    assert!(
        !otool.contains("__prx_auth"),
        "the mark section is consumed"
    );

    // A marked slot holding no function pointer: the kernel would call garbage.
    let obj = compile_asm(dir.path(), "null", &marks(".quad 0", 0x0F74));
    let err = link(MACOS11, &[("null.o", &obj)]).unwrap_err().to_string();
    assert!(
        err.starts_with("null.o: pointer authentication: marked slot _filter+0x8")
            && err.contains("holds no pointer fix-up"),
        "{err}"
    );
    // A marked slot pointing at data, not code.
    let obj = compile_asm(dir.path(), "data", &marks(".quad _not_code", 0x0F74));
    let err = link(MACOS11, &[("data.o", &obj)]).unwrap_err().to_string();
    assert!(
        err.contains("points at _not_code") && err.contains("not at a function in __TEXT_EXEC"),
        "{err}"
    );
    // kmod_info.start pointing at data.
    let obj = compile_asm(
        dir.path(),
        "kmodbad",
        &KMOD.replace(".quad _start_fn", ".quad _kmod_info"),
    );
    let err = link(MACOS11, &[("kmodbad.o", &obj)])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("_kmod_info.start points at _kmod_info"),
        "{err}"
    );
}

#[test]
fn unsupported_relocations_are_rejected_naming_object_section_offset_and_type() {
    let dir = tempfile::tempdir().unwrap();
    // A relocation type kextld does not know (12), made by patching.
    let asm = format!("{KMOD}\n    .p2align 3\n_p:\n    .quad _callback\n");
    let mut obj = compile_asm(dir.path(), "unknown", &asm);
    patch_reloc(&mut obj, "__data", 200, 12, None);
    let err = link(MACOS11, &[("unknown.o", &obj)])
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "unknown.o: section __DATA,__data offset 0xc8: unknown ARM64 relocation type to _callback: \
         unsupported relocation (type 12, pcrel=false, length=8, extern=true); compile for the arm64e \
         kernel (clang -mkernel / the kernel target spec); if a supported compiler produced this, \
         report it with the object attached"
    );
    // 32-bit absolute pointer.
    let obj = compile_asm(
        dir.path(),
        "abs32",
        &format!("{KMOD}\n_w:\n    .long _callback\n"),
    );
    let err = link(MACOS11, &[("abs32.o", &obj)]).unwrap_err().to_string();
    assert!(
        err.contains("offset 0xc4: ARM64_RELOC_UNSIGNED to _callback: 32-bit absolute address"),
        "{err}"
    );
    // Thread-local variables.
    let tlv = format!(
        "{KMOD}\n    .section __TEXT,__text,regular,pure_instructions\n_t:\n    adrp x0, _tv@TLVPPAGE\n    ldr x0, [x0, _tv@TLVPPAGEOFF]\n    ret\n"
    );
    let obj = compile_asm(dir.path(), "tlv", &tlv);
    let err = link(MACOS11, &[("tlv.o", &obj)]).unwrap_err().to_string();
    assert!(
        err.contains("to _tv: thread-local variables are not supported"),
        "{err}"
    );
    // Page-relative reference to undefined data (needs the GOT).
    let adrp = format!(
        "{KMOD}\n    .section __TEXT,__text,regular,pure_instructions\n_u:\n    adrp x0, _kdata@PAGE\n    ret\n"
    );
    let obj = compile_asm(dir.path(), "adrp", &adrp);
    let err = link(MACOS11, &[("adrp.o", &obj)]).unwrap_err().to_string();
    assert!(
        err.contains(
            "ARM64_RELOC_PAGE21 to _kdata: page-relative reference to an undefined symbol"
        ),
        "{err}"
    );
}

#[test]
fn misaligned_fixups_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    // A pointer at an odd offset in data.
    let asm = format!("{KMOD}\n_odd:\n    .byte 1\n    .quad _callback\n");
    let obj = compile_asm(dir.path(), "odd", &asm);
    let err = link(MACOS11, &[("odd.o", &obj)]).unwrap_err().to_string();
    assert!(
        err.contains(
            "section __DATA,__data offset 0xc5: ARM64_RELOC_UNSIGNED to _callback: pointer at"
        ) && err.contains("is not 4-byte aligned"),
        "{err}"
    );
    // A 64-bit load from an address that is not 8-byte aligned.
    let asm = format!(
        "{KMOD}\n    .section __TEXT,__text,regular,pure_instructions\n_l:\n    adrp x0, _v@PAGE\n    ldr x1, [x0, _v@PAGEOFF]\n    ret\n    .section __DATA,__data\n    .byte 0\n_v:\n    .quad 0\n"
    );
    let obj = compile_asm(dir.path(), "ldr", &asm);
    let err = link(MACOS11, &[("ldr.o", &obj)]).unwrap_err().to_string();
    assert!(
        err.contains("ARM64_RELOC_PAGEOFF12 to _v") && err.contains("misaligned target"),
        "{err}"
    );
}

#[test]
fn missing_kmod_info_and_wrong_arch() {
    let dir = tempfile::tempdir().unwrap();
    let obj = compile_asm(dir.path(), "nokmod", "    .text\n_f:\n    ret\n");
    let err = link(MACOS11, &[("nokmod.o", &obj)]).unwrap_err();
    assert!(matches!(err, LinkError::NoKmodInfo), "{err}");
    let x86 = dir.path().join("x.s");
    std::fs::write(&x86, "    .text\n_f:\n    retq\n").unwrap();
    let out = dir.path().join("x.o");
    run(
        "clang-19",
        &[
            "-target",
            "x86_64-apple-macos10.13",
            "-c",
            x86.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ],
    );
    let err = link(MACOS11, &[("x.o", &std::fs::read(out).unwrap())])
        .unwrap_err()
        .to_string();
    assert!(err.contains("wrong architecture"), "{err}");
}

/// An arm64 (non-e) object given to `kextld link --arch arm64e` fails naming
/// the ABI: its function pointers would stay unsigned.
#[test]
fn plain_arm64_objects_are_rejected_naming_the_abi() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("plain.c");
    std::fs::write(&src, "int plain(int x) { return x + 1; }\n").unwrap();
    let obj = dir.path().join("plain.o");
    run(
        "clang-19",
        &[
            "-target",
            "arm64-apple-macos11",
            "-c",
            src.to_str().unwrap(),
            "-o",
            obj.to_str().unwrap(),
        ],
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kextld"))
        .args(["link", "--arch", "arm64e", "-o"])
        .arg(dir.path().join("out"))
        .arg(&obj)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("plain.o")
            && stderr.contains("incompatible arm64e ABI")
            && stderr.contains("a plain arm64 object")
            && stderr.contains("arm64e-apple-macos11"),
        "{stderr}"
    );
    assert!(!dir.path().join("out").exists());
}

/// Zero-fill takes no file space: with a 192 KiB `__bss` in `__DATA`, the
/// segments after it (`__DATA_CONST`, `__LINKEDIT`) sit in the file right after
/// the previous file bytes; llvm-objdump decodes the chained fixups there and
/// kextld's verifier accepts the image.
#[test]
fn zerofill_takes_no_file_space() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("big.c");
    let ckext = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ckext.c"),
    )
    .unwrap();
    std::fs::write(
        &src,
        format!(
            "{ckext}\nstatic unsigned char big_table[192 * 1024];\n\
             unsigned char *prx_table(unsigned i) {{ return &big_table[i]; }}\n"
        ),
    )
    .unwrap();
    let obj = compile(dir.path(), "big", &src);
    let linked = link(MACOS11, &[("big.o", &obj)]).unwrap();
    assert!(
        linked.bytes.len() < 128 * 1024,
        "{} bytes",
        linked.bytes.len()
    );
    let path = save(dir.path(), "big", &linked.bytes);
    let otool = run("llvm-otool-19", &["-l", &path]);
    let mut file_end = 0;
    let mut moved = 0;
    for seg in otool.split("cmd LC_SEGMENT_64").skip(1) {
        let get = |key: &str| -> u64 {
            let v = seg
                .lines()
                .find_map(|l| l.trim().strip_prefix(key))
                .unwrap()
                .trim()
                .to_string();
            match v.strip_prefix("0x") {
                Some(h) => u64::from_str_radix(h, 16).unwrap(),
                None => v.parse().unwrap(),
            }
        };
        let (vmaddr, fileoff, filesize) = (get("vmaddr "), get("fileoff "), get("filesize "));
        assert_eq!(fileoff, file_end, "{otool}");
        file_end = fileoff + filesize;
        if fileoff < vmaddr {
            moved += 1;
        }
    }
    assert_eq!(file_end, linked.bytes.len() as u64);
    assert!(
        moved >= 2,
        "__DATA_CONST and __LINKEDIT follow the zero-fill\n{otool}"
    );
    let fixups = run("llvm-objdump-19", &["--macho", "--chained-fixups", &path]);
    assert!(fixups.contains("dyld chained import"), "{fixups}");
    let report = kextld::verify::verify(&linked.bytes, kextld::kpi::KpiTables::builtin());
    assert!(
        report
            .findings
            .iter()
            .all(|f| (f.check == "kpi-symbol" && f.message.contains("_kpi_"))
                || f.check == "ptrauth"),
        "{report}"
    );
}

/// Found by the kextld_link fuzz target (its input is committed as
/// `fuzz/corpus/kextld_link/kmod-info-past-its-section`): an arm64e object
/// whose `_kmod_info` sits near the end of its section, so the structure's
/// start/stop slots lie past every section. The linker used to panic
/// (`expect`); it now refuses the input, naming the field.
#[test]
fn kmod_info_running_past_its_section_is_an_error_not_a_panic() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let data =
        std::fs::read(root.join("fuzz/corpus/kextld_link/kmod-info-past-its-section")).unwrap();
    let (sel, rest) = data.split_first().unwrap();
    assert_eq!(sel & 1, 1, "the input selects arm64e");
    let mut inputs = vec![("fuzz.o".to_string(), rest.to_vec())];
    if sel & 2 != 0 {
        inputs.push(("fuzz2.o".to_string(), rest.to_vec()));
    }
    let r = kextld::link::link_buffers(
        kextld::Arch::Arm64e,
        kextld::MinOs::default_for(kextld::Arch::Arm64e),
        0,
        &inputs,
    );
    let Err(e) = r else {
        panic!("the input is refused")
    };
    let e = e.to_string();
    assert!(e.contains("_kmod_info."), "{e}");
    assert!(e.contains("outside every section"), "{e}");
}
