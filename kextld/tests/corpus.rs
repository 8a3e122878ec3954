//! Real kexts built and linked by their authors with Apple's toolchain
//! (`tests/fixtures/corpus/*/`, each with its LICENSE and PROVENANCE) verify
//! with no error under the third-party policy: the verifier's rules are the
//! loaders' rules, not an imitation of kextld's own output.

use std::path::{Path, PathBuf};
use std::process::Command;

use kextld::kpi::{KpiHistory, KpiTables};
use kextld::verify::{Dependency, Options, Severity, verify_path_with};

fn corpus() -> Vec<(String, PathBuf)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/corpus");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        assert!(entry.path().join("LICENSE").is_file(), "{name}: no LICENSE");
        assert!(
            entry.path().join("PROVENANCE").is_file(),
            "{name}: no PROVENANCE"
        );
        let bundle = entry.path().join(format!("{name}.kext"));
        out.push((name, bundle));
    }
    out.sort();
    out
}

#[test]
fn every_corpus_kext_verifies_without_error() {
    let kexts = corpus();
    assert!(kexts.len() >= 6, "{kexts:?}");
    let lilu = kexts.iter().find(|(n, _)| n == "Lilu").unwrap().1.clone();
    for (name, bundle) in &kexts {
        let mut opts = Options::third_party(KpiTables::builtin(), KpiHistory::builtin());
        if name != "Lilu" {
            opts.dependencies.push(Dependency::read(&lilu).unwrap());
        }
        let report = verify_path_with(bundle, &opts).unwrap();
        assert!(report.is_ok(), "{name}:\n{report}");
        assert_eq!(report.slices.len(), 1, "{name}: one x86_64 slice\n{report}");
        assert!(report.slices[0].kmod_name.is_some(), "{name}\n{report}");
        // Everything not a KPI symbol is accounted for by Lilu or a pad slot.
        assert!(
            !report
                .findings
                .iter()
                .any(|f| f.check == "kpi-symbol" && f.severity == Severity::Warning),
            "{name}:\n{report}"
        );
        // The same kext under prx's own rules is not clean: those rules are stricter
        // than the loaders' (e.g. Lilu's own symbols are no KPI).
        let strict = verify_path_with(bundle, &Options::prx(KpiTables::builtin())).unwrap();
        assert!(!strict.is_ok(), "{name} passes prx's rules?\n{strict}");
    }
}

#[test]
fn dependencies_resolve_imports_and_are_required() {
    let kexts = corpus();
    let nvmefix = &kexts.iter().find(|(n, _)| n == "NVMeFix").unwrap().1;
    let opts = Options::third_party(KpiTables::builtin(), KpiHistory::builtin());
    let report = verify_path_with(nvmefix, &opts).unwrap();
    // Without Lilu given: a warning naming the library, not an error.
    assert!(report.is_ok(), "{report}");
    let w: Vec<String> = report
        .by_check("kpi-symbol")
        .filter(|f| f.severity == Severity::Warning)
        .map(|f| f.message.clone())
        .collect();
    assert_eq!(w.len(), 1, "{report}");
    assert!(
        w[0].contains("as.vit9696.Lilu") && w[0].contains("--dependency"),
        "{w:?}"
    );
}

#[test]
fn cli_checks_a_universal_kext_with_a_foreign_slice_and_a_codeless_kext() {
    let exe = env!("CARGO_BIN_EXE_kextld");
    let kexts = corpus();
    let lilu = &kexts.iter().find(|(n, _)| n == "Lilu").unwrap().1;
    let out = Command::new(exe).arg("verify").arg(lilu).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("info[fat]: slice 1 has cputype 0x00000007"),
        "{stdout}"
    );
    assert!(
        stdout.contains("x86_64: kmod as.vit9696.Lilu 1.6.9"),
        "{stdout}"
    );

    let dir = tempfile::tempdir().unwrap();
    let codeless = dir.path().join("Codeless.kext/Contents");
    std::fs::create_dir_all(&codeless).unwrap();
    std::fs::write(
        codeless.join("Info.plist"),
        r#"<?xml version="1.0" encoding="UTF-8"?>
<plist version="1.0"><dict>
<key>CFBundleIdentifier</key><string>com.example.codeless</string>
<key>CFBundleVersion</key><string>1.0</string>
<key>IOKitPersonalities</key><dict/>
</dict></plist>
"#,
    )
    .unwrap();
    let out = Command::new(exe)
        .arg("verify")
        .arg(dir.path().join("Codeless.kext"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("codeless kext"), "{stdout}");
}
