//! Notarization and stapling against the local stub of Apple's services
//! (`stub/`): submission, SigV4 upload, polling, Accepted/Invalid/Rejected,
//! developer log, timeout, JWT checks, ticket lookup and stapling.

mod stub;
mod support;

use std::path::Path;
use std::time::Duration;

use packaging::notary::{self, ApiKey, NotaryError, Status, WaitOptions, staple};
use packaging::pkg::{self, KextInput, PkgSpec};
use packaging::sign::{Identity, IdentitySource, PasswordSource};
use serde_json::{Value, json};
use stub::*;
use support::{P12_PASSWORD, make_bundle, write_identity};

// ---------------------------------------------------------------- fixtures

fn pkg_spec(dir: &Path) -> PkgSpec {
    let a = make_bundle(dir, "PrxSocketFilter", "net.prx.kext.SocketFilter", "0.1.0");
    PkgSpec {
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
    }
}

/// An Installer-signed pkg written to `<dir>/prx-0.1.0.pkg`.
fn signed_pkg(dir: &Path) -> (std::path::PathBuf, Vec<u8>) {
    let unsigned = pkg::build_unsigned(&pkg_spec(&dir.join("in"))).unwrap();
    let (_, _, p12) = write_identity(&dir.join("id"), support::installer());
    let pw = dir.join("pw");
    std::fs::write(&pw, P12_PASSWORD).unwrap();
    let id = Identity::load(&IdentitySource::Pkcs12 {
        path: p12,
        password: PasswordSource::File(pw),
    })
    .unwrap()
    .unwrap();
    let signed = packaging::xar::sign(&unsigned, &id.key, &id.cert, &id.chain, None).unwrap();
    let path = dir.join("prx-0.1.0.pkg");
    std::fs::write(&path, &signed).unwrap();
    (path, signed)
}

fn fast() -> WaitOptions {
    WaitOptions {
        timeout: Duration::from_secs(20),
        poll_interval: Duration::from_millis(20),
    }
}

// ---------------------------------------------------------------- tests

#[test]
fn accepted_after_polling_then_stapled_pkg_still_installs() {
    let d = tempfile::tempdir().unwrap();
    let (path, signed) = signed_pkg(d.path());
    let (key, public) = api_key();
    let stub = Stub::start(
        public,
        &["In Progress", "In Progress", "Accepted"],
        json!({}),
    );
    let svc = service(&stub, &key);
    let mut lines = Vec::new();
    let id = notary::notarize(&svc, "prx-0.1.0.pkg", &signed, fast(), &mut |l| {
        lines.push(l.to_string())
    })
    .unwrap();
    assert_eq!(id, SUB_ID);
    assert_eq!(stub.errors(), Vec::<String>::new());
    {
        let st = stub.state.lock().unwrap();
        assert_eq!(
            st.uploaded.as_deref(),
            Some(&signed[..]),
            "the stub received the pkg"
        );
        assert_eq!(st.submitted_name.as_deref(), Some("prx-0.1.0.pkg"));
    }
    let text = lines.join("\n");
    assert_eq!(
        text.matches("notarization: In Progress after").count(),
        2,
        "{text}"
    );
    assert!(
        text.contains(&format!("submission {SUB_ID} created"))
            && text.contains("uploaded")
            && text.contains("Accepted after"),
        "{text}"
    );

    // Staple: the record name is the TOC checksum's, the ticket is appended.
    let record = notary::staple_pkg_file(&svc, &path).unwrap();
    assert_eq!(record, expected_record_name(&signed));
    assert_eq!(stub.state.lock().unwrap().lookups, vec![record.clone()]);
    assert_eq!(stub.errors(), Vec::<String>::new());
    let stapled = std::fs::read(&path).unwrap();
    let n = signed.len();
    assert_eq!(&stapled[..n], &signed[..], "the signed XAR is unchanged");
    let tail = &stapled[n..];
    assert_eq!(tail.len(), 16 + TICKET.len() + 16);
    assert_eq!(
        &tail[..16],
        b"t8lr\x01\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00",
        "terminator trailer"
    );
    assert_eq!(&tail[16..16 + TICKET.len()], TICKET);
    let mut t = b"t8lr\x01\x00\x02\x00".to_vec();
    t.extend_from_slice(&(TICKET.len() as u32).to_le_bytes());
    t.extend_from_slice(&[0; 4]);
    assert_eq!(&tail[16 + TICKET.len()..], &t[..], "ticket trailer");
    assert_eq!(staple::ticket(&stapled), Some(TICKET));
    // Still a valid signed pkg, to our reader, the install check and independent tools.
    let v = packaging::xar::verify(&stapled).unwrap();
    assert!(
        v.toc_checksum && v.rsa_signature && v.cms_signature,
        "{v:?}"
    );
    let report = pkg::check::check(&path, &d.path().join("root")).unwrap();
    assert!(report.xar.cms_signature);
    let (ok, out) = support::run("7zz", &["t", path.to_str().unwrap()], None);
    // 7-Zip tests every member and, like for Apple's stapled packages, warns
    // only about the tail after the XAR (the stapled trailers).
    assert!(
        ok && out.contains("Everything is Ok") && !out.contains("ERROR"),
        "{out}"
    );
    assert!(
        out.contains(&format!("Tail Size = {}", tail.len()))
            && out.contains("There are data after the end of archive"),
        "{out}"
    );
    let (ok, out) = support::run("bsdtar", &["-tvf", path.to_str().unwrap()], None);
    assert!(
        ok && out.contains("Distribution") && out.contains("prx.pkg"),
        "{out}"
    );
    // The record name of the stapled file is still that of the signed pkg, and
    // stapling again replaces the ticket instead of appending a second one.
    assert_eq!(notary::staple_pkg_file(&svc, &path).unwrap(), record);
    assert_eq!(std::fs::read(&path).unwrap(), stapled);
    let leftovers: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".prx-staple-"))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn invalid_submission_fetches_and_prints_the_log_issues() {
    let d = tempfile::tempdir().unwrap();
    let (_, signed) = signed_pkg(d.path());
    let (key, public) = api_key();
    let stub = Stub::start(public, &["In Progress", "Invalid"], invalid_log());
    let mut lines = Vec::new();
    let e = notary::notarize(
        &service(&stub, &key),
        "prx-0.1.0.pkg",
        &signed,
        fast(),
        &mut |l| lines.push(l.to_string()),
    )
    .unwrap_err();
    assert!(
        matches!(&e, NotaryError::NotAccepted { status: Status::Invalid, issues, .. } if issues.len() == 2),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(msg.starts_with(&format!("notarization Invalid: submission {SUB_ID} (Archive contains critical validation errors); 2 issue(s):")), "{msg}");
    assert!(msg.contains("\n  error: prx-0.1.0.pkg/prx.pkg Contents/Payload/Library/Extensions/PrxSocketFilter.kext/Contents/MacOS/PrxSocketFilter [x86_64]: The binary is not signed with a valid Developer ID certificate. (https://developer.apple.com/"), "{msg}");
    assert!(
        msg.contains(
            "\n  warning: prx-0.1.0.pkg: The signature does not include a secure timestamp."
        ),
        "{msg}"
    );
    assert_eq!(stub.errors(), Vec::<String>::new());
    let reqs = stub.requests();
    assert!(
        reqs.contains(&format!("GET /notary/v2/submissions/{SUB_ID}/logs"))
            && reqs.contains(&format!("GET /logs/{SUB_ID}.json")),
        "{reqs:?}"
    );
}

#[test]
fn rejected_submission_is_an_error_with_the_log() {
    let d = tempfile::tempdir().unwrap();
    let (_, signed) = signed_pkg(d.path());
    let (key, public) = api_key();
    let log = json!({"status": "Rejected", "statusSummary": "Team is not yet configured for notarization", "issues": null});
    let stub = Stub::start(public, &["Rejected"], log);
    let e = notary::notarize(
        &service(&stub, &key),
        "prx-0.1.0.pkg",
        &signed,
        fast(),
        &mut |_| {},
    )
    .unwrap_err();
    assert!(
        matches!(
            &e,
            NotaryError::NotAccepted {
                status: Status::Rejected,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        format!(
            "notarization Rejected: submission {SUB_ID} (Team is not yet configured for notarization); the developer log lists no issues"
        )
    );
    assert_eq!(stub.errors(), Vec::<String>::new());
}

#[test]
fn still_in_progress_at_the_timeout() {
    let d = tempfile::tempdir().unwrap();
    let (_, signed) = signed_pkg(d.path());
    let (key, public) = api_key();
    let stub = Stub::start(public, &["In Progress"], json!({}));
    let wait = WaitOptions {
        timeout: Duration::from_millis(300),
        poll_interval: Duration::from_millis(50),
    };
    let mut polls = 0;
    let start = std::time::Instant::now();
    let e = notary::notarize(
        &service(&stub, &key),
        "prx-0.1.0.pkg",
        &signed,
        wait,
        &mut |l| {
            polls += usize::from(l.contains("In Progress after"));
        },
    )
    .unwrap_err();
    assert!(
        matches!(
            &e,
            NotaryError::Timeout {
                last: Status::InProgress,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(
        e.to_string().contains("did not finish within 0s") && e.to_string().contains(SUB_ID),
        "{e}"
    );
    assert!(polls >= 3, "{polls} polls");
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(
        !stub.requests().iter().any(|r| r.contains("/logs")),
        "no log for a timeout"
    );
    assert_eq!(stub.errors(), Vec::<String>::new());
}

#[test]
fn a_token_from_another_key_is_refused_by_the_stub() {
    let d = tempfile::tempdir().unwrap();
    let (_, signed) = signed_pkg(d.path());
    let (key, _) = api_key();
    let (_, other_public) = api_key();
    let stub = Stub::start(other_public, &["Accepted"], json!({}));
    let e = notary::notarize(
        &service(&stub, &key),
        "prx-0.1.0.pkg",
        &signed,
        fast(),
        &mut |_| {},
    )
    .unwrap_err();
    assert!(e.to_string().contains("HTTP 401"), "{e}");
    assert_eq!(
        stub.errors(),
        vec!["POST /notary/v2/submissions: ES256 signature does not verify".to_string()]
    );
}

#[test]
fn unsigned_pkg_is_refused_before_any_request() {
    let d = tempfile::tempdir().unwrap();
    let unsigned = pkg::build_unsigned(&pkg_spec(&d.path().join("in"))).unwrap();
    let (key, public) = api_key();
    let stub = Stub::start(public, &["Accepted"], json!({}));
    let e = notary::notarize(
        &service(&stub, &key),
        "prx-0.1.0.pkg",
        &unsigned,
        fast(),
        &mut |_| {},
    )
    .unwrap_err();
    assert!(e.to_string().contains("Developer ID Installer"), "{e}");
    assert!(stub.requests().is_empty());
}

#[test]
fn api_key_file_errors_and_debug_never_show_the_key() {
    let (key, _) = api_key();
    let v: Value = serde_json::from_str(&key).unwrap();
    let secret = v["private_key"].as_str().unwrap().to_string();
    let k = ApiKey::from_json(&key).unwrap();
    let dbg = format!("{k:?}");
    assert!(
        dbg.contains(KID) && dbg.contains("<redacted>") && !dbg.contains(&secret[..40]),
        "{dbg}"
    );
    // A truncated key, a non-P-256 blob, broken JSON: clear errors without the key.
    let bad = key.replace(&secret, &secret[..60]);
    for text in [
        bad.as_str(),
        &key.replace(&secret, &b64(b"not a key at all")),
        &key[..key.len() - 5],
    ] {
        let e = ApiKey::from_json(text).unwrap_err().to_string();
        assert!(e.starts_with("API key: "), "{e}");
        assert!(!e.contains(&secret[..20]), "{e}");
    }
    let d = tempfile::tempdir().unwrap();
    let e = ApiKey::from_file(&d.path().join("missing.json"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("cannot read the API key file"), "{e}");
}

#[test]
fn jwt_has_the_app_store_connect_claims() {
    let (key, public) = api_key();
    let k = ApiKey::from_json(&key).unwrap();
    let t = notary::jwt::token(&k, 1_800_000_000).unwrap();
    let p: Vec<&str> = t.split('.').collect();
    let claims: Value = serde_json::from_slice(&unb64url(p[1])).unwrap();
    assert_eq!(
        claims,
        json!({"iss": ISSUER, "iat": 1_800_000_000u64, "exp": 1_800_000_900u64, "aud": "appstoreconnect-v1"})
    );
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, &public)
        .verify(format!("{}.{}", p[0], p[1]).as_bytes(), &unb64url(p[2]))
        .unwrap();
}

#[test]
fn sigv4_matches_the_aws_documented_example() {
    // AWS S3 SigV4 documentation, "Example: GET Object".
    use packaging::notary::upload::{SigV4Request, authorization};
    let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    let auth = authorization(
        &SigV4Request {
            method: "GET",
            canonical_uri: "/test.txt",
            canonical_query: "",
            headers: &[
                ("Host", "examplebucket.s3.amazonaws.com"),
                ("Range", "bytes=0-9"),
                ("x-amz-content-sha256", empty),
                ("x-amz-date", "20130524T000000Z"),
            ],
            payload_sha256: empty,
            amz_date: "20130524T000000Z",
            region: "us-east-1",
            service: "s3",
        },
        "AKIAIOSFODNN7EXAMPLE",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    );
    assert_eq!(
        auth,
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
         SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
         Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
    );
}

#[test]
fn stapling_refuses_a_non_xar_and_leaves_the_file_alone() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("not.pkg");
    std::fs::write(&p, b"PK\x03\x04 not a xar").unwrap();
    let e = staple::staple_file(&p, TICKET).unwrap_err();
    assert!(e.to_string().contains("not a XAR"), "{e}");
    assert_eq!(std::fs::read(&p).unwrap(), b"PK\x03\x04 not a xar");
    assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
}

#[test]
fn a_missing_ticket_is_an_error_and_leaves_the_pkg_untouched() {
    let d = tempfile::tempdir().unwrap();
    let (path, signed) = signed_pkg(d.path());
    let (key, public) = api_key();
    let stub = Stub::start(public, &["Accepted"], json!({}));
    stub.state.lock().unwrap().no_ticket = true;
    let e = notary::staple_pkg_file(&service(&stub, &key), &path).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "ticket: {}: NOT_FOUND: Record not found",
            expected_record_name(&signed)
        )
    );
    assert_eq!(std::fs::read(&path).unwrap(), signed);
    assert_eq!(
        std::fs::read_dir(d.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(".prx-"))
            .count(),
        0
    );
}

#[test]
fn transient_status_failures_are_retried() {
    let d = tempfile::tempdir().unwrap();
    let (_, signed) = signed_pkg(d.path());
    let (key, public) = api_key();
    let stub = Stub::start(public, &["In Progress", "Accepted"], json!({}));
    stub.state.lock().unwrap().status_failures = 2;
    let mut lines = Vec::new();
    notary::notarize(
        &service(&stub, &key),
        "prx-0.1.0.pkg",
        &signed,
        fast(),
        &mut |l| lines.push(l.to_string()),
    )
    .unwrap();
    let text = lines.join("\n");
    assert!(
        text.contains("retrying (1/3)")
            && text.contains("retrying (2/3)")
            && text.contains("Accepted after"),
        "{text}"
    );
    // More consecutive failures than tolerated: the error is returned.
    let stub = Stub::start(api_key_public(&key), &["Accepted"], json!({}));
    stub.state.lock().unwrap().status_failures = 10;
    let e = notary::notarize(
        &service(&stub, &key),
        "prx-0.1.0.pkg",
        &signed,
        fast(),
        &mut |_| {},
    )
    .unwrap_err();
    assert!(e.to_string().starts_with("notary status: HTTP 503"), "{e}");
    assert_eq!(
        stub.requests()
            .iter()
            .filter(|r| r.starts_with(&format!("GET /notary/v2/submissions/{SUB_ID}")))
            .count(),
        4
    );
}
