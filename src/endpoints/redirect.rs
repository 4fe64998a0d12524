//! Where a person may be sent after login or sign-out (security rule 6). Only a path on the
//! gateway's own origin, or an absolute http(s) URL of that same origin, is accepted; the answer
//! is always the path-and-query form, so no later step can be tricked into leaving the origin.

use url::Url;

/// The safe path-and-query to return to, or `None` when `rd` could lead anywhere else:
/// `//host`, `/\host`, `\\host`, `https:host`, other schemes, user-info (`https://good@evil`),
/// encoded forms of these (`%2F%2F`, `%5C`), control characters and whitespace.
pub fn safe_return_to(rd: &str, public: &Url) -> Option<String> {
    if rd.is_empty() || rd.len() > 2048 {
        return None;
    }
    if !is_clean(rd) {
        return None;
    }
    // What a browser or a later decoding step might read: check every decoded layer too.
    let mut layer = rd.to_owned();
    for _ in 0..3 {
        let decoded = percent_encoding::percent_decode_str(&layer)
            .decode_utf8()
            .ok()?
            .into_owned();
        // A decoded space is harmless; decoded controls and backslashes are not.
        if decoded.chars().any(|c| c.is_control() || c == '\\') || starts_like_authority(&decoded) {
            return None;
        }
        if decoded == layer {
            break;
        }
        layer = decoded;
    }
    if rd.starts_with('/') {
        return (!starts_like_authority(rd)).then(|| rd.to_owned());
    }
    let lower = rd.to_ascii_lowercase();
    if !(lower.starts_with("http://") || lower.starts_with("https://")) {
        return None;
    }
    let url = Url::parse(rd).ok()?;
    let same_origin = url.scheme() == public.scheme()
        && url.host_str() == public.host_str()
        && url.port_or_known_default() == public.port_or_known_default()
        && url.username().is_empty()
        && url.password().is_none();
    if !same_origin {
        return None;
    }
    let mut out = url.path().to_owned();
    if let Some(q) = url.query() {
        out.push('?');
        out.push_str(q);
    }
    Some(out)
}

fn is_clean(s: &str) -> bool {
    !s.chars()
        .any(|c| c.is_control() || c.is_whitespace() || c == '\\')
}

/// `//host` and `/\host` (and their mixes) are read by browsers as another origin.
fn starts_like_authority(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 2 && matches!(b[0], b'/' | b'\\') && matches!(b[1], b'/' | b'\\')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn public() -> Url {
        Url::parse("https://app.example.com").unwrap()
    }

    #[test]
    fn open_redirects_in_every_known_form_are_refused() {
        for bad in [
            "//evil.example",
            "/\\evil.example",
            "\\\\evil.example",
            "\\/evil.example",
            "https:evil.example",
            "https://evil.example/x",
            "http://app.example.com/x",
            "javascript:alert(1)",
            "data:text/html,x",
            "ftp://app.example.com/",
            "%2F%2Fevil.example",
            "/%2F/evil.example",
            "/%2f%2fevil.example",
            "/%5Cevil.example",
            "%5C%5Cevil.example",
            "/%252F%252Fevil.example",
            "https://app.example.com@evil.example/",
            "https://user:pw@app.example.com/",
            "/path\r\nSet-Cookie: x=1",
            "/path with space",
            "/tab\there",
            " /leading-space",
            "",
        ] {
            assert_eq!(safe_return_to(bad, &public()), None, "{bad:?} was accepted");
        }
    }

    #[test]
    fn same_origin_paths_and_urls_are_kept() {
        assert_eq!(
            safe_return_to("/app/page?x=1&y=two", &public()).as_deref(),
            Some("/app/page?x=1&y=two")
        );
        assert_eq!(
            safe_return_to("https://app.example.com/deep/link?q=%20", &public()).as_deref(),
            Some("/deep/link?q=%20")
        );
        assert_eq!(safe_return_to("/", &public()).as_deref(), Some("/"));
    }
}
