//! Traces of the config flow: one span per published version, from the start of its compile
//! until every data plane connected at the time answered it (or [`WAIT`] passed), with the
//! version, the resource counts, and how many data planes ACKed or NACKed it. Each data
//! plane gets the span's `traceparent` with the version; its own span that applies the
//! version links to this one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use switchyard_otel::opentelemetry::KeyValue;
use switchyard_otel::opentelemetry::trace::SpanKind;
use switchyard_otel::proto::Head;
use switchyard_otel::{self as otel, SpanQueue};

use crate::server::Nodes;

/// How long a push span waits for the data planes' answers.
const WAIT: Duration = Duration::from_secs(10);

/// The push spans in flight, by version.
#[derive(Debug)]
pub struct Pushes {
    queue: SpanQueue,
    nodes: Arc<Nodes>,
    open: Mutex<HashMap<String, Push>>,
    /// The `traceparent` of the last versions pushed: a data plane that connects later
    /// still links its apply span to the push.
    recent: Mutex<std::collections::VecDeque<(String, String)>>,
}

/// Versions whose push context is kept after their span ended.
const KEEP: usize = 8;

#[derive(Debug)]
struct Push {
    trace: otel::Started,
    started: SystemTime,
    compiled: SystemTime,
    attributes: Vec<KeyValue>,
    expected: usize,
    acked: usize,
    nacked: usize,
}

impl Pushes {
    pub fn new(queue: SpanQueue, nodes: Arc<Nodes>) -> Arc<Self> {
        Arc::new(Self {
            queue,
            nodes,
            open: Mutex::default(),
            recent: Mutex::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Push>> {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A version was compiled (its compile started at `started`) and is being pushed.
    pub fn start(self: &Arc<Self>, compiled: &switchyard_crds::Compiled, started: SystemTime) {
        let s = &compiled.snapshot;
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        let attributes = vec![
            KeyValue::new("switchyard.config.version", s.version.clone()),
            KeyValue::new("switchyard.config.pools", count(s.pools.len())),
            KeyValue::new("switchyard.config.routes", count(s.routes.len())),
            KeyValue::new("switchyard.config.keys", count(s.keys.len())),
            KeyValue::new("switchyard.config.guardrails", count(s.guardrails.len())),
            KeyValue::new(
                "switchyard.config.rejected",
                count(compiled.diagnostics.len()),
            ),
        ];
        let push = Push {
            trace: otel::Started {
                trace_id: otel::new_trace_id(),
                span_id: otel::new_span_id(),
                parent: None,
                sampled: true,
            },
            started,
            compiled: SystemTime::now(),
            attributes,
            expected: self.nodes.snapshot().len(),
            acked: 0,
            nacked: 0,
        };
        let version = s.version.clone();
        {
            let tp = otel::traceparent(push.trace.trace_id, push.trace.span_id, true);
            let mut recent = self
                .recent
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            recent.push_back((version.clone(), tp.to_str().unwrap_or_default().to_owned()));
            while recent.len() > KEEP {
                recent.pop_front();
            }
        }
        self.lock().insert(version.clone(), push);
        let this = self.clone();
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + WAIT;
            while tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let done = this
                    .lock()
                    .get(&version)
                    .is_none_or(|p| p.acked + p.nacked >= p.expected);
                if done {
                    break;
                }
            }
            this.finish(&version);
        });
    }

    /// The `traceparent` a data plane gets with `version`.
    pub fn traceparent(&self, version: &str) -> String {
        self.recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .rev()
            .find(|(v, _)| v == version)
            .map(|(_, tp)| tp.clone())
            .unwrap_or_default()
    }

    /// A data plane answered `version`.
    pub fn reply(&self, version: &str, ack: bool) {
        if let Some(p) = self.lock().get_mut(version) {
            if ack {
                p.acked += 1;
            } else {
                p.nacked += 1;
            }
        }
    }

    fn finish(&self, version: &str) {
        let Some(p) = self.lock().remove(version) else {
            return;
        };
        let answered = p.acked + p.nacked;
        let head = Head {
            trace_id: p.trace.trace_id,
            span_id: p.trace.span_id,
            trace_state: "",
            sampled: true,
            parent: None,
            kind: SpanKind::Producer,
            name: &["switchyard.config.push"],
            start: p.started,
            end: SystemTime::now(),
        };
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.queue.span(&head, |s| {
            let a = &mut s.attributes();
            for kv in &p.attributes {
                a.value(kv.key.as_str(), &kv.value);
            }
            a.int("switchyard.config.data_planes", count(p.expected))
                .int("switchyard.config.acked", count(p.acked))
                .int("switchyard.config.nacked", count(p.nacked));
            s.event("switchyard.config.compiled", p.compiled, |_| {});
            if p.nacked > 0 || answered < p.expected {
                s.error("not every data plane applied the version");
            }
        });
    }
}
