//! Shared HTML helpers for the demo's development pages (the development provider's login form
//! and the echo upstream). Development only — never for production. Everything that reaches a
//! page from a request goes through [`escape`] first.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

/// Escapes text for HTML element content and quoted attribute values: the gateway's own.
pub use crate::endpoints::pages::escape;

const STYLE: &str = "\
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}\
.bar{background:#8a1c1c;color:#fff;padding:.5rem 1rem;font-size:.9rem}\
main{max-width:46rem;margin:2rem auto;padding:0 1rem}\
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:1.6rem}\
.card{background:#fff;border:1px solid #d9dde5;border-radius:8px;padding:1.2rem 1.4rem;margin:1rem 0}\
.who{border:2px solid #2f6fde;background:#eef4ff}\
label{display:block;margin:.7rem 0 .2rem;font-weight:600}\
input[type=text],input[type=email]{width:100%;box-sizing:border-box;padding:.45rem;border:1px solid #b8c0cc;border-radius:4px;font-size:1rem}\
.checks label{display:inline-block;font-weight:400;margin-right:1rem}\
button{margin-top:1rem;padding:.5rem 1.1rem;font-size:1rem;border-radius:4px;border:1px solid #2f6fde;background:#2f6fde;color:#fff;cursor:pointer}\
button.secondary{background:#fff;color:#2f6fde}\
table{border-collapse:collapse;width:100%;font-size:.9rem}\
td,th{border-bottom:1px solid #e3e6ec;padding:.3rem .4rem;text-align:left;vertical-align:top}\
th{width:14rem;color:#4a5365;font-weight:600}\
code,td{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;word-break:break-all}\
.err{color:#8a1c1c;font-weight:600}.muted{color:#5b6473}";

/// A complete page: the red development-only bar, a title and `body`, which must already be
/// escaped HTML.
pub fn page(title: &str, body: &str) -> String {
    let title = escape(title);
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
<title>{title}</title><style>{STYLE}</style></head><body>\
<div class=\"bar\">Gatehouse demo: development only, never use in production</div>\
<main><h1>{title}</h1>\n{body}\n</main></body></html>\n"
    )
}

/// An HTML response. The headers keep the login form out of frames (clickjacking) and out of
/// caches, and forbid scripts outright since no page here needs one.
pub fn response(status: StatusCode, html: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(html)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            escape("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
    }
}
