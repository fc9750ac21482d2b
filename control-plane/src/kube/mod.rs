//! `--source kubernetes`: the operator.
//!
//! One reflector per kind fills a read-only [`Stores`]; every event bumps a change counter
//! that the compile source waits on (a `watch`, so every waiter sees every change). The same
//! reflector streams drive one `kube::runtime::Controller` per kind ([`controllers`]): each
//! object is reconciled on its own, with backoff, and a failure of one never holds up
//! another. ProviderPool, LLMRoute and Guardrail carry conditions only and share one
//! reconcile ([`status`]); VirtualKey's ([`key`]) also mints keys and reports spend.
//! [`triggers`] turns compile results, fleet changes and leadership into reconciles of the
//! objects they affect. Only the leader (one Lease) writes, fenced on its lease.
//!
//! Only Secrets labelled [`switchyard_crds::SECRET_LABEL`] are watched, and with
//! `--watch-namespaces` only in those namespaces (one watch each, with a Role there): the
//! operator then reads no Secret of any other namespace, and resources elsewhere are left
//! out of the configuration (their status says so). Namespaces themselves are watched for
//! their labels, which `keyNamespaces: {from: Selector}` on a route matches.

pub mod context;
pub mod controllers;
pub mod key;
pub mod leader;
pub mod presence;
pub mod spend;
pub mod status;
pub mod triggers;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use switchyard_crds::{Guardrail, LLMRoute, ProviderPool, VirtualKey, World};
use tokio::sync::watch;

use crate::source::{Source, SourceError};

/// Field manager for every write the operator makes.
pub const FIELD_MANAGER: &str = "switchyard-control-plane";

/// A change counter: every watch event bumps it, and every subscriber sees the bump (unlike
/// `Notify::notify_one`, which wakes one waiter and lets another miss the change).
#[derive(Clone, Debug)]
pub struct Changes(Arc<watch::Sender<u64>>);

impl Default for Changes {
    fn default() -> Self {
        Self(Arc::new(watch::channel(0).0))
    }
}

impl Changes {
    pub fn bump(&self) {
        self.0.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver that reports every bump after this call.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.0.subscribe()
    }
}

/// Read-only caches of every watched object.
#[derive(Clone)]
pub struct Stores {
    pub pools: Store<ProviderPool>,
    pub routes: Store<LLMRoute>,
    pub keys: Store<VirtualKey>,
    pub guardrails: Store<Guardrail>,
    /// Only Secrets labelled [`switchyard_crds::SECRET_LABEL`] (of the served namespaces).
    pub secrets: SecretStores,
    /// Namespaces, for their labels.
    pub namespaces: Store<Namespace>,
    /// The namespaces served (`None`: every one).
    pub served: Option<Arc<BTreeSet<String>>>,
    /// Bumped on every change to any store.
    pub changes: Changes,
    /// How many watches completed their first list.
    synced: watch::Receiver<usize>,
    /// How many watches there are.
    watches: usize,
}

/// The watched Secrets: one cluster-wide cache, or one per served namespace.
#[derive(Clone)]
pub enum SecretStores {
    All(Store<Secret>),
    Namespaced(std::collections::BTreeMap<String, Store<Secret>>),
}

impl std::fmt::Debug for SecretStores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::All(_) => f.write_str("SecretStores::All"),
            Self::Namespaced(m) => f.debug_list().entries(m.keys()).finish(),
        }
    }
}

impl SecretStores {
    /// A watched Secret by namespace and name (`None` outside the served namespaces).
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<Secret>> {
        let key = reflector::ObjectRef::new(name).within(namespace);
        match self {
            Self::All(s) => s.get(&key),
            Self::Namespaced(m) => m.get(namespace)?.get(&key),
        }
    }
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores").finish_non_exhaustive()
    }
}

/// A kind's watch: objects touched (applied or deleted), after the store saw them.
pub type Touched<K> = BoxStream<'static, Result<K, watcher::Error>>;

/// The watch streams behind [`Stores`]. Nothing fills the stores until they are polled: the
/// controllers do that ([`controllers::run`]).
pub struct Watches {
    pub pools: Touched<ProviderPool>,
    pub routes: Touched<LLMRoute>,
    pub keys: Touched<VirtualKey>,
    pub guardrails: Touched<Guardrail>,
    pub secrets: Touched<Secret>,
    /// Namespaces: polled for their labels only (no controller of its own).
    pub namespaces: Touched<Namespace>,
}

impl std::fmt::Debug for Watches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watches").finish_non_exhaustive()
    }
}

fn watch_kind<K>(
    api: Api<K>,
    config: watcher::Config,
    changes: Changes,
    synced: Arc<watch::Sender<usize>>,
) -> (Store<K>, Touched<K>)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let mut listed = false;
    let stream = reflector::reflector(writer, watcher(api, config))
        .default_backoff()
        .inspect(move |ev| match ev {
            // Every event, relists included: a relist can drop objects without a Delete.
            Ok(ev) => {
                if !listed && matches!(ev, watcher::Event::InitDone) {
                    listed = true;
                    synced.send_modify(|n| *n += 1);
                }
                changes.bump();
            }
            Err(e) => tracing::warn!(kind = %K::kind(&()), error = %e, "watch error (retrying)"),
        })
        .touched_objects()
        .boxed();
    (reader, stream)
}

/// Starts nothing yet: returns the stores and the streams that fill them. The four kinds
/// and Namespaces are watched cluster-wide; Secrets cluster-wide, or in each of `served`.
pub fn watches(client: &Client, served: Option<&[String]>) -> (Stores, Watches) {
    let changes = Changes::default();
    let (synced_tx, synced) = watch::channel(0);
    let synced_tx = Arc::new(synced_tx);
    let all = watcher::Config::default;
    let watch = |config| (config, changes.clone(), synced_tx.clone());
    let (c, ch, sy) = watch(all());
    let (pools, pool_stream) = watch_kind(Api::all(client.clone()), c, ch, sy);
    let (c, ch, sy) = watch(all());
    let (routes, route_stream) = watch_kind(Api::all(client.clone()), c, ch, sy);
    let (c, ch, sy) = watch(all());
    let (keys, key_stream) = watch_kind(Api::all(client.clone()), c, ch, sy);
    let (c, ch, sy) = watch(all());
    let (guardrails, guardrail_stream) = watch_kind(Api::all(client.clone()), c, ch, sy);
    let (c, ch, sy) = watch(all());
    let (namespaces, namespace_stream) =
        watch_kind::<Namespace>(Api::all(client.clone()), c, ch, sy);
    let labelled = || all().labels(switchyard_crds::SECRET_LABEL);
    let (secrets, secret_stream, secret_watches) = match served {
        None => {
            let (c, ch, sy) = watch(labelled());
            let (store, stream) = watch_kind(Api::all(client.clone()), c, ch, sy);
            (SecretStores::All(store), stream, 1)
        }
        Some(list) => {
            let mut stores = std::collections::BTreeMap::new();
            let mut streams = Vec::new();
            for ns in list {
                let (c, ch, sy) = watch(labelled());
                let (store, stream) = watch_kind(Api::namespaced(client.clone(), ns), c, ch, sy);
                stores.insert(ns.clone(), store);
                streams.push(stream);
            }
            let n = stores.len();
            let merged = futures_util::stream::select_all(streams).boxed();
            (SecretStores::Namespaced(stores), merged, n)
        }
    };
    (
        Stores {
            pools,
            routes,
            keys,
            guardrails,
            secrets,
            namespaces,
            served: served.map(|l| Arc::new(l.iter().cloned().collect())),
            changes,
            synced,
            // The four kinds, Namespaces, and the Secret watches.
            watches: 5 + secret_watches,
        },
        Watches {
            pools: pool_stream,
            routes: route_stream,
            keys: key_stream,
            guardrails: guardrail_stream,
            secrets: secret_stream,
            namespaces: namespace_stream,
        },
    )
}

impl Stores {
    /// Waits until every store has completed its first list. (Not `Store::wait_until_ready`:
    /// kube-runtime keeps one waker per store, and the controllers already wait on it; a
    /// second waiter would steal, or lose, the wake-up.)
    /// False when the watches stopped first.
    pub async fn ready(&self) -> bool {
        let mut synced = self.synced.clone();
        let all = self.watches;
        synced.wait_for(|n| *n >= all).await.is_ok()
    }

    /// The current World: every resource, and the values of the Secrets they reference.
    pub fn world(&self) -> World {
        let mut world = World {
            pools: self.pools.state().iter().map(|p| (**p).clone()).collect(),
            routes: self.routes.state().iter().map(|p| (**p).clone()).collect(),
            keys: self.keys.state().iter().map(|p| (**p).clone()).collect(),
            guardrails: self
                .guardrails
                .state()
                .iter()
                .map(|p| (**p).clone())
                .collect(),
            namespaces: self
                .namespaces
                .state()
                .iter()
                .map(|n| (n.name_any(), n.labels().clone()))
                .collect(),
            served: self.served.as_deref().cloned(),
            ..Default::default()
        };
        let mut referenced = BTreeSet::new();
        for p in &world.pools {
            let ns = p.namespace().unwrap_or_default();
            for e in &p.spec.endpoints {
                if let Some(r) = &e.credential_secret_ref {
                    referenced.insert((ns.clone(), r.name.clone()));
                }
                if let Some(r) = &e.aws_credentials_secret_ref {
                    referenced.insert((ns.clone(), r.name.clone()));
                }
            }
        }
        for k in &world.keys {
            referenced.insert((
                k.namespace().unwrap_or_default(),
                k.spec.secret_ref.name.clone(),
            ));
        }
        for (ns, name) in referenced {
            if let Some(s) = self.secrets.get(&ns, &name) {
                world.add_secret(&s);
            }
        }
        world
    }
}

/// The Kubernetes source: publishes a World on every change (debounced).
#[derive(Debug)]
pub struct KubeSource {
    pub stores: Stores,
    pub debounce: Duration,
}

impl Source for KubeSource {
    fn describe(&self) -> String {
        "kubernetes".into()
    }

    async fn run(self, tx: watch::Sender<Option<Arc<World>>>) -> Result<(), SourceError> {
        let mut changes = self.stores.changes.subscribe();
        // Never publish before every list completed: a partial World would drop keys.
        if !self.stores.ready().await {
            return Err(SourceError::Unavailable("kubernetes watches"));
        }
        tracing::info!("kubernetes caches synced");
        loop {
            changes.borrow_and_update();
            tx.send_replace(Some(Arc::new(self.stores.world())));
            if changes.changed().await.is_err() {
                return Err(SourceError::Unavailable("kubernetes watches"));
            }
            tokio::time::sleep(self.debounce).await;
        }
    }
}

/// A name usable in a Kubernetes object name from an arbitrary identity.
pub fn dns_label(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    out.truncate(40);
    out.trim_matches('-').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lost-wakeup regression: two consumers wait on one change signal (the compile
    /// source and a controller); one change must wake both, even when one of them is busy
    /// elsewhere at the moment of the change.
    #[tokio::test]
    async fn every_subscriber_sees_every_change() {
        let changes = Changes::default();
        let mut source = changes.subscribe();
        let mut busy = changes.subscribe();
        changes.bump();
        tokio::time::timeout(Duration::from_secs(1), source.changed())
            .await
            .expect("the source woke")
            .expect("sender alive");
        // `busy` was not waiting when the bump happened; it still sees it.
        tokio::time::timeout(Duration::from_secs(1), busy.changed())
            .await
            .expect("the busy consumer sees the change too")
            .expect("sender alive");
        // And a change is not seen twice.
        assert!(
            tokio::time::timeout(Duration::from_millis(50), busy.changed())
                .await
                .is_err()
        );
    }
}
