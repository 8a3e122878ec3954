//! KPI export lists across macOS releases: which releases' KPI sets export a
//! symbol, so the verifier can judge a kext against every macOS it declares
//! rather than against one xnu release.
//!
//! `cargo xtask gen-kpi --history --xnu-git DIR` reads `config/*.exports` at the
//! tags in [`RELEASES`] from a git clone of apple-oss-distributions/xnu (with
//! `git show <tag>:config/<file>`) and writes [`HISTORY_PATH`], recording each
//! release's tag and commit and the sha256 of every file read. The files of one
//! release are classified as in [`super::generate`] (base, arch and `.MacOSX`
//! files; 32-bit and other foreign architectures ignored).
//!
//! Body format, after the header: one line per (symbol, set), sorted:
//! `<symbol> <set> <x86_64 mask> <arm64e mask>`, each mask the hexadecimal bit
//! set of [`RELEASES`] indices (bit 0 = the oldest) that export the symbol on
//! that architecture.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

use super::generate::{classify, hex, parse_line};
use super::{KpiError, KpiSet, arch_bit};
use crate::{Arch, MinOs};

/// Where the committed history table lives, relative to the workspace root.
pub const HISTORY_PATH: &str = "kextld/kpi/history.txt";

/// The environment variable naming a git clone of xnu for the full drift check.
pub const XNU_GIT_ENV: &str = "PRX_XNU_GIT";

const BUILTIN_HISTORY: &str = include_str!("../../kpi/history.txt");
const BODY_HASH_KEY: &str = "# body-sha256: ";
/// Export-file stems in xnu's config/ that are not KPI sets.
const NOT_KPI_SETS: [&str; 6] = [
    "Unused",
    "Kasan_enabled",
    "Kasan_disabled",
    "Kcov_enabled",
    "Kcov_disabled",
    "libTightbeam",
];
const RELEASE_KEY: &str = "# release: ";

/// One macOS release and the xnu tag its export lists are read from: the last
/// public tag of each major release, 10.13 to today.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Release {
    /// macOS version, e.g. `10.15`.
    pub macos: MinOs,
    /// xnu tag in apple-oss-distributions/xnu.
    pub tag: &'static str,
}

const fn rel(major: u32, minor: u32, tag: &'static str) -> Release {
    Release {
        macos: MinOs { major, minor },
        tag,
    }
}

/// The releases the history covers, oldest first (bit `i` of a mask is `RELEASES[i]`).
pub const RELEASES: [Release; 9] = [
    rel(10, 13, "xnu-4570.71.2"),
    rel(10, 14, "xnu-4903.270.47"),
    rel(10, 15, "xnu-6153.141.1"),
    rel(11, 0, "xnu-7195.141.2"),
    rel(12, 0, "xnu-8020.140.41"),
    rel(13, 0, "xnu-8796.141.3"),
    rel(14, 0, "xnu-10063.141.1"),
    rel(15, 0, "xnu-11215.81.4"),
    rel(15, 4, "xnu-11417.121.6"),
];

fn git(repo: &Path, args: &[&str]) -> Result<Vec<u8>, KpiError> {
    let out = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(args)
        .output()
        .map_err(|source| KpiError::Io {
            path: repo.to_owned(),
            source,
        })?;
    if !out.status.success() {
        return Err(KpiError::Input {
            path: repo.display().to_string(),
            message: format!(
                "`git {}` failed: {}; pass a clone of apple-oss-distributions/xnu with its tags",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(out.stdout)
}

/// Reads the export lists of every release from the xnu clone `xnu_git` and
/// returns the table text to commit at [`HISTORY_PATH`]. Deterministic.
pub fn generate_history(xnu_git: &Path) -> Result<String, KpiError> {
    // (symbol, set) → [x86_64 mask, arm64e mask].
    let mut entries: BTreeMap<(String, KpiSet), [u16; 2]> = BTreeMap::new();
    let mut header = String::new();
    for (bit, release) in RELEASES.iter().enumerate() {
        let commit = git(
            xnu_git,
            &["rev-parse", &format!("{}^{{commit}}", release.tag)],
        )?;
        let commit = String::from_utf8_lossy(&commit).trim().to_owned();
        writeln!(
            header,
            "{RELEASE_KEY}{} {} {commit}",
            release.macos, release.tag
        )
        .unwrap();
        let listing = git(xnu_git, &["ls-tree", "--name-only", release.tag, "config/"])?;
        let listing = String::from_utf8_lossy(&listing).into_owned();
        for path in listing.lines().filter(|p| p.ends_with(".exports")) {
            let name = path.trim_start_matches("config/");
            let where_ = format!("{}:{path}", release.tag);
            // Lists that are not KPI sets a kext can declare: Unused (symbols
            // kept for binary compatibility), the kernel's build-feature lists
            // (KASAN, kcov, Tightbeam) and per-feature files (`.hibernation.`, `.Tightbeam.`).
            let stem = name.split('.').next().unwrap_or_default();
            if NOT_KPI_SETS.contains(&stem)
                || name.contains(".hibernation.")
                || name.contains(".Tightbeam.")
            {
                continue;
            }
            let Some((set, arches)) = classify(name).map_err(|message| KpiError::Input {
                path: where_.clone(),
                message,
            })?
            else {
                continue;
            };
            let bytes = git(xnu_git, &["show", &where_])?;
            writeln!(
                header,
                "# input: {} {}  {name}",
                release.tag,
                hex(&Sha256::digest(&bytes))
            )
            .unwrap();
            let text = String::from_utf8_lossy(&bytes);
            for (i, line) in text.lines().enumerate() {
                let symbol = parse_line(line).map_err(|message| KpiError::Input {
                    path: format!("{where_}:{}", i + 1),
                    message,
                })?;
                if let Some(symbol) = symbol {
                    let masks = entries.entry((symbol.to_owned(), set)).or_default();
                    for (k, arch) in Arch::ALL.iter().enumerate() {
                        // Before macOS 11 the arm64 lists are iOS's: arm64e macOS
                        // starts with 11.
                        let macos_arm = release.macos.major >= 11;
                        if arches & arch_bit(*arch) != 0 && (*arch != Arch::Arm64e || macos_arm) {
                            masks[k] |= 1 << bit;
                        }
                    }
                }
            }
        }
    }
    let mut body = String::new();
    for ((symbol, set), [x86, arm]) in &entries {
        if x86 | arm != 0 {
            writeln!(body, "{symbol} {} {x86:x} {arm:x}", set.short_name()).unwrap();
        }
    }
    let mut out = format!(
        "\
# prx KPI history table. GENERATED FILE: DO NOT EDIT.
#
# Regenerate: cargo xtask gen-kpi --history --xnu-git DIR   (DIR: a clone of
#             https://github.com/apple-oss-distributions/xnu with its tags)
# Source: config/*.exports of xnu at the tags below, one per macOS release (release lines:
#   macOS version, tag, commit; input lines: tag, sha256 and name of each file read).
# Body: <symbol> <set> <x86_64 mask> <arm64e mask>; bit i of a mask (hex) is the i-th release line.
# Drift check: kpi::history::tests regenerates this file when ${XNU_GIT_ENV} names a clone, and
# otherwise checks the body hash below (catching hand edits).
"
    );
    out.push_str(&header);
    writeln!(
        out,
        "{BODY_HASH_KEY}{}",
        hex(&Sha256::digest(body.as_bytes()))
    )
    .unwrap();
    out.push_str(&body);
    Ok(out)
}

/// In which releases a symbol is exported, per set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exported {
    /// The set exporting it.
    pub set: KpiSet,
    /// Bit `i` set if [`RELEASES`]`[i]` exports it.
    pub releases: u16,
}

/// The parsed history table.
#[derive(Debug, Clone)]
pub struct KpiHistory {
    /// (macOS version, tag, commit) per release, oldest first.
    releases: Vec<(String, String, String)>,
    exact: HashMap<String, Vec<(KpiSet, [u16; 2])>>,
    wildcards: Vec<(String, KpiSet, [u16; 2])>,
}

impl KpiHistory {
    /// The table committed at [`HISTORY_PATH`], compiled into kextld, parsed once.
    ///
    /// # Panics
    /// If the committed table is malformed; its tests fail first in that case.
    pub fn builtin() -> &'static KpiHistory {
        static HISTORY: OnceLock<KpiHistory> = OnceLock::new();
        HISTORY.get_or_init(|| {
            KpiHistory::parse(BUILTIN_HISTORY)
                .unwrap_or_else(|e| panic!("{HISTORY_PATH} (compiled into kextld) is invalid: {e}"))
        })
    }

    /// Parses table text in the format [`generate_history`] writes, checking its body hash.
    pub fn parse(text: &str) -> Result<KpiHistory, KpiError> {
        let mut releases = Vec::new();
        let mut offset = 0;
        let mut body = None;
        for (i, line) in text.split_inclusive('\n').enumerate() {
            offset += line.len();
            let content = line.trim_end_matches('\n');
            if let Some(r) = content.strip_prefix(RELEASE_KEY) {
                let f: Vec<&str> = r.split(' ').collect();
                let [v, tag, commit] = f[..] else {
                    return Err(KpiError::Table {
                        line: i + 1,
                        message: "expected `# release: <macOS> <tag> <commit>`".into(),
                    });
                };
                releases.push((v.to_owned(), tag.to_owned(), commit.to_owned()));
            } else if let Some(hash) = content.strip_prefix(BODY_HASH_KEY) {
                let b = &text[offset..];
                let actual = hex(&Sha256::digest(b.as_bytes()));
                if actual != hash {
                    return Err(KpiError::BodyHash {
                        recorded: hash.to_owned(),
                        actual,
                    });
                }
                body = Some((b, i + 2));
                break;
            }
        }
        let Some((body, first_line)) = body else {
            return Err(KpiError::Table {
                line: 1,
                message: format!("no `{}` line", BODY_HASH_KEY.trim()),
            });
        };
        let mut exact: HashMap<String, Vec<(KpiSet, [u16; 2])>> = HashMap::new();
        let mut wildcards = Vec::new();
        for (i, line) in body.lines().enumerate() {
            let bad = |message: String| KpiError::Table {
                line: first_line + i,
                message,
            };
            let f: Vec<&str> = line.split(' ').collect();
            let [symbol, set, x86, arm] = f[..] else {
                return Err(bad(format!(
                    "expected `<symbol> <set> <x86_64 mask> <arm64e mask>`, found {line:?}"
                )));
            };
            let set = KpiSet::from_short_name(set)
                .ok_or_else(|| bad(format!("unknown KPI set {set:?}")))?;
            let mask = |m: &str| u16::from_str_radix(m, 16).map_err(|e| bad(format!("{m:?}: {e}")));
            let masks = [mask(x86)?, mask(arm)?];
            match symbol.strip_suffix('*') {
                Some(prefix) => wildcards.push((prefix.to_owned(), set, masks)),
                None => exact
                    .entry(symbol.to_owned())
                    .or_default()
                    .push((set, masks)),
            }
        }
        Ok(KpiHistory {
            releases,
            exact,
            wildcards,
        })
    }

    /// The macOS version of release bit `i`, e.g. `10.15`.
    pub fn release_name(&self, i: usize) -> &str {
        self.releases.get(i).map_or("?", |r| r.0.as_str())
    }

    /// The number of releases covered.
    pub fn len(&self) -> usize {
        self.releases.len()
    }

    /// Whether the table covers no release.
    pub fn is_empty(&self) -> bool {
        self.releases.is_empty()
    }

    /// `10.13 (xnu-4570.71.2), …`: the releases and tags covered, for messages.
    pub fn provenance(&self) -> String {
        let v: Vec<String> = self
            .releases
            .iter()
            .map(|(v, t, _)| format!("{v} ({t})"))
            .collect();
        v.join(", ")
    }

    /// Every set exporting `symbol` on `arch` in some release, with the releases.
    pub fn exporters(&self, arch: Arch, symbol: &str) -> Vec<Exported> {
        let k = usize::from(arch == Arch::Arm64e);
        let mut by_set: BTreeMap<KpiSet, u16> = BTreeMap::new();
        for (set, masks) in self.exact.get(symbol).into_iter().flatten() {
            *by_set.entry(*set).or_default() |= masks[k];
        }
        for (prefix, set, masks) in &self.wildcards {
            if symbol.starts_with(prefix.as_str()) {
                *by_set.entry(*set).or_default() |= masks[k];
            }
        }
        by_set
            .into_iter()
            .filter(|(_, m)| *m != 0)
            .map(|(set, releases)| Exported { set, releases })
            .collect()
    }

    /// The mask of releases at or after `min_os` (the ones a kext with that
    /// minimum can load on).
    pub fn from_release(&self, min_os: MinOs) -> u16 {
        let mut mask = 0;
        for (i, (v, _, _)) in self.releases.iter().enumerate() {
            let on = v.parse::<MinOs>().is_ok_and(|r| {
                // A release counts if it is min_os's major release or later.
                (r.major, r.minor)
                    >= (
                        min_os.major,
                        if min_os.major == 10 { min_os.minor } else { 0 },
                    )
            });
            if on {
                mask |= 1 << i;
            }
        }
        mask
    }

    /// The names of the releases in `mask`, as ranges where contiguous (`10.13–10.15, 12`).
    pub fn describe(&self, mask: u16) -> String {
        let mut parts: Vec<String> = Vec::new();
        let mut i = 0;
        while i < self.releases.len() {
            if mask & (1 << i) == 0 {
                i += 1;
                continue;
            }
            let start = i;
            while i + 1 < self.releases.len() && mask & (1 << (i + 1)) != 0 {
                i += 1;
            }
            parts.push(if start == i {
                self.release_name(i).to_owned()
            } else {
                format!("{}–{}", self.release_name(start), self.release_name(i))
            });
            i += 1;
        }
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_history_is_current() {
        let committed = BUILTIN_HISTORY;
        let h = KpiHistory::parse(committed).expect("committed history parses");
        assert_eq!(h.len(), RELEASES.len());
        for (i, r) in RELEASES.iter().enumerate() {
            assert_eq!(h.releases[i].0, r.macos.to_string());
            assert_eq!(h.releases[i].1, r.tag);
        }
        match std::env::var_os(XNU_GIT_ENV) {
            Some(dir) => {
                let fresh = generate_history(Path::new(&dir)).unwrap();
                assert!(
                    fresh == committed,
                    "{HISTORY_PATH} differs from a regeneration from {dir:?}: run `cargo xtask \
                     gen-kpi --history --xnu-git DIR` and commit the result"
                );
            }
            None => eprintln!(
                "{XNU_GIT_ENV} not set: checked {HISTORY_PATH}'s body hash only, not a regeneration"
            ),
        }
    }

    #[test]
    fn symbols_of_other_releases_are_found_with_their_releases() {
        let h = KpiHistory::builtin();
        // In every release.
        let all = h.exporters(Arch::X86_64, "_IOLog");
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].set, KpiSet::Iokit);
        assert_eq!(all[0].releases, (1 << RELEASES.len()) - 1);
        // Exported by 10.13–10.15 only (IOKit.x86_64.exports of those tags).
        let old = h.exporters(Arch::X86_64, "_StartIOKit");
        assert_eq!(old.len(), 1, "{old:?}");
        assert_eq!((old[0].set, old[0].releases), (KpiSet::Iokit, 0b111));
        assert_eq!(h.describe(old[0].releases), "10.13–10.15");
        // Pad slots are in no list: the vtable patcher handles them.
        let pad = h.exporters(Arch::X86_64, "__ZN9IOService19_RESERVEDIOService0Ev");
        assert!(pad.is_empty(), "{pad:?}");
        // arm64e exists from macOS 11 only.
        let arm = h.exporters(Arch::Arm64e, "_IOLog");
        assert_eq!(arm[0].releases & 0b111, 0);
        assert!(h.exporters(Arch::X86_64, "_no_such_symbol").is_empty());
        assert_eq!(h.describe(0b1_0000_0111), "10.13–10.15, 15.4");
        assert_eq!(
            h.from_release(MinOs {
                major: 10,
                minor: 15
            }),
            0b1_1111_1100
        );
    }

    #[test]
    fn hand_edits_are_detected() {
        let edited = BUILTIN_HISTORY.replacen("_IOLog iokit", "_IOLog bsd", 1);
        assert!(matches!(
            KpiHistory::parse(&edited),
            Err(KpiError::BodyHash { .. })
        ));
    }
}
