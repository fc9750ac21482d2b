//! OpenAI Chat Completions, both ways: as a front door (decode the client's request, render
//! responses, streams and errors) and as an upstream format (encode requests, decode
//! responses and streams) for OpenAI, Azure OpenAI and OpenAI-compatible servers.
//!
//! Thinking has no field in OpenAI's own schema; this format carries it the way the
//! OpenAI-compatible ecosystem does: `reasoning_content` (text) and `thinking_blocks` (with
//! signatures, so a client can send them back on the next turn).

mod request;
mod response;
mod stream;

pub use request::{EncodeOptions, MaxTokensField, decode_request, encode_request, facts};
pub use response::{decode_response, render_response, usage_of};
pub use stream::{Decoder, Renderer, Sniffer};

use serde::{Deserialize, Serialize};

use crate::dialect::codec::{self, Codec, Generation, Renderer as Render, Sniffer as Sniff};
use crate::error::{Dialect, ProxyError};
use crate::llm::{Format, Usage};
use crate::upstream::sse;

/// OpenAI Chat Completions: a front door, and the wire of OpenAI-format upstreams.
pub static CODEC: Codec = Codec {
    format: Format::OpenAiChat,
    client: Some(codec::Client {
        facts: |raw, _| facts(raw),
        usage_of,
        sniffer: |f| Sniff::OpenAi(Sniffer::new(f.stream_usage)),
        error_event,
        generation: Some(Generation {
            decode: |raw| Ok((decode_request(raw)?, None)),
            render: |r, _| render_response(r),
            renderer: |f, _| Render::Chat(Renderer::new(f.stream_usage)),
            decode_answer: Some(decode_response),
        }),
    }),
    upstream: Some(codec::Upstream {
        encode: |r, t| encode_request(r, t.model, t.openai, t.provider),
        decode: |body, _| decode_response(body),
        decoder: |_| codec::Decoder::OpenAiChat(Decoder::default()),
        classify: |status, headers, body| {
            super::openai_error::classify(status, body, codec::retry_after(headers))
        },
        count_tokens: None,
    }),
};

/// An error event that ends a stream (`data: {"error": {...}}`).
pub(crate) fn error_event(e: &ProxyError) -> bytes::Bytes {
    sse::data(e.body(Dialect::OpenAi).to_string().as_bytes())
}

/// Usage as OpenAI writes it.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct WireUsage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
    #[serde(default)]
    pub total_tokens: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<PromptDetails>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_tokens_details: Option<CompletionDetails>,
    /// Tokens written to a prompt cache (Anthropic and Bedrock upstreams report them; OpenAI
    /// has no field, so this follows the ecosystem's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_creation_input_tokens: Option<u64>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct PromptDetails {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_tokens: Option<u64>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct CompletionDetails {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_tokens: Option<u64>,
}

impl From<&WireUsage> for Usage {
    fn from(u: &WireUsage) -> Self {
        Usage {
            input: u.prompt_tokens,
            output: u.completion_tokens,
            cache_read: u
                .prompt_tokens_details
                .as_ref()
                .and_then(|d| d.cached_tokens)
                .unwrap_or(0),
            cache_write: u.cache_creation_input_tokens.unwrap_or(0),
            reasoning: u
                .completion_tokens_details
                .as_ref()
                .and_then(|d| d.reasoning_tokens)
                .unwrap_or(0),
        }
    }
}

impl From<Usage> for WireUsage {
    fn from(u: Usage) -> Self {
        WireUsage {
            prompt_tokens: u.input,
            completion_tokens: u.output,
            total_tokens: u.total(),
            prompt_tokens_details: Some(PromptDetails {
                cached_tokens: Some(u.cache_read),
            }),
            completion_tokens_details: Some(CompletionDetails {
                reasoning_tokens: Some(u.reasoning),
            }),
            cache_creation_input_tokens: (u.cache_write > 0).then_some(u.cache_write),
        }
    }
}

/// OpenAI's finish reason for a canonical one.
pub fn finish_reason(r: crate::llm::FinishReason) -> &'static str {
    use crate::llm::FinishReason::*;
    match r {
        Stop | StopSequence | PauseTurn => "stop",
        Length => "length",
        ToolCalls => "tool_calls",
        ContentFilter => "content_filter",
    }
}

/// The canonical finish reason for OpenAI's.
pub fn parse_finish_reason(s: &str) -> crate::llm::FinishReason {
    use crate::llm::FinishReason::*;
    match s {
        "length" => Length,
        "tool_calls" | "function_call" => ToolCalls,
        "content_filter" => ContentFilter,
        _ => Stop,
    }
}
