//! The OpenAI Responses API. Native to OpenAI upstreams (the client's bytes pass through);
//! for every other upstream the request is decoded into canonical form and the answer
//! rendered back as a `response` object or its event stream. What has no counterpart without
//! OpenAI's server-side state (`store`, `previous_response_id`, hosted tools) is a 400 naming
//! the field.

mod render;
mod request;

pub use render::{Renderer, render_response};
pub use request::{Echo, decode_request, facts};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::dialect::codec::{self, Codec, Generation, Renderer as Render, Sniffer as Sniff};
use crate::dialect::{Flow, malformed, openai_error};
use crate::error::Dialect;
use crate::error::ProxyError;
use crate::llm::{Format, Usage};

/// The OpenAI Responses API: a front door, passed through to OpenAI as it came.
pub static CODEC: Codec = Codec {
    format: Format::OpenAiResponses,
    client: Some(codec::Client {
        facts: |raw, _| facts(raw),
        usage_of,
        sniffer: |_| Sniff::Responses(Sniffer::default()),
        error_event,
        generation: Some(Generation {
            decode: |raw| {
                let (r, e) = decode_request(raw)?;
                Ok((r, Some(Box::new(e))))
            },
            render: |r, echo| render_response(r, echo.unwrap_or(&Echo::default())),
            renderer: |_, echo| {
                Render::Responses(Box::new(Renderer::new(
                    echo.map(|e| *e).unwrap_or_default(),
                )))
            },
            decode_answer: None,
        }),
    }),
    upstream: None,
};

/// An error event that ends a passed-through stream.
pub(crate) fn error_event(e: &ProxyError) -> Bytes {
    let body = e.body(Dialect::OpenAi);
    let err = &body["error"];
    let v = serde_json::json!({"type": "error", "code": err["code"], "message": err["message"], "param": err["param"], "sequence_number": 0});
    sse::named("error", v.to_string().as_bytes())
}
use crate::upstream::Frame;
use crate::upstream::sse;

/// Usage as the Responses API writes it.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize)]
pub struct WireUsage {
    #[serde(default)]
    pub input_tokens: u64,
    #[serde(default)]
    pub input_tokens_details: InputDetails,
    #[serde(default)]
    pub output_tokens: u64,
    #[serde(default)]
    pub output_tokens_details: OutputDetails,
    #[serde(default)]
    pub total_tokens: u64,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize)]
pub struct InputDetails {
    #[serde(default)]
    pub cached_tokens: u64,
    #[serde(default)]
    pub cache_write_tokens: u64,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize)]
pub struct OutputDetails {
    #[serde(default)]
    pub reasoning_tokens: u64,
}

impl From<WireUsage> for Usage {
    fn from(u: WireUsage) -> Self {
        Usage {
            input: u.input_tokens,
            output: u.output_tokens,
            cache_read: u.input_tokens_details.cached_tokens,
            cache_write: u.input_tokens_details.cache_write_tokens,
            reasoning: u.output_tokens_details.reasoning_tokens,
        }
    }
}

impl From<Usage> for WireUsage {
    fn from(u: Usage) -> Self {
        WireUsage {
            input_tokens: u.input,
            input_tokens_details: InputDetails {
                cached_tokens: u.cache_read,
                cache_write_tokens: u.cache_write,
            },
            output_tokens: u.output,
            output_tokens_details: OutputDetails {
                reasoning_tokens: u.reasoning,
            },
            total_tokens: u.total(),
        }
    }
}

#[derive(Deserialize)]
struct WithUsage {
    #[serde(default)]
    usage: Option<WireUsage>,
}

/// The usage of a whole `response` (and what a span says of it;
/// [`codec::read_usage`]).
///
/// [`codec::read_usage`]: crate::dialect::codec::read_usage
pub fn usage_of(
    body: &[u8],
    described: Option<&mut crate::llm::Described>,
) -> Result<Option<Usage>, ProxyError> {
    crate::dialect::codec::read_usage(body, described, <Usage as From<WireUsage>>::from)
}

/// Same-format passthrough of OpenAI's event stream: events go out as they came; usage is
/// read from the terminal `response.completed` / `.incomplete` / `.failed` event.
#[derive(Debug, Default)]
pub struct Sniffer {
    pub usage: Option<Usage>,
    /// Bytes of text delivered (the `delta` of text, reasoning and argument events).
    pub delivered: u64,
}

static DELTA: std::sync::LazyLock<crate::dialect::TextFields> =
    std::sync::LazyLock::new(|| crate::dialect::TextFields::new(&["delta"]));

impl Sniffer {
    pub fn frame(&mut self, f: &Frame, out: &mut Vec<Bytes>) -> Result<Flow, ProxyError> {
        let name = f.event.as_deref().unwrap_or("");
        let encoded = || match &f.event {
            Some(n) => sse::named(n, f.data.as_bytes()),
            None => sse::data(f.data.as_bytes()),
        };
        if f.data == "[DONE]" {
            out.push(encoded());
            return Ok(Flow::Done);
        }
        match name {
            "response.completed" | "response.incomplete" | "response.failed" => {
                #[derive(Deserialize)]
                struct Terminal {
                    response: WithUsage,
                }
                let t: Terminal = serde_json::from_str(&f.data).map_err(malformed)?;
                self.usage = t.response.usage.map(Usage::from);
                out.push(encoded());
                Ok(Flow::Done)
            }
            "error" => {
                out.push(encoded());
                Err(stream_error(f.data.as_bytes()))
            }
            _ => {
                if serde_json::from_str::<serde::de::IgnoredAny>(&f.data).is_err() {
                    return Err(malformed(format!("a `{name}` event that is not JSON")));
                }
                if name.ends_with(".delta") {
                    self.delivered += DELTA.bytes(f.data.as_bytes());
                }
                out.push(encoded());
                Ok(Flow::Continue)
            }
        }
    }
}

/// OpenAI's `error` stream event (`{"type": "error", "code", "message"}`) as a proxy error.
fn stream_error(data: &[u8]) -> ProxyError {
    #[derive(Deserialize)]
    struct E {
        #[serde(default)]
        code: Option<String>,
        #[serde(default)]
        message: Option<String>,
    }
    let e: E = serde_json::from_slice(data).unwrap_or(E {
        code: None,
        message: None,
    });
    let wrapped =
        serde_json::json!({"error": {"message": e.message, "code": e.code, "type": e.code}});
    openai_error::stream_error(wrapped.to_string().as_bytes())
}
