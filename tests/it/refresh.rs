//! Refresh: sessions outlive their access tokens. The development provider (in this process)
//! issues short access tokens and rotates refresh tokens — and, like a careful provider, revokes
//! the whole sign-in when a rotated-out refresh token is presented again — so these tests also
//! prove the gateway never sends a spent one.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::support::world::{Browser, World, location, login};
use crate::support::{Reply, send};

/// Sessions refresh when their token has at most 1 s left; tokens live 3 s. The app receives
/// the session's access token so tests can see which one is current.
const EXTRA: &str = "refresh_before = \"1s\"\n\n[headers]\npass_access_token = true\n";

async fn signed_in() -> (World, Browser) {
    let world = World::start_with_token_ttl(Duration::from_secs(3), EXTRA).await;
    let mut browser = world.browser();
    let (page, _) = login(&world, &mut browser, "/", "alice", &["staff"]).await;
    assert_eq!(page.status, 200, "{}", page.text());
    (world, browser)
}

/// An API call (not a navigation) with exactly these cookies.
async fn api(world: &World, cookie: &str) -> Reply {
    send(
        Request::get(world.gw.url("/api/data"))
            .header("cookie", cookie)
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await
}

fn token_seen(world: &World) -> String {
    world
        .app
        .last()
        .header("x-forwarded-access-token")
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn fifty_concurrent_requests_across_an_expiry_make_one_refresh() {
    let (world, browser) = signed_in().await;
    let cookie = world.cookie_header(&browser);
    assert_eq!(api(&world, &cookie).await.status, 200);
    let first = token_seen(&world);
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let replies = futures_util::future::join_all((0..50).map(|_| api(&world, &cookie))).await;
    assert!(
        replies.iter().all(|r| r.status == 200),
        "{:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert_eq!(world.provider.refresh_grant_requests(), 1);
    // Every one of them went on with the new token, and each answer carries the new session.
    assert!(world.app.seen().iter().rev().take(50).all(|s| {
        s.header("x-forwarded-access-token")
            .is_some_and(|t| t != first)
    }));
    assert!(replies.iter().all(|r| r.headers.contains_key("set-cookie")));
}

#[tokio::test]
async fn a_request_with_the_old_cookie_after_rotation_gets_the_new_session() {
    let (world, mut browser) = signed_in().await;
    let old = world.cookie_header(&browser);
    tokio::time::sleep(Duration::from_millis(2300)).await;
    // The browser's request refreshes and stores the new cookie…
    assert_eq!(browser.get(&world.gw.url("/page")).await.status, 200);
    let renewed = token_seen(&world);
    // …while a parallel request still carries the old one: served with the same new session,
    // no second grant (which would present the spent refresh token and end the sign-in).
    let late = api(&world, &old).await;
    assert_eq!(late.status, 200, "{}", late.text());
    assert_eq!(token_seen(&world), renewed);
    assert_eq!(world.provider.refresh_grant_requests(), 1);
    // Several lifetimes later the browser is still signed in: the family was never revoked.
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(2300)).await;
        assert_eq!(browser.get(&world.gw.url("/page")).await.status, 200);
    }
    assert_eq!(world.provider.refresh_grant_requests(), 3);
}

#[tokio::test]
async fn a_refresh_token_revoked_at_the_provider_ends_the_session() {
    let (world, mut browser) = signed_in().await;
    let cookie = world.cookie_header(&browser);
    world.provider.end_sign_ins_of("alice");
    tokio::time::sleep(Duration::from_millis(2300)).await;
    // A script: 401, and the session cookie is cleared.
    let refused = api(&world, &cookie).await;
    assert_eq!(refused.status, 401, "{}", refused.text());
    assert!(
        refused
            .headers
            .get_all("set-cookie")
            .iter()
            .any(|c| c.to_str().unwrap().contains("Max-Age=0"))
    );
    // A person: back to the provider to sign in again.
    let to_login = browser.get(&world.gw.url("/page")).await;
    assert!(location(&to_login).starts_with(world.provider.issuer()));
}

#[tokio::test]
async fn a_provider_outage_during_refresh_uses_the_old_token_then_503_and_recovers() {
    let (world, browser) = signed_in().await;
    let cookie = world.cookie_header(&browser);
    assert_eq!(api(&world, &cookie).await.status, 200);
    // Time the steps against the token's own `exp` (whole seconds), not against the login,
    // which a busy machine can slow down.
    let exp = expiry_of(&token_seen(&world));
    world.provider.set_token_endpoint_down(true);
    // Due (≤ 1 s left) but not expired: the refresh fails, the old token still serves.
    sleep_until(exp as f64 - 0.6).await;
    let still = api(&world, &cookie).await;
    assert_eq!(still.status, 200, "{}", still.text());
    // Expired and the provider still down: fail closed.
    sleep_until(exp as f64 + 0.3).await;
    let down = api(&world, &cookie).await;
    assert_eq!(down.status, 503, "{}", down.text());
    assert!(down.headers.contains_key("retry-after"));
    // Back: the same session refreshes and works, no new login (after the 2 s pause the
    // gateway keeps between attempts for one refresh token).
    world.provider.set_token_endpoint_down(false);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let back = api(&world, &cookie).await;
    assert_eq!(back.status, 200, "{}", back.text());
}

/// The `exp` of a JWT, unverified (the test only reads what the provider issued).
fn expiry_of(jwt: &str) -> u64 {
    use base64::Engine;
    let payload = jwt.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    let claims: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    claims["exp"].as_u64().unwrap()
}

async fn sleep_until(unix: f64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    if unix > now {
        tokio::time::sleep(Duration::from_secs_f64(unix - now)).await;
    }
}
