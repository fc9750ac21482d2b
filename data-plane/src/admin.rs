//! The admin listener: `/healthz` (alive), `/readyz` (has a config and the tokenizers it needs, and is not shutting down), `/metrics`.

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
        .with_state(gw)
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
