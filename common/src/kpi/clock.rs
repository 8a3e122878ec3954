//! The uptime clock (`nanouptime`, com.apple.kpi.bsd): monotonic, never blocks.

use crate::sys;

/// Milliseconds since boot.
#[inline]
pub fn uptime_ms() -> u64 {
    let mut ts = core::mem::MaybeUninit::<sys::timespec>::uninit();
    // SAFETY: nanouptime writes one whole `struct timespec` (both fields) to
    // the pointer given, so it is initialised after the call.
    let ts = unsafe {
        sys::nanouptime(ts.as_mut_ptr());
        ts.assume_init()
    };
    // The uptime's fields are never negative; in milliseconds as u64 it
    // wraps only after 584 million years.
    let ns = ts.tv_nsec as u64;
    (ts.tv_sec as u64)
        .wrapping_mul(1000)
        .wrapping_add(ns.checked_div(1_000_000).unwrap_or(0))
}

/// Waits (spinning, for entry points that may block: start and stop) until
/// `done` holds or `limit_ms` of uptime have passed; returns `done()`'s last
/// value. For kernel work another CPU finishes shortly — a late `ipf_detach`
/// (a packet still in the filter) or `sf_unregistered` (the socket-filter
/// cleanup thread) — which start and stop must not return before.
pub fn wait_until(limit_ms: u64, mut done: impl FnMut() -> bool) -> bool {
    let deadline = uptime_ms().saturating_add(limit_ms);
    loop {
        if done() {
            return true;
        }
        if uptime_ms() >= deadline {
            return done();
        }
        core::hint::spin_loop();
    }
}
