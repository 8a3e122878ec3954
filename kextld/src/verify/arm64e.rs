//! The arm64e rules: load-command allowlist, segment layout, no classic
//! relocations, `LC_DYLD_CHAINED_FIXUPS` (pointer format 7), pointer-signed
//! `kmod_info` start/stop, and `LC_SEGMENT_SPLIT_INFO` v2 coverage of every
//! ADRP, every branch to a stub and every rebased pointer.
//!
//! Both linkedit payloads are decoded here from the formats' definitions
//! (dyld's `<mach-o/fixup-chains.h>`, ld64/dyld's `DYLD_CACHE_ADJ_V2_*`), not
//! with the linker's encoders, so that a bug in `link::arm64e` cannot hide
//! behind the same bug in its checker. Only test-independent facts (the
//! ptrauth discriminator of kmod start/stop) come from the rest of the crate.
//!
//! The decoded fixups also tell who references each kernel symbol: a bind sits
//! in a `__got`/`__auth_got` slot, a stub loads the slot (`adrp`+`ldr`/`add`),
//! and `bl`/`b` sites call the stub; code may also load a GOT slot directly.

use std::collections::{BTreeMap, BTreeSet};

use super::checks::{Ctx, References, list};
use super::consts as macho;
use super::image::{Image, slice_at, u16_at, u32_at, u64_at};
use crate::ptrauth;

/// `DYLD_CHAINED_PTR_ARM64E_KERNEL`.
const POINTER_FORMAT_KERNEL: u16 = 7;
/// Chain page size of the kernel format.
const CHAIN_PAGE: u64 = 0x1000;
/// `DYLD_CHAINED_PTR_START_NONE`.
const START_NONE: u16 = 0xFFFF;
/// `DYLD_CHAINED_PTR_START_MULTI` (32-bit formats only).
const START_MULTI: u16 = 0x8000;
/// `DYLD_CHAINED_IMPORT`.
const IMPORTS_FORMAT: u32 = 1;
/// `BIND_SPECIAL_DYLIB_FLAT_LOOKUP` as an 8-bit lib ordinal.
const LIB_ORDINAL_FLAT: u32 = 0xFE;
/// Size of `dyld_chained_fixups_header`.
const FIXUPS_HEADER_SIZE: u64 = 28;
/// Offset of `page_start[]` in `dyld_chained_starts_in_segment`.
const STARTS_PAGE_START: u64 = 22;
/// `DYLD_CACHE_ADJ_V2_FORMAT`.
const SPLIT_V2_FORMAT: u8 = 0x7F;
/// `S_SYMBOL_STUBS`.
const S_SYMBOL_STUBS: u32 = 0x8;
const VM_PROT_READ: u32 = 0x1;
/// Key IA in a chained pointer's 2-bit key field.
const KEY_IA: u8 = 0;
/// At most this many findings of one kind are listed; the rest are counted.
const MAX_FINDINGS: usize = 12;

/// `DYLD_CACHE_ADJ_V2_*` kinds (Apple's dyld `mach-o/loader.h` / ld64).
mod kind {
    pub const POINTER_32: u64 = 1;
    pub const POINTER_64: u64 = 2;
    pub const DELTA_32: u64 = 3;
    pub const DELTA_64: u64 = 4;
    pub const ARM64_ADRP: u64 = 5;
    pub const ARM64_OFF12: u64 = 6;
    pub const ARM64_BR26: u64 = 7;
    pub const IMAGE_OFF_32: u64 = 12;
    pub const THREADED_POINTER_64: u64 = 13;

    pub fn name(kind: u64) -> String {
        match kind {
            POINTER_32 => "POINTER_32".into(),
            POINTER_64 => "POINTER_64".into(),
            DELTA_32 => "DELTA_32".into(),
            DELTA_64 => "DELTA_64".into(),
            ARM64_ADRP => "ARM64_ADRP".into(),
            ARM64_OFF12 => "ARM64_OFF12".into(),
            ARM64_BR26 => "ARM64_BR26".into(),
            8 => "ARM_MOVW_MOVT".into(),
            9 => "ARM_BR24".into(),
            10 => "THUMB_MOVW_MOVT".into(),
            11 => "THUMB_BR22".into(),
            IMAGE_OFF_32 => "IMAGE_OFF_32".into(),
            THREADED_POINTER_64 => "THREADED_POINTER_64".into(),
            k => format!("kind {k}"),
        }
    }
}

/// The segments of an arm64e kext, in order, with their protection.
const SEGMENTS: [(&str, u32, &str); 5] = [
    ("__TEXT", VM_PROT_READ, "r--"),
    ("__TEXT_EXEC", VM_PROT_READ | macho::VM_PROT_EXECUTE, "r-x"),
    ("__DATA", VM_PROT_READ | macho::VM_PROT_WRITE, "rw-"),
    ("__DATA_CONST", VM_PROT_READ | macho::VM_PROT_WRITE, "rw-"),
    ("__LINKEDIT", VM_PROT_READ, "r--"),
];

/// What the linker must do when the image breaks a rule it alone controls.
const RELINK: &str = "relink with `kextld link --arch arm64e` (if kextld made this image, it is a \
                      kextld bug: report it)";

/// Load commands an arm64e kext may have.
pub(super) fn allowed_command(cmd: u32) -> bool {
    matches!(
        cmd,
        macho::LC_SEGMENT_64
            | macho::LC_DYLD_CHAINED_FIXUPS
            | macho::LC_SYMTAB
            | macho::LC_DYSYMTAB
            | macho::LC_UUID
            | macho::LC_SOURCE_VERSION
            | macho::LC_SEGMENT_SPLIT_INFO
            | macho::LC_BUILD_VERSION
            | macho::LC_VERSION_MIN_MACOSX
            | macho::LC_CODE_SIGNATURE
            | macho::LC_FUNCTION_STARTS
            | macho::LC_DATA_IN_CODE
    )
}

/// Load commands an arm64e kext must have exactly once, and why.
pub(super) const REQUIRED_COMMANDS: [(u32, &str); 2] = [
    (
        macho::LC_DYLD_CHAINED_FIXUPS,
        "the kernel-collection builder rebases and binds arm64e kexts only through chained fixups",
    ),
    (
        macho::LC_SEGMENT_SPLIT_INFO,
        "the kernel-collection builder moves segments apart and needs split-seg v2 info to fix \
         up ADRP/branch/pointer references",
    ),
];

/// Segment order and protections (16 KiB alignment is checked with the common rules).
pub(super) fn check_segment_layout(image: &Image<'_>, ctx: &mut Ctx) {
    let names: Vec<&str> = image.segments.iter().map(|s| s.name.as_str()).collect();
    let expected: Vec<&str> = SEGMENTS.iter().map(|s| s.0).collect();
    if names != expected {
        ctx.error(
            "segments",
            format!(
                "segments are [{}]; an arm64e kext has exactly [{}] in that order: {RELINK}",
                names.join(", "),
                expected.join(", ")
            ),
        );
    }
    for seg in &image.segments {
        let Some(&(_, prot, text)) = SEGMENTS.iter().find(|s| s.0 == seg.name) else {
            continue;
        };
        if seg.initprot != prot || seg.maxprot != prot {
            ctx.error(
                "segments",
                format!(
                    "segment {} has initprot {:#x} maxprot {:#x}; on arm64e it must be {text} \
                     ({prot:#x}) for both: {RELINK}",
                    seg.name, seg.initprot, seg.maxprot
                ),
            );
        }
    }
}

/// One decoded chained pointer (format 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fixup {
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

impl Fixup {
    /// Decodes a chained pointer; returns it, its `next` (4-byte strides) and
    /// whether the reserved bits of a bind are zero.
    fn decode(v: u64) -> (Fixup, u64, bool) {
        let next = (v >> 51) & 0x7FF;
        let auth = v >> 63 != 0;
        let bind = (v >> 62) & 1 != 0;
        let key = ((v >> 49) & 3) as u8;
        let addr_div = (v >> 48) & 1 != 0;
        let diversity = ((v >> 32) & 0xFFFF) as u16;
        let ordinal = (v & 0xFFFF) as u32;
        let zero = (v >> 16) & 0xFFFF == 0;
        let fixup = match (auth, bind) {
            (false, false) => Fixup::Rebase {
                target: v & ((1 << 43) - 1),
                high8: ((v >> 43) & 0xFF) as u8,
            },
            (true, false) => Fixup::AuthRebase {
                target: v & 0xFFFF_FFFF,
                key,
                addr_div,
                diversity,
            },
            (false, true) => {
                let raw = (v >> 32) & 0x7_FFFF;
                // Sign-extend 19 bits.
                let addend = ((raw << 45) as i64) >> 45;
                Fixup::Bind { ordinal, addend }
            }
            (true, true) => Fixup::AuthBind {
                ordinal,
                key,
                addr_div,
                diversity,
            },
        };
        (fixup, next, zero || !bind)
    }

    fn ordinal(self) -> Option<u32> {
        match self {
            Fixup::Bind { ordinal, .. } | Fixup::AuthBind { ordinal, .. } => Some(ordinal),
            _ => None,
        }
    }

    fn rebase_target(self) -> Option<u64> {
        match self {
            Fixup::Rebase { target, .. } | Fixup::AuthRebase { target, .. } => Some(target),
            _ => None,
        }
    }
}

fn key_name(key: u8) -> &'static str {
    ["IA", "IB", "DA", "DB"]
        .get(usize::from(key))
        .copied()
        .unwrap_or("?")
}

/// The decoded `LC_DYLD_CHAINED_FIXUPS`.
#[derive(Debug, Default)]
pub(super) struct Fixups {
    /// Slot address → fixup, for every slot the chains reach.
    pub slots: BTreeMap<u64, Fixup>,
    /// Import names by ordinal (`None` where unreadable).
    pub imports: Vec<Option<String>>,
}

/// What the arm64e checks produce for the common ones.
pub(super) struct Analysis {
    /// The decoded fixups, if the command could be decoded.
    pub fixups: Option<Fixups>,
    /// Undefined symbol index → code addresses (call sites, GOT loads) or data
    /// slots that reference it.
    pub refs: References,
}

/// Collects findings of one kind, listing at most [`MAX_FINDINGS`].
struct Capped<'c> {
    check: &'static str,
    listed: usize,
    more: usize,
    what: &'static str,
    ctx: &'c mut Ctx,
}

impl<'c> Capped<'c> {
    fn new(ctx: &'c mut Ctx, check: &'static str, what: &'static str) -> Capped<'c> {
        Capped {
            check,
            listed: 0,
            more: 0,
            what,
            ctx,
        }
    }
    fn error(&mut self, message: String) {
        if self.listed < MAX_FINDINGS {
            self.listed += 1;
            self.ctx.error(self.check, message);
        } else {
            self.more += 1;
        }
    }
}

impl Drop for Capped<'_> {
    fn drop(&mut self) {
        if self.more > 0 {
            self.ctx.error(
                self.check,
                format!("{} more {} not listed", self.more, self.what),
            );
        }
    }
}

/// Runs the arm64e-only checks that do not depend on the symbol checks.
pub(super) fn check(image: &Image<'_>, ctx: &mut Ctx) -> Analysis {
    check_no_classic_relocations(image, ctx);
    let fixups = decode_fixups(image, ctx);
    if let Some(f) = &fixups {
        check_fixup_targets(image, f, ctx);
        check_unsigned_code_pointers(image, f, ctx);
    }
    let code = Code::scan(image);
    let split = decode_split_seg(image, ctx);
    if let Some(split) = &split {
        check_split_coverage(image, &code, fixups.as_ref(), split, ctx);
    }
    let refs = fixups
        .as_ref()
        .map(|f| references(image, &code, f))
        .unwrap_or_default();
    Analysis { fixups, refs }
}

/// A plain (unauthenticated) rebase pointing into executable code is a function
/// pointer the arm64e kernel cannot call: kernel code authenticates the
/// function pointers it calls (`blraa` and friends), so an unsigned one faults
/// on the first call. Typical cause: an object compiled without the arm64e
/// pointer-auth ABI, or a callback slot not marked for signing
/// (docs/kext-format.md, "arm64e ABI"). A warning: the pointer may only be
/// compared or called by the kext's own unauthenticated code.
fn check_unsigned_code_pointers(image: &Image<'_>, fixups: &Fixups, ctx: &mut Ctx) {
    let exec = |addr: u64| {
        image.segments.iter().any(|s| {
            s.initprot & super::consts::VM_PROT_EXECUTE != 0 && addr >= s.vmaddr && addr < s.end()
        })
    };
    let mut found = Vec::new();
    for (&slot, fixup) in &fixups.slots {
        if let Fixup::Rebase { target, .. } = *fixup
            && exec(target)
        {
            found.push(format!(
                "{} → {}",
                image.describe(slot),
                image.describe(target)
            ));
        }
    }
    if !found.is_empty() {
        ctx.warn(
            "ptrauth",
            format!(
                "{} plain (unsigned) rebases point into executable code: {}; the arm64e kernel \
                 authenticates the function pointers it calls and faults on unsigned ones: compile \
                 for arm64e and mark kernel-called slots for signing (common's sign_slot!)",
                found.len(),
                super::checks::list(&found)
            ),
        );
    }
}

fn check_no_classic_relocations(image: &Image<'_>, ctx: &mut Ctx) {
    if let Some(dy) = image.dysymtab
        && (dy.nlocrel != 0 || dy.nextrel != 0)
    {
        ctx.error(
            "relocations",
            format!(
                "LC_DYSYMTAB has {} local and {} external relocations; arm64e kexts have none \
                 (every rebase and bind is a chained fixup): {RELINK}",
                dy.nlocrel, dy.nextrel
            ),
        );
    }
    for sect in image.sections.iter().filter(|s| s.nreloc != 0) {
        ctx.error(
            "relocations",
            format!(
                "section {} carries {} relocations; arm64e kexts have none: {RELINK}",
                sect.display(),
                sect.nreloc
            ),
        );
    }
}

/// The payload of a `linkedit_data_command`, checked to lie in `__LINKEDIT`.
fn linkedit_payload<'a>(
    image: &Image<'a>,
    cmd: u32,
    name: &str,
    check: &'static str,
    ctx: &mut Ctx,
) -> Option<&'a [u8]> {
    let lc = image.commands.iter().find(|c| c.cmd == cmd)?;
    let data = image.data;
    let (Some(size), Some(off), Some(len)) = (
        u32_at(data, lc.offset + 4),
        u32_at(data, lc.offset + 8),
        u32_at(data, lc.offset + 12),
    ) else {
        ctx.error(check, format!("{name} at {:#x} is truncated", lc.offset));
        return None;
    };
    if size < 16 {
        ctx.error(
            check,
            format!(
                "{name} at {:#x} has cmdsize {size}; it must be 16",
                lc.offset
            ),
        );
        return None;
    }
    let (off, len) = (u64::from(off), u64::from(len));
    let in_linkedit = image.segments.iter().any(|s| {
        s.name == "__LINKEDIT"
            && off >= s.fileoff
            && off.saturating_add(len) <= s.fileoff.saturating_add(s.filesize)
    });
    let Some(payload) = slice_at(data, off, len).filter(|_| in_linkedit) else {
        ctx.error(
            check,
            format!(
                "{name} data ({off:#x}+{len:#x}) does not lie inside __LINKEDIT within the file: \
                 {RELINK}"
            ),
        );
        return None;
    };
    Some(payload)
}

fn decode_fixups(image: &Image<'_>, ctx: &mut Ctx) -> Option<Fixups> {
    const CHECK: &str = "chained-fixups";
    let p = linkedit_payload(
        image,
        macho::LC_DYLD_CHAINED_FIXUPS,
        "LC_DYLD_CHAINED_FIXUPS",
        CHECK,
        ctx,
    )?;
    let h = |i: u64| u32_at(p, 4 * i);
    let fields: Option<Vec<u32>> = (0..7).map(h).collect();
    let Some(
        [
            version,
            starts_offset,
            imports_offset,
            symbols_offset,
            imports_count,
            imports_format,
            symbols_format,
        ],
    ) = fields.and_then(|f| <[u32; 7]>::try_from(f).ok())
    else {
        ctx.error(
            CHECK,
            format!(
                "the chained-fixups header needs {FIXUPS_HEADER_SIZE} bytes but the payload has {}: {RELINK}",
                p.len()
            ),
        );
        return None;
    };
    let mut bad_header = Vec::new();
    if version != 0 {
        bad_header.push(format!("fixups_version {version} (must be 0)"));
    }
    if imports_format != IMPORTS_FORMAT {
        bad_header.push(format!(
            "imports_format {imports_format} (must be 1, DYLD_CHAINED_IMPORT)"
        ));
    }
    if symbols_format != 0 {
        bad_header.push(format!(
            "symbols_format {symbols_format} (must be 0, uncompressed)"
        ));
    }
    if !bad_header.is_empty() {
        ctx.error(
            CHECK,
            format!(
                "chained-fixups header has {}: {RELINK}",
                bad_header.join(", ")
            ),
        );
        return None;
    }
    let mut out = Fixups::default();

    // Imports.
    let (imports_offset, symbols_offset) = (u64::from(imports_offset), u64::from(symbols_offset));
    if slice_at(p, imports_offset, u64::from(imports_count) * 4).is_none() {
        ctx.error(
            CHECK,
            format!(
                "the {imports_count} chained imports at {imports_offset:#x} run past the end of \
                 the payload ({:#x} bytes): {RELINK}",
                p.len()
            ),
        );
        return None;
    }
    let symbols = p.get(symbols_offset as usize..).unwrap_or(&[]);
    {
        let mut bad = Capped::new(ctx, CHECK, "bad imports");
        for i in 0..u64::from(imports_count) {
            let raw = u32_at(p, imports_offset + 4 * i).unwrap_or(0);
            let lib_ordinal = raw & 0xFF;
            let name_offset = (raw >> 9) as usize;
            let name = symbols
                .get(name_offset..)
                .and_then(|rest| rest.iter().position(|&b| b == 0).map(|n| &rest[..n]))
                .filter(|n| !n.is_empty())
                .map(|n| String::from_utf8_lossy(n).into_owned());
            match &name {
                None => bad.error(format!(
                    "chained import #{i} has name offset {name_offset:#x}, which is not a \
                     NUL-terminated name in the symbol pool at {symbols_offset:#x}: {RELINK}"
                )),
                Some(n) if lib_ordinal != LIB_ORDINAL_FLAT => bad.error(format!(
                    "chained import #{i} {n} has lib_ordinal {lib_ordinal:#x}; kexts bind by flat \
                     lookup (0xfe): {RELINK}"
                )),
                Some(n) => {
                    let undefined = image
                        .symbols
                        .iter()
                        .any(|s| s.is_undefined() && s.name == *n);
                    if !undefined {
                        bad.error(format!(
                            "chained import #{i} {n} is not an undefined symbol of the symbol \
                             table: the loader binds imports by their symbol-table entry and the \
                             KPI check cannot see it: {RELINK}"
                        ));
                    }
                }
            }
            out.imports.push(name);
        }
    }

    // Starts and chains.
    let starts_offset = u64::from(starts_offset);
    let Some(seg_count) = u32_at(p, starts_offset) else {
        ctx.error(
            CHECK,
            format!("dyld_chained_starts_in_image at {starts_offset:#x} is outside the payload: {RELINK}"),
        );
        return Some(out);
    };
    if seg_count as usize != image.segments.len() {
        ctx.error(
            CHECK,
            format!(
                "dyld_chained_starts_in_image lists {seg_count} segments but the image has {}: \
                 {RELINK}",
                image.segments.len()
            ),
        );
    }
    let mut bad = Capped::new(ctx, CHECK, "chained-fixup problems");
    for (i, seg) in image.segments.iter().enumerate().take(seg_count as usize) {
        let Some(info) = u32_at(p, starts_offset + 4 + 4 * i as u64) else {
            bad.error(format!(
                "dyld_chained_starts_in_image offsets run past the payload: {RELINK}"
            ));
            break;
        };
        if info == 0 {
            continue;
        }
        let name = &seg.name;
        if !seg.writable() {
            bad.error(format!(
                "chained fixups start in read-only segment {name}: every fixup must lie in a \
                 writable segment (__DATA, __DATA_CONST); move the pointers there"
            ));
            continue;
        }
        let base = starts_offset + u64::from(info);
        let (Some(size), Some(page_size), Some(format), Some(seg_offset), Some(page_count)) = (
            u32_at(p, base),
            u16_at(p, base + 4),
            u16_at(p, base + 6),
            u64_at(p, base + 8),
            u16_at(p, base + 20),
        ) else {
            bad.error(format!(
                "the chained starts of segment {name} at {base:#x} run past the payload: {RELINK}"
            ));
            continue;
        };
        let mut problems = Vec::new();
        if format != POINTER_FORMAT_KERNEL {
            problems.push(format!(
                "pointer_format {format} (must be 7, DYLD_CHAINED_PTR_ARM64E_KERNEL)"
            ));
        }
        if u64::from(page_size) != CHAIN_PAGE {
            problems.push(format!("page_size {page_size:#x} (must be 0x1000)"));
        }
        if seg_offset != seg.vmaddr {
            problems.push(format!(
                "segment_offset {seg_offset:#x} (the segment is at {:#x})",
                seg.vmaddr
            ));
        }
        if u64::from(page_count) > seg.vmsize.div_ceil(CHAIN_PAGE) {
            problems.push(format!(
                "{page_count} pages (the segment has {:#x} bytes)",
                seg.vmsize
            ));
        }
        if u64::from(size) < STARTS_PAGE_START + 2 * u64::from(page_count)
            || slice_at(p, base, u64::from(size)).is_none()
        {
            problems.push(format!(
                "size {size} for {page_count} pages, or past the payload"
            ));
        }
        if !problems.is_empty() {
            bad.error(format!(
                "the chained starts of segment {name} have {}: {RELINK}",
                problems.join(", ")
            ));
            continue;
        }
        let seg_file_end = seg.vmaddr.saturating_add(seg.filesize);
        for page in 0..u64::from(page_count) {
            let start = u16_at(p, base + STARTS_PAGE_START + 2 * page).unwrap_or(START_NONE);
            if start == START_NONE {
                continue;
            }
            let page_addr = seg.vmaddr + page * CHAIN_PAGE;
            if start & START_MULTI != 0 || u64::from(start) >= CHAIN_PAGE {
                bad.error(format!(
                    "page {page} of segment {name} ({page_addr:#x}) starts its chain at \
                     {start:#x}, outside the 4 KiB page: {RELINK}"
                ));
                continue;
            }
            let page_end = page_addr + CHAIN_PAGE;
            let mut at = page_addr + u64::from(start);
            loop {
                let here = image.describe(at);
                if !at.is_multiple_of(4) {
                    bad.error(format!(
                        "chained fixup at {here} is not 4-byte aligned; the kernel-collection \
                         builder requires 4-byte aligned fixups: align the pointer (e.g. drop \
                         #pragma pack around it)"
                    ));
                    break;
                }
                let in_section = image
                    .section_at(at, 8)
                    .is_some_and(|(_, s)| !s.is_zerofill());
                let Some(bytes) = image
                    .bytes_at(at, 8)
                    .filter(|_| in_section && at.checked_add(8).is_some_and(|e| e <= seg_file_end))
                else {
                    bad.error(format!(
                        "chained fixup at {here} (chain of page {page_addr:#x}) is not inside an \
                         initialised section of segment {name}: {RELINK}"
                    ));
                    break;
                };
                let value = u64_at(bytes, 0).unwrap_or(0);
                let (fixup, next, zero_ok) = Fixup::decode(value);
                if !zero_ok {
                    bad.error(format!(
                        "chained bind at {here} ({value:#018x}) has non-zero reserved bits \
                         16-31: {RELINK}"
                    ));
                }
                if out.slots.insert(at, fixup).is_some() {
                    bad.error(format!("the chain visits {here} twice: {RELINK}"));
                    break;
                }
                if next == 0 {
                    break;
                }
                let to = at + 4 * next;
                if next < 2 {
                    bad.error(format!(
                        "chained fixup at {here} has next {next}: the next pointer would overlap \
                         it: {RELINK}"
                    ));
                    break;
                }
                if to >= page_end {
                    bad.error(format!(
                        "chained fixup at {here} ({value:#018x}) has next {next}, which leaves its \
                         4 KiB page ({page_addr:#x}..{page_end:#x}) to {to:#x}: the chain is \
                         corrupt; {RELINK}"
                    ));
                    break;
                }
                at = to;
            }
        }
    }
    drop(bad);
    Some(out)
}

/// A rebase target must be inside (or at the end of) a section of the image.
fn target_ok(image: &Image<'_>, target: u64) -> bool {
    image
        .sections
        .iter()
        .any(|s| s.size > 0 && target >= s.addr && target <= s.end())
}

fn check_fixup_targets(image: &Image<'_>, f: &Fixups, ctx: &mut Ctx) {
    let mut bad = Capped::new(ctx, "chained-fixups", "bad fixups");
    let count = f.imports.len();
    for (&at, &fixup) in &f.slots {
        let here = image.describe(at);
        if let Some(ordinal) = fixup.ordinal()
            && ordinal as usize >= count
        {
            bad.error(format!(
                "chained bind at {here} uses import ordinal {ordinal}, but there are only \
                 {count} imports: {RELINK}"
            ));
        }
        if let Fixup::Rebase { high8, .. } = fixup
            && high8 != 0
        {
            bad.error(format!(
                "chained rebase at {here} has high8 {high8:#x}; kexts use 0 (no tagged \
                 pointers): {RELINK}"
            ));
        }
        if let Some(target) = fixup.rebase_target()
            && !target_ok(image, target)
        {
            bad.error(format!(
                "chained rebase at {here} targets {target:#x}, which is inside no section of \
                 the image: the pointer would point at garbage after loading; {RELINK}"
            ));
        }
    }
}

/// One decoded split-seg v2 reference, as absolute addresses.
#[derive(Debug, Clone, Copy)]
struct SplitRef {
    from: u64,
    to: u64,
    kind: u64,
}

fn uleb(p: &[u8], pos: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    let mut shift = 0u32;
    loop {
        let byte = *p.get(*pos)?;
        *pos += 1;
        if shift >= 64 || (shift == 63 && byte & 0x7E != 0) {
            return None;
        }
        value |= u64::from(byte & 0x7F) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
        shift += 7;
    }
}

/// Decodes split-seg v2 into (from, kind) → references.
fn decode_split_seg(image: &Image<'_>, ctx: &mut Ctx) -> Option<BTreeMap<(u64, u64), SplitRef>> {
    const CHECK: &str = "split-seg";
    let p = linkedit_payload(
        image,
        macho::LC_SEGMENT_SPLIT_INFO,
        "LC_SEGMENT_SPLIT_INFO",
        CHECK,
        ctx,
    )?;
    if p.first() != Some(&SPLIT_V2_FORMAT) {
        ctx.error(
            CHECK,
            format!(
                "LC_SEGMENT_SPLIT_INFO starts with {:?}, not 0x7f: arm64e kexts need split-seg \
                 v2 (DYLD_CACHE_ADJ_V2_FORMAT); {RELINK}",
                p.first()
            ),
        );
        return None;
    }
    let mut pos = 1usize;
    let mut out = BTreeMap::new();
    let truncated = |ctx: &mut Ctx, pos: usize| {
        ctx.error(
            CHECK,
            format!(
                "LC_SEGMENT_SPLIT_INFO is truncated or has an over-long number at byte {pos:#x} \
                 of {:#x}: {RELINK}",
                p.len()
            ),
        );
    };
    // The section with ordinal `n` (0: the mach header at 0).
    let section = |n: u64| -> Option<(u64, u64)> {
        if n == 0 {
            return Some((0, 0));
        }
        image
            .section(u32::try_from(n).ok()?)
            .map(|s| (s.addr, s.size))
    };
    let mut bad = Vec::new();
    let Some(sections) = uleb(p, &mut pos) else {
        truncated(ctx, pos);
        return None;
    };
    for _ in 0..sections {
        let (Some(from_sect), Some(to_sect), Some(to_count)) =
            (uleb(p, &mut pos), uleb(p, &mut pos), uleb(p, &mut pos))
        else {
            truncated(ctx, pos);
            return None;
        };
        let (Some(from_s), Some(to_s)) = (section(from_sect), section(to_sect)) else {
            ctx.error(
                CHECK,
                format!(
                    "LC_SEGMENT_SPLIT_INFO names section ordinals {from_sect} → {to_sect} but the \
                     image has {} sections: {RELINK}",
                    image.sections.len()
                ),
            );
            return None;
        };
        let mut to_off = 0u64;
        for _ in 0..to_count {
            let (Some(delta), Some(kinds)) = (uleb(p, &mut pos), uleb(p, &mut pos)) else {
                truncated(ctx, pos);
                return None;
            };
            to_off = to_off.saturating_add(delta);
            for _ in 0..kinds {
                let (Some(k), Some(n)) = (uleb(p, &mut pos), uleb(p, &mut pos)) else {
                    truncated(ctx, pos);
                    return None;
                };
                if !(kind::POINTER_32..=kind::THREADED_POINTER_64).contains(&k) {
                    bad.push(format!("unknown kind {k}"));
                }
                let mut from_off = 0u64;
                for _ in 0..n {
                    let Some(d) = uleb(p, &mut pos) else {
                        truncated(ctx, pos);
                        return None;
                    };
                    from_off = from_off.saturating_add(d);
                    if from_off >= from_s.1 || from_sect == 0 {
                        bad.push(format!(
                            "a {} record at offset {from_off:#x} of section #{from_sect} (size \
                             {:#x})",
                            kind::name(k),
                            from_s.1
                        ));
                        continue;
                    }
                    let from = from_s.0 + from_off;
                    let to = to_s.0.saturating_add(to_off);
                    out.insert((from, k), SplitRef { from, to, kind: k });
                }
            }
        }
    }
    if p.get(pos..)
        .is_some_and(|rest| rest.iter().any(|&b| b != 0))
    {
        bad.push(format!(
            "non-zero bytes after the last record (at {pos:#x})"
        ));
    }
    if !bad.is_empty() {
        bad.dedup();
        ctx.error(
            CHECK,
            format!("LC_SEGMENT_SPLIT_INFO has {}: {RELINK}", list(&bad)),
        );
    }
    Some(out)
}

/// The code of `__TEXT_EXEC`, word by word, and what the stubs load.
struct Code {
    /// (address, instruction word) of every code word in `__TEXT_EXEC`.
    words: Vec<(u64, u32)>,
    /// Stub start address → the GOT slot it loads.
    stubs: BTreeMap<u64, u64>,
    /// Address ranges of the stub sections.
    stub_ranges: Vec<(u64, u64)>,
}

fn is_adrp(w: u32) -> bool {
    w & 0x9F00_0000 == 0x9000_0000
}

/// The page an ADRP at `pc` computes.
fn adrp_page(pc: u64, w: u32) -> u64 {
    let imm = u64::from(((w >> 29) & 3) | (((w >> 5) & 0x7_FFFF) << 2));
    let imm = ((imm << 43) as i64 >> 43) as u64; // sign-extend 21 bits
    (pc & !0xFFF).wrapping_add(imm << 12)
}

/// `B`/`BL imm26`: the target, if `w` is one.
pub(super) fn branch26_target(pc: u64, w: u32) -> Option<u64> {
    if w & 0x7C00_0000 != 0x1400_0000 {
        return None;
    }
    let imm = u64::from(w & 0x03FF_FFFF);
    let off = ((imm << 38) as i64 >> 36) as u64; // sign-extend 26 bits, times 4
    Some(pc.wrapping_add(off))
}

/// The base register and 12-bit page offset of `add xd, xn, #imm` or
/// `ldr xt, [xn, #imm]` (64-bit, unsigned offset).
fn page_offset_use(w: u32) -> Option<(u32, u64)> {
    let rn = (w >> 5) & 31;
    let imm12 = u64::from((w >> 10) & 0xFFF);
    if w & 0xFFC0_0000 == 0x9100_0000 {
        Some((rn, imm12))
    } else if w & 0xFFC0_0000 == 0xF940_0000 {
        Some((rn, imm12 * 8))
    } else {
        None
    }
}

impl Code {
    fn scan(image: &Image<'_>) -> Code {
        let mut code = Code {
            words: Vec::new(),
            stubs: BTreeMap::new(),
            stub_ranges: Vec::new(),
        };
        for sect in &image.sections {
            let in_exec = image
                .segments
                .get(sect.segment)
                .is_some_and(|s| s.name == "__TEXT_EXEC");
            if !in_exec || !sect.has_code() || sect.is_zerofill() || sect.size == 0 {
                continue;
            }
            let Some(bytes) = image.bytes_at(sect.addr, sect.size) else {
                continue; // reported by the segment checks
            };
            let is_stubs = sect.flags & macho::SECTION_TYPE == S_SYMBOL_STUBS;
            if is_stubs {
                code.stub_ranges.push((sect.addr, sect.end()));
            }
            let first = code.words.len();
            for (k, chunk) in bytes.chunks_exact(4).enumerate() {
                let w = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
                code.words.push((sect.addr + 4 * k as u64, w));
            }
            if is_stubs {
                let words = &code.words[first..];
                for (k, &(pc, w)) in words.iter().enumerate() {
                    if let Some(slot) = load_target(words, k, pc, w) {
                        code.stubs.insert(pc, slot);
                    }
                }
            }
        }
        code
    }

    fn in_stubs(&self, addr: u64) -> bool {
        self.stub_ranges.iter().any(|&(s, e)| addr >= s && addr < e)
    }
}

/// If `words[k]` is an ADRP, the address its register is completed to by the
/// first following `add`/`ldr` on it (within 8 instructions).
fn load_target(words: &[(u64, u32)], k: usize, pc: u64, w: u32) -> Option<u64> {
    if !is_adrp(w) {
        return None;
    }
    let rd = w & 31;
    let page = adrp_page(pc, w);
    words
        .iter()
        .skip(k + 1)
        .take(8)
        .find_map(|&(_, u)| page_offset_use(u).filter(|&(rn, _)| rn == rd))
        .map(|(_, off)| page.wrapping_add(off))
}

fn check_split_coverage(
    image: &Image<'_>,
    code: &Code,
    fixups: Option<&Fixups>,
    split: &BTreeMap<(u64, u64), SplitRef>,
    ctx: &mut Ctx,
) {
    const CHECK: &str = "split-seg";
    let what_to_do = "the kernel-collection builder would not fix it up when it moves the \
                      segments apart; relink with `kextld link --arch arm64e` (if kextld made \
                      this image, it is a kextld bug: report it)";
    {
        let mut bad = Capped::new(ctx, CHECK, "uncovered instructions");
        for &(pc, w) in &code.words {
            if is_adrp(w) {
                match split.get(&(pc, kind::ARM64_ADRP)) {
                    None => bad.error(format!(
                        "ADRP at {} has no ARM64_ADRP split-seg record: {what_to_do}",
                        image.describe(pc)
                    )),
                    Some(r) if r.to & !0xFFF != adrp_page(pc, w) => bad.error(format!(
                        "the ARM64_ADRP split-seg record of {} targets {:#x}, but the \
                         instruction computes page {:#x}: {RELINK}",
                        image.describe(pc),
                        r.to,
                        adrp_page(pc, w)
                    )),
                    Some(_) => {}
                }
            }
            if let Some(target) = branch26_target(pc, w)
                && code.in_stubs(target)
                && !split.contains_key(&(pc, kind::ARM64_BR26))
            {
                let call = if w & 0x8000_0000 != 0 { "BL" } else { "B" };
                bad.error(format!(
                    "{call} at {} to the stub at {target:#x} has no ARM64_BR26 split-seg \
                     record: {what_to_do}",
                    image.describe(pc)
                ));
            }
        }
    }
    check_deltas(image, split, ctx);
    let Some(fixups) = fixups else { return };
    let mut bad = Capped::new(ctx, CHECK, "uncovered pointers");
    for (&at, &fixup) in &fixups.slots {
        let (want, other) = match fixup {
            Fixup::Rebase { .. } => (kind::POINTER_64, kind::THREADED_POINTER_64),
            Fixup::AuthRebase { .. } => (kind::THREADED_POINTER_64, kind::POINTER_64),
            _ => continue,
        };
        let target = fixup.rebase_target().unwrap_or(0);
        let here = image.describe(at);
        match split.get(&(at, want)) {
            Some(r) if r.to != target => bad.error(format!(
                "the {} split-seg record of the pointer at {here} targets {:#x} but the chained \
                 rebase targets {target:#x}: {RELINK}",
                kind::name(want),
                r.to
            )),
            Some(_) => {}
            None if split.contains_key(&(at, other)) => bad.error(format!(
                "the pointer at {here} is a {} chained rebase but its split-seg record is {}; \
                 it must be {}: {RELINK}",
                if want == kind::POINTER_64 {
                    "plain"
                } else {
                    "authenticated"
                },
                kind::name(other),
                kind::name(want)
            )),
            None => bad.error(format!(
                "the rebased pointer at {here} has no {} split-seg record: {what_to_do}",
                kind::name(want)
            )),
        }
    }
    for r in split.values() {
        let want = match r.kind {
            kind::POINTER_64 => "a plain",
            kind::THREADED_POINTER_64 => "an authenticated",
            _ => continue,
        };
        // A rebase of the other kind is reported above.
        if fixups
            .slots
            .get(&r.from)
            .is_none_or(|f| f.rebase_target().is_none())
        {
            bad.error(format!(
                "split-seg {} record at {} has no chained rebase there, so {want} pointer is \
                 never slid: a chain ends early or skips it; {RELINK}",
                kind::name(r.kind),
                image.describe(r.from)
            ));
        }
    }
}

/// A DELTA_32/DELTA_64 record marks a difference `to - base` stored at
/// `from`; the builder adjusts it by how far `to` moves relative to `from`,
/// which is right only if `base` moves with `from`: in the same segment.
/// Reading the stored value at the record's width must therefore give a base
/// inside `from`'s segment; a wrong kind (width) or a base elsewhere fails.
fn check_deltas(image: &Image<'_>, split: &BTreeMap<(u64, u64), SplitRef>, ctx: &mut Ctx) {
    let segment_of = |addr: u64| {
        image
            .segments
            .iter()
            .position(|s| addr >= s.vmaddr && addr <= s.end())
    };
    let mut bad = Capped::new(ctx, "split-seg", "inconsistent DELTA records");
    for r in split.values() {
        let width = match r.kind {
            kind::DELTA_32 => 4,
            kind::DELTA_64 => 8,
            _ => continue,
        };
        let here = image.describe(r.from);
        let value = image.bytes_at(r.from, width).and_then(|b| match width {
            4 => u32_at(b, 0).map(|v| i64::from(v as i32)),
            _ => u64_at(b, 0).map(|v| v as i64),
        });
        let base = value.map(|v| r.to.wrapping_sub(v as u64));
        let from_seg = segment_of(r.from);
        if value.is_none() || from_seg.is_none() || base.and_then(segment_of) != from_seg {
            bad.error(format!(
                "{} split-seg record at {here} (to {:#x}): the {}-bit value there{} is not a \
                 difference from an address in the same segment, so the kernel-collection \
                 builder would compute a wrong value when it moves the segments; the record's \
                 kind (width) or target is wrong: {RELINK}",
                kind::name(r.kind),
                r.to,
                width * 8,
                value.map_or_else(String::new, |v| format!(" ({v:#x})"))
            ));
        }
    }
}

/// Who references each import: the `bl`/`b` sites of its stub, the code that
/// loads its GOT slot, or the data slot itself.
fn references(image: &Image<'_>, code: &Code, fixups: &Fixups) -> References {
    // Undefined symbol index by name.
    let by_name: BTreeMap<&str, u32> = image
        .symbols
        .iter()
        .enumerate()
        .filter(|(_, s)| s.is_undefined())
        .map(|(i, s)| (s.name.as_str(), i as u32))
        .collect();
    // Slot → symbol index.
    let slot_symbol: BTreeMap<u64, u32> = fixups
        .slots
        .iter()
        .filter_map(|(&at, f)| {
            let name = fixups.imports.get(f.ordinal()? as usize)?.as_deref()?;
            Some((at, *by_name.get(name)?))
        })
        .collect();
    // Stub → symbol index; who loads each slot from outside the stubs.
    let stub_symbol: BTreeMap<u64, u32> = code
        .stubs
        .iter()
        .filter_map(|(&stub, slot)| Some((stub, *slot_symbol.get(slot)?)))
        .collect();
    let mut refs = References::new();
    let mut used_slots = BTreeSet::new();
    let mut called_stubs = BTreeSet::new();
    for (k, &(pc, w)) in code.words.iter().enumerate() {
        if code.in_stubs(pc) {
            continue;
        }
        if let Some(target) = branch26_target(pc, w)
            && let Some(&sym) = stub_symbol.get(&target)
        {
            refs.entry(sym).or_default().push(pc);
            called_stubs.insert(target);
        }
        if let Some(slot) = load_target(&code.words, k, pc, w)
            && let Some(&sym) = slot_symbol.get(&slot)
        {
            refs.entry(sym).or_default().push(pc);
            used_slots.insert(slot);
        }
    }
    for (&stub, slot) in &code.stubs {
        used_slots.insert(*slot);
        if !called_stubs.contains(&stub)
            && let Some(&sym) = stub_symbol.get(&stub)
        {
            refs.entry(sym).or_default().push(stub);
        }
    }
    for (&slot, &sym) in &slot_symbol {
        if !used_slots.contains(&slot) {
            refs.entry(sym).or_default().push(slot);
        }
    }
    refs
}

/// `kmod_info.start`/`.stop` (slots `start_slot`, `stop_slot`): authenticated
/// rebases, key IA, no address diversity, discriminator 0xE4FE, into `__text`.
pub(super) fn check_kmod_slots(
    image: &Image<'_>,
    fixups: Option<&Fixups>,
    slots: [(&str, u64); 2],
    ctx: &mut Ctx,
) {
    let Some(fixups) = fixups else {
        return; // the chained-fixup findings say why
    };
    let want = ptrauth::KMOD_START_STOP;
    let text = image
        .sections
        .iter()
        .find(|s| s.segname == "__TEXT_EXEC" && s.sectname == "__text");
    for (field, slot) in slots {
        let what = format!("_kmod_info.{field} ({slot:#x})");
        let sign = format!(
            "the kernel calls it with `blraa` and discriminator {want:#06x} (key IA, no address \
             diversity); link with kextld, which signs it"
        );
        match fixups.slots.get(&slot) {
            None => ctx.error(
                "kmod-info",
                format!(
                    "{what} has no chained fixup, so the loader would neither slide nor sign it; \
                     {sign}"
                ),
            ),
            Some(Fixup::Rebase { .. }) => ctx.error(
                "kmod-info",
                format!("{what} is an unsigned (plain) rebase: {sign}"),
            ),
            Some(Fixup::Bind { .. } | Fixup::AuthBind { .. }) => ctx.error(
                "kmod-info",
                format!(
                    "{what} is bound to an imported symbol; it must point at the kext's own \
                     {field} function"
                ),
            ),
            Some(&Fixup::AuthRebase {
                target,
                key,
                addr_div,
                diversity,
            }) => {
                if key != KEY_IA || addr_div || diversity != want {
                    ctx.error(
                        "kmod-info",
                        format!(
                            "{what} is signed with key {}, address diversity {addr_div}, \
                             discriminator {diversity:#06x}: the kernel would fail to \
                             authenticate it and panic; {sign}",
                            key_name(key)
                        ),
                    );
                }
                match text {
                    Some(t) if target >= t.addr && target < t.end() => {}
                    _ => ctx.error(
                        "kmod-info",
                        format!(
                            "{what} points at {}, which is not inside __TEXT_EXEC,__text; it must \
                             point at the kext's {field} function",
                            image.describe(target)
                        ),
                    ),
                }
            }
        }
    }
}
