//! `LC_DYLD_CHAINED_FIXUPS` with pointer format 7
//! (`DYLD_CHAINED_PTR_ARM64E_KERNEL`), as dyld's `<mach-o/fixup-chains.h>`
//! defines it and docs/kext-format.md ("arm64e ABI", "Relocations") prescribes:
//!
//! ```text
//! dyld_chained_fixups_header   version 0, imports_format 1, symbols_format 0
//! dyld_chained_starts_in_image seg_count = every segment; offsets only for __DATA, __DATA_CONST
//! dyld_chained_starts_in_segment  page_size 0x1000, pointer_format 7, page_start[] (0xFFFF: none)
//! dyld_chained_import[]        lib_ordinal 0xFE (flat lookup), weak_import, name_offset
//! symbol names                 NUL-terminated, as in the symbol table (`_printf`)
//! ```
//!
//! Each fixed-up slot holds one 64-bit chained pointer; `next` is the distance
//! to the next fixup of the same 4 KiB page in 4-byte strides (0 ends the chain):
//!
//! | kind | bits |
//! |---|---|
//! | rebase | target vm offset 0–42, high8 43–50, next 51–61, bind 62 = 0, auth 63 = 0 |
//! | auth rebase | target 0–31, diversity 32–47, addrDiv 48, key 49–50, next, bind 0, auth 1 |
//! | bind | ordinal 0–15, addend 32–50 (signed), next, bind 1, auth 0 |
//! | auth bind | ordinal 0–15, diversity 32–47, addrDiv 48, key 49–50, next, bind 1, auth 1 |

use std::collections::BTreeMap;

use crate::macho::push_u32;
use crate::ptrauth::Signing;

/// `DYLD_CHAINED_PTR_ARM64E_KERNEL`.
pub(super) const POINTER_FORMAT: u16 = 7;
/// Chain page size (4 KiB, although segments are 16 KiB aligned).
pub(super) const CHAIN_PAGE: u64 = 0x1000;
/// `DYLD_CHAINED_PTR_START_NONE`.
const START_NONE: u16 = 0xffff;
/// `DYLD_CHAINED_IMPORT`.
const IMPORTS_FORMAT: u32 = 1;
/// `BIND_SPECIAL_DYLIB_FLAT_LOOKUP` (−2) as the 8-bit lib ordinal.
pub(super) const LIB_ORDINAL_FLAT: u8 = 0xfe;

/// What one pointer slot becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fixup {
    /// The slot holds `target` (a vm offset from `__TEXT`) plus the load address.
    Rebase { target: u64, auth: Option<Signing> },
    /// The slot holds the address of import `ordinal` plus `addend`.
    Bind {
        ordinal: u32,
        addend: i64,
        auth: Option<Signing>,
    },
}

/// Largest plain-rebase target (43 bits).
pub(super) const MAX_REBASE_TARGET: u64 = (1 << 43) - 1;
/// Largest auth-rebase target (32 bits).
pub(super) const MAX_AUTH_REBASE_TARGET: u64 = u32::MAX as u64;
/// Range of a plain bind's addend (19 bits, signed).
pub(super) const BIND_ADDEND: std::ops::Range<i64> = -(1 << 18)..(1 << 18);

impl Fixup {
    /// The 64-bit chained pointer, with `next` (in 4-byte strides) filled in.
    /// Targets, ordinals and addends were range-checked when the fixup was made.
    pub(super) fn encode(self, next: u64) -> u64 {
        debug_assert!(next < (1 << 11));
        let next = next << 51;
        let auth_bits = |s: Signing| {
            (u64::from(s.diversity) << 32)
                | (u64::from(s.addr_div) << 48)
                | (u64::from(s.key.bits()) << 49)
                | (1 << 63)
        };
        match self {
            Fixup::Rebase { target, auth: None } => (target & MAX_REBASE_TARGET) | next,
            Fixup::Rebase {
                target,
                auth: Some(s),
            } => (target & MAX_AUTH_REBASE_TARGET) | auth_bits(s) | next,
            Fixup::Bind {
                ordinal,
                addend,
                auth: None,
            } => {
                u64::from(ordinal & 0xffff)
                    | (((addend as u64) & 0x7_ffff) << 32)
                    | next
                    | (1 << 62)
            }
            Fixup::Bind {
                ordinal,
                auth: Some(s),
                ..
            } => u64::from(ordinal & 0xffff) | auth_bits(s) | next | (1 << 62),
        }
    }
}

/// A segment as the starts table sees it.
pub(super) struct Segment {
    pub vmaddr: u64,
    pub vmsize: u64,
    /// Whether fixups may (and starts will) be recorded for it.
    pub has_starts: bool,
}

/// The chains written into the image plus the LC_DYLD_CHAINED_FIXUPS payload.
pub(super) struct Encoded {
    /// (slot address, chained pointer) for every fixup.
    pub slots: Vec<(u64, u64)>,
    /// The linkedit payload (8-byte padded).
    pub payload: Vec<u8>,
}

/// Chains `fixups` (slot address → fixup; every slot inside a segment with
/// starts, 4-byte aligned, non-overlapping: the caller checked) and encodes
/// the payload. `imports` are (name, weak) in ordinal order.
pub(super) fn encode(
    segments: &[Segment],
    fixups: &BTreeMap<u64, Fixup>,
    imports: &[(String, bool)],
) -> Encoded {
    let mut slots = Vec::with_capacity(fixups.len());
    let addrs: Vec<u64> = fixups.keys().copied().collect();
    for (k, &at) in addrs.iter().enumerate() {
        let next = match addrs.get(k + 1) {
            Some(&n) if n / CHAIN_PAGE == at / CHAIN_PAGE => (n - at) / 4,
            _ => 0,
        };
        slots.push((at, fixups[&at].encode(next)));
    }

    // header (28 bytes), starts_in_image at 0x20.
    let mut out = vec![0u8; 0x20];
    let starts_offset = out.len();
    push_u32(&mut out, segments.len() as u32);
    let offsets_at = out.len();
    out.resize(out.len() + 4 * segments.len(), 0);
    for (i, seg) in segments.iter().enumerate() {
        if !seg.has_starts || seg.vmsize == 0 {
            continue;
        }
        out.resize(out.len().div_ceil(8) * 8, 0);
        let seg_info = (out.len() - starts_offset) as u32;
        out[offsets_at + 4 * i..][..4].copy_from_slice(&seg_info.to_le_bytes());
        let page_count = seg.vmsize.div_ceil(CHAIN_PAGE) as usize;
        let mut starts = vec![START_NONE; page_count];
        for &at in fixups
            .range(seg.vmaddr..seg.vmaddr + seg.vmsize)
            .map(|(a, _)| a)
        {
            let page = ((at - seg.vmaddr) / CHAIN_PAGE) as usize;
            if starts[page] == START_NONE {
                starts[page] = ((at - seg.vmaddr) % CHAIN_PAGE) as u16;
            }
        }
        push_u32(&mut out, (22 + 2 * page_count) as u32); // size
        out.extend_from_slice(&(CHAIN_PAGE as u16).to_le_bytes());
        out.extend_from_slice(&POINTER_FORMAT.to_le_bytes());
        out.extend_from_slice(&seg.vmaddr.to_le_bytes()); // segment_offset
        push_u32(&mut out, 0); // max_valid_pointer (32-bit only)
        out.extend_from_slice(&(page_count as u16).to_le_bytes());
        for s in starts {
            out.extend_from_slice(&s.to_le_bytes());
        }
    }
    out.resize(out.len().div_ceil(4) * 4, 0);
    let imports_offset = out.len();
    let mut names = Vec::new();
    for (name, weak) in imports {
        let import =
            u32::from(LIB_ORDINAL_FLAT) | (u32::from(*weak) << 8) | ((names.len() as u32) << 9);
        push_u32(&mut out, import);
        names.extend_from_slice(name.as_bytes());
        names.push(0);
    }
    let symbols_offset = out.len();
    out.extend_from_slice(&names);
    out.resize(out.len().div_ceil(8) * 8, 0);
    let mut header = Vec::with_capacity(28);
    for v in [
        0, // fixups_version
        starts_offset as u32,
        imports_offset as u32,
        symbols_offset as u32,
        imports.len() as u32,
        IMPORTS_FORMAT,
        0, // symbols_format: uncompressed
    ] {
        push_u32(&mut header, v);
    }
    out[..28].copy_from_slice(&header);
    Encoded {
        slots,
        payload: out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ptrauth::Key;

    #[test]
    fn pointer_encodings() {
        let r = Fixup::Rebase {
            target: 0x4010,
            auth: None,
        }
        .encode(2);
        assert_eq!(r, 0x4010 | (2 << 51));
        let a = Fixup::Rebase {
            target: 0x4010,
            auth: Some(Signing::KMOD_START_STOP),
        }
        .encode(0);
        assert_eq!(a, 0x4010 | (0xe4fe << 32) | (1 << 63));
        let b = Fixup::Bind {
            ordinal: 3,
            addend: -8,
            auth: None,
        }
        .encode(0);
        assert_eq!(b & 0xffff, 3);
        assert_eq!((b >> 32) & 0x7_ffff, 0x7_fff8);
        assert_eq!(b >> 62, 1);
        let ab = Fixup::Bind {
            ordinal: 1,
            addend: 0,
            auth: Some(Signing::AUTH_GOT),
        }
        .encode(1);
        assert_eq!(
            ab,
            1 | (1 << 48) | ((Key::IA as u64) << 49) | (1 << 51) | (3 << 62)
        );
    }

    #[test]
    fn chains_break_at_4k_pages_and_starts_are_per_page() {
        let segs = [
            Segment {
                vmaddr: 0,
                vmsize: 0x4000,
                has_starts: false,
            },
            Segment {
                vmaddr: 0x4000,
                vmsize: 0x4000,
                has_starts: true,
            },
        ];
        let mut f = BTreeMap::new();
        for at in [0x4008, 0x4010, 0x4ffc, 0x5000] {
            f.insert(
                at,
                Fixup::Rebase {
                    target: 0x100,
                    auth: None,
                },
            );
        }
        let e = encode(&segs, &f, &[("_printf".into(), false)]);
        let next = |v: u64| (v >> 51) & 0x7ff;
        let nexts: Vec<u64> = e.slots.iter().map(|&(_, v)| next(v)).collect();
        assert_eq!(nexts, [2, (0x4ffc - 0x4010) / 4, 0, 0]);
        let p = &e.payload;
        let u32_at = |o: usize| u32::from_le_bytes(p[o..o + 4].try_into().unwrap());
        assert_eq!(u32_at(4), 0x20);
        assert_eq!(u32_at(0x20), 2);
        assert_eq!(u32_at(0x24), 0);
        let seg = 0x20 + u32_at(0x28) as usize;
        assert_eq!(u32_at(seg), 22 + 2 * 4);
        let page_start =
            |i: usize| u16::from_le_bytes(p[seg + 22 + 2 * i..][..2].try_into().unwrap());
        assert_eq!(
            [page_start(0), page_start(1), page_start(2)],
            [8, 0, 0xffff]
        );
        let imports = u32_at(8) as usize;
        assert_eq!(u32_at(imports), 0xfe);
        assert_eq!(&p[u32_at(12) as usize..][..8], b"_printf\0");
        assert_eq!(u32_at(16), 1);
    }
}
