//! A kext whose panic path survives optimisation must not build: the fixture
//! crate `tests/fixtures/kext-panicky` indexes out of bounds with a value the
//! optimiser cannot see; the linked binary then references common's panic-path
//! symbol and `kextld verify` rejects it, naming the function.

use kextld::{Arch, MinOs};

#[test]
fn surviving_panic_path_is_rejected_by_the_verifier() {
    let root = prx_tests::root();
    let libs = xtask::build::build_staticlibs(
        &root,
        &root.join("target"),
        Arch::X86_64,
        MinOs::X86_64_DEFAULT,
        true,
        &["kext-panicky"],
    )
    .expect("the fixture compiles");
    let linked = kextld::link::link(&kextld::link::LinkOptions {
        arch: Arch::X86_64,
        min_os: MinOs::X86_64_DEFAULT,
        inputs: vec![libs["kext-panicky"].clone()],
        source_version: 0,
    })
    .expect("the fixture links (the verifier, not the linker, rejects it)");
    assert!(
        linked
            .undefined
            .iter()
            .any(|s| s == "_prx_panic_path_survived_optimisation"),
        "the panic handler's symbol is referenced: {:?}",
        linked.undefined
    );
    let report = kextld::verify::verify(&linked.bytes, kextld::kpi::KpiTables::builtin());
    assert!(
        !report.is_ok(),
        "verify accepted a kext with a panic path:\n{report}"
    );
    let finding = report
        .findings
        .iter()
        .find(|f| f.check == "panic-path")
        .unwrap_or_else(|| panic!("no panic-path finding in:\n{report}"));
    assert!(
        finding
            .message
            .contains("reachable from kext_panicky::__prx_kmod_start"),
        "names the kext function, demangled: {}",
        finding.message
    );
}

#[test]
fn shipped_kexts_have_no_panic_path() {
    for b in prx_tests::release_bundles() {
        let exe = prx_tests::executable_of(&b.path);
        let nm = prx_tests::tool("llvm-nm-19", &["-u", exe.to_str().unwrap()]);
        assert!(!nm.contains("prx_panic_path"), "{}: {nm}", b.path.display());
    }
}
