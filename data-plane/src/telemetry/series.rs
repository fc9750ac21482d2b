//! Where the GenAI metrics' values live: histograms and label-keyed series that `/metrics`
//! encodes (they are prometheus-client metrics) and the OTLP export reads, so a request
//! records each value once, whichever way it leaves.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// A histogram over fixed bounds, its counts in atomics (no lock on the request path).
#[derive(Debug, Clone)]
pub struct Hist(Arc<HistInner>);

#[derive(Debug)]
struct HistInner {
    bounds: &'static [f64],
    /// One per bound, then one for what is above every bound.
    counts: Box<[AtomicU64]>,
    /// The sum of what was observed, as `f64` bits.
    sum: AtomicU64,
}

/// What a histogram holds at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub sum: f64,
    /// Per bucket, not cumulative; the last is above every bound.
    pub counts: Vec<u64>,
}

impl Snapshot {
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

impl Hist {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self(Arc::new(HistInner {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }))
    }

    /// Counts `v` in the first bucket whose bound is at least `v` (not a number: ignored).
    pub fn observe(&self, v: f64) {
        if v.is_nan() {
            return;
        }
        let h = &*self.0;
        let i = h.bounds.partition_point(|b| *b < v);
        h.counts[i].fetch_add(1, Ordering::Relaxed);
        let _ = h
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
                Some((f64::from_bits(s) + v).to_bits())
            });
    }

    pub fn bounds(&self) -> &'static [f64] {
        self.0.bounds
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            sum: f64::from_bits(self.0.sum.load(Ordering::Relaxed)),
            counts: self
                .0
                .counts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
        }
    }
}

impl TypedMetric for Hist {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Hist {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let s = self.snapshot();
        // prometheus-client's form: per-bucket counts, the last bucket bounded by f64::MAX
        // (written `+Inf`).
        let buckets: Vec<(f64, u64)> = self
            .0
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::MAX))
            .zip(s.counts.iter().copied())
            .collect();
        encoder.encode_histogram::<NoLabelSet>(s.sum, s.count(), &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Metrics by label set, made on first use: prometheus-client's `Family`, but readable
/// whole ([`Series::each`]) for the OTLP export.
#[derive(Debug)]
pub struct Series<L, M> {
    inner: Arc<SeriesInner<L, M>>,
}

#[derive(Debug)]
struct SeriesInner<L, M> {
    /// foldhash: the label sets are the config's (routes, models, providers), never a
    /// client's free text (`RouteTable::model_label`).
    map: RwLock<HashMap<L, M, foldhash::fast::RandomState>>,
    make: fn() -> M,
}

impl<L, M> Clone for Series<L, M> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<L: Clone + Hash + Eq, M: Clone> Series<L, M> {
    pub fn new(make: fn() -> M) -> Self {
        Self {
            inner: Arc::new(SeriesInner {
                map: RwLock::default(),
                make,
            }),
        }
    }

    /// The metric of `labels` (a handle: clones share their values).
    pub fn get_or_create(&self, labels: &L) -> M {
        if let Some(m) = self
            .inner
            .map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(labels)
        {
            return m.clone();
        }
        self.inner
            .map
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(labels.clone())
            .or_insert_with(self.inner.make)
            .clone()
    }

    /// Every series, in no particular order.
    pub fn each(&self, mut f: impl FnMut(&L, &M)) {
        let map = self.inner.map.read().unwrap_or_else(|p| p.into_inner());
        for (l, m) in map.iter() {
            f(l, m);
        }
    }
}

impl<L, M: TypedMetric> TypedMetric for Series<L, M> {
    const TYPE: MetricType = M::TYPE;
}

impl<L, M> EncodeMetric for Series<L, M>
where
    L: Clone + Hash + Eq + EncodeLabelSet + std::fmt::Debug,
    M: EncodeMetric + TypedMetric + std::fmt::Debug,
{
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let map = self.inner.map.read().unwrap_or_else(|p| p.into_inner());
        for (labels, m) in map.iter() {
            m.encode(encoder.encode_family(labels)?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        M::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_lands_in_the_first_bucket_whose_bound_holds_it() {
        const BOUNDS: [f64; 3] = [1.0, 2.0, 5.0];
        let h = Hist::new(&BOUNDS);
        for v in [0.5, 1.0, 1.5, 5.0, 7.0, f64::NAN] {
            h.observe(v);
        }
        let s = h.snapshot();
        assert_eq!(
            s.counts,
            [2, 1, 1, 1],
            "bounds are inclusive; NaN is ignored"
        );
        assert_eq!(s.count(), 5);
        assert!((s.sum - 15.0).abs() < 1e-9);
    }

    #[test]
    fn series_share_values_and_encode_as_prometheus_histograms() {
        const BOUNDS: [f64; 2] = [1.0, 2.0];
        #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
        struct L {
            k: &'static str,
        }
        let s: Series<L, Hist> = Series::new(|| Hist::new(&BOUNDS));
        s.get_or_create(&L { k: "a" }).observe(1.5);
        s.get_or_create(&L { k: "a" }).observe(3.0);
        s.get_or_create(&L { k: "b" }).observe(0.1);
        let mut seen = Vec::new();
        s.each(|l, h| seen.push((l.k, h.snapshot().count())));
        seen.sort_unstable();
        assert_eq!(seen, [("a", 2), ("b", 1)]);
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("h", "help", s);
        let mut text = String::new();
        prometheus_client::encoding::text::encode_registry(&mut text, &registry).unwrap();
        for line in [
            "h_bucket{le=\"1.0\",k=\"a\"} 0",
            "h_bucket{le=\"2.0\",k=\"a\"} 1",
            "h_bucket{le=\"+Inf\",k=\"a\"} 2",
            "h_count{k=\"a\"} 2",
            "h_sum{k=\"a\"} 4.5",
            "h_count{k=\"b\"} 1",
        ] {
            assert!(text.contains(line), "{line} in:\n{text}");
        }
    }
}
