//! Settlements the shared store missed, kept until it answers again. They are summed per
//! counter as they arrive, so memory grows with the number of counters touched (keys, routes,
//! windows, budget periods), not with the number of requests, and nothing is dropped however
//! long the outage. A replay goes out as one batch with an id; a batch that failed (perhaps
//! after Redis applied part of it) is resent with the same id, and the store applies each of
//! its counters at most once per id. A normal settlement batch whose call failed is kept as it
//! is, by number, until the store says whether it applied it (see `LimitStore::marked`).

use std::collections::HashMap;

use super::store::{SettleOp, SettleRequest};

/// One counter's sum of corrections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sum {
    Adjust(i64),
    Spend {
        reserved: u64,
        spent: u64,
        ttl_ms: u64,
    },
}

/// Corrections summed per counter, and lease releases (one per request admitted through the
/// store before it went away: bounded by the requests in flight then).
#[derive(Debug, Default)]
pub(super) struct Aggregate {
    sums: HashMap<String, Sum>,
    releases: Vec<(String, String)>,
}

impl Aggregate {
    pub(super) fn is_empty(&self) -> bool {
        self.sums.is_empty() && self.releases.is_empty()
    }

    /// Counters and leases waiting.
    pub(super) fn len(&self) -> usize {
        self.sums.len() + self.releases.len()
    }

    /// Adds a request's corrections.
    pub(super) fn add(&mut self, req: SettleRequest) {
        for op in req.groups.into_iter().flatten() {
            match op {
                SettleOp::Adjust { key, delta } => {
                    let e = self.sums.entry(key).or_insert(Sum::Adjust(0));
                    if let Sum::Adjust(d) = e {
                        *d = d.saturating_add(delta);
                    }
                }
                SettleOp::Spend {
                    key,
                    reserved,
                    spent,
                    ttl_ms,
                } => {
                    let e = self.sums.entry(key).or_insert(Sum::Spend {
                        reserved: 0,
                        spent: 0,
                        ttl_ms: 0,
                    });
                    if let Sum::Spend {
                        reserved: r,
                        spent: s,
                        ttl_ms: t,
                    } = e
                    {
                        *r = r.saturating_add(reserved);
                        *s = s.saturating_add(spent);
                        *t = (*t).max(ttl_ms);
                    }
                }
                SettleOp::Release { key } => self.releases.push((key, req.member.clone())),
            }
        }
    }

    /// The batch as settle requests of one operation each (a release names its lease).
    pub(super) fn requests(&self) -> Vec<SettleRequest> {
        let one = |member: &str, op: SettleOp| SettleRequest {
            member: member.to_owned(),
            groups: vec![vec![op]],
        };
        let mut out: Vec<SettleRequest> = self
            .sums
            .iter()
            .filter(|(_, s)| !matches!(s, Sum::Adjust(0)))
            .map(|(key, s)| {
                let key = key.clone();
                one(
                    "",
                    match *s {
                        Sum::Adjust(delta) => SettleOp::Adjust { key, delta },
                        Sum::Spend {
                            reserved,
                            spent,
                            ttl_ms,
                        } => SettleOp::Spend {
                            key,
                            reserved,
                            spent,
                            ttl_ms,
                        },
                    },
                )
            })
            .collect();
        out.extend(
            self.releases
                .iter()
                .map(|(key, member)| one(member, SettleOp::Release { key: key.clone() })),
        );
        out
    }
}

/// What waits for the store: a replay batch that failed (resent with its id), what came
/// since, and settlement batches whose call failed without saying whether Redis applied them
/// (kept by number until the store's marker tells).
#[derive(Debug, Default)]
pub(super) struct Pending {
    open: Aggregate,
    retry: Option<(String, Aggregate)>,
    uncertain: Vec<(u64, Vec<SettleRequest>)>,
}

impl Pending {
    pub(super) fn add(&mut self, req: SettleRequest) {
        self.open.add(req);
    }

    /// A settlement batch numbered `seq` whose call failed: Redis may have applied it.
    pub(super) fn add_uncertain(&mut self, seq: u64, batch: Vec<SettleRequest>) {
        self.uncertain.push((seq, batch));
    }

    pub(super) fn has_uncertain(&self) -> bool {
        !self.uncertain.is_empty()
    }

    /// Settles the fate of the uncertain batches now that the store says batches up to
    /// `applied` were applied: the others join the replay. Returns (dropped, kept) batches.
    pub(super) fn resolve(&mut self, applied: u64) -> (usize, usize) {
        let (mut dropped, mut kept) = (0, 0);
        for (seq, batch) in std::mem::take(&mut self.uncertain) {
            if seq <= applied {
                dropped += 1;
            } else {
                kept += 1;
                batch.into_iter().for_each(|r| self.open.add(r));
            }
        }
        (dropped, kept)
    }

    /// Counters and leases waiting (a counter that an uncertain batch touches too counts once).
    pub(super) fn len(&self) -> usize {
        let mut uncertain = std::collections::HashSet::new();
        let mut releases = 0;
        for op in self
            .uncertain
            .iter()
            .flat_map(|(_, b)| b)
            .flat_map(|r| r.groups.iter().flatten())
        {
            match op {
                SettleOp::Release { .. } => releases += 1,
                SettleOp::Adjust { key, .. } | SettleOp::Spend { key, .. } => {
                    if !self.open.sums.contains_key(key) {
                        uncertain.insert(key.as_str());
                    }
                }
            }
        }
        self.open.len()
            + self.retry.as_ref().map_or(0, |(_, a)| a.len())
            + uncertain.len()
            + releases
    }

    /// The next batch to replay: the failed one again, else everything open under a new id.
    pub(super) fn take(&mut self, new_id: impl FnOnce() -> String) -> Option<(String, Aggregate)> {
        if let Some(b) = self.retry.take() {
            return Some(b);
        }
        if self.open.is_empty() {
            return None;
        }
        Some((new_id(), std::mem::take(&mut self.open)))
    }

    /// A batch whose replay failed: resent first, with the same id.
    pub(super) fn put_back(&mut self, id: String, batch: Aggregate) {
        self.retry = Some((id, batch));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spend(key: &str, reserved: u64, spent: u64) -> SettleRequest {
        SettleRequest {
            member: "m".into(),
            groups: vec![vec![SettleOp::Spend {
                key: key.into(),
                reserved,
                spent,
                ttl_ms: 10,
            }]],
        }
    }

    #[test]
    fn corrections_are_summed_per_counter() {
        let mut p = Pending::default();
        for i in 0..10_000 {
            p.add(spend("b", 10, i % 3));
            p.add(SettleRequest {
                member: format!("r{i}"),
                groups: vec![vec![SettleOp::Adjust {
                    key: "tpm".into(),
                    delta: -1,
                }]],
            });
        }
        assert_eq!(p.len(), 2, "two counters, however many requests");
        let (id, batch) = p.take(|| "b1".into()).expect("a batch");
        assert_eq!(id, "b1");
        let mut reqs = batch.requests();
        reqs.sort_by_key(|r| format!("{:?}", r.groups));
        assert_eq!(
            reqs[0].groups[0][0],
            SettleOp::Adjust {
                key: "tpm".into(),
                delta: -10_000
            }
        );
        assert_eq!(
            reqs[1].groups[0][0],
            SettleOp::Spend {
                key: "b".into(),
                reserved: 100_000,
                spent: 9_999,
                ttl_ms: 10
            }
        );
        assert!(p.take(|| "b2".into()).is_none());
    }

    #[test]
    fn uncertain_batches_replay_only_when_not_applied() {
        let mut p = Pending::default();
        p.add_uncertain(3, vec![spend("b", 10, 1)]);
        p.add_uncertain(4, vec![spend("b", 10, 2), spend("c", 5, 5)]);
        assert_eq!(p.len(), 2, "two counters are waiting");
        assert!(
            p.take(|| "x".into()).is_none(),
            "not replayed before they are resolved"
        );
        assert_eq!(p.resolve(3), (1, 1), "batch 3 was applied, batch 4 was not");
        assert!(!p.has_uncertain());
        let (_, batch) = p.take(|| "b1".into()).expect("batch 4 replays");
        let mut reqs = batch.requests();
        reqs.sort_by_key(|r| format!("{:?}", r.groups));
        assert_eq!(reqs.len(), 2);
        assert_eq!(
            reqs[0].groups[0][0],
            SettleOp::Spend {
                key: "b".into(),
                reserved: 10,
                spent: 2,
                ttl_ms: 10
            }
        );
    }

    #[test]
    fn a_failed_batch_is_resent_with_its_id_before_newer_settlements() {
        let mut p = Pending::default();
        p.add(spend("b", 1, 1));
        let (id, batch) = p.take(|| "b1".into()).expect("batch");
        p.add(spend("b", 5, 5));
        p.put_back(id, batch);
        let (again, batch) = p.take(|| "b2".into()).expect("retry");
        assert_eq!(again, "b1");
        assert_eq!(batch.len(), 1);
        let (next, later) = p.take(|| "b2".into()).expect("the newer one");
        assert_eq!(next, "b2");
        assert_eq!(
            later.requests()[0].groups[0][0],
            SettleOp::Spend {
                key: "b".into(),
                reserved: 5,
                spent: 5,
                ttl_ms: 10
            }
        );
        // Releases keep their lease names.
        p.add(SettleRequest {
            member: "req-7".into(),
            groups: vec![vec![SettleOp::Release { key: "par".into() }]],
        });
        let (_, b) = p.take(|| "b3".into()).expect("releases");
        assert_eq!(b.requests()[0].member, "req-7");
    }
}
