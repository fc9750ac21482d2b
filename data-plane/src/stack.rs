//! The data-plane request stack, outer to inner. Outer layers are tower middleware applied to
//! every request; the inner steps run in the handlers (`proxy.rs`) in this order:
//!
//! 1. catch-panic          — outermost, so a bug anywhere becomes a 500, never a dropped connection
//! 2. sensitive headers    — before anything can log them: `authorization`, `x-api-key`
//! 3. request id           — set early so every later log line and the response carry it
//! 4. trace span           — one span per request, with the id, for logs and traces
//! 5. metrics              — sees every response, including errors from the steps below
//! 6. concurrency limit    — sheds load before any per-request work is spent
//! 7. authenticate key     — cheapest rejection of strangers: one hash and one map lookup
//! 8. body limit + parse   — only authenticated callers make us read and parse bodies
//! 9. route + authorize    — the model comes from the body; 404 unknown, 403 not allowed
//! 10. pick backend        — before limits: the budget prices the backend's upstream model
//! 11. limits + budget     — one store round trip reserves RPM/TPM/parallel/budget, or 429
//! 12. provider client     — translate, send with first-byte/total deadlines, translate back
//! 13. stream forwarding   — event by event, usage counted from the stream, errors as events
//! 14. settle              — actual usage corrects tokens and spend; leases end (async)

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
use crate::gateway::Gateway;
use crate::metrics::{EndpointLabels, RequestLabels};
use crate::proxy;

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
    /// Most requests in flight before new ones get 503.
    pub max_concurrency: usize,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            max_concurrency: 10_000,
        }
    }
}

/// The API router with the whole stack.
pub fn router(gw: Arc<Gateway>, opts: StackOptions) -> Router {
    let limiter = Arc::new(tokio::sync::Semaphore::new(opts.max_concurrency));
    Router::new()
        .route("/v1/chat/completions", post(proxy::chat_completions))
        .route("/v1/embeddings", post(proxy::embeddings))
        .route("/v1/models", get(proxy::models))
        .fallback(proxy::not_found)
        .layer(EdgeLayer { gw: gw.clone(), limiter })
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
        "/v1/embeddings" => "embeddings",
        "/v1/models" => "models",
        "/v1/messages" => "messages",
        _ => "other",
    }
}

/// Metrics and load shedding in one layer (one boxed future per request instead of two
/// `from_fn` middlewares): counts every response by endpoint, status and error label, times
/// it to the response head, and answers 503 when `max_concurrency` requests are in flight.
#[derive(Clone, Debug)]
pub struct EdgeLayer {
    gw: Arc<Gateway>,
    limiter: Arc<tokio::sync::Semaphore>,
}

impl<S> tower::Layer<S> for EdgeLayer {
    type Service = Edge<S>;

    fn layer(&self, inner: S) -> Edge<S> {
        Edge {
            inner,
            gw: self.gw.clone(),
            limiter: self.limiter.clone(),
        }
    }
}

/// The service of [`EdgeLayer`].
#[derive(Clone, Debug)]
pub struct Edge<S> {
    inner: S,
    gw: Arc<Gateway>,
    limiter: Arc<tokio::sync::Semaphore>,
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
        let admitted = self
            .limiter
            .clone()
            .try_acquire_owned()
            .ok()
            .map(|permit| (permit, self.inner.call(req)));
        Box::pin(async move {
            let resp = match admitted {
                Some((permit, fut)) => {
                    let resp = fut.await?;
                    drop(permit);
                    resp
                }
                None => {
                    let mut e = ProxyError::new(
                        ErrorKind::NotReady,
                        "The gateway is at its concurrency limit; retry shortly.",
                    );
                    e.retry_after = Some(http::HeaderValue::from_static("1"));
                    e.into_response_in(Dialect::OpenAi)
                }
            };
            let error = resp.extensions().get::<ErrorLabel>().map_or("", |l| l.0);
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
