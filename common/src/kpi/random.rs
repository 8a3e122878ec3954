//! The kernel's random generator (`read_random`, com.apple.kpi.mach): never blocks.

use crate::sys;

/// Fills `buf` with random bytes.
pub fn fill(buf: &mut [u8]) {
    for chunk in buf.chunks_mut(4096) {
        let n = core::ffi::c_uint::try_from(chunk.len()).unwrap_or(0);
        // SAFETY: read_random writes exactly `n` bytes (the chunk's length) to the pointer.
        unsafe { sys::read_random(chunk.as_mut_ptr().cast(), n) };
    }
}

/// A random 64-bit value.
pub fn u64() -> u64 {
    let mut b = [0u8; 8];
    fill(&mut b);
    u64::from_ne_bytes(b)
}
