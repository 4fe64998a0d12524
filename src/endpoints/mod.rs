//! Built-in endpoints: answered by the gateway itself, never forwarded and never authenticated.
//! `/healthz` (the process serves) and `/readyz` (it can do its job: the provider's metadata and
//! keys are loaded) are exact paths (rule 28); everything under the proxy prefix (default
//! `/oauth2/`) belongs to the gateway: the login flow in [`login`], and a 404 from the gateway for
//! any other path there, never a request to the app.

pub mod forward_auth;
pub mod login;
pub mod pages;
pub mod redirect;

use http::{Method, Response, StatusCode};

use crate::body::Body;
use crate::error::plain;

/// `/healthz` and `/readyz`.
pub fn health(method: &Method, ready: bool) -> Response<Body> {
    if let Some(resp) = get_only(method) {
        return resp;
    }
    let mut resp = if ready {
        plain(StatusCode::OK, "OK\n")
    } else {
        plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: waiting for the identity provider\n",
        )
    };
    resp.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    resp
}

pub fn not_found() -> Response<Body> {
    plain(StatusCode::NOT_FOUND, "no such gateway endpoint\n")
}

/// Built-in endpoints answer `GET` and `HEAD` only.
pub fn get_only(method: &Method) -> Option<Response<Body>> {
    if method == Method::GET || method == Method::HEAD {
        return None;
    }
    let mut resp = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    resp.headers_mut().insert(
        http::header::ALLOW,
        http::HeaderValue::from_static("GET, HEAD"),
    );
    Some(resp)
}
