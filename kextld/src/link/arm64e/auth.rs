//! Pointer authentication of the function pointers the kernel calls.
//!
//! The arm64e kernel calls kext callbacks with type-discriminated pointer
//! authentication (`blraa ptr, disc`, key IA); rustc does not sign
//! function-pointer constants (and clang-19's Mach-O writer drops the signing
//! of static initialisers), so the linker turns the right plain rebases into
//! authenticated ones:
//!
//! - **`kmod_info`**: kextld knows `kmod_info_t`; the pointers at offsets 180
//!   (`start`) and 188 (`stop`) of `_kmod_info` become auth rebases with key IA,
//!   no address diversity and the discriminator of `kern_return_t (*)(kmod_info_t *,
//!   void *)` (encoding `FiPPE`, 0xE4FE, computed by [`crate::ptrauth`]). A null
//!   start/stop stays null.
//! - **marked slots**: any other slot the kernel calls through (filter and
//!   control callbacks) is marked by a record in the input section
//!   `__DATA,__prx_auth` ([`MARK_SECTION`]), emitted by
//!   `common::kpi::ptrauth::sign_slot!`. Each record is 16 bytes:
//!
//!   ```text
//!   0   u64  address of the slot (a pointer: an ARM64_RELOC_UNSIGNED to it)
//!   8   u16  discriminator
//!   10  u8   key (0 IA, 1 IB, 2 DA, 3 DB)
//!   11  u8   address diversity (0 or 1)
//!   12  u32  0
//!   ```
//!
//!   kextld consumes the section (it is not in the output) and makes the
//!   slot's fixup authenticated with that schema. The slot must hold a pointer
//!   fixup whose target is code in `__TEXT_EXEC` (or a kernel function, bound):
//!   a null slot, a non-pointer value or a pointer to data is an error, so a
//!   marked callback can never reach the kernel unsigned.
//!
//! Input `ARM64_RELOC_AUTHENTICATED_POINTER` relocations (from compilers that
//! emit them) carry their schema in the slot ([`decode_auth_slot`]) and become
//! auth rebases/binds directly.

use super::fixups::Fixup;
use super::split_seg;
use super::{Linker, SEG_DATA, SEG_DATA_CONST, SEG_TEXT_EXEC};
use crate::link::LinkError;
use crate::link::resolve::Global;
use crate::macho::*;
use crate::ptrauth::{self, Key, Signing};

/// The input section holding pointer-authentication marks (segment `__DATA`).
pub(super) const MARK_SECTION: &str = "__prx_auth";
/// Size of one mark record.
pub(super) const MARK_SIZE: usize = 16;
/// Offsets of `start` and `stop` in `kmod_info_t`.
const KMOD_START_STOP_OFFSETS: [(u64, &str); 2] = [(180, "start"), (188, "stop")];
/// clang's function-type encoding of `kern_return_t (*)(kmod_info_t *, void *)`.
const KMOD_START_STOP_ENCODING: &str = "FiPPE";

const HINT_MARK: &str = "mark only slots that hold a function defined in the kext \
     (common::kpi::ptrauth::sign_slot!), and give them a non-null function";

fn error(input: &str, problem: String, hint: &'static str) -> LinkError {
    LinkError::PointerAuth {
        input: input.to_string(),
        problem,
        hint,
    }
}

/// Decodes the slot of an `ARM64_RELOC_AUTHENTICATED_POINTER`: addend in bits
/// 0–31 (signed), diversity 32–47, address diversity 48, key 49–50, bit 63 set,
/// bits 51–62 clear (as ld64 reads it).
pub(super) fn decode_auth_slot(v: u64) -> Result<(i64, Signing), String> {
    if v >> 63 != 1 || (v >> 51) & 0xfff != 0 {
        return Err(format!(
            "authenticated pointer slot {v:#018x} is malformed (bit 63 must be set, bits 51-62 clear)"
        ));
    }
    let key = Key::from_bits(((v >> 49) & 3) as u8).expect("2-bit key");
    Ok((
        i64::from(v as u32 as i32),
        Signing {
            key,
            addr_div: (v >> 48) & 1 == 1,
            diversity: (v >> 32) as u16,
        },
    ))
}

impl Linker<'_, '_> {
    /// A readable name for an address: `symbol+offset` of the nearest symbol
    /// at or below it in the same output section, or the section and offset.
    fn describe(&self, addr: u64) -> String {
        let Some((ord, off)) = self.locate(addr) else {
            return format!("{addr:#x}");
        };
        let mut best: Option<(u64, &str)> = None;
        for (o, obj) in self.objects().iter().enumerate() {
            for (i, s) in obj.symbols.iter().enumerate() {
                if s.is_stab() || s.kind() != N_SECT || s.name.starts_with(['l', 'L']) {
                    continue;
                }
                if let Some((a, so)) = self.symbol_address(o, i)
                    && so == ord
                    && a <= addr
                    && best.is_none_or(|(b, _)| a > b)
                {
                    best = Some((a, &s.name));
                }
            }
        }
        let s = &self.sections[ord as usize - 1];
        match best {
            Some((a, name)) if a == addr => format!("{name} ({},{})", s.segname, s.sectname),
            Some((a, name)) => format!("{name}+{:#x} ({},{})", addr - a, s.segname, s.sectname),
            None => format!("{},{}+{off:#x}", s.segname, s.sectname),
        }
    }

    /// Makes the fixup at `slot` authenticated with `signing`; `what` names the
    /// slot in errors.
    fn authenticate(
        &mut self,
        input: &str,
        slot: u64,
        what: &str,
        signing: Signing,
    ) -> Result<(), LinkError> {
        match self.fixups.get(&slot).copied() {
            Some(Fixup::Rebase { target, auth: None }) => {
                if self.segment_of(target) != Some(SEG_TEXT_EXEC) {
                    return Err(error(
                        input,
                        format!(
                            "{what} points at {}, not at a function in __TEXT_EXEC: the kernel would \
                             call a data address",
                            self.describe(target)
                        ),
                        HINT_MARK,
                    ));
                }
                if target > super::fixups::MAX_AUTH_REBASE_TARGET {
                    return Err(error(
                        input,
                        format!("{what}: target {target:#x} beyond 4 GiB"),
                        HINT_MARK,
                    ));
                }
                self.fixups.insert(
                    slot,
                    Fixup::Rebase {
                        target,
                        auth: Some(signing),
                    },
                );
                if let Some((sect, off)) = self.locate(slot) {
                    for e in &mut self.split {
                        if e.from_sect == sect
                            && e.from_off == off
                            && e.kind == split_seg::POINTER_64
                        {
                            e.kind = split_seg::THREADED_POINTER_64;
                        }
                    }
                }
                Ok(())
            }
            Some(Fixup::Bind {
                ordinal,
                addend: 0,
                auth: None,
            }) => {
                self.fixups.insert(
                    slot,
                    Fixup::Bind {
                        ordinal,
                        addend: 0,
                        auth: Some(signing),
                    },
                );
                Ok(())
            }
            Some(Fixup::Rebase { auth: Some(s), .. } | Fixup::Bind { auth: Some(s), .. })
                if s == signing =>
            {
                Ok(())
            }
            Some(Fixup::Rebase { auth: Some(s), .. } | Fixup::Bind { auth: Some(s), .. }) => {
                Err(error(
                    input,
                    format!(
                        "{what} is already signed with key {:?}, discriminator {:#06x}, address \
                     diversity {}, but must be signed with key {:?}, discriminator {:#06x}, address \
                     diversity {}",
                        s.key,
                        s.diversity,
                        s.addr_div,
                        signing.key,
                        signing.diversity,
                        signing.addr_div
                    ),
                    "use the discriminator of the C function type the kernel calls through",
                ))
            }
            Some(Fixup::Bind { .. }) => Err(error(
                input,
                format!("{what} binds a kernel symbol with an addend; it cannot be signed"),
                HINT_MARK,
            )),
            None => Err(error(
                input,
                format!(
                    "{what} ({}) holds no pointer fix-up (null, or a value that is not a pointer): \
                     the kernel would call an unsigned or bogus function pointer",
                    self.describe(slot)
                ),
                HINT_MARK,
            )),
        }
    }
}

/// kmod_info start/stop → auth rebases (key IA, discriminator of `FiPPE`).
pub(super) fn sign_kmod_info(l: &mut Linker<'_, '_>) -> Result<(), LinkError> {
    let Some(Global::Defined { obj, sym }) = l.loaded.globals.get("_kmod_info").cloned() else {
        return Err(LinkError::NoKmodInfo);
    };
    let input = l.objects()[obj].name.clone();
    let (base, _) = l.symbol_address(obj, sym).ok_or(LinkError::NoKmodInfo)?;
    if !matches!(l.segment_of(base), Some(SEG_DATA | SEG_DATA_CONST)) {
        return Err(error(
            &input,
            format!("_kmod_info at {base:#x} is not in a writable segment"),
            "define kmod_info in __DATA,__data (common::kext! does)",
        ));
    }
    let signing = Signing::kernel_function_pointer(ptrauth::function_type_discriminator(
        KMOD_START_STOP_ENCODING,
    ));
    debug_assert_eq!(signing, Signing::KMOD_START_STOP);
    for (off, field) in KMOD_START_STOP_OFFSETS {
        let slot = base + off;
        if !l.fixups.contains_key(&slot) {
            let Some((ord, so)) = l.locate(slot) else {
                return Err(error(
                    &input,
                    format!(
                        "_kmod_info.{field} (offset {off}) at {slot:#x} lies outside every \
                         section: the section holding _kmod_info ends before the structure does"
                    ),
                    "define kmod_info as a whole kmod_info_t (common::kext! does)",
                ));
            };
            let data = &l.sections[ord as usize - 1].data;
            let value = data
                .get(so as usize..so as usize + 8)
                .map(|b| get_u64(b, 0));
            if value == Some(0) {
                continue; // no start/stop routine
            }
            return Err(error(
                &input,
                format!(
                    "_kmod_info.{field} (offset {off}) holds {value:#x?}, which is not a pointer fix-up"
                ),
                "kmod_info.start/stop must be null or point at a function of the kext",
            ));
        }
        l.authenticate(&input, slot, &format!("_kmod_info.{field}"), signing)?;
    }
    Ok(())
}

/// Consumes the `__DATA,__prx_auth` records.
pub(super) fn apply_marks(l: &mut Linker<'_, '_>) -> Result<(), LinkError> {
    for (o, i) in l.marks.clone() {
        let obj = &l.loaded.objects[o];
        let s = &obj.sections[i];
        let input = obj.name.clone();
        if s.is_zerofill() || !s.data.len().is_multiple_of(MARK_SIZE) {
            return Err(error(
                &input,
                format!(
                    "__DATA,{MARK_SECTION} is {} bytes, not a whole number of 16-byte records",
                    s.size
                ),
                "emit marks only with common::kpi::ptrauth::sign_slot!",
            ));
        }
        for k in 0..s.data.len() / MARK_SIZE {
            let at = (k * MARK_SIZE) as u32;
            let rec = &s.data[k * MARK_SIZE..(k + 1) * MARK_SIZE];
            let what = format!("__DATA,{MARK_SECTION} record {k}");
            let r = s.relocs.iter().find(|r| {
                r.r_address == at
                    && r.r_type == ARM64_RELOC_UNSIGNED
                    && r.r_length == 3
                    && !r.r_pcrel
            });
            let Some(r) = r else {
                return Err(error(
                    &input,
                    format!(
                        "{what} does not point at a slot (no 64-bit pointer relocation at its start)"
                    ),
                    "emit marks only with common::kpi::ptrauth::sign_slot!",
                ));
            };
            if s.relocs
                .iter()
                .any(|x| x.r_address > at && x.r_address < at + MARK_SIZE as u32)
            {
                return Err(error(
                    &input,
                    format!("{what} has relocations in its key/discriminator fields"),
                    HINT_MARK,
                ));
            }
            let key = Key::from_bits(rec[10]).filter(|_| rec[10] < 4);
            let (Some(key), addr_div @ (0 | 1)) = (key, rec[11]) else {
                return Err(error(
                    &input,
                    format!("{what} has key {} / address diversity {}", rec[10], rec[11]),
                    HINT_MARK,
                ));
            };
            let signing = Signing {
                key,
                addr_div: addr_div == 1,
                diversity: u16::from_le_bytes([rec[8], rec[9]]),
            };
            let stored = get_u64(rec, 0);
            let site = super::Site { obj, sect: s, r };
            let slot = match l.resolve(o, &site, stored)? {
                super::Resolved::Address(a) if r.r_extern => a.wrapping_add(stored),
                super::Resolved::Address(a) => a,
                _ => {
                    return Err(error(
                        &input,
                        format!(
                            "{what} points at {}, which is not a slot in the kext",
                            site.target_name()
                        ),
                        HINT_MARK,
                    ));
                }
            };
            if !matches!(l.segment_of(slot), Some(SEG_DATA | SEG_DATA_CONST)) {
                return Err(error(
                    &input,
                    format!(
                        "{what} marks {}, which is not in __DATA or __DATA_CONST",
                        l.describe(slot)
                    ),
                    HINT_MARK,
                ));
            }
            let name = format!("marked slot {}", l.describe(slot));
            l.authenticate(&input, slot, &name, signing)?;
        }
    }
    Ok(())
}
