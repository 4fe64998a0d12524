//! Talking to the provider: the outbound HTTP client every provider call goes through
//! (discovery, JWKS, token endpoint, userinfo).
//!
//! It owns the transport rules for those calls: system roots over rustls (plain `http` is
//! allowed for development providers), one deadline per call covering connect, headers and
//! body, redirects never followed (a 3xx is an error: following them turns discovery, JWKS and
//! token calls into an SSRF vector), bodies capped at [`MAX_RESPONSE_BYTES`], and OAuth error
//! bodies turned into [`ProviderError::Status`]. It does not know what the calls mean.
//!
//! Nothing secret reaches an error or a log line: errors name the URL without its query, and
//! request bodies and `Authorization` headers are never formatted.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::de::DeserializeOwned;
use url::Url;

use crate::config::Secret;

/// Largest response body accepted from the provider; discovery documents and JWKS are a few KiB.
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// Longest `error_description` kept from a provider answer (it ends up in logs).
const MAX_DESCRIPTION_CHARS: usize = 200;

/// Every way a call to the provider can fail. Never carries a token, secret or request body.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// Connection refused, DNS failure, TLS failure, connection reset.
    #[error("provider unreachable at {url}")]
    Unreachable {
        url: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("provider did not answer {url} within {after:?}")]
    Timeout { url: String, after: Duration },
    /// A non-2xx answer; `error`/`error_description` from an OAuth error body (RFC 6749 §5.2).
    #[error("provider answered {url} with status {status}{}", describe(.error, .error_description))]
    Status {
        url: String,
        status: u16,
        error: Option<String>,
        error_description: Option<String>,
    },
    /// Redirects are never followed (SSRF); the status is named for the operator.
    #[error("provider answered {url} with redirect status {status}; redirects are not followed")]
    Redirect { url: String, status: u16 },
    #[error("provider answer from {url} exceeds {limit} bytes")]
    TooLarge { url: String, limit: usize },
    #[error("provider answer from {url} is not usable: {reason}")]
    BadResponse { url: String, reason: String },
    /// The discovery document names another issuer (OIDC Discovery §4.3).
    #[error("discovered issuer {found:?} is not the configured issuer {expected:?}")]
    IssuerMismatch { expected: String, found: String },
    /// Discovery or JWKS have not been loaded yet; the caller answers 503 (rule 23).
    #[error("provider metadata not loaded yet")]
    NotReady,
    /// The provider does not offer what was asked (no userinfo endpoint, no JWKS URI).
    #[error("provider has no {what}")]
    Unsupported { what: &'static str },
    /// Building the client (TLS) or a request failed.
    #[error("cannot build the provider client: {reason}")]
    Setup { reason: String },
    /// `private_key_jwt`: the configured key cannot be used or the assertion cannot be signed.
    #[error("client authentication: {reason}")]
    ClientAuth { reason: String },
}

fn describe(error: &Option<String>, description: &Option<String>) -> String {
    match (error, description) {
        (Some(e), Some(d)) => format!(" ({e}: {d})"),
        (Some(e), None) => format!(" ({e})"),
        _ => String::new(),
    }
}

/// The URL as it may appear in errors and logs: no user info, query or fragment (a query could
/// carry a token in a misconfigured endpoint).
pub(crate) fn loggable(url: &Url) -> String {
    let mut shown = url.clone();
    shown.set_query(None);
    shown.set_fragment(None);
    // Only fails for URLs that cannot have credentials, which then have none to hide.
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.to_string()
}

type Inner = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The outbound client. Cheap to clone (the connection pool is shared).
#[derive(Clone)]
pub struct HttpClient {
    client: Inner,
    timeout: Duration,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// How the request authenticates, if at all.
#[derive(Clone, Copy)]
pub enum Auth<'a> {
    None,
    /// `Authorization: Basic` with the value already encoded.
    Basic(&'a Secret<String>),
    /// `Authorization: Bearer` (userinfo).
    Bearer(&'a Secret<String>),
}

impl HttpClient {
    /// A client whose every call must finish within `timeout`. Reads the system roots once per
    /// process (file I/O, no network).
    pub fn new(timeout: Duration) -> Result<Self, ProviderError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ProviderError::Setup {
                reason: e.to_string(),
            })?
            .with_root_certificates(native_roots())
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        // The https connector wraps this one; it must accept https URIs too.
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Ok(Self { client, timeout })
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// GET `url` and decode its JSON body.
    pub async fn get_json<T: DeserializeOwned>(
        &self,
        url: &Url,
        auth: Auth<'_>,
    ) -> Result<T, ProviderError> {
        let body = self.call(Method::GET, url, auth, None).await?;
        decode_json(url, &body)
    }

    /// POST an `application/x-www-form-urlencoded` body to `url` and decode the JSON answer.
    pub async fn post_form<T: DeserializeOwned>(
        &self,
        url: &Url,
        form: &[(&str, &str)],
        auth: Auth<'_>,
    ) -> Result<T, ProviderError> {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let body = self.call(Method::POST, url, auth, Some(body)).await?;
        decode_json(url, &body)
    }

    /// One call: the whole exchange (connect, headers, body) under one deadline.
    async fn call(
        &self,
        method: Method,
        url: &Url,
        auth: Auth<'_>,
        form: Option<String>,
    ) -> Result<Bytes, ProviderError> {
        let shown = loggable(url);
        let req = build_request(method, url, auth, form, &shown)?;
        match tokio::time::timeout(self.timeout, self.exchange(req, &shown)).await {
            Ok(result) => result,
            Err(_) => Err(ProviderError::Timeout {
                url: shown,
                after: self.timeout,
            }),
        }
    }

    async fn exchange(
        &self,
        req: Request<Full<Bytes>>,
        shown: &str,
    ) -> Result<Bytes, ProviderError> {
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| ProviderError::Unreachable {
                url: shown.to_owned(),
                source: Box::new(e),
            })?;
        let status = resp.status();
        if status.is_redirection() {
            return Err(ProviderError::Redirect {
                url: shown.to_owned(),
                status: status.as_u16(),
            });
        }
        let declared = resp
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_RESPONSE_BYTES as u64) {
            return Err(ProviderError::TooLarge {
                url: shown.to_owned(),
                limit: MAX_RESPONSE_BYTES,
            });
        }
        let body = match Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
        {
            Ok(collected) => collected.to_bytes(),
            Err(err) if err.downcast_ref::<LengthLimitError>().is_some() => {
                return Err(ProviderError::TooLarge {
                    url: shown.to_owned(),
                    limit: MAX_RESPONSE_BYTES,
                });
            }
            Err(err) => {
                return Err(ProviderError::Unreachable {
                    url: shown.to_owned(),
                    source: err,
                });
            }
        };
        if !status.is_success() {
            return Err(status_error(shown, status, &body));
        }
        Ok(body)
    }
}

fn build_request(
    method: Method,
    url: &Url,
    auth: Auth<'_>,
    form: Option<String>,
    shown: &str,
) -> Result<Request<Full<Bytes>>, ProviderError> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ProviderError::Setup {
            reason: format!("{shown}: only http and https URLs are supported"),
        });
    }
    let mut builder = Request::builder()
        .method(method)
        .uri(url.as_str())
        .header(header::ACCEPT, "application/json")
        .header(header::USER_AGENT, "gatehouse");
    let authorization = match auth {
        Auth::None => None,
        Auth::Basic(value) => Some(format!("Basic {}", value.expose())),
        Auth::Bearer(token) => Some(format!("Bearer {}", token.expose())),
    };
    if let Some(value) = authorization {
        let mut value = HeaderValue::from_str(&value).map_err(|_| ProviderError::Setup {
            reason: "credentials are not a valid header value".to_owned(),
        })?;
        // Keeps the value out of HPACK tables and any header dump.
        value.set_sensitive(true);
        builder = builder.header(header::AUTHORIZATION, value);
    }
    let body = match form {
        Some(form) => {
            builder = builder.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
            Full::new(Bytes::from(form))
        }
        None => Full::new(Bytes::new()),
    };
    builder.body(body).map_err(|e| ProviderError::Setup {
        reason: format!("{shown}: {e}"),
    })
}

/// A non-2xx answer, with the OAuth `error` code when the body is an OAuth error (§5.2).
fn status_error(shown: &str, status: StatusCode, body: &[u8]) -> ProviderError {
    #[derive(serde::Deserialize)]
    struct OAuthErrorBody {
        error: Option<String>,
        error_description: Option<String>,
    }
    let parsed: Option<OAuthErrorBody> = serde_json::from_slice(body).ok();
    let clean = |s: String| -> String {
        s.chars()
            .filter(|c| !c.is_control())
            .take(MAX_DESCRIPTION_CHARS)
            .collect()
    };
    let (error, error_description) = match parsed {
        Some(b) => (b.error.map(clean), b.error_description.map(clean)),
        None => (None, None),
    };
    ProviderError::Status {
        url: shown.to_owned(),
        status: status.as_u16(),
        error,
        error_description,
    }
}

/// Decodes a JSON body; the serde message names the field, never echoes the values.
pub fn decode_json<T: DeserializeOwned>(url: &Url, body: &[u8]) -> Result<T, ProviderError> {
    serde_json::from_slice(body).map_err(|e| ProviderError::BadResponse {
        url: loggable(url),
        reason: format!("invalid JSON at line {} column {}", e.line(), e.column()),
    })
}

fn native_roots() -> Arc<rustls::RootCertStore> {
    static ROOTS: OnceLock<Arc<rustls::RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut store = rustls::RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            for err in &found.errors {
                tracing::warn!(error = %err, "could not read some system CA certificates");
            }
            let (added, ignored) = store.add_parsable_certificates(found.certs);
            tracing::debug!(
                added,
                ignored,
                "loaded system CA certificates for provider calls"
            );
            Arc::new(store)
        })
        .clone()
}
