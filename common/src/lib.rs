//! Kernel-side code shared by the prx kexts.
//!
//! Glossary:
//! - **KPI** (kernel programming interface): the symbols xnu exports to third-party
//!   kexts, grouped in sets such as `com.apple.kpi.bsd` and `com.apple.kpi.libkern`.
//! - **kmod_info**: the `kmod_info_t` record every kext exports as `_kmod_info`; the
//!   loader fills in its address and size and calls its `start`/`stop` routines.
//!
//! Layers: [`sys`] holds the raw declarations (C layouts, `extern "C"` functions);
//! [`kpi`] wraps them in safe Rust. The kext crates call the kernel only through
//! [`kpi`] (they name a few constants of [`sys`], never a function), take their
//! logic from [`net`], and contain no `unsafe`.
//!
//! This crate is built for the kernel targets with `-Cpanic=abort` and for the host
//! (its unit tests). A panic in a kext is a kernel panic, so kernel paths use no
//! `unwrap`, `expect`, indexing or overflowing arithmetic; the lints below enforce it,
//! and the `kernel` feature's panic handler makes any panic path that survives
//! optimisation a link-time error (see [`kpi::panic`]).
#![cfg_attr(not(test), no_std)]
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::todo,
    clippy::unimplemented,
    clippy::unreachable,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::float_arithmetic,
    clippy::undocumented_unsafe_blocks
)]
#![warn(missing_docs)]

pub mod kpi;
pub mod net;
pub mod sys;
