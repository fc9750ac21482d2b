//! What a call costs: a model's price, and the tokens a request is expected to use before
//! the call. Shared by limits, routing, the cache and telemetry.

use super::Usage;

/// Price of a model in micro-dollars per million tokens. Cache prices of 0 mean the input
/// price.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Price {
    pub input: u64,
    pub output: u64,
    pub cache_read: u64,
    pub cache_write: u64,
}

impl Price {
    /// Cost in nano-dollars of what a call used: uncached input, cache reads and writes, and
    /// output, each at its own price.
    pub fn cost_nanos(&self, u: &Usage) -> u64 {
        let or_input = |p: u64| if p == 0 { self.input } else { p };
        let n = u128::from(u.uncached_input()) * u128::from(self.input)
            + u128::from(u.cache_read) * u128::from(or_input(self.cache_read))
            + u128::from(u.cache_write) * u128::from(or_input(self.cache_write))
            + u128::from(u.output) * u128::from(self.output);
        u64::try_from(n / 1000).unwrap_or(u64::MAX)
    }
}

/// Tokens a request is expected to use, before the call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Estimate {
    pub input: u64,
    pub output: u64,
}
