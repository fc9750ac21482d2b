//! The response cache (pipeline step 10): a route's `cache` policy, the key of a request, and
//! the tiers that hold answers — a bounded in-memory tier in each proxy (`moka`, weighed in
//! bytes, each entry with its route's TTL) in front of Redis, which the fleet shares. Redis
//! answering slowly or not at all bypasses the cache, counted, never an error.
//!
//! The key is a SHA-256 over the route, the scope (the key, a key label's value, or the
//! route), the client's format and the request body normalised: every top-level field but
//! those that do not change the answer (`stream`, `stream_options`, `user`, `metadata`, ...),
//! each value re-serialised with its object keys sorted, so whitespace and key order do not
//! matter. The body is the one after the request-phase guardrails.
//!
//! What is stored is a complete, successful, non-streamed answer in the client's format,
//! before the response-phase guardrails (they run again on every hit). A streamed request
//! that hits gets the answer replayed as a stream in its dialect, with usage.

pub mod key;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use switchyard_proto::v1 as pb;

use crate::llm::{Block, Delta, Event};
use crate::llm::{Format, Part, Response, Usage};
use crate::metrics::{CacheLabels, Metrics};

/// A route's cache policy, compiled.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub ttl: Duration,
    pub scope: Scope,
    /// Requests above this temperature are not cached (absent temperature counts as 1).
    pub max_temperature: Option<f64>,
    /// Streamed requests may be served from the cache.
    pub streaming: bool,
}

/// Whose requests share answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    Key,
    /// Keys with the same value of this label.
    Label(String),
    Route,
}

impl Policy {
    /// `None`: caching is off.
    pub fn from_proto(c: Option<&pb::CachePolicy>) -> Result<Option<Self>, String> {
        let Some(c) = c else { return Ok(None) };
        match c.mode() {
            pb::CacheMode::Off => return Ok(None),
            pb::CacheMode::Exact => {}
            pb::CacheMode::Semantic => {
                return Err("semantic caching is not available in this data plane".into());
            }
        }
        let scope = match c.scope() {
            pb::CacheScope::Key => Scope::Key,
            pb::CacheScope::Route => Scope::Route,
            pb::CacheScope::Label if c.scope_label.is_empty() => {
                return Err("cache scope Label needs a label".into());
            }
            pb::CacheScope::Label => Scope::Label(c.scope_label.clone()),
        };
        Ok(Some(Self {
            ttl: Duration::from_millis(c.ttl_ms.max(1)),
            scope,
            max_temperature: c.max_temperature,
            streaming: !c.skip_streaming,
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

/// Per-entry expiry: each entry lives its route's TTL.
struct Ttl;

impl moka::Expiry<String, Arc<Entry>> for Ttl {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &Arc<Entry>,
        _now: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// The tiers.
pub struct Cache {
    memory: moka::sync::Cache<String, Arc<Entry>>,
    redis: Option<RedisTier>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("memory_entries", &self.memory.entry_count())
            .field("redis", &self.redis.is_some())
            .finish()
    }
}

struct RedisTier {
    conn: redis::aio::ConnectionManager,
    timeout: Duration,
}

/// Where a lookup or a fill stands, for the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Hit,
    Miss,
    Bypass,
}

impl Outcome {
    pub fn name(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Miss => "miss",
            Self::Bypass => "bypass",
        }
    }
}

impl Cache {
    /// A cache with `memory_bytes` in this proxy and, with `redis`, the fleet's tier.
    pub async fn new(
        memory_bytes: u64,
        redis: Option<(&str, Duration)>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        let memory = moka::sync::Cache::builder()
            .max_capacity(memory_bytes)
            .weigher(|_k: &String, v: &Arc<Entry>| v.weight())
            .expire_after(Ttl)
            .support_invalidation_closures()
            .build();
        let redis = match redis {
            None => None,
            Some((url, timeout)) => {
                let client = redis::Client::open(url).map_err(|e| format!("cache redis: {e}"))?;
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout.max(Duration::from_millis(100))))
                    .set_response_timeout(Some(timeout))
                    .set_number_of_retries(1);
                let conn = redis::aio::ConnectionManager::new_lazy_with_config(client, config)
                    .map_err(|e| format!("cache redis: {e}"))?;
                Some(RedisTier { conn, timeout })
            }
        };
        Ok(Self {
            memory,
            redis,
            metrics,
        })
    }

    fn failed(&self, op: &'static str, e: &str) {
        self.metrics
            .cache_errors
            .get_or_create(&crate::metrics::OpLabels { op })
            .inc();
        tracing::debug!(op, error = e, "cache tier unavailable; bypassed");
    }

    /// The stored answer for `key`: this proxy's memory first, then Redis (kept in memory
    /// after). `Err`: Redis did not answer (the lookup is bypassed).
    pub async fn get(&self, key: &str, ttl: Duration) -> Result<Option<Arc<Entry>>, ()> {
        if let Some(e) = self.memory.get(key) {
            return Ok(Some(e));
        }
        let Some(r) = &self.redis else {
            return Ok(None);
        };
        let mut conn = r.conn.clone();
        let got: Result<Option<Vec<u8>>, String> = match tokio::time::timeout(
            r.timeout,
            redis::cmd("GET").arg(key).query_async(&mut conn),
        )
        .await
        {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out".into()),
        };
        match got {
            Ok(Some(bytes)) => match Entry::decode(&bytes, ttl) {
                Some(e) => {
                    let e = Arc::new(e);
                    self.memory.insert(key.to_owned(), e.clone());
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

    /// Stores an answer in both tiers; the Redis write happens in the background.
    pub fn put(self: &Arc<Self>, key: String, entry: Entry) {
        self.metrics.cache_fills.inc();
        let entry = Arc::new(entry);
        self.memory.insert(key.clone(), entry.clone());
        if self.redis.is_some() {
            let me = self.clone();
            tokio::spawn(async move {
                let Some(r) = &me.redis else { return };
                let mut conn = r.conn.clone();
                let ttl_ms = entry.ttl.as_millis().max(1) as u64;
                let mut set = redis::cmd("SET");
                set.arg(&key).arg(entry.encode()).arg("PX").arg(ttl_ms);
                match tokio::time::timeout(r.timeout, set.query_async::<()>(&mut conn)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => me.failed("put", &e.to_string()),
                    Err(_) => me.failed("put", "timed out"),
                }
            });
        }
    }

    /// Counts a lookup's outcome on a route.
    pub fn count(&self, route: &str, outcome: Outcome) {
        self.metrics
            .cache_lookups
            .get_or_create(&CacheLabels {
                route: route.to_owned(),
                result: outcome.name(),
            })
            .inc();
    }

    /// Removes a route's entries (or one scope's), in memory and in Redis. Returns what Redis
    /// deleted.
    pub async fn purge(&self, route: &str, scope: Option<&str>) -> Result<u64, String> {
        let prefix = key::prefix(route, scope);
        let p = prefix.clone();
        self.memory
            .invalidate_entries_if(move |k, _| k.starts_with(&p))
            .map_err(|e| e.to_string())?;
        let Some(r) = &self.redis else { return Ok(0) };
        let mut conn = r.conn.clone();
        let pattern = format!("{}*", key::glob_escape(&prefix));
        let mut cursor: u64 = 0;
        let mut deleted = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            if !keys.is_empty() {
                let n: u64 = redis::cmd("DEL")
                    .arg(&keys)
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| e.to_string())?;
                deleted += n;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
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
