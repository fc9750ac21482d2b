//! Routing: the client-facing model names a route; the route's weighted backends name a pool
//! and the upstream model. Balancing over the pool's endpoints is the pool's
//! (`config::PoolEntry::pick`); health, retries and fallback will live here.

use crate::config::{BackendEntry, KeyEntry, RouteEntry, RuntimeConfig};
use crate::error::{ErrorKind, ProxyError};

/// A request's route, backend and the model name sent upstream.
#[derive(Debug)]
pub struct Routed<'c> {
    pub route: &'c RouteEntry,
    pub backend: &'c BackendEntry,
    pub upstream_model: String,
}

/// The route answering `model` for `key`: 404 when none does, 403 when the key may not use it.
pub fn resolve<'c>(
    cfg: &'c RuntimeConfig,
    key: &KeyEntry,
    model: &str,
) -> Result<Routed<'c>, ProxyError> {
    let route = cfg.route(model).ok_or_else(|| {
        ProxyError::new(
            ErrorKind::ModelNotFound,
            format!("The model `{model}` does not exist or you do not have access to it."),
        )
        .with_param("model")
    })?;
    crate::policy::auth::authorize(key, route, model)?;
    let backend = route.pick().ok_or_else(|| {
        ProxyError::new(
            ErrorKind::Internal,
            format!("route {} has no backend with weight", route.id),
        )
    })?;
    let upstream_model = backend.model.clone().unwrap_or_else(|| model.to_owned());
    Ok(Routed {
        route,
        backend,
        upstream_model,
    })
}
