//! Logging through the kernel's `printf` (com.apple.kpi.libkern).

use core::ffi::CStr;

use crate::sys;

/// Writes one line to the kernel log: `prx: <message>`.
pub fn line(message: &CStr) {
    // SAFETY: the format is a NUL-terminated literal with one `%s`, matched by one
    // NUL-terminated C string argument; kernel printf does not retain either.
    unsafe {
        sys::printf(c"prx: %s\n".as_ptr(), message.as_ptr());
    }
}
