//! One value per wire format. Each dialect module exposes a `CODEC`: everything the gateway
//! does with its format, as a front door (the client speaks it) and as an upstream's wire
//! (canonical requests are translated into it). [`codec`] is the one place a `Format` picks
//! its code; nothing else dispatches on the format to reach a dialect.
//!
//! Adding a wire format: a module under `dialect/` with its `CODEC`, a `Format` variant in
//! `llm`, and its arm in [`codec`] (the compiler lists every other `match` that must learn
//! it: there is no `_ =>` arm on `Format`, which `cargo xtask layers` checks).

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};

use super::{Flow, anthropic, bedrock, completions, embeddings, gemini, openai_chat, responses};
use crate::error::{ErrorKind, ProxyError};
use crate::llm::raw::RawObject;
use crate::llm::{Described, Event, Facts, Format, Op, Request, Response, Usage};
use crate::upstream::Frame;

/// What the gateway does with one wire format.
#[derive(Debug)]
pub struct Codec {
    pub format: Format,
    /// As a front door; `None` for formats the gateway only speaks to upstreams.
    pub client: Option<Client>,
    /// As an upstream's wire; `None` for formats only ever passed through as they came.
    pub upstream: Option<Upstream>,
}

/// Reads the usage of a whole answer, and with a [`Described`] what its span says of it.
pub type UsageOf = fn(&[u8], Option<&mut Described>) -> Result<Option<Usage>, ProxyError>;

/// A front door's side of a format.
#[derive(Debug)]
pub struct Client {
    /// The facts the gateway needs before routing (model, stream, limits), read without
    /// decoding the whole body.
    pub facts: fn(&RawObject, Op) -> Result<Facts, ProxyError>,
    /// The usage of a whole answer in this format; with a [`Described`], in the same pass,
    /// the id, model and finish reasons a traced request's span reports.
    pub usage_of: UsageOf,
    /// Same format both sides: forwards a stream's events and reads its usage.
    pub sniffer: fn(&Facts) -> Sniffer,
    /// An error event that ends a passed-through stream.
    pub error_event: fn(&ProxyError) -> Bytes,
    /// For generation APIs (all but embeddings): canonical form both ways.
    pub generation: Option<Generation>,
}

/// A generation front door: the client's request in canonical form and the canonical answer
/// in its format.
#[derive(Debug)]
pub struct Generation {
    /// The request in canonical form (the Responses API also gives back what its response
    /// object must repeat).
    pub decode: fn(&RawObject) -> Result<Decoded, ProxyError>,
    pub render: fn(&Response, Option<&responses::Echo>) -> Result<Bytes, ProxyError>,
    pub renderer: fn(&Facts, Option<Box<responses::Echo>>) -> Renderer,
    /// Reads back a whole answer this door rendered (a cache entry replayed as a stream);
    /// `None` where the gateway keeps no decoder of the door's own answers.
    pub decode_answer: Option<ReadAnswer>,
}

/// A client's request in canonical form, with what a Responses answer must repeat.
pub type Decoded = (Request, Option<Box<responses::Echo>>);

/// Reads a whole answer back into canonical form.
pub type ReadAnswer = fn(&[u8]) -> Result<Response, ProxyError>;

/// An upstream's side of a format.
#[derive(Debug)]
pub struct Upstream {
    pub encode: fn(&Request, &Target<'_>) -> Result<Bytes, ProxyError>,
    /// A whole answer; `json_tool` when a JSON answer was asked for as a forced tool call
    /// (Bedrock).
    pub decode: fn(&[u8], bool) -> Result<Response, ProxyError>,
    pub decoder: fn(bool) -> Decoder,
    /// An error answer: its failure class and the message the client may see.
    pub classify: fn(StatusCode, &HeaderMap, &[u8]) -> ProxyError,
    /// The provider's own token counting, where the format has it.
    pub count_tokens: Option<CountTokens>,
}

/// A format's token counting call.
#[derive(Debug)]
pub struct CountTokens {
    pub body: fn(&Request, &str) -> Result<Bytes, ProxyError>,
    pub read: fn(&[u8]) -> Result<u64, ProxyError>,
}

/// Who a translated request is for.
#[derive(Debug)]
pub struct Target<'a> {
    pub model: &'a str,
    /// The provider's label (named in errors about what it cannot take).
    pub provider: &'static str,
    /// How an OpenAI-format upstream wants its fields.
    pub openai: openai_chat::EncodeOptions,
}

/// The codec of a format.
pub fn codec(format: Format) -> &'static Codec {
    match format {
        Format::OpenAiChat => &openai_chat::CODEC,
        Format::OpenAiCompletions => &completions::CODEC,
        Format::OpenAiResponses => &responses::CODEC,
        Format::OpenAiEmbeddings => &embeddings::CODEC,
        Format::AnthropicMessages => &anthropic::CODEC,
        Format::Gemini => &gemini::CODEC,
        Format::BedrockConverse => &bedrock::CODEC,
    }
}

impl Codec {
    /// The front-door side, or the error for a format no client speaks.
    pub fn client(&self) -> Result<&Client, ProxyError> {
        self.client
            .as_ref()
            .ok_or_else(|| self.missing("front door"))
    }

    /// The generation front door, or the error for a format that is none.
    pub fn generation(&self) -> Result<&Generation, ProxyError> {
        self.client()?
            .generation
            .as_ref()
            .ok_or_else(|| self.missing("generation front door"))
    }

    /// The upstream side, or the error for a format never translated into.
    pub fn upstream(&self) -> Result<&Upstream, ProxyError> {
        self.upstream
            .as_ref()
            .ok_or_else(|| self.missing("upstream wire format"))
    }

    fn missing(&self, what: &str) -> ProxyError {
        ProxyError::new(
            ErrorKind::Internal,
            format!("{} is not a {what}", self.format.label()),
        )
    }
}

/// The `Retry-After` an error answer carried.
pub fn retry_after(headers: &HeaderMap) -> Option<HeaderValue> {
    headers.get(header::RETRY_AFTER).cloned()
}

/// Same-format passthrough, by format.
#[derive(Debug)]
pub enum Sniffer {
    OpenAi(openai_chat::Sniffer),
    Anthropic(anthropic::Sniffer),
    Responses(responses::Sniffer),
}

impl Sniffer {
    pub fn frame(&mut self, f: &Frame, out: &mut Vec<Bytes>) -> Result<Flow, ProxyError> {
        match self {
            Self::OpenAi(s) => s.frame(f, out),
            Self::Anthropic(s) => s.frame(f, out),
            Self::Responses(s) => s.frame(f, out),
        }
    }

    pub fn usage(&self) -> Option<Usage> {
        match self {
            Self::OpenAi(s) => s.usage,
            Self::Anthropic(s) => s.usage(),
            Self::Responses(s) => s.usage,
        }
    }

    /// Bytes of generated text passed to the client.
    pub fn delivered(&self) -> u64 {
        match self {
            Self::OpenAi(s) => s.delivered,
            Self::Anthropic(s) => s.delivered,
            Self::Responses(s) => s.delivered,
        }
    }
}

/// Upstream wire format -> canonical events.
#[derive(Debug)]
pub enum Decoder {
    OpenAiChat(openai_chat::Decoder),
    Anthropic(anthropic::Decoder),
    Gemini(gemini::Decoder),
    Bedrock(bedrock::Decoder),
}

impl Decoder {
    pub fn frame(&mut self, f: &Frame, out: &mut Vec<Event>) -> Result<Flow, ProxyError> {
        match self {
            Self::OpenAiChat(d) => d.frame(f, out),
            Self::Anthropic(d) => d.frame(f, out),
            Self::Gemini(d) => d.frame(f, out),
            Self::Bedrock(d) => d.frame(f, out),
        }
    }

    /// At the end of the body: formats that end by closing (Gemini, Bedrock) are complete
    /// here; the others needed their explicit terminator.
    pub fn end(&mut self, out: &mut Vec<Event>) -> Flow {
        match self {
            Self::Gemini(d) => d.end(out),
            Self::Bedrock(d) => d.end(out),
            Self::OpenAiChat(_) | Self::Anthropic(_) => Flow::Continue,
        }
    }
}

/// Canonical events -> the client's format.
#[derive(Debug)]
pub enum Renderer {
    Chat(openai_chat::Renderer),
    Completions(completions::Renderer),
    Responses(Box<responses::Renderer>),
    Messages(anthropic::Renderer),
}

impl Renderer {
    pub fn event(&mut self, ev: Event, out: &mut Vec<Bytes>) {
        match self {
            Self::Chat(r) => r.event(ev, out),
            Self::Completions(r) => r.event(ev, out),
            Self::Responses(r) => r.event(ev, out),
            Self::Messages(r) => r.event(ev, out),
        }
    }

    pub fn done(&mut self, out: &mut Vec<Bytes>) {
        match self {
            Self::Chat(r) => r.done(out),
            Self::Completions(r) => r.done(out),
            Self::Responses(r) => r.done(out),
            Self::Messages(r) => r.done(out),
        }
    }

    pub fn error(&mut self, e: &ProxyError, out: &mut Vec<Bytes>) {
        match self {
            Self::Responses(r) => r.error(e, out),
            Self::Messages(_) => out.push(anthropic::error_event(e)),
            Self::Chat(_) | Self::Completions(_) => out.push(openai_chat::error_event(e)),
        }
    }
}

/// The usage of a whole answer, as `U` in its `usage` field, made canonical by `into`; with
/// `described`, the answer's id, model and finish reasons in the same pass. The fields are
/// those of every dialect's answer (`id` / Gemini's `responseId`, `model` / `modelVersion`,
/// Chat's `choices[].finish_reason`, Anthropic's `stop_reason`, a response's `status`):
/// what is absent stays empty.
pub fn read_usage<U: serde::de::DeserializeOwned>(
    body: &[u8],
    described: Option<&mut Described>,
    into: impl FnOnce(U) -> Usage,
) -> Result<Option<Usage>, ProxyError> {
    use serde::Deserialize;
    use std::borrow::Cow;
    #[derive(Deserialize)]
    struct Only<U> {
        #[serde(default = "none")]
        usage: Option<U>,
    }
    fn none<U>() -> Option<U> {
        None
    }
    #[derive(Deserialize)]
    struct Choice<'a> {
        #[serde(default, borrow)]
        finish_reason: Option<Cow<'a, str>>,
    }
    #[derive(Deserialize)]
    struct Answer<'a, U> {
        #[serde(default = "none")]
        usage: Option<U>,
        #[serde(default, borrow)]
        id: Option<Cow<'a, str>>,
        #[serde(default, borrow)]
        model: Option<Cow<'a, str>>,
        #[serde(default, rename = "modelVersion", borrow)]
        model_version: Option<Cow<'a, str>>,
        #[serde(default, rename = "responseId", borrow)]
        response_id: Option<Cow<'a, str>>,
        #[serde(default, borrow)]
        choices: Vec<Choice<'a>>,
        #[serde(default, borrow)]
        stop_reason: Option<Cow<'a, str>>,
        #[serde(default, borrow)]
        status: Option<Cow<'a, str>>,
    }
    let garbage = crate::dialect::upstream_garbage;
    let Some(d) = described else {
        let o: Only<U> = serde_json::from_slice(body).map_err(garbage)?;
        return Ok(o.usage.map(into));
    };
    let a: Answer<'_, U> = serde_json::from_slice(body).map_err(garbage)?;
    if let Some(id) = a.id.or(a.response_id) {
        d.id = id.into_owned();
    }
    if let Some(m) = a.model.or(a.model_version) {
        d.model = m.into_owned();
    }
    let status = a
        .status
        .filter(|_| a.choices.is_empty() && a.stop_reason.is_none());
    d.finish_reasons = a
        .choices
        .into_iter()
        .filter_map(|c| c.finish_reason)
        .chain(a.stop_reason)
        .chain(status)
        .map(Cow::into_owned)
        .collect();
    Ok(a.usage.map(into))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each format's codec is its own, and the sides a format has are the ones the gateway
    /// uses it for: every front door decodes, every translated-to upstream encodes.
    #[test]
    fn every_format_reaches_its_own_codec() {
        for f in Format::ALL {
            let c = codec(f);
            assert_eq!(c.format, f);
            assert!(
                c.client.is_some() || c.upstream.is_some(),
                "{f:?} does nothing"
            );
        }
        assert!(codec(Format::Gemini).client().is_err());
        assert!(codec(Format::OpenAiResponses).upstream().is_err());
        assert!(codec(Format::OpenAiEmbeddings).generation().is_err());
        assert!(codec(Format::AnthropicMessages).generation().is_ok());
        assert!(codec(Format::BedrockConverse).upstream().is_ok());
    }

    /// One pass reads a whole answer's usage and, for a traced request, its id, model and
    /// finish reasons, in every format a front door passes through; without a `Described`
    /// it reads the usage alone.
    #[test]
    fn usage_and_what_a_span_says_come_from_one_read() {
        let chat = br#"{"id":"chatcmpl-1","object":"chat.completion","model":"gpt-x",
            "choices":[{"index":0,"message":{"role":"assistant","content":"hi \"there\""},
            "finish_reason":"stop"},{"index":1,"message":{"role":"assistant","content":"x"},
            "finish_reason":"length"}],"usage":{"prompt_tokens":7,"completion_tokens":3,
            "total_tokens":10}}"#;
        let messages = br#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-x",
            "content":[{"type":"text","text":"hi"}],"stop_reason":"end_turn",
            "usage":{"input_tokens":5,"output_tokens":2}}"#;
        let response = br#"{"id":"resp_1","object":"response","model":"gpt-r","status":"completed",
            "output":[],"usage":{"input_tokens":4,"output_tokens":1,"total_tokens":5}}"#;
        for (format, body, id, model, reasons, tokens) in [
            (
                Format::OpenAiChat,
                &chat[..],
                "chatcmpl-1",
                "gpt-x",
                &["stop", "length"][..],
                (7, 3),
            ),
            (
                Format::AnthropicMessages,
                &messages[..],
                "msg_1",
                "claude-x",
                &["end_turn"][..],
                (5, 2),
            ),
            (
                Format::OpenAiResponses,
                &response[..],
                "resp_1",
                "gpt-r",
                &["completed"][..],
                (4, 1),
            ),
        ] {
            let usage_of = codec(format).client().unwrap().usage_of;
            let mut d = Described::default();
            let u = usage_of(body, Some(&mut d)).unwrap().unwrap();
            assert_eq!((u.input, u.output), tokens, "{format:?}");
            assert_eq!((&*d.id, &*d.model), (id, model), "{format:?}");
            assert_eq!(d.finish_reasons, reasons, "{format:?}");
            let alone = usage_of(body, None).unwrap().unwrap();
            assert_eq!((alone.input, alone.output), tokens);
        }
        let usage_of = codec(Format::OpenAiChat).client().unwrap().usage_of;
        let mut d = Described::default();
        assert_eq!(usage_of(b"{}", Some(&mut d)).unwrap(), None);
        assert_eq!(d, Described::default());
        assert!(usage_of(b"not json", Some(&mut d)).is_err());
        assert!(usage_of(b"not json", None).is_err());
    }
}
