//! vm: smoke scenarios for the prx kexts and the backends that run them.
//!
//! Glossary:
//! - **backend**: where a kext runs. `emu` (this crate, [`emu`]) is a user-space
//!   emulation of the XNU KPIs on x86_64 Linux that loads the shipped x86_64
//!   kext binary itself; `ssh`, `qemu` and `vmware` ([`backend`]) drive a real
//!   Intel macOS guest over ssh.
//! - **scenario**: a named smoke test (load/unload, socket traffic, IP traffic),
//!   run in its own child process with a time limit.
//! - **ledger**: the emulator's bookkeeping of what a kext owns (allocations,
//!   locks, mbufs, filter registrations); anything left over, freed twice or used
//!   after its ownership moved fails the run.
//! - **KPI**: the kernel programming interfaces a kext binds to
//!   (`com.apple.kpi.bsd`, `.libkern`, …); the emulator provides host
//!   implementations of the ones prx's kexts and its C test kexts use.
//!
//! What the emulator proves: the binary loads under kxld's relocation rules, binds
//! only to symbols the emulator models, and its callbacks keep the KPI contracts
//! the emulator checks while real traffic flows. What it cannot: it is not macOS —
//! no preemption, no concurrency, no real kernel memory layout, no code signing or
//! kext approval; timing and the unmodelled parts of XNU are not exercised.
//!
//! `unsafe` lives only in `emu::abi` (the KPI trampolines, `unsafe extern "C"`
//! wherever the kext passes a pointer), `emu::loader`, `emu::child` and
//! `emu::arch`, every block with a `// SAFETY:` comment (denied below, and
//! checked by tests/tests/tidy.rs).

#![deny(clippy::undocumented_unsafe_blocks)]

pub mod backend;
pub mod emu;
pub mod progress;
pub mod report;
