//! AArch64 instruction fields the linker patches (Arm ARM C4/C6) and the code
//! of the stubs it writes. Each patch returns `Err(problem)` when the
//! instruction is not the kind the relocation implies or the value does not fit.

/// Branch range of `b`/`bl`: ±128 MiB.
pub(super) const BRANCH26_RANGE: i64 = 1 << 27;

/// `b`/`bl imm26` (BRANCH26): `delta` = target − instruction address.
pub(super) fn patch_branch26(insn: u32, delta: i64) -> Result<u32, String> {
    if insn & 0x7c00_0000 != 0x1400_0000 {
        return Err(format!("instruction {insn:#010x} is not b/bl"));
    }
    if delta % 4 != 0 {
        return Err(format!(
            "branch displacement {delta:#x} is not a multiple of 4"
        ));
    }
    if !(-BRANCH26_RANGE..BRANCH26_RANGE).contains(&delta) {
        return Err(format!(
            "branch displacement {delta:#x} is beyond the ±128 MiB range of b/bl"
        ));
    }
    Ok((insn & 0xfc00_0000) | ((delta >> 2) as u32 & 0x03ff_ffff))
}

/// `adrp` (PAGE21): page of `target` relative to the page of `pc`.
pub(super) fn patch_adrp(insn: u32, pc: u64, target: u64) -> Result<u32, String> {
    if insn & 0x9f00_0000 != 0x9000_0000 {
        return Err(format!("instruction {insn:#010x} is not adrp"));
    }
    let pages = ((target & !0xfff) as i64).wrapping_sub((pc & !0xfff) as i64) >> 12;
    if !(-(1 << 20)..(1 << 20)).contains(&pages) {
        return Err(format!(
            "page delta {pages:#x} is beyond the ±4 GiB range of adrp"
        ));
    }
    let imm = pages as u32 & 0x1f_ffff;
    Ok((insn & 0x9f00_001f) | ((imm & 3) << 29) | ((imm >> 2) << 5))
}

/// The access size (log2) of a load/store with unsigned 12-bit immediate, or
/// None for `add` (immediate) and anything else.
pub(super) fn ldst_scale(insn: u32) -> Option<u32> {
    if insn & 0x3b00_0000 != 0x3900_0000 {
        return None;
    }
    let size = insn >> 30;
    // 128-bit SIMD&FP: size 00, V=1, opc<1>=1.
    if size == 0 && insn & 0x0480_0000 == 0x0480_0000 {
        Some(4)
    } else {
        Some(size)
    }
}

/// `add Xd, Xn, #imm` (64- or 32-bit, unshifted immediate).
fn is_add_imm(insn: u32) -> bool {
    insn & 0x7fc0_0000 == 0x1100_0000
}

/// PAGEOFF12 on `add` (immediate) or a load/store (unsigned offset, scaled
/// by the access size, which must divide the offset).
pub(super) fn patch_pageoff12(insn: u32, target: u64) -> Result<u32, String> {
    let low = (target & 0xfff) as u32;
    if is_add_imm(insn) {
        return Ok((insn & 0xffc0_03ff) | (low << 10));
    }
    let Some(scale) = ldst_scale(insn) else {
        return Err(format!(
            "instruction {insn:#010x} is neither add (immediate) nor a load/store with an unsigned offset"
        ));
    };
    if !low.is_multiple_of(1 << scale) {
        return Err(format!(
            "page offset {low:#x} is not a multiple of the {}-byte access size (misaligned target)",
            1u32 << scale
        ));
    }
    Ok((insn & 0xffc0_03ff) | ((low >> scale) << 10))
}

/// GOT_LOAD_PAGEOFF12 relaxed: `ldr Xt, [Xn, #got@PAGEOFF]` becomes
/// `add Xt, Xn, #target@PAGEOFF` (ld64 does the same for defined targets).
pub(super) fn relax_ldr_to_add(insn: u32, target: u64) -> Result<u32, String> {
    if insn & 0xffc0_0000 != 0xf940_0000 {
        return Err(format!(
            "instruction {insn:#010x} is not ldr Xt, [Xn, #imm] (64-bit)"
        ));
    }
    let (rn, rt) = ((insn >> 5) & 31, insn & 31);
    Ok(0x9100_0000 | (((target & 0xfff) as u32) << 10) | (rn << 5) | rt)
}

/// Size of a plain stub (`__stubs`, macOS 11).
pub(super) const STUB_SIZE: u64 = 12;
/// Size of an auth stub (`__auth_stubs`, macOS 12+).
pub(super) const AUTH_STUB_SIZE: u64 = 16;

/// `adrp x16, slot@PAGE; ldr x16, [x16, slot@PAGEOFF]; br x16`.
pub(super) fn plain_stub(stub: u64, slot: u64) -> [u32; 3] {
    let adrp = patch_adrp(0x9000_0010, stub, slot).expect("stub and GOT within 4 GiB");
    let ldr = patch_pageoff12(0xf940_0210, slot).expect("GOT slots are 8-byte aligned");
    [adrp, ldr, 0xd61f_0200]
}

/// `adrp x17, slot@PAGE; add x17, x17, slot@PAGEOFF; ldr x16, [x17]; braa x16, x17`.
pub(super) fn auth_stub(stub: u64, slot: u64) -> [u32; 4] {
    let adrp = patch_adrp(0x9000_0011, stub, slot).expect("stub and GOT within 4 GiB");
    let add = patch_pageoff12(0x9100_0231, slot).expect("add takes any offset");
    [adrp, add, 0xf940_0230, 0xd71f_0a11]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branch26() {
        // bl #0x100 from 0x1000 to 0x1100.
        assert_eq!(patch_branch26(0x9400_0000, 0x100).unwrap(), 0x9400_0040);
        // b backwards by 4.
        assert_eq!(patch_branch26(0x1400_0000, -4).unwrap(), 0x17ff_ffff);
        assert!(patch_branch26(0x9400_0000, 1 << 27).is_err());
        assert!(patch_branch26(0x9400_0000, -(1 << 27)).is_ok());
        assert!(patch_branch26(0x9100_0000, 0).is_err());
    }

    #[test]
    fn adrp_and_pageoff() {
        // adrp x8 at 0x4000 to 0x0123_4567: 0x10120 pages.
        let i = patch_adrp(0x9000_0008, 0x4004, 0x0123_4567).unwrap();
        let imm = ((i >> 29) & 3) | (((i >> 5) & 0x7_ffff) << 2);
        assert_eq!(imm, (0x0123_4000u64 - 0x4000) as u32 >> 12);
        assert_eq!(i & 31, 8);
        // ldr x8, [x8, #off] scaled by 8; ldr w8 by 4; ldrb by 1; ldr q0 by 16.
        assert_eq!(
            patch_pageoff12(0xf940_0108, 0x2018).unwrap(),
            0xf940_0108 | (3 << 10)
        );
        assert_eq!(
            patch_pageoff12(0xb940_0108, 0x2018).unwrap(),
            0xb940_0108 | (6 << 10)
        );
        assert_eq!(
            patch_pageoff12(0x3940_0108, 0x2019).unwrap(),
            0x3940_0108 | (0x19 << 10)
        );
        assert_eq!(ldst_scale(0x3dc0_0000), Some(4));
        assert!(patch_pageoff12(0xf940_0108, 0x2014).is_err());
        assert_eq!(
            patch_pageoff12(0x9100_0108, 0x2abc).unwrap(),
            0x9100_0108 | (0xabc << 10)
        );
        assert!(patch_pageoff12(0xd503_201f, 0).is_err()); // nop
    }

    #[test]
    fn relax_and_stubs() {
        // ldr x8, [x8] → add x8, x8, #0x10
        assert_eq!(relax_ldr_to_add(0xf940_0108, 0x5010).unwrap(), 0x9100_4108);
        assert!(relax_ldr_to_add(0xb940_0108, 0).is_err());
        let s = auth_stub(0x4000, 0xc008);
        assert_eq!(s[1], 0x9100_0231 | (8 << 10));
        assert_eq!(s[2..], [0xf940_0230, 0xd71f_0a11]);
        let p = plain_stub(0x4000, 0xc008);
        assert_eq!(p[1], 0xf940_0210 | (1 << 10));
    }
}
