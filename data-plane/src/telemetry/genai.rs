//! The GenAI metrics of the OpenTelemetry conventions, recorded once per finished exchange:
//! token usage by type, request duration, time to first token and time per output token,
//! and spend by route, model and (opt-in, capped) key. Prometheus serves them on `/metrics`
//! (names in `_`, with unit suffixes); with an OTLP endpoint the same values go out as OTLP
//! metrics under their dotted names ([`write_otlp`]): recorded once ([`super::series`]),
//! read by both.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::{Registry, Unit};
use switchyard_otel::proto::{Attributes, Describe, MetricsWriter};

use super::metrics::Metrics;
use super::series::{Hist, Series};
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

/// A label set's OTLP attributes: the conventions' dotted names; an empty value is left out.
trait OtlpAttributes {
    fn write(&self, a: &mut Attributes<'_>);
}

fn put(a: &mut Attributes<'_>, key: &str, v: &str) {
    if !v.is_empty() {
        a.str(key, v);
    }
}

impl OtlpAttributes for ModelLabels {
    fn write(&self, a: &mut Attributes<'_>) {
        a.str(sc::OPERATION_NAME, self.gen_ai_operation_name)
            .str(sc::REQUEST_MODEL, &self.gen_ai_request_model);
        put(a, sc::PROVIDER_NAME, self.gen_ai_provider_name);
    }
}

impl OtlpAttributes for DurationLabels {
    fn write(&self, a: &mut Attributes<'_>) {
        self.model.write(a);
        put(a, sc::ERROR_TYPE, self.error_type);
    }
}

impl OtlpAttributes for TokenLabels {
    fn write(&self, a: &mut Attributes<'_>) {
        self.model.write(a);
        a.str(sc::TOKEN_TYPE, self.gen_ai_token_type);
    }
}

impl OtlpAttributes for CostLabels {
    fn write(&self, a: &mut Attributes<'_>) {
        a.str(sc::ROUTE, &self.route)
            .str(sc::REQUEST_MODEL, &self.model);
        put(a, sc::KEY_ID, &self.key);
    }
}

/// The Prometheus side, in its own registry (the conventions' names carry no `switchyard_`
/// prefix).
#[derive(Debug)]
pub struct Prom {
    pub registry: Registry,
    pub token_usage: Series<TokenLabels, Hist>,
    pub duration: Series<DurationLabels, Hist>,
    pub ttft: Series<ModelLabels, Hist>,
    pub tpot: Series<ModelLabels, Hist>,
    pub cost: Series<CostLabels, Counter<f64, AtomicU64>>,
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
        let token_usage = Series::new(|| Hist::new(&sc::TOKEN_BUCKETS));
        let duration = Series::new(|| Hist::new(&sc::DURATION_BUCKETS));
        let ttft = Series::new(|| Hist::new(&sc::TTFT_BUCKETS));
        let tpot = Series::new(|| Hist::new(&sc::TPOT_BUCKETS));
        let cost = Series::new(Counter::default);
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

/// Writes the GenAI metrics as OTLP, under the conventions' dotted names.
pub(super) fn write_otlp(g: &Prom, w: &mut MetricsWriter<'_>) {
    fn histogram<L: OtlpAttributes + Clone + std::hash::Hash + Eq>(
        w: &mut MetricsWriter<'_>,
        d: Describe<'_>,
        series: &Series<L, Hist>,
    ) {
        w.histogram(d, |p| {
            series.each(|labels, h| {
                let s = h.snapshot();
                p.point(|a| labels.write(a), s.sum, h.bounds(), &s.counts);
            });
        });
    }
    let d = |name, description, unit| Describe {
        name,
        description,
        unit,
    };
    histogram(
        w,
        d(sc::METRIC_TOKEN_USAGE, "Tokens per model call", "{token}"),
        &g.token_usage,
    );
    histogram(
        w,
        d(sc::METRIC_REQUEST_DURATION, "Model call duration", "s"),
        &g.duration,
    );
    histogram(
        w,
        d(
            sc::METRIC_TIME_TO_FIRST_TOKEN,
            "Time to the first token of streamed answers",
            "s",
        ),
        &g.ttft,
    );
    histogram(
        w,
        d(
            sc::METRIC_TIME_PER_OUTPUT_TOKEN,
            "Time per output token after the first",
            "s",
        ),
        &g.tpot,
    );
    w.counter(
        d(sc::METRIC_COST, "Spend at the configured prices", "USD"),
        |p| {
            g.cost
                .each(|labels, c| p.point(|a| labels.write(a), c.get()));
        },
    );
}

/// Records a finished exchange (model calls only).
pub(super) fn record(metrics: &Metrics, done: &Done<'_>) {
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
    if ok && (r.input_tokens > 0 || r.output_tokens > 0) {
        for (kind, n) in [("input", r.input_tokens), ("output", r.output_tokens)] {
            g.token_usage
                .get_or_create(&TokenLabels {
                    model: model.clone(),
                    gen_ai_token_type: kind,
                })
                .observe(n as f64);
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
    g.duration
        .get_or_create(&DurationLabels {
            model: model.clone(),
            error_type,
        })
        .observe(secs);
    if let (true, Some(ttft)) = (ok, done.ttft) {
        let t = ttft.as_secs_f64();
        g.ttft.get_or_create(&model).observe(t);
        if r.output_tokens > 1 {
            let per = (secs - t).max(0.0) / (r.output_tokens - 1) as f64;
            g.tpot.get_or_create(&model).observe(per);
        }
    }
    if r.cost_nanos > 0 {
        g.cost
            .get_or_create(&CostLabels {
                route: r.route.clone(),
                model: r.model_label.clone(),
                key: g.keys.of(&r.key),
            })
            .inc_by(r.cost_nanos as f64 / 1e9);
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
