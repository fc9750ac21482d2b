//! Prometheus metrics of the data plane. Every label is low-cardinality and static.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Metric, Registry, Unit};

/// Registers metrics and remembers the series names each family is sampled as: a family with
/// no samples yet is not encoded, so `/metrics` alone cannot say what the data plane exports.
#[derive(Debug)]
pub(crate) struct Declaring<'r> {
    pub registry: &'r mut Registry,
    pub prefix: &'static str,
    pub series: &'r mut Vec<String>,
}

impl Declaring<'_> {
    pub(crate) fn register<M: Metric + TypedMetric>(&mut self, name: &str, help: &str, metric: M) {
        self.note::<M>(name, None);
        self.registry.register(name, help, metric);
    }

    pub(crate) fn register_with_unit<M: Metric + TypedMetric>(
        &mut self,
        name: &str,
        help: &str,
        unit: Unit,
        metric: M,
    ) {
        self.note::<M>(name, Some(&unit));
        self.registry.register_with_unit(name, help, unit, metric);
    }

    fn note<M: TypedMetric>(&mut self, name: &str, unit: Option<&Unit>) {
        let mut full = if self.prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{}_{name}", self.prefix)
        };
        if let Some(u) = unit {
            full = format!("{full}_{}", u.as_str());
        }
        let suffixes: &[&str] = match M::TYPE {
            MetricType::Counter => &["_total"],
            MetricType::Histogram => &["_bucket", "_sum", "_count"],
            MetricType::Info => &["_info"],
            _ => &[""],
        };
        self.series
            .extend(suffixes.iter().map(|s| format!("{full}{s}")));
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub endpoint: &'static str,
    pub status: u16,
    pub error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub endpoint: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub provider: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub provider: &'static str,
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    pub scope: &'static str,
    pub limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    pub op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

/// A pool's endpoint. Pools and endpoints come from the config, so their number is bounded
/// by it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    pub pool: String,
    /// The endpoint's index in the pool.
    pub endpoint: String,
}

/// A guardrail's decision (guardrails and detectors come from the config: bounded).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GuardrailLabels {
    pub guardrail: String,
    pub detector: String,
    pub action: &'static str,
}

/// A guardrail webhook call that failed, and why (`timeout`, `connect`, `status`, `invalid`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    pub guardrail: String,
    pub reason: &'static str,
}

/// An audit sink (`file` or `redis`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuditSinkLabels {
    pub sink: &'static str,
}

/// A cache lookup on a route (`hit`, `miss`, `bypass`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    pub route: String,
    pub result: &'static str,
}

/// A pool (bounded by the config).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetryLabels {
    pub class: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabels {
    pub class: &'static str,
}

/// A listener (`api` or `admin`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: &'static str,
}

/// Why a listener closed a connection itself (`refused`, `header_timeout`, `idle_timeout`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerReasonLabels {
    pub listener: &'static str,
    pub reason: &'static str,
}

/// A provider's `tokens` series by direction (input, output, cache_read, cache_write,
/// reasoning); a part's is made when it first occurs.
type TokenSeries = [Option<Counter>; 5];

/// The data plane's metrics and the registry that exposes them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Every series name `/metrics` can hold (`_total`, `_bucket`, ... included).
    pub series: Vec<String>,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Family<EndpointLabels, Histogram>,
    pub upstream_requests: Family<UpstreamLabels, Counter>,
    pub upstream_duration: Family<EndpointLabels, Histogram>,
    pub tokens: Family<TokenLabels, Counter>,
    /// `tokens`' series of each provider seen, resolved once: a request adds to them without
    /// hashing its labels.
    tokens_of: std::sync::RwLock<Vec<(&'static str, TokenSeries)>>,
    pub stream_errors: Family<ReasonLabels, Counter>,
    pub config_updates: Family<ResultLabels, Counter>,
    pub config_keys: Gauge,
    pub config_routes: Gauge,
    /// Resources of the running snapshot left out because they cannot run here.
    pub config_rejected_resources: Gauge,
    pub control_plane_connected: Gauge,
    pub limit_rejections: Family<LimitLabels, Counter>,
    pub budget_alerts: Counter,
    pub limit_store_errors: Family<OpLabels, Counter>,
    pub limit_store_up: Gauge,
    pub limit_fallbacks: Family<ResultLabels, Counter>,
    pub limit_pending_settlements: Gauge,
    pub limit_check_duration: Histogram,
    pub limit_leased: Counter,
    pub limit_leases: Gauge,
    pub fleet_size: Gauge,
    pub backend_requests: Family<BackendLabels, Counter>,
    pub endpoint_ejections: Family<BackendLabels, Counter>,
    pub endpoint_returns: Family<BackendLabels, Counter>,
    pub health_check_failures: Family<BackendLabels, Counter>,
    pub guardrail_decisions: Family<GuardrailLabels, Counter>,
    pub guardrail_webhook_failures: Family<WebhookLabels, Counter>,
    pub audit_records: Family<AuditSinkLabels, Counter>,
    pub audit_sink_errors: Family<AuditSinkLabels, Counter>,
    pub audit_dropped: Counter,
    pub access_log_dropped: Counter,
    /// Spans the OTLP exporter sent, and those lost (queue full, or export failed).
    pub spans: switchyard_otel::QueueCounts,
    /// The GenAI metrics (their own registry: the conventions' names have no prefix).
    pub genai: super::genai::Prom,
    pub cache_lookups: Family<CacheLabels, Counter>,
    pub cache_errors: Family<OpLabels, Counter>,
    pub cache_fills: Counter,
    pub cache_coalesced: Counter,
    pub cache_tokens_saved: Counter,
    /// US dollars not spent because the cache answered (priced at the route's first backend).
    pub cache_cost_saved: Counter<f64, std::sync::atomic::AtomicU64>,
    /// Cosine similarity of the nearest stored request on each semantic search.
    pub cache_similarity: Histogram,
    pub cache_embedding_duration: Histogram,
    pub cache_embedded_bytes: Counter,
    pub pool_saturations: Family<PoolLabels, Counter>,
    pub retries: Family<RetryLabels, Counter>,
    pub fallbacks: Family<ClassLabels, Counter>,
    pub upstream_connections_opened: Counter,
    pub upstream_connections_open: Gauge,
    pub connections_accepted: Family<ListenerLabels, Counter>,
    pub connections_open: Family<ListenerLabels, Gauge>,
    pub connections_closed: Family<ListenerReasonLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// The registry, spend not labelled by key.
    pub fn new() -> Self {
        Self::with_key_label_cap(None)
    }

    /// The registry; spend labelled by key too when `key_label_cap` names how many distinct
    /// keys at most (`--metrics-key-label-limit`).
    pub fn with_key_label_cap(key_label_cap: Option<usize>) -> Self {
        let mut registry = Registry::with_prefix("switchyard");
        let mut series = Vec::new();
        let mut reg = Declaring {
            registry: &mut registry,
            prefix: "switchyard",
            series: &mut series,
        };
        let hist = || Histogram::new(exponential_buckets(0.000_05, 2.0, 20));
        let requests = Family::<RequestLabels, Counter>::default();
        let request_duration = Family::<EndpointLabels, Histogram>::new_with_constructor(hist);
        let upstream_requests = Family::<UpstreamLabels, Counter>::default();
        let upstream_duration = Family::<EndpointLabels, Histogram>::new_with_constructor(hist);
        let tokens = Family::<TokenLabels, Counter>::default();
        let stream_errors = Family::<ReasonLabels, Counter>::default();
        let config_updates = Family::<ResultLabels, Counter>::default();
        let config_keys = Gauge::default();
        let config_routes = Gauge::default();
        let config_rejected_resources = Gauge::default();
        let control_plane_connected = Gauge::default();
        reg.register(
            "requests",
            "Client requests by endpoint, status and error",
            requests.clone(),
        );
        reg.register(
            "request_duration_seconds",
            "Time to the response head (streams: to the first byte)",
            request_duration.clone(),
        );
        reg.register(
            "upstream_requests",
            "Upstream attempts by provider and outcome",
            upstream_requests.clone(),
        );
        reg.register(
            "upstream_duration_seconds",
            "Upstream time to the response head, by provider",
            upstream_duration.clone(),
        );
        reg.register(
            "tokens",
            "Tokens by provider and direction: input and output (all tokens), cache_read, cache_write and reasoning (parts of them)",
            tokens.clone(),
        );
        reg.register(
            "stream_errors",
            "Streams ended early, by reason",
            stream_errors.clone(),
        );
        reg.register(
            "config_updates",
            "Config snapshots applied (result=applied), or applied without resources that cannot run here (result=partial)",
            config_updates.clone(),
        );
        reg.register(
            "config_virtual_keys",
            "Virtual keys in the running config",
            config_keys.clone(),
        );
        reg.register(
            "config_routes",
            "Routes in the running config",
            config_routes.clone(),
        );
        reg.register(
            "config_rejected_resources",
            "Resources of the running snapshot left out because they cannot run on this data plane",
            config_rejected_resources.clone(),
        );
        reg.register(
            "control_plane_connected",
            "1 while the config stream to the control plane is up",
            control_plane_connected.clone(),
        );
        let limit_rejections = Family::<LimitLabels, Counter>::default();
        let budget_alerts = Counter::default();
        let limit_store_errors = Family::<OpLabels, Counter>::default();
        let limit_store_up = Gauge::default();
        let limit_fallbacks = Family::<ResultLabels, Counter>::default();
        let limit_pending_settlements = Gauge::default();
        let limit_check_duration = hist();
        let limit_leased = Counter::default();
        let limit_leases = Gauge::default();
        let fleet_size = Gauge::default();
        reg.register(
            "limit_rejections",
            "Requests rejected by a rate limit or budget, by scope (key, key_model, route) and limit",
            limit_rejections.clone(),
        );
        reg.register(
            "budget_alerts",
            "Requests served over an Alert budget",
            budget_alerts.clone(),
        );
        reg.register(
            "limit_store_errors",
            "Limit store (Redis) operations that failed or timed out, by operation",
            limit_store_errors.clone(),
        );
        reg.register(
            "limit_store_up",
            "1 while the shared limit store (Redis) answers; always 1 for the in-memory store",
            limit_store_up.clone(),
        );
        reg.register(
            "limit_fallbacks",
            "Requests decided without the shared store: local (fail open) or rejected (fail closed)",
            limit_fallbacks.clone(),
        );
        reg.register(
            "limit_pending_settlements",
            "Settlements waiting for Redis to come back",
            limit_pending_settlements.clone(),
        );
        reg.register(
            "limit_check_duration_seconds",
            "Time of one admission check against the limit store",
            limit_check_duration.clone(),
        );
        reg.register(
            "limit_leased",
            "Requests admitted on this proxy's quota leases alone, without a limit-store round trip",
            limit_leased.clone(),
        );
        reg.register(
            "limit_leases",
            "Quota leases this proxy holds (slices of shared limits and budgets it spends locally)",
            limit_leases.clone(),
        );
        reg.register(
            "fleet_size",
            "Data planes seen in the shared store's fleet set (divides limits when failing open)",
            fleet_size.clone(),
        );
        let backend_requests = Family::<BackendLabels, Counter>::default();
        let endpoint_ejections = Family::<BackendLabels, Counter>::default();
        let endpoint_returns = Family::<BackendLabels, Counter>::default();
        let health_check_failures = Family::<BackendLabels, Counter>::default();
        let guardrail_decisions = Family::<GuardrailLabels, Counter>::default();
        let guardrail_webhook_failures = Family::<WebhookLabels, Counter>::default();
        let pool_saturations = Family::<PoolLabels, Counter>::default();
        let audit_records = Family::<AuditSinkLabels, Counter>::default();
        let audit_sink_errors = Family::<AuditSinkLabels, Counter>::default();
        let audit_dropped = Counter::default();
        let access_log_dropped = Counter::default();
        reg.register(
            "access_log_dropped",
            "Access log lines dropped because the writer fell behind",
            access_log_dropped.clone(),
        );
        let spans = switchyard_otel::QueueCounts::default();
        reg.register(
            "trace_spans_exported",
            "Spans an OTLP collector accepted",
            spans.exported.clone(),
        );
        reg.register(
            "trace_spans_dropped",
            "Spans lost: the export queue was full, or the collector did not take them",
            spans.dropped.clone(),
        );
        let cache_lookups = Family::<CacheLabels, Counter>::default();
        let cache_errors = Family::<OpLabels, Counter>::default();
        let cache_fills = Counter::default();
        let cache_coalesced = Counter::default();
        let cache_tokens_saved = Counter::default();
        let cache_cost_saved = Counter::<f64, std::sync::atomic::AtomicU64>::default();
        let cache_similarity = Histogram::new([
            0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.88, 0.9, 0.92, 0.94, 0.96, 0.98, 0.99, 1.0,
        ]);
        let cache_embedding_duration = Histogram::new(exponential_buckets(0.000_5, 2.0, 14));
        let cache_embedded_bytes = Counter::default();
        reg.register(
            "cache_cost_saved_usd",
            "US dollars not spent upstream because the cache answered (at the route's first backend's prices)",
            cache_cost_saved.clone(),
        );
        reg.register(
            "cache_similarity",
            "Cosine similarity of the nearest stored request on each semantic cache search",
            cache_similarity.clone(),
        );
        reg.register_with_unit(
            "cache_embedding_duration",
            "Time to embed a request's text for the semantic cache",
            prometheus_client::registry::Unit::Seconds,
            cache_embedding_duration.clone(),
        );
        reg.register_with_unit(
            "cache_embedded",
            "Text embedded for the semantic cache",
            prometheus_client::registry::Unit::Bytes,
            cache_embedded_bytes.clone(),
        );
        reg.register(
            "cache_lookups",
            "Response cache lookups by route and result (hit, semantic_hit, miss, bypass)",
            cache_lookups.clone(),
        );
        reg.register(
            "cache_errors",
            "Response cache steps that failed (get, put, search: Redis did not answer; embed: the model did not); the cache was bypassed",
            cache_errors.clone(),
        );
        reg.register(
            "cache_fills",
            "Answers stored in the response cache",
            cache_fills.clone(),
        );
        reg.register(
            "cache_coalesced",
            "Requests that waited for an identical request's upstream call on a cached route instead of making their own",
            cache_coalesced.clone(),
        );
        reg.register(
            "cache_tokens_saved",
            "Upstream tokens (input and output) not spent because the cache answered",
            cache_tokens_saved.clone(),
        );
        reg.register(
            "audit_records",
            "Audit records written, by sink (file, redis)",
            audit_records.clone(),
        );
        reg.register(
            "audit_sink_errors",
            "Failed writes to an audit sink (its records are held and retried)",
            audit_sink_errors.clone(),
        );
        reg.register(
            "audit_dropped",
            "Audit records dropped because the queue or a failing sink's buffer was full",
            audit_dropped.clone(),
        );
        let retries = Family::<RetryLabels, Counter>::default();
        let fallbacks = Family::<ClassLabels, Counter>::default();
        reg.register(
            "backend_requests",
            "Upstream attempts by pool and endpoint index (what the balancers chose)",
            backend_requests.clone(),
        );
        reg.register(
            "endpoint_ejections",
            "Endpoints taken out of rotation (outlier detection or failing health checks)",
            endpoint_ejections.clone(),
        );
        reg.register(
            "endpoint_returns",
            "Endpoints returned to rotation (a successful probe, or passing health checks)",
            endpoint_returns.clone(),
        );
        reg.register(
            "health_check_failures",
            "Active health checks an endpoint failed",
            health_check_failures.clone(),
        );
        reg.register(
            "guardrail_decisions",
            "Guardrail findings by guardrail, detector and action (Block, Redact, Mask, Alert)",
            guardrail_decisions.clone(),
        );
        reg.register(
            "guardrail_webhook_failures",
            "Guardrail webhook calls that gave no usable answer, by reason (timeout, connect, status, invalid)",
            guardrail_webhook_failures.clone(),
        );
        reg.register(
            "pool_saturations",
            "Attempts refused because every endpoint of the pool was at its connection cap",
            pool_saturations.clone(),
        );
        reg.register(
            "retries",
            "Failed attempts retried (result=retried) or not for lack of retry budget (result=budget_exhausted), by failure class",
            retries.clone(),
        );
        reg.register(
            "fallbacks",
            "Fallback groups entered, by the failure class that led there",
            fallbacks.clone(),
        );
        let upstream_connections_opened = Counter::default();
        let upstream_connections_open = Gauge::default();
        reg.register(
            "upstream_connections_opened",
            "Connections opened to upstreams (a keep-alive pool reuses them; a climbing rate means it cannot)",
            upstream_connections_opened.clone(),
        );
        reg.register(
            "upstream_connections_open",
            "Connections to upstreams open now, in use or idle in the pool",
            upstream_connections_open.clone(),
        );
        let connections_accepted = Family::<ListenerLabels, Counter>::default();
        let connections_open = Family::<ListenerLabels, Gauge>::default();
        let connections_closed = Family::<ListenerReasonLabels, Counter>::default();
        reg.register(
            "connections_accepted",
            "Client connections taken from the listen queue, by listener (refused ones included)",
            connections_accepted.clone(),
        );
        reg.register(
            "connections_open",
            "Client connections open now, by listener",
            connections_open.clone(),
        );
        reg.register(
            "connections_closed",
            "Client connections the gateway closed itself, by reason: refused (beyond --max-connections), peer_limit, header_timeout, idle_timeout, write_timeout",
            connections_closed.clone(),
        );
        let genai = super::genai::Prom::new(&mut series, key_label_cap);
        Self {
            series,
            registry,
            connections_accepted,
            connections_open,
            connections_closed,
            upstream_connections_opened,
            upstream_connections_open,
            backend_requests,
            endpoint_ejections,
            endpoint_returns,
            health_check_failures,
            guardrail_decisions,
            guardrail_webhook_failures,
            audit_records,
            audit_sink_errors,
            audit_dropped,
            access_log_dropped,
            spans,
            genai,
            cache_lookups,
            cache_errors,
            cache_fills,
            cache_coalesced,
            cache_tokens_saved,
            cache_cost_saved,
            cache_similarity,
            cache_embedding_duration,
            cache_embedded_bytes,
            pool_saturations,
            retries,
            fallbacks,
            limit_rejections,
            budget_alerts,
            limit_store_errors,
            limit_store_up,
            limit_fallbacks,
            limit_pending_settlements,
            limit_check_duration,
            limit_leased,
            limit_leases,
            fleet_size,
            requests,
            request_duration,
            upstream_requests,
            upstream_duration,
            tokens,
            tokens_of: std::sync::RwLock::default(),
            stream_errors,
            config_updates,
            config_keys,
            config_routes,
            config_rejected_resources,
            control_plane_connected,
        }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        use prometheus_client::encoding::text;
        let encoded = text::encode_registry(&mut out, &self.registry)
            .and_then(|()| text::encode_registry(&mut out, &self.genai.registry))
            .and_then(|()| text::encode_eof(&mut out));
        if let Err(e) = encoded {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }

    /// Tokens by provider: input (all), output (all), and the cache and reasoning parts.
    pub fn record_usage(&self, provider: &'static str, usage: crate::llm::Usage) {
        const DIRECTIONS: [&str; 5] = ["input", "output", "cache_read", "cache_write", "reasoning"];
        let counts = [
            usage.input,
            usage.output,
            usage.cache_read,
            usage.cache_write,
            usage.reasoning,
        ];
        // Input and output always have a series; the parts only once they occur.
        let needed = |i: usize| i < 2 || counts[i] > 0;
        {
            let seen = self
                .tokens_of
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some((_, counters)) = seen.iter().find(|(p, _)| *p == provider)
                && (0..5).all(|i| !needed(i) || counters[i].is_some())
            {
                for (i, c) in counters.iter().enumerate() {
                    if let Some(c) = c.as_ref().filter(|_| needed(i)) {
                        c.inc_by(counts[i]);
                    }
                }
                return;
            }
        }
        let mut seen = self
            .tokens_of
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let at = match seen.iter().position(|(p, _)| *p == provider) {
            Some(at) => at,
            None => {
                seen.push((provider, Default::default()));
                seen.len() - 1
            }
        };
        for (i, c) in seen[at].1.iter_mut().enumerate() {
            if needed(i) {
                c.get_or_insert_with(|| {
                    self.tokens
                        .get_or_create(&TokenLabels {
                            provider,
                            direction: DIRECTIONS[i],
                        })
                        .clone()
                })
                .inc_by(counts[i]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tokens add up per provider and direction through the resolved series; a part (cache
    /// reads, writes, reasoning) gets a series only once it occurs.
    #[test]
    fn usage_adds_up_by_provider_and_direction() {
        let m = Metrics::new();
        let line = |provider: &str, direction: &str| {
            let text = m.encode();
            let head = format!(
                "switchyard_tokens_total{{provider=\"{provider}\",direction=\"{direction}\"}} "
            );
            text.lines()
                .find_map(|l| l.strip_prefix(&head).map(str::to_owned))
        };
        m.record_usage("openai", crate::llm::Usage::new(10, 5));
        m.record_usage("openai", crate::llm::Usage::new(1, 2));
        assert_eq!(line("openai", "input").as_deref(), Some("11"));
        assert_eq!(line("openai", "output").as_deref(), Some("7"));
        assert_eq!(
            line("openai", "cache_read"),
            None,
            "no part before it occurs"
        );
        let mut with_cache = crate::llm::Usage::new(3, 1);
        with_cache.cache_read = 2;
        m.record_usage("openai", with_cache);
        m.record_usage("anthropic", crate::llm::Usage::new(4, 4));
        assert_eq!(line("openai", "cache_read").as_deref(), Some("2"));
        assert_eq!(line("openai", "input").as_deref(), Some("14"));
        assert_eq!(line("anthropic", "input").as_deref(), Some("4"));
        assert_eq!(line("anthropic", "cache_read"), None);
    }

    #[test]
    fn every_dashboard_query_names_a_metric_the_data_plane_exports() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../charts/switchyard/dashboards/switchyard.json"
        );
        let dash: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).expect("the dashboard"))
                .expect("dashboard JSON");
        let m = Metrics::new();
        let exported = |name: &str| m.series.iter().any(|s| s == name);
        // A series selector: a name followed by its labels or a range.
        let selector = regex::Regex::new(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*[\{\[]").expect("regex");
        let mut checked = 0;
        for panel in dash["panels"].as_array().expect("panels") {
            for target in panel["targets"].as_array().expect("targets") {
                let expr = target["expr"].as_str().expect("expr");
                let names: Vec<&str> = selector
                    .captures_iter(expr)
                    .filter_map(|c| c.get(1))
                    .map(|m| m.as_str())
                    .collect();
                assert!(!names.is_empty(), "no metric in {expr}");
                for n in names {
                    assert!(
                        exported(n),
                        "panel {:?} queries {n}, which the data plane does not export",
                        panel["title"]
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked >= 14, "{checked} series checked");
        // The check itself can fail.
        assert!(!exported("switchyard_no_such_metric_total"));
        assert!(!exported("gen_ai_server_request_duration_seconds_total"));
        assert!(exported("switchyard_requests_total"));
    }

    #[test]
    fn declared_series_are_the_ones_encoded() {
        let m = Metrics::new();
        m.requests
            .get_or_create(&RequestLabels {
                endpoint: "chat_completions",
                status: 200,
                error: "",
            })
            .inc();
        m.genai
            .duration
            .get_or_create(&super::super::genai::DurationLabels {
                model: super::super::genai::ModelLabels {
                    gen_ai_operation_name: "chat",
                    gen_ai_provider_name: "openai",
                    gen_ai_request_model: "m".into(),
                },
                error_type: "",
            })
            .observe(0.1);
        let text = m.encode();
        for series in [
            "switchyard_requests_total",
            "gen_ai_server_request_duration_seconds_bucket",
            "gen_ai_server_request_duration_seconds_count",
        ] {
            assert!(
                m.series.iter().any(|s| s == series),
                "{series} not declared"
            );
            assert!(
                text.contains(&format!("\n{series}{{")),
                "{series} not encoded:\n{text}"
            );
        }
    }
}
