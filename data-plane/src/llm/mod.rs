//! The canonical form. Every front door decodes its dialect into it and every provider
//! translates from it, so N front doors and M upstream formats need N + M translations, not
//! N x M. Three ideas stay apart: the endpoint the client called, the [`Format`] the client
//! sent, and the format the upstream speaks.
//!
//! - [`Request`]: messages with typed content parts, tools and tool choice, response format,
//!   sampling, reasoning, metadata, and the dialect's unknown fields (`extra`).
//! - [`Response`] and [`Event`]: what came back, complete or as a stream of typed events.
//! - [`Usage`]: tokens in, out, cached, cache-written and reasoning.
//! - [`Incoming`]: a decoded request before routing. When the upstream speaks the client's
//!   format its body passes through as the client's bytes ([`raw::RawObject`]), parsed only
//!   as far as the policies need.

mod cost;
pub(crate) mod json;
pub(crate) mod observe;
pub(crate) mod raw;
mod request;
mod response;
mod stream;
pub(crate) mod text;

pub use cost::{Estimate, Price};
pub use request::{
    Effort, Media, Message, Part, Reasoning, Request, ResponseFormat, Role, Source, Tool, ToolCall,
    ToolChoice, ToolResult,
};
pub use response::{Described, Finish, FinishReason, Response, Usage};
pub use stream::{Block, Delta, Event};

use bytes::Bytes;

/// A wire format: what a client sends to a front door, or what an upstream speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// `POST /v1/chat/completions` (OpenAI, Azure OpenAI, OpenAI-compatible servers).
    OpenAiChat,
    /// `POST /v1/completions`, the legacy text completions.
    OpenAiCompletions,
    /// `POST /v1/responses`, the OpenAI Responses API.
    OpenAiResponses,
    /// `POST /v1/embeddings`.
    OpenAiEmbeddings,
    /// `POST /v1/messages`, the Anthropic Messages API.
    AnthropicMessages,
    /// Gemini `generateContent` / `streamGenerateContent` / `embedContent`.
    Gemini,
    /// Bedrock Converse / ConverseStream.
    BedrockConverse,
}

impl Format {
    /// How errors are written for a client of this format.
    pub fn error_dialect(self) -> crate::error::Dialect {
        match self {
            Self::AnthropicMessages => crate::error::Dialect::Anthropic,
            Self::OpenAiChat
            | Self::OpenAiCompletions
            | Self::OpenAiResponses
            | Self::OpenAiEmbeddings
            | Self::Gemini
            | Self::BedrockConverse => crate::error::Dialect::OpenAi,
        }
    }

    /// Every format.
    pub const ALL: [Self; 7] = [
        Self::OpenAiChat,
        Self::OpenAiCompletions,
        Self::OpenAiResponses,
        Self::OpenAiEmbeddings,
        Self::AnthropicMessages,
        Self::Gemini,
        Self::BedrockConverse,
    ];

    /// Low-cardinality label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Self::OpenAiChat => "chat_completions",
            Self::OpenAiCompletions => "completions",
            Self::OpenAiResponses => "responses",
            Self::OpenAiEmbeddings => "embeddings",
            Self::AnthropicMessages => "messages",
            Self::Gemini => "gemini",
            Self::BedrockConverse => "bedrock_converse",
        }
    }

    /// The format of a [`Format::label`].
    pub fn from_label(label: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.label() == label)
    }
}

/// What the policies read of a request, whatever form its body is in.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Facts {
    /// The client-facing model name.
    pub model: String,
    pub stream: bool,
    /// The client asked for usage at the end of the stream (OpenAI `include_usage`).
    pub stream_usage: bool,
    /// The output cap the client set, if any.
    pub max_output_tokens: Option<u32>,
}

/// A request body: the client's own bytes, or decoded.
#[derive(Debug)]
pub enum Body {
    /// The client's JSON object in its own format, parsed at the top level only.
    Raw(raw::RawObject),
    /// Decoded into canonical form.
    Canonical(Box<Request>),
}

/// What a model call asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// A completion (chat, messages, responses, legacy completions).
    Generate,
    Embed,
    /// Count a prompt's input tokens (Anthropic's `/v1/messages/count_tokens`).
    CountTokens,
}

/// A decoded request before routing: its format, what policies need, and its body.
#[derive(Debug)]
pub struct Incoming {
    pub format: Format,
    pub op: Op,
    pub facts: Facts,
    pub body: Body,
    /// Client headers forwarded when the upstream speaks the client's format
    /// (`anthropic-version`, `anthropic-beta`).
    pub pass_headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// The request's `cache-control`.
    pub cache_control: CacheControl,
}

/// What a request's `cache-control` header asks of the response cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheControl {
    /// `no-cache`: do not answer from the cache (the answer may still be stored).
    pub no_cache: bool,
    /// `no-store`: do not store the answer.
    pub no_store: bool,
}

impl CacheControl {
    pub fn of(headers: &http::HeaderMap) -> Self {
        let mut c = Self::default();
        for v in headers.get_all(http::header::CACHE_CONTROL) {
            for d in v.to_str().unwrap_or("").split(',') {
                match d.trim().to_ascii_lowercase().as_str() {
                    "no-cache" => c.no_cache = true,
                    "no-store" => c.no_store = true,
                    _ => {}
                }
            }
        }
        c
    }
}

impl Incoming {
    /// The client's bytes, when the body was never decoded.
    pub fn raw(&self) -> Option<&raw::RawObject> {
        match &self.body {
            Body::Raw(r) => Some(r),
            Body::Canonical(_) => None,
        }
    }
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Serializes a wire value; the types here always serialize, so a failure is a bug reported
/// as an internal error, never a panic.
pub fn to_bytes<T: serde::Serialize>(v: &T) -> Result<Bytes, crate::error::ProxyError> {
    serde_json::to_vec(v).map(Bytes::from).map_err(|e| {
        crate::error::ProxyError::new(
            crate::error::ErrorKind::Internal,
            format!("encoding failed: {e}"),
        )
    })
}
