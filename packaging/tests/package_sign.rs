//! Codesigning and pkg signing with certificates generated at test time.

mod support;

use packaging::pkg::{self, KextInput, PkgSpec};
use packaging::sign::{self, Identity, IdentitySource, PasswordSource, Purpose};
use support::{P12_PASSWORD, TEAM, make_bundle, write_identity};

fn p12_env(dir: &std::path::Path, g: &support::Generated, var: &str) -> IdentitySource {
    let (_, _, p12) = write_identity(dir, g);
    // SAFETY: each test uses its own variable name; nothing else reads it.
    unsafe { std::env::set_var(var, P12_PASSWORD) };
    IdentitySource::Pkcs12 {
        path: p12,
        password: PasswordSource::Env(var.into()),
    }
}

#[test]
fn ad_hoc_signature_verifies_without_runtime_flag() {
    let d = tempfile::tempdir().unwrap();
    let src = make_bundle(
        d.path(),
        "PrxSocketFilter",
        "net.prx.kext.SocketFilter",
        "0.1.0",
    );
    let dst = d.path().join("out/PrxSocketFilter.kext");
    sign::sign_kext(&src, &dst, None, None).unwrap();
    let s = sign::verify_kext(&dst).unwrap();
    assert_eq!(s.signer, None);
    assert_eq!(s.flags & 0x10000, 0, "no RUNTIME");
    assert_eq!(s.identifier, "net.prx.kext.SocketFilter");
    assert!(dst.join("Contents/_CodeSignature/CodeResources").is_file());
}

#[test]
fn developer_id_from_pkcs12_with_password_from_env_and_file() {
    let d = tempfile::tempdir().unwrap();
    let src = make_bundle(d.path(), "PrxIPFilter", "net.prx.kext.IPFilter", "0.1.0");
    let from_env = p12_env(
        &d.path().join("id"),
        support::application(),
        "PRX_TEST_P12_PASSWORD_A",
    );
    let id = Identity::load(&from_env).unwrap().unwrap();
    assert_eq!(id.team_id().as_deref(), Some(TEAM));
    let dst = d.path().join("env/PrxIPFilter.kext");
    sign::sign_kext(&src, &dst, Some(&id), None).unwrap();
    let s = sign::verify_kext(&dst).unwrap();
    assert_eq!(s.team_id.as_deref(), Some(TEAM));
    assert_eq!(
        s.signer.as_deref(),
        Some("Developer ID Application: prx test DeveloperIdApplication (PRXTEAM001)")
    );
    assert_eq!(s.flags & 0x10000, 0, "no RUNTIME");

    let pw = d.path().join("pw.txt");
    std::fs::write(&pw, format!("{P12_PASSWORD}\n")).unwrap();
    let from_file = IdentitySource::Pkcs12 {
        path: d.path().join("id/id.p12"),
        password: PasswordSource::File(pw),
    };
    let id = Identity::load(&from_file).unwrap().unwrap();
    let dst = d.path().join("file/PrxIPFilter.kext");
    sign::sign_kext(&src, &dst, Some(&id), None).unwrap();
    assert_eq!(
        sign::verify_kext(&dst).unwrap().team_id.as_deref(),
        Some(TEAM)
    );
}

#[test]
fn developer_id_from_pem_key_and_certificate() {
    let d = tempfile::tempdir().unwrap();
    let src = make_bundle(d.path(), "PrxIPFilter", "net.prx.kext.IPFilter", "0.1.0");
    let (key, cert, _) = write_identity(&d.path().join("id"), support::application());
    let id = Identity::load(&IdentitySource::Pem {
        key,
        certs: vec![cert],
    })
    .unwrap()
    .unwrap();
    let dst = d.path().join("out/PrxIPFilter.kext");
    sign::sign_kext(&src, &dst, Some(&id), None).unwrap();
    let s = sign::verify_kext(&dst).unwrap();
    assert_eq!(s.team_id.as_deref(), Some(TEAM));
}

#[test]
fn a_tampered_signed_kext_does_not_verify() {
    let d = tempfile::tempdir().unwrap();
    let src = make_bundle(d.path(), "PrxIPFilter", "net.prx.kext.IPFilter", "0.1.0");
    let dst = d.path().join("out/PrxIPFilter.kext");
    sign::sign_kext(&src, &dst, None, None).unwrap();
    let exe = dst.join("Contents/MacOS/PrxIPFilter");
    let mut b = std::fs::read(&exe).unwrap();
    b[0x800] ^= 1;
    std::fs::write(&exe, b).unwrap();
    let e = sign::verify_kext(&dst).unwrap_err().to_string();
    assert!(e.contains("does not verify"), "{e}");
}

#[test]
fn wrong_pkcs12_password_is_a_clear_error_that_does_not_show_the_password() {
    let d = tempfile::tempdir().unwrap();
    let (_, _, p12) = write_identity(&d.path().join("id"), support::application());
    // SAFETY: test-local variable name.
    unsafe { std::env::set_var("PRX_TEST_P12_PASSWORD_WRONG", "hunter2-not-it") };
    let e = Identity::load(&IdentitySource::Pkcs12 {
        path: p12,
        password: PasswordSource::Env("PRX_TEST_P12_PASSWORD_WRONG".into()),
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("wrong password"), "{e}");
    assert!(!e.contains("hunter2"), "{e}");
    let e = Identity::load(&IdentitySource::Pkcs12 {
        path: d.path().join("id/id.p12"),
        password: PasswordSource::Env("PRX_TEST_P12_PASSWORD_UNSET".into()),
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("PRX_TEST_P12_PASSWORD_UNSET is not set"), "{e}");
    // Debug of a secret never shows it.
    let secret = PasswordSource::Env("PRX_TEST_P12_PASSWORD_WRONG".into())
        .read()
        .unwrap();
    assert_eq!(format!("{secret:?}"), "Secret(<redacted>)");
}

#[test]
fn notarization_prerequisites() {
    let d = tempfile::tempdir().unwrap();
    let now = chrono::Utc::now();
    let ts = Some("http://timestamp.example/ts");
    let load = |dir: &str, g: &support::Generated| {
        let (key, cert, _) = write_identity(&d.path().join(dir), g);
        Identity::load(&IdentitySource::Pem {
            key,
            certs: vec![cert],
        })
        .unwrap()
        .unwrap()
    };
    let app = load("app", support::application());
    let inst = load("inst", support::installer());
    sign::check_notarizable(Some(&app), Purpose::Kext, ts, now).unwrap();
    sign::check_notarizable(Some(&inst), Purpose::Installer, ts, now).unwrap();
    let e = sign::check_notarizable(None, Purpose::Kext, ts, now)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not ad-hoc"), "{e}");
    let e = sign::check_notarizable(Some(&app), Purpose::Installer, ts, now)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("is not a Developer ID Installer certificate"),
        "{e}"
    );
    let dev = load("dev", &support::development());
    let e = sign::check_notarizable(Some(&dev), Purpose::Kext, ts, now)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("is not a Developer ID Application certificate"),
        "{e}"
    );
    let expired = load("exp", &support::expired_application());
    let e = sign::check_notarizable(Some(&expired), Purpose::Kext, ts, now)
        .unwrap_err()
        .to_string();
    assert!(e.contains("is not valid now"), "{e}");
    let e = sign::check_notarizable(Some(&app), Purpose::Kext, None, now)
        .unwrap_err()
        .to_string();
    assert!(e.contains("secure timestamp"), "{e}");
}

fn unsigned_pkg(dir: &std::path::Path) -> Vec<u8> {
    let a = make_bundle(dir, "PrxSocketFilter", "net.prx.kext.SocketFilter", "0.1.0");
    pkg::build_unsigned(&PkgSpec {
        identifier: "net.prx.kext.pkg".into(),
        version: "0.1.0".into(),
        title: "prx test".into(),
        min_os: "10.13".into(),
        host_architectures: "x86_64,arm64".into(),
        require_restart: true,
        epoch: 1_767_225_600,
        kexts: vec![KextInput {
            bundle: a,
            bundle_identifier: "net.prx.kext.SocketFilter".into(),
            version: "0.1.0".into(),
        }],
        tools: Vec::new(),
        example_config: b"# example\n".to_vec(),
    })
    .unwrap()
}

#[test]
fn signed_pkg_has_valid_toc_checksum_rsa_and_cms_signatures() {
    let d = tempfile::tempdir().unwrap();
    let unsigned = unsigned_pkg(&d.path().join("in"));
    let src = p12_env(
        &d.path().join("id"),
        support::installer(),
        "PRX_TEST_P12_PASSWORD_I",
    );
    let id = Identity::load(&src).unwrap().unwrap();
    let signed = packaging::xar::sign(&unsigned, &id.key, &id.cert, &id.chain, None).unwrap();
    let v = packaging::xar::verify(&signed).unwrap();
    assert!(
        v.toc_checksum && v.rsa_signature && v.cms_signature,
        "{v:?}"
    );
    assert_eq!(
        v.signer.as_deref(),
        Some("Developer ID Installer: prx test DeveloperIdInstaller (PRXTEAM001)")
    );
    // Distribution, the two Resources pages, Bom, Payload, Scripts, PackageInfo.
    assert_eq!(v.file_checksums, 7);
    assert_eq!(packaging::xar::toc_checksum_style(&signed).unwrap(), "sha1");
    // Independent tools still read it.
    let path = d.path().join("signed.pkg");
    std::fs::write(&path, &signed).unwrap();
    let (ok, out) = support::run("7zz", &["t", path.to_str().unwrap()], None);
    assert!(ok && out.contains("Everything is Ok"), "{out}");
    let (ok, out) = support::run("bsdtar", &["-tf", path.to_str().unwrap()], None);
    assert!(ok && out.contains("Distribution"), "{out}");
    // The install check sees the signatures.
    let report = pkg::check::check(&path, &d.path().join("root")).unwrap();
    assert!(report.xar.rsa_signature && report.xar.cms_signature);

    // A changed byte in the TOC region breaks the checksum / signatures.
    let mut bad = signed.clone();
    bad[40] ^= 0x01;
    assert!(packaging::xar::verify(&bad).is_err());
    // A changed byte in a file's data breaks its archived checksum.
    let mut bad = signed.clone();
    let n = bad.len();
    bad[n - 5] ^= 0x01;
    assert!(packaging::xar::verify(&bad).is_err());
}

#[test]
fn ad_hoc_cannot_sign_a_pkg_and_pkg_signing_needs_rsa() {
    let d = tempfile::tempdir().unwrap();
    let unsigned = unsigned_pkg(&d.path().join("in"));
    let (key, cert, _) = write_identity(&d.path().join("ec"), support::application());
    let ec = Identity::load(&IdentitySource::Pem {
        key,
        certs: vec![cert],
    })
    .unwrap()
    .unwrap();
    // apple-xar signs the TOC digest with the key; an ECDSA key yields a
    // signature Installer's RSA check cannot accept. Either signing fails or the
    // result has no valid RSA signature.
    match packaging::xar::sign(&unsigned, &ec.key, &ec.cert, &[], None) {
        Err(_) => {}
        Ok(signed) => {
            let v = packaging::xar::verify(&signed);
            assert!(v.is_err() || !v.unwrap().rsa_signature);
        }
    }
}
