//! The gateway's own answers to people and programs: small, clean HTML pages for browsers and
//! small JSON bodies for API callers. Nothing from the request is reflected unescaped (rule 7).

use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};

use crate::body::Body;

/// Whether a request is a person's page navigation (answer with redirects and pages) rather
/// than a script or API call (answer with 401 and JSON): navigations are `GET`/`HEAD` that a
/// browser marks as such (`Sec-Fetch-Mode: navigate`) or that accept HTML; `X-Requested-With`,
/// `Sec-Fetch-Mode: cors` and the like mean a script.
pub fn is_navigation(method: &Method, headers: &HeaderMap) -> bool {
    if method != Method::GET && method != Method::HEAD {
        return false;
    }
    if headers.contains_key("x-requested-with") {
        return false;
    }
    if let Some(mode) = headers.get("sec-fetch-mode") {
        return mode == "navigate";
    }
    if let Some(dest) = headers.get("sec-fetch-dest")
        && dest != "document"
        && dest != "iframe"
    {
        return false;
    }
    headers
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"))
}

pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A page for a person: a title, what happened, what to do next (already escaped by the
/// caller where it holds outside text), and one link.
pub fn page(
    status: StatusCode,
    title: &str,
    message: &str,
    link: Option<(&str, &str)>,
) -> Response<Body> {
    let link = link.map_or_else(String::new, |(href, text)| {
        format!("<p><a href=\"{}\">{}</a></p>", escape(href), escape(text))
    });
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{title}</title><style>body{{font:16px/1.5 system-ui,sans-serif;max-width:36rem;\
margin:4rem auto;padding:0 1rem;color:#222}}h1{{font-size:1.4rem}}.code{{color:#777;\
font-size:.85rem}}a{{color:#0550ae}}</style></head><body><h1>{title}</h1><p>{message}</p>{link}\
<p class=\"code\">{status} · Gatehouse</p></body></html>",
        title = escape(title),
        status = status.as_u16(),
    );
    let mut resp = Response::new(Body::from(html));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut resp = Response::new(Body::from(value.to_string()));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

pub fn redirect(location: &str) -> Response<Body> {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::FOUND;
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(http::header::LOCATION, v);
    }
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn browsers_navigating_get_pages_and_scripts_get_json() {
        let nav = headers(&[("sec-fetch-mode", "navigate"), ("accept", "text/html")]);
        assert!(is_navigation(&Method::GET, &nav));
        assert!(!is_navigation(&Method::POST, &nav));
        assert!(!is_navigation(
            &Method::GET,
            &headers(&[("sec-fetch-mode", "cors"), ("accept", "text/html")])
        ));
        assert!(!is_navigation(
            &Method::GET,
            &headers(&[
                ("x-requested-with", "XMLHttpRequest"),
                ("accept", "text/html")
            ])
        ));
        assert!(!is_navigation(
            &Method::GET,
            &headers(&[("accept", "application/json")])
        ));
        assert!(!is_navigation(&Method::GET, &headers(&[("accept", "*/*")])));
        assert!(is_navigation(
            &Method::GET,
            &headers(&[("accept", "text/html,*/*")])
        ));
        assert!(!is_navigation(
            &Method::GET,
            &headers(&[("sec-fetch-dest", "image"), ("accept", "text/html")])
        ));
    }

    #[test]
    fn pages_escape_what_they_show() {
        let resp = page(
            StatusCode::BAD_REQUEST,
            "<x>",
            "ok",
            Some(("/a\"b", "<go>")),
        );
        let Body::Full(Some(bytes)) = resp.into_body() else {
            panic!("body")
        };
        let html = String::from_utf8(bytes.to_vec()).unwrap();
        assert!(html.contains("&lt;x&gt;"));
        assert!(html.contains("/a&quot;b"));
        assert!(!html.contains("<go>"));
    }
}
