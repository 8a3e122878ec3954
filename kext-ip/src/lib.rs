//! PrxIPFilter.kext.
//!
//! Status: a minimal, loadable kext. Start logs a line and succeeds, stop succeeds.
//! The IP filter itself (packet-level NAT to a proxy) is not implemented yet.
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
    log::line(c"PrxIPFilter started (no filter registered yet)");
    Ok(())
}

fn stop() -> Result<(), KextError> {
    log::line(c"PrxIPFilter stopped");
    Ok(())
}

common::kext!(start: start, stop: stop);
