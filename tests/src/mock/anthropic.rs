//! Anthropic's Messages API: messages (thinking with signatures, tool use, cache usage),
//! the event stream exactly as Anthropic emits it, count_tokens and errors.

use bytes::Bytes;
use http::{Response, StatusCode};
use serde_json::{Value, json};

use super::script::{Script, Stop};
use super::{Body, Knobs, fixture, full, json_response, stream_response};

pub(crate) fn error(status: u16, message: &str) -> Value {
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

fn stop_reason(s: &Script) -> &'static str {
    match s.stop {
        Stop::End => "end_turn",
        Stop::Length => "max_tokens",
        Stop::Tools => "tool_use",
    }
}

fn usage(s: &Script, output: u64) -> Value {
    json!({"input_tokens": s.uncached_tokens(), "cache_creation_input_tokens": s.cache_write,
           "cache_read_input_tokens": s.cache_read, "output_tokens": output, "service_tier": "standard"})
}

pub(crate) fn message(model: &str, s: &Script, knobs: &Knobs) -> Response<Body> {
    if knobs.malformed {
        return full(
            StatusCode::OK,
            "application/json",
            "{\"type\": \"message\", \"content\": [",
        );
    }
    let mut v = fixture(include_str!("../../fixtures/anthropic/message.json"));
    v["model"] = json!(model);
    let mut content = Vec::new();
    if let Some(t) = &s.thinking {
        content.push(json!({"type": "thinking", "thinking": t, "signature": s.signature}));
    }
    if !s.chunks.is_empty() {
        content.push(json!({"type": "text", "text": s.text()}));
    }
    for c in &s.calls {
        content.push(json!({"type": "tool_use", "id": c.id, "name": c.name, "input": c.args}));
    }
    v["content"] = Value::Array(content);
    v["stop_reason"] = json!(stop_reason(s));
    v["usage"] = usage(s, s.output_tokens());
    json_response(StatusCode::OK, &v)
}

fn event(name: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

pub(crate) fn stream(model: &str, s: &Script, knobs: &Knobs) -> Response<Body> {
    let f = fixture(include_str!("../../fixtures/anthropic/stream.json"));
    let mut start = f["message_start"].clone();
    start["message"]["model"] = json!(model);
    start["message"]["usage"] = usage(s, 1);
    let mut events = vec![event("message_start", &start)];
    let mut index = 0;
    let block = |index: usize, content_block: Value| {
        let mut e = f["content_block_start"].clone();
        e["index"] = json!(index);
        e["content_block"] = content_block;
        event("content_block_start", &e)
    };
    let delta = |index: usize, d: Value| {
        let mut e = f["content_block_delta"].clone();
        e["index"] = json!(index);
        e["delta"] = d;
        event("content_block_delta", &e)
    };
    let stop = |index: usize| {
        let mut e = f["content_block_stop"].clone();
        e["index"] = json!(index);
        event("content_block_stop", &e)
    };
    if let Some(t) = &s.thinking {
        events.push(block(
            index,
            json!({"type": "thinking", "thinking": "", "signature": ""}),
        ));
        for w in t.split_inclusive(' ') {
            events.push(delta(
                index,
                json!({"type": "thinking_delta", "thinking": w}),
            ));
        }
        events.push(delta(
            index,
            json!({"type": "signature_delta", "signature": s.signature}),
        ));
        events.push(stop(index));
        index += 1;
    }
    if !s.chunks.is_empty() {
        events.push(block(index, json!({"type": "text", "text": ""})));
        events.push(event("ping", &f["ping"]));
        for (i, t) in s.chunks.iter().enumerate() {
            if knobs.malformed && i == s.chunks.len() / 2 {
                events.push(Bytes::from_static(
                    b"event: content_block_delta\ndata: {broken\n\n",
                ));
            }
            events.push(delta(index, json!({"type": "text_delta", "text": t})));
        }
        events.push(stop(index));
        index += 1;
    }
    for c in &s.calls {
        events.push(block(
            index,
            json!({"type": "tool_use", "id": c.id, "name": c.name, "input": {}}),
        ));
        let args = c.args.to_string();
        let (a, b) = args.split_at(args.len() / 2);
        for piece in [a, b] {
            events.push(delta(
                index,
                json!({"type": "input_json_delta", "partial_json": piece}),
            ));
        }
        events.push(stop(index));
        index += 1;
    }
    if knobs.error_event {
        events.push(event("error", &f["error"]));
        return stream_response(events, knobs, "text/event-stream");
    }
    let mut md = f["message_delta"].clone();
    md["delta"]["stop_reason"] = json!(stop_reason(s));
    md["usage"] = json!({"output_tokens": s.output_tokens()});
    events.push(event("message_delta", &md));
    events.push(event("message_stop", &f["message_stop"]));
    stream_response(events, knobs, "text/event-stream")
}

pub(crate) fn count(s: &Script) -> Response<Body> {
    let mut v = fixture(include_str!("../../fixtures/anthropic/count_tokens.json"));
    v["input_tokens"] = json!(s.prompt_tokens);
    json_response(StatusCode::OK, &v)
}
