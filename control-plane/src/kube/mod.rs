//! `--source kubernetes`: the operator. Reflectors watch the four kinds and Secrets; every
//! change rebuilds the World (with only the referenced Secret values) for the compile loop.
//! The leader (one Lease) writes status, generates VirtualKey Secrets and records Events;
//! every replica serves config and publishes which data planes it serves (presence Leases).

pub mod keys;
pub mod leader;
pub mod presence;
pub mod spend;
pub mod status;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use switchyard_crds::{Guardrail, LLMRoute, ProviderPool, VirtualKey, World};
use tokio::sync::{Notify, watch};

use crate::source::{Source, SourceError};

/// Field manager for every write the operator makes.
pub const FIELD_MANAGER: &str = "switchyard-control-plane";

/// Read-only caches of every watched object.
#[derive(Clone)]
pub struct Stores {
    pub pools: Store<ProviderPool>,
    pub routes: Store<LLMRoute>,
    pub keys: Store<VirtualKey>,
    pub guardrails: Store<Guardrail>,
    pub secrets: Store<Secret>,
    /// Woken on every change to any store.
    pub changed: Arc<Notify>,
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores").finish_non_exhaustive()
    }
}

fn watch_kind<K>(api: Api<K>, changed: Arc<Notify>) -> Store<K>
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
    let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
        .default_backoff()
        .touched_objects();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(_) => changed.notify_one(),
                Err(e) => {
                    tracing::warn!(kind = %K::kind(&()), error = %e, "watch error (retrying)")
                }
            }
        }
    });
    reader
}

impl Stores {
    /// Starts the watches (cluster-wide).
    pub fn start(client: &Client) -> Self {
        let changed = Arc::new(Notify::new());
        Self {
            pools: watch_kind(Api::all(client.clone()), changed.clone()),
            routes: watch_kind(Api::all(client.clone()), changed.clone()),
            keys: watch_kind(Api::all(client.clone()), changed.clone()),
            guardrails: watch_kind(Api::all(client.clone()), changed.clone()),
            secrets: watch_kind(Api::all(client.clone()), changed.clone()),
            changed,
        }
    }

    /// Waits until every store has completed its first list.
    pub async fn ready(&self) -> Result<(), reflector::store::WriterDropped> {
        self.pools.wait_until_ready().await?;
        self.routes.wait_until_ready().await?;
        self.keys.wait_until_ready().await?;
        self.guardrails.wait_until_ready().await?;
        self.secrets.wait_until_ready().await?;
        Ok(())
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
            ..Default::default()
        };
        let mut referenced = BTreeSet::new();
        for p in &world.pools {
            let ns = p.namespace().unwrap_or_default();
            for e in &p.spec.endpoints {
                if let Some(r) = &e.credential_secret_ref {
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
            if let Some(s) = self
                .secrets
                .get(&reflector::ObjectRef::new(&name).within(&ns))
            {
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
        // Never publish before every list completed: a partial World would drop keys.
        self.stores
            .ready()
            .await
            .map_err(|_| SourceError::Unavailable("kubernetes watches"))?;
        tracing::info!("kubernetes caches synced");
        loop {
            tx.send_replace(Some(Arc::new(self.stores.world())));
            self.stores.changed.notified().await;
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
