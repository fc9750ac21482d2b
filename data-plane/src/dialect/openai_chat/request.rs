//! Chat Completions requests: decoded from clients, encoded for upstreams.

use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value, json};

use crate::dialect::bad_json;
use crate::error::ProxyError;
use crate::llm::raw::RawObject;
use crate::llm::{
    Effort, Facts, Media, Message, Part, Reasoning, Request, ResponseFormat, Role, Source, Tool,
    ToolCall, ToolChoice, ToolResult,
};

#[derive(Deserialize)]
struct WireRequest {
    model: String,
    messages: Vec<WireMessage>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    max_completion_tokens: Option<u32>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    stop: Option<Stop>,
    #[serde(default)]
    seed: Option<i64>,
    #[serde(default)]
    presence_penalty: Option<f64>,
    #[serde(default)]
    frequency_penalty: Option<f64>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    tools: Option<Vec<WireTool>>,
    #[serde(default)]
    tool_choice: Option<WireToolChoice>,
    #[serde(default)]
    parallel_tool_calls: Option<bool>,
    #[serde(default)]
    response_format: Option<WireResponseFormat>,
    #[serde(default)]
    reasoning_effort: Option<String>,
    /// Anthropic-style thinking budget, accepted as an extension.
    #[serde(default)]
    thinking: Option<WireThinking>,
    /// `n: 1` is the default; more choices have no counterpart elsewhere.
    #[serde(default)]
    n: Option<u32>,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

#[derive(Deserialize, Default)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum WireRole {
    System,
    Developer,
    User,
    Assistant,
    Tool,
    Function,
}

#[derive(Deserialize)]
struct WireMessage {
    role: WireRole,
    #[serde(default)]
    content: Option<Content>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<WireToolCall>>,
    #[serde(default)]
    tool_call_id: Option<String>,
    #[serde(default)]
    reasoning_content: Option<String>,
    #[serde(default)]
    thinking_blocks: Option<Vec<WireThinkingBlock>>,
    #[serde(default)]
    refusal: Option<String>,
}

/// A message's content: a string, an array of parts, or null.
enum Content {
    Text(String),
    Parts(Vec<WirePart>),
}

impl<'de> Deserialize<'de> for Content {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Content;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or an array of content parts")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Content, E> {
                Ok(Content::Text(s.to_owned()))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Content, E> {
                Ok(Content::Text(s))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Content, A::Error> {
                let mut parts = Vec::new();
                while let Some(p) = seq.next_element()? {
                    parts.push(p);
                }
                Ok(Content::Parts(parts))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WirePart {
    Text { text: String },
    ImageUrl { image_url: WireImageUrl },
    File { file: WireFile },
    Refusal { refusal: String },
    InputAudio {},
}

#[derive(Deserialize, Serialize)]
struct WireImageUrl {
    url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
}

#[derive(Deserialize, Serialize, Default)]
struct WireFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    file_data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    filename: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    file_id: Option<String>,
}

#[derive(Deserialize, Serialize)]
struct WireToolCall {
    #[serde(default)]
    id: Option<String>,
    #[serde(rename = "type", default = "function_type")]
    kind: String,
    function: WireFunctionCall,
}

fn function_type() -> String {
    "function".into()
}

#[derive(Deserialize, Serialize)]
struct WireFunctionCall {
    #[serde(default)]
    name: String,
    #[serde(default)]
    arguments: String,
}

#[derive(Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(super) enum WireThinkingBlock {
    Thinking {
        #[serde(default)]
        thinking: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signature: Option<String>,
    },
    RedactedThinking {
        data: String,
    },
}

#[derive(Deserialize)]
struct WireTool {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    function: Option<WireFunctionDef>,
}

#[derive(Deserialize)]
struct WireFunctionDef {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    parameters: Option<Value>,
    #[serde(default)]
    strict: Option<bool>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum WireToolChoice {
    Mode(String),
    Named {
        #[serde(rename = "type")]
        _kind: String,
        function: NamedFunction,
    },
}

#[derive(Deserialize)]
struct NamedFunction {
    name: String,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireResponseFormat {
    Text,
    JsonObject,
    JsonSchema { json_schema: WireJsonSchema },
}

#[derive(Deserialize)]
struct WireJsonSchema {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    schema: Option<Value>,
    #[serde(default)]
    strict: Option<bool>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireThinking {
    Enabled { budget_tokens: u32 },
    Disabled,
}

/// What the policies need, read from the top level only; the messages are checked for
/// shape (roles and content types) without being copied.
pub fn facts(raw: &RawObject) -> Result<Facts, ProxyError> {
    #[derive(Deserialize)]
    struct Check<'a> {
        #[allow(dead_code)]
        role: WireRole,
        #[serde(default, borrow)]
        content: Option<&'a serde_json::value::RawValue>,
    }
    let field = |name: &'static str, e: serde_json::Error| {
        ProxyError::invalid(format!("Invalid `{name}`: {e}")).with_param(name)
    };
    let model: String = raw
        .parse_field("model")
        .map_err(|e| field("model", e))?
        .ok_or_else(|| {
            ProxyError::invalid("Invalid request: missing field `model`").with_param("model")
        })?;
    if model.trim().is_empty() {
        return Err(ProxyError::invalid("`model` must not be empty").with_param("model"));
    }
    let messages: Vec<Check<'_>> = raw
        .parse_field("messages")
        .map_err(|e| field("messages", e))?
        .ok_or_else(|| {
            ProxyError::invalid("Invalid request: missing field `messages`").with_param("messages")
        })?;
    if messages.is_empty() {
        return Err(
            ProxyError::invalid("`messages` must contain at least one message")
                .with_param("messages"),
        );
    }
    for (i, m) in messages.iter().enumerate() {
        if let Some(c) = m.content {
            let ok = matches!(c.get().as_bytes().first(), Some(b'"' | b'[' | b'n'));
            if !ok {
                return Err(ProxyError::invalid(format!(
                    "messages[{i}].content must be a string, an array of content parts or null"
                ))
                .with_param(format!("messages[{i}].content")));
            }
        }
    }
    if let Some(t) = raw
        .parse_field::<f64>("temperature")
        .map_err(|e| field("temperature", e))?
        && !(0.0..=2.0).contains(&t)
    {
        return Err(
            ProxyError::invalid(format!("temperature {t} is outside [0, 2]"))
                .with_param("temperature"),
        );
    }
    let stream = raw
        .parse_field::<bool>("stream")
        .map_err(|e| field("stream", e))?
        .unwrap_or(false);
    let stream_usage = raw
        .parse_field::<StreamOptions>("stream_options")
        .map_err(|e| field("stream_options", e))?
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    let max_output_tokens = match raw
        .parse_field::<u32>("max_completion_tokens")
        .map_err(|e| field("max_completion_tokens", e))?
    {
        Some(n) => Some(n),
        None => raw
            .parse_field::<u32>("max_tokens")
            .map_err(|e| field("max_tokens", e))?,
    };
    Ok(Facts {
        model,
        stream,
        stream_usage,
        max_output_tokens,
    })
}

/// Decodes a client's request into canonical form.
pub fn decode_request(raw: &RawObject) -> Result<Request, ProxyError> {
    let w: WireRequest = serde_json::from_str(raw.text()).map_err(bad_json)?;
    let mut extra = w.extra;
    if let Some(n) = w.n.filter(|n| *n != 1) {
        extra.insert("n".into(), json!(n));
    }
    let mut messages = Vec::with_capacity(w.messages.len());
    for (i, m) in w.messages.into_iter().enumerate() {
        messages.push(decode_message(m, i)?);
    }
    let tools = w
        .tools
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, t)| match (t.kind.as_str(), t.function) {
            ("function", Some(f)) => Ok(Tool {
                name: f.name,
                description: f.description,
                parameters: f.parameters.unwrap_or_else(|| json!({"type": "object"})),
                strict: f.strict,
                cache_control: None,
            }),
            (kind, _) => Err(ProxyError::invalid(format!(
                "tools[{i}]: only function tools are supported, not `{kind}`"
            ))
            .with_param(format!("tools[{i}].type"))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let tool_choice = match w.tool_choice {
        None => None,
        Some(WireToolChoice::Mode(m)) => Some(match m.as_str() {
            "auto" => ToolChoice::Auto,
            "none" => ToolChoice::None,
            "required" => ToolChoice::Required,
            other => {
                return Err(ProxyError::invalid(format!(
                    "tool_choice must be auto, none, required or a named function, not `{other}`"
                ))
                .with_param("tool_choice"));
            }
        }),
        Some(WireToolChoice::Named { function, .. }) => Some(ToolChoice::Named(function.name)),
    };
    let response_format = w.response_format.map(|f| match f {
        WireResponseFormat::Text => ResponseFormat::Text,
        WireResponseFormat::JsonObject => ResponseFormat::JsonObject,
        WireResponseFormat::JsonSchema { json_schema } => ResponseFormat::JsonSchema {
            name: json_schema.name,
            description: json_schema.description,
            schema: json_schema
                .schema
                .unwrap_or_else(|| json!({"type": "object"})),
            strict: json_schema.strict,
        },
    });
    let effort = match w.reasoning_effort.as_deref() {
        None => None,
        Some(e) => Some(Effort::parse(e).ok_or_else(|| {
            ProxyError::invalid(format!(
                "reasoning_effort `{e}` is not one of none, minimal, low, medium, high"
            ))
            .with_param("reasoning_effort")
        })?),
    };
    let reasoning = match (effort, w.thinking) {
        (None, None) => None,
        (effort, thinking) => Some(Reasoning {
            effort,
            budget_tokens: match thinking {
                Some(WireThinking::Enabled { budget_tokens }) => Some(budget_tokens),
                _ => None,
            },
            disabled: matches!(thinking, Some(WireThinking::Disabled)),
            summary: None,
        }),
    };
    Ok(Request {
        model: w.model,
        messages,
        tools,
        tool_choice,
        parallel_tool_calls: w.parallel_tool_calls,
        response_format,
        max_output_tokens: w.max_completion_tokens.or(w.max_tokens),
        temperature: w.temperature,
        top_p: w.top_p,
        top_k: None,
        stop: match w.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s],
            Some(Stop::Many(v)) => v,
        },
        seed: w.seed,
        presence_penalty: w.presence_penalty,
        frequency_penalty: w.frequency_penalty,
        reasoning,
        user: w.user,
        stream: w.stream.unwrap_or(false),
        stream_usage: w
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
        extra,
    })
}

fn decode_parts(content: Option<Content>, i: usize) -> Result<Vec<Part>, ProxyError> {
    Ok(match content {
        None => Vec::new(),
        Some(Content::Text(t)) if t.is_empty() => Vec::new(),
        Some(Content::Text(t)) => vec![Part::text(t)],
        Some(Content::Parts(parts)) => {
            let mut out = Vec::with_capacity(parts.len());
            for (j, p) in parts.into_iter().enumerate() {
                out.push(match p {
                    WirePart::Text { text } => Part::text(text),
                    WirePart::Refusal { refusal } => Part::text(refusal),
                    WirePart::ImageUrl { image_url } => Part::Image(Media {
                        source: Source::from_url(&image_url.url),
                        detail: image_url.detail,
                    }),
                    WirePart::File { file } => match (file.file_data, file.file_id) {
                        (Some(data), _) => Part::Document {
                            media: Media {
                                source: Source::from_url(&data),
                                detail: None,
                            },
                            title: file.filename,
                        },
                        (None, _) => {
                            return Err(ProxyError::invalid(
                                "file parts must carry `file_data`: uploaded `file_id`s live in one provider's storage",
                            )
                            .with_param(format!("messages[{i}].content[{j}].file")));
                        }
                    },
                    WirePart::InputAudio {} => {
                        return Err(ProxyError::unmappable(
                            &format!("messages[{i}].content[{j}].input_audio"),
                            "any non-OpenAI model",
                        ));
                    }
                });
            }
            out
        }
    })
}

fn decode_message(m: WireMessage, i: usize) -> Result<Message, ProxyError> {
    let role = match m.role {
        WireRole::System => Role::System,
        WireRole::Developer => Role::Developer,
        WireRole::User => Role::User,
        WireRole::Assistant => Role::Assistant,
        WireRole::Tool | WireRole::Function => Role::Tool,
    };
    if role == Role::Tool {
        let call_id = m.tool_call_id.or_else(|| m.name.clone()).ok_or_else(|| {
            ProxyError::invalid(format!(
                "messages[{i}]: a tool message needs `tool_call_id`"
            ))
            .with_param(format!("messages[{i}].tool_call_id"))
        })?;
        let content = decode_parts(m.content, i)?;
        return Ok(Message::new(
            Role::Tool,
            vec![Part::ToolResult(ToolResult {
                call_id,
                name: m.name,
                content,
                is_error: false,
            })],
        ));
    }
    let mut parts = Vec::new();
    // Thinking comes first in a turn: blocks with signatures when the client kept them,
    // else the bare reasoning text.
    match (m.thinking_blocks, m.reasoning_content) {
        (Some(blocks), _) => parts.extend(blocks.into_iter().map(|b| match b {
            WireThinkingBlock::Thinking {
                thinking,
                signature,
            } => Part::Thinking {
                text: thinking,
                signature,
            },
            WireThinkingBlock::RedactedThinking { data } => Part::RedactedThinking { data },
        })),
        (None, Some(text)) if !text.is_empty() => parts.push(Part::Thinking {
            text,
            signature: None,
        }),
        _ => {}
    }
    parts.extend(decode_parts(m.content, i)?);
    if let Some(r) = m.refusal.filter(|r| !r.is_empty()) {
        parts.push(Part::text(r));
    }
    for c in m.tool_calls.into_iter().flatten() {
        parts.push(Part::ToolCall(ToolCall {
            id: c.id.unwrap_or_default(),
            name: c.function.name,
            arguments: c.function.arguments,
            signature: None,
        }));
    }
    Ok(Message {
        role,
        parts,
        name: m.name,
    })
}

/// Which field carries the output cap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaxTokensField {
    /// OpenAI and Azure: required by reasoning models.
    MaxCompletionTokens,
    /// What most OpenAI-compatible servers read.
    MaxTokens,
}

/// How an OpenAI-format upstream wants its requests: data on the provider, not `if`s here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EncodeOptions {
    pub max_tokens: MaxTokensField,
    /// `developer` messages are sent as `system` (servers that predate the role).
    pub developer_as_system: bool,
    /// The server accepts `top_k` (vLLM, Ollama, ...; OpenAI does not).
    pub top_k: bool,
}

/// Encodes a canonical request for an OpenAI-format upstream.
pub fn encode_request(
    r: &Request,
    model: &str,
    opts: EncodeOptions,
    target: &str,
) -> Result<bytes::Bytes, ProxyError> {
    if let Some(f) = r.unmapped_field() {
        return Err(ProxyError::unmappable(f, target));
    }
    let mut messages = Vec::with_capacity(r.messages.len());
    for m in &r.messages {
        encode_message(m, opts, target, &mut messages)?;
    }
    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    body.insert("messages".into(), Value::Array(messages));
    if let Some(n) = r.max_output_tokens {
        let field = match opts.max_tokens {
            MaxTokensField::MaxCompletionTokens => "max_completion_tokens",
            MaxTokensField::MaxTokens => "max_tokens",
        };
        body.insert(field.into(), json!(n));
    }
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            body.insert(k.into(), v);
        }
    };
    put("temperature", r.temperature.map(|v| json!(v)));
    put("top_p", r.top_p.map(|v| json!(v)));
    if let Some(k) = r.top_k {
        if !opts.top_k {
            return Err(ProxyError::unmappable("top_k", target));
        }
        put("top_k", Some(json!(k)));
    }
    put("stop", (!r.stop.is_empty()).then(|| json!(r.stop)));
    put("seed", r.seed.map(|v| json!(v)));
    put("presence_penalty", r.presence_penalty.map(|v| json!(v)));
    put("frequency_penalty", r.frequency_penalty.map(|v| json!(v)));
    put("user", r.user.as_ref().map(|v| json!(v)));
    put(
        "reasoning_effort",
        r.reasoning
            .as_ref()
            .and_then(Reasoning::effort)
            .map(|e| json!(e.as_str())),
    );
    if !r.tools.is_empty() {
        let tools: Vec<Value> = r
            .tools
            .iter()
            .map(|t| {
                let mut f = json!({"name": t.name, "parameters": t.parameters});
                if let Some(d) = &t.description {
                    f["description"] = json!(d);
                }
                if let Some(s) = t.strict {
                    f["strict"] = json!(s);
                }
                json!({"type": "function", "function": f})
            })
            .collect();
        put("tools", Some(Value::Array(tools)));
    }
    put(
        "tool_choice",
        r.tool_choice.as_ref().map(|c| match c {
            ToolChoice::Auto => json!("auto"),
            ToolChoice::None => json!("none"),
            ToolChoice::Required => json!("required"),
            ToolChoice::Named(n) => json!({"type": "function", "function": {"name": n}}),
        }),
    );
    put(
        "parallel_tool_calls",
        r.parallel_tool_calls.map(|v| json!(v)),
    );
    put(
        "response_format",
        r.response_format.as_ref().map(|f| match f {
            ResponseFormat::Text => json!({"type": "text"}),
            ResponseFormat::JsonObject => json!({"type": "json_object"}),
            ResponseFormat::JsonSchema {
                name,
                description,
                schema,
                strict,
            } => {
                let mut s = json!({"name": name, "schema": schema});
                if let Some(d) = description {
                    s["description"] = json!(d);
                }
                if let Some(st) = strict {
                    s["strict"] = json!(st);
                }
                json!({"type": "json_schema", "json_schema": s})
            }
        }),
    );
    if r.stream {
        body.insert("stream".into(), json!(true));
        // The gateway counts tokens from every stream; the usage chunk is hidden again from
        // clients that did not ask for it.
        body.insert("stream_options".into(), json!({"include_usage": true}));
    }
    crate::llm::to_bytes(&body)
}

fn media_url_part(m: &Media) -> Value {
    let mut img = json!({"url": m.source.to_url()});
    if let Some(d) = &m.detail {
        img["detail"] = json!(d);
    }
    json!({"type": "image_url", "image_url": img})
}

fn encode_content(parts: &[Part], target: &str) -> Result<Value, ProxyError> {
    let simple = parts.iter().all(|p| matches!(p, Part::Text { .. }));
    if simple {
        let text: Vec<&str> = parts
            .iter()
            .filter_map(|p| match p {
                Part::Text { text, .. } => Some(text.as_str()),
                _ => None,
            })
            .collect();
        return Ok(json!(text.join("")));
    }
    let mut out = Vec::with_capacity(parts.len());
    for p in parts {
        out.push(match p {
            Part::Text { text, .. } => json!({"type": "text", "text": text}),
            Part::Image(m) => media_url_part(m),
            Part::Document { media, title } => {
                let mut f = json!({"file_data": media.source.to_url()});
                if let Some(t) = title {
                    f["filename"] = json!(t);
                }
                json!({"type": "file", "file": f})
            }
            Part::ToolCall(_) | Part::ToolResult(_) => continue,
            Part::Thinking { .. } | Part::RedactedThinking { .. } => continue,
        });
    }
    let _ = target;
    Ok(Value::Array(out))
}

fn encode_message(
    m: &Message,
    opts: EncodeOptions,
    target: &str,
    out: &mut Vec<Value>,
) -> Result<(), ProxyError> {
    match m.role {
        Role::Tool => {
            for p in &m.parts {
                if let Part::ToolResult(r) = p {
                    if r.content.iter().any(|c| !matches!(c, Part::Text { .. })) {
                        return Err(ProxyError::unmappable(
                            "tool_result.content (images in tool results)",
                            target,
                        ));
                    }
                    out.push(
                        json!({"role": "tool", "tool_call_id": r.call_id, "content": r.text()}),
                    );
                }
            }
            Ok(())
        }
        role => {
            let role_name = match role {
                Role::System => "system",
                Role::Developer if opts.developer_as_system => "system",
                Role::Developer => "developer",
                Role::User => "user",
                _ => "assistant",
            };
            let content_parts: Vec<Part> = m
                .parts
                .iter()
                .filter(|p| {
                    !matches!(
                        p,
                        Part::ToolCall(_) | Part::Thinking { .. } | Part::RedactedThinking { .. }
                    )
                })
                .cloned()
                .collect();
            let mut msg = json!({"role": role_name});
            let calls: Vec<Value> = m
                .parts
                .iter()
                .filter_map(|p| match p {
                    Part::ToolCall(c) => Some(json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}})),
                    _ => None,
                })
                .collect();
            if content_parts.is_empty() && !calls.is_empty() {
                msg["content"] = Value::Null;
            } else {
                msg["content"] = encode_content(&content_parts, target)?;
            }
            if !calls.is_empty() {
                msg["tool_calls"] = Value::Array(calls);
            }
            if let Some(n) = &m.name {
                msg["name"] = json!(n);
            }
            out.push(msg);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn raw(s: &str) -> RawObject {
        RawObject::parse(Bytes::copy_from_slice(s.as_bytes())).expect("object")
    }

    const OPTS: EncodeOptions = EncodeOptions {
        max_tokens: MaxTokensField::MaxCompletionTokens,
        developer_as_system: false,
        top_k: false,
    };

    #[test]
    fn facts_check_shape_without_decoding() {
        let f = facts(&raw(
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true},"max_tokens":9}"#,
        ))
        .expect("facts");
        assert_eq!(f.model, "m");
        assert!(f.stream && f.stream_usage);
        assert_eq!(f.max_output_tokens, Some(9));
        for (bad, param) in [
            (
                r#"{"model":"m","messages":[{"role":"wizard","content":"hi"}]}"#,
                "messages",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":5}]}"#,
                "messages[0].content",
            ),
            (r#"{"model":"m","messages":[]}"#, "messages"),
            (r#"{"model":7,"messages":[]}"#, "model"),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":3}"#,
                "temperature",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream":"yes"}"#,
                "stream",
            ),
        ] {
            let e = facts(&raw(bad)).expect_err(bad);
            assert_eq!(e.param.as_deref(), Some(param), "{bad}: {e}");
        }
    }

    #[test]
    fn round_trip_keeps_tools_thinking_and_images() {
        let r = decode_request(&raw(
            r#"{"model":"m","messages":[
              {"role":"system","content":"be brief"},
              {"role":"user","content":[{"type":"text","text":"what is this"},{"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA","detail":"low"}}]},
              {"role":"assistant","content":null,"reasoning_content":"hmm","thinking_blocks":[{"type":"thinking","thinking":"hmm","signature":"sig1"}],"tool_calls":[{"id":"call_1","type":"function","function":{"name":"look","arguments":"{\"x\":1}"}}]},
              {"role":"tool","tool_call_id":"call_1","content":"a cat"}],
             "tools":[{"type":"function","function":{"name":"look","parameters":{"type":"object"}}}],
             "tool_choice":{"type":"function","function":{"name":"look"}},
             "response_format":{"type":"json_schema","json_schema":{"name":"out","schema":{"type":"object"},"strict":true}},
             "reasoning_effort":"low","stop":"END","max_completion_tokens":100,"logprobs":true}"#,
        ))
        .expect("decode");
        assert_eq!(r.messages.len(), 4);
        assert_eq!(
            r.messages[2].parts[0],
            Part::Thinking {
                text: "hmm".into(),
                signature: Some("sig1".into())
            }
        );
        assert!(
            matches!(&r.messages[1].parts[1], Part::Image(m) if matches!(&m.source, Source::Base64 { media_type, .. } if media_type == "image/png"))
        );
        assert!(
            matches!(&r.messages[3].parts[0], Part::ToolResult(t) if t.call_id == "call_1" && t.text() == "a cat")
        );
        assert_eq!(r.tool_choice, Some(ToolChoice::Named("look".into())));
        assert_eq!(r.stop, vec!["END".to_owned()]);
        assert_eq!(r.unmapped_field(), Some("logprobs"));
        // Encoding for another OpenAI-format upstream refuses the unmapped field by name...
        let e = encode_request(&r, "up", OPTS, "x").expect_err("logprobs");
        assert_eq!(e.param.as_deref(), Some("logprobs"));
        // ...and without it keeps everything else.
        let mut r = r;
        r.extra.clear();
        let v: Value =
            serde_json::from_slice(&encode_request(&r, "up", OPTS, "x").expect("encode"))
                .expect("json");
        assert_eq!(v["model"], "up");
        assert_eq!(v["max_completion_tokens"], 100);
        assert_eq!(v["reasoning_effort"], "low");
        assert_eq!(
            v["messages"][1]["content"][1]["image_url"]["url"],
            "data:image/png;base64,AAAA"
        );
        assert_eq!(
            v["messages"][2]["tool_calls"][0]["function"]["arguments"],
            "{\"x\":1}"
        );
        assert_eq!(v["messages"][3]["role"], "tool");
        assert_eq!(v["response_format"]["json_schema"]["strict"], true);
    }

    #[test]
    fn bad_shapes_name_the_field() {
        for (bad, param) in [
            (
                r#"{"model":"m","messages":[{"role":"tool","content":"x"}]}"#,
                "messages[0].tool_call_id",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"tools":[{"type":"web_search"}]}"#,
                "tools[0].type",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"reasoning_effort":"max"}"#,
                "reasoning_effort",
            ),
        ] {
            let e = decode_request(&raw(bad)).expect_err(bad);
            assert_eq!(e.param.as_deref(), Some(param), "{bad}: {e}");
        }
        assert!(
            decode_request(&raw(
                r#"{"model":"m","messages":[{"role":"user","content":[{"type":"video"}]}]}"#
            ))
            .is_err()
        );
    }
}
