//! OpenTelemetry plumbing shared by both binaries: the OTLP flags, the span queue and its
//! exporter (gRPC through tonic or HTTP/protobuf through hyper), the metric exporter, and
//! the W3C trace context on the wire.
//!
//! Spans are not made through a `Tracer`: each binary writes a finished span into the
//! [`SpanQueue`] when the work it describes ends (a request, an attempt, a push), with its
//! own ids and times, encoded as OTLP protobuf there and then ([`proto`]). A request never
//! waits for an exporter; a full queue or a collector that is down drops spans, and every
//! dropped span is counted.

mod export;
pub mod proto;

pub use export::{MetricsExport, QueueCounts, SpanQueue};

use std::collections::HashMap;
use std::time::Duration;

use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, ShouldSample};

pub use opentelemetry;
pub use opentelemetry_sdk;

/// How OTLP data leaves the process.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/gRPC (usually port 4317).
    #[default]
    Grpc,
    /// OTLP/HTTP with protobuf bodies (usually port 4318; `/v1/traces` and `/v1/metrics` are
    /// appended to the endpoint).
    Http,
}

/// The OTLP flags, the same on both binaries.
#[derive(clap::Args, Clone, Debug)]
pub struct OtlpArgs {
    /// OTLP collector to send traces (and the data plane's GenAI metrics) to, e.g.
    /// http://otel-collector:4317. Without it nothing is traced and nothing is exported.
    #[arg(long, env = "SWITCHYARD_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// OTLP transport.
    #[arg(
        long,
        env = "SWITCHYARD_OTLP_PROTOCOL",
        value_enum,
        default_value = "grpc"
    )]
    pub otlp_protocol: Protocol,
    /// Headers sent with every export, `name=value` comma-separated (e.g. an API key of a
    /// hosted collector; the chart reads it from a Secret). Never logged.
    #[arg(long, env = "SWITCHYARD_OTLP_HEADERS", hide_env_values = true)]
    pub otlp_headers: Option<String>,
    /// Share of new traces recorded (0 to 1). A request that carries a `traceparent` follows
    /// its caller's decision (parent-based sampling).
    #[arg(long, env = "SWITCHYARD_TRACE_SAMPLE_RATIO", default_value_t = 1.0)]
    pub trace_sample_ratio: f64,
    /// Spans held for the exporter; beyond this they are dropped (counted).
    #[arg(long, env = "SWITCHYARD_OTLP_QUEUE", default_value_t = 8192)]
    pub otlp_queue: usize,
    /// Bound on one export call.
    #[arg(long, env = "SWITCHYARD_OTLP_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub otlp_timeout: Duration,
}

impl Default for OtlpArgs {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            otlp_protocol: Protocol::Grpc,
            otlp_headers: None,
            trace_sample_ratio: 1.0,
            otlp_queue: 8192,
            otlp_timeout: Duration::from_secs(5),
        }
    }
}

/// A flag that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("--otlp-headers: `{0}` is not name=value with a valid header name and value")]
    Header(String),
    #[error("--trace-sample-ratio must be between 0 and 1, got {0}")]
    Ratio(f64),
    #[error("--otlp-endpoint: {0}")]
    Endpoint(String),
}

impl OtlpArgs {
    /// The headers of `--otlp-headers`, else of the standard `OTEL_EXPORTER_OTLP_HEADERS`
    /// (checked; values never appear in an error).
    pub fn headers(&self) -> Result<HashMap<String, String>, Error> {
        let from_env = std::env::var("OTEL_EXPORTER_OTLP_HEADERS").ok();
        let mut out = HashMap::new();
        for pair in self
            .otlp_headers
            .as_deref()
            .or(from_env.as_deref())
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let bad = || Error::Header(pair.split('=').next().unwrap_or("").to_owned());
            let (name, value) = pair
                .split_once('=')
                .filter(|(n, _)| !n.trim().is_empty())
                .ok_or_else(bad)?;
            let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
            if http::HeaderName::try_from(name.as_str()).is_err()
                || http::HeaderValue::try_from(value).is_err()
            {
                return Err(bad());
            }
            out.insert(name, value.to_owned());
        }
        Ok(out)
    }

    /// The sampler: the caller's decision when a request carries one, else this ratio.
    pub fn sampler(&self) -> Result<Sampler, Error> {
        let r = self.trace_sample_ratio;
        if !(0.0..=1.0).contains(&r) {
            return Err(Error::Ratio(r));
        }
        Ok(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            r,
        ))))
    }

    /// The endpoint of one signal: as given for gRPC, with the signal's path for HTTP.
    fn endpoint(&self, signal: &str) -> Option<String> {
        let base = self.otlp_endpoint.as_deref()?.trim_end_matches('/');
        Some(match self.otlp_protocol {
            Protocol::Grpc => base.to_owned(),
            Protocol::Http => format!("{base}/v1/{signal}"),
        })
    }

    /// The transport of one signal (`traces`, `metrics`), when an endpoint is set.
    fn exporter(&self, signal: &str) -> Result<Option<export::Exporter>, Error> {
        let Some(endpoint) = self.endpoint(signal) else {
            return Ok(None);
        };
        let headers = self.headers()?;
        let bad = |e: &dyn std::fmt::Display| Error::Endpoint(format!("`{endpoint}`: {e}"));
        let exporter = match self.otlp_protocol {
            Protocol::Grpc => {
                let mut e = tonic::transport::Endpoint::from_shared(endpoint.clone())
                    .map_err(|e| bad(&e))?
                    .timeout(self.otlp_timeout)
                    .connect_timeout(self.otlp_timeout);
                if endpoint.to_ascii_lowercase().starts_with("https://") {
                    e = e
                        .tls_config(tonic::transport::ClientTlsConfig::new().with_webpki_roots())
                        .map_err(|e| bad(&e))?;
                }
                let path = if signal == "traces" {
                    "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
                } else {
                    "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"
                };
                export::Exporter::Grpc(Box::new(export::Grpc {
                    grpc: tonic::client::Grpc::new(e.connect_lazy()),
                    metadata: metadata(&headers),
                    path: http::uri::PathAndQuery::from_static(path),
                }))
            }
            Protocol::Http => {
                let uri = http::Uri::try_from(endpoint.as_str()).map_err(|e| bad(&e))?;
                let https = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_provider_and_webpki_roots(std::sync::Arc::new(
                        rustls::crypto::ring::default_provider(),
                    ))
                    .map_err(|e| bad(&e))?
                    .https_or_http()
                    .enable_http1()
                    .build();
                export::Exporter::Http(Box::new(export::Http {
                    client: hyper_util::client::legacy::Client::builder(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .build(https),
                    uri,
                    headers: header_map(&headers),
                    timeout: self.otlp_timeout,
                }))
            }
        };
        Ok(Some(exporter))
    }

    /// The span queue and its exporter task, when an endpoint is set: spans go under
    /// `resource` and the instrumentation scope `scope` (name, version), counted in `counts`.
    /// Its task ends at [`SpanQueue::shutdown`] or when every queue clone is gone, once what
    /// was queued has been sent. Call within the tokio runtime.
    pub fn span_queue(
        &self,
        resource: &Resource,
        scope: (&str, &str),
        counts: QueueCounts,
    ) -> Result<Option<SpanQueue>, Error> {
        let Some(exporter) = self.exporter("traces")? else {
            return Ok(None);
        };
        let envelope = proto::Envelope::new(resource, scope);
        Ok(Some(SpanQueue::start(
            exporter,
            envelope,
            self.otlp_queue,
            counts,
        )))
    }

    /// The metrics export, when an endpoint is set: every `interval`, what `collect` writes
    /// goes under `resource` and `scope` (name, version). Call within the tokio runtime.
    pub fn metrics_export(
        &self,
        resource: &Resource,
        scope: (&str, &str),
        interval: Duration,
        collect: impl Fn(&mut proto::MetricsWriter<'_>) + Send + 'static,
    ) -> Result<Option<MetricsExport>, Error> {
        let Some(exporter) = self.exporter("metrics")? else {
            return Ok(None);
        };
        let envelope = proto::Envelope::new(resource, scope);
        Ok(Some(MetricsExport::start(
            exporter, envelope, interval, collect,
        )))
    }
}

fn metadata(headers: &HashMap<String, String>) -> tonic::metadata::MetadataMap {
    tonic::metadata::MetadataMap::from_headers(header_map(headers))
}

/// The headers of `--otlp-headers` that HTTP can carry.
fn header_map(headers: &HashMap<String, String>) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    for (k, v) in headers {
        if let (Ok(k), Ok(v)) = (
            http::HeaderName::try_from(k.as_str()),
            http::HeaderValue::try_from(v.as_str()),
        ) {
            h.insert(k, v);
        }
    }
    h
}

/// The resource every span and metric of this process carries.
pub fn resource(service: &'static str, instance: &str) -> Resource {
    Resource::builder_empty()
        .with_service_name(service)
        .with_attributes([
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            KeyValue::new("service.instance.id", instance.to_owned()),
        ])
        .build()
}

/// The W3C `traceparent` of a span: `00-<trace id>-<span id>-<flags>`.
pub fn traceparent(trace: TraceId, span: SpanId, sampled: bool) -> http::HeaderValue {
    // Written as hex digits directly: this runs for every upstream attempt with tracing on,
    // sampled or not.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut v = [0_u8; 55];
    v[..3].copy_from_slice(b"00-");
    let ids = trace.to_bytes().into_iter().chain(span.to_bytes());
    for (i, b) in ids.enumerate() {
        // 32 digits of the trace id, a dash, 16 of the span id.
        let at = 3 + 2 * i + usize::from(i >= 16);
        v[at] = HEX[usize::from(b >> 4)];
        v[at + 1] = HEX[usize::from(b & 0xf)];
    }
    v[35] = b'-';
    v[52..].copy_from_slice(if sampled { b"-01" } else { b"-00" });
    http::HeaderValue::from_bytes(&v).unwrap_or(http::HeaderValue::from_static(""))
}

/// The remote span context in a `traceparent` (and `tracestate`) header, as the W3C
/// propagator reads it; `None` when absent or invalid.
pub fn remote_parent(
    traceparent: Option<&http::HeaderValue>,
    tracestate: Option<&http::HeaderValue>,
) -> Option<SpanContext> {
    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry::trace::TraceContextExt;
    let parent = traceparent?.to_str().ok()?;
    let state = tracestate.and_then(|v| v.to_str().ok());
    struct Headers<'a>(&'a str, Option<&'a str>);
    impl opentelemetry::propagation::Extractor for Headers<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            match key {
                "traceparent" => Some(self.0),
                "tracestate" => self.1,
                _ => None,
            }
        }
        fn keys(&self) -> Vec<&str> {
            vec!["traceparent", "tracestate"]
        }
    }
    let cx = opentelemetry_sdk::propagation::TraceContextPropagator::new()
        .extract(&Headers(parent, state));
    let sc = cx.span().span_context().clone();
    sc.is_valid().then_some(sc)
}

/// Ids and the sampling decision of a new local span (a request's SERVER span): the remote
/// parent's trace, or a new one; the sampler decides on a trace without a parent.
#[derive(Clone, Debug)]
pub struct Started {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent: Option<SpanContext>,
    pub sampled: bool,
}

impl Started {
    /// Starts a span under `parent` (a remote context), sampled by `sampler`.
    pub fn new(sampler: &Sampler, parent: Option<SpanContext>, name: &str) -> Self {
        let trace_id = parent
            .as_ref()
            .map_or_else(new_trace_id, SpanContext::trace_id);
        let cx = parent.as_ref().map(|p| {
            use opentelemetry::trace::TraceContextExt;
            Context::new().with_remote_span_context(p.clone())
        });
        let sampled = matches!(
            sampler
                .should_sample(
                    cx.as_ref(),
                    trace_id,
                    name,
                    &opentelemetry::trace::SpanKind::Server,
                    &[],
                    &[],
                )
                .decision,
            opentelemetry_sdk::trace::SamplingDecision::RecordAndSample
        );
        Self {
            trace_id,
            span_id: new_span_id(),
            parent,
            sampled,
        }
    }

    /// The context of this span, for links and children.
    pub fn context(&self) -> SpanContext {
        SpanContext::new(
            self.trace_id,
            self.span_id,
            if self.sampled {
                TraceFlags::SAMPLED
            } else {
                TraceFlags::default()
            },
            false,
            self.parent
                .as_ref()
                .map_or_else(TraceState::default, |p| p.trace_state().clone()),
        )
    }
}

/// A random, valid trace id.
pub fn new_trace_id() -> TraceId {
    TraceId::from(fastrand::u128(1..))
}

/// A random, valid span id.
pub fn new_span_id() -> SpanId {
    SpanId::from(fastrand::u64(1..))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn otlp_headers_are_checked_without_showing_values() {
        let args = |h: &str| OtlpArgs {
            otlp_headers: Some(h.to_owned()),
            ..OtlpArgs::default()
        };
        let h = args(" Api-Key = s3cret , x-tenant=a ").headers().unwrap();
        assert_eq!(h["api-key"], "s3cret");
        assert_eq!(h["x-tenant"], "a");
        for bad in ["novalue", "=v", "bad name=v", "k=line\nbreak"] {
            let e = args(bad).headers().unwrap_err().to_string();
            assert!(!e.contains("s3cret") && !e.contains("break"), "{e}");
        }
    }

    #[test]
    fn traceparent_is_the_w3c_form_and_reads_back() {
        let (t, s) = (
            TraceId::from(0x0af7_6519_16cd_43dd_8448_eb21_1c80_319c),
            SpanId::from(0xb7ad_6b71_6920_3331),
        );
        let v = traceparent(t, s, true);
        assert_eq!(
            v.to_str().unwrap(),
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        );
        assert_eq!(
            traceparent(t, s, false).to_str().unwrap(),
            format!("00-{t}-{s}-00")
        );
        let sc = remote_parent(Some(&v), None).expect("valid");
        assert_eq!((sc.trace_id(), sc.span_id(), sc.is_sampled()), (t, s, true));
    }
}
