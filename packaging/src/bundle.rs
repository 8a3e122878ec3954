//! Laying out a kext bundle on disk:
//!
//! ```text
//! <out_dir>/<executable>.kext/
//!     Contents/Info.plist            (0644)
//!     Contents/MacOS/<executable>    (0755)
//! ```
//!
//! [`write_bundle`] is idempotent and never leaves a half-written bundle:
//! - if the bundle already holds exactly these two files with these bytes and
//!   modes, nothing is touched (`changed == false`, mtimes kept, so timestamp-based
//!   tools see no change);
//! - otherwise the new bundle is built in a hidden temporary sibling
//!   (`.<executable>.kext.new-*`), synced, and swapped in by renames: the old
//!   bundle is renamed aside (`.<executable>.kext.old-*`), the new one renamed into
//!   place, and the old one deleted. An interrupted run leaves either the old
//!   bundle or the new one complete at the final path (or, between the two renames,
//!   the old one complete under its aside name), plus at most a hidden leftover
//!   that the next run does not depend on. Anything else that was inside the old
//!   bundle does not survive: every bundle is written fresh.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use kext_metadata::KextMetadata;

/// Mode of `Contents/MacOS/<executable>`.
pub const EXECUTABLE_MODE: u32 = 0o755;
/// Mode of `Contents/Info.plist`.
pub const PLIST_MODE: u32 = 0o644;
/// Mode of the bundle's directories.
const DIR_MODE: u32 = 0o755;

/// A bundle write that failed: what was being done, to which path.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// A file-system operation failed.
    #[error("{path}: cannot {action}: {source}")]
    Io {
        /// The path operated on.
        path: PathBuf,
        /// What was being done ("create directory", "write", "rename to …").
        action: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Something that is not a directory is in the bundle's place.
    #[error(
        "{path}: exists and is not a directory; remove it so the kext bundle can be written there"
    )]
    NotADirectory {
        /// The bundle path.
        path: PathBuf,
    },
}

/// The result of [`write_bundle`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleWritten {
    /// `<out_dir>/<executable>.kext`.
    pub path: PathBuf,
    /// Size of `Contents/MacOS/<executable>` in bytes.
    pub executable_size: u64,
    /// False when an identical bundle was already there and nothing was written.
    pub changed: bool,
}

fn io_err(path: &Path, action: impl Into<String>) -> impl FnOnce(std::io::Error) -> BundleError {
    let (path, action) = (path.to_owned(), action.into());
    move |source| BundleError::Io {
        path,
        action,
        source,
    }
}

/// Writes (or leaves alone, if identical) `<out_dir>/<meta.executable>.kext`.
pub fn write_bundle(
    out_dir: &Path,
    meta: &KextMetadata,
    info_plist: &[u8],
    executable: &[u8],
) -> Result<BundleWritten, BundleError> {
    let name = format!("{}.kext", meta.executable);
    let path = out_dir.join(&name);
    let written = |changed| BundleWritten {
        path: path.clone(),
        executable_size: executable.len() as u64,
        changed,
    };

    let existing = fs::symlink_metadata(&path).ok();
    if let Some(m) = &existing {
        if !m.is_dir() {
            return Err(BundleError::NotADirectory { path });
        }
        if is_identical(&path, &meta.executable, info_plist, executable) {
            return Ok(written(false));
        }
    }

    fs::create_dir_all(out_dir).map_err(io_err(out_dir, "create directory"))?;
    let new = tempfile::Builder::new()
        .prefix(&format!(".{name}.new-"))
        .tempdir_in(out_dir)
        .map_err(io_err(out_dir, "create a temporary directory"))?;
    let contents = new.path().join("Contents");
    let macos = contents.join("MacOS");
    fs::create_dir_all(&macos).map_err(io_err(&macos, "create directory"))?;
    for dir in [new.path(), &contents, &macos] {
        set_mode(dir, DIR_MODE)?;
    }
    write_file(&contents.join("Info.plist"), info_plist, PLIST_MODE)?;
    write_file(&macos.join(&meta.executable), executable, EXECUTABLE_MODE)?;

    // Move the old bundle aside (into an empty temporary directory, which rename(2)
    // replaces); it is deleted when `old` drops, after the new bundle is in place.
    let old = match existing {
        None => None,
        Some(_) => {
            let old = tempfile::Builder::new()
                .prefix(&format!(".{name}.old-"))
                .tempdir_in(out_dir)
                .map_err(io_err(out_dir, "create a temporary directory"))?;
            fs::rename(&path, old.path())
                .map_err(io_err(&path, format!("rename to {}", old.path().display())))?;
            Some(old)
        }
    };
    let new_path = new.keep();
    if let Err(e) = fs::rename(&new_path, &path) {
        // Put the old bundle back so the final path is never left empty by an error.
        if let Some(old) = old {
            let _ = fs::rename(old.keep(), &path);
        }
        let _ = fs::remove_dir_all(&new_path);
        return Err(io_err(&new_path, format!("rename to {}", path.display()))(
            e,
        ));
    }
    if let Some(old) = old {
        let old_path = old.path().to_owned();
        old.close()
            .map_err(io_err(&old_path, "remove the replaced bundle"))?;
    }
    sync_dir(out_dir);
    Ok(written(true))
}

/// Whether `bundle` holds exactly `Contents/Info.plist` and `Contents/MacOS/<exe>`
/// with these bytes (and modes, on unix).
fn is_identical(bundle: &Path, exe: &str, info_plist: &[u8], executable: &[u8]) -> bool {
    let only = |dir: &Path, names: &[&str]| -> bool {
        let Ok(entries) = fs::read_dir(dir) else {
            return false;
        };
        let mut found: Vec<String> = entries
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect();
        found.sort();
        found == names
    };
    let contents = bundle.join("Contents");
    let macos = contents.join("MacOS");
    only(bundle, &["Contents"])
        && only(&contents, &["Info.plist", "MacOS"])
        && only(&macos, &[exe])
        && same_file(&contents.join("Info.plist"), info_plist, PLIST_MODE)
        && same_file(&macos.join(exe), executable, EXECUTABLE_MODE)
}

fn same_file(path: &Path, bytes: &[u8], mode: u32) -> bool {
    let Ok(m) = fs::symlink_metadata(path) else {
        return false;
    };
    m.is_file()
        && m.len() == bytes.len() as u64
        && mode_is(&m, mode)
        && fs::read(path).is_ok_and(|b| b == bytes)
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), BundleError> {
    let mut f = fs::File::create(path).map_err(io_err(path, "create"))?;
    f.write_all(bytes).map_err(io_err(path, "write"))?;
    set_mode(path, mode)?;
    f.sync_all().map_err(io_err(path, "sync"))
}

#[cfg(unix)]
fn mode_is(m: &fs::Metadata, mode: u32) -> bool {
    use std::os::unix::fs::PermissionsExt;
    m.permissions().mode() & 0o7777 == mode
}

#[cfg(not(unix))]
fn mode_is(_: &fs::Metadata, _: u32) -> bool {
    true
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> Result<(), BundleError> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(io_err(path, format!("chmod {mode:o}")))
}

#[cfg(not(unix))]
fn set_mode(_: &Path, _: u32) -> Result<(), BundleError> {
    Ok(())
}

/// Best effort: make the renames durable (directories cannot be opened for sync everywhere).
fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> KextMetadata {
        KextMetadata::parse(
            Path::new("kext-x/Cargo.toml"),
            "[package]\nname = \"kext-x\"\nversion = \"1.0.0\"\n[package.metadata.kext]\n\
             bundle-identifier = \"net.prx.kext.X\"\ndisplay-name = \"X\"\nexecutable = \"PrxX\"\n\
             copyright = \"(c) prx\"\n",
        )
        .unwrap()
    }

    fn mtime(p: &Path) -> std::time::SystemTime {
        fs::metadata(p).unwrap().modified().unwrap()
    }

    /// Names in `dir`, sorted.
    fn listing(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn lays_out_the_bundle() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out/kexts");
        let w = write_bundle(&out, &meta(), b"<plist/>", b"\xcf\xfa\xed\xfe binary").unwrap();
        assert_eq!(
            w,
            BundleWritten {
                path: out.join("PrxX.kext"),
                executable_size: 11,
                changed: true
            }
        );
        assert_eq!(
            fs::read(w.path.join("Contents/Info.plist")).unwrap(),
            b"<plist/>"
        );
        assert_eq!(
            fs::read(w.path.join("Contents/MacOS/PrxX")).unwrap(),
            b"\xcf\xfa\xed\xfe binary"
        );
        assert_eq!(listing(&out), ["PrxX.kext"], "no temporary leftovers");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &str| fs::metadata(w.path.join(p)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode("Contents/MacOS/PrxX"), 0o755);
            assert_eq!(mode("Contents/Info.plist"), 0o644);
            assert_eq!(mode("Contents/MacOS"), 0o755);
        }
    }

    #[test]
    fn identical_bundle_is_not_rewritten() {
        let tmp = tempfile::tempdir().unwrap();
        let w = write_bundle(tmp.path(), &meta(), b"plist", b"exe").unwrap();
        let files = [
            w.path.join("Contents/Info.plist"),
            w.path.join("Contents/MacOS/PrxX"),
        ];
        let before: Vec<_> = files.iter().map(|f| mtime(f)).collect();
        let bundle_before = mtime(&w.path);
        std::thread::sleep(std::time::Duration::from_millis(20));
        let again = write_bundle(tmp.path(), &meta(), b"plist", b"exe").unwrap();
        assert!(!again.changed);
        assert_eq!(again.path, w.path);
        let after: Vec<_> = files.iter().map(|f| mtime(f)).collect();
        assert_eq!(before, after);
        assert_eq!(bundle_before, mtime(&w.path));
        assert_eq!(listing(tmp.path()), ["PrxX.kext"]);
    }

    #[test]
    fn changed_content_replaces_the_bundle_fresh() {
        let tmp = tempfile::tempdir().unwrap();
        let w = write_bundle(tmp.path(), &meta(), b"plist", b"exe").unwrap();
        fs::write(w.path.join("Contents/stale.txt"), b"left over").unwrap();
        fs::create_dir(w.path.join("Contents/Resources")).unwrap();

        // Same two files but an extra file: not identical, rewritten without it.
        let w2 = write_bundle(tmp.path(), &meta(), b"plist", b"exe").unwrap();
        assert!(w2.changed);
        assert!(!w.path.join("Contents/stale.txt").exists());
        assert!(!w.path.join("Contents/Resources").exists());

        let w3 = write_bundle(tmp.path(), &meta(), b"plist", b"new executable").unwrap();
        assert!(w3.changed);
        assert_eq!(w3.executable_size, 14);
        assert_eq!(
            fs::read(w.path.join("Contents/MacOS/PrxX")).unwrap(),
            b"new executable"
        );
        assert_eq!(listing(&w.path.join("Contents")), ["Info.plist", "MacOS"]);
        assert_eq!(listing(tmp.path()), ["PrxX.kext"], "no temporary leftovers");

        let w4 = write_bundle(tmp.path(), &meta(), b"new plist", b"new executable").unwrap();
        assert!(w4.changed);
        assert_eq!(
            fs::read(w.path.join("Contents/Info.plist")).unwrap(),
            b"new plist"
        );
    }

    #[cfg(unix)]
    #[test]
    fn wrong_mode_is_repaired() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let w = write_bundle(tmp.path(), &meta(), b"plist", b"exe").unwrap();
        let exe = w.path.join("Contents/MacOS/PrxX");
        fs::set_permissions(&exe, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(
            write_bundle(tmp.path(), &meta(), b"plist", b"exe")
                .unwrap()
                .changed
        );
        assert_eq!(
            fs::metadata(&exe).unwrap().permissions().mode() & 0o777,
            0o755
        );
    }

    #[test]
    fn errors_name_the_path() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("PrxX.kext"), b"not a bundle").unwrap();
        let e = write_bundle(tmp.path(), &meta(), b"p", b"e")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("PrxX.kext") && e.contains("not a directory"),
            "{e}"
        );

        let file = tmp.path().join("a-file");
        fs::write(&file, b"x").unwrap();
        let e = write_bundle(&file.join("sub"), &meta(), b"p", b"e")
            .unwrap_err()
            .to_string();
        assert!(e.contains("a-file/sub"), "{e}");
    }
}
