//! `kextld`: the kext linker's command line.
//!
//! ```text
//! kextld link --arch x86_64 -o OUT [--min-os 10.13] [--source-version V] INPUT.o|INPUT.a...
//! kextld verify [--prx] [--dependency DEP.kext]... BUNDLE.kext|BINARY
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kextld::kpi::{KpiHistory, KpiTables};
use kextld::link::{LinkOptions, link};
use kextld::verify::{Dependency, Options};
use kextld::{Arch, MinOs};

#[derive(Parser)]
#[command(
    name = "kextld",
    version,
    about = "Links and verifies macOS kernel extension binaries"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Link Mach-O objects and static archives into a kext binary (MH_KEXT_BUNDLE).
    Link {
        /// Target architecture (x86_64 or arm64e).
        #[arg(long)]
        arch: Arch,
        /// Output file (written atomically).
        #[arg(short = 'o', long = "output")]
        output: PathBuf,
        /// Minimum macOS version, e.g. 10.13 (default: the architecture's minimum).
        #[arg(long)]
        min_os: Option<MinOs>,
        /// LC_SOURCE_VERSION as A.B.C.D.E (e.g. 1.2.3) or as the packed integer.
        #[arg(long, value_parser = parse_source_version, default_value = "0")]
        source_version: u64,
        /// Objects (.o, always loaded) and static archives (.a, members loaded on demand).
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
    },
    /// Check a kext binary (thin or universal) or .kext bundle against the loaders'
    /// rules: prints one line per finding and a summary per slice; exits 1 on any error.
    /// Undefined symbols are looked up in the KPI lists of every macOS release from
    /// 10.13 on; those left to non-KPI OSBundleLibraries are checked against the
    /// bundles given with --dependency.
    Verify {
        /// Also enforce prx's own build rules as errors (no FPU/SIMD, no panic
        /// path, symbols of the current KPI table only), as `cargo xtask build` does.
        #[arg(long)]
        prx: bool,
        /// A dependency .kext bundle (e.g. Lilu.kext) whose exported symbols resolve
        /// the kext's imports from it; repeatable.
        #[arg(long = "dependency", value_name = "DEP.kext")]
        dependencies: Vec<PathBuf>,
        /// A kext binary or a .kext bundle directory.
        path: PathBuf,
    },
}

/// Parses `A.B.C.D.E` (A ≤ 2^24−1, the others ≤ 1023) or a packed integer.
fn parse_source_version(s: &str) -> Result<u64, String> {
    if !s.contains('.') {
        return s.parse().map_err(|_| format!("bad source version {s:?}"));
    }
    let parts: Vec<&str> = s.split('.').collect();
    if parts.len() > 5 {
        return Err(format!("bad source version {s:?}: at most A.B.C.D.E"));
    }
    let mut v = 0u64;
    for (i, p) in parts.iter().enumerate() {
        let n: u64 = p.parse().map_err(|_| format!("bad source version {s:?}"))?;
        let (max, shift) = if i == 0 {
            ((1 << 24) - 1, 40)
        } else {
            (1023, 40 - 10 * i as u32)
        };
        if n > max {
            return Err(format!("bad source version {s:?}: component {n} too large"));
        }
        v |= n << shift;
    }
    Ok(v)
}

/// Writes `bytes` to `path` via a temporary file in the same directory and a rename.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.kextld-{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Link {
            arch,
            output,
            min_os,
            source_version,
            inputs,
        } => {
            let opts = LinkOptions {
                arch,
                min_os: min_os.unwrap_or_else(|| MinOs::default_for(arch)),
                inputs,
                source_version,
            };
            let linked = match link(&opts) {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("kextld: error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            if let Err(e) = write_atomically(&output, &linked.bytes) {
                eprintln!("kextld: error: cannot write {}: {e}", output.display());
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Command::Verify {
            prx,
            dependencies,
            path,
        } => verify(&path, prx, &dependencies),
    }
}

/// `kextld verify`: prints the report; exit status 1 on any error finding.
fn verify(path: &Path, prx: bool, dependencies: &[PathBuf]) -> ExitCode {
    let mut opts = if prx {
        Options::prx(KpiTables::builtin())
    } else {
        Options::third_party(KpiTables::builtin(), KpiHistory::builtin())
    };
    for dep in dependencies {
        match Dependency::read(dep) {
            Ok(d) => opts.dependencies.push(d),
            Err(e) => {
                eprintln!("kextld: error: --dependency {}: {e}", dep.display());
                return ExitCode::FAILURE;
            }
        }
    }
    match kextld::verify::verify_path_with(path, &opts) {
        Ok(report) => {
            println!("{report}");
            if report.is_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("kextld: error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_versions() {
        assert_eq!(parse_source_version("0").unwrap(), 0);
        assert_eq!(
            parse_source_version("1.2.3").unwrap(),
            1 << 40 | 2 << 30 | 3 << 20
        );
        assert!(parse_source_version("1.2.3.4.5.6").is_err());
        assert!(parse_source_version("1.1024").is_err());
    }
}
