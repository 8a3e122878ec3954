//! The arm64e backend: lays out `__TEXT`/`__TEXT_EXEC`/`__DATA`/`__DATA_CONST`/
//! `__LINKEDIT` on 16 KiB boundaries, resolves relocations, signs the function
//! pointers the kernel calls, and writes the kext exactly as docs/kext-format.md
//! ("arm64e ABI", "Segments in the file") describes.
//!
//! Memory layout (zero-fill takes no file space: each segment's file bytes
//! follow the previous segment's file bytes, so a segment after `__DATA`'s
//! zerofill has fileoff < vmaddr; see docs/kext-format.md, "Segments in the file"):
//!
//! ```text
//! __TEXT        r--  mach_header_64, load commands, ≥ 32 bytes free, __cstring, __const, ...
//! __TEXT_EXEC   r-x  __text (and other code), then __stubs (macOS 11) or __auth_stubs (12+)
//! __DATA        rw-  __mod_init_func, __mod_term_func, __data, ..., zerofill (__common, __bss)
//! __DATA_CONST  rw-  __auth_got, __got, __const (input __DATA,__const)
//! __LINKEDIT    r--  chained fixups, split-seg info, symbol table, indirect symbols, strings
//! ```
//!
//! Load commands: the five segments, LC_DYLD_CHAINED_FIXUPS, LC_SYMTAB,
//! LC_DYSYMTAB, LC_UUID, LC_SOURCE_VERSION, LC_SEGMENT_SPLIT_INFO. No classic
//! relocations: every pointer that slides or binds is a chained fixup
//! (format 7, see [`fixups`]), and every place that depends on the distance
//! between sections has a split-seg record (see [`split_seg`]).
//!
//! What each input relocation becomes:
//!
//! | input | target | output |
//! |---|---|---|
//! | `BRANCH26` | defined | resolved `bl`/`b` (±128 MiB checked) |
//! | `BRANCH26` | undefined | `bl` to a stub over a GOT slot bound to the symbol (split-seg BR26) |
//! | `PAGE21`, `PAGEOFF12` | defined | resolved `adrp` / `add` or load/store (offset scaled by the access size) |
//! | `GOT_LOAD_PAGE21`/`PAGEOFF12` | defined | relaxed: `adrp` of the target, `ldr` → `add` |
//! | `GOT_LOAD_PAGE21`/`PAGEOFF12` | undefined | `__got` slot with a bind |
//! | `POINTER_TO_GOT` | any | pointer (rebase) or 32-bit pc-relative delta to a `__got` slot |
//! | `UNSIGNED` 64-bit | defined / section | rebase (vm offset of target + addend) |
//! | `UNSIGNED` 64-bit | undefined | bind (addend in the pointer) |
//! | `AUTHENTICATED_POINTER` | defined / undefined | auth rebase / auth bind with the slot's key, diversity, address diversity |
//! | `SUBTRACTOR`+`UNSIGNED` | both defined | constant difference (split-seg DELTA when across sections) |
//! | `ADDEND` | | addend of the next `BRANCH26`/`PAGE21`/`PAGEOFF12` |
//! | `UNSIGNED` 32-bit, `TLVP_*`, code relocations to undefined data, anything else | | rejected |
//!
//! Calls to the kernel go through stubs: plain `__stubs` over `__got` below
//! macOS 12, `__auth_stubs` over `__auth_got` (auth binds, key IA, address
//! diversity, discriminator 0) from 12 on. The indirect symbol table lists the
//! stubs, then `__auth_got`, then `__got`.
//!
//! Pointer authentication: see [`auth`]: kmod_info's start/stop and the slots a
//! kext marks in `__DATA,__prx_auth` become authenticated rebases.
//!
//! The LC_UUID is derived from the content as on x86_64 ([`image::stamp_uuid`]).
//!
//! One phase per module, all over one [`Linker`]: [`layout`] (output sections,
//! the stubs and GOT slots the relocations need, addresses), [`relocate`]
//! (patches, chained fixups, split-seg entries, stub code and GOT contents),
//! [`auth`] (pointer signing), [`write`] (`__LINKEDIT` and the load commands,
//! through the writer shared with x86_64, [`super::writer`]).

mod auth;
mod fixups;
mod insn;
mod layout;
mod relocate;
mod split_seg;
mod write;

use std::collections::{BTreeMap, BTreeSet};

use self::fixups::Fixup;
use self::split_seg::Entry;
use super::image::{self, OutSection, Placement, Target};
use super::input::{InSection, Object, Reloc};
use super::resolve::Loaded;
use super::{LinkError, Linked};
use crate::macho::*;
use crate::{Arch, MinOs};

const PAGE: u64 = 0x4000;
/// Largest input section alignment honoured (a 16 KiB page).
const MAX_ALIGN_LOG2: u32 = 14;
/// First release with `__auth_stubs`.
const AUTH_STUBS_FROM: MinOs = MinOs {
    major: 12,
    minor: 0,
};

/// Output segments, in file order (before `__LINKEDIT`).
const SEGMENTS: [&str; 4] = ["__TEXT", "__TEXT_EXEC", "__DATA", "__DATA_CONST"];
const SEG_TEXT: usize = 0;
const SEG_TEXT_EXEC: usize = 1;
const SEG_DATA: usize = 2;
const SEG_DATA_CONST: usize = 3;

/// Section type and attributes of the stub sections.
const STUB_FLAGS: u32 = S_SYMBOL_STUBS | S_ATTR_PURE_INSTRUCTIONS | S_ATTR_SOME_INSTRUCTIONS;

fn seg_index(segname: &str) -> usize {
    SEGMENTS
        .iter()
        .position(|s| *s == segname)
        .expect("known output segment")
}

/// One fix-up site, for error messages.
pub(super) struct Site<'x, 'a> {
    obj: &'x Object<'a>,
    sect: &'x InSection<'a>,
    r: &'x Reloc,
}

impl Site<'_, '_> {
    fn target_name(&self) -> String {
        let n = self.r.r_symbolnum as usize;
        if self.r.r_type == ARM64_RELOC_ADDEND {
            format!("addend {n:#x}")
        } else if self.r.r_extern {
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

    fn error(&self, problem: impl Into<String>, hint: &'static str) -> LinkError {
        LinkError::Relocation(Box::new(super::error::RelocationError {
            input: self.obj.name.clone(),
            segment: self.sect.segname.clone(),
            section: self.sect.sectname.clone(),
            offset: u64::from(self.r.r_address),
            r_type: arm64_reloc_name(self.r.r_type),
            target: self.target_name(),
            problem: problem.into(),
            hint,
        }))
    }

    fn unsupported(&self) -> LinkError {
        self.error(
            format!(
                "unsupported relocation (type {}, pcrel={}, length={}, extern={})",
                self.r.r_type,
                self.r.r_pcrel,
                1u32 << self.r.r_length,
                self.r.r_extern
            ),
            "compile for the arm64e kernel (clang -mkernel / the kernel target spec); if a \
             supported compiler produced this, report it with the object attached",
        )
    }
}

const HINT_CORRUPT: &str = "the object is corrupt: rebuild it";
const HINT_DROPPED: &str = "kexts drop debug info, unwind tables and bitcode: do not reference them \
     from code or data";
const HINT_UNDEF_CODE: &str = "the kernel binds undefined symbols only through pointers and calls: \
     reach kernel data through the GOT (clang -mkernel does), or define the symbol in the kext";
const HINT_ALIGN: &str = "align pointers in data to at least 4 bytes (the kernel collection builder \
     rejects misaligned fix-ups); do not use packed structs with pointers at odd offsets";
const HINT_ABS32: &str = "the kernel cannot slide 32-bit absolute addresses: store pointers in \
     64-bit fields";

/// A relocation's resolved target.
enum Resolved {
    /// An address in the image.
    Address(u64),
    /// A constant (absolute symbol, absolute section).
    Constant(u64),
    /// Bound by the kernel.
    Undefined(String),
}

struct Linker<'l, 'a> {
    loaded: &'l Loaded<'a>,
    place: Vec<Vec<Option<Placement>>>,
    sections: Vec<OutSection>,
    auth_stubs: bool,
    /// Undefined functions called with `bl`, in first-use order.
    stubs: Vec<String>,
    stub_index: BTreeMap<String, usize>,
    /// Plain `__got` slots.
    got: Vec<Target>,
    got_index: BTreeMap<Target, usize>,
    referenced_undef: BTreeSet<String>,
    /// `__DATA,__prx_auth` inputs (object, section).
    marks: Vec<(usize, usize)>,
    stubs_sect: Option<usize>,
    got_sect: Option<usize>,
    auth_got_sect: Option<usize>,
    /// Segment (vmaddr, vmsize, filesize), in [`SEGMENTS`] order.
    segs: [(u64, u64, u64); 4],
    /// Segment file offsets, in [`SEGMENTS`] order.
    fileoffs: [u64; 4],
    undef_symidx: BTreeMap<String, u32>,
    fixups: BTreeMap<u64, Fixup>,
    split: Vec<Entry>,
}

/// Links resolved objects into an arm64e kext.
pub(super) fn link(
    loaded: &Loaded<'_>,
    min_os: MinOs,
    source_version: u64,
) -> Result<Linked, LinkError> {
    debug_assert_eq!(Arch::Arm64e.page_size(), PAGE);
    let mut l = Linker {
        loaded,
        place: loaded
            .objects
            .iter()
            .map(|o| vec![None; o.sections.len()])
            .collect(),
        sections: Vec::new(),
        auth_stubs: min_os >= AUTH_STUBS_FROM,
        stubs: Vec::new(),
        stub_index: BTreeMap::new(),
        got: Vec::new(),
        got_index: BTreeMap::new(),
        referenced_undef: BTreeSet::new(),
        marks: Vec::new(),
        stubs_sect: None,
        got_sect: None,
        auth_got_sect: None,
        segs: [(0, 0, 0); 4],
        fileoffs: [0; 4],
        undef_symidx: BTreeMap::new(),
        fixups: BTreeMap::new(),
        split: Vec::new(),
    };
    l.collect_sections()?;
    l.scan_relocations()?;
    l.order_sections();
    l.layout(header_size(l.sections.len()))?;
    let table = image::symbol_table(loaded, &l.place, &l.sections, &l.referenced_undef)?;
    l.undef_symidx = table.undef_index.clone();
    l.apply_relocations()?;
    l.write_stubs_and_gots()?;
    auth::sign_kmod_info(&mut l)?;
    auth::apply_marks(&mut l)?;
    let bytes = l.write(&table, source_version)?;
    let exports = &table.symbols[table.nlocal..table.nlocal + table.nextdef];
    let undefs = &table.symbols[table.nlocal + table.nextdef..];
    Ok(Linked {
        bytes,
        undefined: undefs.iter().map(|s| s.name.clone()).collect(),
        defined_exports: exports.iter().map(|s| s.name.clone()).collect(),
    })
}

fn header_size(nsections: usize) -> u64 {
    let cmds = 5 * SEGMENT_COMMAND_64_SIZE
        + nsections * SECTION_64_SIZE
        + LINKEDIT_DATA_COMMAND_SIZE // LC_DYLD_CHAINED_FIXUPS
        + SYMTAB_COMMAND_SIZE
        + DYSYMTAB_COMMAND_SIZE
        + UUID_COMMAND_SIZE
        + SOURCE_VERSION_COMMAND_SIZE
        + LINKEDIT_DATA_COMMAND_SIZE; // LC_SEGMENT_SPLIT_INFO
    (MACH_HEADER_64_SIZE + cmds) as u64
}

impl<'a> Linker<'_, 'a> {
    pub(super) fn objects(&self) -> &[Object<'a>] {
        &self.loaded.objects
    }
}
