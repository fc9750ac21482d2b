//! Switchyard data plane: an LLM gateway proxy with OpenAI- and Anthropic-compatible front
//! doors. Authenticates virtual keys, enforces limits and budgets, routes models to provider
//! pools, translates between wire formats through one canonical form (or passes bytes through
//! when the formats match) and streams without buffering. Gets its configuration from the
//! control plane (fleet mode) or a directory (standalone). `stack/mod.rs` is the map of the request path, `LAYERS` the order of the
//! modules.

pub(crate) mod admin;
pub mod admission;
pub mod cache;
pub(crate) mod config;
pub mod dialect;
pub(crate) mod error;
pub(crate) mod frontdoor;
pub mod gateway;
pub(crate) mod glob;
pub(crate) mod health;
pub(crate) mod kept;
pub mod listener;
pub mod llm;
pub(crate) mod pipeline;
pub mod policy;
pub mod providers;
pub(crate) mod redis_link;
pub(crate) mod render;
pub(crate) mod route;
pub mod stack;
pub(crate) mod standalone;
pub mod telemetry;
pub(crate) mod tokens;
pub mod upstream;
pub mod xds;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;

use gateway::Gateway;
use policy::limits;
use telemetry::audit;
/// Where the configuration comes from.
#[derive(Clone, Debug)]
pub enum ConfigSource {
    /// Fleet mode: stream from the control plane.
    ControlPlane(xds::ClientOptions),
    /// Standalone: compile this directory in-process and hot-reload it.
    Directory(PathBuf),
}

/// Everything `run` needs.
#[derive(Clone, Debug)]
pub struct Options {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub source: ConfigSource,
    pub body_limit: usize,
    pub stack: stack::StackOptions,
    /// Connection limits of both listeners.
    pub listener: listener::ListenerOptions,
    /// The file holding the token a change on the admin port needs (`None`: changes off).
    pub admin_token_file: Option<PathBuf>,
    pub limits: LimitOptions,
    pub shutdown: ShutdownOptions,
    pub audit: audit::AuditOptions,
    pub telemetry: telemetry::TelemetryOptions,
    /// Bytes of answers the response cache keeps in this proxy.
    pub cache_memory_bytes: u64,
    /// The semantic cache's embedding model (a directory with its weights and tokenizer).
    pub embedding_model: Option<std::path::PathBuf>,
}

/// What happens on SIGTERM: readiness goes false at once; after `delay` (for load balancers
/// to stop sending) the listener closes and idle connections with it; requests and streams
/// in flight finish, for at most `drain`, then the process exits.
#[derive(Clone, Copy, Debug)]
pub struct ShutdownOptions {
    pub delay: std::time::Duration,
    pub drain: std::time::Duration,
}

impl Default for ShutdownOptions {
    fn default() -> Self {
        Self {
            delay: std::time::Duration::ZERO,
            drain: std::time::Duration::from_secs(30),
        }
    }
}

/// Where rate-limit and budget counters live.
#[derive(Clone, Debug)]
pub struct LimitOptions {
    /// Shared Redis (`redis://` or `rediss://`); `None` keeps counters in this process.
    /// With `redis_cluster`, a comma-separated list of seed nodes of a Redis Cluster.
    pub redis_url: Option<String>,
    pub redis_cluster: bool,
    /// Bound on every Redis operation.
    pub redis_timeout: std::time::Duration,
    pub fail_mode: limits::FailMode,
    /// Fleet size assumed until the first heartbeat through Redis counts the proxies.
    pub fleet_size: u64,
    /// Name of this proxy in the fleet set and in request ids.
    pub node_id: String,
    /// The largest slice of a shared limit one proxy leases, in percent of the limit (0:
    /// every request checks Redis).
    pub lease_percent: u64,
}

impl Default for LimitOptions {
    fn default() -> Self {
        Self {
            redis_url: None,
            redis_cluster: false,
            redis_timeout: std::time::Duration::from_millis(250),
            fail_mode: limits::FailMode::Open,
            fleet_size: 1,
            node_id: "local".into(),
            lease_percent: 1,
        }
    }
}

/// Builds every part of the data plane in order, from the options: the metrics, the limiter
/// (over Redis when a URL is given), the response cache, the audit trail, telemetry and
/// request admission, then the gateway of them. Returns the audit trail's writer too (closed
/// at exit), when it is on. Call within the tokio runtime.
pub async fn start(opts: &Options) -> std::io::Result<(Arc<Gateway>, Option<audit::sink::Writer>)> {
    let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
    let metrics = Arc::new(telemetry::metrics::Metrics::with_key_label_cap(
        opts.telemetry.key_label_cap,
    ));
    let l = &opts.limits;
    let limiter = match &l.redis_url {
        None => limits::Limiter::in_memory(metrics.clone()),
        Some(url) => {
            let store = if l.redis_cluster {
                let seeds: Vec<String> = url.split(',').map(|s| s.trim().to_owned()).collect();
                limits::redis::RedisStore::cluster(&seeds, l.redis_timeout)
            } else {
                limits::redis::RedisStore::new(url, l.redis_timeout)
            }
            .map_err(|e| invalid(e.to_string()))?;
            tracing::info!(mode = ?l.fail_mode, timeout = ?l.redis_timeout, cluster = l.redis_cluster, "rate limits and budgets shared through Redis");
            limits::Limiter::new(
                Arc::new(store),
                l.fail_mode,
                l.node_id.clone(),
                l.fleet_size,
                l.lease_percent,
                metrics.clone(),
            )
        }
    };
    if l.redis_url.is_none() && matches!(opts.source, ConfigSource::ControlPlane(_)) {
        tracing::warn!(
            "no --redis-url: rate limits and budgets are counted per proxy, not across the fleet"
        );
    }
    let shared = l
        .redis_url
        .as_deref()
        .map(|u| (u, l.redis_cluster, l.redis_timeout));
    let cache = cache::Cache::new(
        opts.cache_memory_bytes,
        shared,
        opts.embedding_model.clone(),
        metrics.clone(),
    )
    .await
    .map_err(|e| invalid(error::chain(&e)))?;
    let (auditor, audit_writer) = if opts.audit.enabled() {
        let (auditor, writer) = audit::Auditor::start(opts.audit.clone(), metrics.clone()).await?;
        tracing::info!(dir = ?opts.audit.dir, redis = opts.audit.redis_url.is_some(), signed = opts.audit.key.is_some(), "audit trail on");
        (Some(auditor), Some(writer))
    } else {
        (None, None)
    };
    let telemetry = telemetry::Telemetry::start(metrics.clone(), &opts.telemetry, auditor).await?;
    let s = opts.stack;
    let gw = Gateway::from_parts(gateway::Parts {
        metrics,
        limiter,
        telemetry,
        cache: Some(Arc::new(cache)),
        admission: admission::Admission::new(s.max_concurrency, s.shares, s.body),
        body_limit: opts.body_limit,
    });
    Ok((gw, audit_writer))
}

/// Runs the data plane until `shutdown` resolves, then drains in-flight requests.
pub async fn run(
    opts: Options,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (gw, audit_writer) = start(&opts).await?;
    match &opts.source {
        ConfigSource::Directory(dir) => {
            let fp = switchyard_crds::fs::fingerprint(dir)?;
            let mut cache = switchyard_crds::fs::DirCache::default();
            standalone::load(&gw, dir, &mut cache)?;
            tokio::spawn(standalone::watch(gw.clone(), dir.clone(), Some(fp), cache));
        }
        ConfigSource::ControlPlane(client) => {
            tokio::spawn(xds::run(gw.clone(), client.clone()));
        }
    }
    let api = TcpListener::bind(opts.listen).await?;
    let admin = TcpListener::bind(opts.admin_listen).await?;
    tracing::info!(listen = %api.local_addr()?, admin = %admin.local_addr()?, "data plane listening");
    tokio::spawn(listener::serve(
        admin,
        admin::router(gw.clone(), opts.admin_token_file.clone()),
        opts.listener,
        "admin",
        gw.metrics.clone(),
        std::future::pending(),
    ));
    let app = stack::router(gw.clone());
    let metrics = gw.metrics.clone();
    let telemetry = gw.telemetry.clone();
    let limiter = gw.limiter.clone();
    let (stopping, mut stop) = tokio::sync::watch::channel(false);
    let ShutdownOptions { delay, drain } = opts.shutdown;
    let signalled = async move {
        shutdown.await;
        gw.start_draining();
        tracing::info!(delay = ?delay, drain = ?drain, "shutting down: not ready; the listener closes after the delay, then requests in flight finish");
        let _ = stopping.send(true);
        tokio::time::sleep(delay).await;
    };
    let serve = listener::serve(api, app, opts.listener, "api", metrics, signalled);
    let deadline = async move {
        let _ = stop.wait_for(|s| *s).await;
        tokio::time::sleep(delay + drain).await;
    };
    tokio::select! {
        () = serve => tracing::info!("drained: every request finished"),
        () = deadline => {
            tracing::warn!("drain deadline passed: exiting with requests still in flight");
        }
    }
    limiter.shutdown().await;
    telemetry.shutdown().await;
    if let Some(w) = audit_writer {
        w.close().await;
        tracing::info!("audit trail closed");
    }
    Ok(())
}
