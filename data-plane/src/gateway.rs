//! The running data plane: the current config (swapped atomically; an in-flight request
//! keeps the config it started with), what outlives config versions, and the parts every
//! request uses (metrics, limiter, telemetry, response cache, admission), all given at
//! construction.

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use switchyard_proto::v1 as pb;

use crate::admission::Admission;
use crate::cache::Cache;
use crate::config::{Carried, InvalidResource, RuntimeConfig};
use crate::policy::limits::Limiter;
use crate::telemetry::Telemetry;
use crate::telemetry::metrics::{Metrics, ResultLabels};

/// Default limit on request bodies.
pub const DEFAULT_BODY_LIMIT: usize = 10 * 1024 * 1024;

#[derive(Debug)]
pub struct Gateway {
    config: ArcSwapOption<RuntimeConfig>,
    /// What outlives config versions (clients, health, requests in flight).
    pub carried: Carried,
    pub metrics: Arc<Metrics>,
    pub limiter: Arc<Limiter>,
    pub body_limit: usize,
    /// What requests leave behind: metrics, access log, traces, audit trail.
    pub telemetry: Arc<Telemetry>,
    /// The response cache (routes opt in).
    cache: Option<Arc<Cache>>,
    ever_ready: std::sync::atomic::AtomicBool,
    /// Set on SIGTERM: readiness is false from then on.
    draining: std::sync::atomic::AtomicBool,
    admission: Admission,
}

/// What a gateway is made of, each part built before it (`crate::start` builds them in
/// order from the options).
#[derive(Debug)]
pub struct Parts {
    pub metrics: Arc<Metrics>,
    pub limiter: Arc<Limiter>,
    pub telemetry: Telemetry,
    pub cache: Option<Arc<Cache>>,
    pub admission: Admission,
    pub body_limit: usize,
}

impl Gateway {
    /// A gateway of these parts, with no config yet.
    pub fn from_parts(p: Parts) -> Arc<Self> {
        let can_embed = p.cache.as_ref().is_some_and(|c| c.can_embed());
        Arc::new(Self {
            config: ArcSwapOption::empty(),
            carried: Carried::new(p.metrics.clone(), can_embed),
            limiter: p.limiter,
            telemetry: Arc::new(p.telemetry),
            metrics: p.metrics,
            body_limit: p.body_limit,
            cache: p.cache,
            ever_ready: std::sync::atomic::AtomicBool::new(false),
            draining: std::sync::atomic::AtomicBool::new(false),
            admission: p.admission,
        })
    }

    /// A gateway with in-memory limits, the default admission, no response cache and
    /// telemetry of metrics alone (tests and tools).
    pub fn new(body_limit: usize) -> Arc<Self> {
        let metrics = Arc::new(Metrics::new());
        Self::from_parts(Parts {
            limiter: Limiter::in_memory(metrics.clone()),
            telemetry: Telemetry::new(metrics.clone()),
            metrics,
            cache: None,
            admission: Admission::default(),
            body_limit,
        })
    }

    /// What guardrail webhooks use: the HTTP clients and the metrics.
    pub fn webhooks(&self) -> crate::policy::guard::webhook::Caller<'_> {
        crate::policy::guard::webhook::Caller {
            clients: &self.carried.clients,
            metrics: &self.metrics,
        }
    }

    /// Request admission: the concurrency, shares and body timing requests are held to.
    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    pub fn cache(&self) -> Option<&Arc<Cache>> {
        self.cache.as_ref()
    }

    /// Takes the data plane out of rotation (SIGTERM).
    pub fn start_draining(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The running config, if one was loaded.
    pub fn config(&self) -> Option<Arc<RuntimeConfig>> {
        self.config.load_full()
    }

    /// Version of the running config.
    pub fn version(&self) -> Option<String> {
        self.config.load().as_ref().map(|c| c.version.clone())
    }

    /// The running version and the resources of it left out here.
    pub fn running(&self) -> Option<(String, Arc<Vec<InvalidResource>>)> {
        self.config
            .load()
            .as_ref()
            .map(|c| (c.version.clone(), c.rejected.clone()))
    }

    /// A config is loaded and, the first time, the tokenizers it needs are in memory (so a
    /// new proxy takes no traffic that would wait for them). Once ready, a reload that needs a
    /// new tokenizer does not take the proxy out of rotation.
    pub fn is_ready(&self) -> bool {
        if self.ever_ready.load(std::sync::atomic::Ordering::Relaxed) {
            return true;
        }
        let ready = self
            .config
            .load()
            .as_ref()
            .is_some_and(|c| crate::tokens::loaded(&c.tokenizers));
        if ready {
            self.ever_ready
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        ready
    }

    /// Makes a snapshot the running config, without the resources that cannot run here;
    /// returns those, with the reasons.
    pub fn apply(&self, snapshot: &pb::Snapshot) -> Arc<Vec<InvalidResource>> {
        let (cfg, rejected) = RuntimeConfig::build(snapshot, &self.carried);
        self.install(cfg, "full");
        rejected
    }

    /// Moves the running config forward by a delta. `None` when the running version is not
    /// the delta's base (the caller then asks for the whole state).
    pub fn apply_delta(
        &self,
        delta: &pb::Delta,
        version: &str,
    ) -> Option<Arc<Vec<InvalidResource>>> {
        let current = self.config.load_full()?;
        if current.version != delta.base_version {
            return None;
        }
        let (cfg, rejected) = current.apply_delta(delta, version, &self.carried);
        self.install(cfg, "delta");
        Some(rejected)
    }

    fn install(&self, cfg: RuntimeConfig, how: &'static str) {
        crate::tokens::warm_up(&cfg.tokenizers);
        self.metrics
            .config_keys
            .set(i64::try_from(cfg.key_count()).unwrap_or(i64::MAX));
        self.metrics
            .config_routes
            .set(i64::try_from(cfg.route_count()).unwrap_or(i64::MAX));
        self.metrics
            .config_rejected_resources
            .set(i64::try_from(cfg.rejected.len()).unwrap_or(i64::MAX));
        let result = if cfg.rejected.is_empty() {
            "applied"
        } else {
            "partial"
        };
        self.metrics
            .config_updates
            .get_or_create(&ResultLabels { result })
            .inc();
        for r in cfg.rejected.iter() {
            tracing::warn!(version = %cfg.version, resource = %r, "resource left out: it cannot run on this data plane");
        }
        tracing::info!(version = %cfg.version, how, routes = cfg.route_count(), keys = cfg.key_count(), rejected = cfg.rejected.len(), "config applied");
        let cfg = Arc::new(cfg);
        let previous = self.config.swap(Some(cfg.clone()));
        // Building a config starts nothing; the active health checks of the pools this
        // version built follow it (a pool a delta left alone keeps its checks as they run).
        for pool in cfg.pools() {
            let kept = previous
                .as_ref()
                .and_then(|p| p.pool(&pool.id))
                .is_some_and(|old| Arc::ptr_eq(old, pool));
            if !kept {
                pool.ensure_checks(Some(&self.metrics));
            }
        }
    }
}
