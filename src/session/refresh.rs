//! Refresh: between authenticate and identity headers. When a session's access token has
//! expired or expires within `refresh_before`, the gateway redeems the refresh token
//! (RFC 6749 §6) before the request goes on, so people stay signed in for the session's
//! lifetime while access tokens live minutes.
//!
//! * One refresh per refresh token: concurrent requests of a session share one grant
//!   (single flight), and its outcome is kept for a grace period under the hash of the spent
//!   refresh token, so requests still carrying the old cookie (parallel browser requests; the
//!   cookie store cannot update them all at once) get the new session instead of presenting a
//!   rotated-out token.
//! * `invalid_grant` ends the session (the browser is sent to log in, an API caller gets 401).
//! * A transient failure (timeout, 5xx, keys unavailable) does not: the old access token is
//!   used while it is still valid, else 503 — and the grant is not retried before
//!   [`RETRY_AFTER_FAILURE`], so an outage is not hammered.
//! * A refreshed ID token is validated like the first one and must name the same subject
//!   (OIDC Core §12.2); its claims (groups) replace the old ones, so what the provider revokes
//!   takes effect at the next refresh. A provider may answer without an ID token (§12.2 allows
//!   it): then the claims stay as they were, unless `userinfo = true` asks the provider anew.
//! * When the provider leaves `expires_in` out, the refresh is scheduled by the `exp` of the
//!   access token (a JWT) or else of the ID token.
//!
//! Refresh tokens never leave the gateway (rule 13): they live in the sealed session only.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;

use super::Session;
use crate::authn::jwt::{TokenHash, token_hash};
use crate::config::Secret;
use crate::oidc::{IdTokenRejected, Provider, ProviderError, TokenResponse};

/// How long the outcome of a refresh answers for its spent refresh token.
pub const GRACE: Duration = Duration::from_secs(30);
/// After a transient failure, the same refresh token is not tried again before this.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(2);

/// What became of a session that was due.
#[derive(Debug)]
pub enum Refreshed {
    /// New tokens (and claims); store it.
    Renewed(Box<Session>),
    /// The provider refused the refresh token: the session is over.
    Ended,
    /// The provider could not be asked; `Session::access_expires_at` says whether the old
    /// token still serves.
    Unavailable,
}

/// Kept per spent refresh token during the grace period.
enum Outcome {
    Renewed(Box<Session>),
    Ended,
}

pub struct Refresher {
    provider: Arc<Provider>,
    refresh_before: u64,
    groups_claim: Vec<String>,
    use_userinfo: bool,
    outcomes: moka::future::Cache<TokenHash, Arc<Outcome>>,
    failures: moka::sync::Cache<TokenHash, ()>,
    grants: AtomicU64,
}

impl std::fmt::Debug for Refresher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Refresher")
            .field("refresh_before", &self.refresh_before)
            .field("grants", &self.grants())
            .finish_non_exhaustive()
    }
}

impl Refresher {
    pub fn new(
        provider: Arc<Provider>,
        refresh_before: Duration,
        groups_claim: Vec<String>,
        use_userinfo: bool,
    ) -> Self {
        Self {
            provider,
            refresh_before: refresh_before.as_secs(),
            groups_claim,
            use_userinfo,
            outcomes: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(GRACE)
                .build(),
            failures: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(RETRY_AFTER_FAILURE)
                .build(),
            grants: AtomicU64::new(0),
        }
    }

    /// Refresh grants sent to the provider by this process (tests, metrics).
    pub fn grants(&self) -> u64 {
        self.grants.load(Ordering::Relaxed)
    }

    /// Whether `session` should be refreshed before use at `now`.
    pub fn due(&self, session: &Session, now: u64) -> bool {
        session.refresh_token.is_some()
            && session
                .access_expires_at
                .is_some_and(|exp| exp <= now.saturating_add(self.refresh_before))
    }

    /// Refreshes `session` (which must be [`Refresher::due`]), sharing the grant with every
    /// concurrent request presenting the same refresh token.
    ///
    /// The work runs in a task of its own, not in the request's future: a client that goes
    /// away while the provider is answering (a closed tab, a cancelled fetch) drops its
    /// request, and with it anything the request was running. Had the grant been dropped after
    /// the provider rotated the refresh token, the new pair would be lost, the next request
    /// would present the spent token, and a provider with reuse detection would end the
    /// sign-in. In its own task the grant completes and its outcome is kept for the others.
    pub async fn refresh(self: &Arc<Self>, session: &Session) -> Refreshed {
        let this = Arc::clone(self);
        let session = session.clone();
        match tokio::spawn(async move { this.refresh_here(&session).await }).await {
            Ok(refreshed) => refreshed,
            Err(err) => {
                tracing::warn!(error = %err, "token refresh task failed");
                Refreshed::Unavailable
            }
        }
    }

    /// [`Refresher::refresh`] in the caller's own task: for callers that already run in one
    /// no request owns (the Redis store's locked refresh).
    pub async fn refresh_here(&self, session: &Session) -> Refreshed {
        let Some(refresh_token) = &session.refresh_token else {
            return Refreshed::Unavailable;
        };
        let key = token_hash(refresh_token.expose());
        if self.failures.contains_key(&key) {
            return Refreshed::Unavailable;
        }
        // A provider that does not rotate keeps the refresh token: an outcome remembered for
        // it that is no newer than this session is not an answer, ask again.
        if let Some(o) = self.outcomes.get(&key).await
            && let Outcome::Renewed(s) = &*o
            && s.access_expires_at <= session.access_expires_at
        {
            self.outcomes.invalidate(&key).await;
        }
        let outcome = self
            .outcomes
            .try_get_with(key, async {
                self.grant(session, refresh_token).await.map(Arc::new)
            })
            .await;
        match outcome {
            Ok(o) => match &*o {
                Outcome::Renewed(s) => Refreshed::Renewed(s.clone()),
                Outcome::Ended => Refreshed::Ended,
            },
            Err(e) => {
                self.failures.insert(key, ());
                tracing::warn!(user = %session.sub, error = %e, "token refresh failed; will retry");
                Refreshed::Unavailable
            }
        }
    }

    async fn grant(
        &self,
        old: &Session,
        refresh_token: &Secret<String>,
    ) -> Result<Outcome, ProviderError> {
        self.grants.fetch_add(1, Ordering::Relaxed);
        let tokens = match self.provider.refresh(refresh_token).await {
            Ok(tokens) => tokens,
            // RFC 6749 §5.2: the refresh token is invalid, expired or revoked.
            Err(ProviderError::Status { error, .. })
                if error.as_deref() == Some("invalid_grant") =>
            {
                tracing::info!(user = %old.sub, "refresh token refused by the provider; session ended");
                return Ok(Outcome::Ended);
            }
            Err(e) => return Err(e),
        };
        let mut claims = match &tokens.id_token {
            Some(raw) => match self.provider.validate_id_token(raw, None).await {
                Ok(claims) => Some(claims),
                Err(IdTokenRejected::KeysUnavailable) => return Err(ProviderError::NotReady),
                Err(reason) => {
                    tracing::warn!(user = %old.sub, reason = %reason, "refreshed ID token rejected; session ended");
                    return Ok(Outcome::Ended);
                }
            },
            None => None,
        };
        if self.use_userinfo {
            let info = self.provider.userinfo(&tokens.access_token).await?;
            let merged = claims.get_or_insert_with(|| {
                let mut base = serde_json::Map::new();
                base.insert("sub".into(), Value::String(old.sub.clone()));
                base
            });
            if info.get("sub") != merged.get("sub") {
                tracing::warn!(user = %old.sub, "userinfo after refresh names another subject; session ended");
                return Ok(Outcome::Ended);
            }
            for (k, v) in info {
                merged.entry(k).or_insert(v);
            }
        }
        Ok(
            match renewed(old, claims.as_ref(), &tokens, &self.groups_claim) {
                Some(session) => Outcome::Renewed(Box::new(session)),
                None => {
                    tracing::warn!(user = %old.sub, "refreshed tokens name another subject; session ended");
                    Outcome::Ended
                }
            },
        )
    }
}

/// The session after a refresh: new tokens, new claims when the provider sent any (same
/// subject only), everything else (id, lifetimes, `sid`) kept.
fn renewed(
    old: &Session,
    claims: Option<&serde_json::Map<String, Value>>,
    tokens: &TokenResponse,
    groups_claim: &[String],
) -> Option<Session> {
    let now = old.last_seen;
    let mut session = match claims {
        Some(claims) => {
            let fresh = Session::from_tokens(claims, tokens, groups_claim, now)?;
            if fresh.sub != old.sub {
                return None;
            }
            fresh
        }
        None => old.clone(),
    };
    session.id.clone_from(&old.id);
    session.created_at = old.created_at;
    session.last_seen = old.last_seen;
    session.access_token = Some(tokens.access_token.clone());
    session.access_expires_at = tokens.access_expires_at(crate::oidc::unix_now());
    // Without rotation the provider sends no new refresh token: the old one stays valid.
    session.refresh_token = tokens
        .refresh_token
        .clone()
        .or_else(|| old.refresh_token.clone());
    if tokens.id_token.is_none() {
        session.id_token.clone_from(&old.id_token);
    }
    if session.sid.is_none() {
        session.sid.clone_from(&old.sid);
    }
    Some(session)
}
