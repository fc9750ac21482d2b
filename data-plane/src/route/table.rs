//! The routes as the request path sees them: a route's backends, fallback groups, retry and
//! cache settings and who may use it, and the table that finds a key's route for a model
//! name (its own namespace first, then the routes its `allowedRoutes` name).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use switchyard_proto::v1 as pb;

use super::retry::RetrySettings;
use crate::error::{ErrorKind, FailureClass, ProxyError};
use crate::glob;
use crate::health::Load;
use crate::health::balance::{Candidate, Strategy};
use crate::policy::auth::KeyEntry;
use crate::policy::limits::Limits;
use crate::providers::pool::PoolEntry;

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

    /// Whether a key may call a model through the route: its own allow-list admits the
    /// model, and the route serves it.
    pub fn authorize(&self, key: &KeyEntry, model: &str) -> Result<(), ProxyError> {
        if key.allows(model) && self.selects(key) {
            Ok(())
        } else {
            Err(ProxyError::new(
                ErrorKind::ModelNotAllowed,
                format!("This API key is not allowed to use model `{model}`."),
            )
            .with_param("model"))
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

/// Why a route as sent cannot run here (the config NACKs it, naming the route).
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("every backend has weight 0")]
    AllWeightZero,
    #[error("no usable backend: pool {0} did not load here")]
    PoolsMissing(String),
    #[error("the cache's embedding pool {0} did not load here")]
    EmbeddingPoolMissing(String),
    #[error(transparent)]
    Cache(#[from] crate::cache::PolicyError),
}

impl RouteEntry {
    /// A route as the request path sees it, from the route as sent and the pools that run:
    /// backends whose pool did not load are left out (and logged); `Err` when none is left,
    /// or its cache cannot run here.
    pub fn build(
        r: &pb::Route,
        pools: &HashMap<String, Arc<PoolEntry>>,
        can_embed: bool,
    ) -> Result<Self, RouteError> {
        let mut missing = Vec::new();
        let backends = backends_of(pools, &r.backends, &mut missing);
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
                backends: backends_of(pools, &g.backends, &mut missing),
            })
            .filter(|g| g.backends.iter().any(|b| b.weight > 0))
            .collect();
        if backends.iter().all(|b| b.weight == 0) {
            return Err(if missing.is_empty() {
                RouteError::AllWeightZero
            } else {
                RouteError::PoolsMissing(missing.join(", "))
            });
        }
        let cache = crate::cache::Policy::from_proto(r.cache.as_ref(), can_embed)?.map(Arc::new);
        let embedder = match r.cache.as_ref().filter(|c| !c.embedding_pool.is_empty()) {
            None => None,
            Some(c) => match pools.get(&c.embedding_pool) {
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
                None => return Err(RouteError::EmbeddingPoolMissing(c.embedding_pool.clone())),
            },
        };
        if !missing.is_empty() {
            tracing::warn!(route = %r.id, pools = ?missing, "route runs without backends whose pool did not load");
        }
        Ok(RouteEntry {
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
        })
    }
}

/// The entries of a list of backends; pools that did not load are named in `missing`.
fn backends_of<'r>(
    pools: &HashMap<String, Arc<PoolEntry>>,
    list: &'r [pb::Backend],
    missing: &mut Vec<&'r str>,
) -> Vec<BackendEntry> {
    let mut out = Vec::with_capacity(list.len());
    for b in list {
        let Some(pool) = pools.get(&b.pool) else {
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

/// The routes that run, indexed by the model names they serve.
#[derive(Clone, Debug, Default)]
pub struct RouteTable {
    /// Routes by exact model name: one per namespace that claims it.
    exact: HashMap<String, Vec<Arc<RouteEntry>>>,
    /// (model glob, route), in route id order.
    globs: Vec<(String, Arc<RouteEntry>)>,
    /// Every route, in id order.
    routes: Vec<Arc<RouteEntry>>,
}

impl RouteTable {
    /// The table of these routes (in id order).
    pub fn new(routes: Vec<Arc<RouteEntry>>) -> Self {
        let mut exact: HashMap<String, Vec<Arc<RouteEntry>>> = HashMap::new();
        let mut globs = Vec::new();
        for route in &routes {
            for m in &route.models {
                if glob::is_glob(m) {
                    globs.push((m.clone(), route.clone()));
                } else {
                    // Routes are in id order: the first claim on a name in a namespace wins
                    // (the control plane already rejects a second claim).
                    let claims = exact.entry(m.clone()).or_default();
                    if !claims.iter().any(|c| c.namespace() == route.namespace()) {
                        claims.push(route.clone());
                    }
                }
            }
        }
        Self {
            exact,
            globs,
            routes,
        }
    }

    /// The route answering a client-facing model name for a key. A key's own namespace
    /// comes first (an exact name, then a glob); then the routes of other namespaces its
    /// `allowedRoutes` name, in that order, where they admit it. A name no route the key can
    /// reach serves is unknown to it, whoever else serves it.
    pub fn route_for(&self, key: &KeyEntry, model: &str) -> Option<&Arc<RouteEntry>> {
        let ns = key.namespace();
        let exact = self.exact.get(model);
        if let Some(r) = exact.and_then(|rs| rs.iter().find(|r| r.namespace() == ns)) {
            return Some(r);
        }
        if let Some((_, r)) = self
            .globs
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
                .globs
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

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Every route, in id order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<RouteEntry>> {
        self.routes.iter()
    }
}
