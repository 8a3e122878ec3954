//! IP filters (`ipf_addv4`/`ipf_addv6`, com.apple.kpi.bsd,
//! bsd/netinet/kpi_ipfilter.h) in the Rust-for-Linux VTable style: a kext
//! implements [`IpFilter`]; a [`Registration`] `static` holds the C
//! `struct ipf_filter` built as a constant from the trait (its callback slots
//! point at generic `extern "C"` trampolines, marked for arm64e signing by
//! [`ip_filter!`](crate::ip_filter)), the handle, and the filter itself.
//!
//! Contracts kept here, not by each kext:
//! - `ipf_inject_output`/`ipf_inject_input` always consume the chain
//!   ([`Output::inject`] takes the [`Packet`] and returns [`Taken`]); the
//!   trampoline then returns `EJUSTRETURN` whatever the KPI returned.
//! - A dropped packet is freed by the trampoline, which returns `EJUSTRETURN`.
//! - `ipf_remove` may defer `ipf_detach`: [`Registration::is_detached`] is true
//!   only once `ipf_detach` ran, so a kext's stop returns busy until then.
//! - Callbacks never unwind (`panic=abort`, and no panic path survives the
//!   build: see [`crate::kpi::panic`]).
//!
//! [`TryLock`] is the non-blocking lock for state shared by callbacks on
//! several CPUs: `ipf_output` must never block, so a callback that cannot take
//! it after a short bounded spin gives up (and drops the packet).

use core::cell::UnsafeCell;
use core::ffi::{CStr, c_int, c_void};
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU8, AtomicU32, Ordering};

use super::mbuf::{Errno, Packet, Taken};
use crate::sys;

/// What a callback does with the packet it was lent.
#[derive(Debug)]
pub enum Verdict<'a> {
    /// Give it back to the stack (possibly modified in place).
    Pass(Packet<'a>),
    /// Drop it: the trampoline frees it and returns `EJUSTRETURN`.
    Drop(Packet<'a>),
    /// The filter consumed it (re-injected or freed).
    Taken(Taken),
}

/// The address family a registration filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `ipf_addv4`.
    V4,
    /// `ipf_addv6`.
    V6,
}

impl Family {
    /// `AF_INET` or `AF_INET6`.
    pub fn af(self) -> i32 {
        match self {
            Family::V4 => sys::AF_INET,
            Family::V6 => sys::AF_INET6,
        }
    }
}

/// The re-injection context of an `ipf_output` call.
#[derive(Debug, Clone, Copy)]
pub struct Output<'a> {
    filter_ref: sys::ipfilter_t,
    options: sys::ipf_pktopts_t,
    _call: core::marker::PhantomData<&'a ()>,
}

impl Output<'_> {
    /// Re-injects `pkt` on the output path after this filter
    /// (`ipf_inject_output`, with the options the packet came with). The chain
    /// is consumed whatever the result.
    pub fn inject(self, pkt: Packet<'_>) -> (Taken, Result<(), Errno>) {
        let m = pkt.into_raw();
        // SAFETY: `m` is a chain we own (lent to this callback and given up by
        // `into_raw`); `filter_ref` is this filter's live handle and `options`
        // the pointer the kernel passed to this very ipf_output call.
        let r = unsafe { sys::ipf_inject_output(m, self.filter_ref, self.options) };
        (Taken::new(), if r == 0 { Ok(()) } else { Err(Errno(r)) })
    }
}

/// The re-injection context of an `ipf_input` call.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    filter_ref: sys::ipfilter_t,
    _call: core::marker::PhantomData<&'a ()>,
}

impl Input<'_> {
    /// Re-injects `pkt` on the input path after this filter (`ipf_inject_input`).
    /// The chain is consumed whatever the result.
    pub fn inject(self, pkt: Packet<'_>) -> (Taken, Result<(), Errno>) {
        let m = pkt.into_raw();
        // SAFETY: as for Output::inject.
        let r = unsafe { sys::ipf_inject_input(m, self.filter_ref) };
        (Taken::new(), if r == 0 { Ok(()) } else { Err(Errno(r)) })
    }
}

/// An IP filter's callbacks.
pub trait IpFilter: Sync + Sized + 'static {
    /// The filter's name (`ipf_filter.name`).
    const NAME: &'static CStr;
    /// A packet on its way out (`ipf_output`). Must not block.
    fn output<'a>(&self, pkt: Packet<'a>, out: Output<'a>) -> Verdict<'a>;
    /// A packet coming in (`ipf_input`): `offset` of the transport header,
    /// `protocol` the upper-layer protocol.
    fn input<'a>(
        &self,
        pkt: Packet<'a>,
        offset: usize,
        protocol: u8,
        inj: Input<'a>,
    ) -> Verdict<'a>;
    /// The kernel detached the filter (after `ipf_remove`, possibly later).
    fn detached(&self) {}
}

const IDLE: u8 = 0;
const ATTACHED: u8 = 1;
const REMOVING: u8 = 2;

/// A filter registration: the C struct handed to `ipf_addv4`/`ipf_addv6`,
/// the handle and the filter. Declare it with [`ip_filter!`](crate::ip_filter).
pub struct Registration<T: IpFilter> {
    #[doc(hidden)]
    pub c: sys::ipf_filter,
    handle: AtomicPtr<sys::opaque_ipfilter>,
    state: AtomicU8,
    detached: AtomicBool,
    filter: T,
}

// SAFETY: `c` holds raw pointers (cookie to this static, name to a 'static C
// string, callbacks) that are never written after const initialisation; the
// rest is atomics and `T: Sync`.
unsafe impl<T: IpFilter> Sync for Registration<T> {}

impl<T: IpFilter> core::fmt::Debug for Registration<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Registration")
            .field("state", &self.state.load(Ordering::Relaxed))
            .finish()
    }
}

impl<T: IpFilter> Registration<T> {
    /// A registration whose cookie is `this` (the address of the static being
    /// initialised: use [`ip_filter!`](crate::ip_filter)).
    pub const fn new(filter: T, this: *const Self) -> Self {
        Registration {
            c: sys::ipf_filter {
                cookie: this as *mut c_void,
                name: T::NAME.as_ptr(),
                ipf_input: Some(input_trampoline::<T>),
                ipf_output: Some(output_trampoline::<T>),
                ipf_detach: Some(detach_trampoline::<T>),
            },
            handle: AtomicPtr::new(core::ptr::null_mut()),
            state: AtomicU8::new(IDLE),
            detached: AtomicBool::new(false),
            filter,
        }
    }

    /// The filter.
    pub fn filter(&self) -> &T {
        &self.filter
    }

    /// Attaches the filter (`ipf_addv4` or `ipf_addv6`).
    pub fn attach(&'static self, family: Family) -> Result<(), Errno> {
        if self
            .state
            .compare_exchange(IDLE, ATTACHED, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(Errno(sys::EBUSY));
        }
        self.detached.store(false, Ordering::Release);
        let mut handle: sys::ipfilter_t = core::ptr::null_mut();
        // SAFETY: `c` is a valid ipf_filter in a static (the kernel copies it);
        // `handle` is a valid out-pointer. The callbacks stay valid until
        // ipf_detach ran, which stop waits for (`is_detached`).
        let r = unsafe {
            match family {
                Family::V4 => sys::ipf_addv4(&self.c, &mut handle),
                Family::V6 => sys::ipf_addv6(&self.c, &mut handle),
            }
        };
        if r != 0 || handle.is_null() {
            self.state.store(IDLE, Ordering::Release);
            return Err(Errno(if r != 0 { r } else { sys::EINVAL }));
        }
        self.handle.store(handle, Ordering::Release);
        Ok(())
    }

    /// Removes the filter if it is attached (`ipf_remove`); `ipf_detach` may
    /// follow later.
    pub fn remove(&self) {
        if self
            .state
            .compare_exchange(ATTACHED, REMOVING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            let h = self.handle.load(Ordering::Acquire);
            // SAFETY: `h` is the handle ipf_add returned; removed once (state).
            let r = unsafe { sys::ipf_remove(h) };
            if r != 0 {
                // The kernel does not know the filter: no ipf_detach will come.
                self.detached.store(true, Ordering::Release);
            }
        }
    }

    /// True when the kernel no longer references the filter: never attached,
    /// or `ipf_detach` ran.
    pub fn is_detached(&self) -> bool {
        self.state.load(Ordering::Acquire) == IDLE || self.detached.load(Ordering::Acquire)
    }
}

fn verdict_to_errno(v: Verdict<'_>) -> sys::errno_t {
    match v {
        Verdict::Pass(_) => 0,
        Verdict::Drop(p) => {
            let _taken = p.free();
            sys::EJUSTRETURN
        }
        Verdict::Taken(_) => sys::EJUSTRETURN,
    }
}

unsafe extern "C" fn output_trampoline<T: IpFilter>(
    cookie: *mut c_void,
    data: *mut sys::mbuf_t,
    options: sys::ipf_pktopts_t,
) -> sys::errno_t {
    // SAFETY: the cookie is the `&'static Registration<T>` that registered this
    // trampoline (Registration::new).
    let reg = unsafe { &*(cookie as *const Registration<T>) };
    // SAFETY: `data` is the kernel's mbuf_t * for this call.
    let Some(pkt) = (unsafe { Packet::from_slot(data) }) else {
        return 0;
    };
    let out = Output {
        filter_ref: reg.handle.load(Ordering::Acquire),
        options,
        _call: core::marker::PhantomData,
    };
    verdict_to_errno(reg.filter.output(pkt, out))
}

unsafe extern "C" fn input_trampoline<T: IpFilter>(
    cookie: *mut c_void,
    data: *mut sys::mbuf_t,
    offset: c_int,
    protocol: u8,
) -> sys::errno_t {
    // SAFETY: as in output_trampoline.
    let reg = unsafe { &*(cookie as *const Registration<T>) };
    // SAFETY: as in output_trampoline.
    let Some(pkt) = (unsafe { Packet::from_slot(data) }) else {
        return 0;
    };
    let inj = Input {
        filter_ref: reg.handle.load(Ordering::Acquire),
        _call: core::marker::PhantomData,
    };
    let offset = usize::try_from(offset).unwrap_or(0);
    verdict_to_errno(reg.filter.input(pkt, offset, protocol, inj))
}

unsafe extern "C" fn detach_trampoline<T: IpFilter>(cookie: *mut c_void) {
    // SAFETY: as in output_trampoline.
    let reg = unsafe { &*(cookie as *const Registration<T>) };
    reg.filter.detached();
    reg.detached.store(true, Ordering::Release);
}

/// Declares a `static` [`Registration`] and marks its callback slots for
/// arm64e signing (discriminators from `kextld::ptrauth::CALLBACKS`:
/// `ipf_input` 0x78FF, `ipf_output` 0xBCAD, `ipf_detach` 0x2ABE).
///
/// ```ignore
/// common::ip_filter!(static V4: Registration<MyFilter> = MyFilter::new());
/// ```
#[macro_export]
macro_rules! ip_filter {
    (static $name:ident : Registration<$t:ty> = $init:expr;) => {
        static $name: $crate::kpi::ipf::Registration<$t> =
            $crate::kpi::ipf::Registration::new($init, &raw const $name);
        $crate::sign_slot!(&raw const $name.c.ipf_input, 0x78FF);
        $crate::sign_slot!(&raw const $name.c.ipf_output, 0xBCAD);
        $crate::sign_slot!(&raw const $name.c.ipf_detach, 0x2ABE);
    };
}

/// A non-blocking lock: [`TryLock::try_lock`] spins at most a bounded number of
/// times and then gives up.
pub struct TryLock<T> {
    locked: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: access to `value` is serialised by `locked` (acquire on lock,
// release on unlock), so sharing the lock only shares `T` between threads one
// at a time: `T: Send` is enough.
unsafe impl<T: Send> Sync for TryLock<T> {}

impl<T> TryLock<T> {
    /// An unlocked lock holding `value`.
    pub const fn new(value: T) -> Self {
        TryLock {
            locked: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    /// Takes the lock, spinning at most `spins` times; `None` if still held.
    pub fn try_lock(&self, spins: u32) -> Option<TryLockGuard<'_, T>> {
        let mut n = 0u32;
        loop {
            if self
                .locked
                .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                return Some(TryLockGuard { lock: self });
            }
            if n >= spins {
                return None;
            }
            n = n.wrapping_add(1);
            core::hint::spin_loop();
        }
    }
}

/// Holds a [`TryLock`]; unlocks on drop.
pub struct TryLockGuard<'a, T> {
    lock: &'a TryLock<T>,
}

impl<T> Deref for TryLockGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard exists only while `locked` is held by it.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> DerefMut for TryLockGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as above, and `&mut self` makes the access unique.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for TryLockGuard<'_, T> {
    fn drop(&mut self) {
        self.locked_release();
    }
}

impl<T> TryLockGuard<'_, T> {
    fn locked_release(&self) {
        self.lock.locked.store(false, Ordering::Release);
    }
}

/// A non-blocking reader-writer lock for state that IP-filter callbacks read
/// and the control (user context) replaces: readers never wait for each
/// other; a writer announces itself (new readers then hold back), waits for
/// the readers inside to leave and holds the lock only to swap a value.
/// Both sides spin a bounded number of times and then give up: a callback
/// drops its packet (counted), the control returns `EBUSY`.
pub struct TryRwLock<T> {
    /// Bit 31: a writer holds or waits for the lock; bits 0..31: readers inside.
    state: AtomicU32,
    value: UnsafeCell<T>,
}

const WRITER: u32 = 1 << 31;

// SAFETY: readers get `&T` concurrently (T: Sync), the writer gets `&mut T`
// alone and may move values in and out (T: Send); `state` serialises them
// (acquire on entry, release on exit).
unsafe impl<T: Send + Sync> Sync for TryRwLock<T> {}

impl<T> TryRwLock<T> {
    /// An unlocked lock holding `value`.
    pub const fn new(value: T) -> Self {
        TryRwLock {
            state: AtomicU32::new(0),
            value: UnsafeCell::new(value),
        }
    }

    /// Shared access, spinning at most `spins` times while a writer is there.
    pub fn try_read(&self, spins: u32) -> Option<TryReadGuard<'_, T>> {
        let mut n = 0u32;
        loop {
            let s = self.state.load(Ordering::Relaxed);
            if s & WRITER == 0
                && s < WRITER.wrapping_sub(1)
                && self
                    .state
                    .compare_exchange_weak(
                        s,
                        s.wrapping_add(1),
                        Ordering::Acquire,
                        Ordering::Relaxed,
                    )
                    .is_ok()
            {
                return Some(TryReadGuard { lock: self });
            }
            if n >= spins {
                return None;
            }
            n = n.wrapping_add(1);
            core::hint::spin_loop();
        }
    }

    /// Exclusive access: takes the writer bit (spinning while another writer
    /// has it), then waits for the readers inside to leave; gives up (and
    /// lets readers in again) after `spins` rounds.
    pub fn try_write(&self, spins: u32) -> Option<TryWriteGuard<'_, T>> {
        let mut n = 0u32;
        loop {
            let s = self.state.load(Ordering::Relaxed);
            if s & WRITER == 0
                && self
                    .state
                    .compare_exchange_weak(s, s | WRITER, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                break;
            }
            if n >= spins {
                return None;
            }
            n = n.wrapping_add(1);
            core::hint::spin_loop();
        }
        loop {
            if self.state.load(Ordering::Acquire) == WRITER {
                return Some(TryWriteGuard { lock: self });
            }
            if n >= spins {
                self.state.fetch_and(!WRITER, Ordering::Release);
                return None;
            }
            n = n.wrapping_add(1);
            core::hint::spin_loop();
        }
    }
}

/// Shared access to a [`TryRwLock`]'s value.
pub struct TryReadGuard<'a, T> {
    lock: &'a TryRwLock<T>,
}

impl<T> Deref for TryReadGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: counted as a reader; no writer guard exists while readers are inside.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> Drop for TryReadGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.state.fetch_sub(1, Ordering::Release);
    }
}

/// Exclusive access to a [`TryRwLock`]'s value.
pub struct TryWriteGuard<'a, T> {
    lock: &'a TryRwLock<T>,
}

impl<T> Deref for TryWriteGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the writer bit is held and no reader is inside.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> DerefMut for TryWriteGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as above, and `&mut self` makes the access unique.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for TryWriteGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.state.fetch_and(!WRITER, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trylock_excludes_and_gives_up() {
        let l = TryLock::new(5u32);
        let g = l.try_lock(0);
        assert!(g.is_some());
        if let Some(mut g) = g {
            *g = 6;
            assert!(l.try_lock(100).is_none(), "held: a bounded spin gives up");
        }
        assert_eq!(l.try_lock(0).map(|g| *g), Some(6));
    }

    #[test]
    fn trylock_serialises_threads_and_never_blocks_forever() {
        // Four threads update one counter through the lock; every successful
        // lock sees a consistent value, failed attempts (bounded spins) give up.
        static L: TryLock<(u64, u64)> = TryLock::new((0, 0));
        let done: u64 = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        let mut ok = 0u64;
                        for _ in 0..20_000 {
                            if let Some(mut g) = L.try_lock(16) {
                                assert_eq!(g.0, g.1, "a guard saw a half-done update");
                                g.0 = g.0.wrapping_add(1);
                                g.1 = g.1.wrapping_add(1);
                                ok = ok.wrapping_add(1);
                            }
                        }
                        ok
                    })
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().unwrap_or(0))
                .fold(0, u64::wrapping_add)
        });
        assert_eq!(L.try_lock(0).map(|g| *g), Some((done, done)));
    }

    #[test]
    fn try_rw_lock_readers_share_writers_exclude() {
        let l = TryRwLock::new(1u32);
        let r1 = l.try_read(0);
        let r2 = l.try_read(0);
        assert!(
            r1.is_some() && r2.is_some(),
            "readers do not exclude each other"
        );
        assert!(
            l.try_write(100).is_none(),
            "readers inside: the writer gives up"
        );
        assert!(
            l.try_read(0).is_some(),
            "a writer that gave up lets readers in again"
        );
        drop((r1, r2));
        let w = l.try_write(0);
        assert!(w.is_some());
        assert!(
            l.try_read(100).is_none(),
            "a writer inside keeps readers out"
        );
        if let Some(mut w) = w {
            *w = 2;
        }
        assert_eq!(l.try_read(0).map(|r| *r), Some(2));
    }

    #[test]
    fn try_rw_lock_writers_never_tear_what_readers_see() {
        static L: TryRwLock<(u64, u64)> = TryRwLock::new((0, 0));
        let (reads, writes) = std::thread::scope(|s| {
            let readers: Vec<_> = (0..3)
                .map(|_| {
                    s.spawn(|| {
                        let mut ok = 0u64;
                        for _ in 0..50_000 {
                            if let Some(g) = L.try_read(64) {
                                assert_eq!(g.0, g.1, "a reader saw a half-done write");
                                ok += 1;
                            }
                        }
                        ok
                    })
                })
                .collect();
            let writer = s.spawn(|| {
                let mut ok = 0u64;
                for _ in 0..2_000 {
                    if let Some(mut g) = L.try_write(1 << 16) {
                        g.0 += 1;
                        std::hint::spin_loop();
                        g.1 += 1;
                        ok += 1;
                    }
                }
                ok
            });
            let r: u64 = readers.into_iter().map(|h| h.join().unwrap_or(0)).sum();
            (r, writer.join().unwrap_or(0))
        });
        assert!(reads > 0 && writes > 0, "reads {reads} writes {writes}");
        assert_eq!(L.try_read(0).map(|g| *g), Some((writes, writes)));
    }
}
