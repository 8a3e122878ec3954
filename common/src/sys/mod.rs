//! Raw KPI declarations: C layouts and `extern "C"` functions, as xnu's headers
//! declare them. Nothing here is safe to call without reading its contract.
//!
//! Sources: xnu `osfmk/mach/kmod.h` (kmod_info_t), `osfmk/mach/kern_return.h`,
//! `libkern/libkern/libkern.h` (printf).

pub mod kmod;

pub use kmod::{KmodInfo, KmodStartFn, KmodStopFn};

use core::ffi::{c_char, c_int};

/// `kern_return_t` (osfmk/mach/kern_return.h).
pub type KernReturn = c_int;
/// `KERN_SUCCESS`.
pub const KERN_SUCCESS: KernReturn = 0;
/// `KERN_FAILURE`: what a kmod start routine returns to refuse loading.
pub const KERN_FAILURE: KernReturn = 5;

unsafe extern "C" {
    /// Kernel `printf` (com.apple.kpi.libkern): writes to the system log.
    pub fn printf(format: *const c_char, ...) -> c_int;
}
