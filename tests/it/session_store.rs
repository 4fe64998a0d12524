//! One suite, every session store: the same test functions run against the cookie store and
//! the Redis store (a real `redis-server`), through the API the login flow uses. Where the two
//! differ by design (a signed-out cookie copy), the test says which store promises what.
//! Redis-only behaviour (encryption at rest, the cross-replica lock, an outage) follows.

use std::sync::Arc;
use std::time::Duration;

use gatehouse::config::{RedisConfig, RedisTopology, SameSite, Secret, SessionConfig, StoreConfig};
use gatehouse::session::{Loaded, Session, SessionError, SessionStore, StoreShared};
use http::header::COOKIE;
use http::{HeaderMap, HeaderValue};

use crate::support::redis::RedisServer;

const NAME: &str = "_gh";

fn config(store: StoreConfig, idle: u64, lifetime: u64) -> SessionConfig {
    SessionConfig {
        secrets: vec![Secret::new(b"0123456789abcdef0123456789abcdef".to_vec())],
        cookie_name: NAME.into(),
        cookie_domain: None,
        cookie_secure: false,
        same_site: SameSite::Lax,
        lifetime: Duration::from_secs(lifetime),
        idle_timeout: Duration::from_secs(idle),
        login_timeout: Duration::from_secs(600),
        max_logins: 3,
        refresh_before: Duration::from_secs(60),
        store,
    }
}

fn redis_store(server: &RedisServer) -> StoreConfig {
    StoreConfig::Redis(RedisConfig {
        topology: RedisTopology::Standalone(server.url().parse().unwrap()),
        username: None,
        password: None,
        tls_ca_file: None,
        timeout: Duration::from_secs(1),
    })
}

/// A store under test, its Redis (if any), and a cookie jar.
struct Fixture {
    store: SessionStore,
    redis: Option<RedisServer>,
    jar: Jar,
}

impl Fixture {
    fn cookie() -> Self {
        Self::cookie_with(3600, 12 * 3600)
    }

    fn cookie_with(idle: u64, lifetime: u64) -> Self {
        let c = config(StoreConfig::Cookie, idle, lifetime);
        Self {
            store: SessionStore::new(&c, Arc::default()).unwrap(),
            redis: None,
            jar: Jar::default(),
        }
    }

    fn redis() -> Self {
        Self::redis_with(3600, 12 * 3600)
    }

    fn redis_with(idle: u64, lifetime: u64) -> Self {
        let server = RedisServer::start();
        let c = config(redis_store(&server), idle, lifetime);
        Self {
            store: SessionStore::new(&c, Arc::default()).unwrap(),
            redis: Some(server),
            jar: Jar::default(),
        }
    }

    /// The same kind of store with other timeouts (and the same Redis).
    fn with_timeouts(self, idle: u64, lifetime: u64) -> Self {
        let store = match &self.redis {
            Some(r) => config(redis_store(r), idle, lifetime),
            None => config(StoreConfig::Cookie, idle, lifetime),
        };
        Self {
            store: SessionStore::new(&store, Arc::default()).unwrap(),
            ..self
        }
    }

    async fn login(&mut self, sub: &str) -> Session {
        let session = typical(sub, now());
        let set = self
            .store
            .create(&session, &self.jar.headers())
            .await
            .unwrap();
        self.jar.apply(&set);
        session
    }

    async fn load(&self, at: u64) -> Loaded {
        self.store.load(&self.jar.headers(), at).await.unwrap()
    }
}

/// Keeps the cookies the store sets, like a browser (Max-Age=0 deletes).
#[derive(Default, Clone)]
struct Jar(Vec<(String, String)>);

impl Jar {
    fn apply(&mut self, set: &[HeaderValue]) {
        for v in set {
            let v = v.to_str().unwrap();
            let pair = v.split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            self.0.retain(|(n, _)| n != name);
            if !v.contains("Max-Age=0") {
                self.0.push((name.to_owned(), value.to_owned()));
            }
        }
    }

    fn headers(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        if !self.0.is_empty() {
            let line: Vec<String> = self.0.iter().map(|(n, v)| format!("{n}={v}")).collect();
            h.insert(COOKIE, HeaderValue::from_str(&line.join("; ")).unwrap());
        }
        h
    }
}

use gatehouse::oidc::unix_now as now;

/// A typical person: email, 5 groups, an ID token, an access token and a refresh token of
/// realistic sizes (RS256 JWTs of ~1 KB, an opaque refresh token).
pub fn typical(sub: &str, at: u64) -> Session {
    let mut s = Session::new(sub, at);
    s.id = gatehouse::oidc::random_token(32);
    s.email = Some(format!("{sub}@example.com"));
    s.email_verified = true;
    s.name = Some("Alice Example".into());
    s.preferred_username = Some(sub.into());
    s.groups = ["staff", "developers", "readers", "ops", "billing"]
        .map(str::to_owned)
        .to_vec();
    s.id_token = Some(Secret::new(format!(
        "eyJhbGciOiJSUzI1NiJ9.{}.{}",
        "I".repeat(600),
        "S".repeat(342)
    )));
    s.access_token = Some(Secret::new(format!(
        "eyJhbGciOiJSUzI1NiJ9.{}.{}",
        "A".repeat(700),
        "T".repeat(342)
    )));
    s.access_expires_at = Some(at + 300);
    s.refresh_token = Some(Secret::new(format!("REFRESH-{}", "r".repeat(78))));
    s.sid = Some(format!("sid-of-{sub}"));
    s
}

fn valid(loaded: Loaded) -> (Session, bool) {
    match loaded {
        Loaded::Valid { session, touch } => (session, touch),
        other => panic!("expected a valid session, got {other:?}"),
    }
}

// --- The suite: each function runs against both stores. --------------------------------------

async fn a_logged_in_session_is_found_again(mut f: Fixture) {
    let s = f.login("alice").await;
    let (back, touch) = valid(f.load(now()).await);
    assert_eq!(back, s);
    assert!(!touch);
    assert_eq!(
        back.refresh_token.unwrap().expose(),
        s.refresh_token.unwrap().expose()
    );
}

async fn no_cookie_is_no_session(f: Fixture) {
    assert_eq!(f.load(now()).await, Loaded::None);
}

async fn use_after_a_while_touches_and_keeps_the_session_alive(mut f: Fixture) {
    f.login("alice").await;
    let later = now() + 61;
    let (mut s, touch) = valid(f.load(later).await);
    assert!(touch);
    s.last_seen = later;
    let set = f.store.save(&s, &f.jar.headers()).await.unwrap();
    f.jar.apply(&set);
    // Past the first idle timeout, still alive: the touch moved it.
    let (back, _) = valid(f.load(now() + 3600 + 30).await);
    assert_eq!(back.last_seen, later);
}

async fn an_idle_session_expires(f: Fixture) {
    // Real time: a two-second idle timeout (Redis expires the key itself); two, so that a
    // slow first load still falls inside it.
    let mut f = f.with_timeouts(2, 3600);
    let s = f.login("alice").await;
    assert!(matches!(f.load(s.last_seen).await, Loaded::Valid { .. }));
    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert_eq!(f.load(now()).await, Loaded::Expired);
}

async fn the_absolute_lifetime_ends_an_active_session(mut f: Fixture) {
    let s = f.login("alice").await;
    let end = s.created_at + 12 * 3600;
    let mut active = s.clone();
    for at in [end - 3000, end - 10] {
        active.last_seen = at;
        let set = f.store.save(&active, &f.jar.headers()).await.unwrap();
        f.jar.apply(&set);
    }
    assert!(matches!(f.load(end - 1).await, Loaded::Valid { .. }));
    assert_eq!(f.load(end).await, Loaded::Expired);
    // A session already at its end cannot be stored again.
    active.last_seen = end;
    assert!(matches!(
        f.store.save(&active, &f.jar.headers()).await,
        Err(SessionError::Expired)
    ));
}

async fn sign_out_clears_the_cookie_and_redis_refuses_a_replayed_copy(mut f: Fixture) {
    let s = f.login("alice").await;
    let copy = f.jar.clone();
    let (ended, clear) = f.store.delete(&f.jar.headers(), now()).await.unwrap();
    assert_eq!(ended.unwrap().id, s.id);
    f.jar.apply(&clear);
    assert!(f.jar.0.is_empty(), "{:?}", f.jar.0);
    assert_eq!(f.load(now()).await, Loaded::None);
    let replayed = f.store.load(&copy.headers(), now()).await.unwrap();
    if f.store.is_server_side() {
        // Rule 12: the server-side session is gone, whoever kept the cookie.
        assert_eq!(replayed, Loaded::Expired);
        // And a late touch from a request that read it before the sign-out does not bring
        // it back.
        assert!(matches!(
            f.store.save(&s, &copy.headers()).await,
            Err(SessionError::Ended)
        ));
        assert_eq!(
            f.store.load(&copy.headers(), now()).await.unwrap(),
            Loaded::Expired
        );
    } else {
        // The cookie store keeps nothing to delete: a copy taken before sign-out opens until
        // it expires. That is what "store = redis" is for.
        assert!(matches!(replayed, Loaded::Valid { .. }));
    }
}

async fn login_always_makes_a_fresh_session(mut f: Fixture) {
    let first = f.login("alice").await;
    let first_cookie = f.jar.clone();
    let second = f.login("alice").await;
    assert_ne!(first.id, second.id);
    assert_ne!(first_cookie.0, f.jar.0, "a new cookie value at every login");
    let (now_s, _) = valid(f.load(now()).await);
    assert_eq!(now_s.id, second.id);
    if f.store.is_server_side() {
        // The session the browser carried before logging in again is over.
        assert_eq!(
            f.store.load(&first_cookie.headers(), now()).await.unwrap(),
            Loaded::Expired
        );
    }
}

async fn a_tampered_or_foreign_cookie_is_no_session(mut f: Fixture) {
    f.login("alice").await;
    let (name, value) = f.jar.0[0].clone();
    let mut bytes = value.into_bytes();
    for i in [0, bytes.len() / 2, bytes.len() - 1] {
        let mut t = bytes.clone();
        t[i] = if t[i] == b'A' { b'B' } else { b'A' };
        let h = Jar(vec![(name.clone(), String::from_utf8(t).unwrap())]).headers();
        assert_eq!(
            f.store.load(&h, now()).await.unwrap(),
            Loaded::None,
            "byte {i}"
        );
    }
    bytes.truncate(bytes.len() / 2);
    let h = Jar(vec![(name.clone(), String::from_utf8(bytes).unwrap())]).headers();
    assert_eq!(f.store.load(&h, now()).await.unwrap(), Loaded::None);
    // Sealed with another secret: no session either.
    let mut other = config(StoreConfig::Cookie, 3600, 3600);
    other.secrets = vec![Secret::new(vec![9; 32])];
    let foreign = SessionStore::new(&other, Arc::default()).unwrap();
    let set = foreign
        .create(&typical("mallory", now()), &HeaderMap::new())
        .await
        .unwrap();
    let mut jar = Jar::default();
    jar.apply(&set);
    assert_eq!(
        f.store.load(&jar.headers(), now()).await.unwrap(),
        Loaded::None
    );
}

async fn the_refresh_lock_is_single_flight(f: Fixture) {
    let store = Arc::new(f.store);
    let first = store
        .lock("session-1", Duration::from_secs(5))
        .await
        .unwrap();
    assert!(!first.waited);
    let waiter = {
        let store = store.clone();
        tokio::spawn(async move {
            let lock = store
                .lock("session-1", Duration::from_secs(5))
                .await
                .unwrap();
            let waited = lock.waited;
            store.unlock(lock).await.unwrap();
            waited
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !waiter.is_finished(),
        "the second holder waits for the first"
    );
    store.unlock(first).await.unwrap();
    assert!(
        waiter.await.unwrap(),
        "and is told it waited (re-read before refreshing)"
    );
    // Another session is not held up.
    let other = store
        .lock("session-2", Duration::from_secs(5))
        .await
        .unwrap();
    assert!(!other.waited);
    drop(f.redis);
}

macro_rules! both_stores {
    ($($name:ident),* $(,)?) => {
        mod cookie_store {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::Fixture::cookie()).await
            })*
        }
        mod redis_store {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::Fixture::redis()).await
            })*
        }
    };
}

both_stores!(
    a_logged_in_session_is_found_again,
    no_cookie_is_no_session,
    use_after_a_while_touches_and_keeps_the_session_alive,
    an_idle_session_expires,
    the_absolute_lifetime_ends_an_active_session,
    sign_out_clears_the_cookie_and_redis_refuses_a_replayed_copy,
    login_always_makes_a_fresh_session,
    a_tampered_or_foreign_cookie_is_no_session,
    the_refresh_lock_is_single_flight,
);

// --- Redis only. --------------------------------------------------------------------------

#[tokio::test]
async fn redis_holds_no_token_in_clear_and_only_an_id_in_the_cookie() {
    let mut f = Fixture::redis();
    let s = f.login("alice").await;
    let server = f.redis.as_ref().unwrap();
    let keys = server.keys("gatehouse:s:*");
    assert_eq!(keys.len(), 1);
    assert!(!keys[0].contains(&s.id), "the key names no session id");
    let value = server.get(&keys[0]).unwrap();
    let text = String::from_utf8_lossy(&value);
    for needle in [
        s.access_token.as_ref().unwrap().expose().as_str(),
        s.refresh_token.as_ref().unwrap().expose().as_str(),
        "AAAAAAAAAAAAAAAA",
        "REFRESH-",
        "eyJ",
        "alice",
        "example.com",
        "staff",
    ] {
        assert!(!text.contains(needle), "{needle} is readable in Redis");
    }
    // TTL: the idle timeout (shorter than what is left of the lifetime).
    let ttl = server.pttl(&keys[0]);
    assert!(ttl > 3_500_000 && ttl <= 3_600_000, "{ttl}");
    // The cookie: one small value, no token, no name.
    assert_eq!(f.jar.0.len(), 1);
    let (name, cookie) = &f.jar.0[0];
    assert_eq!(name, NAME);
    assert!(cookie.len() < 120, "{} bytes", cookie.len());
    assert!(!cookie.contains("eyJ"));
    // Indexes for back-channel logout, by sub and by sid, expiring too.
    let idx = server.keys("gatehouse:[up]:*");
    assert_eq!(idx.len(), 2, "{idx:?}");
    for k in idx {
        assert!(server.pttl(&k) > 0);
    }
}

#[tokio::test]
async fn a_session_value_moved_to_another_key_does_not_open() {
    let mut f = Fixture::redis();
    f.login("alice").await;
    let alice_jar = f.jar.clone();
    f.jar = Jar::default();
    f.login("mallory").await;
    let server = f.redis.as_ref().unwrap();
    let keys = server.keys("gatehouse:s:*");
    assert_eq!(keys.len(), 2);
    // Whoever can write to Redis copies mallory's value over alice's key.
    let (alice_key, mallory_key) = {
        let (a, _) = valid(f.store.load(&alice_jar.headers(), now()).await.unwrap());
        let a_key = keys
            .iter()
            .find(|k| **k == format!("gatehouse:s:{}", sha256_hex(&a.id)))
            .unwrap()
            .clone();
        let m_key = keys.iter().find(|k| **k != a_key).unwrap().clone();
        (a_key, m_key)
    };
    let value = server.get(&mallory_key).unwrap();
    let _: () = redis::cmd("SET")
        .arg(&alice_key)
        .arg(value)
        .query(&mut server.connection())
        .unwrap();
    assert_eq!(
        f.store.load(&alice_jar.headers(), now()).await.unwrap(),
        Loaded::Expired
    );
}

fn sha256_hex(s: &str) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, s.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn back_channel_logout_ends_every_session_of_a_subject_or_provider_session() {
    let mut f = Fixture::redis();
    f.login("alice").await;
    let first = f.jar.clone();
    f.jar = Jar::default();
    f.login("alice").await;
    let second = f.jar.clone();
    f.jar = Jar::default();
    let bob = f.login("bob").await;
    let bob_jar = f.jar.clone();
    assert_eq!(f.store.end_sessions(Some("alice"), None).await.unwrap(), 2);
    for jar in [&first, &second] {
        assert_eq!(
            f.store.load(&jar.headers(), now()).await.unwrap(),
            Loaded::Expired
        );
    }
    assert!(matches!(
        f.store.load(&bob_jar.headers(), now()).await.unwrap(),
        Loaded::Valid { .. }
    ));
    assert_eq!(
        f.store
            .end_sessions(None, bob.sid.as_deref())
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        f.store.load(&bob_jar.headers(), now()).await.unwrap(),
        Loaded::Expired
    );
}

#[tokio::test]
async fn the_refresh_lock_holds_across_replicas_and_expires_with_a_dead_holder() {
    let server = RedisServer::start();
    let c = config(redis_store(&server), 3600, 3600);
    // Two replicas: separate processes in production, here separate stores sharing nothing
    // but Redis.
    let one = Arc::new(SessionStore::new(&c, Arc::new(StoreShared::default())).unwrap());
    let two = Arc::new(SessionStore::new(&c, Arc::new(StoreShared::default())).unwrap());
    let held = one.lock("sid-x", Duration::from_secs(5)).await.unwrap();
    let waiter = {
        let two = two.clone();
        tokio::spawn(async move {
            two.lock("sid-x", Duration::from_secs(5))
                .await
                .unwrap()
                .waited
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiter.is_finished());
    one.unlock(held).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_secs(2), waiter)
            .await
            .unwrap()
            .unwrap()
    );
    // A holder that never unlocks (a crashed replica: its lock is forgotten, not released)
    // holds up the others for the lock's TTL only.
    let crashed = one.lock("sid-y", Duration::from_millis(300)).await.unwrap();
    std::mem::forget(crashed);
    let started = std::time::Instant::now();
    let lock = two.lock("sid-y", Duration::from_secs(5)).await.unwrap();
    assert!(lock.waited);
    assert!(started.elapsed() < Duration::from_secs(2));
    // Only the holder's token releases: an unlock after expiry leaves the new holder alone.
    let late = one.lock("sid-z", Duration::from_millis(200)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let current = two.lock("sid-z", Duration::from_secs(5)).await.unwrap();
    one.unlock(late).await.unwrap();
    assert_eq!(
        server.keys("gatehouse:l:*").len(),
        2,
        "sid-y and sid-z still held"
    );
    two.unlock(current).await.unwrap();
    two.unlock(lock).await.unwrap();
    assert!(server.keys("gatehouse:l:*").is_empty());
}

#[tokio::test]
async fn redis_down_is_unavailable_not_anonymous_and_sessions_survive_a_restart() {
    let mut server = RedisServer::start_persistent();
    let c = config(redis_store(&server), 3600, 3600);
    let store = SessionStore::new(&c, Arc::default()).unwrap();
    let mut jar = Jar::default();
    let s = typical("alice", now());
    jar.apply(&store.create(&s, &jar.headers()).await.unwrap());
    assert!(matches!(
        store.load(&jar.headers(), now()).await,
        Ok(Loaded::Valid { .. })
    ));

    server.kill();
    for _ in 0..3 {
        let started = std::time::Instant::now();
        let outcome = store.load(&jar.headers(), now()).await;
        assert!(
            matches!(outcome, Err(SessionError::Unavailable)),
            "{outcome:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(3), "fails fast");
    }
    // No cookie at all is still simply no session: Redis is not asked.
    assert_eq!(
        store.load(&HeaderMap::new(), now()).await.unwrap(),
        Loaded::None
    );
    assert!(matches!(
        store.delete(&jar.headers(), now()).await,
        Err(SessionError::Unavailable)
    ));
    assert!(matches!(
        store
            .create(&typical("bob", now()), &HeaderMap::new())
            .await,
        Err(SessionError::Unavailable)
    ));

    server.restart();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let back = loop {
        match store.load(&jar.headers(), now()).await {
            Ok(loaded) => break loaded,
            Err(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("no recovery: {e}"),
        }
    };
    assert_eq!(valid(back).0, s);
}
