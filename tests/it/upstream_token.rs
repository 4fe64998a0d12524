//! The gateway as an OAuth client toward a protected upstream (`[upstreams.client]`): it gets a
//! token with the client credentials grant and sends it as `Authorization: Bearer`. The
//! protected upstream here is a second, real Gatehouse in bearer mode validating that token
//! against the issuer's JWKS, in front of a recording app — so "accepted" means a real check.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::support::issuer::{self, Outage, TestIssuer};
use crate::support::upstream::Upstream;
use crate::support::{Gateway, Reply, TempDir, send};

/// The protected API (a bearer-mode Gatehouse over `app`) and the gateway in front of it.
struct Chain {
    app: Upstream,
    _api: Gateway,
    front: Gateway,
}

/// A chain whose API accepts the default audience and whose gateway asks for it with
/// `client_secret_basic`.
async fn chain(issuer: &TestIssuer) -> Chain {
    chain_logging(issuer, "info").await
}

/// The same, with the gateway in front logging at `level` (`RUST_LOG`).
async fn chain_logging(issuer: &TestIssuer, level: &str) -> Chain {
    let (id, secret) = issuer.client();
    chain_full(
        issuer,
        issuer::DEFAULT_AUDIENCE,
        &format!(
            "client_id = \"{id}\"\nclient_secret = \"{secret}\"\nresource = \"{aud}\"\n",
            aud = issuer::DEFAULT_AUDIENCE
        ),
        level,
    )
    .await
}

/// A chain whose API accepts tokens for `audience`, and whose gateway's `[upstreams.client]`
/// gets `client` lines (identity, authentication, audience/resource) besides its token
/// endpoint and scope.
async fn chain_with(issuer: &TestIssuer, audience: &str, client: &str) -> Chain {
    chain_full(issuer, audience, client, "info").await
}

async fn chain_full(issuer: &TestIssuer, audience: &str, client: &str, level: &str) -> Chain {
    let app = Upstream::start().await;
    let api = Gateway::start(&format!(
        "[[bearer.issuers]]\nissuer = \"{iss}\"\njwks_uri = \"{jwks}\"\naudiences = [\"{audience}\"]\n\
         [authorization]\ndefault_policy = \"authenticated\"\n\
         [[upstreams]]\nurl = \"{app}\"\n",
        iss = issuer.issuer(),
        jwks = issuer.jwks_uri(),
        app = app.url(),
    ));
    let front = Gateway::start_with_env(
        &format!(
            "[[upstreams]]\nurl = \"{api}\"\n[upstreams.client]\ntoken_endpoint = \"{token}\"\n\
             scopes = [\"orders:read\"]\n{client}",
            api = api.url(""),
            token = issuer.token_endpoint(),
        ),
        &[("RUST_LOG", level)],
    );
    Chain {
        app,
        _api: api,
        front,
    }
}

async fn call(url: &str) -> Reply {
    send(
        Request::get(url)
            .header("authorization", "Bearer the-callers-own-token")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await
}

#[tokio::test]
async fn two_hundred_concurrent_requests_share_one_token_request() {
    let issuer = TestIssuer::start().await;
    // Debug logging: the level an operator turns on to see the token requests.
    let c = chain_logging(&issuer, "debug").await;
    let url = c.front.url("/orders");
    let replies = futures_util::future::join_all((0..200).map(|_| call(&url))).await;
    assert!(
        replies.iter().all(|r| r.status == 200),
        "{:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert_eq!(issuer.token_requests(), 1);
    // The protected API saw the gateway's client, not the caller's token.
    let seen = c.app.last();
    assert_eq!(
        seen.header("x-forwarded-client-id"),
        Some(issuer::CLIENT_ID)
    );
    // Issue 13 point 4: no token and no secret in the log, neither the caller's nor the
    // gateway's own. The app behind the API received the gateway's token as sent.
    let sent = seen.header("authorization").unwrap();
    let own_token = sent.strip_prefix("Bearer ").unwrap();
    assert!(own_token.starts_with("ey"), "the gateway's JWT: {sent}");
    let (id, secret) = issuer.client();
    let credentials = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("{id}:{secret}"),
    );
    let logs = c
        .front
        .wait_for_log("client credentials token obtained")
        .await;
    assert!(
        logs.contains("client credentials token obtained"),
        "debug logging is not on:\n{logs}"
    );
    c.front.assert_never_logged(&[
        ("the caller's token", "the-callers-own-token"),
        ("the gateway's own access token", own_token),
        ("the client secret", secret),
        ("the client's Basic credentials", &credentials),
    ]);
}

#[tokio::test]
async fn across_several_token_lifetimes_one_renewal_each_and_no_failed_request() {
    let issuer = TestIssuer::start().await;
    issuer.set_token_ttl(2);
    let c = chain(&issuer).await;
    let url = c.front.url("/orders");
    let started = Instant::now();
    let mut served = 0;
    while started.elapsed() < Duration::from_secs(7) {
        let r = call(&url).await;
        assert_eq!(r.status, 200, "{}", r.text());
        served += 1;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let requests = issuer.token_requests() as f64;
    // Renewed in the background at 80 % of each 2 s life: about one request per 1.6 s, never
    // one per request, and always before the token ran out.
    assert!(
        requests >= elapsed / 2.0,
        "{requests} token requests in {elapsed:.1} s"
    );
    assert!(
        requests <= elapsed / 1.6 + 2.0,
        "{requests} token requests in {elapsed:.1} s"
    );
    // Enough requests that a token request per request would break the bound above, however
    // slowly a busy machine serves them.
    assert!(served > 20, "only {served} requests in {elapsed:.1} s");
}

#[tokio::test]
async fn provider_down_the_token_serves_until_it_expires_then_503() {
    let issuer = TestIssuer::start().await;
    // 20 s tokens: renewed from 16 s, given up at 18 s (a tenth of the life, at most 30 s,
    // early). Long, so each step below has over a second to spare on a busy machine.
    issuer.set_token_ttl(20);
    let c = chain(&issuer).await;
    let url = c.front.url("/orders");
    assert_eq!(call(&url).await.status, 200);
    // The token was fetched during that call: its clock started at most this long ago.
    let got = Instant::now();
    issuer.set_token_outage(Outage::Unavailable);
    // Past the renewal point but before the end: the failed renewal changes nothing.
    tokio::time::sleep(Duration::from_millis(16_500).saturating_sub(got.elapsed())).await;
    let still = call(&url).await;
    assert_eq!(still.status, 200, "{}", still.text());
    // One background renewal, and it is not retried at once: exactly one more request.
    let deadline = Instant::now() + Duration::from_secs(2);
    while issuer.token_requests() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(issuer.token_requests(), 2, "one renewal attempt");
    // After the token's usable life: fail closed, with a hint when to retry.
    tokio::time::sleep(Duration::from_millis(18_600).saturating_sub(got.elapsed())).await;
    let down = call(&url).await;
    assert_eq!(down.status, 503, "{}", down.text());
    assert!(down.headers.contains_key("retry-after"));
    // The provider returns: a request gets a token again, no restart.
    issuer.set_token_outage(Outage::Up);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(call(&url).await.status, 200);
}

#[tokio::test]
async fn an_upstream_that_refuses_the_token_makes_the_gateway_get_a_new_one() {
    let issuer = TestIssuer::start().await;
    let app = Upstream::start().await;
    let (id, secret) = issuer.client();
    let front = Gateway::start(&format!(
        "[[upstreams]]\nurl = \"{app}\"\n[upstreams.client]\ntoken_endpoint = \"{token}\"\n\
         client_id = \"{id}\"\nclient_secret = \"{secret}\"\n",
        app = app.url(),
        token = issuer.token_endpoint(),
    ));
    assert_eq!(call(&front.url("/orders")).await.status, 200);
    let first = app.last().header("authorization").unwrap().to_owned();
    assert!(
        first.starts_with("Bearer ey"),
        "the gateway's JWT, not the caller's token"
    );
    // The API says the token is no good (401 invalid_token): the gateway forgets it…
    assert_eq!(call(&front.url("/revoked")).await.status, 401);
    // …so the next request carries a fresh one.
    assert_eq!(call(&front.url("/orders")).await.status, 200);
    assert_eq!(issuer.token_requests(), 2);
    assert_ne!(app.last().header("authorization").unwrap(), first);
}

#[tokio::test]
async fn private_key_jwt_authenticates_the_gateway_and_audience_and_resource_reach_the_token_endpoint()
 {
    let issuer = TestIssuer::start().await;
    let dir = TempDir::new("client-key");
    let key = dir.write("client.pem", &issuer.client_key_pem());
    // A resource the issuer would not pick by itself: the API accepts only tokens for it.
    let resource = "api://orders-v2";
    let c = chain_with(
        &issuer,
        resource,
        &format!(
            "client_id = \"{id}\"\nclient_auth = \"private_key_jwt\"\nprivate_key_file = \"{key}\"\n\
             private_key_id = \"gatehouse-client-key\"\naudience = \"https://orders.example\"\n\
             resource = \"{resource}\"\n",
            id = issuer::CLIENT_ID,
            key = key.display(),
        ),
    )
    .await;
    let reply = call(&c.front.url("/orders")).await;
    assert_eq!(reply.status, 200, "{}\n{}", reply.text(), c.front.logs());
    assert_eq!(
        c.app.last().header("x-forwarded-client-id"),
        Some(issuer::CLIENT_ID)
    );

    let log = issuer.token_log();
    assert_eq!(log.len(), 1, "{log:?}");
    let request = &log[0];
    assert_eq!(request.client_auth, Some("private_key_jwt"), "{request:?}");
    assert!(
        !request.authorization_header,
        "no Basic credentials as well"
    );
    assert_eq!(request.param("client_secret"), None);
    assert_eq!(request.param("grant_type"), Some("client_credentials"));
    assert_eq!(request.param("scope"), Some("orders:read"));
    assert_eq!(request.param("audience"), Some("https://orders.example"));
    assert_eq!(request.param("resource"), Some(resource));
    assert_eq!(
        request.param("client_assertion_type"),
        Some(issuer::JWT_BEARER_ASSERTION)
    );
    // The issuer checked signature, iss, sub, aud and exp; here what the gateway chose.
    let assertion = request.param("client_assertion").unwrap();
    let segment = |i: usize| -> serde_json::Value {
        let raw = assertion.split('.').nth(i).unwrap();
        serde_json::from_slice(
            &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, raw)
                .unwrap(),
        )
        .unwrap()
    };
    let (header, claims) = (segment(0), segment(1));
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["kid"], "gatehouse-client-key");
    assert_eq!(claims["iss"], issuer::CLIENT_ID);
    assert_eq!(claims["sub"], issuer::CLIENT_ID);
    assert_eq!(claims["aud"], issuer.token_endpoint());
    assert!(claims["jti"].as_str().is_some_and(|j| !j.is_empty()));
}

/// Issue 13 point 4, the two halves the chains above do not show: the caller's identity still
/// travels in the identity headers while the gateway's own token replaces the caller's in
/// `Authorization`; and without a `token_endpoint` of its own the client uses the provider's
/// (from discovery).
#[tokio::test]
async fn the_callers_identity_travels_beside_the_gateways_token_from_the_providers_endpoint() {
    let issuer = TestIssuer::start().await;
    let app = Upstream::start().await;
    let (id, secret) = issuer.client();
    let front = Gateway::start(&format!(
        "[provider]\nissuer = \"{iss}\"\nclient_id = \"{id}\"\nclient_secret = \"{secret}\"\n\
         redirect_url = \"http://127.0.0.1/oauth2/callback\"\n\
         [session]\nsecret = \"{session}\"\n\
         [bearer]\nenabled = true\naudiences = [\"api://front\"]\n\
         [authorization]\ndefault_policy = \"authenticated\"\n\
         [[upstreams]]\nurl = \"{app}\"\n\
         [upstreams.client]\nclient_id = \"{id}\"\nclient_secret = \"{secret}\"\n\
         resource = \"{aud}\"\nscopes = [\"orders:read\"]\n",
        iss = issuer.issuer(),
        session = crate::support::world::SESSION_SECRET,
        app = app.url(),
        aud = issuer::DEFAULT_AUDIENCE,
    ));
    front.wait_ready().await;
    let callers = issuer.mint("api://front").sub("bob").sign();
    let reply = send(
        Request::get(front.url("/orders/7"))
            .header("authorization", format!("Bearer {callers}"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        issuer.token_requests(),
        1,
        "the provider's discovered token endpoint"
    );
    let seen = app.last();
    assert_eq!(seen.header("x-forwarded-user"), Some("bob"));
    let sent = seen.header("authorization").unwrap();
    assert!(sent.starts_with("Bearer ey"), "{sent}");
    assert!(
        !sent.contains(&callers),
        "the caller's token reached the app"
    );
}
