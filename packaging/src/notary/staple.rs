//! Stapling a notarization ticket to a flat package (XAR), offline: given the
//! ticket bytes, append what Apple's `stapler` appends after the XAR heap:
//!
//! ```text
//! [16-byte trailer: terminator] [ticket bytes] [16-byte trailer: ticket]
//! ```
//!
//! Each trailer is little-endian: magic `t8lr`, version u16 = 1, type u16
//! (1 terminator, 2 ticket), length u32 (the ticket's length; 0 for the
//! terminator), 4 unused bytes. Readers find the ticket from the end of the
//! file; XAR readers ignore bytes after the heap.

use std::io::{Cursor, Write};
use std::path::Path;

use apple_xar::reader::XarReader;
use apple_xar::table_of_contents::ChecksumType;

use super::{NotaryError, hex};

/// Trailer magic.
pub const TRAILER_MAGIC: [u8; 4] = *b"t8lr";
const TRAILER_LEN: usize = 16;

fn trailer(typ: u16, length: u32) -> [u8; TRAILER_LEN] {
    let mut t = [0u8; TRAILER_LEN];
    t[..4].copy_from_slice(&TRAILER_MAGIC);
    t[4..6].copy_from_slice(&1u16.to_le_bytes());
    t[6..8].copy_from_slice(&typ.to_le_bytes());
    t[8..12].copy_from_slice(&length.to_le_bytes());
    t
}

/// The bytes appended to a XAR to staple `ticket`.
pub fn notarization_trailer(ticket: &[u8]) -> Result<Vec<u8>, NotaryError> {
    let len =
        u32::try_from(ticket.len()).map_err(|_| NotaryError::Staple("ticket too large".into()))?;
    if ticket.is_empty() {
        return Err(NotaryError::Staple("empty ticket".into()));
    }
    let mut out = Vec::with_capacity(ticket.len() + 2 * TRAILER_LEN);
    out.extend_from_slice(&trailer(1, 0));
    out.extend_from_slice(ticket);
    out.extend_from_slice(&trailer(2, len));
    Ok(out)
}

/// Where a stapled ticket sits: `(start of the stapled region, ticket range)`.
pub fn find_ticket(pkg: &[u8]) -> Option<(usize, std::ops::Range<usize>)> {
    let n = pkg.len();
    if n < 2 * TRAILER_LEN {
        return None;
    }
    let t = &pkg[n - TRAILER_LEN..];
    if t[..4] != TRAILER_MAGIC || u16::from_le_bytes([t[6], t[7]]) != 2 {
        return None;
    }
    let len = u32::from_le_bytes([t[8], t[9], t[10], t[11]]) as usize;
    let ticket_start = n.checked_sub(TRAILER_LEN + len)?;
    let start = ticket_start.checked_sub(TRAILER_LEN)?;
    let term = &pkg[start..ticket_start];
    if term[..4] != TRAILER_MAGIC || u16::from_le_bytes([term[6], term[7]]) != 1 {
        return None;
    }
    Some((start, ticket_start..n - TRAILER_LEN))
}

/// The stapled ticket, if any.
pub fn ticket(pkg: &[u8]) -> Option<&[u8]> {
    find_ticket(pkg).map(|(_, r)| &pkg[r])
}

/// The pkg without a stapled ticket (itself when there is none).
pub fn without_ticket(pkg: &[u8]) -> &[u8] {
    find_ticket(pkg).map_or(pkg, |(start, _)| &pkg[..start])
}

/// The CloudKit record name of a flat package's ticket:
/// `2/<digest type>/<hex of the first 20 bytes of the TOC checksum>`.
pub fn record_name(pkg: &[u8]) -> Result<String, NotaryError> {
    let mut r = XarReader::new(Cursor::new(pkg))
        .map_err(|e| NotaryError::Staple(format!("not a XAR archive: {e}")))?;
    let digest_type = match r.table_of_contents().checksum.style {
        ChecksumType::Sha1 => 1,
        ChecksumType::Sha256 => 2,
        ChecksumType::Sha512 => 5,
        other => {
            return Err(NotaryError::Staple(format!(
                "unsupported TOC checksum {other:?}"
            )));
        }
    };
    let mut digest = r
        .checksum_data()
        .map_err(|e| NotaryError::Staple(format!("reading the TOC checksum: {e}")))?;
    digest.truncate(20);
    Ok(format!("2/{digest_type}/{}", hex(&digest)))
}

/// `pkg` with `ticket` stapled (an existing stapled ticket is replaced).
pub fn staple(pkg: &[u8], ticket: &[u8]) -> Result<Vec<u8>, NotaryError> {
    let base = without_ticket(pkg);
    // Refuse anything that is not a XAR.
    record_name(base)?;
    let mut out = base.to_vec();
    out.extend_from_slice(&notarization_trailer(ticket)?);
    Ok(out)
}

/// Staples `ticket` to the pkg at `path`: writes a temporary file in the same
/// directory (same permissions), syncs it and renames it over the pkg, so the
/// pkg is either the old one or the stapled one, never half-written.
pub fn staple_file(path: &Path, ticket: &[u8]) -> Result<(), NotaryError> {
    let io = |action: &'static str| {
        move |source| NotaryError::Io {
            path: path.to_path_buf(),
            action,
            source,
        }
    };
    let data = std::fs::read(path).map_err(io("cannot read the pkg"))?;
    let perms = std::fs::metadata(path)
        .map_err(io("cannot stat the pkg"))?
        .permissions();
    let stapled = staple(&data, ticket)?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".prx-staple-")
        .tempfile_in(dir)
        .map_err(io("cannot create a temporary file next to the pkg"))?;
    tmp.write_all(&stapled)
        .map_err(io("writing the stapled pkg"))?;
    tmp.as_file()
        .sync_all()
        .map_err(io("writing the stapled pkg"))?;
    std::fs::set_permissions(tmp.path(), perms).map_err(io("setting permissions"))?;
    tmp.persist(path).map_err(|e| NotaryError::Io {
        path: path.to_path_buf(),
        action: "renaming the stapled pkg into place",
        source: e.error,
    })?;
    Ok(())
}
