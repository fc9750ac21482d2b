//! Routing and resilience. The client-facing model names a route; the route's backends name a
//! pool and the upstream model; the pool's endpoints are where requests go.
//!
//! - [`resolve`]: the route, the key's right to use it, and the first backend (limits price
//!   the request by it).
//! - [`call`]: the attempts. A backend is picked by the route's strategy and an endpoint by
//!   the pool's ([`crate::health::balance`]), skipping ejected ones while others are available
//!   ([`crate::health`]). Failed attempts are retried within the group of backends by a
//!   `tower::retry` policy ([`retry`]); when a group is exhausted, the first later fallback
//!   group that lists the failure class is entered. Every outcome feeds the endpoint's health.

pub(crate) mod retry;
pub(crate) mod table;

use std::sync::Arc;

use http::HeaderValue;
use tower::{Service, ServiceExt};

use crate::error::{ErrorKind, FailureClass, ProxyError};
use crate::health::{Admission, InFlight, Transition, Verdict};
use crate::llm::Incoming;
use crate::llm::Price;
use crate::policy::auth::KeyEntry;
use crate::providers::pool::{EndpointEntry, PoolEntry};
use crate::providers::{self, Answer};
use crate::telemetry::metrics::{BackendLabels, ClassLabels, Metrics, PoolLabels};
use table::{BackendEntry, RouteEntry, RouteTable};

/// A request's route and its first backend.
#[derive(Debug)]
pub(crate) struct Routed<'c> {
    pub route: &'c RouteEntry,
    /// Index of the first backend in `route.backends`.
    pub first: usize,
    pub backend: &'c BackendEntry,
    pub upstream_model: String,
}

/// The route answering `model` for `key`: 404 when none does, 403 when the key may not use it.
pub(crate) fn resolve<'c>(
    routes: &'c RouteTable,
    key: &KeyEntry,
    model: &str,
) -> Result<Routed<'c>, ProxyError> {
    let route = routes.route_for(key, model).ok_or_else(|| {
        ProxyError::new(
            ErrorKind::ModelNotFound,
            format!("The model `{model}` does not exist or you do not have access to it."),
        )
        .with_param("model")
    })?;
    route.authorize(key, model)?;
    let first = pick_backend(route, &route.backends, &[]).ok_or_else(|| {
        ProxyError::new(
            ErrorKind::Internal,
            format!("route {} has no backend with weight", route.id),
        )
    })?;
    let backend = &route.backends[first];
    let upstream_model = backend.model.clone().unwrap_or_else(|| model.to_owned());
    Ok(Routed {
        route,
        first,
        backend,
        upstream_model,
    })
}

/// One attempt made (for the next pick and the final error).
#[derive(Clone, Debug)]
pub(crate) struct Tried {
    pool: Arc<PoolEntry>,
    endpoint: Option<usize>,
    /// `pool#endpoint: class`, for the error listing every attempt.
    what: String,
    class: Option<FailureClass>,
}

/// What the next attempt knows: the attempts so far.
#[derive(Clone, Debug)]
pub(crate) struct Attempt {
    tried: Vec<Tried>,
    /// The backend `resolve` picked, for the first attempt.
    first: Option<usize>,
}

/// An answered request.
#[derive(Debug)]
pub(crate) struct Served {
    pub answer: Answer,
    /// Counts the request on its endpoint until the answer ends (streams).
    pub in_flight: InFlight,
    pub attempts: usize,
    /// `x-switchyard-backend`: `pool#endpoint`.
    pub backend: HeaderValue,
    pub provider: &'static str,
    /// The price of the model that answered (fallbacks may change it).
    pub price: Price,
}

/// A failed attempt, with every attempt of the request so far.
#[derive(Debug)]
pub(crate) struct Failed {
    pub error: ProxyError,
    pub tried: Vec<Tried>,
    /// Another endpoint of the group is in rotation and untried (a retry need not wait for
    /// the upstream's `retry-after`).
    pub elsewhere: bool,
}

/// Attempts on one group of backends: a `tower::Service` for the retry policy to drive.
#[derive(Clone)]
struct Group<'a> {
    metrics: &'a Arc<Metrics>,
    route: &'a RouteEntry,
    backends: &'a [BackendEntry],
    model: &'a str,
    incoming: &'a Incoming,
}

impl<'a> Service<Attempt> for Group<'a> {
    type Response = Served;
    type Error = Failed;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Served, Failed>> + Send + 'a>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Failed>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Attempt) -> Self::Future {
        let g = self.clone();
        Box::pin(async move { g.attempt(req).await })
    }
}

impl Group<'_> {
    async fn attempt(self, mut req: Attempt) -> Result<Served, Failed> {
        let picked = match req.first.take() {
            Some(i) if req.tried.is_empty() => Some(i),
            _ => pick_backend(self.route, self.backends, &req.tried),
        };
        let Some(bi) = picked else {
            let error = ProxyError::new(
                ErrorKind::UpstreamConnect,
                format!("route {} has no backend with weight", self.route.id),
            );
            return Err(Failed {
                error,
                tried: req.tried,
                elsewhere: false,
            });
        };
        let backend = &self.backends[bi];
        let pool = &backend.pool;
        let model = backend.model.as_deref().unwrap_or(self.model);
        let (ep, probe) = match pick_endpoint(pool, &req.tried) {
            Some((i, probe)) => (Some(i), probe),
            None if pool.endpoints.is_empty() => (None, false),
            None => {
                let error = ProxyError::new(
                    ErrorKind::UpstreamConnect,
                    format!("pool {} has no endpoint with weight", pool.id),
                );
                return Err(Failed {
                    error,
                    tried: req.tried,
                    elsewhere: false,
                });
            }
        };
        let endpoint = ep.map(|i| &pool.endpoints[i]);
        let Some(mut in_flight) = InFlight::within(
            endpoint.map(|e| &e.health),
            &pool.load,
            probe,
            pool.max_connections,
        ) else {
            // Every endpoint is at its connection cap: nothing was sent, nothing is said
            // about the endpoint's health.
            self.metrics
                .pool_saturations
                .get_or_create(&PoolLabels {
                    pool: pool.id.clone(),
                })
                .inc();
            let error = saturated(pool);
            req.tried.push(Tried {
                pool: pool.clone(),
                endpoint: ep,
                what: attempt_summary(endpoint.map_or(&pool.label, |e| &e.label), &error),
                class: error.class,
            });
            let elsewhere = self
                .backends
                .iter()
                .any(|b| b.weight > 0 && fresh(b, &req.tried));
            return Err(Failed {
                error,
                tried: req.tried,
                elsewhere,
            });
        };
        if let Some(e) = endpoint {
            e.picks.inc();
        }
        let exchange = crate::telemetry::current();
        let trace = exchange
            .as_ref()
            .and_then(crate::telemetry::Exchange::attempt);
        let result = providers::call(
            self.metrics,
            pool,
            endpoint,
            model,
            self.incoming,
            &in_flight,
            trace.as_ref(),
        )
        .await;
        if let (Some(x), Some(t)) = (&exchange, trace)
            && x.sampled()
        {
            let label = endpoint.map_or(&pool.label, |e| &e.label);
            x.attempt_done(
                t,
                crate::telemetry::trace::AttemptEnd {
                    backend: label.to_str().unwrap_or_default().to_owned(),
                    provider: pool.provider.label(),
                    model: model.to_owned(),
                    status: match &result {
                        Ok(_) => Some(200),
                        Err(e) => e.upstream_status.map(|s| s.as_u16()),
                    },
                    error: result.as_ref().err().map_or("", ProxyError::metric_label),
                },
            );
        }
        match result {
            Ok(answer) => {
                if let Some((i, e)) = ep.zip(endpoint) {
                    if matches!(answer, Answer::Stream { .. }) {
                        // A stream can still break off: its endpoint hears when it ends.
                        let (metrics, pool, probe) =
                            (self.metrics.clone(), pool.clone(), in_flight.probe);
                        in_flight.defer(crate::health::Deferred::new(move |outcome| {
                            record(&metrics, &pool, i, &pool.endpoints[i], outcome, probe);
                        }));
                    } else {
                        record(self.metrics, pool, i, e, Verdict::Success, probe);
                    }
                }
                Ok(Served {
                    answer,
                    in_flight,
                    attempts: req.tried.len() + 1,
                    backend: endpoint.map_or_else(|| pool.label.clone(), |e| e.label.clone()),
                    provider: pool.provider.label(),
                    price: pool.price_of(model).unwrap_or_default(),
                })
            }
            Err(error) => {
                if let Some((i, e)) = ep.zip(endpoint) {
                    let outcome = Verdict::of_failure(error.class, retry::retry_after(&error));
                    record(self.metrics, pool, i, e, outcome, probe);
                }
                drop(in_flight);
                let label = endpoint.map_or(&pool.label, |e| &e.label);
                req.tried.push(Tried {
                    pool: pool.clone(),
                    endpoint: ep,
                    what: attempt_summary(label, &error),
                    class: error.class,
                });
                let elsewhere = self
                    .backends
                    .iter()
                    .any(|b| b.weight > 0 && fresh(b, &req.tried));
                Err(Failed {
                    error,
                    tried: req.tried,
                    elsewhere,
                })
            }
        }
    }
}

/// The error of an attempt that found every endpoint of its pool at the connection cap: 503
/// `Overloaded`, safe to retry (nothing was sent).
fn saturated(pool: &PoolEntry) -> ProxyError {
    let mut e = ProxyError::upstream(
        http::StatusCode::SERVICE_UNAVAILABLE,
        FailureClass::Overloaded,
        format!(
            "every endpoint of pool {} has {} requests in flight (its connectionPool.maxConnections)",
            pool.id, pool.max_connections
        ),
    )
    .with_code("connection_limit");
    e.reached_upstream = false;
    e.upstream_status = None;
    e.set_retry_after(Some(HeaderValue::from_static("1")));
    e
}

/// Whether an endpoint is below its pool's connection cap.
fn has_room(pool: &PoolEntry, e: &EndpointEntry) -> bool {
    pool.max_connections == 0 || e.health.load.in_flight() < pool.max_connections
}

/// `pool#endpoint: rate_limited 429`, or `pool#endpoint: upstream_connect`.
fn attempt_summary(label: &HeaderValue, e: &ProxyError) -> String {
    let at = label.to_str().unwrap_or_default();
    match (e.kind, e.upstream_status) {
        (ErrorKind::UpstreamStatus, Some(status)) => {
            format!("{at}: {} {}", e.metric_label(), status.as_u16())
        }
        _ => format!("{at}: {}", e.code.unwrap_or(e.kind.metric_label())),
    }
}

/// Feeds an outcome to the endpoint's health; logs and counts ejections and returns.
fn record(
    metrics: &Metrics,
    pool: &PoolEntry,
    i: usize,
    e: &EndpointEntry,
    outcome: Verdict,
    probe: bool,
) {
    let ejected_peers = pool
        .endpoints
        .iter()
        .enumerate()
        .filter(|(j, p)| *j != i && p.health.ejected())
        .count();
    let Some(t) = e.health.record(
        outcome,
        &pool.outlier,
        ejected_peers,
        pool.endpoints.len(),
        probe,
    ) else {
        return;
    };
    let labels = || BackendLabels {
        pool: pool.id.clone(),
        endpoint: i.to_string(),
    };
    match t {
        Transition::Ejected { for_, ejections } => {
            metrics.endpoint_ejections.get_or_create(&labels()).inc();
            tracing::warn!(pool = %pool.id, endpoint = %e.base, seconds = for_.as_secs_f64(), ejections, outcome = ?outcome, "endpoint ejected");
        }
        Transition::Returned => {
            metrics.endpoint_returns.get_or_create(&labels()).inc();
            tracing::info!(pool = %pool.id, endpoint = %e.base, "endpoint returned to rotation after a successful probe");
        }
        Transition::EjectionRefused => {
            tracing::debug!(pool = %pool.id, endpoint = %e.base, "endpoint kept in rotation: too many of its pool are ejected");
        }
    }
}

fn tried_endpoint(tried: &[Tried], pool: &Arc<PoolEntry>, i: usize) -> bool {
    tried
        .iter()
        .any(|t| t.endpoint == Some(i) && Arc::ptr_eq(&t.pool, pool))
}

/// Whether a backend's pool has an endpoint in rotation that this request has not tried
/// (the built-in mock always has).
fn fresh(b: &BackendEntry, tried: &[Tried]) -> bool {
    b.pool.endpoints.is_empty()
        || b.pool.endpoints.iter().enumerate().any(|(i, e)| {
            e.weight > 0
                && e.health.admission() != Admission::Closed
                && has_room(&b.pool, e)
                && !tried_endpoint(tried, &b.pool, i)
        })
}

/// Whether a pool can take a request now: an endpoint in rotation with room (or the
/// built-in mock).
fn pool_available(pool: &PoolEntry) -> bool {
    pool.endpoints.is_empty()
        || pool
            .endpoints
            .iter()
            .any(|e| e.weight > 0 && e.health.admission() != Admission::Closed && has_room(pool, e))
}

/// A backend by the route's strategy: one whose pool has an untried endpoint in rotation,
/// else one with any endpoint in rotation, else any (when everything is ejected, traffic
/// still flows rather than none: Envoy's panic mode).
fn pick_backend(route: &RouteEntry, backends: &[BackendEntry], tried: &[Tried]) -> Option<usize> {
    let pick = |usable: &dyn Fn(usize) -> bool| {
        crate::health::balance::choose(route.strategy, backends, usable, &route.turn)
    };
    if !tried.is_empty()
        && let Some(i) = pick(&|i| fresh(&backends[i], tried))
    {
        return Some(i);
    }
    pick(&|i| pool_available(&backends[i].pool)).or_else(|| pick(&|_| true))
}

/// An endpoint by the pool's strategy, preferring untried ones in rotation; `true` when it
/// is a half-open endpoint's probe. `None` for the built-in mock (no endpoints).
fn pick_endpoint(pool: &Arc<PoolEntry>, tried: &[Tried]) -> Option<(usize, bool)> {
    if pool.endpoints.is_empty() {
        return None;
    }
    let eps = &pool.endpoints;
    let choose = |usable: &dyn Fn(usize) -> bool| {
        crate::health::balance::choose(pool.strategy, eps, usable, &pool.turn)
    };
    // In rotation, untried first; a half-open endpoint takes one probe at a time.
    for skip_tried in [true, false] {
        for _ in 0..eps.len() {
            let Some(i) = choose(&|i| {
                eps[i].health.admission() != Admission::Closed
                    && has_room(pool, &eps[i])
                    && !(skip_tried && tried_endpoint(tried, pool, i))
            }) else {
                break;
            };
            match eps[i].health.admission() {
                Admission::Open => return Some((i, false)),
                Admission::Probe if eps[i].health.claim_probe() => return Some((i, true)),
                // Lost the probe (or the state moved) to another request: pick again.
                _ => {}
            }
        }
    }
    // Everything is ejected or full: send anyway (a full endpoint then refuses), untried
    // and with room first.
    choose(&|i| has_room(pool, &eps[i]) && !tried_endpoint(tried, pool, i))
        .or_else(|| choose(&|i| has_room(pool, &eps[i])))
        .or_else(|| choose(&|i| !tried_endpoint(tried, pool, i)))
        .or_else(|| choose(&|_| true))
        .map(|i| (i, false))
}

/// Runs the attempts of a request: the route's backends with retries, then the fallback
/// groups the failures lead to.
pub(crate) async fn call(
    metrics: &Arc<Metrics>,
    routed: &Routed<'_>,
    incoming: &Incoming,
) -> Result<Served, ProxyError> {
    let route = routed.route;
    if let Some(r) = &route.retry {
        r.deposit();
    }
    let model = incoming.facts.model.as_str();
    let mut req = Attempt {
        tried: Vec::new(),
        first: Some(routed.first),
    };
    let mut group: Option<usize> = None;
    loop {
        let backends = group.map_or(&route.backends[..], |g| &route.fallbacks[g].backends[..]);
        let svc = Group {
            metrics,
            route,
            backends,
            model,
            incoming,
        };
        // The first attempt runs on its own: most requests need nothing more, and a retry's
        // machinery (boxed, below) stays off their path.
        let result = match svc.clone().attempt(req.clone()).await {
            Ok(served) => Ok(served),
            Err(failed) => match &route.retry {
                Some(r) => {
                    // Boxed as `dyn Send` here, where its lifetimes are concrete.
                    let retries: RetryFuture<'_> = Box::pin(retried(metrics, r, svc, req, failed));
                    retries.await
                }
                None => Err(failed),
            },
        };
        let failed = match result {
            Ok(served) => return Ok(served),
            Err(f) => f,
        };
        let next = failed.error.class.and_then(|class| {
            route
                .fallbacks
                .iter()
                .enumerate()
                .skip(group.map_or(0, |g| g + 1))
                .find(|(_, f)| f.on.contains(&class))
                .map(|(g, _)| (g, class))
        });
        let Some((g, class)) = next else {
            return Err(exhausted(failed));
        };
        metrics
            .fallbacks
            .get_or_create(&ClassLabels {
                class: class.label(),
            })
            .inc();
        tracing::info!(route = %route.id, class = class.label(), group = g, "entering fallback group");
        group = Some(g);
        req = Attempt {
            tried: failed.tried,
            first: None,
        };
    }
}

type RetryFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Served, Failed>> + Send + 'a>>;

/// The retries of a group after its first attempt failed: the `tower::retry` policy decides
/// on that failure as `Retry` would have, then `Retry` drives the attempts left.
async fn retried(
    metrics: &Arc<Metrics>,
    settings: &Arc<retry::RetrySettings>,
    svc: Group<'_>,
    mut req: Attempt,
    failed: Failed,
) -> Result<Served, Failed> {
    use tower::retry::Policy;
    let mut policy = retry::RetryPolicy::new(settings.clone(), metrics.clone());
    let mut result = Err(failed);
    match policy.retry(&mut req, &mut result) {
        None => result,
        Some(wait) => {
            wait.await;
            tower::retry::Retry::new(policy, svc).oneshot(req).await
        }
    }
}

/// The error the client gets: a transient failure after several attempts becomes one error
/// listing them, as 429 when every attempt was rate-limited, 504 when every one timed out,
/// 503 (Anthropic: 529) when every upstream was overloaded, else 502. Anything else (a 400 for the request itself) is passed on as it is.
fn exhausted(f: Failed) -> ProxyError {
    let attempts = f.tried.len().max(1);
    let mut e = if attempts > 1 && f.error.retryable() {
        let all = |c: FailureClass| f.tried.iter().all(|t| t.class == Some(c));
        let list: Vec<&str> = f.tried.iter().map(|t| t.what.as_str()).collect();
        let message = format!(
            "All {attempts} attempts failed: {}. Last error: {}",
            list.join("; "),
            f.error.message
        );
        let mut e = if all(FailureClass::RateLimited) {
            ProxyError::upstream(
                http::StatusCode::TOO_MANY_REQUESTS,
                FailureClass::RateLimited,
                message,
            )
        } else if all(FailureClass::Timeout) {
            ProxyError::new(ErrorKind::UpstreamTimeout, message)
        } else if all(FailureClass::Overloaded) {
            ProxyError::upstream(
                http::StatusCode::SERVICE_UNAVAILABLE,
                FailureClass::Overloaded,
                message,
            )
        } else {
            ProxyError::upstream(
                http::StatusCode::BAD_GATEWAY,
                FailureClass::ServerError,
                message,
            )
        };
        e.set_retry_after(f.error.retry_after().cloned());
        e.reached_upstream = f.error.reached_upstream;
        e.with_code("attempts_exhausted")
    } else {
        f.error
    };
    e.headers
        .get_or_insert_default()
        .insert(ATTEMPTS, attempts_header(attempts));
    e
}

/// How many attempts a request took.
pub(crate) const ATTEMPTS: http::HeaderName =
    http::HeaderName::from_static("x-switchyard-attempts");

/// The embedding of `text` from a route's embedding pool (see `RouteEntry::embedder`): an
/// OpenAI-style embeddings request through the pool's balancing and health, unit length.
pub(crate) async fn embed(
    metrics: &Arc<Metrics>,
    via: &RouteEntry,
    text: &str,
) -> Result<Vec<f32>, ProxyError> {
    let backend = via
        .backends
        .first()
        .ok_or_else(|| ProxyError::new(ErrorKind::Internal, "embedding route without a pool"))?;
    let model = backend.model.clone().unwrap_or_default();
    let body = serde_json::json!({"model": model, "input": text}).to_string();
    let raw = crate::llm::raw::RawObject::parse(bytes::Bytes::from(body))
        .map_err(|e| ProxyError::new(ErrorKind::Internal, format!("embedding request: {e}")))?;
    let incoming = Incoming {
        format: crate::llm::Format::OpenAiEmbeddings,
        op: crate::llm::Op::Embed,
        facts: crate::dialect::embeddings::facts(&raw)?,
        body: crate::llm::Body::Raw(raw),
        pass_headers: Vec::new(),
        cache_control: Default::default(),
    };
    let routed = Routed {
        route: via,
        first: 0,
        backend,
        upstream_model: model,
    };
    let served = call(metrics, &routed, &incoming).await?;
    let bad = |why: &str| {
        ProxyError::new(
            ErrorKind::UpstreamProtocol,
            format!("embedding pool: {why}"),
        )
    };
    let mut v: Vec<f32> = match served.answer {
        Answer::Embeddings { embeddings, .. } => embeddings
            .vectors
            .into_iter()
            .next()
            .ok_or_else(|| bad("no vector"))?,
        Answer::Raw { body, .. } => {
            #[derive(serde::Deserialize)]
            struct Item {
                embedding: Vec<f32>,
            }
            #[derive(serde::Deserialize)]
            struct List {
                data: Vec<Item>,
            }
            serde_json::from_slice::<List>(&body)
                .map_err(|e| bad(&e.to_string()))?
                .data
                .into_iter()
                .next()
                .ok_or_else(|| bad("no vector"))?
                .embedding
        }
        _ => return Err(bad("not an embeddings answer")),
    };
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if !norm.is_normal() {
        return Err(bad("a zero vector"));
    }
    v.iter_mut().for_each(|x| *x /= norm);
    Ok(v)
}

/// The `x-switchyard-attempts` value (static up to 10: no allocation per request).
pub(crate) fn attempts_header(n: usize) -> HeaderValue {
    const STATIC: [&str; 11] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10"];
    STATIC
        .get(n)
        .map_or_else(|| HeaderValue::from(n), |s| HeaderValue::from_static(s))
}
/// Which pool and endpoint answered.
pub(crate) const BACKEND: http::HeaderName = http::HeaderName::from_static("x-switchyard-backend");
