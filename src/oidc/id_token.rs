//! Talking to the provider: checking the ID token it returns from the token endpoint
//! (OpenID Connect Core 1.0 §3.1.3.7, RFC 8725; security rules 3, 5, 14, 32).
//!
//! A rejected token is an outcome, not an error: [`IdTokenRejected`] names the reason for the
//! log line and never carries token content. What this module does not do: decide what the
//! claims mean (identity mapping) or check `at_hash` (the code flow's tokens come straight from
//! the token endpoint over TLS, Core §3.1.3.8 makes it optional).

use std::str::FromStr;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use super::jwks::Jwks;

/// ID tokens above this are refused before any decoding (rule 32).
pub const MAX_ID_TOKEN_BYTES: usize = 16 * 1024;

/// The validated claims of an ID token.
pub type Claims = serde_json::Map<String, Value>;

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
    use IdTokenRejected as R;
    if raw.len() > MAX_ID_TOKEN_BYTES {
        return Err(R::TooLarge);
    }
    // Exactly three non-empty segments: no JSON serialisation, no JWE, no unsigned token.
    let segments: Vec<&str> = raw.split('.').collect();
    if segments.len() != 3 || segments.iter().any(|s| s.is_empty()) {
        return Err(R::NotCompactJws);
    }
    let header = decode_object(segments[0])?;
    // The payload is checked for duplicates here; jsonwebtoken decodes it again below.
    let _ = decode_object(segments[1])?;

    let alg_name = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or(R::Malformed)?;
    let alg = Algorithm::from_str(alg_name).map_err(|_| R::AlgorithmNotAllowed)?;
    if !expect.algorithms.contains(&alg) {
        return Err(R::AlgorithmNotAllowed);
    }
    if header.contains_key("crit") {
        return Err(R::CriticalHeader);
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.as_str()),
        Some(_) => return Err(R::Malformed),
    };

    let key: DecodingKey = if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
    {
        let secret = expect.hmac_secret.ok_or(R::AlgorithmNotAllowed)?;
        DecodingKey::from_secret(secret)
    } else {
        let found = match kid {
            Some(kid) => jwks.get(kid).await,
            None => jwks.get_only(alg).await,
        };
        let found = found
            .map_err(|_| R::KeysUnavailable)?
            .ok_or(R::UnknownKey)?;
        if !found.accepts(alg) {
            return Err(R::UnknownKey);
        }
        found.key.clone()
    };

    let mut validation = Validation::new(alg);
    validation.algorithms = vec![alg];
    validation.leeway = expect.leeway.as_secs();
    // Time claims are checked below against the injected clock.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.set_required_spec_claims(&["iss", "aud"]);
    validation.set_issuer(&[expect.issuer]);
    validation.set_audience(&[expect.client_id]);
    let data =
        jsonwebtoken::decode::<Claims>(raw, &key, &validation).map_err(|e| match e.kind() {
            ErrorKind::InvalidSignature
            | ErrorKind::InvalidEcdsaKey
            | ErrorKind::InvalidEddsaKey
            | ErrorKind::InvalidRsaKey(_)
            | ErrorKind::InvalidKeyFormat => R::BadSignature,
            ErrorKind::InvalidIssuer => R::WrongIssuer,
            ErrorKind::InvalidAudience => R::WrongAudience,
            ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => R::AlgorithmNotAllowed,
            ErrorKind::MissingRequiredClaim(c) if c == "iss" => R::MissingClaim("iss"),
            ErrorKind::MissingRequiredClaim(c) if c == "aud" => R::MissingClaim("aud"),
            _ => R::Malformed,
        })?;
    let claims = data.claims;
    check_claims(&claims, expect)?;
    Ok(claims)
}

/// The checks jsonwebtoken does not make (or makes against its own clock).
fn check_claims(claims: &Claims, expect: &Expectations<'_>) -> Result<(), IdTokenRejected> {
    use IdTokenRejected as R;
    // jsonwebtoken checked `iss` by set membership; exact equality again costs nothing.
    if claims.get("iss").and_then(Value::as_str) != Some(expect.issuer) {
        return Err(R::WrongIssuer);
    }
    match claims.get("sub").and_then(Value::as_str) {
        Some(sub) if !sub.is_empty() => {}
        _ => return Err(R::MissingClaim("sub")),
    }
    let audiences: Vec<&str> = match claims.get("aud") {
        Some(Value::String(a)) => vec![a.as_str()],
        Some(Value::Array(list)) => list
            .iter()
            .map(|a| a.as_str().ok_or(R::WrongAudience))
            .collect::<Result<_, _>>()?,
        _ => return Err(R::MissingClaim("aud")),
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

/// A NumericDate claim (RFC 7519 §2: may be fractional; we compare whole seconds).
pub(crate) fn number(claims: &Claims, name: &'static str) -> Result<Option<u64>, IdTokenRejected> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => match (n.as_u64(), n.as_f64()) {
            (Some(v), _) => Ok(Some(v)),
            (None, Some(f)) if f.is_finite() && f >= 0.0 && f < u64::MAX as f64 => {
                // Truncation is intended (fractional seconds do not matter at this leeway)
                // and the range is checked just above.
                let whole = f as u64;
                Ok(Some(whole))
            }
            _ => Err(IdTokenRejected::Malformed),
        },
        Some(_) => Err(IdTokenRejected::Malformed),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Decodes one base64url JSON-object segment, refusing duplicate members (rule 32: parsers
/// that disagree on which duplicate wins let an attacker show each a different value).
pub(crate) fn decode_object(segment: &str) -> Result<Claims, IdTokenRejected> {
    let bytes = URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| IdTokenRejected::Malformed)?;
    match serde_json::from_slice::<UniqueObject>(&bytes) {
        Ok(UniqueObject(map)) => Ok(map),
        Err(e) if e.to_string().contains(DUPLICATE) => Err(IdTokenRejected::DuplicateMember),
        Err(_) => Err(IdTokenRejected::Malformed),
    }
}

const DUPLICATE: &str = "duplicate JSON member";

/// A top-level JSON object whose member names are unique.
struct UniqueObject(Claims);

impl<'de> serde::Deserialize<'de> for UniqueObject {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = UniqueObject;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut access: A,
            ) -> Result<UniqueObject, A::Error> {
                let mut map = Claims::new();
                while let Some((k, v)) = access.next_entry::<String, Value>()? {
                    if map.contains_key(&k) {
                        return Err(serde::de::Error::custom(DUPLICATE));
                    }
                    map.insert(k, v);
                }
                Ok(UniqueObject(map))
            }
        }
        d.deserialize_map(Visitor)
    }
}
