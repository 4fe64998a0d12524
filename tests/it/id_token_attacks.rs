//! A provider that issues bad ID tokens on purpose (`DevProvider::with_id_token_fault`), in front
//! of the real gateway binary: every forged, misaddressed, stale or unsigned ID token must end the
//! login with the 400 "could not be verified" page — no session, and the app never reached.
//! Named after the attack.

use gatehouse::demo::provider::IdTokenFault;

use crate::support::world::{Browser, World, callback_reply, location};

/// The whole login with `fault` must fail closed at the callback, and the gateway must log that
/// it rejected the ID token for `reason` (so each test proves the check it is named after).
async fn refused(fault: IdTokenFault, reason: &str) {
    let world = World::start_with(Some(fault), "").await;
    let mut browser = Browser::default();
    let reply = callback_reply(&world, &mut browser).await;
    assert_eq!(
        reply.status,
        400,
        "{fault:?}: the callback answered {} (location {:?}): {}",
        reply.status,
        reply.headers.get("location"),
        reply.text()
    );
    assert!(
        reply.text().contains("could not be verified"),
        "{fault:?}: {}",
        reply.text()
    );
    for set in reply.headers.get_all("set-cookie") {
        let set = set.to_str().unwrap().to_ascii_lowercase();
        assert!(
            set.contains("max-age=0"),
            "{fault:?}: the refused callback set a live cookie: {set}"
        );
    }
    assert_eq!(
        world.app.count(),
        0,
        "{fault:?}: the app was reached: {:?}",
        world
            .app
            .seen()
            .iter()
            .map(|s| s.target.clone())
            .collect::<Vec<_>>()
    );
    let info = browser.get(&world.gw.url("/oauth2/userinfo")).await;
    assert_eq!(info.status, 401, "{fault:?}: {}", info.text());
    assert_eq!(world.app.count(), 0, "{fault:?}: the app was reached");
    let logs = world.gw.wait_for_log(reason).await;
    assert!(
        logs.contains("ID token rejected") && logs.contains(reason),
        "{fault:?}: expected the rejection reason {reason:?} in the gateway's logs:\n{logs}"
    );
}

/// The control: the same flow without a fault signs in, so the refusals below are about the
/// tokens and not the harness.
#[tokio::test]
async fn without_a_fault_the_same_login_succeeds() {
    let world = World::start("").await;
    let mut browser = Browser::default();
    let reply = callback_reply(&world, &mut browser).await;
    assert_eq!(location(&reply), "/app");
    let info = browser.get(&world.gw.url("/oauth2/userinfo")).await;
    assert_eq!(info.status, 200, "{}", info.text());
    assert_eq!(info.json()["user"], "alice");
}

#[tokio::test]
async fn an_id_token_with_a_forged_signature_is_refused() {
    refused(IdTokenFault::BadSignature, "ID token signature is invalid").await;
}

#[tokio::test]
async fn an_id_token_from_another_issuer_is_refused() {
    refused(IdTokenFault::WrongIssuer, "ID token issuer is wrong").await;
}

#[tokio::test]
async fn an_id_token_for_another_audience_is_refused() {
    refused(
        IdTokenFault::WrongAudience,
        "ID token audience does not contain our client id",
    )
    .await;
}

#[tokio::test]
async fn an_expired_id_token_is_refused() {
    refused(IdTokenFault::Expired, "ID token has expired").await;
}

#[tokio::test]
async fn an_id_token_issued_in_the_future_is_refused() {
    refused(
        IdTokenFault::IssuedInFuture,
        "ID token was issued in the future",
    )
    .await;
}

#[tokio::test]
async fn alg_none_id_tokens_are_refused() {
    // The empty signature segment is refused before the header is even read; a `none` token
    // with a non-empty signature is the algorithm check's case (src/oidc/tests.rs).
    refused(
        IdTokenFault::AlgNone,
        "ID token is not a compact JWS of three segments",
    )
    .await;
}

#[tokio::test]
async fn an_id_token_with_another_logins_nonce_is_refused() {
    refused(IdTokenFault::WrongNonce, "ID token nonce does not match").await;
}

#[tokio::test]
async fn an_id_token_signed_by_a_key_not_in_the_jwks_is_refused() {
    refused(
        IdTokenFault::UnknownKid,
        "no key of the provider matches the ID token",
    )
    .await;
}

#[tokio::test]
async fn hs256_signed_with_the_public_key_is_refused() {
    refused(
        IdTokenFault::HmacWithPublicKey,
        "ID token algorithm is not allowed",
    )
    .await;
}

/// The provider says the address is not verified (anyone could have typed it): no login, even
/// with no email rule configured, because the app would take `X-Forwarded-Email` as proof —
/// unless `require_email_verified = false` says the deployment does not care.
#[tokio::test]
async fn an_email_the_provider_calls_unverified_gets_no_login() {
    let world = World::start_with(Some(IdTokenFault::UnverifiedEmail), "").await;
    let mut browser = Browser::default();
    let reply = callback_reply(&world, &mut browser).await;
    assert_eq!(reply.status, 403, "{}", reply.text());
    assert!(reply.text().contains("not verified"), "{}", reply.text());
    let info = browser.get(&world.gw.url("/oauth2/userinfo")).await;
    assert_eq!(info.status, 401);
    assert_eq!(world.app.count(), 0);

    let relaxed = World::start_with(
        Some(IdTokenFault::UnverifiedEmail),
        "\n[authorization]\nrequire_email_verified = false\n",
    )
    .await;
    let mut browser = Browser::default();
    let reply = callback_reply(&relaxed, &mut browser).await;
    assert_eq!(reply.status, 302, "{}", reply.text());
}

/// The provider leaves the ID token out of its answer to scope `openid`: with userinfo on,
/// an OpenID login must still not go ahead on userinfo alone, since neither the nonce nor
/// the ID token could be checked.
#[tokio::test]
async fn a_token_response_without_the_id_token_gets_no_login_even_with_userinfo() {
    let mut world = World::start_with(Some(IdTokenFault::Missing), "").await;
    world
        .restart_with(|c| c.replace("[provider]\n", "[provider]\nuserinfo = true\n"))
        .await;
    let mut browser = Browser::default();
    let reply = callback_reply(&world, &mut browser).await;
    assert_eq!(reply.status, 400, "{}", reply.text());
    assert!(reply.text().contains("no ID token"), "{}", reply.text());
    let info = browser.get(&world.gw.url("/oauth2/userinfo")).await;
    assert_eq!(info.status, 401);
    assert_eq!(world.app.count(), 0);
}

/// With `userinfo = true` the login needs the provider's userinfo answer too: when it names
/// another subject than the ID token, or cannot be had, nobody is signed in (400 and 503), no
/// session cookie is set, and nothing reaches the app.
#[tokio::test]
async fn a_login_whose_userinfo_disagrees_or_fails_signs_nobody_in() {
    let userinfo_on = |c: &str| c.replace("[provider]\n", "[provider]\nuserinfo = true\n");
    let mut other = World::start_with(Some(IdTokenFault::OtherSubject), "").await;
    other.restart_with(userinfo_on).await;
    let mut browser = Browser::default();
    let reply = callback_reply(&other, &mut browser).await;
    assert_eq!(reply.status, 400, "{}", reply.text());
    assert!(reply.text().contains("disagree"), "{}", reply.text());
    assert_eq!(
        reply.cookies_set(),
        Vec::<String>::new(),
        "a session cookie was set"
    );
    assert_eq!(
        browser.get(&other.gw.url("/oauth2/userinfo")).await.status,
        401
    );

    let mut down = World::start_with(None, "").await;
    down.restart_with(userinfo_on).await;
    down.provider.set_userinfo_down(true);
    let mut browser = Browser::default();
    let reply = callback_reply(&down, &mut browser).await;
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert!(reply.headers.contains_key("retry-after"));
    assert_eq!(
        reply.cookies_set(),
        Vec::<String>::new(),
        "a session cookie was set"
    );
    assert_eq!(
        browser.get(&down.gw.url("/oauth2/userinfo")).await.status,
        401
    );
    assert_eq!(other.app.count() + down.app.count(), 0);
}
