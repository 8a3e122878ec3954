//! `cargo xtask package` with the .p12 files users have: OpenSSL 3's defaults
//! (AES-256-CBC, SHA-256 MAC) and `-legacy` (3DES/RC2-40, SHA-1 MAC, as
//! Keychain Access writes), made by Debian's `openssl` at test time, for the
//! kext and the installer identity; and the usage errors around them.

#[path = "../../packaging/tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};

use clap::Parser;
use packaging::sign::{IdentitySource, PasswordSource};
use xtask::package::{Args, PackageOptions, package, run};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: Args,
}

fn parse(args: &[&str]) -> Args {
    Cli::try_parse_from(std::iter::once("package").chain(args.iter().copied()))
        .unwrap()
        .args
}

fn bundles(d: &Path) -> Vec<PathBuf> {
    vec![
        support::make_bundle(
            &d.join("in"),
            "PrxSocketFilter",
            "net.prx.kext.SocketFilter",
            "0.1.0",
        ),
        support::make_bundle(
            &d.join("in"),
            "PrxIPFilter",
            "net.prx.kext.IPFilter",
            "0.1.0",
        ),
    ]
}

#[test]
fn openssl3_default_and_legacy_p12_sign_the_kexts_and_the_pkg() {
    let d = tempfile::tempdir().unwrap();
    support::write_identity(&d.path().join("app"), support::application());
    support::write_identity(&d.path().join("inst"), support::installer());
    let pw = d.path().join("pw.txt");
    std::fs::write(&pw, format!("{}\n", support::P12_PASSWORD)).unwrap();
    let p12 = |dir: &str, file: &str| IdentitySource::Pkcs12 {
        path: d.path().join(dir).join(file),
        password: PasswordSource::File(pw.clone()),
    };
    for file in ["id.p12", "id-legacy.p12"] {
        let out = d.path().join("out").join(file);
        let done = package(&PackageOptions {
            bundles: bundles(d.path()),
            out_dir: out.clone(),
            kext_identity: p12("app", file),
            installer_identity: Some(p12("inst", file)),
            timestamp_url: None,
            epoch: xtask::package::DEFAULT_EPOCH,
            notarize: false,
            default_bundles: false,
            tools: Vec::new(),
            example_config: xtask::package::default_example_config(&xtask::workspace_root()),
        })
        .unwrap_or_else(|e| panic!("{file}: {e:#}"));
        assert_eq!(done.kexts.len(), 2);
        for (name, sig) in &done.kexts {
            assert_eq!(
                sig.signer.as_deref(),
                Some("Developer ID Application: prx test DeveloperIdApplication (PRXTEAM001)"),
                "{file}: {name}"
            );
        }
        assert_eq!(
            done.pkg_signer.as_deref(),
            Some("Developer ID Installer: prx test DeveloperIdInstaller (PRXTEAM001)"),
            "{file}"
        );
        // The written pkg verifies independently of the run that wrote it.
        let v = packaging::xar::verify(&std::fs::read(&done.pkg).unwrap()).unwrap();
        assert!(v.rsa_signature && v.cms_signature, "{file}: {v:?}");
        let (ok, out) = support::run("7zz", &["t", done.pkg.to_str().unwrap()], None);
        assert!(ok && out.contains("Everything is Ok"), "{out}");
    }
}

#[test]
fn a_wrong_p12_password_says_so_and_writes_nothing() {
    let d = tempfile::tempdir().unwrap();
    support::write_identity(&d.path().join("app"), support::application());
    let pw = d.path().join("pw.txt");
    std::fs::write(&pw, "not the password\n").unwrap();
    for file in ["id.p12", "id-legacy.p12"] {
        let b = bundles(d.path());
        let mut args = vec!["--kext-p12".to_string()];
        args.push(d.path().join("app").join(file).display().to_string());
        args.extend(["--kext-p12-password-file".into(), pw.display().to_string()]);
        args.extend(["--out".into(), d.path().join("out").display().to_string()]);
        for bundle in &b {
            args.extend(["--bundle".into(), bundle.display().to_string()]);
        }
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        // The workspace root: `run` finds the default macOS tools there (the
        // password is checked before they need to exist).
        let e = format!(
            "{:#}",
            run(&xtask::workspace_root(), parse(&a)).unwrap_err()
        );
        assert!(e.contains(file) && e.contains("wrong password"), "{e}");
        assert!(!d.path().join("out").exists(), "{e}: something was written");
    }
}

#[test]
fn usage_errors_name_the_flag_and_the_fix_before_any_work() {
    let d = tempfile::tempdir().unwrap();
    let (_, _, p12) = support::write_identity(&d.path().join("app"), support::application());
    let p12 = p12.display().to_string();
    let out = d.path().join("out").display().to_string();
    let cases: &[(&[&str], &str)] = &[
        (
            &["--kext-p12", &p12, "--out", &out],
            "--kext-p12 needs its password: add --kext-p12-password-env VAR",
        ),
        (
            &["--installer-p12", &p12, "--out", &out],
            "--installer-p12-password-file FILE",
        ),
        (
            &["--bundle", "/nonexistent/Prx.kext", "--out", &out],
            "--bundle /nonexistent/Prx.kext: no such directory",
        ),
        (
            &["--check", "/nonexistent/prx.pkg"],
            "--check /nonexistent/prx.pkg: no such file",
        ),
        (
            &["--check", &p12],
            "not a .pkg: a flat installer package is a XAR archive",
        ),
    ];
    for (args, want) in cases {
        let e = format!("{:#}", run(d.path(), parse(args)).unwrap_err());
        // Flag messages name the path given.
        let want = want.replace("--kext-p12 needs", &format!("--kext-p12 {p12} needs"));
        assert!(e.contains(&want), "{args:?}: {e}");
        assert!(
            !d.path().join("out").exists(),
            "{args:?}: something was written"
        );
    }
}
