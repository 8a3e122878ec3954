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

/// Writes one line `prx: <what> <name>=<value>` (statistics).
pub fn counter(what: &CStr, name: &CStr, value: u64) {
    // SAFETY: the format has two `%s` matched by NUL-terminated C strings and
    // one `%llu` matched by a u64 (`unsigned long long` on both kernels).
    unsafe {
        sys::printf(
            c"prx: %s %s=%llu\n".as_ptr(),
            what.as_ptr(),
            name.as_ptr(),
            value,
        );
    }
}
