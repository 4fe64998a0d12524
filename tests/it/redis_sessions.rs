//! Sessions in a real Redis, seen from outside: two gateway replicas (separate processes) share
//! one `redis-server`; a person logs in through one and is served by the other; sign-out on one
//! ends the session on both (rule 12); Redis going away is a 503 with `Retry-After`, never a 401
//! and never a pass (rules 23, 36), and the same session works again when Redis is back.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::support::redis::{RedisCluster, RedisServer, Sentinel};
use crate::support::world::{self, World};
use crate::support::{Gateway, Reply, get_with, send};

/// An API call (no navigation) to `gw` carrying `cookie`.
async fn api(gw: &Gateway, path: &str, cookie: &str) -> Reply {
    get_with(
        &gw.url(path),
        &[("accept", "application/json"), ("cookie", cookie)],
    )
    .await
}

async fn logged_in(redis: &RedisServer) -> (World, String) {
    logged_in_with(&redis_at(&redis.url(), "")).await
}

/// `[session]` lines for the Redis store at `url`, plus `more`.
fn redis_at(url: &str, more: &str) -> String {
    format!(
        "store = \"redis\"\nredis_url = \"{url}\"\n{more}\n[headers]\npass_access_token = true\n"
    )
}

async fn logged_in_with(session: &str) -> (World, String) {
    let world = World::start(session).await;
    let mut browser = world.browser();
    let (page, _) = world::login(&world, &mut browser, "/hello", "alice", &["staff"]).await;
    assert_eq!(page.status, 200, "{}", page.text());
    let cookie = world.cookie_header(&browser);
    (world, cookie)
}

#[tokio::test]
async fn a_session_made_on_one_replica_is_served_by_the_other() {
    let redis = RedisServer::start();
    let (world, cookie) = logged_in(&redis).await;
    let replica = world.replica().await;
    let reply = api(&replica, "/oauth2/userinfo", &cookie).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["user"], "alice");
    let reply = api(&replica, "/orders", &cookie).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let seen = world.app.last();
    assert_eq!(seen.header("x-forwarded-user"), Some("alice"));
    assert_eq!(seen.target, "/orders");
}

#[tokio::test]
async fn sign_out_on_one_replica_refuses_the_old_cookie_on_the_other() {
    let redis = RedisServer::start();
    let (world, cookie) = logged_in(&redis).await;
    let replica = world.replica().await;
    assert_eq!(api(&replica, "/orders", &cookie).await.status, 200);
    let out = api(&world.gw, "/oauth2/sign_out", &cookie).await;
    assert!(
        out.status.is_redirection() || out.status == 200,
        "{}",
        out.status
    );
    assert!(
        redis.keys("gatehouse:s:*").is_empty(),
        "deleted server-side"
    );
    // The old cookie, replayed on either replica: no session.
    for gw in [&replica, &world.gw] {
        let reply = api(gw, "/orders", &cookie).await;
        assert_eq!(reply.status, 401, "{}", reply.text());
        let expired = reply
            .headers
            .get_all("set-cookie")
            .iter()
            .any(|v| v.to_str().unwrap().contains("Max-Age=0"));
        assert!(expired, "the dead cookie is cleared");
    }
}

#[tokio::test]
async fn redis_holds_no_token_of_the_session_in_clear() {
    let redis = RedisServer::start();
    let (world, cookie) = logged_in(&redis).await;
    let seen = world.app.last();
    let access = seen
        .header("x-forwarded-access-token")
        .expect("the app gets the access token")
        .to_owned();
    assert!(access.len() > 16);
    let keys = redis.keys("gatehouse:s:*");
    assert_eq!(keys.len(), 1);
    let value = redis.get(&keys[0]).unwrap();
    let text = String::from_utf8_lossy(&value);
    assert!(!text.contains(&access), "access token readable in Redis");
    assert!(!text.contains("alice"));
    assert!(!cookie.contains(&access));
    assert!(cookie.len() < 150, "only an id in the cookie: {cookie}");
}

#[tokio::test]
async fn redis_down_is_503_then_the_same_session_works_when_it_returns() {
    let mut redis = RedisServer::start_persistent();
    let (world, cookie) = logged_in(&redis).await;
    assert_eq!(api(&world.gw, "/orders", &cookie).await.status, 200);
    let served = world.app.count();

    redis.kill();
    for _ in 0..20 {
        let reply = api(&world.gw, "/orders", &cookie).await;
        assert_eq!(reply.status, 503, "{}", reply.text());
        assert!(reply.headers.contains_key("retry-after"));
        let cleared = reply
            .headers
            .get_all("set-cookie")
            .iter()
            .any(|v| v.to_str().unwrap().contains("Max-Age=0"));
        assert!(!cleared, "an outage never logs anyone out");
    }
    // A person navigating gets a 503 too, not a login page.
    let page = send(
        Request::get(world.gw.url("/orders"))
            .header("accept", "text/html")
            .header("sec-fetch-mode", "navigate")
            .header("cookie", &cookie)
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(page.status, 503);
    // …as a page to read, while a program gets JSON, also from the JSON endpoint userinfo.
    let content_type = |r: &Reply| r.headers["content-type"].to_str().unwrap().to_owned();
    assert!(
        content_type(&page).starts_with("text/html"),
        "{}",
        page.text()
    );
    assert!(
        content_type(&api(&world.gw, "/orders", &cookie).await).starts_with("application/json")
    );
    let info = api(&world.gw, "/oauth2/userinfo", &cookie).await;
    assert_eq!(info.status, 503);
    assert!(
        content_type(&info).starts_with("application/json"),
        "{}",
        info.text()
    );
    assert_eq!(world.app.count(), served, "nothing reached the app");
    // Sign-out cannot end the session now: 503, and the cookie stays for a retry.
    let out = api(&world.gw, "/oauth2/sign_out", &cookie).await;
    assert_eq!(out.status, 503);
    assert!(out.headers.get("set-cookie").is_none());

    let logs = world.gw.wait_for_log("Redis is unreachable").await;
    assert_eq!(
        logs.matches("Redis is unreachable").count(),
        1,
        "one line for the outage, not one per request:\n{logs}"
    );

    redis.restart();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let reply = api(&world.gw, "/orders", &cookie).await;
        if reply.status == 200 {
            break;
        }
        assert_eq!(reply.status, 503, "{}", reply.text());
        assert!(std::time::Instant::now() < deadline, "no recovery");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(world.app.last().header("x-forwarded-user"), Some("alice"));
    world.gw.wait_for_log("Redis is reachable again").await;
}

/// alice signed in on a world whose tokens live 8 s and refresh with 4 s left (seconds to
/// spare for starting the replica), the cookie, and a second replica.
async fn refreshing_replicas(redis: &RedisServer) -> (World, String, Gateway) {
    let extra = format!("refresh_before = \"4s\"\n{}", redis_at(&redis.url(), ""));
    let world = World::start_with_token_ttl(Duration::from_secs(8), &extra).await;
    let mut browser = world.browser();
    let (page, _) = world::login(&world, &mut browser, "/", "alice", &["staff"]).await;
    assert_eq!(page.status, 200, "{}", page.text());
    let cookie = world.cookie_header(&browser);
    let replica = world.replica().await;
    (world, cookie, replica)
}

/// Refresh with the Redis store: tokens live 8 s and rotate (the development provider revokes
/// the whole sign-in when a spent refresh token comes back). Requests on two replicas across
/// the expiry: one refresh in total, every request served, and the session in Redis carries
/// the new token for both.
#[tokio::test]
async fn two_replicas_refresh_a_shared_session_once() {
    let redis = RedisServer::start();
    let (world, cookie, replica) = refreshing_replicas(&redis).await;
    let first = world.access_token_seen();
    tokio::time::sleep(Duration::from_millis(4300)).await;
    let mut calls = Vec::new();
    for i in 0..40 {
        let gw = if i % 2 == 0 { &world.gw } else { &replica };
        calls.push(api(gw, "/api/data", &cookie));
    }
    for reply in futures_util::future::join_all(calls).await {
        assert_eq!(reply.status, 200, "{}", reply.text());
        // The cookie never changes with Redis: nothing to set.
        assert!(reply.headers.get("set-cookie").is_none());
    }
    assert_eq!(world.provider.refresh_grant_requests(), 1);
    let renewed = world.access_token_seen();
    assert_ne!(renewed, first);
    for gw in [&world.gw, &replica] {
        assert_eq!(api(gw, "/api/data", &cookie).await.status, 200);
        assert_eq!(
            world.app.last().header("x-forwarded-access-token"),
            Some(renewed.as_str())
        );
    }
    assert_eq!(world.provider.refresh_grant_requests(), 1);
}

/// With Redis, a client that hangs up while the provider answers the refresh does not lose
/// the session for anyone: the new tokens reach Redis all the same, and the other replica
/// serves the session with them, no second grant.
#[tokio::test]
async fn a_client_gone_during_the_refresh_leaves_the_new_tokens_in_redis() {
    let redis = RedisServer::start();
    let (world, cookie, replica) = refreshing_replicas(&redis).await;
    let first = world.access_token_seen();
    tokio::time::sleep(Duration::from_millis(4300)).await;
    crate::support::world::abandon_a_request_mid_refresh(&world, world.gw.addr, &cookie).await;
    let reply = api(&replica, "/api/data", &cookie).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let seen = world.app.last();
    assert_ne!(
        seen.header("x-forwarded-access-token"),
        Some(first.as_str())
    );
    assert_eq!(world.provider.refresh_grant_requests(), 1);
}

/// A captured logout token replayed to another replica: with Redis its `jti` is used up for
/// every replica, so the replay is refused and the user's sessions signed in since the
/// logout survive it.
#[tokio::test]
async fn a_logout_token_replayed_to_another_replica_is_refused() {
    let redis = RedisServer::start();
    let (world, _) = logged_in(&redis).await;
    let replica = world.replica().await;
    let token = world
        .provider
        .sign_for_tests(&world.logout_claims(None, Some("alice")), "logout+jwt")
        .unwrap();
    let body = format!("logout_token={token}");
    assert_eq!(world.post_backchannel_logout(&body).await.status, 200);
    // alice signs in again (in a later second than the logout, which ends sessions made up to
    // its second); then the captured token is replayed to the other replica.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut browser = world.browser();
    let (page, _) = world::login(&world, &mut browser, "/hello", "alice", &["staff"]).await;
    assert_eq!(page.status, 200, "{}", page.text());
    let cookie = world.cookie_header(&browser);
    let replay = send(
        http::Request::post(replica.url("/oauth2/backchannel_logout"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .unwrap(),
    )
    .await;
    assert_eq!(replay.status, 400, "{}", replay.text());
    assert_eq!(api(&replica, "/orders", &cookie).await.status, 200);
    assert_eq!(api(&world.gw, "/orders", &cookie).await.status, 200);
}

/// The provider refuses the refresh token (the person's sign-in was revoked there): the
/// session is deleted from Redis, so neither a replica nor a copy of the cookie presents the
/// dead refresh token again.
#[tokio::test]
async fn a_refresh_token_refused_by_the_provider_deletes_the_session_for_every_replica() {
    let redis = RedisServer::start();
    let (world, cookie, replica) = refreshing_replicas(&redis).await;
    world.provider.end_sign_ins_of("alice");
    tokio::time::sleep(Duration::from_millis(4300)).await;
    let refused = api(&world.gw, "/orders", &cookie).await;
    assert_eq!(refused.status, 401, "{}", refused.text());
    assert!(
        redis.keys("gatehouse:s:*").is_empty(),
        "the ended session is still in Redis"
    );
    assert!(redis.keys("gatehouse:u:*").is_empty());
    let grants = world.provider.refresh_grant_requests();
    assert_eq!(api(&replica, "/orders", &cookie).await.status, 401);
    assert_eq!(
        world.provider.refresh_grant_requests(),
        grants,
        "the dead refresh token was presented again"
    );
}

/// Back-channel logout with Redis: the provider calls one replica; the session is gone on both
/// (the cookie store can only promise the replica that was called).
#[tokio::test]
async fn back_channel_logout_on_one_replica_ends_the_session_on_both() {
    let redis = RedisServer::start();
    let (world, cookie) = logged_in(&redis).await;
    let replica = world.replica().await;
    assert_eq!(api(&replica, "/orders", &cookie).await.status, 200);
    let reply = world
        .backchannel_logout(&world.logout_claims(None, Some("alice")))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(redis.keys("gatehouse:s:*").is_empty());
    for gw in [&replica, &world.gw] {
        assert_eq!(api(gw, "/orders", &cookie).await.status, 401);
    }
}

/// A person logs in at `world`; the status of the callback, where the new session is stored.
async fn callback_status(world: &World) -> http::StatusCode {
    world::callback_reply(world, &mut world.browser())
        .await
        .status
}

/// The replica and Redis agree: the session made through the first gateway is served by the
/// second, and it is in Redis.
async fn shared(world: &World, cookie: &str, redis: &RedisServer) {
    let replica = world.replica().await;
    let reply = api(&replica, "/oauth2/userinfo", cookie).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(reply.text().contains("alice"), "{}", reply.text());
    assert_eq!(redis.keys("gatehouse:s:*").len(), 1, "one session in Redis");
}

/// A Redis that accepts connections and never answers (a hung server, a black-holing network):
/// the gateway waits `redis_timeout`, no longer and not forever, then fails closed with 503.
#[tokio::test]
async fn a_redis_that_never_answers_is_503_after_redis_timeout() {
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("redis://{}", hung.local_addr().unwrap());
    let world = World::start(&redis_at(&url, "redis_timeout = \"3s\"")).await;
    let started = std::time::Instant::now();
    assert_eq!(callback_status(&world).await, 503);
    // The configured 3 s, not the 1 s default: the setting is what the gateway waits.
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    drop(hung);
}

#[tokio::test]
async fn rediss_with_a_private_ca_holds_the_sessions_and_without_the_ca_fails_closed() {
    let (redis, url, ca) = RedisServer::start_tls();
    let (world, cookie) = logged_in_with(&redis_at(
        &url,
        &format!("redis_tls_ca_file = \"{}\"", ca.display()),
    ))
    .await;
    shared(&world, &cookie, &redis).await;
    // The same server without its CA: its certificate is not trusted, so no session is
    // stored and the person gets a 503 (never a session kept elsewhere, never a pass).
    let untrusting = World::start(&redis_at(&url, "")).await;
    assert_eq!(callback_status(&untrusting).await, 503);
    assert_eq!(redis.keys("gatehouse:s:*").len(), 1);
}

#[tokio::test]
async fn an_acl_user_limited_to_the_gatehouse_keys_is_enough_and_a_wrong_password_fails_closed() {
    let redis = RedisServer::start_with(&[
        "--user",
        "gatehouse",
        "on",
        ">s3cret-pw",
        "~gatehouse:*",
        "+@all",
    ]);
    let acl = "redis_username = \"gatehouse\"\nredis_password = \"s3cret-pw\"";
    let (world, cookie) = logged_in_with(&redis_at(&redis.url(), acl)).await;
    shared(&world, &cookie, &redis).await;
    assert!(
        redis.client_users().iter().any(|u| u == "gatehouse"),
        "the gateway is connected as its ACL user: {:?}",
        redis.client_users()
    );
    // Sign-out deletes the session under the same user and key pattern.
    assert_eq!(
        api(&world.gw, "/oauth2/sign_out", &cookie).await.status,
        302
    );
    assert!(redis.keys("gatehouse:s:*").is_empty());

    let wrong = "redis_username = \"gatehouse\"\nredis_password = \"not-it\"";
    let refused = World::start(&redis_at(&redis.url(), wrong)).await;
    assert_eq!(callback_status(&refused).await, 503);
}

#[tokio::test]
async fn sessions_through_sentinel_live_in_the_master_it_names() {
    // The gateway's ACL user exists on the master only: credentials sent to the sentinel
    // (which has no such user) would fail the login.
    let master =
        RedisServer::start_with(&["--user", "gatehouse", "on", ">s3cret-pw", "~*", "+@all"]);
    let sentinel = Sentinel::start(&master);
    let (world, cookie) = logged_in_with(&format!(
        "store = \"redis\"\nredis_sentinels = [\"{}\"]\nredis_sentinel_master = \"mymaster\"\n\
         redis_username = \"gatehouse\"\nredis_password = \"s3cret-pw\"\n",
        sentinel.url()
    ))
    .await;
    shared(&world, &cookie, &master).await;
    assert!(
        master.client_users().iter().any(|u| u == "gatehouse"),
        "the gateway is connected to the master as its ACL user"
    );
    assert_eq!(
        api(&world.gw, "/oauth2/sign_out", &cookie).await.status,
        302
    );
    assert!(master.keys("gatehouse:s:*").is_empty());
}

#[tokio::test]
async fn sessions_in_a_redis_cluster_are_shared_and_end_on_sign_out() {
    let cluster = RedisCluster::start(1);
    let node = &cluster.nodes[0];
    let (world, cookie) = logged_in_with(&format!(
        "store = \"redis\"\nredis_cluster = [\"{}\"]\n",
        node.url()
    ))
    .await;
    shared(&world, &cookie, node).await;
    assert_eq!(
        api(&world.gw, "/oauth2/sign_out", &cookie).await.status,
        302
    );
    assert!(node.keys("gatehouse:s:*").is_empty());
    let reply = api(&world.replica().await, "/oauth2/userinfo", &cookie).await;
    assert_eq!(
        reply.status,
        401,
        "signed out on every replica: {}",
        reply.text()
    );
}

/// A three-node Cluster, the gateway told of one node: sessions and their `sub`/`sid` indexes
/// land on whichever node owns their slot (the client follows the cluster's map), a
/// back-channel logout reads an index on one node and deletes sessions on others, and a
/// sign-out deletes on the node that holds the session.
#[tokio::test]
async fn sessions_in_a_three_node_cluster_live_on_every_node_and_end_everywhere() {
    let cluster = RedisCluster::start(3);
    let world = World::start(&format!(
        "store = \"redis\"\nredis_cluster = [\"{}\"]\n",
        cluster.nodes[0].url()
    ))
    .await;
    let mut cookies = Vec::new();
    for user in ["alice", "alice", "alice", "alice", "bob"] {
        let mut browser = world.browser();
        let (page, _) = world::login(&world, &mut browser, "/hello", user, &["staff"]).await;
        assert_eq!(page.status, 200, "{}", page.text());
        cookies.push((user, world.cookie_header(&browser)));
    }
    let replica = world.replica().await;
    for (_, cookie) in &cookies {
        assert_eq!(api(&replica, "/orders", cookie).await.status, 200);
    }
    assert_eq!(cluster.keys("gatehouse:s:*").len(), 5);
    // Five sessions and their indexes (about a dozen keys) on one node out of three: about
    // one chance in 10^5.
    let holding = cluster
        .nodes
        .iter()
        .filter(|n| !n.keys("gatehouse:*").is_empty())
        .count();
    assert!(holding >= 2, "every key on one node: redirection untested");

    let reply = world
        .backchannel_logout(&world.logout_claims(None, Some("alice")))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    for (user, cookie) in &cookies {
        let expected = if *user == "alice" { 401 } else { 200 };
        assert_eq!(
            api(&world.gw, "/orders", cookie).await.status,
            expected,
            "{user}"
        );
    }
    assert_eq!(cluster.keys("gatehouse:s:*").len(), 1, "bob's is left");

    let (_, bob) = &cookies[4];
    assert_eq!(api(&world.gw, "/oauth2/sign_out", bob).await.status, 302);
    assert!(cluster.keys("gatehouse:s:*").is_empty());
    assert_eq!(api(&replica, "/orders", bob).await.status, 401);
}

/// A second session secret (base64 of 32 bytes), for rotation.
const NEW_SECRET: &str = "cm90YXRlZC1zZXNzaW9uLXNlY3JldC0zMi1ieXRlcyE=";

/// Edits a world's configuration to have exactly `secrets` as its session secrets.
fn with_secrets(secrets: &[&str]) -> impl FnOnce(&str) -> String {
    let quoted: Vec<String> = secrets.iter().map(|s| format!("\"{s}\"")).collect();
    let line = format!("secrets = [{}]", quoted.join(", "));
    move |config| {
        let lines: Vec<&str> = config
            .lines()
            .map(|l| {
                if l.starts_with("secret = ") || l.starts_with("secrets = ") {
                    line.as_str()
                } else {
                    l
                }
            })
            .collect();
        lines.join("\n")
    }
}

/// Rule 11 with the Redis store, where both the cookie (a sealed session id) and the value at
/// rest are sealed: a deploy that puts a new secret first keeps everyone signed in, and the
/// sessions made after it open with the new secret alone, so the old one can be retired.
#[tokio::test]
async fn a_rotated_secret_keeps_old_sessions_and_seals_new_ones_with_the_new_secret() {
    const OLD: &str = world::SESSION_SECRET;
    let redis = RedisServer::start();
    let (mut world, before) = logged_in(&redis).await;

    world.restart_with(with_secrets(&[NEW_SECRET, OLD])).await;
    let reply = api(&world.gw, "/orders", &before).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(world.app.last().header("x-forwarded-user"), Some("alice"));

    let mut browser = world.browser();
    let (page, _) = world::login(&world, &mut browser, "/hello", "bob", &[]).await;
    assert_eq!(page.status, 200, "{}", page.text());
    let after = world.cookie_header(&browser);

    // The new secret alone opens the new session and not the old one; the old secret alone
    // the other way round.
    let new_only = world.replica_with(with_secrets(&[NEW_SECRET])).await;
    let old_only = world.replica_with(with_secrets(&[OLD])).await;
    for (gw, cookie, status, user) in [
        (&new_only, &after, 200, Some("bob")),
        (&new_only, &before, 401, None),
        (&old_only, &before, 200, Some("alice")),
        (&old_only, &after, 401, None),
    ] {
        let served = world.app.count();
        let reply = api(gw, "/orders", cookie).await;
        assert_eq!(reply.status, status, "{user:?}: {}", reply.text());
        match user {
            Some(user) => assert_eq!(world.app.last().header("x-forwarded-user"), Some(user)),
            None => assert_eq!(world.app.count(), served, "the app was reached"),
        }
    }
}
