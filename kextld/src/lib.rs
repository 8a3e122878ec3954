//! kextld: links Mach-O objects and static archives into macOS kernel extension
//! binaries (`MH_KEXT_BUNDLE`) and verifies the result against the loaders' rules.
//!
//! Glossary:
//! - **kext bundle binary**: a Mach-O of filetype `MH_KEXT_BUNDLE` (11) loaded by
//!   kxld (macOS ≤ 10.15) or built into a kernel collection (macOS 11+).
//! - **KPI set**: a pseudo-kext such as `com.apple.kpi.bsd` whose exported symbols a
//!   kext may bind to; see [`kpi`].
//! - **local / external relocation**: x86_64 fix-ups the loader applies: local ones
//!   add the slide, external ones bind an undefined symbol.
//!
//! Apple's `ld -kext` does not exist on Linux and `ld64.lld` does not implement
//! `-kext`, so prx carries this linker. It reads with the `object` crate and writes
//! with plain table-driven code. The structure it emits is documented in
//! ARCHITECTURE.md and follows what Apple's ld64 emits for kexts.

pub mod fat;
pub mod kpi;
pub mod link;
pub mod macho;
pub mod ptrauth;
pub mod verify;

// The slice vocabulary kextld's API speaks, shared with the kexts' build
// scripts and the packager.
pub use kext_metadata::{Arch, MinOs};
