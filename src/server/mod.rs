//! Accept: the first step of every request. Owns the listener (TCP, optionally TLS with rustls),
//! speaks HTTP/1.1 and HTTP/2 (ALPN on TLS, prior knowledge on cleartext), enforces the
//! connection-level limits (header size, header count, header read time), refuses ambiguous
//! request framing before hyper parses it (`framing.rs`), survives accept errors and drains
//! in-flight requests on shutdown. It hands every request to [`Gateway::handle`] and knows
//! nothing about routing, authentication or upstreams.

mod balance;
mod framing;
mod inbound;
pub(crate) mod timer;

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_rustls::TlsAcceptor;

use self::balance::{Balancer, Handoff, Open};
use self::framing::Tracker;
use self::inbound::Inbound;
use self::timer::CoarseTimer;
use crate::config::{Config, TlsConfig};
use crate::context::ConnInfo;
use crate::gateway::{Gateway, Shared};
use crate::telemetry::metrics::{self, Metrics};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("TLS configuration for {cert_file} is not usable: {source}")]
    Tls {
        cert_file: String,
        #[source]
        source: rustls::Error,
    },
    #[error(transparent)]
    Gateway(#[from] crate::gateway::BuildError),
}

/// A bound, not yet serving, gateway. Binding first lets callers learn the address (port 0 in
/// tests, the demo banner) before any request arrives.
///
/// The gateway runs thread-per-core, like nginx's workers: each worker thread has its own
/// single-threaded event loop, its own listening socket (`SO_REUSEPORT`, so the kernel spreads
/// connections) and its own [`Gateway`] with its own upstream connection pools. A request and its
/// upstream exchange stay on one thread; cross-thread wake-ups were most of the CPU a
/// work-stealing runtime spent per proxied request (profiled with `perf`, see the README).
pub struct Server {
    workers: Vec<Worker>,
    local_addr: SocketAddr,
    tls: Option<TlsAcceptor>,
    config: Arc<Config>,
    shared: Arc<Shared>,
    /// `[metrics] listen`, bound: a separate socket, never the public one (rule 37).
    metrics: Option<(std::net::TcpListener, Arc<Metrics>)>,
}

struct Worker {
    listener: std::net::TcpListener,
    gateway: Gateway,
}

impl Server {
    /// Builds the gateway from `config` and binds one listening socket per worker.
    pub async fn bind(config: Config) -> Result<Self, ServeError> {
        let count = worker_count(&config);
        let addr = config.server.listen;
        let bind_err = |source| ServeError::Bind { addr, source };
        // A plain bind first: with SO_REUSEPORT alone, a second gatehouse started on the same
        // port would silently share it instead of failing with "address in use".
        let probe = std::net::TcpListener::bind(addr).map_err(bind_err)?;
        let local_addr = probe.local_addr().map_err(bind_err)?;
        if count == 1 {
            return Self::with_listeners(config, vec![probe], local_addr);
        }
        drop(probe);
        let listeners = (0..count)
            .map(|_| reuseport_listener(local_addr))
            .collect::<Result<_, _>>()?;
        Self::with_listeners(config, listeners, local_addr)
    }

    /// Builds the gateway on a listener the caller already bound (the demo binds first so its
    /// provider knows the gateway's real address before the configuration exists). Workers
    /// share that one socket.
    pub fn from_listener(config: Config, listener: TcpListener) -> Result<Self, ServeError> {
        let addr = config.server.listen;
        let bind_err = |source| ServeError::Bind { addr, source };
        let local_addr = listener.local_addr().map_err(bind_err)?;
        let first = listener.into_std().map_err(bind_err)?;
        let mut listeners = Vec::new();
        for _ in 1..worker_count(&config) {
            listeners.push(first.try_clone().map_err(bind_err)?);
        }
        listeners.push(first);
        Self::with_listeners(config, listeners, local_addr)
    }

    fn with_listeners(
        config: Config,
        listeners: Vec<std::net::TcpListener>,
        local_addr: SocketAddr,
    ) -> Result<Self, ServeError> {
        let config = Arc::new(config);
        let shared = Shared::start(&config)?;
        let tls = match &config.server.tls {
            Some(tls) => Some(tls_acceptor(tls, config.server.http2)?),
            None => None,
        };
        let workers = listeners
            .into_iter()
            .map(|listener| {
                Ok(Worker {
                    listener,
                    gateway: Gateway::new(config.clone(), &shared)?,
                })
            })
            .collect::<Result<_, ServeError>>()?;
        let metrics = match (&config.metrics, shared.metrics()) {
            (Some(m), Some(metrics)) => {
                let addr = m.listen;
                let bind_err = |source| ServeError::Bind { addr, source };
                let listener = std::net::TcpListener::bind(addr).map_err(bind_err)?;
                listener.set_nonblocking(true).map_err(bind_err)?;
                Some((listener, metrics.clone()))
            }
            _ => None,
        };
        Ok(Self {
            workers,
            local_addr,
            tls,
            config,
            shared,
            metrics,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Whether the gateway can do its job yet (what `/readyz` answers): the provider's metadata
    /// and keys are loaded, or there is no provider. The returned check stays usable after
    /// [`Server::run`] takes the server, so a caller can wait for readiness while it serves.
    pub fn ready_check(&self) -> impl Fn() -> bool + Send + Sync + 'static {
        let shared = self.shared.clone();
        move || shared.ready()
    }

    /// Where `/metrics` is served, when `[metrics]` is configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics
            .as_ref()
            .and_then(|(listener, _)| listener.local_addr().ok())
    }

    /// Serves until `shutdown` completes, then every worker stops accepting, lets in-flight
    /// requests finish for up to `server.shutdown_timeout`, and this returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let (balancer, handed) = Balancer::new(self.workers.len());
        let balancer = Arc::new(balancer);
        if let Some((listener, metrics)) = self.metrics {
            match TcpListener::from_std(listener) {
                Ok(listener) => {
                    let shared = self.shared.clone();
                    let balancer = balancer.clone();
                    let mut stop = stop_rx.clone();
                    tokio::spawn(metrics::serve(
                        listener,
                        metrics,
                        Arc::new(move || {
                            let mut snapshot = shared.snapshot();
                            snapshot.open_connections = balancer.counts();
                            snapshot
                        }),
                        async move {
                            let _ = stop.wait_for(|stop| *stop).await;
                        },
                    ));
                }
                Err(err) => tracing::error!(error = %err, "metrics listener unusable"),
            }
        }
        let mut finished = Vec::new();
        for ((n, worker), handed) in self.workers.into_iter().enumerate().zip(handed) {
            let balancer = balancer.clone();
            let (done_tx, done_rx) = oneshot::channel::<()>();
            let stop = stop_rx.clone();
            let tls = self.tls.clone();
            let config = self.config.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("gatehouse-worker-{n}"))
                .spawn(move || {
                    match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(runtime) => {
                            runtime.block_on(worker.serve(n, balancer, handed, tls, &config, stop))
                        }
                        Err(err) => tracing::error!(error = %err, "worker {n} could not start"),
                    }
                    let _ = done_tx.send(());
                });
            match spawned {
                Ok(_) => finished.push(done_rx),
                Err(err) => tracing::error!(error = %err, "worker {n} could not start"),
            }
        }
        shutdown.await;
        let _ = stop_tx.send(true);
        for done in finished {
            let _ = done.await;
        }
    }
}

impl Worker {
    async fn serve(
        self,
        n: usize,
        balancer: Arc<Balancer>,
        mut handed: mpsc::UnboundedReceiver<Handoff>,
        tls: Option<TlsAcceptor>,
        config: &Config,
        mut stop: watch::Receiver<bool>,
    ) {
        let listener = match self
            .listener
            .set_nonblocking(true)
            .and_then(|()| TcpListener::from_std(self.listener))
        {
            Ok(listener) => listener,
            Err(err) => {
                tracing::error!(error = %err, "worker cannot use its listening socket");
                return;
            }
        };
        let conns = Conns {
            gateway: Arc::new(self.gateway),
            builder: Arc::new(http_builder(config)),
            graceful: GracefulShutdown::new(),
            tls,
            handshake_timeout: config.server.header_read_timeout,
            framing: framing::Limits {
                max_head_bytes: read_buffer(&config.server),
                max_headers: config.server.max_headers,
            },
            balancer: balancer.clone(),
            worker: n,
        };
        // One ticker serves every coarse deadline of this worker: the header-read deadline and
        // the upstreams' read timeouts. Ticking for the shortest keeps each at most a quarter
        // of itself late.
        let shortest = config
            .upstreams
            .iter()
            .map(|u| u.read_timeout)
            .fold(conns.handshake_timeout, Duration::min);
        tokio::spawn(timer::tick(timer::tick_for(shortest)));
        loop {
            tokio::select! {
                biased;
                _ = stop.wait_for(|stop| *stop) => break,
                Some((stream, peer)) = handed.recv() => conns.serve_handed(stream, peer),
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => match balancer.place(n) {
                        here if here == n => conns.serve(stream, peer),
                        other => match stream.into_std() {
                            Ok(std) => {
                                if let Err((std, peer)) = balancer.hand_off(n, other, (std, peer)) {
                                    conns.serve_handed(std, peer);
                                }
                            }
                            Err(_) => balancer.closed(other),
                        },
                    },
                    Err(err) => survive_accept_error(&err).await,
                },
            }
        }
        drop(listener);
        // Connections handed to this worker but not picked up yet were accepted: they are
        // served like the others, and nothing more is handed here.
        handed.close();
        while let Ok((stream, peer)) = handed.try_recv() {
            conns.serve_handed(stream, peer);
        }
        let deadline = config.server.shutdown_timeout;
        tracing::info!(
            deadline_secs = deadline.as_secs_f64(),
            "stopped accepting; draining in-flight requests"
        );
        if tokio::time::timeout(deadline, conns.graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("shutdown deadline reached with requests still in flight");
        }
    }
}

/// What one worker needs to serve a connection it accepted or was handed.
struct Conns {
    gateway: Arc<Gateway>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    graceful: GracefulShutdown,
    tls: Option<TlsAcceptor>,
    handshake_timeout: Duration,
    framing: framing::Limits,
    balancer: Arc<Balancer>,
    worker: usize,
}

impl Conns {
    /// A connection another worker accepted for this one (already counted here).
    fn serve_handed(&self, stream: std::net::TcpStream, peer: SocketAddr) {
        match TcpStream::from_std(stream) {
            Ok(stream) => self.serve(stream, peer),
            Err(err) => {
                self.balancer.closed(self.worker);
                tracing::debug!(%peer, error = %err, "handed-off connection unusable");
            }
        }
    }

    /// Serves `stream` on this worker until it closes; it was counted here by the balancer,
    /// and is counted down when the connection ends, however it ends.
    fn serve(&self, stream: TcpStream, peer: SocketAddr) {
        // Counted down when the last holder lets go: the service below (dropped with the
        // connection, a failed TLS handshake included) or a websocket tunnel.
        let open: Arc<dyn Send + Sync> = Arc::new(Open {
            balancer: self.balancer.clone(),
            worker: self.worker,
        });
        let conn = ConnInfo {
            peer,
            tls: self.tls.is_some(),
            lifetime: open,
        };
        let gateway = self.gateway.clone();
        // The connection's own errors: a request hyper refused before the gateway saw it is
        // still logged and counted.
        let ended = self.gateway.clone();
        let service = service_fn(move |req: Request<Incoming>| {
            Gateway::handle(gateway.clone(), req, conn.clone())
        });
        let _ = stream.set_nodelay(true);
        let handshake_timeout = self.handshake_timeout;
        let framing = self.framing;
        match &self.tls {
            None => {
                let io = TokioIo::new(Inbound::new(
                    stream,
                    handshake_timeout,
                    Tracker::new(framing, peer),
                ));
                let conn = self
                    .builder
                    .serve_connection_with_upgrades(io, service)
                    .into_owned();
                let conn = self.graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(err) = conn.await {
                        ended.connection_error(peer, &*err);
                    }
                });
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let builder = self.builder.clone();
                let watcher = self.graceful.watcher();
                tokio::spawn(async move {
                    let tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(err)) => {
                            tracing::debug!(%peer, error = %err, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    let io = TokioIo::new(Inbound::new(
                        tls,
                        handshake_timeout,
                        Tracker::new(framing, peer),
                    ));
                    let conn = builder
                        .serve_connection_with_upgrades(io, service)
                        .into_owned();
                    if let Err(err) = watcher.watch(conn).await {
                        ended.connection_error(peer, &*err);
                    }
                });
            }
        }
    }
}

fn worker_count(config: &Config) -> usize {
    match config.server.workers {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    }
}

/// A listening socket that other workers can bind to as well, so the kernel balances new
/// connections between them.
fn reuseport_listener(addr: SocketAddr) -> Result<std::net::TcpListener, ServeError> {
    let bind_err = |source| ServeError::Bind { addr, source };
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(bind_err)?;
    socket.set_reuseaddr(true).map_err(bind_err)?;
    #[cfg(unix)]
    socket.set_reuseport(true).map_err(bind_err)?;
    socket.bind(addr).map_err(bind_err)?;
    let listener = socket.listen(1024).map_err(bind_err)?;
    listener.into_std().map_err(bind_err)
}

/// hyper's read buffer, which bounds the request head (and what the framing check holds of
/// one); the exact byte count is checked again in the gateway so the limit is what the config
/// says, not hyper's rounding.
fn read_buffer(server: &crate::config::ServerConfig) -> usize {
    (server.max_header_bytes.max(8192) + 1024).max(64 * 1024)
}

/// One HTTP builder for every connection: the limits of rule 20 live here.
fn http_builder(config: &Config) -> auto::Builder<TokioExecutor> {
    let server = &config.server;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    let buf = read_buffer(server);
    builder
        .http1()
        .timer(CoarseTimer)
        .header_read_timeout(server.header_read_timeout)
        .max_headers(server.max_headers)
        .max_buf_size(buf);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(server.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(30)));
    if !server.http2 {
        builder = builder.http1_only();
    }
    builder
}

fn tls_acceptor(tls: &TlsConfig, http2: bool) -> Result<TlsAcceptor, ServeError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let err = |source| ServeError::Tls {
        cert_file: tls.cert_file.display().to_string(),
        source,
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(err)?
        .with_no_client_auth()
        .with_single_cert(tls.cert_chain.clone(), tls.key.expose().clone_key())
        .map_err(err)?;
    config.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Accept errors are never fatal. Running out of file descriptors (EMFILE/ENFILE) clears only
/// when connections close, so back off instead of spinning; other errors (a client that reset
/// before accept) are retried at once.
async fn survive_accept_error(err: &io::Error) {
    let out_of_fds = matches!(err.raw_os_error(), Some(23 | 24));
    if out_of_fds {
        tracing::error!(error = %err, "accept failed: out of file descriptors; backing off");
        tokio::time::sleep(Duration::from_millis(100)).await;
    } else {
        tracing::debug!(error = %err, "accept failed; continuing");
    }
}

/// Waits for SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown signal received");
}

/// Serves a plain HTTP/1.1 + h2c handler on `listener` until `shutdown` completes. For the
/// demo's development provider and echo upstream (and test servers): no limits, no TLS.
pub async fn serve_simple<F, Fut>(
    listener: TcpListener,
    handler: F,
    shutdown: impl Future<Output = ()>,
) where
    F: Fn(Request<Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    tokio::pin!(shutdown);
    loop {
        let (stream, peer): (TcpStream, SocketAddr) = tokio::select! {
            biased;
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    survive_accept_error(&err).await;
                    continue;
                }
            },
        };
        let handler = handler.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let fut = handler(req, peer);
                async move { Ok::<_, Infallible>(fut.await) }
            });
            let _ = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await;
        });
    }
}
