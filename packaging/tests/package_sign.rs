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

/// Loads `file` (in `dir`, written by `write_identity`) with the test password.
fn load_p12(dir: &std::path::Path, file: &str) -> Identity {
    let pw = dir.join("pw.txt");
    std::fs::write(&pw, format!("{P12_PASSWORD}\n")).unwrap();
    Identity::load(&IdentitySource::Pkcs12 {
        path: dir.join(file),
        password: PasswordSource::File(pw),
    })
    .unwrap_or_else(|e| panic!("{file}: {e}"))
    .unwrap()
}

#[test]
fn openssl3_default_and_legacy_p12_files_sign_kexts_and_the_pkg() {
    let d = tempfile::tempdir().unwrap();
    let src = make_bundle(d.path(), "PrxIPFilter", "net.prx.kext.IPFilter", "0.1.0");
    let unsigned = unsigned_pkg(&d.path().join("in"));
    write_identity(&d.path().join("app"), support::application());
    write_identity(&d.path().join("inst"), support::installer());
    // id.p12: OpenSSL 3 defaults (AES-256-CBC, SHA-256 MAC);
    // id-legacy.p12: `-legacy` (3DES/RC2-40, SHA-1 MAC), as Keychain exports.
    for file in ["id.p12", "id-legacy.p12"] {
        let app = load_p12(&d.path().join("app"), file);
        assert_eq!(app.team_id().as_deref(), Some(TEAM), "{file}");
        let dst = d.path().join(file).join("PrxIPFilter.kext");
        sign::sign_kext(&src, &dst, Some(&app), None).unwrap();
        let s = sign::verify_kext(&dst).unwrap();
        assert_eq!(
            s.signer.as_deref(),
            Some("Developer ID Application: prx test DeveloperIdApplication (PRXTEAM001)"),
            "{file}"
        );

        let inst = load_p12(&d.path().join("inst"), file);
        let signed =
            packaging::xar::sign(&unsigned, &inst.key, &inst.cert, &inst.chain, None).unwrap();
        let v = packaging::xar::verify(&signed).unwrap();
        assert!(v.rsa_signature && v.cms_signature, "{file}: {v:?}");
        assert_eq!(
            v.signer.as_deref(),
            Some("Developer ID Installer: prx test DeveloperIdInstaller (PRXTEAM001)"),
            "{file}"
        );
    }
}

#[test]
fn p12_wrong_password_and_unsupported_algorithms_are_named() {
    let d = tempfile::tempdir().unwrap();
    write_identity(&d.path().join("id"), support::application());
    // SAFETY: test-local variable name.
    unsafe { std::env::set_var("PRX_TEST_P12_PASSWORD_WRONG2", "not-the-password") };
    for file in ["id.p12", "id-legacy.p12"] {
        let e = Identity::load(&IdentitySource::Pkcs12 {
            path: d.path().join("id").join(file),
            password: PasswordSource::Env("PRX_TEST_P12_PASSWORD_WRONG2".into()),
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains(file) && e.ends_with("wrong password"), "{e}");
    }
    // A MAC digest outside SHA-1/SHA-2 (MD5), made by openssl itself.
    let (k, c) = (d.path().join("id/key.pem"), d.path().join("id/cert.pem"));
    let p = d.path().join("md5.p12");
    let pass = format!("pass:{P12_PASSWORD}");
    let (ok, out) = support::run(
        "openssl",
        &[
            "pkcs12",
            "-export",
            "-macalg",
            "md5",
            "-inkey",
            k.to_str().unwrap(),
            "-in",
            c.to_str().unwrap(),
            "-out",
            p.to_str().unwrap(),
            "-passout",
            &pass,
        ],
        None,
    );
    assert!(ok, "{out}");
    let pw = d.path().join("pw.txt");
    std::fs::write(&pw, P12_PASSWORD).unwrap();
    let e = Identity::load(&IdentitySource::Pkcs12 {
        path: p,
        password: PasswordSource::File(pw.clone()),
    })
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("md5.p12") && e.contains("algorithm prx does not read") && e.contains("PBES2"),
        "{e}"
    );
    // Not a PKCS#12 file at all.
    let e = Identity::load(&IdentitySource::Pkcs12 {
        path: d.path().join("id/cert.pem"),
        password: PasswordSource::File(pw),
    })
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("cert.pem") && e.contains("not a PKCS#12 file"),
        "{e}"
    );
}
