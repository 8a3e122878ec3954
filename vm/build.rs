//! Compiles the variadic KPI shims (printf, IOLog, snprintf) of the emulator.
fn main() {
    println!("cargo:rerun-if-changed=src/emu/shims.c");
    cc::Build::new()
        .file("src/emu/shims.c")
        .warnings(true)
        .compile("prx_emu_shims");
}
