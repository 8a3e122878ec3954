//! Writing: chains the fixups into the segments' bytes, builds `__LINKEDIT`
//! (chained fixups, split-seg info, symbol table, indirect symbols, strings)
//! and the load commands, and assembles the file with the writer shared with
//! x86_64 ([`crate::link::writer`]).

use super::{
    Linker, PAGE, SEG_DATA, SEG_DATA_CONST, SEG_TEXT, SEG_TEXT_EXEC, SEGMENTS, fixups, header_size,
    seg_index, split_seg,
};
use crate::link::LinkError;
use crate::link::image::{self, OutSection, Target, align_up};
use crate::link::resolve::Global;
use crate::link::writer::{self, Dysymtab, Segment, Table};
use crate::macho::*;

impl<'a> Linker<'_, 'a> {
    /// Indirect symbol table: one entry per stub, `__auth_got` slot, `__got` slot.
    pub(super) fn indirect_symbols(&self) -> Vec<u32> {
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
    pub(super) fn write(
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
        writer::file_end(linkedit_off, linkedit_size)?;

        // Header and load commands.
        let r = VM_PROT_READ;
        let rx = VM_PROT_READ | VM_PROT_EXECUTE;
        let rw = VM_PROT_READ | VM_PROT_WRITE;
        let mut segments: Vec<Segment<'_>> = [
            (SEG_TEXT, r),
            (SEG_TEXT_EXEC, rx),
            (SEG_DATA, rw),
            (SEG_DATA_CONST, rw),
        ]
        .into_iter()
        .map(|(seg, prot)| {
            let (vmaddr, vmsize, filesize) = self.segs[seg];
            Segment {
                name: SEGMENTS[seg],
                vmaddr,
                vmsize,
                fileoff: self.fileoffs[seg],
                filesize,
                prot,
                sections: self
                    .sections
                    .iter()
                    .filter(|s| seg_index(&s.segname) == seg)
                    .collect::<Vec<&OutSection>>(),
            }
        })
        .collect();
        segments.push(Segment {
            name: "__LINKEDIT",
            vmaddr: linkedit_vmaddr,
            vmsize: align_up(linkedit_size, PAGE),
            fileoff: linkedit_off,
            filesize: linkedit_size,
            prot: r,
            sections: Vec::new(),
        });
        let sizeofcmds = header_size(self.sections.len()) as usize - MACH_HEADER_64_SIZE;
        let mut h = Vec::with_capacity(MACH_HEADER_64_SIZE + sizeofcmds);
        writer::mach_header(
            &mut h,
            CPU_TYPE_ARM64,
            CPU_SUBTYPE_ARM64E_KERNEL,
            11,
            sizeofcmds,
        );
        for seg in &segments {
            writer::segment_command(&mut h, seg);
        }
        writer::linkedit_data_command(
            &mut h,
            LC_DYLD_CHAINED_FIXUPS,
            chained_off,
            chained.payload.len(),
        );
        writer::symtab_command(&mut h, symoff, table.symbols.len(), stroff, strtab.len());
        writer::dysymtab_command(
            &mut h,
            &Dysymtab {
                nlocal: table.nlocal,
                nextdef: table.nextdef,
                nundef: table.nundef,
                indirect: Table {
                    off: indirect_off,
                    count: indirect.len(),
                },
                // No classic relocations: every pointer is a chained fixup.
                extrel: Table::default(),
                locrel: Table::default(),
            },
        );
        let uuid_at = writer::uuid_command(&mut h);
        writer::source_version_command(&mut h, source_version);
        writer::linkedit_data_command(&mut h, LC_SEGMENT_SPLIT_INFO, split_off, split.len());
        assert_eq!(
            h.len(),
            MACH_HEADER_64_SIZE + sizeofcmds,
            "load command sizes"
        );
        Ok(writer::file_image(
            &h,
            uuid_at,
            &segments,
            linkedit_off,
            &le,
        ))
    }
}
