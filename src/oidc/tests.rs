//! Tests of talking to the provider: the real development provider on 127.0.0.1:0 for the
//! happy paths, and a small scripted provider for misbehaviour.

use std::net::SocketAddr;
use std::sync::Mutex as StdMutex;
use std::time::Instant;

use ::http::{HeaderMap, Request, Response, StatusCode, header};
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair,
};
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use jsonwebtoken::{DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use super::*;
use crate::config::ProviderEndpoints;
use crate::demo::provider::{DevProvider, GATEWAY_CLIENT_ID};

const GW: &str = "http://127.0.0.1:4180";
const CALLBACK: &str = "http://127.0.0.1:4180/oauth2/callback";

// ---- harness ---------------------------------------------------------------------------

/// A server that stops when dropped.
struct Running {
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

impl Running {
    fn url(&self, path: &str) -> Url {
        Url::parse(&format!("http://{}{path}", self.addr)).unwrap()
    }
    fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }
}

async fn serve_dev_on(listener: TcpListener, dev: Arc<DevProvider>) -> Running {
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(crate::demo::provider::serve(dev, listener, async move {
        let _ = rx.await;
    }));
    Running { addr, _stop: tx }
}

/// The development provider on a fresh port; its issuer is its own address.
async fn dev_provider() -> (Arc<DevProvider>, Running) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}", listener.local_addr().unwrap());
    let dev = Arc::new(DevProvider::new(&issuer, GW).unwrap());
    let running = serve_dev_on(listener, dev.clone()).await;
    (dev, running)
}

/// One request as the scripted provider saw it.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

type Script = dyn Fn(&Seen) -> (Duration, Response<Full<Bytes>>) + Send + Sync;

struct Scripted {
    running: Running,
    seen: Arc<StdMutex<Vec<Seen>>>,
}

impl Scripted {
    fn hits(&self, path: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.path == path)
            .count()
    }
    fn last(&self, path: &str) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|s| s.path == path)
            .cloned()
            .unwrap()
    }
}

async fn scripted(
    f: impl Fn(&Seen) -> (Duration, Response<Full<Bytes>>) + Send + Sync + 'static,
) -> Scripted {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let script: Arc<Script> = Arc::new(f);
    let seen: Arc<StdMutex<Vec<Seen>>> = Arc::default();
    let log = seen.clone();
    let handler = move |req: Request<hyper::body::Incoming>, _peer: SocketAddr| {
        let script = script.clone();
        let log = log.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = body
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            let seen = Seen {
                path: parts.uri.path().to_owned(),
                headers: parts.headers,
                body,
            };
            log.lock().unwrap().push(seen.clone());
            let (delay, resp) = script(&seen);
            tokio::time::sleep(delay).await;
            resp
        }
    };
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(crate::server::serve_simple(listener, handler, async move {
        let _ = rx.await;
    }));
    Scripted {
        running: Running { addr, _stop: tx },
        seen,
    }
}

fn json_resp(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn config(issuer: &str, client_auth: ClientAuth) -> ProviderConfig {
    ProviderConfig {
        issuer: Url::parse(issuer).unwrap(),
        endpoints: None,
        client_id: GATEWAY_CLIENT_ID.to_owned(),
        client_auth,
        scopes: vec!["openid".into(), "email".into(), "profile".into()],
        extra_auth_params: vec![("prompt".into(), "login".into())],
        id_token_algorithms: vec![Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA],
        use_userinfo: false,
        timeout: Duration::from_secs(5),
        discovery_refresh: Duration::from_secs(3600),
        clock_leeway: Duration::from_secs(60),
        redirect_url: Url::parse(CALLBACK).unwrap(),
        post_logout_redirect_url: Url::parse(&format!("{GW}/")).unwrap(),
    }
}

fn http_client() -> HttpClient {
    HttpClient::new(Duration::from_secs(5)).unwrap()
}

// ---- keys made in the test -------------------------------------------------------------

struct TestKey {
    kid: String,
    encoding: EncodingKey,
    jwk: Value,
    pkcs8: Vec<u8>,
}

fn es256_key(kid: &str) -> TestKey {
    let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
    let pkcs8 = pair.to_pkcs8v1().unwrap().as_ref().to_vec();
    let point = pair.public_key().as_ref();
    let jwk = json!({
        "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
        "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
        "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
    });
    TestKey {
        kid: kid.to_owned(),
        encoding: EncodingKey::from_ec_der(&pkcs8),
        jwk,
        pkcs8,
    }
}

fn ed25519_key(kid: &str) -> TestKey {
    let pair = Ed25519KeyPair::generate().unwrap();
    let pkcs8 = pair.to_pkcs8().unwrap().as_ref().to_vec();
    let jwk = json!({
        "kty": "OKP", "crv": "Ed25519", "kid": kid,
        "x": URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()),
    });
    TestKey {
        kid: kid.to_owned(),
        encoding: EncodingKey::from_ed_der(&pkcs8),
        jwk,
        pkcs8,
    }
}

fn pem(label: &str, der: &[u8]) -> Vec<u8> {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out.into_bytes()
}

/// A scripted provider serving a JWKS that the test can swap.
async fn jwks_server(keys: Vec<Value>) -> (Scripted, Arc<StdMutex<Value>>) {
    let doc = Arc::new(StdMutex::new(json!({ "keys": keys })));
    let served = doc.clone();
    let server = scripted(move |seen| {
        if seen.path == "/jwks" {
            // A little latency so concurrent misses really overlap the fetch.
            let body = served.lock().unwrap().clone();
            (Duration::from_millis(50), json_resp(StatusCode::OK, &body))
        } else {
            (
                Duration::ZERO,
                json_resp(StatusCode::NOT_FOUND, &json!({"error": "not_found"})),
            )
        }
    })
    .await;
    (server, doc)
}

// ---- discovery -------------------------------------------------------------------------

#[tokio::test]
async fn discovery_loads_the_dev_providers_metadata_and_keys() {
    let (dev, running) = dev_provider().await;
    let secret = dev.gateway_client_secret().clone();
    let p = Provider::new(&config(&running.origin(), ClientAuth::SecretBasic(secret))).unwrap();
    assert!(!p.ready(), "nothing is loaded before start");
    assert!(matches!(
        p.authorization_url("s", "n", "c"),
        Err(ProviderError::NotReady)
    ));
    p.load().await.unwrap();
    assert!(p.ready());
    let m = p.metadata().unwrap();
    assert_eq!(m.issuer, running.origin());
    assert_eq!(p.issuer(), running.origin());
    assert_eq!(m.token_endpoint, running.url("/token"));
    assert_eq!(m.jwks_uri, Some(running.url("/jwks")));
    assert_eq!(m.userinfo_endpoint, Some(running.url("/userinfo")));
    assert_eq!(m.end_session_endpoint, Some(running.url("/end_session")));
    assert_eq!(m.code_challenge_methods_supported, vec!["S256"]);
    assert!(m.discovered);
    assert!(p.iss_parameter_required());
    assert_eq!(p.jwks().keys().len(), 1);
    assert_eq!(p.jwks().fetch_count(), 1);

    let url = p.authorization_url("st", "no", "ch").unwrap();
    let q: HashMap<String, String> = url.query_pairs().into_owned().collect();
    assert_eq!(url.path(), "/authorize");
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["client_id"], GATEWAY_CLIENT_ID);
    assert_eq!(q["redirect_uri"], CALLBACK);
    assert_eq!(q["scope"], "openid email profile");
    assert_eq!(q["state"], "st");
    assert_eq!(q["nonce"], "no");
    assert_eq!(q["code_challenge"], "ch");
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["prompt"], "login");

    let logout = p.end_session_url(Some("idt"), Some("xyz")).unwrap();
    let q: HashMap<String, String> = logout.query_pairs().into_owned().collect();
    assert_eq!(logout.path(), "/end_session");
    assert_eq!(q["id_token_hint"], "idt");
    assert_eq!(q["post_logout_redirect_uri"], format!("{GW}/"));
    assert_eq!(q["client_id"], GATEWAY_CLIENT_ID);
    assert_eq!(q["state"], "xyz");
}

#[tokio::test]
async fn discovery_naming_another_issuer_is_refused() {
    // The provider believes it is someone else: its document names another issuer.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dev = Arc::new(DevProvider::new("http://127.0.0.1:1", GW).unwrap());
    let running = serve_dev_on(listener, dev).await;
    let p = Provider::new(&config(&running.origin(), ClientAuth::None)).unwrap();
    match p.load().await {
        Err(ProviderError::IssuerMismatch { expected, found }) => {
            assert_eq!(expected, running.origin());
            assert_eq!(found, "http://127.0.0.1:1");
        }
        other => panic!("expected IssuerMismatch, got {other:?}"),
    }
    assert!(!p.ready());
    assert!(p.metadata().is_none());
}

#[tokio::test]
async fn explicit_endpoints_need_no_discovery() {
    let (server, _doc) = jwks_server(vec![es256_key("a").jwk]).await;
    let mut cfg = config(&server.running.origin(), ClientAuth::None);
    cfg.endpoints = Some(ProviderEndpoints {
        authorization: server.running.url("/auth?tenant=t1"),
        token: server.running.url("/token"),
        userinfo: None,
        jwks: Some(server.running.url("/jwks")),
        end_session: None,
    });
    let p = Provider::new(&cfg).unwrap();
    assert!(p.metadata().is_some());
    assert!(!p.ready(), "the JWKS is not loaded yet");
    assert!(!p.iss_parameter_required());
    assert!(p.end_session_url(None, None).is_none());
    let url = p.authorization_url("s", "n", "c").unwrap();
    assert_eq!(
        url.query_pairs().next().unwrap().1,
        "t1",
        "existing query kept"
    );
    p.load().await.unwrap();
    assert!(p.ready());
    assert_eq!(server.hits("/.well-known/openid-configuration"), 0);
    assert!(matches!(
        p.userinfo(&Secret::new("t".into())).await,
        Err(ProviderError::Unsupported { .. })
    ));
}

#[tokio::test]
async fn discovery_is_retried_until_the_provider_comes_up() {
    // Reserve a port, free it, and bring the provider up on it only later.
    let probe = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = probe.local_addr().unwrap();
    drop(probe);
    let issuer = format!("http://{addr}");
    let p = Provider::new(&config(&issuer, ClientAuth::None)).unwrap();
    p.start();
    p.start(); // a second call does nothing
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(!p.ready(), "nothing listens yet");

    let listener = TcpListener::bind(addr).await.unwrap();
    let dev = Arc::new(DevProvider::new(&issuer, GW).unwrap());
    let _running = serve_dev_on(listener, dev).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !p.ready() {
        assert!(Instant::now() < deadline, "provider never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(p.issuer(), issuer);
}

#[tokio::test]
async fn a_provider_outage_after_loading_keeps_what_was_loaded() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let dev = Arc::new(DevProvider::new(&origin, GW).unwrap());
    let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (served, switch) = (dev.clone(), down.clone());
    let handler = move |req: Request<hyper::body::Incoming>, _peer: SocketAddr| {
        let (dev, down) = (served.clone(), switch.clone());
        async move {
            if down.load(std::sync::atomic::Ordering::SeqCst) {
                json_resp(StatusCode::SERVICE_UNAVAILABLE, &json!({}))
            } else {
                dev.handle_body(req).await
            }
        }
    };
    let (_stop, rx) = oneshot::channel::<()>();
    tokio::spawn(crate::server::serve_simple(listener, handler, async move {
        let _ = rx.await;
    }));
    let secret = dev.gateway_client_secret().clone();
    let p = Provider::new(&config(&origin, ClientAuth::SecretBasic(secret))).unwrap();
    p.load().await.unwrap();
    let before = p.metadata().unwrap();
    down.store(true, std::sync::atomic::Ordering::SeqCst); // the provider fails
    assert!(matches!(
        p.load().await,
        Err(ProviderError::Status { status: 503, .. })
    ));
    assert!(p.ready(), "old metadata and keys stay in use");
    assert_eq!(*p.metadata().unwrap(), *before);
    assert_eq!(p.jwks().keys().len(), 1);
    // Nothing secret in the provider's Debug output.
    let shown = format!("{p:?}");
    assert!(
        !shown.contains(dev.gateway_client_secret().expose().as_str()),
        "{shown}"
    );
    assert!(shown.contains("client_secret_basic"), "{shown}");
}

#[tokio::test]
async fn a_redirecting_provider_is_refused_not_followed() {
    let server = scripted(|seen| {
        let resp = if seen.path == "/.well-known/openid-configuration" {
            Response::builder()
                .status(StatusCode::FOUND)
                .header(header::LOCATION, "/elsewhere")
                .body(Full::new(Bytes::new()))
                .unwrap()
        } else {
            json_resp(StatusCode::OK, &json!({}))
        };
        (Duration::ZERO, resp)
    })
    .await;
    let p = Provider::new(&config(&server.running.origin(), ClientAuth::None)).unwrap();
    match p.load().await {
        Err(err @ ProviderError::Redirect { status: 302, .. }) => {
            assert!(err.to_string().contains("302"), "{err}");
        }
        other => panic!("expected Redirect, got {other:?}"),
    }
    assert_eq!(server.hits("/elsewhere"), 0);
}

#[tokio::test]
async fn an_oversized_answer_is_refused() {
    let server = scripted(|_| {
        let big = vec![b' '; super::http::MAX_RESPONSE_BYTES + 10];
        (Duration::ZERO, Response::new(Full::new(Bytes::from(big))))
    })
    .await;
    let err = http_client()
        .get_json::<Value>(&server.running.url("/x"), super::http::Auth::None)
        .await
        .unwrap_err();
    assert!(matches!(err, ProviderError::TooLarge { .. }), "{err:?}");
}

#[tokio::test]
async fn a_slow_provider_times_out() {
    let server = scripted(|_| {
        (
            Duration::from_secs(3),
            json_resp(StatusCode::OK, &json!({})),
        )
    })
    .await;
    let client = HttpClient::new(Duration::from_millis(200)).unwrap();
    let started = Instant::now();
    let err = client
        .get_json::<Value>(
            &server.running.url("/slow?token=abc"),
            super::http::Auth::None,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ProviderError::Timeout { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(
        !err.to_string().contains("abc"),
        "queries never reach errors"
    );
}

#[tokio::test]
async fn an_unreachable_provider_is_an_error() {
    let probe = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = Url::parse(&format!("http://{}/x", probe.local_addr().unwrap())).unwrap();
    drop(probe);
    let err = http_client()
        .get_json::<Value>(&url, super::http::Auth::None)
        .await
        .unwrap_err();
    assert!(matches!(err, ProviderError::Unreachable { .. }), "{err:?}");
}

// ---- JWKS ------------------------------------------------------------------------------

#[tokio::test]
async fn unknown_kid_refetches_once_then_is_rate_limited() {
    let a = es256_key("a");
    let (server, _doc) = jwks_server(vec![a.jwk.clone()]).await;
    let jwks = Jwks::new(
        server.running.url("/jwks"),
        http_client(),
        JWKS_REFETCH_INTERVAL,
    );
    jwks.refresh().await.unwrap(); // what the provider's background task does
    assert!(jwks.loaded());
    assert!(jwks.get("a").await.unwrap().is_some());
    assert_eq!(jwks.fetch_count(), 1);
    assert!(jwks.get("a").await.unwrap().is_some());
    assert_eq!(jwks.fetch_count(), 1, "known kids are served from memory");
    assert!(jwks.get("unknown").await.unwrap().is_none());
    assert_eq!(jwks.fetch_count(), 2, "an unknown kid refetches once");
    assert!(jwks.get("other-unknown").await.unwrap().is_none());
    assert_eq!(jwks.fetch_count(), 2, "within 10 s no further refetch");
    assert_eq!(server.hits("/jwks"), 2);
}

#[tokio::test]
async fn concurrent_unknown_kid_lookups_share_one_fetch() {
    let (server, _doc) = jwks_server(vec![es256_key("a").jwk]).await;
    let jwks = Arc::new(Jwks::new(
        server.running.url("/jwks"),
        http_client(),
        JWKS_REFETCH_INTERVAL,
    ));
    jwks.refresh().await.unwrap();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let jwks = jwks.clone();
            tokio::spawn(async move { jwks.get(&format!("nope-{i}")).await })
        })
        .collect();
    for t in tasks {
        assert!(t.await.unwrap().unwrap().is_none());
    }
    assert_eq!(
        jwks.fetch_count(),
        2,
        "the load, then one refetch for all 200 misses"
    );
    assert_eq!(server.hits("/jwks"), 2);
}

#[tokio::test]
async fn rotated_keys_are_picked_up_without_restart() {
    let a = es256_key("a");
    let b = es256_key("b");
    let (server, doc) = jwks_server(vec![a.jwk.clone()]).await;
    let jwks = Jwks::new(
        server.running.url("/jwks"),
        http_client(),
        JWKS_REFETCH_INTERVAL,
    );
    jwks.refresh().await.unwrap();
    let now = unix_now();
    assert!(validate(&sign(&a, &claims(now)), &jwks, now).await.is_ok());
    assert_eq!(jwks.fetch_count(), 1);
    // The provider rotates: b replaces a.
    *doc.lock().unwrap() = json!({"keys": [b.jwk.clone()]});
    assert!(validate(&sign(&b, &claims(now)), &jwks, now).await.is_ok());
    assert_eq!(jwks.fetch_count(), 2, "one refetch for the new kid");
    assert_eq!(
        validate(&sign(&a, &claims(now)), &jwks, now).await,
        Err(IdTokenRejected::UnknownKey),
        "the retired key no longer verifies (and is rate-limited)"
    );
    assert_eq!(jwks.fetch_count(), 2);
}

#[tokio::test]
async fn jwks_failures_fail_closed() {
    let server = scripted(|_| {
        (
            Duration::ZERO,
            json_resp(StatusCode::INTERNAL_SERVER_ERROR, &json!({})),
        )
    })
    .await;
    let jwks = Jwks::new(
        server.running.url("/jwks"),
        http_client(),
        JWKS_REFETCH_INTERVAL,
    );
    let key = es256_key("a");
    let now = unix_now();
    assert_eq!(
        validate(&sign(&key, &claims(now)), &jwks, now).await,
        Err(IdTokenRejected::KeysUnavailable)
    );
    assert_eq!(
        validate(&sign(&key, &claims(now)), &jwks, now).await,
        Err(IdTokenRejected::KeysUnavailable),
        "still closed while rate-limited"
    );
    assert_eq!(jwks.fetch_count(), 1);
}

// ---- the code flow with the development provider ---------------------------------------

async fn body_text(resp: Response<Full<Bytes>>) -> String {
    String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap()
}

/// Plays the browser at the dev provider: follows the authorization URL, submits the login
/// form, returns the callback query.
async fn browser_login(dev: &DevProvider, auth_url: &Url, user: &str) -> HashMap<String, String> {
    let path = format!("{}?{}", auth_url.path(), auth_url.query().unwrap());
    let resp = dev
        .handle(Request::builder().uri(path).body(Bytes::new()).unwrap())
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let page = body_text(resp).await;
    let marker = "name=\"request_id\" value=\"";
    let start = page.find(marker).unwrap() + marker.len();
    let rid = &page[start..start + page[start..].find('"').unwrap()];
    let form = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs([("request_id", rid), ("username", user), ("action", "login")])
        .finish();
    let resp = dev
        .handle(
            Request::builder()
                .method("POST")
                .uri("/authorize")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Bytes::from(form))
                .unwrap(),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::FOUND);
    let location = resp.headers()[header::LOCATION].to_str().unwrap();
    assert!(location.starts_with(CALLBACK), "{location}");
    Url::parse(location)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect()
}

async fn full_flow(client_auth: impl Fn(&DevProvider) -> ClientAuth) {
    let (dev, running) = dev_provider().await;
    let p = Provider::new(&config(&running.origin(), client_auth(&dev))).unwrap();
    p.load().await.unwrap();
    let (verifier, challenge) = pkce_pair();
    let state = random_token(16);
    let nonce = random_token(16);
    let url = p.authorization_url(&state, &nonce, &challenge).unwrap();
    let callback = browser_login(&dev, &url, "alice").await;
    assert_eq!(callback["state"], state);
    assert_eq!(callback["iss"], p.issuer());

    let tokens = p.exchange_code(&callback["code"], &verifier).await.unwrap();
    assert!(tokens.token_type.eq_ignore_ascii_case("bearer"));
    assert!(tokens.expires_in.is_some());
    assert!(tokens.refresh_token.is_some());
    let id_token = tokens.id_token.clone().unwrap();
    let claims = p.validate_id_token(&id_token, Some(&nonce)).await.unwrap();
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["aud"], GATEWAY_CLIENT_ID);
    assert_eq!(
        p.validate_id_token(&id_token, Some("another-nonce")).await,
        Err(IdTokenRejected::NonceMismatch)
    );
    let info = p.userinfo(&tokens.access_token).await.unwrap();
    assert_eq!(info["sub"], "alice");

    // Refresh works with the same client authentication.
    let refreshed = p
        .refresh(tokens.refresh_token.as_ref().unwrap())
        .await
        .unwrap();
    assert!(!refreshed.access_token.expose().is_empty());
    // A code works once; the second attempt is the provider's invalid_grant (and the provider
    // revokes what the code gave, so the rotated refresh token dies too).
    match p.exchange_code(&callback["code"], &verifier).await {
        Err(ProviderError::Status {
            status: 400, error, ..
        }) => {
            assert_eq!(error.as_deref(), Some("invalid_grant"));
        }
        other => panic!("expected invalid_grant, got {other:?}"),
    }
    match p.refresh(refreshed.refresh_token.as_ref().unwrap()).await {
        Err(ProviderError::Status { error, .. }) => {
            assert_eq!(error.as_deref(), Some("invalid_grant"));
        }
        other => panic!("expected invalid_grant, got {other:?}"),
    }
    // Nothing secret prints.
    let shown = format!("{tokens:?}");
    assert!(
        !shown.contains(tokens.access_token.expose().as_str()),
        "{shown}"
    );
    assert!(!shown.contains(&id_token), "{shown}");
}

#[tokio::test]
async fn full_code_flow_with_client_secret_basic() {
    full_flow(|dev| ClientAuth::SecretBasic(dev.gateway_client_secret().clone())).await;
}

#[tokio::test]
async fn full_code_flow_with_client_secret_post() {
    full_flow(|dev| ClientAuth::SecretPost(dev.gateway_client_secret().clone())).await;
}

#[tokio::test]
async fn a_wrong_client_secret_is_invalid_client() {
    let (dev, running) = dev_provider().await;
    let p = Provider::new(&config(
        &running.origin(),
        ClientAuth::SecretBasic(Secret::new("wrong".into())),
    ))
    .unwrap();
    p.load().await.unwrap();
    let (verifier, challenge) = pkce_pair();
    let url = p.authorization_url("s", "n", &challenge).unwrap();
    let callback = browser_login(&dev, &url, "bob").await;
    match p.exchange_code(&callback["code"], &verifier).await {
        Err(err @ ProviderError::Status { status: 401, .. }) => {
            let ProviderError::Status { error, .. } = &err else {
                unreachable!()
            };
            assert_eq!(error.as_deref(), Some("invalid_client"));
            assert!(!err.to_string().contains("wrong"), "{err}");
        }
        other => panic!("expected invalid_client, got {other:?}"),
    }
}

/// A token endpoint that records what it received.
async fn recording_token_endpoint() -> Scripted {
    scripted(|_| {
        (
            Duration::ZERO,
            json_resp(
                StatusCode::OK,
                &json!({"access_token": "at", "token_type": "Bearer", "expires_in": "60"}),
            ),
        )
    })
    .await
}

fn form_of(seen: &Seen) -> HashMap<String, String> {
    url::form_urlencoded::parse(&seen.body)
        .into_owned()
        .collect()
}

async fn call_token(server: &Scripted, auth: ClientAuth, client_id: &str) -> TokenResponse {
    let credentials = ClientCredentials::new(client_id, &auth).unwrap();
    let http = http_client();
    let endpoint = server.running.url("/token");
    token::TokenCall {
        http: &http,
        endpoint: &endpoint,
        client_id,
        credentials: &credentials,
    }
    .exchange_code(
        "c0de",
        &Secret::new("v".repeat(43)),
        &Url::parse(CALLBACK).unwrap(),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn client_secret_basic_form_encodes_then_base64s() {
    let server = recording_token_endpoint().await;
    let tokens = call_token(
        &server,
        ClientAuth::SecretBasic(Secret::new("s:e cr+t".into())),
        "my client",
    )
    .await;
    assert_eq!(tokens.expires_in, Some(60));
    let seen = server.last("/token");
    let basic = seen.headers[header::AUTHORIZATION].to_str().unwrap();
    let decoded = STANDARD
        .decode(basic.strip_prefix("Basic ").unwrap())
        .unwrap();
    // RFC 6749 §2.3.1: each part form-urlencoded before joining with ':'.
    assert_eq!(
        String::from_utf8(decoded).unwrap(),
        "my+client:s%3Ae+cr%2Bt"
    );
    let form = form_of(&seen);
    assert!(!form.contains_key("client_secret"));
    assert_eq!(form["grant_type"], "authorization_code");
    assert_eq!(form["code"], "c0de");
    assert_eq!(form["redirect_uri"], CALLBACK);
    assert_eq!(form["code_verifier"].len(), 43);
    assert_eq!(
        seen.headers[header::CONTENT_TYPE],
        "application/x-www-form-urlencoded"
    );
}

#[tokio::test]
async fn client_secret_post_and_none_put_the_client_in_the_body() {
    let server = recording_token_endpoint().await;
    call_token(
        &server,
        ClientAuth::SecretPost(Secret::new("pw".into())),
        "cid",
    )
    .await;
    let seen = server.last("/token");
    assert!(seen.headers.get(header::AUTHORIZATION).is_none());
    let form = form_of(&seen);
    assert_eq!(form["client_id"], "cid");
    assert_eq!(form["client_secret"], "pw");

    call_token(&server, ClientAuth::None, "public").await;
    let seen = server.last("/token");
    assert!(seen.headers.get(header::AUTHORIZATION).is_none());
    let form = form_of(&seen);
    assert_eq!(form["client_id"], "public");
    assert!(!form.contains_key("client_secret"));
}

#[tokio::test]
async fn private_key_jwt_assertion_has_the_right_claims() {
    let key = es256_key("client-key");
    let server = recording_token_endpoint().await;
    let auth = ClientAuth::PrivateKeyJwt {
        key_pem: Secret::new(pem("PRIVATE KEY", &key.pkcs8)),
        alg: Algorithm::ES256,
        kid: Some("client-key".into()),
    };
    call_token(&server, auth, "cid").await;
    let form = form_of(&server.last("/token"));
    assert_eq!(form["client_assertion_type"], token::JWT_BEARER_ASSERTION);
    assert_eq!(form["client_id"], "cid");
    let assertion = &form["client_assertion"];
    let header = jsonwebtoken::decode_header(assertion).unwrap();
    assert_eq!(header.alg, Algorithm::ES256);
    assert_eq!(header.kid.as_deref(), Some("client-key"));
    let decoding =
        DecodingKey::from_jwk(&serde_json::from_value(key.jwk.clone()).unwrap()).unwrap();
    let endpoint = server.running.url("/token");
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_audience(&[endpoint.as_str()]);
    validation.set_issuer(&["cid"]);
    let data =
        jsonwebtoken::decode::<token::AssertionClaims>(assertion, &decoding, &validation).unwrap();
    let c = data.claims;
    assert_eq!(c.iss, "cid");
    assert_eq!(c.sub, "cid");
    assert_eq!(c.aud, endpoint.as_str());
    assert_eq!(c.exp - c.iat, 60);
    assert!(c.jti.len() >= 22, "jti has at least 128 random bits");
    assert!(c.iat.abs_diff(unix_now()) < 5);

    // A fresh jti every time.
    call_token(
        &server,
        ClientAuth::PrivateKeyJwt {
            key_pem: Secret::new(pem("PRIVATE KEY", &key.pkcs8)),
            alg: Algorithm::ES256,
            kid: None,
        },
        "cid",
    )
    .await;
    let again = form_of(&server.last("/token"))["client_assertion"].clone();
    let c2 = jsonwebtoken::decode::<token::AssertionClaims>(&again, &decoding, &validation)
        .unwrap()
        .claims;
    assert_ne!(c.jti, c2.jti);
}

#[test]
fn a_private_key_that_does_not_parse_is_refused_at_start() {
    let auth = ClientAuth::PrivateKeyJwt {
        key_pem: Secret::new(b"not a pem".to_vec()),
        alg: Algorithm::RS256,
        kid: None,
    };
    let err = ClientCredentials::new("cid", &auth).unwrap_err();
    assert!(matches!(err, ProviderError::ClientAuth { .. }), "{err:?}");
}

#[tokio::test]
async fn oauth_error_bodies_become_status_errors() {
    let server = scripted(|_| {
        (
            Duration::ZERO,
            json_resp(
                StatusCode::BAD_REQUEST,
                &json!({"error": "invalid_grant", "error_description": "code expired"}),
            ),
        )
    })
    .await;
    let http = http_client();
    let creds = ClientCredentials::new("cid", &ClientAuth::None).unwrap();
    let endpoint = server.running.url("/token");
    let err = token::TokenCall {
        http: &http,
        endpoint: &endpoint,
        client_id: "cid",
        credentials: &creds,
    }
    .refresh(&Secret::new("super-secret-refresh".into()))
    .await
    .unwrap_err();
    match &err {
        ProviderError::Status {
            status,
            error,
            error_description,
            ..
        } => {
            assert_eq!(*status, 400);
            assert_eq!(error.as_deref(), Some("invalid_grant"));
            assert_eq!(error_description.as_deref(), Some("code expired"));
        }
        other => panic!("expected Status, got {other:?}"),
    }
    assert!(!format!("{err} {err:?}").contains("super-secret-refresh"));
    let form = form_of(&server.last("/token"));
    assert_eq!(form["grant_type"], "refresh_token");
    assert_eq!(form["refresh_token"], "super-secret-refresh");
}

// ---- PKCE and random values ------------------------------------------------------------

#[test]
fn pkce_pair_verifies_with_s256() {
    let (verifier, challenge) = pkce_pair();
    let v = verifier.expose();
    assert!((43..=128).contains(&v.len()));
    assert!(
        v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
    );
    let expected = URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, v.as_bytes()));
    assert_eq!(challenge, expected);
    assert_eq!(challenge.len(), 43);
    // RFC 7636 appendix B.
    assert_eq!(
        pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
        "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    );
    let (other, _) = pkce_pair();
    assert_ne!(other.expose(), v);
    assert_eq!(format!("{verifier:?}"), "[redacted]");
}

#[test]
fn start_outside_a_runtime_does_not_panic() {
    let p = Provider::new(&config("http://127.0.0.1:1", ClientAuth::None)).unwrap();
    p.start();
    assert!(!p.ready());
}

#[test]
fn random_tokens_have_at_least_128_bits() {
    assert!(random_token(1).len() >= 22);
    assert_eq!(random_token(32).len(), 43);
    assert_ne!(random_token(16), random_token(16));
}

// ---- ID token validation ---------------------------------------------------------------

const ISS: &str = "https://idp.example";
const NONCE: &str = "n-0S6_WzA2Mj";

fn claims(now: u64) -> Value {
    json!({
        "iss": ISS, "sub": "alice", "aud": GATEWAY_CLIENT_ID,
        "exp": now + 300, "iat": now, "nonce": NONCE,
    })
}

fn sign(key: &TestKey, claims: &Value) -> String {
    let mut header = Header::new(if key.jwk["kty"] == "OKP" {
        Algorithm::EdDSA
    } else {
        Algorithm::ES256
    });
    header.kid = Some(key.kid.clone());
    jsonwebtoken::encode(&header, claims, &key.encoding).unwrap()
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

const ALGS: &[Algorithm] = &[Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];

fn expectations(now: u64) -> Expectations<'static> {
    Expectations {
        issuer: ISS,
        client_id: GATEWAY_CLIENT_ID,
        algorithms: ALGS,
        leeway: Duration::from_secs(60),
        nonce: Some(NONCE),
        now,
        hmac_secret: None,
    }
}

async fn validate(raw: &str, jwks: &Jwks, now: u64) -> Result<Claims, IdTokenRejected> {
    id_token::validate_id_token(raw, jwks, &expectations(now)).await
}

/// A JWKS with `keys` and the server behind it (kept alive by the caller).
async fn id_token_setup(keys: &[&TestKey]) -> (Scripted, Jwks) {
    let (server, _) = jwks_server(keys.iter().map(|k| k.jwk.clone()).collect()).await;
    let jwks = Jwks::new(
        server.running.url("/jwks"),
        http_client(),
        JWKS_REFETCH_INTERVAL,
    );
    (server, jwks)
}

#[tokio::test]
async fn a_valid_id_token_is_accepted() {
    let key = es256_key("k1");
    let ed = ed25519_key("k2");
    let (_server, jwks) = id_token_setup(&[&key, &ed]).await;
    let now = unix_now();
    let claims = validate(&sign(&key, &claims(now)), &jwks, now)
        .await
        .unwrap();
    assert_eq!(claims["sub"], "alice");
    assert!(
        validate(&sign(&ed, &claims_now(now)), &jwks, now)
            .await
            .is_ok()
    );
    // Several audiences with azp = us, and a string-or-array aud.
    let mut c = claims_now(now);
    c["aud"] = json!([GATEWAY_CLIENT_ID, "api"]);
    c["azp"] = json!(GATEWAY_CLIENT_ID);
    assert!(validate(&sign(&key, &c), &jwks, now).await.is_ok());
    // Within leeway on both sides.
    let mut c = claims_now(now);
    c["exp"] = json!(now - 30);
    c["iat"] = json!(now + 30);
    assert!(validate(&sign(&key, &c), &jwks, now).await.is_ok());
}

fn claims_now(now: u64) -> Value {
    claims(now)
}

#[tokio::test]
async fn a_token_without_kid_uses_the_only_fitting_key() {
    let key = es256_key("solo");
    let ed = ed25519_key("ed");
    let (_server, jwks) = id_token_setup(&[&key, &ed]).await;
    let now = unix_now();
    let token =
        jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims(now), &key.encoding).unwrap();
    assert!(validate(&token, &jwks, now).await.is_ok());
}

#[tokio::test]
async fn id_token_attacks_are_rejected() {
    use IdTokenRejected as R;
    let key = es256_key("k1");
    let other = es256_key("k1"); // same kid, different key: a forged signature
    let (_server, jwks) = id_token_setup(&[&key]).await;
    let now = unix_now();
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = claims(now);
        f(&mut c);
        sign(&key, &c)
    };
    let good = sign(&key, &claims(now));
    let parts: Vec<&str> = good.split('.').collect();

    let public_jwk = key.jwk.to_string();
    let mut hs_header = Header::new(Algorithm::HS256);
    hs_header.kid = Some("k1".into());
    let hs_with_public_key = jsonwebtoken::encode(
        &hs_header,
        &claims(now),
        &EncodingKey::from_secret(public_jwk.as_bytes()),
    )
    .unwrap();
    let mut crit_header = Header::new(Algorithm::ES256);
    crit_header.kid = Some("k1".into());
    crit_header.crit = Some(vec!["exp".into()]);
    let crit = jsonwebtoken::encode(&crit_header, &claims(now), &key.encoding).unwrap();
    let alg_none = format!(
        "{}.{}.{}",
        b64(&json!({"alg": "none", "kid": "k1"})),
        parts[1],
        parts[2]
    );
    let unsigned = format!("{}.{}.", b64(&json!({"alg": "none"})), parts[1]);
    let mut big = claims(now);
    big["padding"] = json!("x".repeat(20 * 1024));
    let dup_header = format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"ES256","kid":"k1","alg":"HS256"}"#),
        parts[1],
        parts[2]
    );
    let dup_payload = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(format!(
            r#"{{"iss":"{ISS}","sub":"alice","aud":"{GATEWAY_CLIENT_ID}","exp":{},"iat":{now},"nonce":"{NONCE}","sub":"admin"}}"#,
            now + 300
        )),
        parts[2]
    );
    // An all-zero ECDSA signature (CVE-2022-21449).
    let zero_sig = format!(
        "{}.{}.{}",
        parts[0],
        parts[1],
        URL_SAFE_NO_PAD.encode([0u8; 64])
    );

    let cases: Vec<(&str, String, R)> = vec![
        ("bad signature", sign(&other, &claims(now)), R::BadSignature),
        ("all-zero ECDSA signature", zero_sig, R::BadSignature),
        (
            "wrong iss",
            with(&|c| c["iss"] = json!("https://evil.example")),
            R::WrongIssuer,
        ),
        (
            "iss with trailing slash",
            with(&|c| c["iss"] = json!(format!("{ISS}/"))),
            R::WrongIssuer,
        ),
        (
            "wrong aud",
            with(&|c| c["aud"] = json!("someone-else")),
            R::WrongAudience,
        ),
        (
            "aud array without us",
            with(&|c| c["aud"] = json!(["a", "b"])),
            R::WrongAudience,
        ),
        (
            "missing aud",
            with(&|c| {
                c.as_object_mut().unwrap().remove("aud");
            }),
            R::MissingClaim("aud"),
        ),
        ("expired", with(&|c| c["exp"] = json!(now - 61)), R::Expired),
        (
            "missing exp",
            with(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
            R::MissingClaim("exp"),
        ),
        (
            "iat in the future",
            with(&|c| c["iat"] = json!(now + 3600)),
            R::IssuedInFuture,
        ),
        (
            "missing iat",
            with(&|c| {
                c.as_object_mut().unwrap().remove("iat");
            }),
            R::MissingClaim("iat"),
        ),
        (
            "nbf in the future",
            with(&|c| c["nbf"] = json!(now + 3600)),
            R::NotYetValid,
        ),
        (
            "missing sub",
            with(&|c| {
                c.as_object_mut().unwrap().remove("sub");
            }),
            R::MissingClaim("sub"),
        ),
        (
            "wrong nonce",
            with(&|c| c["nonce"] = json!("replayed")),
            R::NonceMismatch,
        ),
        (
            "missing nonce",
            with(&|c| {
                c.as_object_mut().unwrap().remove("nonce");
            }),
            R::NonceMismatch,
        ),
        (
            "several audiences without azp",
            with(&|c| c["aud"] = json!([GATEWAY_CLIENT_ID, "api"])),
            R::AzpMismatch,
        ),
        (
            "azp mismatch with several audiences",
            with(&|c| {
                c["aud"] = json!([GATEWAY_CLIENT_ID, "api"]);
                c["azp"] = json!("api");
            }),
            R::AzpMismatch,
        ),
        ("alg none", alg_none, R::AlgorithmNotAllowed),
        ("unsigned (empty signature)", unsigned, R::NotCompactJws),
        (
            "HS256 signed with the public key",
            hs_with_public_key,
            R::AlgorithmNotAllowed,
        ),
        ("crit header", crit, R::CriticalHeader),
        ("four segments", format!("{good}.AAAA"), R::NotCompactJws),
        (
            "two segments",
            format!("{}.{}", parts[0], parts[1]),
            R::NotCompactJws,
        ),
        (
            "JWE (five segments)",
            "a.b.c.d.e".to_owned(),
            R::NotCompactJws,
        ),
        ("20 KB token", sign(&key, &big), R::TooLarge),
        ("duplicate header member", dup_header, R::DuplicateMember),
        ("duplicate claim", dup_payload, R::DuplicateMember),
        ("garbage", "not.a.jwt".to_owned(), R::Malformed),
        (
            "unknown kid",
            sign(&es256_key("k9"), &claims(now)),
            R::UnknownKey,
        ),
    ];
    for (name, token, expected) in cases {
        let got = validate(&token, &jwks, now).await;
        assert_eq!(got, Err(expected.clone()), "{name}");
        // The reason names no value from the token.
        assert!(!expected.to_string().contains("alice"), "{name}");
    }
}

#[tokio::test]
async fn hmac_id_tokens_verify_only_with_the_client_secret() {
    let key = es256_key("k1");
    let (_server, jwks) = id_token_setup(&[&key]).await;
    let now = unix_now();
    let algs = [Algorithm::ES256, Algorithm::HS256];
    let expect = Expectations {
        algorithms: &algs,
        hmac_secret: Some(b"client-secret"),
        ..expectations(now)
    };
    let hs = |secret: &[u8]| {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims(now),
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    };
    assert!(
        id_token::validate_id_token(&hs(b"client-secret"), &jwks, &expect)
            .await
            .is_ok()
    );
    // Algorithm confusion: the public key as HMAC secret never verifies.
    assert_eq!(
        id_token::validate_id_token(&hs(key.jwk.to_string().as_bytes()), &jwks, &expect).await,
        Err(IdTokenRejected::BadSignature)
    );
    // HS256 allowed but no secret configured: refused.
    let no_secret = Expectations {
        hmac_secret: None,
        ..expect
    };
    assert_eq!(
        id_token::validate_id_token(&hs(b"client-secret"), &jwks, &no_secret).await,
        Err(IdTokenRejected::AlgorithmNotAllowed)
    );
}

#[tokio::test]
async fn a_key_is_not_used_for_another_algorithm() {
    // An EdDSA key named by kid cannot verify an ES256 token.
    let ed = ed25519_key("shared");
    let ec = es256_key("shared");
    let (_server, jwks) = id_token_setup(&[&ed]).await;
    let now = unix_now();
    assert_eq!(
        validate(&sign(&ec, &claims(now)), &jwks, now).await,
        Err(IdTokenRejected::UnknownKey)
    );
}

use std::collections::HashMap;

#[test]
fn the_access_token_expiry_comes_from_expires_in_else_from_a_jwt() {
    use base64::Engine as _;
    let jwt = |claims: &str| {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.sig", b64(r#"{"alg":"RS256"}"#), b64(claims))
    };
    let tokens =
        |access: String, expires_in: Option<u64>, id_token: Option<String>| super::TokenResponse {
            access_token: Secret::new(access),
            token_type: "Bearer".into(),
            expires_in,
            refresh_token: None,
            id_token,
            scope: None,
        };
    let now = 1_000;
    let access = jwt(r#"{"sub":"alice","exp":1300}"#);
    assert_eq!(
        tokens(access.clone(), Some(60), None).access_expires_at(now),
        Some(1_060)
    );
    // No expires_in (RFC 6749 only recommends it): the JWT access token's exp.
    assert_eq!(
        tokens(access, None, None).access_expires_at(now),
        Some(1_300)
    );
    // An opaque access token: the ID token's exp.
    let id = jwt(r#"{"sub":"alice","exp":1200}"#);
    assert_eq!(
        tokens("opaque".into(), None, Some(id)).access_expires_at(now),
        Some(1_200)
    );
    assert_eq!(
        tokens("opaque".into(), None, None).access_expires_at(now),
        None
    );
    assert_eq!(
        tokens("a.b.c.d".into(), None, None).access_expires_at(now),
        None
    );
}
