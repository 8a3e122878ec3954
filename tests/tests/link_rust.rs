//! kextld on real rustc output: the kexts' staticlibs (built for the kernel
//! target by the same code `cargo xtask build` runs) link reproducibly, and a C
//! kext links against a Rust staticlib's compiler_builtins.

use kextld::link::{LinkOptions, link};
use kextld::{Arch, MinOs};
use prx_tests::{root, tool};

fn staticlibs() -> std::collections::BTreeMap<String, std::path::PathBuf> {
    let root = root();
    xtask::build::build_staticlibs(
        &root,
        &root.join("target"),
        Arch::X86_64,
        MinOs::X86_64_DEFAULT,
        true,
        &["kext-socket", "kext-ip"],
    )
    .expect("kernel build of the kext crates")
}

fn link_paths(inputs: Vec<std::path::PathBuf>) -> kextld::link::Linked {
    link(&LinkOptions {
        arch: Arch::X86_64,
        min_os: MinOs::X86_64_DEFAULT,
        inputs,
        source_version: 0,
    })
    .expect("links")
}

#[test]
fn kext_staticlibs_link_reproducibly_with_only_kpi_symbols_undefined() {
    for (name, lib) in staticlibs() {
        let a = link_paths(vec![lib.clone()]);
        let b = link_paths(vec![lib.clone()]);
        assert!(a.bytes == b.bytes, "{name}: two links differ");
        // Only KPI-exported symbols stay undefined (the kexts now use real KPIs).
        assert!(
            a.undefined.iter().any(|u| u == "_printf"),
            "{name}: {:?}",
            a.undefined
        );
        for u in &a.undefined {
            assert!(
                matches!(
                    kextld::kpi::KpiTables::builtin().lookup(Arch::X86_64, u),
                    kextld::kpi::Lookup::Public(_)
                ),
                "{name}: {u} is KPI-exported"
            );
        }
        assert_eq!(a.defined_exports, ["_kmod_info"], "{name}");
    }
}

/// The kexts' staticlibs, linked by kextld's library entry point, verify with no
/// finding at all and carry their own bundle identifiers in `kmod_info`.
#[test]
fn kext_staticlibs_link_and_verify_clean() {
    let ids = [
        ("kext-socket", "net.prx.kext.SocketFilter"),
        ("kext-ip", "net.prx.kext.IPFilter"),
    ];
    let libs = staticlibs();
    for (name, id) in ids {
        let lib = &libs[name];
        let bytes = std::fs::read(lib).unwrap_or_else(|e| panic!("{}: {e}", lib.display()));
        let linked = kextld::link::link_buffers(
            Arch::X86_64,
            MinOs::X86_64_DEFAULT,
            0,
            &[(name.to_string(), bytes)],
        )
        .unwrap_or_else(|e| panic!("linking {name}: {e}"));
        let report = kextld::verify::verify(&linked.bytes, kextld::kpi::KpiTables::builtin());
        assert!(report.findings.is_empty(), "{name}: {report}");
        assert_eq!(report.slices[0].kmod_name.as_deref(), Some(id), "{name}");
    }
}

#[test]
fn c_kext_takes_memset_from_a_rust_staticlibs_compiler_builtins() {
    let dir = tempfile::tempdir().unwrap();
    let src = root().join("kextld/tests/fixtures/ckext.c");
    let obj = dir.path().join("ckext.o");
    tool(
        "clang-19",
        &[
            "-target",
            "x86_64-apple-macos10.13",
            "-mkernel",
            "-fno-builtin",
            "-O2",
            "-c",
            src.to_str().unwrap(),
            "-o",
            obj.to_str().unwrap(),
        ],
    );
    // The staticlib's own kext object (which also defines _kmod_info) is not
    // loaded: ckext.o already defines it. Its compiler_builtins members (with
    // __LLVM bitcode and unwind info) provide the hidden _memset.
    let linked = link_paths(vec![obj, staticlibs()["kext-socket"].clone()]);
    assert_eq!(
        linked.undefined,
        ["_bzero", "_kpi_data_symbol", "_kpi_func_symbol", "_printf"]
    );
    let out = dir.path().join("mixed");
    std::fs::write(&out, &linked.bytes).unwrap();
    let out = out.to_str().unwrap();
    let memset = tool("llvm-nm-19", &["-m", out])
        .lines()
        .find(|l| l.ends_with(" _memset"))
        .and_then(|l| u64::from_str_radix(l.split_whitespace().next()?, 16).ok())
        .expect("_memset defined");
    // The call's rel32 (decoded from llvm-objdump's raw bytes) lands on _memset.
    let disasm = tool("llvm-objdump-19", &["--macho", "-d", out]);
    let (addr, bytes) = disasm
        .lines()
        .filter(|l| l.contains("_memset"))
        .find_map(|l| {
            let (addr, rest) = l.trim_start().split_once(":\t")?;
            let (bytes, _) = rest.split_once('\t')?;
            let bytes: Vec<u8> = bytes
                .split_whitespace()
                .filter_map(|b| u8::from_str_radix(b, 16).ok())
                .collect();
            (bytes.first() == Some(&0xe8)).then(|| (u64::from_str_radix(addr, 16).ok(), bytes))
        })
        .expect("a call to _memset");
    let disp = i32::from_le_bytes(bytes[1..5].try_into().unwrap()) as i64;
    assert_eq!((addr.unwrap() as i64 + 5 + disp) as u64, memset);
    let otool = tool("llvm-otool-19", &["-lv", out]);
    for dropped in ["__bitcode", "__compact_unwind", "__eh_frame"] {
        assert!(!otool.contains(dropped), "{dropped} must not be linked in");
    }
}
