//! Starting the real binaries as processes for end-to-end tests, and polling helpers.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The directory holding the workspace's binaries (`target/debug` when run by `cargo test`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/debug/deps/<test> -> target/debug
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// Builds the workspace binaries once per test process (a no-op when they are fresh).
pub fn ensure_built() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        // Cargo gives a test the variables of its package; build scripts that watch one of
        // them (ring's watches CARGO_MANIFEST_DIR) would rebuild here, and again in the next
        // `cargo test` outside, every run.
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if k.starts_with("CARGO_PKG_")
                || k.starts_with("CARGO_BIN_")
                || [
                    "CARGO_MANIFEST_DIR",
                    "CARGO_MANIFEST_PATH",
                    "CARGO_CRATE_NAME",
                    "CARGO_PRIMARY_PACKAGE",
                    "CARGO_TARGET_TMPDIR",
                ]
                .contains(&k.as_ref())
            {
                cmd.env_remove(k.as_ref());
            }
        }
        let status = cmd
            .args([
                "build",
                "--quiet",
                "--bins",
                "-p",
                "switchyard-data-plane",
                "-p",
                "switchyard-control-plane",
                "-p",
                "switchyard-tests",
            ])
            .current_dir(workspace_root())
            .status();
        assert!(
            status.is_ok_and(|s| s.success()),
            "building the binaries failed"
        );
    });
}

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// A free loopback port below the kernel's ephemeral range (32768 and up), so that no
/// outgoing connection can take it between this check and the process that binds it.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = 20_000 + (std::process::id() % 40) * 300;
    for _ in 0..12_000 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = u16::try_from(base + n % 12_000).unwrap_or(20_000);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    0
}

/// A free loopback address.
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// A child process killed on drop; its stderr goes to a log file.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    child: Child,
    pub log: PathBuf,
}

impl Proc {
    /// Starts one of the workspace's binaries with `args` and extra environment.
    pub fn start(bin: &str, args: &[String], env: &[(&str, &str)], log_dir: &Path) -> Self {
        ensure_built();
        Self::start_with_env(&bin_dir().join(bin), args, env, log_dir)
    }

    /// Starts any executable by path.
    pub fn start_path(path: &Path, args: &[String], log_dir: &Path) -> Self {
        Self::start_with_env(path, args, &[], log_dir)
    }

    fn start_with_env(path: &Path, args: &[String], env: &[(&str, &str)], log_dir: &Path) -> Self {
        let bin = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let log = log_dir.join(format!("{bin}-{}.log", free_port()));
        let file = std::fs::File::create(&log)
            .unwrap_or_else(|e| panic!("creating {}: {e}", log.display()));
        let err = file
            .try_clone()
            .unwrap_or_else(|e| panic!("cloning log handle: {e}"));
        let mut cmd = Command::new(path);
        cmd.args(args)
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(err))
            .stdin(Stdio::null());
        cmd.env(
            "RUST_LOG",
            std::env::var("TEST_RUST_LOG").unwrap_or_else(|_| "info".into()),
        );
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", path.display()));
        Self {
            name: bin,
            child,
            log,
        }
    }

    /// Everything the process logged so far.
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory in bytes (Linux `VmRSS`), 0 when unreadable.
    pub fn rss(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .map_or(0, |kb| kb * 1024)
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills the process and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM (what Kubernetes sends on pod termination) and waits up to `within` for
    /// the process to exit; true if it did.
    pub fn terminate(&mut self, within: std::time::Duration) -> bool {
        self.signal_term();
        self.wait_exit(within)
    }

    /// Sends SIGTERM and returns at once.
    pub fn signal_term(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    /// Waits up to `within` for the process to exit; true if it did.
    pub fn wait_exit(&mut self, within: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if !self.running() {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        false
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("---- {} log ----\n{}", self.name, self.logs());
        }
    }
}

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `url` answers 200.
pub async fn wait_http_ok(client: &reqwest_lite::Client, url: &str, timeout: Duration) {
    eventually(timeout, &format!("{url} to answer 200"), || async {
        client.get_status(url).await.filter(|s| *s == 200)
    })
    .await;
}

/// A tiny HTTP/1.1 client on hyper, so the library has no heavyweight client dependency.
pub mod reqwest_lite {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client as HClient;
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::rt::TokioExecutor;

    #[derive(Clone, Debug)]
    pub struct Client {
        inner: HClient<HttpConnector, Full<Bytes>>,
    }

    impl Default for Client {
        fn default() -> Self {
            Self {
                inner: HClient::builder(TokioExecutor::new()).build_http(),
            }
        }
    }

    impl Client {
        /// GET, returning the status (None when the connection fails).
        pub async fn get_status(&self, url: &str) -> Option<u16> {
            let uri: http::Uri = url.parse().ok()?;
            let resp = self.inner.get(uri).await.ok()?;
            let status = resp.status().as_u16();
            let _ = resp.into_body().collect().await;
            Some(status)
        }

        /// GET, returning status and body text.
        pub async fn get_text(&self, url: &str) -> Option<(u16, String)> {
            let uri: http::Uri = url.parse().ok()?;
            let resp = self.inner.get(uri).await.ok()?;
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.ok()?.to_bytes();
            Some((status, String::from_utf8_lossy(&body).into_owned()))
        }
    }
}

/// A TCP relay the test can cut: while shut, every relayed connection is dropped and new
/// ones are closed at once, as a network partition would. (A process restart cannot be timed
/// against a client's reconnect backoff; this can.)
#[derive(Debug)]
pub struct TcpGate {
    pub addr: SocketAddr,
    open: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
}

impl TcpGate {
    /// Relays `127.0.0.1:PORT` to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("local addr: {e}"));
        let (tx, rx) = tokio::sync::watch::channel(true);
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !*rx.borrow() {
                    continue;
                }
                let mut rx = rx.clone();
                tokio::spawn(async move {
                    let Ok(mut out) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut out) => {}
                        _ = rx.wait_for(|open| !*open) => {}
                    }
                });
            }
        });
        Self {
            addr,
            open: std::sync::Arc::new(tx),
        }
    }

    /// Cuts (false) or restores (true) the relay.
    pub fn set_open(&self, open: bool) {
        self.open.send_replace(open);
    }
}
