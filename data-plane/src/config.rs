//! The runtime configuration: a validated, indexed form of the protobuf Snapshot that the
//! request path reads without allocation. Built once per snapshot and swapped atomically.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use switchyard_proto::v1 as pb;

use crate::error::FailureClass;
use crate::glob;
use crate::limits::{BudgetSpec, Limits, Price};
use crate::policy::guard::enforce::{Guard, GuardSet};
use crate::providers::{Auth, Provider};
use crate::route::balance::{Candidate, Strategy};
use crate::route::health::{EndpointHealth, Load, OutlierSettings};
use crate::route::retry::RetrySettings;
use crate::upstream::sigv4::{AwsCredentials, Signer};
use crate::upstream::{ClientSettings, HttpClient, Upstreams};

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

/// A virtual key as the request path sees it.
#[derive(Debug, Default)]
pub struct KeyEntry {
    pub id: String,
    pub allowed_models: Vec<String>,
    /// Unix seconds; `None` = never.
    pub expires_at: Option<i64>,
    pub disabled: bool,
    pub labels: BTreeMap<String, String>,
    /// Route ids ("namespace/name", globs) the key may use; empty = all.
    pub allowed_routes: Vec<String>,
    pub limits: Limits,
    /// (model glob, limits) from the key's `modelLimits`.
    pub model_limits: Vec<(String, Limits)>,
    pub budget: Option<BudgetSpec>,
    /// Requests of this key, and of its namespace, in flight on this data plane (shared
    /// with the entries of earlier config versions).
    pub in_flight: crate::frontdoor::admission::InFlightCounters,
}

impl KeyEntry {
    /// The key's namespace (its tenant): the part of its id before `/`.
    pub fn namespace(&self) -> &str {
        self.id.split_once('/').map_or("", |(ns, _)| ns)
    }

    /// Whether the key's own allow-list admits a model.
    pub fn allows(&self, model: &str) -> bool {
        self.allowed_models.is_empty()
            || self.allowed_models.iter().any(|p| glob::matches(p, model))
    }

    /// Whether the key's route allow-list admits a route: a route of its own namespace when
    /// the list is empty or names it, a route of another namespace only when the list names
    /// it (with that namespace written out).
    pub fn allows_route(&self, route_id: &str, own_namespace: bool) -> bool {
        if self.allowed_routes.is_empty() {
            return own_namespace;
        }
        self.allowed_routes
            .iter()
            .any(|p| glob::matches(p, route_id))
    }

    /// The key's per-model limits that apply to a model, with their index.
    pub fn model_limits_for(&self, model: &str) -> Vec<(usize, Limits)> {
        self.model_limits
            .iter()
            .enumerate()
            .filter(|(_, (g, l))| !l.is_empty() && glob::matches(g, model))
            .map(|(i, (_, l))| (i, *l))
            .collect()
    }
}

/// One endpoint of a pool: where it is and how the gateway authenticates to it.
#[derive(Debug)]
pub struct EndpointEntry {
    /// Base URL without a trailing slash.
    pub base: String,
    pub weight: u32,
    pub auth: Auth,
    /// Headers every request to it carries (`anthropic-version`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// What traffic taught about it (kept across config versions).
    pub health: Arc<EndpointHealth>,
    /// `pool#index`, for `x-switchyard-backend`.
    pub label: HeaderValue,
    /// Requests sent to it (`switchyard_backend_requests_total`).
    pub picks: prometheus_client::metrics::counter::Counter,
}

impl Candidate for EndpointEntry {
    fn weight(&self) -> u32 {
        self.weight
    }
    fn load(&self) -> &Load {
        &self.health.load
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub connect: Duration,
    pub first_byte: Duration,
    pub total: Duration,
    /// Longest silence between two chunks of a stream.
    pub idle: Duration,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MockBehaviour {
    pub latency: Duration,
    pub tokens_per_second: u32,
    pub completion_tokens: u32,
}

#[derive(Debug)]
pub struct PoolEntry {
    pub id: String,
    pub provider: Provider,
    pub endpoints: Vec<EndpointEntry>,
    pub strategy: Strategy,
    /// Round-robin position.
    pub turn: AtomicUsize,
    pub outlier: OutlierSettings,
    /// Every endpoint together (what a route balancing over pools sees).
    pub load: Arc<Load>,
    /// The pool id, for `x-switchyard-backend` when it has no endpoints (mock).
    pub label: HeaderValue,
    pub timeouts: Timeouts,
    pub models: Vec<String>,
    /// Prices by upstream model name (aliases included); `None`: listed without a price.
    pub prices: HashMap<String, Option<Price>>,
    /// The price of a model the pool does not list; `None`: unpriced.
    pub default_price: Option<Price>,
    pub client: HttpClient,
    /// Most requests in flight per endpoint (0: no cap).
    pub max_connections: u32,
}

#[derive(Debug)]
pub struct BackendEntry {
    pub pool: Arc<PoolEntry>,
    /// Upstream model override.
    pub model: Option<String>,
    pub weight: u32,
    /// Input plus output price per million tokens of `model` (0: unknown), for `Cost`.
    pub price: u64,
}

impl Candidate for BackendEntry {
    fn weight(&self) -> u32 {
        self.weight
    }
    fn load(&self) -> &Load {
        &self.pool.load
    }
    fn price(&self) -> u64 {
        self.price
    }
}

/// A group of backends entered on the failure classes it lists.
#[derive(Debug)]
pub struct FallbackEntry {
    pub on: Vec<FailureClass>,
    pub backends: Vec<BackendEntry>,
}

/// Longest model name used as a metric label (configured names are validated far shorter).
const MAX_MODEL_LABEL: usize = 256;

/// The namespaces besides its own whose keys a route admits.
#[derive(Debug, Default)]
pub enum Admits {
    /// Its own only.
    #[default]
    Own,
    Listed(Vec<String>),
    All,
}

#[derive(Debug)]
pub struct RouteEntry {
    pub id: String,
    pub models: Vec<String>,
    /// Other namespaces whose keys it admits (such a key must also name it).
    pub admits: Admits,
    pub backends: Vec<BackendEntry>,
    pub strategy: Strategy,
    /// Round-robin position.
    pub turn: AtomicUsize,
    /// `None`: one attempt per group.
    pub retry: Option<Arc<RetrySettings>>,
    pub fallbacks: Vec<FallbackEntry>,
    pub key_selector: BTreeMap<String, String>,
    pub limits: Limits,
    /// The audit trail records prompt and answer text.
    pub audit_text: bool,
    /// The response cache's policy; `None`: off.
    pub cache: Option<Arc<crate::cache::Policy>>,
    /// Where the semantic cache's embeddings come from when a pool makes them: a route of one
    /// backend, that pool and its embedding model. `None`: the built-in model.
    pub embedder: Option<Arc<RouteEntry>>,
}

impl RouteEntry {
    /// The route's namespace (its tenant).
    pub fn namespace(&self) -> &str {
        self.id.split_once('/').map_or("", |(ns, _)| ns)
    }

    /// A model name as metrics and limit counters name it: the name itself when the
    /// configuration lists it (an exact name of the route, or a model of one of its pools),
    /// else `_other` — a name the client chose must not become a series or a Redis key.
    pub fn model_label<'m>(&self, model: &'m str) -> &'m str {
        let configured = self.models.iter().any(|m| m == model)
            || self
                .backends
                .iter()
                .chain(self.fallbacks.iter().flat_map(|f| &f.backends))
                .any(|b| b.pool.models.iter().any(|m| m == model));
        if configured && model.len() <= MAX_MODEL_LABEL {
            model
        } else {
            "_other"
        }
    }

    /// Whether keys of `namespace` may use the route (their own allow-list aside).
    pub fn admits(&self, namespace: &str) -> bool {
        namespace == self.namespace()
            || match &self.admits {
                Admits::Own => false,
                Admits::Listed(l) => l.iter().any(|n| n == namespace),
                Admits::All => true,
            }
    }

    /// Whether the route serves a key: it admits the key's namespace, the key's route
    /// allow-list names it (or, in the route's own namespace, is empty), and its selector
    /// matches the key's labels.
    pub fn selects(&self, key: &KeyEntry) -> bool {
        let ns = key.namespace();
        self.admits(ns)
            && key.allows_route(&self.id, ns == self.namespace())
            && self
                .key_selector
                .iter()
                .all(|(k, v)| key.labels.get(k) == Some(v))
    }
}

/// Everything the request path needs, indexed. Built whole from a snapshot, then moved
/// forward by deltas that rebuild only what they touch (see [`index`]).
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    pub version: String,
    keys: index::KeyIndex,
    pools: HashMap<String, Arc<PoolEntry>>,
    /// The routes as sent, by id: reindexed when a route or a pool changes.
    route_protos: Arc<BTreeMap<String, pb::Route>>,
    /// Routes by exact model name: one per namespace that claims it.
    exact_routes: HashMap<String, Vec<Arc<RouteEntry>>>,
    glob_routes: Vec<(String, Arc<RouteEntry>)>,
    routes: Vec<Arc<RouteEntry>>,
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
const POOL: &str = "ProviderPool";
const ROUTE: &str = "LLMRoute";
const KEY: &str = "VirtualKey";
const GUARDRAIL: &str = "Guardrail";

fn kind_static(kind: &str) -> Option<&'static str> {
    [POOL, ROUTE, KEY, GUARDRAIL]
        .into_iter()
        .find(|k| *k == kind)
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
    pub fn build(
        snapshot: &pb::Snapshot,
        upstreams: &Upstreams,
    ) -> (Self, Arc<Vec<InvalidResource>>) {
        let mut cfg = Self {
            version: snapshot.version.clone(),
            keys: index::KeyIndex::with_capacity(snapshot.keys.len()),
            pools: HashMap::new(),
            route_protos: Arc::default(),
            exact_routes: HashMap::new(),
            glob_routes: Vec::new(),
            routes: Vec::new(),
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
            upstreams,
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
        upstreams: &Upstreams,
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
            upstreams,
        );
        if routes_touched && delta.pools.is_empty() && delta.routes.is_empty() {
            cfg.index_routes(upstreams);
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
        upstreams: &Upstreams,
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
            match build_pool(p, upstreams) {
                Ok(pool) => {
                    self.pools.insert(p.id.clone(), Arc::new(pool));
                }
                Err(message) => {
                    self.pools.remove(&p.id);
                    let generation = generation_of(POOL, &p.id);
                    let e = InvalidResource {
                        kind: POOL,
                        id: p.id.clone(),
                        generation,
                        message,
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
            let entry = key_entry(k, upstreams.in_flight.counters(&k.id));
            self.counts_tokens |= entry.limits.tpm > 0
                || entry.budget.is_some()
                || entry.model_limits.iter().any(|(_, l)| l.tpm > 0);
            self.keys.insert(hash, Arc::new(entry));
        }
        if !pools.is_empty() || !routes.is_empty() {
            self.index_routes(upstreams);
        }
        self.counts_tokens |= self.routes.iter().any(|r| r.limits.tpm > 0);
        if self.counts_tokens && (!pools.is_empty() || self.tokenizers.is_empty()) {
            self.tokenizers = tokenizers_of(self.pools.values());
        }
        self.collect_rejected();
    }

    /// Rebuilds the route entries and the model indexes from the routes as sent.
    fn index_routes(&mut self, upstreams: &Upstreams) {
        self.route_errors.clear();
        let mut routes = Vec::with_capacity(self.route_protos.len());
        for r in self.route_protos.values() {
            let mut missing = Vec::new();
            let backends = self.backends(&r.backends, &mut missing);
            let fallbacks: Vec<FallbackEntry> = r
                .fallbacks
                .iter()
                .map(|g| FallbackEntry {
                    on: g
                        .on
                        .iter()
                        .filter_map(|c| pb::FailureClass::try_from(*c).ok())
                        .filter_map(FailureClass::from_proto)
                        .collect(),
                    backends: self.backends(&g.backends, &mut missing),
                })
                .filter(|g| g.backends.iter().any(|b| b.weight > 0))
                .collect();
            if backends.iter().all(|b| b.weight == 0) {
                let message = if missing.is_empty() {
                    "every backend has weight 0".to_owned()
                } else {
                    format!(
                        "no usable backend: pool {} did not load here",
                        missing.join(", ")
                    )
                };
                self.route_errors
                    .push(invalid_route(&self.generations, &r.id, message));
                continue;
            }
            let cache = match crate::cache::Policy::from_proto(
                r.cache.as_ref(),
                upstreams
                    .can_embed
                    .load(std::sync::atomic::Ordering::Relaxed),
            ) {
                Ok(c) => c.map(Arc::new),
                Err(message) => {
                    self.route_errors
                        .push(invalid_route(&self.generations, &r.id, message));
                    continue;
                }
            };
            let embedder = match r.cache.as_ref().filter(|c| !c.embedding_pool.is_empty()) {
                None => None,
                Some(c) => match self.pools.get(&c.embedding_pool) {
                    Some(pool) => Some(Arc::new(RouteEntry {
                        id: format!("{}#embedding", r.id),
                        models: Vec::new(),
                        backends: vec![BackendEntry {
                            pool: pool.clone(),
                            model: Some(c.embedding_model.clone()),
                            weight: 1,
                            price: 0,
                        }],
                        strategy: Strategy::from_proto(pb::LoadBalancing::WeightedRandom),
                        turn: AtomicUsize::new(0),
                        retry: None,
                        fallbacks: Vec::new(),
                        key_selector: BTreeMap::new(),
                        admits: Admits::Own,
                        limits: Limits::default(),
                        audit_text: false,
                        cache: None,
                        embedder: None,
                    })),
                    None => {
                        let message = format!(
                            "the cache's embedding pool {} did not load here",
                            c.embedding_pool
                        );
                        self.route_errors
                            .push(invalid_route(&self.generations, &r.id, message));
                        continue;
                    }
                },
            };
            if !missing.is_empty() {
                tracing::warn!(route = %r.id, pools = ?missing, "route runs without backends whose pool did not load");
            }
            routes.push(Arc::new(RouteEntry {
                id: r.id.clone(),
                models: r.models.clone(),
                backends,
                strategy: Strategy::from_proto(r.load_balancing()),
                turn: AtomicUsize::new(0),
                retry: RetrySettings::from_proto(r.retry.as_ref()),
                fallbacks,
                key_selector: r.key_selector.clone(),
                admits: if r.key_namespaces_all {
                    Admits::All
                } else if r.key_namespaces.is_empty() {
                    Admits::Own
                } else {
                    Admits::Listed(r.key_namespaces.clone())
                },
                limits: Limits::from_proto(r.limits),
                audit_text: r.audit_text,
                cache,
                embedder,
            }));
        }
        let mut exact_routes: HashMap<String, Vec<Arc<RouteEntry>>> = HashMap::new();
        let mut glob_routes = Vec::new();
        for route in &routes {
            for m in &route.models {
                if glob::is_glob(m) {
                    glob_routes.push((m.clone(), route.clone()));
                } else {
                    // Routes are in id order: the first claim on a name in a namespace wins
                    // (the control plane already rejects a second claim).
                    let claims = exact_routes.entry(m.clone()).or_default();
                    if !claims.iter().any(|c| c.namespace() == route.namespace()) {
                        claims.push(route.clone());
                    }
                }
            }
        }
        self.routes = routes;
        self.exact_routes = exact_routes;
        self.glob_routes = glob_routes;
    }

    /// The entries of a list of backends; pools that did not load are named in `missing`.
    fn backends<'r>(
        &self,
        list: &'r [pb::Backend],
        missing: &mut Vec<&'r str>,
    ) -> Vec<BackendEntry> {
        let mut out = Vec::with_capacity(list.len());
        for b in list {
            let Some(pool) = self.pools.get(&b.pool) else {
                missing.push(b.pool.as_str());
                continue;
            };
            let model = (!b.model.is_empty()).then(|| b.model.clone());
            let price = model
                .as_ref()
                .and_then(|m| pool.price_of(m))
                .map_or(0, |p| p.input.saturating_add(p.output));
            out.push(BackendEntry {
                pool: pool.clone(),
                model,
                weight: b.weight,
                price,
            });
        }
        out
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
                Err(message) => {
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
                            message,
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

    pub fn key(&self, hash: &[u8; 32]) -> Option<&Arc<KeyEntry>> {
        self.keys.get(hash)
    }

    /// The route answering a client-facing model name for a key. A key's own namespace
    /// comes first (an exact name, then a glob); then the routes of other namespaces its
    /// `allowedRoutes` name, in that order, where they admit it. A name no route the key can
    /// reach serves is unknown to it, whoever else serves it.
    pub fn route_for(&self, key: &KeyEntry, model: &str) -> Option<&Arc<RouteEntry>> {
        let ns = key.namespace();
        let exact = self.exact_routes.get(model);
        if let Some(r) = exact.and_then(|rs| rs.iter().find(|r| r.namespace() == ns)) {
            return Some(r);
        }
        if let Some((_, r)) = self
            .glob_routes
            .iter()
            .find(|(p, r)| r.namespace() == ns && glob::matches(p, model))
        {
            return Some(r);
        }
        for entry in &key.allowed_routes {
            let Some((theirs, _)) = entry.split_once('/') else {
                continue;
            };
            if theirs == ns {
                continue;
            }
            let reach = |r: &RouteEntry| {
                r.namespace() == theirs && glob::matches(entry, &r.id) && r.admits(ns)
            };
            if let Some(r) = exact.and_then(|rs| rs.iter().find(|r| reach(r))) {
                return Some(r);
            }
            if let Some((_, r)) = self
                .glob_routes
                .iter()
                .find(|(p, r)| reach(r) && glob::matches(p, model))
            {
                return Some(r);
            }
        }
        None
    }

    /// Model names a key may use, for `GET /v1/models`: exact route names, and for glob
    /// routes the pool models the glob admits, each where it resolves for the key to the
    /// route that lists it.
    pub fn models_for(&self, key: &KeyEntry) -> Vec<String> {
        let mut out = std::collections::BTreeSet::new();
        let serves = |m: &str, route: &Arc<RouteEntry>| {
            self.route_for(key, m)
                .is_some_and(|r| Arc::ptr_eq(r, route))
                && key.allows(m)
        };
        for route in self.routes.iter().filter(|r| r.selects(key)) {
            for m in &route.models {
                if !glob::is_glob(m) {
                    if serves(m, route) {
                        out.insert(m.clone());
                    }
                    continue;
                }
                for b in &route.backends {
                    for pm in &b.pool.models {
                        if glob::matches(m, pm) && serves(pm, route) {
                            out.insert(pm.clone());
                        }
                    }
                }
            }
        }
        out.into_iter().collect()
    }

    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    pub fn route_count(&self) -> usize {
        self.routes.len()
    }
}

/// A key as the request path sees it, from the key as sent.
fn key_entry(
    k: &pb::VirtualKey,
    in_flight: crate::frontdoor::admission::InFlightCounters,
) -> KeyEntry {
    KeyEntry {
        id: k.id.clone(),
        allowed_models: k.allowed_models.clone(),
        expires_at: (k.expires_at_unix > 0).then_some(k.expires_at_unix),
        disabled: k.disabled,
        labels: k.labels.clone(),
        allowed_routes: k.allowed_routes.clone(),
        limits: Limits::from_proto(k.limits),
        model_limits: k
            .model_limits
            .iter()
            .map(|m| (m.model.clone(), Limits::from_proto(m.limits)))
            .collect(),
        budget: BudgetSpec::from_proto(k.budget),
        in_flight,
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

fn provider_of(p: &pb::Pool) -> Result<Provider, String> {
    let mock = p.mock.unwrap_or_default();
    Ok(match p.provider() {
        pb::ProviderKind::Openai => Provider::OpenAi,
        pb::ProviderKind::AzureOpenai => Provider::Azure {
            api_version: p.api_version.clone(),
        },
        pb::ProviderKind::OpenaiCompatible => Provider::Compat,
        pb::ProviderKind::Anthropic => Provider::Anthropic,
        pb::ProviderKind::Gemini => Provider::Gemini {
            api_version: if p.api_version.is_empty() {
                "v1beta".into()
            } else {
                p.api_version.clone()
            },
        },
        pb::ProviderKind::Bedrock => {
            if p.region.is_empty() {
                return Err("a bedrock pool needs a region".into());
            }
            Provider::Bedrock {
                region: p.region.clone(),
            }
        }
        pb::ProviderKind::Mock => Provider::Mock(MockBehaviour {
            latency: Duration::from_millis(mock.latency_ms),
            tokens_per_second: mock.tokens_per_second,
            completion_tokens: mock.completion_tokens.max(1),
        }),
        pb::ProviderKind::Unspecified => {
            return Err("the pool names no provider".into());
        }
    })
}

/// How an endpoint of a provider authenticates, and the headers it always sends.
fn endpoint_auth(
    provider: &Provider,
    e: &pb::Endpoint,
) -> Result<(Auth, Vec<(HeaderName, HeaderValue)>), String> {
    let secret = |v: &str| {
        let mut v = HeaderValue::from_str(v)
            .map_err(|_| "credential contains invalid characters".to_owned())?;
        v.set_sensitive(true);
        Ok::<_, String>(v)
    };
    let header = |name: &'static str, value: HeaderValue| Auth::Header {
        name: HeaderName::from_static(name),
        value,
    };
    let none_if_empty = |auth: Auth| {
        if e.credential.is_empty() {
            Auth::None
        } else {
            auth
        }
    };
    Ok(match provider {
        Provider::OpenAi | Provider::Compat => (
            none_if_empty(Auth::Header {
                name: http::header::AUTHORIZATION,
                value: secret(&format!("Bearer {}", e.credential))?,
            }),
            Vec::new(),
        ),
        Provider::Azure { .. } => (
            none_if_empty(header("api-key", secret(&e.credential)?)),
            Vec::new(),
        ),
        Provider::Anthropic => (
            none_if_empty(header("x-api-key", secret(&e.credential)?)),
            vec![(
                HeaderName::from_static("anthropic-version"),
                HeaderValue::from_static(crate::dialect::anthropic::API_VERSION),
            )],
        ),
        Provider::Gemini { .. } => (
            none_if_empty(header("x-goog-api-key", secret(&e.credential)?)),
            Vec::new(),
        ),
        Provider::Bedrock { region } => {
            let credentials = match &e.aws {
                Some(a) => AwsCredentials {
                    access_key_id: a.access_key_id.clone(),
                    secret_access_key: a.secret_access_key.clone(),
                    session_token: (!a.session_token.is_empty()).then(|| a.session_token.clone()),
                },
                None => AwsCredentials::from_env().ok_or_else(|| {
                    "no AWS credentials: set awsCredentialsSecretRef, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY on the data plane".to_owned()
                })?,
            };
            (
                Auth::SigV4(Arc::new(Signer {
                    region: region.clone(),
                    service: "bedrock",
                    credentials,
                })),
                Vec::new(),
            )
        }
        Provider::Mock(_) => (Auth::None, Vec::new()),
    })
}

fn price_of(m: &pb::Model) -> Price {
    Price {
        input: m.input_price_per_million_micros,
        output: m.output_price_per_million_micros,
        cache_read: m.cache_read_price_per_million_micros,
        cache_write: m.cache_write_price_per_million_micros,
    }
}

impl PoolEntry {
    /// The price of an upstream model: its own (or its alias's), else the pool's default;
    /// `None`: the pool has no price for it.
    pub fn price_of(&self, model: &str) -> Option<Price> {
        match self.prices.get(model) {
            Some(listed) => *listed,
            None => self.default_price,
        }
    }
}

/// A header value of a resource id (ids are DNS names and `/`).
fn label(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

fn build_pool(p: &pb::Pool, upstreams: &Upstreams) -> Result<PoolEntry, String> {
    let provider = provider_of(p)?;
    let mut endpoints = Vec::new();
    for e in &p.endpoints {
        let uri: http::Uri = e
            .url
            .parse()
            .map_err(|_| format!("endpoint URL {:?} is invalid", e.url))?;
        if uri.host().is_none() {
            return Err(format!("endpoint URL {:?} has no host", e.url));
        }
        let (auth, headers) = endpoint_auth(&provider, e)?;
        let base = e.url.trim_end_matches('/').to_owned();
        let index = endpoints.len();
        endpoints.push(EndpointEntry {
            health: upstreams.health.endpoint(&p.id, &base),
            label: label(&format!("{}#{index}", p.id)),
            picks: upstreams.picks(&p.id, index),
            base,
            weight: e.weight,
            auth,
            headers,
        });
    }
    if endpoints.is_empty() && !matches!(provider, Provider::Mock(_)) {
        return Err("no endpoints".into());
    }
    let t = p.timeouts.unwrap_or_default();
    let ms = |v: u64, d: Duration| if v == 0 { d } else { Duration::from_millis(v) };
    let timeouts = Timeouts {
        connect: ms(t.connect_ms, Duration::from_secs(5)),
        first_byte: ms(t.first_byte_ms, Duration::from_secs(60)),
        total: ms(t.total_ms, Duration::from_secs(600)),
        idle: ms(t.idle_ms, Duration::from_secs(60)),
    };
    let outlier = match p.outlier_detection {
        Some(o) => OutlierSettings {
            consecutive_failures: o.consecutive_failures,
            consecutive_rate_limits: o.consecutive_rate_limits,
            base_ejection: Duration::from_millis(o.base_ejection_ms),
            max_ejection: Duration::from_millis(o.max_ejection_ms.max(o.base_ejection_ms)),
            max_ejected_percent: o.max_ejected_percent.min(100),
        },
        None => OutlierSettings::default(),
    };
    let defaults = ClientSettings::default();
    let client = upstreams.client(ClientSettings {
        connect_timeout: timeouts.connect,
        max_idle_per_host: p
            .connection_pool
            .map_or(defaults.max_idle_per_host, |c| c.max_idle as usize),
        idle_timeout: p
            .connection_pool
            .filter(|c| c.idle_timeout_ms > 0)
            .map_or(defaults.idle_timeout, |c| {
                Duration::from_millis(c.idle_timeout_ms)
            }),
    })?;
    let checks = crate::route::check::CheckSettings::from_proto(p.health_check.as_ref());
    for (i, e) in endpoints.iter().enumerate() {
        crate::route::check::ensure(&p.id, i, e, checks.as_ref(), &client, upstreams.metrics());
    }
    Ok(PoolEntry {
        id: p.id.clone(),
        provider,
        endpoints,
        strategy: Strategy::from_proto(p.load_balancing()),
        turn: AtomicUsize::new(0),
        outlier,
        load: upstreams.health.pool(&p.id),
        label: label(&p.id),
        timeouts,
        models: p.models.iter().map(|m| m.name.clone()).collect(),
        prices: p
            .models
            .iter()
            .flat_map(|m| {
                let price = m.priced.then(|| price_of(m));
                std::iter::once(&m.name)
                    .chain(&m.aliases)
                    .map(move |n| (n.clone(), price))
            })
            .collect(),
        default_price: p.default_price.as_ref().map(price_of),
        client,
        max_connections: p.connection_pool.map_or(0, |c| c.max_connections),
    })
}

mod index;

#[cfg(test)]
mod tests;
