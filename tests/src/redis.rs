//! A real `redis-server` on a free loopback port, with its data in a temp directory (append
//! only, fsync always) so a test can kill it and bring it back with its counters intact.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::procs::{Proc, free_port};

/// A `redis-server` process owned by a test.
#[derive(Debug)]
pub struct RedisServer {
    proc: Option<Proc>,
    pub port: u16,
    dir: PathBuf,
    log_dir: PathBuf,
}

fn binary() -> PathBuf {
    let path = std::env::var_os("REDIS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/redis-server"));
    assert!(
        path.exists(),
        "{} not found: install Redis (apt-get install redis-server) or set REDIS_SERVER",
        path.display()
    );
    path
}

impl RedisServer {
    /// Starts a server and waits until it answers PING.
    pub fn start(log_dir: &Path) -> Self {
        let dir = log_dir.join(format!("redis-{}", free_port()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let mut s = Self {
            proc: None,
            port: free_port(),
            dir,
            log_dir: log_dir.to_owned(),
        };
        s.restart();
        s
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL: no goodbye to its clients).
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// Starts the server again on the same port and data directory.
    pub fn restart(&mut self) {
        self.kill();
        let args: Vec<String> = [
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--dir",
            &self.dir.display().to_string(),
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--protected-mode",
            "no",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        self.proc = Some(Proc::start_path(&binary(), &args, &self.log_dir));
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.command(&["PING"]).as_deref() != Some("+PONG") {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends one command and returns the first line of the reply (`None` when unreachable).
    pub fn command(&self, args: &[&str]) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut out = format!("*{}\r\n", args.len());
        for a in args {
            out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(out.as_bytes()).ok()?;
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).ok()?;
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        // Bulk strings: `$len\r\nvalue\r\n`; return the value.
        let mut lines = text.split("\r\n");
        let first = lines.next()?.to_owned();
        if first.starts_with('$') && first != "$-1" {
            return lines.next().map(str::to_owned);
        }
        Some(first)
    }

    /// An integer read with `HGET key field` (0 when absent).
    pub fn hget_u64(&self, key: &str, field: &str) -> u64 {
        self.command(&["HGET", key, field])
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
