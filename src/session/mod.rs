//! Sessions: the state a browser carries between requests, sealed so it can neither read nor
//! forge it.
//!
//! This module owns the session and pending-login models ([`Session`], [`LoginState`]), their
//! sealing (AES-256-GCM-SIV under keys derived from the configured secrets, [`seal`]) and the
//! cookies that carry them ([`SessionCookies`]: chunking, caps, expiry, login cookies, stripping
//! the gateway's cookies before a request goes upstream).
//!
//! Where a session lives between requests is the store's business ([`SessionStore`]: the
//! cookie itself, or Redis with only a sealed id in the cookie, which sign-out can end for good,
//! rule 12). [`refresh`] renews a session's access token with its refresh token before it
//! expires.
//!
//! It does not decide whether a request is authenticated (that is authn's job with
//! [`Loaded`]).

mod cookies;
pub mod logout;
mod model;
pub mod refresh;
pub mod seal;
mod store;

pub use cookies::{Loaded, MAX_CHUNKS, MAX_SESSION_BYTES, SessionCookies};
pub use model::{LoginState, Session};
pub use store::{SessionLock, SessionStore, StoreShared};

/// Why a session could not be set up or written. Reading a cookie never fails: a cookie that does
/// not open is simply no session (rule 8), see [`Loaded`].
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("no session secret is configured")]
    NoSecret,
    #[error("session cookie settings: {0}")]
    InvalidCookieSettings(&'static str),
    /// The sealed value does not fit in the allowed cookies; the caller may drop something (the
    /// ID token, extra claims) and try again.
    #[error("the sealed value is {bytes} bytes, more than the {max} bytes its cookies can carry")]
    TooLarge { bytes: usize, max: usize },
    #[error("the session has already reached its absolute lifetime")]
    Expired,
    #[error("session encryption failed")]
    Crypto,
    #[error("the session could not be encoded")]
    Encode(#[source] serde_json::Error),
    #[error("session store settings: {0}")]
    InvalidStoreSettings(String),
    /// The store cannot be asked (Redis down): the caller answers 503 (rules 23, 36).
    #[error("the session store is unavailable")]
    Unavailable,
    /// The session was ended (signed out, ended by the provider) while this request held it.
    #[error("the session was ended meanwhile")]
    Ended,
    /// Another holder kept the session's lock for longer than the caller would wait.
    #[error("timed out waiting for the session lock")]
    LockTimeout,
}

#[cfg(test)]
pub(crate) fn tests_config() -> crate::config::SessionConfig {
    use std::time::Duration;
    crate::config::SessionConfig {
        secrets: vec![crate::config::Secret::new(vec![7; 32])],
        cookie_name: "__Host-gh".into(),
        cookie_domain: None,
        cookie_secure: true,
        same_site: crate::config::SameSite::Lax,
        lifetime: Duration::from_secs(12 * 3600),
        idle_timeout: Duration::from_secs(3600),
        login_timeout: Duration::from_secs(600),
        max_logins: 3,
        refresh_before: Duration::from_secs(60),
        store: crate::config::StoreConfig::Cookie,
    }
}
