//! End-to-end: `cargo xtask package` on the real release kexts (universal
//! x86_64 + arm64e), with identities generated at test time, read back with
//! independent tools, plus bad inputs leaving no partial output.

use std::path::{Path, PathBuf};

use apple_codesign::{CertificateProfile, create_self_signed_code_signing_certificate};
use packaging::sign::{IdentitySource, PasswordSource};
use prx_tests::{release_bundles, tool, tool_status};
use x509_certificate::KeyAlgorithm;
use xtask::package::{PackageOptions, package};

const PASSWORD_VAR: &str = "PRX_E2E_P12_PASSWORD";

fn p12(dir: &Path, profile: CertificateProfile, algorithm: KeyAlgorithm) -> PathBuf {
    let (cert, key) = create_self_signed_code_signing_certificate(
        algorithm,
        profile,
        "PRXTEAM001",
        "prx e2e",
        "US",
        chrono::Duration::hours(2),
    )
    .unwrap();
    let pfx = p12::PFX::new(
        &cert.encode_der().unwrap(),
        &key.to_pkcs8_one_asymmetric_key_der(),
        None,
        "e2e secret",
        "id",
    )
    .unwrap();
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join(format!("{profile:?}.p12"));
    std::fs::write(&path, pfx.to_der()).unwrap();
    path
}

fn options(out: &Path) -> PackageOptions {
    PackageOptions {
        bundles: release_bundles().iter().map(|b| b.path.clone()).collect(),
        out_dir: out.to_path_buf(),
        kext_identity: IdentitySource::AdHoc,
        installer_identity: None,
        timestamp_url: None,
        epoch: xtask::package::DEFAULT_EPOCH,
        notarize: false,
        default_bundles: false,
    }
}

#[test]
fn developer_id_signed_kexts_and_pkg_verify_and_install_as_root_wheel() {
    let d = tempfile::tempdir().unwrap();
    // SAFETY: only this test reads the variable.
    unsafe { std::env::set_var(PASSWORD_VAR, "e2e secret") };
    let ids = d.path().join("ids");
    let mut opts = options(&d.path().join("out"));
    opts.kext_identity = IdentitySource::Pkcs12 {
        path: p12(
            &ids,
            CertificateProfile::DeveloperIdApplication,
            KeyAlgorithm::Ecdsa(x509_certificate::EcdsaCurve::Secp256r1),
        ),
        password: PasswordSource::Env(PASSWORD_VAR.into()),
    };
    opts.installer_identity = Some(IdentitySource::Pkcs12 {
        path: p12(
            &ids,
            CertificateProfile::DeveloperIdInstaller,
            KeyAlgorithm::Rsa,
        ),
        password: PasswordSource::Env(PASSWORD_VAR.into()),
    });
    let done = package(&opts).unwrap();
    assert_eq!(done.kexts.len(), 2);
    for (name, sig) in &done.kexts {
        assert_eq!(sig.slices, 2, "{name}: both slices signed");
        assert_eq!(sig.team_id.as_deref(), Some("PRXTEAM001"), "{name}");
        assert_eq!(sig.flags & 0x10000, 0, "{name}: no hardened runtime");
        assert!(
            sig.signer
                .as_deref()
                .unwrap()
                .starts_with("Developer ID Application:"),
            "{name}"
        );
    }
    assert!(
        done.pkg_signer
            .as_deref()
            .unwrap()
            .starts_with("Developer ID Installer:")
    );
    assert!(done.pkg.ends_with("prx-0.1.0.pkg"));
    let bytes = std::fs::read(&done.pkg).unwrap();
    let v = packaging::xar::verify(&bytes).unwrap();
    assert!(v.toc_checksum && v.rsa_signature && v.cms_signature);

    let pkg = done.pkg.to_str().unwrap();
    let listing = tool("bsdtar", &["-tvf", pkg]);
    assert!(
        listing.contains(" Distribution") && listing.contains(" prx.pkg/Payload"),
        "{listing}"
    );
    let (ok, out) = tool_status("7zz", &["t", pkg]);
    assert!(ok && out.contains("Everything is Ok"), "{out}");

    let report = xtask::package::check(&done.pkg).unwrap();
    let c = &report.components[0];
    assert_eq!(c.install_location, "/Library/Extensions");
    for exe in [
        "PrxSocketFilter.kext/Contents/MacOS/PrxSocketFilter",
        "PrxIPFilter.kext/Contents/MacOS/PrxIPFilter",
    ] {
        let i = c
            .installed
            .iter()
            .find(|i| i.path == format!("/Library/Extensions/{exe}"))
            .unwrap();
        assert_eq!((i.uid, i.gid, i.mode), (0, 0, 0o100755), "{exe}");
    }
    assert!(c.installed.iter().any(|i| {
        i.path
            .ends_with("PrxIPFilter.kext/Contents/_CodeSignature/CodeResources")
    }));

    // The zip: the signed bundles with fixed timestamps and modes.
    let z = tool("bsdtar", &["-tvf", done.zip.to_str().unwrap()]);
    assert!(
        z.lines().any(|l| l.starts_with("-rwxr-xr-x")
            && l.ends_with("PrxSocketFilter.kext/Contents/MacOS/PrxSocketFilter")),
        "{z}"
    );
    assert!(z.lines().all(|l| l.contains("Jan  1  2026")), "{z}");
    // Nothing but the two outputs in the output directory.
    let mut names: Vec<String> = std::fs::read_dir(d.path().join("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["prx-0.1.0-kexts.zip", "prx-0.1.0.pkg"]);
}

#[test]
fn two_unsigned_packages_of_the_same_build_are_bit_identical() {
    let d = tempfile::tempdir().unwrap();
    let a = package(&options(&d.path().join("a"))).unwrap();
    let b = package(&options(&d.path().join("b"))).unwrap();
    assert!(
        std::fs::read(&a.pkg).unwrap() == std::fs::read(&b.pkg).unwrap(),
        "pkg differs"
    );
    assert!(
        std::fs::read(&a.zip).unwrap() == std::fs::read(&b.zip).unwrap(),
        "zip differs"
    );
}

fn assert_no_output(out: &Path) {
    if out.exists() {
        let left: Vec<_> = std::fs::read_dir(out)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "partial output left behind: {left:?}");
    }
}

#[test]
fn bad_inputs_fail_clearly_and_leave_nothing_behind() {
    let d = tempfile::tempdir().unwrap();
    // Missing kext bundle.
    let out = d.path().join("missing");
    let mut opts = options(&out);
    opts.bundles.push(d.path().join("Nope.kext"));
    let e = format!("{:#}", package(&opts).unwrap_err());
    assert!(
        e.contains("missing kext bundle")
            && e.contains("Nope.kext")
            && e.contains("cargo xtask build --release"),
        "{e}"
    );
    assert_no_output(&out);

    // Wrong PKCS#12 password: reported, not printed.
    let out = d.path().join("wrong-password");
    let mut opts = options(&out);
    // SAFETY: only this test reads the variable.
    unsafe { std::env::set_var("PRX_E2E_WRONG_PASSWORD", "not-the-password") };
    opts.kext_identity = IdentitySource::Pkcs12 {
        path: p12(
            &d.path().join("ids"),
            CertificateProfile::DeveloperIdApplication,
            KeyAlgorithm::Ecdsa(x509_certificate::EcdsaCurve::Secp256r1),
        ),
        password: PasswordSource::Env("PRX_E2E_WRONG_PASSWORD".into()),
    };
    let e = format!("{:#}", package(&opts).unwrap_err());
    assert!(
        e.contains("wrong password") && !e.contains("not-the-password"),
        "{e}"
    );
    assert_no_output(&out);

    // Unwritable output: a file where the output directory should be, and a
    // read-only directory (as root, permission bits do not stop writes, so the
    // file case is the portable one).
    let blocker = d.path().join("blocker");
    std::fs::write(&blocker, b"not a directory").unwrap();
    let e = format!("{:#}", package(&options(&blocker.join("pkg"))).unwrap_err());
    assert!(e.contains("cannot create the output directory"), "{e}");
    let e = format!("{:#}", package(&options(&blocker)).unwrap_err());
    assert!(e.contains("blocker"), "{e}");
    assert_eq!(std::fs::read(&blocker).unwrap(), b"not a directory");
}
