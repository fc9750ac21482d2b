//! The limits stage on the request path: what applies to this key, route and model, checked
//! and reserved in one store round trip (none when nothing applies).

use crate::config::KeyEntry;
use crate::error::ProxyError;
use crate::gateway::Gateway;
use crate::llm::{Incoming, Op};
use crate::route::Routed;

use super::{Permit, Price, Subject};

/// Checks and charges the rate limits and budget that apply (none: `None`, no store call).
/// Token counting of the prompt runs only when a token limit or a budget needs it.
pub async fn admit(
    gw: &Gateway,
    key: &KeyEntry,
    routed: &Routed<'_>,
    incoming: &Incoming,
) -> Result<Option<Permit>, ProxyError> {
    if incoming.op == Op::CountTokens {
        return Ok(None);
    }
    let pool = &routed.backend.pool;
    let model = incoming.facts.model.as_str();
    let upstream_model = routed.upstream_model.as_str();
    let price = pool.prices.get(upstream_model).copied().unwrap_or_default();
    if key.budget.is_some() && price == Price::default() {
        warn_unpriced(&pool.id, upstream_model);
    }
    let subject = Subject {
        key_id: &key.id,
        key_limits: key.limits,
        model_limits: key.model_limits_for(model),
        budget: key.budget,
        route_id: &routed.route.id,
        route_limits: routed.route.limits,
        model,
        price,
        lease: pool.timeouts.total + std::time::Duration::from_secs(60),
    };
    let Some(plan) = super::plan(&subject, super::now_ms(), || {
        crate::tokens::estimate_incoming(incoming, upstream_model)
    }) else {
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
