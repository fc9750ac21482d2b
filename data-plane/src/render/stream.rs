//! Streams to the client, event by event, never buffering more than one upstream event:
//! upstream bytes -> frames (SSE or event-stream) -> either passed through in the client's
//! own format, or decoded into canonical events and rendered in it. A malformed or broken
//! upstream stream, or one that outlives its deadline, ends with an error event in the
//! client's dialect and a metric; usage counted on the way settles the limits when it ends.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::dialect::Flow;
use crate::dialect::codec::{Decoder, Renderer, Sniffer};
use crate::error::{ErrorKind, ProxyError};
use crate::gateway::Gateway;
use crate::health::{InFlight, Verdict};
use crate::llm::{Delta, Event, Usage};
use crate::policy::guard::events::Guarded;
use crate::policy::limits::Permit;
use crate::providers::mock;
use crate::telemetry::metrics::ReasonLabels;
use crate::upstream::Frame;
use crate::upstream::Framer;

/// Where events come from.
#[derive(Debug)]
pub(super) enum Source {
    Upstream {
        body: Incoming,
        framer: Framer,
        deadline: Instant,
        /// Longest silence between two chunks.
        idle: std::time::Duration,
    },
    Mock(Box<mock::Events>),
    /// Events known in advance (a cached answer): one batch.
    Replay(Option<Vec<Event>>),
}

/// What happens to them.
#[derive(Debug)]
pub(super) enum Step {
    Pass(Sniffer),
    Translate {
        decoder: Decoder,
        renderer: Renderer,
        /// Fills the model of formats whose streams do not name it (Bedrock).
        model: String,
    },
    /// Canonical events already (the built-in mock).
    Render(Renderer),
}

struct Driver {
    gw: Arc<Gateway>,
    provider: &'static str,
    /// The client format's error event, for passed-through streams.
    error_event: fn(&ProxyError) -> Bytes,
    source: Source,
    step: Step,
    events: Vec<Event>,
    usage: Option<Usage>,
    /// Bytes of generated text rendered to the client (translated streams).
    delivered: u64,
    finished: bool,
    /// Bytes went to the client (the request's time to first token is taken then).
    sent: bool,
    saw_end: bool,
    /// A guardrail ended the stream.
    blocked: bool,
    settled: bool,
    permit: Option<Permit>,
    /// Counts the stream on its endpoint until it ends.
    in_flight: Option<InFlight>,
    /// The response phase of the request's guardrails, on the canonical events.
    guard: Option<Guarded>,
    /// The request's record, given the usage when the stream ends.
    exchange: Option<crate::telemetry::Exchange>,
    /// The text the client got, when the audit trail records it.
    text: Option<String>,
    /// The answer on its way to the response cache.
    record: Option<Box<crate::cache::Record>>,
}

impl Driver {
    fn fail(&mut self, e: ProxyError, out: &mut Vec<Bytes>) {
        self.finished = true;
        if self.blocked {
            return;
        }
        // Every failure here is the upstream's: it counts against its endpoint.
        if let Some(f) = &mut self.in_flight {
            f.verdict(Verdict::of_failure(e.class, None));
        }
        // An error event the upstream sent was already forwarded by the passthrough.
        let forwarded = matches!(self.step, Step::Pass(_)) && e.kind == ErrorKind::UpstreamStatus;
        let reason = if e.kind == ErrorKind::UpstreamStatus {
            "upstream_error_event"
        } else {
            e.code.unwrap_or(e.kind.metric_label())
        };
        self.gw
            .metrics
            .stream_errors
            .get_or_create(&ReasonLabels { reason })
            .inc();
        tracing::warn!(provider = self.provider, reason, class = e.metric_label(), error = %e.message, "stream ended with an error");
        if forwarded {
            return;
        }
        match &mut self.step {
            Step::Translate { renderer, .. } | Step::Render(renderer) => renderer.error(&e, out),
            Step::Pass(_) => out.push((self.error_event)(&e)),
        }
    }

    fn render(&mut self, out: &mut Vec<Bytes>) {
        if let Some(g) = &mut self.guard
            && !self.events.is_empty()
        {
            let (passed, blocked) = g.events(&self.gw.metrics, std::mem::take(&mut self.events));
            // What passed before a block still goes out, then the error.
            self.events = passed;
            if let Some(e) = blocked {
                self.render_events(out);
                self.block(e, out);
                return;
            }
        }
        self.render_events(out);
    }

    /// A guardrail ended the stream: an error event, and nothing more.
    fn block(&mut self, e: ProxyError, out: &mut Vec<Bytes>) {
        self.finished = true;
        self.blocked = true;
        match &mut self.step {
            Step::Translate { renderer, .. } | Step::Render(renderer) => renderer.error(&e, out),
            Step::Pass(_) => out.push((self.error_event)(&e)),
        }
    }

    fn render_events(&mut self, out: &mut Vec<Bytes>) {
        let (renderer, fallback) = match &mut self.step {
            Step::Translate {
                renderer, model, ..
            } => (renderer, model.as_str()),
            Step::Render(renderer) => (renderer, ""),
            Step::Pass(_) => return,
        };
        for mut ev in self.events.drain(..) {
            match &mut ev {
                Event::Usage(u) => self.usage.get_or_insert_default().merge(*u),
                Event::Start { model, .. } if model.is_empty() => fallback.clone_into(model),
                Event::Delta {
                    delta: Delta::Text(t) | Delta::Thinking(t) | Delta::ToolArgs(t),
                    ..
                } => {
                    self.delivered += t.len() as u64;
                    if let Some(text) = &mut self.text
                        && text.len() <= crate::telemetry::audit::MAX_TEXT
                    {
                        text.push_str(t);
                    }
                }
                _ => {}
            }
            if let Some(r) = &mut self.record {
                r.event(&ev);
            }
            renderer.event(ev, out);
        }
    }

    fn complete(&mut self, out: &mut Vec<Bytes>) {
        self.finished = true;
        if self.blocked {
            return;
        }
        self.saw_end = true;
        if let Some(f) = &mut self.in_flight {
            f.verdict(Verdict::Success);
        }
        if let Some(r) = self.record.take() {
            r.complete();
        }
        if let Step::Translate { renderer, .. } | Step::Render(renderer) = &mut self.step {
            renderer.done(out);
        }
    }

    fn handle(&mut self, f: &Frame, out: &mut Vec<Bytes>) {
        let flow = match &mut self.step {
            Step::Pass(s) => s.frame(f, out),
            Step::Translate { decoder, .. } => decoder.frame(f, &mut self.events),
            Step::Render(_) => Ok(Flow::Continue),
        };
        self.render(out);
        match flow {
            Ok(Flow::Continue) => {}
            Ok(Flow::Done) => self.complete(out),
            Err(e) => self.fail(e, out),
        }
    }

    fn drain(&mut self, out: &mut Vec<Bytes>) {
        while !self.finished {
            let Source::Upstream { framer, .. } = &mut self.source else {
                return;
            };
            match framer.next_frame() {
                Ok(Some(f)) => self.handle(&f, out),
                Ok(None) => break,
                Err(e) => self.fail(crate::dialect::malformed(e), out),
            }
        }
    }

    fn ended(&mut self, out: &mut Vec<Bytes>) {
        if let Source::Upstream { framer, .. } = &mut self.source {
            match framer.finish() {
                Ok(Some(f)) => self.handle(&f, out),
                Ok(None) => {}
                Err(e) => self.fail(crate::dialect::malformed(e), out),
            }
        }
        if !self.finished
            && let Step::Translate { decoder, .. } = &mut self.step
            && decoder.end(&mut self.events) == Flow::Done
        {
            self.render(out);
            self.complete(out);
        }
        if !self.saw_end && !self.finished {
            self.fail(
                ProxyError::new(
                    ErrorKind::UpstreamProtocol,
                    "upstream stream ended before completion",
                )
                .with_code("upstream_disconnect"),
                out,
            );
        }
        self.finished = true;
    }

    async fn next(&mut self) -> Option<Bytes> {
        let mut out = Vec::new();
        while out.is_empty() {
            if self.finished {
                self.settle();
                return None;
            }
            match &mut self.source {
                Source::Mock(events) => match events.next_batch().await {
                    Some(batch) => {
                        self.events.extend(batch);
                        self.render(&mut out);
                    }
                    None => self.complete(&mut out),
                },
                Source::Replay(events) => match events.take() {
                    Some(batch) => {
                        self.events.extend(batch);
                        self.render(&mut out);
                    }
                    None => self.complete(&mut out),
                },
                Source::Upstream {
                    body,
                    deadline,
                    idle,
                    ..
                } => {
                    let silent_at = Instant::now() + *idle;
                    let idle_first = silent_at < *deadline;
                    let idle_for = *idle;
                    match tokio::time::timeout_at(silent_at.min(*deadline), body.frame()).await {
                        Err(_) if idle_first => self.fail(
                            ProxyError::new(
                                ErrorKind::UpstreamTimeout,
                                format!(
                                    "upstream stream sent nothing for {} s",
                                    idle_for.as_secs_f64()
                                ),
                            )
                            .with_code("upstream_idle"),
                            &mut out,
                        ),
                        Err(_) => self.fail(
                            ProxyError::new(
                                ErrorKind::UpstreamTimeout,
                                "upstream stream did not complete in time",
                            ),
                            &mut out,
                        ),
                        Ok(None) => self.ended(&mut out),
                        Ok(Some(Err(e))) => self.fail(
                            ProxyError::new(
                                ErrorKind::UpstreamProtocol,
                                format!("upstream stream broke: {e}"),
                            )
                            .with_code("upstream_disconnect"),
                            &mut out,
                        ),
                        Ok(Some(Ok(frame))) => {
                            if let Ok(data) = frame.into_data()
                                && let Source::Upstream { framer, .. } = &mut self.source
                            {
                                framer.push(&data);
                                self.drain(&mut out);
                            }
                        }
                    }
                }
            }
        }
        if !self.sent {
            self.sent = true;
            if let Some(a) = &self.exchange {
                a.first_token();
            }
        }
        Some(if out.len() == 1 {
            out.swap_remove(0)
        } else {
            Bytes::from(out.concat())
        })
    }

    /// Records usage and settles the limits, once: with the usage the upstream reported if
    /// the stream completed, else with what it used so far.
    fn settle(&mut self) {
        if self.settled {
            return;
        }
        self.settled = true;
        let (reported, delivered) = match &self.step {
            Step::Pass(s) => (s.usage(), s.delivered()),
            _ => (self.usage, self.delivered),
        };
        let usage = match reported {
            Some(u) if self.saw_end => u,
            _ => {
                let estimated_input = self.permit.as_ref().map_or(0, Permit::estimated_input);
                used_so_far(reported, estimated_input, delivered)
            }
        };
        if self.provider != "cache" {
            self.gw.metrics.record_usage(self.provider, usage);
        }
        if let Some(a) = &self.exchange {
            a.usage(&usage);
            if let Some(text) = self.text.take() {
                a.response(text);
            }
            if self.blocked {
                a.ended("guardrail_blocked");
            } else if !self.saw_end {
                a.ended("incomplete");
            }
        }
        if let Some(g) = &self.guard {
            g.record(&self.gw.metrics);
        }
        if let Some(p) = self.permit.take() {
            p.settle(Some(usage));
        }
        self.in_flight = None;
    }
}

/// What a stream that broke off (or never reported usage) used: what the upstream reported
/// so far, the estimated input when it reported none (the prompt was sent), and at least the
/// output that reached the client (four bytes a token), not the reservation for `max_tokens`.
fn used_so_far(reported: Option<Usage>, estimated_input: u64, delivered_bytes: u64) -> Usage {
    let mut u = reported.unwrap_or_default();
    if u.input == 0 {
        u.input = estimated_input;
    }
    u.output = u.output.max(delivered_bytes.div_ceil(4));
    u
}

impl Drop for Driver {
    /// A client that goes away mid-stream still settles what was counted.
    fn drop(&mut self) {
        self.settle();
    }
}

/// The streaming response. It owns what must last as long as the stream: the watchers (the
/// limits permit, the endpoint's in-flight count, the guardrails' response phase, the
/// request's record) and the cache's recording of the answer.
pub(super) fn response(
    gw: Arc<Gateway>,
    provider: &'static str,
    error_event: fn(&ProxyError) -> Bytes,
    source: Source,
    step: Step,
    watchers: super::Watchers,
    record: Option<Box<crate::cache::Record>>,
) -> Response {
    let super::Watchers {
        in_flight,
        permit,
        guard,
        exchange,
    } = watchers;
    let driver = Driver {
        gw,
        provider,
        error_event,
        source,
        step,
        events: Vec::new(),
        usage: None,
        delivered: 0,
        finished: false,
        sent: false,
        saw_end: false,
        blocked: false,
        settled: false,
        permit,
        in_flight,
        guard: guard.map(Guarded::new),
        text: exchange
            .as_ref()
            .filter(|a| a.wants_text())
            .map(|_| String::new()),
        exchange,
        record,
    };
    let stream = futures_util::stream::unfold(driver, |mut d| async move {
        d.next().await.map(|b| (Ok::<_, Infallible>(b), d))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .header("x-accel-buffering", "no")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
