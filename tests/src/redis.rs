//! A real `redis-server` on a free loopback port, spoken to with the `redis` crate, with its
//! data in a temp directory (append only, fsync always) so a test can kill it and bring it
//! back with its counters intact.

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
    extra: Vec<String>,
    binary: PathBuf,
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
        Self::start_with(log_dir, &[])
    }

    /// Starts a server with extra flags.
    pub fn start_with(log_dir: &Path, extra: &[&str]) -> Self {
        Self::start_binary(log_dir, binary(), extra)
    }

    /// Starts Redis 8 (vector sets), as [`crate::assets::redis8_server`] unpacks it.
    pub fn start_redis8(log_dir: &Path) -> Self {
        Self::start_binary(log_dir, crate::assets::redis8_server(), &[])
    }

    fn start_binary(log_dir: &Path, binary: PathBuf, extra: &[&str]) -> Self {
        let dir = log_dir.join(format!("redis-{}", free_port()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let mut s = Self {
            proc: None,
            port: free_port(),
            dir,
            log_dir: log_dir.to_owned(),
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            binary,
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
        .chain(self.extra.iter().cloned())
        .collect();
        self.proc = Some(Proc::start_path(&self.binary, &args, &self.log_dir));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.ping() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs one command with a short-lived connection (`None` when Redis is unreachable or
    /// the reply is not a `T`).
    pub fn query<T: redis::FromRedisValue>(&self, args: &[&str]) -> Option<T> {
        let client = redis::Client::open(self.url()).ok()?;
        let mut conn = client
            .get_connection_with_timeout(Duration::from_secs(2))
            .ok()?;
        let mut cmd = redis::cmd(args.first()?);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query(&mut conn).ok()
    }

    /// Whether the server answers PING.
    pub fn ping(&self) -> bool {
        self.query::<String>(&["PING"]).as_deref() == Some("PONG")
    }

    /// Keys held by this server.
    pub fn dbsize(&self) -> u64 {
        self.query(&["DBSIZE"]).unwrap_or(0)
    }

    /// An integer read with `HGET key field` (0 when absent).
    pub fn hget_u64(&self, key: &str, field: &str) -> u64 {
        self.query::<Option<u64>>(&["HGET", key, field])
            .flatten()
            .unwrap_or(0)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A three-node Redis Cluster (primaries only) on free loopback ports, its slots assigned by
/// `redis-cli --cluster create`.
#[derive(Debug)]
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start(log_dir: &Path) -> Self {
        Self::start_binary(log_dir, binary())
    }

    /// A cluster of Redis 8 nodes (vector sets), as [`crate::assets::redis8_server`] unpacks
    /// it (made into a cluster by the installed `redis-cli`).
    pub fn start_redis8(log_dir: &Path) -> Self {
        Self::start_binary(log_dir, crate::assets::redis8_server())
    }

    fn start_binary(log_dir: &Path, server: PathBuf) -> Self {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                // The bus port defaults to the port + 10000, which lands in the kernel's
                // ephemeral range where an outgoing connection may hold it: pick it too.
                let bus = crate::procs::free_port().to_string();
                let flags = [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                    "--cluster-port",
                    &bus,
                ];
                RedisServer::start_binary(log_dir, server.clone(), &flags)
            })
            .collect();
        let cli = binary().with_file_name("redis-cli");
        let mut cmd = std::process::Command::new(&cli);
        cmd.args(["--cluster", "create"]);
        for n in &nodes {
            cmd.arg(format!("127.0.0.1:{}", n.port));
        }
        let out = cmd
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", cli.display()));
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        for n in &nodes {
            while !n
                .query::<String>(&["CLUSTER", "INFO"])
                .is_some_and(|info| info.starts_with("cluster_state:ok"))
            {
                assert!(Instant::now() < deadline, "cluster did not become ready");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Self { nodes }
    }

    /// Seed URLs, comma-separated (the `--redis-url` of `--redis-cluster`).
    pub fn seeds(&self) -> String {
        self.nodes
            .iter()
            .map(RedisServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }
}
