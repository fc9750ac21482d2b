//! Traces: one SERVER span per request and one CLIENT span per upstream attempt (retries and
//! fallbacks are siblings under the SERVER span), named and attributed by the GenAI
//! conventions ([`super::semconv`]).
//!
//! The pipeline's stages (auth, limits, guardrails, cache) are events on the SERVER span, not
//! child spans: each takes microseconds, and an event carries its time, duration and decision
//! at a fraction of a span's export cost (child spans would multiply the spans a request
//! exports by five). Spans are built once, when the exchange ends, from what it collected; a
//! request that is not sampled collects nothing but still passes the trace on upstream.

use std::borrow::Cow;
use std::time::{Duration, Instant, SystemTime};

use http::HeaderValue;
use opentelemetry::trace::{SpanId, SpanKind};
use opentelemetry_sdk::trace::Sampler;
use switchyard_otel::proto::{Attributes, Head};
use switchyard_otel::{self as otel, SpanQueue, opentelemetry, opentelemetry_sdk};

use super::{Done, semconv as sc};
use crate::llm::Described;

/// Tracing, when `--otlp-endpoint` is set.
#[derive(Debug)]
pub struct Tracer {
    sampler: Sampler,
    queue: SpanQueue,
}

/// A span's name: the operation, then the model when there is one.
fn name<'a>(parts: &'a [&'a str; 3]) -> &'a [&'a str] {
    if parts[2].is_empty() {
        &parts[..1]
    } else {
        parts
    }
}

impl Tracer {
    pub fn new(sampler: Sampler, queue: SpanQueue) -> Self {
        Self { sampler, queue }
    }

    /// Sends the spans still queued and stops recording (at exit).
    pub async fn shutdown(&self) {
        self.queue.shutdown().await;
    }

    /// The ids of a new request's SERVER span: the caller's trace (W3C `traceparent` and
    /// `tracestate`) continued, or a new one; sampled as the caller decided, else by ratio.
    pub fn start(&self, headers: &http::HeaderMap, endpoint: &str) -> otel::Started {
        let parent = otel::remote_parent(headers.get("traceparent"), headers.get("tracestate"));
        otel::Started::new(&self.sampler, parent, sc::operation(endpoint))
    }

    /// Exports the spans of a finished, sampled exchange, written straight from its record.
    pub(super) fn export(&self, done: &Done<'_>, started: &otel::Started, c: Collected) {
        let r = &done.open.record;
        let end = done.open.at + done.elapsed;
        let operation = sc::operation(r.endpoint);
        let provider = sc::provider(done.open.provider);
        let state = started
            .parent
            .as_ref()
            .map(|p| p.trace_state().header())
            .unwrap_or_default();
        let parts = [operation, " ", r.model.as_str()];
        let server = Head {
            trace_id: started.trace_id,
            span_id: started.span_id,
            trace_state: &state,
            sampled: true,
            parent: started.parent.as_ref().map(|p| (p.span_id(), true)),
            kind: SpanKind::Server,
            name: name(&parts),
            start: done.open.at,
            end,
        };
        self.queue.span(&server, |s| {
            let a = &mut s.attributes();
            a.str(sc::OPERATION_NAME, operation)
                .int(sc::HTTP_STATUS, i64::from(r.status))
                .str(sc::REQUEST_ID, &r.request_id)
                .bool(sc::REQUEST_STREAM, r.stream);
            // Defaults are left out: fewer attributes are less to send.
            if r.cache != "none" {
                a.str(sc::CACHE_RESULT, r.cache);
            }
            let limits = if c.limits == "none" { "" } else { c.limits };
            for (k, v) in [
                (sc::REQUEST_MODEL, r.model.as_str()),
                (sc::PROVIDER_NAME, provider),
                (sc::KEY_ID, &r.key),
                (sc::ROUTE, &r.route),
                (sc::BACKEND, &r.backend),
                (sc::GUARDRAILS, &r.guardrails),
                (sc::ERROR_TYPE, r.error),
                (sc::STREAM_ENDED, r.ended),
                (sc::LIMIT_DECISION, limits),
            ] {
                if !v.is_empty() {
                    a.str(k, v);
                }
            }
            c.request_attributes(a);
            usage_attributes(done, a);
            if r.cost_nanos > 0 {
                a.float(sc::COST_USD, r.cost_nanos as f64 / 1e9);
            }
            if let Some(t) = done.ttft {
                a.float(sc::TIME_TO_FIRST_TOKEN, t.as_secs_f64());
            }
            if c.attempts.len() > 1 {
                a.int(sc::ATTEMPTS, c.attempts.len() as i64);
            }
            c.response_attributes(a);
            for e in &c.stages {
                s.event(e.name, e.at, |a| {
                    a.str(e.said.0, &e.said.1)
                        .int(sc::STAGE_DURATION, e.took.as_micros() as i64);
                });
            }
            if r.status >= 500 {
                s.error(r.error);
            }
        });
        // The usage and the response are the SERVER span's: a CLIENT span says which upstream
        // was asked and how that attempt ended.
        for (i, (a, e, ended)) in c.attempts.iter().enumerate() {
            let Some(span_id) = a.span_id else { continue };
            let parts = [operation, " ", e.model.as_str()];
            let client = Head {
                span_id,
                parent: Some((started.span_id, false)),
                kind: SpanKind::Client,
                name: name(&parts),
                start: a.at,
                end: *ended,
                ..server.clone()
            };
            self.queue.span(&client, |s| {
                let a = &mut s.attributes();
                a.str(sc::OPERATION_NAME, operation)
                    .str(sc::PROVIDER_NAME, sc::provider(e.provider))
                    .str(sc::REQUEST_MODEL, &e.model)
                    .str(sc::BACKEND, &e.backend)
                    .int(sc::ATTEMPT, i as i64 + 1);
                if let Some(st) = e.status {
                    a.int(sc::HTTP_STATUS, i64::from(st));
                }
                if !e.error.is_empty() {
                    a.str(sc::ERROR_TYPE, e.error);
                    s.error(e.error);
                }
            });
        }
    }

    /// The span of applying a config version, linked to the control plane's span that
    /// compiled and pushed it (`traceparent` of the push, when it traces).
    pub fn config_applied(
        &self,
        version: &str,
        pushed_by: &str,
        started: SystemTime,
        rejected: usize,
        result: &'static str,
    ) {
        let remote = HeaderValue::from_str(pushed_by)
            .ok()
            .and_then(|v| otel::remote_parent(Some(&v), None));
        let head = Head {
            trace_id: otel::new_trace_id(),
            span_id: otel::new_span_id(),
            trace_state: "",
            sampled: true,
            parent: None,
            kind: SpanKind::Internal,
            name: &["switchyard.config.apply"],
            start: started,
            end: SystemTime::now(),
        };
        self.queue.span(&head, |s| {
            s.attributes()
                .str(sc::CONFIG_VERSION, version)
                .str(sc::CONFIG_RESULT, result)
                .int(sc::CONFIG_REJECTED, rejected as i64);
            if let Some(sc) = &remote {
                s.link(sc);
            }
        });
    }
}

fn usage_attributes(done: &Done<'_>, a: &mut Attributes<'_>) {
    let r = &done.open.record;
    if r.input_tokens == 0 && r.output_tokens == 0 {
        return;
    }
    a.int(sc::USAGE_INPUT_TOKENS, r.input_tokens as i64)
        .int(sc::USAGE_OUTPUT_TOKENS, r.output_tokens as i64);
    if done.open.cache_read > 0 {
        a.int(
            sc::USAGE_CACHE_READ_INPUT_TOKENS,
            done.open.cache_read as i64,
        );
    }
}

/// A stage of the pipeline, an event on the SERVER span.
#[derive(Debug)]
pub struct Stage {
    name: &'static str,
    at: SystemTime,
    took: Duration,
    /// What it decided: an attribute.
    said: (&'static str, Cow<'static, str>),
}

/// What a sampled request collects for its spans only.
#[derive(Debug, Default)]
pub struct Collected {
    pub max_tokens: Option<u32>,
    pub temperature: Option<f64>,
    /// The answer's id, model and finish reasons, once read.
    pub answer: Option<Described>,
    /// What the limits stage decided (`admitted`, `rejected`, `none`).
    pub limits: &'static str,
    pub stages: Vec<Stage>,
    pub attempts: Vec<(AttemptStart, AttemptEnd, SystemTime)>,
}

impl Collected {
    /// A stage that started at `since` and ended now, and what it decided.
    pub fn stage(
        &mut self,
        name: &'static str,
        since: Instant,
        said: (&'static str, Cow<'static, str>),
    ) {
        let took = since.elapsed();
        self.stages.push(Stage {
            name,
            at: SystemTime::now() - took,
            took,
            said,
        });
    }

    fn request_attributes(&self, a: &mut Attributes<'_>) {
        if let Some(m) = self.max_tokens {
            a.int(sc::REQUEST_MAX_TOKENS, i64::from(m));
        }
        if let Some(t) = self.temperature {
            a.float(sc::REQUEST_TEMPERATURE, t);
        }
    }

    fn response_attributes(&self, a: &mut Attributes<'_>) {
        let Some(d) = &self.answer else { return };
        if !d.id.is_empty() {
            a.str(sc::RESPONSE_ID, &d.id);
        }
        if !d.model.is_empty() {
            a.str(sc::RESPONSE_MODEL, &d.model);
        }
        if !d.finish_reasons.is_empty() {
            a.strs(
                sc::RESPONSE_FINISH_REASONS,
                d.finish_reasons.iter().map(String::as_str),
            );
        }
    }
}

/// An upstream attempt as it starts.
#[derive(Debug, Clone)]
pub struct AttemptStart {
    /// Its CLIENT span (tracing on).
    pub span_id: Option<SpanId>,
    pub at: SystemTime,
    /// The `traceparent` the upstream request carries: the CLIENT span's context (or the
    /// caller's, tracing off).
    pub traceparent: Option<HeaderValue>,
    pub tracestate: Option<HeaderValue>,
}

impl AttemptStart {
    pub fn new(server: &otel::Started, tracestate: Option<HeaderValue>) -> Self {
        let span_id = otel::new_span_id();
        Self {
            span_id: Some(span_id),
            at: SystemTime::now(),
            traceparent: Some(otel::traceparent(server.trace_id, span_id, server.sampled)),
            tracestate,
        }
    }

    /// The headers the upstream request carries.
    pub fn headers(&self) -> impl Iterator<Item = (http::HeaderName, HeaderValue)> + '_ {
        [
            (
                http::HeaderName::from_static("traceparent"),
                &self.traceparent,
            ),
            (
                http::HeaderName::from_static("tracestate"),
                &self.tracestate,
            ),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.clone().map(|v| (k, v)))
    }
}

/// How an upstream attempt ended.
#[derive(Debug, Clone)]
pub struct AttemptEnd {
    /// `pool#endpoint`.
    pub backend: String,
    pub provider: &'static str,
    /// The upstream model.
    pub model: String,
    pub status: Option<u16>,
    /// The failure class (empty on success).
    pub error: &'static str,
}
