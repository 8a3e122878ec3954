//! The kext's entry points: the `kext!` macro emits `_kmod_info` and the C start
//! and stop routines that call the kext's Rust `start`/`stop` functions.
//!
//! The bundle identifier and version written into `kmod_info` come from the kext
//! crate's own metadata (`PRX_BUNDLE_ID`, set by its build script from
//! `[package.metadata.kext]`, and `CARGO_PKG_VERSION`), the same values
//! `cargo xtask build` writes into the Info.plist, so the two cannot disagree.

use core::ffi::{c_char, c_void};

use crate::sys::{KERN_FAILURE, KERN_SUCCESS, KMOD_MAX_NAME, kern_return_t, kmod_info};

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
#[allow(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    reason = "evaluated at compile time (the kext! static's initializer): an out-of-bounds \
              index or overflow is a compile error there, never a kernel panic; `i` is \
              bounded by the assert above the loop"
)]
pub const fn field64(s: &str) -> [c_char; KMOD_MAX_NAME] {
    let bytes = s.as_bytes();
    let mut out: [c_char; KMOD_MAX_NAME] = [0; KMOD_MAX_NAME];
    assert!(
        bytes.len() < KMOD_MAX_NAME,
        "kmod_info name/version must be shorter than 64 bytes"
    );
    let mut i = 0;
    while i < bytes.len() {
        assert!(bytes[i] != 0, "kmod_info name/version must not contain NUL");
        // `char` is signed on both kernel targets: bytes >= 0x80 keep their bits.
        out[i] = bytes[i] as c_char;
        i += 1;
    }
    out
}

/// Runs the kext's Rust start function and maps its result to `kern_return_t`.
#[doc(hidden)]
pub fn run(f: fn() -> Result<(), KextError>) -> kern_return_t {
    match f() {
        Ok(()) => KERN_SUCCESS,
        Err(_) => KERN_FAILURE,
    }
}

/// The C signature of the routines in `kmod_info`; the arguments are unused by
/// prx kexts (the loader passes the record itself and a null pointer).
#[doc(hidden)]
pub type EntryArgs = (*mut kmod_info, *mut c_void);

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
/// `kext_metadata::KextMetadata::emit_build_env`).
#[macro_export]
macro_rules! kext {
    (start: $start:path, stop: $stop:path $(,)?) => {
        /// The kext's `kmod_info_t`, exported as `_kmod_info`.
        #[allow(non_upper_case_globals)]
        #[unsafe(no_mangle)]
        #[used]
        pub static kmod_info: $crate::sys::kmod::KmodInfoCell =
            $crate::sys::kmod::KmodInfoCell::new($crate::sys::kmod_info::for_binary(
                $crate::kpi::kmod::field64(env!("PRX_BUNDLE_ID")),
                $crate::kpi::kmod::field64(env!("CARGO_PKG_VERSION")),
                __prx_kmod_start,
                __prx_kmod_stop,
            ));

        extern "C" fn __prx_kmod_start(
            _ki: *mut $crate::sys::kmod_info,
            _data: *mut ::core::ffi::c_void,
        ) -> $crate::sys::kern_return_t {
            $crate::kpi::kmod::run($start)
        }

        extern "C" fn __prx_kmod_stop(
            _ki: *mut $crate::sys::kmod_info,
            _data: *mut ::core::ffi::c_void,
        ) -> $crate::sys::kern_return_t {
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
        let mut expected = [0u8; KMOD_MAX_NAME];
        expected
            .iter_mut()
            .zip(b"net.prx.kext")
            .for_each(|(d, s)| *d = *s);
        assert_eq!(f.map(|c| c as u8), expected);
    }

    #[test]
    fn run_maps_results() {
        assert_eq!(run(|| Ok(())), KERN_SUCCESS);
        assert_eq!(run(|| Err(KextError::Busy)), KERN_FAILURE);
    }
}
