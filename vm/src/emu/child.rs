//! The scenario process: runs one scenario in its own process, streaming events
//! on stdout, so that a kext that crashes or hangs ends only that scenario.
//!
//! A fatal signal (a fault in kext code, a jump to a bad address, an illegal
//! instruction) is caught on an alternate stack; the handler writes one `fault`
//! event with the signal, the faulting address, the instruction pointer, the
//! return address (x86_64: the word at the stack pointer, after a bad `call`;
//! aarch64: the link register) and the kext callback being called, using only
//! async-signal-safe `write(2)`, then exits. The parent maps the addresses back to
//! kext symbols.

use std::sync::atomic::{AtomicU64, Ordering};

pub use super::kernel::events::{EXIT_DONE, EXIT_FAULT, EXIT_PANIC, EXIT_SETUP};

static STACK_LO: AtomicU64 = AtomicU64::new(0);
static STACK_HI: AtomicU64 = AtomicU64::new(0);

/// Writes `v` in decimal into `buf` at `*at`.
fn put_dec(buf: &mut [u8], at: &mut usize, mut v: u64) {
    let mut tmp = [0u8; 20];
    let mut n = 0;
    loop {
        tmp[n] = b'0' + (v % 10) as u8;
        n += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    while n > 0 {
        n -= 1;
        if *at < buf.len() {
            buf[*at] = tmp[n];
            *at += 1;
        }
    }
}

fn put_str(buf: &mut [u8], at: &mut usize, s: &[u8]) {
    for &b in s {
        if *at < buf.len() {
            buf[*at] = b;
            *at += 1;
        }
    }
}

extern "C" fn on_fatal_signal(
    sig: libc::c_int,
    info: *mut libc::siginfo_t,
    ctx: *mut libc::c_void,
) {
    // SAFETY: the kernel passes a valid siginfo_t and ucontext_t to an SA_SIGINFO
    // handler. Only async-signal-safe calls follow (write, _exit); the word at the
    // stack pointer is read only when the pointer lies inside the main thread's
    // stack, recorded at startup, which is mapped.
    unsafe {
        let addr = (*info).si_addr() as u64;
        let uc = ctx.cast::<libc::ucontext_t>();
        let stack = (
            STACK_LO.load(Ordering::Relaxed),
            STACK_HI.load(Ordering::Relaxed),
        );
        let (rip, ret) = super::arch::fault_regs(uc, stack);
        let mut buf = [0u8; 320];
        let mut at = 0;
        put_str(&mut buf, &mut at, b"{\"ev\":\"fault\",\"signal\":");
        put_dec(&mut buf, &mut at, sig as u64);
        put_str(&mut buf, &mut at, b",\"addr\":");
        put_dec(&mut buf, &mut at, addr);
        put_str(&mut buf, &mut at, b",\"rip\":");
        put_dec(&mut buf, &mut at, rip);
        put_str(&mut buf, &mut at, b",\"ret\":");
        put_dec(&mut buf, &mut at, ret);
        put_str(&mut buf, &mut at, b",\"call\":\"");
        for &b in super::arch::current_call().iter().take(96) {
            let b = if b == b'"' || b == b'\\' || b < 0x20 {
                b'_'
            } else {
                b
            };
            put_str(&mut buf, &mut at, &[b]);
        }
        put_str(&mut buf, &mut at, b"\"}\n");
        libc::write(1, buf.as_ptr().cast(), at);
        libc::_exit(EXIT_FAULT);
    }
}

/// Installs the fatal-signal handler on an alternate stack and records the
/// current thread's stack bounds. Call once, early, in the child.
pub fn install_fault_handler() {
    const ALT: usize = 64 * 1024;
    // SAFETY: plain libc calls with valid arguments. The alternate stack is leaked
    // on purpose (it must live as long as the process). pthread_getattr_np on the
    // current thread fills `attr`, which is destroyed after use.
    unsafe {
        let alt = libc::mmap(
            std::ptr::null_mut(),
            ALT,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if alt != libc::MAP_FAILED {
            let ss = libc::stack_t {
                ss_sp: alt,
                ss_flags: 0,
                ss_size: ALT,
            };
            libc::sigaltstack(&ss, std::ptr::null_mut());
        }
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) == 0 {
            let mut addr: *mut libc::c_void = std::ptr::null_mut();
            let mut size: libc::size_t = 0;
            if libc::pthread_attr_getstack(&attr, &mut addr, &mut size) == 0 {
                STACK_LO.store(addr as u64, Ordering::Relaxed);
                STACK_HI.store(addr as u64 + size as u64, Ordering::Relaxed);
            }
            libc::pthread_attr_destroy(&mut attr);
        }
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_fatal_signal as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        libc::sigemptyset(&mut sa.sa_mask);
        for sig in [
            libc::SIGSEGV,
            libc::SIGBUS,
            libc::SIGILL,
            libc::SIGFPE,
            libc::SIGTRAP,
        ] {
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// Sends the event stream to this process's stdout.
pub fn stream_events_to_stdout() {
    use std::os::fd::FromRawFd;
    // SAFETY: fd 1 is open in a child started by the runner (a pipe); `dup` gives
    // this File its own descriptor to own and close.
    let fd = unsafe { libc::dup(1) };
    if fd >= 0 {
        // SAFETY: `fd` is a fresh descriptor owned by nothing else.
        super::kernel::events::set_sink(unsafe { std::fs::File::from_raw_fd(fd) });
    }
}
