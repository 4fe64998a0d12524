//! The demo's development OpenID provider — never for production.
//!
//! A small, in-memory OpenID Connect provider that `gatehouse demo` runs next to the gateway so
//! the whole product works with nothing but Rust installed. Anyone can sign in as anyone: the
//! login form takes a user name, an email and groups and believes them. Everything else follows
//! the standards a real provider follows, because the gateway treats it like any provider and
//! finds it by discovery:
//!
//! * OpenID Connect Discovery (`/.well-known/openid-configuration`) and a JWKS (`/jwks`) with one
//!   ES256 key generated at start;
//! * the authorization code flow with PKCE S256 required (RFC 6749, RFC 7636), exact
//!   `redirect_uri` matching and the `iss` authorization response parameter (RFC 9207);
//! * client authentication with `client_secret_basic` or `client_secret_post`;
//! * single-use codes (60 s), rotating refresh tokens whose reuse revokes the whole family,
//!   `client_credentials` for machine clients;
//! * the resource owner password grant (RFC 6749 §4.3) for the `gatehouse` client only, for the
//!   fixed [`PASSWORD_USERS`], whose password is [`DEMO_PASSWORD`] — a development convenience
//!   for testing a legacy password bridge, never a real credential check;
//! * token introspection (RFC 7662, `/introspect`) of its own access tokens, for any of its
//!   clients;
//! * JWT access tokens in the RFC 9068 profile (`typ: at+jwt`), ID tokens, `/userinfo`, and
//!   RP-initiated logout (`/end_session`).
//!
//! Refresh tokens: the authorization code grant always returns one (whether or not
//! `offline_access` was requested), since the gateway relies on refreshing its sessions; the
//! `client_credentials` and `password` grants never do.
//!
//! Claims: `groups` is always present in user tokens; `email`/`email_verified` need the `email`
//! scope and `name`/`preferred_username` the `profile` scope, in the ID token and at `/userinfo`.
//! Every access token has the audience [`ACCESS_TOKEN_AUDIENCE`] (the gateway), whichever
//! client obtained it.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::digest;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::Body;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use url::Url;

use super::html;
use crate::config::Secret;

/// The confidential client the gateway uses for browser logins.
pub const GATEWAY_CLIENT_ID: &str = "gatehouse";
/// The confidential machine client (`client_credentials` only).
pub const SERVICE_CLIENT_ID: &str = "demo-service";
/// The `aud` of every access token: the gateway, which guards the apps behind it.
pub const ACCESS_TOKEN_AUDIENCE: &str = GATEWAY_CLIENT_ID;
/// Request bodies above this are refused with 413 before any parsing.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Default lifetime of access and ID tokens.
pub const DEFAULT_ACCESS_TOKEN_TTL: Duration = Duration::from_secs(300);
/// Default lifetime of refresh tokens.
pub const DEFAULT_REFRESH_TOKEN_TTL: Duration = Duration::from_secs(8 * 3600);

/// The password of every [`PASSWORD_USERS`] entry in the `password` grant. Deliberately
/// obvious: this is a development provider.
pub const DEMO_PASSWORD: &str = "password";

/// A user known to the `password` grant (the browser login believes anyone; this grant only
/// knows these).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DemoUser {
    /// The login name, also `sub`, `name` and `preferred_username`; `email` is
    /// `<name>@example.com`.
    pub name: &'static str,
    pub groups: &'static [&'static str],
}

/// The users of the `password` grant, all with the password [`DEMO_PASSWORD`].
pub const PASSWORD_USERS: &[DemoUser] = &[
    DemoUser {
        name: "alice",
        groups: &["admins", "developers"],
    },
    DemoUser {
        name: "bob",
        groups: &["developers"],
    },
    DemoUser {
        name: "carol",
        groups: &["readers"],
    },
    DemoUser {
        name: "mallory",
        groups: &[],
    },
];

/// The scope of a `password` grant that asks for none.
const PASSWORD_DEFAULT_SCOPE: &str = "openid";

const CODE_TTL_SECS: u64 = 60;
/// How long a login form stays valid between `GET` and `POST /authorize`.
const PENDING_TTL_SECS: u64 = 600;
const USER_SCOPES: &[&str] = &["openid", "profile", "email", "groups", "offline_access"];
const SERVICE_SCOPES: &[&str] = &["api"];
const GROUP_CHOICES: &[&str] = &["admins", "developers", "readers"];
const MAX_NAME_CHARS: usize = 100;
const MAX_EMAIL_CHARS: usize = 254;
const MAX_GROUPS: usize = 32;
const MAX_GROUP_CHARS: usize = 64;

/// Why the provider could not be created.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("cannot generate the development provider's signing key")]
    KeyGeneration,
    #[error("`{url}` is not a usable http(s) base URL")]
    BadUrl { url: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grant {
    AuthorizationCode,
    RefreshToken,
    ClientCredentials,
    Password,
}

#[derive(Debug)]
struct Client {
    id: String,
    secret: Secret<String>,
    redirect_uris: Vec<String>,
    post_logout_redirect_uris: Vec<String>,
    grants: &'static [Grant],
    scopes: &'static [&'static str],
}

struct SigningKey {
    kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    /// The public key as an uncompressed SEC1 point (`0x04 ‖ x ‖ y`).
    public_point: Vec<u8>,
    /// The public JWK, served as is at `/jwks`.
    jwk: Value,
}

#[derive(Debug, Clone)]
struct Pending {
    client_id: String,
    redirect_uri: String,
    state: Option<String>,
    nonce: Option<String>,
    scope: Vec<String>,
    code_challenge: String,
    expires: u64,
}

/// One sign-in at the provider. It has no browser session of its own: a login lives as long as
/// the tokens issued from it, and `end_session` ends it.
#[derive(Debug, Clone)]
struct Login {
    sub: String,
    name: String,
    email: String,
    groups: Vec<String>,
    auth_time: u64,
    /// `None` for a browser sign-in (it lives until `end_session`); a `password` grant's login
    /// ends with its tokens, so that a bridge calling once per request does not pile them up.
    expires: Option<u64>,
}

#[derive(Debug, Clone)]
struct CodeGrant {
    client_id: String,
    redirect_uri: String,
    code_challenge: String,
    nonce: Option<String>,
    scope: Vec<String>,
    sid: String,
    expires: u64,
}

#[derive(Debug, Clone)]
struct RefreshGrant {
    client_id: String,
    scope: Vec<String>,
    sid: String,
    expires: u64,
}

impl State {
    /// A new refresh token for this login and client, remembered until `expires`.
    fn issue_refresh(
        &mut self,
        client_id: &str,
        scope: &[String],
        sid: &str,
        expires: u64,
    ) -> String {
        let token = random_token(32);
        self.refresh.insert(
            token.clone(),
            RefreshGrant {
                client_id: client_id.to_owned(),
                scope: scope.to_vec(),
                sid: sid.to_owned(),
                expires,
            },
        );
        token
    }
}

#[derive(Default)]
struct State {
    pending: HashMap<String, Pending>,
    codes: HashMap<String, CodeGrant>,
    /// Redeemed codes → their login, so that a replayed code revokes what it produced
    /// (RFC 6749 §4.1.2).
    spent_codes: HashMap<String, (String, u64)>,
    refresh: HashMap<String, RefreshGrant>,
    /// Rotated-out refresh tokens → their login, for reuse detection.
    spent_refresh: HashMap<String, (String, u64)>,
    logins: HashMap<String, Login>,
}

impl State {
    fn prune(&mut self, now: u64) {
        self.pending.retain(|_, p| p.expires > now);
        self.codes.retain(|_, c| c.expires > now);
        self.spent_codes.retain(|_, (_, exp)| *exp > now);
        self.refresh.retain(|_, r| r.expires > now);
        self.spent_refresh.retain(|_, (_, exp)| *exp > now);
        self.logins
            .retain(|_, l| l.expires.is_none_or(|expires| expires > now));
    }

    /// Ends a login: its refresh tokens stop working and `/userinfo` refuses its access tokens.
    fn end_login(&mut self, sid: &str) {
        self.logins.remove(sid);
        self.refresh.retain(|_, r| r.sid != sid);
    }
}

/// A deliberate defect in the ID tokens the provider issues, to test that a relying party
/// (the gateway, or any other OIDC client) refuses them. See
/// [`DevProvider::with_id_token_fault`].
///
/// For testing clients only: no provider has a fault unless a test asks for one, and
/// `gatehouse demo` never sets one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdTokenFault {
    /// Correctly built and signed, then one byte of the signature is flipped.
    BadSignature,
    /// `iss` names another issuer (signed with the provider's real key).
    WrongIssuer,
    /// `aud` and `azp` name another client (signed with the provider's real key).
    WrongAudience,
    /// `exp` an hour in the past, `iat` a token lifetime before that.
    Expired,
    /// `iat` (and `exp`) an hour in the future.
    IssuedInFuture,
    /// Unsigned: header `{"alg":"none"}` and an empty signature (RFC 7519 §6).
    AlgNone,
    /// `nonce` is not the one the client sent in its authorization request.
    WrongNonce,
    /// Signed with a freshly generated key whose `kid` is not in the JWKS.
    UnknownKid,
    /// Algorithm confusion: `HS256` with the provider's `kid`, keyed with the public key's
    /// bytes (the uncompressed SEC1 point from the JWKS) as the HMAC secret.
    HmacWithPublicKey,
    /// Valid in every respect but naming another subject: what a relying party must refuse
    /// when it refreshes a session (OpenID Connect Core §12.2).
    OtherSubject,
    /// No ID token at all in the token response, though `openid` was asked for.
    Missing,
    /// Valid in every respect, but the provider says the address is not verified
    /// (`email_verified: false`), as providers that let users type any address do.
    UnverifiedEmail,
}

/// The development OpenID provider. Cheap to share behind an `Arc`; all state is in memory.
pub struct DevProvider {
    issuer: String,
    access_token_ttl: Duration,
    refresh_token_ttl: Duration,
    /// Off (`None`) unless a test turns it on with [`DevProvider::with_id_token_fault`] or,
    /// after a login, [`DevProvider::set_id_token_fault`].
    id_token_fault: Mutex<Option<IdTokenFault>>,
    key: SigningKey,
    /// The `gatehouse` client.
    gateway: Client,
    /// The `demo-service` client.
    service: Client,
    state: Mutex<State>,
    /// `grant_type=password` requests at the token endpoint, successful or not.
    password_grants: AtomicU64,
    refresh_grants: AtomicU64,
    /// Tests switch the token endpoint off to see a relying party ride out an outage.
    token_endpoint_down: std::sync::atomic::AtomicBool,
    /// Tests delay `/token` answers (after the grant is done) to catch a relying party
    /// abandoning one half-way.
    token_delay_ms: AtomicU64,
    /// Tests switch `/userinfo` off (503) to see a relying party refuse a login it cannot
    /// complete.
    userinfo_down: std::sync::atomic::AtomicBool,
    /// Requests to `/introspect`, successful or not.
    introspections: AtomicU64,
}

impl std::fmt::Debug for DevProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevProvider")
            .field("issuer", &self.issuer)
            .field("kid", &self.key.kid)
            .field("id_token_fault", &self.id_token_fault())
            .field("gateway", &self.gateway)
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct AccessClaims {
    iss: String,
    sub: String,
    aud: String,
    client_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    scope: String,
    exp: u64,
    iat: u64,
    jti: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    auth_time: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    groups: Option<Vec<String>>,
}

#[derive(Debug, Serialize, Deserialize)]
struct IdClaims {
    iss: String,
    sub: String,
    aud: String,
    azp: String,
    exp: u64,
    iat: u64,
    auth_time: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nonce: Option<String>,
    sid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    email_verified: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    preferred_username: Option<String>,
    groups: Vec<String>,
}

/// An OAuth error answer from the token or userinfo endpoints.
struct OAuthError {
    status: StatusCode,
    code: &'static str,
    description: String,
}

impl OAuthError {
    fn new(status: StatusCode, code: &'static str, description: impl Into<String>) -> Self {
        Self {
            status,
            code,
            description: description.into(),
        }
    }
    fn invalid_request(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", description)
    }
    fn invalid_grant(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_grant", description)
    }
    fn invalid_client() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client authentication failed",
        )
    }
    fn server_error() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "the provider could not sign a token",
        )
    }

    fn into_response(self) -> Response<Full<Bytes>> {
        let mut resp = json_response(
            self.status,
            &json!({"error": self.code, "error_description": self.description}),
        );
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"gatehouse-demo-provider\""),
            );
        }
        resp
    }
}

impl DevProvider {
    /// A provider whose issuer is `issuer` (an `http(s)` origin, e.g. `http://127.0.0.1:41234`)
    /// and whose `gatehouse` client redirects to `<gateway_public_url>/oauth2/callback`. Generates
    /// a fresh signing key and fresh client secrets.
    pub fn new(issuer: &str, gateway_public_url: &str) -> Result<Self, ProviderError> {
        let issuer = base_url(issuer)?;
        let gateway = base_url(gateway_public_url)?;
        let key = generate_signing_key()?;
        Ok(Self {
            issuer,
            access_token_ttl: DEFAULT_ACCESS_TOKEN_TTL,
            refresh_token_ttl: DEFAULT_REFRESH_TOKEN_TTL,
            id_token_fault: Mutex::new(None),
            key,
            gateway: Client {
                id: GATEWAY_CLIENT_ID.to_owned(),
                secret: Secret::new(random_token(24)),
                redirect_uris: vec![format!("{gateway}/oauth2/callback")],
                post_logout_redirect_uris: vec![format!("{gateway}/")],
                grants: &[
                    Grant::AuthorizationCode,
                    Grant::RefreshToken,
                    Grant::Password,
                ],
                scopes: USER_SCOPES,
            },
            service: Client {
                id: SERVICE_CLIENT_ID.to_owned(),
                secret: Secret::new(random_token(24)),
                redirect_uris: Vec::new(),
                post_logout_redirect_uris: Vec::new(),
                grants: &[Grant::ClientCredentials],
                scopes: SERVICE_SCOPES,
            },
            state: Mutex::new(State::default()),
            password_grants: AtomicU64::new(0),
            refresh_grants: AtomicU64::new(0),
            token_endpoint_down: std::sync::atomic::AtomicBool::new(false),
            token_delay_ms: AtomicU64::new(0),
            userinfo_down: std::sync::atomic::AtomicBool::new(false),
            introspections: AtomicU64::new(0),
        })
    }

    /// Sets the lifetime of access and ID tokens (default 300 s); tests use short ones.
    pub fn with_access_token_ttl(mut self, ttl: Duration) -> Self {
        self.access_token_ttl = ttl;
        self
    }

    /// Sets the lifetime of refresh tokens (default 8 h).
    pub fn with_refresh_token_ttl(mut self, ttl: Duration) -> Self {
        self.refresh_token_ttl = ttl;
        self
    }

    /// Makes every ID token issued at the token endpoint (authorization code and refresh
    /// grants) carry `fault`, so that tests can check a relying party refuses it. Access
    /// tokens, `/userinfo` and everything else stay correct.
    ///
    /// For testing clients only — a misbehaving provider on purpose. It is never on by
    /// default, and `gatehouse demo` never turns it on.
    pub fn with_id_token_fault(self, fault: IdTokenFault) -> Self {
        self.set_id_token_fault(Some(fault));
        self
    }

    /// The same from now on (`None`: correct ID tokens again), so that a test can sign in
    /// with a good ID token and get a faulty one at the next refresh.
    pub fn set_id_token_fault(&self, fault: Option<IdTokenFault>) {
        *self
            .id_token_fault
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = fault;
    }

    fn id_token_fault(&self) -> Option<IdTokenFault> {
        *self
            .id_token_fault
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The issuer identifier, without a trailing slash; discovery is at
    /// `<issuer>/.well-known/openid-configuration`.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn access_token_ttl(&self) -> Duration {
        self.access_token_ttl
    }

    /// The secret of the `gatehouse` client, for the gateway's configuration.
    pub fn gateway_client_secret(&self) -> &Secret<String> {
        &self.gateway.secret
    }

    /// The secret of the `demo-service` machine client, for the banner's curl line.
    pub fn service_client_secret(&self) -> &Secret<String> {
        &self.service.secret
    }

    /// The provider session ids (`sid`) of `user`'s current sign-ins.
    pub fn sids_of(&self, user: &str) -> Vec<String> {
        self.lock()
            .logins
            .iter()
            .filter(|(_, l)| l.sub == user)
            .map(|(sid, _)| sid.clone())
            .collect()
    }

    /// Signs `claims` with the provider's key as a JWT of type `typ`: tests build logout tokens
    /// (and broken ones) with it, as the provider would send them.
    pub fn sign_for_tests(&self, claims: &Value, typ: &str) -> Option<String> {
        self.sign(claims, typ).ok()
    }

    /// For tests of relying parties: `true` makes `/token` answer 503 until switched back.
    pub fn set_token_endpoint_down(&self, down: bool) {
        self.token_endpoint_down.store(down, Ordering::SeqCst);
    }

    /// For tests of relying parties: `true` makes `/userinfo` answer 503 until switched back.
    pub fn set_userinfo_down(&self, down: bool) {
        self.userinfo_down.store(down, Ordering::SeqCst);
    }

    /// For tests of relying parties: every `/token` answer is held back this long after the
    /// grant is done (refresh tokens already rotated), as a slow provider's would be.
    pub fn set_token_delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.token_delay_ms.store(ms, Ordering::SeqCst);
    }

    /// `grant_type=refresh_token` requests so far (a relying party's refreshes, counted here).
    pub fn refresh_grant_requests(&self) -> u64 {
        self.refresh_grants.load(Ordering::SeqCst)
    }

    /// Ends every sign-in of `user`, as an administrator disabling them would: their refresh
    /// tokens stop working and `/userinfo` refuses their access tokens.
    pub fn end_sign_ins_of(&self, user: &str) {
        let sids = self.sids_of(user);
        let mut state = self.lock();
        for sid in sids {
            state.end_login(&sid);
        }
    }

    /// Replaces the groups of every current sign-in of `user`, as an administrator editing
    /// them would: tokens issued from now on (refreshes included) carry `groups`.
    pub fn set_groups_of(&self, user: &str, groups: &[&str]) {
        let mut state = self.lock();
        for login in state.logins.values_mut().filter(|l| l.sub == user) {
            login.groups = groups.iter().map(|g| (*g).to_owned()).collect();
        }
    }

    /// Every refresh token issued to `user`'s current sign-ins that the provider still
    /// remembers, rotated-out ones included: for tests that search what a relying party sent
    /// elsewhere for them.
    pub fn refresh_tokens_of(&self, user: &str) -> Vec<String> {
        let state = self.lock();
        let of_user = |sid: &str| state.logins.get(sid).is_some_and(|l| l.sub == user);
        let live = state.refresh.iter().filter(|(_, g)| of_user(&g.sid));
        let spent = state
            .spent_refresh
            .iter()
            .filter(|(_, (sid, _))| of_user(sid));
        live.map(|(t, _)| t.clone())
            .chain(spent.map(|(t, _)| t.clone()))
            .collect()
    }

    /// How many `grant_type=password` requests reached the token endpoint (any outcome,
    /// failed client authentication included).
    pub fn password_grant_requests(&self) -> u64 {
        self.password_grants.load(Ordering::SeqCst)
    }

    /// How many requests reached `/introspect` (any outcome).
    pub fn introspection_requests(&self) -> u64 {
        self.introspections.load(Ordering::SeqCst)
    }

    /// `<gateway_public_url>/oauth2/callback`, the `gatehouse` client's one redirect URI.
    pub fn gateway_redirect_uri(&self) -> &str {
        self.gateway
            .redirect_uris
            .first()
            .map(String::as_str)
            .unwrap_or_default()
    }

    fn client(&self, id: &str) -> Option<&Client> {
        [&self.gateway, &self.service]
            .into_iter()
            .find(|c| c.id == id)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters for a development provider, so recover rather than fail every request.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adapter for [`crate::server::serve_simple`]: collects the body (at most
    /// [`MAX_BODY_BYTES`], else 413) and calls [`DevProvider::handle`].
    pub async fn handle_body<B>(&self, req: Request<B>) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn StdError + Send + Sync>>,
    {
        let (parts, body) = req.into_parts();
        let declared_too_big = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n > MAX_BODY_BYTES as u64);
        if declared_too_big {
            return too_large();
        }
        match Limited::new(body, MAX_BODY_BYTES).collect().await {
            Ok(collected) => {
                self.handle(Request::from_parts(parts, collected.to_bytes()))
                    .await
            }
            Err(err) if err.downcast_ref::<LengthLimitError>().is_some() => too_large(),
            Err(_) => {
                OAuthError::invalid_request("the request body could not be read").into_response()
            }
        }
    }

    /// Answers one request to the provider. Pure with respect to I/O, so tests drive it
    /// directly.
    pub async fn handle(&self, req: Request<Bytes>) -> Response<Full<Bytes>> {
        let now = now_secs();
        self.lock().prune(now);
        let path = req.uri().path().to_owned();
        let method = req.method().clone();
        match (path.as_str(), &method) {
            ("/.well-known/openid-configuration", &Method::GET | &Method::HEAD) => {
                json_response(StatusCode::OK, &self.discovery())
            }
            ("/jwks", &Method::GET | &Method::HEAD) => {
                json_response(StatusCode::OK, &json!({"keys": [self.key.jwk.clone()]}))
            }
            ("/authorize", &Method::GET) => self.authorize_get(&req, now),
            ("/authorize", &Method::POST) => self.authorize_post(&req, now),
            ("/token", &Method::POST) => {
                let answer = match self.token(&req, now) {
                    Ok(resp) => resp,
                    Err(err) => err.into_response(),
                };
                let delay = self.token_delay_ms.load(Ordering::SeqCst);
                if delay > 0 {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                }
                answer
            }
            ("/userinfo", &Method::GET | &Method::POST) => {
                if self.userinfo_down.load(Ordering::SeqCst) {
                    return json_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &json!({"error": "temporarily_unavailable"}),
                    );
                }
                self.userinfo(&req)
            }
            ("/introspect", &Method::POST) => match self.introspect(&req) {
                Ok(resp) => resp,
                Err(err) => err.into_response(),
            },
            ("/end_session", &Method::GET | &Method::POST) => self.end_session(&req),
            ("/", &Method::GET) => html::response(
                StatusCode::OK,
                html::page(
                    "Gatehouse demo: development OpenID provider",
                    &format!(
                        "<div class=\"card\"><p>This is the in-memory development provider of \
                         <code>gatehouse demo</code>. Its configuration is at \
                         <a href=\"/.well-known/openid-configuration\">{}</a>.</p></div>",
                        html::escape(&format!("{}/.well-known/openid-configuration", self.issuer))
                    ),
                ),
            ),
            (
                "/.well-known/openid-configuration"
                | "/jwks"
                | "/authorize"
                | "/token"
                | "/introspect"
                | "/userinfo"
                | "/end_session"
                | "/",
                _,
            ) => {
                let allow = match path.as_str() {
                    "/authorize" | "/userinfo" | "/end_session" => "GET, POST",
                    "/token" | "/introspect" => "POST",
                    _ => "GET, HEAD",
                };
                let mut resp = json_response(
                    StatusCode::METHOD_NOT_ALLOWED,
                    &json!({"error": "invalid_request", "error_description": "method not allowed"}),
                );
                resp.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static(allow));
                resp
            }
            _ => json_response(StatusCode::NOT_FOUND, &json!({"error": "not_found"})),
        }
    }

    fn discovery(&self) -> Value {
        let iss = &self.issuer;
        json!({
            "issuer": iss,
            "authorization_endpoint": format!("{iss}/authorize"),
            "token_endpoint": format!("{iss}/token"),
            "userinfo_endpoint": format!("{iss}/userinfo"),
            "jwks_uri": format!("{iss}/jwks"),
            "end_session_endpoint": format!("{iss}/end_session"),
            "introspection_endpoint": format!("{iss}/introspect"),
            "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials", "password"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "id_token_signing_alg_values_supported": ["ES256"],
            "scopes_supported": USER_SCOPES.iter().chain(SERVICE_SCOPES).collect::<Vec<_>>(),
            "claims_supported": [
                "iss", "sub", "aud", "azp", "exp", "iat", "auth_time", "nonce", "sid",
                "email", "email_verified", "name", "preferred_username", "groups"
            ],
            "subject_types_supported": ["public"],
            "authorization_response_iss_parameter_supported": true,
            "claims_parameter_supported": false,
            "request_parameter_supported": false,
            "request_uri_parameter_supported": false,
        })
    }

    // ---- /authorize ----------------------------------------------------------------------

    fn authorize_get(&self, req: &Request<Bytes>, now: u64) -> Response<Full<Bytes>> {
        let params = parse_pairs(req.uri().query().unwrap_or("").as_bytes());
        let client_id = match single(&params, "client_id") {
            Ok(Some(id)) => id,
            Ok(None) => return error_page("The request has no client_id."),
            Err(()) => return error_page("The request repeats client_id."),
        };
        let Some(client) = self.client(client_id) else {
            return error_page(&format!("Unknown client \"{client_id}\"."));
        };
        let redirect_uri = match single(&params, "redirect_uri") {
            Ok(Some(uri)) => uri,
            Ok(None) => return error_page("The request has no redirect_uri."),
            Err(()) => return error_page("The request repeats redirect_uri."),
        };
        // Exact string match (OAuth 2.0 Security BCP): an unregistered URI gets an error page and
        // never a redirect, or this provider would be an open redirector.
        if !client.redirect_uris.iter().any(|u| u == redirect_uri) {
            return error_page(&format!(
                "The redirect_uri \"{redirect_uri}\" is not registered for client \"{client_id}\"."
            ));
        }
        // From here on the redirect URI is trusted, so errors go back to the client (§4.1.2.1).
        let state = single(&params, "state").ok().flatten();
        let back = |code: &'static str, description: &str| {
            self.redirect_with(
                redirect_uri,
                &[("error", code), ("error_description", description)],
                state,
            )
        };
        for name in [
            "response_type",
            "scope",
            "state",
            "nonce",
            "code_challenge",
            "code_challenge_method",
            "prompt",
        ] {
            if single(&params, name).is_err() {
                return back("invalid_request", &format!("{name} is repeated"));
            }
        }
        if !client.grants.contains(&Grant::AuthorizationCode) {
            return back(
                "unauthorized_client",
                "this client may not use the authorization code flow",
            );
        }
        match single(&params, "response_type").ok().flatten() {
            Some("code") => {}
            Some(_) => {
                return back(
                    "unsupported_response_type",
                    "only response_type=code is supported",
                );
            }
            None => return back("invalid_request", "response_type is missing"),
        }
        if single(&params, "request").ok().flatten().is_some() {
            return back("request_not_supported", "request objects are not supported");
        }
        if single(&params, "request_uri").ok().flatten().is_some() {
            return back("request_uri_not_supported", "request_uri is not supported");
        }
        let Some(challenge) = single(&params, "code_challenge").ok().flatten() else {
            return back(
                "invalid_request",
                "PKCE is required: code_challenge is missing",
            );
        };
        match single(&params, "code_challenge_method").ok().flatten() {
            Some("S256") => {}
            _ => {
                return back("invalid_request", "PKCE code_challenge_method must be S256");
            }
        }
        // An S256 challenge is BASE64URL(SHA-256), always 43 characters without padding.
        if challenge.len() != 43 || URL_SAFE_NO_PAD.decode(challenge).is_err() {
            return back(
                "invalid_request",
                "code_challenge is not a valid S256 value",
            );
        }
        let prompt = single(&params, "prompt").ok().flatten().unwrap_or("");
        if prompt.split(' ').any(|p| p == "none") {
            // No provider-side browser session exists, so a silent login can never succeed.
            return back("login_required", "the development provider always asks");
        }
        let scope = filter_scopes(
            single(&params, "scope").ok().flatten().unwrap_or(""),
            client.scopes,
        );
        let pending = Pending {
            client_id: client.id.clone(),
            redirect_uri: redirect_uri.to_owned(),
            state: state.map(str::to_owned),
            nonce: single(&params, "nonce").ok().flatten().map(str::to_owned),
            scope,
            code_challenge: challenge.to_owned(),
            expires: now + PENDING_TTL_SECS,
        };
        let request_id = random_token(24);
        let page = login_page(&request_id, &pending, None, "", "");
        self.lock().pending.insert(request_id, pending);
        html::response(StatusCode::OK, page)
    }

    fn authorize_post(&self, req: &Request<Bytes>, now: u64) -> Response<Full<Bytes>> {
        let form = parse_pairs(req.body());
        let request_id = single(&form, "request_id").ok().flatten().unwrap_or("");
        let Some(pending) = self.lock().pending.get(request_id).cloned() else {
            return error_page(
                "This sign-in request has expired or was already used. Go back to the app and \
                 start again.",
            );
        };
        let back = |params: &[(&str, &str)]| {
            self.redirect_with(&pending.redirect_uri, params, pending.state.as_deref())
        };
        if single(&form, "action").ok().flatten() == Some("cancel") {
            self.lock().pending.remove(request_id);
            return back(&[
                ("error", "access_denied"),
                ("error_description", "the user cancelled the sign-in"),
            ]);
        }
        let name = single(&form, "username")
            .ok()
            .flatten()
            .unwrap_or("")
            .trim()
            .to_owned();
        let email_in = single(&form, "email")
            .ok()
            .flatten()
            .unwrap_or("")
            .trim()
            .to_owned();
        let problem = if name.is_empty() {
            Some("Enter a user name.")
        } else if name.chars().count() > MAX_NAME_CHARS || name.chars().any(char::is_control) {
            Some("The user name is too long or contains control characters.")
        } else if email_in.chars().count() > MAX_EMAIL_CHARS
            || (!email_in.is_empty() && !email_in.contains('@'))
            || email_in.chars().any(char::is_control)
        {
            Some("The email address is not valid.")
        } else {
            None
        };
        if let Some(problem) = problem {
            let page = login_page(request_id, &pending, Some(problem), &name, &email_in);
            return html::response(StatusCode::BAD_REQUEST, page);
        }
        let email = if email_in.is_empty() {
            default_email(&name)
        } else {
            email_in
        };
        let mut groups: Vec<String> = Vec::new();
        let extra = single(&form, "groups_extra").ok().flatten().unwrap_or("");
        let chosen = form
            .iter()
            .filter(|(k, _)| k == "groups")
            .map(|(_, v)| v.as_str())
            .chain(extra.split(|c: char| c == ',' || c.is_whitespace()));
        for g in chosen {
            let g = g.trim();
            let fine = !g.is_empty()
                && g.chars().count() <= MAX_GROUP_CHARS
                && !g.chars().any(char::is_control);
            if fine && !groups.iter().any(|x| x == g) && groups.len() < MAX_GROUPS {
                groups.push(g.to_owned());
            }
        }
        let sid = random_token(16);
        let code = random_token(32);
        {
            let mut state = self.lock();
            if state.pending.remove(request_id).is_none() {
                return error_page("This sign-in request was already used.");
            }
            state.logins.insert(
                sid.clone(),
                Login {
                    sub: name.clone(),
                    name: name.clone(),
                    email,
                    groups,
                    auth_time: now,
                    expires: None,
                },
            );
            state.codes.insert(
                code.clone(),
                CodeGrant {
                    client_id: pending.client_id.clone(),
                    redirect_uri: pending.redirect_uri.clone(),
                    code_challenge: pending.code_challenge.clone(),
                    nonce: pending.nonce.clone(),
                    scope: pending.scope.clone(),
                    sid,
                    expires: now + CODE_TTL_SECS,
                },
            );
        }
        tracing::info!(client_id = %pending.client_id, user = %name, "development provider: signed in");
        back(&[("code", &code)])
    }

    /// 302 to a registered redirect URI with `params`, `state` and `iss` (RFC 9207).
    fn redirect_with(
        &self,
        redirect_uri: &str,
        params: &[(&str, &str)],
        state: Option<&str>,
    ) -> Response<Full<Bytes>> {
        let Ok(mut url) = Url::parse(redirect_uri) else {
            return error_page("The registered redirect URI is not a valid URL.");
        };
        {
            let mut q = url.query_pairs_mut();
            for (k, v) in params {
                q.append_pair(k, v);
            }
            if let Some(state) = state {
                q.append_pair("state", state);
            }
            q.append_pair("iss", &self.issuer);
        }
        redirect(url.as_str())
    }

    // ---- /token --------------------------------------------------------------------------

    fn token(&self, req: &Request<Bytes>, now: u64) -> Result<Response<Full<Bytes>>, OAuthError> {
        if self.token_endpoint_down.load(Ordering::SeqCst) {
            return Err(OAuthError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "the token endpoint is down (test switch)",
            ));
        }
        let form_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|v| {
                v.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            })
            .unwrap_or(false);
        if !form_type {
            return Err(OAuthError::invalid_request(
                "the body must be application/x-www-form-urlencoded",
            ));
        }
        let form = parse_pairs(req.body());
        for (name, _) in &form {
            if form.iter().filter(|(k, _)| k == name).count() > 1 {
                return Err(OAuthError::invalid_request(format!("{name} is repeated")));
            }
        }
        let grant_type = single(&form, "grant_type").ok().flatten().unwrap_or("");
        if grant_type == "password" {
            self.password_grants.fetch_add(1, Ordering::SeqCst);
        }
        if grant_type == "refresh_token" {
            self.refresh_grants.fetch_add(1, Ordering::SeqCst);
        }
        let client = self.authenticate_client(req.headers(), &form)?;
        let grant = match grant_type {
            "authorization_code" => Grant::AuthorizationCode,
            "refresh_token" => Grant::RefreshToken,
            "client_credentials" => Grant::ClientCredentials,
            "password" => Grant::Password,
            "" => return Err(OAuthError::invalid_request("grant_type is missing")),
            _ => {
                return Err(OAuthError::new(
                    StatusCode::BAD_REQUEST,
                    "unsupported_grant_type",
                    "this grant type is not supported",
                ));
            }
        };
        if !client.grants.contains(&grant) {
            return Err(OAuthError::new(
                StatusCode::BAD_REQUEST,
                "unauthorized_client",
                format!("client {} may not use {grant_type}", client.id),
            ));
        }
        let field = |name: &str| single(&form, name).ok().flatten();
        let body = match grant {
            Grant::AuthorizationCode => self.grant_code(client, &field, now)?,
            Grant::RefreshToken => self.grant_refresh(client, &field, now)?,
            Grant::ClientCredentials => self.grant_client_credentials(client, &field, now)?,
            Grant::Password => self.grant_password(client, &field, now)?,
        };
        let mut resp = json_response(StatusCode::OK, &body);
        resp.headers_mut()
            .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        Ok(resp)
    }

    fn authenticate_client(
        &self,
        headers: &HeaderMap,
        form: &[(String, String)],
    ) -> Result<&Client, OAuthError> {
        let body_id = single(form, "client_id").ok().flatten();
        let body_secret = single(form, "client_secret").ok().flatten();
        let (id, secret) = match headers.get(header::AUTHORIZATION) {
            Some(value) => {
                if body_secret.is_some() {
                    return Err(OAuthError::invalid_request(
                        "use one client authentication method, not two",
                    ));
                }
                let (id, secret) = parse_basic(value).ok_or_else(OAuthError::invalid_client)?;
                if body_id.is_some_and(|b| b != id) {
                    return Err(OAuthError::invalid_client());
                }
                (id, secret)
            }
            None => match (body_id, body_secret) {
                (Some(id), Some(secret)) => (id.to_owned(), secret.to_owned()),
                _ => return Err(OAuthError::invalid_client()),
            },
        };
        let client = self.client(&id).ok_or_else(OAuthError::invalid_client)?;
        if !constant_time_eq(secret.as_bytes(), client.secret.expose().as_bytes()) {
            return Err(OAuthError::invalid_client());
        }
        Ok(client)
    }

    fn grant_code<'a>(
        &self,
        client: &Client,
        field: &dyn Fn(&str) -> Option<&'a str>,
        now: u64,
    ) -> Result<Value, OAuthError> {
        let code = field("code").ok_or_else(|| OAuthError::invalid_request("code is missing"))?;
        let redirect_uri = field("redirect_uri")
            .ok_or_else(|| OAuthError::invalid_request("redirect_uri is missing"))?;
        let verifier = field("code_verifier")
            .ok_or_else(|| OAuthError::invalid_request("PKCE code_verifier is missing"))?;
        let mut state = self.lock();
        // A code is spent by the first attempt to redeem it, successful or not.
        let Some(grant) = state.codes.remove(code) else {
            if let Some((sid, _)) = state.spent_codes.get(code).cloned() {
                state.end_login(&sid);
                tracing::warn!(client_id = %client.id, "development provider: authorization code replayed; its tokens were revoked");
            }
            return Err(OAuthError::invalid_grant(
                "the code is invalid, expired or already used",
            ));
        };
        state.spent_codes.insert(
            code.to_owned(),
            (grant.sid.clone(), now + CODE_TTL_SECS * 10),
        );
        if grant.expires <= now {
            return Err(OAuthError::invalid_grant("the code has expired"));
        }
        if grant.client_id != client.id {
            return Err(OAuthError::invalid_grant(
                "the code was issued to another client",
            ));
        }
        if grant.redirect_uri != redirect_uri {
            return Err(OAuthError::invalid_grant(
                "redirect_uri does not match the authorization request",
            ));
        }
        if !pkce_matches(verifier, &grant.code_challenge) {
            return Err(OAuthError::invalid_grant("PKCE verification failed"));
        }
        let login = state
            .logins
            .get(&grant.sid)
            .cloned()
            .ok_or_else(|| OAuthError::invalid_grant("the sign-in has ended"))?;
        let refresh_token = state.issue_refresh(
            &client.id,
            &grant.scope,
            &grant.sid,
            now + self.refresh_token_ttl.as_secs(),
        );
        drop(state);
        self.user_tokens(
            client,
            &login,
            &grant.sid,
            &grant.scope,
            grant.nonce.as_deref(),
            Some(refresh_token),
            now,
        )
    }

    fn grant_refresh<'a>(
        &self,
        client: &Client,
        field: &dyn Fn(&str) -> Option<&'a str>,
        now: u64,
    ) -> Result<Value, OAuthError> {
        let token = field("refresh_token")
            .ok_or_else(|| OAuthError::invalid_request("refresh_token is missing"))?;
        let mut state = self.lock();
        let Some(grant) = state.refresh.get(token).cloned() else {
            // Reuse of a rotated-out token means it leaked: revoke the whole family (RFC 9700
            // §4.14.2).
            if let Some((sid, _)) = state.spent_refresh.get(token).cloned() {
                state.end_login(&sid);
                tracing::warn!(client_id = %client.id, "development provider: refresh token reused; the sign-in was revoked");
            }
            return Err(OAuthError::invalid_grant(
                "the refresh token is invalid, expired or already used",
            ));
        };
        if grant.client_id != client.id {
            return Err(OAuthError::invalid_grant(
                "the refresh token was issued to another client",
            ));
        }
        let scope = match field("scope") {
            None => grant.scope.clone(),
            Some(requested) => {
                let requested: Vec<String> = requested
                    .split(' ')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect();
                if requested.iter().any(|s| !grant.scope.contains(s)) {
                    return Err(OAuthError::new(
                        StatusCode::BAD_REQUEST,
                        "invalid_scope",
                        "a refresh may only narrow the original scope",
                    ));
                }
                requested
            }
        };
        let login = state
            .logins
            .get(&grant.sid)
            .cloned()
            .ok_or_else(|| OAuthError::invalid_grant("the sign-in has ended"))?;
        state.refresh.remove(token);
        state.spent_refresh.insert(
            token.to_owned(),
            (grant.sid.clone(), grant.expires.max(now + 60)),
        );
        let refresh_token = state.issue_refresh(
            &client.id,
            &grant.scope,
            &grant.sid,
            now + self.refresh_token_ttl.as_secs(),
        );
        drop(state);
        self.user_tokens(
            client,
            &login,
            &grant.sid,
            &scope,
            None,
            Some(refresh_token),
            now,
        )
    }

    /// RFC 6749 §4.3: `username` + `password` for one of [`PASSWORD_USERS`]. The same access
    /// and ID tokens as the code flow, no refresh token. Unknown user or wrong password:
    /// `invalid_grant` (one message for both).
    fn grant_password<'a>(
        &self,
        client: &Client,
        field: &dyn Fn(&str) -> Option<&'a str>,
        now: u64,
    ) -> Result<Value, OAuthError> {
        let username =
            field("username").ok_or_else(|| OAuthError::invalid_request("username is missing"))?;
        let password =
            field("password").ok_or_else(|| OAuthError::invalid_request("password is missing"))?;
        let user = PASSWORD_USERS.iter().find(|u| u.name == username);
        let password_ok = constant_time_eq(password.as_bytes(), DEMO_PASSWORD.as_bytes());
        let Some(user) = user.filter(|_| password_ok) else {
            tracing::info!(client_id = %client.id, "development provider: password grant refused");
            return Err(OAuthError::invalid_grant(
                "the user name or password is wrong",
            ));
        };
        let scope = filter_scopes(
            field("scope").unwrap_or(PASSWORD_DEFAULT_SCOPE),
            client.scopes,
        );
        let login = Login {
            sub: user.name.to_owned(),
            name: user.name.to_owned(),
            email: format!("{}@example.com", user.name),
            groups: user.groups.iter().map(|g| (*g).to_owned()).collect(),
            auth_time: now,
            expires: Some(now + self.access_token_ttl.as_secs()),
        };
        let sid = random_token(16);
        self.lock().logins.insert(sid.clone(), login.clone());
        tracing::info!(client_id = %client.id, user = %user.name, "development provider: password grant");
        self.user_tokens(client, &login, &sid, &scope, None, None, now)
    }

    fn grant_client_credentials<'a>(
        &self,
        client: &Client,
        field: &dyn Fn(&str) -> Option<&'a str>,
        now: u64,
    ) -> Result<Value, OAuthError> {
        let scope: Vec<String> = match field("scope") {
            None => client.scopes.iter().map(|s| (*s).to_owned()).collect(),
            Some(requested) => {
                let requested: Vec<String> = requested
                    .split(' ')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect();
                if requested
                    .iter()
                    .any(|s| !client.scopes.contains(&s.as_str()))
                {
                    return Err(OAuthError::new(
                        StatusCode::BAD_REQUEST,
                        "invalid_scope",
                        "a requested scope is not allowed for this client",
                    ));
                }
                requested
            }
        };
        let claims = AccessClaims {
            iss: self.issuer.clone(),
            sub: client.id.clone(),
            aud: ACCESS_TOKEN_AUDIENCE.to_owned(),
            client_id: client.id.clone(),
            scope: scope.join(" "),
            exp: now + self.access_token_ttl.as_secs(),
            iat: now,
            jti: random_token(16),
            auth_time: None,
            sid: None,
            groups: None,
        };
        let access_token = self.sign(&claims, "at+jwt")?;
        let mut body = json!({
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": self.access_token_ttl.as_secs(),
        });
        if !scope.is_empty() {
            body["scope"] = Value::String(scope.join(" "));
        }
        Ok(body)
    }

    #[allow(clippy::too_many_arguments)]
    fn user_tokens(
        &self,
        client: &Client,
        login: &Login,
        sid: &str,
        scope: &[String],
        nonce: Option<&str>,
        refresh_token: Option<String>,
        now: u64,
    ) -> Result<Value, OAuthError> {
        let ttl = self.access_token_ttl.as_secs();
        let has = |s: &str| scope.iter().any(|x| x == s);
        let access = AccessClaims {
            iss: self.issuer.clone(),
            sub: login.sub.clone(),
            aud: ACCESS_TOKEN_AUDIENCE.to_owned(),
            client_id: client.id.clone(),
            scope: scope.join(" "),
            exp: now + ttl,
            iat: now,
            jti: random_token(16),
            auth_time: Some(login.auth_time),
            sid: Some(sid.to_owned()),
            groups: Some(login.groups.clone()),
        };
        let mut body = json!({
            "access_token": self.sign(&access, "at+jwt")?,
            "token_type": "Bearer",
            "expires_in": ttl,
            "scope": scope.join(" "),
        });
        if let Some(refresh_token) = refresh_token {
            body["refresh_token"] = Value::String(refresh_token);
        }
        if has("openid") {
            let id = IdClaims {
                iss: self.issuer.clone(),
                sub: login.sub.clone(),
                aud: client.id.clone(),
                azp: client.id.clone(),
                exp: now + ttl,
                iat: now,
                auth_time: login.auth_time,
                nonce: nonce.map(str::to_owned),
                sid: sid.to_owned(),
                email: has("email").then(|| login.email.clone()),
                email_verified: has("email").then_some(true),
                name: has("profile").then(|| login.name.clone()),
                preferred_username: has("profile").then(|| login.name.clone()),
                groups: login.groups.clone(),
            };
            if self.id_token_fault() != Some(IdTokenFault::Missing) {
                body["id_token"] = Value::String(self.sign_id_token(id)?);
            }
        }
        Ok(body)
    }

    /// Signs an ID token, with the configured [`IdTokenFault`] if there is one.
    fn sign_id_token(&self, mut id: IdClaims) -> Result<String, OAuthError> {
        const HOUR: u64 = 3600;
        let Some(fault) = self.id_token_fault() else {
            return self.sign(&id, "JWT");
        };
        tracing::warn!(
            ?fault,
            "development provider: issuing a deliberately faulty ID token"
        );
        let fail = |err: &dyn std::fmt::Display| {
            tracing::error!(error = %err, "development provider: faulty signing failed");
            OAuthError::server_error()
        };
        match fault {
            IdTokenFault::BadSignature => {
                let token = self.sign(&id, "JWT")?;
                let (signed, signature) = token.rsplit_once('.').ok_or_else(|| fail(&"no dot"))?;
                let mut raw = URL_SAFE_NO_PAD.decode(signature).map_err(|e| fail(&e))?;
                let first = raw.first_mut().ok_or_else(|| fail(&"empty signature"))?;
                *first ^= 0x01;
                Ok(format!("{signed}.{}", URL_SAFE_NO_PAD.encode(raw)))
            }
            IdTokenFault::WrongIssuer => {
                id.iss = "https://attacker.example".to_owned();
                self.sign(&id, "JWT")
            }
            IdTokenFault::WrongAudience => {
                id.aud = "another-client".to_owned();
                id.azp = "another-client".to_owned();
                self.sign(&id, "JWT")
            }
            IdTokenFault::Expired => {
                let lifetime = id.exp.saturating_sub(id.iat);
                id.exp = id.iat.saturating_sub(HOUR);
                id.iat = id.exp.saturating_sub(lifetime);
                self.sign(&id, "JWT")
            }
            IdTokenFault::IssuedInFuture => {
                id.iat += HOUR;
                id.exp += HOUR;
                self.sign(&id, "JWT")
            }
            IdTokenFault::WrongNonce => {
                id.nonce = Some(random_token(16));
                self.sign(&id, "JWT")
            }
            IdTokenFault::OtherSubject => {
                id.sub = format!("not-{}", id.sub);
                self.sign(&id, "JWT")
            }
            // Not signed at all: `user_tokens` leaves the ID token out.
            IdTokenFault::Missing => self.sign(&id, "JWT"),
            IdTokenFault::UnverifiedEmail => {
                id.email_verified = id.email_verified.map(|_| false);
                self.sign(&id, "JWT")
            }
            IdTokenFault::AlgNone => {
                let claims = serde_json::to_vec(&id).map_err(|e| fail(&e))?;
                Ok(format!(
                    "{}.{}.",
                    URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
                    URL_SAFE_NO_PAD.encode(claims)
                ))
            }
            IdTokenFault::UnknownKid => {
                let stranger = generate_signing_key().map_err(|e| fail(&e))?;
                let mut header = Header::new(Algorithm::ES256);
                header.typ = Some("JWT".to_owned());
                header.kid = Some(stranger.kid.clone());
                jsonwebtoken::encode(&header, &id, &stranger.encoding).map_err(|e| fail(&e))
            }
            IdTokenFault::HmacWithPublicKey => {
                let mut header = Header::new(Algorithm::HS256);
                header.typ = Some("JWT".to_owned());
                header.kid = Some(self.key.kid.clone());
                let secret = EncodingKey::from_secret(&self.key.public_point);
                jsonwebtoken::encode(&header, &id, &secret).map_err(|e| fail(&e))
            }
        }
    }

    fn sign<T: Serialize>(&self, claims: &T, typ: &str) -> Result<String, OAuthError> {
        let mut header = Header::new(Algorithm::ES256);
        header.typ = Some(typ.to_owned());
        header.kid = Some(self.key.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key.encoding).map_err(|err| {
            tracing::error!(error = %err, "development provider: signing failed");
            OAuthError::server_error()
        })
    }

    // ---- /userinfo -----------------------------------------------------------------------

    fn userinfo(&self, req: &Request<Bytes>) -> Response<Full<Bytes>> {
        let token = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, rest) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            });
        let Some(token) = token else {
            return bearer_error(StatusCode::UNAUTHORIZED, None, "");
        };
        let Some(claims) = self.verify_access_token(token) else {
            return bearer_error(
                StatusCode::UNAUTHORIZED,
                Some("invalid_token"),
                "the access token is invalid or expired",
            );
        };
        let scope: Vec<&str> = claims.scope.split(' ').collect();
        if !scope.contains(&"openid") {
            return bearer_error(
                StatusCode::FORBIDDEN,
                Some("insufficient_scope"),
                "userinfo needs the openid scope",
            );
        }
        let login = claims
            .sid
            .as_deref()
            .and_then(|sid| self.lock().logins.get(sid).cloned());
        let Some(login) = login else {
            return bearer_error(
                StatusCode::UNAUTHORIZED,
                Some("invalid_token"),
                "the sign-in behind this token has ended",
            );
        };
        let mut body = json!({"sub": login.sub, "groups": login.groups});
        if scope.contains(&"email") {
            body["email"] = Value::String(login.email.clone());
            body["email_verified"] = Value::Bool(true);
        }
        if scope.contains(&"profile") {
            body["name"] = Value::String(login.name.clone());
            body["preferred_username"] = Value::String(login.name.clone());
        }
        json_response(StatusCode::OK, &body)
    }

    // ---- /introspect ----------------------------------------------------------------------

    /// RFC 7662 for this provider's own access tokens. Any registered client may ask (its
    /// authentication as at the token endpoint). Active means: signature, issuer, audience and
    /// expiry check out, and for a user token its sign-in has not ended.
    fn introspect(&self, req: &Request<Bytes>) -> Result<Response<Full<Bytes>>, OAuthError> {
        self.introspections.fetch_add(1, Ordering::SeqCst);
        let form = parse_pairs(req.body());
        let client = self.authenticate_client(req.headers(), &form)?;
        let token = single(&form, "token")
            .map_err(|()| OAuthError::invalid_request("token is repeated"))?
            .ok_or_else(|| OAuthError::invalid_request("token is missing"))?;
        let claims = self.verify_access_token(token).filter(|c| match &c.sid {
            Some(sid) => self.lock().logins.contains_key(sid),
            None => true,
        });
        let Some(c) = claims else {
            return Ok(json_response(StatusCode::OK, &json!({"active": false})));
        };
        tracing::debug!(client_id = %client.id, "development provider: introspected a token");
        let mut body = json!({
            "active": true,
            "iss": c.iss,
            "sub": c.sub,
            "aud": c.aud,
            "client_id": c.client_id,
            "exp": c.exp,
            "iat": c.iat,
            "jti": c.jti,
            "token_type": "Bearer",
        });
        if !c.scope.is_empty() {
            body["scope"] = Value::String(c.scope);
        }
        if let Some(groups) = c.groups {
            body["groups"] = json!(groups);
        }
        Ok(json_response(StatusCode::OK, &body))
    }

    fn verify_access_token(&self, token: &str) -> Option<AccessClaims> {
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[ACCESS_TOKEN_AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        // Same clock as the issuer: no skew to forgive, and short test lifetimes stay exact.
        validation.leeway = 0;
        let data =
            jsonwebtoken::decode::<AccessClaims>(token, &self.key.decoding, &validation).ok()?;
        // The ID token shares the audience `gatehouse`; only the type tells them apart.
        (data.header.typ.as_deref() == Some("at+jwt")).then_some(data.claims)
    }

    // ---- /end_session --------------------------------------------------------------------

    fn end_session(&self, req: &Request<Bytes>) -> Response<Full<Bytes>> {
        let params = if req.method() == Method::POST {
            parse_pairs(req.body())
        } else {
            parse_pairs(req.uri().query().unwrap_or("").as_bytes())
        };
        let field = |name: &str| single(&params, name).ok().flatten();
        let hint = field("id_token_hint").and_then(|t| self.verify_id_token_hint(t));
        let client_id = hint
            .as_ref()
            .map(|c| c.aud.clone())
            .or_else(|| field("client_id").map(str::to_owned));
        if let Some(hint) = &hint {
            self.lock().end_login(&hint.sid);
            tracing::info!(client_id = %hint.aud, "development provider: signed out");
        }
        let target = field("post_logout_redirect_uri").filter(|uri| {
            client_id
                .as_deref()
                .and_then(|id| self.client(id))
                .is_some_and(|c| c.post_logout_redirect_uris.iter().any(|u| u == uri))
        });
        if let Some(target) = target
            && let Ok(mut url) = Url::parse(target)
        {
            if let Some(state) = field("state") {
                url.query_pairs_mut().append_pair("state", state);
            }
            return redirect(url.as_str());
        }
        html::response(
            StatusCode::OK,
            html::page(
                "Signed out",
                "<div class=\"card\"><p>You are signed out of the development provider.</p>\
                 <p class=\"muted\">You can close this tab.</p></div>",
            ),
        )
    }

    /// The claims of an ID token this provider issued, expired or not (a hint is often old).
    fn verify_id_token_hint(&self, token: &str) -> Option<IdClaims> {
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.gateway.id, &self.service.id]);
        validation.validate_exp = false;
        validation.set_required_spec_claims(&["iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<IdClaims>(token, &self.key.decoding, &validation).ok()?;
        (data.header.typ.as_deref() != Some("at+jwt")).then_some(data.claims)
    }
}

// ---- helpers ---------------------------------------------------------------------------------

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A URL-safe random string of `bytes` random bytes (from the thread-local CSPRNG).
fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    URL_SAFE_NO_PAD.encode(buf)
}

fn base_url(text: &str) -> Result<String, ProviderError> {
    let bad = || ProviderError::BadUrl {
        url: text.to_owned(),
    };
    let url = Url::parse(text).map_err(|_| bad())?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(bad());
    }
    Ok(text.trim_end_matches('/').to_owned())
}

fn generate_signing_key() -> Result<SigningKey, ProviderError> {
    let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
        .map_err(|_| ProviderError::KeyGeneration)?;
    let pkcs8 = pair
        .to_pkcs8v1()
        .map_err(|_| ProviderError::KeyGeneration)?;
    let point = pair.public_key().as_ref();
    // An uncompressed P-256 point: 0x04 ‖ x (32 bytes) ‖ y (32 bytes).
    if point.len() != 65 || point[0] != 0x04 {
        return Err(ProviderError::KeyGeneration);
    }
    let x = URL_SAFE_NO_PAD.encode(&point[1..33]);
    let y = URL_SAFE_NO_PAD.encode(&point[33..65]);
    let decoding =
        DecodingKey::from_ec_components(&x, &y).map_err(|_| ProviderError::KeyGeneration)?;
    let kid = random_token(12);
    let jwk = json!({
        "kty": "EC", "crv": "P-256", "x": x, "y": y,
        "use": "sig", "alg": "ES256", "kid": kid,
    });
    Ok(SigningKey {
        kid,
        encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
        decoding,
        public_point: point.to_vec(),
        jwk,
    })
}

fn parse_pairs(input: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(input).into_owned().collect()
}

/// The one value of `name`: `Ok(None)` when absent, `Err` when repeated (RFC 6749 §3.1).
/// An empty value counts as absent, as the RFC says.
fn single<'a>(pairs: &'a [(String, String)], name: &str) -> Result<Option<&'a str>, ()> {
    let mut found = pairs.iter().filter(|(k, _)| k == name).map(|(_, v)| v);
    let first = found.next();
    if found.next().is_some() {
        return Err(());
    }
    Ok(first.map(String::as_str).filter(|v| !v.is_empty()))
}

/// Scopes the client may have, in request order, unknown ones dropped.
fn filter_scopes(requested: &str, allowed: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in requested.split(' ') {
        if allowed.contains(&s) && !out.iter().any(|x| x == s) {
            out.push(s.to_owned());
        }
    }
    out
}

fn pkce_matches(verifier: &str, challenge: &str) -> bool {
    // RFC 7636 §4.1: 43–128 characters from the unreserved set.
    let well_formed = (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
    if !well_formed {
        return false;
    }
    let computed = URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, verifier.as_bytes()));
    constant_time_eq(computed.as_bytes(), challenge.as_bytes())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `Authorization: Basic` credentials, each part form-urlencoded per RFC 6749 §2.3.1.
fn parse_basic(value: &HeaderValue) -> Option<(String, String)> {
    let value = value.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = STANDARD.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (id, secret) = text.split_once(':')?;
    let unform = |s: &str| {
        percent_encoding::percent_decode_str(&s.replace('+', " "))
            .decode_utf8()
            .ok()
            .map(|c| c.into_owned())
    };
    Some((unform(id)?, unform(secret)?))
}

fn default_email(name: &str) -> String {
    let local: String = name
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+') {
                c
            } else {
                '.'
            }
        })
        .collect();
    let local = local.trim_matches('.');
    let local = if local.is_empty() { "user" } else { local };
    format!("{local}@example.com")
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn too_large() -> Response<Full<Bytes>> {
    let mut resp = OAuthError::invalid_request("the request body is too large").into_response();
    *resp.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
    resp
}

fn bearer_error(
    status: StatusCode,
    code: Option<&'static str>,
    description: &str,
) -> Response<Full<Bytes>> {
    let challenge = match code {
        Some(code) => format!(
            "Bearer realm=\"gatehouse-demo-provider\", error=\"{code}\", error_description=\"{description}\""
        ),
        None => "Bearer realm=\"gatehouse-demo-provider\"".to_owned(),
    };
    let body = match code {
        Some(code) => json!({"error": code, "error_description": description}),
        None => {
            json!({"error": "invalid_request", "error_description": "a bearer token is required"})
        }
    };
    let mut resp = json_response(status, &body);
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, value);
    }
    resp
}

fn redirect(location: &str) -> Response<Full<Bytes>> {
    let Ok(value) = HeaderValue::from_str(location) else {
        return error_page("The redirect target is not a valid header value.");
    };
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::FOUND;
    resp.headers_mut().insert(header::LOCATION, value);
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn error_page(message: &str) -> Response<Full<Bytes>> {
    html::response(
        StatusCode::BAD_REQUEST,
        html::page(
            "Sign-in request rejected",
            &format!(
                "<div class=\"card\"><p class=\"err\">{}</p><p class=\"muted\">The development \
                 provider did not redirect anywhere, because the request could not be trusted.</p>\
                 </div>",
                html::escape(message)
            ),
        ),
    )
}

fn login_page(
    request_id: &str,
    pending: &Pending,
    problem: Option<&str>,
    name: &str,
    email: &str,
) -> String {
    let e = html::escape;
    let problem = problem
        .map(|p| format!("<p class=\"err\">{}</p>", e(p)))
        .unwrap_or_default();
    let checks: String = GROUP_CHOICES
        .iter()
        .map(|g| {
            format!(
                "<label><input type=\"checkbox\" name=\"groups\" value=\"{g}\"> {g}</label>",
                g = e(g)
            )
        })
        .collect();
    let scope = if pending.scope.is_empty() {
        "(none)".to_owned()
    } else {
        pending.scope.join(" ")
    };
    let body = format!(
        "<div class=\"card\">\
<p>The app <strong>{client}</strong> asks you to sign in. This development provider believes \
whatever you type: pick any user and groups.</p>\
<p class=\"muted\">Scopes requested: <code>{scope}</code></p>{problem}\
<form method=\"post\" action=\"/authorize\">\
<input type=\"hidden\" name=\"request_id\" value=\"{rid}\">\
<label for=\"username\">User name</label>\
<input type=\"text\" id=\"username\" name=\"username\" value=\"{name}\" required autofocus \
maxlength=\"{MAX_NAME_CHARS}\" placeholder=\"alice\">\
<label for=\"email\">Email</label>\
<input type=\"email\" id=\"email\" name=\"email\" value=\"{email}\" \
maxlength=\"{MAX_EMAIL_CHARS}\" placeholder=\"defaults to &lt;user name&gt;@example.com\">\
<label>Groups</label><div class=\"checks\">{checks}</div>\
<label for=\"groups_extra\">More groups (comma or space separated)</label>\
<input type=\"text\" id=\"groups_extra\" name=\"groups_extra\" placeholder=\"ops, billing\">\
<button type=\"submit\" name=\"action\" value=\"login\">Sign in</button> \
<button type=\"submit\" name=\"action\" value=\"cancel\" class=\"secondary\" formnovalidate>Cancel</button>\
</form></div>",
        client = e(&pending.client_id),
        scope = e(&scope),
        rid = e(request_id),
        name = e(name),
        email = e(email),
    );
    html::page("Sign in to the development provider", &body)
}

/// Serves `provider` on `listener` until `shutdown` completes.
pub async fn serve(
    provider: Arc<DevProvider>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let handler = move |req: Request<hyper::body::Incoming>, _peer: std::net::SocketAddr| {
        let provider = provider.clone();
        async move { provider.handle_body(req).await }
    };
    crate::server::serve_simple(listener, handler, shutdown).await;
}

#[cfg(test)]
mod tests;
