//! Messages requests: decoded from clients, encoded for Anthropic.

use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value, json};

use super::DEFAULT_MAX_TOKENS;
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
    /// Required by `/v1/messages` (checked in [`facts`]), absent in count_tokens.
    #[serde(default)]
    max_tokens: Option<u32>,
    messages: Vec<WireMessage>,
    #[serde(default)]
    system: Option<Blocks>,
    #[serde(default)]
    stop_sequences: Option<Vec<String>>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    top_k: Option<u32>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    tools: Option<Vec<WireTool>>,
    #[serde(default)]
    tool_choice: Option<WireToolChoice>,
    #[serde(default)]
    thinking: Option<WireThinking>,
    #[serde(default)]
    output_config: Option<WireOutputConfig>,
    #[serde(default)]
    metadata: Option<WireMetadata>,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum WireRole {
    User,
    Assistant,
}

#[derive(Deserialize)]
struct WireMessage {
    role: WireRole,
    content: Blocks,
}

/// A string or an array of content blocks.
struct Blocks(Vec<WireBlock>);

impl<'de> Deserialize<'de> for Blocks {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Blocks;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or an array of content blocks")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Blocks, E> {
                Ok(Blocks(vec![WireBlock::Text {
                    text: s.to_owned(),
                    cache_control: None,
                }]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Blocks, A::Error> {
                let mut v = Vec::new();
                while let Some(b) = seq.next_element()? {
                    v.push(b);
                }
                Ok(Blocks(v))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireBlock {
    Text {
        text: String,
        #[serde(default)]
        cache_control: Option<Value>,
    },
    Image {
        source: WireSource,
    },
    Document {
        source: WireSource,
        #[serde(default)]
        title: Option<String>,
    },
    ToolUse {
        id: String,
        name: String,
        #[serde(default)]
        input: Value,
    },
    ToolResult {
        tool_use_id: String,
        #[serde(default)]
        content: Option<Blocks>,
        #[serde(default)]
        is_error: Option<bool>,
    },
    Thinking {
        thinking: String,
        #[serde(default)]
        signature: Option<String>,
    },
    RedactedThinking {
        data: String,
    },
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireSource {
    Base64 {
        media_type: String,
        data: String,
    },
    Url {
        url: String,
    },
    Text {
        #[serde(default)]
        data: String,
    },
    File {},
}

#[derive(Deserialize)]
struct WireTool {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    input_schema: Option<Value>,
    #[serde(default)]
    strict: Option<bool>,
    #[serde(default)]
    cache_control: Option<Value>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireToolChoice {
    Auto {
        #[serde(default)]
        disable_parallel_tool_use: Option<bool>,
    },
    Any {
        #[serde(default)]
        disable_parallel_tool_use: Option<bool>,
    },
    Tool {
        name: String,
        #[serde(default)]
        disable_parallel_tool_use: Option<bool>,
    },
    None,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireThinking {
    Enabled { budget_tokens: u32 },
    Disabled,
    Adaptive,
}

#[derive(Deserialize)]
struct WireOutputConfig {
    #[serde(default)]
    effort: Option<String>,
    #[serde(default)]
    format: Option<WireFormat>,
}

#[derive(Deserialize)]
struct WireFormat {
    schema: Value,
}

#[derive(Deserialize)]
struct WireMetadata {
    #[serde(default)]
    user_id: Option<String>,
}

/// What the policies need, from the top level; roles and content shapes are checked.
pub fn facts(raw: &RawObject) -> Result<Facts, ProxyError> {
    checked(raw, true)
}

/// The same for `/v1/messages/count_tokens`, which takes no `max_tokens` and never streams.
pub fn count_facts(raw: &RawObject) -> Result<Facts, ProxyError> {
    let mut f = checked(raw, false)?;
    f.stream = false;
    f.stream_usage = false;
    Ok(f)
}

fn checked(raw: &RawObject, needs_max_tokens: bool) -> Result<Facts, ProxyError> {
    #[derive(Deserialize)]
    struct Check<'a> {
        #[allow(dead_code)]
        role: WireRole,
        #[serde(borrow)]
        content: &'a serde_json::value::RawValue,
    }
    let field = |name: &'static str, e: serde_json::Error| {
        ProxyError::invalid(format!("{name}: {e}")).with_param(name)
    };
    let model: String = raw
        .parse_field("model")
        .map_err(|e| field("model", e))?
        .unwrap_or_default();
    if model.trim().is_empty() {
        return Err(ProxyError::invalid("model: Field required").with_param("model"));
    }
    let max_tokens: Option<u32> = raw
        .parse_field("max_tokens")
        .map_err(|e| field("max_tokens", e))?;
    if needs_max_tokens && max_tokens.is_none() {
        return Err(ProxyError::invalid("max_tokens: Field required").with_param("max_tokens"));
    }
    let messages: Vec<Check<'_>> = raw
        .parse_field("messages")
        .map_err(|e| field("messages", e))?
        .ok_or_else(|| ProxyError::invalid("messages: Field required").with_param("messages"))?;
    if messages.is_empty() {
        return Err(
            ProxyError::invalid("messages: at least one message is required")
                .with_param("messages"),
        );
    }
    for (i, m) in messages.iter().enumerate() {
        if !matches!(m.content.get().as_bytes().first(), Some(b'"' | b'[')) {
            return Err(ProxyError::invalid(format!(
                "messages.{i}.content: Input should be a valid string or a list of content blocks"
            ))
            .with_param(format!("messages.{i}.content")));
        }
    }
    if let Some(t) = raw
        .parse_field::<f64>("temperature")
        .map_err(|e| field("temperature", e))?
        && !(0.0..=1.0).contains(&t)
    {
        return Err(
            ProxyError::invalid(format!("temperature: {t} is outside [0, 1]"))
                .with_param("temperature"),
        );
    }
    let stream = raw
        .parse_field::<bool>("stream")
        .map_err(|e| field("stream", e))?
        .unwrap_or(false);
    Ok(Facts {
        model,
        stream,
        stream_usage: stream,
        max_output_tokens: max_tokens,
    })
}

fn source(s: WireSource, at: &str) -> Result<Source, ProxyError> {
    Ok(match s {
        WireSource::Base64 { media_type, data } => Source::Base64 { media_type, data },
        WireSource::Url { url } => Source::Url(url),
        WireSource::Text { data } => Source::Text(data),
        WireSource::File {} => {
            return Err(ProxyError::invalid(
                "file sources refer to Anthropic's Files API and cannot be used through the gateway",
            )
            .with_param(at.to_owned()));
        }
    })
}

fn block(b: WireBlock, at: &str) -> Result<Part, ProxyError> {
    Ok(match b {
        WireBlock::Text {
            text,
            cache_control,
        } => Part::Text {
            text,
            cache_control,
        },
        WireBlock::Image { source: s } => Part::Image(Media {
            source: source(s, at)?,
            detail: None,
        }),
        WireBlock::Document { source: s, title } => Part::Document {
            media: Media {
                source: source(s, at)?,
                detail: None,
            },
            title,
        },
        WireBlock::ToolUse { id, name, input } => Part::ToolCall(ToolCall {
            id,
            name,
            arguments: input.to_string(),
            signature: None,
        }),
        WireBlock::ToolResult {
            tool_use_id,
            content,
            is_error,
        } => {
            let mut parts = Vec::new();
            for (k, b) in content
                .map(|c| c.0)
                .unwrap_or_default()
                .into_iter()
                .enumerate()
            {
                parts.push(block(b, &format!("{at}.content.{k}"))?);
            }
            Part::ToolResult(ToolResult {
                call_id: tool_use_id,
                name: None,
                content: parts,
                is_error: is_error.unwrap_or(false),
            })
        }
        WireBlock::Thinking {
            thinking,
            signature,
        } => Part::Thinking {
            text: thinking,
            signature,
        },
        WireBlock::RedactedThinking { data } => Part::RedactedThinking { data },
    })
}

/// Decodes a client's Messages request into canonical form. A user turn's `tool_result`
/// blocks become tool messages, in order.
pub fn decode_request(raw: &RawObject) -> Result<Request, ProxyError> {
    let w: WireRequest = serde_json::from_str(raw.text()).map_err(bad_json)?;
    let mut messages = Vec::with_capacity(w.messages.len() + 1);
    if let Some(system) = w.system {
        let mut parts = Vec::new();
        for (k, b) in system.0.into_iter().enumerate() {
            parts.push(block(b, &format!("system.{k}"))?);
        }
        if !parts.is_empty() {
            messages.push(Message::new(Role::System, parts));
        }
    }
    for (i, m) in w.messages.into_iter().enumerate() {
        let role = match m.role {
            WireRole::User => Role::User,
            WireRole::Assistant => Role::Assistant,
        };
        let mut current: Vec<Part> = Vec::new();
        let mut current_role = role;
        for (k, b) in m.content.0.into_iter().enumerate() {
            let part = block(b, &format!("messages.{i}.content.{k}"))?;
            let part_role = if matches!(part, Part::ToolResult(_)) {
                Role::Tool
            } else {
                role
            };
            if part_role != current_role && !current.is_empty() {
                messages.push(Message::new(current_role, std::mem::take(&mut current)));
            }
            current_role = part_role;
            current.push(part);
        }
        if !current.is_empty() {
            messages.push(Message::new(current_role, current));
        }
    }
    let tools = w
        .tools
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, t)| match t.kind.as_deref() {
            None | Some("custom") => Ok(Tool {
                name: t.name,
                description: t.description,
                parameters: t.input_schema.unwrap_or_else(|| json!({"type": "object"})),
                strict: t.strict,
                cache_control: t.cache_control,
            }),
            Some(kind) => Err(ProxyError::invalid(format!(
                "tools.{i}: server tool `{kind}` runs on Anthropic's side and has no equivalent elsewhere"
            ))
            .with_param(format!("tools.{i}.type"))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (tool_choice, parallel) = match w.tool_choice {
        None => (None, None),
        Some(WireToolChoice::Auto {
            disable_parallel_tool_use,
        }) => (
            Some(ToolChoice::Auto),
            disable_parallel_tool_use.map(|d| !d),
        ),
        Some(WireToolChoice::Any {
            disable_parallel_tool_use,
        }) => (
            Some(ToolChoice::Required),
            disable_parallel_tool_use.map(|d| !d),
        ),
        Some(WireToolChoice::Tool {
            name,
            disable_parallel_tool_use,
        }) => (
            Some(ToolChoice::Named(name)),
            disable_parallel_tool_use.map(|d| !d),
        ),
        Some(WireToolChoice::None) => (Some(ToolChoice::None), None),
    };
    let effort = match w.output_config.as_ref().and_then(|o| o.effort.as_deref()) {
        None => None,
        Some("xhigh" | "max") => Some(Effort::High),
        Some(e) => Some(Effort::parse(e).ok_or_else(|| {
            ProxyError::invalid(format!("output_config.effort: `{e}` is not a known effort"))
                .with_param("output_config.effort")
        })?),
    };
    let reasoning = match w.thinking {
        None if effort.is_none() => None,
        None => Some(Reasoning {
            effort,
            ..Default::default()
        }),
        Some(WireThinking::Enabled { budget_tokens }) => Some(Reasoning {
            effort,
            budget_tokens: Some(budget_tokens),
            ..Default::default()
        }),
        Some(WireThinking::Adaptive) => Some(Reasoning {
            effort: effort.or(Some(Effort::Medium)),
            ..Default::default()
        }),
        Some(WireThinking::Disabled) => Some(Reasoning {
            disabled: true,
            ..Default::default()
        }),
    };
    let response_format =
        w.output_config
            .and_then(|o| o.format)
            .map(|f| ResponseFormat::JsonSchema {
                name: "output".into(),
                description: None,
                schema: f.schema,
                strict: Some(true),
            });
    Ok(Request {
        model: w.model,
        messages,
        tools,
        tool_choice,
        parallel_tool_calls: parallel,
        response_format,
        max_output_tokens: w.max_tokens,
        temperature: w.temperature,
        top_p: w.top_p,
        top_k: w.top_k,
        stop: w.stop_sequences.unwrap_or_default(),
        seed: None,
        presence_penalty: None,
        frequency_penalty: None,
        reasoning,
        user: w.metadata.and_then(|m| m.user_id),
        stream: w.stream.unwrap_or(false),
        stream_usage: true,
        extra: w.extra,
    })
}

fn encode_source(s: &Source) -> Value {
    match s {
        Source::Url(u) => json!({"type": "url", "url": u}),
        Source::Base64 { media_type, data } => {
            json!({"type": "base64", "media_type": media_type, "data": data})
        }
        Source::Text(t) => json!({"type": "text", "media_type": "text/plain", "data": t}),
    }
}

fn with_cache(mut v: Value, cache_control: &Option<Value>) -> Value {
    if let Some(c) = cache_control {
        v["cache_control"] = c.clone();
    }
    v
}

fn encode_part(p: &Part, at: &str) -> Result<Option<Value>, ProxyError> {
    Ok(Some(match p {
        Part::Text {
            text,
            cache_control,
        } => {
            if text.is_empty() {
                return Ok(None);
            }
            with_cache(json!({"type": "text", "text": text}), cache_control)
        }
        Part::Image(m) => json!({"type": "image", "source": encode_source(&m.source)}),
        Part::Document { media, title } => {
            let mut d = json!({"type": "document", "source": encode_source(&media.source)});
            if let Some(t) = title {
                d["title"] = json!(t);
            }
            d
        }
        // Anthropic verifies thinking it gets back by its signature; reasoning text from
        // another provider has none and cannot be replayed.
        Part::Thinking {
            signature: None, ..
        } => return Ok(None),
        Part::Thinking {
            text,
            signature: Some(s),
        } => json!({"type": "thinking", "thinking": text, "signature": s}),
        Part::RedactedThinking { data } => json!({"type": "redacted_thinking", "data": data}),
        Part::ToolCall(c) => {
            let input: Value = if c.arguments.trim().is_empty() {
                json!({})
            } else {
                serde_json::from_str(&c.arguments).map_err(|e| {
                    ProxyError::invalid(format!(
                        "{at}: the arguments of tool call `{}` are not valid JSON: {e}",
                        c.id
                    ))
                    .with_param(at.to_owned())
                })?
            };
            json!({"type": "tool_use", "id": c.id, "name": c.name, "input": input})
        }
        Part::ToolResult(r) => {
            let mut content = Vec::new();
            for (k, c) in r.content.iter().enumerate() {
                if let Some(v) = encode_part(c, &format!("{at}.content.{k}"))? {
                    content.push(v);
                }
            }
            let mut v =
                json!({"type": "tool_result", "tool_use_id": r.call_id, "content": content});
            if r.is_error {
                v["is_error"] = json!(true);
            }
            v
        }
    }))
}

/// Encodes a canonical request for Anthropic. System and developer messages are hoisted into
/// `system` (in order); tool results go into user turns; consecutive turns of one role merge.
pub fn encode_request(r: &Request, model: &str) -> Result<bytes::Bytes, ProxyError> {
    const TARGET: &str = "Anthropic";
    if let Some(f) = r.unmapped_field() {
        return Err(ProxyError::unmappable(f, TARGET));
    }
    for (field, set) in [
        ("seed", r.seed.is_some()),
        ("presence_penalty", r.presence_penalty.is_some()),
        ("frequency_penalty", r.frequency_penalty.is_some()),
    ] {
        if set {
            return Err(ProxyError::unmappable(field, TARGET));
        }
    }
    if let Some(t) = r.temperature
        && !(0.0..=1.0).contains(&t)
    {
        return Err(ProxyError::invalid(format!(
            "temperature {t} is outside Anthropic's range [0, 1]"
        ))
        .with_param("temperature"));
    }
    let mut system = Vec::new();
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for (i, m) in r.messages.iter().enumerate() {
        let at = format!("messages[{i}]");
        let mut blocks = Vec::with_capacity(m.parts.len());
        for (k, p) in m.parts.iter().enumerate() {
            if let Some(v) = encode_part(p, &format!("{at}.content[{k}]"))? {
                blocks.push(v);
            }
        }
        let role = match m.role {
            Role::System | Role::Developer => {
                system.extend(blocks.into_iter().filter(|b| b["type"] == "text"));
                continue;
            }
            Role::User | Role::Tool => "user",
            Role::Assistant => "assistant",
        };
        if blocks.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some((last, content)) if *last == role => content.extend(blocks),
            _ => turns.push((role, blocks)),
        }
    }
    let messages: Vec<Value> = turns
        .into_iter()
        .map(|(role, content)| json!({"role": role, "content": content}))
        .collect();
    let budget = r.reasoning.as_ref().and_then(Reasoning::budget);
    let max_tokens = match (r.max_output_tokens, budget) {
        (Some(m), Some(b)) if m <= b => {
            return Err(ProxyError::invalid(format!(
                "the output cap ({m}) must exceed the thinking budget ({b} tokens)"
            ))
            .with_param("max_tokens"));
        }
        (Some(m), _) => m,
        (None, Some(b)) => b + DEFAULT_MAX_TOKENS,
        (None, None) => DEFAULT_MAX_TOKENS,
    };
    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    body.insert("max_tokens".into(), json!(max_tokens));
    body.insert("messages".into(), Value::Array(messages));
    match system.as_slice() {
        [] => {}
        // One plain block: the string form.
        [one] if one.get("cache_control").is_none() => {
            body.insert("system".into(), one["text"].clone());
        }
        _ => {
            body.insert("system".into(), Value::Array(system));
        }
    }
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            body.insert(k.into(), v);
        }
    };
    put("temperature", r.temperature.map(|v| json!(v)));
    put("top_p", r.top_p.map(|v| json!(v)));
    put("top_k", r.top_k.map(|v| json!(v)));
    put(
        "stop_sequences",
        (!r.stop.is_empty()).then(|| json!(r.stop)),
    );
    put("stream", r.stream.then_some(json!(true)));
    put("metadata", r.user.as_ref().map(|u| json!({"user_id": u})));
    if !r.tools.is_empty() {
        let tools: Vec<Value> = r
            .tools
            .iter()
            .map(|t| {
                let mut v = json!({"name": t.name, "input_schema": t.parameters});
                if let Some(d) = &t.description {
                    v["description"] = json!(d);
                }
                if let Some(s) = t.strict {
                    v["strict"] = json!(s);
                }
                with_cache(v, &t.cache_control)
            })
            .collect();
        put("tools", Some(Value::Array(tools)));
    }
    let disable_parallel = r.parallel_tool_calls.map(|p| !p);
    let mut choice = match &r.tool_choice {
        None if disable_parallel.is_some() && !r.tools.is_empty() => Some(json!({"type": "auto"})),
        None => None,
        Some(ToolChoice::Auto) => Some(json!({"type": "auto"})),
        Some(ToolChoice::None) => Some(json!({"type": "none"})),
        Some(ToolChoice::Required) => Some(json!({"type": "any"})),
        Some(ToolChoice::Named(n)) => Some(json!({"type": "tool", "name": n})),
    };
    if let (Some(c), Some(d)) = (choice.as_mut(), disable_parallel)
        && c["type"] != "none"
    {
        c["disable_parallel_tool_use"] = json!(d);
    }
    put("tool_choice", choice);
    match &r.reasoning {
        Some(x) if x.disabled || x.effort == Some(Effort::None) => {
            put("thinking", Some(json!({"type": "disabled"})));
        }
        Some(_) => {
            if let Some(b) = budget {
                put(
                    "thinking",
                    Some(json!({"type": "enabled", "budget_tokens": b})),
                );
            }
        }
        None => {}
    }
    match &r.response_format {
        None | Some(ResponseFormat::Text) => {}
        Some(ResponseFormat::JsonObject) => put(
            "output_config",
            Some(json!({"format": {"type": "json_schema", "schema": {"type": "object"}}})),
        ),
        Some(ResponseFormat::JsonSchema { schema, .. }) => put(
            "output_config",
            Some(json!({"format": {"type": "json_schema", "schema": schema}})),
        ),
    }
    crate::llm::to_bytes(&body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn raw(s: &str) -> RawObject {
        RawObject::parse(Bytes::copy_from_slice(s.as_bytes())).expect("object")
    }

    #[test]
    fn tool_results_split_into_tool_messages_and_merge_back() {
        let r = decode_request(&raw(r#"{"model":"claude","max_tokens":4000,
          "system":[{"type":"text","text":"be brief","cache_control":{"type":"ephemeral"}}],
          "messages":[
            {"role":"user","content":"weather?"},
            {"role":"assistant","content":[{"type":"thinking","thinking":"need tool","signature":"sig"},{"type":"tool_use","id":"toolu_1","name":"w","input":{"city":"Paris"}},{"type":"tool_use","id":"toolu_2","name":"w","input":{"city":"Rome"}}]},
            {"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_1","content":"sunny"},{"type":"tool_result","tool_use_id":"toolu_2","content":[{"type":"text","text":"rain"}],"is_error":true},{"type":"text","text":"and?"}]}],
          "thinking":{"type":"enabled","budget_tokens":2048},
          "tool_choice":{"type":"any","disable_parallel_tool_use":true},
          "tools":[{"name":"w","input_schema":{"type":"object"}}]}"#)).expect("decode");
        let roles: Vec<Role> = r.messages.iter().map(|m| m.role).collect();
        assert_eq!(
            roles,
            [
                Role::System,
                Role::User,
                Role::Assistant,
                Role::Tool,
                Role::User
            ]
        );
        assert_eq!(r.parallel_tool_calls, Some(false));
        assert_eq!(r.tool_choice, Some(ToolChoice::Required));
        assert_eq!(r.reasoning.as_ref().and_then(Reasoning::budget), Some(2048));
        let body: Value = serde_json::from_slice(&encode_request(&r, "claude-up").expect("encode"))
            .expect("json");
        assert_eq!(body["model"], "claude-up");
        assert_eq!(body["system"][0]["cache_control"]["type"], "ephemeral");
        let plain = Request {
            messages: vec![
                Message::text(Role::System, "terse"),
                Message::text(Role::User, "hi"),
            ],
            ..Default::default()
        };
        let v: Value =
            serde_json::from_slice(&encode_request(&plain, "c").expect("ok")).expect("json");
        assert_eq!(v["system"], "terse");
        assert_eq!(body["messages"].as_array().map(Vec::len), Some(3), "{body}");
        assert_eq!(body["messages"][1]["content"][0]["signature"], "sig");
        assert_eq!(body["messages"][1]["content"][2]["input"]["city"], "Rome");
        assert_eq!(body["messages"][2]["content"][1]["is_error"], true);
        assert_eq!(body["messages"][2]["content"][2]["text"], "and?");
        assert_eq!(
            body["tool_choice"],
            json!({"type": "any", "disable_parallel_tool_use": true})
        );
        assert_eq!(body["thinking"]["budget_tokens"], 2048);
    }

    #[test]
    fn translation_refuses_what_anthropic_cannot_take() {
        let mut r = Request {
            model: "m".into(),
            messages: vec![Message::text(Role::User, "hi")],
            temperature: Some(1.5),
            ..Default::default()
        };
        assert_eq!(
            encode_request(&r, "c").expect_err("temp").param.as_deref(),
            Some("temperature")
        );
        r.temperature = None;
        r.seed = Some(3);
        assert_eq!(
            encode_request(&r, "c").expect_err("seed").param.as_deref(),
            Some("seed")
        );
        r.seed = None;
        r.reasoning = Some(Reasoning {
            budget_tokens: Some(4096),
            ..Default::default()
        });
        r.max_output_tokens = Some(1000);
        assert_eq!(
            encode_request(&r, "c")
                .expect_err("budget")
                .param
                .as_deref(),
            Some("max_tokens")
        );
        r.max_output_tokens = None;
        let v: Value = serde_json::from_slice(&encode_request(&r, "c").expect("ok")).expect("json");
        assert_eq!(v["max_tokens"], 4096 + DEFAULT_MAX_TOKENS);
        // Unsigned reasoning from another provider is not replayed; signed thinking is.
        r.messages.push(Message::new(
            Role::Assistant,
            vec![
                Part::Thinking {
                    text: "x".into(),
                    signature: None,
                },
                Part::text("answer"),
            ],
        ));
        let v: Value = serde_json::from_slice(&encode_request(&r, "c").expect("ok")).expect("json");
        assert_eq!(
            v["messages"][1]["content"],
            json!([{"type": "text", "text": "answer"}])
        );
    }

    #[test]
    fn facts_follow_anthropic_validation() {
        let f = facts(&raw(r#"{"model":"c","max_tokens":5,"messages":[{"role":"user","content":"hi"}],"stream":true}"#)).expect("ok");
        assert!(f.stream);
        assert_eq!(f.max_output_tokens, Some(5));
        for (bad, param) in [
            (
                r#"{"model":"c","messages":[{"role":"user","content":"hi"}]}"#,
                "max_tokens",
            ),
            (
                r#"{"model":"c","max_tokens":5,"messages":[{"role":"system","content":"hi"}]}"#,
                "messages",
            ),
            (
                r#"{"model":"c","max_tokens":5,"messages":[{"role":"user","content":3}]}"#,
                "messages.0.content",
            ),
            (
                r#"{"model":"c","max_tokens":"5","messages":[]}"#,
                "max_tokens",
            ),
            (
                r#"{"model":"c","max_tokens":5,"messages":[{"role":"user","content":"x"}],"temperature":1.5}"#,
                "temperature",
            ),
        ] {
            assert_eq!(
                facts(&raw(bad)).expect_err(bad).param.as_deref(),
                Some(param),
                "{bad}"
            );
        }
    }
}
