//! Pieces both backends share once the inputs are resolved: what a relocation
//! targets, where each kept input section landed in the output, symbol
//! addresses, the kext symbol table (docs/kext-format.md, "Symbols") and
//! the content-derived LC_UUID.
//!
//! The backends own their section order and layout; they keep the merged
//! sections in a `Vec<OutSection>` (index = ordinal − 1) and a per-object,
//! per-section `Placement` table, and call these functions with them.

use std::collections::{BTreeMap, BTreeSet};

use sha2::{Digest, Sha256};

use super::LinkError;
use super::input::Object;
use super::resolve::{Global, Loaded};
use crate::macho::*;

/// What an extern relocation (or a symbol) refers to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Target {
    /// Defined in a section of a loaded object.
    Defined { obj: usize, sym: usize },
    /// Left for the kernel to bind.
    Undefined(String),
    /// `N_ABS`: a constant that does not slide.
    Absolute(u64),
}

/// Where a kept input section landed.
#[derive(Debug, Clone, Copy)]
pub(super) struct Placement {
    /// Index into the output sections (ordinal − 1).
    pub out: usize,
    /// Offset of the input section inside the output section.
    pub offset: u64,
}

/// One output section.
#[derive(Debug)]
pub(super) struct OutSection {
    /// Output segment name (x86_64: the input's; arm64e: `__TEXT_EXEC` for code, ...).
    pub segname: String,
    pub sectname: String,
    pub flags: u32,
    pub align: u32,
    pub zerofill: bool,
    pub size: u64,
    pub addr: u64,
    pub data: Vec<u8>,
    /// (object, section index) in load order.
    pub inputs: Vec<(usize, usize)>,
    /// Order of first appearance, for a stable sort.
    pub first_seen: usize,
    /// `reserved1` (indirect symbol index of stubs and GOTs).
    pub reserved1: u32,
    /// `reserved2` (stub size).
    pub reserved2: u32,
}

impl OutSection {
    /// A linker-made section (GOT, stubs) with no inputs.
    pub fn synthetic(segname: &str, sectname: &str, flags: u32, align: u32, size: u64) -> Self {
        OutSection {
            segname: segname.into(),
            sectname: sectname.into(),
            flags,
            align,
            zerofill: false,
            size,
            addr: 0,
            data: Vec::new(),
            inputs: Vec::new(),
            first_seen: usize::MAX,
            reserved1: 0,
            reserved2: 0,
        }
    }
}

/// One `nlist_64` of the output.
#[derive(Debug)]
pub(super) struct OutSymbol {
    pub name: String,
    pub n_type: u8,
    pub n_sect: u8,
    pub n_desc: u16,
    pub n_value: u64,
}

/// The output symbol table in kext order (locals, external definitions sorted,
/// undefined sorted) with the sizes of the three ranges.
pub(super) struct SymbolTable {
    pub symbols: Vec<OutSymbol>,
    pub nlocal: usize,
    pub nextdef: usize,
    pub nundef: usize,
    /// Undefined name → its index in `symbols`.
    pub undef_index: BTreeMap<String, u32>,
}

/// Resolves the symbol an extern relocation of object `obj` names.
pub(super) fn resolve_extern(loaded: &Loaded<'_>, obj: usize, symnum: u32) -> Option<Target> {
    let s = loaded.objects[obj].symbols.get(symnum as usize)?;
    if s.is_stab() {
        return None;
    }
    let (o, i) = if s.is_ext() {
        match loaded.globals.get(&s.name)? {
            Global::Defined { obj, sym } => (*obj, *sym),
            Global::Undefined { .. } => return Some(Target::Undefined(s.name.clone())),
        }
    } else {
        (obj, symnum as usize)
    };
    let d = &loaded.objects[o].symbols[i];
    match d.kind() {
        N_SECT => Some(Target::Defined { obj: o, sym: i }),
        N_ABS => Some(Target::Absolute(d.n_value)),
        _ => None,
    }
}

/// Output address and section ordinal of a defined symbol; None if its section
/// was dropped.
pub(super) fn symbol_address(
    objects: &[Object<'_>],
    place: &[Vec<Option<Placement>>],
    sections: &[OutSection],
    obj: usize,
    sym: usize,
) -> Option<(u64, u32)> {
    let s = &objects[obj].symbols[sym];
    let i = usize::from(s.n_sect).checked_sub(1)?;
    let p = (*place[obj].get(i)?)?;
    let in_addr = objects[obj].sections[i].addr;
    let out = &sections[p.out];
    let addr = (out.addr + p.offset).wrapping_add(s.n_value.wrapping_sub(in_addr));
    Some((addr, p.out as u32 + 1))
}

/// (output address − object address) of an input section, and its output ordinal.
pub(super) fn section_delta(
    objects: &[Object<'_>],
    place: &[Vec<Option<Placement>>],
    sections: &[OutSection],
    obj: usize,
    sect: usize,
) -> Option<(i64, u32)> {
    let p = place[obj].get(sect).copied().flatten()?;
    let out = &sections[p.out];
    let in_addr = objects[obj].sections[sect].addr;
    Some((
        (out.addr + p.offset) as i64 - in_addr as i64,
        p.out as u32 + 1,
    ))
}

/// Assigns each output section's inputs their offsets (in load order, aligned)
/// and sets the section's size; `place` gets every input's placement.
pub(super) fn place_inputs(
    objects: &[Object<'_>],
    place: &mut [Vec<Option<Placement>>],
    sections: &mut [OutSection],
) {
    for (idx, out) in sections.iter_mut().enumerate() {
        let mut off = 0u64;
        for &(o, i) in &out.inputs {
            let s = &objects[o].sections[i];
            off = off.div_ceil(1 << s.align) * (1 << s.align);
            place[o][i] = Some(Placement {
                out: idx,
                offset: off,
            });
            off += s.size;
        }
        if !out.inputs.is_empty() {
            out.size = off;
        }
    }
}

/// Copies the inputs' bytes into each non-zerofill output section.
pub(super) fn fill_contents(
    objects: &[Object<'_>],
    place: &[Vec<Option<Placement>>],
    sections: &mut [OutSection],
) {
    for out in sections.iter_mut() {
        if out.zerofill {
            continue;
        }
        out.data = vec![0; out.size as usize];
        for &(o, i) in &out.inputs {
            let s = &objects[o].sections[i];
            let p = place[o][i].expect("placed");
            out.data[p.offset as usize..][..s.data.len()].copy_from_slice(s.data);
        }
    }
}

/// Builds the kext symbol table: non-stab locals (assembler temporaries `L…`/
/// `l…` dropped, private externs kept as `N_PEXT` locals), external definitions
/// sorted by name, undefined symbols sorted by name (`N_UNDF|N_EXT`, n_desc
/// 0xFE00, plus `N_WEAK_REF` when every reference is weak).
pub(super) fn symbol_table(
    loaded: &Loaded<'_>,
    place: &[Vec<Option<Placement>>],
    sections: &[OutSection],
    referenced_undef: &BTreeSet<String>,
) -> Result<SymbolTable, LinkError> {
    let objects = &loaded.objects[..];
    let mut out = Vec::new();
    for (o, obj) in objects.iter().enumerate() {
        for (i, s) in obj.symbols.iter().enumerate() {
            if s.is_stab() || s.kind() != N_SECT || s.name.is_empty() {
                continue;
            }
            let n_type = if !s.is_ext() {
                if s.name.starts_with('L') || s.name.starts_with('l') {
                    continue; // assembler-temporary / linker-private labels
                }
                N_SECT
            } else if s.is_pext()
                && loaded.globals.get(&s.name) == Some(&Global::Defined { obj: o, sym: i })
            {
                N_SECT | N_PEXT
            } else {
                continue;
            };
            let Some((addr, ordinal)) = symbol_address(objects, place, sections, o, i) else {
                continue;
            };
            out.push(OutSymbol {
                name: s.name.clone(),
                n_type,
                n_sect: ordinal as u8,
                n_desc: 0,
                n_value: addr,
            });
        }
    }
    let nlocal = out.len();
    for (name, g) in &loaded.globals {
        let Global::Defined { obj, sym } = *g else {
            continue;
        };
        let s = &objects[obj].symbols[sym];
        if s.is_pext() {
            continue;
        }
        if s.kind() == N_ABS {
            out.push(OutSymbol {
                name: name.clone(),
                n_type: N_ABS | N_EXT,
                n_sect: NO_SECT,
                n_desc: 0,
                n_value: s.n_value,
            });
            continue;
        }
        let Some((addr, ordinal)) = symbol_address(objects, place, sections, obj, sym) else {
            return Err(LinkError::UnsupportedSymbol {
                input: objects[obj].name.clone(),
                symbol: name.clone(),
                problem: "exported symbol is defined in a section kexts drop \
                          (debug info, unwind tables or bitcode)"
                    .into(),
                hint: "define it in __TEXT or __DATA, or make it private",
            });
        };
        out.push(OutSymbol {
            name: name.clone(),
            n_type: N_SECT | N_EXT,
            n_sect: ordinal as u8,
            n_desc: 0,
            n_value: addr,
        });
    }
    let nextdef = out.len() - nlocal;
    let mut undef_index = BTreeMap::new();
    for name in referenced_undef {
        let weak = matches!(
            loaded.globals.get(name),
            Some(Global::Undefined { weak: true })
        );
        undef_index.insert(name.clone(), out.len() as u32);
        out.push(OutSymbol {
            name: name.clone(),
            n_type: N_UNDF | N_EXT,
            n_sect: NO_SECT,
            n_desc: N_DESC_DYNAMIC_LOOKUP | if weak { N_WEAK_REF } else { 0 },
            n_value: 0,
        });
    }
    let nundef = out.len() - nlocal - nextdef;
    if sections.len() > 255 {
        return Err(LinkError::TooLarge {
            what: format!("{} output sections (at most 255)", sections.len()),
        });
    }
    Ok(SymbolTable {
        symbols: out,
        nlocal,
        nextdef,
        nundef,
        undef_index,
    })
}

/// Serialises symbols as `nlist_64`s and their string table (starting with
/// `" \0"`, padded to 8 bytes), in the order given.
pub(super) fn nlists_and_strings(symbols: &[OutSymbol]) -> (Vec<u8>, Vec<u8>) {
    let mut nlists = Vec::with_capacity(symbols.len() * NLIST_64_SIZE);
    let mut strtab = b" \0".to_vec();
    for s in symbols {
        let strx = strtab.len() as u32;
        strtab.extend_from_slice(s.name.as_bytes());
        strtab.push(0);
        push_u32(&mut nlists, strx);
        nlists.push(s.n_type);
        nlists.push(s.n_sect);
        nlists.extend_from_slice(&s.n_desc.to_le_bytes());
        push_u64(&mut nlists, s.n_value);
    }
    strtab.resize(strtab.len().div_ceil(8) * 8, 0);
    (nlists, strtab)
}

/// Writes the LC_UUID at `uuid_at`: the first 16 bytes of the SHA-256 of the
/// file (with the UUID field still zero), RFC 4122 version 4, variant 10xx.
pub(super) fn stamp_uuid(file: &mut [u8], uuid_at: usize) {
    let digest = Sha256::digest(&*file);
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&digest[..16]);
    uuid[6] = (uuid[6] & 0x0f) | 0x40; // version 4
    uuid[8] = (uuid[8] & 0x3f) | 0x80; // RFC 4122 variant
    file[uuid_at..uuid_at + 16].copy_from_slice(&uuid);
}

/// Rounds `v` up to a multiple of `a`.
pub(super) fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}
