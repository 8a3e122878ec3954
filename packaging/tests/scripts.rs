//! The installer's scripts, tested by running them: the preinstall,
//! postinstall and uninstaller of a real package (taken out of the `Scripts`
//! and `Payload` archives) run with `sh` against a fake root that holds
//! recording doubles of `sw_vers`, `kmutil`, `kextload`, `kextunload`,
//! `launchctl` and `pkgutil`; the payload is laid down between them the way
//! Installer does (`pkg::check`). Scenarios: fresh install, upgrade over an
//! older version with a user-edited `prx.toml`, refused kext loads (macOS 14
//! and 10.15), and uninstalling (nothing left but what the user made). The
//! package holds prxctl and prxd: prxd goes to `/usr/local/libexec`, its
//! LaunchDaemon is started after `net.prx.apply` and stopped before it (and
//! before the kexts are unloaded).
//! Every script also passes `sh -n` and Debian's `shellcheck`.

mod support;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use packaging::pkg::{self, KextInput, PkgSpec};
use support::{make_bundle, run};

const KEXTS: [(&str, &str); 2] = [
    ("PrxSocketFilter", "net.prx.kext.SocketFilter"),
    ("PrxIPFilter", "net.prx.kext.IPFilter"),
];

/// A package of `version`; versions before 0.1.0 had no prxd.
fn spec(dir: &Path, version: &str, example: &str) -> PkgSpec {
    let kexts = KEXTS
        .iter()
        .map(|(exe, id)| KextInput {
            bundle: make_bundle(dir, exe, id, version),
            bundle_identifier: id.to_string(),
            version: version.into(),
        })
        .collect();
    let names: &[&str] = if version.starts_with("0.0.") {
        &["prxctl"]
    } else {
        &["prxctl", "prxd"]
    };
    let tools = names
        .iter()
        .map(|name| {
            let path = dir.join(name);
            std::fs::write(&path, format!("stand-in {name} {version}\n")).unwrap();
            pkg::system::ToolInput {
                path,
                name: name.to_string(),
            }
        })
        .collect();
    PkgSpec {
        identifier: "net.prx.kext.pkg".into(),
        version: version.into(),
        title: format!("prx {version}"),
        min_os: "10.13".into(),
        host_architectures: "x86_64,arm64".into(),
        require_restart: true,
        epoch: 1_767_225_600,
        kexts,
        tools,
        example_config: example.as_bytes().to_vec(),
    }
}

/// A Mac-like fake root: the usual directories and the doubles, each
/// appending `name args…` to `<ctl>/calls` and exiting with the status in
/// `<ctl>/<name>.status` (0 when absent); `sw_vers` prints `<ctl>/version`.
struct Fake {
    _dir: tempfile::TempDir,
    root: PathBuf,
    ctl: PathBuf,
    work: PathBuf,
}

impl Fake {
    fn new(version: &str) -> Fake {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let ctl = dir.path().join("ctl");
        let work = dir.path().join("work");
        for d in [
            "Library/Extensions",
            "Library/LaunchDaemons",
            "Library/Application Support",
            "usr/local",
            "var/log",
        ] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::create_dir_all(&ctl).unwrap();
        std::fs::create_dir_all(&work).unwrap();
        std::fs::write(ctl.join("version"), format!("{version}\n")).unwrap();
        for tool in [
            "usr/bin/sw_vers",
            "usr/bin/kmutil",
            "sbin/kextload",
            "sbin/kextunload",
            "bin/launchctl",
            "usr/sbin/pkgutil",
            "usr/bin/touch",
        ] {
            let name = tool.rsplit('/').next().unwrap();
            let path = root.join(tool);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            let body = if name == "sw_vers" {
                format!(
                    "#!/bin/sh\necho \"sw_vers $*\" >> '{c}/calls'\ncat '{c}/version'\n",
                    c = ctl.display()
                )
            } else {
                format!(
                    "#!/bin/sh\necho \"{name} $*\" >> '{c}/calls'\n\
                     if [ -f '{c}/{name}.status' ]; then exit \"$(cat '{c}/{name}.status')\"; fi\nexit 0\n",
                    c = ctl.display()
                )
            };
            std::fs::write(&path, body).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        Fake {
            _dir: dir,
            root,
            ctl,
            work,
        }
    }

    fn fail(&self, tool: &str, status: i32) {
        std::fs::write(self.ctl.join(format!("{tool}.status")), status.to_string()).unwrap();
    }

    /// The doubles' calls since the last `take_calls`.
    fn take_calls(&self) -> Vec<String> {
        let p = self.ctl.join("calls");
        let text = std::fs::read_to_string(&p).unwrap_or_default();
        let _ = std::fs::remove_file(&p);
        text.lines().map(str::to_string).collect()
    }

    /// Every path below the root (relative), directories with a trailing '/'.
    fn tree(&self) -> BTreeSet<String> {
        fn walk(base: &Path, dir: &Path, out: &mut BTreeSet<String>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let e = e.unwrap();
                let rel = e.path().strip_prefix(base).unwrap().display().to_string();
                if e.file_type().unwrap().is_dir() {
                    out.insert(format!("{rel}/"));
                    walk(base, &e.path(), out);
                } else {
                    out.insert(rel);
                }
            }
        }
        let mut out = BTreeSet::new();
        walk(&self.root, &self.root, &mut out);
        out
    }

    fn file(&self, rel: &str) -> String {
        std::fs::read_to_string(self.root.join(rel)).unwrap()
    }

    /// Installs `spec`'s package as Installer does: preinstall, payload,
    /// postinstall. Returns the scripts' output.
    fn install(&self, spec: &PkgSpec) -> String {
        let pkg_path = self.work.join(format!("prx-{}.pkg", spec.version));
        std::fs::write(&pkg_path, pkg::build_unsigned(spec).unwrap()).unwrap();
        let scripts = self.work.join(format!("scripts-{}", spec.version));
        std::fs::create_dir_all(&scripts).unwrap();
        let x = self.work.join(format!("x-{}", spec.version));
        std::fs::create_dir_all(&x).unwrap();
        let (ok, out) = run(
            "bsdtar",
            &["-xf", pkg_path.to_str().unwrap(), "-C", x.to_str().unwrap()],
            None,
        );
        assert!(ok, "{out}");
        let (ok, out) = run(
            "bsdtar",
            &[
                "-xf",
                x.join("prx.pkg/Scripts").to_str().unwrap(),
                "-C",
                scripts.to_str().unwrap(),
            ],
            None,
        );
        assert!(ok, "{out}");
        let args = |s: &str| {
            vec![
                scripts.join(s).display().to_string(),
                pkg_path.display().to_string(),
                self.root.display().to_string(),
                self.root.display().to_string(),
            ]
        };
        let mut log = String::new();
        let a = args("preinstall");
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let (ok, out) = run("sh", &a, None);
        assert!(ok, "preinstall failed: {out}");
        log.push_str(&out);
        pkg::check::check(&pkg_path, &self.root).unwrap();
        let a = args("postinstall");
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let (ok, out) = run("sh", &a, None);
        assert!(ok, "postinstall failed: {out}");
        log.push_str(&out);
        log
    }

    fn uninstall(&self) -> (bool, String) {
        let u = self.root.join(pkg::system::UNINSTALLER);
        run(
            "sh",
            &[u.to_str().unwrap(), "--root", self.root.to_str().unwrap()],
            None,
        )
    }
}

const EXAMPLE_NEW: &str =
    "# example 0.1.0\n[socket-filter]\nenabled = false\n[prxd]\nlisten = [\"127.0.0.1:1080\"]\n";
const START_APPLY: &str = "launchctl bootstrap system /Library/LaunchDaemons/net.prx.apply.plist";
const START_PRXD: &str = "launchctl bootstrap system /Library/LaunchDaemons/net.prx.prxd.plist";
const EXAMPLE_OLD: &str = "# example 0.0.9\n";
const CONFIG: &str = "Library/Application Support/prx/prx.toml";
const EXAMPLE: &str = "Library/Application Support/prx/prx.toml.example";

fn expected_loads() -> Vec<String> {
    KEXTS
        .iter()
        .map(|(exe, _)| format!("kmutil load -p /Library/Extensions/{exe}.kext"))
        .collect()
}

#[test]
fn fresh_install_creates_the_configuration_loads_the_kexts_and_starts_the_daemon() {
    let d = tempfile::tempdir().unwrap();
    let fake = Fake::new("14.5");
    let out = fake.install(&spec(d.path(), "0.1.0", EXAMPLE_NEW));
    let calls = fake.take_calls();
    // The preinstall found nothing to stop or unload.
    assert!(
        !calls
            .iter()
            .any(|c| c.contains("bootout") || c.contains("unload")),
        "{calls:?}"
    );
    for load in expected_loads() {
        assert!(calls.contains(&load), "{load} in {calls:?}");
    }
    assert!(
        !calls.iter().any(|c| c.starts_with("kextload")),
        "{calls:?}"
    );
    // apply first (it loads the kexts and their rules), then prxd, after
    // the kexts' loads.
    let pos = |c: &str| calls.iter().position(|x| x == c);
    let (apply, prxd) = (pos(START_APPLY).unwrap(), pos(START_PRXD).unwrap());
    let last_load = expected_loads()
        .iter()
        .filter_map(|l| pos(l))
        .max()
        .unwrap();
    assert!(last_load < apply && apply < prxd, "{calls:?}");
    assert_eq!(fake.file(CONFIG), EXAMPLE_NEW);
    assert!(!out.contains("no [prxd] table"), "{out}");
    assert_eq!(fake.file("usr/local/libexec/prxd"), "stand-in prxd 0.1.0\n");
    assert!(!fake.root.join("usr/local/bin/prxd").exists());
    assert_eq!(
        fake.file("Library/LaunchDaemons/net.prx.prxd.plist"),
        pkg::system::PRXD_PLIST
    );
    assert!(out.contains("created"), "{out}");
    assert!(out.contains("loaded PrxSocketFilter.kext"), "{out}");
    let plist = fake.file("Library/LaunchDaemons/net.prx.apply.plist");
    assert!(
        plist.contains("<string>/usr/local/bin/prxctl</string>"),
        "{plist}"
    );
    assert!(plist.contains("<string>apply</string>") && plist.contains("<key>RunAtLoad</key>"));
}

#[test]
fn upgrade_keeps_the_edited_configuration_and_unloads_the_old_kexts_first() {
    let d = tempfile::tempdir().unwrap();
    let fake = Fake::new("13.6");
    fake.install(&spec(&d.path().join("old"), "0.0.9", EXAMPLE_OLD));
    assert_eq!(fake.file(CONFIG), EXAMPLE_OLD);
    let edited = "# mine\n[socket-filter]\nenabled = true\n";
    std::fs::write(fake.root.join(CONFIG), edited).unwrap();
    fake.take_calls();

    let out = fake.install(&spec(&d.path().join("new"), "0.1.0", EXAMPLE_NEW));
    let calls = fake.take_calls();
    let pos = |c: &str| {
        calls
            .iter()
            .position(|x| x == c)
            .unwrap_or_else(|| panic!("{c} not in {calls:?}"))
    };
    // 0.0.9 had no prxd: nothing of it to stop.
    assert!(
        !calls.iter().any(|c| c.contains("system/net.prx.prxd")),
        "{calls:?}"
    );
    let stop = pos("launchctl bootout system/net.prx.apply");
    let unload = pos("kmutil unload -b net.prx.kext.SocketFilter");
    pos("kmutil unload -b net.prx.kext.IPFilter");
    let load = pos("kmutil load -p /Library/Extensions/PrxSocketFilter.kext");
    let start = pos(START_APPLY);
    let start_prxd = pos(START_PRXD);
    assert!(
        stop < unload && unload < load && load < start && start < start_prxd,
        "{calls:?}"
    );
    assert!(
        out.contains("prx postinstall: started net.prx.prxd"),
        "{out}"
    );
    // The kept prx.toml has no [prxd] table: prxd stays stopped, and the
    // postinstall says how to turn it on.
    assert!(
        out.contains("has no [prxd] table, so prxd stays stopped")
            && out.contains("launchctl kickstart system/net.prx.prxd"),
        "{out}"
    );
    assert_eq!(fake.file("usr/local/libexec/prxd"), "stand-in prxd 0.1.0\n");
    assert_eq!(fake.file(CONFIG), edited, "the user's prx.toml is kept");
    assert_eq!(
        fake.file(EXAMPLE),
        EXAMPLE_NEW,
        "the example is the new one"
    );
    assert_eq!(fake.file("usr/local/bin/prxctl"), "stand-in prxctl 0.1.0\n");
    assert!(out.contains("keeping the existing"), "{out}");
    assert!(
        out.contains("unloaded the old PrxSocketFilter.kext"),
        "{out}"
    );

    // Upgrading (here: reinstalling) a version with prxd: prxd stops first
    // (it holds the kexts' controls open), then apply, then the kexts unload.
    let out = fake.install(&spec(&d.path().join("again"), "0.1.0", EXAMPLE_NEW));
    let calls = fake.take_calls();
    let pos = |c: &str| {
        calls
            .iter()
            .position(|x| x == c)
            .unwrap_or_else(|| panic!("{c} not in {calls:?}"))
    };
    let order = [
        pos("launchctl bootout system/net.prx.prxd"),
        pos("launchctl bootout system/net.prx.apply"),
        pos("kmutil unload -b net.prx.kext.SocketFilter"),
        pos(START_APPLY),
        pos(START_PRXD),
    ];
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{calls:?}");
    assert!(
        out.contains("prx preinstall: stopped net.prx.prxd"),
        "{out}"
    );
}

#[test]
fn refused_kext_loads_do_not_fail_the_install_and_say_what_to_do() {
    let d = tempfile::tempdir().unwrap();
    // macOS 14: kmutil refuses until approved.
    let fake = Fake::new("14.5");
    fake.fail("kmutil", 1);
    let out = fake.install(&spec(&d.path().join("a"), "0.1.0", EXAMPLE_NEW));
    assert!(
        out.contains("PrxSocketFilter.kext PrxIPFilter.kext installed but not loaded yet"),
        "{out}"
    );
    assert!(
        out.contains("System Settings > Privacy & Security"),
        "{out}"
    );
    assert!(out.contains("Reduced Security"), "{out}");
    assert!(out.contains("applied at the next boot"), "{out}");
    // The daemon is still started (it applies the configuration once loaded).
    assert!(
        fake.take_calls()
            .iter()
            .any(|c| c.starts_with("launchctl bootstrap"))
    );

    // macOS 10.15: kextload, System Preferences.
    let fake = Fake::new("10.15.7");
    fake.fail("kextload", 27);
    let out = fake.install(&spec(&d.path().join("b"), "0.1.0", EXAMPLE_NEW));
    let calls = fake.take_calls();
    assert!(
        calls.contains(&"kextload /Library/Extensions/PrxIPFilter.kext".to_string()),
        "{calls:?}"
    );
    assert!(!calls.iter().any(|c| c.starts_with("kmutil")), "{calls:?}");
    assert!(
        out.contains("System Preferences > Security & Privacy"),
        "{out}"
    );
}

#[test]
fn uninstall_leaves_nothing_but_what_the_user_made() {
    let d = tempfile::tempdir().unwrap();
    // Fresh install, then uninstall: the tree is as before.
    let fake = Fake::new("14.5");
    let before = fake.tree();
    fake.install(&spec(&d.path().join("a"), "0.1.0", EXAMPLE_NEW));
    std::fs::write(fake.root.join("var/log/prx.log"), "apply log\n").unwrap();
    std::fs::write(fake.root.join("var/log/prxd.log"), "prxd log\n").unwrap();
    assert!(fake.tree().len() > before.len() + 15);
    fake.take_calls();
    let (ok, out) = fake.uninstall();
    assert!(ok, "{out}");
    let calls = fake.take_calls();
    // prxd stops first (it holds the kexts' controls open), then apply,
    // then the kexts are unloaded.
    let at = |c: &str| {
        calls
            .iter()
            .position(|x| x == c)
            .unwrap_or_else(|| panic!("{c} not in {calls:?}"))
    };
    let order = [
        at("launchctl bootout system/net.prx.prxd"),
        at("launchctl bootout system/net.prx.apply"),
        at("kmutil unload -b net.prx.kext.SocketFilter"),
        at("kmutil unload -b net.prx.kext.IPFilter"),
    ];
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{calls:?}");
    assert!(out.contains("removed /usr/local/libexec/prxd"), "{out}");
    assert!(out.contains("removed /var/log/prxd.log"), "{out}");
    assert!(
        calls.contains(&format!(
            "pkgutil --volume {} --forget net.prx.kext.pkg",
            fake.root.display()
        )),
        "{calls:?}"
    );
    assert_eq!(fake.tree(), before, "{out}");

    // After an upgrade with an edited prx.toml: only that file (and its
    // directory) stays, and the uninstaller says so.
    let fake = Fake::new("12.7");
    let before = fake.tree();
    fake.install(&spec(&d.path().join("old"), "0.0.9", EXAMPLE_OLD));
    std::fs::write(fake.root.join(CONFIG), "# mine\n").unwrap();
    fake.install(&spec(&d.path().join("new"), "0.1.0", EXAMPLE_NEW));
    let (ok, out) = fake.uninstall();
    assert!(ok, "{out}");
    assert!(
        out.contains("kept /Library/Application Support/prx/prx.toml"),
        "{out}"
    );
    let left: Vec<String> = fake.tree().difference(&before).cloned().collect();
    assert_eq!(left, ["Library/Application Support/prx/", CONFIG], "{out}");
    assert_eq!(fake.file(CONFIG), "# mine\n");
}

#[test]
fn uninstaller_refuses_unknown_arguments() {
    let d = tempfile::tempdir().unwrap();
    let fake = Fake::new("14.5");
    fake.install(&spec(d.path(), "0.1.0", EXAMPLE_NEW));
    let u = fake.root.join(pkg::system::UNINSTALLER);
    let (ok, out) = run("sh", &[u.to_str().unwrap(), "--bogus"], None);
    assert!(!ok && out.contains("unknown argument '--bogus'"), "{out}");
    assert!(
        fake.root.join("usr/local/bin/prxctl").is_file(),
        "nothing removed"
    );
}

#[test]
fn every_script_passes_sh_n_and_shellcheck() {
    let d = tempfile::tempdir().unwrap();
    let s = spec(d.path(), "0.1.0", EXAMPLE_NEW);
    let tree = pkg::payload_tree(&s).unwrap();
    let uninstall = tree
        .entries
        .iter()
        .find(|e| e.path == format!("./{}", pkg::system::UNINSTALLER))
        .unwrap();
    let pkg::tree::EntryKind::File(uninstall) = &uninstall.kind else {
        panic!("uninstaller is not a file")
    };
    let scripts = [
        ("preinstall", pkg::system::preinstall(&s).into_bytes()),
        ("postinstall", pkg::system::postinstall(&s).into_bytes()),
        ("uninstall.sh", uninstall.clone()),
    ];
    for (name, text) in scripts {
        let text = String::from_utf8(text).unwrap();
        assert!(text.starts_with("#!/bin/sh\n"), "{name}");
        assert!(!text.contains('@'), "{name}: a placeholder left unfilled");
        let p = d.path().join(name);
        std::fs::write(&p, &text).unwrap();
        let (ok, out) = run("sh", &["-n", p.to_str().unwrap()], None);
        assert!(ok, "{name}: {out}");
        let (ok, out) = run("shellcheck", &["--shell=sh", p.to_str().unwrap()], None);
        assert!(ok, "{name}: shellcheck: {out}");
    }
}
