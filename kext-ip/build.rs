//! Validates `[package.metadata.kext]` and hands the bundle identifier to
//! `common::kext!` (as PRX_BUNDLE_ID), so kmod_info always equals the Info.plist;
//! validates `[package.metadata.prx-ip] nat-flows` and hands it to the kext
//! (as PRX_NAT_FLOWS).
use std::path::Path;

/// Same bound as `common::net::nat::MAX_FLOWS`.
const MAX_FLOWS: u64 = 1 << 24;

fn nat_flows(manifest: &Path) -> Result<u64, String> {
    let text =
        std::fs::read_to_string(manifest).map_err(|e| format!("{}: {e}", manifest.display()))?;
    let doc: toml::Table =
        toml::from_str(&text).map_err(|e| format!("{}: {e}", manifest.display()))?;
    let v = doc
        .get("package")
        .and_then(|p| p.get("metadata"))
        .and_then(|m| m.get("prx-ip"))
        .and_then(|t| t.get("nat-flows"));
    let Some(v) = v else {
        return Err(format!(
            "{}: [package.metadata.prx-ip] nat-flows is missing; add `nat-flows = 16384` (flows per address family)",
            manifest.display()
        ));
    };
    match v.as_integer().and_then(|n| u64::try_from(n).ok()) {
        Some(n) if (2..=MAX_FLOWS).contains(&n) && n.is_power_of_two() => Ok(n),
        _ => Err(format!(
            "{}: [package.metadata.prx-ip] nat-flows = {v}: must be a power of two from 2 to {MAX_FLOWS} (e.g. 16384)",
            manifest.display()
        )),
    }
}

fn main() {
    if let Err(e) = packaging::KextMetadata::emit_build_env() {
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
    match nat_flows(&manifest) {
        Ok(n) => println!("cargo::rustc-env=PRX_NAT_FLOWS={n}"),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
