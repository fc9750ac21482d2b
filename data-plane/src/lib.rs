//! Switchyard data plane: an OpenAI-compatible LLM gateway proxy. Authenticates virtual keys,
//! routes models to provider pools, translates wire formats and streams without buffering.
//! Gets its configuration from the control plane (fleet mode) or a directory (standalone).

pub mod admin;
pub mod auth;
pub mod config;
pub mod error;
pub mod gateway;
pub mod glob;
pub mod metrics;
pub mod openai;
pub mod providers;
pub mod proxy;
pub mod sse;
pub mod stack;
pub mod standalone;
pub mod upstream;
pub mod xds;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;

pub use gateway::Gateway;

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
}

/// Runs the data plane until `shutdown` resolves, then drains in-flight requests.
pub async fn run(
    opts: Options,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let gw = Gateway::new(opts.body_limit);
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
    tokio::spawn(serve_admin(admin, gw.clone()));
    let app = stack::router(gw, opts.stack);
    let api = api.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(api, app).with_graceful_shutdown(shutdown).await
}

async fn serve_admin(listener: TcpListener, gw: Arc<Gateway>) {
    if let Err(e) = axum::serve(listener, admin::router(gw)).await {
        tracing::error!(error = %e, "admin listener failed");
    }
}
