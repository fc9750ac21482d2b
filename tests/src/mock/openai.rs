//! OpenAI's wire formats: chat completions (with DeepSeek-style `reasoning_content` for
//! thinking, as OpenAI-compatible reasoning servers send it), legacy completions, the
//! Responses API, embeddings and errors.

use bytes::Bytes;
use http::StatusCode;
use serde_json::{Value, json};

use super::script::{Script, Stop};
use super::{
    Body, Knobs, created, embedding_of, error_response, fixture, full, json_response,
    stream_response,
};
use http::Response;

pub(crate) fn error(status: u16, message: &str) -> Value {
    let (kind, code) = match status {
        401 => ("invalid_request_error", "invalid_api_key"),
        404 => ("invalid_request_error", "model_not_found"),
        429 => ("requests", "rate_limit_exceeded"),
        400..=499 => ("invalid_request_error", "invalid_request"),
        503 => ("server_error", "overloaded"),
        _ => ("server_error", "server_error"),
    };
    json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
}

/// OpenAI echoes a masked copy of the key it rejected.
pub(crate) fn rejected_key_message(headers: &http::HeaderMap) -> String {
    let key = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    let tail = &key[key.len().saturating_sub(4)..];
    format!(
        "Incorrect API key provided: {}****{tail}. You can find your API key at https://platform.openai.com/account/api-keys.",
        &key[..key.len().min(3)]
    )
}

fn finish(s: &Script) -> &'static str {
    match s.stop {
        Stop::End => "stop",
        Stop::Length => "length",
        Stop::Tools => "tool_calls",
    }
}

fn usage(s: &Script) -> Value {
    let out = s.output_tokens();
    json!({"prompt_tokens": s.prompt_tokens, "completion_tokens": out, "total_tokens": s.prompt_tokens + out,
           "prompt_tokens_details": {"cached_tokens": s.cache_read, "audio_tokens": 0},
           "completion_tokens_details": {"reasoning_tokens": s.thinking_tokens(), "audio_tokens": 0,
                                         "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}})
}

fn calls(s: &Script) -> Vec<Value> {
    s.calls
        .iter()
        .map(|c| json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.args.to_string()}}))
        .collect()
}

pub(crate) fn chat(model: &str, s: &Script, knobs: &Knobs) -> Response<Body> {
    if knobs.malformed {
        return full(
            StatusCode::OK,
            "application/json",
            "{\"id\": \"chatcmpl-mock\", \"choices\": [",
        );
    }
    let mut v = fixture(include_str!("../../fixtures/openai/chat_completion.json"));
    v["model"] = json!(model);
    v["created"] = json!(created());
    let text = s.text();
    let msg = &mut v["choices"][0]["message"];
    msg["content"] = if text.is_empty() && !s.calls.is_empty() {
        Value::Null
    } else {
        json!(text)
    };
    if !s.calls.is_empty() {
        msg["tool_calls"] = Value::Array(calls(s));
    }
    if let Some(t) = &s.thinking {
        msg["reasoning_content"] = json!(t);
    }
    v["choices"][0]["finish_reason"] = json!(finish(s));
    v["usage"] = usage(s);
    json_response(StatusCode::OK, &v)
}

fn sse(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

pub(crate) fn chat_stream(body: &Value, model: &str, s: &Script, knobs: &Knobs) -> Response<Body> {
    let include_usage = body
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mut template = fixture(include_str!(
        "../../fixtures/openai/chat_completion_chunk.json"
    ));
    template["model"] = json!(model);
    template["created"] = json!(created());
    if include_usage {
        template["usage"] = Value::Null;
    }
    let chunk = |delta: Value, finish: Value| {
        let mut c = template.clone();
        c["choices"][0]["delta"] = delta;
        c["choices"][0]["finish_reason"] = finish;
        sse(&c)
    };
    let mut events = vec![chunk(
        json!({"role": "assistant", "content": "", "refusal": null}),
        Value::Null,
    )];
    if let Some(t) = &s.thinking {
        for w in t.split_inclusive(' ') {
            events.push(chunk(json!({"reasoning_content": w}), Value::Null));
        }
    }
    for (i, t) in s.chunks.iter().enumerate() {
        if knobs.malformed && i == s.chunks.len() / 2 {
            events.push(Bytes::from_static(b"data: {this is not json\n\n"));
        }
        events.push(chunk(json!({"content": t}), Value::Null));
    }
    for (i, c) in s.calls.iter().enumerate() {
        events.push(chunk(
            json!({"tool_calls": [{"index": i, "id": c.id, "type": "function", "function": {"name": c.name, "arguments": ""}}]}),
            Value::Null,
        ));
        let args = c.args.to_string();
        let (a, b) = args.split_at(args.len() / 2);
        for piece in [a, b] {
            events.push(chunk(
                json!({"tool_calls": [{"index": i, "function": {"arguments": piece}}]}),
                Value::Null,
            ));
        }
    }
    if knobs.error_event {
        events.push(sse(&json!({"error": {"message": "The server is overloaded.", "type": "server_error", "param": null, "code": "overloaded"}})));
        return stream_response(events, knobs, "text/event-stream");
    }
    events.push(chunk(json!({}), json!(finish(s))));
    if include_usage {
        let mut u = template.clone();
        u["choices"] = json!([]);
        u["usage"] = usage(s);
        events.push(sse(&u));
    }
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    stream_response(events, knobs, "text/event-stream")
}

pub(crate) fn completion(model: &str, s: &Script, knobs: &Knobs) -> Response<Body> {
    if knobs.malformed {
        return full(StatusCode::OK, "application/json", "{\"choices\": [");
    }
    let mut v = fixture(include_str!("../../fixtures/openai/completion.json"));
    v["model"] = json!(model);
    v["created"] = json!(created());
    v["choices"][0]["text"] = json!(s.text());
    v["choices"][0]["finish_reason"] = json!(finish(s));
    let out = s.output_tokens();
    v["usage"] = json!({"prompt_tokens": s.prompt_tokens, "completion_tokens": out, "total_tokens": s.prompt_tokens + out});
    json_response(StatusCode::OK, &v)
}

pub(crate) fn completion_stream(
    body: &Value,
    model: &str,
    s: &Script,
    knobs: &Knobs,
) -> Response<Body> {
    let include_usage = body
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let base = json!({"id": "cmpl-mock", "object": "text_completion", "created": created(), "model": model});
    let chunk = |text: &str, finish: Value| {
        let mut c = base.clone();
        c["choices"] =
            json!([{"text": text, "index": 0, "logprobs": null, "finish_reason": finish}]);
        sse(&c)
    };
    let mut events = Vec::new();
    for (i, t) in s.chunks.iter().enumerate() {
        if knobs.malformed && i == s.chunks.len() / 2 {
            events.push(Bytes::from_static(b"data: {this is not json\n\n"));
        }
        events.push(chunk(t, Value::Null));
    }
    if knobs.error_event {
        events.push(sse(&json!({"error": {"message": "The server is overloaded.", "type": "server_error", "param": null, "code": "overloaded"}})));
        return stream_response(events, knobs, "text/event-stream");
    }
    events.push(chunk("", json!(finish(s))));
    if include_usage {
        let mut u = base.clone();
        let out = s.output_tokens();
        u["choices"] = json!([]);
        u["usage"] = json!({"prompt_tokens": s.prompt_tokens, "completion_tokens": out, "total_tokens": s.prompt_tokens + out});
        events.push(sse(&u));
    }
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    stream_response(events, knobs, "text/event-stream")
}

fn responses_usage(s: &Script) -> Value {
    let out = s.output_tokens();
    json!({"input_tokens": s.prompt_tokens, "input_tokens_details": {"cached_tokens": s.cache_read, "cache_write_tokens": s.cache_write},
           "output_tokens": out, "output_tokens_details": {"reasoning_tokens": s.thinking_tokens()},
           "total_tokens": s.prompt_tokens + out})
}

fn output_items(s: &Script) -> Vec<Value> {
    let mut out = Vec::new();
    if let Some(t) = &s.thinking {
        out.push(json!({"type": "reasoning", "id": "rs_mock0", "summary": [{"type": "summary_text", "text": t}]}));
    }
    if !s.chunks.is_empty() {
        out.push(
            json!({"type": "message", "id": "msg_mock0", "status": "completed", "role": "assistant",
                        "content": [{"type": "output_text", "text": s.text(), "annotations": []}]}),
        );
    }
    for (i, c) in s.calls.iter().enumerate() {
        out.push(json!({"type": "function_call", "id": format!("fc_mock{i}"), "call_id": c.id, "name": c.name,
                        "arguments": c.args.to_string(), "status": "completed"}));
    }
    out
}

fn response_object(
    model: &str,
    s: &Script,
    status: &str,
    output: Vec<Value>,
    usage: Value,
) -> Value {
    let mut v = fixture(include_str!("../../fixtures/openai/response.json"));
    v["id"] = json!("resp_mock0001");
    v["model"] = json!(model);
    v["created_at"] = json!(created());
    v["status"] = json!(status);
    v["output"] = Value::Array(output);
    v["usage"] = usage;
    if s.stop == Stop::Length && status != "in_progress" {
        v["status"] = json!("incomplete");
        v["incomplete_details"] = json!({"reason": "max_output_tokens"});
    }
    v
}

pub(crate) fn responses(model: &str, s: &Script, knobs: &Knobs) -> Response<Body> {
    if knobs.malformed {
        return full(
            StatusCode::OK,
            "application/json",
            "{\"object\": \"response\", \"output\": [",
        );
    }
    json_response(
        StatusCode::OK,
        &response_object(model, s, "completed", output_items(s), responses_usage(s)),
    )
}

/// Responses API events with their `sequence_number`.
#[derive(Default)]
struct Emitter {
    events: Vec<Bytes>,
    seq: u64,
}

impl Emitter {
    fn emit(&mut self, name: &str, mut v: Value) {
        v["type"] = json!(name);
        v["sequence_number"] = json!(self.seq);
        self.seq += 1;
        self.events
            .push(Bytes::from(format!("event: {name}\ndata: {v}\n\n")));
    }
}

pub(crate) fn responses_stream(model: &str, s: &Script, knobs: &Knobs) -> Response<Body> {
    let mut e = Emitter::default();
    let emit = |e: &mut Emitter, name: &str, v: Value| e.emit(name, v);
    let created_obj = response_object(model, s, "in_progress", Vec::new(), Value::Null);
    emit(&mut e, "response.created", json!({"response": created_obj}));
    emit(
        &mut e,
        "response.in_progress",
        json!({"response": created_obj}),
    );
    let items = output_items(s);
    for (oi, item) in items.iter().enumerate() {
        let id = item["id"].clone();
        match item["type"].as_str() {
            Some("reasoning") => {
                emit(
                    &mut e,
                    "response.output_item.added",
                    json!({"output_index": oi, "item": {"type": "reasoning", "id": id, "summary": []}}),
                );
                let text = item["summary"][0]["text"].as_str().unwrap_or_default();
                emit(
                    &mut e,
                    "response.reasoning_summary_part.added",
                    json!({"item_id": id, "output_index": oi, "summary_index": 0, "part": {"type": "summary_text", "text": ""}}),
                );
                for w in text.split_inclusive(' ') {
                    emit(
                        &mut e,
                        "response.reasoning_summary_text.delta",
                        json!({"item_id": id, "output_index": oi, "summary_index": 0, "delta": w}),
                    );
                }
                emit(
                    &mut e,
                    "response.reasoning_summary_text.done",
                    json!({"item_id": id, "output_index": oi, "summary_index": 0, "text": text}),
                );
                emit(
                    &mut e,
                    "response.reasoning_summary_part.done",
                    json!({"item_id": id, "output_index": oi, "summary_index": 0, "part": {"type": "summary_text", "text": text}}),
                );
            }
            Some("message") => {
                emit(
                    &mut e,
                    "response.output_item.added",
                    json!({"output_index": oi, "item": {"type": "message", "id": id, "status": "in_progress", "role": "assistant", "content": []}}),
                );
                emit(
                    &mut e,
                    "response.content_part.added",
                    json!({"item_id": id, "output_index": oi, "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": []}}),
                );
                for (i, t) in s.chunks.iter().enumerate() {
                    if knobs.malformed && i == s.chunks.len() / 2 {
                        e.events.push(Bytes::from_static(
                            b"event: response.output_text.delta\ndata: {broken\n\n",
                        ));
                    }
                    emit(
                        &mut e,
                        "response.output_text.delta",
                        json!({"item_id": id, "output_index": oi, "content_index": 0, "delta": t, "logprobs": []}),
                    );
                }
                emit(
                    &mut e,
                    "response.output_text.done",
                    json!({"item_id": id, "output_index": oi, "content_index": 0, "text": s.text(), "logprobs": []}),
                );
                emit(
                    &mut e,
                    "response.content_part.done",
                    json!({"item_id": id, "output_index": oi, "content_index": 0, "part": {"type": "output_text", "text": s.text(), "annotations": []}}),
                );
            }
            _ => {
                let mut added = item.clone();
                added["arguments"] = json!("");
                added["status"] = json!("in_progress");
                emit(
                    &mut e,
                    "response.output_item.added",
                    json!({"output_index": oi, "item": added}),
                );
                emit(
                    &mut e,
                    "response.function_call_arguments.delta",
                    json!({"item_id": id, "output_index": oi, "delta": item["arguments"]}),
                );
                emit(
                    &mut e,
                    "response.function_call_arguments.done",
                    json!({"item_id": id, "output_index": oi, "arguments": item["arguments"]}),
                );
            }
        }
        emit(
            &mut e,
            "response.output_item.done",
            json!({"output_index": oi, "item": item}),
        );
    }
    if knobs.error_event {
        emit(
            &mut e,
            "error",
            json!({"code": "server_error", "message": "The server is overloaded.", "param": null}),
        );
        return stream_response(e.events, knobs, "text/event-stream");
    }
    let done = response_object(model, s, "completed", items, responses_usage(s));
    let name = if done["status"] == "incomplete" {
        "response.incomplete"
    } else {
        "response.completed"
    };
    emit(&mut e, name, json!({"response": done}));
    stream_response(e.events, knobs, "text/event-stream")
}

pub(crate) fn embeddings(body: &Value, model: &str, knobs: &Knobs) -> Response<Body> {
    if knobs.malformed {
        return full(StatusCode::OK, "application/json", "not json");
    }
    let inputs: Vec<String> = match body.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
            .collect(),
        _ => return error_response(super::Family::OpenAi, 400, "input is required", None),
    };
    let dims = body.get("dimensions").and_then(Value::as_u64).unwrap_or(4) as usize;
    let mut v = fixture(include_str!("../../fixtures/openai/embedding.json"));
    v["data"] = inputs
        .iter()
        .enumerate()
        .map(
            |(i, s)| json!({"object": "embedding", "index": i, "embedding": embedding_of(s, dims)}),
        )
        .collect();
    v["model"] = json!(model);
    let t: u64 = inputs
        .iter()
        .map(|s| (s.len() as u64).div_ceil(4).max(1))
        .sum();
    v["usage"] = json!({"prompt_tokens": t, "total_tokens": t});
    json_response(StatusCode::OK, &v)
}
