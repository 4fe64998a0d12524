//! The login world shared by the login tests: the development provider served in this process
//! (optionally issuing faulty ID tokens), a recording app, the real gateway binary in front, and
//! a tiny cookie-keeping "browser" that follows the login over HTTP.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use gatehouse::demo::provider::{self, DevProvider, IdTokenFault};
use http::Request;
use http_body_util::Full;

use super::upstream::Upstream;
use super::{Gateway, Reply, send};

/// The gateway's `[session] secret` (base64 of 32 bytes), for tests that rotate it.
pub const SESSION_SECRET: &str = "c2Vzc2lvbi1zZWNyZXQtZm9yLXRlc3RzLW9ubHktMzJieXRlcyE=";

/// The development provider on 127.0.0.1, the app, and a gateway in front of it.
pub struct World {
    pub provider: Arc<DevProvider>,
    pub app: Upstream,
    pub gw: Gateway,
    /// The gateway's configuration, for replicas.
    config: String,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// A port that was free a moment ago (bind 127.0.0.1:0, release), for a server that must know
/// its address before it starts. Never the same port twice in this test process: released
/// ports come back from the kernel, and two tests starting servers on one would collide.
pub fn free_addr() -> SocketAddr {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut handed_out = HANDED_OUT.lock().unwrap();
        if !handed_out.contains(&addr.port()) {
            handed_out.push(addr.port());
            return addr;
        }
    }
}

impl World {
    /// A client-credentials access token of the development provider's service client,
    /// obtained at its token endpoint (client_secret_basic).
    pub async fn service_token(&self) -> String {
        use base64::Engine as _;
        let credentials = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            provider::SERVICE_CLIENT_ID,
            self.provider.service_client_secret().expose()
        ));
        let req = Request::post(format!("{}/token", self.provider.issuer()))
            .header("authorization", format!("Basic {credentials}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from("grant_type=client_credentials")))
            .unwrap();
        let reply = send(req).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        reply.json()["access_token"].as_str().unwrap().to_owned()
    }

    /// The claims of a logout token of this world's provider for `sid` and/or `sub` (fresh
    /// `jti`, issued now).
    pub fn logout_claims(&self, sid: Option<&str>, sub: Option<&str>) -> serde_json::Value {
        let mut c = serde_json::json!({
            "iss": self.provider.issuer(),
            "aud": "gatehouse",
            "iat": gatehouse::oidc::unix_now(),
            "jti": format!("jti-{}", rand::random::<u64>()),
            "events": { gatehouse::oidc::logout_token::BACKCHANNEL_LOGOUT_EVENT: {} },
        });
        if let Some(sid) = sid {
            c["sid"] = serde_json::json!(sid);
        }
        if let Some(sub) = sub {
            c["sub"] = serde_json::json!(sub);
        }
        c
    }

    /// POSTs `body` (form-encoded) to the gateway's back-channel logout endpoint.
    pub async fn post_backchannel_logout(&self, body: &str) -> Reply {
        send(
            Request::post(self.gw.url("/oauth2/backchannel_logout"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(Full::new(Bytes::from(body.to_owned())))
                .unwrap(),
        )
        .await
    }

    /// The provider's back-channel logout with a logout token of `claims`, signed by it.
    pub async fn backchannel_logout(&self, claims: &serde_json::Value) -> Reply {
        let token = self.provider.sign_for_tests(claims, "logout+jwt").unwrap();
        self.post_backchannel_logout(&format!("logout_token={token}"))
            .await
    }

    /// The `Cookie` header `browser` sends to this world's gateway.
    pub fn cookie_header(&self, browser: &Browser) -> String {
        browser.cookie_header(&self.gw.addr.to_string())
    }

    /// A world whose gateway configuration gets `extra` TOML before its upstream.
    pub async fn start(extra: &str) -> Self {
        Self::start_with(None, extra).await
    }

    /// The same, with a provider that issues ID tokens with `fault`.
    pub async fn start_with(fault: Option<IdTokenFault>, extra: &str) -> Self {
        Self::start_full(fault, "", extra, None).await
    }

    /// A world whose provider issues access tokens living `ttl`.
    pub async fn start_with_token_ttl(ttl: std::time::Duration, extra: &str) -> Self {
        Self::start_full(None, "", extra, Some(ttl)).await
    }

    /// A world whose `[server]` table gets `server` lines too (e.g. `trusted_proxies`).
    pub async fn start_with_server(server: &str, extra: &str) -> Self {
        Self::start_full(None, server, extra, None).await
    }

    async fn start_full(
        fault: Option<IdTokenFault>,
        server: &str,
        extra: &str,
        access_ttl: Option<std::time::Duration>,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}", listener.local_addr().unwrap());
        let gw_addr = free_addr();
        let public = format!("http://{gw_addr}");
        let mut provider = DevProvider::new(&issuer, &public).unwrap();
        if let Some(fault) = fault {
            provider = provider.with_id_token_fault(fault);
        }
        if let Some(ttl) = access_ttl {
            provider = provider.with_access_token_ttl(ttl);
        }
        let provider = Arc::new(provider);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(provider::serve(provider.clone(), listener, async {
            let _ = stopped.await;
        }));
        let app = Upstream::start().await;
        let config = format!(
            "[server]\nlisten = \"{gw_addr}\"\npublic_url = \"{public}\"\n{server}\n\n\
             [provider]\nissuer = \"{issuer}\"\nclient_id = \"gatehouse\"\nclient_secret = \"{secret}\"\n\n\
             [session]\nsecret = \"{SESSION_SECRET}\"\n\n\
             {extra}\n\
             [[upstreams]]\nurl = \"{app}\"\n",
            secret = provider.gateway_client_secret().expose(),
            app = app.url(),
        );
        let gw = Gateway::start(&config);
        let world = Self {
            provider,
            app,
            gw,
            config,
            _stop: stop,
        };
        world.wait_ready().await;
        world
    }

    pub async fn wait_ready(&self) {
        self.gw.wait_ready().await;
    }

    /// Another gateway process with the same configuration (same secrets, provider and app)
    /// on its own port: a second replica behind a load balancer.
    pub async fn replica(&self) -> Gateway {
        self.replica_with(str::to_owned).await
    }

    /// A replica whose configuration is this world's after `edit` (another secret, say),
    /// once it is ready.
    pub async fn replica_with(&self, edit: impl FnOnce(&str) -> String) -> Gateway {
        let listen = format!("listen = \"{}\"", self.gw.addr);
        let replica =
            Gateway::start(&edit(&self.config).replace(&listen, "listen = \"127.0.0.1:0\""));
        replica.wait_ready().await;
        replica
    }

    /// Stops the gateway and starts it again on the same address with its configuration after
    /// `edit`: a deploy of a new configuration. The provider's redirect URI names this address,
    /// so logins keep working.
    /// The access token the app received last (`pass_access_token`).
    pub fn access_token_seen(&self) -> String {
        self.app
            .last()
            .header("x-forwarded-access-token")
            .unwrap()
            .to_owned()
    }

    pub async fn restart_with(&mut self, edit: impl FnOnce(&str) -> String) {
        let stopped = self.gw.terminate(std::time::Duration::from_secs(10));
        assert!(stopped.is_some(), "the gateway did not stop on SIGTERM");
        self.config = edit(&self.config);
        self.gw = Gateway::start(&self.config);
        self.wait_ready().await;
    }

    pub fn browser(&self) -> Browser {
        Browser::default()
    }
}

/// Keeps cookies per host:port like a browser (path and expiry simplified: `Max-Age=0` deletes).
#[derive(Default, Clone)]
pub struct Browser {
    jars: BTreeMap<String, BTreeMap<String, String>>,
}

impl Browser {
    pub async fn get(&mut self, url: &str) -> Reply {
        self.request("GET", url, None).await
    }

    /// A navigation to `url` that also sends `headers` (a spoofed `Host`, say). Cookies are
    /// kept for the address connected to, whatever `Host` claims.
    pub async fn get_with(&mut self, url: &str, headers: &[(&str, &str)]) -> Reply {
        self.request_with("GET", url, None, headers).await
    }

    pub async fn request(&mut self, method: &str, url: &str, form: Option<String>) -> Reply {
        self.request_with(method, url, form, &[]).await
    }

    async fn request_with(
        &mut self,
        method: &str,
        url: &str,
        form: Option<String>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let uri: http::Uri = url.parse().unwrap();
        let host = uri.authority().unwrap().to_string();
        let mut req = Request::builder()
            .method(method)
            .uri(url)
            .header("accept", "text/html,application/xhtml+xml")
            .header("sec-fetch-mode", "navigate");
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let cookie = self.cookie_header(&host);
        if !cookie.is_empty() {
            req = req.header("cookie", cookie);
        }
        let body = match form {
            Some(f) => {
                req = req.header("content-type", "application/x-www-form-urlencoded");
                Bytes::from(f)
            }
            None => Bytes::new(),
        };
        let reply = send(req.body(Full::new(body)).unwrap()).await;
        let jar = self.jars.entry(host).or_default();
        for set in reply.headers.get_all("set-cookie") {
            let set = set.to_str().unwrap();
            let (pair, attrs) = set.split_once(';').unwrap_or((set, ""));
            let (name, value) = pair.split_once('=').unwrap();
            let expired = attrs.to_ascii_lowercase().contains("max-age=0");
            if expired {
                jar.remove(name.trim());
            } else {
                jar.insert(name.trim().to_owned(), value.trim().to_owned());
            }
        }
        reply
    }

    pub fn cookies(&self, host: &str) -> BTreeMap<String, String> {
        self.jars.get(host).cloned().unwrap_or_default()
    }

    /// The `Cookie` header this browser sends to `host` (empty without cookies).
    pub fn cookie_header(&self, host: &str) -> String {
        self.jars
            .get(host)
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

pub fn location(reply: &Reply) -> String {
    assert!(
        reply.status.is_redirection(),
        "expected a redirect, got {}: {}",
        reply.status,
        reply.text()
    );
    reply.headers["location"].to_str().unwrap().to_owned()
}

pub fn absolute(base: &str, location: &str) -> String {
    if location.starts_with("http") {
        location.to_owned()
    } else {
        format!("{base}{location}")
    }
}

pub fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} in {html}"))
        + marker.len();
    html[start..start + html[start..].find('"').unwrap()].to_owned()
}

/// Logs `user` in starting from `path`, returns the final reply (the page after login) and the
/// callback URL that was used (for replay tests).
pub async fn login(
    world: &World,
    browser: &mut Browser,
    path: &str,
    user: &str,
    groups: &[&str],
) -> (Reply, String) {
    let gw = world.gw.url("");
    let to_provider = location(&browser.get(&world.gw.url(path)).await);
    assert!(
        to_provider.starts_with(world.provider.issuer()),
        "{to_provider}"
    );
    assert!(
        to_provider.contains("code_challenge_method=S256"),
        "{to_provider}"
    );
    let form_page = browser.get(&to_provider).await;
    assert_eq!(form_page.status, 200, "{}", form_page.text());
    let request_id = hidden(&form_page.text(), "request_id");
    let mut form =
        format!("request_id={request_id}&username={user}&email={user}%40example.com&action=login");
    for g in groups {
        form.push_str(&format!("&groups={g}"));
    }
    let back = browser
        .request(
            "POST",
            &format!("{}/authorize", world.provider.issuer()),
            Some(form),
        )
        .await;
    let callback = location(&back);
    assert!(
        callback.starts_with(&format!("{gw}/oauth2/callback")),
        "{callback}"
    );
    let landed = browser.get(&callback).await;
    let target = absolute(&gw, &location(&landed));
    (browser.get(&target).await, callback)
}

/// Signs in as alice at the provider, starting from `/app`, and returns the gateway's answer
/// to the callback (where the ID token is checked and the session stored).
pub async fn callback_reply(world: &World, browser: &mut Browser) -> Reply {
    callback_reply_from(world, browser, "/app").await
}

/// The same, starting from `start` (a path of the gateway).
pub async fn callback_reply_from(world: &World, browser: &mut Browser, start: &str) -> Reply {
    let to_provider = location(&browser.get(&world.gw.url(start)).await);
    let callback = sign_in_at_provider(world, browser, &to_provider, "alice").await;
    browser.get(&callback).await
}

/// At the provider, from `to_provider` (the gateway's redirect to it), signs `user` in and
/// returns the callback URL the provider sends the browser back to (not followed).
pub async fn sign_in_at_provider(
    world: &World,
    browser: &mut Browser,
    to_provider: &str,
    user: &str,
) -> String {
    assert!(
        to_provider.starts_with(world.provider.issuer()),
        "{to_provider}"
    );
    let form_page = browser.get(to_provider).await;
    assert_eq!(form_page.status, 200, "{}", form_page.text());
    let request_id = hidden(&form_page.text(), "request_id");
    let back = browser
        .request(
            "POST",
            &format!("{}/authorize", world.provider.issuer()),
            Some(format!(
                "request_id={request_id}&username={user}&email={user}%40example.com&action=login"
            )),
        )
        .await;
    let callback = location(&back);
    assert!(
        callback.starts_with(&world.gw.url("/oauth2/callback")),
        "{callback}"
    );
    callback
}

/// Sends a request with `cookie` to the gateway at `gw` (its session due for a refresh) and
/// hangs up while the provider is answering the refresh grant: the grant is done at the
/// provider (the refresh token rotated) but its answer comes 1.5 s later, after the client has
/// gone. Returns once the gateway has had time to take that answer.
pub async fn abandon_a_request_mid_refresh(world: &World, gw: SocketAddr, cookie: &str) {
    use tokio::io::AsyncWriteExt;

    let grants = world.provider.refresh_grant_requests();
    world
        .provider
        .set_token_delay(std::time::Duration::from_millis(1500));
    let mut stream = tokio::net::TcpStream::connect(gw).await.unwrap();
    let request = format!("GET /api/data HTTP/1.1\r\nHost: app\r\nCookie: {cookie}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while world.provider.refresh_grant_requests() == grants {
        assert!(
            std::time::Instant::now() < deadline,
            "the gateway never asked for a refresh"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    drop(stream);
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    // Only now: the provider reads the delay after the grant, so switching it off earlier
    // could let the answer arrive before the hang-up.
    world.provider.set_token_delay(std::time::Duration::ZERO);
}
