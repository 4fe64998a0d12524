//! Configuration of `[upstreams.client]`: the gateway's own OAuth client toward a protected
//! upstream (client credentials grant).

use toml_edit::{Array, Table, value};

use super::{Ctx, KeyPath, is_scope_token};
use crate::config::raw::RawUpstreamClient;
use crate::config::{ClientAuth, UpstreamClientConfig};

impl Ctx<'_> {
    pub(super) fn upstream_client(
        &mut self,
        p: &KeyPath,
        raw: RawUpstreamClient,
        has_provider: bool,
    ) -> Option<UpstreamClientConfig> {
        let token_endpoint = match &raw.token_endpoint {
            Some(s) => self.trusted_url(&p.key("token_endpoint"), s),
            None => {
                if !has_provider {
                    self.problem(
                        &p.key("token_endpoint"),
                        "missing required key `token_endpoint` (without [provider] there is no default)",
                    );
                }
                None
            }
        };
        let client_id = self.required_text(p, "client_id", raw.client_id.clone());
        let client_auth = self.client_auth(p, &raw.client_auth_keys());
        let scopes = raw.scopes.clone().unwrap_or_default();
        for (i, s) in scopes.iter().enumerate() {
            if !is_scope_token(s) {
                self.problem(&p.key("scopes").index(i), format!("`{s}` is not a scope"));
            }
        }
        for (key, value) in [("audience", &raw.audience), ("resource", &raw.resource)] {
            if value.as_deref().is_some_and(str::is_empty) {
                self.problem(&p.key(key), "must not be empty (omit it instead)");
            }
        }
        Some(UpstreamClientConfig {
            token_endpoint,
            client_id: client_id?,
            client_auth: client_auth?,
            scopes,
            audience: raw.audience,
            resource: raw.resource,
        })
    }
}

/// For `render_effective`: secrets and private keys only as `[redacted]`.
pub(super) fn render(c: &UpstreamClientConfig) -> Table {
    let mut t = Table::new();
    if let Some(e) = &c.token_endpoint {
        t["token_endpoint"] = value(e.as_str());
    }
    t["client_id"] = value(c.client_id.as_str());
    match &c.client_auth {
        ClientAuth::SecretBasic(s) => t["client_secret"] = value(s.to_string()),
        ClientAuth::SecretPost(s) => {
            t["client_auth"] = value("client_secret_post");
            t["client_secret"] = value(s.to_string());
        }
        ClientAuth::PrivateKeyJwt { alg, kid, .. } => {
            t["client_auth"] = value("private_key_jwt");
            t["private_key_file"] = value("[redacted]");
            t["private_key_alg"] = value(format!("{alg:?}"));
            if let Some(k) = kid {
                t["private_key_id"] = value(k.as_str());
            }
        }
        ClientAuth::None => t["client_auth"] = value("none"),
    }
    t["scopes"] = value(Array::from_iter(c.scopes.iter().map(String::as_str)));
    for (key, v) in [("audience", &c.audience), ("resource", &c.resource)] {
        if let Some(v) = v {
            t[key] = value(v.as_str());
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use crate::config::{ClientAuth, load_str};

    #[test]
    fn a_protected_upstream_gets_its_client() {
        let c = load_str(
            "[[upstreams]]\nurl = \"http://127.0.0.1:8080\"\n[upstreams.client]\n\
             token_endpoint = \"https://idp.example/token\"\nclient_id = \"gw\"\nclient_secret = \"s\"\n\
             scopes = [\"orders:read\"]\nresource = \"api://orders\"\n",
            None,
            &[],
        )
        .unwrap();
        let client = c.upstreams[0].client.as_ref().unwrap();
        assert_eq!(client.client_id, "gw");
        assert!(matches!(client.client_auth, ClientAuth::SecretBasic(_)));
        assert_eq!(client.resource.as_deref(), Some("api://orders"));
        assert!(!format!("{c:?}").contains("\"s\""));
        let out = crate::config::render_effective(&c);
        assert!(out.contains("client_secret = \"[redacted]\""), "{out}");
    }

    #[test]
    fn problems_are_named() {
        let err = load_str(
            "[[upstreams]]\nurl = \"http://127.0.0.1:8080\"\n[upstreams.client]\nscopes = [\"a b\"]\n",
            None,
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("upstreams[0].client.token_endpoint"), "{err}");
        assert!(err.contains("upstreams[0].client.client_id"), "{err}");
        assert!(err.contains("upstreams[0].client.client_auth"), "{err}");
        assert!(err.contains("upstreams[0].client.scopes[0]"), "{err}");
    }
}
