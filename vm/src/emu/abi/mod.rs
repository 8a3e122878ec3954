//! The host side of the KPIs: `extern "C"` functions the kext's undefined
//! symbols are bound to, and the calls from the emulator into the kext's
//! callbacks.
//!
//! Layers inside: [`call`] (pointer helpers, [`call::invoke`]) below [`mbuf`] and
//! [`ctl`], below [`net`] (filters, the socket data path, deferred work), below
//! [`libkern`], below this module's symbol table.
//!
//! This is the trampoline layer: it turns the raw pointers a kext passes into
//! safe values for [`super::kernel`] and its models, and back. Every `unsafe`
//! block here says which KPI contract makes the access valid. A pointer that
//! breaks the contract (NULL where the KPI forbids it) is reported as a
//! violation when it can be detected, and otherwise faults the scenario's child
//! process, which is reported with the faulting address.

pub mod call;
pub mod ctl;
pub mod libkern;
pub mod mbuf;
pub mod net;

/// Host address of the implementation of kext symbol `name` (Mach-O spelling).
pub fn lookup(name: &str) -> Option<u64> {
    symbols().iter().find(|(n, _)| *n == name).map(|&(_, a)| a)
}

/// Every symbol the emulator provides, sorted by name.
pub fn symbols() -> Vec<(&'static str, u64)> {
    let mut v = Vec::new();
    v.extend(libkern::symbols());
    v.extend(mbuf::symbols());
    v.extend(net::symbols());
    v.extend(ctl::symbols());
    v.sort();
    v
}
