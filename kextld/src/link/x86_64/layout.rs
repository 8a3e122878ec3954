//! Layout: groups the kept input sections into output sections, adds the GOT
//! the relocations need, sorts the sections (text, then data, zerofill last)
//! and assigns addresses (see the module docs of [`super`]); address queries
//! and the symbol table over the result.

use std::collections::BTreeMap;

use super::{Linker, MAX_ALIGN_LOG2, PAGE, Site, reloc};
use crate::link::LinkError;
use crate::link::image::{self, OutSection, OutSymbol, Target, align_up};
use crate::link::input::{Disposition, InSection, Reloc as RelocationInfo};
use crate::macho::*;

impl OutSection {
    pub(super) fn is_text(&self) -> bool {
        self.segname == "__TEXT"
    }
    /// Sort key inside its segment (see the module docs).
    pub(super) fn rank(&self) -> u32 {
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

impl<'a> Linker<'_, 'a> {
    /// Groups kept input sections by (segment, section) name, in order of appearance.
    pub(super) fn collect_sections(&mut self) -> Result<(), LinkError> {
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
    pub(super) fn resolve_extern(&self, obj: usize, symnum: u32) -> Option<Target> {
        image::resolve_extern(self.loaded, obj, symnum)
    }

    /// First pass over the relocations of kept sections: GOT slots and the
    /// undefined symbols that the output references.
    pub(super) fn scan_relocations(&mut self) -> Result<(), LinkError> {
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
    pub(super) fn relaxes(&self, s: &InSection<'_>, r: &RelocationInfo, target: &Target) -> bool {
        r.r_type == X86_64_RELOC_GOT_LOAD
            && r.r_pcrel
            && r.r_length == 2
            && matches!(target, Target::Defined { .. })
            && reloc::is_rip_movq(s.data, r.r_address as usize)
            && get_u32(s.data, r.r_address as usize) == 0
    }

    /// Sorts the output sections (text first, then data) and rewrites the
    /// placements' indices accordingly.
    pub(super) fn order_sections(&mut self) {
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
    pub(super) fn layout(&mut self, header_size: u64) -> Result<(u64, u64, u64, u64), LinkError> {
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
    pub(super) fn symbol_address(&self, obj: usize, sym: usize) -> Option<(u64, u32)> {
        image::symbol_address(self.objects(), &self.place, &self.sections, obj, sym)
    }

    /// (output address − object address) of an input section, and its output ordinal.
    pub(super) fn section_delta(&self, obj: usize, sect: usize) -> Option<(i64, u32)> {
        image::section_delta(self.objects(), &self.place, &self.sections, obj, sect)
    }

    /// Builds the symbol table: locals, external definitions, undefined.
    #[allow(clippy::type_complexity)]
    pub(super) fn symbol_table(
        &mut self,
    ) -> Result<(Vec<OutSymbol>, usize, usize, usize), LinkError> {
        let t = image::symbol_table(
            self.loaded,
            &self.place,
            &self.sections,
            &self.referenced_undef,
        )?;
        self.undef_symidx = t.undef_index;
        Ok((t.symbols, t.nlocal, t.nextdef, t.nundef))
    }
}
