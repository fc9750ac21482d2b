//! `GET /v1/models`: the models the presented key may use, as OpenAI lists them, or as
//! Anthropic does for Anthropic clients (who send `anthropic-version`).

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::HeaderMap;
use serde_json::{Value, json};

use super::{now_unix, ready, render_error};
use crate::error::Dialect;
use crate::gateway::Gateway;

pub(crate) async fn models(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    let anthropic = headers.contains_key("anthropic-version");
    let dialect = if anthropic {
        Dialect::Anthropic
    } else {
        Dialect::OpenAi
    };
    let result = (|| {
        let cfg = ready(&gw)?;
        let key = crate::policy::auth::authenticate(cfg.keys(), &headers, now_unix())?;
        let ids = cfg.routes().models_for(&key);
        let body = if anthropic {
            let data: Vec<Value> = ids
                .iter()
                .map(|id| json!({"type": "model", "id": id, "display_name": id, "created_at": "1970-01-01T00:00:00Z"}))
                .collect();
            json!({"data": data, "has_more": false, "first_id": ids.first(), "last_id": ids.last()})
        } else {
            let data: Vec<Value> = ids
                .iter()
                .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "switchyard"}))
                .collect();
            json!({"object": "list", "data": data})
        };
        Ok::<_, crate::error::ProxyError>(axum::Json(body).into_response())
    })();
    result.unwrap_or_else(|e| render_error(e, dialect))
}
