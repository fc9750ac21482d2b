//! The mock LLM upstream (`switchyard-mock-llm`). It speaks the wire formats of OpenAI (chat,
//! legacy completions, Responses, embeddings; Azure deployment paths too), Anthropic
//! (messages, count_tokens), Gemini (generateContent, streamGenerateContent, embedContent,
//! batchEmbedContents, countTokens) and Bedrock (Converse, ConverseStream in AWS event-stream
//! framing, CountTokens; SigV4 signatures verified), streaming and errors included. Answers
//! start from fixtures transcribed from each provider's documented examples (`tests/fixtures`).
//!
//! What a request gets is scripted by knobs, per request, from `x-mock-*` headers or from
//! `mock.<knob>=<value>` words anywhere in the prompt (so they survive the gateway, which never
//! forwards client headers):
//!
//! | knob | effect |
//! |---|---|
//! | `latency_ms` | wait before the response head |
//! | `chunks` | number of text chunks (default 8); one token each |
//! | `interval_ms` | wait between stream events |
//! | `status` | answer with this error status, in the provider's error format |
//! | `retry_after` | `retry-after` header value (with `status=429`) |
//! | `disconnect_after` | break the connection after this many stream events |
//! | `malformed` | `1`: invalid JSON body, or a garbage stream event |
//! | `error_event` | `1`: the stream ends with the provider's own error event (overloaded) |
//! | `echo` | `1`: the text is the prompt with the knobs removed |
//! | `tools` | `N`: call N tools in parallel (the request's tools, in turn) |
//! | `thinking` | `1`: think first (a signed thinking block) |
//! | `stop` | `length`: stop at the output cap |
//! | `cache` | `1`: report prompt-cache reads and writes in usage |
//!
//! A request that forces a named tool gets that tool called, as a model would.

mod anthropic;
mod bedrock;
mod gemini;
mod openai;
mod script;

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;

pub use bedrock::{MOCK_AWS_ACCESS_KEY_ID, MOCK_AWS_SECRET_ACCESS_KEY};
use script::Script;

type Body = BoxBody<Bytes, std::io::Error>;

/// What the mock received, for assertions.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: HashMap<String, String>,
    pub body: Value,
}

/// Faults a mock instance injects into every model call (an endpoint that fails, is slow or
/// rate-limits, whatever the request says); `status` and `latency_ms` apply to its model list
/// (`GET /v1/models`, what health checks ask) too. Set with `PUT /_mock/faults` (JSON) or
/// [`MockState::set_faults`].
#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct Faults {
    /// Answer this error status, in the provider's format.
    #[serde(default)]
    pub status: Option<u16>,
    /// Share of requests `status` applies to, 0 to 1 (default: all).
    #[serde(default)]
    pub rate: Option<f64>,
    /// `retry-after` sent with `status`.
    #[serde(default)]
    pub retry_after: Option<String>,
    /// Extra latency before anything is answered.
    #[serde(default)]
    pub latency_ms: u64,
    /// Prompts over this many tokens get the provider's context-window error.
    #[serde(default)]
    pub context_window: Option<u64>,
    /// Streams break after this many chunks.
    #[serde(default)]
    pub disconnect_after: Option<usize>,
}

/// Shared state of a running mock.
#[derive(Debug, Default)]
pub struct MockState {
    recorded: Mutex<VecDeque<Recorded>>,
    /// When false, requests are not recorded (benchmarks).
    pub record: bool,
    faults: Mutex<Faults>,
    /// Model calls received (faulted ones included).
    pub calls: std::sync::atomic::AtomicU64,
    /// Model calls whose client went away before the answer ended.
    pub cancelled: std::sync::atomic::AtomicU64,
    /// `GET /v1/models` requests (health checks).
    pub model_lists: std::sync::atomic::AtomicU64,
}

impl MockState {
    pub fn new(record: bool) -> Self {
        Self {
            record,
            ..Default::default()
        }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.recorded
            .lock()
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub fn set_faults(&self, f: Faults) {
        if let Ok(mut faults) = self.faults.lock() {
            *faults = f;
        }
    }

    pub fn faults(&self) -> Faults {
        self.faults.lock().map(|f| f.clone()).unwrap_or_default()
    }

    /// Model calls received so far.
    pub fn call_count(&self) -> u64 {
        self.calls.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn clear(&self) {
        if let Ok(mut r) = self.recorded.lock() {
            r.clear();
        }
    }
}

/// A mock running in this process.
#[derive(Debug)]
pub struct MockHandle {
    pub addr: SocketAddr,
    pub state: Arc<MockState>,
    task: tokio::task::JoinHandle<()>,
}

impl MockHandle {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for MockHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a mock on `addr` (use port 0 for a free one) in the current runtime.
pub async fn spawn(addr: SocketAddr, record: bool) -> std::io::Result<MockHandle> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let state = Arc::new(MockState::new(record));
    let task = tokio::spawn(serve(listener, state.clone()));
    Ok(MockHandle { addr, state, task })
}

/// Serves connections forever.
pub async fn serve(listener: TcpListener, state: Arc<MockState>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(state.clone(), req));
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

/// The scripting knobs of one request.
#[derive(Clone, Debug, Default)]
pub(crate) struct Knobs {
    pub(crate) latency_ms: u64,
    pub(crate) chunks: Option<usize>,
    pub(crate) interval_ms: u64,
    pub(crate) status: Option<u16>,
    pub(crate) retry_after: Option<String>,
    pub(crate) disconnect_after: Option<usize>,
    pub(crate) malformed: bool,
    pub(crate) error_event: bool,
    pub(crate) echo: bool,
    pub(crate) tools: usize,
    pub(crate) thinking: bool,
    pub(crate) stop_length: bool,
    pub(crate) cache: bool,
}

impl Knobs {
    fn set(&mut self, k: &str, v: &str) {
        let on = v == "1" || v == "true";
        match k {
            "latency_ms" => self.latency_ms = v.parse().unwrap_or(0),
            "chunks" => self.chunks = v.parse().ok(),
            "interval_ms" => self.interval_ms = v.parse().unwrap_or(0),
            "status" => self.status = v.parse().ok(),
            "retry_after" => self.retry_after = Some(v.to_owned()),
            "disconnect_after" => self.disconnect_after = v.parse().ok(),
            "malformed" => self.malformed = on,
            "error_event" => self.error_event = on,
            "echo" => self.echo = on,
            "tools" => self.tools = v.parse().unwrap_or(0),
            "thinking" => self.thinking = on,
            "stop" => self.stop_length = v == "length",
            "cache" => self.cache = on,
            _ => {}
        }
    }

    fn from_request(headers: &http::HeaderMap, prompt: &str) -> Self {
        let mut k = Knobs::default();
        for (name, value) in headers {
            if let (Some(knob), Ok(v)) = (name.as_str().strip_prefix("x-mock-"), value.to_str()) {
                k.set(&knob.replace('-', "_"), v);
            }
        }
        // Jump between occurrences instead of splitting the whole prompt into words: the
        // bench's direct path runs through here on every request.
        for (at, _) in prompt.match_indices("mock.") {
            let starts_word = prompt[..at]
                .chars()
                .next_back()
                .is_none_or(|c| c.is_whitespace() || c == '"' || c == ',');
            if !starts_word {
                continue;
            }
            let rest = &prompt[at + "mock.".len()..];
            let word = rest
                .split(char::is_whitespace)
                .next()
                .unwrap_or("")
                .trim_matches(|c: char| c == '"' || c == ',');
            if let Some((key, v)) = word.split_once('=') {
                k.set(key, v);
            }
        }
        k
    }
}

/// Which API a request calls.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Api {
    OpenAiChat,
    OpenAiCompletions,
    OpenAiResponses,
    OpenAiEmbeddings,
    Anthropic,
    AnthropicCount,
    Gemini { model: String, stream: bool },
    GeminiEmbed { batch: bool },
    GeminiCount,
    Bedrock { model: String, stream: bool },
    BedrockCount,
}

impl Api {
    fn of(path: &str) -> Option<Self> {
        if let Some((_, method)) = path.rsplit_once(':')
            && path.contains("/models/")
        {
            let model = path
                .rsplit_once("/models/")
                .map(|(_, m)| m.split(':').next().unwrap_or(m).to_owned())
                .unwrap_or_default();
            return Some(match method {
                "generateContent" => Api::Gemini {
                    model,
                    stream: false,
                },
                "streamGenerateContent" => Api::Gemini {
                    model,
                    stream: true,
                },
                "embedContent" => Api::GeminiEmbed { batch: false },
                "batchEmbedContents" => Api::GeminiEmbed { batch: true },
                "countTokens" => Api::GeminiCount,
                _ => return None,
            });
        }
        if let Some(rest) = path.strip_prefix("/model/") {
            let (model, op) = rest.rsplit_once('/')?;
            let model = bedrock::decode_path(model);
            return Some(match op {
                "converse" => Api::Bedrock {
                    model,
                    stream: false,
                },
                "converse-stream" => Api::Bedrock {
                    model,
                    stream: true,
                },
                "count-tokens" => Api::BedrockCount,
                _ => return None,
            });
        }
        Some(if path.ends_with("/chat/completions") {
            Api::OpenAiChat
        } else if path.ends_with("/completions") {
            Api::OpenAiCompletions
        } else if path.ends_with("/responses") {
            Api::OpenAiResponses
        } else if path.ends_with("/embeddings") {
            Api::OpenAiEmbeddings
        } else if path.ends_with("/messages/count_tokens") {
            Api::AnthropicCount
        } else if path.ends_with("/messages") {
            Api::Anthropic
        } else {
            return None;
        })
    }

    fn family(&self) -> Family {
        match self {
            Api::Anthropic | Api::AnthropicCount => Family::Anthropic,
            Api::Gemini { .. } | Api::GeminiEmbed { .. } | Api::GeminiCount => Family::Gemini,
            Api::Bedrock { .. } | Api::BedrockCount => Family::Bedrock,
            _ => Family::OpenAi,
        }
    }
}

/// Whose error and auth conventions apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Family {
    OpenAi,
    Anthropic,
    Gemini,
    Bedrock,
}

pub(crate) fn full(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(
            Full::new(body.into())
                .map_err(|e: Infallible| match e {})
                .boxed(),
        )
        .unwrap_or_default()
}

pub(crate) fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    full(status, "application/json", v.to_string())
}

/// A fixture, parsed once per process (the bench's direct path must not pay a parse per
/// request); callers get their own copy to fill in.
pub(crate) fn fixture(text: &'static str) -> Value {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static PARSED: OnceLock<Mutex<HashMap<usize, Value>>> = OnceLock::new();
    let mut parsed = PARSED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    parsed
        .entry(text.as_ptr() as usize)
        .or_insert_with(|| {
            serde_json::from_str(text).unwrap_or_else(|e| panic!("fixture does not parse: {e}"))
        })
        .clone()
}

/// An error answer in a family's format.
pub(crate) fn error_response(
    family: Family,
    status: u16,
    message: &str,
    retry_after: Option<&str>,
) -> Response<Body> {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = match family {
        Family::Anthropic => json_response(code, &anthropic::error(status, message)),
        Family::Gemini => json_response(code, &gemini::error(status, message)),
        Family::Bedrock => bedrock::error_response(status, message),
        Family::OpenAi => json_response(code, &openai::error(status, message)),
    };
    if let Some(ra) = retry_after.and_then(|v| http::HeaderValue::from_str(v).ok()) {
        r.headers_mut().insert(header::RETRY_AFTER, ra);
    }
    r
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A stream of pre-built events, paced by `interval_ms`, breaking after `disconnect_after`.
pub(crate) fn stream_response(
    events: Vec<Bytes>,
    knobs: &Knobs,
    content_type: &'static str,
) -> Response<Body> {
    let interval = Duration::from_millis(knobs.interval_ms);
    let disconnect_after = knobs.disconnect_after;
    let stream = futures_util::stream::iter(events.into_iter().enumerate()).then(
        move |(i, ev)| async move {
            if i > 0 && !interval.is_zero() {
                tokio::time::sleep(interval).await;
            }
            if disconnect_after.is_some_and(|n| i >= n) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "mock disconnect",
                ));
            }
            Ok(Frame::data(ev))
        },
    );
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CACHE_CONTROL, "no-cache")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .unwrap_or_default()
}

fn record(state: &MockState, parts: &http::request::Parts, body: &Value) {
    if !state.record {
        return;
    }
    if let Ok(mut r) = state.recorded.lock() {
        if r.len() >= 256 {
            r.pop_front();
        }
        r.push_back(Recorded {
            method: parts.method.to_string(),
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().unwrap_or_default().to_owned(),
            headers: parts
                .headers
                .iter()
                .filter_map(|(k, v)| {
                    v.to_str()
                        .ok()
                        .map(|v| (k.as_str().to_owned(), v.to_owned()))
                })
                .collect(),
            body: body.clone(),
        });
    }
}

async fn handle(
    state: Arc<MockState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    if parts.method == Method::GET {
        return Ok(match path.as_str() {
            "/healthz" => full(StatusCode::OK, "text/plain", "ok"),
            "/v1/models" => {
                state
                    .model_lists
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let faults = state.faults();
                if faults.latency_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
                }
                match faults.status {
                    Some(status) if faults.rate.is_none_or(|r| fastrand::f64() < r) => {
                        json_response(
                            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
                            &openai::error(status, "injected fault"),
                        )
                    }
                    _ => json_response(
                        StatusCode::OK,
                        &json!({"object": "list", "data": [{"id": "mock-gpt", "object": "model", "created": 0, "owned_by": "mock"}]}),
                    ),
                }
            }
            "/_mock/requests" => {
                let list: Vec<Value> = state
                    .requests()
                    .into_iter()
                    .map(|r| json!({"method": r.method, "path": r.path, "query": r.query, "headers": r.headers, "body": r.body}))
                    .collect();
                json_response(StatusCode::OK, &Value::Array(list))
            }
            _ => json_response(StatusCode::NOT_FOUND, &openai::error(404, "not found")),
        });
    }
    if parts.method == Method::DELETE && path == "/_mock/requests" {
        state.clear();
        return Ok(full(StatusCode::NO_CONTENT, "text/plain", ""));
    }
    if parts.method == Method::PUT && path == "/_mock/faults" {
        let bytes = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        return Ok(match serde_json::from_slice::<Faults>(&bytes) {
            Ok(f) => {
                state.set_faults(f);
                full(StatusCode::NO_CONTENT, "text/plain", "")
            }
            Err(e) => full(StatusCode::BAD_REQUEST, "text/plain", e.to_string()),
        });
    }
    let Some(api) = Api::of(&path) else {
        return Ok(json_response(
            StatusCode::NOT_FOUND,
            &openai::error(404, "unknown path"),
        ));
    };
    let family = api.family();
    let bytes = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Ok(full(
                StatusCode::BAD_REQUEST,
                "text/plain",
                "body read failed",
            ));
        }
    };
    if family == Family::Bedrock
        && let Err((status, kind, message)) = bedrock::verify_signature(&parts, &bytes)
    {
        return Ok(bedrock::error_with_type(status, kind, &message));
    }
    if family == Family::Gemini && !gemini::authorized(&parts) {
        return Ok(json_response(
            StatusCode::BAD_REQUEST,
            &fixture(include_str!("../../fixtures/gemini/error.json")),
        ));
    }
    let parsed: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => {
            return Ok(error_response(
                family,
                400,
                &format!("invalid JSON: {e}"),
                None,
            ));
        }
    };
    record(&state, &parts, &parsed);
    state
        .calls
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let prompt = script::prompt_text(&api, &parsed);
    let mut knobs = Knobs::from_request(&parts.headers, &prompt);
    let faults = state.faults();
    // Counts the call as cancelled unless it reaches its end.
    let mut watch = CancelWatch {
        state: state.clone(),
        done: false,
    };
    if faults.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
    }
    if let Some(status) = faults.status
        && faults.rate.is_none_or(|r| fastrand::f64() < r)
    {
        knobs.status = Some(status);
        knobs.retry_after = faults.retry_after.clone().or(knobs.retry_after);
    }
    if faults.disconnect_after.is_some() {
        knobs.disconnect_after = faults.disconnect_after;
    }
    if knobs.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(knobs.latency_ms)).await;
    }
    watch.done = true;
    if let Some(limit) = faults.context_window {
        let tokens = (prompt.len() as u64).div_ceil(4).max(1);
        if tokens > limit {
            return Ok(context_window_error(family, tokens, limit));
        }
    }
    if let Some(status) = knobs.status {
        let message = if status == 401 && family == Family::OpenAi {
            openai::rejected_key_message(&parts.headers)
        } else {
            "mock error requested".to_owned()
        };
        return Ok(error_response(
            family,
            status,
            &message,
            knobs.retry_after.as_deref(),
        ));
    }
    let model = parsed
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("mock-gpt")
        .to_owned();
    if model.is_empty() && family != Family::Gemini && family != Family::Bedrock {
        return Ok(error_response(family, 400, "model is required", None));
    }
    let stream = parsed
        .get("stream")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let script = Script::new(&api, &parsed, &prompt, &knobs);
    Ok(match api {
        Api::OpenAiEmbeddings => openai::embeddings(&parsed, &model, &knobs),
        Api::OpenAiChat if stream => openai::chat_stream(&parsed, &model, &script, &knobs),
        Api::OpenAiChat => openai::chat(&model, &script, &knobs),
        Api::OpenAiCompletions if stream => {
            openai::completion_stream(&parsed, &model, &script, &knobs)
        }
        Api::OpenAiCompletions => openai::completion(&model, &script, &knobs),
        Api::OpenAiResponses if stream => openai::responses_stream(&model, &script, &knobs),
        Api::OpenAiResponses => openai::responses(&model, &script, &knobs),
        Api::Anthropic if stream => anthropic::stream(&model, &script, &knobs),
        Api::Anthropic => anthropic::message(&model, &script, &knobs),
        Api::AnthropicCount => anthropic::count(&script),
        Api::Gemini {
            model,
            stream: true,
        } => gemini::stream(&model, &script, &knobs),
        Api::Gemini { model, .. } => gemini::generate(&model, &script, &knobs),
        Api::GeminiEmbed { batch } => gemini::embed(&parsed, batch, &knobs),
        Api::GeminiCount => gemini::count(&script),
        Api::Bedrock { stream: true, .. } => bedrock::stream(&script, &knobs),
        Api::Bedrock { .. } => bedrock::converse(&script, &knobs),
        Api::BedrockCount => bedrock::count(&script),
    })
}

/// Counts a model call whose client went away before it was answered (the future was
/// dropped mid-wait).
struct CancelWatch {
    state: Arc<MockState>,
    done: bool,
}

impl Drop for CancelWatch {
    fn drop(&mut self) {
        if !self.done {
            self.state
                .cancelled
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// The provider's own error for a prompt over the context window.
fn context_window_error(family: Family, tokens: u64, limit: u64) -> Response<Body> {
    match family {
        Family::OpenAi => json_response(
            StatusCode::BAD_REQUEST,
            &json!({"error": {
                "message": format!("This model's maximum context length is {limit} tokens. However, your messages resulted in {tokens} tokens. Please reduce the length of the messages."),
                "type": "invalid_request_error",
                "param": "messages",
                "code": "context_length_exceeded"
            }}),
        ),
        Family::Anthropic => json_response(
            StatusCode::BAD_REQUEST,
            &anthropic::error(
                400,
                &format!("prompt is too long: {tokens} tokens > {limit} maximum"),
            ),
        ),
        Family::Gemini => error_response(
            family,
            400,
            &format!(
                "The input token count ({tokens}) exceeds the maximum number of tokens allowed ({limit})."
            ),
            None,
        ),
        Family::Bedrock => {
            error_response(family, 400, "Input is too long for requested model.", None)
        }
    }
}

/// A deterministic embedding of `dims` values for a text.
pub(crate) fn embedding_of(text: &str, dims: usize) -> Vec<f64> {
    (0..dims)
        .map(|d| ((text.len() + d) % 7) as f64 / 7.0)
        .collect()
}

pub(crate) fn created() -> u64 {
    now()
}
