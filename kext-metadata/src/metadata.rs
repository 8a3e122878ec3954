//! `[package.metadata.kext]`: the validated configuration of one kext.
//!
//! ```toml
//! [package.metadata.kext]
//! bundle-identifier = "net.prx.kext.SocketFilter"   # CFBundleIdentifier, kmod_info name
//! display-name = "prx socket filter"                 # CFBundleName
//! executable = "PrxSocketFilter"                     # CFBundleExecutable; bundle is <executable>.kext
//! copyright = "Copyright © 2026 The prx developers"  # NSHumanReadableCopyright
//! minimum-macos = { x86_64 = "10.13", arm64e = "11.0" }  # optional; these are the defaults
//! ```
//!
//! Unknown keys and missing required keys are errors naming the key and the file.

use std::path::{Path, PathBuf};

use crate::arch::{Arch, MinOs};
use serde::Deserialize;

/// What went wrong reading a kext crate's metadata.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    /// The manifest could not be read.
    #[error("{path}: cannot read: {source}")]
    Io {
        /// The Cargo.toml.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The manifest or the table is malformed (including unknown or missing keys).
    #[error("{path}: [package.metadata.kext]: {message}")]
    Invalid {
        /// The Cargo.toml.
        path: PathBuf,
        /// What is wrong, naming the key.
        message: String,
    },
}

/// The validated `[package.metadata.kext]` table plus the crate's version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KextMetadata {
    /// The Cargo.toml it came from.
    pub manifest: PathBuf,
    /// The crate name (`kext-socket`).
    pub crate_name: String,
    /// The crate version, used as CFBundleVersion and CFBundleShortVersionString.
    pub version: String,
    /// CFBundleIdentifier (and kmod_info name).
    pub bundle_identifier: String,
    /// CFBundleName.
    pub display_name: String,
    /// CFBundleExecutable; the bundle is `<executable>.kext`.
    pub executable: String,
    /// NSHumanReadableCopyright.
    pub copyright: String,
    /// Minimum macOS of the x86_64 slice.
    pub min_macos_x86_64: MinOs,
    /// Minimum macOS of the arm64e slice.
    pub min_macos_arm64e: MinOs,
}

#[derive(Deserialize)]
struct Manifest {
    package: Package,
}

#[derive(Deserialize)]
struct Package {
    name: String,
    version: String,
    metadata: Option<PackageMetadata>,
}

#[derive(Deserialize)]
struct PackageMetadata {
    kext: Option<RawKext>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawKext {
    bundle_identifier: String,
    display_name: String,
    executable: String,
    copyright: String,
    minimum_macos: Option<RawMinimum>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMinimum {
    x86_64: Option<String>,
    arm64e: Option<String>,
}

impl KextMetadata {
    /// Reads and validates the metadata of the crate whose manifest is `path`.
    pub fn load(path: &Path) -> Result<KextMetadata, MetadataError> {
        let text = std::fs::read_to_string(path).map_err(|source| MetadataError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Validates manifest text; `path` is only used in messages.
    pub fn parse(path: &Path, text: &str) -> Result<KextMetadata, MetadataError> {
        let invalid = |message: String| MetadataError::Invalid {
            path: path.to_owned(),
            message,
        };
        let manifest: Manifest =
            toml::from_str(text).map_err(|e| invalid(e.message().to_owned()))?;
        let raw = manifest
            .package
            .metadata
            .and_then(|m| m.kext)
            .ok_or_else(|| invalid("the table is missing; a kext crate must declare it".into()))?;

        check_bundle_identifier(&raw.bundle_identifier).map_err(|m| {
            invalid(format!(
                "bundle-identifier = {:?}: {m}",
                raw.bundle_identifier
            ))
        })?;
        check_field_64("version", &manifest.package.version).map_err(invalid)?;
        if raw.executable.is_empty()
            || !raw
                .executable
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(invalid(format!(
                "executable = {:?}: must be a non-empty file name of letters, digits, '_' or '-'",
                raw.executable
            )));
        }
        for (key, value) in [
            ("display-name", &raw.display_name),
            ("copyright", &raw.copyright),
        ] {
            if value.trim().is_empty() {
                return Err(invalid(format!("{key} must not be empty")));
            }
        }
        let min = |key: &str, v: Option<String>, default: MinOs| {
            match v {
            None => Ok(default),
            Some(s) => s.parse::<MinOs>().map_err(|_| {
                invalid(format!("minimum-macos.{key} = {s:?}: expected a macOS version such as \"10.13\" or \"11.0\""))
            }),
        }
        };
        let (x86, arm) = match raw.minimum_macos {
            None => (None, None),
            Some(m) => (m.x86_64, m.arm64e),
        };
        let min_macos_x86_64 = min("x86_64", x86, MinOs::X86_64_DEFAULT)?;
        let min_macos_arm64e = min("arm64e", arm, MinOs::ARM64E_DEFAULT)?;
        if min_macos_arm64e.major < 11 {
            return Err(invalid(format!(
                "minimum-macos.arm64e = \"{min_macos_arm64e}\": arm64e kexts need macOS 11.0 or later"
            )));
        }
        Ok(KextMetadata {
            manifest: path.to_owned(),
            crate_name: manifest.package.name,
            version: manifest.package.version,
            bundle_identifier: raw.bundle_identifier,
            display_name: raw.display_name,
            executable: raw.executable,
            copyright: raw.copyright,
            min_macos_x86_64,
            min_macos_arm64e,
        })
    }

    /// The minimum macOS of the slice for `arch`.
    pub fn min_macos(&self, arch: Arch) -> MinOs {
        match arch {
            Arch::X86_64 => self.min_macos_x86_64,
            Arch::Arm64e => self.min_macos_arm64e,
        }
    }

    /// For a kext crate's build script: validates the crate's own metadata and
    /// passes the bundle identifier to the compiler as `PRX_BUNDLE_ID` (read by
    /// `common::kext!`). Returns the error text on failure.
    pub fn emit_build_env() -> Result<(), String> {
        let dir = std::env::var_os("CARGO_MANIFEST_DIR").ok_or("CARGO_MANIFEST_DIR is not set")?;
        let manifest = Path::new(&dir).join("Cargo.toml");
        println!("cargo::rerun-if-changed={}", manifest.display());
        let meta = KextMetadata::load(&manifest).map_err(|e| e.to_string())?;
        println!("cargo::rustc-env=PRX_BUNDLE_ID={}", meta.bundle_identifier);
        Ok(())
    }
}

fn check_field_64(key: &str, value: &str) -> Result<(), String> {
    if value.len() >= 64 {
        return Err(format!(
            "{key} = {value:?} is {} bytes; kmod_info holds at most 63",
            value.len()
        ));
    }
    Ok(())
}

fn check_bundle_identifier(id: &str) -> Result<(), String> {
    check_field_64("bundle-identifier", id)?;
    let ok = !id.is_empty()
        && id.split('.').count() >= 2
        && id.split('.').all(|part| {
            !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if !ok {
        return Err(
            "must be a reverse-DNS identifier (letters, digits, '-', separated by '.')".into(),
        );
    }
    if id.starts_with("com.apple.") {
        return Err("the com.apple. namespace is reserved for Apple".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[package]
name = "kext-x"
version = "1.2.3"
[package.metadata.kext]
bundle-identifier = "net.prx.kext.X"
display-name = "X"
executable = "PrxX"
copyright = "(c) prx"
"#;

    fn parse(text: &str) -> Result<KextMetadata, MetadataError> {
        KextMetadata::parse(Path::new("kext-x/Cargo.toml"), text)
    }

    #[test]
    fn parses_with_defaults() {
        let m = parse(GOOD).unwrap();
        assert_eq!(m.bundle_identifier, "net.prx.kext.X");
        assert_eq!(m.version, "1.2.3");
        assert_eq!(m.min_macos_x86_64, MinOs::X86_64_DEFAULT);
        assert_eq!(m.min_macos_arm64e, MinOs::ARM64E_DEFAULT);
        for arch in Arch::ALL {
            assert_eq!(m.min_macos(arch), MinOs::default_for(arch));
        }
    }

    #[test]
    fn missing_key_is_named() {
        let text = GOOD.replace("copyright = \"(c) prx\"\n", "");
        let e = parse(&text).unwrap_err().to_string();
        assert!(
            e.contains("kext-x/Cargo.toml") && e.contains("copyright"),
            "{e}"
        );
    }

    #[test]
    fn unknown_key_is_named() {
        let text = format!("{GOOD}bundle-id = \"oops\"\n");
        let e = parse(&text).unwrap_err().to_string();
        assert!(
            e.contains("bundle-id") && e.contains("kext-x/Cargo.toml"),
            "{e}"
        );
    }

    #[test]
    fn missing_table_is_an_error() {
        let e = parse("[package]\nname = \"a\"\nversion = \"1.0.0\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("[package.metadata.kext]") && e.contains("missing"),
            "{e}"
        );
    }

    #[test]
    fn bad_values_are_rejected() {
        for (from, to, key) in [
            ("net.prx.kext.X", "nodots", "bundle-identifier"),
            ("net.prx.kext.X", "com.apple.foo", "bundle-identifier"),
            ("\"PrxX\"", "\"a/b\"", "executable"),
        ] {
            let e = parse(&GOOD.replace(from, to)).unwrap_err().to_string();
            assert!(e.contains(key), "{e}");
        }
        let e = parse(&format!("{GOOD}minimum-macos = {{ x86_64 = \"9.1\" }}\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("minimum-macos.x86_64"), "{e}");
    }
}
