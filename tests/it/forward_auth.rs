//! Forward-auth mode: a real Debian nginx with `auth_request` in front of the app asks
//! Gatehouse's `/oauth2/auth` about every request, for a session cookie and for a bearer token;
//! Gatehouse itself forwards nothing. Also: the original URI is believed only from trusted
//! proxies (rule 27).

use crate::support::issuer::{DEFAULT_AUDIENCE, TestIssuer};
use crate::support::nginx::Nginx;
use crate::support::upstream::Upstream;
use crate::support::world::{World, login};
use crate::support::{Gateway, Reply, get, get_with};
use gatehouse::demo::provider::SERVICE_CLIENT_ID;

const BEARER: &str = "[bearer]\nenabled = true\naudiences = [\"gatehouse\"]\n\n\
    [[routes]]\npath_prefix = \"/public\"\npolicy = \"public\"\n\n\
    [[routes]]\npath_prefix = \"/orders\"\nscopes = [\"orders:write\"]\n";

/// nginx in front of the world's app, asking the world's gateway.
fn nginx_for(world: &World) -> Nginx {
    let gw = world.gw.addr;
    let app = world.app.url();
    Nginx::start(&format!(
        r#"
    location = /oauth2/auth {{
        internal;
        proxy_pass http://{gw};
        proxy_pass_request_body off;
        proxy_set_header Content-Length "";
        proxy_set_header X-Original-URI $request_uri;
        proxy_set_header X-Forwarded-Method $request_method;
        proxy_set_header X-Forwarded-Host $host;
    }}
    location / {{
        auth_request /oauth2/auth;
        auth_request_set $user $upstream_http_x_auth_request_user;
        auth_request_set $email $upstream_http_x_auth_request_email;
        auth_request_set $groups $upstream_http_x_auth_request_groups;
        auth_request_set $client $upstream_http_x_auth_request_client_id;
        auth_request_set $challenge $upstream_http_www_authenticate;
        auth_request_set $session_cookie $upstream_http_set_cookie;
        add_header Set-Cookie $session_cookie;
        proxy_set_header X-Forwarded-User $user;
        proxy_set_header X-Forwarded-Email $email;
        proxy_set_header X-Forwarded-Groups $groups;
        proxy_set_header X-Forwarded-Client-Id $client;
        error_page 401 = @unauthorized;
        proxy_pass {app};
    }}
    location @unauthorized {{
        add_header WWW-Authenticate $challenge always;
        return 401 "sign in\n";
    }}
"#
    ))
}

#[tokio::test]
async fn nginx_auth_request_lets_a_bearer_token_through_with_its_identity() {
    let world = World::start_with_server("trusted_proxies = [\"127.0.0.1/32\"]", BEARER).await;
    let nginx = nginx_for(&world);
    let token = world.service_token().await;

    let ok = get_with(
        &nginx.url("/api/items?x=1"),
        &[
            ("authorization", &format!("Bearer {token}")),
            ("x-forwarded-user", "admin"),
        ],
    )
    .await;
    assert_eq!(ok.status, 200, "{} {}", ok.text(), nginx.error_log());
    let seen = world.app.last();
    assert_eq!(seen.header("x-forwarded-user"), Some(SERVICE_CLIENT_ID));
    assert_eq!(
        seen.header("x-forwarded-client-id"),
        Some(SERVICE_CLIENT_ID)
    );
    assert_eq!(seen.target, "/api/items?x=1");

    // No credential: nginx answers 401 and passes the gateway's challenge on.
    let none = get(&nginx.url("/api/items")).await;
    assert_eq!(none.status, 401);
    assert_eq!(
        none.headers["www-authenticate"],
        "Bearer realm=\"gatehouse\""
    );

    // A bad token: 401 with invalid_token.
    let bad = get_with(
        &nginx.url("/api/items"),
        &[("authorization", "Bearer abc.def.ghi")],
    )
    .await;
    assert_eq!(bad.status, 401);
    assert!(
        bad.headers["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("error=\"invalid_token\"")
    );

    // The route policy is the one of the original URI: scopes missing there → 403.
    let scoped = get_with(
        &nginx.url("/orders/1"),
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await;
    assert_eq!(scoped.status, 403);

    // A public route needs nothing.
    let public = get(&nginx.url("/public/logo.png")).await;
    assert_eq!(public.status, 200);
    assert_eq!(world.app.last().header("x-forwarded-user"), None);
}

#[tokio::test]
async fn nginx_auth_request_lets_a_session_cookie_through_with_its_identity() {
    let world = World::start_with_server("trusted_proxies = [\"127.0.0.1/32\"]", BEARER).await;
    let nginx = nginx_for(&world);
    let mut browser = world.browser();
    let (page, _) = login(&world, &mut browser, "/", "alice", &["staff"]).await;
    assert_eq!(page.status, 200);
    let cookie = world.cookie_header(&browser);

    let ok = get_with(&nginx.url("/reports"), &[("cookie", &cookie)]).await;
    assert_eq!(ok.status, 200, "{}", nginx.error_log());
    let seen = world.app.last();
    assert_eq!(seen.header("x-forwarded-user"), Some("alice"));
    assert_eq!(seen.header("x-forwarded-email"), Some("alice@example.com"));
    assert_eq!(seen.header("x-forwarded-groups"), Some("staff"));

    let anonymous = get(&nginx.url("/reports")).await;
    assert_eq!(anonymous.status, 401);
}

/// The session a forward-auth check touched (idle timeout slid) comes back to the browser
/// through nginx's `add_header Set-Cookie`, as the README's snippet has it: without it an
/// active person is signed out when the idle timeout, counted from the login, runs out.
#[tokio::test]
async fn a_session_touched_by_a_forward_auth_check_reaches_the_browser_through_nginx() {
    // A 10 s idle timeout: the session is touched once a second (a tenth of it) of use.
    let world = World::start_with_server(
        "trusted_proxies = [\"127.0.0.1/32\"]",
        &format!("idle_timeout = \"10s\"\n{BEARER}"),
    )
    .await;
    let nginx = nginx_for(&world);
    let mut browser = world.browser();
    let (page, _) = login(&world, &mut browser, "/", "alice", &["staff"]).await;
    assert_eq!(page.status, 200);
    let cookie = world.cookie_header(&browser);
    let name = cookie.split('=').next().unwrap().to_owned();
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let touched = get_with(&nginx.url("/reports"), &[("cookie", &cookie)]).await;
    assert_eq!(touched.status, 200, "{}", nginx.error_log());
    let renewed: Vec<&str> = touched
        .headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter(|c| c.starts_with(&format!("{name}=")))
        .collect();
    assert_eq!(renewed.len(), 1, "{:?}", touched.headers);
    assert!(!renewed[0].contains("Max-Age=0"), "{}", renewed[0]);
}

/// Envoy's ext_authz HTTP service (`path_prefix: /oauth2/auth`) asks with the original
/// method and the original path below the prefix: the route policy is that request's, and
/// only a trusted proxy is believed (rule 27).
#[tokio::test]
async fn envoy_style_checks_carry_the_original_method_and_path() {
    // Anyone may POST to /inbox; any other method there needs a login.
    let world = World::start_with_server(
        "trusted_proxies = [\"127.0.0.1/32\"]",
        &format!(
            "{BEARER}\n[[routes]]\npath_prefix = \"/inbox\"\nmethods = [\"POST\"]\npolicy = \"public\"\n"
        ),
    )
    .await;
    let mut browser = world.browser();
    let (page, _) = login(&world, &mut browser, "/", "alice", &["staff"]).await;
    assert_eq!(page.status, 200);
    let cookie = world.cookie_header(&browser);
    let check = |method: &str, path: &str, cookie: Option<&str>| {
        let mut req = http::Request::builder()
            .method(method)
            .uri(world.gw.url(&format!("/oauth2/auth{path}")));
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        crate::support::send(
            req.body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap(),
        )
    };
    // A public route, asked about with POST: allowed, no identity needed.
    assert_eq!(check("POST", "/public/form?x=1", None).await.status, 202);
    // The check's own method is the original request's: POST /inbox is public, GET is not.
    assert_eq!(check("POST", "/inbox/new", None).await.status, 202);
    assert_eq!(check("GET", "/inbox/new", None).await.status, 401);
    // A protected one: a challenge without a session, the identity with one.
    assert_eq!(check("DELETE", "/reports/7", None).await.status, 401);
    let ok = check("PUT", "/reports/7", Some(&cookie)).await;
    assert_eq!(ok.status, 202);
    assert_eq!(ok.headers["x-auth-request-user"], "alice");
    // /orders needs a scope a browser session does not carry.
    assert_eq!(check("POST", "/orders/1", Some(&cookie)).await.status, 403);
    assert_eq!(
        world.app.count(),
        1,
        "only the login's landing reached the app"
    );

    // Not a trusted proxy: the path below /oauth2/auth is not believed.
    let untrusting = World::start(BEARER).await;
    let reply = crate::support::send(
        http::Request::post(untrusting.gw.url("/oauth2/auth/public/form"))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 401);
}

#[tokio::test]
async fn the_original_uri_is_believed_only_from_trusted_proxies() {
    // No trusted proxies: X-Original-URI naming a public path changes nothing.
    let world = World::start(BEARER).await;
    let spoofed = get_with(
        &world.gw.url("/oauth2/auth"),
        &[("x-original-uri", "/public/anything")],
    )
    .await;
    assert_eq!(spoofed.status, 401);

    let trusting = World::start_with_server("trusted_proxies = [\"127.0.0.1/32\"]", BEARER).await;
    let allowed = get_with(
        &trusting.gw.url("/oauth2/auth"),
        &[("x-original-uri", "/public/anything")],
    )
    .await;
    assert_eq!(allowed.status, 202);
    assert!(allowed.body.is_empty());
    // Two descriptions of the original request are one too many (rule 35).
    let twice = get_with(
        &trusting.gw.url("/oauth2/auth"),
        &[
            ("x-original-uri", "/public/a"),
            ("x-forwarded-uri", "/public/a"),
            ("x-forwarded-uri", "/admin"),
        ],
    )
    .await;
    assert_eq!(twice.status, 400);
    // The path is normalised before the policy is chosen (rule 21).
    let traversal = get_with(
        &trusting.gw.url("/oauth2/auth"),
        &[("x-forwarded-uri", "/public/../admin")],
    )
    .await;
    assert_eq!(traversal.status, 401);
}

/// `/oauth2/auth` asked about `GET|POST|… /items/7` (`method` `None`: no method header).
async fn ask_items(gw: &Gateway, method: Option<&str>, authorization: Option<&str>) -> Reply {
    let mut headers = vec![("x-forwarded-uri", "/items/7")];
    headers.extend(method.map(|m| ("x-forwarded-method", m)));
    headers.extend(authorization.map(|a| ("authorization", a)));
    get_with(&gw.url("/oauth2/auth"), &headers).await
}

/// A route whose policy applies to some methods only: through `/oauth2/auth`, the method that
/// chooses it is the one a trusted proxy names in `X-Forwarded-Method`; from any other address
/// the forwarded description is not believed and the default policy answers (rule 27).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_forwarded_method_chooses_the_route_policy_only_from_a_trusted_proxy() {
    let iss = TestIssuer::start().await;
    let app = Upstream::start().await;
    let config = |trusted: &str| {
        format!(
            "[server]\ntrusted_proxies = [\"{trusted}\"]\n\n\
             [[bearer.issuers]]\nissuer = \"{}\"\njwks_uri = \"{}\"\naudiences = [\"{DEFAULT_AUDIENCE}\"]\n\n\
             [[routes]]\npath_prefix = \"/items\"\nmethods = [\"POST\", \"DELETE\"]\nscopes = [\"orders:write\"]\n\n\
             [[routes]]\npath_prefix = \"/items\"\npolicy = \"public\"\n\n\
             [[upstreams]]\nurl = \"{}\"\n",
            iss.issuer(),
            iss.jwks_uri(),
            app.url()
        )
    };
    let reader = format!(
        "Bearer {}",
        iss.mint(DEFAULT_AUDIENCE)
            .sub("reader")
            .scope("orders:read")
            .sign()
    );
    let writer = format!(
        "Bearer {}",
        iss.mint(DEFAULT_AUDIENCE)
            .sub("writer")
            .scope("orders:read orders:write")
            .sign()
    );
    let trusting = Gateway::start(&config("127.0.0.1/32"));
    // Reading is public: no credential needed (GET is also what no method header means).
    for method in [Some("GET"), None] {
        let reply = ask_items(&trusting, method, None).await;
        assert_eq!(reply.status, 202, "{method:?}: {}", reply.text());
        assert!(!reply.headers.contains_key("x-auth-request-user"));
    }
    // Writing needs a token with orders:write.
    let anonymous = ask_items(&trusting, Some("POST"), None).await;
    assert_eq!(anonymous.status, 401, "{}", anonymous.text());
    assert_eq!(
        anonymous.headers["www-authenticate"],
        "Bearer realm=\"gatehouse\""
    );
    let short = ask_items(&trusting, Some("DELETE"), Some(&reader)).await;
    assert_eq!(short.status, 403, "{}", short.text());
    assert!(
        short.headers["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("error=\"insufficient_scope\""),
        "{:?}",
        short.headers
    );
    let ok = ask_items(&trusting, Some("POST"), Some(&writer)).await;
    assert_eq!(ok.status, 202, "{}", ok.text());
    assert_eq!(ok.headers["x-auth-request-user"], "writer");

    // The same questions from an address outside trusted_proxies: neither the method nor the
    // URI is believed, so a claimed GET opens nothing and a claimed DELETE asks for nothing
    // beyond the default policy (any valid token).
    let wary = Gateway::start(&config("10.0.0.0/8"));
    let claimed_get = ask_items(&wary, Some("GET"), None).await;
    assert_eq!(claimed_get.status, 401, "{}", claimed_get.text());
    let claimed_delete = ask_items(&wary, Some("DELETE"), Some(&reader)).await;
    assert_eq!(claimed_delete.status, 202, "{}", claimed_delete.text());
    assert_eq!(claimed_delete.headers["x-auth-request-user"], "reader");
    assert_eq!(app.count(), 0, "forward-auth forwards nothing");
}
