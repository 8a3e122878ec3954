//! The kext linker: Mach-O objects and static archives in, one `MH_KEXT_BUNDLE`
//! binary out, with exactly the structure Apple's `ld -kext` emits (see
//! docs/kext-format.md and ARCHITECTURE.md).
//!
//! Pipeline, one module per step:
//! 1. [`input`]: parse each input (objects, archive members) into a neutral model
//!    and decide which sections a kext keeps (debug info, unwind tables and
//!    bitcode are dropped; thread-local and dyld-only sections are rejected).
//! 2. [`resolve`]: load objects and, to a fixed point, the archive members that
//!    define undefined names; detect duplicate definitions.
//! 3. a per-architecture backend, one module per phase (`layout`, `relocate`,
//!    `write`), lays out segments, resolves relocations and writes the file:
//!    [`x86_64`] (classic relocations) and [`arm64e`] (chained fixups,
//!    split-seg info, stubs, pointer authentication). What both need once
//!    inputs are resolved (targets, placements, the symbol table, the LC_UUID)
//!    is in [`image`]; the bytes of the header, the segment commands (one
//!    segment writer), the symbol-table commands and the file assembly are
//!    in [`writer`].
//!
//! Output is a pure function of the inputs' bytes and order: no timestamps, no
//! hash-map iteration order, and an LC_UUID derived from the content.

mod arm64e;
pub(crate) mod error;
mod image;
mod input;
mod resolve;
mod writer;
mod x86_64;

use std::path::PathBuf;

pub use error::{LinkError, RelocationError};

use crate::{Arch, MinOs};

/// What to link.
#[derive(Debug, Clone)]
pub struct LinkOptions {
    /// Target architecture.
    pub arch: Arch,
    /// Minimum macOS version (decides `LC_SOURCE_VERSION`, ≥ 10.8).
    pub min_os: MinOs,
    /// Objects (`.o`, always loaded) and static archives (`.a`, members on demand).
    pub inputs: Vec<PathBuf>,
    /// `LC_SOURCE_VERSION`, packed `A.B.C.D.E` as 24.10.10.10.10 bits; 0 is fine.
    pub source_version: u64,
}

/// A linked kext binary.
#[derive(Debug, Clone)]
pub struct Linked {
    /// The Mach-O file.
    pub bytes: Vec<u8>,
    /// Undefined symbols (bound by the kernel), sorted, Mach-O names with the leading `_`.
    pub undefined: Vec<String>,
    /// Exported (external, defined) symbols, sorted.
    pub defined_exports: Vec<String>,
}

/// Reads the input files and links them.
pub fn link(opts: &LinkOptions) -> Result<Linked, LinkError> {
    let mut inputs = Vec::with_capacity(opts.inputs.len());
    for path in &opts.inputs {
        let bytes = std::fs::read(path).map_err(|source| LinkError::Read {
            path: path.clone(),
            source,
        })?;
        inputs.push((path.display().to_string(), bytes));
    }
    link_buffers(opts.arch, opts.min_os, opts.source_version, &inputs)
}

/// Links in-memory inputs; `inputs` are `(display name, bytes)` in command-line order.
pub fn link_buffers(
    arch: Arch,
    min_os: MinOs,
    source_version: u64,
    inputs: &[(String, Vec<u8>)],
) -> Result<Linked, LinkError> {
    let cputype = match arch {
        Arch::X86_64 => crate::macho::CPU_TYPE_X86_64,
        Arch::Arm64e => crate::macho::CPU_TYPE_ARM64,
    };
    if inputs.is_empty() {
        return Err(LinkError::NoInputs);
    }
    let parsed = inputs
        .iter()
        .map(|(name, bytes)| input::parse_input(name, bytes, cputype))
        .collect::<Result<Vec<_>, _>>()?;
    let loaded = resolve::resolve(parsed, &["_kmod_info"])?;
    match loaded.globals.get("_kmod_info") {
        Some(resolve::Global::Defined { obj, sym })
            if !loaded.objects[*obj].symbols[*sym].is_pext() => {}
        _ => return Err(LinkError::NoKmodInfo),
    }
    match arch {
        Arch::X86_64 => x86_64::link(&loaded, min_os, source_version),
        Arch::Arm64e => arm64e::link(&loaded, min_os, source_version),
    }
}
