//! Self-tests of the machine-caller harness: the in-process `TestIssuer`, the real oidc-provider
//! (`OidcProvider`) and the development provider's password grant. If one of these fails, the
//! bearer tests built on them prove nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use gatehouse::demo::provider::{self, DEMO_PASSWORD, DevProvider, GATEWAY_CLIENT_ID};
use http_body_util::Full;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};

use crate::support::issuer::{self, Alg, DEFAULT_AUDIENCE, Outage, TestIssuer};
use crate::support::oidc::{self, OidcProvider};
use crate::support::{Reply, client, get, send};

fn segment_json(token: &str, index: usize) -> Value {
    let part = token.split('.').nth(index).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

async fn jwks_of(url: &str) -> JwkSet {
    let reply = get(url).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    serde_json::from_slice(&reply.body).unwrap()
}

fn validation(alg: Algorithm, iss: &str, aud: &str) -> Validation {
    let mut v = Validation::new(alg);
    v.set_issuer(&[iss]);
    v.set_audience(&[aud]);
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    v.leeway = 0;
    v
}

fn decode_with(token: &str, jwk: &Jwk, v: &Validation) -> jsonwebtoken::errors::Result<Value> {
    let key = DecodingKey::from_jwk(jwk).unwrap();
    jsonwebtoken::decode::<Value>(token, &key, v).map(|d| d.claims)
}

async fn post_form(url: &str, basic: Option<(&str, &str)>, pairs: &[(&str, &str)]) -> Reply {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish();
    let mut req =
        http::Request::post(url).header("content-type", "application/x-www-form-urlencoded");
    if let Some((id, secret)) = basic {
        req = req.header(
            "authorization",
            format!("Basic {}", STANDARD.encode(format!("{id}:{secret}"))),
        );
    }
    send(req.body(Full::new(Bytes::from(body))).unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minted_tokens_verify_against_the_served_jwks() {
    let iss = TestIssuer::start().await;
    let disco = get(&iss.discovery_url()).await.json();
    assert_eq!(disco["issuer"], iss.issuer());
    assert_eq!(disco["jwks_uri"], iss.jwks_uri());
    assert_eq!(
        disco["introspection_endpoint"],
        iss.introspection_endpoint()
    );
    assert_eq!(disco["token_endpoint"], iss.token_endpoint());
    assert_eq!(iss.discovery_fetches(), 1);

    let raw = get(&iss.jwks_uri()).await.json();
    for key in raw["keys"].as_array().unwrap() {
        for private in ["d", "p", "q", "dp", "dq", "qi"] {
            assert!(
                key.get(private).is_none(),
                "private member {private} served"
            );
        }
    }
    let set = jwks_of(&iss.jwks_uri()).await;
    assert_eq!(set.keys.len(), 3);
    for (alg, jalg, kid) in [
        (Alg::RS256, Algorithm::RS256, iss.rsa_kid()),
        (Alg::PS256, Algorithm::PS256, iss.rsa_kid()),
        (Alg::ES256, Algorithm::ES256, iss.ec_kid()),
        (Alg::EdDSA, Algorithm::EdDSA, iss.ed_kid()),
    ] {
        let token = iss
            .mint(DEFAULT_AUDIENCE)
            .alg(alg)
            .sub("svc-1")
            .scope("orders:read orders:write")
            .sign();
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.alg, jalg);
        assert_eq!(header.kid.as_deref(), Some(kid.as_str()));
        assert_eq!(header.typ.as_deref(), Some("at+jwt"));
        let jwk = set.find(&kid).unwrap();
        let claims = decode_with(
            &token,
            jwk,
            &validation(jalg, iss.issuer(), DEFAULT_AUDIENCE),
        )
        .unwrap_or_else(|e| panic!("{alg:?}: {e}"));
        assert_eq!(claims["sub"], "svc-1");
        assert_eq!(claims["scope"], "orders:read orders:write");
        assert_eq!(claims["client_id"], "test-client");
        let exp = claims["exp"].as_i64().unwrap();
        let iat = claims["iat"].as_i64().unwrap();
        assert_eq!(exp - iat, issuer::DEFAULT_TTL);

        // A flipped bit breaks it; the wrong audience too.
        let bad = iss
            .mint(DEFAULT_AUDIENCE)
            .alg(alg)
            .tamper_signature()
            .sign();
        assert!(decode_with(&bad, jwk, &validation(jalg, iss.issuer(), DEFAULT_AUDIENCE)).is_err());
        assert!(decode_with(&token, jwk, &validation(jalg, iss.issuer(), "api://other")).is_err());
    }
    assert_eq!(iss.jwks_fetches(), 2);

    // `aud` as an array, expired, not yet valid, claims removed.
    let rsa = set.find(&iss.rsa_kid()).unwrap();
    let v = validation(Algorithm::RS256, iss.issuer(), "api://b");
    let both = iss.mint("x").aud(json!(["api://a", "api://b"])).sign();
    assert!(decode_with(&both, rsa, &v).is_ok());
    let expired = iss.mint("api://b").exp_in(-10).sign();
    assert!(decode_with(&expired, rsa, &v).is_err());
    let early = iss.mint("api://b").nbf_in(120).sign();
    let mut v_nbf = v.clone();
    v_nbf.validate_nbf = true;
    assert!(decode_with(&early, rsa, &v_nbf).is_err());
    let no_exp = iss.mint("api://b").remove_claim("exp").sign();
    assert!(segment_json(&no_exp, 1).get("exp").is_none());
    assert!(decode_with(&no_exp, rsa, &v).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_tokens_are_what_they_claim_to_be() {
    let iss = TestIssuer::start().await;
    let set = jwks_of(&iss.jwks_uri()).await;
    let rsa = set.find(&iss.rsa_kid()).unwrap();
    let v = validation(Algorithm::RS256, iss.issuer(), DEFAULT_AUDIENCE);

    // alg none: an empty signature segment.
    let none = iss.mint(DEFAULT_AUDIENCE).alg_none().sign();
    assert!(none.ends_with('.'), "{none}");
    assert_eq!(segment_json(&none, 0)["alg"], "none");
    assert!(decode_with(&none, rsa, &v).is_err());

    // Algorithm confusion: valid HS256 under the RSA public key's PEM, and the RSA kid.
    let pem = iss.rsa_public_pem();
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
    let confused = iss
        .mint(DEFAULT_AUDIENCE)
        .hs256_with_rsa_public_pem()
        .sign();
    let header = segment_json(&confused, 0);
    assert_eq!(header["alg"], "HS256");
    assert_eq!(header["kid"], iss.rsa_kid());
    let hmac = validation(Algorithm::HS256, iss.issuer(), DEFAULT_AUDIENCE);
    jsonwebtoken::decode::<Value>(&confused, &DecodingKey::from_secret(pem.as_bytes()), &hmac)
        .expect("the HMAC is right, so only an alg allow-list stops it");
    assert!(decode_with(&confused, rsa, &v).is_err());
    // A plain HS256 token for an issuer with a shared secret.
    let shared = iss.mint(DEFAULT_AUDIENCE).hs256(b"shared-secret").sign();
    jsonwebtoken::decode::<Value>(&shared, &DecodingKey::from_secret(b"shared-secret"), &hmac)
        .unwrap();

    // CVE-2022-21449: ES256 with r = s = 0.
    let zero = iss.mint(DEFAULT_AUDIENCE).ecdsa_zero_signature().sign();
    let sig = URL_SAFE_NO_PAD
        .decode(zero.rsplit('.').next().unwrap())
        .unwrap();
    assert_eq!(sig, vec![0u8; 64]);
    assert_eq!(segment_json(&zero, 0)["kid"], iss.ec_kid());
    let ec = set.find(&iss.ec_kid()).unwrap();
    let v_ec = validation(Algorithm::ES256, iss.issuer(), DEFAULT_AUDIENCE);
    assert!(decode_with(&zero, ec, &v_ec).is_err());

    // jku: the token verifies only with the trap's key, which only the trap serves.
    let jku = iss.mint(DEFAULT_AUDIENCE).jku_attack().sign();
    let header = segment_json(&jku, 0);
    let jku_url = header["jku"].as_str().unwrap();
    assert!(jku_url.starts_with(iss.trap_url()));
    assert_ne!(iss.trap_url(), iss.issuer());
    let kid = header["kid"].as_str().unwrap();
    assert!(
        set.find(kid).is_none(),
        "the attacker's kid is not the issuer's"
    );
    assert!(iss.trap_hits().is_empty());
    let trap_set = jwks_of(jku_url).await;
    assert_eq!(iss.trap_hits(), ["/jwks.json"], "the trap counts fetches");
    assert!(decode_with(&jku, trap_set.find(kid).unwrap(), &v).is_ok());
    let x5u = iss.mint(DEFAULT_AUDIENCE).x5u_attack().sign();
    assert!(
        segment_json(&x5u, 0)["x5u"]
            .as_str()
            .unwrap()
            .starts_with(iss.trap_url())
    );

    // Embedded jwk: verifies under the key it carries, which the issuer never published.
    let embedded = iss.mint(DEFAULT_AUDIENCE).embedded_jwk().sign();
    let header = jsonwebtoken::decode_header(&embedded).unwrap();
    let carried = header.jwk.unwrap();
    assert!(set.find(header.kid.as_deref().unwrap()).is_none());
    assert!(decode_with(&embedded, &carried, &v).is_ok());

    // Unknown kid, crit, extra members.
    let stranger = iss.mint(DEFAULT_AUDIENCE).unpublished_key().sign();
    let kid = segment_json(&stranger, 0)["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(!iss.kids().contains(&kid));
    let crit = iss.mint(DEFAULT_AUDIENCE).crit("x-must-understand").sign();
    assert_eq!(segment_json(&crit, 0)["crit"], json!(["x-must-understand"]));
    assert_eq!(segment_json(&crit, 0)["x-must-understand"], "1");
    assert!(
        decode_with(&crit, rsa, &v).is_ok(),
        "jsonwebtoken ignores crit: only the gateway's own check stops this token"
    );
    let typed = iss.mint(DEFAULT_AUDIENCE).typ("JWT").sign();
    assert_eq!(segment_json(&typed, 0)["typ"], "JWT");

    // Duplicate members: the bytes are the test's, the signature is valid over them.
    let m = iss.mint(DEFAULT_AUDIENCE);
    let claims = m.claims_json().replacen('{', "{\"sub\":\"admin\",", 1);
    let dup = m.raw_claims(&claims).sign();
    let text = String::from_utf8(
        URL_SAFE_NO_PAD
            .decode(dup.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(text.matches("\"sub\"").count(), 2, "{text}");
    // What jsonwebtoken 10 alone does with duplicates (the gateway must refuse them all, rule
    // 32): a duplicate registered claim or header member fails its parsing, a duplicate
    // private claim such as `scope` passes (last one wins in a `Value`).
    assert!(decode_with(&dup, rsa, &v).is_err());
    let m = iss.mint(DEFAULT_AUDIENCE);
    let claims = m.claims_json().replacen('{', "{\"scope\":\"admin\",", 1);
    let dup2 = m.raw_claims(&claims).sign();
    assert_eq!(decode_with(&dup2, rsa, &v).unwrap()["scope"], "orders:read");
    let m = iss.mint(DEFAULT_AUDIENCE);
    let h = m.header_json().replacen('{', "{\"kid\":\"zzz\",", 1);
    let dup3 = m.raw_header(&h).sign();
    assert!(decode_with(&dup3, rsa, &v).is_err());
    let m = iss.mint(DEFAULT_AUDIENCE);
    let header = m.header_json().replacen('{', "{\"alg\":\"none\",", 1);
    let dup_header = m.raw_header(&header).sign();
    assert!(dup_header.split('.').nth(2).is_some_and(|s| !s.is_empty()));

    // Raw segments for shapes no builder would produce.
    let (h, c, s) = iss.mint(DEFAULT_AUDIENCE).segments();
    let four = format!("{h}.{c}.{s}.{s}");
    assert_eq!(four.split('.').count(), 4);
    assert_eq!(issuer::compact("{}", "{}", b""), "e30.e30.");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_replaces_the_rsa_kid_and_fetches_are_counted() {
    let iss = TestIssuer::start().await;
    let before = iss.kids();
    let old_token = iss.mint(DEFAULT_AUDIENCE).sign();
    let first = jwks_of(&iss.jwks_uri()).await;
    assert!(first.find(&before[0]).is_some());
    assert_eq!(iss.jwks_fetches(), 1);

    let new_kid = iss.rotate();
    assert_ne!(new_kid, before[0]);
    assert_eq!(iss.rsa_kid(), new_kid);
    assert_eq!(iss.kids()[1..], before[1..], "EC and Ed25519 keys stay");
    let new_token = iss.mint(DEFAULT_AUDIENCE).sign();
    assert_eq!(segment_json(&new_token, 0)["kid"], new_kid);
    // A verifier holding the old set does not know the new kid …
    assert!(first.find(&new_kid).is_none());
    // … until it refetches: then the new key is there and the old one is gone.
    let second = jwks_of(&iss.jwks_uri()).await;
    assert_eq!(iss.jwks_fetches(), 2);
    let v = validation(Algorithm::RS256, iss.issuer(), DEFAULT_AUDIENCE);
    assert!(decode_with(&new_token, second.find(&new_kid).unwrap(), &v).is_ok());
    assert!(second.find(&before[0]).is_none());
    assert!(decode_with(&old_token, first.find(&before[0]).unwrap(), &v).is_ok());

    // Outages count as fetches too.
    iss.set_jwks_outage(Outage::Unavailable);
    assert_eq!(get(&iss.jwks_uri()).await.status, 503);
    iss.set_jwks_outage(Outage::Garbage);
    let garbage = get(&iss.jwks_uri()).await;
    assert_eq!(garbage.status, 200);
    assert!(serde_json::from_slice::<Value>(&garbage.body).is_err());
    iss.set_jwks_outage(Outage::Up);
    assert_eq!(get(&iss.jwks_uri()).await.status, 200);
    assert_eq!(iss.jwks_fetches(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspection_answers_checks_the_client_and_can_go_down() {
    let iss = TestIssuer::start().await;
    let (id, secret) = iss.client();
    let endpoint = iss.introspection_endpoint();
    let ask = |token: String, auth: Option<(&'static str, &'static str)>| {
        let endpoint = endpoint.clone();
        async move { post_form(&endpoint, auth, &[("token", &token)]).await }
    };

    let active = iss.opaque("svc-orders", "orders:read");
    let reply = ask(active.clone(), Some((id, secret))).await;
    assert_eq!(reply.status, 200);
    let body = reply.json();
    assert_eq!(body["active"], true);
    assert_eq!(body["sub"], "svc-orders");
    assert_eq!(body["scope"], "orders:read");
    assert_eq!(body["client_id"], "test-client");
    assert!(body["exp"].as_i64().is_some());

    assert_eq!(
        ask("unknown".into(), Some((id, secret))).await.json(),
        json!({"active": false})
    );
    let expired = iss.opaque_with(json!({"active": true, "sub": "x", "exp": 1}));
    assert_eq!(
        ask(expired, Some((id, secret))).await.json(),
        json!({"active": false})
    );
    let custom = iss.opaque_with(json!({"active": true, "sub": "y", "scope": "a b"}));
    assert_eq!(ask(custom, Some((id, secret))).await.json()["scope"], "a b");
    iss.revoke(&active);
    assert_eq!(
        ask(active.clone(), Some((id, secret))).await.json(),
        json!({"active": false})
    );

    let wrong = ask(active.clone(), Some((id, "wrong"))).await;
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.json()["error"], "invalid_client");
    assert_eq!(ask(active.clone(), None).await.status, 401);
    assert_eq!(iss.introspection_calls(), 7);
    let log = iss.introspection_log();
    assert_eq!(log.len(), 7);
    assert!(log[0].authenticated);
    assert_eq!(log[0].client_id.as_deref(), Some("gatehouse"));
    assert_eq!(log[0].token.as_deref(), Some(active.as_str()));
    assert!(!log[5].authenticated);
    assert_eq!(log[6].client_id, None);

    iss.set_introspection_outage(Outage::Unavailable);
    assert_eq!(ask(active.clone(), Some((id, secret))).await.status, 503);

    // Hold then drop: no answer at all, the connection closes after the hold.
    iss.set_introspection_outage(Outage::HoldThenDrop(Duration::from_millis(300)));
    let started = Instant::now();
    let req = http::Request::post(iss.introspection_endpoint())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from_static(b"token=x")))
        .unwrap();
    let result = tokio::time::timeout(Duration::from_secs(10), client().request(req))
        .await
        .expect("the hold is bounded");
    assert!(result.is_err(), "no HTTP answer expected: {result:?}");
    assert!(started.elapsed() >= Duration::from_millis(300));

    iss.set_introspection_outage(Outage::Up);
    let token = iss.opaque("svc", "orders:write");
    assert_eq!(ask(token, Some((id, secret))).await.json()["active"], true);
    assert_eq!(iss.introspection_calls(), 10);

    // The token endpoint: client_credentials → an RS256 JWT for the resource asked.
    let reply = post_form(
        &iss.token_endpoint(),
        Some((id, secret)),
        &[
            ("grant_type", "client_credentials"),
            ("resource", "api://x"),
            ("scope", "s"),
        ],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let at = reply.json()["access_token"].as_str().unwrap().to_owned();
    let set = jwks_of(&iss.jwks_uri()).await;
    let claims = decode_with(
        &at,
        set.find(&iss.rsa_kid()).unwrap(),
        &validation(Algorithm::RS256, iss.issuer(), "api://x"),
    )
    .unwrap();
    assert_eq!(claims["scope"], "s");
    assert_eq!(iss.token_requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_provider_gives_a_jwt_for_a_resource_and_an_opaque_token_without() {
    if !oidc::node_available("oidc_provider_gives_a_jwt_for_a_resource_and_an_opaque_token_without")
    {
        return;
    }
    let op = tokio::task::spawn_blocking(|| OidcProvider::start(&[]))
        .await
        .unwrap();
    let disco = get(&format!("{}/.well-known/openid-configuration", op.issuer()))
        .await
        .json();
    assert_eq!(disco["introspection_endpoint"], op.introspection_endpoint());
    assert_eq!(disco["jwks_uri"], op.jwks_uri());

    let jwt = op
        .client_credentials_token(Some(oidc::API_RESOURCE), "orders:read")
        .await;
    let header = jsonwebtoken::decode_header(&jwt).unwrap();
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    assert_eq!(header.alg, Algorithm::RS256);
    let set = jwks_of(&op.jwks_uri()).await;
    let jwk = set.find(header.kid.as_deref().unwrap()).unwrap();
    let claims = decode_with(
        &jwt,
        jwk,
        &validation(Algorithm::RS256, op.issuer(), oidc::API_RESOURCE),
    )
    .unwrap();
    assert_eq!(claims["aud"], "api://orders");
    assert_eq!(claims["client_id"], oidc::SERVICE_CLIENT_ID);
    assert_eq!(claims["sub"], oidc::SERVICE_CLIENT_ID);
    assert_eq!(claims["scope"], "orders:read");

    let opaque = op
        .client_credentials_token(None, "orders:read orders:write")
        .await;
    assert!(!opaque.contains('.'), "opaque, not a JWT: {opaque}");
    let info = op.introspect(&opaque).await;
    assert_eq!(info["active"], true, "{info}");
    assert_eq!(info["client_id"], oidc::SERVICE_CLIENT_ID);
    assert_eq!(info["scope"], "orders:read orders:write");
    assert_eq!(op.introspect("not-a-token").await, json!({"active": false}));

    let (status, body) = op
        .client_credentials(Some("api://unknown"), "orders:read")
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_target"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_provider_password_grant_over_http() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}", listener.local_addr().unwrap());
    let dev = Arc::new(DevProvider::new(&issuer, "http://127.0.0.1:9").unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(provider::serve(dev.clone(), listener, async {
        let _ = stopped.await;
    }));
    let disco = get(&format!("{issuer}/.well-known/openid-configuration"))
        .await
        .json();
    assert!(
        disco["grant_types_supported"]
            .as_array()
            .unwrap()
            .contains(&json!("password"))
    );
    let secret = dev.gateway_client_secret().expose().to_owned();
    let token_url = format!("{issuer}/token");
    let reply = post_form(
        &token_url,
        Some((GATEWAY_CLIENT_ID, &secret)),
        &[
            ("grant_type", "password"),
            ("username", "bob"),
            ("password", DEMO_PASSWORD),
            ("scope", "openid email groups"),
        ],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let t = reply.json();
    assert!(t["id_token"].is_string());
    assert!(t.get("refresh_token").is_none());
    let access = t["access_token"].as_str().unwrap().to_owned();
    assert_eq!(segment_json(&access, 1)["sub"], "bob");
    assert_eq!(segment_json(&access, 1)["groups"], json!(["developers"]));

    let wrong = post_form(
        &token_url,
        Some((GATEWAY_CLIENT_ID, &secret)),
        &[
            ("grant_type", "password"),
            ("username", "bob"),
            ("password", "nope"),
        ],
    )
    .await;
    assert_eq!(wrong.status, 400);
    assert_eq!(wrong.json()["error"], "invalid_grant");
    assert_eq!(dev.password_grant_requests(), 2);

    // Its introspection endpoint knows the token.
    let info = post_form(
        disco["introspection_endpoint"].as_str().unwrap(),
        Some((GATEWAY_CLIENT_ID, &secret)),
        &[("token", &access)],
    )
    .await
    .json();
    assert_eq!(info["active"], true);
    assert_eq!(info["sub"], "bob");
    assert_eq!(dev.introspection_requests(), 1);
    drop(stop);
}
