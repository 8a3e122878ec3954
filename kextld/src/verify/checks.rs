//! The per-slice checks: header, load commands, segments, relocations, symbols
//! and `_kmod_info`. The instruction check lives in [`super::disasm`].

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::consts as macho;

use super::image::{HEADER_SIZE, Image, Reloc, u32_at, u64_at};
use super::{Finding, Report, Severity, SliceSummary, arm64e, disasm};
use crate::Arch;
use crate::kpi::Lookup;

/// The undefined symbol common's `#[panic_handler]` calls (Mach-O spelling).
pub(super) const PANIC_PATH_SYMBOL: &str = "_prx_panic_path_survived_optimisation";

/// `sizeof(kmod_info_t)` and the offsets of its fields (`#pragma pack(4)`).
mod kmod {
    pub const SIZE: u64 = 196;
    pub const INFO_VERSION: u64 = 8;
    pub const NAME: u64 = 16;
    pub const VERSION: u64 = 80;
    pub const STR_LEN: u64 = 64;
    pub const START: u64 = 180;
    pub const STOP: u64 = 188;
}

/// `cpusubtype` of an arm64e kext: ARM64E | PTRAUTH_ABI | kernel ABI, version 0.
pub(super) const ARM64E_KEXT_SUBTYPE: u32 = 0xC000_0002;
/// `MH_NOUNDEFS | MH_DYLDLINK | MH_TWOLEVEL`.
const KEXT_FLAGS: u32 = 0x85;
/// Room `codesign` needs after the load commands for `LC_CODE_SIGNATURE`.
const SIGNATURE_ROOM: u64 = 32;
/// At most this many names are listed in a message before "and N more".
const MAX_LISTED: usize = 8;

/// Collects the findings of one slice.
pub(super) struct Ctx {
    pub arch: Option<Arch>,
    pub findings: Vec<Finding>,
}

impl Ctx {
    pub fn push(&mut self, severity: Severity, check: &'static str, message: String) {
        self.findings.push(Finding {
            severity,
            arch: self.arch,
            check,
            message,
        });
    }
    pub fn error(&mut self, check: &'static str, message: String) {
        self.push(Severity::Error, check, message);
    }
    pub fn warn(&mut self, check: &'static str, message: String) {
        self.push(Severity::Warning, check, message);
    }
}

/// The architecture a Mach-O `cputype` denotes, if kextld supports it.
pub(super) fn arch_of(cputype: u32) -> Option<Arch> {
    match cputype {
        macho::CPU_TYPE_X86_64 => Some(Arch::X86_64),
        macho::CPU_TYPE_ARM64 => Some(Arch::Arm64e),
        _ => None,
    }
}

/// Joins names for a message, listing at most [`MAX_LISTED`].
pub(super) fn list(names: &[String]) -> String {
    if names.len() <= MAX_LISTED {
        names.join(", ")
    } else {
        format!(
            "{} and {} more",
            names[..MAX_LISTED].join(", "),
            names.len() - MAX_LISTED
        )
    }
}

/// Verifies one thin Mach-O; `fat_arch` is the architecture its fat header claims.
pub(super) fn verify_slice(
    bytes: &[u8],
    fat_arch: Option<Arch>,
    opts: &super::Options<'_>,
    report: &mut Report,
) {
    let mut ctx = Ctx {
        arch: fat_arch,
        findings: Vec::new(),
    };
    let mut summary = SliceSummary {
        arch: fat_arch,
        ..SliceSummary::default()
    };
    run(bytes, fat_arch, opts, &mut ctx, &mut summary);
    report.findings.append(&mut ctx.findings);
    report.slices.push(summary);
}

fn run(
    bytes: &[u8],
    fat_arch: Option<Arch>,
    opts: &super::Options<'_>,
    ctx: &mut Ctx,
    summary: &mut SliceSummary,
) {
    let image = match Image::parse(bytes) {
        Ok(image) => image,
        Err(message) => return ctx.error("macho", message),
    };
    let Some(arch) = arch_of(image.header.cputype) else {
        return ctx.error(
            "header",
            format!(
                "cputype {:#010x} is neither x86_64 ({:#010x}) nor arm64e ({:#010x})",
                image.header.cputype,
                macho::CPU_TYPE_X86_64,
                macho::CPU_TYPE_ARM64
            ),
        );
    };
    if fat_arch.is_some_and(|a| a != arch) {
        ctx.error(
            "fat",
            format!(
                "the fat header says this slice is {} but its Mach-O header says {arch}",
                ctx.arch.map_or("?", Arch::name)
            ),
        );
    }
    ctx.arch = Some(arch);
    summary.arch = Some(arch);
    for problem in &image.problems {
        ctx.error("macho", format!("{problem}: truncated or corrupt file"));
    }
    check_header(&image, arch, ctx);
    check_load_commands(&image, arch, ctx);
    check_segments(&image, arch, ctx);
    let (refs, fixups, got_users) = match arch {
        Arch::X86_64 => {
            let refs = check_relocations(&image, ctx);
            // Pointer slots (e.g. `__got`) bound to kernel symbols: which functions load them.
            let slots: BTreeSet<u64> = refs
                .values()
                .flatten()
                .copied()
                .filter(|&a| image.section_at(a, 1).is_some_and(|(_, s)| !s.has_code()))
                .collect();
            let got_users = disasm::rip_relative_users(&image, &slots);
            (refs, None, got_users)
        }
        Arch::Arm64e => {
            // References are the call sites of stubs and the loads of GOT
            // slots themselves (function names), so no slot users are needed.
            let analysis = arm64e::check(&image, ctx);
            (analysis.refs, analysis.fixups, BTreeMap::new())
        }
    };
    check_symbols(&image, arch, opts, &refs, &got_users, ctx, summary);
    check_kmod_info(&image, arch, fixups.as_ref(), ctx, summary);
    if arch == Arch::X86_64 {
        disasm::check_no_simd(&image, opts.prx_rules, ctx);
    }
}

fn check_header(image: &Image<'_>, arch: Arch, ctx: &mut Ctx) {
    let h = &image.header;
    debug_assert_eq!(h.magic, macho::MH_MAGIC_64);
    if h.filetype != macho::MH_KEXT_BUNDLE {
        ctx.error(
            "header",
            format!(
                "filetype is {} but a kext binary must be MH_KEXT_BUNDLE (11): link it with \
                 `kextld link`",
                h.filetype
            ),
        );
    }
    if h.flags != KEXT_FLAGS {
        ctx.error(
            "header",
            format!(
                "header flags are {:#x}; kext binaries have exactly {KEXT_FLAGS:#x} \
                 (MH_NOUNDEFS|MH_DYLDLINK|MH_TWOLEVEL) as ld -kext emits",
                h.flags
            ),
        );
    }
    match arch {
        Arch::X86_64 if h.cpusubtype != macho::CPU_SUBTYPE_X86_64_ALL => ctx.error(
            "header",
            format!(
                "x86_64 cpusubtype is {:#x}; kexts use exactly 3 (CPU_SUBTYPE_X86_64_ALL)",
                h.cpusubtype
            ),
        ),
        Arch::Arm64e if h.cpusubtype != ARM64E_KEXT_SUBTYPE => ctx.error(
            "header",
            format!(
                "arm64e cpusubtype is {:#010x}; kexts need exactly {ARM64E_KEXT_SUBTYPE:#010x} \
                 (ARM64E | PTRAUTH_ABI | kernel ABI){}",
                h.cpusubtype,
                if h.cpusubtype == 0x8000_0002 {
                    " — 0x80000002 is what LLVM's object writer emits; the linker must set it"
                } else {
                    ""
                }
            ),
        ),
        _ => {}
    }
}

/// A readable name for a load command.
fn lc_name(cmd: u32) -> String {
    macho::LC_NAMES.iter().find(|(c, _)| *c == cmd).map_or_else(
        || format!("load command {cmd:#x}"),
        |(_, n)| (*n).to_owned(),
    )
}

fn check_load_commands(image: &Image<'_>, arch: Arch, ctx: &mut Ctx) {
    let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
    for lc in &image.commands {
        *counts.entry(lc.cmd).or_default() += 1;
        let at = format!("{} at {:#x}", lc_name(lc.cmd), lc.offset);
        let problem = match lc.cmd {
            macho::LC_LOAD_DYLINKER | macho::LC_ID_DYLINKER | macho::LC_DYLD_ENVIRONMENT => {
                Some("kexts are not loaded by dyld: remove it (link with `kextld link`)")
            }
            macho::LC_LOAD_DYLIB
            | macho::LC_LOAD_WEAK_DYLIB
            | macho::LC_REEXPORT_DYLIB
            | macho::LC_LAZY_LOAD_DYLIB
            | macho::LC_LOAD_UPWARD_DYLIB
            | macho::LC_ID_DYLIB
            | macho::LC_RPATH => Some(
                "kexts link to no dylib: they bind kernel symbols by name through the KPI sets in \
                 OSBundleLibraries; remove it",
            ),
            macho::LC_MAIN | macho::LC_UNIXTHREAD | macho::LC_THREAD | macho::LC_ROUTINES_64 => {
                Some("a kext has no entry point: the kernel calls kmod_info.start; remove it")
            }
            macho::LC_SEGMENT => Some("a 64-bit kext has only LC_SEGMENT_64 segments"),
            macho::LC_DYLD_CHAINED_FIXUPS if arch == Arch::X86_64 => Some(
                "x86_64 kexts use classic relocations (LC_DYSYMTAB); kxld rejects chained fixups",
            ),
            _ if arch == Arch::Arm64e && !arm64e::allowed_command(lc.cmd) => Some(
                "arm64e kexts have only segments, LC_DYLD_CHAINED_FIXUPS, LC_SYMTAB, \
                 LC_DYSYMTAB, LC_UUID, LC_SOURCE_VERSION, LC_SEGMENT_SPLIT_INFO, \
                 LC_BUILD_VERSION/LC_VERSION_MIN_MACOSX, LC_CODE_SIGNATURE, LC_FUNCTION_STARTS \
                 and LC_DATA_IN_CODE: remove it (link with `kextld link`)",
            ),
            _ if arch == Arch::X86_64 && !kxld_accepts(lc.cmd) => {
                Some("kxld (macOS ≤ 10.15) refuses kexts with load commands it does not know")
            }
            _ => None,
        };
        if let Some(problem) = problem {
            ctx.error("load-commands", format!("{at}: {problem}"));
        }
    }
    let arm64e_required = match arch {
        Arch::Arm64e => &arm64e::REQUIRED_COMMANDS[..],
        Arch::X86_64 => &[],
    };
    for &(cmd, what) in [
        (
            macho::LC_SYMTAB,
            "the loader binds and relocates through the symbol table",
        ),
        (
            macho::LC_DYSYMTAB,
            "it holds the relocations and symbol ranges the loader uses",
        ),
        (
            macho::LC_UUID,
            "kextd/kernelmanagerd identify kexts by UUID",
        ),
    ]
    .iter()
    .chain(arm64e_required)
    {
        match counts.get(&cmd).copied().unwrap_or(0) {
            // kxld and the kernel-collection builder load kexts without a UUID
            // (xnu's OSKext only logs it); kextd/kernelmanagerd's caches key on it.
            0 if cmd == macho::LC_UUID => ctx.warn(
                "load-commands",
                format!("{} is missing: {what}", lc_name(cmd)),
            ),
            0 => ctx.error(
                "load-commands",
                format!("{} is missing: {what}", lc_name(cmd)),
            ),
            1 => {}
            n => ctx.error(
                "load-commands",
                format!("{} appears {n} times; exactly one allowed", lc_name(cmd)),
            ),
        }
    }
}

/// The load commands kxld's `kxld_object.c` accepts (x86_64).
fn kxld_accepts(cmd: u32) -> bool {
    matches!(
        cmd,
        macho::LC_SEGMENT_64
            | macho::LC_SYMTAB
            | macho::LC_DYSYMTAB
            | macho::LC_UUID
            | macho::LC_VERSION_MIN_MACOSX
            | macho::LC_VERSION_MIN_IPHONEOS
            | macho::LC_VERSION_MIN_TVOS
            | macho::LC_VERSION_MIN_WATCHOS
            | macho::LC_BUILD_VERSION
            | macho::LC_SOURCE_VERSION
            | macho::LC_SEGMENT_SPLIT_INFO
            | macho::LC_NOTE
            | macho::LC_CODE_SIGNATURE
            | macho::LC_DYLD_INFO
            | macho::LC_DYLD_INFO_ONLY
            | macho::LC_FUNCTION_STARTS
            | macho::LC_DATA_IN_CODE
            | macho::LC_DYLIB_CODE_SIGN_DRS
    )
}

fn check_segments(image: &Image<'_>, arch: Arch, ctx: &mut Ctx) {
    let page = arch.page_size();
    let file_len = image.data.len() as u64;
    let Some(first) = image.segments.first() else {
        return ctx.error(
            "segments",
            "the image has no LC_SEGMENT_64: nothing to load".into(),
        );
    };
    if first.name != "__TEXT" || first.vmaddr != 0 || first.fileoff != 0 {
        ctx.error(
            "segments",
            format!(
                "the first segment is {} at vmaddr {:#x} fileoff {:#x}; it must be __TEXT at \
                 vmaddr 0 and fileoff 0 (holding the header, with no preferred load address)",
                first.name, first.vmaddr, first.fileoff
            ),
        );
    }
    let mut prev_end: Option<(String, u64)> = None;
    // Loaders copy each segment's `filesize` bytes from `fileoff` to its vmaddr
    // and zero the rest (docs/kext-format.md, "Segments in the file"): file
    // ranges must lie in the file, in segment order, without overlapping; a
    // file offset need not equal the vmaddr (ld64 packs `__LINKEDIT` right after
    // the last file-backed byte, below its vmaddr when there is zero-fill).
    let mut prev_file_end: Option<(String, u64)> = None;
    for (i, seg) in image.segments.iter().enumerate() {
        let name = &seg.name;
        let mut bad = Vec::new();
        if seg.filesize > 0 {
            if let Some((prev, end)) = &prev_file_end
                && seg.fileoff < *end
            {
                bad.push(format!(
                    "file range starts at {:#x}, inside {prev}'s file range (which ends at \
                     {end:#x}): segments' file bytes must follow each other in order",
                    seg.fileoff
                ));
            }
            prev_file_end = Some((name.clone(), seg.fileoff.saturating_add(seg.filesize)));
        }
        if seg.vmaddr % page != 0 || seg.fileoff % page != 0 {
            bad.push(format!(
                "vmaddr {:#x}/fileoff {:#x} not aligned to {page:#x}",
                seg.vmaddr, seg.fileoff
            ));
        }
        if seg.filesize > seg.vmsize {
            bad.push(format!(
                "filesize {:#x} exceeds vmsize {:#x}",
                seg.filesize, seg.vmsize
            ));
        }
        if seg
            .fileoff
            .checked_add(seg.filesize)
            .is_none_or(|e| e > file_len)
        {
            bad.push(format!(
                "file range {:#x}+{:#x} runs past the end of the file ({file_len:#x} bytes)",
                seg.fileoff, seg.filesize
            ));
        }
        if seg.vmaddr.checked_add(seg.vmsize).is_none() {
            bad.push(format!("vmsize {:#x} overflows", seg.vmsize));
        }
        if let Some((prev, end)) = &prev_end
            && seg.vmaddr != *end
        {
            bad.push(format!(
                "starts at {:#x} but {prev} ends at {end:#x}: segments must be contiguous",
                seg.vmaddr
            ));
        }
        if i + 1 == image.segments.len() && seg.vmsize % page != 0 {
            ctx.warn(
                "segments",
                format!(
                    "last segment {name} vmsize {:#x} is not a multiple of {page:#x}",
                    seg.vmsize
                ),
            );
        }
        for b in bad {
            ctx.error("segments", format!("segment {name}: {b}"));
        }
        // What the loaders apply is initprot; a maxprot of rwx is what older ld64
        // versions wrote for every segment and means nothing for a kext.
        if seg.initprot & macho::VM_PROT_WRITE != 0 && seg.initprot & macho::VM_PROT_EXECUTE != 0 {
            let msg = format!(
                "segment {name} is writable and executable (initprot {:#x}); make code segments \
                 r-x and data segments rw-",
                seg.initprot
            );
            match arch {
                Arch::X86_64 => ctx.warn("segments", msg),
                Arch::Arm64e => ctx.error(
                    "segments",
                    format!("{msg} (the kernel-collection builder rejects W+X on arm64e)"),
                ),
            }
        }
        prev_end = Some((name.clone(), seg.end()));
    }
    for sect in &image.sections {
        let Some(seg) = image.segments.get(sect.segment) else {
            continue;
        };
        let name = sect.display();
        if sect.segname != seg.name {
            ctx.warn(
                "segments",
                format!("section {name} is inside segment {}", seg.name),
            );
        }
        if sect.addr < seg.vmaddr
            || sect.end() > seg.end()
            || sect.addr.checked_add(sect.size).is_none()
        {
            ctx.error(
                "segments",
                format!(
                    "section {name} ({:#x}+{:#x}) lies outside its segment {} ({:#x}..{:#x})",
                    sect.addr,
                    sect.size,
                    seg.name,
                    seg.vmaddr,
                    seg.end()
                ),
            );
            continue;
        }
        if sect.is_zerofill() || sect.size == 0 {
            continue;
        }
        let expected = seg.fileoff.saturating_add(sect.addr - seg.vmaddr);
        if u64::from(sect.offset) != expected
            || u64::from(sect.offset).saturating_add(sect.size)
                > seg.fileoff.saturating_add(seg.filesize)
        {
            ctx.error(
                "segments",
                format!(
                    "section {name} has file offset {:#x} (size {:#x}) but its address maps to file \
                     offset {expected:#x} within segment {} ({:#x}+{:#x})",
                    sect.offset, sect.size, seg.name, seg.fileoff, seg.filesize
                ),
            );
        }
    }
    if arch == Arch::Arm64e {
        arm64e::check_segment_layout(image, ctx);
    }
    let cmds_end = HEADER_SIZE + u64::from(image.header.sizeofcmds);
    let first_content = image
        .sections
        .iter()
        .filter(|s| !s.is_zerofill() && s.size > 0 && s.offset > 0)
        .map(|s| u64::from(s.offset))
        .min();
    if let Some(first_content) = first_content {
        let room = first_content.saturating_sub(cmds_end);
        if first_content < cmds_end.saturating_add(SIGNATURE_ROOM) {
            ctx.error(
                "header-padding",
                format!(
                    "only {room} bytes between the end of the load commands ({cmds_end:#x}) and \
                     the first section ({first_content:#x}); codesign needs at least \
                     {SIGNATURE_ROOM} to add LC_CODE_SIGNATURE: leave more header padding"
                ),
            );
        }
    }
}

/// The name of an x86_64 relocation type.
fn x86_64_reloc_name(rtype: u8) -> String {
    const NAMES: [&str; 10] = [
        "X86_64_RELOC_UNSIGNED",
        "X86_64_RELOC_SIGNED",
        "X86_64_RELOC_BRANCH",
        "X86_64_RELOC_GOT_LOAD",
        "X86_64_RELOC_GOT",
        "X86_64_RELOC_SUBTRACTOR",
        "X86_64_RELOC_SIGNED_1",
        "X86_64_RELOC_SIGNED_2",
        "X86_64_RELOC_SIGNED_4",
        "X86_64_RELOC_TLV",
    ];
    NAMES
        .get(usize::from(rtype))
        .map_or_else(|| format!("relocation type {rtype}"), |n| n.to_string())
}

/// Symbol index → addresses of the external relocations that bind it.
pub(super) type References = HashMap<u32, Vec<u64>>;

/// Checks the x86_64 relocations; returns who references each undefined symbol.
fn check_relocations(image: &Image<'_>, ctx: &mut Ctx) -> References {
    let mut refs = References::new();
    for sect in image.sections.iter().filter(|s| s.nreloc != 0) {
        ctx.error(
            "relocations",
            format!(
                "section {} carries {} section relocations; a linked kext has relocations only in \
                 LC_DYSYMTAB (link with `kextld link`)",
                sect.display(),
                sect.nreloc
            ),
        );
    }
    let mut seen: HashMap<u32, bool> = HashMap::new();
    let mut dup = |addr: u32, ctx: &mut Ctx, what: &str| {
        if seen.insert(addr, true).is_some() {
            ctx.error(
                "relocations",
                format!("two relocations at {addr:#x} ({what}); keep one"),
            );
        }
    };
    for r in &image.local_relocs {
        let at = image.describe(u64::from(r.address));
        if r.is_scattered() {
            ctx.error(
                "relocations",
                format!(
                    "scattered local relocation {:#x}: kexts use none",
                    r.address
                ),
            );
            continue;
        }
        dup(r.address, ctx, "local");
        if r.rtype != macho::X86_64_RELOC_UNSIGNED || r.length != 3 || r.is_extern || r.pcrel {
            ctx.error(
                "relocations",
                format!(
                    "local relocation at {at} is {} (length {}, pcrel {}, extern {}); the loader \
                     accepts only X86_64_RELOC_UNSIGNED, length 3, non-pcrel, non-extern",
                    x86_64_reloc_name(r.rtype),
                    r.length,
                    r.pcrel,
                    r.is_extern
                ),
            );
            continue;
        }
        let Some(target) = image.section(r.symbolnum) else {
            ctx.error(
                "relocations",
                format!(
                    "local relocation at {at} names section ordinal {}, but the image has {} \
                     sections",
                    r.symbolnum,
                    image.sections.len()
                ),
            );
            continue;
        };
        let Some(value) = check_slot(image, r, 8, ctx, "local") else {
            continue;
        };
        if value < target.addr || value > target.end() {
            ctx.error(
                "relocations",
                format!(
                    "local relocation at {at} targets section {} ({:#x}..{:#x}) but its slot holds \
                     {value:#x}: the loader would slide a pointer that does not point there",
                    target.display(),
                    target.addr,
                    target.end()
                ),
            );
        }
    }
    for r in &image.external_relocs {
        let at = image.describe(u64::from(r.address));
        if r.is_scattered() {
            ctx.error(
                "relocations",
                format!(
                    "scattered external relocation {:#x}: kexts use none",
                    r.address
                ),
            );
            continue;
        }
        dup(r.address, ctx, "external");
        let sym = usize::try_from(r.symbolnum)
            .ok()
            .and_then(|i| image.symbols.get(i));
        let sym_name = sym.map_or_else(|| format!("symbol #{}", r.symbolnum), |s| s.name.clone());
        let form_ok = r.is_extern
            && ((r.rtype == macho::X86_64_RELOC_UNSIGNED && r.length == 3 && !r.pcrel)
                || (r.rtype == macho::X86_64_RELOC_BRANCH && r.length == 2 && r.pcrel));
        if !form_ok {
            ctx.error(
                "relocations",
                format!(
                    "external relocation at {at} against {sym_name} is {} (length {}, pcrel {}, \
                     extern {}); the loader accepts only X86_64_RELOC_UNSIGNED (length 3) and \
                     X86_64_RELOC_BRANCH (length 2, pcrel) with r_extern 1: compile with the \
                     kernel code model (-mkernel / the prx kernel target)",
                    x86_64_reloc_name(r.rtype),
                    r.length,
                    r.pcrel,
                    r.is_extern
                ),
            );
            continue;
        }
        match sym {
            None => {
                ctx.error(
                    "relocations",
                    format!(
                        "external relocation at {at} names symbol index {}, but the symbol table \
                         has {} entries",
                        r.symbolnum,
                        image.symbols.len()
                    ),
                );
                continue;
            }
            Some(s) if !s.is_undefined() => ctx.error(
                "relocations",
                format!(
                    "external relocation at {at} binds {sym_name}, which is defined in the kext; \
                     references to defined symbols must be resolved at link time (local relocation)"
                ),
            ),
            Some(_) => {}
        }
        let len = if r.rtype == macho::X86_64_RELOC_BRANCH {
            4
        } else {
            8
        };
        if check_slot(image, r, len, ctx, "external").is_some() {
            refs.entry(r.symbolnum)
                .or_default()
                .push(u64::from(r.address));
        }
    }
    refs
}

/// Checks a relocation's slot lies in a file-backed section; returns its value
/// (the 8-byte pointer, or the 4-byte displacement).
fn check_slot(image: &Image<'_>, r: &Reloc, len: u64, ctx: &mut Ctx, kind: &str) -> Option<u64> {
    let addr = u64::from(r.address);
    let Some((_, sect)) = image.section_at(addr, len) else {
        ctx.error(
            "relocations",
            format!("{kind} relocation at {addr:#x}: its {len}-byte slot is not inside any section of the image"),
        );
        return None;
    };
    let at = image.describe(addr);
    let Some(bytes) = image.bytes_at(addr, len).filter(|_| !sect.is_zerofill()) else {
        ctx.error(
            "relocations",
            format!(
                "{kind} relocation at {at} is in zero-fill section {}: it has no bytes to fix up",
                sect.display()
            ),
        );
        return None;
    };
    if addr % 4 != 0 && len == 8 {
        ctx.error(
            "relocations",
            format!("{kind} relocation at {at} is not 4-byte aligned; the macOS 11+ kernel-collection builder requires it"),
        );
    }
    let seg = image.segments.get(sect.segment);
    let is_branch = r.rtype == macho::X86_64_RELOC_BRANCH && r.is_extern;
    if is_branch && !sect.has_code() {
        ctx.error(
            "relocations",
            format!(
                "branch relocation at {at} is in non-code section {}",
                sect.display()
            ),
        );
    }
    if !is_branch && seg.is_some_and(|s| !s.writable()) {
        ctx.warn(
            "relocations",
            format!(
                "{kind} relocation at {at} patches read-only section {}: a text relocation; \
                 put pointers in __DATA",
                sect.display()
            ),
        );
    }
    if len == 8 {
        u64_at(bytes, 0)
    } else {
        u32_at(bytes, 0).map(u64::from)
    }
}

fn check_symbols(
    image: &Image<'_>,
    arch: Arch,
    opts: &super::Options<'_>,
    refs: &References,
    got_users: &BTreeMap<u64, BTreeSet<String>>,
    ctx: &mut Ctx,
    summary: &mut SliceSummary,
) {
    let Some(symtab) = image.symtab else { return };
    let nsyms = image.symbols.len();
    if let Some(dy) = image.dysymtab {
        let ranges_ok = dy.ilocalsym == 0
            && Some(dy.iextdefsym) == dy.ilocalsym.checked_add(dy.nlocalsym)
            && Some(dy.iundefsym) == dy.iextdefsym.checked_add(dy.nextdefsym)
            && dy.iundefsym.checked_add(dy.nundefsym) == Some(symtab.nsyms);
        if !ranges_ok {
            ctx.error(
                "symbols",
                format!(
                    "LC_DYSYMTAB ranges (locals {}+{}, extdefs {}+{}, undefs {}+{}) do not tile the \
                     {} symbols in order; the symbol table must be locals, then external \
                     definitions, then undefined symbols",
                    dy.ilocalsym,
                    dy.nlocalsym,
                    dy.iextdefsym,
                    dy.nextdefsym,
                    dy.iundefsym,
                    dy.nundefsym,
                    symtab.nsyms
                ),
            );
        } else if nsyms == symtab.nsyms as usize {
            let mut misplaced = Vec::new();
            for (i, s) in image.symbols.iter().enumerate() {
                let i = i as u32;
                let ok = if i < dy.iextdefsym {
                    s.is_stab() || !s.is_ext()
                } else if i < dy.iundefsym {
                    !s.is_stab() && s.is_ext() && !s.is_undefined()
                } else {
                    s.is_undefined() && s.is_ext()
                };
                if !ok {
                    misplaced.push(format!("{} (#{i}, n_type {:#x})", s.name, s.n_type));
                }
            }
            if !misplaced.is_empty() {
                ctx.error(
                    "symbols",
                    format!(
                        "symbols outside their LC_DYSYMTAB range (locals, external definitions, \
                         undefined): {}",
                        list(&misplaced)
                    ),
                );
            }
        }
        // arm64e kexts call the kernel through stubs, listed in the indirect
        // symbol table (the last two fields); x86_64 kexts have no stubs.
        let checked = match arch {
            Arch::X86_64 => &dy.unused_tables[..],
            Arch::Arm64e => &dy.unused_tables[..6],
        };
        if checked.iter().any(|&v| v != 0) {
            ctx.warn(
                "symbols",
                match arch {
                    Arch::X86_64 => {
                        "LC_DYSYMTAB has a table of contents, module table, external reference \
                         or indirect symbol table; x86_64 kexts have none (no stubs)"
                    }
                    Arch::Arm64e => {
                        "LC_DYSYMTAB has a table of contents, module table or external \
                         reference table; kexts have none"
                    }
                }
                .into(),
            );
        }
    }
    for s in image.symbols.iter().filter(|s| s.in_section()) {
        match image.section(u32::from(s.n_sect)) {
            None => ctx.error(
                "symbols",
                format!(
                    "{} names section ordinal {}, which does not exist",
                    s.name, s.n_sect
                ),
            ),
            Some(sect) if s.n_value < sect.addr || s.n_value > sect.end() => ctx.warn(
                "symbols",
                format!(
                    "{} ({:#x}) lies outside its section {}",
                    s.name,
                    s.n_value,
                    sect.display()
                ),
            ),
            Some(_) => {}
        }
    }
    let tables = opts.tables;
    let mut unresolved = Unresolved::default();
    let min_os = image.min_os();
    for (index, s) in image.symbols.iter().enumerate() {
        if !s.is_undefined() {
            continue;
        }
        summary.undefined.push(s.name.clone());
        let users = match refs.get(&(index as u32)) {
            Some(addrs) => {
                let names: BTreeSet<String> = addrs
                    .iter()
                    .flat_map(|&a| referrers(image, a, got_users))
                    .collect();
                format!(
                    "referenced from {}",
                    list(&names.into_iter().collect::<Vec<_>>())
                )
            }
            None if arch == Arch::Arm64e => "referenced by no chained fixup".into(),
            None => "referenced by no relocation".into(),
        };
        if !s.is_ext() {
            ctx.error(
                "symbols",
                format!(
                    "undefined symbol {} is not external (N_EXT); the loader cannot bind it",
                    s.name
                ),
            );
        }
        if s.n_value != 0 {
            ctx.error(
                "symbols",
                format!(
                    "{} is a common symbol (size {}); the kernel does not allocate commons: define \
                     it in the kext (e.g. a zero-initialised static)",
                    s.name, s.n_value
                ),
            );
            continue;
        }
        if s.n_desc != 0xFE00 {
            ctx.warn(
                "symbols",
                format!(
                    "undefined symbol {} has n_desc {:#06x}; kexts mark undefined symbols 0xfe00 \
                     (dynamic lookup)",
                    s.name, s.n_desc
                ),
            );
        }
        if s.name == PANIC_PATH_SYMBOL && opts.prx_rules {
            let direct: BTreeSet<String> = refs
                .get(&(index as u32))
                .into_iter()
                .flatten()
                .flat_map(|&a| referrers(image, a, got_users))
                .collect();
            let fns = if direct.is_empty() {
                format!("unknown functions ({users})")
            } else {
                // Name the kext's own functions that reach the panic, not only
                // core's panic machinery that calls the handler.
                let graph = match arch {
                    Arch::X86_64 => disasm::callers(image),
                    Arch::Arm64e => disasm::arm64_callers(image),
                };
                let (roots, between) = disasm::reaching(&graph, &direct);
                let show = |set: &BTreeSet<String>| {
                    list(&set.iter().map(|n| disasm::pretty(n)).collect::<Vec<_>>())
                };
                if between.is_empty() {
                    show(&roots)
                } else {
                    format!("{} (through {})", show(&roots), show(&between))
                }
            };
            ctx.error(
                "panic-path",
                format!(
                    "a panic path survived optimisation, reachable from {fns}; replace indexing/\
                     unwrap/overflowing arithmetic with checked forms (get, checked_*, wrapping_*) \
                     so the optimiser can prove no panic is reachable (a Rust panic in a kext is a \
                     kernel panic), and build with the kernel-release profile"
                ),
            );
            continue;
        }
        let lookup = tables.lookup(arch, &s.name);
        if let Lookup::Public(set) = lookup {
            summary.kpi_sets.insert(set.to_string());
            continue;
        }
        if !opts.prx_rules {
            if resolve_elsewhere(opts, arch, min_os, &s.name, &mut unresolved, summary) {
                continue;
            }
            if lookup == Lookup::Private {
                ctx.warn(
                    "kpi-private",
                    format!(
                        "{} is exported only by com.apple.kpi.private ({users}), which kexts not \
                         signed by Apple cannot declare: it loads only where the kernel's symbols \
                         are bound without that rule (e.g. kexts injected by a boot loader)",
                        s.name
                    ),
                );
                continue;
            }
        }
        match lookup {
            Lookup::Public(_) => {}
            Lookup::Private => ctx.error(
                "kpi-private",
                format!(
                    "{} is exported only by com.apple.kpi.private, which third-party kexts cannot \
                     bind ({users}); use a public KPI instead",
                    s.name
                ),
            ),
            Lookup::Unknown => ctx.error(
                "kpi-symbol",
                format!(
                    "{} is exported by no KPI set for {arch} ({users}){}; the kernel would refuse \
                     to load the kext (the loader binds every undefined symbol against the \
                     declared libraries: docs/kext-format.md, \"Symbols\"): define it in the kext \
                     or stop using it",
                    s.name,
                    unresolved.libraries_note(opts)
                ),
            ),
        }
    }
    unresolved.report(opts, ctx);
}

/// Undefined symbols resolved elsewhere than the current KPI table, for one summary each.
#[derive(Default)]
struct Unresolved {
    /// Pad slots left for the vtable patcher.
    padslots: Vec<String>,
    /// Found in other macOS releases' KPI lists: (symbol, releases).
    other_releases: Vec<(String, String)>,
    /// Exported by KPI sets only in releases before the kext's minimum macOS.
    outside_range: Vec<(String, String)>,
    /// Resolved against a dependency bundle: id → count.
    by_dependency: BTreeMap<String, usize>,
    /// Left for non-KPI OSBundleLibraries dependencies not given to check.
    unchecked: Vec<String>,
}

impl Unresolved {
    /// ", and by none of …" naming the dependencies consulted, for the error.
    fn libraries_note(&self, opts: &super::Options<'_>) -> String {
        let given: Vec<&str> = opts.dependencies.iter().map(|d| d.id.as_str()).collect();
        if given.is_empty() {
            String::new()
        } else {
            format!(" nor by the dependencies {}", given.join(", "))
        }
    }

    fn report(self, opts: &super::Options<'_>, ctx: &mut Ctx) {
        if !self.padslots.is_empty() {
            ctx.push(
                Severity::Info,
                "kpi-symbol",
                format!(
                    "{} reserved vtable pad slots ({}) are left to the loader's vtable patcher, \
                     which replaces them with the superclass's entries (xnu \
                     libkern/kxld/kxld_vtable.c)",
                    self.padslots.len(),
                    list(&self.padslots)
                ),
            );
        }
        if !self.other_releases.is_empty() {
            let v: Vec<String> = self
                .other_releases
                .iter()
                .map(|(s, r)| format!("{s} (macOS {r})"))
                .collect();
            ctx.push(
                Severity::Info,
                "kpi-symbol",
                format!(
                    "{} symbols are exported by KPI sets of other macOS releases than the current \
                     table's ({}): {}",
                    v.len(),
                    opts.tables.provenance(),
                    list(&v)
                ),
            );
        }
        if !self.outside_range.is_empty() {
            let v: Vec<String> = self
                .outside_range
                .iter()
                .map(|(s, r)| format!("{s} (macOS {r})"))
                .collect();
            ctx.warn(
                "kpi-symbol",
                format!(
                    "{} symbols are exported only by macOS releases older than the kext's \
                     minimum: {}; it will not load where they are missing",
                    v.len(),
                    list(&v)
                ),
            );
        }
        for (id, n) in &self.by_dependency {
            ctx.push(
                Severity::Info,
                "kpi-symbol",
                format!("{n} symbols resolved against the dependency {id}"),
            );
        }
        if !self.unchecked.is_empty() {
            let libs = opts.non_kpi_libraries();
            ctx.warn(
                "kpi-symbol",
                format!(
                    "{} symbols are exported by no KPI set and are left to the non-KPI \
                     OSBundleLibraries ({}), which were not given: {}; pass those bundles with \
                     --dependency to check them",
                    self.unchecked.len(),
                    libs.join(", "),
                    list(&self.unchecked)
                ),
            );
        }
    }
}

/// Resolves an undefined symbol that the current KPI table does not export
/// publicly: other macOS releases' KPI lists, vtable pad slots, dependency
/// bundles, or the declared non-KPI libraries. True if accounted for.
fn resolve_elsewhere(
    opts: &super::Options<'_>,
    arch: Arch,
    min_os: Option<crate::MinOs>,
    name: &str,
    unresolved: &mut Unresolved,
    summary: &mut SliceSummary,
) -> bool {
    if let Some(history) = opts.history {
        let exported: Vec<_> = history
            .exporters(arch, name)
            .into_iter()
            .filter(|e| !e.set.is_private())
            .collect();
        if let Some(first) = exported.first() {
            let all = exported.iter().fold(0, |m, e| m | e.releases);
            summary.kpi_sets.insert(first.set.bundle_id().to_string());
            let in_range = min_os.map_or(all, |m| all & history.from_release(m));
            if in_range == 0 {
                unresolved
                    .outside_range
                    .push((name.to_owned(), history.describe(all)));
            } else {
                unresolved
                    .other_releases
                    .push((name.to_owned(), history.describe(all)));
            }
            return true;
        }
    }
    if name.contains("_RESERVED") {
        unresolved.padslots.push(name.to_owned());
        return true;
    }
    for dep in &opts.dependencies {
        if dep.exports(arch, name) {
            *unresolved.by_dependency.entry(dep.id.clone()).or_default() += 1;
            return true;
        }
    }
    let given: Vec<&str> = opts.dependencies.iter().map(|d| d.id.as_str()).collect();
    let unchecked = opts
        .non_kpi_libraries()
        .iter()
        .any(|l| !given.contains(&l.as_str()));
    if unchecked {
        unresolved.unchecked.push(name.to_owned());
        return true;
    }
    false
}

/// Who a relocation at `addr` stands for: the function containing it, or, for a
/// pointer slot in data, the functions that load the slot (else the data symbol
/// or `section+offset` holding it).
fn referrers(
    image: &Image<'_>,
    addr: u64,
    got_users: &BTreeMap<u64, BTreeSet<String>>,
) -> Vec<String> {
    if let Some(users) = got_users.get(&addr) {
        let slot = image.describe(addr);
        return users.iter().map(|f| format!("{f} via {slot}")).collect();
    }
    match image.section_at(addr, 1) {
        Some((_, sect)) if sect.has_code() => vec![image.function_name(addr)],
        _ => vec![format!("the pointer at {}", image.describe(addr))],
    }
}

/// Reads a NUL-terminated printable string from a fixed 64-byte field.
fn kmod_string(field: &[u8]) -> Result<String, String> {
    let Some(end) = field.iter().position(|&b| b == 0) else {
        return Err("is not NUL-terminated within its 64 bytes".into());
    };
    let s = &field[..end];
    if s.is_empty() {
        return Err("is empty".into());
    }
    if let Some(b) = s.iter().find(|b| !(0x20..0x7f).contains(*b)) {
        return Err(format!("contains the non-printable byte {b:#04x}"));
    }
    Ok(String::from_utf8_lossy(s).into_owned())
}

fn check_kmod_info(
    image: &Image<'_>,
    arch: Arch,
    fixups: Option<&arm64e::Fixups>,
    ctx: &mut Ctx,
    summary: &mut SliceSummary,
) {
    const FIX: &str = "define it with common's kext! macro";
    let Some(sym) = image
        .symbols
        .iter()
        .find(|s| s.name == "_kmod_info" && !s.is_undefined() && !s.is_stab())
    else {
        let why = if image.symbols.iter().any(|s| s.name == "_kmod_info") {
            "is undefined"
        } else {
            "is missing"
        };
        return ctx.error(
            "kmod-info",
            format!("symbol _kmod_info {why}: the loader finds the kext's name, version and start/stop through it; {FIX}"),
        );
    };
    if !sym.is_ext() {
        ctx.warn(
            "kmod-info",
            "_kmod_info is not an external symbol; the loaders look up the exported symbol".into(),
        );
    }
    let addr = sym.n_value;
    let Some(sect) = image
        .section(u32::from(sym.n_sect))
        .filter(|_| sym.in_section())
    else {
        return ctx.error(
            "kmod-info",
            format!("_kmod_info ({addr:#x}) is not defined in a section; {FIX}"),
        );
    };
    if sect.segname != "__DATA" || sect.is_zerofill() {
        return ctx.error(
            "kmod-info",
            format!(
                "_kmod_info is in {}; it must be initialised data in __DATA (__DATA,__data); {FIX}",
                sect.display()
            ),
        );
    }
    if !sect.contains(addr, kmod::SIZE) {
        return ctx.error(
            "kmod-info",
            format!(
                "_kmod_info at {addr:#x} has only {} bytes to the end of {}; kmod_info_t is {} bytes",
                sect.end().saturating_sub(addr),
                sect.display(),
                kmod::SIZE
            ),
        );
    }
    let Some(info) = image.bytes_at(addr, kmod::SIZE) else {
        return ctx.error(
            "kmod-info",
            format!("_kmod_info at {addr:#x} is not backed by file contents"),
        );
    };
    let version = u32_at(info, kmod::INFO_VERSION).unwrap_or(0);
    if version != 1 {
        ctx.error(
            "kmod-info",
            format!("_kmod_info.info_version is {version}; it must be 1 (KMOD_INFO_VERSION)"),
        );
    }
    let field = |off: u64| {
        info.get(off as usize..(off + kmod::STR_LEN) as usize)
            .unwrap_or(&[])
    };
    match kmod_string(field(kmod::NAME)) {
        Ok(name) => summary.kmod_name = Some(name),
        Err(e) => ctx.error(
            "kmod-info",
            format!("_kmod_info.name {e}; it must be the CFBundleIdentifier"),
        ),
    }
    match kmod_string(field(kmod::VERSION)) {
        Ok(v) => summary.kmod_version = Some(v),
        Err(e) => ctx.error(
            "kmod-info",
            format!("_kmod_info.version {e}; it must be the CFBundleVersion"),
        ),
    }
    if arch == Arch::Arm64e {
        let slots = [("start", addr + kmod::START), ("stop", addr + kmod::STOP)];
        return arm64e::check_kmod_slots(image, fixups, slots, ctx);
    }
    let text = image
        .sections
        .iter()
        .find(|s| s.segname == "__TEXT" && s.sectname == "__text");
    for (field, off) in [("start", kmod::START), ("stop", kmod::STOP)] {
        let slot = addr + off;
        let slot32 = u32::try_from(slot).ok();
        let local = image
            .local_relocs
            .iter()
            .any(|r| Some(r.address) == slot32 && !r.is_scattered());
        if image
            .external_relocs
            .iter()
            .any(|r| Some(r.address) == slot32)
        {
            ctx.error(
                "kmod-info",
                format!("_kmod_info.{field} ({slot:#x}) is bound to an undefined symbol; it must point at a function of the kext"),
            );
            continue;
        }
        if !local {
            ctx.error(
                "kmod-info",
                format!(
                    "_kmod_info.{field} ({slot:#x}) has no local relocation, so the loader would \
                     not slide it and the kernel would jump to an unslid address"
                ),
            );
        }
        let value = u64_at(info, off).unwrap_or(0);
        match text {
            Some(t) if value >= t.addr && value < t.end() => {
                let at_symbol = image
                    .symbols_by_addr()
                    .iter()
                    .any(|&i| image.symbols[i].n_value == value && image.section(u32::from(image.symbols[i].n_sect)).is_some_and(|s| std::ptr::eq(s, t)));
                if !at_symbol {
                    ctx.warn(
                        "kmod-info",
                        format!("_kmod_info.{field} points at {}, which is not the start of a function symbol", image.describe(value)),
                    );
                }
            }
            _ => ctx.error(
                "kmod-info",
                format!("_kmod_info.{field} holds {value:#x}, which is not inside __TEXT,__text; it must point at the kext's {field} function"),
            ),
        }
    }
}
