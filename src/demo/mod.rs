//! `gatehouse demo`: the whole product in one process, for trying it out with nothing but Rust
//! installed — development only, never for production.
//!
//! It runs three servers on loopback: the gateway (default `127.0.0.1:4180`), a built-in
//! development OpenID provider ([`provider`]) that lets anyone sign in as anyone, and an echo
//! upstream ([`echo`]) that shows what the app behind the gateway receives. The gateway is
//! configured from TOML text like any deployment and treats the provider like any provider.

pub mod echo;
mod html;
pub mod provider;

use std::future::Future;
use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{ConfigError, Secret};
use crate::server::{ServeError, Server};
use provider::{DevProvider, ProviderError, SERVICE_CLIENT_ID};

/// Options of `gatehouse demo`.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Where the gateway listens; must be a loopback address. Port 0 picks a free port.
    pub listen: SocketAddr,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 4180)),
        }
    }
}

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(
        "the demo only listens on loopback, and {0} is not a loopback address: its provider lets \
         anyone sign in as anyone"
    )]
    NotLoopback(SocketAddr),
    #[error("cannot listen for the demo's {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error("the demo's generated gateway configuration was rejected: {0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error("cannot write the demo banner: {0}")]
    Banner(#[source] io::Error),
}

/// Runs the demo until `shutdown` completes, then stops all three servers.
pub async fn run(
    opts: DemoOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), DemoError> {
    if !opts.listen.ip().is_loopback() {
        return Err(DemoError::NotLoopback(opts.listen));
    }
    let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let provider_listener = bind("development provider", loopback).await?;
    let provider_addr = local_addr("development provider", &provider_listener, loopback)?;
    let echo_listener = bind("echo upstream", loopback).await?;
    let echo_addr = local_addr("echo upstream", &echo_listener, loopback)?;
    let gateway_listener = bind("gateway", opts.listen).await?;
    let gateway_addr = local_addr("gateway", &gateway_listener, opts.listen)?;

    let issuer = format!("http://{provider_addr}");
    let public_url = format!("http://{gateway_addr}");
    let provider = Arc::new(DevProvider::new(&issuer, &public_url)?);
    let session_secret = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>())
    };
    let text = gateway_config(
        gateway_addr,
        &public_url,
        &format!("http://{echo_addr}"),
        &DemoSecrets {
            issuer: provider.issuer(),
            client_secret: provider.gateway_client_secret().expose(),
            session_secret: &session_secret,
        },
    );
    let config = crate::config::load_str(&text, None, &[])?;
    let server = Server::from_listener(config, gateway_listener)?;
    let ready = server.ready_check();

    // One shutdown for three servers: a watch channel fans the caller's future out. A banner
    // that cannot be written stops the demo too.
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            // An error means the sender is gone, which also means stop.
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    let banner_stop = stopped();
    let trigger = async {
        tokio::select! {
            () = shutdown => {}
            () = banner_stop => {}
        }
        let _ = stop_tx.send(true);
    };
    // "Ready" in the banner means ready: a newcomer (or a script) acting on it at once must
    // not meet the 503 the gateway answers until it has loaded the provider's keys.
    let announce = async {
        let stop = stopped();
        tokio::select! {
            () = wait_until(&ready, PROVIDER_LOAD_WAIT) => {}
            // Stopped before it was ready: nothing to announce.
            () = stop => return Ok(()),
        }
        if !ready() {
            tracing::warn!(
                "the development provider is not loaded yet; logins answer 503 until it is"
            );
        }
        let written = write_banner(
            &mut io::stdout().lock(),
            gateway_addr,
            provider.issuer(),
            provider.service_client_secret(),
        );
        match written {
            Ok(()) => tracing::info!(
                gateway = %gateway_addr,
                provider = %provider_addr,
                echo = %echo_addr,
                "demo running"
            ),
            Err(_) => {
                let _ = stop_tx.send(true);
            }
        }
        written
    };
    let (_, announced, (), (), ()) = tokio::join!(
        trigger,
        announce,
        server.run(stopped()),
        provider::serve(provider.clone(), provider_listener, stopped()),
        echo::serve(echo_listener, stopped()),
    );
    announced.map_err(DemoError::Banner)
}

/// How long the demo waits for its gateway to load the development provider before it prints
/// the banner anyway (the provider is in the same process: this takes milliseconds).
const PROVIDER_LOAD_WAIT: Duration = Duration::from_secs(10);

async fn wait_until(check: &impl Fn() -> bool, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    while !check() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, DemoError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| DemoError::Bind { what, addr, source })
}

fn local_addr(
    what: &'static str,
    listener: &TcpListener,
    addr: SocketAddr,
) -> Result<SocketAddr, DemoError> {
    listener
        .local_addr()
        .map_err(|source| DemoError::Bind { what, addr, source })
}

/// The gateway's configuration as a user would write it.
/// Everything the generated gateway configuration needs besides addresses.
struct DemoSecrets<'a> {
    issuer: &'a str,
    client_secret: &'a str,
    session_secret: &'a str,
}

fn gateway_config(
    listen: SocketAddr,
    public_url: &str,
    echo_url: &str,
    secrets: &DemoSecrets<'_>,
) -> String {
    let quote = |s: &str| toml_edit::Value::from(s).to_string();
    let audience = quote(provider::ACCESS_TOKEN_AUDIENCE);
    format!(
        "# Generated by `gatehouse demo`: development only.\n\
         [server]\n\
         listen = {listen}\n\
         public_url = {public_url}\n\
         \n\
         [provider]\n\
         issuer = {issuer}\n\
         client_id = {client_id}\n\
         client_secret = {client_secret}\n\
         \n\
         [session]\n\
         secret = {session_secret}\n\
         \n\
         [bearer]\n\
         enabled = true\n\
         audiences = [{audience}]\n\
         \n\
         [[upstreams]]\n\
         name = \"echo\"\n\
         url = {echo_url}\n",
        listen = quote(&listen.to_string()),
        public_url = quote(public_url),
        issuer = quote(secrets.issuer),
        client_id = quote(provider::GATEWAY_CLIENT_ID),
        client_secret = quote(secrets.client_secret),
        session_secret = quote(secrets.session_secret),
        echo_url = quote(echo_url),
    )
}

/// The start-up banner. The `Gatehouse demo ready: open http://<addr>/` line is parsed by tests
/// and scripts; keep it exactly so.
fn write_banner(
    out: &mut impl Write,
    gateway: SocketAddr,
    issuer: &str,
    service_secret: &Secret<String>,
) -> io::Result<()> {
    let rule = "=".repeat(78);
    writeln!(out, "{rule}")?;
    writeln!(
        out,
        "  WARNING: `gatehouse demo` is for local development only. Never use it in production."
    )?;
    writeln!(
        out,
        "  Its OpenID provider is in memory and lets anyone sign in as anyone; secrets and"
    )?;
    writeln!(
        out,
        "  sessions vanish when it stops. Everything listens on loopback only."
    )?;
    writeln!(out, "{rule}")?;
    writeln!(out)?;
    writeln!(
        out,
        "  Open http://{gateway}/ in a browser and sign in as anyone."
    )?;
    writeln!(out, "  Development OpenID provider (issuer): {issuer}")?;
    writeln!(out)?;
    writeln!(out, "  Get a machine token (client credentials):")?;
    writeln!(
        out,
        "    curl -s -u {SERVICE_CLIENT_ID}:{secret} -d grant_type=client_credentials {issuer}/token",
        secret = service_secret.expose()
    )?;
    writeln!(out, "  and call the app with its access_token:")?;
    writeln!(
        out,
        "    curl -s -H \"Authorization: Bearer $TOKEN\" http://{gateway}/"
    )?;
    writeln!(out)?;
    writeln!(out, "  Press Ctrl-C to stop.")?;
    writeln!(out)?;
    writeln!(out, "Gatehouse demo ready: open http://{gateway}/")?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refuses_a_non_loopback_listen() {
        for addr in ["0.0.0.0:4180", "192.168.1.10:4180", "[::]:4180"] {
            let opts = DemoOptions {
                listen: addr.parse().unwrap(),
            };
            let err = run(opts, async {}).await.unwrap_err();
            assert!(matches!(err, DemoError::NotLoopback(_)), "{err}");
            assert!(err.to_string().contains("loopback"));
        }
    }

    #[test]
    fn run_can_be_spawned() {
        fn assert_send<T: Send + 'static>(_: &T) {}
        let fut = run(DemoOptions::default(), async {});
        assert_send(&fut);
        drop(fut);
    }

    #[test]
    fn default_listen_is_4180_on_loopback() {
        assert_eq!(DemoOptions::default().listen.to_string(), "127.0.0.1:4180");
    }

    #[test]
    fn generated_config_is_valid_toml_with_the_documented_keys() {
        let text = gateway_config(
            "127.0.0.1:4180".parse().unwrap(),
            "http://127.0.0.1:4180",
            "http://127.0.0.1:5555",
            &DemoSecrets {
                issuer: "http://127.0.0.1:5556",
                client_secret: "s3cret \"quoted\"",
                session_secret: "c2Vzc2lvbg==",
            },
        );
        let doc: toml_edit::DocumentMut = text.parse().unwrap();
        assert_eq!(
            doc["provider"]["issuer"].as_str(),
            Some("http://127.0.0.1:5556")
        );
        assert_eq!(
            doc["provider"]["client_secret"].as_str(),
            Some("s3cret \"quoted\"")
        );
        assert_eq!(doc["session"]["secret"].as_str(), Some("c2Vzc2lvbg=="));
        assert_eq!(doc["server"]["listen"].as_str(), Some("127.0.0.1:4180"));
        assert_eq!(
            doc["server"]["public_url"].as_str(),
            Some("http://127.0.0.1:4180")
        );
        assert_eq!(
            doc["upstreams"][0]["url"].as_str(),
            Some("http://127.0.0.1:5555")
        );
    }

    #[test]
    fn banner_has_the_ready_line_and_the_curl_command() {
        let mut out = Vec::new();
        write_banner(
            &mut out,
            "127.0.0.1:4180".parse().unwrap(),
            "http://127.0.0.1:39999",
            &Secret::new("s3cr3t".to_owned()),
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("Never use it in production"));
        assert!(text.contains("Open http://127.0.0.1:4180/"));
        assert!(text.contains("http://127.0.0.1:39999"));
        assert!(text.contains(
            "curl -s -u demo-service:s3cr3t -d grant_type=client_credentials http://127.0.0.1:39999/token"
        ));
        assert!(
            text.lines()
                .any(|l| l == "Gatehouse demo ready: open http://127.0.0.1:4180/")
        );
    }

    /// The provider and echo wired on real sockets, as `run` wires them.
    #[tokio::test]
    async fn provider_and_echo_serve_over_tcp() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        async fn get(addr: SocketAddr, path: &str) -> String {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            s.write_all(req.as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        }

        let (tx, rx) = watch::channel(false);
        let stopped = move || {
            let mut rx = rx.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        let p = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let e = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (pa, ea) = (p.local_addr().unwrap(), e.local_addr().unwrap());
        let provider =
            Arc::new(DevProvider::new(&format!("http://{pa}"), "http://127.0.0.1:4180").unwrap());
        let ps = tokio::spawn(provider::serve(provider, p, stopped()));
        let es = tokio::spawn(echo::serve(e, stopped()));

        let disco = get(pa, "/.well-known/openid-configuration").await;
        assert!(disco.starts_with("HTTP/1.1 200"), "{disco}");
        assert!(disco.contains(&format!("\"issuer\":\"http://{pa}\"")));
        let echoed = get(ea, "/hello?format=json").await;
        assert!(echoed.starts_with("HTTP/1.1 200"), "{echoed}");
        assert!(echoed.contains("\"path\":\"/hello?format=json\""));

        tx.send(true).unwrap();
        ps.await.unwrap();
        es.await.unwrap();
    }
}
