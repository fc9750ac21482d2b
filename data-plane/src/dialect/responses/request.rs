//! Responses API requests decoded into canonical form.

use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
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
    input: Input,
    #[serde(default)]
    instructions: Option<String>,
    #[serde(default)]
    max_output_tokens: Option<u32>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    tools: Option<Vec<WireTool>>,
    #[serde(default)]
    tool_choice: Option<WireToolChoice>,
    #[serde(default)]
    parallel_tool_calls: Option<bool>,
    #[serde(default)]
    text: Option<WireText>,
    #[serde(default)]
    reasoning: Option<WireReasoning>,
    #[serde(default)]
    stream: Option<bool>,
    /// Defaults to true at OpenAI; without OpenAI's storage only an explicit `true` is refused.
    #[serde(default)]
    store: Option<bool>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

/// `input`: a string, or an array of items (decoded one by one, for errors that say which).
enum Input {
    Text(String),
    Items(Vec<Value>),
}

impl<'de> Deserialize<'de> for Input {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Input;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or an array of input items")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Input, E> {
                Ok(Input::Text(s.to_owned()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Input, A::Error> {
                let mut v = Vec::new();
                while let Some(i) = seq.next_element()? {
                    v.push(i);
                }
                Ok(Input::Items(v))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum TypedItem {
    Message(EasyMessage),
    FunctionCall {
        call_id: String,
        name: String,
        #[serde(default)]
        arguments: String,
    },
    FunctionCallOutput {
        call_id: String,
        output: Output,
    },
    Reasoning {
        #[serde(default)]
        summary: Vec<TextItem>,
        #[serde(default)]
        content: Option<Vec<TextItem>>,
        #[serde(default)]
        encrypted_content: Option<String>,
    },
    ItemReference {},
}

#[derive(Deserialize)]
struct TextItem {
    #[serde(default)]
    text: String,
}

#[derive(Deserialize)]
struct EasyMessage {
    role: WireRole,
    content: Contents,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum WireRole {
    User,
    Assistant,
    System,
    Developer,
}

/// A string or an array of content parts.
struct Contents(Vec<WirePart>);

impl<'de> Deserialize<'de> for Contents {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Contents;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or an array of content parts")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Contents, E> {
                Ok(Contents(vec![WirePart::InputText { text: s.to_owned() }]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Contents, A::Error> {
                let mut v = Vec::new();
                while let Some(p) = seq.next_element()? {
                    v.push(p);
                }
                Ok(Contents(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// `function_call_output.output`: a string or content parts.
type Output = Contents;

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WirePart {
    InputText {
        text: String,
    },
    OutputText {
        text: String,
    },
    Refusal {
        refusal: String,
    },
    InputImage {
        #[serde(default)]
        image_url: Option<String>,
        #[serde(default)]
        detail: Option<String>,
    },
    InputFile {
        #[serde(default)]
        file_data: Option<String>,
        #[serde(default)]
        file_url: Option<String>,
        #[serde(default)]
        filename: Option<String>,
    },
}

#[derive(Deserialize)]
struct WireTool {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    name: Option<String>,
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
        kind: String,
        #[serde(default)]
        name: Option<String>,
    },
}

#[derive(Deserialize)]
struct WireText {
    #[serde(default)]
    format: Option<WireFormat>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireFormat {
    Text,
    JsonObject,
    JsonSchema {
        name: String,
        schema: Value,
        #[serde(default)]
        description: Option<String>,
        #[serde(default)]
        strict: Option<bool>,
    },
}

#[derive(Deserialize)]
struct WireReasoning {
    #[serde(default)]
    effort: Option<String>,
    #[serde(default)]
    summary: Option<String>,
}

/// What a `response` object repeats of its request (the SDK requires several of them).
#[derive(Clone, Debug, Default)]
pub struct Echo {
    pub instructions: Option<String>,
    pub max_output_tokens: Option<u32>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub tools: Vec<Value>,
    pub tool_choice: Value,
    pub parallel_tool_calls: bool,
    pub text_format: Value,
    pub reasoning: Value,
    pub metadata: Map<String, Value>,
    pub user: Option<String>,
}

/// What the policies need; `input` is checked to be a string or an array.
pub fn facts(raw: &RawObject) -> Result<Facts, ProxyError> {
    let field = |name: &'static str, e: serde_json::Error| {
        ProxyError::invalid(format!("Invalid `{name}`: {e}")).with_param(name)
    };
    let model: String = raw
        .parse_field("model")
        .map_err(|e| field("model", e))?
        .unwrap_or_default();
    if model.trim().is_empty() {
        return Err(ProxyError::invalid("`model` is required").with_param("model"));
    }
    match raw.get("input").and_then(|v| v.first()) {
        Some(b'"' | b'[') => {}
        None => return Err(ProxyError::invalid("`input` is required").with_param("input")),
        Some(_) => {
            return Err(
                ProxyError::invalid("`input` must be a string or an array of input items")
                    .with_param("input"),
            );
        }
    }
    let stream = raw
        .parse_field::<bool>("stream")
        .map_err(|e| field("stream", e))?
        .unwrap_or(false);
    Ok(Facts {
        model,
        stream,
        stream_usage: stream,
        max_output_tokens: raw
            .parse_field::<u32>("max_output_tokens")
            .map_err(|e| field("max_output_tokens", e))?,
    })
}

fn part(p: WirePart, at: &str) -> Result<Part, ProxyError> {
    Ok(match p {
        WirePart::InputText { text } | WirePart::OutputText { text } => Part::text(text),
        WirePart::Refusal { refusal } => Part::text(refusal),
        WirePart::InputImage {
            image_url: Some(url),
            detail,
        } => Part::Image(Media {
            source: Source::from_url(&url),
            detail,
        }),
        WirePart::InputImage {
            image_url: None, ..
        } => {
            return Err(ProxyError::invalid(
                "input_image needs `image_url`: uploaded file ids live in OpenAI's storage",
            )
            .with_param(at.to_owned()));
        }
        WirePart::InputFile {
            file_data,
            file_url,
            filename,
        } => {
            let source = match (file_data, file_url) {
                (Some(d), _) => Source::from_url(&d),
                (None, Some(u)) => Source::Url(u),
                (None, None) => {
                    return Err(ProxyError::invalid(
                        "input_file needs `file_data` or `file_url`: uploaded file ids live in OpenAI's storage",
                    )
                    .with_param(at.to_owned()));
                }
            };
            Part::Document {
                media: Media {
                    source,
                    detail: None,
                },
                title: filename,
            }
        }
    })
}

fn message(m: EasyMessage, at: &str) -> Result<Message, ProxyError> {
    let role = match m.role {
        WireRole::User => Role::User,
        WireRole::Assistant => Role::Assistant,
        WireRole::System => Role::System,
        WireRole::Developer => Role::Developer,
    };
    let mut parts = Vec::with_capacity(m.content.0.len());
    for (k, p) in m.content.0.into_iter().enumerate() {
        parts.push(part(p, &format!("{at}.content[{k}]"))?);
    }
    Ok(Message::new(role, parts))
}

/// Pushes a part into the conversation, merging with the previous message of its role.
fn push(messages: &mut Vec<Message>, role: Role, p: Part) {
    match messages.last_mut() {
        Some(m) if m.role == role && role != Role::User => m.parts.push(p),
        _ => messages.push(Message::new(role, vec![p])),
    }
}

/// Decodes a Responses request for a non-OpenAI upstream.
pub fn decode_request(raw: &RawObject) -> Result<(Request, Echo), ProxyError> {
    let w: WireRequest = serde_json::from_str(raw.text()).map_err(bad_json)?;
    let mut extra = w.extra;
    if w.store == Some(true) {
        extra.insert("store".into(), json!(true));
    }
    let mut messages = Vec::new();
    if let Some(i) = &w.instructions {
        messages.push(Message::text(Role::System, i.clone()));
    }
    match w.input {
        Input::Text(t) => messages.push(Message::text(Role::User, t)),
        Input::Items(items) => {
            for (i, item) in items.into_iter().enumerate() {
                let at = format!("input[{i}]");
                // Messages may omit `type` (the "easy" form).
                let typed = if item.get("type").is_some() {
                    serde_json::from_value::<TypedItem>(item)
                } else {
                    serde_json::from_value::<EasyMessage>(item).map(TypedItem::Message)
                };
                let item = typed.map_err(|e| {
                    ProxyError::invalid(format!("{at}: {e}")).with_param(at.clone())
                })?;
                match item {
                    TypedItem::Message(m) => {
                        messages.push(message(m, &at)?);
                    }
                    TypedItem::FunctionCall {
                        call_id,
                        name,
                        arguments,
                    } => push(
                        &mut messages,
                        Role::Assistant,
                        Part::ToolCall(ToolCall {
                            id: call_id,
                            name,
                            arguments,
                            signature: None,
                        }),
                    ),
                    TypedItem::FunctionCallOutput { call_id, output } => {
                        let mut content = Vec::new();
                        for (k, p) in output.0.into_iter().enumerate() {
                            content.push(part(p, &format!("{at}.output[{k}]"))?);
                        }
                        push(
                            &mut messages,
                            Role::Tool,
                            Part::ToolResult(ToolResult {
                                call_id,
                                name: None,
                                content,
                                is_error: false,
                            }),
                        );
                    }
                    TypedItem::Reasoning {
                        summary,
                        content,
                        encrypted_content,
                    } => {
                        let text: String = content
                            .unwrap_or(summary)
                            .into_iter()
                            .map(|t| t.text)
                            .collect();
                        push(
                            &mut messages,
                            Role::Assistant,
                            Part::Thinking {
                                text,
                                signature: encrypted_content,
                            },
                        );
                    }
                    TypedItem::ItemReference {} => {
                        return Err(ProxyError::invalid(
                            "item references point into OpenAI's stored conversation state, which this model's provider does not have",
                        )
                        .with_param(at));
                    }
                }
            }
        }
    }
    let mut tools = Vec::new();
    let mut echo_tools = Vec::new();
    for (i, t) in w.tools.unwrap_or_default().into_iter().enumerate() {
        if t.kind != "function" {
            return Err(ProxyError::invalid(format!(
                "tools[{i}]: `{}` is a tool hosted by OpenAI; only function tools work with this model",
                t.kind
            ))
            .with_param(format!("tools[{i}].type")));
        }
        let name = t.name.ok_or_else(|| {
            ProxyError::invalid(format!("tools[{i}]: `name` is required"))
                .with_param(format!("tools[{i}].name"))
        })?;
        let parameters = t.parameters.unwrap_or_else(|| json!({"type": "object"}));
        echo_tools.push(json!({"type": "function", "name": name, "description": t.description, "parameters": parameters, "strict": t.strict.unwrap_or(true)}));
        tools.push(Tool {
            name,
            description: t.description,
            parameters,
            strict: t.strict,
            cache_control: None,
        });
    }
    let (tool_choice, echo_choice) = match w.tool_choice {
        None => (None, json!("auto")),
        Some(WireToolChoice::Mode(m)) => {
            let c = match m.as_str() {
                "auto" => ToolChoice::Auto,
                "none" => ToolChoice::None,
                "required" => ToolChoice::Required,
                other => {
                    return Err(ProxyError::invalid(format!(
                        "tool_choice `{other}` is not auto, none or required"
                    ))
                    .with_param("tool_choice"));
                }
            };
            (Some(c), json!(m))
        }
        Some(WireToolChoice::Named {
            kind,
            name: Some(name),
        }) if kind == "function" => (
            Some(ToolChoice::Named(name.clone())),
            json!({"type": "function", "name": name}),
        ),
        Some(WireToolChoice::Named { kind, .. }) => {
            return Err(ProxyError::invalid(format!(
                "tool_choice of type `{kind}` names a hosted tool; only function tools work with this model"
            ))
            .with_param("tool_choice"));
        }
    };
    let (response_format, text_format) = match w.text.and_then(|t| t.format) {
        None | Some(WireFormat::Text) => (None, json!({"type": "text"})),
        Some(WireFormat::JsonObject) => (
            Some(ResponseFormat::JsonObject),
            json!({"type": "json_object"}),
        ),
        Some(WireFormat::JsonSchema {
            name,
            schema,
            description,
            strict,
        }) => (
            Some(ResponseFormat::JsonSchema {
                name: name.clone(),
                description: description.clone(),
                schema: schema.clone(),
                strict,
            }),
            json!({"type": "json_schema", "name": name, "schema": schema, "description": description, "strict": strict}),
        ),
    };
    let reasoning = match &w.reasoning {
        None => None,
        Some(r) => Some(Reasoning {
            effort: match r.effort.as_deref() {
                None => None,
                Some(e) => Some(Effort::parse(e).ok_or_else(|| {
                    ProxyError::invalid(format!("reasoning.effort `{e}` is not a known effort"))
                        .with_param("reasoning.effort")
                })?),
            },
            summary: r.summary.clone(),
            ..Default::default()
        }),
    };
    let echo = Echo {
        instructions: w.instructions,
        max_output_tokens: w.max_output_tokens,
        temperature: w.temperature,
        top_p: w.top_p,
        tools: echo_tools,
        tool_choice: echo_choice,
        parallel_tool_calls: w.parallel_tool_calls.unwrap_or(true),
        text_format,
        reasoning: match &w.reasoning {
            Some(r) => json!({"effort": r.effort, "summary": r.summary}),
            None => json!({"effort": null, "summary": null}),
        },
        metadata: w.metadata.clone().unwrap_or_default(),
        user: w.user.clone(),
    };
    // Metadata travels with the response object; it has no meaning upstream.
    let _ = w.metadata;
    let request = Request {
        model: w.model,
        messages,
        tools,
        tool_choice,
        parallel_tool_calls: w.parallel_tool_calls,
        response_format,
        max_output_tokens: w.max_output_tokens,
        temperature: w.temperature,
        top_p: w.top_p,
        top_k: None,
        stop: Vec::new(),
        seed: None,
        presence_penalty: None,
        frequency_penalty: None,
        reasoning,
        user: w.user,
        stream: w.stream.unwrap_or(false),
        stream_usage: true,
        extra,
    };
    Ok((request, echo))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn raw(s: &str) -> RawObject {
        RawObject::parse(Bytes::copy_from_slice(s.as_bytes())).expect("object")
    }

    #[test]
    fn items_become_a_conversation() {
        let (r, echo) = decode_request(&raw(r#"{"model":"m","instructions":"terse",
          "input":[{"role":"user","content":"weather in Paris?"},
                   {"type":"reasoning","id":"rs_1","summary":[],"content":[{"type":"reasoning_text","text":"call the tool"}],"encrypted_content":"sig"},
                   {"type":"function_call","call_id":"call_1","name":"w","arguments":"{\"c\":\"Paris\"}"},
                   {"type":"function_call_output","call_id":"call_1","output":"sunny"},
                   {"type":"message","role":"user","content":[{"type":"input_text","text":"thanks"},{"type":"input_image","image_url":"https://x/y.png","detail":"low"}]}],
          "tools":[{"type":"function","name":"w","parameters":{"type":"object"}}],
          "text":{"format":{"type":"json_schema","name":"o","schema":{"type":"object"},"strict":true}},
          "reasoning":{"effort":"low"},"max_output_tokens":50,"stream":true}"#)).expect("decode");
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
        assert_eq!(
            r.messages[2].parts.len(),
            2,
            "reasoning and the call in one assistant turn"
        );
        assert!(
            matches!(&r.messages[2].parts[0], Part::Thinking { signature: Some(s), .. } if s == "sig")
        );
        assert!(matches!(
            r.response_format,
            Some(ResponseFormat::JsonSchema { .. })
        ));
        assert_eq!(
            r.reasoning.as_ref().and_then(|x| x.effort),
            Some(Effort::Low)
        );
        assert!(r.stream);
        assert_eq!(echo.tools.len(), 1);
        assert_eq!(echo.max_output_tokens, Some(50));
    }

    #[test]
    fn state_and_hosted_tools_are_refused_by_name() {
        let (r, _) = decode_request(&raw(
            r#"{"model":"m","input":"hi","previous_response_id":"resp_1"}"#,
        ))
        .expect("decodes");
        assert_eq!(r.unmapped_field(), Some("previous_response_id"));
        let (r, _) =
            decode_request(&raw(r#"{"model":"m","input":"hi","store":true}"#)).expect("decodes");
        assert_eq!(r.unmapped_field(), Some("store"));
        let (r, _) =
            decode_request(&raw(r#"{"model":"m","input":"hi","store":false}"#)).expect("decodes");
        assert_eq!(r.unmapped_field(), None);
        let e = decode_request(&raw(
            r#"{"model":"m","input":"hi","tools":[{"type":"web_search"}]}"#,
        ))
        .expect_err("hosted");
        assert_eq!(e.param.as_deref(), Some("tools[0].type"));
        let e = decode_request(&raw(
            r#"{"model":"m","input":[{"type":"item_reference","id":"msg_1"}]}"#,
        ))
        .expect_err("reference");
        assert_eq!(e.param.as_deref(), Some("input[0]"));
        assert!(facts(&raw(r#"{"model":"m","input":5}"#)).is_err());
        assert!(facts(&raw(r#"{"model":"m"}"#)).is_err());
    }
}
