//! Logging through the kernel's `printf` (com.apple.kpi.libkern).

use core::ffi::CStr;

use crate::sys;

/// Writes one line to the kernel log: `prx: <message>`.
pub fn line(message: &CStr) {
    // SAFETY: the format is a NUL-terminated literal with one `%s`, matched by one
    // NUL-terminated C string argument; kernel printf does not retain either.
    unsafe {
        sys::printf(c"prx: %s\n".as_ptr(), message.as_ptr());
    }
}

/// Writes one line `prx: <what> <name>=<value>` (statistics).
pub fn counter(what: &CStr, name: &CStr, value: u64) {
    // SAFETY: the format has two `%s` matched by NUL-terminated C strings and
    // one `%llu` matched by a u64 (`unsigned long long` on both kernels).
    unsafe {
        sys::printf(
            c"prx: %s %s=%llu\n".as_ptr(),
            what.as_ptr(),
            name.as_ptr(),
            value,
        );
    }
}

use core::fmt;
use core::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use crate::net::kextlog::{self, Admit, LimiterState, LineBuf, LogLevel};

/// A kext's decision log: a level set through the control and a rate limiter
/// ([`kextlog::admit`], [`kextlog::BURST`] lines per second) shared by every
/// CPU through one atomic word. Lines read `prx: <Kext>: <text>`.
pub struct Logger {
    kext: &'static CStr,
    level: AtomicU8,
    limiter: AtomicU64,
    suppressed: AtomicU64,
}

impl Logger {
    /// A logger for `kext` (e.g. `c"PrxSocketFilter"`) at the default level.
    pub const fn new(kext: &'static CStr) -> Logger {
        Logger {
            kext,
            level: AtomicU8::new(LogLevel::Decisions as u8),
            limiter: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// The level.
    pub fn level(&self) -> LogLevel {
        LogLevel::from_u8(self.level.load(Ordering::Relaxed)).unwrap_or_default()
    }

    /// Sets the level (logged, whatever the level).
    pub fn set_level(&self, level: LogLevel) {
        self.level.store(level as u8, Ordering::Relaxed);
        self.emit(format_args!("log level {}", level.name()));
    }

    /// Whether lines at `level` are logged (check before formatting costly parts).
    pub fn enabled(&self, level: LogLevel) -> bool {
        level != LogLevel::Off && level <= self.level()
    }

    /// Lines dropped by the rate limiter since start.
    pub fn suppressed(&self) -> u64 {
        self.suppressed.load(Ordering::Relaxed)
    }

    /// Logs one line at `level`, if the level and the rate limit allow.
    pub fn log(&self, level: LogLevel, args: fmt::Arguments<'_>) {
        if !self.enabled(level) {
            return;
        }
        let now = super::clock::uptime_ms();
        let mut cur = self.limiter.load(Ordering::Relaxed);
        let admit = loop {
            let (next, a) = kextlog::admit(LimiterState::unpack(cur), now, kextlog::BURST);
            match self.limiter.compare_exchange_weak(
                cur,
                next.pack(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break a,
                Err(seen) => cur = seen,
            }
        };
        match admit {
            Admit::Drop => {
                self.suppressed.fetch_add(1, Ordering::Relaxed);
            }
            Admit::Log { suppressed } => {
                if suppressed > 0 {
                    self.emit(format_args!(
                        "{} line(s) suppressed (rate limit: {} per second)",
                        kextlog::Dec::u(suppressed),
                        kextlog::Dec::u(kextlog::BURST)
                    ));
                }
                self.emit(args);
            }
        }
    }

    /// Writes `prx: <Kext>: <args>` (cut to 240 bytes).
    fn emit(&self, args: fmt::Arguments<'_>) {
        let mut b = LineBuf::<240>::default();
        let _ = fmt::write(&mut b, args);
        let Ok(text) = CStr::from_bytes_with_nul(b.as_bytes_with_nul()) else {
            return;
        };
        // SAFETY: the format has two `%s`, matched by two NUL-terminated C
        // strings; kernel printf does not retain either.
        unsafe {
            sys::printf(c"prx: %s: %s\n".as_ptr(), self.kext.as_ptr(), text.as_ptr());
        }
    }
}

impl Logger {
    /// Writes `prx: <Kext>: <text>`, whatever the level and the rate (start
    /// and stop).
    pub fn line(&self, text: &CStr) {
        // SAFETY: the format has two `%s`, matched by two NUL-terminated C
        // strings; kernel printf does not retain either.
        unsafe {
            sys::printf(c"prx: %s: %s\n".as_ptr(), self.kext.as_ptr(), text.as_ptr());
        }
    }

    /// Writes `prx: <Kext> <key>=<value>` (a counter at stop, as [`counter`]).
    pub fn key_value(&self, key: &CStr, value: u64) {
        counter(self.kext, key, value);
    }

    /// Writes `prx: <Kext>: <counter name> = <value>` (statistics at stop;
    /// not rate-limited, not subject to the level).
    pub fn counter(&self, id: u32, value: u64) {
        self.emit(format_args!(
            "{} = {}",
            crate::net::control::stat::StatName(id),
            kextlog::Dec::u(value)
        ));
    }

    /// Writes each of `counters` in their order, as [`Logger::counter`].
    pub fn counters<const N: usize>(&self, counters: &crate::net::control::StatCounters<N>) {
        for (id, n) in counters.each() {
            self.counter(id, n);
        }
    }
}
