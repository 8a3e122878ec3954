//! com.apple.kpi.libkern / .iokit / .mach pieces: logging, string and memory
//! routines, `OSMalloc`/`_MALLOC`/`IOMalloc`, locks, atomics, time and process
//! queries.

use std::ffi::{c_char, c_int, c_void};

use super::call::{c_string, put};
use crate::emu::kernel::fault::FaultPoint;
use crate::emu::kernel::mt;
use crate::emu::kernel::{self, Kind};

unsafe extern "C" {
    fn prx_emu_printf(fmt: *const c_char, ...) -> c_int;
    fn prx_emu_IOLog(fmt: *const c_char, ...);
    fn prx_emu_IOLogv(fmt: *const c_char, ap: *mut c_void);
    fn prx_emu_vprintf(fmt: *const c_char, ap: *mut c_void) -> c_int;
    fn prx_emu_snprintf(out: *mut c_char, size: usize, fmt: *const c_char, ...) -> c_int;
    fn prx_emu_vsnprintf(
        out: *mut c_char,
        size: usize,
        fmt: *const c_char,
        ap: *mut c_void,
    ) -> c_int;
}

/// Receives formatted text from the C shims (printf, IOLog).
///
/// # Safety
/// `text` must be NULL or point to `len` readable bytes (the shims pass their
/// own stack buffer).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prx_emu_log_text(text: *const c_char, len: usize, _source: c_int) {
    if text.is_null() {
        return;
    }
    // SAFETY: the shim passes its own stack buffer holding `len` formatted bytes.
    let bytes = unsafe { std::slice::from_raw_parts(text.cast::<u8>(), len) };
    kernel::log_text(&String::from_utf8_lossy(bytes));
}

// ---- memory ----

fn alloc(size: usize, via: &'static str, zero: bool) -> *mut c_void {
    if kernel::with(|k| k.faults.should_fail(FaultPoint::Alloc)) {
        kernel::with(|k| k.record(format!("{via}({size}) failed (fault plan)"), 0));
        return std::ptr::null_mut();
    }
    // SAFETY: plain C allocation of at least one byte; checked for NULL below.
    let p = unsafe {
        if zero {
            libc::calloc(1, size.max(1))
        } else {
            libc::malloc(size.max(1))
        }
    };
    if !p.is_null() {
        if !zero {
            // Poison fresh memory as a debug kernel would, so reads of
            // uninitialised memory show up as 0xdeadbeef-like values.
            // SAFETY: `p` was just allocated with `size` bytes.
            unsafe { std::ptr::write_bytes(p.cast::<u8>(), 0xA5, size) };
        }
        kernel::with(|k| k.note_alloc(p as u64, size, via));
    }
    p
}

fn free(p: *mut c_void, size: Option<usize>, via: &'static str) {
    if p.is_null() {
        return;
    }
    if kernel::with(|k| k.note_free(p as u64, size, via)) {
        // SAFETY: the ledger confirmed `p` is a live allocation made by `alloc`
        // with libc malloc/calloc; it is removed from the ledger, so freed once.
        unsafe { libc::free(p) };
    }
}

unsafe extern "C" fn os_malloc_tagalloc(name: *const c_char, _flags: u32) -> u64 {
    // SAFETY: OSMalloc_Tagalloc takes a NUL-terminated tag name.
    let name = unsafe { c_string(name) }.unwrap_or_default();
    kernel::with(|k| {
        let id = k.new_id();
        k.malloc_tags.insert(id, name);
        kernel::handle(Kind::MallocTag, id)
    })
}

extern "C" fn os_malloc_tagfree(tag: u64) {
    kernel::with(|k| {
        match kernel::unhandle(tag, Kind::MallocTag).and_then(|id| k.malloc_tags.remove(&id)) {
            Some(_) => {}
            None => k.violation(
                "malloc-tag-bad",
                format!("OSMalloc_Tagfree({tag:#x}): not a live OSMallocTag"),
            ),
        }
    })
}

fn check_tag(tag: u64, via: &str) {
    kernel::with(|k| {
        let live = kernel::unhandle(tag, Kind::MallocTag)
            .is_some_and(|id| k.malloc_tags.contains_key(&id));
        if !live {
            k.violation(
                "malloc-tag-bad",
                format!("{via}: {tag:#x} is not a live OSMallocTag"),
            );
        }
    });
}

extern "C" fn os_malloc(size: u32, tag: u64) -> *mut c_void {
    check_tag(tag, "OSMalloc");
    alloc(size as usize, "OSMalloc", false)
}

extern "C" fn os_malloc_noblock(size: u32, tag: u64) -> *mut c_void {
    check_tag(tag, "OSMalloc_noblock");
    alloc(size as usize, "OSMalloc_noblock", false)
}

unsafe extern "C" fn os_free(p: *mut c_void, size: u32, tag: u64) {
    check_tag(tag, "OSFree");
    free(p, Some(size as usize), "OSFree")
}

/// `M_ZERO` for `_MALLOC`.
const M_ZERO: c_int = 0x04;

extern "C" fn malloc_external(size: usize, _type: c_int, flags: c_int) -> *mut c_void {
    alloc(size, "_MALLOC", flags & M_ZERO != 0)
}

unsafe extern "C" fn free_external(p: *mut c_void, _type: c_int) {
    free(p, None, "_FREE")
}

extern "C" fn io_malloc(size: usize) -> *mut c_void {
    alloc(size, "IOMalloc", false)
}

extern "C" fn io_malloc_zero(size: usize) -> *mut c_void {
    alloc(size, "IOMallocZero", true)
}

unsafe extern "C" fn io_free(p: *mut c_void, size: usize) {
    free(p, Some(size), "IOFree")
}

// ---- locks ----

extern "C" fn lck_grp_attr_alloc_init() -> u64 {
    kernel::with(|k| k.new_lock(Kind::LockGroupAttr))
}
extern "C" fn lck_grp_attr_free(a: u64) {
    kernel::with(|k| k.lock_free(a, Kind::LockGroupAttr, "lck_grp_attr_free"))
}
extern "C" fn lck_nop(_a: u64) {}
unsafe extern "C" fn lck_grp_alloc_init(_name: *const c_char, _attr: u64) -> u64 {
    kernel::with(|k| k.new_lock(Kind::LockGroup))
}
extern "C" fn lck_grp_free(g: u64) {
    kernel::with(|k| k.lock_free(g, Kind::LockGroup, "lck_grp_free"))
}
extern "C" fn lck_attr_alloc_init() -> u64 {
    kernel::with(|k| k.new_lock(Kind::LockAttr))
}
extern "C" fn lck_attr_free(a: u64) {
    kernel::with(|k| k.lock_free(a, Kind::LockAttr, "lck_attr_free"))
}

fn check_grp(grp: u64, op: &str) {
    kernel::with(|k| {
        let live = kernel::unhandle(grp, Kind::LockGroup)
            .and_then(|id| k.locks.get(&id))
            .is_some_and(|l| l.state != kernel::LockState::Destroyed);
        if !live {
            k.violation(
                "lock-bad-group",
                format!("{op}: {grp:#x} is not a live lck_grp_t"),
            );
        }
    });
}

extern "C" fn lck_mtx_alloc_init(grp: u64, _attr: u64) -> u64 {
    check_grp(grp, "lck_mtx_alloc_init");
    kernel::with(|k| k.new_lock(Kind::Mutex))
}
/// A blocking lock KPI (`lck_mtx_lock`, `lck_rw_lock_*`, `lck_spin_lock`):
/// waits while another thread holds the lock, as xnu does. In the
/// multi-threaded scenarios the calling thread may be preempted before taking
/// the lock and right after (holding it); a `lock-skip` fault plan makes the
/// call return without taking it (a planted race: the matching unlock is
/// ignored too).
fn lock_blocking(h: u64, kind: Kind, exclusive: bool, op: &str) {
    if mt::skip_lock(h, op) {
        return;
    }
    let preemptible = kind != Kind::SpinLock;
    if preemptible {
        mt::point();
    }
    let mut spins = 0u32;
    while kernel::with(|k| k.lock_acquire(h, kind, exclusive, op)) == kernel::Acquire::Busy {
        mt::wait(&mut spins);
    }
    if spins > 0 {
        mt::note_contended();
    }
    if preemptible {
        mt::point();
    }
}

/// An unlock KPI: the holder may be preempted right before releasing.
fn unlock(h: u64, kind: Kind, op: &str) {
    if mt::skipped_unlock(h) {
        return;
    }
    if kind != Kind::SpinLock {
        mt::point();
    }
    kernel::with(|k| k.lock_release(h, kind, op))
}

extern "C" fn lck_mtx_lock(m: u64) {
    lock_blocking(m, Kind::Mutex, true, "lck_mtx_lock");
}
extern "C" fn lck_mtx_try_lock(m: u64) -> c_int {
    c_int::from(kernel::with(|k| {
        // xnu's try-lock of a mutex this thread holds just fails.
        !k.holds(m, Kind::Mutex)
            && k.lock_acquire(m, Kind::Mutex, true, "lck_mtx_try_lock") == kernel::Acquire::Got
    }))
}
extern "C" fn lck_mtx_unlock(m: u64) {
    unlock(m, Kind::Mutex, "lck_mtx_unlock")
}
/// How long `msleep` waits for a wake-up before it reports a lost one.
const SLEEP_LIMIT: std::time::Duration = std::time::Duration::from_secs(20);

/// `msleep(chan, mtx, pri, wmesg, ts)` (com.apple.kpi.bsd) with the caller
/// holding `mtx`: queues the thread on `chan` and drops `mtx` in one step (a
/// `wakeup` after the drop reaches it), waits to be woken, takes `mtx` again.
/// A sleep without the mutex held, with a timeout, or with PDROP (which prx
/// never asks for) is a contract violation; a sleeper nobody wakes within
/// 20 s is reported as a lost wake-up.
unsafe extern "C" fn msleep(
    chan: u64,
    mtx: u64,
    pri: c_int,
    _wmesg: *const c_char,
    ts: *mut c_void,
) -> c_int {
    const PDROP: c_int = 0x400;
    let token = kernel::with(|k| {
        if mtx == 0 || !k.holds(mtx, Kind::Mutex) {
            k.violation(
                "msleep-without-mutex",
                format!("msleep({chan:#x}, {mtx:#x}): the caller does not hold the mutex, so a wake-up can be lost"),
            );
            return None;
        }
        if !ts.is_null() || pri & PDROP != 0 {
            k.violation(
                "msleep-unsupported",
                format!("msleep({chan:#x}) with a timeout or PDROP: not emulated"),
            );
            return None;
        }
        let token = k.new_id();
        k.sleepers.push((chan, token));
        k.lock_release(mtx, Kind::Mutex, "msleep");
        Some(token)
    });
    let Some(token) = token else {
        return common::sys::EINVAL;
    };
    mt::note_sleep();
    let t0 = std::time::Instant::now();
    let mut spins = 0u32;
    while !kernel::with(|k| k.woken.remove(&token)) {
        if t0.elapsed() > SLEEP_LIMIT {
            kernel::with(|k| {
                k.sleepers.retain(|s| s.1 != token);
                k.violation(
                    "msleep-lost-wakeup",
                    format!("msleep({chan:#x}): nobody woke the thread within {SLEEP_LIMIT:?}"),
                );
            });
            break;
        }
        mt::wait(&mut spins);
    }
    lock_blocking(mtx, Kind::Mutex, true, "msleep");
    0
}
extern "C" fn wakeup(chan: u64) {
    kernel::with(|k| k.wake(chan, false));
}
extern "C" fn wakeup_one(chan: u64) {
    kernel::with(|k| k.wake(chan, true));
}
extern "C" fn lck_mtx_free(m: u64, grp: u64) {
    check_grp(grp, "lck_mtx_free");
    kernel::with(|k| k.lock_free(m, Kind::Mutex, "lck_mtx_free"))
}
extern "C" fn lck_rw_alloc_init(grp: u64, _attr: u64) -> u64 {
    check_grp(grp, "lck_rw_alloc_init");
    kernel::with(|k| k.new_lock(Kind::RwLock))
}
extern "C" fn lck_rw_lock_shared(l: u64) {
    lock_blocking(l, Kind::RwLock, false, "lck_rw_lock_shared");
}
extern "C" fn lck_rw_lock_exclusive(l: u64) {
    lock_blocking(l, Kind::RwLock, true, "lck_rw_lock_exclusive");
}
extern "C" fn lck_rw_unlock_shared(l: u64) {
    unlock(l, Kind::RwLock, "lck_rw_unlock_shared")
}
extern "C" fn lck_rw_unlock_exclusive(l: u64) {
    unlock(l, Kind::RwLock, "lck_rw_unlock_exclusive")
}
extern "C" fn lck_rw_done(l: u64) -> u32 {
    unlock(l, Kind::RwLock, "lck_rw_done");
    0
}
extern "C" fn lck_rw_free(l: u64, grp: u64) {
    check_grp(grp, "lck_rw_free");
    kernel::with(|k| k.lock_free(l, Kind::RwLock, "lck_rw_free"))
}
extern "C" fn lck_spin_alloc_init(grp: u64, _attr: u64) -> u64 {
    check_grp(grp, "lck_spin_alloc_init");
    kernel::with(|k| k.new_lock(Kind::SpinLock))
}
extern "C" fn lck_spin_lock(l: u64) {
    lock_blocking(l, Kind::SpinLock, true, "lck_spin_lock");
}
extern "C" fn lck_spin_unlock(l: u64) {
    unlock(l, Kind::SpinLock, "lck_spin_unlock")
}
extern "C" fn lck_spin_free(l: u64, grp: u64) {
    check_grp(grp, "lck_spin_free");
    kernel::with(|k| k.lock_free(l, Kind::SpinLock, "lck_spin_free"))
}

// ---- atomics (real atomic read-modify-write: callbacks may run on several threads) ----

unsafe extern "C" fn os_add_atomic(amount: i32, addr: *mut i32) -> i32 {
    // SAFETY: OSAddAtomic's contract: `addr` points to a 4-byte aligned SInt32
    // that is only accessed atomically while shared.
    let a = unsafe { std::sync::atomic::AtomicI32::from_ptr(addr) };
    a.fetch_add(amount, std::sync::atomic::Ordering::SeqCst)
}
unsafe extern "C" fn os_add_atomic64(amount: i64, addr: *mut i64) -> i64 {
    // SAFETY: OSAddAtomic64's contract: `addr` points to an 8-byte aligned SInt64.
    let a = unsafe { std::sync::atomic::AtomicI64::from_ptr(addr) };
    a.fetch_add(amount, std::sync::atomic::Ordering::SeqCst)
}
unsafe extern "C" fn os_compare_and_swap(old: u32, new: u32, addr: *mut u32) -> u8 {
    // SAFETY: OSCompareAndSwap's contract: `addr` points to an aligned UInt32.
    let a = unsafe { std::sync::atomic::AtomicU32::from_ptr(addr) };
    u8::from(
        a.compare_exchange(
            old,
            new,
            std::sync::atomic::Ordering::SeqCst,
            std::sync::atomic::Ordering::SeqCst,
        )
        .is_ok(),
    )
}
unsafe extern "C" fn os_compare_and_swap64(old: u64, new: u64, addr: *mut u64) -> u8 {
    // SAFETY: as above, for an aligned UInt64.
    let a = unsafe { std::sync::atomic::AtomicU64::from_ptr(addr) };
    u8::from(
        a.compare_exchange(
            old,
            new,
            std::sync::atomic::Ordering::SeqCst,
            std::sync::atomic::Ordering::SeqCst,
        )
        .is_ok(),
    )
}

// ---- time, process ----

#[repr(C)]
struct Timeval {
    sec: i64,
    usec: i32,
}
#[repr(C)]
struct Timespec {
    sec: i64,
    nsec: i64,
}

fn tick() -> u64 {
    // Reading the clock is a preemption point in the multi-threaded scenarios
    // (kexts read it inside their critical sections).
    mt::point();
    let (now, due) = kernel::with(|k| {
        k.clock_ns += 1_000; // time moves on by 1 µs per query: deterministic and monotonic.
        let now = k.clock_ns;
        let mut due = Vec::new();
        k.timed.retain(|(at, d)| {
            if *at <= now {
                due.push(d.clone());
                false
            } else {
                true
            }
        });
        (now, due)
    });
    // Work another CPU finished meanwhile runs now (outside the kernel borrow).
    for d in due {
        super::net::deliver(d);
    }
    now
}

unsafe extern "C" fn microuptime(tv: *mut Timeval) {
    let ns = tick();
    // SAFETY: microuptime writes a `struct timeval` (macOS: 8-byte sec, 4-byte usec).
    unsafe {
        put(
            tv,
            Timeval {
                sec: (ns / 1_000_000_000) as i64,
                usec: ((ns / 1000) % 1_000_000) as i32,
            },
        )
    }
}
unsafe extern "C" fn nanotime(ts: *mut Timespec) {
    let ns = tick();
    // SAFETY: nanotime writes a `struct timespec`.
    unsafe {
        put(
            ts,
            Timespec {
                sec: (ns / 1_000_000_000) as i64,
                nsec: (ns % 1_000_000_000) as i64,
            },
        )
    }
}
unsafe extern "C" fn clock_get_uptime(out: *mut u64) {
    let ns = tick();
    // SAFETY: clock_get_uptime writes a uint64_t (absolute time; 1 ns units here).
    unsafe { put(out, ns) }
}

/// `read_random`: the emulated kernel's generator is a deterministic
/// splitmix64 stream (runs are repeatable), not a cryptographic one.
unsafe extern "C" fn read_random(buf: *mut c_void, n: u32) {
    if buf.is_null() {
        return;
    }
    let bytes: Vec<u8> = kernel::with(|k| {
        (0..n as usize)
            .map(|_| {
                k.random_state = k.random_state.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = k.random_state;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                (z ^ (z >> 31)) as u8
            })
            .collect()
    });
    // SAFETY: read_random's contract: `buf` is valid for `n` bytes.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), buf.cast::<u8>(), bytes.len()) };
}

/// The pid the emulator reports as the current process.
pub const EMU_PID: c_int = 4242;
pub const EMU_PROC_NAME: &str = "prx-emu-client";

extern "C" fn proc_selfpid() -> c_int {
    kernel::with(|k| k.current_proc.as_ref().map(|p| p.0)).unwrap_or(EMU_PID)
}
unsafe extern "C" fn proc_name(pid: c_int, buf: *mut c_char, size: c_int) {
    if buf.is_null() || size <= 0 {
        return;
    }
    let current = kernel::with(|k| k.current_proc.clone());
    let name = match &current {
        Some((p, n)) if *p == pid => n.clone(),
        _ if pid == EMU_PID => EMU_PROC_NAME.to_string(),
        _ => String::new(),
    };
    let name = name.as_str();
    let n = name.len().min(size as usize - 1);
    // SAFETY: proc_name's contract: `buf` holds `size` bytes; we write at most size-1 plus NUL.
    unsafe {
        std::ptr::copy_nonoverlapping(name.as_ptr(), buf.cast::<u8>(), n);
        buf.add(n).write(0);
    }
}

unsafe extern "C" fn panic_(fmt: *const c_char) -> ! {
    // SAFETY: panic() takes a format string; only the format is shown.
    let msg = unsafe { c_string(fmt) }.unwrap_or_default();
    kernel::flush_log();
    kernel::with(|k| {
        k.violation(
            "kernel-panic",
            format!("the kext called panic(\"{}\")", msg.trim_end()),
        )
    });
    // A kernel panic ends the machine: end the scenario's process.
    std::process::exit(crate::emu::kernel::events::EXIT_PANIC)
}

/// `__stack_chk_guard`: the canary value `-fstack-protector` code compares against.
static STACK_CHK_GUARD: u64 = 0x00e1_f2d3_c4b5_a697;

extern "C" fn stack_chk_fail() -> ! {
    kernel::flush_log();
    kernel::with(|k| {
        k.violation(
            "stack-smashed",
            "__stack_chk_fail: the kext overwrote a stack canary (stack buffer overflow)",
        )
    });
    std::process::exit(crate::emu::kernel::events::EXIT_PANIC)
}

macro_rules! sym {
    ($name:literal, $f:expr) => {
        ($name, $f as usize as u64)
    };
}

pub fn symbols() -> Vec<(&'static str, u64)> {
    vec![
        sym!(
            "_printf",
            prx_emu_printf as unsafe extern "C" fn(*const c_char, ...) -> c_int
        ),
        sym!(
            "_IOLog",
            prx_emu_IOLog as unsafe extern "C" fn(*const c_char, ...)
        ),
        sym!(
            "_IOLogv",
            prx_emu_IOLogv as unsafe extern "C" fn(*const c_char, *mut c_void)
        ),
        sym!(
            "_vprintf",
            prx_emu_vprintf as unsafe extern "C" fn(*const c_char, *mut c_void) -> c_int
        ),
        sym!(
            "_snprintf",
            prx_emu_snprintf
                as unsafe extern "C" fn(*mut c_char, usize, *const c_char, ...) -> c_int
        ),
        sym!(
            "_vsnprintf",
            prx_emu_vsnprintf
                as unsafe extern "C" fn(*mut c_char, usize, *const c_char, *mut c_void) -> c_int
        ),
        sym!(
            "_memcpy",
            libc::memcpy as unsafe extern "C" fn(*mut c_void, *const c_void, usize) -> *mut c_void
        ),
        sym!(
            "_memmove",
            libc::memmove as unsafe extern "C" fn(*mut c_void, *const c_void, usize) -> *mut c_void
        ),
        sym!(
            "_memset",
            libc::memset as unsafe extern "C" fn(*mut c_void, c_int, usize) -> *mut c_void
        ),
        sym!(
            "_memcmp",
            libc::memcmp as unsafe extern "C" fn(*const c_void, *const c_void, usize) -> c_int
        ),
        sym!(
            "_memchr",
            libc::memchr as unsafe extern "C" fn(*const c_void, c_int, usize) -> *mut c_void
        ),
        sym!(
            "_bcopy",
            bcopy as unsafe extern "C" fn(*const c_void, *mut c_void, usize)
        ),
        sym!("_bzero", bzero as unsafe extern "C" fn(*mut c_void, usize)),
        sym!(
            "___bzero",
            bzero as unsafe extern "C" fn(*mut c_void, usize)
        ),
        sym!(
            "_strlen",
            libc::strlen as unsafe extern "C" fn(*const c_char) -> usize
        ),
        sym!(
            "_strnlen",
            libc::strnlen as unsafe extern "C" fn(*const c_char, usize) -> usize
        ),
        sym!(
            "_strcmp",
            libc::strcmp as unsafe extern "C" fn(*const c_char, *const c_char) -> c_int
        ),
        sym!(
            "_strncmp",
            libc::strncmp as unsafe extern "C" fn(*const c_char, *const c_char, usize) -> c_int
        ),
        sym!(
            "_strncpy",
            libc::strncpy as unsafe extern "C" fn(*mut c_char, *const c_char, usize) -> *mut c_char
        ),
        sym!(
            "_strlcpy",
            strlcpy as unsafe extern "C" fn(*mut c_char, *const c_char, usize) -> usize
        ),
        sym!(
            "_strchr",
            libc::strchr as unsafe extern "C" fn(*const c_char, c_int) -> *mut c_char
        ),
        sym!(
            "_OSMalloc_Tagalloc",
            os_malloc_tagalloc as unsafe extern "C" fn(*const c_char, u32) -> u64
        ),
        sym!("_OSMalloc_Tagfree", os_malloc_tagfree as extern "C" fn(u64)),
        sym!(
            "_OSMalloc",
            os_malloc as extern "C" fn(u32, u64) -> *mut c_void
        ),
        sym!(
            "_OSMalloc_noblock",
            os_malloc_noblock as extern "C" fn(u32, u64) -> *mut c_void
        ),
        sym!(
            "_OSMalloc_nowait",
            os_malloc_noblock as extern "C" fn(u32, u64) -> *mut c_void
        ),
        sym!(
            "_OSFree",
            os_free as unsafe extern "C" fn(*mut c_void, u32, u64)
        ),
        sym!(
            "__MALLOC",
            malloc_external as extern "C" fn(usize, c_int, c_int) -> *mut c_void
        ),
        sym!(
            "__FREE",
            free_external as unsafe extern "C" fn(*mut c_void, c_int)
        ),
        sym!(
            "_IOMalloc",
            io_malloc as extern "C" fn(usize) -> *mut c_void
        ),
        sym!(
            "_IOMallocZero",
            io_malloc_zero as extern "C" fn(usize) -> *mut c_void
        ),
        sym!(
            "_IOFree",
            io_free as unsafe extern "C" fn(*mut c_void, usize)
        ),
        sym!(
            "_lck_grp_attr_alloc_init",
            lck_grp_attr_alloc_init as extern "C" fn() -> u64
        ),
        sym!("_lck_grp_attr_setdefault", lck_nop as extern "C" fn(u64)),
        sym!("_lck_grp_attr_setstat", lck_nop as extern "C" fn(u64)),
        sym!(
            "_lck_grp_attr_free",
            lck_grp_attr_free as extern "C" fn(u64)
        ),
        sym!(
            "_lck_grp_alloc_init",
            lck_grp_alloc_init as unsafe extern "C" fn(*const c_char, u64) -> u64
        ),
        sym!("_lck_grp_free", lck_grp_free as extern "C" fn(u64)),
        sym!(
            "_lck_attr_alloc_init",
            lck_attr_alloc_init as extern "C" fn() -> u64
        ),
        sym!("_lck_attr_setdefault", lck_nop as extern "C" fn(u64)),
        sym!("_lck_attr_setdebug", lck_nop as extern "C" fn(u64)),
        sym!("_lck_attr_free", lck_attr_free as extern "C" fn(u64)),
        sym!(
            "_lck_mtx_alloc_init",
            lck_mtx_alloc_init as extern "C" fn(u64, u64) -> u64
        ),
        sym!("_lck_mtx_lock", lck_mtx_lock as extern "C" fn(u64)),
        sym!("_lck_mtx_lock_spin", lck_mtx_lock as extern "C" fn(u64)),
        sym!(
            "_msleep",
            msleep as unsafe extern "C" fn(u64, u64, c_int, *const c_char, *mut c_void) -> c_int
        ),
        sym!("_wakeup", wakeup as extern "C" fn(u64)),
        sym!("_wakeup_one", wakeup_one as extern "C" fn(u64)),
        sym!(
            "_lck_mtx_try_lock",
            lck_mtx_try_lock as extern "C" fn(u64) -> c_int
        ),
        sym!("_lck_mtx_unlock", lck_mtx_unlock as extern "C" fn(u64)),
        sym!("_lck_mtx_free", lck_mtx_free as extern "C" fn(u64, u64)),
        sym!(
            "_lck_rw_alloc_init",
            lck_rw_alloc_init as extern "C" fn(u64, u64) -> u64
        ),
        sym!(
            "_lck_rw_lock_shared",
            lck_rw_lock_shared as extern "C" fn(u64)
        ),
        sym!(
            "_lck_rw_lock_exclusive",
            lck_rw_lock_exclusive as extern "C" fn(u64)
        ),
        sym!(
            "_lck_rw_unlock_shared",
            lck_rw_unlock_shared as extern "C" fn(u64)
        ),
        sym!(
            "_lck_rw_unlock_exclusive",
            lck_rw_unlock_exclusive as extern "C" fn(u64)
        ),
        sym!("_lck_rw_done", lck_rw_done as extern "C" fn(u64) -> u32),
        sym!("_lck_rw_free", lck_rw_free as extern "C" fn(u64, u64)),
        sym!(
            "_lck_spin_alloc_init",
            lck_spin_alloc_init as extern "C" fn(u64, u64) -> u64
        ),
        sym!("_lck_spin_lock", lck_spin_lock as extern "C" fn(u64)),
        sym!("_lck_spin_unlock", lck_spin_unlock as extern "C" fn(u64)),
        sym!("_lck_spin_free", lck_spin_free as extern "C" fn(u64, u64)),
        sym!(
            "_OSAddAtomic",
            os_add_atomic as unsafe extern "C" fn(i32, *mut i32) -> i32
        ),
        sym!(
            "_OSAddAtomic64",
            os_add_atomic64 as unsafe extern "C" fn(i64, *mut i64) -> i64
        ),
        sym!(
            "_OSCompareAndSwap",
            os_compare_and_swap as unsafe extern "C" fn(u32, u32, *mut u32) -> u8
        ),
        sym!(
            "_OSCompareAndSwap64",
            os_compare_and_swap64 as unsafe extern "C" fn(u64, u64, *mut u64) -> u8
        ),
        sym!(
            "_OSCompareAndSwapPtr",
            os_compare_and_swap64 as unsafe extern "C" fn(u64, u64, *mut u64) -> u8
        ),
        sym!(
            "_microuptime",
            microuptime as unsafe extern "C" fn(*mut Timeval)
        ),
        sym!("_nanotime", nanotime as unsafe extern "C" fn(*mut Timespec)),
        sym!(
            "_nanouptime",
            nanotime as unsafe extern "C" fn(*mut Timespec)
        ),
        sym!(
            "_clock_get_uptime",
            clock_get_uptime as unsafe extern "C" fn(*mut u64)
        ),
        sym!(
            "_read_random",
            read_random as unsafe extern "C" fn(*mut c_void, u32)
        ),
        sym!("_proc_selfpid", proc_selfpid as extern "C" fn() -> c_int),
        sym!(
            "_proc_name",
            proc_name as unsafe extern "C" fn(c_int, *mut c_char, c_int)
        ),
        sym!("_panic", panic_ as unsafe extern "C" fn(*const c_char) -> !),
        sym!("___stack_chk_fail", stack_chk_fail as extern "C" fn() -> !),
        ("___stack_chk_guard", &raw const STACK_CHK_GUARD as u64),
    ]
}

unsafe extern "C" fn bcopy(src: *const c_void, dst: *mut c_void, n: usize) {
    // SAFETY: bcopy's contract: both ranges valid for `n` bytes; may overlap.
    unsafe { libc::memmove(dst, src, n) };
}

unsafe extern "C" fn bzero(dst: *mut c_void, n: usize) {
    // SAFETY: bzero's contract: `dst` valid for `n` bytes.
    unsafe { libc::memset(dst, 0, n) };
}

unsafe extern "C" fn strlcpy(dst: *mut c_char, src: *const c_char, size: usize) -> usize {
    // SAFETY: strlcpy's contract: `src` NUL-terminated, `dst` holds `size` bytes.
    unsafe {
        let len = libc::strlen(src);
        if size > 0 {
            let n = len.min(size - 1);
            std::ptr::copy_nonoverlapping(src, dst, n);
            dst.add(n).write(0);
        }
        len
    }
}
