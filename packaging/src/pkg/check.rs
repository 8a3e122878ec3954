//! `cargo xtask package --check PKG`: expand a product archive the way macOS
//! Installer does and report what would be installed.
//!
//! Steps: verify the XAR (TOC checksum, every file's checksums, RSA and CMS
//! signatures when present); read `Distribution` (title, minimum OS, host
//! architectures, root volume only, the `pkg-ref`s); for each component read
//! `PackageInfo` (identifier, version, install location, auth), extract the
//! `Payload` into `<staging>/<install-location>` (refusing absolute paths and
//! `..`), compare it with the `Bom`, and list `Scripts`. Ownership cannot be
//! applied without root, so the report shows the owners and modes recorded in
//! the payload, which are what Installer applies.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path};

use cpio_archive::CpioReader;

use super::PkgError;
use crate::xar::{self, XarVerification};

/// One installed path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// Absolute path on the target volume, e.g. `/Library/Extensions/X.kext`.
    pub path: String,
    /// Full mode (type bits + permissions).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes.
    pub size: u64,
}

impl Installed {
    /// `ls -l`-style rendering of the mode, e.g. `drwxr-xr-x`.
    pub fn mode_string(&self) -> String {
        let mut s = String::with_capacity(10);
        s.push(if self.mode & 0o170000 == 0o040000 {
            'd'
        } else {
            '-'
        });
        for shift in [6, 3, 0] {
            let bits = (self.mode >> shift) & 7;
            s.push(if bits & 4 != 0 { 'r' } else { '-' });
            s.push(if bits & 2 != 0 { 'w' } else { '-' });
            s.push(if bits & 1 != 0 { 'x' } else { '-' });
        }
        s
    }
}

/// A component package as the check saw it.
#[derive(Debug, Clone)]
pub struct ComponentReport {
    /// Member directory, e.g. `prx.pkg`.
    pub name: String,
    /// PackageInfo identifier.
    pub identifier: String,
    /// PackageInfo version.
    pub version: String,
    /// PackageInfo install-location.
    pub install_location: String,
    /// PackageInfo auth.
    pub auth: String,
    /// The installed tree, in payload order.
    pub installed: Vec<Installed>,
    /// Scripts in `Scripts` (name, mode).
    pub scripts: Vec<(String, u32)>,
}

/// The result of [`check`].
#[derive(Debug, Clone)]
pub struct CheckReport {
    /// XAR checksums and signatures.
    pub xar: XarVerification,
    /// Distribution title.
    pub title: String,
    /// Distribution minimum OS.
    pub min_os: Option<String>,
    /// Distribution hostArchitectures.
    pub host_architectures: Option<String>,
    /// Distribution rootVolumeOnly.
    pub root_volume_only: bool,
    /// onConclusion of the pkg-refs.
    pub on_conclusion: Vec<String>,
    /// The components referenced by Distribution.
    pub components: Vec<ComponentReport>,
}

impl std::fmt::Display for CheckReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "xar: TOC checksum ok, {} file checksums ok, RSA signature: {}, CMS signature: {}{}",
            self.xar.file_checksums,
            if self.xar.rsa_signature {
                "valid"
            } else {
                "none"
            },
            if self.xar.cms_signature {
                "valid"
            } else {
                "none"
            },
            self.xar
                .signer
                .as_ref()
                .map(|s| format!(" (signed by {s:?})"))
                .unwrap_or_default()
        )?;
        writeln!(
            f,
            "distribution: {:?}, macOS >= {}, host architectures {}, root volume only: {}, on conclusion: {}",
            self.title,
            self.min_os.as_deref().unwrap_or("(any)"),
            self.host_architectures.as_deref().unwrap_or("(any)"),
            self.root_volume_only,
            self.on_conclusion.join(",")
        )?;
        for c in &self.components {
            writeln!(
                f,
                "component {}: {} {} -> {} (auth {}), scripts: {}",
                c.name,
                c.identifier,
                c.version,
                c.install_location,
                c.auth,
                c.scripts
                    .iter()
                    .map(|(n, m)| format!("{n} ({:o})", m & 0o7777))
                    .collect::<Vec<_>>()
                    .join(", ")
            )?;
            for i in &c.installed {
                writeln!(
                    f,
                    "  {} {}:{} {:>8} {}",
                    i.mode_string(),
                    owner(i.uid, "root"),
                    owner(i.gid, "wheel"),
                    i.size,
                    i.path
                )?;
            }
        }
        Ok(())
    }
}

fn owner(id: u32, zero: &str) -> String {
    if id == 0 {
        zero.to_string()
    } else {
        id.to_string()
    }
}

/// Elements of an XML document: (name, attributes, text).
type Elements = Vec<(String, BTreeMap<String, String>, String)>;

fn xml_elements(data: &[u8], what: &str) -> Result<Elements, PkgError> {
    use xml::reader::{EventReader, XmlEvent};
    let mut out: Elements = Vec::new();
    let mut stack: Vec<usize> = Vec::new();
    for ev in EventReader::new(data) {
        match ev.map_err(|e| PkgError::Verify(format!("{what}: not well-formed XML: {e}")))? {
            XmlEvent::StartElement {
                name, attributes, ..
            } => {
                let attrs = attributes
                    .into_iter()
                    .map(|a| (a.name.local_name, a.value))
                    .collect();
                out.push((name.local_name, attrs, String::new()));
                stack.push(out.len() - 1);
            }
            XmlEvent::EndElement { .. } => {
                stack.pop();
            }
            XmlEvent::Characters(t) | XmlEvent::CData(t) => {
                if let Some(&i) = stack.last() {
                    out[i].2.push_str(&t);
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

fn member<'a>(members: &'a [xar::ReadMember], path: &str) -> Result<&'a xar::ReadMember, PkgError> {
    members
        .iter()
        .find(|m| m.path == path && !m.is_dir)
        .ok_or_else(|| PkgError::Verify(format!("the package has no {path}")))
}

/// One cpio member: (name, mode, uid, gid, data).
pub type CpioMember = (String, u32, u32, u32, Vec<u8>);

/// Most bytes a `Payload` or `Scripts` archive may decompress to.
pub const MAX_EXPANDED_BYTES: u64 = 64 << 20;

/// Reads a gzipped cpio odc archive (at most [`MAX_EXPANDED_BYTES`] expanded).
pub fn read_cpio_gz(data: &[u8], what: &str) -> Result<Vec<CpioMember>, PkgError> {
    read_cpio_gz_limited(data, what, MAX_EXPANDED_BYTES)
}

/// [`read_cpio_gz`] with a chosen expansion limit.
pub fn read_cpio_gz_limited(
    data: &[u8],
    what: &str,
    limit: u64,
) -> Result<Vec<CpioMember>, PkgError> {
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(data)
        .take(limit.saturating_add(1))
        .read_to_end(&mut raw)
        .map_err(|e| PkgError::Verify(format!("{what}: not gzip: {e}")))?;
    if raw.len() as u64 > limit {
        return Err(PkgError::Verify(format!(
            "{what}: expands beyond {limit} bytes (a decompression bomb?); refused"
        )));
    }
    let mut reader = cpio_archive::odc::OdcReader::new(std::io::Cursor::new(raw));
    let mut out = Vec::new();
    while let Some(h) = reader
        .read_next()
        .map_err(|e| PkgError::Verify(format!("{what}: bad cpio: {e}")))?
    {
        let mut body = Vec::new();
        reader
            .read_to_end(&mut body)
            .map_err(|e| PkgError::Verify(format!("{what}: bad cpio data: {e}")))?;
        out.push((h.name().to_string(), h.mode(), h.uid(), h.gid(), body));
    }
    Ok(out)
}

/// Expands `pkg` into `staging` (which must not exist or be empty) and reports.
pub fn check(pkg: &Path, staging: &Path) -> Result<CheckReport, PkgError> {
    let bytes = fs::read(pkg).map_err(PkgError::io(pkg, "read"))?;
    // A flat package is a XAR archive: "xar!" then a 28-byte header.
    if bytes.len() < 28 || &bytes[..4] != b"xar!" {
        return Err(PkgError::Input {
            path: pkg.to_path_buf(),
            what: format!(
                "not a .pkg: a flat installer package is a XAR archive starting with \"xar!\", this {}",
                if bytes.len() < 4 {
                    format!("is {} byte(s) long", bytes.len())
                } else {
                    format!("starts with {:02x?}", &bytes[..4])
                }
            ),
        });
    }
    let verification = xar::verify(&bytes)?;
    let members = xar::read_all(&bytes)?;
    let dist = xml_elements(&member(&members, "Distribution")?.data, "Distribution")?;
    let find = |name: &str| dist.iter().find(|e| e.0 == name);
    let title = find("title")
        .map(|e| e.2.trim().to_string())
        .unwrap_or_default();
    let min_os = find("os-version").and_then(|e| e.1.get("min").cloned());
    let options = find("options");
    let host_architectures = options.and_then(|e| e.1.get("hostArchitectures").cloned());
    let root_volume_only = options
        .and_then(|e| e.1.get("rootVolumeOnly"))
        .is_some_and(|v| v == "true");
    let mut on_conclusion = Vec::new();
    let mut components = Vec::new();
    for e in dist.iter().filter(|e| e.0 == "pkg-ref") {
        let target = e.2.trim();
        if target.is_empty() {
            continue;
        }
        if let Some(c) = e.1.get("onConclusion") {
            on_conclusion.push(c.clone());
        }
        let name = target.strip_prefix('#').ok_or_else(|| {
            PkgError::Verify(format!(
                "Distribution: pkg-ref {target:?} is not a member reference (#name)"
            ))
        })?;
        components.push(component(&members, name, staging)?);
    }
    if components.is_empty() {
        return Err(PkgError::Verify(
            "Distribution references no component package".into(),
        ));
    }
    Ok(CheckReport {
        xar: verification,
        title,
        min_os,
        host_architectures,
        root_volume_only,
        on_conclusion,
        components,
    })
}

fn component(
    members: &[xar::ReadMember],
    name: &str,
    staging: &Path,
) -> Result<ComponentReport, PkgError> {
    let info = xml_elements(
        &member(members, &format!("{name}/PackageInfo"))?.data,
        "PackageInfo",
    )?;
    let pi = info
        .iter()
        .find(|e| e.0 == "pkg-info")
        .ok_or_else(|| PkgError::Verify(format!("{name}/PackageInfo has no pkg-info")))?;
    let attr = |k: &str| pi.1.get(k).cloned().unwrap_or_default();
    let install_location = attr("install-location");
    if !install_location.starts_with('/') {
        return Err(PkgError::Verify(format!(
            "{name}/PackageInfo: install-location {install_location:?} is not absolute"
        )));
    }
    // Only plain names below the root: `..` would leave the staging directory.
    if Path::new(&install_location).components().any(|c| {
        !matches!(
            c,
            Component::RootDir | Component::CurDir | Component::Normal(_)
        )
    }) {
        return Err(PkgError::Verify(format!(
            "{name}/PackageInfo: install-location {install_location:?} climbs out of the \
             volume root (`..`): refused, nothing was written"
        )));
    }
    let payload = read_cpio_gz(
        &member(members, &format!("{name}/Payload"))?.data,
        "Payload",
    )?;
    let bom = crate::bom::read(&member(members, &format!("{name}/Bom"))?.data)
        .map_err(|e| PkgError::Verify(format!("{name}/Bom: {e}")))?;

    let root = staging.join(install_location.trim_start_matches('/'));
    let mut installed = Vec::new();
    for (path, mode, uid, gid, data) in &payload {
        let rel = Path::new(path);
        if rel
            .components()
            .any(|c| !matches!(c, Component::CurDir | Component::Normal(_)))
        {
            return Err(PkgError::Verify(format!("Payload: unsafe path {path:?}")));
        }
        let dest: std::path::PathBuf = std::iter::once(root.as_os_str())
            .chain(rel.components().filter_map(|c| match c {
                Component::Normal(n) => Some(n),
                _ => None,
            }))
            .collect();
        match mode & 0o170000 {
            0o040000 => {
                fs::create_dir_all(&dest).map_err(PkgError::io(&dest, "create directory"))?
            }
            0o100000 => {
                fs::write(&dest, data).map_err(PkgError::io(&dest, "write"))?;
            }
            other => {
                return Err(PkgError::Verify(format!(
                    "Payload: {path}: unsupported file type {other:o}"
                )));
            }
        }
        fs::set_permissions(&dest, fs::Permissions::from_mode(mode & 0o7777))
            .map_err(PkgError::io(&dest, "set permissions of"))?;
        let abs = match path.strip_prefix('.') {
            Some(rest) => format!("{}{rest}", install_location.trim_end_matches('/')),
            None => format!("{}/{path}", install_location.trim_end_matches('/')),
        };
        installed.push(Installed {
            path: if abs.is_empty() { "/".into() } else { abs },
            mode: *mode,
            uid: *uid,
            gid: *gid,
            size: data.len() as u64,
        });
    }
    // The receipt must describe exactly the payload.
    let mut from_payload: Vec<(String, u32, u32, u32, u64)> = payload
        .iter()
        .map(|(p, m, u, g, d)| (p.clone(), *m, *u, *g, d.len() as u64))
        .collect();
    let mut from_bom: Vec<(String, u32, u32, u32, u64)> = bom
        .iter()
        .map(|b| {
            (
                b.path.clone(),
                u32::from(b.mode),
                b.uid,
                b.gid,
                u64::from(b.size),
            )
        })
        .collect();
    from_payload.sort();
    from_bom.sort();
    if from_payload != from_bom {
        return Err(PkgError::Verify(format!(
            "{name}: Bom and Payload disagree (payload {} paths, bom {} paths)",
            from_payload.len(),
            from_bom.len()
        )));
    }
    let scripts = match members.iter().find(|m| m.path == format!("{name}/Scripts")) {
        Some(m) => read_cpio_gz(&m.data, "Scripts")?
            .into_iter()
            .filter(|s| s.0 != ".")
            .map(|s| (s.0.trim_start_matches("./").to_string(), s.1))
            .collect(),
        None => Vec::new(),
    };
    Ok(ComponentReport {
        name: name.to_string(),
        identifier: attr("identifier"),
        version: attr("version"),
        install_location,
        auth: attr("auth"),
        installed,
        scripts,
    })
}
