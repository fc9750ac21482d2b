//! The data-plane request pipeline, in order. Outer layers are tower middleware applied to
//! every request; then a front door (`frontdoor/`, with `admission.rs`) decodes the caller's
//! format and the pipeline (`pipeline/`, rendering in `render/`) runs the rest. One line of
//! why per step:
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
//! 7. route (`route::table`) — the model names a route; 404 unknown, 403 not allowed for this key
//! 8. limits + budget (`pipeline/limits.rs`) — after routing, because a budget prices the backend's upstream model;
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
//! 12. respond (`render/`) — render once in the caller's format (streams event by event), through the
//!     guardrails' response phase (a stream holds back only what could still grow into a
//!     match); usage counted on the way settles tokens and spend when the answer ends

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::Request;
use axum::response::Response;
use axum::routing::{get, post};
use http::{HeaderName, StatusCode, header};
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::TraceLayer;

use crate::error::{Dialect, ErrorKind, ErrorLabel, ProxyError};
use crate::frontdoor;
use crate::gateway::Gateway;
use crate::telemetry::metrics::{EndpointLabels, RequestLabels};

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

/// Request admission's limits on the API listener (the gateway holds them, from `start`).
#[derive(Clone, Copy, Debug)]
pub struct StackOptions {
    /// Most requests in flight (bodies read) before new ones get 503.
    pub max_concurrency: usize,
    /// Most requests of one namespace's keys together, and of one key, in flight (bodies
    /// being read included) before their new ones get 429.
    pub shares: crate::admission::Shares,
    /// How long a request body may take.
    pub body: crate::admission::BodyTiming,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            max_concurrency: crate::admission::DEFAULT_MAX_CONCURRENCY,
            shares: crate::admission::Shares::default(),
            body: Default::default(),
        }
    }
}

/// The API router with the whole stack.
pub fn router(gw: Arc<Gateway>) -> Router {
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
                resp.map(|body| crate::admission::Holding::body(body, slot.clone()))
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
