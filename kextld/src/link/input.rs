//! Reading inputs: Mach-O `MH_OBJECT` files and static archives, into a plain
//! architecture-neutral model (sections with their relocations, symbols).
//!
//! Parsing goes through `object`'s low-level Mach-O and archive readers, which
//! bounds-check every table; this module turns their errors into [`LinkError`]s
//! that name the file and archive member, and decides which sections a kext keeps.

use object::LittleEndian as LE;
use object::macho::MachHeader64;
use object::read::archive::ArchiveFile;
use object::read::macho::{MachHeader, Nlist, Section, Segment};

use super::LinkError;
use crate::macho::*;

/// A parsed relocatable object (a file given directly, or an archive member).
#[derive(Debug)]
pub(crate) struct Object<'a> {
    /// `path` or `path(member)`, for messages.
    pub name: String,
    /// All sections, in order: index `i` is Mach-O section ordinal `i + 1`.
    pub sections: Vec<InSection<'a>>,
    /// The symbol table, in order.
    pub symbols: Vec<InSymbol>,
}

/// What a kext does with an input section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Disposition {
    /// Copied into the output section of the same name.
    Keep,
    /// Not loaded (debug info, unwind tables, bitcode).
    Drop,
    /// The kernel cannot load it: an error if the object is loaded.
    Reject {
        /// What is wrong.
        problem: String,
        /// What to do.
        hint: &'static str,
    },
}

/// One input section.
#[derive(Debug)]
pub(crate) struct InSection<'a> {
    /// Segment name (`__TEXT`, `__DATA`, ...).
    pub segname: String,
    /// Section name (`__text`, ...).
    pub sectname: String,
    /// Address in the object's own address space.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
    /// Alignment, as a power of two.
    pub align: u32,
    /// Type and attributes.
    pub flags: u32,
    /// Contents (empty for zerofill sections).
    pub data: &'a [u8],
    /// Relocations, in file order.
    pub relocs: Vec<Reloc>,
    /// What the kext does with it.
    pub disposition: Disposition,
}

impl InSection<'_> {
    /// `S_ZEROFILL`-like: occupies memory but no file bytes.
    pub fn is_zerofill(&self) -> bool {
        is_zerofill_type(self.flags & SECTION_TYPE)
    }
}

/// Zerofill section types.
pub(crate) fn is_zerofill_type(t: u32) -> bool {
    matches!(t, S_ZEROFILL | S_GB_ZEROFILL | S_THREAD_LOCAL_ZEROFILL)
}

/// One input `relocation_info` (never scattered on 64-bit targets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reloc {
    /// Offset of the fix-up in its section.
    pub r_address: u32,
    /// Symbol index (extern) or 1-based section ordinal (not extern; 0 = absolute).
    pub r_symbolnum: u32,
    /// PC-relative.
    pub r_pcrel: bool,
    /// log2 of the fix-up width.
    pub r_length: u8,
    /// `r_symbolnum` is a symbol index.
    pub r_extern: bool,
    /// Architecture-specific type.
    pub r_type: u8,
}

/// One input `nlist_64`.
#[derive(Debug, Clone)]
pub(crate) struct InSymbol {
    /// Mach-O name (with the leading `_`).
    pub name: String,
    /// `n_type`.
    pub n_type: u8,
    /// `n_sect` (1-based, 0 = `NO_SECT`).
    pub n_sect: u8,
    /// `n_desc`.
    pub n_desc: u16,
    /// `n_value`: address in the object's address space.
    pub n_value: u64,
}

impl InSymbol {
    /// A debugger (stab) entry.
    pub fn is_stab(&self) -> bool {
        self.n_type & N_STAB != 0
    }
    /// `N_EXT` set.
    pub fn is_ext(&self) -> bool {
        self.n_type & N_EXT != 0
    }
    /// `N_PEXT` set (private extern: linked across objects, local in the output).
    pub fn is_pext(&self) -> bool {
        self.n_type & N_PEXT != 0
    }
    /// `n_type & N_TYPE`.
    pub fn kind(&self) -> u8 {
        self.n_type & N_TYPE
    }
    /// Defined in a section or absolute.
    pub fn is_defined(&self) -> bool {
        !self.is_stab() && matches!(self.kind(), N_SECT | N_ABS)
    }
    /// A weak definition.
    pub fn is_weak_def(&self) -> bool {
        self.n_desc & N_WEAK_DEF != 0
    }
}

/// One command-line input after parsing.
#[derive(Debug)]
pub(crate) enum Input<'a> {
    /// An object file: always loaded.
    Object(Object<'a>),
    /// A static archive: its Mach-O members, loaded on demand.
    Archive(Vec<Object<'a>>),
}

const AR_MAGIC: &[u8] = b"!<arch>\n";
const FAT_MAGIC: u32 = 0xcafe_babe;

fn bad(input: &str, problem: impl Into<String>, hint: &'static str) -> LinkError {
    LinkError::BadInput {
        input: input.to_string(),
        problem: problem.into(),
        hint,
    }
}

/// Parses one command-line input (object or archive).
pub(crate) fn parse_input<'a>(
    name: &str,
    data: &'a [u8],
    cputype: u32,
) -> Result<Input<'a>, LinkError> {
    if data.starts_with(AR_MAGIC) {
        return parse_archive(name, data, cputype).map(Input::Archive);
    }
    let magic = data
        .get(..4)
        .map(|m| u32::from_le_bytes(m.try_into().expect("4 bytes")));
    match magic {
        Some(MH_MAGIC_64) => parse_object(name.to_string(), data, cputype).map(Input::Object),
        Some(m) if m.swap_bytes() == FAT_MAGIC => Err(bad(
            name,
            "is a universal (fat) binary",
            "extract the slice with `lipo -thin ARCH` first",
        )),
        _ => Err(bad(
            name,
            "is neither a Mach-O 64-bit object nor a static archive (ar)",
            "pass the kext's staticlib (.a) or its Mach-O objects (.o)",
        )),
    }
}

fn parse_archive<'a>(
    name: &str,
    data: &'a [u8],
    cputype: u32,
) -> Result<Vec<Object<'a>>, LinkError> {
    let hint = "the archive is truncated or corrupt: rebuild it";
    let archive = ArchiveFile::parse(data)
        .map_err(|e| bad(name, format!("cannot parse static archive: {e}"), hint))?;
    let mut objects = Vec::new();
    for member in archive.members() {
        let member = member.map_err(|e| bad(name, format!("bad archive member: {e}"), hint))?;
        let member_name = String::from_utf8_lossy(member.name()).into_owned();
        let display = format!("{name}({member_name})");
        let bytes = member
            .data(data)
            .map_err(|e| bad(&display, format!("member data out of bounds: {e}"), hint))?;
        let magic = bytes
            .get(..4)
            .map(|m| u32::from_le_bytes(m.try_into().expect("4 bytes")));
        match magic {
            Some(MH_MAGIC_64) => objects.push(parse_object(display, bytes, cputype)?),
            Some(MH_MAGIC) => {
                return Err(bad(
                    &display,
                    "is a 32-bit Mach-O object",
                    "build the archive for x86_64 (64-bit) kernels",
                ));
            }
            // lib.rmeta, __.SYMDEF, LLVM bitcode, ...: nothing a kext links.
            _ => {}
        }
    }
    Ok(objects)
}

fn name16(raw: &[u8; 16]) -> Option<String> {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(16);
    String::from_utf8(raw[..end].to_vec()).ok()
}

/// Parses one Mach-O 64-bit relocatable object.
pub(crate) fn parse_object(
    name: String,
    data: &[u8],
    cputype: u32,
) -> Result<Object<'_>, LinkError> {
    let corrupt = "the object is truncated or corrupt: rebuild it";
    let e = LE;
    let header = MachHeader64::<LE>::parse(data, 0)
        .map_err(|err| bad(&name, format!("bad Mach-O header: {err}"), corrupt))?;
    let found_cpu = header.cputype(e);
    let found_cpu = found_cpu.0;
    if found_cpu != cputype {
        return Err(bad(
            &name,
            format!("wrong architecture: cputype {found_cpu:#x}, expected {cputype:#x}"),
            "build every input for the architecture being linked",
        ));
    }
    // arm64e objects say so in cpusubtype: CPU_SUBTYPE_ARM64E (2), with or
    // without CPU_SUBTYPE_PTRAUTH_ABI (0x80000000; upstream clang-19's object
    // writer leaves it clear). Code compiled for plain arm64 leaves function
    // pointers unsigned, and the arm64e kernel faults on the first authenticated
    // call through one (docs/kext-format.md, "arm64e ABI").
    if cputype == CPU_TYPE_ARM64 {
        let sub = header.cpusubtype(e).0;
        if sub & 0xff != 2 {
            let what = "a plain arm64 object";
            return Err(bad(
                &name,
                format!(
                    "incompatible arm64e ABI: cpusubtype {sub:#010x} is {what}, not the arm64e \
                     pointer-authentication ABI (CPU_SUBTYPE_ARM64E | CPU_SUBTYPE_PTRAUTH_ABI, \
                     0x80000002)"
                ),
                "compile every input for arm64e (clang --target arm64e-apple-macos11, or the prx \
                 kernel target aarch64-apple-macos-kernel)",
            ));
        }
    }
    let filetype = header.filetype(e).0;
    if filetype != MH_OBJECT {
        return Err(bad(
            &name,
            format!("filetype {filetype:#x} is not MH_OBJECT (1)"),
            "pass relocatable objects (.o) or static archives (.a), not linked images",
        ));
    }
    let mut commands = header
        .load_commands(e, data, 0)
        .map_err(|err| bad(&name, format!("bad load commands: {err}"), corrupt))?;
    let mut sections = Vec::new();
    let mut symbols = Vec::new();
    while let Some(cmd) = commands
        .next()
        .map_err(|err| bad(&name, format!("bad load command: {err}"), corrupt))?
    {
        if let Some((segment, section_data)) = cmd
            .segment_64()
            .map_err(|err| bad(&name, format!("bad LC_SEGMENT_64: {err}"), corrupt))?
        {
            let raw = segment
                .sections(e, section_data)
                .map_err(|err| bad(&name, format!("bad section headers: {err}"), corrupt))?;
            for s in raw {
                sections.push(parse_section(&name, data, s)?);
            }
        } else if let Some(symtab) = cmd
            .symtab()
            .map_err(|err| bad(&name, format!("bad LC_SYMTAB: {err}"), corrupt))?
        {
            let table = symtab
                .symbols::<MachHeader64<LE>, _>(e, data)
                .map_err(|err| bad(&name, format!("bad symbol table: {err}"), corrupt))?;
            let strings = table.strings();
            for nl in table.iter() {
                let raw_name = nl
                    .name(e, strings)
                    .map_err(|err| bad(&name, format!("bad symbol name: {err}"), corrupt))?;
                symbols.push(InSymbol {
                    name: String::from_utf8_lossy(raw_name).into_owned(),
                    n_type: nl.n_type().0,
                    n_sect: nl.n_sect(),
                    n_desc: nl.n_desc(e).0,
                    n_value: nl.n_value(e),
                });
            }
        }
    }
    for sym in &symbols {
        if !sym.is_stab()
            && sym.kind() == N_SECT
            && (sym.n_sect == NO_SECT || usize::from(sym.n_sect) > sections.len())
        {
            return Err(bad(
                &name,
                format!(
                    "symbol {} refers to section {}, which does not exist",
                    sym.name, sym.n_sect
                ),
                corrupt,
            ));
        }
    }
    Ok(Object {
        name,
        sections,
        symbols,
    })
}

fn parse_section<'a>(
    name: &str,
    data: &'a [u8],
    s: &'a object::macho::Section64<LE>,
) -> Result<InSection<'a>, LinkError> {
    let corrupt = "the object is truncated or corrupt: rebuild it";
    let e = LE;
    let (Some(segname), Some(sectname)) = (name16(s.segname()), name16(s.sectname())) else {
        return Err(bad(name, "section name is not UTF-8", corrupt));
    };
    let flags = s.flags(e).0;
    let size = s.size(e);
    let content = if is_zerofill_type(flags & SECTION_TYPE) {
        &[][..]
    } else {
        let d = s.data(e, data, u64::from(s.offset(e))).map_err(|_| {
            bad(
                name,
                format!("section {segname},{sectname} extends past the end of the file"),
                corrupt,
            )
        })?;
        if d.len() as u64 != size {
            return Err(bad(
                name,
                format!("section {segname},{sectname} is truncated"),
                corrupt,
            ));
        }
        d
    };
    let raw_relocs = s.relocations(e, data).map_err(|_| {
        bad(
            name,
            format!("relocations of {segname},{sectname} extend past the end of the file"),
            corrupt,
        )
    })?;
    let mut relocs = Vec::with_capacity(raw_relocs.len());
    for r in raw_relocs {
        if r.r_scattered(e, object::macho::CpuType(CPU_TYPE_X86_64)) {
            return Err(bad(
                name,
                format!("section {segname},{sectname} has a scattered relocation"),
                "64-bit Mach-O objects never use scattered relocations: rebuild the object",
            ));
        }
        let i = r.info(e);
        relocs.push(Reloc {
            r_address: i.r_address,
            r_symbolnum: i.r_symbolnum,
            r_pcrel: i.r_pcrel,
            r_length: i.r_length,
            r_extern: i.r_extern,
            r_type: i.r_type.0,
        });
    }
    let disposition = classify(&segname, &sectname, flags);
    Ok(InSection {
        segname,
        sectname,
        addr: s.addr(e),
        size,
        align: s.align(e),
        flags,
        data: content,
        relocs,
        disposition,
    })
}

/// Decides what a kext does with a section, from its names and flags.
pub(crate) fn classify(segname: &str, sectname: &str, flags: u32) -> Disposition {
    let ty = flags & SECTION_TYPE;
    if segname == "__DWARF"
        || segname == "__LLVM"
        || (segname == "__LD" && sectname == "__compact_unwind")
        || (segname == "__TEXT" && sectname == "__eh_frame")
        || flags & S_ATTR_DEBUG != 0
    {
        return Disposition::Drop;
    }
    if sectname.starts_with("__thread_")
        || matches!(
            ty,
            S_THREAD_LOCAL_REGULAR
                | S_THREAD_LOCAL_ZEROFILL
                | S_THREAD_LOCAL_VARIABLES
                | S_THREAD_LOCAL_VARIABLE_POINTERS
                | S_THREAD_LOCAL_INIT_FUNCTION_POINTERS
        )
    {
        return Disposition::Reject {
            problem: "thread-local storage is not supported in kernel extensions".into(),
            hint: "remove thread_local!/__thread variables (the kernel target must not use TLS)",
        };
    }
    if matches!(
        ty,
        S_NON_LAZY_SYMBOL_POINTERS
            | S_LAZY_SYMBOL_POINTERS
            | S_LAZY_DYLIB_SYMBOL_POINTERS
            | S_SYMBOL_STUBS
            | S_INTERPOSING
            | S_DTRACE_DOF
    ) {
        return Disposition::Reject {
            problem: format!("section type {ty:#x} needs dyld, which does not load kexts"),
            hint: "compile for the kernel (-mkernel / the kernel target spec) without stubs, \
                   interposing or DTrace DOF",
        };
    }
    if segname != "__TEXT" && segname != "__DATA" {
        return Disposition::Reject {
            problem: format!("segment {segname} is not one a kext can have"),
            hint: "put code and constants in __TEXT and writable data in __DATA",
        };
    }
    Disposition::Keep
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_sections() {
        assert_eq!(classify("__TEXT", "__text", 0x8000_0400), Disposition::Keep);
        assert_eq!(
            classify("__DATA", "__mod_init_func", S_MOD_INIT_FUNC_POINTERS),
            Disposition::Keep
        );
        assert_eq!(
            classify("__LD", "__compact_unwind", 0x0200_0000),
            Disposition::Drop
        );
        assert_eq!(
            classify("__TEXT", "__eh_frame", S_COALESCED),
            Disposition::Drop
        );
        assert_eq!(classify("__LLVM", "__bitcode", 0), Disposition::Drop);
        assert_eq!(
            classify("__DWARF", "__debug_info", S_ATTR_DEBUG),
            Disposition::Drop
        );
        assert!(matches!(
            classify("__DATA", "__thread_vars", S_THREAD_LOCAL_VARIABLES),
            Disposition::Reject { .. }
        ));
        assert!(matches!(
            classify("__OBJC", "__foo", 0),
            Disposition::Reject { .. }
        ));
    }

    #[test]
    fn garbage_and_truncated_inputs_are_rejected_with_the_name() {
        let err = parse_input("junk.o", b"hello world", CPU_TYPE_X86_64).unwrap_err();
        assert!(err.to_string().starts_with("junk.o: is neither"), "{err}");
        let mut truncated = MH_MAGIC_64.to_le_bytes().to_vec();
        truncated.extend_from_slice(&[7, 0, 0, 1, 3, 0]);
        let err = parse_input("t.o", &truncated, CPU_TYPE_X86_64).unwrap_err();
        assert!(err.to_string().contains("t.o: bad Mach-O header"), "{err}");
        let err = parse_input(
            "bad.a",
            b"!<arch>\n#1/20           0           0     0     644     99999     `\n",
            CPU_TYPE_X86_64,
        )
        .unwrap_err();
        assert!(err.to_string().starts_with("bad.a"), "{err}");
    }
}
