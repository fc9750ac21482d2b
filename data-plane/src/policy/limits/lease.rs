//! Quota leases: a proxy takes a slice of a shared counter's remaining quota in one round
//! trip and spends it locally, so most requests on a busy key never wait for Redis.
//!
//! - **Leased quota is charged in Redis when it is taken**, so other proxies see it as used:
//!   leasing never lets a limit be exceeded. Token and budget corrections after the call
//!   travel as before, so what can overshoot is what could before (the requests in flight).
//! - **What it costs is early refusals**: a proxy may refuse while others hold quota they have
//!   not spent yet. That quota is bounded: one lease takes at most `percent` of the limit and
//!   at most `1/(2 × fleet)` of what is left, so leases shrink as a limit nears exhaustion and
//!   stop when what is left is small; an idle lease (one second) goes back.
//! - **A lease that cannot pay for a whole request pays for part of it**: the store checks and
//!   charges the rest, in the same round trip a lease-less request would take. No remainder
//!   is stranded.
//! - **Small limits are never leased**: a lease must pay for at least four requests.
//! - **Parallel-request slots** are leased as named members of the counter's set, with an
//!   expiry refreshed while the proxy holds them: a proxy that dies releases them within
//!   [`SLOT_TTL_MS`].
//!
//! A request first takes from the leases ([`Leases::take`]); when that covers every check it
//! is admitted without a round trip, otherwise the store admits the rest. Either way, a lease
//! running low is refilled in the background, one refill per counter at a time.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::store::{CheckKind, Group, LeaseAsk, LeaseGrant, SettleOp, SettleRequest};

/// How long leased parallel slots live in Redis unless refreshed.
pub(super) const SLOT_TTL_MS: u64 = 30_000;
/// An unused lease goes back after this long.
const IDLE_MS: u64 = 1_000;
/// After the store granted nothing, the next ask waits this long.
const DRY_MS: u64 = 250;
/// The most parallel slots one lease takes.
const MAX_SLOTS: u64 = 64;
/// A lease must pay for at least this many requests to be worth taking.
const MIN_REQUESTS: u64 = 4;
/// Lua's numbers are doubles: leases stay well inside their integers.
const MAX_LEASE: u64 = 1 << 50;

#[derive(Debug)]
struct Lease {
    kind: CheckKind,
    /// Quota left to spend (parallel: free slots).
    left: u64,
    /// The size of the last grant asked for: a refill starts below half of it.
    want: u64,
    /// The store's usage after the last grant (for rate-limit headers).
    used_seen: u64,
    refilling: bool,
    dry_until_ms: u64,
    touched_ms: u64,
    /// Window counters: the end of the window (the counter dies with it).
    ends_ms: u64,
    /// Parallel: the slots held, and when they expire unless refreshed.
    slots: Vec<String>,
    slots_expire_ms: u64,
}

/// What a request took from the leases.
#[derive(Debug, Default)]
pub(super) struct Taken {
    /// Every check was paid by a lease: no store round trip.
    pub(super) covered: bool,
    /// Estimated usage of each check (as the store would report), for headers.
    pub(super) used: Vec<Vec<u64>>,
    /// Leases to refill.
    pub(super) asks: Vec<LeaseAsk>,
}

/// What the sweeper found to do.
#[derive(Debug, Default)]
pub(super) struct Swept {
    /// Unused quota to give back.
    pub(super) returns: Vec<SettleRequest>,
    /// Parallel slots to keep alive: key, slots, new expiry.
    pub(super) refresh: Vec<(String, Vec<String>, u64)>,
}

/// This proxy's leases, by counter key.
#[derive(Debug)]
pub(super) struct Leases {
    map: Mutex<HashMap<String, Lease>>,
    percent: u64,
    /// Names this process's slots: the node and a random part, so a restarted proxy never
    /// reuses a live slot's name.
    slot_prefix: String,
    slot_seq: AtomicU64,
    /// Shutting down: no new leases.
    closed: AtomicBool,
}

/// What a request took from a lease: counter key, kind, amount.
pub(super) type Paid = (String, CheckKind, u64);

/// The settlements that give `amount` of a lease back to the store (parallel: the slots).
fn unspent(
    kind: CheckKind,
    key: &str,
    amount: u64,
    slots: impl Iterator<Item = String>,
) -> Vec<SettleRequest> {
    let one = |member: String, op| SettleRequest {
        member,
        groups: vec![vec![op]],
    };
    match kind {
        CheckKind::Window if amount > 0 => vec![one(
            String::new(),
            SettleOp::Adjust {
                key: key.to_owned(),
                delta: -(amount.min(i64::MAX as u64) as i64),
            },
        )],
        CheckKind::Budget | CheckKind::BudgetAlert if amount > 0 => vec![one(
            String::new(),
            SettleOp::Spend {
                key: key.to_owned(),
                reserved: amount,
                spent: 0,
                ttl_ms: 0,
            },
        )],
        CheckKind::Parallel => slots
            .map(|slot| {
                one(
                    slot,
                    SettleOp::Release {
                        key: key.to_owned(),
                    },
                )
            })
            .collect(),
        _ => Vec::new(),
    }
}

impl Leases {
    pub(super) fn new(percent: u64, node: &str) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            percent: percent.min(100),
            slot_prefix: format!("{node}:{:08x}", fastrand::u32(..)),
            slot_seq: AtomicU64::new(0),
            closed: AtomicBool::new(false),
        }
    }

    /// Stops new leases (at shutdown).
    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Lease>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The lease size for a limit, if the limit is worth leasing for requests of `cost`.
    fn size(&self, kind: CheckKind, limit: u64, cost: u64) -> Option<u64> {
        let mut want = (limit / 100).saturating_mul(self.percent).min(MAX_LEASE);
        if kind == CheckKind::Parallel {
            want = want.min(MAX_SLOTS);
        }
        (want >= MIN_REQUESTS.saturating_mul(cost.max(1))).then_some(want)
    }

    /// Pays for what it can of each check from the leases (setting `Check::leased`), and
    /// says which leases to refill. `fleet` is the number of proxies sharing the store.
    pub(super) fn take(&self, groups: &mut [Group], now_ms: u64, fleet: u64) -> Taken {
        let mut map = self.lock();
        let mut covered = true;
        let mut used = Vec::with_capacity(groups.len());
        let mut asks = Vec::new();
        for group in groups.iter_mut() {
            let mut u = Vec::with_capacity(group.len());
            for c in group.iter_mut() {
                let cost = if c.kind == CheckKind::Parallel {
                    1
                } else {
                    c.cost
                };
                let mut seen = 0;
                let lease = map.get_mut(&c.key).filter(|l| l.ends_ms > now_ms);
                if let Some(l) = lease {
                    l.touched_ms = now_ms;
                    let free = cost == 0 && l.left > 0;
                    let paid = if c.kind == CheckKind::Parallel {
                        u64::from(l.left > 0)
                    } else {
                        l.left.min(cost)
                    };
                    l.left -= paid;
                    if paid > 0 || free {
                        c.leased = Some(paid);
                    }
                    seen = l.used_seen.saturating_sub(l.left);
                    if !l.refilling && l.left < l.want / 2 && l.dry_until_ms <= now_ms {
                        l.refilling = true;
                        asks.push(self.ask(c.kind, &c.key, c.limit, l.want, c.ttl_ms, fleet));
                    }
                } else if let Some(want) = self
                    .size(c.kind, c.limit, cost)
                    .filter(|_| !self.closed.load(Ordering::Acquire))
                {
                    let ends_ms = match c.kind {
                        CheckKind::Window => now_ms.saturating_add(c.ttl_ms).saturating_sub(60_000),
                        _ => u64::MAX,
                    };
                    map.insert(
                        c.key.clone(),
                        Lease {
                            kind: c.kind,
                            left: 0,
                            want,
                            used_seen: 0,
                            refilling: true,
                            dry_until_ms: 0,
                            touched_ms: now_ms,
                            ends_ms,
                            slots: Vec::new(),
                            slots_expire_ms: 0,
                        },
                    );
                    asks.push(self.ask(c.kind, &c.key, c.limit, want, c.ttl_ms, fleet));
                }
                covered &= c.covered();
                u.push(seen);
            }
            used.push(u);
        }
        Taken {
            covered,
            used,
            asks,
        }
    }

    fn ask(
        &self,
        kind: CheckKind,
        key: &str,
        limit: u64,
        want: u64,
        ttl_ms: u64,
        fleet: u64,
    ) -> LeaseAsk {
        let (ttl_ms, slots) = match kind {
            CheckKind::Parallel => {
                let first = self.slot_seq.fetch_add(want, Ordering::Relaxed);
                let slots = (first..first + want)
                    .map(|n| format!("{}:lease:{n}", self.slot_prefix))
                    .collect();
                (SLOT_TTL_MS, slots)
            }
            _ => (ttl_ms, Vec::new()),
        };
        LeaseAsk {
            key: key.to_owned(),
            kind,
            limit,
            want,
            share: fleet.max(1).saturating_mul(2),
            ttl_ms,
            slots,
        }
    }

    /// What the checks of a request took from leases.
    pub(super) fn paid(groups: &[Group]) -> Vec<Paid> {
        groups
            .iter()
            .flatten()
            .filter_map(|c| match c.leased {
                Some(p) if p > 0 => Some((c.key.clone(), c.kind, p)),
                _ => None,
            })
            .collect()
    }

    /// Gives back what a request that was not admitted took. What belongs to a lease that
    /// is gone meanwhile is returned for the store.
    pub(super) fn give_back(&self, paid: &[Paid]) -> Vec<SettleRequest> {
        let mut map = self.lock();
        let mut orphans = Vec::new();
        for (key, kind, amount) in paid {
            match map.get_mut(key) {
                Some(l) => l.left += amount,
                // A parallel lease is never swept with a slot in use.
                None => orphans.extend(unspent(*kind, key, *amount, std::iter::empty())),
            }
        }
        orphans
    }

    /// A request admitted on a leased parallel slot ended.
    pub(super) fn release_slot(&self, key: &str) {
        if let Some(l) = self.lock().get_mut(key) {
            l.left = (l.left + 1).min(l.slots.len() as u64);
        }
    }

    /// Installs what the store granted for `asks` (`None`: it did not answer). A grant for
    /// a lease that is gone meanwhile (shutdown) is returned for the store.
    pub(super) fn granted(
        &self,
        asks: Vec<LeaseAsk>,
        grants: Option<Vec<LeaseGrant>>,
        now_ms: u64,
    ) -> Vec<SettleRequest> {
        let mut map = self.lock();
        let mut orphans = Vec::new();
        for (i, ask) in asks.into_iter().enumerate() {
            let g = grants.as_ref().and_then(|g| g.get(i)).copied();
            let Some(l) = map.get_mut(&ask.key) else {
                if let Some(g) = g {
                    let slots = ask.slots.into_iter().take(g.granted as usize);
                    orphans.extend(unspent(ask.kind, &ask.key, g.granted, slots));
                }
                continue;
            };
            l.refilling = false;
            let Some(g) = g else { continue };
            if g.granted == 0 {
                l.dry_until_ms = now_ms + DRY_MS;
                continue;
            }
            l.left += g.granted;
            l.used_seen = g.used;
            if ask.kind == CheckKind::Parallel {
                // The earliest expiry of the slots held decides when they are refreshed.
                let expires = now_ms + ask.ttl_ms;
                if l.slots.is_empty() || expires < l.slots_expire_ms {
                    l.slots_expire_ms = expires;
                }
                l.slots
                    .extend(ask.slots.into_iter().take(g.granted as usize));
            }
        }
        orphans
    }

    /// The slots of `key` listed in a refresh now live until `expires_ms`.
    pub(super) fn refreshed(&self, key: &str, expires_ms: u64) {
        if let Some(l) = self.lock().get_mut(key) {
            l.slots_expire_ms = expires_ms;
        }
    }

    /// Takes out the leases that ended or sat idle (what they hold unspent goes back, except
    /// a window's that ended with its counter), and the parallel slots due for a refresh.
    /// `all`: every lease, at shutdown.
    pub(super) fn sweep(&self, now_ms: u64, all: bool) -> Swept {
        let mut out = Swept::default();
        let mut map = self.lock();
        map.retain(|key, l| {
            let held = l.slots.len() as u64;
            let in_use = held - l.left.min(held);
            if !all && held > 0 {
                // Slots are refreshed until the store confirms (`refreshed`), so a failed
                // refresh is tried again at the next sweep.
                if l.slots_expire_ms.saturating_sub(now_ms) < SLOT_TTL_MS / 2 {
                    out.refresh
                        .push((key.clone(), l.slots.clone(), now_ms + SLOT_TTL_MS));
                }
                // A burst's refills are not kept after it: free slots beyond one and a half
                // grants go back.
                let keep = l.want + l.want / 2;
                if l.left > keep {
                    let surplus = (l.left - keep) as usize;
                    l.left = keep;
                    let cut = l.slots.len() - surplus;
                    let slots = l.slots.drain(cut..);
                    out.returns
                        .extend(unspent(l.kind, key, surplus as u64, slots));
                }
            }
            if l.refilling && !all {
                return true;
            }
            let ended = l.ends_ms <= now_ms;
            let idle = now_ms.saturating_sub(l.touched_ms) >= IDLE_MS
                && (l.kind != CheckKind::Parallel || in_use == 0);
            if !(all || ended || idle) {
                return true;
            }
            // A window that ended took its counter with it; slots still in use at shutdown
            // expire with their ttl.
            let amount = if l.kind == CheckKind::Window && ended {
                0
            } else {
                l.left
            };
            let free = l.slots.len().saturating_sub(in_use as usize);
            out.returns
                .extend(unspent(l.kind, key, amount, l.slots.drain(..free)));
            false
        });
        out
    }

    /// Leases held (for the gauge).
    pub(super) fn len(&self) -> usize {
        self.lock().len()
    }

    /// What is left of the lease on `key`.
    #[cfg(test)]
    pub(super) fn left(&self, key: &str) -> Option<u64> {
        self.lock().get(key).map(|l| l.left)
    }
}

#[cfg(test)]
mod tests {
    use super::super::store::Check;
    use super::*;

    fn window(key: &str, limit: u64, cost: u64) -> Check {
        Check {
            key: key.into(),
            kind: CheckKind::Window,
            limit,
            cost,
            ttl_ms: 90_000,
            leased: None,
        }
    }

    fn parallel() -> Check {
        Check {
            key: "p".into(),
            kind: CheckKind::Parallel,
            limit: 1_000,
            cost: 1,
            ttl_ms: 120_000,
            leased: None,
        }
    }

    fn grant(l: &Leases, asks: Vec<LeaseAsk>, granted: u64) {
        let n = asks.len();
        l.granted(
            asks,
            Some(vec![
                LeaseGrant {
                    granted,
                    used: granted
                };
                n
            ]),
            0,
        );
    }

    #[test]
    fn a_small_limit_is_never_leased() {
        let l = Leases::new(1, "n");
        let mut g = vec![vec![window("k", 300, 1)]];
        let t = l.take(&mut g, 0, 1);
        assert!(
            !t.covered && t.asks.is_empty(),
            "1% of 300 pays for 3 requests"
        );
        assert_eq!(l.len(), 0);
    }

    #[test]
    fn a_lease_pays_then_pays_part_then_refills_once() {
        let l = Leases::new(1, "n");
        let take = |cost| {
            let mut g = vec![vec![window("k", 100_000, cost)]];
            let t = l.take(&mut g, 1, 3);
            (t, g)
        };
        let (t, _) = take(200);
        assert!(!t.covered, "the first request goes to the store");
        assert_eq!(t.asks.len(), 1);
        assert_eq!((t.asks[0].want, t.asks[0].share), (1000, 6));
        assert!(take(200).0.asks.is_empty(), "one refill at a time");
        grant(&l, t.asks, 1000);
        let (t, _) = take(200);
        assert!(t.covered && t.asks.is_empty(), "800 left: no refill yet");
        assert!(take(200).0.covered);
        let (t, _) = take(200);
        assert!(
            t.covered && t.asks.len() == 1,
            "400 left, under half: refill"
        );
        assert!(take(300).0.covered);
        let (t, g) = take(300);
        assert!(!t.covered && t.asks.is_empty());
        assert_eq!(g[0][0].leased, Some(100), "the last 100 pay part");
        assert_eq!(g[0][0].charge(), 200);
        assert!(l.give_back(&Leases::paid(&g)).is_empty());
        assert!(take(100).0.covered, "what a refusal took is back");
        assert!(!take(1).0.covered, "and nothing more");
    }

    #[test]
    fn idle_leases_go_back_and_ended_windows_are_dropped() {
        let l = Leases::new(1, "n");
        let mut g = vec![vec![window("w", 100_000, 10)]];
        grant(&l, l.take(&mut g, 0, 1).asks, 1000);
        let mut b = vec![vec![Check {
            kind: CheckKind::Budget,
            key: "b".into(),
            limit: 1_000_000,
            cost: 5,
            ttl_ms: 0,
            leased: None,
        }]];
        grant(&l, l.take(&mut b, 0, 1).asks, 10_000);
        assert!(l.sweep(500, false).returns.is_empty(), "not idle yet");
        let swept = l.sweep(1_000, false);
        assert_eq!(swept.returns.len(), 2);
        let ops: Vec<_> = swept
            .returns
            .iter()
            .flat_map(|r| r.groups.concat())
            .collect();
        assert!(ops.contains(&SettleOp::Adjust {
            key: "w".into(),
            delta: -1000
        }));
        assert!(ops.contains(&SettleOp::Spend {
            key: "b".into(),
            reserved: 10_000,
            spent: 0,
            ttl_ms: 0
        }));
        assert_eq!(l.len(), 0);
        // A window that ended takes its lease with it: nothing to return.
        let mut g = vec![vec![window("w2", 100_000, 10)]];
        grant(&l, l.take(&mut g, 0, 1).asks, 1000);
        assert!(l.sweep(31_000, false).returns.is_empty());
        assert_eq!(l.len(), 0);
    }

    #[test]
    fn parallel_slots_are_held_while_in_use_and_refreshed() {
        let l = Leases::new(1, "n");
        let mut g = vec![vec![parallel()]];
        let t = l.take(&mut g, 0, 1);
        assert_eq!(t.asks[0].slots.len(), 10);
        assert_eq!(t.asks[0].ttl_ms, SLOT_TTL_MS);
        grant(&l, t.asks, 10);
        let mut g = vec![vec![parallel()]];
        assert!(l.take(&mut g, 0, 1).covered);
        // In use: not returned however idle, but refreshed.
        let swept = l.sweep(20_000, false);
        assert!(swept.returns.is_empty());
        assert_eq!(swept.refresh.len(), 1);
        assert_eq!(swept.refresh[0].1.len(), 10);
        l.release_slot("p");
        let swept = l.sweep(20_000, false);
        assert_eq!(swept.returns.len(), 10, "all ten slots go back");
    }

    #[test]
    fn surplus_slots_and_late_grants_go_back() {
        let l = Leases::new(1, "n");
        let mut g = vec![vec![parallel()]];
        let first = l.take(&mut g, 0, 1).asks;
        grant(&l, first, 10);
        // A burst: 8 in use, a refill lands, then the burst ends.
        let mut refill = Vec::new();
        for _ in 0..8 {
            let t = l.take(&mut [vec![parallel()]], 0, 1);
            assert!(t.covered);
            refill.extend(t.asks);
        }
        assert_eq!(refill.len(), 1, "one refill below half");
        grant(&l, refill, 10);
        for _ in 0..8 {
            l.release_slot("p");
        }
        let swept = l.sweep(100, false);
        assert_eq!(swept.returns.len(), 5, "20 free, 15 kept");
        // A grant that lands after its lease went (shutdown) is returned, not lost.
        let mut g = vec![vec![window("w", 100_000, 10)]];
        let asks = l.take(&mut g, 0, 1).asks;
        l.close();
        l.sweep(0, true);
        let orphans = l.granted(
            asks,
            Some(vec![LeaseGrant {
                granted: 1000,
                used: 1000,
            }]),
            0,
        );
        assert_eq!(
            orphans[0].groups[0][0],
            SettleOp::Adjust {
                key: "w".into(),
                delta: -1000
            }
        );
        let mut g = vec![vec![window("w2", 100_000, 10)]];
        assert!(
            l.take(&mut g, 0, 1).asks.is_empty(),
            "closed: no new leases"
        );
    }
}
