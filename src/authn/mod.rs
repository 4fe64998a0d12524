//! Authenticate: the step after route. Finds out who is calling, from exactly one credential:
//!
//! * a bearer token (`bearer.rs` finds it; `jwt.rs` checks JWTs, `introspection.rs` opaque
//!   tokens) — machine callers, SPAs and mobile apps;
//! * HTTP Basic on routes that opted into the password bridge (`bridge.rs`), which trades the
//!   credentials for a token and then continues as a bearer caller;
//! * else the session cookie (`endpoints/login.rs`) — people in a browser.
//!
//! A token wins over a cookie, so a browser route called with a token is served for the token
//! instead of redirecting to login. A refused credential is an outcome ([`Caller::Refused`]),
//! answered with RFC 6750 challenges by [`answer`]; only a dependency that cannot be asked
//! (keys, introspection, token endpoint) is [`Caller::Unavailable`], answered 503 (rule 36).
//! What this step does not do: decide what the caller may do (`authz.rs`).

pub mod answer;
pub mod bearer;
pub mod bridge;
pub mod introspection;
pub mod jwt;

use http::{HeaderMap, HeaderValue, Uri};
use serde_json::Value;

use crate::authz::groups_at;
use crate::config::Secret;
use crate::endpoints::login::{Authn, Login};
use crate::identity::{Identity, email_verified, text_claim};
use crate::oidc::Claims;
pub use bearer::BearerAuth;

/// A cached value that knows when it stops being worth anything.
pub trait Due {
    fn due(&self) -> std::time::Instant;
}

/// The cache policy of every token cache here: each entry expires at its own [`Due::due`]
/// (rule 15: a remembered answer never outlives the token's `exp`).
pub struct ExpireWhenDue;

impl<K, V: Due> moka::Expiry<K, std::sync::Arc<V>> for ExpireWhenDue {
    fn expire_after_create(
        &self,
        _key: &K,
        value: &std::sync::Arc<V>,
        created_at: std::time::Instant,
    ) -> Option<std::time::Duration> {
        Some(value.due().saturating_duration_since(created_at))
    }
}

/// Why a credential was refused: `reason` for the log (stable, short), `description` for the
/// caller's `error_description` (says what is wrong, never shows key material or claims).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejection {
    pub reason: &'static str,
    pub description: &'static str,
}

/// The answer of a token check.
#[derive(Debug)]
pub enum Verdict {
    Valid(Identity),
    Invalid(Rejection),
    /// What could not be asked (for the log line); the caller answers 503.
    Unavailable(&'static str),
}

/// Who is calling, as far as this step could tell.
#[derive(Debug)]
pub enum Caller {
    /// No credential at all: a browser is sent to log in, an API caller gets a challenge.
    /// `clear` removes a stale session cookie.
    Anonymous {
        clear: Vec<HeaderValue>,
    },
    Session {
        identity: Identity,
        set_cookies: Vec<HeaderValue>,
    },
    /// A bearer token (or bridged Basic credentials) checked out.
    Token {
        identity: Identity,
        upstream: UpstreamCredential,
    },
    Refused(Refusal),
    Unavailable(&'static str),
}

/// What reaches the upstream in place of the caller's credential.
#[derive(Debug)]
pub enum UpstreamCredential {
    /// The caller's `Authorization` (or configured header) goes on as it came.
    Keep,
    /// Removed (`pass_token = false`).
    Strip,
    /// Basic credentials never travel on; with `pass_token` the token they bought does.
    Bearer(Option<Secret<String>>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// RFC 6750 `invalid_token` (401).
    InvalidToken(Rejection),
    /// RFC 6750 `invalid_request` (400): two tokens, a malformed `Authorization`.
    InvalidRequest(&'static str),
    /// Basic credentials the provider refused (401 with a Basic challenge).
    BadCredentials,
    /// Too many failed Basic attempts for this user (429).
    TooManyAttempts,
}

/// Applies what [`UpstreamCredential`] says to the headers going to the upstream; `header`
/// is where bearer tokens come in.
pub fn edit_credential(
    headers: &mut HeaderMap,
    credential: UpstreamCredential,
    header: Option<&http::HeaderName>,
) {
    match credential {
        UpstreamCredential::Keep => {}
        UpstreamCredential::Strip => {
            if let Some(h) = header {
                headers.remove(h);
            }
        }
        UpstreamCredential::Bearer(token) => {
            headers.remove(http::header::AUTHORIZATION);
            if let Some(v) =
                token.and_then(|t| HeaderValue::from_str(&format!("Bearer {}", t.expose())).ok())
            {
                headers.insert(http::header::AUTHORIZATION, v);
            }
        }
    }
}

/// Runs the authenticate step. `bridge` says whether the route accepts Basic credentials.
pub async fn authenticate(
    bearer: Option<&BearerAuth>,
    login: Option<&Login>,
    headers: &HeaderMap,
    uri: &Uri,
    bridge: bool,
) -> Caller {
    if let Some(bearer) = bearer
        && let Some(caller) = bearer.authenticate(headers, uri, bridge).await
    {
        return caller;
    }
    let Some(login) = login else {
        return Caller::Anonymous { clear: Vec::new() };
    };
    match login.authenticate(headers).await {
        Authn::Session {
            identity,
            set_cookies,
        } => Caller::Session {
            identity,
            set_cookies,
        },
        Authn::Anonymous { clear } => Caller::Anonymous { clear },
        Authn::Unavailable(what) => Caller::Unavailable(what),
    }
}

/// The identity a token's claims (or an introspection answer) describe: `sub` (else the
/// client), email, names, groups, the client it was issued to, its scopes. `None` when it names
/// neither a subject nor a client.
pub fn identity_from_claims(claims: Claims, groups_claim: &[String]) -> Option<Identity> {
    let text = |name: &str| text_claim(&claims, name);
    let client_id = text("client_id").or_else(|| text("azp"));
    let user = text("sub")
        .or_else(|| text("username"))
        .or_else(|| client_id.clone())?;
    let scopes = match (claims.get("scope"), claims.get("scp")) {
        (Some(Value::String(s)), _) | (None, Some(Value::String(s))) => {
            s.split_ascii_whitespace().map(str::to_owned).collect()
        }
        (None, Some(Value::Array(list))) => list
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    };
    Some(Identity {
        user,
        email: text("email"),
        email_verified: email_verified(&claims),
        preferred_username: text("preferred_username"),
        groups: groups_at(&claims, groups_claim),
        client_id,
        scopes,
        claims: claims.into(),
        access_token: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Claims {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn a_client_credentials_token_names_its_client() {
        let id = identity_from_claims(
            claims(json!({"sub": "svc", "client_id": "svc", "scope": "a b  c"})),
            &["groups".into()],
        )
        .unwrap();
        assert_eq!(id.user, "svc");
        assert_eq!(id.client_id.as_deref(), Some("svc"));
        assert_eq!(id.scopes, ["a", "b", "c"]);
        let id =
            identity_from_claims(claims(json!({"azp": "spa", "scp": ["x", "y"]})), &[]).unwrap();
        assert_eq!(id.user, "spa");
        assert_eq!(id.client_id.as_deref(), Some("spa"));
        assert_eq!(id.scopes, ["x", "y"]);
        assert!(identity_from_claims(claims(json!({"scope": "a"})), &[]).is_none());
    }

    #[test]
    fn a_user_token_carries_the_session_identity_fields() {
        let id = identity_from_claims(
            claims(
                json!({"sub": "alice", "email": "a@example.com", "email_verified": true,
                          "preferred_username": "alice", "roles": {"g": ["admins"]}}),
            ),
            &["roles".into(), "g".into()],
        )
        .unwrap();
        assert_eq!(id.email.as_deref(), Some("a@example.com"));
        assert!(id.email_verified);
        assert_eq!(id.groups, ["admins"]);
        assert_eq!(id.client_id, None);
    }
}
