//! Switchyard control plane: turns resources from a source (a directory, or the Kubernetes
//! API) into compiled snapshots and streams them to every data plane over gRPC.

pub mod auth;
pub mod etcd;
pub mod kube;
pub mod metrics;
pub mod server;
pub mod source;
pub mod trace;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use http::StatusCode;
use switchyard_crds::World;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use server::ConfigServer;
pub use source::{DirSource, Source, SourceError, SourceSpec};

/// TLS material for the gRPC server (PEM).
#[derive(Clone, Debug)]
pub struct ServerTls {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    /// CA bundle that signs data planes' client certificates (mTLS). A certificate it does
    /// not sign fails the handshake; a missing one is refused by [`auth::ClientAuth`].
    pub client_ca_pem: Option<Vec<u8>>,
}

/// Everything `run` needs.
#[derive(Debug)]
pub struct Options {
    pub grpc_listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub tls: Option<ServerTls>,
    /// Who may open a config stream.
    pub client_auth: Arc<auth::ClientAuth>,
    /// Where traces of each compile and push go (off without an endpoint).
    pub otlp: switchyard_otel::OtlpArgs,
    /// This replica's name (`service.instance.id`).
    pub identity: String,
    /// Where data planes may be sent (`--restrict-egress`).
    pub egress: switchyard_crds::egress::Egress,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("listening failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("gRPC server failed: {0}")]
    Grpc(#[from] tonic::transport::Error),
}

/// Compiles every new World and publishes the result.
async fn compile_loop(
    mut worlds: watch::Receiver<Option<Arc<World>>>,
    out: watch::Sender<server::Published>,
    metrics: Arc<metrics::Metrics>,
    pushes: Option<Arc<trace::Pushes>>,
    egress: switchyard_crds::egress::Egress,
) {
    // Keeps what compiled before: an unchanged key is not hashed and validated again.
    let mut compiler = switchyard_crds::compile::Compiler::with_egress(egress);
    loop {
        let world = worlds.borrow_and_update().clone();
        if let Some(world) = world {
            let started = std::time::SystemTime::now();
            let compiled = tokio::task::block_in_place(|| compiler.compile(&world));
            metrics.compiles.inc();
            metrics
                .rejected_resources
                .set(i64::try_from(compiled.diagnostics.len()).unwrap_or(i64::MAX));
            let (version_changed, diagnostics_changed) = match out.borrow().as_ref() {
                None => (true, true),
                Some(c) => (
                    c.snapshot.version != compiled.snapshot.version,
                    c.diagnostics != compiled.diagnostics,
                ),
            };
            if diagnostics_changed {
                for d in &compiled.diagnostics {
                    tracing::warn!(resource = %d.resource, condition = d.condition, reason = d.reason, message = %d.message, "resource rejected");
                }
            }
            // Diagnostics can change while the snapshot does not (a new invalid resource is
            // left out): status must hear about it; data planes are not sent anything.
            if version_changed || diagnostics_changed {
                let s = &compiled.snapshot;
                tracing::info!(version = %s.version, pools = s.pools.len(), routes = s.routes.len(), keys = s.keys.len(), rejected = compiled.diagnostics.len(), "snapshot compiled");
                if let (true, Some(p)) = (version_changed, &pushes) {
                    // Before publishing: the push carries the span's context.
                    p.start(&compiled, started);
                }
                out.send_replace(Some(Arc::new(compiled)));
            }
        }
        if worlds.changed().await.is_err() {
            return;
        }
    }
}

/// What background work started next to the server can observe.
#[derive(Debug, Clone)]
pub struct Handles {
    /// The compiled snapshot being served.
    pub compiled: watch::Receiver<server::Published>,
    /// Data planes connected to this replica.
    pub nodes: Arc<server::Nodes>,
    pub metrics: Arc<metrics::Metrics>,
}

/// Runs the control plane with a source until the source or a server fails. `on_start` gets
/// the handles once the server exists (the operator starts its status writer there).
pub async fn run<S: Source>(
    source: S,
    opts: Options,
    on_start: impl FnOnce(Handles),
) -> Result<(), RunError> {
    let metrics = Arc::new(metrics::Metrics::default());
    let (world_tx, world_rx) = watch::channel(None);
    let (snap_tx, snap_rx) = watch::channel(None);
    tracing::info!(source = %source.describe(), "starting control plane");
    let source_task = tokio::spawn(source.run(world_tx));
    let mut server = ConfigServer::new(snap_rx.clone(), metrics.clone(), opts.client_auth.clone());
    let resource = switchyard_otel::resource("switchyard-control-plane", &opts.identity);
    let queue = opts
        .otlp
        .span_queue(
            &resource,
            ("switchyard-control-plane", env!("CARGO_PKG_VERSION")),
            metrics.spans.clone(),
        )
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
    let pushes = queue.map(|queue| {
        tracing::info!(
            endpoint = opts.otlp.otlp_endpoint.as_deref().unwrap_or_default(),
            "tracing compiles and pushes (OTLP)"
        );
        trace::Pushes::new(queue, server.nodes.clone())
    });
    server.pushes.clone_from(&pushes);
    tokio::spawn(compile_loop(
        world_rx,
        snap_tx,
        metrics.clone(),
        pushes,
        opts.egress.clone(),
    ));

    let admin = TcpListener::bind(opts.admin_listen).await?;
    let admin_state = (snap_rx.clone(), metrics.clone());
    let admin_app = axum::Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_handler))
        .with_state(admin_state);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(admin, admin_app).await {
            tracing::error!(error = %e, "admin listener failed");
        }
    });

    on_start(Handles {
        compiled: snap_rx,
        nodes: server.nodes.clone(),
        metrics,
    });
    let svc = switchyard_proto::v1::config_discovery_server::ConfigDiscoveryServer::new(server)
        .max_encoding_message_size(256 * 1024 * 1024)
        .max_decoding_message_size(16 * 1024 * 1024);
    let mut builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(5)));
    if let Some(tls) = &opts.tls {
        let identity = tonic::transport::Identity::from_pem(&tls.cert_pem, &tls.key_pem);
        let mut config = tonic::transport::ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &tls.client_ca_pem {
            // Optional at the TLS layer so that a stream without any credential gets a gRPC
            // `Unauthenticated` from the service (a presented certificate is still verified).
            config = config
                .client_ca_root(tonic::transport::Certificate::from_pem(ca))
                .client_auth_optional(true);
        }
        builder = builder.tls_config(config)?;
    }
    let listener = TcpListener::bind(opts.grpc_listen).await?;
    tracing::info!(grpc = %listener.local_addr()?, admin = %opts.admin_listen, tls = opts.tls.is_some(), mtls = opts.client_auth.mtls, tokens = opts.client_auth.tokens.is_some(), "control plane listening");
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let grpc = builder.add_service(svc).serve_with_incoming(incoming);
    tokio::select! {
        r = grpc => r?,
        r = source_task => match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e.into()),
            Err(e) => return Err(RunError::Io(std::io::Error::other(e))),
        },
    }
    Ok(())
}

type AdminState = (watch::Receiver<server::Published>, Arc<metrics::Metrics>);

async fn readyz(State((snap, _)): State<AdminState>) -> impl IntoResponse {
    match snap.borrow().as_ref() {
        Some(c) => (
            StatusCode::OK,
            format!("ready: snapshot {}", c.snapshot.version),
        ),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no snapshot compiled yet".to_owned(),
        ),
    }
}

async fn metrics_handler(State((_, metrics)): State<AdminState>) -> impl IntoResponse {
    (
        [(
            http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.encode(),
    )
}
