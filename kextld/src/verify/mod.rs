//! The kext verifier: checks a linked kext binary against the loaders' rules.
//!
//! [`verify`] takes the bytes of a thin x86_64/arm64e Mach-O or of a universal
//! (fat) file and returns a [`Report`]: a list of [`Finding`]s, each naming the
//! symbol or address at fault and saying what to do, plus a [`SliceSummary`] per
//! architecture (kmod name/version, undefined symbols and the KPI sets that
//! export them). The rules, and the evidence for each, are in the project's
//! `docs/kext-format.md`. Two policies ([`Options`]): prx's own build
//! ([`verify`], [`Options::prx`]) adds prx's rules (no FPU/SIMD, no panic path,
//! symbols from the current KPI table only) as errors; third-party kexts
//! ([`Options::third_party`], `kextld verify`) get the loaders' rules as errors
//! and everything else as warnings or notes:
//!
//! | check id | what |
//! |---|---|
//! | `macho` | the file can be parsed at all (truncation, bad offsets) |
//! | `fat` | universal header: offsets, alignment, duplicate or foreign slices |
//! | `header` | magic, filetype `MH_KEXT_BUNDLE`, flags 0x85, cputype/cpusubtype |
//! | `load-commands` | only the commands kxld (x86_64) or the kernel-collection builder (arm64e) accepts; LC_SYMTAB/LC_DYSYMTAB/LC_UUID (and on arm64e LC_DYLD_CHAINED_FIXUPS/LC_SEGMENT_SPLIT_INFO) present |
//! | `segments` | `__TEXT` at vmaddr 0 and fileoff 0, contiguous in memory, file ranges in order inside the file, page aligned, no W+X initprot; arm64e: `__TEXT` r--, `__TEXT_EXEC` r-x, `__DATA` rw-, `__DATA_CONST` rw-, `__LINKEDIT` r-- in that order |
//! | `header-padding` | room for `LC_CODE_SIGNATURE` after the load commands |
//! | `relocations` | x86_64 local/external relocation forms and targets; none on arm64e |
//! | `symbols` | symbol table order, undefined symbol form |
//! | `kpi-symbol`, `kpi-private` | every undefined symbol is exported by a public KPI set (third-party: of some macOS release), is a vtable pad slot, or comes from an OSBundleLibraries dependency |
//! | `panic-path` | no reference to `_prx_panic_path_survived_optimisation` |
//! | `kmod-info` | `_kmod_info` layout, name/version, start/stop pointers (arm64e: auth rebases, key IA, discriminator 0xE4FE) |
//! | `sse` | no SSE/AVX/MMX/x87 instruction in x86_64 code (only code is decoded) |
//! | `chained-fixups` | (arm64e) LC_DYLD_CHAINED_FIXUPS decodes: header, imports, starts, chains; fixups 4-byte aligned in writable segments; bind ordinals, rebase targets |
//! | `split-seg` | (arm64e) LC_SEGMENT_SPLIT_INFO v2 decodes and covers every ADRP, branch to a stub and rebased pointer |
//! | `ptrauth` | (arm64e) warning: plain rebases pointing into executable code (unsigned function pointers) |
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
use crate::kpi::{KpiHistory, KpiTables};

/// What the verifier checks a kext against.
#[derive(Debug, Clone)]
pub struct Options<'a> {
    /// The current KPI table.
    pub tables: &'a KpiTables,
    /// prx's own build rules as errors: no FPU/SIMD, no panic path, symbols from
    /// `tables` only. Off for third-party kexts.
    pub prx_rules: bool,
    /// Other macOS releases' KPI lists, consulted for symbols `tables` lacks.
    pub history: Option<&'a KpiHistory>,
    /// The kext's `OSBundleLibraries` identifiers (for the slice's architecture,
    /// `OSBundleLibraries_<arch>` when present); filled in by [`verify_path_with`].
    pub libraries: Vec<String>,
    /// Dependency bundles whose exported symbols resolve the kext's non-KPI imports.
    pub dependencies: Vec<Dependency>,
}

impl<'a> Options<'a> {
    /// prx's build policy (what `cargo xtask build` runs).
    pub fn prx(tables: &'a KpiTables) -> Options<'a> {
        Options {
            tables,
            prx_rules: true,
            history: None,
            libraries: Vec::new(),
            dependencies: Vec::new(),
        }
    }

    /// The loaders' rules only, for kexts built elsewhere (`kextld verify`).
    pub fn third_party(tables: &'a KpiTables, history: &'a KpiHistory) -> Options<'a> {
        Options {
            tables,
            prx_rules: false,
            history: Some(history),
            libraries: Vec::new(),
            dependencies: Vec::new(),
        }
    }

    /// The declared libraries that are not KPI pseudo-kexts (`com.apple.kpi.*`,
    /// `com.apple.kernel*`): other kexts such as IOPCIFamily or Lilu.
    pub fn non_kpi_libraries(&self) -> Vec<String> {
        self.libraries
            .iter()
            .filter(|l| !l.starts_with("com.apple.kpi.") && !l.starts_with("com.apple.kernel"))
            .cloned()
            .collect()
    }
}

/// A dependency kext given to resolve the symbols a kext imports from it.
#[derive(Debug, Clone)]
pub struct Dependency {
    /// Its CFBundleIdentifier.
    pub id: String,
    /// External symbols its x86_64 and arm64e slices define.
    pub exports: Vec<(Arch, BTreeSet<String>)>,
}

impl Dependency {
    /// Whether its slice for `arch` defines `symbol`.
    pub fn exports(&self, arch: Arch, symbol: &str) -> bool {
        self.exports
            .iter()
            .any(|(a, set)| *a == arch && set.contains(symbol))
    }

    /// Reads a dependency `.kext` bundle: its identifier and exported symbols.
    pub fn read(bundle: &Path) -> Result<Dependency, VerifyError> {
        let (dict, exe) = read_bundle(bundle)?;
        let id = dict.and_then(|d| d.0).ok_or_else(|| VerifyError::Bundle {
            path: bundle.to_path_buf(),
            reason: "Contents/Info.plist has no CFBundleIdentifier".into(),
        })?;
        let mut exports = Vec::new();
        if let Some(exe) = exe {
            let bytes = std::fs::read(&exe).map_err(|source| VerifyError::Io {
                path: exe.clone(),
                source,
            })?;
            for (arch, slice) in fat::thin_slices(&bytes) {
                if let Ok(image) = image::Image::parse(slice) {
                    let defined = image
                        .symbols
                        .iter()
                        .filter(|s| s.is_ext() && !s.is_undefined() && !s.is_stab())
                        .map(|s| s.name.clone())
                        .collect();
                    exports.push((arch, defined));
                }
            }
        }
        Ok(Dependency { id, exports })
    }
}

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

/// Verifies a kext binary (thin x86_64/arm64e Mach-O or universal file) with
/// prx's build policy ([`Options::prx`]).
pub fn verify(bytes: &[u8], tables: &KpiTables) -> Report {
    verify_with(bytes, &Options::prx(tables))
}

/// Verifies a kext binary under `opts`.
pub fn verify_with(bytes: &[u8], opts: &Options<'_>) -> Report {
    let mut report = Report::default();
    if fat::is_fat(bytes) {
        fat::verify_fat(bytes, opts, &mut report);
    } else {
        checks::verify_slice(bytes, None, opts, &mut report);
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

/// What [`read_bundle`] found in Info.plist: (CFBundleIdentifier,
/// CFBundleVersion, OSBundleLibraries per arch key).
type BundleInfo = (Option<String>, Option<String>, Vec<(String, Vec<String>)>);

/// Reads a bundle's Info.plist and finds its executable (`None` for a codeless
/// kext: an Info.plist without CFBundleExecutable).
fn read_bundle(path: &Path) -> Result<(Option<BundleInfo>, Option<PathBuf>), VerifyError> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| VerifyError::Io { path: p, source }
    };
    let bundle_err = |reason: String| VerifyError::Bundle {
        path: path.to_path_buf(),
        reason,
    };
    let contents = path.join("Contents");
    let plist_path = contents.join("Info.plist");
    let macos = contents.join("MacOS");
    if plist_path.is_file() {
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
        let mut libraries = Vec::new();
        for (key, value) in dict {
            if key.starts_with("OSBundleLibraries")
                && let Some(d) = value.as_dictionary()
            {
                libraries.push((key.clone(), d.keys().cloned().collect()));
            }
        }
        let info = (get("CFBundleIdentifier"), get("CFBundleVersion"), libraries);
        let Some(exe) = get("CFBundleExecutable") else {
            return Ok((Some(info), None));
        };
        if exe.contains('/') || exe == ".." {
            return Err(bundle_err(format!(
                "CFBundleExecutable {exe:?} is not a file name"
            )));
        }
        return Ok((Some(info), Some(macos.join(exe))));
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&macos).map_err(io(&macos))? {
        let entry = entry.map_err(io(&macos))?;
        if entry.path().is_file() {
            files.push(entry.path());
        }
    }
    match files.as_slice() {
        [one] => Ok((None, Some(one.clone()))),
        _ => Err(bundle_err(format!(
            "no Contents/Info.plist and {} files in Contents/MacOS (expected exactly one)",
            files.len()
        ))),
    }
}

/// Verifies a kext binary file or a `.kext` bundle directory with prx's build
/// policy ([`Options::prx`]); see [`verify_path_with`].
pub fn verify_path(path: &Path, tables: &KpiTables) -> Result<Report, VerifyError> {
    verify_path_with(path, &Options::prx(tables))
}

/// Verifies a kext binary file or a `.kext` bundle directory.
///
/// For a bundle, the executable is `Contents/MacOS/<CFBundleExecutable>` from
/// `Contents/Info.plist` (or the only file in `Contents/MacOS` when there is no
/// Info.plist), and every slice's kmod name/version must equal the Info.plist's
/// `CFBundleIdentifier`/`CFBundleVersion` (check id `bundle`). The Info.plist's
/// `OSBundleLibraries` (or `OSBundleLibraries_<arch>`) are used to account for
/// imports from non-KPI dependencies. A codeless kext (Info.plist without
/// CFBundleExecutable: matching personalities or data only) is accepted with a note.
pub fn verify_path_with(path: &Path, opts: &Options<'_>) -> Result<Report, VerifyError> {
    if !path.is_dir() {
        let bytes = std::fs::read(path).map_err(|source| VerifyError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        return Ok(verify_with(&bytes, opts));
    }
    let (info, exe) = read_bundle(path)?;
    let Some(exe) = exe else {
        return Ok(Report {
            findings: vec![Finding {
                severity: Severity::Info,
                arch: None,
                check: "bundle",
                message: "codeless kext (Info.plist has no CFBundleExecutable): the loader only \
                          records its personalities and properties; no binary to check"
                    .into(),
            }],
            slices: Vec::new(),
        });
    };
    let bytes = std::fs::read(&exe).map_err(|source| VerifyError::Io {
        path: exe.clone(),
        source,
    })?;
    let mut opts = opts.clone();
    let mut expected = None;
    if let Some((id, version, libraries)) = info {
        // x86_64 first: OSBundleLibraries_x86_64 replaces OSBundleLibraries there
        // (the kernel reads the arch-specific key when present).
        let pick = |key: &str| libraries.iter().find(|(k, _)| k == key).map(|(_, v)| v);
        if let Some(libs) = pick("OSBundleLibraries_x86_64").or(pick("OSBundleLibraries")) {
            opts.libraries = libs.clone();
        }
        expected = Some((id, version));
    }
    let mut report = verify_with(&bytes, &opts);
    if let Some((id, version)) = expected {
        check_bundle_metadata(
            &mut report,
            id.as_deref(),
            version.as_deref(),
            opts.prx_rules,
        );
    }
    Ok(report)
}

/// Compares each slice's kmod_info name/version with the Info.plist's values.
///
/// The kernel stamps CFBundleIdentifier/CFBundleVersion over kmod_info when it
/// loads a kext (xnu libkern/c++/OSKext.cpp, OSKext::load: "Stamp the bundle ID
/// and version from the OSKext over anything resident inside the kmod_info"), so
/// a mismatch is an error only under prx's rules (its build writes both from one
/// metadata table) and a warning otherwise.
fn check_bundle_metadata(
    report: &mut Report,
    id: Option<&str>,
    version: Option<&str>,
    prx_rules: bool,
) {
    let severity = if prx_rules {
        Severity::Error
    } else {
        Severity::Warning
    };
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
                    severity,
                    arch: slice.arch,
                    check: "bundle",
                    message: format!(
                        "kmod_info.{field} is {got:?} but Info.plist {key} is {want:?}; \
                         the kernel overwrites kmod_info with the Info.plist's values, so what \
                         the kext reads from it differs from what it was built with: build both \
                         from the same metadata"
                    ),
                });
            }
        }
    }
    report.findings.extend(found);
}
