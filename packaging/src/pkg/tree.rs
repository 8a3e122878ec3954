//! The installed tree a component package carries: every path below the
//! install location with its type, mode, owner and contents.
//!
//! One [`PayloadTree`] feeds both the cpio `Payload` and the `Bom`, so the two
//! cannot disagree. Paths are written the way `pkgbuild` writes them: the install
//! location itself is `.`, everything else `./<relative path>`, parents before
//! children, siblings sorted by name (bytewise).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::PkgError;

/// `root` (uid 0).
pub const ROOT_UID: u32 = 0;
/// `wheel` (gid 0).
pub const WHEEL_GID: u32 = 0;
/// Directories, and files that have an execute bit in the source (the kext
/// executables): `rwxr-xr-x`.
pub const DIR_MODE: u32 = 0o755;
/// Executable files (`Contents/MacOS/*`): `rwxr-xr-x`.
pub const EXEC_MODE: u32 = 0o755;
/// Every other file: `rw-r--r--`.
pub const FILE_MODE: u32 = 0o644;

/// What a path is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A directory.
    Dir,
    /// A regular file and its bytes.
    File(Vec<u8>),
}

/// One path of the installed tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// `.` or `./a/b`.
    pub path: String,
    /// Directory or file (with contents).
    pub kind: EntryKind,
    /// Permission bits only (no file-type bits), e.g. `0o644`.
    pub perm: u32,
    /// Owner (always [`ROOT_UID`] in prx's packages).
    pub uid: u32,
    /// Group (always [`WHEEL_GID`]).
    pub gid: u32,
    /// Modification time, seconds since the epoch (`SOURCE_DATE_EPOCH`).
    pub mtime: u32,
}

impl Entry {
    /// The full `st_mode`: file-type bits (`S_IFDIR` 0o040000 / `S_IFREG`
    /// 0o100000) plus permissions.
    pub fn st_mode(&self) -> u32 {
        match self.kind {
            EntryKind::Dir => 0o040000 | self.perm,
            EntryKind::File(_) => 0o100000 | self.perm,
        }
    }

    /// File size (0 for directories).
    pub fn size(&self) -> u64 {
        match &self.kind {
            EntryKind::Dir => 0,
            EntryKind::File(d) => d.len() as u64,
        }
    }
}

/// The whole tree, in archive order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PayloadTree {
    /// Parents before children; `.` first.
    pub entries: Vec<Entry>,
}

impl PayloadTree {
    /// A tree holding only the install location `.` (root:wheel 0755).
    pub fn new(mtime: u32) -> PayloadTree {
        PayloadTree {
            entries: vec![Entry {
                path: ".".into(),
                kind: EntryKind::Dir,
                perm: DIR_MODE,
                uid: ROOT_UID,
                gid: WHEEL_GID,
                mtime,
            }],
        }
    }

    /// Adds the directory `src` (a bundle) as `./<name>` with everything below
    /// it, owned by root:wheel; directories 0755, files 0755 when the source has
    /// an execute bit (the bundle executable) and 0644 otherwise. Symbolic links
    /// and other special files are refused: a kext bundle has none.
    pub fn add_dir(&mut self, src: &Path, name: &str, mtime: u32) -> Result<(), PkgError> {
        self.walk(src, &format!("./{name}"), mtime)
    }

    fn walk(&mut self, src: &Path, path: &str, mtime: u32) -> Result<(), PkgError> {
        let meta = fs::symlink_metadata(src).map_err(PkgError::io(src, "read metadata of"))?;
        let ft = meta.file_type();
        if ft.is_dir() {
            self.entries.push(Entry {
                path: path.to_string(),
                kind: EntryKind::Dir,
                perm: DIR_MODE,
                uid: ROOT_UID,
                gid: WHEEL_GID,
                mtime,
            });
            let mut names: Vec<_> = fs::read_dir(src)
                .map_err(PkgError::io(src, "list"))?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<Result<_, _>>()
                .map_err(PkgError::io(src, "list"))?;
            names.sort();
            for n in names {
                let s = n.to_str().ok_or_else(|| PkgError::Input {
                    path: src.join(&n),
                    what: "file name is not UTF-8".into(),
                })?;
                self.walk(&src.join(&n), &format!("{path}/{s}"), mtime)?;
            }
        } else if ft.is_file() {
            let data = fs::read(src).map_err(PkgError::io(src, "read"))?;
            let perm = if meta.permissions().mode() & 0o111 != 0 {
                EXEC_MODE
            } else {
                FILE_MODE
            };
            self.entries.push(Entry {
                path: path.to_string(),
                kind: EntryKind::File(data),
                perm,
                uid: ROOT_UID,
                gid: WHEEL_GID,
                mtime,
            });
        } else {
            return Err(PkgError::Input {
                path: src.to_path_buf(),
                what: "is a symbolic link or special file; a kext bundle holds only directories and regular files".into(),
            });
        }
        Ok(())
    }

    /// Adds the directory `./<path>` and its missing parents (root:wheel 0755).
    pub fn add_dirs(&mut self, path: &str, mtime: u32) {
        let mut at = String::from(".");
        for part in path.split('/').filter(|p| !p.is_empty()) {
            at = format!("{at}/{part}");
            if !self.entries.iter().any(|e| e.path == at) {
                self.entries.push(Entry {
                    path: at.clone(),
                    kind: EntryKind::Dir,
                    perm: DIR_MODE,
                    uid: ROOT_UID,
                    gid: WHEEL_GID,
                    mtime,
                });
            }
        }
    }

    /// Adds the file `./<path>` (root:wheel, `perm`) and its missing parents.
    pub fn add_file(&mut self, path: &str, data: Vec<u8>, perm: u32, mtime: u32) {
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.add_dirs(parent, mtime);
        }
        self.entries.push(Entry {
            path: format!("./{path}"),
            kind: EntryKind::File(data),
            perm,
            uid: ROOT_UID,
            gid: WHEEL_GID,
            mtime,
        });
    }

    /// Puts the entries in archive order: `.` first, parents before children,
    /// siblings by name (bytewise).
    pub fn sort(&mut self) {
        self.entries.sort_by(|a, b| {
            let ka: Vec<&str> = a.path.split('/').collect();
            let kb: Vec<&str> = b.path.split('/').collect();
            ka.cmp(&kb)
        });
    }

    /// Number of entries (what PackageInfo calls `numberOfFiles`).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the tree has no entries at all.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Installed size in KiB as Installer counts it: files rounded up to 4 KiB
    /// blocks, directories one block each.
    pub fn install_kbytes(&self) -> u64 {
        self.entries
            .iter()
            .map(|e| match &e.kind {
                EntryKind::Dir => 4,
                EntryKind::File(d) => (d.len() as u64).div_ceil(4096) * 4,
            })
            .sum()
    }
}
