//! The last step of the pipeline: render the answer once, in the caller's format, record its
//! usage, and settle the rate-limit permit (for streams, when the stream ends).

use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderValue, header};

mod stream;

use crate::cache::Record;
use crate::dialect::codec::Renderer;
use crate::dialect::{codec, embeddings, responses};
use crate::error::{ErrorKind, ProxyError};
use crate::gateway::Gateway;
use crate::health::InFlight;
use crate::llm::Event;
use crate::llm::observe::{End, Ending, Observer};
use crate::llm::{Facts, Format, Response as Answer_, Usage};
use crate::policy::guard::enforce::{Decisions, ResponsePhase};
use crate::policy::guard::events::Guarded;
use crate::policy::limits::{Permit, RateHeaders};
use crate::providers::{Answer, StreamSpec};
use crate::telemetry::metrics::Metrics;
use crate::telemetry::{Exchange, Transcript};
use crate::upstream::Framer;
use stream::{Source, Step};

fn json(body: Bytes) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// A canonical answer in a front door's format.
pub(crate) fn render(
    format: Format,
    r: &Answer_,
    echo: Option<&responses::Echo>,
) -> Result<Bytes, ProxyError> {
    (codec(format).generation()?.render)(r, echo)
}

/// The stream renderer of a front door's format.
fn renderer(
    format: Format,
    facts: &Facts,
    echo: Option<Box<responses::Echo>>,
) -> Result<Renderer, ProxyError> {
    Ok((codec(format).generation()?.renderer)(facts, echo))
}

/// What the pipeline hands the renderer to watch an answer: the endpoint's count of requests
/// in flight (and its health verdict), the limits permit, the guardrails' response phase and
/// the request's record.
#[derive(Debug, Default)]
pub(crate) struct Watchers {
    pub(crate) in_flight: Option<InFlight>,
    pub(crate) permit: Option<Permit>,
    pub(crate) guard: Option<ResponsePhase>,
    pub(crate) exchange: Option<Exchange>,
}

/// Everything that watches an answer, told of each event a stream renders and, once, of
/// the end. A whole answer ends at once; a stream keeps them until its end.
#[derive(Debug, Default)]
struct Observers {
    in_flight: Option<InFlight>,
    permit: Option<Permit>,
    /// The guardrails' response phase on a stream (a whole answer's runs on its body);
    /// boxed: most streams have none, and the observers move with every stream.
    guard: Option<Box<Guarded>>,
    transcript: Option<Transcript>,
    /// The cache's recording of a streamed miss.
    record: Option<Box<Record>>,
}

impl Observer for Observers {
    fn on_event(&mut self, ev: &Event) {
        self.transcript.on_event(ev);
        self.record.on_event(ev);
    }

    fn on_end(&mut self, end: &End) {
        self.transcript.on_end(end);
        self.guard.on_end(end);
        self.record.on_end(end);
        self.permit.on_end(end);
        self.in_flight.on_end(end);
    }
}

impl Observers {
    /// A whole answer: what it used is counted for its provider and everything watching it
    /// is settled at once (before the response phase's webhook, which the upstream's
    /// endpoint does not wait for).
    fn whole(
        mut self,
        metrics: &Metrics,
        provider: &'static str,
        exchange: Option<&Exchange>,
        usage: Option<Usage>,
    ) {
        self.transcript = exchange.cloned().map(Transcript::whole);
        if let Some(u) = usage {
            metrics.record_usage(provider, u);
        }
        self.on_end(&End {
            usage,
            how: Ending::Complete,
        });
    }

    /// A stream: the guardrails watch its events, the record gathers its text, the cache
    /// records it, all until it ends.
    fn streaming(
        mut self,
        metrics: &Arc<Metrics>,
        guard: Option<ResponsePhase>,
        exchange: Option<Exchange>,
        record: Option<Box<Record>>,
    ) -> Self {
        self.guard = guard.map(|g| Box::new(Guarded::new(g, metrics.clone())));
        self.transcript = exchange.map(Transcript::stream);
        self.record = record;
        self
    }
}

/// Renders what the provider step produced, through the response phase of the request's
/// guardrails (what they did goes to `decisions`), settling the watchers.
pub(crate) async fn respond(
    gw: &Arc<Gateway>,
    provider: &'static str,
    format: Format,
    facts: &Facts,
    answer: Answer,
    w: Watchers,
    decisions: &mut Decisions,
) -> Result<Response, ProxyError> {
    let client = codec(format).client()?;
    let Watchers {
        in_flight,
        permit,
        guard,
        exchange,
    } = w;
    let wants_text = exchange.as_ref().is_some_and(Exchange::wants_text);
    let guarded = async |body: Bytes, decisions: &mut Decisions| -> Result<Bytes, ProxyError> {
        let body = match &guard {
            Some(g) => g.answer(gw.webhooks(), body, decisions).await?,
            None => body,
        };
        if let Some(a) = exchange.as_ref().filter(|a| a.sampled()) {
            // An upstream's answer passed through was read with its usage; a rendered or
            // cached one is read here, as the client gets it.
            a.spans(|s| {
                if s.answer.is_none() {
                    let mut d = crate::llm::Described::default();
                    if (client.usage_of)(&body, Some(&mut d)).is_ok() {
                        s.answer = Some(d);
                    }
                }
            });
        }
        if wants_text
            && let Some(a) = &exchange
            && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body)
        {
            // As the client gets it: after the response phase.
            a.response(crate::policy::guard::schema::answer_text(format, &v).unwrap_or_default());
        }
        Ok(body)
    };
    let rate = permit
        .as_ref()
        .map(|p| p.headers.clone())
        .filter(|h| !h.is_empty());
    let observers = Observers {
        in_flight,
        permit,
        ..Observers::default()
    };
    let metrics = &*gw.metrics;
    let mut resp = match answer {
        Answer::Raw { body, usage } => {
            observers.whole(metrics, provider, exchange.as_ref(), usage);
            json(guarded(body, decisions).await?)
        }
        Answer::Complete { response, echo } => {
            let body = render(format, &response, echo.as_deref());
            observers.whole(metrics, provider, exchange.as_ref(), Some(response.usage));
            json(guarded(body?, decisions).await?)
        }
        Answer::Embeddings {
            embeddings: e,
            base64,
        } => {
            observers.whole(metrics, provider, exchange.as_ref(), Some(e.usage));
            json(embeddings::render(&e, base64)?)
        }
        Answer::Tokens(n) => {
            observers.whole(metrics, provider, exchange.as_ref(), Some(Usage::default()));
            json(crate::llm::to_bytes(
                &serde_json::json!({"input_tokens": n}),
            )?)
        }
        Answer::Stream {
            body,
            framing,
            spec,
            deadline,
            idle,
            mut record,
        } => {
            let same_format_decoder = match spec {
                StreamSpec::Pass if guard.is_some() || wants_text || record.is_some() => {
                    codec(format).upstream.as_ref().map(|u| (u.decoder)(false))
                }
                _ => None,
            };
            if same_format_decoder.is_none() {
                // Not stored: the events of this API's streams are not decoded.
                record = None;
            }
            let step = match spec {
                // Guardrails, the audit trail and the cache read the answer: same-format
                // streams are decoded and rendered again in that format.
                StreamSpec::Pass if guard.is_some() || wants_text || record.is_some() => {
                    Step::Translate {
                        decoder: same_format_decoder.ok_or_else(|| {
                            ProxyError::new(
                                ErrorKind::Unsupported,
                                "response guardrails do not run on streams of this API yet; ask without `stream`",
                            )
                        })?,
                        renderer: renderer(format, facts, None)?,
                        model: String::new(),
                    }
                }
                StreamSpec::Pass => Step::Pass((client.sniffer)(facts)),
                StreamSpec::Translate {
                    wire,
                    json_tool,
                    echo,
                    model,
                } => Step::Translate {
                    decoder: (codec(wire).upstream()?.decoder)(json_tool),
                    renderer: renderer(format, facts, echo)?,
                    model,
                },
            };
            stream::response(
                gw.clone(),
                provider,
                client.error_event,
                Source::Upstream {
                    body,
                    framer: Framer::new(framing),
                    deadline,
                    idle,
                },
                step,
                observers.streaming(&gw.metrics, guard, exchange, record),
            )
        }
        Answer::Replay(events) => stream::response(
            gw.clone(),
            provider,
            client.error_event,
            Source::Replay(Some(events)),
            Step::Render(renderer(format, facts, None)?),
            observers.streaming(&gw.metrics, guard, exchange, None),
        ),
        Answer::MockStream { events, echo } => stream::response(
            gw.clone(),
            provider,
            client.error_event,
            Source::Mock(Box::new(events)),
            Step::Render(renderer(format, facts, echo)?),
            observers.streaming(&gw.metrics, guard, exchange, None),
        ),
    };
    if let Some(h) = rate {
        apply(&h, &mut resp);
    }
    Ok(resp)
}

fn apply(h: &RateHeaders, resp: &mut Response) {
    h.apply(resp.headers_mut());
}
