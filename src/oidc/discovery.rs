//! Talking to the provider: where its endpoints are. Either OpenID Connect Discovery 1.0
//! (`<issuer>/.well-known/openid-configuration`, whose `issuer` must be exactly the configured
//! one, §4.3) or the endpoints written in the configuration (plain OAuth 2.0 providers).
//!
//! This module only fetches and checks the document; refreshing it is the job of
//! [`super::Provider`]'s background task.

use serde::Deserialize;
use url::Url;

use super::http::{Auth, HttpClient, ProviderError, loggable};
use crate::config::ProviderEndpoints;

/// What the gateway needs to know about the provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    /// The issuer identifier exactly as the provider writes it in tokens.
    pub issuer: String,
    pub authorization_endpoint: Url,
    pub token_endpoint: Url,
    pub userinfo_endpoint: Option<Url>,
    pub jwks_uri: Option<Url>,
    pub end_session_endpoint: Option<Url>,
    /// RFC 8414 `introspection_endpoint` (RFC 7662), for opaque bearer tokens.
    pub introspection_endpoint: Option<Url>,
    /// `authorization_response_iss_parameter_supported` (RFC 9207): the callback's `iss` must
    /// then equal the issuer.
    pub iss_parameter_supported: bool,
    pub code_challenge_methods_supported: Vec<String>,
    pub id_token_signing_alg_values_supported: Vec<String>,
    pub token_endpoint_auth_methods_supported: Vec<String>,
    /// True when this came from discovery, false when built from the configuration.
    pub discovered: bool,
}

#[derive(Deserialize)]
struct Document {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    #[serde(default)]
    userinfo_endpoint: Option<String>,
    // Required by Discovery §3 for OpenID providers; missing means no ID token can be checked.
    jwks_uri: String,
    #[serde(default)]
    end_session_endpoint: Option<String>,
    #[serde(default)]
    introspection_endpoint: Option<String>,
    #[serde(default)]
    authorization_response_iss_parameter_supported: bool,
    #[serde(default)]
    code_challenge_methods_supported: Vec<String>,
    #[serde(default)]
    id_token_signing_alg_values_supported: Vec<String>,
    #[serde(default)]
    token_endpoint_auth_methods_supported: Vec<String>,
}

/// The issuer strings accepted for a configured issuer. `Url` cannot tell `https://idp` from
/// `https://idp/` (it always writes the root path), so for a root-path issuer both spellings
/// are the configured one; anything else must match byte for byte.
pub fn issuer_spellings(issuer: &Url) -> Vec<String> {
    let full = issuer.as_str().to_owned();
    if issuer.path() == "/" && issuer.query().is_none() && full.ends_with('/') {
        let bare = full.trim_end_matches('/').to_owned();
        vec![bare, full]
    } else {
        vec![full]
    }
}

/// `<issuer>/.well-known/openid-configuration` (Discovery §4.1: appended after removing a
/// trailing slash).
pub fn discovery_url(issuer: &Url) -> Result<Url, ProviderError> {
    let base = issuer.as_str().trim_end_matches('/');
    Url::parse(&format!("{base}/.well-known/openid-configuration")).map_err(|e| {
        ProviderError::Setup {
            reason: format!("discovery URL for {}: {e}", loggable(issuer)),
        }
    })
}

/// Fetches and checks the discovery document of `issuer`.
pub async fn discover(http: &HttpClient, issuer: &Url) -> Result<Metadata, ProviderError> {
    let url = discovery_url(issuer)?;
    let doc: Document = http.get_json(&url, Auth::None).await?;
    let accepted = issuer_spellings(issuer);
    if !accepted.contains(&doc.issuer) {
        return Err(ProviderError::IssuerMismatch {
            expected: accepted.into_iter().next().unwrap_or_default(),
            found: doc.issuer.chars().take(200).collect(),
        });
    }
    // Endpoints must be absolute http(s) URLs; anything else is a broken or hostile document.
    let endpoint = |name: &str, value: &str| -> Result<Url, ProviderError> {
        match Url::parse(value) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => Ok(u),
            _ => Err(ProviderError::BadResponse {
                url: loggable(&url),
                reason: format!("{name} is not an absolute http(s) URL"),
            }),
        }
    };
    let optional = |name: &str, value: Option<&str>| -> Result<Option<Url>, ProviderError> {
        value.map(|v| endpoint(name, v)).transpose()
    };
    let authorization_endpoint = endpoint("authorization_endpoint", &doc.authorization_endpoint)?;
    let token_endpoint = endpoint("token_endpoint", &doc.token_endpoint)?;
    let userinfo_endpoint = optional("userinfo_endpoint", doc.userinfo_endpoint.as_deref())?;
    let jwks_uri = endpoint("jwks_uri", &doc.jwks_uri)?;
    let end_session_endpoint =
        optional("end_session_endpoint", doc.end_session_endpoint.as_deref())?;
    let introspection_endpoint = optional(
        "introspection_endpoint",
        doc.introspection_endpoint.as_deref(),
    )?;
    Ok(Metadata {
        issuer: doc.issuer,
        authorization_endpoint,
        token_endpoint,
        userinfo_endpoint,
        jwks_uri: Some(jwks_uri),
        end_session_endpoint,
        introspection_endpoint,
        iss_parameter_supported: doc.authorization_response_iss_parameter_supported,
        code_challenge_methods_supported: doc.code_challenge_methods_supported,
        id_token_signing_alg_values_supported: doc.id_token_signing_alg_values_supported,
        token_endpoint_auth_methods_supported: doc.token_endpoint_auth_methods_supported,
        discovered: true,
    })
}

/// Metadata from configured endpoints (explicit mode, no discovery). The issuer string is the
/// configured one without the root slash `Url` adds.
pub fn from_endpoints(issuer: &Url, endpoints: &ProviderEndpoints) -> Metadata {
    Metadata {
        issuer: issuer_spellings(issuer)
            .into_iter()
            .next()
            .unwrap_or_else(|| issuer.to_string()),
        authorization_endpoint: endpoints.authorization.clone(),
        token_endpoint: endpoints.token.clone(),
        userinfo_endpoint: endpoints.userinfo.clone(),
        jwks_uri: endpoints.jwks.clone(),
        end_session_endpoint: endpoints.end_session.clone(),
        introspection_endpoint: None,
        // Nothing advertises RFC 9207, so a callback `iss` is not demanded.
        iss_parameter_supported: false,
        // PKCE S256 is always sent (rule 1); a provider that ignores it still works.
        code_challenge_methods_supported: vec!["S256".to_owned()],
        id_token_signing_alg_values_supported: Vec::new(),
        token_endpoint_auth_methods_supported: Vec::new(),
        discovered: false,
    }
}
