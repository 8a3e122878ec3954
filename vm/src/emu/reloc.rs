//! Applying a kext's relocations the way kxld does (xnu `libkern/kxld/kxld_reloc.c`,
//! `x86_64_process_reloc` and `kxld_relocator_process_table_reloc` for final-linked
//! images), as a pure function over the image bytes.
//!
//! kxld's rules for x86_64 `MH_KEXT_BUNDLE`s, which this module follows:
//! - `r_address` is an unslid address (vmaddr 0 based); it must fall inside a segment.
//! - local entries (`r_extern = 0`): `r_symbolnum` is a 1-based section ordinal;
//!   `R_ABS` (0) entries are skipped. The target is the section's slide, which for
//!   a non-split kext is the load base for every section. `UNSIGNED`, length 3:
//!   the slot gets `+ base`. pc-relative entries (length 2) move with their target
//!   and are left unchanged.
//! - external entries (`r_extern = 1`): `r_symbolnum` indexes the symbol table.
//!   `UNSIGNED` length 3 (not pc-relative): slot `+=` the symbol's address.
//!   `BRANCH` and `SIGNED*` (length 2, pc-relative): `rel32 = stored + target −
//!   (slot address + 4)`, with kxld's ±2 GiB overflow check.
//! - anything else (`GOT`/`GOT_LOAD`/`SUBTRACTOR` in a linked image, a
//!   non-pc-relative length-2 entry, …) makes kxld fail, and fails here too.

use super::image::{KextImage, Reloc, SymbolInfo};

pub const X86_64_RELOC_UNSIGNED: u8 = 0;
pub const X86_64_RELOC_SIGNED: u8 = 1;
pub const X86_64_RELOC_BRANCH: u8 = 2;
pub const X86_64_RELOC_SIGNED_1: u8 = 6;
pub const X86_64_RELOC_SIGNED_2: u8 = 7;
pub const X86_64_RELOC_SIGNED_4: u8 = 8;

/// Where an undefined symbol is bound: `absolute` is stored by `UNSIGNED` entries;
/// `branch` is the target of pc-relative entries (a jump stub within ±2 GiB of the image).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binding {
    pub absolute: u64,
    pub branch: u64,
}

/// Why the relocations could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelocError {
    #[error("the emulator does not provide {} symbol(s) the kext needs: {}", .0.len(), .0.join(", "))]
    Unbound(Vec<String>),
    #[error("{table} relocation #{index} at {address:#x}: {why}")]
    Bad {
        table: &'static str,
        index: usize,
        address: u32,
        why: String,
    },
}

/// Applies every local and external relocation of `image` to `mem`, the image's
/// bytes as they will run at address `base` (`mem[0]` is vmaddr 0).
///
/// `bind` maps an undefined symbol to its host binding; every undefined symbol of
/// the symbol table must be bound (kxld fails on any), and all missing ones are
/// reported together.
pub fn apply(
    image: &KextImage,
    mem: &mut [u8],
    base: u64,
    bind: &dyn Fn(&str) -> Option<Binding>,
) -> Result<(), RelocError> {
    let missing: Vec<String> = image
        .undefined()
        .into_iter()
        .filter(|n| bind(n).is_none())
        .collect();
    if !missing.is_empty() {
        return Err(RelocError::Unbound(missing));
    }
    for (index, r) in image.local_relocs.iter().enumerate() {
        apply_local(image, mem, base, r).map_err(|why| RelocError::Bad {
            table: "local",
            index,
            address: r.address,
            why,
        })?;
    }
    for (index, r) in image.external_relocs.iter().enumerate() {
        apply_external(image, mem, base, r, bind).map_err(|why| RelocError::Bad {
            table: "external",
            index,
            address: r.address,
            why,
        })?;
    }
    Ok(())
}

fn slot_range(image: &KextImage, mem: &[u8], r: &Reloc) -> Result<std::ops::Range<usize>, String> {
    if r.address & 0x8000_0000 != 0 {
        return Err("scattered relocation (x86_64 has none)".into());
    }
    let width = match r.length {
        2 => 4,
        3 => 8,
        l => return Err(format!("r_length {l} (kxld accepts 2 or 3)")),
    };
    let seg = image
        .segment_at(u64::from(r.address))
        .ok_or("address outside every segment")?;
    let start = r.address as usize;
    let end = start + width;
    if end as u64 > seg.vmaddr + seg.vmsize || end > mem.len() {
        return Err(format!("slot runs past the end of segment {}", seg.name));
    }
    Ok(start..end)
}

fn apply_local(image: &KextImage, mem: &mut [u8], base: u64, r: &Reloc) -> Result<(), String> {
    if r.symbolnum == 0 {
        return Ok(()); // R_ABS: kxld skips it.
    }
    if r.symbolnum as usize > image.sections.len() {
        return Err(format!(
            "section ordinal {} but the image has {} sections",
            r.symbolnum,
            image.sections.len()
        ));
    }
    let range = slot_range(image, mem, r)?;
    match (r.kind, r.length, r.pcrel) {
        (X86_64_RELOC_UNSIGNED, 3, false) => {
            let old = u64::from_le_bytes(mem[range.clone()].try_into().map_err(|_| "slot")?);
            mem[range].copy_from_slice(&old.wrapping_add(base).to_le_bytes());
            Ok(())
        }
        // A pc-relative reference between sections that move together: unchanged.
        (
            X86_64_RELOC_SIGNED
            | X86_64_RELOC_SIGNED_1
            | X86_64_RELOC_SIGNED_2
            | X86_64_RELOC_SIGNED_4
            | X86_64_RELOC_BRANCH,
            2,
            true,
        ) => Ok(()),
        (k, l, p) => Err(format!(
            "local relocation type {k} length {l} pcrel {p} is not accepted by kxld"
        )),
    }
}

fn target_of(
    image: &KextImage,
    base: u64,
    sym: &SymbolInfo,
    bind: &dyn Fn(&str) -> Option<Binding>,
) -> Result<Binding, String> {
    if sym.is_undefined() {
        bind(&sym.name).ok_or_else(|| format!("symbol {} is not bound", sym.name))
    } else if sym.is_section() {
        let a = base.wrapping_add(sym.n_value);
        Ok(Binding {
            absolute: a,
            branch: a,
        })
    } else if sym.is_absolute() {
        Ok(Binding {
            absolute: sym.n_value,
            branch: sym.n_value,
        })
    } else {
        let _ = image;
        Err(format!(
            "symbol {} has n_type {:#x}, which a relocation cannot target",
            sym.name, sym.n_type
        ))
    }
}

fn apply_external(
    image: &KextImage,
    mem: &mut [u8],
    base: u64,
    r: &Reloc,
    bind: &dyn Fn(&str) -> Option<Binding>,
) -> Result<(), String> {
    if !r.is_extern {
        return Err("entry in the external table has r_extern 0".into());
    }
    let sym = image.symbols.get(r.symbolnum as usize).ok_or_else(|| {
        format!(
            "symbol index {} past the symbol table ({})",
            r.symbolnum,
            image.symbols.len()
        )
    })?;
    let target = target_of(image, base, sym, bind)?;
    let range = slot_range(image, mem, r)?;
    match (r.kind, r.length, r.pcrel) {
        (X86_64_RELOC_UNSIGNED, 3, false) => {
            let old = u64::from_le_bytes(mem[range.clone()].try_into().map_err(|_| "slot")?);
            mem[range].copy_from_slice(&old.wrapping_add(target.absolute).to_le_bytes());
            Ok(())
        }
        (
            X86_64_RELOC_BRANCH
            | X86_64_RELOC_SIGNED
            | X86_64_RELOC_SIGNED_1
            | X86_64_RELOC_SIGNED_2
            | X86_64_RELOC_SIGNED_4,
            2,
            true,
        ) => {
            let stored = i32::from_le_bytes(mem[range.clone()].try_into().map_err(|_| "slot")?);
            let next_pc = base.wrapping_add(u64::from(r.address)).wrapping_add(4);
            let disp = i64::from(stored) + target.branch.wrapping_sub(next_pc) as i64;
            let disp = i32::try_from(disp).map_err(|_| {
                format!(
                    "{} is more than 2 GiB away ({disp:#x}): relocation overflow",
                    sym.name
                )
            })?;
            mem[range].copy_from_slice(&disp.to_le_bytes());
            Ok(())
        }
        (k, l, p) => Err(format!(
            "external relocation type {k} length {l} pcrel {p} (symbol {}) is not accepted by kxld in a linked kext",
            sym.name
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emu::image::{SectionInfo, SegmentInfo};

    fn image(symbols: Vec<SymbolInfo>, local: Vec<Reloc>, external: Vec<Reloc>) -> KextImage {
        KextImage {
            bytes: Vec::new(),
            segments: vec![
                SegmentInfo {
                    name: "__TEXT".into(),
                    vmaddr: 0,
                    vmsize: 0x1000,
                    fileoff: 0,
                    filesize: 0x1000,
                    initprot: 5,
                },
                SegmentInfo {
                    name: "__DATA".into(),
                    vmaddr: 0x1000,
                    vmsize: 0x1000,
                    fileoff: 0x1000,
                    filesize: 0x1000,
                    initprot: 3,
                },
            ],
            sections: vec![
                SectionInfo {
                    segname: "__TEXT".into(),
                    sectname: "__text".into(),
                    addr: 0x100,
                    size: 0x100,
                    flags: 0,
                },
                SectionInfo {
                    segname: "__DATA".into(),
                    sectname: "__data".into(),
                    addr: 0x1000,
                    size: 0x100,
                    flags: 0,
                },
            ],
            symbols,
            local_relocs: local,
            external_relocs: external,
            vm_size: 0x2000,
            cputype: crate::emu::image::CPU_TYPE_X86_64,
            chained_fixups: None,
        }
    }

    fn undef(name: &str) -> SymbolInfo {
        SymbolInfo {
            name: name.into(),
            n_type: 1,
            n_sect: 0,
            n_value: 0,
        }
    }

    const BASE: u64 = 0x7000_0000_0000;

    #[test]
    fn local_unsigned_adds_base_and_r_abs_is_skipped() {
        let img = image(
            vec![],
            vec![
                Reloc {
                    address: 0x1008,
                    symbolnum: 2,
                    pcrel: false,
                    length: 3,
                    is_extern: false,
                    kind: 0,
                },
                Reloc {
                    address: 0x1010,
                    symbolnum: 0,
                    pcrel: false,
                    length: 3,
                    is_extern: false,
                    kind: 0,
                },
            ],
            vec![],
        );
        let mut mem = vec![0u8; 0x2000];
        mem[0x1008..0x1010].copy_from_slice(&0x150u64.to_le_bytes());
        mem[0x1010..0x1018].copy_from_slice(&0x150u64.to_le_bytes());
        apply(&img, &mut mem, BASE, &|_| None).unwrap();
        assert_eq!(
            u64::from_le_bytes(mem[0x1008..0x1010].try_into().unwrap()),
            BASE + 0x150
        );
        assert_eq!(
            u64::from_le_bytes(mem[0x1010..0x1018].try_into().unwrap()),
            0x150
        );
    }

    #[test]
    fn external_branch_goes_to_stub_and_unsigned_to_absolute_plus_addend() {
        let img = image(
            vec![undef("_printf")],
            vec![],
            vec![
                Reloc {
                    address: 0x1020,
                    symbolnum: 0,
                    pcrel: false,
                    length: 3,
                    is_extern: true,
                    kind: 0,
                },
                Reloc {
                    address: 0x101,
                    symbolnum: 0,
                    pcrel: true,
                    length: 2,
                    is_extern: true,
                    kind: 2,
                },
            ],
        );
        let mut mem = vec![0u8; 0x2000];
        mem[0x1020..0x1028].copy_from_slice(&8u64.to_le_bytes());
        let stub = BASE + 0x2000;
        apply(&img, &mut mem, BASE, &|n| {
            (n == "_printf").then_some(Binding {
                absolute: 0x5555_0000,
                branch: stub,
            })
        })
        .unwrap();
        assert_eq!(
            u64::from_le_bytes(mem[0x1020..0x1028].try_into().unwrap()),
            0x5555_0008
        );
        let disp = i32::from_le_bytes(mem[0x101..0x105].try_into().unwrap());
        assert_eq!((BASE + 0x105).wrapping_add(disp as i64 as u64), stub);
    }

    #[test]
    fn lists_every_unbound_symbol() {
        let img = image(
            vec![undef("_a"), undef("_b"), undef("_printf")],
            vec![],
            vec![],
        );
        let mut mem = vec![0u8; 0x2000];
        let err = apply(&img, &mut mem, BASE, &|n| {
            (n == "_printf").then_some(Binding {
                absolute: 1,
                branch: 1,
            })
        })
        .unwrap_err();
        assert_eq!(err, RelocError::Unbound(vec!["_a".into(), "_b".into()]));
    }

    #[test]
    fn rejects_what_kxld_rejects() {
        let bad = [
            Reloc {
                address: 0x1008,
                symbolnum: 2,
                pcrel: false,
                length: 2,
                is_extern: false,
                kind: 0,
            },
            Reloc {
                address: 0x1008,
                symbolnum: 9,
                pcrel: false,
                length: 3,
                is_extern: false,
                kind: 0,
            },
            Reloc {
                address: 0x3000,
                symbolnum: 1,
                pcrel: false,
                length: 3,
                is_extern: false,
                kind: 0,
            },
        ];
        for r in bad {
            let img = image(vec![], vec![r], vec![]);
            let mut mem = vec![0u8; 0x2000];
            assert!(
                matches!(
                    apply(&img, &mut mem, BASE, &|_| None),
                    Err(RelocError::Bad { .. })
                ),
                "{r:?}"
            );
        }
        let img = image(
            vec![undef("_x")],
            vec![],
            vec![Reloc {
                address: 0x101,
                symbolnum: 0,
                pcrel: true,
                length: 2,
                is_extern: true,
                kind: 4,
            }],
        );
        let mut mem = vec![0u8; 0x2000];
        assert!(
            apply(&img, &mut mem, BASE, &|_| Some(Binding {
                absolute: 1,
                branch: 1
            }))
            .is_err()
        );
    }

    #[test]
    fn overflowing_branch_is_an_error() {
        let img = image(
            vec![undef("_far")],
            vec![],
            vec![Reloc {
                address: 0x101,
                symbolnum: 0,
                pcrel: true,
                length: 2,
                is_extern: true,
                kind: 2,
            }],
        );
        let mut mem = vec![0u8; 0x2000];
        let err = apply(&img, &mut mem, BASE, &|_| {
            Some(Binding {
                absolute: 0x1000,
                branch: 0x1000,
            })
        })
        .unwrap_err();
        assert!(err.to_string().contains("overflow"), "{err}");
    }
}
