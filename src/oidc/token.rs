//! Talking to the provider: the token endpoint (code exchange, refresh) with the configured
//! client authentication (RFC 6749 §2.3, OIDC Core §9), and the userinfo endpoint.
//!
//! Tokens come back as [`Secret`]s so they never print; an OAuth error answer becomes
//! [`ProviderError::Status`] with its `error` code (`invalid_grant` …). Validating the ID token
//! is [`super::id_token`]'s job, not this module's.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use url::Url;

use super::http::{Auth, HttpClient, ProviderError, loggable};
use crate::config::{ClientAuth, Secret};

/// `client_assertion_type` for `private_key_jwt` (RFC 7523 §2.2).
pub const JWT_BEARER_ASSERTION: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Lifetime of a `private_key_jwt` assertion.
const ASSERTION_TTL_SECS: u64 = 60;

/// A successful token endpoint answer (RFC 6749 §5.1).
pub struct TokenResponse {
    pub access_token: Secret<String>,
    pub token_type: String,
    pub expires_in: Option<u64>,
    pub refresh_token: Option<Secret<String>>,
    /// Raw; validate with [`super::Provider::validate_id_token`] before trusting it.
    pub id_token: Option<String>,
    pub scope: Option<String>,
}

impl TokenResponse {
    /// When the access token expires, as a Unix time: `now + expires_in`, or, when the
    /// provider left `expires_in` out (RFC 6749 §5.1 only recommends it), the `exp` of the
    /// access token when it is a JWT, else of the ID token. Only to schedule the refresh: the
    /// token is not trusted for it. `None` when nothing tells, and then it is never refreshed
    /// early (it is used until the upstream refuses it).
    pub fn access_expires_at(&self, now: u64) -> Option<u64> {
        if let Some(seconds) = self.expires_in {
            return Some(now.saturating_add(seconds));
        }
        jwt_exp(self.access_token.expose()).or_else(|| self.id_token.as_deref().and_then(jwt_exp))
    }
}

/// The `exp` of a compact JWS, read without checking the signature (the token is our own,
/// fresh from the token endpoint).
fn jwt_exp(token: &str) -> Option<u64> {
    let jws = super::jws::Jws::parse(token, token.len()).ok()?;
    super::jws::number(&jws.claims, "exp").ok().flatten()
}

impl fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenResponse")
            .field("access_token", &self.access_token)
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .field("refresh_token", &self.refresh_token)
            .field("id_token", &self.id_token.as_ref().map(|_| "[redacted]"))
            .field("scope", &self.scope)
            .finish()
    }
}

#[derive(Deserialize)]
struct RawTokenResponse {
    access_token: String,
    token_type: String,
    #[serde(default)]
    expires_in: Option<Value>,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    id_token: Option<String>,
    #[serde(default)]
    scope: Option<String>,
}

/// The client credentials, prepared once at start so a bad key is found before any login.
pub enum ClientCredentials {
    /// The `Authorization: Basic` value (without the scheme).
    Basic(Secret<String>),
    Post(Secret<String>),
    PrivateKeyJwt {
        key: EncodingKey,
        alg: Algorithm,
        kid: Option<String>,
    },
    None,
}

impl fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Basic(_) => "client_secret_basic",
            Self::Post(_) => "client_secret_post",
            Self::PrivateKeyJwt { .. } => "private_key_jwt",
            Self::None => "none",
        })
    }
}

impl ClientCredentials {
    pub fn new(client_id: &str, auth: &ClientAuth) -> Result<Self, ProviderError> {
        Ok(match auth {
            ClientAuth::SecretBasic(secret) => {
                // RFC 6749 §2.3.1: both parts form-urlencoded before Basic encoding.
                let pair = format!(
                    "{}:{}",
                    form_encode(client_id),
                    form_encode(secret.expose())
                );
                Self::Basic(Secret::new(STANDARD.encode(pair)))
            }
            ClientAuth::SecretPost(secret) => Self::Post(secret.clone()),
            ClientAuth::PrivateKeyJwt { key_pem, alg, kid } => {
                use Algorithm::*;
                let pem = key_pem.expose();
                let key = match alg {
                    RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => EncodingKey::from_rsa_pem(pem),
                    ES256 | ES384 => EncodingKey::from_ec_pem(pem),
                    EdDSA => EncodingKey::from_ed_pem(pem),
                    HS256 | HS384 | HS512 => {
                        return Err(ProviderError::ClientAuth {
                            reason: "private_key_alg must be an asymmetric algorithm".to_owned(),
                        });
                    }
                }
                .map_err(|e| ProviderError::ClientAuth {
                    reason: format!("private_key_file does not hold a {alg:?} key: {e}"),
                })?;
                Self::PrivateKeyJwt {
                    key,
                    alg: *alg,
                    kid: kid.clone(),
                }
            }
            ClientAuth::None => Self::None,
        })
    }
}

/// `application/x-www-form-urlencoded` encoding of one value.
fn form_encode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// The claims of a `private_key_jwt` assertion (RFC 7523 §3, OIDC Core §9).
#[derive(Debug, Serialize, Deserialize)]
pub struct AssertionClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub jti: String,
    pub iat: u64,
    pub exp: u64,
}

/// Signs a client assertion for `audience` (the token endpoint).
pub fn client_assertion(
    client_id: &str,
    audience: &Url,
    key: &EncodingKey,
    alg: Algorithm,
    kid: Option<&str>,
) -> Result<String, ProviderError> {
    let iat = super::unix_now();
    let claims = AssertionClaims {
        iss: client_id.to_owned(),
        sub: client_id.to_owned(),
        aud: audience.as_str().to_owned(),
        // Single use: providers may remember jti values to refuse replays.
        jti: super::random_token(16),
        iat,
        exp: iat + ASSERTION_TTL_SECS,
    };
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, &claims, key).map_err(|e| ProviderError::ClientAuth {
        reason: format!("cannot sign the client assertion: {e}"),
    })
}

/// One token endpoint with the client's identity and credentials.
#[derive(Debug, Clone, Copy)]
pub struct TokenCall<'a> {
    pub http: &'a HttpClient,
    pub endpoint: &'a Url,
    pub client_id: &'a str,
    pub credentials: &'a ClientCredentials,
}

impl TokenCall<'_> {
    /// POSTs `fields` to the endpoint with the client's authentication (RFC 6749 §2.3; the
    /// same for introspection, RFC 7662 §2.1) and decodes the JSON answer.
    pub async fn post_json<T: serde::de::DeserializeOwned>(
        &self,
        fields: &[(&str, &str)],
    ) -> Result<T, ProviderError> {
        let mut form: Vec<(&str, &str)> = fields.to_vec();
        let assertion;
        let auth = match self.credentials {
            ClientCredentials::Basic(header) => Auth::Basic(header),
            ClientCredentials::Post(secret) => {
                form.push(("client_id", self.client_id));
                form.push(("client_secret", secret.expose()));
                Auth::None
            }
            ClientCredentials::PrivateKeyJwt { key, alg, kid } => {
                assertion =
                    client_assertion(self.client_id, self.endpoint, key, *alg, kid.as_deref())?;
                form.push(("client_id", self.client_id));
                form.push(("client_assertion_type", JWT_BEARER_ASSERTION));
                form.push(("client_assertion", &assertion));
                Auth::None
            }
            ClientCredentials::None => {
                form.push(("client_id", self.client_id));
                Auth::None
            }
        };
        self.http.post_form(self.endpoint, &form, auth).await
    }

    async fn post(&self, grant: &[(&str, &str)]) -> Result<TokenResponse, ProviderError> {
        let raw: RawTokenResponse = self.post_json(grant).await?;
        let bad = |reason: &str| ProviderError::BadResponse {
            url: loggable(self.endpoint),
            reason: reason.to_owned(),
        };
        // RFC 6749 §7.1: we only know how to use bearer tokens (compared case-insensitively).
        if !raw.token_type.eq_ignore_ascii_case("bearer") {
            return Err(bad("token_type is not Bearer"));
        }
        if raw.access_token.is_empty() {
            return Err(bad("access_token is empty"));
        }
        let expires_in = match raw.expires_in {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => Some(
                n.as_u64()
                    .ok_or_else(|| bad("expires_in is not a count of seconds"))?,
            ),
            // Some providers send the number as a string.
            Some(Value::String(s)) => Some(
                s.parse::<u64>()
                    .map_err(|_| bad("expires_in is not a count of seconds"))?,
            ),
            Some(_) => return Err(bad("expires_in is not a count of seconds")),
        };
        Ok(TokenResponse {
            access_token: Secret::new(raw.access_token),
            token_type: raw.token_type,
            expires_in,
            refresh_token: raw.refresh_token.filter(|t| !t.is_empty()).map(Secret::new),
            id_token: raw.id_token.filter(|t| !t.is_empty()),
            scope: raw.scope,
        })
    }

    /// The authorization code grant with PKCE (RFC 6749 §4.1.3, RFC 7636 §4.5).
    pub async fn exchange_code(
        &self,
        code: &str,
        verifier: &Secret<String>,
        redirect_uri: &Url,
    ) -> Result<TokenResponse, ProviderError> {
        self.post(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri.as_str()),
            ("code_verifier", verifier.expose()),
        ])
        .await
    }

    /// The client credentials grant (RFC 6749 §4.4), with optional `scope`, `audience` and
    /// `resource` (RFC 8707).
    pub async fn client_credentials(
        &self,
        scope: &str,
        audience: Option<&str>,
        resource: Option<&str>,
    ) -> Result<TokenResponse, ProviderError> {
        let mut grant = vec![("grant_type", "client_credentials")];
        if !scope.is_empty() {
            grant.push(("scope", scope));
        }
        if let Some(a) = audience {
            grant.push(("audience", a));
        }
        if let Some(r) = resource {
            grant.push(("resource", r));
        }
        self.post(&grant).await
    }

    /// The resource owner password credentials grant (RFC 6749 §4.3), for the opt-in bridge
    /// of legacy Basic-auth clients only (deprecated by RFC 9700 §2.4).
    pub async fn password(
        &self,
        username: &str,
        password: &Secret<String>,
        scope: &str,
    ) -> Result<TokenResponse, ProviderError> {
        let mut grant = vec![
            ("grant_type", "password"),
            ("username", username),
            ("password", password.expose().as_str()),
        ];
        if !scope.is_empty() {
            grant.push(("scope", scope));
        }
        self.post(&grant).await
    }

    /// The refresh token grant (RFC 6749 §6).
    pub async fn refresh(
        &self,
        refresh_token: &Secret<String>,
    ) -> Result<TokenResponse, ProviderError> {
        self.post(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token.expose()),
        ])
        .await
    }
}

/// The userinfo claims for `access_token` (OIDC Core §5.3; JSON answers only). The caller
/// checks that `sub` equals the ID token's (§5.3.2).
pub async fn userinfo(
    http: &HttpClient,
    endpoint: &Url,
    access_token: &Secret<String>,
) -> Result<serde_json::Map<String, Value>, ProviderError> {
    http.get_json(endpoint, Auth::Bearer(access_token)).await
}
