//! The fleet's tier in Redis. A scope's keys share one hash tag (`sy:cache:{route|scope}:`),
//! so each script below touches one slot:
//!
//! - `<scope>e:<digest>`: an answer, `SET PX` with its route's TTL;
//! - `<scope>v:<digest>`: a vector set (Redis 8 `VADD`/`VSIM`, unquantised) of the requests
//!   that differ only in the compared text; each element is named by its answer's digest and
//!   carries `{"exp": <ms>}`, and a search filters on it, so an expired answer is never a
//!   candidate;
//! - `<scope>idx`: a sorted set of the scope's answers by expiry, which drops expired
//!   vectors and, with `maxEntries`, the answers that expire first beyond the count.
//!
//! Vector sets over RediSearch: they are in every Redis 8 (no module to load), one set per
//! partition makes the tenant, model and parameters filter part of the key rather than a
//! query-time tag filter, and `VADD`/`VSIM` are single commands a script can call.

use std::time::Duration;

use super::{CacheError, Entry, Found, VectorIndex};
use crate::redis_link::{ClusterLink, Conn, Link};

/// Stores an answer and, with a vector set, its vector; drops expired and surplus answers.
/// KEYS: answer, index, [vector set]. ARGV: body, ttl ms, now ms, max (0: none), scope prefix,
/// digest, [vector as FP32 bytes].
const FILL: &str = r#"
local ttl, now, max = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local exp = now + ttl
local function stretch(key)
  if redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end
end
local function drop(member)
  local digest, set = string.match(member, '^([^@]+)@?(.*)$')
  redis.call('DEL', ARGV[5] .. 'e:' .. digest)
  if set ~= '' and redis.call('EXISTS', set) == 1 then redis.call('VREM', set, digest) end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
local member = ARGV[6]
if KEYS[3] then
  redis.call('VADD', KEYS[3], 'FP32', ARGV[7], ARGV[6], 'NOQUANT', 'SETATTR', '{"exp":' .. exp .. '}')
  stretch(KEYS[3])
  member = ARGV[6] .. '@' .. KEYS[3]
end
local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 64)
for _, m in ipairs(dead) do
  drop(m)
  redis.call('ZREM', KEYS[2], m)
end
redis.call('ZADD', KEYS[2], exp, member)
if max > 0 then
  local over = redis.call('ZCARD', KEYS[2]) - max
  if over > 0 then
    local old = redis.call('ZPOPMIN', KEYS[2], over)
    for i = 1, #old, 2 do drop(old[i]) end
  end
end
stretch(KEYS[2])
return 1
"#;

/// The nearest unexpired vector of a set and, when it is close enough, its answer.
/// KEYS: vector set. ARGV: vector as FP32 bytes, now ms, least score, scope prefix.
/// Returns {digest, score, body}, {'', score} (nearest too far or its answer gone), or {}.
const SEARCH: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
local r = redis.call('VSIM', KEYS[1], 'FP32', ARGV[1], 'WITHSCORES', 'COUNT', 1, 'FILTER', '.exp > ' .. ARGV[2])
if #r == 0 then return {} end
local digest, score = r[1], r[2]
if tonumber(score) < tonumber(ARGV[3]) then return {'', score} end
local body = redis.call('GET', ARGV[4] .. 'e:' .. digest)
if not body then
  redis.call('VREM', KEYS[1], digest)
  return {'', score}
end
return {digest, score, body}
"#;

pub(super) struct RedisTier {
    conn: Link,
    timeout: Duration,
    fill: redis::Script,
    search: redis::Script,
}

/// Milliseconds since the epoch.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A vector as the little-endian FP32 bytes `VADD`/`VSIM ... FP32` take.
fn fp32(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A vector-set score (1 identical, 0 opposite) as a cosine similarity.
fn cosine(score: f64) -> f32 {
    (2.0 * score - 1.0) as f32
}

impl RedisTier {
    /// The tier on one Redis endpoint, or (`cluster`) on a Redis Cluster from its seed nodes
    /// (comma-separated). Connects on first use.
    pub(super) fn new(url: &str, cluster: bool, timeout: Duration) -> Result<Self, CacheError> {
        // The parse error may echo the URL (and its password): keep only its category.
        let invalid = |e: redis::RedisError| CacheError::InvalidUrl(e.kind());
        let conn = if cluster {
            let client = redis::cluster::ClusterClient::builder(url.split(',').map(str::trim))
                .connection_timeout(timeout.max(Duration::from_millis(100)))
                .response_timeout(timeout)
                .retries(1)
                .build()
                .map_err(invalid)?;
            Link::Cluster(Box::new(ClusterLink::new(client)))
        } else {
            let client = redis::Client::open(url).map_err(invalid)?;
            let config = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeout.max(Duration::from_millis(100))))
                .set_response_timeout(Some(timeout))
                .set_number_of_retries(1);
            Link::Single(
                redis::aio::ConnectionManager::new_lazy_with_config(client, config)
                    .map_err(invalid)?,
            )
        };
        Ok(Self {
            conn,
            timeout,
            fill: redis::Script::new(FILL),
            search: redis::Script::new(SEARCH),
        })
    }

    /// Runs a command or script under the tier's timeout.
    async fn run<T: redis::FromRedisValue>(
        &self,
        f: impl AsyncFnOnce(&mut Conn) -> redis::RedisResult<T>,
    ) -> Result<T, CacheError> {
        let call = async {
            let mut conn = self.conn.conn().await?;
            f(&mut conn).await
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(CacheError::Timeout),
        }
    }

    pub(super) async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, CacheError> {
        self.run(async |c| redis::cmd("GET").arg(key).query_async(c).await)
            .await
    }

    /// Stores an answer (and its vector).
    pub(super) async fn put(
        &self,
        scope: &str,
        key: &str,
        body: Vec<u8>,
        ttl: Duration,
        max: Option<u64>,
        vector: Option<(&str, &[f32])>,
    ) -> Result<(), CacheError> {
        let digest = &key[scope.len() + 2..];
        let mut inv = self.fill.prepare_invoke();
        inv.key(key)
            .key(format!("{scope}idx"))
            .arg(body)
            .arg(ttl.as_millis().max(1) as u64)
            .arg(now_ms())
            .arg(max.unwrap_or(0))
            .arg(scope)
            .arg(digest);
        if let Some((set, v)) = vector {
            inv.key(set).arg(fp32(v));
        }
        self.run(async |c| inv.invoke_async::<()>(c).await).await
    }

    /// Deletes every key matching `pattern` (on every primary of a cluster); returns how many.
    pub(super) async fn delete_matching(&self, pattern: &str) -> Result<u64, CacheError> {
        let keys = self.conn.keys_matching(pattern).await?;
        let mut conn = self.conn.conn().await?;
        let mut deleted = 0;
        // A cluster's DEL may not cross slots: one key at a time there.
        let per_call = if self.conn.is_cluster() { 1 } else { 1000 };
        for chunk in keys.chunks(per_call) {
            let n: u64 = redis::cmd("DEL").arg(chunk).query_async(&mut conn).await?;
            deleted += n;
        }
        Ok(deleted)
    }
}

impl VectorIndex for RedisTier {
    fn search<'a>(
        &'a self,
        set: &'a str,
        vector: &'a [f32],
        scope: &'a str,
    ) -> futures_util::future::BoxFuture<'a, Result<Option<Found>, CacheError>> {
        Box::pin(async move {
            let mut inv = self.search.prepare_invoke();
            inv.key(set)
                .arg(fp32(vector))
                .arg(now_ms())
                // Only the threshold decides; every score is returned for the histogram.
                .arg(0)
                .arg(scope);
            let reply: Vec<redis::Value> = self.run(async |c| inv.invoke_async(c).await).await?;
            let text = |v: &redis::Value| -> Option<String> {
                redis::from_redis_value_ref::<String>(v).ok()
            };
            let (digest, score) = match (reply.first().and_then(text), reply.get(1).and_then(text))
            {
                (Some(d), Some(s)) => (d, s.parse::<f64>()?),
                _ => return Ok(None),
            };
            let entry = match reply.get(2) {
                Some(v) => {
                    let bytes: Vec<u8> = redis::from_redis_value_ref(v)?;
                    Entry::decode(&bytes, Duration::ZERO).map(std::sync::Arc::new)
                }
                None => None,
            };
            Ok(Some(Found {
                key: if digest.is_empty() {
                    String::new()
                } else {
                    format!("{scope}e:{digest}")
                },
                similarity: cosine(score),
                entry,
            }))
        })
    }
}
