//! The floor for `benches/load.sh`: the smallest reverse proxy the gateway's own crates make,
//! with none of the gateway in it. hyper's HTTP/1 server and client, tokio, one
//! single-threaded event loop per core on its own `SO_REUSEPORT` socket, and a LIFO pool of
//! keep-alive upstream connections per worker: the same shape as `gatehouse run`, without
//! routing, header rules, timeouts, framing checks or logging. Whatever the gateway costs above
//! this is the gateway's; what this costs above nginx is the stack's.
//!
//! `cargo run --release --example bare_proxy -- LISTEN UPSTREAM` (both `127.0.0.1:PORT`).
//! Not a product: it forwards any request to one upstream and checks nothing.

use std::cell::RefCell;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::rc::Rc;

use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

// The gateway's allocator, so the two differ only in the work they do.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Body = UnsyncBoxBody<Bytes, hyper::Error>;
type Pool = Rc<RefCell<Vec<SendRequest<Incoming>>>>;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: bare_proxy LISTEN UPSTREAM (127.0.0.1:PORT each)";
    let listen: SocketAddr = args.next().ok_or(usage)?.parse()?;
    let upstream: SocketAddr = args.next().ok_or(usage)?.parse()?;
    let workers = std::thread::available_parallelism().map_or(1, usize::from);
    let threads: Vec<_> = (0..workers)
        .map(|_| std::thread::spawn(move || worker(listen, upstream)))
        .collect();
    for t in threads {
        t.join().map_err(|_| "a worker panicked")??;
    }
    Ok(())
}

fn worker(listen: SocketAddr, upstream: SocketAddr) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.set_reuseport(true)?;
        socket.bind(listen)?;
        let listener: TcpListener = socket.listen(1024)?;
        let pool: Pool = Rc::default();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let pool = pool.clone();
            tokio::task::spawn_local(async move {
                let service = service_fn(move |req| forward(req, pool.clone(), upstream));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

async fn forward(
    req: Request<Incoming>,
    pool: Pool,
    upstream: SocketAddr,
) -> Result<Response<Body>, Infallible> {
    let idle = pool.borrow_mut().pop();
    let mut sender = match idle {
        Some(sender) if sender.is_ready() => sender,
        _ => match connect(upstream).await {
            Some(sender) => sender,
            None => return Ok(bad_gateway()),
        },
    };
    match sender.send_request(req).await {
        Ok(resp) => {
            if sender.is_ready() {
                pool.borrow_mut().push(sender);
            } else {
                tokio::task::spawn_local(async move {
                    if sender.ready().await.is_ok() {
                        pool.borrow_mut().push(sender);
                    }
                });
            }
            Ok(resp.map(BodyExt::boxed_unsync))
        }
        Err(_) => Ok(bad_gateway()),
    }
}

async fn connect(upstream: SocketAddr) -> Option<SendRequest<Incoming>> {
    let stream = TcpStream::connect(upstream).await.ok()?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::task::spawn_local(conn);
    Some(sender)
}

fn bad_gateway() -> Response<Body> {
    let mut resp = Response::new(
        Full::new(Bytes::from_static(b"bad gateway"))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *resp.status_mut() = StatusCode::BAD_GATEWAY;
    resp
}
