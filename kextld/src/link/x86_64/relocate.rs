//! Relocation: resolves every relocation of the kept sections into patched
//! code and data, fills the GOT, and collects the output's relocations (local
//! `X86_64_RELOC_UNSIGNED` for pointers that slide, external `UNSIGNED` and
//! `BRANCH` for what the kernel binds), the two kinds kxld accepts.

use super::{HINT_ABS32, HINT_DROPPED, HINT_OVERFLOW, HINT_UNDEF_RIP, Linker, Site, reloc};
use crate::link::LinkError;
use crate::link::image::Target;
use crate::macho::*;

impl<'a> Linker<'_, 'a> {
    /// Applies every relocation of every kept section; returns the local and
    /// external relocations of the output.
    #[allow(clippy::type_complexity)]
    pub(super) fn apply_relocations(
        &mut self,
    ) -> Result<(Vec<(u32, u32)>, Vec<(u8, u32, u32)>), LinkError> {
        let mut local = Vec::new();
        let mut ext_unsigned = Vec::new();
        let mut ext_branch = Vec::new();
        let mut patches: Vec<(usize, usize, Vec<u8>)> = Vec::new();
        for (o, obj) in self.objects().iter().enumerate() {
            for (si, s) in obj.sections.iter().enumerate() {
                let Some(p) = self.place[o][si] else { continue };
                let out_addr = self.sections[p.out].addr + p.offset;
                let mut ri = 0;
                while ri < s.relocs.len() {
                    let r = &s.relocs[ri];
                    let site = Site { obj, sect: s, r };
                    let next = s.relocs.get(ri + 1);
                    ri += 1;
                    let off = r.r_address as usize;
                    let width = 1usize << r.r_length;
                    if off + width > s.data.len() {
                        return Err(site.error(
                            r.r_type,
                            "fix-up lies outside its section",
                            "the object is corrupt: rebuild it",
                        ));
                    }
                    let p_out = out_addr + u64::from(r.r_address);
                    let patch_at = p.offset as usize + off;
                    let stored32 = get_u32(s.data, off) as i32;
                    let target = if r.r_extern {
                        self.resolve_extern(o, r.r_symbolnum)
                    } else {
                        None
                    };
                    match r.r_type {
                        X86_64_RELOC_UNSIGNED => {
                            if r.r_pcrel {
                                return Err(site.unsupported());
                            }
                            if r.r_length != 3 {
                                return Err(site.error(
                                    r.r_type,
                                    format!(
                                        "{}-bit absolute address: the kernel cannot slide it",
                                        width * 8
                                    ),
                                    HINT_ABS32,
                                ));
                            }
                            let stored = get_u64(s.data, off);
                            let (value, rel) = if r.r_extern {
                                match target.as_ref().ok_or_else(|| site.unsupported())? {
                                    Target::Defined { obj: to, sym } => {
                                        let (a, ord) =
                                            self.symbol_address(*to, *sym).ok_or_else(|| {
                                                site.error(
                                                    r.r_type,
                                                    "target lies in a dropped section",
                                                    HINT_DROPPED,
                                                )
                                            })?;
                                        (a.wrapping_add(stored), Some(Ok(ord)))
                                    }
                                    Target::Undefined(name) => {
                                        (stored, Some(Err(self.undef_symidx[name])))
                                    }
                                    Target::Absolute(v) => (v.wrapping_add(stored), None),
                                }
                            } else if r.r_symbolnum == 0 {
                                (stored, None)
                            } else {
                                let (delta, ord) = self
                                    .section_delta(o, r.r_symbolnum as usize - 1)
                                    .ok_or_else(|| {
                                        site.error(
                                            r.r_type,
                                            "target section is dropped or missing",
                                            HINT_DROPPED,
                                        )
                                    })?;
                                (stored.wrapping_add(delta as u64), Some(Ok(ord)))
                            };
                            if rel.is_some() && !p_out.is_multiple_of(4) {
                                return Err(site.error(
                                    r.r_type,
                                    format!("pointer at {p_out:#x} is not 4-byte aligned"),
                                    "align pointers in data (the kernel collection builder requires \
                                     4-byte aligned fix-ups)",
                                ));
                            }
                            match rel {
                                Some(Ok(ord)) => local.push((p_out as u32, ord)),
                                Some(Err(symidx)) => ext_unsigned.push((symidx, p_out as u32)),
                                None => {}
                            }
                            patches.push((p.out, patch_at, value.to_le_bytes().to_vec()));
                        }
                        X86_64_RELOC_SIGNED
                        | X86_64_RELOC_SIGNED_1
                        | X86_64_RELOC_SIGNED_2
                        | X86_64_RELOC_SIGNED_4
                        | X86_64_RELOC_BRANCH => {
                            if !r.r_pcrel || r.r_length != 2 {
                                return Err(site.unsupported());
                            }
                            let bias = reloc::pcrel_bias(r.r_type).expect("pc-relative type");
                            let value = if r.r_extern {
                                match target.as_ref().ok_or_else(|| site.unsupported())? {
                                    Target::Defined { obj: to, sym } => {
                                        let (a, _) =
                                            self.symbol_address(*to, *sym).ok_or_else(|| {
                                                site.error(
                                                    r.r_type,
                                                    "target lies in a dropped section",
                                                    HINT_DROPPED,
                                                )
                                            })?;
                                        reloc::extern_pcrel(a, stored32, bias, p_out)
                                    }
                                    Target::Undefined(name) if r.r_type == X86_64_RELOC_BRANCH => {
                                        ext_branch.push((self.undef_symidx[name], p_out as u32));
                                        i64::from(stored32)
                                    }
                                    Target::Undefined(_) => {
                                        return Err(site.error(
                                            r.r_type,
                                            "RIP-relative reference to an undefined symbol",
                                            HINT_UNDEF_RIP,
                                        ));
                                    }
                                    Target::Absolute(_) => {
                                        return Err(site.error(
                                            r.r_type,
                                            "RIP-relative reference to an absolute symbol moves when the kext slides",
                                            "reference the constant by value, not by address",
                                        ));
                                    }
                                }
                            } else {
                                let sect = (r.r_symbolnum as usize).checked_sub(1);
                                let (delta, _) = sect
                                    .and_then(|k| self.section_delta(o, k))
                                    .ok_or_else(|| {
                                        site.error(
                                            r.r_type,
                                            "target section is dropped or missing",
                                            HINT_DROPPED,
                                        )
                                    })?;
                                let p_obj = s.addr + u64::from(r.r_address);
                                reloc::section_pcrel(stored32, bias, p_obj, p_out, delta)
                            };
                            if !reloc::fits_i32(value) {
                                return Err(site.error(
                                    r.r_type,
                                    format!("displacement {value:#x} does not fit in 32 bits"),
                                    HINT_OVERFLOW,
                                ));
                            }
                            patches.push((p.out, patch_at, (value as i32).to_le_bytes().to_vec()));
                        }
                        X86_64_RELOC_GOT_LOAD | X86_64_RELOC_GOT => {
                            if !r.r_pcrel || r.r_length != 2 || !r.r_extern {
                                return Err(site.unsupported());
                            }
                            let target = target.ok_or_else(|| site.unsupported())?;
                            let value = if self.relaxes(s, r, &target) {
                                let Target::Defined { obj: to, sym } = target else {
                                    unreachable!()
                                };
                                let (a, _) = self.symbol_address(to, sym).ok_or_else(|| {
                                    site.error(
                                        r.r_type,
                                        "target lies in a dropped section",
                                        HINT_DROPPED,
                                    )
                                })?;
                                patches.push((p.out, patch_at - 2, vec![0x8d])); // movq → leaq
                                reloc::extern_pcrel(a, 0, 0, p_out)
                            } else {
                                let slot = self.got_index[&target];
                                let g =
                                    self.sections[self.got.expect("got")].addr + 8 * slot as u64;
                                reloc::extern_pcrel(g, stored32, 0, p_out)
                            };
                            if !reloc::fits_i32(value) {
                                return Err(site.error(
                                    r.r_type,
                                    format!("displacement {value:#x} does not fit in 32 bits"),
                                    HINT_OVERFLOW,
                                ));
                            }
                            patches.push((p.out, patch_at, (value as i32).to_le_bytes().to_vec()));
                        }
                        X86_64_RELOC_SUBTRACTOR => {
                            let Some(minuend) = next else {
                                return Err(site.error(
                                    r.r_type,
                                    "not followed by X86_64_RELOC_UNSIGNED",
                                    "the object is corrupt: rebuild it",
                                ));
                            };
                            ri += 1;
                            if minuend.r_type != X86_64_RELOC_UNSIGNED
                                || minuend.r_address != r.r_address
                                || minuend.r_length != r.r_length
                                || minuend.r_pcrel
                                || r.r_pcrel
                                || !(r.r_length == 2 || r.r_length == 3)
                            {
                                return Err(site.error(
                                    r.r_type,
                                    "must be followed by an X86_64_RELOC_UNSIGNED of the same address and length",
                                    "the object is corrupt: rebuild it",
                                ));
                            }
                            let minuend_site = Site {
                                obj,
                                sect: s,
                                r: minuend,
                            };
                            let b = self.pair_term(o, &site)?;
                            let a = self.pair_term(o, &minuend_site)?;
                            if a.1 != b.1 {
                                return Err(site.error(
                                    r.r_type,
                                    format!(
                                        "difference between {} and an absolute address changes when the kext slides",
                                        minuend_site.target_name()
                                    ),
                                    "subtract two addresses inside the kext, or two constants",
                                ));
                            }
                            let stored: i64 = if r.r_length == 3 {
                                get_u64(s.data, off) as i64
                            } else {
                                i64::from(stored32)
                            };
                            let value = stored.wrapping_add(a.0).wrapping_sub(b.0);
                            if r.r_length == 2 {
                                if !reloc::fits_i32(value) {
                                    return Err(site.error(
                                        r.r_type,
                                        format!("difference {value:#x} does not fit in 32 bits"),
                                        HINT_OVERFLOW,
                                    ));
                                }
                                patches.push((
                                    p.out,
                                    patch_at,
                                    (value as i32).to_le_bytes().to_vec(),
                                ));
                            } else {
                                patches.push((p.out, patch_at, value.to_le_bytes().to_vec()));
                            }
                        }
                        X86_64_RELOC_TLV => {
                            return Err(site.error(
                                r.r_type,
                                "thread-local variables are not supported in kernel extensions",
                                "remove thread_local!/__thread variables (the kernel target must not use TLS)",
                            ));
                        }
                        _ => return Err(site.unsupported()),
                    }
                }
            }
        }
        // __got slots.
        if let Some(g) = self.got {
            let base = self.sections[g].addr;
            let mut data = vec![0u8; 8 * self.got_slots.len()];
            for (k, t) in self.got_slots.iter().enumerate() {
                let at = base + 8 * k as u64;
                match t {
                    Target::Defined { obj, sym } => {
                        let (a, ord) = self.symbol_address(*obj, *sym).ok_or_else(|| {
                            LinkError::UnsupportedSymbol {
                                input: self.objects()[*obj].name.clone(),
                                symbol: self.objects()[*obj].symbols[*sym].name.clone(),
                                problem: "GOT entry for a symbol in a dropped section".into(),
                                hint: HINT_DROPPED,
                            }
                        })?;
                        put_u64(&mut data, 8 * k, a);
                        local.push((at as u32, ord));
                    }
                    Target::Undefined(name) => {
                        ext_unsigned.push((self.undef_symidx[name], at as u32))
                    }
                    Target::Absolute(v) => put_u64(&mut data, 8 * k, *v),
                }
            }
            self.sections[g].data = data;
        }
        for (out, at, bytes) in patches {
            self.sections[out].data[at..at + bytes.len()].copy_from_slice(&bytes);
        }
        local.sort();
        ext_unsigned.sort();
        ext_branch.sort();
        let ext = ext_unsigned
            .into_iter()
            .map(|(s, a)| (X86_64_RELOC_UNSIGNED, s, a))
            .chain(
                ext_branch
                    .into_iter()
                    .map(|(s, a)| (X86_64_RELOC_BRANCH, s, a)),
            )
            .collect();
        Ok((local, ext))
    }

    /// One side of a SUBTRACTOR pair: (amount to add to the stored value, is absolute).
    /// Extern: the symbol's address; section-relative: the section's move.
    pub(super) fn pair_term(
        &self,
        o: usize,
        site: &Site<'_, '_>,
    ) -> Result<(i64, bool), LinkError> {
        let r = site.r;
        if r.r_extern {
            match self
                .resolve_extern(o, r.r_symbolnum)
                .ok_or_else(|| site.unsupported())?
            {
                Target::Defined { obj, sym } => {
                    let (a, _) = self.symbol_address(obj, sym).ok_or_else(|| {
                        site.error(
                            X86_64_RELOC_SUBTRACTOR,
                            "target lies in a dropped section",
                            HINT_DROPPED,
                        )
                    })?;
                    Ok((a as i64, false))
                }
                Target::Absolute(v) => Ok((v as i64, true)),
                Target::Undefined(_) => Err(site.error(
                    X86_64_RELOC_SUBTRACTOR,
                    "difference involving an undefined symbol cannot be resolved at link time",
                    "subtract only addresses defined inside the kext",
                )),
            }
        } else if r.r_symbolnum == 0 {
            Ok((0, true))
        } else {
            let (delta, _) = self
                .section_delta(o, r.r_symbolnum as usize - 1)
                .ok_or_else(|| {
                    site.error(
                        X86_64_RELOC_SUBTRACTOR,
                        "target section is dropped or missing",
                        HINT_DROPPED,
                    )
                })?;
            Ok((delta, false))
        }
    }
}
