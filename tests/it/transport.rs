//! The connection layer as a client and an operator notice it: bodies of any size stream without
//! the gateway's memory growing, websockets and HTTP/2 (cleartext and TLS) work, TLS upstreams
//! are verified against the configured CA, shutdown lets in-flight requests finish (but not
//! forever), and running out of file descriptors is survived.

// Fixtures here are test code outside `#[test]` functions, which clippy's test exemptions miss.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test fixtures: a broken fixture must fail the test loudly"
)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

use crate::support::upstream::Upstream;
use crate::support::{Gateway, TempDir, get, rss_kib, signal, wait_exit};

const GIB: u64 = 1024 * 1024 * 1024;
const MIB: u64 = 1024 * 1024;
/// How much the gateway's resident memory may grow while a 1 GiB body passes through it.
const MAX_RSS_GROWTH_KIB: u64 = 32 * 1024;

fn one_upstream(url: &str) -> String {
    format!("[[upstreams]]\nurl = \"{url}\"\n")
}

/// Samples a process's RSS every 20 ms on its own thread until dropped; remembers the maximum.
struct RssSampler {
    max_kib: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    fn start(pid: u32) -> Self {
        let max_kib = Arc::new(AtomicU64::new(rss_kib(pid)));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (max_kib, stop) = (max_kib.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    max_kib.fetch_max(rss_kib(pid), Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        };
        Self {
            max_kib,
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.max_kib.load(Ordering::SeqCst)
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// RSS after a small request went through, so that the first connection's buffers, the
/// upstream pool and the allocator's arenas are already counted in the baseline.
async fn warmed_up_baseline(gw: &Gateway) -> u64 {
    for _ in 0..2 {
        let reply = get(&gw.url("/big?bytes=4194304")).await;
        assert_eq!(reply.body.len() as u64, 4 * MIB);
    }
    rss_kib(gw.pid())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1_gib_download_streams_to_a_slow_reader_without_buffering() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&one_upstream(&up.url()));
    let baseline = warmed_up_baseline(&gw).await;
    let sampler = RssSampler::start(gw.pid());
    let started = Instant::now();

    let transfer = async {
        let stream = TcpStream::connect(gw.addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let resp = sender
            .send_request(
                Request::get(format!("/big?bytes={GIB}"))
                    .header("host", gw.addr.to_string())
                    .body(Empty::<Bytes>::new())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-length"], GIB.to_string().as_str());
        let mut body = resp.into_body();
        // A reader that does not read at all for a while: everything the upstream sends in
        // that time has to wait somewhere, and it must not be in the gateway's memory.
        tokio::time::sleep(Duration::from_secs(2)).await;
        // Then it reads the first 64 MiB at about 10 MiB/s, then as fast as it can.
        let mut received = 0u64;
        let mut next_pause = MIB;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                received += data.len() as u64;
                if received >= next_pause && received <= 64 * MIB {
                    next_pause += MIB;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        received
    };
    let received = tokio::time::timeout(Duration::from_secs(240), transfer)
        .await
        .expect("the 1 GiB download took more than 240 s");
    let max = sampler.finish();
    let growth = max.saturating_sub(baseline);
    eprintln!(
        "1 GiB download: {:.1} s, RSS baseline {baseline} KiB, max {max} KiB, growth {growth} KiB",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(received, GIB, "not every byte arrived");
    assert!(
        growth < MAX_RSS_GROWTH_KIB,
        "the gateway's RSS grew by {growth} KiB while streaming 1 GiB to a slow reader"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1_gib_upload_streams_to_a_slow_upstream_without_buffering() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&one_upstream(&up.url()));
    let baseline = warmed_up_baseline(&gw).await;
    let sampler = RssSampler::start(gw.pid());
    let started = Instant::now();

    let chunk = Bytes::from(vec![b'u'; 64 * 1024]);
    let chunks = GIB / chunk.len() as u64;
    let stream = futures_util::stream::iter(0..chunks)
        .map(move |_| Ok::<_, Infallible>(Frame::data(chunk.clone())));
    // No content-length: the body goes out chunked, as a client streaming a file would send it,
    // faster than the upstream reads it.
    let req = Request::post(gw.url("/upload?slow"))
        .body(StreamBody::new(stream))
        .unwrap();
    let transfer = async {
        let client = Client::builder(TokioExecutor::new()).build_http();
        let resp = client.request(req).await.unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    };
    let (status, body) = tokio::time::timeout(Duration::from_secs(240), transfer)
        .await
        .expect("the 1 GiB upload took more than 240 s");
    let max = sampler.finish();
    let growth = max.saturating_sub(baseline);
    eprintln!(
        "1 GiB upload: {:.1} s, RSS baseline {baseline} KiB, max {max} KiB, growth {growth} KiB",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(status, 200);
    assert_eq!(body, GIB.to_string(), "the upstream's count of the body");
    assert_eq!(up.last().body_len, GIB);
    assert!(
        growth < MAX_RSS_GROWTH_KIB,
        "the gateway's RSS grew by {growth} KiB while streaming a 1 GiB upload"
    );
}

#[tokio::test]
async fn websocket_echo_through_the_gateway() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&one_upstream(&up.url()));
    let exchange = async {
        let stream = TcpStream::connect(gw.addr).await.unwrap();
        let (mut ws, resp) =
            tokio_tungstenite::client_async(format!("ws://{}/ws", gw.addr), stream)
                .await
                .unwrap();
        assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);

        ws.send(Message::text("hello through the gateway"))
            .await
            .unwrap();
        let echoed = ws.next().await.unwrap().unwrap();
        assert_eq!(echoed, Message::text("hello through the gateway"));

        let binary: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
        ws.send(Message::binary(binary.clone())).await.unwrap();
        let echoed = ws.next().await.unwrap().unwrap();
        assert_eq!(echoed, Message::binary(binary));

        // Several in a row keep their order.
        for i in 0..10 {
            ws.send(Message::text(format!("message {i}")))
                .await
                .unwrap();
        }
        for i in 0..10 {
            let echoed = ws.next().await.unwrap().unwrap();
            assert_eq!(echoed, Message::text(format!("message {i}")));
        }
        ws.close(None).await.unwrap();
    };
    tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .expect("the websocket exchange took more than 30 s");

    let seen = up.last();
    assert_eq!(seen.target, "/ws");
    assert_eq!(seen.headers["upgrade"], "websocket");
    let connection = seen.headers["connection"].to_str().unwrap().to_lowercase();
    assert!(connection.contains("upgrade"), "connection: {connection:?}");
    assert!(seen.headers.contains_key("sec-websocket-key"));
}

/// An upstream speaking raw bytes, to see exactly what went over the wire: it records each
/// request head and answers `200 ok`, closing the connection.
async fn raw_upstream() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads: Arc<Mutex<Vec<String>>> = Arc::default();
    let rec = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let rec = rec.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                rec.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&head).into_owned());
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (addr, heads)
}

#[tokio::test]
async fn http2_prior_knowledge_client_is_served() {
    let (up_addr, heads) = raw_upstream().await;
    let gw = Gateway::start(&one_upstream(&format!("http://{up_addr}")));
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let exchange = async {
        let resp = client
            .request(
                // Split over two fields, as browsers do on HTTP/2 (RFC 9113 §8.2.3).
                Request::get(gw.url("/h2c/items?page=2"))
                    .header("cookie", "theme=dark")
                    .header("cookie", "lang=en; csrf=t0k3n")
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
            .await
            .unwrap();
        let version = resp.version();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (version, status, body)
    };
    let (version, status, body) = tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .expect("the h2c request took more than 30 s");
    assert_eq!(status, 200);
    assert_eq!(version, Version::HTTP_2);
    assert_eq!(&body[..], b"ok");

    let heads = heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 1, "{heads:?}");
    let head = heads[0].to_lowercase();
    assert!(
        head.starts_with("get /h2c/items?page=2 http/1.1\r\n"),
        "the upstream leg is not HTTP/1.1 with the client's path: {head:?}"
    );
    assert!(
        head.contains(&format!("\r\nhost: {}\r\n", gw.addr)),
        "the upstream did not get the client's authority as Host: {head:?}"
    );
    // An HTTP/1.1 app gets the cookies joined in one field, in order.
    assert_eq!(head.matches("\r\ncookie:").count(), 1, "{head:?}");
    assert!(
        head.contains("\r\ncookie: theme=dark; lang=en; csrf=t0k3n\r\n"),
        "{head:?}"
    );
}

struct SelfSigned {
    cert_pem: String,
    key_pem: String,
    cert_der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

fn self_signed_localhost() -> SelfSigned {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    SelfSigned {
        cert_pem: ck.cert.pem(),
        key_pem: ck.signing_key.serialize_pem(),
        cert_der: ck.cert.der().clone(),
        key_der: ck.signing_key.serialize_der(),
    }
}

fn tls_client(trusted: &CertificateDer<'static>, alpn: &[u8]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trusted.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

async fn tls_connect(
    addr: SocketAddr,
    trusted: &CertificateDer<'static>,
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = tls_client(trusted, alpn)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        Some(alpn),
        "the gateway did not agree to {:?}",
        String::from_utf8_lossy(alpn)
    );
    tls
}

#[tokio::test]
async fn tls_with_alpn_h2_and_http1_are_served() {
    let up = Upstream::start().await;
    let dir = TempDir::new("tls");
    let cert = self_signed_localhost();
    let cert_file = dir.write("cert.pem", &cert.cert_pem);
    let key_file = dir.write("key.pem", &cert.key_pem);
    let gw = Gateway::start(&format!(
        "[server]\n[server.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n{}",
        cert_file.display(),
        key_file.display(),
        one_upstream(&up.url())
    ));

    let h2 = async {
        let tls = tls_connect(gw.addr, &cert.cert_der, b"h2").await;
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        let resp = sender
            .send_request(
                Request::get(format!("https://localhost:{}/over-h2", gw.addr.port()))
                    .body(Empty::<Bytes>::new())
                    .unwrap(),
            )
            .await
            .unwrap();
        let version = resp.version();
        let status = resp.status();
        resp.into_body().collect().await.unwrap();
        (version, status)
    };
    let (version, status) = tokio::time::timeout(Duration::from_secs(30), h2)
        .await
        .expect("the h2 request took more than 30 s");
    assert_eq!(status, 200);
    assert_eq!(version, Version::HTTP_2);
    let seen = up.last();
    assert_eq!(seen.target, "/over-h2");
    assert_eq!(seen.headers["x-forwarded-proto"], "https");

    let h1 = async {
        let tls = tls_connect(gw.addr, &cert.cert_der, b"http/1.1").await;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        let resp = sender
            .send_request(
                Request::get("/over-http1")
                    .header("host", format!("localhost:{}", gw.addr.port()))
                    .body(Empty::<Bytes>::new())
                    .unwrap(),
            )
            .await
            .unwrap();
        let version = resp.version();
        let status = resp.status();
        resp.into_body().collect().await.unwrap();
        (version, status)
    };
    let (version, status) = tokio::time::timeout(Duration::from_secs(30), h1)
        .await
        .expect("the HTTP/1.1 over TLS request took more than 30 s");
    assert_eq!(status, 200);
    assert_eq!(version, Version::HTTP_11);
    let seen = up.last();
    assert_eq!(seen.target, "/over-http1");
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
}

/// An HTTPS upstream on 127.0.0.1 with a self-signed certificate for `localhost`, answering
/// every request with 200 "tls upstream".
async fn tls_upstream(cert: &SelfSigned) -> SocketAddr {
    tls_upstream_requiring(cert, None).await
}

/// The same, refusing the TLS handshake unless the client shows a certificate issued by
/// `client_ca` (mutual TLS), when given.
async fn tls_upstream_requiring(
    cert: &SelfSigned,
    client_ca: Option<&CertificateDer<'static>>,
) -> SocketAddr {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.clone()).unwrap();
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(
            vec![cert.cert_der.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key_der.clone())),
        )
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service = service_fn(|_req| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                        b"tls upstream",
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn https_upstream_with_a_custom_ca_bundle() {
    let cert = self_signed_localhost();
    let up_addr = tls_upstream(&cert).await;
    let dir = TempDir::new("upstream-ca");
    let ca_file = dir.write("ca.pem", &cert.cert_pem);
    let url = format!("https://localhost:{}", up_addr.port());

    let trusting = Gateway::start(&format!(
        "[[upstreams]]\nurl = \"{url}\"\ntls_ca_file = \"{}\"\n",
        ca_file.display()
    ));
    let reply = get(&trusting.url("/")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), "tls upstream");

    // The same upstream checked against the system roots: its self-signed certificate is not
    // trusted, and the gateway says so with 502 instead of passing the request along.
    let system_roots = Gateway::start(&one_upstream(&url));
    let reply = get(&system_roots.url("/")).await;
    assert_eq!(reply.status, 502, "{}", reply.text());
    assert_ne!(reply.text(), "tls upstream");
}

/// Issue 10 point 4, "optional client certificate": an upstream that demands mutual TLS gets
/// the certificate configured for it, and without one the gateway answers 502.
#[tokio::test]
async fn an_https_upstream_demanding_a_client_certificate_gets_the_configured_one() {
    let server = self_signed_localhost();
    let client = rcgen::generate_simple_self_signed(vec!["gatehouse-client".to_owned()]).unwrap();
    let up_addr = tls_upstream_requiring(&server, Some(client.cert.der())).await;
    let dir = TempDir::new("upstream-mtls");
    let ca_file = dir.write("ca.pem", &server.cert_pem);
    let cert_file = dir.write("client.pem", &client.cert.pem());
    let key_file = dir.write("client-key.pem", &client.signing_key.serialize_pem());
    let upstream = format!(
        "[[upstreams]]\nurl = \"https://localhost:{}\"\ntls_ca_file = \"{}\"\n",
        up_addr.port(),
        ca_file.display()
    );

    let with_cert = Gateway::start(&format!(
        "{upstream}tls_client_cert_file = \"{}\"\ntls_client_key_file = \"{}\"\n",
        cert_file.display(),
        key_file.display()
    ));
    let reply = get(&with_cert.url("/")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), "tls upstream");

    let without = Gateway::start(&upstream);
    let reply = get(&without.url("/")).await;
    assert_eq!(reply.status, 502, "{}", reply.text());
}

/// Waits (at most `deadline`) until `up` has received `n` requests.
async fn until_upstream_saw(up: &Upstream, n: usize, deadline: Duration) {
    let start = Instant::now();
    while up.count() < n {
        assert!(
            start.elapsed() < deadline,
            "the upstream saw {} requests, expected {n}",
            up.count()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_an_in_flight_request() {
    let up = Upstream::start().await;
    let mut gw = Gateway::start(&format!(
        "[server]\nshutdown_timeout = \"5s\"\n{}",
        one_upstream(&up.url())
    ));
    let addr = gw.addr;
    let url = gw.url("/slow?ms=1500");
    let in_flight = tokio::spawn(async move { get(&url).await });
    until_upstream_saw(&up, 1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let signalled = Instant::now();
    signal(gw.pid(), "TERM");

    let reply = tokio::time::timeout(Duration::from_secs(10), in_flight)
        .await
        .expect("the in-flight request did not finish")
        .unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "slow done");

    let status = tokio::task::spawn_blocking(move || {
        let status = wait_exit(&mut gw.child, Duration::from_secs(5 + 3));
        (status, gw)
    });
    let (status, gw) = status.await.unwrap();
    let status = status.expect("the gateway did not exit within shutdown_timeout + 3 s");
    assert!(
        status.success(),
        "exit status {status:?}; logs:\n{}",
        gw.logs()
    );
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "exiting took {:?} although the only request finished after ~1.2 s",
        signalled.elapsed()
    );
    let after = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .unwrap();
    assert!(
        after.is_err(),
        "a new connection was accepted after the gateway exited"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_deadline_cuts_off_requests_that_take_too_long() {
    let up = Upstream::start().await;
    let mut gw = Gateway::start(&format!(
        "[server]\nshutdown_timeout = \"500ms\"\n{}",
        one_upstream(&up.url())
    ));
    let in_flight = tokio::spawn(tokio::time::timeout(
        Duration::from_secs(30),
        crate::support::client().request(
            Request::get(gw.url("/slow?ms=10000"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        ),
    ));
    until_upstream_saw(&up, 1, Duration::from_secs(10)).await;
    let signalled = Instant::now();
    signal(gw.pid(), "TERM");
    let (status, gw) = tokio::task::spawn_blocking(move || {
        let status = wait_exit(&mut gw.child, Duration::from_secs(3));
        (status, gw)
    })
    .await
    .unwrap();
    let status = status.expect("the gateway was still running 3 s after SIGTERM");
    assert!(
        status.success(),
        "exit status {status:?}; logs:\n{}",
        gw.logs()
    );
    let took = signalled.elapsed();
    assert!(took < Duration::from_secs(3), "exiting took {took:?}");
    let result = in_flight.await.unwrap().expect("the client hung");
    assert!(
        result.is_err(),
        "the cut-off request got a response: {:?}",
        result.map(|r| r.status())
    );
    let logs = gw.wait_for_log("shutdown deadline reached").await;
    assert!(logs.contains("shutdown deadline reached"), "logs:\n{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_errors_from_running_out_of_file_descriptors_are_survived() {
    let up = Upstream::start().await;
    let mut gw = Gateway::start_with_fd_limit(&one_upstream(&up.url()), 64);
    let addr = gw.addr;

    // Hold more connections than the gateway may have descriptors: some accepts fail.
    let mut held = Vec::new();
    for _ in 0..100 {
        let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
            .await
            .expect("connect hung")
            .unwrap();
        held.push(stream);
    }
    let start = Instant::now();
    while !gw.logs().contains("out of file descriptors") {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no accept error was logged; logs:\n{}",
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(held);

    let reply = get(&gw.url("/after-emfile")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(up.last().target, "/after-emfile");
    assert!(
        gw.child.try_wait().unwrap().is_none(),
        "the gateway exited; logs:\n{}",
        gw.logs()
    );
}
