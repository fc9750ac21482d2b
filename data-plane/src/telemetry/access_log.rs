//! The access log: one JSON line per request (ids, key id, route, model, backend, status,
//! tokens, cost, latency, time to first token, cache and guardrail results) on stdout,
//! stderr or a file. Never a key or a credential; prompt and answer text only with
//! `--access-log-prompts`. A writer task takes the lines through a bounded queue: a slow
//! destination drops lines (counted), it never slows a request.

use std::path::PathBuf;

use serde::Serialize;
use tokio::io::AsyncWriteExt;

use super::Done;
use super::metrics::Metrics;

/// Lines between the requests and the writer.
const QUEUE: usize = 16_384;
/// Lines are gathered this long after the first of a batch arrives, then written at once: a
/// write (a blocking-pool hop) per request would cost the workers that serve requests.
const WINDOW: std::time::Duration = std::time::Duration::from_millis(50);

/// Where the access log goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    Off,
    Stdout,
    Stderr,
    File(PathBuf),
}

impl std::str::FromStr for Destination {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "off" | "" => Self::Off,
            "stdout" | "-" => Self::Stdout,
            "stderr" => Self::Stderr,
            path => Self::File(path.into()),
        })
    }
}

/// The handle requests write through.
#[derive(Debug)]
pub struct AccessLog {
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
    /// Lines carry prompt and answer text.
    pub prompts: bool,
    metrics: std::sync::Arc<Metrics>,
    /// Told after every write.
    written: std::sync::Arc<tokio::sync::Notify>,
}

/// One line.
#[derive(Serialize)]
struct Line<'a> {
    #[serde(serialize_with = "display")]
    time: humantime::Rfc3339Timestamp,
    request_id: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    trace_id: &'a str,
    endpoint: &'a str,
    status: u16,
    #[serde(skip_serializing_if = "str::is_empty")]
    error: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    key_id: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    route: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    model: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    backend: &'a str,
    stream: bool,
    input_tokens: u64,
    output_tokens: u64,
    cost_usd: f64,
    duration_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    ttft_ms: Option<f64>,
    cache: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    guardrails: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    ended: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response: Option<&'a str>,
}

/// Milliseconds with microsecond precision.
fn millis(d: std::time::Duration) -> f64 {
    d.as_micros() as f64 / 1e3
}

fn display<S: serde::Serializer>(v: &humantime::Rfc3339Timestamp, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

impl AccessLog {
    /// Starts the writer; `None` when the log is off.
    pub async fn start(
        to: Destination,
        prompts: bool,
        metrics: std::sync::Arc<Metrics>,
    ) -> std::io::Result<Option<Self>> {
        let out: Box<dyn tokio::io::AsyncWrite + Send + Unpin> = match to {
            Destination::Off => return Ok(None),
            Destination::Stdout => Box::new(tokio::io::stdout()),
            Destination::Stderr => Box::new(tokio::io::stderr()),
            Destination::File(path) => Box::new(
                tokio::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .await?,
            ),
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(QUEUE);
        let written = std::sync::Arc::new(tokio::sync::Notify::new());
        let told = written.clone();
        tokio::spawn(async move {
            let mut out = out;
            let mut lines = Vec::with_capacity(1024);
            let mut buf = Vec::with_capacity(256 << 10);
            let mut failing = false;
            while rx.recv_many(&mut lines, QUEUE).await > 0 {
                // An empty line asks for what is queued to go out now (at exit).
                if !lines.iter().any(Vec::is_empty) {
                    tokio::time::sleep(WINDOW).await;
                }
                while !rx.is_empty() && rx.recv_many(&mut lines, QUEUE).await > 0 {}
                for l in lines.drain(..) {
                    buf.extend_from_slice(&l);
                }
                let written = match out.write_all(&buf).await {
                    Ok(()) => out.flush().await,
                    Err(e) => Err(e),
                };
                match written {
                    Err(e) if !failing => {
                        tracing::warn!(error = %e, "access log write failed");
                        failing = true;
                    }
                    Ok(()) => failing = false,
                    Err(_) => {}
                }
                buf.clear();
                told.notify_waiters();
            }
        });
        Ok(Some(Self {
            tx,
            prompts,
            metrics,
            written,
        }))
    }

    /// Writes out what is queued (at exit), waiting at most a second.
    pub async fn flush(&self) {
        let written = self.written.notified();
        if self.tx.send(Vec::new()).await.is_ok() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), written).await;
        }
    }

    /// Writes a finished exchange's line (or counts it dropped).
    pub(super) fn write(&self, done: &Done<'_>) {
        let r = &done.open.record;
        let line = Line {
            time: humantime::format_rfc3339_millis(done.open.at),
            request_id: &r.request_id,
            trace_id: &r.trace_id,
            endpoint: r.endpoint,
            status: r.status,
            error: r.error,
            key_id: &r.key,
            route: &r.route,
            model: &r.model,
            backend: &r.backend,
            stream: r.stream,
            input_tokens: r.input_tokens,
            output_tokens: r.output_tokens,
            cost_usd: r.cost_nanos as f64 / 1e9,
            duration_ms: millis(done.elapsed),
            ttft_ms: done.ttft.map(millis),
            cache: r.cache,
            guardrails: &r.guardrails,
            ended: r.ended,
            prompt: r.prompt.as_deref().filter(|_| self.prompts),
            response: r.response.as_deref().filter(|_| self.prompts),
        };
        let mut buf = Vec::with_capacity(384);
        if serde_json::to_writer(&mut buf, &line).is_ok() {
            buf.push(b'\n');
            if self.tx.try_send(buf).is_err() {
                self.metrics.access_log_dropped.inc();
            }
        }
    }
}
