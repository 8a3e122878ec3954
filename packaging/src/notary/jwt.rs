//! ES256 JSON Web Tokens for the App Store Connect API.
//!
//! Header `{"alg":"ES256","kid":<key id>,"typ":"JWT"}`; claims `iss` (issuer
//! id), `iat`, `exp` (at most 20 minutes later: Apple refuses longer tokens)
//! and `aud` = `appstoreconnect-v1`. The signature is the fixed-size `r || s`
//! (64 bytes) that JWS requires, base64url without padding.

use base64::Engine as _;

use super::{ApiKey, NotaryError};

/// The audience of App Store Connect tokens.
pub const AUDIENCE: &str = "appstoreconnect-v1";

/// Lifetime of a token, in seconds (Apple's maximum is 20 minutes).
pub const LIFETIME_SECS: u64 = 15 * 60;

fn b64url(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

/// A token issued at `now` (seconds since the epoch), valid [`LIFETIME_SECS`].
pub fn token(key: &ApiKey, now: u64) -> Result<String, NotaryError> {
    let header = serde_json::json!({"alg": "ES256", "kid": key.key_id, "typ": "JWT"});
    let claims = serde_json::json!({
        "iss": key.issuer_id,
        "iat": now,
        "exp": now + LIFETIME_SECS,
        "aud": AUDIENCE,
    });
    let signing_input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let sig = key
        .key_pair()?
        .sign(&ring::rand::SystemRandom::new(), signing_input.as_bytes())
        .map_err(|_| NotaryError::Key("ES256 signing failed".into()))?;
    Ok(format!("{signing_input}.{}", b64url(sig.as_ref())))
}

/// The token for the current time.
pub fn token_now(key: &ApiKey) -> Result<String, NotaryError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    token(key, now)
}
