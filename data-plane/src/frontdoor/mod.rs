//! Front doors: the API endpoints. Each authenticates the caller, reads and checks the body
//! in its own format (parsed only as far as the policies need), hands the call to the
//! pipeline ([`crate::pipeline`]), which renders the answer once in its dialect; an error is
//! rendered here, once, in the same dialect.
//!
//! | endpoint | format | op |
//! |---|---|---|
//! | `POST /v1/chat/completions` | OpenAI Chat | generate |
//! | `POST /v1/completions` | OpenAI legacy completions | generate |
//! | `POST /v1/responses` | OpenAI Responses | generate |
//! | `POST /v1/messages` | Anthropic Messages | generate |
//! | `POST /v1/messages/count_tokens` | Anthropic Messages | count tokens |
//! | `POST /v1/embeddings` | OpenAI embeddings | embed |
//! | `GET /v1/models` | OpenAI or Anthropic list | — |

mod models;

pub(crate) use models::models;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method};

use crate::admission;
use crate::config::RuntimeConfig;
use crate::error::{Dialect, ErrorKind, Origin, ProxyError};
use crate::gateway::Gateway;
use crate::llm::raw::{ParseError, RawObject};
use crate::llm::{Format, Incoming, Op};

type Result<T, E = ProxyError> = std::result::Result<T, E>;

/// Which endpoint a request came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Door {
    Chat,
    Completions,
    Responses,
    Messages,
    CountTokens,
    Embeddings,
}

impl Door {
    pub(crate) fn format(self) -> Format {
        match self {
            Door::Chat => Format::OpenAiChat,
            Door::Completions => Format::OpenAiCompletions,
            Door::Responses => Format::OpenAiResponses,
            Door::Messages | Door::CountTokens => Format::AnthropicMessages,
            Door::Embeddings => Format::OpenAiEmbeddings,
        }
    }

    fn op(self) -> Op {
        match self {
            Door::CountTokens => Op::CountTokens,
            Door::Embeddings => Op::Embed,
            Door::Chat | Door::Completions | Door::Responses | Door::Messages => Op::Generate,
        }
    }
}

/// Seconds since the Unix epoch, signed (key expiry is compared in these).
pub(crate) fn now_unix() -> i64 {
    i64::try_from(crate::llm::now_unix()).unwrap_or(i64::MAX)
}

/// Logs an error by who caused it and renders it in a dialect.
pub(crate) fn render_error(e: ProxyError, dialect: Dialect) -> Response {
    match e.kind.origin() {
        Origin::Client => tracing::debug!(error = %e, "request rejected"),
        _ => {
            tracing::warn!(error = %crate::error::chain(&e), class = e.metric_label(), reached_upstream = e.reached_upstream, "request failed")
        }
    }
    e.into_response_in(dialect)
}

/// The running config, or 503 before the first one arrived.
pub(crate) fn ready(gw: &Gateway) -> Result<Arc<RuntimeConfig>> {
    gw.config().ok_or_else(|| {
        ProxyError::new(ErrorKind::NotReady, "The gateway has no configuration yet.")
    })
}

/// The body as a JSON object, or a precise 400.
fn parse_object(bytes: Bytes) -> Result<RawObject> {
    if bytes.is_empty() {
        return Err(ProxyError::new(
            ErrorKind::InvalidJson,
            "The request body is empty; expected a JSON object.",
        ));
    }
    RawObject::parse(bytes).map_err(|e| match e {
        ParseError::NotObject | ParseError::Duplicate(_) => {
            ProxyError::invalid(format!("Invalid request: {e}"))
        }
        ParseError::Utf8 { .. } | ParseError::Json(_) => ProxyError::new(
            ErrorKind::InvalidJson,
            format!("The request body is not valid JSON: {e}"),
        ),
    })
}

const ANTHROPIC_VERSION: HeaderName = HeaderName::from_static("anthropic-version");
const ANTHROPIC_BETA: HeaderName = HeaderName::from_static("anthropic-beta");

/// `anthropic-version` is required, as Anthropic requires it; it and `anthropic-beta` are
/// forwarded to Anthropic upstreams.
fn anthropic_headers(headers: &HeaderMap) -> Result<Vec<(HeaderName, HeaderValue)>> {
    let version = headers.get(ANTHROPIC_VERSION).ok_or_else(|| {
        ProxyError::invalid("anthropic-version: header is required").with_param("anthropic-version")
    })?;
    let valid = version.to_str().is_ok_and(|v| {
        v.len() == 10
            && v.bytes().enumerate().all(|(i, b)| {
                if i == 4 || i == 7 {
                    b == b'-'
                } else {
                    b.is_ascii_digit()
                }
            })
    });
    if !valid {
        return Err(
            ProxyError::invalid("anthropic-version: expected a date such as 2023-06-01")
                .with_param("anthropic-version"),
        );
    }
    let mut out = vec![(ANTHROPIC_VERSION, version.clone())];
    if let Some(b) = headers.get(ANTHROPIC_BETA) {
        out.push((ANTHROPIC_BETA, b.clone()));
    }
    Ok(out)
}

async fn serve(gw: &Arc<Gateway>, door: Door, headers: &HeaderMap, body: Body) -> Result<Response> {
    let cfg = ready(gw)?;
    let since = std::time::Instant::now();
    let key = crate::policy::auth::authenticate(cfg.keys(), headers, now_unix());
    if let Some(x) = crate::telemetry::current() {
        x.stage(crate::telemetry::semconv::EVENT_AUTH, since, || {
            let said = if key.is_ok() { "ok" } else { "rejected" };
            (crate::telemetry::semconv::AUTH_RESULT, said.into())
        });
    }
    let key = key?;
    let pass_headers = match door.format() {
        Format::AnthropicMessages => anthropic_headers(headers)?,
        Format::OpenAiChat
        | Format::OpenAiCompletions
        | Format::OpenAiResponses
        | Format::OpenAiEmbeddings
        | Format::Gemini
        | Format::BedrockConverse => Vec::new(),
    };
    let admission = gw.admission();
    let share = admission.key_share(&key)?;
    let body = admission::read_body(headers, body, gw.body_limit, admission.body).await?;
    let held = admission::Admitted {
        share,
        slot: admission.slot()?,
    };
    let raw = parse_object(body)?;
    let facts = (crate::dialect::codec(door.format()).client()?.facts)(&raw, door.op())?;
    let incoming = Incoming {
        format: door.format(),
        op: door.op(),
        facts,
        body: crate::llm::Body::Raw(raw),
        pass_headers,
        cache_control: crate::llm::CacheControl::of(headers),
    };
    let resp = crate::pipeline::model_call(gw, &cfg, &key, incoming).await?;
    Ok(held.hold(resp))
}

async fn handle(gw: Arc<Gateway>, door: Door, headers: HeaderMap, body: Body) -> Response {
    match serve(&gw, door, &headers, body).await {
        Ok(r) => r,
        Err(e) => render_error(e, door.format().error_dialect()),
    }
}

/// `POST /v1/chat/completions`.
pub(crate) async fn chat_completions(
    State(gw): State<Arc<Gateway>>,
    h: HeaderMap,
    b: Body,
) -> Response {
    handle(gw, Door::Chat, h, b).await
}

/// `POST /v1/completions`.
pub(crate) async fn completions(State(gw): State<Arc<Gateway>>, h: HeaderMap, b: Body) -> Response {
    handle(gw, Door::Completions, h, b).await
}

/// `POST /v1/responses`.
pub(crate) async fn responses(State(gw): State<Arc<Gateway>>, h: HeaderMap, b: Body) -> Response {
    handle(gw, Door::Responses, h, b).await
}

/// `POST /v1/messages`.
pub(crate) async fn messages(State(gw): State<Arc<Gateway>>, h: HeaderMap, b: Body) -> Response {
    handle(gw, Door::Messages, h, b).await
}

/// `POST /v1/messages/count_tokens`.
pub(crate) async fn count_tokens(
    State(gw): State<Arc<Gateway>>,
    h: HeaderMap,
    b: Body,
) -> Response {
    handle(gw, Door::CountTokens, h, b).await
}

/// `POST /v1/embeddings`.
pub(crate) async fn embeddings(State(gw): State<Arc<Gateway>>, h: HeaderMap, b: Body) -> Response {
    handle(gw, Door::Embeddings, h, b).await
}

/// Any other path under the API listener (in Anthropic's dialect under `/v1/messages`).
pub(crate) async fn not_found(method: Method, uri: http::Uri) -> Response {
    let dialect = if uri.path().starts_with("/v1/messages") {
        Dialect::Anthropic
    } else {
        Dialect::OpenAi
    };
    ProxyError::new(
        ErrorKind::UnknownEndpoint,
        format!("Unknown request URL: {method} {}.", uri.path()),
    )
    .into_response_in(dialect)
}
