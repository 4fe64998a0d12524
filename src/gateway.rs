//! The request path on one screen. `Gateway::steps` is the only code that sequences the steps;
//! each step lives in the module named after it:
//!
//! ```text
//! route (router.rs) ─▶ built-in endpoint (endpoints/; /oauth2/auth runs the steps below
//!                  │                      without forwarding)
//!                  └─▶ authenticate (authn/: bearer token, bridged Basic, session cookie)
//!                      ─▶ authorize (authz.rs) ─▶ identity headers (identity.rs)
//!                      ─▶ forward (proxy/): header hygiene, stream both ways
//! ```
//! then `X-Request-Id` on the answer and one access-log event (telemetry.rs). Failures of any
//! step become an HTTP answer in exactly one place (error.rs).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;

use crate::authn::{self, BearerAuth, Caller, UpstreamCredential, answer};
use crate::authz::{Authorizer, Decision};
use crate::body::Body;
use crate::config::{Config, Policy};
use crate::context::{ConnInfo, RequestCtx};
use crate::endpoints::login::{self, Login, UsedStates, with_cookies};
use crate::endpoints::{self, forward_auth, pages};
use crate::error::{self, GatewayError};
use crate::identity::{self, Identity};
use crate::oidc::{Provider, ProviderError};
use crate::proxy::{self, ClientBuildError, Proxy};
use crate::router::{self, RejectReason, Router, Target};
use crate::session::StoreShared;
use crate::session::logout::Logouts;
use crate::session::refresh::Refresher;
use crate::telemetry;
use crate::telemetry::metrics::{AuthOutcome, Metrics, Snapshot};
use crate::upstream_token::{Lease, UpstreamClients};

/// Why a gateway could not be built from a (valid) configuration.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Upstream(#[from] ClientBuildError),
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error(transparent)]
    Session(#[from] crate::session::SessionError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// What every worker shares: the provider (its metadata, keys and background refresh), the
/// memory of redeemed login states, and the bearer checkers with their caches.
pub struct Shared {
    provider: Option<Arc<Provider>>,
    used_states: Arc<UsedStates>,
    refresher: Option<Arc<Refresher>>,
    logouts: Arc<Logouts>,
    bearer: Option<Arc<BearerAuth>>,
    upstream_clients: Arc<UpstreamClients>,
    /// The session stores' in-process locks and Redis health, shared by every worker.
    stores: Arc<StoreShared>,
    /// `[metrics]`: `None` when off, and then nothing is counted.
    metrics: Option<Arc<Metrics>>,
    /// Whether sessions live in Redis (then its health is a metric).
    redis_sessions: bool,
}

impl Shared {
    /// Builds the shared parts and starts the provider's discovery in the background (on the
    /// caller's runtime); `/readyz` says when it is done.
    pub fn start(config: &Config) -> Result<Arc<Self>, BuildError> {
        let provider = match &config.provider {
            Some(p) => {
                let provider = Provider::new(p)?;
                provider.start();
                Some(provider)
            }
            None => None,
        };
        let bearer = BearerAuth::new(config, provider.as_ref())?;
        let upstream_clients = Arc::new(UpstreamClients::new(config, provider.as_ref())?);
        // Shared by every worker: one refresh per refresh token, whichever worker asks.
        let refresher = match (&provider, &config.session) {
            (Some(p), Some(s)) => Some(Arc::new(Refresher::new(
                p.clone(),
                s.refresh_before,
                config.authorization.groups_claim.clone(),
                config.provider.as_ref().is_some_and(|pc| pc.use_userinfo),
            ))),
            _ => None,
        };
        let lifetime = config
            .session
            .as_ref()
            .map_or(std::time::Duration::from_secs(86_400), |s| s.lifetime);
        let metrics = match config.metrics {
            Some(_) => Some(Arc::new(Metrics::new()?)),
            None => None,
        };
        Ok(Arc::new(Self {
            provider,
            refresher,
            logouts: Arc::new(Logouts::new(lifetime)),
            used_states: Arc::default(),
            bearer,
            upstream_clients,
            stores: Arc::default(),
            metrics,
            redis_sessions: config
                .session
                .as_ref()
                .is_some_and(|s| matches!(s.store, crate::config::StoreConfig::Redis(_))),
        }))
    }

    pub fn metrics(&self) -> Option<&Arc<Metrics>> {
        self.metrics.as_ref()
    }

    /// What the shared parts counted or know, for a metrics scrape.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            provider_ready: self.provider.as_ref().map(|p| p.ready()),
            refresh_grants: self.refresher.as_ref().map(|r| r.grants()),
            jwt_checks: self.bearer.as_ref().map(|b| b.jwt_checks()),
            upstream_token_requests: self.upstream_clients.token_requests(),
            redis_up: self.redis_sessions.then(|| self.stores.redis_up()),
            open_connections: Vec::new(),
        }
    }

    /// The provider's metadata and keys are loaded, or there is no provider: what `/readyz`
    /// answers.
    pub fn ready(&self) -> bool {
        self.provider.as_ref().is_none_or(|p| p.ready())
    }

    /// The bearer checkers, when `[bearer]` is configured (tests and benchmarks look inside).
    pub fn bearer(&self) -> Option<&Arc<BearerAuth>> {
        self.bearer.as_ref()
    }

    /// The gateway's own clients toward protected upstreams.
    pub fn upstream_clients(&self) -> &UpstreamClients {
        &self.upstream_clients
    }
}

/// One worker's gateway: the components built from the configuration.
pub struct Gateway {
    router: Router,
    authorizer: Authorizer,
    login: Option<Login>,
    /// What `/readyz` waits for (also without a login: `[bearer] enabled` uses its keys).
    provider: Option<Arc<Provider>>,
    bearer: Option<Arc<BearerAuth>>,
    upstream_clients: Arc<UpstreamClients>,
    proxy: Proxy,
    headers: crate::config::HeadersConfig,
    /// `[server] proxy_prefix`: where the built-in endpoints live.
    prefix: String,
    /// Named in every `WWW-Authenticate`.
    realm: String,
    access_log: bool,
    metrics: Option<Arc<Metrics>>,
}

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

impl Gateway {
    pub fn new(config: Arc<Config>, shared: &Shared) -> Result<Self, BuildError> {
        let login = match (&shared.provider, &shared.refresher) {
            (Some(provider), Some(refresher)) => Login::new(
                &config,
                provider.clone(),
                refresher.clone(),
                shared.logouts.clone(),
                shared.used_states.clone(),
                shared.stores.clone(),
            )?,
            _ => None,
        };
        Ok(Self {
            router: Router::new(&config),
            authorizer: Authorizer::new(&config),
            login,
            provider: shared.provider.clone(),
            bearer: shared.bearer.clone(),
            upstream_clients: shared.upstream_clients.clone(),
            proxy: Proxy::new(&config)?,
            headers: config.headers.clone(),
            prefix: config.server.proxy_prefix.clone(),
            realm: config.realm().to_owned(),
            access_log: config.log.access_log,
            metrics: shared.metrics.clone(),
        })
    }

    /// Serves one request. Never fails: every error is already an HTTP answer here.
    ///
    /// Plain fns returning async blocks, here and in [`Self::steps`]: an `async fn` keeps a
    /// second copy of its by-value arguments (the request), and every byte of these futures
    /// is copied when hyper stores the call and at each `.await` (see `Proxy::forward`).
    /// It is hyper's service future itself (hence the `Result` that cannot fail): one layer
    /// less to copy.
    pub fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        conn: ConnInfo,
    ) -> impl Future<Output = Result<Response<Body>, Infallible>> {
        let mut ctx = RequestCtx::new(req.method(), req.headers(), conn);
        async move {
            let mut response = match self.steps(req, &mut ctx).await {
                Ok(response) => response,
                Err(err) => error::response(&err, &ctx),
            };
            // Every answer carries the id, so a person can quote it and an operator find the
            // line.
            response
                .headers_mut()
                .insert(X_REQUEST_ID, ctx.request_id.clone());
            if self.access_log {
                telemetry::access(&ctx, response.status());
            }
            if let Some(metrics) = &self.metrics {
                metrics.request(
                    response.status(),
                    ctx.started.elapsed(),
                    ctx.upstream_latency,
                );
            }
            Ok(response)
        }
    }

    /// A connection ended with `err`. When hyper's parser refused a request and answered it
    /// itself (400 for a malformed head, and for the framing the accept step refuses, rules
    /// 19 and 26; 414; 431), no step saw it: it is still logged and counted like every answer,
    /// so a client's "400" has a line an operator can find. Other endings (a client gone, a
    /// timeout) answered nothing and stay at debug.
    pub fn connection_error(
        &self,
        peer: std::net::SocketAddr,
        err: &(dyn std::error::Error + 'static),
    ) {
        let status = err
            .downcast_ref::<hyper::Error>()
            .and_then(parse_error_status);
        let Some(status) = status else {
            tracing::debug!(%peer, error = %err, "connection ended with an error");
            return;
        };
        if self.access_log {
            telemetry::access_unparsed(peer.ip(), status, &err.to_string());
        }
        if let Some(metrics) = &self.metrics {
            metrics.answered(status);
        }
    }

    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn stores the request twice (see handle)"
    )]
    fn steps<'a>(
        &'a self,
        mut req: Request<Incoming>,
        ctx: &'a mut RequestCtx,
    ) -> impl Future<Output = Result<Response<Body>, GatewayError>> + 'a {
        async move {
            // Route. Refuse ambiguous framing before anything reads the request (rules 19, 20,
            // 35); normalise the path once, so every later step and the upstream see the same one.
            self.router.check_framing(req.uri(), req.headers())?;
            let host = router::request_host(req.uri(), req.headers())?;
            let (target, path) = self.router.route(req.uri(), &host)?;
            ctx.path = path;
            let index = match target {
                Target::Health => return Ok(endpoints::health(req.method(), true)),
                Target::Ready => {
                    let ready = self.provider.as_ref().is_none_or(|p| p.ready());
                    return Ok(endpoints::health(req.method(), ready));
                }
                Target::Builtin => {
                    ctx.route = "builtin";
                    // The one built-in endpoint that takes a body (POST from the provider).
                    if let Some(login) = &self.login
                        && ctx.path.strip_prefix(self.prefix.as_str())
                            == Some("/backchannel_logout")
                    {
                        return Ok(Box::pin(login.backchannel_logout(req)).await);
                    }
                    return Ok(Box::pin(self.builtin(&req, ctx)).await);
                }
                Target::NoRoute => return Err(GatewayError::NoRoute),
                Target::Upstream(index) => index,
            };
            ctx.route = "upstream";

            // Authenticate, when the route's policy wants to know who is calling. A token wins
            // over a cookie; without any credential a person navigating is sent to log in and a
            // script gets a 401 challenge (never a redirect).
            let (policy, bridge) = self.authorizer.route(req.method(), &host, &ctx.path);
            let mut set_cookies = Vec::new();
            let mut credential = UpstreamCredential::Keep;
            let mut by_token = false;
            let identity = match policy {
                Policy::Public => None,
                // Boxed: the authentication future (sessions, tokens, refresh) is over a
                // kilobyte, and a public route would otherwise carry and copy it too.
                _ => match Box::pin(self.authenticate(req.headers(), req.uri(), bridge)).await {
                    Caller::Session {
                        identity,
                        set_cookies: refreshed,
                    } => {
                        set_cookies = refreshed;
                        Some(identity)
                    }
                    Caller::Token { identity, upstream } => {
                        credential = upstream;
                        by_token = true;
                        Some(identity)
                    }
                    Caller::Anonymous { clear } => {
                        return Ok(with_cookies(self.ask_to_log_in(&req, ctx, bridge), clear));
                    }
                    Caller::Refused(refusal) => return Ok(answer::refused(refusal, self.realm())),
                    Caller::Unavailable(what) => {
                        let navigation = pages::is_navigation(req.method(), req.headers());
                        return Ok(answer::unavailable(what, navigation));
                    }
                },
            };

            // Authorize. A denial is a page (or JSON), never a login loop.
            if let Some(id) = &identity {
                ctx.user = Some(id.user.clone());
                if let Some(resp) = self.denial(policy, id, &req, by_token) {
                    return Ok(with_cookies(resp, set_cookies));
                }
            }

            // A protected upstream gets the gateway's own token (client credentials), in place
            // of whatever Authorization the caller sent.
            let client = self.upstream_clients.get(index);
            let lease = match client {
                Some(c) => match c.lease().await {
                    Ok(lease) => Some(lease),
                    // The failure itself was logged where it happened (upstream_token.rs).
                    Err(_) => {
                        let navigation = pages::is_navigation(req.method(), req.headers());
                        return Ok(answer::unavailable("upstream token", navigation));
                    }
                },
                None => None,
            };

            // Identity headers and forward. The client's copies of identity headers were removed
            // inside the proxy's rewrite, on every route; the gateway's own cookies never leave;
            // a bridged password never reaches the app.
            let client_host = proxy::client_host_header(req.uri(), req.headers())
                .ok_or(RejectReason::MissingHost)?;
            let login = self.login.as_ref();
            let names = &self.headers;
            let token_header = self.bearer.as_deref().map(BearerAuth::header);
            // With pass_token = false the caller's token must not reach the app at all, also not
            // in the URL when it came as a query parameter (rule 16).
            if matches!(credential, UpstreamCredential::Strip)
                && let Some(param) = self.bearer.as_deref().and_then(BearerAuth::query_parameter)
            {
                authn::bearer::strip_query_token(req.uri_mut(), param);
            }
            let gateway_token = lease.as_ref().map(Lease::header);
            let resp = self
                .proxy
                .forward(index, req, client_host, ctx, |headers| {
                    if let Some(login) = login {
                        login.strip_cookies(headers);
                    }
                    authn::edit_credential(headers, credential, token_header);
                    if let Some(id) = &identity {
                        identity::set_headers(headers, id, names);
                    }
                    if let Some(token) = gateway_token {
                        headers.insert(http::header::AUTHORIZATION, token);
                    }
                })
                .await?;
            // RFC 6750 §3.1: the upstream says our token is no good; the next request gets a new one.
            if let (Some(c), Some(lease)) = (client, &lease)
                && answer::is_invalid_token(&resp)
            {
                c.refused(lease);
            }
            Ok(with_cookies(resp, set_cookies))
        }
    }

    async fn authenticate(&self, headers: &HeaderMap, uri: &Uri, bridge: bool) -> Caller {
        let caller = authn::authenticate(
            self.bearer.as_deref(),
            self.login.as_ref(),
            headers,
            uri,
            bridge,
        )
        .await;
        if let Some(metrics) = &self.metrics {
            metrics.authentication(match &caller {
                Caller::Session { .. } => AuthOutcome::Session,
                Caller::Token { .. } => AuthOutcome::Token,
                Caller::Anonymous { .. } => AuthOutcome::Anonymous,
                Caller::Refused(_) => AuthOutcome::Refused,
                Caller::Unavailable(_) => AuthOutcome::Unavailable,
            });
        }
        caller
    }

    fn realm(&self) -> &str {
        &self.realm
    }

    /// 401 for a caller with no credential: the challenge, and where a person would sign in
    /// when the gateway can log people in.
    fn challenge(&self, bridge: bool) -> Response<Body> {
        let login_url = self.login.as_ref().map(Login::login_url);
        answer::missing(self.realm(), bridge, login_url.as_deref())
    }

    /// No credential on a protected route: the login page for a person, a challenge for a
    /// program.
    fn ask_to_log_in(
        &self,
        req: &Request<Incoming>,
        ctx: &RequestCtx,
        bridge: bool,
    ) -> Response<Body> {
        match &self.login {
            Some(login) if pages::is_navigation(req.method(), req.headers()) => {
                login.start(req.headers(), &return_path(ctx, req.uri()))
            }
            None if self.bearer.is_none() => error::plain(StatusCode::FORBIDDEN, "forbidden\n"),
            _ => self.challenge(bridge),
        }
    }

    /// The answer when `policy` does not let `id` in, `None` when it does. A caller that came
    /// with a token (`by_token`) gets RFC 6750's answers whatever its other headers look like
    /// (a forward-auth subrequest carries the browser's): a program holding a token is shown
    /// no page, and a missing scope is always the `insufficient_scope` challenge.
    fn denial(
        &self,
        policy: &Policy,
        id: &Identity,
        req: &Request<Incoming>,
        by_token: bool,
    ) -> Option<Response<Body>> {
        let navigation = !by_token && pages::is_navigation(req.method(), req.headers());
        let reason = match self.authorizer.decide(policy, id) {
            Decision::Allow => return None,
            Decision::MissingScopes(scopes) if !navigation => {
                tracing::info!(user = %id.user, "request denied: missing scope");
                return Some(answer::insufficient_scope(self.realm(), &scopes));
            }
            Decision::MissingScopes(scopes) => format!("requires the scopes {}", scopes.join(" ")),
            Decision::Deny(reason) => reason,
        };
        tracing::info!(user = %id.user, reason = %reason, "request denied");
        Some(if navigation {
            login::forbidden_page(&reason, &self.prefix)
        } else {
            pages::json(
                StatusCode::FORBIDDEN,
                &serde_json::json!({"error": "forbidden", "reason": reason}),
            )
        })
    }

    /// The endpoints under the proxy prefix.
    async fn builtin(&self, req: &Request<Incoming>, ctx: &RequestCtx) -> Response<Body> {
        let endpoint = ctx.path.strip_prefix(self.prefix.as_str());
        // A check has no effect, whatever its method: Envoy sends the original one.
        if let Some(auth) = endpoint.and_then(|e| e.strip_prefix("/auth")) {
            if auth.is_empty() {
                return self.forward_auth(req, ctx, None).await;
            }
            if auth.starts_with('/') {
                return self.forward_auth(req, ctx, Some(auth)).await;
            }
        }
        if let Some(resp) = endpoints::get_only(req.method()) {
            return resp;
        }
        let Some(login) = &self.login else {
            return endpoints::not_found();
        };
        let query = req.uri().query();
        match endpoint {
            Some("/start") => login.start_endpoint(req.headers(), query),
            Some("/callback") => login.callback(req.headers(), query, &self.authorizer).await,
            Some("/sign_out") => login.sign_out(req.headers(), query).await,
            Some("/userinfo") => login.userinfo(req.headers()).await,
            _ => endpoints::not_found(),
        }
    }

    /// `/oauth2/auth`: the whole request path but forwarding, for a proxy in front that asks
    /// before it serves (nginx `auth_request`, Traefik ForwardAuth, Envoy ext_authz). The
    /// original method and URI are believed only from trusted proxies (rule 27).
    async fn forward_auth(
        &self,
        req: &Request<Incoming>,
        ctx: &RequestCtx,
        below: Option<&str>,
    ) -> Response<Body> {
        let trusted = self.proxy.is_trusted(ctx.conn.peer.ip());
        let original = match forward_auth::original(req, trusted, below) {
            Ok(original) => original,
            Err(reason) => return error::plain(StatusCode::BAD_REQUEST, reason),
        };
        let (policy, bridge) = match &original {
            Some(o) => self.authorizer.route(&o.method, &o.host, &o.path),
            None => (self.authorizer.default_policy(), false),
        };
        if matches!(policy, Policy::Public) {
            return forward_auth::allowed(None, &self.headers, Vec::new());
        }
        let uri = original.as_ref().map_or(req.uri(), |o| &o.uri);
        match self.authenticate(req.headers(), uri, bridge).await {
            Caller::Session {
                identity,
                set_cookies,
            } => match self.denial(policy, &identity, req, false) {
                None => forward_auth::allowed(Some(&identity), &self.headers, set_cookies),
                Some(resp) => with_cookies(forward_auth::denied(resp), set_cookies),
            },
            Caller::Token { identity, .. } => match self.denial(policy, &identity, req, true) {
                None => forward_auth::allowed(Some(&identity), &self.headers, Vec::new()),
                Some(resp) => forward_auth::denied(resp),
            },
            Caller::Anonymous { clear } => with_cookies(self.challenge(bridge), clear),
            Caller::Refused(refusal) => {
                forward_auth::denied(answer::refused(refusal, self.realm()))
            }
            // The proxy asking reads the status, not a page.
            Caller::Unavailable(what) => answer::unavailable(what, false),
        }
    }
}

/// Where to come back after login: the path the request asked for, with its query.
fn return_path(ctx: &RequestCtx, uri: &http::Uri) -> String {
    match uri.query() {
        Some(q) => format!("{}?{q}", ctx.path),
        None => ctx.path.clone(),
    }
}

/// The status hyper answered a request with when its parser refused it, as hyper decides it
/// (`role::Server::on_error`): `None` when it answered nothing (an HTTP/2 preface on an HTTP/1
/// connection, an internal error) or the error is not a parse error. hyper names the kind only
/// in its message; the tests below hold hyper to the messages this reads.
fn parse_error_status(err: &hyper::Error) -> Option<StatusCode> {
    if !err.is_parse() || err.is_parse_status() {
        return None;
    }
    let text = err.to_string();
    if err.is_parse_too_large() {
        return Some(if text == "URI too long" {
            StatusCode::URI_TOO_LONG
        } else {
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        });
    }
    if text.contains("HTTP2 preface") || text.starts_with("internal error") {
        return None;
    }
    Some(StatusCode::BAD_REQUEST)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper_util::rt::TokioIo;
    use tokio::io::AsyncWriteExt;

    /// What hyper's HTTP/1 server says when `bytes` arrive: the connection's error.
    async fn served(bytes: &[u8]) -> hyper::Error {
        let (client, server) = tokio::io::duplex(1 << 20);
        let (_read, mut write) = tokio::io::split(client);
        write.write_all(bytes).await.unwrap();
        let service = hyper::service::service_fn(|_req| async {
            Ok::<_, Infallible>(Response::new(Body::empty()))
        });
        hyper::server::conn::http1::Builder::new()
            .max_buf_size(8192)
            .serve_connection(TokioIo::new(server), service)
            .await
            .unwrap_err()
    }

    #[tokio::test]
    async fn the_status_hyper_answered_is_read_from_its_error() {
        let malformed = served(b"GET / HTTP/1.1\r\nHost: a\r\nno colon\r\n\r\n").await;
        assert_eq!(
            parse_error_status(&malformed),
            Some(StatusCode::BAD_REQUEST)
        );
        let big = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
            "a".repeat(9000)
        );
        let big = served(big.as_bytes()).await;
        assert_eq!(
            parse_error_status(&big),
            Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
        );
        // An HTTP/2 preface on an HTTP/1 connection is refused without an answer.
        let h2 = served(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
        assert!(h2.is_parse(), "{h2}");
        assert_eq!(parse_error_status(&h2), None);
    }
}
