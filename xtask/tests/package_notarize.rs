//! `cargo xtask package --notarize [--staple]` glue: the prerequisites are
//! checked before anything is written, and a packaged pkg is notarized and
//! stapled through the stub of Apple's services (packaging/tests/stub).

#[path = "../../packaging/tests/stub/mod.rs"]
mod stub;
#[path = "../../packaging/tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use packaging::notary::WaitOptions;
use packaging::sign::IdentitySource;
use serde_json::json;
use stub::*;
use xtask::package::{PackageOptions, check, notarize, package};

fn pem_identity(dir: &Path, g: &support::Generated) -> IdentitySource {
    let (key, cert, _) = support::write_identity(dir, g);
    IdentitySource::Pem {
        key,
        certs: vec![cert],
    }
}

fn options(
    d: &Path,
    kext: IdentitySource,
    installer: Option<IdentitySource>,
    timestamp: Option<&str>,
) -> PackageOptions {
    let bundles: Vec<PathBuf> = vec![
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
    ];
    PackageOptions {
        bundles,
        out_dir: d.join("out"),
        kext_identity: kext,
        installer_identity: installer,
        timestamp_url: timestamp.map(str::to_string),
        epoch: xtask::package::DEFAULT_EPOCH,
        notarize: true,
        tools: Vec::new(),
        example_config: xtask::package::default_example_config(&xtask::workspace_root()),
        default_bundles: false,
    }
}

fn out_is_empty(d: &Path) -> bool {
    std::fs::read_dir(d.join("out")).map_or(true, |mut r| r.next().is_none())
}

#[test]
fn notarize_refuses_ad_hoc_non_developer_id_and_untimestamped_before_writing() {
    let d = tempfile::tempdir().unwrap();
    let app = pem_identity(&d.path().join("app"), support::application());
    let inst = pem_identity(&d.path().join("inst"), support::installer());
    let dev = pem_identity(&d.path().join("dev"), &support::development());
    let ts = Some("http://timestamp.invalid/ts01");
    let cases = [
        (
            IdentitySource::AdHoc,
            Some(inst.clone()),
            ts,
            "notarization needs kexts signed with a Developer ID certificate, not ad-hoc",
        ),
        (
            app.clone(),
            None,
            ts,
            "notarization needs the pkg signed with a Developer ID certificate, not ad-hoc",
        ),
        (
            dev,
            Some(inst.clone()),
            ts,
            "is not a Developer ID Application certificate",
        ),
        (app, Some(inst), None, "secure timestamp"),
    ];
    for (kext, installer, ts, want) in cases {
        let e = format!(
            "{:#}",
            package(&options(d.path(), kext, installer, ts)).unwrap_err()
        );
        assert!(e.contains(want), "{e}");
        assert!(out_is_empty(d.path()), "{e}: something was written");
    }
}

#[test]
fn packaged_pkg_is_notarized_and_stapled_in_place() {
    let d = tempfile::tempdir().unwrap();
    let app = pem_identity(&d.path().join("app"), support::application());
    let inst = pem_identity(&d.path().join("inst"), support::installer());
    // No time-stamp server here: package without the notarization
    // prerequisites, then run the notarization step on the written pkg.
    let mut opts = options(d.path(), app, Some(inst), None);
    opts.notarize = false;
    let done = package(&opts).unwrap();
    let signed = std::fs::read(&done.pkg).unwrap();

    let (key, public) = api_key();
    let stub = Stub::start(public, &["In Progress", "Accepted"], json!({}));
    let wait = WaitOptions {
        timeout: Duration::from_secs(20),
        poll_interval: Duration::from_millis(20),
    };
    let mut lines = Vec::new();
    notarize(&service(&stub, &key), &done.pkg, wait, true, &mut |l| {
        lines.push(l.to_string())
    })
    .unwrap();
    assert_eq!(stub.errors(), Vec::<String>::new());
    let text = lines.join("\n");
    assert!(
        text.contains("notarization: prx-0.1.0.pkg accepted")
            && text.contains("stapled the notarization ticket (2/1/"),
        "{text}"
    );
    assert_eq!(
        stub.state.lock().unwrap().uploaded.as_deref(),
        Some(&signed[..])
    );
    let stapled = std::fs::read(&done.pkg).unwrap();
    assert_eq!(&stapled[..signed.len()], &signed[..]);
    assert_eq!(packaging::notary::staple::ticket(&stapled), Some(TICKET));
    // `cargo xtask package --check` still accepts it.
    let report = check(&done.pkg).unwrap();
    assert!(report.xar.rsa_signature && report.xar.cms_signature);

    // Invalid: an error listing the issues; the pkg stays as it was.
    let d2 = tempfile::tempdir().unwrap();
    let p2 = d2.path().join("prx-0.1.0.pkg");
    std::fs::write(&p2, &signed).unwrap();
    let stub = Stub::start(api_key_public(&key), &["Invalid"], invalid_log());
    let e = notarize(&service(&stub, &key), &p2, wait, true, &mut |_| {}).unwrap_err();
    let e = format!("{e:#}");
    assert!(
        e.contains("notarization Invalid")
            && e.contains("The binary is not signed with a valid Developer ID certificate."),
        "{e}"
    );
    assert_eq!(std::fs::read(&p2).unwrap(), signed);
    assert!(stub.state.lock().unwrap().lookups.is_empty());
}
