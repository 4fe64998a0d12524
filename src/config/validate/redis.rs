//! Configuration of `[session] store` and the `redis_*` keys: where sessions live and how to
//! reach Redis (standalone, Sentinel or Cluster; `rediss://` for TLS; password and ACL user).
//! Passwords are taken out of URLs here, so nothing after this prints one.

use std::path::PathBuf;
use std::time::Duration;

use toml_edit::{Array, Table, value};
use url::Url;

use super::{Ctx, KeyPath};
use crate::config::{RedisConfig, RedisTopology, Secret, StoreConfig};

const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_secs(1);

/// The `redis_*` keys of `[session]`, as written.
#[derive(Debug, Default)]
pub(super) struct RawRedis {
    pub url: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub password_file: Option<String>,
    pub sentinels: Option<Vec<String>>,
    pub sentinel_master: Option<String>,
    pub cluster: Option<Vec<String>>,
    pub tls_ca_file: Option<String>,
    pub timeout: Option<String>,
}

impl RawRedis {
    /// The keys that are set, by name, in the order the example documents them.
    fn given(&self) -> Vec<&'static str> {
        [
            ("redis_url", self.url.is_some()),
            ("redis_username", self.username.is_some()),
            ("redis_password", self.password.is_some()),
            ("redis_password_file", self.password_file.is_some()),
            ("redis_sentinels", self.sentinels.is_some()),
            ("redis_sentinel_master", self.sentinel_master.is_some()),
            ("redis_cluster", self.cluster.is_some()),
            ("redis_tls_ca_file", self.tls_ca_file.is_some()),
            ("redis_timeout", self.timeout.is_some()),
        ]
        .into_iter()
        .filter_map(|(k, set)| set.then_some(k))
        .collect()
    }
}

/// User and password found in a URL (percent-decoded), and the URL without them.
struct Parsed {
    url: Url,
    username: Option<String>,
    password: Option<String>,
}

impl Ctx<'_> {
    pub(super) fn session_store(
        &mut self,
        p: &KeyPath,
        store: Option<&str>,
        raw: RawRedis,
    ) -> Option<StoreConfig> {
        match store {
            None | Some("cookie") => {
                // A Redis setting with the cookie store is a deployment that believes it shares
                // sessions and does not: say so rather than ignore it.
                for key in raw.given() {
                    self.problem(
                        &p.key(key),
                        "only used with store = \"redis\" (the store is \"cookie\")",
                    );
                }
                Some(StoreConfig::Cookie)
            }
            Some("redis") => self.redis(p, raw).map(StoreConfig::Redis),
            Some(other) => {
                self.problem(
                    &p.key("store"),
                    format!("`{other}` is not one of \"cookie\", \"redis\""),
                );
                None
            }
        }
    }

    fn redis(&mut self, p: &KeyPath, raw: RawRedis) -> Option<RedisConfig> {
        let topologies: Vec<&str> = [
            ("redis_url", raw.url.is_some()),
            ("redis_sentinels", raw.sentinels.is_some()),
            ("redis_cluster", raw.cluster.is_some()),
        ]
        .into_iter()
        .filter_map(|(k, set)| set.then_some(k))
        .collect();
        match topologies.as_slice() {
            [] => {
                self.problem(
                    &p.key("store"),
                    "\"redis\" needs one of `redis_url`, `redis_sentinels` (with `redis_sentinel_master`) or `redis_cluster`",
                );
                return None;
            }
            [_] => {}
            [first, second, ..] => {
                self.problem(
                    &p.key(second),
                    format!("set only one of `redis_url`, `redis_sentinels`, `redis_cluster` (also set: `{first}`)"),
                );
                return None;
            }
        }
        if raw.sentinel_master.is_some() && raw.sentinels.is_none() {
            self.problem(
                &p.key("redis_sentinel_master"),
                "only used with `redis_sentinels`",
            );
        }
        // (the key path of each URL, its text)
        let mut found: Vec<(KeyPath, Parsed)> = Vec::new();
        let mut ok = true;
        let topology_key = topologies.first().copied().unwrap_or("redis_url");
        let mut wanted: Vec<(KeyPath, &str, bool)> = Vec::new();
        if let Some(url) = &raw.url {
            wanted.push((p.key("redis_url"), url, true));
        }
        for (key, list) in [
            ("redis_sentinels", &raw.sentinels),
            ("redis_cluster", &raw.cluster),
        ] {
            let Some(list) = list else { continue };
            if list.is_empty() {
                self.problem(&p.key(key), "at least one URL is required");
                ok = false;
            }
            for (i, url) in list.iter().enumerate() {
                wanted.push((p.key(key).index(i), url, false));
            }
        }
        for (path, text, db_allowed) in wanted {
            match self.redis_url(&path, text, db_allowed) {
                Some(parsed) => found.push((path, parsed)),
                None => ok = false,
            }
        }
        let master = match (&raw.sentinels, raw.sentinel_master) {
            (Some(_), Some(m)) if !m.trim().is_empty() => Some(m),
            (Some(_), Some(_)) => {
                self.problem(&p.key("redis_sentinel_master"), "must not be empty");
                None
            }
            (Some(_), None) => {
                self.problem(
                    &p.key("redis_sentinel_master"),
                    "missing required key `redis_sentinel_master` (the master's name the sentinels monitor)",
                );
                None
            }
            (None, _) => None,
        };
        // One scheme and one set of credentials for every node: mixing them is a typo.
        if let Some((_, first)) = found.first() {
            let scheme = first.url.scheme().to_owned();
            let creds = (first.username.clone(), first.password.clone());
            for (path, other) in found.iter().skip(1) {
                if other.url.scheme() != scheme {
                    self.problem(
                        path,
                        format!(
                            "every URL must use the same scheme (`{scheme}://` first, then `{}://`)",
                            other.url.scheme()
                        ),
                    );
                    ok = false;
                }
                if (other.username.clone(), other.password.clone()) != creds {
                    self.problem(path, "every URL must carry the same user and password");
                    ok = false;
                }
            }
        }
        let (url_user, url_password) = found
            .first()
            .map(|(_, f)| (f.username.clone(), f.password.clone()))
            .unwrap_or_default();
        let username = match (url_user, raw.username) {
            (Some(_), Some(_)) => {
                self.problem(
                    &p.key("redis_username"),
                    format!("the user is already in `{topology_key}`; set it once"),
                );
                None
            }
            (Some(u), None) => Some(u),
            (None, Some(u)) if u.trim().is_empty() => {
                self.problem(&p.key("redis_username"), "must not be empty");
                None
            }
            (None, u) => u,
        };
        let given_password = raw.password.is_some() || raw.password_file.is_some();
        let password = if url_password.is_some() && given_password {
            let key = if raw.password.is_some() {
                "redis_password"
            } else {
                "redis_password_file"
            };
            self.problem(
                &p.key(key),
                format!("the password is already in `{topology_key}`; set it once"),
            );
            None
        } else if let Some(pw) = url_password {
            Some(Secret::new(pw))
        } else {
            self.secret_or_file(p, "redis_password", raw.password, raw.password_file, false)
        };
        if !ok {
            return None;
        }
        let tls = found
            .first()
            .is_some_and(|(_, f)| f.url.scheme() == "rediss");
        let mut urls = found.into_iter().map(|(_, f)| f.url);
        let topology = if raw.url.is_some() {
            RedisTopology::Standalone(urls.next()?)
        } else if raw.sentinels.is_some() {
            RedisTopology::Sentinel {
                sentinels: urls.collect(),
                master: master?,
            }
        } else {
            RedisTopology::Cluster(urls.collect())
        };
        let tls_ca_file = match raw.tls_ca_file {
            Some(file) if tls => {
                let path = p.key("redis_tls_ca_file");
                let (pem, _) = self.pem_certs(&path, &file)?;
                Some((PathBuf::from(file), pem))
            }
            Some(_) => {
                self.problem(
                    &p.key("redis_tls_ca_file"),
                    format!("only used with rediss:// URLs (`{topology_key}` is redis://)"),
                );
                return None;
            }
            None => None,
        };
        let timeout = self.redis_timeout(&p.key("redis_timeout"), raw.timeout);
        Some(RedisConfig {
            topology,
            username,
            password,
            tls_ca_file,
            timeout,
        })
    }

    /// Long enough for a TLS handshake to a remote Redis, short enough that an outage answers
    /// 503 before clients give up.
    fn redis_timeout(&mut self, path: &KeyPath, text: Option<String>) -> Duration {
        let timeout = self.duration(path, text, DEFAULT_REDIS_TIMEOUT);
        if (Duration::from_millis(100)..=Duration::from_secs(60)).contains(&timeout) {
            return timeout;
        }
        self.problem(path, "must be between 100ms and 60s");
        DEFAULT_REDIS_TIMEOUT
    }

    /// One `redis://` or `rediss://` URL: a host, an optional port, a database number in the
    /// path only where `db_allowed` (Sentinel masters and Cluster have database 0 only), no
    /// query or fragment (the crate reads switches such as `#insecure` from them).
    fn redis_url(&mut self, path: &KeyPath, text: &str, db_allowed: bool) -> Option<Parsed> {
        let mut url = match Url::parse(text) {
            Ok(u) => u,
            Err(e) => {
                self.problem(path, format!("`{text}` is not a URL: {e}"));
                return None;
            }
        };
        // Never echo a URL that may carry a password.
        let shown = {
            let mut s = url.clone();
            if s.password().is_some() {
                let _ = s.set_password(Some("redacted"));
            }
            s.to_string()
        };
        if !matches!(url.scheme(), "redis" | "rediss") {
            self.problem(
                path,
                format!("`{shown}` must start with redis:// or rediss:// (TLS)"),
            );
            return None;
        }
        if url.host_str().is_none_or(str::is_empty) {
            self.problem(path, format!("`{shown}` has no host"));
            return None;
        }
        if url.query().is_some() || url.fragment().is_some() {
            self.problem(
                path,
                format!("`{shown}`: a query or fragment is not supported; use the redis_* keys"),
            );
            return None;
        }
        let db = url.path().trim_start_matches('/');
        if !db.is_empty() {
            if !db_allowed {
                self.problem(
                    path,
                    format!("`{shown}`: no database number here (only database 0 is used)"),
                );
                return None;
            }
            if db.parse::<u16>().is_err() {
                self.problem(
                    path,
                    format!("`{shown}`: the path must be a database number like /0"),
                );
                return None;
            }
        }
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        let username = Some(decode(url.username())).filter(|u| !u.is_empty());
        let password = url.password().map(decode);
        let _ = url.set_password(None);
        let _ = url.set_username("");
        Some(Parsed {
            url,
            username,
            password,
        })
    }
}

/// For `render_effective`: the password only as `[redacted]`.
pub(super) fn render(t: &mut Table, store: &StoreConfig) {
    let StoreConfig::Redis(r) = store else {
        t["store"] = value("cookie");
        return;
    };
    t["store"] = value("redis");
    let urls = |list: &[Url]| Array::from_iter(list.iter().map(Url::as_str));
    match &r.topology {
        RedisTopology::Standalone(url) => t["redis_url"] = value(url.as_str()),
        RedisTopology::Sentinel { sentinels, master } => {
            t["redis_sentinels"] = value(urls(sentinels));
            t["redis_sentinel_master"] = value(master.as_str());
        }
        RedisTopology::Cluster(nodes) => t["redis_cluster"] = value(urls(nodes)),
    }
    if let Some(u) = &r.username {
        t["redis_username"] = value(u.as_str());
    }
    if let Some(pw) = &r.password {
        t["redis_password"] = value(pw.to_string());
    }
    if let Some((file, _)) = &r.tls_ca_file {
        t["redis_tls_ca_file"] = value(file.display().to_string());
    }
    t["redis_timeout"] = value(super::format_duration(r.timeout));
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{Config, RedisTopology, StoreConfig, load_str, render_effective};

    const KEY32: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";

    /// A login configuration whose `[session]` holds `session` (line 9 onwards).
    fn text(session: &str) -> String {
        format!(
            "[server]\npublic_url = \"https://app.example.com\"\n[provider]\nissuer = \"https://idp.example.com\"\nclient_id = \"gh\"\nclient_secret = \"s3cret\"\n\n[session]\n{session}\nsecret = \"{KEY32}\"\n[[upstreams]]\nurl = \"http://127.0.0.1:8080\"\n"
        )
    }

    fn load(session: &str) -> Result<Config, Vec<String>> {
        load_str(&text(session), Some(Path::new("gatehouse.toml")), &[])
            .map_err(|e| e.problems.iter().map(ToString::to_string).collect())
    }

    fn store(session: &str) -> StoreConfig {
        load(session).unwrap().session.unwrap().store
    }

    fn redis(session: &str) -> crate::config::RedisConfig {
        match store(session) {
            StoreConfig::Redis(r) => r,
            StoreConfig::Cookie => panic!("cookie store"),
        }
    }

    #[test]
    fn cookie_is_the_default_store() {
        assert!(matches!(store(""), StoreConfig::Cookie));
        assert!(matches!(store("store = \"cookie\""), StoreConfig::Cookie));
    }

    #[test]
    fn redis_timeout_defaults_to_a_second_and_is_bounded() {
        let url = "store = \"redis\"\nredis_url = \"redis://redis.internal\"";
        assert_eq!(redis(url).timeout, std::time::Duration::from_secs(1));
        let five = redis(&format!("{url}\nredis_timeout = \"5s\""));
        assert_eq!(five.timeout, std::time::Duration::from_secs(5));
        for bad in ["10ms", "2m"] {
            let problems = load(&format!("{url}\nredis_timeout = \"{bad}\"")).unwrap_err();
            assert!(
                problems[0].contains("session.redis_timeout: must be between 100ms and 60s"),
                "{problems:?}"
            );
        }
        let cookie = load("redis_timeout = \"5s\"").unwrap_err();
        assert!(
            cookie[0].contains("session.redis_timeout: only used with store = \"redis\""),
            "{cookie:?}"
        );
    }

    #[test]
    fn standalone_url_with_credentials_moves_them_out_of_the_url() {
        let r =
            redis("store = \"redis\"\nredis_url = \"rediss://app:p%40ss@cache.internal:6380/2\"");
        let RedisTopology::Standalone(url) = &r.topology else {
            panic!("{r:?}")
        };
        assert_eq!(url.as_str(), "rediss://cache.internal:6380/2");
        assert_eq!(r.username.as_deref(), Some("app"));
        assert_eq!(r.password.as_ref().unwrap().expose(), "p@ss");
        assert!(!format!("{r:?}").contains("p@ss"));
    }

    #[test]
    fn password_file_and_acl_user_keys() {
        let dir = std::env::temp_dir().join(format!("gatehouse-redis-pw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("pw");
        std::fs::write(&f, "from-file\n").unwrap();
        let r = redis(&format!(
            "store = \"redis\"\nredis_url = \"redis://127.0.0.1\"\nredis_username = \"gw\"\nredis_password_file = \"{}\"",
            f.display()
        ));
        assert_eq!(r.username.as_deref(), Some("gw"));
        assert_eq!(r.password.unwrap().expose(), "from-file");
    }

    #[test]
    fn a_private_ca_is_read_at_start_and_only_for_rediss() {
        let dir = std::env::temp_dir().join(format!("gatehouse-redis-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("ca.pem");
        let ca = rcgen::generate_simple_self_signed(vec!["redis.internal".into()]).unwrap();
        std::fs::write(&f, ca.cert.pem()).unwrap();
        let r = redis(&format!(
            "store = \"redis\"\nredis_url = \"rediss://redis.internal\"\nredis_tls_ca_file = \"{}\"",
            f.display()
        ));
        let (file, pem) = r.tls_ca_file.unwrap();
        assert_eq!(file, f);
        use rustls::pki_types::pem::PemObject as _;
        let certs = rustls::pki_types::CertificateDer::pem_slice_iter(&pem);
        assert_eq!(certs.filter(Result::is_ok).count(), 1);

        let plain = load(&format!(
            "store = \"redis\"\nredis_url = \"redis://redis.internal\"\nredis_tls_ca_file = \"{}\"",
            f.display()
        ))
        .unwrap_err();
        assert!(
            plain[0].contains("session.redis_tls_ca_file: only used with rediss:// URLs"),
            "{plain:?}"
        );
        let missing = load(
            "store = \"redis\"\nredis_url = \"rediss://redis.internal\"\nredis_tls_ca_file = \"/nonexistent/ca.pem\"",
        )
        .unwrap_err();
        assert!(
            missing[0].contains("session.redis_tls_ca_file: cannot read /nonexistent/ca.pem"),
            "{missing:?}"
        );
    }

    #[test]
    fn sentinel_and_cluster_topologies() {
        let r = redis(
            "store = \"redis\"\nredis_sentinels = [\"redis://s1:26379\", \"redis://s2:26379\"]\nredis_sentinel_master = \"mymaster\"\nredis_password = \"pw\"",
        );
        let RedisTopology::Sentinel { sentinels, master } = &r.topology else {
            panic!("{r:?}")
        };
        assert_eq!(sentinels.len(), 2);
        assert_eq!(master, "mymaster");
        let r =
            redis("store = \"redis\"\nredis_cluster = [\"redis://n1:7000\", \"redis://n2:7000\"]");
        assert!(matches!(&r.topology, RedisTopology::Cluster(n) if n.len() == 2));
    }

    #[test]
    fn every_problem_names_its_key_and_line() {
        let cases: [(&str, &str); 12] = [
            (
                "store = \"memcached\"",
                "gatehouse.toml:9:9: session.store: `memcached` is not one of \"cookie\", \"redis\"",
            ),
            (
                "store = \"redis\"",
                "gatehouse.toml:9:9: session.store: \"redis\" needs one of",
            ),
            (
                "redis_url = \"redis://x\"",
                "gatehouse.toml:9:13: session.redis_url: only used with store = \"redis\"",
            ),
            (
                "store = \"redis\"\nredis_url = \"redis://x\"\nredis_cluster = [\"redis://y\"]",
                "gatehouse.toml:11:17: session.redis_cluster: set only one of",
            ),
            (
                "store = \"redis\"\nredis_url = \"http://x\"",
                "gatehouse.toml:10:13: session.redis_url: `http://x/` must start with redis:// or rediss://",
            ),
            (
                "store = \"redis\"\nredis_url = \"redis://x/abc\"",
                "session.redis_url: `redis://x/abc`: the path must be a database number",
            ),
            (
                "store = \"redis\"\nredis_url = \"redis://x/#insecure\"",
                "session.redis_url: `redis://x/#insecure`: a query or fragment is not supported",
            ),
            (
                "store = \"redis\"\nredis_cluster = [\"redis://a\", \"redis://b/1\"]",
                "gatehouse.toml:10:31: session.redis_cluster[1]: `redis://b/1`: no database number here",
            ),
            (
                "store = \"redis\"\nredis_cluster = [\"redis://a\", \"rediss://b\"]",
                "session.redis_cluster[1]: every URL must use the same scheme",
            ),
            (
                "store = \"redis\"\nredis_sentinels = [\"redis://a\"]",
                "session.redis_sentinel_master: missing required key",
            ),
            (
                "store = \"redis\"\nredis_url = \"redis://:pw@x\"\nredis_password = \"other\"",
                "gatehouse.toml:11:18: session.redis_password: the password is already in `redis_url`; set it once",
            ),
            (
                "store = \"redis\"\nredis_url = \"redis://u@x\"\nredis_username = \"v\"",
                "session.redis_username: the user is already in `redis_url`",
            ),
        ];
        for (session, want) in cases {
            let p = load(session)
                .err()
                .unwrap_or_else(|| panic!("no problem for {session}"));
            assert!(
                p.iter().any(|l| l.contains(want)),
                "{session}\n{p:#?}\nwant {want}"
            );
        }
    }

    #[test]
    fn a_password_in_a_url_is_never_echoed_in_a_message() {
        let p = load("store = \"redis\"\nredis_url = \"http://u:hunter2@x\"").unwrap_err();
        assert!(p.iter().all(|l| !l.contains("hunter2")), "{p:?}");
        assert!(p[0].contains("u:redacted@x"), "{p:?}");
    }

    #[test]
    fn check_config_redacts_the_redis_password() {
        for session in [
            "store = \"redis\"\nredis_url = \"redis://app:hunter2@cache:6379/1\"",
            "store = \"redis\"\nredis_cluster = [\"rediss://n1\"]\nredis_password = \"hunter2\"",
        ] {
            let c = load(session).unwrap();
            let out = render_effective(&c);
            assert!(!out.contains("hunter2"), "{out}");
            assert!(out.contains("redis_password = \"[redacted]\""), "{out}");
            assert!(out.contains("store = \"redis\""), "{out}");
        }
    }
}
