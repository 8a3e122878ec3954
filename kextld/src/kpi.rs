//! KPI symbol tables: which symbols a kext may bind, and from which KPI set.
//!
//! Glossary:
//! - **KPI set**: a pseudo-kext built into the kernel (`com.apple.kpi.bsd`, …) that
//!   re-exports a curated list of kernel symbols. A kext may bind a symbol only if a
//!   set it declares in `OSBundleLibraries` exports it.
//! - **export list**: xnu's `config/<Set>[.<arch>][.MacOSX].exports` files, the source
//!   of truth for those lists. prx does not read them at build time: `cargo xtask
//!   gen-kpi` derives the committed table `kextld/kpi/exports.txt` from them
//!   ([`generate`]), and this module parses that table ([`KpiTables::builtin`]).
//! - **private**: `com.apple.kpi.private` is recorded only so that diagnostics can say
//!   "this symbol is private"; third-party kexts can never link against it.
//!
//! Precedence when several sets export a symbol: public sets always win over
//! `private`; among public sets the order is bsd, libkern, mach, iokit, dsep,
//! unsupported (the [`KpiSet`] declaration order). Apple's `kextlibs` does not pick
//! for you — it reports symbols "found in multiple libraries" and leaves the choice
//! to the developer — so prx needs a fixed rule. At xnu-11417.101.15 the public sets
//! are disjoint and the only overlap is `unsupported` ∩ `private` (about 20
//! symbols, e.g. `_hz`), where the public set is the only possible answer;
//! `unsupported` comes last among public sets because it is the one Apple promises
//! the least about, so a symbol that is also in a stable set is bound there.

mod generate;
pub mod history;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::sync::OnceLock;

use crate::{Arch, MinOs};

pub use generate::{check, generate};
pub use history::{HISTORY_PATH, KpiHistory, generate_history};

/// Where the committed table lives, relative to the workspace root.
pub const TABLE_PATH: &str = "kextld/kpi/exports.txt";

/// The environment variable naming the xnu exports directory (for the drift test
/// and `cargo xtask gen-kpi`); default `<workspace root>/../shared/xnu-exports`.
pub const EXPORTS_DIR_ENV: &str = "PRX_XNU_EXPORTS";

const BUILTIN_TABLE: &str = include_str!("../kpi/exports.txt");

/// A KPI set (pseudo-kext). Declaration order is the precedence order used when
/// several sets export the same symbol (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KpiSet {
    /// `com.apple.kpi.bsd` (xnu `BSDKernel*.exports`): sockets, mbufs, filters, kern_control.
    Bsd,
    /// `com.apple.kpi.libkern` (`Libkern*.exports`): printf, mem*, locks, OSMalloc, OSObject.
    Libkern,
    /// `com.apple.kpi.mach` (`Mach*.exports`): Mach primitives, clocks, threads.
    Mach,
    /// `com.apple.kpi.iokit` (`IOKit*.exports`): IOKit, `IOLog`.
    Iokit,
    /// `com.apple.kpi.dsep` (`MACFramework*.exports`): MAC framework.
    Dsep,
    /// `com.apple.kpi.unsupported` (`Unsupported*.exports`): allowed, but without stability promises.
    Unsupported,
    /// `com.apple.kpi.private` (`Private*.exports`): never visible to third-party kexts.
    Private,
}

impl KpiSet {
    /// Every set, in precedence order.
    pub const ALL: [KpiSet; 7] = [
        KpiSet::Bsd,
        KpiSet::Libkern,
        KpiSet::Mach,
        KpiSet::Iokit,
        KpiSet::Dsep,
        KpiSet::Unsupported,
        KpiSet::Private,
    ];

    /// The name used in the table: the bundle id without `com.apple.kpi.`.
    pub fn short_name(self) -> &'static str {
        match self {
            KpiSet::Bsd => "bsd",
            KpiSet::Libkern => "libkern",
            KpiSet::Mach => "mach",
            KpiSet::Iokit => "iokit",
            KpiSet::Dsep => "dsep",
            KpiSet::Unsupported => "unsupported",
            KpiSet::Private => "private",
        }
    }

    /// The pseudo-kext's CFBundleIdentifier, as it appears in `OSBundleLibraries`.
    pub fn bundle_id(self) -> &'static str {
        match self {
            KpiSet::Bsd => "com.apple.kpi.bsd",
            KpiSet::Libkern => "com.apple.kpi.libkern",
            KpiSet::Mach => "com.apple.kpi.mach",
            KpiSet::Iokit => "com.apple.kpi.iokit",
            KpiSet::Dsep => "com.apple.kpi.dsep",
            KpiSet::Unsupported => "com.apple.kpi.unsupported",
            KpiSet::Private => "com.apple.kpi.private",
        }
    }

    /// The stem of xnu's export files for this set (`BSDKernel` in `BSDKernel.x86_64.exports`).
    pub fn xnu_file_stem(self) -> &'static str {
        match self {
            KpiSet::Bsd => "BSDKernel",
            KpiSet::Libkern => "Libkern",
            KpiSet::Mach => "Mach",
            KpiSet::Iokit => "IOKit",
            KpiSet::Dsep => "MACFramework",
            KpiSet::Unsupported => "Unsupported",
            KpiSet::Private => "Private",
        }
    }

    /// Whether third-party kexts are forbidden to link against it.
    pub fn is_private(self) -> bool {
        self == KpiSet::Private
    }

    fn from_short_name(s: &str) -> Option<KpiSet> {
        KpiSet::ALL.into_iter().find(|k| k.short_name() == s)
    }

    fn from_xnu_file_stem(s: &str) -> Option<KpiSet> {
        KpiSet::ALL.into_iter().find(|k| k.xnu_file_stem() == s)
    }
}

impl fmt::Display for KpiSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.bundle_id())
    }
}

/// What went wrong generating or parsing a KPI table.
#[derive(Debug, thiserror::Error)]
pub enum KpiError {
    /// A file or directory could not be read.
    #[error("{path}: cannot read: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// An input file is not a recognised xnu export file or is malformed.
    #[error("{path}: {message}")]
    Input {
        /// The file (with `:line` when about one line).
        path: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// The table text is malformed.
    #[error("KPI table line {line}: {message}")]
    Table {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The table body does not match the hash in its header: it was edited by hand.
    #[error(
        "KPI table body sha256 is {actual} but its header records {recorded}: the table was edited \
         by hand; regenerate it with `cargo xtask gen-kpi`"
    )]
    BodyHash {
        /// The hash in the header.
        recorded: String,
        /// The hash of the body as found.
        actual: String,
    },
}

/// The answer to "which set exports this symbol?" for one architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// Exported by a public set; its bundle id (e.g. `com.apple.kpi.bsd`).
    Public(&'static str),
    /// Exported only by `com.apple.kpi.private`: third-party kexts cannot bind it.
    Private,
    /// Exported by no KPI set.
    Unknown,
}

/// Bit for each architecture in an arch mask.
fn arch_bit(arch: Arch) -> u8 {
    match arch {
        Arch::X86_64 => 1,
        Arch::Arm64e => 2,
    }
}

/// The parsed KPI table: for each symbol (or wildcard prefix), the sets that export
/// it on each architecture.
#[derive(Debug, Clone)]
pub struct KpiTables {
    provenance: String,
    /// symbol → (set, arch mask), sets in precedence order.
    exact: HashMap<String, Vec<(KpiSet, u8)>>,
    /// (prefix without '*', set, arch mask).
    wildcards: Vec<(String, KpiSet, u8)>,
}

impl KpiTables {
    /// The table committed at [`TABLE_PATH`], compiled into kextld, parsed once.
    ///
    /// # Panics
    /// If the committed table is malformed or hand-edited; the kpi drift test fails
    /// first in that case.
    pub fn builtin() -> &'static KpiTables {
        static TABLES: OnceLock<KpiTables> = OnceLock::new();
        TABLES.get_or_init(|| {
            KpiTables::parse(BUILTIN_TABLE)
                .unwrap_or_else(|e| panic!("{TABLE_PATH} (compiled into kextld) is invalid: {e}"))
        })
    }

    /// Parses table text in the format [`generate`] writes, checking its body hash.
    pub fn parse(text: &str) -> Result<KpiTables, KpiError> {
        let table = generate::split_table(text)?;
        table.verify_body_hash()?;
        let mut exact: HashMap<String, Vec<(KpiSet, u8)>> = HashMap::new();
        let mut wildcards = Vec::new();
        for (i, line) in table.body.lines().enumerate() {
            let lineno = table.body_first_line + i;
            let bad = |message: String| KpiError::Table {
                line: lineno,
                message,
            };
            let mut fields = line.split(' ');
            let (Some(symbol), Some(set), Some(arches), None) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                return Err(bad(format!(
                    "expected `<symbol> <set> <arches>`, found {line:?}"
                )));
            };
            if !symbol.starts_with('_') {
                return Err(bad(format!("symbol {symbol:?} does not start with '_'")));
            }
            let set = KpiSet::from_short_name(set)
                .ok_or_else(|| bad(format!("unknown KPI set {set:?}")))?;
            let mut mask = 0;
            for a in arches.split(',') {
                let arch: Arch = a.parse().map_err(bad)?;
                mask |= arch_bit(arch);
            }
            match symbol.strip_suffix('*') {
                Some(prefix) => wildcards.push((prefix.to_owned(), set, mask)),
                None => {
                    let sets = exact.entry(symbol.to_owned()).or_default();
                    sets.push((set, mask));
                    sets.sort();
                }
            }
        }
        Ok(KpiTables {
            provenance: table.xnu_tag,
            exact,
            wildcards,
        })
    }

    /// Every set that exports `symbol` (with its leading `_`) on `arch`, in
    /// precedence order, counting both exact entries and wildcards.
    pub fn exporters(&self, arch: Arch, symbol: &str) -> Vec<KpiSet> {
        let bit = arch_bit(arch);
        let mut sets = BTreeSet::new();
        if let Some(entries) = self.exact.get(symbol) {
            sets.extend(
                entries
                    .iter()
                    .filter(|(_, m)| m & bit != 0)
                    .map(|(s, _)| *s),
            );
        }
        for (prefix, set, mask) in &self.wildcards {
            if mask & bit != 0 && symbol.starts_with(prefix.as_str()) {
                sets.insert(*set);
            }
        }
        sets.into_iter().collect()
    }

    /// Which set a kext binding `symbol` (with its leading `_`) on `arch` must declare.
    /// The first public set in precedence order (see the module docs) wins.
    pub fn lookup(&self, arch: Arch, symbol: &str) -> Lookup {
        let sets = self.exporters(arch, symbol);
        match sets.first() {
            None => Lookup::Unknown,
            Some(s) if s.is_private() => Lookup::Private,
            Some(s) => Lookup::Public(s.bundle_id()),
        }
    }

    /// The xnu release the table was generated from, e.g. `xnu-11417.101.15`.
    pub fn provenance(&self) -> &str {
        &self.provenance
    }
}

/// Why an undefined symbol cannot be bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum UnresolvedKind {
    /// Exported only by `com.apple.kpi.private`.
    Private,
    /// Exported by no KPI set.
    Unknown,
}

/// One undefined symbol that no public KPI set exports.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Unresolved {
    /// The slice it is undefined in.
    pub arch: Arch,
    /// The symbol, with its leading `_`.
    pub symbol: String,
    /// Why it cannot be bound.
    pub kind: UnresolvedKind,
}

/// The undefined symbols of a kext that no public KPI set exports. Displays one
/// line per symbol saying what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnresolvedSymbols {
    /// Sorted by arch, then symbol.
    pub symbols: Vec<Unresolved>,
    /// The table's provenance (xnu tag), for the message.
    pub provenance: String,
}

impl fmt::Display for UnresolvedSymbols {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.symbols.len();
        write!(
            f,
            "{n} undefined symbol{} not exported to third-party kexts by any public KPI set ({}):",
            if n == 1 { " is" } else { "s are" },
            self.provenance
        )?;
        for u in &self.symbols {
            let what = match u.kind {
                UnresolvedKind::Private => {
                    "exported only by com.apple.kpi.private, which third-party kexts cannot link \
                     against; use a public KPI instead"
                }
                UnresolvedKind::Unknown => {
                    "exported by no KPI set; define it in the kext, or check the name (C names \
                     carry a leading '_', C++ names must be mangled)"
                }
            };
            write!(f, "\n  {} ({}): {what}", u.symbol, u.arch)?;
        }
        Ok(())
    }
}

impl std::error::Error for UnresolvedSymbols {}

/// The `OSBundleLibraries` of a kext slice: each public KPI set exporting one of its
/// `undefined` symbols, mapped to `"<darwin major of min_os>.0.0"` (17.0.0 for 10.13).
pub fn os_bundle_libraries(
    tables: &KpiTables,
    arch: Arch,
    undefined: &[String],
    min_os: MinOs,
) -> Result<BTreeMap<String, String>, UnresolvedSymbols> {
    os_bundle_libraries_multi(tables, &[(arch, undefined, min_os)])
}

/// [`os_bundle_libraries`] for a universal binary: the union of the sets needed by
/// each `(arch, undefined, min_os)` slice, at the version of the lowest `min_os`
/// (one Info.plist serves every slice, and the oldest system must accept it).
pub fn os_bundle_libraries_multi(
    tables: &KpiTables,
    slices: &[(Arch, &[String], MinOs)],
) -> Result<BTreeMap<String, String>, UnresolvedSymbols> {
    let Some(min_os) = slices.iter().map(|s| s.2).min() else {
        return Ok(BTreeMap::new());
    };
    let version = format!("{}.0.0", min_os.darwin_major());
    let mut libraries = BTreeMap::new();
    let mut unresolved = BTreeSet::new();
    for (arch, undefined, _) in slices {
        for symbol in *undefined {
            let kind = match tables.lookup(*arch, symbol) {
                Lookup::Public(id) => {
                    libraries.insert(id.to_owned(), version.clone());
                    continue;
                }
                Lookup::Private => UnresolvedKind::Private,
                Lookup::Unknown => UnresolvedKind::Unknown,
            };
            unresolved.insert(Unresolved {
                arch: *arch,
                symbol: symbol.clone(),
                kind,
            });
        }
    }
    if unresolved.is_empty() {
        Ok(libraries)
    } else {
        Err(UnresolvedSymbols {
            symbols: unresolved.into_iter().collect(),
            provenance: tables.provenance().to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BSD: Lookup = Lookup::Public("com.apple.kpi.bsd");
    const LIBKERN: Lookup = Lookup::Public("com.apple.kpi.libkern");
    const IOKIT: Lookup = Lookup::Public("com.apple.kpi.iokit");
    const UNSUPPORTED: Lookup = Lookup::Public("com.apple.kpi.unsupported");

    fn both(symbol: &str) -> Lookup {
        let t = KpiTables::builtin();
        let x86 = t.lookup(Arch::X86_64, symbol);
        assert_eq!(
            x86,
            t.lookup(Arch::Arm64e, symbol),
            "{symbol} differs between arches"
        );
        x86
    }

    // Each fact below was checked against the xnu-11417.101.15 export files.
    #[test]
    fn symbols_the_kexts_use() {
        for s in ["_printf", "_memcpy", "_lck_mtx_lock", "_OSMalloc"] {
            assert_eq!(both(s), LIBKERN, "{s}");
        }
        for s in [
            "_sflt_register",
            "_ipf_addv4",
            "_mbuf_pullup",
            "_ctl_register",
            "_sock_inject_data_out",
        ] {
            assert_eq!(both(s), BSD, "{s}");
        }
        assert_eq!(both("_IOLog"), IOKIT);
        assert_eq!(both("_no_such_symbol"), Lookup::Unknown);
        // A leading '_' is part of the symbol.
        assert_eq!(both("printf"), Lookup::Unknown);
        assert_eq!(KpiTables::builtin().provenance(), "xnu-11417.101.15");
    }

    #[test]
    fn aliases_bind_their_left_side() {
        // Libkern.<arch>.MacOSX.exports: `_OSMalloc:_OSMalloc_external`.
        assert_eq!(both("_OSMalloc"), LIBKERN);
        assert_eq!(both("_OSMalloc_external"), Lookup::Unknown);
        // BSDKernel.exports: `_in_cksum:_inet_cksum_simple`.
        assert_eq!(both("_in_cksum"), BSD);
        assert_eq!(both("_inet_cksum_simple"), Lookup::Unknown);
    }

    #[test]
    fn wildcards_match_prefixes() {
        let t = KpiTables::builtin();
        // Private.exports: `__ZN5IOCPU*`.
        assert_eq!(both("__ZN5IOCPU5startEP9IOService"), Lookup::Private);
        // Private.x86_64.exports only: `_hv_get*`.
        assert_eq!(
            t.lookup(Arch::X86_64, "_hv_get_vmx_capability"),
            Lookup::Private
        );
        assert_eq!(
            t.lookup(Arch::Arm64e, "_hv_get_vmx_capability"),
            Lookup::Unknown
        );
    }

    #[test]
    fn private_symbols_are_private() {
        // Private.exports, and no public set.
        assert_eq!(both("_ext_paniclog_claim_buffer"), Lookup::Private);
        assert!(KpiSet::Private.is_private());
    }

    #[test]
    fn public_wins_over_private() {
        // `_hz` is in both Unsupported.exports and Private.exports.
        let t = KpiTables::builtin();
        assert_eq!(
            t.exporters(Arch::X86_64, "_hz"),
            [KpiSet::Unsupported, KpiSet::Private]
        );
        assert_eq!(both("_hz"), UNSUPPORTED);
    }

    #[test]
    fn arches_differ() {
        let t = KpiTables::builtin();
        // BSDKernel.x86_64.exports only.
        assert_eq!(t.lookup(Arch::X86_64, "_in6_cksum"), BSD);
        assert_eq!(t.lookup(Arch::Arm64e, "_in6_cksum"), Lookup::Unknown);
        // Libkern.x86_64.exports only.
        assert_eq!(t.lookup(Arch::X86_64, "_sprintf"), LIBKERN);
        assert_eq!(t.lookup(Arch::Arm64e, "_sprintf"), Lookup::Unknown);
        // BSDKernel.arm64.exports, but Private.x86_64.exports.
        assert_eq!(t.lookup(Arch::Arm64e, "_proc_ucred"), BSD);
        assert_eq!(t.lookup(Arch::X86_64, "_proc_ucred"), Lookup::Private);
    }

    fn syms(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn bundle_libraries_for_a_socket_filter() {
        let t = KpiTables::builtin();
        let undefined = syms(&[
            "_sflt_register",
            "_mbuf_pullup",
            "_printf",
            "_OSMalloc",
            "_IOLog",
        ]);
        let libs = os_bundle_libraries(t, Arch::X86_64, &undefined, MinOs::X86_64_DEFAULT).unwrap();
        let expected: BTreeMap<String, String> = [
            ("com.apple.kpi.bsd", "17.0.0"),
            ("com.apple.kpi.iokit", "17.0.0"),
            ("com.apple.kpi.libkern", "17.0.0"),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .collect();
        assert_eq!(libs, expected);
        let libs = os_bundle_libraries(t, Arch::Arm64e, &syms(&["_printf"]), MinOs::ARM64E_DEFAULT)
            .unwrap();
        assert_eq!(
            libs.get("com.apple.kpi.libkern").map(String::as_str),
            Some("20.0.0")
        );
        assert_eq!(libs.len(), 1);
        assert!(
            os_bundle_libraries(t, Arch::X86_64, &[], MinOs::X86_64_DEFAULT)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn unresolved_symbols_are_named_with_advice() {
        let t = KpiTables::builtin();
        let undefined = syms(&["_printf", "_no_such_symbol", "_ext_paniclog_claim_buffer"]);
        let e =
            os_bundle_libraries(t, Arch::X86_64, &undefined, MinOs::X86_64_DEFAULT).unwrap_err();
        assert_eq!(e.symbols.len(), 2);
        let msg = e.to_string();
        assert!(msg.starts_with("2 undefined symbols are"), "{msg}");
        assert!(
            msg.contains("_no_such_symbol (x86_64): exported by no KPI set"),
            "{msg}"
        );
        assert!(
            msg.contains(
                "_ext_paniclog_claim_buffer (x86_64): exported only by com.apple.kpi.private"
            ),
            "{msg}"
        );
        assert!(msg.contains("xnu-11417.101.15"), "{msg}");
    }

    #[test]
    fn universal_binaries_take_the_union_at_the_lowest_version() {
        let t = KpiTables::builtin();
        let x86 = syms(&["_in6_cksum", "_printf"]);
        let arm = syms(&["_proc_ucred", "_IOLog"]);
        let libs = os_bundle_libraries_multi(
            t,
            &[
                (Arch::X86_64, &x86, MinOs::X86_64_DEFAULT),
                (Arch::Arm64e, &arm, MinOs::ARM64E_DEFAULT),
            ],
        )
        .unwrap();
        let got: Vec<(&str, &str)> = libs.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        assert_eq!(
            got,
            [
                ("com.apple.kpi.bsd", "17.0.0"),
                ("com.apple.kpi.iokit", "17.0.0"),
                ("com.apple.kpi.libkern", "17.0.0")
            ]
        );
        // `_proc_ucred` is private on x86_64: the same symbol list fails there.
        let e = os_bundle_libraries_multi(
            t,
            &[
                (Arch::X86_64, &arm, MinOs::X86_64_DEFAULT),
                (Arch::Arm64e, &arm, MinOs::ARM64E_DEFAULT),
            ],
        )
        .unwrap_err();
        assert_eq!(
            e.symbols,
            [Unresolved {
                arch: Arch::X86_64,
                symbol: "_proc_ucred".into(),
                kind: UnresolvedKind::Private
            }]
        );
    }

    #[test]
    fn parse_rejects_malformed_tables() {
        let text = generate::tests_support::table_with_body("_a bsd x86_64\n_b nosuchset x86_64\n");
        let e = KpiTables::parse(&text).unwrap_err().to_string();
        assert!(e.contains("nosuchset"), "{e}");
        let text = generate::tests_support::table_with_body("_a bsd ppc\n");
        assert!(
            KpiTables::parse(&text)
                .unwrap_err()
                .to_string()
                .contains("ppc")
        );
        let text = generate::tests_support::table_with_body("_a bsd\n");
        assert!(
            KpiTables::parse(&text)
                .unwrap_err()
                .to_string()
                .contains("expected")
        );
        assert!(KpiTables::parse("").is_err());
    }
}
