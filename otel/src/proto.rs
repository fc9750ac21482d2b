//! OTLP's trace and metric messages written straight into a byte buffer, as protobuf.
//!
//! A span is encoded once, when the work it describes ends, from what its owner holds: no
//! `SpanData`, no OTLP message structs, no grouping by resource and scope at export time.
//! The queue keeps a batch as the encoded `spans` of one `ScopeSpans`; the exporter puts the
//! resource and scope in front of it ([`envelope`]). Field numbers are those of
//! `opentelemetry/proto/trace/v1/trace.proto` and `common/v1/common.proto`; the tests read
//! what is written back through the OTLP types that `opentelemetry-proto` generates.

use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{SpanContext, SpanId, SpanKind, TraceId};
use opentelemetry::{Array, Value};

const VARINT: u32 = 0;
const I64: u32 = 1;
const LEN: u32 = 2;
const I32: u32 = 5;

#[inline]
fn varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push(v as u8 | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// The bytes of `v` as a varint.
#[inline]
fn varint_len(v: usize) -> usize {
    (usize::BITS - (v | 1).leading_zeros()).div_ceil(7) as usize
}

#[inline]
fn key(buf: &mut Vec<u8>, field: u32, wire: u32) {
    varint(buf, u64::from(field << 3 | wire));
}

#[inline]
fn bytes(buf: &mut Vec<u8>, field: u32, v: &[u8]) {
    key(buf, field, LEN);
    varint(buf, v.len() as u64);
    buf.extend_from_slice(v);
}

fn fixed64(buf: &mut Vec<u8>, field: u32, v: u64) {
    key(buf, field, I64);
    buf.extend_from_slice(&v.to_le_bytes());
}

fn fixed32(buf: &mut Vec<u8>, field: u32, v: u32) {
    key(buf, field, I32);
    buf.extend_from_slice(&v.to_le_bytes());
}

fn uint(buf: &mut Vec<u8>, field: u32, v: u64) {
    key(buf, field, VARINT);
    varint(buf, v);
}

/// A nested message: its key, then the body `f` writes, then the body's length put in
/// front of it (one byte is reserved; a body of 128 bytes or more moves over by the rest).
pub(crate) fn nested(buf: &mut Vec<u8>, field: u32, f: impl FnOnce(&mut Vec<u8>)) {
    key(buf, field, LEN);
    let at = buf.len();
    buf.push(0);
    f(buf);
    let len = buf.len() - at - 1;
    if len < 0x80 {
        buf[at] = len as u8;
        return;
    }
    // The length's varint, built on the stack, replaces the reserved byte.
    let (mut prefix, mut n, mut v) = ([0_u8; 10], 0, len);
    while v >= 0x80 {
        prefix[n] = v as u8 | 0x80;
        v >>= 7;
        n += 1;
    }
    prefix[n] = v as u8;
    buf.splice(at..=at, prefix[..=n].iter().copied());
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The longest string value written, in bytes: what an upstream answers (a response id, a
/// model name) can make no span too large for a collector. Longer values are cut at a
/// character boundary.
pub const MAX_VALUE: usize = 4096;

fn capped(v: &str) -> &str {
    if v.len() <= MAX_VALUE {
        return v;
    }
    let mut end = MAX_VALUE;
    while !v.is_char_boundary(end) {
        end -= 1;
    }
    &v[..end]
}

/// The attributes of a span, an event, a link or a resource (`KeyValue`s of its field).
#[derive(Debug)]
pub struct Attributes<'a> {
    buf: &'a mut Vec<u8>,
    field: u32,
}

impl Attributes<'_> {
    fn kv(&mut self, key: &str, value: impl FnOnce(&mut Vec<u8>)) -> &mut Self {
        nested(self.buf, self.field, |b| {
            bytes(b, 1, key.as_bytes());
            nested(b, 2, value);
        });
        self
    }

    pub fn str(&mut self, k: &str, v: &str) -> &mut Self {
        // The most common attribute, its lengths known up front: written in one pass.
        let v = capped(v);
        let any = 1 + varint_len(v.len()) + v.len();
        let kv = 1 + varint_len(k.len()) + k.len() + 1 + varint_len(any) + any;
        let b = &mut *self.buf;
        b.reserve(kv + 6);
        key(b, self.field, LEN);
        varint(b, kv as u64);
        bytes(b, 1, k.as_bytes());
        key(b, 2, LEN);
        varint(b, any as u64);
        bytes(b, 1, v.as_bytes());
        self
    }

    pub fn bool(&mut self, key: &str, v: bool) -> &mut Self {
        self.kv(key, |b| uint(b, 2, u64::from(v)))
    }

    pub fn int(&mut self, key: &str, v: i64) -> &mut Self {
        self.kv(key, |b| uint(b, 3, v as u64))
    }

    pub fn float(&mut self, key: &str, v: f64) -> &mut Self {
        self.kv(key, |b| fixed64(b, 4, v.to_bits()))
    }

    /// An array of strings.
    pub fn strs<'s>(&mut self, key: &str, v: impl IntoIterator<Item = &'s str>) -> &mut Self {
        self.kv(key, |b| {
            nested(b, 5, |b| {
                for s in v {
                    nested(b, 1, |b| bytes(b, 1, capped(s).as_bytes()));
                }
            });
        })
    }

    /// Any OpenTelemetry value (a resource's, a caller's).
    pub fn value(&mut self, key: &str, v: &Value) -> &mut Self {
        self.kv(key, |b| any_value(b, v))
    }
}

fn any_value(b: &mut Vec<u8>, v: &Value) {
    fn array<T>(b: &mut Vec<u8>, items: &[T], each: impl Fn(&mut Vec<u8>, &T)) {
        nested(b, 5, |b| {
            for i in items {
                nested(b, 1, |b| each(b, i));
            }
        });
    }
    match v {
        Value::Bool(x) => uint(b, 2, u64::from(*x)),
        Value::I64(x) => uint(b, 3, *x as u64),
        Value::F64(x) => fixed64(b, 4, x.to_bits()),
        Value::String(s) => bytes(b, 1, capped(s.as_str()).as_bytes()),
        Value::Array(Array::Bool(a)) => array(b, a, |b, x| uint(b, 2, u64::from(*x))),
        Value::Array(Array::I64(a)) => array(b, a, |b, x| uint(b, 3, *x as u64)),
        Value::Array(Array::F64(a)) => array(b, a, |b, x| fixed64(b, 4, x.to_bits())),
        Value::Array(Array::String(a)) => array(b, a, |b, x| bytes(b, 1, x.as_str().as_bytes())),
        // A value kind added after this writer: sent as its text.
        other => bytes(b, 1, other.to_string().as_bytes()),
    }
}

/// What every span starts with: its ids, parent, name, kind and times.
#[derive(Debug, Clone)]
pub struct Head<'a> {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// The W3C `tracestate` the span carries, as its header reads (empty for none).
    pub trace_state: &'a str,
    pub sampled: bool,
    /// The parent span, and whether it is remote (another process's).
    pub parent: Option<(SpanId, bool)>,
    pub kind: SpanKind,
    /// The name, in pieces written one after the other (`["chat", " ", model]`): no
    /// formatting for a name made of parts.
    pub name: &'a [&'a str],
    pub start: SystemTime,
    pub end: SystemTime,
}

/// Writes one `Span` message's fields.
#[derive(Debug)]
pub struct SpanWriter<'a> {
    buf: &'a mut Vec<u8>,
}

impl<'a> SpanWriter<'a> {
    /// Starts a span's body in `buf` (the caller wraps it in its field).
    pub(crate) fn new(buf: &'a mut Vec<u8>, head: &Head<'_>) -> Self {
        bytes(buf, 1, &head.trace_id.to_bytes());
        bytes(buf, 2, &head.span_id.to_bytes());
        if !head.trace_state.is_empty() {
            bytes(buf, 3, head.trace_state.as_bytes());
        }
        if let Some((parent, _)) = head.parent {
            bytes(buf, 4, &parent.to_bytes());
        }
        let name_len: usize = head.name.iter().map(|p| p.len()).sum();
        key(buf, 5, LEN);
        varint(buf, name_len as u64);
        for p in head.name {
            buf.extend_from_slice(p.as_bytes());
        }
        uint(buf, 6, kind(&head.kind));
        fixed64(buf, 7, nanos(head.start));
        fixed64(buf, 8, nanos(head.end));
        // The W3C flags, and whether the parent is remote (SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE
        // and _IS_REMOTE), as the OpenTelemetry SDK sets them.
        let remote = head.parent.is_some_and(|(_, r)| r);
        fixed32(
            buf,
            16,
            u32::from(head.sampled) | 0x100 | if remote { 0x200 } else { 0 },
        );
        Self { buf }
    }

    /// The span's attributes.
    pub fn attributes(&mut self) -> Attributes<'_> {
        Attributes {
            buf: self.buf,
            field: 9,
        }
    }

    /// An event at `at`, with the attributes `f` writes.
    pub fn event(&mut self, name: &str, at: SystemTime, f: impl FnOnce(&mut Attributes<'_>)) {
        nested(self.buf, 11, |b| {
            fixed64(b, 1, nanos(at));
            bytes(b, 2, name.as_bytes());
            f(&mut Attributes { buf: b, field: 3 });
        });
    }

    /// A link to another span.
    pub fn link(&mut self, to: &SpanContext) {
        nested(self.buf, 13, |b| {
            bytes(b, 1, &to.trace_id().to_bytes());
            bytes(b, 2, &to.span_id().to_bytes());
            let state = to.trace_state().header();
            if !state.is_empty() {
                bytes(b, 3, state.as_bytes());
            }
            fixed32(
                b,
                6,
                u32::from(to.trace_flags().to_u8())
                    | 0x100
                    | if to.is_remote() { 0x200 } else { 0 },
            );
        });
    }

    /// The span failed: status ERROR with `message`.
    pub fn error(&mut self, message: &str) {
        nested(self.buf, 15, |b| {
            if !message.is_empty() {
                bytes(b, 2, message.as_bytes());
            }
            uint(b, 3, 2);
        });
    }
}

fn kind(k: &SpanKind) -> u64 {
    match k {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

/// The `Resource` and `InstrumentationScope` a process's batches are sent under, encoded
/// once.
#[derive(Debug, Clone)]
pub(crate) struct Envelope {
    /// `ResourceSpans.resource` (field 1, with its key and length).
    resource: Vec<u8>,
    /// `ScopeSpans.scope` (field 1, with its key and length).
    scope: Vec<u8>,
}

impl Envelope {
    pub(crate) fn new(resource: &opentelemetry_sdk::Resource, scope: (&str, &str)) -> Self {
        let mut r = Vec::new();
        nested(&mut r, 1, |b| {
            let mut a = Attributes { buf: b, field: 1 };
            for (k, v) in resource.iter() {
                a.value(k.as_str(), v);
            }
        });
        let mut s = Vec::new();
        nested(&mut s, 1, |b| {
            bytes(b, 1, scope.0.as_bytes());
            bytes(b, 2, scope.1.as_bytes());
        });
        Self {
            resource: r,
            scope: s,
        }
    }

    /// An `ExportTraceServiceRequest` of the encoded `spans` (each a `ScopeSpans.spans`
    /// field, key and length included), or an `ExportMetricsServiceRequest` of encoded
    /// metrics (`ScopeMetrics.metrics` fields): both messages have the same shape.
    pub(crate) fn request(&self, spans: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(spans.len() + self.resource.len() + self.scope.len() + 16);
        nested(&mut out, 1, |b| {
            b.extend_from_slice(&self.resource);
            nested(b, 2, |b| {
                b.extend_from_slice(&self.scope);
                b.extend_from_slice(spans);
            });
        });
        out
    }
}

/// Writes the `Metric`s of one export: cumulative sums and histograms, every point with the
/// same start (when the exporter started) and time (now).
#[derive(Debug)]
pub struct MetricsWriter<'a> {
    buf: &'a mut Vec<u8>,
    start: u64,
    now: u64,
}

/// Where a metric says what it is.
#[derive(Debug, Clone, Copy)]
pub struct Describe<'a> {
    pub name: &'a str,
    pub description: &'a str,
    pub unit: &'a str,
}

impl<'a> MetricsWriter<'a> {
    pub(crate) fn new(buf: &'a mut Vec<u8>, start: SystemTime, now: SystemTime) -> Self {
        Self {
            buf,
            start: nanos(start),
            now: nanos(now),
        }
    }

    /// A `ScopeMetrics.metrics` field whose data (`kind`) holds the points `write` writes,
    /// then the fields in `tail`; left out when `write` wrote no point.
    fn metric(
        &mut self,
        d: Describe<'_>,
        kind: u32,
        tail: &[(u32, u64)],
        write: impl FnOnce(&mut Points<'_>),
    ) {
        let (start, now, mark) = (self.start, self.now, self.buf.len());
        let mut any = false;
        nested(self.buf, 2, |b| {
            bytes(b, 1, d.name.as_bytes());
            bytes(b, 2, d.description.as_bytes());
            bytes(b, 3, d.unit.as_bytes());
            nested(b, kind, |b| {
                let mut p = Points {
                    buf: b,
                    start,
                    now,
                    any: false,
                };
                write(&mut p);
                any = p.any;
                for &(field, v) in tail {
                    uint(b, field, v);
                }
            });
        });
        if !any {
            self.buf.truncate(mark);
        }
    }

    /// A histogram with cumulative temporality; `points` writes its data points (a
    /// histogram without any is left out).
    pub fn histogram(
        &mut self,
        d: Describe<'_>,
        points: impl FnOnce(&mut HistogramPoints<'_, '_>),
    ) {
        self.metric(d, 9, &[(2, CUMULATIVE)], |p| {
            points(&mut HistogramPoints(p))
        });
    }

    /// A monotonic sum with cumulative temporality (a counter); `points` writes its points
    /// (a counter without any is left out).
    pub fn counter(&mut self, d: Describe<'_>, points: impl FnOnce(&mut CounterPoints<'_, '_>)) {
        self.metric(d, 7, &[(2, CUMULATIVE), (3, 1)], |p| {
            points(&mut CounterPoints(p));
        });
    }
}

/// `AGGREGATION_TEMPORALITY_CUMULATIVE`.
const CUMULATIVE: u64 = 2;

/// Where a metric's data points go, all with the export's start and time.
#[derive(Debug)]
pub struct Points<'a> {
    buf: &'a mut Vec<u8>,
    start: u64,
    now: u64,
    any: bool,
}

impl Points<'_> {
    /// One data point: its start and time, then what `f` writes.
    fn point(&mut self, f: impl FnOnce(&mut Vec<u8>)) {
        self.any = true;
        let (start, now) = (self.start, self.now);
        nested(self.buf, 1, |b| {
            fixed64(b, 2, start);
            fixed64(b, 3, now);
            f(b);
        });
    }
}

/// The data points of a histogram.
#[derive(Debug)]
pub struct HistogramPoints<'p, 'a>(&'p mut Points<'a>);

impl HistogramPoints<'_, '_> {
    /// One series: its attributes, sum, and the count of each bucket (`counts` has one more
    /// than `bounds`: the last counts what is above every bound); its count is theirs.
    pub fn point(
        &mut self,
        attributes: impl FnOnce(&mut Attributes<'_>),
        sum: f64,
        bounds: &[f64],
        counts: &[u64],
    ) {
        self.0.point(|b| {
            fixed64(b, 4, counts.iter().sum());
            fixed64(b, 5, sum.to_bits());
            key(b, 6, LEN);
            varint(b, 8 * counts.len() as u64);
            for c in counts {
                b.extend_from_slice(&c.to_le_bytes());
            }
            key(b, 7, LEN);
            varint(b, 8 * bounds.len() as u64);
            for x in bounds {
                b.extend_from_slice(&x.to_bits().to_le_bytes());
            }
            attributes(&mut Attributes { buf: b, field: 9 });
        });
    }
}

/// The data points of a counter.
#[derive(Debug)]
pub struct CounterPoints<'p, 'a>(&'p mut Points<'a>);

impl CounterPoints<'_, '_> {
    /// One series: its attributes and total.
    pub fn point(&mut self, attributes: impl FnOnce(&mut Attributes<'_>), value: f64) {
        self.0.point(|b| {
            fixed64(b, 4, value.to_bits());
            attributes(&mut Attributes { buf: b, field: 7 });
        });
    }
}

/// Encodes a span as a `ScopeSpans.spans` field at the end of `buf`.
pub(crate) fn span(buf: &mut Vec<u8>, head: &Head<'_>, body: impl FnOnce(&mut SpanWriter<'_>)) {
    nested(buf, 2, |b| body(&mut SpanWriter::new(b, head)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::KeyValue;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Pv;
    use prost::Message;
    use std::time::Duration;

    fn attr<'a>(kvs: &'a [opentelemetry_proto::tonic::common::v1::KeyValue], k: &str) -> &'a Pv {
        kvs.iter()
            .find(|kv| kv.key == k)
            .and_then(|kv| kv.value.as_ref()?.value.as_ref())
            .unwrap_or_else(|| panic!("no attribute {k}"))
    }

    #[test]
    fn what_is_written_reads_back_as_otlp() {
        let resource = opentelemetry_sdk::Resource::builder_empty()
            .with_service_name("svc")
            .with_attributes([KeyValue::new("n", 3_i64)])
            .build();
        let env = Envelope::new(&resource, ("scope", "1.2.3"));
        let t0 = UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789);
        let long = "m".repeat(300);
        let mut batch = Vec::new();
        span(
            &mut batch,
            &Head {
                trace_id: TraceId::from(0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10),
                span_id: SpanId::from(0x1112_1314_1516_1718),
                trace_state: "k=v",
                sampled: true,
                parent: Some((SpanId::from(7), true)),
                kind: SpanKind::Server,
                name: &["chat", " ", &long],
                start: t0,
                end: t0 + Duration::from_micros(1500),
            },
            |s| {
                s.attributes()
                    .str("s", "text")
                    .int("i", -5)
                    .int("zero", 0)
                    .float("f", 0.25)
                    .bool("b", true)
                    .strs("a", ["stop", "length"]);
                s.event("stage", t0, |a| {
                    a.int("took", 12);
                });
                s.link(&SpanContext::new(
                    TraceId::from(9),
                    SpanId::from(8),
                    opentelemetry::trace::TraceFlags::SAMPLED,
                    true,
                    Default::default(),
                ));
                s.error("boom");
            },
        );
        span(
            &mut batch,
            &Head {
                trace_id: TraceId::from(1),
                span_id: SpanId::from(2),
                trace_state: "",
                sampled: true,
                parent: None,
                kind: SpanKind::Client,
                name: &["x"],
                start: t0,
                end: t0,
            },
            |_| {},
        );
        let req = ExportTraceServiceRequest::decode(&env.request(&batch)[..]).unwrap();
        assert_eq!(req.resource_spans.len(), 1);
        let rs = &req.resource_spans[0];
        let r = rs.resource.as_ref().unwrap();
        assert_eq!(
            attr(&r.attributes, "service.name"),
            &Pv::StringValue("svc".into())
        );
        assert_eq!(attr(&r.attributes, "n"), &Pv::IntValue(3));
        let ss = &rs.scope_spans[0];
        let scope = ss.scope.as_ref().unwrap();
        assert_eq!((&*scope.name, &*scope.version), ("scope", "1.2.3"));
        assert_eq!(ss.spans.len(), 2);
        let s = &ss.spans[0];
        assert_eq!(s.trace_id, (1..=16).collect::<Vec<u8>>());
        assert_eq!(s.span_id, (0x11..=0x18).collect::<Vec<u8>>());
        assert_eq!(s.parent_span_id, 7_u64.to_be_bytes());
        assert_eq!(s.trace_state, "k=v");
        assert_eq!(s.name, format!("chat {long}"));
        assert_eq!(s.kind, 2);
        assert_eq!(s.start_time_unix_nano, 1_700_000_000_123_456_789);
        assert_eq!(s.end_time_unix_nano - s.start_time_unix_nano, 1_500_000);
        assert_eq!(s.flags, 0x301);
        assert_eq!(attr(&s.attributes, "s"), &Pv::StringValue("text".into()));
        assert_eq!(attr(&s.attributes, "i"), &Pv::IntValue(-5));
        assert_eq!(attr(&s.attributes, "zero"), &Pv::IntValue(0));
        assert_eq!(attr(&s.attributes, "f"), &Pv::DoubleValue(0.25));
        assert_eq!(attr(&s.attributes, "b"), &Pv::BoolValue(true));
        let Pv::ArrayValue(a) = attr(&s.attributes, "a") else {
            panic!("not an array")
        };
        let texts: Vec<_> = a.values.iter().map(|v| v.value.clone().unwrap()).collect();
        assert_eq!(
            texts,
            [
                Pv::StringValue("stop".into()),
                Pv::StringValue("length".into())
            ]
        );
        assert_eq!(s.events.len(), 1);
        assert_eq!(s.events[0].name, "stage");
        assert_eq!(s.events[0].time_unix_nano, 1_700_000_000_123_456_789);
        assert_eq!(attr(&s.events[0].attributes, "took"), &Pv::IntValue(12));
        assert_eq!(s.links.len(), 1);
        assert_eq!(s.links[0].span_id, 8_u64.to_be_bytes());
        assert_eq!(s.links[0].flags, 0x301);
        let st = s.status.as_ref().unwrap();
        assert_eq!((st.code, &*st.message), (2, "boom"));
        let c = &ss.spans[1];
        assert_eq!((c.kind, &*c.name, c.flags), (3, "x", 0x101));
        assert!(c.parent_span_id.is_empty() && c.status.is_none() && c.attributes.is_empty());
    }

    #[test]
    fn metrics_read_back_as_otlp() {
        use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
        use opentelemetry_proto::tonic::metrics::v1::metric::Data;
        use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value as N;
        let env = Envelope::new(
            &opentelemetry_sdk::Resource::builder_empty()
                .with_service_name("svc")
                .build(),
            ("scope", "1"),
        );
        let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut buf = Vec::new();
        let mut w = MetricsWriter::new(&mut buf, t0, t0 + Duration::from_secs(5));
        let d = |name| Describe {
            name,
            description: "what",
            unit: "s",
        };
        w.histogram(d("h"), |p| {
            p.point(
                |a| {
                    a.str("k", "a");
                },
                3.5,
                &[1.0, 2.0],
                &[1, 0, 2],
            );
            p.point(|_| {}, 0.0, &[1.0, 2.0], &[0, 0, 0]);
        });
        w.counter(d("c"), |p| {
            p.point(
                |a| {
                    a.str("route", "r");
                },
                0.25,
            );
        });
        w.counter(d("no points"), |_| {});
        w.histogram(d("none either"), |_| {});
        let req = ExportMetricsServiceRequest::decode(&env.request(&buf)[..]).unwrap();
        let sm = &req.resource_metrics[0].scope_metrics[0];
        assert_eq!(sm.scope.as_ref().unwrap().name, "scope");
        let [h, c] = &sm.metrics[..] else {
            panic!(
                "two metrics, those without points left out: {:?}",
                sm.metrics
            )
        };
        assert_eq!((&*h.name, &*h.description, &*h.unit), ("h", "what", "s"));
        let Some(Data::Histogram(h)) = &h.data else {
            panic!("a histogram")
        };
        assert_eq!(h.aggregation_temporality, 2);
        let p = &h.data_points[0];
        assert_eq!((p.count, p.sum), (3, Some(3.5)));
        assert_eq!(p.bucket_counts, [1, 0, 2]);
        assert_eq!(p.explicit_bounds, [1.0, 2.0]);
        assert_eq!(p.start_time_unix_nano, 1_700_000_000_000_000_000);
        assert_eq!(p.time_unix_nano, 1_700_000_005_000_000_000);
        assert_eq!(attr(&p.attributes, "k"), &Pv::StringValue("a".into()));
        assert_eq!(h.data_points[1].count, 0);
        let Some(Data::Sum(s)) = &c.data else {
            panic!("a sum")
        };
        assert!(s.is_monotonic);
        assert_eq!(s.aggregation_temporality, 2);
        assert_eq!(s.data_points[0].value, Some(N::AsDouble(0.25)));
        assert_eq!(
            attr(&s.data_points[0].attributes, "route"),
            &Pv::StringValue("r".into())
        );
    }

    #[test]
    fn a_string_attribute_written_in_one_pass_equals_the_nested_form() {
        for n in [0, 1, 100, 127, 128, 200, MAX_VALUE] {
            let (k, v) = ("k".repeat(n / 2 + 1), "v".repeat(n));
            let (mut fast, mut nested_form) = (Vec::new(), Vec::new());
            Attributes {
                buf: &mut fast,
                field: 9,
            }
            .str(&k, &v);
            Attributes {
                buf: &mut nested_form,
                field: 9,
            }
            .kv(&k, |b| bytes(b, 1, v.as_bytes()));
            assert!(fast == nested_form, "{n}");
        }
        for v in [0, 1, 127, 128, 16_383, 16_384, usize::MAX] {
            let mut b = Vec::new();
            varint(&mut b, v as u64);
            assert_eq!(varint_len(v), b.len(), "{v}");
        }
    }

    #[test]
    fn string_values_are_capped_at_a_character_boundary() {
        let long = "é".repeat(MAX_VALUE);
        let cut = capped(&long);
        assert!(
            cut.len() <= MAX_VALUE && cut.len() > MAX_VALUE - 2,
            "{}",
            cut.len()
        );
        assert!(long.starts_with(cut));
        assert_eq!(capped("short"), "short");
    }

    #[test]
    fn lengths_of_every_size_are_written_in_front() {
        for n in [0, 1, 127, 128, 300, 16_383, 16_384, 70_000] {
            let mut b = vec![0xAA];
            nested(&mut b, 1, |b| b.extend(std::iter::repeat_n(7, n)));
            let mut rest = &b[2..];
            let len = prost::encoding::decode_varint(&mut rest).unwrap();
            assert_eq!(len as usize, n);
            assert_eq!(rest.len(), n);
            assert_eq!((b[0], b[1]), (0xAA, 0x0A));
        }
    }
}
