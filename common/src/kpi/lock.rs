//! Mutex and read-write lock over `lck_mtx_t`/`lck_rw_t` (com.apple.kpi.libkern),
//! with RAII guards, in one lock group per kext; and [`FastMutex`], the packet
//! path's mutex, whose uncontended lock and unlock make no kernel call.
//!
//! [`init`] allocates the group in start; [`fini`] frees it in stop and refuses
//! while any lock is alive. Locks are allocated fallibly (`try_new`).
//! These locks may sleep: never take one in a context that must not block
//! (none of prx's callbacks is such a context).

use core::cell::UnsafeCell;
use core::ffi::CStr;
use core::ops::{Deref, DerefMut};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicPtr, AtomicU32, AtomicUsize, Ordering};

use super::alloc::{AllocError, Busy};
use crate::sys::{self, lck_grp_t, lck_mtx_t, lck_rw_t};

static GROUP: AtomicPtr<lck_grp_t> = AtomicPtr::new(core::ptr::null_mut());
static LIVE: AtomicUsize = AtomicUsize::new(0);

/// Allocates the kext's lock group. Call once from start.
pub fn init(name: &'static CStr) -> Result<(), AllocError> {
    // SAFETY: a NUL-terminated name; a NULL attribute means the defaults.
    let g = unsafe { sys::lck_grp_alloc_init(name.as_ptr(), core::ptr::null_mut()) };
    if g.is_null() {
        return Err(AllocError);
    }
    if GROUP
        .compare_exchange(
            core::ptr::null_mut(),
            g,
            Ordering::AcqRel,
            Ordering::Acquire,
        )
        .is_err()
    {
        // SAFETY: `g` was just allocated and is not shared.
        unsafe { sys::lck_grp_free(g) };
        return Err(AllocError);
    }
    Ok(())
}

/// Frees the lock group; refuses while locks are alive.
pub fn fini() -> Result<(), Busy> {
    if LIVE.load(Ordering::Acquire) != 0 {
        return Err(Busy);
    }
    let g = GROUP.swap(core::ptr::null_mut(), Ordering::AcqRel);
    if !g.is_null() {
        // SAFETY: the group came from lck_grp_alloc_init and no lock uses it any more.
        unsafe { sys::lck_grp_free(g) };
    }
    Ok(())
}

fn group() -> Result<*mut lck_grp_t, AllocError> {
    let g = GROUP.load(Ordering::Acquire);
    if g.is_null() { Err(AllocError) } else { Ok(g) }
}

/// A new `lck_mtx_t` in the kext's group (counted live).
fn mtx_alloc() -> Result<NonNull<lck_mtx_t>, AllocError> {
    let g = group()?;
    // SAFETY: a live group; NULL attribute = defaults.
    let l = NonNull::new(unsafe { sys::lck_mtx_alloc_init(g, core::ptr::null_mut()) });
    let l = l.ok_or(AllocError)?;
    LIVE.fetch_add(1, Ordering::AcqRel);
    Ok(l)
}

/// Frees a mutex from [`mtx_alloc`].
///
/// # Safety
/// `l` came from [`mtx_alloc`], is freed once, and nobody holds it, waits
/// for it or uses it again.
unsafe fn mtx_free(l: NonNull<lck_mtx_t>) {
    if let Ok(g) = group() {
        // SAFETY: the caller's contract; the group is the one it came from.
        unsafe { sys::lck_mtx_free(l.as_ptr(), g) };
    }
    LIVE.fetch_sub(1, Ordering::AcqRel);
}

/// A lock with data that a [`Guard`] holds: how the guard reaches the data
/// and releases the lock.
///
/// # Safety
/// Implementors hand out a [`Guard`] only while the lock is held by its
/// holder (exclusively), `data` is valid for as long as `self` is, and
/// `release` releases the lock the guard's creator took.
pub unsafe trait Guarded {
    /// The protected value.
    type Data;
    /// Where it is.
    fn data(&self) -> *mut Self::Data;
    /// Releases the lock.
    ///
    /// # Safety
    /// The caller holds it (a [`Guard`] being dropped).
    unsafe fn release(&self);
}

/// Holds a [`Mutex`] or [`FastMutex`]; unlocks on drop.
pub struct Guard<'a, M: Guarded> {
    m: &'a M,
}

impl<M: Guarded> Deref for Guard<'_, M> {
    type Target = M::Data;
    fn deref(&self) -> &M::Data {
        // SAFETY: the guard holds the lock (Guarded's contract).
        unsafe { &*self.m.data() }
    }
}

impl<M: Guarded> DerefMut for Guard<'_, M> {
    fn deref_mut(&mut self) -> &mut M::Data {
        // SAFETY: the guard holds the lock exclusively (Guarded's contract).
        unsafe { &mut *self.m.data() }
    }
}

impl<M: Guarded> Drop for Guard<'_, M> {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: this guard holds the lock.
        unsafe { self.m.release() };
    }
}

/// Holds a [`Mutex`].
pub type MutexGuard<'a, T> = Guard<'a, Mutex<T>>;
/// Holds a [`FastMutex`].
pub type FastGuard<'a, T> = Guard<'a, FastMutex<T>>;

/// A mutex protecting a `T`.
pub struct Mutex<T> {
    // INVARIANT: a live lck_mtx_t from lck_mtx_alloc_init in GROUP.
    lck: NonNull<lck_mtx_t>,
    data: UnsafeCell<T>,
}

// SAFETY: the lock serialises all access to `data`.
unsafe impl<T: Send> Sync for Mutex<T> {}
// SAFETY: the lock object may be used from any thread.
unsafe impl<T: Send> Send for Mutex<T> {}

impl<T> Mutex<T> {
    /// A new mutex; gives `v` back on failure.
    pub fn try_new(v: T) -> Result<Self, (AllocError, T)> {
        match mtx_alloc() {
            Ok(lck) => Ok(Mutex {
                lck,
                data: UnsafeCell::new(v),
            }),
            Err(e) => Err((e, v)),
        }
    }

    /// Frees the lock and gives the value back.
    pub fn into_inner(self) -> T {
        let this = core::mem::ManuallyDrop::new(self);
        // SAFETY: the type invariant; owning `self` proves nobody holds the
        // lock, and `this` is never dropped.
        unsafe { mtx_free(this.lck) };
        // SAFETY: `this` is never used or dropped again; the value is moved out once.
        unsafe { core::ptr::read(this.data.get()) }
    }

    /// Takes the lock.
    pub fn lock(&self) -> MutexGuard<'_, T> {
        // SAFETY: the type invariant.
        unsafe { sys::lck_mtx_lock(self.lck.as_ptr()) };
        Guard { m: self }
    }
}

impl<T> Drop for Mutex<T> {
    fn drop(&mut self) {
        // SAFETY: the type invariant; `&mut self` proves nobody holds the lock.
        unsafe { mtx_free(self.lck) };
    }
}

// SAFETY: a guard is made only by `lock`, which took the lock; `release`
// unlocks it; the data lives as long as the mutex.
unsafe impl<T> Guarded for Mutex<T> {
    type Data = T;
    fn data(&self) -> *mut T {
        self.data.get()
    }
    unsafe fn release(&self) {
        // SAFETY: the caller holds the lock (the trait's contract).
        unsafe { sys::lck_mtx_unlock(self.lck.as_ptr()) };
    }
}

/// A read-write lock protecting a `T`.
pub struct RwLock<T> {
    // INVARIANT: a live lck_rw_t from lck_rw_alloc_init in GROUP.
    lck: NonNull<lck_rw_t>,
    data: UnsafeCell<T>,
}

// SAFETY: readers get &T (T: Sync), writers are exclusive (T: Send).
unsafe impl<T: Send + Sync> Sync for RwLock<T> {}
// SAFETY: the lock object may be used from any thread.
unsafe impl<T: Send> Send for RwLock<T> {}

impl<T> RwLock<T> {
    /// A new lock; gives `v` back on failure.
    pub fn try_new(v: T) -> Result<Self, (AllocError, T)> {
        let Ok(g) = group() else {
            return Err((AllocError, v));
        };
        // SAFETY: a live group; NULL attribute = defaults.
        let l = unsafe { sys::lck_rw_alloc_init(g, core::ptr::null_mut()) };
        match NonNull::new(l) {
            Some(lck) => {
                LIVE.fetch_add(1, Ordering::AcqRel);
                Ok(RwLock {
                    lck,
                    data: UnsafeCell::new(v),
                })
            }
            None => Err((AllocError, v)),
        }
    }

    /// Shared access.
    pub fn read(&self) -> ReadGuard<'_, T> {
        // SAFETY: the type invariant.
        unsafe { sys::lck_rw_lock_shared(self.lck.as_ptr()) };
        ReadGuard { l: self }
    }

    /// Exclusive access.
    pub fn write(&self) -> WriteGuard<'_, T> {
        // SAFETY: the type invariant.
        unsafe { sys::lck_rw_lock_exclusive(self.lck.as_ptr()) };
        WriteGuard { l: self }
    }
}

impl<T> Drop for RwLock<T> {
    fn drop(&mut self) {
        if let Ok(g) = group() {
            // SAFETY: the type invariant; `&mut self` proves nobody holds the lock.
            unsafe { sys::lck_rw_free(self.lck.as_ptr(), g) };
        }
        LIVE.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Shared hold on a [`RwLock`].
pub struct ReadGuard<'a, T> {
    l: &'a RwLock<T>,
}

impl<T> Deref for ReadGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard holds the lock shared; no writer exists.
        unsafe { &*self.l.data.get() }
    }
}

impl<T> Drop for ReadGuard<'_, T> {
    fn drop(&mut self) {
        // SAFETY: this guard took the lock shared.
        unsafe { sys::lck_rw_unlock_shared(self.l.lck.as_ptr()) };
    }
}

/// Exclusive hold on a [`RwLock`].
pub struct WriteGuard<'a, T> {
    l: &'a RwLock<T>,
}

impl<T> Deref for WriteGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard holds the lock exclusively.
        unsafe { &*self.l.data.get() }
    }
}

impl<T> DerefMut for WriteGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard holds the lock exclusively.
        unsafe { &mut *self.l.data.get() }
    }
}

impl<T> Drop for WriteGuard<'_, T> {
    fn drop(&mut self) {
        // SAFETY: this guard took the lock exclusively.
        unsafe { sys::lck_rw_unlock_exclusive(self.l.lck.as_ptr()) };
    }
}

// ---- the packet path's mutex ----

/// Where a [`FastLock`] sleeps when it is contended: a sleep lock and a wait
/// channel, as xnu's `lck_mtx_t` with `msleep`/`wakeup_one` provide (and the
/// host tests' stand-in).
pub trait Park {
    /// Takes the sleep lock.
    fn lock(&self);
    /// Releases the sleep lock.
    fn unlock(&self);
    /// With the sleep lock held: releases it and sleeps on `chan` as one step
    /// (a [`Park::wake_one`] made after the release wakes this thread), and
    /// holds it again on return. May return without a wake-up.
    fn sleep(&self, chan: &AtomicU32);
    /// Wakes a thread sleeping on `chan`, if any (called with the sleep lock held).
    fn wake_one(&self, chan: &AtomicU32);
}

/// Free.
const FREE: u32 = 0;
/// Held, nobody sleeping.
const HELD: u32 = 1;
/// Held, and threads may be sleeping for it.
const CONTENDED: u32 = 2;

/// A mutual-exclusion lock whose uncontended lock and unlock are one atomic
/// instruction each, and which sleeps on `P` when contended: the three-state
/// futex mutex (U. Drepper, "Futexes Are Tricky", 2011, mutex #2), with the
/// sleep lock standing in for the futex's atomic check-and-sleep.
///
/// - `lock`: free → held by one compare-and-swap. Otherwise, under the sleep
///   lock, mark the lock contended (a swap) and sleep until the swap finds it
///   free; the thread that gets it that way leaves it marked contended, so its
///   unlock wakes the next sleeper.
/// - `unlock`: a swap to free; only if it was marked contended, wake one
///   sleeper under the sleep lock.
///
/// No wake-up is lost: a sleeper marks the lock and goes to sleep while it
/// holds the sleep lock, and the unlocker wakes it while it holds the sleep
/// lock, so the wake-up comes either before the sleeper's swap (which then
/// finds the lock free) or after it sleeps. Nothing spins; a holder preempted
/// in its critical section makes the others sleep, as with `lck_mtx_t`.
pub struct FastLock<P> {
    state: AtomicU32,
    park: P,
}

impl<P: Park> FastLock<P> {
    /// Free, sleeping on `park` when contended.
    pub const fn new(park: P) -> Self {
        FastLock {
            state: AtomicU32::new(FREE),
            park,
        }
    }

    /// Takes the lock (sleeps while another thread holds it).
    #[inline]
    pub fn lock(&self) {
        if self
            .state
            .compare_exchange(FREE, HELD, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            self.lock_contended();
        }
    }

    #[cold]
    #[inline(never)]
    fn lock_contended(&self) {
        self.park.lock();
        while self.state.swap(CONTENDED, Ordering::Acquire) != FREE {
            self.park.sleep(&self.state);
        }
        self.park.unlock();
    }

    /// Releases the lock (the caller holds it).
    #[inline]
    pub fn unlock(&self) {
        if self.state.swap(FREE, Ordering::Release) == CONTENDED {
            self.wake();
        }
    }

    #[cold]
    #[inline(never)]
    fn wake(&self) {
        self.park.lock();
        self.park.wake_one(&self.state);
        self.park.unlock();
    }

    /// The sleep side.
    pub fn park(&self) -> &P {
        &self.park
    }
}

/// A [`Park`] on xnu: an `lck_mtx_t` and `msleep`/`wakeup_one` (com.apple.kpi.bsd)
/// on the lock word's address.
pub struct LckPark {
    // INVARIANT: a live lck_mtx_t from lck_mtx_alloc_init in GROUP.
    lck: NonNull<lck_mtx_t>,
}

impl Park for LckPark {
    fn lock(&self) {
        // SAFETY: the type invariant.
        unsafe { sys::lck_mtx_lock(self.lck.as_ptr()) };
    }

    fn unlock(&self) {
        // SAFETY: the type invariant; the caller holds the lock (trait contract).
        unsafe { sys::lck_mtx_unlock(self.lck.as_ptr()) };
    }

    fn sleep(&self, chan: &AtomicU32) {
        // SAFETY: the caller holds the live mutex (trait contract), which
        // msleep drops while asleep and takes again before returning (no
        // PDROP); no PCATCH: uninterruptible; NULL timespec: no timeout; the
        // channel is an address, never dereferenced.
        unsafe {
            sys::msleep(
                chan.as_ptr().cast(),
                self.lck.as_ptr(),
                0,
                c"prx lock".as_ptr(),
                core::ptr::null_mut(),
            )
        };
    }

    fn wake_one(&self, chan: &AtomicU32) {
        // SAFETY: the channel is an address, never dereferenced.
        unsafe { sys::wakeup_one(chan.as_ptr().cast()) };
    }
}

/// A mutex protecting a `T` for the packet path: a [`FastLock`] over an
/// `lck_mtx_t`, so a packet that finds it free calls no kernel function to
/// take and release it (two `lck_mtx` calls fewer per packet than [`Mutex`]).
/// It may sleep when contended, like [`Mutex`].
pub struct FastMutex<T> {
    lock: FastLock<LckPark>,
    data: UnsafeCell<T>,
}

// SAFETY: the lock serialises all access to `data`.
unsafe impl<T: Send> Sync for FastMutex<T> {}
// SAFETY: the lock objects may be used from any thread.
unsafe impl<T: Send> Send for FastMutex<T> {}

impl<T> FastMutex<T> {
    /// A new mutex; gives `v` back on failure.
    pub fn try_new(v: T) -> Result<Self, (AllocError, T)> {
        match mtx_alloc() {
            Ok(lck) => Ok(FastMutex {
                lock: FastLock::new(LckPark { lck }),
                data: UnsafeCell::new(v),
            }),
            Err(e) => Err((e, v)),
        }
    }

    /// Takes the lock.
    #[inline]
    pub fn lock(&self) -> FastGuard<'_, T> {
        self.lock.lock();
        Guard { m: self }
    }
}

impl<T> Drop for FastMutex<T> {
    fn drop(&mut self) {
        // SAFETY: the type invariant of LckPark; `&mut self` proves nobody
        // holds either lock or sleeps on it.
        unsafe { mtx_free(self.lock.park().lck) };
    }
}

// SAFETY: a guard is made only by `lock`, which took the lock; `release`
// unlocks it; the data lives as long as the mutex.
unsafe impl<T> Guarded for FastMutex<T> {
    type Data = T;
    fn data(&self) -> *mut T {
        self.data.get()
    }
    #[inline]
    unsafe fn release(&self) {
        self.lock.unlock();
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects, clippy::unwrap_used)]
mod tests {
    use super::*;
    use core::sync::atomic::{AtomicBool, AtomicU64};
    use std::sync::Arc;

    /// A host [`Park`]: a spin lock, and a generation counter as the wait
    /// channel (a sleeper reads it under the sleep lock and waits for a
    /// change, which only a waker holding the sleep lock makes).
    #[derive(Default)]
    struct HostPark {
        held: AtomicBool,
        generation: AtomicU64,
        sleeps: AtomicU64,
        wakes: AtomicU64,
    }

    impl Park for HostPark {
        fn lock(&self) {
            while self
                .held
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
            {
                std::thread::yield_now();
            }
        }
        fn unlock(&self) {
            assert!(
                self.held.swap(false, Ordering::Release),
                "unlock of a free sleep lock"
            );
        }
        fn sleep(&self, _chan: &AtomicU32) {
            assert!(
                self.held.load(Ordering::Relaxed),
                "sleep without the sleep lock"
            );
            self.sleeps.fetch_add(1, Ordering::Relaxed);
            let g = self.generation.load(Ordering::Acquire);
            self.unlock();
            let t0 = std::time::Instant::now();
            while self.generation.load(Ordering::Acquire) == g {
                assert!(t0.elapsed().as_secs() < 30, "a lost wake-up: slept 30 s");
                std::thread::yield_now();
            }
            self.lock();
        }
        fn wake_one(&self, _chan: &AtomicU32) {
            assert!(
                self.held.load(Ordering::Relaxed),
                "wake without the sleep lock"
            );
            self.wakes.fetch_add(1, Ordering::Relaxed);
            self.generation.fetch_add(1, Ordering::Release);
        }
    }

    struct Shared {
        lock: FastLock<HostPark>,
        inside: AtomicU32,
        count: UnsafeCell<u64>,
    }
    // SAFETY: `count` is only touched under `lock` (the test holds it around every access).
    unsafe impl Sync for Shared {}

    #[test]
    fn uncontended_lock_and_unlock_never_touch_the_park() {
        let l = FastLock::new(HostPark::default());
        for _ in 0..1000 {
            l.lock();
            l.unlock();
        }
        assert_eq!(l.park().sleeps.load(Ordering::Relaxed), 0);
        assert_eq!(l.park().wakes.load(Ordering::Relaxed), 0);
        assert!(!l.park().held.load(Ordering::Relaxed));
    }

    #[test]
    fn threads_exclude_each_other_sleep_when_contended_and_are_all_woken() {
        const THREADS: u64 = 4;
        const ROUNDS: u64 = 20_000;
        let s = Arc::new(Shared {
            lock: FastLock::new(HostPark::default()),
            inside: AtomicU32::new(0),
            count: UnsafeCell::new(0),
        });
        let hs: Vec<_> = (0..THREADS)
            .map(|t| {
                let s = Arc::clone(&s);
                std::thread::spawn(move || {
                    for i in 0..ROUNDS {
                        s.lock.lock();
                        assert_eq!(s.inside.fetch_add(1, Ordering::Relaxed), 0, "two inside");
                        // SAFETY: this thread holds the lock.
                        let c = unsafe { &mut *s.count.get() };
                        let v = *c;
                        if (i + t) % 7 == 0 {
                            // Preempted while holding the lock.
                            std::thread::yield_now();
                        }
                        *c = v + 1;
                        s.inside.fetch_sub(1, Ordering::Relaxed);
                        s.lock.unlock();
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        // SAFETY: every thread is joined; nothing else touches `count`.
        let total = unsafe { *s.count.get() };
        assert_eq!(total, THREADS * ROUNDS);
        let p = s.lock.park();
        assert!(
            p.sleeps.load(Ordering::Relaxed) > 0,
            "never contended: the test proves nothing"
        );
        assert!(p.wakes.load(Ordering::Relaxed) > 0);
        assert_eq!(s.lock.state.load(Ordering::Relaxed), FREE);
        assert!(!p.held.load(Ordering::Relaxed));
    }
}
