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

mod auth;
mod fixups;
mod insn;
mod split_seg;

use std::collections::{BTreeMap, BTreeSet};

use self::fixups::Fixup;
use self::split_seg::Entry;
use super::image::{self, OutSection, Placement, Target, align_up};
use super::input::{Disposition, InSection, Object, Reloc};
use super::resolve::{Global, Loaded};
use super::{LinkError, Linked};
use crate::arch::{Arch, MinOs};
use crate::macho::*;
use crate::ptrauth::Signing;

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

/// Output segment of a kept input section.
fn output_segment(s: &InSection<'_>) -> usize {
    if s.segname == "__TEXT" {
        if s.flags & (S_ATTR_PURE_INSTRUCTIONS | S_ATTR_SOME_INSTRUCTIONS) != 0 {
            SEG_TEXT_EXEC
        } else {
            SEG_TEXT
        }
    } else if s.sectname == "__const" && !s.is_zerofill() {
        SEG_DATA_CONST
    } else {
        SEG_DATA
    }
}

/// Sort key of a section inside its segment (see the module docs).
fn rank(s: &OutSection) -> u32 {
    let n = s.sectname.as_str();
    match seg_index(&s.segname) {
        SEG_TEXT => match n {
            "__cstring" => 0,
            "__const" => 1,
            "__literal4" | "__literal8" | "__literal16" => 2,
            _ => 3,
        },
        SEG_TEXT_EXEC => match n {
            "__text" => 0,
            "__stubs" | "__auth_stubs" if s.inputs.is_empty() => 2,
            _ => 1,
        },
        SEG_DATA if s.zerofill => match n {
            "__common" => 10,
            "__bss" => 11,
            _ => 12,
        },
        SEG_DATA => match n {
            "__mod_init_func" => 0,
            "__mod_term_func" => 1,
            "__data" => 2,
            _ => 3,
        },
        _ => match n {
            "__auth_got" if s.inputs.is_empty() => 0,
            "__got" if s.inputs.is_empty() => 1,
            "__const" => 2,
            _ => 3,
        },
    }
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
    fn objects(&self) -> &[Object<'a>] {
        &self.loaded.objects
    }

    /// Groups kept input sections by output (segment, section), in order of appearance.
    fn collect_sections(&mut self) -> Result<(), LinkError> {
        let mut by_name: BTreeMap<(usize, String), usize> = BTreeMap::new();
        for (o, obj) in self.loaded.objects.iter().enumerate() {
            for (i, s) in obj.sections.iter().enumerate() {
                if s.disposition != Disposition::Keep {
                    continue;
                }
                let err = |problem: String, hint: &'static str| LinkError::UnsupportedSection {
                    input: obj.name.clone(),
                    segment: s.segname.clone(),
                    section: s.sectname.clone(),
                    problem,
                    hint,
                };
                if s.segname == "__DATA" && s.sectname == auth::MARK_SECTION {
                    self.marks.push((o, i));
                    continue;
                }
                if s.align > MAX_ALIGN_LOG2 {
                    return Err(err(
                        format!("alignment 2^{} exceeds the 16 KiB page", s.align),
                        "reduce the alignment to at most 16384 bytes",
                    ));
                }
                if s.is_zerofill() && s.segname == "__TEXT" {
                    return Err(err(
                        "zerofill section in __TEXT".into(),
                        "put zero-initialised data in __DATA",
                    ));
                }
                if s.is_zerofill() && !s.relocs.is_empty() {
                    return Err(err(
                        "zerofill section with relocations".into(),
                        HINT_CORRUPT,
                    ));
                }
                let seg = output_segment(s);
                let key = (seg, s.sectname.clone());
                let next = self.sections.len();
                let idx = *by_name.entry(key).or_insert(next);
                if idx == next {
                    let mut out = OutSection::synthetic(
                        SEGMENTS[seg],
                        &s.sectname,
                        s.flags & !(S_ATTR_LOC_RELOC | S_ATTR_EXT_RELOC),
                        0,
                        0,
                    );
                    out.zerofill = s.is_zerofill();
                    out.first_seen = next;
                    self.sections.push(out);
                }
                let out = &mut self.sections[idx];
                if out.zerofill != s.is_zerofill() {
                    return Err(err(
                        "mixes zerofill and non-zerofill contents under one name".into(),
                        "rename one of the sections",
                    ));
                }
                out.align = out.align.max(s.align);
                out.inputs.push((o, i));
            }
        }
        Ok(())
    }

    fn add_got(&mut self, target: Target) {
        if !self.got_index.contains_key(&target) {
            self.got_index.insert(target.clone(), self.got.len());
            self.got.push(target);
        }
    }

    /// First pass: stubs, GOT slots and referenced undefined symbols.
    fn scan_relocations(&mut self) -> Result<(), LinkError> {
        let loaded = self.loaded;
        for (o, obj) in loaded.objects.iter().enumerate() {
            for s in obj
                .sections
                .iter()
                .filter(|s| s.disposition == Disposition::Keep)
            {
                if s.segname == "__DATA" && s.sectname == auth::MARK_SECTION {
                    continue;
                }
                for r in &s.relocs {
                    if !r.r_extern || r.r_type == ARM64_RELOC_ADDEND {
                        continue;
                    }
                    let site = Site { obj, sect: s, r };
                    let Some(target) = image::resolve_extern(loaded, o, r.r_symbolnum) else {
                        return Err(site.error(
                            "the relocation names a symbol that is neither defined nor undefined-external",
                            HINT_CORRUPT,
                        ));
                    };
                    if let Target::Undefined(name) = &target {
                        self.referenced_undef.insert(name.clone());
                    }
                    match (r.r_type, &target) {
                        (ARM64_RELOC_BRANCH26, Target::Undefined(name))
                            if !self.stub_index.contains_key(name) =>
                        {
                            self.stub_index.insert(name.clone(), self.stubs.len());
                            self.stubs.push(name.clone());
                            if !self.auth_stubs {
                                self.add_got(target.clone());
                            }
                        }
                        (
                            ARM64_RELOC_GOT_LOAD_PAGE21 | ARM64_RELOC_GOT_LOAD_PAGEOFF12,
                            Target::Defined { .. },
                        ) => {
                            // relaxed to adrp/add: no slot
                        }
                        (
                            ARM64_RELOC_GOT_LOAD_PAGE21
                            | ARM64_RELOC_GOT_LOAD_PAGEOFF12
                            | ARM64_RELOC_POINTER_TO_GOT,
                            _,
                        ) => self.add_got(target.clone()),
                        _ => {}
                    }
                }
            }
        }
        if !self.stubs.is_empty() {
            let (name, size) = if self.auth_stubs {
                ("__auth_stubs", insn::AUTH_STUB_SIZE)
            } else {
                ("__stubs", insn::STUB_SIZE)
            };
            let mut s = OutSection::synthetic(
                "__TEXT_EXEC",
                name,
                STUB_FLAGS,
                2,
                size * self.stubs.len() as u64,
            );
            s.reserved2 = size as u32;
            self.sections.push(s);
            if self.auth_stubs {
                self.sections.push(OutSection::synthetic(
                    "__DATA_CONST",
                    "__auth_got",
                    S_NON_LAZY_SYMBOL_POINTERS,
                    3,
                    8 * self.stubs.len() as u64,
                ));
            }
        }
        if !self.got.is_empty() {
            self.sections.push(OutSection::synthetic(
                "__DATA_CONST",
                "__got",
                S_NON_LAZY_SYMBOL_POINTERS,
                3,
                8 * self.got.len() as u64,
            ));
        }
        Ok(())
    }

    /// Sorts sections into segment order, finds the synthetic ones, places inputs.
    fn order_sections(&mut self) {
        self.sections
            .sort_by_key(|s| (seg_index(&s.segname), rank(s), s.first_seen));
        let find = |secs: &[OutSection], name: &str| {
            secs.iter().position(|s| {
                s.sectname == name && s.inputs.is_empty() && s.first_seen == usize::MAX
            })
        };
        self.stubs_sect = find(&self.sections, "__stubs").or(find(&self.sections, "__auth_stubs"));
        self.auth_got_sect = find(&self.sections, "__auth_got");
        self.got_sect = find(&self.sections, "__got");
        // Indirect symbol table: stubs, then __auth_got, then __got.
        let nstubs = self.stubs.len() as u32;
        let nauth = if self.auth_stubs { nstubs } else { 0 };
        if let Some(i) = self.auth_got_sect {
            self.sections[i].reserved1 = nstubs;
        }
        if let Some(i) = self.got_sect {
            self.sections[i].reserved1 = nstubs + nauth;
        }
        image::place_inputs(&self.loaded.objects, &mut self.place, &mut self.sections);
    }

    /// Assigns addresses segment by segment (16 KiB aligned, sections forward).
    fn layout(&mut self, header_size: u64) -> Result<(), LinkError> {
        let mut cur = header_size + MIN_HEADER_PADDING as u64;
        let mut seg_start = 0u64;
        let mut file_pos = 0u64;
        for seg in 0..SEGMENTS.len() {
            let mut file_end = cur;
            for s in self
                .sections
                .iter_mut()
                .filter(|s| seg_index(&s.segname) == seg)
            {
                cur = align_up(cur, 1 << s.align);
                s.addr = cur;
                cur += s.size;
                if !s.zerofill {
                    file_end = cur;
                }
            }
            let vmsize = align_up(cur - seg_start, PAGE);
            let filesize = align_up(file_end - seg_start, PAGE);
            self.segs[seg] = (seg_start, vmsize, filesize);
            self.fileoffs[seg] = file_pos;
            file_pos += filesize;
            seg_start += vmsize;
            cur = seg_start;
        }
        if seg_start > u64::from(u32::MAX) {
            return Err(LinkError::TooLarge {
                what: format!("segments end at {seg_start:#x}, past 4 GiB"),
            });
        }
        image::fill_contents(&self.loaded.objects, &self.place, &mut self.sections);
        for s in self.sections.iter_mut().filter(|s| s.inputs.is_empty()) {
            s.data = vec![0; s.size as usize];
        }
        Ok(())
    }

    fn symbol_address(&self, obj: usize, sym: usize) -> Option<(u64, u32)> {
        image::symbol_address(self.objects(), &self.place, &self.sections, obj, sym)
    }

    /// Output (section ordinal, offset) of an address in the image.
    pub(super) fn locate(&self, addr: u64) -> Option<(u32, u64)> {
        let inside = self
            .sections
            .iter()
            .position(|s| s.addr <= addr && addr < s.addr + s.size)
            .or_else(|| {
                self.sections
                    .iter()
                    .position(|s| s.addr + s.size == addr && s.size > 0)
            })?;
        Some((inside as u32 + 1, addr - self.sections[inside].addr))
    }

    /// The file offset of a file-backed address (segments are never empty
    /// in memory and sorted, so the last segment starting at or below it holds it).
    fn file_offset(&self, addr: u64) -> u64 {
        let seg = self
            .segs
            .iter()
            .rposition(|&(start, _, _)| start <= addr)
            .unwrap_or(0);
        addr - self.segs[seg].0 + self.fileoffs[seg]
    }

    /// The segment index holding `addr`.
    fn segment_of(&self, addr: u64) -> Option<usize> {
        self.segs
            .iter()
            .position(|&(start, vmsize, _)| start <= addr && addr < start + vmsize)
    }

    /// Records a split-seg entry from `from` to `to` (addresses), when both are
    /// in the image.
    fn split_entry(&mut self, from: u64, to: u64, kind: u8) {
        if let (Some((fs, fo)), Some((ts, to))) = (self.locate(from), self.locate(to)) {
            self.split.push(Entry {
                from_sect: fs,
                from_off: fo,
                to_sect: ts,
                to_off: to,
                kind,
            });
        }
    }

    /// The address a defined target resolves to, or an error naming the site.
    fn defined_address(
        &self,
        site: &Site<'_, '_>,
        obj: usize,
        sym: usize,
    ) -> Result<u64, LinkError> {
        self.symbol_address(obj, sym)
            .map(|(a, _)| a)
            .ok_or_else(|| site.error("target lies in a dropped section", HINT_DROPPED))
    }

    /// Resolves an extern or section-relative relocation's target (without addend).
    /// For section-relative ones the stored object address `stored` is translated.
    fn resolve(&self, o: usize, site: &Site<'_, '_>, stored: u64) -> Result<Resolved, LinkError> {
        let r = site.r;
        if r.r_extern {
            match image::resolve_extern(self.loaded, o, r.r_symbolnum)
                .ok_or_else(|| site.unsupported())?
            {
                Target::Defined { obj, sym } => {
                    Ok(Resolved::Address(self.defined_address(site, obj, sym)?))
                }
                Target::Undefined(name) => Ok(Resolved::Undefined(name)),
                Target::Absolute(v) => Ok(Resolved::Constant(v)),
            }
        } else if r.r_symbolnum == 0 {
            Ok(Resolved::Constant(stored))
        } else {
            let (delta, _) = image::section_delta(
                self.objects(),
                &self.place,
                &self.sections,
                o,
                r.r_symbolnum as usize - 1,
            )
            .ok_or_else(|| site.error("target section is dropped or missing", HINT_DROPPED))?;
            Ok(Resolved::Address(stored.wrapping_add(delta as u64)))
        }
    }

    /// Adds a chained fixup at `at`, checking the loader's rules.
    fn add_fixup(&mut self, site: &Site<'_, '_>, at: u64, fixup: Fixup) -> Result<(), LinkError> {
        if !at.is_multiple_of(4) {
            return Err(site.error(
                format!("pointer at {at:#x} is not 4-byte aligned"),
                HINT_ALIGN,
            ));
        }
        match self.segment_of(at) {
            Some(SEG_DATA | SEG_DATA_CONST) => {}
            _ => {
                return Err(site.error(
                    format!("pointer at {at:#x} needs a fix-up but lies in a read-only segment"),
                    "put data holding pointers in __DATA or __DATA,__const (writable segments); \
                     the kernel applies fix-ups only there",
                ));
            }
        }
        let overlaps = self
            .fixups
            .range(at.saturating_sub(7)..at + 8)
            .next()
            .is_some();
        if overlaps {
            return Err(site.error(
                format!("pointer at {at:#x} overlaps another pointer fix-up"),
                HINT_CORRUPT,
            ));
        }
        self.fixups.insert(at, fixup);
        Ok(())
    }

    /// A rebase to `target` (+ `auth`), range-checked.
    fn rebase(
        &mut self,
        site: &Site<'_, '_>,
        at: u64,
        target: u64,
        auth: Option<Signing>,
    ) -> Result<(), LinkError> {
        let max = if auth.is_some() {
            fixups::MAX_AUTH_REBASE_TARGET
        } else {
            fixups::MAX_REBASE_TARGET
        };
        if target > max {
            return Err(site.error(
                format!("rebase target {target:#x} does not fit the chained pointer"),
                "check for a bogus addend",
            ));
        }
        self.add_fixup(site, at, Fixup::Rebase { target, auth })?;
        let kind = if auth.is_some() {
            split_seg::THREADED_POINTER_64
        } else {
            split_seg::POINTER_64
        };
        self.split_entry(at, target, kind);
        Ok(())
    }

    /// A bind of `name` (+ `addend`, + `auth`), range-checked.
    fn bind(
        &mut self,
        site: &Site<'_, '_>,
        at: u64,
        name: &str,
        addend: i64,
        auth: Option<Signing>,
    ) -> Result<(), LinkError> {
        if (auth.is_some() && addend != 0) || !fixups::BIND_ADDEND.contains(&addend) {
            return Err(site.error(
                format!("addend {addend:#x} to an undefined symbol does not fit the chained bind"),
                "reference kernel symbols without large offsets",
            ));
        }
        let ordinal = self.import_ordinal(name);
        self.add_fixup(
            site,
            at,
            Fixup::Bind {
                ordinal,
                addend,
                auth,
            },
        )
    }

    /// Imports are the referenced undefined symbols, in symbol-table order.
    fn import_ordinal(&self, name: &str) -> u32 {
        self.referenced_undef
            .iter()
            .position(|n| n == name)
            .expect("referenced") as u32
    }

    fn got_slot_address(&self, target: &Target) -> u64 {
        self.sections[self.got_sect.expect("__got")].addr + 8 * self.got_index[target] as u64
    }

    fn stub_address(&self, name: &str) -> u64 {
        let size = if self.auth_stubs {
            insn::AUTH_STUB_SIZE
        } else {
            insn::STUB_SIZE
        };
        self.sections[self.stubs_sect.expect("stubs")].addr + size * self.stub_index[name] as u64
    }

    /// Second pass: patches code and data, records fixups and split-seg entries.
    fn apply_relocations(&mut self) -> Result<(), LinkError> {
        let loaded = self.loaded;
        let mut patches: Vec<(usize, usize, Vec<u8>)> = Vec::new();
        for (o, obj) in loaded.objects.iter().enumerate() {
            for (si, s) in obj.sections.iter().enumerate() {
                let Some(p) = self.place[o][si] else { continue };
                let out_addr = self.sections[p.out].addr + p.offset;
                let mut addend: Option<i64> = None;
                let mut ri = 0;
                while ri < s.relocs.len() {
                    let r = &s.relocs[ri];
                    ri += 1;
                    let site = Site { obj, sect: s, r };
                    let off = r.r_address as usize;
                    let width = 1usize << r.r_length;
                    if off + width > s.data.len() {
                        return Err(site.error("fix-up lies outside its section", HINT_CORRUPT));
                    }
                    let pc = out_addr + u64::from(r.r_address);
                    let patch_at = p.offset as usize + off;
                    let pending = addend.take().unwrap_or(0);
                    let insn32 = get_u32(s.data, off);
                    let code_reloc = matches!(
                        r.r_type,
                        ARM64_RELOC_BRANCH26
                            | ARM64_RELOC_PAGE21
                            | ARM64_RELOC_PAGEOFF12
                            | ARM64_RELOC_GOT_LOAD_PAGE21
                            | ARM64_RELOC_GOT_LOAD_PAGEOFF12
                    );
                    if code_reloc && (r.r_length != 2 || !r.r_extern) {
                        return Err(site.unsupported());
                    }
                    let bad_insn = |problem: String| site.error(problem, HINT_CORRUPT);
                    match r.r_type {
                        ARM64_RELOC_ADDEND => {
                            let next_ok = s.relocs.get(ri).is_some_and(|n| {
                                n.r_address == r.r_address
                                    && matches!(
                                        n.r_type,
                                        ARM64_RELOC_BRANCH26
                                            | ARM64_RELOC_PAGE21
                                            | ARM64_RELOC_PAGEOFF12
                                    )
                            });
                            if !next_ok {
                                return Err(site.error(
                                    "not followed by a BRANCH26, PAGE21 or PAGEOFF12 at the same address",
                                    HINT_CORRUPT,
                                ));
                            }
                            // 24-bit signed addend in r_symbolnum.
                            addend = Some(i64::from(((r.r_symbolnum << 8) as i32) >> 8));
                        }
                        ARM64_RELOC_BRANCH26 => {
                            if !r.r_pcrel {
                                return Err(site.unsupported());
                            }
                            let target = match self.resolve(o, &site, 0)? {
                                Resolved::Address(a) => a.wrapping_add(pending as u64),
                                Resolved::Undefined(name) => {
                                    if pending != 0 {
                                        return Err(site.error(
                                            "call into an undefined function with an addend",
                                            "call kernel functions at their entry point",
                                        ));
                                    }
                                    let stub = self.stub_address(&name);
                                    self.split_entry(pc, stub, split_seg::ARM64_BR26);
                                    stub
                                }
                                Resolved::Constant(_) => {
                                    return Err(site.error(
                                        "branch to an absolute address moves when the kext slides",
                                        "call functions defined in the kext or the kernel",
                                    ));
                                }
                            };
                            let v = insn::patch_branch26(insn32, target as i64 - pc as i64)
                                .map_err(|e| site.error(e, "keep the kext's code under 128 MiB"))?;
                            patches.push((p.out, patch_at, v.to_le_bytes().to_vec()));
                        }
                        ARM64_RELOC_PAGE21
                        | ARM64_RELOC_PAGEOFF12
                        | ARM64_RELOC_GOT_LOAD_PAGE21
                        | ARM64_RELOC_GOT_LOAD_PAGEOFF12 => {
                            let page21 = matches!(
                                r.r_type,
                                ARM64_RELOC_PAGE21 | ARM64_RELOC_GOT_LOAD_PAGE21
                            );
                            if r.r_pcrel != page21 {
                                return Err(site.unsupported());
                            }
                            let got = matches!(
                                r.r_type,
                                ARM64_RELOC_GOT_LOAD_PAGE21 | ARM64_RELOC_GOT_LOAD_PAGEOFF12
                            );
                            let resolved = self.resolve(o, &site, 0)?;
                            // (address the instruction refers to, relax ldr → add)
                            let (target, relax) = match (got, resolved) {
                                (false, Resolved::Address(a)) => {
                                    (a.wrapping_add(pending as u64), false)
                                }
                                (true, Resolved::Address(a)) => (a, true),
                                (false, Resolved::Undefined(_)) => {
                                    return Err(site.error(
                                        "page-relative reference to an undefined symbol",
                                        HINT_UNDEF_CODE,
                                    ));
                                }
                                (false, Resolved::Constant(_)) => {
                                    return Err(site.error(
                                        "page-relative reference to an absolute symbol moves when the kext slides",
                                        "reference the constant by value, not by address",
                                    ));
                                }
                                (true, _) => {
                                    let t = image::resolve_extern(loaded, o, r.r_symbolnum)
                                        .expect("resolved");
                                    (self.got_slot_address(&t), false)
                                }
                            };
                            let v = if page21 {
                                self.split_entry(pc, target, split_seg::ARM64_ADRP);
                                insn::patch_adrp(insn32, pc, target).map_err(bad_insn)?
                            } else {
                                self.split_entry(pc, target, split_seg::ARM64_OFF12);
                                if relax {
                                    insn::relax_ldr_to_add(insn32, target).map_err(bad_insn)?
                                } else if got {
                                    if insn32 & 0xffc0_0000 != 0xf940_0000 {
                                        return Err(bad_insn(format!(
                                            "instruction {insn32:#010x} is not ldr Xt, [Xn, #imm] (64-bit)"
                                        )));
                                    }
                                    insn::patch_pageoff12(insn32, target).map_err(bad_insn)?
                                } else {
                                    insn::patch_pageoff12(insn32, target).map_err(|e| {
                                        site.error(e, "align the data the instruction accesses to its access size")
                                    })?
                                }
                            };
                            patches.push((p.out, patch_at, v.to_le_bytes().to_vec()));
                        }
                        ARM64_RELOC_POINTER_TO_GOT => {
                            if !r.r_extern {
                                return Err(site.unsupported());
                            }
                            let t = image::resolve_extern(loaded, o, r.r_symbolnum)
                                .ok_or_else(|| site.unsupported())?;
                            let slot = self.got_slot_address(&t);
                            match (r.r_pcrel, r.r_length) {
                                (true, 2) => {
                                    let delta = slot as i64 - pc as i64;
                                    let v = i32::try_from(delta).map_err(|_| {
                                        site.error(
                                            format!("delta {delta:#x} does not fit in 32 bits"),
                                            HINT_CORRUPT,
                                        )
                                    })?;
                                    self.split_entry(pc, slot, split_seg::DELTA_32);
                                    patches.push((p.out, patch_at, v.to_le_bytes().to_vec()));
                                }
                                (true, 3) => {
                                    let delta = slot as i64 - pc as i64;
                                    self.split_entry(pc, slot, split_seg::DELTA_64);
                                    patches.push((p.out, patch_at, delta.to_le_bytes().to_vec()));
                                }
                                (false, 3) => {
                                    self.rebase(&site, pc, slot, None)?;
                                }
                                _ => return Err(site.unsupported()),
                            }
                        }
                        ARM64_RELOC_UNSIGNED | ARM64_RELOC_AUTHENTICATED_POINTER => {
                            if r.r_pcrel {
                                return Err(site.unsupported());
                            }
                            if r.r_length != 3 {
                                return Err(site.error(
                                    format!(
                                        "{}-bit absolute address: the kernel cannot slide it",
                                        width * 8
                                    ),
                                    HINT_ABS32,
                                ));
                            }
                            let stored = get_u64(s.data, off);
                            let (addend, auth) = if r.r_type == ARM64_RELOC_AUTHENTICATED_POINTER {
                                let (addend, signing) = auth::decode_auth_slot(stored)
                                    .map_err(|e| site.error(e, HINT_CORRUPT))?;
                                (addend, Some(signing))
                            } else {
                                (stored as i64, None)
                            };
                            match self.resolve(o, &site, stored)? {
                                Resolved::Address(a) if r.r_extern => {
                                    self.rebase(&site, pc, a.wrapping_add(addend as u64), auth)?
                                }
                                // section-relative: `stored` already was the target
                                Resolved::Address(a) => self.rebase(&site, pc, a, auth)?,
                                Resolved::Undefined(name) => {
                                    self.bind(&site, pc, &name, addend, auth)?
                                }
                                Resolved::Constant(v) => {
                                    if auth.is_some() {
                                        return Err(site.error(
                                            "signed pointer to an absolute address",
                                            "sign only pointers into the kext or the kernel",
                                        ));
                                    }
                                    let v = if r.r_extern {
                                        v.wrapping_add(addend as u64)
                                    } else {
                                        v
                                    };
                                    patches.push((p.out, patch_at, v.to_le_bytes().to_vec()));
                                }
                            }
                        }
                        ARM64_RELOC_SUBTRACTOR => {
                            let Some(minuend) = s.relocs.get(ri) else {
                                return Err(site
                                    .error("not followed by ARM64_RELOC_UNSIGNED", HINT_CORRUPT));
                            };
                            ri += 1;
                            if minuend.r_type != ARM64_RELOC_UNSIGNED
                                || minuend.r_address != r.r_address
                                || minuend.r_length != r.r_length
                                || minuend.r_pcrel
                                || r.r_pcrel
                                || !(r.r_length == 2 || r.r_length == 3)
                            {
                                return Err(site.error(
                                    "must be followed by an ARM64_RELOC_UNSIGNED of the same address and length",
                                    HINT_CORRUPT,
                                ));
                            }
                            let msite = Site {
                                obj,
                                sect: s,
                                r: minuend,
                            };
                            let term = |l: &Self, st: &Site<'_, '_>| -> Result<(i64, Option<u64>), LinkError> {
                                match l.resolve(o, st, 0)? {
                                    Resolved::Address(a) if st.r.r_extern => Ok((a as i64, Some(a))),
                                    Resolved::Constant(v) if st.r.r_extern => Ok((v as i64, None)),
                                    Resolved::Undefined(_) => Err(st.error(
                                        "difference involving an undefined symbol cannot be resolved at link time",
                                        "subtract only addresses defined inside the kext",
                                    )),
                                    _ => Err(st.unsupported()),
                                }
                            };
                            let (b, b_addr) = term(self, &site)?;
                            let (a, a_addr) = term(self, &msite)?;
                            if a_addr.is_some() != b_addr.is_some() {
                                return Err(site.error(
                                    "difference between an address and a constant changes when the kext slides",
                                    "subtract two addresses inside the kext, or two constants",
                                ));
                            }
                            let stored: i64 = if r.r_length == 3 {
                                get_u64(s.data, off) as i64
                            } else {
                                i64::from(get_u32(s.data, off) as i32)
                            };
                            let value = stored.wrapping_add(a).wrapping_sub(b);
                            if let (Some(aa), Some(ba)) = (a_addr, b_addr)
                                && self.segment_of(aa) != self.segment_of(ba)
                            {
                                let kind = if r.r_length == 3 {
                                    split_seg::DELTA_64
                                } else {
                                    split_seg::DELTA_32
                                };
                                self.split_entry(pc, aa, kind);
                            }
                            if r.r_length == 2 {
                                let v = i32::try_from(value).map_err(|_| {
                                    site.error(
                                        format!("difference {value:#x} does not fit in 32 bits"),
                                        HINT_CORRUPT,
                                    )
                                })?;
                                patches.push((p.out, patch_at, v.to_le_bytes().to_vec()));
                            } else {
                                patches.push((p.out, patch_at, value.to_le_bytes().to_vec()));
                            }
                        }
                        ARM64_RELOC_TLVP_LOAD_PAGE21 | ARM64_RELOC_TLVP_LOAD_PAGEOFF12 => {
                            return Err(site.error(
                                "thread-local variables are not supported in kernel extensions",
                                "remove thread_local!/__thread variables (the kernel target must not use TLS)",
                            ));
                        }
                        _ => return Err(site.unsupported()),
                    }
                }
                if addend.is_some() {
                    let r = s.relocs.last().expect("addend");
                    return Err(Site { obj, sect: s, r }
                        .error("ARM64_RELOC_ADDEND at the end", HINT_CORRUPT));
                }
            }
        }
        for (out, at, bytes) in patches {
            self.sections[out].data[at..at + bytes.len()].copy_from_slice(&bytes);
        }
        Ok(())
    }

    /// Stub code, `__auth_got` auth binds, `__got` binds and rebases.
    fn write_stubs_and_gots(&mut self) -> Result<(), LinkError> {
        let err = |name: &str, problem: String| LinkError::UnsupportedSymbol {
            input: "(linker-made GOT)".into(),
            symbol: name.to_string(),
            problem,
            hint: HINT_DROPPED,
        };
        for (k, name) in self.stubs.clone().iter().enumerate() {
            let stub = self.stub_address(name);
            let mut code = Vec::new();
            if self.auth_stubs {
                let slot =
                    self.sections[self.auth_got_sect.expect("__auth_got")].addr + 8 * k as u64;
                for w in insn::auth_stub(stub, slot) {
                    push_u32(&mut code, w);
                }
                let ordinal = self.import_ordinal(name);
                self.fixups.insert(
                    slot,
                    Fixup::Bind {
                        ordinal,
                        addend: 0,
                        auth: Some(Signing::AUTH_GOT),
                    },
                );
                self.split_entry(stub, slot, split_seg::ARM64_ADRP);
                self.split_entry(stub + 4, slot, split_seg::ARM64_OFF12);
            } else {
                let slot = self.got_slot_address(&Target::Undefined(name.clone()));
                for w in insn::plain_stub(stub, slot) {
                    push_u32(&mut code, w);
                }
                self.split_entry(stub, slot, split_seg::ARM64_ADRP);
                self.split_entry(stub + 4, slot, split_seg::ARM64_OFF12);
            }
            let s = &mut self.sections[self.stubs_sect.expect("stubs")];
            let at = (stub - s.addr) as usize;
            s.data[at..at + code.len()].copy_from_slice(&code);
        }
        for (k, t) in self.got.clone().iter().enumerate() {
            let at = self.sections[self.got_sect.expect("__got")].addr + 8 * k as u64;
            match t {
                Target::Defined { obj, sym } => {
                    let name = &self.objects()[*obj].symbols[*sym].name;
                    let (a, _) = self.symbol_address(*obj, *sym).ok_or_else(|| {
                        err(name, "GOT entry for a symbol in a dropped section".into())
                    })?;
                    self.fixups.insert(
                        at,
                        Fixup::Rebase {
                            target: a,
                            auth: None,
                        },
                    );
                    self.split_entry(at, a, split_seg::POINTER_64);
                }
                Target::Undefined(name) => {
                    let ordinal = self.import_ordinal(name);
                    self.fixups.insert(
                        at,
                        Fixup::Bind {
                            ordinal,
                            addend: 0,
                            auth: None,
                        },
                    );
                }
                Target::Absolute(v) => {
                    let s = &mut self.sections[self.got_sect.expect("__got")];
                    put_u64(&mut s.data, 8 * k, *v);
                }
            }
        }
        Ok(())
    }

    /// Indirect symbol table: one entry per stub, `__auth_got` slot, `__got` slot.
    fn indirect_symbols(&self) -> Vec<u32> {
        let mut out: Vec<u32> = self.stubs.iter().map(|n| self.undef_symidx[n]).collect();
        if self.auth_stubs {
            out.extend(self.stubs.iter().map(|n| self.undef_symidx[n]));
        }
        out.extend(self.got.iter().map(|t| match t {
            Target::Undefined(n) => self.undef_symidx[n],
            _ => INDIRECT_SYMBOL_LOCAL,
        }));
        out
    }

    /// Chains the fixups, builds `__LINKEDIT` and the load commands, and serialises.
    fn write(
        mut self,
        table: &image::SymbolTable,
        source_version: u64,
    ) -> Result<Vec<u8>, LinkError> {
        // Chained fixups into the segments' bytes.
        let segments: Vec<fixups::Segment> = self
            .segs
            .iter()
            .enumerate()
            .map(|(i, &(vmaddr, vmsize, _))| fixups::Segment {
                vmaddr,
                vmsize,
                has_starts: i == SEG_DATA || i == SEG_DATA_CONST,
            })
            .chain(std::iter::once(fixups::Segment {
                vmaddr: 0,
                vmsize: 0,
                has_starts: false,
            }))
            .collect();
        let imports: Vec<(String, bool)> = self
            .referenced_undef
            .iter()
            .map(|n| {
                (
                    n.clone(),
                    matches!(
                        self.loaded.globals.get(n),
                        Some(Global::Undefined { weak: true })
                    ),
                )
            })
            .collect();
        let chained = fixups::encode(&segments, &self.fixups, &imports);
        for &(at, value) in &chained.slots {
            let (ord, off) = self.locate(at).expect("fixups lie in sections");
            put_u64(
                &mut self.sections[ord as usize - 1].data,
                off as usize,
                value,
            );
        }
        let split = split_seg::encode(&self.split);
        let indirect = self.indirect_symbols();

        // __LINKEDIT.
        let (last_start, last_size, last_filesize) = self.segs[SEG_DATA_CONST];
        let linkedit_vmaddr = last_start + last_size;
        let linkedit_off = self.fileoffs[SEG_DATA_CONST] + last_filesize;
        let mut le = Vec::new();
        let chained_off = linkedit_off;
        le.extend_from_slice(&chained.payload);
        let split_off = linkedit_off + le.len() as u64;
        le.extend_from_slice(&split);
        let symoff = linkedit_off + le.len() as u64;
        let (nlists, strtab) = image::nlists_and_strings(&table.symbols);
        le.extend_from_slice(&nlists);
        let indirect_off = linkedit_off + le.len() as u64;
        for &i in &indirect {
            push_u32(&mut le, i);
        }
        le.resize(le.len().div_ceil(8) * 8, 0);
        let stroff = linkedit_off + le.len() as u64;
        le.extend_from_slice(&strtab);
        let linkedit_size = le.len() as u64;
        let end = linkedit_off + linkedit_size;
        if end > u64::from(u32::MAX) {
            return Err(LinkError::TooLarge {
                what: format!("file size {end:#x}"),
            });
        }

        // Header and load commands.
        let sizeofcmds = header_size(self.sections.len()) as usize - MACH_HEADER_64_SIZE;
        let mut h = Vec::with_capacity(MACH_HEADER_64_SIZE + sizeofcmds);
        push_u32(&mut h, MH_MAGIC_64);
        push_u32(&mut h, CPU_TYPE_ARM64);
        push_u32(&mut h, CPU_SUBTYPE_ARM64E_KERNEL);
        push_u32(&mut h, MH_KEXT_BUNDLE);
        push_u32(&mut h, 11);
        push_u32(&mut h, sizeofcmds as u32);
        push_u32(&mut h, KEXT_HEADER_FLAGS);
        push_u32(&mut h, 0);
        let r = VM_PROT_READ;
        let rx = VM_PROT_READ | VM_PROT_EXECUTE;
        let rw = VM_PROT_READ | VM_PROT_WRITE;
        for (seg, prot) in [
            (SEG_TEXT, r),
            (SEG_TEXT_EXEC, rx),
            (SEG_DATA, rw),
            (SEG_DATA_CONST, rw),
        ] {
            let secs: Vec<&OutSection> = self
                .sections
                .iter()
                .filter(|s| seg_index(&s.segname) == seg)
                .collect();
            let (addr, vmsize, filesize) = self.segs[seg];
            let fileoff = self.fileoffs[seg];
            segment_command(
                &mut h,
                SEGMENTS[seg],
                (addr, vmsize),
                (fileoff, filesize),
                prot,
                &secs,
            );
        }
        segment_command(
            &mut h,
            "__LINKEDIT",
            (linkedit_vmaddr, align_up(linkedit_size, PAGE)),
            (linkedit_off, linkedit_size),
            r,
            &[],
        );
        linkedit_data(
            &mut h,
            LC_DYLD_CHAINED_FIXUPS,
            chained_off,
            chained.payload.len(),
        );
        push_u32(&mut h, LC_SYMTAB);
        push_u32(&mut h, SYMTAB_COMMAND_SIZE as u32);
        push_u32(&mut h, symoff as u32);
        push_u32(&mut h, table.symbols.len() as u32);
        push_u32(&mut h, stroff as u32);
        push_u32(&mut h, strtab.len() as u32);
        push_u32(&mut h, LC_DYSYMTAB);
        push_u32(&mut h, DYSYMTAB_COMMAND_SIZE as u32);
        for v in [
            0,
            table.nlocal,
            table.nlocal,
            table.nextdef,
            table.nlocal + table.nextdef,
            table.nundef,
        ] {
            push_u32(&mut h, v as u32);
        }
        for _ in 0..6 {
            push_u32(&mut h, 0); // tocoff, ntoc, modtaboff, nmodtab, extrefsymoff, nextrefsyms
        }
        push_u32(
            &mut h,
            if indirect.is_empty() {
                0
            } else {
                indirect_off as u32
            },
        );
        push_u32(&mut h, indirect.len() as u32);
        for _ in 0..4 {
            push_u32(&mut h, 0); // extreloff, nextrel, locreloff, nlocrel: no classic relocations
        }
        push_u32(&mut h, LC_UUID);
        push_u32(&mut h, UUID_COMMAND_SIZE as u32);
        let uuid_at = h.len();
        h.extend_from_slice(&[0; 16]);
        push_u32(&mut h, LC_SOURCE_VERSION);
        push_u32(&mut h, SOURCE_VERSION_COMMAND_SIZE as u32);
        push_u64(&mut h, source_version);
        linkedit_data(&mut h, LC_SEGMENT_SPLIT_INFO, split_off, split.len());
        assert_eq!(
            h.len(),
            MACH_HEADER_64_SIZE + sizeofcmds,
            "load command sizes"
        );

        let mut file = vec![0u8; end as usize];
        file[..h.len()].copy_from_slice(&h);
        for s in self.sections.iter().filter(|s| !s.zerofill) {
            let off = self.file_offset(s.addr) as usize;
            file[off..][..s.data.len()].copy_from_slice(&s.data);
        }
        file[linkedit_off as usize..].copy_from_slice(&le);
        image::stamp_uuid(&mut file, uuid_at);
        Ok(file)
    }
}

fn linkedit_data(h: &mut Vec<u8>, cmd: u32, off: u64, size: usize) {
    push_u32(h, cmd);
    push_u32(h, LINKEDIT_DATA_COMMAND_SIZE as u32);
    push_u32(h, off as u32);
    push_u32(h, size as u32);
}

/// An `LC_SEGMENT_64` with its sections; `vm` is (vmaddr, vmsize), `file`
/// (fileoff, filesize). A section's file offset is its address's offset in the
/// segment added to the segment's file offset.
fn segment_command(
    h: &mut Vec<u8>,
    name: &str,
    (addr, vmsize): (u64, u64),
    (fileoff, filesize): (u64, u64),
    prot: u32,
    secs: &[&OutSection],
) {
    push_u32(h, LC_SEGMENT_64);
    push_u32(
        h,
        (SEGMENT_COMMAND_64_SIZE + secs.len() * SECTION_64_SIZE) as u32,
    );
    push_name16(h, name);
    push_u64(h, addr);
    push_u64(h, vmsize);
    push_u64(h, fileoff);
    push_u64(h, filesize);
    push_u32(h, prot);
    push_u32(h, prot);
    push_u32(h, secs.len() as u32);
    push_u32(h, 0);
    for s in secs {
        push_name16(h, &s.sectname);
        push_name16(h, &s.segname);
        push_u64(h, s.addr);
        push_u64(h, s.size);
        push_u32(
            h,
            if s.zerofill {
                0
            } else {
                (s.addr - addr + fileoff) as u32
            },
        );
        push_u32(h, s.align);
        push_u32(h, 0); // reloff
        push_u32(h, 0); // nreloc
        push_u32(h, s.flags);
        push_u32(h, s.reserved1);
        push_u32(h, s.reserved2);
        push_u32(h, 0);
    }
}
