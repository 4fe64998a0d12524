//! Refresh: sessions outlive their access tokens. The development provider (in this process)
//! issues short access tokens and rotates refresh tokens — and, like a careful provider, revokes
//! the whole sign-in when a rotated-out refresh token is presented again — so these tests also
//! prove the gateway never sends a spent one.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::support::redis::RedisServer;
use crate::support::world::{
    Browser, SESSION_SECRET, World, absolute, callback_reply, location, login,
};
use crate::support::{Reply, get_with};

/// Tokens live 8 s and sessions refresh when one has at most 4 s left, so a refresh falls due
/// 4–5 s after a token arrives (whole seconds): the steps a test takes around its deliberate
/// waits have seconds to spare on a busy machine, before a token is due or after a refresh.
/// The app receives the session's access token so tests can see which one is current.
const EXTRA: &str = "refresh_before = \"4s\"\n\n[headers]\npass_access_token = true\n";
const TOKEN_TTL: Duration = Duration::from_secs(8);
/// From a request with a fresh token to a moment its refresh is due, far from its expiry.
const UNTIL_DUE: Duration = Duration::from_millis(4300);

async fn signed_in() -> (World, Browser) {
    let world = World::start_with_token_ttl(TOKEN_TTL, EXTRA).await;
    let mut browser = world.browser();
    let (page, _) = login(&world, &mut browser, "/", "alice", &["staff"]).await;
    assert_eq!(page.status, 200, "{}", page.text());
    (world, browser)
}

/// An API call (not a navigation) with exactly these cookies.
async fn api(world: &World, cookie: &str) -> Reply {
    get_with(&world.gw.url("/api/data"), &[("cookie", cookie)]).await
}

#[tokio::test]
async fn fifty_concurrent_requests_across_an_expiry_make_one_refresh() {
    let (world, browser) = signed_in().await;
    let cookie = world.cookie_header(&browser);
    assert_eq!(api(&world, &cookie).await.status, 200);
    let first = world.access_token_seen();
    tokio::time::sleep(UNTIL_DUE).await;
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

/// A client that hangs up while the provider answers the refresh (a closed tab) does not take
/// the new tokens with it: the grant completes, and the next request with the same cookie is
/// served with them, no second grant presenting the spent refresh token (which this provider
/// answers by ending the whole sign-in).
#[tokio::test]
async fn a_client_gone_during_the_refresh_does_not_lose_the_session() {
    let (world, browser) = signed_in().await;
    let cookie = world.cookie_header(&browser);
    assert_eq!(api(&world, &cookie).await.status, 200);
    let first = world.access_token_seen();
    tokio::time::sleep(UNTIL_DUE).await;
    crate::support::world::abandon_a_request_mid_refresh(&world, world.gw.addr, &cookie).await;
    let reply = api(&world, &cookie).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_ne!(
        world.access_token_seen(),
        first,
        "the app got the old token"
    );
    assert_eq!(world.provider.refresh_grant_requests(), 1);
}

#[tokio::test]
async fn a_request_with_the_old_cookie_after_rotation_gets_the_new_session() {
    let (world, mut browser) = signed_in().await;
    let old = world.cookie_header(&browser);
    tokio::time::sleep(UNTIL_DUE).await;
    // The browser's request refreshes and stores the new cookie…
    assert_eq!(browser.get(&world.gw.url("/page")).await.status, 200);
    let renewed = world.access_token_seen();
    // …while a parallel request still carries the old one: served with the same new session,
    // no second grant (which would present the spent refresh token and end the sign-in).
    let late = api(&world, &old).await;
    assert_eq!(late.status, 200, "{}", late.text());
    assert_eq!(world.access_token_seen(), renewed);
    assert_eq!(world.provider.refresh_grant_requests(), 1);
    // Several lifetimes later the browser is still signed in: the family was never revoked.
    for _ in 0..2 {
        tokio::time::sleep(UNTIL_DUE).await;
        assert_eq!(browser.get(&world.gw.url("/page")).await.status, 200);
    }
    assert_eq!(world.provider.refresh_grant_requests(), 3);
}

#[tokio::test]
async fn a_refresh_token_revoked_at_the_provider_ends_the_session() {
    let (world, mut browser) = signed_in().await;
    let cookie = world.cookie_header(&browser);
    world.provider.end_sign_ins_of("alice");
    tokio::time::sleep(UNTIL_DUE).await;
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
    let old_token = world.access_token_seen();
    // Time the steps against the token's own `exp` (whole seconds), not against the login,
    // which a busy machine can slow down.
    let exp = expiry_of(&old_token);
    world.provider.set_token_endpoint_down(true);
    // Due (≤ 4 s left) but not expired: the refresh fails, the old token still serves.
    sleep_until(exp as f64 - 2.0).await;
    let still = api(&world, &cookie).await;
    assert_eq!(still.status, 200, "{}", still.text());
    // Expired and the provider still down: fail closed.
    sleep_until(exp as f64 + 0.3).await;
    let down = api(&world, &cookie).await;
    assert_eq!(down.status, 503, "{}", down.text());
    assert!(down.headers.contains_key("retry-after"));
    // Rule 23: the operator reads which dependency failed (the provider's token endpoint, for
    // whose session) and that callers get 503 because of it.
    let token_endpoint = format!("{}/token", world.provider.issuer());
    world
        .gw
        .expect_warn(&["token refresh failed", &token_endpoint, "user=alice"])
        .await;
    world
        .gw
        .expect_warn(&[
            "authentication dependency unavailable; answering 503",
            "dependency=\"token refresh\"",
        ])
        .await;
    // Back: the same session refreshes and works, no new login (after the 2 s pause the
    // gateway keeps between attempts for one refresh token).
    world.provider.set_token_endpoint_down(false);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let back = api(&world, &cookie).await;
    assert_eq!(back.status, 200, "{}", back.text());
    // Nothing that opens the session or the provider is in the log: access and refresh
    // tokens (old and new), the client secret, the session cookie and its key.
    let new_token = world.access_token_seen();
    assert_ne!(new_token, old_token);
    let refresh_tokens = world.provider.refresh_tokens_of("alice");
    assert!(!refresh_tokens.is_empty());
    let mut secrets = vec![
        ("the old access token", old_token.as_str()),
        ("the new access token", new_token.as_str()),
        (
            "the client secret",
            world.provider.gateway_client_secret().expose().as_str(),
        ),
        ("the session secret", SESSION_SECRET),
    ];
    secrets.extend(
        refresh_tokens
            .iter()
            .map(|t| ("a refresh token", t.as_str())),
    );
    secrets.extend(
        cookie
            .split("; ")
            .map(|pair| ("the session cookie", pair.split_once('=').unwrap().1)),
    );
    world.gw.assert_never_logged(&secrets);
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

/// Claims come from the refreshed ID token: a group taken away at the provider is gone at the
/// next refresh, from the app's headers and from the routes that require it.
#[tokio::test]
async fn a_group_removed_at_the_provider_is_dropped_at_the_next_refresh() {
    let admin_only =
        format!("{EXTRA}\n[[routes]]\npath_prefix = \"/admin\"\ngroups = [\"admins\"]\n");
    let world = World::start_with_token_ttl(TOKEN_TTL, &admin_only).await;
    let mut browser = world.browser();
    let (page, _) = login(
        &world,
        &mut browser,
        "/admin/panel",
        "alice",
        &["admins", "staff"],
    )
    .await;
    assert_eq!(page.status, 200, "{}", page.text());
    assert_eq!(
        world.app.last().header("x-forwarded-groups"),
        Some("admins,staff")
    );

    world.provider.set_groups_of("alice", &["staff"]);
    tokio::time::sleep(UNTIL_DUE).await;
    let page = browser.get(&world.gw.url("/page")).await;
    assert_eq!(page.status, 200, "{}", page.text());
    assert_eq!(world.provider.refresh_grant_requests(), 1);
    assert_eq!(world.app.last().header("x-forwarded-groups"), Some("staff"));

    let served = world.app.count();
    let refused = browser.get(&world.gw.url("/admin/panel")).await;
    assert_eq!(refused.status, 403, "{}", refused.text());
    assert_eq!(world.app.count(), served, "the app was reached");
    let info = browser.get(&world.gw.url("/oauth2/userinfo")).await;
    assert_eq!(info.json()["groups"], serde_json::json!(["staff"]));
}

/// A refreshed ID token is validated like the first one and must name the session's subject
/// (OpenID Connect Core §12.2): a forged, misaddressed or foreign one ends the session instead
/// of renewing it. Each fault gets its own session, refreshed while the provider issues it.
#[tokio::test]
async fn a_refreshed_id_token_that_fails_validation_ends_the_session() {
    use gatehouse::demo::provider::IdTokenFault;
    let world = World::start_with_token_ttl(TOKEN_TTL, EXTRA).await;
    let cases = [
        (
            Some(IdTokenFault::BadSignature),
            "ID token signature is invalid",
        ),
        (Some(IdTokenFault::WrongIssuer), "ID token issuer is wrong"),
        (
            Some(IdTokenFault::WrongAudience),
            "ID token audience does not contain our client id",
        ),
        (
            Some(IdTokenFault::OtherSubject),
            "refreshed tokens name another subject",
        ),
        // The control: the same refresh with a good ID token renews the session.
        (None, ""),
    ];
    let mut cookies = Vec::new();
    for _ in &cases {
        let mut browser = world.browser();
        let (page, _) = login(&world, &mut browser, "/", "alice", &["staff"]).await;
        assert_eq!(page.status, 200, "{}", page.text());
        cookies.push(world.cookie_header(&browser));
    }
    tokio::time::sleep(UNTIL_DUE).await;
    for (n, ((fault, reason), cookie)) in cases.iter().zip(&cookies).enumerate() {
        world.provider.set_id_token_fault(*fault);
        let served = world.app.count();
        let reply = api(&world, cookie).await;
        assert_eq!(
            world.provider.refresh_grant_requests(),
            n as u64 + 1,
            "{fault:?}"
        );
        if fault.is_none() {
            assert_eq!(reply.status, 200, "{}", reply.text());
            assert_eq!(world.app.last().header("x-forwarded-user"), Some("alice"));
            continue;
        }
        assert_eq!(reply.status, 401, "{fault:?}: {}", reply.text());
        assert!(
            reply
                .headers
                .get_all("set-cookie")
                .iter()
                .any(|c| c.to_str().unwrap().contains("Max-Age=0")),
            "{fault:?}: the session cookie is cleared"
        );
        assert_eq!(world.app.count(), served, "{fault:?}: the app was reached");
        let logs = world.gw.wait_for_log(reason).await;
        assert!(
            logs.contains(reason),
            "{fault:?}: {reason:?} not logged:\n{logs}"
        );
        // Ended, not merely refused once: the same cookie stays signed out.
        assert_eq!(api(&world, cookie).await.status, 401, "{fault:?}");
    }
}

/// Rule 13 (refresh tokens never leave the gateway), with each store: through a login, a
/// refresh and the endpoints a browser calls, no answer to the browser (headers, cookies, even
/// decoded, or body) and nothing the app received carries a refresh token the provider issued.
async fn refresh_tokens_stay_in_the_gateway(store: &str) {
    let extra = format!(
        "refresh_before = \"4s\"\n{store}\n[headers]\npass_access_token = true\n\
         pass_authorization_header = true\n"
    );
    let world = World::start_with_token_ttl(TOKEN_TTL, &extra).await;
    let mut browser = world.browser();
    let mut replies = Vec::new();
    let landed = callback_reply(&world, &mut browser).await;
    let target = absolute(&world.gw.url(""), &location(&landed));
    replies.push(landed);
    replies.push(browser.get(&target).await);
    let mut jars = vec![browser.cookies(&world.gw.addr.to_string())];
    tokio::time::sleep(UNTIL_DUE).await;
    replies.push(browser.get(&world.gw.url("/page")).await);
    replies.push(api(&world, &world.cookie_header(&browser)).await);
    replies.push(browser.get(&world.gw.url("/oauth2/userinfo")).await);
    jars.push(browser.cookies(&world.gw.addr.to_string()));
    let statuses: Vec<u16> = replies.iter().skip(1).map(|r| r.status.as_u16()).collect();
    assert_eq!(statuses, [200; 4], "the pages, the API and userinfo");
    assert_eq!(world.provider.refresh_grant_requests(), 1);

    let issued = world.provider.refresh_tokens_of("alice");
    assert_eq!(issued.len(), 2, "the login's and the refresh's");
    let leaks = |text: &[u8]| {
        let text = String::from_utf8_lossy(text);
        issued.iter().any(|t| text.contains(t.as_str()))
    };
    for reply in &replies {
        for (name, value) in &reply.headers {
            assert!(!leaks(value.as_bytes()), "{name}: {value:?}");
        }
        assert!(!leaks(&reply.body), "{}", reply.text());
    }
    // Cookies are sealed, not merely encoded: not even their base64 hides one. The session
    // cookie (whole, or its chunks `_gatehouse_0`, `_gatehouse_1`, … in order) must decode.
    for jar in &jars {
        let mut pieces: Vec<(usize, &str)> = jar
            .iter()
            .filter_map(|(name, value)| match name.strip_prefix("_gatehouse") {
                Some("") => Some((0, value.as_str())),
                Some(rest) => rest
                    .strip_prefix('_')
                    .and_then(|i| i.parse().ok())
                    .map(|i| (i, value.as_str())),
                None => None,
            })
            .collect();
        pieces.sort_unstable();
        let whole: String = pieces.iter().map(|(_, v)| *v).collect();
        assert!(!whole.is_empty(), "no session cookie in {jar:?}");
        let decoded = URL_SAFE_NO_PAD
            .decode(&whole)
            .expect("the session cookie is base64url");
        assert!(
            !leaks(&decoded),
            "the session cookie decodes to a refresh token"
        );
    }
    let seen = world.app.seen();
    assert_eq!(seen.len(), 3, "the landing page, /page and /api/data");
    for s in seen {
        assert!(!leaks(s.target.as_bytes()), "{}", s.target);
        for (name, value) in &s.headers {
            assert!(!leaks(value.as_bytes()), "the app got {name}: {value:?}");
        }
    }
    // The last request's access-log line is in: every line before it is too.
    let logs = world.gw.wait_for_log("/oauth2/userinfo").await;
    assert!(!leaks(logs.as_bytes()), "the gateway logged one");
}

#[tokio::test]
async fn refresh_tokens_never_reach_the_browser_or_the_app_with_the_cookie_store() {
    refresh_tokens_stay_in_the_gateway("").await;
}

#[tokio::test]
async fn refresh_tokens_never_reach_the_browser_or_the_app_with_the_redis_store() {
    let redis = RedisServer::start();
    refresh_tokens_stay_in_the_gateway(&format!(
        "store = \"redis\"\nredis_url = \"{}\"\n",
        redis.url()
    ))
    .await;
}
