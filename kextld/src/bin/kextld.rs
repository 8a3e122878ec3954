//! `kextld`: link and verify macOS kext binaries.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kextld::kpi::KpiTables;

#[derive(Parser)]
#[command(
    name = "kextld",
    version,
    about = "Links and verifies macOS kext binaries"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a kext binary or .kext bundle against the loaders' rules; exits 1 on any error.
    Verify {
        /// A kext binary (thin or universal) or a .kext bundle directory.
        path: PathBuf,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Verify { path } => verify(&path),
    }
}

/// `kextld verify`: prints the report; exit status 1 on any error finding.
fn verify(path: &std::path::Path) -> ExitCode {
    match kextld::verify::verify_path(path, KpiTables::builtin()) {
        Ok(report) => {
            println!("{report}");
            if report.is_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("kextld verify: {e}");
            ExitCode::FAILURE
        }
    }
}
