//! Redis counter store. Every group of checks is one Lua script (atomic, one slot: its keys
//! share a hash tag), and the groups of one request travel in one pipeline: one round trip per
//! admission, one per settlement. On one endpoint the connection is a `ConnectionManager`,
//! which reconnects by itself; on a Redis Cluster each group goes to its slot's node,
//! concurrently. Every operation is bounded by a timeout.

use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::{Pipeline, Script, Value};

use crate::redis_link::{ClusterLink, Conn, Link};

use super::store::{
    AdmitReply, AdmitRequest, CheckKind, LeaseAsk, LeaseGrant, LimitStore, SettleOp, SettleRequest,
    StoreError,
};

/// KEYS: one per check. ARGV[1] = now (ms), ARGV[2] = request id, then four per check:
/// kind (`w` window, `p` parallel, `b` budget, `a` alert-only budget, `l` paid by the proxy's
/// lease: neither checked nor charged), limit, cost (for `p`: the lease's expiry in ms), ttl
/// in ms (0 = none).
/// Returns `{1, used...}` when admitted (everything charged), `{0, index, used}` when not
/// (nothing charged). Amounts travel as strings so Lua's doubles never format them.
const ADMIT: &str = r"
local now = tonumber(ARGV[1])
local used = {}
for i = 1, #KEYS do
  local b = 2 + (i - 1) * 4
  local kind, limit, cost = ARGV[b + 1], tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3])
  local u
  if kind == 'l' then
    u = 0
  elseif kind == 'w' then
    u = tonumber(redis.call('GET', KEYS[i]) or '0')
    if u + cost > limit then return {0, i, u} end
  elseif kind == 'p' then
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
    u = redis.call('ZCARD', KEYS[i])
    if u >= limit then return {0, i, u} end
  else
    local v = redis.call('HMGET', KEYS[i], 's', 'r')
    u = tonumber(v[1] or '0') + tonumber(v[2] or '0')
    if kind == 'b' and u >= limit then return {0, i, u} end
  end
  used[i] = u
end
local out = {1}
for i = 1, #KEYS do
  local b = 2 + (i - 1) * 4
  local kind, cost, ttl = ARGV[b + 1], ARGV[b + 3], ARGV[b + 4]
  if kind == 'l' then
    out[i + 1] = 0
  elseif kind == 'w' then
    local v = redis.call('INCRBY', KEYS[i], cost)
    if v == tonumber(cost) then redis.call('PEXPIRE', KEYS[i], ttl) end
    out[i + 1] = v
  elseif kind == 'p' then
    redis.call('ZADD', KEYS[i], cost, ARGV[2])
    redis.call('PEXPIRE', KEYS[i], ttl)
    out[i + 1] = used[i] + 1
  else
    local r = redis.call('HINCRBY', KEYS[i], 'r', cost)
    if tonumber(ttl) > 0 then redis.call('PEXPIRE', KEYS[i], ttl) end
    out[i + 1] = used[i] + tonumber(cost)
  end
end
return out
";

/// A lease (see `lease.rs`). KEYS[1] = the counter; ARGV = kind (`w`, `p`, `b`, `a` as in
/// ADMIT), limit, want, share, ttl in ms, now in ms, then for `p` the names of up to `want`
/// slots. Grants the smaller of `want` and `1/share` of what is left, charges it like a
/// request would, and returns `{granted, used after}`. Amounts are formatted as integers
/// (`%.0f`): Lua's default would write large ones with an exponent.
const LEASE: &str = r"
local kind, limit, want = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local share, ttl, now = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local u
if kind == 'w' then
  u = tonumber(redis.call('GET', KEYS[1]) or '0')
elseif kind == 'p' then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  u = redis.call('ZCARD', KEYS[1])
else
  local v = redis.call('HMGET', KEYS[1], 's', 'r')
  u = tonumber(v[1] or '0') + tonumber(v[2] or '0')
end
local g = 0
if limit > u then g = math.min(want, math.floor((limit - u) / share)) end
if g <= 0 then return {0, u} end
local gs = string.format('%.0f', g)
if kind == 'w' then
  local v = redis.call('INCRBY', KEYS[1], gs)
  if v == g then redis.call('PEXPIRE', KEYS[1], ARGV[5]) end
elseif kind == 'p' then
  g = math.min(g, #ARGV - 6)
  local expiry = string.format('%.0f', now + ttl)
  for i = 1, g do redis.call('ZADD', KEYS[1], expiry, ARGV[6 + i]) end
  if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ARGV[5]) end
else
  redis.call('HINCRBY', KEYS[1], 'r', gs)
  if ttl > 0 and redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[5]) end
end
return {g, u + g}
";

/// The Lua function both settlement scripts apply an operation with: `kind` is `a` (add
/// `x` to a window counter that still exists, never below zero), `r` (release the lease
/// `member`) or `s` (spend: `x` is minus the reservation, `y` the spend, `z` a ttl in ms for
/// a budget hash that has none).
macro_rules! apply_op {
    () => {
        r"
local function apply(key, member, kind, x, y, z)
  if kind == 'a' then
    if redis.call('EXISTS', key) == 1 then
      if redis.call('INCRBY', key, x) < 0 then
        redis.call('SET', key, '0', 'KEEPTTL')
      end
    end
  elseif kind == 'r' then
    redis.call('ZREM', key, member)
  else
    if redis.call('HINCRBY', key, 'r', x) < 0 then
      redis.call('HSET', key, 'r', '0')
    end
    redis.call('HINCRBY', key, 's', y)
    if tonumber(z) > 0 and redis.call('PTTL', key) < 0 then
      redis.call('PEXPIRE', key, z)
    end
  end
end
"
    };
}

/// KEYS: one per operation, then the batch marker when ARGV[1] is not empty. ARGV[1] = the
/// batch's number (or ''), ARGV[2] = how long the marker lives in ms, then five per
/// operation: lease member, kind, x, y, z (see `apply`). On one Redis node a whole batch is
/// one call, so the operations and the marker that says they happened are applied together.
const SETTLE: &str = concat!(
    apply_op!(),
    r"
local ops = #KEYS
if ARGV[1] ~= '' then ops = ops - 1 end
for i = 1, ops do
  local b = 2 + (i - 1) * 5
  apply(KEYS[i], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4], ARGV[b + 5])
end
if ARGV[1] ~= '' then
  redis.call('SET', KEYS[#KEYS], ARGV[1], 'PX', ARGV[2])
end
return 1
"
);

/// One replayed operation, applied at most once per batch: KEYS[1] is the counter, KEYS[2]
/// the batch's marker beside it (same hash tag, so the same cluster slot); ARGV is the lease
/// member, the operation's kind, x, y, z (see `apply`), then how long the marker lives.
const REPLAY: &str = concat!(
    apply_op!(),
    r"
if not redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[6]) then
  return 0
end
apply(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5])
return 1
"
);

/// How long a replay batch's markers stop a resend from applying twice.
const REPLAY_MARKER_MS: u64 = 24 * 3600 * 1000;

/// Counters in Redis.
pub struct RedisStore {
    conn: Link,
    admit: Script,
    settle: Script,
    replay: Script,
    lease: Script,
    timeout: Duration,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password: never printed.
        f.debug_struct("RedisStore")
            .field("cluster", &self.conn.is_cluster())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

fn err(e: redis::RedisError) -> StoreError {
    StoreError(e.to_string())
}

fn invalid_url(e: &redis::RedisError) -> StoreError {
    // The parse error may echo the URL; keep only its category.
    StoreError(format!("invalid Redis URL ({:?})", e.kind()))
}

impl RedisStore {
    /// Creates the store without connecting: the first operation connects, and a Redis that
    /// is down at start-up is handled like one that goes down later.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(|e| invalid_url(&e))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, config).map_err(err)?;
        Ok(Self::with(Link::Single(conn), timeout))
    }

    /// A store on a Redis Cluster, from one or more seed node URLs. Connects on first use.
    /// Each group of checks is one script call on its own slot; a request's groups run
    /// concurrently (one round trip of wall time).
    pub fn cluster(seeds: &[String], timeout: Duration) -> Result<Self, StoreError> {
        let client = ClusterClient::builder(seeds.iter().map(String::as_str))
            .connection_timeout(timeout)
            .response_timeout(timeout)
            .retries(1)
            .build()
            .map_err(|e| invalid_url(&e))?;
        Ok(Self::with(
            Link::Cluster(Box::new(ClusterLink::new(client))),
            timeout,
        ))
    }

    fn with(conn: Link, timeout: Duration) -> Self {
        Self {
            conn,
            admit: Script::new(ADMIT),
            settle: Script::new(SETTLE),
            replay: Script::new(REPLAY),
            lease: Script::new(LEASE),
            timeout,
        }
    }

    /// Sends commands: one pipeline on a single endpoint; on a cluster, each command on its
    /// own, concurrently (a pipeline may not cross slots there).
    async fn send(&self, pipe: &Pipeline) -> redis::RedisResult<Vec<Value>> {
        match self.conn.conn().await? {
            mut c @ Conn::Single(_) => pipe.query_async::<Vec<Value>>(&mut c).await,
            conn @ Conn::Cluster(_) => {
                let calls = pipe.cmd_iter().map(|cmd| {
                    let mut conn = conn.clone();
                    async move { cmd.query_async::<Value>(&mut conn).await }
                });
                futures_util::future::try_join_all(calls).await
            }
        }
    }

    async fn load_scripts(&self) -> redis::RedisResult<()> {
        let mut pipe = redis::pipe();
        for script in [ADMIT, SETTLE, REPLAY, LEASE] {
            pipe.cmd("SCRIPT").arg("LOAD").arg(script);
        }
        self.send(&pipe).await.map(drop)
    }

    /// Runs a pipeline of script calls, loading the scripts once if Redis lost them (a
    /// restarted Redis starts with an empty script cache).
    async fn run(&self, build: impl Fn(&mut Pipeline)) -> Result<Vec<Value>, StoreError> {
        let mut pipe = redis::pipe();
        build(&mut pipe);
        let fut = async {
            match self.send(&pipe).await {
                Err(e) if e.code() == Some("NOSCRIPT") => {
                    self.load_scripts().await.map_err(err)?;
                    self.send(&pipe).await.map_err(err)
                }
                r => r.map_err(err),
            }
        };
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| StoreError(format!("Redis did not answer within {:?}", self.timeout)))?
    }

    /// One command, bounded by the timeout.
    async fn one<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> Result<T, StoreError> {
        let mut pipe = redis::pipe();
        pipe.add_command(cmd);
        let mut values = tokio::time::timeout(self.timeout, self.send(&pipe))
            .await
            .map_err(|_| StoreError(format!("Redis did not answer within {:?}", self.timeout)))?
            .map_err(err)?;
        let v = values
            .pop()
            .ok_or_else(|| StoreError("empty reply".into()))?;
        redis::from_redis_value(v).map_err(|e| StoreError(e.to_string()))
    }

    async fn ping_now(&self) -> Result<(), StoreError> {
        self.one::<String>(redis::cmd("PING")).await.map(drop)
    }

    /// Registers this proxy in the fleet set and returns how many proxies were seen in the
    /// last `window`: the divisor for local limits when Redis goes away. Three commands in
    /// order, every few seconds: not worth a script.
    async fn heartbeat_now(&self, node: &str, window: Duration) -> Result<u64, StoreError> {
        const KEY: &str = "sy:{fleet}:nodes";
        let now = super::now_ms();
        let stale = now.saturating_sub(window.as_millis() as u64);
        let mut add = redis::cmd("ZADD");
        add.arg(KEY).arg(now).arg(node);
        self.one::<i64>(add).await?;
        let mut trim = redis::cmd("ZREMRANGEBYSCORE");
        trim.arg(KEY).arg("-inf").arg(stale);
        self.one::<i64>(trim).await?;
        let mut count = redis::cmd("ZCARD");
        count.arg(KEY);
        self.one::<u64>(count).await
    }
}

/// A settlement operation's key and its script arguments (kind, x, y, z).
fn op_args(op: &SettleOp) -> (&str, &'static str, i64, u64, u64) {
    match op {
        SettleOp::Adjust { key, delta } => (key, "a", *delta, 0, 0),
        SettleOp::Release { key } => (key, "r", 0, 0, 0),
        SettleOp::Spend {
            key,
            reserved,
            spent,
            ttl_ms,
        } => (
            key,
            "s",
            -i64::try_from(*reserved).unwrap_or(i64::MAX),
            *spent,
            *ttl_ms,
        ),
    }
}

/// Where this process records the last settlement batch Redis applied.
fn marker_key(marker: &str) -> String {
    format!("sy:settled:{marker}")
}

impl RedisStore {
    /// The replay script call for one operation of batch `batch`.
    fn replay_cmd(&self, batch: &str, member: &str, op: &SettleOp) -> redis::Cmd {
        let (key, kind, x, y, z) = op_args(op);
        // Releases are one per lease on a key, each marked on its own; the other operations
        // are summed per key.
        let marker = match op {
            SettleOp::Release { .. } => format!("{key}:replay:{batch}:{member}"),
            _ => format!("{key}:replay:{batch}"),
        };
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.replay.get_hash())
            .arg(2)
            .arg(key)
            .arg(marker)
            .arg(member)
            .arg(kind)
            .arg(x)
            .arg(y)
            .arg(z)
            .arg(REPLAY_MARKER_MS);
        cmd
    }

    /// The settlement script call for `ops` (lease member, operation), marked as batch `seq`
    /// under `marker` when given.
    fn settle_cmd<'o>(
        &self,
        ops: impl Iterator<Item = (&'o str, &'o SettleOp)> + Clone,
        mark: Option<(&str, u64)>,
    ) -> redis::Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.settle.get_hash())
            .arg(ops.clone().count() + usize::from(mark.is_some()));
        for (_, op) in ops.clone() {
            cmd.arg(op_args(op).0);
        }
        match mark {
            Some((marker, seq)) => cmd.arg(marker_key(marker)).arg(seq).arg(REPLAY_MARKER_MS),
            None => cmd.arg("").arg(0),
        };
        for (member, op) in ops {
            let (_, kind, x, y, z) = op_args(op);
            cmd.arg(member).arg(kind).arg(x).arg(y).arg(z);
        }
        cmd
    }

    /// Settles a batch: on one node as one script call (marked when `mark` is given); on a
    /// cluster one call per group, each on its own slot (never marked).
    async fn settle_many(
        &self,
        reqs: &[SettleRequest],
        mark: Option<(&str, u64)>,
    ) -> Result<(), StoreError> {
        let ops = || {
            reqs.iter()
                .flat_map(|r| r.groups.iter().flatten().map(|op| (r.member.as_str(), op)))
        };
        if ops().next().is_none() {
            return Ok(());
        }
        self.run(|pipe| match self.conn.is_cluster() {
            false => {
                pipe.add_command(self.settle_cmd(ops(), mark));
            }
            true => {
                for req in reqs {
                    for ops in req.groups.iter().filter(|g| !g.is_empty()) {
                        let ops = ops.iter().map(|op| (req.member.as_str(), op));
                        pipe.add_command(self.settle_cmd(ops, None));
                    }
                }
            }
        })
        .await
        .map(drop)
    }
}

fn as_i64(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        _ => None,
    }
}

impl LimitStore for RedisStore {
    fn admit<'a>(&'a self, req: &'a AdmitRequest) -> BoxFuture<'a, Result<AdmitReply, StoreError>> {
        async move {
            let now = req.now_ms.to_string();
            let replies = self
                .run(|pipe| {
                    for group in &req.groups {
                        let mut cmd = redis::cmd("EVALSHA");
                        cmd.arg(self.admit.get_hash()).arg(group.len());
                        for c in group {
                            cmd.arg(&c.key);
                        }
                        cmd.arg(&now).arg(&req.member);
                        for c in group {
                            let (kind, cost) = match c.kind {
                                _ if c.covered() => ("l", 0),
                                CheckKind::Window => ("w", c.charge()),
                                CheckKind::Parallel => ("p", req.now_ms.saturating_add(c.ttl_ms)),
                                CheckKind::Budget => ("b", c.charge()),
                                CheckKind::BudgetAlert => ("a", c.charge()),
                            };
                            cmd.arg(kind).arg(c.limit).arg(cost).arg(c.ttl_ms);
                        }
                        pipe.add_command(cmd);
                    }
                })
                .await?;
            let garbage = || StoreError("unexpected reply from the admission script".into());
            let mut used = Vec::with_capacity(replies.len());
            let mut denied = None;
            for (gi, reply) in replies.iter().enumerate() {
                let Value::Array(items) = reply else {
                    return Err(garbage());
                };
                let nums: Vec<i64> = items.iter().filter_map(as_i64).collect();
                match nums.first() {
                    Some(1) => used.push(nums[1..].iter().map(|&n| n.max(0) as u64).collect()),
                    Some(0) if nums.len() == 3 && denied.is_none() => {
                        denied = Some(AdmitReply::Denied {
                            group: gi,
                            check: (nums[1] - 1).max(0) as usize,
                            used: nums[2].max(0) as u64,
                        });
                        used.push(Vec::new());
                    }
                    Some(0) => used.push(Vec::new()),
                    _ => return Err(garbage()),
                }
            }
            let Some(denied) = denied else {
                return Ok(AdmitReply::Admitted(used));
            };
            // Groups run independently: undo the ones that were charged.
            let undo = undo_of(req, &used);
            if !undo.groups.is_empty() {
                self.settle(&undo).await?;
            }
            Ok(denied)
        }
        .boxed()
    }

    fn settle<'a>(&'a self, req: &'a SettleRequest) -> BoxFuture<'a, Result<(), StoreError>> {
        self.settle_batch(std::slice::from_ref(req))
    }

    fn settle_batch<'a>(
        &'a self,
        reqs: &'a [SettleRequest],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.settle_many(reqs, None).boxed()
    }

    fn settle_marked<'a>(
        &'a self,
        reqs: &'a [SettleRequest],
        marker: &'a str,
        seq: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.settle_many(reqs, Some((marker, seq))).boxed()
    }

    fn marked<'a>(&'a self, marker: &'a str) -> BoxFuture<'a, Result<u64, StoreError>> {
        async move {
            let mut cmd = redis::cmd("GET");
            cmd.arg(marker_key(marker));
            Ok(self.one::<Option<u64>>(cmd).await?.unwrap_or(0))
        }
        .boxed()
    }

    fn marks_batches(&self) -> bool {
        !self.conn.is_cluster()
    }

    fn replay<'a>(
        &'a self,
        batch: &'a str,
        reqs: &'a [SettleRequest],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            if reqs.is_empty() {
                return Ok(());
            }
            self.run(|pipe| {
                for req in reqs {
                    for op in req.groups.iter().flatten() {
                        pipe.add_command(self.replay_cmd(batch, &req.member, op));
                    }
                }
            })
            .await
            .map(drop)
        }
        .boxed()
    }

    fn lease<'a>(
        &'a self,
        now_ms: u64,
        asks: &'a [LeaseAsk],
    ) -> BoxFuture<'a, Result<Vec<LeaseGrant>, StoreError>> {
        async move {
            let replies = self
                .run(|pipe| {
                    for a in asks {
                        let kind = match a.kind {
                            CheckKind::Window => "w",
                            CheckKind::Parallel => "p",
                            CheckKind::Budget => "b",
                            CheckKind::BudgetAlert => "a",
                        };
                        let mut cmd = redis::cmd("EVALSHA");
                        cmd.arg(self.lease.get_hash())
                            .arg(1)
                            .arg(&a.key)
                            .arg(kind)
                            .arg(a.limit)
                            .arg(a.want)
                            .arg(a.share.max(1))
                            .arg(a.ttl_ms)
                            .arg(now_ms);
                        for slot in &a.slots {
                            cmd.arg(slot);
                        }
                        pipe.add_command(cmd);
                    }
                })
                .await?;
            replies
                .iter()
                .map(|r| {
                    let pair = match r {
                        Value::Array(v) => {
                            v.first().and_then(as_i64).zip(v.get(1).and_then(as_i64))
                        }
                        _ => None,
                    };
                    let (g, u) = pair.ok_or_else(|| {
                        StoreError("unexpected reply from the lease script".into())
                    })?;
                    Ok(LeaseGrant {
                        granted: g.max(0) as u64,
                        used: u.max(0) as u64,
                    })
                })
                .collect()
        }
        .boxed()
    }

    fn refresh_slots<'a>(
        &'a self,
        key: &'a str,
        slots: &'a [String],
        expires_ms: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            if slots.is_empty() {
                return Ok(());
            }
            // The set's own expiry moves with its slots (requests that would extend it may
            // all be paid by leases).
            let mut zadd = redis::cmd("ZADD");
            zadd.arg(key).arg("XX");
            for s in slots {
                zadd.arg(expires_ms).arg(s);
            }
            let mut expire = redis::cmd("PEXPIREAT");
            expire.arg(key).arg(expires_ms).arg("GT");
            self.run(|pipe| {
                pipe.add_command(zadd.clone());
                pipe.add_command(expire.clone());
            })
            .await
            .map(drop)
        }
        .boxed()
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        self.ping_now().boxed()
    }

    fn heartbeat<'a>(
        &'a self,
        node: &'a str,
        window: Duration,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        self.heartbeat_now(node, window).boxed()
    }

    fn shared(&self) -> bool {
        true
    }

    fn budget<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(u64, u64), StoreError>> {
        async move {
            let mut cmd = redis::cmd("HMGET");
            cmd.arg(key).arg("s").arg("r");
            let (s, r): (Option<u64>, Option<u64>) = self.one(cmd).await?;
            Ok((s.unwrap_or(0), r.unwrap_or(0)))
        }
        .boxed()
    }
}

/// The settlement that takes back what the admitted groups of a denied request charged.
fn undo_of(req: &AdmitRequest, used: &[Vec<u64>]) -> SettleRequest {
    let groups = req
        .groups
        .iter()
        .zip(used)
        .filter(|(_, u)| !u.is_empty())
        .map(|(g, _)| {
            // What a lease paid is given back to the lease by the limiter.
            g.iter()
                .filter(|c| !c.covered())
                .map(|c| match c.kind {
                    CheckKind::Window => SettleOp::Adjust {
                        key: c.key.clone(),
                        delta: -(c.charge() as i64),
                    },
                    CheckKind::Parallel => SettleOp::Release { key: c.key.clone() },
                    CheckKind::Budget | CheckKind::BudgetAlert => SettleOp::Spend {
                        key: c.key.clone(),
                        reserved: c.charge(),
                        spent: 0,
                        ttl_ms: 0,
                    },
                })
                .collect()
        })
        .collect();
    SettleRequest {
        member: req.member.clone(),
        groups,
    }
}
