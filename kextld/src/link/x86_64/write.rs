//! Writing: `__LINKEDIT` (local relocations, symbol table, external
//! relocations, strings) and the load commands, and the file assembled with
//! the writer shared with arm64e ([`crate::link::writer`]).

use super::{Image, PAGE, header_size};
use crate::link::LinkError;
use crate::link::image::{self, OutSection, align_up};
use crate::link::writer::{self, Dysymtab, Segment, Table};
use crate::macho::*;

/// Serialises the image.
pub(super) fn write(
    img: &Image,
    emit_source_version: bool,
    source_version: u64,
) -> Result<Vec<u8>, LinkError> {
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
    writer::file_end(linkedit_off, linkedit_size)?;

    // __TEXT and __DATA have fileoff == vmaddr.
    let rx = VM_PROT_READ | VM_PROT_EXECUTE;
    let rw = VM_PROT_READ | VM_PROT_WRITE;
    let segments = [
        Segment {
            name: "__TEXT",
            vmaddr: 0,
            vmsize: img.text_size,
            fileoff: 0,
            filesize: img.text_size,
            prot: rx,
            sections: img.sections.iter().filter(|s| s.is_text()).collect(),
        },
        Segment {
            name: "__DATA",
            vmaddr: img.data_vmaddr,
            vmsize: img.data_vmsize,
            fileoff: img.data_vmaddr,
            filesize: img.data_filesize,
            prot: rw,
            sections: img
                .sections
                .iter()
                .filter(|s| !s.is_text())
                .collect::<Vec<&OutSection>>(),
        },
        Segment {
            name: "__LINKEDIT",
            vmaddr: linkedit_vmaddr,
            vmsize: align_up(linkedit_size, PAGE),
            fileoff: linkedit_off,
            filesize: linkedit_size,
            prot: VM_PROT_READ,
            sections: Vec::new(),
        },
    ];

    let ncmds = 6 + u32::from(emit_source_version);
    let sizeofcmds = header_size(&img.sections, emit_source_version) as usize - MACH_HEADER_64_SIZE;
    let mut h = Vec::with_capacity(MACH_HEADER_64_SIZE + sizeofcmds);
    writer::mach_header(
        &mut h,
        CPU_TYPE_X86_64,
        CPU_SUBTYPE_X86_64_ALL,
        ncmds,
        sizeofcmds,
    );
    for seg in &segments {
        writer::segment_command(&mut h, seg);
    }
    writer::symtab_command(&mut h, symoff, img.symbols.len(), stroff, strtab.len());
    writer::dysymtab_command(
        &mut h,
        &Dysymtab {
            nlocal: img.nlocal,
            nextdef: img.nextdef,
            nundef: img.nundef,
            indirect: Table::default(),
            extrel: Table {
                off: extreloff,
                count: img.extern_relocs.len(),
            },
            locrel: Table {
                off: locreloff,
                count: img.local_relocs.len(),
            },
        },
    );
    let uuid_at = writer::uuid_command(&mut h);
    if emit_source_version {
        writer::source_version_command(&mut h, source_version);
    }
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
