//! The Mach-O writer both backends share: `mach_header_64`, the one
//! `LC_SEGMENT_64` writer, the symbol-table and small load commands, and the
//! assembly of the file from segments and `__LINKEDIT` (docs/kext-format.md,
//! "Segments in the file").
//!
//! The backends decide the layout and the contents (which segments, which load
//! commands in which order, what `__LINKEDIT` holds); everything that turns
//! those decisions into bytes the same way on both architectures is here, so
//! that a section header or a segment's file range cannot be written two ways.

use super::LinkError;
use super::image::{OutSection, stamp_uuid};
use crate::macho::*;

/// One output segment as its load command and the file describe it.
pub(super) struct Segment<'s> {
    pub name: &'static str,
    pub vmaddr: u64,
    pub vmsize: u64,
    pub fileoff: u64,
    /// File-backed bytes; zerofill past them takes no file space.
    pub filesize: u64,
    /// `initprot` and `maxprot` (the kext loaders set both the same).
    pub prot: u32,
    /// Its sections, in address order.
    pub sections: Vec<&'s OutSection>,
}

impl Segment<'_> {
    /// The file offset of an address inside the segment's file-backed bytes.
    fn file_offset(&self, addr: u64) -> u64 {
        addr - self.vmaddr + self.fileoff
    }
}

/// `mach_header_64` of an `MH_KEXT_BUNDLE`.
pub(super) fn mach_header(
    h: &mut Vec<u8>,
    cputype: u32,
    cpusubtype: u32,
    ncmds: u32,
    sizeofcmds: usize,
) {
    push_u32(h, MH_MAGIC_64);
    push_u32(h, cputype);
    push_u32(h, cpusubtype);
    push_u32(h, MH_KEXT_BUNDLE);
    push_u32(h, ncmds);
    push_u32(h, sizeofcmds as u32);
    push_u32(h, KEXT_HEADER_FLAGS);
    push_u32(h, 0); // reserved
}

/// An `LC_SEGMENT_64` with its `section_64`s. A section's file offset is its
/// address's offset in the segment added to the segment's file offset (0 for
/// zerofill); `reserved1`/`reserved2` carry the indirect-symbol index and the
/// stub size of stub and GOT sections.
pub(super) fn segment_command(h: &mut Vec<u8>, seg: &Segment<'_>) {
    push_u32(h, LC_SEGMENT_64);
    push_u32(
        h,
        (SEGMENT_COMMAND_64_SIZE + seg.sections.len() * SECTION_64_SIZE) as u32,
    );
    push_name16(h, seg.name);
    push_u64(h, seg.vmaddr);
    push_u64(h, seg.vmsize);
    push_u64(h, seg.fileoff);
    push_u64(h, seg.filesize);
    push_u32(h, seg.prot); // maxprot
    push_u32(h, seg.prot); // initprot
    push_u32(h, seg.sections.len() as u32);
    push_u32(h, 0); // flags
    for s in &seg.sections {
        push_name16(h, &s.sectname);
        push_name16(h, &s.segname);
        push_u64(h, s.addr);
        push_u64(h, s.size);
        push_u32(
            h,
            if s.zerofill {
                0
            } else {
                seg.file_offset(s.addr) as u32
            },
        );
        push_u32(h, s.align);
        push_u32(h, 0); // reloff
        push_u32(h, 0); // nreloc
        push_u32(h, s.flags);
        push_u32(h, s.reserved1);
        push_u32(h, s.reserved2);
        push_u32(h, 0); // reserved3
    }
}

/// `LC_SYMTAB`.
pub(super) fn symtab_command(
    h: &mut Vec<u8>,
    symoff: u64,
    nsyms: usize,
    stroff: u64,
    strsize: usize,
) {
    push_u32(h, LC_SYMTAB);
    push_u32(h, SYMTAB_COMMAND_SIZE as u32);
    push_u32(h, symoff as u32);
    push_u32(h, nsyms as u32);
    push_u32(h, stroff as u32);
    push_u32(h, strsize as u32);
}

/// A table in `__LINKEDIT`: (file offset, count); the offset is written as 0
/// when the table is empty, as ld64 does.
#[derive(Clone, Copy, Default)]
pub(super) struct Table {
    pub off: u64,
    pub count: usize,
}

impl Table {
    fn push(self, h: &mut Vec<u8>) {
        push_u32(h, if self.count == 0 { 0 } else { self.off as u32 });
        push_u32(h, self.count as u32);
    }
}

/// `LC_DYSYMTAB` of a kext: the three symbol ranges (locals, external
/// definitions, undefined), no table of contents, module or reference tables.
pub(super) struct Dysymtab {
    pub nlocal: usize,
    pub nextdef: usize,
    pub nundef: usize,
    /// Indirect symbol table (arm64e: stubs and GOT slots).
    pub indirect: Table,
    /// External relocations (x86_64).
    pub extrel: Table,
    /// Local relocations (x86_64).
    pub locrel: Table,
}

/// Writes `LC_DYSYMTAB`.
pub(super) fn dysymtab_command(h: &mut Vec<u8>, d: &Dysymtab) {
    push_u32(h, LC_DYSYMTAB);
    push_u32(h, DYSYMTAB_COMMAND_SIZE as u32);
    for v in [
        0,
        d.nlocal,
        d.nlocal,
        d.nextdef,
        d.nlocal + d.nextdef,
        d.nundef,
    ] {
        push_u32(h, v as u32);
    }
    for _ in 0..6 {
        push_u32(h, 0); // tocoff, ntoc, modtaboff, nmodtab, extrefsymoff, nextrefsyms
    }
    d.indirect.push(h);
    d.extrel.push(h);
    d.locrel.push(h);
}

/// `LC_UUID` with a zero UUID; returns where the UUID is, for
/// [`file_image`] to stamp once the file is complete.
pub(super) fn uuid_command(h: &mut Vec<u8>) -> usize {
    push_u32(h, LC_UUID);
    push_u32(h, UUID_COMMAND_SIZE as u32);
    let at = h.len();
    h.extend_from_slice(&[0; 16]);
    at
}

/// `LC_SOURCE_VERSION`.
pub(super) fn source_version_command(h: &mut Vec<u8>, version: u64) {
    push_u32(h, LC_SOURCE_VERSION);
    push_u32(h, SOURCE_VERSION_COMMAND_SIZE as u32);
    push_u64(h, version);
}

/// A `linkedit_data_command` (`LC_DYLD_CHAINED_FIXUPS`, `LC_SEGMENT_SPLIT_INFO`).
pub(super) fn linkedit_data_command(h: &mut Vec<u8>, cmd: u32, off: u64, size: usize) {
    push_u32(h, cmd);
    push_u32(h, LINKEDIT_DATA_COMMAND_SIZE as u32);
    push_u32(h, off as u32);
    push_u32(h, size as u32);
}

/// The end of the file, refused past 4 GiB (32-bit offsets in the load commands).
pub(super) fn file_end(linkedit_off: u64, linkedit_size: u64) -> Result<u64, LinkError> {
    let end = linkedit_off + linkedit_size;
    if end > u64::from(u32::MAX) {
        return Err(LinkError::TooLarge {
            what: format!("file size {end:#x}"),
        });
    }
    Ok(end)
}

/// The file: header and load commands, each segment's file-backed section
/// bytes at their file offsets, `__LINKEDIT` at `linkedit_off`; then the
/// content-derived LC_UUID stamped at `uuid_at`.
pub(super) fn file_image(
    header: &[u8],
    uuid_at: usize,
    segments: &[Segment<'_>],
    linkedit_off: u64,
    linkedit: &[u8],
) -> Vec<u8> {
    let end = linkedit_off as usize + linkedit.len();
    let mut file = vec![0u8; end];
    file[..header.len()].copy_from_slice(header);
    for seg in segments {
        for s in seg.sections.iter().filter(|s| !s.zerofill) {
            let off = seg.file_offset(s.addr) as usize;
            file[off..][..s.data.len()].copy_from_slice(&s.data);
        }
    }
    file[linkedit_off as usize..].copy_from_slice(linkedit);
    stamp_uuid(&mut file, uuid_at);
    file
}
