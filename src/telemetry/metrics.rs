//! Telemetry, metrics: Prometheus counters and histograms of what the request path did, and
//! `/metrics` on its own listener (`[metrics] listen`, off by default). Never on the public
//! listener (security rule 37): whoever can reach the app must not read the gateway's
//! internals, and a path the app may own is never taken from it.
//!
//! Per-request cost is a few atomic adds: the counter of each status code is resolved once and
//! kept, and everything another component already counts (refresh grants, upstream token
//! requests, readiness) is read when Prometheus scrapes, not on the request path.

use std::convert::Infallible;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus::core::Collector;
use prometheus::proto::MetricFamily;
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use tokio::net::TcpListener;

use crate::body::Body;

/// Bucket bounds in seconds, from 100 µs (the gateway's own overhead) to 10 s (a slow app).
const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 10.0,
];

/// What [`Metrics::authentication`] counts: the outcome of the authenticate step.
#[derive(Debug, Clone, Copy)]
pub enum AuthOutcome {
    Session = 0,
    Token,
    Anonymous,
    Refused,
    Unavailable,
}

const AUTH_OUTCOMES: [&str; 5] = ["session", "token", "anonymous", "refused", "unavailable"];

/// What other components count, read at each scrape.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// `None` without a provider.
    pub provider_ready: Option<bool>,
    pub refresh_grants: Option<u64>,
    /// `None` without `[bearer]`.
    pub jwt_checks: Option<u64>,
    /// Per protected upstream: its name and the token requests made for it.
    pub upstream_token_requests: Vec<(String, u64)>,
    /// `None` unless sessions are in Redis.
    pub redis_up: Option<bool>,
    /// Open client connections per worker thread.
    pub open_connections: Vec<usize>,
}

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    /// `requests` by status code, resolved at first use (100..=999, all `http` allows).
    by_code: Box<[OnceLock<Option<IntCounter>>]>,
    duration: Histogram,
    upstream_duration: Histogram,
    authentications: [IntCounter; 5],
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "gatehouse_requests_total",
                "Requests answered, by HTTP status code.",
            ),
            &["code"],
        )?;
        let duration = histogram(
            "gatehouse_request_duration_seconds",
            "Time from the request head to the response head, gateway and upstream.",
        )?;
        let upstream_duration = histogram(
            "gatehouse_upstream_duration_seconds",
            "Time the upstream took to send its response head.",
        )?;
        let auth = IntCounterVec::new(
            Opts::new(
                "gatehouse_authentications_total",
                "Outcomes of the authenticate step on protected routes and /oauth2/auth.",
            ),
            &["outcome"],
        )?;
        let [a, b, c, d, e] = AUTH_OUTCOMES;
        let authentications = [
            auth.get_metric_with_label_values(&[a])?,
            auth.get_metric_with_label_values(&[b])?,
            auth.get_metric_with_label_values(&[c])?,
            auth.get_metric_with_label_values(&[d])?,
            auth.get_metric_with_label_values(&[e])?,
        ];
        let info = IntGaugeVec::new(
            Opts::new("gatehouse_build_info", "The running version."),
            &["version"],
        )?;
        info.get_metric_with_label_values(&[env!("CARGO_PKG_VERSION")])?
            .set(1);
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(upstream_duration.clone()))?;
        registry.register(Box::new(auth))?;
        registry.register(Box::new(info))?;
        Ok(Self {
            registry,
            requests,
            by_code: (100..=999).map(|_| OnceLock::new()).collect(),
            duration,
            upstream_duration,
            authentications,
        })
    }

    /// A request answered with `status` after `took`; `upstream` when it was forwarded.
    pub fn request(&self, status: StatusCode, took: Duration, upstream: Option<Duration>) {
        self.answered(status);
        self.duration.observe(took.as_secs_f64());
        if let Some(up) = upstream {
            self.upstream_duration.observe(up.as_secs_f64());
        }
    }

    /// One more answer with `status` (and no time to tell: hyper answered a request it could
    /// not parse).
    pub fn answered(&self, status: StatusCode) {
        let code = status.as_u16();
        let slot = self.by_code.get(usize::from(code).wrapping_sub(100));
        if let Some(Some(counter)) = slot.map(|slot| {
            slot.get_or_init(|| {
                self.requests
                    .get_metric_with_label_values(&[status.as_str()])
                    .ok()
            })
        }) {
            counter.inc();
        }
    }

    pub fn authentication(&self, outcome: AuthOutcome) {
        self.authentications[outcome as usize].inc();
    }

    /// The text exposition of every metric, `snapshot` taken just now.
    pub fn render(&self, snapshot: &Snapshot) -> String {
        let mut families = self.registry.gather();
        match from_snapshot(snapshot) {
            Ok(more) => families.extend(more),
            Err(err) => tracing::warn!(error = %err, "metrics of the shared parts left out"),
        }
        families.sort_by(|a, b| a.name().cmp(b.name()));
        let mut out = Vec::new();
        match TextEncoder::new().encode(&families, &mut out) {
            Ok(()) => String::from_utf8(out).unwrap_or_default(),
            Err(err) => {
                tracing::warn!(error = %err, "metrics could not be encoded");
                String::new()
            }
        }
    }
}

fn histogram(name: &str, help: &str) -> Result<Histogram, prometheus::Error> {
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(BUCKETS.to_vec()))
}

/// The metrics of what other components count, built afresh from `s` at each scrape: the
/// values are theirs, so nothing here keeps (or could drift from) a copy.
fn from_snapshot(s: &Snapshot) -> Result<Vec<MetricFamily>, prometheus::Error> {
    let mut out = Vec::new();
    let mut gauge = |name: &str, help: &str, value: i64| -> Result<(), prometheus::Error> {
        let g = IntGauge::new(name, help)?;
        g.set(value);
        out.extend(g.collect());
        Ok(())
    };
    if let Some(ready) = s.provider_ready {
        gauge(
            "gatehouse_provider_ready",
            "1 when the provider's discovery and keys are loaded.",
            i64::from(ready),
        )?;
    }
    if let Some(up) = s.redis_up {
        gauge(
            "gatehouse_redis_up",
            "1 while the Redis session store answers.",
            i64::from(up),
        )?;
    }
    if let Some(grants) = s.refresh_grants {
        let c = IntCounter::new(
            "gatehouse_refresh_grants_total",
            "Refresh-token grants sent to the provider.",
        )?;
        c.inc_by(grants);
        out.extend(c.collect());
    }
    if let Some(checks) = s.jwt_checks {
        let c = IntCounter::new(
            "gatehouse_bearer_jwt_checks_total",
            "Bearer JWTs verified in full (signature and claims); a token the verified-token cache holds counts no more.",
        )?;
        c.inc_by(checks);
        out.extend(c.collect());
    }
    if !s.upstream_token_requests.is_empty() {
        let v = IntCounterVec::new(
            Opts::new(
                "gatehouse_upstream_token_requests_total",
                "Client-credentials token requests made for a protected upstream.",
            ),
            &["upstream"],
        )?;
        for (name, n) in &s.upstream_token_requests {
            v.get_metric_with_label_values(&[name.as_str()])?.inc_by(*n);
        }
        out.extend(v.collect());
    }
    if !s.open_connections.is_empty() {
        let v = IntGaugeVec::new(
            Opts::new(
                "gatehouse_open_connections",
                "Client connections open, per worker thread (each serves its connections for their whole life).",
            ),
            &["worker"],
        )?;
        for (worker, n) in s.open_connections.iter().enumerate() {
            v.get_metric_with_label_values(&[worker.to_string()])?
                .set(i64::try_from(*n).unwrap_or(i64::MAX));
        }
        out.extend(v.collect());
    }
    Ok(out)
}

/// Scrapers served at once; more wait for a slot (a scrape takes microseconds).
const MAX_SCRAPERS: usize = 16;
/// Longest a metrics connection lives, whatever its client does.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(30);

/// Serves `/metrics` on `listener` until `stop` completes: plain HTTP/1.1, GET or HEAD only,
/// one request per connection, a bounded number of connections each with a deadline.
/// `snapshot` is taken at each scrape.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    snapshot: Arc<dyn Fn() -> Snapshot + Send + Sync>,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPERS));
    loop {
        let slot = tokio::select! {
            () = &mut stop => return,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => return,
            },
        };
        let (stream, peer) = tokio::select! {
            () = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    tracing::warn!(error = %err, "metrics listener could not accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let metrics = metrics.clone();
        let snapshot = snapshot.clone();
        let service = service_fn(move |req: Request<Incoming>| {
            let answer = scrape(&req, &metrics, &*snapshot);
            async move { Ok::<_, Infallible>(answer) }
        });
        tokio::spawn(async move {
            let _slot = slot;
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_DEADLINE, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => {
                    tracing::debug!(%peer, error = %err, "metrics connection ended with an error");
                }
                Err(_) => tracing::debug!(%peer, "metrics connection cut at its deadline"),
            }
        });
    }
}

fn scrape(
    req: &Request<Incoming>,
    metrics: &Metrics,
    snapshot: &dyn Fn() -> Snapshot,
) -> Response<Body> {
    let plain = |status: StatusCode, text: &'static str| {
        let mut resp = Response::new(Body::from_static(text));
        *resp.status_mut() = status;
        resp
    };
    if req.uri().path() != "/metrics" {
        return plain(StatusCode::NOT_FOUND, "not found\n");
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        resp.headers_mut()
            .insert(header::ALLOW, http::HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    let mut resp = Response::new(Body::from(metrics.render(&snapshot())));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_requests_by_code_and_reads_snapshots_at_scrape() {
        let m = Metrics::new().unwrap();
        m.request(
            StatusCode::OK,
            Duration::from_millis(2),
            Some(Duration::from_millis(1)),
        );
        m.request(StatusCode::OK, Duration::from_millis(3), None);
        m.request(StatusCode::UNAUTHORIZED, Duration::from_micros(200), None);
        m.authentication(AuthOutcome::Refused);
        let snapshot = Snapshot {
            provider_ready: Some(true),
            refresh_grants: Some(7),
            jwt_checks: Some(4),
            upstream_token_requests: vec![("api".into(), 2)],
            redis_up: None,
            open_connections: vec![3, 2],
        };
        let text = m.render(&snapshot);
        for line in [
            "gatehouse_requests_total{code=\"200\"} 2",
            "gatehouse_bearer_jwt_checks_total 4",
            "gatehouse_requests_total{code=\"401\"} 1",
            "gatehouse_request_duration_seconds_count 3",
            "gatehouse_upstream_duration_seconds_count 1",
            "gatehouse_authentications_total{outcome=\"refused\"} 1",
            "gatehouse_authentications_total{outcome=\"session\"} 0",
            "gatehouse_provider_ready 1",
            "gatehouse_refresh_grants_total 7",
            "gatehouse_upstream_token_requests_total{upstream=\"api\"} 2",
            "gatehouse_open_connections{worker=\"0\"} 3",
            "gatehouse_open_connections{worker=\"1\"} 2",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
        assert!(text.contains("gatehouse_build_info{version="));
        assert!(
            !text.contains("gatehouse_redis_up"),
            "no Redis, no Redis gauge"
        );
        // The shared parts' counts are theirs: a later scrape shows their later value.
        let again = m.render(&Snapshot {
            refresh_grants: Some(9),
            ..Snapshot::default()
        });
        assert!(
            again.contains("gatehouse_refresh_grants_total 9"),
            "{again}"
        );
    }
}
