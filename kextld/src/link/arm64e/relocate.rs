//! Relocation: resolves every relocation of the kept sections into patched
//! code and data, chained fixups (rebases and binds, checked against the
//! loader's rules) and split-seg entries; then writes the stub code and the
//! GOT slots' fixups (see the table in the module docs of [`super`]).

use super::fixups::{self, Fixup};
use super::split_seg::{self, Entry};
use super::{
    HINT_ABS32, HINT_ALIGN, HINT_CORRUPT, HINT_DROPPED, HINT_UNDEF_CODE, Linker, Resolved,
    SEG_DATA, SEG_DATA_CONST, Site, auth, insn,
};
use crate::link::LinkError;
use crate::link::image::{self, Target};
use crate::macho::*;
use crate::ptrauth::Signing;

impl<'a> Linker<'_, 'a> {
    /// Records a split-seg entry from `from` to `to` (addresses), when both are
    /// in the image.
    pub(super) fn split_entry(&mut self, from: u64, to: u64, kind: u8) {
        if let (Some((fs, fo)), Some((ts, to))) = (self.locate(from), self.locate(to)) {
            self.split.push(Entry {
                from_sect: fs,
                from_off: fo,
                to_sect: ts,
                to_off: to,
                kind,
            });
        }
    }

    /// The address a defined target resolves to, or an error naming the site.
    pub(super) fn defined_address(
        &self,
        site: &Site<'_, '_>,
        obj: usize,
        sym: usize,
    ) -> Result<u64, LinkError> {
        self.symbol_address(obj, sym)
            .map(|(a, _)| a)
            .ok_or_else(|| site.error("target lies in a dropped section", HINT_DROPPED))
    }

    /// Resolves an extern or section-relative relocation's target (without addend).
    /// For section-relative ones the stored object address `stored` is translated.
    pub(super) fn resolve(
        &self,
        o: usize,
        site: &Site<'_, '_>,
        stored: u64,
    ) -> Result<Resolved, LinkError> {
        let r = site.r;
        if r.r_extern {
            match image::resolve_extern(self.loaded, o, r.r_symbolnum)
                .ok_or_else(|| site.unsupported())?
            {
                Target::Defined { obj, sym } => {
                    Ok(Resolved::Address(self.defined_address(site, obj, sym)?))
                }
                Target::Undefined(name) => Ok(Resolved::Undefined(name)),
                Target::Absolute(v) => Ok(Resolved::Constant(v)),
            }
        } else if r.r_symbolnum == 0 {
            Ok(Resolved::Constant(stored))
        } else {
            let (delta, _) = image::section_delta(
                self.objects(),
                &self.place,
                &self.sections,
                o,
                r.r_symbolnum as usize - 1,
            )
            .ok_or_else(|| site.error("target section is dropped or missing", HINT_DROPPED))?;
            Ok(Resolved::Address(stored.wrapping_add(delta as u64)))
        }
    }

    /// Adds a chained fixup at `at`, checking the loader's rules.
    pub(super) fn add_fixup(
        &mut self,
        site: &Site<'_, '_>,
        at: u64,
        fixup: Fixup,
    ) -> Result<(), LinkError> {
        if !at.is_multiple_of(4) {
            return Err(site.error(
                format!("pointer at {at:#x} is not 4-byte aligned"),
                HINT_ALIGN,
            ));
        }
        match self.segment_of(at) {
            Some(SEG_DATA | SEG_DATA_CONST) => {}
            _ => {
                return Err(site.error(
                    format!("pointer at {at:#x} needs a fix-up but lies in a read-only segment"),
                    "put data holding pointers in __DATA or __DATA,__const (writable segments); \
                     the kernel applies fix-ups only there",
                ));
            }
        }
        let overlaps = self
            .fixups
            .range(at.saturating_sub(7)..at + 8)
            .next()
            .is_some();
        if overlaps {
            return Err(site.error(
                format!("pointer at {at:#x} overlaps another pointer fix-up"),
                HINT_CORRUPT,
            ));
        }
        self.fixups.insert(at, fixup);
        Ok(())
    }

    /// A rebase to `target` (+ `auth`), range-checked.
    pub(super) fn rebase(
        &mut self,
        site: &Site<'_, '_>,
        at: u64,
        target: u64,
        auth: Option<Signing>,
    ) -> Result<(), LinkError> {
        let max = if auth.is_some() {
            fixups::MAX_AUTH_REBASE_TARGET
        } else {
            fixups::MAX_REBASE_TARGET
        };
        if target > max {
            return Err(site.error(
                format!("rebase target {target:#x} does not fit the chained pointer"),
                "check for a bogus addend",
            ));
        }
        self.add_fixup(site, at, Fixup::Rebase { target, auth })?;
        let kind = if auth.is_some() {
            split_seg::THREADED_POINTER_64
        } else {
            split_seg::POINTER_64
        };
        self.split_entry(at, target, kind);
        Ok(())
    }

    /// A bind of `name` (+ `addend`, + `auth`), range-checked.
    pub(super) fn bind(
        &mut self,
        site: &Site<'_, '_>,
        at: u64,
        name: &str,
        addend: i64,
        auth: Option<Signing>,
    ) -> Result<(), LinkError> {
        if (auth.is_some() && addend != 0) || !fixups::BIND_ADDEND.contains(&addend) {
            return Err(site.error(
                format!("addend {addend:#x} to an undefined symbol does not fit the chained bind"),
                "reference kernel symbols without large offsets",
            ));
        }
        let ordinal = self.import_ordinal(name);
        self.add_fixup(
            site,
            at,
            Fixup::Bind {
                ordinal,
                addend,
                auth,
            },
        )
    }

    /// Imports are the referenced undefined symbols, in symbol-table order.
    pub(super) fn import_ordinal(&self, name: &str) -> u32 {
        self.referenced_undef
            .iter()
            .position(|n| n == name)
            .expect("referenced") as u32
    }

    /// Second pass: patches code and data, records fixups and split-seg entries.
    pub(super) fn apply_relocations(&mut self) -> Result<(), LinkError> {
        let loaded = self.loaded;
        let mut patches: Vec<(usize, usize, Vec<u8>)> = Vec::new();
        for (o, obj) in loaded.objects.iter().enumerate() {
            for (si, s) in obj.sections.iter().enumerate() {
                let Some(p) = self.place[o][si] else { continue };
                let out_addr = self.sections[p.out].addr + p.offset;
                let mut addend: Option<i64> = None;
                let mut ri = 0;
                while ri < s.relocs.len() {
                    let r = &s.relocs[ri];
                    ri += 1;
                    let site = Site { obj, sect: s, r };
                    let off = r.r_address as usize;
                    let width = 1usize << r.r_length;
                    if off + width > s.data.len() {
                        return Err(site.error("fix-up lies outside its section", HINT_CORRUPT));
                    }
                    let pc = out_addr + u64::from(r.r_address);
                    let patch_at = p.offset as usize + off;
                    let pending = addend.take().unwrap_or(0);
                    let insn32 = get_u32(s.data, off);
                    let code_reloc = matches!(
                        r.r_type,
                        ARM64_RELOC_BRANCH26
                            | ARM64_RELOC_PAGE21
                            | ARM64_RELOC_PAGEOFF12
                            | ARM64_RELOC_GOT_LOAD_PAGE21
                            | ARM64_RELOC_GOT_LOAD_PAGEOFF12
                    );
                    if code_reloc && (r.r_length != 2 || !r.r_extern) {
                        return Err(site.unsupported());
                    }
                    let bad_insn = |problem: String| site.error(problem, HINT_CORRUPT);
                    match r.r_type {
                        ARM64_RELOC_ADDEND => {
                            let next_ok = s.relocs.get(ri).is_some_and(|n| {
                                n.r_address == r.r_address
                                    && matches!(
                                        n.r_type,
                                        ARM64_RELOC_BRANCH26
                                            | ARM64_RELOC_PAGE21
                                            | ARM64_RELOC_PAGEOFF12
                                    )
                            });
                            if !next_ok {
                                return Err(site.error(
                                    "not followed by a BRANCH26, PAGE21 or PAGEOFF12 at the same address",
                                    HINT_CORRUPT,
                                ));
                            }
                            // 24-bit signed addend in r_symbolnum.
                            addend = Some(i64::from(((r.r_symbolnum << 8) as i32) >> 8));
                        }
                        ARM64_RELOC_BRANCH26 => {
                            if !r.r_pcrel {
                                return Err(site.unsupported());
                            }
                            let target = match self.resolve(o, &site, 0)? {
                                Resolved::Address(a) => a.wrapping_add(pending as u64),
                                Resolved::Undefined(name) => {
                                    if pending != 0 {
                                        return Err(site.error(
                                            "call into an undefined function with an addend",
                                            "call kernel functions at their entry point",
                                        ));
                                    }
                                    let stub = self.stub_address(&name);
                                    self.split_entry(pc, stub, split_seg::ARM64_BR26);
                                    stub
                                }
                                Resolved::Constant(_) => {
                                    return Err(site.error(
                                        "branch to an absolute address moves when the kext slides",
                                        "call functions defined in the kext or the kernel",
                                    ));
                                }
                            };
                            let v = insn::patch_branch26(insn32, target as i64 - pc as i64)
                                .map_err(|e| site.error(e, "keep the kext's code under 128 MiB"))?;
                            patches.push((p.out, patch_at, v.to_le_bytes().to_vec()));
                        }
                        ARM64_RELOC_PAGE21
                        | ARM64_RELOC_PAGEOFF12
                        | ARM64_RELOC_GOT_LOAD_PAGE21
                        | ARM64_RELOC_GOT_LOAD_PAGEOFF12 => {
                            let page21 = matches!(
                                r.r_type,
                                ARM64_RELOC_PAGE21 | ARM64_RELOC_GOT_LOAD_PAGE21
                            );
                            if r.r_pcrel != page21 {
                                return Err(site.unsupported());
                            }
                            let got = matches!(
                                r.r_type,
                                ARM64_RELOC_GOT_LOAD_PAGE21 | ARM64_RELOC_GOT_LOAD_PAGEOFF12
                            );
                            let resolved = self.resolve(o, &site, 0)?;
                            // (address the instruction refers to, relax ldr → add)
                            let (target, relax) = match (got, resolved) {
                                (false, Resolved::Address(a)) => {
                                    (a.wrapping_add(pending as u64), false)
                                }
                                (true, Resolved::Address(a)) => (a, true),
                                (false, Resolved::Undefined(_)) => {
                                    return Err(site.error(
                                        "page-relative reference to an undefined symbol",
                                        HINT_UNDEF_CODE,
                                    ));
                                }
                                (false, Resolved::Constant(_)) => {
                                    return Err(site.error(
                                        "page-relative reference to an absolute symbol moves when the kext slides",
                                        "reference the constant by value, not by address",
                                    ));
                                }
                                (true, _) => {
                                    let t = image::resolve_extern(loaded, o, r.r_symbolnum)
                                        .expect("resolved");
                                    (self.got_slot_address(&t), false)
                                }
                            };
                            let v = if page21 {
                                self.split_entry(pc, target, split_seg::ARM64_ADRP);
                                insn::patch_adrp(insn32, pc, target).map_err(bad_insn)?
                            } else {
                                self.split_entry(pc, target, split_seg::ARM64_OFF12);
                                if relax {
                                    insn::relax_ldr_to_add(insn32, target).map_err(bad_insn)?
                                } else if got {
                                    if insn32 & 0xffc0_0000 != 0xf940_0000 {
                                        return Err(bad_insn(format!(
                                            "instruction {insn32:#010x} is not ldr Xt, [Xn, #imm] (64-bit)"
                                        )));
                                    }
                                    insn::patch_pageoff12(insn32, target).map_err(bad_insn)?
                                } else {
                                    insn::patch_pageoff12(insn32, target).map_err(|e| {
                                        site.error(e, "align the data the instruction accesses to its access size")
                                    })?
                                }
                            };
                            patches.push((p.out, patch_at, v.to_le_bytes().to_vec()));
                        }
                        ARM64_RELOC_POINTER_TO_GOT => {
                            if !r.r_extern {
                                return Err(site.unsupported());
                            }
                            let t = image::resolve_extern(loaded, o, r.r_symbolnum)
                                .ok_or_else(|| site.unsupported())?;
                            let slot = self.got_slot_address(&t);
                            match (r.r_pcrel, r.r_length) {
                                (true, 2) => {
                                    let delta = slot as i64 - pc as i64;
                                    let v = i32::try_from(delta).map_err(|_| {
                                        site.error(
                                            format!("delta {delta:#x} does not fit in 32 bits"),
                                            HINT_CORRUPT,
                                        )
                                    })?;
                                    self.split_entry(pc, slot, split_seg::DELTA_32);
                                    patches.push((p.out, patch_at, v.to_le_bytes().to_vec()));
                                }
                                (true, 3) => {
                                    let delta = slot as i64 - pc as i64;
                                    self.split_entry(pc, slot, split_seg::DELTA_64);
                                    patches.push((p.out, patch_at, delta.to_le_bytes().to_vec()));
                                }
                                (false, 3) => {
                                    self.rebase(&site, pc, slot, None)?;
                                }
                                _ => return Err(site.unsupported()),
                            }
                        }
                        ARM64_RELOC_UNSIGNED | ARM64_RELOC_AUTHENTICATED_POINTER => {
                            if r.r_pcrel {
                                return Err(site.unsupported());
                            }
                            if r.r_length != 3 {
                                return Err(site.error(
                                    format!(
                                        "{}-bit absolute address: the kernel cannot slide it",
                                        width * 8
                                    ),
                                    HINT_ABS32,
                                ));
                            }
                            let stored = get_u64(s.data, off);
                            let (addend, auth) = if r.r_type == ARM64_RELOC_AUTHENTICATED_POINTER {
                                let (addend, signing) = auth::decode_auth_slot(stored)
                                    .map_err(|e| site.error(e, HINT_CORRUPT))?;
                                (addend, Some(signing))
                            } else {
                                (stored as i64, None)
                            };
                            match self.resolve(o, &site, stored)? {
                                Resolved::Address(a) if r.r_extern => {
                                    self.rebase(&site, pc, a.wrapping_add(addend as u64), auth)?
                                }
                                // section-relative: `stored` already was the target
                                Resolved::Address(a) => self.rebase(&site, pc, a, auth)?,
                                Resolved::Undefined(name) => {
                                    self.bind(&site, pc, &name, addend, auth)?
                                }
                                Resolved::Constant(v) => {
                                    if auth.is_some() {
                                        return Err(site.error(
                                            "signed pointer to an absolute address",
                                            "sign only pointers into the kext or the kernel",
                                        ));
                                    }
                                    let v = if r.r_extern {
                                        v.wrapping_add(addend as u64)
                                    } else {
                                        v
                                    };
                                    patches.push((p.out, patch_at, v.to_le_bytes().to_vec()));
                                }
                            }
                        }
                        ARM64_RELOC_SUBTRACTOR => {
                            let Some(minuend) = s.relocs.get(ri) else {
                                return Err(site
                                    .error("not followed by ARM64_RELOC_UNSIGNED", HINT_CORRUPT));
                            };
                            ri += 1;
                            if minuend.r_type != ARM64_RELOC_UNSIGNED
                                || minuend.r_address != r.r_address
                                || minuend.r_length != r.r_length
                                || minuend.r_pcrel
                                || r.r_pcrel
                                || !(r.r_length == 2 || r.r_length == 3)
                            {
                                return Err(site.error(
                                    "must be followed by an ARM64_RELOC_UNSIGNED of the same address and length",
                                    HINT_CORRUPT,
                                ));
                            }
                            let msite = Site {
                                obj,
                                sect: s,
                                r: minuend,
                            };
                            let term = |l: &Self, st: &Site<'_, '_>| -> Result<(i64, Option<u64>), LinkError> {
                                match l.resolve(o, st, 0)? {
                                    Resolved::Address(a) if st.r.r_extern => Ok((a as i64, Some(a))),
                                    Resolved::Constant(v) if st.r.r_extern => Ok((v as i64, None)),
                                    Resolved::Undefined(_) => Err(st.error(
                                        "difference involving an undefined symbol cannot be resolved at link time",
                                        "subtract only addresses defined inside the kext",
                                    )),
                                    _ => Err(st.unsupported()),
                                }
                            };
                            let (b, b_addr) = term(self, &site)?;
                            let (a, a_addr) = term(self, &msite)?;
                            if a_addr.is_some() != b_addr.is_some() {
                                return Err(site.error(
                                    "difference between an address and a constant changes when the kext slides",
                                    "subtract two addresses inside the kext, or two constants",
                                ));
                            }
                            let stored: i64 = if r.r_length == 3 {
                                get_u64(s.data, off) as i64
                            } else {
                                i64::from(get_u32(s.data, off) as i32)
                            };
                            let value = stored.wrapping_add(a).wrapping_sub(b);
                            if let (Some(aa), Some(ba)) = (a_addr, b_addr)
                                && self.segment_of(aa) != self.segment_of(ba)
                            {
                                let kind = if r.r_length == 3 {
                                    split_seg::DELTA_64
                                } else {
                                    split_seg::DELTA_32
                                };
                                self.split_entry(pc, aa, kind);
                            }
                            if r.r_length == 2 {
                                let v = i32::try_from(value).map_err(|_| {
                                    site.error(
                                        format!("difference {value:#x} does not fit in 32 bits"),
                                        HINT_CORRUPT,
                                    )
                                })?;
                                patches.push((p.out, patch_at, v.to_le_bytes().to_vec()));
                            } else {
                                patches.push((p.out, patch_at, value.to_le_bytes().to_vec()));
                            }
                        }
                        ARM64_RELOC_TLVP_LOAD_PAGE21 | ARM64_RELOC_TLVP_LOAD_PAGEOFF12 => {
                            return Err(site.error(
                                "thread-local variables are not supported in kernel extensions",
                                "remove thread_local!/__thread variables (the kernel target must not use TLS)",
                            ));
                        }
                        _ => return Err(site.unsupported()),
                    }
                }
                if addend.is_some() {
                    let r = s.relocs.last().expect("addend");
                    return Err(Site { obj, sect: s, r }
                        .error("ARM64_RELOC_ADDEND at the end", HINT_CORRUPT));
                }
            }
        }
        for (out, at, bytes) in patches {
            self.sections[out].data[at..at + bytes.len()].copy_from_slice(&bytes);
        }
        Ok(())
    }

    /// Stub code, `__auth_got` auth binds, `__got` binds and rebases.
    pub(super) fn write_stubs_and_gots(&mut self) -> Result<(), LinkError> {
        let err = |name: &str, problem: String| LinkError::UnsupportedSymbol {
            input: "(linker-made GOT)".into(),
            symbol: name.to_string(),
            problem,
            hint: HINT_DROPPED,
        };
        for (k, name) in self.stubs.clone().iter().enumerate() {
            let stub = self.stub_address(name);
            let mut code = Vec::new();
            if self.auth_stubs {
                let slot =
                    self.sections[self.auth_got_sect.expect("__auth_got")].addr + 8 * k as u64;
                for w in insn::auth_stub(stub, slot) {
                    push_u32(&mut code, w);
                }
                let ordinal = self.import_ordinal(name);
                self.fixups.insert(
                    slot,
                    Fixup::Bind {
                        ordinal,
                        addend: 0,
                        auth: Some(Signing::AUTH_GOT),
                    },
                );
                self.split_entry(stub, slot, split_seg::ARM64_ADRP);
                self.split_entry(stub + 4, slot, split_seg::ARM64_OFF12);
            } else {
                let slot = self.got_slot_address(&Target::Undefined(name.clone()));
                for w in insn::plain_stub(stub, slot) {
                    push_u32(&mut code, w);
                }
                self.split_entry(stub, slot, split_seg::ARM64_ADRP);
                self.split_entry(stub + 4, slot, split_seg::ARM64_OFF12);
            }
            let s = &mut self.sections[self.stubs_sect.expect("stubs")];
            let at = (stub - s.addr) as usize;
            s.data[at..at + code.len()].copy_from_slice(&code);
        }
        for (k, t) in self.got.clone().iter().enumerate() {
            let at = self.sections[self.got_sect.expect("__got")].addr + 8 * k as u64;
            match t {
                Target::Defined { obj, sym } => {
                    let name = &self.objects()[*obj].symbols[*sym].name;
                    let (a, _) = self.symbol_address(*obj, *sym).ok_or_else(|| {
                        err(name, "GOT entry for a symbol in a dropped section".into())
                    })?;
                    self.fixups.insert(
                        at,
                        Fixup::Rebase {
                            target: a,
                            auth: None,
                        },
                    );
                    self.split_entry(at, a, split_seg::POINTER_64);
                }
                Target::Undefined(name) => {
                    let ordinal = self.import_ordinal(name);
                    self.fixups.insert(
                        at,
                        Fixup::Bind {
                            ordinal,
                            addend: 0,
                            auth: None,
                        },
                    );
                }
                Target::Absolute(v) => {
                    let s = &mut self.sections[self.got_sect.expect("__got")];
                    put_u64(&mut s.data, 8 * k, *v);
                }
            }
        }
        Ok(())
    }
}
