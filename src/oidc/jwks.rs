//! Talking to the provider: its signing keys (the JWKS), fetched from `jwks_uri` and parsed
//! once into verification keys.
//!
//! An unknown `kid` means the provider may have rotated its keys, so it triggers a refetch, but
//! at most one per refetch interval (an attacker sending random `kid`s must not make us hammer
//! the provider, rule 14), and concurrent misses share that single fetch. Independent of
//! sessions: bearer-token validation reuses it for any issuer.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use url::Url;

use super::http::{Auth, HttpClient, ProviderError, loggable};

/// The kind of a verification key, which decides the algorithms it may verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
}

impl KeyKind {
    /// Whether a key of this kind may verify `alg` (no cross-family use, RFC 8725 §3.1).
    pub fn fits(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            KeyKind::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            KeyKind::EcP256 => alg == ES256,
            KeyKind::EcP384 => alg == ES384,
            KeyKind::Ed25519 => alg == EdDSA,
        }
    }
}

/// One usable key from the set.
#[derive(Clone)]
pub struct Key {
    pub kid: Option<String>,
    pub kind: KeyKind,
    /// The JWK's own `alg`, when it names one: the token's `alg` must then be exactly it.
    pub alg: Option<Algorithm>,
    pub key: DecodingKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("kind", &self.kind)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl Key {
    /// Whether this key may verify a token with header `alg`.
    pub fn accepts(&self, alg: Algorithm) -> bool {
        self.kind.fits(alg) && self.alg.is_none_or(|a| a == alg)
    }
}

#[derive(Default)]
struct KeySet {
    keys: Vec<Arc<Key>>,
    loaded: bool,
}

impl KeySet {
    fn by_kid(&self, kid: &str) -> Option<Arc<Key>> {
        self.keys
            .iter()
            .find(|k| k.kid.as_deref() == Some(kid))
            .cloned()
    }

    /// Without a `kid`: only when exactly one key fits the algorithm, else it is ambiguous.
    fn only_for(&self, alg: Algorithm) -> Option<Arc<Key>> {
        let mut fitting = self.keys.iter().filter(|k| k.accepts(alg));
        match (fitting.next(), fitting.next()) {
            (Some(key), None) => Some(key.clone()),
            _ => None,
        }
    }
}

/// A provider's key set with rate-limited, coalesced refetching.
pub struct Jwks {
    url: RwLock<Option<Url>>,
    http: HttpClient,
    refetch_interval: Duration,
    current: RwLock<Arc<KeySet>>,
    /// Held while fetching, so concurrent misses wait for one fetch; holds when the last
    /// lookup-triggered fetch (successful or not) started. Periodic refreshes do not count:
    /// the limit is there against `kid` floods, not to delay picking up a rotation.
    fetching: tokio::sync::Mutex<Option<Instant>>,
    fetches: AtomicU64,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks")
            .field("url", &self.url())
            .field("keys", &self.snapshot().keys.len())
            .field("fetches", &self.fetch_count())
            .finish_non_exhaustive()
    }
}

impl Jwks {
    /// Keys at `url`; an unknown `kid` refetches at most once per `refetch_interval`.
    pub fn new(url: Url, http: HttpClient, refetch_interval: Duration) -> Self {
        let jwks = Self::without_url(http, refetch_interval);
        jwks.set_url(url);
        jwks
    }

    /// A set whose URL is learned later (from discovery); lookups fail until [`Jwks::set_url`].
    pub fn without_url(http: HttpClient, refetch_interval: Duration) -> Self {
        Self {
            url: RwLock::new(None),
            http,
            refetch_interval,
            current: RwLock::new(Arc::new(KeySet::default())),
            fetching: tokio::sync::Mutex::new(None),
            fetches: AtomicU64::new(0),
        }
    }

    pub fn set_url(&self, url: Url) {
        let mut slot = self
            .url
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *slot = Some(url);
    }

    pub fn url(&self) -> Option<Url> {
        self.url
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Whether a key set has been loaded at least once.
    pub fn loaded(&self) -> bool {
        self.snapshot().loaded
    }

    /// How many fetches were started (tests check rate limiting and coalescing with it).
    pub fn fetch_count(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// The usable keys, as last fetched.
    pub fn keys(&self) -> Vec<Arc<Key>> {
        self.snapshot().keys.clone()
    }

    fn snapshot(&self) -> Arc<KeySet> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The key named `kid`. Unknown → one rate-limited refetch; still unknown → `Ok(None)`.
    /// `Err` only when no key set could be fetched at all (callers fail closed, rule 36).
    pub async fn get(&self, kid: &str) -> Result<Option<Arc<Key>>, ProviderError> {
        self.lookup(|set| set.by_kid(kid)).await
    }

    /// For a token without `kid`: the one key that fits `alg`, if exactly one does.
    pub async fn get_only(&self, alg: Algorithm) -> Result<Option<Arc<Key>>, ProviderError> {
        self.lookup(|set| set.only_for(alg)).await
    }

    async fn lookup(
        &self,
        find: impl Fn(&KeySet) -> Option<Arc<Key>>,
    ) -> Result<Option<Arc<Key>>, ProviderError> {
        let before = self.snapshot();
        if let Some(key) = find(&before) {
            return Ok(Some(key));
        }
        let mut last = self.fetching.lock().await;
        // Another task may have fetched while we waited for the lock.
        let now_set = self.snapshot();
        if let Some(key) = find(&now_set) {
            return Ok(Some(key));
        }
        if let Some(at) = *last
            && at.elapsed() < self.refetch_interval
        {
            return if now_set.loaded {
                Ok(None)
            } else {
                Err(ProviderError::NotReady)
            };
        }
        *last = Some(Instant::now());
        self.fetch_locked().await?;
        Ok(find(&self.snapshot()))
    }

    /// Fetches now, whatever the rate limit says (the periodic refresh). Still coalesced with
    /// concurrent lookups. A failure keeps the previous keys.
    pub async fn refresh(&self) -> Result<(), ProviderError> {
        let _guard = self.fetching.lock().await;
        self.fetch_locked().await
    }

    /// Call only while holding `fetching`.
    async fn fetch_locked(&self) -> Result<(), ProviderError> {
        let Some(url) = self.url() else {
            return Err(ProviderError::NotReady);
        };
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let doc: JwksDocument = self.http.get_json(&url, Auth::None).await?;
        let keys = parse_keys(&doc.keys);
        if keys.is_empty() {
            return Err(ProviderError::BadResponse {
                url: loggable(&url),
                reason: "the JWKS has no usable signing key".to_owned(),
            });
        }
        tracing::debug!(jwks = %loggable(&url), keys = keys.len(), "JWKS loaded");
        let mut slot = self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *slot = Arc::new(KeySet { keys, loaded: true });
        Ok(())
    }
}

#[derive(Deserialize)]
struct JwksDocument {
    keys: Vec<serde_json::Value>,
}

/// Usable signature keys; others (encryption keys, symmetric keys, unknown types or curves,
/// malformed entries) are skipped, as JWK consumers must ignore what they do not understand
/// (RFC 7517 §5).
fn parse_keys(raw: &[serde_json::Value]) -> Vec<Arc<Key>> {
    raw.iter().filter_map(parse_key).map(Arc::new).collect()
}

fn parse_key(value: &serde_json::Value) -> Option<Key> {
    if let Some(usage) = value.get("use")
        && usage.as_str() != Some("sig")
    {
        return None;
    }
    let kid = match value.get("kid") {
        None => None,
        Some(kid) => Some(kid.as_str()?.to_owned()),
    };
    let alg = match value.get("alg") {
        None => None,
        Some(alg) => Some(Algorithm::from_str(alg.as_str()?).ok()?),
    };
    let jwk: Jwk = serde_json::from_value(value.clone()).ok()?;
    let kind = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => KeyKind::Rsa,
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => KeyKind::EcP256,
            EllipticCurve::P384 => KeyKind::EcP384,
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => KeyKind::Ed25519,
            _ => return None,
        },
        // A symmetric key published in a JWKS is never a valid ID token key for us.
        AlgorithmParameters::OctetKey(_) => return None,
    };
    if let Some(alg) = alg
        && !kind.fits(alg)
    {
        return None;
    }
    let key = DecodingKey::from_jwk(&jwk).ok()?;
    Some(Key {
        kid,
        kind,
        alg,
        key,
    })
}

#[cfg(test)]
mod unit {
    use super::*;
    use serde_json::json;

    #[test]
    fn encryption_symmetric_and_unknown_keys_are_skipped() {
        let keys = parse_keys(&[
            json!({"kty": "oct", "k": "c2VjcmV0", "kid": "h"}),
            json!({"kty": "EC", "crv": "P-256", "use": "enc", "kid": "e",
                   "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
                   "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}),
            json!({"kty": "XYZ", "kid": "u"}),
            json!({"kty": "EC", "crv": "P-256", "use": "sig", "kid": "s", "alg": "ES256",
                   "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
                   "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}),
            json!({"kty": "EC", "crv": "P-256", "kid": "wrong-alg", "alg": "RS256",
                   "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
                   "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}),
        ]);
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("s"));
        assert_eq!(keys[0].kind, KeyKind::EcP256);
    }
}
