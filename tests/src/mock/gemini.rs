//! Gemini: `generateContent`, `streamGenerateContent?alt=sse` (thought parts, function calls
//! with thought signatures, usage in `usageMetadata`), `embedContent`,
//! `batchEmbedContents`, `countTokens`, errors, and the `x-goog-api-key` check.

use bytes::Bytes;
use http::{Response, StatusCode};
use serde_json::{Value, json};

use super::script::{Script, Stop};
use super::{Body, Knobs, embedding_of, fixture, full, json_response, stream_response};

/// Any non-empty key is accepted; a missing one gets Gemini's own error.
pub(crate) fn authorized(parts: &http::request::Parts) -> bool {
    let header = parts
        .headers
        .get("x-goog-api-key")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|k| !k.is_empty());
    let query = parts.uri.query().is_some_and(|q| {
        q.split('&')
            .any(|kv| kv.starts_with("key=") && kv.len() > 4)
    });
    header || query
}

pub(crate) fn error(status: u16, message: &str) -> Value {
    let name = match status {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "INTERNAL",
    };
    json!({"error": {"code": status, "message": message, "status": name}})
}

fn finish(s: &Script) -> &'static str {
    match s.stop {
        Stop::Length => "MAX_TOKENS",
        _ => "STOP",
    }
}

fn usage(s: &Script) -> Value {
    let candidates = s.chunks.len() as u64 + 5 * s.calls.len() as u64;
    let thoughts = s.thinking_tokens();
    let mut u = json!({"promptTokenCount": s.prompt_tokens, "candidatesTokenCount": candidates,
                       "totalTokenCount": s.prompt_tokens + candidates + thoughts,
                       "promptTokensDetails": [{"modality": "TEXT", "tokenCount": s.prompt_tokens}]});
    if thoughts > 0 {
        u["thoughtsTokenCount"] = json!(thoughts);
    }
    if s.cache_read > 0 {
        u["cachedContentTokenCount"] = json!(s.cache_read);
    }
    u
}

fn parts(s: &Script) -> Vec<Value> {
    let mut out = Vec::new();
    if let Some(t) = &s.thinking {
        out.push(json!({"text": t, "thought": true}));
    }
    if !s.chunks.is_empty() {
        out.push(json!({"text": s.text()}));
    }
    for (i, c) in s.calls.iter().enumerate() {
        let mut p = json!({"functionCall": {"name": c.name, "args": c.args}});
        if i == 0 && s.thinking.is_some() {
            p["thoughtSignature"] = json!(s.signature);
        }
        out.push(p);
    }
    out
}

pub(crate) fn generate(model: &str, s: &Script, knobs: &Knobs) -> Response<Body> {
    if knobs.malformed {
        return full(StatusCode::OK, "application/json", "{\"candidates\": [");
    }
    let mut v = fixture(include_str!("../../fixtures/gemini/generate_content.json"));
    v["modelVersion"] = json!(model);
    v["candidates"][0]["content"]["parts"] = Value::Array(parts(s));
    v["candidates"][0]["finishReason"] = json!(finish(s));
    v["usageMetadata"] = usage(s);
    json_response(StatusCode::OK, &v)
}

pub(crate) fn stream(model: &str, s: &Script, knobs: &Knobs) -> Response<Body> {
    let base = fixture(include_str!("../../fixtures/gemini/generate_content.json"));
    let chunk = |part: Option<Value>, last: bool| {
        let mut c = base.clone();
        c["modelVersion"] = json!(model);
        let cand = &mut c["candidates"][0];
        cand["content"]["parts"] = match part {
            Some(p) => json!([p]),
            None => json!([]),
        };
        if last {
            cand["finishReason"] = json!(finish(s));
            c["usageMetadata"] = usage(s);
        } else {
            cand.as_object_mut().map(|o| o.remove("finishReason"));
            c.as_object_mut().map(|o| o.remove("usageMetadata"));
        }
        Bytes::from(format!("data: {c}\n\n"))
    };
    let mut events = Vec::new();
    if let Some(t) = &s.thinking {
        let words: Vec<&str> = t.split_inclusive(' ').collect();
        for w in words {
            events.push(chunk(Some(json!({"text": w, "thought": true})), false));
        }
    }
    for (i, t) in s.chunks.iter().enumerate() {
        if knobs.malformed && i == s.chunks.len() / 2 {
            events.push(Bytes::from_static(b"data: {broken\n\n"));
        }
        events.push(chunk(Some(json!({"text": t})), false));
    }
    for (i, c) in s.calls.iter().enumerate() {
        let mut p = json!({"functionCall": {"name": c.name, "args": c.args}});
        if i == 0 && s.thinking.is_some() {
            p["thoughtSignature"] = json!(s.signature);
        }
        events.push(chunk(Some(p), false));
    }
    if knobs.error_event {
        events.push(Bytes::from(format!(
            "data: {}\n\n",
            error(503, "The model is overloaded. Please try again later.")
        )));
        return stream_response(events, knobs, "text/event-stream");
    }
    events.push(chunk(None, true));
    stream_response(events, knobs, "text/event-stream")
}

pub(crate) fn embed(body: &Value, batch: bool, knobs: &Knobs) -> Response<Body> {
    if knobs.malformed {
        return full(StatusCode::OK, "application/json", "not json");
    }
    let one = |req: &Value| {
        let text = req
            .pointer("/content/parts/0/text")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let dims = req
            .get("outputDimensionality")
            .and_then(Value::as_u64)
            .unwrap_or(4) as usize;
        json!({"values": embedding_of(&text, dims)})
    };
    if batch {
        let mut v = fixture(include_str!(
            "../../fixtures/gemini/batch_embed_contents.json"
        ));
        let list: Vec<Value> = body
            .get("requests")
            .and_then(Value::as_array)
            .map(|r| r.iter().map(one).collect())
            .unwrap_or_default();
        v["embeddings"] = Value::Array(list);
        json_response(StatusCode::OK, &v)
    } else {
        let mut v = fixture(include_str!("../../fixtures/gemini/embed_content.json"));
        v["embedding"] = one(body);
        json_response(StatusCode::OK, &v)
    }
}

pub(crate) fn count(s: &Script) -> Response<Body> {
    let mut v = fixture(include_str!("../../fixtures/gemini/count_tokens.json"));
    v["totalTokens"] = json!(s.prompt_tokens);
    v["promptTokensDetails"][0]["tokenCount"] = json!(s.prompt_tokens);
    json_response(StatusCode::OK, &v)
}
