//! The XAR container of a flat package, written by prx (no crate writes one),
//! and signed / verified / read through `apple-xar`.
//!
//! Layout (all header integers big-endian):
//!
//! ```text
//! 0    header, 28 bytes: "xar!", header size 28 (u16), version 1 (u16),
//!      compressed TOC length (u64), uncompressed TOC length (u64),
//!      checksum algorithm (u32, 1 = sha1)
//! 28   the table of contents: XML, zlib-compressed
//! heap offset 0: sha1 of the compressed TOC (20 bytes), then each file's data
//!      in file-id order; `<data><offset>` counts from the heap start
//! ```
//!
//! The TOC stays inside `apple-xar`'s model (`table_of_contents::XarToC`, which
//! rejects unknown elements) so `XarSigner` can re-write it with signatures:
//! `creation-time`, `checksum`, and per file `name`, `type`, `mode`, `uid`,
//! `gid`, `user`, `group`, `mtime`, `data`, nested `file`s. "application/x-gzip"
//! data is a zlib stream (as in Apple's own archives); "application/octet-stream"
//! is stored as is (used for the already-gzipped Payload and Scripts).

use std::fmt::Write as _;
use std::io::{Cursor, Write};

use apple_xar::reader::XarReader;
use apple_xar::signing::XarSigner;
use apple_xar::table_of_contents::{ChecksumType, FileType};
use flate2::Compression;
use flate2::write::ZlibEncoder;
use sha1::{Digest, Sha1};
use x509_certificate::{CapturedX509Certificate, KeyInfoSigner};

use crate::pkg::PkgError;

/// XAR header size.
pub const HEADER_SIZE: u16 = 28;
/// Most bytes a read TOC may decompress to (prx's are a few KiB).
pub const MAX_TOC_BYTES: u64 = 16 << 20;
/// Most bytes one member read from a XAR may decompress to.
pub const MAX_MEMBER_BYTES: u64 = 64 << 20;
/// Checksum algorithm id for sha1.
pub const CKSUM_SHA1: u32 = 1;
const SHA1_LEN: u64 = 20;

/// How a file's data is stored in the heap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// zlib stream ("application/x-gzip").
    Zlib,
    /// As is ("application/octet-stream").
    Raw,
}

impl Encoding {
    fn style(self) -> &'static str {
        match self {
            Encoding::Zlib => "application/x-gzip",
            Encoding::Raw => "application/octet-stream",
        }
    }
}

/// One member of the archive: a file (with data) or a directory. Paths use `/`;
/// parents must come before children.
#[derive(Debug, Clone)]
pub struct Member {
    /// e.g. `Distribution`, `prx.pkg`, `prx.pkg/Payload`.
    pub path: String,
    /// `None` for a directory.
    pub data: Option<(Vec<u8>, Encoding)>,
    /// Permission bits, e.g. 0o644.
    pub perm: u32,
}

/// Formats seconds since the epoch as XAR's `YYYY-MM-DDTHH:MM:SSZ`.
pub fn xar_time(epoch: i64) -> String {
    chrono::DateTime::from_timestamp(epoch, 0)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

struct Node<'a> {
    member: &'a Member,
    id: usize,
    children: Vec<Node<'a>>,
}

/// Writes an unsigned XAR of `members` (owned by root:wheel, mtime `epoch`).
pub fn write(members: &[Member], epoch: i64) -> Result<Vec<u8>, PkgError> {
    let time = xar_time(epoch);
    // Heap: checksum first, then data in member order (= id order).
    let mut heap_data: Vec<u8> = Vec::new();
    let mut data_xml: Vec<Option<String>> = Vec::with_capacity(members.len());
    for m in members {
        let Some((data, enc)) = &m.data else {
            data_xml.push(None);
            continue;
        };
        let stored = match enc {
            Encoding::Raw => data.clone(),
            Encoding::Zlib => {
                let mut z = ZlibEncoder::new(Vec::new(), Compression::best());
                z.write_all(data)
                    .map_err(|e| PkgError::Archive(format!("zlib: {e}")))?;
                z.finish()
                    .map_err(|e| PkgError::Archive(format!("zlib: {e}")))?
            }
        };
        let offset = SHA1_LEN + heap_data.len() as u64;
        data_xml.push(Some(format!(
            "<data><length>{}</length><offset>{offset}</offset><size>{}</size>\
             <encoding style=\"{}\"/>\
             <extracted-checksum style=\"sha1\">{}</extracted-checksum>\
             <archived-checksum style=\"sha1\">{}</archived-checksum></data>",
            stored.len(),
            data.len(),
            enc.style(),
            hex(&Sha1::digest(data)),
            hex(&Sha1::digest(&stored)),
        )));
        heap_data.extend_from_slice(&stored);
    }

    // Nest members by path.
    let mut roots: Vec<Node> = Vec::new();
    for (i, m) in members.iter().enumerate() {
        let node = Node {
            member: m,
            id: i + 1,
            children: Vec::new(),
        };
        let mut level = &mut roots;
        let parts: Vec<&str> = m.path.split('/').collect();
        for part in &parts[..parts.len() - 1] {
            let pos = level
                .iter()
                .position(|n| n.member.data.is_none() && last(&n.member.path) == *part)
                .ok_or_else(|| {
                    PkgError::Archive(format!(
                        "xar: {}: parent directory not listed before it",
                        m.path
                    ))
                })?;
            level = &mut level[pos].children;
        }
        level.push(node);
    }

    let mut toc = String::new();
    toc.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<xar>\n<toc>\n");
    let _ = writeln!(toc, "<creation-time>{time}</creation-time>");
    let _ = writeln!(
        toc,
        "<checksum style=\"sha1\"><offset>0</offset><size>{SHA1_LEN}</size></checksum>"
    );
    fn emit(toc: &mut String, n: &Node, data_xml: &[Option<String>], time: &str) {
        let m = n.member;
        let _ = write!(toc, "<file id=\"{}\">", n.id);
        if let Some(d) = &data_xml[n.id - 1] {
            toc.push_str(d);
        }
        let _ = write!(
            toc,
            "<mtime>{time}</mtime><group>wheel</group><gid>0</gid><user>root</user><uid>0</uid>\
             <mode>{:04o}</mode><type>{}</type><name>{}</name>",
            m.perm,
            if m.data.is_some() {
                "file"
            } else {
                "directory"
            },
            xml_escape(last(&m.path)),
        );
        for c in &n.children {
            toc.push('\n');
            emit(toc, c, data_xml, time);
        }
        toc.push_str("</file>\n");
    }
    for n in &roots {
        emit(&mut toc, n, &data_xml, &time);
    }
    toc.push_str("</toc>\n</xar>\n");

    let mut z = ZlibEncoder::new(Vec::new(), Compression::best());
    z.write_all(toc.as_bytes())
        .map_err(|e| PkgError::Archive(format!("zlib: {e}")))?;
    let toc_z = z
        .finish()
        .map_err(|e| PkgError::Archive(format!("zlib: {e}")))?;

    let mut out = Vec::with_capacity(28 + toc_z.len() + 20 + heap_data.len());
    out.extend_from_slice(b"xar!");
    out.extend_from_slice(&HEADER_SIZE.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&(toc_z.len() as u64).to_be_bytes());
    out.extend_from_slice(&(toc.len() as u64).to_be_bytes());
    out.extend_from_slice(&CKSUM_SHA1.to_be_bytes());
    out.extend_from_slice(&toc_z);
    out.extend_from_slice(&Sha1::digest(&toc_z));
    out.extend_from_slice(&heap_data);
    Ok(out)
}

fn last(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn xar_err(what: &str) -> impl FnOnce(apple_xar::Error) -> PkgError + '_ {
    move |e| PkgError::Archive(format!("{what}: {e}"))
}

/// Signs an (unsigned) XAR with an RSA `<signature>` and a CMS `<x-signature>`
/// (apple-xar's `XarSigner`). The key must be RSA (XAR's RSA signature);
/// `chain` is embedded after the signing certificate; `timestamp_url` asks a
/// time-stamp server to countersign the CMS signature.
pub fn sign(
    unsigned: &[u8],
    key: &dyn KeyInfoSigner,
    cert: &CapturedX509Certificate,
    chain: &[CapturedX509Certificate],
    timestamp_url: Option<&str>,
) -> Result<Vec<u8>, PkgError> {
    let timestamp_url = timestamp_url
        .map(|u| {
            reqwest::Url::parse(u)
                .map_err(|e| PkgError::Archive(format!("time-stamp URL {u:?}: {e}")))
        })
        .transpose()?;
    let reader =
        XarReader::new(Cursor::new(unsigned)).map_err(xar_err("reading the XAR to sign"))?;
    let mut signer = XarSigner::new(reader);
    let mut out = Vec::new();
    signer
        .sign(
            &mut out,
            key,
            cert,
            timestamp_url.as_ref(),
            chain.iter().cloned(),
        )
        .map_err(xar_err("signing the XAR"))?;
    Ok(out)
}

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XarVerification {
    /// The TOC checksum matches the compressed TOC.
    pub toc_checksum: bool,
    /// An RSA signature is present and verifies against its first certificate.
    pub rsa_signature: bool,
    /// A CMS signature is present and verifies (signature and message digest).
    pub cms_signature: bool,
    /// Common name of the signing certificate, if signed.
    pub signer: Option<String>,
    /// Every file's archived and extracted sha1 matched.
    pub file_checksums: usize,
}

/// A writer that refuses to grow past `limit` bytes (decompression bombs).
struct Bounded<'a> {
    out: &'a mut Vec<u8>,
    limit: u64,
    what: String,
}

impl Write for Bounded<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.out.len() as u64 + buf.len() as u64 > self.limit {
            return Err(std::io::Error::other(format!(
                "{} expands beyond {} bytes (a decompression bomb?)",
                self.what, self.limit
            )));
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn be_u16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

/// Opens a XAR read from an untrusted file: every length and offset the
/// header and the TOC declare is checked against the file (and the TOC's and
/// members' expansion bounded) *before* `apple-xar` allocates by them, so a
/// hostile archive gets an error, never an abort (`apple-xar` allocates the
/// declared uncompressed TOC length, and checksum and signature sizes, up front).
fn open(xar: &[u8]) -> Result<XarReader<Cursor<&[u8]>>, PkgError> {
    let bad = |m: String| PkgError::Verify(format!("not a valid XAR: {m}"));
    if xar.len() < usize::from(HEADER_SIZE) || &xar[..4] != b"xar!" {
        return Err(bad("no 28-byte header starting with \"xar!\"".into()));
    }
    let header = u64::from(be_u16(xar, 4));
    let toc_z = be_u64(xar, 8);
    let toc_len = be_u64(xar, 16);
    let file = xar.len() as u64;
    if header < u64::from(HEADER_SIZE) || header > file {
        return Err(bad(format!(
            "header size {header} (28 to the file's {file} bytes)"
        )));
    }
    if toc_z > file - header {
        return Err(bad(format!(
            "the compressed TOC length {toc_z} runs past the end of the {file}-byte file"
        )));
    }
    if toc_len > MAX_TOC_BYTES {
        return Err(bad(format!(
            "the TOC claims {toc_len} bytes uncompressed (at most {MAX_TOC_BYTES} accepted)"
        )));
    }
    // Decompress the TOC here, bounded, before apple-xar does it unbounded.
    let start = header as usize;
    let mut toc = Vec::new();
    let mut w = Bounded {
        out: &mut toc,
        limit: toc_len,
        what: "the TOC".into(),
    };
    let mut z = flate2::write::ZlibDecoder::new(&mut w);
    z.write_all(&xar[start..start + toc_z as usize])
        .and_then(|()| z.finish().map(|_| ()))
        .map_err(|e| bad(format!("TOC: {e}")))?;
    let r = XarReader::new(Cursor::new(xar)).map_err(xar_err("reading the XAR"))?;
    let heap = file - header - toc_z;
    let within = |what: &str, offset: u64, size: u64| {
        if offset.checked_add(size).is_none_or(|end| end > heap) {
            Err(bad(format!(
                "{what} (offset {offset}, {size} bytes) lies outside the {heap}-byte heap"
            )))
        } else {
            Ok(())
        }
    };
    let t = r.table_of_contents();
    within("the TOC checksum", t.checksum.offset, t.checksum.size)?;
    for sig in t.signatures() {
        within("a signature", sig.offset, sig.size)?;
    }
    for (path, f) in r.files().map_err(xar_err("listing the XAR"))? {
        if let Some(d) = &f.data {
            within(&path, d.offset, d.length)?;
        }
    }
    Ok(r)
}

/// Decodes `file`'s data, at most [`MAX_MEMBER_BYTES`].
fn decoded(
    r: &mut XarReader<Cursor<&[u8]>>,
    path: &str,
    file: &apple_xar::table_of_contents::File,
) -> Result<Vec<u8>, PkgError> {
    let mut data = Vec::new();
    let mut w = Bounded {
        out: &mut data,
        limit: MAX_MEMBER_BYTES,
        what: path.to_string(),
    };
    r.write_file_data_decoded_from_file(file, &mut w)
        .map_err(xar_err("decoding file data"))?;
    Ok(data)
}

/// Verifies a XAR: the TOC checksum, each file's archived/extracted checksum,
/// and the RSA and CMS signatures when present. Any mismatch is an error; an
/// absent signature is reported as `false`.
pub fn verify(xar: &[u8]) -> Result<XarVerification, PkgError> {
    let mut r = open(xar)?;
    let toc_checksum = r
        .verify_table_of_contents_checksum()
        .map_err(xar_err("checking the TOC checksum"))?;
    if !toc_checksum {
        return Err(PkgError::Verify(
            "XAR TOC checksum does not match the table of contents".into(),
        ));
    }
    let mut file_checksums = 0;
    for (path, file) in r.files().map_err(xar_err("listing the XAR"))? {
        let Some(data) = &file.data else { continue };
        let mut stored = Vec::new();
        r.write_file_data_heap_from_file(&file, &mut stored)
            .map_err(xar_err("reading file data"))?;
        let archived = data
            .archived_checksum
            .style
            .digest_data(&stored)
            .map_err(xar_err("digesting"))?;
        if hex(&archived) != data.archived_checksum.checksum.to_ascii_lowercase() {
            return Err(PkgError::Verify(format!(
                "{path}: archived checksum mismatch"
            )));
        }
        let decoded = decoded(&mut r, &path, &file)?;
        let extracted = data
            .extracted_checksum
            .style
            .digest_data(&decoded)
            .map_err(xar_err("digesting"))?;
        if hex(&extracted) != data.extracted_checksum.checksum.to_ascii_lowercase() {
            return Err(PkgError::Verify(format!(
                "{path}: extracted checksum mismatch"
            )));
        }
        file_checksums += 1;
    }
    let rsa_signature = r
        .verify_rsa_checksum_signature()
        .map_err(xar_err("RSA signature does not verify"))?;
    let cms_signature = r
        .verify_cms_signature()
        .map_err(xar_err("CMS signature does not verify"))?;
    let signer = match r
        .rsa_signature()
        .map_err(xar_err("reading the RSA signature"))?
    {
        Some((_, certs)) => certs.first().and_then(|c| c.subject_common_name()),
        None => None,
    };
    Ok(XarVerification {
        toc_checksum,
        rsa_signature,
        cms_signature,
        signer,
        file_checksums,
    })
}

/// One member read back: path, whether it is a directory, mode, decoded data.
#[derive(Debug, Clone)]
pub struct ReadMember {
    /// Full path inside the archive.
    pub path: String,
    /// True for a directory.
    pub is_dir: bool,
    /// The `<mode>` text, if any.
    pub mode: Option<String>,
    /// Decoded contents (empty for directories).
    pub data: Vec<u8>,
}

/// Reads every member of a XAR (decoded).
pub fn read_all(xar: &[u8]) -> Result<Vec<ReadMember>, PkgError> {
    let mut r = open(xar)?;
    let mut out = Vec::new();
    for (path, file) in r.files().map_err(xar_err("listing the XAR"))? {
        let data = if file.data.is_some() {
            decoded(&mut r, &path, &file)?
        } else {
            Vec::new()
        };
        out.push(ReadMember {
            path,
            is_dir: matches!(file.file_type, FileType::Directory),
            mode: file.mode.clone(),
            data,
        });
    }
    Ok(out)
}

/// The checksum algorithm the TOC declares (prx writes sha1).
pub fn toc_checksum_style(xar: &[u8]) -> Result<&'static str, PkgError> {
    let r = open(xar)?;
    Ok(match r.table_of_contents().checksum.style {
        ChecksumType::Sha1 => "sha1",
        ChecksumType::Sha256 => "sha256",
        ChecksumType::Sha512 => "sha512",
        ChecksumType::Md5 => "md5",
        ChecksumType::None => "none",
    })
}
