//! Test fixtures made at test time: a minimal kext bundle (a tiny x86_64
//! MH_KEXT_BUNDLE with __TEXT and __LINKEDIT, enough for apple-codesign) and
//! self-signed Developer ID certificates (Application: ECDSA P-256, Installer:
//! RSA 2048 because XAR's RSA signature needs an RSA key).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use apple_codesign::{CertificateProfile, create_self_signed_code_signing_certificate};
use x509_certificate::{EcdsaCurve, KeyAlgorithm};

pub const TEAM: &str = "PRXTEAM001";

/// A minimal 64-bit Mach-O kext binary (MH_KEXT_BUNDLE, x86_64).
pub fn tiny_macho() -> Vec<u8> {
    let mut b = Vec::new();
    let u32le = |b: &mut Vec<u8>, v: u32| b.extend_from_slice(&v.to_le_bytes());
    let u64le = |b: &mut Vec<u8>, v: u64| b.extend_from_slice(&v.to_le_bytes());
    u32le(&mut b, 0xfeed_facf);
    u32le(&mut b, 0x0100_0007);
    u32le(&mut b, 3);
    u32le(&mut b, 0xB); // MH_KEXT_BUNDLE
    u32le(&mut b, 2);
    u32le(&mut b, 144 + 80);
    u32le(&mut b, 1); // MH_NOUNDEFS
    u32le(&mut b, 0);
    let seg = |b: &mut Vec<u8>,
               name: &str,
               vmaddr: u64,
               fileoff: u64,
               filesize: u64,
               prot: u32,
               nsects: u32| {
        u32le(b, 0x19);
        u32le(b, 72 + 80 * nsects);
        let mut n = [0u8; 16];
        n[..name.len()].copy_from_slice(name.as_bytes());
        b.extend_from_slice(&n);
        u64le(b, vmaddr);
        u64le(b, 0x1000);
        u64le(b, fileoff);
        u64le(b, filesize);
        u32le(b, prot);
        u32le(b, prot);
        u32le(b, nsects);
        u32le(b, 0);
    };
    seg(&mut b, "__TEXT", 0, 0, 0x1000, 5, 1);
    // section_64 __TEXT,__text at 0x800, 16 bytes of `ret`.
    let mut name = [0u8; 16];
    name[..6].copy_from_slice(b"__text");
    b.extend_from_slice(&name);
    let mut seg_name = [0u8; 16];
    seg_name[..6].copy_from_slice(b"__TEXT");
    b.extend_from_slice(&seg_name);
    u64le(&mut b, 0x800);
    u64le(&mut b, 16);
    u32le(&mut b, 0x800);
    u32le(&mut b, 0);
    u32le(&mut b, 0);
    u32le(&mut b, 0);
    u32le(&mut b, 0x8000_0400);
    u32le(&mut b, 0);
    u32le(&mut b, 0);
    u32le(&mut b, 0);
    seg(&mut b, "__LINKEDIT", 0x1000, 0x1000, 16, 1, 0);
    b.resize(0x1000, 0xC3);
    b.extend_from_slice(&[0u8; 16]);
    b
}

/// Writes `<dir>/<exe>.kext` with an Info.plist and the tiny executable.
pub fn make_bundle(dir: &Path, exe: &str, id: &str, version: &str) -> PathBuf {
    let bundle = dir.join(format!("{exe}.kext"));
    std::fs::create_dir_all(bundle.join("Contents/MacOS")).unwrap();
    let mut d = plist::Dictionary::new();
    for (k, v) in [
        ("CFBundleIdentifier", id),
        ("CFBundleExecutable", exe),
        ("CFBundleVersion", version),
        ("CFBundleShortVersionString", version),
        ("CFBundlePackageType", "KEXT"),
        ("CFBundleInfoDictionaryVersion", "6.0"),
        ("LSMinimumSystemVersion", "10.13"),
    ] {
        d.insert(k.into(), plist::Value::String(v.into()));
    }
    plist::Value::Dictionary(d)
        .to_file_xml(bundle.join("Contents/Info.plist"))
        .unwrap();
    let exe_path = bundle.join("Contents/MacOS").join(exe);
    std::fs::write(&exe_path, tiny_macho()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&exe_path, std::fs::Permissions::from_mode(0o755)).unwrap();
    bundle
}

/// PEM key, PEM certificate, PKCS#12 files (with [`P12_PASSWORD`]) of one identity.
pub struct Generated {
    pub key_pem: String,
    pub cert_pem: String,
    /// Made by `openssl pkcs12 -export` with OpenSSL 3's defaults: PBES2
    /// (PBKDF2, AES-256-CBC) for key and certificates, HMAC-SHA-256 MAC.
    pub p12: Vec<u8>,
    /// Made by `openssl pkcs12 -export -legacy`: 3DES key bag, RC2-40
    /// certificate bag, HMAC-SHA-1 MAC (also what Keychain Access writes).
    pub p12_legacy: Vec<u8>,
}

/// `openssl pkcs12 -export` of the key and certificate (`-legacy` with `legacy`).
/// The file's algorithms are checked with `openssl pkcs12 -info`, so a change
/// of OpenSSL's defaults cannot silently turn one kind into the other.
pub fn openssl_p12(key_pem: &str, cert_pem: &str, legacy: bool) -> Vec<u8> {
    let d = tempfile::tempdir().unwrap();
    let (k, c, p) = (
        d.path().join("key.pem"),
        d.path().join("cert.pem"),
        d.path().join("id.p12"),
    );
    std::fs::write(&k, key_pem).unwrap();
    std::fs::write(&c, cert_pem).unwrap();
    let pass = format!("pass:{P12_PASSWORD}");
    let mut args = vec!["pkcs12", "-export", "-name", "code-signing"];
    if legacy {
        args.push("-legacy");
    }
    args.extend([
        "-inkey",
        k.to_str().unwrap(),
        "-in",
        c.to_str().unwrap(),
        "-out",
        p.to_str().unwrap(),
        "-passout",
        &pass,
    ]);
    let (ok, out) = run("openssl", &args, None);
    assert!(ok, "openssl pkcs12 -export: {out}");
    let mut info = vec![
        "pkcs12",
        "-info",
        "-noout",
        "-in",
        p.to_str().unwrap(),
        "-passin",
        &pass,
    ];
    if legacy {
        info.push("-legacy");
    }
    let (ok, out) = run("openssl", &info, None);
    assert!(ok, "openssl pkcs12 -info: {out}");
    if legacy {
        assert!(out.contains("MAC: sha1"), "{out}");
        assert!(out.contains("pbeWithSHA1And3-KeyTripleDES-CBC"), "{out}");
    } else {
        assert!(out.contains("MAC: sha256"), "{out}");
        assert!(out.contains("PBES2, PBKDF2, AES-256-CBC"), "{out}");
        assert!(!out.contains("pbeWithSHA1"), "{out}");
    }
    std::fs::read(&p).unwrap()
}

pub const P12_PASSWORD: &str = "correct horse battery staple";

fn generate(algorithm: KeyAlgorithm, profile: CertificateProfile, hours: i64) -> Generated {
    let (cert, key) = create_self_signed_code_signing_certificate(
        algorithm,
        profile,
        TEAM,
        &format!("prx test {profile:?}"),
        "US",
        chrono::Duration::hours(hours),
    )
    .unwrap();
    let key_der = key.to_pkcs8_one_asymmetric_key_der();
    let key_pem = pem::encode(&pem::Pem::new("PRIVATE KEY", key_der.to_vec()));
    let cert_pem = cert.encode_pem();
    Generated {
        p12: openssl_p12(&key_pem, &cert_pem, false),
        p12_legacy: openssl_p12(&key_pem, &cert_pem, true),
        key_pem,
        cert_pem,
    }
}

/// Developer ID Application (ECDSA P-256), valid for a day.
pub fn application() -> &'static Generated {
    static G: OnceLock<Generated> = OnceLock::new();
    G.get_or_init(|| {
        generate(
            KeyAlgorithm::Ecdsa(EcdsaCurve::Secp256r1),
            CertificateProfile::DeveloperIdApplication,
            24,
        )
    })
}

/// Developer ID Installer (RSA 2048), valid for a day.
pub fn installer() -> &'static Generated {
    static G: OnceLock<Generated> = OnceLock::new();
    G.get_or_init(|| {
        generate(
            KeyAlgorithm::Rsa,
            CertificateProfile::DeveloperIdInstaller,
            24,
        )
    })
}

/// Apple Development (not Developer ID), ECDSA.
pub fn development() -> Generated {
    generate(
        KeyAlgorithm::Ecdsa(EcdsaCurve::Secp256r1),
        CertificateProfile::AppleDevelopment,
        24,
    )
}

/// Developer ID Application that expired (validity ends before it starts).
pub fn expired_application() -> Generated {
    generate(
        KeyAlgorithm::Ecdsa(EcdsaCurve::Secp256r1),
        CertificateProfile::DeveloperIdApplication,
        -1,
    )
}

/// Writes the identity's files into `dir`: key.pem, cert.pem, id.p12 (OpenSSL 3
/// defaults) and id-legacy.p12 (`-legacy`); returns the first three.
pub fn write_identity(dir: &Path, g: &Generated) -> (PathBuf, PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let (k, c, p) = (
        dir.join("key.pem"),
        dir.join("cert.pem"),
        dir.join("id.p12"),
    );
    std::fs::write(&k, &g.key_pem).unwrap();
    std::fs::write(&c, &g.cert_pem).unwrap();
    std::fs::write(&p, &g.p12).unwrap();
    std::fs::write(dir.join("id-legacy.p12"), &g.p12_legacy).unwrap();
    (k, c, p)
}

/// Runs a program and returns (success, stdout+stderr); panics if it is missing.
pub fn run(program: &str, args: &[&str], cwd: Option<&Path>) -> (bool, String) {
    let mut cmd = std::process::Command::new(program);
    cmd.args(args);
    if let Some(d) = cwd {
        cmd.current_dir(d);
    }
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("{program}: {e} (install libarchive-tools, cpio and 7zip: see .ci/run)")
    });
    let mut s = String::from_utf8_lossy(&out.stdout).to_string();
    s.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), s)
}
