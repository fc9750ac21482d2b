//! Status: the pure computation of each object's conditions, and the leader's writer that
//! applies them with server-side apply (one field manager) only when they differ, ignoring
//! timestamps, so a status write never triggers another.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Resource, ResourceExt};
use serde_json::json;
use switchyard_crds::common::condition;
use switchyard_crds::{
    Compiled, Condition, Guardrail, LLMRoute, ProviderPool, ResourceKey, SpendStatus, VirtualKey,
};
use tokio::sync::watch;

use super::{FIELD_MANAGER, Stores, presence};
use crate::server::Published;

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
    fleet: &BTreeMap<String, String>,
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
                format!("in snapshot {}", compiled.snapshot.version),
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
        let running = fleet.values().filter(|v| history.runs(v, &id, g)).count();
        let n = fleet.len();
        let msg = format!("{running} of {n} data planes run generation {g}");
        if running == n {
            cond(condition::PROGRAMMED, "True", g, "Programmed", msg)
        } else {
            cond(condition::PROGRAMMED, "False", g, "Pending", msg)
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

/// Everything the status writer needs.
pub struct Writer {
    pub client: kube::Client,
    pub stores: Stores,
    pub compiled: watch::Receiver<Published>,
    pub leading: watch::Receiver<bool>,
    pub namespace: String,
    pub identity: String,
    pub interval: Duration,
    /// Where the data planes settle spend; `None`: spend is not reported.
    pub spend: Option<super::spend::SpendReader>,
    /// How often spend is read into status (each read may rewrite every spending key).
    pub spend_interval: Duration,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

trait Conditions {
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
impl_conditions!(ProviderPool, LLMRoute, Guardrail);

impl Conditions for VirtualKey {
    fn conditions(&self) -> &[Condition] {
        self.status
            .as_ref()
            .map(|s| s.conditions.as_slice())
            .unwrap_or_default()
    }
}

/// Status fields besides conditions: the patch fragment, and whether the object already
/// carries them.
type Extra = (serde_json::Value, bool);

fn no_extra<K>(_: &K) -> Extra {
    (json!({}), true)
}

/// A VirtualKey's key prefix and spend. `spend` is `None` when Redis could not be read: the
/// spend in status is then kept as it is.
fn key_extra(
    vk: &VirtualKey,
    prefix: Option<String>,
    spend: Option<&HashMap<String, SpendStatus>>,
) -> Extra {
    let status = vk.status.as_ref();
    let mut extra = serde_json::Map::new();
    let mut same = true;
    if let Some(p) = prefix {
        same &= status.and_then(|s| s.key_prefix.as_deref()) == Some(p.as_str());
        extra.insert("keyPrefix".into(), json!(p));
    }
    let current = status.and_then(|s| s.spend.as_ref());
    let id = format!("{}/{}", vk.namespace().unwrap_or_default(), vk.name_any());
    let desired = match spend {
        Some(m) => m.get(&id),
        None => current,
    };
    same &= desired == current;
    if let Some(d) = desired {
        extra.insert("spend".into(), json!(d));
    }
    (serde_json::Value::Object(extra), same)
}

impl Writer {
    /// Runs forever; writes only while leading.
    pub async fn run(mut self) {
        let recorder = Recorder::new(
            self.client.clone(),
            Reporter {
                controller: FIELD_MANAGER.into(),
                instance: Some(self.identity.clone()),
            },
        );
        let mut history = History::default();
        let mut evented: HashSet<(ResourceKey, &'static str)> = HashSet::new();
        let mut last_spend_read: Option<std::time::Instant> = None;
        loop {
            let compiled = self.compiled.borrow_and_update().clone();
            if let Some(c) = &compiled {
                history.record(c);
            }
            let leading = *self.leading.borrow_and_update();
            if let (true, Some(c)) = (leading, compiled) {
                let spend_due = last_spend_read.is_none_or(|t| t.elapsed() >= self.spend_interval);
                if spend_due {
                    last_spend_read = Some(std::time::Instant::now());
                }
                let written = self
                    .write_all(&c, &history, &recorder, &mut evented, spend_due)
                    .await;
                if let Err(e) = written {
                    tracing::warn!(error = %e, "writing status failed; will retry");
                }
            }
            tokio::select! {
                _ = self.compiled.changed() => {}
                _ = self.leading.changed() => {}
                _ = tokio::time::sleep(self.interval) => {}
            }
        }
    }

    async fn write_all(
        &self,
        c: &Compiled,
        history: &History,
        recorder: &Recorder,
        evented: &mut HashSet<(ResourceKey, &'static str)>,
        spend_due: bool,
    ) -> Result<(), kube::Error> {
        let fleet = presence::fleet(self.client.clone(), &self.namespace).await?;
        let now = Timestamp::now().to_string();
        for d in &c.diagnostics {
            if d.resource.kind == "File" || !evented.insert((d.resource.clone(), d.reason)) {
                continue;
            }
            let reference = k8s_openapi::api::core::v1::ObjectReference {
                api_version: Some(format!(
                    "{}/{}",
                    switchyard_crds::GROUP,
                    switchyard_crds::VERSION
                )),
                kind: Some(d.resource.kind.to_owned()),
                namespace: Some(d.resource.namespace.clone()),
                name: Some(d.resource.name.clone()),
                ..Default::default()
            };
            let ev = Event {
                type_: EventType::Warning,
                reason: d.reason.to_owned(),
                note: Some(d.message.chars().take(1000).collect()),
                action: "Compile".into(),
                secondary: None,
            };
            if let Err(e) = recorder.publish(&ev, &reference).await {
                tracing::warn!(error = %e, resource = %d.resource, "recording event failed");
            }
        }
        self.write_kind::<ProviderPool>(
            &self.stores.pools.state(),
            c,
            &fleet,
            history,
            &now,
            no_extra,
        )
        .await?;
        self.write_kind::<LLMRoute>(
            &self.stores.routes.state(),
            c,
            &fleet,
            history,
            &now,
            no_extra,
        )
        .await?;
        self.write_kind::<Guardrail>(
            &self.stores.guardrails.state(),
            c,
            &fleet,
            history,
            &now,
            no_extra,
        )
        .await?;
        let prefix = |vk: &VirtualKey| {
            let secret = self.stores.secrets.get(
                &kube::runtime::reflector::ObjectRef::new(&vk.spec.secret_ref.name)
                    .within(&vk.namespace().unwrap_or_default()),
            )?;
            let data = secret.data.as_ref()?.get(vk.spec.secret_ref.data_key())?;
            let value = std::str::from_utf8(&data.0).ok()?;
            Some(format!(
                "{}…",
                value.trim().chars().take(10).collect::<String>()
            ))
        };
        let keys = self.stores.keys.state();
        let spend = match &self.spend {
            Some(reader) if spend_due => {
                let now_unix = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64);
                match reader.read(&keys, now_unix).await {
                    Ok(m) => Some(m),
                    Err(e) => {
                        tracing::warn!(error = %e, "reading spend from Redis failed; keeping the spend in status");
                        None
                    }
                }
            }
            _ => None,
        };
        let extra = |vk: &VirtualKey| key_extra(vk, prefix(vk), spend.as_ref());
        self.write_kind::<VirtualKey>(&keys, c, &fleet, history, &now, extra)
            .await?;
        Ok(())
    }

    async fn write_kind<K>(
        &self,
        objects: &[Arc<K>],
        c: &Compiled,
        fleet: &BTreeMap<String, String>,
        history: &History,
        now: &str,
        extra: impl Fn(&K) -> Extra,
    ) -> Result<(), kube::Error>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Conditions
            + Clone
            + serde::de::DeserializeOwned
            + serde::Serialize
            + std::fmt::Debug,
    {
        for obj in objects {
            let (Some(ns), name) = (obj.namespace(), obj.name_any()) else {
                continue;
            };
            let key = ResourceKey {
                kind: kind_static(&K::kind(&())),
                namespace: ns.clone(),
                name: name.clone(),
                generation: obj.meta().generation.unwrap_or(0),
            };
            let desired = desired_conditions(&key, c, fleet, history, obj.conditions(), now);
            // Typed comparisons only: at 100k keys this loop runs every interval.
            let (extra, extra_same) = extra(obj);
            if extra_same && same_conditions(obj.conditions(), &desired) {
                continue;
            }
            let api: Api<K> = Api::namespaced(self.client.clone(), &ns);
            match apply_status(&api, &name, status_patch::<K>(&desired, extra)).await {
                Ok(()) => tracing::debug!(resource = %key, "status written"),
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

fn kind_static(kind: &str) -> &'static str {
    match kind {
        "ProviderPool" => "ProviderPool",
        "LLMRoute" => "LLMRoute",
        "VirtualKey" => "VirtualKey",
        _ => "Guardrail",
    }
}

#[cfg(test)]
mod tests;
