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

mod reloc;

use std::collections::{BTreeMap, BTreeSet};

use super::image::{self, OutSection, OutSymbol, Placement, Target, align_up};
use super::input::{Disposition, InSection, Object, Reloc as RelocationInfo};
use super::resolve::Loaded;
use super::{LinkError, Linked};
use crate::arch::{Arch, MinOs};
use crate::macho::*;

const PAGE: u64 = 0x1000;
/// Largest input section alignment honoured (a page: segments slide by pages).
const MAX_ALIGN_LOG2: u32 = 12;

impl OutSection {
    fn is_text(&self) -> bool {
        self.segname == "__TEXT"
    }
    /// Sort key inside its segment (see the module docs).
    fn rank(&self) -> u32 {
        let n = self.sectname.as_str();
        if self.is_text() {
            match n {
                "__text" => 0,
                "__const" => 1,
                "__cstring" => 2,
                "__literal4" | "__literal8" | "__literal16" => 3,
                _ => 4,
            }
        } else if self.zerofill {
            match n {
                "__common" => 10,
                "__bss" => 11,
                _ => 12,
            }
        } else {
            match n {
                "__got" => 0,
                "__mod_init_func" => 1,
                "__mod_term_func" => 2,
                "__const" => 3,
                "__data" => 4,
                _ => 5,
            }
        }
    }
}

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
    let bytes = write(&image, emit_source_version, source_version)?;
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

impl<'a> Linker<'_, 'a> {
    fn objects(&self) -> &[Object<'a>] {
        &self.loaded.objects
    }

    /// Groups kept input sections by (segment, section) name, in order of appearance.
    fn collect_sections(&mut self) -> Result<(), LinkError> {
        let mut by_name: BTreeMap<(String, String), usize> = BTreeMap::new();
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
                if s.align > MAX_ALIGN_LOG2 {
                    return Err(err(
                        format!("alignment 2^{} exceeds the 4 KiB page", s.align),
                        "reduce the alignment to at most 4096 bytes",
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
                        "the object is corrupt: rebuild it",
                    ));
                }
                let key = (s.segname.clone(), s.sectname.clone());
                let next = self.sections.len();
                let idx = *by_name.entry(key).or_insert(next);
                if idx == next {
                    self.sections.push(OutSection {
                        segname: s.segname.clone(),
                        sectname: s.sectname.clone(),
                        flags: s.flags & !(S_ATTR_LOC_RELOC | S_ATTR_EXT_RELOC),
                        align: 0,
                        zerofill: s.is_zerofill(),
                        size: 0,
                        addr: 0,
                        data: Vec::new(),
                        inputs: Vec::new(),
                        first_seen: next,
                        reserved1: 0,
                        reserved2: 0,
                    });
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

    /// Resolves the symbol an extern relocation names.
    fn resolve_extern(&self, obj: usize, symnum: u32) -> Option<Target> {
        image::resolve_extern(self.loaded, obj, symnum)
    }

    /// First pass over the relocations of kept sections: GOT slots and the
    /// undefined symbols that the output references.
    fn scan_relocations(&mut self) -> Result<(), LinkError> {
        let loaded = self.loaded;
        for (o, obj) in loaded.objects.iter().enumerate() {
            for s in obj
                .sections
                .iter()
                .filter(|s| s.disposition == Disposition::Keep)
            {
                for r in &s.relocs {
                    if !r.r_extern {
                        continue;
                    }
                    let site = Site { obj, sect: s, r };
                    let Some(target) = self.resolve_extern(o, r.r_symbolnum) else {
                        return Err(site.error(
                            r.r_type,
                            "the relocation names a symbol that is not defined or undefined-external",
                            "the object is corrupt: rebuild it",
                        ));
                    };
                    if let Target::Undefined(name) = &target {
                        self.referenced_undef.insert(name.clone());
                    }
                    let is_got = matches!(r.r_type, X86_64_RELOC_GOT_LOAD | X86_64_RELOC_GOT);
                    if is_got
                        && !self.relaxes(s, r, &target)
                        && !self.got_index.contains_key(&target)
                    {
                        self.got_index.insert(target.clone(), self.got_slots.len());
                        self.got_slots.push(target);
                    }
                }
            }
        }
        if !self.got_slots.is_empty() {
            self.got = Some(self.sections.len());
            self.sections.push(OutSection::synthetic(
                "__DATA",
                "__got",
                S_REGULAR,
                3,
                8 * self.got_slots.len() as u64,
            ));
        }
        Ok(())
    }

    /// A `GOT_LOAD` that becomes `leaq`: `movq sym@GOTPCREL(%rip)` to a defined
    /// symbol with no addend.
    fn relaxes(&self, s: &InSection<'_>, r: &RelocationInfo, target: &Target) -> bool {
        r.r_type == X86_64_RELOC_GOT_LOAD
            && r.r_pcrel
            && r.r_length == 2
            && matches!(target, Target::Defined { .. })
            && reloc::is_rip_movq(s.data, r.r_address as usize)
            && get_u32(s.data, r.r_address as usize) == 0
    }

    /// Sorts the output sections (text first, then data) and rewrites the
    /// placements' indices accordingly.
    fn order_sections(&mut self) {
        self.sections
            .sort_by_key(|s| (!s.is_text(), s.rank(), s.first_seen));
        if self.got.is_some() {
            self.got = self
                .sections
                .iter()
                .position(|s| s.sectname == "__got" && s.inputs.is_empty());
        }
        image::place_inputs(&self.loaded.objects, &mut self.place, &mut self.sections);
    }

    /// Assigns addresses; returns (text segment size, data vmaddr, data filesize, data vmsize).
    fn layout(&mut self, header_size: u64) -> Result<(u64, u64, u64, u64), LinkError> {
        // __TEXT: lay out relative to an aligned base, then pack against the segment end.
        let mut rel = 0u64;
        let mut max_align = 1u64;
        let mut text_rel = Vec::new();
        for s in self.sections.iter().filter(|s| s.is_text()) {
            let a = 1u64 << s.align;
            max_align = max_align.max(a);
            rel = align_up(rel, a);
            text_rel.push(rel);
            rel += s.size;
        }
        let text_content = rel;
        let header_end = header_size + MIN_HEADER_PADDING as u64;
        let mut text_size = align_up(header_end + text_content, PAGE);
        let base = loop {
            let base = (text_size - text_content) / max_align * max_align;
            if base >= header_end {
                break base;
            }
            text_size += PAGE;
        };
        for (s, r) in self
            .sections
            .iter_mut()
            .filter(|s| s.is_text())
            .zip(text_rel)
        {
            s.addr = base + r;
        }
        // __DATA: forward, zerofill last (the sort put it there).
        let data_vmaddr = text_size;
        let mut cur = data_vmaddr;
        let mut file_end = data_vmaddr;
        for s in self.sections.iter_mut().filter(|s| !s.is_text()) {
            cur = align_up(cur, 1 << s.align);
            s.addr = cur;
            cur += s.size;
            if !s.zerofill {
                file_end = cur;
            }
        }
        let data_filesize = align_up(file_end - data_vmaddr, PAGE);
        let data_vmsize = align_up(cur - data_vmaddr, PAGE);
        if cur > u64::from(u32::MAX) {
            return Err(LinkError::TooLarge {
                what: format!("segments end at {cur:#x}, past 4 GiB"),
            });
        }
        image::fill_contents(&self.loaded.objects, &self.place, &mut self.sections);
        Ok((text_size, data_vmaddr, data_filesize, data_vmsize))
    }

    /// Output address and section ordinal of a defined symbol; None if its
    /// section was dropped.
    fn symbol_address(&self, obj: usize, sym: usize) -> Option<(u64, u32)> {
        image::symbol_address(self.objects(), &self.place, &self.sections, obj, sym)
    }

    /// (output address − object address) of an input section, and its output ordinal.
    fn section_delta(&self, obj: usize, sect: usize) -> Option<(i64, u32)> {
        image::section_delta(self.objects(), &self.place, &self.sections, obj, sect)
    }

    /// Builds the symbol table: locals, external definitions, undefined.
    #[allow(clippy::type_complexity)]
    fn symbol_table(&mut self) -> Result<(Vec<OutSymbol>, usize, usize, usize), LinkError> {
        let t = image::symbol_table(
            self.loaded,
            &self.place,
            &self.sections,
            &self.referenced_undef,
        )?;
        self.undef_symidx = t.undef_index;
        Ok((t.symbols, t.nlocal, t.nextdef, t.nundef))
    }

    /// Applies every relocation of every kept section; returns the local and
    /// external relocations of the output.
    #[allow(clippy::type_complexity)]
    fn apply_relocations(&mut self) -> Result<(Vec<(u32, u32)>, Vec<(u8, u32, u32)>), LinkError> {
        let mut local = Vec::new();
        let mut ext_unsigned = Vec::new();
        let mut ext_branch = Vec::new();
        let mut patches: Vec<(usize, usize, Vec<u8>)> = Vec::new();
        for (o, obj) in self.objects().iter().enumerate() {
            for (si, s) in obj.sections.iter().enumerate() {
                let Some(p) = self.place[o][si] else { continue };
                let out_addr = self.sections[p.out].addr + p.offset;
                let mut ri = 0;
                while ri < s.relocs.len() {
                    let r = &s.relocs[ri];
                    let site = Site { obj, sect: s, r };
                    let next = s.relocs.get(ri + 1);
                    ri += 1;
                    let off = r.r_address as usize;
                    let width = 1usize << r.r_length;
                    if off + width > s.data.len() {
                        return Err(site.error(
                            r.r_type,
                            "fix-up lies outside its section",
                            "the object is corrupt: rebuild it",
                        ));
                    }
                    let p_out = out_addr + u64::from(r.r_address);
                    let patch_at = p.offset as usize + off;
                    let stored32 = get_u32(s.data, off) as i32;
                    let target = if r.r_extern {
                        self.resolve_extern(o, r.r_symbolnum)
                    } else {
                        None
                    };
                    match r.r_type {
                        X86_64_RELOC_UNSIGNED => {
                            if r.r_pcrel {
                                return Err(site.unsupported());
                            }
                            if r.r_length != 3 {
                                return Err(site.error(
                                    r.r_type,
                                    format!(
                                        "{}-bit absolute address: the kernel cannot slide it",
                                        width * 8
                                    ),
                                    HINT_ABS32,
                                ));
                            }
                            let stored = get_u64(s.data, off);
                            let (value, rel) = if r.r_extern {
                                match target.as_ref().ok_or_else(|| site.unsupported())? {
                                    Target::Defined { obj: to, sym } => {
                                        let (a, ord) =
                                            self.symbol_address(*to, *sym).ok_or_else(|| {
                                                site.error(
                                                    r.r_type,
                                                    "target lies in a dropped section",
                                                    HINT_DROPPED,
                                                )
                                            })?;
                                        (a.wrapping_add(stored), Some(Ok(ord)))
                                    }
                                    Target::Undefined(name) => {
                                        (stored, Some(Err(self.undef_symidx[name])))
                                    }
                                    Target::Absolute(v) => (v.wrapping_add(stored), None),
                                }
                            } else if r.r_symbolnum == 0 {
                                (stored, None)
                            } else {
                                let (delta, ord) = self
                                    .section_delta(o, r.r_symbolnum as usize - 1)
                                    .ok_or_else(|| {
                                        site.error(
                                            r.r_type,
                                            "target section is dropped or missing",
                                            HINT_DROPPED,
                                        )
                                    })?;
                                (stored.wrapping_add(delta as u64), Some(Ok(ord)))
                            };
                            if rel.is_some() && !p_out.is_multiple_of(4) {
                                return Err(site.error(
                                    r.r_type,
                                    format!("pointer at {p_out:#x} is not 4-byte aligned"),
                                    "align pointers in data (the kernel collection builder requires \
                                     4-byte aligned fix-ups)",
                                ));
                            }
                            match rel {
                                Some(Ok(ord)) => local.push((p_out as u32, ord)),
                                Some(Err(symidx)) => ext_unsigned.push((symidx, p_out as u32)),
                                None => {}
                            }
                            patches.push((p.out, patch_at, value.to_le_bytes().to_vec()));
                        }
                        X86_64_RELOC_SIGNED
                        | X86_64_RELOC_SIGNED_1
                        | X86_64_RELOC_SIGNED_2
                        | X86_64_RELOC_SIGNED_4
                        | X86_64_RELOC_BRANCH => {
                            if !r.r_pcrel || r.r_length != 2 {
                                return Err(site.unsupported());
                            }
                            let bias = reloc::pcrel_bias(r.r_type).expect("pc-relative type");
                            let value = if r.r_extern {
                                match target.as_ref().ok_or_else(|| site.unsupported())? {
                                    Target::Defined { obj: to, sym } => {
                                        let (a, _) =
                                            self.symbol_address(*to, *sym).ok_or_else(|| {
                                                site.error(
                                                    r.r_type,
                                                    "target lies in a dropped section",
                                                    HINT_DROPPED,
                                                )
                                            })?;
                                        reloc::extern_pcrel(a, stored32, bias, p_out)
                                    }
                                    Target::Undefined(name) if r.r_type == X86_64_RELOC_BRANCH => {
                                        ext_branch.push((self.undef_symidx[name], p_out as u32));
                                        i64::from(stored32)
                                    }
                                    Target::Undefined(_) => {
                                        return Err(site.error(
                                            r.r_type,
                                            "RIP-relative reference to an undefined symbol",
                                            HINT_UNDEF_RIP,
                                        ));
                                    }
                                    Target::Absolute(_) => {
                                        return Err(site.error(
                                            r.r_type,
                                            "RIP-relative reference to an absolute symbol moves when the kext slides",
                                            "reference the constant by value, not by address",
                                        ));
                                    }
                                }
                            } else {
                                let sect = (r.r_symbolnum as usize).checked_sub(1);
                                let (delta, _) = sect
                                    .and_then(|k| self.section_delta(o, k))
                                    .ok_or_else(|| {
                                        site.error(
                                            r.r_type,
                                            "target section is dropped or missing",
                                            HINT_DROPPED,
                                        )
                                    })?;
                                let p_obj = s.addr + u64::from(r.r_address);
                                reloc::section_pcrel(stored32, bias, p_obj, p_out, delta)
                            };
                            if !reloc::fits_i32(value) {
                                return Err(site.error(
                                    r.r_type,
                                    format!("displacement {value:#x} does not fit in 32 bits"),
                                    HINT_OVERFLOW,
                                ));
                            }
                            patches.push((p.out, patch_at, (value as i32).to_le_bytes().to_vec()));
                        }
                        X86_64_RELOC_GOT_LOAD | X86_64_RELOC_GOT => {
                            if !r.r_pcrel || r.r_length != 2 || !r.r_extern {
                                return Err(site.unsupported());
                            }
                            let target = target.ok_or_else(|| site.unsupported())?;
                            let value = if self.relaxes(s, r, &target) {
                                let Target::Defined { obj: to, sym } = target else {
                                    unreachable!()
                                };
                                let (a, _) = self.symbol_address(to, sym).ok_or_else(|| {
                                    site.error(
                                        r.r_type,
                                        "target lies in a dropped section",
                                        HINT_DROPPED,
                                    )
                                })?;
                                patches.push((p.out, patch_at - 2, vec![0x8d])); // movq → leaq
                                reloc::extern_pcrel(a, 0, 0, p_out)
                            } else {
                                let slot = self.got_index[&target];
                                let g =
                                    self.sections[self.got.expect("got")].addr + 8 * slot as u64;
                                reloc::extern_pcrel(g, stored32, 0, p_out)
                            };
                            if !reloc::fits_i32(value) {
                                return Err(site.error(
                                    r.r_type,
                                    format!("displacement {value:#x} does not fit in 32 bits"),
                                    HINT_OVERFLOW,
                                ));
                            }
                            patches.push((p.out, patch_at, (value as i32).to_le_bytes().to_vec()));
                        }
                        X86_64_RELOC_SUBTRACTOR => {
                            let Some(minuend) = next else {
                                return Err(site.error(
                                    r.r_type,
                                    "not followed by X86_64_RELOC_UNSIGNED",
                                    "the object is corrupt: rebuild it",
                                ));
                            };
                            ri += 1;
                            if minuend.r_type != X86_64_RELOC_UNSIGNED
                                || minuend.r_address != r.r_address
                                || minuend.r_length != r.r_length
                                || minuend.r_pcrel
                                || r.r_pcrel
                                || !(r.r_length == 2 || r.r_length == 3)
                            {
                                return Err(site.error(
                                    r.r_type,
                                    "must be followed by an X86_64_RELOC_UNSIGNED of the same address and length",
                                    "the object is corrupt: rebuild it",
                                ));
                            }
                            let minuend_site = Site {
                                obj,
                                sect: s,
                                r: minuend,
                            };
                            let b = self.pair_term(o, &site)?;
                            let a = self.pair_term(o, &minuend_site)?;
                            if a.1 != b.1 {
                                return Err(site.error(
                                    r.r_type,
                                    format!(
                                        "difference between {} and an absolute address changes when the kext slides",
                                        minuend_site.target_name()
                                    ),
                                    "subtract two addresses inside the kext, or two constants",
                                ));
                            }
                            let stored: i64 = if r.r_length == 3 {
                                get_u64(s.data, off) as i64
                            } else {
                                i64::from(stored32)
                            };
                            let value = stored.wrapping_add(a.0).wrapping_sub(b.0);
                            if r.r_length == 2 {
                                if !reloc::fits_i32(value) {
                                    return Err(site.error(
                                        r.r_type,
                                        format!("difference {value:#x} does not fit in 32 bits"),
                                        HINT_OVERFLOW,
                                    ));
                                }
                                patches.push((
                                    p.out,
                                    patch_at,
                                    (value as i32).to_le_bytes().to_vec(),
                                ));
                            } else {
                                patches.push((p.out, patch_at, value.to_le_bytes().to_vec()));
                            }
                        }
                        X86_64_RELOC_TLV => {
                            return Err(site.error(
                                r.r_type,
                                "thread-local variables are not supported in kernel extensions",
                                "remove thread_local!/__thread variables (the kernel target must not use TLS)",
                            ));
                        }
                        _ => return Err(site.unsupported()),
                    }
                }
            }
        }
        // __got slots.
        if let Some(g) = self.got {
            let base = self.sections[g].addr;
            let mut data = vec![0u8; 8 * self.got_slots.len()];
            for (k, t) in self.got_slots.iter().enumerate() {
                let at = base + 8 * k as u64;
                match t {
                    Target::Defined { obj, sym } => {
                        let (a, ord) = self.symbol_address(*obj, *sym).ok_or_else(|| {
                            LinkError::UnsupportedSymbol {
                                input: self.objects()[*obj].name.clone(),
                                symbol: self.objects()[*obj].symbols[*sym].name.clone(),
                                problem: "GOT entry for a symbol in a dropped section".into(),
                                hint: HINT_DROPPED,
                            }
                        })?;
                        put_u64(&mut data, 8 * k, a);
                        local.push((at as u32, ord));
                    }
                    Target::Undefined(name) => {
                        ext_unsigned.push((self.undef_symidx[name], at as u32))
                    }
                    Target::Absolute(v) => put_u64(&mut data, 8 * k, *v),
                }
            }
            self.sections[g].data = data;
        }
        for (out, at, bytes) in patches {
            self.sections[out].data[at..at + bytes.len()].copy_from_slice(&bytes);
        }
        local.sort();
        ext_unsigned.sort();
        ext_branch.sort();
        let ext = ext_unsigned
            .into_iter()
            .map(|(s, a)| (X86_64_RELOC_UNSIGNED, s, a))
            .chain(
                ext_branch
                    .into_iter()
                    .map(|(s, a)| (X86_64_RELOC_BRANCH, s, a)),
            )
            .collect();
        Ok((local, ext))
    }

    /// One side of a SUBTRACTOR pair: (amount to add to the stored value, is absolute).
    /// Extern: the symbol's address; section-relative: the section's move.
    fn pair_term(&self, o: usize, site: &Site<'_, '_>) -> Result<(i64, bool), LinkError> {
        let r = site.r;
        if r.r_extern {
            match self
                .resolve_extern(o, r.r_symbolnum)
                .ok_or_else(|| site.unsupported())?
            {
                Target::Defined { obj, sym } => {
                    let (a, _) = self.symbol_address(obj, sym).ok_or_else(|| {
                        site.error(
                            X86_64_RELOC_SUBTRACTOR,
                            "target lies in a dropped section",
                            HINT_DROPPED,
                        )
                    })?;
                    Ok((a as i64, false))
                }
                Target::Absolute(v) => Ok((v as i64, true)),
                Target::Undefined(_) => Err(site.error(
                    X86_64_RELOC_SUBTRACTOR,
                    "difference involving an undefined symbol cannot be resolved at link time",
                    "subtract only addresses defined inside the kext",
                )),
            }
        } else if r.r_symbolnum == 0 {
            Ok((0, true))
        } else {
            let (delta, _) = self
                .section_delta(o, r.r_symbolnum as usize - 1)
                .ok_or_else(|| {
                    site.error(
                        X86_64_RELOC_SUBTRACTOR,
                        "target section is dropped or missing",
                        HINT_DROPPED,
                    )
                })?;
            Ok((delta, false))
        }
    }
}

const HINT_DROPPED: &str = "kexts drop debug info, unwind tables and bitcode: do not reference them \
     from code or data";

/// Serialises the image.
fn write(
    img: &Image,
    emit_source_version: bool,
    source_version: u64,
) -> Result<Vec<u8>, LinkError> {
    let ntext = img.sections.iter().filter(|s| s.is_text()).count();
    let ndata = img.sections.len() - ntext;
    // __LINKEDIT contents: in memory after __DATA's zerofill, in the file after
    // __DATA's file-backed pages (docs/kext-format.md, "Segments in the file").
    let linkedit_vmaddr = img.data_vmaddr + img.data_vmsize;
    let linkedit_off = img.data_vmaddr + img.data_filesize;
    let mut le = Vec::new();
    let locreloff = linkedit_off + le.len() as u64;
    for &(addr, ord) in &img.local_relocs {
        le.extend_from_slice(&relocation_info(
            addr,
            ord,
            false,
            3,
            false,
            X86_64_RELOC_UNSIGNED,
        ));
    }
    let symoff = linkedit_off + le.len() as u64;
    let (nlists, strtab) = image::nlists_and_strings(&img.symbols);
    le.extend_from_slice(&nlists);
    let extreloff = linkedit_off + le.len() as u64;
    for &(ty, sym, addr) in &img.extern_relocs {
        let (pcrel, len) = if ty == X86_64_RELOC_BRANCH {
            (true, 2)
        } else {
            (false, 3)
        };
        le.extend_from_slice(&relocation_info(addr, sym, pcrel, len, true, ty));
    }
    let stroff = linkedit_off + le.len() as u64;
    le.extend_from_slice(&strtab);
    let linkedit_size = le.len() as u64;
    let end = linkedit_off + linkedit_size;
    if end > u64::from(u32::MAX) {
        return Err(LinkError::TooLarge {
            what: format!("file size {end:#x}"),
        });
    }

    let ncmds = 6 + u32::from(emit_source_version);
    let sizeofcmds = header_size(&img.sections, emit_source_version) as usize - MACH_HEADER_64_SIZE;
    let mut h = Vec::with_capacity(MACH_HEADER_64_SIZE + sizeofcmds);
    push_u32(&mut h, MH_MAGIC_64);
    push_u32(&mut h, CPU_TYPE_X86_64);
    push_u32(&mut h, CPU_SUBTYPE_X86_64_ALL);
    push_u32(&mut h, MH_KEXT_BUNDLE);
    push_u32(&mut h, ncmds);
    push_u32(&mut h, sizeofcmds as u32);
    push_u32(&mut h, KEXT_HEADER_FLAGS);
    push_u32(&mut h, 0);
    let rx = VM_PROT_READ | VM_PROT_EXECUTE;
    let rw = VM_PROT_READ | VM_PROT_WRITE;
    let segment = |h: &mut Vec<u8>,
                   name: &str,
                   addr: u64,
                   vmsize: u64,
                   fileoff: u64,
                   filesize: u64,
                   prot: u32,
                   secs: &[&OutSection]| {
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
            // __TEXT and __DATA have fileoff == vmaddr.
            push_u32(h, if s.zerofill { 0 } else { s.addr as u32 });
            push_u32(h, s.align);
            push_u32(h, 0); // reloff
            push_u32(h, 0); // nreloc
            push_u32(h, s.flags);
            push_u32(h, 0);
            push_u32(h, 0);
            push_u32(h, 0);
        }
    };
    let text: Vec<&OutSection> = img.sections.iter().filter(|s| s.is_text()).collect();
    let data: Vec<&OutSection> = img.sections.iter().filter(|s| !s.is_text()).collect();
    debug_assert_eq!((text.len(), data.len()), (ntext, ndata));
    segment(
        &mut h,
        "__TEXT",
        0,
        img.text_size,
        0,
        img.text_size,
        rx,
        &text,
    );
    segment(
        &mut h,
        "__DATA",
        img.data_vmaddr,
        img.data_vmsize,
        img.data_vmaddr,
        img.data_filesize,
        rw,
        &data,
    );
    segment(
        &mut h,
        "__LINKEDIT",
        linkedit_vmaddr,
        align_up(linkedit_size, PAGE),
        linkedit_off,
        linkedit_size,
        VM_PROT_READ,
        &[],
    );
    push_u32(&mut h, LC_SYMTAB);
    push_u32(&mut h, SYMTAB_COMMAND_SIZE as u32);
    push_u32(&mut h, symoff as u32);
    push_u32(&mut h, img.symbols.len() as u32);
    push_u32(&mut h, stroff as u32);
    push_u32(&mut h, strtab.len() as u32);
    push_u32(&mut h, LC_DYSYMTAB);
    push_u32(&mut h, DYSYMTAB_COMMAND_SIZE as u32);
    for v in [
        0,
        img.nlocal,
        img.nlocal,
        img.nextdef,
        img.nlocal + img.nextdef,
        img.nundef,
    ] {
        push_u32(&mut h, v as u32);
    }
    for _ in 0..8 {
        push_u32(&mut h, 0); // toc, modtab, extrefsyms, indirectsyms
    }
    let nextrel = img.extern_relocs.len();
    let nlocrel = img.local_relocs.len();
    push_u32(&mut h, if nextrel > 0 { extreloff as u32 } else { 0 });
    push_u32(&mut h, nextrel as u32);
    push_u32(&mut h, if nlocrel > 0 { locreloff as u32 } else { 0 });
    push_u32(&mut h, nlocrel as u32);
    push_u32(&mut h, LC_UUID);
    push_u32(&mut h, UUID_COMMAND_SIZE as u32);
    let uuid_at = h.len();
    h.extend_from_slice(&[0; 16]);
    if emit_source_version {
        push_u32(&mut h, LC_SOURCE_VERSION);
        push_u32(&mut h, SOURCE_VERSION_COMMAND_SIZE as u32);
        push_u64(&mut h, source_version);
    }
    assert_eq!(
        h.len(),
        MACH_HEADER_64_SIZE + sizeofcmds,
        "load command sizes"
    );

    let mut file = vec![0u8; end as usize];
    file[..h.len()].copy_from_slice(&h);
    for s in img.sections.iter().filter(|s| !s.zerofill) {
        file[s.addr as usize..][..s.data.len()].copy_from_slice(&s.data);
    }
    file[linkedit_off as usize..].copy_from_slice(&le);
    image::stamp_uuid(&mut file, uuid_at);
    Ok(file)
}
