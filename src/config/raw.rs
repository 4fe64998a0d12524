//! Configuration step 1 of 3: the file as written. A serde mirror of `gatehouse.toml` with
//! no interpretation at all; `validate.rs` turns it into the typed [`super::Config`].
//!
//! Every field is optional so that a missing required key is reported by validation, with
//! the table that lacks it, instead of by serde as a bare "missing field". Every struct
//! denies unknown fields so that a typo is an error, never a silently ignored setting.

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub server: Option<RawServer>,
    pub log: Option<RawLog>,
    pub headers: Option<RawHeaders>,
    pub upstreams: Option<Vec<RawUpstream>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<String>,
    pub public_url: Option<String>,
    pub proxy_prefix: Option<String>,
    pub shutdown_timeout: Option<String>,
    pub header_read_timeout: Option<String>,
    pub max_header_bytes: Option<i64>,
    pub max_headers: Option<i64>,
    pub http2: Option<bool>,
    pub workers: Option<i64>,
    pub trusted_proxies: Option<Vec<String>>,
    pub tls: Option<RawTls>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub format: Option<String>,
    pub level: Option<String>,
    pub access_log: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeaders {
    pub identity: Option<Vec<String>>,
    pub allow_underscores: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub name: Option<String>,
    pub url: Option<String>,
    pub host: Option<String>,
    pub path_prefix: Option<String>,
    pub preserve_host: Option<bool>,
    pub connect_timeout: Option<String>,
    pub response_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub tls_ca_file: Option<String>,
    pub tls_client_cert_file: Option<String>,
    pub tls_client_key_file: Option<String>,
    pub insecure_skip_verify: Option<bool>,
}
