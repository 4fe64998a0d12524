//! Authorize: the step after authenticate. Finds the policy of the route a request is on
//! (`[[routes]]`, first match wins, else the default policy) and decides whether the caller's
//! [`Identity`] may pass: the `[authorization]` rules (emails, email domains, verified email,
//! groups) for every non-public route, then the route's own groups and claims.
//! A denial is an outcome with a reason for the log and the 403 page, never an error.

use http::Method;
use serde_json::Value;

use crate::config::{AuthorizationConfig, Config, Policy, RouteConfig, RoutePath};
use crate::identity::Identity;
use crate::router::under_prefix;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny(String),
    /// The caller is who the route wants but its token lacks these scopes (RFC 6750 §3.1
    /// `insufficient_scope`); the answer names them so a client can ask for them.
    MissingScopes(Vec<String>),
}

#[derive(Debug)]
pub struct Authorizer {
    rules: AuthorizationConfig,
    routes: Vec<RouteConfig>,
    default: Policy,
}

impl Authorizer {
    pub fn new(config: &Config) -> Self {
        Self {
            rules: config.authorization.clone(),
            routes: config.routes.clone(),
            default: config.default_policy.clone(),
        }
    }

    /// The policy for a request; `path` is the normalised path (rule 21), never the query.
    pub fn policy(&self, method: &Method, host: &str, path: &str) -> &Policy {
        self.route(method, host, path).0
    }

    /// The policy for a request and whether its route accepts the password bridge.
    pub fn route(&self, method: &Method, host: &str, path: &str) -> (&Policy, bool) {
        self.routes
            .iter()
            .find(|r| {
                (r.methods.is_empty() || r.methods.contains(method))
                    && r.host.as_deref().is_none_or(|h| h == host)
                    && match &r.path {
                        RoutePath::Prefix(prefix) => under_prefix(path, prefix),
                        RoutePath::Regex(re) => re.is_match(path),
                    }
            })
            .map_or((&self.default, false), |r| (&r.policy, r.password_bridge))
    }

    /// `require_email_verified` (default true).
    pub fn requires_verified_email(&self) -> bool {
        self.rules.require_email_verified
    }

    /// The policy of requests no route matches.
    pub fn default_policy(&self) -> &Policy {
        &self.default
    }

    /// Whether the `[authorization]` rules let this identity in at all (checked at login too,
    /// so a person who may never pass gets no session).
    pub fn admit(&self, id: &Identity) -> Decision {
        let rules = &self.rules;
        let email_rules =
            !rules.allowed_emails.is_empty() || !rules.allowed_email_domains.is_empty();
        if email_rules {
            let Some(email) = id.email.as_deref() else {
                return Decision::Deny("no email address".into());
            };
            if rules.require_email_verified && !id.email_verified {
                return Decision::Deny("email address not verified".into());
            }
            if !email_allowed(email, &rules.allowed_emails, &rules.allowed_email_domains) {
                return Decision::Deny("email address not allowed".into());
            }
        }
        if !rules.allowed_groups.is_empty()
            && !id.groups.iter().any(|g| rules.allowed_groups.contains(g))
        {
            return Decision::Deny("not in an allowed group".into());
        }
        Decision::Allow
    }

    pub fn decide(&self, policy: &Policy, id: &Identity) -> Decision {
        match policy {
            Policy::Public => Decision::Allow,
            Policy::Authenticated => self.admit(id),
            Policy::Require {
                groups,
                claims,
                scopes,
            } => {
                if let Decision::Deny(reason) = self.admit(id) {
                    return Decision::Deny(reason);
                }
                if !groups.is_empty() && !id.groups.iter().any(|g| groups.contains(g)) {
                    return Decision::Deny(format!(
                        "requires one of the groups {}",
                        groups.join(", ")
                    ));
                }
                for (path, wanted) in claims {
                    let found = claim_at(&id.claims, path);
                    let ok = match found {
                        Some(Value::Array(values)) => values.iter().any(|v| wanted.contains(v)),
                        Some(v) => wanted.contains(v),
                        None => false,
                    };
                    if !ok {
                        return Decision::Deny(format!("requires claim {}", path.join(".")));
                    }
                }
                if scopes.iter().any(|s| !id.scopes.contains(s)) {
                    return Decision::MissingScopes(scopes.clone());
                }
                Decision::Allow
            }
        }
    }
}

/// The value at a dotted claim path (`realm_access.roles` as `["realm_access", "roles"]`).
pub fn claim_at<'a>(
    claims: &'a serde_json::Map<String, Value>,
    path: &[String],
) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    let mut value = claims.get(first)?;
    for key in rest {
        value = value.as_object()?.get(key)?;
    }
    Some(value)
}

/// The groups at `path`: an array of strings, or one string.
pub fn groups_at(claims: &serde_json::Map<String, Value>, path: &[String]) -> Vec<String> {
    match claim_at(claims, path) {
        Some(Value::Array(values)) => values
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        Some(Value::String(one)) => vec![one.clone()],
        _ => Vec::new(),
    }
}

/// Rule 29: exactly one `@`; domains compared whole; `.example.com` covers subdomains on a `.`
/// boundary only, so `badexample.com` never matches it.
fn email_allowed(email: &str, emails: &[String], domains: &[String]) -> bool {
    let email = email.to_ascii_lowercase();
    let mut parts = email.split('@');
    let (Some(local), Some(domain), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    if local.is_empty() || domain.is_empty() {
        return false;
    }
    if emails.contains(&email) {
        return true;
    }
    domains.iter().any(|d| {
        if d == "*" {
            true
        } else if let Some(suffix) = d.strip_prefix('.') {
            domain
                .strip_suffix(suffix)
                .is_some_and(|head| head.ends_with('.') && head.len() > 1)
        } else {
            domain == d
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authorizer(rules: AuthorizationConfig, routes: Vec<RouteConfig>) -> Authorizer {
        Authorizer {
            rules,
            routes,
            default: Policy::Authenticated,
        }
    }

    fn person(email: &str, verified: bool, groups: &[&str]) -> Identity {
        Identity {
            user: "u".into(),
            email: Some(email.into()),
            email_verified: verified,
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            ..Identity::default()
        }
    }

    #[test]
    fn email_domain_suffixes_match_on_a_dot_boundary_only() {
        let domains = vec![".example.com".to_owned(), "corp.test".to_owned()];
        assert!(email_allowed("a@eu.example.com", &[], &domains));
        assert!(!email_allowed("a@badexample.com", &[], &domains));
        assert!(!email_allowed("a@example.com.evil.io", &[], &domains));
        assert!(email_allowed("a@corp.test", &[], &domains));
        assert!(!email_allowed("a@sub.corp.test", &[], &domains));
        assert!(!email_allowed("a@corp.test.evil", &[], &domains));
    }

    #[test]
    fn an_email_with_two_at_signs_is_never_allowed() {
        let domains = vec!["example.com".to_owned()];
        assert!(!email_allowed("evil@evil.io@example.com", &[], &domains));
        assert!(!email_allowed("@example.com", &[], &domains));
        assert!(!email_allowed("alice@example.com@", &[], &domains));
        assert!(email_allowed("Alice@Example.com", &[], &domains));
    }

    #[test]
    fn unverified_emails_are_refused_when_email_rules_apply() {
        let a = authorizer(
            AuthorizationConfig {
                allowed_email_domains: vec!["example.com".into()],
                require_email_verified: true,
                groups_claim: vec!["groups".into()],
                ..AuthorizationConfig::default()
            },
            vec![],
        );
        assert_eq!(
            a.admit(&person("a@example.com", true, &[])),
            Decision::Allow
        );
        assert!(matches!(
            a.admit(&person("a@example.com", false, &[])),
            Decision::Deny(_)
        ));
        assert!(matches!(
            a.admit(&person("a@other.com", true, &[])),
            Decision::Deny(_)
        ));
    }

    #[test]
    fn route_policies_match_the_normalised_path_first_match_wins() {
        let routes = vec![
            RouteConfig {
                methods: vec![],
                host: None,
                path: RoutePath::Prefix("/public".into()),
                policy: Policy::Public,
                password_bridge: false,
            },
            RouteConfig {
                methods: vec![Method::POST],
                host: None,
                path: RoutePath::Regex(regex::Regex::new("^/api/.*/admin").unwrap()),
                policy: Policy::Require {
                    groups: vec!["admins".into()],
                    claims: vec![],
                    scopes: vec![],
                },
                password_bridge: false,
            },
        ];
        let a = authorizer(AuthorizationConfig::default(), routes);
        assert!(matches!(
            a.policy(&Method::GET, "h", "/public/x"),
            Policy::Public
        ));
        assert!(matches!(
            a.policy(&Method::GET, "h", "/publicity"),
            Policy::Authenticated
        ));
        assert!(matches!(
            a.policy(&Method::GET, "h", "/admin"),
            Policy::Authenticated
        ));
        assert!(matches!(
            a.policy(&Method::POST, "h", "/api/v1/admin"),
            Policy::Require { .. }
        ));
        assert!(matches!(
            a.policy(&Method::GET, "h", "/api/v1/admin"),
            Policy::Authenticated
        ));
    }

    #[test]
    fn group_and_claim_requirements() {
        let a = authorizer(AuthorizationConfig::default(), vec![]);
        let policy = Policy::Require {
            groups: vec!["admins".into()],
            claims: vec![(
                vec!["realm_access".into(), "roles".into()],
                vec![Value::String("ops".into())],
            )],
            scopes: vec![],
        };
        let mut id = person("a@example.com", true, &["admins"]);
        assert!(matches!(a.decide(&policy, &id), Decision::Deny(_)));
        std::sync::Arc::make_mut(&mut id.claims).insert(
            "realm_access".into(),
            serde_json::json!({ "roles": ["dev", "ops"] }),
        );
        assert_eq!(a.decide(&policy, &id), Decision::Allow);
        id.groups = vec!["staff".into()];
        assert!(matches!(a.decide(&policy, &id), Decision::Deny(_)));
    }

    #[test]
    fn every_required_scope_must_be_granted() {
        let a = authorizer(AuthorizationConfig::default(), vec![]);
        let policy = Policy::Require {
            groups: vec![],
            claims: vec![],
            scopes: vec!["orders:read".into(), "orders:write".into()],
        };
        let mut id = person("a@example.com", true, &[]);
        id.scopes = vec!["orders:read".into()];
        assert_eq!(
            a.decide(&policy, &id),
            Decision::MissingScopes(vec!["orders:read".into(), "orders:write".into()])
        );
        id.scopes.push("orders:write".into());
        assert_eq!(a.decide(&policy, &id), Decision::Allow);
    }

    #[test]
    fn groups_come_from_a_dotted_claim_path() {
        let claims = serde_json::json!({"realm_access": {"roles": ["a", "b"]}, "groups": "solo"});
        let claims = claims.as_object().unwrap();
        assert_eq!(
            groups_at(claims, &["realm_access".into(), "roles".into()]),
            ["a", "b"]
        );
        assert_eq!(groups_at(claims, &["groups".into()]), ["solo"]);
        assert!(groups_at(claims, &["missing".into()]).is_empty());
    }
}
