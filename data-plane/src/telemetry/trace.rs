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
use std::time::{Instant, SystemTime};

use http::HeaderValue;
use opentelemetry::trace::{Event, Link, SpanContext, SpanId, SpanKind, Status, TraceFlags};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{Sampler, SpanData, SpanEvents, SpanLinks};
use switchyard_otel::{self as otel, SpanQueue, opentelemetry, opentelemetry_sdk};

use super::{Done, semconv as sc};

/// Tracing, when `--otlp-endpoint` is set.
#[derive(Debug)]
pub struct Tracer {
    sampler: Sampler,
    queue: SpanQueue,
    scope: InstrumentationScope,
}

impl Tracer {
    pub fn new(sampler: Sampler, queue: SpanQueue) -> Self {
        Self {
            sampler,
            queue,
            scope: InstrumentationScope::builder("switchyard-data-plane")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        }
    }

    /// The ids of a new request's SERVER span: the caller's trace (W3C `traceparent` and
    /// `tracestate`) continued, or a new one; sampled as the caller decided, else by ratio.
    pub fn start(&self, headers: &http::HeaderMap, endpoint: &str) -> otel::Started {
        let parent = otel::remote_parent(headers.get("traceparent"), headers.get("tracestate"));
        otel::Started::new(&self.sampler, parent, sc::operation(endpoint))
    }

    /// Exports the spans of a finished, sampled exchange.
    pub(super) fn export(&self, done: &Done<'_>, started: &otel::Started, c: Collected) {
        let r = &done.open.record;
        let end = done.open.at + done.elapsed;
        let operation = sc::operation(r.endpoint);
        let name = |model: &str| -> Cow<'static, str> {
            if model.is_empty() {
                Cow::Borrowed(operation)
            } else {
                Cow::Owned(format!("{operation} {model}"))
            }
        };
        let provider = sc::provider(done.open.provider);
        let mut attrs = Vec::with_capacity(24);
        attrs.extend([
            KeyValue::new(sc::OPERATION_NAME, operation),
            KeyValue::new(sc::HTTP_STATUS, i64::from(r.status)),
            KeyValue::new(sc::REQUEST_ID, r.request_id.clone()),
            KeyValue::new(sc::REQUEST_STREAM, r.stream),
        ]);
        // Defaults are left out: fewer attributes are less to convert and send.
        if r.cache != "none" {
            attrs.push(KeyValue::new(sc::CACHE_RESULT, r.cache));
        }
        let mut put = |k: &'static str, v: &str| {
            if !v.is_empty() {
                attrs.push(KeyValue::new(k, v.to_owned()));
            }
        };
        put(sc::REQUEST_MODEL, &r.model);
        put(sc::PROVIDER_NAME, provider);
        put(sc::KEY_ID, &r.key);
        put(sc::ROUTE, &r.route);
        put(sc::BACKEND, &r.backend);
        put(sc::GUARDRAILS, &r.guardrails);
        put(sc::ERROR_TYPE, r.error);
        put(sc::STREAM_ENDED, r.ended);
        if c.limits != "none" {
            put(sc::LIMIT_DECISION, c.limits);
        }
        c.request_attributes(&mut attrs);
        attrs.extend(usage_attributes(done));
        if r.cost_nanos > 0 {
            attrs.push(KeyValue::new(sc::COST_USD, r.cost_nanos as f64 / 1e9));
        }
        if let Some(t) = done.ttft {
            attrs.push(KeyValue::new(sc::TIME_TO_FIRST_TOKEN, t.as_secs_f64()));
        }
        if c.attempts.len() > 1 {
            attrs.push(KeyValue::new(sc::ATTEMPTS, c.attempts.len() as i64));
        }
        c.response_attributes(&mut attrs);
        let server = started.context();
        let status = if r.status >= 500 {
            Status::error(r.error)
        } else {
            Status::Unset
        };
        self.queue.send(SpanData {
            span_context: server.clone(),
            parent_span_id: started
                .parent
                .as_ref()
                .map_or(SpanId::INVALID, SpanContext::span_id),
            parent_span_is_remote: started.parent.is_some(),
            span_kind: SpanKind::Server,
            name: name(&r.model),
            start_time: done.open.at,
            end_time: end,
            attributes: attrs,
            dropped_attributes_count: 0,
            events: {
                let mut e = SpanEvents::default();
                e.events = c.events;
                e
            },
            links: SpanLinks::default(),
            status,
            instrumentation_scope: self.scope.clone(),
        });
        // The usage and the response are the SERVER span's: a CLIENT span says which upstream
        // was asked and how that attempt ended.
        for (i, (a, e, ended)) in c.attempts.into_iter().enumerate() {
            let Some(span_id) = a.span_id else { continue };
            let mut attrs = vec![
                KeyValue::new(sc::OPERATION_NAME, operation),
                KeyValue::new(sc::PROVIDER_NAME, sc::provider(e.provider)),
                KeyValue::new(sc::REQUEST_MODEL, e.model.clone()),
                KeyValue::new(sc::BACKEND, e.backend),
                KeyValue::new(sc::ATTEMPT, i as i64 + 1),
            ];
            if let Some(s) = e.status {
                attrs.push(KeyValue::new(sc::HTTP_STATUS, i64::from(s)));
            }
            if !e.error.is_empty() {
                attrs.push(KeyValue::new(sc::ERROR_TYPE, e.error));
            }
            self.queue.send(SpanData {
                span_context: SpanContext::new(
                    started.trace_id,
                    span_id,
                    TraceFlags::SAMPLED,
                    false,
                    server.trace_state().clone(),
                ),
                parent_span_id: server.span_id(),
                parent_span_is_remote: false,
                span_kind: SpanKind::Client,
                name: name(&e.model),
                start_time: a.at,
                end_time: ended,
                attributes: attrs,
                dropped_attributes_count: 0,
                events: SpanEvents::default(),
                links: SpanLinks::default(),
                status: if e.error.is_empty() {
                    Status::Unset
                } else {
                    Status::error(e.error)
                },
                instrumentation_scope: self.scope.clone(),
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
        let links = remote
            .map(|sc| {
                let mut l = SpanLinks::default();
                l.links.push(Link::with_context(sc));
                l
            })
            .unwrap_or_default();
        self.queue.send(SpanData {
            span_context: SpanContext::new(
                otel::new_trace_id(),
                otel::new_span_id(),
                TraceFlags::SAMPLED,
                false,
                Default::default(),
            ),
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Internal,
            name: Cow::Borrowed("switchyard.config.apply"),
            start_time: started,
            end_time: SystemTime::now(),
            attributes: vec![
                KeyValue::new(sc::CONFIG_VERSION, version.to_owned()),
                KeyValue::new(sc::CONFIG_RESULT, result),
                KeyValue::new(sc::CONFIG_REJECTED, rejected as i64),
            ],
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links,
            status: Status::Unset,
            instrumentation_scope: self.scope.clone(),
        });
    }
}

fn usage_attributes(done: &Done<'_>) -> Vec<KeyValue> {
    let r = &done.open.record;
    if r.input_tokens == 0 && r.output_tokens == 0 {
        return Vec::new();
    }
    let mut v = vec![
        KeyValue::new(sc::USAGE_INPUT_TOKENS, r.input_tokens as i64),
        KeyValue::new(sc::USAGE_OUTPUT_TOKENS, r.output_tokens as i64),
    ];
    if done.open.cache_read > 0 {
        v.push(KeyValue::new(
            sc::USAGE_CACHE_READ_INPUT_TOKENS,
            done.open.cache_read as i64,
        ));
    }
    v
}

/// What a sampled request collects for its spans only.
#[derive(Debug, Default)]
pub struct Collected {
    pub max_tokens: Option<u32>,
    pub temperature: Option<f64>,
    pub response_id: String,
    pub response_model: String,
    pub finish_reasons: Vec<String>,
    /// What the limits stage decided (`admitted`, `rejected`, `none`).
    pub limits: &'static str,
    pub events: Vec<Event>,
    pub attempts: Vec<(AttemptStart, AttemptEnd, SystemTime)>,
}

impl Collected {
    /// A stage that started at `since` and ended now.
    pub fn stage(&mut self, name: &'static str, since: Instant, mut attributes: Vec<KeyValue>) {
        let took = since.elapsed();
        attributes.push(KeyValue::new(sc::STAGE_DURATION, took.as_micros() as i64));
        self.events
            .push(Event::new(name, SystemTime::now() - took, attributes, 0));
    }

    fn request_attributes(&self, attrs: &mut Vec<KeyValue>) {
        if let Some(m) = self.max_tokens {
            attrs.push(KeyValue::new(sc::REQUEST_MAX_TOKENS, i64::from(m)));
        }
        if let Some(t) = self.temperature {
            attrs.push(KeyValue::new(sc::REQUEST_TEMPERATURE, t));
        }
    }

    fn response_attributes(&self, attrs: &mut Vec<KeyValue>) {
        if !self.response_id.is_empty() {
            attrs.push(KeyValue::new(sc::RESPONSE_ID, self.response_id.clone()));
        }
        if !self.response_model.is_empty() {
            attrs.push(KeyValue::new(
                sc::RESPONSE_MODEL,
                self.response_model.clone(),
            ));
        }
        if !self.finish_reasons.is_empty() {
            let v: Vec<opentelemetry::StringValue> = self
                .finish_reasons
                .iter()
                .map(|s| s.clone().into())
                .collect();
            attrs.push(KeyValue::new(
                sc::RESPONSE_FINISH_REASONS,
                opentelemetry::Value::Array(v.into()),
            ));
        }
    }

    /// The id, model and finish reasons of a whole answer body in `format` (best effort:
    /// what is absent stays unset).
    pub fn answer(&mut self, body: &[u8]) {
        use std::borrow::Cow;
        #[derive(serde::Deserialize, Default)]
        struct Choice<'a> {
            #[serde(default, borrow)]
            finish_reason: Option<Cow<'a, str>>,
        }
        #[derive(serde::Deserialize, Default)]
        #[serde(default)]
        struct Answer<'a> {
            #[serde(borrow)]
            id: Option<Cow<'a, str>>,
            #[serde(borrow)]
            model: Option<Cow<'a, str>>,
            #[serde(rename = "modelVersion", borrow)]
            model_version: Option<Cow<'a, str>>,
            #[serde(rename = "responseId", borrow)]
            response_id: Option<Cow<'a, str>>,
            #[serde(borrow)]
            choices: Vec<Choice<'a>>,
            #[serde(borrow)]
            stop_reason: Option<Cow<'a, str>>,
            #[serde(borrow)]
            status: Option<Cow<'a, str>>,
        }
        let Ok(a) = serde_json::from_slice::<Answer<'_>>(body) else {
            return;
        };
        if let Some(id) = a.id.or(a.response_id) {
            self.response_id = id.into_owned();
        }
        if let Some(m) = a.model.or(a.model_version) {
            self.response_model = m.into_owned();
        }
        let status = a
            .status
            .filter(|_| a.choices.is_empty() && a.stop_reason.is_none());
        self.finish_reasons = a
            .choices
            .into_iter()
            .filter_map(|c| c.finish_reason)
            .chain(a.stop_reason)
            .chain(status)
            .map(Cow::into_owned)
            .collect();
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
