//! Validates `[package.metadata.kext]` and hands the bundle identifier to
//! `common::kext!` (as PRX_BUNDLE_ID), so kmod_info always equals the Info.plist.
fn main() {
    if let Err(e) = kext_metadata::KextMetadata::emit_build_env() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
