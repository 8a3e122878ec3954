//! Mutex and read-write lock over `lck_mtx_t`/`lck_rw_t` (com.apple.kpi.libkern),
//! with RAII guards, in one lock group per kext.
//!
//! [`init`] allocates the group in start; [`fini`] frees it in stop and refuses
//! while any lock is alive. Locks are allocated fallibly (`try_new`).
//! These locks may sleep: never take one in a context that must not block
//! (none of prx's callbacks is such a context).

use core::cell::UnsafeCell;
use core::ffi::CStr;
use core::ops::{Deref, DerefMut};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

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
        let Ok(g) = group() else {
            return Err((AllocError, v));
        };
        // SAFETY: a live group; NULL attribute = defaults.
        let l = unsafe { sys::lck_mtx_alloc_init(g, core::ptr::null_mut()) };
        match NonNull::new(l) {
            Some(lck) => {
                LIVE.fetch_add(1, Ordering::AcqRel);
                Ok(Mutex {
                    lck,
                    data: UnsafeCell::new(v),
                })
            }
            None => Err((AllocError, v)),
        }
    }

    /// Frees the lock and gives the value back.
    pub fn into_inner(self) -> T {
        let this = core::mem::ManuallyDrop::new(self);
        if let Ok(g) = group() {
            // SAFETY: the type invariant; owning `self` proves nobody holds the lock.
            unsafe { sys::lck_mtx_free(this.lck.as_ptr(), g) };
        }
        LIVE.fetch_sub(1, Ordering::AcqRel);
        // SAFETY: `this` is never used or dropped again; the value is moved out once.
        unsafe { core::ptr::read(this.data.get()) }
    }

    /// Takes the lock.
    pub fn lock(&self) -> MutexGuard<'_, T> {
        // SAFETY: the type invariant.
        unsafe { sys::lck_mtx_lock(self.lck.as_ptr()) };
        MutexGuard { m: self }
    }
}

impl<T> Drop for Mutex<T> {
    fn drop(&mut self) {
        if let Ok(g) = group() {
            // SAFETY: the type invariant; `&mut self` proves nobody holds the lock.
            unsafe { sys::lck_mtx_free(self.lck.as_ptr(), g) };
        }
        LIVE.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Holds a [`Mutex`]; unlocks on drop.
pub struct MutexGuard<'a, T> {
    m: &'a Mutex<T>,
}

impl<T> Deref for MutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard holds the lock.
        unsafe { &*self.m.data.get() }
    }
}

impl<T> DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard holds the lock exclusively.
        unsafe { &mut *self.m.data.get() }
    }
}

impl<T> Drop for MutexGuard<'_, T> {
    fn drop(&mut self) {
        // SAFETY: this guard took the lock.
        unsafe { sys::lck_mtx_unlock(self.m.lck.as_ptr()) };
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
