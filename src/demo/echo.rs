//! The demo's echo upstream — a development aid, never for production. It plays "your app"
//! behind the gateway: every request is rendered back as a page (or JSON) showing exactly what
//! the app received, with the identity headers the gateway added in a highlighted box.
//!
//! Request bodies are counted frame by frame and never buffered, so large uploads through the
//! gateway show their size without costing memory.

use std::error::Error as StdError;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Version, header};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

use super::html;

/// Identity headers the gateway sets, shown in full (they are not secrets).
const IDENTITY_HEADERS: &[(&str, &str)] = &[
    ("x-forwarded-user", "User"),
    ("x-forwarded-email", "Email"),
    ("x-forwarded-preferred-username", "Preferred username"),
    ("x-forwarded-groups", "Groups"),
    ("x-forwarded-client-id", "Client id"),
];
/// Headers whose values are credentials: only a prefix is ever shown.
const CREDENTIAL_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-forwarded-access-token",
];
const SHOWN_PREFIX_CHARS: usize = 12;

/// What the echo saw, rendered as HTML or JSON.
struct Seen {
    method: String,
    target: String,
    version: &'static str,
    peer: SocketAddr,
    headers: Vec<(String, String)>,
    body_bytes: u64,
    body_error: Option<String>,
    identity: Vec<(&'static str, &'static str, String)>,
    access_token: Option<String>,
    authorization: Option<String>,
}

/// Answers one request: reads (and counts) the whole body, then describes the request.
pub async fn handle<B>(req: Request<B>, peer: SocketAddr) -> Response<Full<Bytes>>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let (parts, body) = req.into_parts();
    let (body_bytes, body_error) = count_body(body).await;
    let headers = sorted_headers(&parts.headers);
    let identity = IDENTITY_HEADERS
        .iter()
        .filter_map(|(name, label)| {
            let value = joined(&parts.headers, name)?;
            Some((*name, *label, value))
        })
        .collect();
    let seen = Seen {
        method: parts.method.to_string(),
        target: parts
            .uri
            .path_and_query()
            .map(|pq| pq.as_str().to_owned())
            .unwrap_or_else(|| "/".to_owned()),
        version: version_name(parts.version),
        peer,
        headers,
        body_bytes,
        body_error,
        identity,
        access_token: joined(&parts.headers, "x-forwarded-access-token").map(|v| abbreviate(&v)),
        authorization: joined(&parts.headers, "authorization").map(|v| abbreviate(&v)),
    };
    if wants_json(&parts.headers, parts.uri.query()) {
        let mut resp = Response::new(Full::new(Bytes::from(seen.to_json().to_string())));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        resp
    } else {
        html::response(StatusCode::OK, seen.to_html())
    }
}

/// Adapter for [`crate::server::serve_simple`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let handler = |req: Request<hyper::body::Incoming>, peer: SocketAddr| handle(req, peer);
    crate::server::serve_simple(listener, handler, shutdown).await;
}

/// Counts the body's data bytes, dropping each frame as soon as it is counted.
async fn count_body<B>(body: B) -> (u64, Option<String>)
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let mut body = std::pin::pin!(body);
    let mut total: u64 = 0;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    total += data.len() as u64;
                }
            }
            Err(err) => {
                let err: Box<dyn StdError + Send + Sync> = err.into();
                return (total, Some(err.to_string()));
            }
        }
    }
    (total, None)
}

fn sorted_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = headers
        .iter()
        .map(|(name, value)| {
            let text = String::from_utf8_lossy(value.as_bytes()).into_owned();
            let text = if CREDENTIAL_HEADERS.contains(&name.as_str()) {
                abbreviate(&text)
            } else {
                text
            };
            (name.as_str().to_owned(), text)
        })
        .collect();
    // Stable: repeated headers keep their order.
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn joined(headers: &HeaderMap, name: &str) -> Option<String> {
    let values: Vec<String> = headers
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    (!values.is_empty()).then(|| values.join(", "))
}

/// The first characters of a credential and an ellipsis: enough to recognise, not to reuse.
fn abbreviate(value: &str) -> String {
    let prefix: String = value.chars().take(SHOWN_PREFIX_CHARS).collect();
    format!("{prefix}…")
}

fn version_name(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/?",
    }
}

fn wants_json(headers: &HeaderMap, query: Option<&str>) -> bool {
    let accept = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("application/json"));
    let format = query.is_some_and(|q| {
        url::form_urlencoded::parse(q.as_bytes()).any(|(k, v)| k == "format" && v == "json")
    });
    accept || format
}

impl Seen {
    fn authenticated(&self) -> bool {
        !self.identity.is_empty() || self.access_token.is_some()
    }

    fn user(&self) -> Option<&str> {
        self.identity
            .iter()
            .find(|(name, _, _)| *name == "x-forwarded-user")
            .map(|(_, _, v)| v.as_str())
    }

    fn to_json(&self) -> Value {
        let mut identity = serde_json::Map::new();
        for (name, _, value) in &self.identity {
            identity.insert((*name).to_owned(), Value::String(value.clone()));
        }
        json!({
            "method": self.method,
            "path": self.target,
            "version": self.version,
            "peer": self.peer.to_string(),
            "headers": self.headers.iter().map(|(n, v)| json!({"name": n, "value": v})).collect::<Vec<_>>(),
            "body_bytes": self.body_bytes,
            "body_error": self.body_error,
            "identity": {
                "authenticated": self.authenticated(),
                "headers": identity,
                "access_token_present": self.access_token.is_some(),
                "access_token_prefix": self.access_token,
                "authorization_present": self.authorization.is_some(),
                "authorization_prefix": self.authorization,
            },
        })
    }

    fn to_html(&self) -> String {
        let e = html::escape;
        let mut who = String::new();
        if self.identity.is_empty() && self.access_token.is_none() && self.authorization.is_none() {
            who.push_str("<p class=\"muted\">(no identity: this route is not authenticated)</p>");
        } else {
            who.push_str("<table>");
            for (name, label, value) in &self.identity {
                who.push_str(&format!(
                    "<tr><th>{} <span class=\"muted\">({})</span></th><td>{}</td></tr>",
                    e(label),
                    e(name),
                    e(value)
                ));
            }
            let present = |v: &Option<String>| match v {
                Some(prefix) => format!("present: {}", e(prefix)),
                None => "absent".to_owned(),
            };
            who.push_str(&format!(
                "<tr><th>Access token <span class=\"muted\">(x-forwarded-access-token)</span></th>\
                 <td>{}</td></tr><tr><th>Authorization header</th><td>{}</td></tr></table>",
                present(&self.access_token),
                present(&self.authorization)
            ));
        }
        if self.user().is_some() {
            who.push_str("<p><a href=\"/oauth2/sign_out\">Sign out</a></p>");
        }
        let mut rows = String::new();
        for (name, value) in &self.headers {
            rows.push_str(&format!(
                "<tr><th>{}</th><td>{}</td></tr>",
                e(name),
                e(value)
            ));
        }
        let body_note = match &self.body_error {
            Some(err) => format!(
                "{} bytes, then the body failed: {}",
                self.body_bytes,
                e(err)
            ),
            None => format!("{} bytes", self.body_bytes),
        };
        let body = format!(
            "<p class=\"muted\">This is the demo's echo app. It shows the request exactly as it \
             arrived from the gateway. Add <code>?format=json</code> for JSON.</p>\
             <div class=\"card who\"><h2>What the app knows about you</h2>{who}</div>\
             <div class=\"card\"><h2>Request</h2><table>\
             <tr><th>Method</th><td>{method}</td></tr>\
             <tr><th>Path and query</th><td>{target}</td></tr>\
             <tr><th>HTTP version</th><td>{version}</td></tr>\
             <tr><th>Peer</th><td>{peer}</td></tr>\
             <tr><th>Body</th><td>{body_note}</td></tr></table></div>\
             <div class=\"card\"><h2>Headers ({count})</h2><table>{rows}</table>\
             <p class=\"muted\">Credentials (authorization, cookie, access token) are cut to \
             their first {SHOWN_PREFIX_CHARS} characters.</p></div>",
            method = e(&self.method),
            target = e(&self.target),
            version = self.version,
            peer = e(&self.peer.to_string()),
            count = self.headers.len(),
        );
        html::page("Echo: what your app received", &body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::StreamBody;

    fn peer() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 50000))
    }

    async fn body_text(resp: Response<Full<Bytes>>) -> String {
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn html_escapes_everything_reflected() {
        let req = Request::builder()
            .uri("/p?q=%3Cscript%3E")
            .header("x-forwarded-user", "<script>alert('u')</script>")
            .header("x-evil", "\"><img src=x onerror=alert(1)>")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = handle(req, peer()).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(
            resp.headers()[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        let text = body_text(resp).await;
        assert!(!text.contains("<script>"), "{text}");
        assert!(!text.contains("<img"), "{text}");
        assert!(text.contains("&lt;script&gt;alert(&#39;u&#39;)&lt;/script&gt;"));
        assert!(text.contains("What the app knows about you"));
        assert!(text.contains("href=\"/oauth2/sign_out\""));
    }

    #[tokio::test]
    async fn unauthenticated_route_says_so_and_offers_no_sign_out() {
        let req = Request::builder()
            .uri("/")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let text = body_text(handle(req, peer()).await).await;
        assert!(text.contains("(no identity: this route is not authenticated)"));
        assert!(!text.contains("/oauth2/sign_out"));
    }

    #[tokio::test]
    async fn json_mode_has_the_same_data_and_never_the_full_token() {
        let token = "eyJhbGciOiJFUzI1NiJ9.secret-payload.signature";
        for (uri, accept) in [
            ("/x?a=1&format=json", None),
            ("/x?a=1", Some("text/html, application/json;q=0.9")),
        ] {
            let mut req = Request::builder()
                .method("POST")
                .uri(uri)
                .header("x-forwarded-user", "alice")
                .header("x-forwarded-groups", "admins,readers")
                .header("x-forwarded-access-token", token)
                .header("authorization", format!("Bearer {token}"))
                .header("zz-last", "1")
                .header("aa-first", "2");
            if let Some(accept) = accept {
                req = req.header("accept", accept);
            }
            let req = req.body(Full::new(Bytes::from_static(b"hello"))).unwrap();
            let resp = handle(req, peer()).await;
            assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
            let text = body_text(resp).await;
            assert!(!text.contains("secret-payload"), "{text}");
            let v: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["method"], "POST");
            assert_eq!(v["path"], uri);
            assert_eq!(v["version"], "HTTP/1.1");
            assert_eq!(v["peer"], "127.0.0.1:50000");
            assert_eq!(v["body_bytes"], 5);
            assert_eq!(v["identity"]["authenticated"], true);
            assert_eq!(v["identity"]["headers"]["x-forwarded-user"], "alice");
            assert_eq!(
                v["identity"]["headers"]["x-forwarded-groups"],
                "admins,readers"
            );
            assert_eq!(v["identity"]["access_token_prefix"], "eyJhbGciOiJF…");
            assert_eq!(v["identity"]["authorization_prefix"], "Bearer eyJhb…");
            let names: Vec<&str> = v["headers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| h["name"].as_str().unwrap())
                .collect();
            let mut sorted = names.clone();
            sorted.sort();
            assert_eq!(names, sorted);
            assert_eq!(names.first(), Some(&"aa-first"));
        }
    }

    #[tokio::test]
    async fn counts_a_streamed_body_without_collecting_it() {
        let chunks = (0..64).map(|_| {
            Ok::<_, std::io::Error>(http_body::Frame::data(Bytes::from(vec![b'x'; 16 * 1024])))
        });
        let body = StreamBody::new(futures_util::stream::iter(chunks));
        let req = Request::builder()
            .method("PUT")
            .uri("/upload?format=json")
            .body(body)
            .unwrap();
        let v: Value = serde_json::from_str(&body_text(handle(req, peer()).await).await).unwrap();
        assert_eq!(v["body_bytes"], 64 * 16 * 1024);
        assert_eq!(v["body_error"], Value::Null);
    }
}
