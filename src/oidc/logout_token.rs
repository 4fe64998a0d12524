//! Talking to the provider: checking a Logout Token it sends to `/oauth2/backchannel_logout`
//! (OpenID Connect Back-Channel Logout 1.0 §2.4, §2.6): a JWT signed with the provider's keys,
//! `iss` exactly the provider, `aud` containing our client id, a recent `iat`, the
//! back-channel logout event in `events`, a `sid` or `sub`, and no `nonce` (so an ID token can
//! never pass for one). Replays (`jti`) are the endpoint's business.

use jsonwebtoken::Algorithm;
use serde_json::Value;

use super::jwks::Jwks;
use super::jws::{Claims, Jws, JwsRejected, audience_in, number};

/// The event member §2.4 requires.
pub const BACKCHANNEL_LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";
/// Logout tokens above this are refused before any decoding (rule 32).
const MAX_BYTES: usize = 16 * 1024;
/// A logout token older than this (beyond the leeway) is refused: §2.6 item 10 asks for a
/// reasonable window, and the `jti` memory only has to cover it.
pub const MAX_AGE_SECS: u64 = 300;
/// How long a logout token's `jti` stays used: as long as the token could be accepted (its
/// `iat` may be [`MAX_AGE_SECS`] old), with room for clocks apart.
pub const JTI_MEMORY: std::time::Duration = std::time::Duration::from_secs(MAX_AGE_SECS + 300);

/// Whose sessions to end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogoutRequest {
    pub sid: Option<String>,
    pub sub: Option<String>,
    pub jti: String,
}

/// What a valid logout token must match.
pub struct LogoutExpectations<'a> {
    pub issuer: &'a str,
    pub client_id: &'a str,
    pub algorithms: &'a [Algorithm],
    pub leeway: u64,
    pub now: u64,
    pub hmac_secret: Option<&'a [u8]>,
}

/// Why a logout token was refused (safe to log; never a value from the token).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogoutRejected {
    /// The provider's keys cannot be fetched: the endpoint answers 503 and the provider
    /// retries (§2.8); never a refusal of a token that may be good.
    KeysUnavailable,
    /// The token is not a valid logout token, for this reason.
    Invalid(&'static str),
}

impl From<JwsRejected> for LogoutRejected {
    fn from(e: JwsRejected) -> Self {
        match e {
            JwsRejected::KeysUnavailable => Self::KeysUnavailable,
            other => Self::Invalid(other.phrase()),
        }
    }
}

pub async fn validate_logout_token(
    raw: &str,
    jwks: &Jwks,
    expect: &LogoutExpectations<'_>,
) -> Result<LogoutRequest, LogoutRejected> {
    let token = Jws::parse(raw, MAX_BYTES)?;
    // §2.4: `typ` should be `logout+jwt`; when present it must say so (an ID token or access
    // token is never a logout token).
    if token.typ_is(&["logout+jwt", "jwt"]) == Some(false) {
        return Err(LogoutRejected::Invalid("wrong typ"));
    }
    token
        .verify(expect.algorithms, expect.hmac_secret, jwks)
        .await?;
    check_claims(&token.claims, expect).map_err(LogoutRejected::Invalid)
}

fn check_claims(
    claims: &Claims,
    expect: &LogoutExpectations<'_>,
) -> Result<LogoutRequest, &'static str> {
    if claims.get("iss").and_then(Value::as_str) != Some(expect.issuer) {
        return Err("wrong issuer");
    }
    if !audience_in(claims, &[expect.client_id]) {
        return Err("wrong audience");
    }
    let iat = number(claims, "iat")
        .map_err(|_| "malformed iat")?
        .ok_or("missing iat")?;
    if iat > expect.now.saturating_add(expect.leeway) {
        return Err("issued in the future");
    }
    if iat.saturating_add(MAX_AGE_SECS + expect.leeway) < expect.now {
        return Err("too old");
    }
    if let Some(exp) = number(claims, "exp").map_err(|_| "malformed exp")?
        && exp.saturating_add(expect.leeway) <= expect.now
    {
        return Err("expired");
    }
    // §2.4: `events` is a JSON object with the back-channel logout member, itself an object.
    let event = claims
        .get("events")
        .and_then(Value::as_object)
        .and_then(|e| e.get(BACKCHANNEL_LOGOUT_EVENT));
    if !event.is_some_and(Value::is_object) {
        return Err("missing logout event");
    }
    // §2.6 item 7: a nonce means this is (or pretends to be) an ID token.
    if claims.contains_key("nonce") {
        return Err("nonce present");
    }
    let text = |k: &str| {
        claims
            .get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let (sid, sub) = (text("sid"), text("sub"));
    if sid.is_none() && sub.is_none() {
        return Err("neither sid nor sub");
    }
    let jti = text("jti").ok_or("missing jti")?;
    Ok(LogoutRequest { sid, sub, jti })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn expect() -> LogoutExpectations<'static> {
        LogoutExpectations {
            issuer: "https://idp",
            client_id: "gh",
            algorithms: &[Algorithm::RS256],
            leeway: 60,
            now: 10_000,
            hmac_secret: None,
        }
    }

    fn good() -> Claims {
        json!({"iss": "https://idp", "aud": "gh", "iat": 10_000, "jti": "j1", "sid": "s1",
               "events": {BACKCHANNEL_LOGOUT_EVENT: {}}})
        .as_object()
        .cloned()
        .unwrap()
    }

    #[test]
    fn the_claims_of_a_logout_token() {
        let ok = check_claims(&good(), &expect()).unwrap();
        assert_eq!(ok.sid.as_deref(), Some("s1"));
        let with = |k: &str, v: Value| {
            let mut c = good();
            c.insert(k.into(), v);
            check_claims(&c, &expect())
        };
        let without = |k: &str| {
            let mut c = good();
            c.remove(k);
            check_claims(&c, &expect())
        };
        assert_eq!(with("nonce", json!("n")), Err("nonce present"));
        assert_eq!(
            with("events", json!({"other": {}})),
            Err("missing logout event")
        );
        assert_eq!(
            with("events", json!({BACKCHANNEL_LOGOUT_EVENT: "x"})),
            Err("missing logout event")
        );
        assert_eq!(with("aud", json!(["x", "y"])), Err("wrong audience"));
        assert_eq!(with("iss", json!("https://idp/")), Err("wrong issuer"));
        assert_eq!(with("iat", json!(10_000 - 400)), Err("too old"));
        assert_eq!(
            with("iat", json!(10_000 + 100)),
            Err("issued in the future")
        );
        assert_eq!(without("jti"), Err("missing jti"));
        assert_eq!(without("events"), Err("missing logout event"));
        let mut c = good();
        c.remove("sid");
        assert_eq!(check_claims(&c, &expect()), Err("neither sid nor sub"));
        c.insert("sub".into(), json!("alice"));
        assert!(check_claims(&c, &expect()).is_ok());
    }
}
