//! A stand-in token issuer for the bearer-token load benchmark (`benches/load.sh`):
//! `cargo run --release --example bearer_tokens -- OUT_DIR [--tokens N] [--ttl SECS] [--max-seconds SECS]`.
//!
//! It generates an RSA-2048 key and serves, on 127.0.0.1 and until it is stopped (or
//! `--max-seconds`, default 3600, have passed), the same two documents over plain HTTP (for the
//! gateway) and over HTTPS with a self-signed certificate made by rcgen (mod_auth_openidc
//! refuses an http `jwks_uri`):
//!
//! - `GET /jwks`: the JWKS (one RSA key, `kid` "bench-rs256", `alg` RS256, `use` sig);
//! - `GET /.well-known/openid-configuration`: discovery for the issuer, which is the HTTP origin
//!   (`http://127.0.0.1:PORT`), with `jwks_uri` pointing at the HTTP `/jwks`;
//! - `POST /token`: a client-credentials answer (an opaque token living an hour) to any client,
//!   for the gateway's own token toward a protected upstream.
//!
//! Then it writes into OUT_DIR:
//!
//! - `hot.jwt`: one RS256 access token (the "hot" token, sent on every request);
//! - `tokens.txt`: N (default 10 000) distinct RS256 tokens, one per line, same key, each with its
//!   own `sub` and `jti`;
//! - `expired.jwt`, `wrong-iss.jwt`, `wrong-aud.jwt`: tokens signed by the same key that every
//!   target must refuse (expired an hour ago; another issuer; another audience), so that the
//!   benchmark can check that each target verifies what the others verify;
//! - `ca.pem`: the HTTPS server's self-signed certificate (valid for 127.0.0.1 and localhost);
//! - `env`: shell-sourceable `HTTP_PORT=`, `HTTPS_PORT=`, `ISSUER=`, `JWKS_HTTP=`, `JWKS_HTTPS=`,
//!   `AUDIENCE=`, `KID=`;
//! - `ready`: written last, once everything above is in place and being served.
//!
//! Every token: header `{"alg":"RS256","typ":"at+jwt","kid":"bench-rs256"}`; claims `iss` (the
//! issuer), `aud` "api://bench", `sub`, `client_id`, `scope` "bench", `iat`, `nbf`, `exp` (now +
//! `--ttl`, default 4 h), `jti`. The hot token is checked with `jsonwebtoken` before it is
//! written, so a broken signer fails here and not as a wall of 401s in the benchmark.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_SHA256, RsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::json;
use tokio::net::TcpListener;

const AUDIENCE: &str = "api://bench";
const KID: &str = "bench-rs256";

struct Args {
    out: PathBuf,
    tokens: usize,
    ttl: u64,
    max_seconds: u64,
}

fn parse_args() -> Result<Args> {
    let mut it = std::env::args().skip(1);
    let mut out = None;
    let (mut tokens, mut ttl, mut max_seconds) = (10_000usize, 4 * 3600u64, 3600u64);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| -> Result<u64> {
            it.next()
                .ok_or_else(|| anyhow!("{name} needs a value"))?
                .parse()
                .with_context(|| format!("{name}: not a number"))
        };
        match arg.as_str() {
            "--tokens" => tokens = usize::try_from(value("--tokens")?)?,
            "--ttl" => ttl = value("--ttl")?,
            "--max-seconds" => max_seconds = value("--max-seconds")?,
            s if s.starts_with("--") => bail!("unknown option {s}"),
            _ if out.is_none() => out = Some(PathBuf::from(arg)),
            _ => bail!("one OUT_DIR only"),
        }
    }
    let out = out.ok_or_else(|| {
        anyhow!("usage: bearer_tokens OUT_DIR [--tokens N] [--ttl SECS] [--max-seconds SECS]")
    })?;
    Ok(Args {
        out,
        tokens,
        ttl,
        max_seconds,
    })
}

fn main() -> Result<()> {
    let args = parse_args()?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    let key = RsaKeyPair::generate(KeySize::Rsa2048).map_err(|_| anyhow!("RSA key generation"))?;
    let public = key.public_key();
    let n = B64.encode(public.modulus().big_endian_without_leading_zero());
    let e = B64.encode(public.exponent().big_endian_without_leading_zero());
    let jwks = json!({ "keys": [{ "kty": "RSA", "kid": KID, "use": "sig", "alg": "RS256", "n": n, "e": e }] });

    let http = TcpListener::bind("127.0.0.1:0").await?;
    let https = TcpListener::bind("127.0.0.1:0").await?;
    let (http_port, https_port) = (http.local_addr()?.port(), https.local_addr()?.port());
    let issuer = format!("http://127.0.0.1:{http_port}");
    let discovery = json!({
        "issuer": issuer,
        "jwks_uri": format!("{issuer}/jwks"),
        "authorization_endpoint": format!("{issuer}/authorize"),
        "token_endpoint": format!("{issuer}/token"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
    });
    let docs = Arc::new(Docs {
        jwks: Bytes::from(serde_json::to_vec(&jwks)?),
        discovery: Bytes::from(serde_json::to_vec(&discovery)?),
        token: Bytes::from(serde_json::to_vec(&serde_json::json!({
            "access_token": "bench-gateway-client-token",
            "token_type": "Bearer",
            "expires_in": 3600,
        }))?),
    });

    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?;
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(
        vec![CertificateDer::from(certified.cert.der().to_vec())],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            certified.signing_key.serialize_der(),
        )),
    )?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));

    tokio::spawn(serve_http(http, docs.clone()));
    tokio::spawn(serve_https(https, acceptor, docs));

    // Sign the tokens on all cores (RSA-2048 signing is ~1 ms each) while the servers run.
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let claims = Claims {
        issuer: issuer.clone(),
        audience: AUDIENCE.to_owned(),
        now,
        exp: now + args.ttl,
    };
    let count = args.tokens;
    let (hot, bad, tokens) = tokio::task::spawn_blocking(move || -> Result<_> {
        let hot = sign(&key, &claims, "bench-hot")?;
        check(&hot, &jwks, &claims.issuer)?;
        let expired = Claims {
            now: claims.now - 7200,
            exp: claims.now - 3600,
            ..claims.clone()
        };
        let wrong_iss = Claims {
            issuer: format!("{}/other", claims.issuer),
            ..claims.clone()
        };
        let wrong_aud = Claims {
            audience: "api://other".to_owned(),
            ..claims.clone()
        };
        let bad = [
            ("expired.jwt", sign(&key, &expired, "bench-hot")?),
            ("wrong-iss.jwt", sign(&key, &wrong_iss, "bench-hot")?),
            ("wrong-aud.jwt", sign(&key, &wrong_aud, "bench-hot")?),
        ];
        Ok((hot, bad, sign_many(&key, &claims, count)?))
    })
    .await??;

    let out = &args.out;
    write_file(&out.join("hot.jwt"), format!("{hot}\n").as_bytes())?;
    for (name, token) in &bad {
        write_file(&out.join(name), format!("{token}\n").as_bytes())?;
    }
    let mut list = String::with_capacity(tokens.iter().map(|t| t.len() + 1).sum());
    for token in &tokens {
        list.push_str(token);
        list.push('\n');
    }
    write_file(&out.join("tokens.txt"), list.as_bytes())?;
    write_file(&out.join("ca.pem"), certified.cert.pem().as_bytes())?;
    let env = format!(
        "HTTP_PORT={http_port}\nHTTPS_PORT={https_port}\nISSUER={issuer}\nJWKS_HTTP={issuer}/jwks\n\
         JWKS_HTTPS=https://127.0.0.1:{https_port}/jwks\nAUDIENCE={AUDIENCE}\nKID={KID}\n"
    );
    write_file(&out.join("env"), env.as_bytes())?;
    write_file(&out.join("ready"), b"ok\n")?;
    eprintln!(
        "bearer_tokens: issuer {issuer}, JWKS also at https://127.0.0.1:{https_port}/jwks; {} tokens in {}",
        tokens.len(),
        out.display()
    );

    tokio::select! {
        _ = tokio::time::sleep(Duration::from_secs(args.max_seconds)) => {
            eprintln!("bearer_tokens: --max-seconds reached, exiting");
        }
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}

struct Docs {
    jwks: Bytes,
    discovery: Bytes,
    /// The answer of `POST /token` (any client, any grant): the gateway's own client-credentials
    /// token toward a protected upstream, for the `gateway-upstream-token` target.
    token: Bytes,
}

#[derive(Clone)]
struct Claims {
    issuer: String,
    audience: String,
    now: u64,
    exp: u64,
}

/// One signed RS256 token for subject `sub`; `jti` is unique per call.
fn sign(key: &RsaKeyPair, c: &Claims, sub: &str) -> Result<String> {
    let mut jti = [0u8; 16];
    aws_lc_rs::rand::fill(&mut jti).map_err(|_| anyhow!("random"))?;
    let header = json!({ "alg": "RS256", "typ": "at+jwt", "kid": KID });
    let payload = json!({
        "iss": c.issuer,
        "aud": c.audience,
        "sub": sub,
        "client_id": "bench-client",
        "scope": "bench",
        "iat": c.now,
        "nbf": c.now.saturating_sub(60),
        "exp": c.exp,
        "jti": B64.encode(jti),
    });
    let mut token = format!(
        "{}.{}",
        B64.encode(serde_json::to_vec(&header)?),
        B64.encode(serde_json::to_vec(&payload)?)
    );
    let mut sig = vec![0u8; key.public_modulus_len()];
    key.sign(
        &RSA_PKCS1_SHA256,
        &SystemRandom::new(),
        token.as_bytes(),
        &mut sig,
    )
    .map_err(|_| anyhow!("RSA signing"))?;
    token.push('.');
    token.push_str(&B64.encode(sig));
    Ok(token)
}

fn sign_many(key: &RsaKeyPair, c: &Claims, count: usize) -> Result<Vec<String>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = count.div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..count)
            .step_by(chunk)
            .map(|start| {
                s.spawn(move || {
                    (start..(start + chunk).min(count))
                        .map(|i| sign(key, c, &format!("bench-user-{i:05}")))
                        .collect::<Result<Vec<_>>>()
                })
            })
            .collect();
        let mut all = Vec::with_capacity(count);
        for handle in handles {
            all.extend(
                handle
                    .join()
                    .map_err(|_| anyhow!("signing thread panicked"))??,
            );
        }
        Ok(all)
    })
}

/// Verifies `token` with jsonwebtoken against the JWKS, issuer and audience we serve.
fn check(token: &str, jwks: &serde_json::Value, issuer: &str) -> Result<()> {
    let jwk = &jwks["keys"][0];
    let (Some(n), Some(e)) = (jwk["n"].as_str(), jwk["e"].as_str()) else {
        bail!("JWKS without n/e");
    };
    let key = jsonwebtoken::DecodingKey::from_rsa_components(n, e)?;
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[AUDIENCE]);
    jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation)
        .context("the token just signed does not verify")?;
    Ok(())
}

/// Writes `path` atomically (temporary file, then rename).
fn write_file(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn respond(docs: &Docs, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let body = match req.uri().path() {
        "/jwks" => Some(docs.jwks.clone()),
        "/.well-known/openid-configuration" => Some(docs.discovery.clone()),
        "/token" if req.method() == http::Method::POST => Some(docs.token.clone()),
        _ => None,
    };
    let mut res = match body {
        Some(body) => Response::new(Full::new(body)),
        None => {
            let mut res = Response::new(Full::new(Bytes::from_static(b"not found\n")));
            *res.status_mut() = StatusCode::NOT_FOUND;
            res
        }
    };
    let ctype = if res.status().is_success() {
        "application/json"
    } else {
        "text/plain"
    };
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(ctype),
    );
    res
}

async fn serve_conn<IO>(io: IO, docs: Arc<Docs>, peer: SocketAddr)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let res = respond(&docs, &req);
        async move { Ok::<_, std::convert::Infallible>(res) }
    });
    if let Err(err) = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .await
    {
        eprintln!("bearer_tokens: connection from {peer}: {err}");
    }
}

async fn serve_http(listener: TcpListener, docs: Arc<Docs>) {
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                tokio::spawn(serve_conn(tcp, docs.clone(), peer));
            }
            Err(err) => {
                eprintln!("bearer_tokens: accept: {err}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve_https(listener: TcpListener, acceptor: tokio_rustls::TlsAcceptor, docs: Arc<Docs>) {
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                let (acceptor, docs) = (acceptor.clone(), docs.clone());
                tokio::spawn(async move {
                    match acceptor.accept(tcp).await {
                        Ok(tls) => serve_conn(tls, docs, peer).await,
                        Err(err) => eprintln!("bearer_tokens: TLS from {peer}: {err}"),
                    }
                });
            }
            Err(err) => {
                eprintln!("bearer_tokens: accept: {err}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
