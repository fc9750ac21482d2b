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
use tokio::time::Instant;

use crate::dialect::Flow;
use crate::dialect::codec::{Decoder, Renderer, Sniffer};
use crate::error::{ErrorKind, ProxyError};
use crate::gateway::Gateway;
use crate::llm::observe::{End, Ending, Observer};
use crate::llm::{Delta, Event, Usage};
use crate::policy::limits::Permit;
use crate::providers::mock;
use crate::telemetry::metrics::ReasonLabels;
use crate::upstream::Frame;
use crate::upstream::Framer;

/// Where events come from.
#[derive(Debug)]
pub(super) enum Source {
    Upstream {
        body: crate::upstream::Body,
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
    /// The stream ended (and its observers were told how).
    finished: bool,
    /// Bytes went to the client (the request's time to first token is taken then).
    sent: bool,
    /// What watches the stream: told of every event rendered and of the end.
    observers: super::Observers,
}

impl Driver {
    /// The upstream failed: an error event in the client's format (unless the upstream's
    /// own was passed through), a metric, and the end.
    fn fail(&mut self, e: ProxyError, out: &mut Vec<Bytes>) {
        if self.finished {
            // A guardrail ended it already.
            return;
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
        tracing::warn!(provider = self.provider, reason, class = e.metric_label(), error = %crate::error::chain(&e), "stream ended with an error");
        if !forwarded {
            self.error_out(&e, out);
        }
        // Every failure here is the upstream's: it counts against its endpoint.
        self.finish(Ending::Failed(e.class));
    }

    fn error_out(&mut self, e: &ProxyError, out: &mut Vec<Bytes>) {
        match &mut self.step {
            Step::Translate { renderer, .. } | Step::Render(renderer) => renderer.error(e, out),
            Step::Pass(_) => out.push((self.error_event)(e)),
        }
    }

    fn render(&mut self, out: &mut Vec<Bytes>) {
        if let Some(g) = &mut self.observers.guard
            && !self.events.is_empty()
        {
            let (passed, blocked) = g.events(std::mem::take(&mut self.events));
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
        self.error_out(&e, out);
        self.finish(Ending::Blocked);
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
                } => self.delivered += t.len() as u64,
                _ => {}
            }
            self.observers.on_event(&ev);
            renderer.event(ev, out);
        }
    }

    /// The upstream signalled the end.
    fn complete(&mut self, out: &mut Vec<Bytes>) {
        if self.finished {
            return;
        }
        if let Step::Translate { renderer, .. } | Step::Render(renderer) = &mut self.step {
            renderer.done(out);
        }
        self.finish(Ending::Complete);
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
        if !self.finished {
            self.fail(
                ProxyError::new(
                    ErrorKind::UpstreamProtocol,
                    "upstream stream ended before completion",
                )
                .with_code("upstream_disconnect"),
                out,
            );
        }
    }

    async fn next(&mut self) -> Option<Bytes> {
        let mut out = Vec::new();
        while out.is_empty() {
            if self.finished {
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
                            ProxyError::new(ErrorKind::UpstreamProtocol, "upstream stream broke")
                                .with_code("upstream_disconnect")
                                .with_source(e),
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
            if let Some(t) = &self.observers.transcript {
                t.exchange().first_token();
            }
        }
        Some(if out.len() == 1 {
            out.swap_remove(0)
        } else {
            Bytes::from(out.concat())
        })
    }

    /// The stream ended: what it used (as the upstream reported it if it completed, else
    /// what it used so far) is counted and every observer told, once. The endpoint's count
    /// of requests in flight ends with it.
    fn finish(&mut self, how: Ending) {
        if self.finished {
            return;
        }
        self.finished = true;
        let (reported, delivered) = match &self.step {
            Step::Pass(s) => (s.usage(), s.delivered()),
            _ => (self.usage, self.delivered),
        };
        let usage = match reported {
            Some(u) if how == Ending::Complete => u,
            _ => {
                let permit = self.observers.permit.as_ref();
                used_so_far(
                    reported,
                    permit.map_or(0, Permit::estimated_input),
                    delivered,
                )
            }
        };
        if self.provider != "cache" {
            self.gw.metrics.record_usage(self.provider, usage);
        }
        self.observers.on_end(&End {
            usage: Some(usage),
            how,
        });
        self.observers.in_flight = None;
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
        self.finish(Ending::Abandoned);
    }
}

/// The streaming response. It owns what must last as long as the stream: its observers (the
/// limits permit, the endpoint's in-flight count, the guardrails' response phase, the
/// request's record and the cache's recording of the answer).
pub(super) fn response(
    gw: Arc<Gateway>,
    provider: &'static str,
    error_event: fn(&ProxyError) -> Bytes,
    source: Source,
    step: Step,
    observers: super::Observers,
) -> Response {
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
        observers,
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
