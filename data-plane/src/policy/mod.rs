//! Policy stages. Each runs on the canonical view of a request (its [`crate::llm::Facts`],
//! decoding the body only when a stage needs more) and is its own module; `pipeline/` runs
//! them in order and says why:
//!
//! - [`auth`]: who is calling (virtual key by hash); a route says whether it serves them;
//! - [`limits`]: rate limits and budgets, reserved before the call and settled after it;
//! - [`guard`]: guardrails' detectors and actions, on whole texts and on streams;
//! - [`concurrency`]: the requests each key and namespace has in flight (the counters
//!   behind the front door's shares).
//!
//! The response cache is a stage of its own (`cache`), after these.
//! Tracing spans wrap the whole pipeline from the stack's outer layers.

pub(crate) mod auth;
pub(crate) mod concurrency;
pub(crate) mod guard;
pub mod limits;
