//! `cargo xtask bindgen [--sdk PATH] [--check]`: generates `common::sys`'s KPI
//! bindings with bindgen.
//!
//! Input: the project's own KPI header set, `common/include/prx_kpi.h` (or, with
//! `--sdk`, Apple's headers through `common/include/prx_sdk.h`). Output: one file per
//! kernel architecture, `common/src/sys/x86_64.rs` and `common/src/sys/aarch64.rs`,
//! selected in `common::sys` by `cfg(target_arch)`. Each file is bindgen's output
//! (`use_core`, `core::ffi` C types, edition 2024 `unsafe extern "C"`, formatted with
//! prettyplease so the result does not depend on an installed rustfmt) followed by a
//! `layout::TABLE`: the size, alignment and every field offset of every struct and
//! union, as Rust computes them from the generated types. `common/tests/layout.rs`
//! compares that table with clang's numbers for a C probe compiled from the header
//! set for each target, so bindgen's own layout tests are turned off.
//!
//! Per-architecture files are written even when they come out identical: a real SDK
//! can differ between x86_64 and arm64e, and `diff` then shows how.
//!
//! libclang is loaded at run time (clang-sys `runtime`), so xtask builds without it;
//! only this command needs it (Debian: `libclang-19-dev`; `LIBCLANG_PATH` picks one).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use bindgen::callbacks::{IntKind, ParseCallbacks};

/// One kernel architecture the bindings are generated for.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// Name used by prx (`kext_metadata::Arch`).
    pub arch: &'static str,
    /// clang target triple, with the minimum macOS of that architecture.
    pub clang_target: &'static str,
    /// The generated file, relative to the workspace root.
    pub file: &'static str,
}

/// The targets, in the order the files are written and checked.
pub const TARGETS: [Target; 2] = [
    Target {
        arch: "x86_64",
        clang_target: "x86_64-apple-macos10.13",
        file: "common/src/sys/x86_64.rs",
    },
    Target {
        arch: "arm64e",
        clang_target: "arm64e-apple-macos11",
        file: "common/src/sys/aarch64.rs",
    },
];

/// The project's header set (directory, umbrella header and the `--sdk` umbrella).
pub const INCLUDE_DIR: &str = "common/include";
/// Umbrella header of the project's header set.
pub const HEADER: &str = "common/include/prx_kpi.h";
/// Umbrella header that includes Apple's headers instead (`--sdk`).
pub const SDK_HEADER: &str = "common/include/prx_sdk.h";

/// The libclang major version the committed files are generated with.
pub const LIBCLANG_MAJOR: u32 = 19;

/// One generated file: where it goes and its full text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    /// Path relative to the workspace root.
    pub file: &'static str,
    /// Contents.
    pub text: String,
}

/// Writes the bindings (or with `check`, compares them with the committed files).
pub fn run(root: &Path, sdk: Option<&Path>, check: bool) -> Result<()> {
    if check {
        return self::check(root, sdk);
    }
    for g in generate(root, sdk)? {
        let path = root.join(g.file);
        let old = std::fs::read_to_string(&path).unwrap_or_default();
        if old == g.text {
            eprintln!("{} unchanged", g.file);
            continue;
        }
        let tmp = path.with_extension("rs.tmp");
        std::fs::write(&tmp, &g.text).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("replacing {}", path.display()))?;
        eprintln!("wrote {} ({} lines)", g.file, g.text.lines().count());
    }
    Ok(())
}

/// Fails, naming the first differing line, when a committed file under `root`
/// differs from fresh output.
pub fn check(root: &Path, sdk: Option<&Path>) -> Result<()> {
    for g in generate(root, sdk)? {
        let path = root.join(g.file);
        let committed = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        if let Some(diff) = first_difference(&committed, &g.text) {
            bail!(
                "{} differs from fresh `cargo xtask bindgen` output at line {}:\n  committed: {}\n  generated: {}\n\
                 run `cargo xtask bindgen` and commit the result (never edit the generated files by hand)",
                g.file,
                diff.line,
                diff.committed.as_deref().unwrap_or("<end of file>"),
                diff.generated.as_deref().unwrap_or("<end of file>"),
            );
        }
        eprintln!("{} is up to date", g.file);
    }
    Ok(())
}

/// The first line at which two texts differ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineDiff {
    /// 1-based line number.
    pub line: usize,
    /// That line in the committed text (`None`: past its end).
    pub committed: Option<String>,
    /// That line in the generated text (`None`: past its end).
    pub generated: Option<String>,
}

/// Compares line by line; `None` when equal.
pub fn first_difference(committed: &str, generated: &str) -> Option<LineDiff> {
    if committed == generated {
        return None;
    }
    let (mut a, mut b) = (committed.split('\n'), generated.split('\n'));
    let mut line = 1;
    loop {
        match (a.next(), b.next()) {
            (Some(x), Some(y)) if x == y => line += 1,
            (None, None) => {
                // Equal lines but unequal texts cannot happen with split('\n'); be safe.
                return Some(LineDiff {
                    line,
                    committed: None,
                    generated: None,
                });
            }
            (x, y) => {
                return Some(LineDiff {
                    line,
                    committed: x.map(str::to_owned),
                    generated: y.map(str::to_owned),
                });
            }
        }
    }
}

/// Runs bindgen for every target and returns the files' contents.
pub fn generate(root: &Path, sdk: Option<&Path>) -> Result<Vec<Generated>> {
    let clang = load_libclang()?;
    let mut out = Vec::new();
    for t in TARGETS {
        let bindings = run_bindgen(root, sdk, t).with_context(|| {
            format!(
                "generating the {} bindings (clang target {})",
                t.arch, t.clang_target
            )
        })?;
        let table = layout_table(&bindings)
            .with_context(|| format!("reading back the {} bindings", t.arch))?;
        let mut text = header_comment(t, sdk, &clang);
        text.push('\n');
        text.push_str(&bindings);
        text.push('\n');
        text.push_str(&table);
        out.push(Generated { file: t.file, text });
    }
    Ok(out)
}

/// Loads libclang (once per thread: clang-sys keeps it in a thread-local, where
/// bindgen finds it) and returns its version as written into the header comment.
fn load_libclang() -> Result<String> {
    if !clang_sys::is_loaded() {
        clang_sys::load().map_err(|e| {
            anyhow::anyhow!(
                "`cargo xtask bindgen` needs libclang {LIBCLANG_MAJOR}, which was not found ({e}).\n\
                 Install it with `apt-get install libclang-{LIBCLANG_MAJOR}-dev` (Debian/Ubuntu), or point \
                 LIBCLANG_PATH at the directory holding libclang.so/libclang.dylib. \
                 Only this command needs libclang; `cargo xtask build` does not."
            )
        })?;
    }
    let v = bindgen::clang_version();
    let Some((major, minor)) = v.parsed else {
        bail!("could not read libclang's version from {:?}", v.full);
    };
    if major != LIBCLANG_MAJOR {
        eprintln!(
            "warning: libclang {major}.{minor} loaded; the committed bindings are generated with libclang \
             {LIBCLANG_MAJOR} (set LIBCLANG_PATH=/usr/lib/llvm-{LIBCLANG_MAJOR}/lib to choose it)"
        );
    }
    Ok(format!("libclang {major}.{minor}"))
}

fn header_comment(t: Target, sdk: Option<&Path>, clang: &str) -> String {
    let source = match sdk {
        None => format!("{HEADER} (prx's own KPI header set; its xnu version is stated there)"),
        Some(p) => format!("{SDK_HEADER} over the SDK headers at {}", p.display()),
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "// @generated by `cargo xtask bindgen` (xtask/src/bindgen.rs). Do not edit:"
    );
    let _ = writeln!(
        s,
        "// change the header set and regenerate; `cargo xtask bindgen --check` fails on drift."
    );
    let _ = writeln!(s, "//");
    let _ = writeln!(
        s,
        "// Architecture: {} (clang -target {} -mkernel)",
        t.arch, t.clang_target
    );
    let _ = writeln!(s, "// Source: {source}");
    let _ = writeln!(s, "// Generator: bindgen {} with {clang}", BINDGEN_VERSION);
    let _ = writeln!(
        s,
        "// `layout::TABLE` at the end is checked against clang by common/tests/layout.rs."
    );
    s
}

/// The bindgen version in Cargo.lock, for the header comment.
const BINDGEN_VERSION: &str = "0.73";

fn run_bindgen(root: &Path, sdk: Option<&Path>, t: Target) -> Result<String> {
    let include = root.join(INCLUDE_DIR);
    let mut args: Vec<String> = vec!["-target".into(), t.clang_target.into(), "-mkernel".into()];
    let header = match sdk {
        None => {
            // The header set includes nothing outside itself.
            args.push("-nostdinc".into());
            root.join(HEADER)
        }
        Some(sdk) => {
            if !sdk.is_dir() {
                bail!(
                    "--sdk {}: no such directory (pass .../Kernel.framework/Headers)",
                    sdk.display()
                );
            }
            // Apple's kernel headers, plus clang's own (stdarg.h and friends).
            args.extend([
                "-nostdlibinc".into(),
                "-DKERNEL".into(),
                "-isystem".into(),
                path_str(sdk)?.into(),
            ]);
            root.join(SDK_HEADER)
        }
    };
    let mut builder = bindgen::Builder::default()
        .header(path_str(&header)?)
        .clang_args(&args)
        .use_core()
        .ctypes_prefix("::core::ffi")
        // The workspace's edition (`unsafe extern "C"` blocks); 1.85 is the first
        // Rust with edition 2024 and fixes the feature set bindgen may use.
        .rust_target(
            bindgen::RustTarget::stable(85, 0).map_err(|e| anyhow::anyhow!("bindgen: {e}"))?,
        )
        .rust_edition(bindgen::RustEdition::Edition2024)
        .formatter(bindgen::Formatter::Prettyplease)
        .disable_header_comment()
        .layout_tests(false)
        .merge_extern_blocks(true)
        .parse_callbacks(Box::new(ConstTypes));
    builder = match sdk {
        // Everything the header set declares is the KPI subset.
        None => builder.allowlist_file(format!("{}/.*", regex_escape(path_str(&include)?))),
        // Exactly the items the header set declares, now taken from Apple's headers.
        Some(_) => {
            let names = project_item_names(root, t)?;
            let re = format!("^({})$", names.join("|"));
            builder
                .allowlist_function(&re)
                .allowlist_type(&re)
                .allowlist_var(&re)
        }
    };
    let bindings = builder
        .generate()
        .map_err(|e| anyhow::anyhow!("bindgen: {e}"))?;
    Ok(bindings.to_string())
}

/// The names of the items the project's header set declares (for `--sdk`).
fn project_item_names(root: &Path, t: Target) -> Result<Vec<String>> {
    let text = run_bindgen(root, None, t)?;
    let file = syn::parse_file(&text).context("parsing bindgen's output")?;
    let mut names = Vec::new();
    for item in &file.items {
        match item {
            syn::Item::Struct(s) => names.push(s.ident.to_string()),
            syn::Item::Union(u) => names.push(u.ident.to_string()),
            syn::Item::Type(ty) => names.push(ty.ident.to_string()),
            syn::Item::Const(c) => names.push(c.ident.to_string()),
            syn::Item::ForeignMod(m) => {
                for f in &m.items {
                    if let syn::ForeignItem::Fn(f) = f {
                        names.push(f.sig.ident.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    names.sort();
    names.dedup();
    Ok(names)
}

/// Rust types of the `#define` constants, by name prefix: `int` where the KPI takes
/// or returns an `int` (errno values, domains/types/protocols, `sf_flags`,
/// `info_version`), `usize` for array lengths, `u32` (bindgen's default for positive
/// values) for flag words typed `u_int32_t`.
#[derive(Debug)]
struct ConstTypes;

impl ParseCallbacks for ConstTypes {
    fn int_macro(&self, name: &str, _value: i64) -> Option<IntKind> {
        const INT: &[&str] = &[
            "KERN_",
            "AF_",
            "PF_",
            "SOCK_",
            "IPPROTO_",
            "SYSPROTO_",
            "SFLT_",
            "KMOD_INFO_VERSION",
        ];
        if name.ends_with("MAX_NAME") || name == "MAX_KCTL_NAME" {
            return Some(IntKind::Custom {
                name: "usize",
                is_signed: false,
            });
        }
        // EINVAL, ENOTCONN, E2BIG, ...
        let errno = name.starts_with('E')
            && name
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
        if errno || INT.iter().any(|p| name.starts_with(p)) {
            return Some(IntKind::Int);
        }
        None
    }
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("{}: path is not UTF-8", p.display()))
}

fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Renders `layout::TABLE` for the generated bindings: for every struct and union
/// with named fields, `(C type, "sizeof" | "alignof" | field, value)`, with the value
/// computed by rustc from the generated type. Opaque types (bindgen's `_unused`
/// marker) and anonymous nested types (no C name) are left out; their size is part
/// of the enclosing type's.
fn layout_table(bindings: &str) -> Result<String> {
    let file = syn::parse_file(bindings).context("parsing bindgen's output")?;
    let mut rows = Vec::new();
    for item in &file.items {
        let (kw, ident, fields) = match item {
            syn::Item::Struct(s) => match &s.fields {
                syn::Fields::Named(f) => ("struct", &s.ident, f.named.iter().collect::<Vec<_>>()),
                _ => continue,
            },
            syn::Item::Union(u) => ("union", &u.ident, u.fields.named.iter().collect()),
            _ => continue,
        };
        let name = ident.to_string();
        let names: Vec<String> = fields
            .iter()
            .filter_map(|f| f.ident.as_ref())
            .map(|i| i.to_string())
            .collect();
        if name.contains("__bindgen") || names.iter().any(|n| n == "_unused") {
            continue;
        }
        if names.iter().any(|n| n.starts_with("_bitfield")) {
            bail!(
                "{kw} {name} has bitfields, which the layout table cannot describe; avoid them in the header set"
            );
        }
        let c_type = format!("{kw} {name}");
        rows.push(format!(
            "        (\"{c_type}\", \"sizeof\", ::core::mem::size_of::<{name}>()),"
        ));
        rows.push(format!(
            "        (\"{c_type}\", \"alignof\", ::core::mem::align_of::<{name}>()),"
        ));
        for f in names {
            let c_field = c_name(&f);
            rows.push(format!(
                "        (\"{c_type}\", \"{c_field}\", ::core::mem::offset_of!({name}, {f})),"
            ));
        }
    }
    if rows.is_empty() {
        bail!("no struct or union in the bindings");
    }
    let mut s = String::new();
    s.push_str(
        "/// Layout of every struct and union above, as rustc lays out the generated types.\n",
    );
    s.push_str("pub mod layout {\n");
    s.push_str("    use super::*;\n\n");
    s.push_str(
        "    /// `(C type, \"sizeof\" | \"alignof\" | field name, bytes)`; compared with clang's\n",
    );
    s.push_str("    /// `sizeof`/`_Alignof`/`offsetof` by common/tests/layout.rs.\n");
    s.push_str("    pub const TABLE: &[(&str, &str, usize)] = &[\n");
    for r in rows {
        s.push_str(&r);
        s.push('\n');
    }
    s.push_str("    ];\n}\n");
    Ok(s)
}

/// The C name of a field bindgen renamed because it is a Rust keyword (`type_`).
fn c_name(rust: &str) -> String {
    const KEYWORDS: &[&str] = &[
        "as", "async", "await", "box", "break", "const", "continue", "crate", "dyn", "else",
        "enum", "extern", "false", "fn", "for", "gen", "if", "impl", "in", "let", "loop", "match",
        "mod", "move", "mut", "priv", "pub", "ref", "return", "self", "static", "struct", "super",
        "trait", "true", "try", "type", "unsafe", "use", "where", "while", "yield",
    ];
    match rust.strip_suffix('_') {
        Some(base) if KEYWORDS.contains(&base) => base.to_owned(),
        _ => rust.to_owned(),
    }
}

/// Where `cargo xtask bindgen` writes, for messages and tests.
pub fn generated_paths(root: &Path) -> Vec<PathBuf> {
    TARGETS.iter().map(|t| root.join(t.file)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_difference_names_the_line() {
        assert_eq!(first_difference("a\nb\n", "a\nb\n"), None);
        let d = first_difference("a\nb\nc\n", "a\nB\nc\n").unwrap();
        assert_eq!(
            (d.line, d.committed.as_deref(), d.generated.as_deref()),
            (2, Some("b"), Some("B"))
        );
        let d = first_difference("a\n", "a\nb\n").unwrap();
        assert_eq!(
            (d.line, d.committed.as_deref(), d.generated.as_deref()),
            (2, Some(""), Some("b"))
        );
    }

    #[test]
    fn keyword_fields_map_back_to_c() {
        assert_eq!(c_name("type_"), "type");
        assert_eq!(c_name("sf_handle"), "sf_handle");
        assert_eq!(c_name("foo_"), "foo_");
    }

    #[test]
    fn const_types() {
        let c = ConstTypes;
        assert!(matches!(c.int_macro("EJUSTRETURN", -2), Some(IntKind::Int)));
        assert!(matches!(c.int_macro("E2BIG", 7), Some(IntKind::Int)));
        assert!(matches!(c.int_macro("AF_INET", 2), Some(IntKind::Int)));
        assert!(matches!(
            c.int_macro("MAX_KCTL_NAME", 96),
            Some(IntKind::Custom { name: "usize", .. })
        ));
        assert!(c.int_macro("CTL_FLAG_PRIVILEGED", 1).is_none());
        assert!(c.int_macro("MBUF_PKTHDR", 2).is_none());
    }
}
