//! Safe wrappers over the raw KPIs in [`crate::sys`].

pub mod kmod;
pub mod log;
pub mod panic;
pub mod ptrauth;

pub use kmod::KextError;
