//! The tier in each proxy's memory: answers in `moka` (weighed in bytes, each with its
//! route's TTL), the order of a scope's answers when the route bounds their count, and — when
//! there is no Redis — the semantic cache's vectors in one HNSW graph per vector set
//! (`hnsw_rs`). An HNSW graph cannot forget a point, so expired and evicted vectors are
//! filtered out of searches and the graph is rebuilt from the live ones once they are the
//! minority.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use hnsw_rs::prelude::{Distance, Hnsw};

use super::{Entry, Found, VectorIndex};

/// Vectors kept per set when the route sets no `maxEntries`.
const DEFAULT_MAX_VECTORS: usize = 10_000;

/// Per-entry expiry: each entry lives its route's TTL.
struct Ttl;

impl moka::Expiry<String, Arc<Entry>> for Ttl {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &Arc<Entry>,
        _now: Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// The memory tier.
pub(super) struct MemoryTier {
    pub(super) entries: moka::sync::Cache<String, Arc<Entry>>,
    /// Exact keys per scope in the order they were stored (routes with `maxEntries`).
    order: Mutex<HashMap<String, VecDeque<String>>>,
    /// Vector sets (standalone only).
    sets: Mutex<HashMap<String, Arc<Mutex<VectorSet>>>>,
}

impl MemoryTier {
    pub(super) fn new(bytes: u64) -> Self {
        Self {
            entries: moka::sync::Cache::builder()
                .max_capacity(bytes)
                .weigher(|_k: &String, v: &Arc<Entry>| v.weight())
                .expire_after(Ttl)
                .support_invalidation_closures()
                .build(),
            order: Mutex::default(),
            sets: Mutex::default(),
        }
    }

    /// Stores an answer and, with a set, its vector; with `max`, the scope's oldest answers
    /// (and the set's oldest vectors) beyond it go.
    pub(super) fn put(
        &self,
        scope: &str,
        key: String,
        entry: Arc<Entry>,
        max: Option<u64>,
        vector: Option<(&str, Vec<f32>)>,
    ) {
        if let Some((set, v)) = vector {
            self.insert_vector(set, &key, v, entry.ttl, max);
        }
        self.entries.insert(key.clone(), entry);
        let Some(max) = max else { return };
        let mut order = self.order.lock().unwrap_or_else(PoisonError::into_inner);
        let keys = order.entry(scope.to_owned()).or_default();
        keys.retain(|k| *k != key && self.entries.contains_key(k));
        keys.push_back(key);
        while keys.len() as u64 > max {
            if let Some(old) = keys.pop_front() {
                self.entries.invalidate(&old);
            }
        }
    }

    /// Drops every entry and vector whose key starts with `prefix`.
    pub(super) fn purge(&self, prefix: &str) -> Result<(), moka::PredicateError> {
        let p = prefix.to_owned();
        self.entries
            .invalidate_entries_if(move |k, _| k.starts_with(&p))?;
        self.order
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|k, _| !k.starts_with(prefix));
        self.sets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|k, _| !k.starts_with(prefix));
        Ok(())
    }

    fn insert_vector(
        &self,
        set: &str,
        key: &str,
        vector: Vec<f32>,
        ttl: Duration,
        max: Option<u64>,
    ) {
        let s = {
            let mut sets = self.sets.lock().unwrap_or_else(PoisonError::into_inner);
            if !sets.contains_key(set) {
                // Sets of expired answers go when a new set is made.
                let now = Instant::now();
                sets.retain(|_, s| s.lock().unwrap_or_else(PoisonError::into_inner).live(now));
            }
            sets.entry(set.to_owned()).or_default().clone()
        };
        let max = max.map_or(DEFAULT_MAX_VECTORS, |m| {
            usize::try_from(m).unwrap_or(usize::MAX)
        });
        s.lock().unwrap_or_else(PoisonError::into_inner).insert(
            key.to_owned(),
            vector,
            Instant::now() + ttl,
            max,
        );
    }

    fn set(&self, name: &str) -> Option<Arc<Mutex<VectorSet>>> {
        self.sets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
    }
}

impl VectorIndex for MemoryTier {
    fn search<'a>(
        &'a self,
        set: &'a str,
        vector: &'a [f32],
        _scope: &'a str,
    ) -> futures_util::future::BoxFuture<'a, Result<Option<Found>, super::CacheError>> {
        let found = self.set(set).and_then(|s| {
            let s = s.lock().unwrap_or_else(PoisonError::into_inner);
            s.nearest(vector).map(|(key, similarity)| Found {
                entry: self.entries.get(&key),
                key,
                similarity,
            })
        });
        Box::pin(std::future::ready(Ok(found)))
    }
}

/// The distance of unit vectors: 1 − their dot product (the cosine), never below 0.
#[derive(Clone, Copy, Debug, Default)]
struct Dot;

impl Distance<f32> for Dot {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        (1.0 - super::embed::cosine(a, b)).max(0.0)
    }
}

/// One vector set: a graph over every vector added since it was last built, and which of
/// them still count.
struct VectorSet {
    graph: Hnsw<'static, f32, Dot>,
    points: Vec<Point>,
    live: usize,
}

struct Point {
    key: String,
    vector: Vec<f32>,
    expires: Instant,
    alive: bool,
}

/// HNSW parameters: neighbours per node, layers, and candidates kept while building and
/// searching.
const NEIGHBOURS: usize = 16;
const LAYERS: usize = 16;
const EF_BUILD: usize = 100;
const EF_SEARCH: usize = 64;

impl Default for VectorSet {
    fn default() -> Self {
        Self {
            graph: Hnsw::new(NEIGHBOURS, 1024, LAYERS, EF_BUILD, Dot),
            points: Vec::new(),
            live: 0,
        }
    }
}

impl VectorSet {
    /// Whether some vector may still be found.
    fn live(&self, now: Instant) -> bool {
        self.points.iter().any(|p| p.alive && p.expires > now)
    }

    /// The nearest live vector's key and its cosine similarity.
    fn nearest(&self, v: &[f32]) -> Option<(String, f32)> {
        let now = Instant::now();
        let points = &self.points;
        let filter = |id: &usize| points.get(*id).is_some_and(|p| p.alive && p.expires > now);
        let best = self
            .graph
            .search_filter(v, 1, EF_SEARCH, Some(&filter))
            .into_iter()
            .next()?;
        let p = points.get(best.d_id)?;
        Some((p.key.clone(), 1.0 - best.distance))
    }

    fn insert(&mut self, key: String, vector: Vec<f32>, expires: Instant, max: usize) {
        let now = Instant::now();
        for p in &mut self.points {
            if p.alive && (p.expires <= now || p.key == key) {
                p.alive = false;
                self.live -= 1;
            }
        }
        // The oldest go first.
        let mut oldest = 0;
        while self.live >= max.max(1) {
            if let Some(p) = self.points[oldest..].iter_mut().find(|p| p.alive) {
                p.alive = false;
                self.live -= 1;
            }
            oldest += 1;
        }
        if self.points.len() >= 64 && self.points.len() > 2 * self.live {
            self.rebuild();
        }
        self.graph.insert_slice((&vector, self.points.len()));
        self.points.push(Point {
            key,
            vector,
            expires,
            alive: true,
        });
        self.live += 1;
    }

    /// A new graph over the live points.
    fn rebuild(&mut self) {
        let points: Vec<Point> = std::mem::take(&mut self.points)
            .into_iter()
            .filter(|p| p.alive)
            .collect();
        self.graph = Hnsw::new(NEIGHBOURS, points.len().max(1024), LAYERS, EF_BUILD, Dot);
        for (i, p) in points.iter().enumerate() {
            self.graph.insert_slice((&p.vector, i));
        }
        self.live = points.len();
        self.points = points;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(seed: u64) -> Vec<f32> {
        let mut rng = fastrand::Rng::with_seed(seed);
        let v: Vec<f32> = (0..32).map(|_| rng.f32() - 0.5).collect();
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.into_iter().map(|x| x / n).collect()
    }

    #[test]
    fn the_nearest_live_vector_is_found_and_the_oldest_go_first() {
        let mut s = VectorSet::default();
        let far = Instant::now() + Duration::from_secs(60);
        for i in 0..200 {
            s.insert(format!("k{i}"), unit(i), far, 50);
        }
        assert_eq!(s.live, 50);
        let (key, sim) = s.nearest(&unit(199)).expect("found");
        assert_eq!(key, "k199");
        assert!(sim > 0.999, "{sim}");
        // k0..k149 were evicted: their own vector finds another key.
        let (key, _) = s.nearest(&unit(3)).expect("found");
        assert_ne!(key, "k3");
        assert!(
            s.points.len() < 200,
            "rebuilt once the dead were the majority"
        );
    }

    #[test]
    fn a_scope_keeps_at_most_its_entries_and_a_purge_empties_it() {
        let tier = MemoryTier::new(1 << 20);
        let entry = || {
            Arc::new(Entry {
                format: crate::llm::Format::OpenAiChat,
                usage: crate::llm::Usage::new(1, 1),
                body: bytes::Bytes::from_static(b"{}"),
                ttl: Duration::from_secs(60),
            })
        };
        for k in ["s:e:1", "s:e:2", "s:e:3"] {
            tier.put("s:", k.into(), entry(), Some(2), Some(("s:v:x", unit(7))));
        }
        tier.put("t:", "t:e:1".into(), entry(), Some(2), None);
        assert!(!tier.entries.contains_key("s:e:1"), "the oldest went");
        assert!(tier.entries.contains_key("s:e:2") && tier.entries.contains_key("s:e:3"));
        assert!(
            tier.entries.contains_key("t:e:1"),
            "another scope counts alone"
        );
        let set = tier.set("s:v:x").expect("a vector set");
        assert_eq!(set.lock().expect("set").live, 2);
        tier.purge("s:").expect("purge");
        assert!(tier.set("s:v:x").is_none());
        assert!(!tier.entries.contains_key("s:e:3"));
        assert!(tier.entries.contains_key("t:e:1"));
    }

    #[test]
    fn expired_vectors_are_not_found() {
        let mut s = VectorSet::default();
        s.insert("gone".into(), unit(1), Instant::now(), 10);
        assert_eq!(s.nearest(&unit(1)), None);
        assert!(!s.live(Instant::now()));
    }
}
