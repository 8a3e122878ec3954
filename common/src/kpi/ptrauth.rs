//! Marking the function-pointer slots the arm64e kernel calls, so that kextld
//! signs them (pointer authentication).
//!
//! The arm64e kernel calls a kext's callbacks with `blraa ptr, disc` (key IA,
//! a discriminator derived from the C function type). rustc emits function
//! pointers in statics as plain pointers, so every slot the kernel calls
//! through must be *marked*: [`sign_slot!`](crate::sign_slot) puts a 16-byte
//! [`AuthMark`] into the section `__DATA,__prx_auth`; kextld's arm64e backend
//! consumes the section (it is not in the linked kext) and turns the slot's
//! chained rebase into an authenticated one with that key and discriminator.
//! kextld fails the link when a marked slot is null, holds no pointer, or
//! points at anything but a function of the kext, so a marked callback can
//! never reach the kernel unsigned. `kmod_info`'s start/stop need no mark:
//! kextld knows that layout.
//!
//! Discriminators: `kextld::ptrauth::CALLBACKS` lists each callback type prx
//! hands to the kernel with its clang type encoding and value (e.g. 0xE4FE for
//! `errno_t (*)(void **, socket_t)`, `sf_attach`).
//!
//! On x86_64 the macro expands to nothing.

/// `ptrauth_key_asia`: the key the kernel authenticates callbacks with.
pub const KEY_IA: u8 = 0;

/// One record of `__DATA,__prx_auth` (the layout kextld reads).
#[repr(C)]
#[derive(Debug)]
pub struct AuthMark {
    /// Address of the slot holding the function pointer.
    pub slot: *const (),
    /// The 16-bit type discriminator.
    pub discriminator: u16,
    /// The key (0 = IA).
    pub key: u8,
    /// 1 if the slot's address is blended into the discriminator.
    pub addr_div: u8,
    /// Zero.
    pub reserved: u32,
}

const _: () = {
    assert!(core::mem::size_of::<AuthMark>() == 16);
    assert!(core::mem::offset_of!(AuthMark, discriminator) == 8);
    assert!(core::mem::offset_of!(AuthMark, key) == 10);
    assert!(core::mem::offset_of!(AuthMark, addr_div) == 11);
};

// SAFETY: an `AuthMark` is immutable link-time metadata; kextld drops the
// section, so no code ever reads the pointer.
unsafe impl Sync for AuthMark {}

impl AuthMark {
    /// A mark for a kernel callback: key IA, no address diversity.
    pub const fn kernel_callback(slot: *const (), discriminator: u16) -> AuthMark {
        AuthMark {
            slot,
            discriminator,
            key: KEY_IA,
            addr_div: 0,
            reserved: 0,
        }
    }
}

/// Marks a static slot holding a function pointer the kernel calls, with the
/// discriminator of its C function type:
///
/// ```ignore
/// common::sign_slot!(&raw const FILTER.sf_attach, 0xE4FE);
/// ```
///
/// `$slot` is a constant raw pointer to the slot (`&raw const STATIC.field`).
///
/// A third argument names the slot for tests:
/// `sign_slot!(&raw const F.ipf_input, 0x78FF, "ipf_input")` leaves the mark
/// out when the crate using the macro is compiled with
/// `--cfg prx_unmarked_slot="ipf_input"`. Only the arm64e negative control
/// (`vm/tests/emu_arm64e.rs`) builds that way: it shows what a callback slot
/// without its mark does (kextld writes a plain rebase and the kernel's
/// authenticated call faults). Release builds never set the cfg.
#[macro_export]
macro_rules! sign_slot {
    ($slot:expr, $discriminator:expr, $label:literal $(,)?) => {
        #[cfg(not(prx_unmarked_slot = $label))]
        $crate::sign_slot!($slot, $discriminator);
    };
    ($slot:expr, $discriminator:expr $(,)?) => {
        #[cfg(target_arch = "aarch64")]
        const _: () = {
            #[unsafe(link_section = "__DATA,__prx_auth")]
            #[used]
            static MARK: $crate::kpi::ptrauth::AuthMark =
                $crate::kpi::ptrauth::AuthMark::kernel_callback($slot as *const (), $discriminator);
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_layout_matches_kextld() {
        static SLOT: u64 = 0;
        let m = AuthMark::kernel_callback(&raw const SLOT as *const (), 0xE4FE);
        assert_eq!(
            (m.discriminator, m.key, m.addr_div, m.reserved),
            (0xE4FE, 0, 0, 0)
        );
    }
}
