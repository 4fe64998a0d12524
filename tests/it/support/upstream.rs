//! A real upstream on 127.0.0.1:0, in the test process. It records what it received and
//! answers by path:
//! - `/slow?ms=N`: waits N ms, then 200;
//! - `/big?bytes=N`: streams N bytes in 64 KiB chunks;
//! - `/drip?chunks=N&ms=M`: N bytes `x`, one a chunk, M ms apart;
//! - `/stall?bytes=N`: promises N + 100 bytes, sends N, then nothing more (and never closes);
//! - `/upload`: counts the request body as it streams in, answers the count;
//! - `/ws`: a websocket echo (upgrade);
//! - `/no-upgrade`: refuses an upgrade with 400;
//! - anything else: 200 with a JSON echo of method, path and headers.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Path and query exactly as received.
    pub target: String,
    pub headers: HeaderMap,
    pub body_len: u64,
}

impl Seen {
    /// The one value of `name`, as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Every value of `name` as received (one per field line), in order.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap_or("<not text>"))
            .collect()
    }
}

#[derive(Clone)]
pub struct Upstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    _stop: Arc<tokio::sync::oneshot::Sender<()>>,
}

type RespBody = BoxBody<Bytes, Infallible>;

impl Upstream {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let rec = seen.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    _ = &mut stop_rx => return,
                    accepted = listener.accept() => match accepted {
                        Ok(pair) => pair,
                        Err(_) => continue,
                    },
                };
                let rec = rec.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let rec = rec.clone();
                        async move { Ok::<_, Infallible>(answer(req, rec).await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            seen,
            _stop: Arc::new(stop_tx),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn last(&self) -> Seen {
        self.seen().pop().expect("the upstream received no request")
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<RespBody> {
    let mut resp = Response::new(Full::new(body.into()).boxed());
    *resp.status_mut() = status;
    resp
}

fn query_u64(req: &Request<Incoming>, key: &str) -> u64 {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn answer(mut req: Request<Incoming>, rec: Arc<Mutex<Vec<Seen>>>) -> Response<RespBody> {
    let mut seen = Seen {
        method: req.method().to_string(),
        target: req
            .uri()
            .path_and_query()
            .map_or_else(String::new, |p| p.to_string()),
        headers: req.headers().clone(),
        body_len: 0,
    };
    let path = req.uri().path().to_owned();
    match path.as_str() {
        // A protected API that refuses whatever token it is given (RFC 6750 §3.1).
        "/revoked" => {
            rec.lock().unwrap().push(seen);
            let mut resp = full(StatusCode::UNAUTHORIZED, "token revoked");
            resp.headers_mut().insert(
                "www-authenticate",
                http::HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
            resp
        }
        "/slow" => {
            let ms = query_u64(&req, "ms");
            rec.lock().unwrap().push(seen);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            full(StatusCode::OK, "slow done")
        }
        "/big" => {
            let total = query_u64(&req, "bytes");
            rec.lock().unwrap().push(seen);
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            let stream = futures_util::stream::unfold(total, move |left| {
                let chunk = chunk.clone();
                async move {
                    if left == 0 {
                        return None;
                    }
                    let n = left.min(chunk.len() as u64);
                    let frame = Frame::data(chunk.slice(..n as usize));
                    Some((Ok::<_, Infallible>(frame), left - n))
                }
            });
            let mut resp = Response::new(BodyExt::boxed(StreamBody::new(stream)));
            resp.headers_mut()
                .insert("content-length", total.to_string().parse().unwrap());
            resp
        }
        "/drip" => {
            let (chunks, ms) = (query_u64(&req, "chunks"), query_u64(&req, "ms"));
            rec.lock().unwrap().push(seen);
            let stream = futures_util::stream::unfold(0, move |sent| async move {
                if sent == chunks {
                    return None;
                }
                if sent > 0 {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                let frame = Frame::data(Bytes::from_static(b"x"));
                Some((Ok::<_, Infallible>(frame), sent + 1))
            });
            Response::new(BodyExt::boxed(StreamBody::new(stream)))
        }
        "/stall" => {
            let bytes = query_u64(&req, "bytes");
            rec.lock().unwrap().push(seen);
            let first = Frame::data(Bytes::from(vec![b'x'; bytes as usize]));
            let stream = futures_util::stream::once(async move { Ok::<_, Infallible>(first) })
                .chain(futures_util::stream::pending());
            let mut resp = Response::new(BodyExt::boxed(StreamBody::new(stream)));
            resp.headers_mut()
                .insert("content-length", (bytes + 100).to_string().parse().unwrap());
            resp
        }
        "/upload" => {
            // `?slow`: a reader slower than any client here (a millisecond's pause after each
            // 256 KiB, at most ~250 MB/s), so a gateway that buffered would show it.
            let slow = req.uri().query() == Some("slow");
            let mut body = req.into_body();
            let mut n = 0u64;
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else {
                    // The body broke off: nothing is recorded, as a real app would not.
                    return full(StatusCode::BAD_REQUEST, "incomplete body");
                };
                if let Ok(data) = frame.into_data() {
                    let before = n / (256 * 1024);
                    n += data.len() as u64;
                    if slow && n / (256 * 1024) != before {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }
            seen.body_len = n;
            rec.lock().unwrap().push(seen);
            full(StatusCode::OK, n.to_string())
        }
        "/no-upgrade" => {
            rec.lock().unwrap().push(seen);
            full(StatusCode::BAD_REQUEST, "no upgrade here")
        }
        "/ws" => {
            rec.lock().unwrap().push(seen);
            let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
                return full(StatusCode::BAD_REQUEST, "not a websocket request");
            };
            let on_upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let Ok(upgraded) = on_upgrade.await else {
                    return;
                };
                let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    tokio_tungstenite::tungstenite::protocol::Role::Server,
                    None,
                )
                .await;
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() || msg.is_binary() {
                        if ws.send(msg).await.is_err() {
                            break;
                        }
                    } else if msg.is_close() {
                        break;
                    }
                }
            });
            let accept =
                tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-accept", accept)
                .body(Full::new(Bytes::new()).boxed())
                .unwrap()
        }
        _ => {
            let mut body = req.into_body();
            let mut n = 0u64;
            while let Some(Ok(frame)) = body.frame().await {
                if let Ok(data) = frame.into_data() {
                    n += data.len() as u64;
                }
            }
            seen.body_len = n;
            let headers: serde_json::Map<String, serde_json::Value> = seen
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        serde_json::Value::String(String::from_utf8_lossy(v.as_bytes()).into()),
                    )
                })
                .collect();
            let json = serde_json::json!({
                "method": seen.method,
                "target": seen.target,
                "headers": headers,
                "body_len": n,
            });
            rec.lock().unwrap().push(seen);
            let mut resp = full(StatusCode::OK, json.to_string());
            resp.headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            resp
        }
    }
}
