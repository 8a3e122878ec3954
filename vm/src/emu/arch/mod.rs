//! What differs between the hosts the emulator runs on: x86_64 Linux (runs the
//! x86_64 slice natively) and aarch64 Linux under `qemu-aarch64 -cpu max` (runs
//! the arm64e slice, with pointer authentication).
//!
//! - [`chained`]: `LC_DYLD_CHAINED_FIXUPS` (pointer format 7) decoded as a pure
//!   function — safe, host-independent, unit-tested everywhere.
//! - `x86_64` / `aarch64`: the host half — signal-context decoding, and on
//!   aarch64 the PAC instructions (`pacia`/`pacib`/`pacda`/`pacdb`, `autia`,
//!   `xpaci`) and the authenticated call of kmod start/stop (`blraa`).
//!
//! Every function the rest of the emulator calls exists on both hosts with the
//! same meaning; on x86_64 the pointer-authentication ones are the identity.

pub mod chained;

#[cfg(target_arch = "aarch64")]
mod aarch64;
#[cfg(target_arch = "aarch64")]
pub use aarch64::*;

#[cfg(not(target_arch = "aarch64"))]
mod x86_64;
#[cfg(not(target_arch = "aarch64"))]
pub use x86_64::*;

use std::sync::atomic::{AtomicUsize, Ordering};

/// The discriminators xnu authenticates each kext-supplied function pointer
/// with (key IA, not address-diversified): clang's type discriminator of the
/// C function-pointer type, as `common::sign_slot!` records them and
/// `kextld::ptrauth::CALLBACKS` derives them (a test cross-checks the values).
pub mod disc {
    /// `kern_return_t (*)(kmod_info_t *, void *)`: kmod start/stop (`FiPPE`).
    pub const KMOD_START_STOP: u16 = 0xE4FE;
    /// `void (*)(sflt_handle)` (`FviE`).
    pub const SF_UNREGISTERED: u16 = 0x0A98;
    /// `errno_t (*)(void **cookie, socket_t so)` (`FiPPE`).
    pub const SF_ATTACH: u16 = 0xE4FE;
    /// `void (*)(void *cookie, socket_t so)` (`FvPPE`).
    pub const SF_DETACH: u16 = 0x73D8;
    /// `void (*)(void *, socket_t, sflt_event_t, void *)` (`FvPPiPE`).
    pub const SF_NOTIFY: u16 = 0xA0D8;
    /// sf_data_in / sf_data_out (`FiPPPPPiE`).
    pub const SF_DATA: u16 = 0x0F74;
    /// `errno_t (*)(void *, socket_t, const struct sockaddr *)` (`FiPPPE`).
    pub const SF_CONNECT_OUT: u16 = 0xBCAD;
    /// `errno_t (*)(void *cookie, mbuf_t *data, int offset, u_int8_t protocol)` (`FiPPiiE`).
    pub const IPF_INPUT: u16 = 0x78FF;
    /// `errno_t (*)(void *cookie, mbuf_t *data, ipf_pktopts_t)` (`FiPPPE`).
    pub const IPF_OUTPUT: u16 = 0xBCAD;
    /// `void (*)(void *cookie)` (`FvPE`).
    pub const IPF_DETACH: u16 = 0x2ABE;
    /// ctl_connect: `errno_t (*)(kern_ctl_ref, struct sockaddr_ctl *, void **)` (`FiPPPE`).
    pub const CTL_CONNECT: u16 = 0xBCAD;
    /// ctl_disconnect: `errno_t (*)(kern_ctl_ref, u_int32_t, void *)` (`FiPiPE`).
    pub const CTL_DISCONNECT: u16 = 0x392E;
    /// ctl_setopt (`FiPiPiPiE`).
    pub const CTL_SETOPT: u16 = 0x5070;
    /// ctl_getopt (`FiPiPiPPE`).
    pub const CTL_GETOPT: u16 = 0x821F;
}

/// The kext callback being called right now (set by `abi::invoke`), for the
/// fault handler: a PAC failure names the callback whose pointer did not verify.
static CURRENT_CALL: [AtomicUsize; 2] = [AtomicUsize::new(0), AtomicUsize::new(0)];

/// Records `what` (leaked once per distinct name) as the callback being called.
pub fn set_current_call(what: &str) {
    use std::collections::HashMap;
    use std::sync::Mutex;
    static NAMES: Mutex<Option<HashMap<String, &'static str>>> = Mutex::new(None);
    let Ok(mut guard) = NAMES.lock() else {
        return;
    };
    let names = guard.get_or_insert_with(HashMap::new);
    let name: &'static str = match names.get(what) {
        Some(n) => n,
        None => {
            let n: &'static str = Box::leak(what.to_string().into_boxed_str());
            names.insert(what.to_string(), n);
            n
        }
    };
    CURRENT_CALL[1].store(name.len(), Ordering::Relaxed);
    CURRENT_CALL[0].store(name.as_ptr() as usize, Ordering::Relaxed);
}

/// The kext code being called has returned.
pub fn clear_current_call() {
    CURRENT_CALL[0].store(0, Ordering::Relaxed);
}

/// The callback being called (async-signal-safe: two atomic loads of a leaked string).
pub fn current_call() -> &'static [u8] {
    let p = CURRENT_CALL[0].load(Ordering::Relaxed);
    let n = CURRENT_CALL[1].load(Ordering::Relaxed);
    if p == 0 {
        return b"";
    }
    // SAFETY: `p`/`n` always describe a leaked `&'static str` (stored by
    // `set_current_call`, length first, so a torn read gives a prefix at worst).
    unsafe { std::slice::from_raw_parts(p as *const u8, n) }
}

/// Whether `addr` is a pointer whose authentication failed (an `aut*`
/// instruction without FEAT_FPAC puts a 2-bit error code in bits 53–54 of an
/// otherwise canonical user address; branching to it faults), and the address
/// it would have been.
pub fn pac_failure(addr: u64) -> Option<(&'static str, u64)> {
    let top = addr >> 48;
    let key = match top {
        0x20 => "IA",
        0x40 => "IB",
        0x60 => "DA/DB",
        _ => return None,
    };
    Some((key, addr & 0x0000_FFFF_FFFF_FFFF))
}

/// `ptrauth_blend_discriminator`: the low 48 bits of the slot address with the
/// 16-bit constant in the top 16 bits.
pub const fn blend(address: u64, diversity: u16) -> u64 {
    (address & 0x0000_FFFF_FFFF_FFFF) | ((diversity as u64) << 48)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pac_error_bits_are_recognised() {
        // What `autia`/`autib` leave in a pointer whose signature did not verify
        // (qemu-aarch64 -cpu max, measured): error code in bits 53–54.
        assert_eq!(
            pac_failure(0x0020_0055_0000_07d4),
            Some(("IA", 0x55_0000_07d4))
        );
        assert_eq!(
            pac_failure(0x0040_0055_0000_07d4),
            Some(("IB", 0x55_0000_07d4))
        );
        assert_eq!(pac_failure(0x55_0000_07d4), None);
        assert_eq!(pac_failure(0xE000_0000_0000_0010), None, "KPI handles");
        assert_eq!(blend(0xFFFF_7F00_0000_1018, 0xE4FE), 0xE4FE_7F00_0000_1018);
    }
}
