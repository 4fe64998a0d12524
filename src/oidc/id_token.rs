//! Talking to the provider: checking the ID token it returns from the token endpoint
//! (OpenID Connect Core 1.0 §3.1.3.7, RFC 8725; security rules 3, 5, 14, 32).
//!
//! A rejected token is an outcome, not an error: [`IdTokenRejected`] names the reason for the
//! log line and never carries token content. What this module does not do: decide what the
//! claims mean (identity mapping) or check `at_hash` (the code flow's tokens come straight from
//! the token endpoint over TLS, Core §3.1.3.8 makes it optional).

use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde_json::Value;

use super::jwks::Jwks;
pub use super::jws::Claims;
use super::jws::{Jws, JwsRejected, audiences, number};

/// ID tokens above this are refused before any decoding (rule 32).
pub const MAX_ID_TOKEN_BYTES: usize = 16 * 1024;

/// What a valid ID token must say.
#[derive(Clone, Copy)]
pub struct Expectations<'a> {
    /// The issuer identifier, compared byte for byte.
    pub issuer: &'a str,
    pub client_id: &'a str,
    /// The configured allow-list; `none` cannot be expressed, HMAC needs `hmac_secret`.
    pub algorithms: &'a [Algorithm],
    pub leeway: Duration,
    /// The nonce sent in the authorization request, when one was.
    pub nonce: Option<&'a str>,
    /// Seconds since the Unix epoch (injected so tests can move the clock).
    pub now: u64,
    /// The client secret, the only key ever used for `HS*` ID tokens (Core §10.1): a token
    /// signed with anything else, such as the provider's public key, cannot verify.
    pub hmac_secret: Option<&'a [u8]>,
}

impl std::fmt::Debug for Expectations<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Expectations")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("algorithms", &self.algorithms)
            .field("leeway", &self.leeway)
            .field("nonce", &self.nonce.map(|_| "[redacted]"))
            .field("now", &self.now)
            .field("hmac_secret", &self.hmac_secret.map(|_| "[redacted]"))
            .finish()
    }
}

/// Why an ID token was refused. Safe to log: names a reason, never a value from the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdTokenRejected {
    #[error("ID token larger than {MAX_ID_TOKEN_BYTES} bytes")]
    TooLarge,
    #[error("ID token is not a compact JWS of three segments")]
    NotCompactJws,
    #[error("ID token header or payload is malformed")]
    Malformed,
    #[error("ID token has a duplicate JSON member")]
    DuplicateMember,
    #[error("ID token algorithm is not allowed")]
    AlgorithmNotAllowed,
    #[error("ID token has a crit header; no extensions are supported")]
    CriticalHeader,
    #[error("no key of the provider matches the ID token")]
    UnknownKey,
    /// The JWKS could not be fetched: the caller fails closed with 503 (rule 36).
    #[error("provider keys are unavailable")]
    KeysUnavailable,
    #[error("ID token signature is invalid")]
    BadSignature,
    #[error("ID token issuer is wrong")]
    WrongIssuer,
    #[error("ID token audience does not contain our client id")]
    WrongAudience,
    #[error("ID token azp is not our client id")]
    AzpMismatch,
    #[error("ID token lacks the required claim {0}")]
    MissingClaim(&'static str),
    #[error("ID token has expired")]
    Expired,
    #[error("ID token was issued in the future")]
    IssuedInFuture,
    #[error("ID token is not valid yet")]
    NotYetValid,
    #[error("ID token nonce does not match")]
    NonceMismatch,
}

impl From<JwsRejected> for IdTokenRejected {
    fn from(e: JwsRejected) -> Self {
        match e {
            JwsRejected::TooLarge => Self::TooLarge,
            JwsRejected::NotCompactJws => Self::NotCompactJws,
            JwsRejected::Malformed => Self::Malformed,
            JwsRejected::DuplicateMember => Self::DuplicateMember,
            JwsRejected::AlgorithmNotAllowed => Self::AlgorithmNotAllowed,
            JwsRejected::CriticalHeader => Self::CriticalHeader,
            JwsRejected::UnknownKey => Self::UnknownKey,
            JwsRejected::KeysUnavailable => Self::KeysUnavailable,
            JwsRejected::BadSignature => Self::BadSignature,
        }
    }
}

impl IdTokenRejected {
    /// A short, stable reason for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooLarge => "too_large",
            Self::NotCompactJws => "not_compact_jws",
            Self::Malformed => "malformed",
            Self::DuplicateMember => "duplicate_member",
            Self::AlgorithmNotAllowed => "algorithm_not_allowed",
            Self::CriticalHeader => "crit_header",
            Self::UnknownKey => "unknown_key",
            Self::KeysUnavailable => "keys_unavailable",
            Self::BadSignature => "bad_signature",
            Self::WrongIssuer => "wrong_issuer",
            Self::WrongAudience => "wrong_audience",
            Self::AzpMismatch => "azp_mismatch",
            Self::MissingClaim(_) => "missing_claim",
            Self::Expired => "expired",
            Self::IssuedInFuture => "iat_in_future",
            Self::NotYetValid => "not_yet_valid",
            Self::NonceMismatch => "nonce_mismatch",
        }
    }
}

/// Validates `raw` fully; returns its claims.
pub async fn validate_id_token(
    raw: &str,
    jwks: &Jwks,
    expect: &Expectations<'_>,
) -> Result<Claims, IdTokenRejected> {
    let token = Jws::parse(raw, MAX_ID_TOKEN_BYTES)?;
    token
        .verify(expect.algorithms, expect.hmac_secret, jwks)
        .await?;
    check_claims(&token.claims, expect)?;
    Ok(token.claims)
}

/// What the claims of an ID token must say (Core §3.1.3.7), against the injected clock.
fn check_claims(claims: &Claims, expect: &Expectations<'_>) -> Result<(), IdTokenRejected> {
    use IdTokenRejected as R;
    match claims.get("iss").and_then(Value::as_str) {
        Some(iss) if iss == expect.issuer => {}
        Some(_) => return Err(R::WrongIssuer),
        None => return Err(R::MissingClaim("iss")),
    }
    match claims.get("sub").and_then(Value::as_str) {
        Some(sub) if !sub.is_empty() => {}
        _ => return Err(R::MissingClaim("sub")),
    }
    let audiences = match audiences(claims) {
        Some(audiences) => audiences,
        None if claims.contains_key("aud") => return Err(R::WrongAudience),
        None => return Err(R::MissingClaim("aud")),
    };
    if !audiences.contains(&expect.client_id) {
        return Err(R::WrongAudience);
    }
    // Core §3.1.3.7 items 4–5: with several audiences `azp` is required and must be us; when
    // present at all it must be us.
    match claims.get("azp") {
        Some(Value::String(azp)) if azp == expect.client_id => {}
        Some(_) => return Err(R::AzpMismatch),
        None if audiences.len() > 1 => return Err(R::AzpMismatch),
        None => {}
    }
    let leeway = expect.leeway.as_secs();
    let exp = number(claims, "exp")?.ok_or(R::MissingClaim("exp"))?;
    if exp.saturating_add(leeway) <= expect.now {
        return Err(R::Expired);
    }
    let iat = number(claims, "iat")?.ok_or(R::MissingClaim("iat"))?;
    if iat > expect.now.saturating_add(leeway) {
        return Err(R::IssuedInFuture);
    }
    if let Some(nbf) = number(claims, "nbf")?
        && nbf > expect.now.saturating_add(leeway)
    {
        return Err(R::NotYetValid);
    }
    if let Some(expected) = expect.nonce {
        match claims.get("nonce").and_then(Value::as_str) {
            Some(got) if constant_time_eq(got.as_bytes(), expected.as_bytes()) => {}
            _ => return Err(R::NonceMismatch),
        }
    }
    Ok(())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
