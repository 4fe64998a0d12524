//! The cookies that carry a session and pending logins: names, attributes, chunking, caps and
//! expiry. Everything read from a `Cookie` header is untrusted: it is parsed leniently, capped
//! before any decryption (rule 34), and anything that does not open is no session (rule 8).
//!
//! Names, for a configured (effective) name `N`:
//! - `N` when the sealed session fits in one cookie, else `N_0`, `N_1`, … (at most
//!   [`MAX_CHUNKS`]), the oauth2-proxy convention;
//! - `N_login_<16 hex of SHA-256(state)>` for each pending login, so several tabs can log in at
//!   once without overwriting each other.
//!
//! Every name equal to `N` or starting with `N_` belongs to the gateway and is stripped from
//! requests before they go upstream.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use aws_lc_rs::constant_time::verify_slices_are_equal;
use aws_lc_rs::digest::{SHA256, digest};
use cookie::time::{Duration as CookieDuration, OffsetDateTime};
use cookie::{Cookie, SameSite as CookieSameSite};
use http::header::COOKIE;
use http::{HeaderMap, HeaderValue};

use super::SessionError;
use super::model::{LoginState, Session};
use super::seal::{Purpose, Sealer};
use crate::config::{SameSite, SessionConfig};

/// At most this many session cookies are read or written (rule 34, mod_auth_openidc
/// CVE-2024-24814: unbounded chunk counts let one request make the server allocate and decrypt
/// without limit).
pub const MAX_CHUNKS: usize = 8;
/// At most this many bytes of session cookie values are read, summed over the chunks.
pub const MAX_SESSION_BYTES: usize = 32 * 1024;
/// Browsers keep cookies up to 4096 bytes of name, value and attributes (RFC 6265 §6.1); a chunk
/// value of 3800 leaves room for the name and attributes (rule 9).
const MAX_CHUNK_VALUE: usize = 3800;
/// Every Set-Cookie we write stays strictly below 4096 bytes.
const MAX_SET_COOKIE: usize = 4095;
/// Below this, the configured name and domain leave too little room for a useful chunk.
const MIN_CHUNK_VALUE: usize = 1024;
/// At most this many opened sessions are remembered (per [`SessionCookies`], i.e. per worker).
const MAX_OPENED: usize = 1024;

/// What the session cookies of a request amount to.
#[derive(Debug, Clone, PartialEq)]
#[expect(
    clippy::large_enum_variant,
    reason = "returned once per request and matched at once; `Valid` is the common case, so \
              boxing it would only add an allocation"
)]
pub enum Loaded {
    /// No session cookie, or one that is malformed, oversized, tampered with or foreign.
    None,
    /// A genuine session past its absolute lifetime or idle timeout (rule 10).
    Expired,
    /// A genuine, live session. `touch` asks the caller to store it again with `last_seen`
    /// updated; it is set only occasionally, so most requests write no cookie at all.
    Valid { session: Session, touch: bool },
}

/// Reads and writes the gateway's cookies; built once from the configuration.
#[derive(Debug)]
pub struct SessionCookies {
    sealer: Sealer,
    name: String,
    /// `N_`: every cookie name with this prefix is the gateway's.
    own_prefix: String,
    /// `N_login_`.
    login_prefix: String,
    domain: Option<String>,
    secure: bool,
    same_site: CookieSameSite,
    lifetime: u64,
    idle_timeout: u64,
    login_timeout: u64,
    max_logins: usize,
    /// Largest cookie value we write, so that name, value and attributes stay under 4096 bytes.
    chunk_size: usize,
    /// Sessions recently opened from a cookie value, so that a browser's every request does not
    /// pay for decryption and JSON parsing again.
    opened: OpenedCache,
}

/// Sessions this worker opened recently, keyed by the SHA-256 of the sealed cookie value (rule 5:
/// cache keys are hashes, never the secret itself). An entry is exactly what opening that value
/// again would give: the same bytes under the same keys (a new secret means a new
/// `SessionCookies`, so an empty cache). It is no licence: lifetime and idle timeout are checked
/// against the session's own `created_at`/`last_seen` at every use, as for an uncached cookie,
/// and an expired entry is dropped when met (rule 10). Bounded by [`MAX_OPENED`]; only values
/// that opened are cached, so garbage cookies are no way to fill it. A `Mutex` for `Sync` only:
/// each worker has its own, never contended.
#[derive(Default)]
struct OpenedCache(Mutex<HashMap<[u8; 32], Opened>>);

struct Opened {
    session: Session,
    /// When a refreshed cookie was last handed out for this value (unix seconds).
    touched_at: Option<u64>,
}

impl std::fmt::Debug for OpenedCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let len = self.0.lock().map_or(0, |map| map.len());
        f.debug_struct("OpenedCache").field("len", &len).finish()
    }
}

/// How a cookie name relates to the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `N`: the whole session in one cookie.
    Base,
    /// `N_<i>`: one chunk of the session.
    Chunk(usize),
    /// `N_login_<16 hex>`: one pending login.
    Login,
    /// Some other `N_…` name: ours to strip, not to read.
    OtherOwn,
    /// The app's cookie.
    App,
}

impl SessionCookies {
    /// Derives the keys and checks that the cookie settings can produce cookies browsers accept.
    pub fn new(config: &SessionConfig) -> Result<Self, SessionError> {
        let sealer = Sealer::new(&config.secrets)?;
        let name = config.cookie_name.clone();
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err(SessionError::InvalidCookieSettings(
                "cookie_name must be a non-empty token (RFC 6265 §4.1.1)",
            ));
        }
        if let Some(domain) = &config.cookie_domain
            && (domain.is_empty()
                || !domain
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-'))
        {
            return Err(SessionError::InvalidCookieSettings(
                "cookie_domain must be a plain host name",
            ));
        }
        // Browsers silently drop prefixed cookies that break the prefix's rules (RFC 6265bis
        // §4.1.3), which would look like a login loop; refuse the configuration instead.
        if name.starts_with("__Host-") && (!config.cookie_secure || config.cookie_domain.is_some())
        {
            return Err(SessionError::InvalidCookieSettings(
                "a __Host- cookie needs Secure and no Domain",
            ));
        }
        if name.starts_with("__Secure-") && !config.cookie_secure {
            return Err(SessionError::InvalidCookieSettings(
                "a __Secure- cookie needs Secure",
            ));
        }
        if config.same_site == SameSite::None && !config.cookie_secure {
            return Err(SessionError::InvalidCookieSettings(
                "SameSite=None needs Secure (browsers refuse it otherwise)",
            ));
        }
        if config.max_logins == 0 {
            return Err(SessionError::InvalidCookieSettings(
                "max_logins must be at least 1",
            ));
        }
        let mut cookies = Self {
            sealer,
            own_prefix: format!("{name}_"),
            login_prefix: format!("{name}_login_"),
            name,
            domain: config.cookie_domain.clone(),
            secure: config.cookie_secure,
            same_site: match config.same_site {
                SameSite::Lax => CookieSameSite::Lax,
                SameSite::Strict => CookieSameSite::Strict,
                SameSite::None => CookieSameSite::None,
            },
            lifetime: config.lifetime.as_secs(),
            idle_timeout: config.idle_timeout.as_secs(),
            login_timeout: config.login_timeout.as_secs(),
            max_logins: config.max_logins,
            chunk_size: MAX_CHUNK_VALUE,
            opened: OpenedCache::default(),
        };
        // Measure the longest Set-Cookie we can write with an empty value (the longest chunk or
        // login name, the largest Max-Age) and give the value what is left under 4096 bytes.
        let longest_name = format!("{}{}", cookies.login_prefix, "0".repeat(16));
        let overhead = cookies
            .cookie_string(
                &longest_name,
                "",
                cookies.lifetime.max(cookies.login_timeout),
                CookieSameSite::Strict,
            )
            .len();
        cookies.chunk_size = MAX_CHUNK_VALUE.min(MAX_SET_COOKIE.saturating_sub(overhead));
        if cookies.chunk_size < MIN_CHUNK_VALUE {
            return Err(SessionError::InvalidCookieSettings(
                "cookie_name and cookie_domain are too long to fit a session cookie",
            ));
        }
        Ok(cookies)
    }

    /// The session in the request's cookies, checked against the absolute lifetime and the idle
    /// timeout at `now` (unix seconds).
    pub fn load(&self, headers: &HeaderMap, now: u64) -> Loaded {
        let mut whole: Vec<&[u8]> = Vec::new();
        let mut chunks: Vec<(usize, &[u8])> = Vec::new();
        let mut total = 0usize;
        for (name, value) in request_cookies(headers) {
            match self.kind(name) {
                Kind::Base => whole.push(value),
                Kind::Chunk(index) => chunks.push((index, value)),
                Kind::Login | Kind::OtherOwn | Kind::App => continue,
            }
            total = total.saturating_add(value.len());
            // Rule 34: refuse before decrypting, or even collecting, anything more.
            if whole.len() + chunks.len() > MAX_CHUNKS || total > MAX_SESSION_BYTES {
                return Loaded::None;
            }
        }
        let opened = whole
            .iter()
            .find_map(|value| self.open_session_cached(value, now))
            .or_else(|| reassemble(chunks).and_then(|value| self.open_session_cached(&value, now)));
        let Some((key, session)) = opened else {
            return Loaded::None;
        };
        let absolute_end = session.created_at.saturating_add(self.lifetime);
        let idle_end = session.last_seen.saturating_add(self.idle_timeout);
        if now >= absolute_end || now >= idle_end {
            self.opened.lock().remove(&key);
            return Loaded::Expired;
        }
        // Re-sealing on every request would add a Set-Cookie of up to 30 KB to every answer;
        // a tenth of the idle timeout (at most a minute) keeps idle expiry accurate enough.
        let touch_after = (self.idle_timeout / 10).min(60);
        let mut touch = now.saturating_sub(session.last_seen) > touch_after;
        if touch {
            // The same stale value again within `touch_after` (a browser's parallel requests, sent
            // before the refreshed cookie arrived) already got its refreshed cookie: sealing again
            // would only replace it. Skipping can only let the session expire sooner, never later.
            if let Some(entry) = self.opened.lock().get_mut(&key) {
                match entry.touched_at {
                    Some(at) if now.saturating_sub(at) <= touch_after => touch = false,
                    _ => entry.touched_at = Some(now),
                }
            }
        }
        Loaded::Valid { session, touch }
    }

    /// The Set-Cookie values that store `session`, and expire any session cookie of the request
    /// that the new value does not overwrite. Max-Age is what remains of the absolute lifetime,
    /// counted from `session.last_seen`, which the caller sets to now before storing.
    pub fn store(
        &self,
        session: &Session,
        request_headers: &HeaderMap,
    ) -> Result<Vec<HeaderValue>, SessionError> {
        let remaining = session
            .created_at
            .saturating_add(self.lifetime)
            .saturating_sub(session.last_seen);
        if remaining == 0 {
            return Err(SessionError::Expired);
        }
        let json = serde_json::to_vec(session).map_err(SessionError::Encode)?;
        let sealed = self.sealer.seal(Purpose::Session, &json)?;
        let max = self.chunk_size * MAX_CHUNKS;
        if sealed.len() > max {
            return Err(SessionError::TooLarge {
                bytes: sealed.len(),
                max,
            });
        }
        // The sealed value is base64url, one byte per character, so byte chunks are str chunks.
        let pieces: Vec<&str> = sealed
            .as_bytes()
            .chunks(self.chunk_size)
            .filter_map(|piece| std::str::from_utf8(piece).ok())
            .collect();
        let names: Vec<String> = if pieces.len() == 1 {
            vec![self.name.clone()]
        } else {
            (0..pieces.len()).map(|i| self.chunk_name(i)).collect()
        };
        let mut out: Vec<HeaderValue> = names
            .iter()
            .zip(&pieces)
            .filter_map(|(name, piece)| self.set_cookie(name, piece, remaining, self.same_site))
            .collect();
        // Stale chunks would otherwise be reassembled with the new ones (and fail) or linger.
        for name in self.session_names_in(request_headers) {
            if !names.contains(&name) {
                out.extend(self.expire(&name, self.same_site));
            }
        }
        Ok(out)
    }

    /// The Set-Cookie values that remove the session: the base name and every chunk present.
    pub fn clear(&self, request_headers: &HeaderMap) -> Vec<HeaderValue> {
        let mut names = vec![self.name.clone()];
        for name in self.session_names_in(request_headers) {
            if !names.contains(&name) {
                names.push(name);
            }
        }
        names
            .iter()
            .filter_map(|name| self.expire(name, self.same_site))
            .collect()
    }

    /// The Set-Cookie values that remember a login in progress, and expire the oldest pending
    /// logins beyond `max_logins`. Fails only if the login cannot be sealed into one cookie.
    pub fn start_login(
        &self,
        login: &LoginState,
        request_headers: &HeaderMap,
        now: u64,
    ) -> Result<Vec<HeaderValue>, SessionError> {
        let json = serde_json::to_vec(login).map_err(SessionError::Encode)?;
        let sealed = self.sealer.seal(Purpose::Login, &json)?;
        if sealed.len() > self.chunk_size {
            return Err(SessionError::TooLarge {
                bytes: sealed.len(),
                max: self.chunk_size,
            });
        }
        let new_name = self.login_name(&login.state);
        let mut pending: Vec<(String, &[u8])> = Vec::new();
        for (name, value) in request_cookies(request_headers) {
            if self.kind(name) != Kind::Login {
                continue;
            }
            // Login names are ASCII by construction (`kind` checked the hex suffix).
            let Ok(name) = std::str::from_utf8(name) else {
                continue;
            };
            if name != new_name && !pending.iter().any(|(seen, _)| seen == name) {
                pending.push((name.to_owned(), value));
            }
        }
        let mut out = Vec::new();
        if pending.len() >= self.max_logins {
            let evict = pending.len() + 1 - self.max_logins;
            // A browser we served never holds more than max_logins; a flood is not worth
            // decrypting (rule 34), so all of it goes.
            let open_cap = self.max_logins.saturating_mul(2).max(MAX_CHUNKS);
            let victims: Vec<String> = if pending.len() > open_cap {
                pending.into_iter().map(|(name, _)| name).collect()
            } else {
                // Unopenable and timed-out cookies sort first (`None` < `Some`), then the oldest.
                let mut aged: Vec<(Option<u64>, String)> = pending
                    .into_iter()
                    .map(|(name, value)| {
                        let created_at = self
                            .open_login(value)
                            .map(|login| login.created_at)
                            .filter(|at| now < at.saturating_add(self.login_timeout));
                        (created_at, name)
                    })
                    .collect();
                aged.sort();
                aged.into_iter().take(evict).map(|(_, name)| name).collect()
            };
            for name in victims {
                out.extend(self.expire(&name, CookieSameSite::Lax));
            }
        }
        // Lax, whatever the session's setting: the provider sends the browser back with a
        // top-level cross-site navigation, which a Strict cookie would not survive.
        out.extend(self.set_cookie(&new_name, &sealed, self.login_timeout, CookieSameSite::Lax));
        Ok(out)
    }

    /// The pending login for `state`, if its cookie opens, carries exactly this state and has
    /// not timed out; always with the Set-Cookie that expires that cookie, so a login can be
    /// completed once.
    pub fn take_login(
        &self,
        state: &str,
        request_headers: &HeaderMap,
        now: u64,
    ) -> (Option<LoginState>, Vec<HeaderValue>) {
        let name = self.login_name(state);
        let expire: Vec<HeaderValue> = self
            .expire(&name, CookieSameSite::Lax)
            .into_iter()
            .collect();
        let login = request_cookies(request_headers)
            .filter(|(cookie_name, _)| *cookie_name == name.as_bytes())
            .take(MAX_CHUNKS)
            .filter_map(|(_, value)| self.open_login(value))
            .find(|login| {
                // The name is only a hash of the state; the sealed state is what proves the
                // cookie was issued for this callback. Constant-time, as for any secret.
                verify_slices_are_equal(login.state.as_bytes(), state.as_bytes()).is_ok()
                    && now < login.created_at.saturating_add(self.login_timeout)
            });
        (login, expire)
    }

    /// Removes the gateway's cookies (session chunks, login cookies, any `N_…`) from the request's
    /// `Cookie` header(s), so the upstream never sees them; the app's cookies stay, in order.
    pub fn strip_own_cookies(&self, headers: &mut HeaderMap) {
        // One pass: collect the app's pieces, and change the header only if something of ours was
        // there (a browser logged in sends nothing else, most often: the header just goes).
        let mut kept: Vec<Vec<u8>> = Vec::new();
        let mut any_own = false;
        for value in headers.get_all(COOKIE) {
            let mut joined: Vec<u8> = Vec::new();
            for piece in value.as_bytes().split(|b| *b == b';') {
                let piece = piece.trim_ascii();
                if piece.is_empty() {
                    continue;
                }
                let name = piece.split(|b| *b == b'=').next().unwrap_or(piece);
                if self.kind(name.trim_ascii()) != Kind::App {
                    any_own = true;
                    continue;
                }
                if !joined.is_empty() {
                    joined.extend_from_slice(b"; ");
                }
                joined.extend_from_slice(piece);
            }
            if !joined.is_empty() {
                kept.push(joined);
            }
        }
        if !any_own {
            return;
        }
        headers.remove(COOKIE);
        for value in kept {
            // Made of pieces of a valid header value joined by "; ", so it is valid too.
            if let Ok(value) = HeaderValue::from_bytes(&value) {
                headers.append(COOKIE, value);
            }
        }
    }

    fn kind(&self, name: &[u8]) -> Kind {
        if name == self.name.as_bytes() {
            return Kind::Base;
        }
        let Some(rest) = name.strip_prefix(self.own_prefix.as_bytes()) else {
            return Kind::App;
        };
        if let Some(index) = chunk_index(rest) {
            return Kind::Chunk(index);
        }
        if let Some(hash) = name.strip_prefix(self.login_prefix.as_bytes())
            && hash.len() == 16
            && hash.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Kind::Login;
        }
        Kind::OtherOwn
    }

    fn chunk_name(&self, index: usize) -> String {
        format!("{}{index}", self.own_prefix)
    }

    fn login_name(&self, state: &str) -> String {
        let hash = digest(&SHA256, state.as_bytes());
        let hex: String = hash
            .as_ref()
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("{}{hex}", self.login_prefix)
    }

    /// Names of the session cookies (whole or chunk) the request carries, each once.
    fn session_names_in(&self, headers: &HeaderMap) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for (name, _) in request_cookies(headers) {
            if matches!(self.kind(name), Kind::Base | Kind::Chunk(_))
                && let Ok(name) = std::str::from_utf8(name)
                && !names.iter().any(|seen| seen == name)
            {
                names.push(name.to_owned());
            }
            // Expiring is cheap but not free; a flood of names gets the first few.
            if names.len() > MAX_CHUNKS * 2 {
                break;
            }
        }
        names
    }

    /// The session sealed in `value`, from the cache when this worker opened the same value before
    /// (a hit costs a SHA-256 and a clone instead of decryption and JSON parsing), with its key.
    fn open_session_cached(&self, value: &[u8], now: u64) -> Option<([u8; 32], Session)> {
        let mut key = [0u8; 32];
        key.copy_from_slice(digest(&SHA256, value).as_ref());
        if let Some(entry) = self.opened.lock().get(&key) {
            return Some((key, entry.session.clone()));
        }
        let session = self.open_session(value)?;
        let mut map = self.opened.lock();
        if map.len() >= MAX_OPENED {
            // Expired entries go first; if the cache is still full, start over (bounded work,
            // amortised over MAX_OPENED insertions).
            map.retain(|_, e| {
                now < e.session.created_at.saturating_add(self.lifetime)
                    && now < e.session.last_seen.saturating_add(self.idle_timeout)
            });
            if map.len() >= MAX_OPENED {
                map.clear();
            }
        }
        map.insert(
            key,
            Opened {
                session: session.clone(),
                touched_at: None,
            },
        );
        Some((key, session))
    }

    fn open_session(&self, value: &[u8]) -> Option<Session> {
        let json = self.sealer.open(Purpose::Session, value)?;
        serde_json::from_slice(&json).ok()
    }

    fn open_login(&self, value: &[u8]) -> Option<LoginState> {
        // Larger than anything start_login writes: not ours, not worth decrypting.
        if value.len() > self.chunk_size {
            return None;
        }
        let json = self.sealer.open(Purpose::Login, value)?;
        serde_json::from_slice(&json).ok()
    }

    fn cookie_string(
        &self,
        name: &str,
        value: &str,
        max_age: u64,
        same_site: CookieSameSite,
    ) -> String {
        let mut cookie = Cookie::build((name, value))
            .path("/")
            .http_only(true)
            .secure(self.secure)
            .same_site(same_site)
            .max_age(CookieDuration::seconds(
                i64::try_from(max_age).unwrap_or(i64::MAX),
            ));
        if let Some(domain) = &self.domain {
            cookie = cookie.domain(domain.as_str());
        }
        if max_age == 0 {
            // For clients that ignore Max-Age (RFC 6265 §5.3 lets Max-Age win where understood).
            cookie = cookie.expires(OffsetDateTime::UNIX_EPOCH);
        }
        cookie.build().to_string()
    }

    /// A Set-Cookie value; `None` cannot happen once `new` has validated name and domain, and the
    /// values are base64url.
    fn set_cookie(
        &self,
        name: &str,
        value: &str,
        max_age: u64,
        same_site: CookieSameSite,
    ) -> Option<HeaderValue> {
        HeaderValue::from_str(&self.cookie_string(name, value, max_age, same_site)).ok()
    }

    /// A Set-Cookie value that deletes `name`; same Path, Domain, Secure as when it was set, or
    /// the browser keeps the original.
    fn expire(&self, name: &str, same_site: CookieSameSite) -> Option<HeaderValue> {
        self.set_cookie(name, "", 0, same_site)
    }
}

/// The cookie of a server-side store: one cookie under the session name carrying only the
/// sealed session id (never chunked, a hundred bytes).
impl SessionCookies {
    /// Longest id cookie value opened; anything longer is not one we wrote (rule 34).
    const MAX_ID_VALUE: usize = 512;

    /// The Set-Cookie values that point the browser at session `id` for `max_age` seconds, and
    /// expire any chunk of a cookie-store session the request still carries.
    pub fn store_id(
        &self,
        id: &str,
        max_age: u64,
        request_headers: &HeaderMap,
    ) -> Result<Vec<HeaderValue>, SessionError> {
        if max_age == 0 {
            return Err(SessionError::Expired);
        }
        let sealed = self.sealer.seal(Purpose::SessionId, id.as_bytes())?;
        let mut out: Vec<HeaderValue> = self
            .set_cookie(&self.name, &sealed, max_age, self.same_site)
            .into_iter()
            .collect();
        for name in self.session_names_in(request_headers) {
            if name != self.name {
                out.extend(self.expire(&name, self.same_site));
            }
        }
        Ok(out)
    }

    /// The session id sealed in the request's session cookie, if one opens. Capped like
    /// [`Self::load`] before anything is decrypted.
    pub fn load_id(&self, headers: &HeaderMap) -> Option<String> {
        let mut candidates: Vec<&[u8]> = Vec::new();
        for (name, value) in request_cookies(headers) {
            match self.kind(name) {
                Kind::Base => candidates.push(value),
                Kind::Chunk(_) => {}
                Kind::Login | Kind::OtherOwn | Kind::App => continue,
            }
            if candidates.len() > MAX_CHUNKS {
                return None;
            }
        }
        candidates
            .into_iter()
            .filter(|value| value.len() <= Self::MAX_ID_VALUE)
            .find_map(|value| {
                let id = self.sealer.open(Purpose::SessionId, value)?;
                String::from_utf8(id).ok()
            })
    }
}

impl OpenedCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Opened>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Every `name=value` pair of every `Cookie` header, in order. Lenient on purpose (RFC 6265 §5.4
/// sends `; `-separated pairs, but anything can arrive): split on `;`, trim, split at the first
/// `=`; pieces without `=` or with an empty name are skipped; bytes need not be UTF-8.
fn request_cookies(headers: &HeaderMap) -> impl Iterator<Item = (&[u8], &[u8])> {
    headers
        .get_all(COOKIE)
        .iter()
        .flat_map(|value| value.as_bytes().split(|b| *b == b';'))
        .filter_map(|piece| {
            let piece = piece.trim_ascii();
            let eq = piece.iter().position(|b| *b == b'=')?;
            let (name, rest) = piece.split_at(eq);
            let name = name.trim_ascii();
            let value = rest.get(1..)?.trim_ascii();
            if name.is_empty() {
                return None;
            }
            // RFC 6265 §4.1.1 allows a value in double quotes.
            let value = value
                .strip_prefix(b"\"")
                .and_then(|v| v.strip_suffix(b"\""))
                .unwrap_or(value);
            Some((name, value))
        })
}

/// `0`, `1`, … `N` in canonical decimal (no sign, no leading zero), so each index has one name.
fn chunk_index(rest: &[u8]) -> Option<usize> {
    if rest.is_empty() || rest.len() > 3 || !rest.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if rest.len() > 1 && rest.first() == Some(&b'0') {
        return None;
    }
    std::str::from_utf8(rest).ok()?.parse().ok()
}

/// The chunks in index order, if they are exactly `0..n` once each; else nothing to open.
fn reassemble(mut chunks: Vec<(usize, &[u8])>) -> Option<Vec<u8>> {
    if chunks.is_empty() {
        return None;
    }
    chunks.sort_by_key(|(index, _)| *index);
    if chunks.iter().enumerate().any(|(i, (index, _))| i != *index) {
        return None;
    }
    Some(
        chunks
            .iter()
            .flat_map(|(_, value)| value.iter().copied())
            .collect(),
    )
}

/// RFC 7230 `tchar`, which RFC 6265 §4.1.1 uses for cookie names.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::Secret;

    const NOW: u64 = 1_700_000_000;
    const A: &[u8] = b"0123456789abcdef0123456789abcdef";
    const B: &[u8] = b"fedcba9876543210fedcba9876543210";
    const NAME: &str = "__Host-_gatehouse";

    fn config(secrets: &[&[u8]]) -> SessionConfig {
        SessionConfig {
            secrets: secrets.iter().map(|s| Secret::new(s.to_vec())).collect(),
            cookie_name: NAME.into(),
            cookie_domain: None,
            cookie_secure: true,
            same_site: SameSite::Lax,
            lifetime: Duration::from_secs(12 * 3600),
            idle_timeout: Duration::from_secs(3600),
            login_timeout: Duration::from_secs(600),
            max_logins: 3,
            refresh_before: Duration::from_secs(60),
            store: crate::config::StoreConfig::Cookie,
        }
    }

    fn cookies() -> SessionCookies {
        SessionCookies::new(&config(&[A])).unwrap()
    }

    fn session(now: u64) -> Session {
        let mut s = Session::new("alice", now);
        s.email = Some("alice@example.com".into());
        s.email_verified = true;
        s.groups = vec!["admins".into(), "dev".into()];
        s.refresh_token = Some(Secret::new("refresh".into()));
        s
    }

    /// A session whose sealed form needs several chunks.
    fn big_session(now: u64, token_len: usize) -> Session {
        let mut s = session(now);
        s.id_token = Some(Secret::new("x".repeat(token_len)));
        s
    }

    fn login(state: &str, created_at: u64) -> LoginState {
        LoginState {
            state: state.into(),
            verifier: Secret::new("verifier".into()),
            nonce: "nonce".into(),
            return_to: "/app".into(),
            created_at,
        }
    }

    fn header(raw: &[u8]) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(COOKIE, HeaderValue::from_bytes(raw).unwrap());
        h
    }

    fn parse(set: &HeaderValue) -> Cookie<'static> {
        Cookie::parse(set.to_str().unwrap().to_owned()).unwrap()
    }

    /// Just enough of a browser's cookie jar to replay Set-Cookie as a Cookie header.
    #[derive(Default, Clone)]
    struct Jar(Vec<(String, String)>);

    impl Jar {
        fn apply(&mut self, set: &[HeaderValue]) {
            for v in set {
                let c = parse(v);
                self.0.retain(|(n, _)| n != c.name());
                if c.max_age() != Some(CookieDuration::ZERO) {
                    self.0.push((c.name().into(), c.value().into()));
                }
            }
        }
        fn get(&self, name: &str) -> Option<&str> {
            self.0
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        }
        fn set(&mut self, name: &str, value: &str) {
            for (n, v) in &mut self.0 {
                if n == name {
                    *v = value.to_owned();
                }
            }
        }
        fn headers(&self) -> HeaderMap {
            let line: Vec<String> = self.0.iter().map(|(n, v)| format!("{n}={v}")).collect();
            header(line.join("; ").as_bytes())
        }
    }

    fn stored(c: &SessionCookies, s: &Session) -> Jar {
        let mut jar = Jar::default();
        jar.apply(&c.store(s, &HeaderMap::new()).unwrap());
        jar
    }

    fn valid(loaded: Loaded) -> Session {
        match loaded {
            Loaded::Valid { session, .. } => session,
            other => panic!("expected a valid session, got {other:?}"),
        }
    }

    #[test]
    fn session_round_trips_through_a_browser() {
        let c = cookies();
        let s = session(NOW);
        let jar = stored(&c, &s);
        assert_eq!(jar.0.len(), 1);
        assert!(jar.get(NAME).is_some());
        assert_eq!(valid(c.load(&jar.headers(), NOW + 1)), s);
    }

    #[test]
    fn chunked_session_round_trips() {
        let c = cookies();
        let s = big_session(NOW, 10_000);
        let jar = stored(&c, &s);
        assert!(jar.0.len() > 1);
        assert_eq!(jar.0[0].0, format!("{NAME}_0"));
        assert_eq!(valid(c.load(&jar.headers(), NOW + 1)), s);
    }

    #[test]
    fn tampered_byte_is_no_session() {
        let c = cookies();
        let mut jar = stored(&c, &session(NOW));
        let mut v = jar.get(NAME).unwrap().as_bytes().to_vec();
        for i in [0, v.len() / 2, v.len() - 1] {
            let orig = v[i];
            v[i] = if orig == b'A' { b'B' } else { b'A' };
            jar.set(NAME, std::str::from_utf8(&v).unwrap());
            assert_eq!(c.load(&jar.headers(), NOW), Loaded::None, "byte {i}");
            v[i] = orig;
        }
    }

    #[test]
    fn truncated_cookie_is_no_session() {
        let c = cookies();
        let mut jar = stored(&c, &session(NOW));
        let v = jar.get(NAME).unwrap().to_owned();
        jar.set(NAME, &v[..v.len() - 1]);
        assert_eq!(c.load(&jar.headers(), NOW), Loaded::None);
    }

    #[test]
    fn chunks_reordered_is_no_session() {
        let c = cookies();
        let mut jar = stored(&c, &big_session(NOW, 10_000));
        let (n0, n1) = (format!("{NAME}_0"), format!("{NAME}_1"));
        let (v0, v1) = (
            jar.get(&n0).unwrap().to_owned(),
            jar.get(&n1).unwrap().to_owned(),
        );
        jar.set(&n0, &v1);
        jar.set(&n1, &v0);
        assert_eq!(c.load(&jar.headers(), NOW), Loaded::None);
    }

    #[test]
    fn chunks_sent_in_any_header_order_still_open() {
        let c = cookies();
        let s = big_session(NOW, 10_000);
        let mut jar = stored(&c, &s);
        jar.0.reverse();
        assert_eq!(valid(c.load(&jar.headers(), NOW)), s);
    }

    #[test]
    fn chunk_missing_is_no_session() {
        let c = cookies();
        let mut jar = stored(&c, &big_session(NOW, 10_000));
        for missing in [format!("{NAME}_1"), format!("{NAME}_0")] {
            let mut j = jar.clone();
            j.0.retain(|(n, _)| *n != missing);
            assert_eq!(c.load(&j.headers(), NOW), Loaded::None, "{missing}");
        }
        // The last chunk missing is a truncation.
        jar.0.pop();
        assert_eq!(c.load(&jar.headers(), NOW), Loaded::None);
    }

    #[test]
    fn duplicated_chunk_index_is_no_session() {
        let c = cookies();
        let mut jar = stored(&c, &big_session(NOW, 10_000));
        let first = jar.0[0].clone();
        jar.0.push(first);
        assert_eq!(c.load(&jar.headers(), NOW), Loaded::None);
    }

    #[test]
    fn foreign_secret_is_no_session() {
        let foreign = SessionCookies::new(&config(&[B])).unwrap();
        let jar = stored(&foreign, &session(NOW));
        assert_eq!(cookies().load(&jar.headers(), NOW), Loaded::None);
    }

    #[test]
    fn login_cookie_presented_as_session_is_no_session() {
        let c = cookies();
        let set = c
            .start_login(&login("st", NOW), &HeaderMap::new(), NOW)
            .unwrap();
        let value = parse(&set[0]).value().to_owned();
        let h = header(format!("{NAME}={value}").as_bytes());
        assert_eq!(c.load(&h, NOW), Loaded::None);
    }

    #[test]
    fn session_cookie_presented_as_login_is_refused() {
        let c = cookies();
        let jar = stored(&c, &session(NOW));
        let name = c.login_name("st");
        let h = header(format!("{name}={}", jar.get(NAME).unwrap()).as_bytes());
        assert_eq!(c.take_login("st", &h, NOW).0, None);
    }

    #[test]
    fn rotation_old_secret_opens_new_secret_seals() {
        let s = session(NOW);
        let old_jar = stored(&SessionCookies::new(&config(&[A])).unwrap(), &s);
        let rotated = SessionCookies::new(&config(&[B, A])).unwrap();
        assert_eq!(valid(rotated.load(&old_jar.headers(), NOW)), s);
        let new_jar = stored(&rotated, &s);
        let only_old = SessionCookies::new(&config(&[A])).unwrap();
        assert_eq!(only_old.load(&new_jar.headers(), NOW), Loaded::None);
        let only_new = SessionCookies::new(&config(&[B])).unwrap();
        assert_eq!(valid(only_new.load(&new_jar.headers(), NOW)), s);
    }

    #[test]
    fn nine_session_cookies_are_refused_before_decryption() {
        let c = cookies();
        let mut jar = stored(&c, &session(NOW));
        assert!(matches!(c.load(&jar.headers(), NOW), Loaded::Valid { .. }));
        // The whole cookie would open, but the request carries more pieces than any session we
        // write: refused without deciding which to trust.
        for i in 0..MAX_CHUNKS {
            jar.0.push((format!("{NAME}_{i}"), "AAAA".into()));
        }
        assert_eq!(c.load(&jar.headers(), NOW), Loaded::None);
    }

    #[test]
    fn oversized_session_bytes_are_refused_before_decryption() {
        let c = cookies();
        let mut jar = stored(&c, &session(NOW));
        jar.0
            .push((format!("{NAME}_0"), "A".repeat(MAX_SESSION_BYTES)));
        assert_eq!(c.load(&jar.headers(), NOW), Loaded::None);
    }

    #[test]
    fn malformed_cookie_headers_are_no_session_never_a_panic() {
        let c = cookies();
        let mut cases: Vec<Vec<u8>> = vec![
            b";;;".to_vec(),
            b"=x".to_vec(),
            b"=".to_vec(),
            b"   ".to_vec(),
            b"\xff\xfe=\x80; a".to_vec(),
            NAME.as_bytes().to_vec(),
            format!("{NAME}=").into_bytes(),
            format!("{NAME}=\"").into_bytes(),
            format!("{NAME}_0=; {NAME}_999=x; {NAME}_0001=y").into_bytes(),
            format!("{NAME}=\u{1F36A}").into_bytes(),
        ];
        cases.push("a=b; ".repeat(20_000).into_bytes());
        cases.push(format!("{NAME}={}", "A".repeat(100 * 1024)).into_bytes());
        for raw in cases {
            let mut h = header(&raw);
            assert_eq!(c.load(&h, NOW), Loaded::None);
            assert_eq!(c.take_login("st", &h, NOW).0, None);
            c.start_login(&login("st", NOW), &h, NOW).unwrap();
            c.store(&session(NOW), &h).unwrap();
            c.clear(&h);
            c.strip_own_cookies(&mut h);
        }
    }

    #[test]
    fn valid_session_is_found_among_garbage() {
        let c = cookies();
        let jar = stored(&c, &session(NOW));
        let raw = format!(
            ";;; =x; junk; {NAME}={} ;theme=dark",
            jar.get(NAME).unwrap()
        );
        let mut bytes = b"\xff\xfe; ".to_vec();
        bytes.extend_from_slice(raw.as_bytes());
        assert!(matches!(c.load(&header(&bytes), NOW), Loaded::Valid { .. }));
    }

    #[test]
    fn absolute_lifetime_expires_even_when_active() {
        let c = cookies();
        let mut s = session(NOW);
        let end = NOW + 12 * 3600;
        s.last_seen = end - 10;
        let jar = stored(&c, &s);
        assert!(matches!(
            c.load(&jar.headers(), end - 1),
            Loaded::Valid { .. }
        ));
        assert_eq!(c.load(&jar.headers(), end), Loaded::Expired);
    }

    #[test]
    fn idle_timeout_expires() {
        let c = cookies();
        let jar = stored(&c, &session(NOW));
        assert!(matches!(
            c.load(&jar.headers(), NOW + 3599),
            Loaded::Valid { .. }
        ));
        assert_eq!(c.load(&jar.headers(), NOW + 3600), Loaded::Expired);
    }

    #[test]
    fn touch_only_after_a_minute_or_a_tenth_of_idle() {
        let c = cookies();
        let jar = stored(&c, &session(NOW));
        let touch = |now| match c.load(&jar.headers(), now) {
            Loaded::Valid { touch, .. } => touch,
            other => panic!("{other:?}"),
        };
        assert!(!touch(NOW));
        assert!(!touch(NOW + 60));
        assert!(touch(NOW + 61));
        // A short idle timeout touches sooner: a tenth of 100 s.
        let mut short = config(&[A]);
        short.idle_timeout = Duration::from_secs(100);
        let c = SessionCookies::new(&short).unwrap();
        let jar = stored(&c, &session(NOW));
        let touched = |now| {
            matches!(
                c.load(&jar.headers(), now),
                Loaded::Valid { touch: true, .. }
            )
        };
        assert!(!touched(NOW + 10));
        assert!(touched(NOW + 11));
    }

    #[test]
    fn a_stale_cookie_is_refreshed_once_per_touch_interval() {
        let c = cookies();
        let jar = stored(&c, &session(NOW));
        let touch = |now| match c.load(&jar.headers(), now) {
            Loaded::Valid { touch, .. } => touch,
            other => panic!("{other:?}"),
        };
        assert!(!touch(NOW + 30));
        assert!(touch(NOW + 61));
        // Requests that were under way before the refreshed cookie arrived get no second one.
        assert!(!touch(NOW + 62));
        assert!(!touch(NOW + 121));
        assert!(touch(NOW + 122));
    }

    #[test]
    fn a_cached_session_still_expires_and_the_cache_stays_bounded() {
        let c = cookies();
        let jar = stored(&c, &session(NOW));
        assert!(matches!(c.load(&jar.headers(), NOW), Loaded::Valid { .. }));
        assert_eq!(c.load(&jar.headers(), NOW + 3600), Loaded::Expired);
        assert_eq!(c.opened.lock().len(), 0, "an expired entry is dropped");
        for i in 0..MAX_OPENED + 3 {
            let jar = stored(&c, &session(NOW + i as u64));
            assert!(matches!(
                c.load(&jar.headers(), NOW + 2000),
                Loaded::Valid { .. }
            ));
        }
        assert!(c.opened.lock().len() <= MAX_OPENED);
    }

    #[test]
    fn chunking_keeps_every_set_cookie_under_4096_bytes() {
        let mut long_domain = config(&[A]);
        long_domain.cookie_name = "_gatehouse".into();
        long_domain.cookie_domain = Some(format!("{}.example.com", "a".repeat(200)));
        for cfg in [config(&[A]), long_domain] {
            let c = SessionCookies::new(&cfg).unwrap();
            for len in [0, 3000, 10_000, 20_000] {
                let set = c.store(&big_session(NOW, len), &HeaderMap::new()).unwrap();
                assert!(set.len() <= MAX_CHUNKS);
                for v in &set {
                    assert!(v.len() < 4096, "{} bytes", v.len());
                }
            }
        }
    }

    #[test]
    fn stale_chunks_and_the_other_naming_form_are_expired() {
        let c = cookies();
        let mut jar = stored(&c, &big_session(NOW, 15_000));
        let chunks = jar.0.len();
        assert!(chunks >= 4);
        // Smaller but still chunked: the extra chunks go.
        jar.apply(&c.store(&big_session(NOW, 5_000), &jar.headers()).unwrap());
        assert_eq!(jar.0.len(), 2);
        assert!(matches!(c.load(&jar.headers(), NOW), Loaded::Valid { .. }));
        // One cookie: every chunk goes.
        let set = c.store(&session(NOW), &jar.headers()).unwrap();
        let expired: Vec<String> = set
            .iter()
            .map(parse)
            .filter(|c| c.max_age() == Some(CookieDuration::ZERO))
            .map(|c| c.name().to_owned())
            .collect();
        assert_eq!(expired, [format!("{NAME}_0"), format!("{NAME}_1")]);
        jar.apply(&set);
        assert_eq!(jar.0.len(), 1);
        // Chunked again: the single cookie goes.
        jar.apply(&c.store(&big_session(NOW, 5_000), &jar.headers()).unwrap());
        assert!(jar.get(NAME).is_none());
        assert!(matches!(c.load(&jar.headers(), NOW), Loaded::Valid { .. }));
    }

    #[test]
    fn too_large_session_is_an_error_for_the_caller() {
        let c = cookies();
        let err = c.store(&big_session(NOW, 40_000), &HeaderMap::new());
        assert!(matches!(err, Err(SessionError::TooLarge { .. })), "{err:?}");
    }

    #[test]
    fn storing_an_expired_session_is_refused() {
        let c = cookies();
        let mut s = session(NOW);
        s.last_seen = NOW + 12 * 3600;
        assert!(matches!(
            c.store(&s, &HeaderMap::new()),
            Err(SessionError::Expired)
        ));
    }

    #[test]
    fn host_prefixed_cookie_has_the_attributes_browsers_require() {
        let c = cookies();
        let mut s = session(NOW);
        s.last_seen = NOW + 100;
        let set = c.store(&s, &HeaderMap::new()).unwrap();
        let cookie = parse(&set[0]);
        assert_eq!(cookie.name(), NAME);
        assert_eq!(cookie.path(), Some("/"));
        assert_eq!(cookie.secure(), Some(true));
        assert_eq!(cookie.http_only(), Some(true));
        assert_eq!(cookie.same_site(), Some(CookieSameSite::Lax));
        assert_eq!(cookie.domain(), None);
        assert_eq!(
            cookie.max_age(),
            Some(CookieDuration::seconds(12 * 3600 - 100))
        );
        let cleared = c.clear(&HeaderMap::new());
        let gone = parse(&cleared[0]);
        assert_eq!(gone.name(), NAME);
        assert_eq!(gone.max_age(), Some(CookieDuration::ZERO));
        assert_eq!(gone.secure(), Some(true));
        assert_eq!(gone.path(), Some("/"));
    }

    #[test]
    fn domain_and_plain_http_settings_are_honoured() {
        let mut cfg = config(&[A]);
        cfg.cookie_name = "_gatehouse".into();
        cfg.cookie_domain = Some("example.com".into());
        cfg.cookie_secure = false;
        cfg.same_site = SameSite::Strict;
        let c = SessionCookies::new(&cfg).unwrap();
        let cookie = parse(&c.store(&session(NOW), &HeaderMap::new()).unwrap()[0]);
        assert_eq!(cookie.domain(), Some("example.com"));
        assert_eq!(cookie.secure(), None);
        assert_eq!(cookie.same_site(), Some(CookieSameSite::Strict));
        // The login cookie stays Lax: it must survive the provider's cross-site redirect.
        let login = parse(
            &c.start_login(&login("st", NOW), &HeaderMap::new(), NOW)
                .unwrap()[0],
        );
        assert_eq!(login.same_site(), Some(CookieSameSite::Lax));
        assert_eq!(login.domain(), Some("example.com"));
    }

    #[test]
    fn settings_browsers_would_reject_are_refused_at_start() {
        let mut host_with_domain = config(&[A]);
        host_with_domain.cookie_domain = Some("example.com".into());
        let mut host_insecure = config(&[A]);
        host_insecure.cookie_secure = false;
        let mut bad_name = config(&[A]);
        bad_name.cookie_name = "a b;c".into();
        let mut none_insecure = config(&[A]);
        none_insecure.cookie_name = "_gatehouse".into();
        none_insecure.cookie_secure = false;
        none_insecure.same_site = SameSite::None;
        let mut no_secret = config(&[]);
        no_secret.secrets.clear();
        for cfg in [
            host_with_domain,
            host_insecure,
            bad_name,
            none_insecure,
            no_secret,
        ] {
            assert!(SessionCookies::new(&cfg).is_err(), "{cfg:?}");
        }
    }

    #[test]
    fn several_concurrent_logins_and_the_oldest_is_evicted_at_the_cap() {
        let c = cookies();
        let mut jar = Jar::default();
        for (i, state) in ["one", "two", "three"].into_iter().enumerate() {
            let now = NOW + i as u64;
            jar.apply(
                &c.start_login(&login(state, now), &jar.headers(), now)
                    .unwrap(),
            );
        }
        assert_eq!(jar.0.len(), 3);
        let login_cookie = parse(
            &c.start_login(&login("x", NOW), &HeaderMap::new(), NOW)
                .unwrap()[0],
        );
        assert!(login_cookie.name().starts_with(&format!("{NAME}_login_")));
        assert_eq!(login_cookie.max_age(), Some(CookieDuration::seconds(600)));
        assert_eq!(login_cookie.same_site(), Some(CookieSameSite::Lax));
        assert_eq!(login_cookie.http_only(), Some(true));
        assert_eq!(login_cookie.secure(), Some(true));
        assert_eq!(login_cookie.path(), Some("/"));

        jar.apply(
            &c.start_login(&login("four", NOW + 3), &jar.headers(), NOW + 3)
                .unwrap(),
        );
        assert_eq!(jar.0.len(), 3);
        assert_eq!(c.take_login("one", &jar.headers(), NOW + 4).0, None);
        for state in ["two", "three", "four"] {
            let (found, expire) = c.take_login(state, &jar.headers(), NOW + 4);
            assert_eq!(found.unwrap().state, state);
            jar.apply(&expire);
        }
        assert!(jar.0.is_empty(), "each login cookie is single-use");
    }

    #[test]
    fn unopenable_login_cookies_are_evicted_first() {
        let c = cookies();
        let mut jar = Jar::default();
        jar.0.push((c.login_name("forged"), "AAAA".into()));
        for (i, state) in ["one", "two"].into_iter().enumerate() {
            let now = NOW + i as u64;
            jar.apply(
                &c.start_login(&login(state, now), &jar.headers(), now)
                    .unwrap(),
            );
        }
        jar.apply(
            &c.start_login(&login("three", NOW + 5), &jar.headers(), NOW + 5)
                .unwrap(),
        );
        assert_eq!(jar.0.len(), 3);
        assert!(jar.get(&c.login_name("forged")).is_none());
        assert!(jar.get(&c.login_name("one")).is_some());
    }

    #[test]
    fn take_login_with_a_wrong_state_is_none() {
        let c = cookies();
        let mut jar = Jar::default();
        jar.apply(
            &c.start_login(&login("right", NOW), &HeaderMap::new(), NOW)
                .unwrap(),
        );
        let (found, expire) = c.take_login("wrong", &jar.headers(), NOW);
        assert_eq!(found, None);
        assert_eq!(parse(&expire[0]).name(), c.login_name("wrong"));
        // A genuine login cookie renamed to another state's name does not answer for it.
        let value = jar.get(&c.login_name("right")).unwrap().to_owned();
        let h = header(format!("{}={value}", c.login_name("wrong")).as_bytes());
        assert_eq!(c.take_login("wrong", &h, NOW).0, None);
        assert_eq!(
            c.take_login("right", &jar.headers(), NOW).0.unwrap().state,
            "right"
        );
    }

    #[test]
    fn take_login_after_the_login_timeout_is_none() {
        let c = cookies();
        let mut jar = Jar::default();
        jar.apply(
            &c.start_login(&login("st", NOW), &HeaderMap::new(), NOW)
                .unwrap(),
        );
        assert!(c.take_login("st", &jar.headers(), NOW + 599).0.is_some());
        let (found, expire) = c.take_login("st", &jar.headers(), NOW + 600);
        assert_eq!(found, None);
        assert_eq!(parse(&expire[0]).max_age(), Some(CookieDuration::ZERO));
    }

    #[test]
    fn strip_own_cookies_keeps_app_cookies_in_order() {
        let c = cookies();
        let login = c.login_name("st");
        let mut h = HeaderMap::new();
        h.append(
            COOKIE,
            HeaderValue::from_str(&format!(
                "theme=dark; {NAME}=x; {NAME}_0=y;lang=en; {login}=z; {NAME}_whatever=1; \
                 {NAME}x=keep; other=1"
            ))
            .unwrap(),
        );
        h.append(
            COOKIE,
            HeaderValue::from_str(&format!("{NAME}_1=y")).unwrap(),
        );
        h.append(COOKIE, HeaderValue::from_static("last=1"));
        c.strip_own_cookies(&mut h);
        let left: Vec<&str> = h
            .get_all(COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(
            left,
            [
                format!("theme=dark; lang=en; {NAME}x=keep; other=1"),
                "last=1".into()
            ]
        );

        let mut only_ours = header(format!("{NAME}=x; {NAME}_0=y").as_bytes());
        c.strip_own_cookies(&mut only_ours);
        assert!(only_ours.get(COOKIE).is_none());

        let untouched = "a=1;b=2;;  c";
        let mut h = header(untouched.as_bytes());
        c.strip_own_cookies(&mut h);
        assert_eq!(h.get(COOKIE).unwrap(), untouched);
    }

    #[test]
    fn debug_of_cookies_shows_no_secret() {
        let d = format!("{:?}", cookies());
        assert!(!d.contains("0123456789abcdef"), "{d}");
    }
}
