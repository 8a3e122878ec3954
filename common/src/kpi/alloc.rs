//! Fallible kernel allocation: [`KBox`] (one value) and [`KSlice`] (an array of
//! `Copy` values), over `OSMalloc_noblock`/`OSFree` (com.apple.kpi.libkern) with
//! one allocation tag per kext.
//!
//! Every allocation can fail and says so (`Err(AllocError)`); nothing here
//! blocks, so it is usable from filter callbacks. The tag is created by
//! [`init`] in the kext's start routine and released by [`fini`] in its stop
//! routine, which refuses while any allocation is live (a leak check that runs
//! on every unload).

use core::ffi::{CStr, c_void};
use core::marker::PhantomData;
use core::mem::{align_of, size_of};
use core::ops::{Deref, DerefMut};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

use crate::sys::{self, OSMT_DEFAULT, OSMallocTag};

/// An allocation failed (no memory, no tag, or a size the KPI cannot express).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllocError;

/// Allocations (and the tag) are still live: [`fini`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

static TAG: AtomicPtr<sys::__OSMallocTag__> = AtomicPtr::new(core::ptr::null_mut());
static LIVE: AtomicUsize = AtomicUsize::new(0);

/// Allocates the kext's tag. Call once from start.
pub fn init(name: &'static CStr) -> Result<(), AllocError> {
    // SAFETY: a NUL-terminated name; OSMalloc_Tagalloc copies it.
    let tag = unsafe { sys::OSMalloc_Tagalloc(name.as_ptr(), OSMT_DEFAULT) };
    if tag.is_null() {
        return Err(AllocError);
    }
    if TAG
        .compare_exchange(
            core::ptr::null_mut(),
            tag,
            Ordering::AcqRel,
            Ordering::Acquire,
        )
        .is_err()
    {
        // SAFETY: `tag` was just allocated and is not shared.
        unsafe { sys::OSMalloc_Tagfree(tag) };
        return Err(AllocError);
    }
    Ok(())
}

/// Releases the tag; refuses while allocations are live.
pub fn fini() -> Result<(), Busy> {
    if LIVE.load(Ordering::Acquire) != 0 {
        return Err(Busy);
    }
    let tag = TAG.swap(core::ptr::null_mut(), Ordering::AcqRel);
    if !tag.is_null() {
        // SAFETY: the tag came from OSMalloc_Tagalloc and no allocation uses it any more.
        unsafe { sys::OSMalloc_Tagfree(tag) };
    }
    Ok(())
}

/// Live allocations.
pub fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

fn raw_alloc(size: usize, align: usize) -> Result<(NonNull<c_void>, u32), AllocError> {
    // OSMalloc returns memory aligned for any kernel type (16 bytes on LP64);
    // 8 is all prx asks for.
    if align > 8 {
        return Err(AllocError);
    }
    let size = u32::try_from(size.max(1)).map_err(|_| AllocError)?;
    let tag: OSMallocTag = TAG.load(Ordering::Acquire);
    if tag.is_null() {
        return Err(AllocError);
    }
    // SAFETY: a live tag and a non-zero size; OSMalloc_noblock never blocks and may return NULL.
    let p = unsafe { sys::OSMalloc_noblock(size, tag) };
    let p = NonNull::new(p).ok_or(AllocError)?;
    LIVE.fetch_add(1, Ordering::AcqRel);
    Ok((p, size))
}

/// # Safety
/// `p` was returned by [`raw_alloc`] with `size` and is not used afterwards.
unsafe fn raw_free(p: NonNull<c_void>, size: u32) {
    let tag = TAG.load(Ordering::Acquire);
    // SAFETY: caller's contract; the tag outlives every allocation ([`fini`] checks LIVE).
    unsafe { sys::OSFree(p.as_ptr(), size, tag) };
    LIVE.fetch_sub(1, Ordering::AcqRel);
}

/// One `T` in kernel memory.
pub struct KBox<T> {
    // INVARIANT: points to an initialised `T` allocated by `raw_alloc(size_of::<T>())`.
    ptr: NonNull<T>,
    _own: PhantomData<T>,
}

// SAFETY: KBox owns its T like Box does.
unsafe impl<T: Send> Send for KBox<T> {}
// SAFETY: shared access to KBox only gives &T.
unsafe impl<T: Sync> Sync for KBox<T> {}

impl<T> KBox<T> {
    /// Moves `v` into kernel memory; gives it back on failure.
    pub fn try_new(v: T) -> Result<Self, (AllocError, T)> {
        match raw_alloc(size_of::<T>(), align_of::<T>()) {
            Ok((p, _)) => {
                let ptr = p.cast::<T>();
                // SAFETY: freshly allocated, large and aligned enough for T.
                unsafe { ptr.as_ptr().write(v) };
                Ok(KBox {
                    ptr,
                    _own: PhantomData,
                })
            }
            Err(e) => Err((e, v)),
        }
    }

    /// Gives up ownership: the raw pointer (for a C cookie).
    pub(crate) fn into_raw(b: Self) -> NonNull<T> {
        let p = b.ptr;
        core::mem::forget(b);
        p
    }

    /// Takes ownership back.
    ///
    /// # Safety
    /// `p` came from [`KBox::into_raw`] and is not used again.
    pub(crate) unsafe fn from_raw(p: NonNull<T>) -> Self {
        KBox {
            ptr: p,
            _own: PhantomData,
        }
    }
}

impl<T> Deref for KBox<T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the type invariant.
        unsafe { self.ptr.as_ref() }
    }
}

impl<T> DerefMut for KBox<T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the type invariant; `&mut self` is unique.
        unsafe { self.ptr.as_mut() }
    }
}

impl<T> Drop for KBox<T> {
    fn drop(&mut self) {
        // SAFETY: the type invariant; dropped once, then freed with the size allocated.
        unsafe {
            core::ptr::drop_in_place(self.ptr.as_ptr());
            raw_free(self.ptr.cast(), size_of::<T>().max(1) as u32);
        }
    }
}

/// `len` values of a `Copy` type in kernel memory (a fixed-size array chosen at run time).
pub struct KSlice<T: Copy> {
    // INVARIANT: `len` initialised `T`s, allocated by `raw_alloc` with `size` bytes.
    ptr: NonNull<T>,
    len: usize,
    size: u32,
}

// SAFETY: owns its elements.
unsafe impl<T: Copy + Send> Send for KSlice<T> {}
// SAFETY: shared access gives &[T].
unsafe impl<T: Copy + Sync> Sync for KSlice<T> {}

impl<T: Copy> KSlice<T> {
    /// `len` copies of `fill`.
    pub fn try_new(len: usize, fill: T) -> Result<Self, AllocError> {
        let bytes = len.checked_mul(size_of::<T>()).ok_or(AllocError)?;
        let (p, size) = raw_alloc(bytes, align_of::<T>())?;
        let ptr = p.cast::<T>();
        for i in 0..len {
            // SAFETY: `i < len` elements fit in the allocation.
            unsafe { ptr.as_ptr().add(i).write(fill) };
        }
        Ok(KSlice { ptr, len, size })
    }
}

impl<T: Copy> AsRef<[T]> for KSlice<T> {
    fn as_ref(&self) -> &[T] {
        // SAFETY: the type invariant.
        unsafe { core::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Copy> AsMut<[T]> for KSlice<T> {
    fn as_mut(&mut self) -> &mut [T] {
        // SAFETY: the type invariant; `&mut self` is unique.
        unsafe { core::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Copy> Drop for KSlice<T> {
    fn drop(&mut self) {
        // SAFETY: the type invariant; `T: Copy` needs no drop; freed once with its size.
        unsafe { raw_free(self.ptr.cast(), self.size) };
    }
}

/// Moves the value out of `b`, freeing the box's memory.
pub fn into_inner<T>(b: KBox<T>) -> T {
    let p = KBox::into_raw(b);
    // SAFETY: `p` holds an initialised T that nobody else owns (into_raw gave it up);
    // read once, then the memory is freed without dropping the value again.
    unsafe {
        let v = p.as_ptr().read();
        raw_free(p.cast(), size_of::<T>().max(1) as u32);
        v
    }
}
