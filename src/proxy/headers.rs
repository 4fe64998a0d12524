//! Header rewriting toward the upstream and back: the part of forwarding that decides what the
//! app may believe. Order matters and is fixed here, once:
//!
//! 1. hop-by-hop headers go first, including every name listed in `Connection` (RFC 9110
//!    §7.6.1), so a client can never use `Connection` to remove a header the gateway adds
//!    afterwards (rule 25);
//! 2. every identity header name is removed in any case, number of copies, and spelling with
//!    `-`, `_` or `.` (rules 17, 24); names with `_` are dropped unless allowed;
//! 3. `X-Forwarded-*` and friends are replaced for untrusted peers and extended for trusted
//!    proxies (rule 27);
//! 4. the gateway's own headers (`X-Forwarded-For/-Proto/-Host`, `X-Request-Id`, `Host`) are set.

use std::net::IpAddr;

use http::header::{CONNECTION, COOKIE, HOST, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;

use crate::config::Config;

/// Hop-by-hop headers of RFC 9110 §7.6.1 plus the obsolete ones proxies still see, and
/// `Upgrade` (hop-by-hop too; forwarding re-adds it for a protocol switch).
fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// Headers that describe the original request and are believed only from trusted proxies
/// (rule 27). From anyone else they are removed; the gateway sets its own `X-Forwarded-*`.
fn is_forwarding(name: &str) -> bool {
    matches!(
        name,
        "x-forwarded-for"
            | "x-forwarded-proto"
            | "x-forwarded-host"
            | "x-forwarded-port"
            | "x-forwarded-prefix"
            | "x-forwarded-uri"
            | "x-forwarded-method"
            | "x-original-uri"
            | "forwarded"
    )
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What the gateway knows about this request that the headers must carry.
#[derive(Debug)]
pub struct ForwardInfo<'a> {
    pub peer: IpAddr,
    pub tls: bool,
    pub request_id: &'a HeaderValue,
    /// The host the client asked for (`Host`, or `:authority` on HTTP/2).
    pub client_host: &'a HeaderValue,
    /// `Host` for the upstream: the client's (preserve_host) or the upstream's authority.
    pub upstream_host: &'a HeaderValue,
    /// The `Upgrade` value to keep for a protocol switch, when the client asked for one.
    pub upgrade: Option<HeaderValue>,
}

/// Built once from the configuration; applied to every request and response.
#[derive(Debug, Clone)]
pub struct HeaderRules {
    /// The identity header names lowercased without `-`, `_`, `.`: the form CGI-style apps
    /// fold to.
    identity_folded: Vec<Vec<u8>>,
    allow_underscores: bool,
    trusted_proxies: Vec<IpNet>,
}

impl HeaderRules {
    pub fn new(config: &Config) -> Self {
        let mut identity_folded: Vec<Vec<u8>> = config
            .headers
            .identity
            .iter()
            .map(|n| fold(n.as_str()))
            .collect();
        // With `pass_authorization_header` the gateway sets `Authorization` too, and an app
        // told so may take it as proof of a login: a client's own must not reach it, public
        // routes included (rule 17). A bearer caller's token is set again from its identity.
        if config.headers.pass_authorization_header {
            identity_folded.push(fold(http::header::AUTHORIZATION.as_str()));
        }
        Self {
            identity_folded,
            allow_underscores: config.headers.allow_underscores,
            trusted_proxies: config.server.trusted_proxies.clone(),
        }
    }

    pub fn is_trusted(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.trusted_proxies.iter().any(|net| net.contains(&peer))
    }

    /// Rewrites a client's request headers for the upstream, in the order the module doc gives.
    ///
    /// Steps 1–3 are one pass over the names the request carries (a handful), deciding for each
    /// whether it goes, instead of one hash lookup per name the gateway might remove (~25).
    pub fn rewrite_request(&self, headers: &mut HeaderMap, info: &ForwardInfo<'_>) {
        let trusted = self.is_trusted(info.peer);
        remove_where(headers, true, |name| {
            is_hop_by_hop(name)
                || self.is_identity_spelling(name)
                || (!trusted && is_forwarding(name))
        });
        let prior_for = if trusted {
            headers.get(&X_FORWARDED_FOR).cloned()
        } else {
            None
        };
        // The peer address is formatted on the stack (an IPv6 address is at most 45 bytes):
        // the common untrusted case then costs one allocation, the header value's own.
        let mut buf = [0u8; 64];
        let peer = format_ip(info.peer.to_canonical(), &mut buf);
        let value = match prior_for.as_ref().and_then(|v| v.to_str().ok()) {
            Some(prior) if !prior.is_empty() => {
                let mut xff = Vec::with_capacity(prior.len() + 2 + peer.len());
                xff.extend_from_slice(prior.as_bytes());
                xff.extend_from_slice(b", ");
                xff.extend_from_slice(peer);
                HeaderValue::from_bytes(&xff)
            }
            _ => HeaderValue::from_bytes(peer),
        };
        if let Ok(value) = value {
            headers.insert(X_FORWARDED_FOR, value);
        }
        if !(trusted && headers.contains_key(&X_FORWARDED_PROTO)) {
            let proto = if info.tls { "https" } else { "http" };
            headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
        }
        if !(trusted && headers.contains_key(&X_FORWARDED_HOST)) {
            headers.insert(X_FORWARDED_HOST, info.client_host.clone());
        }
        headers.insert(X_REQUEST_ID, info.request_id.clone());
        headers.insert(HOST, info.upstream_host.clone());
        if let Some(upgrade) = &info.upgrade {
            headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(UPGRADE, upgrade.clone());
        }
    }

    /// Removes every copy of every identity header, whatever its case or separator spelling,
    /// and every `_` name unless allowed: apps behind CGI, WSGI or PHP read `X_Forwarded_User`
    /// and `X.Forwarded.User` as `X-Forwarded-User`.
    pub fn remove_identity(&self, headers: &mut HeaderMap) {
        remove_where(headers, false, |name| self.is_identity_spelling(name));
    }

    /// `name` (lowercase, as `HeaderName` keeps it) is a configured identity header in some
    /// spelling, or a `_` name that is not allowed. The folded comparison also matches each
    /// configured name exactly.
    fn is_identity_spelling(&self, name: &str) -> bool {
        (!self.allow_underscores && name.contains('_'))
            || self.identity_folded.iter().any(|f| folded_eq(name, f))
    }
}

/// RFC 9113 §8.2.3: an HTTP/2 client may split its cookies over several `cookie` fields (browsers
/// do, for compression), and a proxy forwarding to HTTP/1.1 must join them with `"; "`: an app
/// reading only the first line (Rack, gunicorn) would lose the others. For HTTP/2 and later
/// clients only: an HTTP/1.1 client sends one field (RFC 6265 §5.4), and its requests pay for
/// no lookup.
pub fn join_cookies(headers: &mut HeaderMap) {
    let mut fields = headers.get_all(COOKIE).iter();
    if fields.next().is_none() || fields.next().is_none() {
        return;
    }
    let mut joined = Vec::new();
    for field in &headers.get_all(COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(field.as_bytes());
    }
    // Joined from valid values with "; ": valid too.
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(COOKIE, value);
    }
}

/// Removes hop-by-hop headers from a request or response, including every header named in
/// `Connection`. `Upgrade` is hop-by-hop too; forwarding re-adds it for a protocol switch.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    remove_where(headers, true, is_hop_by_hop);
}

/// Removes every header whose (lowercase) name `doomed` picks, all copies, and with
/// `connection_named` also every header named in `Connection` (RFC 9110 §7.6.1: the sender
/// says it is hop-by-hop). One look at each name present; allocates only when something goes or
/// `Connection` names something beyond the usual `keep-alive` and `upgrade`.
fn remove_where(headers: &mut HeaderMap, connection_named: bool, doomed: impl Fn(&str) -> bool) {
    let listed: Vec<&str> = if connection_named {
        headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|token| {
                // Hop-by-hop, so gone anyway (both callers that list pass `is_hop_by_hop`).
                !token.is_empty()
                    && !["keep-alive", "upgrade"]
                        .iter()
                        .any(|usual| token.eq_ignore_ascii_case(usual))
            })
            .collect()
    } else {
        Vec::new()
    };
    let mut names: Vec<HeaderName> = Vec::new();
    for name in headers.keys() {
        let s = name.as_str();
        // Tokens are compared case-insensitively, as header names are.
        if doomed(s) || listed.iter().any(|token| token.eq_ignore_ascii_case(s)) {
            names.push(name.clone());
        }
    }
    for name in names {
        headers.remove(name);
    }
}

/// `ip` in its textual form, written into `buf`. IPv4 (nearly every peer) by hand: `Display`
/// goes through `core::fmt` and cost ~1000 instructions a request.
fn format_ip(ip: IpAddr, buf: &mut [u8; 64]) -> &[u8] {
    use std::io::Write;
    if let IpAddr::V4(v4) = ip {
        let mut len = 0;
        for (i, octet) in v4.octets().into_iter().enumerate() {
            if i > 0 {
                buf[len] = b'.';
                len += 1;
            }
            if octet >= 100 {
                buf[len] = b'0' + octet / 100;
                len += 1;
            }
            if octet >= 10 {
                buf[len] = b'0' + octet / 10 % 10;
                len += 1;
            }
            buf[len] = b'0' + octet % 10;
            len += 1;
        }
        return &buf[..len];
    }
    let mut rest = &mut buf[..];
    // 64 bytes hold any IPv4 or IPv6 address text, so the write cannot run out of room.
    let written = match write!(rest, "{ip}") {
        Ok(()) => 64 - rest.len(),
        Err(_) => 0,
    };
    &buf[..written]
}

fn fold(name: &str) -> Vec<u8> {
    name.bytes()
        .filter(|b| !matches!(b, b'-' | b'_' | b'.'))
        .map(|b| b.to_ascii_lowercase())
        .collect()
}

/// `name` equals `folded` once lowercased and stripped of `-`, `_` and `.`; no allocation.
fn folded_eq(name: &str, folded: &[u8]) -> bool {
    let mut rest = folded.iter();
    for b in name.bytes() {
        if matches!(b, b'-' | b'_' | b'.') {
            continue;
        }
        match rest.next() {
            Some(f) if *f == b.to_ascii_lowercase() => {}
            _ => return false,
        }
    }
    rest.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(trusted: &[&str]) -> HeaderRules {
        let identity: Vec<HeaderName> = ["x-forwarded-user", "x-forwarded-email"]
            .iter()
            .map(|n| HeaderName::from_static(n))
            .collect();
        HeaderRules {
            identity_folded: identity.iter().map(|n| fold(n.as_str())).collect(),
            allow_underscores: false,
            trusted_proxies: trusted.iter().map(|c| c.parse().unwrap()).collect(),
        }
    }

    fn info<'a>(peer: &str, id: &'a HeaderValue, host: &'a HeaderValue) -> ForwardInfo<'a> {
        ForwardInfo {
            peer: peer.parse().unwrap(),
            tls: false,
            request_id: id,
            client_host: host,
            upstream_host: host,
            upgrade: None,
        }
    }

    #[test]
    fn ipv4_peers_are_formatted_like_display() {
        for ip in [
            "0.0.0.0",
            "9.10.99.100",
            "127.0.0.1",
            "255.255.255.255",
            "1.20.203.4",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut buf = [0u8; 64];
            assert_eq!(format_ip(ip, &mut buf), ip.to_string().as_bytes());
        }
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(format_ip(v6, &mut buf), b"2001:db8::1");
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go_in_any_case() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("Keep-Alive, X-Secret"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-app", HeaderValue::from_static("kept"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-app"], "kept");
    }

    #[test]
    fn folded_names_match_every_spelling() {
        let f = fold("X-Forwarded-User");
        for n in [
            "x-forwarded-user",
            "x_forwarded_user",
            "x.forwarded.user",
            "xforwardeduser",
        ] {
            assert!(folded_eq(n, &f), "{n}");
        }
        assert!(!folded_eq("x-forwarded-users", &f));
        assert!(!folded_eq("x-forwarded-use", &f));
    }

    #[test]
    fn connection_cannot_remove_what_the_gateway_sets() {
        let mut h = HeaderMap::new();
        h.insert(
            CONNECTION,
            HeaderValue::from_static("close, X-Forwarded-For, X-Request-Id, Host"),
        );
        h.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        let id = HeaderValue::from_static("rid");
        let host = HeaderValue::from_static("app.example");
        rules(&[]).rewrite_request(&mut h, &info("10.0.0.1", &id, &host));
        assert_eq!(h["x-forwarded-for"], "10.0.0.1");
        assert_eq!(h["x-request-id"], "rid");
        assert_eq!(h[HOST], "app.example");
        assert!(!h.contains_key(CONNECTION));
    }

    #[test]
    fn trusted_proxies_extend_forwarded_for_and_untrusted_peers_replace_it() {
        let id = HeaderValue::from_static("rid");
        let host = HeaderValue::from_static("app");
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        rules(&["10.0.0.0/8"]).rewrite_request(&mut h, &info("10.1.2.3", &id, &host));
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 10.1.2.3");
        assert_eq!(h["x-forwarded-proto"], "https");

        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        h.insert("x-original-uri", HeaderValue::from_static("/admin"));
        rules(&["10.0.0.0/8"]).rewrite_request(&mut h, &info("192.0.2.9", &id, &host));
        assert_eq!(h["x-forwarded-for"], "192.0.2.9");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert!(!h.contains_key("x-original-uri"));
    }

    #[test]
    fn identity_headers_are_removed_in_every_spelling_and_copy() {
        let mut h = HeaderMap::new();
        h.append("x-forwarded-user", HeaderValue::from_static("a"));
        h.append("X-FORWARDED-USER", HeaderValue::from_static("b"));
        h.append("x.forwarded.email", HeaderValue::from_static("c"));
        h.append("x_forwarded_user", HeaderValue::from_static("d"));
        h.append("x_other", HeaderValue::from_static("e"));
        h.append("x-app", HeaderValue::from_static("kept"));
        rules(&[]).remove_identity(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-app"], "kept");
    }
}
