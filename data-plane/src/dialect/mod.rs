//! Wire formats, one module each, both directions. OpenAI Chat and Anthropic Messages are
//! both front-door dialects and upstream formats, so a format's translations live together
//! here rather than in a front door or a provider:
//!
//! - as a front door: `facts` / `decode_request` (client bytes -> canonical), `render_*`
//!   (canonical -> client bytes) and a stream `Renderer`;
//! - as an upstream: `encode_request` (canonical -> wire), `decode_response` and a stream
//!   `Decoder` (wire -> canonical), and error classification;
//! - same format on both sides: a stream `Sniffer` that forwards events and reads usage.
//!
//! Each module exposes one `CODEC` value with all of it, reached through `codec::codec`.
//!
//! Every function here is pure: bytes and canonical types in, bytes and canonical types out.

pub mod anthropic;
pub mod bedrock;
pub mod codec;
pub mod completions;
pub(crate) mod embeddings;
pub mod gemini;
pub mod openai_chat;
pub(crate) mod openai_error;
pub mod responses;

pub use codec::codec;
use http::{HeaderValue, StatusCode};

use crate::error::{ErrorKind, FailureClass, ProxyError};

/// The JSON string fields that carry generated text in a dialect's stream events, found
/// without parsing: how much text a passthrough stream delivered (to settle a stream that
/// broke off by what reached the client).
#[derive(Debug)]
pub struct TextFields(Vec<memchr::memmem::Finder<'static>>);

impl TextFields {
    pub fn new(names: &[&str]) -> Self {
        Self(
            names
                .iter()
                .map(|n| memchr::memmem::Finder::new(format!("\"{n}\":").as_bytes()).into_owned())
                .collect(),
        )
    }

    /// Bytes of the fields' string values in one event's data (escapes as written).
    pub fn bytes(&self, data: &[u8]) -> u64 {
        let mut total = 0;
        for f in &self.0 {
            let mut at = 0;
            while let Some(i) = data.get(at..).and_then(|rest| f.find(rest)) {
                let mut j = at + i + f.needle().len();
                while data.get(j).is_some_and(u8::is_ascii_whitespace) {
                    j += 1;
                }
                at = j;
                if data.get(j) != Some(&b'"') {
                    continue;
                }
                let start = j + 1;
                let mut k = start;
                at = data.len();
                while let Some(n) = data
                    .get(k..)
                    .and_then(|rest| memchr::memchr2(b'"', b'\\', rest))
                {
                    if data[k + n] == b'\\' {
                        k += n + 2;
                    } else {
                        total += (k + n - start) as u64;
                        at = k + n + 1;
                        break;
                    }
                }
            }
        }
        total
    }
}

/// Whether a stream goes on after an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// The upstream signalled the end.
    Done,
}

/// A client body that is not valid JSON (400 `invalid_json`) or has the wrong shape (400).
pub fn bad_json(e: serde_json::Error) -> ProxyError {
    match e.classify() {
        serde_json::error::Category::Data => ProxyError::invalid(format!("Invalid request: {e}")),
        _ => ProxyError::new(
            ErrorKind::InvalidJson,
            format!("The request body is not valid JSON: {e}"),
        ),
    }
}

/// An upstream answer that does not parse (502 `upstream_protocol`).
pub fn upstream_garbage(e: impl std::fmt::Display) -> ProxyError {
    ProxyError::new(
        ErrorKind::UpstreamProtocol,
        format!("upstream returned an invalid response: {e}"),
    )
}

/// A stream event that does not parse: ends the stream with an error event.
pub fn malformed(e: impl std::fmt::Display) -> ProxyError {
    ProxyError::new(
        ErrorKind::UpstreamProtocol,
        format!("upstream sent a malformed stream event: {e}"),
    )
    .with_code("malformed_event")
}

/// The failure class an HTTP status implies when the body says nothing more precise.
pub fn class_of_status(status: StatusCode) -> FailureClass {
    match status.as_u16() {
        429 => FailureClass::RateLimited,
        503 | 529 => FailureClass::Overloaded,
        408 | 504 => FailureClass::Timeout,
        401 | 403 => FailureClass::Authentication,
        400..=499 => FailureClass::BadRequest,
        _ => FailureClass::ServerError,
    }
}

/// Builds the error for an upstream's error answer. A refused credential gets a message of
/// the gateway's own: providers echo part of the key they rejected (OpenAI prints a masked
/// copy), and neither the client nor the log may see it.
pub fn upstream_error(
    status: StatusCode,
    class: FailureClass,
    message: Option<String>,
    body: &[u8],
    retry_after: Option<HeaderValue>,
) -> ProxyError {
    let message = if class == FailureClass::Authentication {
        format!(
            "The upstream provider rejected the gateway's credential (HTTP {}); check the pool's credential Secret.",
            status.as_u16()
        )
    } else {
        message.filter(|m| !m.is_empty()).unwrap_or_else(|| {
            let text = String::from_utf8_lossy(body);
            let snippet: String = text.chars().take(200).collect();
            format!("upstream returned HTTP {}: {snippet}", status.as_u16())
        })
    };
    let mut e = ProxyError::upstream(status, class, message);
    e.set_retry_after(retry_after);
    e
}

/// Phrases providers use when a prompt exceeds the context window.
pub fn mentions_context_window(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "context length",
        "context_length",
        "context window",
        "prompt is too long",
        "input is too long",
        "too many tokens",
        "maximum number of tokens",
        "exceeds the maximum",
        "maximum context",
    ]
    .iter()
    .any(|p| m.contains(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_fields_measure_string_values_only() {
        let f = TextFields::new(&["content", "arguments"]);
        let chunk = br#"{"choices":[{"delta":{"content":"Hi \"you\"","tool_calls":[{"function":{"arguments": "{\"a\":1}"}}]}}],"x":{"content":null}}"#;
        assert_eq!(f.bytes(chunk), 10 + 9);
        assert_eq!(f.bytes(br#"{"content":""}"#), 0);
        assert_eq!(
            f.bytes(br#"{"content":"unterminated"#),
            0,
            "a cut string counts nothing"
        );
        assert_eq!(f.bytes(br#"{"content":"ab\"#), 0);
        assert_eq!(
            f.bytes(br#"{"reasoning_content":"abc"}"#),
            0,
            "whole field names only"
        );
    }
}
