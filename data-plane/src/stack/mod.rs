//! The data-plane request pipeline, in order. Outer layers are tower middleware applied to
//! every request; then a front door (`frontdoor/`) decodes the caller's format and
//! [`model_call`] runs the rest. One line of why per step:
//!
//! 1. catch-panic — outermost, so a bug anywhere becomes a 500, never a dropped connection
//! 2. sensitive headers — before anything can log them: `authorization`, `x-api-key`
//! 3. request id — set early so every later log line and the response carry it
//! 4. trace span — one span per request, with the id, for logs and traces
//! 5. metrics + audit — sees every response, errors included; opens the request's audit
//!    record, which the later steps fill in and which goes to the audit writer when the
//!    response (or its stream) ends
//! 6. front door — authenticate (a hash lookup: the cheapest rejection); take the key's share
//!    of the concurrency (429 beyond it), so a key's slow bodies hold only its own slots; read
//!    the body under its size limit, deadline and least rate (413, 408); take a slot of the
//!    gateway's concurrency (503 beyond it); check the body in the caller's format, read
//!    once by the reader every later step shares (`llm/json.rs`)
//! 7. route — the model names a route; 404 unknown, 403 not allowed for this key
//! 8. limits + budget — after routing, because a budget prices the backend's upstream model;
//!    one store round trip reserves RPM/TPM/parallel/budget, or 429
//! 9. guardrails — the request phase, after limits so a blocked request still counts against
//!    the key's RPM (its reservation is returned): prompt too long, deny patterns, personal
//!    data blocked, redacted or masked in the prompt's text before it leaves
//! 10. cache — after the guardrails, so the key is over what would go upstream: an exact hit
//!     answers here (replayed as a stream for a streamed request), spending no upstream
//!     tokens; a miss goes on and its complete answer is stored
//! 11. attempts (`route::call`) — pick a backend and an endpoint (balancing, skipping
//!     ejected ones), call the provider (same format: the client's bytes with the model
//!     swapped; else canonical -> the upstream's wire; send with deadlines; classify error
//!     answers), feed the outcome to the endpoint's health; retry within the retry budget,
//!     then enter the fallback group the failure class leads to
//! 12. respond — render once in the caller's format (streams event by event), through the
//!     guardrails' response phase (a stream holds back only what could still grow into a
//!     match); usage counted on the way settles tokens and spend when the answer ends

mod limits;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::Request;
use axum::response::Response;
use axum::routing::{get, post};
use http::{HeaderName, HeaderValue, StatusCode, header};
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::TraceLayer;

use crate::cache::key::Plan;
use crate::cache::{Fill, Lookup};
use crate::config::RuntimeConfig;
use crate::error::{Dialect, ErrorKind, ErrorLabel, ProxyError};
use crate::frontdoor;
use crate::gateway::Gateway;
use crate::llm::Incoming;
use crate::policy::auth::KeyEntry;
use crate::policy::guard::enforce::{self, Decisions, ResponsePhase};
use crate::policy::guard::webhook;
use crate::route;
use crate::telemetry::CacheResult;
use crate::telemetry::metrics::{EndpointLabels, RequestLabels};
use crate::telemetry::semconv;
use switchyard_otel::opentelemetry::KeyValue;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Request ids: 16 random hex digits (a caller-supplied `x-request-id` is kept).
#[derive(Clone, Copy, Debug, Default)]
pub struct RandomRequestId;

impl MakeRequestId for RandomRequestId {
    fn make_request_id<B>(&mut self, _: &http::Request<B>) -> Option<RequestId> {
        http::HeaderValue::from_str(&format!("{:016x}", fastrand::u64(..)))
            .ok()
            .map(RequestId::new)
    }
}

/// Options of the API listener.
#[derive(Clone, Copy, Debug)]
pub struct StackOptions {
    /// Most requests in flight (bodies read) before new ones get 503.
    pub max_concurrency: usize,
    /// Most requests of one namespace's keys together, and of one key, in flight (bodies
    /// being read included) before their new ones get 429.
    pub shares: crate::frontdoor::admission::Shares,
    /// How long a request body may take.
    pub body: crate::frontdoor::admission::BodyTiming,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            max_concurrency: 10_000,
            shares: crate::frontdoor::admission::Shares {
                per_namespace: 5_000,
                per_key: 1_000,
            },
            body: Default::default(),
        }
    }
}

/// The API router with the whole stack.
pub fn router(gw: Arc<Gateway>, opts: StackOptions) -> Router {
    gw.set_admission(crate::frontdoor::admission::Admission::new(
        opts.max_concurrency,
        opts.shares,
        opts.body,
    ));
    Router::new()
        .route("/v1/chat/completions", post(frontdoor::chat_completions))
        .route("/v1/completions", post(frontdoor::completions))
        .route("/v1/responses", post(frontdoor::responses))
        .route("/v1/messages", post(frontdoor::messages))
        .route("/v1/messages/count_tokens", post(frontdoor::count_tokens))
        .route("/v1/embeddings", post(frontdoor::embeddings))
        .route("/v1/models", get(frontdoor::models))
        .fallback(frontdoor::not_found)
        .layer(EdgeLayer { gw: gw.clone() })
        .layer(
            ServiceBuilder::new()
                .layer(CatchPanicLayer::custom(panic_response))
                .layer(SetSensitiveRequestHeadersLayer::new([header::AUTHORIZATION, HeaderName::from_static("x-api-key")]))
                .layer(SetRequestIdLayer::new(REQUEST_ID, RandomRequestId))
                .layer(PropagateRequestIdLayer::new(REQUEST_ID))
                .layer(TraceLayer::new_for_http().make_span_with(|req: &http::Request<_>| {
                    let id = req.headers().get(REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("");
                    tracing::debug_span!("request", method = %req.method(), path = %req.uri().path(), request_id = id)
                })),
        )
        .with_state(gw)
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("request handler panicked");
    let mut r =
        ProxyError::new(ErrorKind::Internal, "internal error").into_response_in(Dialect::OpenAi);
    *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    r
}

fn endpoint_label(path: &str) -> &'static str {
    match path {
        "/v1/chat/completions" => "chat_completions",
        "/v1/completions" => "completions",
        "/v1/responses" => "responses",
        "/v1/messages" => "messages",
        "/v1/messages/count_tokens" => "count_tokens",
        "/v1/embeddings" => "embeddings",
        "/v1/models" => "models",
        _ => "other",
    }
}

/// What the guardrails did to a request (`ns/name=redact, ...`).
const GUARDRAILS: HeaderName = HeaderName::from_static("x-switchyard-guardrails");

/// Steps 7 to 12: one model call, after its front door decoded it.
pub async fn model_call(
    gw: &Arc<Gateway>,
    cfg: &RuntimeConfig,
    key: &KeyEntry,
    mut incoming: Incoming,
) -> Result<Response, ProxyError> {
    let audit = crate::telemetry::current();
    let routed = route::resolve(cfg.routes(), key, &incoming.facts.model)?;
    if let Some(a) = &audit {
        a.routed(
            &key.id,
            &routed.route.id,
            (
                &incoming.facts.model,
                routed.route.model_label(&incoming.facts.model),
            ),
            incoming.facts.stream,
            routed.route.audit_text,
        );
        a.spans(|s| {
            s.max_tokens = incoming.facts.max_output_tokens;
            s.temperature = incoming
                .raw()
                .and_then(|r| r.parse_field::<f64>("temperature").ok().flatten());
        });
    }
    let since = Instant::now();
    let admitted = limits::admit(gw, key, &routed, &incoming).await;
    if let Some(a) = &audit {
        let decision = match &admitted {
            Ok(Some(_)) => "admitted",
            Ok(None) => "none",
            Err(_) => "rejected",
        };
        a.spans(|s| s.limits = decision);
        a.stage(semconv::EVENT_LIMITS, since, || {
            vec![KeyValue::new(semconv::LIMIT_DECISION, decision)]
        });
    }
    let mut permit = admitted?;
    let guards = cfg.guards.of(&routed.route.id, key);
    let mut decisions = Decisions::default();
    let mut response_phase = None;
    if !guards.is_empty() {
        let since = Instant::now();
        let ctx = webhook::Context {
            route: routed.route.id.clone(),
            model: incoming.facts.model.clone(),
        };
        let checked = match enforce::request(
            &gw.metrics,
            &guards,
            &mut incoming,
            |i| crate::tokens::estimate_incoming(i, &routed.upstream_model).input,
            &mut decisions,
        ) {
            // Boxed, like the other steps only some routes take: their state stays out of
            // every request's future.
            Ok(()) => {
                Box::pin(webhook::request(
                    gw.webhooks(),
                    &guards,
                    &ctx,
                    &mut incoming,
                    &mut decisions,
                ))
                .await
            }
            Err(e) => Err(e),
        }
        .and_then(|()| ResponsePhase::of(&guards, &incoming, &ctx));
        if let Some(a) = &audit {
            a.stage(semconv::EVENT_GUARDRAILS, since, || {
                let said = match (&checked, decisions.header()) {
                    (Err(_), _) => "blocked".to_owned(),
                    (Ok(_), Some(v)) => v.to_str().unwrap_or_default().to_owned(),
                    (Ok(_), None) => "pass".to_owned(),
                };
                vec![KeyValue::new(semconv::GUARDRAILS, said)]
            });
        }
        match checked {
            Ok(phase) => response_phase = phase,
            Err(e) => {
                if let Some(p) = permit {
                    p.settle(Some(crate::llm::Usage::default()));
                }
                return Err(e);
            }
        }
    }
    if let Some(a) = audit.as_ref().filter(|a| a.wants_text()) {
        // As it goes upstream: after the request phase redacted it.
        a.prompt(enforce::prompt_text(&incoming));
    }
    // 10. The response cache.
    let mut fill = None;
    let mut cached = None;
    if let (Some(policy), Some(cache)) = (&routed.route.cache, gw.cache()) {
        let since = Instant::now();
        let route = &routed.route.id;
        let no_store = incoming.cache_control.no_store;
        let outcome = match crate::cache::key::plan(policy, route, key, &incoming) {
            Plan::Bypass(why) => {
                tracing::debug!(route = %route, why, "not cached");
                CacheResult::Bypass
            }
            Plan::Use(key) if incoming.cache_control.no_cache => {
                fill = (!no_store).then_some(Fill { key, vector: None });
                CacheResult::Bypass
            }
            Plan::Use(key) => match Box::pin(lookup(gw, cache, &routed, policy, &key)).await {
                Lookup::Hit { entry, similarity } if entry.format == incoming.format => {
                    let outcome = if similarity.is_some() {
                        CacheResult::SemanticHit
                    } else {
                        CacheResult::Hit
                    };
                    cache.count(route, outcome);
                    cache.saved(
                        &entry.usage,
                        routed.backend.pool.price_of(&routed.upstream_model),
                    );
                    if let Some(p) = permit {
                        // A hit spends no upstream tokens.
                        p.settle(Some(crate::llm::Usage::default()));
                    }
                    if let Some(a) = &audit {
                        a.cache(outcome);
                        a.stage(semconv::EVENT_CACHE, since, || {
                            vec![KeyValue::new(semconv::CACHE_RESULT, outcome.name())]
                        });
                    }
                    return Box::pin(answer_from_cache(
                        gw,
                        &incoming,
                        &entry,
                        similarity,
                        response_phase,
                        decisions,
                        audit,
                    ))
                    .await;
                }
                Lookup::Hit { .. } => {
                    fill = (!no_store).then_some(Fill { key, vector: None });
                    CacheResult::Miss
                }
                Lookup::Miss { vector } => {
                    fill = (!no_store).then_some(Fill { key, vector });
                    CacheResult::Miss
                }
                // A tier or the model did not answer: counted there, and served as if there
                // were no cache.
                Lookup::Bypass => CacheResult::Bypass,
            },
        };
        cache.count(route, outcome);
        if let Some(a) = &audit {
            a.cache(outcome);
            a.stage(semconv::EVENT_CACHE, since, || {
                vec![KeyValue::new(semconv::CACHE_RESULT, outcome.name())]
            });
        }
        cached = Some(outcome);
    }
    let mut served = match route::call(gw, &routed, &incoming).await {
        Ok(s) => s,
        Err(e) => {
            if let Some(p) = permit {
                p.settle(Some(crate::llm::Usage::default()));
            }
            return Err(e);
        }
    };
    if let Some(p) = &mut permit {
        // A retry or fallback may have landed on a model with other prices.
        p.reprice(served.price);
    }
    if let (Some(fill), Some(cache), Some(policy)) = (fill, gw.cache(), &routed.route.cache) {
        store(cache, policy, fill, incoming.format, &mut served.answer);
    }
    let (attempts, backend) = (served.attempts, served.backend);
    if let Some(a) = &audit {
        a.served(
            backend.to_str().unwrap_or_default(),
            served.provider,
            served.price,
        );
    }
    let resp = frontdoor::respond(
        gw,
        served.provider,
        incoming.format,
        &incoming.facts,
        served.answer,
        Some(served.in_flight),
        permit,
        response_phase,
        &mut decisions,
        audit.clone(),
    )
    .await;
    let mut resp = guardrails_said(resp, &decisions, audit.as_ref())?;
    let h = resp.headers_mut();
    h.insert(route::ATTEMPTS, route::attempts_header(attempts));
    h.insert(route::BACKEND, backend);
    if let Some(o) = cached {
        h.insert(CACHE, HeaderValue::from_static(o.name()));
    }
    Ok(resp)
}

/// Looks a request up in the cache: its exact key, then (semantic routes) the nearest stored
/// request to its text's embedding, made by the built-in model or the route's embedding pool.
async fn lookup(
    gw: &Arc<Gateway>,
    cache: &crate::cache::Cache,
    routed: &route::Routed<'_>,
    policy: &crate::cache::Policy,
    key: &crate::cache::key::Key,
) -> Lookup {
    let exact = cache.exact(policy, key).await;
    let probe = key.probe.as_ref().filter(|_| policy.semantic.is_some());
    let (Lookup::Miss { .. }, Some(probe)) = (&exact, probe) else {
        return exact;
    };
    let vector = match &routed.route.embedder {
        Some(via) => {
            let start = std::time::Instant::now();
            let made = route::embed(gw, via, &probe.text).await;
            cache.embedded(&probe.text, start, made)
        }
        None => cache.embed(&probe.text).await,
    };
    match vector {
        Some(v) => cache.nearest(policy, key, v).await,
        None => Lookup::Bypass,
    }
}

/// What the guardrails did, in `x-switchyard-guardrails` and in the audit record (an error
/// response too).
fn guardrails_said(
    resp: Result<Response, ProxyError>,
    decisions: &Decisions,
    audit: Option<&crate::telemetry::Exchange>,
) -> Result<Response, ProxyError> {
    let header = decisions.header();
    if let (Some(a), Some(v)) = (audit, &header) {
        a.guardrails(v.to_str().unwrap_or_default());
    }
    let mut resp = resp?;
    if let Some(v) = header {
        resp.headers_mut().insert(GUARDRAILS, v);
    }
    Ok(resp)
}

/// What the cache did with a request: `hit`, `semantic-hit; similarity=0.97`, `miss`,
/// `bypass`.
const CACHE: HeaderName = HeaderName::from_static("x-switchyard-cache");

/// Answers a request from a cache entry: the stored body, or its replay as a stream, through
/// the response phase of the request's guardrails.
async fn answer_from_cache(
    gw: &Arc<Gateway>,
    incoming: &Incoming,
    entry: &crate::cache::Entry,
    similarity: Option<f32>,
    response_phase: Option<ResponsePhase>,
    mut decisions: Decisions,
    audit: Option<crate::telemetry::Exchange>,
) -> Result<Response, ProxyError> {
    let answer = if incoming.facts.stream {
        let r = crate::dialect::decode_response(incoming.format, &entry.body, false)?;
        crate::providers::Answer::Replay(crate::cache::replay(&r))
    } else {
        crate::providers::Answer::Raw {
            body: entry.body.clone(),
            usage: None,
        }
    };
    if let Some(a) = &audit {
        a.served("cache", "cache", crate::llm::Price::default());
    }
    let resp = frontdoor::respond(
        gw,
        "cache",
        incoming.format,
        &incoming.facts,
        answer,
        None,
        None,
        response_phase,
        &mut decisions,
        audit.clone(),
    )
    .await;
    let mut resp = guardrails_said(resp, &decisions, audit.as_ref())?;
    let said = match similarity {
        None => HeaderValue::from_static("hit"),
        Some(s) => HeaderValue::try_from(format!("semantic-hit; similarity={s:.3}"))
            .unwrap_or(HeaderValue::from_static("semantic-hit")),
    };
    resp.headers_mut().insert(CACHE, said);
    Ok(resp)
}

/// Stores a complete answer; a stream gets a record that stores it once it completed.
fn store(
    cache: &Arc<crate::cache::Cache>,
    policy: &Arc<crate::cache::Policy>,
    fill: Fill,
    format: crate::llm::Format,
    answer: &mut crate::providers::Answer,
) {
    use crate::providers::Answer;
    let entry = |body, usage| crate::cache::Entry {
        format,
        usage,
        body,
        ttl: policy.ttl,
    };
    match answer {
        Answer::Raw { body, usage } => {
            cache.put(policy, fill, entry(body.clone(), usage.unwrap_or_default()));
        }
        Answer::Complete { response, echo } => {
            if let Ok(b) = frontdoor::render_answer(format, response, echo.as_deref()) {
                cache.put(policy, fill, entry(b, response.usage));
            }
        }
        Answer::Stream { record, .. } => {
            let (cache, policy) = (cache.clone(), policy.clone());
            *record = Some(Box::new(crate::cache::Record::new(move |r| {
                if let Ok(body) = frontdoor::render_answer(format, &r, None) {
                    let ttl = policy.ttl;
                    cache.put(
                        &policy,
                        fill,
                        crate::cache::Entry {
                            format,
                            usage: r.usage,
                            body,
                            ttl,
                        },
                    );
                }
            })));
        }
        _ => {}
    }
}

/// Metrics and the request's record in one layer: counts every response by endpoint, status
/// and error label, times it to the response head, and keeps the record open until a
/// stream ends.
#[derive(Clone, Debug)]
pub struct EdgeLayer {
    gw: Arc<Gateway>,
}

impl<S> tower::Layer<S> for EdgeLayer {
    type Service = Edge<S>;

    fn layer(&self, inner: S) -> Edge<S> {
        Edge {
            inner,
            gw: self.gw.clone(),
        }
    }
}

/// The service of [`EdgeLayer`].
#[derive(Clone, Debug)]
pub struct Edge<S> {
    inner: S,
    gw: Arc<Gateway>,
}

impl<S> tower::Service<Request> for Edge<S>
where
    S: tower::Service<Request, Response = Response, Error = std::convert::Infallible>
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response, std::convert::Infallible>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let endpoint = endpoint_label(req.uri().path());
        let started = Instant::now();
        let gw = self.gw.clone();
        // The request's record, filled in on the way (see `telemetry`).
        let slot = gw.telemetry.open(req.headers(), endpoint);
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = crate::telemetry::scope(slot.clone(), fut).await?;
            let streaming = resp
                .headers()
                .get(header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
            let resp = if streaming {
                // The record is read when the stream ends, not when its head went out.
                resp.map(|body| {
                    axum::body::Body::new(Held {
                        body,
                        _exchange: slot.clone(),
                    })
                })
            } else {
                resp
            };
            let error = resp.extensions().get::<ErrorLabel>().map_or("", |l| l.0);
            slot.status(resp.status().as_u16(), error);
            gw.metrics
                .requests
                .get_or_create(&RequestLabels {
                    endpoint,
                    status: resp.status().as_u16(),
                    error,
                })
                .inc();
            gw.metrics
                .request_duration
                .get_or_create(&EndpointLabels { endpoint })
                .observe(started.elapsed().as_secs_f64());
            Ok(resp)
        })
    }
}

/// A stream's body, holding the request's record until it ends (or the client goes).
struct Held {
    body: axum::body::Body,
    /// The request's record is read when the stream ends.
    _exchange: crate::telemetry::Exchange,
}

impl http_body::Body for Held {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
