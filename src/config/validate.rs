//! Configuration step 3 of 3: parse once, then validate once. Reads the text (syntax errors
//! stop here), applies environment overrides, deserializes into the raw mirror while
//! collecting every type error and unknown key, then checks every value and builds the
//! typed [`Config`]. All problems are returned together, each with where it came from.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use ipnet::IpNet;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use toml_edit::{Item, Table};
use url::Url;

use jsonwebtoken::{Algorithm, AlgorithmFamily};

mod bearer;
mod client;
mod redis;

use super::raw::{
    RawAuthorization, RawClientAuth, RawConfig, RawHeaders, RawLog, RawMetrics, RawProvider,
    RawRoute, RawServer, RawSession, RawTls, RawUpstream,
};
use super::{
    AuthorizationConfig, ClientAuth, Config, HeadersConfig, IdentityNames, LogConfig, LogFormat,
    MetricsConfig, Policy, ProviderConfig, ProviderEndpoints, RouteConfig, RoutePath, SameSite,
    Secret, ServerConfig, SessionConfig, TlsConfig, UpstreamConfig, env,
};

/// Every problem found in one configuration; `Display` prints one line per problem.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// Where a problem's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// `file` as given (`<config>` for text without a path); line and column are 1-based.
    File {
        file: String,
        line: usize,
        column: usize,
    },
    /// An environment override, by variable name.
    Env { var: String },
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File { file, line, column } => write!(f, "{file}:{line}:{column}"),
            Self::Env { var } => write!(f, "env {var}"),
        }
    }
}

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub location: Location,
    /// Key path like `upstreams[0].url`; empty for syntax errors.
    pub path: String,
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}: {}", self.location, self.reason)
        } else {
            write!(f, "{}: {}: {}", self.location, self.path, self.reason)
        }
    }
}

/// Reads `path` and loads it with the process's `GATEHOUSE_*` overrides.
pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    let vars: Vec<(String, String)> = std::env::vars().collect();
    match std::fs::read_to_string(path) {
        Ok(text) => load_str(&text, Some(path), &vars),
        Err(e) => Err(ConfigError {
            problems: vec![Problem {
                location: Location::File {
                    file: path.display().to_string(),
                    line: 1,
                    column: 1,
                },
                path: String::new(),
                reason: format!("cannot read {}: {e}", path.display()),
            }],
        }),
    }
}

/// Loads configuration text; `env` holds candidate overrides (only `GATEHOUSE_*` are used).
pub fn load_str(
    text: &str,
    source: Option<&Path>,
    env: &[(String, String)],
) -> Result<Config, ConfigError> {
    let file = source.map_or_else(|| "<config>".to_owned(), |p| p.display().to_string());
    let doc = match toml_edit::Document::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            let (line, column) = line_col(text, e.span().map_or(0, |s| s.start));
            return Err(ConfigError {
                problems: vec![Problem {
                    location: Location::File { file, line, column },
                    path: String::new(),
                    reason: e.message().trim().replace('\n', "; "),
                }],
            });
        }
    };
    let mut root = doc.into_table();
    let applied = env::apply(&mut root, text.len(), env);
    let mut ctx = Ctx {
        text,
        file,
        root,
        applied,
        problems: Vec::new(),
    };
    for (var, path, reason) in std::mem::take(&mut ctx.applied.problems) {
        ctx.problems.push(Problem {
            location: Location::Env { var },
            path,
            reason,
        });
    }
    let raw = ctx.deserialize();
    let config = ctx.build(raw, source);
    if ctx.problems.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError {
            problems: ctx.problems,
        })
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, column)
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

/// A key path, displayed as `upstreams[0].url`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct KeyPath(Vec<Seg>);

impl KeyPath {
    fn key(&self, k: &str) -> Self {
        let mut v = self.0.clone();
        v.push(Seg::Key(k.to_owned()));
        Self(v)
    }
    fn index(&self, i: usize) -> Self {
        let mut v = self.0.clone();
        v.push(Seg::Index(i));
        Self(v)
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 => f.write_str(k)?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

fn child<'a>(item: &'a Item, seg: &Seg) -> Option<(&'a Item, Option<Range<usize>>)> {
    match seg {
        Seg::Key(k) => {
            let (key, value) = item.as_table_like()?.get_key_value(k)?;
            Some((value, value.span().or_else(|| key.span())))
        }
        Seg::Index(i) => {
            if let Some(aot) = item.as_array_of_tables() {
                let t = aot.get(*i)?;
                // Array-of-tables elements are stored as tables, but navigation wants items.
                return Some((item.get(*i)?, t.span()));
            }
            let v = item.as_array()?.get(*i)?;
            Some((item.get(*i)?, v.span()))
        }
    }
}

/// The deepest entry whose key or value span covers `span.start`.
fn find_by_span(item: &Item, path: &KeyPath, start: usize, best: &mut Option<KeyPath>) {
    if let Some(t) = item.as_table_like() {
        for (k, _) in t.iter() {
            if let Some((key, value)) = t.get_key_value(k) {
                let here = path.key(k);
                let hit = key
                    .span()
                    .is_some_and(|s| s.contains(&start) || s.start == start)
                    || value.span().is_some_and(|s| s.contains(&start));
                if hit {
                    *best = Some(here.clone());
                }
                find_by_span(value, &here, start, best);
            }
        }
    } else if let Some(aot) = item.as_array_of_tables() {
        for (i, t) in aot.iter().enumerate() {
            let here = path.index(i);
            if t.span().is_some_and(|s| s.contains(&start)) {
                *best = Some(here.clone());
            }
            find_by_span(&Item::Table(t.clone()), &here, start, best);
        }
    } else if let Some(arr) = item.as_array() {
        for (i, v) in arr.iter().enumerate() {
            let here = path.index(i);
            if v.span().is_some_and(|s| s.contains(&start)) {
                *best = Some(here.clone());
            }
            find_by_span(&Item::Value(v.clone()), &here, start, best);
        }
    }
}

fn remove_path(root: &mut Table, path: &KeyPath) -> bool {
    let Some((Seg::Key(first), rest)) = path.0.split_first() else {
        return false;
    };
    if rest.is_empty() {
        return root.remove(first).is_some();
    }
    root.get_mut(first)
        .is_some_and(|item| remove_in(item, rest))
}

fn remove_in(item: &mut Item, path: &[Seg]) -> bool {
    match path {
        [] => false,
        [Seg::Key(k)] => item
            .as_table_like_mut()
            .is_some_and(|t| t.remove(k).is_some()),
        [Seg::Index(n)] => {
            if let Some(aot) = item.as_array_of_tables_mut()
                && *n < aot.len()
            {
                aot.remove(*n);
                return true;
            }
            if let Some(arr) = item.as_array_mut()
                && *n < arr.len()
            {
                arr.remove(*n);
                return true;
            }
            false
        }
        [Seg::Key(k), rest @ ..] => item
            .get_mut(k.as_str())
            .is_some_and(|next| remove_in(next, rest)),
        [Seg::Index(n), rest @ ..] => item.get_mut(*n).is_some_and(|next| remove_in(next, rest)),
    }
}

struct Ctx<'a> {
    text: &'a str,
    file: String,
    root: Table,
    applied: env::Applied,
    problems: Vec<Problem>,
}

impl Ctx<'_> {
    fn span_location(&self, span: &Range<usize>) -> Location {
        if span.start < self.text.len() {
            let (line, column) = line_col(self.text, span.start);
            return Location::File {
                file: self.file.clone(),
                line,
                column,
            };
        }
        let var = self
            .applied
            .spans
            .iter()
            .find(|(r, _)| r.contains(&span.start))
            .map_or_else(|| env::PREFIX.to_owned(), |(_, v)| v.clone());
        Location::Env { var }
    }

    /// Where `path` is, or for a missing key, where the nearest table that lacks it is.
    fn locate(&self, path: &KeyPath) -> Location {
        let root = Item::Table(self.root.clone());
        let mut item = &root;
        let mut span = None;
        let mut reached = KeyPath::default();
        for seg in &path.0 {
            let Some((next, s)) = child(item, seg) else {
                break;
            };
            item = next;
            reached.0.push(seg.clone());
            if s.is_some() {
                span = s;
            } else {
                // A table created by an override has no span: the override is the location.
                let shown = reached.to_string();
                if let Some((_, var)) = self.applied.created.iter().find(|(p, _)| *p == shown) {
                    return Location::Env { var: var.clone() };
                }
            }
        }
        match span {
            Some(s) => self.span_location(&s),
            None => Location::File {
                file: self.file.clone(),
                line: 1,
                column: 1,
            },
        }
    }

    fn problem(&mut self, path: &KeyPath, reason: impl Into<String>) {
        let shown = path.to_string();
        // A key already reported (say, of the wrong type, and so removed) must not be
        // reported again as missing, nor its contents as wrong.
        let covered = self.problems.iter().any(|p| {
            !p.path.is_empty()
                && shown
                    .strip_prefix(p.path.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
        });
        if covered {
            return;
        }
        let location = self.locate(path);
        self.problems.push(Problem {
            location,
            path: path.to_string(),
            reason: reason.into(),
        });
    }

    /// Deserializes the raw mirror; on each error, records it and removes the offending
    /// entry, then tries again, so every type error and unknown key is reported at once.
    fn deserialize(&mut self) -> RawConfig {
        for _ in 0..1000 {
            let doc = toml_edit::DocumentMut::from(self.root.clone());
            let err = match toml_edit::de::from_document::<RawConfig>(doc) {
                Ok(raw) => return raw,
                Err(err) => err,
            };
            let reason = reword(err.message());
            let Some(span) = err.span() else {
                self.problems.push(Problem {
                    location: self.locate(&KeyPath::default()),
                    path: String::new(),
                    reason,
                });
                return RawConfig::default();
            };
            let mut best = None;
            find_by_span(
                &Item::Table(self.root.clone()),
                &KeyPath::default(),
                span.start,
                &mut best,
            );
            let location = self.span_location(&span);
            let path = best.unwrap_or_default();
            self.problems.push(Problem {
                location,
                path: path.to_string(),
                reason,
            });
            if !remove_path(&mut self.root, &path) {
                return RawConfig::default();
            }
        }
        RawConfig::default()
    }

    fn build(&mut self, raw: RawConfig, source: Option<&Path>) -> Config {
        let server = self.server(raw.server.unwrap_or_default());
        let log = self.log(raw.log.unwrap_or_default());
        let metrics = raw.metrics.and_then(|m| self.metrics(m, &server));
        let headers = self.headers(raw.headers.unwrap_or_default());
        let upstreams = self.upstreams(raw.upstreams, raw.provider.is_some());
        // Whether `[provider]` is written, even when it has problems of its own: a broken
        // provider must not also make every protected route a problem.
        let has_provider = raw.provider.is_some();
        let provider = raw.provider.and_then(|p| self.provider(p, &server));
        let session = match raw.session {
            Some(s) => self.session(s, &server),
            None => {
                if has_provider {
                    self.problem(
                        &KeyPath::default().key("session"),
                        "[session] is required with [provider]",
                    );
                }
                None
            }
        };
        // Bearer issuers and introspection authenticate callers too, so routes may require
        // authentication without a login provider.
        let has_issuers = raw
            .bearer
            .as_ref()
            .is_some_and(bearer::authenticates_callers);
        let can_authenticate = has_provider || has_issuers;
        let bearer = raw
            .bearer
            .and_then(|b| self.bearer(b, provider.as_ref(), has_provider));
        let password_bridge = raw.password_bridge.and_then(|b| {
            self.password_bridge(b, provider.as_ref(), has_provider, bearer.as_ref())
        });
        let (authorization, default_policy) =
            self.authorization(raw.authorization.unwrap_or_default(), can_authenticate);
        let routes = self.routes(
            raw.routes.unwrap_or_default(),
            can_authenticate,
            password_bridge.is_some(),
        );
        Config {
            source: source.map(Path::to_path_buf),
            server,
            log,
            metrics,
            headers,
            upstreams,
            provider,
            session,
            authorization,
            routes,
            default_policy,
            bearer,
            password_bridge,
        }
    }

    fn duration(&mut self, path: &KeyPath, value: Option<String>, default: Duration) -> Duration {
        match value.map(|v| parse_duration(&v)) {
            None => default,
            Some(Ok(d)) => d,
            Some(Err(reason)) => {
                self.problem(path, reason);
                default
            }
        }
    }

    fn int_in(
        &mut self,
        path: &KeyPath,
        value: Option<i64>,
        default: usize,
        range: std::ops::RangeInclusive<usize>,
    ) -> usize {
        let Some(v) = value else { return default };
        match usize::try_from(v) {
            Ok(n) if range.contains(&n) => n,
            _ => {
                self.problem(
                    path,
                    format!("{v} is out of range {}..={}", range.start(), range.end()),
                );
                default
            }
        }
    }

    fn server(&mut self, raw: RawServer) -> ServerConfig {
        let p = KeyPath::default().key("server");
        let default_listen = SocketAddr::from(([127, 0, 0, 1], 4180));
        let listen = match raw.listen {
            None => default_listen,
            Some(s) => s.parse().unwrap_or_else(|_| {
                self.problem(
                    &p.key("listen"),
                    format!("`{s}` is not an IP address and port like 127.0.0.1:4180"),
                );
                default_listen
            }),
        };
        let public_url = raw.public_url.and_then(|s| {
            check_http_url(&s)
                .map_err(|reason| self.problem(&p.key("public_url"), reason))
                .ok()
        });
        let proxy_prefix = raw.proxy_prefix.unwrap_or_else(|| "/oauth2".into());
        if !proxy_prefix.starts_with('/') || proxy_prefix.ends_with('/') {
            self.problem(
                &p.key("proxy_prefix"),
                format!("`{proxy_prefix}` must start with `/` and not end with `/`"),
            );
        }
        let shutdown_timeout = self.duration(
            &p.key("shutdown_timeout"),
            raw.shutdown_timeout,
            Duration::from_secs(30),
        );
        let header_read_timeout = self.duration(
            &p.key("header_read_timeout"),
            raw.header_read_timeout,
            Duration::from_secs(10),
        );
        let body_read_timeout = self.duration(
            &p.key("body_read_timeout"),
            raw.body_read_timeout,
            Duration::from_secs(60),
        );
        if body_read_timeout.is_zero() {
            self.problem(&p.key("body_read_timeout"), "must be more than 0s");
        }
        let max_header_bytes = self.int_in(
            &p.key("max_header_bytes"),
            raw.max_header_bytes,
            32768,
            1024..=1_048_576,
        );
        let max_headers = self.int_in(&p.key("max_headers"), raw.max_headers, 100, 1..=1000);
        let workers = self.int_in(&p.key("workers"), raw.workers, 0, 0..=1024);
        let mut trusted_proxies = Vec::new();
        for (i, s) in raw
            .trusted_proxies
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            let parsed = s
                .parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from));
            match parsed {
                Ok(net) => trusted_proxies.push(net),
                Err(_) => self.problem(
                    &p.key("trusted_proxies").index(i),
                    format!("`{s}` is not a CIDR (10.0.0.0/8) or an IP address"),
                ),
            }
        }
        let tls = raw.tls.and_then(|t| self.server_tls(&p.key("tls"), t));
        ServerConfig {
            listen,
            public_url,
            tls,
            proxy_prefix,
            shutdown_timeout,
            header_read_timeout,
            body_read_timeout,
            max_header_bytes,
            max_headers,
            http2: raw.http2.unwrap_or(true),
            workers,
            trusted_proxies,
        }
    }

    fn server_tls(&mut self, p: &KeyPath, raw: RawTls) -> Option<TlsConfig> {
        match (raw.cert_file, raw.key_file) {
            (Some(cert), Some(key)) => {
                self.tls_pair(&p.key("cert_file"), &cert, &p.key("key_file"), &key)
            }
            (cert, key) => {
                // Still check the file that is named, so fixing one problem does not reveal
                // another.
                if let Some(c) = &cert {
                    self.certs(&p.key("cert_file"), c);
                }
                for (name, v) in [("cert_file", cert), ("key_file", key)] {
                    if v.is_none() {
                        self.problem(
                            &p.key(name),
                            format!("missing required key `{name}` (a [server.tls] table needs cert_file and key_file)"),
                        );
                    }
                }
                None
            }
        }
    }

    fn read(&mut self, path: &KeyPath, file: &str) -> Option<Vec<u8>> {
        match std::fs::read(file) {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                self.problem(path, format!("cannot read {file}: {e}"));
                None
            }
        }
    }

    fn certs(&mut self, path: &KeyPath, file: &str) -> Option<Vec<CertificateDer<'static>>> {
        self.pem_certs(path, file).map(|(_, certs)| certs)
    }

    /// A PEM file of at least one certificate: its bytes, and the certificates in it.
    fn pem_certs(
        &mut self,
        path: &KeyPath,
        file: &str,
    ) -> Option<(Vec<u8>, Vec<CertificateDer<'static>>)> {
        let bytes = self.read(path, file)?;
        match CertificateDer::pem_slice_iter(&bytes).collect::<Result<Vec<_>, _>>() {
            Ok(certs) if !certs.is_empty() => Some((bytes, certs)),
            Ok(_) => {
                self.problem(path, format!("no PEM certificate found in {file}"));
                None
            }
            Err(e) => {
                self.problem(path, format!("cannot parse PEM in {file}: {e}"));
                None
            }
        }
    }

    fn tls_pair(
        &mut self,
        cert_path: &KeyPath,
        cert_file: &str,
        key_path: &KeyPath,
        key_file: &str,
    ) -> Option<TlsConfig> {
        let cert_chain = self.certs(cert_path, cert_file);
        let key = self.read(key_path, key_file).and_then(|bytes| {
            PrivateKeyDer::from_pem_slice(&bytes)
                .map_err(|e| {
                    let reason = match e {
                        rustls::pki_types::pem::Error::NoItemsFound => {
                            format!("no PEM private key found in {key_file}")
                        }
                        e => format!("cannot parse PEM private key in {key_file}: {e}"),
                    };
                    self.problem(key_path, reason);
                })
                .ok()
        });
        Some(TlsConfig {
            cert_file: PathBuf::from(cert_file),
            key_file: PathBuf::from(key_file),
            cert_chain: cert_chain?,
            key: Secret::new(Arc::new(key?)),
        })
    }

    fn log(&mut self, raw: RawLog) -> LogConfig {
        let p = KeyPath::default().key("log");
        let format = match raw.format.as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                self.problem(
                    &p.key("format"),
                    format!("`{other}` is not one of \"text\", \"json\""),
                );
                LogFormat::Text
            }
        };
        let level = raw.level.unwrap_or_else(|| "info".into());
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&level) {
            self.problem(
                &p.key("level"),
                format!("`{level}` is not a log filter: {e}"),
            );
        }
        LogConfig {
            format,
            level,
            access_log: raw.access_log.unwrap_or(true),
        }
    }

    fn metrics(&mut self, raw: RawMetrics, server: &ServerConfig) -> Option<MetricsConfig> {
        let p = KeyPath::default().key("metrics").key("listen");
        let Some(listen) = raw.listen else {
            self.problem(&p, "[metrics] needs `listen`, e.g. \"127.0.0.1:9464\"");
            return None;
        };
        let Ok(listen) = listen.parse::<SocketAddr>() else {
            self.problem(
                &p,
                format!("`{listen}` is not an IP address and port like 127.0.0.1:9464"),
            );
            return None;
        };
        // Rule 37: metrics never share the public listener. Port 0 asks for a fresh port, so
        // it can never be the same one.
        let public = server.listen;
        // `::ffff:127.0.0.1` is 127.0.0.1.
        let (mine, theirs) = (listen.ip().to_canonical(), public.ip().to_canonical());
        let overlaps = mine == theirs || mine.is_unspecified() || theirs.is_unspecified();
        if listen.port() != 0 && listen.port() == public.port() && overlaps {
            self.problem(
                &p,
                format!(
                    "{listen} is the public listener ({public}); metrics need an address of their own"
                ),
            );
            return None;
        }
        Some(MetricsConfig { listen })
    }

    fn headers(&mut self, raw: RawHeaders) -> HeadersConfig {
        let p = KeyPath::default().key("headers");
        let names = raw
            .identity
            .unwrap_or_else(|| DEFAULT_IDENTITY.iter().map(|s| (*s).to_owned()).collect());
        let mut identity = Vec::new();
        for (i, name) in names.into_iter().enumerate() {
            match HeaderName::from_bytes(name.as_bytes()) {
                Ok(h) => identity.push(h),
                Err(_) => self.problem(
                    &p.key("identity").index(i),
                    format!("`{name}` is not a valid header name"),
                ),
            }
        }
        let mut name = |key: &str, given: Option<String>, default: &'static str| {
            let given = given.unwrap_or_else(|| default.to_owned());
            match HeaderName::from_bytes(given.as_bytes()) {
                Ok(h) => h,
                Err(_) => {
                    self.problem(&p.key(key), format!("`{given}` is not a valid header name"));
                    HeaderName::from_static("x-forwarded-user")
                }
            }
        };
        let names = IdentityNames {
            user: name("user", raw.user, "x-forwarded-user"),
            email: name("email", raw.email, "x-forwarded-email"),
            preferred_username: name(
                "preferred_username",
                raw.preferred_username,
                "x-forwarded-preferred-username",
            ),
            groups: name("groups", raw.groups, "x-forwarded-groups"),
            access_token: name("access_token", raw.access_token, "x-forwarded-access-token"),
            client_id: name("client_id", raw.client_id, "x-forwarded-client-id"),
        };
        // Whatever the gateway sets, it first removes from the client's request (rule 17).
        for set in [
            &names.user,
            &names.email,
            &names.preferred_username,
            &names.groups,
            &names.access_token,
            &names.client_id,
        ] {
            if !identity.contains(set) {
                identity.push(set.clone());
            }
        }
        HeadersConfig {
            identity,
            allow_underscores: raw.allow_underscores.unwrap_or(false),
            names,
            pass_access_token: raw.pass_access_token.unwrap_or(false),
            pass_authorization_header: raw.pass_authorization_header.unwrap_or(false),
        }
    }

    fn upstreams(
        &mut self,
        raw: Option<Vec<RawUpstream>>,
        has_provider: bool,
    ) -> Vec<UpstreamConfig> {
        let p = KeyPath::default().key("upstreams");
        let Some(raw) = raw else {
            self.problem(
                &p,
                "missing required key: at least one [[upstreams]] table with a `url`",
            );
            return Vec::new();
        };
        if raw.is_empty() {
            self.problem(&p, "at least one [[upstreams]] table is required");
        }
        let mut out: Vec<UpstreamConfig> = Vec::new();
        for (i, mut u) in raw.into_iter().enumerate() {
            let p = p.index(i);
            let client = u
                .client
                .take()
                .and_then(|c| self.upstream_client(&p.key("client"), c, has_provider));
            let Some(mut up) = self.upstream(&p, i, u) else {
                continue;
            };
            up.client = client;
            if let Some(prev) = out.iter().find(|o| o.name == up.name) {
                let reason = format!(
                    "duplicate name `{}` (also used by another upstream)",
                    prev.name
                );
                self.problem(&p.key("name"), reason);
            }
            if let Some(prev) = out
                .iter()
                .find(|o| o.host == up.host && o.path_prefix == up.path_prefix)
            {
                let reason = format!(
                    "same host and path_prefix as upstream `{}`: it would never be used",
                    prev.name
                );
                self.problem(&p.key("path_prefix"), reason);
            }
            out.push(up);
        }
        out
    }

    fn upstream(&mut self, p: &KeyPath, index: usize, raw: RawUpstream) -> Option<UpstreamConfig> {
        let url = match raw.url {
            None => {
                self.problem(&p.key("url"), "missing required key `url`");
                None
            }
            Some(s) => check_http_url(&s)
                .map_err(|reason| self.problem(&p.key("url"), reason))
                .ok(),
        };
        let host = raw.host.and_then(|h| {
            let lower = h.to_ascii_lowercase();
            if lower.is_empty() || lower.contains([':', '/', ' ']) {
                self.problem(
                    &p.key("host"),
                    format!("`{h}` must be a bare host name, without port or path"),
                );
                None
            } else {
                Some(lower)
            }
        });
        let path_prefix = raw.path_prefix.unwrap_or_else(|| "/".into());
        if !path_prefix.starts_with('/') {
            self.problem(
                &p.key("path_prefix"),
                format!("`{path_prefix}` must start with `/`"),
            );
        }
        let connect_timeout = self.duration(
            &p.key("connect_timeout"),
            raw.connect_timeout,
            Duration::from_secs(5),
        );
        let response_timeout = self.duration(
            &p.key("response_timeout"),
            raw.response_timeout,
            Duration::from_secs(60),
        );
        let read_timeout = self.duration(
            &p.key("read_timeout"),
            raw.read_timeout,
            Duration::from_secs(60),
        );
        let idle_timeout = self.duration(
            &p.key("idle_timeout"),
            raw.idle_timeout,
            Duration::from_secs(90),
        );
        let is_https = url.as_ref().is_some_and(|u| u.scheme() == "https");
        let insecure_skip_verify = raw.insecure_skip_verify.unwrap_or(false);
        if url.is_some() && !is_https {
            let tls_keys = [
                ("tls_ca_file", raw.tls_ca_file.is_some()),
                ("tls_client_cert_file", raw.tls_client_cert_file.is_some()),
                ("tls_client_key_file", raw.tls_client_key_file.is_some()),
                ("insecure_skip_verify", insecure_skip_verify),
            ];
            for (key, set) in tls_keys {
                if set {
                    self.problem(&p.key(key), "only applies to https:// upstreams");
                }
            }
        }
        let tls_ca_certs = match &raw.tls_ca_file {
            Some(f) => self.certs(&p.key("tls_ca_file"), f).unwrap_or_default(),
            None => Vec::new(),
        };
        let tls_client_cert = match (raw.tls_client_cert_file, raw.tls_client_key_file) {
            (Some(c), Some(k)) => self.tls_pair(
                &p.key("tls_client_cert_file"),
                &c,
                &p.key("tls_client_key_file"),
                &k,
            ),
            (None, None) => None,
            (Some(_), None) => {
                self.problem(
                    &p.key("tls_client_cert_file"),
                    "needs tls_client_key_file as well",
                );
                None
            }
            (None, Some(_)) => {
                self.problem(
                    &p.key("tls_client_key_file"),
                    "needs tls_client_cert_file as well",
                );
                None
            }
        };
        Some(UpstreamConfig {
            name: raw.name.unwrap_or_else(|| format!("upstream-{index}")),
            url: url?,
            host,
            path_prefix,
            preserve_host: raw.preserve_host.unwrap_or(true),
            connect_timeout,
            response_timeout,
            read_timeout,
            idle_timeout,
            tls_ca_file: raw.tls_ca_file.map(PathBuf::from),
            tls_ca_certs,
            tls_client_cert,
            insecure_skip_verify,
            client: None,
        })
    }

    /// A required key whose value must not be blank.
    fn required_text(
        &mut self,
        table: &KeyPath,
        key: &str,
        value: Option<String>,
    ) -> Option<String> {
        match value {
            Some(v) if !v.trim().is_empty() => Some(v),
            Some(_) => {
                self.problem(&table.key(key), "must not be empty");
                None
            }
            None => {
                self.problem(&table.key(key), format!("missing required key `{key}`"));
                None
            }
        }
    }

    /// A secret given either inline as `<key>` or as a path in `<key>_file` (read, trimmed),
    /// exactly one of them. `table` is the table holding both keys. Later sections
    /// (`client_secret`, cookie secrets) use this so the rule is the same everywhere.
    fn secret_or_file(
        &mut self,
        table: &KeyPath,
        key: &str,
        value: Option<String>,
        file: Option<String>,
        required: bool,
    ) -> Option<Secret<String>> {
        let file_key = format!("{key}_file");
        match (value, file) {
            (Some(_), Some(_)) => {
                self.problem(
                    &table.key(&file_key),
                    format!("set either `{key}` or `{file_key}`, not both"),
                );
                None
            }
            (Some(v), None) => Some(Secret::new(v)),
            (None, Some(f)) => {
                let path = table.key(&file_key);
                match std::fs::read_to_string(&f) {
                    Ok(s) if !s.trim().is_empty() => Some(Secret::new(s.trim().to_owned())),
                    Ok(_) => {
                        self.problem(&path, format!("{f} is empty"));
                        None
                    }
                    Err(e) => {
                        self.problem(&path, format!("cannot read {f}: {e}"));
                        None
                    }
                }
            }
            (None, None) => {
                if required {
                    self.problem(
                        &table.key(key),
                        format!("missing required key `{key}` (or `{file_key}`)"),
                    );
                }
                None
            }
        }
    }
}

/// `[provider]`, `[session]`, `[authorization]` and `[[routes]]`: the login sections.
impl Ctx<'_> {
    fn provider(&mut self, raw: RawProvider, server: &ServerConfig) -> Option<ProviderConfig> {
        let p = KeyPath::default().key("provider");
        let discovery = raw.authorization_endpoint.is_none() && raw.token_endpoint.is_none();
        let no_id_token = !discovery && raw.jwks_uri.is_none();
        let no_userinfo_endpoint = !discovery && raw.userinfo_endpoint.is_none();
        let endpoints = self.provider_endpoints(&p, &raw);
        let client_auth = self.client_auth(&p, &raw.client_auth_keys());
        let issuer = match raw.issuer {
            None => {
                self.problem(&p.key("issuer"), "missing required key `issuer`");
                None
            }
            Some(s) => self.provider_url(&p.key("issuer"), &s, false),
        };
        let client_id = self.required_text(&p, "client_id", raw.client_id);
        let has_secret = matches!(
            client_auth,
            Some(ClientAuth::SecretBasic(_) | ClientAuth::SecretPost(_))
        );

        let scopes = raw
            .scopes
            .unwrap_or_else(|| DEFAULT_SCOPES.iter().map(|s| (*s).to_owned()).collect());
        if scopes.is_empty() {
            self.problem(&p.key("scopes"), "must not be empty");
        }
        for (i, s) in scopes.iter().enumerate() {
            if s.is_empty() || s.contains(|c: char| c.is_whitespace() || c == '"' || c == '\\') {
                self.problem(
                    &p.key("scopes").index(i),
                    format!("`{s}` is not a scope (one word, no spaces or quotes)"),
                );
            }
        }
        if discovery && !scopes.is_empty() && !scopes.iter().any(|s| s == "openid") {
            self.problem(
                &p.key("scopes"),
                "must include \"openid\" with OpenID Connect discovery (or set authorization_endpoint and token_endpoint for a plain OAuth 2.0 provider)",
            );
        }

        let mut extra_auth_params = Vec::new();
        for (k, v) in raw.extra_auth_params.unwrap_or_default() {
            if RESERVED_AUTH_PARAMS.contains(&k.to_ascii_lowercase().as_str()) {
                self.problem(
                    &p.key("extra_auth_params").key(&k),
                    format!("`{k}` is set by Gatehouse itself and cannot be overridden"),
                );
            } else if k.is_empty() {
                self.problem(
                    &p.key("extra_auth_params"),
                    "a parameter name must not be empty",
                );
            } else {
                extra_auth_params.push((k, v));
            }
        }

        let id_token_algorithms = self.id_token_algorithms(&p, raw.id_token_algorithms, has_secret);

        let use_userinfo = match raw.userinfo {
            Some(false) if no_id_token => {
                self.problem(
                    &p.key("userinfo"),
                    "cannot be false without `jwks_uri`: identity then comes from userinfo",
                );
                true
            }
            Some(v) => v,
            None => no_id_token,
        };
        if use_userinfo && no_userinfo_endpoint {
            let key = if raw.userinfo == Some(true) {
                "userinfo"
            } else {
                "userinfo_endpoint"
            };
            self.problem(
                &p.key(key),
                "`userinfo_endpoint` is required: without `jwks_uri` identity comes from userinfo",
            );
        }

        let timeout = self.duration(&p.key("timeout"), raw.timeout, Duration::from_secs(10));
        let discovery_refresh = self.duration(
            &p.key("discovery_refresh"),
            raw.discovery_refresh,
            Duration::from_secs(3600),
        );
        let clock_leeway = self.duration(
            &p.key("clock_leeway"),
            raw.clock_leeway,
            Duration::from_secs(60),
        );
        if clock_leeway > Duration::from_secs(300) {
            self.problem(
                &p.key("clock_leeway"),
                format!(
                    "`{}` is more than the maximum of 5m",
                    format_duration(clock_leeway)
                ),
            );
        }

        let origin = server
            .public_url
            .as_ref()
            .map(|u| u.as_str().trim_end_matches('/').to_owned());
        let redirect_url = match (raw.redirect_url, &origin) {
            (Some(s), _) => check_http_url(&s)
                .map_err(|reason| self.problem(&p.key("redirect_url"), reason))
                .ok(),
            (None, Some(o)) => Url::parse(&format!("{o}{}/callback", server.proxy_prefix)).ok(),
            (None, None) => {
                self.problem(
                    &p.key("redirect_url"),
                    "server.public_url is required with [provider] (or set provider.redirect_url)",
                );
                None
            }
        };
        // Without a public URL, the origin of an explicit redirect URL is the one people use.
        let origin = origin.or_else(|| {
            redirect_url
                .as_ref()
                .map(|u| u.origin().ascii_serialization())
        });
        let post_logout_redirect_url = match (raw.post_logout_redirect_url, origin) {
            (Some(s), _) => check_http_url(&s)
                .map_err(|reason| self.problem(&p.key("post_logout_redirect_url"), reason))
                .ok(),
            (None, Some(o)) => Url::parse(&format!("{o}/")).ok(),
            (None, None) => None,
        };

        Some(ProviderConfig {
            issuer: issuer?,
            endpoints: endpoints?,
            client_id: client_id?,
            client_auth: client_auth?,
            scopes,
            extra_auth_params,
            id_token_algorithms,
            use_userinfo,
            timeout,
            discovery_refresh,
            clock_leeway,
            redirect_url: redirect_url?,
            post_logout_redirect_url: post_logout_redirect_url?,
        })
    }

    /// An absolute http(s) URL at the provider: https unless the host is loopback.
    fn provider_url(&mut self, path: &KeyPath, s: &str, allow_query: bool) -> Option<Url> {
        let checked = if allow_query {
            Url::parse(s).map_err(|e| e.to_string()).and_then(|u| {
                if !matches!(u.scheme(), "http" | "https") {
                    Err(format!("`{s}` must be an http:// or https:// URL"))
                } else if u.host_str().is_none_or(str::is_empty) {
                    Err(format!("`{s}` has no host"))
                } else if u.fragment().is_some() {
                    Err(format!("`{s}` must not have a fragment"))
                } else {
                    Ok(u)
                }
            })
        } else {
            check_http_url(s)
        };
        match checked {
            Ok(u) if u.scheme() == "http" && !is_loopback(&u) => {
                self.problem(
                    path,
                    format!(
                        "`{s}`: https is required (http only for 127.0.0.0/8, ::1 and localhost)"
                    ),
                );
                None
            }
            Ok(u) => Some(u),
            Err(reason) => {
                self.problem(path, reason);
                None
            }
        }
    }

    /// `Some(None)`: discovery; `Some(Some(_))`: explicit endpoints; `None`: a problem was
    /// reported.
    fn provider_endpoints(
        &mut self,
        p: &KeyPath,
        raw: &RawProvider,
    ) -> Option<Option<ProviderEndpoints>> {
        let mut ok = true;
        let mut url = |ctx: &mut Self, key: &str, v: &Option<String>| -> Option<Url> {
            let u = v
                .as_deref()
                .and_then(|s| ctx.provider_url(&p.key(key), s, true));
            if v.is_some() && u.is_none() {
                ok = false;
            }
            u
        };
        let authorization = url(self, "authorization_endpoint", &raw.authorization_endpoint);
        let token = url(self, "token_endpoint", &raw.token_endpoint);
        let userinfo = url(self, "userinfo_endpoint", &raw.userinfo_endpoint);
        let jwks = url(self, "jwks_uri", &raw.jwks_uri);
        let end_session = url(self, "end_session_endpoint", &raw.end_session_endpoint);
        match (&raw.authorization_endpoint, &raw.token_endpoint) {
            (None, None) => {
                for (key, v) in [
                    ("userinfo_endpoint", &raw.userinfo_endpoint),
                    ("jwks_uri", &raw.jwks_uri),
                    ("end_session_endpoint", &raw.end_session_endpoint),
                ] {
                    if v.is_some() {
                        self.problem(
                            &p.key(key),
                            "only applies with authorization_endpoint and token_endpoint (otherwise discovery provides it)",
                        );
                        ok = false;
                    }
                }
                ok.then_some(None)
            }
            (Some(_), None) | (None, Some(_)) => {
                let missing = if raw.token_endpoint.is_none() {
                    "token_endpoint"
                } else {
                    "authorization_endpoint"
                };
                self.problem(
                    &p.key(missing),
                    format!("missing required key `{missing}`: set both authorization_endpoint and token_endpoint, or neither (discovery)"),
                );
                None
            }
            (Some(_), Some(_)) => {
                if !ok {
                    return None;
                }
                Some(Some(ProviderEndpoints {
                    authorization: authorization?,
                    token: token?,
                    userinfo,
                    jwks,
                    end_session,
                }))
            }
        }
    }

    fn client_auth(&mut self, p: &KeyPath, raw: &RawClientAuth<'_>) -> Option<ClientAuth> {
        let key_keys = [
            ("private_key_file", raw.private_key_file.is_some()),
            ("private_key_alg", raw.private_key_alg.is_some()),
            ("private_key_id", raw.private_key_id.is_some()),
        ];
        let has_secret = raw.client_secret.is_some() || raw.client_secret_file.is_some();
        let method = match raw.client_auth.as_deref() {
            None if has_secret => "client_secret_basic",
            None => {
                self.problem(
                    &p.key("client_auth"),
                    "missing `client_secret` (or `client_secret_file`); without a secret set client_auth = \"none\" or \"private_key_jwt\"",
                );
                return None;
            }
            Some(
                m @ ("client_secret_basic" | "client_secret_post" | "private_key_jwt" | "none"),
            ) => m,
            Some(other) => {
                self.problem(
                    &p.key("client_auth"),
                    format!("`{other}` is not one of \"client_secret_basic\", \"client_secret_post\", \"private_key_jwt\", \"none\""),
                );
                return None;
            }
        };
        if method != "private_key_jwt" {
            for (key, set) in key_keys {
                if set {
                    self.problem(
                        &p.key(key),
                        "only applies with client_auth = \"private_key_jwt\"",
                    );
                }
            }
        }
        match method {
            "client_secret_basic" | "client_secret_post" => {
                let secret = self.secret_or_file(
                    p,
                    "client_secret",
                    raw.client_secret.clone(),
                    raw.client_secret_file.clone(),
                    true,
                )?;
                Some(if method == "client_secret_post" {
                    ClientAuth::SecretPost(secret)
                } else {
                    ClientAuth::SecretBasic(secret)
                })
            }
            _ => {
                if has_secret {
                    let key = if raw.client_secret.is_some() {
                        "client_secret"
                    } else {
                        "client_secret_file"
                    };
                    self.problem(
                        &p.key(key),
                        format!("is not used with client_auth = \"{method}\"; remove it"),
                    );
                    return None;
                }
                if method == "none" {
                    Some(ClientAuth::None)
                } else {
                    self.private_key_jwt(p, raw)
                }
            }
        }
    }

    fn private_key_jwt(&mut self, p: &KeyPath, raw: &RawClientAuth<'_>) -> Option<ClientAuth> {
        let path = p.key("private_key_file");
        let Some(file) = raw.private_key_file else {
            self.problem(
                &path,
                "missing required key `private_key_file` (client_auth = \"private_key_jwt\")",
            );
            return None;
        };
        let pem = self.read(&path, file)?;
        let is_private = String::from_utf8_lossy(&pem).contains("PRIVATE KEY-----");
        let family = if !is_private {
            None
        } else if jsonwebtoken::EncodingKey::from_rsa_pem(&pem).is_ok() {
            Some(AlgorithmFamily::Rsa)
        } else if jsonwebtoken::EncodingKey::from_ec_pem(&pem).is_ok() {
            Some(AlgorithmFamily::Ec)
        } else {
            None
        };
        let Some(family) = family else {
            self.problem(
                &path,
                format!("no RSA or EC private key (PEM, PKCS#8 or PKCS#1) found in {file}"),
            );
            return None;
        };
        let alg = match raw.private_key_alg.as_deref() {
            None if family == AlgorithmFamily::Rsa => Algorithm::RS256,
            None => Algorithm::ES256,
            Some(s) => {
                let path = p.key("private_key_alg");
                match s.parse::<Algorithm>() {
                    Ok(a) if a.family() == family => a,
                    Ok(_) => {
                        let kind = if family == AlgorithmFamily::Rsa {
                            "an RSA"
                        } else {
                            "an EC"
                        };
                        self.problem(
                            &path,
                            format!("`{s}` does not match the key in {file}, which is {kind} key"),
                        );
                        return None;
                    }
                    Err(_) => {
                        self.problem(
                            &path,
                            format!("`{s}` is not one of RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384"),
                        );
                        return None;
                    }
                }
            }
        };
        Some(ClientAuth::PrivateKeyJwt {
            key_pem: Secret::new(pem),
            alg,
            kid: raw.private_key_id.clone(),
        })
    }

    fn id_token_algorithms(
        &mut self,
        p: &KeyPath,
        raw: Option<Vec<String>>,
        has_secret: bool,
    ) -> Vec<Algorithm> {
        self.algorithm_list(
            &p.key("id_token_algorithms"),
            raw,
            has_secret
                .then_some(())
                .ok_or("a client secret (client_secret or client_secret_file) to verify with"),
            "ID token",
        )
    }

    /// An algorithm allow-list: default RS256, ES256, PS256, EdDSA; never `none`; HMAC only
    /// when `secret` is `Ok` (its `Err` says what HMAC would need).
    fn algorithm_list(
        &mut self,
        path: &KeyPath,
        raw: Option<Vec<String>>,
        secret: Result<(), &str>,
        what: &str,
    ) -> Vec<Algorithm> {
        let Some(names) = raw else {
            return vec![
                Algorithm::RS256,
                Algorithm::ES256,
                Algorithm::PS256,
                Algorithm::EdDSA,
            ];
        };
        if names.is_empty() {
            self.problem(path, "must not be empty");
        }
        let mut out = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let path = path.index(i);
            if name.eq_ignore_ascii_case("none") {
                self.problem(
                    &path,
                    format!("`none` is never accepted: an unsigned {what} proves nothing"),
                );
                continue;
            }
            match (name.parse::<Algorithm>(), secret) {
                (Ok(a), Err(needs)) if a.family() == AlgorithmFamily::Hmac => {
                    self.problem(&path, format!("`{name}` needs {needs}"));
                }
                (Ok(a), _) => {
                    if !out.contains(&a) {
                        out.push(a);
                    }
                }
                (Err(_), _) => self.problem(
                    &path,
                    format!("`{name}` is not one of RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA, HS256, HS384, HS512"),
                ),
            }
        }
        out
    }

    fn session(&mut self, raw: RawSession, server: &ServerConfig) -> Option<SessionConfig> {
        let p = KeyPath::default().key("session");
        let store = self.session_store(
            &p,
            raw.store.as_deref(),
            redis::RawRedis {
                url: raw.redis_url,
                username: raw.redis_username,
                password: raw.redis_password,
                password_file: raw.redis_password_file,
                sentinels: raw.redis_sentinels,
                sentinel_master: raw.redis_sentinel_master,
                cluster: raw.redis_cluster,
                tls_ca_file: raw.redis_tls_ca_file,
                timeout: raw.redis_timeout,
            },
        );
        let secrets = self.session_secrets(
            &p,
            raw.secret,
            raw.secret_file,
            raw.secrets,
            raw.secrets_file,
        );

        let https = server
            .public_url
            .as_ref()
            .is_some_and(|u| u.scheme() == "https");
        let cookie_domain = raw.cookie_domain.and_then(|d| {
            let lower = d.to_ascii_lowercase();
            let bare = lower.trim_start_matches('.');
            if bare.is_empty() || !bare.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.') {
                self.problem(
                    &p.key("cookie_domain"),
                    format!("`{d}` must be a bare domain name like \"example.com\""),
                );
                return None;
            }
            if let Some(host) = server.public_url.as_ref().and_then(Url::host_str)
                && host != bare
                && !host.ends_with(&format!(".{bare}"))
            {
                self.problem(
                    &p.key("cookie_domain"),
                    format!("`{d}` does not contain server.public_url's host `{host}`: browsers would refuse the cookie"),
                );
                return None;
            }
            Some(lower)
        });
        let name = raw.cookie_name.unwrap_or_else(|| "_gatehouse".into());
        let name_path = p.key("cookie_name");
        let cookie_name = if name.is_empty() || !name.bytes().all(is_cookie_token_byte) {
            self.problem(
                &name_path,
                format!(
                    "`{name}` is not a valid cookie name (letters, digits and !#$%&'*+-.^_`|~ only)"
                ),
            );
            None
        } else if name.starts_with("__Host-") {
            if !https || cookie_domain.is_some() {
                self.problem(
                    &name_path,
                    "the `__Host-` prefix needs an https server.public_url and no cookie_domain; Gatehouse adds it itself when possible",
                );
            }
            Some(name)
        } else if name.starts_with("__Secure-") && !https {
            self.problem(
                &name_path,
                "the `__Secure-` prefix needs an https server.public_url",
            );
            Some(name)
        } else if https && cookie_domain.is_none() && !name.starts_with("__Secure-") {
            Some(format!("__Host-{name}"))
        } else {
            Some(name)
        };
        let same_site = match raw
            .cookie_samesite
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("lax") => SameSite::Lax,
            Some("strict") => SameSite::Strict,
            Some("none") => {
                if !https {
                    self.problem(
                        &p.key("cookie_samesite"),
                        "\"none\" requires an https server.public_url (browsers refuse SameSite=None without Secure)",
                    );
                }
                SameSite::None
            }
            Some(_) => {
                let shown = raw.cookie_samesite.unwrap_or_default();
                self.problem(
                    &p.key("cookie_samesite"),
                    format!("`{shown}` is not one of \"lax\", \"strict\", \"none\""),
                );
                SameSite::Lax
            }
        };
        let lifetime = self.duration(
            &p.key("lifetime"),
            raw.lifetime,
            Duration::from_secs(12 * 3600),
        );
        let idle_timeout = self.duration(
            &p.key("idle_timeout"),
            raw.idle_timeout,
            Duration::from_secs(3600),
        );
        let login_timeout = self.duration(
            &p.key("login_timeout"),
            raw.login_timeout,
            Duration::from_secs(600),
        );
        let max_logins = self.int_in(&p.key("max_logins"), raw.max_logins, 5, 1..=20);
        let refresh_before = self.duration(
            &p.key("refresh_before"),
            raw.refresh_before,
            Duration::from_secs(60),
        );
        Some(SessionConfig {
            secrets: secrets?,
            cookie_name: cookie_name?,
            cookie_domain,
            cookie_secure: https,
            same_site,
            lifetime,
            idle_timeout,
            login_timeout,
            max_logins,
            refresh_before,
            store: store?,
        })
    }

    /// One of `secret`, `secret_file`, `secrets`, `secrets_file`; each value base64 of at least
    /// 32 bytes. Values are never echoed in messages.
    fn session_secrets(
        &mut self,
        p: &KeyPath,
        secret: Option<String>,
        secret_file: Option<String>,
        secrets: Option<Vec<String>>,
        secrets_file: Option<String>,
    ) -> Option<Vec<Secret<Vec<u8>>>> {
        let given: Vec<&str> = [
            ("secret", secret.is_some()),
            ("secret_file", secret_file.is_some()),
            ("secrets", secrets.is_some()),
            ("secrets_file", secrets_file.is_some()),
        ]
        .into_iter()
        .filter_map(|(k, set)| set.then_some(k))
        .collect();
        if given.len() > 1 {
            self.problem(
                &p.key(given[1]),
                format!("set only one of `secret`, `secret_file`, `secrets`, `secrets_file` (also set: `{}`)", given[0]),
            );
            return None;
        }
        // (key path, value, what to call it in a message)
        let mut entries: Vec<(KeyPath, String, String)> = Vec::new();
        if secret.is_some() || secret_file.is_some() {
            let from_file = secret_file.is_some();
            let s = self.secret_or_file(p, "secret", secret, secret_file, true)?;
            let key = if from_file { "secret_file" } else { "secret" };
            entries.push((p.key(key), s.expose().clone(), "the secret".into()));
        } else if let Some(list) = secrets {
            if list.is_empty() {
                self.problem(&p.key("secrets"), "at least one secret is required");
                return None;
            }
            for (i, s) in list.into_iter().enumerate() {
                entries.push((p.key("secrets").index(i), s, "the secret".into()));
            }
        } else if let Some(file) = secrets_file {
            let path = p.key("secrets_file");
            let text = match std::fs::read_to_string(&file) {
                Ok(t) => t,
                Err(e) => {
                    self.problem(&path, format!("cannot read {file}: {e}"));
                    return None;
                }
            };
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                entries.push((
                    path.clone(),
                    line.to_owned(),
                    format!("line {} of {file}", n + 1),
                ));
            }
            if entries.is_empty() {
                self.problem(&path, format!("{file} holds no secret (one per line)"));
                return None;
            }
        } else {
            self.problem(
                &p.key("secret"),
                "missing required key `secret` (or `secret_file`, `secrets`, `secrets_file`)",
            );
            return None;
        }
        let mut out = Vec::new();
        let mut ok = true;
        for (path, value, what) in entries {
            match decode_base64(value.trim()) {
                Some(bytes) if bytes.len() >= 32 => out.push(Secret::new(bytes)),
                Some(bytes) => {
                    ok = false;
                    self.problem(
                        &path,
                        format!("{what} decodes to {} bytes; at least 32 random bytes are required (e.g. `openssl rand -base64 32`)", bytes.len()),
                    );
                }
                None => {
                    ok = false;
                    self.problem(
                        &path,
                        format!("{what} is not base64 (standard or URL-safe); generate one with `openssl rand -base64 32`"),
                    );
                }
            }
        }
        ok.then_some(out)
    }

    fn authorization(
        &mut self,
        raw: RawAuthorization,
        has_provider: bool,
    ) -> (AuthorizationConfig, Policy) {
        let p = KeyPath::default().key("authorization");
        let mut allowed_email_domains = Vec::new();
        for (i, d) in raw
            .allowed_email_domains
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            let lower = d.trim().to_ascii_lowercase();
            let bare = lower.strip_prefix('.').unwrap_or(&lower);
            let valid = lower == "*"
                || (!bare.is_empty()
                    && !bare.starts_with('.')
                    && !bare.ends_with('.')
                    && !bare.contains("..")
                    && bare
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'));
            if valid {
                allowed_email_domains.push(lower);
            } else {
                self.problem(
                    &p.key("allowed_email_domains").index(i),
                    format!("`{d}` is not a domain (\"example.com\", \".example.com\" for subdomains, or \"*\")"),
                );
            }
        }
        let mut allowed_emails = Vec::new();
        for (i, e) in raw
            .allowed_emails
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            match check_email(&e) {
                Ok(e) => allowed_emails.push(e),
                Err(reason) => self.problem(&p.key("allowed_emails").index(i), reason),
            }
        }
        if let Some(file) = raw.allowed_emails_file {
            let path = p.key("allowed_emails_file");
            match std::fs::read_to_string(&file) {
                Ok(text) => {
                    for (n, line) in text.lines().enumerate() {
                        let line = line.trim();
                        if line.is_empty() || line.starts_with('#') {
                            continue;
                        }
                        match check_email(line) {
                            Ok(e) => allowed_emails.push(e),
                            Err(reason) => {
                                self.problem(&path, format!("line {} of {file}: {reason}", n + 1));
                            }
                        }
                    }
                }
                Err(e) => self.problem(&path, format!("cannot read {file}: {e}")),
            }
        }
        let groups_claim = match raw.groups_claim {
            None => vec!["groups".to_owned()],
            Some(c) => {
                let segs: Vec<String> = c.split('.').map(str::to_owned).collect();
                if segs.iter().any(String::is_empty) {
                    self.problem(
                        &p.key("groups_claim"),
                        format!(
                            "`{c}` is not a claim name or dotted path like \"realm_access.roles\""
                        ),
                    );
                }
                segs
            }
        };
        let allowed_groups = raw.allowed_groups.unwrap_or_default();
        for (i, g) in allowed_groups.iter().enumerate() {
            if g.is_empty() {
                self.problem(
                    &p.key("allowed_groups").index(i),
                    "a group must not be empty",
                );
            }
        }
        let default_policy = match raw.default_policy.as_deref() {
            None if has_provider => Policy::Authenticated,
            None | Some("public") => Policy::Public,
            Some("authenticated") => {
                if !has_provider {
                    self.problem(
                        &p.key("default_policy"),
                        "\"authenticated\" needs a [provider] (or [bearer] issuers) to authenticate with",
                    );
                }
                Policy::Authenticated
            }
            Some(other) => {
                self.problem(
                    &p.key("default_policy"),
                    format!("`{other}` is not one of \"public\", \"authenticated\""),
                );
                Policy::Public
            }
        };
        let config = AuthorizationConfig {
            allowed_email_domains,
            allowed_emails,
            require_email_verified: raw.require_email_verified.unwrap_or(true),
            groups_claim,
            allowed_groups,
        };
        (config, default_policy)
    }

    fn routes(
        &mut self,
        raw: Vec<RawRoute>,
        has_provider: bool,
        has_bridge: bool,
    ) -> Vec<RouteConfig> {
        let p = KeyPath::default().key("routes");
        let mut out = Vec::new();
        for (i, r) in raw.into_iter().enumerate() {
            if let Some(route) = self.route(&p.index(i), r, has_provider, has_bridge) {
                out.push(route);
            }
        }
        out
    }

    fn route(
        &mut self,
        p: &KeyPath,
        raw: RawRoute,
        has_provider: bool,
        has_bridge: bool,
    ) -> Option<RouteConfig> {
        let shown = match (&raw.path_prefix, &raw.path_regex) {
            (Some(s), _) => format!("path_prefix = {s:?}"),
            (None, Some(s)) => format!("path_regex = {s:?}"),
            (None, None) => String::from("without a path"),
        };
        let path = match (raw.path_prefix, raw.path_regex) {
            (Some(_), Some(_)) => {
                self.problem(
                    &p.key("path_regex"),
                    "set either `path_prefix` or `path_regex`, not both",
                );
                None
            }
            (None, None) => {
                self.problem(
                    &p.key("path_prefix"),
                    "missing required key `path_prefix` (or `path_regex`)",
                );
                None
            }
            (Some(prefix), None) => {
                if prefix.starts_with('/') {
                    Some(RoutePath::Prefix(prefix))
                } else {
                    self.problem(
                        &p.key("path_prefix"),
                        format!("`{prefix}` must start with `/`"),
                    );
                    None
                }
            }
            (None, Some(re)) => {
                let anchored = if re.starts_with('^') {
                    re.clone()
                } else {
                    format!("^{re}")
                };
                match regex::Regex::new(&anchored) {
                    Ok(r) => Some(RoutePath::Regex(r)),
                    Err(e) => {
                        let reason = e.to_string().replace('\n', " ");
                        let reason = reason.split_whitespace().collect::<Vec<_>>().join(" ");
                        self.problem(
                            &p.key("path_regex"),
                            format!("`{re}` is not a regex: {reason}"),
                        );
                        None
                    }
                }
            }
        };
        let mut methods = Vec::new();
        for (i, m) in raw.methods.unwrap_or_default().into_iter().enumerate() {
            match http::Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
                Ok(method) if !m.is_empty() => methods.push(method),
                _ => self.problem(
                    &p.key("methods").index(i),
                    format!("`{m}` is not an HTTP method"),
                ),
            }
        }
        let host = raw.host.and_then(|h| {
            let lower = h.to_ascii_lowercase();
            if lower.is_empty() || lower.contains([':', '/', ' ']) {
                self.problem(
                    &p.key("host"),
                    format!("`{h}` must be a bare host name, without port or path"),
                );
                None
            } else {
                Some(lower)
            }
        });
        let groups = raw.groups;
        if let Some(g) = &groups {
            if g.is_empty() {
                self.problem(
                    &p.key("groups"),
                    "must not be empty (omit it to allow any authenticated caller)",
                );
            }
            for (i, name) in g.iter().enumerate() {
                if name.is_empty() {
                    self.problem(&p.key("groups").index(i), "a group must not be empty");
                }
            }
        }
        let mut claims = Vec::new();
        if let Some(map) = &raw.claims {
            if map.is_empty() {
                self.problem(
                    &p.key("claims"),
                    "must not be empty (omit it to allow any authenticated caller)",
                );
            }
            for (k, v) in map {
                let path = p.key("claims").key(k);
                let segs: Vec<String> = k.split('.').map(str::to_owned).collect();
                if segs.iter().any(String::is_empty) {
                    self.problem(&path, format!("`{k}` is not a claim name or dotted path"));
                    continue;
                }
                match claim_values(v) {
                    Some(values) => claims.push((segs, values)),
                    None => self.problem(
                        &path,
                        "must be a string, boolean or number, or a non-empty array of them (quote dotted claim paths: \"realm_access.roles\" = \"admin\")",
                    ),
                }
            }
        }
        let scopes = raw.scopes;
        if let Some(list) = &scopes {
            if list.is_empty() {
                self.problem(
                    &p.key("scopes"),
                    "must not be empty (omit it to allow any authenticated caller)",
                );
            }
            for (i, s) in list.iter().enumerate() {
                if !is_scope_token(s) {
                    self.problem(
                        &p.key("scopes").index(i),
                        format!("`{s}` is not a scope (RFC 6749 §3.3: printable ASCII, no spaces, quotes or backslashes)"),
                    );
                }
            }
        }
        let has_groups = groups.is_some();
        let has_scopes = scopes.is_some();
        let requires = has_groups || raw.claims.is_some() || has_scopes;
        let policy = match raw.policy.as_deref() {
            Some("public") if requires => {
                let key = if has_groups {
                    "groups"
                } else if has_scopes {
                    "scopes"
                } else {
                    "claims"
                };
                self.problem(
                    &p.key("policy"),
                    format!("\"public\" cannot be combined with `{key}`: remove one of them"),
                );
                None
            }
            Some("public") => Some(Policy::Public),
            None | Some("authenticated") if requires => Some(Policy::Require {
                groups: groups.unwrap_or_default(),
                claims,
                scopes: scopes.unwrap_or_default(),
            }),
            None | Some("authenticated") => Some(Policy::Authenticated),
            Some(other) => {
                self.problem(
                    &p.key("policy"),
                    format!("`{other}` is not one of \"public\", \"authenticated\" (use `groups` or `claims` for more)"),
                );
                None
            }
        };
        if !has_provider
            && policy
                .as_ref()
                .is_some_and(|p| !matches!(p, Policy::Public))
        {
            let key = if raw.policy.is_none() && has_groups {
                "groups"
            } else if raw.policy.is_none() && raw.claims.is_some() {
                "claims"
            } else if raw.policy.is_none() && has_scopes {
                "scopes"
            } else {
                "policy"
            };
            self.problem(
                &p.key(key),
                format!("route {shown} requires authentication, which needs a [provider] (or [bearer] issuers); set policy = \"public\" or configure [provider]"),
            );
        }
        let password_bridge = raw.password_bridge.unwrap_or(false);
        if password_bridge && !has_bridge {
            self.problem(
                &p.key("password_bridge"),
                "needs [password_bridge] enabled = true (and a working [password_bridge] section)",
            );
        }
        if password_bridge && matches!(policy, Some(Policy::Public)) {
            self.problem(
                &p.key("password_bridge"),
                "a public route authenticates nobody; remove password_bridge or the public policy",
            );
        }
        Some(RouteConfig {
            methods,
            host,
            path: path?,
            policy: policy?,
            password_bridge,
        })
    }
}

const DEFAULT_SCOPES: [&str; 3] = ["openid", "email", "profile"];

/// Authorization request parameters Gatehouse sets itself; `extra_auth_params` cannot touch
/// them (`request` and `request_uri` could replace all of them at once, `response_mode` would
/// change how the code comes back).
const RESERVED_AUTH_PARAMS: [&str; 11] = [
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "nonce",
    "code_challenge",
    "code_challenge_method",
    "request",
    "request_uri",
    "response_mode",
];

/// RFC 6749 §3.3 `scope-token`: `%x21 / %x23-5B / %x5D-7E`.
fn is_scope_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b))
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// RFC 6265 `cookie-name` is an RFC 7230 token.
fn is_cookie_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Standard or URL-safe alphabet, with or without padding.
fn decode_base64(s: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(s).ok())
}

/// Lowercased; exactly one `@` with something on both sides (rule 29).
fn check_email(raw: &str) -> Result<String, String> {
    let e = raw.trim().to_ascii_lowercase();
    let mut parts = e.split('@');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(local), Some(domain), None)
            if !local.is_empty()
                && !domain.is_empty()
                && !e.contains(|c: char| c.is_whitespace() || c.is_control()) =>
        {
            Ok(e)
        }
        _ => Err(format!(
            "`{raw}` is not an email address (exactly one `@`, something on both sides, no spaces)"
        )),
    }
}

/// A claim requirement's accepted values: one scalar, or a non-empty array of scalars.
fn claim_values(v: &serde_json::Value) -> Option<Vec<serde_json::Value>> {
    use serde_json::Value;
    let scalar = |v: &Value| matches!(v, Value::String(_) | Value::Bool(_) | Value::Number(_));
    match v {
        Value::Array(items) if !items.is_empty() && items.iter().all(scalar) => Some(items.clone()),
        v if scalar(v) => Some(vec![v.clone()]),
        _ => None,
    }
}

fn algorithm_name(a: Algorithm) -> String {
    format!("{a:?}")
}

fn policy_name(p: &Policy) -> &'static str {
    match p {
        Policy::Public => "public",
        Policy::Authenticated | Policy::Require { .. } => "authenticated",
    }
}

/// `[provider]`, `[session]` and `[authorization]` for `render_effective`: secrets and
/// private keys only as `[redacted]`.
fn render_login(doc: &mut toml_edit::DocumentMut, config: &Config) {
    use toml_edit::{Array, InlineTable, value};
    let str_array = |items: &[String]| Array::from_iter(items.iter().map(String::as_str));
    if let Some(pc) = &config.provider {
        let mut t = Table::new();
        t["issuer"] = value(pc.issuer.as_str());
        if let Some(e) = &pc.endpoints {
            t["authorization_endpoint"] = value(e.authorization.as_str());
            t["token_endpoint"] = value(e.token.as_str());
            for (key, u) in [
                ("userinfo_endpoint", &e.userinfo),
                ("jwks_uri", &e.jwks),
                ("end_session_endpoint", &e.end_session),
            ] {
                if let Some(u) = u {
                    t[key] = value(u.as_str());
                }
            }
        }
        t["client_id"] = value(pc.client_id.as_str());
        match &pc.client_auth {
            ClientAuth::SecretBasic(s) | ClientAuth::SecretPost(s) => {
                let method = if matches!(pc.client_auth, ClientAuth::SecretPost(_)) {
                    "client_secret_post"
                } else {
                    "client_secret_basic"
                };
                t["client_auth"] = value(method);
                t["client_secret"] = value(s.to_string());
            }
            ClientAuth::PrivateKeyJwt { key_pem, alg, kid } => {
                t["client_auth"] = value("private_key_jwt");
                let alg = toml_edit::Value::from(algorithm_name(*alg))
                    .decorated(" ", format!("  # private key: {key_pem}"));
                t["private_key_alg"] = Item::Value(alg);
                if let Some(kid) = kid {
                    t["private_key_id"] = value(kid.as_str());
                }
            }
            ClientAuth::None => t["client_auth"] = value("none"),
        }
        t["scopes"] = value(str_array(&pc.scopes));
        let mut params = InlineTable::new();
        for (k, v) in &pc.extra_auth_params {
            params.insert(k, v.as_str().into());
        }
        t["extra_auth_params"] = value(params);
        let algs: Vec<String> = pc
            .id_token_algorithms
            .iter()
            .map(|a| algorithm_name(*a))
            .collect();
        t["id_token_algorithms"] = value(str_array(&algs));
        t["userinfo"] = value(pc.use_userinfo);
        t["timeout"] = value(format_duration(pc.timeout));
        t["discovery_refresh"] = value(format_duration(pc.discovery_refresh));
        t["clock_leeway"] = value(format_duration(pc.clock_leeway));
        t["redirect_url"] = value(pc.redirect_url.as_str());
        t["post_logout_redirect_url"] = value(pc.post_logout_redirect_url.as_str());
        doc["provider"] = Item::Table(t);
    }
    if let Some(s) = &config.session {
        let mut t = Table::new();
        t["store"] = value("cookie");
        let redacted: Vec<String> = s.secrets.iter().map(ToString::to_string).collect();
        t["secrets"] = value(str_array(&redacted));
        t["cookie_name"] = value(s.cookie_name.as_str());
        if let Some(d) = &s.cookie_domain {
            t["cookie_domain"] = value(d.as_str());
        }
        t["cookie_samesite"] = value(match s.same_site {
            SameSite::Lax => "lax",
            SameSite::Strict => "strict",
            SameSite::None => "none",
        });
        t["lifetime"] = value(format_duration(s.lifetime));
        t["idle_timeout"] = value(format_duration(s.idle_timeout));
        t["login_timeout"] = value(format_duration(s.login_timeout));
        t["max_logins"] = value(i64::try_from(s.max_logins).unwrap_or(i64::MAX));
        t["refresh_before"] = value(format_duration(s.refresh_before));
        redis::render(&mut t, &s.store);
        doc["session"] = Item::Table(t);
    }
    let a = &config.authorization;
    let mut t = Table::new();
    t["allowed_email_domains"] = value(str_array(&a.allowed_email_domains));
    t["allowed_emails"] = value(str_array(&a.allowed_emails));
    t["require_email_verified"] = value(a.require_email_verified);
    t["groups_claim"] = value(a.groups_claim.join("."));
    t["allowed_groups"] = value(str_array(&a.allowed_groups));
    t["default_policy"] = value(policy_name(&config.default_policy));
    doc["authorization"] = Item::Table(t);
}

fn render_routes(doc: &mut toml_edit::DocumentMut, routes: &[RouteConfig]) {
    use toml_edit::{Array, ArrayOfTables, InlineTable, value};
    if routes.is_empty() {
        return;
    }
    let mut out = ArrayOfTables::new();
    for r in routes {
        let mut t = Table::new();
        if !r.methods.is_empty() {
            t["methods"] = value(Array::from_iter(r.methods.iter().map(http::Method::as_str)));
        }
        if let Some(h) = &r.host {
            t["host"] = value(h.as_str());
        }
        match &r.path {
            RoutePath::Prefix(p) => t["path_prefix"] = value(p.as_str()),
            RoutePath::Regex(re) => t["path_regex"] = value(re.as_str()),
        }
        t["policy"] = value(policy_name(&r.policy));
        if let Policy::Require {
            groups,
            claims,
            scopes,
        } = &r.policy
        {
            if !groups.is_empty() {
                t["groups"] = value(Array::from_iter(groups.iter().map(String::as_str)));
            }
            if !scopes.is_empty() {
                t["scopes"] = value(Array::from_iter(scopes.iter().map(String::as_str)));
            }
            if !claims.is_empty() {
                let mut ct = InlineTable::new();
                for (path, values) in claims {
                    let mut vs: Vec<toml_edit::Value> =
                        values.iter().filter_map(json_to_toml).collect();
                    let v = if vs.len() == 1 {
                        vs.remove(0)
                    } else {
                        toml_edit::Value::Array(Array::from_iter(vs))
                    };
                    ct.insert(path.join("."), v);
                }
                t["claims"] = value(ct);
            }
        }
        if r.password_bridge {
            t["password_bridge"] = value(true);
        }
        out.push(t);
    }
    doc["routes"] = Item::ArrayOfTables(out);
}

fn json_to_toml(v: &serde_json::Value) -> Option<toml_edit::Value> {
    use serde_json::Value;
    match v {
        Value::String(s) => Some(s.as_str().into()),
        Value::Bool(b) => Some((*b).into()),
        Value::Number(n) => n
            .as_i64()
            .map(toml_edit::Value::from)
            .or_else(|| n.as_f64().map(toml_edit::Value::from)),
        _ => None,
    }
}

const DEFAULT_IDENTITY: [&str; 6] = [
    "X-Forwarded-User",
    "X-Forwarded-Email",
    "X-Forwarded-Preferred-Username",
    "X-Forwarded-Groups",
    "X-Forwarded-Client-Id",
    "X-Forwarded-Access-Token",
];

/// serde speaks of fields; a person editing TOML thinks in keys.
fn reword(message: &str) -> String {
    let m = message.trim();
    if let Some(rest) = m.strip_prefix("unknown field ") {
        let rest = rest
            .replacen(", expected one of ", "; accepted keys: ", 1)
            .replacen(", expected ", "; accepted keys: ", 1)
            .replacen(", there are no fields", "; this table accepts no keys", 1);
        return format!("unknown key {rest}");
    }
    m.to_owned()
}

fn check_http_url(s: &str) -> Result<Url, String> {
    let url = Url::parse(s).map_err(|e| e.to_string())?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("`{s}` must be an http:// or https:// URL"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("`{s}` has no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("`{s}` must not have a query or fragment"));
    }
    Ok(url)
}

/// `"500ms"`, `"30s"`, `"2m"`, `"1h"`: a whole number and one unit; zero is refused because
/// every duration here is a timeout, and a zero timeout would fail every request.
pub(super) fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || format!("`{s}` is not a duration like \"500ms\", \"30s\", \"2m\" or \"1h\"");
    let n: u64 = num.parse().map_err(|_| bad())?;
    let ms_per = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(bad()),
    };
    let ms = n.checked_mul(ms_per).ok_or_else(bad)?;
    if ms == 0 {
        return Err(format!("`{s}`: a duration must be greater than zero"));
    }
    Ok(Duration::from_millis(ms))
}

fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// The effective configuration as TOML, defaults filled in, for `gatehouse check-config`.
/// Private keys appear only as `[redacted]`; optional keys that are unset are left out.
pub fn render_effective(config: &Config) -> String {
    use toml_edit::{Array, ArrayOfTables, DocumentMut, value};
    let str_array = |items: Vec<String>| Array::from_iter(items);
    let mut doc = DocumentMut::new();
    let s = &config.server;
    let mut server = Table::new();
    server["listen"] = value(s.listen.to_string());
    if let Some(u) = &s.public_url {
        server["public_url"] = value(u.as_str());
    }
    server["proxy_prefix"] = value(s.proxy_prefix.as_str());
    server["shutdown_timeout"] = value(format_duration(s.shutdown_timeout));
    server["header_read_timeout"] = value(format_duration(s.header_read_timeout));
    server["body_read_timeout"] = value(format_duration(s.body_read_timeout));
    server["max_header_bytes"] = value(i64::try_from(s.max_header_bytes).unwrap_or(i64::MAX));
    server["max_headers"] = value(i64::try_from(s.max_headers).unwrap_or(i64::MAX));
    server["http2"] = value(s.http2);
    server["workers"] = value(i64::try_from(s.workers).unwrap_or(i64::MAX));
    server["trusted_proxies"] = value(str_array(
        s.trusted_proxies.iter().map(ToString::to_string).collect(),
    ));
    if let Some(tls) = &s.tls {
        let mut t = Table::new();
        render_tls(&mut t, "cert_file", "key_file", tls);
        server["tls"] = Item::Table(t);
    }
    doc["server"] = Item::Table(server);

    let mut log = Table::new();
    log["format"] = value(match config.log.format {
        LogFormat::Text => "text",
        LogFormat::Json => "json",
    });
    log["level"] = value(config.log.level.as_str());
    log["access_log"] = value(config.log.access_log);
    doc["log"] = Item::Table(log);

    if let Some(m) = &config.metrics {
        let mut metrics = Table::new();
        metrics["listen"] = value(m.listen.to_string());
        doc["metrics"] = Item::Table(metrics);
    }

    let mut headers = Table::new();
    headers["identity"] = value(str_array(
        config
            .headers
            .identity
            .iter()
            .map(|h| h.as_str().to_owned())
            .collect(),
    ));
    headers["allow_underscores"] = value(config.headers.allow_underscores);
    let n = &config.headers.names;
    headers["user"] = value(n.user.as_str());
    headers["email"] = value(n.email.as_str());
    headers["preferred_username"] = value(n.preferred_username.as_str());
    headers["groups"] = value(n.groups.as_str());
    headers["access_token"] = value(n.access_token.as_str());
    headers["client_id"] = value(n.client_id.as_str());
    headers["pass_access_token"] = value(config.headers.pass_access_token);
    headers["pass_authorization_header"] = value(config.headers.pass_authorization_header);
    doc["headers"] = Item::Table(headers);

    let mut ups = ArrayOfTables::new();
    for u in &config.upstreams {
        let mut t = Table::new();
        t["name"] = value(u.name.as_str());
        t["url"] = value(u.url.as_str());
        if let Some(h) = &u.host {
            t["host"] = value(h.as_str());
        }
        t["path_prefix"] = value(u.path_prefix.as_str());
        t["preserve_host"] = value(u.preserve_host);
        t["connect_timeout"] = value(format_duration(u.connect_timeout));
        t["response_timeout"] = value(format_duration(u.response_timeout));
        t["read_timeout"] = value(format_duration(u.read_timeout));
        t["idle_timeout"] = value(format_duration(u.idle_timeout));
        if let Some(f) = &u.tls_ca_file {
            t["tls_ca_file"] = value(f.display().to_string());
        }
        if let Some(tls) = &u.tls_client_cert {
            render_tls(&mut t, "tls_client_cert_file", "tls_client_key_file", tls);
        }
        t["insecure_skip_verify"] = value(u.insecure_skip_verify);
        if let Some(c) = &u.client {
            t["client"] = Item::Table(client::render(c));
        }
        ups.push(t);
    }
    render_login(&mut doc, config);
    bearer::render(&mut doc, config);
    doc["upstreams"] = Item::ArrayOfTables(ups);
    render_routes(&mut doc, &config.routes);
    doc.to_string()
}

fn render_tls(t: &mut Table, cert_key: &str, key_key: &str, tls: &TlsConfig) {
    t[cert_key] = toml_edit::value(tls.cert_file.display().to_string());
    // The key file's path is not secret, its content is: say so where people look for it.
    let key_file = toml_edit::Value::from(tls.key_file.display().to_string())
        .decorated(" ", format!("  # private key: {}", tls.key));
    t[key_key] = Item::Value(key_file);
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../config/gatehouse.example.toml");
    const MIN: &str = "[[upstreams]]\nurl = \"http://127.0.0.1:8080\"\n";

    fn load(text: &str) -> Result<Config, ConfigError> {
        load_str(text, Some(Path::new("gatehouse.toml")), &[])
    }

    fn problems(text: &str) -> Vec<String> {
        match load(text) {
            Ok(_) => panic!("expected problems in:\n{text}"),
            Err(e) => e.problems.iter().map(ToString::to_string).collect(),
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "gatehouse-config-{name}-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn write_cert(dir: &Path) -> (PathBuf, PathBuf, String) {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        let key_pem = ck.signing_key.serialize_pem();
        std::fs::write(&key, &key_pem).unwrap();
        (cert, key, key_pem)
    }

    const OIDC_EXAMPLE: &str = include_str!("../../config/gatehouse.oidc.example.toml");
    /// 32 bytes of 0x01, base64.
    const KEY32: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";

    fn login(extra: &str) -> String {
        format!(
            "[server]\npublic_url = \"https://app.example.com\"\n[provider]\nissuer = \"https://idp.example.com\"\nclient_id = \"gh\"\nclient_secret = \"s3cret\"\n{extra}\n[session]\nsecret = \"{KEY32}\"\n{MIN}"
        )
    }

    #[test]
    fn oidc_example_loads_with_secret_files() {
        let dir = temp_dir("oidc-example");
        let cookie = dir.join("cookie");
        std::fs::write(&cookie, format!("{KEY32}\n")).unwrap();
        let client = dir.join("client");
        std::fs::write(&client, "client-secret\n").unwrap();
        let env = vec![
            (
                "GATEHOUSE_SESSION__SECRET_FILE".to_owned(),
                cookie.display().to_string(),
            ),
            (
                "GATEHOUSE_PROVIDER__CLIENT_SECRET_FILE".to_owned(),
                client.display().to_string(),
            ),
        ];
        let c = load_str(OIDC_EXAMPLE, None, &env).unwrap();
        let p = c.provider.as_ref().unwrap();
        assert_eq!(p.issuer.host_str(), Some("idp.example.com"));
        assert!(
            matches!(&p.client_auth, ClientAuth::SecretBasic(s) if s.expose() == "client-secret")
        );
        assert_eq!(
            p.redirect_url.as_str(),
            "https://app.example.com/oauth2/callback"
        );
        assert_eq!(
            p.post_logout_redirect_url.as_str(),
            "https://app.example.com/"
        );
        assert_eq!(
            p.extra_auth_params,
            vec![("prompt".to_owned(), "select_account".to_owned())]
        );
        let s = c.session.as_ref().unwrap();
        assert_eq!(s.cookie_name, "__Host-_gatehouse");
        assert!(s.cookie_secure);
        assert_eq!(c.routes.len(), 2);
        assert!(matches!(c.routes[0].policy, Policy::Public));
        assert!(
            matches!(&c.routes[1].policy, Policy::Require { groups, .. } if groups == &["admins"])
        );
        assert!(matches!(c.default_policy, Policy::Authenticated));
        assert_eq!(c.authorization.allowed_email_domains, vec!["example.com"]);
    }

    #[test]
    fn example_has_no_provider() {
        let c = load_str(EXAMPLE, None, &[]).unwrap();
        assert!(c.provider.is_none() && c.session.is_none());
        assert!(matches!(c.default_policy, Policy::Public));
    }

    #[test]
    fn login_defaults() {
        let c = load(&login("")).unwrap();
        let p = c.provider.as_ref().unwrap();
        assert!(p.endpoints.is_none());
        assert_eq!(p.scopes, vec!["openid", "email", "profile"]);
        assert_eq!(
            p.id_token_algorithms,
            vec![
                Algorithm::RS256,
                Algorithm::ES256,
                Algorithm::PS256,
                Algorithm::EdDSA
            ]
        );
        assert!(!p.use_userinfo);
        assert_eq!(p.timeout, Duration::from_secs(10));
        assert_eq!(p.discovery_refresh, Duration::from_secs(3600));
        assert_eq!(p.clock_leeway, Duration::from_secs(60));
        let s = c.session.as_ref().unwrap();
        assert_eq!(s.secrets.len(), 1);
        assert_eq!(s.secrets[0].expose(), &vec![1u8; 32]);
        assert_eq!(s.same_site, SameSite::Lax);
        assert_eq!(s.lifetime, Duration::from_secs(12 * 3600));
        assert_eq!(s.idle_timeout, Duration::from_secs(3600));
        assert_eq!(s.login_timeout, Duration::from_secs(600));
        assert_eq!(s.max_logins, 5);
        assert!(s.cookie_domain.is_none());
        let a = &c.authorization;
        assert!(a.require_email_verified);
        assert_eq!(a.groups_claim, vec!["groups"]);
        assert!(matches!(c.default_policy, Policy::Authenticated));
        // Without a provider: everything public, and the authorization defaults still apply.
        let c = load(MIN).unwrap();
        assert!(matches!(c.default_policy, Policy::Public));
        assert!(c.authorization.require_email_verified);
        assert_eq!(c.authorization.groups_claim, vec!["groups"]);
    }

    #[test]
    fn issuer_must_be_https_unless_loopback() {
        let p = problems(&login("").replace(
            "issuer = \"https://idp.example.com\"",
            "issuer = \"http://idp.example.com\"",
        ));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with(
                "gatehouse.toml:4:10: provider.issuer: `http://idp.example.com`: https is required"
            ),
            "{}",
            p[0]
        );
        for host in [
            "127.0.0.1:9000",
            "127.3.4.5",
            "[::1]:8080",
            "localhost:8080",
        ] {
            let text = login("").replace("https://idp.example.com", &format!("http://{host}"));
            load(&text).unwrap();
        }
        let p = problems(&login("").replace("https://idp.example.com", "idp"));
        assert!(
            p[0].starts_with("gatehouse.toml:4:10: provider.issuer:"),
            "{}",
            p[0]
        );
    }

    #[test]
    fn explicit_endpoints_need_both_and_userinfo() {
        let p = problems(&login(
            "authorization_endpoint = \"https://idp.example.com/auth\"",
        ));
        assert!(
            p.iter()
                .any(|l| l.contains("provider.token_endpoint: missing required key")),
            "{p:?}"
        );
        let p = problems(&login(
            "authorization_endpoint = \"https://idp.example.com/auth\"\ntoken_endpoint = \"https://idp.example.com/token\"",
        ));
        assert!(
            p.iter()
                .any(|l| l.contains("provider.userinfo_endpoint: `userinfo_endpoint` is required")),
            "{p:?}"
        );
        let c = load(&login(
            "authorization_endpoint = \"https://idp.example.com/auth?x=1\"\ntoken_endpoint = \"https://idp.example.com/token\"\nuserinfo_endpoint = \"https://idp.example.com/me\"",
        ))
        .unwrap();
        let p = c.provider.unwrap();
        assert!(p.use_userinfo);
        assert!(p.endpoints.unwrap().jwks.is_none());
        let p = problems(&login("jwks_uri = \"https://idp.example.com/jwks\""));
        assert!(
            p[0].contains("provider.jwks_uri: only applies with authorization_endpoint"),
            "{p:?}"
        );
    }

    #[test]
    fn provider_needs_public_url_and_session() {
        let text = login("").replace("public_url = \"https://app.example.com\"", "");
        let p = problems(&text);
        assert!(
            p.iter().any(|l| l
                .contains("provider.redirect_url: server.public_url is required with [provider]")),
            "{p:?}"
        );
        let text = login("redirect_url = \"https://a.example.com/cb\"")
            .replace("public_url = \"https://app.example.com\"", "");
        let c = load(&text).unwrap();
        assert_eq!(
            c.provider.unwrap().post_logout_redirect_url.as_str(),
            "https://a.example.com/"
        );
        let text = login("").replace(&format!("[session]\nsecret = \"{KEY32}\"\n"), "");
        let p = problems(&text);
        assert_eq!(
            p,
            vec!["gatehouse.toml:1:1: session: [session] is required with [provider]"]
        );
    }

    #[test]
    fn client_auth_rules() {
        let text = login("").replace("client_secret = \"s3cret\"\n", "");
        let p = problems(&text);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("gatehouse.toml:3:1: provider.client_auth: missing `client_secret`"),
            "{}",
            p[0]
        );
        let c = load(&text.replace("[session]", "client_auth = \"none\"\n[session]")).unwrap();
        assert!(matches!(c.provider.unwrap().client_auth, ClientAuth::None));
        let c = load(&login("client_auth = \"client_secret_post\"")).unwrap();
        assert!(matches!(
            c.provider.unwrap().client_auth,
            ClientAuth::SecretPost(_)
        ));
        let p = problems(&login("client_auth = \"none\""));
        assert!(
            p[0].contains("provider.client_secret: is not used with client_auth = \"none\""),
            "{p:?}"
        );
        let p = problems(&login("client_secret_file = \"/x\""));
        assert!(p[0].contains("provider.client_secret_file: set either `client_secret` or `client_secret_file`, not both"), "{p:?}");
        let p = problems(&login("private_key_id = \"k\""));
        assert!(
            p[0].contains(
                "provider.private_key_id: only applies with client_auth = \"private_key_jwt\""
            ),
            "{p:?}"
        );
        let text = login("").replace("client_id = \"gh\"\n", "");
        assert!(problems(&text)[0].contains("provider.client_id: missing required key"));
    }

    #[test]
    fn private_key_jwt_detects_key_type() {
        let dir = temp_dir("pkjwt");
        let ec = dir.join("ec.pem");
        let ck = rcgen::KeyPair::generate().unwrap();
        std::fs::write(&ec, ck.serialize_pem()).unwrap();
        let base = login("").replace("client_secret = \"s3cret\"\n", "");
        let with = |extra: &str| {
            base.replace("[session]", &format!("client_auth = \"private_key_jwt\"\nprivate_key_file = {:?}\n{extra}\n[session]", ec.display().to_string()))
        };
        let c = load(&with("private_key_id = \"k1\"")).unwrap();
        let ClientAuth::PrivateKeyJwt { alg, kid, key_pem } =
            c.provider.as_ref().unwrap().client_auth.clone()
        else {
            panic!("not private_key_jwt");
        };
        assert_eq!(alg, Algorithm::ES256);
        assert_eq!(kid.as_deref(), Some("k1"));
        assert_eq!(key_pem.expose(), &ck.serialize_pem().into_bytes());
        let out = render_effective(&c);
        assert!(!out.contains("PRIVATE KEY"), "{out}");
        assert!(out.contains("[redacted]"), "{out}");
        let p = problems(&with("private_key_alg = \"RS256\""));
        assert!(
            p[0].contains("provider.private_key_alg: `RS256` does not match the key"),
            "{p:?}"
        );
        let p = problems(&with("").replace(&ec.display().to_string(), "/nonexistent.pem"));
        assert!(
            p[0].contains("provider.private_key_file: cannot read /nonexistent.pem"),
            "{p:?}"
        );
        let cert = dir.join("cert.pem");
        std::fs::write(
            &cert,
            rcgen::generate_simple_self_signed(vec!["a".into()])
                .unwrap()
                .cert
                .pem(),
        )
        .unwrap();
        let p = problems(&with("").replace(&ec.display().to_string(), &cert.display().to_string()));
        assert!(p[0].contains("no RSA or EC private key"), "{p:?}");
        let p =
            problems(&base.replace("[session]", "client_auth = \"private_key_jwt\"\n[session]"));
        assert!(
            p[0].contains("provider.private_key_file: missing required key"),
            "{p:?}"
        );
    }

    #[test]
    fn private_key_jwt_with_rsa_defaults_to_rs256() {
        use base64::Engine as _;
        let dir = temp_dir("pkjwt-rsa");
        let key = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let der =
            aws_lc_rs::encoding::AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&key).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
        let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(chunk).unwrap());
            pem.push('\n');
        }
        pem.push_str("-----END PRIVATE KEY-----\n");
        let f = dir.join("rsa.pem");
        std::fs::write(&f, &pem).unwrap();
        let text = login("").replace(
            "client_secret = \"s3cret\"\n",
            &format!(
                "client_auth = \"private_key_jwt\"\nprivate_key_file = {:?}\n",
                f.display().to_string()
            ),
        );
        let c = load(&text).unwrap();
        assert!(matches!(
            c.provider.unwrap().client_auth,
            ClientAuth::PrivateKeyJwt {
                alg: Algorithm::RS256,
                ..
            }
        ));
        let p = problems(&text.replace("[session]", "private_key_alg = \"ES256\"\n[session]"));
        assert!(p[0].contains("does not match the key"), "{p:?}");
    }

    #[test]
    fn hs256_refused_without_client_secret() {
        let text = login("client_auth = \"none\"\nid_token_algorithms = [\"RS256\", \"HS256\"]")
            .replace("client_secret = \"s3cret\"\n", "");
        let p = problems(&text);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("gatehouse.toml:7:"), "{}", p[0]);
        assert!(
            p[0].contains("provider.id_token_algorithms[1]: `HS256` needs a client secret"),
            "{}",
            p[0]
        );
        let c = load(&login("id_token_algorithms = [\"HS256\"]")).unwrap();
        assert_eq!(
            c.provider.unwrap().id_token_algorithms,
            vec![Algorithm::HS256]
        );
    }

    #[test]
    fn alg_none_refused() {
        for none in ["none", "None"] {
            let p = problems(&login(&format!(
                "id_token_algorithms = [\"RS256\", \"{none}\"]"
            )));
            assert_eq!(p.len(), 1, "{p:?}");
            assert!(p[0].starts_with("gatehouse.toml:7:"), "{}", p[0]);
            assert!(
                p[0].contains("provider.id_token_algorithms[1]: `none` is never accepted"),
                "{}",
                p[0]
            );
        }
        let p = problems(&login("id_token_algorithms = [\"XS1\"]"));
        assert!(p[0].contains("`XS1` is not one of"), "{p:?}");
    }

    #[test]
    fn extra_auth_param_override_refused() {
        for key in [
            "redirect_uri",
            "state",
            "nonce",
            "code_challenge_method",
            "Scope",
        ] {
            let p = problems(&login(&format!(
                "[provider.extra_auth_params]\n{key} = \"x\"\nprompt = \"login\""
            )));
            assert_eq!(p.len(), 1, "{p:?}");
            let want = format!(
                "gatehouse.toml:8:{}: provider.extra_auth_params.{key}: `{key}` is set by Gatehouse",
                key.len() + 4
            );
            assert!(p[0].starts_with(&want), "{}", p[0]);
        }
    }

    #[test]
    fn clock_leeway_and_scopes() {
        let p = problems(&login("clock_leeway = \"6m\""));
        assert!(
            p[0].starts_with(
                "gatehouse.toml:7:16: provider.clock_leeway: `6m` is more than the maximum of 5m"
            ),
            "{p:?}"
        );
        load(&login("clock_leeway = \"5m\"")).unwrap();
        let p = problems(&login("scopes = [\"email\"]"));
        assert!(
            p[0].contains("provider.scopes: must include \"openid\""),
            "{p:?}"
        );
    }

    #[test]
    fn session_secrets() {
        let text = login("").replace(KEY32, "c2hvcnQ=");
        let p = problems(&text);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("gatehouse.toml:9:10: session.secret: the secret decodes to 5 bytes"),
            "{}",
            p[0]
        );
        assert!(!p[0].contains("c2hvcnQ"), "{}", p[0]);
        let p = problems(&login("").replace(KEY32, "not base64 at all!"));
        assert!(
            p[0].contains("session.secret: the secret is not base64"),
            "{p:?}"
        );
        assert!(!p[0].contains("at all!"), "{p:?}");
        // URL-safe without padding: 33 bytes of 0xfb.
        let url_safe = "-_v7-_v7-_v7-_v7-_v7-_v7-_v7-_v7-_v7-_v7-_v7";
        let c = load(&login("").replace(KEY32, url_safe)).unwrap();
        assert_eq!(c.session.unwrap().secrets[0].expose(), &vec![0xfbu8; 33]);
        let p = problems(&login("").replace("[session]\n", "[session]\nsecrets = []\n"));
        assert!(p[0].contains("session.secrets: set only one of"), "{p:?}");
        let text = login("").replace(&format!("secret = \"{KEY32}\""), "secrets = []");
        assert!(problems(&text)[0].contains("session.secrets: at least one secret is required"));
    }

    #[test]
    fn session_secret_rotation_keeps_order() {
        let second = "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=";
        let text = login("").replace(
            &format!("secret = \"{KEY32}\""),
            &format!("secrets = [\"{second}\", \"{KEY32}\"]"),
        );
        let s = load(&text).unwrap().session.unwrap();
        assert_eq!(s.secrets.len(), 2);
        assert_eq!(s.secrets[0].expose(), &vec![2u8; 32]);
        assert_eq!(s.secrets[1].expose(), &vec![1u8; 32]);
        let dir = temp_dir("secrets-file");
        let f = dir.join("secrets");
        std::fs::write(&f, format!("# newest first\n{KEY32}\n\n{second}\n")).unwrap();
        let text = login("").replace(
            &format!("secret = \"{KEY32}\""),
            &format!("secrets_file = {:?}", f.display().to_string()),
        );
        let s = load(&text).unwrap().session.unwrap();
        assert_eq!(s.secrets[0].expose(), &vec![1u8; 32]);
        assert_eq!(s.secrets[1].expose(), &vec![2u8; 32]);
        std::fs::write(&f, format!("{KEY32}\nc2hvcnQ=\n")).unwrap();
        let p = problems(&text);
        assert!(
            p[0].starts_with("gatehouse.toml:9:16: session.secrets_file: line 2 of"),
            "{p:?}"
        );
        assert!(!p[0].contains("c2hvcnQ"), "{p:?}");
    }

    #[test]
    fn cookie_name_prefix_and_flags() {
        let s = load(&login("")).unwrap().session.unwrap();
        assert_eq!(s.cookie_name, "__Host-_gatehouse");
        assert!(s.cookie_secure);
        let s = load(&login("").replace(
            "[session]\n",
            "[session]\ncookie_domain = \"Example.com\"\ncookie_name = \"sid\"\n",
        ))
        .unwrap()
        .session
        .unwrap();
        assert_eq!(s.cookie_name, "sid");
        assert_eq!(s.cookie_domain.as_deref(), Some("example.com"));
        let http = login("").replace("https://app.example.com", "http://127.0.0.1:4180");
        let s = load(&http).unwrap().session.unwrap();
        assert_eq!(s.cookie_name, "_gatehouse");
        assert!(!s.cookie_secure);
        let p = problems(&http.replace("[session]\n", "[session]\ncookie_samesite = \"none\"\n"));
        assert!(
            p[0].starts_with(
                "gatehouse.toml:9:19: session.cookie_samesite: \"none\" requires an https"
            ),
            "{p:?}"
        );
        let s =
            load(&login("").replace("[session]\n", "[session]\ncookie_samesite = \"strict\"\n"))
                .unwrap()
                .session
                .unwrap();
        assert_eq!(s.same_site, SameSite::Strict);
        let p = problems(&login("").replace("[session]\n", "[session]\ncookie_name = \"a;b\"\n"));
        assert!(
            p[0].starts_with(
                "gatehouse.toml:9:15: session.cookie_name: `a;b` is not a valid cookie name"
            ),
            "{p:?}"
        );
        let p = problems(
            &login("").replace("[session]\n", "[session]\ncookie_domain = \"other.org\"\n"),
        );
        assert!(
            p[0].contains("session.cookie_domain: `other.org` does not contain"),
            "{p:?}"
        );
        let p = problems(&login("").replace("[session]\n", "[session]\nstore = \"redis\"\n"));
        assert!(
            p[0].starts_with("gatehouse.toml:9:9: session.store: \"redis\" needs one of"),
            "{p:?}"
        );
        let p = problems(&login("").replace("[session]\n", "[session]\nmax_logins = 21\n"));
        assert!(
            p[0].contains("session.max_logins: 21 is out of range 1..=20"),
            "{p:?}"
        );
    }

    #[test]
    fn authorization_rules() {
        let dir = temp_dir("emails");
        let f = dir.join("emails.txt");
        std::fs::write(&f, "# team\nBob@Example.com\n\ncarol@example.com\n").unwrap();
        let text = format!(
            "[authorization]\nallowed_emails = [\"Alice@Example.COM\"]\nallowed_emails_file = {:?}\nallowed_email_domains = [\"Example.com\", \".corp.example.com\", \"*\"]\ngroups_claim = \"realm_access.roles\"\nrequire_email_verified = false\n{MIN}",
            f.display().to_string()
        );
        let c = load(&text).unwrap();
        let a = c.authorization;
        assert_eq!(
            a.allowed_emails,
            vec!["alice@example.com", "bob@example.com", "carol@example.com"]
        );
        assert_eq!(
            a.allowed_email_domains,
            vec!["example.com", ".corp.example.com", "*"]
        );
        assert_eq!(a.groups_claim, vec!["realm_access", "roles"]);
        assert!(!a.require_email_verified);
        let p = problems(&format!(
            "[authorization]\nallowed_emails = [\"ok@example.com\", \"a@b@example.com\"]\n{MIN}"
        ));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("gatehouse.toml:2:37: authorization.allowed_emails[1]: `a@b@example.com` is not an email address"), "{}", p[0]);
        std::fs::write(&f, "ok@example.com\nevil@x@example.com\n").unwrap();
        let p = problems(&text);
        assert!(
            p[0].starts_with("gatehouse.toml:3:23: authorization.allowed_emails_file: line 2 of"),
            "{p:?}"
        );
        let missing = dir.join("missing.txt");
        let p = problems(&text.replace(&f.display().to_string(), &missing.display().to_string()));
        assert!(
            p[0].starts_with("gatehouse.toml:3:23: authorization.allowed_emails_file: cannot read"),
            "{p:?}"
        );
        let p = problems(&format!(
            "[authorization]\ndefault_policy = \"authenticated\"\n{MIN}"
        ));
        assert_eq!(
            p,
            vec![
                "gatehouse.toml:2:18: authorization.default_policy: \"authenticated\" needs a [provider] (or [bearer] issuers) to authenticate with"
            ]
        );
        let c = load(&login("").replace(
            "[session]",
            "[authorization]\ndefault_policy = \"public\"\n[session]",
        ))
        .unwrap();
        assert!(matches!(c.default_policy, Policy::Public));
    }

    #[test]
    fn routes_are_parsed() {
        let text = login("")
            + "[[routes]]\npath_regex = \"/api/v[0-9]+/\"\nmethods = [\"get\", \"POST\"]\nhost = \"API.example.com\"\n[[routes]]\npath_prefix = \"/admin\"\ngroups = [\"admins\"]\nclaims = { \"realm_access.roles\" = [\"a\", \"b\"], email_verified = true, level = 3 }\n[[routes]]\npath_regex = \"^/health$\"\npolicy = \"public\"\n";
        let c = load(&text).unwrap();
        let r = &c.routes;
        let RoutePath::Regex(re) = &r[0].path else {
            panic!("regex")
        };
        assert_eq!(re.as_str(), "^/api/v[0-9]+/");
        assert!(re.is_match("/api/v2/x"));
        assert!(!re.is_match("/evil/api/v2/x"));
        assert_eq!(r[0].methods, vec![http::Method::GET, http::Method::POST]);
        assert_eq!(r[0].host.as_deref(), Some("api.example.com"));
        assert!(matches!(r[0].policy, Policy::Authenticated));
        let Policy::Require { groups, claims, .. } = &r[1].policy else {
            panic!("require")
        };
        assert_eq!(groups, &["admins"]);
        assert!(claims.contains(&(
            vec!["realm_access".to_owned(), "roles".to_owned()],
            vec![serde_json::json!("a"), serde_json::json!("b")]
        )));
        assert!(claims.contains(&(
            vec!["email_verified".to_owned()],
            vec![serde_json::json!(true)]
        )));
        let RoutePath::Regex(re) = &r[2].path else {
            panic!("regex")
        };
        assert_eq!(re.as_str(), "^/health$");
        assert!(matches!(r[2].policy, Policy::Public));
    }

    #[test]
    fn route_problems() {
        let p = problems(&format!("{MIN}[[routes]]\npath_prefix = \"/admin\"\n"));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("gatehouse.toml:3:1: routes[0].policy: route path_prefix = \"/admin\" requires authentication, which needs a [provider]"), "{}", p[0]);
        let p = problems(&format!(
            "{MIN}[[routes]]\npath_prefix = \"/a\"\ngroups = [\"x\"]\n"
        ));
        assert!(p[0].starts_with("gatehouse.toml:5:10: routes[0].groups: route path_prefix = \"/a\" requires authentication"), "{p:?}");
        load(&format!(
            "{MIN}[[routes]]\npath_prefix = \"/a\"\npolicy = \"public\"\n"
        ))
        .unwrap();
        let p = problems(
            &(login("")
                + "[[routes]]\npath_prefix = \"/a\"\npolicy = \"public\"\ngroups = [\"x\"]\n"),
        );
        assert!(
            p[0].contains("routes[0].policy: \"public\" cannot be combined with `groups`"),
            "{p:?}"
        );
        let p = problems(&(login("") + "[[routes]]\npath_prefix = \"/a\"\npath_regex = \"/b\"\n"));
        assert!(
            p[0].contains(
                "routes[0].path_regex: set either `path_prefix` or `path_regex`, not both"
            ),
            "{p:?}"
        );
        let p = problems(&(login("") + "[[routes]]\npolicy = \"public\"\n"));
        assert!(
            p[0].contains("routes[0].path_prefix: missing required key"),
            "{p:?}"
        );
        let p = problems(&(login("") + "[[routes]]\npath_regex = \"/a(\"\n"));
        assert!(
            p[0].contains("routes[0].path_regex: `/a(` is not a regex"),
            "{p:?}"
        );
        let p = problems(
            &(login("") + "[[routes]]\npath_prefix = \"/a\"\nclaims = { \"x\" = { y = 1 } }\n"),
        );
        assert!(
            p[0].contains("routes[0].claims.x: must be a string, boolean or number"),
            "{p:?}"
        );
        let p = problems(
            &(login("") + "[[routes]]\npath_prefix = \"/a\"\nmethods = [\"BAD METHOD\"]\n"),
        );
        assert!(
            p[0].contains("routes[0].methods[0]: `BAD METHOD` is not an HTTP method"),
            "{p:?}"
        );
        let p = problems(&(login("") + "[[routes]]\npath_prefix = \"/a\"\npolicy = \"admins\"\n"));
        assert!(
            p[0].contains("routes[0].policy: `admins` is not one of"),
            "{p:?}"
        );
    }

    #[test]
    fn render_effective_redacts_login_secrets_and_round_trips() {
        let text = login("extra_auth_params = { prompt = \"login\" }")
            + "[[routes]]\npath_regex = \"/api\"\nmethods = [\"GET\"]\nclaims = { \"realm_access.roles\" = [\"a\", \"b\"], level = 3 }\n[[routes]]\npath_prefix = \"/pub\"\npolicy = \"public\"\n";
        let c = load(&text).unwrap();
        let out = render_effective(&c);
        assert!(!out.contains("s3cret"), "{out}");
        assert!(!out.contains(KEY32), "{out}");
        assert!(out.contains("client_secret = \"[redacted]\""), "{out}");
        assert!(out.contains("secrets = [\"[redacted]\"]"), "{out}");
        assert!(out.contains("cookie_name = \"__Host-_gatehouse\""), "{out}");
        assert!(
            out.contains("redirect_url = \"https://app.example.com/oauth2/callback\""),
            "{out}"
        );
        assert!(!format!("{c:?}").contains("s3cret"));
        // Put a real secret back where the redacted one is, and it loads the same again.
        let back = load(&out.replace(
            "secrets = [\"[redacted]\"]",
            &format!("secrets = [\"{KEY32}\"]"),
        ))
        .unwrap();
        let again = render_effective(&back);
        assert_eq!(out, again);
        assert_eq!(back.routes.len(), 2);
        assert_eq!(back.session.unwrap().cookie_name, "__Host-_gatehouse");
    }

    #[test]
    fn example_file_loads() {
        let config = load_str(EXAMPLE, None, &[]).unwrap();
        assert_eq!(config.upstreams.len(), 1);
        assert_eq!(config.upstreams[0].url.as_str(), "http://127.0.0.1:8080/");
    }

    #[test]
    fn defaults_are_filled() {
        let c = load(MIN).unwrap();
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:4180");
        assert_eq!(c.server.proxy_prefix, "/oauth2");
        assert_eq!(c.server.shutdown_timeout, Duration::from_secs(30));
        assert_eq!(c.server.header_read_timeout, Duration::from_secs(10));
        assert_eq!(c.server.max_header_bytes, 32768);
        assert_eq!(c.server.max_headers, 100);
        assert!(c.server.http2);
        assert!(c.server.trusted_proxies.is_empty());
        assert!(c.server.tls.is_none() && c.server.public_url.is_none());
        assert_eq!(c.log.format, LogFormat::Text);
        assert_eq!(c.log.level, "info");
        assert!(c.log.access_log);
        assert_eq!(c.headers.identity.len(), 6);
        assert_eq!(c.headers.identity[0].as_str(), "x-forwarded-user");
        assert!(!c.headers.allow_underscores);
        let u = &c.upstreams[0];
        assert_eq!(u.name, "upstream-0");
        assert_eq!(u.path_prefix, "/");
        assert!(u.preserve_host && !u.insecure_skip_verify);
        assert_eq!(u.connect_timeout, Duration::from_secs(5));
        assert_eq!(u.response_timeout, Duration::from_secs(60));
        assert_eq!(u.read_timeout, Duration::from_secs(60));
        assert_eq!(u.idle_timeout, Duration::from_secs(90));
    }

    #[test]
    fn unknown_key_at_top_level() {
        let p = problems(&format!("colour = \"blue\"\n{MIN}"));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("gatehouse.toml:1:1: colour: unknown key `colour`; accepted keys: `server`, `log`, `metrics`, `headers`, `upstreams`"), "{}", p[0]);
    }

    #[test]
    fn unknown_key_nested() {
        let p = problems(&format!(
            "[server]\nlisten = \"127.0.0.1:1\"\n  listn = \"x\"\n{MIN}"
        ));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with(
                "gatehouse.toml:3:3: server.listn: unknown key `listn`; accepted keys: `listen`"
            ),
            "{}",
            p[0]
        );
        let p = problems("[[upstreams]]\nurl = \"http://a\"\nurll = \"http://b\"\n");
        assert!(
            p[0].starts_with("gatehouse.toml:3:1: upstreams[0].urll: unknown key"),
            "{}",
            p[0]
        );
    }

    #[test]
    fn wrong_type() {
        let p = problems(&format!("[server]\nhttp2 = \"yes\"\n{MIN}"));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with(
                "gatehouse.toml:2:9: server.http2: invalid type: string \"yes\", expected"
            ),
            "{}",
            p[0]
        );
    }

    #[test]
    fn missing_required_keys() {
        let p = problems("[log]\nlevel = \"debug\"\n");
        assert_eq!(
            p,
            vec![
                "gatehouse.toml:1:1: upstreams: missing required key: at least one [[upstreams]] table with a `url`"
            ]
        );
        let p = problems("[log]\n\n[[upstreams]]\nname = \"app\"\n");
        assert_eq!(
            p,
            vec!["gatehouse.toml:3:1: upstreams[0].url: missing required key `url`"]
        );
    }

    #[test]
    fn relative_url_is_reported_with_its_position() {
        let p = problems("[[upstreams]]\n  url   = \"app\"\n");
        assert_eq!(
            p,
            vec!["gatehouse.toml:2:11: upstreams[0].url: relative URL without a base"]
        );
    }

    #[test]
    fn syntax_error_is_one_problem() {
        let p = problems("[server\n");
        assert_eq!(p.len(), 1);
        assert!(!p[0].contains('\n'), "{}", p[0]);
        assert!(p[0].starts_with("gatehouse.toml:1:"), "{}", p[0]);
    }

    #[test]
    fn several_problems_are_reported_together() {
        let text = "\
bogus = 1
[server]
listen = 4180
shutdown_timeout = \"0s\"
max_headers = 0
[log]
format = \"xml\"
[headers]
identity = [\"ok\", \"bad header\"]
[[upstreams]]
url = \"ftp://x\"
[[upstreams]]
name = \"b\"
";
        let p = problems(text);
        let expected = [
            "gatehouse.toml:1:1: bogus: unknown key",
            "gatehouse.toml:3:10: server.listen: invalid type: integer `4180`",
            "gatehouse.toml:4:20: server.shutdown_timeout: `0s`: a duration must be greater than zero",
            "gatehouse.toml:5:15: server.max_headers: 0 is out of range 1..=1000",
            "gatehouse.toml:7:10: log.format: `xml` is not one of",
            "gatehouse.toml:9:19: headers.identity[1]: `bad header` is not a valid header name",
            "gatehouse.toml:11:7: upstreams[0].url: `ftp://x` must be an http:// or https:// URL",
            "gatehouse.toml:12:1: upstreams[1].url: missing required key `url`",
        ];
        assert_eq!(p.len(), expected.len(), "{p:#?}");
        for (got, want) in p.iter().zip(expected) {
            assert!(got.starts_with(want), "{got}\n does not start with\n{want}");
        }
    }

    #[test]
    fn a_key_of_the_wrong_type_is_not_also_missing() {
        let p = problems("upstreams = \"app\"\n");
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("gatehouse.toml:1:13: upstreams: invalid type"),
            "{}",
            p[0]
        );
        let p = problems("[[upstreams]]\nurl = 8080\n");
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("gatehouse.toml:2:7: upstreams[0].url: invalid type: integer"),
            "{}",
            p[0]
        );
    }

    #[test]
    fn duplicate_routes_and_names() {
        let text = "[[upstreams]]\nurl = \"http://a\"\n[[upstreams]]\nname = \"upstream-0\"\nurl = \"http://b\"\n";
        let p = problems(text);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].starts_with("gatehouse.toml:4:8: upstreams[1].name: duplicate name"));
        assert!(p[1].starts_with(
            "gatehouse.toml:3:1: upstreams[1].path_prefix: same host and path_prefix"
        ));
    }

    #[test]
    fn unreadable_tls_key_is_reported_with_its_line() {
        let dir = temp_dir("missing-key");
        let (cert, _, _) = write_cert(&dir);
        let missing = dir.join("nope.pem");
        let text = format!(
            "[server.tls]\ncert_file = {:?}\nkey_file = {:?}\n{MIN}",
            cert.display().to_string(),
            missing.display().to_string()
        );
        let p = problems(&text);
        assert_eq!(p.len(), 1, "{p:?}");
        let want = format!(
            "gatehouse.toml:3:12: server.tls.key_file: cannot read {}: No such file or directory",
            missing.display()
        );
        assert!(p[0].starts_with(&want), "{}", p[0]);
    }

    #[test]
    fn tls_table_needs_both_files() {
        let p = problems(&format!("[server.tls]\ncert_file = \"/c.pem\"\n{MIN}"));
        assert!(
            p.iter()
                .any(|l| l
                    .starts_with("gatehouse.toml:1:1: server.tls.key_file: missing required key")),
            "{p:?}"
        );
    }

    #[test]
    fn metrics_never_share_the_public_listener() {
        // Rule 37: the same address, or the same port on a wildcard address, is refused.
        for (server, metrics) in [
            ("127.0.0.1:4180", "127.0.0.1:4180"),
            ("0.0.0.0:4180", "127.0.0.1:4180"),
            ("127.0.0.1:4180", "[::]:4180"),
            ("127.0.0.1:4180", "[::ffff:127.0.0.1]:4180"),
        ] {
            let text = format!(
                "[server]\nlisten = \"{server}\"\n[metrics]\nlisten = \"{metrics}\"\n{MIN}"
            );
            let found = problems(&text);
            assert_eq!(found.len(), 1, "{found:?}");
            assert!(
                found[0].contains("metrics.listen") && found[0].contains("of their own"),
                "{found:?}"
            );
        }
        assert!(problems(&format!("[metrics]\n{MIN}"))[0].contains("needs `listen`"));
        assert!(
            problems(&format!("[metrics]\nlisten = \"nowhere\"\n{MIN}"))[0]
                .contains("metrics.listen")
        );
        let c = load(&format!("[metrics]\nlisten = \"127.0.0.1:9464\"\n{MIN}")).unwrap();
        assert_eq!(c.metrics.unwrap().listen.port(), 9464);
        assert!(load(MIN).unwrap().metrics.is_none(), "off by default");
        let out = render_effective(
            &load(&format!("[metrics]\nlisten = \"10.0.0.1:9464\"\n{MIN}")).unwrap(),
        );
        assert!(
            out.contains("[metrics]\nlisten = \"10.0.0.1:9464\""),
            "{out}"
        );
    }

    #[test]
    fn render_effective_redacts_private_keys() {
        let dir = temp_dir("render");
        let (cert, key, key_pem) = write_cert(&dir);
        let text = format!(
            "[server.tls]\ncert_file = {:?}\nkey_file = {:?}\n[[upstreams]]\nurl = \"https://127.0.0.1:8443\"\ntls_client_cert_file = {:?}\ntls_client_key_file = {:?}\n",
            cert.display().to_string(),
            key.display().to_string(),
            cert.display().to_string(),
            key.display().to_string(),
        );
        let config = load(&text).unwrap();
        assert_eq!(config.server.tls.as_ref().unwrap().cert_chain.len(), 1);
        let out = render_effective(&config);
        assert!(out.contains("[redacted]"), "{out}");
        let body: String = key_pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        assert!(!out.contains(&body[..40]), "{out}");
        assert!(!format!("{config:?}").contains(&body[..40]));
        assert!(out.contains("listen = \"127.0.0.1:4180\""), "{out}");
        assert!(out.contains("shutdown_timeout = \"30s\""), "{out}");
        // What check-config prints is itself a loadable configuration.
        load(&out).unwrap();
    }

    #[test]
    fn env_override_is_applied() {
        let env = vec![
            (
                "GATEHOUSE_SERVER__LISTEN".to_owned(),
                "0.0.0.0:9000".to_owned(),
            ),
            ("GATEHOUSE_LOG__LEVEL".to_owned(), "debug".to_owned()),
            ("GATEHOUSE_SERVER__MAX_HEADERS".to_owned(), "50".to_owned()),
            (
                "GATEHOUSE_UPSTREAMS__0__URL".to_owned(),
                "http://10.0.0.1".to_owned(),
            ),
            ("GATEHOUSE_CONFIG".to_owned(), "/etc/x.toml".to_owned()),
            ("HOME".to_owned(), "/root".to_owned()),
        ];
        let c = load_str(MIN, None, &env).unwrap();
        assert_eq!(c.server.listen.to_string(), "0.0.0.0:9000");
        assert_eq!(c.log.level, "debug");
        assert_eq!(c.server.max_headers, 50);
        assert_eq!(c.upstreams[0].url.as_str(), "http://10.0.0.1/");
        // Overrides alone can create an upstream.
        let c = load_str("", None, &env).unwrap();
        assert_eq!(c.upstreams.len(), 1);
    }

    #[test]
    fn bad_env_overrides_are_named() {
        let env = vec![
            ("GATEHOUSE_SERVER__LISTEN".to_owned(), "nowhere".to_owned()),
            ("GATEHOUSE_SERVER__LISTN".to_owned(), "x".to_owned()),
            ("GATEHOUSE_SERVR__LISTEN".to_owned(), "x".to_owned()),
            ("GATEHOUSE_SERVER__HTTP2".to_owned(), "7".to_owned()),
            (
                "GATEHOUSE_UPSTREAMS__5__URL".to_owned(),
                "http://x".to_owned(),
            ),
        ];
        let p: Vec<String> = load_str(MIN, None, &env)
            .unwrap_err()
            .problems
            .iter()
            .map(ToString::to_string)
            .collect();
        let expected = [
            "env GATEHOUSE_UPSTREAMS__5__URL: upstreams[5].url: index 5 is out of range",
            "env GATEHOUSE_SERVER__HTTP2: server.http2: invalid type: integer `7`",
            "env GATEHOUSE_SERVER__LISTN: server.listn: unknown key `listn`",
            "env GATEHOUSE_SERVR__LISTEN: servr: unknown key `servr`",
            "env GATEHOUSE_SERVER__LISTEN: server.listen: `nowhere` is not an IP address",
        ];
        assert_eq!(p.len(), expected.len(), "{p:#?}");
        for want in expected {
            assert!(
                p.iter().any(|l| l.starts_with(want)),
                "missing {want} in {p:#?}"
            );
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in [
            "0s",
            "",
            "10",
            "1.5s",
            "-1s",
            "5 days",
            "s",
            "99999999999999999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_secs(120)), "2m");
    }

    #[test]
    fn secret_or_file_takes_exactly_one() {
        let dir = temp_dir("secret");
        let f = dir.join("s.txt");
        std::fs::write(&f, "  hunter2\n").unwrap();
        let empty = dir.join("empty.txt");
        std::fs::write(&empty, "\n").unwrap();
        let text = "[provider]\nclient_secret_file = \"x\"\n";
        let mut ctx = Ctx {
            text,
            file: "gatehouse.toml".into(),
            root: toml_edit::Document::parse(text).unwrap().into_table(),
            applied: env::Applied::default(),
            problems: Vec::new(),
        };
        let t = KeyPath::default().key("provider");
        let fs = Some(f.display().to_string());
        let got = ctx.secret_or_file(&t, "client_secret", None, fs.clone(), true);
        assert_eq!(got.unwrap().expose(), "hunter2");
        let got = ctx.secret_or_file(&t, "client_secret", Some("v".into()), None, true);
        assert_eq!(got.unwrap().expose(), "v");
        assert!(ctx.problems.is_empty());
        assert!(
            ctx.secret_or_file(&t, "client_secret", None, None, false)
                .is_none()
        );
        assert!(ctx.problems.is_empty());

        // Each call below is judged alone: take its problem out before the next one.
        let mut seen = Vec::new();
        assert!(
            ctx.secret_or_file(&t, "client_secret", Some("v".into()), fs, true)
                .is_none()
        );
        seen.append(&mut ctx.problems);
        assert!(
            ctx.secret_or_file(&t, "client_secret", None, None, true)
                .is_none()
        );
        seen.append(&mut ctx.problems);
        let es = Some(empty.display().to_string());
        assert!(
            ctx.secret_or_file(&t, "client_secret", None, es, true)
                .is_none()
        );
        seen.append(&mut ctx.problems);
        let ms = Some(dir.join("missing").display().to_string());
        assert!(
            ctx.secret_or_file(&t, "client_secret", None, ms, true)
                .is_none()
        );
        seen.append(&mut ctx.problems);
        let p: Vec<String> = seen.iter().map(ToString::to_string).collect();
        assert_eq!(p.len(), 4, "{p:#?}");
        assert_eq!(
            p[0],
            "gatehouse.toml:2:22: provider.client_secret_file: set either `client_secret` or `client_secret_file`, not both"
        );
        assert_eq!(
            p[1],
            "gatehouse.toml:1:1: provider.client_secret: missing required key `client_secret` (or `client_secret_file`)"
        );
        assert!(p[2].ends_with("is empty"), "{}", p[2]);
        assert!(p[3].contains("cannot read"), "{}", p[3]);
    }
}
