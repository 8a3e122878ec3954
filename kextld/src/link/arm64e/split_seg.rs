//! `LC_SEGMENT_SPLIT_INFO` version 2, as ld64 writes it (`SplitSegInfoV2Atom`)
//! and dyld's kernel-collection builder reads it: every place whose contents
//! depend on the distance between two sections, so that the builder can move
//! segments apart.
//!
//! ```text
//! 0x7F (DYLD_CACHE_ADJ_V2_FORMAT)
//! Whole         := <count> FromToSection+          (count = number of FromToSection)
//! FromToSection := <from-sect> <to-sect> <count> ToOffset+
//! ToOffset      := <to-offset-delta> <count> FromOffset+
//! FromOffset    := <kind> <count> <from-offset-delta>+
//! ```
//!
//! All numbers are ULEB128; sections are output ordinals (1-based; 0 is the
//! mach header); offsets are section-relative, sorted, delta-encoded from 0
//! (per ToOffset group for from-offsets). The payload is padded to 8 bytes.

use std::collections::BTreeMap;

/// `DYLD_CACHE_ADJ_V2_FORMAT`.
pub(super) const V2_FORMAT: u8 = 0x7f;
/// `DYLD_CACHE_ADJ_V2_POINTER_64`: a plain rebased pointer.
pub(super) const POINTER_64: u8 = 0x02;
/// `DYLD_CACHE_ADJ_V2_DELTA_32`: a 32-bit difference between two sections.
pub(super) const DELTA_32: u8 = 0x03;
/// `DYLD_CACHE_ADJ_V2_DELTA_64`: a 64-bit difference between two sections.
pub(super) const DELTA_64: u8 = 0x04;
/// `DYLD_CACHE_ADJ_V2_ARM64_ADRP`.
pub(super) const ARM64_ADRP: u8 = 0x05;
/// `DYLD_CACHE_ADJ_V2_ARM64_OFF12`: `add`/`ldr`/`str` page offset.
pub(super) const ARM64_OFF12: u8 = 0x06;
/// `DYLD_CACHE_ADJ_V2_ARM64_BR26`.
pub(super) const ARM64_BR26: u8 = 0x07;
/// `DYLD_CACHE_ADJ_V2_THREADED_POINTER_64`: a chained (auth) pointer.
pub(super) const THREADED_POINTER_64: u8 = 0x0d;

/// One reference: the bytes at `from_off` in section `from_sect` depend on
/// where `to_off` in `to_sect` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Entry {
    pub from_sect: u32,
    pub from_off: u64,
    pub to_sect: u32,
    pub to_off: u64,
    pub kind: u8,
}

fn uleb(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Encodes the entries (any order; duplicates collapse).
pub(super) fn encode(entries: &[Entry]) -> Vec<u8> {
    type Kinds = BTreeMap<u8, Vec<u64>>;
    let mut whole: BTreeMap<(u32, u32), BTreeMap<u64, Kinds>> = BTreeMap::new();
    for e in entries {
        whole
            .entry((e.from_sect, e.to_sect))
            .or_default()
            .entry(e.to_off)
            .or_default()
            .entry(e.kind)
            .or_default()
            .push(e.from_off);
    }
    let mut out = vec![V2_FORMAT];
    uleb(&mut out, whole.len() as u64);
    for ((from, to), to_offsets) in &whole {
        uleb(&mut out, u64::from(*from));
        uleb(&mut out, u64::from(*to));
        uleb(&mut out, to_offsets.len() as u64);
        let mut last_to = 0;
        for (to_off, kinds) in to_offsets {
            uleb(&mut out, to_off - last_to);
            last_to = *to_off;
            uleb(&mut out, kinds.len() as u64);
            for (kind, froms) in kinds {
                let mut froms = froms.clone();
                froms.sort_unstable();
                froms.dedup();
                uleb(&mut out, u64::from(*kind));
                uleb(&mut out, froms.len() as u64);
                let mut last_from = 0;
                for f in froms {
                    uleb(&mut out, f - last_from);
                    last_from = f;
                }
            }
        }
    }
    out.resize(out.len().div_ceil(8) * 8, 0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_like_ld64() {
        let e = |from_off, to_off, kind| Entry {
            from_sect: 3,
            from_off,
            to_sect: 1,
            to_off,
            kind,
        };
        let bytes = encode(&[
            e(0x20, 0x10, ARM64_OFF12),
            e(0x1c, 0x10, ARM64_ADRP),
            e(0x4, 0x200, ARM64_ADRP),
        ]);
        assert_eq!(
            bytes,
            [
                0x7f,
                1, // one FromToSection
                3,
                1,
                2, // from 3 to 1, two to-offsets
                0x10,
                2, // to 0x10, two kinds
                ARM64_ADRP,
                1,
                0x1c,
                ARM64_OFF12,
                1,
                0x20, //
                0xf0,
                0x03,
                1,
                ARM64_ADRP,
                1,
                4, // to 0x200 (delta 0x1f0)
                0,
                0,
                0,
                0,
                0, // padding to 24
            ]
        );
    }
}
