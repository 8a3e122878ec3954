//! Layout: groups the kept input sections into output sections, adds the
//! stubs and GOT slots the relocations need, sorts the sections into segment
//! order and assigns addresses on 16 KiB segment boundaries (see the module
//! docs of [`super`]); address queries over the result.

use std::collections::BTreeMap;

use super::{
    HINT_CORRUPT, Linker, MAX_ALIGN_LOG2, PAGE, SEG_DATA, SEG_DATA_CONST, SEG_TEXT, SEG_TEXT_EXEC,
    SEGMENTS, STUB_FLAGS, Site, auth, insn, seg_index,
};
use crate::link::LinkError;
use crate::link::image::{self, OutSection, Target, align_up};
use crate::link::input::{Disposition, InSection};
use crate::macho::*;

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

impl<'a> Linker<'_, 'a> {
    /// Groups kept input sections by output (segment, section), in order of appearance.
    pub(super) fn collect_sections(&mut self) -> Result<(), LinkError> {
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

    pub(super) fn add_got(&mut self, target: Target) {
        if !self.got_index.contains_key(&target) {
            self.got_index.insert(target.clone(), self.got.len());
            self.got.push(target);
        }
    }

    /// First pass: stubs, GOT slots and referenced undefined symbols.
    pub(super) fn scan_relocations(&mut self) -> Result<(), LinkError> {
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
    pub(super) fn order_sections(&mut self) {
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
    pub(super) fn layout(&mut self, header_size: u64) -> Result<(), LinkError> {
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

    pub(super) fn symbol_address(&self, obj: usize, sym: usize) -> Option<(u64, u32)> {
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

    /// The segment index holding `addr`.
    pub(super) fn segment_of(&self, addr: u64) -> Option<usize> {
        self.segs
            .iter()
            .position(|&(start, vmsize, _)| start <= addr && addr < start + vmsize)
    }

    pub(super) fn got_slot_address(&self, target: &Target) -> u64 {
        self.sections[self.got_sect.expect("__got")].addr + 8 * self.got_index[target] as u64
    }

    pub(super) fn stub_address(&self, name: &str) -> u64 {
        let size = if self.auth_stubs {
            insn::AUTH_STUB_SIZE
        } else {
            insn::STUB_SIZE
        };
        self.sections[self.stubs_sect.expect("stubs")].addr + size * self.stub_index[name] as u64
    }
}
