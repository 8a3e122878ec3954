//! S3 `PutObject` with AWS Signature Version 4 (the Notary API hands out
//! temporary credentials; the upload goes straight to S3, region `us-west-2`).
//!
//! Signed headers: `host`, `x-amz-content-sha256` (the body's sha256),
//! `x-amz-date` and `x-amz-security-token` (the session token). The
//! `Authorization` header is
//! `AWS4-HMAC-SHA256 Credential=<key id>/<yyyymmdd>/<region>/s3/aws4_request,
//! SignedHeaders=<names>, Signature=<hex>`.

use ring::hmac;

use super::hex;

/// The region of Apple's notarization bucket.
pub const REGION: &str = "us-west-2";

/// Percent-encodes a path as SigV4 wants for S3: every byte except
/// unreserved characters and `/` (S3 does not encode twice).
pub fn uri_encode_path(path: &str) -> String {
    let mut out = String::new();
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn hmac256(key: &[u8], data: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data)
        .as_ref()
        .to_vec()
}

/// One SigV4 request to sign.
#[derive(Debug, Clone)]
pub struct SigV4Request<'a> {
    /// `PUT`, `GET`…
    pub method: &'a str,
    /// Already encoded path (see [`uri_encode_path`]).
    pub canonical_uri: &'a str,
    /// Canonical query string ("" when none).
    pub canonical_query: &'a str,
    /// Headers to sign: lower-case names, any order.
    pub headers: &'a [(&'a str, &'a str)],
    /// Hex sha256 of the body (or `UNSIGNED-PAYLOAD`).
    pub payload_sha256: &'a str,
    /// `YYYYMMDDTHHMMSSZ`.
    pub amz_date: &'a str,
    /// Region.
    pub region: &'a str,
    /// Service (`s3`).
    pub service: &'a str,
}

/// The `Authorization` header value.
pub fn authorization(req: &SigV4Request<'_>, access_key_id: &str, secret: &str) -> String {
    let mut headers: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.to_ascii_lowercase(),
                v.split_whitespace().collect::<Vec<_>>().join(" "),
            )
        })
        .collect();
    headers.sort();
    let canonical_headers: String = headers.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let signed_headers = headers
        .iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let canonical_request = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        req.method,
        req.canonical_uri,
        req.canonical_query,
        canonical_headers,
        signed_headers,
        req.payload_sha256
    );
    let date = &req.amz_date[..8];
    let scope = format!("{date}/{}/{}/aws4_request", req.region, req.service);
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{}\n{scope}\n{}",
        req.amz_date,
        hex(ring::digest::digest(&ring::digest::SHA256, canonical_request.as_bytes()).as_ref())
    );
    let k_date = hmac256(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k_region = hmac256(&k_date, req.region.as_bytes());
    let k_service = hmac256(&k_region, req.service.as_bytes());
    let k_signing = hmac256(&k_service, b"aws4_request");
    let signature = hex(&hmac256(&k_signing, string_to_sign.as_bytes()));
    format!(
        "AWS4-HMAC-SHA256 Credential={access_key_id}/{scope}, SignedHeaders={signed_headers}, Signature={signature}"
    )
}
