//! The emulator's loader maps, relocates and fills in `kmod_info` of real kexts
//! linked by Apple's toolchain (kextld's corpus, `kextld/tests/fixtures/corpus`,
//! each with its LICENSE and PROVENANCE), binding every undefined symbol to a
//! trap. Nothing in them runs: start is not called.

use std::path::Path;

use kextld::kpi::{KpiHistory, KpiTables};
use kextld::verify::{Options, verify_path_with};
use vm::emu::{image, loader};

/// Every undefined symbol is bound here: a kext calling it would abort.
extern "C" fn trap() {
    std::process::abort();
}

#[test]
fn corpus_kexts_map_relocate_and_yield_kmod_info() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../kextld/tests/fixtures/corpus");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(names.len() >= 6, "{names:?}");
    let trap_addr = trap as *const () as u64;
    for (tag, name) in names.iter().enumerate() {
        let bundle = dir.join(name).join(format!("{name}.kext"));
        // What kextld's verifier (its own Mach-O reader) reads from kmod_info.
        let opts = Options::third_party(KpiTables::builtin(), KpiHistory::builtin());
        let report = verify_path_with(&bundle, &opts).unwrap();
        let want_name = report.slices[0].kmod_name.clone().unwrap();
        let want_version = report.slices[0].kmod_version.clone().unwrap();

        let img = image::read(&bundle).unwrap_or_else(|e| panic!("{name}: {e}"));
        let undefined = img.undefined().len();
        assert!(undefined > 100, "{name}: {undefined} undefined symbols");
        let kext = loader::load(img, &|_| Some(trap_addr), tag as i32 + 1)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(kext.name, want_name, "{name}");
        assert_eq!(kext.version, want_version, "{name}");
        assert_eq!(
            kext.stub_symbols.len(),
            undefined,
            "{name}: every symbol bound"
        );
        assert!(
            kext.contains_code(kext.start),
            "{name}: start {:#x}",
            kext.start
        );
        assert!(
            kext.contains_code(kext.stop),
            "{name}: stop {:#x}",
            kext.stop
        );
    }
}
