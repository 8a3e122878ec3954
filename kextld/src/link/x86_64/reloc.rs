//! x86_64 relocation semantics (`<mach-o/x86_64/reloc.h>`) for kexts.
//!
//! What each input relocation becomes in the kext:
//!
//! | input | target | output |
//! |---|---|---|
//! | `SIGNED`, `SIGNED_1/2/4`, `BRANCH` (pcrel, 32-bit) | defined | resolved rel32, no reloc |
//! | `BRANCH` | undefined | rel32 keeps its addend (0), external `BRANCH` reloc |
//! | `GOT_LOAD` on `movq` | defined | `movq` → `leaq`, resolved rel32 |
//! | `GOT_LOAD`/`GOT` otherwise | any | rel32 to a `__got` slot; slot gets a local or external `UNSIGNED` |
//! | `UNSIGNED` 64-bit | defined / section | unslid address + local `UNSIGNED` reloc |
//! | `UNSIGNED` 64-bit | undefined | addend + external `UNSIGNED` reloc |
//! | `SUBTRACTOR`+`UNSIGNED` | both defined | constant difference, no reloc |
//! | `UNSIGNED` 32-bit, `TLV`, `SIGNED*` to undefined, anything else | | rejected |
//!
//! Addends. For an extern pc-relative relocation the 32-bit field holds the
//! addend minus the bias N of the relocation type (0 for `SIGNED`/`BRANCH`/`GOT*`,
//! 1, 2, 4 for `SIGNED_1/2/4`: the size of the immediate that follows the
//! displacement), and the CPU adds the address of the *next instruction*, P + 4 + N.
//! So `addend = stored + N` and `value = S + addend - (P + 4 + N)`. For a
//! section-relative (non-extern) one the field holds the final displacement as
//! the assembler computed it in the object's own address space: the target
//! address is `P_obj + 4 + N + stored`, which is translated into the output via
//! the section named by `r_symbolnum`. For `UNSIGNED` the field holds the addend
//! (extern) or the target's address in the object (non-extern).

use crate::macho::*;

/// The bias N of a pc-relative relocation type: bytes of immediate after the rel32.
pub(super) fn pcrel_bias(r_type: u8) -> Option<i64> {
    match r_type {
        X86_64_RELOC_SIGNED | X86_64_RELOC_BRANCH | X86_64_RELOC_GOT_LOAD | X86_64_RELOC_GOT => {
            Some(0)
        }
        X86_64_RELOC_SIGNED_1 => Some(1),
        X86_64_RELOC_SIGNED_2 => Some(2),
        X86_64_RELOC_SIGNED_4 => Some(4),
        _ => None,
    }
}

/// rel32 for an extern pc-relative relocation to address `s`.
pub(super) fn extern_pcrel(s: u64, stored: i32, bias: i64, p_out: u64) -> i64 {
    let addend = i64::from(stored) + bias;
    (s as i64)
        .wrapping_add(addend)
        .wrapping_sub(p_out as i64 + 4 + bias)
}

/// rel32 for a section-relative pc-relative relocation: `p_obj` is the fix-up's
/// address in the object, `delta` = (target section output address − its object address).
pub(super) fn section_pcrel(stored: i32, bias: i64, p_obj: u64, p_out: u64, delta: i64) -> i64 {
    let target_obj = (p_obj as i64) + 4 + bias + i64::from(stored);
    let target_out = target_obj.wrapping_add(delta);
    target_out.wrapping_sub(p_out as i64 + 4 + bias)
}

/// Whether a `GOT_LOAD` at `off` in `code` is `movq disp32(%rip), %reg`
/// (REX.W 8B /r with mod=00 rm=101), which can become `leaq` (8D).
pub(super) fn is_rip_movq(code: &[u8], off: usize) -> bool {
    off >= 3
        && off + 4 <= code.len()
        && code[off - 3] & 0xf8 == 0x48
        && code[off - 2] == 0x8b
        && code[off - 1] & 0xc7 == 0x05
}

/// Fits in a signed 32-bit field.
pub(super) fn fits_i32(v: i64) -> bool {
    i32::try_from(v).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn biases() {
        assert_eq!(pcrel_bias(X86_64_RELOC_SIGNED_1), Some(1));
        assert_eq!(pcrel_bias(X86_64_RELOC_SIGNED_4), Some(4));
        assert_eq!(pcrel_bias(X86_64_RELOC_UNSIGNED), None);
        assert_eq!(pcrel_bias(X86_64_RELOC_TLV), None);
    }

    #[test]
    fn extern_pcrel_addend_semantics() {
        // `movb $1, _foo+8(%rip)`: SIGNED_1, the assembler stores 8 - 1 = 7.
        // Instruction: the rel32 at P, one immediate byte, next insn at P + 5.
        let (s, p) = (0x2000u64, 0x1000u64);
        let v = extern_pcrel(s, 7, 1, p);
        assert_eq!(p as i64 + 5 + v, s as i64 + 8);
        // plain call: next insn at P + 4.
        assert_eq!(extern_pcrel(s, 0, 0, p), 0x2000 - 0x1004);
    }

    #[test]
    fn section_pcrel_moves_with_both_sections() {
        // In the object the field at 0x10 points at 0x40 with a 4-byte immediate:
        // 0x10 + 4 + 4 + stored = 0x40 → stored = 0x28.
        // Source moves by +0x100 (P_out = 0x110), target section by +0x300.
        let v = section_pcrel(0x28, 4, 0x10, 0x110, 0x300);
        assert_eq!(0x110 + 8 + v, 0x340);
    }

    #[test]
    fn movq_detection() {
        // movq 0(%rip), %rax = 48 8b 05 <disp32>
        let code = [0x48, 0x8b, 0x05, 0, 0, 0, 0];
        assert!(is_rip_movq(&code, 3));
        // movq 0(%rip), %r11 = 4c 8b 1d
        assert!(is_rip_movq(&[0x4c, 0x8b, 0x1d, 0, 0, 0, 0], 3));
        // pushq 0(%rip) = ff 35: not a movq
        assert!(!is_rip_movq(&[0x90, 0xff, 0x35, 0, 0, 0, 0], 3));
        assert!(!is_rip_movq(&code, 2));
    }
}
