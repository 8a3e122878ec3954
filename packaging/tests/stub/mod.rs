//! A local stub of Apple's notarization services (Notary API v2, S3,
//! CloudKit ticket lookup) on 127.0.0.1, for the notarization tests of
//! packaging and xtask. It verifies the JWT with the API key's public half
//! (ES256 signature, kid, iss, aud, exp) and the SigV4 upload (Authorization
//! shape, session token, body sha256); failed checks are recorded in
//! `State::errors`, which the tests assert stays empty.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use packaging::notary::api::{Endpoints, HttpNotary};
use packaging::notary::{self, ApiKey};
use ring::signature::KeyPair as _;
use serde_json::{Value, json};

pub const ISSUER: &str = "69a6de7e-0000-47e3-e053-5b8c7c11a4d1";
pub const KID: &str = "PRXKEY0001";
pub const SUB_ID: &str = "2efe2717-52ef-43a5-96dc-0797e4ca1041";
pub const BUCKET: &str = "notary-submissions-prod";
pub const OBJECT: &str = "prx/2efe2717-52ef-43a5-96dc-0797e4ca1041.pkg";
pub const AKID: &str = "ASIATESTACCESSKEY";
pub const SESSION: &str = "session/token+with=chars";
pub const TICKET: &[u8] = b"s8ch\x01\x00\x00\x00prx stub notarization ticket";

pub fn b64(d: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(d)
}

// ---------------------------------------------------------------- the stub

#[derive(Default)]
pub struct State {
    pub public_key: Vec<u8>,
    pub statuses: VecDeque<&'static str>,
    pub log: Value,
    pub submitted_sha: Option<String>,
    pub submitted_name: Option<String>,
    pub uploaded: Option<Vec<u8>>,
    pub lookups: Vec<String>,
    /// No ticket: the lookup answers with CloudKit's failure record.
    pub no_ticket: bool,
    /// Answer the next N status requests with HTTP 503.
    pub status_failures: u32,
    pub requests: Vec<String>,
    /// Stub-side check failures (the test asserts this stays empty).
    pub errors: Vec<String>,
}

pub struct Stub {
    pub base: String,
    pub state: Arc<Mutex<State>>,
}

impl Stub {
    pub fn start(public_key: Vec<u8>, statuses: &[&'static str], log: Value) -> Stub {
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

    pub fn endpoints(&self) -> Endpoints {
        Endpoints {
            notary: format!("{}/notary/v2", self.base),
            s3: Some(format!("{}/s3", self.base)),
            ticket_lookup: format!("{}/cloudkit/lookup", self.base),
        }
    }

    pub fn errors(&self) -> Vec<String> {
        self.state.lock().unwrap().errors.clone()
    }

    pub fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().requests.clone()
    }
}

pub struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub fn read_request(conn: &TcpStream) -> Option<Request> {
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
    Some(Request {
        method,
        path,
        headers,
        body,
    })
}

pub fn respond(mut conn: &TcpStream, code: u16, body: &str) {
    let reason = if code == 200 { "OK" } else { "Error" };
    let _ = write!(
        conn,
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = conn.flush();
}

pub fn unb64url(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .unwrap_or_default()
}

/// The checks Apple makes of the token, with the key's public half.
pub fn verify_jwt(req: &Request, public_key: &[u8]) -> Result<(), String> {
    let auth = req
        .header("authorization")
        .ok_or("no Authorization header")?;
    let token = auth.strip_prefix("Bearer ").ok_or("not a Bearer token")?;
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 {
        return Err(format!("JWT has {} parts", parts.len()));
    }
    let header: Value =
        serde_json::from_slice(&unb64url(parts[0])).map_err(|e| format!("header: {e}"))?;
    let claims: Value =
        serde_json::from_slice(&unb64url(parts[1])).map_err(|e| format!("claims: {e}"))?;
    if header != json!({"alg": "ES256", "kid": KID, "typ": "JWT"}) {
        return Err(format!("bad header {header}"));
    }
    let sig = unb64url(parts[2]);
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, public_key)
        .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig)
        .map_err(|_| "ES256 signature does not verify".to_string())?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (iat, exp) = (
        claims["iat"].as_u64().ok_or("no iat")?,
        claims["exp"].as_u64().ok_or("no exp")?,
    );
    if claims["iss"] != ISSUER || claims["aud"] != "appstoreconnect-v1" {
        return Err(format!("bad iss/aud in {claims}"));
    }
    if exp <= now || iat > now + 60 || exp - iat > 20 * 60 {
        return Err(format!("bad lifetime in {claims} (now {now})"));
    }
    Ok(())
}

pub fn is_hex(s: &str, n: usize) -> bool {
    s.len() == n
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// SigV4 `Authorization` shape, session token and body digest.
pub fn check_upload(req: &Request, submitted_sha: Option<&str>) -> Result<(), String> {
    let auth = req
        .header("authorization")
        .ok_or("no Authorization header")?;
    let rest = auth
        .strip_prefix("AWS4-HMAC-SHA256 Credential=")
        .ok_or(format!("bad scheme: {auth}"))?;
    let (cred, rest) = rest
        .split_once(", SignedHeaders=")
        .ok_or(format!("no SignedHeaders: {auth}"))?;
    let (signed, sig) = rest
        .split_once(", Signature=")
        .ok_or(format!("no Signature: {auth}"))?;
    let c: Vec<&str> = cred.split('/').collect();
    let date = req.header("x-amz-date").ok_or("no x-amz-date")?;
    if c.len() != 5
        || c[0] != AKID
        || c[1] != &date[..8]
        || c[2] != "us-west-2"
        || c[3] != "s3"
        || c[4] != "aws4_request"
    {
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
    if req.header("x-amz-content-sha256") != Some(body_sha.as_str())
        || submitted_sha != Some(body_sha.as_str())
    {
        return Err("x-amz-content-sha256 / submitted sha256 do not match the body".into());
    }
    Ok(())
}

pub fn serve(conn: TcpStream, state: &Mutex<State>, base: &str) {
    let Some(req) = read_request(&conn) else {
        return;
    };
    let mut st = state.lock().unwrap();
    st.requests.push(format!("{} {}", req.method, req.path));
    let sub_path = format!("/notary/v2/submissions/{SUB_ID}");
    if req.path.starts_with("/notary/v2/")
        && let Err(e) = verify_jwt(&req, &st.public_key)
    {
        st.errors.push(format!("{} {}: {e}", req.method, req.path));
        return respond(
            &conn,
            401,
            r#"{"errors":[{"status":"401","code":"NOT_AUTHORIZED"}]}"#,
        );
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
                    respond(
                        &conn,
                        403,
                        "<Error><Code>SignatureDoesNotMatch</Code></Error>",
                    );
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
            let s = if st.statuses.len() > 1 {
                st.statuses.pop_front().unwrap()
            } else {
                st.statuses[0]
            };
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
                st.errors
                    .push("the pre-signed log URL was sent a token".into());
            }
            respond(&conn, 200, &st.log.to_string());
        }
        ("POST", "/cloudkit/lookup") => {
            let b: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
            let name = b["records"][0]["recordName"]
                .as_str()
                .unwrap_or("")
                .to_string();
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
            st.errors
                .push(format!("unexpected request {} {}", req.method, req.path));
            respond(&conn, 404, "{}");
        }
    }
}

// ---------------------------------------------------------------- helpers

/// A fresh P-256 key: (key file JSON, public key).
pub fn api_key() -> (String, Vec<u8>) {
    let rng = ring::rand::SystemRandom::new();
    let alg = &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING;
    let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
    let pair = ring::signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
    (
        ApiKey::to_json(ISSUER, KID, pkcs8.as_ref()),
        pair.public_key().as_ref().to_vec(),
    )
}

pub fn service(stub: &Stub, key_json: &str) -> HttpNotary {
    HttpNotary::new(ApiKey::from_json(key_json).unwrap(), stub.endpoints()).unwrap()
}

/// The record name computed independently: sha1 of the compressed TOC
/// (which is what the TOC checksum is), "2/1/<hex>".
pub fn expected_record_name(pkg: &[u8]) -> String {
    assert_eq!(&pkg[..4], b"xar!");
    let header = u16::from_be_bytes([pkg[4], pkg[5]]) as usize;
    let toc_len = u64::from_be_bytes(pkg[8..16].try_into().unwrap()) as usize;
    let d = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        &pkg[header..header + toc_len],
    );
    let hex: String = d.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("2/1/{hex}")
}

pub fn invalid_log() -> Value {
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

/// The public key of a key file's private key.
pub fn api_key_public(key_json: &str) -> Vec<u8> {
    let v: Value = serde_json::from_str(key_json).unwrap();
    let der = base64::engine::general_purpose::STANDARD
        .decode(v["private_key"].as_str().unwrap())
        .unwrap();
    let alg = &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING;
    let pair =
        ring::signature::EcdsaKeyPair::from_pkcs8(alg, &der, &ring::rand::SystemRandom::new())
            .unwrap();
    pair.public_key().as_ref().to_vec()
}
