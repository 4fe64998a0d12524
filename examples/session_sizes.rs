//! Figures for the session stores: bytes per typical session in the cookie and in Redis, and
//! memory with many sessions created through the store API.
//!
//! `cargo run --release --example session_sizes -- redis://127.0.0.1:6379 [COUNT] [COOKIES]`
//!
//! A typical session: email, name, 5 groups, an ID token and an access token (RS256 JWTs of
//! about 1 KB each) and an opaque refresh token. COUNT sessions (default 100 000) are created in
//! that Redis (use a scratch server: they stay until they expire). With COOKIES (a file path),
//! the Cookie header of every session is written there, one per line, for a load run that
//! sends each session through a gateway. Prints this process's RSS and Redis's `used_memory`
//! before and after.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use gatehouse::config::{RedisConfig, RedisTopology, SameSite, Secret, SessionConfig, StoreConfig};
use gatehouse::session::{Session, SessionStore};
use http::HeaderMap;

fn config(store: StoreConfig) -> SessionConfig {
    SessionConfig {
        secrets: vec![Secret::new(vec![7; 32])],
        cookie_name: "__Host-_gatehouse".into(),
        cookie_domain: None,
        cookie_secure: true,
        same_site: SameSite::Lax,
        lifetime: Duration::from_secs(12 * 3600),
        idle_timeout: Duration::from_secs(3600),
        login_timeout: Duration::from_secs(600),
        max_logins: 5,
        refresh_before: Duration::from_secs(60),
        store,
    }
}

fn typical(n: usize, now: u64) -> Session {
    let sub = format!("user-{n:06}");
    let mut s = Session::new(&sub, now);
    s.id = gatehouse::oidc::random_token(32);
    s.email = Some(format!("{sub}@example.com"));
    s.email_verified = true;
    s.name = Some("Alice Example".into());
    s.preferred_username = Some(sub.clone());
    s.groups = ["staff", "developers", "readers", "ops", "billing"]
        .map(str::to_owned)
        .to_vec();
    let jwt = |body: usize| {
        format!(
            "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsxIn0.{}.{}",
            gatehouse::oidc::random_token(body * 3 / 4),
            gatehouse::oidc::random_token(256)
        )
    };
    s.id_token = Some(Secret::new(jwt(600)));
    s.access_token = Some(Secret::new(jwt(500)));
    s.access_expires_at = Some(now + 300);
    s.refresh_token = Some(Secret::new(gatehouse::oidc::random_token(64)));
    s.sid = Some(gatehouse::oidc::random_token(16));
    s
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn cookie_bytes(set: &[http::HeaderValue]) -> (usize, usize) {
    let pairs: Vec<&str> = set
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .collect();
    let header = pairs.join("; ");
    (pairs.len(), header.len())
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(url) = args.next() else {
        eprintln!("usage: session_sizes REDIS_URL [COUNT] [COOKIES_FILE]");
        return ExitCode::from(2);
    };
    let count: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(100_000);
    let cookies_file = args.next();
    let Ok(parsed) = url.parse() else {
        eprintln!("{url} is not a URL");
        return ExitCode::from(2);
    };
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return ExitCode::FAILURE;
    };
    let redis_config = config(StoreConfig::Redis(RedisConfig {
        topology: RedisTopology::Standalone(parsed),
        username: None,
        password: None,
        tls_ca_file: None,
        timeout: Duration::from_secs(1),
    }));
    let result: Result<(), Box<dyn std::error::Error>> = runtime.block_on(async {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs();
        let cookie_store = SessionStore::new(&config(StoreConfig::Cookie), Arc::default())?;
        let redis_store = SessionStore::new(&redis_config, Arc::default())?;
        let mut conn = redis::Client::open(url.as_str())?
            .get_multiplexed_async_connection()
            .await?;

        let sample = typical(0, now);
        let json = serde_json::to_vec(&sample)?.len();
        let (chunks, cookie_len) = cookie_bytes(&cookie_store.create(&sample, &HeaderMap::new()).await?);
        println!("typical session: {json} bytes of JSON");
        println!("cookie store: Cookie header {cookie_len} bytes in {chunks} cookie(s)");
        let (_, id_cookie) = cookie_bytes(&redis_store.create(&sample, &HeaderMap::new()).await?);
        let keys: Vec<String> = redis::cmd("KEYS").arg("gatehouse:s:*").query_async(&mut conn).await?;
        let mut value_len = 0usize;
        let mut memory = 0i64;
        for key in &keys {
            let len: usize = redis::cmd("STRLEN").arg(key).query_async(&mut conn).await?;
            let mem: Option<i64> = redis::cmd("MEMORY").arg("USAGE").arg(key).query_async(&mut conn).await?;
            value_len = value_len.max(len);
            memory = memory.max(mem.unwrap_or(0));
        }
        println!("redis store: Cookie header {id_cookie} bytes; value {value_len} bytes, MEMORY USAGE {memory} bytes per session key (plus its share of the sub and sid index sets)");

        let used = |info: String| {
            info.lines()
                .find_map(|l| l.strip_prefix("used_memory:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        let before_redis = used(redis::cmd("INFO").arg("memory").query_async(&mut conn).await?);
        let before_rss = rss_kib();
        let started = std::time::Instant::now();
        let mut lines = Vec::new();
        for n in 1..=count {
            let set = redis_store.create(&typical(n, now), &HeaderMap::new()).await?;
            if cookies_file.is_some() {
                let pair: Vec<&str> = set
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .filter_map(|v| v.split(';').next())
                    .collect();
                lines.push(pair.join("; "));
            }
        }
        let elapsed = started.elapsed();
        let after_redis = used(redis::cmd("INFO").arg("memory").query_async(&mut conn).await?);
        println!(
            "created {count} sessions through the store API in {:.1} s ({:.0}/s, one connection, sequential)",
            elapsed.as_secs_f64(),
            count as f64 / elapsed.as_secs_f64()
        );
        println!(
            "this process RSS: {before_rss} KiB before, {} KiB after",
            rss_kib()
        );
        println!(
            "redis used_memory: {} MiB more ({} bytes per session, indexes included)",
            (after_redis.saturating_sub(before_redis)) / (1024 * 1024),
            after_redis.saturating_sub(before_redis) / count.max(1) as u64
        );
        if let Some(path) = cookies_file {
            std::fs::write(&path, lines.join("\n") + "\n")?;
            println!("cookies written to {path}");
        }
        Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{err}");
            ExitCode::FAILURE
        }
    }
}
