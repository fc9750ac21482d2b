use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use switchyard_control_plane::auth::{ClientAuth, KubeReviewer, TokenAuth};
use switchyard_control_plane::kube::context::Context as Reconcile;
use switchyard_control_plane::kube::spend::SpendReader;
use switchyard_control_plane::kube::{
    self as kube_source, KubeSource, controllers, leader, presence,
};
use switchyard_control_plane::{DirSource, Handles, Options, ServerTls, SourceSpec, etcd};
use tokio::sync::watch;

// Compiling 100k keys is allocation-bound: under glibc malloc, malloc/free took ~50% of the
// control plane's CPU in a recompile profile. The control plane has no tight memory budget.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Switchyard control plane: compiles resources and streams them to data planes.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Where resources come from: `kubernetes`, `dir:PATH` or `etcd:URL[,URL...]`.
    #[arg(long, env = "SWITCHYARD_SOURCE")]
    source: SourceSpec,
    /// Key prefix of the resources in etcd (`etcd:` source).
    #[arg(long, env = "SWITCHYARD_ETCD_PREFIX", default_value = "/switchyard/")]
    etcd_prefix: String,
    /// Instead of serving: a command against the `etcd:` source.
    #[command(subcommand)]
    command: Option<EtcdCommand>,
    /// Address of the gRPC config server.
    #[arg(
        long,
        env = "SWITCHYARD_GRPC_LISTEN",
        default_value = "127.0.0.1:18000"
    )]
    grpc_listen: SocketAddr,
    /// Address of the admin listener (/healthz, /readyz, /metrics).
    #[arg(
        long,
        env = "SWITCHYARD_ADMIN_LISTEN",
        default_value = "127.0.0.1:9091"
    )]
    admin_listen: SocketAddr,
    /// PEM certificate (chain) of the gRPC server.
    #[arg(long, env = "SWITCHYARD_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of the gRPC server.
    #[arg(long, env = "SWITCHYARD_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve gRPC without TLS (local development only). Without `--allowed-service-accounts`
    /// every client is then admitted and receives every provider credential.
    #[arg(long, env = "SWITCHYARD_INSECURE_PLAINTEXT", conflicts_with_all = ["tls_cert", "tls_key", "client_ca"])]
    insecure_plaintext: bool,
    /// PEM CA bundle that signs data planes' client certificates (mTLS). A data plane's
    /// identity is its certificate's subject CN, which must equal its node id.
    #[arg(long, env = "SWITCHYARD_CLIENT_CA")]
    client_ca: Option<PathBuf>,
    /// ServiceAccounts (`namespace/name`, comma-separated) whose projected tokens open a
    /// config stream, verified with a TokenReview. A data plane's identity is the pod its
    /// token is bound to, which must equal its node id.
    #[arg(
        long,
        env = "SWITCHYARD_ALLOWED_SERVICE_ACCOUNTS",
        value_delimiter = ','
    )]
    allowed_service_accounts: Vec<String>,
    /// Audience data-plane tokens must be issued for.
    #[arg(
        long,
        env = "SWITCHYARD_TOKEN_AUDIENCE",
        default_value = "switchyard-control-plane"
    )]
    token_audience: String,
    /// How often a `dir:` source checks for changes.
    #[arg(long, env = "SWITCHYARD_POLL_INTERVAL", default_value = "500ms", value_parser = duration)]
    poll_interval: Duration,
    #[command(flatten)]
    otlp: switchyard_otel::OtlpArgs,
    /// Refuse ProviderPool endpoint and Guardrail webhook URLs that point at link-local or
    /// metadata addresses, and at cluster-internal ones (loopback, private ranges, `*.svc`,
    /// `*.cluster.local`, single-label names) unless allowed below.
    #[arg(long, env = "SWITCHYARD_RESTRICT_EGRESS")]
    restrict_egress: bool,
    /// Internal ranges allowed with `--restrict-egress` (comma-separated CIDRs).
    #[arg(long, env = "SWITCHYARD_EGRESS_ALLOW_CIDRS", value_delimiter = ',')]
    egress_allow_cidrs: Vec<switchyard_crds::egress::Cidr>,
    /// Internal host names allowed with `--restrict-egress` (comma-separated; `*.suffix`
    /// allows a whole domain).
    #[arg(long, env = "SWITCHYARD_EGRESS_ALLOW_HOSTS", value_delimiter = ',')]
    egress_allow_hosts: Vec<String>,
    /// Namespaces served (`kubernetes` source, comma-separated): Secrets are read only in
    /// these (one watch each, needing only a Role there), generated key Secrets are written
    /// only there, and resources of any other namespace are left out of the configuration
    /// (`NamespaceNotServed`). Empty: every namespace (Secrets read cluster-wide).
    #[arg(long, env = "SWITCHYARD_WATCH_NAMESPACES", value_delimiter = ',')]
    watch_namespaces: Vec<String>,
    /// Namespace of the control plane's own objects (Leases) (`kubernetes` source).
    #[arg(
        long,
        env = "SWITCHYARD_NAMESPACE",
        default_value = "switchyard-system"
    )]
    namespace: String,
    /// This replica's identity for leader election (default: the host name).
    #[arg(long, env = "SWITCHYARD_IDENTITY")]
    identity: Option<String>,
    /// Leader lease duration; a dead leader is replaced after at most this long.
    #[arg(long, env = "SWITCHYARD_LEASE_DURATION", default_value = "15s", value_parser = duration)]
    lease_duration: Duration,
    /// How often the fleet's versions are read from the presence Leases (status follows).
    #[arg(long, env = "SWITCHYARD_STATUS_INTERVAL", default_value = "2s", value_parser = duration)]
    status_interval: Duration,
    /// Redis the data planes settle spend into (`kubernetes` source): the leader reports
    /// each budgeted key's spend in its status.
    #[arg(long, env = "SWITCHYARD_REDIS_URL")]
    redis_url: Option<String>,
    /// `--redis-url` names Redis Cluster seed nodes (comma-separated URLs).
    #[arg(long, env = "SWITCHYARD_REDIS_CLUSTER")]
    redis_cluster: bool,
    /// How often the leader reads spend into VirtualKey status.
    #[arg(long, env = "SWITCHYARD_SPEND_INTERVAL", default_value = "30s", value_parser = duration)]
    spend_interval: Duration,
    /// Log format: text or json.
    #[arg(long, env = "SWITCHYARD_LOG_FORMAT", default_value = "text")]
    log_format: String,
}

/// Commands for fleets that keep their resources in etcd.
#[derive(clap::Subcommand, Debug)]
enum EtcdCommand {
    /// Stores every resource of a directory's YAML in etcd, one key each.
    Load { dir: PathBuf },
    /// Prints each resource's status as the leader wrote it.
    Status,
}

/// Runs a command against the etcd source.
async fn etcd_command(args: &Args, command: &EtcdCommand) -> Result<()> {
    let SourceSpec::Etcd(endpoints) = &args.source else {
        bail!("this command needs --source etcd:URL");
    };
    match command {
        EtcdCommand::Load { dir } => {
            let n = etcd::load(endpoints, &args.etcd_prefix, dir).await?;
            println!("stored {n} resources under {}", args.etcd_prefix);
        }
        EtcdCommand::Status => {
            for (key, status) in etcd::read_status(endpoints, &args.etcd_prefix).await? {
                println!("{key}\t{status}");
            }
        }
    }
    Ok(())
}

/// A flag's duration (clap shows the `String` as the flag's error).
fn duration(s: &str) -> Result<Duration, String> {
    switchyard_crds::validate::duration("duration", s).map_err(|e| e.to_string())
}

fn init_tracing(format: &str) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init()
    } else {
        builder.init()
    }
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_owned())
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "control-plane".to_owned())
}

async fn operator(args: Args, opts: Options) -> Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let identity = args.identity.clone().unwrap_or_else(hostname);
    let spend = args
        .redis_url
        .as_deref()
        .map(|u| SpendReader::new(u, args.redis_cluster, Duration::from_secs(2)))
        .transpose()?
        .map(|r| (Arc::new(r), args.spend_interval));
    // One shutdown signal for the lease (released on the way out) and the controllers.
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = {
        let stop_rx = stop_rx.clone();
        move || {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        }
    };
    let served = (!args.watch_namespaces.is_empty()).then_some(args.watch_namespaces.as_slice());
    let (stores, watches) = kube_source::watches(&client, served);
    let (leadership, lease_task) = leader::start(
        client.clone(),
        leader::LeaseSettings {
            name: "switchyard-control-plane-leader".into(),
            namespace: args.namespace.clone(),
            identity: identity.clone(),
            duration: args.lease_duration,
        },
        stopped(),
    );
    let source = KubeSource {
        stores: stores.clone(),
        debounce: Duration::from_millis(50),
    };
    let start = |h: Handles| {
        tokio::spawn(presence::publish(
            client.clone(),
            args.namespace.clone(),
            identity.clone(),
            h.nodes,
            args.lease_duration,
        ));
        let fleet = presence::follow(client.clone(), args.namespace.clone(), args.status_interval);
        let ctx = Arc::new(Reconcile::new(
            client.clone(),
            stores,
            leadership,
            h.metrics,
            h.compiled,
            fleet,
            &identity,
        ));
        let settings = controllers::Settings {
            resync: Duration::from_secs(300),
            spend,
        };
        tokio::spawn(controllers::run(ctx, watches, settings, stop_rx));
    };
    tokio::select! {
        r = switchyard_control_plane::run(source, opts, start) => r.context("control plane failed"),
        () = shutdown_signal() => {
            tracing::info!("shutting down");
            let _ = stop_tx.send(true);
            // Give the lease back so that another replica leads at once.
            let _ = tokio::time::timeout(Duration::from_secs(5), lease_task).await;
            Ok(())
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    init_tracing(&args.log_format);
    if let Some(command) = &args.command {
        return etcd_command(&args, command).await;
    }
    let read = |p: &PathBuf| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    let tls = match (&args.tls_cert, &args.tls_key, args.insecure_plaintext) {
        (Some(c), Some(k), _) => Some(ServerTls {
            cert_pem: read(c)?,
            key_pem: read(k)?,
            client_ca_pem: args.client_ca.as_ref().map(read).transpose()?,
        }),
        (_, _, true) => {
            tracing::warn!(
                "serving gRPC without TLS (--insecure-plaintext): for local development only"
            );
            None
        }
        _ => bail!(
            "gRPC needs TLS: pass --tls-cert and --tls-key, or --insecure-plaintext for local development"
        ),
    };
    let client_auth = client_auth(&args).await?;
    if client_auth.is_disabled() {
        if !args.insecure_plaintext {
            bail!(
                "data planes must authenticate: pass --allowed-service-accounts (Kubernetes ServiceAccount tokens) and/or --client-ca (mTLS), or --insecure-plaintext for local development"
            );
        }
        tracing::warn!(
            grpc = %args.grpc_listen,
            "INSECURE: no TLS and no client authentication (--insecure-plaintext). Any process that reaches this port receives every provider credential and key hash. Local development only."
        );
    }
    let opts = Options {
        grpc_listen: args.grpc_listen,
        admin_listen: args.admin_listen,
        tls,
        client_auth: std::sync::Arc::new(client_auth),
        otlp: args.otlp.clone(),
        identity: args.identity.clone().unwrap_or_else(hostname),
        egress: switchyard_crds::egress::Egress {
            restrict: args.restrict_egress,
            allow_cidrs: args.egress_allow_cidrs.clone(),
            allow_hosts: args.egress_allow_hosts.clone(),
        },
    };
    match args.source.clone() {
        SourceSpec::Dir(dir) => {
            let source = DirSource {
                dir,
                poll: args.poll_interval,
            };
            tokio::select! {
                r = switchyard_control_plane::run(source, opts, |_| {}) => r.context("control plane failed"),
                () = shutdown_signal() => {
                    tracing::info!("shutting down");
                    Ok(())
                }
            }
        }
        SourceSpec::Kubernetes => operator(args, opts).await,
        SourceSpec::Etcd(endpoints) => {
            let identity = args.identity.clone().unwrap_or_else(hostname);
            let (stop_tx, stop_rx) = watch::channel(false);
            let source = etcd::EtcdSource {
                endpoints: endpoints.clone(),
                prefix: args.etcd_prefix.clone(),
                debounce: Duration::from_millis(20),
            };
            let (done_tx, done_rx) = tokio::sync::oneshot::channel();
            let start = |h: Handles| {
                let writer = etcd::StatusWriter {
                    endpoints,
                    prefix: args.etcd_prefix.clone(),
                    identity,
                    ttl: args.lease_duration,
                    compiled: h.compiled,
                    nodes: h.nodes,
                };
                tokio::spawn(async move {
                    writer.run(stop_rx).await;
                    let _ = done_tx.send(());
                });
            };
            tokio::select! {
                r = switchyard_control_plane::run(source, opts, start) => r.context("control plane failed"),
                () = shutdown_signal() => {
                    tracing::info!("shutting down");
                    let _ = stop_tx.send(true);
                    // Give the lease back so that another replica leads at once.
                    let _ = tokio::time::timeout(Duration::from_secs(5), done_rx).await;
                    Ok(())
                }
            }
        }
    }
}

/// The client authentication the flags ask for.
async fn client_auth(args: &Args) -> Result<ClientAuth> {
    let tokens = if args.allowed_service_accounts.is_empty() {
        None
    } else {
        for sa in &args.allowed_service_accounts {
            if sa.split('/').filter(|p| !p.is_empty()).count() != 2 {
                bail!("--allowed-service-accounts takes namespace/name, got {sa:?}");
            }
        }
        let client = kube::Client::try_default()
            .await
            .context("connecting to the Kubernetes API for TokenReviews")?;
        Some(TokenAuth::new(
            std::sync::Arc::new(KubeReviewer(client)),
            args.token_audience.clone(),
            &args.allowed_service_accounts,
        ))
    };
    Ok(ClientAuth {
        mtls: args.client_ca.is_some(),
        tokens,
    })
}

/// SIGINT or SIGTERM (what Kubernetes sends on pod termination).
async fn shutdown_signal() {
    #[cfg(unix)]
    if let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        return;
    }
    let _ = tokio::signal::ctrl_c().await;
}
