//! `cargo xtask gen-kpi`: derives the committed KPI table from xnu's export lists.
//!
//! Input: a directory holding xnu's `config/<Set>[.<arch>][.MacOSX].exports` files
//! and a `README.md` naming the xnu tag they were copied from. The set for an
//! architecture is the union of the base file, the arch file (`.x86_64`, or `.arm64`
//! for arm64e) and the arch's `.MacOSX` file. Files for architectures prx does not
//! build (e.g. 32-bit `.arm`) are ignored; any other unrecognised `*.exports` name
//! is an error, so a new KPI set in a future xnu cannot be dropped silently.
//!
//! Output format: see the header that [`generate`] writes (it documents itself).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::{KpiError, KpiSet, TABLE_PATH, arch_bit};
use crate::Arch;

/// Architectures of xnu export files that prx does not build and therefore ignores.
const IGNORED_ARCHES: [&str; 3] = ["arm", "i386", "arm64_32"];

const BODY_HASH_KEY: &str = "# body-sha256: ";
const XNU_TAG_KEY: &str = "# xnu-tag: ";

/// Reads `exports_dir` and returns the table text to commit at [`TABLE_PATH`].
/// Deterministic: the same inputs give the same bytes.
pub fn generate(exports_dir: &Path) -> Result<String, KpiError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| KpiError::Io { path, source }
    };
    let readme = exports_dir.join("README.md");
    let readme_text = std::fs::read_to_string(&readme).map_err(io(&readme))?;
    let xnu_tag = find_xnu_tag(&readme_text).ok_or_else(|| KpiError::Input {
        path: readme.display().to_string(),
        message: "names no xnu tag (expected e.g. `xnu-11417.101.15`); say which xnu release \
                  the export files were copied from"
            .into(),
    })?;

    let mut names = Vec::new();
    for entry in std::fs::read_dir(exports_dir).map_err(io(exports_dir))? {
        let entry = entry.map_err(io(exports_dir))?;
        if let Some(name) = entry.file_name().to_str()
            && name.ends_with(".exports")
        {
            names.push(name.to_owned());
        }
    }
    names.sort();

    // (symbol, set) → arch mask.
    let mut entries: BTreeMap<(String, KpiSet), u8> = BTreeMap::new();
    let mut inputs = Vec::new();
    for name in &names {
        let path = exports_dir.join(name);
        let Some((set, mask)) = classify(name).map_err(|message| KpiError::Input {
            path: path.display().to_string(),
            message,
        })?
        else {
            continue;
        };
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        inputs.push((name.clone(), hex(&Sha256::digest(&bytes))));
        let text = String::from_utf8(bytes).map_err(|_| KpiError::Input {
            path: path.display().to_string(),
            message: "is not UTF-8".into(),
        })?;
        for (i, line) in text.lines().enumerate() {
            let symbol = parse_line(line).map_err(|message| KpiError::Input {
                path: format!("{}:{}", path.display(), i + 1),
                message,
            })?;
            if let Some(symbol) = symbol {
                *entries.entry((symbol.to_owned(), set)).or_default() |= mask;
            }
        }
    }
    if entries.is_empty() {
        return Err(KpiError::Input {
            path: exports_dir.display().to_string(),
            message: "holds no xnu *.exports files".into(),
        });
    }

    let mut body = String::new();
    for ((symbol, set), mask) in &entries {
        let arches: Vec<&str> = Arch::ALL
            .iter()
            .filter(|a| mask & arch_bit(**a) != 0)
            .map(|a| a.name())
            .collect();
        writeln!(body, "{symbol} {} {}", set.short_name(), arches.join(",")).unwrap();
    }

    let mut out = String::new();
    out.push_str(&header(&xnu_tag));
    for (name, sha) in &inputs {
        writeln!(out, "# input: {sha}  {name}").unwrap();
    }
    writeln!(
        out,
        "{BODY_HASH_KEY}{}",
        hex(&Sha256::digest(body.as_bytes()))
    )
    .unwrap();
    out.push_str(&body);
    Ok(out)
}

fn header(xnu_tag: &str) -> String {
    format!(
        "\
# prx KPI symbol table. GENERATED FILE: DO NOT EDIT.
#
# Regenerate: cargo xtask gen-kpi          (writes {TABLE_PATH})
# Check:      cargo xtask gen-kpi --check  (fails when this file differs from a regeneration)
# Source: apple-oss-distributions/xnu config/*.exports at the tag below, read from a copy of that
# directory ($PRX_XNU_EXPORTS, else <workspace root>/../shared/xnu-exports). A set for an
# architecture is the union of <Set>.exports, <Set>.<arch>.exports and <Set>.<arch>.MacOSX.exports
# (arm64e uses xnu's arm64 files).
#
# Format: after this header, one line per (symbol, KPI set), sorted bytewise by symbol, then set:
#   <symbol> <set> <arches>
# symbol: as the kext binds it, with its leading '_'; for an xnu alias `_sym:_target` the left side
#   (the kext binds `_sym`); a trailing '*' makes it a prefix wildcard.
# set: bsd libkern mach iokit dsep unsupported private; the bundle id is com.apple.kpi.<set>.
#   `private` is recorded only for diagnostics: third-party kexts can never link against it.
# arches: comma-separated, from x86_64,arm64e.
#
# Drift check: the kextld test kpi::generate::tests::committed_table_is_current regenerates this
# file from the exports directory and compares it byte for byte. Where the default directory is
# missing (e.g. CI without the steering checkout) it only checks that `body-sha256` below still
# matches the body (catching hand edits) and prints that the full check was skipped; a directory
# named by $PRX_XNU_EXPORTS must exist.
#
# input lines: sha256 of each xnu file read.
{XNU_TAG_KEY}{xnu_tag}
"
    )
}

fn find_xnu_tag(text: &str) -> Option<String> {
    text.match_indices("xnu-").find_map(|(i, _)| {
        let rest = &text[i + 4..];
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let version = rest[..end].trim_end_matches('.');
        (!version.is_empty() && version.starts_with(|c: char| c.is_ascii_digit()))
            .then(|| format!("xnu-{version}"))
    })
}

/// Maps an export file name to its set and the architectures it applies to, or
/// `None` for architectures prx ignores.
pub(super) fn classify(name: &str) -> Result<Option<(KpiSet, u8)>, String> {
    let stem = name.strip_suffix(".exports").unwrap_or(name);
    let mut parts = stem.split('.');
    let set_name = parts.next().unwrap_or_default();
    let set = KpiSet::from_xnu_file_stem(set_name).ok_or_else(|| {
        format!(
            "unknown export set {set_name:?}; known: {}. If xnu added a KPI set, teach kextld::kpi::KpiSet about it",
            KpiSet::ALL.map(|s| s.xnu_file_stem()).join(", ")
        )
    })?;
    let rest: Vec<&str> = parts.collect();
    let (arch, platform) = match rest.as_slice() {
        [] => (None, None),
        ["MacOSX"] => (None, Some("MacOSX")),
        [arch] => (Some(*arch), None),
        [arch, platform] => (Some(*arch), Some(*platform)),
        _ => return Err("expected <Set>[.<arch>][.MacOSX].exports".into()),
    };
    if let Some(p) = platform
        && p != "MacOSX"
    {
        return Err(format!("unknown platform {p:?} (only MacOSX is used)"));
    }
    let mask = match arch {
        None => arch_bit(Arch::X86_64) | arch_bit(Arch::Arm64e),
        Some("x86_64") => arch_bit(Arch::X86_64),
        Some("arm64") => arch_bit(Arch::Arm64e),
        Some(a) if IGNORED_ARCHES.contains(&a) => return Ok(None),
        Some(a) => {
            return Err(format!(
                "unknown architecture {a:?} (expected x86_64 or arm64)"
            ));
        }
    };
    Ok(Some((set, mask)))
}

/// One line of an xnu export file → the symbol a kext binds, if any.
pub(super) fn parse_line(line: &str) -> Result<Option<&str>, String> {
    let line = line.split('#').next().unwrap_or_default().trim();
    if line.is_empty() {
        return Ok(None);
    }
    let symbol = match line.split_once(':') {
        Some((left, right)) => {
            if right.trim().is_empty() {
                return Err(format!("alias {line:?} has no target"));
            }
            left.trim()
        }
        None => line,
    };
    let body = symbol.strip_suffix('*').unwrap_or(symbol);
    if !symbol.starts_with('_')
        || body.len() < 2
        || body.contains(|c: char| c.is_whitespace() || c == '*' || c == ',')
    {
        return Err(format!(
            "{symbol:?} is not a symbol (expected `_name`, `_name*` or `_name:_target`)"
        ));
    }
    Ok(Some(symbol))
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            write!(s, "{b:02x}").unwrap();
            s
        })
}

/// A table split into its header fields and body.
pub(super) struct SplitTable<'a> {
    pub xnu_tag: String,
    pub recorded_body_hash: &'a str,
    pub body: &'a str,
    /// 1-based line number of the body's first line.
    pub body_first_line: usize,
}

impl SplitTable<'_> {
    /// Recomputes the body hash and compares it with the one in the header.
    pub fn verify_body_hash(&self) -> Result<(), KpiError> {
        let actual = hex(&Sha256::digest(self.body.as_bytes()));
        if actual != self.recorded_body_hash {
            return Err(KpiError::BodyHash {
                recorded: self.recorded_body_hash.to_owned(),
                actual,
            });
        }
        Ok(())
    }
}

/// Splits table text at its `# body-sha256:` line (the header's last line).
pub(super) fn split_table(text: &str) -> Result<SplitTable<'_>, KpiError> {
    let mut xnu_tag = None;
    let mut offset = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        offset += line.len();
        let content = line.trim_end_matches('\n');
        if let Some(tag) = content.strip_prefix(XNU_TAG_KEY) {
            xnu_tag = Some(tag.to_owned());
        } else if let Some(hash) = content.strip_prefix(BODY_HASH_KEY) {
            let xnu_tag = xnu_tag.ok_or(KpiError::Table {
                line: i + 1,
                message: format!("the header has no `{}` line", XNU_TAG_KEY.trim()),
            })?;
            return Ok(SplitTable {
                xnu_tag,
                recorded_body_hash: hash,
                body: &text[offset..],
                body_first_line: i + 2,
            });
        } else if !content.starts_with('#') {
            return Err(KpiError::Table {
                line: i + 1,
                message: format!("the header ends before its `{}` line", BODY_HASH_KEY.trim()),
            });
        }
    }
    Err(KpiError::Table {
        line: 1,
        message: format!("no `{}` line", BODY_HASH_KEY.trim()),
    })
}

/// Regenerates the table from `exports_dir` and compares it with `committed_text`;
/// on a difference, says where (the first differing line) and what to run.
pub fn check(exports_dir: &Path, committed_text: &str) -> Result<(), String> {
    let fresh = generate(exports_dir).map_err(|e| e.to_string())?;
    if fresh == committed_text {
        return Ok(());
    }
    let mut fresh_lines = fresh.lines();
    let mut old_lines = committed_text.lines();
    let mut n = 1;
    let (old, new) = loop {
        match (old_lines.next(), fresh_lines.next()) {
            (Some(a), Some(b)) if a == b => n += 1,
            (a, b) => break (a, b),
        }
    };
    let show = |l: Option<&str>| l.map_or("<end of file>".to_owned(), |l| format!("{l:?}"));
    let (fresh_count, old_count) = (fresh.lines().count(), committed_text.lines().count());
    Err(format!(
        "{TABLE_PATH} is out of date with {}: first difference at line {n}:\n  committed:   {}\n  regenerated: {}\n\
         ({old_count} lines committed, {fresh_count} regenerated{}). Run `cargo xtask gen-kpi` and commit the result.",
        exports_dir.display(),
        show(old),
        show(new),
        if old.is_none() && new.is_none() {
            "; line endings differ"
        } else {
            ""
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn workspace_root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .to_owned()
    }

    /// The xnu exports directory, if present. A directory named explicitly by
    /// `$PRX_XNU_EXPORTS` must exist; only the default location may be missing.
    fn locate(explicit: Option<PathBuf>, default: PathBuf) -> Result<Option<PathBuf>, String> {
        match explicit {
            Some(dir) if dir.is_dir() => Ok(Some(dir)),
            Some(dir) => Err(format!(
                "${} = {} is not a directory",
                super::super::EXPORTS_DIR_ENV,
                dir.display()
            )),
            None => Ok(default.is_dir().then_some(default)),
        }
    }

    fn default_exports_dir() -> PathBuf {
        workspace_root().join("../shared/xnu-exports")
    }

    fn exports_dir() -> Option<PathBuf> {
        let explicit = std::env::var_os(super::super::EXPORTS_DIR_ENV).map(PathBuf::from);
        locate(explicit, default_exports_dir()).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn only_the_default_exports_dir_may_be_missing() {
        let tmp = tempfile::tempdir().unwrap();
        let here = tmp.path().to_owned();
        let gone = here.join("missing");
        assert_eq!(locate(None, gone.clone()), Ok(None));
        assert_eq!(locate(None, here.clone()), Ok(Some(here.clone())));
        assert_eq!(locate(Some(here.clone()), gone.clone()), Ok(Some(here)));
        assert!(
            locate(Some(gone.clone()), gone)
                .unwrap_err()
                .contains("PRX_XNU_EXPORTS")
        );
    }

    fn committed() -> String {
        std::fs::read_to_string(workspace_root().join(TABLE_PATH)).unwrap()
    }

    #[test]
    fn committed_table_is_current() {
        let text = committed();
        // Always: the body still matches the hash in the header (no hand edits).
        split_table(&text).unwrap().verify_body_hash().unwrap();
        match exports_dir() {
            Some(dir) => {
                if let Err(e) = check(&dir, &text) {
                    panic!("{e}");
                }
            }
            None => println!(
                "kpi drift test: full regeneration check SKIPPED: the xnu exports directory is missing \
                 at {} (set {} to check against another copy); only the body hash was checked",
                default_exports_dir().display(),
                super::super::EXPORTS_DIR_ENV
            ),
        }
    }

    #[test]
    fn hand_edit_is_detected() {
        let text = committed().replacen("_IOLog iokit", "_IOLogX iokit", 1);
        let e = super::super::KpiTables::parse(&text)
            .unwrap_err()
            .to_string();
        assert!(e.contains("edited by hand") && e.contains("gen-kpi"), "{e}");
    }

    fn fixture(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("README.md"),
            "copied from tag xnu-1234.5.6 of xnu\n",
        )
        .unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    #[test]
    fn generates_from_a_small_directory() {
        let dir = fixture(&[
            (
                "BSDKernel.exports",
                "# comment\n\n_sock_send\n _mbuf_free \n",
            ),
            ("BSDKernel.x86_64.exports", "_x86_only\n"),
            (
                "BSDKernel.arm64.MacOSX.exports",
                "_arm_alias : _arm_target\n",
            ),
            ("BSDKernel.arm.exports", "_ignored_32bit_arm\n"),
            ("Private.exports", "_hv_get*\n_sock_send\n"),
        ]);
        let text = generate(dir.path()).unwrap();
        assert!(text.contains("# xnu-tag: xnu-1234.5.6\n"), "{text}");
        let body = split_table(&text).unwrap().body;
        assert_eq!(
            body,
            "_arm_alias bsd arm64e\n_hv_get* private x86_64,arm64e\n_mbuf_free bsd x86_64,arm64e\n\
             _sock_send bsd x86_64,arm64e\n_sock_send private x86_64,arm64e\n_x86_only bsd x86_64\n"
        );
        assert_eq!(generate(dir.path()).unwrap(), text, "deterministic");
        assert!(!text.contains("BSDKernel.arm.exports"));
        assert!(text.contains("  BSDKernel.x86_64.exports\n"));
        // The generated text parses and answers lookups.
        let t = super::super::KpiTables::parse(&text).unwrap();
        assert_eq!(t.provenance(), "xnu-1234.5.6");
        assert_eq!(
            t.lookup(Arch::Arm64e, "_arm_alias"),
            super::super::Lookup::Public("com.apple.kpi.bsd")
        );
        assert_eq!(
            t.lookup(Arch::X86_64, "_arm_alias"),
            super::super::Lookup::Unknown
        );
        assert_eq!(
            t.lookup(Arch::X86_64, "_arm_target"),
            super::super::Lookup::Unknown
        );
        assert_eq!(
            t.lookup(Arch::X86_64, "_sock_send"),
            super::super::Lookup::Public("com.apple.kpi.bsd")
        );
    }

    #[test]
    fn check_names_the_first_difference() {
        let dir = fixture(&[("Mach.exports", "_a\n_b\n")]);
        let text = generate(dir.path()).unwrap();
        assert!(check(dir.path(), &text).is_ok());
        let e = check(dir.path(), &text.replace("_b mach", "_c mach")).unwrap_err();
        assert!(
            e.contains("_b mach") && e.contains("_c mach") && e.contains("cargo xtask gen-kpi"),
            "{e}"
        );
        assert!(e.contains(&format!("line {}", text.lines().count())), "{e}");
    }

    #[test]
    fn bad_inputs_are_named() {
        let e = generate(fixture(&[("Kasan.exports", "_a\n")]).path())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("Kasan.exports") && e.contains("unknown export set"),
            "{e}"
        );
        let e = generate(fixture(&[("Mach.exports", "_a\nnot a symbol\n")]).path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("Mach.exports:2"), "{e}");
        let e = generate(fixture(&[("Mach.ppc.exports", "_a\n")]).path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("Mach.ppc.exports") && e.contains("ppc"), "{e}");
        let dir = fixture(&[("Mach.exports", "_a\n")]);
        std::fs::write(dir.path().join("README.md"), "no tag here\n").unwrap();
        let e = generate(dir.path()).unwrap_err().to_string();
        assert!(e.contains("README.md") && e.contains("xnu tag"), "{e}");
    }
}

#[cfg(test)]
pub(super) mod tests_support {
    use super::*;

    /// A minimal well-formed table (valid header and body hash) around `body`.
    pub fn table_with_body(body: &str) -> String {
        format!(
            "{XNU_TAG_KEY}xnu-1.0\n{BODY_HASH_KEY}{}\n{body}",
            hex(&Sha256::digest(body.as_bytes()))
        )
    }
}
