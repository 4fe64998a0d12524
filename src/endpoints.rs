//! Built-in endpoints: answered by the gateway itself, never forwarded and never authenticated.
//! `/healthz` (the process serves) and `/readyz` (it can do its job) are exact paths (rule 28);
//! everything under the proxy prefix (default `/oauth2/`) belongs to the gateway, so a path there
//! that no endpoint serves is a 404 from the gateway, never a request to the app.

use http::{Method, Response, StatusCode};

use crate::body::Body;
use crate::error::plain;
use crate::router::Target;

pub fn answer(target: Target, method: &Method) -> Response<Body> {
    if method != Method::GET && method != Method::HEAD {
        let mut resp = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        resp.headers_mut().insert(
            http::header::ALLOW,
            http::HeaderValue::from_static("GET, HEAD"),
        );
        return resp;
    }
    let mut resp = match target {
        Target::Health | Target::Ready => plain(StatusCode::OK, "OK\n"),
        _ => plain(StatusCode::NOT_FOUND, "no such gateway endpoint\n"),
    };
    resp.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    resp
}
