//! Configuration: the step before any request. Reads one TOML file (plus `GATEHOUSE_*`
//! environment overrides and `*_file` secrets), reports every problem at once with file,
//! line:column, key path and reason, and produces the typed [`Config`] the rest of the
//! gateway uses. Nothing after this module looks at configuration strings again.
//!
//! `raw.rs` mirrors the file with serde (`deny_unknown_fields`, no `flatten`), `validate.rs`
//! turns it into typed values, `env.rs` applies environment overrides, `secret.rs` holds the
//! redacting secret type.

mod env;
mod raw;
mod secret;
mod validate;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use ipnet::IpNet;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use url::Url;

pub use secret::Secret;
pub use validate::{ConfigError, Location, Problem, load_file, load_str, render_effective};

/// The whole validated configuration. Cheap to share behind an `Arc`.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the configuration came from (for messages); `None` when built in code.
    pub source: Option<PathBuf>,
    pub server: ServerConfig,
    pub log: LogConfig,
    pub headers: HeadersConfig,
    /// In the order written; the router picks the longest matching prefix among those whose
    /// host matches.
    pub upstreams: Vec<UpstreamConfig>,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// `[server] listen`, default `127.0.0.1:4180` (oauth2-proxy's default).
    pub listen: SocketAddr,
    /// `[server] public_url`: the origin people use; redirects and cookie flags come from it.
    pub public_url: Option<Url>,
    /// `[server.tls]`: terminate TLS with these PEM files.
    pub tls: Option<TlsConfig>,
    /// `[server] proxy_prefix`, default `/oauth2`: reserved for the built-in endpoints.
    pub proxy_prefix: String,
    /// `[server] shutdown_timeout`, default 30 s: how long in-flight requests may drain.
    pub shutdown_timeout: Duration,
    /// `[server] header_read_timeout`, default 10 s (slowloris defence, rule 20).
    pub header_read_timeout: Duration,
    /// `[server] max_header_bytes`, default 32 KiB: request line + headers.
    pub max_header_bytes: usize,
    /// `[server] max_headers`, default 100.
    pub max_headers: usize,
    /// `[server] http2`, default true: h2 via ALPN on TLS and h2c prior knowledge.
    pub http2: bool,
    /// `[server] workers`, default 0 = one per CPU core: threads each running their own
    /// event loop, listener (`SO_REUSEPORT`) and upstream pools, so a request never crosses
    /// threads.
    pub workers: usize,
    /// `[server] trusted_proxies`: CIDRs whose `X-Forwarded-*` are kept; default none.
    pub trusted_proxies: Vec<IpNet>,
}

/// A certificate chain and its private key, read and parsed at validation time so that an
/// unreadable or malformed file is a configuration error naming its key and line.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub cert_chain: Vec<CertificateDer<'static>>,
    pub key: Secret<Arc<PrivateKeyDer<'static>>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    /// `[log] format`, `"text"` (default) or `"json"`.
    pub format: LogFormat,
    /// `[log] level`, an `EnvFilter` directive, default `"info"`; `RUST_LOG` wins when set.
    pub level: String,
    /// `[log] access_log`, default true: one event per request.
    pub access_log: bool,
}

#[derive(Debug, Clone)]
pub struct HeadersConfig {
    /// `[headers] identity`: every header name the gateway may set toward upstreams. All are
    /// removed from client requests on every route (rules 17, 24). Defaults: the
    /// `X-Forwarded-{User,Email,Preferred-Username,Groups,Client-Id,Access-Token}` set.
    pub identity: Vec<HeaderName>,
    /// `[headers] allow_underscores`, default false: header names containing `_` are dropped,
    /// as nginx does (rule 24).
    pub allow_underscores: bool,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// `name`, default `"upstream-<index>"`; shows in logs.
    pub name: String,
    /// `url`: `http://` or `https://`, origin plus optional base path prepended to the request
    /// path.
    pub url: Url,
    /// `host`: only requests for this `Host` (exact, case-insensitive, port ignored); `None`
    /// means any host.
    pub host: Option<String>,
    /// `path_prefix`, default `"/"`, must start with `/`.
    pub path_prefix: String,
    /// `preserve_host`, default true: send the client's `Host`; false sends the upstream's.
    pub preserve_host: bool,
    /// `connect_timeout`, default 5 s → 502 when exceeded.
    pub connect_timeout: Duration,
    /// `response_timeout`, default 60 s: until the upstream's response headers → 504.
    pub response_timeout: Duration,
    /// `idle_timeout`, default 90 s: how long a pooled keep-alive connection may sit idle.
    pub idle_timeout: Duration,
    /// `tls_ca_file`: PEM bundle trusted instead of the system roots (parsed at validation).
    pub tls_ca_file: Option<PathBuf>,
    pub tls_ca_certs: Vec<CertificateDer<'static>>,
    /// `tls_client_cert_file` + `tls_client_key_file`: mutual TLS toward the upstream.
    pub tls_client_cert: Option<TlsConfig>,
    /// `insecure_skip_verify`, default false: accept any upstream certificate (warned at start).
    pub insecure_skip_verify: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".to_owned(),
            access_log: true,
        }
    }
}
