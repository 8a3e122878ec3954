//! Start and stop as mechanism: one [`Registration`] shape for what a kext
//! registers with the kernel (a socket filter, an IP filter, a
//! kern_control), and the steps both kexts' start and stop are made of.
//!
//! - [`Registration::register`] hands the static to the kernel;
//!   [`Registration::unregister`] starts taking it back (a no-op when it is
//!   not registered); [`Registration::released`] tells when the kernel no
//!   longer references it (never registered, or its last callback ran:
//!   `sf_unregistered`, `ipf_detach`, `ctl_deregister`'s success).
//! - [`unregister_all`] unregisters every one and waits (bounded) for their
//!   release: xnu does not call a refused stop again, so once a kext has
//!   unregistered something it waits rather than returning busy inert.
//! - [`init`]/[`fini`]: the allocator's tag and the lock group, and the
//!   kext's state; `fini` refuses (busy) while anything is in use.
//! - [`Kext`]: what a kext's start and stop share (its name, state, control,
//!   filters, wait and log), as one `const` of its statics, with the steps
//!   above taking their arguments from it.

use core::ffi::CStr;

use super::KextError;
use super::global::Global;
use super::log::Logger;
use super::{alloc, clock, ctl, lock};

/// Something a kext registers with the kernel: a `&'static` of a
/// registration static, or a tuple of them (registered in order, stopping at
/// the first failure; each unregistered whatever the others answer; released
/// when all are). Static dispatch only: a trait object's vtable would be a
/// table of unsigned function pointers on arm64e.
pub trait Registration: Copy {
    /// Registers it (`sflt_register`, `ipf_addv4`/`ipf_addv6`, `ctl_register`).
    fn register(self) -> Result<(), KextError>;
    /// Starts unregistering it; a no-op when it is not registered. `Busy`
    /// when the kernel refused (it stays registered).
    fn unregister(self) -> Result<(), KextError>;
    /// True when the kernel no longer references it.
    fn released(self) -> bool;
}

impl<A: Registration, B: Registration> Registration for (A, B) {
    fn register(self) -> Result<(), KextError> {
        self.0.register()?;
        self.1.register()
    }

    fn unregister(self) -> Result<(), KextError> {
        let a = self.0.unregister();
        let b = self.1.unregister();
        a.and(b)
    }

    fn released(self) -> bool {
        self.0.released() && self.1.released()
    }
}

impl<A: Registration, B: Registration, C: Registration> Registration for (A, B, C) {
    fn register(self) -> Result<(), KextError> {
        (self.0, (self.1, self.2)).register()
    }

    fn unregister(self) -> Result<(), KextError> {
        (self.0, (self.1, self.2)).unregister()
    }

    fn released(self) -> bool {
        (self.0, (self.1, self.2)).released()
    }
}

/// Unregisters `regs` (each is tried), then waits up to `limit_ms` until all
/// are released and `also()` holds. True when nothing of `regs` is
/// registered any more.
pub fn unregister_all(regs: impl Registration, limit_ms: u64, also: impl Fn() -> bool) -> bool {
    regs.unregister().is_ok() && clock::wait_until(limit_ms, || regs.released() && also())
}

/// Stop's first step: refuses (busy, nothing changed) while control clients
/// are connected or when the control cannot be deregistered.
pub fn close_control(control: &'static ctl::CtlDef, log: &Logger) -> Result<(), KextError> {
    if ctl::clients() != 0 {
        log.line(c"stop refused: control clients connected");
        return Err(KextError::Busy);
    }
    if control.unregister().is_err() {
        log.line(c"stop refused: the control could not be deregistered");
        return Err(KextError::Busy);
    }
    Ok(())
}

/// Start's registration: makes the state, then registers `regs` in order.
/// On a failure every one is unregistered and, once the kernel released them
/// (waiting up to `limit_ms`, until `also()` holds too), the state is freed:
/// `Err(Failed)`, the kext unloads. If they cannot be released in time the
/// kernel could still call the kext's code, so it stays loaded, inactive:
/// `Ok(false)` (a later stop completes). `Ok(true)`: all registered.
pub fn start<T>(
    state: &Global<T>,
    make_state: impl FnOnce() -> Result<(), KextError>,
    regs: impl Registration,
    limit_ms: u64,
    also: impl Fn() -> bool,
    log: &Logger,
) -> Result<bool, KextError> {
    if make_state().and_then(|()| regs.register()).is_ok() {
        return Ok(true);
    }
    log.line(c"start failed; unregistering");
    if !unregister_all(regs, limit_ms, also) {
        log.line(c"start failed and could not be undone yet; staying loaded: unload it later");
        return Ok(false);
    }
    let _ = fini(state);
    Err(KextError::Failed)
}

/// Stop's unregistration: [`close_control`], then [`unregister_all`] of
/// `regs`. When they are not released in time the control is registered
/// again (so prxctl still works; a later kextunload completes the stop),
/// `refused` is logged and stop answers busy.
pub fn unregister_for_stop(
    control: &'static ctl::CtlDef,
    regs: impl Registration,
    limit_ms: u64,
    also: impl Fn() -> bool,
    log: &Logger,
    refused: &CStr,
) -> Result<(), KextError> {
    close_control(control, log)?;
    if !unregister_all(regs, limit_ms, also) {
        let _ = control.register();
        log.line(refused);
        return Err(KextError::Busy);
    }
    Ok(())
}

/// Sets up the kext's allocation tag and lock group (named `name`); undone
/// completely on failure.
pub fn init(name: &'static CStr) -> Result<(), KextError> {
    alloc::init(name).map_err(|_| KextError::Failed)?;
    if lock::init(name).is_err() {
        let _ = alloc::fini();
        return Err(KextError::Failed);
    }
    Ok(())
}

/// Frees the kext's state, then its lock group and allocation tag; `Busy`
/// while a callback uses the state or anything is still allocated.
pub fn fini<T>(state: &Global<T>) -> Result<(), KextError> {
    drop(state.take().map_err(|_| KextError::Busy)?);
    lock::fini().map_err(|_| KextError::Busy)?;
    alloc::fini().map_err(|_| KextError::Busy)
}

/// What a kext's start and stop share, as one `const` of its statics: the
/// steps above with their arguments. A kext whose start is all-or-nothing
/// uses [`Kext::start`]; one with its own registration order uses
/// [`Kext::init`], registers itself and [`Kext::fini`]s on failure.
pub struct Kext<T: 'static, R> {
    /// Names the allocation tag and the lock group ([`init`]).
    pub name: &'static CStr,
    /// The kext's state.
    pub state: &'static Global<T>,
    /// Its control: registered first, deregistered first.
    pub control: &'static ctl::CtlDef,
    /// Its filters (a registration or a tuple of them, in order).
    pub filters: R,
    /// How long start and stop wait for the kernel to release the filters.
    pub wait_ms: u64,
    /// Its log.
    pub log: &'static Logger,
}

impl<T, R: Registration> Kext<T, R> {
    /// [`init`] under the kext's name.
    pub fn init(&self) -> Result<(), KextError> {
        init(self.name)
    }

    /// [`fini`] of the kext's state.
    pub fn fini(&self) -> Result<(), KextError> {
        fini(self.state)
    }

    /// [`init`], then [`start`]: the state made, the control and then the
    /// filters registered; `also` as for [`start`].
    pub fn start(
        &self,
        make_state: impl FnOnce() -> Result<(), KextError>,
        also: impl Fn() -> bool,
    ) -> Result<bool, KextError> {
        self.init()?;
        let regs = (self.control, self.filters);
        start(self.state, make_state, regs, self.wait_ms, also, self.log)
    }

    /// [`unregister_for_stop`] of the filters (`also` and `refused` as
    /// there), then `report()` (the kext's last log lines, its state still
    /// installed), then [`fini`].
    pub fn stop(
        &self,
        also: impl Fn() -> bool,
        refused: &CStr,
        report: impl FnOnce(),
    ) -> Result<(), KextError> {
        let (control, log) = (self.control, self.log);
        unregister_for_stop(control, self.filters, self.wait_ms, also, log, refused)?;
        report();
        self.fini()
    }
}
