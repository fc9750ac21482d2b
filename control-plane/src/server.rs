//! The gRPC config server: every connected data plane is authenticated (see `auth.rs`), then
//! gets the current snapshot and every new one; its ACKs and NACKs are recorded per node.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use switchyard_crds::Compiled;
use switchyard_proto::v1 as pb;
use switchyard_proto::v1::config_discovery_server::ConfigDiscovery;
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{self, ClientAuth, Identity};
use crate::metrics::{Metrics, ResultLabels};

/// What a data plane last told us.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeState {
    /// The node's name: its authenticated identity (what it claimed when authentication is
    /// disabled with `--insecure-plaintext`).
    pub node_id: String,
    /// Who vouched for it (`system:serviceaccount:...`, `CN=...`), or "unauthenticated".
    pub principal: String,
    /// Version the node runs (its last ACK, or what it said it held on connect).
    pub acked_version: String,
    /// Last rejected version and why.
    pub nacked: Option<(String, String)>,
    /// Resources of `acked_version` the node did not apply (at most
    /// [`MAX_REJECTIONS`]), from its last NACK.
    pub rejected: Vec<Rejection>,
}

/// At most this many rejected resources are kept per node: the fleet view travels in an
/// annotation (256 KiB for all of them).
pub const MAX_REJECTIONS: usize = 200;

/// The resources a NACK names, logged, at most [`MAX_REJECTIONS`].
fn rejections(node: &str, err: &pb::ErrorDetail) -> Vec<Rejection> {
    let mut out = Vec::new();
    for r in &err.resource_errors {
        let res = r.resource.clone().unwrap_or_default();
        tracing::warn!(%node, kind = %res.kind, namespace = %res.namespace, name = %res.name, generation = res.generation, reason = %r.message, "data plane rejected resource");
        if out.len() < MAX_REJECTIONS {
            out.push(Rejection {
                kind: res.kind,
                namespace: res.namespace,
                name: res.name,
                generation: res.generation,
                message: r.message.chars().take(300).collect(),
            });
        }
    }
    out
}

/// One resource a data plane did not apply.
#[derive(
    Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct Rejection {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub generation: i64,
    pub message: String,
}

/// Connected data planes, by connection.
#[derive(Debug, Default)]
pub struct Nodes {
    next_id: AtomicU64,
    nodes: Mutex<HashMap<u64, NodeState>>,
}

impl Nodes {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, NodeState>> {
        self.nodes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A copy of every connected node's state.
    pub fn snapshot(&self) -> Vec<NodeState> {
        let mut v: Vec<NodeState> = self.lock().values().cloned().collect();
        v.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        v
    }

    fn update(&self, conn: u64, f: impl FnOnce(&mut NodeState)) {
        if let Some(n) = self.lock().get_mut(&conn) {
            f(n);
        }
    }
}

/// The compiled snapshot being served.
pub type Published = Option<Arc<Compiled>>;

/// The ConfigDiscovery service.
#[derive(Clone, Debug)]
pub struct ConfigServer {
    snapshots: watch::Receiver<Published>,
    pub nodes: Arc<Nodes>,
    metrics: Arc<Metrics>,
    nonce: Arc<AtomicU64>,
    auth: Arc<ClientAuth>,
    recent: Arc<Recent>,
    /// Spans of the pushes, when tracing.
    pub pushes: Option<Arc<crate::trace::Pushes>>,
}

/// The last few versions served, so that a data plane holding one gets a delta; and the
/// deltas already computed, shared by every data plane on the same base.
#[derive(Debug, Default)]
pub struct Recent {
    versions: Mutex<std::collections::VecDeque<Arc<Compiled>>>,
    deltas: Mutex<HashMap<(String, String), Arc<pb::Delta>>>,
}

impl Recent {
    /// Versions kept for deltas (each holds its compiled snapshot).
    const KEEP: usize = 4;

    fn record(&self, c: &Arc<Compiled>) {
        let mut v = lock(&self.versions);
        if v.iter().any(|x| x.snapshot.version == c.snapshot.version) {
            return;
        }
        v.push_back(c.clone());
        while v.len() > Self::KEEP {
            v.pop_front();
        }
        // Deltas to older targets are never sent again.
        lock(&self.deltas).retain(|(_, to), _| to == &c.snapshot.version);
    }

    /// The delta from `base` to `to`, when `base` is recent and the delta is smaller than
    /// half of the whole state (otherwise the shared full snapshot is cheaper).
    fn delta(&self, base: &str, to: &Compiled) -> Option<Arc<pb::Delta>> {
        let key = (base.to_owned(), to.snapshot.version.clone());
        if let Some(d) = lock(&self.deltas).get(&key) {
            return Some(d.clone());
        }
        let from = lock(&self.versions)
            .iter()
            .find(|c| c.snapshot.version == base)
            .cloned()?;
        let d = switchyard_crds::delta(&from, to);
        let size = d.resources.len() + d.removed.len();
        let total = to.snapshot.resources.len();
        if size * 2 > total.max(1) {
            return None;
        }
        let d = Arc::new(d);
        lock(&self.deltas).insert(key, d.clone());
        Some(d)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ConfigServer {
    pub fn new(
        snapshots: watch::Receiver<Published>,
        metrics: Arc<Metrics>,
        auth: Arc<ClientAuth>,
    ) -> Self {
        let recent = Arc::new(Recent::default());
        let mut published = snapshots.clone();
        let record = recent.clone();
        tokio::spawn(async move {
            loop {
                if let Some(c) = published.borrow_and_update().clone() {
                    record.record(&c);
                }
                if published.changed().await.is_err() {
                    return;
                }
            }
        });
        Self {
            snapshots,
            nodes: Arc::default(),
            metrics,
            nonce: Arc::default(),
            auth,
            recent,
            pushes: None,
        }
    }

    fn refuse(&self, e: auth::AuthError, peer: Option<std::net::SocketAddr>) -> Status {
        self.metrics
            .stream_auth
            .get_or_create(&ResultLabels {
                result: e.metric_label(),
            })
            .inc();
        tracing::warn!(peer = ?peer, reason = e.metric_label(), error = %e, "config stream refused");
        e.into_status()
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<pb::DiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ConfigDiscovery for ConfigServer {
    type StreamConfigStream = ResponseStream;

    async fn stream_config(
        &self,
        request: Request<Streaming<pb::DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamConfigStream>, Status> {
        // Authenticate before reading anything from the stream, let alone sending on it.
        let peer = request.remote_addr();
        let identity = self
            .auth
            .authenticate(&request)
            .await
            .map_err(|e| self.refuse(e, peer))?;
        let mut inbound = request.into_inner();
        let hello = inbound.message().await?.ok_or_else(|| {
            Status::invalid_argument("the stream must start with a DiscoveryRequest")
        })?;
        if hello.node_id.is_empty() {
            return Err(Status::invalid_argument("node_id is required"));
        }
        auth::bind_node(identity.as_ref(), &hello.node_id).map_err(|e| self.refuse(e, peer))?;
        self.metrics
            .stream_auth
            .get_or_create(&ResultLabels {
                result: if identity.is_some() {
                    "ok"
                } else {
                    "unauthenticated_allowed"
                },
            })
            .inc();
        let principal = identity
            .as_ref()
            .map_or_else(|| "unauthenticated".to_owned(), |i| i.principal.clone());
        let conn = self.nodes.next_id.fetch_add(1, Ordering::Relaxed);
        self.nodes.lock().insert(
            conn,
            NodeState {
                node_id: hello.node_id.clone(),
                principal: principal.clone(),
                acked_version: hello.version_info.clone(),
                nacked: None,
                // What of the version it holds did not run there (it may have NACKed it to
                // another replica).
                rejected: hello
                    .error_detail
                    .as_ref()
                    .map(|e| rejections(&hello.node_id, e))
                    .unwrap_or_default(),
            },
        );
        self.metrics.connected_data_planes.inc();
        if identity.is_none() {
            tracing::warn!(node = %hello.node_id, peer = ?peer, "UNAUTHENTICATED data plane connected (--insecure-plaintext): it receives every provider credential");
        } else {
            tracing::info!(node = %hello.node_id, %principal, holds = %hello.version_info, "data plane connected");
        }
        let (tx, rx) = mpsc::channel(4);
        let this = self.clone();
        tokio::spawn(async move {
            this.serve_node(conn, hello, identity, inbound, tx).await;
            let node = this.nodes.lock().remove(&conn);
            this.metrics.connected_data_planes.dec();
            tracing::info!(node = %node.map(|n| n.node_id).unwrap_or_default(), "data plane disconnected");
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

impl ConfigServer {
    async fn serve_node(
        &self,
        conn: u64,
        hello: pb::DiscoveryRequest,
        identity: Option<Identity>,
        mut inbound: Streaming<pb::DiscoveryRequest>,
        tx: mpsc::Sender<Result<pb::DiscoveryResponse, Status>>,
    ) {
        // The stream lives no longer than the credentials that opened it.
        let expiry = identity.as_ref().and_then(|i| i.expires).map(|e| {
            let left = e
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_default();
            tokio::time::Instant::now() + left
        });
        let expired = async move {
            match expiry {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(expired);
        let mut snapshots = self.snapshots.clone();
        let mut sent_version = hello.version_info.clone();
        // Send the current snapshot unless the node already runs it.
        let current = snapshots.borrow_and_update().clone();
        if let Some(c) = current
            && c.snapshot.version != sent_version
            && !self.send(&tx, &c, &mut sent_version).await
        {
            return;
        }
        loop {
            tokio::select! {
                () = &mut expired => {
                    tracing::info!(node = %hello.node_id, "credentials expired: ending the config stream (the data plane reconnects with fresh ones)");
                    self.metrics.streams_expired.inc();
                    let _ = tx
                        .send(Err(Status::unauthenticated(
                            "credentials expired: reconnect with fresh ones",
                        )))
                        .await;
                    return;
                }
                changed = snapshots.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let current = snapshots.borrow_and_update().clone();
                    if let Some(c) = current
                        && c.snapshot.version != sent_version && !self.send(&tx, &c, &mut sent_version).await {
                            return;
                        }
                }
                msg = inbound.message() => match msg {
                    Ok(Some(m)) => self.on_reply(conn, m),
                    Ok(None) => return,
                    Err(status) => {
                        tracing::debug!(%status, "config stream from data plane broke");
                        return;
                    }
                },
            }
        }
    }

    async fn send(
        &self,
        tx: &mpsc::Sender<Result<pb::DiscoveryResponse, Status>>,
        c: &Compiled,
        sent_version: &mut String,
    ) -> bool {
        let nonce = self.nonce.fetch_add(1, Ordering::Relaxed).to_string();
        let resp = match self.recent.delta(sent_version, c) {
            Some(delta) => {
                self.metrics.deltas_sent.inc();
                pb::DiscoveryResponse {
                    version_info: c.snapshot.version.clone(),
                    nonce,
                    snapshot: Default::default(),
                    delta: Some((*delta).clone()),
                    traceparent: self.traceparent(&c.snapshot.version),
                }
            }
            None => {
                self.metrics.snapshots_sent.inc();
                pb::DiscoveryResponse {
                    version_info: c.snapshot.version.clone(),
                    nonce,
                    snapshot: c.encoded(),
                    delta: None,
                    traceparent: self.traceparent(&c.snapshot.version),
                }
            }
        };
        if tx.send(Ok(resp)).await.is_err() {
            return false;
        }
        sent_version.clone_from(&c.snapshot.version);
        true
    }

    fn traceparent(&self, version: &str) -> String {
        self.pushes
            .as_ref()
            .map(|p| p.traceparent(version))
            .unwrap_or_default()
    }

    fn on_reply(&self, conn: u64, m: pb::DiscoveryRequest) {
        if let Some(p) = &self.pushes {
            p.reply(&m.version_info, m.error_detail.is_none());
        }
        match m.error_detail {
            None => {
                self.metrics
                    .acks
                    .get_or_create(&ResultLabels { result: "ack" })
                    .inc();
                tracing::debug!(node = %m.node_id, version = %m.version_info, "ACK");
                self.nodes.update(conn, |n| {
                    n.acked_version = m.version_info;
                    n.nacked = None;
                    n.rejected.clear();
                });
            }
            Some(err) => {
                self.metrics
                    .acks
                    .get_or_create(&ResultLabels { result: "nack" })
                    .inc();
                let rejected = rejections(&m.node_id, &err);
                tracing::warn!(node = %m.node_id, holds = %m.version_info, error = %err.message, "NACK");
                self.nodes.update(conn, |n| {
                    n.acked_version = m.version_info;
                    n.nacked = Some((m.response_nonce, err.message));
                    n.rejected = rejected;
                });
            }
        }
    }
}
