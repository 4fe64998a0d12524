//! The command line as an operator meets it: a bad configuration stops the gateway at start
//! with a message naming file, line, key and reason; `check-config` prints the effective
//! configuration without secrets; `gatehouse demo` serves its echo page through the gateway.

use std::process::Command;

use crate::support::{self, BIN, TempDir, get};

struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn gatehouse(args: &[&str], env: &[(&str, &str)]) -> Outcome {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_remove("GATEHOUSE_CONFIG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    Outcome {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `gatehouse run` on a config that must fail, and returns what it printed.
fn run_must_fail(config: &str) -> (String, String) {
    let dir = TempDir::new("cli");
    let path = dir.write("bad.toml", config);
    let out = gatehouse(&["run", "--config", path.to_str().unwrap()], &[]);
    assert_ne!(
        out.code,
        Some(0),
        "a bad config must not start: {}",
        out.stdout
    );
    assert!(out.code.is_some());
    (out.stderr, path.display().to_string())
}

#[test]
fn an_unknown_key_stops_the_gateway_naming_file_line_and_key() {
    let (err, file) = run_must_fail(
        "[server]\nlisten = \"127.0.0.1:0\"\nlisten_adress = \"x\"\n\n[[upstreams]]\nurl = \"http://127.0.0.1:1\"\n",
    );
    assert!(err.contains(&format!("{file}:3:")), "{err}");
    assert!(err.contains("server.listen_adress"), "{err}");
    assert!(err.to_lowercase().contains("unknown"), "{err}");
}

#[test]
fn a_value_of_the_wrong_type_names_its_key_and_line() {
    let (err, file) = run_must_fail(
        "[server]\nmax_headers = \"many\"\n\n[[upstreams]]\nurl = \"http://127.0.0.1:1\"\n",
    );
    assert!(err.contains(&format!("{file}:2:")), "{err}");
    assert!(err.contains("server.max_headers"), "{err}");
}

#[test]
fn a_missing_required_key_is_named() {
    let (err, file) = run_must_fail("[[upstreams]]\nname = \"app\"\n");
    assert!(err.contains(&file), "{err}");
    assert!(err.contains("upstreams[0].url"), "{err}");
    let (err, _) = run_must_fail("[server]\nlisten = \"127.0.0.1:0\"\n");
    assert!(err.contains("upstreams"), "{err}");
}

#[test]
fn an_unreadable_secret_file_names_its_key_and_line() {
    let (err, file) = run_must_fail(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[server.tls]\ncert_file = \"/nonexistent/cert.pem\"\nkey_file = \"/nonexistent/key.pem\"\n\n[[upstreams]]\nurl = \"http://127.0.0.1:1\"\n",
    );
    assert!(err.contains(&format!("{file}:6:")), "{err}");
    assert!(err.contains("server.tls.key_file"), "{err}");
    assert!(err.contains("/nonexistent/key.pem"), "{err}");
}

#[test]
fn every_problem_is_reported_at_once() {
    let (err, _) = run_must_fail(
        "[server]\nlisten = \"not an address\"\nbogus = 1\n\n[log]\nformat = \"xml\"\n\n[[upstreams]]\nurl = \"ftp://example\"\n",
    );
    for key in [
        "server.listen",
        "server.bogus",
        "log.format",
        "upstreams[0].url",
    ] {
        assert!(err.contains(key), "{key} missing from:\n{err}");
    }
}

#[test]
fn a_bad_environment_override_is_named() {
    let dir = TempDir::new("cli-env");
    let path = dir.write("ok.toml", "[[upstreams]]\nurl = \"http://127.0.0.1:1\"\n");
    let out = gatehouse(
        &["check-config", path.to_str().unwrap()],
        &[("GATEHOUSE_SERVER__LISTEN", "nowhere")],
    );
    assert_ne!(out.code, Some(0));
    assert!(
        out.stderr.contains("GATEHOUSE_SERVER__LISTEN"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("server.listen"), "{}", out.stderr);
}

#[test]
fn check_config_prints_the_effective_configuration_with_secrets_redacted() {
    let dir = TempDir::new("cli-check");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let key_pem = cert.signing_key.serialize_pem();
    let cert_path = dir.write("cert.pem", &cert.cert.pem());
    let key_path = dir.write("key.pem", &key_pem);
    let path = dir.write(
        "ok.toml",
        &format!(
            "[server.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n\n[[upstreams]]\nurl = \"http://127.0.0.1:8080\"\n",
            cert_path.display(),
            key_path.display()
        ),
    );
    let out = gatehouse(
        &["check-config", path.to_str().unwrap()],
        &[("GATEHOUSE_SERVER__LISTEN", "127.0.0.1:9999")],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stdout.contains("127.0.0.1:9999"),
        "env override not applied:\n{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("http://127.0.0.1:8080"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("[redacted]"), "{}", out.stdout);
    let key_body = key_pem.lines().nth(1).unwrap();
    assert!(
        !out.stdout.contains(key_body),
        "the private key was printed"
    );
}

#[test]
fn the_example_configuration_is_valid() {
    let example = support::manifest_dir().join("config/gatehouse.example.toml");
    let out = gatehouse(&["check-config", example.to_str().unwrap()], &[]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
}

#[test]
fn version_and_help_are_printed() {
    let out = gatehouse(&["--version"], &[]);
    assert_eq!(out.code, Some(0));
    assert!(out.stdout.contains(env!("CARGO_PKG_VERSION")));
    let out = gatehouse(&["--help"], &[]);
    assert_eq!(out.code, Some(0));
    for cmd in ["run", "check-config", "demo"] {
        assert!(out.stdout.contains(cmd), "{}", out.stdout);
    }
}

#[tokio::test]
async fn demo_serves_its_echo_page_through_the_gateway() {
    let mut cmd = Command::new(BIN);
    cmd.args(["demo", "--listen", "127.0.0.1:0"]);
    let (child, addr, output) = support::spawn_and_wait(cmd, "Gatehouse demo ready", |line| {
        let url = line.split("open ").nth(1)?.trim();
        let hostport = url.strip_prefix("http://")?.trim_end_matches('/');
        hostport.parse().ok()
    });
    let _guard = support::ChildGuard(child);
    let banner = output.lock().unwrap().join("\n");
    assert!(banner.to_lowercase().contains("development"), "{banner}");
    assert!(banner.contains("grant_type=client_credentials"), "{banner}");

    // "Ready" in the banner means ready: the provider's keys are loaded, so the banner's curl
    // lines work at once.
    let ready = get(&format!("http://{addr}/readyz")).await;
    assert_eq!(ready.status, 200, "{}", ready.text());

    // The demo protects its echo app: a script without a session is told where to log in.
    let page = get(&format!("http://{addr}/hello?from=test")).await;
    assert_eq!(page.status, 401, "{}", page.text());
    assert_eq!(page.json()["login_url"], "/oauth2/start");

    // The development provider answers discovery at the issuer printed in the banner.
    let issuer = banner
        .split_whitespace()
        .find(|w| w.starts_with("http://127.0.0.1:") && !w.contains(&addr.to_string()))
        .expect("no issuer URL in the banner")
        .trim_end_matches('/')
        .to_owned();
    let discovery = get(&format!("{issuer}/.well-known/openid-configuration")).await;
    assert_eq!(discovery.status, 200);
    assert_eq!(discovery.json()["issuer"], issuer.as_str());

    // The banner's two curl lines work: a machine token from the provider opens the app.
    let secret = banner
        .split_whitespace()
        .find_map(|w| w.strip_prefix("demo-service:"))
        .expect("no client credentials in the banner");
    let token = support::send(
        http::Request::post(format!("{issuer}/token"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(http_body_util::Full::new(bytes::Bytes::from(format!(
                "grant_type=client_credentials&client_id=demo-service&client_secret={secret}"
            ))))
            .unwrap(),
    )
    .await;
    assert_eq!(token.status, 200, "{}", token.text());
    let token = token.json()["access_token"].as_str().unwrap().to_owned();
    let page = support::send(
        http::Request::get(format!("http://{addr}/hello?format=json"))
            .header("authorization", format!("Bearer {token}"))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(page.status, 200, "{}", page.text());
    assert!(page.text().contains("demo-service"), "{}", page.text());
}

#[test]
fn a_second_gateway_on_a_port_in_use_fails_to_start() {
    let first = support::Gateway::start("[[upstreams]]\nurl = \"http://127.0.0.1:1\"\n");
    let dir = TempDir::new("cli-port");
    let path = dir.write(
        "second.toml",
        &format!(
            "[server]\nlisten = \"{}\"\n\n[[upstreams]]\nurl = \"http://127.0.0.1:1\"\n",
            first.addr
        ),
    );
    let out = gatehouse(&["run", "--config", path.to_str().unwrap()], &[]);
    assert_ne!(out.code, Some(0));
    assert!(out.stderr.contains("cannot listen"), "{}", out.stderr);
}
