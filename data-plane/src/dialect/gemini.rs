//! Google Gemini (`generateContent`, `streamGenerateContent?alt=sse`, `embedContent`,
//! `batchEmbedContents`, `countTokens`) as an upstream format.
//!
//! Mapping notes: system and developer messages become `systemInstruction`; tool results
//! become `functionResponse` parts named after their call; a tool's JSON Schema travels as
//! `parametersJsonSchema` and a response schema as `responseJsonSchema`; thinking is
//! `thinkingConfig` (budget, and `includeThoughts` so thought summaries come back as
//! thinking); thought signatures ride on thinking blocks.

use std::collections::HashMap;

use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::embeddings::{Embeddings, EmbeddingsRequest};
use super::{
    Flow, class_of_status, malformed, mentions_context_window, upstream_error, upstream_garbage,
};
use crate::dialect::codec::{self, Codec, CountTokens};
use crate::error::{FailureClass, ProxyError};
use crate::llm::{
    Block, Delta, Event, Finish, FinishReason, Part, Request, Response, ResponseFormat, Role,
    Source, ToolCall, ToolChoice, Usage,
};
use crate::upstream::Frame;

/// Gemini `generateContent`: a wire the gateway translates into.
pub static CODEC: Codec = Codec {
    format: crate::llm::Format::Gemini,
    client: None,
    upstream: Some(codec::Upstream {
        encode: |r, _| encode_request(r),
        decode: |body, _| decode_response(body),
        decoder: |_| codec::Decoder::Gemini(Decoder::default()),
        classify: |status, headers, body| classify(status, body, codec::retry_after(headers)),
        count_tokens: Some(CountTokens {
            body: count_tokens_body,
            read: count_tokens_of,
        }),
    }),
};

const TARGET: &str = "Gemini";

fn media_type_of_url(url: &str) -> &'static str {
    let path = url
        .split(['?', '#'])
        .next()
        .unwrap_or(url)
        .to_ascii_lowercase();
    match path.rsplit('.').next() {
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("webp") => "image/webp",
        Some("gif") => "image/gif",
        Some("pdf") => "application/pdf",
        _ => "application/octet-stream",
    }
}

fn media_part(s: &Source) -> Value {
    match s {
        Source::Base64 { media_type, data } => {
            json!({"inlineData": {"mimeType": media_type, "data": data}})
        }
        Source::Url(u) => json!({"fileData": {"mimeType": media_type_of_url(u), "fileUri": u}}),
        Source::Text(t) => json!({"text": t}),
    }
}

/// Encodes a canonical request as a `generateContent` body (the model is in the URL).
pub fn encode_request(r: &Request) -> Result<Bytes, ProxyError> {
    crate::llm::to_bytes(&encode_value(r)?)
}

fn encode_value(r: &Request) -> Result<Value, ProxyError> {
    if let Some(f) = r.unmapped_field() {
        return Err(ProxyError::unmappable(f, TARGET));
    }
    let mut names: HashMap<&str, &str> = HashMap::new();
    for m in &r.messages {
        for p in &m.parts {
            if let Part::ToolCall(c) = p {
                names.insert(&c.id, &c.name);
            }
        }
    }
    let mut system = Vec::new();
    let mut contents: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for (i, m) in r.messages.iter().enumerate() {
        let mut parts = Vec::new();
        for (k, p) in m.parts.iter().enumerate() {
            let v = match p {
                Part::Text { text, .. } if text.is_empty() => continue,
                Part::Text { text, .. } => json!({"text": text}),
                Part::Image(media) | Part::Document { media, .. } => media_part(&media.source),
                Part::Thinking { text, signature } => {
                    let mut v = json!({"text": text, "thought": true});
                    if let Some(s) = signature {
                        v["thoughtSignature"] = json!(s);
                    }
                    v
                }
                Part::RedactedThinking { .. } => continue,
                Part::ToolCall(c) => {
                    let args: Value = if c.arguments.trim().is_empty() {
                        json!({})
                    } else {
                        serde_json::from_str(&c.arguments).map_err(|e| {
                            ProxyError::invalid(format!(
                                "messages[{i}] part {k}: the arguments of tool call `{}` are not valid JSON: {e}",
                                c.id
                            ))
                        })?
                    };
                    let mut v = json!({"functionCall": {"name": c.name, "args": args, "id": c.id}});
                    if let Some(s) = &c.signature {
                        v["thoughtSignature"] = json!(s);
                    }
                    v
                }
                Part::ToolResult(t) => {
                    let name = t
                        .name
                        .as_deref()
                        .or_else(|| names.get(t.call_id.as_str()).copied())
                        .ok_or_else(|| {
                            ProxyError::invalid(format!(
                                "messages[{i}]: the tool result for `{}` answers no tool call in the conversation (Gemini needs the tool's name)",
                                t.call_id
                            ))
                        })?;
                    let text = t.text();
                    let response = match serde_json::from_str::<Value>(&text) {
                        Ok(Value::Object(o)) => Value::Object(o),
                        _ => json!({"result": text}),
                    };
                    let mut v = json!({"functionResponse": {"name": name, "id": t.call_id, "response": response}});
                    if t.is_error {
                        v["functionResponse"]["response"] = json!({"error": text});
                    }
                    v
                }
            };
            parts.push(v);
        }
        let role = match m.role {
            Role::System | Role::Developer => {
                system.extend(parts);
                continue;
            }
            Role::User | Role::Tool => "user",
            Role::Assistant => "model",
        };
        if parts.is_empty() {
            continue;
        }
        match contents.last_mut() {
            Some((last, p)) if *last == role => p.extend(parts),
            _ => contents.push((role, parts)),
        }
    }
    let mut body = Map::new();
    body.insert(
        "contents".into(),
        Value::Array(
            contents
                .into_iter()
                .map(|(role, parts)| json!({"role": role, "parts": parts}))
                .collect(),
        ),
    );
    if !system.is_empty() {
        body.insert("systemInstruction".into(), json!({"parts": system}));
    }
    if !r.tools.is_empty() {
        let decls: Vec<Value> = r
            .tools
            .iter()
            .map(|t| {
                let mut d = json!({"name": t.name, "parametersJsonSchema": t.parameters});
                if let Some(desc) = &t.description {
                    d["description"] = json!(desc);
                }
                d
            })
            .collect();
        body.insert("tools".into(), json!([{"functionDeclarations": decls}]));
    }
    if let Some(c) = &r.tool_choice {
        let cfg = match c {
            ToolChoice::Auto => json!({"mode": "AUTO"}),
            ToolChoice::None => json!({"mode": "NONE"}),
            ToolChoice::Required => json!({"mode": "ANY"}),
            ToolChoice::Named(n) => json!({"mode": "ANY", "allowedFunctionNames": [n]}),
        };
        body.insert("toolConfig".into(), json!({"functionCallingConfig": cfg}));
    }
    let mut g = Map::new();
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            g.insert(k.into(), v);
        }
    };
    put("temperature", r.temperature.map(|v| json!(v)));
    put("topP", r.top_p.map(|v| json!(v)));
    put("topK", r.top_k.map(|v| json!(v)));
    put("maxOutputTokens", r.max_output_tokens.map(|v| json!(v)));
    put("stopSequences", (!r.stop.is_empty()).then(|| json!(r.stop)));
    put("seed", r.seed.map(|v| json!(v)));
    put("presencePenalty", r.presence_penalty.map(|v| json!(v)));
    put("frequencyPenalty", r.frequency_penalty.map(|v| json!(v)));
    match &r.response_format {
        None | Some(ResponseFormat::Text) => {}
        Some(ResponseFormat::JsonObject) => {
            put("responseMimeType", Some(json!("application/json")))
        }
        Some(ResponseFormat::JsonSchema { schema, .. }) => {
            put("responseMimeType", Some(json!("application/json")));
            put("responseJsonSchema", Some(schema.clone()));
        }
    }
    if let Some(x) = &r.reasoning {
        let off = x.effort() == Some(crate::llm::Effort::None);
        let mut t = json!({"includeThoughts": !off});
        if let Some(b) = if off { Some(0) } else { x.budget() } {
            t["thinkingBudget"] = json!(b);
        }
        put("thinkingConfig", Some(t));
    }
    if !g.is_empty() {
        body.insert("generationConfig".into(), Value::Object(g));
    }
    if r.parallel_tool_calls == Some(false) {
        return Err(ProxyError::unmappable("parallel_tool_calls", TARGET));
    }
    Ok(Value::Object(body))
}

/// The body of `countTokens` for a canonical request.
pub fn count_tokens_body(r: &Request, model: &str) -> Result<Bytes, ProxyError> {
    let mut inner = encode_value(r)?;
    inner["model"] = json!(format!("models/{model}"));
    crate::llm::to_bytes(&json!({"generateContentRequest": inner}))
}

/// `countTokens`' answer.
pub fn count_tokens_of(body: &[u8]) -> Result<u64, ProxyError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct C {
        #[serde(default)]
        total_tokens: u64,
    }
    serde_json::from_slice::<C>(body)
        .map(|c| c.total_tokens)
        .map_err(upstream_garbage)
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct WireResponse {
    #[serde(default)]
    candidates: Vec<Candidate>,
    #[serde(default)]
    usage_metadata: Option<UsageMetadata>,
    #[serde(default)]
    model_version: Option<String>,
    #[serde(default)]
    response_id: Option<String>,
    #[serde(default)]
    prompt_feedback: Option<PromptFeedback>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct PromptFeedback {
    #[serde(default)]
    block_reason: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Candidate {
    #[serde(default)]
    content: Option<Content>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize, Default)]
struct Content {
    #[serde(default)]
    parts: Vec<WirePart>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct WirePart {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    thought: Option<bool>,
    #[serde(default)]
    thought_signature: Option<String>,
    #[serde(default)]
    function_call: Option<FunctionCall>,
}

#[derive(Deserialize)]
struct FunctionCall {
    name: String,
    #[serde(default)]
    args: Value,
    #[serde(default)]
    id: Option<String>,
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "camelCase")]
struct UsageMetadata {
    #[serde(default)]
    prompt_token_count: u64,
    #[serde(default)]
    candidates_token_count: u64,
    #[serde(default)]
    cached_content_token_count: u64,
    #[serde(default)]
    thoughts_token_count: u64,
}

impl From<UsageMetadata> for Usage {
    fn from(u: UsageMetadata) -> Self {
        Usage {
            input: u.prompt_token_count,
            output: u.candidates_token_count + u.thoughts_token_count,
            cache_read: u.cached_content_token_count,
            cache_write: 0,
            reasoning: u.thoughts_token_count,
        }
    }
}

fn finish_of(reason: &str, called: bool) -> FinishReason {
    match reason {
        "MAX_TOKENS" => FinishReason::Length,
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => {
            FinishReason::ContentFilter
        }
        _ if called => FinishReason::ToolCalls,
        _ => FinishReason::Stop,
    }
}

fn call_id(c: &FunctionCall, n: usize) -> String {
    c.id.clone()
        .filter(|i| !i.is_empty())
        .unwrap_or_else(|| format!("call_{n}_{:08x}", fastrand::u32(..)))
}

/// Decodes a `generateContent` answer.
pub fn decode_response(body: &[u8]) -> Result<Response, ProxyError> {
    let w: WireResponse = serde_json::from_slice(body).map_err(upstream_garbage)?;
    let blocked = w
        .prompt_feedback
        .as_ref()
        .and_then(|f| f.block_reason.as_ref())
        .is_some();
    let cand = w.candidates.into_iter().next().unwrap_or_default();
    let mut parts = Vec::new();
    let mut called = false;
    for (n, p) in cand
        .content
        .unwrap_or_default()
        .parts
        .into_iter()
        .enumerate()
    {
        if let Some(c) = p.function_call {
            called = true;
            parts.push(Part::ToolCall(ToolCall {
                id: call_id(&c, n),
                name: c.name,
                arguments: c.args.to_string(),
                signature: p.thought_signature,
            }));
        } else if let Some(t) = p.text {
            if p.thought == Some(true) {
                parts.push(Part::Thinking {
                    text: t,
                    signature: p.thought_signature,
                });
            } else {
                parts.push(Part::text(t));
            }
        }
    }
    let reason = if blocked {
        FinishReason::ContentFilter
    } else {
        finish_of(cand.finish_reason.as_deref().unwrap_or("STOP"), called)
    };
    Ok(Response {
        id: w.response_id.unwrap_or_default(),
        model: w.model_version.unwrap_or_default(),
        created: crate::llm::now_unix(),
        parts,
        finish: Finish::new(reason),
        usage: w.usage_metadata.map(Usage::from).unwrap_or_default(),
    })
}

/// `streamGenerateContent?alt=sse` chunks -> canonical events. Text arrives as deltas;
/// function calls arrive whole; the stream simply ends after the chunk with a finish reason.
#[derive(Debug, Default)]
pub struct Decoder {
    started: bool,
    /// The open text or thinking block: (index, is thinking).
    open: Option<(usize, bool)>,
    next: usize,
    called: bool,
    finished: bool,
}

impl Decoder {
    fn close(&mut self, out: &mut Vec<Event>) {
        if let Some((index, _)) = self.open.take() {
            out.push(Event::BlockStop { index });
        }
    }

    pub fn frame(&mut self, f: &Frame, out: &mut Vec<Event>) -> Result<Flow, ProxyError> {
        if f.data.starts_with("{\"error\"") {
            return Err(classify(
                StatusCode::INTERNAL_SERVER_ERROR,
                f.data.as_bytes(),
                None,
            ));
        }
        let w: WireResponse = serde_json::from_str(&f.data).map_err(malformed)?;
        if !self.started {
            self.started = true;
            out.push(Event::Start {
                id: w.response_id.clone().unwrap_or_default(),
                model: w.model_version.clone().unwrap_or_default(),
            });
        }
        let blocked = w
            .prompt_feedback
            .as_ref()
            .and_then(|p| p.block_reason.as_ref())
            .is_some();
        let cand = w.candidates.into_iter().next().unwrap_or_default();
        for p in cand.content.unwrap_or_default().parts {
            if let Some(c) = p.function_call {
                self.close(out);
                self.called = true;
                let index = self.next;
                self.next += 1;
                out.push(Event::BlockStart {
                    index,
                    block: Block::ToolCall {
                        id: call_id(&c, index),
                        name: c.name,
                    },
                });
                out.push(Event::Delta {
                    index,
                    delta: Delta::ToolArgs(c.args.to_string()),
                });
                out.push(Event::BlockStop { index });
                continue;
            }
            let Some(text) = p.text else { continue };
            let thinking = p.thought == Some(true);
            let index = match self.open {
                Some((i, t)) if t == thinking => i,
                _ => {
                    self.close(out);
                    let i = self.next;
                    self.next += 1;
                    self.open = Some((i, thinking));
                    let block = if thinking {
                        Block::Thinking
                    } else {
                        Block::Text
                    };
                    out.push(Event::BlockStart { index: i, block });
                    i
                }
            };
            if !text.is_empty() {
                let delta = if thinking {
                    Delta::Thinking(text)
                } else {
                    Delta::Text(text)
                };
                out.push(Event::Delta { index, delta });
            }
            if let Some(s) = p.thought_signature.filter(|_| thinking) {
                out.push(Event::Delta {
                    index,
                    delta: Delta::Signature(s),
                });
            }
        }
        if let Some(u) = w.usage_metadata {
            out.push(Event::Usage(u.into()));
        }
        if let Some(r) = cand.finish_reason.or(blocked.then(|| "SAFETY".to_owned())) {
            self.close(out);
            self.finished = true;
            out.push(Event::Finish(Finish::new(finish_of(&r, self.called))));
        }
        Ok(Flow::Continue)
    }

    /// At the end of the body: complete if a finish reason came.
    pub fn end(&mut self, out: &mut Vec<Event>) -> Flow {
        self.close(out);
        if self.finished {
            Flow::Done
        } else {
            Flow::Continue
        }
    }
}

#[derive(Deserialize, Default)]
struct ErrorEnvelope {
    #[serde(default)]
    error: Option<ErrorBody>,
}

#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    message: String,
    #[serde(default)]
    status: String,
}

/// Classifies a Gemini error answer (`{"error": {"code", "message", "status"}}`).
pub fn classify(status: StatusCode, body: &[u8], retry_after: Option<HeaderValue>) -> ProxyError {
    let e = serde_json::from_slice::<ErrorEnvelope>(body)
        .ok()
        .and_then(|e| e.error)
        .unwrap_or_default();
    let by_status = class_of_status(status);
    let class = match e.status.as_str() {
        // A precise status (429, 503, 504, 401/403) stands; the name refines plain 4xx/5xx.
        _ if !matches!(
            by_status,
            FailureClass::BadRequest | FailureClass::ServerError
        ) =>
        {
            by_status
        }
        "RESOURCE_EXHAUSTED" => FailureClass::RateLimited,
        "UNAVAILABLE" => FailureClass::Overloaded,
        "DEADLINE_EXCEEDED" => FailureClass::Timeout,
        "INTERNAL" => FailureClass::ServerError,
        "UNAUTHENTICATED" | "PERMISSION_DENIED" => FailureClass::Authentication,
        "INVALID_ARGUMENT" | "FAILED_PRECONDITION" if mentions_context_window(&e.message) => {
            FailureClass::ContextWindowExceeded
        }
        "INVALID_ARGUMENT" | "FAILED_PRECONDITION" | "NOT_FOUND" => FailureClass::BadRequest,
        _ => by_status,
    };
    upstream_error(status, class, Some(e.message), body, retry_after)
}

/// `embedContent` (one input) or `batchEmbedContents` (several): the body and which it is.
pub fn encode_embeddings(e: &EmbeddingsRequest, model: &str) -> Result<(Bytes, bool), ProxyError> {
    let one = |text: &str| {
        let mut v =
            json!({"model": format!("models/{model}"), "content": {"parts": [{"text": text}]}});
        if let Some(d) = e.dimensions {
            v["outputDimensionality"] = json!(d);
        }
        v
    };
    if e.inputs.len() == 1 {
        Ok((crate::llm::to_bytes(&one(&e.inputs[0]))?, false))
    } else {
        let reqs: Vec<Value> = e.inputs.iter().map(|t| one(t)).collect();
        Ok((crate::llm::to_bytes(&json!({"requests": reqs}))?, true))
    }
}

/// Decodes `embedContent` / `batchEmbedContents`. Gemini reports no token usage for
/// embeddings; the gateway's estimate (4 bytes per token) stands in.
pub fn decode_embeddings(
    body: &[u8],
    req: &EmbeddingsRequest,
    model: &str,
) -> Result<Embeddings, ProxyError> {
    #[derive(Deserialize)]
    struct Values {
        #[serde(default)]
        values: Vec<f32>,
    }
    #[derive(Deserialize)]
    struct Answer {
        #[serde(default)]
        embedding: Option<Values>,
        #[serde(default)]
        embeddings: Option<Vec<Values>>,
    }
    let a: Answer = serde_json::from_slice(body).map_err(upstream_garbage)?;
    let vectors: Vec<Vec<f32>> = match (a.embedding, a.embeddings) {
        (Some(v), _) => vec![v.values],
        (None, Some(vs)) => vs.into_iter().map(|v| v.values).collect(),
        (None, None) => return Err(upstream_garbage("no embedding in the answer")),
    };
    if vectors.len() != req.inputs.len() {
        return Err(upstream_garbage(format!(
            "{} embeddings for {} inputs",
            vectors.len(),
            req.inputs.len()
        )));
    }
    let tokens: u64 = req
        .inputs
        .iter()
        .map(|t| (t.len() as u64).div_ceil(4))
        .sum();
    Ok(Embeddings {
        model: model.to_owned(),
        vectors,
        usage: Usage::new(tokens, 0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::{Message, Tool, ToolResult};

    #[test]
    fn encodes_system_tools_results_and_schema() {
        let r = Request {
            messages: vec![
                Message::text(Role::System, "be brief"),
                Message::text(Role::User, "weather?"),
                Message::new(
                    Role::Assistant,
                    vec![Part::ToolCall(ToolCall {
                        id: "call_1".into(),
                        name: "w".into(),
                        arguments: "{\"c\":\"Paris\"}".into(),
                        signature: Some("sig".into()),
                    })],
                ),
                Message::new(
                    Role::Tool,
                    vec![Part::ToolResult(ToolResult {
                        call_id: "call_1".into(),
                        name: None,
                        content: vec![Part::text("sunny")],
                        is_error: false,
                    })],
                ),
            ],
            tools: vec![Tool {
                name: "w".into(),
                description: Some("weather".into()),
                parameters: json!({"type": "object"}),
                strict: None,
                cache_control: None,
            }],
            tool_choice: Some(ToolChoice::Named("w".into())),
            response_format: Some(ResponseFormat::JsonSchema {
                name: "o".into(),
                description: None,
                schema: json!({"type": "object"}),
                strict: None,
            }),
            max_output_tokens: Some(64),
            ..Default::default()
        };
        let v: Value = serde_json::from_slice(&encode_request(&r).expect("encode")).expect("json");
        assert_eq!(v["systemInstruction"]["parts"][0]["text"], "be brief");
        assert_eq!(v["contents"][1]["role"], "model");
        assert_eq!(
            v["contents"][1]["parts"][0]["functionCall"]["args"]["c"],
            "Paris"
        );
        assert_eq!(v["contents"][1]["parts"][0]["thoughtSignature"], "sig");
        assert_eq!(
            v["contents"][2]["parts"][0]["functionResponse"]["name"],
            "w"
        );
        assert_eq!(
            v["contents"][2]["parts"][0]["functionResponse"]["response"]["result"],
            "sunny"
        );
        assert_eq!(
            v["toolConfig"]["functionCallingConfig"]["allowedFunctionNames"][0],
            "w"
        );
        assert_eq!(
            v["generationConfig"]["responseMimeType"],
            "application/json"
        );
        assert_eq!(v["generationConfig"]["maxOutputTokens"], 64);
    }

    #[test]
    fn decodes_thoughts_calls_and_usage() {
        let r = decode_response(br#"{"candidates":[{"content":{"parts":[{"text":"plan","thought":true},{"functionCall":{"name":"w","args":{"c":"Rome"}},"thoughtSignature":"s1"}],"role":"model"},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":10,"candidatesTokenCount":5,"thoughtsTokenCount":7,"cachedContentTokenCount":4,"totalTokenCount":22},"modelVersion":"gemini-2.5-flash","responseId":"abc"}"#).expect("decode");
        assert_eq!(r.finish.reason, FinishReason::ToolCalls);
        assert_eq!(
            r.usage,
            Usage {
                input: 10,
                output: 12,
                cache_read: 4,
                cache_write: 0,
                reasoning: 7
            }
        );
        assert!(
            matches!(&r.parts[1], Part::ToolCall(c) if c.arguments == "{\"c\":\"Rome\"}" && c.signature.as_deref() == Some("s1"))
        );
    }

    #[test]
    fn stream_ends_with_its_finish_reason() {
        let mut d = Decoder::default();
        let mut ev = Vec::new();
        for c in [
            r#"{"candidates":[{"content":{"parts":[{"text":"Hel"}],"role":"model"},"index":0}],"modelVersion":"g"}"#,
            r#"{"candidates":[{"content":{"parts":[{"text":"lo"}],"role":"model"},"finishReason":"MAX_TOKENS","index":0}],"usageMetadata":{"promptTokenCount":3,"candidatesTokenCount":2}}"#,
        ] {
            d.frame(&Frame::data(c), &mut ev).expect("chunk");
        }
        assert_eq!(d.end(&mut ev), Flow::Done);
        assert!(ev.contains(&Event::Finish(Finish::new(FinishReason::Length))));
        let text: String = ev
            .iter()
            .filter_map(|e| match e {
                Event::Delta {
                    delta: Delta::Text(t),
                    ..
                } => Some(t.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(text, "Hello");
        let mut cut = Decoder::default();
        cut.frame(
            &Frame::data(r#"{"candidates":[{"content":{"parts":[{"text":"x"}]}}]}"#),
            &mut ev,
        )
        .expect("chunk");
        assert_eq!(
            cut.end(&mut ev),
            Flow::Continue,
            "a stream cut before its finish is incomplete"
        );
    }

    #[test]
    fn classifies_by_status_name() {
        let c = |s: u16, status: &str, m: &str| {
            let b = json!({"error": {"code": s, "message": m, "status": status}}).to_string();
            classify(StatusCode::from_u16(s).expect("s"), b.as_bytes(), None).class
        };
        assert_eq!(
            c(429, "RESOURCE_EXHAUSTED", "quota"),
            Some(FailureClass::RateLimited)
        );
        assert_eq!(
            c(503, "UNAVAILABLE", "overloaded"),
            Some(FailureClass::Overloaded)
        );
        assert_eq!(
            c(
                400,
                "INVALID_ARGUMENT",
                "The input token count exceeds the maximum number of tokens allowed"
            ),
            Some(FailureClass::ContextWindowExceeded)
        );
        assert_eq!(
            c(403, "PERMISSION_DENIED", "key"),
            Some(FailureClass::Authentication)
        );
    }
}
