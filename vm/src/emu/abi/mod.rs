//! The host side of the KPIs: `extern "C"` functions the kext's undefined
//! symbols are bound to, and the calls from the emulator into the kext's
//! callbacks.
//!
//! This is the trampoline layer: it turns the raw pointers a kext passes into
//! safe values for [`super::kernel`] and its models, and back. Every `unsafe`
//! block here says which KPI contract makes the access valid. A pointer that
//! breaks the contract (NULL where the KPI forbids it) is reported as a
//! violation when it can be detected, and otherwise faults the scenario's child
//! process, which is reported with the faulting address.

use std::ffi::{CStr, c_char};

use super::kernel::{self, Kernel};

pub mod ctl;
pub mod libkern;
pub mod mbuf;
pub mod net;

/// Host address of the implementation of kext symbol `name` (Mach-O spelling).
pub fn lookup(name: &str) -> Option<u64> {
    symbols().iter().find(|(n, _)| *n == name).map(|&(_, a)| a)
}

/// Every symbol the emulator provides, sorted by name.
pub fn symbols() -> Vec<(&'static str, u64)> {
    let mut v = Vec::new();
    v.extend(libkern::symbols());
    v.extend(mbuf::symbols());
    v.extend(net::symbols());
    v.extend(ctl::symbols());
    v.sort();
    v
}

/// Reads a NUL-terminated string the kext passed, or `None` for NULL.
///
/// # Safety
/// `p` must be NULL or point to a NUL-terminated string readable for the call.
pub(crate) unsafe fn c_string(p: *const c_char) -> Option<String> {
    if p.is_null() {
        return None;
    }
    // SAFETY: caller's contract.
    Some(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

/// Writes `v` to `*out` when `out` is not NULL.
///
/// # Safety
/// `out` must be NULL or valid for a write of `T` (the KPI's out-parameter contract).
pub(crate) unsafe fn put<T>(out: *mut T, v: T) {
    if !out.is_null() {
        // SAFETY: caller's contract; kexts' out-parameters need not be aligned.
        unsafe { out.write_unaligned(v) };
    }
}

/// Calls a kext callback after checking that it points into the kext's code;
/// returns `None` (and records a violation) when it does not. `what` names the
/// callback for reports. After it returns, the return-to-stack checks run.
pub(crate) fn invoke<R>(addr: u64, what: &str, call: impl FnOnce() -> R) -> Option<R> {
    let ok = kernel::with(|k| {
        if k.is_kext_code(super::arch::strip(addr)) {
            kernel::push_context(what);
            true
        } else {
            k.violation(
                "callback-outside-kext",
                format!("{what}: pointer {addr:#x} is not in a loaded kext's code; not called"),
            );
            false
        }
    });
    if !ok {
        return None;
    }
    super::arch::set_current_call(what);
    // The CPU may be taken away just as the callback begins (multi-threaded
    // scenarios only), so callbacks of other threads overlap it.
    super::mt::callback_begins();
    super::mt::point();
    let r = call();
    super::mt::callback_ends();
    super::arch::clear_current_call();
    libkern::flush_log();
    kernel::with(|k: &mut Kernel| {
        kernel::check_return(k, what);
        kernel::pop_context();
    });
    Some(r)
}
