//! End-to-end: every front door's bad input gets a 400 in its own dialect naming the field,
//! and every way an upstream stream can break (garbage, a cut connection, the provider's own
//! error event) ends the client's stream with an error event in the client's dialect — for
//! every front door over every upstream format, never a hang.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use switchyard_tests::procs::Proc;

struct Env {
    _mock: Proc,
    mock_url: String,
    _dp: Proc,
    api: String,
    admin: String,
}

async fn env() -> Env {
    let dir = temp_dir("doors");
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
        admin,
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Door {
    Chat,
    Completions,
    Responses,
    Messages,
    CountTokens,
    Embeddings,
}

impl Door {
    fn path(self) -> &'static str {
        match self {
            Door::Chat => "/v1/chat/completions",
            Door::Completions => "/v1/completions",
            Door::Responses => "/v1/responses",
            Door::Messages => "/v1/messages",
            Door::CountTokens => "/v1/messages/count_tokens",
            Door::Embeddings => "/v1/embeddings",
        }
    }

    fn anthropic(self) -> bool {
        matches!(self, Door::Messages | Door::CountTokens)
    }
}

async fn send(e: &Env, door: Door, body: &Value) -> (u16, String) {
    let mut r = client()
        .post(format!("{}{}", e.api, door.path()))
        .timeout(Duration::from_secs(30))
        .header("content-type", "application/json")
        .body(body.to_string());
    r = if door.anthropic() {
        r.header("x-api-key", CLIENT_KEY)
            .header("anthropic-version", "2023-06-01")
    } else {
        r.bearer_auth(CLIENT_KEY)
    };
    let resp = r.send().await.expect("send");
    let status = resp.status().as_u16();
    (status, resp.text().await.expect("the body ends: no hang"))
}

/// Asserts a 400 in the door's dialect naming `field` (in the message or `param`).
fn assert_400(door: Door, status: u16, body: &str, field: &str) {
    assert_eq!(status, 400, "{door:?}: {body}");
    let v: Value =
        serde_json::from_str(body).unwrap_or_else(|_| panic!("{door:?}: not JSON: {body}"));
    let message = if door.anthropic() {
        assert_eq!(v["type"], "error", "{door:?}: {v}");
        assert_eq!(v["error"]["type"], "invalid_request_error", "{door:?}: {v}");
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    } else {
        assert_eq!(v["error"]["type"], "invalid_request_error", "{door:?}: {v}");
        format!("{} {}", v["error"]["message"], v["error"]["param"])
    };
    assert!(
        message.contains(field),
        "{door:?}: {field} not named in {v}"
    );
}

#[tokio::test]
async fn every_front_door_answers_400_in_its_own_dialect() {
    let e = env().await;
    let user = json!([{"role": "user", "content": "hi"}]);
    let cases: Vec<(Door, Value, &str)> = vec![
        // Wrong types.
        (
            Door::Chat,
            json!({"model": "chat", "messages": "hi"}),
            "messages",
        ),
        (
            Door::Completions,
            json!({"model": "chat", "prompt": {"x": 1}}),
            "prompt",
        ),
        (
            Door::Responses,
            json!({"model": "chat", "input": 5}),
            "input",
        ),
        (
            Door::Messages,
            json!({"model": "claude", "max_tokens": "5", "messages": user}),
            "max_tokens",
        ),
        (
            Door::CountTokens,
            json!({"model": "claude", "messages": {"role": "user"}}),
            "messages",
        ),
        (
            Door::Embeddings,
            json!({"model": "embed", "input": {"text": "x"}}),
            "input",
        ),
        // Unknown roles.
        (
            Door::Chat,
            json!({"model": "chat", "messages": [{"role": "wizard", "content": "x"}]}),
            "wizard",
        ),
        (
            Door::Messages,
            json!({"model": "claude", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}),
            "system",
        ),
        (
            Door::Responses,
            json!({"model": "claude", "input": [{"role": "wizard", "content": "x"}]}),
            "input",
        ),
        // Fields the upstream's format cannot carry.
        (
            Door::Chat,
            json!({"model": "claude", "messages": user, "logprobs": true}),
            "logprobs",
        ),
        (
            Door::Chat,
            json!({"model": "gemini-chat", "messages": user, "n": 3}),
            "n",
        ),
        (
            Door::Chat,
            json!({"model": "claude", "messages": user, "temperature": 1.5}),
            "temperature",
        ),
        (
            Door::Chat,
            json!({"model": "bedrock-chat", "messages": user, "seed": 7}),
            "seed",
        ),
        (
            Door::Completions,
            json!({"model": "claude", "prompt": "x", "echo": true}),
            "echo",
        ),
        (
            Door::Completions,
            json!({"model": "gemini-chat", "prompt": ["a", "b"]}),
            "prompt",
        ),
        (
            Door::Responses,
            json!({"model": "claude", "input": "x", "previous_response_id": "resp_1"}),
            "previous_response_id",
        ),
        (
            Door::Responses,
            json!({"model": "gemini-chat", "input": "x", "store": true}),
            "store",
        ),
        (
            Door::Responses,
            json!({"model": "bedrock-chat", "input": "x", "tools": [{"type": "web_search"}]}),
            "web_search",
        ),
        (
            Door::Messages,
            json!({"model": "gemini-chat", "max_tokens": 5, "messages": user, "container": "c"}),
            "container",
        ),
        (
            Door::Messages,
            json!({"model": "chat", "max_tokens": 5, "messages": user,
            "tools": [{"type": "web_search_20250305", "name": "web_search"}]}),
            "web_search",
        ),
        (
            Door::Embeddings,
            json!({"model": "claude", "input": "x"}),
            "embeddings",
        ),
    ];
    for (door, body, field) in cases {
        let (status, text) = send(&e, door, &body).await;
        assert_400(door, status, &text, field);
    }
    // Anthropic's front door requires `anthropic-version`, as Anthropic does.
    let resp = client()
        .post(format!("{}/v1/messages", e.api))
        .header("x-api-key", CLIENT_KEY)
        .json(&json!({"model": "claude", "max_tokens": 5, "messages": user}))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.expect("json");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("anthropic-version")),
        "{v}"
    );
    // Nothing invalid ever reached an upstream.
    assert!(
        mock_requests(&e.mock_url).await.is_empty(),
        "a 400 must come from the gateway"
    );
}

/// The stream's events as (event name, data).
fn events(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter(|b| !b.trim().is_empty())
        .map(|b| {
            let mut name = String::new();
            let mut data = String::new();
            for line in b.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = n.to_owned();
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push_str(d);
                }
            }
            (
                name,
                serde_json::from_str(&data).unwrap_or(Value::String(data)),
            )
        })
        .collect()
}

fn stream_body(door: Door, model: &str, prompt: &str) -> Value {
    match door {
        Door::Chat => {
            json!({"model": model, "stream": true, "messages": [{"role": "user", "content": prompt}]})
        }
        Door::Completions => json!({"model": model, "stream": true, "prompt": prompt}),
        Door::Responses => json!({"model": model, "stream": true, "input": prompt}),
        _ => {
            json!({"model": model, "stream": true, "max_tokens": 100, "messages": [{"role": "user", "content": prompt}]})
        }
    }
}

/// Asserts the stream ended with an error event in the door's dialect, and nothing after.
fn assert_error_end(door: Door, what: &str, text: &str) {
    let evs = events(text);
    let (name, data) = evs
        .last()
        .unwrap_or_else(|| panic!("{what}: an empty stream"));
    match door {
        Door::Chat | Door::Completions => {
            assert!(
                data["error"]["message"].is_string(),
                "{what}: last event {data}\n{text}"
            );
            assert!(
                !text.contains("[DONE]"),
                "{what}: a broken stream must not claim completion"
            );
        }
        Door::Messages => {
            assert_eq!(name, "error", "{what}: {text}");
            assert_eq!(data["type"], "error", "{what}: {data}");
            assert!(data["error"]["type"].is_string(), "{what}: {data}");
            assert!(!text.contains("message_stop"), "{what}: {text}");
        }
        Door::Responses => {
            assert_eq!(name, "error", "{what}: {text}");
            assert!(data["message"].is_string(), "{what}: {data}");
            assert!(!text.contains("response.completed"), "{what}: {text}");
        }
        _ => unreachable!(),
    }
}

#[tokio::test]
async fn broken_upstream_streams_end_with_an_error_event_in_the_callers_dialect() {
    let e = env().await;
    let faults = [
        ("garbage", "mock.chunks=6 mock.malformed=1"),
        (
            "cut",
            "mock.chunks=6 mock.interval_ms=20 mock.disconnect_after=3",
        ),
        ("provider error event", "mock.chunks=3 mock.error_event=1"),
    ];
    for door in [
        Door::Chat,
        Door::Messages,
        Door::Responses,
        Door::Completions,
    ] {
        for model in ["chat", "claude", "gemini-chat", "bedrock-chat"] {
            for (fault, prompt) in faults {
                let (status, text) = send(&e, door, &stream_body(door, model, prompt)).await;
                let what = format!("{door:?} over {model}, {fault}");
                assert_eq!(status, 200, "{what}: {text}");
                assert_error_end(door, &what, &text);
            }
        }
    }
    let metrics = client()
        .get(format!("{}/metrics", e.admin))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .unwrap_or_default();
    for reason in [
        "malformed_event",
        "upstream_disconnect",
        "upstream_error_event",
    ] {
        assert!(
            metrics.contains(&format!(
                "switchyard_stream_errors_total{{reason=\"{reason}\"}}"
            )),
            "{reason} counted:\n{metrics}"
        );
    }
}

#[tokio::test]
async fn count_tokens_on_every_upstream() {
    let e = env().await;
    for (model, path) in [
        ("claude", Some("/v1/messages/count_tokens")),
        (
            "gemini-chat",
            Some("/v1beta/models/gemini-2.5-flash:countTokens"),
        ),
        (
            "bedrock-chat",
            Some("/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/count-tokens"),
        ),
        ("chat", None),
        ("demo", None),
    ] {
        let _ = client()
            .delete(format!("{}/_mock/requests", e.mock_url))
            .send()
            .await;
        let body = json!({"model": model, "system": "be brief", "messages": [{"role": "user", "content": "How many tokens is this sentence?"}]});
        let (status, text) = send(&e, Door::CountTokens, &body).await;
        assert_eq!(status, 200, "{model}: {text}");
        let v: Value = serde_json::from_str(&text).expect("json");
        assert!(
            v["input_tokens"].as_u64().is_some_and(|n| n > 0),
            "{model}: {v}"
        );
        let seen = mock_requests(&e.mock_url).await;
        match path {
            Some(p) => assert_eq!(
                seen.last().map(|r| r["path"].clone()),
                Some(json!(p)),
                "{model}"
            ),
            // OpenAI has no counting endpoint: its BPE counts in the gateway.
            None => assert!(seen.is_empty(), "{model}: {seen:?}"),
        }
    }
}
