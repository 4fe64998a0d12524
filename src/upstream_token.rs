//! Forward, the gateway's own credential: for an upstream that is itself a protected API
//! (`[upstreams.client]`), the gateway obtains a token with the client credentials grant
//! (RFC 6749 §4.4) and sends it as `Authorization: Bearer` — the caller's identity still
//! travels in the identity headers.
//!
//! One token per upstream, shared by every worker. It is renewed in the background once 80 %
//! of its life has passed, by one task at a time, while requests go on with the current token;
//! a request waits only when there is no usable token at all, and then all waiting requests
//! share one token request. A token is given up shortly before it expires, and at once when the
//! upstream answers 401 `invalid_token`. When the token endpoint fails, a still-valid token
//! keeps being used; without one the request gets 503 (rule 36). Tokens never reach logs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use http::HeaderValue;
use url::Url;

use crate::config::{Config, UpstreamClientConfig};
use crate::oidc::token::TokenCall;
use crate::oidc::{ClientCredentials, HttpClient, Provider, ProviderError, TokenResponse};

/// Without `expires_in`, a token is assumed to live this long.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);
/// After a failed renewal, the next attempt waits at least this long (no hammering).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(2);

/// One token, ready to be sent.
struct Held {
    /// `Bearer <token>`, marked sensitive so hyper never shows it.
    header: HeaderValue,
    renew_at: Instant,
    unusable_at: Instant,
}

/// The gateway's client toward one upstream.
pub struct UpstreamClient {
    name: String,
    config: UpstreamClientConfig,
    provider: Option<Arc<Provider>>,
    http: HttpClient,
    credentials: ClientCredentials,
    current: RwLock<Option<Arc<Held>>>,
    /// Held while a token request runs: concurrent waiters share its result.
    fetching: tokio::sync::Mutex<Option<Instant>>,
    requests: AtomicU64,
}

impl std::fmt::Debug for UpstreamClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamClient")
            .field("upstream", &self.name)
            .field("client_id", &self.config.client_id)
            .field("token_requests", &self.token_requests())
            .finish_non_exhaustive()
    }
}

/// The token a request carries, to give back if the upstream refuses it.
#[derive(Clone)]
pub struct Lease(Arc<Held>);

impl Lease {
    pub fn header(&self) -> HeaderValue {
        self.0.header.clone()
    }
}

/// No token can be had: the caller answers 503.
#[derive(Debug, thiserror::Error)]
#[error("no token for upstream {upstream}: {reason}")]
pub struct NoToken {
    pub upstream: String,
    pub reason: String,
}

impl UpstreamClient {
    pub fn new(
        name: &str,
        config: &UpstreamClientConfig,
        provider: Option<Arc<Provider>>,
    ) -> Result<Arc<Self>, ProviderError> {
        let timeout = provider
            .as_ref()
            .map_or(Duration::from_secs(10), |p| p.config().timeout);
        Ok(Arc::new(Self {
            name: name.to_owned(),
            config: config.clone(),
            provider,
            http: HttpClient::new(timeout)?,
            credentials: ClientCredentials::new(&config.client_id, &config.client_auth)?,
            current: RwLock::new(None),
            fetching: tokio::sync::Mutex::new(None),
            requests: AtomicU64::new(0),
        }))
    }

    /// Token requests made so far (tests, metrics).
    pub fn token_requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    fn held(&self) -> Option<Arc<Held>> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The token to send now.
    pub async fn lease(self: &Arc<Self>) -> Result<Lease, NoToken> {
        let now = Instant::now();
        if let Some(held) = self.held()
            && now < held.unusable_at
        {
            if now >= held.renew_at {
                self.renew_in_background();
            }
            return Ok(Lease(held));
        }
        Box::pin(self.fetch_shared()).await.map(Lease)
    }

    /// The upstream refused `lease` as `invalid_token`: forget it, unless a newer one is
    /// already in place.
    pub fn refused(&self, lease: &Lease) {
        let mut slot = self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if slot.as_ref().is_some_and(|h| Arc::ptr_eq(h, &lease.0)) {
            tracing::warn!(upstream = %self.name, "upstream refused the gateway's token; getting a new one");
            *slot = None;
        }
    }

    fn renew_in_background(self: &Arc<Self>) {
        // Only one renewal at a time; if one is running (or just failed), go on.
        let Ok(guard) = self.fetching.try_lock() else {
            return;
        };
        if guard.is_some_and(|failed| failed.elapsed() < RETRY_AFTER_FAILURE) {
            return;
        }
        drop(guard);
        let me = self.clone();
        tokio::spawn(async move {
            let _ = me.fetch_shared().await;
        });
    }

    /// Fetches a token unless another task just did; concurrent callers wait for one request.
    async fn fetch_shared(&self) -> Result<Arc<Held>, NoToken> {
        let mut last_failure = self.fetching.lock().await;
        let now = Instant::now();
        let held = self.held();
        if let Some(held) = &held
            && now < held.renew_at
        {
            return Ok(held.clone());
        }
        // Requests that queued behind a failed attempt do not each try again at once.
        if let Some(failed) = *last_failure
            && failed.elapsed() < RETRY_AFTER_FAILURE
        {
            return match held {
                Some(held) if now < held.unusable_at => Ok(held),
                _ => Err(NoToken {
                    upstream: self.name.clone(),
                    reason: "the token endpoint failed moments ago".to_owned(),
                }),
            };
        }
        match self.fetch().await {
            Ok(held) => {
                *last_failure = None;
                *self
                    .current
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(held.clone());
                Ok(held)
            }
            Err(source) => {
                *last_failure = Some(now);
                tracing::warn!(upstream = %self.name, error = %source, "client credentials grant failed");
                // A token that is still valid keeps serving until it is not.
                match self.held() {
                    Some(held) if now < held.unusable_at => Ok(held),
                    _ => Err(NoToken {
                        upstream: self.name.clone(),
                        reason: source.to_string(),
                    }),
                }
            }
        }
    }

    async fn fetch(&self) -> Result<Arc<Held>, ProviderError> {
        let metadata;
        let endpoint: &Url = match &self.config.token_endpoint {
            Some(u) => u,
            None => {
                metadata = self
                    .provider
                    .as_ref()
                    .and_then(|p| p.metadata())
                    .ok_or(ProviderError::NotReady)?;
                &metadata.token_endpoint
            }
        };
        self.requests.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let answer: TokenResponse = TokenCall {
            http: &self.http,
            endpoint,
            client_id: &self.config.client_id,
            credentials: &self.credentials,
        }
        .client_credentials(
            &self.config.scopes.join(" "),
            self.config.audience.as_deref(),
            self.config.resource.as_deref(),
        )
        .await?;
        let lifetime = answer
            .expires_in
            .map_or(DEFAULT_LIFETIME, Duration::from_secs);
        let margin = (lifetime / 10).min(Duration::from_secs(30));
        let mut header = HeaderValue::from_str(&format!("Bearer {}", answer.access_token.expose()))
            .map_err(|_| ProviderError::BadResponse {
                url: crate::oidc::http::loggable(endpoint),
                reason: "access_token is not usable in a header".to_owned(),
            })?;
        header.set_sensitive(true);
        tracing::debug!(upstream = %self.name, lifetime_s = lifetime.as_secs(), "client credentials token obtained");
        Ok(Arc::new(Held {
            header,
            renew_at: started + lifetime.mul_f32(0.8),
            unusable_at: started + lifetime.saturating_sub(margin),
        }))
    }
}

/// Every upstream's client, by upstream index (`None` for unprotected upstreams).
#[derive(Debug, Default)]
pub struct UpstreamClients(Vec<Option<Arc<UpstreamClient>>>);

impl UpstreamClients {
    pub fn new(config: &Config, provider: Option<&Arc<Provider>>) -> Result<Self, ProviderError> {
        config
            .upstreams
            .iter()
            .map(|u| {
                u.client
                    .as_ref()
                    .map(|c| UpstreamClient::new(&u.name, c, provider.cloned()))
                    .transpose()
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }

    pub fn get(&self, index: usize) -> Option<&Arc<UpstreamClient>> {
        self.0.get(index).and_then(Option::as_ref)
    }

    /// Each protected upstream's name and the token requests made for it (metrics).
    pub fn token_requests(&self) -> Vec<(String, u64)> {
        self.0
            .iter()
            .flatten()
            .map(|c| (c.name.to_string(), c.token_requests()))
            .collect()
    }
}
