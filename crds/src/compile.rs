//! `compile`: resources + Secret values -> a versioned protobuf Snapshot and per-resource
//! diagnostics. Pure and deterministic: the same World always gives the same version.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;
use switchyard_proto::ResourceKind;

use kube::{Resource, ResourceExt};
use prost::Message;
use sha2::{Digest, Sha256};
use switchyard_proto::v1 as pb;

use crate::common::condition;
use crate::validate::{self, InvalidField};
use crate::world::{DEFAULT_NAMESPACE, World};
use crate::{Budget, BudgetAction, Guardrail, GuardrailPhase, PiiAction, RateLimits, VirtualKey};

/// Defaults for pool timeouts.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_TOTAL_TIMEOUT: Duration = Duration::from_secs(600);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_MOCK_COMPLETION_TOKENS: u32 = 16;

/// Identifies one resource in diagnostics and status.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceKey {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub generation: i64,
}

impl ResourceKey {
    fn of<K: Resource<DynamicType = ()>>(obj: &K) -> Self {
        Self {
            kind: kind_name::<K>(),
            namespace: obj
                .namespace()
                .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned()),
            name: obj.name_any(),
            generation: obj.meta().generation.unwrap_or(0),
        }
    }

    /// `namespace/name`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    pub fn to_proto(&self) -> pb::ResourceRef {
        pb::ResourceRef {
            kind: self.kind.to_owned(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            generation: self.generation,
        }
    }
}

impl std::fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

fn kind_name<K: Resource<DynamicType = ()>>() -> &'static str {
    switchyard_proto::ResourceKind::parse(&K::kind(&())).map_or("Unknown", |k| k.as_str())
}

/// Why a resource was left out of the snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub resource: ResourceKey,
    /// The condition that is False: `Accepted` or `ResolvedRefs`.
    pub condition: &'static str,
    /// CamelCase reason.
    pub reason: &'static str,
    pub message: String,
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} rejected ({}): {}",
            self.resource, self.reason, self.message
        )
    }
}

/// Result of `compile`.
#[derive(Clone, Debug)]
pub struct Compiled {
    /// Every list sorted by id.
    pub snapshot: pb::Snapshot,
    /// A content hash of every resource (its compiled form and generation), parallel to the
    /// snapshot's lists: what the version and deltas are computed from.
    pub hashes: Hashes,
    /// `snapshot` protobuf-encoded, on first use, for every data plane to share.
    encoded: std::sync::OnceLock<prost::bytes::Bytes>,
    pub diagnostics: Vec<Diagnostic>,
}

/// Per-resource content hashes, index for index with the snapshot's lists.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hashes {
    pub pools: Vec<u64>,
    pub routes: Vec<u64>,
    pub keys: Vec<u64>,
    pub guardrails: Vec<u64>,
}

impl Compiled {
    /// The snapshot, protobuf-encoded (once; shared by every full push).
    pub fn encoded(&self) -> prost::bytes::Bytes {
        self.encoded
            .get_or_init(|| prost::bytes::Bytes::from(self.snapshot.encode_to_vec()))
            .clone()
    }

    /// True when the resource made it into the snapshot.
    pub fn accepted(&self, key: &ResourceKey) -> bool {
        !self.diagnostics.iter().any(|d| &d.resource == key)
    }
}

#[derive(Clone)]
struct Reject {
    condition: &'static str,
    reason: &'static str,
    message: String,
}

impl Reject {
    fn invalid(e: InvalidField) -> Self {
        Self {
            condition: condition::ACCEPTED,
            reason: "Invalid",
            message: e.to_string(),
        }
    }
    fn refs(reason: &'static str, message: String) -> Self {
        Self {
            condition: condition::RESOLVED_REFS,
            reason,
            message,
        }
    }
    fn spec(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            condition: condition::ACCEPTED,
            reason,
            message: message.into(),
        }
    }
}

impl From<InvalidField> for Reject {
    fn from(e: InvalidField) -> Self {
        Self::invalid(e)
    }
}

/// Compiles the world. Invalid resources are left out with a diagnostic; the rest compiles.
pub fn compile(world: &World) -> Compiled {
    Compiler::default().compile(world)
}

/// A VirtualKey compiled earlier: reused while its `resourceVersion` and key value stay the
/// same (the SHA-256 and validation of each key dominate a compile of 100k keys).
#[derive(Clone)]
struct CachedKey {
    resource_version: String,
    value: String,
    /// The compiled key, the raw SHA-256 of the key, and the resource hash.
    result: Result<(pb::VirtualKey, [u8; 32], u64), Reject>,
}

/// Compiles World after World, reusing what did not change.
#[derive(Default)]
pub struct Compiler {
    keys: HashMap<String, CachedKey>,
    /// Where data planes may be sent (default: anywhere).
    egress: crate::egress::Egress,
}

impl std::fmt::Debug for Compiler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiler")
            .field("cached_keys", &self.keys.len())
            .finish()
    }
}

impl Compiler {
    /// A compiler that refuses destinations the egress restriction forbids.
    pub fn with_egress(egress: crate::egress::Egress) -> Self {
        Self {
            egress,
            ..Self::default()
        }
    }

    /// One VirtualKey, from the cache when its resourceVersion and key value are unchanged.
    /// Objects without a resourceVersion (built in code) are always compiled.
    fn key(
        &mut self,
        vk: &VirtualKey,
        key: &ResourceKey,
        world: &World,
    ) -> Result<(pb::VirtualKey, [u8; 32], u64), Reject> {
        let rv = vk.meta().resource_version.as_deref();
        let value = world
            .secret(&key.namespace, &vk.spec.secret_ref.name)
            .and_then(|s| s.get(vk.spec.secret_ref.data_key()))
            .map_or("", String::as_str);
        let id = key.id();
        if let (Some(rv), Some(c)) = (rv, self.keys.get(&id))
            && c.resource_version == rv
            && c.value == value
        {
            return c.result.clone();
        }
        let result = compile_key(vk, key, world).map(|k| {
            let mut raw = [0u8; 32];
            let _ = hex::decode_to_slice(&k.key_sha256, &mut raw);
            let mut buf = Vec::new();
            encode_into(&k, &mut buf);
            let hash = resource_hash(&buf, key.generation);
            (k, raw, hash)
        });
        if let Some(rv) = rv {
            let cached = CachedKey {
                resource_version: rv.to_owned(),
                value: value.to_owned(),
                result: result.clone(),
            };
            self.keys.insert(id, cached);
        }
        result
    }

    /// Compiles the world (see [`compile`]).
    pub fn compile(&mut self, world: &World) -> Compiled {
        let mut diagnostics = Vec::new();
        let mut resources = Vec::new();

        for e in &world.load_errors {
            diagnostics.push(Diagnostic {
                resource: ResourceKey {
                    kind: "File",
                    namespace: String::new(),
                    name: format!("{}#{}", e.source_name, e.index),
                    generation: 0,
                },
                condition: condition::ACCEPTED,
                reason: "ParseError",
                message: e.message.clone(),
            });
        }

        let mut admit =
            |key: ResourceKey, result: Result<(), Reject>, diagnostics: &mut Vec<Diagnostic>| {
                match result {
                    Ok(()) => {
                        resources.push(key);
                        true
                    }
                    Err(r) => {
                        diagnostics.push(Diagnostic {
                            resource: key,
                            condition: r.condition,
                            reason: r.reason,
                            message: r.message,
                        });
                        false
                    }
                }
            };

        // Resources of namespaces this control plane does not serve are left out first.
        let unserved = |key: &ResourceKey| {
            world
                .served
                .as_ref()
                .is_some_and(|s| !s.contains(&key.namespace))
        };
        let not_served = || {
            Reject::spec(
                "NamespaceNotServed",
                "this namespace is not one the control plane serves (--watch-namespaces)",
            )
        };
        let mut pools = Vec::new();
        for pool in sorted(&world.pools) {
            let key = ResourceKey::of(pool);
            if unserved(&key) {
                admit(key, Err(not_served()), &mut diagnostics);
                continue;
            }
            match compile_pool(pool, &key, world, &self.egress) {
                Ok(p) => {
                    admit(key, Ok(()), &mut diagnostics);
                    pools.push(p);
                }
                Err(r) => {
                    admit(key, Err(r), &mut diagnostics);
                }
            }
        }
        let pool_index: BTreeMap<&str, &pb::Pool> =
            pools.iter().map(|p| (p.id.as_str(), p)).collect();
        let rejected_pools: BTreeSet<String> = world
            .pools
            .iter()
            .map(|p| ResourceKey::of(p).id())
            .filter(|id| !pool_index.contains_key(id.as_str()))
            .collect();

        // Oldest first, so that a resource already in service keeps what it claims (model names,
        // keys) against a newer one; the snapshot itself is ordered by id. Claims are per
        // namespace (see `tenancy`).
        let mut routes = Vec::new();
        let mut claims = tenancy::Claims::default();
        for route in by_age(&world.routes) {
            let key = ResourceKey::of(route);
            if unserved(&key) {
                admit(key, Err(not_served()), &mut diagnostics);
                continue;
            }
            let compiled =
                compile_route(route, &key, &pool_index, &rejected_pools).and_then(|mut r| {
                    let (listed, all) = tenancy::admitted(
                        "spec.keyNamespaces",
                        route.spec.key_namespaces.as_ref(),
                        &key.namespace,
                        &world.namespaces,
                    )?;
                    tenancy::admit(&mut r, listed, all);
                    claims.check(&key, &route.spec.models)?;
                    Ok(r)
                });
            match compiled {
                Ok(r) => {
                    claims.claim(&key, &route.spec.models);
                    admit(key, Ok(()), &mut diagnostics);
                    routes.push(r);
                }
                Err(r) => {
                    admit(key, Err(r), &mut diagnostics);
                }
            }
        }
        routes.sort_by(|a, b| a.id.cmp(&b.id));

        let mut keys: Vec<(pb::VirtualKey, u64)> = Vec::with_capacity(world.keys.len());
        // Key values already claimed: by which key, created when. The older key keeps a
        // value; two namespaces claiming one at the same time (creation times have a second's
        // resolution) both lose it, so a copy made in the same second never wins it.
        let mut seen_hashes: HashMap<
            [u8; 32],
            (ResourceKey, Option<k8s_openapi::jiff::Timestamp>),
        > = HashMap::with_capacity(world.keys.len());
        let mut contested: Vec<ResourceKey> = Vec::new();
        for vk in by_age(&world.keys) {
            let key = ResourceKey::of(vk);
            if unserved(&key) {
                admit(key, Err(not_served()), &mut diagnostics);
                continue;
            }
            let created = vk.meta().creation_timestamp.as_ref().map(|t| t.0);
            let compiled =
                self.key(vk, &key, world)
                    .and_then(|(k, raw, hash)| match seen_hashes.entry(raw) {
                        std::collections::hash_map::Entry::Vacant(v) => {
                            v.insert((key.clone(), created));
                            Ok((k, hash))
                        }
                        std::collections::hash_map::Entry::Occupied(o) => {
                            let (older, when) = o.get();
                            if older.namespace != key.namespace && *when == created {
                                contested.push(older.clone());
                                Err(tenancy::contested_key())
                            } else {
                                Err(tenancy::duplicate_key(&key, &older.id()))
                            }
                        }
                    });
            match compiled {
                Ok(k) => {
                    admit(key, Ok(()), &mut diagnostics);
                    keys.push(k);
                }
                Err(r) => {
                    admit(key, Err(r), &mut diagnostics);
                }
            }
        }
        for c in &contested {
            let id = c.id();
            if keys.iter().any(|(k, _)| k.id == id) {
                keys.retain(|(k, _)| k.id != id);
                let r = tenancy::contested_key();
                diagnostics.push(Diagnostic {
                    resource: c.clone(),
                    condition: r.condition,
                    reason: r.reason,
                    message: r.message,
                });
            }
        }
        keys.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        let (keys, key_hashes): (Vec<pb::VirtualKey>, Vec<u64>) = keys.into_iter().unzip();
        // Keys that left the world leave the cache.
        if self.keys.len() > world.keys.len() {
            let live: std::collections::HashSet<&str> =
                keys.iter().map(|k| k.id.as_str()).collect();
            self.keys.retain(|id, _| live.contains(id.as_str()));
        }

        let mut guardrails = Vec::new();
        for g in sorted(&world.guardrails) {
            let key = ResourceKey::of(g);
            if unserved(&key) {
                admit(key, Err(not_served()), &mut diagnostics);
                continue;
            }
            match compile_guardrail(g, &key, world, &self.egress) {
                Ok(c) => {
                    admit(key, Ok(()), &mut diagnostics);
                    guardrails.push(c);
                }
                Err(r) => {
                    admit(key, Err(r), &mut diagnostics);
                }
            }
        }

        resources.retain(|r| !contested.contains(r));
        resources.sort();
        // Every list by id: deltas merge two snapshots list by list.
        pools.sort_by(|a, b| a.id.cmp(&b.id));
        guardrails.sort_by(|a, b| a.id.cmp(&b.id));
        let mut snapshot = pb::Snapshot {
            version: String::new(),
            pools,
            routes,
            keys,
            guardrails,
            resources: resources.iter().map(ResourceKey::to_proto).collect(),
        };
        let hashes = Hashes {
            keys: key_hashes,
            ..hashes(&snapshot)
        };
        snapshot.version = version_of(&snapshot, &hashes);
        Compiled {
            snapshot,
            hashes,
            encoded: std::sync::OnceLock::new(),
            diagnostics,
        }
    }
}

/// A resource's content hash: its protobuf encoding and its generation.
fn resource_hash(encoded: &[u8], generation: i64) -> u64 {
    let mut h = Sha256::new();
    h.update(generation.to_le_bytes());
    h.update(encoded);
    let d = h.finalize();
    u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

/// Appends a message's encoding (a `Vec` never runs out of room).
fn encode_into(m: &impl Message, buf: &mut Vec<u8>) {
    let _infallible = m.encode(buf);
}

/// Hashes every pool, route and guardrail of a snapshot (generations from its `resources`).
fn hashes(s: &pb::Snapshot) -> Hashes {
    // Keys are hashed as they compile: only the other kinds' generations are needed here.
    let generation: std::collections::HashMap<(&str, String), i64> = s
        .resources
        .iter()
        .filter(|r| r.kind != ResourceKind::VirtualKey.as_str())
        .map(|r| {
            (
                (r.kind.as_str(), format!("{}/{}", r.namespace, r.name)),
                r.generation,
            )
        })
        .collect();
    let mut buf = Vec::new();
    let mut hash = |kind: &'static str, id: &str, m: &dyn Fn(&mut Vec<u8>)| {
        buf.clear();
        m(&mut buf);
        let g = generation.get(&(kind, id.to_owned())).copied().unwrap_or(0);
        resource_hash(&buf, g)
    };
    Hashes {
        pools: s
            .pools
            .iter()
            .map(|p| {
                hash(ResourceKind::ProviderPool.as_str(), &p.id, &|b| {
                    encode_into(p, b)
                })
            })
            .collect(),
        routes: s
            .routes
            .iter()
            .map(|r| {
                hash(ResourceKind::LlmRoute.as_str(), &r.id, &|b| {
                    encode_into(r, b)
                })
            })
            .collect(),
        // Keys are hashed as they compile (and cached with them).
        keys: Vec::new(),
        guardrails: s
            .guardrails
            .iter()
            .map(|g| {
                hash(ResourceKind::Guardrail.as_str(), &g.id, &|b| {
                    encode_into(g, b)
                })
            })
            .collect(),
    }
}

/// The version: a hash of the sorted (kind, id, resource hash) triples. Identical input gives
/// an identical version, on every replica.
fn version_of(s: &pb::Snapshot, h: &Hashes) -> String {
    let mut d = Sha256::new();
    let mut feed = |kind: &str, ids: &mut dyn Iterator<Item = &str>, hashes: &[u64]| {
        for (id, hash) in ids.zip(hashes) {
            d.update(kind.as_bytes());
            d.update([0]);
            d.update(id.as_bytes());
            d.update([0]);
            d.update(hash.to_le_bytes());
        }
    };
    feed(
        ResourceKind::ProviderPool.as_str(),
        &mut s.pools.iter().map(|p| p.id.as_str()),
        &h.pools,
    );
    feed(
        ResourceKind::LlmRoute.as_str(),
        &mut s.routes.iter().map(|r| r.id.as_str()),
        &h.routes,
    );
    feed(
        ResourceKind::VirtualKey.as_str(),
        &mut s.keys.iter().map(|k| k.id.as_str()),
        &h.keys,
    );
    feed(
        ResourceKind::Guardrail.as_str(),
        &mut s.guardrails.iter().map(|g| g.id.as_str()),
        &h.guardrails,
    );
    hex_lower(&d.finalize()[..8])
}

/// SHA-256 of a virtual key, hex: what data planes look keys up by.
pub fn key_hash(key: &str) -> String {
    hex_lower(&Sha256::digest(key.as_bytes()))
}

/// Lower-case hex without a per-character `String` push (compile hashes 100k keys).
fn hex_lower(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = Vec::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 0x0f)]);
    }
    String::from_utf8(out).unwrap_or_default()
}

fn sorted<K: Resource<DynamicType = ()>>(items: &[K]) -> Vec<&K> {
    let mut v: Vec<&K> = items.iter().collect();
    v.sort_by_cached_key(|k| ResourceKey::of(*k));
    v
}

/// Oldest first by `creationTimestamp`, then by kind, namespace and name (objects without a
/// timestamp, as in `dir:` sources, sort by name alone).
fn by_age<K: Resource<DynamicType = ()>>(items: &[K]) -> Vec<&K> {
    let mut v: Vec<&K> = items.iter().collect();
    fn order<K: Resource<DynamicType = ()>>(
        k: &K,
    ) -> (bool, Option<k8s_openapi::jiff::Timestamp>, &str, &str) {
        let m = k.meta();
        let created = m.creation_timestamp.as_ref().map(|t| t.0);
        let ns = m.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
        (
            created.is_none(),
            created,
            ns,
            m.name.as_deref().unwrap_or(""),
        )
    }
    v.sort_by(|a, b| order(*a).cmp(&order(*b)));
    v
}

fn secret_value<'w>(world: &'w World, ns: &str, name: &str, key: &str) -> Result<&'w str, Reject> {
    let secret = world
        .secret(ns, name)
        .ok_or_else(|| Reject::refs("SecretNotFound", format!(
                "Secret {ns}/{name} not found (in Kubernetes a Secret must carry the label {}: \"true\" to be seen)",
                crate::SECRET_LABEL
            )))?;
    secret.get(key).map(String::as_str).ok_or_else(|| {
        Reject::refs(
            "SecretKeyNotFound",
            format!("Secret {ns}/{name} has no key {key:?}"),
        )
    })
}

fn compile_limits(l: &RateLimits) -> pb::Limits {
    pb::Limits {
        requests_per_minute: l.requests_per_minute.unwrap_or(0),
        tokens_per_minute: l.tokens_per_minute.unwrap_or(0),
        max_parallel: l.max_parallel_requests.unwrap_or(0),
    }
}

fn compile_budget(b: &Budget) -> Result<pb::Budget, Reject> {
    let micros = validate::price_micros("spec.budget.amount", &b.amount)?;
    let period = crate::spend::proto_period(b.period);
    Ok(pb::Budget {
        amount_nanos: micros.saturating_mul(1000),
        period: period.into(),
        alert_only: b.action == BudgetAction::Alert,
    })
}

fn compile_key(
    vk: &VirtualKey,
    key: &ResourceKey,
    world: &World,
) -> Result<pb::VirtualKey, Reject> {
    let spec = &vk.spec;
    for (i, m) in spec.allowed_models.iter().enumerate() {
        validate::model_glob(&format!("spec.allowedModels[{i}]"), m)?;
    }
    let allowed_routes = tenancy::allowed_routes(key, &spec.allowed_routes)?;
    let mut model_limits = Vec::with_capacity(spec.model_limits.len());
    for (i, m) in spec.model_limits.iter().enumerate() {
        validate::model_glob(&format!("spec.modelLimits[{i}].model"), &m.model)?;
        model_limits.push(pb::ModelLimits {
            model: m.model.clone(),
            limits: Some(compile_limits(&m.limits)),
        });
    }
    let budget = spec.budget.as_ref().map(compile_budget).transpose()?;
    let expires_at_unix = spec
        .expires_at
        .as_deref()
        .map(|t| validate::timestamp_unix("spec.expiresAt", t))
        .transpose()?
        .unwrap_or(0);
    let secret_key = spec.secret_ref.data_key();
    let value = secret_value(world, &key.namespace, &spec.secret_ref.name, secret_key)?.trim();
    if value.len() < 8 {
        return Err(Reject::spec(
            "WeakKey",
            "the key must be at least 8 characters",
        ));
    }
    Ok(pb::VirtualKey {
        id: key.id(),
        key_sha256: key_hash(value),
        allowed_models: spec.allowed_models.clone(),
        expires_at_unix,
        disabled: spec.disabled,
        labels: vk.labels().clone().into_iter().collect(),
        allowed_routes,
        limits: spec.limits.as_ref().map(compile_limits),
        model_limits,
        budget,
    })
}

fn compile_guardrail(
    g: &Guardrail,
    key: &ResourceKey,
    world: &World,
    egress: &crate::egress::Egress,
) -> Result<pb::Guardrail, Reject> {
    let routes = &world.routes;
    let spec = &g.spec;
    let targets = spec.targets.clone().unwrap_or_default();
    let selects = |sel: &Option<crate::KeySelector>, labels: Option<&BTreeMap<String, String>>| {
        sel.as_ref().is_some_and(|s| {
            s.match_labels
                .iter()
                .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
        })
    };
    let untargeted = targets.routes.is_empty()
        && targets.route_selector.is_none()
        && targets.keys.is_empty()
        && targets.key_selector.is_none();
    let mut route_ids: Vec<String> = routes
        .iter()
        .filter(|r| r.metadata.namespace.as_deref().unwrap_or("default") == key.namespace)
        .filter(|r| {
            let name = r.metadata.name.as_deref().unwrap_or_default();
            untargeted
                || targets.routes.iter().any(|n| n == name)
                || selects(&targets.route_selector, r.metadata.labels.as_ref())
        })
        .map(|r| {
            format!(
                "{}/{}",
                key.namespace,
                r.metadata.name.as_deref().unwrap_or_default()
            )
        })
        .collect();
    route_ids.sort();
    for (i, p) in spec.deny_patterns.iter().enumerate() {
        validate::regex(&format!("spec.denyPatterns[{i}]"), p)?;
    }
    if let Some(i) = spec.deny_words.iter().position(|w| w.trim().is_empty()) {
        return Err(Reject::spec(
            "Invalid",
            format!("spec.denyWords[{i}]: a word or phrase, not blank"),
        ));
    }
    let block_or_alert =
        |field: &str, c: &Option<crate::CheckAction>| match c.as_ref().map(|c| c.action) {
            None => Ok(String::new()),
            Some(None | Some(PiiAction::Block)) => Ok("Block".to_owned()),
            Some(Some(PiiAction::Alert)) => Ok("Alert".to_owned()),
            Some(Some(other)) => Err(Reject::spec(
                "Invalid",
                format!("spec.{field}.action: Block or Alert, not {other:?}"),
            )),
        };
    let injection = block_or_alert("promptInjection", &spec.prompt_injection)?;
    let json_schema = block_or_alert("jsonSchema", &spec.json_schema)?;
    if spec.pii.as_ref().is_some_and(|p| p.entities.is_empty()) {
        return Err(Reject::spec(
            "Invalid",
            "spec.pii.entities: list at least one entity",
        ));
    }
    let webhook = match &spec.webhook {
        None => None,
        Some(w) => {
            let url = validate::endpoint_url("spec.webhook.url", &w.url)?;
            egress.check("spec.webhook.url", &url, &|n| {
                world.namespaces.contains_key(n)
            })?;
            let timeout = match &w.timeout {
                Some(t) => validate::duration("spec.webhook.timeout", t)?,
                None => std::time::Duration::from_secs(1),
            };
            if timeout.is_zero() {
                return Err(Reject::spec(
                    "Invalid",
                    "spec.webhook.timeout: longer than zero",
                ));
            }
            Some(pb::GuardrailWebhook {
                url: w.url.clone(),
                timeout_ms: timeout.as_millis() as u64,
                fail_open: w.failure_mode == Some(crate::FailureMode::Open),
            })
        }
    };
    let phases: &[GuardrailPhase] = if spec.phases.is_empty() {
        &[GuardrailPhase::Request]
    } else {
        &spec.phases
    };
    let to_str = |v: &dyn std::fmt::Debug| format!("{v:?}");
    Ok(pb::Guardrail {
        id: key.id(),
        request_phase: phases.contains(&GuardrailPhase::Request),
        response_phase: phases.contains(&GuardrailPhase::Response),
        deny_patterns: spec.deny_patterns.clone(),
        max_input_tokens: spec.max_input_tokens.unwrap_or(0),
        pii_entities: spec
            .pii
            .iter()
            .flat_map(|p| p.entities.iter().map(|e| to_str(e)))
            .collect(),
        pii_action: spec
            .pii
            .as_ref()
            .map(|p| to_str(&p.action.unwrap_or(PiiAction::Redact)))
            .unwrap_or_default(),
        routes: route_ids,
        keys: targets
            .keys
            .iter()
            .map(|n| format!("{}/{n}", key.namespace))
            .collect(),
        key_selector: targets
            .key_selector
            .map(|s| s.match_labels.into_iter().collect())
            .unwrap_or_default(),
        deny_words: spec
            .deny_words
            .iter()
            .map(|w| w.trim().to_owned())
            .collect(),
        prompt_injection: injection,
        json_schema,
        webhook,
    })
}

mod routing;
mod tenancy;
use routing::{compile_pool, compile_route};

#[cfg(test)]
mod tests;
