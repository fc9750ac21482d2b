use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use switchyard_control_plane::{DirSource, Options, ServerTls, SourceSpec};

/// Switchyard control plane: compiles resources and streams them to data planes.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Where resources come from: `kubernetes` or `dir:PATH`.
    #[arg(long, env = "SWITCHYARD_SOURCE")]
    source: SourceSpec,
    /// Address of the gRPC config server.
    #[arg(long, env = "SWITCHYARD_GRPC_LISTEN", default_value = "0.0.0.0:18000")]
    grpc_listen: SocketAddr,
    /// Address of the admin listener (/healthz, /readyz, /metrics).
    #[arg(long, env = "SWITCHYARD_ADMIN_LISTEN", default_value = "0.0.0.0:9091")]
    admin_listen: SocketAddr,
    /// PEM certificate of the gRPC server (TLS when set together with --tls-key).
    #[arg(long, env = "SWITCHYARD_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of the gRPC server.
    #[arg(long, env = "SWITCHYARD_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// How often a `dir:` source checks for changes.
    #[arg(long, env = "SWITCHYARD_POLL_INTERVAL", default_value = "500ms", value_parser = humantime_duration)]
    poll_interval: Duration,
    /// Log format: text or json.
    #[arg(long, env = "SWITCHYARD_LOG_FORMAT", default_value = "text")]
    log_format: String,
}

fn humantime_duration(s: &str) -> Result<Duration, String> {
    switchyard_crds::validate::duration("--poll-interval", s).map_err(|e| e.to_string())
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

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    init_tracing(&args.log_format);
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => Some(ServerTls {
            cert_pem: std::fs::read(c).with_context(|| format!("reading {}", c.display()))?,
            key_pem: std::fs::read(k).with_context(|| format!("reading {}", k.display()))?,
        }),
        _ => None,
    };
    let opts = Options {
        grpc_listen: args.grpc_listen,
        admin_listen: args.admin_listen,
        tls,
    };
    match args.source {
        SourceSpec::Dir(dir) => {
            let source = DirSource {
                dir,
                poll: args.poll_interval,
            };
            tokio::select! {
                r = switchyard_control_plane::run(source, opts) => r.context("control plane failed"),
                _ = tokio::signal::ctrl_c() => Ok(()),
            }
        }
        SourceSpec::Kubernetes => {
            bail!("--source kubernetes is not available in this build yet; use dir:PATH")
        }
    }
}
