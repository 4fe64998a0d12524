//! Authenticate, opaque tokens: asks the provider's introspection endpoint (RFC 7662) with
//! the gateway's client authentication, and remembers the answer by the token's hash until
//! `min(exp, cache_ttl)` (rule 15). Concurrent requests with the same token share one call.
//! `active: false` (or an expired or refresh token) is a refusal; an endpoint that cannot be
//! asked is [`Verdict::Unavailable`], never a pass and never a 401 (rule 36).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use url::Url;

use super::jwt::{TokenHash, token_hash};
use super::{Due, ExpireWhenDue, Rejection, Verdict, identity_from_claims};
use crate::config::IntrospectionConfig;
use crate::identity::Identity;
use crate::oidc::jws::{audience_in, number};
use crate::oidc::token::TokenCall;
use crate::oidc::{Claims, ClientCredentials, HttpClient, Provider, ProviderError};

/// One remembered answer.
#[derive(Debug)]
enum Answer {
    Active {
        identity: Identity,
        /// `exp` in Unix seconds, checked again on every hit.
        exp: Option<u64>,
    },
    Inactive(Rejection),
}

struct Remembered {
    answer: Answer,
    until: Instant,
}

impl Due for Remembered {
    fn due(&self) -> Instant {
        self.until
    }
}

pub struct Introspector {
    endpoint: Option<Url>,
    provider: Option<Arc<Provider>>,
    http: HttpClient,
    client_id: String,
    credentials: ClientCredentials,
    /// `aud` must contain one of these when the answer has an `aud` (the provider's bearer
    /// audiences); empty = not checked.
    audiences: Vec<String>,
    groups_claim: Vec<String>,
    ttl: Duration,
    answers: moka::future::Cache<TokenHash, Arc<Remembered>>,
}

impl std::fmt::Debug for Introspector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Introspector")
            .field("endpoint", &self.endpoint.as_ref().map(Url::as_str))
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

impl Introspector {
    pub fn new(
        config: &IntrospectionConfig,
        provider: Option<Arc<Provider>>,
        audiences: Vec<String>,
        groups_claim: Vec<String>,
    ) -> Result<Self, ProviderError> {
        Ok(Self {
            endpoint: config.endpoint.clone(),
            provider,
            http: HttpClient::new(config.timeout)?,
            client_id: config.client_id.clone(),
            credentials: ClientCredentials::new(&config.client_id, &config.client_auth)?,
            audiences,
            groups_claim,
            ttl: config.cache_ttl,
            answers: moka::future::Cache::builder()
                .max_capacity(100_000)
                .expire_after(ExpireWhenDue)
                .build(),
        })
    }

    pub async fn introspect(&self, token: &str, now: u64) -> Verdict {
        let hash = token_hash(token);
        let found = self
            .answers
            .try_get_with(hash, async {
                let answer = self.call(token, now).await?;
                let until = match &answer {
                    Answer::Active { exp: Some(exp), .. } => {
                        Duration::from_secs(exp.saturating_sub(now)).min(self.ttl)
                    }
                    _ => self.ttl,
                };
                Ok::<_, ProviderError>(Arc::new(Remembered {
                    answer,
                    until: Instant::now() + until,
                }))
            })
            .await;
        match found {
            Ok(remembered) => match &remembered.answer {
                Answer::Active { exp: Some(exp), .. } if *exp <= now => {
                    Verdict::Invalid(Rejection {
                        reason: "expired",
                        description: "the token has expired",
                    })
                }
                Answer::Active { identity, .. } => Verdict::Valid(identity.clone()),
                Answer::Inactive(r) => Verdict::Invalid(*r),
            },
            Err(e) => {
                tracing::warn!(error = %e, "token introspection failed; answering 503");
                Verdict::Unavailable("token introspection")
            }
        }
    }

    async fn call(&self, token: &str, now: u64) -> Result<Answer, ProviderError> {
        let discovered;
        let endpoint = match &self.endpoint {
            Some(url) => url,
            None => {
                discovered = self
                    .provider
                    .as_ref()
                    .and_then(|p| p.metadata())
                    .ok_or(ProviderError::NotReady)?;
                discovered
                    .introspection_endpoint
                    .as_ref()
                    .ok_or(ProviderError::Unsupported {
                        what: "introspection_endpoint",
                    })?
            }
        };
        let call = TokenCall {
            http: &self.http,
            endpoint,
            client_id: &self.client_id,
            credentials: &self.credentials,
        };
        let claims: Claims = call
            .post_json(&[("token", token), ("token_type_hint", "access_token")])
            .await?;
        Ok(self.judge(claims, now))
    }

    fn judge(&self, claims: Claims, now: u64) -> Answer {
        let inactive = |reason, description| {
            Answer::Inactive(Rejection {
                reason,
                description,
            })
        };
        // RFC 7662 §2.2: only a literal `true` means active.
        if claims.get("active") != Some(&Value::Bool(true)) {
            return inactive("inactive", "the token is not active");
        }
        if claims.get("token_type").and_then(Value::as_str) == Some("refresh_token") {
            return inactive("refresh_token", "a refresh token is not an access token");
        }
        let Ok(exp) = number(&claims, "exp") else {
            return inactive("malformed", "the token's introspection answer is malformed");
        };
        if exp.is_some_and(|e| e <= now) {
            return inactive("expired", "the token has expired");
        }
        // RFC 7662 makes `aud` optional in the answer: checked when the provider gives one.
        if !self.audiences.is_empty()
            && claims.contains_key("aud")
            && !audience_in(&claims, &self.audiences)
        {
            return inactive("wrong_audience", "the token is not meant for this audience");
        }
        match identity_from_claims(claims, &self.groups_claim) {
            Some(identity) => Answer::Active { identity, exp },
            None => inactive("missing_sub", "the token names no subject"),
        }
    }
}
