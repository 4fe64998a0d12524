//! Sessions: the state a browser carries between requests, sealed so it can neither read nor
//! forge it.
//!
//! This module owns the session and pending-login models ([`Session`], [`LoginState`]), their
//! sealing (AES-256-GCM-SIV under keys derived from the configured secrets, [`seal`]) and the
//! cookies that carry them ([`SessionCookies`]: chunking, caps, expiry, login cookies, stripping
//! the gateway's cookies before a request goes upstream).
//!
//! [`refresh`] renews a session's access token with its refresh token before it expires.
//!
//! It does not decide whether a request is authenticated (that is authn's job with
//! [`Loaded`]).

mod cookies;
pub mod logout;
mod model;
pub mod refresh;
pub mod seal;

pub use cookies::{Loaded, MAX_CHUNKS, MAX_SESSION_BYTES, SessionCookies};
pub use model::{LoginState, Session};

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
}
