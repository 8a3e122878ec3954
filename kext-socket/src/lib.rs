//! PrxSocketFilter.kext.
//!
//! Status: a minimal, loadable kext. Start logs a line and succeeds, stop succeeds.
//! The socket filter itself (rule-based TCP redirection) is not implemented yet.
#![no_std]
#![forbid(unsafe_code)]
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::float_arithmetic
)]

use common::kpi::{KextError, log};

fn start() -> Result<(), KextError> {
    log::line(c"PrxSocketFilter started (no filter registered yet)");
    Ok(())
}

fn stop() -> Result<(), KextError> {
    log::line(c"PrxSocketFilter stopped");
    Ok(())
}

common::kext!(start: start, stop: stop);
