//! Per-request state, passed explicitly through every step (rule 7): request id, peer, the
//! connection it came on, the normalised path, the upstream chosen, and timings for the access
//! log. Steps write what they learn here; nothing is stashed in request extensions.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderValue, Method};

/// What the accept step knows about the connection a request arrived on.
#[derive(Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The request arrived over TLS terminated by the gateway.
    pub tls: bool,
    /// Lives as long as the connection: it is counted on its worker until the last clone is
    /// gone, and a websocket tunnel, which outlives hyper's connection, keeps one.
    pub lifetime: Arc<dyn Send + Sync>,
}

impl std::fmt::Debug for ConnInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnInfo")
            .field("peer", &self.peer)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
pub struct RequestCtx {
    pub request_id: HeaderValue,
    pub conn: ConnInfo,
    pub method: Method,
    /// The path after normalisation, the one routing and the upstream both see. Empty until
    /// the route step has run (or when it refused the request).
    pub path: String,
    /// Name of the upstream chosen, or the built-in endpoint answering.
    pub route: &'static str,
    /// Shared with the upstream's configuration: no copy per request.
    pub upstream: Option<Arc<str>>,
    /// The authenticated user (subject), once known.
    pub user: Option<String>,
    pub started: Instant,
    pub upstream_latency: Option<Duration>,
}

impl RequestCtx {
    pub fn new(method: &Method, headers: &HeaderMap, conn: ConnInfo) -> Self {
        Self {
            request_id: request_id(headers),
            conn,
            method: method.clone(),
            path: String::new(),
            route: "-",
            upstream: None,
            user: None,
            started: Instant::now(),
            upstream_latency: None,
        }
    }
}

/// Keeps a caller's `X-Request-Id` when it is a plausible id (so one id follows a request
/// through several proxies), otherwise makes a new random one. Anything else is replaced, so
/// the id is always safe to log and to echo in a header.
fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(given) = headers.get("x-request-id") {
        let bytes = given.as_bytes();
        let plausible = (1..=128).contains(&bytes.len())
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
        if plausible {
            return given.clone();
        }
    }
    new_request_id()
}

fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let n: u128 = rand::random();
    let mut buf = [0u8; 32];
    for (i, slot) in buf.iter_mut().enumerate() {
        // Four bits a character, most significant first.
        let nibble = (n >> (124 - 4 * i)) & 0xf;
        *slot = HEX[nibble as usize];
    }
    // Only hex digits: always a valid header value.
    HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_request_ids_are_32_hex_chars_and_distinct() {
        let a = new_request_id();
        let b = new_request_id();
        assert_eq!(a.len(), 32);
        assert!(a.to_str().unwrap().bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn a_plausible_incoming_request_id_is_kept_and_a_hostile_one_replaced() {
        let mut h = HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        h.insert("x-request-id", HeaderValue::from_static("<script>"));
        assert_ne!(request_id(&h), "<script>");
        h.insert(
            "x-request-id",
            HeaderValue::from_str(&"a".repeat(200)).unwrap(),
        );
        assert_eq!(request_id(&h).len(), 32);
    }
}
