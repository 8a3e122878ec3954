//! The x86_64 backend: lays out `__TEXT`/`__DATA`/`__LINKEDIT`, resolves
//! relocations and writes the kext as docs/kext-format.md describes.
//!
//! File layout (4 KiB pages; `__TEXT` and `__DATA` have fileoff == vmaddr,
//! `__LINKEDIT` follows the last file-backed byte):
//!
//! ```text
//! 0            mach_header_64, load commands, ≥ 32 bytes free for LC_CODE_SIGNATURE
//!              __TEXT sections (__text, __const, __cstring, ...) packed against the
//!              end of the page-rounded segment
//! __DATA       __got, __mod_init_func, __mod_term_func, __const, __data, ...,
//!              then zerofill (__common, __bss: memory only)
//! __LINKEDIT   local relocs, symbol table, external relocs, string table (8-aligned)
//! ```
//!
//! Zero-fill takes no file space, as with ld64: when zerofill extends `__DATA`
//! past its last file page, `__DATA.filesize < vmsize` and `__LINKEDIT` starts
//! in the file right after `__DATA`'s file pages (at a file offset below its
//! vmaddr). The loaders copy each segment's `filesize` bytes from `fileoff` to
//! its vmaddr and zero the rest (docs/kext-format.md, "Segments in the file").
//!
//! The LC_UUID is the first 16 bytes of the SHA-256 of the file with the UUID
//! field zeroed, with the RFC 4122 version set to 4 and the variant to 10xx:
//! ld64 does the same with MD5 and version 3; the hash makes links reproducible.
//!
//! One phase per module, all over one [`Linker`]: [`layout`] (output sections,
//! GOT slots, addresses, the symbol table), [`relocate`] (patches and the
//! output's local and external relocations), [`write`] (`__LINKEDIT` and the
//! load commands, through the writer shared with arm64e, [`super::writer`]).

mod layout;
mod reloc;
mod relocate;
mod write;

use std::collections::{BTreeMap, BTreeSet};

use super::image::{OutSection, OutSymbol, Placement, Target};
use super::input::{InSection, Object, Reloc as RelocationInfo};
use super::resolve::Loaded;
use super::{LinkError, Linked};
use crate::macho::*;
use crate::{Arch, MinOs};

const PAGE: u64 = 0x1000;
/// Largest input section alignment honoured (a page: segments slide by pages).
const MAX_ALIGN_LOG2: u32 = 12;

/// Everything the writer needs after layout and relocation.
struct Image {
    sections: Vec<OutSection>,
    text_size: u64,
    data_vmaddr: u64,
    data_filesize: u64,
    data_vmsize: u64,
    symbols: Vec<OutSymbol>,
    nlocal: usize,
    nextdef: usize,
    nundef: usize,
    /// (address, section ordinal), sorted.
    local_relocs: Vec<(u32, u32)>,
    /// (type, symbol index, address), in output order.
    extern_relocs: Vec<(u8, u32, u32)>,
}

/// One fix-up site, for error messages.
struct Site<'x, 'a> {
    obj: &'x Object<'a>,
    sect: &'x InSection<'a>,
    r: &'x RelocationInfo,
}

impl Site<'_, '_> {
    fn target_name(&self) -> String {
        let n = self.r.r_symbolnum as usize;
        if self.r.r_extern {
            match self.obj.symbols.get(n) {
                Some(s) => s.name.clone(),
                None => format!("symbol #{n} (out of range)"),
            }
        } else if n == 0 {
            "absolute address".to_string()
        } else {
            match self.obj.sections.get(n - 1) {
                Some(s) => format!("section {n} ({},{})", s.segname, s.sectname),
                None => format!("section {n} (out of range)"),
            }
        }
    }

    fn error(&self, r_type: u8, problem: impl Into<String>, hint: &'static str) -> LinkError {
        LinkError::Relocation(Box::new(super::error::RelocationError {
            input: self.obj.name.clone(),
            segment: self.sect.segname.clone(),
            section: self.sect.sectname.clone(),
            offset: u64::from(self.r.r_address),
            r_type: x86_64_reloc_name(r_type),
            target: self.target_name(),
            problem: problem.into(),
            hint,
        }))
    }

    fn unsupported(&self) -> LinkError {
        self.error(
            self.r.r_type,
            format!(
                "unsupported relocation form (pcrel={}, length={}, extern={})",
                self.r.r_pcrel,
                1u32 << self.r.r_length,
                self.r.r_extern
            ),
            "compile for the kernel (small code model, -mkernel / the kernel target spec); \
             if a supported compiler produced this, report it with the object attached",
        )
    }
}

const HINT_ABS32: &str = "the kext loaders cannot slide 32-bit absolute addresses: compile with \
     the small code model and PIC or -mkernel (rustc: the kernel target spec), and do not store \
     addresses in 32-bit fields";
const HINT_OVERFLOW: &str = "a 32-bit displacement cannot reach the target: check for a bogus \
     addend or an oversized section";
const HINT_UNDEF_RIP: &str = "the kernel binds undefined symbols only through 64-bit pointers and \
     calls: reach kernel data through the GOT (compile as PIC / -mkernel, not -static), or define \
     the symbol in the kext";

struct Linker<'l, 'a> {
    loaded: &'l Loaded<'a>,
    /// Per object, per section: where it landed (None = dropped).
    place: Vec<Vec<Option<Placement>>>,
    sections: Vec<OutSection>,
    got: Option<usize>,
    got_slots: Vec<Target>,
    got_index: BTreeMap<Target, usize>,
    referenced_undef: BTreeSet<String>,
    undef_symidx: BTreeMap<String, u32>,
}

/// Links resolved objects into an x86_64 kext.
pub(super) fn link(
    loaded: &Loaded<'_>,
    min_os: MinOs,
    source_version: u64,
) -> Result<Linked, LinkError> {
    debug_assert_eq!(Arch::X86_64.page_size(), PAGE);
    let mut l = Linker {
        loaded,
        place: loaded
            .objects
            .iter()
            .map(|o| vec![None; o.sections.len()])
            .collect(),
        sections: Vec::new(),
        got: None,
        got_slots: Vec::new(),
        got_index: BTreeMap::new(),
        referenced_undef: BTreeSet::new(),
        undef_symidx: BTreeMap::new(),
    };
    l.collect_sections()?;
    l.scan_relocations()?;
    l.order_sections();
    let emit_source_version = min_os
        >= MinOs {
            major: 10,
            minor: 8,
        };
    let header_size = header_size(&l.sections, emit_source_version);
    let (text_size, data_vmaddr, data_filesize, data_vmsize) = l.layout(header_size)?;
    let (symbols, nlocal, nextdef, nundef) = l.symbol_table()?;
    let (local_relocs, extern_relocs) = l.apply_relocations()?;
    let image = Image {
        sections: l.sections,
        text_size,
        data_vmaddr,
        data_filesize,
        data_vmsize,
        symbols,
        nlocal,
        nextdef,
        nundef,
        local_relocs,
        extern_relocs,
    };
    let bytes = write::write(&image, emit_source_version, source_version)?;
    let exports = &image.symbols[nlocal..nlocal + nextdef];
    let undefs = &image.symbols[nlocal + nextdef..];
    Ok(Linked {
        bytes,
        undefined: undefs.iter().map(|s| s.name.clone()).collect(),
        defined_exports: exports.iter().map(|s| s.name.clone()).collect(),
    })
}

fn header_size(sections: &[OutSection], source_version: bool) -> u64 {
    let cmds = 3 * SEGMENT_COMMAND_64_SIZE
        + sections.len() * SECTION_64_SIZE
        + SYMTAB_COMMAND_SIZE
        + DYSYMTAB_COMMAND_SIZE
        + UUID_COMMAND_SIZE
        + if source_version {
            SOURCE_VERSION_COMMAND_SIZE
        } else {
            0
        };
    (MACH_HEADER_64_SIZE + cmds) as u64
}

const HINT_DROPPED: &str = "kexts drop debug info, unwind tables and bitcode: do not reference them \
     from code or data";

impl<'a> Linker<'_, 'a> {
    pub(super) fn objects(&self) -> &[Object<'a>] {
        &self.loaded.objects
    }
}
