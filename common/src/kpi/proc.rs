//! The current process (com.apple.kpi.bsd `proc_selfpid`, `proc_name`).

use crate::net::rules::{MAX_NAME, ProcName};
use crate::sys;

/// The current process's pid.
pub fn self_pid() -> i32 {
    // SAFETY: no arguments; always valid in a thread context.
    unsafe { sys::proc_selfpid() }
}

/// The name of process `pid` (empty if unknown), truncated to [`MAX_NAME`] bytes.
pub fn name(pid: i32) -> ProcName {
    let mut buf = [0u8; MAX_NAME + 1];
    // SAFETY: proc_name writes at most `size` bytes, NUL-terminated, into `buf`.
    unsafe { sys::proc_name(pid, buf.as_mut_ptr().cast(), (MAX_NAME + 1) as i32) };
    ProcName::new(&buf)
}
