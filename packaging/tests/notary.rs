//! Notarization and stapling against a local stub of Apple's services
//! (Notary API v2, S3, CloudKit ticket lookup) on 127.0.0.1. The stub verifies
//! the JWT with the API key's public key (ES256 signature, kid, iss, aud, exp)
//! and the SigV4 upload (Authorization shape, session token, body sha256).

mod support;

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use packaging::notary::api::{Endpoints, HttpNotary};
use packaging::notary::{self, ApiKey, NotaryError, Status, WaitOptions, staple};
use packaging::pkg::{self, KextInput, PkgSpec};
use packaging::sign::{Identity, IdentitySource, PasswordSource};
use ring::signature::KeyPair as _;
use serde_json::{Value, json};
use support::{P12_PASSWORD, make_bundle, write_identity};

const ISSUER: &str = "69a6de7e-0000-47e3-e053-5b8c7c11a4d1";
const KID: &str = "PRXKEY0001";
const SUB_ID: &str = "2efe2717-52ef-43a5-96dc-0797e4ca1041";
const BUCKET: &str = "notary-submissions-prod";
const OBJECT: &str = "prx/2efe2717-52ef-43a5-96dc-0797e4ca1041.pkg";
const AKID: &str = "ASIATESTACCESSKEY";
const SESSION: &str = "session/token+with=chars";
const TICKET: &[u8] = b"s8ch\x01\x00\x00\x00prx stub notarization ticket";

fn b64(d: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(d)
}

// ---------------------------------------------------------------- the stub

#[derive(Default)]
struct State {
    public_key: Vec<u8>,
    statuses: VecDeque<&'static str>,
    log: Value,
    submitted_sha: Option<String>,
    submitted_name: Option<String>,
    uploaded: Option<Vec<u8>>,
    lookups: Vec<String>,
    /// No ticket: the lookup answers with CloudKit's failure record.
    no_ticket: bool,
    /// Answer the next N status requests with HTTP 503.
    status_failures: u32,
    requests: Vec<String>,
    /// Stub-side check failures (the test asserts this stays empty).
    errors: Vec<String>,
}

struct Stub {
    base: String,
    state: Arc<Mutex<State>>,
}

impl Stub {
    fn start(public_key: Vec<u8>, statuses: &[&'static str], log: Value) -> Stub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State {
            public_key,
            statuses: statuses.iter().copied().collect(),
            log,
            ..State::default()
        }));
        let (st, b) = (state.clone(), base.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let (st, b) = (st.clone(), b.clone());
                std::thread::spawn(move || serve(conn, &st, &b));
            }
        });
        Stub { base, state }
    }

    fn endpoints(&self) -> Endpoints {
        Endpoints {
            notary: format!("{}/notary/v2", self.base),
            s3: Some(format!("{}/s3", self.base)),
            ticket_lookup: format!("{}/cloudkit/lookup", self.base),
        }
    }

    fn errors(&self) -> Vec<String> {
        self.state.lock().unwrap().errors.clone()
    }

    fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().requests.clone()
    }
}

struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

fn read_request(conn: &TcpStream) -> Option<Request> {
    let mut r = BufReader::new(conn);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next()?.to_string(), parts.next()?.to_string());
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let len = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map_or(0, |(_, v)| v.parse().unwrap_or(0));
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some(Request { method, path, headers, body })
}

fn respond(mut conn: &TcpStream, code: u16, body: &str) {
    let reason = if code == 200 { "OK" } else { "Error" };
    let _ = write!(
        conn,
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = conn.flush();
}

fn unb64url(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s).unwrap_or_default()
}

/// The checks Apple makes of the token, with the key's public half.
fn verify_jwt(req: &Request, public_key: &[u8]) -> Result<(), String> {
    let auth = req.header("authorization").ok_or("no Authorization header")?;
    let token = auth.strip_prefix("Bearer ").ok_or("not a Bearer token")?;
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 {
        return Err(format!("JWT has {} parts", parts.len()));
    }
    let header: Value = serde_json::from_slice(&unb64url(parts[0])).map_err(|e| format!("header: {e}"))?;
    let claims: Value = serde_json::from_slice(&unb64url(parts[1])).map_err(|e| format!("claims: {e}"))?;
    if header != json!({"alg": "ES256", "kid": KID, "typ": "JWT"}) {
        return Err(format!("bad header {header}"));
    }
    let sig = unb64url(parts[2]);
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, public_key)
        .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig)
        .map_err(|_| "ES256 signature does not verify".to_string())?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let (iat, exp) = (claims["iat"].as_u64().ok_or("no iat")?, claims["exp"].as_u64().ok_or("no exp")?);
    if claims["iss"] != ISSUER || claims["aud"] != "appstoreconnect-v1" {
        return Err(format!("bad iss/aud in {claims}"));
    }
    if exp <= now || iat > now + 60 || exp - iat > 20 * 60 {
        return Err(format!("bad lifetime in {claims} (now {now})"));
    }
    Ok(())
}

fn is_hex(s: &str, n: usize) -> bool {
    s.len() == n && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// SigV4 `Authorization` shape, session token and body digest.
fn check_upload(req: &Request, submitted_sha: Option<&str>) -> Result<(), String> {
    let auth = req.header("authorization").ok_or("no Authorization header")?;
    let rest = auth.strip_prefix("AWS4-HMAC-SHA256 Credential=").ok_or(format!("bad scheme: {auth}"))?;
    let (cred, rest) = rest.split_once(", SignedHeaders=").ok_or(format!("no SignedHeaders: {auth}"))?;
    let (signed, sig) = rest.split_once(", Signature=").ok_or(format!("no Signature: {auth}"))?;
    let c: Vec<&str> = cred.split('/').collect();
    let date = req.header("x-amz-date").ok_or("no x-amz-date")?;
    if c.len() != 5 || c[0] != AKID || c[1] != &date[..8] || c[2] != "us-west-2" || c[3] != "s3" || c[4] != "aws4_request" {
        return Err(format!("bad credential scope {cred}"));
    }
    if date.len() != 16 || !date.ends_with('Z') {
        return Err(format!("bad x-amz-date {date}"));
    }
    if signed != "host;x-amz-content-sha256;x-amz-date;x-amz-security-token" || !is_hex(sig, 64) {
        return Err(format!("bad SignedHeaders/Signature: {auth}"));
    }
    if req.header("x-amz-security-token") != Some(SESSION) {
        return Err("wrong session token".into());
    }
    let body_sha = notary::sha256_hex(&req.body);
    if req.header("x-amz-content-sha256") != Some(body_sha.as_str()) || submitted_sha != Some(body_sha.as_str()) {
        return Err("x-amz-content-sha256 / submitted sha256 do not match the body".into());
    }
    Ok(())
}

fn serve(conn: TcpStream, state: &Mutex<State>, base: &str) {
    let Some(req) = read_request(&conn) else { return };
    let mut st = state.lock().unwrap();
    st.requests.push(format!("{} {}", req.method, req.path));
    let sub_path = format!("/notary/v2/submissions/{SUB_ID}");
    if req.path.starts_with("/notary/v2/")
        && let Err(e) = verify_jwt(&req, &st.public_key)
    {
        st.errors.push(format!("{} {}: {e}", req.method, req.path));
        return respond(&conn, 401, r#"{"errors":[{"status":"401","code":"NOT_AUTHORIZED"}]}"#);
    }
    match (req.method.as_str(), req.path.as_str()) {
        ("POST", "/notary/v2/submissions") => {
            let b: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
            st.submitted_sha = b["sha256"].as_str().map(str::to_string);
            st.submitted_name = b["submissionName"].as_str().map(str::to_string);
            let body = json!({"data": {"id": SUB_ID, "type": "submissionsPostResponse", "attributes": {
                "awsAccessKeyId": AKID, "awsSecretAccessKey": "stub-secret", "awsSessionToken": SESSION,
                "bucket": BUCKET, "object": OBJECT}}, "meta": {}});
            respond(&conn, 200, &body.to_string());
        }
        ("PUT", p) if p == format!("/s3/{BUCKET}/{OBJECT}") => {
            match check_upload(&req, st.submitted_sha.as_deref()) {
                Ok(()) => {
                    st.uploaded = Some(req.body);
                    respond(&conn, 200, "");
                }
                Err(e) => {
                    st.errors.push(format!("upload: {e}"));
                    respond(&conn, 403, "<Error><Code>SignatureDoesNotMatch</Code></Error>");
                }
            }
        }
        ("GET", p) if p == sub_path => {
            if st.uploaded.is_none() {
                st.errors.push("status polled before the upload".into());
            }
            if st.status_failures > 0 {
                st.status_failures -= 1;
                return respond(&conn, 503, r#"{"errors":[{"status":"503"}]}"#);
            }
            let s = if st.statuses.len() > 1 { st.statuses.pop_front().unwrap() } else { st.statuses[0] };
            let body = json!({"data": {"id": SUB_ID, "type": "submissions", "attributes": {
                "createdDate": "2026-11-28T10:00:00.000Z", "name": "prx-0.1.0.pkg", "status": s}}, "meta": {}});
            respond(&conn, 200, &body.to_string());
        }
        ("GET", p) if p == format!("{sub_path}/logs") => {
            let body = json!({"data": {"id": SUB_ID, "type": "submissionsLog", "attributes": {
                "developerLogUrl": format!("{base}/logs/{SUB_ID}.json")}}, "meta": {}});
            respond(&conn, 200, &body.to_string());
        }
        ("GET", p) if p == format!("/logs/{SUB_ID}.json") => {
            if req.header("authorization").is_some() {
                st.errors.push("the pre-signed log URL was sent a token".into());
            }
            respond(&conn, 200, &st.log.to_string());
        }
        ("POST", "/cloudkit/lookup") => {
            let b: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
            let name = b["records"][0]["recordName"].as_str().unwrap_or("").to_string();
            st.lookups.push(name.clone());
            if st.no_ticket {
                let body = json!({"records": [{"recordName": name, "reason": "Record not found", "serverErrorCode": "NOT_FOUND"}]});
                return respond(&conn, 200, &body.to_string());
            }
            let body = json!({"records": [{"recordName": name, "recordType": "DeveloperIDTicket", "deleted": false,
                "fields": {"signedTicket": {"type": "BYTES", "value": b64(TICKET)}}}]});
            respond(&conn, 200, &body.to_string());
        }
        _ => {
            st.errors.push(format!("unexpected request {} {}", req.method, req.path));
            respond(&conn, 404, "{}");
        }
    }
}

// ---------------------------------------------------------------- fixtures

/// A fresh P-256 key: (key file JSON, public key).
fn api_key() -> (String, Vec<u8>) {
    let rng = ring::rand::SystemRandom::new();
    let alg = &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING;
    let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
    let pair = ring::signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
    (ApiKey::to_json(ISSUER, KID, pkcs8.as_ref()), pair.public_key().as_ref().to_vec())
}

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
        kexts: vec![KextInput { bundle: a, bundle_identifier: "net.prx.kext.SocketFilter".into(), version: "0.1.0".into() }],
    }
}

/// An Installer-signed pkg written to `<dir>/prx-0.1.0.pkg`.
fn signed_pkg(dir: &Path) -> (std::path::PathBuf, Vec<u8>) {
    let unsigned = pkg::build_unsigned(&pkg_spec(&dir.join("in"))).unwrap();
    let (_, _, p12) = write_identity(&dir.join("id"), support::installer());
    let pw = dir.join("pw");
    std::fs::write(&pw, P12_PASSWORD).unwrap();
    let id = Identity::load(&IdentitySource::Pkcs12 { path: p12, password: PasswordSource::File(pw) }).unwrap().unwrap();
    let signed = packaging::xar::sign(&unsigned, &id.key, &id.cert, &id.chain, None).unwrap();
    let path = dir.join("prx-0.1.0.pkg");
    std::fs::write(&path, &signed).unwrap();
    (path, signed)
}

fn fast() -> WaitOptions {
    WaitOptions { timeout: Duration::from_secs(20), poll_interval: Duration::from_millis(20) }
}

fn service(stub: &Stub, key_json: &str) -> HttpNotary {
    HttpNotary::new(ApiKey::from_json(key_json).unwrap(), stub.endpoints()).unwrap()
}

/// The record name computed independently: sha1 of the compressed TOC
/// (which is what the TOC checksum is), "2/1/<hex>".
fn expected_record_name(pkg: &[u8]) -> String {
    assert_eq!(&pkg[..4], b"xar!");
    let header = u16::from_be_bytes([pkg[4], pkg[5]]) as usize;
    let toc_len = u64::from_be_bytes(pkg[8..16].try_into().unwrap()) as usize;
    let d = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &pkg[header..header + toc_len]);
    let hex: String = d.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("2/1/{hex}")
}

// ---------------------------------------------------------------- tests

#[test]
fn accepted_after_polling_then_stapled_pkg_still_installs() {
    let d = tempfile::tempdir().unwrap();
    let (path, signed) = signed_pkg(d.path());
    let (key, public) = api_key();
    let stub = Stub::start(public, &["In Progress", "In Progress", "Accepted"], json!({}));
    let svc = service(&stub, &key);
    let mut lines = Vec::new();
    let id = notary::notarize(&svc, "prx-0.1.0.pkg", &signed, fast(), &mut |l| lines.push(l.to_string())).unwrap();
    assert_eq!(id, SUB_ID);
    assert_eq!(stub.errors(), Vec::<String>::new());
    {
        let st = stub.state.lock().unwrap();
        assert_eq!(st.uploaded.as_deref(), Some(&signed[..]), "the stub received the pkg");
        assert_eq!(st.submitted_name.as_deref(), Some("prx-0.1.0.pkg"));
    }
    let text = lines.join("\n");
    assert_eq!(text.matches("notarization: In Progress after").count(), 2, "{text}");
    assert!(text.contains(&format!("submission {SUB_ID} created")) && text.contains("uploaded") && text.contains("Accepted after"), "{text}");

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
    assert_eq!(&tail[..16], b"t8lr\x01\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00", "terminator trailer");
    assert_eq!(&tail[16..16 + TICKET.len()], TICKET);
    let mut t = b"t8lr\x01\x00\x02\x00".to_vec();
    t.extend_from_slice(&(TICKET.len() as u32).to_le_bytes());
    t.extend_from_slice(&[0; 4]);
    assert_eq!(&tail[16 + TICKET.len()..], &t[..], "ticket trailer");
    assert_eq!(staple::ticket(&stapled), Some(TICKET));
    // Still a valid signed pkg, to our reader, the install check and independent tools.
    let v = packaging::xar::verify(&stapled).unwrap();
    assert!(v.toc_checksum && v.rsa_signature && v.cms_signature, "{v:?}");
    let report = pkg::check::check(&path, &d.path().join("root")).unwrap();
    assert!(report.xar.cms_signature);
    let (ok, out) = support::run("7zz", &["t", path.to_str().unwrap()], None);
    // 7-Zip tests every member and, like for Apple's stapled packages, warns
    // only about the tail after the XAR (the stapled trailers).
    assert!(ok && out.contains("Everything is Ok") && !out.contains("ERROR"), "{out}");
    assert!(out.contains(&format!("Tail Size = {}", tail.len())) && out.contains("There are data after the end of archive"), "{out}");
    let (ok, out) = support::run("bsdtar", &["-tvf", path.to_str().unwrap()], None);
    assert!(ok && out.contains("Distribution") && out.contains("prx.pkg"), "{out}");
    // The record name of the stapled file is still that of the signed pkg, and
    // stapling again replaces the ticket instead of appending a second one.
    assert_eq!(notary::staple_pkg_file(&svc, &path).unwrap(), record);
    assert_eq!(std::fs::read(&path).unwrap(), stapled);
    let leftovers: Vec<_> = std::fs::read_dir(d.path()).unwrap().flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".prx-staple-")).collect();
    assert!(leftovers.is_empty());
}

fn invalid_log() -> Value {
    json!({
        "logFormatVersion": 1, "jobId": SUB_ID, "status": "Invalid",
        "statusSummary": "Archive contains critical validation errors", "statusCode": 4000,
        "archiveFilename": "prx-0.1.0.pkg", "uploadDate": "2026-11-28T10:00:10.000Z",
        "sha256": "00", "ticketContents": null,
        "issues": [
            {"severity": "error", "code": null,
             "path": "prx-0.1.0.pkg/prx.pkg Contents/Payload/Library/Extensions/PrxSocketFilter.kext/Contents/MacOS/PrxSocketFilter",
             "message": "The binary is not signed with a valid Developer ID certificate.",
             "docUrl": "https://developer.apple.com/documentation/security/notarizing_macos_software_before_distribution/resolving_common_notarization_issues#3087721",
             "architecture": "x86_64"},
            {"severity": "warning", "code": null, "path": "prx-0.1.0.pkg",
             "message": "The signature does not include a secure timestamp.", "docUrl": null, "architecture": null}
        ]
    })
}

#[test]
fn invalid_submission_fetches_and_prints_the_log_issues() {
    let d = tempfile::tempdir().unwrap();
    let (_, signed) = signed_pkg(d.path());
    let (key, public) = api_key();
    let stub = Stub::start(public, &["In Progress", "Invalid"], invalid_log());
    let mut lines = Vec::new();
    let e = notary::notarize(&service(&stub, &key), "prx-0.1.0.pkg", &signed, fast(), &mut |l| lines.push(l.to_string()))
        .unwrap_err();
    assert!(matches!(&e, NotaryError::NotAccepted { status: Status::Invalid, issues, .. } if issues.len() == 2), "{e:?}");
    let msg = e.to_string();
    assert!(msg.starts_with(&format!("notarization Invalid: submission {SUB_ID} (Archive contains critical validation errors); 2 issue(s):")), "{msg}");
    assert!(msg.contains("\n  error: prx-0.1.0.pkg/prx.pkg Contents/Payload/Library/Extensions/PrxSocketFilter.kext/Contents/MacOS/PrxSocketFilter [x86_64]: The binary is not signed with a valid Developer ID certificate. (https://developer.apple.com/"), "{msg}");
    assert!(msg.contains("\n  warning: prx-0.1.0.pkg: The signature does not include a secure timestamp."), "{msg}");
    assert_eq!(stub.errors(), Vec::<String>::new());
    let reqs = stub.requests();
    assert!(reqs.contains(&format!("GET /notary/v2/submissions/{SUB_ID}/logs")) && reqs.contains(&format!("GET /logs/{SUB_ID}.json")), "{reqs:?}");
}

#[test]
fn rejected_submission_is_an_error_with_the_log() {
    let d = tempfile::tempdir().unwrap();
    let (_, signed) = signed_pkg(d.path());
    let (key, public) = api_key();
    let log = json!({"status": "Rejected", "statusSummary": "Team is not yet configured for notarization", "issues": null});
    let stub = Stub::start(public, &["Rejected"], log);
    let e = notary::notarize(&service(&stub, &key), "prx-0.1.0.pkg", &signed, fast(), &mut |_| {}).unwrap_err();
    assert!(matches!(&e, NotaryError::NotAccepted { status: Status::Rejected, .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        format!("notarization Rejected: submission {SUB_ID} (Team is not yet configured for notarization); the developer log lists no issues")
    );
    assert_eq!(stub.errors(), Vec::<String>::new());
}

#[test]
fn still_in_progress_at_the_timeout() {
    let d = tempfile::tempdir().unwrap();
    let (_, signed) = signed_pkg(d.path());
    let (key, public) = api_key();
    let stub = Stub::start(public, &["In Progress"], json!({}));
    let wait = WaitOptions { timeout: Duration::from_millis(300), poll_interval: Duration::from_millis(50) };
    let mut polls = 0;
    let start = std::time::Instant::now();
    let e = notary::notarize(&service(&stub, &key), "prx-0.1.0.pkg", &signed, wait, &mut |l| {
        polls += usize::from(l.contains("In Progress after"));
    })
    .unwrap_err();
    assert!(matches!(&e, NotaryError::Timeout { last: Status::InProgress, .. }), "{e:?}");
    assert!(e.to_string().contains("did not finish within 0s") && e.to_string().contains(SUB_ID), "{e}");
    assert!(polls >= 3, "{polls} polls");
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(!stub.requests().iter().any(|r| r.contains("/logs")), "no log for a timeout");
    assert_eq!(stub.errors(), Vec::<String>::new());
}

#[test]
fn a_token_from_another_key_is_refused_by_the_stub() {
    let d = tempfile::tempdir().unwrap();
    let (_, signed) = signed_pkg(d.path());
    let (key, _) = api_key();
    let (_, other_public) = api_key();
    let stub = Stub::start(other_public, &["Accepted"], json!({}));
    let e = notary::notarize(&service(&stub, &key), "prx-0.1.0.pkg", &signed, fast(), &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("HTTP 401"), "{e}");
    assert_eq!(stub.errors(), vec!["POST /notary/v2/submissions: ES256 signature does not verify".to_string()]);
}

#[test]
fn unsigned_pkg_is_refused_before_any_request() {
    let d = tempfile::tempdir().unwrap();
    let unsigned = pkg::build_unsigned(&pkg_spec(&d.path().join("in"))).unwrap();
    let (key, public) = api_key();
    let stub = Stub::start(public, &["Accepted"], json!({}));
    let e = notary::notarize(&service(&stub, &key), "prx-0.1.0.pkg", &unsigned, fast(), &mut |_| {}).unwrap_err();
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
    assert!(dbg.contains(KID) && dbg.contains("<redacted>") && !dbg.contains(&secret[..40]), "{dbg}");
    // A truncated key, a non-P-256 blob, broken JSON: clear errors without the key.
    let bad = key.replace(&secret, &secret[..60]);
    for text in [bad.as_str(), &key.replace(&secret, &b64(b"not a key at all")), &key[..key.len() - 5]] {
        let e = ApiKey::from_json(text).unwrap_err().to_string();
        assert!(e.starts_with("API key: "), "{e}");
        assert!(!e.contains(&secret[..20]), "{e}");
    }
    let d = tempfile::tempdir().unwrap();
    let e = ApiKey::from_file(&d.path().join("missing.json")).unwrap_err().to_string();
    assert!(e.contains("cannot read the API key file"), "{e}");
}

#[test]
fn jwt_has_the_app_store_connect_claims() {
    let (key, public) = api_key();
    let k = ApiKey::from_json(&key).unwrap();
    let t = notary::jwt::token(&k, 1_800_000_000).unwrap();
    let p: Vec<&str> = t.split('.').collect();
    let claims: Value = serde_json::from_slice(&unb64url(p[1])).unwrap();
    assert_eq!(claims, json!({"iss": ISSUER, "iat": 1_800_000_000u64, "exp": 1_800_000_900u64, "aud": "appstoreconnect-v1"}));
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
    assert_eq!(e.to_string(), format!("ticket: {}: NOT_FOUND: Record not found", expected_record_name(&signed)));
    assert_eq!(std::fs::read(&path).unwrap(), signed);
    assert_eq!(std::fs::read_dir(d.path()).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().starts_with(".prx-")).count(), 0);
}

#[test]
fn transient_status_failures_are_retried() {
    let d = tempfile::tempdir().unwrap();
    let (_, signed) = signed_pkg(d.path());
    let (key, public) = api_key();
    let stub = Stub::start(public, &["In Progress", "Accepted"], json!({}));
    stub.state.lock().unwrap().status_failures = 2;
    let mut lines = Vec::new();
    notary::notarize(&service(&stub, &key), "prx-0.1.0.pkg", &signed, fast(), &mut |l| lines.push(l.to_string())).unwrap();
    let text = lines.join("\n");
    assert!(text.contains("retrying (1/3)") && text.contains("retrying (2/3)") && text.contains("Accepted after"), "{text}");
    // More consecutive failures than tolerated: the error is returned.
    let stub = Stub::start(api_key_public(&key), &["Accepted"], json!({}));
    stub.state.lock().unwrap().status_failures = 10;
    let e = notary::notarize(&service(&stub, &key), "prx-0.1.0.pkg", &signed, fast(), &mut |_| {}).unwrap_err();
    assert!(e.to_string().starts_with("notary status: HTTP 503"), "{e}");
    assert_eq!(stub.requests().iter().filter(|r| r.starts_with(&format!("GET /notary/v2/submissions/{SUB_ID}"))).count(), 4);
}

/// The public key of a key file's private key.
fn api_key_public(key_json: &str) -> Vec<u8> {
    let v: Value = serde_json::from_str(key_json).unwrap();
    let der = base64::engine::general_purpose::STANDARD.decode(v["private_key"].as_str().unwrap()).unwrap();
    let alg = &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING;
    let pair = ring::signature::EcdsaKeyPair::from_pkcs8(alg, &der, &ring::rand::SystemRandom::new()).unwrap();
    pair.public_key().as_ref().to_vec()
}
