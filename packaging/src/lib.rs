//! Turning a linked kext binary into a kext bundle.
//!
//! Glossary:
//! - **bundle**: the `Foo.kext/` directory macOS loads: `Contents/Info.plist` and
//!   `Contents/MacOS/<CFBundleExecutable>`.
//! - **`[package.metadata.kext]`**: the table in each kext crate's Cargo.toml that
//!   is the single source of the bundle's identity; read and validated by the
//!   `kext-metadata` crate ([`kext_metadata::KextMetadata`]).
//! - **OSBundleLibraries**: the KPI sets (and versions) the kext links against,
//!   computed by kextld from its undefined symbols.

pub mod bundle;
pub mod info_plist;

// `cargo xtask package` (feature `package`): see ARCHITECTURE.md.
#[cfg(feature = "package")]
pub mod bom;
#[cfg(feature = "package")]
pub mod cpio;
#[cfg(feature = "package")]
pub mod notary;
#[cfg(feature = "package")]
pub mod pkg;
#[cfg(feature = "package")]
pub mod sign;
#[cfg(feature = "package")]
pub mod xar;
#[cfg(feature = "package")]
pub mod zip_kexts;

pub use bundle::{BundleError, BundleWritten, write_bundle};
pub use info_plist::InfoPlistError;
