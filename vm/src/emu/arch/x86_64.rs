//! x86_64 host: no pointer authentication; the signal context's rip/rsp.

/// The code address `ptr` designates (x86_64: `ptr` itself).
pub fn strip(ptr: u64) -> u64 {
    ptr
}

/// A kext function pointer the kernel calls with discriminator `_disc`
/// (x86_64: unsigned, called as is).
pub fn auth_fn(ptr: u64, _disc: u16) -> u64 {
    ptr
}

/// Calls kmod start/stop, `kern_return_t (*)(kmod_info_t *, void *)`.
///
/// # Safety
/// `f` must be the kext's relocated entry point of that C signature.
pub unsafe fn call_kmod_entry(f: u64, kmod_info: u64) -> i32 {
    // SAFETY: per the caller's contract; the SysV ABI matches macOS x86_64 here.
    unsafe {
        let f: extern "C" fn(*mut std::ffi::c_void, *mut std::ffi::c_void) -> i32 =
            std::mem::transmute(f as usize);
        f(kmod_info as *mut _, std::ptr::null_mut())
    }
}

/// `(pc, sp, return address)` from a signal's `ucontext_t`: rip, rsp and the
/// word at rsp (read only when `stack` holds it).
///
/// # Safety
/// `uc` must be the context the kernel passed to an SA_SIGINFO handler.
pub unsafe fn fault_regs(uc: *const libc::ucontext_t, stack: (u64, u64)) -> (u64, u64) {
    // SAFETY: per the caller's contract; the stack word is read only inside the
    // recorded (mapped) main-thread stack.
    unsafe {
        let rip = (*uc).uc_mcontext.gregs[libc::REG_RIP as usize] as u64;
        let rsp = (*uc).uc_mcontext.gregs[libc::REG_RSP as usize] as u64;
        let ret = if rsp >= stack.0 && rsp + 8 <= stack.1 && rsp.is_multiple_of(8) {
            (rsp as *const u64).read()
        } else {
            0
        };
        (rip, ret)
    }
}

/// Signing a chained fixup needs the aarch64 PAC instructions.
pub fn sign(_ptr: u64, _key: u8, _disc: u64) -> Option<u64> {
    None
}
