//! Anthropic Messages API <-> OpenAI chat completions, streaming included. Usage is counted
//! from the stream (input tokens arrive in `message_start`, output tokens in `message_delta`).

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Flow, StreamError};
use crate::openai::{
    ChatChunk, ChatRequest, ChatResponse, Choice, ChunkChoice, Delta, FunctionCall,
    FunctionCallDelta, MessageContent, ResponseMessage, Role, ToolCall, ToolCallDelta, Usage,
    now_unix,
};
use crate::sse::{self, Event};

/// Version header sent upstream.
pub const API_VERSION: &str = "2023-06-01";
/// `max_tokens` is required by Anthropic; used when the client sets none.
pub const DEFAULT_MAX_TOKENS: u32 = 4096;

/// URL of the Messages endpoint.
pub fn messages_url(base: &str) -> String {
    if base.ends_with("/v1") {
        format!("{base}/messages")
    } else {
        format!("{base}/v1/messages")
    }
}

#[derive(Debug, Serialize)]
struct MessagesRequest {
    model: String,
    max_tokens: u32,
    messages: Vec<Message>,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    stop_sequences: Vec<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<ToolDef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<Value>,
}

#[derive(Debug, Serialize)]
struct Message {
    role: &'static str,
    content: Vec<Block>,
}

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block {
    Text {
        text: String,
    },
    Image {
        source: Value,
    },
    ToolUse {
        id: String,
        name: String,
        input: Value,
    },
    ToolResult {
        tool_use_id: String,
        content: String,
    },
}

#[derive(Debug, Serialize)]
struct ToolDef {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    input_schema: Value,
}

fn image_source(url: &str) -> Value {
    // data:image/png;base64,XXXX
    if let Some(rest) = url.strip_prefix("data:")
        && let Some((meta, data)) = rest.split_once(',')
    {
        let media_type = meta.trim_end_matches(";base64");
        return json!({"type": "base64", "media_type": media_type, "data": data});
    }
    json!({"type": "url", "url": url})
}

fn content_blocks(content: Option<&MessageContent>) -> Vec<Block> {
    match content {
        None => Vec::new(),
        Some(MessageContent::Text(t)) if t.is_empty() => Vec::new(),
        Some(MessageContent::Text(t)) => vec![Block::Text { text: t.clone() }],
        Some(MessageContent::Parts(parts)) => parts
            .iter()
            .filter_map(|p| match (p.kind.as_str(), &p.text, &p.image_url) {
                ("text", Some(t), _) => Some(Block::Text { text: t.clone() }),
                ("image_url", _, Some(img)) => Some(Block::Image {
                    source: image_source(&img.url),
                }),
                _ => None,
            })
            .collect(),
    }
}

/// OpenAI chat request -> Anthropic Messages request body.
pub fn translate_request(req: &ChatRequest, model: &str) -> Result<Bytes, serde_json::Error> {
    let mut system = Vec::new();
    let mut messages: Vec<Message> = Vec::new();
    for m in &req.messages {
        let (role, blocks) = match m.role {
            Role::System | Role::Developer => {
                if let Some(c) = &m.content {
                    system.push(c.text());
                }
                continue;
            }
            Role::User => ("user", content_blocks(m.content.as_ref())),
            Role::Assistant => {
                let mut blocks = content_blocks(m.content.as_ref());
                for call in m.tool_calls.iter().flatten() {
                    let input = serde_json::from_str(&call.function.arguments)
                        .unwrap_or_else(|_| json!({}));
                    blocks.push(Block::ToolUse {
                        id: call.id.clone().unwrap_or_default(),
                        name: call.function.name.clone(),
                        input,
                    });
                }
                ("assistant", blocks)
            }
            Role::Tool | Role::Function => (
                "user",
                vec![Block::ToolResult {
                    tool_use_id: m
                        .tool_call_id
                        .clone()
                        .or_else(|| m.name.clone())
                        .unwrap_or_default(),
                    content: m
                        .content
                        .as_ref()
                        .map(MessageContent::text)
                        .unwrap_or_default(),
                }],
            ),
        };
        // Anthropic wants alternating roles: merge consecutive messages of one role.
        match messages.last_mut() {
            Some(last) if last.role == role => last.content.extend(blocks),
            _ => messages.push(Message {
                role,
                content: blocks,
            }),
        }
    }
    let tools = req
        .tools
        .iter()
        .flatten()
        .map(|t| ToolDef {
            name: t.function.name.clone(),
            description: t.function.description.clone(),
            input_schema: t
                .function
                .parameters
                .clone()
                .unwrap_or_else(|| json!({"type": "object"})),
        })
        .collect();
    let tool_choice = req.tool_choice.as_ref().and_then(|c| match c {
        Value::String(s) if s == "auto" => Some(json!({"type": "auto"})),
        Value::String(s) if s == "required" => Some(json!({"type": "any"})),
        Value::String(s) if s == "none" => Some(json!({"type": "none"})),
        Value::Object(o) => o
            .get("function")
            .and_then(|f| f.get("name"))
            .map(|name| json!({"type": "tool", "name": name})),
        _ => None,
    });
    let body = MessagesRequest {
        model: model.to_owned(),
        max_tokens: req
            .max_completion_tokens
            .or(req.max_tokens)
            .unwrap_or(DEFAULT_MAX_TOKENS),
        messages,
        system: (!system.is_empty()).then(|| system.join("\n\n")),
        temperature: req.temperature.map(|t| t.min(1.0)),
        top_p: req.top_p,
        stop_sequences: req.stop.clone().map(|s| s.into_vec()).unwrap_or_default(),
        stream: req.is_stream(),
        tools,
        tool_choice,
        metadata: req.user.as_ref().map(|u| json!({"user_id": u})),
    };
    serde_json::to_vec(&body).map(Bytes::from)
}

#[derive(Debug, Deserialize)]
struct MessagesResponse {
    id: String,
    model: String,
    content: Vec<ResponseBlock>,
    stop_reason: Option<String>,
    usage: AnthropicUsage,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ResponseBlock {
    Text {
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        input: Value,
    },
    #[serde(other)]
    Other,
}

#[derive(Clone, Copy, Debug, Default, Deserialize)]
struct AnthropicUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
    #[serde(default)]
    cache_creation_input_tokens: u64,
    #[serde(default)]
    cache_read_input_tokens: u64,
}

impl AnthropicUsage {
    fn prompt(&self) -> u64 {
        self.input_tokens + self.cache_creation_input_tokens + self.cache_read_input_tokens
    }
}

/// Anthropic stop reason -> OpenAI finish reason.
pub fn finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        _ => "stop",
    }
}

/// Anthropic Messages response body -> OpenAI chat completion.
pub fn translate_response(body: &[u8]) -> Result<ChatResponse, serde_json::Error> {
    let r: MessagesResponse = serde_json::from_slice(body)?;
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for block in r.content {
        match block {
            ResponseBlock::Text { text: t } => text.push_str(&t),
            ResponseBlock::ToolUse { id, name, input } => tool_calls.push(ToolCall {
                id: Some(id),
                kind: "function".into(),
                function: FunctionCall {
                    name,
                    arguments: input.to_string(),
                },
            }),
            ResponseBlock::Other => {}
        }
    }
    Ok(ChatResponse {
        id: r.id,
        object: "chat.completion".into(),
        created: now_unix(),
        model: r.model,
        choices: vec![Choice {
            index: 0,
            message: ResponseMessage {
                role: "assistant".into(),
                content: (!text.is_empty() || tool_calls.is_empty()).then_some(text),
                tool_calls: (!tool_calls.is_empty()).then_some(tool_calls),
            },
            finish_reason: Some(
                finish_reason(r.stop_reason.as_deref().unwrap_or("end_turn")).into(),
            ),
            logprobs: None,
        }],
        usage: Some(Usage::new(r.usage.prompt(), r.usage.output_tokens)),
    })
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum StreamEvent {
    MessageStart {
        message: StartMessage,
    },
    ContentBlockStart {
        index: u32,
        content_block: StartBlock,
    },
    ContentBlockDelta {
        index: u32,
        delta: BlockDelta,
    },
    ContentBlockStop {},
    MessageDelta {
        delta: MessageDeltaBody,
        #[serde(default)]
        usage: Option<AnthropicUsage>,
    },
    MessageStop {},
    Ping {},
    Error {
        error: ErrorBody,
    },
}

#[derive(Debug, Deserialize)]
struct StartMessage {
    id: String,
    model: String,
    #[serde(default)]
    usage: AnthropicUsage,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum StartBlock {
    Text {},
    ToolUse {
        id: String,
        name: String,
    },
    #[serde(other)]
    Other,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum BlockDelta {
    TextDelta {
        text: String,
    },
    InputJsonDelta {
        partial_json: String,
    },
    #[serde(other)]
    Other,
}

#[derive(Debug, Deserialize)]
struct MessageDeltaBody {
    #[serde(default)]
    stop_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    message: String,
}

/// Stream state machine: Anthropic events in, OpenAI `chat.completion.chunk`s out.
#[derive(Debug)]
pub struct StreamState {
    client_wants_usage: bool,
    id: String,
    model: String,
    created: u64,
    started: bool,
    input_tokens: u64,
    output_tokens: Option<u64>,
    /// Anthropic content-block index -> OpenAI tool-call index.
    tool_blocks: Vec<(u32, u32)>,
    finish_reason: Option<&'static str>,
}

impl StreamState {
    pub fn new(client_wants_usage: bool) -> Self {
        Self {
            client_wants_usage,
            id: String::new(),
            model: String::new(),
            created: now_unix(),
            started: false,
            input_tokens: 0,
            output_tokens: None,
            tool_blocks: Vec::new(),
            finish_reason: None,
        }
    }

    pub fn usage(&self) -> Option<Usage> {
        self.output_tokens.map(|o| Usage::new(self.input_tokens, o))
    }

    fn chunk(&self, delta: Delta, finish_reason: Option<&str>) -> Result<Bytes, StreamError> {
        let c = ChatChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk",
            created: self.created,
            model: self.model.clone(),
            choices: vec![ChunkChoice {
                index: 0,
                delta,
                finish_reason: finish_reason.map(str::to_owned),
            }],
            usage: None,
        };
        encode(&c)
    }

    pub fn on_event(&mut self, ev: Event, out: &mut Vec<Bytes>) -> Result<Flow, StreamError> {
        let parsed: StreamEvent = serde_json::from_str(&ev.data).map_err(|e| {
            StreamError::new("malformed_event", format!("malformed upstream event: {e}"))
        })?;
        if !self.started
            && !matches!(
                parsed,
                StreamEvent::MessageStart { .. } | StreamEvent::Ping {} | StreamEvent::Error { .. }
            )
        {
            return Err(StreamError::new(
                "malformed_event",
                "upstream stream did not start with message_start",
            ));
        }
        match parsed {
            StreamEvent::MessageStart { message } => {
                self.started = true;
                self.id = message.id;
                self.model = message.model;
                self.input_tokens = message.usage.prompt();
                out.push(self.chunk(
                    Delta {
                        role: Some("assistant".into()),
                        content: Some(String::new()),
                        tool_calls: None,
                    },
                    None,
                )?);
            }
            StreamEvent::ContentBlockStart {
                index,
                content_block,
            } => {
                if let StartBlock::ToolUse { id, name } = content_block {
                    let tool_index = u32::try_from(self.tool_blocks.len()).unwrap_or(u32::MAX);
                    self.tool_blocks.push((index, tool_index));
                    let delta = ToolCallDelta {
                        index: tool_index,
                        id: Some(id),
                        kind: Some("function".into()),
                        function: FunctionCallDelta {
                            name: Some(name),
                            arguments: Some(String::new()),
                        },
                    };
                    out.push(self.chunk(
                        Delta {
                            tool_calls: Some(vec![delta]),
                            ..Default::default()
                        },
                        None,
                    )?);
                }
            }
            StreamEvent::ContentBlockDelta { index, delta } => match delta {
                BlockDelta::TextDelta { text } => {
                    out.push(self.chunk(
                        Delta {
                            content: Some(text),
                            ..Default::default()
                        },
                        None,
                    )?);
                }
                BlockDelta::InputJsonDelta { partial_json } => {
                    let tool_index = self
                        .tool_blocks
                        .iter()
                        .find(|(b, _)| *b == index)
                        .map(|(_, t)| *t)
                        .ok_or_else(|| {
                            StreamError::new(
                                "malformed_event",
                                "input_json_delta for an unknown block",
                            )
                        })?;
                    let delta = ToolCallDelta {
                        index: tool_index,
                        function: FunctionCallDelta {
                            name: None,
                            arguments: Some(partial_json),
                        },
                        ..Default::default()
                    };
                    out.push(self.chunk(
                        Delta {
                            tool_calls: Some(vec![delta]),
                            ..Default::default()
                        },
                        None,
                    )?);
                }
                BlockDelta::Other => {}
            },
            StreamEvent::ContentBlockStop {} | StreamEvent::Ping {} => {}
            StreamEvent::MessageDelta { delta, usage } => {
                if let Some(u) = usage {
                    self.output_tokens = Some(u.output_tokens);
                    if u.input_tokens > 0 {
                        self.input_tokens = u.prompt();
                    }
                }
                if let Some(reason) = delta.stop_reason {
                    let fr = finish_reason(&reason);
                    self.finish_reason = Some(fr);
                    out.push(self.chunk(Delta::default(), Some(fr))?);
                }
            }
            StreamEvent::MessageStop {} => {
                if self.finish_reason.is_none() {
                    out.push(self.chunk(Delta::default(), Some("stop"))?);
                }
                if self.client_wants_usage {
                    let c = ChatChunk {
                        id: self.id.clone(),
                        object: "chat.completion.chunk",
                        created: self.created,
                        model: self.model.clone(),
                        choices: Vec::new(),
                        usage: Some(
                            self.usage()
                                .unwrap_or_else(|| Usage::new(self.input_tokens, 0)),
                        ),
                    };
                    out.push(encode(&c)?);
                }
                out.push(Bytes::from_static(sse::DONE));
                return Ok(Flow::Done);
            }
            StreamEvent::Error { error } => {
                let body = json!({"error": {"message": error.message, "type": error.kind, "param": null, "code": null}});
                out.push(sse::data(body.to_string().as_bytes()));
                return Err(StreamError::new(
                    "upstream_error_event",
                    format!("upstream stream error: {}", error.kind),
                ));
            }
        }
        Ok(Flow::Continue)
    }
}

fn encode(c: &ChatChunk) -> Result<Bytes, StreamError> {
    serde_json::to_vec(c)
        .map(|v| sse::data(&v))
        .map_err(|e| StreamError::new("encode", e.to_string()))
}

#[cfg(test)]
mod tests;
