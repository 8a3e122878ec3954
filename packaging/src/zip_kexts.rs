//! A `.zip` of the signed kext bundles, for users who install by hand (and the
//! form Apple's notary service accepts for bare kexts). Deterministic: entries
//! in tree order, every timestamp `SOURCE_DATE_EPOCH`, unix modes as in the pkg
//! payload (directories and executables 0755, other files 0644).

use std::io::{Cursor, Write};

use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, DateTime, ZipWriter};

use crate::pkg::PkgError;
use crate::pkg::tree::{EntryKind, PayloadTree};

/// Zips the bundles of `tree` (its `.` entry is skipped; `./X.kext/...`
/// become `X.kext/...`).
pub fn zip_tree(tree: &PayloadTree, epoch: i64) -> Result<Vec<u8>, PkgError> {
    let t = chrono::DateTime::from_timestamp(epoch, 0).unwrap_or_default();
    use chrono::{Datelike, Timelike};
    // DOS timestamps start in 1980.
    let time = DateTime::from_date_and_time(
        t.year().clamp(1980, 2107) as u16,
        t.month() as u8,
        t.day() as u8,
        t.hour() as u8,
        t.minute() as u8,
        t.second() as u8,
    )
    .unwrap_or_default();
    let err = |e: zip::result::ZipError| PkgError::Archive(format!("zip: {e}"));
    let mut zip = ZipWriter::new(Cursor::new(Vec::new()));
    for e in &tree.entries {
        let Some(name) = e.path.strip_prefix("./") else {
            continue;
        };
        let options = SimpleFileOptions::default()
            .compression_method(CompressionMethod::Deflated)
            .last_modified_time(time)
            .unix_permissions(e.perm);
        match &e.kind {
            EntryKind::Dir => zip
                .add_directory(format!("{name}/"), options)
                .map_err(err)?,
            EntryKind::File(data) => {
                zip.start_file(name, options).map_err(err)?;
                zip.write_all(data)
                    .map_err(|e| PkgError::Archive(format!("zip: {e}")))?;
            }
        }
    }
    Ok(zip.finish().map_err(err)?.into_inner())
}
