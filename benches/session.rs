//! Criterion micro-benchmarks of the session cookie: sealing (store) and opening (load) a typical
//! session: email, five groups, an ID token and an access token of ~900 bytes each, a refresh
//! token. Run: `cargo bench --bench session`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "benchmark setup: a broken fixture should stop the run loudly"
)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use http::header::COOKIE;
use http::{HeaderMap, HeaderValue};

use gatehouse::config::{SameSite, Secret, SessionConfig};
use gatehouse::session::{Loaded, Session, SessionCookies};

const NOW: u64 = 1_700_000_000;

fn cookies() -> SessionCookies {
    SessionCookies::new(&SessionConfig {
        secrets: vec![Secret::new(vec![7u8; 32])],
        cookie_name: "__Host-_gatehouse".into(),
        cookie_domain: None,
        cookie_secure: true,
        same_site: SameSite::Lax,
        lifetime: Duration::from_secs(12 * 3600),
        idle_timeout: Duration::from_secs(3600),
        login_timeout: Duration::from_secs(600),
        max_logins: 5,
        refresh_before: Duration::from_secs(60),
        store: gatehouse::config::StoreConfig::Cookie,
    })
    .unwrap()
}

/// A JWT-shaped string of about `len` bytes.
fn token(len: usize) -> String {
    let body: String = (0..len).map(|i| (b'a' + (i % 26) as u8) as char).collect();
    format!("eyJhbGciOiJSUzI1NiJ9.{body}")
}

fn typical_session() -> Session {
    let mut s = Session::new("248289761001", NOW);
    s.email = Some("alice@example.com".into());
    s.email_verified = true;
    s.name = Some("Alice Example".into());
    s.preferred_username = Some("alice".into());
    s.groups = ["admins", "dev", "ops", "readers", "writers"]
        .map(String::from)
        .to_vec();
    s.id_token = Some(Secret::new(token(900)));
    s.access_token = Some(Secret::new(token(900)));
    s.access_expires_at = Some(NOW + 300);
    s.refresh_token = Some(Secret::new(token(120)));
    s.sid = Some("08a5019c-17e1-4977-8f42-65a12843ea02".into());
    s
}

/// The Cookie header a browser sends back after `set`, plus an app cookie.
fn request_for(set: &[HeaderValue]) -> HeaderMap {
    let mut pairs = vec!["theme=dark".to_owned()];
    for v in set {
        let s = v.to_str().unwrap();
        pairs.push(s.split(';').next().unwrap().to_owned());
    }
    let mut h = HeaderMap::new();
    h.insert(COOKIE, HeaderValue::from_str(&pairs.join("; ")).unwrap());
    h
}

fn bench(c: &mut Criterion) {
    let cookies = cookies();
    let session = typical_session();
    let empty = HeaderMap::new();
    let set = cookies.store(&session, &empty).unwrap();
    let request = request_for(&set);
    assert!(matches!(
        cookies.load(&request, NOW + 1),
        Loaded::Valid { .. }
    ));
    eprintln!(
        "typical session: {} Set-Cookie header(s), {} bytes",
        set.len(),
        set.iter().map(HeaderValue::len).sum::<usize>()
    );

    c.bench_function("session/seal (store)", |b| {
        b.iter(|| {
            cookies
                .store(black_box(&session), black_box(&empty))
                .unwrap()
        })
    });
    c.bench_function("session/open (load)", |b| {
        b.iter(|| cookies.load(black_box(&request), black_box(NOW + 1)))
    });
    c.bench_function("session/load without a session cookie", |b| {
        let h = request_for(&[]);
        b.iter(|| cookies.load(black_box(&h), black_box(NOW + 1)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
