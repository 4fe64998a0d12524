//! Authenticate, bearer JWTs: checks an access token against the issuer that signed it
//! (security rules 14, 32; RFC 8725, RFC 9068) and turns its claims into an [`Identity`].
//!
//! Every trusted issuer is checked on its own: its `iss`, its key set, its algorithms, its
//! audiences. Keys come from the issuer's JWKS only — `jku`, `x5u`, `jwk` and `x5c` headers are
//! never followed, since a token must not name the key that verifies it. A verified token is
//! remembered by the SHA-256 of its text (never the text) until its `exp`, so a hot token costs
//! one hash and one lookup instead of a signature check.
//!
//! What this module does not do: find the token in the request (`bearer.rs`), opaque tokens
//! (`introspection.rs`), or decide what the identity may do (`authz.rs`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use aws_lc_rs::digest;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

use super::{Due, ExpireWhenDue, Rejection, Verdict, identity_from_claims};
use crate::config::{IssuerConfig, IssuerKeys};
use crate::identity::Identity;
use crate::oidc::discovery::{self, issuer_spellings};
use crate::oidc::jws::{Jws, JwsRejected, audience_in, number};
use crate::oidc::{HttpClient, JWKS_REFETCH_INTERVAL, Jwks, Provider, ProviderError};

/// A token's SHA-256: the only form in which tokens are remembered.
pub type TokenHash = [u8; 32];

pub fn token_hash(token: &str) -> TokenHash {
    let d = digest::digest(&digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// What a verified token says, kept in the cache.
#[derive(Debug)]
pub struct Verified {
    /// The identity, without the token itself.
    pub identity: Identity,
    /// Past this instant (`exp` plus leeway) the entry is worthless.
    pub valid_until: Instant,
    /// `exp` plus leeway, in Unix seconds, checked again on every hit.
    pub valid_until_unix: u64,
}

impl Due for Verified {
    fn due(&self) -> Instant {
        self.valid_until
    }
}

/// Where one issuer's keys come from.
enum Keys {
    /// The login provider's key set (`[bearer] enabled`), kept fresh by the provider.
    Provider(Arc<Provider>),
    /// A key set of our own, loaded and refreshed by [`JwtVerifier::start`].
    Own(Box<Jwks>),
}

struct TrustedIssuer {
    /// The accepted `iss` strings (a root-path issuer in both spellings).
    spellings: Vec<String>,
    config: IssuerConfig,
    keys: Keys,
}

impl TrustedIssuer {
    fn jwks(&self) -> &Jwks {
        match &self.keys {
            Keys::Provider(p) => p.jwks(),
            Keys::Own(j) => j,
        }
    }
}

/// All trusted issuers and the verified-token cache. Shared by every worker.
pub struct JwtVerifier {
    issuers: Vec<TrustedIssuer>,
    verified: moka::sync::Cache<TokenHash, Arc<Verified>>,
    /// Tells this verifier's entries apart in the per-worker caches; `None` without caching.
    recent_id: Option<u64>,
    groups_claim: Vec<String>,
    /// Tokens above this are refused before any decoding (rule 32).
    max_token_bytes: usize,
    http: HttpClient,
    /// Tokens verified in full (cache misses): what the cache saves shows in the metrics.
    checks: AtomicU64,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field(
                "issuers",
                &self
                    .issuers
                    .iter()
                    .map(|i| i.config.issuer.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("cached", &self.verified.entry_count())
            .finish_non_exhaustive()
    }
}

impl JwtVerifier {
    /// No network I/O; [`JwtVerifier::start`] loads the keys of issuers that are not the
    /// provider.
    pub fn new(
        issuers: &[IssuerConfig],
        provider: Option<&Arc<Provider>>,
        cache_entries: u64,
        groups_claim: Vec<String>,
        max_token_bytes: usize,
    ) -> Result<Self, ProviderError> {
        let http = HttpClient::new(Duration::from_secs(10))?;
        let mut out = Vec::new();
        for config in issuers {
            let keys = match (&config.keys, provider) {
                (IssuerKeys::Provider, Some(p)) => Keys::Provider(p.clone()),
                (IssuerKeys::Provider, None) => {
                    return Err(ProviderError::Setup {
                        reason: "[bearer] enabled needs [provider]".to_owned(),
                    });
                }
                (IssuerKeys::Jwks(url), _) => Keys::Own(Box::new(Jwks::new(
                    url.clone(),
                    http.clone(),
                    JWKS_REFETCH_INTERVAL,
                ))),
                (IssuerKeys::Discovery, _) => Keys::Own(Box::new(Jwks::without_url(
                    http.clone(),
                    JWKS_REFETCH_INTERVAL,
                ))),
            };
            out.push(TrustedIssuer {
                spellings: issuer_spellings(&config.issuer),
                config: config.clone(),
                keys,
            });
        }
        let verified = moka::sync::Cache::builder()
            .max_capacity(cache_entries)
            .expire_after(ExpireWhenDue)
            .build();
        Ok(Self {
            issuers: out,
            verified,
            recent_id: (cache_entries > 0).then(|| NEXT_VERIFIER.fetch_add(1, Ordering::Relaxed)),
            groups_claim,
            max_token_bytes,
            http,
            checks: AtomicU64::new(0),
        })
    }

    /// Tokens verified in full so far (signature and claims); a cache hit is not one.
    pub fn checks(&self) -> u64 {
        self.checks.load(Ordering::Relaxed)
    }

    /// Spawns, on the current runtime, the task that discovers and loads the keys of our own
    /// issuers and refreshes them hourly. A failure is retried with backoff; until keys are
    /// loaded, tokens of that issuer get 503 (rule 36), never a pass.
    pub fn start(self: &Arc<Self>) {
        if !self.issuers.iter().any(|i| matches!(i.keys, Keys::Own(_))) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!("JwtVerifier::start called outside a tokio runtime");
            return;
        };
        runtime.spawn(keep_loaded(Arc::downgrade(self)));
    }

    /// The verdict on `token`, already known to be of a sane size and a compact JWS shape.
    pub async fn verify(&self, token: &str, now: u64) -> Verdict {
        let hash = token_hash(token);
        // This worker's own memory first: a hot token then touches no shared cache line (the
        // shared cache's bookkeeping made every hit of one token contend across cores).
        if let Some(id) = self.recent_id
            && let Some(hit) = recent_get(id, &hash)
            && hit.valid_until_unix > now
        {
            return Verdict::Valid(hit.identity.clone());
        }
        if let Some(hit) = self.verified.get(&hash)
            && hit.valid_until_unix > now
        {
            if let Some(id) = self.recent_id {
                recent_put(id, hash, hit.clone());
            }
            return Verdict::Valid(hit.identity.clone());
        }
        self.checks.fetch_add(1, Ordering::Relaxed);
        match Box::pin(self.check(token, now)).await {
            Ok(verified) => {
                let identity = verified.identity.clone();
                let verified = Arc::new(verified);
                if let Some(id) = self.recent_id {
                    recent_put(id, hash, verified.clone());
                }
                self.verified.insert(hash, verified);
                Verdict::Valid(identity)
            }
            Err(Check::Invalid(r)) => Verdict::Invalid(r),
            Err(Check::Unavailable) => Verdict::Unavailable("token signing keys"),
        }
    }

    /// The full check without the cache: what a token costs the first time (benchmarks).
    pub async fn verify_uncached(&self, token: &str, now: u64) -> Verdict {
        match self.check(token, now).await {
            Ok(verified) => Verdict::Valid(verified.identity),
            Err(Check::Invalid(r)) => Verdict::Invalid(r),
            Err(Check::Unavailable) => Verdict::Unavailable("token signing keys"),
        }
    }

    async fn check(&self, token: &str, now: u64) -> Result<Verified, Check> {
        let jws = Jws::parse(token, self.max_token_bytes).map_err(refused)?;
        let claims = &jws.claims;

        // The issuer decides everything else, so find it first; an untrusted one is simply
        // not ours.
        let iss = claims
            .get("iss")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("missing_iss", "the token has no issuer"))?;
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.spellings.iter().any(|s| s == iss))
            .ok_or_else(|| invalid("untrusted_issuer", "the token's issuer is not trusted"))?;
        let cfg = &issuer.config;
        if cfg.require_typ && jws.typ_is(&["at+jwt"]) != Some(true) {
            return Err(invalid(
                "wrong_typ",
                "the token is not an access token (typ at+jwt)",
            ));
        }
        let hmac_secret = cfg.hmac_secret.as_ref().map(|s| s.expose().as_bytes());
        jws.verify(&cfg.algorithms, hmac_secret, issuer.jwks())
            .await
            .map_err(refused)?;

        // Claims, against our clock with bounded leeway.
        let leeway = cfg.leeway.as_secs();
        let exp = number(claims, "exp")
            .map_err(refused)?
            .ok_or_else(|| invalid("missing_exp", "the token has no expiry"))?;
        if exp.saturating_add(leeway) <= now {
            return Err(invalid("expired", "the token has expired"));
        }
        if let Some(nbf) = number(claims, "nbf").map_err(refused)?
            && nbf > now.saturating_add(leeway)
        {
            return Err(invalid("not_yet_valid", "the token is not valid yet"));
        }
        if let Some(iat) = number(claims, "iat").map_err(refused)?
            && iat > now.saturating_add(leeway)
        {
            return Err(invalid(
                "iat_in_future",
                "the token was issued in the future",
            ));
        }
        if !audience_in(claims, &cfg.audiences) {
            return Err(invalid(
                "wrong_audience",
                "the token is not meant for this audience",
            ));
        }
        let identity = identity_from_claims(jws.claims, &self.groups_claim)
            .ok_or_else(|| invalid("missing_sub", "the token names no subject"))?;
        let valid_until_unix = exp.saturating_add(leeway);
        let valid_until =
            Instant::now() + Duration::from_secs(valid_until_unix.saturating_sub(now));
        Ok(Verified {
            identity,
            valid_until,
            valid_until_unix,
        })
    }
}

enum Check {
    Invalid(Rejection),
    Unavailable,
}

/// Entries per worker before its memory starts over (a small, bounded front of the shared
/// cache; expiry is checked on every hit, so an entry never serves past `exp`).
const RECENT_MAX: usize = 4096;
static NEXT_VERIFIER: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Per worker thread (the server runs one event loop per thread): verifier id and token
    /// hash → what that verifier found. The id keeps two verifiers in one process apart.
    static RECENT: RefCell<HashMap<(u64, TokenHash), Arc<Verified>>> = RefCell::new(HashMap::new());
}

fn recent_get(id: u64, hash: &TokenHash) -> Option<Arc<Verified>> {
    RECENT.with(|r| r.try_borrow().ok()?.get(&(id, *hash)).cloned())
}

fn recent_put(id: u64, hash: TokenHash, verified: Arc<Verified>) {
    RECENT.with(|r| {
        if let Ok(mut map) = r.try_borrow_mut() {
            if map.len() >= RECENT_MAX {
                map.clear();
            }
            map.insert((id, hash), verified);
        }
    });
}

fn invalid(reason: &'static str, description: &'static str) -> Check {
    Check::Invalid(Rejection {
        reason,
        description,
    })
}

/// The answer for a token that failed the checks every JWT shares.
fn refused(e: JwsRejected) -> Check {
    let (reason, description) = match e {
        JwsRejected::KeysUnavailable => return Check::Unavailable,
        JwsRejected::TooLarge => ("too_large", "the token is too large"),
        JwsRejected::NotCompactJws => ("not_compact_jws", "the token is not a signed JWT"),
        JwsRejected::Malformed => ("malformed", "the token is malformed"),
        JwsRejected::DuplicateMember => {
            ("duplicate_member", "the token has a duplicate JSON member")
        }
        JwsRejected::AlgorithmNotAllowed => (
            "algorithm_not_allowed",
            "the token's algorithm is not accepted",
        ),
        JwsRejected::CriticalHeader => ("crit_header", "the token has critical header extensions"),
        JwsRejected::UnknownKey => ("unknown_key", "the token's signing key is not known"),
        JwsRejected::BadSignature => ("bad_signature", "the token's signature is invalid"),
    };
    invalid(reason, description)
}

/// Whether `token` looks like a compact JWS (three base64url segments, a JSON object header):
/// such tokens are checked here, anything else goes to introspection.
pub fn looks_like_jwt(token: &str) -> bool {
    // Runs on every bearer request before the cache, so without decoding the whole header
    // into a new buffer: the header must be base64url of a sane length (what decoding it
    // would check) and its first byte `{` (the first four characters carry three bytes).
    let Some((head, _)) = token.split_once('.') else {
        return false;
    };
    let mut first = [0u8; 3];
    head.len() % 4 != 1
        && head
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && URL_SAFE_NO_PAD
            .decode_slice(&head.as_bytes()[..head.len().min(4)], &mut first)
            .is_ok()
        && first[0] == b'{'
}

const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const REFRESH_EVERY: Duration = Duration::from_secs(3600);

/// Loads every own issuer (discovery first when it has no `jwks_uri`), retrying with backoff,
/// then refreshes hourly. Ends when the verifier is dropped.
async fn keep_loaded(weak: Weak<JwtVerifier>) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let Some(verifier) = weak.upgrade() else {
            return;
        };
        let mut all_ok = true;
        for issuer in &verifier.issuers {
            let Keys::Own(jwks) = &issuer.keys else {
                continue;
            };
            if let Err(e) = load(&verifier.http, issuer, jwks).await {
                all_ok = false;
                tracing::warn!(issuer = %issuer.config.issuer, error = %e, "bearer issuer keys not loaded; its tokens get 503 until they are");
            }
        }
        drop(verifier);
        if all_ok {
            backoff = FIRST_BACKOFF;
            tokio::time::sleep(REFRESH_EVERY).await;
        } else {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

async fn load(http: &HttpClient, issuer: &TrustedIssuer, jwks: &Jwks) -> Result<(), ProviderError> {
    if matches!(issuer.config.keys, IssuerKeys::Discovery) {
        let found = discovery::discover(http, &issuer.config.issuer).await?;
        match found.jwks_uri {
            Some(url) => jwks.set_url(url),
            None => return Err(ProviderError::Unsupported { what: "jwks_uri" }),
        }
    }
    jwks.refresh().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwt_shape_is_told_from_opaque_tokens() {
        assert!(looks_like_jwt("eyJhbGciOiJSUzI1NiJ9.e30.sig"));
        assert!(looks_like_jwt("eyJ9.x"));
        assert!(!looks_like_jwt("opaque-token-without-dots"));
        assert!(!looks_like_jwt("abcd.efgh.ijkl"), "header is not JSON");
        assert!(!looks_like_jwt("eyJh!bGc.e30.sig"), "not base64url");
        assert!(!looks_like_jwt("eyJhb.e30.sig"), "impossible base64 length");
        assert!(!looks_like_jwt(".e30.sig"));
    }

    #[test]
    fn per_worker_entries_of_two_verifiers_stay_apart() {
        let verified = Arc::new(Verified {
            identity: Identity::default(),
            valid_until: Instant::now(),
            valid_until_unix: u64::MAX,
        });
        recent_put(1, [7; 32], verified);
        assert!(recent_get(1, &[7; 32]).is_some());
        // A token one verifier trusts is unknown to another with other issuers.
        assert!(recent_get(2, &[7; 32]).is_none());
    }
}
