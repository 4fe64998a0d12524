//! The session store: where a session lives between requests, behind one type that the login
//! flow uses for every read and write ([`SessionStore`]).
//!
//! * **cookie** (default): the whole session sealed in the browser's cookie
//!   ([`SessionCookies`]). Nothing is kept server-side, so sign-out clears the cookie and a copy
//!   of it stays valid until it expires (the README says so).
//! * **redis**: the cookie carries only a sealed random 256-bit session id; the session is
//!   sealed at rest in Redis (AES-256-GCM-SIV with the session secret, bound to its key, so
//!   whoever reads Redis reads no token) under `gatehouse:s:<hex SHA-256(id)>`, with a TTL of
//!   what is left of the idle timeout or the absolute lifetime, whichever ends first. Sign-out
//!   deletes it, so a replayed cookie opens nothing (rule 12). Sets indexed by the provider's
//!   `sub` and `sid` name the sessions back-channel logout ends.
//!
//! Redis that cannot be reached is an outcome of its own ([`SessionError::Unavailable`]): the
//! caller answers 503, never "no session" (that would log people out) and never a pass (rule
//! 36). One line is logged when Redis goes away and one when it is back; the connection is
//! re-made on demand, at most a few times a second.
//!
//! Refresh single-flight ([`SessionStore::lock`]): one holder per session id, in this process
//! (a mutex shared by every worker) and, with Redis, across replicas (`SET NX PX`, released by
//! a compare-and-delete script). This module does not refresh anything itself.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lc_rs::digest::{SHA256, digest};
use http::{HeaderMap, HeaderValue};
use redis::aio::MultiplexedConnection;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Client, Cmd, FromRedisValue, IntoConnectionInfo, RedisError};
use tokio::sync::OwnedMutexGuard;

use super::SessionError;
use super::cookies::{Loaded, SessionCookies};
use super::model::Session;
use super::seal::{Purpose, Sealer};
use crate::config::{RedisConfig, RedisTopology, SessionConfig, StoreConfig};

/// Redis key prefixes: sessions, lock, index by `sub`, index by `sid`.
const SESSION_PREFIX: &str = "gatehouse:s:";
const LOCK_PREFIX: &str = "gatehouse:l:";
const SUB_PREFIX: &str = "gatehouse:u:";
const SID_PREFIX: &str = "gatehouse:p:";
/// Logout tokens already used, by `jti`.
const JTI_PREFIX: &str = "gatehouse:j:";
/// After a failed connection attempt, requests fail at once for this long instead of each
/// trying again (a request storm during an outage costs no connection storm).
const RECONNECT_PAUSE: Duration = Duration::from_millis(250);
/// Releases the lock only if it still holds our token (it may have expired and been taken).
const UNLOCK_SCRIPT: &str = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";

/// State shared by every worker's store: the in-process locks, and whether Redis is known to be
/// down (so an outage is logged once, not once per worker or request).
#[derive(Debug, Default)]
pub struct StoreShared {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    redis_down: AtomicBool,
}

impl StoreShared {
    /// False from a failed Redis call until one succeeds again.
    pub fn redis_up(&self) -> bool {
        !self.redis_down.load(Ordering::Relaxed)
    }

    fn local_lock(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self
            .locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.entry(key.to_owned()).or_default().clone()
    }

    /// Forgets the lock of `key` when nobody holds or waits for it any more.
    fn forget_lock(&self, key: &str) {
        let mut map = self
            .locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.get(key).is_some_and(|m| Arc::strong_count(m) == 1) {
            map.remove(key);
        }
    }

    fn redis_failed(&self, err: &dyn std::fmt::Display) {
        if !self.redis_down.swap(true, Ordering::Relaxed) {
            tracing::error!(
                error = %err,
                "session store: Redis is unreachable; requests that need a session are answered 503 until it is back"
            );
        }
    }

    fn redis_ok(&self) {
        if self.redis_down.load(Ordering::Relaxed) && self.redis_down.swap(false, Ordering::Relaxed)
        {
            tracing::info!("session store: Redis is reachable again");
        }
    }
}

/// Where sessions live; one per worker, built from the configuration.
#[derive(Debug)]
pub struct SessionStore {
    cookies: SessionCookies,
    backend: Backend,
    shared: Arc<StoreShared>,
    lifetime: u64,
    idle_timeout: u64,
}

#[derive(Debug)]
enum Backend {
    Cookie,
    Redis {
        redis: Arc<Redis>,
        /// Seals sessions at rest (its own purpose, bound to the key).
        sealer: Sealer,
    },
}

/// The refresh lock of one session, held until [`SessionStore::unlock`] (or drop, which
/// releases it in the background).
#[derive(Debug)]
pub struct SessionLock {
    /// True when someone else held the lock first: they may have refreshed the session while
    /// this caller waited, so re-read it ([`SessionStore::reload`]) before refreshing again.
    pub waited: bool,
    key: String,
    shared: Arc<StoreShared>,
    local: Option<OwnedMutexGuard<()>>,
    /// Redis key and our token, while held there.
    remote: Option<(Arc<Redis>, String, String)>,
}

impl Drop for SessionLock {
    fn drop(&mut self) {
        if let Some((redis, key, token)) = self.remote.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            // Without a runtime the lock simply expires after its TTL.
            runtime.spawn(async move {
                let _ = redis.unlock(&key, &token).await;
            });
        }
        self.local = None;
        self.shared.forget_lock(&self.key);
    }
}

impl SessionStore {
    pub fn new(config: &SessionConfig, shared: Arc<StoreShared>) -> Result<Self, SessionError> {
        let cookies = SessionCookies::new(config)?;
        let backend = match &config.store {
            StoreConfig::Cookie => Backend::Cookie,
            StoreConfig::Redis(redis) => Backend::Redis {
                redis: Arc::new(Redis::new(redis, shared.clone())?),
                sealer: Sealer::new(&config.secrets)?,
            },
        };
        Ok(Self {
            cookies,
            backend,
            shared,
            lifetime: config.lifetime.as_secs(),
            idle_timeout: config.idle_timeout.as_secs(),
        })
    }

    /// The cookies: pending logins and stripping the gateway's cookies before forwarding.
    pub fn cookies(&self) -> &SessionCookies {
        &self.cookies
    }

    /// True when sessions live server-side (sign-out and back-channel logout end them for good).
    pub fn is_server_side(&self) -> bool {
        matches!(self.backend, Backend::Redis { .. })
    }

    /// The session the request carries, checked against the absolute lifetime and the idle
    /// timeout at `now`. Fails only when the store cannot be asked (Redis down).
    pub async fn load(&self, headers: &HeaderMap, now: u64) -> Result<Loaded, SessionError> {
        match &self.backend {
            Backend::Cookie => Ok(self.cookies.load(headers, now)),
            Backend::Redis { redis, sealer } => {
                let Some(id) = self.cookies.load_id(headers) else {
                    return Ok(Loaded::None);
                };
                self.read(redis, sealer, &id, now).await
            }
        }
    }

    /// The session `id` as the store has it now, after waiting for a refresh lock; `None` for
    /// the cookie store, which keeps nothing server-side (the request's cookie is all there is).
    pub async fn reload(&self, id: &str, now: u64) -> Result<Option<Loaded>, SessionError> {
        match &self.backend {
            Backend::Cookie => Ok(None),
            Backend::Redis { redis, sealer } => self.read(redis, sealer, id, now).await.map(Some),
        }
    }

    /// Stores a session that was just logged in (a fresh id, rule 30) and answers the
    /// Set-Cookie values that carry it; a server-side session the browser still pointed at is
    /// ended.
    pub async fn create(
        &self,
        session: &Session,
        headers: &HeaderMap,
    ) -> Result<Vec<HeaderValue>, SessionError> {
        let Backend::Redis { redis, sealer } = &self.backend else {
            return self.cookies.store(session, headers);
        };
        let remaining = self.remaining(session);
        if let Some(old) = self.cookies.load_id(headers)
            && old != session.id
        {
            redis
                .query::<i64>(redis::cmd("DEL").arg(session_key(&old)))
                .await?;
        }
        self.write(redis, sealer, session, Write::New).await?;
        let lifetime_ms = self.lifetime.saturating_mul(1000);
        let member = hex_sha256(&session.id);
        for index in index_keys(session) {
            redis
                .query::<i64>(redis::cmd("SADD").arg(&index).arg(&member))
                .await?;
            // No session outlives a full lifetime, so neither must the index.
            redis
                .query::<i64>(redis::cmd("PEXPIRE").arg(&index).arg(lifetime_ms))
                .await?;
        }
        self.cookies.store_id(&session.id, remaining, headers)
    }

    /// Stores a changed session (a new `last_seen`, refreshed tokens) under its id. With Redis
    /// a session that was ended meanwhile (sign-out elsewhere) stays ended:
    /// [`SessionError::Ended`]. Answers the Set-Cookie values to send (none with Redis).
    pub async fn save(
        &self,
        session: &Session,
        headers: &HeaderMap,
    ) -> Result<Vec<HeaderValue>, SessionError> {
        match &self.backend {
            Backend::Cookie => self.cookies.store(session, headers),
            Backend::Redis { redis, sealer } => {
                self.write(redis, sealer, session, Write::Existing).await?;
                Ok(Vec::new())
            }
        }
    }

    /// Sign-out: ends the request's session server-side (with Redis, a copy of the cookie then
    /// opens nothing, rule 12) and answers it (for the provider's logout hint) with the
    /// Set-Cookie values that clear the cookies. With Redis down nothing is cleared: the caller
    /// answers 503 and the person can try again with the cookie still in place.
    pub async fn delete(
        &self,
        headers: &HeaderMap,
        now: u64,
    ) -> Result<(Option<Session>, Vec<HeaderValue>), SessionError> {
        let session = match &self.backend {
            Backend::Cookie => match self.cookies.load(headers, now) {
                Loaded::Valid { session, .. } => Some(session),
                Loaded::None | Loaded::Expired => None,
            },
            Backend::Redis { redis, sealer } => match self.cookies.load_id(headers) {
                None => None,
                Some(id) => {
                    let session = self.fetch(redis, sealer, &id).await?;
                    redis
                        .query::<i64>(redis::cmd("DEL").arg(session_key(&id)))
                        .await?;
                    if let Some(s) = &session {
                        unindex(redis, s).await?;
                    }
                    session
                }
            },
        };
        Ok((session, self.cookies.clear(headers)))
    }

    /// Ends a stored session that can no longer be used (its refresh token was refused): with
    /// Redis it is deleted, so no replica and no copy of the cookie presents that refresh token
    /// again. The cookie store holds nothing to delete.
    pub async fn remove(&self, session: &Session) -> Result<(), SessionError> {
        let Backend::Redis { redis, .. } = &self.backend else {
            return Ok(());
        };
        redis
            .query::<i64>(redis::cmd("DEL").arg(session_key(&session.id)))
            .await?;
        unindex(redis, session).await
    }

    /// Back-channel logout: ends the sessions of the provider session `sid`, or, when the token
    /// has no `sid`, every session of the user `sub`; answers how many were ended. The cookie
    /// store keeps no sessions to end (answers 0).
    pub async fn end_sessions(
        &self,
        sub: Option<&str>,
        sid: Option<&str>,
    ) -> Result<usize, SessionError> {
        let Backend::Redis { redis, .. } = &self.backend else {
            return Ok(0);
        };
        // §2.4: with a `sid` the token names one provider session (its `sub` only says whose);
        // only without one does it mean every session of the user.
        let index = match (sid, sub) {
            (Some(sid), _) => index_key(SID_PREFIX, sid),
            (None, Some(sub)) => index_key(SUB_PREFIX, sub),
            (None, None) => return Ok(0),
        };
        let mut ended = 0;
        let members: Vec<String> = redis.query(redis::cmd("SMEMBERS").arg(&index)).await?;
        for member in members {
            let deleted: i64 = redis
                .query(redis::cmd("DEL").arg(format!("{SESSION_PREFIX}{member}")))
                .await?;
            ended += usize::try_from(deleted).unwrap_or(0);
        }
        redis.query::<i64>(redis::cmd("DEL").arg(&index)).await?;
        Ok(ended)
    }

    /// Marks a logout token's `jti` as used for `ttl`; false when it was used already. With
    /// Redis this holds across replicas and restarts (a token replayed to another replica
    /// would otherwise end the sessions of its `sub` signed in since); the cookie store leaves
    /// it to the in-process memory ([`super::logout::Logouts`]) and answers true.
    pub async fn use_once(&self, jti: &str, ttl: Duration) -> Result<bool, SessionError> {
        let Backend::Redis { redis, .. } = &self.backend else {
            return Ok(true);
        };
        let set: Option<String> = redis
            .query(
                redis::cmd("SET")
                    .arg(index_key(JTI_PREFIX, jti))
                    .arg(1)
                    .arg("NX")
                    .arg("EX")
                    .arg(ttl.as_secs().max(1)),
            )
            .await?;
        Ok(set.is_some())
    }

    /// Forgets that a `jti` was used, so the provider's retry of a logout that could not be
    /// carried out is accepted.
    pub async fn forget_use(&self, jti: &str) -> Result<(), SessionError> {
        let Backend::Redis { redis, .. } = &self.backend else {
            return Ok(());
        };
        redis
            .query::<i64>(redis::cmd("DEL").arg(index_key(JTI_PREFIX, jti)))
            .await?;
        Ok(())
    }

    /// Takes the refresh lock of session `id` (use [`Session::id`]) for at most `ttl`, waiting
    /// up to `ttl` for another holder: in this process always, across replicas with Redis. A
    /// holder that dies keeps it at most `ttl`. Check [`SessionLock::waited`]: when true,
    /// [`Self::reload`] before refreshing.
    pub async fn lock(&self, id: &str, ttl: Duration) -> Result<SessionLock, SessionError> {
        let deadline = Instant::now() + ttl;
        let mutex = self.shared.local_lock(id);
        let mut waited = false;
        let local = match mutex.clone().try_lock_owned() {
            Ok(guard) => guard,
            Err(_) => {
                waited = true;
                match tokio::time::timeout(ttl, mutex.lock_owned()).await {
                    Ok(guard) => guard,
                    Err(_) => {
                        self.shared.forget_lock(id);
                        return Err(SessionError::LockTimeout);
                    }
                }
            }
        };
        let mut lock = SessionLock {
            waited,
            key: id.to_owned(),
            shared: self.shared.clone(),
            local: Some(local),
            remote: None,
        };
        let Backend::Redis { redis, .. } = &self.backend else {
            return Ok(lock);
        };
        let key = format!("{LOCK_PREFIX}{}", hex_sha256(id));
        let token = crate::oidc::random_token(16);
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut pause = Duration::from_millis(10);
        loop {
            let taken: Option<String> = redis
                .query(
                    redis::cmd("SET")
                        .arg(&key)
                        .arg(&token)
                        .arg("NX")
                        .arg("PX")
                        .arg(ttl_ms),
                )
                .await?;
            if taken.is_some() {
                lock.remote = Some((redis.clone(), key, token));
                return Ok(lock);
            }
            lock.waited = true;
            if Instant::now() + pause > deadline {
                return Err(SessionError::LockTimeout);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    /// Releases a lock taken with [`Self::lock`].
    pub async fn unlock(&self, mut lock: SessionLock) -> Result<(), SessionError> {
        if let Some((redis, key, token)) = lock.remote.take() {
            redis.unlock(&key, &token).await?;
        }
        Ok(())
    }

    /// Seconds left of the session's absolute lifetime, counted from `last_seen`.
    fn remaining(&self, session: &Session) -> u64 {
        session
            .created_at
            .saturating_add(self.lifetime)
            .saturating_sub(session.last_seen)
    }

    async fn read(
        &self,
        redis: &Redis,
        sealer: &Sealer,
        id: &str,
        now: u64,
    ) -> Result<Loaded, SessionError> {
        // A genuine cookie whose session is gone (idle, signed out, ended by the provider) is
        // an expired session: the caller clears the cookie.
        let Some(session) = self.fetch(redis, sealer, id).await? else {
            return Ok(Loaded::Expired);
        };
        Ok(check(session, now, self.lifetime, self.idle_timeout))
    }

    async fn fetch(
        &self,
        redis: &Redis,
        sealer: &Sealer,
        id: &str,
    ) -> Result<Option<Session>, SessionError> {
        let key = session_key(id);
        let value: Option<Vec<u8>> = redis.query(redis::cmd("GET").arg(&key)).await?;
        Ok(value
            .and_then(|v| sealer.open_bytes(Purpose::Stored, key.as_bytes(), &v))
            .and_then(|json| serde_json::from_slice::<Session>(&json).ok())
            .filter(|s| s.id == id))
    }

    async fn write(
        &self,
        redis: &Redis,
        sealer: &Sealer,
        session: &Session,
        mode: Write,
    ) -> Result<(), SessionError> {
        let remaining = self.remaining(session);
        if remaining == 0 {
            return Err(SessionError::Expired);
        }
        let ttl_ms = remaining.min(self.idle_timeout.max(1)).saturating_mul(1000);
        let key = session_key(&session.id);
        let json = serde_json::to_vec(session).map_err(SessionError::Encode)?;
        let sealed = sealer.seal_bytes(Purpose::Stored, key.as_bytes(), &json)?;
        let written: Option<String> = redis
            .query(
                redis::cmd("SET")
                    .arg(&key)
                    .arg(sealed)
                    .arg("PX")
                    .arg(ttl_ms)
                    .arg(match mode {
                        // A fresh 256-bit id never exists; an update must never resurrect a
                        // session that was signed out in between.
                        Write::New => "NX",
                        Write::Existing => "XX",
                    }),
            )
            .await?;
        match written {
            Some(_) => Ok(()),
            None => Err(SessionError::Ended),
        }
    }
}

#[derive(Clone, Copy)]
enum Write {
    New,
    Existing,
}

/// The common expiry rule of both stores (rule 10) and when to touch: after a tenth of the
/// idle timeout, at most a minute, so most requests write nothing.
fn check(session: Session, now: u64, lifetime: u64, idle_timeout: u64) -> Loaded {
    let absolute_end = session.created_at.saturating_add(lifetime);
    let idle_end = session.last_seen.saturating_add(idle_timeout);
    if now >= absolute_end || now >= idle_end {
        return Loaded::Expired;
    }
    let touch_after = (idle_timeout / 10).min(60);
    let touch = now.saturating_sub(session.last_seen) > touch_after;
    Loaded::Valid { session, touch }
}

fn hex_sha256(value: &str) -> String {
    digest(&SHA256, value.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The index sets a session is a member of: its user's, and its provider session's.
fn index_keys(session: &Session) -> impl Iterator<Item = String> {
    [
        Some(index_key(SUB_PREFIX, &session.sub)),
        session.sid.as_deref().map(|sid| index_key(SID_PREFIX, sid)),
    ]
    .into_iter()
    .flatten()
}

/// Takes a session out of the `sub` and `sid` indexes back-channel logout reads.
async fn unindex(redis: &Redis, session: &Session) -> Result<(), SessionError> {
    let member = hex_sha256(&session.id);
    for index in index_keys(session) {
        redis
            .query::<i64>(redis::cmd("SREM").arg(index).arg(&member))
            .await?;
    }
    Ok(())
}

/// The Redis key of session `id`: a hash, so the key names no live id (a key list is no
/// cookie list).
fn session_key(id: &str) -> String {
    format!("{SESSION_PREFIX}{}", hex_sha256(id))
}

fn index_key(prefix: &str, value: &str) -> String {
    format!("{prefix}{}", hex_sha256(value))
}

/// A worker's way to Redis: a multiplexed connection (or a cluster connection), made on first
/// use and again after a failure.
struct Redis {
    topology: Topology,
    /// `redis_timeout`: one connection attempt or one command.
    timeout: Duration,
    conn: Mutex<Option<Conn>>,
    connecting: tokio::sync::Mutex<()>,
    retry_at: Mutex<Option<Instant>>,
    shared: Arc<StoreShared>,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis").finish_non_exhaustive()
    }
}

enum Topology {
    Standalone(Client),
    Sentinel(tokio::sync::Mutex<redis::sentinel::SentinelClient>),
    Cluster(redis::cluster::ClusterClient),
}

#[derive(Clone)]
enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

fn build_error(err: &RedisError) -> SessionError {
    SessionError::InvalidStoreSettings(err.to_string())
}

impl Redis {
    fn new(config: &RedisConfig, shared: Arc<StoreShared>) -> Result<Self, SessionError> {
        let mut redis = redis::RedisConnectionInfo::default();
        if let Some(user) = &config.username {
            redis = redis.set_username(user);
        }
        if let Some(password) = &config.password {
            redis = redis.set_password(password.expose());
        }
        let info = |url: &url::Url| {
            url.as_str()
                .into_connection_info()
                .map_err(|e| build_error(&e))
        };
        // A private CA for rediss://, in place of the system roots.
        let certs = config
            .tls_ca_file
            .as_ref()
            .map(|(_, pem)| redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.clone()),
            });
        let topology = match &config.topology {
            RedisTopology::Standalone(url) => {
                let parsed = info(url)?;
                let db = parsed.redis_settings().db();
                let parsed = parsed.set_redis_settings(redis.set_db(db));
                let client = match certs {
                    Some(certs) => Client::build_with_tls(parsed, certs),
                    None => Client::open(parsed),
                }
                .map_err(|e| build_error(&e))?;
                Topology::Standalone(client)
            }
            RedisTopology::Sentinel { sentinels, master } => {
                let nodes = sentinels
                    .iter()
                    .map(|url| info(url).map(|i| i.addr().clone()))
                    .collect::<Result<Vec<_>, _>>()?;
                let mut builder = redis::sentinel::SentinelClientBuilder::new(
                    nodes,
                    master,
                    redis::sentinel::SentinelServerType::Master,
                )
                .map_err(|e| build_error(&e))?;
                // The user and password are the master's; the sentinels are asked without.
                if let Some(user) = &config.username {
                    builder = builder.set_client_to_redis_username(user);
                }
                if let Some(password) = &config.password {
                    builder = builder.set_client_to_redis_password(password.expose());
                }
                if sentinels.iter().any(|u| u.scheme() == "rediss") {
                    builder = builder.set_client_to_redis_tls_mode(redis::TlsMode::Secure);
                    if let Some(certs) = certs {
                        builder = builder
                            .set_client_to_sentinel_certificates(certs.clone())
                            .set_client_to_redis_certificates(certs);
                    }
                }
                let client = builder.build().map_err(|e| build_error(&e))?;
                Topology::Sentinel(tokio::sync::Mutex::new(client))
            }
            RedisTopology::Cluster(nodes) => {
                let nodes = nodes.iter().map(info).collect::<Result<Vec<_>, _>>()?;
                let mut builder = redis::cluster::ClusterClientBuilder::new(nodes)
                    .connection_timeout(config.timeout)
                    .response_timeout(config.timeout)
                    .retries(1);
                if let Some(user) = &config.username {
                    builder = builder.username(user);
                }
                if let Some(password) = &config.password {
                    builder = builder.password(password.expose());
                }
                if let Some(certs) = certs {
                    builder = builder.certs(certs);
                }
                Topology::Cluster(builder.build().map_err(|e| build_error(&e))?)
            }
        };
        Ok(Self {
            topology,
            timeout: config.timeout,
            conn: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            retry_at: Mutex::new(None),
            shared,
        })
    }

    async fn connection(&self) -> Result<Conn, SessionError> {
        if let Some(conn) = self.current() {
            return Ok(conn);
        }
        let _one = self.connecting.lock().await;
        if let Some(conn) = self.current() {
            return Ok(conn);
        }
        let paused = self
            .retry_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some_and(|at| Instant::now() < at);
        if paused {
            return Err(SessionError::Unavailable);
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        // A Sentinel lookup and then the master's connection: two steps of `timeout` each.
        let made = tokio::time::timeout(self.timeout * 2, async {
            match &self.topology {
                Topology::Standalone(client) => client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map(Conn::Single),
                Topology::Sentinel(client) => {
                    let client = client.lock().await.async_get_client().await?;
                    client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await
                        .map(Conn::Single)
                }
                Topology::Cluster(client) => client.get_async_connection().await.map(Conn::Cluster),
            }
        })
        .await;
        match made {
            Ok(Ok(conn)) => {
                *self
                    .conn
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(conn.clone());
                Ok(conn)
            }
            Ok(Err(err)) => Err(self.down(&err)),
            Err(_) => Err(self.down(&"connecting timed out")),
        }
    }

    fn current(&self) -> Option<Conn> {
        self.conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Forgets the connection and pauses reconnecting briefly.
    fn down(&self, err: &dyn std::fmt::Display) -> SessionError {
        *self
            .conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        *self
            .retry_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some(Instant::now() + RECONNECT_PAUSE);
        self.shared.redis_failed(err);
        SessionError::Unavailable
    }

    async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, SessionError> {
        // Boxed: the redis crate's futures are kilobytes, and every request's future would
        // otherwise carry (and copy) them even on routes that never ask Redis.
        let conn = match self.current() {
            Some(conn) => conn,
            None => Box::pin(self.connection()).await?,
        };
        let result = match conn {
            Conn::Single(mut c) => Box::pin(cmd.query_async(&mut c)).await,
            Conn::Cluster(mut c) => Box::pin(cmd.query_async(&mut c)).await,
        };
        match result {
            Ok(value) => {
                self.shared.redis_ok();
                Ok(value)
            }
            // Whatever went wrong (connection, timeout, an error reply such as NOAUTH), the
            // session cannot be known: fail closed (rule 36), with a fresh connection next time.
            Err(err) => Err(self.down(&err)),
        }
    }

    async fn unlock(&self, key: &str, token: &str) -> Result<(), SessionError> {
        self.query::<i64>(
            redis::cmd("EVAL")
                .arg(UNLOCK_SCRIPT)
                .arg(1)
                .arg(key)
                .arg(token),
        )
        .await
        .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_rule_matches_the_cookie_store() {
        let s = Session::new("a", 1000);
        assert!(matches!(
            check(s.clone(), 1000, 100, 50),
            Loaded::Valid { touch: false, .. }
        ));
        assert!(matches!(
            check(s.clone(), 1006, 100, 50),
            Loaded::Valid { touch: true, .. }
        ));
        assert_eq!(check(s.clone(), 1050, 100, 50), Loaded::Expired);
        let mut active = s;
        active.last_seen = 1099;
        assert_eq!(check(active, 1100, 100, 50), Loaded::Expired);
    }

    #[test]
    fn keys_name_no_session_id() {
        let k = session_key("secret-id");
        assert!(k.starts_with(SESSION_PREFIX));
        assert!(!k.contains("secret-id"));
        assert_eq!(k.len(), SESSION_PREFIX.len() + 64);
    }

    #[tokio::test]
    async fn local_lock_is_single_flight_and_forgotten_after_use() {
        let config = crate::session::tests_config();
        let store = SessionStore::new(&config, Arc::default()).unwrap();
        let first = store.lock("s1", Duration::from_secs(5)).await.unwrap();
        assert!(!first.waited);
        let store = Arc::new(store);
        let s2 = store.clone();
        let second = tokio::spawn(async move {
            let l = s2.lock("s1", Duration::from_secs(5)).await.unwrap();
            l.waited
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!second.is_finished());
        store.unlock(first).await.unwrap();
        assert!(second.await.unwrap());
        assert!(matches!(
            store.lock("s2", Duration::from_millis(1)).await,
            Ok(SessionLock { waited: false, .. })
        ));
        let held = store.lock("s3", Duration::from_secs(5)).await.unwrap();
        assert!(matches!(
            store.lock("s3", Duration::from_millis(20)).await,
            Err(SessionError::LockTimeout)
        ));
        drop(held);
        assert!(store.shared.locks.lock().unwrap().is_empty());
    }
}
