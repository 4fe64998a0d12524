//! Configuration step 1 of 3: the file as written. A serde mirror of `gatehouse.toml` with
//! no interpretation at all; `validate.rs` turns it into the typed [`super::Config`].
//!
//! Every field is optional so that a missing required key is reported by validation, with
//! the table that lacks it, instead of by serde as a bare "missing field". Every struct
//! denies unknown fields so that a typo is an error, never a silently ignored setting.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub server: Option<RawServer>,
    pub log: Option<RawLog>,
    pub metrics: Option<RawMetrics>,
    pub headers: Option<RawHeaders>,
    pub upstreams: Option<Vec<RawUpstream>>,
    pub provider: Option<RawProvider>,
    pub session: Option<RawSession>,
    pub authorization: Option<RawAuthorization>,
    pub routes: Option<Vec<RawRoute>>,
    pub bearer: Option<RawBearer>,
    pub password_bridge: Option<RawPasswordBridge>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBearer {
    pub enabled: Option<bool>,
    pub audiences: Option<Vec<String>>,
    pub algorithms: Option<Vec<String>>,
    pub require_typ: Option<bool>,
    pub leeway: Option<String>,
    pub header: Option<String>,
    pub query_parameter: Option<String>,
    pub max_token_bytes: Option<i64>,
    pub cache_entries: Option<i64>,
    pub pass_token: Option<bool>,
    pub realm: Option<String>,
    pub introspection: Option<RawIntrospection>,
    pub issuers: Option<Vec<RawIssuer>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIssuer {
    pub issuer: Option<String>,
    pub jwks_uri: Option<String>,
    pub audiences: Option<Vec<String>>,
    pub algorithms: Option<Vec<String>>,
    pub hmac_secret: Option<String>,
    pub hmac_secret_file: Option<String>,
    pub require_typ: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIntrospection {
    pub endpoint: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub client_secret_file: Option<String>,
    pub cache_ttl: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPasswordBridge {
    pub enabled: Option<bool>,
    pub scopes: Option<Vec<String>>,
    pub max_failures: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<String>,
    pub public_url: Option<String>,
    pub proxy_prefix: Option<String>,
    pub shutdown_timeout: Option<String>,
    pub header_read_timeout: Option<String>,
    pub body_read_timeout: Option<String>,
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
pub struct RawMetrics {
    pub listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeaders {
    pub identity: Option<Vec<String>>,
    pub allow_underscores: Option<bool>,
    pub user: Option<String>,
    pub email: Option<String>,
    pub preferred_username: Option<String>,
    pub groups: Option<String>,
    pub access_token: Option<String>,
    pub client_id: Option<String>,
    pub pass_access_token: Option<bool>,
    pub pass_authorization_header: Option<bool>,
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
    pub read_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub tls_ca_file: Option<String>,
    pub tls_client_cert_file: Option<String>,
    pub tls_client_key_file: Option<String>,
    pub insecure_skip_verify: Option<bool>,
    pub client: Option<RawUpstreamClient>,
}

/// `[upstreams.client]`: the gateway's own OAuth client toward a protected upstream.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamClient {
    pub token_endpoint: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub client_secret_file: Option<String>,
    pub client_auth: Option<String>,
    pub private_key_file: Option<String>,
    pub private_key_alg: Option<String>,
    pub private_key_id: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub audience: Option<String>,
    pub resource: Option<String>,
}

/// The client-authentication keys, wherever a client is configured (`[provider]`,
/// `[upstreams.client]`).
pub struct RawClientAuth<'a> {
    pub client_secret: &'a Option<String>,
    pub client_secret_file: &'a Option<String>,
    pub client_auth: &'a Option<String>,
    pub private_key_file: &'a Option<String>,
    pub private_key_alg: &'a Option<String>,
    pub private_key_id: &'a Option<String>,
}

/// Both tables spell client authentication the same way.
macro_rules! client_auth_keys {
    ($($table:ty),+) => {$(
        impl $table {
            pub fn client_auth_keys(&self) -> RawClientAuth<'_> {
                RawClientAuth {
                    client_secret: &self.client_secret,
                    client_secret_file: &self.client_secret_file,
                    client_auth: &self.client_auth,
                    private_key_file: &self.private_key_file,
                    private_key_alg: &self.private_key_alg,
                    private_key_id: &self.private_key_id,
                }
            }
        }
    )+};
}
client_auth_keys!(RawProvider, RawUpstreamClient);

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    pub issuer: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub client_secret_file: Option<String>,
    pub client_auth: Option<String>,
    pub private_key_file: Option<String>,
    pub private_key_alg: Option<String>,
    pub private_key_id: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub extra_auth_params: Option<BTreeMap<String, String>>,
    pub id_token_algorithms: Option<Vec<String>>,
    pub userinfo: Option<bool>,
    pub timeout: Option<String>,
    pub discovery_refresh: Option<String>,
    pub clock_leeway: Option<String>,
    pub redirect_url: Option<String>,
    pub post_logout_redirect_url: Option<String>,
    pub authorization_endpoint: Option<String>,
    pub token_endpoint: Option<String>,
    pub userinfo_endpoint: Option<String>,
    pub jwks_uri: Option<String>,
    pub end_session_endpoint: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSession {
    pub store: Option<String>,
    pub secret: Option<String>,
    pub secret_file: Option<String>,
    pub secrets: Option<Vec<String>>,
    pub secrets_file: Option<String>,
    pub cookie_name: Option<String>,
    pub cookie_domain: Option<String>,
    pub cookie_samesite: Option<String>,
    pub lifetime: Option<String>,
    pub idle_timeout: Option<String>,
    pub login_timeout: Option<String>,
    pub max_logins: Option<i64>,
    pub refresh_before: Option<String>,
    pub redis_url: Option<String>,
    pub redis_username: Option<String>,
    pub redis_password: Option<String>,
    pub redis_password_file: Option<String>,
    pub redis_sentinels: Option<Vec<String>>,
    pub redis_sentinel_master: Option<String>,
    pub redis_cluster: Option<Vec<String>>,
    pub redis_tls_ca_file: Option<String>,
    pub redis_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuthorization {
    pub allowed_email_domains: Option<Vec<String>>,
    pub allowed_emails: Option<Vec<String>>,
    pub allowed_emails_file: Option<String>,
    pub require_email_verified: Option<bool>,
    pub groups_claim: Option<String>,
    pub allowed_groups: Option<Vec<String>>,
    pub default_policy: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub methods: Option<Vec<String>>,
    pub host: Option<String>,
    pub path_prefix: Option<String>,
    pub path_regex: Option<String>,
    pub policy: Option<String>,
    pub groups: Option<Vec<String>>,
    pub scopes: Option<Vec<String>>,
    pub password_bridge: Option<bool>,
    /// Claim path (dotted, so quoted in TOML) → a string, boolean or number, or an array of
    /// them; anything else is refused by validation, with its position.
    pub claims: Option<BTreeMap<String, serde_json::Value>>,
}
