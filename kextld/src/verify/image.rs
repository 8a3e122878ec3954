//! A bounds-checked, read-only view of one thin 64-bit little-endian Mach-O.
//!
//! [`Image::parse`] reads the header, load commands, sections, symbol table and
//! LC_DYSYMTAB relocations. Problems that stop parsing are returned as a message;
//! problems that only make part of the image unreadable are recorded in
//! [`Image::problems`] and leave that part empty, so the checks can run on the rest.

use super::consts as macho;

/// Reads `N` bytes at `off`, or `None` past the end.
fn array<const N: usize>(data: &[u8], off: u64) -> Option<[u8; N]> {
    let start = usize::try_from(off).ok()?;
    data.get(start..start.checked_add(N)?)?.try_into().ok()
}

pub(super) fn u16_at(data: &[u8], off: u64) -> Option<u16> {
    array(data, off).map(u16::from_le_bytes)
}
pub(super) fn u32_at(data: &[u8], off: u64) -> Option<u32> {
    array(data, off).map(u32::from_le_bytes)
}
pub(super) fn u64_at(data: &[u8], off: u64) -> Option<u64> {
    array(data, off).map(u64::from_le_bytes)
}
pub(super) fn be_u32_at(data: &[u8], off: u64) -> Option<u32> {
    array(data, off).map(u32::from_be_bytes)
}

/// `data[off..off + len]`, or `None` if any of it is outside `data`.
pub(super) fn slice_at(data: &[u8], off: u64, len: u64) -> Option<&[u8]> {
    let start = usize::try_from(off).ok()?;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    data.get(start..end)
}

/// A fixed-size, NUL-padded Mach-O name (segment or section), lossily decoded.
fn name16(data: &[u8], off: u64) -> Option<String> {
    let raw: [u8; 16] = array(data, off)?;
    let end = raw.iter().position(|&b| b == 0).unwrap_or(16);
    Some(String::from_utf8_lossy(&raw[..end]).into_owned())
}

#[derive(Debug, Clone)]
pub(super) struct Header {
    pub magic: u32,
    pub cputype: u32,
    pub cpusubtype: u32,
    pub filetype: u32,
    pub ncmds: u32,
    pub sizeofcmds: u32,
    pub flags: u32,
}

pub(super) const HEADER_SIZE: u64 = 32;

#[derive(Debug, Clone)]
pub(super) struct LoadCommand {
    pub cmd: u32,
    pub offset: u64,
}

#[derive(Debug, Clone)]
pub(super) struct Segment {
    pub name: String,
    pub vmaddr: u64,
    pub vmsize: u64,
    pub fileoff: u64,
    pub filesize: u64,
    pub maxprot: u32,
    pub initprot: u32,
}

impl Segment {
    pub fn end(&self) -> u64 {
        self.vmaddr.saturating_add(self.vmsize)
    }
    pub fn writable(&self) -> bool {
        (self.initprot | self.maxprot) & macho::VM_PROT_WRITE != 0
    }
}

#[derive(Debug, Clone)]
pub(super) struct Section {
    pub segname: String,
    pub sectname: String,
    pub addr: u64,
    pub size: u64,
    pub offset: u32,
    pub nreloc: u32,
    pub flags: u32,
    /// Index into [`Image::segments`] of the segment command holding it.
    pub segment: usize,
}

impl Section {
    pub fn end(&self) -> u64 {
        self.addr.saturating_add(self.size)
    }
    pub fn contains(&self, addr: u64, len: u64) -> bool {
        addr >= self.addr && addr.checked_add(len).is_some_and(|e| e <= self.end())
    }
    pub fn is_zerofill(&self) -> bool {
        matches!(
            self.flags & macho::SECTION_TYPE,
            macho::S_ZEROFILL | macho::S_GB_ZEROFILL | macho::S_THREAD_LOCAL_ZEROFILL
        )
    }
    pub fn has_code(&self) -> bool {
        self.flags & (macho::S_ATTR_PURE_INSTRUCTIONS | macho::S_ATTR_SOME_INSTRUCTIONS) != 0
            || (self.segname == "__TEXT" && self.sectname == "__text")
    }
    pub fn display(&self) -> String {
        format!("{},{}", self.segname, self.sectname)
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) struct SymtabCmd {
    pub symoff: u32,
    pub nsyms: u32,
    pub stroff: u32,
    pub strsize: u32,
}

#[derive(Debug, Clone, Copy, Default)]
pub(super) struct DysymtabCmd {
    pub ilocalsym: u32,
    pub nlocalsym: u32,
    pub iextdefsym: u32,
    pub nextdefsym: u32,
    pub iundefsym: u32,
    pub nundefsym: u32,
    /// tocoff, ntoc, modtaboff, nmodtab, extrefsymoff, nextrefsyms, indirectsymoff, nindirectsyms
    pub unused_tables: [u32; 8],
    pub extreloff: u32,
    pub nextrel: u32,
    pub locreloff: u32,
    pub nlocrel: u32,
}

#[derive(Debug, Clone)]
pub(super) struct Symbol {
    pub name: String,
    pub n_type: u8,
    pub n_sect: u8,
    pub n_desc: u16,
    pub n_value: u64,
}

impl Symbol {
    pub fn is_stab(&self) -> bool {
        self.n_type & macho::N_STAB != 0
    }
    pub fn is_ext(&self) -> bool {
        self.n_type & macho::N_EXT != 0
    }
    pub fn kind(&self) -> u8 {
        self.n_type & macho::N_TYPE
    }
    pub fn is_undefined(&self) -> bool {
        !self.is_stab() && self.kind() == macho::N_UNDF
    }
    /// Defined in a section (not a stab, not absolute).
    pub fn in_section(&self) -> bool {
        !self.is_stab() && self.kind() == macho::N_SECT
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Reloc {
    /// `r_address` as stored (relative to vmaddr 0 for a linked image).
    pub address: u32,
    pub symbolnum: u32,
    pub pcrel: bool,
    pub length: u8,
    pub is_extern: bool,
    pub rtype: u8,
}

impl Reloc {
    fn parse(data: &[u8], off: u64) -> Option<Reloc> {
        let address = u32_at(data, off)?;
        let info = u32_at(data, off + 4)?;
        Some(Reloc {
            address,
            symbolnum: info & 0x00FF_FFFF,
            pcrel: info & (1 << 24) != 0,
            length: ((info >> 25) & 3) as u8,
            is_extern: info & (1 << 27) != 0,
            rtype: (info >> 28) as u8,
        })
    }
    /// Scattered relocations have the top bit of `r_address` set.
    pub fn is_scattered(&self) -> bool {
        self.address & macho::R_SCATTERED != 0
    }
}

pub(super) struct Image<'a> {
    pub data: &'a [u8],
    pub header: Header,
    pub commands: Vec<LoadCommand>,
    pub segments: Vec<Segment>,
    /// Sections in load-command order; section ordinal `n` is `sections[n - 1]`.
    pub sections: Vec<Section>,
    pub symtab: Option<SymtabCmd>,
    pub dysymtab: Option<DysymtabCmd>,
    pub symbols: Vec<Symbol>,
    pub local_relocs: Vec<Reloc>,
    pub external_relocs: Vec<Reloc>,
    /// Parts of the image that could not be read (each makes a `macho` error).
    pub problems: Vec<String>,
    /// `LC_FUNCTION_STARTS` (dataoff, datasize), if present.
    pub function_starts: Option<(u32, u32)>,
    /// `LC_DATA_IN_CODE` (dataoff, datasize), if present.
    pub data_in_code: Option<(u32, u32)>,
    /// The minimum macOS of `LC_BUILD_VERSION`/`LC_VERSION_MIN_MACOSX`, if present.
    pub min_os_version: Option<u32>,
    /// Defined section symbols sorted by address (indices into `symbols`).
    by_addr: Vec<usize>,
}

impl<'a> Image<'a> {
    /// Parses the header and load commands; fails only if those are unreadable.
    pub fn parse(data: &'a [u8]) -> Result<Image<'a>, String> {
        let field = |i: u64| u32_at(data, i * 4);
        let (Some(magic), Some(cputype), Some(cpusubtype), Some(filetype)) =
            (field(0), field(1), field(2), field(3))
        else {
            return Err(format!(
                "file is {} bytes, too short for a Mach-O header (32 bytes)",
                data.len()
            ));
        };
        if magic != macho::MH_MAGIC_64 {
            let what = match magic {
                macho::MH_MAGIC | macho::MH_CIGAM => "a 32-bit Mach-O",
                macho::MH_CIGAM_64 => "a big-endian Mach-O",
                _ => "not a Mach-O file",
            };
            return Err(format!(
                "magic is {magic:#010x} ({what}); a kext binary must be a 64-bit little-endian \
                 Mach-O (MH_MAGIC_64 0xfeedfacf)"
            ));
        }
        let (Some(ncmds), Some(sizeofcmds), Some(flags)) = (field(4), field(5), field(6)) else {
            return Err(format!(
                "file is {} bytes, too short for a Mach-O header",
                data.len()
            ));
        };
        let header = Header {
            magic,
            cputype,
            cpusubtype,
            filetype,
            ncmds,
            sizeofcmds,
            flags,
        };
        let cmds_end = HEADER_SIZE + u64::from(sizeofcmds);
        if cmds_end > data.len() as u64 {
            return Err(format!(
                "load commands end at {cmds_end:#x} (sizeofcmds {sizeofcmds:#x}) but the file is \
                 only {:#x} bytes: truncated or corrupt",
                data.len()
            ));
        }
        let mut image = Image {
            data,
            header,
            commands: Vec::new(),
            segments: Vec::new(),
            sections: Vec::new(),
            symtab: None,
            dysymtab: None,
            symbols: Vec::new(),
            local_relocs: Vec::new(),
            external_relocs: Vec::new(),
            problems: Vec::new(),
            function_starts: None,
            data_in_code: None,
            min_os_version: None,
            by_addr: Vec::new(),
        };
        image.parse_commands(cmds_end)?;
        image.parse_symbols();
        image.parse_relocs();
        let mut by_addr: Vec<usize> = (0..image.symbols.len())
            .filter(|&i| image.symbols[i].in_section())
            .collect();
        // External symbols last among equal addresses: lookups take the last one.
        by_addr.sort_by_key(|&i| (image.symbols[i].n_value, image.symbols[i].is_ext(), i));
        image.by_addr = by_addr;
        Ok(image)
    }

    fn parse_commands(&mut self, cmds_end: u64) -> Result<(), String> {
        let data = self.data;
        let mut off = HEADER_SIZE;
        for i in 0..self.header.ncmds {
            let (Some(cmd), Some(size)) = (u32_at(data, off), u32_at(data, off + 4)) else {
                return Err(format!(
                    "load command {i} at {off:#x} is past the end of the file"
                ));
            };
            let end = off + u64::from(size);
            if size < 8 || size % 8 != 0 || end > cmds_end {
                return Err(format!(
                    "load command {i} ({cmd:#x}) at {off:#x} has cmdsize {size:#x}: must be a \
                     multiple of 8 and end within sizeofcmds ({:#x})",
                    self.header.sizeofcmds
                ));
            }
            let short = || {
                format!("load command {i} ({cmd:#x}) at {off:#x} is too short ({size:#x} bytes)")
            };
            let f32 = |k: u64| u32_at(data, off + k).filter(|_| off + k + 4 <= end);
            match cmd {
                macho::LC_SEGMENT_64 => self.parse_segment(off, end).ok_or_else(short)?,
                macho::LC_SYMTAB => {
                    let (Some(symoff), Some(nsyms), Some(stroff), Some(strsize)) =
                        (f32(8), f32(12), f32(16), f32(20))
                    else {
                        return Err(short());
                    };
                    self.symtab = Some(SymtabCmd {
                        symoff,
                        nsyms,
                        stroff,
                        strsize,
                    });
                }
                macho::LC_DYSYMTAB => {
                    let mut v = [0u32; 18];
                    for (k, slot) in v.iter_mut().enumerate() {
                        *slot = f32(8 + 4 * k as u64).ok_or_else(short)?;
                    }
                    self.dysymtab = Some(DysymtabCmd {
                        ilocalsym: v[0],
                        nlocalsym: v[1],
                        iextdefsym: v[2],
                        nextdefsym: v[3],
                        iundefsym: v[4],
                        nundefsym: v[5],
                        unused_tables: [v[6], v[7], v[8], v[9], v[10], v[11], v[12], v[13]],
                        extreloff: v[14],
                        nextrel: v[15],
                        locreloff: v[16],
                        nlocrel: v[17],
                    });
                }
                macho::LC_FUNCTION_STARTS => {
                    self.function_starts = f32(8).zip(f32(12));
                }
                macho::LC_DATA_IN_CODE => {
                    self.data_in_code = f32(8).zip(f32(12));
                }
                macho::LC_VERSION_MIN_MACOSX => self.min_os_version = f32(8),
                macho::LC_BUILD_VERSION => self.min_os_version = f32(12),
                _ => {}
            }
            self.commands.push(LoadCommand { cmd, offset: off });
            off = end;
        }
        Ok(())
    }

    fn parse_segment(&mut self, off: u64, end: u64) -> Option<()> {
        let data = self.data;
        if off + 72 > end {
            return None;
        }
        let seg = Segment {
            name: name16(data, off + 8)?,
            vmaddr: u64_at(data, off + 24)?,
            vmsize: u64_at(data, off + 32)?,
            fileoff: u64_at(data, off + 40)?,
            filesize: u64_at(data, off + 48)?,
            maxprot: u32_at(data, off + 56)?,
            initprot: u32_at(data, off + 60)?,
        };
        let nsects = u32_at(data, off + 64)?;
        if off + 72 + u64::from(nsects) * 80 > end {
            return None;
        }
        let segment = self.segments.len();
        self.segments.push(seg);
        for s in 0..u64::from(nsects) {
            let so = off + 72 + s * 80;
            self.sections.push(Section {
                sectname: name16(data, so)?,
                segname: name16(data, so + 16)?,
                addr: u64_at(data, so + 32)?,
                size: u64_at(data, so + 40)?,
                offset: u32_at(data, so + 48)?,
                nreloc: u32_at(data, so + 60)?,
                flags: u32_at(data, so + 64)?,
                segment,
            });
        }
        Some(())
    }

    fn parse_symbols(&mut self) {
        let Some(st) = self.symtab else { return };
        let data = self.data;
        let Some(strtab) = slice_at(data, st.stroff.into(), st.strsize.into()) else {
            self.problems.push(format!(
                "LC_SYMTAB string table ({:#x}+{:#x}) lies outside the file ({:#x} bytes)",
                st.stroff,
                st.strsize,
                data.len()
            ));
            return;
        };
        let Some(syms) = slice_at(data, st.symoff.into(), u64::from(st.nsyms) * 16) else {
            self.problems.push(format!(
                "LC_SYMTAB symbol table ({:#x}, {} entries) lies outside the file ({:#x} bytes)",
                st.symoff,
                st.nsyms,
                data.len()
            ));
            return;
        };
        let mut bad_names = 0usize;
        for entry in syms.chunks_exact(16) {
            let strx = u32_at(entry, 0).unwrap_or(0) as usize;
            let name = match strtab.get(strx..) {
                Some(rest) => match rest.iter().position(|&b| b == 0) {
                    Some(n) => String::from_utf8_lossy(&rest[..n]).into_owned(),
                    None => {
                        bad_names += 1;
                        String::from("<unterminated name>")
                    }
                },
                None => {
                    bad_names += 1;
                    format!("<bad string index {strx:#x}>")
                }
            };
            self.symbols.push(Symbol {
                name,
                n_type: entry[4],
                n_sect: entry[5],
                n_desc: u16_at(entry, 6).unwrap_or(0),
                n_value: u64_at(entry, 8).unwrap_or(0),
            });
        }
        if bad_names > 0 {
            self.problems.push(format!(
                "{bad_names} symbol names lie outside or run off the end of the string table"
            ));
        }
    }

    fn parse_relocs(&mut self) {
        let Some(dy) = self.dysymtab else { return };
        for (external, off, n) in [
            (false, dy.locreloff, dy.nlocrel),
            (true, dy.extreloff, dy.nextrel),
        ] {
            let what = if external { "external" } else { "local" };
            let Some(table) = slice_at(self.data, off.into(), u64::from(n) * 8) else {
                self.problems.push(format!(
                    "LC_DYSYMTAB {what} relocations ({off:#x}, {n} entries) lie outside the file"
                ));
                continue;
            };
            let relocs: Vec<Reloc> = table
                .chunks_exact(8)
                .filter_map(|e| Reloc::parse(e, 0))
                .collect();
            if external {
                self.external_relocs = relocs;
            } else {
                self.local_relocs = relocs;
            }
        }
    }

    /// The kext's minimum macOS (from LC_BUILD_VERSION or LC_VERSION_MIN_MACOSX).
    pub fn min_os(&self) -> Option<crate::MinOs> {
        self.min_os_version.map(|v| crate::MinOs {
            major: v >> 16,
            minor: (v >> 8) & 0xff,
        })
    }

    /// Addresses of `LC_FUNCTION_STARTS` (ULEB128 deltas from `__TEXT`'s vmaddr).
    pub fn function_start_addrs(&self) -> Vec<u64> {
        let Some((off, size)) = self.function_starts else {
            return Vec::new();
        };
        let Some(bytes) = slice_at(self.data, off.into(), size.into()) else {
            return Vec::new();
        };
        let mut addr = self.segments.first().map_or(0, |s| s.vmaddr);
        let mut out = Vec::new();
        let (mut value, mut shift) = (0u64, 0u32);
        for &b in bytes {
            if shift < 64 {
                value |= u64::from(b & 0x7f) << shift;
            }
            shift += 7;
            if b & 0x80 != 0 {
                continue;
            }
            if value == 0 {
                break;
            }
            addr = addr.wrapping_add(value);
            out.push(addr);
            (value, shift) = (0, 0);
        }
        out
    }

    /// `LC_DATA_IN_CODE` entries as address ranges `[start, end)`: data (jump
    /// tables, literal pools) that the compiler placed among instructions.
    pub fn data_in_code_ranges(&self) -> Vec<(u64, u64)> {
        let Some((off, size)) = self.data_in_code else {
            return Vec::new();
        };
        let Some(bytes) = slice_at(self.data, off.into(), size.into()) else {
            return Vec::new();
        };
        bytes
            .chunks_exact(8)
            .filter_map(|e| {
                let fileoff = u64::from(u32_at(e, 0)?);
                let len = u64::from(u16_at(e, 4)?);
                // Entries give file offsets; map them through the segments.
                let seg = self.segments.iter().find(|s| {
                    fileoff >= s.fileoff && fileoff < s.fileoff.saturating_add(s.filesize)
                })?;
                let addr = seg.vmaddr + (fileoff - seg.fileoff);
                Some((addr, addr + len))
            })
            .collect()
    }

    /// The section with 1-based ordinal `n`.
    pub fn section(&self, n: u32) -> Option<&Section> {
        self.sections.get(usize::try_from(n).ok()?.checked_sub(1)?)
    }

    /// The section whose address range holds `[addr, addr + len)`.
    pub fn section_at(&self, addr: u64, len: u64) -> Option<(usize, &Section)> {
        self.sections
            .iter()
            .enumerate()
            .find(|(_, s)| s.size > 0 && s.contains(addr, len))
    }

    /// The file bytes backing `[addr, addr + len)`, if that range is file-backed.
    pub fn bytes_at(&self, addr: u64, len: u64) -> Option<&'a [u8]> {
        let seg = self.segments.iter().find(|s| {
            addr >= s.vmaddr
                && addr
                    .checked_add(len)
                    .is_some_and(|e| e <= s.vmaddr.saturating_add(s.filesize))
        })?;
        slice_at(self.data, seg.fileoff.checked_add(addr - seg.vmaddr)?, len)
    }

    /// Defined section symbols (indices into `symbols`) sorted by address.
    pub fn symbols_by_addr(&self) -> &[usize] {
        &self.by_addr
    }

    /// The defined symbol at or before `addr` in the same section, with the offset.
    pub fn enclosing_symbol(&self, addr: u64) -> Option<(&Symbol, u64)> {
        let (sect_index, _) = self.section_at(addr, 1)?;
        let ordinal = sect_index + 1;
        let pos = self
            .by_addr
            .partition_point(|&i| self.symbols[i].n_value <= addr);
        self.by_addr[..pos]
            .iter()
            .rev()
            .map(|&i| &self.symbols[i])
            .find(|s| usize::from(s.n_sect) == ordinal)
            .map(|s| (s, addr - s.n_value))
    }

    /// `symbol+offset` (or `section+offset`) for an address, for messages.
    pub fn describe(&self, addr: u64) -> String {
        match self.enclosing_symbol(addr) {
            Some((s, 0)) => format!("{} ({addr:#x})", s.name),
            Some((s, off)) => format!("{}+{off:#x} ({addr:#x})", s.name),
            None => match self.section_at(addr, 1) {
                Some((_, sect)) => {
                    format!("{}+{:#x} ({addr:#x})", sect.display(), addr - sect.addr)
                }
                None => format!("{addr:#x}"),
            },
        }
    }

    /// The name of the function (defined symbol) containing `addr`, for messages.
    pub fn function_name(&self, addr: u64) -> String {
        match self.enclosing_symbol(addr) {
            Some((s, _)) => s.name.clone(),
            None => self.describe(addr),
        }
    }
}
