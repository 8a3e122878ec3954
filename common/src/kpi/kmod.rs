//! The kext's entry points: the `kext!` macro emits `_kmod_info` and the C start
//! and stop routines that call the kext's Rust `start`/`stop` functions.
//!
//! The bundle identifier and version written into `kmod_info` come from the kext
//! crate's own metadata (`PRX_BUNDLE_ID`, set by its build script from
//! `[package.metadata.kext]`, and `CARGO_PKG_VERSION`), the same values
//! `cargo xtask build` writes into the Info.plist, so the two cannot disagree.

use core::ffi::c_void;

use crate::sys::{self, KERN_FAILURE, KERN_SUCCESS, KernReturn, KmodInfo};

/// Why a kext refused to start or to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KextError {
    /// Start failed; the kext is unloaded again.
    Failed,
    /// Stop refused: something the kernel still references has not been released
    /// (returned as `KERN_FAILURE`, which keeps the kext loaded).
    Busy,
}

/// Copies `s` into a NUL-padded `kmod_info` name/version field at compile time.
///
/// Fails compilation (const evaluation) when `s` does not fit with its NUL or
/// contains a NUL byte, so a bad bundle identifier never reaches a binary.
/// Only ever evaluated at compile time (the `kext!` static initialiser), where
/// indexing and arithmetic cannot reach the kernel: a failure is a build error.
#[allow(clippy::indexing_slicing, clippy::arithmetic_side_effects)]
pub const fn field64(s: &str) -> [u8; sys::kmod::KMOD_MAX_NAME] {
    let bytes = s.as_bytes();
    let mut out = [0u8; sys::kmod::KMOD_MAX_NAME];
    assert!(
        bytes.len() < sys::kmod::KMOD_MAX_NAME,
        "kmod_info name/version must be shorter than 64 bytes"
    );
    let mut i = 0;
    while i < bytes.len() {
        assert!(bytes[i] != 0, "kmod_info name/version must not contain NUL");
        out[i] = bytes[i];
        i += 1;
    }
    out
}

/// Runs the kext's Rust start function and maps its result to `kern_return_t`.
#[doc(hidden)]
pub fn run(f: fn() -> Result<(), KextError>) -> KernReturn {
    match f() {
        Ok(()) => KERN_SUCCESS,
        Err(_) => KERN_FAILURE,
    }
}

/// The C signature of the routines in `kmod_info`; the arguments are unused by
/// prx kexts (the loader passes the record itself and a null pointer).
#[doc(hidden)]
pub type EntryArgs = (*mut KmodInfo, *mut c_void);

/// Declares the kext: emits the exported `_kmod_info` record and the start/stop
/// routines it points to.
///
/// ```ignore
/// fn start() -> Result<(), common::kpi::KextError> { Ok(()) }
/// fn stop() -> Result<(), common::kpi::KextError> { Ok(()) }
/// common::kext!(start: start, stop: stop);
/// ```
///
/// The kext crate's build script must set `PRX_BUNDLE_ID` (see
/// `packaging::metadata::emit_build_env`).
#[macro_export]
macro_rules! kext {
    (start: $start:path, stop: $stop:path $(,)?) => {
        /// The kext's `kmod_info_t`, exported as `_kmod_info`.
        #[allow(non_upper_case_globals)]
        #[unsafe(no_mangle)]
        #[used]
        pub static kmod_info: $crate::sys::kmod::KmodInfoCell =
            $crate::sys::kmod::KmodInfoCell::new($crate::sys::KmodInfo::new(
                $crate::kpi::kmod::field64(env!("PRX_BUNDLE_ID")),
                $crate::kpi::kmod::field64(env!("CARGO_PKG_VERSION")),
                __prx_kmod_start,
                __prx_kmod_stop,
            ));

        extern "C" fn __prx_kmod_start(
            _ki: *mut $crate::sys::KmodInfo,
            _data: *mut ::core::ffi::c_void,
        ) -> $crate::sys::KernReturn {
            $crate::kpi::kmod::run($start)
        }

        extern "C" fn __prx_kmod_stop(
            _ki: *mut $crate::sys::KmodInfo,
            _data: *mut ::core::ffi::c_void,
        ) -> $crate::sys::KernReturn {
            $crate::kpi::kmod::run($stop)
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field64_pads_with_nul() {
        let f = field64("net.prx.kext");
        assert_eq!(&f[..12], b"net.prx.kext");
        assert!(f[12..].iter().all(|&b| b == 0));
    }

    #[test]
    fn run_maps_results() {
        assert_eq!(run(|| Ok(())), KERN_SUCCESS);
        assert_eq!(run(|| Err(KextError::Busy)), KERN_FAILURE);
    }
}
