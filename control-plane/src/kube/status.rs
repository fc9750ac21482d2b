//! Status: the pure computation of each object's conditions from the compile result and the
//! fleet view, and the reconcile step every kind shares, which applies them with server-side
//! apply (one field manager) only when they differ, ignoring timestamps, so that a status
//! write never triggers another.

use std::collections::{HashMap, HashSet, VecDeque};

use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use serde_json::json;
use switchyard_crds::common::condition;
use switchyard_crds::{Compiled, Condition, ResourceKey};

use super::FIELD_MANAGER;
use super::context::{Context, Error};
use super::presence::Fleet;

/// Resource identity without generation: (kind, namespace, name).
pub type Ident = (String, String, String);

/// Snapshot versions seen recently, with the generation of every resource each contains.
#[derive(Debug, Default)]
pub struct History {
    order: VecDeque<String>,
    versions: HashMap<String, HashMap<Ident, i64>>,
}

impl History {
    const KEEP: usize = 64;

    pub fn record(&mut self, c: &Compiled) {
        let v = &c.snapshot.version;
        if self.versions.contains_key(v) {
            return;
        }
        let resources = c
            .snapshot
            .resources
            .iter()
            .map(|r| {
                (
                    (r.kind.clone(), r.namespace.clone(), r.name.clone()),
                    r.generation,
                )
            })
            .collect();
        self.versions.insert(v.clone(), resources);
        self.order.push_back(v.clone());
        while self.order.len() > Self::KEEP {
            if let Some(old) = self.order.pop_front() {
                self.versions.remove(&old);
            }
        }
    }

    /// Resources whose generation differs between two recorded versions (added and removed
    /// ones included); `None` when either version is unknown.
    pub fn diff(&self, a: &str, b: &str) -> Option<HashSet<Ident>> {
        let (a, b) = (self.versions.get(a)?, self.versions.get(b)?);
        let mut out: HashSet<Ident> = a
            .iter()
            .filter(|(id, g)| b.get(*id) != Some(*g))
            .map(|(id, _)| id.clone())
            .collect();
        out.extend(b.keys().filter(|id| !a.contains_key(*id)).cloned());
        Some(out)
    }

    fn runs(&self, version: &str, id: &Ident, generation: i64) -> bool {
        self.versions
            .get(version)
            .and_then(|r| r.get(id))
            .is_some_and(|g| *g == generation)
    }
}

fn cond(type_: &str, status: &str, generation: i64, reason: &str, message: String) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        observed_generation: Some(generation),
        last_transition_time: None,
        reason: reason.to_owned(),
        message,
    }
}

/// The conditions an object should carry. Pure: compiled result, fleet view and history in.
pub fn desired_conditions(
    key: &ResourceKey,
    compiled: &Compiled,
    fleet: &Fleet,
    history: &History,
    existing: &[Condition],
    now: &str,
) -> Vec<Condition> {
    let g = key.generation;
    let diag = compiled.diagnostics.iter().find(|d| &d.resource == key);
    let mut out = match diag {
        Some(d) if d.condition == condition::RESOLVED_REFS => vec![
            cond(condition::ACCEPTED, "False", g, d.reason, d.message.clone()),
            cond(
                condition::RESOLVED_REFS,
                "False",
                g,
                d.reason,
                d.message.clone(),
            ),
        ],
        Some(d) => vec![
            cond(condition::ACCEPTED, "False", g, d.reason, d.message.clone()),
            cond(
                condition::RESOLVED_REFS,
                "Unknown",
                g,
                "NotEvaluated",
                "the spec is invalid".into(),
            ),
        ],
        None => vec![
            cond(
                condition::ACCEPTED,
                "True",
                g,
                "Accepted",
                "valid, and part of the compiled configuration".into(),
            ),
            cond(
                condition::RESOLVED_REFS,
                "True",
                g,
                "ResolvedRefs",
                "all references resolved".into(),
            ),
        ],
    };
    let id = (key.kind.to_owned(), key.namespace.clone(), key.name.clone());
    out.push(if diag.is_some() {
        cond(
            condition::PROGRAMMED,
            "False",
            g,
            "NotAccepted",
            "not part of the configuration".into(),
        )
    } else if fleet.is_empty() {
        cond(
            condition::PROGRAMMED,
            "Unknown",
            g,
            "NoDataPlanes",
            "no data plane is connected".into(),
        )
    } else {
        let n = fleet.len();
        let rejections: Vec<&str> = fleet
            .values()
            .filter_map(|v| {
                v.rejected
                    .iter()
                    .find(|r| {
                        r.kind == key.kind
                            && r.namespace == key.namespace
                            && r.name == key.name
                            && r.generation == g
                    })
                    .map(|r| r.message.as_str())
            })
            .collect();
        if let Some(first) = rejections.first() {
            let msg = format!(
                "rejected by {} of {n} data planes: {first}",
                rejections.len()
            );
            cond(condition::PROGRAMMED, "False", g, "Rejected", msg)
        } else {
            let running = fleet
                .values()
                .filter(|v| history.runs(&v.version, &id, g))
                .count();
            if running == n {
                // No count: a data plane joining or leaving must not rewrite every status.
                let msg = format!("every connected data plane runs generation {g}");
                cond(condition::PROGRAMMED, "True", g, "Programmed", msg)
            } else {
                let msg = format!("{running} of {n} data planes run generation {g}");
                cond(condition::PROGRAMMED, "False", g, "Pending", msg)
            }
        }
    });
    for c in &mut out {
        c.last_transition_time = Some(
            existing
                .iter()
                .find(|e| e.type_ == c.type_ && e.status == c.status)
                .and_then(|e| e.last_transition_time.clone())
                .unwrap_or_else(|| now.to_owned()),
        );
    }
    out
}

/// Equal ignoring `lastTransitionTime` (and order).
pub fn same_conditions(a: &[Condition], b: &[Condition]) -> bool {
    let strip = |v: &[Condition]| {
        let mut v: Vec<Condition> = v
            .iter()
            .cloned()
            .map(|mut c| {
                c.last_transition_time = None;
                c
            })
            .collect();
        v.sort_by(|x, y| x.type_.cmp(&y.type_));
        v
    };
    strip(a) == strip(b)
}

/// The status patch for a kind (server-side apply body).
pub fn status_patch<K: Resource<DynamicType = ()>>(
    conditions: &[Condition],
    extra: serde_json::Value,
) -> serde_json::Value {
    let mut status = json!({ "conditions": conditions });
    if let (Some(s), serde_json::Value::Object(extra)) = (status.as_object_mut(), extra) {
        s.extend(extra);
    }
    json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    })
}

/// Applies a status if it differs from what the object carries.
pub async fn apply_status<K>(
    api: &Api<K>,
    name: &str,
    patch: serde_json::Value,
) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(patch),
    )
    .await
    .map(|_| ())
}

/// Status fields besides conditions: the patch fragment, and whether the object already
/// carries them.
pub type Extra = (serde_json::Value, bool);

/// Objects that carry conditions.
pub trait Conditions {
    fn conditions(&self) -> &[Condition];
}

macro_rules! impl_conditions {
    ($($k:ty),*) => {$(
        impl Conditions for $k {
            fn conditions(&self) -> &[Condition] {
                self.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default()
            }
        }
    )*};
}
impl_conditions!(
    switchyard_crds::ProviderPool,
    switchyard_crds::LLMRoute,
    switchyard_crds::Guardrail,
    switchyard_crds::VirtualKey
);

/// A namespaced Switchyard object whose status this operator writes.
pub trait StatusObject:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Conditions
    + Clone
    + serde::de::DeserializeOwned
    + serde::Serialize
    + std::fmt::Debug
{
}

impl<K> StatusObject for K where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Conditions
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug
{
}

/// The identity of an object as compile and status name it.
pub fn resource_key<K: Resource<DynamicType = ()>>(obj: &K) -> Option<ResourceKey> {
    Some(ResourceKey {
        // Only the four kinds are compiled: another has no key (it was once taken for a
        // Guardrail).
        kind: switchyard_proto::ResourceKind::parse(&K::kind(&()))?.as_str(),
        namespace: obj.namespace()?,
        name: obj.name_any(),
        generation: obj.meta().generation.unwrap_or(0),
    })
}

/// The reconcile step every kind shares: while leading, record a Warning Event for a new
/// diagnostic, compute the conditions, and write them (with `extra`) if they differ.
pub async fn reconcile<K: StatusObject>(
    obj: &K,
    ctx: &Context,
    extra: Extra,
) -> Result<Action, Error> {
    let (Some(key), Some(compiled)) = (resource_key(obj), ctx.compiled()) else {
        return Ok(Action::await_change());
    };
    if let Some(d) = compiled.diagnostics.iter().find(|d| d.resource == key) {
        ctx.record_event(obj, d).await;
    }
    let fleet = ctx.fleet();
    let desired = {
        let history = ctx.history();
        let now = Timestamp::now().to_string();
        desired_conditions(&key, &compiled, &fleet, &history, obj.conditions(), &now)
    };
    let (extra, extra_same) = extra;
    if extra_same && same_conditions(obj.conditions(), &desired) {
        return Ok(Action::await_change());
    }
    // Fenced: a replica whose lease may have passed to another writes nothing.
    if !ctx.leadership.leads() {
        return Ok(Action::await_change());
    }
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &key.namespace);
    match apply_status(&api, &key.name, status_patch::<K>(&desired, extra)).await {
        Ok(()) => {
            ctx.metrics.status_writes.inc();
            tracing::debug!(resource = %key, "status written");
        }
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => return Err(e.into()),
    }
    Ok(Action::await_change())
}

/// The Event recorded for a diagnostic.
pub fn diagnostic_event(d: &switchyard_crds::Diagnostic) -> Event {
    Event {
        type_: EventType::Warning,
        reason: d.reason.to_owned(),
        note: Some(d.message.chars().take(1000).collect()),
        action: "Compile".into(),
        secondary: None,
    }
}

/// Remembers which (resource, reason) pairs already have an Event.
#[derive(Debug, Default)]
pub struct Evented(std::sync::Mutex<HashSet<(ResourceKey, &'static str)>>);

impl Evented {
    /// True the first time a pair is seen.
    pub fn first(&self, key: &ResourceKey, reason: &'static str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert((key.clone(), reason))
    }
}

#[cfg(test)]
pub(crate) mod tests;
