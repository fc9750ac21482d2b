//! What a request leaves behind. The edge layer opens an [`Exchange`] per request, the
//! pipeline fills it in (key, route, backend, usage, cache and guardrail results, upstream
//! attempts), and when its last holder lets go (the response was sent, or its stream ended)
//! the record goes, once, to every reader:
//!
//! - `genai`: the GenAI metrics, always (Prometheus, and OTLP when an endpoint is set);
//! - `access_log`: one JSON line, unless switched off;
//! - `trace`: the SERVER span and one CLIENT span per upstream attempt, when sampled;
//! - `audit`: the hash-chained audit trail, when on.
//!
//! Nothing here waits: every reader takes the finished record with a `try_send` into a
//! bounded queue (or an atomic metric update), and what a full queue refuses is counted.

pub mod access_log;
pub mod audit;
pub(crate) mod genai;
pub(crate) mod metrics;
pub(crate) mod semconv;
pub(crate) mod series;
pub(crate) mod trace;

use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use crate::llm::Price;
use crate::llm::observe::{End, Ending, Observer};
use crate::llm::{Delta, Event, Usage};
use metrics::Metrics;

/// What the response cache did for a request: the label of its metrics and log lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheResult {
    Hit,
    SemanticHit,
    Miss,
    Bypass,
}

impl CacheResult {
    pub fn name(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::SemanticHit => "semantic_hit",
            Self::Miss => "miss",
            Self::Bypass => "bypass",
        }
    }
}

/// What `run` sets telemetry up with.
#[derive(Clone, Debug)]
pub struct TelemetryOptions {
    pub otlp: otel::OtlpArgs,
    /// How often GenAI metrics are exported through OTLP.
    pub metrics_interval: std::time::Duration,
    pub access_log: access_log::Destination,
    pub access_log_prompts: bool,
    /// Label spend by key, naming at most this many keys.
    pub key_label_cap: Option<usize>,
    /// This proxy's name (`service.instance.id`).
    pub node: String,
}

impl Default for TelemetryOptions {
    fn default() -> Self {
        Self {
            otlp: otel::OtlpArgs::default(),
            metrics_interval: std::time::Duration::from_secs(30),
            access_log: access_log::Destination::Off,
            access_log_prompts: false,
            key_label_cap: None,
            node: "local".into(),
        }
    }
}

/// The readers of finished exchanges, each there when the options turn it on.
#[derive(Debug)]
pub struct Telemetry {
    pub metrics: Arc<Metrics>,
    /// GenAI instruments exported through OTLP (when an endpoint is set).
    otlp_metrics: Option<otel::MetricsExport>,
    access_log: Option<access_log::AccessLog>,
    tracer: Option<trace::Tracer>,
    audit: Option<audit::Auditor>,
}

impl Telemetry {
    /// The metrics alone (no access log, traces or audit trail).
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            metrics,
            otlp_metrics: None,
            access_log: None,
            tracer: None,
            audit: None,
        }
    }

    /// Starts what the options turn on: the access log, and with an OTLP endpoint the span
    /// exporter and the GenAI metrics' OTLP export; `audit` is the audit trail, when on.
    /// Call within the tokio runtime.
    pub async fn start(
        metrics: Arc<Metrics>,
        opts: &TelemetryOptions,
        audit: Option<audit::Auditor>,
    ) -> std::io::Result<Self> {
        let invalid =
            |e: otel::Error| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string());
        let access_log = access_log::AccessLog::start(
            opts.access_log.clone(),
            opts.access_log_prompts,
            metrics.clone(),
        )
        .await?;
        let resource = otel::resource("switchyard-data-plane", &opts.node);
        let queue = opts
            .otlp
            .span_queue(
                &resource,
                ("switchyard-data-plane", env!("CARGO_PKG_VERSION")),
                metrics.spans.clone(),
            )
            .map_err(invalid)?;
        let tracer = match queue {
            Some(queue) => {
                let sampler = opts.otlp.sampler().map_err(invalid)?;
                tracing::info!(
                    endpoint = opts.otlp.otlp_endpoint.as_deref().unwrap_or_default(),
                    protocol = ?opts.otlp.otlp_protocol,
                    ratio = opts.otlp.trace_sample_ratio,
                    "tracing on (OTLP)"
                );
                Some(trace::Tracer::new(sampler, queue))
            }
            None => None,
        };
        let otlp_metrics = if opts.metrics_interval.is_zero() {
            // Traces only: the GenAI metrics stay on /metrics.
            None
        } else {
            let m = metrics.clone();
            opts.otlp
                .metrics_export(
                    &resource,
                    ("switchyard-data-plane", env!("CARGO_PKG_VERSION")),
                    opts.metrics_interval,
                    move |w| genai::write_otlp(&m.genai, w),
                )
                .map_err(invalid)?
        };
        Ok(Self {
            metrics,
            otlp_metrics,
            access_log,
            tracer,
            audit,
        })
    }

    pub fn tracer(&self) -> Option<&trace::Tracer> {
        self.tracer.as_ref()
    }

    /// Writes out the access log's queue and exports what is left of the spans and the GenAI
    /// metrics (at exit).
    pub async fn shutdown(&self) {
        if let Some(log) = &self.access_log {
            log.flush().await;
        }
        if let Some(t) = &self.tracer {
            t.shutdown().await;
        }
        if let Some(m) = &self.otlp_metrics {
            m.shutdown().await;
        }
    }

    /// The exchange of a request that just arrived.
    pub fn open(self: &Arc<Self>, headers: &http::HeaderMap, endpoint: &'static str) -> Exchange {
        let request_id = headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let trace = self.tracer.as_ref().map(|t| t.start(headers, endpoint));
        let trace_id = match &trace {
            Some(t) => t.trace_id.to_string(),
            None => audit::trace_id(headers.get("traceparent")).to_owned(),
        };
        let sampled = trace.as_ref().is_some_and(|t| t.sampled);
        Exchange(Arc::new(Inner {
            open: Mutex::new(Open {
                record: audit::Record {
                    request_id: request_id.to_owned(),
                    trace_id,
                    endpoint,
                    cache: "none",
                    ..audit::Record::default()
                },
                audit_text: false,
                started: Instant::now(),
                at: SystemTime::now(),
                price: Price::default(),
                provider: "",
                cache_read: 0,
                first_token: None,
                spans: sampled.then(Box::default),
            }),
            // Without tracing, the caller's trace context passes through unchanged.
            client_parent: if trace.is_none() {
                headers.get("traceparent").cloned()
            } else {
                None
            },
            tracestate: headers.get("tracestate").cloned(),
            trace,
            log_text: self.access_log.as_ref().is_some_and(|l| l.prompts),
            telemetry: self.clone(),
        }))
    }

    /// Hands a finished exchange to every reader.
    fn finish(&self, mut o: Open, trace: Option<&otel::Started>) {
        let elapsed = o.started.elapsed();
        o.record.duration_ms = elapsed.as_millis() as u64;
        let spans = o.spans.take();
        let done = Done {
            open: &o,
            elapsed,
            ttft: o.first_token.map(|t| t.duration_since(o.started)),
        };
        genai::record(&self.metrics, &done);
        if let Some(log) = &self.access_log {
            log.write(&done);
        }
        if let (Some(t), Some(started), Some(spans)) =
            (self.tracer.as_ref(), trace.filter(|t| t.sampled), spans)
        {
            t.export(&done, started, *spans);
        }
        if let Some(a) = &self.audit {
            if !o.audit_text {
                // The access log's opt-in, not the route's.
                o.record.prompt = None;
                o.record.response = None;
            }
            a.send(o.at, std::mem::take(&mut o.record));
        }
    }
}

/// A finished exchange, as its readers see it.
#[derive(Debug)]
pub struct Done<'a> {
    pub open: &'a Open,
    pub elapsed: std::time::Duration,
    /// Time to the first byte of a streamed answer.
    pub ttft: Option<std::time::Duration>,
}

/// A request's record while it runs.
#[derive(Debug)]
pub struct Open {
    pub record: audit::Record,
    /// The route records prompt and answer text in the audit trail.
    pub audit_text: bool,
    pub started: Instant,
    pub at: SystemTime,
    pub price: Price,
    /// The provider label of what answered (`cache` for a hit).
    pub provider: &'static str,
    pub cache_read: u64,
    pub first_token: Option<Instant>,
    /// What only the spans need: collected only when the request is sampled.
    pub spans: Option<Box<trace::Collected>>,
}

/// The request's record watching its answer: what it used, how a stream ended and, when the
/// record keeps text, what the client got of a stream (a whole answer's text is read from
/// its body, as the client gets it).
#[derive(Debug)]
pub(crate) struct Transcript {
    exchange: Exchange,
    text: Option<String>,
}

impl Transcript {
    /// The record of a whole answer.
    pub(crate) fn whole(exchange: Exchange) -> Self {
        Self {
            exchange,
            text: None,
        }
    }

    /// The record of a stream, gathering its text when the record keeps it.
    pub(crate) fn stream(exchange: Exchange) -> Self {
        let text = exchange.wants_text().then(String::new);
        Self { exchange, text }
    }

    pub(crate) fn exchange(&self) -> &Exchange {
        &self.exchange
    }
}

impl Observer for Transcript {
    fn on_event(&mut self, ev: &Event) {
        if let Some(text) = &mut self.text
            && text.len() <= audit::MAX_TEXT
            && let Event::Delta {
                delta: Delta::Text(t) | Delta::Thinking(t) | Delta::ToolArgs(t),
                ..
            } = ev
        {
            text.push_str(t);
        }
    }

    fn on_end(&mut self, end: &End) {
        if let Some(u) = &end.usage {
            self.exchange.usage(u);
        }
        if let Some(text) = self.text.take() {
            self.exchange.response(text);
        }
        match end.how {
            Ending::Complete => {}
            Ending::Blocked => self.exchange.ended("guardrail_blocked"),
            Ending::Failed(_) | Ending::Abandoned => self.exchange.ended("incomplete"),
        }
    }
}

use switchyard_otel as otel;

/// A request's record while the request runs; read when the last clone drops (the
/// response was sent, or its stream ended).
#[derive(Clone)]
pub struct Exchange(Arc<Inner>);

struct Inner {
    open: Mutex<Open>,
    /// Trace ids and the sampling decision, when tracing is on.
    trace: Option<otel::Started>,
    /// The caller's `traceparent`, passed upstream as it is when tracing is off.
    client_parent: Option<http::HeaderValue>,
    /// The caller's `tracestate`, passed upstream.
    tracestate: Option<http::HeaderValue>,
    /// The access log records prompt and answer text.
    log_text: bool,
    telemetry: Arc<Telemetry>,
}

impl std::fmt::Debug for Exchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("telemetry::Exchange")
    }
}

impl Exchange {
    fn with(&self, f: impl FnOnce(&mut Open)) {
        let mut open = self.0.open.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut open);
    }

    /// The request is traced and exported: spans-only details are worth collecting.
    pub fn sampled(&self) -> bool {
        self.0.trace.as_ref().is_some_and(|t| t.sampled)
    }

    /// Details only the spans read, collected when sampled.
    pub fn spans(&self, f: impl FnOnce(&mut trace::Collected)) {
        if self.sampled() {
            self.with(|o| {
                if let Some(s) = &mut o.spans {
                    f(s);
                }
            });
        }
    }

    /// A stage of the pipeline, as an event on the SERVER span (when sampled), with what it
    /// decided: an attribute.
    pub fn stage(
        &self,
        name: &'static str,
        since: Instant,
        said: impl FnOnce() -> (&'static str, std::borrow::Cow<'static, str>),
    ) {
        self.spans(|s| s.stage(name, since, said()));
    }

    /// The request was routed: its key, route, model (as asked, cut at
    /// [`audit::MAX_MODEL`] characters) and the model's metric label (a name the route
    /// declares, never one a client chose); `text`: the route records prompt and answer text.
    pub fn routed(&self, key: &str, route: &str, model: (&str, &str), stream: bool, text: bool) {
        self.with(|o| {
            o.record.key = key.to_owned();
            o.record.route = route.to_owned();
            let (asked, label) = model;
            o.record.model = match asked.char_indices().nth(audit::MAX_MODEL) {
                Some((cut, _)) => asked[..cut].to_owned(),
                None => asked.to_owned(),
            };
            o.record.model_label = label.to_owned();
            o.record.stream = stream;
            o.audit_text = text;
        });
    }

    /// Whether prompt and answer text are recorded (the route's audit opt-in, or the access
    /// log's).
    pub fn wants_text(&self) -> bool {
        if self.0.log_text {
            return true;
        }
        let mut text = false;
        self.with(|o| text = o.audit_text);
        text
    }

    pub fn prompt(&self, text: String) {
        self.with(|o| o.record.prompt = Some(audit::capped(text)));
    }

    pub fn response(&self, text: String) {
        self.with(|o| o.record.response = Some(audit::capped(text)));
    }

    /// What answered: `pool#endpoint` (or `cache`), its provider, and its price.
    pub fn served(&self, backend: &str, provider: &'static str, price: Price) {
        self.with(|o| {
            o.record.backend = backend.to_owned();
            o.provider = provider;
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
            o.cache_read = u.cache_read;
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
    pub fn cache(&self, c: CacheResult) {
        self.with(|o| o.record.cache = c.name());
    }

    /// A stream that did not end normally, and why.
    pub fn ended(&self, why: &'static str) {
        self.with(|o| o.record.ended = why);
    }

    /// The first bytes of a streamed answer went to the client.
    pub fn first_token(&self) {
        self.with(|o| {
            o.first_token.get_or_insert_with(Instant::now);
        });
    }

    /// An upstream attempt starts: the trace context its request carries (with tracing on,
    /// sampled or not, its CLIENT span's; else the caller's as it came), if any.
    pub fn attempt(&self) -> Option<trace::AttemptStart> {
        let i = &self.0;
        let traced = i
            .trace
            .as_ref()
            .map(|t| trace::AttemptStart::new(t, i.tracestate.clone()));
        traced.or_else(|| {
            (i.client_parent.is_some() || i.tracestate.is_some()).then(|| trace::AttemptStart {
                span_id: None,
                at: SystemTime::now(),
                traceparent: i.client_parent.clone(),
                tracestate: i.tracestate.clone(),
            })
        })
    }

    /// An upstream attempt ended (recorded when sampled).
    pub fn attempt_done(&self, a: trace::AttemptStart, done: trace::AttemptEnd) {
        self.spans(|s| s.attempts.push((a, done, SystemTime::now())));
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let open = self.open.get_mut().unwrap_or_else(|p| p.into_inner());
        let open = std::mem::replace(
            open,
            Open {
                record: audit::Record::default(),
                audit_text: false,
                started: open.started,
                at: open.at,
                price: Price::default(),
                provider: "",
                cache_read: 0,
                first_token: None,
                spans: None,
            },
        );
        self.telemetry.finish(open, self.trace.as_ref());
    }
}

tokio::task_local! {
    static CURRENT: Exchange;
}

/// The exchange of the request this task serves.
pub fn current() -> Option<Exchange> {
    CURRENT.try_with(Exchange::clone).ok()
}

/// Runs `f` with `x` as the request's exchange ([`current`]).
pub async fn scope<F: std::future::Future>(x: Exchange, f: F) -> F::Output {
    CURRENT.scope(x, f).await
}
