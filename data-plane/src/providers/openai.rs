//! OpenAI wire format (OpenAI, Azure OpenAI and OpenAI-compatible servers): the canonical form
//! already, so translation is URL building, the model override and usage accounting.

use bytes::Bytes;

use super::{Flow, Provider, StreamError};
use crate::openai::{ChatRequest, StreamOptions, Usage, UsageOnly};
use crate::sse::{self, Event};

/// URL of the chat endpoint.
pub fn chat_url(provider: Provider, base: &str, model: &str, api_version: &str) -> String {
    match provider {
        Provider::AzureOpenAi => {
            format!("{base}/openai/deployments/{model}/chat/completions?api-version={api_version}")
        }
        _ => format!("{base}/chat/completions"),
    }
}

/// URL of the embeddings endpoint.
pub fn embeddings_url(provider: Provider, base: &str, model: &str, api_version: &str) -> String {
    match provider {
        Provider::AzureOpenAi => {
            format!("{base}/openai/deployments/{model}/embeddings?api-version={api_version}")
        }
        _ => format!("{base}/embeddings"),
    }
}

/// The upstream request body: the client's request with the upstream model name, and on
/// streams usage reporting switched on (the gateway counts tokens; the extra chunk is
/// dropped again when the client did not ask for it).
pub fn translate_request(mut req: ChatRequest, model: &str) -> Result<Bytes, serde_json::Error> {
    model.clone_into(&mut req.model);
    if req.is_stream() {
        let opts = req
            .stream_options
            .get_or_insert_with(StreamOptions::default);
        opts.include_usage = Some(true);
    }
    serde_json::to_vec(&req).map(Bytes::from)
}

/// Usage from a non-streaming response body (which is otherwise forwarded unchanged).
pub fn response_usage(body: &[u8]) -> Result<Option<Usage>, serde_json::Error> {
    let parsed: UsageOnly = serde_json::from_slice(body)?;
    Ok(parsed
        .usage
        .map(|u| Usage::new(u.prompt_tokens, u.completion_tokens)))
}

/// Stream state: events pass through; usage is read on the way.
#[derive(Debug)]
pub struct StreamState {
    pub client_wants_usage: bool,
    pub usage: Option<Usage>,
}

impl StreamState {
    pub fn new(client_wants_usage: bool) -> Self {
        Self {
            client_wants_usage,
            usage: None,
        }
    }

    pub fn on_event(&mut self, ev: Event, out: &mut Vec<Bytes>) -> Result<Flow, StreamError> {
        let data = ev.data.as_bytes();
        if data == b"[DONE]" {
            out.push(Bytes::from_static(sse::DONE));
            return Ok(Flow::Done);
        }
        if memchr::memmem::find(data, b"\"error\"").is_some() && data.starts_with(b"{\"error\"") {
            out.push(sse::data(data));
            return Err(StreamError::new(
                "upstream_error_event",
                "upstream sent an error event",
            ));
        }
        if memchr::memmem::find(data, b"\"usage\":{").is_some()
            || memchr::memmem::find(data, b"\"usage\": {").is_some()
        {
            let parsed: UsageOnly = serde_json::from_slice(data).map_err(|e| {
                StreamError::new("malformed_event", format!("malformed upstream chunk: {e}"))
            })?;
            if let Some(u) = parsed.usage {
                self.usage = Some(Usage::new(u.prompt_tokens, u.completion_tokens));
                // The usage-only chunk has no choices; drop it unless the client asked for it.
                if !self.client_wants_usage
                    && memchr::memmem::find(data, b"\"choices\":[]").is_some()
                {
                    return Ok(Flow::Continue);
                }
            }
        } else if serde_json::from_slice::<serde::de::IgnoredAny>(data).is_err()
            || !data.starts_with(b"{")
        {
            return Err(StreamError::new(
                "malformed_event",
                "upstream sent a chunk that is not JSON",
            ));
        }
        out.push(sse::data(data));
        Ok(Flow::Continue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(data: &str) -> Event {
        Event {
            event: None,
            data: data.into(),
        }
    }

    #[test]
    fn urls() {
        assert_eq!(
            chat_url(Provider::OpenAi, "https://api.openai.com/v1", "gpt-4o", ""),
            "https://api.openai.com/v1/chat/completions"
        );
        assert_eq!(
            chat_url(
                Provider::AzureOpenAi,
                "https://r.openai.azure.com",
                "dep1",
                "2024-10-21"
            ),
            "https://r.openai.azure.com/openai/deployments/dep1/chat/completions?api-version=2024-10-21"
        );
        assert_eq!(
            embeddings_url(Provider::OpenAiCompatible, "http://vllm:8000/v1", "m", ""),
            "http://vllm:8000/v1/embeddings"
        );
    }

    #[test]
    fn request_overrides_model_and_keeps_unknown_fields() {
        let req: ChatRequest = serde_json::from_str(
            r#"{"model":"demo","messages":[{"role":"user","content":"hi"}],"stream":true,"seed":7,"response_format":{"type":"json_object"}}"#,
        )
        .expect("parse");
        let body = translate_request(req, "gpt-4o").expect("serialize");
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["model"], "gpt-4o");
        assert_eq!(v["seed"], 7);
        assert_eq!(v["response_format"]["type"], "json_object");
        assert_eq!(v["stream_options"]["include_usage"], true);
    }

    #[test]
    fn stream_counts_usage_and_hides_it_unless_asked() {
        let chunk = r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}],"usage":null}"#;
        let usage = r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":5,"total_tokens":8}}"#;
        for wants in [false, true] {
            let mut s = StreamState::new(wants);
            let mut out = Vec::new();
            assert_eq!(
                s.on_event(ev(chunk), &mut out).expect("chunk"),
                Flow::Continue
            );
            assert_eq!(
                s.on_event(ev(usage), &mut out).expect("usage"),
                Flow::Continue
            );
            assert_eq!(
                s.on_event(ev("[DONE]"), &mut out).expect("done"),
                Flow::Done
            );
            assert_eq!(out.len(), if wants { 3 } else { 2 });
            assert_eq!(s.usage, Some(Usage::new(3, 5)));
        }
    }

    #[test]
    fn malformed_chunk_is_an_error() {
        let mut s = StreamState::new(false);
        let mut out = Vec::new();
        assert!(s.on_event(ev("garbage"), &mut out).is_err());
        assert!(s.on_event(ev("{not json"), &mut out).is_err());
        assert!(
            s.on_event(ev(r#"{"usage":{"prompt_tokens":"x"}}"#), &mut out)
                .is_err()
        );
    }
}
