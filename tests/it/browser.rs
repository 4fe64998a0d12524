//! Browser end-to-end tests: a real OpenID provider (`tests/e2e/provider.mjs`, oidc-provider 9)
//! and headless Debian Chromium driven by playwright-core (`tests/e2e/browser.mjs`), logging in
//! through the real `gatehouse` binary to the recording upstream, as a person would.
//!
//! Needs `node`, `/usr/bin/chromium` and `tests/node_modules` (scripts/test installs all three:
//! APT_NEEDS has chromium, `need_npm tests` runs `npm ci`). Without node or chromium the tests
//! skip with a message — unless `CI` is set, where they fail instead. Missing node_modules is
//! always a failure ("run scripts/test").
//!
//! Screenshots of every page the browser saw land in `tests/e2e/artifacts/` (git-ignored).

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine as _;

use crate::support::upstream::Upstream;
use crate::support::{ChildGuard, Gateway, manifest_dir, spawn_and_wait, wait_exit};

const CHROMIUM: &str = "/usr/bin/chromium";
const CLIENT_SECRET: &str = "e2e-client-secret-not-for-production";
/// Upper bound for one run of browser.mjs: every scenario is bounded at 30 s by the script.
const BROWSER_DEADLINE: Duration = Duration::from_secs(300);

/// True when node and chromium are there. When either is missing: skips (false, with a message)
/// outside CI, panics under CI.
fn browser_prerequisites(test: &str) -> bool {
    let mut missing = Vec::new();
    let node_ok = Command::new("node")
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success());
    if !node_ok {
        missing.push("`node`");
    }
    if !Path::new(CHROMIUM).exists() {
        missing.push(CHROMIUM);
    }
    if missing.is_empty() {
        return true;
    }
    let msg = format!(
        "{test}: needs {} (scripts/test installs chromium through APT_NEEDS; node is preinstalled)",
        missing.join(" and ")
    );
    if std::env::var_os("CI").is_some() {
        panic!("{msg}; CI is set, so this fails instead of skipping");
    }
    eprintln!("SKIPPED {msg}");
    false
}

fn tests_dir() -> PathBuf {
    manifest_dir().join("tests")
}

/// The npm packages browser.mjs and provider.mjs import, installed by scripts/test.
fn require_node_modules() {
    for pkg in ["oidc-provider", "playwright-core"] {
        let manifest = tests_dir()
            .join("node_modules")
            .join(pkg)
            .join("package.json");
        assert!(
            manifest.exists(),
            "{} is missing: run scripts/test (it runs `npm ci` in tests/)",
            manifest.display()
        );
    }
}

/// A port that was free a moment ago (bind 127.0.0.1:0, release). The gateway must know its own
/// public URL before it starts, so it cannot use port 0; the short race is acceptable in tests.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// `oidc-provider ready http://127.0.0.1:PORT`
fn parse_issuer(line: &str) -> Option<SocketAddr> {
    let rest = line.split("oidc-provider ready http://").nth(1)?;
    rest.trim().trim_end_matches('/').parse().ok()
}

/// provider.mjs as a child process, killed by pid on drop.
struct Provider {
    issuer: String,
    _guard: ChildGuard,
}

fn start_provider(redirect_uris: &str, post_logout_uris: &str) -> Provider {
    let mut cmd = Command::new("node");
    cmd.arg(tests_dir().join("e2e/provider.mjs"))
        .current_dir(tests_dir())
        .env("PORT", "0")
        .env("CLIENT_SECRET", CLIENT_SECRET)
        .env("REDIRECT_URIS", redirect_uris)
        .env("POST_LOGOUT_URIS", post_logout_uris)
        .env("ACCESS_TTL", "300");
    let (child, addr, _output) = spawn_and_wait(cmd, "oidc-provider ready", parse_issuer);
    Provider {
        issuer: format!("http://{addr}"),
        _guard: ChildGuard(child),
    }
}

/// Runs `node tests/e2e/browser.mjs ARGS` with `env`, streaming every line it prints into the
/// test's output, and returns (exit success, the `ok`/`FAIL` lines).
/// Runs browser.mjs with `args` (scenario names) and `env`. Screenshots go to
/// `tests/e2e/artifacts/<test>/`: the browser tests run concurrently, and a shared directory let
/// one run delete the other's screenshots while it was clearing its own.
fn run_browser(test: &str, args: &[&str], env: &[(&str, String)]) -> (bool, Vec<String>) {
    let mut cmd = Command::new("node");
    cmd.env(
        "ARTIFACTS_DIR",
        tests_dir().join("e2e/artifacts").join(test),
    );
    cmd.arg(tests_dir().join("e2e/browser.mjs"))
        .args(args)
        .current_dir(tests_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut guard = ChildGuard(child);
    let err_thread = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[browser.mjs] {line}");
        }
    });
    let out_thread = std::thread::spawn(move || {
        let mut results = Vec::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("[browser.mjs] {line}");
            results.push(line);
        }
        results
    });
    let status = wait_exit(&mut guard.0, BROWSER_DEADLINE);
    drop(guard); // kills it by pid if it is still running
    let results = out_thread.join().unwrap();
    let _ = err_thread.join();
    let status = status.unwrap_or_else(|| {
        panic!(
            "browser.mjs ran longer than {} s; output:\n{}",
            BROWSER_DEADLINE.as_secs(),
            results.join("\n")
        )
    });
    (status.success(), results)
}

fn assert_browser_passed(ok: bool, lines: &[String], expected: &[&str]) {
    let failed: Vec<&String> = lines.iter().filter(|l| l.starts_with("FAIL ")).collect();
    assert!(
        ok && failed.is_empty(),
        "browser scenarios failed (screenshots in tests/e2e/artifacts/):\n{}",
        lines.join("\n")
    );
    for name in expected {
        assert!(
            lines.iter().any(|l| l == &format!("ok {name}")),
            "scenario {name} did not report ok:\n{}",
            lines.join("\n")
        );
    }
}

/// The provider alone, driven by the browser: login form, consent, the code at the redirect
/// URI, PKCE required, session reuse, two tabs, RP-initiated logout with its confirmation page,
/// refresh tokens with offline_access + prompt=consent. Proves the selectors the gateway
/// scenarios rely on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_login_consent_and_logout_in_a_real_browser() {
    if !browser_prerequisites("provider_login_consent_and_logout_in_a_real_browser") {
        return;
    }
    require_node_modules();
    // Nothing listens at these URIs: browser.mjs intercepts the browser's requests to them.
    let port = free_port();
    let redirect = format!("http://127.0.0.1:{port}/oauth2/callback");
    let post_logout = format!("http://127.0.0.1:{port}/");
    let provider = start_provider(&redirect, &post_logout);
    let scenarios = ["provider-smoke", "provider-two-tabs", "provider-refresh"];
    let env = vec![
        ("PROVIDER_URL", provider.issuer.clone()),
        ("SMOKE_REDIRECT_URI", redirect),
        ("SMOKE_POST_LOGOUT_URI", post_logout),
        ("CLIENT_SECRET", CLIENT_SECRET.to_owned()),
    ];
    let (ok, lines) = tokio::task::spawn_blocking(move || {
        run_browser(
            "provider_login_consent_and_logout_in_a_real_browser",
            &scenarios,
            &env,
        )
    })
    .await
    .unwrap();
    assert_browser_passed(ok, &lines, &scenarios);
}

fn gateway_config(port: u16, issuer: &str, upstream: &str) -> String {
    let session_secret =
        base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>());
    format!(
        r#"[server]
listen = "127.0.0.1:{port}"
public_url = "http://127.0.0.1:{port}"

[provider]
issuer = "{issuer}"
client_id = "gatehouse"
client_secret = "{CLIENT_SECRET}"
scopes = ["openid", "email", "profile", "groups"]

[session]
secret = "{session_secret}"

[[upstreams]]
url = "{upstream}"

[[routes]]
path_prefix = "/public"
policy = "public"

[[routes]]
path_prefix = "/admin"
groups = ["admins"]
"#
    )
}

/// The whole login as a person sees it, through the real gateway: deep link kept across the
/// login, sign-out at the gateway and the provider, two tabs logging in at once, a 403 without
/// a redirect loop for someone outside the required group, and a public route that never
/// meets the provider.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_flows_through_the_gateway_in_a_real_browser() {
    if !browser_prerequisites("login_flows_through_the_gateway_in_a_real_browser") {
        return;
    }
    require_node_modules();
    let port = free_port();
    let public_url = format!("http://127.0.0.1:{port}");
    let provider = start_provider(
        &format!("{public_url}/oauth2/callback"),
        &format!("{public_url}/"),
    );
    let upstream = Upstream::start().await;
    let config = gateway_config(port, &provider.issuer, &upstream.url());
    let gateway = Gateway::start(&config);
    assert_eq!(
        gateway.addr.port(),
        port,
        "the gateway listens where public_url says"
    );

    let scenarios = [
        "deep-link-login",
        "sign-out",
        "two-tabs",
        "forbidden-group",
        "public-route",
    ];
    let env = vec![
        ("GATEWAY_URL", public_url),
        ("PROVIDER_URL", provider.issuer.clone()),
        ("PUBLIC_PATH", "/public/hello".to_owned()),
        ("FORBIDDEN_PATH", "/admin/".to_owned()),
        // The echo upstream's JSON shows the identity headers the gateway added.
        ("EXPECT_TEXT", "alice".to_owned()),
        ("EXPECT_FORBIDDEN", "not allowed".to_owned()),
    ];
    let (ok, lines) = tokio::task::spawn_blocking(move || {
        run_browser(
            "login_flows_through_the_gateway_in_a_real_browser",
            &scenarios,
            &env,
        )
    })
    .await
    .unwrap();
    if !ok {
        eprintln!("gateway output:\n{}", gateway.logs());
    }
    assert_browser_passed(ok, &lines, &scenarios);

    // What the app behind the gateway received: the deep link exactly, with identity headers.
    let seen = upstream.seen();
    let deep = seen
        .iter()
        .find(|s| s.target == "/app/page?x=1&y=two")
        .unwrap_or_else(|| panic!("the upstream never saw the deep link: {seen:?}"));
    assert_eq!(
        deep.headers
            .get("x-forwarded-email")
            .and_then(|v| v.to_str().ok()),
        Some("alice@example.com"),
        "identity headers on the deep link: {:?}",
        deep.headers
    );
    assert!(
        !seen.iter().any(|s| s.target.starts_with("/admin")),
        "the upstream saw a forbidden request"
    );
    assert!(
        seen.iter().any(|s| s.target == "/public/hello"),
        "the public route did not reach the upstream"
    );
}

/// A plain OAuth 2.0 provider: endpoints set by hand, no discovery and no JWKS, identity from
/// userinfo, and a public client (no secret). The real oidc-provider plays that role here (its
/// ID token is then ignored).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_endpoints_login_in_a_real_browser() {
    if !browser_prerequisites("explicit_endpoints_login_in_a_real_browser") {
        return;
    }
    require_node_modules();
    let port = free_port();
    let public_url = format!("http://127.0.0.1:{port}");
    let provider = start_provider(
        &format!("{public_url}/oauth2/callback"),
        &format!("{public_url}/"),
    );
    let upstream = Upstream::start().await;
    let issuer = &provider.issuer;
    // The public client: no secret, PKCE alone protects the code (`client_auth = "none"`).
    let config = gateway_config(port, issuer, &upstream.url())
        .replace(
            &format!("client_id = \"gatehouse\"\nclient_secret = \"{CLIENT_SECRET}\""),
            "client_id = \"gatehouse-public\"\nclient_auth = \"none\"",
        )
        .replace(
            "[session]",
            &format!(
                "authorization_endpoint = \"{issuer}/auth\"\ntoken_endpoint = \"{issuer}/token\"\n\
             userinfo_endpoint = \"{issuer}/me\"\n\n[session]"
            ),
        );
    let gateway = Gateway::start(&config);
    let scenarios = ["deep-link-login"];
    let env = vec![
        ("GATEWAY_URL", public_url),
        ("PROVIDER_URL", provider.issuer.clone()),
        ("EXPECT_TEXT", "alice".to_owned()),
    ];
    let (ok, lines) = tokio::task::spawn_blocking(move || {
        run_browser(
            "explicit_endpoints_login_in_a_real_browser",
            &scenarios,
            &env,
        )
    })
    .await
    .unwrap();
    if !ok {
        eprintln!("gateway output:\n{}", gateway.logs());
    }
    assert_browser_passed(ok, &lines, &scenarios);
    let seen = upstream.seen();
    let deep = seen
        .iter()
        .find(|s| s.target == "/app/page?x=1&y=two")
        .unwrap_or_else(|| panic!("the upstream never saw the deep link: {seen:?}"));
    assert_eq!(
        deep.headers
            .get("x-forwarded-user")
            .and_then(|v| v.to_str().ok()),
        Some("alice")
    );
}

/// `gatehouse demo` as a newcomer meets it: open the printed URL, sign in at the development
/// provider with a name and a group, land on the echo page showing the identity, sign out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_logs_a_person_in_through_a_real_browser() {
    if !browser_prerequisites("the_demo_logs_a_person_in_through_a_real_browser") {
        return;
    }
    require_node_modules();
    let mut cmd = std::process::Command::new(crate::support::BIN);
    cmd.args(["demo", "--listen", "127.0.0.1:0"]);
    let (child, addr, output) =
        crate::support::spawn_and_wait(cmd, "Gatehouse demo ready", |line| {
            let url = line.split("open ").nth(1)?.trim();
            url.strip_prefix("http://")?
                .trim_end_matches('/')
                .parse()
                .ok()
        });
    let _demo = crate::support::ChildGuard(child);
    let scenarios = ["demo-login"];
    let env = vec![("GATEWAY_URL", format!("http://{addr}"))];
    let (ok, lines) = tokio::task::spawn_blocking(move || {
        run_browser(
            "the_demo_logs_a_person_in_through_a_real_browser",
            &scenarios,
            &env,
        )
    })
    .await
    .unwrap();
    if !ok {
        eprintln!("demo output:\n{}", output.lock().unwrap().join("\n"));
    }
    assert_browser_passed(ok, &lines, &scenarios);
}
