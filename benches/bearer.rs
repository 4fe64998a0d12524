//! Criterion micro-benchmarks of bearer JWT verification, per algorithm: cold (the full check a
//! token costs the first time: parse, key lookup, signature, claims) and cache hit (a token
//! already verified: one SHA-256 and one cache lookup). Keys come from a real JWKS over
//! loopback (the integration tests' TestIssuer), fetched once before measuring.
//! Run: `cargo bench --bench bearer`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    dead_code,
    reason = "benchmark setup: a broken fixture should stop the run loudly"
)]

#[path = "../tests/it/support/issuer.rs"]
mod issuer;

use std::hint::black_box;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;
use jsonwebtoken::Algorithm;
use url::Url;

use gatehouse::authn::Verdict;
use gatehouse::authn::jwt::JwtVerifier;
use gatehouse::config::{IssuerConfig, IssuerKeys};
use issuer::{Alg, TestIssuer};

const AUD: &str = "api://bench";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Runs a verification that needs no I/O (keys loaded) without a runtime.
fn ready(f: impl std::future::Future<Output = Verdict>) -> Verdict {
    f.now_or_never().expect("keys are loaded: no I/O expected")
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let issuer = rt.block_on(TestIssuer::start());
    let config = IssuerConfig {
        issuer: Url::parse(issuer.issuer()).unwrap(),
        keys: IssuerKeys::Jwks(Url::parse(&issuer.jwks_uri()).unwrap()),
        audiences: vec![AUD.to_owned()],
        algorithms: vec![
            Algorithm::RS256,
            Algorithm::PS256,
            Algorithm::ES256,
            Algorithm::EdDSA,
        ],
        hmac_secret: None,
        require_typ: true,
        leeway: Duration::from_secs(60),
    };
    let verifier =
        JwtVerifier::new(&[config], None, 10_000, vec!["groups".into()], 16 * 1024).unwrap();
    let mut group = c.benchmark_group("bearer_verify");
    for alg in [Alg::RS256, Alg::PS256, Alg::ES256, Alg::EdDSA] {
        let token = issuer.mint(AUD).alg(alg).sign();
        // The first call fetches the JWKS (inside the runtime); later ones need no I/O.
        let first = rt.block_on(verifier.verify(&token, now()));
        assert!(matches!(first, Verdict::Valid(_)), "{alg:?}: {first:?}");
        let t = now();
        group.bench_function(format!("{}_cold", alg.name()), |b| {
            b.iter(|| ready(verifier.verify_uncached(black_box(&token), t)))
        });
        group.bench_function(format!("{}_cache_hit", alg.name()), |b| {
            b.iter(|| ready(verifier.verify(black_box(&token), t)))
        });
    }
    group.finish();
    drop(rt);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
