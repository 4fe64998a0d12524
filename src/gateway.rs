//! The request path on one screen. `Gateway::handle` is the only code that sequences the steps;
//! each step lives in the module named after it:
//!
//! ```text
//! route (router.rs) ─▶ built-in endpoint (endpoints.rs)
//!                  └─▶ forward (proxy/): identity stripping, X-Forwarded-*, stream both ways
//! ```
//! then `X-Request-Id` on the answer and one access-log event (telemetry.rs). Failures of any
//! step become an HTTP answer in exactly one place (error.rs).

use std::sync::Arc;

use http::{HeaderName, Request, Response};
use hyper::body::Incoming;

use crate::body::Body;
use crate::config::Config;
use crate::context::{ConnInfo, RequestCtx};
use crate::error::{self, GatewayError};
use crate::proxy::{self, ClientBuildError, Proxy};
use crate::router::{self, RejectReason, Router, Target};
use crate::{endpoints, telemetry};

/// Why a gateway could not be built from a (valid) configuration.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Upstream(#[from] ClientBuildError),
}

/// Everything shared by all requests: the configuration and the components built from it.
pub struct Gateway {
    router: Router,
    proxy: Proxy,
    access_log: bool,
}

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

impl Gateway {
    pub fn new(config: Arc<Config>) -> Result<Self, BuildError> {
        Ok(Self {
            router: Router::new(&config),
            proxy: Proxy::new(&config)?,
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
            Target::Health | Target::Ready | Target::Builtin => {
                ctx.route = "builtin";
                return Ok(endpoints::answer(target, req.method()));
            }
            Target::NoRoute => return Err(GatewayError::NoRoute),
            Target::Upstream(index) => index,
        };
        ctx.route = "upstream";

        // Forward. Identity headers the client sent are stripped inside, on every route.
        let client_host =
            proxy::client_host_header(req.uri(), req.headers()).ok_or(RejectReason::MissingHost)?;
        Ok(self.proxy.forward(index, req, client_host, ctx).await?)
    }
}
