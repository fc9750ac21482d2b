//! What every controller's reconcile shares: the API client and caches, the compile result,
//! the fleet view, leadership, and per-object backoff.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use switchyard_crds::{Diagnostic, SpendStatus};
use tokio::sync::watch;

use super::leader::Leadership;
use super::presence::Fleet;
use super::status::{Evented, History, diagnostic_event};
use super::{FIELD_MANAGER, Stores};
use crate::metrics::Metrics;
use crate::server::Published;

/// Why a reconcile failed; the object is retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("no randomness for key generation: {0}")]
    Random(String),
}

/// The shared context of the four controllers.
pub struct Context {
    pub client: kube::Client,
    pub stores: Stores,
    pub leadership: Leadership,
    pub metrics: Arc<Metrics>,
    compiled: watch::Receiver<Published>,
    fleet: watch::Receiver<Arc<Fleet>>,
    history: Mutex<History>,
    recorder: Recorder,
    evented: Evented,
    /// Spend of budgeted keys by `namespace/name`, from the last successful read of Redis;
    /// `None` before the first one (the spend already in status is then kept).
    spend: Mutex<Option<Arc<HashMap<String, SpendStatus>>>>,
    failures: Mutex<HashMap<String, u32>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Context {
    pub fn new(
        client: kube::Client,
        stores: Stores,
        leadership: Leadership,
        metrics: Arc<Metrics>,
        compiled: watch::Receiver<Published>,
        fleet: watch::Receiver<Arc<Fleet>>,
        identity: &str,
    ) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: FIELD_MANAGER.into(),
                instance: Some(identity.to_owned()),
            },
        );
        Self {
            client,
            stores,
            leadership,
            metrics,
            compiled,
            fleet,
            history: Mutex::default(),
            recorder,
            evented: Evented::default(),
            spend: Mutex::default(),
            failures: Mutex::default(),
        }
    }

    /// The compile result being served, if any.
    pub fn compiled(&self) -> Published {
        self.compiled.borrow().clone()
    }

    /// A receiver of compile results (for the triggers).
    pub fn compiled_updates(&self) -> watch::Receiver<Published> {
        self.compiled.clone()
    }

    /// The fleet view.
    pub fn fleet(&self) -> Arc<Fleet> {
        self.fleet.borrow().clone()
    }

    /// A receiver of fleet views (for the triggers).
    pub fn fleet_updates(&self) -> watch::Receiver<Arc<Fleet>> {
        self.fleet.clone()
    }

    pub fn history(&self) -> MutexGuard<'_, History> {
        lock(&self.history)
    }

    pub fn spend(&self) -> Option<Arc<HashMap<String, SpendStatus>>> {
        lock(&self.spend).clone()
    }

    pub fn set_spend(&self, spend: Arc<HashMap<String, SpendStatus>>) {
        *lock(&self.spend) = Some(spend);
    }

    /// Records a Warning Event for a diagnostic, once per (resource, reason), while leading.
    pub async fn record_event<K: Resource<DynamicType = ()>>(&self, obj: &K, d: &Diagnostic) {
        if !self.leadership.leads() || !self.evented.first(&d.resource, d.reason) {
            return;
        }
        let reference = obj.object_ref(&());
        if let Err(e) = self
            .recorder
            .publish(&diagnostic_event(d), &reference)
            .await
        {
            tracing::warn!(error = %e, resource = %d.resource, "recording event failed");
        }
    }

    /// A reconcile succeeded: its backoff starts over.
    pub fn succeeded<K: Resource<DynamicType = ()>>(&self, obj: &K) {
        let mut failures = lock(&self.failures);
        if !failures.is_empty() {
            failures.remove(&ObjectRef::from_obj(obj).to_string());
        }
    }

    /// A reconcile failed: retry after 500 ms, doubling up to five minutes.
    pub fn backoff<K: Resource<DynamicType = ()>>(&self, obj: &K, error: &Error) -> Action {
        let id = ObjectRef::from_obj(obj).to_string();
        let n = {
            let mut failures = lock(&self.failures);
            let n = failures.entry(id.clone()).or_insert(0);
            *n = n.saturating_add(1);
            *n
        };
        self.metrics.reconcile_errors.inc();
        let delay = Duration::from_millis(500)
            .saturating_mul(1 << (n - 1).min(10))
            .min(Duration::from_secs(300));
        tracing::warn!(object = %id, name = %obj.name_any(), attempt = n, retry_in = ?delay, error = %error, "reconcile failed");
        Action::requeue(delay)
    }
}

/// The error policy of every controller.
pub fn error_policy<K: Resource<DynamicType = ()>>(
    obj: Arc<K>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    ctx.backoff(obj.as_ref(), error)
}

/// No status fields besides conditions.
pub fn no_extra() -> super::status::Extra {
    (serde_json::json!({}), true)
}
