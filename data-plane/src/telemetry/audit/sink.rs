//! Where audit lines go: JSON-lines files with rotation, and a Redis stream shared by the
//! fleet (bounded by `MAXLEN ~`), each with its own chain. One task writes both. A sink that
//! fails keeps its records (unsealed) and is retried each second; beyond `buffer` records
//! the oldest are dropped, counted, and the chain gets a `gap` line saying how many.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::chain::Chain;
use super::{AuditOptions, Record};
use crate::telemetry::metrics::{AuditSinkLabels, Metrics};

/// Most lines sealed and written in one go per sink.
const BATCH: usize = 512;

/// How long the writer gathers records before it writes: one file write and one Redis
/// pipeline per window instead of per record.
const GATHER: Duration = Duration::from_millis(20);

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

enum Target {
    File(FileSink),
    Redis(RedisSink),
}

impl Target {
    fn name(&self) -> &'static str {
        match self {
            Self::File(_) => "file",
            Self::Redis(_) => "redis",
        }
    }

    async fn write(&mut self, lines: &[String]) -> Result<(), SinkError> {
        match self {
            Self::File(f) => Ok(f.write(lines).await?),
            Self::Redis(r) => r.write(lines).await,
        }
    }
}

/// Why a sink did not take a batch (it is held and retried).
#[derive(Debug, thiserror::Error)]
enum SinkError {
    #[error(transparent)]
    File(#[from] std::io::Error),
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    #[error("timed out")]
    Timeout,
}

struct Sink {
    target: Target,
    chain: Chain,
    queue: VecDeque<(SystemTime, Record)>,
    dropped: u64,
    since_checkpoint: u64,
    last_checkpoint: Instant,
    retry_at: Option<Instant>,
    started: bool,
    /// The file rotated; its opening checkpoint is not written yet.
    rotated: bool,
}

/// The writer task; [`Writer::close`] drains it and writes the closing checkpoints.
#[derive(Debug)]
pub struct Writer {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    pub(super) async fn start(
        opts: AuditOptions,
        rx: mpsc::Receiver<(SystemTime, Record)>,
        lost: Arc<AtomicU64>,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Self> {
        let started_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let mut sinks = Vec::new();
        let key = opts.key.as_deref();
        if let Some(dir) = &opts.dir {
            let file = FileSink::open(
                dir,
                &opts.node,
                started_ms,
                opts.max_file_bytes,
                opts.max_files,
            )
            .await?;
            sinks.push(Sink::new(
                Target::File(file),
                Chain::new(format!("{}/file/{started_ms:x}", opts.node), key),
            ));
        }
        if let Some(url) = &opts.redis_url {
            let redis = RedisSink::new(url, &opts.stream, opts.stream_maxlen)?;
            sinks.push(Sink::new(
                Target::Redis(redis),
                Chain::new(format!("{}/redis/{started_ms:x}", opts.node), key),
            ));
        }
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(run(sinks, rx, stopped, lost, opts, metrics));
        Ok(Self { stop, task })
    }

    /// Writes what is queued, then each chain's closing checkpoint.
    pub async fn close(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

impl Sink {
    fn new(target: Target, chain: Chain) -> Self {
        Self {
            target,
            chain,
            queue: VecDeque::new(),
            dropped: 0,
            since_checkpoint: 0,
            last_checkpoint: Instant::now(),
            retry_at: None,
            started: false,
            rotated: false,
        }
    }

    fn checkpoint(&mut self, reason: &str, node: &str) -> String {
        self.since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
        let fields = format!(
            r#","reason":"{reason}","node":{},"records":{}"#,
            serde_json::Value::from(node),
            self.chain.len()
        );
        self.chain
            .seal("checkpoint", &rfc3339(SystemTime::now()), &fields)
    }

    /// Seals and writes what is queued (and the checkpoints due); on failure nothing is
    /// sealed and the records stay queued.
    async fn flush(&mut self, opts: &AuditOptions, metrics: &Metrics, closing: bool) {
        if self.retry_at.is_some_and(|t| Instant::now() < t) && !closing {
            return;
        }
        loop {
            let mark = self.chain.mark();
            let (since, last) = (self.since_checkpoint, self.last_checkpoint);
            let mut lines = Vec::new();
            if !self.started {
                lines.push(self.checkpoint("start", &opts.node));
            }
            if let Target::File(f) = &mut self.target
                && f.full()
            {
                if let Err(e) = f.rotate().await {
                    self.failed(metrics, &SinkError::File(e));
                    return;
                }
                self.rotated = true;
            }
            if self.rotated {
                lines.push(self.checkpoint("rotate", &opts.node));
            }
            if self.dropped > 0 {
                let fields = format!(
                    r#","dropped":{},"reason":"sink or queue full""#,
                    self.dropped
                );
                lines.push(self.chain.seal("gap", &rfc3339(SystemTime::now()), &fields));
            }
            let n = self.queue.len().min(BATCH);
            for (at, r) in self.queue.iter().take(n) {
                let fields = match serde_json::to_string(r) {
                    Ok(json) => format!(r#","record":{json}"#),
                    Err(_) => String::new(),
                };
                lines.push(self.chain.seal("request", &rfc3339(*at), &fields));
            }
            self.since_checkpoint += n as u64;
            let more = self.queue.len() > n;
            if closing && !more {
                lines.push(self.checkpoint("close", &opts.node));
            } else if self.since_checkpoint > 0 || self.dropped > 0 {
                // Every batch is sealed: no record is ever written without a signed
                // checkpoint after it, so none can be rewritten without the key.
                lines.push(self.checkpoint("seal", &opts.node));
            }
            if lines.is_empty() {
                return;
            }
            match self.target.write(&lines).await {
                Ok(()) => {
                    self.queue.drain(..n);
                    self.started = true;
                    self.rotated = false;
                    self.dropped = 0;
                    if self.retry_at.take().is_some() {
                        tracing::info!(sink = self.target.name(), "audit sink writes again");
                    }
                    metrics
                        .audit_records
                        .get_or_create(&AuditSinkLabels {
                            sink: self.target.name(),
                        })
                        .inc_by(n as u64);
                }
                Err(e) => {
                    self.chain.rewind(mark);
                    self.since_checkpoint = since;
                    self.last_checkpoint = last;
                    self.failed(metrics, &e);
                    return;
                }
            }
            if !more {
                return;
            }
        }
    }

    fn failed(&mut self, metrics: &Metrics, e: &SinkError) {
        metrics
            .audit_sink_errors
            .get_or_create(&AuditSinkLabels {
                sink: self.target.name(),
            })
            .inc();
        if self.retry_at.is_none() {
            tracing::warn!(sink = self.target.name(), error = %crate::error::chain(e), queued = self.queue.len(), "audit sink failed; records are held and retried");
        }
        self.retry_at = Some(Instant::now() + Duration::from_secs(1));
    }

    fn push(&mut self, item: (SystemTime, Record), bound: usize, metrics: &Metrics) {
        if self.queue.len() >= bound {
            self.queue.pop_front();
            self.dropped += 1;
            metrics.audit_dropped.inc();
        }
        self.queue.push_back(item);
    }
}

async fn run(
    mut sinks: Vec<Sink>,
    mut rx: mpsc::Receiver<(SystemTime, Record)>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
    lost: Arc<AtomicU64>,
    opts: AuditOptions,
    metrics: Arc<Metrics>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch = Vec::with_capacity(BATCH);
    let mut closing = false;
    loop {
        tokio::select! {
            n = rx.recv_many(&mut batch, BATCH) => {
                if n == 0 {
                    closing = true;
                } else {
                    closing = gather(&mut rx, &mut batch).await;
                }
            }
            _ = tick.tick() => {}
            _ = &mut stopped, if !closing => {
                closing = true;
                while let Ok(r) = rx.try_recv() {
                    batch.push(r);
                }
            }
        }
        let refused = lost.swap(0, Ordering::Relaxed);
        for s in &mut sinks {
            s.dropped += refused;
        }
        for item in batch.drain(..) {
            if let Some((last, rest)) = sinks.split_last_mut() {
                for s in rest {
                    s.push(item.clone(), opts.buffer, &metrics);
                }
                last.push(item, opts.buffer, &metrics);
            }
        }
        for s in &mut sinks {
            s.flush(&opts, &metrics, closing).await;
        }
        if closing {
            return;
        }
    }
}

/// Adds what arrives within [`GATHER`] (up to a batch); true when the queue closed.
async fn gather(
    rx: &mut mpsc::Receiver<(SystemTime, Record)>,
    batch: &mut Vec<(SystemTime, Record)>,
) -> bool {
    let until = tokio::time::Instant::now() + GATHER;
    while batch.len() < BATCH {
        match tokio::time::timeout_at(until, rx.recv_many(batch, BATCH - batch.len())).await {
            Ok(0) => return true,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    false
}

/// JSON-lines files `audit-<node>-<start ms>-<n>.jsonl`, rotated by size.
struct FileSink {
    dir: PathBuf,
    prefix: String,
    n: u64,
    file: tokio::fs::File,
    written: u64,
    max_bytes: u64,
    max_files: usize,
}

impl FileSink {
    async fn open(
        dir: &Path,
        node: &str,
        started_ms: u128,
        max_bytes: u64,
        max_files: usize,
    ) -> std::io::Result<Self> {
        tokio::fs::create_dir_all(dir).await?;
        let node: String = node
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let prefix = format!("audit-{node}-{started_ms}");
        let file = Self::create(dir, &prefix, 0).await?;
        Ok(Self {
            dir: dir.to_owned(),
            prefix,
            n: 0,
            file,
            written: 0,
            max_bytes,
            max_files,
        })
    }

    fn path(dir: &Path, prefix: &str, n: u64) -> PathBuf {
        dir.join(format!("{prefix}-{n:06}.jsonl"))
    }

    async fn create(dir: &Path, prefix: &str, n: u64) -> std::io::Result<tokio::fs::File> {
        tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(Self::path(dir, prefix, n))
            .await
    }

    fn full(&self) -> bool {
        self.written >= self.max_bytes
    }

    async fn rotate(&mut self) -> std::io::Result<()> {
        self.file.sync_all().await?;
        let next = Self::create(&self.dir, &self.prefix, self.n + 1).await?;
        self.file = next;
        self.n += 1;
        self.written = 0;
        if self.max_files > 0 && self.n >= self.max_files as u64 {
            let old = Self::path(&self.dir, &self.prefix, self.n - self.max_files as u64);
            let _ = tokio::fs::remove_file(old).await;
        }
        Ok(())
    }

    async fn write(&mut self, lines: &[String]) -> std::io::Result<()> {
        let bytes = lines.concat();
        self.file.write_all(bytes.as_bytes()).await?;
        self.file.flush().await?;
        self.written += bytes.len() as u64;
        Ok(())
    }
}

/// The fleet's stream: `XADD <stream> MAXLEN ~ <n> * r <line>`, one pipeline per batch.
struct RedisSink {
    client: redis::Client,
    conn: Option<redis::aio::MultiplexedConnection>,
    stream: String,
    maxlen: u64,
}

impl RedisSink {
    /// The stream at `url`; an invalid URL is named by its category only (the parse error
    /// may echo the URL, and its password).
    fn new(url: &str, stream: &str, maxlen: u64) -> std::io::Result<Self> {
        Ok(Self {
            client: redis::Client::open(url).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("audit redis url: invalid ({:?})", e.kind()),
                )
            })?,
            conn: None,
            stream: stream.to_owned(),
            maxlen,
        })
    }

    async fn write(&mut self, lines: &[String]) -> Result<(), SinkError> {
        const TIMEOUT: Duration = Duration::from_secs(2);
        let conn = match &mut self.conn {
            Some(c) => c,
            None => {
                let c =
                    tokio::time::timeout(TIMEOUT, self.client.get_multiplexed_async_connection())
                        .await
                        .map_err(|_| SinkError::Timeout)??;
                self.conn.insert(c)
            }
        };
        let mut pipe = redis::pipe();
        for l in lines {
            pipe.cmd("XADD")
                .arg(&self.stream)
                .arg("MAXLEN")
                .arg("~")
                .arg(self.maxlen)
                .arg("*")
                .arg("r")
                .arg(l.trim_end())
                .ignore();
        }
        match tokio::time::timeout(TIMEOUT, pipe.query_async::<()>(conn)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                self.conn = None;
                Err(e.into())
            }
            Err(_) => {
                self.conn = None;
                Err(SinkError::Timeout)
            }
        }
    }
}

/// The `audit export` command: drains the stream into a JSON-lines file in `out` (entries
/// are deleted only once written and synced). Returns the file and the number of lines.
pub async fn export(url: &str, stream: &str, out: &Path) -> anyhow::Result<(PathBuf, u64)> {
    use anyhow::Context;
    let client = redis::Client::open(url).context("redis url")?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .context("connecting to redis")?;
    tokio::fs::create_dir_all(out).await?;
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let path = out.join(format!("audit-export-{ms}.jsonl"));
    let mut file = tokio::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(&path)
        .await
        .with_context(|| format!("creating {}", path.display()))?;
    let mut total = 0;
    loop {
        // [[id, [field, value, ...]], ...]
        let entries: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
            .arg(stream)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .context("XRANGE")?;
        if entries.is_empty() {
            break;
        }
        let mut text = String::new();
        let mut ids = Vec::with_capacity(entries.len());
        for (id, fields) in entries {
            for pair in fields.chunks(2) {
                if let [name, line] = pair
                    && name == "r"
                {
                    text.push_str(line);
                    text.push('\n');
                }
            }
            ids.push(id);
        }
        file.write_all(text.as_bytes()).await?;
        file.sync_all().await?;
        let _: u64 = redis::cmd("XDEL")
            .arg(stream)
            .arg(&ids)
            .query_async(&mut conn)
            .await
            .context("XDEL")?;
        total += ids.len() as u64;
    }
    Ok((path, total))
}
