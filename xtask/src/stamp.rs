//! Build stamps: how a repeated `cargo xtask build` with nothing changed
//! skips its nested cargo runs, linking, verifying and bundling.
//!
//! A stamp (`<target>/xtask-stamps/<name>.json`) records, for one step with
//! one set of options, the fingerprint of its inputs as they were **before**
//! the step ran, and the outputs it wrote (path, size, modification time, and
//! what the step reports about them). The next run skips the step only when
//! the inputs' fingerprint is the same and every output is still as written;
//! anything else (a source touched, a file added or removed, another
//! toolchain, other options, an output changed or deleted, a stamp that does
//! not parse) runs the step in full, as before, which then writes a new stamp.
//! Taking the fingerprint before the step means a file edited while the step
//! ran differs from the stamp next time: a stamp is never newer than what the
//! step read.
//!
//! The inputs are everything a nested cargo could read that xtask can see
//! without running a program: every file of the workspace outside `target`
//! directories and `.git` (path, size, modification time, so also files added
//! or removed), the cargo configuration files cargo would read outside it
//! (the workspace's ancestors' `.cargo/config*`, `$CARGO_HOME/config*`), the
//! running xtask executable and the toolchain's `cargo` and `rustc`
//! (size and modification time: another toolchain, or xtask changed), and
//! the environment (every variable but the few that name the terminal or the
//! shell's state). Dependencies from crates.io are fixed by `Cargo.lock`.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use anyhow::{Context, Result};

/// Variables that do not affect a build (the shell's and terminal's state).
const VOLATILE_ENV: [&str; 9] = [
    "OLDPWD",
    "PWD",
    "SHLVL",
    "_",
    "TERM",
    "COLUMNS",
    "LINES",
    "SSH_TTY",
    "TMUX_PANE",
];

/// Size and modification time (nanoseconds since the epoch) of a file;
/// `None` when it does not exist.
fn file_id(path: &Path) -> Option<(u64, u128)> {
    let m = std::fs::metadata(path).ok()?;
    let t = m
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    Some((m.len(), t))
}

/// Hashes every file under `dir` (skipping `target` directories, `.git`
/// and `skip`) in a fixed order.
fn hash_tree(dir: &Path, skip: &Path, h: &mut impl Hasher) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok())
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let name = e.file_name();
        if name == ".git" || name == "target" || path == skip {
            continue;
        }
        let Ok(ty) = e.file_type() else { continue };
        if ty.is_dir() {
            hash_tree(&path, skip, h)?;
        } else {
            path.hash(h);
            file_id(&path).hash(h);
            if ty.is_symlink() {
                std::fs::read_link(&path).ok().hash(h);
            }
        }
    }
    Ok(())
}

/// The fingerprint of a step's inputs (see the module docs) and of `key`
/// (the step's name and options).
pub fn inputs(root: &Path, target: &Path, key: &str) -> Result<String> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    "prx-xtask-stamp-1".hash(&mut h);
    key.hash(&mut h);
    hash_tree(root, target, &mut h)?;
    // Cargo configuration outside the workspace.
    for dir in root.ancestors().skip(1) {
        for f in ["config", "config.toml"] {
            let p = dir.join(".cargo").join(f);
            file_id(&p).hash(&mut h);
        }
    }
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    if let Some(home) = cargo_home {
        for f in ["config", "config.toml"] {
            file_id(&home.join(f)).hash(&mut h);
        }
    }
    // The programs: this xtask, the toolchain's cargo and rustc.
    std::env::current_exe()
        .ok()
        .as_deref()
        .and_then(file_id)
        .hash(&mut h);
    let cargo = crate::toolchain::cargo();
    cargo.hash(&mut h);
    file_id(&cargo).hash(&mut h);
    if let Some(bin) = cargo.parent() {
        file_id(&bin.join("rustc")).hash(&mut h);
    }
    // The environment, sorted (the variables `cargo run` sets for xtask are
    // removed from every nested cargo, so they do not count).
    let env: BTreeMap<_, _> = std::env::vars_os()
        .filter(|(k, _)| {
            k.to_str().is_none_or(|k| {
                !VOLATILE_ENV.contains(&k) && !crate::toolchain::set_by_cargo_run(k)
            })
        })
        .collect();
    env.hash(&mut h);
    Ok(format!("{:016x}", h.finish()))
}

/// A short hash of `s` (stamp names for option sets).
pub fn short_hash(s: &str) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.hash(&mut h);
    format!("{:08x}", h.finish() & 0xffff_ffff)
}

/// An output file as written.
fn output_id(path: &Path) -> Option<String> {
    file_id(path).map(|(len, t)| format!("{len}:{t}"))
}

/// Every file under `path` (or `path` itself), for [`write`]'s `outputs`.
pub fn files_under(path: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        match std::fs::read_dir(&p) {
            Ok(rd) => stack.extend(rd.filter_map(|e| e.ok()).map(|e| e.path())),
            Err(_) => out.push(p),
        }
    }
    out.sort();
    out
}

fn stamp_path(target: &Path, name: &str) -> PathBuf {
    target.join("xtask-stamps").join(format!("{name}.json"))
}

/// What the stamp `name` recorded (`report`), when the inputs' fingerprint
/// is still `fingerprint` and every output is as the step left it.
pub fn fresh(target: &Path, name: &str, fingerprint: &str) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(stamp_path(target, name)).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    if v["inputs"].as_str() != Some(fingerprint) {
        return None;
    }
    let outputs = v["outputs"].as_object()?;
    if outputs.is_empty() {
        return None;
    }
    for (path, id) in outputs {
        if output_id(Path::new(path)).as_deref() != Some(id.as_str()?) {
            return None;
        }
    }
    Some(v["report"].clone())
}

/// Records that the step `name` ran with inputs `fingerprint` (taken before
/// it ran) and wrote `outputs`; `report` is given back by [`fresh`].
pub fn write(
    target: &Path,
    name: &str,
    fingerprint: &str,
    outputs: &[PathBuf],
    report: serde_json::Value,
) -> Result<()> {
    let mut ids = serde_json::Map::new();
    for p in outputs {
        let id =
            output_id(p).with_context(|| format!("{}: just written, now missing", p.display()))?;
        ids.insert(p.display().to_string(), id.into());
    }
    let v = serde_json::json!({ "inputs": fingerprint, "outputs": ids, "report": report });
    let path = stamp_path(target, name);
    let dir = path.parent().context("stamp path without a directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(&v)? + "\n")
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("moving {} into place", path.display()))
}

/// Removes the stamp `name` (before a step runs: a step that fails leaves
/// none behind).
pub fn remove(target: &Path, name: &str) {
    let _ = std::fs::remove_file(stamp_path(target, name));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_mtime(p: &Path, secs: u64) {
        let f = std::fs::File::options().write(true).open(p).unwrap();
        f.set_modified(UNIX_EPOCH + std::time::Duration::from_secs(secs))
            .unwrap();
    }

    /// The fingerprint changes with every kind of input change the module
    /// docs name, and only then; `fresh` refuses a changed or missing output.
    #[test]
    fn a_stamp_is_never_stale() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("ws");
        let target = root.join("target");
        std::fs::create_dir_all(root.join("src")).unwrap();
        std::fs::create_dir_all(target.join("out")).unwrap();
        let src = root.join("src/lib.rs");
        std::fs::write(&src, "fn a() {}").unwrap();
        set_mtime(&src, 1_000);
        let fp = || inputs(&root, &target, "k").unwrap();
        let first = fp();
        assert_eq!(fp(), first, "nothing changed");
        // Output under target/ does not count as input.
        std::fs::write(target.join("out/x"), "1").unwrap();
        assert_eq!(fp(), first);
        // Another key (options).
        assert_ne!(inputs(&root, &target, "k2").unwrap(), first);
        // Touched (same content, new time).
        set_mtime(&src, 1_001);
        let touched = fp();
        assert_ne!(touched, first);
        // Same time, other size.
        std::fs::write(&src, "fn a() { }").unwrap();
        set_mtime(&src, 1_001);
        let resized = fp();
        assert_ne!(resized, touched);
        // A file added, then removed.
        let new = root.join("src/new.rs");
        std::fs::write(&new, "").unwrap();
        let added = fp();
        assert_ne!(added, resized);
        std::fs::remove_file(&new).unwrap();
        assert_eq!(fp(), resized);

        // fresh: same inputs and outputs as written.
        let out = target.join("out/x");
        write(
            &target,
            "s",
            &resized,
            std::slice::from_ref(&out),
            serde_json::json!([1]),
        )
        .unwrap();
        assert_eq!(fresh(&target, "s", &resized), Some(serde_json::json!([1])));
        assert_eq!(fresh(&target, "s", &first), None, "other inputs");
        std::fs::write(&out, "22").unwrap();
        assert_eq!(fresh(&target, "s", &resized), None, "output changed");
        write(
            &target,
            "s",
            &resized,
            std::slice::from_ref(&out),
            serde_json::json!([1]),
        )
        .unwrap();
        std::fs::remove_file(&out).unwrap();
        assert_eq!(fresh(&target, "s", &resized), None, "output removed");
        remove(&target, "s");
        assert_eq!(fresh(&target, "s", &resized), None, "stamp removed");
    }
}
