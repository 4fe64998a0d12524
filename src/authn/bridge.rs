//! Authenticate, the legacy password bridge (opt-in, off by default): on routes that allow it,
//! HTTP Basic credentials are exchanged at the provider's token endpoint with the resource
//! owner password grant (RFC 6749 §4.3, deprecated by RFC 9700 §2.4), and the request goes on
//! as a bearer caller with the token obtained.
//!
//! Credentials are never stored: the token is remembered under an HMAC of user and password
//! with a key that lives only in this process, until shortly before the token expires. Failed
//! attempts are counted per user name (case-insensitively: most providers' are), and past
//! `max_failures` in a minute the provider is not asked again for that user until the minute is
//! over (password guessing through the gateway). An attempt counts as a failure from the moment
//! the provider is asked until it says yes: guesses sent all at once cannot outrun the count.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use aws_lc_rs::hmac;
use rand::RngCore;

use super::{Due, ExpireWhenDue};
use crate::config::{PasswordBridgeConfig, Secret};
use crate::oidc::{Claims, IdTokenRejected, Provider, ProviderError};

/// Tokens are given up this long before they expire, so none is used at its last second.
const EARLY: Duration = Duration::from_secs(10);
/// Without `expires_in`, a token is kept this long.
const DEFAULT_KEEP: Duration = Duration::from_secs(60);
const MAX_KEEP: Duration = Duration::from_secs(3600);
const FAILURE_WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BridgeError {
    /// The provider refused the credentials (`invalid_grant`, RFC 6749 §5.2).
    BadCredentials,
    TooManyAttempts,
    /// The provider could not be asked.
    Unavailable,
}

struct Bought {
    token: Secret<String>,
    /// The validated claims of the ID token the grant returned, when it returned one: the
    /// person's email and names, which access tokens often lack.
    id_claims: Option<Claims>,
    until: Instant,
}

/// One attempt's place in its user's failure budget: taken when it starts, given back when it
/// ends unless the provider refused the credentials (also when the request is dropped while
/// the provider is being asked).
struct Attempt {
    budget: Arc<AtomicU32>,
    /// Failures (and attempts under way) before this one.
    before: u32,
    failed: bool,
}

impl Attempt {
    fn start(budget: Arc<AtomicU32>) -> Self {
        let before = budget.fetch_add(1, Ordering::Relaxed);
        Self {
            budget,
            before,
            failed: false,
        }
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if !self.failed {
            self.budget.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Why a credential exchange did not happen or failed.
enum Ask {
    /// The user's failure budget was spent before the provider was asked.
    Locked,
    /// The provider refused the credentials (counted as a failure).
    Refused,
    Provider(ProviderError),
}

/// `user` is past `max_failures`: the provider is not asked.
fn locked(user: &str) -> BridgeError {
    tracing::warn!(user = %user, "password bridge: too many failed attempts; not asking the provider");
    BridgeError::TooManyAttempts
}

/// What a successful exchange gives: the access token, and the person's ID token claims.
#[derive(Debug, Clone)]
pub struct Exchanged {
    pub token: Secret<String>,
    pub id_claims: Option<Claims>,
}

impl Due for Bought {
    fn due(&self) -> Instant {
        self.until
    }
}

pub struct PasswordBridge {
    provider: Arc<Provider>,
    scope: String,
    key: hmac::Key,
    tokens: moka::future::Cache<[u8; 32], Arc<Bought>>,
    failures: moka::sync::Cache<String, Arc<AtomicU32>>,
    max_failures: u32,
}

impl std::fmt::Debug for PasswordBridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordBridge")
            .field("scope", &self.scope)
            .field("max_failures", &self.max_failures)
            .finish_non_exhaustive()
    }
}

impl PasswordBridge {
    pub fn new(config: &PasswordBridgeConfig, provider: Arc<Provider>) -> Self {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        Self {
            provider,
            scope: config.scopes.join(" "),
            key: hmac::Key::new(hmac::HMAC_SHA256, &key),
            tokens: moka::future::Cache::builder()
                .max_capacity(10_000)
                .expire_after(ExpireWhenDue)
                .build(),
            failures: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(FAILURE_WINDOW)
                .build(),
            max_failures: config.max_failures,
        }
    }

    /// The access token these credentials buy, from the cache or the provider.
    pub async fn exchange(
        &self,
        user: &str,
        password: &Secret<String>,
    ) -> Result<Exchanged, BridgeError> {
        let counted = user.to_lowercase();
        let failures = self
            .failures
            .get(&counted)
            .map_or(0, |n| n.load(Ordering::Relaxed));
        if failures >= self.max_failures {
            return Err(locked(user));
        }
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(user.as_bytes());
        ctx.update(&[0]);
        ctx.update(password.expose().as_bytes());
        let mut key = [0u8; 32];
        key.copy_from_slice(ctx.sign().as_ref());

        let bought = self
            .tokens
            .try_get_with(key, async {
                // Counted before asking, taken back unless the provider refuses: concurrent
                // guesses (each a different password, so a different cache key) each take a
                // place in the budget before any is answered.
                let budget = self
                    .failures
                    .get_with(counted.clone(), || Arc::new(AtomicU32::new(0)));
                let mut attempt = Attempt::start(budget);
                if attempt.before >= self.max_failures {
                    return Err(Ask::Locked);
                }
                let answer = match self.provider.password_grant(user, password, &self.scope).await {
                    Ok(answer) => answer,
                    // RFC 6749 §5.2: `invalid_grant` is what wrong resource owner credentials
                    // get; anything else (`invalid_client`, `unsupported_grant_type`) is our
                    // setup, and not the user's failure.
                    Err(ProviderError::Status { error, .. })
                        if error.as_deref() == Some("invalid_grant") =>
                    {
                        attempt.failed = true;
                        return Err(Ask::Refused);
                    }
                    Err(other) => return Err(Ask::Provider(other)),
                };
                drop(attempt);
                let keep = answer
                    .expires_in
                    .map_or(DEFAULT_KEEP, Duration::from_secs)
                    .min(MAX_KEEP)
                    .saturating_sub(EARLY);
                // An ID token is believed only after the same checks as at login.
                let id_claims = match &answer.id_token {
                    Some(raw) => match self.provider.validate_id_token(raw, None).await {
                        Ok(claims) => Some(claims),
                        Err(IdTokenRejected::KeysUnavailable) => {
                            return Err(Ask::Provider(ProviderError::NotReady));
                        }
                        Err(reason) => {
                            tracing::warn!(reason = %reason, "password bridge: ID token rejected; using the access token alone");
                            None
                        }
                    },
                    None => None,
                };
                Ok::<_, Ask>(Arc::new(Bought {
                    token: answer.access_token,
                    id_claims,
                    until: Instant::now() + keep,
                }))
            })
            .await;
        match bought {
            Ok(b) => Ok(Exchanged {
                token: b.token.clone(),
                id_claims: b.id_claims.clone(),
            }),
            Err(e) => match &*e {
                Ask::Locked => Err(locked(user)),
                Ask::Refused => {
                    tracing::info!(user = %user, "password bridge: credentials refused by the provider");
                    Err(BridgeError::BadCredentials)
                }
                Ask::Provider(other) => {
                    tracing::warn!(error = %other, "password bridge: the provider could not be asked");
                    Err(BridgeError::Unavailable)
                }
            },
        }
    }
}
