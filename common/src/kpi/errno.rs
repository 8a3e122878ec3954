//! The one errno type of the crate: what a KPI returns on failure and what a
//! callback answers the kernel (`errno_t`, bsd/sys/errno.h).
//!
//! The values are the generated bindings' ([`crate::sys`], from
//! `common/include/prx/errno.h`); none is typed by hand. A value the code needs
//! is added to that header and the bindings regenerated (`cargo xtask bindgen`).
//! `EJUSTRETURN` is not here: it is not an error but the trampolines' "the
//! filter took the mbuf", answered as [`sys::EJUSTRETURN`] directly.

use core::ffi::c_int;

use crate::sys;

/// An errno value (`errno_t`): a KPI's failure, or a callback's refusal.
#[repr(transparent)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(c_int);

impl Errno {
    /// Wraps a value the kernel returned, kept as is.
    pub const fn from_raw(raw: c_int) -> Errno {
        Errno(raw)
    }

    /// The value the kernel sees.
    pub const fn raw(self) -> c_int {
        self.0
    }

    /// A KPI's return value: `0` is success, anything else its errno.
    pub const fn check(ret: c_int) -> Result<(), Errno> {
        if ret == 0 { Ok(()) } else { Err(Errno(ret)) }
    }
}

/// Argument list too long (more rules than the protocol allows).
pub const E2BIG: Errno = Errno(sys::E2BIG);
/// Cannot allocate memory.
pub const ENOMEM: Errno = Errno(sys::ENOMEM);
/// Device or resource busy.
pub const EBUSY: Errno = Errno(sys::EBUSY);
/// Invalid argument.
pub const EINVAL: Errno = Errno(sys::EINVAL);
/// Broken pipe.
pub const EPIPE: Errno = Errno(sys::EPIPE);
/// Message too long.
pub const EMSGSIZE: Errno = Errno(sys::EMSGSIZE);
/// Operation not supported.
pub const ENOTSUP: Errno = Errno(sys::ENOTSUP);
/// Socket is not connected.
pub const ENOTCONN: Errno = Errno(sys::ENOTCONN);
/// Connection refused.
pub const ECONNREFUSED: Errno = Errno(sys::ECONNREFUSED);
/// No route to host.
pub const EHOSTUNREACH: Errno = Errno(sys::EHOSTUNREACH);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_darwins() {
        // bsd/sys/errno.h; Linux differs for most of these.
        for (e, v) in [
            (E2BIG, 7),
            (ENOMEM, 12),
            (EBUSY, 16),
            (EINVAL, 22),
            (EPIPE, 32),
            (EMSGSIZE, 40),
            (ENOTSUP, 45),
            (ENOTCONN, 57),
            (ECONNREFUSED, 61),
            (EHOSTUNREACH, 65),
        ] {
            assert_eq!(e.raw(), v);
        }
        assert_eq!(Errno::check(0), Ok(()));
        assert_eq!(Errno::check(sys::EINVAL), Err(EINVAL));
        assert_eq!(Errno::from_raw(57), ENOTCONN);
    }
}
