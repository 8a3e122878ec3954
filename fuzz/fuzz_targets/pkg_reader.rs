//! Fuzzes `cargo xtask package --check`'s reader of untrusted packages
//! (`packaging::xar`, `packaging::pkg::check`): any bytes must give a report or
//! an error — never a panic, an abort on a declared length, or a file written
//! outside the staging directory.
#![no_main]

use libfuzzer_sys::fuzz_target;

fn files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() && !p.is_symlink() {
                files(&p, out);
            }
            out.push(p);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = packaging::xar::toc_checksum_style(data);
    let _ = packaging::xar::verify(data);
    if packaging::xar::read_all(data).is_err() {
        return;
    }
    // Only archives that read get the (file-writing) install check.
    let Ok(tmp) = tempfile::tempdir() else { return };
    let pkg = tmp.path().join("in.pkg");
    let staging = tmp.path().join("a/b/staging");
    if std::fs::write(&pkg, data).is_err() {
        return;
    }
    let _ = packaging::pkg::check::check(&pkg, &staging);
    let mut all = Vec::new();
    files(tmp.path(), &mut all);
    for p in all {
        assert!(
            p == pkg || p.starts_with(&staging) || staging.starts_with(&p),
            "written outside the staging root: {}",
            p.display()
        );
    }
});
