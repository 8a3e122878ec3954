//! What the package installs besides the kexts, and its scripts.
//!
//! Installed tree (the component installs at `/`):
//! - `/Library/Extensions/<Name>.kext`: the kexts;
//! - `/usr/local/bin/<tool>`: the macOS tools (`prxctl`), universal, signed;
//! - `/Library/LaunchDaemons/<label>.plist`: the boot-time daemons
//!   ([`daemons`]; today `net.prx.apply`, which runs `prxctl apply --load`);
//! - `/Library/Application Support/prx/prx.toml.example`: the example
//!   configuration; the postinstall copies it to `prx.toml` only when there is none;
//! - `/usr/local/share/prx/uninstall.sh`: the uninstaller.
//!
//! The scripts are POSIX sh templates in `packaging/scripts/` with `@NAME@`
//! placeholders filled in here (kexts, daemon labels, the receipt id, the
//! files to remove). They run every system tool from the target volume
//! (`$3/usr/bin/kmutil`, …), which on a real install is `/`, and which the
//! tests point at a fake root holding recording doubles.

use std::path::PathBuf;

use super::PkgSpec;
use super::tree::{EntryKind, PayloadTree};

/// Where kexts are installed (relative to the volume root).
pub const KEXT_DIR: &str = "Library/Extensions";
/// Where the tools are installed.
pub const TOOL_DIR: &str = "usr/local/bin";
/// The configuration directory.
pub const CONFIG_DIR: &str = "Library/Application Support/prx";
/// The configuration `prxctl apply` reads by default.
pub const CONFIG_FILE: &str = "Library/Application Support/prx/prx.toml";
/// The example configuration the package installs.
pub const EXAMPLE_FILE: &str = "Library/Application Support/prx/prx.toml.example";
/// prx's shared data directory.
pub const SHARE_DIR: &str = "usr/local/share/prx";
/// The uninstaller.
pub const UNINSTALLER: &str = "usr/local/share/prx/uninstall.sh";
/// Where launchd daemons' property lists live.
pub const LAUNCH_DAEMONS: &str = "Library/LaunchDaemons";
/// The log of the daemons' standard output and error.
pub const DAEMON_LOG: &str = "var/log/prx.log";

/// A launchd daemon the package installs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Daemon {
    /// launchd label, also the plist's name.
    pub label: &'static str,
    /// ProgramArguments.
    pub program: Vec<String>,
}

/// The daemons, in start order. A later daemon (prxd) is one more entry.
pub fn daemons() -> Vec<Daemon> {
    vec![Daemon {
        label: "net.prx.apply",
        program: vec![
            format!("/{TOOL_DIR}/prxctl"),
            "apply".into(),
            "--load".into(),
        ],
    }]
}

/// A daemon's property list: runs once at load (boot, or the postinstall's
/// bootstrap), output to [`DAEMON_LOG`].
pub fn launchd_plist(d: &Daemon) -> Vec<u8> {
    let mut dict = plist::Dictionary::new();
    dict.insert("Label".into(), d.label.into());
    dict.insert(
        "ProgramArguments".into(),
        plist::Value::Array(d.program.iter().map(|a| a.clone().into()).collect()),
    );
    dict.insert("RunAtLoad".into(), true.into());
    dict.insert("StandardOutPath".into(), format!("/{DAEMON_LOG}").into());
    dict.insert("StandardErrorPath".into(), format!("/{DAEMON_LOG}").into());
    let mut out = Vec::new();
    // Writing a dictionary of strings to memory cannot fail.
    let _ = plist::Value::Dictionary(dict).to_writer_xml(&mut out);
    out.push(b'\n');
    out
}

/// The pre/postinstall and uninstaller templates.
pub const PREINSTALL_TEMPLATE: &str = include_str!("../../scripts/preinstall.sh");
/// See [`PREINSTALL_TEMPLATE`].
pub const POSTINSTALL_TEMPLATE: &str = include_str!("../../scripts/postinstall.sh");
/// See [`PREINSTALL_TEMPLATE`].
pub const UNINSTALL_TEMPLATE: &str = include_str!("../../scripts/uninstall.sh");
/// Installer's welcome page (Distribution `<welcome>`).
pub const WELCOME_HTML: &str = include_str!("../../resources/welcome.html");
/// Installer's conclusion page (Distribution `<conclusion>`).
pub const CONCLUSION_HTML: &str = include_str!("../../resources/conclusion.html");

fn kext_name(b: &std::path::Path) -> &str {
    b.file_name().and_then(|n| n.to_str()).unwrap_or("")
}

fn fill(template: &str, spec: &PkgSpec) -> String {
    let kexts: Vec<String> = spec
        .kexts
        .iter()
        .map(|k| format!("{}={}", kext_name(&k.bundle), k.bundle_identifier))
        .collect();
    let labels: Vec<&str> = daemons().iter().map(|d| d.label).collect();
    template
        .replace("@KEXTS@", &kexts.join(" "))
        .replace("@LABELS@", &labels.join(" "))
        .replace("@PKG_ID@", &spec.identifier)
}

/// The `preinstall` script.
pub fn preinstall(spec: &PkgSpec) -> String {
    fill(PREINSTALL_TEMPLATE, spec)
}

/// The `postinstall` script.
pub fn postinstall(spec: &PkgSpec) -> String {
    fill(POSTINSTALL_TEMPLATE, spec)
}

/// Directories the uninstaller removes when empty, deepest first (the
/// package may have created the `/usr/local` ones; others' files keep them).
pub const OWN_DIRS: [&str; 4] = [CONFIG_DIR, SHARE_DIR, "usr/local/share", TOOL_DIR];

/// The uninstaller for the tree `files` (every regular file of the payload
/// outside the kext bundles, relative to the volume root).
pub fn uninstaller(spec: &PkgSpec, files: &[String]) -> String {
    let mut list: Vec<String> = files.to_vec();
    list.push(DAEMON_LOG.into());
    fill(UNINSTALL_TEMPLATE, spec)
        .replace("@FILES@", &list.join("\n"))
        .replace("@DIRS@", &OWN_DIRS.join("\n"))
}

/// A tool going into the package.
#[derive(Debug, Clone)]
pub struct ToolInput {
    /// The (signed) executable.
    pub path: PathBuf,
    /// Installed name in `/usr/local/bin`.
    pub name: String,
}

/// Regular files of `tree` outside the kext bundles, relative to the root.
pub fn removable_files(tree: &PayloadTree) -> Vec<String> {
    let kexts = format!("./{KEXT_DIR}/");
    tree.entries
        .iter()
        .filter(|e| matches!(e.kind, EntryKind::File(_)) && !e.path.starts_with(&kexts))
        .map(|e| e.path.trim_start_matches("./").to_string())
        .collect()
}
