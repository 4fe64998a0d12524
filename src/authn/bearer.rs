//! Authenticate, bearer tokens: finds the token in the request and sends it to the right
//! checker (RFC 6750). The token is read from `Authorization: Bearer` only, unless another
//! header or a query parameter is configured (rule 16); it is size-checked before any parsing
//! (rule 32) and never logged. A request that presents tokens in two places, or two
//! `Authorization` headers, is refused (RFC 6750 §2, rule 35) rather than "first one wins".

use std::borrow::Cow;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::{HeaderMap, HeaderName, Uri};

use super::bridge::{BridgeError, PasswordBridge};
use super::introspection::Introspector;
use super::jwt::{JwtVerifier, looks_like_jwt};
use super::{Caller, Refusal, Rejection, UpstreamCredential, Verdict};
use crate::config::{Config, IssuerKeys, Secret};
use crate::oidc::unix_now as now;
use crate::oidc::{Provider, ProviderError};

/// Every bearer checker, shared by all workers.
#[derive(Debug)]
pub struct BearerAuth {
    jwt: Arc<JwtVerifier>,
    introspection: Option<Introspector>,
    bridge: Option<PasswordBridge>,
    header: HeaderName,
    query_parameter: Option<String>,
    max_token_bytes: usize,
    pass_token: bool,
    /// Whether the identity headers want the token itself (`pass_access_token`, …).
    keep_token: bool,
    realm: String,
}

/// What the request presents.
enum Presented<'a> {
    Nothing,
    Token(Cow<'a, str>),
    Basic {
        user: String,
        password: Secret<String>,
    },
    Malformed(&'static str),
}

impl BearerAuth {
    /// `None` without `[bearer]`.
    pub fn new(
        config: &Config,
        provider: Option<&Arc<Provider>>,
    ) -> Result<Option<Arc<Self>>, ProviderError> {
        let Some(bc) = &config.bearer else {
            return Ok(None);
        };
        let groups_claim = config.authorization.groups_claim.clone();
        let jwt = Arc::new(JwtVerifier::new(
            &bc.issuers,
            provider,
            bc.cache_entries,
            groups_claim.clone(),
            bc.max_token_bytes,
        )?);
        jwt.start();
        let provider_audiences = bc
            .issuers
            .iter()
            .find(|i| matches!(i.keys, IssuerKeys::Provider))
            .map(|i| i.audiences.clone())
            .unwrap_or_default();
        let introspection = match &bc.introspection {
            Some(ic) => Some(Introspector::new(
                ic,
                provider.cloned(),
                provider_audiences,
                groups_claim,
            )?),
            None => None,
        };
        let bridge = match (&config.password_bridge, provider) {
            (Some(pb), Some(p)) => {
                tracing::warn!(
                    "[password_bridge] is on: HTTP Basic credentials on routes with password_bridge = true are sent to the provider with the resource owner password grant, which RFC 9700 §2.4 deprecates (the gateway sees passwords, and MFA cannot apply); keep it only for legacy clients that cannot do better"
                );
                Some(PasswordBridge::new(pb, p.clone()))
            }
            _ => None,
        };
        Ok(Some(Arc::new(Self {
            jwt,
            introspection,
            bridge,
            header: bc.header.clone(),
            query_parameter: bc.query_parameter.clone(),
            max_token_bytes: bc.max_token_bytes,
            pass_token: bc.pass_token,
            keep_token: config.headers.pass_access_token
                || config.headers.pass_authorization_header,
            realm: bc.realm.clone(),
        })))
    }

    /// Bearer JWTs verified in full so far (the verified-token cache's misses).
    pub fn jwt_checks(&self) -> u64 {
        self.jwt.checks()
    }

    /// The header tokens come in (`[bearer] header`).
    pub fn header(&self) -> &HeaderName {
        &self.header
    }

    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// The query parameter tokens may come in (`[bearer] query_parameter`), if any.
    pub fn query_parameter(&self) -> Option<&str> {
        self.query_parameter.as_deref()
    }

    /// Authenticates from a token (or bridged Basic credentials); `None` when the request
    /// presents neither, so the session cookie is asked next.
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        uri: &Uri,
        bridge: bool,
    ) -> Option<Caller> {
        let caller = match self.presented(headers, uri, bridge) {
            Presented::Nothing => return None,
            Presented::Malformed(why) => Caller::Refused(Refusal::InvalidRequest(why)),
            Presented::Token(token) => {
                let upstream = if self.pass_token {
                    UpstreamCredential::Keep
                } else {
                    UpstreamCredential::Strip
                };
                self.caller(&token, upstream).await
            }
            Presented::Basic { user, password } => {
                let Some(bridge) = &self.bridge else {
                    return None;
                };
                match Box::pin(bridge.exchange(&user, &password)).await {
                    Ok(bought) => {
                        let token = bought.token;
                        let upstream =
                            UpstreamCredential::Bearer(self.pass_token.then(|| token.clone()));
                        let mut caller = self.caller(token.expose(), upstream).await;
                        // The person's email and names come from the ID token when the access
                        // token lacks them; the subject must be the same.
                        if let (Caller::Token { identity, .. }, Some(claims)) =
                            (&mut caller, &bought.id_claims)
                        {
                            complete_from_id_token(identity, claims);
                        }
                        caller
                    }
                    Err(BridgeError::BadCredentials) => Caller::Refused(Refusal::BadCredentials),
                    Err(BridgeError::TooManyAttempts) => Caller::Refused(Refusal::TooManyAttempts),
                    Err(BridgeError::Unavailable) => Caller::Unavailable("password grant"),
                }
            }
        };
        Some(caller)
    }

    async fn caller(&self, token: &str, upstream: UpstreamCredential) -> Caller {
        match self.check(token).await {
            Verdict::Valid(mut identity) => {
                if self.keep_token {
                    identity.access_token = Some(Secret::new(token.to_owned()));
                }
                Caller::Token { identity, upstream }
            }
            Verdict::Invalid(r) => {
                tracing::info!(reason = r.reason, "bearer token refused");
                Caller::Refused(Refusal::InvalidToken(r))
            }
            Verdict::Unavailable(what) => Caller::Unavailable(what),
        }
    }

    /// The verdict on one token: JWTs by signature, anything else by introspection.
    pub async fn check(&self, token: &str) -> Verdict {
        if token.len() > self.max_token_bytes {
            return Verdict::Invalid(Rejection {
                reason: "too_large",
                description: "the token is too large",
            });
        }
        let now = now();
        if !looks_like_jwt(token) {
            return self.introspect(token, now).await;
        }
        match self.jwt.verify(token, now).await {
            // A JWT of an issuer we do not verify ourselves may still be known to the
            // introspection endpoint.
            Verdict::Invalid(r)
                if r.reason == "untrusted_issuer" && self.introspection.is_some() =>
            {
                self.introspect(token, now).await
            }
            verdict => verdict,
        }
    }

    async fn introspect(&self, token: &str, now: u64) -> Verdict {
        match &self.introspection {
            Some(i) => Box::pin(i.introspect(token, now)).await,
            None => Verdict::Invalid(Rejection {
                reason: "not_a_jwt",
                description: "the token is not a signed JWT",
            }),
        }
    }

    fn presented<'a>(&self, headers: &'a HeaderMap, uri: &'a Uri, bridge: bool) -> Presented<'a> {
        let mut values = headers.get_all(&self.header).iter();
        let from_header = match (values.next(), values.next()) {
            (None, _) => Presented::Nothing,
            (Some(_), Some(_)) => {
                return Presented::Malformed("more than one credential header");
            }
            (Some(value), None) => {
                let Ok(text) = value.to_str() else {
                    return Presented::Malformed("the credential header is not text");
                };
                self.header_credential(text, bridge)
            }
        };
        let Some(param) = &self.query_parameter else {
            return from_header;
        };
        let mut found = url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
            .filter(|(k, _)| k == param.as_str())
            .map(|(_, v)| v);
        match (found.next(), found.next(), &from_header) {
            (None, _, _) => from_header,
            (Some(_), Some(_), _) => Presented::Malformed("the token parameter is repeated"),
            (Some(t), None, Presented::Nothing) if is_b64token(&t) => {
                Presented::Token(Cow::Owned(t.into_owned()))
            }
            (Some(_), None, Presented::Nothing) => {
                Presented::Malformed("the token parameter is not a token")
            }
            // RFC 6750 §2: a client must not use more than one method per request.
            (Some(_), None, _) => Presented::Malformed("a token was sent in two places"),
        }
    }

    fn header_credential<'a>(&self, text: &'a str, bridge: bool) -> Presented<'a> {
        let (scheme, rest) = text.split_once(' ').unwrap_or((text, ""));
        let rest = rest.trim_matches(' ');
        if self.header != http::header::AUTHORIZATION {
            // A custom header carries the bare token (or, tolerated, "Bearer <token>").
            let token = if scheme.eq_ignore_ascii_case("bearer") {
                rest
            } else {
                text.trim_matches(' ')
            };
            return if is_b64token(token) {
                Presented::Token(Cow::Borrowed(token))
            } else {
                Presented::Malformed("the token header does not hold a token")
            };
        }
        if scheme.eq_ignore_ascii_case("bearer") {
            return if is_b64token(rest) {
                Presented::Token(Cow::Borrowed(rest))
            } else {
                Presented::Malformed("the Authorization header does not hold a bearer token")
            };
        }
        if bridge && self.bridge.is_some() && scheme.eq_ignore_ascii_case("basic") {
            return match decode_basic(rest) {
                Some((user, password)) => Presented::Basic { user, password },
                None => Presented::Malformed("the Basic credentials are malformed"),
            };
        }
        // Another scheme is for the app, not for us.
        Presented::Nothing
    }
}

/// Removes every `param` from the query of `uri` (matched like [`BearerAuth::authenticate`]
/// finds it, after form-decoding the name); the other parameters stay byte for byte.
pub fn strip_query_token(uri: &mut Uri, param: &str) {
    let Some(query) = uri.query() else {
        return;
    };
    let is_token = |pair: &&str| {
        url::form_urlencoded::parse(pair.as_bytes())
            .next()
            .is_some_and(|(name, _)| name == param)
    };
    if !query.split('&').any(|pair| is_token(&pair)) {
        return;
    }
    let kept: Vec<&str> = query.split('&').filter(|p| !is_token(p)).collect();
    let mut target = uri.path().to_owned();
    if !kept.is_empty() {
        target.push('?');
        target.push_str(&kept.join("&"));
    }
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = http::uri::PathAndQuery::try_from(target).ok();
    if let Ok(stripped) = Uri::from_parts(parts) {
        *uri = stripped;
    }
}

/// Fills what the access token did not say from the ID token of the same subject.
fn complete_from_id_token(identity: &mut crate::identity::Identity, claims: &crate::oidc::Claims) {
    use crate::identity::{email_verified, text_claim};
    if text_claim(claims, "sub").as_deref() != Some(identity.user.as_str()) {
        return;
    }
    if identity.email.is_none() {
        identity.email = text_claim(claims, "email");
        identity.email_verified = email_verified(claims);
    }
    if identity.preferred_username.is_none() {
        identity.preferred_username = text_claim(claims, "preferred_username");
    }
}

/// RFC 6750 §2.1 `b64token`: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
fn is_b64token(s: &str) -> bool {
    let body = s.trim_end_matches('=');
    !body.is_empty() && body.bytes().all(|b| B64TOKEN_BYTE[usize::from(b)])
}

/// The bytes a `b64token` body may hold, by value. Every bearer request checks its whole token
/// (~700 bytes for a typical JWT): one load a byte instead of a chain of range checks, which
/// was 5 % of the user time of the hot-token path (`perf`).
static B64TOKEN_BYTE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b: u8 = 0;
    loop {
        table[b as usize] =
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/');
        if b == u8::MAX {
            break table;
        }
        b += 1;
    }
};

/// RFC 7617: `user-id ":" password`, base64; a user id never contains `:`.
fn decode_basic(b64: &str) -> Option<(String, Secret<String>)> {
    let bytes = STANDARD.decode(b64).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (user, password) = text.split_once(':')?;
    if user.is_empty() || user.chars().any(char::is_control) {
        return None;
    }
    Some((user.to_owned(), Secret::new(password.to_owned())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_b64token_table_is_exactly_the_rfc_6750_alphabet() {
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/";
        for b in 0..=u8::MAX {
            assert_eq!(
                B64TOKEN_BYTE[usize::from(b)],
                alphabet.contains(&b),
                "byte {b:#04x}"
            );
        }
    }

    #[test]
    fn b64token_syntax() {
        assert!(is_b64token("abc.DEF-_~+/=="));
        assert!(!is_b64token(""));
        assert!(!is_b64token("=="));
        assert!(!is_b64token("a b"));
        assert!(!is_b64token("a,b"));
        assert!(!is_b64token("a\"b"));
    }

    #[test]
    fn query_tokens_are_cut_out_of_the_target() {
        let strip = |target: &str| {
            let mut uri: Uri = target.parse().unwrap();
            strip_query_token(&mut uri, "access_token");
            uri.to_string()
        };
        assert_eq!(strip("/a?access_token=t"), "/a");
        assert_eq!(strip("/a?x=1&access_token=t&y=%20"), "/a?x=1&y=%20");
        assert_eq!(strip("/a?access%5Ftoken=t&access_token&z"), "/a?z");
        assert_eq!(strip("/a?access_tokens=t"), "/a?access_tokens=t");
        assert_eq!(strip("/a"), "/a");
    }

    #[test]
    fn basic_credentials() {
        let (u, p) = decode_basic(&STANDARD.encode("alice:pa:ss")).unwrap();
        assert_eq!(u, "alice");
        assert_eq!(p.expose(), "pa:ss");
        assert!(decode_basic(&STANDARD.encode(":x")).is_none());
        assert!(decode_basic(&STANDARD.encode("nocolon")).is_none());
        assert!(decode_basic("!!!").is_none());
    }
}
