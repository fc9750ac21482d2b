//! End-to-end: a standalone data plane process in front of the mock upstream process. Covers
//! the API surface, provider translation, credential handling and every bad-input path.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use serde_json::{Value, json};
use switchyard_tests::procs::Proc;

struct Env {
    _mock: Proc,
    mock_url: String,
    dp: Proc,
    api: String,
    admin: String,
    dir: std::path::PathBuf,
}

async fn env_with(extra: &[&str], config: impl FnOnce(&str) -> String) -> Env {
    let dir = temp_dir("gw");
    let (mock, mock_url) = start_mock(&dir);
    let cfg_dir = dir.join("config");
    std::fs::create_dir_all(&cfg_dir).expect("config dir");
    std::fs::write(cfg_dir.join("config.yaml"), config(&mock_url)).expect("write config");
    let (dp, api, admin) = start_standalone(&cfg_dir, extra, &dir);
    wait_ready(&admin).await;
    wait_up(&format!("{mock_url}/healthz")).await;
    Env {
        _mock: mock,
        mock_url,
        dp,
        api,
        admin,
        dir,
    }
}

async fn env() -> Env {
    env_with(&[], base_config).await
}

fn chat_url(e: &Env) -> String {
    format!("{}/v1/chat/completions", e.api)
}

#[tokio::test]
async fn chat_is_routed_with_the_upstream_model_and_the_pool_credential() {
    let e = env().await;
    let (status, headers, body) = post(
        &chat_url(&e),
        Some(CLIENT_KEY),
        &chat_body("chat", "hello mock.chunks=3"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "mock-gpt");
    assert_eq!(body["choices"][0]["message"]["content"], "tok0 tok1 tok2 ");
    assert_eq!(body["usage"]["completion_tokens"], 3);
    assert!(headers.contains_key("x-request-id"));

    let reqs = mock_requests(&e.mock_url).await;
    let last = reqs.last().expect("the mock saw the request");
    assert_eq!(last["path"], "/v1/chat/completions");
    assert_eq!(last["body"]["model"], "mock-gpt", "upstream model override");
    assert_eq!(
        last["headers"]["authorization"],
        format!("Bearer {UPSTREAM_KEY}")
    );
    let all = serde_json::to_string(&reqs).unwrap_or_default();
    assert!(
        !all.contains(CLIENT_KEY),
        "the client's key must never reach the upstream"
    );

    // x-api-key works as well, and globs route.
    let resp = client()
        .post(chat_url(&e))
        .header("x-api-key", CLIENT_KEY)
        .json(&chat_body("gpt-anything", "hi"))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn streaming_chat_forwards_chunks_and_honours_include_usage() {
    let e = env().await;
    for include_usage in [false, true] {
        let mut body = chat_body("chat", "hi mock.chunks=4");
        body["stream"] = json!(true);
        if include_usage {
            body["stream_options"] = json!({"include_usage": true});
        }
        let resp = client()
            .post(chat_url(&e))
            .bearer_auth(CLIENT_KEY)
            .json(&body)
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        let text = resp.text().await.expect("body");
        let events: Vec<&str> = text.split("\n\n").filter(|s| !s.is_empty()).collect();
        assert_eq!(events.last(), Some(&"data: [DONE]"), "{text}");
        let chunks: Vec<Value> = events[..events.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(e.trim_start_matches("data: ")).expect("chunk json"))
            .collect();
        let content: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(content, "tok0 tok1 tok2 tok3 ");
        let usage_chunks: Vec<&Value> = chunks.iter().filter(|c| c["usage"].is_object()).collect();
        if include_usage {
            assert_eq!(usage_chunks.len(), 1, "{text}");
            assert_eq!(usage_chunks[0]["usage"]["completion_tokens"], 4);
        } else {
            assert!(
                usage_chunks.is_empty(),
                "usage chunk must be hidden unless asked: {text}"
            );
        }
    }
    // The gateway always asks the upstream for usage, to count tokens.
    let reqs = mock_requests(&e.mock_url).await;
    assert!(
        reqs.iter()
            .all(|r| r["body"]["stream_options"]["include_usage"] == json!(true))
    );
    let metrics = client()
        .get(format!("{}/metrics", e.admin))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .unwrap_or_default();
    assert!(
        metrics.contains("switchyard_tokens_total{provider=\"openai\",direction=\"output\"} 8"),
        "{metrics}"
    );
}

#[tokio::test]
async fn anthropic_pool_is_translated_both_ways() {
    let e = env().await;
    let body = json!({"model": "claude", "max_tokens": 50, "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi mock.chunks=2"}
    ]});
    let (status, _, out) = post(&chat_url(&e), Some(CLIENT_KEY), &body).await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["object"], "chat.completion");
    assert_eq!(out["choices"][0]["message"]["content"], "tok0 tok1 ");
    assert_eq!(out["choices"][0]["finish_reason"], "stop");
    assert_eq!(out["usage"]["completion_tokens"], 2);
    let reqs = mock_requests(&e.mock_url).await;
    let last = reqs.last().expect("request");
    assert_eq!(last["path"], "/v1/messages");
    assert_eq!(last["headers"]["x-api-key"], UPSTREAM_KEY);
    assert_eq!(last["headers"]["anthropic-version"], "2023-06-01");
    assert_eq!(last["body"]["system"], "be brief");
    assert_eq!(last["body"]["max_tokens"], 50);
    assert!(last["headers"].get("authorization").is_none());

    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    sbody["stream_options"] = json!({"include_usage": true});
    let text = client()
        .post(chat_url(&e))
        .bearer_auth(CLIENT_KEY)
        .json(&sbody)
        .send()
        .await
        .expect("send")
        .text()
        .await
        .expect("text");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert!(text.contains("\"content\":\"tok0 \""), "{text}");
    assert!(text.contains("\"finish_reason\":\"stop\""), "{text}");
    assert!(text.contains("\"usage\":{\"prompt_tokens\":"), "{text}");
}

#[tokio::test]
async fn azure_pool_uses_deployment_urls_and_api_key_header() {
    let e = env().await;
    let (status, _, out) = post(
        &chat_url(&e),
        Some(CLIENT_KEY),
        &chat_body("azure-chat", "hi"),
    )
    .await;
    assert_eq!(status, 200, "{out}");
    let reqs = mock_requests(&e.mock_url).await;
    let last = reqs.last().expect("request");
    assert_eq!(
        last["path"],
        "/openai/deployments/my-deployment/chat/completions"
    );
    assert_eq!(last["query"], "api-version=2024-10-21");
    assert_eq!(last["headers"]["api-key"], UPSTREAM_KEY);
}

#[tokio::test]
async fn embeddings_and_models() {
    let e = env().await;
    let (status, _, out) = post(
        &format!("{}/v1/embeddings", e.api),
        Some(CLIENT_KEY),
        &json!({"model": "embed", "input": ["a", "bb"]}),
    )
    .await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["data"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        mock_requests(&e.mock_url).await.last().expect("req")["body"]["model"],
        "mock-gpt-mini"
    );

    let (status, _, out) = post(
        &format!("{}/v1/embeddings", e.api),
        Some(CLIENT_KEY),
        &json!({"model": "claude", "input": "a"}),
    )
    .await;
    assert_openai_error(status, &out, 400);

    let list = |key: &'static str| {
        let url = format!("{}/v1/models", e.api);
        async move {
            let v: Value = client()
                .get(url)
                .bearer_auth(key)
                .send()
                .await
                .expect("models")
                .json()
                .await
                .expect("json");
            let mut ids: Vec<String> = v["data"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|m| m["id"].as_str().map(str::to_owned))
                .collect();
            ids.sort();
            ids
        }
    };
    assert_eq!(
        list(CLIENT_KEY).await,
        [
            "azure-chat",
            "bedrock-chat",
            "chat",
            "claude",
            "compat-chat",
            "demo",
            "embed",
            "gemini-chat",
            "gemini-embed",
            "mock-gpt",
            "mock-gpt-mini",
            "text-embedding"
        ]
    );
    assert_eq!(
        list("sk-limited-key-0001").await,
        ["demo"],
        "only the models the key may use"
    );
}

#[tokio::test]
async fn bad_requests_get_precise_openai_errors() {
    let e = env_with(&["--max-body-bytes", "4096"], base_config).await;
    let url = chat_url(&e);
    let raw = |body: &'static str, key: Option<&'static str>| {
        let url = url.clone();
        async move {
            let mut r = client()
                .post(url)
                .header("content-type", "application/json")
                .body(body);
            if let Some(k) = key {
                r = r.bearer_auth(k);
            }
            let resp = r.send().await.expect("send");
            let status = resp.status().as_u16();
            let v: Value = resp.json().await.unwrap_or(Value::Null);
            (status, v)
        }
    };
    // Malformed JSON.
    let (s, b) = raw("{\"model\": ", Some(CLIENT_KEY)).await;
    assert_openai_error(s, &b, 400);
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("not valid JSON"),
        "{b}"
    );
    // Missing field.
    let (s, b) = raw("{\"model\": \"chat\"}", Some(CLIENT_KEY)).await;
    assert_openai_error(s, &b, 400);
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("missing field `messages`"),
        "{b}"
    );
    // Mistyped field.
    let (s, b) = raw("{\"model\": 42, \"messages\": []}", Some(CLIENT_KEY)).await;
    assert_openai_error(s, &b, 400);
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("invalid type"),
        "{b}"
    );
    let (s, b) = raw(
        "{\"model\": \"chat\", \"messages\": [{\"role\": \"robot\", \"content\": \"x\"}]}",
        Some(CLIENT_KEY),
    )
    .await;
    assert_openai_error(s, &b, 400);
    // Empty messages.
    let (s, b) = raw("{\"model\": \"chat\", \"messages\": []}", Some(CLIENT_KEY)).await;
    assert_openai_error(s, &b, 400);
    assert_eq!(b["error"]["param"], "messages");
    // Unknown model.
    let (s, b) = raw(
        "{\"model\": \"nope\", \"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}",
        Some(CLIENT_KEY),
    )
    .await;
    assert_openai_error(s, &b, 404);
    assert_eq!(b["error"]["code"], "model_not_found");
    // Model not allowed for this key.
    let (s, b) = raw(
        "{\"model\": \"chat\", \"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}",
        Some("sk-limited-key-0001"),
    )
    .await;
    assert_openai_error(s, &b, 403);
    // Keys: missing, unknown, expired, disabled.
    for key in [
        None,
        Some("sk-nobody-0000"),
        Some("sk-expired-key-0001"),
        Some("sk-disabled-key-0001"),
    ] {
        let (s, b) = raw(
            "{\"model\": \"chat\", \"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}",
            key,
        )
        .await;
        assert_openai_error(s, &b, 401);
        assert_eq!(b["error"]["code"], "invalid_api_key", "{key:?}");
    }
    // Body over the limit.
    let big = format!(
        "{{\"model\": \"chat\", \"messages\": [{{\"role\": \"user\", \"content\": \"{}\"}}]}}",
        "x".repeat(5000)
    );
    let resp = client()
        .post(&url)
        .bearer_auth(CLIENT_KEY)
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .expect("send");
    let status = resp.status().as_u16();
    let b: Value = resp.json().await.unwrap_or(Value::Null);
    assert_openai_error(status, &b, 413);
    // Unknown path.
    let resp = client()
        .get(format!("{}/v1/nothing", e.api))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 404);

    // Each rejection is counted by error label.
    let metrics = client()
        .get(format!("{}/metrics", e.admin))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .unwrap_or_default();
    for label in [
        "invalid_json",
        "invalid_request",
        "model_not_found",
        "model_not_allowed",
        "missing_key",
        "invalid_key",
        "expired_key",
        "disabled_key",
        "body_too_large",
    ] {
        assert!(
            metrics.contains(&format!("error=\"{label}\"")),
            "metric for {label} missing:\n{metrics}"
        );
    }
    assert!(e.dp.log.exists());
}

#[tokio::test]
async fn upstream_failures_map_to_502_504_and_429() {
    let e = env_with(&[], |mock| {
        format!(
            "{}\n---\n{}",
            base_config(mock),
            r#"apiVersion: switchyard.dev/v1alpha1
kind: ProviderPool
metadata: {name: dead}
spec:
  provider: openai-compatible
  endpoints: [{url: "http://127.0.0.1:9"}]
  timeouts: {connect: 1s}
---
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {name: dead}
spec: {models: [dead], backends: [{pool: dead}]}"#
        )
    })
    .await;
    let url = chat_url(&e);
    // Timeout before the first byte (the pool allows 1.5s).
    let (s, _, b) = post(
        &url,
        Some(CLIENT_KEY),
        &chat_body("chat", "mock.latency_ms=4000"),
    )
    .await;
    assert_openai_error(s, &b, 504);
    // Connection refused: retried once (the default), then one error listing both attempts.
    let (s, h, b) = post(&url, Some(CLIENT_KEY), &chat_body("dead", "x")).await;
    assert_openai_error(s, &b, 502);
    assert_eq!(b["error"]["code"], "attempts_exhausted");
    assert_eq!(h["x-switchyard-attempts"], "2");
    let message = b["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("All 2 attempts failed: default/dead#0: upstream_connect; default/dead#0: upstream_connect."),
        "{message}"
    );
    // Garbage body.
    let (s, _, b) = post(
        &url,
        Some(CLIENT_KEY),
        &chat_body("chat", "mock.malformed=1"),
    )
    .await;
    assert_openai_error(s, &b, 502);
    assert_eq!(b["error"]["code"], "upstream_protocol");
    let (s, _, b) = post(
        &url,
        Some(CLIENT_KEY),
        &chat_body("claude", "mock.malformed=1"),
    )
    .await;
    assert_openai_error(s, &b, 502);
    // Upstream 500 -> 502; 429 passes through with retry-after; 400 passes through.
    let (s, _, b) = post(
        &url,
        Some(CLIENT_KEY),
        &chat_body("chat", "mock.status=500"),
    )
    .await;
    assert_openai_error(s, &b, 502);
    let (s, h, b) = post(
        &url,
        Some(CLIENT_KEY),
        &chat_body("claude", "mock.status=429 mock.retry_after=7"),
    )
    .await;
    assert_openai_error(s, &b, 429);
    assert_eq!(
        h.get("retry-after").and_then(|v| v.to_str().ok()),
        Some("7")
    );
    let (s, _, b) = post(
        &url,
        Some(CLIENT_KEY),
        &chat_body("chat", "mock.status=400"),
    )
    .await;
    assert_openai_error(s, &b, 400);
    assert_eq!(b["error"]["message"], "mock error requested");
    // Upstream rejecting the gateway's credential is not the client's 401, and the
    // upstream's message (OpenAI echoes part of the key) never reaches the client.
    let (s, _, b) = post(
        &url,
        Some(CLIENT_KEY),
        &chat_body("chat", "mock.status=401"),
    )
    .await;
    assert_openai_error(s, &b, 502);
    let text = b.to_string();
    assert!(
        !text.contains(&UPSTREAM_KEY[UPSTREAM_KEY.len() - 4..])
            && !text.contains("Incorrect API key"),
        "{text}"
    );
    assert!(text.contains("credential"), "{text}");
    assert!(
        !e.dp
            .logs()
            .contains(&UPSTREAM_KEY[UPSTREAM_KEY.len() - 4..]),
        "nor the log"
    );
    // The gateway is still healthy.
    let (s, _, _) = post(&url, Some(CLIENT_KEY), &chat_body("chat", "ok")).await;
    assert_eq!(s, 200);
}

async fn stream_text(url: &str, model: &str, prompt: &str) -> String {
    let mut body = chat_body(model, prompt);
    body["stream"] = json!(true);
    let resp = client()
        .post(url)
        .bearer_auth(CLIENT_KEY)
        .json(&body)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    resp.text()
        .await
        .unwrap_or_else(|e| format!("<body error: {e}>"))
}

#[tokio::test]
async fn broken_streams_end_with_an_error_event() {
    let e = env().await;
    let url = chat_url(&e);
    for model in ["chat", "claude"] {
        let text = stream_text(
            &url,
            model,
            "mock.chunks=6 mock.interval_ms=50 mock.disconnect_after=3",
        )
        .await;
        assert!(!text.contains("[DONE]"), "{model}: {text}");
        let last = text.trim_end().rsplit("\n\n").next().unwrap_or_default();
        let v: Value =
            serde_json::from_str(last.trim_start_matches("data: ")).unwrap_or(Value::Null);
        assert_eq!(v["error"]["code"], "upstream_disconnect", "{model}: {text}");

        let text = stream_text(&url, model, "mock.chunks=6 mock.malformed=1").await;
        assert!(!text.contains("[DONE]"), "{model}: {text}");
        assert!(
            text.contains("\"code\":\"malformed_event\""),
            "{model}: {text}"
        );
    }
    let metrics = client()
        .get(format!("{}/metrics", e.admin))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .unwrap_or_default();
    assert!(
        metrics.contains("switchyard_stream_errors_total{reason=\"upstream_disconnect\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("switchyard_stream_errors_total{reason=\"malformed_event\"} 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn streaming_is_not_buffered() {
    let e = env().await;
    let mut body = chat_body("chat", "mock.chunks=6 mock.interval_ms=300");
    body["stream"] = json!(true);
    let resp = client()
        .post(chat_url(&e))
        .bearer_auth(CLIENT_KEY)
        .json(&body)
        .send()
        .await
        .expect("send");
    let mut stream = resp.bytes_stream();
    let mut first_content: Option<Instant> = None;
    let mut seen = String::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("chunk");
        seen.push_str(&String::from_utf8_lossy(&chunk));
        if first_content.is_none() && seen.contains("tok0") {
            first_content = Some(Instant::now());
        }
    }
    let first = first_content.expect("content arrived");
    assert!(seen.ends_with("data: [DONE]\n\n"));
    // The upstream spends ~2.4 s after tok0; a buffering proxy would deliver tok0 at the end.
    let after_first = first.elapsed();
    assert!(
        after_first >= Duration::from_millis(1200),
        "tok0 arrived only {after_first:?} before the end: buffered"
    );
}

#[tokio::test]
async fn built_in_mock_provider_streams_and_hot_reload_applies() {
    let e = env().await;
    let text = stream_text(&chat_url(&e), "demo", "hi").await;
    assert!(text.contains("\"content\":\"This\""), "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"));

    // Hot reload: add a route and see it served.
    let (s, _, _) = post(&chat_url(&e), Some(CLIENT_KEY), &chat_body("late", "x")).await;
    assert_eq!(s, 404);
    std::fs::write(
        e.dir.join("config/late.yaml"),
        "apiVersion: switchyard.dev/v1alpha1\nkind: LLMRoute\nmetadata: {name: late}\nspec: {models: [late], backends: [{pool: builtin}]}\n",
    )
    .expect("write");
    let url = chat_url(&e);
    switchyard_tests::procs::eventually(DEADLINE, "the new route to serve", || {
        let url = url.clone();
        async move {
            (post(&url, Some(CLIENT_KEY), &chat_body("late", "x"))
                .await
                .0
                == 200)
                .then_some(())
        }
    })
    .await;
}
