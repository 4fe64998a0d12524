//! A real Debian nginx on 127.0.0.1, one process (`master_process off`), its pid, logs and
//! temp paths in a temp dir, killed by pid when dropped.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{ChildGuard, TempDir};
use crate::support::world::free_addr;

pub struct Nginx {
    pub addr: SocketAddr,
    dir: TempDir,
    _child: ChildGuard,
}

impl Nginx {
    /// Starts nginx with `server_body` inside its one `server { listen …; }` block.
    pub fn start(server_body: &str) -> Self {
        let dir = TempDir::new("nginx");
        let addr = free_addr();
        let d = dir.0.display();
        let conf = format!(
            "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
               server {{\n    listen {addr};\n{server_body}\n  }}\n}}\n"
        );
        let path = dir.write("nginx.conf", &conf);
        let child = Command::new("nginx")
            .arg("-e")
            .arg(dir.0.join("error.log"))
            .arg("-p")
            .arg(&dir.0)
            .arg("-c")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx (apt nginx-light) is installed");
        let guard = ChildGuard(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "nginx did not start: {}",
                std::fs::read_to_string(dir.0.join("error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            addr,
            dir,
            _child: guard,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("error.log")).unwrap_or_default()
    }
}
