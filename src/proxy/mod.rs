//! Forward: the last step. Sends the request to the chosen upstream over a pooled keep-alive
//! connection, streams both bodies without buffering (hyper's backpressure end to end), applies
//! the upstream's timeouts, and tunnels protocol upgrades (websockets) once the upstream agreed.
//! It decides nothing about who may pass: by the time a request gets here, every earlier step
//! has run.

pub mod headers;
pub mod received;
mod sent;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use http::header::{CONNECTION, HOST, UPGRADE};
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use self::headers::{ForwardInfo, HeaderRules};
use self::received::Received;
use self::sent::{Outgoing, Watch};
use crate::body::Body;
use crate::config::{Config, UpstreamConfig};
use crate::context::{ConnInfo, RequestCtx};

/// Why forwarding failed. Mapped to 502/504 once, in `error.rs`.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("upstream {upstream} could not be reached")]
    Connect {
        upstream: String,
        #[source]
        source: io::Error,
    },
    #[error("upstream {upstream} did not answer within {timeout:?}")]
    Timeout { upstream: String, timeout: Duration },
    #[error("upstream {upstream} failed")]
    Upstream {
        upstream: String,
        #[source]
        source: hyper::Error,
    },
    #[error("upstream URL cannot carry this request")]
    BadUri(#[from] http::Error),
    #[error("the client's request body stopped arriving")]
    BodyStalled,
}

/// Why the upstream clients could not be built at start.
#[derive(Debug, thiserror::Error)]
pub enum ClientBuildError {
    #[error("upstream {upstream}: {reason}")]
    Tls { upstream: String, reason: String },
    #[error("upstream {upstream}: URL {url} is not a valid URI")]
    Url { upstream: String, url: String },
}

/// How bytes reach the upstream: plain TCP, or TLS with the upstream's rustls client config
/// (ALPN `http/1.1`: the upstream leg is always HTTP/1.1).
enum Transport {
    Plain,
    Tls {
        connector: TlsConnector,
        server_name: ServerName<'static>,
    },
}

/// A keep-alive connection waiting for its next request: the handle hyper's connection task
/// takes requests from, and since when it has been idle (at the latest).
struct Idle {
    sender: SendRequest<Outgoing>,
    since: Instant,
}

/// Idle connections, most recently used last (LIFO: the warmest connection goes first and the
/// others age out). Each worker thread has its own `Gateway`, so this lock is never contended;
/// a `Mutex` only because the request futures must be `Send` for `tokio::spawn`.
type IdleList = Arc<Mutex<Vec<Idle>>>;

/// One configured upstream with its own connection pool.
struct Upstream {
    /// Shared with every request's context (the access log) without copying the string.
    name: Arc<str>,
    /// Host to resolve (IPv6 literals without brackets) and port, from the upstream URL.
    host: String,
    port: u16,
    transport: Transport,
    /// The upstream URL's path without its trailing `/`, prepended to every request path.
    base_path: String,
    host_header: HeaderValue,
    preserve_host: bool,
    connect_timeout: Duration,
    response_timeout: Duration,
    read_timeout: Duration,
    idle_timeout: Duration,
    idle: IdleList,
}

/// Every upstream's client, indexed like `config.upstreams`.
pub struct Proxy {
    upstreams: Vec<Upstream>,
    headers: HeaderRules,
    /// `[server] body_read_timeout`.
    body_read_timeout: Duration,
}

impl Proxy {
    pub fn new(config: &Config) -> Result<Self, ClientBuildError> {
        let mut native_roots: Option<Arc<rustls::RootCertStore>> = None;
        let upstreams = config
            .upstreams
            .iter()
            .map(|u| Upstream::new(u, &mut native_roots))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            upstreams,
            headers: HeaderRules::new(config),
            body_read_timeout: config.server.body_read_timeout,
        })
    }

    /// Whether `peer` is one of `[server] trusted_proxies` (rule 27).
    pub fn is_trusted(&self, peer: std::net::IpAddr) -> bool {
        self.headers.is_trusted(peer)
    }

    pub fn header_rules(&self) -> &HeaderRules {
        &self.headers
    }

    /// Forwards `req` (whose path the router normalised into `ctx.path`) to upstream `index`.
    ///
    /// The request is rewritten before the returned future exists, so the future holds only
    /// the outgoing request and the exchange: every enclosing future (the gateway's steps,
    /// hyper's in-flight slot) embeds it and is moved by value, so its size is copied on
    /// every request (a profiled cost: the moved futures were ~15 % of user time).
    pub fn forward<'a>(
        &'a self,
        index: usize,
        req: Request<Incoming>,
        client_host: HeaderValue,
        ctx: &'a mut RequestCtx,
        // Runs after the gateway's header hygiene, so what it adds (identity headers) can
        // never be removed by what the client sent.
        edit: impl FnOnce(&mut http::HeaderMap),
    ) -> impl Future<Output = Result<Response<Body>, ProxyError>> + 'a {
        let prepared = self.prepare(index, req, &client_host, ctx, edit);
        async move {
            let (upstream, req, watch, client_upgrade) = match prepared? {
                Prepared::Send(parts) => parts,
                Prepared::Answer(response) => return Ok(response),
            };
            let sent = Instant::now();
            let limit = upstream.response_timeout;
            let exchange = upstream.send(req, sent);
            let answered = match watch {
                None => tokio::time::timeout(limit, exchange).await.ok(),
                Some(watch) => Box::pin(answered_after_body(exchange, watch, limit)).await,
            };
            ctx.upstream_latency = Some(sent.elapsed());
            let Some(result) = answered else {
                return Err(ProxyError::Timeout {
                    upstream: upstream.name.to_string(),
                    timeout: limit,
                });
            };
            let resp = result?;
            Ok(finish(resp, client_upgrade, &ctx.conn, upstream))
        }
    }

    /// The request as the upstream gets it: hop-by-hop headers gone, `X-Forwarded-*` set,
    /// `edit` applied, the normalised path, HTTP/1.1.
    fn prepare(
        &self,
        index: usize,
        mut req: Request<Incoming>,
        client_host: &HeaderValue,
        ctx: &mut RequestCtx,
        edit: impl FnOnce(&mut http::HeaderMap),
    ) -> Result<Prepared<'_>, ProxyError> {
        let Some(upstream) = self.upstreams.get(index) else {
            // The router only hands out indices of configured upstreams.
            return Ok(Prepared::Answer(crate::error::plain(
                StatusCode::NOT_FOUND,
                "no route",
            )));
        };
        ctx.upstream = Some(Arc::clone(&upstream.name));
        let upgrade = upgrade_requested(&req);
        let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));

        let (mut parts, body) = req.into_parts();
        if parts.version >= Version::HTTP_2 {
            headers::join_cookies(&mut parts.headers);
        }
        let upstream_host = if upstream.preserve_host {
            client_host
        } else {
            &upstream.host_header
        };
        self.headers.rewrite_request(
            &mut parts.headers,
            &ForwardInfo {
                peer: ctx.conn.peer.ip(),
                tls: ctx.conn.tls,
                request_id: &ctx.request_id,
                client_host,
                upstream_host,
                upgrade,
            },
        );
        edit(&mut parts.headers);
        parts.uri = upstream.uri(&ctx.path, &parts.uri)?;
        // The upstream leg is always HTTP/1.1, whatever the client spoke to us.
        parts.version = Version::HTTP_11;
        let (body, all_sent) = sent::watch(body, self.body_read_timeout);
        Ok(Prepared::Send((
            upstream,
            Request::from_parts(parts, body),
            all_sent,
            client_upgrade,
        )))
    }
}

/// The answer to a request with a body, `None` past `limit`: counted from the end of the body
/// (an answer that comes earlier, 413 or 401, is taken as it comes), or from the moment the
/// upstream stopped taking a body it had been given (a hung app; the client's own pauses are
/// `body_read_timeout`'s business).
async fn answered_after_body<F: Future>(
    exchange: F,
    watch: Watch,
    limit: Duration,
) -> Option<F::Output> {
    let Watch {
        mut all_sent,
        progress,
    } = watch;
    let mut exchange = std::pin::pin!(exchange);
    loop {
        let wait = limit.saturating_sub(progress.stalled_upstream());
        if wait.is_zero() {
            return None;
        }
        tokio::select! {
            biased;
            answered = &mut exchange => return Some(answered),
            _ = &mut all_sent => return tokio::time::timeout(limit, exchange).await.ok(),
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// What [`Proxy::prepare`] made of a request: an exchange with an upstream, or an answer.
enum Prepared<'a> {
    Send(
        (
            &'a Upstream,
            Request<Outgoing>,
            Option<Watch>,
            Option<OnUpgrade>,
        ),
    ),
    Answer(Response<Body>),
}

/// The upstream's response as the client gets it; a protocol switch becomes a tunnel.
fn finish(
    mut resp: Response<Incoming>,
    client_upgrade: Option<OnUpgrade>,
    conn: &ConnInfo,
    upstream: &Upstream,
) -> Response<Body> {
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_upgrade) = client_upgrade
    {
        // Rule 33: the tunnel exists only now that the upstream said 101; until then
        // hyper kept parsing the client's bytes as HTTP requests.
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        let lifetime = conn.lifetime.clone();
        tokio::spawn(async move {
            tunnel(client_upgrade, upstream_upgrade).await;
            // The connection ends with its tunnel, not with hyper's part of it.
            drop(lifetime);
        });
        let (parts, _) = resp.into_parts();
        return Response::from_parts(parts, Body::empty());
    }
    let (mut parts, body) = resp.into_parts();
    headers::remove_hop_by_hop(&mut parts.headers);
    let body = Received::new(body, upstream.read_timeout, upstream.name.clone());
    Response::from_parts(parts, Body::Upstream(body))
}

/// The `Upgrade` value when the client asked to switch protocols (HTTP/1.1 only: `Upgrade` and
/// `Connection: upgrade` both present).
fn upgrade_requested(req: &Request<Incoming>) -> Option<HeaderValue> {
    if req.version() != Version::HTTP_11 {
        return None;
    }
    let wants = req
        .headers()
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if wants {
        req.headers().get(UPGRADE).cloned()
    } else {
        None
    }
}

async fn tunnel(client: OnUpgrade, upstream: OnUpgrade) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(err) => {
            tracing::debug!(error = %err, "upgrade did not complete");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    if let Err(err) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(error = %err, "upgraded connection ended with an error");
    }
}

impl Upstream {
    fn new(
        config: &UpstreamConfig,
        native_roots: &mut Option<Arc<rustls::RootCertStore>>,
    ) -> Result<Self, ClientBuildError> {
        let bad_url = || ClientBuildError::Url {
            upstream: config.name.clone(),
            url: config.url.to_string(),
        };
        let origin: Uri = config.url.as_str().parse().map_err(|_| bad_url())?;
        let scheme = origin.scheme().cloned().ok_or_else(bad_url)?;
        let authority = origin.authority().cloned().ok_or_else(bad_url)?;
        let host_header = HeaderValue::from_str(authority.as_str()).map_err(|_| bad_url())?;
        let https = scheme == http::uri::Scheme::HTTPS;
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        // `Authority::host` keeps the brackets of an IPv6 literal; resolvers and TLS want none.
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();

        let transport = if https {
            let mut tls = client_tls(config, native_roots)?;
            tls.alpn_protocols = vec![b"http/1.1".to_vec()];
            let server_name = ServerName::try_from(host.clone()).map_err(|_| bad_url())?;
            Transport::Tls {
                connector: TlsConnector::from(Arc::new(tls)),
                server_name,
            }
        } else {
            Transport::Plain
        };
        Ok(Self {
            name: Arc::from(config.name.as_str()),
            host,
            port,
            transport,
            base_path: config.url.path().trim_end_matches('/').to_owned(),
            host_header,
            preserve_host: config.preserve_host,
            connect_timeout: config.connect_timeout,
            response_timeout: config.response_timeout,
            read_timeout: config.read_timeout,
            idle_timeout: config.idle_timeout,
            idle: Arc::new(Mutex::new(Vec::new())),
        })
    }

    /// The origin-form request target for the upstream: its base path, the normalised path,
    /// the client's query. When there is no base path and normalising changed nothing, the
    /// client's own target is reused (a reference count, no copy, no re-validation).
    fn uri(&self, path: &str, client: &Uri) -> Result<Uri, ProxyError> {
        if self.base_path.is_empty()
            && client.path() == path
            && let Some(pq) = client.path_and_query()
        {
            return Ok(Uri::from(pq.clone()));
        }
        let query = client.query();
        // Sized exactly, so the string becomes the URI's buffer without a reallocation.
        let mut pq = String::with_capacity(
            self.base_path.len() + path.len() + query.map_or(0, |q| q.len() + 1),
        );
        pq.push_str(&self.base_path);
        pq.push_str(path);
        if let Some(q) = query {
            pq.push('?');
            pq.push_str(q);
        }
        let pq = PathAndQuery::try_from(pq).map_err(http::Error::from)?;
        Ok(Uri::from(pq))
    }

    /// Sends `req` on an idle keep-alive connection, or on a new one. `now` is the caller's
    /// clock reading, reused here so the pool adds no clock call of its own. (A plain fn
    /// returning an async block: an `async fn` would keep its argument `req` twice.)
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn stores the request twice"
    )]
    fn send(
        &self,
        mut req: Request<Outgoing>,
        now: Instant,
    ) -> impl Future<Output = Result<Response<Incoming>, ProxyError>> + '_ {
        async move {
            if let Some(mut sender) = self.checkout(now) {
                match sender.try_send_request(req).await {
                    Ok(resp) => {
                        self.checkin(sender, &resp, now);
                        return Ok(resp);
                    }
                    Err(mut err) => match err.take_message() {
                        // The idle connection closed before the request went out (the
                        // upstream timed it out while we held it): a fresh connection gets
                        // the request.
                        Some(back) => req = back,
                        None => return Err(self.failed(err.into_error())),
                    },
                }
            }
            // Boxed: a new connection is rare, and its future (TLS) is kilobytes.
            let mut sender = Box::pin(self.connect()).await?;
            let resp = sender.send_request(req).await.map_err(|e| self.failed(e))?;
            self.checkin(sender, &resp, now);
            Ok(resp)
        }
    }

    fn failed(&self, source: hyper::Error) -> ProxyError {
        if sent::stalled(&source) {
            return ProxyError::BodyStalled;
        }
        ProxyError::Upstream {
            upstream: self.name.to_string(),
            source,
        }
    }

    /// The most recently used idle connection that is still open, ready and younger than
    /// `idle_timeout`; closed and expired ones met on the way are dropped.
    fn checkout(&self, now: Instant) -> Option<SendRequest<Outgoing>> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(entry) = idle.pop() {
            let fresh = now.saturating_duration_since(entry.since) < self.idle_timeout;
            if fresh && entry.sender.is_ready() {
                return Some(entry.sender);
            }
        }
        None
    }

    /// Puts a connection back once its exchange is done. Usually the response body has already
    /// been read by hyper's connection task and the connection is ready at once; otherwise a
    /// small task waits for it (a streaming body) and pools it after, or drops it when the
    /// upstream closes it (`Connection: close`, errors). A protocol switch takes the
    /// connection over: it never comes back.
    fn checkin(&self, sender: SendRequest<Outgoing>, resp: &Response<Incoming>, now: Instant) {
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS || sender.is_closed() {
            return;
        }
        if sender.is_ready() {
            push_idle(&self.idle, sender, now);
            return;
        }
        let idle = Arc::clone(&self.idle);
        let mut sender = sender;
        tokio::spawn(async move {
            if sender.ready().await.is_ok() {
                push_idle(&idle, sender, Instant::now());
            }
        });
    }

    /// A new connection: resolve, connect within `connect_timeout`, TLS when the URL says so,
    /// then hyper's HTTP/1.1 handshake with its connection task spawned on this worker.
    async fn connect(&self) -> Result<SendRequest<Outgoing>, ProxyError> {
        let fail = |source: io::Error| ProxyError::Connect {
            upstream: self.name.to_string(),
            source,
        };
        let stream = tokio::time::timeout(self.connect_timeout, self.tcp())
            .await
            .map_err(|_| {
                fail(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connect timed out after {:?}", self.connect_timeout),
                ))
            })?
            .map_err(fail)?;
        match &self.transport {
            Transport::Plain => handshake(stream).await.map_err(fail),
            Transport::Tls {
                connector,
                server_name,
            } => {
                let tls = tokio::time::timeout(
                    self.connect_timeout,
                    connector.connect(server_name.clone(), stream),
                )
                .await
                .map_err(|_| {
                    fail(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "TLS handshake timed out",
                    ))
                })?
                .map_err(fail)?;
                handshake(tls).await.map_err(fail)
            }
        }
    }

    /// A TCP connection to the first address of the upstream's host that accepts one.
    async fn tcp(&self) -> io::Result<TcpStream> {
        let mut last_err = None;
        for addr in tokio::net::lookup_host((self.host.as_str(), self.port)).await? {
            match connect_addr(addr).await {
                Ok(stream) => return Ok(stream),
                Err(err) => last_err = Some(err),
            }
        }
        Err(last_err.unwrap_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, "host resolved to no address")
        }))
    }
}

fn push_idle(idle: &Mutex<Vec<Idle>>, sender: SendRequest<Outgoing>, since: Instant) {
    idle.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(Idle { sender, since });
}

async fn connect_addr(addr: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect(addr).await?;
    // Requests are written whole; waiting for Nagle would only add latency.
    stream.set_nodelay(true)?;
    // Notices a vanished upstream on an idle pooled connection (as the legacy client did).
    let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(60));
    socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive)?;
    Ok(stream)
}

/// hyper's HTTP/1.1 client handshake over `io`; the connection task (with upgrade support, for
/// websockets) runs on this worker's event loop until the connection closes.
async fn handshake<S>(io: S) -> io::Result<SendRequest<Outgoing>>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await
        .map_err(io::Error::other)?;
    tokio::spawn(async move {
        if let Err(err) = conn.with_upgrades().await {
            tracing::debug!(error = %err, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

/// The TLS client for an upstream: its CA bundle or the system roots, an optional client
/// certificate, and the explicitly named insecure switch.
fn client_tls(
    config: &UpstreamConfig,
    native_roots: &mut Option<Arc<rustls::RootCertStore>>,
) -> Result<rustls::ClientConfig, ClientBuildError> {
    let fail = |reason: String| ClientBuildError::Tls {
        upstream: config.name.clone(),
        reason,
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(e.to_string()))?;
    let builder = if config.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
    } else {
        let roots = if config.tls_ca_certs.is_empty() {
            native_roots.get_or_insert_with(load_native_roots).clone()
        } else {
            let mut store = rustls::RootCertStore::empty();
            for cert in &config.tls_ca_certs {
                store
                    .add(cert.clone())
                    .map_err(|e| fail(format!("tls_ca_file: {e}")))?;
            }
            Arc::new(store)
        };
        builder.with_root_certificates(roots)
    };
    // ALPN (`http/1.1`) is set by the caller.
    let tls = match &config.tls_client_cert {
        Some(pair) => builder
            .with_client_auth_cert(pair.cert_chain.clone(), pair.key.expose().clone_key())
            .map_err(|e| fail(format!("client certificate: {e}")))?,
        None => builder.with_no_client_auth(),
    };
    Ok(tls)
}

fn load_native_roots() -> Arc<rustls::RootCertStore> {
    let mut store = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for err in &found.errors {
        tracing::warn!(error = %err, "could not read some system CA certificates");
    }
    let (added, ignored) = store.add_parsable_certificates(found.certs);
    tracing::debug!(added, ignored, "loaded system CA certificates");
    Arc::new(store)
}

/// `insecure_skip_verify = true`: accepts any upstream certificate. Signatures are still
/// checked so the handshake is well-formed; identity is not.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `Host` for the upstream when the client's is kept (`HOST` header, or the h2 authority).
pub fn client_host_header(uri: &Uri, headers: &http::HeaderMap) -> Option<HeaderValue> {
    headers.get(HOST).cloned().or_else(|| {
        uri.authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    })
}
