//! Safe wrappers over the raw KPIs in [`crate::sys`].

pub mod kmod;
pub mod log;
pub mod panic;

pub use kmod::KextError;
