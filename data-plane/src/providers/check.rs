//! Active health checks. For a pool with `healthCheck`, one task per endpoint asks `GET path`
//! below the endpoint's URL on an interval, with the endpoint's credential; a 2xx passes.
//! `unhealthyThreshold` failures in a row take the endpoint out of rotation, and
//! `healthyThreshold` passes in a row bring it back (independently of passive ejection).
//!
//! A task belongs to the endpoint's health, which outlives config versions: a new config that
//! checks the same thing the same way leaves the task running, one that changes the check
//! restarts it, and an endpoint that leaves the config (or a pool that drops `healthCheck`)
//! stops it.

use std::hash::{Hash, Hasher};
use std::sync::{Arc, Weak};
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use switchyard_proto::v1 as pb;

use super::pool::EndpointEntry;
use crate::error::ProxyError;
use crate::health::EndpointHealth;
use crate::providers::Auth;
use crate::telemetry::metrics::{BackendLabels, Metrics};
use crate::upstream::{self, HttpClient};

/// How a pool checks its endpoints.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct CheckSettings {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub unhealthy: u32,
    pub healthy: u32,
}

impl CheckSettings {
    pub fn from_proto(h: Option<&pb::HealthCheck>) -> Option<Self> {
        let h = h?;
        Some(Self {
            path: h.path.clone(),
            interval: Duration::from_millis(h.interval_ms.max(100)),
            timeout: Duration::from_millis(h.timeout_ms.max(1)),
            unhealthy: h.unhealthy_threshold.max(1),
            healthy: h.healthy_threshold.max(1),
        })
    }
}

/// What one check sends.
struct Target {
    url: String,
    auth: Auth,
    headers: Vec<(HeaderName, HeaderValue)>,
}

/// Starts, restarts or stops an endpoint's check to match its pool's settings. Outside a
/// Tokio runtime (config unit tests) nothing is started.
pub(crate) fn ensure(
    pool: &str,
    index: usize,
    ep: &EndpointEntry,
    settings: Option<&CheckSettings>,
    client: &HttpClient,
    metrics: Option<&Arc<Metrics>>,
) {
    let mut slot = ep
        .health
        .checker
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(settings) = settings else {
        if let Some((_, task)) = slot.take() {
            task.abort();
            ep.health.set_check_failing(false);
        }
        return;
    };
    let fingerprint = fingerprint(ep, settings);
    if slot.as_ref().is_some_and(|(f, _)| *f == fingerprint) {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    if let Some((_, task)) = slot.take() {
        task.abort();
    }
    let target = Target {
        url: format!("{}{}", ep.base, settings.path),
        auth: ep.auth.clone(),
        headers: ep.headers.clone(),
    };
    let labels = BackendLabels {
        pool: pool.to_owned(),
        endpoint: index.to_string(),
    };
    let task = runtime.spawn(run(
        Arc::downgrade(&ep.health),
        target,
        settings.clone(),
        client.clone(),
        labels,
        metrics.cloned(),
    ));
    *slot = Some((fingerprint, task.abort_handle()));
}

/// What the check depends on: the settings, the URL and the credential.
fn fingerprint(ep: &EndpointEntry, s: &CheckSettings) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.hash(&mut h);
    ep.base.hash(&mut h);
    match &ep.auth {
        Auth::Header { name, value } => {
            name.as_str().hash(&mut h);
            value.as_bytes().hash(&mut h);
        }
        Auth::Query { name, value } => {
            name.hash(&mut h);
            value.hash(&mut h);
        }
        Auth::None | Auth::SigV4(_) => {}
    }
    for (k, v) in &ep.headers {
        k.as_str().hash(&mut h);
        v.as_bytes().hash(&mut h);
    }
    h.finish()
}

async fn run(
    health: Weak<EndpointHealth>,
    target: Target,
    s: CheckSettings,
    client: HttpClient,
    labels: BackendLabels,
    metrics: Option<Arc<Metrics>>,
) {
    // Spread a fleet's checks over the interval.
    tokio::time::sleep(s.interval.mul_f64(fastrand::f64())).await;
    let (mut fails, mut passes) = (0u32, 0u32);
    loop {
        let result = check(&client, &target, s.timeout).await;
        let Some(h) = health.upgrade() else { return };
        match result {
            Ok(()) => {
                fails = 0;
                passes = passes.saturating_add(1);
                if h.check_failing() && passes >= s.healthy {
                    h.set_check_failing(false);
                    if let Some(m) = &metrics {
                        m.endpoint_returns.get_or_create(&labels).inc();
                    }
                    tracing::info!(pool = %labels.pool, endpoint = %without_query(&target.url), "endpoint passes its health checks again; back in rotation");
                }
            }
            Err(why) => {
                passes = 0;
                fails = fails.saturating_add(1);
                if let Some(m) = &metrics {
                    m.health_check_failures.get_or_create(&labels).inc();
                }
                if !h.check_failing() && fails >= s.unhealthy {
                    h.set_check_failing(true);
                    if let Some(m) = &metrics {
                        m.endpoint_ejections.get_or_create(&labels).inc();
                    }
                    tracing::warn!(pool = %labels.pool, endpoint = %without_query(&target.url), fails, error = %crate::error::chain(&why), "endpoint failed its health checks; out of rotation until they pass");
                } else {
                    tracing::debug!(pool = %labels.pool, error = %crate::error::chain(&why), "health check failed");
                }
            }
        }
        drop(h);
        tokio::time::sleep(s.interval).await;
    }
}

/// Why a health check failed.
#[derive(Debug, thiserror::Error)]
enum CheckFailed {
    #[error(transparent)]
    Request(#[from] ProxyError),
    #[error("status {0}")]
    Status(u16),
}

/// One check: a 2xx within the timeout passes. The body is read so the connection is reused.
async fn check(client: &HttpClient, t: &Target, timeout: Duration) -> Result<(), CheckFailed> {
    let deadline = tokio::time::Instant::now() + timeout;
    let req =
        crate::providers::upstream_request(&t.auth, &t.headers, t.url.clone(), None, Vec::new())?;
    let resp = upstream::send(client, req, deadline).await?;
    let status = resp.status();
    let _ = upstream::read_body(resp.into_body(), deadline).await;
    if status.is_success() {
        Ok(())
    } else {
        Err(CheckFailed::Status(status.as_u16()))
    }
}

/// The URL without its query (which may carry a key), for logs.
fn without_query(url: &str) -> &str {
    url.split('?').next().unwrap_or(url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::{ClientSettings, Clients};

    fn endpoint(health: Arc<EndpointHealth>) -> EndpointEntry {
        EndpointEntry {
            base: "http://127.0.0.1:9".into(),
            weight: 1,
            auth: Auth::None,
            headers: Vec::new(),
            health,
            label: HeaderValue::from_static("p#0"),
            picks: Default::default(),
        }
    }

    fn settings(ms: u64) -> CheckSettings {
        CheckSettings {
            path: "/models".into(),
            interval: Duration::from_millis(ms),
            timeout: Duration::from_millis(100),
            unhealthy: 2,
            healthy: 1,
        }
    }

    fn task(ep: &EndpointEntry) -> Option<(u64, tokio::task::AbortHandle)> {
        ep.health.checker.lock().ok()?.clone()
    }

    /// A new config version that checks the same way keeps the running task; a changed check
    /// replaces it; no check stops it; an endpoint that goes away takes it along.
    #[tokio::test]
    async fn one_check_task_per_endpoint_across_config_versions() {
        let client = Clients::default()
            .client(ClientSettings::default())
            .expect("client");
        let health = Arc::new(EndpointHealth::default());
        let ep = endpoint(health.clone());
        ensure("p", 0, &ep, Some(&settings(60_000)), &client, None);
        let (f1, t1) = task(&ep).expect("started");
        ensure("p", 0, &ep, Some(&settings(60_000)), &client, None);
        let (f2, t2) = task(&ep).expect("still there");
        assert_eq!((f1, t1.id()), (f2, t2.id()), "same check, same task");
        ensure("p", 0, &ep, Some(&settings(30_000)), &client, None);
        let (f3, t3) = task(&ep).expect("restarted");
        assert_ne!(f3, f1);
        tokio::task::yield_now().await;
        assert!(t1.is_finished(), "the old task was stopped");
        ensure("p", 0, &ep, None, &client, None);
        assert!(task(&ep).is_none());
        tokio::task::yield_now().await;
        assert!(t3.is_finished());
        ensure("p", 0, &ep, Some(&settings(60_000)), &client, None);
        let (_, t4) = task(&ep).expect("started again");
        drop(ep);
        drop(health);
        tokio::task::yield_now().await;
        assert!(
            t4.is_finished(),
            "the endpoint's health took its task along"
        );
    }
}
