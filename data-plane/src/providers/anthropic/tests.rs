use super::*;
use crate::openai::ChatRequest;

fn golden_request() -> ChatRequest {
    serde_json::from_value(json!({
        "model": "claude",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [
                {"type": "text", "text": "What is in this image?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
            ]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\":\"cat\"}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "a cat"},
            {"role": "user", "content": "Thanks"}
        ],
        "max_tokens": 100,
        "temperature": 1.5,
        "stop": "END",
        "stream": true,
        "user": "u-1",
        "tools": [{"type": "function", "function": {"name": "lookup", "description": "Look up", "parameters": {"type": "object"}}}],
        "tool_choice": "required"
    }))
    .expect("request")
}

#[test]
fn golden_request_translation() {
    let body = translate_request(&golden_request(), "claude-3-5-sonnet-latest").expect("translate");
    let v: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(
        v,
        json!({
            "model": "claude-3-5-sonnet-latest",
            "max_tokens": 100,
            "system": "Be brief.",
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "What is in this image?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
                ]},
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "call_1", "name": "lookup", "input": {"q": "cat"}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "call_1", "content": "a cat"},
                    {"type": "text", "text": "Thanks"}
                ]}
            ],
            "temperature": 1.0,
            "stop_sequences": ["END"],
            "stream": true,
            "tools": [{"name": "lookup", "description": "Look up", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "any"},
            "metadata": {"user_id": "u-1"}
        })
    );
}

#[test]
fn golden_response_translation() {
    let body = json!({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-3-5-sonnet-latest",
        "content": [
            {"type": "text", "text": "Let me check."},
            {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"q": "dog"}}
        ],
        "stop_reason": "tool_use", "stop_sequence": null,
        "usage": {"input_tokens": 12, "output_tokens": 7, "cache_read_input_tokens": 3}
    });
    let r = translate_response(body.to_string().as_bytes()).expect("translate");
    let v = serde_json::to_value(&r).expect("json");
    assert_eq!(v["id"], "msg_1");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], "Let me check.");
    assert_eq!(
        v["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
        "{\"q\":\"dog\"}"
    );
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 15, "completion_tokens": 7, "total_tokens": 22})
    );
}

fn run_stream(
    events: &[Value],
    wants_usage: bool,
) -> (Vec<Value>, Result<Flow, StreamError>, Option<Usage>) {
    let mut s = StreamState::new(wants_usage);
    let mut out = Vec::new();
    let mut last = Ok(Flow::Continue);
    for e in events {
        last = s.on_event(
            Event {
                event: None,
                data: e.to_string(),
            },
            &mut out,
        );
        if last.is_err() {
            break;
        }
    }
    let chunks = out
        .iter()
        .map(|b| {
            let text = std::str::from_utf8(b).expect("utf8");
            let data = text.trim_start_matches("data: ").trim_end();
            if data == "[DONE]" {
                json!("[DONE]")
            } else {
                serde_json::from_str(data).expect("chunk json")
            }
        })
        .collect();
    (chunks, last, s.usage())
}

#[test]
fn golden_stream_translation() {
    let events = [
        json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "content": [], "model": "claude-x", "stop_reason": null, "usage": {"input_tokens": 25, "output_tokens": 1}}}),
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        json!({"type": "ping"}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " world"}}),
        json!({"type": "content_block_stop", "index": 0}),
        json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {}}}),
        json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"q\":"}}),
        json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "\"x\"}"}}),
        json!({"type": "content_block_stop", "index": 1}),
        json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"output_tokens": 15}}),
        json!({"type": "message_stop"}),
    ];
    let (chunks, last, usage) = run_stream(&events, true);
    assert_eq!(last.expect("ok"), Flow::Done);
    assert_eq!(usage, Some(Usage::new(25, 15)));
    assert_eq!(chunks.len(), 9, "{chunks:#?}");
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    assert_eq!(chunks[0]["id"], "msg_1");
    assert_eq!(chunks[1]["choices"][0]["delta"]["content"], "Hello");
    assert_eq!(chunks[2]["choices"][0]["delta"]["content"], " world");
    assert_eq!(
        chunks[3]["choices"][0]["delta"]["tool_calls"][0],
        json!({"index": 0, "id": "toolu_1", "type": "function", "function": {"name": "lookup", "arguments": ""}})
    );
    assert_eq!(
        chunks[4]["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"],
        "{\"q\":"
    );
    assert_eq!(chunks[6]["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(chunks[7]["choices"], json!([]));
    assert_eq!(
        chunks[7]["usage"],
        json!({"prompt_tokens": 25, "completion_tokens": 15, "total_tokens": 40})
    );
    assert_eq!(chunks[8], json!("[DONE]"));

    let (chunks, _, _) = run_stream(&events, false);
    assert_eq!(chunks.len(), 8, "no usage chunk unless asked");
}

#[test]
fn stream_errors_end_the_stream() {
    let start = json!({"type": "message_start", "message": {"id": "m", "model": "c", "usage": {"input_tokens": 1}}});
    let (chunks, last, _) = run_stream(
        &[
            start.clone(),
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
        ],
        false,
    );
    assert!(last.is_err());
    assert_eq!(
        chunks.last().expect("error chunk")["error"]["type"],
        "overloaded_error"
    );

    let (_, last, _) = run_stream(&[start, json!({"type": "bogus"})], false);
    assert_eq!(last.expect_err("malformed").label, "malformed_event");

    let (_, last, _) = run_stream(
        &[
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "x"}}),
        ],
        false,
    );
    assert!(last.is_err(), "a stream must start with message_start");
}

#[test]
fn messages_url_handles_both_base_forms() {
    assert_eq!(
        messages_url("https://api.anthropic.com"),
        "https://api.anthropic.com/v1/messages"
    );
    assert_eq!(
        messages_url("http://127.0.0.1:9/v1"),
        "http://127.0.0.1:9/v1/messages"
    );
}
