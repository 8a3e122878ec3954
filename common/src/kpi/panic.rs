//! Panics in kernel code.
//!
//! A Rust panic in a kext would be a kernel panic, so none may survive
//! optimisation. With the `kernel` feature this module installs the
//! `#[panic_handler]`, which calls [`PANIC_PATH_SYMBOL`]: a function no KPI
//! exports. If the optimiser proves every panic unreachable (the goal), the
//! handler is never referenced and vanishes with fat LTO; if any panic path
//! survives, the linked kext has an undefined reference to the symbol and
//! `kextld verify` rejects it, naming the functions that reach it. This is the
//! approach of Rust-for-Linux's `build_error`.

/// The symbol (without Mach-O's leading underscore) a surviving panic path
/// references. kextld's verifier knows it by name.
pub const PANIC_PATH_SYMBOL: &str = "prx_panic_path_survived_optimisation";

#[cfg(all(feature = "kernel", not(test)))]
mod handler {
    unsafe extern "C" {
        /// Deliberately undefined: see the module documentation.
        fn prx_panic_path_survived_optimisation() -> !;
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
        // SAFETY: never actually runs: the verifier refuses any binary that still
        // references this undefined symbol, so such a kext cannot be built.
        unsafe { prx_panic_path_survived_optimisation() }
    }
}
