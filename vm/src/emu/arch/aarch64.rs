//! aarch64 host (qemu-aarch64 -cpu max): pointer authentication with the
//! process's keys, which the kext's own `braa`/`blraa`/`autia` use too, and the
//! signal context's pc/lr.

use std::arch::asm;

/// The code address `ptr` designates: its PAC bits removed (`xpaci`).
pub fn strip(ptr: u64) -> u64 {
    let mut p = ptr;
    // SAFETY: `xpaci` only rewrites the register's top bits; no memory access.
    unsafe {
        asm!(".arch_extension pauth", "xpaci {p}", p = inout(reg) p, options(pure, nomem, nostack));
    }
    p
}

/// Signs `ptr` with key `key` (0 IA, 1 IB, 2 DA, 3 DB) and discriminator `disc`
/// (`pacia`/`pacib`/`pacda`/`pacdb`), as the kernel-collection builder does.
pub fn sign(ptr: u64, key: u8, disc: u64) -> Option<u64> {
    let mut p = ptr;
    // SAFETY: the PAC instructions only compute on registers.
    unsafe {
        match key {
            0 => {
                asm!(".arch_extension pauth", "pacia {p}, {d}", p = inout(reg) p, d = in(reg) disc, options(pure, nomem, nostack))
            }
            1 => {
                asm!(".arch_extension pauth", "pacib {p}, {d}", p = inout(reg) p, d = in(reg) disc, options(pure, nomem, nostack))
            }
            2 => {
                asm!(".arch_extension pauth", "pacda {p}, {d}", p = inout(reg) p, d = in(reg) disc, options(pure, nomem, nostack))
            }
            3 => {
                asm!(".arch_extension pauth", "pacdb {p}, {d}", p = inout(reg) p, d = in(reg) disc, options(pure, nomem, nostack))
            }
            _ => return None,
        }
    }
    Some(p)
}

/// Authenticates a kext function pointer the kernel calls with `disc` (key IA,
/// `autia`): the plain address if the signature verifies, else an address with
/// the PAC error bits set, which faults when branched to (as in xnu, where the
/// call is `blraa`).
pub fn auth_fn(ptr: u64, disc: u16) -> u64 {
    let mut p = ptr;
    // SAFETY: `autia` only computes on registers.
    unsafe {
        asm!(".arch_extension pauth", "autia {p}, {d}", p = inout(reg) p, d = in(reg) u64::from(disc), options(pure, nomem, nostack));
    }
    p
}

/// Calls kmod start/stop as xnu does: `blraa` with the discriminator of
/// `kern_return_t (*)(kmod_info_t *, void *)`, so an unsigned or wrongly signed
/// entry point faults.
///
/// # Safety
/// `f` must be the kext's relocated, signed entry point of that C signature.
pub unsafe fn call_kmod_entry(f: u64, kmod_info: u64) -> i32 {
    let ret: u64;
    // SAFETY: per the caller's contract; AAPCS64 (Darwin and Linux agree for two
    // pointer arguments and an int result); every caller-saved register is
    // declared clobbered.
    unsafe {
        asm!(
            ".arch_extension pauth",
            "blraa {f}, {d}",
            f = in(reg) f,
            d = in(reg) u64::from(super::disc::KMOD_START_STOP),
            inout("x0") kmod_info => ret,
            inout("x1") 0u64 => _,
            clobber_abi("C"),
        );
    }
    ret as u32 as i32
}

/// `(pc, return address)` from a signal's `ucontext_t`: pc and the link register.
///
/// # Safety
/// `uc` must be the context the kernel passed to an SA_SIGINFO handler.
pub unsafe fn fault_regs(uc: *const libc::ucontext_t, _stack: (u64, u64)) -> (u64, u64) {
    // SAFETY: per the caller's contract.
    unsafe { ((*uc).uc_mcontext.pc, (*uc).uc_mcontext.regs[30]) }
}
