//! Authenticate, the answers to callers who are not let through (RFC 6750 §3): the
//! `WWW-Authenticate` challenges and their JSON bodies. Descriptions name what is wrong, never
//! a value from the token or the key.

use http::header::{RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderValue, Response, StatusCode};
use serde_json::json;

use super::Refusal;
use crate::body::Body;
use crate::endpoints::pages;

/// The challenge for `realm` with the RFC 6750 attributes given.
fn challenge(
    realm: &str,
    error: Option<&str>,
    description: Option<&str>,
    scope: Option<&str>,
) -> HeaderValue {
    let mut text = format!("Bearer realm=\"{realm}\"");
    for (name, value) in [
        ("error", error),
        ("error_description", description),
        ("scope", scope),
    ] {
        if let Some(v) = value {
            // Values are our own constants and scope tokens (RFC 6749 §3.3 excludes `"` and
            // `\`); strip them anyway so a configuration can never break the header.
            let v: String = v
                .chars()
                .filter(|c| *c != '"' && *c != '\\' && !c.is_control())
                .collect();
            text.push_str(&format!(", {name}=\"{v}\""));
        }
    }
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("Bearer"))
}

fn basic_challenge(realm: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("Basic realm=\"{realm}\", charset=\"UTF-8\""))
        .unwrap_or_else(|_| HeaderValue::from_static("Basic"))
}

/// No credential on a route that needs one: 401 with a bare challenge (RFC 6750 §3.1: no
/// error code when the request had no authentication). `basic` adds a Basic challenge for
/// routes with the password bridge.
/// `login_url` tells a script where a person would sign in, when browsers can.
pub fn missing(realm: &str, basic: bool, login_url: Option<&str>) -> Response<Body> {
    let mut body =
        json!({"error": "unauthorized", "error_description": "authentication is required"});
    if let Some(url) = login_url {
        body["login_url"] = json!(url);
    }
    let mut resp = pages::json(StatusCode::UNAUTHORIZED, &body);
    let h = resp.headers_mut();
    h.insert(WWW_AUTHENTICATE, challenge(realm, None, None, None));
    if basic {
        h.append(WWW_AUTHENTICATE, basic_challenge(realm));
    }
    resp
}

/// A presented credential was refused.
pub fn refused(refusal: Refusal, realm: &str) -> Response<Body> {
    let (status, error, description, basic) = match refusal {
        Refusal::InvalidToken(r) => (
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            r.description,
            false,
        ),
        Refusal::InvalidRequest(why) => (StatusCode::BAD_REQUEST, "invalid_request", why, false),
        Refusal::BadCredentials => (
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
            "the user name or password was refused",
            true,
        ),
        Refusal::TooManyAttempts => (
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_attempts",
            "too many failed attempts; try again in a minute",
            true,
        ),
    };
    let mut resp = pages::json(
        status,
        &json!({"error": error, "error_description": description}),
    );
    let h = resp.headers_mut();
    if basic {
        h.insert(WWW_AUTHENTICATE, basic_challenge(realm));
        if status == StatusCode::TOO_MANY_REQUESTS {
            h.insert(RETRY_AFTER, HeaderValue::from_static("60"));
        }
    } else {
        h.insert(
            WWW_AUTHENTICATE,
            challenge(realm, Some(error), Some(description), None),
        );
    }
    resp
}

/// The caller is known but its token lacks `scopes` (RFC 6750 §3.1 `insufficient_scope`).
pub fn insufficient_scope(realm: &str, scopes: &[String]) -> Response<Body> {
    let scope = scopes.join(" ");
    let description = "the token lacks a scope this route requires";
    let mut resp = pages::json(
        StatusCode::FORBIDDEN,
        &json!({"error": "insufficient_scope", "error_description": description, "scope": scope}),
    );
    resp.headers_mut().insert(
        WWW_AUTHENTICATE,
        challenge(
            realm,
            Some("insufficient_scope"),
            Some(description),
            Some(&scope),
        ),
    );
    resp
}

/// Whether an answer is a 401 whose challenge says `error="invalid_token"`.
pub fn is_invalid_token<B>(resp: &Response<B>) -> bool {
    resp.status() == StatusCode::UNAUTHORIZED
        && resp
            .headers()
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.contains("invalid_token"))
}

/// A dependency of authentication could not be asked: 503, try again shortly (rule 36).
pub fn unavailable(what: &'static str, navigation: bool) -> Response<Body> {
    if let Some(suppressed) = outage_log_due(what) {
        tracing::warn!(
            dependency = what,
            suppressed,
            "authentication dependency unavailable; answering 503"
        );
    }
    // A person navigating gets a page to read, a program the JSON it can parse.
    if navigation {
        return unavailable_page(what);
    }
    let mut resp = pages::json(
        StatusCode::SERVICE_UNAVAILABLE,
        &json!({"error": "temporarily_unavailable", "error_description": "authentication is unavailable; try again shortly"}),
    );
    resp.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("5"));
    resp
}

/// The dependency named when the session store (Redis) cannot be asked.
pub const STORE: &str = "session store";

/// The 503 page for a person: the session store or the identity provider (`what`) cannot be
/// asked now; try again in a moment (`Retry-After`).
pub fn unavailable_page(what: &str) -> Response<Body> {
    let (title, text) = if what == STORE {
        (
            "Temporarily unavailable",
            "Sessions cannot be checked right now. Please try again in a moment.",
        )
    } else {
        (
            "Sign-in is unavailable",
            "The identity provider cannot be reached right now. Please try again in a moment.",
        )
    };
    let mut resp = pages::page(StatusCode::SERVICE_UNAVAILABLE, title, text, None);
    resp.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("5"));
    resp
}

/// One 503 line per dependency every [`OUTAGE_LOG_EVERY`], not one per request: during an
/// outage every request fails the same way. Answers how many answers went unlogged since the
/// last line, when a line is due.
fn outage_log_due(what: &'static str) -> Option<u64> {
    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::time::Instant;
    // Keyed by the dependency's fixed name: one entry per kind of dependency, never per error.
    static LAST: Mutex<Option<HashMap<&'static str, (Instant, u64)>>> = Mutex::new(None);
    let mut last = LAST
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let map = last.get_or_insert_with(HashMap::new);
    let now = Instant::now();
    match map.get_mut(what) {
        Some((at, suppressed)) if now.duration_since(*at) < OUTAGE_LOG_EVERY => {
            *suppressed += 1;
            None
        }
        Some((at, suppressed)) => {
            let n = *suppressed;
            *at = now;
            *suppressed = 0;
            Some(n)
        }
        None => {
            map.insert(what, (now, 0));
            Some(0)
        }
    }
}

const OUTAGE_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authn::Rejection;

    #[test]
    fn an_outage_is_logged_once_per_interval() {
        assert_eq!(outage_log_due("test-dependency"), Some(0));
        assert_eq!(outage_log_due("test-dependency"), None);
        assert_eq!(outage_log_due("test-dependency"), None);
        assert_eq!(outage_log_due("other-test-dependency"), Some(0));
    }

    #[test]
    fn challenges_follow_rfc_6750() {
        let r = missing("api", false, None);
        assert_eq!(r.status(), 401);
        assert_eq!(r.headers()[WWW_AUTHENTICATE], "Bearer realm=\"api\"");
        let r = refused(
            Refusal::InvalidToken(Rejection {
                reason: "expired",
                description: "the token has expired",
            }),
            "api",
        );
        assert_eq!(
            r.headers()[WWW_AUTHENTICATE],
            "Bearer realm=\"api\", error=\"invalid_token\", error_description=\"the token has expired\""
        );
        let r = insufficient_scope("api", &["a:read".into(), "b".into()]);
        assert_eq!(r.status(), 403);
        assert_eq!(
            r.headers()[WWW_AUTHENTICATE],
            "Bearer realm=\"api\", error=\"insufficient_scope\", error_description=\"the token lacks a scope this route requires\", scope=\"a:read b\""
        );
        let r = missing("api", true, None);
        let all: Vec<_> = r.headers().get_all(WWW_AUTHENTICATE).iter().collect();
        assert_eq!(all.len(), 2);
        assert_eq!(refused(Refusal::TooManyAttempts, "api").status(), 429);
    }
}
