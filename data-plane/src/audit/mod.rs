//! The audit trail: one record per request (time, request and trace id, key, route, model,
//! backend, tokens, cost, status, cache and guardrail decisions), sealed into a hash chain
//! per proxy and sink (`chain.rs`) and written by one task to JSON-lines files and/or a
//! Redis stream (`sink.rs`); `verify.rs` checks files.
//!
//! The request path never waits for it: the edge layer opens a [`Slot`] per request, the
//! pipeline fills it in, and the record is handed over when the last holder lets go (the
//! response, or the end of a stream) with a `try_send` into a bounded queue. A full queue or
//! a sink that stays down drops records, counted, and the chain says so with a `gap` line.

pub mod chain;
pub mod sink;
pub mod verify;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::llm::Usage;
use crate::metrics::Metrics;
use crate::policy::limits::Price;

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
    /// A checkpoint at least this often while records flow.
    pub checkpoint_every: Duration,
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
            checkpoint_every: Duration::from_secs(10),
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
    #[serde(skip_serializing_if = "String::is_empty")]
    pub model: String,
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

struct Open {
    record: Record,
    /// The route records text.
    text: bool,
    started: Instant,
    price: Price,
    at: SystemTime,
}

/// A request's record while the request runs; handed to the writer when the last clone
/// drops (the response was sent, or its stream ended).
#[derive(Clone)]
pub struct Slot(Arc<SlotInner>);

struct SlotInner {
    open: Mutex<Open>,
    tx: tokio::sync::mpsc::Sender<(SystemTime, Record)>,
    lost: Arc<AtomicU64>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("audit::Slot")
    }
}

impl Slot {
    fn with(&self, f: impl FnOnce(&mut Open)) {
        let mut open = self.0.open.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut open);
    }

    /// Who asked and what served it; `text`: the route records prompt and answer text.
    pub fn routed(&self, key: &str, route: &str, model: &str, stream: bool, text: bool) {
        self.with(|o| {
            o.record.key = key.to_owned();
            o.record.route = route.to_owned();
            o.record.model = model.to_owned();
            o.record.stream = stream;
            o.text = text;
        });
    }

    /// Whether the route records text.
    pub fn wants_text(&self) -> bool {
        let mut text = false;
        self.with(|o| text = o.text);
        text
    }

    pub fn prompt(&self, text: String) {
        self.with(|o| o.record.prompt = Some(capped(text)));
    }

    pub fn response(&self, text: String) {
        self.with(|o| o.record.response = Some(capped(text)));
    }

    pub fn served(&self, backend: &str, price: Price) {
        self.with(|o| {
            o.record.backend = backend.to_owned();
            o.price = price;
        });
    }

    pub fn guardrails(&self, decisions: &str) {
        self.with(|o| o.record.guardrails = decisions.to_owned());
    }

    /// What the answer used (a stream's when it ends), priced.
    pub fn usage(&self, u: &Usage) {
        self.with(|o| {
            o.record.input_tokens = u.input;
            o.record.output_tokens = u.output;
            o.record.cost_nanos = o.price.cost_nanos(u);
        });
    }

    pub fn status(&self, status: u16, error: &'static str) {
        self.with(|o| {
            o.record.status = status;
            o.record.error = error;
        });
    }

    /// What the response cache did.
    pub fn cache(&self, o: crate::cache::Outcome) {
        self.with(|r| r.record.cache = o.name());
    }

    /// A stream that did not end normally, and why.
    pub fn ended(&self, why: &'static str) {
        self.with(|o| o.record.ended = why);
    }
}

impl Drop for SlotInner {
    fn drop(&mut self) {
        let open = self.open.get_mut().unwrap_or_else(|p| p.into_inner());
        let mut record = std::mem::take(&mut open.record);
        record.duration_ms = open.started.elapsed().as_millis() as u64;
        if self.tx.try_send((open.at, record)).is_err() {
            // The writer tells the chains (a `gap` line).
            self.lost.fetch_add(1, Ordering::Relaxed);
            self.metrics.audit_dropped.inc();
        }
    }
}

tokio::task_local! {
    static CURRENT: Slot;
}

/// The audit slot of the request this task serves, if the trail is on.
pub fn current() -> Option<Slot> {
    CURRENT.try_with(Slot::clone).ok()
}

/// Runs `f` with `slot` as the request's slot ([`current`]).
pub async fn scope<F: std::future::Future>(slot: Slot, f: F) -> F::Output {
    CURRENT.scope(slot, f).await
}

/// The handle the edge layer opens slots with.
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

    /// A slot for a request.
    pub fn open(&self, request_id: &str, trace_id: &str, endpoint: &'static str) -> Slot {
        Slot(Arc::new(SlotInner {
            open: Mutex::new(Open {
                record: Record {
                    request_id: request_id.to_owned(),
                    trace_id: trace_id.to_owned(),
                    endpoint,
                    cache: "none",
                    ..Record::default()
                },
                text: false,
                started: Instant::now(),
                price: Price::default(),
                at: SystemTime::now(),
            }),
            tx: self.tx.clone(),
            lost: self.lost.clone(),
            metrics: self.metrics.clone(),
        }))
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
