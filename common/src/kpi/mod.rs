//! Safe wrappers over the raw KPIs in [`crate::sys`].
//!
//! - [`errno`]: [`Errno`], the one errno type, and the values prx uses.
//! - [`alloc`]: fallible kernel allocation ([`alloc::KBox`], [`alloc::KSlice`]).
//! - [`lock`]: mutex and read-write lock guards over `lck_*`.
//! - [`global`]: the kext's state, reachable from callbacks, freed only when unused.
//! - [`sflt`]: the [`sflt::SocketFilter`] trait and its `sflt_filter` trampolines.
//! - [`ctl`]: the [`ctl::Control`] trait and its `kern_ctl_reg` trampolines.
//! - [`proc`]: the current process.
//! - [`ipf`], [`mbuf`]: the IP filter's trampolines and packets.
//! - [`clock`], [`random`]: uptime and the kernel's random generator.
//! - [`rules`]: the shared rule set in kernel memory, built from a control message.
//! - [`config`]: the filters' shared configuration and kern_control.
//! - [`lifecycle`]: one registration shape for sflt/ipf/ctl; start and stop's steps.
//! - [`natpath`]: the IP filter's packet path (copy, rewrite, settle).
//! - [`redirect`]: the socket filter's redirected connections (the decision
//!   carried out, the original destination, the PROXY v2 header).

pub mod alloc;
pub mod clock;
pub mod config;
pub mod ctl;
pub mod errno;
pub mod global;
pub mod ipf;
pub mod kmod;
pub mod lifecycle;
pub mod lock;
pub mod log;
pub mod mbuf;
pub mod natpath;
pub mod panic;
pub mod proc;
pub mod ptrauth;
pub mod random;
pub mod redirect;
pub mod rules;
pub mod sflt;

pub use errno::Errno;
pub use kmod::KextError;
