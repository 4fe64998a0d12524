//! What a session and a pending login hold. Plain data: sealing, expiry and cookies live in
//! [`super::seal`] and [`super::cookies`].
//!
//! Tokens are [`Secret`]s so `Debug` never prints them; the refresh token in particular only ever
//! leaves the gateway sealed (rule 13). Empty and absent fields are skipped when serialised,
//! because every byte here ends up in a cookie.

use serde::{Deserialize, Serialize};

use serde_json::{Map, Value};

use crate::authz::groups_at;
use crate::config::Secret;
use crate::identity::{email_verified, text_claim};

/// A logged-in browser: who it is, the provider's tokens, and when it logged in and was last seen
/// (unix seconds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    /// Random 128-bit hex, fresh at every login (rule 30: a session planted before login is never
    /// the one that becomes authenticated); the key for server-side state such as sign-out.
    pub id: String,
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub email_verified: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_username: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Extra claims kept for route policies; the caller picks which, to keep the cookie small.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub claims: serde_json::Map<String, serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_token: Option<Secret<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token: Option<Secret<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_expires_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<Secret<String>>,
    /// The provider's session id, for back-channel logout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    pub created_at: u64,
    pub last_seen: u64,
}

impl Session {
    /// A fresh session from validated claims and the token endpoint's answer; `None` without a
    /// subject.
    pub fn from_tokens(
        claims: &Map<String, Value>,
        tokens: &crate::oidc::TokenResponse,
        groups_claim: &[String],
        now: u64,
    ) -> Option<Self> {
        session_from(claims, tokens, groups_claim, now)
    }

    /// A fresh session for `sub` logged in at `now`, with a new random id and nothing else set.
    pub fn new(sub: impl Into<String>, now: u64) -> Self {
        Self {
            id: random_hex_128(),
            sub: sub.into(),
            email: None,
            email_verified: false,
            name: None,
            preferred_username: None,
            groups: Vec::new(),
            claims: serde_json::Map::new(),
            id_token: None,
            access_token: None,
            access_expires_at: None,
            refresh_token: None,
            sid: None,
            created_at: now,
            last_seen: now,
        }
    }
}

/// A login in progress, kept in its own cookie between the redirect to the provider and the
/// callback (one per tab).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoginState {
    /// The OAuth `state` parameter (RFC 6749 §10.12); it also names the cookie.
    pub state: String,
    /// The PKCE code verifier (RFC 7636 §4.1).
    pub verifier: Secret<String>,
    /// The OIDC `nonce` expected in the ID token.
    pub nonce: String,
    /// Where to send the browser after the login, already checked by the caller.
    pub return_to: String,
    pub created_at: u64,
}

/// Claims the session keeps for route policies: everything but the protocol's own and the
/// ones stored in their own fields.
const PROTOCOL_CLAIMS: [&str; 16] = [
    "iss",
    "aud",
    "exp",
    "iat",
    "nbf",
    "nonce",
    "azp",
    "at_hash",
    "c_hash",
    "auth_time",
    "jti",
    "sid",
    "sub",
    "email",
    "email_verified",
    "preferred_username",
];

fn session_from(
    claims: &Map<String, Value>,
    tokens: &crate::oidc::TokenResponse,
    groups_claim: &[String],
    now: u64,
) -> Option<Session> {
    let text = |k: &str| text_claim(claims, k);
    let sub = text("sub")?;
    let kept: Map<String, Value> = claims
        .iter()
        .filter(|(k, _)| !PROTOCOL_CLAIMS.contains(&k.as_str()) && k.as_str() != "name")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Some(Session {
        // 256 random bits: with the Redis store this id is all a cookie holds.
        id: crate::oidc::random_token(32),
        sub,
        email: text("email"),
        email_verified: email_verified(claims),
        name: text("name"),
        preferred_username: text("preferred_username"),
        groups: groups_at(claims, groups_claim),
        claims: kept,
        id_token: tokens.id_token.clone().map(Secret::new),
        access_token: Some(tokens.access_token.clone()),
        access_expires_at: tokens.access_expires_at(now),
        refresh_token: tokens.refresh_token.clone(),
        sid: text("sid"),
        created_at: now,
        last_seen: now,
    })
}

/// 128 random bits as 32 lowercase hex digits.
pub fn random_hex_128() -> String {
    format!("{:032x}", rand::random::<u128>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_of_session_and_login_shows_no_token() {
        let mut s = Session::new("alice", 1);
        s.id_token = Some(Secret::new("ID-TOKEN-VALUE".into()));
        s.access_token = Some(Secret::new("ACCESS-TOKEN-VALUE".into()));
        s.refresh_token = Some(Secret::new("REFRESH-TOKEN-VALUE".into()));
        let d = format!("{s:?}");
        assert!(!d.contains("TOKEN-VALUE"), "{d}");
        let l = LoginState {
            state: "st".into(),
            verifier: Secret::new("VERIFIER-VALUE".into()),
            nonce: "n".into(),
            return_to: "/".into(),
            created_at: 1,
        };
        assert!(!format!("{l:?}").contains("VERIFIER-VALUE"));
    }

    #[test]
    fn tokens_survive_serialisation() {
        let mut s = Session::new("alice", 1);
        s.refresh_token = Some(Secret::new("r".into()));
        let json = serde_json::to_vec(&s).unwrap();
        let back: Session = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.refresh_token.unwrap().expose(), "r");
    }

    #[test]
    fn session_ids_are_fresh_128_bit_hex() {
        let a = Session::new("a", 0).id;
        let b = Session::new("a", 0).id;
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
