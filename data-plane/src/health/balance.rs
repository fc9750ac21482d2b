//! Load-balancing strategies, shared by a pool's endpoints and a route's backends. A pick
//! sees only the candidates its caller lets through (`usable`) and allocates nothing.

use std::sync::atomic::{AtomicUsize, Ordering};

use switchyard_proto::v1 as pb;

use super::Load;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Strategy {
    #[default]
    WeightedRandom,
    /// Weighted round robin.
    RoundRobin,
    /// Power of two choices on requests in flight per unit of weight.
    LeastRequest,
    /// Power of two choices on peak-EWMA latency times (in flight + 1).
    LeastLatency,
    /// Cheapest first (routes).
    Cost,
}

impl Strategy {
    pub fn from_proto(lb: pb::LoadBalancing) -> Self {
        match lb {
            pb::LoadBalancing::Unspecified | pb::LoadBalancing::WeightedRandom => {
                Self::WeightedRandom
            }
            pb::LoadBalancing::RoundRobin => Self::RoundRobin,
            pb::LoadBalancing::LeastRequest => Self::LeastRequest,
            pb::LoadBalancing::LeastLatency => Self::LeastLatency,
            pb::LoadBalancing::Cost => Self::Cost,
        }
    }
}

/// Something a strategy picks from.
pub(crate) trait Candidate {
    fn weight(&self) -> u32;
    fn load(&self) -> &Load;
    /// Input plus output price per million tokens (for `Cost`).
    fn price(&self) -> u64 {
        0
    }
}

/// Picks among the items `usable` admits (weight 0 never is). `turn` is the strategy's
/// round-robin counter.
pub(crate) fn choose<T: Candidate>(
    strategy: Strategy,
    items: &[T],
    usable: impl Fn(usize) -> bool,
    turn: &AtomicUsize,
) -> Option<usize> {
    let ok = |i: usize| items[i].weight() > 0 && usable(i);
    if items.len() == 1 {
        return ok(0).then_some(0);
    }
    let total: u64 = (0..items.len())
        .filter(|&i| ok(i))
        .map(|i| u64::from(items[i].weight()))
        .sum();
    if total == 0 {
        return None;
    }
    // The item at `r` of the cumulative weights of the usable items (but `skip`).
    let at_but = |mut r: u64, skip: usize| -> usize {
        for i in (0..items.len()).filter(|&i| i != skip && ok(i)) {
            let w = u64::from(items[i].weight());
            if r < w {
                return i;
            }
            r -= w;
        }
        items.len() - 1
    };
    let at = |r: u64| at_but(r, usize::MAX);
    match strategy {
        Strategy::WeightedRandom => Some(at(fastrand::u64(0..total))),
        Strategy::RoundRobin => Some(at(turn.fetch_add(1, Ordering::Relaxed) as u64 % total)),
        Strategy::LeastRequest | Strategy::LeastLatency => {
            let a = at(fastrand::u64(0..total));
            // A second, distinct choice when there is one.
            let rest = total - u64::from(items[a].weight());
            if rest == 0 {
                return Some(a);
            }
            let b = at_but(fastrand::u64(0..rest), a);
            let cost = |i: usize| -> f64 {
                let l = items[i].load();
                match strategy {
                    Strategy::LeastRequest => {
                        f64::from(l.in_flight()) / f64::from(items[i].weight())
                    }
                    _ => l.latency_cost(),
                }
            };
            Some(if cost(b) < cost(a) { b } else { a })
        }
        Strategy::Cost => {
            let cheapest = (0..items.len())
                .filter(|&i| ok(i))
                .map(|i| items[i].price())
                .min()?;
            let cheap = |i: usize| ok(i) && items[i].price() == cheapest;
            let total: u64 = (0..items.len())
                .filter(|&i| cheap(i))
                .map(|i| u64::from(items[i].weight()))
                .sum();
            let mut r = fastrand::u64(0..total.max(1));
            for i in (0..items.len()).filter(|&i| cheap(i)) {
                let w = u64::from(items[i].weight());
                if r < w {
                    return Some(i);
                }
                r -= w;
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    struct Item {
        weight: u32,
        load: Arc<Load>,
        price: u64,
    }

    impl Candidate for Item {
        fn weight(&self) -> u32 {
            self.weight
        }
        fn load(&self) -> &Load {
            &self.load
        }
        fn price(&self) -> u64 {
            self.price
        }
    }

    fn items(weights: &[u32]) -> Vec<Item> {
        weights
            .iter()
            .map(|&weight| Item {
                weight,
                load: Arc::default(),
                price: 0,
            })
            .collect()
    }

    fn counts(s: Strategy, items: &[Item], usable: impl Fn(usize) -> bool) -> Vec<usize> {
        let turn = AtomicUsize::new(0);
        let mut c = vec![0; items.len()];
        for _ in 0..3000 {
            c[choose(s, items, &usable, &turn).expect("a pick")] += 1;
        }
        c
    }

    #[test]
    fn round_robin_follows_the_weights_exactly() {
        let it = items(&[2, 1, 0]);
        assert_eq!(counts(Strategy::RoundRobin, &it, |_| true), [2000, 1000, 0]);
    }

    #[test]
    fn weighted_random_follows_the_weights_and_skips_what_is_not_usable() {
        let it = items(&[3, 1]);
        let c = counts(Strategy::WeightedRandom, &it, |_| true);
        assert!((2000..2500).contains(&c[0]), "{c:?}");
        assert_eq!(counts(Strategy::WeightedRandom, &it, |i| i == 1), [0, 3000]);
        let turn = AtomicUsize::new(0);
        assert_eq!(
            choose(Strategy::WeightedRandom, &it, |_| false, &turn),
            None
        );
        assert_eq!(
            choose(Strategy::WeightedRandom, &items(&[0]), |_| true, &turn),
            None
        );
    }

    #[test]
    fn least_request_avoids_the_busy_one() {
        let it = items(&[1, 1, 1]);
        for _ in 0..50 {
            it[0].load.start();
        }
        let c = counts(Strategy::LeastRequest, &it, |_| true);
        // The two choices are distinct: the busy one never wins.
        assert_eq!(c[0], 0, "{c:?}");
    }

    #[test]
    fn least_latency_avoids_the_slow_one() {
        let it = items(&[1, 1]);
        it[0].load.observe(Duration::from_millis(400));
        it[1].load.observe(Duration::from_millis(20));
        let c = counts(Strategy::LeastLatency, &it, |_| true);
        assert_eq!(c[0], 0, "{c:?}");
    }

    #[test]
    fn cost_takes_the_cheapest_usable() {
        let mut it = items(&[1, 1, 1]);
        it[0].price = 30;
        it[1].price = 10;
        it[2].price = 20;
        assert_eq!(counts(Strategy::Cost, &it, |_| true), [0, 3000, 0]);
        assert_eq!(counts(Strategy::Cost, &it, |i| i != 1), [0, 0, 3000]);
    }
}
