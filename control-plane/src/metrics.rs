//! Prometheus metrics of the control plane.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub compiles: Counter,
    pub rejected_resources: Gauge,
    pub connected_data_planes: Gauge,
    pub snapshots_sent: Counter,
    /// Deltas sent instead of a full snapshot.
    pub deltas_sent: Counter,
    pub acks: Family<ResultLabels, Counter>,
    /// Config streams by authentication outcome.
    pub stream_auth: Family<ResultLabels, Counter>,
    /// Streams ended because the credentials that opened them expired.
    pub streams_expired: Counter,
    /// Status subresources written by the leader.
    pub status_writes: Counter,
    /// Reconciles that failed (retried with backoff).
    pub reconcile_errors: Counter,
    /// Key Secrets generated for VirtualKeys.
    pub keys_generated: Counter,
    /// Spans of compiles and pushes exported, and lost.
    pub spans: switchyard_otel::QueueCounts,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("switchyard_control_plane");
        let m = Self {
            compiles: Counter::default(),
            rejected_resources: Gauge::default(),
            connected_data_planes: Gauge::default(),
            snapshots_sent: Counter::default(),
            deltas_sent: Counter::default(),
            acks: Family::default(),
            stream_auth: Family::default(),
            streams_expired: Counter::default(),
            status_writes: Counter::default(),
            reconcile_errors: Counter::default(),
            keys_generated: Counter::default(),
            spans: Default::default(),
            registry: Registry::default(),
        };
        registry.register(
            "compiles",
            "Compilations of the resource set",
            m.compiles.clone(),
        );
        registry.register(
            "rejected_resources",
            "Resources left out of the current snapshot",
            m.rejected_resources.clone(),
        );
        registry.register(
            "connected_data_planes",
            "Data planes with an open config stream",
            m.connected_data_planes.clone(),
        );
        registry.register(
            "snapshots_sent",
            "Full snapshots sent to data planes",
            m.snapshots_sent.clone(),
        );
        registry.register(
            "deltas_sent",
            "Deltas sent to data planes instead of a full snapshot",
            m.deltas_sent.clone(),
        );
        registry.register(
            "data_plane_responses",
            "ACKs and NACKs from data planes",
            m.acks.clone(),
        );
        registry.register(
            "config_stream_auth",
            "Config streams by authentication result (ok, missing, bad_token, bad_certificate, node_mismatch, unavailable, ...)",
            m.stream_auth.clone(),
        );
        registry.register(
            "config_streams_expired",
            "Config streams ended because their credentials expired",
            m.streams_expired.clone(),
        );
        registry.register(
            "status_writes",
            "Status subresources written by the leader",
            m.status_writes.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconciles that failed and were retried with backoff",
            m.reconcile_errors.clone(),
        );
        registry.register(
            "keys_generated",
            "Key Secrets generated for VirtualKeys",
            m.keys_generated.clone(),
        );
        registry.register(
            "trace_spans_exported",
            "Spans of compiles and pushes an OTLP collector accepted",
            m.spans.exported.clone(),
        );
        registry.register(
            "trace_spans_dropped",
            "Spans lost: the export queue was full, or the collector did not take them",
            m.spans.dropped.clone(),
        );
        Self { registry, ..m }
    }
}

impl Metrics {
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}
