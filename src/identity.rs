//! Identity headers: the step just before forwarding. Holds the [`Identity`] the authenticate
//! step established and writes it into the headers the app reads (`X-Forwarded-User`, `-Email`,
//! `-Preferred-Username`, `-Groups`). Stripping whatever the client sent under those names
//! happens earlier, in the proxy's header rewriting, on every route; this step only sets.

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::config::{HeadersConfig, IdentityNames, Secret};

/// Who is calling, as the gateway established it.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    /// The subject (`sub`); `X-Forwarded-User`.
    pub user: String,
    pub email: Option<String>,
    pub email_verified: bool,
    pub preferred_username: Option<String>,
    pub groups: Vec<String>,
    /// The OAuth client a bearer token was issued to (`client_id`, else `azp`);
    /// `X-Forwarded-Client-Id`. `None` for browser sessions.
    pub client_id: Option<String>,
    /// The token's scopes (`scope`, space-separated, or `scp`), for `scopes = [...]` policies.
    pub scopes: Vec<String>,
    /// Claims kept for route policies (`claims = { … }`).
    /// Shared: a verified token's identity is cloned out of the cache on every request.
    pub claims: std::sync::Arc<serde_json::Map<String, serde_json::Value>>,
    pub access_token: Option<Secret<String>>,
}

/// A string claim worth keeping: `None` when it is absent, empty or not a string. Sessions,
/// bearer tokens and introspection answers all read identity claims through this.
pub fn text_claim(
    claims: &serde_json::Map<String, serde_json::Value>,
    name: &str,
) -> Option<String> {
    claims
        .get(name)
        .and_then(serde_json::Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// `email_verified`: the boolean `true`, or the string `"true"` that some providers (AWS
/// Cognito among them) send; anything else is not verified.
pub fn email_verified(claims: &serde_json::Map<String, serde_json::Value>) -> bool {
    match claims.get("email_verified") {
        Some(serde_json::Value::Bool(b)) => *b,
        Some(serde_json::Value::String(s)) => s == "true",
        _ => false,
    }
}

/// The provider says outright that the address is not verified (`false`, or `"false"`), as
/// opposed to saying nothing.
pub fn email_unverified(claims: &serde_json::Map<String, serde_json::Value>) -> bool {
    match claims.get("email_verified") {
        Some(serde_json::Value::Bool(b)) => !*b,
        Some(serde_json::Value::String(s)) => s == "false",
        _ => false,
    }
}

/// Sets the identity headers under the configured names. A value that cannot be a safe header
/// value (CR, LF, NUL or other control characters, rule 31) is left out rather than forwarded;
/// each group is percent-encoded where it contains `,` or `%`, so `"x,admin"` arrives as one
/// group `x%2Cadmin` and can never add `admin`. Tokens go only where the configuration asks.
pub fn set_headers(headers: &mut HeaderMap, identity: &Identity, config: &HeadersConfig) {
    write(headers, identity, &config.names, config.pass_access_token);
    if let Some(token) = &identity.access_token
        && config.pass_authorization_header
    {
        set(
            headers,
            http::header::AUTHORIZATION,
            &format!("Bearer {}", token.expose()),
        );
    }
}

/// The forward-auth answer's headers (oauth2-proxy's names, which nginx configurations already
/// read with `auth_request_set`): `X-Auth-Request-User`, `-Email`, `-Preferred-Username`,
/// `-Groups`, `-Client-Id`, and `-Access-Token` when `pass_access_token` is on.
pub fn set_auth_request_headers(
    headers: &mut HeaderMap,
    identity: &Identity,
    config: &HeadersConfig,
) {
    let names = IdentityNames {
        user: HeaderName::from_static("x-auth-request-user"),
        email: HeaderName::from_static("x-auth-request-email"),
        preferred_username: HeaderName::from_static("x-auth-request-preferred-username"),
        groups: HeaderName::from_static("x-auth-request-groups"),
        access_token: HeaderName::from_static("x-auth-request-access-token"),
        client_id: HeaderName::from_static("x-auth-request-client-id"),
    };
    write(headers, identity, &names, config.pass_access_token);
}

fn write(headers: &mut HeaderMap, identity: &Identity, names: &IdentityNames, token: bool) {
    set(headers, names.user.clone(), &identity.user);
    if let Some(email) = &identity.email {
        set(headers, names.email.clone(), email);
    }
    if let Some(name) = &identity.preferred_username {
        set(headers, names.preferred_username.clone(), name);
    }
    if !identity.groups.is_empty() {
        // One string, built in place: no intermediate string per group.
        let mut joined = String::new();
        for group in identity.groups.iter().filter(|g| is_safe(g)) {
            if !joined.is_empty() {
                joined.push(',');
            }
            for c in group.chars() {
                match c {
                    '%' => joined.push_str("%25"),
                    ',' => joined.push_str("%2C"),
                    c => joined.push(c),
                }
            }
        }
        set(headers, names.groups.clone(), &joined);
    }
    if let Some(client_id) = &identity.client_id {
        set(headers, names.client_id.clone(), client_id);
    }
    if token && let Some(t) = &identity.access_token {
        set(headers, names.access_token.clone(), t.expose());
    }
}

fn set(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    if !is_safe(value) {
        tracing::warn!(header = %name, "identity value with control characters left out");
        return;
    }
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}

fn is_safe(value: &str) -> bool {
    !value.is_empty() && !value.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> HeadersConfig {
        crate::config::load_str("[[upstreams]]\nurl = \"http://127.0.0.1:1\"\n", None, &[])
            .unwrap()
            .headers
    }

    fn alice() -> Identity {
        Identity {
            user: "alice".into(),
            email: Some("alice@example.com".into()),
            email_verified: true,
            preferred_username: Some("alice".into()),
            groups: vec!["staff".into(), "x,admin".into(), "100%".into()],
            ..Identity::default()
        }
    }

    #[test]
    fn group_lists_cannot_smuggle_an_extra_group() {
        let mut h = HeaderMap::new();
        set_headers(&mut h, &alice(), &config());
        assert_eq!(h["x-forwarded-groups"], "staff,x%2Cadmin,100%25");
        let groups: Vec<&str> = h["x-forwarded-groups"]
            .to_str()
            .unwrap()
            .split(',')
            .collect();
        assert!(!groups.contains(&"admin"));
    }

    #[test]
    fn header_injection_through_claims_is_left_out() {
        let mut id = alice();
        id.email = Some("alice@example.com\r\nX-Admin: yes".into());
        id.groups = vec!["ok".into(), "bad\ngroup".into()];
        id.preferred_username = Some("nul\0name".into());
        let mut h = HeaderMap::new();
        set_headers(&mut h, &id, &config());
        assert!(!h.contains_key("x-forwarded-email"));
        assert!(!h.contains_key("x-forwarded-preferred-username"));
        assert_eq!(h["x-forwarded-groups"], "ok");
        assert_eq!(h["x-forwarded-user"], "alice");
    }

    #[test]
    fn tokens_reach_the_app_only_when_asked_and_under_the_configured_names() {
        let mut id = alice();
        id.access_token = Some(Secret::new("at-123".to_owned()));
        let mut h = HeaderMap::new();
        set_headers(&mut h, &id, &config());
        assert!(!h.contains_key("x-forwarded-access-token"));
        assert!(!h.contains_key("authorization"));

        let mut cfg = config();
        cfg.pass_access_token = true;
        cfg.pass_authorization_header = true;
        cfg.names.user = HeaderName::from_static("remote-user");
        let mut h = HeaderMap::new();
        h.insert(
            "authorization",
            HeaderValue::from_static("Basic Zm9vOmJhcg=="),
        );
        set_headers(&mut h, &id, &cfg);
        assert_eq!(h["x-forwarded-access-token"], "at-123");
        assert_eq!(h["authorization"], "Bearer at-123");
        assert_eq!(h["remote-user"], "alice");
        assert!(!h.contains_key("x-forwarded-user"));
    }
}
