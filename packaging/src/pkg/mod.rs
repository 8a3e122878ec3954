//! The installer: a flat product archive (`productbuild`'s output) holding one
//! component package (`pkgbuild`'s output), written entirely by prx.
//!
//! Glossary:
//! - **flat package**: a XAR archive ([`crate::xar`]). Installer reads its TOC,
//!   checks the checksum and (if signed) the signatures, then the members below.
//! - **product archive**: `Distribution` (the installer script: title, minimum
//!   OS, host architectures, root volume only, restart, the choice that installs
//!   the component) plus the component as a directory `prx.pkg/`.
//! - **component package**: `PackageInfo` (identifier, version, install
//!   location `/`, auth root, pre/postinstall, postinstall action), `Bom` (the
//!   receipt, [`crate::bom`]), `Payload` (gzipped cpio odc of the tree,
//!   [`crate::cpio`]) and `Scripts` (gzipped cpio holding `preinstall` and
//!   `postinstall`).
//! - **Resources**: `en.lproj/welcome.html` and `conclusion.html`, the pages
//!   Installer shows first and last (approval, restart, Reduced Security,
//!   uninstalling).
//! - **payload tree** ([`tree::PayloadTree`]): `.` = `/`,
//!   `./Library/Extensions/PrxSocketFilter.kext/...`, `./usr/local/bin/prxctl`,
//!   … ([`system`]); root:wheel, directories and executables 0755, other
//!   files 0644.

pub mod check;
pub mod system;
pub mod tree;

use std::path::{Path, PathBuf};

use tree::PayloadTree;

use crate::xar::{Encoding, Member};

/// The component's install location: the volume root (kexts go to
/// `/Library/Extensions`, the tools to `/usr/local/bin`, see [`system`]).
pub const INSTALL_LOCATION: &str = "/";
/// The component's directory name inside the product archive.
pub const COMPONENT: &str = "prx.pkg";

/// Errors while building, signing or checking a package.
#[derive(Debug, thiserror::Error)]
pub enum PkgError {
    /// A file-system operation failed.
    #[error("{path}: cannot {action}: {source}")]
    Io {
        /// The path operated on.
        path: PathBuf,
        /// What was being done.
        action: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// An input is not what a package can hold.
    #[error("{path}: {what}")]
    Input {
        /// The offending input.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
    /// Writing or reading an archive format failed.
    #[error("{0}")]
    Archive(String),
    /// A checksum or signature did not verify, or the package is malformed.
    #[error("verification failed: {0}")]
    Verify(String),
}

impl PkgError {
    /// `map_err` helper for I/O errors.
    pub fn io(path: &Path, action: &str) -> impl FnOnce(std::io::Error) -> PkgError {
        let (path, action) = (path.to_owned(), action.to_string());
        move |source| PkgError::Io {
            path,
            action,
            source,
        }
    }
}

/// A kext going into the package.
#[derive(Debug, Clone)]
pub struct KextInput {
    /// The (signed) bundle directory, e.g. `.../PrxSocketFilter.kext`.
    pub bundle: PathBuf,
    /// CFBundleIdentifier.
    pub bundle_identifier: String,
    /// CFBundleVersion.
    pub version: String,
}

/// Everything that goes into the package's metadata.
#[derive(Debug, Clone)]
pub struct PkgSpec {
    /// Component package identifier, e.g. `net.prx.kext.pkg`.
    pub identifier: String,
    /// Package version.
    pub version: String,
    /// Installer window title.
    pub title: String,
    /// Lowest macOS the package installs on, e.g. `10.13`.
    pub min_os: String,
    /// `hostArchitectures`, e.g. `x86_64,arm64`.
    pub host_architectures: String,
    /// Ask for a restart after installing (kexts on macOS 11+ need one after
    /// approval; `RequireRestart` in Distribution, `restart` in PackageInfo).
    pub require_restart: bool,
    /// `SOURCE_DATE_EPOCH`: every timestamp in the package.
    pub epoch: i64,
    /// The kexts, in install order.
    pub kexts: Vec<KextInput>,
    /// The macOS tools (signed universal executables) for `/usr/local/bin`,
    /// or `/usr/local/libexec` for daemons ([`system::tool_path`]).
    pub tools: Vec<system::ToolInput>,
    /// The example configuration (`prx.toml.example`).
    pub example_config: Vec<u8>,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The payload tree of `spec`'s kexts.
pub fn payload_tree(spec: &PkgSpec) -> Result<PayloadTree, PkgError> {
    let mtime = u32::try_from(spec.epoch).map_err(|_| PkgError::Input {
        path: PathBuf::from("SOURCE_DATE_EPOCH"),
        what: format!(
            "{} is outside what cpio and BOM can store (0..2^32)",
            spec.epoch
        ),
    })?;
    let mut tree = PayloadTree::new(mtime);
    tree.add_dirs(system::KEXT_DIR, mtime);
    for k in &spec.kexts {
        if !k.bundle.join("Contents/Info.plist").is_file() {
            return Err(PkgError::Input {
                path: k.bundle.clone(),
                what: "is not a kext bundle (no Contents/Info.plist); run `cargo xtask build --release` first".into(),
            });
        }
        let name = k
            .bundle
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| PkgError::Input {
                path: k.bundle.clone(),
                what: "bundle name is not UTF-8".into(),
            })?;
        tree.add_dir(&k.bundle, &format!("{}/{name}", system::KEXT_DIR), mtime)?;
    }
    for t in &spec.tools {
        let data = std::fs::read(&t.path).map_err(|e| PkgError::Input {
            path: t.path.clone(),
            what: format!(
                "cannot read the executable ({e}); run `cargo xtask build --release` first"
            ),
        })?;
        tree.add_file(&system::tool_path(&t.name), data, tree::EXEC_MODE, mtime);
    }
    for d in system::daemons(&spec.tools) {
        tree.add_file(
            &format!("{}/{}.plist", system::LAUNCH_DAEMONS, d.label),
            d.plist(),
            tree::FILE_MODE,
            mtime,
        );
    }
    tree.add_file(
        system::EXAMPLE_FILE,
        spec.example_config.clone(),
        tree::FILE_MODE,
        mtime,
    );
    let mut files = system::removable_files(&tree);
    files.push(system::UNINSTALLER.into());
    tree.add_file(
        system::UNINSTALLER,
        system::uninstaller(spec, &files).into_bytes(),
        tree::EXEC_MODE,
        mtime,
    );
    tree.sort();
    Ok(tree)
}

/// `PackageInfo` of the component. `overwrite-permissions="false"`: the
/// payload holds `/Library`, `/usr/local/bin` and other existing directories,
/// whose owners and modes Installer must not change (Homebrew owns
/// `/usr/local/bin` on Intel Macs); what prx installs is new and gets the
/// payload's root:wheel and modes.
pub fn package_info(spec: &PkgSpec, tree: &PayloadTree) -> String {
    let mut bundles = String::new();
    for k in &spec.kexts {
        let name = k.bundle.file_name().and_then(|n| n.to_str()).unwrap_or("");
        bundles.push_str(&format!(
            "        <bundle id=\"{id}\" CFBundleIdentifier=\"{id}\" path=\"./{dir}/{name}\" CFBundleVersion=\"{v}\" CFBundleShortVersionString=\"{v}\"/>\n",
            id = esc(&k.bundle_identifier),
            dir = system::KEXT_DIR,
            name = esc(name),
            v = esc(&k.version),
        ));
    }
    format!(
        r#"<?xml version="1.0" encoding="utf-8" standalone="no"?>
<pkg-info overwrite-permissions="false" relocatable="false" identifier="{id}" postinstall-action="{action}" version="{version}" format-version="2" generator-version="prx-xtask" install-location="{loc}" auth="root">
    <payload numberOfFiles="{files}" installKBytes="{kb}"/>
    <bundle-version>
{bundles}    </bundle-version>
    <upgrade-bundle/>
    <update-bundle/>
    <atomic-update-bundle/>
    <strict-identifier/>
    <relocate/>
    <scripts>
        <preinstall file="./preinstall"/>
        <postinstall file="./postinstall"/>
    </scripts>
</pkg-info>
"#,
        id = esc(&spec.identifier),
        action = if spec.require_restart {
            "restart"
        } else {
            "none"
        },
        version = esc(&spec.version),
        loc = INSTALL_LOCATION,
        files = tree.len(),
        kb = tree.install_kbytes(),
    )
}

/// `Distribution` of the product archive.
pub fn distribution(spec: &PkgSpec, tree: &PayloadTree) -> String {
    format!(
        r#"<?xml version="1.0" encoding="utf-8" standalone="no"?>
<installer-gui-script minSpecVersion="2">
    <title>{title}</title>
    <welcome file="welcome.html" mime-type="text/html"/>
    <conclusion file="conclusion.html" mime-type="text/html"/>
    <options customize="never" require-scripts="false" hostArchitectures="{arch}" rootVolumeOnly="true"/>
    <domains enable_anywhere="false" enable_currentUserHome="false" enable_localSystem="true"/>
    <allowed-os-versions>
        <os-version min="{min}"/>
    </allowed-os-versions>
    <choices-outline>
        <line choice="default">
            <line choice="{id}"/>
        </line>
    </choices-outline>
    <choice id="default"/>
    <choice id="{id}" visible="false">
        <pkg-ref id="{id}"/>
    </choice>
    <pkg-ref id="{id}" version="{version}" auth="root" onConclusion="{conclusion}" installKBytes="{kb}">#{component}</pkg-ref>
    <product id="{id}" version="{version}"/>
</installer-gui-script>
"#,
        title = esc(&spec.title),
        arch = esc(&spec.host_architectures),
        min = esc(&spec.min_os),
        id = esc(&spec.identifier),
        version = esc(&spec.version),
        conclusion = if spec.require_restart {
            "RequireRestart"
        } else {
            "none"
        },
        kb = tree.install_kbytes(),
        component = COMPONENT,
    )
}

/// The `postinstall` script ([`system::postinstall`]): creates `prx.toml` from
/// the example when there is none, loads each kext (`kmutil load` on macOS 11+,
/// `kextload` before; a refusal says what to do and never fails the
/// installation), starts the daemons.
pub fn postinstall(spec: &PkgSpec) -> String {
    system::postinstall(spec)
}

/// The `Scripts` archive: `.`, `./postinstall` and `./preinstall` (0755), gzipped cpio.
pub fn scripts_archive(spec: &PkgSpec, mtime: u32) -> Result<Vec<u8>, PkgError> {
    let mut t = PayloadTree::new(mtime);
    for (name, text) in [
        ("postinstall", system::postinstall(spec)),
        ("preinstall", system::preinstall(spec)),
    ] {
        t.add_file(name, text.into_bytes(), 0o755, mtime);
    }
    crate::cpio::payload(&t)
}

/// The unsigned product archive of `spec`: byte-for-byte a function of the
/// bundles' contents and `spec` (no clock, no host names, no uids of the host).
pub fn build_unsigned(spec: &PkgSpec) -> Result<Vec<u8>, PkgError> {
    let tree = payload_tree(spec)?;
    let mtime = tree.entries[0].mtime;
    let members = vec![
        Member {
            path: "Distribution".into(),
            data: Some((distribution(spec, &tree).into_bytes(), Encoding::Zlib)),
            perm: 0o644,
        },
        Member {
            path: "Resources".into(),
            data: None,
            perm: 0o755,
        },
        Member {
            path: "Resources/en.lproj".into(),
            data: None,
            perm: 0o755,
        },
        Member {
            path: "Resources/en.lproj/conclusion.html".into(),
            data: Some((system::CONCLUSION_HTML.as_bytes().to_vec(), Encoding::Zlib)),
            perm: 0o644,
        },
        Member {
            path: "Resources/en.lproj/welcome.html".into(),
            data: Some((system::WELCOME_HTML.as_bytes().to_vec(), Encoding::Zlib)),
            perm: 0o644,
        },
        Member {
            path: COMPONENT.into(),
            data: None,
            perm: 0o755,
        },
        Member {
            path: format!("{COMPONENT}/Bom"),
            data: Some((crate::bom::write(&tree), Encoding::Zlib)),
            perm: 0o644,
        },
        Member {
            path: format!("{COMPONENT}/Payload"),
            data: Some((crate::cpio::payload(&tree)?, Encoding::Raw)),
            perm: 0o644,
        },
        Member {
            path: format!("{COMPONENT}/Scripts"),
            data: Some((scripts_archive(spec, mtime)?, Encoding::Raw)),
            perm: 0o644,
        },
        Member {
            path: format!("{COMPONENT}/PackageInfo"),
            data: Some((package_info(spec, &tree).into_bytes(), Encoding::Zlib)),
            perm: 0o644,
        },
    ];
    crate::xar::write(&members, spec.epoch)
}
