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
    dir: TempDir,
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

    fn launch(persistent: bool) -> Self {
        let mut server = Self {
            addr: free_addr(),
            persistent,
            dir: TempDir::new("redis"),
            child: None,
        };
        server.restart();
        server
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
