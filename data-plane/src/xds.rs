//! Fleet mode: the config stream client. Authenticates with a projected ServiceAccount token
//! and/or a client certificate (read afresh on every connection, so rotated credentials are
//! picked up), identifies itself with the version it holds, applies every snapshot it
//! receives (without the resources that cannot run here), answers ACK, or NACK naming each
//! resource left out with its generation, and reconnects with backoff. While the control plane is away
//! the last good config keeps serving.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use switchyard_proto::v1 as pb;
use switchyard_proto::v1::config_discovery_client::ConfigDiscoveryClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::config::InvalidResource;
use crate::gateway::Gateway;

/// Largest snapshot accepted (100k keys fit with room to spare).
pub const MAX_SNAPSHOT_BYTES: usize = 256 * 1024 * 1024;

/// How to reach the control plane.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Control-plane replicas; a broken stream moves on to the next.
    pub urls: Vec<String>,
    pub node_id: String,
    /// PEM CA bundle that signs the control plane's certificate (https URLs).
    pub ca_pem: Option<Vec<u8>>,
    /// Server name to verify, when it differs from the URL's host.
    pub server_name: Option<String>,
    /// File holding the ServiceAccount token presented as `authorization: Bearer` (a
    /// projected token the kubelet rotates in place).
    pub token_file: Option<PathBuf>,
    /// PEM client certificate and key (mTLS).
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid control-plane URL: {0}")]
    Url(#[source] tonic::transport::Error),
    #[error("connecting to the control plane failed: {0}")]
    Connect(#[source] tonic::transport::Error),
    #[error("config stream failed: {0}")]
    Stream(#[from] tonic::Status),
    #[error("config stream closed by the client side")]
    Closed,
    #[error("reading {0} failed: {1}")]
    Credential(String, std::io::Error),
    #[error("the token in {0} cannot be sent as a header")]
    BadToken(String),
    #[error("a delta from version {base:?} arrived while holding {held:?}")]
    DeltaBase { base: String, held: String },
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|e| ClientError::Credential(path.display().to_string(), e))
}

/// Runs forever: connect, stream, reconnect.
pub async fn run(gw: Arc<Gateway>, opts: ClientOptions) {
    let mut backoff = Duration::from_millis(100);
    let mut next = 0usize;
    loop {
        let mut received = false;
        let url = &opts.urls[next % opts.urls.len().max(1)];
        match session(&gw, &opts, url, &mut received).await {
            Ok(()) => tracing::info!(%url, "config stream ended by the control plane"),
            Err(e) => {
                tracing::warn!(error = %e, %url, "config stream down; serving the last good config")
            }
        }
        // The next attempt goes to the next replica (the same one when there is one).
        next = next.wrapping_add(1);
        gw.metrics.control_plane_connected.set(0);
        if received {
            backoff = Duration::from_millis(100);
        }
        let jitter = Duration::from_millis(fastrand::u64(0..=backoff.as_millis() as u64 / 2));
        tokio::time::sleep(backoff + jitter).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

fn endpoint(opts: &ClientOptions, url: &str) -> Result<Endpoint, ClientError> {
    // Credentials are read on every connection: the kubelet and cert-manager rotate in place.
    let identity = match &opts.client_cert {
        Some((cert, key)) => Some(Identity::from_pem(read(cert)?, read(key)?)),
        None => None,
    };
    let mut ep = Endpoint::from_shared(url.to_owned())
        .map_err(ClientError::Url)?
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true);
    if url.starts_with("https://") {
        let mut tls = ClientTlsConfig::new();
        if let Some(ca) = &opts.ca_pem {
            tls = tls.ca_certificate(Certificate::from_pem(ca));
        }
        if let Some(name) = &opts.server_name {
            tls = tls.domain_name(name.clone());
        }
        if let Some(id) = identity {
            tls = tls.identity(id);
        }
        ep = ep.tls_config(tls).map_err(ClientError::Url)?;
    }
    Ok(ep)
}

async fn session(
    gw: &Gateway,
    opts: &ClientOptions,
    url: &str,
    received: &mut bool,
) -> Result<(), ClientError> {
    let channel = endpoint(opts, url)?
        .connect()
        .await
        .map_err(ClientError::Connect)?;
    let mut client = ConfigDiscoveryClient::new(channel)
        .max_decoding_message_size(MAX_SNAPSHOT_BYTES)
        .max_encoding_message_size(MAX_SNAPSHOT_BYTES);
    let (tx, rx) = mpsc::channel(4);
    // The version held, and what of it did not run here: a control plane that did not see
    // the NACK (another replica, or a restart) learns it from the hello.
    let (held, rejected) = gw.running().unwrap_or_default();
    let hello = pb::DiscoveryRequest {
        node_id: opts.node_id.clone(),
        version_info: held.clone(),
        error_detail: (!rejected.is_empty()).then(|| error_detail(&held, &rejected)),
        ..Default::default()
    };
    tx.send(hello).await.map_err(|_| ClientError::Closed)?;
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(path) = &opts.token_file {
        let token = String::from_utf8_lossy(&read(path)?).trim().to_owned();
        let mut value: tonic::metadata::MetadataValue<tonic::metadata::Ascii> =
            format!("Bearer {token}")
                .parse()
                .map_err(|_| ClientError::BadToken(path.display().to_string()))?;
        value.set_sensitive(true);
        request.metadata_mut().insert("authorization", value);
    }
    let mut inbound = client.stream_config(request).await?.into_inner();
    gw.metrics.control_plane_connected.set(1);
    tracing::info!(%url, node_id = %opts.node_id, "config stream connected");
    while let Some(mut resp) = inbound.message().await? {
        *received = true;
        let started = std::time::SystemTime::now();
        let pushed_by = std::mem::take(&mut resp.traceparent);
        let version = resp.version_info.clone();
        let reply = if gw.version().as_deref() == Some(resp.version_info.as_str()) {
            ack(opts, &resp.version_info, resp.nonce)
        } else if let Some(delta) = &resp.delta {
            let applied = tokio::task::block_in_place(|| gw.apply_delta(delta, &resp.version_info));
            let Some(rejected) = applied else {
                // Not the version this data plane holds: reconnect, saying what it holds.
                return Err(ClientError::DeltaBase {
                    base: delta.base_version.clone(),
                    held: gw.version().unwrap_or_default(),
                });
            };
            if rejected.is_empty() {
                ack(opts, &resp.version_info, resp.nonce)
            } else {
                let detail = error_detail(&resp.version_info, &rejected);
                nack(opts, gw, resp.nonce, detail)
            }
        } else {
            let decoded = tokio::task::block_in_place(|| {
                use prost::Message;
                pb::Snapshot::decode(resp.snapshot.clone()).map(|mut s| {
                    s.version.clone_from(&resp.version_info);
                    s
                })
            });
            let snapshot = match decoded {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(version = %resp.version_info, error = %e, "undecodable snapshot");
                    let detail = pb::ErrorDetail {
                        message: format!("snapshot does not decode: {e}"),
                        resource_errors: Vec::new(),
                    };
                    tx.send(nack(opts, gw, resp.nonce, detail))
                        .await
                        .map_err(|_| ClientError::Closed)?;
                    continue;
                }
            };
            let rejected = tokio::task::block_in_place(|| gw.apply(&snapshot));
            if rejected.is_empty() {
                ack(opts, &snapshot.version, resp.nonce)
            } else {
                // The snapshot runs without these: a NACK that names each one, with the
                // version now served (the control plane reports them on the objects).
                let detail = error_detail(&snapshot.version, &rejected);
                nack(opts, gw, resp.nonce, detail)
            }
        };
        if let Some(t) = gw.telemetry.tracer() {
            // Linked to the control plane's span that compiled and pushed this version.
            let rejected = reply
                .error_detail
                .as_ref()
                .map_or(0, |d| d.resource_errors.len());
            let result = if reply.error_detail.is_some() {
                "nack"
            } else {
                "ack"
            };
            t.config_applied(&version, &pushed_by, started, rejected, result);
        }
        tx.send(reply).await.map_err(|_| ClientError::Closed)?;
    }
    Ok(())
}

fn ack(opts: &ClientOptions, version: &str, nonce: String) -> pb::DiscoveryRequest {
    pb::DiscoveryRequest {
        node_id: opts.node_id.clone(),
        version_info: version.to_owned(),
        response_nonce: nonce,
        error_detail: None,
    }
}

fn nack(
    opts: &ClientOptions,
    gw: &Gateway,
    nonce: String,
    detail: pb::ErrorDetail,
) -> pb::DiscoveryRequest {
    pb::DiscoveryRequest {
        node_id: opts.node_id.clone(),
        version_info: gw.version().unwrap_or_default(),
        response_nonce: nonce,
        error_detail: Some(detail),
    }
}

/// The NACK detail for resources of `version` left out here.
fn error_detail(version: &str, rejected: &[InvalidResource]) -> pb::ErrorDetail {
    let resource_errors = rejected
        .iter()
        .map(|r| {
            let (namespace, name) = r.id.split_once('/').unwrap_or(("", &r.id));
            pb::ResourceError {
                resource: Some(pb::ResourceRef {
                    kind: r.kind.to_owned(),
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                    generation: r.generation,
                }),
                message: r.message.clone(),
            }
        })
        .collect();
    pb::ErrorDetail {
        message: format!(
            "{} resource(s) of snapshot {version} cannot run on this data plane",
            rejected.len()
        ),
        resource_errors,
    }
}
