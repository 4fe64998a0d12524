//! Telemetry: how the gateway tells operators what happened. Sets up `tracing` (text or JSON,
//! level from the config or `RUST_LOG`) and writes the access log: one event per request, with
//! the path but never the query, a cookie, a token or a secret. Metrics are in [`metrics`].

pub mod metrics;

use http::StatusCode;
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};
use crate::context::RequestCtx;

/// Installs the global subscriber. `RUST_LOG`, when set, wins over `[log] level`. A second call
/// (tests that start several gateways in one process) keeps the first subscriber.
pub fn init(log: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout);
    let _ = match log.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.with_ansi(false).try_init(),
    };
}

/// The access-log event for a request hyper's parser refused and answered itself (400, 414,
/// 431) before any step saw it: nothing of it is known but the peer and why. Same target and
/// fields as [`access`], so one query finds every answer the gateway gave.
pub fn access_unparsed(peer: std::net::IpAddr, status: StatusCode, reason: &str) {
    tracing::info!(
        target: "gatehouse::access",
        request_id = "-",
        peer = %peer,
        method = %"-",
        path = %"-",
        route = "unparsed",
        upstream = "-",
        user = "-",
        status = status.as_u16(),
        reason,
        "request"
    );
}

/// The access-log event for a finished request (its response head is on its way).
pub fn access(ctx: &RequestCtx, status: StatusCode) {
    let latency_ms = ctx.started.elapsed().as_secs_f64() * 1000.0;
    let upstream_ms = ctx.upstream_latency.map(|d| d.as_secs_f64() * 1000.0);
    tracing::info!(
        target: "gatehouse::access",
        request_id = ctx.request_id.to_str().unwrap_or("-"),
        peer = %ctx.conn.peer.ip(),
        method = %ctx.method,
        path = %ctx.path,
        route = ctx.route,
        upstream = ctx.upstream.as_deref().unwrap_or("-"),
        user = ctx.user.as_deref().unwrap_or("-"),
        status = status.as_u16(),
        latency_ms,
        upstream_ms,
        "request"
    );
}
