//! Chat Completions responses: decoded from upstreams, rendered for clients.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::request::WireThinkingBlock;
use super::{WireUsage, finish_reason, parse_finish_reason};
use crate::dialect::upstream_garbage;
use crate::error::ProxyError;
use crate::llm::{Finish, FinishReason, Part, Response, ToolCall, Usage};

#[derive(Deserialize)]
struct WireResponse {
    #[serde(default)]
    id: String,
    #[serde(default)]
    created: u64,
    #[serde(default)]
    model: String,
    choices: Vec<WireChoice>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct WireChoice {
    message: WireMessage,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct WireMessage {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    refusal: Option<String>,
    #[serde(default)]
    reasoning_content: Option<String>,
    /// Groq and OpenRouter name it `reasoning`.
    #[serde(default)]
    reasoning: Option<String>,
    #[serde(default)]
    tool_calls: Vec<WireCall>,
}

#[derive(Deserialize, Serialize)]
pub(super) struct WireCall {
    #[serde(default)]
    pub(super) id: String,
    #[serde(rename = "type", default = "function")]
    pub(super) kind: String,
    pub(super) function: WireFunction,
}

fn function() -> String {
    "function".into()
}

#[derive(Deserialize, Serialize)]
pub(super) struct WireFunction {
    #[serde(default)]
    pub(super) name: String,
    #[serde(default)]
    pub(super) arguments: String,
}

/// Decodes an upstream's answer.
pub fn decode_response(body: &[u8]) -> Result<Response, ProxyError> {
    let w: WireResponse = serde_json::from_slice(body).map_err(upstream_garbage)?;
    let choice = w
        .choices
        .into_iter()
        .next()
        .ok_or_else(|| upstream_garbage("the response has no choices"))?;
    let m = choice.message;
    let mut parts = Vec::new();
    if let Some(t) = m
        .reasoning_content
        .or(m.reasoning)
        .filter(|t| !t.is_empty())
    {
        parts.push(Part::Thinking {
            text: t,
            signature: None,
        });
    }
    if let Some(t) = m.content.filter(|t| !t.is_empty()) {
        parts.push(Part::text(t));
    }
    let refused = m.refusal.as_ref().is_some_and(|r| !r.is_empty());
    if let Some(r) = m.refusal.filter(|r| !r.is_empty()) {
        parts.push(Part::text(r));
    }
    for c in m.tool_calls {
        parts.push(Part::ToolCall(ToolCall {
            id: c.id,
            name: c.function.name,
            arguments: c.function.arguments,
            signature: None,
        }));
    }
    let mut reason = parse_finish_reason(choice.finish_reason.as_deref().unwrap_or("stop"));
    if refused {
        reason = FinishReason::ContentFilter;
    }
    Ok(Response {
        id: w.id,
        model: w.model,
        created: w.created,
        parts,
        finish: Finish::new(reason),
        usage: w.usage.as_ref().map(Usage::from).unwrap_or_default(),
    })
}

/// The usage of a whole answer (and what a span says of it; [`codec::read_usage`]).
///
/// [`codec::read_usage`]: crate::dialect::codec::read_usage
pub fn usage_of(
    body: &[u8],
    described: Option<&mut crate::llm::Described>,
) -> Result<Option<Usage>, ProxyError> {
    crate::dialect::codec::read_usage(body, described, |u: WireUsage| Usage::from(&u))
}

#[derive(Serialize)]
struct OutResponse<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    system_fingerprint: Option<&'a str>,
    choices: [OutChoice; 1],
    usage: WireUsage,
}

#[derive(Serialize)]
struct OutChoice {
    index: u32,
    message: OutMessage,
    logprobs: Option<Value>,
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct OutMessage {
    role: &'static str,
    content: Option<String>,
    refusal: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<WireCall>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    thinking_blocks: Vec<WireThinkingBlock>,
}

/// Renders a canonical answer as a `chat.completion`.
pub fn render_response(r: &Response) -> Result<Bytes, ProxyError> {
    let mut text = String::new();
    let mut reasoning = String::new();
    let mut blocks = Vec::new();
    let mut calls = Vec::new();
    for p in &r.parts {
        match p {
            Part::Text { text: t, .. } => text.push_str(t),
            Part::Thinking { text: t, signature } => {
                reasoning.push_str(t);
                blocks.push(WireThinkingBlock::Thinking {
                    thinking: t.clone(),
                    signature: signature.clone(),
                });
            }
            Part::RedactedThinking { data } => {
                blocks.push(WireThinkingBlock::RedactedThinking { data: data.clone() })
            }
            Part::ToolCall(c) => calls.push(WireCall {
                id: c.id.clone(),
                kind: "function".into(),
                function: WireFunction {
                    name: c.name.clone(),
                    arguments: c.arguments.clone(),
                },
            }),
            Part::Image(_) | Part::Document { .. } | Part::ToolResult(_) => {}
        }
    }
    let out = OutResponse {
        id: &r.id,
        object: "chat.completion",
        created: r.created,
        model: &r.model,
        system_fingerprint: None,
        choices: [OutChoice {
            index: 0,
            message: OutMessage {
                role: "assistant",
                content: (!text.is_empty() || calls.is_empty()).then_some(text),
                refusal: None,
                tool_calls: calls,
                reasoning_content: (!reasoning.is_empty()).then_some(reasoning),
                thinking_blocks: blocks,
            },
            logprobs: None,
            finish_reason: finish_reason(r.finish.reason),
        }],
        usage: r.usage.into(),
    };
    crate::llm::to_bytes(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_usage_details_and_tool_calls() {
        let r = decode_response(br#"{"id":"c1","object":"chat.completion","created":5,"model":"gpt","choices":[{"index":0,"message":{"role":"assistant","content":null,"reasoning_content":"think","tool_calls":[{"id":"call_1","type":"function","function":{"name":"f","arguments":"{}"}},{"id":"call_2","type":"function","function":{"name":"g","arguments":"{\"a\":2}"}}]},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":10,"completion_tokens":7,"total_tokens":17,"prompt_tokens_details":{"cached_tokens":4},"completion_tokens_details":{"reasoning_tokens":3}}}"#).expect("decode");
        assert_eq!(r.finish.reason, FinishReason::ToolCalls);
        assert_eq!(r.parts.len(), 3);
        assert_eq!(
            r.usage,
            Usage {
                input: 10,
                output: 7,
                cache_read: 4,
                cache_write: 0,
                reasoning: 3
            }
        );
        let out: Value =
            serde_json::from_slice(&render_response(&r).expect("render")).expect("json");
        assert_eq!(
            out["choices"][0]["message"]["tool_calls"][1]["function"]["arguments"],
            "{\"a\":2}"
        );
        assert_eq!(out["choices"][0]["message"]["content"], Value::Null);
        assert_eq!(out["choices"][0]["message"]["reasoning_content"], "think");
        assert_eq!(out["usage"]["prompt_tokens_details"]["cached_tokens"], 4);
        assert_eq!(
            out["usage"]["completion_tokens_details"]["reasoning_tokens"],
            3
        );
        assert_eq!(out["choices"][0]["finish_reason"], "tool_calls");
    }

    #[test]
    fn garbage_is_an_upstream_protocol_error() {
        for bad in [&b"{\"choices\": ["[..], b"{\"choices\":[]}", b"[]"] {
            let e = decode_response(bad).expect_err("garbage");
            assert_eq!(e.kind, crate::error::ErrorKind::UpstreamProtocol);
        }
    }
}
