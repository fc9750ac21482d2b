//! The response cache (pipeline step 10): a route's `cache` policy, the keys of a request,
//! and the tiers that hold answers — a bounded in-memory tier in each proxy in front of Redis,
//! which the fleet shares. Redis answering slowly or not at all bypasses the cache, counted,
//! never an error.
//!
//! - `key`: the exact key, a SHA-256 over the route, the scope (the key, a key label's value,
//!   or the route), the client's format and the request body normalised (every top-level
//!   field but those that do not change the answer, object keys sorted). In semantic mode
//!   also the probe: the text to compare and the vector set of the requests equal to this one
//!   in everything else, so a hit across scopes, models or parameters is impossible by
//!   construction.
//! - `embed`: the built-in embedding model (all-MiniLM-L6-v2 on candle).
//! - `memory`: the proxy's tier (answers; vectors when there is no Redis).
//! - `redis`: the fleet's tier (answers, vector sets, per-scope bounds).
//!
//! What is stored is a complete, successful, non-streamed answer in the client's format,
//! before the response-phase guardrails (they run again on every hit). A streamed request
//! that hits gets the answer replayed as a stream in its dialect, with usage.

pub mod embed;
pub(crate) mod key;
mod memory;
mod redis;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use switchyard_proto::v1 as pb;
use tokio::sync::watch;

use crate::llm::observe::{End, Ending, Observer};
use crate::llm::{Block, Delta, Event};
use crate::llm::{Format, Part, Response, Usage};
use crate::telemetry::CacheResult;
use crate::telemetry::metrics::{CacheLabels, Metrics};

/// A route's cache policy, compiled.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub ttl: Duration,
    pub scope: Scope,
    /// Requests above this temperature are not cached (absent temperature counts as 1).
    pub max_temperature: Option<f64>,
    /// Streamed requests may be served from the cache.
    pub streaming: bool,
    /// Answers kept per scope.
    pub max_entries: Option<u64>,
    /// Semantic mode.
    pub semantic: Option<Semantic>,
}

/// Whose requests share answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    Key,
    /// Keys with the same value of this label.
    Label(String),
    Route,
}

/// How a semantic route compares requests.
#[derive(Clone, Debug, PartialEq)]
pub struct Semantic {
    /// The least cosine similarity of a hit.
    pub threshold: f32,
    pub text: Text,
    /// What makes the vectors ([`BUILTIN`], or `pool=<id> model=<name>`): part of every
    /// vector set's name, so vectors of two models are never compared.
    pub source: String,
}

/// The [`Semantic::source`] of the built-in model.
pub const BUILTIN: &str = "builtin";

/// Which text is compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Text {
    LastUserMessage,
    Conversation,
}

/// Why a tier or the embedding model failed: counted, and the request served as if there
/// were no cache (at start: the data plane does not start).
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The parse error may echo the URL (and its password): only its category is kept.
    #[error("cache redis: invalid URL ({0:?})")]
    InvalidUrl(::redis::ErrorKind),
    #[error("timed out")]
    Timeout,
    #[error(transparent)]
    Redis(#[from] ::redis::RedisError),
    #[error("a vector search answered in an unexpected shape")]
    Shape(#[from] ::redis::ParsingError),
    #[error("a vector search answered a score that is not a number")]
    Score(#[from] std::num::ParseFloatError),
    #[error("memory tier")]
    Memory(#[from] moka::PredicateError),
    #[error(transparent)]
    Model(#[from] embed::ModelError),
}

/// Why a route's cache policy cannot run here.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error(
        "semantic caching needs an embedding model: start the data plane with --embedding-model"
    )]
    NoEmbeddingModel,
    #[error("cache scope Label needs a label")]
    NoScopeLabel,
}

impl Policy {
    /// `None`: caching is off. `can_embed`: this data plane runs an embedding model.
    pub fn from_proto(
        c: Option<&pb::CachePolicy>,
        can_embed: bool,
    ) -> Result<Option<Self>, PolicyError> {
        let Some(c) = c else { return Ok(None) };
        let semantic = match c.mode() {
            pb::CacheMode::Off => return Ok(None),
            pb::CacheMode::Exact => None,
            pb::CacheMode::Semantic if !can_embed && c.embedding_pool.is_empty() => {
                return Err(PolicyError::NoEmbeddingModel);
            }
            pb::CacheMode::Semantic => Some(Semantic {
                threshold: c.similarity_threshold as f32,
                text: match c.text() {
                    pb::CacheText::LastUserMessage => Text::LastUserMessage,
                    pb::CacheText::Conversation => Text::Conversation,
                },
                source: if c.embedding_pool.is_empty() {
                    BUILTIN.to_owned()
                } else {
                    format!("pool={} model={}", c.embedding_pool, c.embedding_model)
                },
            }),
        };
        let scope = match c.scope() {
            pb::CacheScope::Key => Scope::Key,
            pb::CacheScope::Route => Scope::Route,
            pb::CacheScope::Label if c.scope_label.is_empty() => {
                return Err(PolicyError::NoScopeLabel);
            }
            pb::CacheScope::Label => Scope::Label(c.scope_label.clone()),
        };
        Ok(Some(Self {
            ttl: Duration::from_millis(c.ttl_ms.max(1)),
            scope,
            max_temperature: c.max_temperature,
            streaming: !c.skip_streaming,
            max_entries: (c.max_entries > 0).then_some(c.max_entries),
            semantic,
        }))
    }
}

/// A stored answer: the client-format body and what it used.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub format: Format,
    pub usage: Usage,
    pub body: Bytes,
    pub ttl: Duration,
}

impl Entry {
    /// `v1 <format> <input> <output>\n<body>`.
    fn encode(&self) -> Vec<u8> {
        let mut out = format!(
            "v1 {} {} {}\n",
            self.format.label(),
            self.usage.input,
            self.usage.output
        )
        .into_bytes();
        out.extend_from_slice(&self.body);
        out
    }

    fn decode(bytes: &[u8], ttl: Duration) -> Option<Self> {
        let nl = memchr::memchr(b'\n', bytes)?;
        let head = std::str::from_utf8(&bytes[..nl]).ok()?;
        let mut parts = head.split(' ');
        if parts.next()? != "v1" {
            return None;
        }
        let format = Format::from_label(parts.next()?)?;
        let input = parts.next()?.parse().ok()?;
        let output = parts.next()?.parse().ok()?;
        Some(Self {
            format,
            usage: Usage::new(input, output),
            body: Bytes::copy_from_slice(&bytes[nl + 1..]),
            ttl,
        })
    }

    fn weight(&self) -> u32 {
        u32::try_from(self.body.len() + 96).unwrap_or(u32::MAX)
    }
}

/// The nearest stored request of a vector set.
#[derive(Debug)]
pub(crate) struct Found {
    /// Its exact key (empty when Redis found its answer gone).
    key: String,
    similarity: f32,
    /// Its answer, when the index had it at hand.
    entry: Option<Arc<Entry>>,
}

/// Nearest-neighbour search over vector sets: in Redis for a fleet, in memory (HNSW) for a
/// standalone proxy. `scope` is the set's scope prefix.
pub(crate) trait VectorIndex: Send + Sync {
    fn search<'a>(
        &'a self,
        set: &'a str,
        vector: &'a [f32],
        scope: &'a str,
    ) -> futures_util::future::BoxFuture<'a, Result<Option<Found>, CacheError>>;
}

/// The embedding model, loaded on first use (a proxy whose routes do not compare meanings
/// never holds it).
struct Embedder {
    dir: PathBuf,
    model: tokio::sync::OnceCell<Result<Arc<embed::Model>, embed::ModelError>>,
}

impl Embedder {
    async fn model(&self) -> Result<&Arc<embed::Model>, &embed::ModelError> {
        self.model
            .get_or_init(|| async {
                let dir = self.dir.clone();
                let loaded = tokio::task::spawn_blocking(move || embed::Model::load(&dir))
                    .await
                    .map_err(embed::ModelError::from)
                    .and_then(|r| r.map(Arc::new));
                match &loaded {
                    Ok(m) => tracing::info!(dir = %self.dir.display(), dimensions = m.dimensions(), "embedding model loaded"),
                    Err(e) => tracing::error!(error = %crate::error::chain(e), "the embedding model did not load: semantic lookups are bypassed"),
                }
                loaded
            })
            .await
            .as_ref()
    }
}

/// The tiers.
pub struct Cache {
    memory: memory::MemoryTier,
    /// Identical requests missing at once in this proxy.
    flights: Flights,
    redis: Option<redis::RedisTier>,
    embedder: Option<Embedder>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("memory_entries", &self.memory.entries.entry_count())
            .field("redis", &self.redis.is_some())
            .field("embedding_model", &self.embedder.as_ref().map(|e| &e.dir))
            .finish()
    }
}

/// What a lookup found.
#[derive(Debug)]
pub enum Lookup {
    /// An answer: the request's own, or (with a similarity) a request's that means the same.
    Hit {
        entry: Arc<Entry>,
        similarity: Option<f32>,
    },
    /// Nothing; the request's embedding, when one was made, for the fill.
    Miss { vector: Option<Vec<f32>> },
    /// A tier or the model did not answer: served as if there were no cache.
    Bypass,
}

/// What a fill stores besides the answer.
#[derive(Debug)]
pub struct Fill {
    pub key: key::Key,
    pub vector: Option<Vec<f32>>,
}

/// Identical requests (one exact key) missing the cache in this proxy at once: the first
/// goes upstream and leads, the others wait for it and look again (single flight), so a
/// stampede costs one upstream call. The key holds the route and the cache's scope, so only
/// requests that could share the answer anyway wait for each other.
#[derive(Debug, Default)]
struct Flights(std::sync::Mutex<std::collections::HashMap<String, watch::Receiver<()>>>);

/// A request's place in its flight.
#[derive(Debug)]
pub enum Flight {
    /// It goes upstream; the others wait until this is dropped (once its answer is stored,
    /// or it failed).
    Leader(Leader),
    /// Another request goes upstream: wait for it ([`Flight::wait`]), then look again.
    Follower(watch::Receiver<()>),
}

/// The leading request of a flight: dropping it releases the requests waiting.
#[derive(Debug)]
pub struct Leader {
    cache: Arc<Cache>,
    key: String,
    _done: watch::Sender<()>,
}

impl Drop for Leader {
    fn drop(&mut self) {
        self.cache
            .flights
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.key);
    }
}

impl Flight {
    /// Waits for the leader, at most `limit`; whether it ended in time.
    pub async fn wait(mut rx: watch::Receiver<()>, limit: Duration) -> bool {
        // No value is ever sent: `changed` returns when the leader's sender drops.
        tokio::time::timeout(limit, rx.changed()).await.is_ok()
    }
}

impl Cache {
    /// A cache with `memory_bytes` in this proxy, with `redis` the fleet's tier (URL, whether
    /// it lists a cluster's seed nodes, timeout), and with `embedding_model` the semantic
    /// cache's model directory.
    pub async fn new(
        memory_bytes: u64,
        redis: Option<(&str, bool, Duration)>,
        embedding_model: Option<PathBuf>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, CacheError> {
        let redis = match redis {
            None => None,
            Some((url, cluster, timeout)) => Some(redis::RedisTier::new(url, cluster, timeout)?),
        };
        if let Some(dir) = &embedding_model {
            // Fail at start, not on the first semantic request.
            embed::check_dir(dir)?;
        }
        Ok(Self {
            memory: memory::MemoryTier::new(memory_bytes),
            flights: Flights::default(),
            redis,
            embedder: embedding_model.map(|dir| Embedder {
                dir,
                model: tokio::sync::OnceCell::new(),
            }),
            metrics,
        })
    }

    /// Joins the flight of requests missing `key` in this proxy.
    pub fn join(self: &Arc<Self>, key: &str) -> Flight {
        let mut flights = self
            .flights
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(rx) = flights.get(key) {
            self.metrics.cache_coalesced.inc();
            return Flight::Follower(rx.clone());
        }
        let (tx, rx) = watch::channel(());
        flights.insert(key.to_owned(), rx);
        Flight::Leader(Leader {
            cache: self.clone(),
            key: key.to_owned(),
            _done: tx,
        })
    }

    /// Whether semantic routes can run here.
    pub fn can_embed(&self) -> bool {
        self.embedder.is_some()
    }

    fn failed(&self, op: &'static str, e: &dyn std::error::Error) {
        self.metrics
            .cache_errors
            .get_or_create(&crate::telemetry::metrics::OpLabels { op })
            .inc();
        tracing::debug!(op, error = %crate::error::chain(e), "cache step failed; bypassed");
    }

    /// The stored answer for `key`: this proxy's memory first, then Redis (kept in memory
    /// after). `Err`: Redis did not answer (the lookup is bypassed).
    pub async fn get(&self, key: &str, ttl: Duration) -> Result<Option<Arc<Entry>>, ()> {
        if let Some(e) = self.memory.entries.get(key) {
            return Ok(Some(e));
        }
        let Some(r) = &self.redis else {
            return Ok(None);
        };
        match r.get(key).await {
            Ok(Some(bytes)) => match Entry::decode(&bytes, ttl) {
                Some(e) => {
                    let e = Arc::new(e);
                    self.memory.entries.insert(key.to_owned(), e.clone());
                    Ok(Some(e))
                }
                None => Ok(None),
            },
            Ok(None) => Ok(None),
            Err(e) => {
                self.failed("get", &e);
                Err(())
            }
        }
    }

    /// Looks a request's exact key up.
    pub async fn exact(&self, policy: &Policy, key: &key::Key) -> Lookup {
        match self.get(&key.exact, policy.ttl).await {
            Ok(Some(entry)) => Lookup::Hit {
                entry,
                similarity: None,
            },
            Ok(None) => Lookup::Miss { vector: None },
            Err(()) => Lookup::Bypass,
        }
    }

    /// Looks for the stored request nearest to `vector` (the embedding of the key's probe) in
    /// its vector set.
    pub async fn nearest(&self, policy: &Policy, key: &key::Key, vector: Vec<f32>) -> Lookup {
        let (Some(semantic), Some(probe)) = (&policy.semantic, &key.probe) else {
            return Lookup::Miss { vector: None };
        };
        let index: &dyn VectorIndex = match &self.redis {
            Some(r) => r,
            None => &self.memory,
        };
        let found = match index.search(&probe.set, &vector, &key.scope).await {
            Ok(f) => f,
            Err(e) => {
                self.failed("search", &e);
                return Lookup::Bypass;
            }
        };
        if let Some(f) = &found {
            self.metrics
                .cache_similarity
                .observe(f64::from(f.similarity));
        }
        match found {
            Some(f) if f.similarity >= semantic.threshold && !f.key.is_empty() => {
                let entry = match f.entry {
                    Some(e) => Some(Arc::new(Entry {
                        ttl: policy.ttl,
                        ..(*e).clone()
                    })),
                    None => self.memory.entries.get(&f.key),
                };
                match entry {
                    Some(entry) => Lookup::Hit {
                        entry,
                        similarity: Some(f.similarity),
                    },
                    None => Lookup::Miss {
                        vector: Some(vector),
                    },
                }
            }
            _ => Lookup::Miss {
                vector: Some(vector),
            },
        }
    }

    /// The built-in model's embedding of `text`; `None` (counted) when it cannot make one.
    pub async fn embed(&self, text: &str) -> Option<Vec<f32>> {
        let model = match self.embedder.as_ref()?.model().await {
            Ok(m) => m,
            Err(e) => {
                self.failed("embed", e);
                return None;
            }
        };
        let start = Instant::now();
        let made = model.embed(text.to_owned()).await.map(|(v, _)| v);
        self.embedded(text, start, made)
    }

    /// Counts an embedding made here or by a pool: its time and text, or its failure.
    pub fn embedded<E: std::error::Error>(
        &self,
        text: &str,
        start: Instant,
        made: Result<Vec<f32>, E>,
    ) -> Option<Vec<f32>> {
        match made {
            Ok(v) => {
                self.metrics
                    .cache_embedding_duration
                    .observe(start.elapsed().as_secs_f64());
                self.metrics.cache_embedded_bytes.inc_by(text.len() as u64);
                Some(v)
            }
            Err(e) => {
                self.failed("embed", &e);
                None
            }
        }
    }

    /// Stores an answer in both tiers (the Redis write, and an embedding the lookup did not
    /// make, happen in the background).
    pub fn put(self: &Arc<Self>, policy: &Policy, fill: Fill, entry: Entry) {
        self.metrics.cache_fills.inc();
        let entry = Arc::new(entry);
        let max = policy.max_entries;
        // A fill without the lookup's vector (`no-cache`) embeds it here, with the built-in
        // model only: a pool's route stores the answer without it.
        let probe = fill.key.probe.clone().filter(|_| {
            policy
                .semantic
                .as_ref()
                .is_some_and(|s| s.source == BUILTIN)
        });
        if probe.is_none() || fill.vector.is_some() {
            self.store(fill.key, fill.vector, entry, max);
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            let vector = match &probe {
                Some(p) => me.embed(&p.text).await,
                None => None,
            };
            me.store(fill.key, vector, entry, max);
        });
    }

    fn store(
        self: &Arc<Self>,
        key: key::Key,
        vector: Option<Vec<f32>>,
        entry: Arc<Entry>,
        max: Option<u64>,
    ) {
        let set = key.probe.as_ref().map(|p| p.set.as_str());
        match &self.redis {
            None => self
                .memory
                .put(&key.scope, key.exact.clone(), entry, max, set.zip(vector)),
            Some(_) => {
                self.memory
                    .put(&key.scope, key.exact.clone(), entry.clone(), max, None);
                let me = self.clone();
                tokio::spawn(async move {
                    let Some(r) = &me.redis else { return };
                    let set = key.probe.as_ref().map(|p| p.set.as_str());
                    if let Err(e) = r
                        .put(
                            &key.scope,
                            &key.exact,
                            entry.encode(),
                            entry.ttl,
                            max,
                            set.zip(vector.as_deref()),
                        )
                        .await
                    {
                        me.failed("put", &e);
                    }
                });
            }
        }
    }

    /// Counts what a hit saved: its tokens, and their cost at `price` (the route's first
    /// backend's, when it has one).
    pub fn saved(&self, usage: &Usage, price: Option<crate::llm::Price>) {
        self.metrics.cache_tokens_saved.inc_by(usage.total());
        if let Some(price) = price {
            self.metrics
                .cache_cost_saved
                .inc_by(price.cost_nanos(usage) as f64 / 1e9);
        }
    }

    /// Counts a lookup's outcome on a route.
    pub fn count(&self, route: &str, outcome: CacheResult) {
        self.metrics
            .cache_lookups
            .get_or_create(&CacheLabels {
                route: route.to_owned(),
                result: outcome.name(),
            })
            .inc();
    }

    /// Removes a route's entries and vectors (or one scope's), in memory and in Redis.
    /// Returns how many keys Redis deleted.
    pub async fn purge(&self, route: &str, scope: Option<&str>) -> Result<u64, CacheError> {
        let prefix = key::prefix(route, scope);
        self.memory.purge(&prefix)?;
        let Some(r) = &self.redis else { return Ok(0) };
        r.delete_matching(&format!("{}*", key::glob_escape(&prefix)))
            .await
    }
}

/// A streamed miss on its way to the cache: the events the client got, gathered into the
/// whole answer they make (the inverse of [`replay`]), and what stores it once the stream
/// completed. A stream that breaks off or is blocked drops its record: nothing is stored.
pub struct Record {
    answer: Assembler,
    store: Option<Box<dyn FnOnce(Response) + Send>>,
}

impl std::fmt::Debug for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Record").finish_non_exhaustive()
    }
}

impl Record {
    /// Records into `store`, which gets the whole answer.
    pub fn new(store: impl FnOnce(Response) + Send + 'static) -> Self {
        Self {
            answer: Assembler::default(),
            store: Some(Box::new(store)),
        }
    }
}

impl Observer for Record {
    fn on_event(&mut self, ev: &Event) {
        self.answer.event(ev);
    }

    /// A stream that completed is stored (if it finished and was not too big); one that
    /// broke off or was blocked is not.
    fn on_end(&mut self, end: &End) {
        if end.how != Ending::Complete {
            return;
        }
        if let (Some(store), Some(r)) =
            (self.store.take(), std::mem::take(&mut self.answer).finish())
        {
            store(r);
        }
    }
}

/// The most of a streamed answer gathered for the cache (its texts, arguments and
/// signatures together); a longer answer is passed on and not stored.
const MAX_STREAM_RECORD: usize = 8 << 20;

/// The most blocks a streamed answer gathered for the cache may have.
const MAX_STREAM_PARTS: usize = 256;

/// Stream events gathered into a [`Response`].
#[derive(Debug, Default)]
struct Assembler {
    id: String,
    model: String,
    /// Parts by block index.
    parts: Vec<(usize, Part)>,
    usage: Usage,
    finish: Option<crate::llm::Finish>,
    /// The bytes gathered so far.
    size: usize,
    /// The answer outgrew [`MAX_STREAM_RECORD`] or [`MAX_STREAM_PARTS`]: nothing more is
    /// gathered and nothing is stored.
    abandoned: bool,
}

impl Assembler {
    fn event(&mut self, ev: &Event) {
        if self.abandoned {
            return;
        }
        self.size += match ev {
            Event::Start { id, model } => id.len() + model.len(),
            Event::BlockStart { block, .. } => match block {
                Block::RedactedThinking { data } => data.len(),
                Block::ToolCall { id, name } => id.len() + name.len(),
                Block::Text | Block::Thinking => 0,
            },
            Event::Delta { delta, .. } => match delta {
                Delta::Text(t) | Delta::Thinking(t) | Delta::Signature(t) | Delta::ToolArgs(t) => {
                    t.len()
                }
            },
            _ => 0,
        };
        if self.size > MAX_STREAM_RECORD
            || (matches!(ev, Event::BlockStart { .. }) && self.parts.len() >= MAX_STREAM_PARTS)
        {
            tracing::debug!("a streamed answer too big to cache is passed on unstored");
            *self = Self {
                abandoned: true,
                ..Self::default()
            };
            return;
        }
        match ev {
            Event::Start { id, model } => {
                id.clone_into(&mut self.id);
                model.clone_into(&mut self.model);
            }
            Event::BlockStart { index, block } => {
                let part = match block {
                    Block::Text => Part::text(""),
                    Block::Thinking => Part::Thinking {
                        text: String::new(),
                        signature: None,
                    },
                    Block::RedactedThinking { data } => {
                        Part::RedactedThinking { data: data.clone() }
                    }
                    Block::ToolCall { id, name } => Part::ToolCall(crate::llm::ToolCall {
                        id: id.clone(),
                        name: name.clone(),
                        arguments: String::new(),
                        signature: None,
                    }),
                };
                self.parts.push((*index, part));
            }
            Event::Delta { index, delta } => {
                let Some((_, part)) = self.parts.iter_mut().rev().find(|(i, _)| i == index) else {
                    return;
                };
                match (part, delta) {
                    (Part::Text { text, .. }, Delta::Text(t))
                    | (Part::Thinking { text, .. }, Delta::Thinking(t)) => text.push_str(t),
                    (Part::Thinking { signature, .. }, Delta::Signature(s)) => {
                        signature.get_or_insert_default().push_str(s);
                    }
                    (Part::ToolCall(c), Delta::ToolArgs(a)) => c.arguments.push_str(a),
                    (Part::ToolCall(c), Delta::Signature(s)) => {
                        c.signature.get_or_insert_default().push_str(s);
                    }
                    _ => {}
                }
            }
            Event::Usage(u) => self.usage.merge(*u),
            Event::Finish(f) => self.finish = Some(f.clone()),
            Event::BlockStop { .. } | Event::Ping => {}
        }
    }

    /// The answer; `None` when it never finished or was abandoned.
    fn finish(self) -> Option<Response> {
        if self.abandoned {
            return None;
        }
        Some(Response {
            id: self.id,
            model: self.model,
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            parts: self.parts.into_iter().map(|(_, p)| p).collect(),
            finish: self.finish?,
            usage: self.usage,
        })
    }
}

/// A stored answer as stream events, for a streamed request that hits: the answer's blocks
/// in order, its usage and its finish.
pub fn replay(r: &Response) -> Vec<Event> {
    let mut out = vec![Event::Start {
        id: r.id.clone(),
        model: r.model.clone(),
    }];
    let mut index = 0;
    let mut block = |out: &mut Vec<Event>, block: Block, deltas: Vec<Delta>| {
        out.push(Event::BlockStart { index, block });
        out.extend(
            deltas
                .into_iter()
                .map(|delta| Event::Delta { index, delta }),
        );
        out.push(Event::BlockStop { index });
        index += 1;
    };
    for p in &r.parts {
        match p {
            Part::Text { text, .. } => {
                block(&mut out, Block::Text, vec![Delta::Text(text.clone())])
            }
            Part::Thinking { text, signature } => {
                let mut d = vec![Delta::Thinking(text.clone())];
                d.extend(signature.clone().map(Delta::Signature));
                block(&mut out, Block::Thinking, d);
            }
            Part::RedactedThinking { data } => block(
                &mut out,
                Block::RedactedThinking { data: data.clone() },
                Vec::new(),
            ),
            Part::ToolCall(c) => block(
                &mut out,
                Block::ToolCall {
                    id: c.id.clone(),
                    name: c.name.clone(),
                },
                vec![Delta::ToolArgs(c.arguments.clone())],
            ),
            _ => {}
        }
    }
    out.push(Event::Usage(r.usage));
    out.push(Event::Finish(r.finish.clone()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replayed_answer_is_assembled_back() {
        let r = Response {
            id: "id-1".into(),
            model: "m".into(),
            created: 0,
            parts: vec![
                Part::Thinking {
                    text: "hmm".into(),
                    signature: Some("sig".into()),
                },
                Part::text("hello"),
                Part::ToolCall(crate::llm::ToolCall {
                    id: "t1".into(),
                    name: "f".into(),
                    arguments: "{\"a\":1}".into(),
                    signature: None,
                }),
            ],
            finish: crate::llm::Finish::default(),
            usage: Usage::new(3, 4),
        };
        let mut a = Assembler::default();
        for ev in replay(&r) {
            a.event(&ev);
        }
        let back = a.finish().expect("finished");
        assert_eq!((back.id.as_str(), back.model.as_str()), ("id-1", "m"));
        assert_eq!((back.parts, back.usage), (r.parts, r.usage));
        let mut unfinished = Assembler::default();
        unfinished.event(&Event::Start {
            id: "x".into(),
            model: "m".into(),
        });
        assert!(unfinished.finish().is_none(), "no finish, nothing stored");
    }

    /// A streamed answer too big to keep (in bytes or in blocks) is passed on unstored,
    /// and what was gathered is let go as soon as it is too big.
    #[test]
    fn streamed_answers_too_big_are_not_stored() {
        let finish = Event::Finish(crate::llm::Finish::default());
        let text = |index| Event::BlockStart {
            index,
            block: Block::Text,
        };
        let delta = |t: &str| Event::Delta {
            index: 0,
            delta: Delta::Text(t.to_owned()),
        };
        let mut big = Assembler::default();
        big.event(&text(0));
        let piece = "x".repeat(1 << 20);
        for _ in 0..(MAX_STREAM_RECORD >> 20) {
            big.event(&delta(&piece));
        }
        big.event(&delta("one more byte"));
        assert!(big.parts.is_empty(), "gathered text let go");
        big.event(&finish);
        assert!(big.finish().is_none(), "too long, not stored");
        let mut many = Assembler::default();
        for i in 0..=MAX_STREAM_PARTS {
            many.event(&text(i));
        }
        many.event(&finish);
        assert!(many.finish().is_none(), "too many blocks, not stored");
        let mut fits = Assembler::default();
        for i in 0..MAX_STREAM_PARTS {
            fits.event(&text(i));
        }
        fits.event(&finish);
        assert_eq!(fits.finish().expect("stored").parts.len(), MAX_STREAM_PARTS);
    }

    #[test]
    fn semantic_routes_need_a_model_here() {
        let proto = pb::CachePolicy {
            mode: pb::CacheMode::Semantic.into(),
            ttl_ms: 1000,
            similarity_threshold: 0.8,
            text: pb::CacheText::Conversation.into(),
            max_entries: 7,
            ..Default::default()
        };
        let refused = Policy::from_proto(Some(&proto), false).expect_err("no model");
        assert!(
            refused.to_string().contains("--embedding-model"),
            "{refused}"
        );
        let p = Policy::from_proto(Some(&proto), true)
            .expect("valid")
            .expect("on");
        assert_eq!(
            (p.semantic, p.max_entries),
            (
                Some(Semantic {
                    threshold: 0.8,
                    text: Text::Conversation,
                    source: "builtin".into(),
                }),
                Some(7)
            )
        );
    }

    #[test]
    fn entries_round_trip() {
        let e = Entry {
            format: Format::AnthropicMessages,
            usage: Usage::new(12, 34),
            body: Bytes::from_static(b"{\"a\":\n1}"),
            ttl: Duration::from_secs(5),
        };
        assert_eq!(Entry::decode(&e.encode(), e.ttl), Some(e));
        assert_eq!(Entry::decode(b"v2 x 1 2\n{}", Duration::ZERO), None);
        assert_eq!(Entry::decode(b"garbage", Duration::ZERO), None);
    }
}
