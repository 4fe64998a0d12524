//! Talking to the provider: everything the gateway asks of its OpenID Connect / OAuth 2.0
//! provider, behind one shared [`Provider`].
//!
//! * [`http`]: the outbound client (timeouts, no redirects, size caps) and [`ProviderError`];
//! * [`discovery`]: the provider's endpoints ([`Metadata`]), discovered or configured;
//! * [`jwks`]: its signing keys, refetched on an unknown `kid` under a rate limit;
//! * [`token`]: the token endpoint with client authentication, and userinfo;
//! * [`id_token`]: full ID token validation.
//!
//! [`Provider::start`] loads discovery and keys in the background with backoff and keeps them
//! fresh; until the first load succeeds [`Provider::ready`] is false and callers answer 503
//! (rule 23). This module does not handle browser state (`state`, cookies, sessions): it builds
//! the URLs and makes the calls, and the login endpoints decide what to do with the answers.

pub mod discovery;
pub mod http;
pub mod id_token;
pub mod jwks;
pub mod jws;
pub mod logout_token;
pub mod token;

use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::digest;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use rand::{Rng, RngCore};
use url::Url;

pub use discovery::Metadata;
pub use http::{HttpClient, ProviderError};
pub use id_token::{Claims, Expectations, IdTokenRejected};
pub use jwks::Jwks;
pub use token::{ClientCredentials, TokenResponse};

use crate::config::{ClientAuth, ProviderConfig, Secret};

/// First retry delay of the background load; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// At most one JWKS refetch per this interval on an unknown `kid` (rule 14).
pub const JWKS_REFETCH_INTERVAL: Duration = Duration::from_secs(10);

/// The provider, shared by every request (`Arc`).
pub struct Provider {
    config: ProviderConfig,
    http: HttpClient,
    credentials: ClientCredentials,
    metadata: RwLock<Option<Arc<Metadata>>>,
    jwks: Jwks,
    task: Mutex<Option<tokio::task::AbortHandle>>,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("issuer", &self.config.issuer.as_str())
            .field("client_id", &self.config.client_id)
            .field("client_auth", &self.credentials)
            .field("ready", &self.ready())
            .finish_non_exhaustive()
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        if let Some(task) = self.task.get_mut().ok().and_then(Option::take) {
            task.abort();
        }
    }
}

impl Provider {
    /// Prepares the client (TLS roots, client credentials). No network I/O: call
    /// [`Provider::start`] to load discovery and keys.
    pub fn new(config: &ProviderConfig) -> Result<Arc<Self>, ProviderError> {
        let http = HttpClient::new(config.timeout)?;
        let credentials = ClientCredentials::new(&config.client_id, &config.client_auth)?;
        let jwks = Jwks::without_url(http.clone(), JWKS_REFETCH_INTERVAL);
        // Explicit endpoints are known now; only their JWKS (if any) remains to be loaded.
        let metadata = config.endpoints.as_ref().map(|endpoints| {
            if let Some(url) = &endpoints.jwks {
                jwks.set_url(url.clone());
            }
            Arc::new(discovery::from_endpoints(&config.issuer, endpoints))
        });
        Ok(Arc::new(Self {
            config: config.clone(),
            http,
            credentials,
            metadata: RwLock::new(metadata),
            jwks,
            task: Mutex::new(None),
        }))
    }

    /// Spawns (on the current tokio runtime) the task that loads discovery and JWKS, retrying
    /// with backoff until it works, then refreshing every `discovery_refresh`. Calling it again
    /// does nothing. The task ends when the provider is dropped. Outside a tokio runtime it
    /// logs an error and does nothing.
    pub fn start(self: &Arc<Self>) {
        let mut slot = self
            .task
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if slot.is_some() {
            return;
        }
        // `tokio::spawn` panics outside a runtime; report the misuse instead (no panics).
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!(
                "Provider::start called outside a tokio runtime; the provider stays not ready"
            );
            return;
        };
        let weak = Arc::downgrade(self);
        let handle = runtime.spawn(keep_loaded(weak));
        *slot = Some(handle.abort_handle());
    }

    /// One load of discovery (unless configured) and the JWKS (when there is one).
    pub async fn load(&self) -> Result<(), ProviderError> {
        if self.config.endpoints.is_none() {
            let found = discovery::discover(&self.http, &self.config.issuer).await?;
            if let Some(url) = &found.jwks_uri {
                self.jwks.set_url(url.clone());
            }
            let mut slot = self
                .metadata
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            *slot = Some(Arc::new(found));
        }
        if self.jwks.url().is_some() {
            self.jwks.refresh().await?;
        }
        Ok(())
    }

    /// Metadata known and, when the provider has a JWKS, keys loaded.
    pub fn ready(&self) -> bool {
        self.metadata().is_some() && (self.jwks.url().is_none() || self.jwks.loaded())
    }

    pub fn metadata(&self) -> Option<Arc<Metadata>> {
        self.metadata
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn require_metadata(&self) -> Result<Arc<Metadata>, ProviderError> {
        self.metadata().ok_or(ProviderError::NotReady)
    }

    /// The issuer identifier as tokens carry it (discovered spelling once known).
    pub fn issuer(&self) -> String {
        match self.metadata() {
            Some(m) => m.issuer.clone(),
            None => discovery::issuer_spellings(&self.config.issuer)
                .into_iter()
                .next()
                .unwrap_or_else(|| self.config.issuer.to_string()),
        }
    }

    pub fn config(&self) -> &ProviderConfig {
        &self.config
    }

    /// The key set, for reuse by bearer-token validation.
    pub fn jwks(&self) -> &Jwks {
        &self.jwks
    }

    pub fn http(&self) -> &HttpClient {
        &self.http
    }

    /// RFC 9207: the provider said it sends `iss` on the callback, so it must be checked.
    pub fn iss_parameter_required(&self) -> bool {
        self.metadata().is_some_and(|m| m.iss_parameter_supported)
    }

    /// The authorization request (code flow, PKCE S256, nonce; rules 1–3).
    pub fn authorization_url(
        &self,
        state: &str,
        nonce: &str,
        code_challenge: &str,
    ) -> Result<Url, ProviderError> {
        let metadata = self.require_metadata()?;
        let mut url = metadata.authorization_endpoint.clone();
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("response_type", "code")
                .append_pair("client_id", &self.config.client_id)
                .append_pair("redirect_uri", self.config.redirect_url.as_str())
                .append_pair("scope", &self.config.scopes.join(" "))
                .append_pair("state", state)
                .append_pair("nonce", nonce)
                .append_pair("code_challenge", code_challenge)
                .append_pair("code_challenge_method", "S256");
            // Configuration refuses protocol parameter names here, so these only add.
            for (k, v) in &self.config.extra_auth_params {
                q.append_pair(k, v);
            }
        }
        Ok(url)
    }

    fn token_call<'a>(&'a self, metadata: &'a Metadata) -> token::TokenCall<'a> {
        token::TokenCall {
            http: &self.http,
            endpoint: &metadata.token_endpoint,
            client_id: &self.config.client_id,
            credentials: &self.credentials,
        }
    }

    /// Redeems `code` with its PKCE verifier; `redirect_uri` is the configured one, the same the
    /// authorization request named.
    pub async fn exchange_code(
        &self,
        code: &str,
        verifier: &Secret<String>,
    ) -> Result<TokenResponse, ProviderError> {
        let metadata = self.require_metadata()?;
        self.token_call(&metadata)
            .exchange_code(code, verifier, &self.config.redirect_url)
            .await
    }

    /// The resource owner password grant (the opt-in Basic-auth bridge only).
    pub async fn password_grant(
        &self,
        username: &str,
        password: &Secret<String>,
        scope: &str,
    ) -> Result<TokenResponse, ProviderError> {
        let metadata = self.require_metadata()?;
        self.token_call(&metadata)
            .password(username, password, scope)
            .await
    }

    /// A refresh token grant.
    pub async fn refresh(
        &self,
        refresh_token: &Secret<String>,
    ) -> Result<TokenResponse, ProviderError> {
        let metadata = self.require_metadata()?;
        self.token_call(&metadata).refresh(refresh_token).await
    }

    /// The client secret, the only key `HS*` tokens from the provider verify with (OIDC Core
    /// §10.1), when HMAC is allowed at all.
    fn hmac_secret(&self) -> Option<&[u8]> {
        match &self.config.client_auth {
            ClientAuth::SecretBasic(s) | ClientAuth::SecretPost(s)
                if self.config.id_token_algorithms.iter().any(is_hmac) =>
            {
                Some(s.expose().as_bytes())
            }
            _ => None,
        }
    }

    /// Validates an ID token against the configuration, the provider's keys and `nonce`.
    pub async fn validate_id_token(
        &self,
        raw: &str,
        nonce: Option<&str>,
    ) -> Result<Claims, IdTokenRejected> {
        let issuer = self.issuer();
        let hmac_secret = self.hmac_secret();
        let expect = Expectations {
            issuer: &issuer,
            client_id: &self.config.client_id,
            algorithms: &self.config.id_token_algorithms,
            leeway: self.config.clock_leeway,
            nonce,
            now: unix_now(),
            hmac_secret,
        };
        id_token::validate_id_token(raw, &self.jwks, &expect).await
    }

    /// Validates a back-channel logout token against the configuration and the keys.
    pub async fn validate_logout_token(
        &self,
        raw: &str,
    ) -> Result<logout_token::LogoutRequest, logout_token::LogoutRejected> {
        let issuer = self.issuer();
        let hmac_secret = self.hmac_secret();
        let expect = logout_token::LogoutExpectations {
            issuer: &issuer,
            client_id: &self.config.client_id,
            algorithms: &self.config.id_token_algorithms,
            leeway: self.config.clock_leeway.as_secs(),
            now: unix_now(),
            hmac_secret,
        };
        logout_token::validate_logout_token(raw, &self.jwks, &expect).await
    }

    /// The userinfo claims for `access_token`.
    pub async fn userinfo(
        &self,
        access_token: &Secret<String>,
    ) -> Result<serde_json::Map<String, serde_json::Value>, ProviderError> {
        let metadata = self.require_metadata()?;
        let endpoint = metadata
            .userinfo_endpoint
            .as_ref()
            .ok_or(ProviderError::Unsupported {
                what: "userinfo endpoint",
            })?;
        token::userinfo(&self.http, endpoint, access_token).await
    }

    /// RP-initiated logout (OIDC RP-Initiated Logout 1.0 §2), when the provider offers it.
    pub fn end_session_url(&self, id_token_hint: Option<&str>, state: Option<&str>) -> Option<Url> {
        let metadata = self.metadata()?;
        let mut url = metadata.end_session_endpoint.clone()?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(hint) = id_token_hint {
                q.append_pair("id_token_hint", hint);
            }
            q.append_pair(
                "post_logout_redirect_uri",
                self.config.post_logout_redirect_url.as_str(),
            );
            q.append_pair("client_id", &self.config.client_id);
            if let Some(state) = state {
                q.append_pair("state", state);
            }
        }
        Some(url)
    }
}

fn is_hmac(alg: &Algorithm) -> bool {
    matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

/// Seconds since the Unix epoch (0 for a clock before it), the unit of every token time.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The background load: backoff until the first success, then periodic refresh. Holds only a
/// weak reference so it never keeps a dropped provider alive.
async fn keep_loaded(weak: Weak<Provider>) {
    let mut backoff = FIRST_BACKOFF;
    let mut loaded_once = false;
    loop {
        let Some(provider) = weak.upgrade() else {
            return;
        };
        let result = provider.load().await;
        let refresh = provider.config.discovery_refresh;
        let issuer = provider.issuer();
        drop(provider);
        let wait = match result {
            Ok(()) => {
                if !loaded_once {
                    tracing::info!(%issuer, "provider metadata and keys loaded");
                }
                loaded_once = true;
                backoff = FIRST_BACKOFF;
                refresh
            }
            Err(err) => {
                if loaded_once {
                    tracing::warn!(%issuer, error = %err, "provider refresh failed; keeping the metadata and keys already loaded");
                } else {
                    tracing::warn!(%issuer, error = %err, retry_in = ?backoff, "provider not reachable yet; logins answer 503 until it is");
                }
                let wait = jitter(backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
                // After a first success a failed refresh retries on the backoff schedule, but
                // never more often than the refresh interval would.
                if loaded_once { wait.min(refresh) } else { wait }
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// Between half and all of `base`, so many gateways do not retry in lock step.
fn jitter(base: Duration) -> Duration {
    let factor: f64 = rand::rng().random_range(0.5..=1.0);
    base.mul_f64(factor)
}

/// A PKCE pair (RFC 7636 §4.1–4.2): a 43-character verifier from 32 random bytes and its S256
/// challenge.
pub fn pkce_pair() -> (Secret<String>, String) {
    let verifier = random_token(32);
    let challenge = pkce_challenge(&verifier);
    (Secret::new(verifier), challenge)
}

/// `BASE64URL(SHA256(verifier))`.
pub fn pkce_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, verifier.as_bytes()))
}

/// A URL-safe random string of `bytes` random bytes, at least 16 (128 bits, rule 2) whatever is
/// asked, for `state`, `nonce` and `jti`.
pub fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes.max(16)];
    rand::rng().fill_bytes(&mut buf);
    URL_SAFE_NO_PAD.encode(buf)
}

#[cfg(test)]
mod tests;
