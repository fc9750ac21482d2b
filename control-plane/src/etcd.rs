//! `--source etcd:URL[,URL...]`: fleets without Kubernetes keep the same resources in etcd,
//! one key per resource under `--etcd-prefix` (`{prefix}{Kind}/{namespace}/{name}`), each
//! value the YAML or JSON a user would `kubectl apply` (Secrets included). Keys under
//! `{prefix}status/` are the control plane's own output and are not read as resources.
//!
//! The source reads the prefix once, then watches from the next revision. A broken watch
//! resumes from the last revision seen; a compacted one (the revision is gone) reads the
//! whole prefix again. Every object gets its key's `mod_revision` as resourceVersion (so the
//! compiler reuses whatever did not change) and its key's `version` as generation (what
//! status reports as observed).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, EventType, GetOptions, WatchOptions};
use switchyard_crds::World;
use tokio::sync::watch;

use crate::source::{Source, SourceError};

/// Where status is written, under the prefix.
pub const STATUS: &str = "status/";

/// The etcd source.
#[derive(Debug)]
pub struct EtcdSource {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub debounce: Duration,
}

/// A document under the prefix.
#[derive(Debug)]
struct Doc {
    /// The key's `mod_revision`: the objects' resourceVersion.
    revision: i64,
    /// The key's `version` (writes since it was created): the objects' generation.
    version: i64,
    text: String,
}

/// The documents under the prefix, by key.
type Docs = BTreeMap<String, Doc>;

/// Builds the World from the documents (status keys skipped).
fn world_of(prefix: &str, docs: &Docs) -> World {
    let mut world = World::default();
    let status = format!("{prefix}{STATUS}");
    for (key, doc) in docs {
        if key.starts_with(&status) {
            continue;
        }
        let mut part = World::default();
        part.add_yaml(key, &doc.text);
        let rv = format!("etcd-{}", doc.revision);
        let stamp = |m: &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
            m.resource_version.get_or_insert_with(|| rv.clone());
            m.generation.get_or_insert(doc.version);
        };
        part.pools.iter_mut().for_each(|o| stamp(&mut o.metadata));
        part.routes.iter_mut().for_each(|o| stamp(&mut o.metadata));
        part.keys.iter_mut().for_each(|o| stamp(&mut o.metadata));
        part.guardrails
            .iter_mut()
            .for_each(|o| stamp(&mut o.metadata));
        world.merge(part);
    }
    world.resolve_env();
    world
}

/// Why a session with etcd ended.
#[derive(Debug, thiserror::Error)]
enum SessionEnd {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("the watch was canceled: {0}")]
    Canceled(String),
    #[error("revision {0} was compacted: reading the whole prefix again")]
    Compacted(i64),
    #[error("the watch stream ended")]
    Ended,
}

impl EtcdSource {
    /// One connection: read everything, then follow changes. `revision` is the last
    /// revision seen (0: none), kept across sessions so a reconnect resumes the watch.
    async fn session(
        &self,
        docs: &mut Docs,
        revision: &mut i64,
        tx: &watch::Sender<Option<Arc<World>>>,
    ) -> Result<(), SessionEnd> {
        let mut client = Client::connect(&self.endpoints, None).await?;
        if *revision == 0 {
            let all = client
                .get(self.prefix.as_str(), Some(GetOptions::new().with_prefix()))
                .await?;
            docs.clear();
            for kv in all.kvs() {
                if let (Ok(k), Ok(v)) = (kv.key_str(), kv.value_str()) {
                    let doc = Doc {
                        revision: kv.mod_revision(),
                        version: kv.version(),
                        text: v.to_owned(),
                    };
                    docs.insert(k.to_owned(), doc);
                }
            }
            *revision = all.header().map_or(0, |h| h.revision());
            tracing::info!(prefix = %self.prefix, keys = docs.len(), revision = *revision, "read the resources from etcd");
            tx.send_replace(Some(Arc::new(world_of(&self.prefix, docs))));
        }
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(*revision + 1);
        let mut stream = client.watch(self.prefix.as_str(), Some(options)).await?;
        tracing::debug!(from = *revision + 1, "watching etcd");
        loop {
            let Some(resp) = stream.message().await? else {
                return Err(SessionEnd::Ended);
            };
            tracing::debug!(
                compact = resp.compact_revision(),
                canceled = resp.canceled(),
                created = resp.created(),
                events = resp.events().len(),
                "etcd watch response"
            );
            if resp.compact_revision() > 0 {
                return Err(SessionEnd::Compacted(resp.compact_revision()));
            }
            if resp.canceled() {
                return Err(SessionEnd::Canceled(resp.cancel_reason().to_owned()));
            }
            let mut changed = false;
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                let Ok(key) = kv.key_str() else { continue };
                match ev.event_type() {
                    EventType::Put => {
                        let doc = Doc {
                            revision: kv.mod_revision(),
                            version: kv.version(),
                            text: kv.value_str().unwrap_or_default().to_owned(),
                        };
                        docs.insert(key.to_owned(), doc);
                    }
                    EventType::Delete => {
                        docs.remove(key);
                    }
                }
                *revision = (*revision).max(kv.mod_revision());
                changed |= !key.starts_with(&format!("{}{STATUS}", self.prefix));
            }
            if let Some(h) = resp.header() {
                *revision = (*revision).max(h.revision());
            }
            if changed {
                // Several writes in a row (a `load`) make one World.
                tokio::time::sleep(self.debounce).await;
                tx.send_replace(Some(Arc::new(world_of(&self.prefix, docs))));
            }
        }
    }
}

impl Source for EtcdSource {
    fn describe(&self) -> String {
        format!("etcd:{} prefix {}", self.endpoints.join(","), self.prefix)
    }

    async fn run(self, tx: watch::Sender<Option<Arc<World>>>) -> Result<(), SourceError> {
        let mut docs = Docs::new();
        let mut revision = 0;
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.session(&mut docs, &mut revision, &tx).await {
                Ok(()) => {}
                Err(SessionEnd::Compacted(r)) => {
                    tracing::warn!(
                        compacted = r,
                        seen = revision,
                        "etcd compacted past the last revision seen: reading the whole prefix again"
                    );
                    revision = 0;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, revision, "etcd session ended; serving the last resources and reconnecting");
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

/// The key a resource is stored under.
pub fn resource_key(prefix: &str, kind: &str, namespace: &str, name: &str) -> String {
    format!("{prefix}{kind}/{namespace}/{name}")
}

/// Stores every resource of a directory's YAML in etcd, one key each (what `kubectl apply -f
/// DIR` is to a cluster). Returns how many were written.
pub async fn load(endpoints: &[String], prefix: &str, dir: &Path) -> anyhow::Result<usize> {
    let mut client = Client::connect(endpoints, None).await?;
    let mut written = 0;
    for path in switchyard_crds::fs::yaml_files(dir)? {
        let text = std::fs::read_to_string(&path)?;
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = <serde_yaml::Value as serde::Deserialize>::deserialize(doc)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            if value.is_null() {
                continue;
            }
            let field = |v: &serde_yaml::Value, k: &str| {
                v.get(k).and_then(|x| x.as_str()).map(str::to_owned)
            };
            let kind = field(&value, "kind")
                .ok_or_else(|| anyhow::anyhow!("{}: a document without kind", path.display()))?;
            let meta = value.get("metadata").cloned().unwrap_or_default();
            let name = field(&meta, "name").ok_or_else(|| {
                anyhow::anyhow!("{}: a {kind} without metadata.name", path.display())
            })?;
            let namespace = field(&meta, "namespace")
                .unwrap_or_else(|| switchyard_crds::world::DEFAULT_NAMESPACE.to_owned());
            let key = resource_key(prefix, &kind, &namespace, &name);
            client
                .put(key, serde_yaml::to_string(&value)?, None)
                .await?;
            written += 1;
        }
    }
    Ok(written)
}

/// The key of a resource's status.
pub fn status_key(prefix: &str, kind: &str, namespace: &str, name: &str) -> String {
    format!("{prefix}{STATUS}{kind}/{namespace}/{name}")
}

/// The leader key, and where each replica publishes its data planes.
fn leader_key(prefix: &str) -> String {
    format!("{prefix}{STATUS}leader")
}
fn presence_prefix(prefix: &str) -> String {
    format!("{prefix}{STATUS}presence/")
}

/// Everything the etcd status writer needs.
#[derive(Debug)]
pub struct StatusWriter {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub identity: String,
    /// Time to live of the lease behind leadership and presence.
    pub ttl: Duration,
    pub compiled: watch::Receiver<crate::server::Published>,
    pub nodes: Arc<crate::server::Nodes>,
}

impl StatusWriter {
    /// Runs until `stop` turns true: keeps a lease, publishes this replica's data planes
    /// under it, and while it holds the leader key (created only if absent, on the lease)
    /// writes each resource's conditions to `{prefix}status/{Kind}/{namespace}/{name}`. On
    /// the way out it revokes the lease, so that the leader key goes at once.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(200);
        let held: std::sync::Mutex<Option<(Client, i64)>> = std::sync::Mutex::default();
        loop {
            let started = tokio::time::Instant::now();
            let mut stopped = tokio::select! {
                r = self.session(&held) => {
                    if let Err(e) = r {
                        tracing::warn!(error = %e, "etcd status session ended; retrying");
                    }
                    false
                }
                r = stop.wait_for(|s| *s) => r.is_ok(),
            };
            if !stopped {
                // A session that lived a while starts the backoff over.
                if started.elapsed() > self.ttl {
                    backoff = Duration::from_millis(200);
                }
                stopped = tokio::select! {
                    () = tokio::time::sleep(backoff) => false,
                    r = stop.wait_for(|s| *s) => r.is_ok(),
                };
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            if stopped {
                let lease = held.lock().ok().and_then(|mut h| h.take());
                if let Some((mut client, lease)) = lease {
                    match client.lease_revoke(lease).await {
                        Ok(_) => {
                            tracing::info!(identity = %self.identity, "released the etcd lease (leadership and presence)")
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "revoking the etcd lease failed; it runs out by itself")
                        }
                    }
                }
                return;
            }
        }
    }

    async fn session(
        &self,
        held: &std::sync::Mutex<Option<(Client, i64)>>,
    ) -> Result<(), etcd_client::Error> {
        let mut client = Client::connect(&self.endpoints, None).await?;
        let ttl = i64::try_from(self.ttl.as_secs().max(2)).unwrap_or(15);
        let lease = client.lease_grant(ttl, None).await?.id();
        if let Ok(mut h) = held.lock() {
            *h = Some((client.clone(), lease));
        }
        let (mut keeper, mut acks) = client.lease_keep_alive(lease).await?;
        let mut history = crate::kube::status::History::default();
        let mut written: BTreeMap<String, String> = BTreeMap::new();
        let mut compiled = self.compiled.clone();
        let mut tick = tokio::time::interval(self.ttl / 3);
        let mut leading = false;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    keeper.keep_alive().await?;
                    if acks.message().await?.is_none_or(|a| a.ttl() <= 0) {
                        return Err(etcd_client::Error::LeaseKeepAliveError("the lease expired".into()));
                    }
                }
                changed = compiled.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                }
            }
            // Presence: this replica's data planes, on the lease (gone with it).
            let mine: crate::kube::presence::Fleet = self
                .nodes
                .snapshot()
                .into_iter()
                .map(|n| {
                    let view = crate::kube::presence::NodeView {
                        version: n.acked_version,
                        rejected: n.rejected,
                    };
                    (n.node_id, view)
                })
                .collect();
            let presence = format!("{}{}", presence_prefix(&self.prefix), self.identity);
            let body = serde_json::to_string(&mine).unwrap_or_default();
            client
                .put(
                    presence,
                    body,
                    Some(etcd_client::PutOptions::new().with_lease(lease)),
                )
                .await?;
            // Leadership: the leader key exists only while its lease lives.
            let key = leader_key(&self.prefix);
            let txn = etcd_client::Txn::new()
                .when([etcd_client::Compare::create_revision(
                    key.as_str(),
                    etcd_client::CompareOp::Equal,
                    0,
                )])
                .and_then([etcd_client::TxnOp::put(
                    key.as_str(),
                    self.identity.as_str(),
                    Some(etcd_client::PutOptions::new().with_lease(lease)),
                )]);
            let took = client.txn(txn).await?.succeeded();
            let holder = client.get(key.as_str(), None).await?;
            let ours = took || holder.kvs().first().is_some_and(|kv| kv.lease() == lease);
            if ours != leading {
                leading = ours;
                tracing::info!(identity = %self.identity, leader = leading, "leadership changed");
            }
            let Some(c) = compiled.borrow_and_update().clone() else {
                continue;
            };
            history.record(&c);
            if !leading {
                continue;
            }
            let fleet = self.fleet(&mut client).await?;
            let now = k8s_openapi::jiff::Timestamp::now().to_string();
            for (key, value) in statuses(&self.prefix, &c, &fleet, &history, &now) {
                if written.get(&key) == Some(&value) {
                    continue;
                }
                client.put(key.as_str(), value.as_str(), None).await?;
                written.insert(key, value);
            }
        }
    }

    /// Every replica's data planes.
    async fn fleet(
        &self,
        client: &mut Client,
    ) -> Result<crate::kube::presence::Fleet, etcd_client::Error> {
        let all = client
            .get(
                presence_prefix(&self.prefix),
                Some(GetOptions::new().with_prefix()),
            )
            .await?;
        let mut fleet = crate::kube::presence::Fleet::new();
        for kv in all.kvs() {
            if let Ok(part) = serde_json::from_slice::<crate::kube::presence::Fleet>(kv.value()) {
                fleet.extend(part);
            }
        }
        Ok(fleet)
    }
}

/// The status documents of every resource: (key, JSON) with `observedGeneration` and the
/// conditions the Kubernetes objects would carry.
pub fn statuses(
    prefix: &str,
    c: &switchyard_crds::Compiled,
    fleet: &crate::kube::presence::Fleet,
    history: &crate::kube::status::History,
    now: &str,
) -> Vec<(String, String)> {
    let mut keys: Vec<switchyard_crds::ResourceKey> = c
        .snapshot
        .resources
        .iter()
        .filter_map(|r| {
            let kind = switchyard_proto::ResourceKind::parse(&r.kind)?.as_str();
            Some(switchyard_crds::ResourceKey {
                kind,
                namespace: r.namespace.clone(),
                name: r.name.clone(),
                generation: r.generation,
            })
        })
        .collect();
    keys.extend(
        c.diagnostics
            .iter()
            .filter(|d| d.resource.kind != "File")
            .map(|d| d.resource.clone()),
    );
    keys.into_iter()
        .map(|k| {
            let conditions =
                crate::kube::status::desired_conditions(&k, c, fleet, history, &[], now);
            // Timestamps are left out: a rewrite must mean a change.
            let conditions: Vec<_> = conditions
                .into_iter()
                .map(|mut c| {
                    c.last_transition_time = None;
                    c
                })
                .collect();
            let body = serde_json::json!({
                "observedGeneration": k.generation,
                "conditions": conditions,
            });
            (
                status_key(prefix, k.kind, &k.namespace, &k.name),
                body.to_string(),
            )
        })
        .collect()
}

/// Every status document under the prefix: (resource key, JSON).
pub async fn read_status(
    endpoints: &[String],
    prefix: &str,
) -> anyhow::Result<Vec<(String, String)>> {
    let mut client = Client::connect(endpoints, None).await?;
    let root = format!("{prefix}{STATUS}");
    let all = client
        .get(root.as_str(), Some(GetOptions::new().with_prefix()))
        .await?;
    let mut out = Vec::new();
    for kv in all.kvs() {
        let (Ok(k), Ok(v)) = (kv.key_str(), kv.value_str()) else {
            continue;
        };
        let resource = k.strip_prefix(&root).unwrap_or(k);
        if resource == "leader" || resource.starts_with("presence/") {
            continue;
        }
        out.push((resource.to_owned(), v.to_owned()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_world_is_the_prefix_without_status_with_revisions_as_versions() {
        let doc = |revision, version, text: &str| Doc {
            revision,
            version,
            text: text.into(),
        };
        let docs = Docs::from([
            (
                "/sy/LLMRoute/default/r".to_owned(),
                doc(
                    7,
                    3,
                    "apiVersion: switchyard.dev/v1alpha1\nkind: LLMRoute\nmetadata: {name: r}\nspec: {models: [m], backends: [{pool: p}]}\n",
                ),
            ),
            (
                "/sy/status/LLMRoute/default/r".to_owned(),
                doc(8, 1, "{\"conditions\": []}"),
            ),
            (
                "/sy/Secret/default/s".to_owned(),
                doc(
                    2,
                    1,
                    "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData: {k: v}\n",
                ),
            ),
        ]);
        let w = world_of("/sy/", &docs);
        assert_eq!(w.routes.len(), 1);
        assert!(
            w.load_errors.is_empty(),
            "status keys are not resources: {:?}",
            w.load_errors
        );
        let m = &w.routes[0].metadata;
        assert_eq!(m.resource_version.as_deref(), Some("etcd-7"));
        assert_eq!(m.generation, Some(3));
        assert_eq!(
            w.secret("default", "s")
                .and_then(|s| s.get("k"))
                .map(String::as_str),
            Some("v")
        );
    }
}
