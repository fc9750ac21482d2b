//! The request handlers: `/v1/chat/completions`, `/v1/embeddings`, `/v1/models`. Each runs
//! the inner request stack (see `stack.rs` for the order and the reasons) and renders errors
//! once, in the caller's dialect.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::time::Instant;

use crate::auth;
use crate::config::{BackendEntry, EndpointEntry, KeyEntry, PoolEntry, RouteEntry, RuntimeConfig};
use crate::error::{Dialect, ErrorKind, ProxyError};
use crate::gateway::Gateway;
use crate::limits::{self, Estimate, Permit, Price, RateHeaders, Subject};
use crate::metrics::{EndpointLabels, ReasonLabels, UpstreamLabels};
use crate::openai::{ChatRequest, EmbeddingsRequest, Usage, estimate_tokens};
use crate::providers::{self, Flow, Provider, StreamTranslator, anthropic, mock, openai as oa};
use crate::sse;
use crate::tokens;
use crate::upstream;

type Result<T, E = ProxyError> = std::result::Result<T, E>;

fn now_unix() -> i64 {
    i64::try_from(crate::openai::now_unix()).unwrap_or(i64::MAX)
}

fn render(e: ProxyError, dialect: Dialect) -> Response {
    match e.kind.origin() {
        crate::error::Origin::Client => tracing::debug!(error = %e, "request rejected"),
        _ => tracing::warn!(error = %e, "request failed"),
    }
    e.into_response_in(dialect)
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match chat(&gw, &headers, body).await {
        Ok(r) => r,
        Err(e) => render(e, Dialect::OpenAi),
    }
}

/// `POST /v1/embeddings`.
pub async fn embeddings(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match embed(&gw, &headers, body).await {
        Ok(r) => r,
        Err(e) => render(e, Dialect::OpenAi),
    }
}

/// `GET /v1/models`: the models the presented key may use.
pub async fn models(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    let result = (|| {
        let cfg = ready(&gw)?;
        let key = auth::authenticate(&cfg, &headers, now_unix())?;
        let data: Vec<_> = cfg
            .models_for(&key)
            .into_iter()
            .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "switchyard"}))
            .collect();
        Ok::<_, ProxyError>(axum::Json(json!({"object": "list", "data": data})).into_response())
    })();
    result.unwrap_or_else(|e| render(e, Dialect::OpenAi))
}

/// Any other path under the API listener.
pub async fn not_found(method: Method, uri: http::Uri) -> Response {
    ProxyError::new(
        ErrorKind::UnknownEndpoint,
        format!("Unknown request URL: {method} {}.", uri.path()),
    )
    .into_response_in(Dialect::OpenAi)
}

fn ready(gw: &Gateway) -> Result<Arc<RuntimeConfig>> {
    gw.config().ok_or_else(|| {
        ProxyError::new(ErrorKind::NotReady, "The gateway has no configuration yet.")
    })
}

/// Reads the body up to the limit (413 beyond it).
pub async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes> {
    let too_large = || {
        ProxyError::new(
            ErrorKind::BodyTooLarge,
            format!("Request body is larger than the limit of {limit} bytes."),
        )
    };
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        && len > limit
    {
        return Err(too_large());
    }
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(too_large())
        }
        Err(e) => Err(ProxyError::new(
            ErrorKind::InvalidRequest,
            format!("Reading the request body failed: {e}"),
        )),
    }
}

/// Parses a JSON body: syntax errors and type errors get distinct, precise messages.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    if bytes.is_empty() {
        return Err(ProxyError::new(
            ErrorKind::InvalidJson,
            "The request body is empty; expected a JSON object.",
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => {
            ProxyError::new(ErrorKind::InvalidRequest, format!("Invalid request: {e}"))
        }
        _ => ProxyError::new(
            ErrorKind::InvalidJson,
            format!("The request body is not valid JSON: {e}"),
        ),
    })
}

/// Authenticated, parsed, routed and authorized: what every model call starts from.
struct Routed<'c, T> {
    req: T,
    route: &'c RouteEntry,
    backend: &'c BackendEntry,
    upstream_model: String,
}

fn route<'c, T>(
    cfg: &'c RuntimeConfig,
    key: &KeyEntry,
    req: T,
    model: &str,
) -> Result<Routed<'c, T>> {
    let route = cfg.route(model).ok_or_else(|| {
        ProxyError::new(
            ErrorKind::ModelNotFound,
            format!("The model `{model}` does not exist or you do not have access to it."),
        )
        .with_param("model")
    })?;
    auth::authorize(key, route, model)?;
    let backend = route.pick().ok_or_else(|| {
        ProxyError::new(
            ErrorKind::Internal,
            format!("route {} has no backend with weight", route.id),
        )
    })?;
    let upstream_model = backend.model.clone().unwrap_or_else(|| model.to_owned());
    Ok(Routed {
        req,
        route,
        backend,
        upstream_model,
    })
}

/// Checks and charges the rate limits and budget that apply (none: `None`, no store call).
async fn admit(
    gw: &Gateway,
    key: &KeyEntry,
    route: &RouteEntry,
    model: &str,
    backend: &BackendEntry,
    upstream_model: &str,
    estimate: impl FnOnce() -> Estimate,
) -> Result<Option<Permit>> {
    let pool = &backend.pool;
    let price = pool.prices.get(upstream_model).copied().unwrap_or_default();
    if key.budget.is_some() && price == Price::default() {
        warn_unpriced(&pool.id, upstream_model);
    }
    let subject = Subject {
        key_id: &key.id,
        key_limits: key.limits,
        model_limits: key.model_limits_for(model),
        budget: key.budget,
        route_id: &route.id,
        route_limits: route.limits,
        model,
        price,
        lease: pool.timeouts.total + std::time::Duration::from_secs(60),
    };
    let Some(plan) = limits::plan(&subject, limits::now_ms(), estimate) else {
        return Ok(None);
    };
    gw.limiter.admit(plan).await.map(Some)
}

/// Budgets price usage from the pool's model list; a model without prices spends nothing.
/// Said once per pool and model, so the operator can add the prices.
fn warn_unpriced(pool: &str, model: &str) {
    static SEEN: std::sync::Mutex<Vec<(String, String)>> = std::sync::Mutex::new(Vec::new());
    let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    if seen.len() < 1024 && !seen.iter().any(|(p, m)| p == pool && m == model) {
        seen.push((pool.to_owned(), model.to_owned()));
        tracing::warn!(
            pool,
            model,
            "a key with a budget uses a model without prices in its ProviderPool; its requests cost nothing"
        );
    }
}

/// Settles what the call left unsettled (errors: nothing was used) and puts the rate-limit
/// headers on the response.
fn finish(
    result: Result<Response>,
    mut permit: Option<Permit>,
    rate: Option<RateHeaders>,
) -> Result<Response> {
    if let Some(p) = permit.take() {
        p.settle(match &result {
            Ok(_) => None,
            Err(_) => Some(Usage::new(0, 0)),
        });
    }
    let mut resp = result?;
    if let Some(h) = rate {
        h.apply(resp.headers_mut());
    }
    Ok(resp)
}

fn rate_headers(permit: &Option<Permit>) -> Option<RateHeaders> {
    permit
        .as_ref()
        .map(|p| p.headers.clone())
        .filter(|h| !h.is_empty())
}

fn endpoint(pool: &PoolEntry) -> Result<&EndpointEntry> {
    pool.pick().ok_or_else(|| {
        ProxyError::new(
            ErrorKind::UpstreamConnect,
            format!("pool {} has no endpoint with weight", pool.id),
        )
    })
}

fn upstream_request(
    pool: &PoolEntry,
    ep: &EndpointEntry,
    url: String,
    body: Bytes,
) -> Result<http::Request<Full<Bytes>>> {
    let mut b = http::Request::post(url).header(header::CONTENT_TYPE, "application/json");
    if let Some(c) = &ep.credential {
        b = b.header(pool.provider.credential_header(), c.0.clone());
    }
    if pool.provider == Provider::Anthropic {
        b = b.header("anthropic-version", anthropic::API_VERSION);
    }
    b.body(Full::new(body)).map_err(|e| {
        ProxyError::new(
            ErrorKind::Internal,
            format!("building the upstream request failed: {e}"),
        )
    })
}

/// Deadlines of one upstream call.
#[derive(Clone, Copy)]
struct Deadlines {
    first_byte: Instant,
    total: Instant,
}

impl Deadlines {
    fn of(pool: &PoolEntry) -> Self {
        let now = Instant::now();
        let total = now + pool.timeouts.total;
        Self {
            first_byte: (now + pool.timeouts.first_byte).min(total),
            total,
        }
    }
}

/// Sends the request; turns error statuses into errors carrying the upstream's message.
async fn call(
    gw: &Gateway,
    pool: &PoolEntry,
    req: http::Request<Full<Bytes>>,
    d: Deadlines,
) -> Result<http::Response<Incoming>> {
    let provider = pool.provider.label();
    let started = Instant::now();
    let result = upstream::send(&pool.client, req, d.first_byte).await;
    gw.metrics
        .upstream_duration
        .get_or_create(&EndpointLabels { endpoint: provider })
        .observe(started.elapsed().as_secs_f64());
    let outcome = |o: &'static str| {
        gw.metrics
            .upstream_requests
            .get_or_create(&UpstreamLabels {
                provider,
                outcome: o,
            })
            .inc()
    };
    let resp = match result {
        Ok(r) => r,
        Err(e) => {
            outcome(e.kind.metric_label());
            return Err(e);
        }
    };
    if resp.status().is_success() {
        outcome("ok");
        return Ok(resp);
    }
    outcome("error_status");
    let status = resp.status();
    let retry_after = resp.headers().get(header::RETRY_AFTER).cloned();
    let body = upstream::read_body(resp.into_body(), d.total)
        .await
        .unwrap_or_default();
    Err(providers::upstream_error(status, &body, retry_after))
}

fn json_response(body: Bytes) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

async fn chat(gw: &Arc<Gateway>, headers: &HeaderMap, body: Body) -> Result<Response> {
    let cfg = ready(gw)?;
    let key = auth::authenticate(&cfg, headers, now_unix())?;
    let bytes = read_body(headers, body, gw.body_limit).await?;
    let req: ChatRequest = parse_json(&bytes)?;
    req.validate()
        .map_err(|(m, p)| ProxyError::new(ErrorKind::InvalidRequest, m).with_param(p))?;
    let model = req.model.clone();
    let Routed {
        req,
        route,
        backend,
        upstream_model,
    } = route(&cfg, &key, req, &model)?;
    let mut permit = admit(gw, &key, route, &model, backend, &upstream_model, || {
        tokens::estimate_chat(&req, &upstream_model)
    })
    .await?;
    let rate = rate_headers(&permit);
    let result = chat_upstream(gw, req, backend, &upstream_model, &mut permit).await;
    finish(result, permit, rate)
}

async fn chat_upstream(
    gw: &Arc<Gateway>,
    req: ChatRequest,
    backend: &BackendEntry,
    upstream_model: &str,
    permit: &mut Option<Permit>,
) -> Result<Response> {
    let upstream_model = upstream_model.to_owned();
    let pool = &backend.pool;
    let stream = req.is_stream();
    let wants_usage = req.wants_usage();
    let provider = pool.provider;

    if provider == Provider::Mock {
        return Ok(mock_chat(gw, pool, &req, &upstream_model, permit.take()).await);
    }
    let ep = endpoint(pool)?;
    let d = Deadlines::of(pool);
    let (url, body, translator) = match provider {
        Provider::Anthropic => {
            let body = anthropic::translate_request(&req, &upstream_model).map_err(internal)?;
            let t = StreamTranslator::Anthropic(anthropic::StreamState::new(wants_usage));
            (anthropic::messages_url(&ep.base), body, t)
        }
        _ => {
            let url = oa::chat_url(provider, &ep.base, &upstream_model, &pool.api_version);
            let body = oa::translate_request(req, &upstream_model).map_err(internal)?;
            (
                url,
                body,
                StreamTranslator::OpenAi(oa::StreamState::new(wants_usage)),
            )
        }
    };
    let resp = call(gw, pool, upstream_request(pool, ep, url, body)?, d).await?;
    if stream {
        return Ok(stream_response(
            gw.clone(),
            provider.label(),
            resp.into_body(),
            translator,
            d.total,
            permit.take(),
        ));
    }
    let body = upstream::read_body(resp.into_body(), d.total).await?;
    let garbage = |e: serde_json::Error| {
        ProxyError::new(
            ErrorKind::UpstreamProtocol,
            format!("upstream returned an invalid response: {e}"),
        )
    };
    if provider == Provider::Anthropic {
        let out = anthropic::translate_response(&body).map_err(garbage)?;
        if let Some(u) = out.usage {
            gw.metrics.record_usage(provider.label(), u);
        }
        if let Some(p) = permit.take() {
            p.settle(out.usage);
        }
        let bytes = serde_json::to_vec(&out).map_err(internal)?;
        return Ok(json_response(Bytes::from(bytes)));
    }
    let usage = oa::response_usage(&body).map_err(garbage)?;
    if let Some(u) = usage {
        gw.metrics.record_usage(provider.label(), u);
    }
    if let Some(p) = permit.take() {
        p.settle(usage);
    }
    Ok(json_response(body))
}

fn internal(e: impl std::fmt::Display) -> ProxyError {
    ProxyError::new(ErrorKind::Internal, format!("internal error: {e}"))
}

async fn mock_chat(
    gw: &Arc<Gateway>,
    pool: &PoolEntry,
    req: &ChatRequest,
    model: &str,
    permit: Option<Permit>,
) -> Response {
    let behaviour = pool.mock;
    let prompt_tokens = estimate_tokens(req);
    if !behaviour.latency.is_zero() {
        tokio::time::sleep(behaviour.latency).await;
    }
    if !req.is_stream() {
        let r = mock::response(model, &behaviour, prompt_tokens);
        if let Some(u) = r.usage {
            gw.metrics.record_usage("mock", u);
        }
        if let Some(p) = permit {
            p.settle(r.usage);
        }
        return axum::Json(r).into_response();
    }
    let interval = mock::token_interval(&behaviour);
    let s = mock::MockStream::new(model, &behaviour, prompt_tokens, req.wants_usage());
    gw.metrics.record_usage("mock", s.usage());
    // The permit rides along and settles when the last chunk is out.
    let state = (s, true, permit);
    let stream =
        futures_util::stream::unfold(state, move |(mut s, first, mut permit)| async move {
            if !first && !interval.is_zero() {
                tokio::time::sleep(interval).await;
            }
            let chunk = s.next_chunk();
            if chunk.is_none()
                && let Some(p) = permit.take()
            {
                p.settle(Some(s.usage()));
            }
            chunk.map(|c| (Ok::<_, Infallible>(c), (s, false, permit)))
        });
    sse_response(Body::from_stream(stream))
}

fn sse_response(body: Body) -> Response {
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .header("x-accel-buffering", "no")
        .body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// Forwards an upstream SSE stream event by event through a translator, never buffering more
/// than one event. A failure mid-stream ends the client's stream with an error event.
struct StreamDriver {
    gw: Arc<Gateway>,
    provider: &'static str,
    body: Incoming,
    decoder: sse::Decoder,
    translator: StreamTranslator,
    deadline: Instant,
    finished: bool,
    saw_end: bool,
    usage_recorded: bool,
    permit: Option<Permit>,
}

impl StreamDriver {
    fn fail(&mut self, label: &'static str, message: &str, out: &mut Vec<Bytes>) {
        self.finished = true;
        self.gw
            .metrics
            .stream_errors
            .get_or_create(&ReasonLabels { reason: label })
            .inc();
        tracing::warn!(
            provider = self.provider,
            reason = label,
            message,
            "stream ended with an error"
        );
        let body = json!({"error": {"message": message, "type": "upstream_error", "param": null, "code": label}});
        out.push(sse::data(body.to_string().as_bytes()));
    }

    fn handle(&mut self, ev: sse::Event, out: &mut Vec<Bytes>) {
        match self.translator.on_event(ev, out) {
            Ok(Flow::Continue) => {}
            Ok(Flow::Done) => {
                self.saw_end = true;
                self.finished = true;
            }
            Err(e) => {
                let label = e.label;
                if label == "upstream_error_event" {
                    // The translator already emitted the upstream's error event.
                    self.finished = true;
                    self.gw
                        .metrics
                        .stream_errors
                        .get_or_create(&ReasonLabels { reason: label })
                        .inc();
                } else {
                    self.fail(label, &e.message, out);
                }
            }
        }
    }

    fn drain(&mut self, out: &mut Vec<Bytes>) {
        while !self.finished {
            match self.decoder.next_event() {
                Ok(Some(ev)) => self.handle(ev, out),
                Ok(None) => break,
                Err(e) => self.fail(
                    "malformed_event",
                    &format!("upstream stream is malformed: {e}"),
                    out,
                ),
            }
        }
    }

    async fn next(&mut self) -> Option<Bytes> {
        let mut out = Vec::new();
        while out.is_empty() {
            if self.finished {
                self.complete();
                return None;
            }
            match tokio::time::timeout_at(self.deadline, self.body.frame()).await {
                Err(_) => self.fail(
                    "timeout",
                    "upstream stream did not complete in time",
                    &mut out,
                ),
                Ok(None) => {
                    if let Ok(Some(ev)) = self.decoder.finish() {
                        self.handle(ev, &mut out);
                    }
                    if !self.saw_end && !self.finished {
                        self.fail(
                            "upstream_disconnect",
                            "upstream stream ended before completion",
                            &mut out,
                        );
                    }
                    self.finished = true;
                }
                Ok(Some(Err(e))) => self.fail(
                    "upstream_disconnect",
                    &format!("upstream stream broke: {e}"),
                    &mut out,
                ),
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        self.decoder.push(&data);
                        self.drain(&mut out);
                    }
                }
            }
        }
        Some(if out.len() == 1 {
            out.swap_remove(0)
        } else {
            Bytes::from(out.concat())
        })
    }

    fn complete(&mut self) {
        if self.usage_recorded {
            return;
        }
        self.usage_recorded = true;
        let usage = self.translator.usage();
        if let Some(u) = usage {
            self.gw.metrics.record_usage(self.provider, u);
        }
        if let Some(p) = self.permit.take() {
            p.settle(usage);
        }
    }
}

fn stream_response(
    gw: Arc<Gateway>,
    provider: &'static str,
    body: Incoming,
    translator: StreamTranslator,
    deadline: Instant,
    permit: Option<Permit>,
) -> Response {
    let driver = StreamDriver {
        gw,
        provider,
        body,
        decoder: sse::Decoder::default(),
        translator,
        deadline,
        finished: false,
        saw_end: false,
        usage_recorded: false,
        permit,
    };
    let stream = futures_util::stream::unfold(driver, |mut d| async move {
        d.next().await.map(|b| (Ok::<_, Infallible>(b), d))
    });
    sse_response(Body::from_stream(stream))
}

async fn embed(gw: &Arc<Gateway>, headers: &HeaderMap, body: Body) -> Result<Response> {
    let cfg = ready(gw)?;
    let key = auth::authenticate(&cfg, headers, now_unix())?;
    let bytes = read_body(headers, body, gw.body_limit).await?;
    let req: EmbeddingsRequest = parse_json(&bytes)?;
    if req.model.trim().is_empty() {
        return Err(
            ProxyError::new(ErrorKind::InvalidRequest, "model must not be empty")
                .with_param("model"),
        );
    }
    let model = req.model.clone();
    let Routed {
        req,
        route,
        backend,
        upstream_model,
    } = route(&cfg, &key, req, &model)?;
    let mut permit = admit(gw, &key, route, &model, backend, &upstream_model, || {
        tokens::estimate_texts(&req.input.texts(), &upstream_model)
    })
    .await?;
    let rate = rate_headers(&permit);
    let result = embed_upstream(gw, req, &model, backend, upstream_model, &mut permit).await;
    finish(result, permit, rate)
}

async fn embed_upstream(
    gw: &Arc<Gateway>,
    mut req: EmbeddingsRequest,
    model: &str,
    backend: &BackendEntry,
    upstream_model: String,
    permit: &mut Option<Permit>,
) -> Result<Response> {
    let pool = &backend.pool;
    match pool.provider {
        Provider::Mock => {
            let dims = req.dimensions.unwrap_or(8).clamp(1, 4096) as usize;
            let texts = req.input.texts();
            let tokens: u64 = texts.iter().map(|t| (t.len() as u64).div_ceil(4)).sum();
            let data: Vec<_> = texts
                .iter()
                .enumerate()
                .map(|(i, t)| json!({"object": "embedding", "index": i, "embedding": mock::embedding(t, dims)}))
                .collect();
            gw.metrics.record_usage("mock", Usage::new(tokens, 0));
            if let Some(p) = permit.take() {
                p.settle(Some(Usage::new(tokens, 0)));
            }
            Ok(axum::Json(json!({
                "object": "list", "data": data, "model": upstream_model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}
            }))
            .into_response())
        }
        Provider::Anthropic => Err(ProxyError::new(
            ErrorKind::Unsupported,
            format!("The model `{model}` does not support embeddings."),
        )
        .with_param("model")),
        provider => {
            let ep = endpoint(pool)?;
            let d = Deadlines::of(pool);
            let url = oa::embeddings_url(provider, &ep.base, &upstream_model, &pool.api_version);
            req.model = upstream_model;
            let body = Bytes::from(serde_json::to_vec(&req).map_err(internal)?);
            let resp = call(gw, pool, upstream_request(pool, ep, url, body)?, d).await?;
            let body = upstream::read_body(resp.into_body(), d.total).await?;
            let usage = oa::response_usage(&body).map_err(|e| {
                ProxyError::new(
                    ErrorKind::UpstreamProtocol,
                    format!("upstream returned an invalid response: {e}"),
                )
            })?;
            if let Some(u) = usage {
                gw.metrics.record_usage(provider.label(), u);
            }
            if let Some(p) = permit.take() {
                p.settle(usage);
            }
            Ok(json_response(body))
        }
    }
}
