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
    /// `[metrics]`: Prometheus `/metrics` on its own address; `None` (the default) serves none.
    pub metrics: Option<MetricsConfig>,
    pub headers: HeadersConfig,
    /// In the order written; the router picks the longest matching prefix among those whose
    /// host matches.
    pub upstreams: Vec<UpstreamConfig>,
    /// `[provider]`: the OpenID Connect / OAuth 2.0 provider people log in at. `None` means the
    /// gateway authenticates nobody: every route must then be `public`.
    pub provider: Option<ProviderConfig>,
    /// `[session]`: required when `[provider]` is set.
    pub session: Option<SessionConfig>,
    /// `[authorization]`: who may pass once authenticated (every non-public route).
    pub authorization: AuthorizationConfig,
    /// `[[routes]]`: per-route policies, first match wins (in file order); requests no route
    /// matches get `default_policy`.
    pub routes: Vec<RouteConfig>,
    /// `[authorization] default_policy`, default `Authenticated` when a provider (or a bearer
    /// issuer) is configured, `Public` otherwise.
    pub default_policy: Policy,
    /// `[bearer]`: machine callers presenting access tokens. `None` when the section is absent
    /// (or trusts no issuer and has no introspection).
    pub bearer: Option<BearerConfig>,
    /// `[password_bridge]`: legacy HTTP Basic clients, opt-in.
    pub password_bridge: Option<PasswordBridgeConfig>,
}

/// The `WWW-Authenticate` realm when `[bearer] realm` does not name another.
pub const DEFAULT_REALM: &str = "gatehouse";

impl Config {
    /// The realm every `WWW-Authenticate` of this gateway names.
    pub fn realm(&self) -> &str {
        self.bearer
            .as_ref()
            .map_or(DEFAULT_REALM, |b| b.realm.as_str())
    }
}

/// `[bearer]`: which access tokens the gateway accepts, and from where.
#[derive(Debug, Clone)]
pub struct BearerConfig {
    /// The provider's issuer when `enabled = true` (its keys come from the provider's own
    /// discovery), then every `[[bearer.issuers]]` entry. Each is validated on its own.
    pub issuers: Vec<IssuerConfig>,
    /// `header`, default `authorization` (`Authorization: Bearer <token>`); any other name
    /// carries the bare token.
    pub header: HeaderName,
    /// `query_parameter`, default none: a token in the URL is ignored unless named here (rule 16).
    pub query_parameter: Option<String>,
    /// `max_token_bytes`, default 8 KiB: larger tokens are refused before any parsing (rule 32).
    pub max_token_bytes: usize,
    /// `cache_entries`, default 100 000: verified tokens kept by hash.
    pub cache_entries: u64,
    /// `pass_token`, default true: the caller's token travels on to the upstream.
    pub pass_token: bool,
    /// `realm`, default [`DEFAULT_REALM`]: named in every `WWW-Authenticate`.
    pub realm: String,
    /// `[bearer.introspection]`: opaque tokens (RFC 7662).
    pub introspection: Option<IntrospectionConfig>,
}

/// Where an issuer's keys are found.
#[derive(Debug, Clone)]
pub enum IssuerKeys {
    /// `[bearer] enabled`: the provider's JWKS (discovered or configured).
    Provider,
    /// `jwks_uri`.
    Jwks(Url),
    /// No `jwks_uri`: OpenID Connect discovery of the issuer.
    Discovery,
}

/// One trusted token issuer.
#[derive(Debug, Clone)]
pub struct IssuerConfig {
    /// `issuer`: compared byte for byte with `iss` (root-path issuers in both spellings).
    pub issuer: Url,
    pub keys: IssuerKeys,
    /// `audiences`: `aud` must contain one of them.
    pub audiences: Vec<String>,
    /// `algorithms`, default RS256, ES256, PS256, EdDSA; HMAC only with `hmac_secret`.
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    /// `hmac_secret` / `hmac_secret_file`: the only key `HS*` tokens are checked with.
    pub hmac_secret: Option<Secret<String>>,
    /// `require_typ`, default false: the JOSE `typ` must be `at+jwt` (RFC 9068 §2.1).
    pub require_typ: bool,
    /// `leeway` (of `[bearer]`), default 60 s, at most 5 min: for `exp` and `nbf`.
    pub leeway: Duration,
}

/// `[bearer.introspection]`.
#[derive(Debug, Clone)]
pub struct IntrospectionConfig {
    /// `endpoint`, default the provider's `introspection_endpoint` from discovery.
    pub endpoint: Option<Url>,
    /// `client_id` + `client_secret`(`_file`), default the provider's client.
    pub client_id: String,
    pub client_auth: ClientAuth,
    /// `cache_ttl`, default 60 s: results are kept until `min(exp, cache_ttl)` (rule 15).
    pub cache_ttl: Duration,
    /// `timeout` of each call: the provider's, else 10 s.
    pub timeout: Duration,
}

/// `[password_bridge]`: `Authorization: Basic` on routes with `password_bridge = true` is
/// exchanged for tokens with the resource owner password grant (deprecated, RFC 9700 §2.4).
#[derive(Debug, Clone)]
pub struct PasswordBridgeConfig {
    /// `scopes`, default the provider's scopes.
    pub scopes: Vec<String>,
    /// `max_failures`, default 5: failed attempts per user name per minute before the gateway
    /// stops asking the provider for that user (429 until the minute is over).
    pub max_failures: u32,
}

/// How the gateway authenticates itself at the provider's token endpoint.
#[derive(Debug, Clone)]
pub enum ClientAuth {
    /// `client_auth = "client_secret_basic"` (default when a secret is set).
    SecretBasic(Secret<String>),
    /// `client_auth = "client_secret_post"`.
    SecretPost(Secret<String>),
    /// `client_auth = "private_key_jwt"`: `private_key_file` (PEM, RSA or EC), `private_key_alg`
    /// (default RS256 for RSA, ES256 for EC), optional `private_key_id` (the JWT `kid`).
    PrivateKeyJwt {
        key_pem: Secret<Vec<u8>>,
        alg: jsonwebtoken::Algorithm,
        kid: Option<String>,
    },
    /// `client_auth = "none"` (public client; PKCE is what protects the code).
    None,
}

/// Where the provider's endpoints come from.
#[derive(Debug, Clone)]
pub struct ProviderEndpoints {
    pub authorization: Url,
    pub token: Url,
    pub userinfo: Option<Url>,
    pub jwks: Option<Url>,
    pub end_session: Option<Url>,
}

#[derive(Debug, Clone)]
pub struct ProviderConfig {
    /// `issuer`: exact issuer identifier; discovery at `<issuer>/.well-known/openid-configuration`.
    pub issuer: Url,
    /// Set when `authorization_endpoint` and `token_endpoint` (and optionally
    /// `userinfo_endpoint`, `jwks_uri`, `end_session_endpoint`) are given: no discovery (plain
    /// OAuth 2.0 providers). Then identity comes from userinfo unless an ID token is returned.
    pub endpoints: Option<ProviderEndpoints>,
    pub client_id: String,
    /// `client_secret` / `client_secret_file`, `client_auth`, `private_key_*`.
    pub client_auth: ClientAuth,
    /// `scopes`, default `["openid", "email", "profile"]`.
    pub scopes: Vec<String>,
    /// `[provider.extra_auth_params]`: added to the authorization request (e.g. `prompt`,
    /// `acr_values`, `audience`, `resource`); the protocol's own parameters cannot be set here.
    pub extra_auth_params: Vec<(String, String)>,
    /// `id_token_algorithms`, default `["RS256", "ES256", "PS256", "EdDSA"]`; never `none`;
    /// HMAC (`HS*`) only with `client_secret` set.
    pub id_token_algorithms: Vec<jsonwebtoken::Algorithm>,
    /// `userinfo`, default false with an ID token, always true without: call userinfo after
    /// login and merge its claims.
    pub use_userinfo: bool,
    /// `timeout`, default 10 s: each outbound call to the provider.
    pub timeout: Duration,
    /// `discovery_refresh`, default 1 h: how often discovery and JWKS are fetched again.
    pub discovery_refresh: Duration,
    /// `clock_leeway`, default 60 s (at most 5 min): for `exp`, `iat`, `nbf`.
    pub clock_leeway: Duration,
    /// `redirect_url`, default `<server.public_url><proxy_prefix>/callback`.
    pub redirect_url: Url,
    /// `post_logout_redirect_url`, default `<server.public_url>/`: sent on RP-initiated logout.
    pub post_logout_redirect_url: Url,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    Lax,
    Strict,
    None,
}

#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// `secret` / `secret_file` or `secrets` / `secrets_file` (one per line): base64 of at least
    /// 32 random bytes each; the first seals new cookies, all of them open (rotation).
    pub secrets: Vec<Secret<Vec<u8>>>,
    /// `cookie_name`, default `"_gatehouse"`; `__Host-` is prefixed when the public URL is https
    /// (and `cookie_domain` is unset), so the effective name is in `SessionConfig::cookie_name`.
    pub cookie_name: String,
    /// `cookie_domain`, default none (host-only cookie).
    pub cookie_domain: Option<String>,
    /// Derived from `server.public_url`: https → `Secure`.
    pub cookie_secure: bool,
    /// `cookie_samesite`, default `"lax"`.
    pub same_site: SameSite,
    /// `lifetime`, default 12 h: absolute, from login.
    pub lifetime: Duration,
    /// `idle_timeout`, default 1 h: since the last request.
    pub idle_timeout: Duration,
    /// `login_timeout`, default 10 min: how long a started login may take.
    pub login_timeout: Duration,
    /// `max_logins`, default 5: concurrent pending logins (tabs) per browser; the oldest is
    /// dropped.
    pub max_logins: usize,
    /// `refresh_before`, default 60 s: an access token this close to its expiry (or past it)
    /// is refreshed with the refresh token before the request is forwarded.
    pub refresh_before: Duration,
    /// `store`, default `"cookie"`: where sessions live.
    pub store: StoreConfig,
}

/// `[session] store`: the whole session sealed in the browser's cookie, or in Redis with only a
/// sealed random id in the cookie.
#[derive(Debug, Clone, Default)]
pub enum StoreConfig {
    #[default]
    Cookie,
    Redis(RedisConfig),
}

/// `store = "redis"`: how to reach Redis. Passwords never stay in a URL (they are moved to
/// `password`), so printing a URL never shows one.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    pub topology: RedisTopology,
    /// `redis_username` or the URL's user: the ACL user (Redis 6+).
    pub username: Option<String>,
    /// `redis_password` / `redis_password_file` or the URL's password.
    pub password: Option<Secret<String>>,
    /// `redis_tls_ca_file` (rediss:// only): the CAs that sign the Redis servers'
    /// certificates, trusted instead of the system roots. The file as configured, and its
    /// PEM as read (and checked to hold certificates) at start: the form the redis crate reads.
    pub tls_ca_file: Option<(PathBuf, Vec<u8>)>,
    /// `redis_timeout` (default 1 s): how long connecting, or one command, may take before
    /// Redis counts as down and the request gets 503.
    pub timeout: Duration,
}

/// Exactly one deployment shape.
#[derive(Debug, Clone)]
pub enum RedisTopology {
    /// `redis_url`: one server (`redis://` or `rediss://` for TLS), database from the path.
    Standalone(Url),
    /// `redis_sentinels` + `redis_sentinel_master`: the master is asked of the sentinels and
    /// asked again after a failure; TLS to the master when the sentinel URLs are `rediss://`.
    Sentinel { sentinels: Vec<Url>, master: String },
    /// `redis_cluster`: seed nodes of a Redis Cluster.
    Cluster(Vec<Url>),
}

#[derive(Debug, Clone, Default)]
pub struct AuthorizationConfig {
    /// `allowed_email_domains`: exact domains, or `.example.com` for any subdomain (matched on
    /// a `.` boundary); `"*"` for any. Default: any (when the list is empty).
    pub allowed_email_domains: Vec<String>,
    /// `allowed_emails` plus the lines of `allowed_emails_file`, lowercased.
    pub allowed_emails: Vec<String>,
    /// `require_email_verified`, default true: a provider's `email_verified: false` refuses the
    /// login; with an email rule, so does a missing `email_verified`.
    pub require_email_verified: bool,
    /// `groups_claim`, default `"groups"`: a claim name or dotted path (`realm_access.roles`).
    pub groups_claim: Vec<String>,
    /// `allowed_groups`: at least one of them is required on every non-public route; empty =
    /// any group.
    pub allowed_groups: Vec<String>,
}

/// What a route demands of a caller.
#[derive(Debug, Clone)]
pub enum Policy {
    /// `policy = "public"`: no authentication; identity headers are still stripped.
    Public,
    /// `policy = "authenticated"`: any authenticated caller the `[authorization]` rules allow.
    Authenticated,
    /// `groups = [...]` (any of) and/or `claims = { path = value or [values] }` (all of), on top
    /// of the `[authorization]` rules.
    Require {
        groups: Vec<String>,
        claims: Vec<(Vec<String>, Vec<serde_json::Value>)>,
        /// `scopes = [...]` (all of): from the token's `scope` or `scp`; 403 with
        /// `error="insufficient_scope"` when one is missing.
        scopes: Vec<String>,
    },
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// `methods`, default any.
    pub methods: Vec<http::Method>,
    /// `host`, default any (lowercase, no port).
    pub host: Option<String>,
    /// `path_prefix` (segment-boundary match, like upstreams) or `path_regex` (anchored at the
    /// start; matched against the normalised path); exactly one of them.
    pub path: RoutePath,
    pub policy: Policy,
    /// `password_bridge`, default false: HTTP Basic credentials are accepted here through
    /// `[password_bridge]`.
    pub password_bridge: bool,
}

#[derive(Debug, Clone)]
pub enum RoutePath {
    Prefix(String),
    Regex(regex::Regex),
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
    /// `[server] header_read_timeout`, default 10 s (slowloris defence, rule 20): from the
    /// accept (or the previous response) to a complete request head; enforced at most
    /// `timer::tick_for` late (server/timer.rs).
    pub header_read_timeout: Duration,
    /// `[server] body_read_timeout`, default 60 s (nginx's `client_body_timeout`): the longest
    /// pause inside a request body on its way upstream before the request is answered 408
    /// and the upstream's request abandoned (a slow POST holds no upstream for ever).
    pub body_read_timeout: Duration,
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
pub struct MetricsConfig {
    /// `[metrics] listen`: never the public listener's address (rule 37).
    pub listen: SocketAddr,
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
    /// `[headers] user`, `email`, `preferred_username`, `groups`, `access_token`: the names the
    /// identity is sent under (defaults `X-Forwarded-User`, …). Each is also in `identity`, so a
    /// client's copy is always removed.
    pub names: IdentityNames,
    /// `[headers] pass_access_token`, default false: the session's access token in
    /// `names.access_token`.
    pub pass_access_token: bool,
    /// `[headers] pass_authorization_header`, default false: `Authorization: Bearer <access
    /// token>` to the app, replacing any `Authorization` the client sent. (oauth2-proxy sends the
    /// ID token here; an app behind Gatehouse gets the token an API would accept.)
    pub pass_authorization_header: bool,
}

#[derive(Debug, Clone)]
pub struct IdentityNames {
    pub user: HeaderName,
    pub email: HeaderName,
    pub preferred_username: HeaderName,
    pub groups: HeaderName,
    pub access_token: HeaderName,
    /// `client_id`, default `X-Forwarded-Client-Id`: the OAuth client a bearer token was
    /// issued to (`client_id` or `azp` claim).
    pub client_id: HeaderName,
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
    /// `response_timeout`, default 60 s: from the end of the request body until the upstream's
    /// response headers → 504.
    pub response_timeout: Duration,
    /// `read_timeout`, default 60 s (nginx's `proxy_read_timeout`): the longest the upstream
    /// may go silent in the middle of a response body; then the response is cut off.
    pub read_timeout: Duration,
    /// `idle_timeout`, default 90 s: how long a pooled keep-alive connection may sit idle.
    pub idle_timeout: Duration,
    /// `tls_ca_file`: PEM bundle trusted instead of the system roots (parsed at validation).
    pub tls_ca_file: Option<PathBuf>,
    pub tls_ca_certs: Vec<CertificateDer<'static>>,
    /// `tls_client_cert_file` + `tls_client_key_file`: mutual TLS toward the upstream.
    pub tls_client_cert: Option<TlsConfig>,
    /// `insecure_skip_verify`, default false: accept any upstream certificate (warned at start).
    pub insecure_skip_verify: bool,
    /// `[upstreams.client]`: the upstream is a protected API; the gateway sends it its own
    /// client-credentials token.
    pub client: Option<UpstreamClientConfig>,
}

/// `[upstreams.client]`: the gateway as an OAuth client (client credentials grant, RFC 6749
/// §4.4) toward one upstream.
#[derive(Debug, Clone)]
pub struct UpstreamClientConfig {
    /// `token_endpoint`, default the provider's.
    pub token_endpoint: Option<Url>,
    pub client_id: String,
    /// `client_secret`(`_file`), `client_auth`, `private_key_*`: as for `[provider]`.
    pub client_auth: ClientAuth,
    /// `scopes`, default none (the provider's default for the client).
    pub scopes: Vec<String>,
    /// `audience` (Auth0, Okta style) and `resource` (RFC 8707), sent when set.
    pub audience: Option<String>,
    pub resource: Option<String>,
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
