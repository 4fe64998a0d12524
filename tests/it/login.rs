//! Browser login through the real gateway binary and the built-in development provider (run in
//! this process), driven over HTTP by a tiny cookie-keeping "browser": what a person would
//! notice (redirects, pages, cookies) and what the app receives. Security tests are named after
//! the attack.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::support::upstream::Upstream;
use crate::support::world::{
    Browser, World, callback_reply_from, free_addr, hidden, location, login, sign_in_at_provider,
};
use crate::support::{Gateway, Reply, get, send};

/// The `Set-Cookie` values of `reply` that set a cookie (rather than clear one).
/// The one value of `name` in `url`'s query.
fn query_param(url: &str, name: &str) -> Option<String> {
    let url = url::Url::parse(url).unwrap();
    let mut values = url.query_pairs().filter(|(k, _)| k == name);
    let value = values.next().map(|(_, v)| v.into_owned());
    assert!(values.next().is_none(), "{name} repeated in {url}");
    value
}

/// `callback` with its `iss` parameter replaced by `iss` (removed for `None`).
fn with_iss(callback: &str, iss: Option<&str>) -> String {
    let mut url = url::Url::parse(callback).unwrap();
    let kept: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| k != "iss")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    {
        let mut query = url.query_pairs_mut();
        query.clear().extend_pairs(kept);
        if let Some(iss) = iss {
            query.append_pair("iss", iss);
        }
    }
    url.into()
}

#[tokio::test]
async fn a_deep_link_survives_login_and_the_app_receives_the_identity() {
    let world = World::start("").await;
    let mut browser = world.browser();
    let (page, _) = login(
        &world,
        &mut browser,
        "/app/page?x=1&y=two",
        "alice",
        &["admins", "staff"],
    )
    .await;
    assert_eq!(page.status, 200, "{}", page.text());
    let seen = world.app.last();
    assert_eq!(seen.target, "/app/page?x=1&y=two");
    assert_eq!(seen.headers["x-forwarded-user"], "alice");
    assert_eq!(seen.headers["x-forwarded-email"], "alice@example.com");
    assert_eq!(seen.headers["x-forwarded-groups"], "admins,staff");
    // The gateway's cookies never reach the app.
    assert!(
        !seen.headers.contains_key("cookie"),
        "{:?}",
        seen.headers.get("cookie")
    );
}

#[tokio::test]
async fn spoofed_identity_headers_never_override_the_session() {
    let world = World::start("").await;
    let mut browser = world.browser();
    login(&world, &mut browser, "/", "bob", &[]).await;
    let cookie = world.cookie_header(&browser);
    send(
        Request::get(world.gw.url("/x"))
            .header("cookie", format!("{cookie}; app_pref=dark"))
            .header("x-forwarded-user", "admin")
            .header("x_forwarded_groups", "admins")
            .header("x-forwarded-email", "admin@example.com")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    let seen = world.app.last();
    assert_eq!(seen.headers["x-forwarded-user"], "bob");
    assert_eq!(seen.headers["x-forwarded-email"], "bob@example.com");
    assert!(!seen.headers.contains_key("x-forwarded-groups"));
    assert_eq!(seen.headers["cookie"], "app_pref=dark");
}

#[tokio::test]
async fn scripts_get_401_json_and_browsers_get_a_login_redirect() {
    let world = World::start("").await;
    let api = send(
        Request::get(world.gw.url("/api/orders"))
            .header("accept", "application/json")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(api.status, 401);
    assert_eq!(api.json()["login_url"], "/oauth2/start");
    assert!(api.headers.contains_key("www-authenticate"));
    let xhr = send(
        Request::get(world.gw.url("/page"))
            .header("accept", "text/html")
            .header("x-requested-with", "XMLHttpRequest")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(xhr.status, 401);
    let mut browser = world.browser();
    let nav = browser.get(&world.gw.url("/page")).await;
    assert_eq!(nav.status, 302);
    assert_eq!(
        world.app.count(),
        0,
        "an unauthenticated request reached the app"
    );
}

#[tokio::test]
async fn a_replayed_callback_is_refused() {
    let world = World::start("").await;
    let mut browser = world.browser();
    let to_provider = location(&browser.get(&world.gw.url("/app")).await);
    // What an attacker who copied the browser mid-login holds: its login cookie, valid for
    // this state until the gateway has seen the state once.
    let mut copy = browser.clone();
    let callback = sign_in_at_provider(&world, &mut browser, &to_provider, "alice").await;
    let landed = browser.get(&callback).await;
    assert_eq!(location(&landed), "/app");
    assert!(!landed.cookies_set().is_empty(), "no session was created");
    assert_eq!(browser.get(&world.gw.url("/app")).await.status, 200);
    let served = world.app.count();

    // The same browser presents the same callback (state and code) again.
    let replay = browser.get(&callback).await;
    assert_eq!(replay.status, 400, "{}", replay.text());
    assert!(replay.text().contains("already used"), "{}", replay.text());
    assert_eq!(replay.cookies_set(), Vec::<String>::new());
    // The copy with the login cookie re-attached: the gateway itself remembers the state, so
    // the code is not even spent at the provider.
    assert_used_state_refused(&world, &mut copy, &callback, served).await;
    // The sign-in that used the callback first is untouched.
    let info = browser.get(&world.gw.url("/oauth2/userinfo")).await;
    assert_eq!(info.status, 200);
    assert_eq!(info.json()["user"], "alice");

    // And with no state at all, or two.
    let missing = browser
        .get(&world.gw.url("/oauth2/callback?code=abc"))
        .await;
    assert_eq!(missing.status, 400);
    let doubled = browser
        .get(&world.gw.url("/oauth2/callback?state=a&state=b&code=c"))
        .await;
    assert_eq!(doubled.status, 400);
}

#[tokio::test]
async fn a_used_state_replayed_with_its_login_cookie_and_a_fresh_code_is_refused() {
    // The attacker copied the browser's login cookie and the authorization request (state,
    // nonce, PKCE challenge) mid-login; after the victim's sign-in they run the same request
    // at the provider as themselves and bring a fresh code, bound to the same challenge, back
    // with the same state. Only the gateway's memory of used states stops this.
    let world = World::start("").await;
    let mut browser = world.browser();
    let to_provider = location(&browser.get(&world.gw.url("/app")).await);
    let mut attacker = browser.clone();
    let callback = sign_in_at_provider(&world, &mut browser, &to_provider, "alice").await;
    assert_eq!(location(&browser.get(&callback).await), "/app");
    assert_eq!(browser.get(&world.gw.url("/app")).await.status, 200);
    let served = world.app.count();

    let fresh = sign_in_at_provider(&world, &mut attacker, &to_provider, "mallory").await;
    assert_ne!(fresh, callback, "the provider issued the same code twice");
    assert_eq!(
        query_param(&fresh, "state"),
        query_param(&callback, "state")
    );
    assert_used_state_refused(&world, &mut attacker, &fresh, served).await;
    let info = browser.get(&world.gw.url("/oauth2/userinfo")).await;
    assert_eq!(info.json()["user"], "alice");
}

/// `callback` carries a state the gateway has seen: 400 "This sign-in link was already used"
/// from the gateway's memory of redeemed states (not the missing login cookie's "has expired
/// or was already used"), no cookie, `browser` not signed in, the app not reached (it had served `served`).
async fn assert_used_state_refused(
    world: &World,
    browser: &mut Browser,
    callback: &str,
    served: usize,
) {
    let replay = browser.get(callback).await;
    assert_eq!(replay.status, 400, "{}", replay.text());
    assert!(
        replay
            .text()
            .contains("This sign-in link was already used."),
        "{}",
        replay.text()
    );
    assert_eq!(replay.cookies_set(), Vec::<String>::new());
    assert_eq!(
        browser.get(&world.gw.url("/oauth2/userinfo")).await.status,
        401,
        "the replay signed its sender in"
    );
    assert_eq!(world.app.count(), served, "a replay reached the app");
}

#[tokio::test]
async fn a_callback_naming_another_issuer_is_refused_mix_up_attack() {
    // RFC 9207: the development provider says it sends `iss` with every authorization response,
    // so a response without it, or naming anyone else, did not come from it.
    let world = World::start("").await;
    let discovery = get(&format!(
        "{}/.well-known/openid-configuration",
        world.provider.issuer()
    ))
    .await;
    assert_eq!(
        discovery.json()["authorization_response_iss_parameter_supported"],
        true
    );
    let look_alike = format!("{}/", world.provider.issuer());
    for (attack, iss) in [
        ("another issuer", Some("https://attacker.example")),
        (
            "the issuer with a trailing slash",
            Some(look_alike.as_str()),
        ),
        ("no iss at all", None),
    ] {
        let mut browser = world.browser();
        let to_provider = location(&browser.get(&world.gw.url("/app")).await);
        let callback = sign_in_at_provider(&world, &mut browser, &to_provider, "alice").await;
        let reply = browser.get(&with_iss(&callback, iss)).await;
        assert_eq!(reply.status, 400, "{attack}: {}", reply.text());
        assert!(
            reply.text().contains("unexpected issuer"),
            "{attack}: {}",
            reply.text()
        );
        assert_eq!(reply.cookies_set(), Vec::<String>::new(), "{attack}");
        assert_eq!(
            browser.get(&world.gw.url("/oauth2/userinfo")).await.status,
            401,
            "{attack}: signed in"
        );
    }
    assert_eq!(world.app.count(), 0, "a mixed-up sign-in reached the app");

    // The same login with the provider's own `iss` (as it sends it) works.
    let mut browser = world.browser();
    let to_provider = location(&browser.get(&world.gw.url("/app")).await);
    let callback = sign_in_at_provider(&world, &mut browser, &to_provider, "alice").await;
    assert_eq!(
        query_param(&callback, "iss").as_deref(),
        Some(world.provider.issuer())
    );
    let landed = browser.get(&callback).await;
    assert_eq!(location(&landed), "/app");
    assert!(!landed.cookies_set().is_empty());
    assert_eq!(browser.get(&world.gw.url("/app")).await.status, 200);
    assert_eq!(world.app.last().headers["x-forwarded-user"], "alice");
}

#[tokio::test]
async fn markup_in_a_provider_error_is_shown_escaped_never_run() {
    // Reflected XSS through the callback: anyone can send a victim to the gateway's callback
    // with an error of their choosing (the state is the victim's own, from their redirect).
    let world = World::start("").await;
    let mut browser = world.browser();
    let to_provider = location(&browser.get(&world.gw.url("/app")).await);
    let state = query_param(&to_provider, "state").unwrap();
    let query = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("error", "access_denied<script>alert(1)</script>")
        .append_pair(
            "error_description",
            "<script>alert(2)</script><img src=x onerror=alert(3)>",
        )
        .append_pair("state", &state)
        .append_pair("iss", world.provider.issuer())
        .finish();
    let page = browser
        .get(&world.gw.url(&format!("/oauth2/callback?{query}")))
        .await;
    assert_eq!(page.status, 403, "{}", page.text());
    assert!(
        page.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html"),
        "{:?}",
        page.headers["content-type"]
    );
    let html = page.text();
    assert!(!html.contains("<script"), "{html}");
    assert!(!html.contains("<img"), "{html}");
    assert!(
        html.contains("access_denied&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{html}"
    );
    assert_eq!(page.cookies_set(), Vec::<String>::new());
    assert_eq!(
        browser.get(&world.gw.url("/oauth2/userinfo")).await.status,
        401
    );

    // A person cancelling at the provider sees the same page, with the provider's own error.
    let mut browser = world.browser();
    let to_provider = location(&browser.get(&world.gw.url("/app")).await);
    let form_page = browser.get(&to_provider).await;
    let request_id = hidden(&form_page.text(), "request_id");
    let back = browser
        .request(
            "POST",
            &format!("{}/authorize", world.provider.issuer()),
            Some(format!("request_id={request_id}&action=cancel")),
        )
        .await;
    let page = browser.get(&location(&back)).await;
    assert_eq!(page.status, 403, "{}", page.text());
    assert!(page.text().contains("(access_denied)"), "{}", page.text());
    assert_eq!(page.cookies_set(), Vec::<String>::new());
    assert_eq!(world.app.count(), 0, "a refused sign-in reached the app");
}

#[tokio::test]
async fn a_tampered_or_truncated_session_cookie_is_no_session() {
    let world = World::start("").await;
    let mut browser = world.browser();
    login(&world, &mut browser, "/", "alice", &[]).await;
    let host = world.gw.addr.to_string();
    let jar = browser.cookies(&host);
    let (name, value) = jar.iter().find(|(k, _)| !k.contains("login")).unwrap();
    // The last character changed (to one it is not: a fixed replacement would forge nothing
    // one time in 64).
    let other = if value.ends_with('A') { 'B' } else { 'A' };
    for forged in [
        format!("{}{other}", &value[..value.len() - 1]),
        value[..value.len() / 2].to_owned(),
        String::new(),
        "%%%".to_owned(),
    ] {
        let reply = send(
            Request::get(world.gw.url("/private"))
                .header("accept", "application/json")
                .header("cookie", format!("{name}={forged}"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
        assert_eq!(reply.status, 401, "forged cookie {forged:?}");
    }
    assert!(world.app.seen().iter().all(|s| s.target != "/private"));
}

/// Rule 6 through the running gateway: each form of open redirect, given as `rd` to a login,
/// lands the person on `/` after it, never elsewhere.
#[tokio::test]
async fn open_redirects_after_login_are_refused() {
    let world = World::start("").await;
    // The same login with a good rd lands there: a refusal below is the rule, not rd ignored.
    let mut browser = world.browser();
    let good = callback_reply_from(&world, &mut browser, "/oauth2/start?rd=%2Fok%3Fx%3D1").await;
    assert_eq!(location(&good), "/ok?x=1");
    let userinfo_here = format!("http://user:pw@{}/elsewhere", world.gw.addr);
    for bad in [
        "//evil.example/phish",
        "/\\evil.example",
        "\\\\evil.example",
        "https:evil.example",
        "https://evil.example/x",
        "http://app.example.com/x",
        "javascript:alert(1)",
        "%2F%2Fevil.example",
        "/%2F/evil.example",
        "/%5Cevil.example",
        "https://user:pw@127.0.0.1/",
        // Our own origin, with credentials before it: refused for the credentials alone.
        userinfo_here.as_str(),
    ] {
        let mut browser = world.browser();
        let rd: String = url::form_urlencoded::byte_serialize(bad.as_bytes()).collect();
        let landed =
            callback_reply_from(&world, &mut browser, &format!("/oauth2/start?rd={rd}")).await;
        assert_eq!(location(&landed), "/", "rd={bad:?}");
    }
    // A header injection through rd never gets as far as a login: encoded CR LF anywhere in
    // the target is refused (rule 26).
    let injected = get(&world
        .gw
        .url("/oauth2/start?rd=%2Fpath%0D%0ASet-Cookie%3A+x%3D1"))
    .await;
    assert_eq!(injected.status, 400);
}

#[tokio::test]
async fn a_person_outside_the_required_group_gets_the_403_page_not_a_login_loop() {
    let world = World::start("[[routes]]\npath_prefix = \"/admin\"\ngroups = [\"admins\"]\n").await;
    let mut browser = world.browser();
    let (page, _) = login(&world, &mut browser, "/admin/panel", "mallory", &["guests"]).await;
    assert_eq!(page.status, 403, "{}", page.text());
    assert!(page.text().contains("not allowed"), "{}", page.text());
    assert!(
        world
            .app
            .seen()
            .iter()
            .all(|s| !s.target.starts_with("/admin"))
    );
    let (page, _) = login(
        &world,
        &mut world.browser(),
        "/admin/panel",
        "alice",
        &["admins"],
    )
    .await;
    assert_eq!(page.status, 200);
}

#[tokio::test]
async fn public_routes_need_no_login_and_still_strip_identity_headers() {
    let world = World::start("[[routes]]\npath_prefix = \"/public\"\npolicy = \"public\"\n").await;
    let reply = send(
        Request::get(world.gw.url("/public/hello"))
            .header("x-forwarded-user", "admin")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert!(!world.app.last().headers.contains_key("x-forwarded-user"));
    // Dot-segments cannot borrow the public rule.
    let reply = send(
        Request::get(world.gw.url("/public/../private"))
            .header("accept", "application/json")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 401);
}

#[tokio::test]
async fn userinfo_and_sign_out() {
    let world = World::start("").await;
    let mut browser = world.browser();
    login(&world, &mut browser, "/", "alice", &["staff"]).await;
    let info = browser.get(&world.gw.url("/oauth2/userinfo")).await;
    assert_eq!(info.status, 200);
    assert_eq!(info.json()["user"], "alice");
    assert_eq!(info.json()["groups"][0], "staff");
    let out = browser.get(&world.gw.url("/oauth2/sign_out")).await;
    let to = location(&out);
    assert!(
        to.starts_with(&format!("{}/end_session", world.provider.issuer())),
        "{to}"
    );
    assert!(to.contains("id_token_hint="), "{to}");
    let after = browser.get(&world.gw.url("/oauth2/userinfo")).await;
    assert_eq!(after.status, 401);
}

#[tokio::test]
async fn a_provider_that_cannot_be_reached_fails_closed_with_503() {
    let dead = free_addr();
    let gw_addr = free_addr();
    let app = Upstream::start().await;
    let gw = Gateway::start(&format!(
        "[server]\nlisten = \"{gw_addr}\"\npublic_url = \"http://{gw_addr}\"\n\n\
         [provider]\nissuer = \"http://{dead}\"\nclient_id = \"gatehouse\"\nclient_secret = \"x\"\n\n\
         [session]\nsecret = \"c2Vzc2lvbi1zZWNyZXQtZm9yLXRlc3RzLW9ubHktMzJieXRlcyE=\"\n\n\
         [[routes]]\npath_prefix = \"/public\"\npolicy = \"public\"\n\n\
         [[upstreams]]\nurl = \"{}\"\n",
        app.url()
    ));
    assert_eq!(crate::support::get(&gw.url("/readyz")).await.status, 503);
    assert_eq!(crate::support::get(&gw.url("/healthz")).await.status, 200);
    let mut browser = Browser::default();
    let page = browser.get(&gw.url("/private")).await;
    assert_eq!(page.status, 503, "{}", page.text());
    assert!(page.headers.contains_key("retry-after"));
    assert_eq!(
        app.count(),
        0,
        "a protected request passed while the provider was down"
    );
    // Public routes do not need the provider.
    assert_eq!(crate::support::get(&gw.url("/public/x")).await.status, 200);
}

#[tokio::test]
async fn identity_header_names_and_token_passing_follow_the_configuration() {
    let world = World::start(
        "[headers]\nuser = \"Remote-User\"\ngroups = \"Remote-Groups\"\n\
         pass_access_token = true\npass_authorization_header = true\n\n\
         [[routes]]\npath_prefix = \"/public\"\npolicy = \"public\"\n",
    )
    .await;
    // The gateway sets Authorization, so a client's own never reaches the app, not even on
    // a public route where there is no login to set it from (rule 17).
    send(
        Request::get(world.gw.url("/public/x"))
            .header("authorization", "Bearer forged-by-the-client")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert!(
        !world.app.last().headers.contains_key("authorization"),
        "a client's Authorization reached the app"
    );
    let mut browser = world.browser();
    login(&world, &mut browser, "/", "alice", &["staff"]).await;
    let cookie = world.cookie_header(&browser);
    send(
        Request::get(world.gw.url("/api"))
            .header("cookie", cookie)
            .header("remote-user", "admin")
            .header("authorization", "Basic Zm9vOmJhcg==")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    let seen = world.app.last();
    assert_eq!(seen.headers["remote-user"], "alice");
    assert_eq!(seen.headers["remote-groups"], "staff");
    assert!(!seen.headers.contains_key("x-forwarded-user"));
    let token = seen.headers["x-forwarded-access-token"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(token.len() > 20, "{token}");
    assert_eq!(
        seen.headers["authorization"],
        format!("Bearer {token}").as_str()
    );
}

#[tokio::test]
async fn an_idle_session_is_refused_by_the_gateway_and_its_cookie_cleared() {
    // The extra keys land in [session]. This client keeps sending the cookie whatever its
    // Max-Age says, so only the gateway's own lifetime check can refuse it (rule 10).
    // Two seconds, not one: the session is stamped with the second the callback began, and a
    // busy machine may finish the login in the next one.
    let world = World::start("idle_timeout = \"2s\"\n").await;
    let mut browser = world.browser();
    let (page, _) = login(&world, &mut browser, "/", "alice", &[]).await;
    assert_eq!(page.status, 200);
    let cookie = world.cookie_header(&browser);
    let seen_before = world.app.count();
    tokio::time::sleep(std::time::Duration::from_millis(3100)).await;
    let reply = send(
        Request::get(world.gw.url("/private"))
            .header("accept", "application/json")
            .header("cookie", cookie)
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 401, "{}", reply.text());
    let cleared: Vec<&str> = reply
        .headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter(|v| v.to_ascii_lowercase().contains("max-age=0"))
        .collect();
    assert!(
        !cleared.is_empty(),
        "the expired session cookie was not cleared"
    );
    assert_eq!(
        world.app.count(),
        seen_before,
        "an expired session reached the app"
    );
}

/// What an attacker (or a misconfigured proxy the gateway does not trust) sends to make the
/// gateway believe it is served as `https://evil.example`.
const SPOOFED_ORIGIN: [(&str, &str); 4] = [
    ("host", "evil.example"),
    ("x-forwarded-host", "evil.example"),
    ("x-forwarded-proto", "https"),
    ("forwarded", "host=evil.example;proto=https"),
];

/// Every `Set-Cookie` of `reply` must be the plain-http cookie of the configured public URL:
/// no `Secure`, no `__Host-`/`__Secure-` prefix, no `Domain` (least of all evil.example).
fn assert_http_cookies(reply: &Reply, step: &str) {
    let set: Vec<String> = reply
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert!(!set.is_empty(), "{step}: no cookie was set");
    for cookie in &set {
        let lower = cookie.to_ascii_lowercase();
        let attributes: Vec<&str> = lower.split(';').skip(1).map(str::trim).collect();
        assert!(
            !attributes.contains(&"secure"),
            "{step}: a spoofed X-Forwarded-Proto made the cookie Secure: {cookie}"
        );
        assert!(
            !cookie.starts_with("__Host-") && !cookie.starts_with("__Secure-"),
            "{step}: a spoofed X-Forwarded-Proto gave the cookie an https-only prefix: {cookie}"
        );
        assert!(
            !attributes.iter().any(|a| a.starts_with("domain")),
            "{step}: {cookie}"
        );
    }
}

#[tokio::test]
async fn a_spoofed_host_or_forwarded_origin_never_steers_redirects_or_cookie_flags() {
    // Rule 27 (oauth2-proxy CVE-2026-40575, Traefik CVE-2026-35051): the world's public URL is
    // http://127.0.0.1:<port> and no proxy is trusted, so every `redirect_uri`, redirect and
    // cookie attribute comes from that URL, whatever the request says its origin is.
    let world = World::start("").await;
    let callback_uri = world.gw.url("/oauth2/callback");
    assert_eq!(world.provider.gateway_redirect_uri(), callback_uri);
    let mut browser = world.browser();

    // A person opening a deep link: sent to the provider with our own callback.
    let start = browser
        .get_with(&world.gw.url("/app/page?x=1"), &SPOOFED_ORIGIN)
        .await;
    let to_provider = location(&start);
    assert!(
        to_provider.starts_with(world.provider.issuer()),
        "{to_provider}"
    );
    assert_eq!(
        query_param(&to_provider, "redirect_uri").as_deref(),
        Some(callback_uri.as_str()),
        "the provider was told to send the code elsewhere: {to_provider}"
    );
    assert!(!to_provider.contains("evil.example"), "{to_provider}");
    assert_http_cookies(&start, "login cookie");

    // Back from the provider (the callback carries the same spoofed origin): the session
    // starts and the person lands on the deep link, on our origin.
    let callback = sign_in_at_provider(&world, &mut browser, &to_provider, "alice").await;
    let landed = browser.get_with(&callback, &SPOOFED_ORIGIN).await;
    assert_eq!(location(&landed), "/app/page?x=1");
    assert_http_cookies(&landed, "session cookie");
    assert_eq!(browser.get(&world.gw.url("/app/page")).await.status, 200);

    // An `rd` naming the spoofed origin is not "our own origin": the login returns to `/`.
    let mut other = world.browser();
    let start = other
        .get_with(
            &world
                .gw
                .url("/oauth2/start?rd=http%3A%2F%2Fevil.example%2Fphish"),
            &SPOOFED_ORIGIN,
        )
        .await;
    let to_provider = location(&start);
    assert_eq!(
        query_param(&to_provider, "redirect_uri").as_deref(),
        Some(callback_uri.as_str())
    );
    let callback = sign_in_at_provider(&world, &mut other, &to_provider, "bob").await;
    let landed = other.get_with(&callback, &SPOOFED_ORIGIN).await;
    assert_eq!(
        location(&landed),
        "/",
        "the spoofed Host made http://evil.example an allowed return target"
    );

    // Sign-out: the provider is asked to send the person back to our public URL.
    let out = browser
        .get_with(
            &world
                .gw
                .url("/oauth2/sign_out?rd=http%3A%2F%2Fevil.example%2Fbye"),
            &SPOOFED_ORIGIN,
        )
        .await;
    let to = location(&out);
    assert!(
        to.starts_with(&format!("{}/end_session", world.provider.issuer())),
        "{to}"
    );
    assert_eq!(
        query_param(&to, "post_logout_redirect_uri").as_deref(),
        Some(world.gw.url("/").as_str()),
        "{to}"
    );
    assert!(!to.contains("evil.example"), "{to}");
    assert_eq!(
        browser.get(&world.gw.url("/oauth2/userinfo")).await.status,
        401
    );

    // A script's 401 names the login path on our origin only.
    let api = send(
        Request::get(world.gw.url("/api/orders"))
            .header("accept", "application/json")
            .header("host", "evil.example")
            .header("x-forwarded-host", "evil.example")
            .header("x-forwarded-proto", "https")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(api.status, 401);
    assert_eq!(api.json()["login_url"], "/oauth2/start");
    assert!(
        !format!("{:?}", api.headers).contains("evil.example"),
        "{:?}",
        api.headers
    );
}

#[tokio::test]
async fn a_health_checker_user_agent_never_skips_login() {
    // Rule 28 (oauth2-proxy CVE-2026-34457): load balancers' and orchestrators' probes are
    // answered on the exact health paths only; their User-Agent opens nothing else.
    let world = World::start("").await;
    for agent in [
        "kube-probe/1.29",
        "GoogleHC/1.0",
        "ELB-HealthChecker/2.0",
        "Consul Health Check",
        "Envoy/HC",
        "Go-http-client/1.1",
    ] {
        let script = send(
            Request::get(world.gw.url("/admin/report"))
                .header("user-agent", agent)
                .header("accept", "application/json")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
        assert_eq!(script.status, 401, "{agent}: {}", script.text());
        assert_eq!(script.json()["login_url"], "/oauth2/start", "{agent}");

        let navigation = send(
            Request::get(world.gw.url("/admin/report"))
                .header("user-agent", agent)
                .header("accept", "text/html,application/xhtml+xml")
                .header("sec-fetch-mode", "navigate")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
        let to = location(&navigation);
        assert_eq!(navigation.status, 302, "{agent}");
        assert!(to.starts_with(world.provider.issuer()), "{agent}: {to}");

        // The probe's own path still answers it, from the gateway itself.
        let health = send(
            Request::get(world.gw.url("/healthz"))
                .header("user-agent", agent)
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
        assert_eq!(health.status, 200, "{agent}");
    }
    assert_eq!(
        world.app.count(),
        0,
        "a health checker's User-Agent reached the app without a login: {:?}",
        world
            .app
            .seen()
            .iter()
            .map(|s| &s.target)
            .collect::<Vec<_>>()
    );
}

/// Issue 11 point 1, "refreshed periodically": the provider's discovery document and keys are
/// fetched again every `discovery_refresh`, with no request asking for it.
#[tokio::test]
async fn discovery_and_keys_are_fetched_again_every_discovery_refresh() {
    use crate::support::issuer::TestIssuer;

    let issuer = TestIssuer::start().await;
    let (id, secret) = issuer.client();
    let gw = Gateway::start(&format!(
        "[provider]\nissuer = \"{iss}\"\nclient_id = \"{id}\"\nclient_secret = \"{secret}\"\n\
         redirect_url = \"http://127.0.0.1/oauth2/callback\"\ndiscovery_refresh = \"1s\"\n\
         [session]\nsecret = \"{session}\"\n\
         [[upstreams]]\nurl = \"http://127.0.0.1:9\"\n",
        iss = issuer.issuer(),
        session = crate::support::world::SESSION_SECRET,
    ));
    gw.wait_ready().await;
    let (discovery, jwks) = (issuer.discovery_fetches(), issuer.jwks_fetches());
    tokio::time::sleep(std::time::Duration::from_millis(3500)).await;
    assert!(
        issuer.discovery_fetches() >= discovery + 2,
        "discovery fetched {} times in 3.5 s after the first",
        issuer.discovery_fetches() - discovery
    );
    assert!(
        issuer.jwks_fetches() >= jwks + 2,
        "keys fetched {} times",
        issuer.jwks_fetches() - jwks
    );
}
