//! Retries within a group of a route's backends, as a `tower::retry::Policy`: a failed
//! attempt is tried again when its class is one the route retries, when that is safe (see
//! [`ProxyError::safe_to_retry`]), and when the route's retry budget allows. It goes at once
//! to another endpoint or backend when one is in rotation; with nowhere else to go it waits
//! an exponential backoff with jitter, lengthened by the upstream's `retry-after` (up to the
//! maximum backoff).

use std::sync::Arc;
use std::time::Duration;

use switchyard_proto::v1 as pb;
use tower::retry::Policy;
use tower::retry::backoff::{Backoff, ExponentialBackoff, ExponentialBackoffMaker, MakeBackoff};
use tower::retry::budget::{Budget, TpsBudget};

use super::{Attempt, Failed, Served};
use crate::error::{FailureClass, ProxyError};
use crate::telemetry::metrics::{Metrics, RetryLabels};

/// A route's retry settings and its budget (shared by every request of the route).
#[derive(Debug)]
pub struct RetrySettings {
    /// Attempts per group, the first included.
    pub attempts: u32,
    pub retry_on: Vec<FailureClass>,
    pub max_backoff: Duration,
    backoff: ExponentialBackoffMaker,
    budget: TpsBudget,
}

impl RetrySettings {
    /// `None`: one attempt per group.
    pub fn from_proto(r: Option<&pb::RetryPolicy>) -> Option<Arc<Self>> {
        let r = r.filter(|r| r.attempts > 1)?;
        let base = Duration::from_millis(r.backoff_ms);
        let max = Duration::from_millis(r.max_backoff_ms.max(1)).max(base);
        let backoff = ExponentialBackoffMaker::new(base, max, 1.0, Default::default())
            .ok()
            .or_else(|| {
                ExponentialBackoffMaker::new(
                    Duration::from_millis(100),
                    Duration::from_secs(2),
                    1.0,
                    Default::default(),
                )
                .ok()
            })?;
        Some(Arc::new(Self {
            attempts: r.attempts.min(10),
            retry_on: r
                .retry_on
                .iter()
                .filter_map(|c| pb::FailureClass::try_from(*c).ok())
                .filter_map(FailureClass::from_proto)
                .collect(),
            max_backoff: max,
            backoff,
            budget: TpsBudget::new(
                Duration::from_secs(10),
                r.min_retries_per_second.min(1_000_000),
                (r.budget_percent.min(100_000) as f32) / 100.0,
            ),
        }))
    }

    /// Every request of the route adds to the budget, once.
    pub fn deposit(&self) {
        self.budget.deposit();
    }
}

/// One request's retry state.
#[derive(Clone, Debug)]
pub(crate) struct RetryPolicy {
    settings: Arc<RetrySettings>,
    metrics: Arc<Metrics>,
    left: u32,
    backoff: ExponentialBackoff,
}

impl RetryPolicy {
    pub(crate) fn new(settings: Arc<RetrySettings>, metrics: Arc<Metrics>) -> Self {
        Self {
            left: settings.attempts.saturating_sub(1),
            backoff: settings.backoff.clone().make_backoff(),
            settings,
            metrics,
        }
    }

    fn count(&self, class: FailureClass, result: &'static str) {
        self.metrics
            .retries
            .get_or_create(&RetryLabels {
                class: class.label(),
                result,
            })
            .inc();
    }
}

/// How long an upstream asked to wait, from `retry-after-ms` or `retry-after` (seconds).
pub(crate) fn retry_after(e: &ProxyError) -> Option<Duration> {
    let ms = e
        .headers
        .as_ref()
        .and_then(|h| h.get("retry-after-ms"))
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if let Some(ms) = ms {
        return Some(Duration::from_millis(ms));
    }
    e.retry_after()
        .and_then(|v| v.to_str().ok()?.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::from_secs_f64(s.min(86_400.0)))
}

impl Policy<Attempt, Served, Failed> for RetryPolicy {
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        req: &mut Attempt,
        result: &mut Result<Served, Failed>,
    ) -> Option<Self::Future> {
        let Err(failed) = result else {
            return None;
        };
        let e = &failed.error;
        let class = e.class?;
        if self.left == 0 || !self.settings.retry_on.contains(&class) || !e.safe_to_retry() {
            return None;
        }
        if !self.settings.budget.withdraw() {
            self.count(class, "budget_exhausted");
            tracing::debug!(class = class.label(), "retry budget exhausted");
            return None;
        }
        self.left -= 1;
        self.count(class, "retried");
        req.tried.clone_from(&failed.tried);
        // Another endpoint in rotation is tried at once: the backoff and the upstream's
        // `retry-after` are about the one that failed. Only a retry with nowhere else to go
        // waits, for both.
        if failed.elsewhere {
            return Some(tokio::time::sleep(Duration::ZERO));
        }
        let backoff = self.backoff.next_backoff();
        let asked =
            retry_after(e).map(|d| tokio::time::Instant::now() + d.min(self.settings.max_backoff));
        Some(tokio::time::sleep_until(
            asked.map_or(backoff.deadline(), |a| a.max(backoff.deadline())),
        ))
    }

    fn clone_request(&mut self, req: &Attempt) -> Option<Attempt> {
        (self.left > 0).then(|| req.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use http::StatusCode;

    #[test]
    fn retry_after_prefers_milliseconds() {
        let e = ProxyError::upstream(
            StatusCode::TOO_MANY_REQUESTS,
            FailureClass::RateLimited,
            "x",
        )
        .with_retry_after_ms(1500);
        assert_eq!(retry_after(&e), Some(Duration::from_millis(1500)));
        let mut e = ProxyError::new(ErrorKind::UpstreamStatus, "x");
        e.set_retry_after(Some(http::HeaderValue::from_static("2")));
        assert_eq!(retry_after(&e), Some(Duration::from_secs(2)));
        e.set_retry_after(Some(http::HeaderValue::from_static(
            "Wed, 21 Oct 2015 07:28:00 GMT",
        )));
        assert_eq!(retry_after(&e), None);
    }

    #[test]
    fn settings_default_to_one_attempt_and_clamp() {
        assert!(RetrySettings::from_proto(None).is_none());
        let one = pb::RetryPolicy {
            attempts: 1,
            ..Default::default()
        };
        assert!(RetrySettings::from_proto(Some(&one)).is_none());
        let s = RetrySettings::from_proto(Some(&pb::RetryPolicy {
            attempts: 99,
            retry_on: vec![pb::FailureClass::RateLimited.into(), 99],
            backoff_ms: 5000,
            max_backoff_ms: 10,
            budget_percent: u32::MAX,
            min_retries_per_second: u32::MAX,
        }))
        .expect("settings");
        assert_eq!(s.attempts, 10);
        assert_eq!(s.retry_on, [FailureClass::RateLimited]);
        assert_eq!(s.max_backoff, Duration::from_secs(5));
    }
}
