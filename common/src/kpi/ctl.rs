//! Kernel control sockets (`ctl_register`, com.apple.kpi.bsd; xnu
//! bsd/sys/kern_control.h) in safe Rust: a [`Control`] trait with typed
//! connect/disconnect/setopt/getopt handlers and a [`VTable`] of trampolines.
//!
//! - The per-client state ([`Control::Unit`]) is owned by the wrapper like a
//!   socket filter's cookie: made in `connect`, dropped once in `disconnect`.
//! - `setopt` gets the option's bytes; `getopt` gets the caller's buffer (which
//!   xnu fills with the caller's data first, so it is in/out) and returns how
//!   many bytes it wrote; the trampoline never reports more than the buffer's
//!   length (xnu panics if a control does).
//! - `ctl_register` writes the assigned id and unit back into the structure, and
//!   the arm64e kernel calls the handlers through signed pointers, so the
//!   registration lives in a static ([`kern_control!`](crate::kern_control)) with
//!   marked slots.
//! - [`deregister`] returns `EBUSY` while clients are connected (as xnu does);
//!   [`clients`] tells stop beforehand.

use core::cell::UnsafeCell;
use core::ffi::{c_char, c_int, c_void};
use core::marker::PhantomData;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

use super::alloc::{KBox, into_inner};
use super::errno::{EINVAL, ENOMEM, Errno};
use crate::sys::{self, MAX_KCTL_NAME, kern_ctl_ref, kern_ctl_reg, sockaddr_ctl};

/// A kern_control's handlers.
pub trait Control: 'static {
    /// Per-client state.
    type Unit: Send;
    /// A client connects (on unit `unit`); `Err` refuses it.
    fn connect(unit: u32) -> Result<Self::Unit, Errno>;
    /// The client disconnects; its state is given back and dropped.
    fn disconnect(_state: Self::Unit, _unit: u32) {}
    /// `setsockopt(opt, data)`.
    fn setopt(state: &mut Self::Unit, opt: c_int, data: &[u8]) -> Result<(), Errno>;
    /// `getsockopt(opt, buf)`: `buf` holds the caller's request on entry; return
    /// the response length (at most `buf.len()`).
    fn getopt(state: &mut Self::Unit, opt: c_int, buf: &mut [u8]) -> Result<usize, Errno>;
}

static CLIENTS: AtomicUsize = AtomicUsize::new(0);

/// Clients connected to any control of this kext.
pub fn clients() -> usize {
    CLIENTS.load(Ordering::Acquire)
}

/// A registration: the `kern_ctl_reg` (written by `ctl_register`) and the
/// reference it returned.
#[repr(C)]
pub struct CtlDef {
    /// The structure handed to `ctl_register`.
    pub raw: UnsafeCell<kern_ctl_reg>,
    kref: AtomicPtr<c_void>,
}

// SAFETY: `raw` is written only by ctl_register, called from start (serialised
// with stop by the kernel); `kref` is atomic.
unsafe impl Sync for CtlDef {}

/// The control name as the fixed C array, at compile time.
#[allow(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    reason = "evaluated at compile time (a static initializer): a bad index is a compile error"
)]
pub const fn name96(s: &str) -> [c_char; MAX_KCTL_NAME] {
    let b = s.as_bytes();
    assert!(
        b.len() < MAX_KCTL_NAME,
        "kern_control name must be shorter than 96 bytes"
    );
    let mut out = [0 as c_char; MAX_KCTL_NAME];
    let mut i = 0;
    while i < b.len() {
        out[i] = b[i] as c_char;
        i += 1;
    }
    out
}

/// Registers `def`.
pub fn register(def: &'static CtlDef) -> Result<(), Errno> {
    let mut kref: kern_ctl_ref = core::ptr::null_mut();
    // SAFETY: a complete kern_ctl_reg in a static that ctl_register may write
    // (ctl_id, ctl_unit); out-parameter `kref`.
    Errno::check(unsafe { sys::ctl_register(def.raw.get(), &mut kref) })?;
    def.kref.store(kref, Ordering::Release);
    Ok(())
}

/// Deregisters `def` (no-op when not registered); `Err(EBUSY)` while clients are connected.
pub fn deregister(def: &'static CtlDef) -> Result<(), Errno> {
    let kref = def.kref.load(Ordering::Acquire);
    if kref.is_null() {
        return Ok(());
    }
    // SAFETY: the reference ctl_register returned.
    Errno::check(unsafe { sys::ctl_deregister(kref) })?;
    def.kref.store(core::ptr::null_mut(), Ordering::Release);
    Ok(())
}

impl super::lifecycle::Registration for &'static CtlDef {
    fn register(self) -> Result<(), super::KextError> {
        register(self).map_err(|_| super::KextError::Failed)
    }

    /// `Busy` while clients are connected.
    fn unregister(self) -> Result<(), super::KextError> {
        deregister(self).map_err(|_| super::KextError::Busy)
    }

    fn released(self) -> bool {
        self.kref.load(Ordering::Acquire).is_null()
    }
}

/// The trampolines for `C`.
pub struct VTable<C>(PhantomData<C>);

impl<C: Control> VTable<C> {
    /// The registration for control `name` with `flags` (e.g. `CTL_FLAG_PRIVILEGED`).
    pub const fn def(name: &str, flags: u32) -> CtlDef {
        CtlDef {
            raw: UnsafeCell::new(kern_ctl_reg {
                ctl_name: name96(name),
                ctl_id: 0,
                ctl_unit: 0,
                ctl_flags: flags,
                ctl_sendsize: 0,
                ctl_recvsize: 0,
                ctl_connect: Some(Self::connect),
                ctl_disconnect: Some(Self::disconnect),
                ctl_send: None,
                ctl_setopt: Some(Self::setopt),
                ctl_getopt: Some(Self::getopt),
            }),
            kref: AtomicPtr::new(core::ptr::null_mut()),
        }
    }

    unsafe extern "C" fn connect(
        _k: kern_ctl_ref,
        sac: *mut sockaddr_ctl,
        unitinfo: *mut *mut c_void,
    ) -> c_int {
        if sac.is_null() || unitinfo.is_null() {
            return EINVAL.raw();
        }
        // SAFETY: the kernel's address of the connecting client.
        let unit = unsafe { (*sac).sc_unit };
        let st = match C::connect(unit) {
            Ok(s) => s,
            Err(e) => return e.raw(),
        };
        match KBox::try_new(st) {
            Ok(b) => {
                // SAFETY: out-parameter (checked non-NULL).
                unsafe { unitinfo.write(KBox::into_raw(b).as_ptr().cast()) };
                CLIENTS.fetch_add(1, Ordering::AcqRel);
                0
            }
            Err((_, st)) => {
                C::disconnect(st, unit);
                ENOMEM.raw()
            }
        }
    }

    unsafe extern "C" fn disconnect(_k: kern_ctl_ref, unit: u32, unitinfo: *mut c_void) -> c_int {
        if let Some(p) = NonNull::new(unitinfo.cast::<C::Unit>()) {
            // SAFETY: the unitinfo `connect` made; the kernel disconnects once.
            let b = unsafe { KBox::from_raw(p) };
            CLIENTS.fetch_sub(1, Ordering::AcqRel);
            C::disconnect(into_inner(b), unit);
        }
        0
    }

    unsafe extern "C" fn setopt(
        _k: kern_ctl_ref,
        _unit: u32,
        unitinfo: *mut c_void,
        opt: c_int,
        data: *mut c_void,
        len: usize,
    ) -> c_int {
        let Some(mut st) = NonNull::new(unitinfo.cast::<C::Unit>()) else {
            return EINVAL.raw();
        };
        let bytes: &[u8] = if data.is_null() || len == 0 {
            &[]
        } else {
            // SAFETY: the kernel's copy of the option value: `len` bytes.
            unsafe { core::slice::from_raw_parts(data.cast::<u8>(), len) }
        };
        // SAFETY: the client's state; the kernel serialises calls on one client socket.
        match C::setopt(unsafe { st.as_mut() }, opt, bytes) {
            Ok(()) => 0,
            Err(e) => e.raw(),
        }
    }

    unsafe extern "C" fn getopt(
        _k: kern_ctl_ref,
        _unit: u32,
        unitinfo: *mut c_void,
        opt: c_int,
        data: *mut c_void,
        len: *mut usize,
    ) -> c_int {
        let Some(mut st) = NonNull::new(unitinfo.cast::<C::Unit>()) else {
            return EINVAL.raw();
        };
        if len.is_null() {
            return EINVAL.raw();
        }
        // SAFETY: in/out length, valid for the call.
        let given = unsafe { len.read() };
        let buf: &mut [u8] = if data.is_null() || given == 0 {
            &mut []
        } else {
            // SAFETY: the kernel's buffer of `given` bytes, holding the caller's data.
            unsafe { core::slice::from_raw_parts_mut(data.cast::<u8>(), given) }
        };
        let cap = buf.len();
        // SAFETY: the client's state; calls on one client are serialised.
        match C::getopt(unsafe { st.as_mut() }, opt, buf) {
            Ok(n) => {
                // SAFETY: as above; never more than the caller gave.
                unsafe { len.write(n.min(cap)) };
                0
            }
            Err(e) => {
                // SAFETY: as above.
                unsafe { len.write(0) };
                e.raw()
            }
        }
    }
}

/// Declares a kern_control static for `C` and marks its handler slots for arm64e signing:
///
/// ```ignore
/// common::kern_control!(static CONTROL: MyControl = name "net.prx.control", flags common::sys::CTL_FLAG_PRIVILEGED);
/// ```
#[macro_export]
macro_rules! kern_control {
    (static $name:ident : $c:ty = name $cname:expr, flags $flags:expr) => {
        static $name: $crate::kpi::ctl::CtlDef =
            $crate::kpi::ctl::VTable::<$c>::def($cname, $flags);
        $crate::sign_slot!(
            (&raw const $name.raw)
                .cast::<u8>()
                .wrapping_add(::core::mem::offset_of!(
                    $crate::sys::kern_ctl_reg,
                    ctl_connect
                )),
            0xBCAD
        );
        $crate::sign_slot!(
            (&raw const $name.raw)
                .cast::<u8>()
                .wrapping_add(::core::mem::offset_of!(
                    $crate::sys::kern_ctl_reg,
                    ctl_disconnect
                )),
            0x392E
        );
        $crate::sign_slot!(
            (&raw const $name.raw)
                .cast::<u8>()
                .wrapping_add(::core::mem::offset_of!(
                    $crate::sys::kern_ctl_reg,
                    ctl_setopt
                )),
            0x5070
        );
        $crate::sign_slot!(
            (&raw const $name.raw)
                .cast::<u8>()
                .wrapping_add(::core::mem::offset_of!(
                    $crate::sys::kern_ctl_reg,
                    ctl_getopt
                )),
            0x821F
        );
    };
}
