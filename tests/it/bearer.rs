//! Machine callers: bearer tokens in front of a recording app (security rules 14, 15, 16, 32,
//! 36; RFC 6750, RFC 7662, RFC 8725, RFC 9068).
//!
//! What a caller notices: the status, the RFC 6750 `WWW-Authenticate` challenge and JSON body,
//! and what the app behind the gateway received (identity headers, `Authorization` or not).
//! Tokens come from `TestIssuer` (every algorithm and every attack shape), from the real
//! oidc-provider (client credentials: an RS256 `at+jwt` for `api://orders`, an opaque token
//! without) and from the development provider (client credentials and the password grant
//! behind the password bridge). Security tests are named after the attack.

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use gatehouse::demo::provider::{DEMO_PASSWORD, SERVICE_CLIENT_ID};
use http::Request;
use http_body_util::Full;
use serde_json::json;

use crate::support::issuer::{Alg, DEFAULT_AUDIENCE, Outage, TestIssuer, b64};
use crate::support::oidc::{self, OidcProvider};
use crate::support::upstream::Upstream;
use crate::support::world::{World, location};
use crate::support::{Gateway, Reply, get_with, send};

/// A gateway trusting `iss` (its JWKS, the default audience) in front of `app`, after the
/// TOML `before` (another section, or nothing).
fn one_issuer(before: &str, iss: &TestIssuer, app: &Upstream) -> String {
    format!(
        "{before}\n[[bearer.issuers]]\nissuer = \"{}\"\njwks_uri = \"{}\"\naudiences = [\"{DEFAULT_AUDIENCE}\"]\n\n\
         [[upstreams]]\nurl = \"{}\"\n",
        iss.issuer(),
        iss.jwks_uri(),
        app.url()
    )
}

// ---- the setup ---------------------------------------------------------------------------------

/// How a gateway in front of a `TestIssuer` is configured; each field is TOML lines.
#[derive(Default)]
struct Setup {
    /// Lines in `[bearer]`.
    bearer: &'static str,
    /// Lines in the issuer's `[[bearer.issuers]]`; `None`: no JWT issuer at all.
    issuer: Option<&'static str>,
    /// Lines in `[bearer.introspection]` (endpoint and client are filled in); `None`: off.
    introspection: Option<&'static str>,
    /// Lines in `[server]` (`listen` is filled in).
    server: &'static str,
}

impl Setup {
    fn jwt() -> Self {
        Self {
            issuer: Some(""),
            ..Self::default()
        }
    }

    fn introspection(lines: &'static str) -> Self {
        Self {
            introspection: Some(lines),
            ..Self::default()
        }
    }
}

/// A `TestIssuer`, the app, and a gateway trusting the issuer (JWKS at its `/jwks`, audience
/// `api://orders`). Routes: `/public/…` public, `/orders/…` needs the scope `orders:write`,
/// anything else needs any valid token.
struct Api {
    iss: TestIssuer,
    app: Upstream,
    gw: Gateway,
}

impl Api {
    async fn start(setup: Setup) -> Self {
        Self::start_with_issuer(TestIssuer::start().await, setup).await
    }

    async fn start_with_issuer(iss: TestIssuer, setup: Setup) -> Self {
        Self::start_full(iss, setup, &[]).await
    }

    /// With the gateway's process environment extended by `env` (`RUST_LOG`, say).
    async fn start_with_env(setup: Setup, env: &[(&str, &str)]) -> Self {
        Self::start_full(TestIssuer::start().await, setup, env).await
    }

    async fn start_full(iss: TestIssuer, setup: Setup, env: &[(&str, &str)]) -> Self {
        let app = Upstream::start().await;
        let gw = Gateway::start_with_env(&Self::config(&iss, &app, &setup), env);
        let api = Self { iss, app, gw };
        if setup.issuer.is_some() {
            api.keys_loaded().await;
        }
        api
    }

    /// Another gateway in front of the same issuer and app, configured by `setup`. Returns once
    /// it fetched the JWKS too.
    async fn another_gateway(&self, setup: Setup) -> Gateway {
        let fetched = self.iss.jwks_fetches();
        let gw = Gateway::start(&Self::config(&self.iss, &self.app, &setup));
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.iss.jwks_fetches() == fetched {
            assert!(
                Instant::now() < deadline,
                "the gateway never fetched the JWKS"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        gw
    }

    fn config(iss: &TestIssuer, app: &Upstream, setup: &Setup) -> String {
        let mut config = format!(
            "[server]\n{}\n\n[bearer]\n{}\n\n",
            setup.server, setup.bearer
        );
        if let Some(lines) = setup.introspection {
            let (id, secret) = iss.client();
            config.push_str(&format!(
                "[bearer.introspection]\nendpoint = \"{}\"\nclient_id = \"{id}\"\nclient_secret = \"{secret}\"\n{lines}\n\n",
                iss.introspection_endpoint()
            ));
        }
        if let Some(lines) = setup.issuer {
            config.push_str(&format!(
                "[[bearer.issuers]]\nissuer = \"{}\"\njwks_uri = \"{}\"\naudiences = [\"{DEFAULT_AUDIENCE}\"]\n{lines}\n\n",
                iss.issuer(),
                iss.jwks_uri()
            ));
        }
        config.push_str(&format!(
            "[[routes]]\npath_prefix = \"/public\"\npolicy = \"public\"\n\n\
             [[routes]]\npath_prefix = \"/orders\"\nscopes = [\"orders:write\"]\n\n\
             [[upstreams]]\nurl = \"{}\"\n",
            app.url()
        ));
        config
    }

    /// Waits until the gateway's start-up JWKS load reached the issuer. (A token request that
    /// races that load waits for it inside the gateway, so this is enough.)
    async fn keys_loaded(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.iss.jwks_fetches() == 0 {
            assert!(
                Instant::now() < deadline,
                "the gateway never fetched the JWKS"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn get(&self, path: &str, token: &str) -> Reply {
        call(
            &self.gw,
            path,
            &[("authorization", &format!("Bearer {token}"))],
        )
        .await
    }
}

async fn call(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> Reply {
    get_with(&gw.url(path), headers).await
}

/// The one `WWW-Authenticate` value (several are a failure unless asked for with `challenges`).
fn challenge(reply: &Reply) -> String {
    let all = challenges(reply);
    assert_eq!(all.len(), 1, "one challenge expected: {all:?}");
    all.into_iter().next().unwrap()
}

fn challenges(reply: &Reply) -> Vec<String> {
    reply
        .headers
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

/// The value of `name="…"` in a challenge.
fn param(challenge: &str, name: &str) -> Option<String> {
    let start = challenge.find(&format!("{name}=\""))? + name.len() + 2;
    let len = challenge[start..].find('"')?;
    Some(challenge[start..start + len].to_owned())
}

/// Strings an answer must never show: the issuer's public key material (JWK members, the PEM
/// body), the key ids, and the token's own segments.
fn leak_probes(iss: &TestIssuer, token: &str) -> Vec<String> {
    let mut probes = Vec::new();
    for key in iss.jwks()["keys"].as_array().unwrap() {
        for member in ["n", "x", "y"] {
            if let Some(v) = key[member].as_str() {
                probes.push(v[..24].to_owned());
            }
        }
        probes.push(key["kid"].as_str().unwrap().to_owned());
    }
    let pem = iss.rsa_public_pem();
    probes.push(pem.lines().nth(2).unwrap().to_owned());
    probes.extend(
        token
            .split('.')
            .filter(|s| s.len() >= 16)
            .map(|s| s[..16].to_owned()),
    );
    probes
}

/// 401, `error="invalid_token"` with a description in the challenge and the body, and nothing
/// of `probes` anywhere in the answer.
fn assert_invalid_token(reply: &Reply, attack: &str, probes: &[String]) {
    assert_eq!(reply.status, 401, "{attack}: {}", reply.text());
    let c = challenge(reply);
    assert!(c.starts_with("Bearer realm=\"gatehouse\""), "{attack}: {c}");
    assert_eq!(
        param(&c, "error").as_deref(),
        Some("invalid_token"),
        "{attack}: {c}"
    );
    let description = param(&c, "error_description").unwrap_or_default();
    assert!(!description.is_empty(), "{attack}: no description in {c}");
    let body = reply.json();
    assert_eq!(body["error"], "invalid_token", "{attack}");
    assert_eq!(body["error_description"], description, "{attack}");
    for probe in probes {
        assert!(
            !c.contains(probe.as_str()) && !reply.text().contains(probe.as_str()),
            "{attack}: the answer shows {probe:?}: {c} {}",
            reply.text()
        );
    }
}

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
}

// ---- accepted tokens ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_tokens_of_every_algorithm_reach_the_app_with_their_identity() {
    let api = Api::start(Setup::jwt()).await;
    for alg in [Alg::RS256, Alg::PS256, Alg::ES256, Alg::EdDSA] {
        let sub = format!("svc-{}", alg.name().to_lowercase());
        let token = api
            .iss
            .mint(DEFAULT_AUDIENCE)
            .alg(alg)
            .sub(&sub)
            .claim("email", json!(format!("{sub}@example.com")))
            .claim("groups", json!(["billing", "ops"]))
            .sign();
        let reply = api
            .get(&format!("/api/items?alg={}", alg.name()), &token)
            .await;
        assert_eq!(reply.status, 200, "{alg:?}: {}", reply.text());
        let seen = api.app.last();
        assert_eq!(seen.target, format!("/api/items?alg={}", alg.name()));
        assert_eq!(seen.header("x-forwarded-user"), Some(sub.as_str()));
        assert_eq!(
            seen.header("x-forwarded-email"),
            Some(format!("{sub}@example.com").as_str())
        );
        assert_eq!(seen.header("x-forwarded-groups"), Some("billing,ops"));
        assert_eq!(seen.header("x-forwarded-client-id"), Some("test-client"));
    }
    // `aud` as an array naming us among others is accepted too (rule 32).
    let token = api
        .iss
        .mint(DEFAULT_AUDIENCE)
        .aud(json!(["api://other", DEFAULT_AUDIENCE]))
        .sign();
    assert_eq!(api.get("/api/items", &token).await.status, 200);
    assert_eq!(api.app.count(), 5);
}

/// `gatehouse-service` at the real oidc-provider; the gateway trusts it through
/// `[[bearer.issuers]]` with discovery only (no `jwks_uri`) and `require_typ`, and introspects
/// its opaque tokens at the provider's introspection endpoint as the `gatehouse` client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_provider_client_credentials_tokens_are_accepted_as_jwt_and_by_introspection() {
    if !oidc::node_available(
        "oidc_provider_client_credentials_tokens_are_accepted_as_jwt_and_by_introspection",
    ) {
        return;
    }
    let op = tokio::task::spawn_blocking(|| OidcProvider::start(&[]))
        .await
        .unwrap();
    let app = Upstream::start().await;
    let gw = Gateway::start(&format!(
        "[bearer]\n\n\
         [bearer.introspection]\nendpoint = \"{introspection}\"\nclient_id = \"gatehouse\"\nclient_secret = \"{secret}\"\n\n\
         [[bearer.issuers]]\nissuer = \"{issuer}\"\naudiences = [\"{resource}\"]\nrequire_typ = true\n\n\
         [[routes]]\npath_prefix = \"/orders\"\nscopes = [\"orders:write\"]\n\n\
         [[upstreams]]\nurl = \"{app}\"\n",
        introspection = op.introspection_endpoint(),
        secret = op.client_secret(),
        issuer = op.issuer(),
        resource = oidc::API_RESOURCE,
        app = app.url(),
    ));

    let jwt = op
        .client_credentials_token(Some(oidc::API_RESOURCE), "orders:read orders:write")
        .await;
    assert_eq!(
        jsonwebtoken::decode_header(&jwt).unwrap().typ.as_deref(),
        Some("at+jwt")
    );
    // The keys are found by discovery in the background: until then the answer is 503, never
    // 401 and never a pass.
    let deadline = Instant::now() + Duration::from_secs(10);
    let reply = loop {
        let reply = call(
            &gw,
            "/orders/1",
            &[("authorization", &format!("Bearer {jwt}"))],
        )
        .await;
        if reply.status != 503 || Instant::now() > deadline {
            break reply;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(reply.status, 200, "{}\n{}", reply.text(), gw.logs());
    let seen = app.last();
    assert_eq!(
        seen.header("x-forwarded-user"),
        Some(oidc::SERVICE_CLIENT_ID)
    );
    assert_eq!(
        seen.header("x-forwarded-client-id"),
        Some(oidc::SERVICE_CLIENT_ID)
    );
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {jwt}").as_str())
    );

    let opaque = op
        .client_credentials_token(None, "orders:read orders:write")
        .await;
    assert!(!opaque.contains('.'), "opaque: {opaque}");
    let reply = call(
        &gw,
        "/orders/2",
        &[("authorization", &format!("Bearer {opaque}"))],
    )
    .await;
    assert_eq!(reply.status, 200, "{}\n{}", reply.text(), gw.logs());
    let seen = app.last();
    assert_eq!(seen.target, "/orders/2");
    assert_eq!(
        seen.header("x-forwarded-client-id"),
        Some(oidc::SERVICE_CLIENT_ID)
    );
    assert_eq!(
        seen.header("x-forwarded-user"),
        Some(oidc::SERVICE_CLIENT_ID)
    );

    // The scope policy applies to both kinds of tokens.
    let read_only = op.client_credentials_token(None, "orders:read").await;
    let reply = call(
        &gw,
        "/orders/3",
        &[("authorization", &format!("Bearer {read_only}"))],
    )
    .await;
    assert_eq!(reply.status, 403, "{}", reply.text());
    let read_only = op
        .client_credentials_token(Some(oidc::API_RESOURCE), "orders:read")
        .await;
    let reply = call(
        &gw,
        "/orders/3",
        &[("authorization", &format!("Bearer {read_only}"))],
    )
    .await;
    assert_eq!(reply.status, 403, "{}", reply.text());
    assert_eq!(app.count(), 2);
}

// ---- attacks on JWTs ---------------------------------------------------------------------------

/// Every shape of forged, misdirected, stale or broken JWT is a 401 `invalid_token` whose
/// description shows nothing of the keys or the token, and none reaches the app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_misdirected_and_malformed_jwts_are_refused_with_invalid_token() {
    let api = Api::start(Setup::jwt()).await;
    let iss = &api.iss;
    let m = || iss.mint(DEFAULT_AUDIENCE);

    let dup_claims = {
        let mint = m();
        let claims = mint.claims_json().replacen('{', "{\"sub\":\"admin\",", 1);
        mint.raw_claims(&claims).sign()
    };
    let dup_private_claim = {
        let mint = m().scope("orders:read");
        let claims = mint
            .claims_json()
            .replacen('{', "{\"scope\":\"orders:write admin\",", 1);
        mint.raw_claims(&claims).sign()
    };
    let dup_header = {
        let mint = m();
        let header = mint.header_json().replacen('{', "{\"alg\":\"none\",", 1);
        mint.raw_header(&header).sign()
    };
    let (h, c, s) = m().segments();
    let attacks: Vec<(&str, String)> = vec![
        ("alg_none", m().alg_none().sign()),
        (
            "alg_none_with_a_signature",
            m().alg_none().signature_bytes(b"anything").sign(),
        ),
        (
            "hs256_keyed_with_the_rsa_public_key_pem",
            m().hs256_with_rsa_public_pem().sign(),
        ),
        ("wrong_issuer", m().iss("http://127.0.0.1:1").sign()),
        ("wrong_issuer_with_a_trailing_path", {
            m().iss(&format!("{}/evil", iss.issuer())).sign()
        }),
        ("wrong_audience", m().aud(json!("api://billing")).sign()),
        ("audience_list_without_us", {
            m().aud(json!(["api://billing", "api://orders-evil"]))
                .sign()
        }),
        ("no_audience", m().remove_claim("aud").sign()),
        ("expired", m().exp_in(-120).sign()),
        ("not_yet_valid_beyond_the_leeway", m().nbf_in(120).sign()),
        ("issued_in_the_future", m().iat_in(3600).sign()),
        ("missing_exp", m().remove_claim("exp").sign()),
        ("exp_as_a_string", {
            m().claim("exp", json!("9999999999")).sign()
        }),
        (
            "ecdsa_all_zero_signature_cve_2022_21449",
            m().ecdsa_zero_signature().sign(),
        ),
        ("tampered_rs256_signature", m().tamper_signature().sign()),
        (
            "tampered_es256_signature",
            m().alg(Alg::ES256).tamper_signature().sign(),
        ),
        (
            "tampered_eddsa_signature",
            m().alg(Alg::EdDSA).tamper_signature().sign(),
        ),
        (
            "rsa_key_used_for_es256",
            m().alg(Alg::ES256).kid(&iss.rsa_kid()).sign(),
        ),
        ("jku_pointing_to_the_attacker", m().jku_attack().sign()),
        ("x5u_pointing_to_the_attacker", m().x5u_attack().sign()),
        ("embedded_jwk", m().embedded_jwk().sign()),
        (
            "unknown_crit_extension",
            m().crit("x-must-understand").sign(),
        ),
        ("duplicate_claim_member", dup_claims),
        ("duplicate_private_claim_member", dup_private_claim),
        ("duplicate_header_member", dup_header),
        ("two_segments", format!("{h}.{c}")),
        ("four_segments", format!("{h}.{c}.{s}.{s}")),
        ("empty_signature_segment", format!("{h}.{c}.")),
        // `+` is a b64token character but not base64url: a valid header, a broken payload.
        ("payload_not_base64url", format!("{h}.+{}.{s}", &c[1..])),
        (
            "header_not_json",
            format!("{}.{c}.{s}", b64(b"{\"alg\":\"RS256\",")),
        ),
        (
            "payload_not_json",
            format!("{h}.{}.{s}", b64(b"not json at all")),
        ),
        ("payload_an_array", format!("{h}.{}.{s}", b64(b"[1,2]"))),
        (
            "not_a_jwt_and_no_introspection",
            "opaque-but-unknown".to_owned(),
        ),
    ];
    for (attack, token) in &attacks {
        let reply = api.get("/api/items", token).await;
        assert_invalid_token(&reply, attack, &leak_probes(iss, token));
    }
    assert!(
        iss.trap_hits().is_empty(),
        "the gateway fetched an attacker's key: {:?}",
        iss.trap_hits()
    );
    assert_eq!(api.app.count(), 0, "an attack token reached the app");

    // The same claims, properly signed, pass: the refusals above are the attacks' doing.
    assert_eq!(api.get("/api/items", &m().sign()).await.status, 200);
    assert_eq!(
        api.get("/api/items", &m().nbf_in(30).iat_in(30).sign())
            .await
            .status,
        200,
        "nbf and iat within the 60 s leeway"
    );
    assert_eq!(
        api.get("/api/items", &m().exp_in(-30).sign()).await.status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_jwt_is_refused_once_it_expires() {
    // One worker: every request meets the same per-worker memory of verified tokens, the
    // cache in front of the shared one. Leeway 1 s instead of the default 60 s.
    let api = Api::start(Setup {
        server: "workers = 1",
        bearer: "leeway = \"1s\"",
        ..Setup::jwt()
    })
    .await;
    // Four seconds: both calls below must land inside it even on a busy machine.
    let exp = gatehouse::oidc::unix_now() + 4;
    let token = api
        .iss
        .mint(DEFAULT_AUDIENCE)
        .sub("short-lived")
        .claim("exp", json!(exp))
        .sign();
    // Verified, then served from the cache.
    for path in ["/api/a", "/api/b"] {
        let reply = api.get(path, &token).await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.text());
    }
    assert_eq!(
        api.app.last().header("x-forwarded-user"),
        Some("short-lived")
    );
    // Past exp plus the leeway (whole seconds).
    while gatehouse::oidc::unix_now() <= exp + 1 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reply = api.get("/api/c", &token).await;
    assert_invalid_token(
        &reply,
        "expired after it was cached",
        &leak_probes(&api.iss, &token),
    );
    assert_eq!(api.app.count(), 2, "the expired token reached the app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_without_the_at_jwt_type_is_refused_when_require_typ_is_set() {
    let api = Api::start(Setup {
        issuer: Some("require_typ = true"),
        ..Setup::default()
    })
    .await;
    let id_token_shaped = api.iss.mint(DEFAULT_AUDIENCE).typ("JWT").sign();
    let reply = api.get("/api/items", &id_token_shaped).await;
    assert_invalid_token(&reply, "typ JWT", &leak_probes(&api.iss, &id_token_shaped));
    let untyped = api.iss.mint(DEFAULT_AUDIENCE).remove_header("typ").sign();
    assert_eq!(api.get("/api/items", &untyped).await.status, 401);
    let typed = api.iss.mint(DEFAULT_AUDIENCE).sign();
    assert_eq!(api.get("/api/items", &typed).await.status, 200);
    let media_type = api
        .iss
        .mint(DEFAULT_AUDIENCE)
        .typ("application/at+jwt")
        .sign();
    assert_eq!(api.get("/api/items", &media_type).await.status, 200);
    assert_eq!(api.app.count(), 2);
}

/// An issuer's `algorithms` is its allow-list: a token signed by a key its JWKS does publish,
/// with an algorithm that key could verify, is refused when the algorithm is not listed
/// (RFC 8725 §3.1, rule 14) — and the very same token passes where it is listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_algorithm_outside_the_issuers_allow_list_is_refused_even_with_a_published_key() {
    let api = Api::start(Setup {
        issuer: Some("algorithms = [\"RS256\"]"),
        ..Setup::default()
    })
    .await;
    let m = |alg: Alg| {
        api.iss
            .mint(DEFAULT_AUDIENCE)
            .alg(alg)
            .sub(alg.name())
            .sign()
    };
    // PS256 uses the RSA key that also signs the allowed RS256: the key does not decide.
    let outside: Vec<(Alg, String)> = [Alg::ES256, Alg::EdDSA, Alg::PS256]
        .into_iter()
        .map(|alg| (alg, m(alg)))
        .collect();
    for (alg, token) in &outside {
        let reply = api.get("/api/items", token).await;
        assert_invalid_token(&reply, alg.name(), &leak_probes(&api.iss, token));
        assert_eq!(
            reply.json()["error_description"],
            "the token's algorithm is not accepted",
            "{alg:?}"
        );
    }
    assert_eq!(
        api.app.count(),
        0,
        "a token outside the allow-list reached the app"
    );
    let allowed = api.get("/api/items", &m(Alg::RS256)).await;
    assert_eq!(allowed.status, 200, "{}", allowed.text());

    // The same tokens, in front of a gateway that allows their algorithms, pass.
    let wide = api
        .another_gateway(Setup {
            issuer: Some("algorithms = [\"RS256\", \"ES256\", \"EdDSA\", \"PS256\"]"),
            ..Setup::default()
        })
        .await;
    for (alg, token) in &outside {
        let reply = call(
            &wide,
            "/api/items",
            &[("authorization", &format!("Bearer {token}"))],
        )
        .await;
        assert_eq!(reply.status, 200, "{alg:?}: {}", reply.text());
        assert_eq!(api.app.last().header("x-forwarded-user"), Some(alg.name()));
    }
}

/// With `pass_authorization_header` the gateway sets `Authorization` and strips the client's
/// (rule 17); a bearer caller's own token still reaches the app, set again from its identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_pass_authorization_header_a_callers_token_still_reaches_the_app() {
    let iss = TestIssuer::start().await;
    let app = Upstream::start().await;
    let gw = Gateway::start(&one_issuer(
        "[headers]\npass_authorization_header = true\n",
        &iss,
        &app,
    ));
    let token = iss.mint(DEFAULT_AUDIENCE).sign();
    let bearer = format!("Bearer {token}");
    let reply = call(&gw, "/api/items", &[("authorization", &bearer)]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(app.last().header("authorization"), Some(bearer.as_str()));
}

/// Two trusted issuers, each with its own audience: everything about a token is checked
/// against the issuer its `iss` names — audience and key alike — never against the union.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_issuers_are_validated_apart_audience_and_key_of_the_one_named_by_iss() {
    const BILLING: &str = "api://billing";
    let (a, b) = (TestIssuer::start().await, TestIssuer::start().await);
    let app = Upstream::start().await;
    let gw = Gateway::start(&format!(
        "[[bearer.issuers]]\nissuer = \"{}\"\njwks_uri = \"{}\"\naudiences = [\"{DEFAULT_AUDIENCE}\"]\n\n\
         [[bearer.issuers]]\nissuer = \"{}\"\njwks_uri = \"{}\"\naudiences = [\"{BILLING}\"]\n\n\
         [[upstreams]]\nurl = \"{}\"\n",
        a.issuer(),
        a.jwks_uri(),
        b.issuer(),
        b.jwks_uri(),
        app.url()
    ));
    let get = |token: String| {
        let gw = &gw;
        async move {
            call(
                gw,
                "/api/items",
                &[("authorization", &format!("Bearer {token}"))],
            )
            .await
        }
    };

    // Each issuer's own good token passes (this also waits for both key sets).
    for (iss, aud, sub) in [(&a, DEFAULT_AUDIENCE, "from-a"), (&b, BILLING, "from-b")] {
        let reply = get(iss.mint(aud).sub(sub).sign()).await;
        assert_eq!(reply.status, 200, "{sub}: {}", reply.text());
        assert_eq!(app.last().header("x-forwarded-user"), Some(sub));
    }

    let attacks: Vec<(&str, String)> = vec![
        ("a_token_of_a_for_the_audience_of_b", a.mint(BILLING).sign()),
        (
            "a_token_of_b_for_the_audience_of_a",
            b.mint(DEFAULT_AUDIENCE).sign(),
        ),
        (
            "iss_a_signed_by_the_key_of_b",
            b.mint(DEFAULT_AUDIENCE).iss(a.issuer()).sign(),
        ),
        ("iss_a_signed_by_the_key_of_b_under_the_kid_of_a", {
            b.mint(DEFAULT_AUDIENCE)
                .iss(a.issuer())
                .kid(&a.rsa_kid())
                .sign()
        }),
        ("iss_a_signed_by_the_key_of_b_without_kid", {
            b.mint(DEFAULT_AUDIENCE).iss(a.issuer()).no_kid().sign()
        }),
        ("iss_a_signed_by_the_ec_key_of_b", {
            b.mint(DEFAULT_AUDIENCE)
                .alg(Alg::ES256)
                .iss(a.issuer())
                .sign()
        }),
    ];
    for (attack, token) in &attacks {
        let reply = get(token.clone()).await;
        let mut probes = leak_probes(&a, token);
        probes.extend(leak_probes(&b, token));
        assert_invalid_token(&reply, attack, &probes);
    }
    assert_eq!(
        app.count(),
        2,
        "a token checked against the wrong issuer reached the app"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_token_gets_a_clean_4xx_and_the_gateway_keeps_serving() {
    let api = Api::start(Setup::jwt()).await;
    let huge = api
        .iss
        .mint(DEFAULT_AUDIENCE)
        .claim("pad", json!("x".repeat(64 * 1024)))
        .sign();
    assert!(huge.len() > 64 * 1024);
    let reply = api.get("/api/items", &huge).await;
    assert!(
        reply.status == 431 || reply.status == 401,
        "a 64 KB token: {} {}",
        reply.status,
        reply.text()
    );
    // Under the header limit but over max_token_bytes (8 KiB): refused before any parsing.
    let large = api
        .iss
        .mint(DEFAULT_AUDIENCE)
        .claim("pad", json!("x".repeat(12 * 1024)))
        .sign();
    let reply = api.get("/api/items", &large).await;
    assert_invalid_token(
        &reply,
        "token over max_token_bytes",
        &leak_probes(&api.iss, &large),
    );
    assert_eq!(api.app.count(), 0);
    let ok = api
        .get("/api/items", &api.iss.mint(DEFAULT_AUDIENCE).sign())
        .await;
    assert_eq!(ok.status, 200, "the gateway still serves");
}

// ---- where the token comes from (rule 16) --------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_in_the_query_string_is_ignored_unless_configured() {
    let api = Api::start(Setup::jwt()).await;
    let token = api.iss.mint(DEFAULT_AUDIENCE).sign();
    let reply = call(&api.gw, &format!("/api/items?access_token={token}"), &[]).await;
    assert_eq!(reply.status, 401, "{}", reply.text());
    assert_eq!(
        challenge(&reply),
        "Bearer realm=\"gatehouse\"",
        "no credentials seen: a bare challenge (RFC 6750 §3.1)"
    );
    assert_eq!(api.app.count(), 0, "the app was reached");

    let api = Api::start_with_issuer(
        TestIssuer::start().await,
        Setup {
            bearer: "query_parameter = \"access_token\"",
            issuer: Some(""),
            ..Setup::default()
        },
    )
    .await;
    let token = api.iss.mint(DEFAULT_AUDIENCE).sub("query-caller").sign();
    let reply = call(&api.gw, &format!("/api/items?access_token={token}"), &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        api.app.last().header("x-forwarded-user"),
        Some("query-caller")
    );
    // RFC 6750 §2: one method per request.
    let both = call(
        &api.gw,
        &format!("/api/items?access_token={token}"),
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await;
    assert_eq!(both.status, 400, "{}", both.text());
    assert_eq!(api.app.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_token_never_reaches_the_app_when_pass_token_is_false() {
    let api = Api::start(Setup {
        bearer: "query_parameter = \"access_token\"\npass_token = false",
        issuer: Some(""),
        ..Setup::default()
    })
    .await;
    let token = api.iss.mint(DEFAULT_AUDIENCE).sub("query-caller").sign();
    let reply = call(
        &api.gw,
        &format!("/api/items?page=2&access_token={token}&sort=asc"),
        &[],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let seen = api.app.last();
    assert_eq!(seen.target, "/api/items?page=2&sort=asc");
    assert_eq!(seen.header("x-forwarded-user"), Some("query-caller"));
    assert_eq!(seen.all("authorization"), Vec::<&str>::new());
}

/// `[bearer] header` moves the token to another header: it is read there (bare, or with a
/// `Bearer` prefix), `Authorization` is then the app's business, the query string still holds
/// no token unless `query_parameter` says so, and with `pass_token = false` the app never
/// sees that header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_token_header_is_the_only_place_a_token_is_read() {
    let api = Api::start(Setup {
        bearer: "header = \"X-Api-Token\"",
        issuer: Some(""),
        ..Setup::default()
    })
    .await;
    let token = api.iss.mint(DEFAULT_AUDIENCE).sub("header-caller").sign();
    for value in [token.clone(), format!("Bearer {token}")] {
        let reply = call(&api.gw, "/api/items", &[("x-api-token", &value)]).await;
        assert_eq!(reply.status, 200, "{value:.20}: {}", reply.text());
        let seen = api.app.last();
        assert_eq!(seen.header("x-forwarded-user"), Some("header-caller"));
        assert_eq!(seen.all("x-api-token"), [value.as_str()]);
    }

    // Anywhere else, the token is not looked at: no credential, a bare challenge.
    for (what, path, headers) in [
        (
            "Authorization",
            "/api/items".to_owned(),
            vec![("authorization", format!("Bearer {token}"))],
        ),
        (
            "the query string",
            format!("/api/items?access_token={token}"),
            vec![],
        ),
    ] {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let reply = call(&api.gw, &path, &headers).await;
        assert_eq!(reply.status, 401, "{what}: {}", reply.text());
        assert_eq!(challenge(&reply), "Bearer realm=\"gatehouse\"", "{what}");
    }
    // Not a token, and two of them: refused, never "first one wins".
    let not_a_token = call(&api.gw, "/api/items", &[("x-api-token", "Basic a b")]).await;
    assert_eq!(not_a_token.status, 400, "{}", not_a_token.text());
    let twice = call(
        &api.gw,
        "/api/items",
        &[
            ("x-api-token", token.as_str()),
            ("x-api-token", token.as_str()),
        ],
    )
    .await;
    assert_eq!(twice.status, 400, "{}", twice.text());
    assert_eq!(
        param(&challenge(&twice), "error").as_deref(),
        Some("invalid_request")
    );
    assert_eq!(api.app.count(), 2);

    let strip = api
        .another_gateway(Setup {
            bearer: "header = \"X-Api-Token\"\npass_token = false",
            issuer: Some(""),
            ..Setup::default()
        })
        .await;
    let reply = call(&strip, "/api/items", &[("x-api-token", &token)]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let seen = api.app.last();
    assert_eq!(seen.header("x-forwarded-user"), Some("header-caller"));
    assert_eq!(seen.all("x-api-token"), Vec::<&str>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_authorization_headers_are_an_invalid_request() {
    let api = Api::start(Setup::jwt()).await;
    let good = api.iss.mint(DEFAULT_AUDIENCE).sub("alice").sign();
    let evil = api.iss.mint(DEFAULT_AUDIENCE).sub("admin").sign();
    for pair in [[&good, &evil], [&good, &good]] {
        let req = Request::get(api.gw.url("/api/items"))
            .header("authorization", format!("Bearer {}", pair[0]))
            .header("authorization", format!("Bearer {}", pair[1]))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let reply = send(req).await;
        assert_eq!(reply.status, 400, "{}", reply.text());
        let c = challenge(&reply);
        assert_eq!(
            param(&c, "error").as_deref(),
            Some("invalid_request"),
            "{c}"
        );
        assert_eq!(reply.json()["error"], "invalid_request");
    }
    assert_eq!(api.app.count(), 0);
}

// ---- keys: unknown kid, rotation, outage (rules 14, 36) --------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_kid_costs_exactly_one_jwks_fetch_then_401() {
    let api = Api::start(Setup::jwt()).await;
    let loaded = api.iss.jwks_fetches();
    assert_eq!(loaded, 1);
    let stranger = api.iss.mint(DEFAULT_AUDIENCE).kid("nobody-knows-me").sign();
    let reply = api.get("/api/items", &stranger).await;
    assert_invalid_token(&reply, "unknown kid", &leak_probes(&api.iss, &stranger));
    assert_eq!(
        api.iss.jwks_fetches(),
        loaded + 1,
        "one refetch for the unknown kid"
    );
    // Within the refetch interval, more unknown kids fetch nothing.
    for i in 0..5 {
        let t = api
            .iss
            .mint(DEFAULT_AUDIENCE)
            .kid(&format!("again-{i}"))
            .sign();
        assert_eq!(api.get("/api/items", &t).await.status, 401);
    }
    assert_eq!(api.iss.jwks_fetches(), loaded + 1);
    assert_eq!(api.app.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_random_kids_causes_no_jwks_fetch_storm() {
    let api = Api::start(Setup::jwt()).await;
    let loaded = api.iss.jwks_fetches();
    let tokens: Vec<String> = (0..200)
        .map(|i| {
            api.iss
                .mint(DEFAULT_AUDIENCE)
                .kid(&format!(
                    "random-{i}-{}",
                    b64(&(i as u64 * 7919).to_be_bytes())
                ))
                .sign()
        })
        .collect();
    let started = Instant::now();
    let replies =
        futures_util::future::join_all(tokens.iter().map(|t| api.get("/api/items", t))).await;
    let statuses: Vec<u16> = replies.iter().map(|r| r.status.as_u16()).collect();
    assert!(
        statuses.iter().all(|s| *s == 401),
        "all 401, none 5xx: {statuses:?}"
    );
    // At most one refetch per 10 s, however long a busy machine takes to answer them all.
    let extra = api.iss.jwks_fetches() - loaded;
    let allowed = 1 + usize::try_from(started.elapsed().as_secs() / 10).unwrap();
    assert!(
        (1..=allowed).contains(&extra),
        "{extra} JWKS fetches for 200 unknown kids in {:?}",
        started.elapsed()
    );
    assert_eq!(api.app.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_signing_key_is_picked_up_without_restart() {
    // A fresh issuer and gateway: no earlier unknown kid has used the refetch budget.
    let api = Api::start(Setup::jwt()).await;
    assert_eq!(api.iss.jwks_fetches(), 1);
    let before = api.iss.mint(DEFAULT_AUDIENCE).sub("before").sign();
    let retired_unseen = api.iss.mint(DEFAULT_AUDIENCE).sub("never-shown").sign();
    assert_eq!(api.get("/api/items", &before).await.status, 200);
    assert_eq!(api.iss.jwks_fetches(), 1);

    let new_kid = api.iss.rotate();
    let after = api.iss.mint(DEFAULT_AUDIENCE).sub("after").sign();
    let reply = api.get("/api/items", &after).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(api.app.last().header("x-forwarded-user"), Some("after"));
    assert_eq!(
        api.iss.jwks_fetches(),
        2,
        "exactly one refetch for {new_kid}"
    );
    // Signed by the retired key and never seen before: its key is gone from the JWKS.
    let reply = api.get("/api/items", &retired_unseen).await;
    assert_invalid_token(
        &reply,
        "retired key",
        &leak_probes(&api.iss, &retired_unseen),
    );
    assert_eq!(api.iss.jwks_fetches(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwks_outage_before_the_keys_loaded_is_503_then_recovers_without_restart() {
    let iss = TestIssuer::start().await;
    iss.set_jwks_outage(Outage::Unavailable);
    let app = Upstream::start().await;
    // Debug logging: nothing that level adds may carry a token either.
    let gw = Gateway::start_with_env(&one_issuer("", &iss, &app), &[("RUST_LOG", "debug")]);
    let token = iss.mint(DEFAULT_AUDIENCE).sign();
    let stranger = iss.mint(DEFAULT_AUDIENCE).kid("not-yet-known").sign();
    let auth = |t: &str| format!("Bearer {t}");
    for t in [&token, &stranger, &token] {
        let reply = call(&gw, "/api/items", &[("authorization", &auth(t))]).await;
        assert_eq!(reply.status, 503, "keys never loaded: {}", reply.text());
        assert!(reply.headers.contains_key("retry-after"));
        assert_eq!(reply.json()["error"], "temporarily_unavailable");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(iss.jwks_fetches() >= 1, "the gateway tried");
    assert_eq!(app.count(), 0);
    // Rule 23: the operator is told which dependency fails and why (the JWKS URL and its
    // answer), and that callers get 503 because of it. No token is ever in the log (below).
    gw.expect_warn(&["bearer issuer keys not loaded", &iss.jwks_uri(), "503"])
        .await;
    gw.expect_warn(&[
        "authentication dependency unavailable; answering 503",
        "dependency=\"token signing keys\"",
    ])
    .await;

    iss.set_jwks_outage(Outage::Up);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = call(&gw, "/api/items", &[("authorization", &auth(&token))]).await;
        match reply.status.as_u16() {
            200 => break,
            503 => assert!(Instant::now() < deadline, "never recovered:\n{}", gw.logs()),
            other => panic!("{other} while the keys load: {}", reply.text()),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(app.last().header("x-forwarded-user"), Some("alice"));
    gw.assert_never_logged(&[("the token", &token), ("the stranger's token", &stranger)]);
}

// ---- scopes ------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_without_the_route_scope_gets_403_insufficient_scope() {
    let api = Api::start(Setup::jwt()).await;
    let read = api.iss.mint(DEFAULT_AUDIENCE).scope("orders:read").sign();
    let reply = api.get("/orders/42", &read).await;
    assert_eq!(reply.status, 403, "{}", reply.text());
    let c = challenge(&reply);
    assert!(c.starts_with("Bearer realm=\"gatehouse\""), "{c}");
    assert_eq!(
        param(&c, "error").as_deref(),
        Some("insufficient_scope"),
        "{c}"
    );
    assert_eq!(param(&c, "scope").as_deref(), Some("orders:write"), "{c}");
    assert_eq!(reply.json()["error"], "insufficient_scope");
    // The same token with a browser's headers (a forward-auth subrequest carries them): still
    // RFC 6750's challenge, never the page a person would get.
    let bearer = format!("Bearer {read}");
    let navigating = call(
        &api.gw,
        "/orders/42",
        &[
            ("authorization", bearer.as_str()),
            ("accept", "text/html"),
            ("sec-fetch-mode", "navigate"),
        ],
    )
    .await;
    assert_eq!(navigating.status, 403);
    let c = challenge(&navigating);
    assert_eq!(
        param(&c, "error").as_deref(),
        Some("insufficient_scope"),
        "{c}"
    );
    assert_eq!(api.app.count(), 0);
    // A scope that merely contains the name is not the scope.
    let lookalike = api
        .iss
        .mint(DEFAULT_AUDIENCE)
        .scope("orders:writer xorders:write")
        .sign();
    assert_eq!(api.get("/orders/42", &lookalike).await.status, 403);

    let write = api
        .iss
        .mint(DEFAULT_AUDIENCE)
        .scope("orders:read orders:write")
        .sign();
    assert_eq!(api.get("/orders/42", &write).await.status, 200);
    let scp = api
        .iss
        .mint(DEFAULT_AUDIENCE)
        .remove_claim("scope")
        .claim("scp", json!(["orders:read", "orders:write"]))
        .sign();
    assert_eq!(api.get("/orders/43", &scp).await.status, 200);
    let scp_read = api
        .iss
        .mint(DEFAULT_AUDIENCE)
        .remove_claim("scope")
        .claim("scp", json!(["orders:read"]))
        .sign();
    assert_eq!(api.get("/orders/44", &scp_read).await.status, 403);
    assert_eq!(
        api.app
            .seen()
            .iter()
            .map(|s| s.target.as_str())
            .collect::<Vec<_>>(),
        ["/orders/42", "/orders/43"]
    );
    // Other routes need no scope.
    assert_eq!(api.get("/api/items", &read).await.status, 200);
}

// ---- opaque tokens: introspection (rules 15, 36) ---------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_opaque_token_is_introspected_and_an_inactive_one_refused() {
    let api = Api::start(Setup::introspection("")).await;
    let token = api.iss.opaque("svc-orders", "orders:read orders:write");
    let reply = api.get("/orders/1", &token).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let seen = api.app.last();
    assert_eq!(seen.header("x-forwarded-user"), Some("svc-orders"));
    assert_eq!(seen.header("x-forwarded-client-id"), Some("test-client"));
    let log = api.iss.introspection_log();
    assert_eq!(log.len(), 1);
    assert!(
        log[0].authenticated,
        "the gateway authenticates as its client"
    );
    assert_eq!(log[0].token.as_deref(), Some(token.as_str()));

    let inactive = api
        .iss
        .opaque_with(json!({"active": false, "sub": "svc-orders"}));
    assert_invalid_token(
        &api.get("/orders/1", &inactive).await,
        "active false",
        std::slice::from_ref(&inactive),
    );
    let unknown = "never-issued-opaque-token";
    assert_invalid_token(&api.get("/orders/1", unknown).await, "unknown opaque", &[]);
    let refresh = api.iss.opaque_with(json!({
        "active": true, "sub": "svc", "token_type": "refresh_token",
        "exp": 4_000_000_000u64, "scope": "orders:write",
    }));
    assert_eq!(api.get("/orders/1", &refresh).await.status, 401);
    let active_string = api
        .iss
        .opaque_with(json!({"active": "true", "sub": "svc", "scope": "orders:write"}));
    assert_eq!(
        api.get("/orders/1", &active_string).await.status,
        401,
        "only a literal true is active (RFC 7662 §2.2)"
    );
    assert_eq!(api.app.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_opaque_token_stays_accepted_until_the_cache_ttl_then_is_refused() {
    // Three seconds: the second call must land inside it even on a busy machine.
    let api = Api::start(Setup::introspection("cache_ttl = \"3s\"")).await;
    let token = api.iss.opaque("svc", "orders:read");
    assert_eq!(api.get("/api/a", &token).await.status, 200);
    assert_eq!(api.iss.introspection_calls(), 1);
    api.iss.revoke(&token);
    // The documented trade-off: answers are remembered up to cache_ttl.
    assert_eq!(api.get("/api/b", &token).await.status, 200);
    assert_eq!(api.iss.introspection_calls(), 1, "served from the cache");
    tokio::time::sleep(Duration::from_millis(3300)).await;
    let reply = api.get("/api/c", &token).await;
    assert_invalid_token(&reply, "revoked", std::slice::from_ref(&token));
    assert_eq!(api.iss.introspection_calls(), 2);
    assert_eq!(api.app.count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_introspection_answer_never_outlives_the_token_exp() {
    let api = Api::start(Setup::introspection("cache_ttl = \"5m\"")).await;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 5;
    let token = api.iss.opaque_with(json!({
        "active": true, "sub": "short-lived", "scope": "orders:read", "exp": exp,
    }));
    assert_eq!(api.get("/api/a", &token).await.status, 200);
    // Past exp (whole seconds), though well within cache_ttl.
    while std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        <= exp
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reply = api.get("/api/b", &token).await;
    assert_invalid_token(&reply, "expired opaque token", std::slice::from_ref(&token));
    assert_eq!(api.app.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_introspection_outage_is_503_never_401_and_never_a_pass() {
    let api = Api::start_with_env(Setup::introspection(""), &[("RUST_LOG", "debug")]).await;
    let mut tokens = Vec::new();
    for outage in [
        Outage::Unavailable,
        Outage::HoldThenDrop(Duration::from_millis(300)),
        Outage::Garbage,
    ] {
        api.iss.set_introspection_outage(outage);
        let token = api.iss.opaque("svc", "orders:write");
        let reply = api.get("/orders/1", &token).await;
        assert_eq!(reply.status, 503, "{outage:?}: {}", reply.text());
        assert!(reply.headers.contains_key("retry-after"), "{outage:?}");
        assert_eq!(reply.json()["error"], "temporarily_unavailable");
        // A failure is not remembered: once the endpoint is back, the same token passes.
        api.iss.set_introspection_outage(Outage::Up);
        let reply = api.get("/orders/1", &token).await;
        assert_eq!(reply.status, 200, "{outage:?} then up: {}", reply.text());
        tokens.push(token);
    }
    assert_eq!(api.app.count(), 3);
    // Rule 23: one line names the failing introspection endpoint and the cause, another that
    // callers get 503 because of it; neither tokens nor the gateway's client secret are in
    // the log, even at debug level.
    let endpoint = api.iss.introspection_endpoint();
    api.gw
        .expect_warn(&["token introspection failed; answering 503", &endpoint])
        .await;
    api.gw
        .expect_warn(&[
            "authentication dependency unavailable; answering 503",
            "dependency=\"token introspection\"",
        ])
        .await;
    let (id, secret) = api.iss.client();
    let credentials = basic(id, secret);
    let mut secrets: Vec<(&str, &str)> = tokens.iter().map(|t| ("a token", t.as_str())).collect();
    secrets.push(("the introspection client secret", secret));
    secrets.push((
        "the introspection client's Basic credentials",
        credentials.trim_start_matches("Basic "),
    ));
    api.gw.assert_never_logged(&secrets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_with_one_new_opaque_token_share_one_introspection() {
    let api = Api::start(Setup::introspection("")).await;
    let token = api.iss.opaque("svc", "orders:read");
    let replies =
        futures_util::future::join_all((0..50).map(|_| api.get("/api/items", &token))).await;
    assert!(replies.iter().all(|r| r.status == 200));
    assert_eq!(api.iss.introspection_calls(), 1);
    assert_eq!(api.app.count(), 50);
}

// ---- what the app receives -----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callers_authorization_reaches_the_app_unless_pass_token_is_false() {
    let api = Api::start(Setup::jwt()).await;
    let token = api.iss.mint(DEFAULT_AUDIENCE).sign();
    assert_eq!(api.get("/api/items", &token).await.status, 200);
    assert_eq!(
        api.app.last().header("authorization"),
        Some(format!("Bearer {token}").as_str())
    );

    let api = Api::start(Setup {
        bearer: "pass_token = false",
        issuer: Some(""),
        ..Setup::default()
    })
    .await;
    let token = api.iss.mint(DEFAULT_AUDIENCE).sign();
    assert_eq!(api.get("/api/items", &token).await.status, 200);
    let seen = api.app.last();
    assert_eq!(seen.all("authorization"), Vec::<&str>::new());
    assert_eq!(seen.header("x-forwarded-user"), Some("alice"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spoofed_client_id_header_is_replaced_by_the_tokens_client() {
    let api = Api::start(Setup::jwt()).await;
    let spoof = [
        ("x-forwarded-client-id", "admin-console"),
        ("X-Forwarded-Client-Id", "admin-console-2"),
        ("x-forwarded-user", "root"),
    ];
    let with = |token: &str| {
        let mut h: Vec<(&str, String)> = spoof.iter().map(|(k, v)| (*k, v.to_string())).collect();
        h.push(("authorization", format!("Bearer {token}")));
        h
    };
    let send_with = |token: String| {
        let headers = with(&token);
        let gw = &api.gw;
        async move {
            let refs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            call(gw, "/api/items", &refs).await
        }
    };

    // A client-credentials token: sub and client_id of the service.
    let cc = api
        .iss
        .mint(DEFAULT_AUDIENCE)
        .sub("svc-billing")
        .client_id("svc-billing")
        .sign();
    assert_eq!(send_with(cc).await.status, 200);
    let seen = api.app.last();
    assert_eq!(seen.all("x-forwarded-client-id"), ["svc-billing"]);
    assert_eq!(seen.header("x-forwarded-user"), Some("svc-billing"));

    // Only `azp`: the client id comes from it.
    let azp = api
        .iss
        .mint(DEFAULT_AUDIENCE)
        .sub("svc-reports")
        .remove_claim("client_id")
        .claim("azp", json!("reports-app"))
        .sign();
    assert_eq!(send_with(azp).await.status, 200);
    let seen = api.app.last();
    assert_eq!(seen.all("x-forwarded-client-id"), ["reports-app"]);
    assert_eq!(seen.header("x-forwarded-user"), Some("svc-reports"));

    // No client in the token: the app sees no client id at all, not the client's.
    let none = api
        .iss
        .mint(DEFAULT_AUDIENCE)
        .sub("someone")
        .remove_claim("client_id")
        .sign();
    assert_eq!(send_with(none).await.status, 200);
    let seen = api.app.last();
    assert_eq!(seen.all("x-forwarded-client-id"), Vec::<&str>::new());
    assert_eq!(seen.all("x-forwarded-user"), ["someone"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_never_written_to_the_log() {
    let iss = TestIssuer::start().await;
    let app = Upstream::start().await;
    let gw = Gateway::start_with_env(&one_issuer("", &iss, &app), &[("RUST_LOG", "debug")]);
    let good = iss.mint(DEFAULT_AUDIENCE).sign();
    let bad = iss.mint("api://elsewhere").sign();
    let mut statuses = Vec::new();
    for t in [&good, &bad] {
        let r = call(
            &gw,
            "/api/items",
            &[("authorization", &format!("Bearer {t}"))],
        )
        .await;
        statuses.push(r.status.as_u16());
    }
    assert_eq!(statuses, [200, 401]);
    gw.wait_for_log("bearer token refused").await;
    let logs = gw.logs();
    for t in [&good, &bad] {
        for segment in t.split('.').skip(1) {
            assert!(
                !logs.contains(&segment[..20]),
                "a token segment is in the log:\n{logs}"
            );
        }
    }
}

// ---- browsers and bearer tokens together ---------------------------------------------------------

const WORLD_BEARER: &str = "[bearer]\nenabled = true\naudiences = [\"gatehouse\"]\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_navigation_with_a_valid_bearer_token_is_served_not_sent_to_login() {
    let world = World::start(WORLD_BEARER).await;
    let token = world.service_token().await;
    let navigate = [
        ("accept", "text/html,application/xhtml+xml"),
        ("sec-fetch-mode", "navigate"),
    ];
    let auth = format!("Bearer {token}");
    let mut headers = navigate.to_vec();
    headers.push(("authorization", &auth));
    let reply = call(&world.gw, "/dashboard", &headers).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        world.app.last().header("x-forwarded-user"),
        Some(SERVICE_CLIENT_ID)
    );

    // Without a token the same navigation goes to the provider's login.
    let reply = call(&world.gw, "/dashboard", &navigate).await;
    assert!(
        location(&reply).starts_with(world.provider.issuer()),
        "{:?}",
        reply.headers
    );
    assert_eq!(world.app.count(), 1);
}

// ---- the password bridge -----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_password_bridge_trades_basic_credentials_for_a_token_the_app_sees_instead() {
    let world = World::start(&format!(
        "{WORLD_BEARER}\n[password_bridge]\nenabled = true\nmax_failures = 3\n\n\
         [[routes]]\npath_prefix = \"/legacy\"\npassword_bridge = true\n"
    ))
    .await;
    let p = &world.provider;
    let alice = basic("alice", DEMO_PASSWORD);

    let reply = call(&world.gw, "/legacy/report", &[("authorization", &alice)]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let seen = world.app.last();
    // The identity is what the access token bought says (the development provider puts
    // `sub` and `groups` in it), completed from the grant's validated ID token (email).
    assert_eq!(seen.header("x-forwarded-user"), Some("alice"));
    assert_eq!(seen.header("x-forwarded-groups"), Some("admins,developers"));
    assert_eq!(seen.header("x-forwarded-email"), Some("alice@example.com"));
    let forwarded = seen.header("authorization").unwrap();
    assert!(forwarded.starts_with("Bearer "), "{forwarded}");
    for (name, value) in &seen.headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        assert!(
            !value.contains(DEMO_PASSWORD)
                && !value.contains(&alice[6..])
                && !value.starts_with("Basic"),
            "the app received the credentials in {name}: {value}"
        );
    }
    assert_eq!(p.password_grant_requests(), 1);

    // The second request is served from the bridge's cache.
    let reply = call(&world.gw, "/legacy/report", &[("authorization", &alice)]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(world.app.last().header("authorization"), Some(forwarded));
    assert_eq!(p.password_grant_requests(), 1);

    // A wrong password: 401 with a Basic challenge, so a legacy client can ask again.
    let wrong = basic("bob", "not-the-password");
    for attempt in 1..=3 {
        let reply = call(&world.gw, "/legacy/report", &[("authorization", &wrong)]).await;
        assert_eq!(reply.status, 401, "attempt {attempt}: {}", reply.text());
        let c = challenge(&reply);
        assert!(c.starts_with("Basic realm="), "{c}");
        assert_eq!(p.password_grant_requests(), 1 + attempt);
    }
    // Past max_failures, the provider is not asked again for bob (not even with the right
    // password) — password guessing through the gateway stops here.
    for auth in [&wrong, &basic("bob", DEMO_PASSWORD)] {
        let reply = call(&world.gw, "/legacy/report", &[("authorization", auth)]).await;
        assert_eq!(reply.status, 429, "{}", reply.text());
        assert!(reply.headers.contains_key("retry-after"));
    }
    assert_eq!(
        p.password_grant_requests(),
        4,
        "the counter stopped growing"
    );

    // Basic credentials on a route without the bridge are not bridged: a bearer challenge.
    let reply = call(&world.gw, "/reports", &[("authorization", &alice)]).await;
    assert_eq!(reply.status, 401, "{}", reply.text());
    assert_eq!(challenge(&reply), "Bearer realm=\"gatehouse\"");
    assert_eq!(p.password_grant_requests(), 4);
    // Without credentials, a bridge route offers both schemes.
    let reply = call(&world.gw, "/legacy/report", &[]).await;
    assert_eq!(reply.status, 401);
    let offered = challenges(&reply);
    assert!(
        offered.iter().any(|c| c.starts_with("Bearer ")),
        "{offered:?}"
    );
    assert!(
        offered.iter().any(|c| c.starts_with("Basic ")),
        "{offered:?}"
    );
    assert_eq!(world.app.count(), 2);

    let logs = world.gw.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("WARN") && l.contains("RFC 9700")),
        "no start-up warning naming RFC 9700:\n{logs}"
    );
    assert!(!logs.contains(&alice[6..]), "credentials in the log");
}

/// The bridge's failure limit is per user name: one user guessing locks out only that user,
/// whose right password is then refused without the provider being asked, while another
/// user's logins and failures go on as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_guessing_locks_out_only_the_guessed_user() {
    let world = World::start(&format!(
        "{WORLD_BEARER}\n[password_bridge]\nenabled = true\nmax_failures = 2\n\n\
         [[routes]]\npath_prefix = \"/legacy\"\npassword_bridge = true\n"
    ))
    .await;
    let p = &world.provider;
    let bridged = |auth: String| {
        let gw = &world.gw;
        async move { call(gw, "/legacy/report", &[("authorization", &auth)]).await }
    };

    for attempt in 1..=2 {
        let reply = bridged(basic("mallory", "guess")).await;
        assert_eq!(reply.status, 401, "attempt {attempt}: {}", reply.text());
    }
    assert_eq!(p.password_grant_requests(), 2);
    let locked = bridged(basic("mallory", DEMO_PASSWORD)).await;
    assert_eq!(locked.status, 429, "{}", locked.text());
    assert_eq!(
        p.password_grant_requests(),
        2,
        "the provider was asked for mallory"
    );

    // carol is not mallory: her login works, and one failure of hers is only hers.
    let carol = bridged(basic("carol", DEMO_PASSWORD)).await;
    assert_eq!(carol.status, 200, "{}", carol.text());
    assert_eq!(world.app.last().header("x-forwarded-user"), Some("carol"));
    assert_eq!(p.password_grant_requests(), 3);
    let wrong = bridged(basic("carol", "typo")).await;
    assert_eq!(wrong.status, 401, "{}", wrong.text());
    assert_eq!(p.password_grant_requests(), 4);
    let again = bridged(basic("carol", DEMO_PASSWORD)).await;
    assert_eq!(again.status, 200, "{}", again.text());

    // …and her success does not unlock mallory.
    assert_eq!(bridged(basic("mallory", DEMO_PASSWORD)).await.status, 429);
    assert_eq!(p.password_grant_requests(), 4);
    assert_eq!(world.app.count(), 2);
}

#[tokio::test]
async fn hmac_tokens_verify_only_with_the_configured_shared_secret() {
    const SECRET: &str = "a-shared-secret-of-at-least-32-bytes!!";
    let api = Api::start(Setup {
        issuer: Some(
            "algorithms = [\"HS256\", \"RS256\"]\nhmac_secret = \"a-shared-secret-of-at-least-32-bytes!!\"",
        ),
        ..Setup::default()
    })
    .await;
    let m = || api.iss.mint(DEFAULT_AUDIENCE);
    let ok = api.get("/data", &m().hs256(SECRET.as_bytes()).sign()).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    // Any other key, the issuer's public key included, is not the secret.
    for token in [
        m().hs256(b"another-secret-of-at-least-32-bytes!!!").sign(),
        m().hs256_with_rsa_public_pem().sign(),
    ] {
        let refused = api.get("/data", &token).await;
        assert_eq!(refused.status, 401);
        assert!(challenge(&refused).contains("error=\"invalid_token\""));
    }
    // Without the secret configured, the same good HS256 token is refused (default
    // algorithms): HMAC needs an explicit secret.
    let strict = Api::start(Setup::jwt()).await;
    let token = strict
        .iss
        .mint(DEFAULT_AUDIENCE)
        .hs256(SECRET.as_bytes())
        .sign();
    assert_eq!(strict.get("/data", &token).await.status, 401);
}

/// Guesses sent all at once (each a different password, so none waits on another) cannot
/// outrun the failure limit: each takes its place in the user's budget before the provider
/// is asked. The user name is counted whatever its case.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_password_guesses_do_not_outrun_the_failure_limit() {
    let world = World::start(&format!(
        "{WORLD_BEARER}\n[password_bridge]\nenabled = true\nmax_failures = 3\n\n\
         [[routes]]\npath_prefix = \"/legacy\"\npassword_bridge = true\n"
    ))
    .await;
    let guesses = (0..40).map(|n| {
        let gw = &world.gw;
        let auth = basic(
            if n % 2 == 0 { "bob" } else { "BOB" },
            &format!("guess-{n}"),
        );
        async move {
            call(gw, "/legacy/report", &[("authorization", &auth)])
                .await
                .status
                .as_u16()
        }
    });
    let statuses = futures_util::future::join_all(guesses).await;
    assert!(
        statuses.iter().all(|s| *s == 401 || *s == 429),
        "{statuses:?}"
    );
    assert_eq!(
        world.provider.password_grant_requests(),
        3,
        "the provider was asked more often than max_failures allows: {statuses:?}"
    );
    assert_eq!(statuses.iter().filter(|s| **s == 401).count(), 3);
    // bob is locked out, his right password included, in any case.
    let reply = call(
        &world.gw,
        "/legacy/report",
        &[("authorization", &basic("Bob", DEMO_PASSWORD))],
    )
    .await;
    assert_eq!(reply.status, 429, "{}", reply.text());
    assert_eq!(world.provider.password_grant_requests(), 3);
    assert_eq!(world.app.count(), 0);
}
