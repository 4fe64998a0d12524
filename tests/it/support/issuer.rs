//! `TestIssuer`: a token issuer on 127.0.0.1:0, served by hyper inside the test process, for the
//! bearer-token tests. It plays a well-behaved OAuth 2.0 authorization server and hands tests
//! the tools of an attacker:
//!
//! * `/.well-known/openid-configuration` (also `/.well-known/oauth-authorization-server`) and
//!   `/jwks` with three keys generated at start by aws-lc-rs: RSA 2048 (its JWK has no `alg`, so
//!   it verifies RS256 and PS256), EC P-256 (`alg` ES256) and Ed25519 (`alg` EdDSA), each with a
//!   `kid`. [`TestIssuer::rotate`] replaces the RSA key; [`TestIssuer::jwks_fetches`] counts.
//! * [`TestIssuer::mint`]: a builder for JWTs with any header and claims. Tokens are assembled
//!   and signed by hand (aws-lc-rs), so header and claims bytes are exactly what the test says —
//!   duplicate members, `alg: none`, HS256 keyed with the RSA public key's PEM, an all-zero
//!   ECDSA signature (CVE-2022-21449), `jku`/`x5u`/`jwk`/`crit` header members, broken segments.
//! * `/introspect`: RFC 7662 introspection of opaque tokens from a table the test fills,
//!   HTTP Basic client authentication checked, a call counter, and an outage switch.
//! * `/token`: `client_credentials` for the same client, answering an RS256 JWT (so a gateway
//!   configured with this issuer as its provider finds every endpoint it expects). The client
//!   authenticates with HTTP Basic or with `private_key_jwt` (RFC 7523), the assertion checked
//!   against the client's own P-256 key ([`TestIssuer::client_key_pem`]); every request is
//!   recorded ([`TestIssuer::token_log`]).
//! * A separate "trap" server (its own port) for `jku` / `x5u` URLs: it serves an attacker's
//!   JWKS and counts every request, so a test proves the gateway never fetched from it.
//!
//! Outages ([`Outage`]) can be switched on for the JWKS and the introspection endpoint
//! independently, to test that the gateway fails closed (rule 36).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::hmac;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair,
    KeyPair, RSA_PKCS1_SHA256, RSA_PSS_SHA256, RsaKeyPair, UnparsedPublicKey,
};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;

/// The audience the examples use; [`TestIssuer::mint`] takes the audience explicitly.
pub const DEFAULT_AUDIENCE: &str = "api://orders";
/// The confidential client allowed at `/introspect` and `/token` (HTTP Basic).
pub const CLIENT_ID: &str = "gatehouse";
/// Its secret.
pub const CLIENT_SECRET: &str = "test-issuer-client-secret";
/// Lifetime of minted tokens and of [`TestIssuer::opaque`] tokens, in seconds.
pub const DEFAULT_TTL: i64 = 300;

/// The signature algorithms the issuer's own keys produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    /// RSASSA-PKCS1-v1_5 with SHA-256, the RSA key.
    RS256,
    /// RSASSA-PSS with SHA-256, the same RSA key.
    PS256,
    /// ECDSA P-256 with SHA-256, the EC key (64-byte `r ‖ s` signature).
    ES256,
    /// Ed25519, the OKP key.
    EdDSA,
}

impl Alg {
    pub fn name(self) -> &'static str {
        match self {
            Alg::RS256 => "RS256",
            Alg::PS256 => "PS256",
            Alg::ES256 => "ES256",
            Alg::EdDSA => "EdDSA",
        }
    }
}

/// How an endpoint misbehaves. [`Outage::Up`] is normal service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outage {
    Up,
    /// 503 with a short JSON body.
    Unavailable,
    /// Reads the request, says nothing for this long, then closes the connection.
    HoldThenDrop(Duration),
    /// 200 with a body that is not JSON.
    Garbage,
}

// ---- keys ------------------------------------------------------------------------------------

struct RsaKey {
    kid: String,
    pair: RsaKeyPair,
    jwk: Value,
    /// SubjectPublicKeyInfo PEM (`-----BEGIN PUBLIC KEY-----`), what a confused verifier would
    /// use as an HMAC secret.
    public_pem: String,
}

struct EcKey {
    kid: String,
    pair: EcdsaKeyPair,
    jwk: Value,
}

struct EdKey {
    kid: String,
    pair: Ed25519KeyPair,
    jwk: Value,
}

static KID_SEQ: AtomicUsize = AtomicUsize::new(0);

fn new_kid(kind: &str) -> String {
    let n = KID_SEQ.fetch_add(1, Ordering::SeqCst);
    format!("{kind}-{n}-{}", random_b64(6))
}

fn random_b64(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    aws_lc_rs::rand::fill(&mut buf).unwrap();
    URL_SAFE_NO_PAD.encode(buf)
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

impl RsaKey {
    fn generate() -> Arc<Self> {
        let pair = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
        let kid = new_kid("rsa");
        let public = pair.public_key();
        let n = URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero());
        let e = URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero());
        let spki = public.as_der().unwrap();
        let public_pem = pem("PUBLIC KEY", spki.as_ref());
        // No `alg`: the one RSA key verifies both RS256 and PS256.
        let jwk = json!({"kty": "RSA", "use": "sig", "kid": kid, "n": n, "e": e});
        Arc::new(Self {
            kid,
            pair,
            jwk,
            public_pem,
        })
    }

    fn sign(&self, alg: Alg, message: &[u8]) -> Vec<u8> {
        let padding = match alg {
            Alg::PS256 => &RSA_PSS_SHA256,
            _ => &RSA_PKCS1_SHA256,
        };
        let mut sig = vec![0u8; self.pair.public_modulus_len()];
        self.pair
            .sign(padding, &SystemRandom::new(), message, &mut sig)
            .unwrap();
        sig
    }
}

impl EcKey {
    fn generate() -> Arc<Self> {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
        let point = pair.public_key().as_ref();
        assert_eq!(point.len(), 65, "an uncompressed P-256 point");
        let kid = new_kid("ec");
        let jwk = json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        });
        Arc::new(Self { kid, pair, jwk })
    }

    fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.pair
            .sign(&SystemRandom::new(), message)
            .unwrap()
            .as_ref()
            .to_vec()
    }

    fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, self.pair.public_key().as_ref())
            .verify(message, signature)
            .is_ok()
    }
}

impl EdKey {
    fn generate() -> Arc<Self> {
        let pair = Ed25519KeyPair::generate().unwrap();
        let kid = new_kid("ed");
        let jwk = json!({
            "kty": "OKP", "crv": "Ed25519", "use": "sig", "alg": "EdDSA", "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()),
        });
        Arc::new(Self { kid, pair, jwk })
    }

    fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.pair.sign(message).as_ref().to_vec()
    }
}

#[derive(Clone)]
struct KeySet {
    rsa: Arc<RsaKey>,
    ec: Arc<EcKey>,
    ed: Arc<EdKey>,
}

impl KeySet {
    fn jwks(&self) -> Value {
        json!({"keys": [self.rsa.jwk, self.ec.jwk, self.ed.jwk]})
    }
}

// ---- the servers -----------------------------------------------------------------------------

/// Returned by a handler to close the connection without an answer.
#[derive(Debug)]
struct Hangup;

impl std::fmt::Display for Hangup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("hang up")
    }
}

impl std::error::Error for Hangup {}

type Answer = Result<Response<Full<Bytes>>, Hangup>;
type Handler =
    Arc<dyn Fn(Request<Bytes>) -> Pin<Box<dyn Future<Output = Answer> + Send>> + Send + Sync>;

/// Serves `handler` on a fresh 127.0.0.1:0 listener until the returned sender is dropped.
async fn spawn_server(handler: Handler) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                _ = &mut stop_rx => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => continue,
                },
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let handler = handler.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = match Limited::new(body, 1 << 20).collect().await {
                            Ok(c) => c.to_bytes(),
                            Err(_) => return Err(Hangup),
                        };
                        handler(Request::from_parts(parts, body)).await
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, stop_tx)
}

fn json_reply(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-store")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

async fn outage_answer(outage: Outage) -> Option<Answer> {
    match outage {
        Outage::Up => None,
        Outage::Unavailable => Some(Ok(json_reply(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"error": "temporarily_unavailable"}),
        ))),
        Outage::HoldThenDrop(hold) => {
            tokio::time::sleep(hold).await;
            Some(Err(Hangup))
        }
        Outage::Garbage => Some(Ok(Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from_static(b"<html>not json")))
            .unwrap())),
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn form(body: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

/// `Authorization: Basic` → (id, secret), each form-urlencoded per RFC 6749 §2.3.1.
fn basic_credentials(req: &Request<Bytes>) -> Option<(String, String)> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, b64) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let text = String::from_utf8(STANDARD.decode(b64.trim()).ok()?).ok()?;
    let (id, secret) = text.split_once(':')?;
    let unform = |s: &str| {
        url::form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
    };
    Some((unform(id)?, unform(secret)?))
}

/// `client_assertion_type` of `private_key_jwt` (RFC 7523 §2.2).
pub const JWT_BEARER_ASSERTION: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// One request the token endpoint received.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    /// The form parameters, in order.
    pub params: Vec<(String, String)>,
    /// Whether an `Authorization` header came along.
    pub authorization_header: bool,
    /// How the client proved who it is, when it did so correctly: `"client_secret_basic"`,
    /// or `"private_key_jwt"` (an assertion signed by the client key, `iss` = `sub` = the
    /// client, `aud` = the token endpoint, not expired).
    pub client_auth: Option<&'static str>,
}

impl TokenRequest {
    /// The single value of the form parameter `name` (a repeated one fails the test).
    pub fn param(&self, name: &str) -> Option<&str> {
        let mut found = self.params.iter().filter(|(k, _)| k == name);
        let first = found.next().map(|(_, v)| v.as_str());
        assert!(
            found.next().is_none(),
            "{name} is repeated: {:?}",
            self.params
        );
        first
    }
}

/// One request the introspection endpoint received.
#[derive(Debug, Clone)]
pub struct IntrospectionCall {
    /// The client id from HTTP Basic, when the header was there and well formed.
    pub client_id: Option<String>,
    /// Whether the client authenticated with the right id and secret.
    pub authenticated: bool,
    /// The `token` form parameter.
    pub token: Option<String>,
    /// The `token_type_hint` form parameter.
    pub token_type_hint: Option<String>,
}

struct Inner {
    issuer: String,
    trap_url: String,
    keys: Mutex<KeySet>,
    trap_key: Arc<RsaKey>,
    jwks_outage: Mutex<Outage>,
    introspection_outage: Mutex<Outage>,
    opaque: Mutex<HashMap<String, Value>>,
    introspection_log: Mutex<Vec<IntrospectionCall>>,
    jwks_fetches: AtomicUsize,
    discovery_fetches: AtomicUsize,
    introspection_calls: AtomicUsize,
    token_requests: AtomicUsize,
    token_outage: Mutex<Outage>,
    token_ttl: std::sync::atomic::AtomicI64,
    token_log: Mutex<Vec<TokenRequest>>,
    /// The confidential client's own key pair for `private_key_jwt` (the issuer knows the
    /// public half, as if registered).
    client_key: Arc<EcKey>,
    trap_hits: Mutex<Vec<String>>,
}

/// The token issuer. Dropping it stops both servers (open connections finish what they do).
pub struct TestIssuer {
    addr: SocketAddr,
    inner: Arc<Inner>,
    _stop: tokio::sync::oneshot::Sender<()>,
    _stop_trap: tokio::sync::oneshot::Sender<()>,
}

impl TestIssuer {
    /// Generates the keys and starts the issuer and its trap server on 127.0.0.1:0.
    pub async fn start() -> Self {
        // The servers start before the state exists (the issuer URL names the port), so the
        // handlers reach it through a cell filled in below; until then they hang up.
        let cell: Arc<Mutex<Option<Arc<Inner>>>> = Arc::default();
        let trap_cell = cell.clone();
        let trap_handler: Handler = Arc::new(move |req| {
            let inner = trap_cell.lock().unwrap().clone();
            Box::pin(async move {
                let inner = inner.ok_or(Hangup)?;
                inner.trap_hits.lock().unwrap().push(
                    req.uri()
                        .path_and_query()
                        .map_or_else(String::new, |p| p.to_string()),
                );
                Ok(json_reply(
                    StatusCode::OK,
                    &json!({"keys": [inner.trap_key.jwk]}),
                ))
            })
        });
        let (trap_addr, stop_trap) = spawn_server(trap_handler).await;
        let main_cell = cell.clone();
        let handler: Handler = Arc::new(move |req| {
            let inner = main_cell.lock().unwrap().clone();
            Box::pin(async move {
                let inner = inner.ok_or(Hangup)?;
                inner.answer(req).await
            })
        });
        let (addr, stop) = spawn_server(handler).await;
        let issuer = format!("http://{addr}");
        let inner = Arc::new(Inner {
            issuer,
            trap_url: format!("http://{trap_addr}"),
            keys: Mutex::new(KeySet {
                rsa: RsaKey::generate(),
                ec: EcKey::generate(),
                ed: EdKey::generate(),
            }),
            trap_key: RsaKey::generate(),
            jwks_outage: Mutex::new(Outage::Up),
            introspection_outage: Mutex::new(Outage::Up),
            opaque: Mutex::default(),
            introspection_log: Mutex::default(),
            jwks_fetches: AtomicUsize::new(0),
            discovery_fetches: AtomicUsize::new(0),
            introspection_calls: AtomicUsize::new(0),
            token_requests: AtomicUsize::new(0),
            token_outage: Mutex::new(Outage::Up),
            token_ttl: std::sync::atomic::AtomicI64::new(DEFAULT_TTL),
            token_log: Mutex::default(),
            client_key: EcKey::generate(),
            trap_hits: Mutex::default(),
        });
        *cell.lock().unwrap() = Some(inner.clone());
        Self {
            addr,
            inner,
            _stop: stop,
            _stop_trap: stop_trap,
        }
    }

    /// The issuer identifier, `http://127.0.0.1:PORT` (no trailing slash); the `iss` of minted
    /// tokens and the `issuer` of discovery.
    pub fn issuer(&self) -> &str {
        &self.inner.issuer
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `<issuer><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.inner.issuer)
    }

    pub fn discovery_url(&self) -> String {
        self.url("/.well-known/openid-configuration")
    }

    pub fn jwks_uri(&self) -> String {
        self.url("/jwks")
    }

    pub fn introspection_endpoint(&self) -> String {
        self.url("/introspect")
    }

    pub fn token_endpoint(&self) -> String {
        self.url("/token")
    }

    /// A JWT builder with default header `{"alg":"RS256","kid":<current RSA kid>,"typ":"at+jwt"}`
    /// and claims `iss` (this issuer), `aud`, `sub` "alice", `client_id` "test-client",
    /// `scope` "orders:read", `iat` now, `exp` now + 300, `jti` random.
    pub fn mint(&self, aud: &str) -> Mint {
        let keys = self.inner.keys.lock().unwrap().clone();
        let now = now();
        let mut claims = Map::new();
        claims.insert("iss".into(), json!(self.inner.issuer));
        claims.insert("aud".into(), json!(aud));
        claims.insert("sub".into(), json!("alice"));
        claims.insert("client_id".into(), json!("test-client"));
        claims.insert("scope".into(), json!("orders:read"));
        claims.insert("iat".into(), json!(now));
        claims.insert("exp".into(), json!(now + DEFAULT_TTL));
        claims.insert("jti".into(), json!(random_b64(12)));
        let mut header = Map::new();
        header.insert("typ".into(), json!("at+jwt"));
        let mint = Mint {
            keys,
            trap_url: self.inner.trap_url.clone(),
            trap_key: self.inner.trap_key.clone(),
            header,
            claims,
            raw_header: None,
            raw_claims: None,
            signer: Signer::None,
            signature: SignatureEdit::Keep,
        };
        mint.alg(Alg::RS256)
    }

    /// Replaces the RSA key: a fresh one with a new `kid` is published and the old one leaves
    /// the JWKS. Later `mint`s sign with the new key; tokens minted before still carry the old
    /// kid (now unknown). Returns the new kid.
    pub fn rotate(&self) -> String {
        let fresh = RsaKey::generate();
        let kid = fresh.kid.clone();
        self.inner.keys.lock().unwrap().rsa = fresh;
        kid
    }

    /// The kids the JWKS serves now (RSA, EC, Ed25519 in that order).
    pub fn kids(&self) -> Vec<String> {
        let k = self.inner.keys.lock().unwrap();
        vec![k.rsa.kid.clone(), k.ec.kid.clone(), k.ed.kid.clone()]
    }

    pub fn rsa_kid(&self) -> String {
        self.inner.keys.lock().unwrap().rsa.kid.clone()
    }

    pub fn ec_kid(&self) -> String {
        self.inner.keys.lock().unwrap().ec.kid.clone()
    }

    pub fn ed_kid(&self) -> String {
        self.inner.keys.lock().unwrap().ed.kid.clone()
    }

    /// The current RSA public key as SubjectPublicKeyInfo PEM.
    pub fn rsa_public_pem(&self) -> String {
        self.inner.keys.lock().unwrap().rsa.public_pem.clone()
    }

    /// The JWKS document as served (when up).
    pub fn jwks(&self) -> Value {
        self.inner.keys.lock().unwrap().jwks()
    }

    /// Requests to `/jwks` so far (outage answers included).
    pub fn jwks_fetches(&self) -> usize {
        self.inner.jwks_fetches.load(Ordering::SeqCst)
    }

    /// Requests to the discovery documents so far.
    pub fn discovery_fetches(&self) -> usize {
        self.inner.discovery_fetches.load(Ordering::SeqCst)
    }

    /// Switches `/jwks` to `outage` (and back with [`Outage::Up`]).
    pub fn set_jwks_outage(&self, outage: Outage) {
        *self.inner.jwks_outage.lock().unwrap() = outage;
    }

    /// Switches `/token` to `outage` (requests are still counted).
    pub fn set_token_outage(&self, outage: Outage) {
        *self.inner.token_outage.lock().unwrap() = outage;
    }

    /// Lifetime (`exp`, `expires_in`) of tokens from `/token`, in seconds; default [`DEFAULT_TTL`].
    pub fn set_token_ttl(&self, seconds: i64) {
        self.inner.token_ttl.store(seconds, Ordering::SeqCst);
    }

    /// Switches `/introspect` to `outage`.
    pub fn set_introspection_outage(&self, outage: Outage) {
        *self.inner.introspection_outage.lock().unwrap() = outage;
    }

    /// The client allowed at `/introspect` and `/token`: ([`CLIENT_ID`], [`CLIENT_SECRET`]).
    pub fn client(&self) -> (&'static str, &'static str) {
        (CLIENT_ID, CLIENT_SECRET)
    }

    /// A new random opaque token that introspects as active with `sub`, `scope`,
    /// `client_id` "test-client", `exp` now + 300, `iat`, `iss`, `token_type` "Bearer".
    pub fn opaque(&self, sub: &str, scope: &str) -> String {
        let now = now();
        self.opaque_with(json!({
            "active": true,
            "sub": sub,
            "scope": scope,
            "client_id": "test-client",
            "iat": now,
            "exp": now + DEFAULT_TTL,
            "iss": self.inner.issuer,
            "token_type": "Bearer",
        }))
    }

    /// A new random opaque token whose introspection answer is exactly `response`.
    pub fn opaque_with(&self, response: Value) -> String {
        let token = random_b64(32);
        self.set_opaque(&token, response);
        token
    }

    /// Sets the introspection answer for `token` (any string). An answer with `active: true`
    /// and an `exp` in the past is served as `{"active": false}`, as a real server would.
    pub fn set_opaque(&self, token: &str, response: Value) {
        self.inner
            .opaque
            .lock()
            .unwrap()
            .insert(token.to_owned(), response);
    }

    /// From now on `token` introspects as `{"active": false}` (revoked).
    pub fn revoke(&self, token: &str) {
        self.set_opaque(token, json!({"active": false}));
    }

    /// Requests to `/introspect` so far (failed client authentication and outages included).
    pub fn introspection_calls(&self) -> usize {
        self.inner.introspection_calls.load(Ordering::SeqCst)
    }

    /// Every introspection request, in order.
    pub fn introspection_log(&self) -> Vec<IntrospectionCall> {
        self.inner.introspection_log.lock().unwrap().clone()
    }

    /// Requests to `/token` so far.
    pub fn token_requests(&self) -> usize {
        self.inner.token_requests.load(Ordering::SeqCst)
    }

    /// Every request to `/token`, in order (outage answers included).
    pub fn token_log(&self) -> Vec<TokenRequest> {
        self.inner.token_log.lock().unwrap().clone()
    }

    /// The client's private key for `private_key_jwt`: P-256, PKCS#8 PEM.
    pub fn client_key_pem(&self) -> String {
        let pkcs8 = self.inner.client_key.pair.to_pkcs8v1().unwrap();
        pem("PRIVATE KEY", pkcs8.as_ref())
    }

    /// Base URL of the trap server (another port): every path answers the attacker's JWKS.
    pub fn trap_url(&self) -> &str {
        &self.inner.trap_url
    }

    /// Paths (with query) the trap server was asked for. Empty = nobody followed a `jku`/`x5u`.
    pub fn trap_hits(&self) -> Vec<String> {
        self.inner.trap_hits.lock().unwrap().clone()
    }
}

impl Inner {
    async fn answer(&self, req: Request<Bytes>) -> Answer {
        let path = req.uri().path().to_owned();
        let get = matches!(*req.method(), Method::GET | Method::HEAD);
        let post = req.method() == Method::POST;
        match path.as_str() {
            "/.well-known/openid-configuration" | "/.well-known/oauth-authorization-server"
                if get =>
            {
                self.discovery_fetches.fetch_add(1, Ordering::SeqCst);
                Ok(json_reply(StatusCode::OK, &self.discovery()))
            }
            "/jwks" if get => {
                self.jwks_fetches.fetch_add(1, Ordering::SeqCst);
                let outage = *self.jwks_outage.lock().unwrap();
                if let Some(answer) = outage_answer(outage).await {
                    return answer;
                }
                let jwks = self.keys.lock().unwrap().jwks();
                Ok(json_reply(StatusCode::OK, &jwks))
            }
            "/introspect" if post => self.introspect(&req).await,
            "/token" if post => {
                let params = form(req.body());
                let client_auth = self.token_client_auth(&req, &params);
                self.token_log.lock().unwrap().push(TokenRequest {
                    authorization_header: req.headers().contains_key(header::AUTHORIZATION),
                    params,
                    client_auth,
                });
                let outage = *self.token_outage.lock().unwrap();
                if outage != Outage::Up {
                    self.token_requests.fetch_add(1, Ordering::SeqCst);
                    if let Some(answer) = outage_answer(outage).await {
                        return answer;
                    }
                }
                Ok(self.token(&req))
            }
            "/authorize" => Ok(json_reply(
                StatusCode::BAD_REQUEST,
                &json!({"error": "unsupported_response_type", "error_description": "the test issuer has no browser login"}),
            )),
            _ => Ok(json_reply(
                StatusCode::NOT_FOUND,
                &json!({"error": "not_found"}),
            )),
        }
    }

    fn discovery(&self) -> Value {
        let iss = &self.issuer;
        json!({
            "issuer": iss,
            "authorization_endpoint": format!("{iss}/authorize"),
            "token_endpoint": format!("{iss}/token"),
            "jwks_uri": format!("{iss}/jwks"),
            "introspection_endpoint": format!("{iss}/introspect"),
            "response_types_supported": ["code"],
            "grant_types_supported": ["client_credentials"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256", "PS256", "ES256", "EdDSA"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "private_key_jwt"],
            "introspection_endpoint_auth_methods_supported": ["client_secret_basic"],
            "code_challenge_methods_supported": ["S256"],
        })
    }

    fn authenticated(&self, req: &Request<Bytes>) -> (Option<String>, bool) {
        match basic_credentials(req) {
            Some((id, secret)) => {
                let ok = id == CLIENT_ID && secret == CLIENT_SECRET;
                (Some(id), ok)
            }
            None => (None, false),
        }
    }

    async fn introspect(&self, req: &Request<Bytes>) -> Answer {
        self.introspection_calls.fetch_add(1, Ordering::SeqCst);
        let params = form(req.body());
        let param = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let (client_id, authenticated) = self.authenticated(req);
        self.introspection_log
            .lock()
            .unwrap()
            .push(IntrospectionCall {
                client_id,
                authenticated,
                token: param("token"),
                token_type_hint: param("token_type_hint"),
            });
        let outage = *self.introspection_outage.lock().unwrap();
        if let Some(answer) = outage_answer(outage).await {
            return answer;
        }
        if !authenticated {
            let mut resp = json_reply(
                StatusCode::UNAUTHORIZED,
                &json!({"error": "invalid_client", "error_description": "client authentication failed"}),
            );
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Basic realm=\"test-issuer\""),
            );
            return Ok(resp);
        }
        let Some(token) = param("token") else {
            return Ok(json_reply(
                StatusCode::BAD_REQUEST,
                &json!({"error": "invalid_request", "error_description": "token is missing"}),
            ));
        };
        let found = self.opaque.lock().unwrap().get(&token).cloned();
        let body = match found {
            Some(v)
                if v["active"] == json!(true) && v["exp"].as_i64().is_some_and(|e| e <= now()) =>
            {
                json!({"active": false})
            }
            Some(v) => v,
            None => json!({"active": false}),
        };
        Ok(json_reply(StatusCode::OK, &body))
    }

    /// RFC 6749 §2.3: exactly one way of client authentication, and it must check out.
    fn token_client_auth(
        &self,
        req: &Request<Bytes>,
        params: &[(String, String)],
    ) -> Option<&'static str> {
        let param = |name: &str| {
            let mut found = params.iter().filter(|(k, _)| k == name);
            match (found.next(), found.next()) {
                (Some((_, v)), None) => Some(v.as_str()),
                _ => None,
            }
        };
        let basic = req.headers().contains_key(header::AUTHORIZATION);
        let assertion = params.iter().any(|(k, _)| k == "client_assertion");
        match (basic, assertion) {
            (true, false) => self.authenticated(req).1.then_some("client_secret_basic"),
            (false, true) => {
                let ok = param("client_assertion_type") == Some(JWT_BEARER_ASSERTION)
                    && param("client_id").is_none_or(|id| id == CLIENT_ID)
                    && param("client_assertion").is_some_and(|jwt| {
                        self.assertion_ok(jwt, &format!("{}/token", self.issuer))
                    });
                ok.then_some("private_key_jwt")
            }
            _ => None,
        }
    }

    /// An ES256 client assertion by the client key for `audience` (RFC 7523 §3).
    fn assertion_ok(&self, jwt: &str, audience: &str) -> bool {
        let mut parts = jwt.split('.');
        let (Some(h), Some(c), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return false;
        };
        let decode = |seg: &str| {
            URL_SAFE_NO_PAD
                .decode(seg)
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        };
        let (Some(header), Some(claims), Ok(sig)) =
            (decode(h), decode(c), URL_SAFE_NO_PAD.decode(s))
        else {
            return false;
        };
        let aud_ok = match &claims["aud"] {
            Value::String(a) => a == audience,
            Value::Array(list) => list.iter().any(|a| a == audience),
            _ => false,
        };
        header["alg"] == "ES256"
            && self.client_key.verify(format!("{h}.{c}").as_bytes(), &sig)
            && claims["iss"] == CLIENT_ID
            && claims["sub"] == CLIENT_ID
            && aud_ok
            && claims["exp"].as_i64().is_some_and(|exp| exp > now())
    }

    fn token(&self, req: &Request<Bytes>) -> Response<Full<Bytes>> {
        self.token_requests.fetch_add(1, Ordering::SeqCst);
        let params = form(req.body());
        if self.token_client_auth(req, &params).is_none() {
            return json_reply(
                StatusCode::UNAUTHORIZED,
                &json!({"error": "invalid_client"}),
            );
        }
        let param = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        if param("grant_type") != Some("client_credentials") {
            return json_reply(
                StatusCode::BAD_REQUEST,
                &json!({"error": "unsupported_grant_type"}),
            );
        }
        let aud = param("resource").unwrap_or(DEFAULT_AUDIENCE);
        let scope = param("scope").unwrap_or("orders:read");
        let now = now();
        let mut claims = Map::new();
        claims.insert("iss".into(), json!(self.issuer));
        claims.insert("aud".into(), json!(aud));
        claims.insert("sub".into(), json!(CLIENT_ID));
        claims.insert("client_id".into(), json!(CLIENT_ID));
        claims.insert("scope".into(), json!(scope));
        claims.insert("iat".into(), json!(now));
        let ttl = self.token_ttl.load(Ordering::SeqCst);
        claims.insert("exp".into(), json!(now + ttl));
        claims.insert("jti".into(), json!(random_b64(12)));
        let rsa = self.keys.lock().unwrap().rsa.clone();
        let header = json!({"alg": "RS256", "typ": "at+jwt", "kid": rsa.kid});
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(Value::Object(claims).to_string().as_bytes())
        );
        let sig = rsa.sign(Alg::RS256, input.as_bytes());
        json_reply(
            StatusCode::OK,
            &json!({
                "access_token": format!("{input}.{}", b64(&sig)),
                "token_type": "Bearer",
                "expires_in": ttl,
                "scope": scope,
            }),
        )
    }
}

// ---- minting ---------------------------------------------------------------------------------

/// BASE64URL without padding, as JWS uses.
pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// `b64(header).b64(claims).b64(signature)`: a compact JWS from raw parts, signed or not.
pub fn compact(header: &str, claims: &str, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        b64(header.as_bytes()),
        b64(claims.as_bytes()),
        b64(signature)
    )
}

enum Signer {
    /// One of the issuer's keys (or an outside one) with this algorithm.
    Rsa(Arc<RsaKey>, Alg),
    Ec(Arc<EcKey>),
    Ed(Arc<EdKey>),
    Hmac(Vec<u8>),
    /// Empty signature.
    None,
    /// 64 zero bytes (r = s = 0).
    EcdsaZero,
}

enum SignatureEdit {
    Keep,
    /// Flip one bit of the last signature byte.
    Tamper,
    Replace(Vec<u8>),
}

/// A JWT under construction; see [`TestIssuer::mint`]. Every method consumes and returns the
/// builder; [`Mint::sign`] produces the compact token.
pub struct Mint {
    keys: KeySet,
    trap_url: String,
    trap_key: Arc<RsaKey>,
    header: Map<String, Value>,
    claims: Map<String, Value>,
    raw_header: Option<String>,
    raw_claims: Option<String>,
    signer: Signer,
    signature: SignatureEdit,
}

impl Mint {
    /// Signs with the issuer's key for `alg` (RSA for RS256/PS256, EC for ES256, Ed25519 for
    /// EdDSA); sets header `alg` and `kid` accordingly.
    pub fn alg(mut self, alg: Alg) -> Self {
        let kid = match alg {
            Alg::RS256 | Alg::PS256 => {
                self.signer = Signer::Rsa(self.keys.rsa.clone(), alg);
                self.keys.rsa.kid.clone()
            }
            Alg::ES256 => {
                self.signer = Signer::Ec(self.keys.ec.clone());
                self.keys.ec.kid.clone()
            }
            Alg::EdDSA => {
                self.signer = Signer::Ed(self.keys.ed.clone());
                self.keys.ed.kid.clone()
            }
        };
        self.header.insert("alg".into(), json!(alg.name()));
        self.header.insert("kid".into(), json!(kid));
        self
    }

    /// Sets the header `kid` (the signing key stays the same).
    pub fn kid(self, kid: &str) -> Self {
        self.header("kid", json!(kid))
    }

    /// Removes `kid` from the header.
    pub fn no_kid(self) -> Self {
        self.remove_header("kid")
    }

    /// Sets the header `typ` (default "at+jwt").
    pub fn typ(self, typ: &str) -> Self {
        self.header("typ", json!(typ))
    }

    /// Sets any header member (`jku`, `x5u`, `jwk`, `cty`, `crit`, …), replacing it if present.
    pub fn header(mut self, name: &str, value: Value) -> Self {
        self.header.insert(name.to_owned(), value);
        self
    }

    pub fn remove_header(mut self, name: &str) -> Self {
        self.header.remove(name);
        self
    }

    /// `crit: [name]` plus the member `name: "1"`: an extension the verifier must understand
    /// (RFC 7515 §4.1.6). The value is a string on purpose: jsonwebtoken 10 ignores `crit` and
    /// parses string-valued extra members, so its `decode` accepts this token — the gateway must
    /// refuse unknown `crit` names itself (rule 32). (A non-string extra member makes
    /// jsonwebtoken's header parsing fail instead.)
    pub fn crit(self, name: &str) -> Self {
        self.header("crit", json!([name])).header(name, json!("1"))
    }

    /// Sets any claim, replacing it if present.
    pub fn claim(mut self, name: &str, value: Value) -> Self {
        self.claims.insert(name.to_owned(), value);
        self
    }

    pub fn remove_claim(mut self, name: &str) -> Self {
        self.claims.remove(name);
        self
    }

    pub fn iss(self, iss: &str) -> Self {
        self.claim("iss", json!(iss))
    }

    /// `aud` as given: `json!("a")` or `json!(["a", "b"])`.
    pub fn aud(self, aud: Value) -> Self {
        self.claim("aud", aud)
    }

    pub fn sub(self, sub: &str) -> Self {
        self.claim("sub", json!(sub))
    }

    /// Space-separated scopes.
    pub fn scope(self, scope: &str) -> Self {
        self.claim("scope", json!(scope))
    }

    pub fn client_id(self, client_id: &str) -> Self {
        self.claim("client_id", json!(client_id))
    }

    /// `exp` = now + `secs` (negative: already expired).
    pub fn exp_in(self, secs: i64) -> Self {
        self.claim("exp", json!(now() + secs))
    }

    /// `nbf` = now + `secs`.
    pub fn nbf_in(self, secs: i64) -> Self {
        self.claim("nbf", json!(now() + secs))
    }

    /// `iat` = now + `secs`.
    pub fn iat_in(self, secs: i64) -> Self {
        self.claim("iat", json!(now() + secs))
    }

    /// HS256 keyed with `secret` (for issuers configured with an `hmac_secret`); no `kid`.
    pub fn hs256(mut self, secret: &[u8]) -> Self {
        self.signer = Signer::Hmac(secret.to_vec());
        self.header.insert("alg".into(), json!("HS256"));
        self.header.remove("kid");
        self
    }

    /// Algorithm confusion: HS256 keyed with the current RSA public key's PEM bytes
    /// (SubjectPublicKeyInfo, trailing newline included), `kid` of the RSA key.
    pub fn hs256_with_rsa_public_pem(mut self) -> Self {
        let rsa = self.keys.rsa.clone();
        self.signer = Signer::Hmac(rsa.public_pem.as_bytes().to_vec());
        self.header.insert("alg".into(), json!("HS256"));
        self.header.insert("kid".into(), json!(rsa.kid));
        self
    }

    /// Unsigned: header `alg` "none" (kid kept) and an empty signature segment.
    pub fn alg_none(mut self) -> Self {
        self.signer = Signer::None;
        self.header.insert("alg".into(), json!("none"));
        self
    }

    /// ES256 with the EC key's kid and a signature of 64 zero bytes (CVE-2022-21449).
    pub fn ecdsa_zero_signature(mut self) -> Self {
        self.signer = Signer::EcdsaZero;
        self.header.insert("alg".into(), json!("ES256"));
        self.header.insert("kid".into(), json!(self.keys.ec.kid));
        self
    }

    /// Signed correctly, then one bit of the signature flipped.
    pub fn tamper_signature(mut self) -> Self {
        self.signature = SignatureEdit::Tamper;
        self
    }

    /// The signature segment replaced by these bytes (after signing).
    pub fn signature_bytes(mut self, bytes: &[u8]) -> Self {
        self.signature = SignatureEdit::Replace(bytes.to_vec());
        self
    }

    /// RS256 with a fresh RSA key that no JWKS publishes, under a fresh `kid`.
    pub fn unpublished_key(mut self) -> Self {
        let key = RsaKey::generate();
        self.header.insert("alg".into(), json!("RS256"));
        self.header.insert("kid".into(), json!(key.kid));
        self.signer = Signer::Rsa(key, Alg::RS256);
        self
    }

    /// Embedded-key attack: RS256 with a fresh attacker key, whose public JWK rides in the
    /// header (`jwk`) under its `kid`.
    pub fn embedded_jwk(mut self) -> Self {
        let key = RsaKey::generate();
        self.header.insert("alg".into(), json!("RS256"));
        self.header.insert("kid".into(), json!(key.kid));
        self.header.insert("jwk".into(), key.jwk.clone());
        self.signer = Signer::Rsa(key, Alg::RS256);
        self
    }

    /// `jku` attack: RS256 with the trap server's key, `kid` of that key, and
    /// `jku: <trap>/jwks.json`. Only a verifier that fetches the `jku` could accept it; the trap
    /// records the fetch ([`TestIssuer::trap_hits`]).
    pub fn jku_attack(mut self) -> Self {
        let key = self.trap_key.clone();
        self.header.insert("alg".into(), json!("RS256"));
        self.header.insert("kid".into(), json!(key.kid));
        self.header
            .insert("jku".into(), json!(format!("{}/jwks.json", self.trap_url)));
        self.signer = Signer::Rsa(key, Alg::RS256);
        self
    }

    /// `x5u` attack: like [`Mint::jku_attack`] with `x5u: <trap>/cert.pem` instead.
    pub fn x5u_attack(mut self) -> Self {
        let key = self.trap_key.clone();
        self.header.insert("alg".into(), json!("RS256"));
        self.header.insert("kid".into(), json!(key.kid));
        self.header
            .insert("x5u".into(), json!(format!("{}/cert.pem", self.trap_url)));
        self.signer = Signer::Rsa(key, Alg::RS256);
        self
    }

    /// Uses `json` verbatim as the header (e.g. with a duplicate member); the signer chosen
    /// so far still signs, so the signature is valid over these bytes.
    pub fn raw_header(mut self, json: &str) -> Self {
        self.raw_header = Some(json.to_owned());
        self
    }

    /// Uses `json` verbatim as the claims set (e.g. `{"sub":"a","sub":"admin",…}`).
    pub fn raw_claims(mut self, json: &str) -> Self {
        self.raw_claims = Some(json.to_owned());
        self
    }

    /// The header JSON that [`Mint::sign`] would use (to edit and pass to `raw_header`).
    pub fn header_json(&self) -> String {
        self.raw_header
            .clone()
            .unwrap_or_else(|| Value::Object(self.header.clone()).to_string())
    }

    /// The claims JSON that [`Mint::sign`] would use.
    pub fn claims_json(&self) -> String {
        self.raw_claims
            .clone()
            .unwrap_or_else(|| Value::Object(self.claims.clone()).to_string())
    }

    /// The three segments, BASE64URL-encoded: (header, claims, signature).
    pub fn segments(&self) -> (String, String, String) {
        let header = b64(self.header_json().as_bytes());
        let claims = b64(self.claims_json().as_bytes());
        let input = format!("{header}.{claims}");
        let mut sig = match &self.signer {
            Signer::Rsa(key, alg) => key.sign(*alg, input.as_bytes()),
            Signer::Ec(key) => key.sign(input.as_bytes()),
            Signer::Ed(key) => key.sign(input.as_bytes()),
            Signer::Hmac(secret) => {
                let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
                hmac::sign(&key, input.as_bytes()).as_ref().to_vec()
            }
            Signer::None => Vec::new(),
            Signer::EcdsaZero => vec![0u8; 64],
        };
        match &self.signature {
            SignatureEdit::Keep => {}
            SignatureEdit::Tamper => {
                if let Some(last) = sig.last_mut() {
                    *last ^= 0x01;
                }
            }
            SignatureEdit::Replace(bytes) => sig = bytes.clone(),
        }
        (header, claims, b64(&sig))
    }

    /// The compact JWS `header.claims.signature`.
    pub fn sign(&self) -> String {
        let (h, c, s) = self.segments();
        format!("{h}.{c}.{s}")
    }
}
