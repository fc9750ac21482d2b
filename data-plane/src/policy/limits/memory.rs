//! In-process counter store: standalone mode, fleets without Redis, and the local fallback
//! when Redis is unreachable. One mutex over a map; every admission is a handful of hash
//! lookups under it, and expired entries are swept at most every ten seconds.

use std::collections::HashMap;
use std::sync::Mutex;

use futures_util::future::{BoxFuture, FutureExt};

use super::store::{
    AdmitReply, AdmitRequest, CheckKind, LimitStore, SettleOp, SettleRequest, StoreError,
};

#[derive(Debug)]
enum Slot {
    Counter {
        value: i64,
        expires_ms: u64,
    },
    Leases(HashMap<String, u64>),
    Budget {
        spent: u64,
        reserved: u64,
        expires_ms: u64,
    },
}

#[derive(Debug, Default)]
struct State {
    slots: HashMap<String, Slot>,
    last_sweep_ms: u64,
}

/// Counters in this process's memory.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

fn expiry(now_ms: u64, ttl_ms: u64) -> u64 {
    if ttl_ms == 0 {
        u64::MAX
    } else {
        now_ms.saturating_add(ttl_ms)
    }
}

impl State {
    fn sweep(&mut self, now_ms: u64) {
        if now_ms.saturating_sub(self.last_sweep_ms) < 10_000 {
            return;
        }
        self.last_sweep_ms = now_ms;
        self.slots.retain(|_, s| match s {
            Slot::Counter { expires_ms, .. } | Slot::Budget { expires_ms, .. } => {
                *expires_ms > now_ms
            }
            Slot::Leases(l) => {
                l.retain(|_, exp| *exp > now_ms);
                !l.is_empty()
            }
        });
    }

    /// Current usage of a check's counter, dropping what expired.
    fn used(&mut self, key: &str, kind: CheckKind, now_ms: u64) -> u64 {
        match (self.slots.get_mut(key), kind) {
            (Some(Slot::Counter { value, expires_ms }), CheckKind::Window)
                if *expires_ms > now_ms =>
            {
                u64::try_from(*value).unwrap_or(0)
            }
            (Some(Slot::Leases(l)), CheckKind::Parallel) => {
                l.retain(|_, exp| *exp > now_ms);
                l.len() as u64
            }
            (
                Some(Slot::Budget {
                    spent,
                    reserved,
                    expires_ms,
                }),
                CheckKind::Budget | CheckKind::BudgetAlert,
            ) if *expires_ms > now_ms => spent.saturating_add(*reserved),
            _ => 0,
        }
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave a half-applied admission behind (every
        // mutation happens after every check), so a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn admit_now(&self, req: &AdmitRequest) -> AdmitReply {
        let now = req.now_ms;
        let mut st = self.lock();
        st.sweep(now);
        let mut used: Vec<Vec<u64>> = Vec::with_capacity(req.groups.len());
        for (gi, group) in req.groups.iter().enumerate() {
            let mut g = Vec::with_capacity(group.len());
            for (ci, c) in group.iter().enumerate() {
                if c.covered() {
                    // Paid by this proxy's lease on the shared store: nothing to count here.
                    g.push(0);
                    continue;
                }
                let u = st.used(&c.key, c.kind, now);
                let denied = match c.kind {
                    CheckKind::Window => u.saturating_add(c.charge()) > c.limit,
                    CheckKind::Parallel => u >= c.limit,
                    CheckKind::Budget => u >= c.limit,
                    CheckKind::BudgetAlert => false,
                };
                if denied {
                    return AdmitReply::Denied {
                        group: gi,
                        check: ci,
                        used: u,
                    };
                }
                g.push(u);
            }
            used.push(g);
        }
        for (group, g) in req.groups.iter().zip(used.iter_mut()) {
            for (c, u) in group.iter().zip(g.iter_mut()) {
                if c.covered() {
                    continue;
                }
                let exp = expiry(now, c.ttl_ms);
                let charge = c.charge();
                match c.kind {
                    CheckKind::Window => {
                        let slot = st.slots.entry(c.key.clone()).or_insert(Slot::Counter {
                            value: 0,
                            expires_ms: exp,
                        });
                        match slot {
                            Slot::Counter { value, expires_ms } if *expires_ms > now => {
                                *value = value.saturating_add(charge as i64);
                            }
                            other => {
                                *other = Slot::Counter {
                                    value: charge as i64,
                                    expires_ms: exp,
                                }
                            }
                        }
                        *u = u.saturating_add(charge);
                    }
                    CheckKind::Parallel => {
                        let slot = st
                            .slots
                            .entry(c.key.clone())
                            .or_insert_with(|| Slot::Leases(HashMap::new()));
                        if !matches!(slot, Slot::Leases(_)) {
                            *slot = Slot::Leases(HashMap::new());
                        }
                        if let Slot::Leases(l) = slot {
                            l.insert(req.member.clone(), exp);
                        }
                        *u += 1;
                    }
                    CheckKind::Budget | CheckKind::BudgetAlert => {
                        let slot = st.slots.entry(c.key.clone()).or_insert(Slot::Budget {
                            spent: 0,
                            reserved: 0,
                            expires_ms: exp,
                        });
                        match slot {
                            Slot::Budget {
                                reserved,
                                expires_ms,
                                ..
                            } if *expires_ms > now => {
                                *reserved = reserved.saturating_add(charge);
                                *expires_ms = exp;
                            }
                            other => {
                                *other = Slot::Budget {
                                    spent: 0,
                                    reserved: charge,
                                    expires_ms: exp,
                                }
                            }
                        }
                        *u = u.saturating_add(charge);
                    }
                }
            }
        }
        AdmitReply::Admitted(used)
    }

    pub fn settle_now(&self, req: &SettleRequest, now_ms: u64) {
        let mut st = self.lock();
        for op in req.groups.iter().flatten() {
            match op {
                SettleOp::Adjust { key, delta } => {
                    if let Some(Slot::Counter { value, expires_ms }) = st.slots.get_mut(key)
                        && *expires_ms > now_ms
                    {
                        *value = (*value).saturating_add(*delta).max(0);
                    }
                }
                SettleOp::Release { key } => {
                    if let Some(Slot::Leases(l)) = st.slots.get_mut(key) {
                        l.remove(&req.member);
                    }
                }
                SettleOp::Spend {
                    key,
                    reserved: r,
                    spent: s,
                    ttl_ms,
                } => {
                    let exp = expiry(now_ms, *ttl_ms);
                    let slot = st.slots.entry(key.clone()).or_insert(Slot::Budget {
                        spent: 0,
                        reserved: 0,
                        expires_ms: exp,
                    });
                    match slot {
                        Slot::Budget {
                            spent, reserved, ..
                        } => {
                            *reserved = reserved.saturating_sub(*r);
                            *spent = spent.saturating_add(*s);
                        }
                        other => {
                            *other = Slot::Budget {
                                spent: *s,
                                reserved: 0,
                                expires_ms: exp,
                            }
                        }
                    }
                }
            }
        }
    }

    pub fn budget_now(&self, key: &str) -> (u64, u64) {
        match self.lock().slots.get(key) {
            Some(Slot::Budget {
                spent, reserved, ..
            }) => (*spent, *reserved),
            _ => (0, 0),
        }
    }
}

impl LimitStore for MemoryStore {
    fn admit<'a>(&'a self, req: &'a AdmitRequest) -> BoxFuture<'a, Result<AdmitReply, StoreError>> {
        std::future::ready(Ok(self.admit_now(req))).boxed()
    }

    fn settle<'a>(&'a self, req: &'a SettleRequest) -> BoxFuture<'a, Result<(), StoreError>> {
        self.settle_now(req, super::now_ms());
        std::future::ready(Ok(())).boxed()
    }

    fn budget<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(u64, u64), StoreError>> {
        std::future::ready(Ok(self.budget_now(key))).boxed()
    }
}
