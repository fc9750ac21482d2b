//! Anthropic Messages, both ways: the `/v1/messages` front door (decode requests, render
//! responses, events and errors exactly as Anthropic emits them) and the upstream format
//! (encode requests, decode responses and events, classify errors).

mod request;
mod response;
mod stream;

pub use request::{count_facts, decode_request, encode_request, facts};
pub use response::{decode_response, render_response, usage_of};
pub use stream::{Decoder, Renderer, Sniffer, error_event};

use http::{HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};

use super::{class_of_status, mentions_context_window, upstream_error};
use crate::dialect::codec::{self, Codec, Generation, Renderer as Render, Sniffer as Sniff};
use crate::error::{FailureClass, ProxyError};
use crate::llm::{FinishReason, Format, Op, Usage};

/// Anthropic Messages: a front door, and Anthropic's wire.
pub static CODEC: Codec = Codec {
    format: Format::AnthropicMessages,
    client: Some(codec::Client {
        facts: |raw, op| match op {
            Op::CountTokens => count_facts(raw),
            Op::Generate | Op::Embed => facts(raw),
        },
        usage_of,
        sniffer: |_| Sniff::Anthropic(Sniffer::new()),
        error_event,
        generation: Some(Generation {
            decode: |raw| Ok((decode_request(raw)?, None)),
            render: |r, _| render_response(r),
            renderer: |_, _| Render::Messages(Renderer::new()),
            decode_answer: Some(decode_response),
        }),
    }),
    upstream: Some(codec::Upstream {
        encode: |r, t| encode_request(r, t.model),
        decode: |body, _| decode_response(body),
        decoder: |_| codec::Decoder::Anthropic(Decoder::default()),
        classify: |status, headers, body| classify(status, body, codec::retry_after(headers)),
        // Token counting is an Anthropic API: the client's request goes as it came.
        count_tokens: None,
    }),
};

/// The `anthropic-version` sent upstream.
pub const API_VERSION: &str = "2023-06-01";
/// `max_tokens` is required by Anthropic; used when the client set none.
pub const DEFAULT_MAX_TOKENS: u32 = 4096;

/// Usage as Anthropic writes it: `input_tokens` excludes cache reads and writes.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize)]
pub struct WireUsage {
    #[serde(default)]
    pub input_tokens: u64,
    #[serde(default)]
    pub output_tokens: u64,
    #[serde(default)]
    pub cache_creation_input_tokens: u64,
    #[serde(default)]
    pub cache_read_input_tokens: u64,
}

impl From<WireUsage> for Usage {
    fn from(u: WireUsage) -> Self {
        Usage {
            input: u.input_tokens + u.cache_creation_input_tokens + u.cache_read_input_tokens,
            output: u.output_tokens,
            cache_read: u.cache_read_input_tokens,
            cache_write: u.cache_creation_input_tokens,
            reasoning: 0,
        }
    }
}

impl From<Usage> for WireUsage {
    fn from(u: Usage) -> Self {
        WireUsage {
            input_tokens: u.uncached_input(),
            output_tokens: u.output,
            cache_creation_input_tokens: u.cache_write,
            cache_read_input_tokens: u.cache_read,
        }
    }
}

/// Anthropic's stop reason for a canonical one.
pub fn stop_reason(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Stop => "end_turn",
        FinishReason::StopSequence => "stop_sequence",
        FinishReason::Length => "max_tokens",
        FinishReason::ToolCalls => "tool_use",
        FinishReason::ContentFilter => "refusal",
        FinishReason::PauseTurn => "pause_turn",
    }
}

/// The canonical finish reason for Anthropic's stop reason.
pub fn parse_stop_reason(s: &str) -> FinishReason {
    match s {
        "max_tokens" | "model_context_window_exceeded" => FinishReason::Length,
        "tool_use" => FinishReason::ToolCalls,
        "stop_sequence" => FinishReason::StopSequence,
        "refusal" => FinishReason::ContentFilter,
        "pause_turn" => FinishReason::PauseTurn,
        _ => FinishReason::Stop,
    }
}

#[derive(Deserialize, Default)]
struct ErrorEnvelope {
    #[serde(default)]
    error: Option<ErrorBody>,
}

#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    message: String,
}

fn class_of_type(kind: &str, message: &str, fallback: FailureClass) -> FailureClass {
    match kind {
        "rate_limit_error" => FailureClass::RateLimited,
        "overloaded_error" => FailureClass::Overloaded,
        "api_error" => FailureClass::ServerError,
        "timeout_error" => FailureClass::Timeout,
        "authentication_error" | "permission_error" => FailureClass::Authentication,
        "invalid_request_error" if mentions_context_window(message) => {
            FailureClass::ContextWindowExceeded
        }
        "invalid_request_error" | "not_found_error" | "request_too_large" => {
            FailureClass::BadRequest
        }
        _ => fallback,
    }
}

/// Classifies an error answer from Anthropic.
pub fn classify(status: StatusCode, body: &[u8], retry_after: Option<HeaderValue>) -> ProxyError {
    let e = serde_json::from_slice::<ErrorEnvelope>(body)
        .ok()
        .and_then(|e| e.error)
        .unwrap_or_default();
    // The status is authoritative for what it says precisely; the type refines a plain
    // 4xx or 5xx.
    let class = match class_of_status(status) {
        c @ (FailureClass::BadRequest | FailureClass::ServerError) => {
            class_of_type(&e.kind, &e.message, c)
        }
        c => c,
    };
    upstream_error(status, class, Some(e.message), body, retry_after)
}

/// An `error` event inside a stream.
pub fn stream_error(data: &[u8]) -> ProxyError {
    let e = serde_json::from_slice::<ErrorEnvelope>(data)
        .ok()
        .and_then(|e| e.error)
        .unwrap_or_default();
    let class = class_of_type(&e.kind, &e.message, FailureClass::ServerError);
    let status = match class {
        FailureClass::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        FailureClass::Overloaded => {
            StatusCode::from_u16(529).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
        }
        FailureClass::BadRequest | FailureClass::ContextWindowExceeded => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    upstream_error(status, class, Some(e.message), data, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_by_error_type() {
        let c = |s: u16, t: &str, m: &str| {
            let body = serde_json::json!({"type": "error", "error": {"type": t, "message": m}})
                .to_string();
            classify(
                StatusCode::from_u16(s).expect("status"),
                body.as_bytes(),
                None,
            )
            .class
        };
        assert_eq!(
            c(529, "overloaded_error", "Overloaded"),
            Some(FailureClass::Overloaded)
        );
        assert_eq!(
            c(429, "rate_limit_error", "slow"),
            Some(FailureClass::RateLimited)
        );
        assert_eq!(
            c(
                400,
                "invalid_request_error",
                "prompt is too long: 210000 tokens > 200000 maximum"
            ),
            Some(FailureClass::ContextWindowExceeded)
        );
        assert_eq!(
            c(400, "invalid_request_error", "bad"),
            Some(FailureClass::BadRequest)
        );
        assert_eq!(c(500, "api_error", "oops"), Some(FailureClass::ServerError));
        assert_eq!(
            c(401, "authentication_error", "invalid x-api-key"),
            Some(FailureClass::Authentication)
        );
        let e = stream_error(
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        );
        assert_eq!(e.class, Some(FailureClass::Overloaded));
        assert_eq!(e.message, "Overloaded");
    }

    #[test]
    fn usage_counts_cache_tokens_as_input() {
        let w = WireUsage {
            input_tokens: 10,
            output_tokens: 5,
            cache_creation_input_tokens: 100,
            cache_read_input_tokens: 1000,
        };
        let u = Usage::from(w);
        assert_eq!(
            (u.input, u.cache_read, u.cache_write, u.output),
            (1110, 1000, 100, 5)
        );
        let back = WireUsage::from(u);
        assert_eq!(back.input_tokens, 10);
        assert_eq!(back.cache_read_input_tokens, 1000);
    }
}
