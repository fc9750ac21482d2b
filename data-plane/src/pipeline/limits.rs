//! The limits stage: the rate limits and budget that apply to this key, route and model (the
//! policy is [`crate::policy::limits`]), checked and reserved in one store round trip (none
//! when nothing applies).

use crate::error::{ErrorKind, ProxyError};
use crate::gateway::Gateway;
use crate::llm::{Incoming, Op};
use crate::policy::auth::KeyEntry;
use crate::route::Routed;

use crate::policy::limits::{self, Limits, Permit, Subject};

/// Checks and charges the rate limits and budget that apply (none: `None`, no store call).
/// Token counting of the prompt runs only when a token limit or a budget needs it.
///
/// A key with a budget is refused a model its pool has no price for (a budget fails closed:
/// an unpriced model would spend nothing), on every backend the request could land on. A
/// `count_tokens` call counts against the requests-per-minute limits only.
pub(super) async fn admit(
    gw: &Gateway,
    key: &KeyEntry,
    routed: &Routed<'_>,
    incoming: &Incoming,
) -> Result<Option<Permit>, ProxyError> {
    let pool = &routed.backend.pool;
    let model = incoming.facts.model.as_str();
    let upstream_model = routed.upstream_model.as_str();
    let counting = incoming.op == Op::CountTokens;
    let budget = key.budget.filter(|_| !counting);
    if budget.is_some() {
        priced(key, routed, model)?;
    }
    let requests_only = |l: Limits| {
        if counting {
            Limits {
                rpm: l.rpm,
                ..Limits::default()
            }
        } else {
            l
        }
    };
    let subject = Subject {
        key_id: &key.id,
        key_limits: requests_only(key.limits),
        model_limits: key
            .model_limits_for(model)
            .into_iter()
            .map(|(i, l)| (i, requests_only(l)))
            .collect(),
        budget,
        route_id: &routed.route.id,
        route_limits: requests_only(routed.route.limits),
        // Counters are named by a configured model name, never by whatever the client sent.
        model: routed.route.model_label(model),
        price: pool.price_of(upstream_model).unwrap_or_default(),
        lease: pool.timeouts.total + std::time::Duration::from_secs(60),
    };
    let Some(plan) = limits::plan(&subject, limits::now_ms(), || {
        crate::tokens::estimate_incoming(incoming, upstream_model)
    }) else {
        return Ok(None);
    };
    gw.limiter.admit(plan).await.map(Some)
}

/// Said once per key, pool and model (a client retrying must not flood the log), so the
/// operator can add the prices.
fn warn_unpriced(key: &str, pool: &str, model: &str) {
    static SEEN: std::sync::Mutex<Vec<(String, String, String)>> =
        std::sync::Mutex::new(Vec::new());
    let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    if seen.len() < 1024
        && !seen
            .iter()
            .any(|(k, p, m)| k == key && p == pool && m == model)
    {
        seen.push((key.to_owned(), pool.to_owned(), model.to_owned()));
        tracing::warn!(
            key,
            pool,
            model,
            "a key with a budget asked for a model without prices in its ProviderPool: refused (list the model with its prices, or set the pool's defaultPrice)"
        );
    }
}

/// Every backend a request may be sent to (the first pick, its group, the fallbacks) prices
/// the model it would send there; else 403 naming the model (a budget cannot count what
/// has no price).
fn priced(key: &KeyEntry, routed: &Routed<'_>, model: &str) -> Result<(), ProxyError> {
    let route = routed.route;
    let backends = route
        .backends
        .iter()
        .chain(route.fallbacks.iter().flat_map(|f| &f.backends));
    for b in backends {
        let upstream = b.model.as_deref().unwrap_or(model);
        if b.pool.price_of(upstream).is_none() {
            warn_unpriced(&key.id, &b.pool.id, route.model_label(upstream));
            return Err(ProxyError::new(
                ErrorKind::ModelNotAllowed,
                format!(
                    "This API key has a budget, and the model `{}` has no price configured: it cannot be used with this key.",
                    routed.route.model_label(model),
                ),
            )
            .with_param("model")
            .with_code("model_not_priced"));
        }
    }
    Ok(())
}
