//! The mock LLM upstream.
//!
//! Knobs, per request, from `x-mock-*` headers or from `mock.<knob>=<value>` words anywhere in
//! the prompt (so they survive the gateway, which never forwards client headers):
//!
//! | knob | effect |
//! |---|---|
//! | `latency_ms` | wait before the response head |
//! | `chunks` | number of content chunks (default 8); one token each |
//! | `interval_ms` | wait between stream chunks |
//! | `status` | answer with this error status, in the provider's error format |
//! | `retry_after` | `retry-after` header value (with `status=429`) |
//! | `disconnect_after` | break the connection after this many stream chunks |
//! | `malformed` | `1`: invalid JSON body, or a garbage stream event |
//! | `echo` | `1`: the completion text is the prompt's last user message |

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

/// Shared state of a running mock.
#[derive(Debug, Default)]
pub struct MockState {
    recorded: Mutex<VecDeque<Recorded>>,
    /// When false, requests are not recorded (benchmarks).
    pub record: bool,
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

#[derive(Clone, Debug, Default)]
struct Knobs {
    latency_ms: u64,
    chunks: Option<usize>,
    interval_ms: u64,
    status: Option<u16>,
    retry_after: Option<String>,
    disconnect_after: Option<usize>,
    malformed: bool,
    echo: bool,
}

impl Knobs {
    fn set(&mut self, k: &str, v: &str) {
        match k {
            "latency_ms" => self.latency_ms = v.parse().unwrap_or(0),
            "chunks" => self.chunks = v.parse().ok(),
            "interval_ms" => self.interval_ms = v.parse().unwrap_or(0),
            "status" => self.status = v.parse().ok(),
            "retry_after" => self.retry_after = Some(v.to_owned()),
            "disconnect_after" => self.disconnect_after = v.parse().ok(),
            "malformed" => self.malformed = v == "1" || v == "true",
            "echo" => self.echo = v == "1" || v == "true",
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
        for word in prompt.split_whitespace() {
            if let Some((key, v)) = word.strip_prefix("mock.").and_then(|w| w.split_once('=')) {
                k.set(key, v);
            }
        }
        k
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Api {
    OpenAiChat,
    OpenAiEmbeddings,
    AnthropicMessages,
}

fn full(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
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

fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    full(status, "application/json", v.to_string())
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
            "/v1/models" => json_response(
                StatusCode::OK,
                &json!({"object": "list", "data": [{"id": "mock-gpt", "object": "model", "created": 0, "owned_by": "mock"}]}),
            ),
            "/_mock/requests" => {
                let list: Vec<Value> = state
                    .requests()
                    .into_iter()
                    .map(|r| json!({"method": r.method, "path": r.path, "query": r.query, "headers": r.headers, "body": r.body}))
                    .collect();
                json_response(StatusCode::OK, &Value::Array(list))
            }
            _ => json_response(StatusCode::NOT_FOUND, &openai_error(404, "not found")),
        });
    }
    if parts.method == Method::DELETE && path == "/_mock/requests" {
        state.clear();
        return Ok(full(StatusCode::NO_CONTENT, "text/plain", ""));
    }
    let api = if path.ends_with("/chat/completions") {
        Api::OpenAiChat
    } else if path.ends_with("/embeddings") {
        Api::OpenAiEmbeddings
    } else if path.ends_with("/messages") {
        Api::AnthropicMessages
    } else {
        return Ok(json_response(
            StatusCode::NOT_FOUND,
            &openai_error(404, "unknown path"),
        ));
    };
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
    let parsed: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => {
            return Ok(error_response(
                api,
                400,
                &format!("invalid JSON: {e}"),
                None,
            ));
        }
    };
    if state.record
        && let Ok(mut r) = state.recorded.lock()
    {
        if r.len() >= 256 {
            r.pop_front();
        }
        r.push_back(Recorded {
            method: parts.method.to_string(),
            path: path.clone(),
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
            body: parsed.clone(),
        });
    }
    let prompt = prompt_text(api, &parsed);
    let knobs = Knobs::from_request(&parts.headers, &prompt);
    if knobs.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(knobs.latency_ms)).await;
    }
    if let Some(status) = knobs.status {
        let message = if status == 401 && api != Api::AnthropicMessages {
            // OpenAI echoes a masked copy of the key it rejected.
            let key = parts
                .headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or_default();
            let tail = &key[key.len().saturating_sub(4)..];
            format!(
                "Incorrect API key provided: {}****{tail}. You can find your API key at https://platform.openai.com/account/api-keys.",
                &key[..key.len().min(3)]
            )
        } else {
            "mock error requested".to_owned()
        };
        return Ok(error_response(
            api,
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
    if model.is_empty() && api != Api::OpenAiEmbeddings {
        return Ok(error_response(api, 400, "model is required", None));
    }
    let stream = parsed
        .get("stream")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Ok(match api {
        Api::OpenAiEmbeddings => embeddings(&parsed, &model, &knobs),
        Api::OpenAiChat if stream => {
            let usage = parsed
                .pointer("/stream_options/include_usage")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            stream_response(openai_stream_events(&model, &prompt, &knobs, usage), &knobs)
        }
        Api::OpenAiChat => chat_response(&model, &prompt, &knobs),
        Api::AnthropicMessages if stream => {
            stream_response(anthropic_stream_events(&model, &prompt, &knobs), &knobs)
        }
        Api::AnthropicMessages => messages_response(&model, &prompt, &knobs),
    })
}

/// The text of every message, for knobs and token counts.
fn prompt_text(api: Api, body: &Value) -> String {
    let mut out = String::new();
    if api == Api::OpenAiEmbeddings {
        match body.get("input") {
            Some(Value::String(s)) => out.push_str(s),
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).for_each(|s| {
                out.push_str(s);
                out.push(' ');
            }),
            _ => {}
        }
        return out;
    }
    if let Some(Value::String(s)) = body.get("system") {
        out.push_str(s);
        out.push(' ');
    }
    for m in body
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match m.get("content") {
            Some(Value::String(s)) => out.push_str(s),
            Some(Value::Array(parts)) => {
                for p in parts {
                    if let Some(t) = p.get("text").and_then(Value::as_str) {
                        out.push_str(t);
                        out.push(' ');
                    }
                }
            }
            _ => {}
        }
        out.push(' ');
    }
    out
}

fn last_user_text(prompt: &str) -> String {
    prompt
        .split_whitespace()
        .filter(|w| !w.starts_with("mock."))
        .collect::<Vec<_>>()
        .join(" ")
}

fn tokens(prompt: &str, knobs: &Knobs) -> Vec<String> {
    if knobs.echo {
        return last_user_text(prompt)
            .split_inclusive(' ')
            .map(str::to_owned)
            .collect();
    }
    (0..knobs.chunks.unwrap_or(8))
        .map(|i| format!("tok{i} "))
        .collect()
}

fn prompt_tokens(prompt: &str) -> u64 {
    (prompt.len() as u64).div_ceil(4).max(1)
}

fn openai_error(status: u16, message: &str) -> Value {
    let (kind, code) = match status {
        401 => ("invalid_request_error", "invalid_api_key"),
        404 => ("invalid_request_error", "model_not_found"),
        429 => ("requests", "rate_limit_exceeded"),
        400..=499 => ("invalid_request_error", "invalid_request"),
        _ => ("server_error", "server_error"),
    };
    json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
}

fn anthropic_error(status: u16, message: &str) -> Value {
    let kind = match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        _ => "api_error",
    };
    json!({"type": "error", "error": {"type": kind, "message": message}})
}

fn error_response(
    api: Api,
    status: u16,
    message: &str,
    retry_after: Option<&str>,
) -> Response<Body> {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = match api {
        Api::AnthropicMessages => anthropic_error(status, message),
        _ => openai_error(status, message),
    };
    let mut r = json_response(code, &body);
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

fn chat_response(model: &str, prompt: &str, knobs: &Knobs) -> Response<Body> {
    if knobs.malformed {
        return full(
            StatusCode::OK,
            "application/json",
            "{\"id\": \"chatcmpl-mock\", \"choices\": [",
        );
    }
    let toks = tokens(prompt, knobs);
    let (p, c) = (prompt_tokens(prompt), toks.len() as u64);
    json_response(
        StatusCode::OK,
        &json!({
            "id": "chatcmpl-mock", "object": "chat.completion", "created": now(), "model": model,
            "system_fingerprint": "fp_mock",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": toks.concat(), "refusal": null}, "logprobs": null, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}
        }),
    )
}

fn messages_response(model: &str, prompt: &str, knobs: &Knobs) -> Response<Body> {
    if knobs.malformed {
        return full(
            StatusCode::OK,
            "application/json",
            "{\"type\": \"message\", \"content\": [",
        );
    }
    let toks = tokens(prompt, knobs);
    json_response(
        StatusCode::OK,
        &json!({
            "id": "msg_mock", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": toks.concat()}],
            "stop_reason": "end_turn", "stop_sequence": null,
            "usage": {"input_tokens": prompt_tokens(prompt), "output_tokens": toks.len()}
        }),
    )
}

fn embeddings(body: &Value, model: &str, knobs: &Knobs) -> Response<Body> {
    if knobs.malformed {
        return full(StatusCode::OK, "application/json", "not json");
    }
    let inputs: Vec<String> = match body.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
            .collect(),
        _ => return error_response(Api::OpenAiEmbeddings, 400, "input is required", None),
    };
    let dims = body.get("dimensions").and_then(Value::as_u64).unwrap_or(4) as usize;
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let v: Vec<f64> = (0..dims)
                .map(|d| ((s.len() + d) % 7) as f64 / 7.0)
                .collect();
            json!({"object": "embedding", "index": i, "embedding": v})
        })
        .collect();
    let t: u64 = inputs.iter().map(|s| prompt_tokens(s)).sum();
    json_response(
        StatusCode::OK,
        &json!({"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": t, "total_tokens": t}}),
    )
}

/// One SSE event of the OpenAI stream.
fn openai_stream_events(
    model: &str,
    prompt: &str,
    knobs: &Knobs,
    include_usage: bool,
) -> Vec<Bytes> {
    let created = now();
    let usage_null = if include_usage { ",\"usage\":null" } else { "" };
    let chunk = |delta: Value, finish: Value| {
        Bytes::from(format!(
            "data: {{\"id\":\"chatcmpl-mock\",\"object\":\"chat.completion.chunk\",\"created\":{created},\"model\":{},\"system_fingerprint\":\"fp_mock\",\"choices\":[{{\"index\":0,\"delta\":{delta},\"logprobs\":null,\"finish_reason\":{finish}}}]{usage_null}}}\n\n",
            Value::String(model.to_owned())
        ))
    };
    let toks = tokens(prompt, knobs);
    let mut events = vec![chunk(
        json!({"role": "assistant", "content": "", "refusal": null}),
        Value::Null,
    )];
    for (i, t) in toks.iter().enumerate() {
        if knobs.malformed && i == toks.len() / 2 {
            events.push(Bytes::from_static(b"data: {this is not json\n\n"));
        }
        events.push(chunk(json!({"content": t}), Value::Null));
    }
    events.push(chunk(json!({}), json!("stop")));
    if include_usage {
        let (p, c) = (prompt_tokens(prompt), toks.len() as u64);
        events.push(Bytes::from(format!(
            "data: {{\"id\":\"chatcmpl-mock\",\"object\":\"chat.completion.chunk\",\"created\":{created},\"model\":{},\"system_fingerprint\":\"fp_mock\",\"choices\":[],\"usage\":{{\"prompt_tokens\":{p},\"completion_tokens\":{c},\"total_tokens\":{}}}}}\n\n",
            Value::String(model.to_owned()),
            p + c
        )));
    }
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    events
}

fn anthropic_event(kind: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {kind}\ndata: {data}\n\n"))
}

fn anthropic_stream_events(model: &str, prompt: &str, knobs: &Knobs) -> Vec<Bytes> {
    let toks = tokens(prompt, knobs);
    let mut events = vec![
        anthropic_event(
            "message_start",
            &json!({"type": "message_start", "message": {"id": "msg_mock", "type": "message", "role": "assistant", "content": [], "model": model, "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": prompt_tokens(prompt), "output_tokens": 1}}}),
        ),
        anthropic_event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        anthropic_event("ping", &json!({"type": "ping"})),
    ];
    for (i, t) in toks.iter().enumerate() {
        if knobs.malformed && i == toks.len() / 2 {
            events.push(Bytes::from_static(
                b"event: content_block_delta\ndata: {broken\n\n",
            ));
        }
        events.push(anthropic_event(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}}),
        ));
    }
    events.push(anthropic_event(
        "content_block_stop",
        &json!({"type": "content_block_stop", "index": 0}),
    ));
    events.push(anthropic_event(
        "message_delta",
        &json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": toks.len()}}),
    ));
    events.push(anthropic_event(
        "message_stop",
        &json!({"type": "message_stop"}),
    ));
    events
}

fn stream_response(events: Vec<Bytes>, knobs: &Knobs) -> Response<Body> {
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
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .unwrap_or_default()
}
