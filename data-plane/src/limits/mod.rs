//! Rate limits and budgets: what applies to a request (`plan`), the admission against the
//! counter store before the call (`Limiter::admit`), and the settlement with actual usage after
//! it (`Permit`).
//!
//! Semantics, the same for every store:
//! - Requests and tokens per minute count in fixed windows aligned to the clock minute.
//!   Tokens are charged with an estimate before the call and corrected with the usage the
//!   provider reports afterwards (streams included).
//! - Parallel requests are leases that end when the response (or stream) ends, or after the
//!   pool's total timeout if a proxy dies holding one.
//! - A budget admits while `spent + reserved < amount`; each request reserves its estimated
//!   cost and settles it with the actual cost, so overspend is bounded by the requests in
//!   flight whatever the number of proxies.
//! - When the shared store (Redis) is unreachable the configured mode decides: fail open onto
//!   local limits divided by the last known fleet size, or fail closed (503). Settlements that
//!   could not reach Redis are queued and replayed when it answers again.

pub mod memory;
pub mod redis;
pub mod store;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use http::{HeaderMap, HeaderName, HeaderValue};
use switchyard_crds::spend;
use switchyard_proto::v1 as pb;

use crate::error::{ErrorKind, ProxyError};
use crate::metrics::{LimitLabels, Metrics, OpLabels, ResultLabels};
use crate::openai::Usage;
use memory::MemoryStore;
use store::{AdmitReply, AdmitRequest, Check, CheckKind, LimitStore, SettleOp, SettleRequest};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Rate limits of one scope; 0 = unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    pub rpm: u64,
    pub tpm: u64,
    pub parallel: u64,
}

impl Limits {
    pub fn from_proto(l: Option<pb::Limits>) -> Self {
        let l = l.unwrap_or_default();
        Self {
            rpm: l.requests_per_minute,
            tpm: l.tokens_per_minute,
            parallel: l.max_parallel,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rpm == 0 && self.tpm == 0 && self.parallel == 0
    }
}

/// A key's budget.
#[derive(Clone, Copy, Debug)]
pub struct BudgetSpec {
    pub amount_nanos: u64,
    pub period: pb::BudgetPeriod,
    pub alert_only: bool,
}

impl BudgetSpec {
    pub fn from_proto(b: Option<pb::Budget>) -> Option<Self> {
        b.filter(|b| b.amount_nanos > 0).map(|b| Self {
            amount_nanos: b.amount_nanos,
            period: b.period(),
            alert_only: b.alert_only,
        })
    }
}

/// Price of a model in micro-dollars per million tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Price {
    pub input: u64,
    pub output: u64,
}

impl Price {
    /// Cost in nano-dollars.
    pub fn cost_nanos(&self, input: u64, output: u64) -> u64 {
        let n = u128::from(input) * u128::from(self.input)
            + u128::from(output) * u128::from(self.output);
        u64::try_from(n / 1000).unwrap_or(u64::MAX)
    }
}

/// Tokens a request is expected to use, before the call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Estimate {
    pub input: u64,
    pub output: u64,
}

/// Where a limit applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Key,
    KeyModel,
    Route,
}

impl Scope {
    fn label(self) -> &'static str {
        match self {
            Scope::Key => "key",
            Scope::KeyModel => "key_model",
            Scope::Route => "route",
        }
    }
}

/// What a check counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum What {
    Requests,
    Tokens,
    Parallel,
    Budget,
}

impl What {
    fn label(self) -> &'static str {
        match self {
            What::Requests => "requests",
            What::Tokens => "tokens",
            What::Parallel => "parallel",
            What::Budget => "budget",
        }
    }
}

#[derive(Clone, Debug)]
struct Meta {
    scope: Scope,
    what: What,
    limit: u64,
}

/// The inputs of a plan: who asks for what.
#[derive(Debug)]
pub struct Subject<'a> {
    pub key_id: &'a str,
    pub key_limits: Limits,
    /// Limits of the key's `modelLimits` entries that match the model.
    pub model_limits: Vec<(usize, Limits)>,
    pub budget: Option<BudgetSpec>,
    pub route_id: &'a str,
    pub route_limits: Limits,
    pub model: &'a str,
    pub price: Price,
    /// How long a parallel-request lease lives if never released.
    pub lease: Duration,
}

/// Everything to check for one request; `None` from [`plan`] when nothing applies.
#[derive(Debug)]
pub struct Plan {
    key_id: String,
    groups: Vec<Vec<Check>>,
    meta: Vec<Vec<Meta>>,
    estimate: Estimate,
    est_tokens: u64,
    price: Price,
    window_end_ms: u64,
    budget: Option<(BudgetSpec, spend::Period)>,
}

fn limit_checks(
    tag: &str,
    scope: Scope,
    l: Limits,
    c: &mut PlanCtx,
    checks: &mut Vec<Check>,
    meta: &mut Vec<Meta>,
) {
    let window = |what: &str| format!("{tag}:{what}:{}", c.minute);
    if l.rpm > 0 {
        checks.push(Check {
            key: window("rpm"),
            kind: CheckKind::Window,
            limit: l.rpm,
            cost: 1,
            ttl_ms: c.window_ttl_ms,
        });
        meta.push(Meta {
            scope,
            what: What::Requests,
            limit: l.rpm,
        });
    }
    if l.tpm > 0 {
        checks.push(Check {
            key: window("tpm"),
            kind: CheckKind::Window,
            limit: l.tpm,
            cost: c.est_tokens,
            ttl_ms: c.window_ttl_ms,
        });
        meta.push(Meta {
            scope,
            what: What::Tokens,
            limit: l.tpm,
        });
    }
    if l.parallel > 0 {
        checks.push(Check {
            key: format!("{tag}:par"),
            kind: CheckKind::Parallel,
            limit: l.parallel,
            cost: 1,
            ttl_ms: c.lease_ms,
        });
        meta.push(Meta {
            scope,
            what: What::Parallel,
            limit: l.parallel,
        });
    }
}

struct PlanCtx {
    minute: u64,
    window_ttl_ms: u64,
    lease_ms: u64,
    est_tokens: u64,
}

/// What to check for a request. `estimate` runs only when a token limit or a budget applies
/// (tokenizing is the expensive part).
pub fn plan(s: &Subject<'_>, now_ms: u64, estimate: impl FnOnce() -> Estimate) -> Option<Plan> {
    let model_tokens = s.model_limits.iter().any(|(_, l)| l.tpm > 0);
    let needs_estimate =
        s.key_limits.tpm > 0 || s.route_limits.tpm > 0 || model_tokens || s.budget.is_some();
    if !needs_estimate
        && s.key_limits.is_empty()
        && s.route_limits.is_empty()
        && s.model_limits.iter().all(|(_, l)| l.is_empty())
    {
        return None;
    }
    let est = if needs_estimate {
        estimate()
    } else {
        Estimate::default()
    };
    let minute = now_ms / 60_000;
    let window_end_ms = (minute + 1) * 60_000;
    let mut c = PlanCtx {
        minute,
        // A minute's counter outlives its window by a minute so late corrections land.
        window_ttl_ms: window_end_ms - now_ms + 60_000,
        lease_ms: s.lease.as_millis() as u64,
        est_tokens: est.input + est.output,
    };
    let key_tag = format!("sy:{{k:{}}}", s.key_id);
    let (mut kc, mut km) = (Vec::new(), Vec::new());
    limit_checks(&key_tag, Scope::Key, s.key_limits, &mut c, &mut kc, &mut km);
    for (i, l) in &s.model_limits {
        let tag = format!("{key_tag}:m{i}:{}", s.model);
        limit_checks(&tag, Scope::KeyModel, *l, &mut c, &mut kc, &mut km);
    }
    let now_s = (now_ms / 1000) as i64;
    let budget = s.budget.map(|b| (b, spend::period(b.period, now_s)));
    if let Some((b, p)) = &budget {
        kc.push(Check {
            key: spend::spend_key(s.key_id, &p.id),
            kind: if b.alert_only {
                CheckKind::BudgetAlert
            } else {
                CheckKind::Budget
            },
            limit: b.amount_nanos,
            cost: s.price.cost_nanos(est.input, est.output),
            ttl_ms: budget_ttl_ms(p, now_s),
        });
        km.push(Meta {
            scope: Scope::Key,
            what: What::Budget,
            limit: b.amount_nanos,
        });
    }
    let (mut groups, mut meta) = (Vec::new(), Vec::new());
    if !kc.is_empty() {
        groups.push(kc);
        meta.push(km);
    }
    let (mut rc, mut rm) = (Vec::new(), Vec::new());
    let route_tag = format!("sy:{{r:{}}}", s.route_id);
    limit_checks(
        &route_tag,
        Scope::Route,
        s.route_limits,
        &mut c,
        &mut rc,
        &mut rm,
    );
    if !rc.is_empty() {
        groups.push(rc);
        meta.push(rm);
    }
    Some(Plan {
        key_id: s.key_id.to_owned(),
        groups,
        meta,
        estimate: est,
        est_tokens: c.est_tokens,
        price: s.price,
        window_end_ms,
        budget,
    })
}

/// Spend stays in Redis a week past its period, so status can still show the last period.
fn budget_ttl_ms(p: &spend::Period, now_s: i64) -> u64 {
    p.ends_at
        .map_or(0, |end| ((end - now_s).max(1) as u64 + 7 * 86_400) * 1000)
}

/// The `x-ratelimit-*` headers of a response: the tightest request and token limits.
#[derive(Clone, Debug, Default)]
pub struct RateHeaders {
    requests: Option<(u64, u64)>,
    tokens: Option<(u64, u64)>,
    reset_ms: u64,
}

fn duration_text(ms: u64) -> String {
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{}.{:03}s", ms / 1000, ms % 1000)
    }
}

impl RateHeaders {
    fn tighten(slot: &mut Option<(u64, u64)>, limit: u64, used: u64) {
        let remaining = limit.saturating_sub(used);
        if slot.is_none_or(|(_, r)| remaining < r) {
            *slot = Some((limit, remaining));
        }
    }

    pub fn apply(&self, h: &mut HeaderMap) {
        let reset = duration_text(self.reset_ms);
        let mut put = |name: &'static str, v: String| {
            if let Ok(v) = HeaderValue::from_str(&v) {
                h.insert(HeaderName::from_static(name), v);
            }
        };
        if let Some((limit, remaining)) = self.requests {
            put("x-ratelimit-limit-requests", limit.to_string());
            put("x-ratelimit-remaining-requests", remaining.to_string());
            put("x-ratelimit-reset-requests", reset.clone());
        }
        if let Some((limit, remaining)) = self.tokens {
            put("x-ratelimit-limit-tokens", limit.to_string());
            put("x-ratelimit-remaining-tokens", remaining.to_string());
            put("x-ratelimit-reset-tokens", reset);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.requests.is_none() && self.tokens.is_none()
    }
}

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

/// Pending settlements kept while Redis is away (about 200 bytes each).
const MAX_PENDING: usize = 100_000;

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
    pending: Mutex<VecDeque<SettleRequest>>,
    /// Last spend + reservations seen in the shared store, by budget key: what is left of a
    /// budget when falling back to local limits.
    budget_seen: Mutex<HashMap<String, u64>>,
    /// Settlements for the shared store, sent in batches by one task.
    settle_tx: Option<tokio::sync::mpsc::UnboundedSender<SettleRequest>>,
    metrics: Arc<Metrics>,
}

impl Limiter {
    /// A limiter over `primary`. For a shared store, starts the fleet heartbeat.
    pub fn new(
        primary: Arc<dyn LimitStore>,
        mode: FailMode,
        node: String,
        fleet_size: u64,
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
            node,
            seq: AtomicU64::new(0),
            pending: Mutex::new(VecDeque::new()),
            budget_seen: Mutex::new(HashMap::new()),
            settle_tx,
            metrics,
        });
        if shared {
            tokio::spawn(heartbeat(Arc::downgrade(&l)));
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
            metrics,
        )
    }

    /// Whether the shared store is answering.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Spent and reserved nano-dollars of a budget key in the primary store.
    pub async fn budget(&self, key: &str) -> Result<(u64, u64), store::StoreError> {
        self.primary.budget(key).await
    }

    /// Checks and charges every limit of a plan.
    pub async fn admit(self: &Arc<Self>, mut plan: Plan) -> Result<Permit, ProxyError> {
        let now = now_ms();
        let member = format!("{}-{}", self.node, self.seq.fetch_add(1, Ordering::Relaxed));
        // The checks move into the request; the plan keeps what describes them.
        let req = AdmitRequest {
            now_ms: now,
            member,
            groups: std::mem::take(&mut plan.groups),
        };
        if self.is_up() {
            let started = Instant::now();
            match self.primary.admit(&req).await {
                Ok(reply) => {
                    self.metrics
                        .limit_check_duration
                        .observe(started.elapsed().as_secs_f64());
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
                                    if seen.len() >= MAX_PENDING && !seen.contains_key(&c.key) {
                                        seen.clear();
                                    }
                                    seen.insert(c.key.clone(), *u);
                                }
                                if c.kind == CheckKind::BudgetAlert
                                    && u.saturating_sub(c.cost) >= m.limit
                                {
                                    self.metrics.budget_alerts.inc();
                                    tracing::warn!(
                                        key = %plan.key_id,
                                        spent_usd = %spend::usd(*u as i64),
                                        budget_usd = %spend::usd(m.limit as i64),
                                        "budget exceeded (action Alert: request served)"
                                    );
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

    fn enqueue(&self, req: SettleRequest) {
        let mut q = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() >= MAX_PENDING {
            q.pop_front();
            self.metrics.limit_dropped_settlements.inc();
        }
        q.push_back(req);
        self.metrics.limit_pending_settlements.set(q.len() as i64);
    }

    /// Replays queued settlements; false when the store failed again.
    async fn flush(&self) -> bool {
        loop {
            let next = self
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop_front();
            let Some(req) = next else {
                self.metrics.limit_pending_settlements.set(0);
                return true;
            };
            if self.primary.settle(&req).await.is_err() {
                let mut q = self.pending.lock().unwrap_or_else(|p| p.into_inner());
                q.push_front(req);
                self.metrics.limit_pending_settlements.set(q.len() as i64);
                return false;
            }
        }
    }

    fn settle(self: &Arc<Self>, s: Settlement, usage: Option<Usage>) {
        let plan = &s.plan;
        let (input, output) = usage.map_or((plan.estimate.input, plan.estimate.output), |u| {
            (u.prompt_tokens, u.completion_tokens)
        });
        let actual_tokens = input + output;
        let cost = plan.price.cost_nanos(input, output);
        let mut groups = Vec::with_capacity(s.req.groups.len());
        let mut spend_only = Vec::new();
        for (group, meta) in s.req.groups.iter().zip(&plan.meta) {
            let mut ops = Vec::new();
            for (c, m) in group.iter().zip(meta) {
                match m.what {
                    What::Requests => {}
                    What::Tokens => {
                        let delta = actual_tokens as i64 - plan.est_tokens as i64;
                        if delta != 0 {
                            ops.push(SettleOp::Adjust {
                                key: c.key.clone(),
                                delta,
                            });
                        }
                    }
                    What::Parallel => ops.push(SettleOp::Release { key: c.key.clone() }),
                    What::Budget => {
                        let ttl_ms = plan
                            .budget
                            .as_ref()
                            .map_or(0, |(_, p)| budget_ttl_ms(p, (now_ms() / 1000) as i64));
                        ops.push(SettleOp::Spend {
                            key: c.key.clone(),
                            reserved: c.cost,
                            spent: cost,
                            ttl_ms,
                        });
                        spend_only.push(SettleOp::Spend {
                            key: c.key.clone(),
                            reserved: 0,
                            spent: cost,
                            ttl_ms,
                        });
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
                // Spend made while Redis was away still counts once it is back.
                if self.primary.shared() && !spend_only.is_empty() {
                    self.enqueue(SettleRequest {
                        member: req.member,
                        groups: vec![spend_only],
                    });
                }
            }
            Via::Shared => match &self.settle_tx {
                Some(tx) => {
                    if let Err(e) = tx.send(req) {
                        // The settler is gone (shutting down): keep it for a replay.
                        self.enqueue(e.0);
                    }
                }
                // A process-local primary answers at once (`shared()` is false).
                None => match self.primary.settle(&req).now_or_never() {
                    Some(Ok(())) => {}
                    Some(Err(e)) => tracing::warn!(error = %e, "settlement failed"),
                    None => tracing::error!("a local limit store did not settle at once"),
                },
            },
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
/// flight goes in one pipeline. While the store is away they wait in the replay queue.
async fn settler(
    l: std::sync::Weak<Limiter>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<SettleRequest>,
) {
    const MAX_BATCH: usize = 256;
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let Some(l) = l.upgrade() else { return };
        if !l.is_up() {
            batch.drain(..).for_each(|r| l.enqueue(r));
            continue;
        }
        if let Err(e) = l.primary.settle_batch(&batch).await {
            batch.drain(..).for_each(|r| l.enqueue(r));
            l.store_failed("settle", &e);
        }
        batch.clear();
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
    /// Settles with actual usage (`None`: the estimate).
    pub fn settle(mut self, usage: Option<Usage>) {
        if let Some(s) = self.settlement.take() {
            self.limiter.settle(s, usage);
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

#[cfg(test)]
mod tests;
