//! The browser login flow (authorization code + PKCE, OpenID Connect Core §3.1): `/oauth2/start`
//! sends a person to the provider, `/oauth2/callback` brings them back with a fresh session,
//! `/oauth2/sign_out` ends it (and the provider's, when it supports RP-initiated logout), and
//! `/oauth2/userinfo` shows the session's identity. Provider calls go through [`Provider`];
//! sessions through the [`SessionStore`] (cookie or Redis).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::header::SET_COOKIE;
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use serde_json::{Map, json};
use url::Url;

use super::pages::{self, escape};
use super::redirect::safe_return_to;
use crate::authn::answer::STORE;
use crate::authz::{Authorizer, Decision};
use crate::body::Body;
use crate::config::Config;
use crate::identity::Identity;
use crate::oidc::logout_token::LogoutRejected;
use crate::oidc::unix_now as now;
use crate::oidc::{self, Provider};
use crate::session::logout::Logouts;
use crate::session::refresh::{Refreshed, Refresher};
use crate::session::{Loaded, LoginState, Session, SessionError, SessionStore, StoreShared};

/// States already redeemed at the callback, remembered until their login could have expired:
/// a state is single-use even when an attacker replays the browser's login cookie with it.
/// Shared by every worker.
#[derive(Debug, Default)]
pub struct UsedStates {
    seen: Mutex<HashMap<String, u64>>,
}

impl UsedStates {
    const MAX: usize = 100_000;

    /// Records `state`; false when it was used already.
    fn redeem(&self, state: &str, until: u64, now: u64) -> bool {
        let Ok(mut seen) = self.seen.lock() else {
            return false;
        };
        if seen.len() >= Self::MAX {
            seen.retain(|_, expiry| *expiry > now);
        }
        if seen.len() >= Self::MAX {
            // Still full of live entries: refuse rather than forget one (fail closed).
            return false;
        }
        seen.insert(state.to_owned(), until).is_none()
    }
}

/// What the login flow needs, per worker; the provider and the used-state memory are shared.
pub struct Login {
    provider: Arc<Provider>,
    refresher: Arc<Refresher>,
    logouts: Arc<Logouts>,
    /// Shared with the refresh tasks, which outlive a request that goes away.
    store: Arc<SessionStore>,
    used: Arc<UsedStates>,
    public: Url,
    prefix: String,
    /// Named in the challenge of a 401 (`[bearer] realm` when there is one).
    realm: String,
    groups_claim: Vec<String>,
    use_userinfo: bool,
    login_timeout: Duration,
}

/// The outcome of looking for a session on a request.
pub enum Authn {
    Anonymous {
        /// Set-Cookie values that end a session the request carried but that has expired.
        clear: Vec<HeaderValue>,
    },
    Session {
        identity: Identity,
        /// Cookies to send back (the session re-sealed with a new last-seen time, or cleared).
        set_cookies: Vec<HeaderValue>,
    },
    /// 503: the session's access token has expired and the provider cannot refresh it now
    /// (`"token refresh"`), or the session store cannot be asked (`"session store"`, Redis
    /// down; never anonymous, rule 36).
    Unavailable(&'static str),
}

/// Longest a replica holds a session's refresh lock (the grant's timeouts are shorter); a
/// replica that dies holding it delays the others this long at most.
const REFRESH_LOCK_TTL: Duration = Duration::from_secs(15);

impl Login {
    pub fn new(
        config: &Config,
        provider: Arc<Provider>,
        refresher: Arc<Refresher>,
        logouts: Arc<Logouts>,
        used: Arc<UsedStates>,
        stores: Arc<StoreShared>,
    ) -> Result<Option<Self>, crate::session::SessionError> {
        let (Some(provider_config), Some(session)) = (&config.provider, &config.session) else {
            return Ok(None);
        };
        let public = config
            .server
            .public_url
            .clone()
            .unwrap_or_else(|| provider_config.redirect_url.clone());
        Ok(Some(Self {
            provider,
            refresher,
            logouts,
            store: Arc::new(SessionStore::new(session, stores)?),
            used,
            public,
            prefix: config.server.proxy_prefix.clone(),
            realm: config.realm().to_owned(),
            groups_claim: config.authorization.groups_claim.clone(),
            use_userinfo: provider_config.use_userinfo,
            login_timeout: session.login_timeout,
        }))
    }

    /// The gateway's own cookies never reach the app (the app's do, untouched).
    pub fn strip_cookies(&self, headers: &mut HeaderMap) {
        self.store.cookies().strip_own_cookies(headers);
    }

    /// Authenticate from the session cookie. An expired session is cleared and is no session;
    /// a store that cannot be asked is [`Authn::Unavailable`]. An access token about to expire
    /// is refreshed first (see [`crate::session::refresh`]).
    pub async fn authenticate(&self, headers: &HeaderMap) -> Authn {
        let now = now();
        let loaded = match self.store.load(headers, now).await {
            Ok(loaded) => loaded,
            Err(_) => return Authn::Unavailable(STORE),
        };
        match loaded {
            Loaded::None => Authn::Anonymous { clear: Vec::new() },
            Loaded::Expired => Authn::Anonymous {
                clear: self.store.cookies().clear(headers),
            },
            Loaded::Valid {
                mut session,
                mut touch,
            } => {
                // Ended by the provider (back-channel logout): no session, and say so.
                if self.logouts.ended(&session) {
                    return Authn::Anonymous {
                        clear: self.store.cookies().clear(headers),
                    };
                }
                if self.refresher.due(&session, now) {
                    let refreshed = if self.store.is_server_side() {
                        match Box::pin(self.refresh_shared(&session, now)).await {
                            Ok(refreshed) => refreshed,
                            Err(SessionError::Unavailable) => return Authn::Unavailable(STORE),
                            // Another replica held the lock too long: as if the provider
                            // could not be asked.
                            Err(_) => Refreshed::Unavailable,
                        }
                    } else {
                        Box::pin(self.refresher.refresh(&session)).await
                    };
                    match refreshed {
                        Refreshed::Renewed(renewed) => {
                            session = *renewed;
                            // The shared path stored it already, under the lock.
                            touch = !self.store.is_server_side();
                        }
                        Refreshed::Ended => {
                            return Authn::Anonymous {
                                clear: self.store.cookies().clear(headers),
                            };
                        }
                        // The old token serves while it is valid; past that, fail closed.
                        Refreshed::Unavailable
                            if session.access_expires_at.is_some_and(|exp| exp <= now) =>
                        {
                            return Authn::Unavailable("token refresh");
                        }
                        Refreshed::Unavailable => {}
                    }
                }
                let mut set_cookies = Vec::new();
                if touch {
                    session.last_seen = now;
                    match self.store.save(&session, headers).await {
                        Ok(cookies) => set_cookies = cookies,
                        // Signed out elsewhere between the read and this write.
                        Err(SessionError::Ended) => {
                            return Authn::Anonymous {
                                clear: self.store.cookies().clear(headers),
                            };
                        }
                        Err(SessionError::Unavailable) => return Authn::Unavailable(STORE),
                        Err(err) => {
                            tracing::warn!(error = %err, "could not refresh the session cookie")
                        }
                    }
                }
                Authn::Session {
                    identity: identity_of(session),
                    set_cookies,
                }
            }
        }
    }

    /// Refresh with a server-side store: one grant per session across every replica. Takes
    /// the session's lock, re-reads the session under it (another replica may have refreshed
    /// it a moment ago, spending the refresh token this request carries), refreshes only if it
    /// is still due, and stores the result before the lock is released.
    ///
    /// In a task of its own (see [`Refresher::refresh`]): a request dropped between the grant
    /// and the write would leave the new pair in no store, and every replica would present
    /// the spent refresh token next.
    async fn refresh_shared(&self, session: &Session, now: u64) -> Result<Refreshed, SessionError> {
        let store = Arc::clone(&self.store);
        let refresher = Arc::clone(&self.refresher);
        let session = session.clone();
        tokio::spawn(async move { refresh_locked(&store, &refresher, &session, now).await })
            .await
            .unwrap_or_else(|err| {
                tracing::warn!(error = %err, "token refresh task failed");
                Ok(Refreshed::Unavailable)
            })
    }

    /// Starts a login that returns to `return_to` (already validated): a fresh state, nonce
    /// and PKCE verifier sealed in a login cookie keyed by state, so several tabs can log in
    /// at once, and a redirect to the provider.
    pub fn start(&self, headers: &HeaderMap, return_to: &str) -> Response<Body> {
        if !self.provider.ready() {
            return unavailable();
        }
        let state = oidc::random_token(32);
        let nonce = oidc::random_token(32);
        let (verifier, challenge) = oidc::pkce_pair();
        let url = match self.provider.authorization_url(&state, &nonce, &challenge) {
            Ok(url) => url,
            Err(err) => {
                tracing::warn!(error = %err, "cannot build the authorization request");
                return unavailable();
            }
        };
        let login = LoginState {
            state,
            verifier,
            nonce,
            return_to: return_to.to_owned(),
            created_at: now(),
        };
        match self.store.cookies().start_login(&login, headers, now()) {
            Ok(cookies) => with_cookies(pages::redirect(url.as_str()), cookies),
            Err(err) => {
                tracing::warn!(error = %err, "cannot store the login state");
                pages::page(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Sign-in failed",
                    "The sign-in could not be started.",
                    None,
                )
            }
        }
    }

    /// `/oauth2/start?rd=…`
    pub fn start_endpoint(&self, headers: &HeaderMap, query: Option<&str>) -> Response<Body> {
        let Ok(params) = single_params(query, &["rd"]) else {
            return repeated_page();
        };
        let return_to = params
            .get("rd")
            .and_then(|rd| safe_return_to(rd, &self.public))
            .unwrap_or_else(|| "/".to_owned());
        self.start(headers, &return_to)
    }

    /// `/oauth2/callback`: everything the provider sends back is checked before a session
    /// exists (rules 2–5, 30, 35).
    pub async fn callback(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
        authorizer: &Authorizer,
    ) -> Response<Body> {
        let Ok(params) = single_params(
            query,
            &["state", "code", "iss", "error", "error_description"],
        ) else {
            return repeated_page();
        };
        let Some(state) = params.get("state") else {
            return bad_login(
                "The sign-in response had no state. Please start again.",
                &self.prefix,
            );
        };
        let now = now();
        let (login, mut set_cookies) = self.store.cookies().take_login(state, headers, now);
        let Some(login) = login else {
            return with_cookies(
                bad_login(
                    "This sign-in link has expired or was already used. Please start again.",
                    &self.prefix,
                ),
                set_cookies,
            );
        };
        if !self
            .used
            .redeem(state, now + self.login_timeout.as_secs(), now)
        {
            return with_cookies(
                bad_login(
                    "This sign-in link was already used. Please start again.",
                    &self.prefix,
                ),
                set_cookies,
            );
        }
        if let Some(error) = params.get("error") {
            tracing::info!(error = %error, "the provider refused the sign-in");
            let message = format!(
                "The identity provider did not sign you in ({}).",
                escape(error)
            );
            return with_cookies(
                pages::page(
                    StatusCode::FORBIDDEN,
                    "Sign-in failed",
                    &message,
                    Some((&format!("{}/start", self.prefix), "Try again")),
                ),
                set_cookies,
            );
        }
        if self.provider.iss_parameter_required()
            && params.get("iss") != Some(&self.provider.issuer())
        {
            tracing::warn!("callback iss does not match the issuer (mix-up defence)");
            return with_cookies(
                bad_login(
                    "The sign-in response came from an unexpected issuer.",
                    &self.prefix,
                ),
                set_cookies,
            );
        }
        let Some(code) = params.get("code") else {
            return with_cookies(
                bad_login("The sign-in response had no code.", &self.prefix),
                set_cookies,
            );
        };
        let tokens = match self.provider.exchange_code(code, &login.verifier).await {
            Ok(tokens) => tokens,
            // The provider refusing the code is this sign-in's failure; the provider being
            // unreachable or failing is an outage (rule 36): 503, try again.
            Err(err @ oidc::ProviderError::Status { status, .. })
                if (400..500).contains(&status) =>
            {
                tracing::warn!(error = %err, "code exchange refused");
                return with_cookies(
                    bad_login(
                        "The identity provider did not accept this sign-in.",
                        &self.prefix,
                    ),
                    set_cookies,
                );
            }
            Err(err) => {
                tracing::warn!(error = %err, "code exchange failed");
                return with_cookies(unavailable(), set_cookies);
            }
        };
        let mut claims = Map::new();
        // A plain OAuth 2.0 provider (explicit endpoints, no JWKS) gives no keys to verify an
        // ID token with: then nothing of it is believed and identity comes from userinfo.
        let verifiable = self
            .provider
            .metadata()
            .is_some_and(|m| m.jwks_uri.is_some());
        if let Some(id_token) = tokens.id_token.as_ref().filter(|_| verifiable) {
            match self
                .provider
                .validate_id_token(id_token, Some(&login.nonce))
                .await
            {
                Ok(valid) => claims = valid,
                // Rule 36: keys that cannot be fetched are the provider's outage, not a bad
                // token: fail closed with 503 and let the person retry.
                Err(oidc::IdTokenRejected::KeysUnavailable) => {
                    tracing::warn!("ID token keys unavailable");
                    return with_cookies(unavailable(), set_cookies);
                }
                Err(reason) => {
                    tracing::warn!(reason = %reason, "ID token rejected");
                    return with_cookies(
                        bad_login(
                            "The identity provider's answer could not be verified.",
                            &self.prefix,
                        ),
                        set_cookies,
                    );
                }
            }
        } else if !self.use_userinfo || (verifiable && self.openid_scope()) {
            // An OpenID provider answers scope `openid` with an ID token; without one neither
            // the nonce (rule 3) nor the token (rule 5) can be checked, userinfo or not.
            return with_cookies(
                bad_login("The identity provider sent no ID token.", &self.prefix),
                set_cookies,
            );
        }
        if self.use_userinfo {
            match self.provider.userinfo(&tokens.access_token).await {
                Ok(info) => {
                    let same_subject = claims
                        .get("sub")
                        .is_none_or(|sub| info.get("sub") == Some(sub));
                    if !same_subject {
                        return with_cookies(
                            bad_login("The identity provider's answers disagree.", &self.prefix),
                            set_cookies,
                        );
                    }
                    for (k, v) in info {
                        claims.entry(k).or_insert(v);
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, "userinfo failed");
                    return with_cookies(unavailable(), set_cookies);
                }
            }
        }
        let Some(mut session) = Session::from_tokens(&claims, &tokens, &self.groups_claim, now)
        else {
            return with_cookies(
                bad_login("The identity provider sent no subject.", &self.prefix),
                set_cookies,
            );
        };
        if !verifiable {
            // Never kept, never sent back as a logout hint: nobody checked it.
            session.id_token = None;
        }
        // As oauth2-proxy by default: an address the provider calls unverified gets no login
        // even without an email rule, since the app may take X-Forwarded-Email as proof of it.
        if authorizer.requires_verified_email()
            && claims.contains_key("email")
            && crate::identity::email_unverified(&claims)
        {
            tracing::info!(user = %session.sub, "sign-in refused: email address not verified");
            return with_cookies(
                forbidden_page("email address not verified", &self.prefix),
                set_cookies,
            );
        }
        if let Decision::Deny(reason) = authorizer.admit(&identity_of(session.clone())) {
            tracing::info!(user = %session.sub, reason = %reason, "sign-in refused by the authorization rules");
            return with_cookies(forbidden_page(&reason, &self.prefix), set_cookies);
        }
        // A fresh session replaces whatever the browser carried (rule 30).
        let stored = match self.store.create(&session, headers).await {
            Err(SessionError::TooLarge { .. }) => {
                let mut slim = session.clone();
                slim.id_token = None;
                self.store.create(&slim, headers).await
            }
            other => other,
        };
        match stored {
            Ok(cookies) => set_cookies.extend(cookies),
            Err(SessionError::Unavailable) => {
                return with_cookies(store_unavailable(), set_cookies);
            }
            Err(err) => {
                tracing::warn!(error = %err, "session does not fit in cookies");
                return with_cookies(
                    pages::page(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "Sign-in failed",
                        "Your session is too large to store.",
                        None,
                    ),
                    set_cookies,
                );
            }
        }
        tracing::info!(user = %session.sub, "signed in");
        let return_to =
            safe_return_to(&login.return_to, &self.public).unwrap_or_else(|| "/".to_owned());
        with_cookies(pages::redirect(&return_to), set_cookies)
    }

    /// `/oauth2/sign_out?rd=…`: ends the session (server-side too with Redis, so a copy of
    /// the cookie opens nothing, rule 12) and clears its cookies, then RP-initiated logout at
    /// the provider when it has an end-session endpoint. With Redis down nothing is cleared:
    /// 503, and the person can try again.
    pub async fn sign_out(&self, headers: &HeaderMap, query: Option<&str>) -> Response<Body> {
        let params = single_params(query, &["rd"]).unwrap_or_default();
        let (session, clear) = match self.store.delete(headers, now()).await {
            Ok(ended) => ended,
            Err(err) => {
                tracing::warn!(error = %err, "sign-out could not end the session");
                return store_unavailable();
            }
        };
        let id_token = session.and_then(|s| s.id_token.map(|t| t.expose().clone()));
        let resp = match self.provider.end_session_url(id_token.as_deref(), None) {
            Some(url) => pages::redirect(url.as_str()),
            None => match params
                .get("rd")
                .and_then(|rd| safe_return_to(rd, &self.public))
            {
                Some(to) => pages::redirect(&to),
                None => pages::page(
                    StatusCode::OK,
                    "Signed out",
                    "You are signed out.",
                    Some(("/", "Continue")),
                ),
            },
        };
        with_cookies(resp, clear)
    }

    /// `/oauth2/userinfo`: the session's identity as JSON, 401 without one.
    pub async fn userinfo(&self, headers: &HeaderMap) -> Response<Body> {
        match self.authenticate(headers).await {
            Authn::Session {
                identity,
                set_cookies,
            } => with_cookies(
                pages::json(
                    StatusCode::OK,
                    &json!({
                        "user": identity.user,
                        "email": identity.email,
                        "preferred_username": identity.preferred_username,
                        "groups": identity.groups,
                    }),
                ),
                set_cookies,
            ),
            Authn::Anonymous { .. } => {
                crate::authn::answer::missing(&self.realm, false, Some(&self.login_url()))
            }
            // A JSON endpoint: JSON, whatever is down.
            Authn::Unavailable(what) => crate::authn::answer::unavailable(what, false),
        }
    }

    /// The login asks for scope `openid`: an OpenID Connect login, which has an ID token.
    fn openid_scope(&self) -> bool {
        self.provider.config().scopes.iter().any(|s| s == "openid")
    }

    /// Where a person starts a login: named to scripts that get a 401.
    pub fn login_url(&self) -> String {
        format!("{}/start", self.prefix)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `POST /oauth2/backchannel_logout` (OpenID Connect Back-Channel Logout 1.0 §2.5): the
    /// provider says a session or a user is logged out. 200 when the logout is recorded, 400
    /// with the reason otherwise (§2.8), 503 when the provider's keys cannot be fetched.
    pub async fn backchannel_logout<B>(&self, req: http::Request<B>) -> Response<Body>
    where
        B: http_body::Body,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        use http_body_util::{BodyExt, Limited};
        let bad = |why: &str| {
            tracing::warn!(reason = why, "back-channel logout refused");
            let mut resp = pages::json(
                StatusCode::BAD_REQUEST,
                &json!({"error": "invalid_request", "error_description": why}),
            );
            resp.headers_mut().insert(
                http::header::CACHE_CONTROL,
                HeaderValue::from_static("no-store"),
            );
            resp
        };
        if req.method() != http::Method::POST {
            return bad("use POST");
        }
        let form = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        if !form {
            return bad("the body must be application/x-www-form-urlencoded");
        }
        let Ok(body) = Limited::new(req.into_body(), 64 * 1024).collect().await else {
            return bad("the body is too large or broken");
        };
        let body = body.to_bytes();
        let Ok(text) = std::str::from_utf8(&body) else {
            return bad("the body is not text");
        };
        let Ok(params) = single_params(Some(text), &["logout_token"]) else {
            return bad("logout_token is repeated");
        };
        let Some(token) = params.get("logout_token") else {
            return bad("logout_token is missing");
        };
        let logout = match self.provider.validate_logout_token(token).await {
            Ok(logout) => logout,
            Err(LogoutRejected::KeysUnavailable) => return unavailable(),
            Err(LogoutRejected::Invalid(why)) => return bad(why),
        };
        // Single use, checked before anything is recorded: with Redis across every replica.
        match self
            .store
            .use_once(&logout.jti, crate::oidc::logout_token::JTI_MEMORY)
            .await
        {
            Ok(true) => {}
            Ok(false) => return bad("logout_token was already used"),
            Err(err) => {
                tracing::warn!(error = %err, "back-channel logout could not be checked for replay");
                return store_unavailable();
            }
        }
        if !self.logouts.record(&logout, now()) {
            return bad("logout_token was already used");
        }
        // With Redis the sessions themselves go, on every replica. A store that cannot be
        // asked is a 503: the provider may retry (§2.8), and this replica refuses them already.
        if let Err(err) = self
            .store
            .end_sessions(logout.sub.as_deref(), logout.sid.as_deref())
            .await
        {
            tracing::warn!(error = %err, "back-channel logout could not end the stored sessions");
            // The provider's retry of this very token must not be refused as a replay.
            self.logouts.allow_retry(&logout);
            if let Err(err) = self.store.forget_use(&logout.jti).await {
                // Then the retry is refused as a replay until the jti's memory ends.
                tracing::warn!(error = %err, "a failed logout's jti could not be released");
            }
            return store_unavailable();
        }
        tracing::info!(
            sid = logout.sid.as_deref().unwrap_or("-"),
            user = logout.sub.as_deref().unwrap_or("-"),
            "back-channel logout: sessions ended"
        );
        let mut resp = Response::new(Body::empty());
        resp.headers_mut().insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        );
        resp
    }
}

/// The identity a session carries; takes the session so the request path copies nothing.
fn identity_of(session: Session) -> Identity {
    Identity {
        user: session.sub,
        email: session.email,
        email_verified: session.email_verified,
        preferred_username: session.preferred_username,
        groups: session.groups,
        client_id: None,
        scopes: Vec::new(),
        claims: session.claims.into(),
        access_token: session.access_token,
    }
}

/// Parses the query, refusing any of `names` that appears more than once (rule 35: never
/// "last one wins").
/// A parameter that must appear once appeared more often.
#[derive(Debug)]
struct RepeatedParameter;

fn repeated_page() -> Response<Body> {
    pages::page(
        StatusCode::BAD_REQUEST,
        "Sign-in failed",
        "The request repeated a parameter that must appear once.",
        None,
    )
}

fn single_params(
    query: Option<&str>,
    names: &[&str],
) -> Result<HashMap<String, String>, RepeatedParameter> {
    let mut out = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if !names.contains(&k.as_ref()) {
            continue;
        }
        if out.insert(k.into_owned(), v.into_owned()).is_some() {
            return Err(RepeatedParameter);
        }
    }
    Ok(out)
}

pub fn with_cookies(mut resp: Response<Body>, cookies: Vec<HeaderValue>) -> Response<Body> {
    for cookie in cookies {
        resp.headers_mut().append(SET_COOKIE, cookie);
    }
    resp
}

fn bad_login(message: &str, prefix: &str) -> Response<Body> {
    pages::page(
        StatusCode::BAD_REQUEST,
        "Sign-in failed",
        message,
        Some((&format!("{prefix}/start"), "Sign in again")),
    )
}

pub fn forbidden_page(reason: &str, prefix: &str) -> Response<Body> {
    pages::page(
        StatusCode::FORBIDDEN,
        "You are not allowed here",
        &format!(
            "You are signed in, but this page is not for you ({}). Ask the people who run this \
             site for access, or sign in as someone else.",
            escape(reason)
        ),
        Some((&format!("{prefix}/sign_out"), "Sign out")),
    )
}

/// The session store (Redis) cannot be asked: 503 with `Retry-After`; the store has logged the
/// outage once.
pub fn store_unavailable() -> Response<Body> {
    crate::authn::answer::unavailable_page(STORE)
}

/// The identity provider cannot be asked: 503 with `Retry-After`.
pub fn unavailable() -> Response<Body> {
    crate::authn::answer::unavailable_page("identity provider")
}

/// [`Login::refresh_shared`]'s work, under the session's lock.
async fn refresh_locked(
    store: &SessionStore,
    refresher: &Refresher,
    session: &Session,
    now: u64,
) -> Result<Refreshed, SessionError> {
    let lock = store.lock(&session.id, REFRESH_LOCK_TTL).await?;
    let outcome = async {
        let current = match store.reload(&session.id, now).await? {
            Some(Loaded::Valid { session, .. }) => session,
            Some(Loaded::None | Loaded::Expired) => return Ok(Refreshed::Ended),
            None => session.clone(),
        };
        if !refresher.due(&current, now) {
            return Ok(Refreshed::Renewed(Box::new(current)));
        }
        let refreshed = refresher.refresh_here(&current).await;
        match &refreshed {
            Refreshed::Renewed(renewed) => {
                let mut stored = (**renewed).clone();
                stored.last_seen = now;
                store.save(&stored, &HeaderMap::new()).await?;
                return Ok(Refreshed::Renewed(Box::new(stored)));
            }
            // The provider refused the refresh token: end the session for every replica
            // and every copy of the cookie, which would otherwise present it again.
            Refreshed::Ended => {
                if let Err(err) = store.remove(&current).await {
                    tracing::warn!(error = %err, "an ended session could not be deleted");
                }
            }
            _ => {}
        }
        Ok(refreshed)
    }
    .await;
    // A failed release only delays the next refresh by the lock's TTL.
    let _ = store.unlock(lock).await;
    match outcome {
        Err(SessionError::Ended) => Ok(Refreshed::Ended),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_state_or_code_parameters_are_refused() {
        assert!(single_params(Some("state=a&state=b&code=c"), &["state", "code"]).is_err());
        assert!(single_params(Some("state=a&code=c&code=d"), &["state", "code"]).is_err());
        let ok = single_params(Some("state=a&code=c&other=1&other=2"), &["state", "code"]).unwrap();
        assert_eq!(ok["state"], "a");
    }

    #[test]
    fn a_state_is_redeemed_once() {
        let used = UsedStates::default();
        assert!(used.redeem("s1", 100, 10));
        assert!(!used.redeem("s1", 100, 10));
        assert!(used.redeem("s2", 100, 10));
    }
}
