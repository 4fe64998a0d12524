//! The request path on one screen. `Gateway::steps` is the only code that sequences the steps;
//! each step lives in the module named after it:
//!
//! ```text
//! route (router.rs) ─▶ built-in endpoint (endpoints/)
//!                  └─▶ authenticate (endpoints/login.rs: session cookie)
//!                      ─▶ authorize (authz.rs) ─▶ identity headers (identity.rs)
//!                      ─▶ forward (proxy/): header hygiene, stream both ways
//! ```
//! then `X-Request-Id` on the answer and one access-log event (telemetry.rs). Failures of any
//! step become an HTTP answer in exactly one place (error.rs).

use std::sync::Arc;

use http::{HeaderName, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::authz::{Authorizer, Decision};
use crate::body::Body;
use crate::config::{Config, Policy};
use crate::context::{ConnInfo, RequestCtx};
use crate::endpoints::login::{self, Authn, Login, UsedStates, with_cookies};
use crate::endpoints::{self, pages};
use crate::error::{self, GatewayError};
use crate::oidc::{Provider, ProviderError};
use crate::proxy::{self, ClientBuildError, Proxy};
use crate::router::{self, RejectReason, Router, Target};
use crate::{identity, telemetry};

/// Why a gateway could not be built from a (valid) configuration.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Upstream(#[from] ClientBuildError),
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error(transparent)]
    Session(#[from] crate::session::SessionError),
}

/// What every worker shares: the provider (its metadata, keys and background refresh) and the
/// memory of redeemed login states.
pub struct Shared {
    provider: Option<Arc<Provider>>,
    used_states: Arc<UsedStates>,
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
        Ok(Arc::new(Self {
            provider,
            used_states: Arc::default(),
        }))
    }
}

/// One worker's gateway: the components built from the configuration.
pub struct Gateway {
    router: Router,
    authorizer: Authorizer,
    login: Option<Login>,
    proxy: Proxy,
    headers: crate::config::HeadersConfig,
    access_log: bool,
}

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

impl Gateway {
    pub fn new(config: Arc<Config>, shared: &Shared) -> Result<Self, BuildError> {
        let login = match &shared.provider {
            Some(provider) => Login::new(&config, provider.clone(), shared.used_states.clone())?,
            None => None,
        };
        Ok(Self {
            router: Router::new(&config),
            authorizer: Authorizer::new(&config),
            login,
            proxy: Proxy::new(&config)?,
            headers: config.headers.clone(),
            access_log: config.log.access_log,
        })
    }

    /// Serves one request. Never fails: every error is already an HTTP answer here.
    pub async fn handle(&self, req: Request<Incoming>, conn: ConnInfo) -> Response<Body> {
        let mut ctx = RequestCtx::new(req.method(), req.headers(), conn);
        let mut response = match self.steps(req, &mut ctx).await {
            Ok(response) => response,
            Err(err) => error::response(&err, &ctx),
        };
        // Every answer carries the id, so a person can quote it and an operator find the line.
        response
            .headers_mut()
            .insert(X_REQUEST_ID, ctx.request_id.clone());
        if self.access_log {
            telemetry::access(&ctx, response.status());
        }
        response
    }

    async fn steps(
        &self,
        req: Request<Incoming>,
        ctx: &mut RequestCtx,
    ) -> Result<Response<Body>, GatewayError> {
        // Route. Refuse ambiguous framing before anything reads the request (rules 19, 20,
        // 35); normalise the path once, so every later step and the upstream see the same one.
        self.router.check_framing(req.uri(), req.headers())?;
        let host = router::request_host(req.uri(), req.headers())?;
        let (target, path) = self.router.route(req.uri(), &host)?;
        ctx.path = path;
        let index = match target {
            Target::Health => return Ok(endpoints::health(req.method(), true)),
            Target::Ready => {
                let ready = self.login.as_ref().is_none_or(Login::ready);
                return Ok(endpoints::health(req.method(), ready));
            }
            Target::Builtin => {
                ctx.route = "builtin";
                return Ok(self.builtin(&req, ctx).await);
            }
            Target::NoRoute => return Err(GatewayError::NoRoute),
            Target::Upstream(index) => index,
        };
        ctx.route = "upstream";

        // Authenticate, when the route's policy wants to know who is calling. No identity:
        // a person navigating is sent to log in, a script gets 401 (never a redirect).
        let policy = self.authorizer.policy(req.method(), &host, &ctx.path);
        let mut set_cookies = Vec::new();
        let identity = match (policy, &self.login) {
            (Policy::Public, _) => None,
            (_, None) => return Ok(error::plain(StatusCode::FORBIDDEN, "forbidden\n")),
            (_, Some(login)) => match login.authenticate(req.headers()) {
                Authn::Session {
                    identity,
                    set_cookies: refreshed,
                } => {
                    set_cookies = refreshed;
                    Some(identity)
                }
                Authn::Anonymous { clear } => {
                    let resp = if pages::is_navigation(req.method(), req.headers()) {
                        login.start(req.headers(), &return_path(ctx, req.uri()))
                    } else {
                        login::unauthorized_json(login.prefix())
                    };
                    return Ok(with_cookies(resp, clear));
                }
            },
        };

        // Authorize. A denial is a page (or JSON), never a login loop.
        if let Some(id) = &identity {
            ctx.user = Some(id.user.clone());
            if let Decision::Deny(reason) = self.authorizer.decide(policy, id) {
                tracing::info!(user = %id.user, reason = %reason, "request denied");
                let prefix = self.login.as_ref().map_or("/oauth2", Login::prefix);
                let resp = if pages::is_navigation(req.method(), req.headers()) {
                    login::forbidden_page(&reason, prefix)
                } else {
                    pages::json(
                        StatusCode::FORBIDDEN,
                        &serde_json::json!({"error": "forbidden", "reason": reason}),
                    )
                };
                return Ok(with_cookies(resp, set_cookies));
            }
        }

        // Identity headers and forward. The client's copies of identity headers were removed
        // inside the proxy's rewrite, on every route; the gateway's own cookies never leave.
        let client_host =
            proxy::client_host_header(req.uri(), req.headers()).ok_or(RejectReason::MissingHost)?;
        let login = self.login.as_ref();
        let names = &self.headers;
        let resp = self
            .proxy
            .forward(index, req, client_host, ctx, |headers| {
                if let Some(login) = login {
                    login.strip_cookies(headers);
                }
                if let Some(id) = &identity {
                    identity::set_headers(headers, id, names);
                }
            })
            .await?;
        Ok(with_cookies(resp, set_cookies))
    }

    /// The endpoints under the proxy prefix.
    async fn builtin(&self, req: &Request<Incoming>, ctx: &RequestCtx) -> Response<Body> {
        if let Some(resp) = endpoints::get_only(req.method()) {
            return resp;
        }
        let Some(login) = &self.login else {
            return endpoints::not_found();
        };
        let query = req.uri().query();
        match ctx.path.strip_prefix(login.prefix()) {
            Some("/start") => login.start_endpoint(req.headers(), query),
            Some("/callback") => login.callback(req.headers(), query, &self.authorizer).await,
            Some("/sign_out") => login.sign_out(req.headers(), query),
            Some("/userinfo") => login.userinfo(req.headers()),
            _ => endpoints::not_found(),
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
