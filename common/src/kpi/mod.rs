//! Safe wrappers over the raw KPIs in [`crate::sys`].

pub mod clock;
pub mod ipf;
pub mod kmod;
pub mod log;
pub mod mbuf;
pub mod panic;
pub mod ptrauth;

pub use kmod::KextError;
