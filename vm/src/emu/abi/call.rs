//! What every trampoline uses: reading the kext's pointers and calling into the
//! kext's callbacks.

use std::ffi::{CStr, c_char};

use crate::emu::kernel::{self, Kernel};

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
        if k.is_kext_code(crate::emu::arch::strip(addr)) {
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
    crate::emu::arch::set_current_call(what);
    // The CPU may be taken away just as the callback begins (multi-threaded
    // scenarios only), so callbacks of other threads overlap it.
    crate::emu::kernel::mt::callback_begins();
    crate::emu::kernel::mt::point();
    let r = call();
    crate::emu::kernel::mt::callback_ends();
    crate::emu::arch::clear_current_call();
    kernel::flush_log();
    kernel::with(|k: &mut Kernel| {
        kernel::check_return(k, what);
        kernel::pop_context();
    });
    Some(r)
}
