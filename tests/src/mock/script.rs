//! What the mock answers, independent of wire format: the prompt's knobs, the request's tools
//! and response format decide thinking, text, tool calls, stop reason and usage; each
//! provider module then writes the script in its own format.

use serde_json::{Map, Value, json};

use super::{Api, Knobs};

/// One tool call.
#[derive(Clone, Debug)]
pub(crate) struct Call {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) args: Value,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stop {
    End,
    Length,
    Tools,
}

/// The answer, before it is written in a format.
#[derive(Clone, Debug)]
pub(crate) struct Script {
    pub(crate) thinking: Option<String>,
    pub(crate) signature: String,
    pub(crate) chunks: Vec<String>,
    pub(crate) calls: Vec<Call>,
    pub(crate) stop: Stop,
    pub(crate) prompt_tokens: u64,
    pub(crate) cache_read: u64,
    pub(crate) cache_write: u64,
}

impl Script {
    pub(crate) fn text(&self) -> String {
        self.chunks.concat()
    }

    pub(crate) fn thinking_tokens(&self) -> u64 {
        self.thinking
            .as_ref()
            .map_or(0, |t| t.split_whitespace().count() as u64)
    }

    /// Output tokens: one per chunk, per thinking word, five per tool call.
    pub(crate) fn output_tokens(&self) -> u64 {
        self.chunks.len() as u64 + self.thinking_tokens() + 5 * self.calls.len() as u64
    }

    /// Input tokens not read from or written to a cache.
    pub(crate) fn uncached_tokens(&self) -> u64 {
        self.prompt_tokens
            .saturating_sub(self.cache_read)
            .saturating_sub(self.cache_write)
    }

    pub(crate) fn new(api: &Api, body: &Value, prompt: &str, knobs: &Knobs) -> Self {
        let offered = tools(api, body);
        let forced = forced_tool(api, body, &offered);
        let answered = last_tool_result(api, body);
        let schema = json_schema(api, body);
        let mut calls = Vec::new();
        let mut chunks = Vec::new();
        let mut stop = Stop::End;
        if let Some(result) = answered {
            chunks = words(&format!("Tool said: {result}"));
        } else if let Some((name, params)) = forced {
            calls.push(Call {
                id: call_id(api, 0),
                name,
                args: sample(&params, ""),
            });
        } else if knobs.tools > 0 && !offered.is_empty() {
            for i in 0..knobs.tools {
                let (name, params) = &offered[i % offered.len()];
                let mut args = sample(params, "");
                if let Some(loc) = args.get_mut("location") {
                    *loc = json!(["Paris", "Rome", "Tokyo", "Lima"][i % 4]);
                }
                calls.push(Call {
                    id: call_id(api, i),
                    name: name.clone(),
                    args,
                });
            }
        } else if let Some(schema) = schema {
            let text = sample(&schema, "").to_string();
            let third = text.len().div_ceil(3);
            chunks = text
                .as_bytes()
                .chunks(third.max(1))
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect();
        } else if knobs.echo {
            chunks = words(&strip_knobs(prompt));
        } else {
            chunks = (0..knobs.chunks.unwrap_or(8))
                .map(|i| format!("tok{i} "))
                .collect();
        }
        if !calls.is_empty() {
            stop = Stop::Tools;
        } else if knobs.stop_length {
            stop = Stop::Length;
        }
        let prompt_tokens = (prompt.len() as u64).div_ceil(4).max(1);
        let (cache_read, cache_write) = if knobs.cache {
            (prompt_tokens / 2, prompt_tokens / 4)
        } else {
            (0, 0)
        };
        Script {
            thinking: knobs
                .thinking
                .then(|| "Let me think about this step by step.".to_owned()),
            signature: format!("EqQBCkgIARABGAIiQL{:016x}", prompt.len()),
            chunks,
            calls,
            stop,
            prompt_tokens,
            cache_read,
            cache_write,
        }
    }
}

fn call_id(api: &Api, i: usize) -> String {
    match api {
        Api::Anthropic => format!("toolu_01mock{i:012}"),
        Api::Bedrock { .. } => format!("tooluse_mock{i:010}"),
        _ => format!("call_mock{i:014}"),
    }
}

fn words(text: &str) -> Vec<String> {
    text.split_inclusive(' ').map(str::to_owned).collect()
}

fn strip_knobs(prompt: &str) -> String {
    prompt
        .split_whitespace()
        .filter(|w| !w.starts_with("mock."))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A value for a JSON schema, as a model might fill it.
fn sample(schema: &Value, name: &str) -> Value {
    match schema.get("type").and_then(Value::as_str) {
        Some("string") => match name {
            "location" | "city" => json!("Paris"),
            _ => json!("mock"),
        },
        Some("integer") => json!(42),
        Some("number") => json!(4.2),
        Some("boolean") => json!(true),
        Some("array") => json!([]),
        _ => {
            let mut out = Map::new();
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (k, v) in props {
                    out.insert(k.clone(), sample(v, k));
                }
            }
            Value::Object(out)
        }
    }
}

fn text_of(v: &Value, out: &mut String) {
    match v {
        Value::String(s) => {
            out.push_str(s);
            out.push(' ');
        }
        Value::Array(items) => items.iter().for_each(|i| text_of(i, out)),
        Value::Object(o) => {
            for key in ["text", "content", "output", "input_text"] {
                if let Some(t) = o.get(key) {
                    text_of(t, out);
                }
            }
            if let Some(parts) = o.get("parts") {
                text_of(parts, out);
            }
        }
        _ => {}
    }
}

/// Every text of a request, for knobs and token counts.
pub(crate) fn prompt_text(api: &Api, body: &Value) -> String {
    let mut out = String::new();
    let fields: &[&str] = match api {
        Api::OpenAiEmbeddings => &["input"],
        Api::OpenAiCompletions => &["prompt"],
        Api::OpenAiResponses => &["instructions", "input"],
        Api::Anthropic | Api::AnthropicCount => &["system", "messages"],
        Api::Gemini { .. } | Api::GeminiCount => {
            &["systemInstruction", "contents", "generateContentRequest"]
        }
        Api::GeminiEmbed { .. } => &["content", "requests"],
        Api::Bedrock { .. } => &["system", "messages"],
        Api::BedrockCount => &["input"],
        Api::OpenAiChat => &["messages"],
    };
    for f in fields {
        if let Some(v) = body.get(*f) {
            match (api, *f) {
                (Api::GeminiCount, "generateContentRequest") => {
                    for k in ["systemInstruction", "contents"] {
                        if let Some(x) = v.get(k) {
                            text_of(x, &mut out);
                        }
                    }
                }
                (Api::BedrockCount, "input") => {
                    if let Some(c) = v.get("converse") {
                        for k in ["system", "messages"] {
                            if let Some(x) = c.get(k) {
                                text_of(x, &mut out);
                            }
                        }
                    }
                }
                _ => text_of(v, &mut out),
            }
        }
    }
    out
}

/// The tools a request offers: (name, parameters schema).
fn tools(api: &Api, body: &Value) -> Vec<(String, Value)> {
    let list = |v: Option<&Value>| v.and_then(Value::as_array).cloned().unwrap_or_default();
    let pair = |name: Option<&Value>, params: Option<&Value>| {
        name.and_then(Value::as_str).map(|n| {
            (
                n.to_owned(),
                params.cloned().unwrap_or(json!({"type": "object"})),
            )
        })
    };
    match api {
        Api::OpenAiChat => list(body.get("tools"))
            .iter()
            .filter_map(|t| {
                pair(
                    t.pointer("/function/name"),
                    t.pointer("/function/parameters"),
                )
            })
            .collect(),
        Api::OpenAiResponses => list(body.get("tools"))
            .iter()
            .filter_map(|t| pair(t.get("name"), t.get("parameters")))
            .collect(),
        Api::Anthropic => list(body.get("tools"))
            .iter()
            .filter_map(|t| pair(t.get("name"), t.get("input_schema")))
            .collect(),
        Api::Gemini { .. } => list(body.get("tools"))
            .iter()
            .flat_map(|t| list(t.get("functionDeclarations")))
            .filter_map(|d| {
                pair(
                    d.get("name"),
                    d.get("parametersJsonSchema").or(d.get("parameters")),
                )
            })
            .collect(),
        Api::Bedrock { .. } => list(body.pointer("/toolConfig/tools"))
            .iter()
            .filter_map(|t| {
                pair(
                    t.pointer("/toolSpec/name"),
                    t.pointer("/toolSpec/inputSchema/json"),
                )
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The tool a request forces, if any.
fn forced_tool(api: &Api, body: &Value, offered: &[(String, Value)]) -> Option<(String, Value)> {
    let named = |name: Option<&str>| {
        let name = name?;
        offered.iter().find(|(n, _)| n == name).cloned()
    };
    let first = || offered.first().cloned();
    match api {
        Api::OpenAiChat => match body.get("tool_choice") {
            Some(Value::String(s)) if s == "required" => first(),
            Some(c) => named(c.pointer("/function/name").and_then(Value::as_str)),
            None => None,
        },
        Api::OpenAiResponses => match body.get("tool_choice") {
            Some(Value::String(s)) if s == "required" => first(),
            Some(c) => named(c.get("name").and_then(Value::as_str)),
            None => None,
        },
        Api::Anthropic => match body.pointer("/tool_choice/type").and_then(Value::as_str) {
            Some("any") => first(),
            Some("tool") => named(body.pointer("/tool_choice/name").and_then(Value::as_str)),
            _ => None,
        },
        Api::Gemini { .. } => {
            let cfg = body.pointer("/toolConfig/functionCallingConfig")?;
            if cfg.get("mode").and_then(Value::as_str) != Some("ANY") {
                return None;
            }
            named(
                cfg.pointer("/allowedFunctionNames/0")
                    .and_then(Value::as_str),
            )
            .or_else(first)
        }
        Api::Bedrock { .. } => {
            let c = body.pointer("/toolConfig/toolChoice")?;
            if c.get("any").is_some() {
                return first();
            }
            named(c.pointer("/tool/name").and_then(Value::as_str))
        }
        _ => None,
    }
}

/// The result text when the conversation's last turn answers a tool call.
fn last_tool_result(api: &Api, body: &Value) -> Option<String> {
    let mut text = String::new();
    match api {
        // The trailing tool messages (one per call).
        Api::OpenAiChat | Api::OpenAiResponses => {
            let (list, kind_key, kind, content) = match api {
                Api::OpenAiChat => ("messages", "role", "tool", "content"),
                _ => ("input", "type", "function_call_output", "output"),
            };
            let items = body.get(list)?.as_array()?;
            let trailing: Vec<&Value> = items
                .iter()
                .rev()
                .take_while(|m| m.get(kind_key).and_then(Value::as_str) == Some(kind))
                .collect();
            if trailing.is_empty() {
                return None;
            }
            for m in trailing.into_iter().rev() {
                text_of(m.get(content)?, &mut text);
            }
        }
        Api::Anthropic => {
            let last = body.get("messages")?.as_array()?.last()?;
            let results: Vec<&Value> = last
                .get("content")?
                .as_array()?
                .iter()
                .filter(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"))
                .collect();
            if results.is_empty() {
                return None;
            }
            for r in results {
                text_of(r.get("content")?, &mut text);
            }
        }
        Api::Gemini { .. } => {
            let last = body.get("contents")?.as_array()?.last()?;
            let responses: Vec<&Value> = last
                .get("parts")?
                .as_array()?
                .iter()
                .filter_map(|p| p.get("functionResponse"))
                .collect();
            if responses.is_empty() {
                return None;
            }
            for r in responses {
                match r.pointer("/response/result") {
                    Some(Value::String(s)) => text.push_str(s),
                    _ => text.push_str(&r.get("response")?.to_string()),
                }
                text.push(' ');
            }
        }
        Api::Bedrock { .. } => {
            let last = body.get("messages")?.as_array()?.last()?;
            let results: Vec<&Value> = last
                .get("content")?
                .as_array()?
                .iter()
                .filter_map(|b| b.get("toolResult"))
                .collect();
            if results.is_empty() {
                return None;
            }
            for r in results {
                text_of(r.get("content")?, &mut text);
            }
        }
        _ => return None,
    }
    Some(text.trim().to_owned())
}

/// The schema of a requested JSON answer (`{}` for plain JSON mode).
fn json_schema(api: &Api, body: &Value) -> Option<Value> {
    match api {
        Api::OpenAiChat => match body.pointer("/response_format/type")?.as_str()? {
            "json_schema" => body.pointer("/response_format/json_schema/schema").cloned(),
            "json_object" => {
                Some(json!({"type": "object", "properties": {"answer": {"type": "integer"}}}))
            }
            _ => None,
        },
        Api::OpenAiResponses => match body.pointer("/text/format/type")?.as_str()? {
            "json_schema" => body.pointer("/text/format/schema").cloned(),
            "json_object" => {
                Some(json!({"type": "object", "properties": {"answer": {"type": "integer"}}}))
            }
            _ => None,
        },
        Api::Anthropic => body.pointer("/output_config/format/schema").cloned(),
        Api::Gemini { .. } => {
            if body
                .pointer("/generationConfig/responseMimeType")?
                .as_str()?
                != "application/json"
            {
                return None;
            }
            Some(
                body.pointer("/generationConfig/responseJsonSchema")
                    .cloned()
                    .unwrap_or(
                        json!({"type": "object", "properties": {"answer": {"type": "integer"}}}),
                    ),
            )
        }
        _ => None,
    }
}
