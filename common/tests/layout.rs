//! Layout cross-check of the generated bindings against clang.
//!
//! For each kernel target (x86_64-apple-macos10.13, arm64e-apple-macos11) this
//! compiles a C probe with clang-19 — `-mkernel`, only the project's header set
//! (`common/include`), no SDK — that stores `sizeof`, `_Alignof` and `offsetof` of
//! every struct and union field listed in that architecture's generated
//! `layout::TABLE` into one array, reads the array back from the Mach-O object, and
//! compares it number by number with the table, whose values rustc computed from
//! the generated Rust types.
//!
//! Both generated files are compiled here, on the host, as modules of this test:
//! the arm64e numbers are compared with the arm64e bindings (`aarch64.rs`), not
//! with the host's. The host must be LP64 like both kernels (x86_64/aarch64
//! Linux or macOS are): for these `repr(C)` types rustc's layout then only depends
//! on the generated declarations, which is what is being checked.
//!
//! A reordered, resized or retyped field in the header set changes clang's numbers
//! but not the committed bindings, so this test fails until `cargo xtask bindgen`
//! is rerun (and `--check` fails until the result is committed).

use std::path::{Path, PathBuf};
use std::process::Command;

use object::{Object, ObjectSection, ObjectSymbol};

// Both modules declare the same extern functions with their own (structurally equal)
// types, hence `clashing_extern_declarations`; nothing here calls them.
#[path = "../src/sys/x86_64.rs"]
#[rustfmt::skip]
#[allow(non_camel_case_types, non_snake_case, non_upper_case_globals, dead_code, clashing_extern_declarations)]
mod x86_64;

#[path = "../src/sys/aarch64.rs"]
#[rustfmt::skip]
#[allow(non_camel_case_types, non_snake_case, non_upper_case_globals, dead_code, clashing_extern_declarations)]
mod arm64e;

/// xnu's own numbers (LP64), which must hold on both targets whatever the header
/// set says.
const KNOWN_SIZES: &[(&str, usize)] = &[
    ("struct sflt_filter", 192),
    ("struct ipf_filter", 40),
    ("struct kern_ctl_reg", 160),
    ("struct ctl_info", 100),
    ("struct sockaddr_ctl", 32),
    ("struct kmod_info", 196),
    ("struct ipf_pktopts", 24),
];

const PROBE_SYMBOL: &str = "prx_layout_probe";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn clang() -> String {
    std::env::var("PRX_CLANG").unwrap_or_else(|_| "clang-19".to_owned())
}

/// The probe's C source for a table.
fn probe_source(header: &str, table: &[(&str, &str, usize)]) -> String {
    let mut s = format!("#include \"{header}\"\n\n");
    s.push_str(&format!("const unsigned long long {PROBE_SYMBOL}[] = {{\n"));
    for (ty, what, _) in table {
        let expr = match *what {
            "sizeof" => format!("sizeof({ty})"),
            "alignof" => format!("_Alignof({ty})"),
            field => format!("__builtin_offsetof({ty}, {field})"),
        };
        s.push_str(&format!("    {expr}, /* {ty} {what} */\n"));
    }
    s.push_str("};\n");
    s
}

/// Compiles the probe for `target` and returns the numbers it recorded.
fn clang_numbers(target: &str, table: &[(&str, &str, usize)]) -> Vec<u64> {
    probe_numbers(target, "prx_kpi.h", &["-nostdinc"], table)
}

/// Compiles a probe of `table` over `header` (with `args`) and reads the numbers back.
fn probe_numbers(
    target: &str,
    header: &str,
    args: &[&str],
    table: &[(&str, &str, usize)],
) -> Vec<u64> {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("layout-probe");
    std::fs::create_dir_all(&dir).unwrap();
    let stem = format!("{target}-{}", header.trim_end_matches(".h"));
    let src = dir.join(format!("{stem}.c"));
    let obj = dir.join(format!("{stem}.o"));
    std::fs::write(&src, probe_source(header, table)).unwrap();
    let include = root().join("include");
    let out = Command::new(clang())
        .args(["-target", target, "-mkernel", "-std=c11", "-c", "-o"])
        .arg(&obj)
        .args(args)
        .arg("-I")
        .arg(&include)
        .arg(&src)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "running {}: {e}\ninstall clang-19 (apt-get install clang-19) or set PRX_CLANG",
                clang()
            )
        });
    assert!(
        out.status.success(),
        "clang failed on the layout probe for {target} ({}):\n{}",
        src.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let data = std::fs::read(&obj).unwrap();
    let file = object::File::parse(&*data).unwrap();
    assert_eq!(
        file.format(),
        object::BinaryFormat::MachO,
        "{target}: probe is not Mach-O"
    );
    let sym = file
        .symbols()
        .find(|s| {
            s.name()
                .map(|n| n.trim_start_matches('_') == PROBE_SYMBOL)
                .unwrap_or(false)
        })
        .unwrap_or_else(|| panic!("{target}: no {PROBE_SYMBOL} symbol in the probe object"));
    let section = file
        .section_by_index(sym.section_index().expect("probe symbol has a section"))
        .unwrap();
    let bytes = section.data().unwrap();
    let start = usize::try_from(sym.address() - section.address()).unwrap();
    let len = table.len() * 8;
    let raw = &bytes[start..start + len];
    raw.chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// Compares one architecture; returns one line per mismatch.
fn cross_check(target: &str, table: &[(&str, &str, usize)]) -> Vec<String> {
    let numbers = clang_numbers(target, table);
    assert_eq!(numbers.len(), table.len());
    let mut errors = Vec::new();
    for ((ty, what, rust), c) in table.iter().zip(&numbers) {
        if *rust as u64 != *c {
            errors.push(format!(
                "{target}: {ty} {what}: clang {c}, generated Rust {rust}"
            ));
        }
    }
    for (ty, size) in KNOWN_SIZES {
        match table
            .iter()
            .zip(&numbers)
            .find(|((t, w, _), _)| t == ty && *w == "sizeof")
        {
            Some((_, c)) if *c == *size as u64 => {}
            Some((_, c)) => errors.push(format!("{target}: {ty} is {c} bytes, xnu's is {size}")),
            None => errors.push(format!(
                "{target}: {ty} missing from the generated bindings"
            )),
        }
    }
    errors
}

fn assert_layout(target: &str, table: &[(&str, &str, usize)]) {
    let errors = cross_check(target, table);
    assert!(
        errors.is_empty(),
        "the generated bindings disagree with clang's layout of the header set:\n  {}\n\
         regenerate with `cargo xtask bindgen` (and check the header set against xnu)",
        errors.join("\n  ")
    );
}

#[test]
fn x86_64_layout_matches_clang() {
    assert_layout("x86_64-apple-macos10.13", x86_64::layout::TABLE);
}

#[test]
fn arm64e_layout_matches_clang() {
    assert_layout("arm64e-apple-macos11", arm64e::layout::TABLE);
}

/// The probe itself must be able to see a difference: a table claiming a wrong
/// offset is reported.
#[test]
fn a_wrong_offset_is_reported() {
    let mut table: Vec<(&str, &str, usize)> = x86_64::layout::TABLE.to_vec();
    let i = table
        .iter()
        .position(|(t, w, _)| *t == "struct sflt_filter" && *w == "sf_attach")
        .unwrap();
    table[i].2 += 8;
    let errors = cross_check("x86_64-apple-macos10.13", &table);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("struct sflt_filter sf_attach"),
        "{errors:?}"
    );
}

/// Every struct in the known-size list is in both tables, so the check above
/// cannot pass by omission.
#[test]
fn tables_cover_the_known_structs() {
    for table in [x86_64::layout::TABLE, arm64e::layout::TABLE] {
        for (ty, _) in KNOWN_SIZES {
            assert!(
                table.iter().any(|(t, w, _)| t == ty && *w == "sizeof"),
                "{ty} missing"
            );
        }
    }
}

/// The header set against a real SDK: the same probe over Apple's headers
/// (`common/include/prx_sdk.h`) must give the same numbers as over prx's. Needs a
/// `Kernel.framework/Headers` (or MacKernelSDK's `Headers`, x86_64 only):
/// `PRX_KERNEL_SDK=/path/to/Headers PRX_KERNEL_SDK_TARGETS=x86_64 cargo test -p common --test layout -- --ignored`.
/// `union in6_addr_words` is left out: xnu's union is anonymous (its size is still
/// checked through `struct in6_addr`).
#[test]
#[ignore = "needs a macOS kernel SDK: set PRX_KERNEL_SDK (see the doc comment)"]
fn header_set_matches_a_real_sdk() {
    let sdk = std::env::var("PRX_KERNEL_SDK")
        .expect("set PRX_KERNEL_SDK to a Kernel.framework/Headers directory");
    let archs =
        std::env::var("PRX_KERNEL_SDK_TARGETS").unwrap_or_else(|_| "x86_64,arm64e".to_owned());
    let mut errors = Vec::new();
    for (arch, target, table) in [
        ("x86_64", "x86_64-apple-macos10.13", x86_64::layout::TABLE),
        ("arm64e", "arm64e-apple-macos11", arm64e::layout::TABLE),
    ] {
        if !archs.split(',').any(|a| a == arch) {
            continue;
        }
        let table: Vec<_> = table
            .iter()
            .copied()
            .filter(|(t, _, _)| *t != "union in6_addr_words")
            .collect();
        let ours = clang_numbers(target, &table);
        let apple = probe_numbers(
            target,
            "prx_sdk.h",
            &["-nostdlibinc", "-DKERNEL", "-isystem", &sdk],
            &table,
        );
        for (((ty, what, _), a), b) in table.iter().zip(&ours).zip(&apple) {
            if a != b {
                errors.push(format!(
                    "{target}: {ty} {what}: prx header set {a}, SDK {b}"
                ));
            }
        }
    }
    assert!(
        errors.is_empty(),
        "the header set disagrees with the SDK:\n  {}",
        errors.join("\n  ")
    );
}
