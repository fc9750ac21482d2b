//! Providers: a closed enum of upstream wire formats. Each module exposes pure functions that
//! translate requests, responses, stream events and errors between the canonical (OpenAI)
//! form and its wire format. Three ideas stay separate: the endpoint the client called, the
//! format the client sent (its `Dialect`) and the format the upstream speaks (`Provider`).

pub mod anthropic;
pub mod mock;
pub mod openai;

use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use switchyard_proto::v1 as pb;

use crate::error::ProxyError;
use crate::openai::Usage;
use crate::sse::Event;

/// The wire format an upstream speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provider {
    OpenAi,
    AzureOpenAi,
    Anthropic,
    OpenAiCompatible,
    /// Built into the data plane; no network.
    Mock,
}

impl Provider {
    pub fn from_proto(kind: pb::ProviderKind) -> Option<Self> {
        Some(match kind {
            pb::ProviderKind::Openai => Self::OpenAi,
            pb::ProviderKind::AzureOpenai => Self::AzureOpenAi,
            pb::ProviderKind::Anthropic => Self::Anthropic,
            pb::ProviderKind::OpenaiCompatible => Self::OpenAiCompatible,
            pb::ProviderKind::Mock => Self::Mock,
            pb::ProviderKind::Gemini
            | pb::ProviderKind::Bedrock
            | pb::ProviderKind::Unspecified => return None,
        })
    }

    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::OpenAi => "openai",
            Self::AzureOpenAi => "azure-openai",
            Self::Anthropic => "anthropic",
            Self::OpenAiCompatible => "openai-compatible",
            Self::Mock => "mock",
        }
    }

    /// Whether the upstream speaks OpenAI's wire format.
    pub fn speaks_openai(self) -> bool {
        matches!(
            self,
            Self::OpenAi | Self::AzureOpenAi | Self::OpenAiCompatible
        )
    }

    /// The header carrying the credential.
    pub fn credential_header(self) -> http::HeaderName {
        match self {
            Self::AzureOpenAi => http::HeaderName::from_static("api-key"),
            Self::Anthropic => http::HeaderName::from_static("x-api-key"),
            _ => http::header::AUTHORIZATION,
        }
    }

    /// The credential header's value, marked sensitive so it never shows in debug output.
    pub fn credential_header_value(
        self,
        credential: &str,
    ) -> Result<HeaderValue, http::header::InvalidHeaderValue> {
        let mut v = match self {
            Self::AzureOpenAi | Self::Anthropic => HeaderValue::from_str(credential)?,
            _ => HeaderValue::from_str(&format!("Bearer {credential}"))?,
        };
        v.set_sensitive(true);
        Ok(v)
    }
}

/// Outcome of translating one upstream stream event.
#[derive(Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// The upstream signalled the end of the stream.
    Done,
}

/// Error while translating a stream: ends the client's stream with an error event.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct StreamError {
    pub label: &'static str,
    pub message: String,
}

impl StreamError {
    pub fn new(label: &'static str, message: impl Into<String>) -> Self {
        Self {
            label,
            message: message.into(),
        }
    }
}

/// Per-stream translation state, one variant per upstream format.
#[derive(Debug)]
pub enum StreamTranslator {
    OpenAi(openai::StreamState),
    Anthropic(anthropic::StreamState),
}

impl StreamTranslator {
    /// Handles one upstream event, appending client-bound bytes to `out`.
    pub fn on_event(&mut self, ev: Event, out: &mut Vec<Bytes>) -> Result<Flow, StreamError> {
        match self {
            Self::OpenAi(s) => s.on_event(ev, out),
            Self::Anthropic(s) => s.on_event(ev, out),
        }
    }

    /// Usage counted from the stream so far.
    pub fn usage(&self) -> Option<Usage> {
        match self {
            Self::OpenAi(s) => s.usage,
            Self::Anthropic(s) => s.usage(),
        }
    }
}

/// Extracts a readable message from an upstream error body in either format.
pub fn upstream_error(
    status: StatusCode,
    body: &[u8],
    retry_after: Option<HeaderValue>,
) -> ProxyError {
    #[derive(serde::Deserialize)]
    struct Inner {
        message: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Envelope {
        error: Option<Inner>,
    }
    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        // The upstream rejected the gateway's own credential. Its message may echo part of
        // that credential (OpenAI prints a masked key): neither the client nor the log sees it.
        let mut e = ProxyError::upstream_status(
            status,
            format!(
                "The upstream provider rejected the gateway's credential (HTTP {}); check the pool's credential Secret.",
                status.as_u16()
            ),
        );
        e.retry_after = retry_after;
        return e;
    }
    let message = serde_json::from_slice::<Envelope>(body)
        .ok()
        .and_then(|e| e.error)
        .and_then(|e| e.message)
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(body);
            let snippet: String = text.chars().take(200).collect();
            format!("upstream returned HTTP {}: {snippet}", status.as_u16())
        });
    let mut e = ProxyError::upstream_status(status, message);
    e.retry_after = retry_after;
    e
}
