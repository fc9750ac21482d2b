//! Legacy `/v1/completions`. Native to OpenAI-format upstreams (passthrough); for the others a
//! single prompt becomes one user message and the answer comes back as a `text_completion`.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::bad_json;
use super::openai_chat::{WireUsage, finish_reason};
use crate::dialect::codec::{self, Codec, Generation, Renderer as Render, Sniffer as Sniff};
use crate::error::ProxyError;
use crate::llm::Format;
use crate::llm::raw::RawObject;
use crate::llm::{Event, Facts, Message, Request, Response, Role, Usage};
use crate::upstream::sse;

/// The legacy Completions API: a front door, passed through to OpenAI-format upstreams.
pub static CODEC: Codec = Codec {
    format: Format::OpenAiCompletions,
    client: Some(codec::Client {
        facts: |raw, _| facts(raw),
        usage_of: super::openai_chat::usage_of,
        sniffer: |f| Sniff::OpenAi(super::openai_chat::Sniffer::new(f.stream_usage)),
        error_event: super::openai_chat::error_event,
        generation: Some(Generation {
            decode: |raw| Ok((decode_request(raw)?, None)),
            render: |r, _| render_response(r),
            renderer: |f, _| Render::Completions(Renderer::new(f.stream_usage)),
            decode_answer: None,
        }),
    }),
    upstream: None,
};

#[derive(Deserialize)]
struct WireRequest {
    model: String,
    prompt: Prompt,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    stop: Option<Stop>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    seed: Option<i64>,
    #[serde(default)]
    presence_penalty: Option<f64>,
    #[serde(default)]
    frequency_penalty: Option<f64>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    n: Option<u32>,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Prompt {
    One(String),
    Many(Vec<String>),
    Tokens(Vec<u32>),
    ManyTokens(Vec<Vec<u32>>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize, Default)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

/// What the policies need.
pub fn facts(raw: &RawObject) -> Result<Facts, ProxyError> {
    let field = |name: &'static str, e: serde_json::Error| {
        ProxyError::invalid(format!("Invalid `{name}`: {e}")).with_param(name)
    };
    let model: String = raw
        .parse_field("model")
        .map_err(|e| field("model", e))?
        .unwrap_or_default();
    if model.trim().is_empty() {
        return Err(ProxyError::invalid("`model` is required").with_param("model"));
    }
    let _: Prompt = raw
        .parse_field("prompt")
        .map_err(|e| field("prompt", e))?
        .ok_or_else(|| ProxyError::invalid("`prompt` is required").with_param("prompt"))?;
    let stream = raw
        .parse_field::<bool>("stream")
        .map_err(|e| field("stream", e))?
        .unwrap_or(false);
    Ok(Facts {
        model,
        stream,
        stream_usage: raw
            .parse_field::<StreamOptions>("stream_options")
            .map_err(|e| field("stream_options", e))?
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
        max_output_tokens: raw
            .parse_field::<u32>("max_tokens")
            .map_err(|e| field("max_tokens", e))?,
    })
}

fn token_prompt(n: usize) -> ProxyError {
    ProxyError::invalid(format!(
        "a prompt of {n} token ids is specific to OpenAI's tokenizers; send text to this model"
    ))
    .with_param("prompt")
}

/// Decodes a completions request for a chat-only upstream: one text prompt, one answer.
pub fn decode_request(raw: &RawObject) -> Result<Request, ProxyError> {
    let w: WireRequest = serde_json::from_str(raw.text()).map_err(bad_json)?;
    let prompt = match w.prompt {
        Prompt::One(p) => p,
        Prompt::Many(mut v) if v.len() == 1 => v.remove(0),
        Prompt::Many(_) => {
            return Err(ProxyError::invalid(
                "a batch of prompts needs an OpenAI-format upstream; send one prompt per request to this model",
            )
            .with_param("prompt"));
        }
        Prompt::Tokens(ids) => return Err(token_prompt(ids.len())),
        Prompt::ManyTokens(batch) => return Err(token_prompt(batch.iter().map(Vec::len).sum())),
    };
    let mut extra = w.extra;
    if let Some(n) = w.n.filter(|n| *n != 1) {
        extra.insert("n".into(), json!(n));
    }
    Ok(Request {
        model: w.model,
        messages: vec![Message::text(Role::User, prompt)],
        max_output_tokens: w.max_tokens,
        temperature: w.temperature,
        top_p: w.top_p,
        stop: match w.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s],
            Some(Stop::Many(v)) => v,
        },
        seed: w.seed,
        presence_penalty: w.presence_penalty,
        frequency_penalty: w.frequency_penalty,
        user: w.user,
        stream: w.stream.unwrap_or(false),
        stream_usage: w
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
        extra,
        ..Default::default()
    })
}

#[derive(Serialize)]
struct OutCompletion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: Vec<OutChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<WireUsage>,
}

#[derive(Serialize)]
struct OutChoice {
    text: String,
    index: u32,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

fn completion_id(id: &str) -> String {
    if id.starts_with("cmpl-") {
        id.to_owned()
    } else {
        format!("cmpl-{id}")
    }
}

/// Renders a canonical answer as a `text_completion`.
pub fn render_response(r: &Response) -> Result<Bytes, ProxyError> {
    let id = completion_id(&r.id);
    crate::llm::to_bytes(&OutCompletion {
        id: &id,
        object: "text_completion",
        created: r.created,
        model: &r.model,
        choices: vec![OutChoice {
            text: r.text(),
            index: 0,
            logprobs: None,
            finish_reason: Some(finish_reason(r.finish.reason)),
        }],
        usage: Some(r.usage.into()),
    })
}

/// Canonical events -> `text_completion` chunks (text only).
#[derive(Debug)]
pub struct Renderer {
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
    usage: Usage,
}

impl Renderer {
    pub fn new(include_usage: bool) -> Self {
        Self {
            id: String::new(),
            model: String::new(),
            created: crate::llm::now_unix(),
            include_usage,
            usage: Usage::default(),
        }
    }

    fn chunk(&self, text: String, finish: Option<&'static str>, out: &mut Vec<Bytes>) {
        let c = OutCompletion {
            id: &self.id,
            object: "text_completion",
            created: self.created,
            model: &self.model,
            choices: vec![OutChoice {
                text,
                index: 0,
                logprobs: None,
                finish_reason: finish,
            }],
            usage: None,
        };
        if let Ok(v) = serde_json::to_vec(&c) {
            out.push(sse::data(&v));
        }
    }

    pub fn event(&mut self, ev: Event, out: &mut Vec<Bytes>) {
        match ev {
            Event::Start { id, model } => {
                self.id = completion_id(&id);
                self.model = model;
            }
            Event::Delta {
                delta: crate::llm::Delta::Text(t),
                ..
            } => self.chunk(t, None, out),
            Event::Usage(u) => self.usage.merge(u),
            Event::Finish(f) => self.chunk(String::new(), Some(finish_reason(f.reason)), out),
            _ => {}
        }
    }

    pub fn done(&mut self, out: &mut Vec<Bytes>) {
        if self.include_usage {
            let c = OutCompletion {
                id: &self.id,
                object: "text_completion",
                created: self.created,
                model: &self.model,
                choices: Vec::new(),
                usage: Some(self.usage.into()),
            };
            if let Ok(v) = serde_json::to_vec(&c) {
                out.push(sse::data(&v));
            }
        }
        out.push(Bytes::from_static(sse::DONE));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::{Finish, FinishReason, Part};

    fn raw(s: &str) -> RawObject {
        RawObject::parse(Bytes::copy_from_slice(s.as_bytes())).expect("object")
    }

    #[test]
    fn one_prompt_maps_batches_and_tokens_do_not() {
        let r = decode_request(&raw(
            r#"{"model":"m","prompt":["Say hi"],"max_tokens":7,"stop":"\n"}"#,
        ))
        .expect("one");
        assert_eq!(r.messages[0].joined_text(), "Say hi");
        assert_eq!(r.stop, vec!["\n".to_owned()]);
        for bad in [
            r#"{"model":"m","prompt":["a","b"]}"#,
            r#"{"model":"m","prompt":[1,2,3]}"#,
        ] {
            assert_eq!(
                decode_request(&raw(bad)).expect_err(bad).param.as_deref(),
                Some("prompt")
            );
        }
        let (r, _) = (
            decode_request(&raw(r#"{"model":"m","prompt":"x","echo":true}"#)).expect("decodes"),
            (),
        );
        assert_eq!(r.unmapped_field(), Some("echo"));
        assert!(facts(&raw(r#"{"model":"m","prompt":{}}"#)).is_err());
    }

    #[test]
    fn renders_text_completion() {
        let r = Response {
            id: "x".into(),
            model: "m".into(),
            created: 9,
            parts: vec![Part::text("hello")],
            finish: Finish::new(FinishReason::Length),
            usage: Usage::new(2, 1),
        };
        let v: Value = serde_json::from_slice(&render_response(&r).expect("render")).expect("json");
        assert_eq!(v["object"], "text_completion");
        assert_eq!(v["choices"][0]["text"], "hello");
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        assert_eq!(v["usage"]["total_tokens"], 3);
    }
}
