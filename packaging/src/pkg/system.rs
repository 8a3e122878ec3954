//! What the package installs besides the kexts, and its scripts.
//!
//! Installed tree (the component installs at `/`):
//! - `/Library/Extensions/<Name>.kext`: the kexts;
//! - `/usr/local/bin/<tool>`: the macOS commands (`prxctl`), universal, signed;
//! - `/usr/local/libexec/<tool>`: the executables only launchd runs
//!   ([`LIBEXEC_TOOLS`]: `prxd`), universal, signed;
//! - `/Library/LaunchDaemons/<label>.plist`: the boot-time daemons
//!   ([`daemons`]: `net.prx.apply`, which runs `prxctl apply --load` once, and
//!   `net.prx.prxd`, prxd kept alive, when the package holds prxd);
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
/// Where the commands are installed.
pub const TOOL_DIR: &str = "usr/local/bin";
/// Where the executables only launchd starts are installed.
pub const LIBEXEC_DIR: &str = "usr/local/libexec";
/// The tools installed to [`LIBEXEC_DIR`] rather than [`TOOL_DIR`]: daemons,
/// which users do not run from a shell.
pub const LIBEXEC_TOOLS: [&str; 1] = ["prxd"];
/// prxd's LaunchDaemon, as its crate ships it (`prxd/launchd/`): installed
/// verbatim, so the file prxd's tests check is the file the package holds.
pub const PRXD_PLIST: &str = include_str!("../../../prxd/launchd/net.prx.prxd.plist");
/// prxd's log (its LaunchDaemon's standard output and error).
pub const PRXD_LOG: &str = "var/log/prxd.log";

/// Where the tool `name` is installed (relative to the volume root).
pub fn tool_path(name: &str) -> String {
    if LIBEXEC_TOOLS.contains(&name) {
        format!("{LIBEXEC_DIR}/{name}")
    } else {
        format!("{TOOL_DIR}/{name}")
    }
}
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
    /// The property list as shipped by the daemon's crate; `None`: made by
    /// [`launchd_plist`] (run once at load).
    pub shipped: Option<&'static str>,
}

impl Daemon {
    /// The property list the package installs.
    pub fn plist(&self) -> Vec<u8> {
        match self.shipped {
            Some(p) => p.as_bytes().to_vec(),
            None => launchd_plist(self),
        }
    }
}

/// The daemons of a package holding the tools `tools`, in start order:
/// `net.prx.apply` (configures the kexts), then `net.prx.prxd` if prxd is
/// among the tools. The scripts stop them in the reverse order: prxd, which
/// holds the kexts' controls open, first.
pub fn daemons(tools: &[ToolInput]) -> Vec<Daemon> {
    let mut v = vec![Daemon {
        label: "net.prx.apply",
        program: vec![
            format!("/{}", tool_path("prxctl")),
            "apply".into(),
            "--load".into(),
        ],
        shipped: None,
    }];
    if tools.iter().any(|t| t.name == "prxd") {
        v.push(Daemon {
            label: "net.prx.prxd",
            program: vec![
                format!("/{}", tool_path("prxd")),
                "--config".into(),
                format!("/{CONFIG_FILE}"),
            ],
            shipped: Some(PRXD_PLIST),
        });
    }
    v
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
    let labels: Vec<&str> = daemons(&spec.tools).iter().map(|d| d.label).collect();
    let stop: Vec<&str> = labels.iter().rev().copied().collect();
    template
        .replace("@KEXTS@", &kexts.join(" "))
        .replace("@STOP_LABELS@", &stop.join(" "))
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
pub const OWN_DIRS: [&str; 5] = [
    CONFIG_DIR,
    SHARE_DIR,
    "usr/local/share",
    TOOL_DIR,
    LIBEXEC_DIR,
];

/// The uninstaller for the tree `files` (every regular file of the payload
/// outside the kext bundles, relative to the volume root).
pub fn uninstaller(spec: &PkgSpec, files: &[String]) -> String {
    let mut list: Vec<String> = files.to_vec();
    list.push(DAEMON_LOG.into());
    if daemons(&spec.tools)
        .iter()
        .any(|d| d.label == "net.prx.prxd")
    {
        list.push(PRXD_LOG.into());
    }
    fill(UNINSTALL_TEMPLATE, spec)
        .replace("@FILES@", &list.join("\n"))
        .replace("@DIRS@", &OWN_DIRS.join("\n"))
}

/// A tool going into the package.
#[derive(Debug, Clone)]
pub struct ToolInput {
    /// The (signed) executable.
    pub path: PathBuf,
    /// Installed name, in `/usr/local/bin` or (for [`LIBEXEC_TOOLS`])
    /// `/usr/local/libexec`: [`tool_path`].
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped prxd plist runs the executable where the package puts it,
    /// with the configuration the package installs, and logs where the
    /// uninstaller cleans up.
    #[test]
    fn the_prxd_plist_agrees_with_the_payload() {
        let tools = [ToolInput {
            path: PathBuf::from("prxd"),
            name: "prxd".into(),
        }];
        let d = daemons(&tools);
        let prxd = d.iter().find(|d| d.label == "net.prx.prxd").unwrap();
        let v: plist::Value = plist::from_bytes(&prxd.plist()).unwrap();
        let dict = v.as_dictionary().unwrap();
        let args: Vec<String> = dict["ProgramArguments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_string().unwrap().to_string())
            .collect();
        assert_eq!(args, prxd.program);
        assert_eq!(args[0], "/usr/local/libexec/prxd");
        assert_eq!(
            dict["StandardErrorPath"].as_string(),
            Some(format!("/{PRXD_LOG}").as_str())
        );
        assert_eq!(dict["Label"].as_string(), Some("net.prx.prxd"));
        // Without prxd in the package: only the apply daemon.
        assert_eq!(daemons(&[]).len(), 1);
        assert_eq!(tool_path("prxctl"), "usr/local/bin/prxctl");
    }
}
