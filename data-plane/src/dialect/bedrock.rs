//! AWS Bedrock Converse / ConverseStream as an upstream format (the stream arrives in AWS
//! event-stream framing, decoded in `upstream::eventstream`; its messages come here as
//! frames named by their `:event-type`).
//!
//! Mapping notes: Converse has no JSON mode, so a response format becomes one forced tool
//! whose input is the answer (rendered back as text); `tool_choice: none`, image URLs (it
//! takes bytes), seeds and penalties have no counterpart and are refused by name.

use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use serde::Deserialize;
use serde_json::{Map, Value, json};

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

/// Bedrock Converse: a wire the gateway translates into.
pub static CODEC: Codec = Codec {
    format: crate::llm::Format::BedrockConverse,
    client: None,
    upstream: Some(codec::Upstream {
        encode: |r, _| encode_request(r),
        decode: decode_response,
        decoder: |json_tool| codec::Decoder::Bedrock(Decoder::new(json_tool)),
        classify: |status, headers, body| {
            let kind = headers
                .get("x-amzn-errortype")
                .and_then(|v| v.to_str().ok());
            classify(status, kind, body, codec::retry_after(headers))
        },
        count_tokens: Some(CountTokens {
            body: |r, _| count_tokens_body(r),
            read: count_tokens_of,
        }),
    }),
};

const TARGET: &str = "Bedrock Converse";
/// The forced tool that carries a JSON answer.
pub const JSON_TOOL: &str = "json_response";

fn image_format(media_type: &str) -> Option<&'static str> {
    Some(match media_type {
        "image/png" => "png",
        "image/jpeg" | "image/jpg" => "jpeg",
        "image/gif" => "gif",
        "image/webp" => "webp",
        _ => return None,
    })
}

fn document_format(media_type: &str) -> &'static str {
    match media_type {
        "application/pdf" => "pdf",
        "text/csv" => "csv",
        "text/html" => "html",
        "text/markdown" => "md",
        _ => "txt",
    }
}

/// Bedrock document names allow letters, digits, spaces, hyphens, parentheses and brackets.
fn document_name(title: Option<&str>, n: usize) -> String {
    let cleaned: String = title
        .unwrap_or("")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || " -()[]".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    if cleaned.trim().is_empty() {
        format!("document-{n}")
    } else {
        cleaned
    }
}

fn encode_part(p: &Part, at: &str, n: usize) -> Result<Option<Value>, ProxyError> {
    Ok(Some(match p {
        Part::Text { text, .. } if text.is_empty() => return Ok(None),
        Part::Text { text, .. } => json!({"text": text}),
        Part::Image(m) => match &m.source {
            Source::Base64 { media_type, data } => {
                let format = image_format(media_type).ok_or_else(|| {
                    ProxyError::invalid(format!(
                        "{at}: Bedrock takes png, jpeg, gif or webp images, not {media_type}"
                    ))
                    .with_param(at.to_owned())
                })?;
                json!({"image": {"format": format, "source": {"bytes": data}}})
            }
            _ => {
                return Err(ProxyError::unmappable(
                    &format!("{at} (an image URL: Bedrock takes image bytes)"),
                    TARGET,
                ));
            }
        },
        Part::Document { media, title } => match &media.source {
            Source::Base64 { media_type, data } => json!({"document": {
                "format": document_format(media_type), "name": document_name(title.as_deref(), n),
                "source": {"bytes": data}}}),
            Source::Text(t) => json!({"document": {
                "format": "txt", "name": document_name(title.as_deref(), n),
                "source": {"bytes": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, t)}}}),
            Source::Url(_) => {
                return Err(ProxyError::unmappable(
                    &format!("{at} (a document URL: Bedrock takes document bytes)"),
                    TARGET,
                ));
            }
        },
        Part::Thinking {
            signature: None, ..
        } => return Ok(None),
        Part::Thinking {
            text,
            signature: Some(s),
        } => json!({"reasoningContent": {"reasoningText": {"text": text, "signature": s}}}),
        Part::RedactedThinking { data } => json!({"reasoningContent": {"redactedContent": data}}),
        Part::ToolCall(c) => {
            let input: Value = if c.arguments.trim().is_empty() {
                json!({})
            } else {
                serde_json::from_str(&c.arguments).map_err(|e| {
                    ProxyError::invalid(format!(
                        "{at}: the arguments of tool call `{}` are not valid JSON: {e}",
                        c.id
                    ))
                })?
            };
            json!({"toolUse": {"toolUseId": c.id, "name": c.name, "input": input}})
        }
        Part::ToolResult(r) => {
            let mut content = Vec::new();
            for (k, c) in r.content.iter().enumerate() {
                if let Some(v) = encode_part(c, &format!("{at}.content[{k}]"), n)? {
                    content.push(v);
                }
            }
            json!({"toolResult": {"toolUseId": r.call_id, "content": content,
                                  "status": if r.is_error { "error" } else { "success" }}})
        }
    }))
}

fn encode_value(r: &Request) -> Result<Map<String, Value>, ProxyError> {
    if let Some(f) = r.unmapped_field() {
        return Err(ProxyError::unmappable(f, TARGET));
    }
    for (field, set) in [
        ("seed", r.seed.is_some()),
        ("presence_penalty", r.presence_penalty.is_some()),
        ("frequency_penalty", r.frequency_penalty.is_some()),
        ("parallel_tool_calls", r.parallel_tool_calls == Some(false)),
        ("tool_choice", r.tool_choice == Some(ToolChoice::None)),
    ] {
        if set {
            return Err(ProxyError::unmappable(field, TARGET));
        }
    }
    let mut system = Vec::new();
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    let mut docs = 0;
    for (i, m) in r.messages.iter().enumerate() {
        let mut blocks = Vec::new();
        for (k, p) in m.parts.iter().enumerate() {
            if matches!(p, Part::Document { .. }) {
                docs += 1;
            }
            if let Some(v) = encode_part(p, &format!("messages[{i}].content[{k}]"), docs)? {
                blocks.push(v);
            }
        }
        let role = match m.role {
            Role::System | Role::Developer => {
                system.extend(blocks.into_iter().filter(|b| b.get("text").is_some()));
                continue;
            }
            Role::User | Role::Tool => "user",
            Role::Assistant => "assistant",
        };
        if blocks.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some((last, c)) if *last == role => c.extend(blocks),
            _ => turns.push((role, blocks)),
        }
    }
    let mut body = Map::new();
    body.insert(
        "messages".into(),
        Value::Array(
            turns
                .into_iter()
                .map(|(role, content)| json!({"role": role, "content": content}))
                .collect(),
        ),
    );
    if !system.is_empty() {
        body.insert("system".into(), Value::Array(system));
    }
    let mut inference = Map::new();
    if let Some(m) = r.max_output_tokens {
        inference.insert("maxTokens".into(), json!(m));
    }
    if let Some(t) = r.temperature {
        inference.insert("temperature".into(), json!(t));
    }
    if let Some(p) = r.top_p {
        inference.insert("topP".into(), json!(p));
    }
    if !r.stop.is_empty() {
        inference.insert("stopSequences".into(), json!(r.stop));
    }
    let mut tools: Vec<Value> = r
        .tools
        .iter()
        .map(|t| {
            let mut spec = json!({"name": t.name, "inputSchema": {"json": t.parameters}});
            if let Some(d) = &t.description {
                spec["description"] = json!(d);
            }
            json!({"toolSpec": spec})
        })
        .collect();
    let mut choice = r.tool_choice.as_ref().map(|c| match c {
        ToolChoice::Auto | ToolChoice::None => json!({"auto": {}}),
        ToolChoice::Required => json!({"any": {}}),
        ToolChoice::Named(n) => json!({"tool": {"name": n}}),
    });
    let schema = match &r.response_format {
        None | Some(ResponseFormat::Text) => None,
        Some(ResponseFormat::JsonObject) => Some(json!({"type": "object"})),
        Some(ResponseFormat::JsonSchema { schema, .. }) => Some(schema.clone()),
    };
    if let Some(schema) = schema {
        if !tools.is_empty() {
            return Err(ProxyError::unmappable(
                "response_format (together with tools)",
                TARGET,
            ));
        }
        tools.push(json!({"toolSpec": {"name": JSON_TOOL,
            "description": "Answer with a JSON value matching this schema.",
            "inputSchema": {"json": schema}}}));
        choice = Some(json!({"tool": {"name": JSON_TOOL}}));
    }
    if !tools.is_empty() {
        let mut cfg = json!({"tools": tools});
        if let Some(c) = choice {
            cfg["toolChoice"] = c;
        }
        body.insert("toolConfig".into(), cfg);
    }
    let mut additional = Map::new();
    if let Some(k) = r.top_k {
        additional.insert("top_k".into(), json!(k));
    }
    match &r.reasoning {
        Some(x) if x.disabled => {
            additional.insert("thinking".into(), json!({"type": "disabled"}));
        }
        Some(x) => {
            if let Some(b) = x.budget() {
                additional.insert(
                    "thinking".into(),
                    json!({"type": "enabled", "budget_tokens": b}),
                );
                if let Some(max) = r.max_output_tokens
                    && max <= b
                {
                    return Err(ProxyError::invalid(format!(
                        "the output cap ({max}) must exceed the thinking budget ({b} tokens)"
                    ))
                    .with_param("max_tokens"));
                }
            }
        }
        None => {}
    }
    if !inference.is_empty() {
        body.insert("inferenceConfig".into(), Value::Object(inference));
    }
    if !additional.is_empty() {
        body.insert(
            "additionalModelRequestFields".into(),
            Value::Object(additional),
        );
    }
    if let Some(u) = &r.user {
        body.insert("requestMetadata".into(), json!({"user": u}));
    }
    Ok(body)
}

/// Encodes a canonical request as a Converse body (the model is in the URL).
pub fn encode_request(r: &Request) -> Result<Bytes, ProxyError> {
    crate::llm::to_bytes(&Value::Object(encode_value(r)?))
}

/// The body of `CountTokens` for a canonical request.
pub fn count_tokens_body(r: &Request) -> Result<Bytes, ProxyError> {
    let mut body = encode_value(r)?;
    let mut converse = Map::new();
    for k in ["messages", "system", "toolConfig"] {
        if let Some(v) = body.remove(k) {
            converse.insert(k.into(), v);
        }
    }
    crate::llm::to_bytes(&json!({"input": {"converse": converse}}))
}

/// `CountTokens`' answer.
pub fn count_tokens_of(body: &[u8]) -> Result<u64, ProxyError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct C {
        input_tokens: u64,
    }
    serde_json::from_slice::<C>(body)
        .map(|c| c.input_tokens)
        .map_err(upstream_garbage)
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "camelCase")]
struct WireUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
    #[serde(default)]
    cache_read_input_tokens: u64,
    #[serde(default)]
    cache_write_input_tokens: u64,
}

impl From<WireUsage> for Usage {
    fn from(u: WireUsage) -> Self {
        Usage {
            input: u.input_tokens + u.cache_read_input_tokens + u.cache_write_input_tokens,
            output: u.output_tokens,
            cache_read: u.cache_read_input_tokens,
            cache_write: u.cache_write_input_tokens,
            reasoning: 0,
        }
    }
}

fn finish_of(stop: &str) -> FinishReason {
    match stop {
        "tool_use" => FinishReason::ToolCalls,
        "max_tokens" | "model_context_window_exceeded" => FinishReason::Length,
        "stop_sequence" => FinishReason::StopSequence,
        "guardrail_intervened" | "content_filtered" => FinishReason::ContentFilter,
        _ => FinishReason::Stop,
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireResponse {
    output: Output,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: WireUsage,
}

#[derive(Deserialize)]
struct Output {
    message: OutMessage,
}

#[derive(Deserialize)]
struct OutMessage {
    #[serde(default)]
    content: Vec<Value>,
}

/// Decodes a Converse answer. With `json_tool`, the forced tool's input is the text.
pub fn decode_response(body: &[u8], json_tool: bool) -> Result<Response, ProxyError> {
    let w: WireResponse = serde_json::from_slice(body).map_err(upstream_garbage)?;
    let mut parts = Vec::new();
    let mut answered_json = false;
    for b in w.output.message.content {
        if let Some(t) = b.get("text").and_then(Value::as_str) {
            parts.push(Part::text(t));
        } else if let Some(u) = b.get("toolUse") {
            let name = u["name"].as_str().unwrap_or_default();
            let input = u.get("input").cloned().unwrap_or(json!({}));
            if json_tool && name == JSON_TOOL {
                answered_json = true;
                parts.push(Part::text(input.to_string()));
            } else {
                parts.push(Part::ToolCall(ToolCall {
                    id: u["toolUseId"].as_str().unwrap_or_default().to_owned(),
                    name: name.to_owned(),
                    arguments: input.to_string(),
                    signature: None,
                }));
            }
        } else if let Some(r) = b.get("reasoningContent") {
            if let Some(t) = r.get("reasoningText") {
                parts.push(Part::Thinking {
                    text: t["text"].as_str().unwrap_or_default().to_owned(),
                    signature: t["signature"].as_str().map(str::to_owned),
                });
            } else if let Some(d) = r.get("redactedContent").and_then(Value::as_str) {
                parts.push(Part::RedactedThinking { data: d.to_owned() });
            }
        }
    }
    let mut reason = finish_of(w.stop_reason.as_deref().unwrap_or("end_turn"));
    if answered_json && reason == FinishReason::ToolCalls {
        reason = FinishReason::Stop;
    }
    Ok(Response {
        id: format!("bedrock-{:016x}", fastrand::u64(..)),
        model: String::new(),
        created: crate::llm::now_unix(),
        parts,
        finish: Finish::new(reason),
        usage: w.usage.into(),
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BlockEvent {
    #[serde(default)]
    content_block_index: usize,
    #[serde(default)]
    start: Option<Value>,
    #[serde(default)]
    delta: Option<Value>,
}

/// ConverseStream events -> canonical events. Text blocks start with their first delta (no
/// `contentBlockStart`); `metadata` (usage) comes after `messageStop` and ends the stream.
#[derive(Debug, Default)]
pub struct Decoder {
    started: bool,
    json_tool: bool,
    /// Bedrock block index -> canonical index, of the open block.
    open: Option<(usize, usize)>,
    /// The open block is the forced JSON tool (its input is text).
    open_is_json: bool,
    next: usize,
    stopped: bool,
    answered_json: bool,
}

impl Decoder {
    pub fn new(json_tool: bool) -> Self {
        Self {
            json_tool,
            ..Self::default()
        }
    }

    fn start(&mut self, out: &mut Vec<Event>) {
        if !self.started {
            self.started = true;
            out.push(Event::Start {
                id: format!("bedrock-{:016x}", fastrand::u64(..)),
                model: String::new(),
            });
        }
    }

    fn open(&mut self, bedrock: usize, block: Block, out: &mut Vec<Event>) -> usize {
        self.close(out);
        let index = self.next;
        self.next += 1;
        self.open = Some((bedrock, index));
        out.push(Event::BlockStart { index, block });
        index
    }

    fn close(&mut self, out: &mut Vec<Event>) {
        if let Some((_, index)) = self.open.take() {
            out.push(Event::BlockStop { index });
        }
        self.open_is_json = false;
    }

    pub fn frame(&mut self, f: &Frame, out: &mut Vec<Event>) -> Result<Flow, ProxyError> {
        let kind = f.event.as_deref().unwrap_or("");
        if f.exception {
            return Err(classify_stream_exception(kind, f.data.as_bytes()));
        }
        self.start(out);
        match kind {
            "messageStart" => {}
            "contentBlockStart" => {
                let e: BlockEvent = serde_json::from_str(&f.data).map_err(malformed)?;
                if let Some(t) = e.start.as_ref().and_then(|s| s.get("toolUse")) {
                    let name = t["name"].as_str().unwrap_or_default().to_owned();
                    if self.json_tool && name == JSON_TOOL {
                        self.answered_json = true;
                        self.open(e.content_block_index, Block::Text, out);
                        self.open_is_json = true;
                    } else {
                        let id = t["toolUseId"].as_str().unwrap_or_default().to_owned();
                        self.open(e.content_block_index, Block::ToolCall { id, name }, out);
                    }
                }
            }
            "contentBlockDelta" => {
                let e: BlockEvent = serde_json::from_str(&f.data).map_err(malformed)?;
                let Some(d) = e.delta else {
                    return Ok(Flow::Continue);
                };
                let (delta, block) = if let Some(t) = d.get("text").and_then(Value::as_str) {
                    (Delta::Text(t.to_owned()), Block::Text)
                } else if let Some(i) = d
                    .get("toolUse")
                    .and_then(|t| t.get("input"))
                    .and_then(Value::as_str)
                {
                    (Delta::ToolArgs(i.to_owned()), Block::Text)
                } else if let Some(r) = d.get("reasoningContent") {
                    if let Some(t) = r.get("text").and_then(Value::as_str) {
                        (Delta::Thinking(t.to_owned()), Block::Thinking)
                    } else if let Some(s) = r.get("signature").and_then(Value::as_str) {
                        (Delta::Signature(s.to_owned()), Block::Thinking)
                    } else if let Some(rd) = r.get("redactedContent").and_then(Value::as_str) {
                        self.open(
                            e.content_block_index,
                            Block::RedactedThinking {
                                data: rd.to_owned(),
                            },
                            out,
                        );
                        return Ok(Flow::Continue);
                    } else {
                        return Ok(Flow::Continue);
                    }
                } else {
                    return Ok(Flow::Continue);
                };
                let index = match self.open {
                    Some((b, i)) if b == e.content_block_index => i,
                    _ => self.open(e.content_block_index, block, out),
                };
                let delta = match delta {
                    Delta::ToolArgs(a) if self.open_is_json => Delta::Text(a),
                    d => d,
                };
                out.push(Event::Delta { index, delta });
            }
            "contentBlockStop" => self.close(out),
            "messageStop" => {
                #[derive(Deserialize)]
                #[serde(rename_all = "camelCase")]
                struct Stop {
                    #[serde(default)]
                    stop_reason: Option<String>,
                }
                let s: Stop = serde_json::from_str(&f.data).map_err(malformed)?;
                self.close(out);
                self.stopped = true;
                let mut reason = finish_of(s.stop_reason.as_deref().unwrap_or("end_turn"));
                if self.answered_json && reason == FinishReason::ToolCalls {
                    reason = FinishReason::Stop;
                }
                out.push(Event::Finish(Finish::new(reason)));
            }
            "metadata" => {
                #[derive(Deserialize)]
                struct Meta {
                    #[serde(default)]
                    usage: Option<WireUsage>,
                }
                let m: Meta = serde_json::from_str(&f.data).map_err(malformed)?;
                if let Some(u) = m.usage {
                    out.push(Event::Usage(u.into()));
                }
                return Ok(Flow::Done);
            }
            _ => {}
        }
        Ok(Flow::Continue)
    }

    /// At the end of the body: complete once `messageStop` came (usage may be missing).
    pub fn end(&mut self, out: &mut Vec<Event>) -> Flow {
        self.close(out);
        if self.stopped {
            Flow::Done
        } else {
            Flow::Continue
        }
    }
}

fn class_of_exception(kind: &str, message: &str, fallback: FailureClass) -> FailureClass {
    // HTTP errors name types `ThrottlingException`; stream exceptions `throttlingException`.
    let kind = kind.split(':').next().unwrap_or(kind);
    let mut chars = kind.chars();
    let kind: String = chars
        .next()
        .map(|c| c.to_ascii_uppercase())
        .into_iter()
        .chain(chars)
        .collect();
    match kind.as_str() {
        "ThrottlingException" | "ServiceQuotaExceededException" => FailureClass::RateLimited,
        "ServiceUnavailableException" | "ModelNotReadyException" => FailureClass::Overloaded,
        "ModelTimeoutException" => FailureClass::Timeout,
        "InternalServerException" | "ModelErrorException" | "ModelStreamErrorException" => {
            FailureClass::ServerError
        }
        "AccessDeniedException"
        | "UnrecognizedClientException"
        | "ExpiredTokenException"
        | "InvalidSignatureException" => FailureClass::Authentication,
        "ValidationException" if mentions_context_window(message) => {
            FailureClass::ContextWindowExceeded
        }
        "ValidationException" | "ResourceNotFoundException" => FailureClass::BadRequest,
        _ => fallback,
    }
}

#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(default, alias = "Message")]
    message: String,
}

/// Classifies a Bedrock error answer by its `x-amzn-ErrorType`.
pub fn classify(
    status: StatusCode,
    error_type: Option<&str>,
    body: &[u8],
    retry_after: Option<HeaderValue>,
) -> ProxyError {
    let e: ErrorBody = serde_json::from_slice(body).unwrap_or_default();
    // A precise status (429, 503, 504, 401/403) stands; the error type refines plain 4xx/5xx.
    let class = match class_of_status(status) {
        c @ (FailureClass::BadRequest | FailureClass::ServerError) => {
            class_of_exception(error_type.unwrap_or(""), &e.message, c)
        }
        c => c,
    };
    upstream_error(status, class, Some(e.message), body, retry_after)
}

/// An `exception` message inside the stream.
fn classify_stream_exception(kind: &str, data: &[u8]) -> ProxyError {
    let e: ErrorBody = serde_json::from_slice(data).unwrap_or_default();
    let class = class_of_exception(kind, &e.message, FailureClass::ServerError);
    let status = match class {
        FailureClass::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        FailureClass::BadRequest | FailureClass::ContextWindowExceeded => StatusCode::BAD_REQUEST,
        FailureClass::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    upstream_error(status, class, Some(e.message), data, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::{Media, Message, Tool};

    #[test]
    fn encodes_tools_images_and_json_mode() {
        let mut r = Request {
            messages: vec![
                Message::text(Role::System, "sys"),
                Message::new(
                    Role::User,
                    vec![
                        Part::text("look"),
                        Part::Image(Media {
                            source: Source::Base64 {
                                media_type: "image/png".into(),
                                data: "AAAA".into(),
                            },
                            detail: None,
                        }),
                    ],
                ),
            ],
            max_output_tokens: Some(100),
            top_k: Some(5),
            ..Default::default()
        };
        let v: Value = serde_json::from_slice(&encode_request(&r).expect("encode")).expect("json");
        assert_eq!(v["system"][0]["text"], "sys");
        assert_eq!(v["messages"][0]["content"][1]["image"]["format"], "png");
        assert_eq!(v["inferenceConfig"]["maxTokens"], 100);
        assert_eq!(v["additionalModelRequestFields"]["top_k"], 5);
        r.response_format = Some(ResponseFormat::JsonSchema {
            name: "o".into(),
            description: None,
            schema: json!({"type": "object", "properties": {"a": {"type": "integer"}}}),
            strict: None,
        });
        let v: Value = serde_json::from_slice(&encode_request(&r).expect("encode")).expect("json");
        assert_eq!(v["toolConfig"]["toolChoice"]["tool"]["name"], JSON_TOOL);
        r.tools.push(Tool {
            name: "t".into(),
            description: None,
            parameters: json!({}),
            strict: None,
            cache_control: None,
        });
        assert!(
            encode_request(&r).is_err(),
            "a forced JSON tool cannot coexist with tools"
        );
        r.tools.clear();
        r.response_format = None;
        r.messages.push(Message::new(
            Role::User,
            vec![Part::Image(Media {
                source: Source::Url("https://x/y.png".into()),
                detail: None,
            })],
        ));
        assert!(encode_request(&r).expect_err("url").param.is_some());
    }

    #[test]
    fn json_tool_answers_come_back_as_text() {
        let body = br#"{"output":{"message":{"role":"assistant","content":[{"toolUse":{"toolUseId":"t1","name":"json_response","input":{"a":1}}}]}},"stopReason":"tool_use","usage":{"inputTokens":5,"outputTokens":3,"totalTokens":8}}"#;
        let r = decode_response(body, true).expect("decode");
        assert_eq!(r.text(), "{\"a\":1}");
        assert_eq!(r.finish.reason, FinishReason::Stop);
        let r = decode_response(body, false).expect("decode");
        assert!(matches!(&r.parts[0], Part::ToolCall(c) if c.name == "json_response"));
    }

    #[test]
    fn stream_events_decode_in_order() {
        let mut d = Decoder::new(false);
        let mut ev = Vec::new();
        for (k, data) in [
            ("messageStart", r#"{"role":"assistant"}"#),
            (
                "contentBlockDelta",
                r#"{"contentBlockIndex":0,"delta":{"reasoningContent":{"text":"hmm"}}}"#,
            ),
            (
                "contentBlockDelta",
                r#"{"contentBlockIndex":0,"delta":{"reasoningContent":{"signature":"sig"}}}"#,
            ),
            ("contentBlockStop", r#"{"contentBlockIndex":0}"#),
            (
                "contentBlockDelta",
                r#"{"contentBlockIndex":1,"delta":{"text":"Hi"}}"#,
            ),
            ("contentBlockStop", r#"{"contentBlockIndex":1}"#),
            (
                "contentBlockStart",
                r#"{"contentBlockIndex":2,"start":{"toolUse":{"toolUseId":"tu1","name":"f"}}}"#,
            ),
            (
                "contentBlockDelta",
                r#"{"contentBlockIndex":2,"delta":{"toolUse":{"input":"{\"x\":1}"}}}"#,
            ),
            ("contentBlockStop", r#"{"contentBlockIndex":2}"#),
            ("messageStop", r#"{"stopReason":"tool_use"}"#),
        ] {
            assert_eq!(
                d.frame(&Frame::named(k, data), &mut ev).expect(k),
                Flow::Continue
            );
        }
        let flow = d
            .frame(&Frame::named("metadata", r#"{"usage":{"inputTokens":10,"outputTokens":4,"totalTokens":14},"metrics":{"latencyMs":100}}"#), &mut ev)
            .expect("metadata");
        assert_eq!(flow, Flow::Done);
        assert!(ev.contains(&Event::BlockStart {
            index: 2,
            block: Block::ToolCall {
                id: "tu1".into(),
                name: "f".into()
            }
        }));
        assert!(ev.contains(&Event::Delta {
            index: 0,
            delta: Delta::Signature("sig".into())
        }));
        assert!(ev.contains(&Event::Usage(Usage::new(10, 4))));
        let e = d
            .frame(
                &Frame {
                    event: Some("throttlingException".into()),
                    data: r#"{"message":"slow down"}"#.into(),
                    exception: true,
                },
                &mut ev,
            )
            .expect_err("exception");
        assert_eq!(e.class, Some(FailureClass::RateLimited));
    }

    #[test]
    fn classifies_by_error_type_header() {
        let c = |s: u16, t: &str, m: &str| {
            classify(
                StatusCode::from_u16(s).expect("s"),
                Some(t),
                json!({"message": m}).to_string().as_bytes(),
                None,
            )
            .class
        };
        assert_eq!(
            c(
                429,
                "ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/",
                "x"
            ),
            Some(FailureClass::RateLimited)
        );
        assert_eq!(
            c(
                400,
                "ValidationException",
                "Input is too long for requested model."
            ),
            Some(FailureClass::ContextWindowExceeded)
        );
        assert_eq!(
            c(400, "ValidationException", "bad"),
            Some(FailureClass::BadRequest)
        );
        assert_eq!(
            c(503, "ServiceUnavailableException", "x"),
            Some(FailureClass::Overloaded)
        );
        assert_eq!(
            c(403, "AccessDeniedException", "x"),
            Some(FailureClass::Authentication)
        );
    }
}
