//! The test harness: real servers on 127.0.0.1 port 0, the real `gatehouse` binary as a child
//! process owned by a guard that kills it by pid on drop (also when a test panics), and a
//! recording upstream that remembers exactly what it received.

#![allow(dead_code)]

pub mod issuer;
pub mod nginx;
pub mod oidc;
pub mod redis;
pub mod upstream;
pub mod world;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

pub const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");

/// A unique scratch directory for one test, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir =
            std::env::temp_dir().join(format!("gatehouse-it-{}-{tag}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `gatehouse` child process. Killed by pid when dropped.
pub struct Gateway {
    pub child: Child,
    pub addr: SocketAddr,
    pub output: Arc<Mutex<Vec<String>>>,
    _dir: TempDir,
}

impl Gateway {
    /// Starts `gatehouse run` with `config` (TOML; `listen` is added as 127.0.0.1:0 unless the
    /// text already has a `[server]` table with `listen`) and waits until it listens.
    pub fn start(config: &str) -> Self {
        Self::start_with_env(config, &[])
    }

    pub fn start_with_env(config: &str, env: &[(&str, &str)]) -> Self {
        let dir = TempDir::new("gw");
        let config = if config.contains("listen") {
            config.to_owned()
        } else if config.contains("[server]") {
            config.replacen("[server]", "[server]\nlisten = \"127.0.0.1:0\"", 1)
        } else {
            format!("[server]\nlisten = \"127.0.0.1:0\"\n{config}")
        };
        let path = dir.write("gatehouse.toml", &config);
        let mut cmd = Command::new(BIN);
        cmd.arg("run").arg("--config").arg(&path);
        cmd.env("RUST_LOG", "info");
        for (k, v) in env {
            // `("RUST_LOG", "")`: no RUST_LOG at all, so `[log] level` decides.
            if *k == "RUST_LOG" && v.is_empty() {
                cmd.env_remove("RUST_LOG");
                continue;
            }
            cmd.env(k, v);
        }
        let (child, addr, output) = spawn_and_wait(cmd, "gatehouse listening", parse_address);
        Self {
            child,
            addr,
            output,
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM (by pid) and returns the exit status, waiting at most `deadline`.
    pub fn terminate(&mut self, deadline: Duration) -> Option<std::process::ExitStatus> {
        signal(self.pid(), "TERM");
        wait_exit(&mut self.child, deadline)
    }

    pub fn logs(&self) -> String {
        self.output.lock().unwrap().join("\n")
    }

    /// Waits (20 s at most) until `/readyz` answers 200: the provider's metadata and keys are
    /// loaded in the background after the gateway listens, and until then logins get 503.
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if get(&self.url("/readyz")).await.status == 200 {
                return;
            }
            assert!(Instant::now() < deadline, "gateway never became ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits (5 s at most) until the output has a line containing `needle`: log lines travel
    /// through a pipe and may arrive after the response they describe.
    pub async fn wait_for_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let logs = self.logs();
            if logs.contains(needle) || Instant::now() > deadline {
                return logs;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Owns any child process; kills it by pid on drop.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

pub fn wait_exit(child: &mut Child, deadline: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Spawns `cmd` with stdout and stderr captured line by line, waits (30 s at most) for a line
/// containing `marker`, and extracts the address from it with `parse`.
pub fn spawn_and_wait(
    mut cmd: Command,
    marker: &str,
    parse: fn(&str) -> Option<SocketAddr>,
) -> (Child, SocketAddr, Arc<Mutex<Vec<String>>>) {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let output = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    for stream in [
        Box::new(stdout) as Box<dyn std::io::Read + Send>,
        Box::new(stderr) as Box<dyn std::io::Read + Send>,
    ] {
        let output = output.clone();
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                output.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
    }
    drop(tx);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(marker) => {
                if let Some(addr) = parse(&line) {
                    // Keep draining so the child never blocks on a full pipe.
                    std::thread::spawn(move || while rx.recv().is_ok() {});
                    return (child, addr, output);
                }
            }
            Ok(_) => {}
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let lines = output.lock().unwrap().join("\n");
                panic!("process did not print {marker:?} in time; output:\n{lines}");
            }
        }
    }
}

/// `... address=127.0.0.1:1234 ...` in a text log line, or `"address":"127.0.0.1:1234"` in a
/// JSON one.
pub fn parse_address(line: &str) -> Option<SocketAddr> {
    if let Some(at) = line.find("\"address\":\"") {
        let rest = &line[at + "\"address\":\"".len()..];
        return rest.split('"').next()?.parse().ok();
    }
    let rest = &line[line.find("address=")? + "address=".len()..];
    rest.split_whitespace().next()?.parse().ok()
}

/// A client that never follows redirects and keeps no cookies: what a test asserts is exactly
/// what the gateway answered.
pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub struct Reply {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// The cookies this answer sets, those that clear one (`Max-Age=0`) left out.
    pub fn cookies_set(&self) -> Vec<String> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .filter(|v| !v.to_ascii_lowercase().contains("max-age=0"))
            .collect()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// Sends one request and collects the whole answer (bounded by a 30 s deadline).
pub async fn send(req: http::Request<Full<Bytes>>) -> Reply {
    let fut = async {
        let resp = client().request(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    };
    tokio::time::timeout(Duration::from_secs(30), fut)
        .await
        .expect("request took more than 30 s")
}

pub async fn get(url: &str) -> Reply {
    send(
        http::Request::get(url)
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await
}

/// A GET of `url` with `headers`.
pub async fn get_with(url: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = http::Request::get(url);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    send(req.body(Full::new(Bytes::new())).unwrap()).await
}

/// Writes raw bytes to `addr` and reads until the server closes or `deadline` passes; for
/// requests no well-behaved client library would send.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8], deadline: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(deadline, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Resident set size of `pid` in KiB, from /proc.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

pub fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

impl Gateway {
    /// Like [`Gateway::start`], but the process runs with at most `max_fds` open file
    /// descriptors (`ulimit -n` in a shell that then `exec`s the binary, so the pid is the
    /// gateway's).
    pub fn start_with_fd_limit(config: &str, max_fds: u32) -> Self {
        let dir = TempDir::new("gw-fds");
        let config = if config.contains("listen") {
            config.to_owned()
        } else if config.contains("[server]") {
            config.replacen("[server]", "[server]\nlisten = \"127.0.0.1:0\"", 1)
        } else {
            format!("[server]\nlisten = \"127.0.0.1:0\"\n{config}")
        };
        let path = dir.write("gatehouse.toml", &config);
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!("ulimit -n {max_fds} && exec \"$0\" \"$@\""))
            .arg(BIN)
            .arg("run")
            .arg("--config")
            .arg(&path);
        cmd.env("RUST_LOG", "info");
        let (child, addr, output) = spawn_and_wait(cmd, "gatehouse listening", parse_address);
        Self {
            child,
            addr,
            output,
            _dir: dir,
        }
    }
}

impl Gateway {
    /// Waits (5 s at most) for a `WARN` line containing every one of `needles` and returns
    /// it; panics with the whole output when none comes. What an operator on call greps for.
    pub async fn expect_warn(&self, needles: &[&str]) -> String {
        let find = |logs: &str| {
            logs.lines()
                .find(|l| l.contains(" WARN ") && needles.iter().all(|n| l.contains(n)))
                .map(str::to_owned)
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let logs = self.logs();
            if let Some(line) = find(&logs) {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "no WARN line with {needles:?} in the log:\n{logs}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Panics when any `(what, value)` of `secrets` (tokens, client secrets, cookie values)
    /// appears anywhere in the output: whole, its first 16 characters, or, for a JWT, the
    /// start of its payload or signature (its header is the same for every token).
    pub fn assert_never_logged(&self, secrets: &[(&str, &str)]) {
        let logs = self.logs();
        for (what, value) in secrets {
            assert!(value.len() >= 16, "{what} is too short to search for");
            let probes: Vec<&str> = if value.split('.').count() == 3 {
                value
                    .split('.')
                    .skip(1)
                    .filter(|s| s.len() >= 16)
                    .map(|s| &s[..16])
                    .collect()
            } else {
                vec![&value[..16]]
            };
            for probe in probes {
                assert!(
                    !logs.contains(probe),
                    "{what} ({probe}…) is in the log:\n{logs}"
                );
            }
        }
    }
}
