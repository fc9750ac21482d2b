//! The audit trail: one record per request (time, request and trace id, key, route, model,
//! backend, tokens, cost, status, cache and guardrail decisions), sealed into a hash chain
//! per proxy and sink (`chain.rs`) and written by one task to JSON-lines files and/or a
//! Redis stream (`sink.rs`); `verify.rs` checks files.
//!
//! The request path never waits for it: the request's record is its
//! [`crate::telemetry::Exchange`]'s, handed over when the exchange ends (the response, or the
//! end of a stream) with a `try_send` into a bounded queue. A full queue or
//! a sink that stays down drops records, counted, and the chain says so with a `gap` line.

pub(crate) mod chain;
pub mod sink;
pub mod verify;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use serde::Serialize;

use crate::telemetry::metrics::Metrics;

/// Records in flight between the requests and the writer.
const QUEUE: usize = 8192;

/// What the audit trail writes, and where.
#[derive(Clone, Debug)]
pub struct AuditOptions {
    /// Directory of JSON-lines files (rotated).
    pub dir: Option<PathBuf>,
    /// A file is closed and the next one started beyond this size.
    pub max_file_bytes: u64,
    /// Rotated files kept (the oldest are deleted); 0 keeps all.
    pub max_files: usize,
    /// Redis for the fleet's shared stream.
    pub redis_url: Option<String>,
    pub stream: String,
    /// The stream's approximate bound (`XADD ... MAXLEN ~`).
    pub stream_maxlen: u64,
    /// HMAC key of checkpoints (a Secret's value); unsigned without it.
    pub key: Option<Vec<u8>>,
    /// Records held while a sink is down, per sink, before they are dropped.
    pub buffer: usize,
    /// This proxy's name in chain ids.
    pub node: String,
}

impl Default for AuditOptions {
    fn default() -> Self {
        Self {
            dir: None,
            max_file_bytes: 64 << 20,
            max_files: 0,
            redis_url: None,
            stream: "switchyard:audit".into(),
            stream_maxlen: 1_000_000,
            key: None,
            buffer: 10_000,
            node: "local".into(),
        }
    }
}

impl AuditOptions {
    pub fn enabled(&self) -> bool {
        self.dir.is_some() || self.redis_url.is_some()
    }
}

/// One request, as the audit trail records it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Record {
    pub request_id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub trace_id: String,
    pub endpoint: &'static str,
    pub status: u16,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub error: &'static str,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub key: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub route: String,
    /// The model the client asked for (cut at [`MAX_MODEL`] characters).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub model: String,
    /// The model as metrics name it: a name the configuration lists, else `_other`.
    #[serde(skip)]
    pub model_label: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub backend: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// US dollars, in billionths.
    pub cost_nanos: u64,
    /// `none` until the cache stage exists; then `hit`, `miss`.
    pub cache: &'static str,
    /// `ns/name=action, ...` as in `x-switchyard-guardrails`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub guardrails: String,
    pub stream: bool,
    pub duration_ms: u64,
    /// Set when the request was a stream that ended without its normal end.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub ended: &'static str,
    /// The prompt's text as it went upstream (after the guardrails), when the route opts in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// The answer's text as the client got it, when the route opts in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<String>,
}

/// Most characters of a client's model name kept in a record (the name is the client's to
/// choose; a configured one is far shorter).
pub const MAX_MODEL: usize = 128;

/// Most text kept of a prompt or an answer.
pub const MAX_TEXT: usize = 64 << 10;

/// `text` cut at [`MAX_TEXT`] bytes (on a character boundary), marked when cut.
pub fn capped(mut text: String) -> String {
    if text.len() > MAX_TEXT {
        let mut at = MAX_TEXT;
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        text.truncate(at);
        text.push_str("…[truncated]");
    }
    text
}

/// The handle finished exchanges are handed to the writer with.
#[derive(Debug)]
pub struct Auditor {
    tx: tokio::sync::mpsc::Sender<(SystemTime, Record)>,
    /// Records the full queue refused.
    lost: Arc<AtomicU64>,
    metrics: Arc<Metrics>,
}

impl Auditor {
    /// Starts the writer; the returned handle finishes it (the queue drained, the closing
    /// checkpoints written) when awaited after every slot is gone.
    pub async fn start(
        opts: AuditOptions,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<(Self, sink::Writer)> {
        // A hand-off to the writer, which keeps up unless it is starved of CPU; the bound on
        // what a failing sink holds is `opts.buffer`, per sink.
        let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
        let lost = Arc::new(AtomicU64::new(0));
        let writer = sink::Writer::start(opts, rx, lost.clone(), metrics.clone()).await?;
        Ok((Self { tx, lost, metrics }, writer))
    }

    /// Hands a finished request's record to the writer, or counts it lost (the writer
    /// tells the chains with a `gap` line).
    pub fn send(&self, at: SystemTime, record: Record) {
        if self.tx.try_send((at, record)).is_err() {
            self.lost.fetch_add(1, Ordering::Relaxed);
            self.metrics.audit_dropped.inc();
        }
    }
}

/// The trace id of a W3C `traceparent` header (`00-<trace id>-<span id>-<flags>`).
pub fn trace_id(traceparent: Option<&http::HeaderValue>) -> &str {
    traceparent
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split('-').nth(1))
        .filter(|t| t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit()))
        .unwrap_or("")
}
