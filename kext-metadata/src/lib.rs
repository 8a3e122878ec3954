//! kext-metadata: the facts about a kext that its build script, the linker and
//! the packager must agree on, read from one place.
//!
//! Glossary:
//! - **slice architecture** ([`Arch`]): `x86_64` (Intel Macs) or `arm64e` (Apple
//!   silicon, kernel ABI); a kext ships one slice per architecture.
//! - **minimum macOS** ([`MinOs`]): the oldest release a slice loads on; it picks
//!   the Mach-O build-version command, the KPI symbols allowed and Info.plist's
//!   `OSBundleLibraries` versions.
//! - **`[package.metadata.kext]`** ([`KextMetadata`]): the table in each kext
//!   crate's Cargo.toml that is the single source of the bundle's identity
//!   (`CFBundleIdentifier` = `kmod_info` name, executable, display name,
//!   copyright, minimum macOS per slice).
//! - **crate setting** ([`PowerOfTwoSetting`]): a kext's own build-time constant
//!   in `[package.metadata.<table>]` (e.g. kext-ip's `nat-flows`), checked by its
//!   build script and handed to the compiler as an environment variable.
//!
//! A separate crate because the kexts' build scripts need exactly this: it
//! depends on `serde`, `toml` and `thiserror` only, so a kext build compiles
//! neither `packaging` nor `kextld`. `kextld` (which takes [`Arch`] and [`MinOs`]
//! in its API), `packaging` (Info.plist, bundle) and `xtask` use the same types.

mod arch;
mod metadata;
mod setting;

pub use arch::{Arch, MinOs};
pub use metadata::{KextMetadata, MetadataError};
pub use setting::{PowerOfTwoSetting, SettingError};
