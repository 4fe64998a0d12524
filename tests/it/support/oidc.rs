//! The real OpenID provider (`tests/e2e/provider.mjs`, oidc-provider 9) as a child process for
//! the machine-caller tests: client credentials, JWT access tokens for `resource=api://orders`
//! (RFC 9068, RS256), opaque tokens otherwise, RFC 7662 introspection. See the header comment
//! of provider.mjs for its clients and settings.
//!
//! Needs `node` and `tests/node_modules` (scripts/test runs `npm ci` in tests/).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use serde_json::Value;

use super::{ChildGuard, manifest_dir, send, spawn_and_wait};

/// Secret of the `gatehouse` client unless `CLIENT_SECRET` is passed to [`OidcProvider::start`].
pub const GATEHOUSE_SECRET: &str = "oidc-gatehouse-secret-not-for-production";
/// The machine client (client_credentials only, scope "orders:read orders:write").
pub const SERVICE_CLIENT_ID: &str = "gatehouse-service";
/// Its secret unless `SERVICE_CLIENT_SECRET` is passed.
pub const SERVICE_SECRET: &str = "oidc-service-secret-not-for-production";
/// The one resource indicator the provider knows (unless `API_RESOURCE` is passed).
pub const API_RESOURCE: &str = "api://orders";

/// True when `node` runs. Outside CI a test may skip without it; under CI it panics.
pub fn node_available(test: &str) -> bool {
    let ok = Command::new("node")
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return true;
    }
    let msg = format!("{test}: needs `node` (preinstalled on the CI machines)");
    if std::env::var_os("CI").is_some() {
        panic!("{msg}; CI is set, so this fails instead of skipping");
    }
    eprintln!("SKIPPED {msg}");
    false
}

/// provider.mjs running on 127.0.0.1 (a port of its own choosing), killed by pid on drop.
pub struct OidcProvider {
    issuer: String,
    env: HashMap<String, String>,
    output: Arc<Mutex<Vec<String>>>,
    guard: ChildGuard,
}

/// `oidc-provider ready http://127.0.0.1:PORT`
fn parse_ready(line: &str) -> Option<SocketAddr> {
    let rest = line.split("oidc-provider ready http://").nth(1)?;
    rest.trim().trim_end_matches('/').parse().ok()
}

impl OidcProvider {
    /// Starts `node tests/e2e/provider.mjs` with `PORT=0`, `CLIENT_SECRET` =
    /// [`GATEHOUSE_SECRET`], `SERVICE_CLIENT_SECRET` = [`SERVICE_SECRET`], then `env` on top
    /// (e.g. `REDIRECT_URIS`, `ACCESS_TTL`), and waits (30 s at most) for its ready line.
    pub fn start(env: &[(&str, &str)]) -> Self {
        let tests = manifest_dir().join("tests");
        let module = tests.join("node_modules/oidc-provider/package.json");
        assert!(
            module.exists(),
            "{} is missing: run scripts/test (it runs `npm ci` in tests/)",
            module.display()
        );
        let mut vars: HashMap<String, String> = [
            ("PORT", "0"),
            ("CLIENT_SECRET", GATEHOUSE_SECRET),
            ("SERVICE_CLIENT_SECRET", SERVICE_SECRET),
            ("API_RESOURCE", API_RESOURCE),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        for (k, v) in env {
            vars.insert((*k).to_owned(), (*v).to_owned());
        }
        let mut cmd = Command::new("node");
        cmd.arg(tests.join("e2e/provider.mjs")).current_dir(&tests);
        for (k, v) in &vars {
            cmd.env(k, v);
        }
        let (child, addr, output) = spawn_and_wait(cmd, "oidc-provider ready", parse_ready);
        Self {
            issuer: format!("http://{addr}"),
            env: vars,
            output,
            guard: ChildGuard(child),
        }
    }

    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn pid(&self) -> u32 {
        self.guard.0.id()
    }

    /// Everything the process printed so far (stdout and stderr lines).
    pub fn logs(&self) -> String {
        self.output.lock().unwrap().join("\n")
    }

    pub fn token_endpoint(&self) -> String {
        format!("{}/token", self.issuer)
    }

    pub fn jwks_uri(&self) -> String {
        format!("{}/jwks", self.issuer)
    }

    /// `<issuer>/token/introspection` (RFC 7662; HTTP Basic client authentication).
    pub fn introspection_endpoint(&self) -> String {
        format!("{}/token/introspection", self.issuer)
    }

    /// The `gatehouse` client's secret (what the gateway's `[provider]` needs).
    pub fn client_secret(&self) -> &str {
        &self.env["CLIENT_SECRET"]
    }

    /// The `gatehouse-service` client's secret.
    pub fn service_secret(&self) -> &str {
        &self.env["SERVICE_CLIENT_SECRET"]
    }

    /// The raw token-endpoint answer for `gatehouse-service`'s client_credentials request
    /// (status, JSON body). `scope` "" sends no scope.
    pub async fn client_credentials(&self, resource: Option<&str>, scope: &str) -> (u16, Value) {
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        form.append_pair("grant_type", "client_credentials");
        if let Some(resource) = resource {
            form.append_pair("resource", resource);
        }
        if !scope.is_empty() {
            form.append_pair("scope", scope);
        }
        let reply = self
            .post_form(
                &self.token_endpoint(),
                SERVICE_CLIENT_ID,
                self.service_secret(),
                form.finish(),
            )
            .await;
        (reply.status.as_u16(), reply.json())
    }

    /// An access token for `gatehouse-service`: with `resource` ("api://orders") an RS256 JWT
    /// (header typ at+jwt, `aud` the resource); without, an opaque token. `scope` is a
    /// space-separated subset of "orders:read orders:write" ("" for none). Panics on failure.
    pub async fn client_credentials_token(&self, resource: Option<&str>, scope: &str) -> String {
        let (status, body) = self.client_credentials(resource, scope).await;
        assert_eq!(status, 200, "client_credentials failed: {body}");
        body["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no access_token in {body}"))
            .to_owned()
    }

    /// Introspects `token` as the `gatehouse` client; the JSON answer.
    pub async fn introspect(&self, token: &str) -> Value {
        let form = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("token", token)
            .finish();
        let reply = self
            .post_form(
                &self.introspection_endpoint(),
                "gatehouse",
                self.client_secret(),
                form,
            )
            .await;
        assert_eq!(reply.status, 200, "introspection failed: {}", reply.text());
        reply.json()
    }

    async fn post_form(
        &self,
        url: &str,
        client_id: &str,
        secret: &str,
        body: String,
    ) -> super::Reply {
        let basic =
            base64::engine::general_purpose::STANDARD.encode(format!("{client_id}:{secret}"));
        send(
            http::Request::post(url)
                .header("authorization", format!("Basic {basic}"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(Full::new(Bytes::from(body)))
                .unwrap(),
        )
        .await
    }
}
