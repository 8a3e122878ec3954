//! [`HttpNotary`]: the [`NotaryService`] over HTTPS (reqwest, blocking,
//! rustls), against Apple's endpoints or, for tests, any base URLs.
//!
//! - `POST {notary}/submissions` `{"submissionName","sha256","notifications":[]}`
//!   → `data.id`, `data.attributes.{awsAccessKeyId,awsSecretAccessKey,awsSessionToken,bucket,object}`
//! - S3 `PUT` of the bytes (SigV4, [`super::upload`])
//! - `GET {notary}/submissions/{id}` → `data.attributes.status`
//! - `GET {notary}/submissions/{id}/logs` → `data.attributes.developerLogUrl`,
//!   then `GET` that URL (pre-signed: no token) → the log JSON
//! - `POST {ticket lookup}` `{"records":[{"recordName"}]}` →
//!   `records[0].fields.signedTicket` `{"type":"BYTES","value":<base64>}`
//!
//! Notary API requests carry `Authorization: Bearer <ES256 JWT>` ([`super::jwt`]).

use std::time::Duration;

use base64::Engine as _;
use reqwest::blocking::{Client, RequestBuilder, Response};
use serde_json::Value;

use super::upload::{self, SigV4Request};
use super::{
    ApiKey, AwsCredentials, NotaryError, NotaryService, Status, Submission, UploadTarget, jwt,
};

/// Apple's Notary API v2 base URL.
pub const APPLE_NOTARY_URL: &str = "https://appstoreconnect.apple.com/notary/v2";
/// Apple's ticket lookup (CloudKit) URL.
pub const APPLE_TICKET_LOOKUP_URL: &str = "https://api.apple-cloudkit.com/database/1/com.apple.gk.ticket-delivery/production/public/records/lookup";

/// The URLs the service talks to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// Notary API base (`…/notary/v2`).
    pub notary: String,
    /// S3 endpoint for path-style uploads (`{s3}/{bucket}/{object}`); `None`:
    /// AWS, virtual-hosted style `https://{bucket}.s3.us-west-2.amazonaws.com/{object}`.
    pub s3: Option<String>,
    /// Ticket lookup URL.
    pub ticket_lookup: String,
}

impl Default for Endpoints {
    fn default() -> Endpoints {
        Endpoints {
            notary: APPLE_NOTARY_URL.into(),
            s3: None,
            ticket_lookup: APPLE_TICKET_LOOKUP_URL.into(),
        }
    }
}

/// The real [`NotaryService`].
#[derive(Debug)]
pub struct HttpNotary {
    client: Client,
    key: ApiKey,
    endpoints: Endpoints,
}

fn http(what: &str) -> impl Fn(reqwest::Error) -> NotaryError + '_ {
    move |e| NotaryError::Http {
        what: what.to_string(),
        message: e.to_string(),
    }
}

fn excerpt(body: &str) -> String {
    let b: String = body.chars().take(300).collect();
    b.replace('\n', " ")
}

/// Sends a request; a non-2xx answer is an error with the body's beginning.
fn send(req: RequestBuilder, what: &str) -> Result<Response, NotaryError> {
    let resp = req.send().map_err(http(what))?;
    if !resp.status().is_success() {
        let status = resp.status();
        let body = resp.text().unwrap_or_default();
        return Err(NotaryError::Http {
            what: what.to_string(),
            message: format!("HTTP {status}: {}", excerpt(&body)),
        });
    }
    Ok(resp)
}

fn json(resp: Response, what: &str) -> Result<Value, NotaryError> {
    let text = resp.text().map_err(http(what))?;
    serde_json::from_str(&text).map_err(|e| NotaryError::Http {
        what: what.to_string(),
        message: format!("answer is not JSON ({e}): {}", excerpt(&text)),
    })
}

fn field<'a>(v: &'a Value, pointer: &str, what: &str) -> Result<&'a str, NotaryError> {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .ok_or_else(|| NotaryError::Http {
            what: what.to_string(),
            message: format!("answer has no {pointer}"),
        })
}

impl HttpNotary {
    /// A service using `key` against `endpoints`.
    pub fn new(key: ApiKey, endpoints: Endpoints) -> Result<HttpNotary, NotaryError> {
        let client = Client::builder()
            .user_agent(concat!("prx-packaging/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(30))
            .timeout(Duration::from_secs(600))
            .build()
            .map_err(http("creating the HTTP client"))?;
        Ok(HttpNotary {
            client,
            key,
            endpoints,
        })
    }

    fn bearer(&self) -> Result<String, NotaryError> {
        Ok(format!("Bearer {}", jwt::token_now(&self.key)?))
    }

    fn notary_get(&self, path: &str, what: &str) -> Result<Value, NotaryError> {
        let url = format!("{}{path}", self.endpoints.notary.trim_end_matches('/'));
        let req = self
            .client
            .get(url)
            .header("Authorization", self.bearer()?)
            .header("Accept", "application/json");
        json(send(req, what)?, what)
    }

    /// The upload URL and the `Host` value to sign.
    fn s3_url(&self, target: &UploadTarget) -> Result<(reqwest::Url, String), NotaryError> {
        let path = upload::uri_encode_path(&target.object);
        let s = match &self.endpoints.s3 {
            Some(base) => format!(
                "{}/{}/{}",
                base.trim_end_matches('/'),
                upload::uri_encode_path(&target.bucket),
                path.trim_start_matches('/')
            ),
            None => format!(
                "https://{}.s3.{}.amazonaws.com/{}",
                target.bucket,
                upload::REGION,
                path.trim_start_matches('/')
            ),
        };
        let url = reqwest::Url::parse(&s).map_err(|e| NotaryError::Http {
            what: "S3 upload".into(),
            message: format!("bad upload URL {s}: {e}"),
        })?;
        let host = match (url.host_str(), url.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            (None, _) => {
                return Err(NotaryError::Http {
                    what: "S3 upload".into(),
                    message: format!("upload URL {s} has no host"),
                });
            }
        };
        Ok((url, host))
    }
}

impl NotaryService for HttpNotary {
    fn submit(&self, name: &str, sha256_hex: &str) -> Result<Submission, NotaryError> {
        let what = "notary submission";
        let url = format!(
            "{}/submissions",
            self.endpoints.notary.trim_end_matches('/')
        );
        let body =
            serde_json::json!({"submissionName": name, "sha256": sha256_hex, "notifications": []});
        let req = self
            .client
            .post(url)
            .header("Authorization", self.bearer()?)
            .header("Accept", "application/json")
            .header("Content-Type", "application/json")
            .body(body.to_string());
        let v = json(send(req, what)?, what)?;
        let a = |k: &str| field(&v, &format!("/data/attributes/{k}"), what).map(str::to_string);
        Ok(Submission {
            id: field(&v, "/data/id", what)?.to_string(),
            upload: UploadTarget {
                bucket: a("bucket")?,
                object: a("object")?,
                credentials: AwsCredentials {
                    access_key_id: a("awsAccessKeyId")?,
                    secret_access_key: a("awsSecretAccessKey")?,
                    session_token: a("awsSessionToken")?,
                },
            },
        })
    }

    fn upload(&self, bytes: &[u8], target: &UploadTarget) -> Result<(), NotaryError> {
        let (url, host) = self.s3_url(target)?;
        let sha = super::sha256_hex(bytes);
        let amz_date = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
        let c = &target.credentials;
        let headers = [
            ("host", host.as_str()),
            ("x-amz-content-sha256", sha.as_str()),
            ("x-amz-date", amz_date.as_str()),
            ("x-amz-security-token", c.session_token.as_str()),
        ];
        let auth = upload::authorization(
            &SigV4Request {
                method: "PUT",
                canonical_uri: url.path(),
                canonical_query: "",
                headers: &headers,
                payload_sha256: &sha,
                amz_date: &amz_date,
                region: upload::REGION,
                service: "s3",
            },
            &c.access_key_id,
            &c.secret_access_key,
        );
        let req = self
            .client
            .put(url)
            .header("x-amz-content-sha256", &sha)
            .header("x-amz-date", &amz_date)
            .header("x-amz-security-token", &c.session_token)
            .header("Authorization", auth)
            .header("Content-Type", "application/octet-stream")
            .body(bytes.to_vec());
        send(req, "S3 upload")?;
        Ok(())
    }

    fn status(&self, id: &str) -> Result<Status, NotaryError> {
        let what = "notary status";
        let v = self.notary_get(&format!("/submissions/{id}"), what)?;
        Ok(Status::parse(field(&v, "/data/attributes/status", what)?))
    }

    fn log(&self, id: &str) -> Result<Value, NotaryError> {
        let what = "notary log";
        let v = self.notary_get(&format!("/submissions/{id}/logs"), what)?;
        let url = field(&v, "/data/attributes/developerLogUrl", what)?;
        json(
            send(self.client.get(url), "developer log download")?,
            "developer log download",
        )
    }

    fn ticket_lookup(&self, record_name: &str) -> Result<Vec<u8>, NotaryError> {
        let what = "ticket lookup";
        let body = serde_json::json!({"records": [{"recordName": record_name}]});
        let req = self
            .client
            .post(&self.endpoints.ticket_lookup)
            .header("Accept", "application/json")
            .header("Content-Type", "application/json")
            .body(body.to_string());
        let v = json(send(req, what)?, what)?;
        let rec = v
            .get("records")
            .and_then(Value::as_array)
            .and_then(|a| {
                a.iter()
                    .find(|r| r.get("recordName").and_then(Value::as_str) == Some(record_name))
            })
            .ok_or_else(|| NotaryError::Ticket(format!("no record {record_name} in the answer")))?;
        if let Some(reason) = rec.get("reason").and_then(Value::as_str) {
            let code = rec
                .get("serverErrorCode")
                .and_then(Value::as_str)
                .unwrap_or("?");
            return Err(NotaryError::Ticket(format!(
                "{record_name}: {code}: {reason}"
            )));
        }
        let f = rec
            .pointer("/fields/signedTicket")
            .ok_or_else(|| NotaryError::Ticket(format!("{record_name}: no signedTicket")))?;
        if f.get("type").and_then(Value::as_str) != Some("BYTES") {
            return Err(NotaryError::Ticket(format!(
                "{record_name}: signedTicket is not BYTES"
            )));
        }
        let b64 = f.get("value").and_then(Value::as_str).unwrap_or("");
        let ticket = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| {
                NotaryError::Ticket(format!("{record_name}: signedTicket is not base64: {e}"))
            })?;
        if ticket.is_empty() {
            return Err(NotaryError::Ticket(format!("{record_name}: empty ticket")));
        }
        Ok(ticket)
    }
}
