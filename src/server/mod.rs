//! Accept: the first step of every request. Owns the listener (TCP, optionally TLS with rustls),
//! speaks HTTP/1.1 and HTTP/2 (ALPN on TLS, prior knowledge on cleartext), enforces the
//! connection-level limits (header size, header count, header read time), survives accept errors
//! and drains in-flight requests on shutdown. It hands every request to [`Gateway::handle`] and
//! knows nothing about routing, authentication or upstreams.

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
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::config::{Config, TlsConfig};
use crate::context::ConnInfo;
use crate::gateway::Gateway;

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

/// A bound, not yet serving, gateway listener. Binding first lets callers learn the address
/// (port 0 in tests, the demo banner) before any request arrives.
pub struct Server {
    listener: TcpListener,
    local_addr: SocketAddr,
    tls: Option<TlsAcceptor>,
    gateway: Arc<Gateway>,
    config: Arc<Config>,
}

impl Server {
    /// Builds the gateway from `config` and binds its listener.
    pub async fn bind(config: Config) -> Result<Self, ServeError> {
        let addr = config.server.listen;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })?;
        Self::from_listener(config, listener)
    }

    /// Builds the gateway on a listener the caller already bound (the demo binds first so its
    /// provider knows the gateway's real address before the configuration exists).
    pub fn from_listener(config: Config, listener: TcpListener) -> Result<Self, ServeError> {
        let config = Arc::new(config);
        let gateway = Arc::new(Gateway::new(config.clone())?);
        let addr = config.server.listen;
        let local_addr = listener
            .local_addr()
            .map_err(|source| ServeError::Bind { addr, source })?;
        let tls = match &config.server.tls {
            Some(tls) => Some(tls_acceptor(tls, config.server.http2)?),
            None => None,
        };
        Ok(Self {
            listener,
            local_addr,
            tls,
            gateway,
            config,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` completes, then stops accepting, lets in-flight requests finish
    /// for up to `server.shutdown_timeout`, and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let builder = Arc::new(http_builder(&self.config));
        let graceful = GracefulShutdown::new();
        let scheme_https = self.tls.is_some();
        let handshake_timeout = self.config.server.header_read_timeout;
        tokio::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                biased;
                () = &mut shutdown => break,
                accepted = self.listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(err) => {
                        survive_accept_error(&err).await;
                        continue;
                    }
                },
            };
            let conn = ConnInfo {
                peer,
                tls: scheme_https,
            };
            let gateway = self.gateway.clone();
            let service = service_fn(move |req: Request<Incoming>| {
                let gateway = gateway.clone();
                async move { Ok::<_, Infallible>(gateway.handle(req, conn).await) }
            });
            let _ = stream.set_nodelay(true);
            match &self.tls {
                None => {
                    let conn = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .into_owned();
                    let conn = graceful.watch(conn);
                    tokio::spawn(async move {
                        if let Err(err) = conn.await {
                            tracing::debug!(%peer, error = %err, "connection ended with an error");
                        }
                    });
                }
                Some(acceptor) => {
                    let acceptor = acceptor.clone();
                    let builder = builder.clone();
                    let watcher = graceful.watcher();
                    tokio::spawn(async move {
                        let tls =
                            match tokio::time::timeout(handshake_timeout, acceptor.accept(stream))
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
                        let conn = builder
                            .serve_connection_with_upgrades(TokioIo::new(tls), service)
                            .into_owned();
                        if let Err(err) = watcher.watch(conn).await {
                            tracing::debug!(%peer, error = %err, "connection ended with an error");
                        }
                    });
                }
            }
        }
        drop(self.listener);
        let deadline = self.config.server.shutdown_timeout;
        tracing::info!(
            deadline_secs = deadline.as_secs_f64(),
            "stopped accepting; draining in-flight requests"
        );
        if tokio::time::timeout(deadline, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("shutdown deadline reached with requests still in flight");
        }
    }
}

/// One HTTP builder for every connection: the limits of rule 20 live here.
fn http_builder(config: &Config) -> auto::Builder<TokioExecutor> {
    let server = &config.server;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper's read buffer bounds the request head; the exact byte count is checked again in the
    // gateway so the limit is what the config says, not hyper's rounding.
    let buf = server.max_header_bytes.max(8192) + 1024;
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(server.header_read_timeout)
        .max_headers(server.max_headers)
        .max_buf_size(buf.max(64 * 1024));
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
