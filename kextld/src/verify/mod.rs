//! The kext verifier: checks a linked kext binary against the loaders' rules.
//!
//! [`verify`] takes the bytes of a thin x86_64/arm64e Mach-O or of a universal
//! (fat) file and returns a [`Report`]: a list of [`Finding`]s, each naming the
//! symbol or address at fault and saying what to do, plus a [`SliceSummary`] per
//! architecture (kmod name/version, undefined symbols and the KPI sets that
//! export them). The rules are those of `/work/shared/kext-format.md`:
//!
//! | check id | what |
//! |---|---|
//! | `macho` | the file can be parsed at all (truncation, bad offsets) |
//! | `fat` | universal header: offsets, alignment, duplicate or foreign slices |
//! | `header` | magic, filetype `MH_KEXT_BUNDLE`, flags 0x85, cputype/cpusubtype |
//! | `load-commands` | only the commands kxld (x86_64) or the kernel-collection builder (arm64e) accepts; LC_SYMTAB/LC_DYSYMTAB/LC_UUID (and on arm64e LC_DYLD_CHAINED_FIXUPS/LC_SEGMENT_SPLIT_INFO) present |
//! | `segments` | `__TEXT` at 0, fileoff == vmaddr, contiguous, page aligned, no W+X; arm64e: `__TEXT` r--, `__TEXT_EXEC` r-x, `__DATA` rw-, `__DATA_CONST` rw-, `__LINKEDIT` r-- in that order |
//! | `header-padding` | room for `LC_CODE_SIGNATURE` after the load commands |
//! | `relocations` | x86_64 local/external relocation forms and targets; none on arm64e |
//! | `symbols` | symbol table order, undefined symbol form |
//! | `kpi-symbol`, `kpi-private` | every undefined symbol is exported by a public KPI set |
//! | `panic-path` | no reference to `_prx_panic_path_survived_optimisation` |
//! | `kmod-info` | `_kmod_info` layout, name/version, start/stop pointers (arm64e: auth rebases, key IA, discriminator 0xE4FE) |
//! | `sse` | no SSE/AVX/MMX/x87 instruction in x86_64 code |
//! | `chained-fixups` | (arm64e) LC_DYLD_CHAINED_FIXUPS decodes: header, imports, starts, chains; fixups 4-byte aligned in writable segments; bind ordinals, rebase targets |
//! | `split-seg` | (arm64e) LC_SEGMENT_SPLIT_INFO v2 decodes and covers every ADRP, branch to a stub and rebased pointer |
//! | `bundle` | (bundles only) kmod name/version equal the Info.plist's |
//!
//! Every read is bounds-checked: garbage or truncated input yields `macho`
//! findings, never a panic.

mod arm64e;
mod checks;
mod consts;
mod disasm;
mod fat;
mod image;

#[cfg(test)]
mod test_builder;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_arm64e;

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::Arch;
use crate::kpi::KpiTables;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// The loader would refuse the kext, or it would misbehave in the kernel.
    Error,
    /// Legal but unlike what Apple's linker emits, or risky.
    Warning,
    /// A note, e.g. that a group of checks was not run.
    Info,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => "info",
        })
    }
}

/// One problem found in a kext binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// How bad it is.
    pub severity: Severity,
    /// The slice it was found in; `None` for problems of the whole file.
    pub arch: Option<Arch>,
    /// A short stable id of the check, e.g. `"kpi-symbol"` (see the module docs).
    pub check: &'static str,
    /// What is wrong, naming the symbol or address, and what to do about it.
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]", self.severity, self.check)?;
        if let Some(arch) = self.arch {
            write!(f, " {arch}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// What the verifier learnt about one architecture slice.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SliceSummary {
    /// The slice's architecture, if it is one kextld knows.
    pub arch: Option<Arch>,
    /// `kmod_info.name` (should equal CFBundleIdentifier), if it could be read.
    pub kmod_name: Option<String>,
    /// `kmod_info.version` (should equal CFBundleVersion), if it could be read.
    pub kmod_version: Option<String>,
    /// Names of the undefined symbols, in symbol table order.
    pub undefined: Vec<String>,
    /// Bundle ids of the public KPI sets that export the undefined symbols: what
    /// `OSBundleLibraries` must list.
    pub kpi_sets: BTreeSet<String>,
}

impl fmt::Display for SliceSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.arch {
            Some(arch) => write!(f, "{arch}:")?,
            None => f.write_str("(unknown arch):")?,
        }
        match (&self.kmod_name, &self.kmod_version) {
            (Some(n), Some(v)) => write!(f, " kmod {n} {v},")?,
            _ => f.write_str(" kmod_info unreadable,")?,
        }
        write!(f, " {} undefined symbols", self.undefined.len())?;
        if !self.kpi_sets.is_empty() {
            let sets: Vec<&str> = self.kpi_sets.iter().map(String::as_str).collect();
            write!(f, " from {}", sets.join(", "))?;
        }
        Ok(())
    }
}

/// The result of verifying a kext binary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Everything found, in check order, slice by slice.
    pub findings: Vec<Finding>,
    /// One summary per slice that could be parsed (one for a thin file).
    pub slices: Vec<SliceSummary>,
}

impl Report {
    /// True if there is no [`Severity::Error`] finding.
    pub fn is_ok(&self) -> bool {
        self.count(Severity::Error) == 0
    }

    /// The number of findings of a severity.
    pub fn count(&self, severity: Severity) -> usize {
        self.findings
            .iter()
            .filter(|f| f.severity == severity)
            .count()
    }

    /// The findings of one check id.
    pub fn by_check<'a>(&'a self, check: &'a str) -> impl Iterator<Item = &'a Finding> + 'a {
        self.findings.iter().filter(move |f| f.check == check)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for finding in &self.findings {
            writeln!(f, "{finding}")?;
        }
        for slice in &self.slices {
            writeln!(f, "{slice}")?;
        }
        let (e, w) = (self.count(Severity::Error), self.count(Severity::Warning));
        if e == 0 {
            write!(f, "ok: {w} warnings")
        } else {
            write!(f, "FAILED: {e} errors, {w} warnings")
        }
    }
}

/// Why a path could not be verified at all.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// Reading a file or directory failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A directory that is not a usable `.kext` bundle.
    #[error("{path} is not a kext bundle: {reason}")]
    Bundle {
        /// The bundle directory.
        path: PathBuf,
        /// What is missing or wrong.
        reason: String,
    },
}

/// Verifies a kext binary (thin x86_64/arm64e Mach-O or universal file).
pub fn verify(bytes: &[u8], tables: &KpiTables) -> Report {
    let mut report = Report::default();
    if fat::is_fat(bytes) {
        fat::verify_fat(bytes, tables, &mut report);
    } else {
        checks::verify_slice(bytes, None, tables, &mut report);
    }
    report
}

/// Why an Info.plist does not parse, naming the file: the plist crate's error,
/// with what the file looks like when that error alone says little (an empty
/// or non-plist file gives "UnexpectedEndOfEventStream").
fn plist_error(path: &Path, bytes: &[u8], e: &plist::Error) -> String {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .map_or(&[][..], |i| &bytes[i..]);
    let what = if bytes.is_empty() {
        "the file is empty".to_string()
    } else if !(start.starts_with(b"<") || start.starts_with(b"bplist")) {
        "it is not a property list (an XML plist begins with <?xml or <plist, a binary one with bplist00)".to_string()
    } else {
        format!("parse error: {e}")
    };
    format!(
        "{}: {what}; fix it or regenerate the bundle with `cargo xtask build`",
        path.display()
    )
}

/// Verifies a kext binary file or a `.kext` bundle directory.
///
/// For a bundle, the executable is `Contents/MacOS/<CFBundleExecutable>` from
/// `Contents/Info.plist` (or the only file in `Contents/MacOS` when there is no
/// Info.plist), and every slice's kmod name/version must equal the Info.plist's
/// `CFBundleIdentifier`/`CFBundleVersion` (check id `bundle`).
pub fn verify_path(path: &Path, tables: &KpiTables) -> Result<Report, VerifyError> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| VerifyError::Io { path: p, source }
    };
    if !path.is_dir() {
        let bytes = std::fs::read(path).map_err(io(path))?;
        return Ok(verify(&bytes, tables));
    }
    let bundle_err = |reason: String| VerifyError::Bundle {
        path: path.to_path_buf(),
        reason,
    };
    let contents = path.join("Contents");
    let plist_path = contents.join("Info.plist");
    let macos = contents.join("MacOS");
    let mut expected = None;
    let exe = if plist_path.is_file() {
        let bytes = std::fs::read(&plist_path).map_err(io(&plist_path))?;
        let dict = plist::Value::from_reader(std::io::Cursor::new(&bytes))
            .map_err(|e| bundle_err(plist_error(&plist_path, &bytes, &e)))?;
        let dict = dict
            .as_dictionary()
            .ok_or_else(|| bundle_err("Contents/Info.plist is not a dictionary".into()))?;
        let get = |k: &str| {
            dict.get(k)
                .and_then(plist::Value::as_string)
                .map(str::to_owned)
        };
        let exe = get("CFBundleExecutable")
            .ok_or_else(|| bundle_err("Contents/Info.plist has no CFBundleExecutable".into()))?;
        if exe.contains('/') || exe == ".." {
            return Err(bundle_err(format!(
                "CFBundleExecutable {exe:?} is not a file name"
            )));
        }
        expected = Some((get("CFBundleIdentifier"), get("CFBundleVersion")));
        macos.join(exe)
    } else {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&macos).map_err(io(&macos))? {
            let entry = entry.map_err(io(&macos))?;
            if entry.path().is_file() {
                files.push(entry.path());
            }
        }
        match files.as_slice() {
            [one] => one.clone(),
            _ => {
                return Err(bundle_err(format!(
                    "no Contents/Info.plist and {} files in Contents/MacOS (expected exactly one)",
                    files.len()
                )));
            }
        }
    };
    let bytes = std::fs::read(&exe).map_err(io(&exe))?;
    let mut report = verify(&bytes, tables);
    if let Some((id, version)) = expected {
        check_bundle_metadata(&mut report, id.as_deref(), version.as_deref());
    }
    Ok(report)
}

/// Compares each slice's kmod_info name/version with the Info.plist's values.
fn check_bundle_metadata(report: &mut Report, id: Option<&str>, version: Option<&str>) {
    let mut found = Vec::new();
    for slice in &report.slices {
        let pairs = [
            ("name", "CFBundleIdentifier", &slice.kmod_name, id),
            ("version", "CFBundleVersion", &slice.kmod_version, version),
        ];
        for (field, key, got, want) in pairs {
            let (Some(got), Some(want)) = (got, want) else {
                if want.is_none() {
                    found.push(Finding {
                        severity: Severity::Error,
                        arch: slice.arch,
                        check: "bundle",
                        message: format!("Contents/Info.plist has no {key}; add it"),
                    });
                }
                continue;
            };
            if got != want {
                found.push(Finding {
                    severity: Severity::Error,
                    arch: slice.arch,
                    check: "bundle",
                    message: format!(
                        "kmod_info.{field} is {got:?} but Info.plist {key} is {want:?}; \
                         the kernel refuses a kext whose kmod_info disagrees with its Info.plist: \
                         build both from the same metadata"
                    ),
                });
            }
        }
    }
    report.findings.extend(found);
}
