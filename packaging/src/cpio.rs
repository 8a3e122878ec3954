//! The component package's `Payload` and `Scripts` archives: cpio "odc"
//! (portable ASCII, magic `070707`), gzip-compressed, written with
//! `cpio_archive::OdcBuilder`.
//!
//! Every header field is set explicitly (uid, gid, mode with its file-type bits,
//! mtime, inode numbered from 1, nlink) so the archive depends on the tree only:
//! the same tree gives the same bytes.

use std::io::Write;

use cpio_archive::odc::{OdcBuilder, OdcHeader};
use flate2::{Compression, GzBuilder};

use crate::pkg::PkgError;
use crate::pkg::tree::{EntryKind, PayloadTree};

/// The uncompressed odc archive of `tree`.
pub fn odc_archive(tree: &PayloadTree) -> Result<Vec<u8>, PkgError> {
    let mut builder = OdcBuilder::new(Vec::new());
    builder.auto_write_dirs(false);
    for (i, e) in tree.entries.iter().enumerate() {
        let data: &[u8] = match &e.kind {
            EntryKind::Dir => &[],
            EntryKind::File(d) => d,
        };
        let header = OdcHeader {
            dev: 0,
            inode: i as u32 + 1,
            mode: e.st_mode(),
            uid: e.uid,
            gid: e.gid,
            nlink: match e.kind {
                EntryKind::Dir => 2,
                EntryKind::File(_) => 1,
            },
            rdev: 0,
            mtime: e.mtime,
            file_size: data.len() as u64,
            name: e.path.clone(),
        };
        builder
            .append_header_with_data(header, data)
            .map_err(|e| PkgError::Archive(format!("cpio: {e}")))?;
    }
    // The trailer header takes its fields from the builder's defaults; make
    // them fixed too.
    builder.default_mtime(chrono::DateTime::<chrono::Utc>::UNIX_EPOCH);
    builder
        .into_inner()
        .map_err(|e| PkgError::Archive(format!("cpio: {e}")))
}

/// gzip with a fixed header (mtime 0, no file name), best compression.
pub fn gzip(data: &[u8]) -> Result<Vec<u8>, PkgError> {
    let mut gz = GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), Compression::best());
    gz.write_all(data)
        .and_then(|_| gz.finish())
        .map_err(|e| PkgError::Archive(format!("gzip: {e}")))
}

/// `Payload`: the gzip-compressed odc archive of `tree`.
pub fn payload(tree: &PayloadTree) -> Result<Vec<u8>, PkgError> {
    gzip(&odc_archive(tree)?)
}
