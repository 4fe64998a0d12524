//! Back-channel logout (OpenID Connect Back-Channel Logout 1.0): the provider posts a signed
//! logout token to `/oauth2/backchannel_logout`, and the sessions it names end at once. Forged,
//! misdirected or replayed logout tokens change nothing. Security tests are named after the
//! attack.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::{Value, json};

use crate::support::world::{Browser, World, location, login};
use crate::support::{get, send};

use gatehouse::oidc::unix_now as now;

async fn signed_in(world: &World, user: &str) -> Browser {
    let mut browser = world.browser();
    let (page, _) = login(world, &mut browser, "/", user, &[]).await;
    assert_eq!(page.status, 200);
    browser
}

async fn still_in(world: &World, browser: &mut Browser) -> bool {
    let r = browser.get(&world.gw.url("/page")).await;
    if r.status == 200 {
        return true;
    }
    assert!(
        location(&r).starts_with(world.provider.issuer()),
        "{}",
        r.status
    );
    false
}

#[tokio::test]
async fn a_logout_token_for_a_provider_session_ends_that_session_only() {
    let world = World::start("").await;
    let mut alice = signed_in(&world, "alice").await;
    let mut bob = signed_in(&world, "bob").await;
    let sid = world.provider.sids_of("alice").pop().unwrap();
    let reply = world
        .backchannel_logout(&world.logout_claims(Some(&sid), None))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.headers["cache-control"], "no-store");
    assert!(!still_in(&world, &mut alice).await);
    assert!(still_in(&world, &mut bob).await);
}

/// A logout token names one provider session with `sid` and, as most providers send it
/// (oidc-provider always does), the user with `sub`: only that session ends (§2.4), not the
/// user's other devices — with either store.
async fn a_logout_token_with_sid_and_sub_ends_that_session_only(extra: &str) {
    let world = World::start(extra).await;
    let mut phone = signed_in(&world, "alice").await;
    let before = world.provider.sids_of("alice");
    let mut laptop = signed_in(&world, "alice").await;
    let phone_sid = before.first().unwrap().clone();
    let reply = world
        .backchannel_logout(&world.logout_claims(Some(&phone_sid), Some("alice")))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(!still_in(&world, &mut phone).await);
    assert!(
        still_in(&world, &mut laptop).await,
        "another device was signed out"
    );
}

#[tokio::test]
async fn a_logout_token_with_sid_and_sub_ends_that_session_only_with_the_cookie_store() {
    a_logout_token_with_sid_and_sub_ends_that_session_only("").await;
}

#[tokio::test]
async fn a_logout_token_with_sid_and_sub_ends_that_session_only_with_the_redis_store() {
    let redis = crate::support::redis::RedisServer::start();
    a_logout_token_with_sid_and_sub_ends_that_session_only(&format!(
        "store = \"redis\"\nredis_url = \"{}\"\n",
        redis.url()
    ))
    .await;
}

#[tokio::test]
async fn a_logout_token_for_a_user_ends_all_of_their_sessions() {
    let world = World::start("").await;
    let mut phone = signed_in(&world, "alice").await;
    let mut laptop = signed_in(&world, "alice").await;
    let reply = world
        .backchannel_logout(&world.logout_claims(None, Some("alice")))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(!still_in(&world, &mut phone).await);
    assert!(!still_in(&world, &mut laptop).await);
    // A new sign-in after the logout is a new session and works (logouts are kept to the
    // second, and a session of that same second counts as ended: fail closed).
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let mut again = signed_in(&world, "alice").await;
    assert!(still_in(&world, &mut again).await);
}

#[tokio::test]
async fn replayed_forged_and_misdirected_logout_tokens_change_nothing() {
    let world = World::start("").await;
    let mut alice = signed_in(&world, "alice").await;
    let sid = world.provider.sids_of("alice").pop().unwrap();
    let base = world.logout_claims(Some(&sid), None);
    let with = |k: &str, v: Value| {
        let mut c = base.clone();
        c[k] = v;
        c
    };
    let without = |k: &str| {
        let mut c = base.clone();
        c.as_object_mut().unwrap().remove(k);
        c
    };
    let cases = [
        (
            "an ID token passed off as a logout token (nonce)",
            with("nonce", json!("n")),
        ),
        ("no logout event", without("events")),
        (
            "another event",
            with("events", json!({"http://example.com/other": {}})),
        ),
        ("another audience", with("aud", json!("someone-else"))),
        ("another issuer", with("iss", json!("https://evil.example"))),
        ("an old token", with("iat", json!(now() - 3600))),
        ("no jti", without("jti")),
        ("neither sid nor sub", without("sid")),
    ];
    for (name, c) in &cases {
        let reply = world.backchannel_logout(c).await;
        assert_eq!(reply.status, 400, "{name}: {}", reply.text());
    }
    // A tampered signature.
    let token = world.provider.sign_for_tests(&base, "logout+jwt").unwrap();
    let mut forged = token.clone();
    forged.pop();
    forged.push(if token.ends_with('A') { 'B' } else { 'A' });
    assert_eq!(
        world
            .post_backchannel_logout(&format!("logout_token={forged}"))
            .await
            .status,
        400
    );
    // An ID-token typ.
    let typed = world.provider.sign_for_tests(&base, "id+jwt").unwrap();
    assert_eq!(
        world
            .post_backchannel_logout(&format!("logout_token={typed}"))
            .await
            .status,
        400
    );
    // Two logout_token parameters (rule 35), a GET, no body.
    assert_eq!(
        world
            .post_backchannel_logout(&format!("logout_token={token}&logout_token={token}"))
            .await
            .status,
        400
    );
    assert_eq!(world.post_backchannel_logout("").await.status, 400);
    let reply = get(&world
        .gw
        .url(&format!("/oauth2/backchannel_logout?logout_token={token}")))
    .await;
    assert_eq!(reply.status, 400, "a logout token in a GET is refused");
    assert!(
        still_in(&world, &mut alice).await,
        "nothing above may end the session"
    );

    // The genuine token works once; its replay is refused.
    assert_eq!(
        world
            .post_backchannel_logout(&format!("logout_token={token}"))
            .await
            .status,
        200
    );
    assert_eq!(
        world
            .post_backchannel_logout(&format!("logout_token={token}"))
            .await
            .status,
        400
    );
    assert!(!still_in(&world, &mut alice).await);
}

#[tokio::test]
async fn with_the_cookie_store_a_logout_reaches_only_the_replica_the_provider_called() {
    // What back-channel logout cannot do without a server-side store: the session lives in
    // the browser, and only the replica that received the logout remembers it. The Redis store
    // ends the session itself, on every replica.
    let world = World::start("").await;
    let replica = world.replica().await;
    let browser = signed_in(&world, "alice").await;
    let cookie = world.cookie_header(&browser);
    let api = |url: String| {
        let cookie = cookie.clone();
        async move {
            send(
                Request::get(url)
                    .header("cookie", cookie)
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
            .await
            .status
        }
    };
    assert_eq!(
        api(replica.url("/data")).await,
        200,
        "replicas share sessions"
    );
    let sid = world.provider.sids_of("alice").pop().unwrap();
    assert_eq!(
        world
            .backchannel_logout(&world.logout_claims(Some(&sid), None))
            .await
            .status,
        200
    );
    assert_eq!(api(world.gw.url("/data")).await, 401);
    assert_eq!(api(replica.url("/data")).await, 200);
}
