//! Forward: the last step. Sends the request to the chosen upstream over a pooled keep-alive
//! connection, streams both bodies without buffering (hyper's backpressure end to end), applies
//! the upstream's timeouts, and tunnels protocol upgrades (websockets) once the upstream agreed.
//! It decides nothing about who may pass: by the time a request gets here, every earlier step
//! has run.

pub mod headers;

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{CONNECTION, HOST, UPGRADE};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use self::headers::{ForwardInfo, HeaderRules};
use crate::body::Body;
use crate::config::{Config, UpstreamConfig};
use crate::context::RequestCtx;

/// Why forwarding failed. Mapped to 502/504 once, in `error.rs`.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("upstream {upstream} could not be reached")]
    Connect {
        upstream: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    #[error("upstream {upstream} did not answer within {timeout:?}")]
    Timeout { upstream: String, timeout: Duration },
    #[error("upstream {upstream} failed")]
    Upstream {
        upstream: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    #[error("upstream URL cannot carry this request")]
    BadUri(#[from] http::Error),
}

/// Why the upstream clients could not be built at start.
#[derive(Debug, thiserror::Error)]
pub enum ClientBuildError {
    #[error("upstream {upstream}: {reason}")]
    Tls { upstream: String, reason: String },
    #[error("upstream {upstream}: URL {url} is not a valid URI")]
    Url { upstream: String, url: String },
}

type Connector = HttpsConnector<HttpConnector>;

/// One configured upstream with its own connection pool.
struct Upstream {
    name: String,
    scheme: Scheme,
    authority: Authority,
    /// The upstream URL's path without its trailing `/`, prepended to every request path.
    base_path: String,
    host_header: HeaderValue,
    preserve_host: bool,
    response_timeout: Duration,
    client: Client<Connector, Incoming>,
}

/// Every upstream's client, indexed like `config.upstreams`.
pub struct Proxy {
    upstreams: Vec<Upstream>,
    headers: HeaderRules,
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
        })
    }

    pub fn header_rules(&self) -> &HeaderRules {
        &self.headers
    }

    /// Forwards `req` (whose path the router normalised into `ctx.path`) to upstream `index`.
    pub async fn forward(
        &self,
        index: usize,
        mut req: Request<Incoming>,
        client_host: HeaderValue,
        ctx: &mut RequestCtx,
        // Runs after the gateway's header hygiene, so what it adds (identity headers) can
        // never be removed by what the client sent.
        edit: impl FnOnce(&mut http::HeaderMap),
    ) -> Result<Response<Body>, ProxyError> {
        let Some(upstream) = self.upstreams.get(index) else {
            // The router only hands out indices of configured upstreams.
            return Ok(crate::error::plain(StatusCode::NOT_FOUND, "no route"));
        };
        ctx.upstream = Some(upstream.name.clone());
        let upgrade = upgrade_requested(&req);
        let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));

        let (mut parts, body) = req.into_parts();
        let upstream_host = if upstream.preserve_host {
            &client_host
        } else {
            &upstream.host_header
        };
        self.headers.rewrite_request(
            &mut parts.headers,
            &ForwardInfo {
                peer: ctx.conn.peer.ip(),
                tls: ctx.conn.tls,
                request_id: &ctx.request_id,
                client_host: &client_host,
                upstream_host,
                upgrade,
            },
        );
        edit(&mut parts.headers);
        parts.uri = upstream.uri(&ctx.path, parts.uri.query())?;
        // The upstream leg is always HTTP/1.1, whatever the client spoke to us.
        parts.version = Version::HTTP_11;
        let upstream_req = Request::from_parts(parts, body);

        let sent = Instant::now();
        let result = tokio::time::timeout(
            upstream.response_timeout,
            upstream.client.request(upstream_req),
        )
        .await;
        ctx.upstream_latency = Some(sent.elapsed());
        let mut resp = match result {
            Err(_) => {
                return Err(ProxyError::Timeout {
                    upstream: upstream.name.clone(),
                    timeout: upstream.response_timeout,
                });
            }
            Ok(Err(source)) if source.is_connect() => {
                return Err(ProxyError::Connect {
                    upstream: upstream.name.clone(),
                    source,
                });
            }
            Ok(Err(source)) => {
                return Err(ProxyError::Upstream {
                    upstream: upstream.name.clone(),
                    source,
                });
            }
            Ok(Ok(resp)) => resp,
        };

        if resp.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(client_upgrade) = client_upgrade
        {
            // Rule 33: the tunnel exists only now that the upstream said 101; until then
            // hyper kept parsing the client's bytes as HTTP requests.
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            tokio::spawn(tunnel(client_upgrade, upstream_upgrade));
            let (parts, _) = resp.into_parts();
            return Ok(Response::from_parts(parts, Body::empty()));
        }
        let (mut parts, body) = resp.into_parts();
        headers::remove_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(parts, Body::Upstream(body)))
    }
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

async fn tunnel(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
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

        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));
        let tls = client_tls(config, native_roots)?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(config.idle_timeout)
            .set_host(false)
            .build(connector);
        Ok(Self {
            name: config.name.clone(),
            scheme,
            authority,
            base_path: config.url.path().trim_end_matches('/').to_owned(),
            host_header,
            preserve_host: config.preserve_host,
            response_timeout: config.response_timeout,
            client,
        })
    }

    fn uri(&self, path: &str, query: Option<&str>) -> Result<Uri, ProxyError> {
        let mut pq = String::with_capacity(
            self.base_path.len() + path.len() + 1 + query.map_or(0, str::len),
        );
        pq.push_str(&self.base_path);
        pq.push_str(path);
        if let Some(q) = query {
            pq.push('?');
            pq.push_str(q);
        }
        let pq = PathAndQuery::try_from(pq).map_err(http::Error::from)?;
        Ok(Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(pq)
            .build()?)
    }
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
    // ALPN stays empty: the connector builder sets it from `enable_http1` (and panics if set).
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
