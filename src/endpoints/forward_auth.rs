//! `/oauth2/auth`, forward-auth mode: a proxy in front (nginx `auth_request`, Traefik
//! ForwardAuth, Envoy ext_authz over HTTP) asks whether a request may pass, and the gateway
//! answers 202 with `X-Auth-Request-*` identity headers, or 401 / 403 — never a body to proxy.
//!
//! The request being asked about is described by `X-Forwarded-Uri` (or `X-Original-URI`),
//! `X-Forwarded-Method` and `X-Forwarded-Host`, or — Envoy's ext_authz HTTP service, which
//! sends the original method and appends the original path to its `path_prefix` — by the
//! check's own method and the path below `/oauth2/auth/`. Either is believed only from
//! `[server] trusted_proxies` (rule 27); a repeated header is refused (rule 35). Its path is
//! normalised like any request's (rule 21) before a route policy is looked up. The gateway's own steps (authenticate,
//! authorize) run in `gateway.rs`; this module reads the description and shapes the answers.

use http::header::WWW_AUTHENTICATE;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};

use crate::body::Body;
use crate::config::HeadersConfig;
use crate::identity::{self, Identity};
use crate::router::{host_name, normalize_path, request_host};

const X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
const X_ORIGINAL_URI: HeaderName = HeaderName::from_static("x-original-uri");
const X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The request a trusted proxy asks about.
#[derive(Debug)]
pub struct Original {
    pub method: Method,
    pub host: String,
    /// Normalised, as policies see it.
    pub path: String,
    /// As sent (path and query), for a token in the query when that is configured.
    pub uri: Uri,
}

/// The original request, `None` when the caller is not a trusted proxy or names none (then
/// the default policy applies). `below` is the (normalised) path under `/oauth2/auth/` of an
/// Envoy-style check, if it is one. `Err` names why the description is unusable.
pub fn original<B>(
    req: &Request<B>,
    trusted: bool,
    below: Option<&str>,
) -> Result<Option<Original>, &'static str> {
    if !trusted {
        return Ok(None);
    }
    let headers = req.headers();
    let named = match (
        one(headers, &X_FORWARDED_URI)?,
        one(headers, &X_ORIGINAL_URI)?,
    ) {
        (Some(u), _) | (None, Some(u)) => Some(u.to_owned()),
        (None, None) => None,
    };
    // Envoy's form: the check is the original request, its path after the prefix.
    let envoy = named.is_none() && below.is_some();
    let uri = match (named, below) {
        (Some(u), _) => u,
        (None, Some(path)) => match req.uri().query() {
            Some(q) => format!("{path}?{q}"),
            None => path.to_owned(),
        },
        (None, None) => return Ok(None),
    };
    let uri: Uri = uri
        .parse()
        .map_err(|_| "X-Forwarded-Uri is not a request target\n")?;
    if uri.scheme().is_some() || !uri.path().starts_with('/') {
        return Err("X-Forwarded-Uri must be a path\n");
    }
    let path = normalize_path(&uri)
        .map_err(|_| "X-Forwarded-Uri has an ambiguous path\n")?
        .into_owned();
    let method = match one(headers, &X_FORWARDED_METHOD)? {
        Some(m) => {
            Method::from_bytes(m.as_bytes()).map_err(|_| "X-Forwarded-Method is not a method\n")?
        }
        None if envoy => req.method().clone(),
        None => Method::GET,
    };
    let host = match one(headers, &X_FORWARDED_HOST)? {
        Some(h) => host_name(h),
        None => request_host(req.uri(), headers).map_err(|_| "missing Host\n")?,
    };
    Ok(Some(Original {
        method,
        host,
        path,
        uri,
    }))
}

/// The single value of `name`; two of them are refused, never "last one wins" (rule 35).
fn one<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Result<Option<&'a str>, &'static str> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (None, _) => Ok(None),
        (Some(_), Some(_)) => Err("a forwarded request header is repeated\n"),
        (Some(v), None) => v
            .to_str()
            .map(Some)
            .map_err(|_| "a forwarded request header is not text\n"),
    }
}

/// 202 with the identity (none on a public route) and any session cookie to refresh.
pub fn allowed(
    identity: Option<&Identity>,
    config: &HeadersConfig,
    set_cookies: Vec<HeaderValue>,
) -> Response<Body> {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::ACCEPTED;
    if let Some(id) = identity {
        identity::set_auth_request_headers(resp.headers_mut(), id, config);
    }
    for cookie in set_cookies {
        resp.headers_mut().append(http::header::SET_COOKIE, cookie);
    }
    resp
}

/// A refusal as a forward-auth answer: proxies act on 401 and 403 only (nginx treats anything
/// else as its own error), so other refusals become 401, keeping the challenge.
pub fn denied(resp: Response<Body>) -> Response<Body> {
    let status = resp.status();
    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    parts.status = StatusCode::UNAUTHORIZED;
    if !parts.headers.contains_key(WWW_AUTHENTICATE) {
        parts
            .headers
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    Response::from_parts(parts, body)
}
