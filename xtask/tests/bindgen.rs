//! `cargo xtask bindgen --check` as a test: the committed `common/src/sys/*.rs`
//! must equal fresh output, so a hand edit or a header change without
//! regeneration cannot land. Needs libclang 19 (Debian: libclang-19-dev); without
//! it the test fails and says so — it is never skipped.

use std::path::Path;
use std::sync::Mutex;

use xtask::bindgen;

/// bindgen runs one generation at a time per process here, to keep libclang's
/// diagnostics and the tests' output apart.
static LIBCLANG: Mutex<()> = Mutex::new(());

#[test]
fn committed_bindings_are_up_to_date() {
    let _guard = LIBCLANG.lock().unwrap_or_else(|e| e.into_inner());
    let root = xtask::workspace_root();
    if let Err(e) = bindgen::check(&root, None) {
        panic!("{e:#}");
    }
}

#[test]
fn check_fails_after_editing_a_generated_file() {
    let _guard = LIBCLANG.lock().unwrap_or_else(|e| e.into_inner());
    let root = xtask::workspace_root();
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(
        &root.join(bindgen::INCLUDE_DIR),
        &tmp.path().join(bindgen::INCLUDE_DIR),
    );
    for t in bindgen::TARGETS {
        let to = tmp.path().join(t.file);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(root.join(t.file), &to).unwrap();
    }
    bindgen::check(tmp.path(), None).expect("an unmodified copy passes the check");

    // A hand edit: one field's type changed in the arm64e file.
    let file = tmp.path().join(bindgen::TARGETS[1].file);
    let text = std::fs::read_to_string(&file).unwrap();
    let edited = text.replacen("pub sf_flags: ::core::ffi::c_int,", "pub sf_flags: u32,", 1);
    assert_ne!(text, edited, "the edit must apply");
    std::fs::write(&file, &edited).unwrap();
    let line = 1 + text
        .lines()
        .take_while(|l| !l.contains("pub sf_flags:"))
        .count();

    let err = format!("{:#}", bindgen::check(tmp.path(), None).unwrap_err());
    assert!(err.contains(bindgen::TARGETS[1].file), "{err}");
    assert!(err.contains(&format!("at line {line}:")), "{err}");
    assert!(err.contains("pub sf_flags: u32"), "{err}");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}
