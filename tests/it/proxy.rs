//! The proxy as an app behind it sees it: what arrives upstream, what never does, and what
//! the client gets back when something is wrong. Security tests are named after the attack.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{Full, StreamBody};
use hyper::body::Frame;

use crate::support::upstream::Upstream;
use crate::support::{Gateway, get, raw_exchange, send};

fn one_upstream(up: &Upstream) -> String {
    format!("[[upstreams]]\nurl = \"{}\"\n", up.url())
}

#[tokio::test]
async fn requests_reach_the_upstream_with_path_query_method_and_body() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&one_upstream(&up));
    let reply = send(
        Request::post(gw.url("/orders/42?expand=items&x=%20y"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(b"{\"a\":1}")))
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 200);
    let seen = up.last();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.target, "/orders/42?expand=items&x=%20y");
    assert_eq!(seen.body_len, 7);
    assert_eq!(seen.headers["content-type"], "application/json");
    assert!(reply.headers.contains_key("x-request-id"));
}

#[tokio::test]
async fn hop_by_hop_headers_are_not_forwarded() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&one_upstream(&up));
    let reply = send(
        Request::get(gw.url("/"))
            .header("connection", "keep-alive, x-secret-hop")
            .header("keep-alive", "timeout=5")
            .header("x-secret-hop", "must not pass")
            .header("te", "trailers")
            .header("proxy-authorization", "Basic Zm9vOmJhcg==")
            .header("x-app-header", "passes")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 200);
    let h = up.last().headers;
    for gone in ["keep-alive", "x-secret-hop", "te", "proxy-authorization"] {
        assert!(!h.contains_key(gone), "{gone} reached the upstream");
    }
    assert_eq!(h["x-app-header"], "passes");
}

#[tokio::test]
async fn connection_header_cannot_remove_headers_the_gateway_sets() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&one_upstream(&up));
    send(
        Request::get(gw.url("/"))
            .header(
                "connection",
                "close, X-Forwarded-For, X-Forwarded-Proto, X-Request-Id",
            )
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    let h = up.last().headers;
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert!(h.contains_key("x-request-id"));
}

#[tokio::test]
async fn spoofed_identity_headers_are_stripped_in_every_spelling_and_copy() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&one_upstream(&up));
    // Raw bytes: several copies and spellings no client library would produce together.
    let request = format!(
        "GET /anything HTTP/1.1\r\nHost: {}\r\nX-Forwarded-User: admin\r\nx-forwarded-user: root\r\n\
         X-FORWARDED-EMAIL: boss@example.com\r\nX_Forwarded_User: admin\r\nX.Forwarded.Groups: admins\r\n\
         X-Forwarded-Preferred-Username: admin\r\nX-Forwarded-Access-Token: forged\r\n\
         X-Forwarded-Client-Id: forged\r\nX-Some_Header: dropped\r\nX-App: kept\r\nConnection: close\r\n\r\n",
        gw.addr
    );
    let answer = raw_exchange(gw.addr, request.as_bytes(), Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let h = up.last().headers;
    let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
    for name in &names {
        let folded: String = name.chars().filter(|c| !"-_.".contains(*c)).collect();
        assert!(
            !folded.starts_with("xforwarded")
                || ["xforwardedfor", "xforwardedproto", "xforwardedhost"]
                    .contains(&folded.as_str()),
            "identity header {name} reached the upstream: {names:?}"
        );
        assert!(
            !name.contains('_'),
            "underscore header {name} reached the upstream"
        );
    }
    assert_eq!(h["x-app"], "kept");
}

#[tokio::test]
async fn underscore_headers_pass_when_explicitly_allowed() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&format!(
        "[headers]\nallow_underscores = true\n{}",
        one_upstream(&up)
    ));
    send(
        Request::get(gw.url("/"))
            .header("x_app_header", "kept")
            .header("x_forwarded_user", "admin")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    let h = up.last().headers;
    assert_eq!(h["x_app_header"], "kept");
    assert!(
        !h.contains_key("x_forwarded_user"),
        "identity spelled with _ must still go"
    );
}

#[tokio::test]
async fn forwarded_headers_from_an_untrusted_client_are_replaced_not_appended() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&one_upstream(&up));
    send(
        Request::get(gw.url("/"))
            .header("x-forwarded-for", "203.0.113.7")
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "evil.example")
            .header("x-original-uri", "/admin")
            .header("x-forwarded-uri", "/admin")
            .header("x-forwarded-method", "DELETE")
            .header("forwarded", "for=203.0.113.7")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    let h = up.last().headers;
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], gw.addr.to_string());
    for gone in [
        "x-original-uri",
        "x-forwarded-uri",
        "x-forwarded-method",
        "forwarded",
    ] {
        assert!(
            !h.contains_key(gone),
            "{gone} from an untrusted client reached the upstream"
        );
    }
}

#[tokio::test]
async fn forwarded_headers_from_a_trusted_proxy_are_kept_and_extended() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&format!(
        "[server]\ntrusted_proxies = [\"127.0.0.0/8\"]\n{}",
        one_upstream(&up)
    ));
    send(
        Request::get(gw.url("/"))
            .header("x-forwarded-for", "203.0.113.7")
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "app.example.com")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    let h = up.last().headers;
    assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(h["x-forwarded-host"], "app.example.com");
}

#[tokio::test]
async fn routes_pick_host_first_then_the_longest_prefix_on_segment_boundaries() {
    let api = Upstream::start().await;
    let web = Upstream::start().await;
    let admin = Upstream::start().await;
    let gw = Gateway::start(&format!(
        "[[upstreams]]\nname = \"web\"\nurl = \"{}\"\n\n[[upstreams]]\nname = \"api\"\nurl = \"{}\"\npath_prefix = \"/api\"\n\n\
         [[upstreams]]\nname = \"admin\"\nurl = \"{}\"\nhost = \"admin.example\"\n",
        web.url(),
        api.url(),
        admin.url()
    ));
    get(&gw.url("/api/v1")).await;
    get(&gw.url("/apix")).await;
    send(
        Request::get(gw.url("/api/v1"))
            .header("host", "ADMIN.example:4180")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(
        api.seen()
            .iter()
            .map(|s| s.target.as_str())
            .collect::<Vec<_>>(),
        ["/api/v1"]
    );
    assert_eq!(
        web.seen()
            .iter()
            .map(|s| s.target.as_str())
            .collect::<Vec<_>>(),
        ["/apix"]
    );
    assert_eq!(admin.count(), 1);
}

#[tokio::test]
async fn dot_segments_cannot_reach_another_route_than_the_normalised_path() {
    let public = Upstream::start().await;
    let private = Upstream::start().await;
    let gw = Gateway::start(&format!(
        "[[upstreams]]\nurl = \"{}\"\npath_prefix = \"/public\"\n\n[[upstreams]]\nurl = \"{}\"\n",
        public.url(),
        private.url()
    ));
    for target in [
        "/public/../admin",
        "/public/%2e%2e/admin",
        "/public//..//admin",
        "/public/./../admin",
    ] {
        let answer = raw_exchange(
            gw.addr,
            format!("GET {target} HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n").as_bytes(),
            Duration::from_secs(10),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{target}: {answer}");
        assert_eq!(private.last().target, "/admin", "{target}");
    }
    assert_eq!(
        public.count(),
        0,
        "a dot-segment path reached the public route"
    );
}

#[tokio::test]
async fn encoded_separators_control_characters_and_a_raw_hash_in_the_target_are_refused() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&one_upstream(&up));
    for target in [
        "/public%2F..%2Fadmin",
        "/public%2f..%2fadmin",
        "/a%5Cadmin",
        "/a%00b",
        "/a%0d%0aSet-Cookie:x=1",
        "/a\\..\\admin",
        // Browsers never send a fragment; hyper would cut the target at `#` without a
        // trace, and an app or cache behind might read it otherwise.
        "/public/a#/../../admin",
        "/admin#/public",
        "/public/a?q=1#x",
    ] {
        let answer = raw_exchange(
            gw.addr,
            format!("GET {target} HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n").as_bytes(),
            Duration::from_secs(10),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{target}: {answer}");
    }
    assert_eq!(up.count(), 0, "a refused target reached the upstream");
    // Encoded, `#` is an ordinary character of the path.
    let answer = raw_exchange(
        gw.addr,
        b"GET /a%23b HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n",
        Duration::from_secs(10),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(up.last().target, "/a%23b");
}

#[tokio::test]
async fn the_query_string_never_takes_part_in_routing() {
    let public = Upstream::start().await;
    let private = Upstream::start().await;
    let gw = Gateway::start(&format!(
        "[[upstreams]]\nurl = \"{}\"\npath_prefix = \"/public\"\n\n[[upstreams]]\nurl = \"{}\"\n",
        public.url(),
        private.url()
    ));
    get(&gw.url("/admin?/public/x")).await;
    assert_eq!(public.count(), 0);
    assert_eq!(private.last().target, "/admin?/public/x");
}

#[tokio::test]
async fn builtin_endpoints_are_answered_by_the_gateway_and_never_forwarded() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&one_upstream(&up));
    for path in ["/healthz", "/readyz"] {
        let reply = get(&gw.url(path)).await;
        assert_eq!(reply.status, 200, "{path}");
        assert_eq!(reply.text(), "OK\n");
    }
    let reply = get(&gw.url("/oauth2/unknown")).await;
    assert_eq!(reply.status, 404);
    assert_eq!(up.count(), 0, "a built-in path reached the upstream");
    // Health paths are exact (rule 28): anything below them is an ordinary request.
    get(&gw.url("/healthz/deep")).await;
    assert_eq!(up.last().target, "/healthz/deep");
}

#[tokio::test]
async fn request_smuggling_with_content_length_and_transfer_encoding_is_refused() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&one_upstream(&up));
    // Both framings for one body, in either order: refused before hyper (which would pick
    // chunked and drop the length without a trace) sees the request; the request smuggled
    // behind it is never parsed.
    for smuggle in [
        b"POST /upload HTTP/1.1\r\nHost: app\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: app\r\n\r\n".as_slice(),
        b"POST /upload HTTP/1.1\r\nHost: app\r\ntransfer-encoding: chunked\r\ncontent-length: 4\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: app\r\n\r\n",
    ] {
        let answer = raw_exchange(gw.addr, smuggle, Duration::from_secs(5)).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");
    }
    // The same on a kept-alive connection, behind a chunked upload whose body looks like a
    // request head: the body is a body, the ambiguous request after it is refused.
    let fake_head = b"GET /x HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
    let stream = [
        b"POST /upload HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n".as_slice(),
        format!("{:x}\r\n", fake_head.len()).as_bytes(),
        fake_head,
        b"\r\n0\r\n\r\n",
        b"POST /upload HTTP/1.1\r\nHost: app\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ]
    .concat();
    let answer = raw_exchange(gw.addr, &stream, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 2, "{answer}");
    assert!(answer.contains("HTTP/1.1 400"), "{answer}");
    assert_eq!(up.count(), 1, "only the unambiguous upload is forwarded");
    assert_eq!(
        up.last().body_len,
        fake_head.len() as u64,
        "the upload's body arrived whole"
    );

    let differing = b"POST /upload HTTP/1.1\r\nHost: app\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde";
    let answer = raw_exchange(gw.addr, differing, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let not_chunked = b"POST /upload HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: gzip\r\n\r\nabcde";
    let answer = raw_exchange(gw.addr, not_chunked, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let bad_bytes = b"GET / HTTP/1.1\r\nHost: app\r\nX-Bad: a\x01b\r\n\r\n";
    let answer = raw_exchange(gw.addr, bad_bytes, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(up.count(), 1, "an ambiguous request reached the upstream");
}

#[tokio::test]
async fn duplicate_host_headers_are_refused() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&one_upstream(&up));
    let answer = raw_exchange(
        gw.addr,
        b"GET / HTTP/1.1\r\nHost: app\r\nHost: admin.example\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn oversized_or_too_many_headers_are_refused() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&format!(
        "[server]\nmax_header_bytes = 4096\nmax_headers = 20\n{}",
        one_upstream(&up)
    ));
    let big = send(
        Request::get(gw.url("/"))
            .header("x-big", "a".repeat(5000))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(big.status, 431);
    let mut many = String::from("GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n");
    for i in 0..40 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let answer = raw_exchange(gw.addr, many.as_bytes(), Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&format!(
        "[server]\nheader_read_timeout = \"500ms\"\n{}",
        one_upstream(&up)
    ));
    let started = Instant::now();
    raw_exchange(
        gw.addr,
        b"GET / HTTP/1.1\r\nHost: app\r\nX-Slow: ",
        Duration::from_secs(20),
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "slowloris connection was kept open for {:?}",
        started.elapsed()
    );
    assert_eq!(up.count(), 0);
}

/// Rule 20 before any request head: a client that connects and sends nothing, or stops inside
/// the HTTP/2 preface (where the protocol is not yet known and hyper's own deadline has not
/// started), is cut off at the header-read timeout too.
#[tokio::test]
async fn a_client_that_sends_nothing_or_half_a_preface_is_disconnected() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&format!(
        "[server]\nheader_read_timeout = \"500ms\"\n{}",
        one_upstream(&up)
    ));
    for first in [&b""[..], b"PRI * HTTP/2.0\r\n"] {
        let started = Instant::now();
        raw_exchange(gw.addr, first, Duration::from_secs(20)).await;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "a connection that sent {first:?} was kept open for {:?}",
            started.elapsed()
        );
    }
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn upstream_down_answers_502_quickly_with_a_request_id() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gw = Gateway::start(&format!(
        "[[upstreams]]\nurl = \"http://127.0.0.1:{port}\"\n"
    ));
    let started = Instant::now();
    let reply = get(&gw.url("/")).await;
    assert_eq!(reply.status, 502);
    assert!(started.elapsed() < Duration::from_secs(5));
    let id = reply.headers["x-request-id"].to_str().unwrap().to_owned();
    assert!(reply.text().contains(&id), "{}", reply.text());
    assert!(
        gw.wait_for_log("upstream request failed")
            .await
            .contains("upstream request failed")
    );
}

/// An upstream that never completes the TCP handshake (its accept queue full: the kernel
/// drops the SYNs) is given up after `connect_timeout`: 502, not a request hanging until the
/// client gives up.
#[tokio::test]
async fn an_upstream_that_never_accepts_answers_502_after_connect_timeout() {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
    // A backlog of 0: one connection fills the queue, and nothing is ever accepted.
    socket.listen(0).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    let _queued = std::net::TcpStream::connect(addr).unwrap();
    let gw = Gateway::start(&format!(
        "[[upstreams]]\nurl = \"http://{addr}\"\nconnect_timeout = \"300ms\"\n"
    ));
    let started = Instant::now();
    let reply = get(&gw.url("/")).await;
    let took = started.elapsed();
    assert_eq!(reply.status, 502, "{}", reply.text());
    assert!(reply.headers.contains_key("x-request-id"));
    assert!(took >= Duration::from_millis(300), "gave up after {took:?}");
    assert!(took < Duration::from_secs(5), "gave up after {took:?}");
    let logs = gw.wait_for_log("timed out").await;
    assert!(logs.contains("connect timed out after 300ms"), "{logs}");
}

#[tokio::test]
async fn slow_upstream_answers_504() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&format!(
        "[[upstreams]]\nurl = \"{}\"\nresponse_timeout = \"300ms\"\n",
        up.url()
    ));
    let reply = get(&gw.url("/slow?ms=3000")).await;
    assert_eq!(reply.status, 504);
    assert!(reply.headers.contains_key("x-request-id"));
}

/// An upstream that sends its headers and part of its body, then nothing (a hung app): after
/// `read_timeout` of silence the client's connection is closed, so the client sees a cut-off
/// response instead of waiting for ever; the gateway says so in its log and goes on serving.
#[tokio::test]
async fn an_upstream_silent_in_the_middle_of_its_body_is_cut_off_after_read_timeout() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&format!(
        "[[upstreams]]\nname = \"hangs\"\nurl = \"{}\"\nread_timeout = \"1s\"\n",
        up.url()
    ));
    let started = std::time::Instant::now();
    let request = b"GET /stall?bytes=5 HTTP/1.1\r\nHost: app\r\n\r\n";
    let answer = raw_exchange(gw.addr, request, Duration::from_secs(15)).await;
    let waited = started.elapsed();
    // Without the timeout the gateway holds the connection open for as long as the client
    // waits: the read would end only at the 15 s deadline.
    assert!(
        waited < Duration::from_secs(15),
        "the gateway kept a silent upstream's response open"
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("content-length: 105"), "{answer}");
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    assert_eq!(
        body, "xxxxx",
        "the client got what the upstream sent, and no more"
    );
    assert!(waited >= Duration::from_secs(1), "cut off after {waited:?}");
    let logs = gw.wait_for_log("went silent").await;
    let line = logs.lines().find(|l| l.contains("went silent"));
    assert!(line.is_some_and(|l| l.contains("hangs")), "{logs}");
    assert_eq!(
        get(&gw.url("/")).await.status,
        200,
        "the gateway goes on serving"
    );
}

/// `read_timeout` bounds each silence, not the whole response: a body that keeps coming,
/// slowly, for longer than the timeout arrives whole.
#[tokio::test]
async fn a_slow_steady_body_longer_than_read_timeout_arrives_whole() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&format!(
        "[[upstreams]]\nurl = \"{}\"\nread_timeout = \"2s\"\n",
        up.url()
    ));
    // Fourteen bytes 300 ms apart: 3.9 s in all, past the first deadline even a tick (0.5 s)
    // late, each pause well inside the 2 s timeout.
    let reply = get(&gw.url("/drip?chunks=14&ms=300")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "x".repeat(14));
}

/// `response_timeout` counts from the end of the request body: an upload that takes longer
/// than it (a large file from a slow client) is not cut off with a 504 while it is sent.
#[tokio::test]
async fn an_upload_slower_than_the_response_timeout_is_not_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let up = Upstream::start().await;
    let gw = Gateway::start(&format!(
        "[[upstreams]]\nurl = \"{}\"\nresponse_timeout = \"1s\"\n",
        up.url()
    ));
    let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(b"POST /upload HTTP/1.1\r\nHost: app\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    // Five chunks, half a second apart: 2.5 s of sending, against a 1 s timeout.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        stream.write_all(b"a\r\n0123456789\r\n").await.unwrap();
    }
    stream.write_all(b"0\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(up.last().body_len, 50);
}

/// The first bytes the gateway answers on `conn` (the head of its answer), within `within`.
async fn first_answer(
    conn: &mut (impl tokio::io::AsyncRead + Unpin),
    within: Duration,
    what: &str,
) -> String {
    use tokio::io::AsyncReadExt;
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(within, conn.read(&mut answer))
        .await
        .unwrap_or_else(|_| panic!("no answer {what}"))
        .unwrap();
    String::from_utf8_lossy(&answer[..n]).into_owned()
}

/// An upstream that stops taking the request body (a hung app, its TCP window full) while
/// the client would go on sending: 504 after `response_timeout` without progress, not a
/// request held for as long as the client keeps trying.
#[tokio::test]
async fn an_upstream_that_stops_reading_the_body_gets_504() {
    use tokio::io::AsyncWriteExt;

    // Accepts and never reads: the gateway's writes fill the socket buffers and stop.
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hung_addr = hung.local_addr().unwrap();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = hung.accept().await {
            held.push(socket);
        }
    });
    let gw = Gateway::start(&format!(
        "[[upstreams]]\nurl = \"http://{hung_addr}\"\nresponse_timeout = \"1s\"\n"
    ));
    let stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let sender = tokio::spawn(async move {
        let head = b"POST /upload HTTP/1.1\r\nHost: app\r\nContent-Length: 67108864\r\n\r\n";
        if writer.write_all(head).await.is_err() {
            return;
        }
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..1024 {
            if writer.write_all(&chunk).await.is_err() {
                return;
            }
        }
    });
    let answer = first_answer(
        &mut reader,
        Duration::from_secs(15),
        "while the upstream took nothing",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 504"), "{answer}");
    sender.abort();
    holder.abort();
}

/// A client that stops sending its body (slow POST, "R-U-Dead-Yet"): after
/// `body_read_timeout` of silence it gets 408, and the upstream's half-sent request is
/// abandoned instead of tying the app up for as long as the client likes.
#[tokio::test]
async fn a_request_body_that_stops_arriving_gets_408_and_frees_the_upstream() {
    use tokio::io::AsyncWriteExt;

    let up = Upstream::start().await;
    let gw = Gateway::start(&format!(
        "[server]\nbody_read_timeout = \"1s\"\n\n[[upstreams]]\nurl = \"{}\"\n",
        up.url()
    ));
    let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(b"POST /upload HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n")
        .await
        .unwrap();
    // Then nothing: the answer comes without the rest of the body.
    let answer = first_answer(&mut stream, Duration::from_secs(10), "to a stalled body").await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("x-request-id"), "{answer}");
    assert_eq!(
        up.count(),
        0,
        "the app recorded a request whose body never came"
    );
}

#[tokio::test]
async fn a_callers_request_id_is_propagated_and_one_is_made_when_missing() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&one_upstream(&up));
    let reply = send(
        Request::get(gw.url("/"))
            .header("x-request-id", "trace-abc-123")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(reply.headers["x-request-id"], "trace-abc-123");
    assert_eq!(up.last().headers["x-request-id"], "trace-abc-123");
    let reply = get(&gw.url("/")).await;
    let made = reply.headers["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(made.len(), 32);
    assert_eq!(up.last().headers["x-request-id"], made.as_str());
}

#[tokio::test]
async fn host_is_preserved_by_default_and_rewritten_when_asked() {
    let kept = Upstream::start().await;
    let rewritten = Upstream::start().await;
    let gw = Gateway::start(&format!(
        "[[upstreams]]\nurl = \"{}\"\n\n[[upstreams]]\nurl = \"{}/base/\"\npath_prefix = \"/r\"\npreserve_host = false\n",
        kept.url(),
        rewritten.url()
    ));
    send(
        Request::get(gw.url("/x"))
            .header("host", "app.example.com")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(kept.last().headers["host"], "app.example.com");
    send(
        Request::get(gw.url("/r/y"))
            .header("host", "app.example.com")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    let seen = rewritten.last();
    assert_eq!(seen.headers["host"], rewritten.addr.to_string());
    assert_eq!(seen.headers["x-forwarded-host"], "app.example.com");
    assert_eq!(seen.target, "/base/r/y");
}

#[tokio::test]
async fn chunked_uploads_stream_to_the_upstream() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&one_upstream(&up));
    let chunks = (0..100)
        .map(|_| Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(vec![7u8; 10_000]))));
    let body = StreamBody::new(futures_util::stream::iter(chunks));
    let req = Request::post(gw.url("/upload")).body(body).unwrap();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = up.last();
    assert_eq!(seen.body_len, 1_000_000);
    assert_eq!(seen.headers["transfer-encoding"], "chunked");
}

#[tokio::test]
async fn bytes_pipelined_after_a_refused_upgrade_are_parsed_as_requests() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&one_upstream(&up));
    // The upstream refuses the upgrade; the bytes after it must be read as a second request
    // (and go through the gateway's rules), never tunnelled raw to the upstream.
    let request = b"GET /no-upgrade HTTP/1.1\r\nHost: app\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n\
GET /second HTTP/1.1\r\nHost: app\r\nX-Forwarded-User: admin\r\nConnection: close\r\n\r\n";
    let answer = raw_exchange(gw.addr, request, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 2, "{answer}");
    let seen = up.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].target, "/second");
    assert!(!seen[1].headers.contains_key("x-forwarded-user"));
}

/// Issue 10 point 6: `[log] format = "json"` makes every line one JSON object whose access
/// event carries request id, method, path, route, upstream, status and both latencies; `[log]
/// level` decides what is written, and `RUST_LOG`, when set, wins over it.
#[tokio::test]
async fn json_logs_carry_the_access_fields_and_the_level_comes_from_config_or_rust_log() {
    let up = Upstream::start().await;
    let config = |level: &str| {
        format!(
            "[log]\nformat = \"json\"\nlevel = \"{level}\"\n\n[[upstreams]]\nname = \"app\"\nurl = \"{}\"\n",
            up.url()
        )
    };
    // The access event, parsed, of one request through `gw` (`None` when none was written).
    async fn access_event(gw: &Gateway) -> Option<serde_json::Value> {
        let reply = get(&gw.url("/items?page=2")).await;
        assert_eq!(reply.status, 200);
        let id = reply.headers["x-request-id"].to_str().unwrap().to_owned();
        let logs = gw.wait_for_log(&id).await;
        let lines: Vec<serde_json::Value> = logs
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        lines.into_iter().find(|l| l["request_id"] == id.as_str())
    }

    let gw = Gateway::start(&config("info"));
    let access = access_event(&gw).await.expect("no access event");
    assert_eq!(access["target"], "gatehouse::access");
    assert_eq!(access["method"], "GET");
    assert_eq!(access["path"], "/items", "the path, never the query");
    assert_eq!(access["route"], "upstream");
    assert_eq!(access["upstream"], "app");
    assert_eq!(access["status"], 200);
    assert!(access["latency_ms"].as_f64().is_some(), "{access}");
    assert!(access["upstream_ms"].as_f64().is_some(), "{access}");

    // The configured level, a filter that turns the access log off: without RUST_LOG it
    // applies; with RUST_LOG=info, RUST_LOG wins.
    let quiet = config("info,gatehouse::access=off");
    let by_config = Gateway::start_with_env(&quiet, &[("RUST_LOG", "")]);
    assert!(
        access_event(&by_config).await.is_none(),
        "the level was not applied"
    );
    let by_env = Gateway::start_with_env(&quiet, &[("RUST_LOG", "info")]);
    assert!(
        access_event(&by_env).await.is_some(),
        "RUST_LOG did not win"
    );
}

#[tokio::test]
async fn the_access_log_has_one_line_per_request_and_no_secrets() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&one_upstream(&up));
    let reply = send(
        Request::get(gw.url("/private?access_token=SECRET-IN-QUERY"))
            .header("cookie", "session=SECRET-IN-COOKIE")
            .header("authorization", "Bearer SECRET-IN-HEADER")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    let id = reply.headers["x-request-id"].to_str().unwrap().to_owned();
    let logs = gw.wait_for_log(&id).await;
    let line = logs
        .lines()
        .find(|l| l.contains(&id))
        .expect("no access log line");
    assert!(line.contains("status=200"), "{line}");
    assert!(line.contains("path=/private"), "{line}");
    assert!(line.contains("method=GET"), "{line}");
    assert!(
        !logs.contains("SECRET"),
        "a secret reached the log:\n{logs}"
    );
}
