//! The admin listener: `/healthz` (alive), `/readyz` (has a config and the tokenizers it
//! needs, and is not shutting down), `/metrics`, and `DELETE /cache?route=ns/name[&scope=...]`
//! (purges a route's cached answers, or one scope's, in this proxy's memory and in the
//! fleet's Redis).
//!
//! Reads are open to whoever reaches the port (the chart's NetworkPolicy admits the release
//! namespace and the scrapers named); a change needs `Authorization: Bearer <token>`, the
//! token read from `--admin-token-file` (a Secret) at each request, so a rotated Secret
//! takes effect at once. Without the file, changes are refused.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use http::{StatusCode, header};

use crate::gateway::Gateway;

pub(crate) fn router(gw: Arc<Gateway>, token_file: Option<std::path::PathBuf>) -> Router {
    let token = Arc::new(token_file);
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route(
            "/cache",
            axum::routing::delete(purge_cache).layer(axum::middleware::from_fn(
                move |req, next| authorized(token.clone(), req, next),
            )),
        )
        .with_state(gw)
}

/// Lets a change through only with the admin token.
async fn authorized(
    token_file: Arc<Option<std::path::PathBuf>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let Some(path) = token_file.as_ref() else {
        return (
            StatusCode::FORBIDDEN,
            "changes on the admin port are off: start the data plane with --admin-token-file\n",
        )
            .into_response();
    };
    let expected = match tokio::fs::read_to_string(path).await {
        Ok(t) if t.trim().len() >= 16 => t,
        Ok(_) => {
            tracing::error!(file = %path.display(), "the admin token is shorter than 16 characters: changes refused");
            return (StatusCode::FORBIDDEN, "the admin token is not usable\n").into_response();
        }
        Err(e) => {
            tracing::error!(file = %path.display(), error = %e, "reading the admin token failed: changes refused");
            return (StatusCode::FORBIDDEN, "the admin token is not readable\n").into_response();
        }
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    // Compared as hashes: the time taken says nothing about how much of the token matched.
    use sha2::Digest;
    if sha2::Sha256::digest(presented.trim()) != sha2::Sha256::digest(expected.trim()) {
        tracing::warn!(path = %req.uri().path(), "admin change refused: missing or wrong token");
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "a change on the admin port needs Authorization: Bearer <admin token>\n",
        )
            .into_response();
    }
    next.run(req).await
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
            format!(
                "purged this proxy's memory; Redis failed: {}\n",
                crate::error::chain(&e)
            ),
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
