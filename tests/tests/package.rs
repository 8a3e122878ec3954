//! End-to-end: `cargo xtask package` on the real release kexts (universal
//! x86_64 + arm64e), with identities generated at test time, read back with
//! independent tools, plus bad inputs leaving no partial output.

use std::path::{Path, PathBuf};

use apple_codesign::{CertificateProfile, create_self_signed_code_signing_certificate};
use packaging::sign::{IdentitySource, PasswordSource};
use prx_tests::{release_bundles, release_tools, thin, tool, tool_status};
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
        tools: release_tools().iter().map(|t| t.path.clone()).collect(),
        example_config: xtask::package::default_example_config(&xtask::workspace_root()),
        // The release bundles `cargo xtask build --release` writes, as by default.
        default_bundles: true,
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
    // prxctl and prxd: Developer ID Application, hardened runtime, both slices.
    let names: Vec<&str> = done.tools.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["prxctl", "prxd"]);
    for (name, sig) in &done.tools {
        assert_eq!(sig.slices, 2);
        assert_eq!(sig.identifier, format!("net.prx.{name}"));
        assert_ne!(sig.flags & 0x10000, 0, "{name}: hardened runtime");
        assert!(
            sig.signer
                .as_deref()
                .unwrap()
                .starts_with("Developer ID Application:")
        );
    }
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
    assert_eq!(c.install_location, "/");
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

/// The exports of a libSystem text stub (TAPI .tbd v4, YAML) for `target`
/// (`x86_64-macos`, `arm64-macos`): every `symbols`, `weak-symbols` and
/// `thread-local-symbols` list under `exports`/`reexports` of an entry whose
/// `targets` include it, in every document (libSystem and the libraries it
/// re-exports). Written here, independently of the linker.
fn tbd_exports(text: &str, target: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let mut section = String::new();
    let mut targets_ok = false;
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if !line.starts_with([' ', '-']) {
            section = line.split(':').next().unwrap_or("").to_string();
        }
        let t = line.trim_start().trim_start_matches("- ").trim_start();
        let Some((key, rest)) = t.split_once(':') else {
            continue;
        };
        if !rest.trim_start().starts_with('[') {
            continue;
        }
        let mut list = rest.to_string();
        while !list.contains(']') {
            list.push_str(lines.next().expect("unterminated list"));
        }
        let items = list
            .trim()
            .trim_start_matches('[')
            .split(']')
            .next()
            .unwrap()
            .split(',')
            .map(|s| s.trim().trim_matches('\'').to_string())
            .filter(|s| !s.is_empty());
        match key {
            "targets" => targets_ok = items.clone().any(|s| s == target),
            "symbols" | "weak-symbols" | "thread-local-symbols"
                if targets_ok && (section == "exports" || section == "reexports") =>
            {
                out.extend(items)
            }
            _ => {}
        }
    }
    out
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// An independent check of a thin slice's code signature: LC_CODE_SIGNATURE
/// → SuperBlob → CodeDirectory (SHA-256), every page hash recomputed over the
/// file up to codeLimit (which must be where the signature starts). Returns
/// (identifier, flags).
fn check_code_signature(slice: &[u8]) -> (String, u32) {
    assert_eq!(le32(slice, 0), 0xFEED_FACF);
    let ncmds = le32(slice, 16) as usize;
    let mut at = 32;
    let mut sig = None;
    for _ in 0..ncmds {
        let (cmd, size) = (le32(slice, at), le32(slice, at + 4) as usize);
        if cmd == 0x1d {
            sig = Some((le32(slice, at + 8) as usize, le32(slice, at + 12) as usize));
        }
        at += size;
    }
    let (off, size) = sig.expect("LC_CODE_SIGNATURE");
    assert_eq!(off + size, slice.len(), "the signature ends the slice");
    let sb = &slice[off..off + size];
    assert_eq!(be32(sb, 0), 0xFADE_0CC0, "embedded-signature SuperBlob");
    let count = be32(sb, 8) as usize;
    let cd_off = (0..count)
        .find(|i| be32(sb, 12 + i * 8) == 0)
        .map(|i| be32(sb, 16 + i * 8) as usize)
        .expect("a CodeDirectory slot");
    let cd = &sb[cd_off..];
    assert_eq!(be32(cd, 0), 0xFADE_0C02, "CodeDirectory magic");
    let flags = be32(cd, 12);
    let hash_offset = be32(cd, 16) as usize;
    let ident_offset = be32(cd, 20) as usize;
    let n_code = be32(cd, 28) as usize;
    let code_limit = be32(cd, 32) as usize;
    let (hash_size, hash_type, page_log2) = (cd[36] as usize, cd[37], cd[39]);
    assert_eq!((hash_size, hash_type), (32, 2), "SHA-256");
    assert_eq!(
        code_limit, off,
        "the code directory covers everything before it"
    );
    let page = 1usize << page_log2;
    assert_eq!(n_code, code_limit.div_ceil(page));
    for i in 0..n_code {
        let chunk = &slice[i * page..((i + 1) * page).min(code_limit)];
        let want = &cd[hash_offset + i * hash_size..hash_offset + (i + 1) * hash_size];
        let got = <sha2::Sha256 as sha2::Digest>::digest(chunk);
        assert_eq!(got.as_slice(), want, "page {i} hash");
    }
    let ident = &cd[ident_offset..];
    let end = ident.iter().position(|b| *b == 0).unwrap();
    (String::from_utf8(ident[..end].to_vec()).unwrap(), flags)
}

#[test]
fn payload_tools_are_signed_universal_macos_executables_linking_only_libsystem() {
    let d = tempfile::tempdir().unwrap();
    let done = package(&options(&d.path().join("out"))).unwrap();
    // prxctl for users' shells, prxd for launchd only.
    let installed = [
        ("prxctl", "usr/local/bin/prxctl"),
        ("prxd", "usr/local/libexec/prxd"),
    ];
    let names: Vec<&str> = done.tools.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["prxctl", "prxd"]);
    for (_, sig) in &done.tools {
        assert_eq!((sig.slices, sig.signer.as_deref()), (2, None));
    }

    // Out of the pkg with bsdtar only.
    let x = d.path().join("x");
    std::fs::create_dir(&x).unwrap();
    tool(
        "bsdtar",
        &["-xf", done.pkg.to_str().unwrap(), "-C", x.to_str().unwrap()],
    );
    let root = x.join("root");
    std::fs::create_dir(&root).unwrap();
    tool(
        "bsdtar",
        &[
            "-xf",
            x.join("prx.pkg/Payload").to_str().unwrap(),
            "-C",
            root.to_str().unwrap(),
        ],
    );
    for f in [
        "Library/LaunchDaemons/net.prx.apply.plist",
        "Library/LaunchDaemons/net.prx.prxd.plist",
        "Library/Application Support/prx/prx.toml.example",
        "usr/local/share/prx/uninstall.sh",
    ] {
        assert!(root.join(f).is_file(), "{f} in the payload");
    }
    assert!(!root.join("usr/local/bin/prxd").exists());
    let example =
        std::fs::read_to_string(root.join("Library/Application Support/prx/prx.toml.example"))
            .unwrap();
    prxctl::config::parse(&example).expect("the shipped example configuration is valid");
    // The LaunchDaemon runs the installed prxd on the installed prx.toml.
    let daemon: plist::Value =
        plist::from_file(root.join("Library/LaunchDaemons/net.prx.prxd.plist")).unwrap();
    let args: Vec<&str> = daemon.as_dictionary().unwrap()["ProgramArguments"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_string())
        .collect();
    assert_eq!(
        args,
        [
            "/usr/local/libexec/prxd",
            "--config",
            "/Library/Application Support/prx/prx.toml"
        ]
    );
    // The uninstaller removes prxd, its log and its directory if empty.
    let u = std::fs::read_to_string(root.join("usr/local/share/prx/uninstall.sh")).unwrap();
    for line in [
        "usr/local/libexec/prxd",
        "var/log/prxd.log",
        "usr/local/libexec",
    ] {
        // One path a line, in the lists `files='…'` and `dirs='…'`.
        let listed = u.lines().any(|l| {
            l.trim_start_matches("files='")
                .trim_start_matches("dirs='")
                .trim_end_matches('\'')
                == line
        });
        assert!(listed, "{line} in the uninstaller");
    }
    assert!(
        u.contains("labels=\"net.prx.prxd net.prx.apply\""),
        "stop order"
    );

    let tbd = std::fs::read_to_string(xtask::tools::libsystem_stub(
        &xtask::workspace_root().join("target"),
    ))
    .unwrap();
    for (name, rel) in installed {
        check_installed_tool(&root.join(rel), name, &tbd);
    }
}

/// One installed tool: universal x86_64 + arm64, `MH_EXECUTE`, only
/// libSystem, its minimum macOS, every import exported by the stub, and its
/// ad-hoc signature (our reader and apple-codesign's verifier).
fn check_installed_tool(exe: &Path, name: &str, tbd: &str) {
    let p = exe.to_str().unwrap();
    let info = tool("llvm-lipo-19", &["-info", p]);
    assert!(
        info.trim_end().ends_with("are: x86_64 arm64"),
        "{name}: {info}"
    );
    for (arch, target, min) in [
        ("x86_64", "x86_64-macos", "10.13"),
        ("arm64", "arm64-macos", "11.0"),
    ] {
        let t = thin(exe, arch);
        let ts = t.to_str().unwrap();
        let hv = tool("llvm-otool-19", &["-hv", ts]);
        assert!(hv.contains(" EXECUTE "), "{name} {arch}: {hv}");
        let libs = tool("llvm-otool-19", &["-L", ts]);
        let libs: Vec<&str> = libs.lines().skip(1).map(|l| l.trim()).collect();
        assert_eq!(libs.len(), 1, "{name} {arch}: {libs:?}");
        assert!(
            libs[0].starts_with("/usr/lib/libSystem.B.dylib "),
            "{name} {arch}: {libs:?}"
        );
        // The minimum macOS: LC_BUILD_VERSION for arm64 (11.0); for x86_64's
        // 10.13, LC_VERSION_MIN_MACOSX, as Apple's ld64 also writes below 10.14.
        let l = tool("llvm-otool-19", &["-l", ts]);
        let (cmd, key) = if arch == "arm64" {
            ("LC_BUILD_VERSION", "minos")
        } else {
            ("LC_VERSION_MIN_MACOSX", "version")
        };
        let block = l
            .split("Load command")
            .find(|b| b.contains(cmd))
            .unwrap_or_else(|| panic!("{name} {arch}: no {cmd}"));
        assert!(
            block
                .lines()
                .any(|x| x.split_whitespace().collect::<Vec<_>>() == [key, min]),
            "{name} {arch}: {block}"
        );
        // Every undefined symbol is exported by the stub, for this target.
        let exports = tbd_exports(tbd, target);
        assert!(exports.len() > 1000, "{target}: {} exports", exports.len());
        let undefined = tool("llvm-nm-19", &["-u", ts]);
        let undefined: Vec<&str> = undefined
            .lines()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        assert!(undefined.len() > 20, "{name} {arch}: {undefined:?}");
        for s in &undefined {
            assert!(
                exports.contains(*s),
                "{name} {arch}: {s} is not exported by libSystem.tbd"
            );
        }
        // The signature, checked without apple-codesign.
        let bytes = std::fs::read(&t).unwrap();
        let (ident, flags) = check_code_signature(&bytes);
        assert_eq!(ident, format!("net.prx.{name}"), "{arch}");
        assert_eq!(flags & 0x2, 0x2, "{name} {arch}: ad-hoc");
        std::fs::remove_file(&t).unwrap();
    }
    // And apple-codesign's verifier, on the file as installed.
    let v = packaging::sign::verify_executable(exe).unwrap();
    assert_eq!(v.slices, 2, "{name}");
}
