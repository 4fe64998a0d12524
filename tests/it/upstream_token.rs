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
use crate::support::{Gateway, Reply, send};

/// The protected API (a bearer-mode Gatehouse over `app`) and the gateway in front of it.
struct Chain {
    app: Upstream,
    _api: Gateway,
    front: Gateway,
}

async fn chain(issuer: &TestIssuer) -> Chain {
    let app = Upstream::start().await;
    let api = Gateway::start(&format!(
        "[[bearer.issuers]]\nissuer = \"{iss}\"\njwks_uri = \"{jwks}\"\naudiences = [\"{aud}\"]\n\
         [authorization]\ndefault_policy = \"authenticated\"\n\
         [[upstreams]]\nurl = \"{app}\"\n",
        iss = issuer.issuer(),
        jwks = issuer.jwks_uri(),
        aud = issuer::DEFAULT_AUDIENCE,
        app = app.url(),
    ));
    let (id, secret) = issuer.client();
    let front = Gateway::start(&format!(
        "[[upstreams]]\nurl = \"{api}\"\n[upstreams.client]\ntoken_endpoint = \"{token}\"\n\
         client_id = \"{id}\"\nclient_secret = \"{secret}\"\nresource = \"{aud}\"\nscopes = [\"orders:read\"]\n",
        api = api.url(""),
        token = issuer.token_endpoint(),
        aud = issuer::DEFAULT_AUDIENCE,
    ));
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
    let c = chain(&issuer).await;
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
    assert!(!c.front.logs().contains("the-callers-own-token"));
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
    assert!(served > 100);
}

#[tokio::test]
async fn provider_down_the_token_serves_until_it_expires_then_503() {
    let issuer = TestIssuer::start().await;
    // 10 s tokens: renewed from 8 s, given up at 9 s (a tenth of the life, at most 30 s, early).
    issuer.set_token_ttl(10);
    let c = chain(&issuer).await;
    let url = c.front.url("/orders");
    assert_eq!(call(&url).await.status, 200);
    // The token was fetched during that call: its clock started at most this long ago.
    let got = Instant::now();
    issuer.set_token_outage(Outage::Unavailable);
    // Past the renewal point but before the end: the failed renewal changes nothing.
    tokio::time::sleep(Duration::from_millis(8300).saturating_sub(got.elapsed())).await;
    let still = call(&url).await;
    assert_eq!(still.status, 200, "{}", still.text());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(issuer.token_requests() >= 2, "a renewal was attempted");
    // After the token's usable life: fail closed, with a hint when to retry.
    tokio::time::sleep(Duration::from_millis(9600).saturating_sub(got.elapsed())).await;
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
