//! Validates `[package.metadata.kext]` and hands the bundle identifier to
//! `common::kext!` (as PRX_BUNDLE_ID), so kmod_info always equals the Info.plist;
//! validates `[package.metadata.prx-ip] nat-flows` and hands it to the kext
//! (as PRX_NAT_FLOWS).
use std::path::Path;

use kext_metadata::{KextMetadata, PowerOfTwoSetting};

/// The NAT tables' capacity per address family; `max` is
/// `common::net::nat::MAX_FLOWS`.
const NAT_FLOWS: PowerOfTwoSetting<'static> = PowerOfTwoSetting {
    table: "prx-ip",
    key: "nat-flows",
    min: 2,
    max: 1 << 24,
    example: 16384,
    unit: "flows per address family",
};

fn main() {
    if let Err(e) = KextMetadata::emit_build_env() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
    // The arm64e negative control builds a copy with one callback slot left
    // unmarked (common::sign_slot!'s label form).
    println!(
        "cargo::rustc-check-cfg=cfg(prx_unmarked_slot, values(\"ipf_input\", \"ipf_output\", \"ipf_detach\"))"
    );
    let dir = std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default();
    let manifest = Path::new(&dir).join("Cargo.toml");
    match NAT_FLOWS.load(&manifest) {
        Ok(n) => println!("cargo::rustc-env=PRX_NAT_FLOWS={n}"),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
