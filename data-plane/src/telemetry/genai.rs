//! The GenAI metrics of the OpenTelemetry conventions, recorded once per finished exchange:
//! token usage by type, request duration, time to first token and time per output token,
//! and spend by route, model and (opt-in, capped) key. Prometheus serves them on `/metrics`
//! (names in `_`, with unit suffixes); with an OTLP endpoint the same values go out as OTLP
//! metrics under their dotted names.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use switchyard_otel::opentelemetry::KeyValue;
use switchyard_otel::opentelemetry::metrics::{
    Counter as OtelCounter, Histogram as OtelHistogram, Meter,
};

use super::metrics::Metrics;
use super::{Done, semconv as sc};

/// What every GenAI metric is labelled by.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    pub gen_ai_operation_name: &'static str,
    pub gen_ai_provider_name: &'static str,
    pub gen_ai_request_model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DurationLabels {
    #[prometheus(flatten)]
    pub model: ModelLabels,
    /// The failure (empty on success).
    pub error_type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    #[prometheus(flatten)]
    pub model: ModelLabels,
    pub gen_ai_token_type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CostLabels {
    pub route: String,
    pub model: String,
    /// Empty unless `--metrics-key-label`; `_other` beyond its cap.
    pub key: String,
}

/// The Prometheus side, in its own registry (the conventions' names carry no `switchyard_`
/// prefix).
#[derive(Debug)]
pub struct Prom {
    pub registry: Registry,
    pub token_usage: Family<TokenLabels, Histogram>,
    pub duration: Family<DurationLabels, Histogram>,
    pub ttft: Family<ModelLabels, Histogram>,
    pub tpot: Family<ModelLabels, Histogram>,
    pub cost: Family<CostLabels, Counter<f64, AtomicU64>>,
    keys: KeyLabel,
}

/// The opt-in key label of the spend metric, with the most distinct keys it names.
#[derive(Debug)]
struct KeyLabel {
    cap: Option<usize>,
    seen: Mutex<HashSet<String>>,
}

/// The label value a key gets: itself while fewer than the cap were seen, else `_other`.
const OTHER_KEYS: &str = "_other";

impl KeyLabel {
    fn of(&self, key: &str) -> String {
        let Some(cap) = self.cap else {
            return String::new();
        };
        if key.is_empty() {
            return String::new();
        }
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.contains(key) {
            return key.to_owned();
        }
        if seen.len() < cap {
            seen.insert(key.to_owned());
            return key.to_owned();
        }
        OTHER_KEYS.to_owned()
    }
}

impl Prom {
    /// The families, their series names noted in `series`; spend labelled by key too when
    /// `key_label_cap` names how many distinct keys at most (the rest are `_other`).
    pub fn new(series: &mut Vec<String>, key_label_cap: Option<usize>) -> Self {
        let mut registry = Registry::default();
        let mut reg = super::metrics::Declaring {
            registry: &mut registry,
            prefix: "",
            series,
        };
        let token_usage = Family::<TokenLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(sc::TOKEN_BUCKETS)
        });
        let duration = Family::<DurationLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(sc::DURATION_BUCKETS)
        });
        let ttft = Family::<ModelLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(sc::TTFT_BUCKETS)
        });
        let tpot = Family::<ModelLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(sc::TPOT_BUCKETS)
        });
        let cost = Family::<CostLabels, Counter<f64, AtomicU64>>::default();
        reg.register(
            "gen_ai_client_token_usage",
            "Tokens per model call, by gen_ai_token_type (input, output)",
            token_usage.clone(),
        );
        reg.register_with_unit(
            "gen_ai_server_request_duration",
            "Time from a model call's arrival to the end of its answer (streams: the last event)",
            Unit::Seconds,
            duration.clone(),
        );
        reg.register_with_unit(
            "gen_ai_server_time_to_first_token",
            "Time from a streamed model call's arrival to its first bytes out",
            Unit::Seconds,
            ttft.clone(),
        );
        reg.register_with_unit(
            "gen_ai_server_time_per_output_token",
            "Time per output token after the first, of streamed answers",
            Unit::Seconds,
            tpot.clone(),
        );
        reg.register(
            "switchyard_cost_usd",
            "Spend in US dollars at the configured prices, by route, model and (opt-in) key",
            cost.clone(),
        );
        Self {
            registry,
            token_usage,
            duration,
            ttft,
            tpot,
            cost,
            keys: KeyLabel {
                cap: key_label_cap,
                seen: Mutex::default(),
            },
        }
    }
}

/// The OTLP side: the same values under the conventions' dotted names.
#[derive(Debug)]
pub(crate) struct Otlp {
    token_usage: OtelHistogram<u64>,
    duration: OtelHistogram<f64>,
    ttft: OtelHistogram<f64>,
    tpot: OtelHistogram<f64>,
    cost: OtelCounter<f64>,
    provider: switchyard_otel::opentelemetry_sdk::metrics::SdkMeterProvider,
}

impl Otlp {
    pub(crate) fn new(
        meter: &Meter,
        provider: switchyard_otel::opentelemetry_sdk::metrics::SdkMeterProvider,
    ) -> Self {
        Self {
            provider,
            token_usage: meter
                .u64_histogram(sc::METRIC_TOKEN_USAGE)
                .with_unit("{token}")
                .with_description("Tokens per model call")
                .with_boundaries(sc::TOKEN_BUCKETS.to_vec())
                .build(),
            duration: meter
                .f64_histogram(sc::METRIC_REQUEST_DURATION)
                .with_unit("s")
                .with_description("Model call duration")
                .with_boundaries(sc::DURATION_BUCKETS.to_vec())
                .build(),
            ttft: meter
                .f64_histogram(sc::METRIC_TIME_TO_FIRST_TOKEN)
                .with_unit("s")
                .with_description("Time to the first token of streamed answers")
                .with_boundaries(sc::TTFT_BUCKETS.to_vec())
                .build(),
            tpot: meter
                .f64_histogram(sc::METRIC_TIME_PER_OUTPUT_TOKEN)
                .with_unit("s")
                .with_description("Time per output token after the first")
                .with_boundaries(sc::TPOT_BUCKETS.to_vec())
                .build(),
            cost: meter
                .f64_counter(sc::METRIC_COST)
                .with_unit("USD")
                .with_description("Spend at the configured prices")
                .build(),
        }
    }

    /// Exports what was recorded since the last export, and stops.
    pub(crate) fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::debug!(error = %e, "OTLP metrics shutdown");
        }
    }
}

/// Records a finished exchange (model calls only).
pub(super) fn record(metrics: &Metrics, otlp: Option<&Otlp>, done: &Done<'_>) {
    let r = &done.open.record;
    let operation = sc::operation(r.endpoint);
    if matches!(operation, "other" | "count_tokens") {
        return;
    }
    let g = &metrics.genai;
    let model = ModelLabels {
        gen_ai_operation_name: operation,
        gen_ai_provider_name: sc::provider(done.open.provider),
        gen_ai_request_model: r.model_label.clone(),
    };
    let secs = done.elapsed.as_secs_f64();
    let ok = r.error.is_empty() && r.status < 400 && r.ended.is_empty();
    let attrs = otlp.map(|_| {
        // Shared, so the copies each instrument takes are reference counts.
        let shared: std::sync::Arc<str> = r.model_label.as_str().into();
        let mut v = vec![
            KeyValue::new(sc::OPERATION_NAME, operation),
            KeyValue::new(sc::REQUEST_MODEL, shared),
        ];
        if !model.gen_ai_provider_name.is_empty() {
            v.push(KeyValue::new(sc::PROVIDER_NAME, model.gen_ai_provider_name));
        }
        v
    });
    let with = |extra: Option<KeyValue>| {
        let mut v = attrs.clone().unwrap_or_default();
        v.extend(extra);
        v
    };
    if ok && (r.input_tokens > 0 || r.output_tokens > 0) {
        for (kind, n) in [("input", r.input_tokens), ("output", r.output_tokens)] {
            g.token_usage
                .get_or_create(&TokenLabels {
                    model: model.clone(),
                    gen_ai_token_type: kind,
                })
                .observe(n as f64);
            if let Some(o) = otlp {
                o.token_usage
                    .record(n, &with(Some(KeyValue::new(sc::TOKEN_TYPE, kind))));
            }
        }
    }
    let error_type = if ok {
        ""
    } else if r.error.is_empty() {
        if r.ended.is_empty() {
            "http_error"
        } else {
            r.ended
        }
    } else {
        r.error
    };
    if let Some(o) = otlp {
        let extra = (!error_type.is_empty()).then(|| KeyValue::new(sc::ERROR_TYPE, error_type));
        o.duration.record(secs, &with(extra));
    }
    g.duration
        .get_or_create(&DurationLabels {
            model: model.clone(),
            error_type,
        })
        .observe(secs);
    if let (true, Some(ttft)) = (ok, done.ttft) {
        let t = ttft.as_secs_f64();
        g.ttft.get_or_create(&model).observe(t);
        if let Some(o) = otlp {
            o.ttft.record(t, &with(None));
        }
        if r.output_tokens > 1 {
            let per = (secs - t).max(0.0) / (r.output_tokens - 1) as f64;
            g.tpot.get_or_create(&model).observe(per);
            if let Some(o) = otlp {
                o.tpot.record(per, &with(None));
            }
        }
    }
    if r.cost_nanos > 0 {
        let usd = r.cost_nanos as f64 / 1e9;
        let key = g.keys.of(&r.key);
        if let Some(o) = otlp {
            let mut v = vec![
                KeyValue::new(sc::ROUTE, r.route.clone()),
                KeyValue::new(sc::REQUEST_MODEL, r.model_label.clone()),
            ];
            if !key.is_empty() {
                v.push(KeyValue::new(sc::KEY_ID, key.clone()));
            }
            o.cost.add(usd, &v);
        }
        g.cost
            .get_or_create(&CostLabels {
                route: r.route.clone(),
                model: r.model_label.clone(),
                key,
            })
            .inc_by(usd);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_label_is_opt_in_and_capped() {
        let off = KeyLabel {
            cap: None,
            seen: Mutex::default(),
        };
        assert_eq!(off.of("a"), "", "off by default");
        let k = KeyLabel {
            cap: Some(2),
            seen: Mutex::default(),
        };
        assert_eq!(k.of("a"), "a");
        assert_eq!(k.of("b"), "b");
        assert_eq!(k.of("c"), OTHER_KEYS, "beyond the cap");
        assert_eq!(k.of("a"), "a", "a key already named keeps its label");
    }
}
