//! What the data plane learns about each endpoint from the traffic it sends: requests in
//! flight, a peak-EWMA of the time to the response head, and passive outlier detection.
//!
//! Outlier detection, as Envoy does it: failures in a row (5xx, overload, timeouts,
//! connection errors, a refused credential) or 429s in a row eject an endpoint. The ejection
//! lasts the base time doubled on every repeat (capped; at least the upstream's
//! `retry-after`), and at most `maxEjectedPercent` of a pool's endpoints are out at once
//! (one always may be). When the time is up the endpoint is half-open: one probe request goes
//! through, and only its success returns the endpoint to rotation; its failure ejects it
//! again, for longer.
//!
//! The state outlives config versions: a [`Registry`] hands the same state to a rebuilt pool
//! with the same id and endpoint URL. [`balance`] picks among endpoints (or a route's
//! backends) by what this module knows of them.

pub(crate) mod balance;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::FailureClass;
use crate::kept::Kept;
use crate::llm::observe::{End, Ending, Observer};

/// Milliseconds since the process's clock epoch (monotonic); never 0.
fn now_ms() -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_millis())
        .unwrap_or(u64::MAX)
        .saturating_add(1)
}

/// How long the EWMA remembers a slow answer: its weight halves in about 7 s.
const DECAY: Duration = Duration::from_secs(10);

/// Requests in flight and a peak-EWMA of latency (the Finagle/linkerd load metric): a slow
/// answer raises the average at once, fast ones bring it down gradually.
#[derive(Debug, Default)]
pub struct Load {
    in_flight: AtomicU32,
    ewma: Mutex<Option<(f64, Instant)>>,
}

impl Load {
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub(crate) fn start(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one more request unless `cap` (0: none) are in flight already.
    fn try_start(&self, cap: u32) -> bool {
        if cap == 0 {
            self.start();
            return true;
        }
        self.in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < cap).then_some(n + 1)
            })
            .is_ok()
    }

    fn end(&self) {
        // Never below zero, even if a count raced a reset.
        let _ = self
            .in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// Records a time to the response head.
    pub fn observe(&self, latency: Duration) {
        let now = Instant::now();
        let sample = latency.as_secs_f64();
        let mut e = self.ewma.lock().unwrap_or_else(|p| p.into_inner());
        let next = match *e {
            Some((value, _)) if sample > value => sample,
            Some((value, at)) => {
                let w = (-(now.duration_since(at).as_secs_f64()) / DECAY.as_secs_f64()).exp();
                value * w + sample * (1.0 - w)
            }
            None => sample,
        };
        *e = Some((next, now));
    }

    /// Seconds of latency expected (0 until measured).
    pub fn latency(&self) -> f64 {
        self.ewma
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map_or(0.0, |(v, _)| v)
    }

    /// The least-latency cost: expected latency times the requests it would queue behind.
    pub fn latency_cost(&self) -> f64 {
        self.latency() * f64::from(self.in_flight() + 1)
    }
}

/// Outlier detection settings of a pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutlierSettings {
    pub consecutive_failures: u32,
    pub consecutive_rate_limits: u32,
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    pub max_ejected_percent: u32,
}

impl Default for OutlierSettings {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            consecutive_rate_limits: 3,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(300),
            max_ejected_percent: 50,
        }
    }
}

/// What one attempt told about its endpoint.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Verdict {
    Success,
    /// Says nothing about the endpoint's health (a 400 for the client's request).
    Neutral,
    Failure,
    RateLimited {
        retry_after: Option<Duration>,
    },
}

impl Verdict {
    /// The outcome of an attempt that failed with `class`.
    pub fn of_failure(class: Option<FailureClass>, retry_after: Option<Duration>) -> Self {
        match class {
            Some(FailureClass::RateLimited) => Self::RateLimited { retry_after },
            Some(
                FailureClass::ServerError
                | FailureClass::Overloaded
                | FailureClass::Timeout
                | FailureClass::Authentication,
            )
            | None => Self::Failure,
            Some(
                FailureClass::BadRequest
                | FailureClass::ContextWindowExceeded
                | FailureClass::ContentFiltered,
            ) => Self::Neutral,
        }
    }
}

/// A change of an endpoint's state, for logs and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    Ejected {
        for_: Duration,
        ejections: u32,
    },
    Returned,
    /// It met a threshold but too many of its pool are out already.
    EjectionRefused,
}

#[derive(Debug, Default)]
struct Counts {
    ejections: u32,
    returned_at: Option<Instant>,
}

/// The health of one endpoint.
#[derive(Debug, Default)]
pub struct EndpointHealth {
    pub load: Load,
    failures: AtomicU32,
    rate_limits: AtomicU32,
    /// 0: in rotation. Otherwise the `now_ms` the ejection ends; past it, half-open until a
    /// probe succeeds.
    ejected_until: AtomicU64,
    probing: AtomicBool,
    counts: Mutex<Counts>,
    /// Active health checks fail: out of rotation until they pass.
    check_failing: AtomicBool,
    /// The running health check task, with the fingerprint of what it checks.
    pub(super) checker: Mutex<Option<(u64, tokio::task::AbortHandle)>>,
}

impl Drop for EndpointHealth {
    /// An endpoint that left the config takes its health check with it.
    fn drop(&mut self) {
        if let Some((_, task)) = self.checker.get_mut().ok().and_then(Option::take) {
            task.abort();
        }
    }
}

/// Whether an endpoint may take a request now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    Open,
    /// Half-open: this request would be the probe.
    Probe,
    Closed,
}

impl EndpointHealth {
    /// Whether the endpoint is out of rotation (ejected, half-open, or failing its health
    /// checks).
    pub fn ejected(&self) -> bool {
        self.ejected_until.load(Ordering::Relaxed) != 0 || self.check_failing()
    }

    pub fn check_failing(&self) -> bool {
        self.check_failing.load(Ordering::Relaxed)
    }

    /// The active health check's verdict: `true` takes the endpoint out of rotation.
    pub(super) fn set_check_failing(&self, failing: bool) {
        self.check_failing.store(failing, Ordering::Relaxed);
    }

    /// Whether a request could go to it now (without claiming a probe).
    pub fn admission(&self) -> Admission {
        if self.check_failing() {
            return Admission::Closed;
        }
        match self.ejected_until.load(Ordering::Relaxed) {
            0 => Admission::Open,
            until if until > now_ms() => Admission::Closed,
            _ if self.probing.load(Ordering::Relaxed) => Admission::Closed,
            _ => Admission::Probe,
        }
    }

    /// Claims the probe of a half-open endpoint; false when another request holds it.
    pub fn claim_probe(&self) -> bool {
        !self.probing.swap(true, Ordering::AcqRel)
    }

    fn release_probe(&self) {
        self.probing.store(false, Ordering::Release);
    }

    /// Records an attempt's outcome. `ejected_peers` counts the pool's endpoints out of
    /// rotation (this one excluded) and `peers` all of them (this one included).
    pub fn record(
        &self,
        outcome: Verdict,
        s: &OutlierSettings,
        ejected_peers: usize,
        peers: usize,
        probe: bool,
    ) -> Option<Transition> {
        match outcome {
            Verdict::Success => {
                // Reads first: the common case writes nothing shared.
                if self.failures.load(Ordering::Relaxed) != 0 {
                    self.failures.store(0, Ordering::Relaxed);
                }
                if self.rate_limits.load(Ordering::Relaxed) != 0 {
                    self.rate_limits.store(0, Ordering::Relaxed);
                }
                if probe || self.ejected_until.load(Ordering::Relaxed) != 0 {
                    let until = self.ejected_until.load(Ordering::Relaxed);
                    if until != 0 && until <= now_ms() {
                        self.ejected_until.store(0, Ordering::Relaxed);
                        self.release_probe();
                        self.counts
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .returned_at = Some(Instant::now());
                        return Some(Transition::Returned);
                    }
                }
                None
            }
            Verdict::Neutral => {
                if probe {
                    // Not a verdict: let the next request probe.
                    self.release_probe();
                }
                None
            }
            Verdict::Failure | Verdict::RateLimited { .. } => {
                // Requests sent before an ejection that fail during it say nothing new.
                if !probe && self.ejected_until.load(Ordering::Relaxed) > now_ms() {
                    return None;
                }
                let (tripped, floor) = match outcome {
                    Verdict::RateLimited { retry_after } => {
                        self.failures.store(0, Ordering::Relaxed);
                        let n = self.rate_limits.fetch_add(1, Ordering::Relaxed) + 1;
                        (
                            s.consecutive_rate_limits > 0 && n >= s.consecutive_rate_limits,
                            retry_after,
                        )
                    }
                    _ => {
                        self.rate_limits.store(0, Ordering::Relaxed);
                        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
                        (
                            s.consecutive_failures > 0 && n >= s.consecutive_failures,
                            None,
                        )
                    }
                };
                // A failed probe ejects again whatever the counters say.
                if !(tripped || probe) {
                    return None;
                }
                let out_now = self.ejected();
                let allowed = (peers * s.max_ejected_percent as usize / 100).max(1);
                if !out_now && ejected_peers + 1 > allowed {
                    return Some(Transition::EjectionRefused);
                }
                Some(self.eject(s, floor))
            }
        }
    }

    fn eject(&self, s: &OutlierSettings, floor: Option<Duration>) -> Transition {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        // A long healthy stretch forgives earlier ejections.
        if c.returned_at.is_some_and(|t| t.elapsed() > s.max_ejection) {
            c.ejections = 0;
        }
        c.ejections = c.ejections.saturating_add(1);
        let doubled = s
            .base_ejection
            .saturating_mul(1u32 << (c.ejections - 1).min(16));
        let for_ = doubled
            .min(s.max_ejection)
            .max(floor.unwrap_or_default().min(s.max_ejection));
        let until = now_ms().saturating_add(u64::try_from(for_.as_millis()).unwrap_or(u64::MAX));
        self.ejected_until.store(until, Ordering::Relaxed);
        self.failures.store(0, Ordering::Relaxed);
        self.rate_limits.store(0, Ordering::Relaxed);
        self.release_probe();
        Transition::Ejected {
            for_,
            ejections: c.ejections,
        }
    }
}

/// A request in flight on an endpoint (and its pool): counted until dropped, which for a
/// stream is when the stream ends.
#[derive(Debug)]
pub struct InFlight {
    endpoint: Option<Arc<EndpointHealth>>,
    pool: Arc<Load>,
    /// This request is the probe of a half-open endpoint.
    pub probe: bool,
    verdict: Option<Deferred>,
}

/// Tells the endpoint's health how an answer ended, once. A stream's verdict waits for its
/// end: a stream that breaks off counts as a failure of its endpoint.
pub struct Deferred(Box<dyn FnOnce(Verdict) + Send + Sync>);

impl Deferred {
    pub fn new(report: impl FnOnce(Verdict) + Send + Sync + 'static) -> Self {
        Self(Box::new(report))
    }
}

impl std::fmt::Debug for Deferred {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Deferred")
    }
}

impl InFlight {
    pub fn start(endpoint: Option<Arc<EndpointHealth>>, pool: Arc<Load>, probe: bool) -> Self {
        if let Some(e) = &endpoint {
            e.load.start();
        }
        pool.start();
        Self {
            endpoint,
            pool,
            probe,
            verdict: None,
        }
    }

    /// Starts unless the endpoint already has `cap` (0: no cap) requests in flight (a probe
    /// it held is then released).
    pub fn within(
        endpoint: Option<&Arc<EndpointHealth>>,
        pool: &Arc<Load>,
        probe: bool,
        cap: u32,
    ) -> Option<Self> {
        if let Some(e) = endpoint
            && !e.load.try_start(cap)
        {
            if probe {
                e.release_probe();
            }
            return None;
        }
        pool.start();
        Some(Self {
            endpoint: endpoint.cloned(),
            pool: pool.clone(),
            probe,
            verdict: None,
        })
    }

    /// Defers the endpoint's verdict to the end of the answer.
    pub fn defer(&mut self, verdict: Deferred) {
        self.verdict = Some(verdict);
    }

    /// How the answer ended (the first call counts; an answer dropped without one, because
    /// its client left, is neutral).
    pub fn verdict(&mut self, outcome: Verdict) {
        if let Some(v) = self.verdict.take() {
            (v.0)(outcome);
        }
    }

    /// The response head arrived after `latency`.
    pub fn head(&self, latency: Duration) {
        if let Some(e) = &self.endpoint {
            e.load.observe(latency);
        }
        self.pool.observe(latency);
    }
}

impl Observer for InFlight {
    /// A stream's deferred verdict: how it ended counts for its endpoint; a stream a
    /// guardrail stopped or its client left is neutral (the verdict given on drop).
    fn on_end(&mut self, end: &End) {
        match end.how {
            Ending::Complete => self.verdict(Verdict::Success),
            Ending::Failed(class) => self.verdict(Verdict::of_failure(class, None)),
            Ending::Blocked | Ending::Abandoned => {}
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.verdict(Verdict::Neutral);
        if let Some(e) = &self.endpoint {
            e.load.end();
            if self.probe {
                // A probe that ended without a verdict (the client left) frees the slot.
                e.release_probe();
            }
        }
        self.pool.end();
    }
}

/// Endpoint health and pool load by identity, kept across config versions (weakly: state
/// of a pool or endpoint that left the config goes with it).
#[derive(Debug, Default)]
pub struct Registry {
    endpoints: Kept<(String, String), EndpointHealth>,
    pools: Kept<String, Load>,
}

impl Registry {
    /// The health of a pool's endpoint.
    pub fn endpoint(&self, pool: &str, url: &str) -> Arc<EndpointHealth> {
        self.endpoints.get((pool.to_owned(), url.to_owned()))
    }

    /// The load of a pool, all endpoints together.
    pub fn pool(&self, pool: &str) -> Arc<Load> {
        self.pools.get(pool.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> OutlierSettings {
        OutlierSettings {
            consecutive_failures: 3,
            consecutive_rate_limits: 2,
            base_ejection: Duration::from_millis(40),
            max_ejection: Duration::from_millis(100),
            max_ejected_percent: 50,
        }
    }

    #[test]
    fn consecutive_failures_eject_and_a_probe_returns() {
        let h = EndpointHealth::default();
        let s = settings();
        assert_eq!(h.record(Verdict::Failure, &s, 0, 2, false), None);
        // A success in between starts the count over.
        assert_eq!(h.record(Verdict::Success, &s, 0, 2, false), None);
        assert_eq!(h.record(Verdict::Failure, &s, 0, 2, false), None);
        assert_eq!(h.record(Verdict::Failure, &s, 0, 2, false), None);
        assert_eq!(
            h.record(Verdict::Failure, &s, 0, 2, false),
            Some(Transition::Ejected {
                for_: Duration::from_millis(40),
                ejections: 1
            })
        );
        assert_eq!(h.admission(), Admission::Closed);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(h.admission(), Admission::Probe);
        assert!(h.claim_probe());
        assert_eq!(h.admission(), Admission::Closed, "one probe at a time");
        assert!(!h.claim_probe());
        // The probe fails: ejected again, for twice as long.
        assert_eq!(
            h.record(Verdict::Failure, &s, 0, 2, true),
            Some(Transition::Ejected {
                for_: Duration::from_millis(80),
                ejections: 2
            })
        );
        std::thread::sleep(Duration::from_millis(90));
        assert!(h.claim_probe());
        assert_eq!(
            h.record(Verdict::Success, &s, 0, 2, true),
            Some(Transition::Returned)
        );
        assert_eq!(h.admission(), Admission::Open);
        assert!(!h.ejected());
    }

    #[test]
    fn rate_limits_eject_for_at_least_retry_after_capped() {
        let h = EndpointHealth::default();
        let s = settings();
        let limited = Verdict::RateLimited {
            retry_after: Some(Duration::from_millis(70)),
        };
        assert_eq!(h.record(limited, &s, 0, 3, false), None);
        assert_eq!(
            h.record(limited, &s, 0, 3, false),
            Some(Transition::Ejected {
                for_: Duration::from_millis(70),
                ejections: 1
            })
        );
        let h = EndpointHealth::default();
        let long = Verdict::RateLimited {
            retry_after: Some(Duration::from_secs(60)),
        };
        h.record(long, &s, 0, 3, false);
        assert_eq!(
            h.record(long, &s, 0, 3, false),
            Some(Transition::Ejected {
                for_: s.max_ejection,
                ejections: 1
            })
        );
    }

    #[test]
    fn neutral_outcomes_and_the_ejection_cap() {
        let h = EndpointHealth::default();
        let s = settings();
        for _ in 0..10 {
            assert_eq!(h.record(Verdict::Neutral, &s, 0, 2, false), None);
        }
        assert!(!h.ejected());
        // Two of four out already: 50% allows no third.
        for _ in 0..2 {
            h.record(Verdict::Failure, &s, 2, 4, false);
        }
        assert_eq!(
            h.record(Verdict::Failure, &s, 2, 4, false),
            Some(Transition::EjectionRefused)
        );
        assert!(!h.ejected());
        // The only endpoint of a pool may always be ejected.
        let only = EndpointHealth::default();
        for _ in 0..2 {
            only.record(Verdict::Failure, &s, 0, 1, false);
        }
        assert!(matches!(
            only.record(Verdict::Failure, &s, 0, 1, false),
            Some(Transition::Ejected { .. })
        ));
    }

    #[test]
    fn peak_ewma_jumps_up_and_decays_down() {
        let l = Load::default();
        assert_eq!(l.latency(), 0.0);
        l.observe(Duration::from_millis(10));
        l.observe(Duration::from_millis(500));
        assert!(
            (l.latency() - 0.5).abs() < 1e-9,
            "a slow answer counts at once"
        );
        l.observe(Duration::from_millis(10));
        assert!(l.latency() > 0.4, "fast answers bring it down gradually");
        let f = InFlight::start(None, Arc::new(Load::default()), false);
        drop(f);
    }

    #[test]
    fn in_flight_counts_until_dropped_and_the_registry_keeps_state() {
        let r = Registry::default();
        let e = r.endpoint("ns/p", "http://a");
        let p = r.pool("ns/p");
        let f = InFlight::start(Some(e.clone()), p.clone(), false);
        assert_eq!(e.load.in_flight(), 1);
        assert_eq!(p.in_flight(), 1);
        assert!(Arc::ptr_eq(&e, &r.endpoint("ns/p", "http://a")));
        drop(f);
        assert_eq!(e.load.in_flight(), 0);
        assert_eq!(p.in_flight(), 0);
        drop(e);
        let again = r.endpoint("ns/p", "http://a");
        assert_eq!(
            again.load.in_flight(),
            0,
            "fresh state once the last user left"
        );
    }
}
