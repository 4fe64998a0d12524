//! Configuration of the machine-caller sections: `[bearer]` (with `[bearer.introspection]` and
//! `[[bearer.issuers]]`) and `[password_bridge]`. Same rules as the rest of validation: every
//! problem reported with its key, defaults filled here, nothing interpreted later.

use std::time::Duration;

use http::HeaderName;
use jsonwebtoken::Algorithm;
use toml_edit::{Array, ArrayOfTables, Item, Table, value};
use url::Url;

use super::{Ctx, KeyPath, check_http_url, format_duration, is_loopback, is_scope_token};
use crate::config::raw::{RawBearer, RawIntrospection, RawIssuer, RawPasswordBridge};
use crate::config::{
    BearerConfig, ClientAuth, Config, IntrospectionConfig, IssuerConfig, IssuerKeys,
    PasswordBridgeConfig, ProviderConfig,
};

/// Tokens above this are never reasonable; the configurable limit stays under it.
const MAX_TOKEN_BYTES_LIMIT: usize = 64 * 1024;

/// Whether `[bearer]` can authenticate callers on its own (without `[provider]`): the
/// provider's tokens, an issuer of its own, or an introspection endpoint. Routes may then
/// require authentication, and the default policy is "authenticated" — never "public" for a
/// gateway configured to check tokens.
pub(super) fn authenticates_callers(raw: &RawBearer) -> bool {
    raw.enabled == Some(true)
        || raw.issuers.as_ref().is_some_and(|i| !i.is_empty())
        || raw.introspection.is_some()
}

impl Ctx<'_> {
    pub(super) fn bearer(
        &mut self,
        raw: RawBearer,
        provider: Option<&ProviderConfig>,
        has_provider: bool,
    ) -> Option<BearerConfig> {
        let p = KeyPath::default().key("bearer");
        let leeway = self.duration(&p.key("leeway"), raw.leeway, Duration::from_secs(60));
        if leeway > Duration::from_secs(300) {
            self.problem(
                &p.key("leeway"),
                format!(
                    "`{}` is more than the maximum of 5m",
                    format_duration(leeway)
                ),
            );
        }
        let mut issuers = Vec::new();
        let enabled = raw.enabled.unwrap_or(false);
        if enabled {
            if !has_provider {
                self.problem(
                    &p.key("enabled"),
                    "trusts the tokens of [provider], which is not configured; add [provider] or use [[bearer.issuers]]",
                );
            }
            let audiences = self.audiences(&p, raw.audiences);
            let secret = provider.and_then(|pc| match &pc.client_auth {
                ClientAuth::SecretBasic(s) | ClientAuth::SecretPost(s) => Some(s.clone()),
                _ => None,
            });
            let algorithms = self.token_algorithms(&p, raw.algorithms, secret.is_some());
            if let (Some(pc), Some(audiences)) = (provider, audiences) {
                issuers.push(IssuerConfig {
                    issuer: pc.issuer.clone(),
                    keys: IssuerKeys::Provider,
                    audiences,
                    algorithms,
                    hmac_secret: secret,
                    require_typ: raw.require_typ.unwrap_or(false),
                    leeway,
                });
            }
        } else {
            for key in ["audiences", "algorithms", "require_typ"] {
                let set = match key {
                    "audiences" => raw.audiences.is_some(),
                    "algorithms" => raw.algorithms.is_some(),
                    _ => raw.require_typ.is_some(),
                };
                if set {
                    self.problem(
                        &p.key(key),
                        "applies to the provider's tokens, which are accepted only with `enabled = true`",
                    );
                }
            }
        }
        for (i, r) in raw.issuers.unwrap_or_default().into_iter().enumerate() {
            let ip = p.key("issuers").index(i);
            if let Some(issuer) = self.issuer(&ip, r, leeway) {
                if issuers
                    .iter()
                    .any(|known: &IssuerConfig| known.issuer == issuer.issuer)
                {
                    self.problem(
                        &ip.key("issuer"),
                        format!("`{}` is trusted twice; keep one entry", issuer.issuer),
                    );
                } else {
                    issuers.push(issuer);
                }
            }
        }

        let header = match raw.header {
            None => http::header::AUTHORIZATION,
            Some(h) => match HeaderName::from_bytes(h.as_bytes()) {
                Ok(name) => name,
                Err(_) => {
                    self.problem(&p.key("header"), format!("`{h}` is not a header name"));
                    http::header::AUTHORIZATION
                }
            },
        };
        let query_parameter = match raw.query_parameter {
            Some(q) if q.is_empty() => None,
            Some(q) => {
                if !q
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                {
                    self.problem(
                        &p.key("query_parameter"),
                        format!("`{q}` is not a parameter name (letters, digits, `_`, `-`)"),
                    );
                }
                Some(q)
            }
            None => None,
        };
        let max_token_bytes = self.int_in(
            &p.key("max_token_bytes"),
            raw.max_token_bytes,
            8 * 1024,
            256..=MAX_TOKEN_BYTES_LIMIT,
        );
        let cache_entries = self.int_in(
            &p.key("cache_entries"),
            raw.cache_entries,
            100_000,
            0..=10_000_000,
        );
        let realm = raw
            .realm
            .unwrap_or_else(|| crate::config::DEFAULT_REALM.to_owned());
        if realm.is_empty() || realm.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
            self.problem(
                &p.key("realm"),
                "must be non-empty printable text without quotes or backslashes",
            );
        }
        let introspection = raw
            .introspection
            .and_then(|r| self.introspection(&p.key("introspection"), r, provider, has_provider));
        if issuers.is_empty() && introspection.is_none() && self.problems.is_empty() {
            self.problem(
                &p,
                "trusts no issuer: set `enabled = true`, add [[bearer.issuers]] or [bearer.introspection]",
            );
        }
        Some(BearerConfig {
            issuers,
            header,
            query_parameter,
            max_token_bytes,
            cache_entries: u64::try_from(cache_entries).unwrap_or(u64::MAX),
            pass_token: raw.pass_token.unwrap_or(true),
            realm,
            introspection,
        })
    }

    fn audiences(&mut self, p: &KeyPath, raw: Option<Vec<String>>) -> Option<Vec<String>> {
        match raw {
            None => {
                self.problem(
                    &p.key("audiences"),
                    "missing required key `audiences`: the `aud` values this gateway's APIs accept",
                );
                None
            }
            Some(list) if list.is_empty() || list.iter().any(String::is_empty) => {
                self.problem(&p.key("audiences"), "must list non-empty audiences");
                None
            }
            Some(list) => Some(list),
        }
    }

    fn issuer(&mut self, p: &KeyPath, raw: RawIssuer, leeway: Duration) -> Option<IssuerConfig> {
        let issuer = match raw.issuer {
            None => {
                self.problem(&p.key("issuer"), "missing required key `issuer`");
                None
            }
            Some(s) => self.trusted_url(&p.key("issuer"), &s),
        };
        let keys = match raw.jwks_uri {
            Some(s) => self
                .trusted_url(&p.key("jwks_uri"), &s)
                .map(IssuerKeys::Jwks),
            None => Some(IssuerKeys::Discovery),
        };
        let audiences = self.audiences(p, raw.audiences);
        let hmac_secret = self.secret_or_file(
            p,
            "hmac_secret",
            raw.hmac_secret,
            raw.hmac_secret_file,
            false,
        );
        if hmac_secret.as_ref().is_some_and(|s| s.expose().len() < 32) {
            self.problem(
                &p.key("hmac_secret"),
                "must be at least 32 bytes (RFC 7518 §3.2: a key as long as the hash)",
            );
        }
        let algorithms = self.token_algorithms(p, raw.algorithms, hmac_secret.is_some());
        Some(IssuerConfig {
            issuer: issuer?,
            keys: keys?,
            audiences: audiences?,
            algorithms,
            hmac_secret,
            require_typ: raw.require_typ.unwrap_or(false),
            leeway,
        })
    }

    /// An absolute http(s) URL, https unless loopback (keys fetched over plain HTTP elsewhere
    /// could be replaced by anyone on the path).
    pub(super) fn trusted_url(&mut self, path: &KeyPath, s: &str) -> Option<Url> {
        match check_http_url(s) {
            Err(reason) => {
                self.problem(path, reason);
                None
            }
            Ok(u) if u.scheme() == "http" && !is_loopback(&u) => {
                self.problem(
                    path,
                    format!("`{s}` must be https (plain http is allowed for loopback only)"),
                );
                None
            }
            Ok(u) => Some(u),
        }
    }

    fn token_algorithms(
        &mut self,
        p: &KeyPath,
        raw: Option<Vec<String>>,
        has_secret: bool,
    ) -> Vec<Algorithm> {
        self.algorithm_list(
            &p.key("algorithms"),
            raw,
            has_secret.then_some(()).ok_or(
                "a shared secret (`hmac_secret` or `hmac_secret_file`; for the provider, its client secret)",
            ),
            "token",
        )
    }

    fn introspection(
        &mut self,
        p: &KeyPath,
        raw: RawIntrospection,
        provider: Option<&ProviderConfig>,
        has_provider: bool,
    ) -> Option<IntrospectionConfig> {
        let endpoint = raw
            .endpoint
            .and_then(|s| self.trusted_url(&p.key("endpoint"), &s));
        if endpoint.is_none() && !has_provider {
            self.problem(
                &p.key("endpoint"),
                "missing required key `endpoint` (without [provider] there is no discovery to find it)",
            );
        }
        let secret = self.secret_or_file(
            p,
            "client_secret",
            raw.client_secret,
            raw.client_secret_file,
            false,
        );
        let (client_id, client_auth) = match (raw.client_id, secret, provider) {
            (Some(id), Some(secret), _) => (Some(id), Some(ClientAuth::SecretBasic(secret))),
            (None, None, Some(pc)) => (Some(pc.client_id.clone()), Some(pc.client_auth.clone())),
            (None, None, None) => {
                if has_provider {
                    // The provider's own problems are reported already.
                    (None, None)
                } else {
                    self.problem(
                        &p.key("client_id"),
                        "missing required keys `client_id` and `client_secret` (RFC 7662 §2.1: introspection needs client authentication)",
                    );
                    (None, None)
                }
            }
            (Some(_), None, _) => {
                self.problem(
                    &p.key("client_secret"),
                    "missing required key `client_secret` (or `client_secret_file`) with `client_id`",
                );
                (None, None)
            }
            (None, Some(_), _) => {
                self.problem(
                    &p.key("client_id"),
                    "missing required key `client_id` with `client_secret`",
                );
                (None, None)
            }
        };
        let cache_ttl = self.duration(&p.key("cache_ttl"), raw.cache_ttl, Duration::from_secs(60));
        Some(IntrospectionConfig {
            endpoint,
            client_id: client_id?,
            client_auth: client_auth?,
            cache_ttl,
            timeout: provider.map_or(Duration::from_secs(10), |pc| pc.timeout),
        })
    }

    pub(super) fn password_bridge(
        &mut self,
        raw: RawPasswordBridge,
        provider: Option<&ProviderConfig>,
        has_provider: bool,
        bearer: Option<&BearerConfig>,
    ) -> Option<PasswordBridgeConfig> {
        let p = KeyPath::default().key("password_bridge");
        if !raw.enabled.unwrap_or(false) {
            return None;
        }
        if !has_provider {
            self.problem(
                &p.key("enabled"),
                "needs [provider]: credentials are exchanged at its token endpoint",
            );
        }
        let provider_tokens = bearer.is_some_and(|b| {
            b.introspection.is_some()
                || b.issuers
                    .iter()
                    .any(|i| matches!(i.keys, IssuerKeys::Provider))
        });
        if has_provider && !provider_tokens {
            self.problem(
                &p.key("enabled"),
                "needs [bearer] enabled = true (or [bearer.introspection]): the tokens obtained are then checked like any bearer token",
            );
        }
        let scopes = match raw.scopes {
            Some(list) => {
                for (i, s) in list.iter().enumerate() {
                    if !is_scope_token(s) {
                        self.problem(&p.key("scopes").index(i), format!("`{s}` is not a scope"));
                    }
                }
                list
            }
            None => provider.map(|pc| pc.scopes.clone()).unwrap_or_default(),
        };
        let max_failures = self.int_in(&p.key("max_failures"), raw.max_failures, 5, 1..=1000);
        Some(PasswordBridgeConfig {
            scopes,
            max_failures: u32::try_from(max_failures).unwrap_or(5),
        })
    }
}

/// `[bearer]` and `[password_bridge]` for `render_effective`; secrets only as `[redacted]`.
pub(super) fn render(doc: &mut toml_edit::DocumentMut, config: &Config) {
    let strings = |items: &[String]| Array::from_iter(items.iter().map(String::as_str));
    let algs = |items: &[Algorithm]| Array::from_iter(items.iter().map(|a| format!("{a:?}")));
    if let Some(b) = &config.bearer {
        let mut t = Table::new();
        let provider = b
            .issuers
            .iter()
            .find(|i| matches!(i.keys, IssuerKeys::Provider));
        t["enabled"] = value(provider.is_some());
        if let Some(i) = provider {
            t["audiences"] = value(strings(&i.audiences));
            t["algorithms"] = value(algs(&i.algorithms));
            t["require_typ"] = value(i.require_typ);
        }
        if let Some(i) = b.issuers.first() {
            t["leeway"] = value(format_duration(i.leeway));
        }
        t["header"] = value(b.header.as_str());
        if let Some(q) = &b.query_parameter {
            t["query_parameter"] = value(q.as_str());
        }
        t["max_token_bytes"] = value(i64::try_from(b.max_token_bytes).unwrap_or(i64::MAX));
        t["cache_entries"] = value(i64::try_from(b.cache_entries).unwrap_or(i64::MAX));
        t["pass_token"] = value(b.pass_token);
        t["realm"] = value(b.realm.as_str());
        if let Some(ic) = &b.introspection {
            let mut it = Table::new();
            if let Some(e) = &ic.endpoint {
                it["endpoint"] = value(e.as_str());
            }
            it["client_id"] = value(ic.client_id.as_str());
            if let ClientAuth::SecretBasic(s) | ClientAuth::SecretPost(s) = &ic.client_auth {
                it["client_secret"] = value(s.to_string());
            }
            it["cache_ttl"] = value(format_duration(ic.cache_ttl));
            t["introspection"] = Item::Table(it);
        }
        let mut list = ArrayOfTables::new();
        for i in b
            .issuers
            .iter()
            .filter(|i| !matches!(i.keys, IssuerKeys::Provider))
        {
            let mut it = Table::new();
            it["issuer"] = value(i.issuer.as_str());
            if let IssuerKeys::Jwks(u) = &i.keys {
                it["jwks_uri"] = value(u.as_str());
            }
            it["audiences"] = value(strings(&i.audiences));
            it["algorithms"] = value(algs(&i.algorithms));
            if let Some(s) = &i.hmac_secret {
                it["hmac_secret"] = value(s.to_string());
            }
            it["require_typ"] = value(i.require_typ);
            list.push(it);
        }
        if !list.is_empty() {
            t["issuers"] = Item::ArrayOfTables(list);
        }
        doc["bearer"] = Item::Table(t);
    }
    if let Some(pb) = &config.password_bridge {
        let mut t = Table::new();
        t["enabled"] = value(true);
        t["scopes"] = value(strings(&pb.scopes));
        t["max_failures"] = value(i64::from(pb.max_failures));
        doc["password_bridge"] = Item::Table(t);
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{IssuerKeys, Policy, load_str};

    const UP: &str = "[[upstreams]]\nurl = \"http://127.0.0.1:8080\"\n";

    fn problems(text: &str) -> Vec<String> {
        match load_str(&format!("{text}\n{UP}"), None, &[]) {
            Ok(_) => Vec::new(),
            Err(e) => e.problems.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn an_issuer_alone_protects_routes_without_a_provider() {
        let c = load_str(
            &format!(
                "[[bearer.issuers]]\nissuer = \"https://idp.example\"\naudiences = [\"api\"]\n\
                 [[routes]]\npath_prefix = \"/api\"\nscopes = [\"orders:read\"]\n{UP}"
            ),
            None,
            &[],
        )
        .unwrap();
        let b = c.bearer.unwrap();
        assert_eq!(b.issuers.len(), 1);
        assert!(matches!(b.issuers[0].keys, IssuerKeys::Discovery));
        assert_eq!(b.header, http::header::AUTHORIZATION);
        assert_eq!(b.query_parameter, None, "query tokens are off by default");
        assert!(b.pass_token);
        assert!(matches!(c.default_policy, Policy::Authenticated));
        assert!(
            matches!(&c.routes[0].policy, Policy::Require { scopes, .. } if scopes == &["orders:read"])
        );
    }

    #[test]
    fn introspection_alone_protects_routes_without_a_provider() {
        let c = load_str(
            &format!(
                "[bearer.introspection]\nendpoint = \"https://idp.example/introspect\"\nclient_id = \"gh\"\nclient_secret = \"s\"\n\
                 [[routes]]\npath_prefix = \"/api\"\nscopes = [\"orders:read\"]\n{UP}"
            ),
            None,
            &[],
        )
        .unwrap();
        assert!(c.bearer.unwrap().introspection.is_some());
        assert!(
            matches!(c.default_policy, Policy::Authenticated),
            "a gateway that checks tokens must not default to public"
        );
        assert!(
            matches!(&c.routes[0].policy, Policy::Require { scopes, .. } if scopes == &["orders:read"])
        );
    }

    #[test]
    fn algorithm_rules_per_issuer() {
        let p = problems(
            "[[bearer.issuers]]\nissuer = \"https://idp.example\"\naudiences = [\"api\"]\nalgorithms = [\"none\", \"HS256\", \"XX1\"]\n",
        );
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p[0].contains("`none` is never accepted"), "{p:?}");
        assert!(p[1].contains("needs a shared secret"), "{p:?}");
        assert!(p[2].contains("is not one of"), "{p:?}");
        let p = problems(
            "[[bearer.issuers]]\nissuer = \"https://idp.example\"\naudiences = [\"api\"]\nalgorithms = [\"HS256\"]\nhmac_secret = \"0123456789abcdef0123456789abcdef\"\n",
        );
        assert!(p.is_empty(), "{p:?}");
    }

    #[test]
    fn section_problems_are_named() {
        let p = problems("[bearer]\nenabled = true\naudiences = [\"api\"]\n");
        assert!(
            p.iter()
                .any(|l| l.contains("bearer.enabled") && l.contains("[provider]")),
            "{p:?}"
        );
        let p = problems("[[bearer.issuers]]\nissuer = \"http://idp.example\"\n");
        assert!(p.iter().any(|l| l.contains("must be https")), "{p:?}");
        assert!(
            p.iter().any(|l| l.contains("bearer.issuers[0].audiences")),
            "{p:?}"
        );
        let p = problems("[bearer.introspection]\ncache_ttl = \"1m\"\n");
        assert!(
            p.iter()
                .any(|l| l.contains("bearer.introspection.endpoint")),
            "{p:?}"
        );
        let p = problems(
            "[bearer]\nmax_token_bytes = 100\n[bearer.introspection]\nendpoint = \"https://idp/i\"\nclient_id = \"a\"\nclient_secret = \"b\"\n",
        );
        assert!(
            p.iter().any(|l| l.contains("bearer.max_token_bytes")),
            "{p:?}"
        );
        let p = problems(
            "[[bearer.issuers]]\nissuer = \"https://idp.example\"\naudiences = [\"api\"]\n[[routes]]\npath_prefix = \"/x\"\npassword_bridge = true\nscopes = [\"a b\"]\n",
        );
        assert!(
            p.iter().any(|l| l.contains("routes[0].password_bridge")),
            "{p:?}"
        );
        assert!(p.iter().any(|l| l.contains("routes[0].scopes[0]")), "{p:?}");
    }

    #[test]
    fn the_bridge_needs_the_provider_tokens_checked() {
        let login = "[server]\npublic_url = \"https://app.example\"\n[provider]\nissuer = \"https://idp.example\"\nclient_id = \"gh\"\nclient_secret = \"s\"\n[session]\nsecret = \"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\"\n";
        let p = problems(&format!("{login}[password_bridge]\nenabled = true\n"));
        assert!(
            p.iter()
                .any(|l| l.contains("password_bridge.enabled") && l.contains("[bearer]")),
            "{p:?}"
        );
        let c = load_str(
            &format!(
                "{login}[bearer]\nenabled = true\naudiences = [\"gh\"]\n[password_bridge]\nenabled = true\n[[routes]]\npath_prefix = \"/legacy\"\npassword_bridge = true\n{UP}"
            ),
            None,
            &[],
        )
        .unwrap();
        assert!(c.routes[0].password_bridge);
        assert_eq!(c.password_bridge.as_ref().unwrap().max_failures, 5);
        let out = crate::config::render_effective(&c);
        assert!(out.contains("[bearer]"), "{out}");
        assert!(out.contains("[password_bridge]"), "{out}");
    }
}
