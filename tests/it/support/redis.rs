//! A real Debian `redis-server` on 127.0.0.1 and a free port, its files in a temp dir, killed by
//! pid when dropped. It can be killed and started again on the same port, to test an outage;
//! with `persistent`, every write is in the append-only file first, so a killed server comes
//! back with its data (the operator's setup that makes "no session lost" possible).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{ChildGuard, TempDir};
use crate::support::world::free_addr;

pub struct RedisServer {
    pub addr: SocketAddr,
    persistent: bool,
    /// More `redis-server` arguments (TLS, ACL users, cluster mode).
    extra: Vec<String>,
    dir: TempDir,
    /// Files the server reads again on a restart (TLS certificates), kept while it lives.
    files: Option<TempDir>,
    child: Option<ChildGuard>,
}

impl RedisServer {
    /// A throwaway server: no RDB snapshots, no append-only file.
    pub fn start() -> Self {
        Self::launch(false)
    }

    /// A server that fsyncs every write to its append-only file, so it survives a kill.
    pub fn start_persistent() -> Self {
        Self::launch(true)
    }

    /// A throwaway server with more arguments; its plain port stays open for the harness.
    pub fn start_with(extra: &[&str]) -> Self {
        Self::launch_with(false, extra.iter().map(|s| (*s).to_owned()).collect())
    }

    fn launch(persistent: bool) -> Self {
        Self::launch_with(persistent, Vec::new())
    }

    fn launch_with(persistent: bool, extra: Vec<String>) -> Self {
        let mut server = Self {
            addr: free_addr(),
            persistent,
            extra,
            dir: TempDir::new("redis"),
            files: None,
            child: None,
        };
        server.restart();
        server
    }

    /// A server with TLS on a second port, its certificate signed by a fresh private CA
    /// (for 127.0.0.1): (server, the TLS port's `rediss://` URL, the CA's PEM file).
    pub fn start_tls() -> (Self, String, std::path::PathBuf) {
        let dir = TempDir::new("redis-tls");
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "gatehouse test Redis CA");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let ca_file = dir.write("ca.pem", &ca_cert.pem());
        let cert_file = dir.write("redis.pem", &cert.pem());
        let key_file = dir.write("redis.key", &key.serialize_pem());
        let tls_port = free_addr().port();
        let mut server = Self::start_with(&[
            "--tls-port",
            &tls_port.to_string(),
            "--tls-cert-file",
            cert_file.to_str().unwrap(),
            "--tls-key-file",
            key_file.to_str().unwrap(),
            "--tls-ca-cert-file",
            ca_file.to_str().unwrap(),
            "--tls-auth-clients",
            "no",
        ]);
        let url = format!("rediss://127.0.0.1:{tls_port}");
        server.files = Some(dir);
        (server, url, ca_file)
    }

    /// The names of the users connected now (`CLIENT LIST`), the harness's own included.
    pub fn client_users(&self) -> Vec<String> {
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query(&mut self.connection())
            .unwrap();
        list.split_whitespace()
            .filter_map(|field| field.strip_prefix("user="))
            .map(str::to_owned)
            .collect()
    }

    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Starts the server (again) on the same port and waits for `PING` (10 s at most).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "redis-server is already running");
        let port = self.addr.port().to_string();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port, "--bind", "127.0.0.1", "--save", ""])
            .arg("--dir")
            .arg(&self.dir.0)
            .args(["--logfile", "redis.log"]);
        if self.persistent {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        cmd.args(&self.extra);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (apt redis-server) is installed");
        self.child = Some(ChildGuard(child));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.pong() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING: {}",
                std::fs::read_to_string(self.dir.0.join("redis.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server (SIGKILL, by pid) and waits until it is gone.
    pub fn kill(&mut self) {
        drop(self.child.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(self.addr).is_ok() {
            assert!(Instant::now() < deadline, "redis-server still listening");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn pong(&self) -> bool {
        let Ok(mut s) = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        if s.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    /// A plain synchronous connection, for looking inside.
    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection_with_timeout(Duration::from_secs(5))
            .unwrap()
    }

    /// The keys matching `pattern` (KEYS: fine on a test server).
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        redis::cmd("KEYS")
            .arg(pattern)
            .query(&mut self.connection())
            .unwrap()
    }

    /// The raw value of `key`.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        redis::cmd("GET")
            .arg(key)
            .query(&mut self.connection())
            .unwrap()
    }

    /// The TTL of `key` in milliseconds (-2: no key, -1: no TTL).
    pub fn pttl(&self, key: &str) -> i64 {
        redis::cmd("PTTL")
            .arg(key)
            .query(&mut self.connection())
            .unwrap()
    }
}

/// A Redis Cluster of several nodes on loopback: the slots split evenly between them, every
/// node knowing the others (`cluster_state:ok` and all nodes known, on each), so a key lives on
/// whichever node owns its slot and a client given one node must find the rest.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start(count: usize) -> Self {
        let mut buses = Vec::new();
        let nodes: Vec<RedisServer> = (0..count)
            .map(|_| {
                let bus = free_addr().port();
                buses.push(bus);
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-port",
                    &bus.to_string(),
                ])
            })
            .collect();
        let share = 16384 / count;
        for (i, node) in nodes.iter().enumerate() {
            let last = if i + 1 == count {
                16383
            } else {
                (i + 1) * share - 1
            };
            let _: () = redis::cmd("CLUSTER")
                .arg("ADDSLOTSRANGE")
                .arg(i * share)
                .arg(last)
                .query(&mut node.connection())
                .unwrap();
        }
        let mut first = nodes[0].connection();
        for (node, bus) in nodes.iter().zip(&buses).skip(1) {
            let _: () = redis::cmd("CLUSTER")
                .arg("MEET")
                .arg("127.0.0.1")
                .arg(node.addr.port())
                .arg(*bus)
                .query(&mut first)
                .unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        for node in &nodes {
            loop {
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query(&mut node.connection())
                    .unwrap();
                if info.contains("cluster_state:ok")
                    && info.contains(&format!("cluster_known_nodes:{count}"))
                {
                    break;
                }
                assert!(Instant::now() < deadline, "cluster not ready: {info}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Self { nodes }
    }

    /// The keys matching `pattern` on every node.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        self.nodes.iter().flat_map(|n| n.keys(pattern)).collect()
    }
}

/// A Redis Sentinel (`redis-server --sentinel`) on 127.0.0.1 watching `master` under the name
/// `mymaster`, killed by pid when dropped.
pub struct Sentinel {
    pub addr: SocketAddr,
    _dir: TempDir,
    _child: ChildGuard,
}

impl Sentinel {
    pub fn start(master: &RedisServer) -> Self {
        let dir = TempDir::new("sentinel");
        let addr = free_addr();
        let conf = dir.write(
            "sentinel.conf",
            &format!(
                "port {}\nbind 127.0.0.1\ndir {}\nlogfile sentinel.log\n\
                 sentinel monitor mymaster 127.0.0.1 {} 1\n",
                addr.port(),
                dir.0.display(),
                master.addr.port()
            ),
        );
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (apt redis-server) is installed");
        let sentinel = Self {
            addr,
            _dir: dir,
            _child: ChildGuard(child),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let named: Option<Vec<String>> = redis::Client::open(format!("redis://{addr}"))
                .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(500)))
                .and_then(|mut c| {
                    redis::cmd("SENTINEL")
                        .arg("get-master-addr-by-name")
                        .arg("mymaster")
                        .query(&mut c)
                })
                .ok();
            if named.is_some_and(|a| a.get(1) == Some(&master.addr.port().to_string())) {
                break sentinel;
            }
            assert!(Instant::now() < deadline, "the sentinel did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }
}
