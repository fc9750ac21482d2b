//! The counter store behind every limit: Redis for a fleet, memory for one process. Both run
//! the same two operations with the same semantics, and the same test bodies run against both
//! (`tests/tests/limits_store.rs`).

use futures_util::future::{BoxFuture, FutureExt};

/// What one counter check does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckKind {
    /// A counter in a fixed window: admitted when `used + cost <= limit`, then `used += cost`.
    Window,
    /// Leases in flight: admitted when fewer than `limit` unexpired leases are held, then a
    /// lease named by the request expires after `ttl_ms` unless released first.
    Parallel,
    /// A budget: admitted while `spent + reserved < limit`, then `reserved += cost`.
    Budget,
    /// A budget that only alerts: always admitted, `reserved += cost`.
    BudgetAlert,
}

/// One counter to check and charge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub key: String,
    pub kind: CheckKind,
    pub limit: u64,
    pub cost: u64,
    /// How long the counter (or lease) lives; 0 = forever.
    pub ttl_ms: u64,
    /// How much of `cost` this proxy's lease on the counter paid for (see `lease.rs`): the
    /// store charges only the rest, and skips the check when the lease paid all of it.
    pub leased: Option<u64>,
}

impl Check {
    /// What the store charges: the cost less what a lease paid.
    pub fn charge(&self) -> u64 {
        self.cost - self.leased.unwrap_or(0).min(self.cost)
    }

    /// Whether a lease paid for the whole check (the store neither checks nor charges it).
    pub fn covered(&self) -> bool {
        self.leased.is_some_and(|l| l >= self.cost)
    }
}

/// Checks that are decided together, atomically. Every key of a group shares a hash tag, so
/// a group is one script call on one Redis Cluster slot.
pub type Group = Vec<Check>;

/// An admission request: every group is checked; the request is admitted only if every check
/// of every group passes, and then every check is charged.
#[derive(Clone, Debug)]
pub struct AdmitRequest {
    /// Wall clock (ms since the epoch) of the proxy; leases expire against it.
    pub now_ms: u64,
    /// Unique id of the request: names its parallel-request leases.
    pub member: String,
    pub groups: Vec<Group>,
}

/// The answer to an admission request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdmitReply {
    /// Usage of each check after charging, by group and check.
    Admitted(Vec<Vec<u64>>),
    /// The first check that failed and the usage it saw. Nothing was charged.
    Denied {
        group: usize,
        check: usize,
        used: u64,
    },
}

/// One correction after the call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SettleOp {
    /// Add a (possibly negative) amount to a window counter, if the window still exists.
    Adjust { key: String, delta: i64 },
    /// Release a parallel-request lease.
    Release { key: String },
    /// Move a reservation to spend: `reserved -= reserved`, `spent += spent`.
    Spend {
        key: String,
        reserved: u64,
        spent: u64,
        ttl_ms: u64,
    },
}

/// Corrections for one request, by group (each group is applied atomically).
#[derive(Clone, Debug)]
pub struct SettleRequest {
    pub member: String,
    pub groups: Vec<Vec<SettleOp>>,
}

/// A request for a lease: a slice of a counter's remaining quota, charged in the store now
/// and spent by this proxy without asking again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseAsk {
    pub key: String,
    /// `Window`, `Budget`/`BudgetAlert` or `Parallel`.
    pub kind: CheckKind,
    pub limit: u64,
    /// The most to take.
    pub want: u64,
    /// Take at most `1/share` of what is left (leases shrink as the limit nears exhaustion).
    pub share: u64,
    /// Window counters: the window's ttl; budgets: the hash's ttl for a new period (0 =
    /// none); parallel: how long the leased slots live unless refreshed.
    pub ttl_ms: u64,
    /// Parallel: the names of the slots to add (at least `want`).
    pub slots: Vec<String>,
}

/// What a lease request got.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LeaseGrant {
    pub granted: u64,
    /// The counter's usage after the grant.
    pub used: u64,
}

/// The store could not answer (Redis unreachable, timed out, or replied with garbage).
#[derive(Debug, thiserror::Error)]
#[error("limit store: {0}")]
pub struct StoreError(pub String);

/// A counter store.
pub trait LimitStore: Send + Sync + std::fmt::Debug + 'static {
    fn admit<'a>(&'a self, req: &'a AdmitRequest) -> BoxFuture<'a, Result<AdmitReply, StoreError>>;
    fn settle<'a>(&'a self, req: &'a SettleRequest) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Settles many requests at once (Redis: one pipeline).
    fn settle_batch<'a>(
        &'a self,
        reqs: &'a [SettleRequest],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            for r in reqs {
                self.settle(r).await?;
            }
            Ok(())
        }
        .boxed()
    }
    /// Settles a batch and records `seq` as the last batch applied under `marker` in the same
    /// atomic step, when the store can (`marks_batches`): after a failed call, `marked` then
    /// says whether the batch was applied. Otherwise the same as `settle_batch`.
    fn settle_marked<'a>(
        &'a self,
        reqs: &'a [SettleRequest],
        _marker: &'a str,
        _seq: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.settle_batch(reqs)
    }
    /// The last batch recorded under `marker` by `settle_marked` (0: none).
    fn marked<'a>(&'a self, _marker: &'a str) -> BoxFuture<'a, Result<u64, StoreError>> {
        std::future::ready(Ok(0)).boxed()
    }
    /// Whether `settle_marked` applies a batch and its mark atomically (one Redis node; a
    /// cluster spreads a batch over slots).
    fn marks_batches(&self) -> bool {
        false
    }
    /// Applies a replay batch at most once per `batch` id: a batch resent after a timeout
    /// is not counted twice. Each request holds one operation. A store that is not shared
    /// never replays.
    fn replay<'a>(
        &'a self,
        _batch: &'a str,
        reqs: &'a [SettleRequest],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.settle_batch(reqs)
    }
    /// Takes leases, each at most its ask's `want` and `1/share` of what is left (none when
    /// nothing is left). A store that is not shared grants nothing.
    fn lease<'a>(
        &'a self,
        _now_ms: u64,
        asks: &'a [LeaseAsk],
    ) -> BoxFuture<'a, Result<Vec<LeaseGrant>, StoreError>> {
        std::future::ready(Ok(vec![LeaseGrant::default(); asks.len()])).boxed()
    }
    /// Keeps leased parallel slots alive until `expires_ms`.
    fn refresh_slots<'a>(
        &'a self,
        _key: &'a str,
        _slots: &'a [String],
        _expires_ms: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        std::future::ready(Ok(())).boxed()
    }
    /// Spent and reserved nano-dollars in a budget hash (for status and tests).
    fn budget<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(u64, u64), StoreError>>;
    /// Whether the store answers.
    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        std::future::ready(Ok(())).boxed()
    }
    /// Registers `node` as alive and returns how many nodes were alive within `window`.
    fn heartbeat<'a>(
        &'a self,
        _node: &'a str,
        _window: std::time::Duration,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        std::future::ready(Ok(1)).boxed()
    }
    /// Whether the store is shared by a fleet (and can therefore be unreachable). A store
    /// that is not shared must complete `settle` without waiting.
    fn shared(&self) -> bool {
        false
    }
}
