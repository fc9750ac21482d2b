//! The admin listener: `/healthz` (alive), `/readyz` (has a config and the tokenizers it needs, and is not shutting down), `/metrics`,
//! and `DELETE /cache?route=ns/name[&scope=key=ns/key]` (purges a route's cached answers, or
//! one scope's, in this proxy's memory and in the fleet's Redis).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use http::{StatusCode, header};

use crate::gateway::Gateway;

pub fn router(gw: Arc<Gateway>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/cache", axum::routing::delete(purge_cache))
        .with_state(gw)
}

#[derive(serde::Deserialize)]
struct Purge {
    route: String,
    scope: Option<String>,
}

async fn purge_cache(
    State(gw): State<Arc<Gateway>>,
    query: Result<axum::extract::Query<Purge>, axum::extract::rejection::QueryRejection>,
) -> impl IntoResponse {
    let Ok(axum::extract::Query(q)) = query else {
        return (
            StatusCode::BAD_REQUEST,
            "expected ?route=namespace/name[&scope=...]".to_owned(),
        );
    };
    let Some(cache) = gw.cache() else {
        return (StatusCode::NOT_FOUND, "no response cache".to_owned());
    };
    match cache.purge(&q.route, q.scope.as_deref()).await {
        Ok(n) => {
            tracing::info!(route = %q.route, scope = ?q.scope, redis_deleted = n, "cache purged");
            (
                StatusCode::OK,
                format!("purged; {n} entries deleted from Redis\n"),
            )
        }
        Err(e) => (
            StatusCode::BAD_GATEWAY,
            format!("purged this proxy's memory; Redis failed: {e}\n"),
        ),
    }
}

async fn readyz(State(gw): State<Arc<Gateway>>) -> impl IntoResponse {
    if gw.is_draining() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: shutting down".to_owned(),
        );
    }
    match gw.version() {
        Some(v) if gw.is_ready() => (StatusCode::OK, format!("ready: config {v}")),
        Some(v) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: config {v} is loading its tokenizers"),
        ),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no config yet".to_owned(),
        ),
    }
}

async fn metrics(State(gw): State<Arc<Gateway>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        gw.metrics.encode(),
    )
}
