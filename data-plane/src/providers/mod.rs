//! Providers: a closed enum of upstreams. A variant carries what makes its upstream
//! different, the format it speaks, how its URLs are built, its quirks; each endpoint carries
//! its auth (header, query or SigV4) and static headers. There are no `if provider == ...`
//! chains on the request path: [`call`] asks the provider, encodes (or passes the client's
//! bytes through when the formats match), sends with deadlines, classifies error answers, and
//! hands an [`Answer`] to the front door to render.

pub(crate) mod check;
pub(crate) mod mock;
pub mod pool;

use std::sync::Arc;

use crate::upstream::Body;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use http_body_util::Full;
use tokio::time::Instant;

use crate::dialect::codec::Target;
use crate::dialect::embeddings::{Embeddings, EmbeddingsRequest};
use crate::dialect::openai_chat::{EncodeOptions, MaxTokensField};
use crate::dialect::responses::Echo;
use crate::dialect::{self, gemini};
use crate::error::{ErrorKind, ProxyError};
use crate::health::InFlight;
use crate::llm::{Format, Incoming, Op, Request, Response, Usage};
use crate::telemetry::metrics::{EndpointLabels, Metrics, UpstreamLabels};
use crate::upstream::{self, Framing, sigv4};
use pool::{EndpointEntry, PoolEntry};

/// An upstream: what it speaks and how it is reached.
#[derive(Clone, Debug, PartialEq)]
pub enum Provider {
    OpenAi,
    Azure {
        api_version: String,
    },
    /// Any OpenAI-format server: vLLM, Ollama, Mistral, Groq, Together, DeepSeek...
    Compat,
    Anthropic,
    Gemini {
        api_version: String,
    },
    Bedrock {
        region: String,
    },
    /// Built into the data plane; no network.
    Mock(crate::providers::pool::MockBehaviour),
}

/// How an endpoint proves who the gateway is.
#[derive(Clone)]
pub enum Auth {
    None,
    Header {
        name: HeaderName,
        value: HeaderValue,
    },
    Query {
        name: &'static str,
        value: String,
    },
    SigV4(Arc<sigv4::Signer>),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Auth::None => "None",
            Auth::Header { .. } => "Header(<redacted>)",
            Auth::Query { .. } => "Query(<redacted>)",
            Auth::SigV4(_) => "SigV4(<redacted>)",
        })
    }
}

impl Provider {
    /// Metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Self::OpenAi => "openai",
            Self::Azure { .. } => "azure-openai",
            Self::Compat => "openai-compatible",
            Self::Anthropic => "anthropic",
            Self::Gemini { .. } => "gemini",
            Self::Bedrock { .. } => "bedrock",
            Self::Mock(_) => "mock",
        }
    }

    fn openai_family(&self) -> bool {
        matches!(self, Self::OpenAi | Self::Azure { .. } | Self::Compat)
    }

    /// Whether the upstream takes the client's bytes as they are.
    pub fn native(&self, format: Format, op: Op) -> bool {
        match (format, op) {
            (Format::OpenAiChat | Format::OpenAiCompletions | Format::OpenAiEmbeddings, _) => {
                self.openai_family()
            }
            (Format::OpenAiResponses, _) => matches!(self, Self::OpenAi),
            (Format::AnthropicMessages, _) => matches!(self, Self::Anthropic),
            (Format::Gemini | Format::BedrockConverse, _) => false,
        }
    }

    /// The format a translated request is encoded into.
    pub fn wire(&self) -> Format {
        match self {
            Self::Anthropic => Format::AnthropicMessages,
            Self::Gemini { .. } => Format::Gemini,
            Self::Bedrock { .. } => Format::BedrockConverse,
            _ => Format::OpenAiChat,
        }
    }

    /// How the upstream frames streams.
    pub fn framing(&self) -> Framing {
        match self {
            Self::Bedrock { .. } => Framing::EventStream,
            _ => Framing::Sse,
        }
    }

    /// How an OpenAI-format upstream wants translated requests.
    pub fn encode_options(&self) -> EncodeOptions {
        match self {
            Self::Compat => EncodeOptions {
                max_tokens: MaxTokensField::MaxTokens,
                developer_as_system: true,
                top_k: true,
            },
            _ => EncodeOptions {
                max_tokens: MaxTokensField::MaxCompletionTokens,
                developer_as_system: false,
                top_k: false,
            },
        }
    }

    /// The URL of an operation. `format` is what is sent (the client's format when passing
    /// through, else the provider's wire format).
    pub fn url(
        &self,
        base: &str,
        op: Op,
        format: Format,
        model: &str,
        stream: bool,
    ) -> Result<String, ProxyError> {
        let unsupported = |what: &str| {
            ProxyError::new(
                ErrorKind::Unsupported,
                format!(
                    "The model `{model}` ({}) does not support {what}.",
                    self.label()
                ),
            )
            .with_param("model")
        };
        Ok(match (self, op) {
            (Self::OpenAi | Self::Compat, Op::Generate) => match format {
                Format::OpenAiCompletions => format!("{base}/completions"),
                Format::OpenAiResponses => format!("{base}/responses"),
                Format::OpenAiChat
                | Format::OpenAiEmbeddings
                | Format::AnthropicMessages
                | Format::Gemini
                | Format::BedrockConverse => format!("{base}/chat/completions"),
            },
            (Self::OpenAi | Self::Compat, Op::Embed) => format!("{base}/embeddings"),
            (Self::Azure { api_version }, op) => {
                let path = match (op, format) {
                    (Op::Embed, _) => "embeddings",
                    (_, Format::OpenAiCompletions) => "completions",
                    (
                        _,
                        Format::OpenAiChat
                        | Format::OpenAiResponses
                        | Format::OpenAiEmbeddings
                        | Format::AnthropicMessages
                        | Format::Gemini
                        | Format::BedrockConverse,
                    ) => "chat/completions",
                };
                let model = path_segment(model);
                format!("{base}/openai/deployments/{model}/{path}?api-version={api_version}")
            }
            (Self::Anthropic, op) => {
                let root = if base.ends_with("/v1") {
                    base.to_owned()
                } else {
                    format!("{base}/v1")
                };
                match op {
                    Op::Generate => format!("{root}/messages"),
                    Op::CountTokens => format!("{root}/messages/count_tokens"),
                    Op::Embed => return Err(unsupported("embeddings")),
                }
            }
            (Self::Gemini { api_version }, op) => {
                let root = if base.ends_with("/v1beta") || base.ends_with("/v1") {
                    base.to_owned()
                } else {
                    format!("{base}/{api_version}")
                };
                let method = match (op, stream) {
                    (Op::Generate, false) => "generateContent",
                    (Op::Generate, true) => "streamGenerateContent?alt=sse",
                    (Op::CountTokens, _) => "countTokens",
                    (Op::Embed, false) => "embedContent",
                    (Op::Embed, true) => "batchEmbedContents",
                };
                format!("{root}/models/{}:{method}", path_segment(model))
            }
            (Self::Bedrock { .. }, op) => {
                let model = path_segment(model);
                match (op, stream) {
                    (Op::Generate, false) => format!("{base}/model/{model}/converse"),
                    (Op::Generate, true) => format!("{base}/model/{model}/converse-stream"),
                    (Op::CountTokens, _) => format!("{base}/model/{model}/count-tokens"),
                    (Op::Embed, _) => return Err(unsupported("embeddings")),
                }
            }
            (Self::OpenAi | Self::Compat, Op::CountTokens) | (Self::Mock(_), _) => {
                return Err(ProxyError::new(
                    ErrorKind::Internal,
                    "no upstream URL for this operation",
                ));
            }
        })
    }

    /// Classifies an error answer.
    pub fn classify(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> ProxyError {
        match dialect::codec(self.wire()).upstream() {
            Ok(u) => (u.classify)(status, headers, body),
            Err(e) => e,
        }
    }
}

/// A model id as one URL path segment (Bedrock ids and ARNs hold `:` and `/`).
fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    // `.` and `..` alone are a path's own steps: written out, they stay a name.
    let dots = s == "." || s == "..";
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || (b"-._~".contains(&b) && !dots) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// How a stream is carried to the client.
#[derive(Debug)]
pub enum StreamSpec {
    /// The client's own format: events pass through, usage is read on the way.
    Pass,
    /// Decoded from the upstream's `wire` format and rendered in the client's.
    Translate {
        wire: Format,
        /// Bedrock answers a JSON response format through a forced tool.
        json_tool: bool,
        echo: Option<Box<Echo>>,
        /// The upstream model, for formats whose streams do not name it.
        model: String,
    },
}

/// What an upstream call produced, for the front door to render.
#[derive(Debug)]
pub enum Answer {
    /// The upstream's bytes, already in the client's format.
    Raw { body: Bytes, usage: Option<Usage> },
    /// A decoded answer.
    Complete {
        response: Response,
        echo: Option<Box<Echo>>,
    },
    /// A stream from the upstream.
    Stream {
        body: Body,
        framing: Framing,
        spec: StreamSpec,
        deadline: Instant,
        /// Longest silence between two chunks.
        idle: std::time::Duration,
        /// Stores the answer in the response cache once the stream completed.
        record: Option<Box<crate::cache::Record>>,
    },
    /// A cached answer replayed as a stream.
    Replay(Vec<crate::llm::Event>),
    /// A stream of the built-in mock provider.
    MockStream {
        events: mock::Events,
        echo: Option<Box<Echo>>,
    },
    Embeddings {
        embeddings: Embeddings,
        base64: bool,
    },
    /// Input tokens of a prompt.
    Tokens(u64),
}

/// Deadlines of one upstream call.
#[derive(Clone, Copy, Debug)]
pub struct Deadlines {
    pub first_byte: Instant,
    pub total: Instant,
}

impl Deadlines {
    pub fn of(pool: &PoolEntry) -> Self {
        let now = Instant::now();
        let total = now + pool.timeouts.total;
        Self {
            first_byte: (now + pool.timeouts.first_byte).min(total),
            total,
        }
    }
}

/// How to read what the upstream sends back.
enum Read {
    Raw(Format),
    Decode { wire: Format, json_tool: bool },
    GeminiEmbeddings(EmbeddingsRequest),
    Tokens(Format),
}

/// One request to send.
struct Prepared {
    url: String,
    body: Bytes,
    stream: bool,
    pass_headers: Vec<(HeaderName, HeaderValue)>,
    read: Read,
    echo: Option<Box<Echo>>,
    spec_json_tool: bool,
}

/// Decodes the client's request into canonical form for a translation.
fn canonical(incoming: &Incoming, model: &str) -> Result<(Request, Option<Box<Echo>>), ProxyError> {
    let raw = incoming
        .raw()
        .ok_or_else(|| ProxyError::new(ErrorKind::Internal, "request body was consumed"))?;
    let (mut r, echo) = (dialect::codec(incoming.format).generation()?.decode)(raw)?;
    model.clone_into(&mut r.model);
    Ok((r, echo))
}

fn prepare(
    provider: &Provider,
    base: &str,
    model: &str,
    incoming: &Incoming,
) -> Result<Prepared, ProxyError> {
    let stream = incoming.facts.stream;
    let op = incoming.op;
    if provider.native(incoming.format, op) {
        let format = incoming.format;
        let url = provider.url(base, op, format, model, stream)?;
        let raw = incoming
            .raw()
            .ok_or_else(|| ProxyError::new(ErrorKind::Internal, "request body was consumed"))?;
        // Edits are written over the client's bytes: the request stays as it came for the
        // next attempt.
        let mut edits: Vec<(&str, Bytes)> = Vec::with_capacity(2);
        if op != Op::CountTokens || matches!(provider, Provider::Anthropic) {
            edits.push(("model", crate::llm::to_bytes(&model)?));
        }
        if stream && matches!(format, Format::OpenAiChat | Format::OpenAiCompletions) {
            // The gateway counts tokens from every stream; the extra usage chunk is hidden
            // again from clients that did not ask for it.
            let mut opts: serde_json::Map<String, serde_json::Value> = raw
                .parse_field("stream_options")
                .ok()
                .flatten()
                .unwrap_or_default();
            opts.insert("include_usage".into(), serde_json::Value::Bool(true));
            edits.push(("stream_options", crate::llm::to_bytes(&opts)?));
        }
        return Ok(Prepared {
            url,
            body: raw.to_bytes_with(&edits),
            stream,
            pass_headers: incoming.pass_headers.clone(),
            read: Read::Raw(format),
            echo: None,
            spec_json_tool: false,
        });
    }
    let wire = provider.wire();
    match op {
        Op::Embed => {
            if !matches!(provider, Provider::Gemini { .. }) {
                // Anthropic and Bedrock (Converse) have no embeddings; the URL says so.
                provider.url(base, op, wire, model, false)?;
            }
            let raw = incoming
                .raw()
                .ok_or_else(|| ProxyError::new(ErrorKind::Internal, "request body was consumed"))?;
            let mut req = dialect::embeddings::decode_request(raw)?;
            model.clone_into(&mut req.model);
            let (body, batch) = gemini::encode_embeddings(&req, model)?;
            Ok(Prepared {
                // For embeddings the URL's `stream` flag picks the batch method.
                url: provider.url(base, op, wire, model, batch)?,
                body,
                stream: false,
                pass_headers: Vec::new(),
                read: Read::GeminiEmbeddings(req),
                echo: None,
                spec_json_tool: false,
            })
        }
        Op::CountTokens => {
            let (r, _) = canonical(incoming, model)?;
            let url = provider.url(base, op, wire, model, false)?;
            let count = dialect::codec(wire).upstream()?.count_tokens.as_ref();
            let body = (count
                .ok_or_else(|| {
                    ProxyError::new(ErrorKind::Internal, "no token count for this wire format")
                })?
                .body)(&r, model)?;
            Ok(Prepared {
                url,
                body,
                stream: false,
                pass_headers: Vec::new(),
                read: Read::Tokens(wire),
                echo: None,
                spec_json_tool: false,
            })
        }
        Op::Generate => {
            let (r, echo) = canonical(incoming, model)?;
            let json_tool = wire == Format::BedrockConverse
                && matches!(
                    r.response_format,
                    Some(
                        crate::llm::ResponseFormat::JsonObject
                            | crate::llm::ResponseFormat::JsonSchema { .. }
                    )
                );
            let target = Target {
                model,
                provider: provider.label(),
                openai: provider.encode_options(),
            };
            let body = (dialect::codec(wire).upstream()?.encode)(&r, &target)?;
            Ok(Prepared {
                url: provider.url(base, op, wire, model, stream)?,
                body,
                stream,
                pass_headers: Vec::new(),
                read: Read::Decode { wire, json_tool },
                echo,
                spec_json_tool: json_tool,
            })
        }
    }
}

/// A request to an endpoint with its credential and headers: a POST of `body`, or a GET
/// when `body` is `None` (health checks).
pub(crate) fn upstream_request(
    auth: &Auth,
    ep_headers: &[(HeaderName, HeaderValue)],
    url: String,
    body: Option<Bytes>,
    pass_headers: Vec<(HeaderName, HeaderValue)>,
) -> Result<http::Request<Full<Bytes>>, ProxyError> {
    let internal = |e: &dyn std::fmt::Display| {
        ProxyError::new(
            ErrorKind::Internal,
            format!("building the upstream request failed: {e}"),
        )
    };
    let url = match auth {
        Auth::Query { name, value } => {
            let sep = if url.contains('?') { '&' } else { '?' };
            format!("{url}{sep}{name}={value}")
        }
        _ => url,
    };
    let builder = match &body {
        Some(_) => http::Request::post(url).header(header::CONTENT_TYPE, "application/json"),
        None => http::Request::get(url),
    };
    let body = body.unwrap_or_default();
    let mut req = builder
        .body(Full::new(body.clone()))
        .map_err(|e| internal(&e))?;
    let h = req.headers_mut();
    for (k, v) in ep_headers {
        h.insert(k.clone(), v.clone());
    }
    for (k, v) in pass_headers {
        h.insert(k, v);
    }
    match auth {
        Auth::Header { name, value } => {
            h.insert(name.clone(), value.clone());
        }
        Auth::SigV4(signer) => signer.sign(&mut req, &body).map_err(|e| internal(&e))?,
        Auth::None | Auth::Query { .. } => {}
    }
    Ok(req)
}

/// Sends a request; error statuses become classified errors carrying the upstream's message.
async fn send(
    metrics: &Metrics,
    pool: &PoolEntry,
    req: http::Request<Full<Bytes>>,
    d: Deadlines,
    in_flight: &InFlight,
) -> Result<http::Response<Body>, ProxyError> {
    let provider = pool.provider.label();
    let started = Instant::now();
    let result = upstream::send(&pool.client, req, d.first_byte).await;
    let head = started.elapsed();
    if result.is_ok() {
        in_flight.head(head);
    }
    metrics
        .upstream_duration
        .get_or_create(&EndpointLabels { endpoint: provider })
        .observe(head.as_secs_f64());
    let outcome = |o: &'static str| {
        metrics
            .upstream_requests
            .get_or_create(&UpstreamLabels {
                provider,
                outcome: o,
            })
            .inc()
    };
    let resp = match result {
        Ok(r) => r,
        Err(e) => {
            outcome(e.metric_label());
            return Err(e);
        }
    };
    if resp.status().is_success() {
        outcome("ok");
        return Ok(resp);
    }
    let status = resp.status();
    let (parts, body) = resp.into_parts();
    let body = upstream::read_body(body, d.total).await.unwrap_or_default();
    let e = pool.provider.classify(status, &parts.headers, &body);
    outcome(e.metric_label());
    Err(e)
}

/// Runs one upstream call for an incoming request routed to `pool` as `model`, on the
/// endpoint the balancer picked (`None` only for the built-in mock).
pub async fn call(
    metrics: &Metrics,
    pool: &PoolEntry,
    ep: Option<&EndpointEntry>,
    model: &str,
    incoming: &Incoming,
    in_flight: &InFlight,
    trace: Option<&crate::telemetry::trace::AttemptStart>,
) -> Result<Answer, ProxyError> {
    if let Provider::Mock(b) = &pool.provider {
        return mock::answer(b, model, incoming).await;
    }
    if incoming.op == Op::CountTokens && pool.provider.openai_family() {
        // OpenAI has no counting endpoint; its models' own BPE counts exactly for text.
        let (r, _) = canonical(incoming, model)?;
        return Ok(Answer::Tokens(
            crate::tokens::estimate_request(&r, model).input,
        ));
    }
    let ep = ep.ok_or_else(|| {
        ProxyError::new(
            ErrorKind::UpstreamConnect,
            format!("pool {} has no endpoint with weight", pool.id),
        )
    })?;
    let d = Deadlines::of(pool);
    let mut p = prepare(&pool.provider, &ep.base, model, incoming)?;
    if let Some(t) = trace {
        // W3C trace context: the upstream continues the request's trace.
        p.pass_headers.extend(t.headers());
    }
    let req = upstream_request(&ep.auth, &ep.headers, p.url, Some(p.body), p.pass_headers)?;
    let resp = send(metrics, pool, req, d, in_flight).await?;
    if p.stream {
        let spec = match p.read {
            Read::Raw(_) => StreamSpec::Pass,
            Read::Decode { wire, .. } => StreamSpec::Translate {
                wire,
                json_tool: p.spec_json_tool,
                echo: p.echo,
                model: model.to_owned(),
            },
            _ => {
                return Err(ProxyError::new(
                    ErrorKind::Internal,
                    "no stream for this operation",
                ));
            }
        };
        return Ok(Answer::Stream {
            body: resp.into_body(),
            framing: pool.provider.framing(),
            spec,
            deadline: d.total,
            idle: pool.timeouts.idle,
            record: None,
        });
    }
    let body = upstream::read_body(resp.into_body(), d.total).await?;
    Ok(match p.read {
        Read::Raw(format) => Answer::Raw {
            usage: usage_of(format, &body)?,
            body,
        },
        Read::Decode { wire, json_tool } => {
            let mut response = (dialect::codec(wire).upstream()?.decode)(&body, json_tool)?;
            // Converse names no model in its answer.
            if response.model.is_empty() {
                model.clone_into(&mut response.model);
            }
            Answer::Complete {
                response,
                echo: p.echo,
            }
        }
        Read::GeminiEmbeddings(req) => Answer::Embeddings {
            embeddings: gemini::decode_embeddings(&body, &req, model)?,
            base64: req.base64,
        },
        Read::Tokens(wire) => match &dialect::codec(wire).upstream()?.count_tokens {
            Some(count) => Answer::Tokens((count.read)(&body)?),
            None => Answer::Raw { body, usage: None },
        },
    })
}

/// The usage of a whole answer in `format`; when the request is traced, what its span says
/// of the answer is read in the same pass (and kept for the span).
fn usage_of(format: Format, body: &[u8]) -> Result<Option<crate::llm::Usage>, ProxyError> {
    let usage_of = dialect::codec(format).client()?.usage_of;
    let Some(x) = crate::telemetry::current().filter(crate::telemetry::Exchange::sampled) else {
        return usage_of(body, None);
    };
    let mut d = crate::llm::Described::default();
    let usage = usage_of(body, Some(&mut d))?;
    x.spans(|s| s.answer = Some(d));
    Ok(usage)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A model name is one path segment of the upstream URL whatever the client wrote: it
    /// cannot reach another deployment, model or query of the same upstream.
    #[test]
    fn a_model_name_stays_one_path_segment() {
        let providers = [
            Provider::Azure {
                api_version: "2024-10-21".into(),
            },
            Provider::Gemini {
                api_version: "v1beta".into(),
            },
            Provider::Bedrock {
                region: "us-east-1".into(),
            },
        ];
        for p in &providers {
            for hostile in [
                "../../other/chat/completions?x=",
                "..",
                "a/b#c",
                "m:generate?k",
            ] {
                let url = p
                    .url(
                        "https://up.example/x",
                        Op::Generate,
                        Format::OpenAiChat,
                        hostile,
                        false,
                    )
                    .expect("url");
                let path = url.split_once("://").map_or("", |(_, r)| r);
                assert!(
                    !path.contains("/../") && !path.ends_with("/..") && !path.contains('#'),
                    "{url}"
                );
                assert_eq!(
                    path.matches('?').count(),
                    usize::from(url.contains("api-version")),
                    "{url}"
                );
                assert_eq!(
                    path.matches('/').count(),
                    {
                        let plain = p
                            .url(
                                "https://up.example/x",
                                Op::Generate,
                                Format::OpenAiChat,
                                "m",
                                false,
                            )
                            .expect("url");
                        plain
                            .split_once("://")
                            .map_or("", |(_, r)| r)
                            .matches('/')
                            .count()
                    },
                    "{url}"
                );
            }
        }
        assert_eq!(path_segment("gpt-4o.mini_v2~x"), "gpt-4o.mini_v2~x");
        assert_eq!(path_segment(".."), "%2E%2E");
    }
}
