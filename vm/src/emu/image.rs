//! Reading a kext binary: the x86_64 or arm64e slice (the host's, or the one
//! asked for) of a (possibly universal) Mach-O of
//! type `MH_KEXT_BUNDLE`, with the pieces the loader needs — segments, sections,
//! symbols, and the relocation tables of `LC_DYSYMTAB`.
//!
//! This module only reads; it never maps or executes anything. It accepts what
//! kxld accepts for x86_64 final-linked kexts (Apple's `ld -kext` output as well
//! as kextld's), see `../shared/kext-format.md`.

use std::path::{Path, PathBuf};

use object::LittleEndian as LE;
use object::macho;
use object::read::macho::{
    FatArch, MachHeader, MachOFatFile32, MachOFatFile64, Nlist, Section, Segment,
};

const N_STAB: u8 = 0xe0;
const N_TYPE: u8 = 0x0e;
const N_UNDF: u8 = 0x0;
const N_ABS: u8 = 0x2;
const N_SECT: u8 = 0xe;
pub const CPU_TYPE_X86_64: u32 = 0x0100_0007;
/// `CPU_TYPE_ARM64` (the arm64e slice has cpusubtype 2, `CPU_SUBTYPE_ARM64E`).
pub const CPU_TYPE_ARM64: u32 = 0x0100_000C;
/// `LC_DYLD_CHAINED_FIXUPS`.
const LC_DYLD_CHAINED_FIXUPS: u32 = 0x8000_0034;

/// The slice this process can execute: x86_64 on an x86_64 host, arm64(e) on aarch64.
pub const NATIVE_CPUTYPE: u32 = if cfg!(target_arch = "aarch64") {
    CPU_TYPE_ARM64
} else {
    CPU_TYPE_X86_64
};
const MH_KEXT_BUNDLE: u32 = 11;

/// Why a kext binary could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a kext bundle or binary: {why}")]
    Bundle { path: PathBuf, why: String },
    #[error("not a Mach-O file (magic {0:#x})")]
    NotMachO(u32),
    #[error("universal binary has no {native} slice (it has: {0})", native = arch_name(NATIVE_CPUTYPE))]
    NoX86Slice(String),
    #[error("not an x86_64 or arm64(e) Mach-O (cputype {0:#x}); the emu backend runs those only")]
    WrongArch(u32),
    #[error("Mach-O filetype {0} is not MH_KEXT_BUNDLE (11)")]
    NotKext(u32),
    #[error("malformed Mach-O: {0}")]
    Malformed(String),
}

impl From<object::read::Error> for ImageError {
    fn from(e: object::read::Error) -> Self {
        ImageError::Malformed(e.to_string())
    }
}

/// One segment of the image (`LC_SEGMENT_64`).
#[derive(Debug, Clone)]
pub struct SegmentInfo {
    pub name: String,
    pub vmaddr: u64,
    pub vmsize: u64,
    pub fileoff: u64,
    pub filesize: u64,
    pub initprot: u32,
}

/// One section (1-based ordinal = index + 1, the `n_sect` and local-relocation numbering).
#[derive(Debug, Clone)]
pub struct SectionInfo {
    pub segname: String,
    pub sectname: String,
    pub addr: u64,
    pub size: u64,
    pub flags: u32,
}

/// A symbol table entry, reduced to what the loader uses.
#[derive(Debug, Clone)]
pub struct SymbolInfo {
    pub name: String,
    pub n_type: u8,
    pub n_sect: u8,
    pub n_value: u64,
}

impl SymbolInfo {
    /// `N_UNDF|N_EXT`: bound by the kernel at load time.
    pub fn is_undefined(&self) -> bool {
        self.n_type & N_STAB == 0 && self.n_type & N_TYPE == N_UNDF
    }
    /// Defined in a section of the image (not a stab).
    pub fn is_section(&self) -> bool {
        self.n_type & N_STAB == 0 && self.n_type & N_TYPE == N_SECT
    }
    /// An absolute symbol (`N_ABS`).
    pub fn is_absolute(&self) -> bool {
        self.n_type & N_STAB == 0 && self.n_type & N_TYPE == N_ABS
    }
}

/// A classic relocation entry (`struct relocation_info`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reloc {
    pub address: u32,
    pub symbolnum: u32,
    pub pcrel: bool,
    pub length: u8,
    pub is_extern: bool,
    pub kind: u8,
}

/// The x86_64 slice of a kext, parsed.
#[derive(Debug, Clone)]
pub struct KextImage {
    /// The slice's bytes (the whole file for a thin binary).
    pub bytes: Vec<u8>,
    pub segments: Vec<SegmentInfo>,
    pub sections: Vec<SectionInfo>,
    pub symbols: Vec<SymbolInfo>,
    pub local_relocs: Vec<Reloc>,
    pub external_relocs: Vec<Reloc>,
    /// Bytes from vmaddr 0 to the end of the last segment.
    pub vm_size: u64,
    /// The slice's `cputype` ([`CPU_TYPE_X86_64`] or [`CPU_TYPE_ARM64`]).
    pub cputype: u32,
    /// `LC_DYLD_CHAINED_FIXUPS` (`dataoff`, `datasize`) in [`Self::bytes`], if any
    /// (arm64e: every rebase and bind is a chained fixup, see [`super::arch::chained`]).
    pub chained_fixups: Option<(u32, u32)>,
}

/// `x86_64` / `arm64e` for a cputype.
pub fn arch_name(cputype: u32) -> &'static str {
    match cputype {
        CPU_TYPE_X86_64 => "x86_64",
        CPU_TYPE_ARM64 => "arm64e",
        _ => "unknown",
    }
}

/// The executable inside a `.kext` bundle (`Contents/MacOS/<CFBundleExecutable>`),
/// or `path` itself when it is a file.
pub fn resolve_executable(path: &Path) -> Result<PathBuf, ImageError> {
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    let plist_path = path.join("Contents/Info.plist");
    if !plist_path.is_file() {
        return Err(ImageError::Bundle {
            path: path.to_path_buf(),
            why: "neither a file nor a directory with Contents/Info.plist".into(),
        });
    }
    let value = plist::Value::from_file(&plist_path).map_err(|e| ImageError::Bundle {
        path: plist_path.clone(),
        why: format!("cannot parse Info.plist: {e}"),
    })?;
    let exe = value
        .as_dictionary()
        .and_then(|d| d.get("CFBundleExecutable"))
        .and_then(|v| v.as_string())
        .ok_or_else(|| ImageError::Bundle {
            path: plist_path.clone(),
            why: "Info.plist has no CFBundleExecutable string".into(),
        })?;
    Ok(path.join("Contents/MacOS").join(exe))
}

/// Reads the kext binary at `path` (a bundle directory or a Mach-O file): the
/// slice this process runs ([`NATIVE_CPUTYPE`]).
pub fn read(path: &Path) -> Result<KextImage, ImageError> {
    read_arch(path, NATIVE_CPUTYPE)
}

/// Reads the slice of `cputype` of the kext binary at `path` (the runner reads the
/// arm64e slice a child under qemu-aarch64 ran, to map its faults to symbols).
pub fn read_arch(path: &Path, cputype: u32) -> Result<KextImage, ImageError> {
    let exe = resolve_executable(path)?;
    let bytes = std::fs::read(&exe).map_err(|source| ImageError::Read {
        path: exe.clone(),
        source,
    })?;
    parse_arch(&bytes, cputype)
}

/// Parses a kext binary held in memory (thin or universal): the native slice.
pub fn parse(file: &[u8]) -> Result<KextImage, ImageError> {
    parse_arch(file, NATIVE_CPUTYPE)
}

/// Parses the slice of `cputype` of a kext binary held in memory.
pub fn parse_arch(file: &[u8], cputype: u32) -> Result<KextImage, ImageError> {
    let slice = arch_slice(file, cputype)?;
    parse_thin(slice)
}

fn arch_slice(file: &[u8], cputype: u32) -> Result<&[u8], ImageError> {
    if file.len() < 4 {
        return Err(ImageError::NotMachO(0));
    }
    let magic_be = u32::from_be_bytes([file[0], file[1], file[2], file[3]]);
    match magic_be {
        macho::FAT_MAGIC => {
            let fat = MachOFatFile32::parse(file)?;
            pick_slice(file, fat.arches(), cputype)
        }
        macho::FAT_MAGIC_64 => {
            let fat = MachOFatFile64::parse(file)?;
            pick_slice(file, fat.arches(), cputype)
        }
        _ => Ok(file),
    }
}

fn pick_slice<'a, A: FatArch>(
    file: &'a [u8],
    arches: &[A],
    cputype: u32,
) -> Result<&'a [u8], ImageError> {
    let mut seen = Vec::new();
    for a in arches {
        if a.cputype().0 == cputype {
            return Ok(a.data(file)?);
        }
        seen.push(format!("cputype {:#x}", a.cputype().0));
    }
    Err(ImageError::NoX86Slice(seen.join(", ")))
}

fn fixed_name(raw: &[u8]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

fn parse_thin(data: &[u8]) -> Result<KextImage, ImageError> {
    let header = macho::MachHeader64::<LE>::parse(data, 0).map_err(|_| {
        let magic = data
            .get(..4)
            .map(|m| u32::from_le_bytes([m[0], m[1], m[2], m[3]]))
            .unwrap_or(0);
        ImageError::NotMachO(magic)
    })?;
    let e = LE;
    let cputype = header.cputype(e).0;
    if cputype != CPU_TYPE_X86_64 && cputype != CPU_TYPE_ARM64 {
        return Err(ImageError::WrongArch(header.cputype(e).0));
    }
    if header.filetype(e).0 != MH_KEXT_BUNDLE {
        return Err(ImageError::NotKext(header.filetype(e).0));
    }
    let mut segments = Vec::new();
    let mut sections = Vec::new();
    let mut symtab = None;
    let mut dysymtab = None;
    let mut chained_fixups = None;
    let mut cmds = header.load_commands(e, data, 0)?;
    while let Some(cmd) = cmds.next()? {
        if let Some((seg, seg_data)) = cmd.segment_64()? {
            segments.push(SegmentInfo {
                name: fixed_name(seg.name()),
                vmaddr: seg.vmaddr.get(e),
                vmsize: seg.vmsize.get(e),
                fileoff: seg.fileoff.get(e),
                filesize: seg.filesize.get(e),
                initprot: seg.initprot.get(e).0,
            });
            for s in seg.sections(e, seg_data)? {
                sections.push(SectionInfo {
                    segname: fixed_name(s.segment_name()),
                    sectname: fixed_name(s.name()),
                    addr: s.addr.get(e),
                    size: s.size.get(e),
                    flags: s.flags(e).0,
                });
            }
        } else if let Some(st) = cmd.symtab()? {
            symtab = Some(st);
        } else if let Some(dst) = cmd.dysymtab()? {
            dysymtab = Some(*dst);
        } else if cmd.cmd().0 == LC_DYLD_CHAINED_FIXUPS {
            let led: &macho::LinkeditDataCommand<LE> = cmd.data()?;
            chained_fixups = Some((led.dataoff.get(e), led.datasize.get(e)));
        }
    }
    if segments.is_empty() {
        return Err(ImageError::Malformed("no LC_SEGMENT_64".into()));
    }
    let mut symbols = Vec::new();
    if let Some(st) = symtab {
        let table = st.symbols::<macho::MachHeader64<LE>, _>(e, data)?;
        let strings = table.strings();
        for nl in table.iter() {
            let name = nl
                .name(e, strings)
                .map(|n| String::from_utf8_lossy(n).into_owned())
                .unwrap_or_default();
            symbols.push(SymbolInfo {
                name,
                n_type: nl.n_type().0,
                n_sect: nl.n_sect(),
                n_value: nl.n_value(e),
            });
        }
    } else {
        return Err(ImageError::Malformed("no LC_SYMTAB".into()));
    }
    let (local_relocs, external_relocs) = match dysymtab {
        Some(d) => (
            read_relocs(data, d.locreloff.get(e), d.nlocrel.get(e))?,
            read_relocs(data, d.extreloff.get(e), d.nextrel.get(e))?,
        ),
        None => return Err(ImageError::Malformed("no LC_DYSYMTAB".into())),
    };
    let vm_size = segments
        .iter()
        .map(|s| s.vmaddr + s.vmsize)
        .max()
        .unwrap_or(0);
    // The loader maps segments at their vmaddr offsets: refuse overlapping or
    // out-of-file segments here, so the loader can copy without further checks.
    for s in &segments {
        if s.filesize > s.vmsize {
            return Err(ImageError::Malformed(format!(
                "segment {} has filesize > vmsize",
                s.name
            )));
        }
        let end = s
            .fileoff
            .checked_add(s.filesize)
            .filter(|&end| end <= data.len() as u64);
        if end.is_none() {
            return Err(ImageError::Malformed(format!(
                "segment {} extends past the end of the file",
                s.name
            )));
        }
    }
    if vm_size > (1 << 30) {
        return Err(ImageError::Malformed(format!(
            "image of {vm_size} bytes is implausibly large"
        )));
    }
    Ok(KextImage {
        bytes: data.to_vec(),
        segments,
        sections,
        symbols,
        local_relocs,
        external_relocs,
        vm_size,
        cputype,
        chained_fixups,
    })
}

fn read_relocs(data: &[u8], off: u32, n: u32) -> Result<Vec<Reloc>, ImageError> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let start = off as usize;
    let end = start
        .checked_add(n as usize * 8)
        .filter(|&end| end <= data.len())
        .ok_or_else(|| {
            ImageError::Malformed(format!(
                "relocation table at {off:#x} (+{n} entries) past end of file"
            ))
        })?;
    Ok(data[start..end]
        .chunks_exact(8)
        .map(|c| {
            let address = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            let word = u32::from_le_bytes([c[4], c[5], c[6], c[7]]);
            Reloc {
                address,
                symbolnum: word & 0x00ff_ffff,
                pcrel: (word >> 24) & 1 != 0,
                length: ((word >> 25) & 3) as u8,
                is_extern: (word >> 27) & 1 != 0,
                kind: (word >> 28) as u8,
            }
        })
        .collect())
}

impl KextImage {
    /// The symbol `name` (Mach-O spelling, with the leading `_`) defined in a section.
    pub fn defined(&self, name: &str) -> Option<&SymbolInfo> {
        self.symbols
            .iter()
            .find(|s| s.is_section() && s.name == name)
    }

    /// Names of undefined symbols, sorted and deduplicated.
    pub fn undefined(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .symbols
            .iter()
            .filter(|s| s.is_undefined())
            .map(|s| s.name.clone())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// The segment holding unslid address `addr`, as kxld's `get_seg_by_base_addr`.
    pub fn segment_at(&self, addr: u64) -> Option<&SegmentInfo> {
        self.segments
            .iter()
            .find(|s| s.vmaddr <= addr && addr < s.vmaddr + s.vmsize)
    }

    /// The section holding unslid address `addr`.
    pub fn section_at(&self, addr: u64) -> Option<&SectionInfo> {
        self.sections
            .iter()
            .find(|s| s.addr <= addr && addr < s.addr + s.size)
    }

    /// The nearest defined symbol at or before unslid address `addr`, with the offset.
    pub fn symbolize(&self, addr: u64) -> Option<(String, u64)> {
        self.symbols
            .iter()
            .filter(|s| s.is_section() && s.n_value <= addr && !s.name.is_empty())
            .max_by_key(|s| s.n_value)
            .map(|s| (s.name.clone(), addr - s.n_value))
    }

    /// Whether unslid `addr` lies in an executable segment (`__TEXT`/`__TEXT_EXEC` with VM_PROT_EXECUTE).
    pub fn is_code(&self, addr: u64) -> bool {
        self.segment_at(addr).is_some_and(|s| s.initprot & 4 != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_non_macho() {
        assert!(matches!(
            parse(b"\x7fELF\x02\x01\x01\0"),
            Err(ImageError::NotMachO(_))
        ));
        assert!(matches!(parse(b""), Err(ImageError::NotMachO(0))));
    }

    #[test]
    fn reloc_bitfields_decode_like_relocation_info() {
        // r_address 0x10, r_symbolnum 3, pcrel, length 2, extern, type BRANCH (2).
        let word: u32 = 3 | (1 << 24) | (2 << 25) | (1 << 27) | (2 << 28);
        let mut raw = Vec::new();
        raw.extend_from_slice(&0x10u32.to_le_bytes());
        raw.extend_from_slice(&word.to_le_bytes());
        let r = read_relocs(&raw, 0, 1).unwrap();
        assert_eq!(
            r[0],
            Reloc {
                address: 0x10,
                symbolnum: 3,
                pcrel: true,
                length: 2,
                is_extern: true,
                kind: 2
            }
        );
        assert!(read_relocs(&raw, 4, 1).is_err());
    }
}
