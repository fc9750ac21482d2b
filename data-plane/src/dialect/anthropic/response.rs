//! Messages responses: decoded from Anthropic, rendered for clients.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{WireUsage, parse_stop_reason, stop_reason};
use crate::dialect::upstream_garbage;
use crate::error::ProxyError;
use crate::llm::{Finish, Part, Response, ToolCall, Usage};

#[derive(Deserialize)]
struct WireResponse {
    #[serde(default)]
    id: String,
    #[serde(default)]
    model: String,
    content: Vec<WireBlock>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    stop_sequence: Option<String>,
    #[serde(default)]
    usage: WireUsage,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireBlock {
    Text {
        text: String,
    },
    Thinking {
        thinking: String,
        #[serde(default)]
        signature: Option<String>,
    },
    RedactedThinking {
        data: String,
    },
    ToolUse {
        id: String,
        name: String,
        #[serde(default)]
        input: Value,
    },
    #[serde(other)]
    Other,
}

/// Decodes Anthropic's answer.
pub fn decode_response(body: &[u8]) -> Result<Response, ProxyError> {
    let w: WireResponse = serde_json::from_slice(body).map_err(upstream_garbage)?;
    let parts = w
        .content
        .into_iter()
        .filter_map(|b| match b {
            WireBlock::Text { text } => Some(Part::text(text)),
            WireBlock::Thinking {
                thinking,
                signature,
            } => Some(Part::Thinking {
                text: thinking,
                signature,
            }),
            WireBlock::RedactedThinking { data } => Some(Part::RedactedThinking { data }),
            WireBlock::ToolUse { id, name, input } => Some(Part::ToolCall(ToolCall {
                id,
                name,
                arguments: input.to_string(),
                signature: None,
            })),
            WireBlock::Other => None,
        })
        .collect();
    Ok(Response {
        id: w.id,
        model: w.model,
        created: crate::llm::now_unix(),
        parts,
        finish: Finish {
            reason: parse_stop_reason(w.stop_reason.as_deref().unwrap_or("end_turn")),
            stop_sequence: w.stop_sequence,
        },
        usage: w.usage.into(),
    })
}

/// The usage of a whole answer (and what a span says of it; [`codec::read_usage`]).
///
/// [`codec::read_usage`]: crate::dialect::codec::read_usage
pub fn usage_of(
    body: &[u8],
    described: Option<&mut crate::llm::Described>,
) -> Result<Option<Usage>, ProxyError> {
    crate::dialect::codec::read_usage(body, described, <Usage as From<WireUsage>>::from)
}

#[derive(Serialize)]
struct OutMessage<'a> {
    id: String,
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    model: &'a str,
    content: Vec<Value>,
    stop_reason: &'static str,
    stop_sequence: Option<&'a str>,
    usage: WireUsage,
}

/// A tool call's arguments as the object Anthropic's `input` is.
pub(super) fn tool_input(arguments: &str) -> Value {
    if arguments.trim().is_empty() {
        return json!({});
    }
    serde_json::from_str(arguments).unwrap_or_else(|_| json!({"_raw_arguments": arguments}))
}

/// A message id in Anthropic's style for answers from other providers.
pub(super) fn message_id(id: &str) -> String {
    if id.starts_with("msg_") {
        id.to_owned()
    } else if id.is_empty() {
        format!("msg_{:024x}", fastrand::u128(..))
    } else {
        format!("msg_{id}")
    }
}

/// Renders a canonical answer as an Anthropic `message`.
pub fn render_response(r: &Response) -> Result<Bytes, ProxyError> {
    let content = r
        .parts
        .iter()
        .filter_map(|p| match p {
            Part::Text { text, .. } => Some(json!({"type": "text", "text": text})),
            Part::Thinking { text, signature } => Some(
                json!({"type": "thinking", "thinking": text, "signature": signature.as_deref().unwrap_or("")}),
            ),
            Part::RedactedThinking { data } => {
                Some(json!({"type": "redacted_thinking", "data": data}))
            }
            Part::ToolCall(c) => Some(
                json!({"type": "tool_use", "id": c.id, "name": c.name, "input": tool_input(&c.arguments)}),
            ),
            _ => None,
        })
        .collect();
    let out = OutMessage {
        id: message_id(&r.id),
        kind: "message",
        role: "assistant",
        model: &r.model,
        content,
        stop_reason: stop_reason(r.finish.reason),
        stop_sequence: r.finish.stop_sequence.as_deref(),
        usage: r.usage.into(),
    };
    crate::llm::to_bytes(&out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::FinishReason;

    #[test]
    fn thinking_tools_and_cache_usage_survive_both_ways() {
        let body = br#"{"id":"msg_1","type":"message","role":"assistant","model":"claude","content":[{"type":"thinking","thinking":"let me see","signature":"EqQB"},{"type":"text","text":"Checking."},{"type":"tool_use","id":"toolu_9","name":"get","input":{"q":1}}],"stop_reason":"tool_use","stop_sequence":null,"usage":{"input_tokens":12,"cache_creation_input_tokens":30,"cache_read_input_tokens":400,"output_tokens":50}}"#;
        let r = decode_response(body).expect("decode");
        assert_eq!(r.finish.reason, FinishReason::ToolCalls);
        assert_eq!(r.usage.input, 442);
        assert_eq!(r.usage.cache_read, 400);
        assert_eq!(r.usage.cache_write, 30);
        let out: Value =
            serde_json::from_slice(&render_response(&r).expect("render")).expect("json");
        let orig: Value = serde_json::from_slice(body).expect("json");
        assert_eq!(out["content"], orig["content"]);
        assert_eq!(out["usage"], orig["usage"]);
        assert_eq!(out["stop_reason"], "tool_use");
        assert_eq!(out["id"], "msg_1");
    }
}
