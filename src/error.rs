//! Errors, mapped once. Every failure on the request path ends here as one HTTP answer; this is
//! the only `match` from error to status (house rule 2). A refused credential is not an error
//! and never comes through here: it is an outcome of the authenticate step.

use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};

use crate::body::Body;
use crate::context::RequestCtx;
use crate::proxy::ProxyError;
use crate::router::RejectReason;

/// Everything that can stop a request on its way through the gateway.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("request refused: {0}")]
    Rejected(#[from] RejectReason),
    #[error("no upstream serves this path")]
    NoRoute,
    #[error(transparent)]
    Proxy(#[from] ProxyError),
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Rejected(RejectReason::HeadersTooLarge) => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            Self::Rejected(_) => StatusCode::BAD_REQUEST,
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::Proxy(ProxyError::Timeout { .. }) => StatusCode::GATEWAY_TIMEOUT,
            Self::Proxy(ProxyError::BodyStalled) => StatusCode::REQUEST_TIMEOUT,
            Self::Proxy(_) => StatusCode::BAD_GATEWAY,
        }
    }
}

/// The answer to a failed request: the status, and a short text naming the request id so a
/// person can quote it to an operator. Upstream failures are logged here with their cause,
/// which the client never sees.
pub fn response(err: &GatewayError, ctx: &RequestCtx) -> Response<Body> {
    let status = err.status();
    if let GatewayError::Proxy(ProxyError::BodyStalled) = err {
        // The client's doing, not the upstream's.
        tracing::info!(request_id = ?ctx.request_id, "request body stopped arriving; answered 408");
    } else if let GatewayError::Proxy(proxy) = err {
        tracing::warn!(
            request_id = ?ctx.request_id,
            error = %proxy,
            cause = proxy_cause(proxy).as_deref().unwrap_or("-"),
            "upstream request failed"
        );
    }
    let reason = match err {
        GatewayError::Rejected(reason) => reason.to_string(),
        GatewayError::NoRoute => "no upstream serves this path".to_owned(),
        GatewayError::Proxy(ProxyError::Timeout { .. }) => {
            "the upstream did not answer in time".to_owned()
        }
        GatewayError::Proxy(ProxyError::BodyStalled) => {
            "the request body stopped arriving".to_owned()
        }
        GatewayError::Proxy(_) => "the upstream could not be reached".to_owned(),
    };
    let id = ctx.request_id.to_str().unwrap_or("-");
    let text = format!(
        "{} {}: {reason}\nrequest id: {id}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Error")
    );
    let mut resp = plain(status, "");
    *resp.body_mut() = Body::from(text);
    resp
}

fn proxy_cause(err: &ProxyError) -> Option<String> {
    let mut source = std::error::Error::source(err);
    let mut chain = Vec::new();
    while let Some(s) = source {
        chain.push(s.to_string());
        source = s.source();
    }
    (!chain.is_empty()).then(|| chain.join(": "))
}

/// A small `text/plain` answer from the gateway itself.
pub fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut resp = Response::new(Body::from_static(text));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn status(err: GatewayError) -> StatusCode {
        err.status()
    }

    #[test]
    fn every_error_maps_to_its_status() {
        assert_eq!(
            status(RejectReason::MissingHost.into()),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status(RejectReason::DuplicateHost.into()),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status(RejectReason::BadTarget.into()),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status(RejectReason::HeadersTooLarge.into()),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
        assert_eq!(status(GatewayError::NoRoute), StatusCode::NOT_FOUND);
        assert_eq!(
            status(
                ProxyError::Timeout {
                    upstream: "u".into(),
                    timeout: Duration::from_secs(1)
                }
                .into()
            ),
            StatusCode::GATEWAY_TIMEOUT
        );
        assert_eq!(
            status(ProxyError::BodyStalled.into()),
            StatusCode::REQUEST_TIMEOUT
        );
        let bad_uri = http::Uri::builder().scheme("\0").build().unwrap_err();
        assert_eq!(
            status(ProxyError::BadUri(bad_uri).into()),
            StatusCode::BAD_GATEWAY
        );
    }
}
