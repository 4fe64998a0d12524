//! Criterion micro-benchmarks of the per-request hot path that does not touch the network:
//! request-header rewriting (hop-by-hop, identity stripping, X-Forwarded-*) and path
//! normalisation. Run: `cargo bench --bench headers`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "benchmark setup: a broken fixture should stop the run loudly"
)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Uri};

use gatehouse::proxy::headers::{ForwardInfo, HeaderRules};
use gatehouse::router::normalize_path;

fn typical_browser_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("host", "app.example.com"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/156.0 Safari/537.36",
        ),
        (
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        ),
        ("accept-language", "en-GB,en;q=0.9"),
        ("accept-encoding", "gzip, deflate, br"),
        ("cookie", "_gatehouse=abc; theme=dark"),
        ("connection", "keep-alive"),
        ("sec-fetch-mode", "navigate"),
        ("sec-fetch-dest", "document"),
        ("upgrade-insecure-requests", "1"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    h
}

fn bench(c: &mut Criterion) {
    let config = gatehouse::config::load_str(
        "[[upstreams]]\nurl = \"http://127.0.0.1:8080\"\n",
        None,
        &[],
    )
    .expect("bench config");
    let rules = HeaderRules::new(&config);
    let id = HeaderValue::from_static("0123456789abcdef0123456789abcdef");
    let host = HeaderValue::from_static("app.example.com");
    let info = ForwardInfo {
        peer: "192.0.2.10".parse().unwrap(),
        tls: true,
        request_id: &id,
        client_host: &host,
        upstream_host: &host,
        upgrade: None,
    };
    let base = typical_browser_headers();
    c.bench_function("rewrite_request/browser_10_headers", |b| {
        b.iter_batched_ref(
            || base.clone(),
            |h| rules.rewrite_request(black_box(h), &info),
            criterion::BatchSize::SmallInput,
        )
    });
    let mut spoofed = base.clone();
    spoofed.insert("x-forwarded-user", HeaderValue::from_static("admin"));
    spoofed.insert("x_forwarded_email", HeaderValue::from_static("a@b"));
    spoofed.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
    c.bench_function("rewrite_request/spoofed_identity", |b| {
        b.iter_batched_ref(
            || spoofed.clone(),
            |h| rules.rewrite_request(black_box(h), &info),
            criterion::BatchSize::SmallInput,
        )
    });
    let plain: Uri = "/api/v1/orders/42?expand=items".parse().unwrap();
    let dotted: Uri = "/public/%2e%2e/api//v1/./orders".parse().unwrap();
    c.bench_function("normalize_path/plain", |b| {
        b.iter(|| normalize_path(black_box(&plain)))
    });
    c.bench_function("normalize_path/dot_segments", |b| {
        b.iter(|| normalize_path(black_box(&dotted)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
