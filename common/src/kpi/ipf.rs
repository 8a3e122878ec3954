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
//! Both callbacks may block (xnu calls them right after `ipf_ref()` has taken
//! the `kipf_lock` mutex, bsd/netinet/kpi_ipfilter.c), so state they share is
//! kept behind `super::lock`'s xnu locks (docs/nat.md).

use core::ffi::{CStr, c_int, c_void};
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU8, Ordering};

use super::errno::{EBUSY, EINVAL, Errno};
use super::mbuf::{Packet, Taken};
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

use crate::net::addr::Family;

/// `AF_INET` or `AF_INET6`, the kernel's number for `family`.
pub fn af(family: Family) -> i32 {
    match family {
        Family::V4 => sys::AF_INET,
        Family::V6 => sys::AF_INET6,
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
        (Taken::new(), Errno::check(r))
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
        (Taken::new(), Errno::check(r))
    }
}

/// An IP filter's callbacks.
pub trait IpFilter: Sync + Sized + 'static {
    /// The filter's name (`ipf_filter.name`).
    const NAME: &'static CStr;
    /// The family it filters (`ipf_addv4` or `ipf_addv6`).
    fn family(&self) -> Family;
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
            return Err(EBUSY);
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
            return Err(if r != 0 { Errno::from_raw(r) } else { EINVAL });
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

impl<T: IpFilter> super::lifecycle::Registration for &'static Registration<T> {
    fn register(self) -> Result<(), super::KextError> {
        self.attach(self.filter.family())
            .map_err(|_| super::KextError::Failed)
    }

    /// Never refused (`ipf_remove`); `ipf_detach` may follow later.
    fn unregister(self) -> Result<(), super::KextError> {
        self.remove();
        Ok(())
    }

    fn released(self) -> bool {
        self.is_detached()
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
        $crate::sign_slot!(&raw const $name.c.ipf_input, 0x78FF, "ipf_input");
        $crate::sign_slot!(&raw const $name.c.ipf_output, 0xBCAD, "ipf_output");
        $crate::sign_slot!(&raw const $name.c.ipf_detach, 0x2ABE, "ipf_detach");
    };
}
