//! Notarization and stapling of the signed installer (feature `package`).
//!
//! Glossary:
//! - **API key**: an App Store Connect API key, read from a JSON file
//!   `{"issuer_id","key_id","private_key"}` (`private_key` = base64 of the
//!   PKCS#8 DER of a P-256 key: the format `rcodesign
//!   encode-app-store-connect-api-key` writes). It signs short-lived ES256 JWTs
//!   ([`jwt`]); it is never printed (`Debug` redacts it).
//! - **submission**: Notary API v2 `POST /notary/v2/submissions` with the pkg's
//!   sha256 and name; the answer carries temporary AWS credentials, a bucket and
//!   an object key to upload the pkg to (S3 `PutObject`, signed with AWS SigV4:
//!   [`upload`]).
//! - **status**: `In Progress`, then `Accepted`, `Invalid` or `Rejected`; the
//!   developer log (JSON with `issues`) explains a refusal.
//! - **ticket**: what Apple's CDN (CloudKit, no authentication) serves for an
//!   accepted artifact. A flat package's record name is
//!   `2/<digest type>/<first 20 bytes of its TOC checksum, hex>` (digest type 1
//!   = sha1, 2 = sha256). **Stapling** appends the ticket to the XAR ([`staple`]).
//!
//! The network sits behind [`NotaryService`]; [`api::HttpNotary`] is the real
//! implementation, with configurable base URLs so that tests use a local stub.

pub mod api;
pub mod jwt;
pub mod staple;
pub mod upload;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;

/// Errors of the notarization flow.
#[derive(Debug, thiserror::Error)]
pub enum NotaryError {
    /// Reading or writing a file failed.
    #[error("{path}: {action}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The API key file is malformed (the message never contains the key).
    #[error("API key: {0}")]
    Key(String),
    /// An HTTP request failed or its answer was not understood.
    #[error("{what}: {message}")]
    Http {
        /// Which request.
        what: String,
        /// What went wrong (status, body excerpt, transport error).
        message: String,
    },
    /// The pkg cannot be notarized as it is.
    #[error("{0}")]
    NotNotarizable(String),
    /// Apple did not accept the submission.
    #[error("{}", not_accepted_message(*.status, id, summary.as_deref(), issues))]
    NotAccepted {
        /// `Invalid` or `Rejected`.
        status: Status,
        /// The submission id.
        id: String,
        /// The log's `statusSummary`, if any.
        summary: Option<String>,
        /// The log's issues.
        issues: Vec<LogIssue>,
    },
    /// The submission was still in progress when the wait timed out.
    #[error("notarization of submission {id} did not finish within {}s (last status: {last}); it may still finish: check later with its id", waited.as_secs())]
    Timeout {
        /// The submission id.
        id: String,
        /// How long was waited.
        waited: Duration,
        /// The last status seen.
        last: Status,
    },
    /// The ticket lookup failed or the ticket is unusable.
    #[error("ticket: {0}")]
    Ticket(String),
    /// The package is not a XAR archive that can be stapled.
    #[error("stapling: {0}")]
    Staple(String),
}

fn not_accepted_message(
    status: Status,
    id: &str,
    summary: Option<&str>,
    issues: &[LogIssue],
) -> String {
    let mut s = format!("notarization {status}: submission {id}");
    if let Some(sum) = summary {
        s.push_str(&format!(" ({sum})"));
    }
    if issues.is_empty() {
        s.push_str("; the developer log lists no issues");
    } else {
        s.push_str(&format!("; {} issue(s):", issues.len()));
        for i in issues {
            s.push_str(&format!("\n  {i}"));
        }
    }
    s
}

/// Submission status as the Notary API reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// `In Progress`.
    InProgress,
    /// `Accepted`.
    Accepted,
    /// `Invalid`.
    Invalid,
    /// `Rejected`.
    Rejected,
    /// Anything else (treated as still in progress).
    Unknown,
}

impl Status {
    /// Parses the API's `status` string.
    pub fn parse(s: &str) -> Status {
        match s {
            "In Progress" => Status::InProgress,
            "Accepted" => Status::Accepted,
            "Invalid" => Status::Invalid,
            "Rejected" => Status::Rejected,
            _ => Status::Unknown,
        }
    }

    /// The API's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::InProgress => "In Progress",
            Status::Accepted => "Accepted",
            Status::Invalid => "Invalid",
            Status::Rejected => "Rejected",
            Status::Unknown => "unknown",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Temporary AWS credentials of a submission (`Debug` redacts the secrets).
#[derive(Clone, PartialEq, Eq)]
pub struct AwsCredentials {
    /// `awsAccessKeyId`.
    pub access_key_id: String,
    /// `awsSecretAccessKey`.
    pub secret_access_key: String,
    /// `awsSessionToken`.
    pub session_token: String,
}

impl fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("session_token", &"<redacted>")
            .finish()
    }
}

/// Where to upload the submission's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadTarget {
    /// S3 bucket.
    pub bucket: String,
    /// S3 object key.
    pub object: String,
    /// Credentials for the upload.
    pub credentials: AwsCredentials,
}

/// A created submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submission {
    /// Submission id.
    pub id: String,
    /// Where its bytes go.
    pub upload: UploadTarget,
}

/// One entry of the developer log's `issues`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogIssue {
    /// `error` or `warning`.
    pub severity: String,
    /// Path inside the submission.
    pub path: String,
    /// What is wrong.
    pub message: String,
    /// Architecture, when the issue is about one slice.
    pub architecture: Option<String>,
    /// Apple's documentation link.
    pub doc_url: Option<String>,
}

impl fmt::Display for LogIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.severity, self.path)?;
        if let Some(a) = &self.architecture {
            write!(f, " [{a}]")?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(u) = &self.doc_url {
            write!(f, " ({u})")?;
        }
        Ok(())
    }
}

/// The issues and `statusSummary` of a developer log.
pub fn log_issues(log: &serde_json::Value) -> (Option<String>, Vec<LogIssue>) {
    let s = |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
    let summary = s(log, "statusSummary");
    let issues = log
        .get("issues")
        .and_then(|i| i.as_array())
        .map(|a| {
            a.iter()
                .map(|i| LogIssue {
                    severity: s(i, "severity").unwrap_or_else(|| "issue".into()),
                    path: s(i, "path").unwrap_or_else(|| "(no path)".into()),
                    message: s(i, "message").unwrap_or_else(|| "(no message)".into()),
                    architecture: s(i, "architecture"),
                    doc_url: s(i, "docUrl"),
                })
                .collect()
        })
        .unwrap_or_default();
    (summary, issues)
}

/// The network operations of notarization. [`api::HttpNotary`] talks to Apple
/// (or to a stub at configurable URLs).
pub trait NotaryService {
    /// Creates a submission for an artifact with this name and sha256 (hex).
    fn submit(&self, name: &str, sha256_hex: &str) -> Result<Submission, NotaryError>;
    /// Uploads the artifact's bytes.
    fn upload(&self, bytes: &[u8], target: &UploadTarget) -> Result<(), NotaryError>;
    /// The submission's current status.
    fn status(&self, id: &str) -> Result<Status, NotaryError>;
    /// The submission's developer log (JSON).
    fn log(&self, id: &str) -> Result<serde_json::Value, NotaryError>;
    /// The notarization ticket stored under this record name.
    fn ticket_lookup(&self, record_name: &str) -> Result<Vec<u8>, NotaryError>;
}

/// An App Store Connect API key.
#[derive(Clone)]
pub struct ApiKey {
    /// Issuer id (a UUID).
    pub issuer_id: String,
    /// Key id (e.g. `DEADBEEF42`).
    pub key_id: String,
    /// PKCS#8 DER of the P-256 private key.
    pkcs8: Vec<u8>,
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKey")
            .field("issuer_id", &self.issuer_id)
            .field("key_id", &self.key_id)
            .field("private_key", &"<redacted>")
            .finish()
    }
}

impl ApiKey {
    /// Parses the JSON key format; checks that the key is a usable P-256 key.
    pub fn from_json(text: &str) -> Result<ApiKey, NotaryError> {
        #[derive(serde::Deserialize)]
        struct File {
            issuer_id: String,
            key_id: String,
            private_key: String,
        }
        // serde_json's error could quote input: report only its position.
        let f: File = serde_json::from_str(text).map_err(|e| {
            NotaryError::Key(format!(
                "not the JSON {{\"issuer_id\",\"key_id\",\"private_key\"}} format (line {}, column {}; {:?} error)",
                e.line(),
                e.column(),
                e.classify()
            ))
        })?;
        let pkcs8 = base64::engine::general_purpose::STANDARD
            .decode(f.private_key.trim())
            .map_err(|_| NotaryError::Key("private_key is not base64".into()))?;
        if f.issuer_id.is_empty() || f.key_id.is_empty() {
            return Err(NotaryError::Key(
                "issuer_id and key_id must not be empty".into(),
            ));
        }
        let key = ApiKey {
            issuer_id: f.issuer_id,
            key_id: f.key_id,
            pkcs8,
        };
        key.key_pair()?;
        Ok(key)
    }

    /// Reads the key file.
    pub fn from_file(path: &Path) -> Result<ApiKey, NotaryError> {
        let text = std::fs::read_to_string(path).map_err(|source| NotaryError::Io {
            path: path.to_path_buf(),
            action: "cannot read the API key file",
            source,
        })?;
        ApiKey::from_json(&text).map_err(|e| match e {
            NotaryError::Key(m) => NotaryError::Key(format!("{}: {m}", path.display())),
            e => e,
        })
    }

    /// Builds the key file's JSON (used by tests to write a key).
    pub fn to_json(issuer_id: &str, key_id: &str, pkcs8_der: &[u8]) -> String {
        serde_json::json!({
            "issuer_id": issuer_id,
            "key_id": key_id,
            "private_key": base64::engine::general_purpose::STANDARD.encode(pkcs8_der),
        })
        .to_string()
    }

    pub(crate) fn key_pair(&self) -> Result<ring::signature::EcdsaKeyPair, NotaryError> {
        ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &self.pkcs8,
            &ring::rand::SystemRandom::new(),
        )
        .map_err(|e| {
            NotaryError::Key(format!(
                "private_key is not a PKCS#8 P-256 (ES256) key: {e}"
            ))
        })
    }
}

/// Lower-case hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// sha256 of `data`, hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}

/// How long and how often to poll.
#[derive(Debug, Clone, Copy)]
pub struct WaitOptions {
    /// Give up after this long.
    pub timeout: Duration,
    /// Time between status requests.
    pub poll_interval: Duration,
}

impl Default for WaitOptions {
    fn default() -> WaitOptions {
        WaitOptions {
            timeout: Duration::from_secs(30 * 60),
            poll_interval: Duration::from_secs(10),
        }
    }
}

/// A pkg can be submitted only when Developer ID Installer signed: it must
/// carry both the RSA and the CMS signature (an unsigned or tampered one is
/// refused). Checking the certificate's kind and validity is
/// [`crate::sign::check_notarizable`]'s job, done before the pkg is built.
pub fn check_pkg_submittable(pkg: &[u8]) -> Result<(), NotaryError> {
    let v = crate::xar::verify(pkg)
        .map_err(|e| NotaryError::NotNotarizable(format!("the pkg does not verify: {e}")))?;
    if !(v.rsa_signature && v.cms_signature) {
        return Err(NotaryError::NotNotarizable(
            "notarization needs a pkg signed with a Developer ID Installer certificate; this one is unsigned".into(),
        ));
    }
    Ok(())
}

/// Consecutive failed status requests tolerated while waiting.
pub const MAX_STATUS_FAILURES: u32 = 3;

/// Submits `pkg` as `name`, uploads it and waits until Apple decides.
/// Returns the submission id when accepted; `progress` gets one line per step
/// and per poll. Invalid/Rejected: the developer log is fetched and its issues
/// are in the error.
pub fn notarize(
    service: &dyn NotaryService,
    name: &str,
    pkg: &[u8],
    wait: WaitOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<String, NotaryError> {
    check_pkg_submittable(pkg)?;
    let sha = sha256_hex(pkg);
    let sub = service.submit(name, &sha)?;
    progress(&format!(
        "notarization: submission {} created for {name} (sha256 {sha})",
        sub.id
    ));
    service.upload(pkg, &sub.upload)?;
    progress(&format!(
        "notarization: uploaded {} bytes to s3://{}/{}",
        pkg.len(),
        sub.upload.bucket,
        sub.upload.object
    ));
    let start = Instant::now();
    let mut failures = 0;
    loop {
        let status = match service.status(&sub.id) {
            Ok(s) => {
                failures = 0;
                s
            }
            // A network blip must not lose a long wait: retry a few times.
            Err(e) if failures < MAX_STATUS_FAILURES => {
                failures += 1;
                progress(&format!(
                    "notarization: status request failed ({e}); retrying ({failures}/{MAX_STATUS_FAILURES})"
                ));
                Status::Unknown
            }
            Err(e) => return Err(e),
        };
        let waited = start.elapsed();
        if failures == 0 {
            progress(&format!(
                "notarization: {} after {}s",
                status,
                waited.as_secs()
            ));
        }
        match status {
            Status::Accepted => return Ok(sub.id),
            Status::Invalid | Status::Rejected => {
                let (summary, issues) = match service.log(&sub.id) {
                    Ok(log) => log_issues(&log),
                    Err(e) => (
                        Some(format!("the developer log could not be fetched: {e}")),
                        Vec::new(),
                    ),
                };
                return Err(NotaryError::NotAccepted {
                    status,
                    id: sub.id,
                    summary,
                    issues,
                });
            }
            Status::InProgress | Status::Unknown => {}
        }
        if waited + wait.poll_interval > wait.timeout {
            return Err(NotaryError::Timeout {
                id: sub.id,
                waited,
                last: status,
            });
        }
        std::thread::sleep(wait.poll_interval);
    }
}

/// Looks up the ticket of the pkg at `path` and staples it in place
/// (atomically: a temporary file in the same directory, then a rename).
/// Returns the ticket's record name.
pub fn staple_pkg_file(service: &dyn NotaryService, path: &Path) -> Result<String, NotaryError> {
    let data = std::fs::read(path).map_err(|source| NotaryError::Io {
        path: path.to_path_buf(),
        action: "cannot read the pkg",
        source,
    })?;
    let unstapled = staple::without_ticket(&data);
    let record = staple::record_name(unstapled)?;
    let ticket = service.ticket_lookup(&record)?;
    staple::staple_file(path, &ticket)?;
    Ok(record)
}
