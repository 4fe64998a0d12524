//! Prometheus metrics: served on their own listener only (rule 37), counting what an operator
//! watches — answers by status, authentication outcomes, the provider's readiness.

use std::net::SocketAddr;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::support::world::World;
use crate::support::{Gateway, Reply, get, get_with, parse_address, send};

const CONFIG: &str = "[bearer]\nenabled = true\naudiences = [\"gatehouse\"]\n\n\
                      [metrics]\nlisten = \"127.0.0.1:0\"\n\n\
                      [[routes]]\npath_prefix = \"/metrics\"\npolicy = \"public\"\n";

async fn call(url: &str, authorization: Option<&str>) -> Reply {
    let mut headers = vec![("accept", "application/json")];
    headers.extend(authorization.map(|value| ("authorization", value)));
    get_with(url, &headers).await
}

/// Where `gw` serves its metrics, as it logged at start.
async fn metrics_addr(gw: &Gateway) -> SocketAddr {
    gw.wait_for_log("metrics at /metrics")
        .await
        .lines()
        .find(|l| l.contains("metrics at /metrics"))
        .and_then(parse_address)
        .expect("the metrics address is logged")
}

/// The value of the sample `name` (with its labels, as exposed), `None` when absent.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_live_on_their_own_listener_and_count_answers_and_authentications() {
    let world = World::start(CONFIG).await;
    let metrics_addr = metrics_addr(&world.gw).await;
    assert_ne!(metrics_addr, world.gw.addr);
    let scrape = format!("http://{metrics_addr}/metrics");

    // Rule 37: on the public listener `/metrics` is the app's path like any other.
    let public = get(&world.gw.url("/metrics")).await;
    assert_eq!(public.status, 200);
    assert_eq!(world.app.last().target, "/metrics");
    assert!(!public.text().contains("gatehouse_requests_total"));

    let token = world.service_token().await;
    let ok = call(&world.gw.url("/api"), Some(&format!("Bearer {token}"))).await;
    assert_eq!(ok.status, 200);
    let anonymous = call(&world.gw.url("/api"), None).await;
    assert_eq!(anonymous.status, 401);
    let forged = call(
        &world.gw.url("/api"),
        Some("Bearer eyJhbGciOiJub25lIn0.e30.x"),
    )
    .await;
    assert_eq!(forged.status, 401);
    assert_eq!(
        world.app.count(),
        2,
        "only the public path and the good token got through"
    );

    let reply = get(&scrape).await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = reply.text();
    // The readiness probe of the harness is counted too, so 200s are at least the two above.
    assert!(sample(&text, "gatehouse_requests_total{code=\"200\"}").unwrap() >= 2.0);
    assert_eq!(
        sample(&text, "gatehouse_requests_total{code=\"401\"}"),
        Some(2.0)
    );
    for (outcome, n) in [
        ("token", 1.0),
        ("anonymous", 1.0),
        ("refused", 1.0),
        ("session", 0.0),
    ] {
        let name = format!("gatehouse_authentications_total{{outcome=\"{outcome}\"}}");
        assert_eq!(sample(&text, &name), Some(n), "{name} in\n{text}");
    }
    assert_eq!(
        sample(&text, "gatehouse_upstream_duration_seconds_count"),
        Some(2.0)
    );
    assert!(sample(&text, "gatehouse_request_duration_seconds_count").unwrap() >= 4.0);
    assert_eq!(sample(&text, "gatehouse_provider_ready"), Some(1.0));
    assert_eq!(sample(&text, "gatehouse_refresh_grants_total"), Some(0.0));
    assert!(text.contains("gatehouse_build_info{version=\""), "{text}");
    // Nothing identifying a caller or a credential is exposed.
    assert!(!text.contains(&token));
    assert!(!text.contains("user="), "no per-user labels");

    // The metrics listener serves nothing else, and only reads.
    assert_eq!(get(&format!("http://{metrics_addr}/")).await.status, 404);
    let post = send(
        Request::post(&scrape)
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(post.status, 405);
    assert_eq!(post.headers["allow"], "GET, HEAD");
}

/// Workers keep a connection for its whole life, so how connections are spread decides how
/// work is: 40 keep-alive connections opened one after another end up 20 and 20 on two
/// workers. (The kernel's `SO_REUSEPORT` hash alone splits them evenly about one time in
/// eight; a load balancer's handful of connections could all land on one worker.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_spread_evenly_over_the_workers() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = Gateway::start(
        "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 2\n\n\
         [metrics]\nlisten = \"127.0.0.1:0\"\n\n\
         [[upstreams]]\nurl = \"http://127.0.0.1:9\"\n",
    );
    let metrics_addr = metrics_addr(&gw).await;
    let mut open = Vec::new();
    for _ in 0..40 {
        let mut conn = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        conn.write_all(b"GET /healthz HTTP/1.1\r\nhost: gw\r\n\r\n")
            .await
            .unwrap();
        // The answer proves the connection was accepted and placed before the next one.
        let mut buf = [0u8; 512];
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), conn.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        open.push(conn);
    }
    let text = get(&format!("http://{metrics_addr}/metrics")).await.text();
    for worker in ["0", "1"] {
        let name = format!("gatehouse_open_connections{{worker=\"{worker}\"}}");
        assert_eq!(sample(&text, &name), Some(20.0), "{name} in\n{text}");
    }
    // Closed connections are counted down.
    drop(open);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while open_connections(metrics_addr).await != 0.0 {
        assert!(std::time::Instant::now() < deadline, "never counted down");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Open connections over all workers, as the metrics say.
async fn open_connections(metrics: SocketAddr) -> f64 {
    let text = get(&format!("http://{metrics}/metrics")).await.text();
    (0..4)
        .filter_map(|w| {
            sample(
                &text,
                &format!("gatehouse_open_connections{{worker=\"{w}\"}}"),
            )
        })
        .sum()
}

/// A websocket outlives hyper's part of its connection (the tunnel takes the socket over):
/// it still counts as an open connection of its worker until it closes, so long-lived
/// websockets weigh on where new connections go.
#[tokio::test]
async fn a_websocket_counts_as_open_until_it_closes() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let up = crate::support::upstream::Upstream::start().await;
    let gw = Gateway::start(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 2\n\n\
         [metrics]\nlisten = \"127.0.0.1:0\"\n\n\
         [[upstreams]]\nurl = \"{}\"\n",
        up.url()
    ));
    let metrics = metrics_addr(&gw).await;
    let stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async(format!("ws://{}/ws", gw.addr), stream)
        .await
        .unwrap();
    assert_eq!(resp.status(), http::StatusCode::SWITCHING_PROTOCOLS);
    ws.send(Message::text("ping")).await.unwrap();
    let echoed = tokio::time::timeout(std::time::Duration::from_secs(10), ws.next())
        .await
        .expect("the echo took more than 10 s");
    assert_eq!(echoed.unwrap().unwrap(), Message::text("ping"));
    assert_eq!(
        open_connections(metrics).await,
        1.0,
        "the tunnel is counted"
    );
    ws.close(None).await.unwrap();
    drop(ws);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while open_connections(metrics).await != 0.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the tunnel's count never went"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Requests hyper's parser refuses and answers itself (a malformed head, the ambiguous framing
/// of rules 19 and 26, a head too large) never reach a step: each still gets an access-log
/// line and is counted, so a client's 400 or 431 is something an operator can find.
#[tokio::test]
async fn requests_the_parser_refuses_are_logged_and_counted() {
    use std::time::Duration;

    use crate::support::raw_exchange;
    use crate::support::upstream::Upstream;

    let up = Upstream::start().await;
    let gw = Gateway::start(&format!(
        "[metrics]\nlisten = \"127.0.0.1:0\"\n\n[[upstreams]]\nurl = \"{}\"\n",
        up.url()
    ));
    let scrape = format!("http://{}/metrics", metrics_addr(&gw).await);
    let malformed = b"GET / HTTP/1.1\r\nHost: app\r\nnot a header line\r\n\r\n".to_vec();
    let smuggled =
        b"POST / HTTP/1.1\r\nHost: app\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            .to_vec();
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: app\r\nX-Big: {}\r\n\r\n",
        "a".repeat(200_000)
    )
    .into_bytes();
    for (request, status) in [(malformed, 400), (smuggled, 400), (huge, 431)] {
        let answer = raw_exchange(gw.addr, &request, Duration::from_secs(5)).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{answer}"
        );
    }
    assert_eq!(up.count(), 0, "a refused request reached the upstream");

    let logs = gw.wait_for_log("status=431").await;
    let refused: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("route=\"unparsed\""))
        .collect();
    assert_eq!(refused.len(), 3, "one access-log line each:\n{logs}");
    assert_eq!(
        refused.iter().filter(|l| l.contains("status=400")).count(),
        2
    );
    assert!(
        refused.iter().all(|l| l.contains("peer=127.0.0.1")),
        "{logs}"
    );
    let text = get(&scrape).await.text();
    assert_eq!(
        sample(&text, "gatehouse_requests_total{code=\"400\"}"),
        Some(2.0)
    );
    assert_eq!(
        sample(&text, "gatehouse_requests_total{code=\"431\"}"),
        Some(1.0)
    );
}

/// Issue 12 point 1, "a hot token costs no signature check": forty requests with one token
/// are one full verification; with the cache off (`cache_entries = 0`) each request is one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_bearer_token_is_verified_once_and_every_time_without_the_cache() {
    for (extra, expected) in [("", 1.0), ("cache_entries = 0\n", 40.0)] {
        let world = World::start(&CONFIG.replace(
            "[bearer]\nenabled = true\n",
            &format!("[bearer]\nenabled = true\n{extra}"),
        ))
        .await;
        let scrape = format!("http://{}/metrics", metrics_addr(&world.gw).await);
        let token = world.service_token().await;
        let bearer = format!("Bearer {token}");
        for _ in 0..40 {
            assert_eq!(call(&world.gw.url("/api"), Some(&bearer)).await.status, 200);
        }
        let text = get(&scrape).await.text();
        assert_eq!(
            sample(&text, "gatehouse_bearer_jwt_checks_total"),
            Some(expected),
            "with {extra:?}"
        );
    }
}
