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

use super::raw::{RawConfig, RawHeaders, RawLog, RawServer, RawTls, RawUpstream};
use super::{
    AuthorizationConfig, Config, HeadersConfig, LogConfig, LogFormat, Policy, Secret, ServerConfig,
    TlsConfig, UpstreamConfig, env,
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
        let headers = self.headers(raw.headers.unwrap_or_default());
        let upstreams = self.upstreams(raw.upstreams);
        Config {
            source: source.map(Path::to_path_buf),
            server,
            log,
            headers,
            upstreams,
            // The login sections arrive with their own keys; until then nobody is
            // authenticated and every route is public.
            provider: None,
            session: None,
            authorization: AuthorizationConfig::default(),
            routes: Vec::new(),
            default_policy: Policy::Public,
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
        let bytes = self.read(path, file)?;
        match CertificateDer::pem_slice_iter(&bytes).collect::<Result<Vec<_>, _>>() {
            Ok(certs) if !certs.is_empty() => Some(certs),
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
        HeadersConfig {
            identity,
            allow_underscores: raw.allow_underscores.unwrap_or(false),
        }
    }

    fn upstreams(&mut self, raw: Option<Vec<RawUpstream>>) -> Vec<UpstreamConfig> {
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
        for (i, u) in raw.into_iter().enumerate() {
            let p = p.index(i);
            let Some(up) = self.upstream(&p, i, u) else {
                continue;
            };
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
            idle_timeout,
            tls_ca_file: raw.tls_ca_file.map(PathBuf::from),
            tls_ca_certs,
            tls_client_cert,
            insecure_skip_verify,
        })
    }

    /// A secret given either inline as `<key>` or as a path in `<key>_file` (read, trimmed),
    /// exactly one of them. `table` is the table holding both keys. Later sections
    /// (`client_secret`, cookie secrets) use this so the rule is the same everywhere.
    #[allow(dead_code)] // first users arrive with the provider sections
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
        t["idle_timeout"] = value(format_duration(u.idle_timeout));
        if let Some(f) = &u.tls_ca_file {
            t["tls_ca_file"] = value(f.display().to_string());
        }
        if let Some(tls) = &u.tls_client_cert {
            render_tls(&mut t, "tls_client_cert_file", "tls_client_key_file", tls);
        }
        t["insecure_skip_verify"] = value(u.insecure_skip_verify);
        ups.push(t);
    }
    doc["upstreams"] = Item::ArrayOfTables(ups);
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
        assert_eq!(u.idle_timeout, Duration::from_secs(90));
    }

    #[test]
    fn unknown_key_at_top_level() {
        let p = problems(&format!("colour = \"blue\"\n{MIN}"));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("gatehouse.toml:1:1: colour: unknown key `colour`; accepted keys: `server`, `log`, `headers`, `upstreams`"), "{}", p[0]);
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
