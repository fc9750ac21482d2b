//! Golden snapshots, reviewed like code (`insta`): for every front door × upstream kind, the
//! request the gateway sent upstream, the response the client got, and the client's stream —
//! through a real gateway process and the mock upstream, which speaks each provider's format.
//! A wrong mapping in either direction changes a snapshot.
//!
//! Scenarios: `text` (system prompt, thinking, three chunks) and `tools` (two tools offered,
//! two called in parallel). Ids and timestamps are normalized; nothing else is.
//!
//! Review a change with `cargo insta review`; accept new ones with `INSTA_UPDATE=always`.

mod common;

use std::path::PathBuf;

use common::*;
use serde_json::{Value, json};
use switchyard_tests::procs::Proc;

struct Env {
    _mock: Proc,
    mock_url: String,
    _dp: Proc,
    api: String,
    _dir: PathBuf,
}

async fn env() -> Env {
    let dir = temp_dir("golden");
    let (mock, mock_url) = start_mock(&dir);
    let cfg = dir.join("config");
    std::fs::create_dir_all(&cfg).expect("config dir");
    std::fs::write(cfg.join("config.yaml"), base_config(&mock_url)).expect("write");
    let (dp, api, admin) = start_standalone(&cfg, &[], &dir);
    wait_ready(&admin).await;
    wait_up(&format!("{mock_url}/healthz")).await;
    Env {
        _mock: mock,
        mock_url,
        _dp: dp,
        api,
        _dir: dir,
    }
}

/// Client-facing model -> upstream kind.
const UPSTREAMS: &[(&str, &str)] = &[
    ("chat", "openai"),
    ("azure-chat", "azure"),
    ("compat-chat", "compat"),
    ("claude", "anthropic"),
    ("gemini-chat", "gemini"),
    ("bedrock-chat", "bedrock"),
    ("demo", "builtin"),
];

/// Tool-call ids the mock makes up deterministically stay; random ids and timestamps go.
fn deterministic(id: &str) -> bool {
    ["call_mock", "toolu_01mock", "tooluse_mock"]
        .iter()
        .any(|p| id.starts_with(p))
}

/// Gemini does not number its function calls: the gateway makes ids up (`call_<n>_<hex>`).
fn generated_call_id(s: &str) -> bool {
    let mut it = s.splitn(3, '_');
    matches!(
        (it.next(), it.next(), it.next()),
        (Some("call"), Some(n), Some(hex)) if n.bytes().all(|b| b.is_ascii_digit())
            && hex.len() == 8 && hex.bytes().all(|b| b.is_ascii_hexdigit())
    )
}

/// Replaces what varies between runs: random ids, timestamps, generated call ids.
fn normalize(v: &mut Value) {
    match v {
        Value::Object(o) => {
            for (k, x) in o.iter_mut() {
                match (k.as_str(), &*x) {
                    ("id" | "item_id" | "responseId", Value::String(s)) if !deterministic(s) => {
                        *x = json!(if generated_call_id(s) {
                            "[generated-call-id]"
                        } else {
                            "[id]"
                        })
                    }
                    ("created" | "created_at", Value::Number(_)) => *x = json!(0),
                    _ => normalize(x),
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(normalize),
        Value::String(s) if generated_call_id(s) => *s = "[generated-call-id]".into(),
        _ => {}
    }
}

/// An SSE body as a list of {event, data}.
fn events(text: &str) -> Value {
    let mut out = Vec::new();
    for block in text.split("\n\n").filter(|b| !b.trim().is_empty()) {
        let mut event = Value::Null;
        let mut data = String::new();
        for line in block.lines() {
            if let Some(e) = line.strip_prefix("event: ") {
                event = json!(e);
            } else if let Some(d) = line.strip_prefix("data: ") {
                data.push_str(d);
            }
        }
        let data = serde_json::from_str(&data).unwrap_or(Value::String(data));
        out.push(if event.is_null() {
            json!({"data": data})
        } else {
            json!({"event": event, "data": data})
        });
    }
    Value::Array(out)
}

/// What the mock received last, as much as matters: path, query, the headers that carry
/// format and auth conventions, body.
async fn sent(mock_url: &str) -> Value {
    let reqs = mock_requests(mock_url).await;
    let Some(last) = reqs.last() else {
        return Value::Null;
    };
    let mut headers = serde_json::Map::new();
    for h in [
        "anthropic-version",
        "anthropic-beta",
        "api-key",
        "x-api-key",
        "x-goog-api-key",
        "content-type",
    ] {
        if let Some(v) = last["headers"].get(h) {
            headers.insert(h.into(), v.clone());
        }
    }
    if let Some(a) = last["headers"].get("authorization").and_then(Value::as_str) {
        headers.insert(
            "authorization".into(),
            json!(a.split_whitespace().next().unwrap_or_default()),
        );
    }
    json!({"path": last["path"], "query": last["query"], "headers": headers, "body": last["body"]})
}

async fn call(e: &Env, path: &str, body: &Value, anthropic: bool) -> (u16, String) {
    let mut r = client().post(format!("{}{path}", e.api)).json(body);
    r = if anthropic {
        // The beta flag reaches Anthropic upstreams on passthrough and no other upstream.
        r.header("x-api-key", CLIENT_KEY)
            .header("anthropic-version", "2023-06-01")
            .header("anthropic-beta", "token-efficient-tools-2025-02-19")
    } else {
        r.bearer_auth(CLIENT_KEY)
    };
    let resp = r.send().await.expect("send");
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

/// Runs one scenario non-streamed and streamed and snapshots the four views.
async fn golden(
    e: &Env,
    door: &str,
    path: &str,
    body: Value,
    anthropic: bool,
    upstream: &str,
    scenario: &str,
) {
    let _ = client()
        .delete(format!("{}/_mock/requests", e.mock_url))
        .send()
        .await;
    let (status, text) = call(e, path, &body, anthropic).await;
    let mut response = serde_json::from_str(&text).unwrap_or(Value::String(text));
    let mut request_sent = sent(&e.mock_url).await;
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let (stream_status, stream_text) = call(e, path, &streamed, anthropic).await;
    let mut stream_sent = sent(&e.mock_url).await;
    let mut stream = events(&stream_text);
    for v in [
        &mut response,
        &mut request_sent,
        &mut stream_sent,
        &mut stream,
    ] {
        normalize(v);
    }
    let name = format!("{door}__{upstream}__{scenario}");
    insta::assert_json_snapshot!(
        name,
        json!({
            "request_sent": request_sent,
            "status": status,
            "response": response,
            "stream_request_sent": stream_sent,
            "stream_status": stream_status,
            "stream": stream,
        })
    );
}

/// One call, no stream (embeddings, count_tokens): the request sent and the response.
async fn golden_once(
    e: &Env,
    door: &str,
    path: &str,
    body: Value,
    anthropic: bool,
    upstream: &str,
) {
    let _ = client()
        .delete(format!("{}/_mock/requests", e.mock_url))
        .send()
        .await;
    let (status, text) = call(e, path, &body, anthropic).await;
    let mut response = serde_json::from_str(&text).unwrap_or(Value::String(text));
    let mut request_sent = sent(&e.mock_url).await;
    normalize(&mut response);
    normalize(&mut request_sent);
    let name = format!("{door}__{upstream}");
    insta::assert_json_snapshot!(
        name,
        json!({
            "request_sent": request_sent,
            "status": status,
            "response": response,
        })
    );
}

fn tools_openai() -> Value {
    json!([
        {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
         "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}},
        {"type": "function", "function": {"name": "get_time", "description": "Local time in a city",
         "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}}
    ])
}

#[tokio::test]
async fn chat_completions_front_door() {
    let e = env().await;
    for (model, upstream) in UPSTREAMS {
        let text = json!({"model": model, "max_tokens": 200, "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Why is the sky blue? mock.chunks=3 mock.thinking=1"}
        ]});
        golden(
            &e,
            "chat",
            "/v1/chat/completions",
            text,
            false,
            upstream,
            "text",
        )
        .await;
        let tools = json!({"model": model, "max_tokens": 200, "tools": tools_openai(), "messages": [
            {"role": "user", "content": "Weather and time in Paris and Rome? mock.tools=2"}
        ]});
        golden(
            &e,
            "chat",
            "/v1/chat/completions",
            tools,
            false,
            upstream,
            "tools",
        )
        .await;
    }
}

#[tokio::test]
async fn messages_front_door() {
    let e = env().await;
    for (model, upstream) in UPSTREAMS {
        let text = json!({"model": model, "max_tokens": 200, "system": "You are terse.",
            "messages": [{"role": "user", "content": "Why is the sky blue? mock.chunks=3 mock.thinking=1"}]});
        golden(&e, "messages", "/v1/messages", text, true, upstream, "text").await;
        let tools = json!({"model": model, "max_tokens": 200,
            "tools": [
                {"name": "get_weather", "description": "Current weather in a city", "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}},
                {"name": "get_time", "description": "Local time in a city", "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}
            ],
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Weather and time in Paris and Rome? mock.tools=2"}]}]});
        golden(
            &e,
            "messages",
            "/v1/messages",
            tools,
            true,
            upstream,
            "tools",
        )
        .await;
    }
}

#[tokio::test]
async fn responses_front_door() {
    let e = env().await;
    for (model, upstream) in UPSTREAMS {
        let text = json!({"model": model, "instructions": "You are terse.", "max_output_tokens": 200,
            "input": "Why is the sky blue? mock.chunks=3 mock.thinking=1"});
        golden(
            &e,
            "responses",
            "/v1/responses",
            text,
            false,
            upstream,
            "text",
        )
        .await;
        let tools = json!({"model": model, "max_output_tokens": 200,
            "tools": [
                {"type": "function", "name": "get_weather", "description": "Current weather in a city", "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}},
                {"type": "function", "name": "get_time", "description": "Local time in a city", "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}
            ],
            "input": [{"role": "user", "content": "Weather and time in Paris and Rome? mock.tools=2"}]});
        golden(
            &e,
            "responses",
            "/v1/responses",
            tools,
            false,
            upstream,
            "tools",
        )
        .await;
    }
}

#[tokio::test]
async fn completions_front_door() {
    let e = env().await;
    for (model, upstream) in UPSTREAMS {
        let text = json!({"model": model, "max_tokens": 200, "prompt": "Say this is a test mock.chunks=3"});
        golden(
            &e,
            "completions",
            "/v1/completions",
            text,
            false,
            upstream,
            "text",
        )
        .await;
    }
}

#[tokio::test]
async fn embeddings_and_count_tokens_front_doors() {
    let e = env().await;
    for (model, upstream) in [
        ("embed", "openai"),
        ("text-embedding", "azure"),
        ("gemini-embed", "gemini"),
        ("demo", "builtin"),
    ] {
        let body = json!({"model": model, "input": ["first text", "second"], "dimensions": 3});
        golden_once(&e, "embeddings", "/v1/embeddings", body, false, upstream).await;
    }
    for (model, upstream) in UPSTREAMS {
        let body = json!({"model": model, "system": "You are terse.",
            "messages": [{"role": "user", "content": "How many tokens is this?"}]});
        golden_once(
            &e,
            "count_tokens",
            "/v1/messages/count_tokens",
            body,
            true,
            upstream,
        )
        .await;
    }
}
