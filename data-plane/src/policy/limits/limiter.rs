//! The limiter: admits a plan against the shared store (or, when it is away, locally or not
//! at all), settles permits in batches, replays what the store missed, and keeps the fleet
//! size for local limits current.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use switchyard_crds::spend;

use super::lease::{Leases, Paid};
use super::memory::MemoryStore;
use super::pending::Pending;
use super::store::{
    self, AdmitReply, AdmitRequest, CheckKind, LeaseAsk, LimitStore, SettleOp, SettleRequest,
};
use super::{Meta, Plan, RateHeaders, Scope, What, budget_ttl_ms, duration_text, now_ms};
use crate::error::{ErrorKind, ProxyError};
use crate::llm::Usage;
use crate::llm::observe::{End, Observer};
use crate::telemetry::metrics::{LimitLabels, Metrics, OpLabels, ResultLabels};

/// What to do when the shared store does not answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FailMode {
    /// Serve with local limits, divided by the last known number of proxies.
    Open,
    /// Reject requests that have limits or budgets with 503.
    Closed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    Shared,
    Local,
}

/// Budgets whose last shared value is remembered (for local decisions in an outage).
const BUDGETS_SEEN: usize = 100_000;

/// Admits requests against the store and settles them afterwards.
#[derive(Debug)]
pub struct Limiter {
    primary: Arc<dyn LimitStore>,
    local: MemoryStore,
    mode: FailMode,
    up: AtomicBool,
    fleet: AtomicU64,
    node: String,
    seq: AtomicU64,
    /// Settlements the shared store missed, summed per counter until it answers.
    pending: Mutex<Pending>,
    /// Names this process's replay batches and settlement marker (unique across restarts).
    replay_prefix: String,
    /// A flush started by `enqueue` is running.
    flushing: AtomicBool,
    /// Last spend + reservations seen in the shared store, by budget key: what is left of a
    /// budget when falling back to local limits.
    budget_seen: Mutex<HashMap<String, u64>>,
    /// Settlements for the shared store, sent in batches by one task.
    settle_tx: Option<tokio::sync::mpsc::UnboundedSender<SettleRequest>>,
    /// Settlements handed to the settler and not yet sent (or kept for a replay).
    queued: AtomicU64,
    /// Slices of shared limits this proxy spends locally (a shared store, leasing on).
    leases: Option<Leases>,
    metrics: Arc<Metrics>,
}

impl Limiter {
    /// A limiter over `primary`. For a shared store, starts the fleet heartbeat, and with a
    /// `lease_percent` above 0 leases quota (see `lease.rs`).
    pub fn new(
        primary: Arc<dyn LimitStore>,
        mode: FailMode,
        node: String,
        fleet_size: u64,
        lease_percent: u64,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        metrics.limit_store_up.set(1);
        metrics.fleet_size.set(fleet_size as i64);
        let shared = primary.shared();
        let (settle_tx, settle_rx) = if shared {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let l = Arc::new(Self {
            primary,
            local: MemoryStore::new(),
            mode,
            up: AtomicBool::new(true),
            fleet: AtomicU64::new(fleet_size.max(1)),
            node: node.clone(),
            seq: AtomicU64::new(0),
            pending: Mutex::new(Pending::default()),
            replay_prefix: format!("{node}:{:016x}", fastrand::u64(..)),
            flushing: AtomicBool::new(false),
            budget_seen: Mutex::new(HashMap::new()),
            settle_tx,
            queued: AtomicU64::new(0),
            leases: (shared && lease_percent > 0).then(|| Leases::new(lease_percent, &node)),
            metrics,
        });
        if shared {
            tokio::spawn(heartbeat(Arc::downgrade(&l)));
        }
        if l.leases.is_some() {
            tokio::spawn(sweeper(Arc::downgrade(&l)));
        }
        if let Some(rx) = settle_rx {
            tokio::spawn(settler(Arc::downgrade(&l), rx));
        }
        l
    }

    /// An in-memory limiter (standalone mode, tests).
    pub fn in_memory(metrics: Arc<Metrics>) -> Arc<Self> {
        Self::new(
            Arc::new(MemoryStore::new()),
            FailMode::Open,
            "local".into(),
            1,
            0,
            metrics,
        )
    }

    /// What is left of this proxy's lease on `key`.
    #[cfg(test)]
    pub(super) fn lease_left(&self, key: &str) -> Option<u64> {
        self.leases.as_ref().and_then(|l| l.left(key))
    }

    /// Whether the shared store is answering.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Checks and charges every limit of a plan.
    pub async fn admit(self: &Arc<Self>, mut plan: Plan) -> Result<Permit, ProxyError> {
        let now = now_ms();
        let member = format!("{}-{}", self.node, self.seq.fetch_add(1, Ordering::Relaxed));
        // The checks move into the request; the plan keeps what describes them.
        let mut req = AdmitRequest {
            now_ms: now,
            member,
            groups: std::mem::take(&mut plan.groups),
        };
        // Leases pay first: for all of a request, or for part of it with the store checking
        // the rest.
        let mut leased_used = None;
        // What leases paid goes back unless the request is admitted (refused, failed closed,
        // or the caller went away while the store was asked).
        let mut unspent = Unspent {
            limiter: self,
            paid: Vec::new(),
        };
        if let Some(leases) = &self.leases {
            let taken = leases.take(&mut req.groups, now, self.fleet.load(Ordering::Relaxed));
            if !taken.asks.is_empty() {
                self.refill(taken.asks);
            }
            if taken.covered {
                self.metrics.limit_leased.inc();
                let reply = AdmitReply::Admitted(taken.used);
                return self.decide(plan, req, reply, Via::Shared, now);
            }
            leased_used = Some(taken.used);
            unspent.paid = Leases::paid(&req.groups);
        }
        if self.is_up() {
            let started = Instant::now();
            match self.primary.admit(&req).await {
                Ok(mut reply) => {
                    self.metrics
                        .limit_check_duration
                        .observe(started.elapsed().as_secs_f64());
                    unspent.keep_if(&reply);
                    if let (AdmitReply::Admitted(used), Some(est)) = (&mut reply, &leased_used) {
                        // The store skipped what a lease paid for whole: report the lease's view.
                        for ((u, e), c) in used
                            .iter_mut()
                            .flatten()
                            .zip(est.iter().flatten())
                            .zip(req.groups.iter().flatten())
                        {
                            if c.covered() {
                                *u = *e;
                            }
                        }
                    }
                    return self.decide(plan, req, reply, Via::Shared, now);
                }
                Err(e) => self.store_failed("admit", &e),
            }
        }
        match self.mode {
            FailMode::Closed => {
                self.metrics
                    .limit_fallbacks
                    .get_or_create(&ResultLabels { result: "rejected" })
                    .inc();
                Err(ProxyError::new(
                    ErrorKind::LimitsUnavailable,
                    "Rate limits cannot be checked right now (the limit store is unreachable); try again shortly.",
                ))
            }
            FailMode::Open => {
                self.metrics
                    .limit_fallbacks
                    .get_or_create(&ResultLabels { result: "local" })
                    .inc();
                let local = self.scaled(req, &plan);
                let reply = self.local.admit_now(&local);
                unspent.keep_if(&reply);
                self.decide(plan, local, reply, Via::Local, now)
            }
        }
    }

    /// The request with limits divided by the fleet size, for local admission.
    fn scaled(&self, mut req: AdmitRequest, plan: &Plan) -> AdmitRequest {
        let fleet = self.fleet.load(Ordering::Relaxed).max(1);
        let seen = self.budget_seen.lock().unwrap_or_else(|p| p.into_inner());
        for (group, meta) in req.groups.iter_mut().zip(&plan.meta) {
            for (c, m) in group.iter_mut().zip(meta) {
                c.limit = match m.what {
                    What::Budget => {
                        let left = m
                            .limit
                            .saturating_sub(seen.get(&c.key).copied().unwrap_or(0));
                        left / fleet
                    }
                    _ => m.limit.div_ceil(fleet),
                };
            }
        }
        req
    }

    fn decide(
        self: &Arc<Self>,
        plan: Plan,
        req: AdmitRequest,
        reply: AdmitReply,
        via: Via,
        now: u64,
    ) -> Result<Permit, ProxyError> {
        let reset_ms = plan.window_end_ms.saturating_sub(now);
        match reply {
            AdmitReply::Admitted(used) => {
                let mut headers = RateHeaders {
                    reset_ms,
                    ..RateHeaders::default()
                };
                for ((group, meta), used) in req.groups.iter().zip(&plan.meta).zip(&used) {
                    for ((c, m), u) in group.iter().zip(meta).zip(used) {
                        match m.what {
                            What::Requests => {
                                RateHeaders::tighten(&mut headers.requests, m.limit, *u)
                            }
                            What::Tokens => RateHeaders::tighten(&mut headers.tokens, m.limit, *u),
                            What::Parallel => {}
                            What::Budget => {
                                if via == Via::Shared {
                                    let mut seen =
                                        self.budget_seen.lock().unwrap_or_else(|p| p.into_inner());
                                    // Periods leave old keys behind; a bounded map forgets.
                                    if seen.len() >= BUDGETS_SEEN && !seen.contains_key(&c.key) {
                                        seen.clear();
                                    }
                                    match seen.get_mut(&c.key) {
                                        Some(v) => *v = *u,
                                        None => {
                                            seen.insert(c.key.clone(), *u);
                                        }
                                    }
                                }
                                if c.kind == CheckKind::BudgetAlert && *u >= m.limit {
                                    // Counted on every request served over the budget;
                                    // logged once, by the request that crossed it.
                                    self.metrics.budget_alerts.inc();
                                    if u.saturating_sub(c.cost) < m.limit {
                                        tracing::warn!(
                                            key = %plan.key_id,
                                            spent_usd = %spend::usd(*u as i64),
                                            budget_usd = %spend::usd(m.limit as i64),
                                            "budget reached (action Alert: requests are still served)"
                                        );
                                    }
                                }
                            }
                        }
                    }
                }
                Ok(Permit {
                    limiter: self.clone(),
                    settlement: Some(Settlement { plan, req, via }),
                    headers,
                })
            }
            AdmitReply::Denied { group, check, used } => {
                let m = plan
                    .meta
                    .get(group)
                    .and_then(|g| g.get(check))
                    .cloned()
                    .ok_or_else(|| {
                        ProxyError::new(ErrorKind::Internal, "limit store denied an unknown check")
                    })?;
                let cost = req
                    .groups
                    .get(group)
                    .and_then(|g| g.get(check))
                    .map_or(0, |c| c.cost);
                self.metrics
                    .limit_rejections
                    .get_or_create(&LimitLabels {
                        scope: m.scope.label(),
                        limit: m.what.label(),
                    })
                    .inc();
                Err(denial(&plan, &m, used, cost, reset_ms, via))
            }
        }
    }

    /// Notes a failure of the shared store; the first one starts the recovery loop.
    fn store_failed(self: &Arc<Self>, op: &'static str, e: &store::StoreError) {
        self.metrics
            .limit_store_errors
            .get_or_create(&OpLabels { op })
            .inc();
        if self.up.swap(false, Ordering::AcqRel) {
            self.metrics.limit_store_up.set(0);
            tracing::warn!(error = %e, op, mode = ?self.mode, fleet = self.fleet.load(Ordering::Relaxed), "limit store unreachable; deciding locally until it answers");
            tokio::spawn(recover(self.clone()));
        } else {
            tracing::debug!(error = %e, op, "limit store still unreachable");
        }
    }

    /// Keeps a settlement for the store. If the store is up (it came back between a check
    /// and now, or a request decided locally during the outage ends after it), a flush is
    /// started, so nothing waits for the next outage.
    fn enqueue(self: &Arc<Self>, req: SettleRequest) {
        {
            let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            p.add(req);
            self.metrics.limit_pending_settlements.set(p.len() as i64);
        }
        if self.is_up() && !self.flushing.swap(true, Ordering::AcqRel) {
            let l = self.clone();
            tokio::spawn(async move {
                let ok = l.flush().await;
                l.flushing.store(false, Ordering::Release);
                if !ok {
                    l.store_failed("settle", &store::StoreError("replay failed".into()));
                }
            });
        }
    }

    /// Replays what the store missed, batch by batch; false when the store failed again (the
    /// batch is then resent, with its id, on the next try).
    async fn flush(&self) -> bool {
        if self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .has_uncertain()
        {
            let Ok(applied) = self.primary.marked(&self.replay_prefix).await else {
                return false;
            };
            let (dropped, kept) = self
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .resolve(applied);
            tracing::info!(
                applied_anyway = dropped,
                replayed = kept,
                "settlement batches cut off by the outage: Redis applied {dropped}, the rest are replayed"
            );
        }
        loop {
            let next = self
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(|| {
                    let n = self.seq.fetch_add(1, Ordering::Relaxed);
                    format!("{}:{n}", self.replay_prefix)
                });
            let Some((id, batch)) = next else {
                self.metrics.limit_pending_settlements.set(0);
                return true;
            };
            let result = self.primary.replay(&id, &batch.requests()).await;
            let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = result {
                tracing::debug!(error = %e, batch = %id, "replay failed; resent later under the same id");
                p.put_back(id, batch);
                self.metrics.limit_pending_settlements.set(p.len() as i64);
                return false;
            }
            tracing::info!(batch = %id, counters = batch.len(), "replayed settlements the limit store missed");
            self.metrics.limit_pending_settlements.set(p.len() as i64);
        }
    }

    fn settle(self: &Arc<Self>, s: Settlement, usage: Option<Usage>) {
        let plan = &s.plan;
        let usage = usage.unwrap_or(Usage::new(plan.estimate.input, plan.estimate.output));
        let actual_tokens = usage.total();
        let cost = plan.price.cost_nanos(&usage);
        let mut groups = Vec::with_capacity(s.req.groups.len());
        // Via::Local: the spend (and leased tokens' corrections) the shared store must hear
        // of once it is back.
        let mut shared_spend = Vec::new();
        for (group, meta) in s.req.groups.iter().zip(&plan.meta) {
            let mut ops = Vec::new();
            for (c, m) in group.iter().zip(meta) {
                match m.what {
                    What::Requests => {}
                    What::Tokens => {
                        let delta = actual_tokens as i64 - plan.est_tokens() as i64;
                        // Decided locally, memory counted only what no lease paid; a smaller
                        // answer gives the rest back to the shared store.
                        let local = match s.via {
                            Via::Local => delta.max(-(c.charge() as i64)),
                            Via::Shared => delta,
                        };
                        if local != 0 {
                            ops.push(SettleOp::Adjust {
                                key: c.key.clone(),
                                delta: local,
                            });
                        }
                        if delta != local {
                            shared_spend.push(SettleOp::Adjust {
                                key: c.key.clone(),
                                delta: delta - local,
                            });
                        }
                    }
                    What::Parallel => match (&self.leases, c.leased) {
                        (Some(leases), Some(_)) => leases.release_slot(&c.key),
                        _ => ops.push(SettleOp::Release { key: c.key.clone() }),
                    },
                    What::Budget => {
                        let ttl_ms = plan
                            .budget
                            .as_ref()
                            .map_or(0, |(_, p)| budget_ttl_ms(p, (now_ms() / 1000) as i64));
                        // Decided locally, the shared store holds only what a lease paid.
                        let (reserved, shared) = match s.via {
                            Via::Shared => (c.cost, c.cost),
                            Via::Local => (c.charge(), c.cost - c.charge()),
                        };
                        ops.push(SettleOp::Spend {
                            key: c.key.clone(),
                            reserved,
                            spent: cost,
                            ttl_ms,
                        });
                        if s.via == Via::Local {
                            shared_spend.push(SettleOp::Spend {
                                key: c.key.clone(),
                                reserved: shared,
                                spent: cost,
                                ttl_ms,
                            });
                        }
                    }
                }
            }
            groups.push(ops);
        }
        let req = SettleRequest {
            member: s.req.member,
            groups,
        };
        if req.groups.iter().all(Vec::is_empty) {
            // Request limits only: nothing to correct.
            return;
        }
        match s.via {
            Via::Local => {
                self.local.settle_now(&req, now_ms());
                // Spend made while Redis was away still counts once it is back (only what a
                // lease paid was reserved there).
                if self.primary.shared() && !shared_spend.is_empty() {
                    self.enqueue(SettleRequest {
                        member: req.member,
                        groups: vec![shared_spend],
                    });
                }
            }
            Via::Shared => self.to_store(req),
        }
    }

    /// Sends a settlement to the primary store: batched by the settler for a shared one.
    fn to_store(self: &Arc<Self>, req: SettleRequest) {
        match &self.settle_tx {
            Some(tx) => {
                self.queued.fetch_add(1, Ordering::AcqRel);
                if let Err(e) = tx.send(req) {
                    // The settler is gone (shutting down): keep it for a replay.
                    self.queued.fetch_sub(1, Ordering::AcqRel);
                    self.enqueue(e.0);
                }
            }
            // A process-local primary answers at once (`shared()` is false).
            None => match self.primary.settle(&req).now_or_never() {
                Some(Ok(())) => {}
                Some(Err(e)) => tracing::warn!(error = %e, "settlement failed"),
                None => tracing::error!("a local limit store did not settle at once"),
            },
        }
    }

    /// Refills leases in the background.
    fn refill(self: &Arc<Self>, asks: Vec<LeaseAsk>) {
        let Some(leases) = &self.leases else { return };
        if !self.is_up() {
            leases.granted(asks, None, now_ms());
            return;
        }
        let l = self.clone();
        tokio::spawn(async move {
            let now = now_ms();
            let grants = match l.primary.lease(now, &asks).await {
                Ok(g) => Some(g),
                Err(e) => {
                    l.store_failed("lease", &e);
                    None
                }
            };
            if let Some(leases) = &l.leases {
                let orphans = leases.granted(asks, grants, now);
                l.metrics.limit_leases.set(leases.len() as i64);
                orphans.into_iter().for_each(|r| l.to_store(r));
            }
        });
    }

    /// Gives back leases that ended or sat idle (`all`: every one) and keeps leased
    /// parallel slots alive.
    async fn sweep_leases(self: &Arc<Self>, all: bool) {
        let Some(leases) = &self.leases else { return };
        let swept = leases.sweep(now_ms(), all);
        self.metrics.limit_leases.set(leases.len() as i64);
        for (key, slots, expires_ms) in &swept.refresh {
            match self.primary.refresh_slots(key, slots, *expires_ms).await {
                Ok(()) => leases.refreshed(key, *expires_ms),
                Err(e) => self.store_failed("lease", &e),
            }
        }
        swept.returns.into_iter().for_each(|r| self.to_store(r));
    }

    /// At exit: gives every lease back and waits (a few store timeouts at most) until the
    /// settler has sent what is queued, so requests served just before the exit count.
    pub async fn shutdown(self: &Arc<Self>) {
        if let Some(leases) = &self.leases {
            leases.close();
        }
        self.sweep_leases(true).await;
        if self.settle_tx.is_none() {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.queued.load(Ordering::Acquire) > 0 && self.is_up() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let left = self.queued.load(Ordering::Acquire);
        if left > 0 {
            tracing::warn!(
                settlements = left,
                "exiting with settlements the limit store has not received"
            );
        }
    }
}

/// The 429 (or budget) error for a denied check.
fn denial(plan: &Plan, m: &Meta, used: u64, cost: u64, reset_ms: u64, via: Via) -> ProxyError {
    let whose = match m.scope {
        Scope::Key => format!("key {}", plan.key_id),
        Scope::KeyModel => format!("key {} on this model", plan.key_id),
        Scope::Route => "this route".to_owned(),
    };
    let local = if via == Via::Local {
        " (local share while the limit store is unreachable)"
    } else {
        ""
    };
    let wait = duration_text(reset_ms);
    let (kind, message, retry_ms) = match m.what {
        What::Requests => (
            ErrorKind::RateLimitRequests,
            format!(
                "Rate limit reached for {whose} on requests per minute (RPM){local}: Limit {}, Used {used}, Requested 1. Please try again in {wait}.",
                m.limit
            ),
            Some(reset_ms),
        ),
        What::Tokens => {
            let msg = if cost > m.limit {
                format!(
                    "Request too large for {whose} on tokens per minute (TPM){local}: Limit {}, Requested {cost}. Reduce the prompt or max_tokens.",
                    m.limit
                )
            } else {
                format!(
                    "Rate limit reached for {whose} on tokens per minute (TPM){local}: Limit {}, Used {used}, Requested {cost}. Please try again in {wait}.",
                    m.limit
                )
            };
            (ErrorKind::RateLimitTokens, msg, Some(reset_ms))
        }
        What::Parallel => (
            ErrorKind::RateLimitParallel,
            format!(
                "Too many parallel requests for {whose}{local}: Limit {}. Please try again when one finishes.",
                m.limit
            ),
            Some(1000),
        ),
        What::Budget => {
            let (period, retry) = plan.budget.as_ref().map_or(("", None), |(_, p)| {
                let retry = p
                    .ends_at
                    .map(|end| ((end * 1000) as u64).saturating_sub(now_ms()));
                (p.id.as_str(), retry)
            });
            (
                ErrorKind::BudgetExceeded,
                format!(
                    "Budget exceeded for key {}: spent ${} of ${} in period {period}{local}.",
                    plan.key_id,
                    spend::usd(used as i64),
                    spend::usd(m.limit as i64),
                ),
                retry,
            )
        }
    };
    let mut e = ProxyError::new(kind, message);
    if let Some(ms) = retry_ms {
        e = e.with_retry_after_ms(ms);
    }
    e
}

async fn recover(l: Arc<Limiter>) {
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if l.primary.ping().await.is_err() || !l.flush().await {
            continue;
        }
        l.up.store(true, Ordering::Release);
        l.metrics.limit_store_up.set(1);
        tracing::info!("limit store answers again; shared limits restored");
        // Settlements queued between the flush and the switch.
        if !l.flush().await {
            l.store_failed("settle", &store::StoreError("replay failed".into()));
        }
        return;
    }
}

/// Sends settlements to the shared store: whatever queued up while the previous batch was in
/// flight, or within a couple of milliseconds of the first, goes in one pipeline. While the store is away they wait in the replay queue.
async fn settler(
    l: std::sync::Weak<Limiter>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<SettleRequest>,
) {
    const MAX_BATCH: usize = 256;
    // A moment for other requests' settlements to join the first: at moderate load many
    // settle in one round trip instead of one each (under heavy load batches fill anyway).
    const LINGER: Duration = Duration::from_millis(2);
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut seq = 0;
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        if batch.len() < MAX_BATCH {
            tokio::time::sleep(LINGER).await;
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
        }
        let Some(l) = l.upgrade() else { return };
        let n = batch.len() as u64;
        if !l.is_up() {
            batch.drain(..).for_each(|r| l.enqueue(r));
            l.queued.fetch_sub(n, Ordering::AcqRel);
            continue;
        }
        // Numbered, so that a batch whose answer is lost is neither lost nor counted twice.
        seq += 1;
        if let Err(e) = l.primary.settle_marked(&batch, &l.replay_prefix, seq).await {
            if l.primary.marks_batches() {
                let mut p = l.pending.lock().unwrap_or_else(|p| p.into_inner());
                p.add_uncertain(seq, std::mem::take(&mut batch));
                l.metrics.limit_pending_settlements.set(p.len() as i64);
            } else {
                batch.drain(..).for_each(|r| l.enqueue(r));
            }
            l.store_failed("settle", &e);
        }
        batch.clear();
        l.queued.fetch_sub(n, Ordering::AcqRel);
    }
}

async fn sweeper(l: std::sync::Weak<Limiter>) {
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let Some(l) = l.upgrade() else { return };
        l.sweep_leases(false).await;
    }
}

async fn heartbeat(l: std::sync::Weak<Limiter>) {
    const EVERY: Duration = Duration::from_secs(2);
    loop {
        {
            let Some(l) = l.upgrade() else { return };
            if l.is_up() {
                match l.primary.heartbeat(&l.node, EVERY * 5).await {
                    Ok(n) => {
                        l.fleet.store(n.max(1), Ordering::Relaxed);
                        l.metrics.fleet_size.set(n.max(1) as i64);
                    }
                    Err(e) => l.store_failed("heartbeat", &e),
                }
            }
        }
        tokio::time::sleep(EVERY).await;
    }
}

/// What leases paid for a request still being decided: given back when dropped, unless the
/// request was admitted.
struct Unspent<'a> {
    limiter: &'a Arc<Limiter>,
    paid: Vec<Paid>,
}

impl Unspent<'_> {
    /// An admitted request keeps what it took.
    fn keep_if(&mut self, reply: &AdmitReply) {
        if matches!(reply, AdmitReply::Admitted(_)) {
            self.paid.clear();
        }
    }
}

impl Drop for Unspent<'_> {
    fn drop(&mut self) {
        if self.paid.is_empty() {
            return;
        }
        if let Some(leases) = &self.limiter.leases {
            for r in leases.give_back(&self.paid) {
                self.limiter.to_store(r);
            }
        }
    }
}

struct Settlement {
    plan: Plan,
    req: AdmitRequest,
    via: Via,
}

/// An admitted request. Settle it with the usage the provider reported; dropped unsettled
/// (the client went away mid-stream), it settles with the estimate.
pub struct Permit {
    limiter: Arc<Limiter>,
    settlement: Option<Settlement>,
    pub headers: RateHeaders,
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit")
            .field("settled", &self.settlement.is_none())
            .finish_non_exhaustive()
    }
}

impl Permit {
    /// Prices the settlement by the model that answered (a retry or fallback may have moved
    /// the request to another).
    pub fn reprice(&mut self, price: super::Price) {
        if let Some(s) = &mut self.settlement {
            s.plan.price = price;
        }
    }

    /// The input tokens estimated before the call (0 when no token limit or budget needed
    /// an estimate).
    pub fn estimated_input(&self) -> u64 {
        self.settlement
            .as_ref()
            .map_or(0, |s| s.plan.estimate.input)
    }

    /// Settles with actual usage (`None`: the estimate).
    pub fn settle(mut self, usage: Option<Usage>) {
        if let Some(s) = self.settlement.take() {
            self.limiter.settle(s, usage);
        }
    }
}

impl Observer for Permit {
    /// Settles by what the answer used (the estimate when it reported nothing).
    fn on_end(&mut self, end: &End) {
        if let Some(s) = self.settlement.take() {
            self.limiter.settle(s, end.usage);
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(s) = self.settlement.take() {
            self.limiter.settle(s, None);
        }
    }
}
