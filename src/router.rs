//! Route: the second step. Refuses requests whose framing or target is ambiguous (rules 19, 20,
//! 26, 35), normalises the path once (rule 21), and decides who answers: a built-in endpoint
//! (`/healthz`, `/readyz`, everything under the proxy prefix) or one upstream, chosen by host
//! and path prefix. Every later step sees only the normalised path, and the upstream receives
//! exactly that path, so what a policy evaluated is what the app serves.

use std::borrow::Cow;

use http::header::HOST;
use http::{HeaderMap, Uri};

use crate::config::Config;

/// Why a request was refused before routing. Each is a 400 (or 431) answered by `error.rs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RejectReason {
    #[error("more than one Host")]
    DuplicateHost,
    #[error("missing Host")]
    MissingHost,
    #[error("request headers too large")]
    HeadersTooLarge,
    #[error("encoded separator, control character or fragment in the request target")]
    BadTarget,
    #[error("malformed percent-encoding in the path")]
    BadEncoding,
}

/// Who answers a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Health,
    Ready,
    /// A path under the proxy prefix; the endpoint step decides which (or 404).
    Builtin,
    Upstream(usize),
    NoRoute,
}

/// One `[[upstreams]]` entry as the router sees it, prepared at start.
#[derive(Debug)]
struct Rule {
    host: Option<String>,
    prefix: String,
    index: usize,
}

#[derive(Debug)]
pub struct Router {
    rules: Vec<Rule>,
    proxy_prefix: String,
    max_header_bytes: usize,
}

impl Router {
    pub fn new(config: &Config) -> Self {
        let mut rules: Vec<Rule> = config
            .upstreams
            .iter()
            .enumerate()
            .map(|(index, u)| Rule {
                host: u.host.clone(),
                prefix: u.path_prefix.clone(),
                index,
            })
            .collect();
        // Most specific first: a host-bound rule beats an any-host one, then longer prefixes
        // beat shorter ones; ties keep file order.
        rules.sort_by_key(|r| (r.host.is_none(), std::cmp::Reverse(r.prefix.len())));
        Self {
            rules,
            proxy_prefix: config.server.proxy_prefix.clone(),
            max_header_bytes: config.server.max_header_bytes,
        }
    }

    /// Refuses what could be read two ways by the gateway and the app behind it. hyper already
    /// rejects invalid header bytes, differing duplicate lengths (equal ones it folds into one) and
    /// non-chunked
    /// `Transfer-Encoding`, and resolves `Content-Length` + `Transfer-Encoding` by RFC 9112
    /// §6.1 (chunked wins, the length is dropped, the connection closes after the answer);
    /// these are the cases it accepts but a proxy must not pass on.
    pub fn check_framing(&self, uri: &Uri, headers: &HeaderMap) -> Result<(), RejectReason> {
        if headers.get_all(HOST).iter().nth(1).is_some() {
            return Err(RejectReason::DuplicateHost);
        }
        if header_bytes(uri, headers) > self.max_header_bytes {
            return Err(RejectReason::HeadersTooLarge);
        }
        Ok(())
    }

    /// Normalises the path and picks the target. `host` is the request's host, lowercased,
    /// without port.
    pub fn route(&self, uri: &Uri, host: &str) -> Result<(Target, String), RejectReason> {
        let path = normalize_path(uri)?.into_owned();
        let target = self.target(&path, host);
        Ok((target, path))
    }

    fn target(&self, path: &str, host: &str) -> Target {
        // Exact paths only (rule 28): `/healthz/x` is an ordinary request.
        match path {
            "/healthz" => return Target::Health,
            "/readyz" => return Target::Ready,
            _ => {}
        }
        if under_prefix(path, &self.proxy_prefix) {
            return Target::Builtin;
        }
        self.rules
            .iter()
            .find(|r| r.host.as_deref().is_none_or(|h| h == host) && under_prefix(path, &r.prefix))
            .map_or(Target::NoRoute, |r| Target::Upstream(r.index))
    }
}

/// `path` is `prefix` itself or lies below it on a segment boundary: `/api` covers `/api` and
/// `/api/x` but not `/apix`.
pub(crate) fn under_prefix(path: &str, prefix: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || prefix.ends_with('/') || rest.starts_with('/'),
        None => false,
    }
}

fn header_bytes(uri: &Uri, headers: &HeaderMap) -> usize {
    let target = uri.path_and_query().map_or(1, |p| p.as_str().len());
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum::<usize>()
        + target
}

/// The request's host, lowercased and without port: `Host` on HTTP/1.1, the `:authority` on
/// HTTP/2.
pub fn request_host(uri: &Uri, headers: &HeaderMap) -> Result<String, RejectReason> {
    let raw = match headers.get(HOST) {
        Some(value) => value.to_str().map_err(|_| RejectReason::MissingHost)?,
        None => uri
            .authority()
            .map(|a| a.as_str())
            .ok_or(RejectReason::MissingHost)?,
    };
    Ok(host_name(raw))
}

/// The host of a `Host`-style value (`name[:port]`, `[v6][:port]`), lowercased, without port.
pub fn host_name(raw: &str) -> String {
    let without_port = match raw.rfind(':') {
        // An IPv6 literal keeps its colons inside brackets.
        Some(i) if !raw[i..].contains(']') => &raw[..i],
        _ => raw,
    };
    without_port.to_ascii_lowercase()
}

/// Rule 21 and 26 in one pass over the raw target:
/// - refused: `%2F`/`%5C` (an encoded separator means two readings of the path), a raw `\`,
///   NUL/CR/LF encoded anywhere in the target, and malformed `%` sequences;
/// - percent-encoded unreserved characters (RFC 3986 §2.3) are decoded, so `%2e%2e` is `..`;
/// - dot-segments are resolved (RFC 3986 §5.2.4) and duplicate slashes collapsed.
///
/// Other encodings are kept as sent. The query is not part of the path and is never matched.
pub fn normalize_path(uri: &Uri) -> Result<Cow<'_, str>, RejectReason> {
    let path = uri.path();
    if let Some(query) = uri.query()
        && has_encoded_control(query.as_bytes())
    {
        return Err(RejectReason::BadTarget);
    }
    let bytes = path.as_bytes();
    if !bytes.starts_with(b"/") {
        // `*` (OPTIONS) and authority-form targets are not proxied.
        return Err(RejectReason::BadTarget);
    }
    if bytes
        .iter()
        .any(|&b| b == b'\\' || b == b'#' || b < 0x20 || b == 0x7f)
    {
        return Err(RejectReason::BadTarget);
    }
    let simple = !bytes.contains(&b'%') && !path.contains("//") && !has_dot_segment(path);
    if simple {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(bytes)?;
    Ok(Cow::Owned(remove_dot_segments(&decoded)))
}

fn has_encoded_control(bytes: &[u8]) -> bool {
    bytes.windows(3).any(|w| {
        w[0] == b'%' && w[1] == b'0' && matches!(w[2].to_ascii_uppercase(), b'0' | b'A' | b'D')
    })
}

fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|s| s == "." || s == "..")
}

fn decode_unreserved(bytes: &[u8]) -> Result<String, RejectReason> {
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'%' {
            out.push(char::from(b));
            i += 1;
            continue;
        }
        let (Some(h), Some(l)) = (
            bytes.get(i + 1).and_then(|c| hex(*c)),
            bytes.get(i + 2).and_then(|c| hex(*c)),
        ) else {
            return Err(RejectReason::BadEncoding);
        };
        let value = h * 16 + l;
        match value {
            b'/' | b'\\' | 0 | b'\r' | b'\n' => return Err(RejectReason::BadTarget),
            v if v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~') => {
                out.push(char::from(v));
            }
            v => {
                out.push('%');
                out.push(char::from(HEX_UPPER[usize::from(v >> 4)]));
                out.push(char::from(HEX_UPPER[usize::from(v & 0xf)]));
            }
        }
        i += 3;
    }
    Ok(out)
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

fn hex(c: u8) -> Option<u8> {
    char::from(c)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    let mut trailing_slash = false;
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "" => trailing_slash = i == last,
            "." => trailing_slash = i == last,
            ".." => {
                out.pop();
                trailing_slash = i == last;
            }
            s => {
                out.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut result = String::with_capacity(path.len());
    for seg in &out {
        result.push('/');
        result.push_str(seg);
    }
    if trailing_slash || result.is_empty() {
        result.push('/');
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(target: &str) -> Result<String, RejectReason> {
        let uri: Uri = target.parse().unwrap();
        normalize_path(&uri).map(Cow::into_owned)
    }

    #[test]
    fn dot_segments_and_duplicate_slashes_are_resolved() {
        assert_eq!(norm("/public/../admin").unwrap(), "/admin");
        assert_eq!(norm("/a/./b//c/").unwrap(), "/a/b/c/");
        assert_eq!(norm("/../../etc").unwrap(), "/etc");
        assert_eq!(norm("/a/b/..").unwrap(), "/a/");
        assert_eq!(norm("//").unwrap(), "/");
        assert_eq!(norm("/plain/path?x=1").unwrap(), "/plain/path");
    }

    #[test]
    fn encoded_dots_and_unreserved_characters_are_decoded_before_matching() {
        assert_eq!(norm("/public/%2e%2e/admin").unwrap(), "/admin");
        assert_eq!(norm("/public/%2E%2E/admin").unwrap(), "/admin");
        assert_eq!(norm("/%61dmin").unwrap(), "/admin");
        // Reserved characters stay encoded, with upper-case hex.
        assert_eq!(norm("/a%20b%3f").unwrap(), "/a%20b%3F");
    }

    #[test]
    fn encoded_separators_and_controls_are_refused() {
        for bad in [
            "/public%2F..%2Fadmin",
            "/public%2f..%2fadmin",
            "/a%5Cb",
            "/a%00b",
            "/a%0d%0aX-Injected:1",
            "/a?x=%0d%0a",
            "/a%zz",
            "/a%2",
        ] {
            assert!(norm(bad).is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn prefixes_match_on_segment_boundaries() {
        assert!(under_prefix("/api", "/api"));
        assert!(under_prefix("/api/x", "/api"));
        assert!(!under_prefix("/apix", "/api"));
        assert!(under_prefix("/apix", "/"));
        assert!(under_prefix("/static/x", "/static/"));
        assert!(!under_prefix("/static", "/static/"));
    }
}
