//! The harness the scenarios share: processes started (pinned when the machine allows) and
//! stopped, loopback ports, readiness, a process's CPU time and memory, and the two load
//! generators (wrk for request rates and percentiles, `bench/stream_timing.py` for streams).

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};

pub(super) struct Proc(pub(super) Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    pub(super) fn pid(&self) -> u32 {
        self.0.id()
    }
}

/// A free loopback port below the kernel's ephemeral range (32768 and up), so that no
/// outgoing connection can take it between this check and the process that binds it.
pub(super) fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = 20_000 + (std::process::id() % 40) * 300;
    for _ in 0..12_000 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = u16::try_from(base + n % 12_000).unwrap_or(20_000);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    0
}

pub(super) fn has_taskset() -> bool {
    Command::new("taskset")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Spawns `bin args`, pinned to `cpu` when taskset exists and the machine has 2+ cores.
pub(super) fn spawn(
    name: &'static str,
    cpu: Option<&str>,
    bin: &Path,
    args: &[String],
    env: &[(&str, &str)],
    log: &Path,
) -> Result<Proc> {
    let mut cmd = match cpu.filter(|_| has_taskset()) {
        Some(c) => {
            let mut t = Command::new("taskset");
            t.arg("-c").arg(c).arg(bin);
            t
        }
        None => Command::new(bin),
    };
    let file = std::fs::File::create(log)?;
    cmd.args(args)
        .stdout(Stdio::from(file.try_clone()?))
        .stderr(Stdio::from(file))
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let _ = name;
    Ok(Proc(
        cmd.spawn()
            .with_context(|| format!("starting {}", bin.display()))?,
    ))
}

pub(super) fn wait_http(url: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<Full<Bytes>>();
        loop {
            if let Ok(uri) = url.parse::<http::Uri>()
                && let Ok(r) = client.get(uri).await
                && r.status().is_success()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{url} not ready after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

/// The body of a GET.
pub(super) fn get_text(url: &str) -> Result<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<Full<Bytes>>();
        let r = client.get(url.parse::<http::Uri>()?).await?;
        let body = r.into_body().collect().await?.to_bytes();
        Ok(String::from_utf8_lossy(&body).into_owned())
    })
}

/// The CPU time a process has used, user and system (from `/proc`; `None` elsewhere).
pub(super) fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name: state is the first, utime the 12th, stime the 13th.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    let per_second = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(100.0);
    Some(ticks / per_second)
}

pub(super) fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// wrk results.
#[derive(Debug, Clone, Default)]
pub(crate) struct WrkResult {
    pub(super) rps: f64,
    pub(super) p50_us: f64,
    pub(super) p99_us: f64,
    pub(super) p999_us: f64,
    pub(super) errors: u64,
    pub(super) requests: u64,
}

pub(super) fn wrk(
    url: &str,
    conns: u32,
    duration: Duration,
    headers: &[(&str, &str)],
    body: &str,
    dir: &Path,
) -> Result<WrkResult> {
    let script = dir.join("post.lua");
    let mut lua = String::from(
        "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\n",
    );
    for (k, v) in headers {
        let _ = writeln!(lua, "wrk.headers[\"{k}\"] = \"{v}\"");
    }
    let _ = writeln!(lua, "wrk.body = [==[{body}]==]");
    lua.push_str(
        "done = function(summary, latency, requests)\n  local errs = summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.status + summary.errors.timeout\n  io.write(string.format(\"RESULT %d %d %f %f %f %f\\n\", summary.requests, errs, summary.requests / (summary.duration / 1e6), latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))\nend\n",
    );
    std::fs::write(&script, lua)?;
    let secs = duration.as_secs().max(1).to_string();
    let mut cmd = Command::new("wrk");
    if has_taskset() {
        cmd = Command::new("taskset");
        cmd.args(["-c", "1", "wrk"]);
    }
    let out = cmd
        .args([
            "-t1",
            &format!("-c{conns}"),
            &format!("-d{secs}s"),
            "--timeout",
            "10s",
            "-s",
        ])
        .arg(&script)
        .arg(url)
        .output()
        .context("running wrk (apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("RESULT "))
        .with_context(|| format!("no wrk result:\n{text}"))?;
    let f: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    if f.len() < 6 {
        bail!("bad wrk line {line}");
    }
    Ok(WrkResult {
        requests: f[0] as u64,
        errors: f[1] as u64,
        rps: f[2],
        p50_us: f[3],
        p99_us: f[4],
        p999_us: f[5],
    })
}

/// Streaming: time to the first generated text (p50) and mean time per chunk after it, in
/// microseconds, over `n` sequential requests on one keep-alive connection, measured by
/// `bench/stream_timing.py` (a socket client: xtask's own client is a debug build).
pub(super) fn stream_timing(
    url: &str,
    auth: Option<&str>,
    n: usize,
    chunks: usize,
    model: &str,
) -> Result<(f64, f64)> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/stream_timing.py");
    let out = Command::new("python3")
        .arg(script)
        .args([
            url,
            auth.unwrap_or("-"),
            &n.to_string(),
            &chunks.to_string(),
            model,
        ])
        .output()?;
    if !out.status.success() {
        bail!(
            "stream timing against {url} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text.split_whitespace().map(str::parse::<f64>);
    match (it.next(), it.next()) {
        (Some(Ok(ttft)), Some(Ok(gap))) => Ok((ttft, gap)),
        _ => bail!("stream timing printed {text:?}"),
    }
}
