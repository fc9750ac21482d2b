//! The runtime configuration: a validated, indexed form of the protobuf Snapshot that the
//! request path reads without allocation. Built once per snapshot and swapped atomically.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use switchyard_proto::ResourceKind;
use switchyard_proto::v1 as pb;

use crate::error::chain;
use crate::policy::auth::{KeyEntry, KeyIndex};
use crate::policy::guard::enforce::{Guard, GuardSet};
use crate::providers::pool::PoolEntry;
use crate::route::table::{RouteEntry, RouteTable};
use crate::upstream::Clients;

/// What outlives a config version, and what each version's entries are built over: the
/// HTTP clients (their connection pools), every endpoint's health and load, the requests
/// each key and namespace has in flight, and whether this data plane runs an embedding
/// model.
#[derive(Debug, Default)]
pub struct Carried {
    pub clients: Clients,
    pub health: crate::health::Registry,
    pub in_flight: crate::policy::concurrency::InFlightRegistry,
    metrics: Option<Arc<crate::telemetry::metrics::Metrics>>,
    /// This data plane runs an embedding model (routes with a semantic cache need one).
    pub can_embed: bool,
}

impl Carried {
    /// State whose clients and endpoints count into `metrics`.
    pub fn new(metrics: Arc<crate::telemetry::metrics::Metrics>, can_embed: bool) -> Self {
        Self {
            can_embed,
            clients: Clients::new(crate::upstream::counted::Counts {
                opened: metrics.upstream_connections_opened.clone(),
                open: metrics.upstream_connections_open.clone(),
            }),
            metrics: Some(metrics),
            ..Self::default()
        }
    }

    /// What pools are built over.
    fn shared(&self) -> crate::providers::pool::Shared<'_> {
        crate::providers::pool::Shared {
            clients: &self.clients,
            health: &self.health,
            metrics: self.metrics.as_deref(),
        }
    }
}

/// Why one resource of a snapshot cannot run on this data plane (the rest of the snapshot
/// runs without it).
#[derive(Clone, Debug, thiserror::Error)]
#[error("{kind} {id}: {message}")]
pub struct InvalidResource {
    pub kind: &'static str,
    /// `namespace/name`.
    pub id: String,
    /// The generation the snapshot carries for it (0 when it lists none).
    pub generation: i64,
    pub message: String,
}

/// A route left out of the config, with the generation the snapshot carries for it.
fn invalid_route(
    generations: &HashMap<(&'static str, String), i64>,
    id: &str,
    message: String,
) -> InvalidResource {
    InvalidResource {
        kind: ROUTE,
        id: id.to_owned(),
        generation: generations
            .get(&(ROUTE, id.to_owned()))
            .copied()
            .unwrap_or(0),
        message,
    }
}

/// Everything the request path needs, indexed. Built whole from a snapshot, then moved
/// forward by deltas that rebuild only what they touch (the keys in [`KeyIndex`] shards).
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    pub version: String,
    keys: KeyIndex,
    pools: HashMap<String, Arc<PoolEntry>>,
    /// The routes as sent, by id: reindexed when a route or a pool changes.
    route_protos: Arc<BTreeMap<String, pb::Route>>,
    routes: RouteTable,
    /// Generations of pools and routes (what a NACK of a reindexed route names).
    generations: HashMap<(&'static str, String), i64>,
    /// Whether some key or route has a token limit or a budget (requests need estimates).
    counts_tokens: bool,
    /// The BPE tokenizers of the config's OpenAI models, when `counts_tokens`; empty
    /// otherwise.
    pub tokenizers: Vec<tiktoken_rs::tokenizer::Tokenizer>,
    pool_errors: BTreeMap<String, InvalidResource>,
    route_errors: Vec<InvalidResource>,
    key_errors: BTreeMap<String, InvalidResource>,
    /// The guardrails as sent, by id, and compiled (rebuilt whole when one changes: few).
    guard_protos: Arc<BTreeMap<String, pb::Guardrail>>,
    pub guards: Arc<GuardSet>,
    guard_errors: BTreeMap<String, InvalidResource>,
    /// Resources of the snapshot left out because they cannot run here.
    pub rejected: Arc<Vec<InvalidResource>>,
}

/// The kinds a snapshot carries, as `InvalidResource` and `ResourceRef` name them.
const POOL: &str = ResourceKind::ProviderPool.as_str();
const ROUTE: &str = ResourceKind::LlmRoute.as_str();
const KEY: &str = ResourceKind::VirtualKey.as_str();
const GUARDRAIL: &str = ResourceKind::Guardrail.as_str();

fn kind_static(kind: &str) -> Option<&'static str> {
    ResourceKind::parse(kind).map(ResourceKind::as_str)
}

fn ref_id(r: &pb::ResourceRef) -> String {
    format!("{}/{}", r.namespace, r.name)
}

impl RuntimeConfig {
    /// Validates and indexes a snapshot, each resource on its own: what is valid runs, and
    /// every resource left out is returned with the reason (the control plane already
    /// validated the specs; what fails here is local, such as missing AWS credentials in this
    /// data plane's environment). A route loses the backends whose pool was left out, and is
    /// left out itself when none remain.
    pub fn build(snapshot: &pb::Snapshot, carried: &Carried) -> (Self, Arc<Vec<InvalidResource>>) {
        let mut cfg = Self {
            version: snapshot.version.clone(),
            keys: KeyIndex::with_capacity(snapshot.keys.len()),
            pools: HashMap::new(),
            route_protos: Arc::default(),
            routes: RouteTable::default(),
            generations: HashMap::new(),
            counts_tokens: false,
            tokenizers: Vec::new(),
            pool_errors: BTreeMap::new(),
            route_errors: Vec::new(),
            key_errors: BTreeMap::new(),
            guard_protos: Arc::default(),
            guards: Arc::default(),
            guard_errors: BTreeMap::new(),
            rejected: Arc::default(),
        };
        cfg.merge(
            &snapshot.resources,
            &snapshot.pools,
            &snapshot.routes,
            &snapshot.keys,
            carried,
        );
        cfg.merge_guards(&snapshot.resources, &snapshot.guardrails, false);
        let rejected = cfg.rejected.clone();
        (cfg, rejected)
    }

    /// The config a delta leads to: only the changed pools are rebuilt (unchanged ones keep
    /// their connection pools), routes are reindexed only when a route or pool changed, and
    /// the key index copies only the shards it writes.
    pub fn apply_delta(
        &self,
        delta: &pb::Delta,
        version: &str,
        carried: &Carried,
    ) -> (Self, Arc<Vec<InvalidResource>>) {
        let mut cfg = self.clone();
        cfg.version = version.to_owned();
        for r in &delta.removed {
            let id = ref_id(r);
            match kind_static(&r.kind) {
                Some(POOL) => {
                    cfg.pools.remove(&id);
                    cfg.pool_errors.remove(&id);
                    cfg.generations.remove(&(POOL, id));
                }
                Some(ROUTE) => {
                    Arc::make_mut(&mut cfg.route_protos).remove(&id);
                    cfg.generations.remove(&(ROUTE, id));
                }
                Some(KEY) => {
                    cfg.keys.remove(&id);
                    cfg.key_errors.remove(&id);
                }
                Some(GUARDRAIL) => {
                    Arc::make_mut(&mut cfg.guard_protos).remove(&id);
                }
                _ => {}
            }
        }
        let routes_touched = delta
            .removed
            .iter()
            .any(|r| r.kind == POOL || r.kind == ROUTE);
        cfg.merge(
            &delta.resources,
            &delta.pools,
            &delta.routes,
            &delta.keys,
            carried,
        );
        if routes_touched && delta.pools.is_empty() && delta.routes.is_empty() {
            cfg.index_routes(carried);
            cfg.collect_rejected();
        }
        let guards_removed = delta.removed.iter().any(|r| r.kind == GUARDRAIL);
        cfg.merge_guards(&delta.resources, &delta.guardrails, guards_removed);
        let rejected = cfg.rejected.clone();
        (cfg, rejected)
    }

    /// Adds or replaces resources (a whole snapshot, or a delta's changes).
    fn merge(
        &mut self,
        refs: &[pb::ResourceRef],
        pools: &[pb::Pool],
        routes: &[pb::Route],
        keys: &[pb::VirtualKey],
        carried: &Carried,
    ) {
        let generation_of = |kind: &str, id: &str| -> i64 {
            // Small deltas: a scan; a whole snapshot lists refs for every resource, looked up
            // only for the few that fail.
            refs.iter()
                .find(|r| r.kind == kind && ref_id(r) == id)
                .map_or(0, |r| r.generation)
        };
        for r in refs {
            if let Some(kind @ (POOL | ROUTE)) = kind_static(&r.kind) {
                self.generations.insert((kind, ref_id(r)), r.generation);
            }
        }
        for p in pools {
            self.pool_errors.remove(&p.id);
            match PoolEntry::build(p, carried.shared()) {
                Ok(pool) => {
                    self.pools.insert(p.id.clone(), Arc::new(pool));
                }
                Err(e) => {
                    self.pools.remove(&p.id);
                    let generation = generation_of(POOL, &p.id);
                    let e = InvalidResource {
                        kind: POOL,
                        id: p.id.clone(),
                        generation,
                        message: chain(&e),
                    };
                    self.pool_errors.insert(p.id.clone(), e);
                }
            }
        }
        if !routes.is_empty() {
            let protos = Arc::make_mut(&mut self.route_protos);
            for r in routes {
                protos.insert(r.id.clone(), r.clone());
            }
        }
        for k in keys {
            self.key_errors.remove(&k.id);
            let mut hash = [0u8; 32];
            if hex::decode_to_slice(&k.key_sha256, &mut hash).is_err() {
                self.keys.remove(&k.id);
                let e = InvalidResource {
                    kind: KEY,
                    id: k.id.clone(),
                    generation: generation_of(KEY, &k.id),
                    message: "key_sha256 is not 64 hex characters".into(),
                };
                self.key_errors.insert(k.id.clone(), e);
                continue;
            }
            let entry = KeyEntry::from_proto(k, carried.in_flight.counters(&k.id));
            self.counts_tokens |= entry.limits.tpm > 0
                || entry.budget.is_some()
                || entry.model_limits.iter().any(|(_, l)| l.tpm > 0);
            self.keys.insert(hash, Arc::new(entry));
        }
        if !pools.is_empty() || !routes.is_empty() {
            self.index_routes(carried);
        }
        self.counts_tokens |= self.routes.iter().any(|r| r.limits.tpm > 0);
        if self.counts_tokens && (!pools.is_empty() || self.tokenizers.is_empty()) {
            self.tokenizers = tokenizers_of(self.pools.values());
        }
        self.collect_rejected();
    }

    /// Rebuilds the route entries and the model indexes from the routes as sent.
    fn index_routes(&mut self, carried: &Carried) {
        self.route_errors.clear();
        let mut routes = Vec::with_capacity(self.route_protos.len());
        let can_embed = carried.can_embed;
        for r in self.route_protos.values() {
            match RouteEntry::build(r, &self.pools, can_embed) {
                Ok(route) => routes.push(Arc::new(route)),
                Err(e) => {
                    self.route_errors
                        .push(invalid_route(&self.generations, &r.id, chain(&e)))
                }
            }
        }
        self.routes = RouteTable::new(routes);
    }

    /// Adds or replaces guardrails and recompiles the set when any changed.
    fn merge_guards(
        &mut self,
        refs: &[pb::ResourceRef],
        guardrails: &[pb::Guardrail],
        removed: bool,
    ) {
        if guardrails.is_empty() && !removed {
            return;
        }
        let protos = Arc::make_mut(&mut self.guard_protos);
        for g in guardrails {
            protos.insert(g.id.clone(), g.clone());
        }
        self.guard_errors.clear();
        let mut compiled = Vec::with_capacity(self.guard_protos.len());
        for (id, g) in self.guard_protos.iter() {
            match Guard::from_proto(g) {
                Ok(c) => compiled.push(c),
                Err(e) => {
                    let generation = refs
                        .iter()
                        .find(|r| r.kind == GUARDRAIL && ref_id(r) == *id)
                        .map_or(0, |r| r.generation);
                    self.guard_errors.insert(
                        id.clone(),
                        InvalidResource {
                            kind: GUARDRAIL,
                            id: id.clone(),
                            generation,
                            message: chain(&e),
                        },
                    );
                }
            }
        }
        self.guards = Arc::new(GuardSet::new(compiled));
        self.collect_rejected();
    }

    fn collect_rejected(&mut self) {
        let all: Vec<InvalidResource> = self
            .pool_errors
            .values()
            .chain(&self.route_errors)
            .chain(self.key_errors.values())
            .chain(self.guard_errors.values())
            .cloned()
            .collect();
        self.rejected = Arc::new(all);
    }

    /// Every pool that runs.
    pub fn pools(&self) -> impl Iterator<Item = &Arc<PoolEntry>> {
        self.pools.values()
    }

    /// The pool with this id, when it runs.
    pub fn pool(&self, id: &str) -> Option<&Arc<PoolEntry>> {
        self.pools.get(id)
    }

    /// The virtual keys, by hash.
    pub fn keys(&self) -> &KeyIndex {
        &self.keys
    }

    /// The routes, indexed by model name.
    pub fn routes(&self) -> &RouteTable {
        &self.routes
    }

    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    pub fn route_count(&self) -> usize {
        self.routes.len()
    }
}

/// The BPE tokenizers of the pools' OpenAI models.
fn tokenizers_of<'a>(
    pools: impl Iterator<Item = &'a Arc<PoolEntry>>,
) -> Vec<tiktoken_rs::tokenizer::Tokenizer> {
    let mut out = Vec::new();
    for t in pools
        .flat_map(|p| p.models.iter())
        .filter_map(|m| crate::tokens::tokenizer_of(m))
    {
        if !out.contains(&t) {
            out.push(t);
        }
    }
    out
}

#[cfg(test)]
mod tests;
