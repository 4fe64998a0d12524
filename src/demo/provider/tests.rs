//! Tests of the development provider, from the point of view of an OAuth/OIDC client.

use std::collections::HashMap;

use http_body_util::BodyExt;
use jsonwebtoken::jwk::JwkSet;

use super::*;

const GW: &str = "http://127.0.0.1:4180";
const ISS: &str = "http://127.0.0.1:39999";
const CALLBACK: &str = "http://127.0.0.1:4180/oauth2/callback";
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";

fn provider() -> DevProvider {
    DevProvider::new(ISS, GW).unwrap()
}

fn challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, verifier.as_bytes()))
}

fn get(uri: &str) -> Request<Bytes> {
    Request::builder().uri(uri).body(Bytes::new()).unwrap()
}

fn form_post(uri: &str, pairs: &[(&str, &str)]) -> Request<Bytes> {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish();
    Request::builder()
        .method("POST")
        .uri(uri)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Bytes::from(body))
        .unwrap()
}

fn basic(id: &str, secret: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{id}:{secret}")))
}

fn token_req(p: &DevProvider, pairs: &[(&str, &str)]) -> Request<Bytes> {
    let mut req = form_post("/token", pairs);
    req.headers_mut().insert(
        header::AUTHORIZATION,
        basic(GATEWAY_CLIENT_ID, p.gateway_client_secret().expose())
            .parse()
            .unwrap(),
    );
    req
}

async fn text(resp: Response<Full<Bytes>>) -> String {
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

async fn json_of(resp: Response<Full<Bytes>>) -> Value {
    serde_json::from_str(&text(resp).await).unwrap()
}

fn query_of(location: &str) -> HashMap<String, String> {
    Url::parse(location)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect()
}

fn authorize_uri(redirect_uri: &str, challenge: &str) -> String {
    let q = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("response_type", "code"),
            ("client_id", GATEWAY_CLIENT_ID),
            ("redirect_uri", redirect_uri),
            ("scope", "openid email profile groups"),
            ("state", "st-123"),
            ("nonce", "n-456"),
            ("code_challenge", challenge),
            ("code_challenge_method", "S256"),
        ])
        .finish();
    format!("/authorize?{q}")
}

fn hidden_request_id(page: &str) -> String {
    let marker = "name=\"request_id\" value=\"";
    let start = page.find(marker).unwrap() + marker.len();
    let end = start + page[start..].find('"').unwrap();
    page[start..end].to_owned()
}

/// Runs the browser part of the flow; returns the callback query.
async fn login(p: &DevProvider, user: &str) -> HashMap<String, String> {
    let resp = p
        .handle(get(&authorize_uri(CALLBACK, &challenge(VERIFIER))))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let page = text(resp).await;
    let rid = hidden_request_id(&page);
    let resp = p
        .handle(form_post(
            "/authorize",
            &[
                ("request_id", &rid),
                ("username", user),
                ("email", ""),
                ("groups", "admins"),
                ("groups", "readers"),
                ("groups_extra", "ops, billing"),
                ("action", "login"),
            ],
        ))
        .await;
    assert_eq!(resp.status(), StatusCode::FOUND);
    let location = resp.headers()[header::LOCATION]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(location.starts_with(&format!("{CALLBACK}?")), "{location}");
    query_of(&location)
}

async fn code_tokens(p: &DevProvider) -> Value {
    let q = login(p, "alice").await;
    let resp = p
        .handle(token_req(
            p,
            &[
                ("grant_type", "authorization_code"),
                ("code", &q["code"]),
                ("redirect_uri", CALLBACK),
                ("code_verifier", VERIFIER),
            ],
        ))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    json_of(resp).await
}

async fn jwks_key(p: &DevProvider, kid: &str) -> DecodingKey {
    let set: JwkSet = serde_json::from_str(&text(p.handle(get("/jwks")).await).await).unwrap();
    let jwk = set.find(kid).unwrap();
    DecodingKey::from_jwk(jwk).unwrap()
}

#[tokio::test]
async fn discovery_document_describes_the_provider() {
    let p = provider();
    let resp = p.handle(get("/.well-known/openid-configuration")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
    let d = json_of(resp).await;
    assert_eq!(d["issuer"], ISS);
    assert_eq!(d["authorization_endpoint"], format!("{ISS}/authorize"));
    assert_eq!(d["token_endpoint"], format!("{ISS}/token"));
    assert_eq!(d["userinfo_endpoint"], format!("{ISS}/userinfo"));
    assert_eq!(d["jwks_uri"], format!("{ISS}/jwks"));
    assert_eq!(d["end_session_endpoint"], format!("{ISS}/end_session"));
    assert_eq!(d["response_types_supported"], json!(["code"]));
    assert_eq!(
        d["grant_types_supported"],
        json!([
            "authorization_code",
            "refresh_token",
            "client_credentials",
            "password"
        ])
    );
    assert_eq!(d["introspection_endpoint"], format!("{ISS}/introspect"));
    assert_eq!(d["code_challenge_methods_supported"], json!(["S256"]));
    assert_eq!(
        d["token_endpoint_auth_methods_supported"],
        json!(["client_secret_basic", "client_secret_post"])
    );
    assert_eq!(d["id_token_signing_alg_values_supported"], json!(["ES256"]));
    assert_eq!(d["subject_types_supported"], json!(["public"]));
    assert_eq!(d["authorization_response_iss_parameter_supported"], true);
    let scopes = d["scopes_supported"].as_array().unwrap();
    assert!(scopes.contains(&json!("openid")));
    assert!(
        d["claims_supported"]
            .as_array()
            .unwrap()
            .contains(&json!("groups"))
    );

    let jwks = json_of(p.handle(get("/jwks")).await).await;
    let key = &jwks["keys"][0];
    assert_eq!(key["kty"], "EC");
    assert_eq!(key["crv"], "P-256");
    assert_eq!(key["alg"], "ES256");
    assert_eq!(key["use"], "sig");
    assert!(
        key.get("d").is_none(),
        "the private key must never be served"
    );
}

#[tokio::test]
async fn full_code_flow_yields_verifiable_tokens() {
    let p = provider();
    let q = login(&p, "alice").await;
    assert_eq!(q["state"], "st-123");
    assert_eq!(q["iss"], ISS);
    assert!(!q["code"].is_empty());

    let resp = p
        .handle(token_req(
            &p,
            &[
                ("grant_type", "authorization_code"),
                ("code", &q["code"]),
                ("redirect_uri", CALLBACK),
                ("code_verifier", VERIFIER),
            ],
        ))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[header::CACHE_CONTROL], "no-store");
    let t = json_of(resp).await;
    assert_eq!(t["token_type"], "Bearer");
    assert_eq!(t["expires_in"], 300);
    assert_eq!(t["scope"], "openid email profile groups");
    assert!(t["refresh_token"].as_str().is_some_and(|s| !s.is_empty()));

    let id_token = t["id_token"].as_str().unwrap();
    let header = jsonwebtoken::decode_header(id_token).unwrap();
    assert_eq!(header.alg, Algorithm::ES256);
    let key = jwks_key(&p, header.kid.as_deref().unwrap()).await;
    let mut v = Validation::new(Algorithm::ES256);
    v.set_issuer(&[ISS]);
    v.set_audience(&[GATEWAY_CLIENT_ID]);
    let id = jsonwebtoken::decode::<Value>(id_token, &key, &v)
        .unwrap()
        .claims;
    assert_eq!(id["iss"], ISS);
    assert_eq!(id["aud"], GATEWAY_CLIENT_ID);
    assert_eq!(id["azp"], GATEWAY_CLIENT_ID);
    assert_eq!(id["nonce"], "n-456");
    assert_eq!(id["sub"], "alice");
    assert_eq!(id["email"], "alice@example.com");
    assert_eq!(id["email_verified"], true);
    assert_eq!(id["name"], "alice");
    assert_eq!(id["preferred_username"], "alice");
    assert_eq!(id["groups"], json!(["admins", "readers", "ops", "billing"]));
    assert!(id["sid"].as_str().is_some());
    assert!(id["auth_time"].as_u64().is_some());

    let access = t["access_token"].as_str().unwrap();
    let header = jsonwebtoken::decode_header(access).unwrap();
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    let mut v = Validation::new(Algorithm::ES256);
    v.set_issuer(&[ISS]);
    v.set_audience(&[ACCESS_TOKEN_AUDIENCE]);
    let at = jsonwebtoken::decode::<Value>(access, &key, &v)
        .unwrap()
        .claims;
    assert_eq!(at["client_id"], GATEWAY_CLIENT_ID);
    assert_eq!(at["sub"], "alice");
    assert_eq!(at["scope"], "openid email profile groups");
    assert!(at["jti"].as_str().is_some());
    assert_eq!(at["groups"], json!(["admins", "readers", "ops", "billing"]));
}

#[tokio::test]
async fn client_secret_post_works_too() {
    let p = provider();
    let q = login(&p, "bob").await;
    let resp = p
        .handle(form_post(
            "/token",
            &[
                ("grant_type", "authorization_code"),
                ("code", &q["code"]),
                ("redirect_uri", CALLBACK),
                ("code_verifier", VERIFIER),
                ("client_id", GATEWAY_CLIENT_ID),
                ("client_secret", p.gateway_client_secret().expose()),
            ],
        ))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn wrong_pkce_verifier_is_invalid_grant() {
    let p = provider();
    let q = login(&p, "alice").await;
    let resp = p
        .handle(token_req(
            &p,
            &[
                ("grant_type", "authorization_code"),
                ("code", &q["code"]),
                ("redirect_uri", CALLBACK),
                (
                    "code_verifier",
                    "a-completely-different-verifier-that-is-long-enough",
                ),
            ],
        ))
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(json_of(resp).await["error"], "invalid_grant");
}

#[tokio::test]
async fn a_code_works_once() {
    let p = provider();
    let q = login(&p, "alice").await;
    let pairs = [
        ("grant_type", "authorization_code"),
        ("code", q["code"].as_str()),
        ("redirect_uri", CALLBACK),
        ("code_verifier", VERIFIER),
    ];
    let first = p.handle(token_req(&p, &pairs)).await;
    assert_eq!(first.status(), StatusCode::OK);
    let refresh = json_of(first).await["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let again = p.handle(token_req(&p, &pairs)).await;
    assert_eq!(again.status(), StatusCode::BAD_REQUEST);
    assert_eq!(json_of(again).await["error"], "invalid_grant");
    // A replayed code revokes what the first redemption produced.
    let resp = p
        .handle(token_req(
            &p,
            &[("grant_type", "refresh_token"), ("refresh_token", &refresh)],
        ))
        .await;
    assert_eq!(json_of(resp).await["error"], "invalid_grant");
}

#[tokio::test]
async fn code_is_bound_to_its_redirect_uri() {
    let p = provider();
    let q = login(&p, "alice").await;
    let resp = p
        .handle(token_req(
            &p,
            &[
                ("grant_type", "authorization_code"),
                ("code", &q["code"]),
                ("redirect_uri", "http://127.0.0.1:4180/other"),
                ("code_verifier", VERIFIER),
            ],
        ))
        .await;
    assert_eq!(json_of(resp).await["error"], "invalid_grant");
}

#[tokio::test]
async fn unregistered_redirect_uri_gets_an_error_page_not_a_redirect() {
    let p = provider();
    for uri in [
        "http://evil.example/oauth2/callback",
        "http://127.0.0.1:4180/oauth2/callback/",
        "http://127.0.0.1:4180/oauth2/callback?x=1",
    ] {
        let resp = p
            .handle(get(&authorize_uri(uri, &challenge(VERIFIER))))
            .await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{uri}");
        assert!(resp.headers().get(header::LOCATION).is_none());
        let page = text(resp).await;
        assert!(page.contains("not registered"), "{page}");
    }
    let resp = p
        .handle(get(
            "/authorize?response_type=code&client_id=nobody&redirect_uri=http://x/",
        ))
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(resp.headers().get(header::LOCATION).is_none());
}

#[tokio::test]
async fn missing_pkce_is_reported_to_the_client() {
    let p = provider();
    let uri = format!(
        "/authorize?response_type=code&client_id={GATEWAY_CLIENT_ID}&redirect_uri={}&state=s1&scope=openid",
        url::form_urlencoded::byte_serialize(CALLBACK.as_bytes()).collect::<String>()
    );
    let resp = p.handle(get(&uri)).await;
    assert_eq!(resp.status(), StatusCode::FOUND);
    let q = query_of(resp.headers()[header::LOCATION].to_str().unwrap());
    assert_eq!(q["error"], "invalid_request");
    assert_eq!(q["state"], "s1");
    assert_eq!(q["iss"], ISS);
}

#[tokio::test]
async fn login_form_escapes_what_it_reflects_and_hides_the_request() {
    let p = provider();
    let resp = p
        .handle(get(&authorize_uri(CALLBACK, &challenge(VERIFIER))))
        .await;
    let page = text(resp).await;
    // The pending request lives server-side; the form carries only its id.
    assert!(!page.contains("st-123"));
    assert!(!page.contains(&challenge(VERIFIER)));
    let rid = hidden_request_id(&page);
    let resp = p
        .handle(form_post(
            "/authorize",
            &[
                ("request_id", &rid),
                ("username", "<script>alert(1)</script>"),
                ("email", "not-an-email\"><script>x</script>"),
                ("action", "login"),
            ],
        ))
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let page = text(resp).await;
    assert!(!page.contains("<script>"), "{page}");
    assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
}

#[tokio::test]
async fn cancel_returns_access_denied() {
    let p = provider();
    let page = text(
        p.handle(get(&authorize_uri(CALLBACK, &challenge(VERIFIER))))
            .await,
    )
    .await;
    let rid = hidden_request_id(&page);
    let resp = p
        .handle(form_post(
            "/authorize",
            &[("request_id", &rid), ("action", "cancel")],
        ))
        .await;
    let q = query_of(resp.headers()[header::LOCATION].to_str().unwrap());
    assert_eq!(q["error"], "access_denied");
    assert_eq!(q["state"], "st-123");
    // The request id is single-use.
    let resp = p
        .handle(form_post(
            "/authorize",
            &[("request_id", &rid), ("username", "x"), ("action", "login")],
        ))
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(resp.headers().get(header::LOCATION).is_none());
}

#[tokio::test]
async fn refresh_tokens_rotate_and_reuse_is_refused() {
    let p = provider();
    let t = code_tokens(&p).await;
    let r1 = t["refresh_token"].as_str().unwrap().to_owned();
    let resp = p
        .handle(token_req(
            &p,
            &[("grant_type", "refresh_token"), ("refresh_token", &r1)],
        ))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let t2 = json_of(resp).await;
    let r2 = t2["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(r1, r2);
    assert!(t2["id_token"].as_str().is_some());
    assert!(t2["access_token"].as_str().is_some());

    let reuse = p
        .handle(token_req(
            &p,
            &[("grant_type", "refresh_token"), ("refresh_token", &r1)],
        ))
        .await;
    assert_eq!(reuse.status(), StatusCode::BAD_REQUEST);
    assert_eq!(json_of(reuse).await["error"], "invalid_grant");
    // Reuse means theft: the family is revoked, including the newest token.
    let after = p
        .handle(token_req(
            &p,
            &[("grant_type", "refresh_token"), ("refresh_token", &r2)],
        ))
        .await;
    assert_eq!(json_of(after).await["error"], "invalid_grant");
}

#[tokio::test]
async fn client_credentials_for_machines() {
    let p = provider();
    let mut ok = form_post("/token", &[("grant_type", "client_credentials")]);
    ok.headers_mut().insert(
        header::AUTHORIZATION,
        basic(SERVICE_CLIENT_ID, p.service_client_secret().expose())
            .parse()
            .unwrap(),
    );
    let resp = p.handle(ok).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let t = json_of(resp).await;
    assert!(t.get("refresh_token").is_none());
    assert!(t.get("id_token").is_none());
    let access = t["access_token"].as_str().unwrap();
    let header = jsonwebtoken::decode_header(access).unwrap();
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    let key = jwks_key(&p, header.kid.as_deref().unwrap()).await;
    let mut v = Validation::new(Algorithm::ES256);
    v.set_issuer(&[ISS]);
    v.set_audience(&[ACCESS_TOKEN_AUDIENCE]);
    let claims = jsonwebtoken::decode::<Value>(access, &key, &v)
        .unwrap()
        .claims;
    assert_eq!(claims["sub"], SERVICE_CLIENT_ID);
    assert_eq!(claims["client_id"], SERVICE_CLIENT_ID);

    let mut wrong = form_post("/token", &[("grant_type", "client_credentials")]);
    wrong.headers_mut().insert(
        header::AUTHORIZATION,
        basic(SERVICE_CLIENT_ID, "not-the-secret").parse().unwrap(),
    );
    let resp = p.handle(wrong).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(resp.headers().contains_key(header::WWW_AUTHENTICATE));
    assert_eq!(json_of(resp).await["error"], "invalid_client");

    // The gateway's browser client may not mint machine tokens.
    let resp = p
        .handle(token_req(&p, &[("grant_type", "client_credentials")]))
        .await;
    assert_eq!(json_of(resp).await["error"], "unauthorized_client");
}

#[tokio::test]
async fn userinfo_needs_a_valid_access_token() {
    let p = provider();
    let t = code_tokens(&p).await;
    let access = t["access_token"].as_str().unwrap();
    let mut req = get("/userinfo");
    req.headers_mut().insert(
        header::AUTHORIZATION,
        format!("Bearer {access}").parse().unwrap(),
    );
    let resp = p.handle(req).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let info = json_of(resp).await;
    assert_eq!(info["sub"], "alice");
    assert_eq!(info["email"], "alice@example.com");
    assert_eq!(
        info["groups"],
        json!(["admins", "readers", "ops", "billing"])
    );

    let resp = p.handle(get("/userinfo")).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(
        resp.headers()[header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );

    // An ID token has the same audience but is not an access token.
    let mut req = get("/userinfo");
    let id_token = t["id_token"].as_str().unwrap();
    req.headers_mut().insert(
        header::AUTHORIZATION,
        format!("Bearer {id_token}").parse().unwrap(),
    );
    let resp = p.handle(req).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(
        resp.headers()[header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .contains("invalid_token")
    );
}

#[tokio::test]
async fn expired_access_token_is_refused() {
    let p = provider().with_access_token_ttl(Duration::from_secs(1));
    let t = code_tokens(&p).await;
    assert_eq!(t["expires_in"], 1);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let mut req = get("/userinfo");
    req.headers_mut().insert(
        header::AUTHORIZATION,
        format!("Bearer {}", t["access_token"].as_str().unwrap())
            .parse()
            .unwrap(),
    );
    assert_eq!(p.handle(req).await.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn end_session_signs_out_and_redirects_only_to_registered_uris() {
    let p = provider();
    let t = code_tokens(&p).await;
    let id_token = t["id_token"].as_str().unwrap();
    let refresh = t["refresh_token"].as_str().unwrap();
    let q = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("id_token_hint", id_token),
            ("post_logout_redirect_uri", "http://127.0.0.1:4180/"),
            ("state", "bye"),
        ])
        .finish();
    let resp = p.handle(get(&format!("/end_session?{q}"))).await;
    assert_eq!(resp.status(), StatusCode::FOUND);
    assert_eq!(
        resp.headers()[header::LOCATION],
        "http://127.0.0.1:4180/?state=bye"
    );
    let resp = p
        .handle(token_req(
            &p,
            &[("grant_type", "refresh_token"), ("refresh_token", refresh)],
        ))
        .await;
    assert_eq!(json_of(resp).await["error"], "invalid_grant");

    let q = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("client_id", GATEWAY_CLIENT_ID),
            ("post_logout_redirect_uri", "http://evil.example/"),
        ])
        .finish();
    let resp = p.handle(get(&format!("/end_session?{q}"))).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers().get(header::LOCATION).is_none());
    assert!(text(resp).await.contains("signed out"));
}

#[tokio::test]
async fn oversized_bodies_are_refused() {
    let p = provider();
    let big = Full::new(Bytes::from(vec![b'a'; MAX_BODY_BYTES + 1]));
    let req = Request::builder()
        .method("POST")
        .uri("/token")
        .body(big)
        .unwrap();
    assert_eq!(
        p.handle_body(req).await.status(),
        StatusCode::PAYLOAD_TOO_LARGE
    );
}

#[test]
fn gateway_client_is_registered_for_the_public_url() {
    let p = DevProvider::new(ISS, "http://127.0.0.1:4180/").unwrap();
    assert_eq!(p.gateway_redirect_uri(), CALLBACK);
    assert_eq!(p.issuer(), ISS);
    assert!(DevProvider::new("not a url", GW).is_err());
    assert!(DevProvider::new("ftp://127.0.0.1", GW).is_err());
}

#[test]
fn secrets_do_not_leak_through_debug() {
    let p = provider();
    let shown = format!("{p:?}");
    assert!(!shown.contains(p.gateway_client_secret().expose().as_str()));
    assert!(!shown.contains(p.service_client_secret().expose().as_str()));
}

#[tokio::test]
async fn id_token_faults_break_exactly_what_they_name() {
    assert_eq!(provider().id_token_fault(), None, "no fault by default");
    for fault in [
        IdTokenFault::BadSignature,
        IdTokenFault::WrongIssuer,
        IdTokenFault::WrongAudience,
        IdTokenFault::Expired,
        IdTokenFault::IssuedInFuture,
        IdTokenFault::AlgNone,
        IdTokenFault::WrongNonce,
        IdTokenFault::UnknownKid,
        IdTokenFault::HmacWithPublicKey,
        IdTokenFault::OtherSubject,
    ] {
        let p = provider().with_id_token_fault(fault);
        let t = code_tokens(&p).await;
        let id_token = t["id_token"].as_str().unwrap();
        let key = jwks_key(&p, &p.key.kid).await;
        let mut v = Validation::new(Algorithm::ES256);
        v.set_issuer(&[ISS]);
        v.set_audience(&[GATEWAY_CLIENT_ID]);
        let verdict = jsonwebtoken::decode::<Value>(id_token, &key, &v);
        // The access token is untouched.
        assert!(
            p.verify_access_token(t["access_token"].as_str().unwrap())
                .is_some(),
            "{fault:?}"
        );
        let (_, payload) = id_token.split_once('.').unwrap();
        let payload = payload.split('.').next().unwrap();
        let claims: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        let now = now_secs();
        match fault {
            IdTokenFault::WrongNonce => {
                let claims = verdict.unwrap().claims;
                assert_ne!(claims["nonce"], "n-456");
            }
            IdTokenFault::OtherSubject => {
                let claims = verdict.unwrap().claims;
                assert!(claims["sub"].is_string() && claims["sub"] != "alice");
            }
            IdTokenFault::Expired => {
                assert!(claims["exp"].as_u64().unwrap() + 3000 < now, "{claims}");
                assert!(verdict.is_err());
            }
            IdTokenFault::IssuedInFuture => {
                assert!(claims["iat"].as_u64().unwrap() > now + 3000, "{claims}");
                // jsonwebtoken does not check iat itself: the signature and exp are fine.
                assert!(verdict.is_ok());
            }
            IdTokenFault::AlgNone => {
                assert!(id_token.ends_with('.'), "{id_token}");
                assert!(verdict.is_err());
            }
            IdTokenFault::UnknownKid => {
                let header = jsonwebtoken::decode_header(id_token).unwrap();
                assert_ne!(header.kid.as_deref(), Some(p.key.kid.as_str()));
                assert!(verdict.is_err());
            }
            IdTokenFault::HmacWithPublicKey => {
                assert!(verdict.is_err());
                let mut hs = Validation::new(Algorithm::HS256);
                hs.set_issuer(&[ISS]);
                hs.set_audience(&[GATEWAY_CLIENT_ID]);
                let secret = DecodingKey::from_secret(&p.key.public_point);
                assert!(jsonwebtoken::decode::<Value>(id_token, &secret, &hs).is_ok());
            }
            _ => assert!(verdict.is_err(), "{fault:?}"),
        }
    }
}

fn bearer_get(uri: &str, token: &str) -> Request<Bytes> {
    let mut req = get(uri);
    req.headers_mut().insert(
        header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    req
}

async fn password_grant(
    p: &DevProvider,
    user: &str,
    password: &str,
    scope: &str,
) -> Response<Full<Bytes>> {
    let mut pairs = vec![
        ("grant_type", "password"),
        ("username", user),
        ("password", password),
    ];
    if !scope.is_empty() {
        pairs.push(("scope", scope));
    }
    p.handle(token_req(p, &pairs)).await
}

#[tokio::test]
async fn password_grant_gives_the_code_flow_tokens_without_refresh() {
    let p = provider();
    assert_eq!(p.password_grant_requests(), 0);
    let resp = password_grant(&p, "alice", DEMO_PASSWORD, "openid email profile groups").await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[header::CACHE_CONTROL], "no-store");
    let t = json_of(resp).await;
    assert_eq!(p.password_grant_requests(), 1);
    assert_eq!(t["token_type"], "Bearer");
    assert_eq!(t["scope"], "openid email profile groups");
    assert!(t.get("refresh_token").is_none(), "{t}");

    let access = t["access_token"].as_str().unwrap();
    let header = jsonwebtoken::decode_header(access).unwrap();
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    let key = jwks_key(&p, header.kid.as_deref().unwrap()).await;
    let mut v = Validation::new(Algorithm::ES256);
    v.set_issuer(&[ISS]);
    v.set_audience(&[ACCESS_TOKEN_AUDIENCE]);
    let claims = jsonwebtoken::decode::<Value>(access, &key, &v)
        .unwrap()
        .claims;
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["client_id"], GATEWAY_CLIENT_ID);
    assert_eq!(claims["groups"], json!(["admins", "developers"]));

    let id = jsonwebtoken::decode::<Value>(t["id_token"].as_str().unwrap(), &key, &{
        let mut v = Validation::new(Algorithm::ES256);
        v.set_issuer(&[ISS]);
        v.set_audience(&[GATEWAY_CLIENT_ID]);
        v
    })
    .unwrap()
    .claims;
    assert_eq!(id["sub"], "alice");
    assert_eq!(id["email"], "alice@example.com");
    assert_eq!(id["preferred_username"], "alice");
    assert_eq!(id["groups"], json!(["admins", "developers"]));

    // Userinfo knows the password login as it knows a browser one.
    let resp = p.handle(bearer_get("/userinfo", access)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(json_of(resp).await["email"], "alice@example.com");
}

#[tokio::test]
async fn password_grant_defaults_to_openid_and_knows_every_demo_user() {
    let p = provider();
    for user in PASSWORD_USERS {
        let resp = password_grant(&p, user.name, DEMO_PASSWORD, "").await;
        assert_eq!(resp.status(), StatusCode::OK, "{}", user.name);
        let t = json_of(resp).await;
        assert_eq!(t["scope"], "openid");
        assert!(t["id_token"].is_string());
    }
    assert_eq!(p.password_grant_requests(), PASSWORD_USERS.len() as u64);
}

#[tokio::test]
async fn password_grant_refuses_wrong_passwords_unknown_users_and_other_clients() {
    let p = provider();
    for (user, password) in [
        ("alice", "wrong"),
        ("alice", ""),
        ("alice", "Password"),
        ("nobody", DEMO_PASSWORD),
    ] {
        let resp = password_grant(&p, user, password, "openid").await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{user}:{password}");
        let body = json_of(resp).await;
        let expected = if password.is_empty() {
            "invalid_request"
        } else {
            "invalid_grant"
        };
        assert_eq!(body["error"], expected, "{user}:{password}: {body}");
        assert!(body.get("access_token").is_none());
    }
    assert_eq!(p.password_grant_requests(), 4);

    // The machine client may not use it.
    let mut req = form_post(
        "/token",
        &[
            ("grant_type", "password"),
            ("username", "alice"),
            ("password", DEMO_PASSWORD),
        ],
    );
    req.headers_mut().insert(
        header::AUTHORIZATION,
        basic(SERVICE_CLIENT_ID, p.service_client_secret().expose())
            .parse()
            .unwrap(),
    );
    assert_eq!(
        json_of(p.handle(req).await).await["error"],
        "unauthorized_client"
    );

    // Nor anyone without the client secret; the attempt still counts.
    let mut req = form_post(
        "/token",
        &[
            ("grant_type", "password"),
            ("username", "alice"),
            ("password", DEMO_PASSWORD),
        ],
    );
    req.headers_mut().insert(
        header::AUTHORIZATION,
        basic(GATEWAY_CLIENT_ID, "not-the-secret").parse().unwrap(),
    );
    assert_eq!(p.handle(req).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(p.password_grant_requests(), 6);
}

#[test]
fn password_logins_are_pruned_with_their_tokens() {
    let mut state = State::default();
    let login = |expires| Login {
        sub: "alice".into(),
        name: "alice".into(),
        email: "alice@example.com".into(),
        groups: Vec::new(),
        auth_time: 1,
        expires,
    };
    state.logins.insert("browser".into(), login(None));
    state.logins.insert("old".into(), login(Some(100)));
    state.logins.insert("fresh".into(), login(Some(300)));
    state.prune(200);
    let mut left: Vec<_> = state.logins.keys().cloned().collect();
    left.sort();
    assert_eq!(left, ["browser", "fresh"]);
}

async fn introspect(p: &DevProvider, id: &str, secret: &str, token: &str) -> Response<Full<Bytes>> {
    let mut req = form_post("/introspect", &[("token", token)]);
    req.headers_mut()
        .insert(header::AUTHORIZATION, basic(id, secret).parse().unwrap());
    p.handle(req).await
}

#[tokio::test]
async fn introspection_answers_for_its_own_access_tokens() {
    let p = provider();
    let secret = p.gateway_client_secret().expose().to_owned();
    let code = code_tokens(&p).await;
    let access = code["access_token"].as_str().unwrap();
    let resp = introspect(&p, GATEWAY_CLIENT_ID, &secret, access).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let info = json_of(resp).await;
    assert_eq!(info["active"], true);
    assert_eq!(info["sub"], "alice");
    assert_eq!(info["iss"], ISS);
    assert_eq!(info["client_id"], GATEWAY_CLIENT_ID);
    assert_eq!(info["scope"], "openid email profile groups");
    assert!(info["exp"].as_u64().unwrap() > now_secs());

    // A machine token, asked by the machine client itself.
    let mut cc = form_post("/token", &[("grant_type", "client_credentials")]);
    let service_secret = p.service_client_secret().expose().to_owned();
    cc.headers_mut().insert(
        header::AUTHORIZATION,
        basic(SERVICE_CLIENT_ID, &service_secret).parse().unwrap(),
    );
    let machine = json_of(p.handle(cc).await).await;
    let machine = machine["access_token"].as_str().unwrap();
    let info = json_of(introspect(&p, SERVICE_CLIENT_ID, &service_secret, machine).await).await;
    assert_eq!(info["active"], true);
    assert_eq!(info["sub"], SERVICE_CLIENT_ID);
    assert_eq!(info["scope"], "api");

    // Not access tokens, or not ours: inactive.
    let id_token = code["id_token"].as_str().unwrap();
    let refresh = code["refresh_token"].as_str().unwrap();
    for token in [id_token, refresh, "garbage", "a.b.c"] {
        let info = json_of(introspect(&p, GATEWAY_CLIENT_ID, &secret, token).await).await;
        assert_eq!(info, json!({"active": false}), "{token}");
    }

    // Client authentication is required.
    let resp = introspect(&p, GATEWAY_CLIENT_ID, "wrong", access).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp = p
        .handle(form_post("/introspect", &[("token", access)]))
        .await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        p.handle(get("/introspect")).await.status(),
        StatusCode::METHOD_NOT_ALLOWED
    );

    // After sign-out the user's access token is no longer active.
    let resp = p
        .handle(get(&format!("/end_session?id_token_hint={id_token}")))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let info = json_of(introspect(&p, GATEWAY_CLIENT_ID, &secret, access).await).await;
    assert_eq!(info, json!({"active": false}));
    // Every POST counted (the GET was refused before reaching the endpoint).
    assert_eq!(p.introspection_requests(), 9);
}
