//! The pipeline: steps 7 to 12 of the request path (see `stack`'s map), one model call
//! after its front door decoded it — route, limits, guardrails' request phase, cache,
//! attempts, and the response rendered through the guardrails' response phase
//! ([`crate::render`]).

mod limits;

use std::sync::Arc;
use std::time::Instant;

use axum::response::Response;
use http::{HeaderName, HeaderValue};

use crate::cache::key::Plan;
use crate::cache::{Fill, Flight, Lookup};
use crate::config::RuntimeConfig;
use crate::error::ProxyError;
use crate::gateway::Gateway;
use crate::llm::Incoming;
use crate::policy::auth::KeyEntry;
use crate::policy::guard::enforce::{self, Decisions, ResponsePhase};
use crate::policy::guard::webhook;
use crate::render;
use crate::route;
use crate::telemetry::CacheResult;
use crate::telemetry::semconv;

/// What the guardrails did to a request (`ns/name=redact, ...`).
const GUARDRAILS: HeaderName = HeaderName::from_static("x-switchyard-guardrails");

/// Steps 7 to 12: one model call, after its front door decoded it.
pub(crate) async fn model_call(
    gw: &Arc<Gateway>,
    cfg: &RuntimeConfig,
    key: &KeyEntry,
    mut incoming: Incoming,
) -> Result<Response, ProxyError> {
    let exchange = crate::telemetry::current();
    let routed = route::resolve(cfg.routes(), key, &incoming.facts.model)?;
    if let Some(a) = &exchange {
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
    if let Some(a) = &exchange {
        let decision = match &admitted {
            Ok(Some(_)) => "admitted",
            Ok(None) => "none",
            Err(_) => "rejected",
        };
        a.spans(|s| s.limits = decision);
        a.stage(semconv::EVENT_LIMITS, since, || {
            (semconv::LIMIT_DECISION, decision.into())
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
        if let Some(a) = &exchange {
            a.stage(semconv::EVENT_GUARDRAILS, since, || {
                let said = match (&checked, decisions.header()) {
                    (Err(_), _) => "blocked".to_owned(),
                    (Ok(_), Some(v)) => v.to_str().unwrap_or_default().to_owned(),
                    (Ok(_), None) => "pass".to_owned(),
                };
                (semconv::GUARDRAILS, said.into())
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
    if let Some(a) = exchange.as_ref().filter(|a| a.wants_text()) {
        // As it goes upstream: after the request phase redacted it.
        a.prompt(enforce::prompt_text(&incoming));
    }
    // 10. The response cache.
    let mut fill = None;
    let mut cached = None;
    let mut leader = None;
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
            Plan::Use(key) => match Box::pin(coalesced(
                gw,
                cache,
                &routed,
                policy,
                &key,
                !no_store,
                &mut leader,
            ))
            .await
            {
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
                    if let Some(a) = &exchange {
                        a.cache(outcome);
                        a.stage(semconv::EVENT_CACHE, since, || {
                            (semconv::CACHE_RESULT, outcome.name().into())
                        });
                    }
                    return Box::pin(answer_from_cache(
                        gw,
                        &incoming,
                        &entry,
                        similarity,
                        response_phase,
                        decisions,
                        exchange,
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
        if let Some(a) = &exchange {
            a.cache(outcome);
            a.stage(semconv::EVENT_CACHE, since, || {
                (semconv::CACHE_RESULT, outcome.name().into())
            });
        }
        cached = Some(outcome);
    }
    let mut served = match route::call(&gw.metrics, &routed, &incoming).await {
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
        store(
            cache,
            policy,
            fill,
            incoming.format,
            &mut served.answer,
            leader,
        );
    }
    let (attempts, backend) = (served.attempts, served.backend);
    if let Some(a) = &exchange {
        a.served(
            backend.to_str().unwrap_or_default(),
            served.provider,
            served.price,
        );
    }
    let resp = render::respond(
        gw,
        served.provider,
        incoming.format,
        &incoming.facts,
        served.answer,
        render::Watchers {
            in_flight: Some(served.in_flight),
            permit,
            guard: response_phase,
            exchange: exchange.clone(),
        },
        &mut decisions,
    )
    .await;
    let mut resp = guardrails_said(resp, &decisions, exchange.as_ref())?;
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
            let made = route::embed(&gw.metrics, via, &probe.text).await;
            cache.embedded(&probe.text, start, made)
        }
        None => cache.embed(&probe.text).await,
    };
    match vector {
        Some(v) => cache.nearest(policy, key, v).await,
        None => Lookup::Bypass,
    }
}

/// [`lookup`], one flight per key: when an identical request missed in this proxy and is on
/// its way upstream, this one waits for it (at most the pool's total timeout) and looks
/// again; the first to miss leads (`leader`, when it will store its answer) and releases the
/// others once its answer is stored or it failed.
async fn coalesced(
    gw: &Arc<Gateway>,
    cache: &Arc<crate::cache::Cache>,
    routed: &route::Routed<'_>,
    policy: &crate::cache::Policy,
    key: &crate::cache::key::Key,
    stores: bool,
    leader: &mut Option<crate::cache::Leader>,
) -> Lookup {
    let found = lookup(gw, cache, routed, policy, key).await;
    if !stores || !matches!(found, Lookup::Miss { .. }) {
        return found;
    }
    match cache.join(&key.exact) {
        Flight::Leader(l) => {
            *leader = Some(l);
            found
        }
        Flight::Follower(rx) => {
            Flight::wait(rx, routed.backend.pool.timeouts.total).await;
            match cache.exact(policy, key).await {
                hit @ Lookup::Hit { .. } => hit,
                // The leader failed, or its answer was not stored: this one goes upstream.
                Lookup::Miss { .. } | Lookup::Bypass => found,
            }
        }
    }
}

/// What the guardrails did, in `x-switchyard-guardrails` and in the audit record (an error
/// response too).
fn guardrails_said(
    resp: Result<Response, ProxyError>,
    decisions: &Decisions,
    exchange: Option<&crate::telemetry::Exchange>,
) -> Result<Response, ProxyError> {
    let header = decisions.header();
    if let (Some(a), Some(v)) = (exchange, &header) {
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
    exchange: Option<crate::telemetry::Exchange>,
) -> Result<Response, ProxyError> {
    let answer = if incoming.facts.stream {
        let decode = crate::dialect::codec(incoming.format)
            .generation()?
            .decode_answer
            .ok_or_else(|| {
                ProxyError::new(
                    crate::error::ErrorKind::Internal,
                    "this API's answers are not replayed as streams",
                )
            })?;
        let r = decode(&entry.body)?;
        crate::providers::Answer::Replay(crate::cache::replay(&r))
    } else {
        crate::providers::Answer::Raw {
            body: entry.body.clone(),
            usage: None,
        }
    };
    if let Some(a) = &exchange {
        a.served("cache", "cache", crate::llm::Price::default());
    }
    let resp = render::respond(
        gw,
        "cache",
        incoming.format,
        &incoming.facts,
        answer,
        render::Watchers {
            guard: response_phase,
            exchange: exchange.clone(),
            ..render::Watchers::default()
        },
        &mut decisions,
    )
    .await;
    let mut resp = guardrails_said(resp, &decisions, exchange.as_ref())?;
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
    leader: Option<crate::cache::Leader>,
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
            if let Ok(b) = render::render(format, response, echo.as_deref()) {
                cache.put(policy, fill, entry(b, response.usage));
            }
        }
        Answer::Stream { record, .. } => {
            let (cache, policy) = (cache.clone(), policy.clone());
            *record = Some(Box::new(crate::cache::Record::new(move |r| {
                // Requests waiting for this one look again once it is stored.
                let _leader = leader;
                if let Ok(body) = render::render(format, &r, None) {
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
