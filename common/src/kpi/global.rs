//! [`Global`]: the kext's state, created in start and destroyed in stop, reached
//! from callbacks that get no pointer to it (`sf_attach` gets only a socket).
//!
//! `get` counts its users; `take` (in stop) refuses while any user is inside,
//! so the state is never freed under a running callback. With sequentially
//! consistent ordering, a `get` that saw the pointer has already counted
//! itself before `take` swapped it out, and `take` then sees the count and
//! puts the pointer back.

use core::ops::Deref;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering::SeqCst};

use super::alloc::{Busy, KBox};

/// A global slot holding a `KBox<T>`.
pub struct Global<T> {
    ptr: AtomicPtr<T>,
    users: AtomicUsize,
}

// SAFETY: hands out &T to any thread (T: Sync) and moves the box across threads (T: Send).
unsafe impl<T: Send + Sync> Sync for Global<T> {}

impl<T> Global<T> {
    /// An empty slot.
    pub const fn new() -> Self {
        Global {
            ptr: AtomicPtr::new(core::ptr::null_mut()),
            users: AtomicUsize::new(0),
        }
    }

    /// Installs the state; gives it back if one is installed already.
    pub fn set(&self, v: KBox<T>) -> Result<(), KBox<T>> {
        let p = KBox::into_raw(v);
        match self
            .ptr
            .compare_exchange(core::ptr::null_mut(), p.as_ptr(), SeqCst, SeqCst)
        {
            Ok(_) => Ok(()),
            // SAFETY: `p` came from into_raw just above and was not published.
            Err(_) => Err(unsafe { KBox::from_raw(p) }),
        }
    }

    /// Borrows the state, if installed.
    pub fn get(&self) -> Option<GlobalRef<'_, T>> {
        self.users.fetch_add(1, SeqCst);
        match NonNull::new(self.ptr.load(SeqCst)) {
            Some(p) => Some(GlobalRef { g: self, p }),
            None => {
                self.users.fetch_sub(1, SeqCst);
                None
            }
        }
    }

    /// Removes the state (to drop it); `Err(Busy)` while a callback uses it.
    pub fn take(&self) -> Result<Option<KBox<T>>, Busy> {
        let p = self.ptr.swap(core::ptr::null_mut(), SeqCst);
        let Some(p) = NonNull::new(p) else {
            return Ok(None);
        };
        if self.users.load(SeqCst) != 0 {
            self.ptr.store(p.as_ptr(), SeqCst);
            return Err(Busy);
        }
        // SAFETY: `p` came from `set`'s into_raw; it is unpublished and no user holds it.
        Ok(Some(unsafe { KBox::from_raw(p) }))
    }
}

impl<T> Default for Global<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// A counted borrow of a [`Global`]'s state.
pub struct GlobalRef<'a, T> {
    g: &'a Global<T>,
    p: NonNull<T>,
}

impl<T> Deref for GlobalRef<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: counted in `users`, so `take` cannot free it while this exists.
        unsafe { self.p.as_ref() }
    }
}

impl<T> Drop for GlobalRef<'_, T> {
    fn drop(&mut self) {
        self.g.users.fetch_sub(1, SeqCst);
    }
}
