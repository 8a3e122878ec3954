//! An independent decoder for the arm64e parts of a kext, written for the
//! tests and sharing no code with kextld (which writes them): chained fixups
//! (`LC_DYLD_CHAINED_FIXUPS`) and split-segment info v2
//! (`LC_SEGMENT_SPLIT_INFO`). It depends on nothing but std.
//!
//! Glossary:
//! - **chained fixups**: instead of relocation tables, every pointer slot that
//!   needs fixing at load time holds an encoded 64-bit value, and the slots of
//!   one page form a linked list (`next`, in units of the format's *stride*).
//!   `LC_DYLD_CHAINED_FIXUPS` points at a header, the first slot of each page's
//!   chain ("page starts", per segment), the imports table and a symbol pool.
//! - **rebase**: a slot holding a pointer into the image itself; **bind**: a
//!   slot to be filled with an imported symbol's address (by import ordinal).
//! - **auth** (arm64e): the slot is signed when fixed up, with a key, a 16-bit
//!   diversity and optionally the slot's address (`addr_div`).
//! - **pointer format 1** (`DYLD_CHAINED_PTR_ARM64E`, stride 8; a plain
//!   rebase's target is a vm address, an auth rebase's a vm offset from the
//!   image start) and **7** (`DYLD_CHAINED_PTR_ARM64E_KERNEL`, stride 4, every
//!   rebase target a vm offset from the start of `__TEXT`) share one bit layout.
//!   Formats 2 (`DYLD_CHAINED_PTR_64`) and 6 (`DYLD_CHAINED_PTR_64_OFFSET`),
//!   which `ld64.lld` emits for plain arm64, are decoded too so that the shared
//!   machinery can be compared with `llvm-objdump --dyld-info`, which walks
//!   those formats but not 1 or 7.
//! - **split-seg info v2**: for the kernel-collection builder, which moves
//!   segments apart, every place whose content depends on the distance between
//!   two sections: (kind, from section, from offset, to section, to offset).
//!   Section index 0 stands for the Mach-O header (start of `__TEXT`); 1..n are
//!   the sections in load-command order.
//!
//! Facts from (read, not copied): dyld `include/mach-o/fixup-chains.h` and
//! `common/MachOLayout`/`MachOAnalyzer` (walking), ld64 `src/ld/LinkEdit.hpp`
//! and dyld `mach_o/SplitSeg.cpp` (split-seg v2 grammar and kind numbers).
//!
//! Every error is a [`DecodeError`]; no input makes this module panic.

use std::fmt;

/// What went wrong, with where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DecodeError {}

pub type Result<T> = std::result::Result<T, DecodeError>;

fn err<T>(msg: impl Into<String>) -> Result<T> {
    Err(DecodeError(msg.into()))
}

// ---------------------------------------------------------------- bytes

fn slice<'d>(data: &'d [u8], at: u64, len: u64, what: &str) -> Result<&'d [u8]> {
    let end = at.checked_add(len);
    match end {
        Some(end) if end <= data.len() as u64 => Ok(&data[at as usize..end as usize]),
        _ => err(format!(
            "{what}: {len} bytes at 0x{at:x} run past the end (0x{:x})",
            data.len()
        )),
    }
}

fn u16_at(data: &[u8], at: u64, what: &str) -> Result<u16> {
    let b = slice(data, at, 2, what)?;
    Ok(u16::from_le_bytes([b[0], b[1]]))
}

fn u32_at(data: &[u8], at: u64, what: &str) -> Result<u32> {
    let b = slice(data, at, 4, what)?;
    Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn u64_at(data: &[u8], at: u64, what: &str) -> Result<u64> {
    let b = slice(data, at, 8, what)?;
    let mut w = [0u8; 8];
    w.copy_from_slice(b);
    Ok(u64::from_le_bytes(w))
}

fn name16(data: &[u8], at: u64, what: &str) -> Result<String> {
    let b = slice(data, at, 16, what)?;
    let end = b.iter().position(|&c| c == 0).unwrap_or(16);
    Ok(String::from_utf8_lossy(&b[..end]).into_owned())
}

fn c_string(data: &[u8], at: u64, what: &str) -> Result<String> {
    let rest = data.get(at as usize..).filter(|_| at <= data.len() as u64);
    let Some(rest) = rest else {
        return err(format!("{what}: offset 0x{at:x} is outside its table"));
    };
    let Some(end) = rest.iter().position(|&c| c == 0) else {
        return err(format!("{what}: string at 0x{at:x} has no terminating NUL"));
    };
    match std::str::from_utf8(&rest[..end]) {
        Ok(s) => Ok(s.to_owned()),
        Err(_) => err(format!("{what}: string at 0x{at:x} is not UTF-8")),
    }
}

/// Field `bits` wide at bit `shift` of `v`.
const fn bits(v: u64, shift: u32, width: u32) -> u64 {
    (v >> shift) & ((1u64 << width) - 1)
}

// ---------------------------------------------------------------- Mach-O

const MH_MAGIC_64: u32 = 0xfeed_facf;
const CPU_TYPE_ARM64: u32 = 0x0100_000c;
const LC_SEGMENT_64: u32 = 0x19;
const LC_SEGMENT_SPLIT_INFO: u32 = 0x1e;
const LC_DYLD_CHAINED_FIXUPS: u32 = 0x8000_0034;

/// A segment from `LC_SEGMENT_64`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub name: String,
    pub vmaddr: u64,
    pub vmsize: u64,
    pub fileoff: u64,
    pub filesize: u64,
    pub maxprot: u32,
    pub initprot: u32,
}

/// A section header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub segname: String,
    pub sectname: String,
    pub addr: u64,
    pub size: u64,
    pub offset: u32,
}

/// A parsed thin arm64 Mach-O (64-bit, little-endian): just what the
/// decoders need.
#[derive(Debug)]
pub struct MachO<'a> {
    pub data: &'a [u8],
    pub cpusubtype: u32,
    pub filetype: u32,
    /// (cmd, offset of the command in the file) in load-command order.
    pub load_commands: Vec<(u32, u64)>,
    pub segments: Vec<Segment>,
    /// All sections in load-command order (split-seg index i+1 is `sections[i]`).
    pub sections: Vec<Section>,
}

impl<'a> MachO<'a> {
    /// Parses the header, load commands, segments and sections.
    pub fn parse(data: &'a [u8]) -> Result<MachO<'a>> {
        let magic = u32_at(data, 0, "mach header")?;
        if magic != MH_MAGIC_64 {
            return err(format!(
                "not a thin 64-bit little-endian Mach-O (magic 0x{magic:08x})"
            ));
        }
        let cputype = u32_at(data, 4, "mach header")?;
        if cputype != CPU_TYPE_ARM64 {
            return err(format!("cputype 0x{cputype:08x} is not arm64"));
        }
        let cpusubtype = u32_at(data, 8, "mach header")?;
        let filetype = u32_at(data, 12, "mach header")?;
        let ncmds = u32_at(data, 16, "mach header")?;
        let sizeofcmds = u32_at(data, 20, "mach header")? as u64;
        let cmds_end = 32 + sizeofcmds;
        slice(data, 32, sizeofcmds, "load commands")?;

        let mut m = MachO {
            data,
            cpusubtype,
            filetype,
            load_commands: vec![],
            segments: vec![],
            sections: vec![],
        };
        let mut at = 32u64;
        for i in 0..ncmds {
            let cmd = u32_at(data, at, "load command")?;
            let size = u32_at(data, at + 4, "load command")? as u64;
            if size < 8 || at + size > cmds_end {
                return err(format!(
                    "load command {i} (0x{cmd:x}) at 0x{at:x} has bad size {size}"
                ));
            }
            m.load_commands.push((cmd, at));
            if cmd == LC_SEGMENT_64 {
                if size < 72 {
                    return err(format!("LC_SEGMENT_64 at 0x{at:x} is too short ({size})"));
                }
                let nsects = u32_at(data, at + 64, "segment")? as u64;
                if 72 + nsects * 80 > size {
                    return err(format!(
                        "LC_SEGMENT_64 at 0x{at:x}: {nsects} sections do not fit in {size} bytes"
                    ));
                }
                m.segments.push(Segment {
                    name: name16(data, at + 8, "segment name")?,
                    vmaddr: u64_at(data, at + 24, "segment")?,
                    vmsize: u64_at(data, at + 32, "segment")?,
                    fileoff: u64_at(data, at + 40, "segment")?,
                    filesize: u64_at(data, at + 48, "segment")?,
                    maxprot: u32_at(data, at + 56, "segment")?,
                    initprot: u32_at(data, at + 60, "segment")?,
                });
                for s in 0..nsects {
                    let h = at + 72 + s * 80;
                    m.sections.push(Section {
                        sectname: name16(data, h, "section name")?,
                        segname: name16(data, h + 16, "section segname")?,
                        addr: u64_at(data, h + 32, "section")?,
                        size: u64_at(data, h + 40, "section")?,
                        offset: u32_at(data, h + 48, "section")?,
                    });
                }
            }
            at += size;
        }
        Ok(m)
    }

    /// The vm address of the image start: `__TEXT`'s (the segment mapping file
    /// offset 0), which is what "vm offset" targets are relative to.
    pub fn base_address(&self) -> Result<u64> {
        match self
            .segments
            .iter()
            .find(|s| s.fileoff == 0 && s.filesize > 0)
        {
            Some(s) => Ok(s.vmaddr),
            None => err("no segment maps the start of the file (no __TEXT)"),
        }
    }

    /// The segment containing vm address `addr` (`len` bytes), if any.
    pub fn segment_at(&self, addr: u64, len: u64) -> Option<&Segment> {
        self.segments.iter().find(|s| {
            addr >= s.vmaddr && addr.saturating_add(len) <= s.vmaddr.saturating_add(s.vmsize)
        })
    }

    /// The 8 bytes at vm address `addr`, read from the file.
    fn read_u64_vm(&self, addr: u64) -> Result<u64> {
        let Some(seg) = self.segment_at(addr, 8) else {
            return err(format!("fixup at 0x{addr:x} lies in no segment"));
        };
        let in_seg = addr - seg.vmaddr;
        if in_seg + 8 > seg.filesize {
            return err(format!(
                "fixup at 0x{addr:x} lies in the zero-fill part of {}",
                seg.name
            ));
        }
        u64_at(self.data, seg.fileoff + in_seg, "fixup slot")
    }

    /// (dataoff, datasize) of the `linkedit_data_command` `cmd`, if present.
    fn linkedit_data(&self, cmd: u32) -> Result<Option<&'a [u8]>> {
        let Some(&(_, at)) = self.load_commands.iter().find(|(c, _)| *c == cmd) else {
            return Ok(None);
        };
        let off = u32_at(self.data, at + 8, "linkedit_data_command")? as u64;
        let size = u32_at(self.data, at + 12, "linkedit_data_command")? as u64;
        slice(self.data, off, size, "linkedit data").map(Some)
    }

    /// Decodes `LC_DYLD_CHAINED_FIXUPS`; `Ok(None)` when the command is absent.
    pub fn chained_fixups(&self) -> Result<Option<ChainedFixups>> {
        match self.linkedit_data(LC_DYLD_CHAINED_FIXUPS)? {
            Some(blob) => decode_chained_fixups(self, blob).map(Some),
            None => Ok(None),
        }
    }

    /// Decodes `LC_SEGMENT_SPLIT_INFO` (v2 only); `Ok(None)` when absent.
    pub fn split_seg_info(&self) -> Result<Option<Vec<SplitSegRef>>> {
        match self.linkedit_data(LC_SEGMENT_SPLIT_INFO)? {
            Some(blob) => decode_split_seg_v2(blob).map(Some),
            None => Ok(None),
        }
    }

    /// The vm address a split-seg (section index, offset) names: index 0 is
    /// the Mach-O header, i > 0 is `sections[i - 1]`.
    pub fn split_seg_address(&self, section_index: u64, offset: u64) -> Result<u64> {
        let start = if section_index == 0 {
            self.base_address()?
        } else {
            match self.sections.get(section_index as usize - 1) {
                Some(s) => s.addr,
                None => {
                    return err(format!(
                        "split-seg section index {section_index} names no section"
                    ));
                }
            }
        };
        start
            .checked_add(offset)
            .map_or_else(|| err("split-seg address overflows"), Ok)
    }
}

// ---------------------------------------------------------------- chained fixups

/// `dyld_chained_fixups_header`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixupsHeader {
    pub fixups_version: u32,
    pub starts_offset: u32,
    pub imports_offset: u32,
    pub symbols_offset: u32,
    pub imports_count: u32,
    /// 1 `DYLD_CHAINED_IMPORT`, 2 `_ADDEND`, 3 `_ADDEND64`.
    pub imports_format: u32,
    /// 0 uncompressed (zlib, 1, is rejected).
    pub symbols_format: u32,
}

/// `DYLD_CHAINED_PTR_START_NONE`: no fixups in this page.
pub const PTR_START_NONE: u16 = 0xFFFF;
/// `DYLD_CHAINED_PTR_START_MULTI`: the page has several chains, listed from
/// the overflow index in the low 15 bits.
pub const PTR_START_MULTI: u16 = 0x8000;
/// `DYLD_CHAINED_PTR_START_LAST`: the last of a page's overflow entries.
pub const PTR_START_LAST: u16 = 0x8000;

/// `DYLD_CHAINED_PTR_ARM64E`.
pub const PTR_ARM64E: u16 = 1;
/// `DYLD_CHAINED_PTR_64`.
pub const PTR_64: u16 = 2;
/// `DYLD_CHAINED_PTR_64_OFFSET`.
pub const PTR_64_OFFSET: u16 = 6;
/// `DYLD_CHAINED_PTR_ARM64E_KERNEL`.
pub const PTR_ARM64E_KERNEL: u16 = 7;

/// `dyld_chained_starts_in_segment`, with the index of the segment it is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentStarts {
    /// Index into [`MachO::segments`].
    pub segment_index: usize,
    /// Offset of this struct from `dyld_chained_starts_in_image`.
    pub info_offset: u32,
    pub size: u32,
    pub page_size: u16,
    pub pointer_format: u16,
    /// Vm offset of the segment from the image start.
    pub segment_offset: u64,
    pub max_valid_pointer: u32,
    pub page_count: u16,
    /// `page_count` entries, then any overflow entries of `MULTI` pages.
    pub page_start: Vec<u16>,
}

/// One entry of the imports table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Import {
    /// Sign-extended: -1 main executable, -2 flat lookup, -3 weak lookup.
    pub lib_ordinal: i32,
    pub weak_import: bool,
    pub name_offset: u32,
    pub name: String,
    /// Only imports formats 2 and 3 have one; 0 otherwise.
    pub addend: i64,
}

/// What one slot becomes at load time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FixupKind {
    /// A plain pointer to `target` (unslid vm address) with `high8` as its top byte.
    Rebase { target: u64, high8: u8 },
    /// A signed pointer to `target` (unslid vm address).
    AuthRebase {
        target: u64,
        key: u8,
        addr_div: bool,
        diversity: u16,
    },
    /// The address of import `name`, plus `addend` (the pointer's and the import's).
    Bind {
        name: String,
        lib_ordinal: i32,
        addend: i64,
    },
    /// The signed address of import `name` (no addend in the auth layout).
    AuthBind {
        name: String,
        lib_ordinal: i32,
        key: u8,
        addr_div: bool,
        diversity: u16,
    },
}

/// One fixup: the slot's vm address, its raw 64-bit content and its meaning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fixup {
    pub vmaddr: u64,
    pub raw: u64,
    pub pointer_format: u16,
    pub kind: FixupKind,
}

/// A decoded `LC_DYLD_CHAINED_FIXUPS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainedFixups {
    pub header: FixupsHeader,
    /// `seg_count` of `dyld_chained_starts_in_image`.
    pub seg_count: u32,
    /// Only the segments with a non-zero `seg_info_offset`.
    pub starts: Vec<SegmentStarts>,
    pub imports: Vec<Import>,
    /// Every fixup, in chain-walk order (segment, page, chain).
    pub fixups: Vec<Fixup>,
}

/// Stride (bytes per `next` unit) of the supported pointer formats.
pub fn stride(pointer_format: u16) -> Result<u64> {
    match pointer_format {
        PTR_ARM64E => Ok(8),
        PTR_64 | PTR_64_OFFSET | PTR_ARM64E_KERNEL => Ok(4),
        other => err(format!("unsupported chained pointer format {other}")),
    }
}

/// The decoded fields of one chained pointer, before import names are
/// attached: `(next, kind)` where binds carry the import ordinal in `name`'s
/// place. Exposed for tests of the bit layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawPointer {
    Rebase {
        target: u64,
        high8: u8,
    },
    AuthRebase {
        target: u64,
        key: u8,
        addr_div: bool,
        diversity: u16,
    },
    Bind {
        ordinal: u32,
        addend: i64,
    },
    AuthBind {
        ordinal: u32,
        key: u8,
        addr_div: bool,
        diversity: u16,
    },
}

/// Splits a chained pointer of `pointer_format` into `(next, fields)`. Rebase
/// targets are the raw field (vm address or vm offset, as the format says).
pub fn decode_pointer(pointer_format: u16, raw: u64) -> Result<(u64, RawPointer)> {
    match pointer_format {
        PTR_ARM64E | PTR_ARM64E_KERNEL => {
            // bit 63 auth, bit 62 bind, bits 51..62 next (11 bits).
            let auth = bits(raw, 63, 1) == 1;
            let bind = bits(raw, 62, 1) == 1;
            let next = bits(raw, 51, 11);
            let fields = match (auth, bind) {
                (false, false) => RawPointer::Rebase {
                    target: bits(raw, 0, 43),
                    high8: bits(raw, 43, 8) as u8,
                },
                (false, true) => {
                    if bits(raw, 16, 16) != 0 {
                        return err(format!("arm64e bind 0x{raw:016x} has non-zero bits 16..32"));
                    }
                    // addend: 19-bit signed at bit 32.
                    let addend = ((bits(raw, 32, 19) << 45) as i64) >> 45;
                    RawPointer::Bind {
                        ordinal: bits(raw, 0, 16) as u32,
                        addend,
                    }
                }
                (true, false) => RawPointer::AuthRebase {
                    target: bits(raw, 0, 32),
                    diversity: bits(raw, 32, 16) as u16,
                    addr_div: bits(raw, 48, 1) == 1,
                    key: bits(raw, 49, 2) as u8,
                },
                (true, true) => {
                    if bits(raw, 16, 16) != 0 {
                        return err(format!(
                            "arm64e auth bind 0x{raw:016x} has non-zero bits 16..32"
                        ));
                    }
                    RawPointer::AuthBind {
                        ordinal: bits(raw, 0, 16) as u32,
                        diversity: bits(raw, 32, 16) as u16,
                        addr_div: bits(raw, 48, 1) == 1,
                        key: bits(raw, 49, 2) as u8,
                    }
                }
            };
            Ok((next, fields))
        }
        PTR_64 | PTR_64_OFFSET => {
            // bit 63 bind, bits 51..63 next (12 bits).
            let next = bits(raw, 51, 12);
            let fields = if bits(raw, 63, 1) == 1 {
                RawPointer::Bind {
                    ordinal: bits(raw, 0, 24) as u32,
                    addend: bits(raw, 24, 8) as i64,
                }
            } else {
                RawPointer::Rebase {
                    target: bits(raw, 0, 36),
                    high8: bits(raw, 36, 8) as u8,
                }
            };
            Ok((next, fields))
        }
        other => err(format!("unsupported chained pointer format {other}")),
    }
}

/// Ordinals above 0xF0 (0xFFF0) are the special negative ones, as in dyld.
fn lib_ordinal(v: u64, width: u32) -> i32 {
    let special = (1u64 << width) - 16;
    if v > special {
        v as i32 - (1i32 << width)
    } else {
        v as i32
    }
}

fn decode_chained_fixups(m: &MachO<'_>, blob: &[u8]) -> Result<ChainedFixups> {
    let header = FixupsHeader {
        fixups_version: u32_at(blob, 0, "chained fixups header")?,
        starts_offset: u32_at(blob, 4, "chained fixups header")?,
        imports_offset: u32_at(blob, 8, "chained fixups header")?,
        symbols_offset: u32_at(blob, 12, "chained fixups header")?,
        imports_count: u32_at(blob, 16, "chained fixups header")?,
        imports_format: u32_at(blob, 20, "chained fixups header")?,
        symbols_format: u32_at(blob, 24, "chained fixups header")?,
    };
    if header.fixups_version != 0 {
        return err(format!(
            "chained fixups version {} (only 0 is defined)",
            header.fixups_version
        ));
    }
    if header.symbols_format != 0 {
        return err(format!(
            "symbols_format {} (compressed symbol pools are not supported)",
            header.symbols_format
        ));
    }

    // Imports and their names.
    let symbols = blob
        .get(header.symbols_offset as usize..)
        .filter(|_| header.symbols_offset as usize <= blob.len());
    let Some(symbols) = symbols else {
        return err(format!(
            "symbols_offset 0x{:x} is past the end of the fixups data",
            header.symbols_offset
        ));
    };
    let entry_size: u64 = match header.imports_format {
        1 => 4,
        2 => 8,
        3 => 16,
        f => return err(format!("imports_format {f} is not 1, 2 or 3")),
    };
    let table = slice(
        blob,
        header.imports_offset as u64,
        entry_size * header.imports_count as u64,
        "imports table",
    )?;
    let mut imports = Vec::new();
    for i in 0..header.imports_count as u64 {
        let at = i * entry_size;
        let (lib_ordinal, weak_import, name_offset, addend) = match header.imports_format {
            1 | 2 => {
                let v = u32_at(table, at, "import")? as u64;
                let ordinal = lib_ordinal(bits(v, 0, 8), 8);
                let addend = if header.imports_format == 2 {
                    u32_at(table, at + 4, "import")? as i32 as i64
                } else {
                    0
                };
                (ordinal, bits(v, 8, 1) == 1, bits(v, 9, 23) as u32, addend)
            }
            _ => {
                let v = u64_at(table, at, "import")?;
                let ordinal = lib_ordinal(bits(v, 0, 16), 16);
                (
                    ordinal,
                    bits(v, 16, 1) == 1,
                    bits(v, 32, 32) as u32,
                    u64_at(table, at + 8, "import")? as i64,
                )
            }
        };
        let name = c_string(symbols, name_offset as u64, &format!("import {i} name"))?;
        imports.push(Import {
            lib_ordinal,
            weak_import,
            name_offset,
            name,
            addend,
        });
    }

    // Starts.
    let image = header.starts_offset as u64;
    let seg_count = u32_at(blob, image, "dyld_chained_starts_in_image")?;
    if seg_count as usize > m.segments.len() {
        return err(format!(
            "starts_in_image lists {seg_count} segments; the file has {}",
            m.segments.len()
        ));
    }
    let base = m.base_address()?;
    let mut starts = Vec::new();
    let mut fixups = Vec::new();
    for seg in 0..seg_count as u64 {
        let info_offset = u32_at(blob, image + 4 + 4 * seg, "seg_info_offset")?;
        if info_offset == 0 {
            continue;
        }
        let at = image + info_offset as u64;
        let what = format!("starts of segment {seg}");
        let size = u32_at(blob, at, &what)?;
        let page_count = u16_at(blob, at + 20, &what)?;
        // page_start[] begins at byte 22; its length comes from `size`.
        if (size as u64) < 22 + 2 * page_count as u64 {
            return err(format!(
                "{what}: size {size} is too small for {page_count} pages"
            ));
        }
        let entries = (size as u64 - 22) / 2;
        let page_start = (0..entries)
            .map(|i| u16_at(blob, at + 22 + 2 * i, &what))
            .collect::<Result<Vec<u16>>>()?;
        let s = SegmentStarts {
            segment_index: seg as usize,
            info_offset,
            size,
            page_size: u16_at(blob, at + 4, &what)?,
            pointer_format: u16_at(blob, at + 6, &what)?,
            segment_offset: u64_at(blob, at + 8, &what)?,
            max_valid_pointer: u32_at(blob, at + 16, &what)?,
            page_count,
            page_start,
        };
        walk_segment(m, base, &s, &imports, &mut fixups)?;
        starts.push(s);
    }
    Ok(ChainedFixups {
        header,
        seg_count,
        starts,
        imports,
        fixups,
    })
}

fn walk_segment(
    m: &MachO<'_>,
    base: u64,
    s: &SegmentStarts,
    imports: &[Import],
    out: &mut Vec<Fixup>,
) -> Result<()> {
    let stride = stride(s.pointer_format)?;
    if s.page_size == 0 {
        return err(format!("segment {}: page_size 0", s.segment_index));
    }
    let seg_start = base.checked_add(s.segment_offset).ok_or_else(|| {
        DecodeError(format!(
            "segment {}: segment_offset overflows",
            s.segment_index
        ))
    })?;
    let page_entry = |i: usize| -> Result<u16> {
        match s.page_start.get(i) {
            Some(v) => Ok(*v),
            None => err(format!(
                "segment {}: page_start index {i} is out of range",
                s.segment_index
            )),
        }
    };
    for page in 0..s.page_count as u64 {
        let start = page_entry(page as usize)?;
        if start == PTR_START_NONE {
            continue;
        }
        let page_addr = seg_start.wrapping_add(page * s.page_size as u64);
        if start & PTR_START_MULTI == 0 {
            walk_chain(
                m,
                base,
                page_addr.wrapping_add(start as u64),
                stride,
                s.pointer_format,
                imports,
                out,
            )?;
        } else {
            let mut i = (start & !PTR_START_MULTI) as usize;
            loop {
                let e = page_entry(i)?;
                let first = page_addr.wrapping_add((e & !PTR_START_LAST) as u64);
                walk_chain(m, base, first, stride, s.pointer_format, imports, out)?;
                if e & PTR_START_LAST != 0 {
                    break;
                }
                i += 1;
            }
        }
    }
    Ok(())
}

fn walk_chain(
    m: &MachO<'_>,
    base: u64,
    first: u64,
    stride: u64,
    format: u16,
    imports: &[Import],
    out: &mut Vec<Fixup>,
) -> Result<()> {
    let mut addr = first;
    loop {
        let raw = m.read_u64_vm(addr)?;
        let (next, fields) = decode_pointer(format, raw)?;
        let import = |ordinal: u32| -> Result<&Import> {
            match imports.get(ordinal as usize) {
                Some(i) => Ok(i),
                None => err(format!(
                    "fixup at 0x{addr:x} binds import {ordinal}; there are {}",
                    imports.len()
                )),
            }
        };
        // Targets stored as offsets are relative to the image start.
        let absolute = |target: u64, is_offset: bool| {
            if is_offset {
                base.wrapping_add(target)
            } else {
                target
            }
        };
        let kind = match fields {
            RawPointer::Rebase { target, high8 } => {
                let is_offset = matches!(format, PTR_ARM64E_KERNEL | PTR_64_OFFSET);
                FixupKind::Rebase {
                    target: absolute(target, is_offset),
                    high8,
                }
            }
            RawPointer::AuthRebase {
                target,
                key,
                addr_div,
                diversity,
            } => FixupKind::AuthRebase {
                target: absolute(target, true),
                key,
                addr_div,
                diversity,
            },
            RawPointer::Bind { ordinal, addend } => {
                let i = import(ordinal)?;
                FixupKind::Bind {
                    name: i.name.clone(),
                    lib_ordinal: i.lib_ordinal,
                    addend: addend + i.addend,
                }
            }
            RawPointer::AuthBind {
                ordinal,
                key,
                addr_div,
                diversity,
            } => {
                let i = import(ordinal)?;
                FixupKind::AuthBind {
                    name: i.name.clone(),
                    lib_ordinal: i.lib_ordinal,
                    key,
                    addr_div,
                    diversity,
                }
            }
        };
        out.push(Fixup {
            vmaddr: addr,
            raw,
            pointer_format: format,
            kind,
        });
        if next == 0 {
            return Ok(());
        }
        // `next` > 0 always moves forward, and read_u64_vm fails once the
        // chain leaves its segment, so the walk ends.
        addr = match addr.checked_add(next * stride) {
            Some(a) => a,
            None => {
                return err(format!(
                    "chain from 0x{first:x} runs past the end of the address space"
                ));
            }
        };
    }
}

// ---------------------------------------------------------------- split-seg info v2

/// `DYLD_CACHE_ADJ_V2_FORMAT`: the first byte of v2 split-seg info.
pub const SPLIT_SEG_V2_FORMAT: u8 = 0x7F;

/// The `DYLD_CACHE_ADJ_V2_*` kinds (ld64 `MachOFileAbstraction.hpp`, dyld
/// `mach_o/SplitSeg.h`).
pub mod kind {
    pub const POINTER_32: u8 = 0x01;
    pub const POINTER_64: u8 = 0x02;
    pub const DELTA_32: u8 = 0x03;
    pub const DELTA_64: u8 = 0x04;
    pub const ARM64_ADRP: u8 = 0x05;
    pub const ARM64_OFF12: u8 = 0x06;
    pub const ARM64_BR26: u8 = 0x07;
    pub const ARM_MOVW_MOVT: u8 = 0x08;
    pub const ARM_BR24: u8 = 0x09;
    pub const THUMB_MOVW_MOVT: u8 = 0x0A;
    pub const THUMB_BR22: u8 = 0x0B;
    pub const IMAGE_OFF_32: u8 = 0x0C;
    pub const THREADED_POINTER_64: u8 = 0x0D;
}

/// One split-seg reference: the content at (from section, from offset)
/// depends on the address of (to section, to offset).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SplitSegRef {
    pub kind: u8,
    pub from_section: u64,
    pub from_offset: u64,
    pub to_section: u64,
    pub to_offset: u64,
}

fn uleb(data: &[u8], at: &mut usize, what: &str) -> Result<u64> {
    let mut value = 0u64;
    let mut shift = 0u32;
    loop {
        let Some(&byte) = data.get(*at) else {
            return err(format!(
                "split-seg info: {what}: ULEB128 runs past the end (at byte {at})"
            ));
        };
        *at += 1;
        let low = (byte & 0x7f) as u64;
        if shift >= 64 || (shift > 0 && low.checked_shl(shift).map(|v| v >> shift) != Some(low)) {
            return err(format!(
                "split-seg info: {what}: ULEB128 overflows 64 bits (ending at byte {at})"
            ));
        }
        value |= low << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
        shift += 7;
    }
}

/// Decodes split-seg info v2:
///
/// ```text
/// 0x7F <count> FromToSection{count} (zero padding)
/// FromToSection :== <from-section> <to-section> <count> ToOffset{count}
/// ToOffset      :== <to-offset-delta> <count> FromOffset{count}
/// FromOffset    :== <kind> <count> <from-offset-delta>{count}
/// ```
///
/// all ULEB128. To-offsets accumulate within a FromToSection, from-offsets
/// within a FromOffset group. Kinds above 13 are errors, as in dyld.
pub fn decode_split_seg_v2(blob: &[u8]) -> Result<Vec<SplitSegRef>> {
    match blob.first() {
        Some(&SPLIT_SEG_V2_FORMAT) => {}
        Some(b) => {
            return err(format!(
                "split-seg info starts with 0x{b:02x}, not 0x7F (v1 is not supported)"
            ));
        }
        None => return err("split-seg info is empty"),
    }
    let mut at = 1usize;
    let mut out = Vec::new();
    let sections = uleb(blob, &mut at, "section-pair count")?;
    for _ in 0..sections {
        let from_section = uleb(blob, &mut at, "from-section index")?;
        let to_section = uleb(blob, &mut at, "to-section index")?;
        let to_count = uleb(blob, &mut at, "to-offset count")?;
        let mut to_offset = 0u64;
        for _ in 0..to_count {
            let delta = uleb(blob, &mut at, "to-offset delta")?;
            to_offset = to_offset
                .checked_add(delta)
                .ok_or_else(|| DecodeError("to-offset overflows".into()))?;
            let kinds = uleb(blob, &mut at, "from-offset group count")?;
            for _ in 0..kinds {
                let kind = uleb(blob, &mut at, "kind")?;
                if kind == 0 || kind > kind::THREADED_POINTER_64 as u64 {
                    return err(format!("split-seg info: bad kind {kind} (at byte {at})"));
                }
                let count = uleb(blob, &mut at, "from-offset count")?;
                let mut from_offset = 0u64;
                for _ in 0..count {
                    let delta = uleb(blob, &mut at, "from-offset delta")?;
                    from_offset = from_offset
                        .checked_add(delta)
                        .ok_or_else(|| DecodeError("from-offset overflows".into()))?;
                    out.push(SplitSegRef {
                        kind: kind as u8,
                        from_section,
                        from_offset,
                        to_section,
                        to_offset,
                    });
                }
            }
        }
    }
    if let Some(pos) = blob[at..].iter().position(|&b| b != 0) {
        return err(format!(
            "split-seg info: non-zero byte after the last entry (at byte {})",
            at + pos
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    //! The decoder is checked three ways: hand-encoded vectors from the
    //! layouts in dyld's `fixup-chains.h` and the split-seg grammar; images
    //! linked by `ld64.lld-19` compared with `llvm-objdump-19` (format 2, and
    //! the same image re-encoded as formats 1 and 7 from objdump's reading of
    //! it); and malformed inputs, which must give errors, never panics.
    //! Only std is used, so this module also runs as
    //! `rustc --edition 2024 --test tests/src/arm64e.rs`.
    use super::*;
    use std::path::PathBuf;
    use std::process::Command;

    // ---- packing per fixup-chains.h (test side, written from the layout) ----

    /// arm64e rebase: target:43 high8:8 next:11 bind:1=0 auth:1=0.
    fn e_rebase(target: u64, high8: u64, next: u64) -> u64 {
        target | high8 << 43 | next << 51
    }
    /// arm64e bind: ordinal:16 zero:16 addend:19 next:11 bind:1=1 auth:1=0.
    fn e_bind(ordinal: u64, addend: i64, next: u64) -> u64 {
        ordinal | ((addend as u64) & 0x7FFFF) << 32 | next << 51 | 1 << 62
    }
    /// arm64e auth rebase: target:32 diversity:16 addrDiv:1 key:2 next:11 bind:1=0 auth:1=1.
    fn e_auth_rebase(target: u64, diversity: u64, addr_div: u64, key: u64, next: u64) -> u64 {
        target | diversity << 32 | addr_div << 48 | key << 49 | next << 51 | 1 << 63
    }
    /// arm64e auth bind: ordinal:16 zero:16 diversity:16 addrDiv:1 key:2 next:11 bind:1=1 auth:1=1.
    fn e_auth_bind(ordinal: u64, diversity: u64, addr_div: u64, key: u64, next: u64) -> u64 {
        ordinal | diversity << 32 | addr_div << 48 | key << 49 | next << 51 | 1 << 62 | 1 << 63
    }

    #[test]
    fn arm64e_pointer_layout_literals() {
        // Worked by hand from the bit layout.
        assert_eq!(
            e_auth_rebase(0x1234, 0xE4FE, 0, 0, 2),
            0x8010_E4FE_0000_1234
        );
        assert_eq!(
            decode_pointer(PTR_ARM64E_KERNEL, 0x8010_E4FE_0000_1234),
            Ok((
                2,
                RawPointer::AuthRebase {
                    target: 0x1234,
                    key: 0,
                    addr_div: false,
                    diversity: 0xE4FE
                }
            ))
        );
        assert_eq!(
            decode_pointer(PTR_ARM64E, 0x8005_0042_0000_0010),
            Ok((
                0,
                RawPointer::AuthRebase {
                    target: 0x10,
                    key: 2,
                    addr_div: true,
                    diversity: 0x42
                }
            ))
        );
        assert_eq!(e_bind(5, -3, 0), 0x4007_FFFD_0000_0005);
        assert_eq!(
            decode_pointer(PTR_ARM64E, 0x4007_FFFD_0000_0005),
            Ok((
                0,
                RawPointer::Bind {
                    ordinal: 5,
                    addend: -3
                }
            ))
        );
        assert_eq!(
            decode_pointer(PTR_ARM64E, 0x4003_FFFF_0000_0005),
            Ok((
                0,
                RawPointer::Bind {
                    ordinal: 5,
                    addend: 0x3FFFF
                }
            ))
        );
        assert_eq!(e_rebase(0x7_0000_1000, 0x80, 1), 0x000C_0007_0000_1000);
        assert_eq!(
            decode_pointer(PTR_ARM64E, 0x000C_0007_0000_1000),
            Ok((
                1,
                RawPointer::Rebase {
                    target: 0x7_0000_1000,
                    high8: 0x80
                }
            ))
        );
        assert_eq!(
            decode_pointer(PTR_ARM64E_KERNEL, 0xFFFF_0000_0000_FFFF),
            Ok((
                0x7FF,
                RawPointer::AuthBind {
                    ordinal: 0xFFFF,
                    key: 3,
                    addr_div: true,
                    diversity: 0
                }
            ))
        );
        assert!(
            decode_pointer(PTR_ARM64E, 0x4000_0000_0001_0000).is_err(),
            "bind with non-zero reserved bits"
        );
        assert!(
            decode_pointer(3, 0).is_err(),
            "32-bit formats are not supported"
        );
        // Format 2: bind ordinal:24 addend:8 reserved:19 next:12 bind:1.
        assert_eq!(
            decode_pointer(PTR_64, 0x8020_0000_0C00_0000),
            Ok((
                4,
                RawPointer::Bind {
                    ordinal: 0,
                    addend: 0xC
                }
            ))
        );
    }

    // ---- a synthetic kext-like image (pointer format 7) ----

    fn put32(v: &mut Vec<u8>, x: u32) {
        v.extend_from_slice(&x.to_le_bytes());
    }
    fn put64(v: &mut Vec<u8>, x: u64) {
        v.extend_from_slice(&x.to_le_bytes());
    }
    fn name16(v: &mut Vec<u8>, s: &str) {
        let mut b = [0u8; 16];
        b[..s.len()].copy_from_slice(s.as_bytes());
        v.extend_from_slice(&b);
    }

    struct Seg {
        name: &'static str,
        vm: u64,
        size: u64,
        prot: u32,
        sects: Vec<(&'static str, u64, u64)>,
    }

    /// A Mach-O with `__TEXT` (0..0x4000), `__DATA` (0x4000..0x8000) and
    /// `__LINKEDIT` (0x8000..) holding `fixups` and `split`; `slots` are
    /// (vm address, raw value) written into `__DATA`.
    fn synthetic(slots: &[(u64, u64)], fixups: &[u8], split: &[u8]) -> Vec<u8> {
        let segs = [
            Seg {
                name: "__TEXT",
                vm: 0,
                size: 0x4000,
                prot: 5,
                sects: vec![("__text", 0x1000, 0x800)],
            },
            Seg {
                name: "__DATA",
                vm: 0x4000,
                size: 0x4000,
                prot: 3,
                sects: vec![("__data", 0x4000, 0x4000)],
            },
            Seg {
                name: "__LINKEDIT",
                vm: 0x8000,
                size: 0x4000,
                prot: 1,
                sects: vec![],
            },
        ];
        let mut cmds = Vec::new();
        let mut ncmds = 0;
        for s in &segs {
            put32(&mut cmds, LC_SEGMENT_64);
            put32(&mut cmds, 72 + 80 * s.sects.len() as u32);
            name16(&mut cmds, s.name);
            for x in [s.vm, s.size, s.vm, s.size] {
                put64(&mut cmds, x);
            }
            for x in [s.prot, s.prot, s.sects.len() as u32, 0] {
                put32(&mut cmds, x);
            }
            for (sect, addr, size) in &s.sects {
                name16(&mut cmds, sect);
                name16(&mut cmds, s.name);
                put64(&mut cmds, *addr);
                put64(&mut cmds, *size);
                for x in [*addr as u32, 2, 0, 0, 0, 0, 0, 0] {
                    put32(&mut cmds, x);
                }
            }
            ncmds += 1;
        }
        let split_off = 0x8000 + fixups.len().next_multiple_of(8) as u32;
        for (cmd, off, size) in [
            (LC_DYLD_CHAINED_FIXUPS, 0x8000, fixups.len()),
            (LC_SEGMENT_SPLIT_INFO, split_off, split.len()),
        ] {
            for x in [cmd, 16, off, size as u32] {
                put32(&mut cmds, x);
            }
            ncmds += 1;
        }
        let mut f = Vec::new();
        for x in [
            MH_MAGIC_64,
            CPU_TYPE_ARM64,
            0xC000_0002,
            11,
            ncmds,
            cmds.len() as u32,
            0x85,
            0,
        ] {
            put32(&mut f, x);
        }
        f.extend_from_slice(&cmds);
        f.resize(0xC000, 0);
        for (addr, raw) in slots {
            f[*addr as usize..*addr as usize + 8].copy_from_slice(&raw.to_le_bytes());
        }
        f[0x8000..0x8000 + fixups.len()].copy_from_slice(fixups);
        f[split_off as usize..split_off as usize + split.len()].copy_from_slice(split);
        f
    }

    /// The chained-fixups blob: one starts entry for `__DATA` (segment 1).
    fn fixups_blob(
        format: u16,
        page_start: &[u16],
        page_count: u16,
        imports: &[(u8, &str)],
    ) -> Vec<u8> {
        let mut starts = Vec::new();
        put32(&mut starts, 3); // seg_count
        for x in [0, 16, 0] {
            put32(&mut starts, x); // seg_info_offset[]: only __DATA
        }
        let size = 22 + 2 * page_start.len() as u32;
        put32(&mut starts, size);
        starts.extend_from_slice(&0x1000u16.to_le_bytes());
        starts.extend_from_slice(&format.to_le_bytes());
        put64(&mut starts, 0x4000); // segment_offset
        put32(&mut starts, 0);
        starts.extend_from_slice(&page_count.to_le_bytes());
        for p in page_start {
            starts.extend_from_slice(&p.to_le_bytes());
        }
        let mut pool = vec![0u8]; // name offsets start at 1, as ld64 does
        let mut table = Vec::new();
        for (ordinal, name) in imports {
            put32(&mut table, *ordinal as u32 | (pool.len() as u32) << 9);
            pool.extend_from_slice(name.as_bytes());
            pool.push(0);
        }
        let starts_offset = 28u32.next_multiple_of(8);
        let imports_offset = (starts_offset + starts.len() as u32).next_multiple_of(4);
        let symbols_offset = imports_offset + table.len() as u32;
        let mut b = Vec::new();
        for x in [
            0,
            starts_offset,
            imports_offset,
            symbols_offset,
            imports.len() as u32,
            1,
            0,
        ] {
            put32(&mut b, x);
        }
        b.resize(starts_offset as usize, 0);
        b.extend_from_slice(&starts);
        b.resize(imports_offset as usize, 0);
        b.extend_from_slice(&table);
        b.extend_from_slice(&pool);
        b
    }

    /// The split-seg vector, hand-encoded from the grammar (see
    /// [`decode_split_seg_v2`]); no tool here emits LC_SEGMENT_SPLIT_INFO.
    const SPLIT: &[u8] = &[
        0x7F, 0x03, // v2, three section pairs
        0x01, 0x02, 0x02, // __text -> __data, two to-offsets
        0x10, 0x02, // to 0x10, two kind groups
        0x05, 0x02, 0x04, 0x20, // ADRP at 0x4, 0x24
        0x06, 0x01, 0x08, // OFF12 at 0x8
        0x30, 0x01, // to 0x40
        0x05, 0x01, 0x80, 0x02, // ADRP at 0x100 (two-byte ULEB)
        0x02, 0x01, 0x02, // __data -> __text
        0x00, 0x01, 0x0D, 0x01, 0x00, // to 0x0: THREADED_POINTER_64 at 0x0
        0x80, 0x01, 0x01, 0x02, 0x01, 0x08, // to 0x80: POINTER_64 at 0x8
        0x01, 0x01, 0x01, // __text -> __text
        0x80, 0x04, 0x01, 0x07, 0x01, 0x44, // to 0x200: BR26 at 0x44
        0x00, 0x00, 0x00, // padding to 8 bytes
    ];

    fn split_expected() -> Vec<SplitSegRef> {
        let r = |kind, from_section, from_offset, to_section, to_offset| SplitSegRef {
            kind,
            from_section,
            from_offset,
            to_section,
            to_offset,
        };
        vec![
            r(kind::ARM64_ADRP, 1, 0x4, 2, 0x10),
            r(kind::ARM64_ADRP, 1, 0x24, 2, 0x10),
            r(kind::ARM64_OFF12, 1, 0x8, 2, 0x10),
            r(kind::ARM64_ADRP, 1, 0x100, 2, 0x40),
            r(kind::THREADED_POINTER_64, 2, 0x0, 1, 0x0),
            r(kind::POINTER_64, 2, 0x8, 1, 0x80),
            r(kind::ARM64_BR26, 1, 0x44, 1, 0x200),
        ]
    }

    /// Page 0: four slots at stride 4 (two only 4-byte aligned); page 1: none;
    /// page 2: two chains through the MULTI overflow entries; page 3: none.
    fn kext_like() -> Vec<u8> {
        let slots = [
            (0x4000, e_auth_rebase(0x1234, 0xE4FE, 0, 0, 2)),
            (0x4008, e_rebase(0x2000, 0, 3)),
            (0x4014, e_bind(1, -3, 2)),
            (0x401C, e_auth_bind(0, 0, 1, 0, 0)),
            (0x6010, e_rebase(0x4000, 0x12, 0)),
            (0x6020, e_auth_rebase(0x1000, 0x0A98, 0, 0, 0)),
        ];
        let pages = [
            0x0000,
            PTR_START_NONE,
            PTR_START_MULTI | 4,
            PTR_START_NONE,
            0x10,
            PTR_START_LAST | 0x20,
        ];
        let blob = fixups_blob(
            PTR_ARM64E_KERNEL,
            &pages,
            4,
            &[(0xFE, "_IOLog"), (0xFE, "_sflt_register")],
        );
        synthetic(&slots, &blob, SPLIT)
    }

    #[test]
    fn decodes_a_kext_like_format7_image() {
        let file = kext_like();
        let m = MachO::parse(&file).unwrap();
        assert_eq!(m.cpusubtype, 0xC000_0002);
        let cf = m.chained_fixups().unwrap().unwrap();
        assert_eq!(cf.header.imports_format, 1);
        assert_eq!(cf.seg_count, 3);
        assert_eq!(cf.starts.len(), 1);
        let s = &cf.starts[0];
        assert_eq!(
            (
                s.segment_index,
                s.page_size,
                s.pointer_format,
                s.segment_offset,
                s.page_count
            ),
            (1, 0x1000, 7, 0x4000, 4)
        );
        assert_eq!(
            cf.imports
                .iter()
                .map(|i| (i.lib_ordinal, i.name.as_str()))
                .collect::<Vec<_>>(),
            [(-2, "_IOLog"), (-2, "_sflt_register")]
        );
        let kinds: Vec<(u64, FixupKind)> = cf
            .fixups
            .iter()
            .map(|f| (f.vmaddr, f.kind.clone()))
            .collect();
        let ext = |n: &str| n.to_string();
        assert_eq!(
            kinds,
            vec![
                (
                    0x4000,
                    FixupKind::AuthRebase {
                        target: 0x1234,
                        key: 0,
                        addr_div: false,
                        diversity: 0xE4FE
                    }
                ),
                (
                    0x4008,
                    FixupKind::Rebase {
                        target: 0x2000,
                        high8: 0
                    }
                ),
                (
                    0x4014,
                    FixupKind::Bind {
                        name: ext("_sflt_register"),
                        lib_ordinal: -2,
                        addend: -3
                    }
                ),
                (
                    0x401C,
                    FixupKind::AuthBind {
                        name: ext("_IOLog"),
                        lib_ordinal: -2,
                        key: 0,
                        addr_div: true,
                        diversity: 0
                    }
                ),
                (
                    0x6010,
                    FixupKind::Rebase {
                        target: 0x4000,
                        high8: 0x12
                    }
                ),
                (
                    0x6020,
                    FixupKind::AuthRebase {
                        target: 0x1000,
                        key: 0,
                        addr_div: false,
                        diversity: 0x0A98
                    }
                ),
            ]
        );

        let split = m.split_seg_info().unwrap().unwrap();
        assert_eq!(split, split_expected());
        assert_eq!(m.split_seg_address(0, 0x10).unwrap(), 0x10);
        assert_eq!(m.split_seg_address(1, 0x44).unwrap(), 0x1044);
        assert_eq!(m.split_seg_address(2, 0x8).unwrap(), 0x4008);
        assert!(m.split_seg_address(3, 0).is_err());
    }

    #[test]
    fn malformed_split_seg_info_is_an_error() {
        assert_eq!(decode_split_seg_v2(SPLIT).unwrap(), split_expected());
        assert!(decode_split_seg_v2(&[]).is_err());
        assert!(decode_split_seg_v2(&[0x01, 0x00]).is_err(), "v1");
        assert!(
            decode_split_seg_v2(&[0x7F, 0x01, 0x01, 0x02, 0x01, 0x00, 0x01, 0x0E, 0x01, 0x00])
                .is_err(),
            "kind 14"
        );
        assert!(
            decode_split_seg_v2(&[0x7F, 0x01, 0x01, 0x02, 0x01, 0x00, 0x01, 0x00, 0x01, 0x00])
                .is_err(),
            "kind 0"
        );
        assert!(
            decode_split_seg_v2(&[0x7F, 0x01, 0x01, 0x82]).is_err(),
            "truncated ULEB"
        );
        assert!(
            decode_split_seg_v2(&[
                0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F
            ])
            .is_err(),
            "ULEB > 64 bits"
        );
        assert!(
            decode_split_seg_v2(&[0x7F, 0x00, 0x00, 0x01]).is_err(),
            "garbage after the end"
        );
        assert_eq!(
            decode_split_seg_v2(&[0x7F, 0x00, 0x00, 0x00]).unwrap(),
            vec![]
        );
        for len in 0..SPLIT.len() - 3 {
            assert!(
                decode_split_seg_v2(&SPLIT[..len]).is_err(),
                "truncated to {len}"
            );
        }
    }

    #[test]
    fn malformed_images_are_errors_not_panics() {
        let good = kext_like();
        // Every truncation and every single-byte corruption of the header,
        // load commands and linkedit data decodes to Ok or Err, never panics.
        let decode = |f: &[u8]| -> Result<()> {
            let m = MachO::parse(f)?;
            m.chained_fixups()?;
            m.split_seg_info()?;
            Ok(())
        };
        assert!(decode(&good).is_ok());
        for len in (0..good.len()).step_by(7) {
            let _ = decode(&good[..len]);
        }
        let interesting = (0..0x200)
            .chain(0x4000..0x4024)
            .chain(0x6010..0x6028)
            .chain(0x8000..0x8100);
        for at in interesting {
            for v in [0x00, 0x01, 0x7F, 0x80, 0xFF] {
                let mut f = good.clone();
                f[at] = v;
                let _ = decode(&f);
            }
        }

        let expect_err = |f: Vec<u8>, what: &str| {
            let e = decode(&f).expect_err(what);
            assert!(!e.0.is_empty());
        };
        let mut f = good.clone();
        f[0] = 0xCE;
        expect_err(f, "bad magic");
        let mut f = good.clone();
        f[4] = 7;
        expect_err(f, "x86_64 cputype");
        // A chain whose next runs off __DATA into __LINKEDIT's end.
        let mut f = good.clone();
        f[0x6020..0x6028].copy_from_slice(&e_rebase(0, 0, 0x7FF).to_le_bytes());
        f[0x6020 + 0x7FF * 4..0x6020 + 0x7FF * 4 + 8]
            .copy_from_slice(&e_rebase(0, 0, 0x7FF).to_le_bytes());
        let _ = decode(&f);
        // A bind to an import that does not exist.
        let mut f = good.clone();
        f[0x4014..0x401C].copy_from_slice(&e_bind(9, 0, 2).to_le_bytes());
        expect_err(f, "import ordinal out of range");
        // Pointer format 3 (32-bit) is not supported.
        let blob = fixups_blob(3, &[0], 1, &[]);
        expect_err(synthetic(&[], &blob, SPLIT), "pointer format 3");
        // imports_format 4 does not exist.
        let mut blob = fixups_blob(7, &[0], 1, &[]);
        blob[20] = 4;
        expect_err(synthetic(&[], &blob, SPLIT), "imports format 4");
        // page_count larger than the page_start array.
        let blob = fixups_blob(7, &[0], 2, &[]);
        expect_err(synthetic(&[], &blob, SPLIT), "page_count > entries");
        // MULTI pointing past the array.
        let blob = fixups_blob(7, &[PTR_START_MULTI | 5], 1, &[]);
        expect_err(synthetic(&[], &blob, SPLIT), "overflow index out of range");
    }

    // ---- against ld64.lld-19 and llvm-objdump-19 ----

    fn run(program: &str, args: &[&str]) -> std::result::Result<String, String> {
        let out = Command::new(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run {program}: {e}; install Debian's clang-19, lld-19 and llvm-19")
            });
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(text)
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("prx-arm64e-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    const LIB_C: &str = r#"
extern int ext_func(int);
extern int ext_data;
extern void other_func(void);
static int local_counter = 5;
int (*fp_ext)(int) = ext_func;
int *dp_ext = &ext_data;
int *dp_ext_addend = &ext_data + 3;
int *local_ptr = &local_counter;
static int helper(int x) { return x + local_counter; }
int (*fp_local)(int) = helper;
void *arr[3] = { &local_counter, (void *)helper, &ext_data };
int use(int x) { other_func(); return ext_func(x) + ext_data + helper(x); }
"#;

    /// Links LIB_C for arm64 with chained fixups (ld64.lld-19 rejects
    /// `-fixup_chains` for arm64e, so arm64e images are made below by
    /// re-encoding this one).
    fn lld_dylib(dir: &std::path::Path) -> PathBuf {
        let c = dir.join("lib.c");
        let o = dir.join("lib.o");
        let dylib = dir.join("lib.dylib");
        std::fs::write(&c, LIB_C).unwrap();
        let (c, o, d) = (
            c.to_str().unwrap(),
            o.to_str().unwrap(),
            dylib.to_str().unwrap(),
        );
        run(
            "clang-19",
            &["-target", "arm64-apple-macos11", "-O1", "-c", c, "-o", o],
        )
        .unwrap();
        let link = [
            "-arch",
            "arm64",
            "-platform_version",
            "macos",
            "11.0",
            "11.0",
            "-fixup_chains",
            "-dylib",
        ];
        run(
            "ld64.lld-19",
            &[&link[..], &["-undefined", "dynamic_lookup", o, "-o", d]].concat(),
        )
        .unwrap();
        dylib
    }

    /// One row of `llvm-objdump --macho --dyld-info`.
    #[derive(Debug, Clone, PartialEq)]
    enum Row {
        Rebase {
            addr: u64,
            target: u64,
        },
        Bind {
            addr: u64,
            addend: i64,
            name: String,
        },
    }

    fn hex(s: &str) -> u64 {
        u64::from_str_radix(s.trim_start_matches("0x"), 16)
            .unwrap_or_else(|_| panic!("not hex: {s}"))
    }

    fn dyld_info_rows(text: &str) -> Vec<Row> {
        text.lines()
            .filter_map(|l| {
                let t: Vec<&str> = l.split_whitespace().collect();
                match t.get(4) {
                    Some(&"rebase") => Some(Row::Rebase {
                        addr: hex(t[2]),
                        target: hex(t[5]),
                    }),
                    Some(&"bind") => Some(Row::Bind {
                        addr: hex(t[2]),
                        addend: hex(t[5]) as i64,
                        name: t[7].into(),
                    }),
                    _ => None,
                }
            })
            .collect()
    }

    fn our_rows(cf: &ChainedFixups) -> Vec<Row> {
        cf.fixups
            .iter()
            .map(|f| match &f.kind {
                FixupKind::Rebase { target, .. } => Row::Rebase {
                    addr: f.vmaddr,
                    target: *target,
                },
                FixupKind::Bind { name, addend, .. } => Row::Bind {
                    addr: f.vmaddr,
                    addend: *addend,
                    name: name.clone(),
                },
                other => panic!("unexpected {other:?} in an arm64 image"),
            })
            .collect()
    }

    /// The `key = value` lines of `llvm-objdump --chained-fixups`, value cut
    /// at the first space.
    fn objdump_pairs(text: &str) -> Vec<(String, String)> {
        text.lines()
            .filter_map(|l| l.split_once(" = "))
            .map(|(k, v)| {
                (
                    k.trim().to_string(),
                    v.split_whitespace().next().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    /// The same pairs from our decode, in objdump's order and number style.
    fn our_pairs(cf: &ChainedFixups, info_offsets: &[u32]) -> Vec<(String, String)> {
        let h = &cf.header;
        let mut p: Vec<(String, String)> = [
            ("fixups_version", h.fixups_version),
            ("starts_offset", h.starts_offset),
            ("imports_offset", h.imports_offset),
            ("symbols_offset", h.symbols_offset),
            ("imports_count", h.imports_count),
            ("imports_format", h.imports_format),
            ("symbols_format", h.symbols_format),
            ("seg_count", cf.seg_count),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for (i, o) in info_offsets.iter().enumerate() {
            p.push((format!("seg_offset[{i}]"), o.to_string()));
        }
        for s in &cf.starts {
            p.push(("size".into(), s.size.to_string()));
            p.push(("page_size".into(), format!("0x{:x}", s.page_size)));
            p.push(("pointer_format".into(), s.pointer_format.to_string()));
            p.push(("segment_offset".into(), format!("0x{:x}", s.segment_offset)));
            p.push(("max_valid_pointer".into(), s.max_valid_pointer.to_string()));
            p.push(("page_count".into(), s.page_count.to_string()));
            for (i, v) in s.page_start.iter().take(s.page_count as usize).enumerate() {
                p.push((format!("page_start[{i}]"), v.to_string()));
            }
        }
        for i in &cf.imports {
            p.push(("lib_ordinal".into(), i.lib_ordinal.to_string()));
            p.push(("weak_import".into(), (i.weak_import as u8).to_string()));
            p.push(("name_offset".into(), i.name_offset.to_string()));
        }
        p
    }

    fn info_offsets(cf: &ChainedFixups, m: &MachO<'_>) -> Vec<u32> {
        (0..cf.seg_count as usize)
            .map(|i| {
                cf.starts
                    .iter()
                    .find(|s| s.segment_index == i)
                    .map_or(0, |s| s.info_offset)
            })
            .take(m.segments.len())
            .collect()
    }

    #[test]
    fn matches_llvm_objdump_on_an_lld_image() {
        let dir = scratch("lld");
        let dylib = lld_dylib(&dir);
        let path = dylib.to_str().unwrap();
        let file = std::fs::read(&dylib).unwrap();
        let m = MachO::parse(&file).unwrap();
        let cf = m
            .chained_fixups()
            .unwrap()
            .expect("lld wrote LC_DYLD_CHAINED_FIXUPS");
        assert!(cf.starts.iter().all(|s| s.pointer_format == PTR_64));

        let rows =
            dyld_info_rows(&run("llvm-objdump-19", &["--macho", "--dyld-info", path]).unwrap());
        assert_eq!(
            rows.len(),
            11,
            "the fixture has 3 GOT binds and 8 data slots"
        );
        assert_eq!(our_rows(&cf), rows);
        let pairs =
            objdump_pairs(&run("llvm-objdump-19", &["--macho", "--chained-fixups", path]).unwrap());
        assert_eq!(our_pairs(&cf, &info_offsets(&cf, &m)), pairs);
        assert!(
            m.split_seg_info().unwrap().is_none(),
            "ld64.lld-19 writes no LC_SEGMENT_SPLIT_INFO"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Re-encodes every fixup of the lld image in an arm64e format, taking
    /// what each slot means from llvm-objdump (not from our decoder) and the
    /// bit layout from fixup-chains.h; binds of `_ext_func` become auth binds
    /// and rebases into `__TEXT` auth rebases, as arm64e function pointers are.
    #[test]
    fn decodes_lld_image_reencoded_as_arm64e_formats() {
        let dir = scratch("reencode");
        let dylib = lld_dylib(&dir);
        let path = dylib.to_str().unwrap();
        let original = std::fs::read(&dylib).unwrap();
        let rows =
            dyld_info_rows(&run("llvm-objdump-19", &["--macho", "--dyld-info", path]).unwrap());
        let names: Vec<String> = run("llvm-objdump-19", &["--macho", "--chained-fixups", path])
            .unwrap()
            .lines()
            .filter_map(|l| l.trim().strip_prefix("name_offset = "))
            .map(|v| {
                v.split_once('(')
                    .unwrap()
                    .1
                    .trim_end_matches(')')
                    .to_string()
            })
            .collect();
        let text_end = 0x4000; // __TEXT of the lld dylib is 0..0x4000

        for format in [PTR_ARM64E, PTR_ARM64E_KERNEL] {
            let m = MachO::parse(&original).unwrap();
            let mut file = original.clone();
            let mut expected = Vec::new();
            for row in &rows {
                let addr = match row {
                    Row::Rebase { addr, .. } | Row::Bind { addr, .. } => *addr,
                };
                let seg = m.segment_at(addr, 8).unwrap();
                let at = (seg.fileoff + addr - seg.vmaddr) as usize;
                let old = u64::from_le_bytes(file[at..at + 8].try_into().unwrap());
                let next4 = (old >> 51) & 0xFFF; // format 2: next:12 in 4-byte units
                let next = if format == PTR_ARM64E {
                    next4 / 2
                } else {
                    next4
                };
                assert!(
                    next < 0x800 && (format != PTR_ARM64E || next4 % 2 == 0),
                    "fixture chain fits"
                );
                let (raw, kind) = match row {
                    Row::Rebase { target, .. } if *target < text_end => (
                        e_auth_rebase(*target, 0xE4FE, 0, 0, next),
                        FixupKind::AuthRebase {
                            target: *target,
                            key: 0,
                            addr_div: false,
                            diversity: 0xE4FE,
                        },
                    ),
                    Row::Rebase { target, .. } => (
                        e_rebase(*target, 0, next),
                        FixupKind::Rebase {
                            target: *target,
                            high8: 0,
                        },
                    ),
                    Row::Bind { name, addend, .. } => {
                        let ordinal = names.iter().position(|n| n == name).unwrap() as u64;
                        if name == "_ext_func" {
                            let kind = FixupKind::AuthBind {
                                name: name.clone(),
                                lib_ordinal: -2,
                                key: 0,
                                addr_div: true,
                                diversity: 0x1234,
                            };
                            (e_auth_bind(ordinal, 0x1234, 1, 0, next), kind)
                        } else {
                            let kind = FixupKind::Bind {
                                name: name.clone(),
                                lib_ordinal: -2,
                                addend: *addend,
                            };
                            (e_bind(ordinal, *addend, next), kind)
                        }
                    }
                };
                file[at..at + 8].copy_from_slice(&raw.to_le_bytes());
                expected.push((addr, kind));
            }
            // Set pointer_format in each segment's starts.
            let cf = m.chained_fixups().unwrap().unwrap();
            let &(_, lc) = m
                .load_commands
                .iter()
                .find(|(c, _)| *c == LC_DYLD_CHAINED_FIXUPS)
                .unwrap();
            let dataoff =
                u32::from_le_bytes(file[lc as usize + 8..lc as usize + 12].try_into().unwrap())
                    as usize;
            for s in &cf.starts {
                let at = dataoff + cf.header.starts_offset as usize + s.info_offset as usize + 6;
                file[at..at + 2].copy_from_slice(&format.to_le_bytes());
            }
            let patched = dir.join(format!("fmt{format}.dylib"));
            std::fs::write(&patched, &file).unwrap();

            let m2 = MachO::parse(&file).unwrap();
            let cf2 = m2.chained_fixups().unwrap().unwrap();
            let got: Vec<(u64, FixupKind)> = cf2
                .fixups
                .iter()
                .map(|f| (f.vmaddr, f.kind.clone()))
                .collect();
            assert_eq!(got, expected, "pointer format {format}");

            // llvm-objdump-19 reads the header and starts of formats 1 and 7 ...
            let p = patched.to_str().unwrap();
            let text = run("llvm-objdump-19", &["--macho", "--chained-fixups", p]).unwrap();
            assert_eq!(
                our_pairs(&cf2, &info_offsets(&cf2, &m2)),
                objdump_pairs(&text)
            );
            let name = if format == PTR_ARM64E {
                "(DYLD_CHAINED_PTR_ARM64E)"
            } else {
                "(DYLD_CHAINED_PTR_ARM64E_KERNEL)"
            };
            assert!(text.contains(name), "{text}");
            // ... but cannot walk their chains (so it is no oracle for the slots).
            match run("llvm-objdump-19", &["--macho", "--dyld-info", p]) {
                Err(e) => assert!(
                    e.contains(&format!(
                        "unsupported chained fixup pointer_format {format}"
                    )),
                    "{e}"
                ),
                Ok(out) => eprintln!(
                    "note: this llvm-objdump walks pointer format {format}; compare it:\n{out}"
                ),
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
