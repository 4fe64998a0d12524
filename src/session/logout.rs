//! Logout everywhere, in this process: what OpenID Connect Back-Channel Logout told the
//! gateway. A logout token names a provider session (`sid`) or a user (`sub`); every gateway
//! session with that `sid`, or of that user created before the logout, is refused from then on
//! (and its cookie cleared). Entries live as long as a session can, so none outlives the
//! sessions it ends. Logout tokens are single use: their `jti` is remembered for as long as
//! the token could be accepted (with Redis also there, for every replica).
//!
//! With the cookie store this memory is per process: a logout reaches the replica the provider
//! called and no other, and is forgotten at restart — a cookie session cannot be deleted
//! because it lives in the browser. The Redis store ends the sessions themselves, on every
//! replica.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::oidc::logout_token::LogoutRequest;

use super::Session;

#[derive(Debug)]
pub struct Logouts {
    /// `sid` → when it was logged out.
    by_sid: moka::sync::Cache<String, u64>,
    /// `sub` → when the user was logged out everywhere.
    by_sub: moka::sync::Cache<String, u64>,
    jtis: moka::sync::Cache<String, ()>,
    /// Set at the first logout: until then the request path skips the two lookups (shared
    /// caches, touched by every worker on every session request otherwise).
    any: AtomicBool,
}

impl Logouts {
    /// `lifetime`: the sessions' absolute lifetime, the longest a logout must be remembered.
    pub fn new(lifetime: Duration) -> Self {
        let build = || {
            moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(lifetime)
                .build()
        };
        Self {
            by_sid: build(),
            by_sub: build(),
            jtis: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(crate::oidc::logout_token::JTI_MEMORY)
                .build(),
            any: AtomicBool::new(false),
        }
    }

    /// Records a logout at `now`; false when its `jti` was seen before (a replay).
    pub fn record(&self, logout: &LogoutRequest, now: u64) -> bool {
        if !self.jtis.entry(logout.jti.clone()).or_insert(()).is_fresh() {
            return false;
        }
        match (&logout.sid, &logout.sub) {
            // With both, the sid is the one session meant (§2.4: sub identifies the user).
            (Some(sid), _) => self.by_sid.insert(sid.clone(), now),
            (None, Some(sub)) => self.by_sub.insert(sub.clone(), now),
            (None, None) => {}
        }
        self.any.store(true, Ordering::Release);
        true
    }

    /// Forgets a logout token's `jti` so that the provider's retry is accepted (after a
    /// failure to end the stored sessions); what was recorded for its `sid`/`sub` stays.
    pub fn allow_retry(&self, logout: &LogoutRequest) {
        self.jtis.invalidate(&logout.jti);
    }

    /// Whether `session` was ended by a logout.
    pub fn ended(&self, session: &Session) -> bool {
        if !self.any.load(Ordering::Acquire) {
            return false;
        }
        if session
            .sid
            .as_ref()
            .is_some_and(|sid| self.by_sid.contains_key(sid))
        {
            return true;
        }
        self.by_sub
            .get(&session.sub)
            .is_some_and(|at| session.created_at <= at)
    }
}
