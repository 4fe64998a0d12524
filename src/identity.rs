//! Identity headers: the step just before forwarding. Holds the [`Identity`] the authenticate
//! step established and writes it into the headers the app reads (`X-Forwarded-User`, `-Email`,
//! `-Preferred-Username`, `-Groups`). Stripping whatever the client sent under those names
//! happens earlier, in the proxy's header rewriting, on every route; this step only sets.

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::config::Secret;

/// Who is calling, as the gateway established it.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    /// The subject (`sub`); `X-Forwarded-User`.
    pub user: String,
    pub email: Option<String>,
    pub email_verified: bool,
    pub preferred_username: Option<String>,
    pub groups: Vec<String>,
    /// Claims kept for route policies (`claims = { … }`).
    pub claims: serde_json::Map<String, serde_json::Value>,
    pub access_token: Option<Secret<String>>,
}

pub const X_FORWARDED_USER: HeaderName = HeaderName::from_static("x-forwarded-user");
pub const X_FORWARDED_EMAIL: HeaderName = HeaderName::from_static("x-forwarded-email");
pub const X_FORWARDED_PREFERRED_USERNAME: HeaderName =
    HeaderName::from_static("x-forwarded-preferred-username");
pub const X_FORWARDED_GROUPS: HeaderName = HeaderName::from_static("x-forwarded-groups");

/// Sets the identity headers. A value that cannot be a safe header value (CR, LF, NUL or other
/// control characters, rule 31) is left out rather than forwarded; each group is
/// percent-encoded where it contains `,` or `%`, so `"x,admin"` arrives as one group `x%2Cadmin`
/// and can never add `admin`.
pub fn set_headers(headers: &mut HeaderMap, identity: &Identity) {
    set(headers, X_FORWARDED_USER, &identity.user);
    if let Some(email) = &identity.email {
        set(headers, X_FORWARDED_EMAIL, email);
    }
    if let Some(name) = &identity.preferred_username {
        set(headers, X_FORWARDED_PREFERRED_USERNAME, name);
    }
    if !identity.groups.is_empty() {
        let joined = identity
            .groups
            .iter()
            .filter(|g| is_safe(g))
            .map(|g| g.replace('%', "%25").replace(',', "%2C"))
            .collect::<Vec<_>>()
            .join(",");
        set(headers, X_FORWARDED_GROUPS, &joined);
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
        set_headers(&mut h, &alice());
        assert_eq!(h[X_FORWARDED_GROUPS], "staff,x%2Cadmin,100%25");
        let groups: Vec<&str> = h[X_FORWARDED_GROUPS].to_str().unwrap().split(',').collect();
        assert!(!groups.contains(&"admin"));
    }

    #[test]
    fn header_injection_through_claims_is_left_out() {
        let mut id = alice();
        id.email = Some("alice@example.com\r\nX-Admin: yes".into());
        id.groups = vec!["ok".into(), "bad\ngroup".into()];
        id.preferred_username = Some("nul\0name".into());
        let mut h = HeaderMap::new();
        set_headers(&mut h, &id);
        assert!(!h.contains_key(X_FORWARDED_EMAIL));
        assert!(!h.contains_key(X_FORWARDED_PREFERRED_USERNAME));
        assert_eq!(h[X_FORWARDED_GROUPS], "ok");
        assert_eq!(h[X_FORWARDED_USER], "alice");
    }
}
