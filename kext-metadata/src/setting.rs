//! A kext crate's own build-time settings: `[package.metadata.<table>] <key>`.
//!
//! ```toml
//! [package.metadata.prx-ip]
//! nat-flows = 16384   # a PowerOfTwoSetting { table: "prx-ip", key: "nat-flows", .. }
//! ```
//!
//! The kext's build script checks the value and hands it to the compiler
//! (`cargo::rustc-env`), so a bad value fails the build with a message naming the
//! manifest, the key and the fix rather than reaching the kernel.

use std::path::{Path, PathBuf};

/// What is wrong with a crate setting. Every message names the manifest; the
/// missing and invalid ones name the key and say what to write.
#[derive(Debug, thiserror::Error)]
pub enum SettingError {
    /// The manifest could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The Cargo.toml.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The manifest is not TOML.
    #[error("{}: {source}", path.display())]
    Toml {
        /// The Cargo.toml.
        path: PathBuf,
        /// The parse error.
        source: toml::de::Error,
    },
    /// The key is absent.
    #[error(
        "{}: [package.metadata.{table}] {key} is missing; add `{key} = {example}` ({unit})",
        path.display()
    )]
    Missing {
        /// The Cargo.toml.
        path: PathBuf,
        /// The table under `package.metadata`.
        table: String,
        /// The key.
        key: String,
        /// A good value.
        example: u64,
        /// What the value counts.
        unit: String,
    },
    /// The value is not a power of two in range.
    #[error(
        "{}: [package.metadata.{table}] {key} = {value}: must be a power of two from {min} to {max} (e.g. {example})",
        path.display()
    )]
    Invalid {
        /// The Cargo.toml.
        path: PathBuf,
        /// The table under `package.metadata`.
        table: String,
        /// The key.
        key: String,
        /// The value found, as written in TOML.
        value: String,
        /// The smallest value allowed.
        min: u64,
        /// The largest value allowed.
        max: u64,
        /// A good value.
        example: u64,
    },
}

/// A required power-of-two integer `[package.metadata.<table>] <key>` in
/// `min..=max` (a table capacity, for instance, indexed by masking).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PowerOfTwoSetting<'a> {
    /// The table under `package.metadata` (`"prx-ip"`).
    pub table: &'a str,
    /// The key (`"nat-flows"`).
    pub key: &'a str,
    /// The smallest value allowed (a power of two).
    pub min: u64,
    /// The largest value allowed (a power of two).
    pub max: u64,
    /// The value messages suggest.
    pub example: u64,
    /// What the value counts, for the "missing" message (`"flows per address family"`).
    pub unit: &'a str,
}

impl PowerOfTwoSetting<'_> {
    /// Reads the setting from the manifest at `path`.
    pub fn load(&self, path: &Path) -> Result<u64, SettingError> {
        let text = std::fs::read_to_string(path).map_err(|source| SettingError::Io {
            path: path.to_owned(),
            source,
        })?;
        self.parse(path, &text)
    }

    /// Reads the setting from manifest text; `path` is only used in messages.
    pub fn parse(&self, path: &Path, text: &str) -> Result<u64, SettingError> {
        let doc: toml::Table = toml::from_str(text).map_err(|source| SettingError::Toml {
            path: path.to_owned(),
            source,
        })?;
        let value = doc
            .get("package")
            .and_then(|p| p.get("metadata"))
            .and_then(|m| m.get(self.table))
            .and_then(|t| t.get(self.key));
        let Some(value) = value else {
            return Err(SettingError::Missing {
                path: path.to_owned(),
                table: self.table.to_owned(),
                key: self.key.to_owned(),
                example: self.example,
                unit: self.unit.to_owned(),
            });
        };
        match value.as_integer().and_then(|n| u64::try_from(n).ok()) {
            Some(n) if (self.min..=self.max).contains(&n) && n.is_power_of_two() => Ok(n),
            _ => Err(SettingError::Invalid {
                path: path.to_owned(),
                table: self.table.to_owned(),
                key: self.key.to_owned(),
                value: value.to_string(),
                min: self.min,
                max: self.max,
                example: self.example,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLOWS: PowerOfTwoSetting<'static> = PowerOfTwoSetting {
        table: "prx-ip",
        key: "nat-flows",
        min: 2,
        max: 1 << 24,
        example: 16384,
        unit: "flows per address family",
    };

    fn parse(text: &str) -> Result<u64, String> {
        FLOWS
            .parse(Path::new("kext-ip/Cargo.toml"), text)
            .map_err(|e| e.to_string())
    }

    fn with(value: &str) -> String {
        format!("[package]\nname = \"kext-ip\"\n[package.metadata.prx-ip]\nnat-flows = {value}\n")
    }

    #[test]
    fn accepts_powers_of_two_in_range() {
        assert_eq!(parse(&with("16384")), Ok(16384));
        assert_eq!(parse(&with("2")), Ok(2));
        assert_eq!(parse(&with("16777216")), Ok(1 << 24));
    }

    #[test]
    fn missing_names_the_file_key_and_fix() {
        assert_eq!(
            parse("[package]\nname = \"kext-ip\"\n").unwrap_err(),
            "kext-ip/Cargo.toml: [package.metadata.prx-ip] nat-flows is missing; \
             add `nat-flows = 16384` (flows per address family)"
        );
    }

    #[test]
    fn bad_values_name_the_file_key_and_range() {
        for bad in ["0", "1", "3", "-4", "33554432", "\"16384\"", "16384.0"] {
            let e = parse(&with(bad)).unwrap_err();
            assert_eq!(
                e,
                format!(
                    "kext-ip/Cargo.toml: [package.metadata.prx-ip] nat-flows = {bad}: \
                     must be a power of two from 2 to 16777216 (e.g. 16384)"
                )
            );
        }
    }

    #[test]
    fn unreadable_and_malformed_manifests_name_the_file() {
        let e = FLOWS
            .load(Path::new("no/such/Cargo.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("no/such/Cargo.toml: "), "{e}");
        let e = parse("[package\n").unwrap_err();
        assert!(e.starts_with("kext-ip/Cargo.toml: "), "{e}");
    }
}
