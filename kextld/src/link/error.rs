//! The linker's error type: every variant names the input (and archive member),
//! and says what to do about it.

use std::path::PathBuf;

/// Why a link failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// An input file could not be read.
    #[error("cannot read input {path}: {source}")]
    Read {
        /// The input path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },

    /// An input is not something kextld can link (wrong kind, architecture or
    /// filetype, truncated, or garbage).
    #[error("{input}: {problem}; {hint}")]
    BadInput {
        /// `path` or `path(member)`.
        input: String,
        /// What is wrong with it.
        problem: String,
        /// What to do.
        hint: &'static str,
    },

    /// A section the kernel cannot load.
    #[error("{input}: section {segment},{section}: {problem}; {hint}")]
    UnsupportedSection {
        /// `path` or `path(member)`.
        input: String,
        /// Segment name.
        segment: String,
        /// Section name.
        section: String,
        /// What is wrong with it.
        problem: String,
        /// What to do.
        hint: &'static str,
    },

    /// A symbol the kernel cannot load (common, indirect, ...).
    #[error("{input}: symbol {symbol}: {problem}; {hint}")]
    UnsupportedSymbol {
        /// `path` or `path(member)`.
        input: String,
        /// The symbol's Mach-O name.
        symbol: String,
        /// What is wrong with it.
        problem: String,
        /// What to do.
        hint: &'static str,
    },

    /// Two inputs define the same (non-weak) symbol.
    #[error(
        "duplicate symbol {symbol}: defined in {first} and in {second}; \
         remove one definition or make one of them static/private"
    )]
    DuplicateSymbol {
        /// The symbol's Mach-O name.
        symbol: String,
        /// The input that defined it first.
        first: String,
        /// The input that defined it again.
        second: String,
    },

    /// A relocation kextld cannot (or must not) express in a kext.
    #[error("{0}")]
    Relocation(Box<RelocationError>),

    /// A function pointer the kernel calls cannot be signed as required (arm64e).
    #[error("{input}: pointer authentication: {problem}; {hint}")]
    PointerAuth {
        /// `path` or `path(member)` of the object defining the slot or mark.
        input: String,
        /// What is wrong.
        problem: String,
        /// What to do.
        hint: &'static str,
    },

    /// The kext does not define `_kmod_info`.
    #[error(
        "no _kmod_info: did the kext invoke common::kext!? (the kext must export a \
         kmod_info_t named kmod_info; a C kext uses KMOD_EXPLICIT_DECL or defines it itself)"
    )]
    NoKmodInfo,

    /// No inputs at all.
    #[error("no input files: pass the kext's staticlib (.a) and/or objects (.o)")]
    NoInputs,

    /// The output does not fit the format's limits.
    #[error("output too large: {what}; split the kext or reduce its size")]
    TooLarge {
        /// What overflowed.
        what: String,
    },
}

/// Details of a rejected relocation (boxed in [`LinkError::Relocation`]).
#[derive(Debug, thiserror::Error)]
#[error(
    "{input}: section {segment},{section} offset {offset:#x}: {r_type} to {target}: {problem}; {hint}"
)]
pub struct RelocationError {
    /// `path` or `path(member)`.
    pub input: String,
    /// Segment name of the section holding the fix-up.
    pub segment: String,
    /// Section name.
    pub section: String,
    /// Offset of the fix-up in the input section.
    pub offset: u64,
    /// Relocation type name (`X86_64_RELOC_...`).
    pub r_type: &'static str,
    /// The target symbol, or `section N (seg,sect)` for section-relative fix-ups.
    pub target: String,
    /// What is wrong.
    pub problem: String,
    /// What to do.
    pub hint: &'static str,
}
