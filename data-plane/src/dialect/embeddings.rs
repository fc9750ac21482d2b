//! `/v1/embeddings`. Native to OpenAI-format upstreams (passthrough); Gemini's
//! `embedContent` / `batchEmbedContents` are translated through [`Embeddings`].

use base64::Engine;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};

use super::bad_json;
use crate::dialect::codec::{self, Codec, Sniffer as Sniff};
use crate::error::ProxyError;
use crate::llm::raw::RawObject;
use crate::llm::{Facts, Format, Usage};

/// The embeddings API: a front door, passed through to OpenAI-format upstreams or
/// translated for Gemini by the provider.
pub(crate) static CODEC: Codec = Codec {
    format: Format::OpenAiEmbeddings,
    client: Some(codec::Client {
        facts: |raw, _| facts(raw),
        usage_of: super::openai_chat::usage_of,
        // Embeddings do not stream.
        sniffer: |f| Sniff::OpenAi(super::openai_chat::Sniffer::new(f.stream_usage)),
        error_event: super::openai_chat::error_event,
        generation: None,
    }),
    upstream: None,
};

/// An embeddings request in canonical form.
#[derive(Clone, Debug, PartialEq)]
pub struct EmbeddingsRequest {
    pub model: String,
    pub inputs: Vec<String>,
    pub dimensions: Option<u32>,
    /// `encoding_format: "base64"`: vectors as base64 of little-endian f32.
    pub base64: bool,
}

/// Embeddings in canonical form.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Embeddings {
    pub model: String,
    pub vectors: Vec<Vec<f32>>,
    pub usage: Usage,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Input {
    One(String),
    Many(Vec<String>),
    Tokens(Vec<u32>),
    ManyTokens(Vec<Vec<u32>>),
}

#[derive(Deserialize)]
struct WireRequest {
    model: String,
    input: Input,
    #[serde(default)]
    dimensions: Option<u32>,
    #[serde(default)]
    encoding_format: Option<String>,
}

/// What the policies need (`input` is checked to be text or token ids).
pub(crate) fn facts(raw: &RawObject) -> Result<Facts, ProxyError> {
    let model: String = raw
        .parse_field("model")
        .map_err(|e| ProxyError::invalid(format!("Invalid `model`: {e}")).with_param("model"))?
        .unwrap_or_default();
    if model.trim().is_empty() {
        return Err(ProxyError::invalid("model must not be empty").with_param("model"));
    }
    let _: Input = raw
        .parse_field("input")
        .map_err(|e| ProxyError::invalid(format!("Invalid `input`: {e}")).with_param("input"))?
        .ok_or_else(|| ProxyError::invalid("`input` is required").with_param("input"))?;
    Ok(Facts {
        model,
        ..Default::default()
    })
}

/// The texts of an embeddings request, for token estimates (token ids count one each).
pub(crate) fn texts(raw: &RawObject) -> Vec<String> {
    match raw.parse_field::<Input>("input").ok().flatten() {
        Some(Input::One(s)) => vec![s],
        Some(Input::Many(v)) => v,
        Some(Input::Tokens(t)) => vec!["x".repeat(t.len() * 4)],
        Some(Input::ManyTokens(t)) => t.iter().map(|t| "x".repeat(t.len() * 4)).collect(),
        None => Vec::new(),
    }
}

/// Decodes for a non-OpenAI upstream (text inputs only).
pub(crate) fn decode_request(raw: &RawObject) -> Result<EmbeddingsRequest, ProxyError> {
    let w: WireRequest = serde_json::from_str(raw.text()).map_err(bad_json)?;
    let inputs = match w.input {
        Input::One(s) => vec![s],
        Input::Many(v) => v,
        Input::Tokens(_) | Input::ManyTokens(_) => {
            return Err(ProxyError::invalid(
                "token-id inputs are specific to OpenAI's tokenizers; send text to this model",
            )
            .with_param("input"));
        }
    };
    let base64 = match w.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ProxyError::invalid(format!(
                "encoding_format `{other}` is not float or base64"
            ))
            .with_param("encoding_format"));
        }
    };
    Ok(EmbeddingsRequest {
        model: w.model,
        inputs,
        dimensions: w.dimensions,
        base64,
    })
}

/// Renders embeddings as OpenAI's `list`.
pub(crate) fn render(e: &Embeddings, base64: bool) -> Result<Bytes, ProxyError> {
    let data: Vec<Value> = e
        .vectors
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    crate::llm::to_bytes(&json!({
        "object": "list", "data": data, "model": e.model,
        "usage": {"prompt_tokens": e.usage.input, "total_tokens": e.usage.input}
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_floats_and_base64() {
        let e = Embeddings {
            model: "m".into(),
            vectors: vec![vec![1.0, -0.5]],
            usage: Usage::new(3, 0),
        };
        let v: Value = serde_json::from_slice(&render(&e, false).expect("render")).expect("json");
        assert_eq!(v["data"][0]["embedding"], json!([1.0, -0.5]));
        assert_eq!(v["usage"]["prompt_tokens"], 3);
        let v: Value = serde_json::from_slice(&render(&e, true).expect("render")).expect("json");
        let b = base64::engine::general_purpose::STANDARD
            .decode(v["data"][0]["embedding"].as_str().expect("b64"))
            .expect("decode");
        assert_eq!(b, [1.0f32.to_le_bytes(), (-0.5f32).to_le_bytes()].concat());
    }
}
