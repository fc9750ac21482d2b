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
//! - With a shared store, a proxy leases slices of busy counters and spends them without a
//!   round trip (`lease.rs`): leased quota is charged when taken, so limits hold; a proxy may
//!   refuse early while others hold unspent slices.
//! - When the shared store (Redis) is unreachable the configured mode decides: fail open onto
//!   local limits divided by the last known fleet size, or fail closed (503). Settlements that
//!   could not reach Redis are summed per counter and replayed, once, when it answers again.

mod lease;
mod limiter;
pub mod memory;
mod pending;
pub mod redis;
pub mod store;

pub use limiter::{FailMode, Limiter, Permit};

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use switchyard_crds::spend;
use switchyard_proto::v1 as pb;

use store::{Check, CheckKind};

use crate::llm::{Estimate, Price, Usage};

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

impl Plan {
    /// Tokens charged to token windows before the call.
    fn est_tokens(&self) -> u64 {
        self.estimate.input + self.estimate.output
    }
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
    price: Price,
    window_end_ms: u64,
    budget: Option<(BudgetSpec, spend::Period)>,
}

fn limit_checks(
    tag: &str,
    scope: Scope,
    l: Limits,
    c: &PlanCtx,
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
            leased: None,
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
            leased: None,
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
            leased: None,
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
    let c = PlanCtx {
        minute,
        // A minute's counter outlives its window by a minute so late corrections land.
        window_ttl_ms: window_end_ms - now_ms + 60_000,
        lease_ms: s.lease.as_millis() as u64,
        est_tokens: est.input + est.output,
    };
    let key_tag = format!("sy:{{k:{}}}", s.key_id);
    let (mut kc, mut km) = (Vec::new(), Vec::new());
    limit_checks(&key_tag, Scope::Key, s.key_limits, &c, &mut kc, &mut km);
    for (i, l) in &s.model_limits {
        let tag = format!("{key_tag}:m{i}:{}", s.model);
        limit_checks(&tag, Scope::KeyModel, *l, &c, &mut kc, &mut km);
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
            cost: s.price.cost_nanos(&Usage::new(est.input, est.output)),
            ttl_ms: budget_ttl_ms(p, now_s),
            leased: None,
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
        &c,
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

#[cfg(test)]
mod tests;
