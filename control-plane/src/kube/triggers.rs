//! What makes an object's status change besides its own edits, turned into reconciles of
//! exactly the objects affected:
//! - a new compile result: objects whose generation entered or left the snapshot, or whose
//!   diagnostic changed;
//! - a data plane moving to another version: objects that differ between the two;
//! - a data plane's rejections changing: the objects named, before and after;
//! - a data plane joining or leaving, leadership gained, or a version not in the history:
//!   every object;
//! - the periodic resync: every object.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use kube::runtime::reflector::ObjectRef;
use switchyard_crds::{Compiled, Guardrail, LLMRoute, ProviderPool, VirtualKey};
use tokio::sync::mpsc;

use super::context::Context;
use super::presence::Fleet;
use super::status::Ident;

/// The reconcile inputs of one kind's controller.
#[derive(Debug)]
pub struct Trigger<K: kube::Resource<DynamicType = ()>> {
    one: mpsc::UnboundedSender<ObjectRef<K>>,
    all: mpsc::UnboundedSender<()>,
}

impl<K: kube::Resource<DynamicType = ()>> Clone for Trigger<K> {
    fn clone(&self) -> Self {
        Self {
            one: self.one.clone(),
            all: self.all.clone(),
        }
    }
}

/// The receiving ends, for `Controller::reconcile_on` and `reconcile_all_on`.
#[derive(Debug)]
pub struct Inputs<K: kube::Resource<DynamicType = ()>> {
    pub one: mpsc::UnboundedReceiver<ObjectRef<K>>,
    pub all: mpsc::UnboundedReceiver<()>,
}

fn channel<K: kube::Resource<DynamicType = ()>>() -> (Trigger<K>, Inputs<K>) {
    let (one, one_rx) = mpsc::unbounded_channel();
    let (all, all_rx) = mpsc::unbounded_channel();
    (
        Trigger { one, all },
        Inputs {
            one: one_rx,
            all: all_rx,
        },
    )
}

/// Triggers of the four kinds.
#[derive(Clone, Debug)]
pub struct Triggers {
    pools: Trigger<ProviderPool>,
    routes: Trigger<LLMRoute>,
    keys: Trigger<VirtualKey>,
    guardrails: Trigger<Guardrail>,
}

/// Inputs of the four kinds.
#[derive(Debug)]
pub struct AllInputs {
    pub pools: Inputs<ProviderPool>,
    pub routes: Inputs<LLMRoute>,
    pub keys: Inputs<VirtualKey>,
    pub guardrails: Inputs<Guardrail>,
}

impl Triggers {
    pub fn new() -> (Self, AllInputs) {
        let (pools, pool_in) = channel();
        let (routes, route_in) = channel();
        let (keys, key_in) = channel();
        let (guardrails, guardrail_in) = channel();
        (
            Self {
                pools,
                routes,
                keys,
                guardrails,
            },
            AllInputs {
                pools: pool_in,
                routes: route_in,
                keys: key_in,
                guardrails: guardrail_in,
            },
        )
    }

    /// Every object of every kind.
    pub fn all(&self) {
        let _ = self.pools.all.send(());
        let _ = self.routes.all.send(());
        let _ = self.keys.all.send(());
        let _ = self.guardrails.all.send(());
    }

    /// One object, by (kind, namespace, name).
    pub fn one(&self, (kind, ns, name): &Ident) {
        // A send fails only when the controller is gone (shutting down).
        use switchyard_proto::ResourceKind;
        let sent = match ResourceKind::parse(kind) {
            Some(ResourceKind::ProviderPool) => {
                self.pools.one.send(ObjectRef::new(name).within(ns)).is_ok()
            }
            Some(ResourceKind::LlmRoute) => self
                .routes
                .one
                .send(ObjectRef::new(name).within(ns))
                .is_ok(),
            Some(ResourceKind::VirtualKey) => {
                self.keys.one.send(ObjectRef::new(name).within(ns)).is_ok()
            }
            Some(ResourceKind::Guardrail) => self
                .guardrails
                .one
                .send(ObjectRef::new(name).within(ns))
                .is_ok(),
            None => true,
        };
        if !sent {
            tracing::debug!(%kind, %ns, %name, "no controller to reconcile");
        }
    }

    /// One VirtualKey.
    pub fn key(&self, r: ObjectRef<VirtualKey>) {
        let _ = self.keys.one.send(r);
    }

    fn many(&self, ids: Option<HashSet<Ident>>) {
        match ids {
            None => self.all(),
            Some(ids) => ids.iter().for_each(|id| self.one(id)),
        }
    }
}

/// An object's generation, and its diagnostic (reason, message) if it was left out.
type StatusInput<'a> = (i64, Option<(&'static str, &'a str)>);

/// What status depends on in a compile result, per object: its generation in the snapshot,
/// or its diagnostic.
fn status_inputs(c: &Compiled) -> HashMap<Ident, StatusInput<'_>> {
    let mut out: HashMap<Ident, StatusInput<'_>> = c
        .snapshot
        .resources
        .iter()
        .map(|r| {
            (
                (r.kind.clone(), r.namespace.clone(), r.name.clone()),
                (r.generation, None),
            )
        })
        .collect();
    for d in &c.diagnostics {
        let r = &d.resource;
        out.insert(
            (r.kind.to_owned(), r.namespace.clone(), r.name.clone()),
            (r.generation, Some((d.reason, d.message.as_str()))),
        );
    }
    out
}

/// Objects whose status inputs differ between two compile results; `None`: all of them.
pub fn compile_affected(old: Option<&Compiled>, new: &Compiled) -> Option<HashSet<Ident>> {
    let old = status_inputs(old?);
    let new = status_inputs(new);
    let mut out: HashSet<Ident> = new
        .iter()
        .filter(|(id, v)| old.get(*id) != Some(*v))
        .map(|(id, _)| id.clone())
        .collect();
    out.extend(old.keys().filter(|id| !new.contains_key(*id)).cloned());
    Some(out)
}

/// Objects whose Programmed condition can differ between two fleet views; `None`: all.
pub fn fleet_affected(
    old: &Fleet,
    new: &Fleet,
    history: &super::status::History,
) -> Option<HashSet<Ident>> {
    if old.len() != new.len() || old.keys().zip(new.keys()).any(|(a, b)| a != b) {
        return None;
    }
    let mut out = HashSet::new();
    for (node, now) in new {
        let before = &old[node];
        if before.version != now.version {
            out.extend(history.diff(&before.version, &now.version)?);
        }
        if before.rejected != now.rejected {
            out.extend(
                before
                    .rejected
                    .iter()
                    .chain(&now.rejected)
                    .map(|r| (r.kind.clone(), r.namespace.clone(), r.name.clone())),
            );
        }
    }
    Some(out)
}

/// Runs until the compile results stop: dispatches reconciles for every change above.
pub async fn run(ctx: Arc<Context>, triggers: Triggers, resync: Duration) {
    let mut compiled = ctx.compiled_updates();
    let mut fleet = ctx.fleet_updates();
    let mut leadership = ctx.leadership.clone();
    let mut last_compiled: Option<Arc<Compiled>> = None;
    let mut last_fleet = fleet.borrow_and_update().clone();
    let mut resync_timer = tokio::time::interval(resync);
    resync_timer.tick().await;
    loop {
        tokio::select! {
            changed = compiled.changed() => {
                if changed.is_err() {
                    return;
                }
                let Some(c) = compiled.borrow_and_update().clone() else { continue };
                ctx.history().record(&c);
                let affected = compile_affected(last_compiled.as_deref(), &c);
                tracing::debug!(version = %c.snapshot.version, affected = ?affected.as_ref().map(HashSet::len), "compile result: reconciling");
                triggers.many(affected);
                last_compiled = Some(c);
            }
            changed = fleet.changed() => {
                if changed.is_err() {
                    return;
                }
                let now = fleet.borrow_and_update().clone();
                let affected = fleet_affected(&last_fleet, &now, &ctx.history());
                tracing::debug!(data_planes = now.len(), affected = ?affected.as_ref().map(HashSet::len), "fleet changed: reconciling");
                triggers.many(affected);
                last_fleet = now;
            }
            alive = leadership.changed() => {
                if !alive {
                    return;
                }
                if ctx.leadership.leads() {
                    tracing::info!("leading: reconciling every object");
                    triggers.all();
                }
            }
            _ = resync_timer.tick() => {
                if ctx.leadership.leads() {
                    triggers.all();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::presence::NodeView;
    use crate::kube::status::History;
    use crate::server::Rejection;

    fn compiled(version: &str, resources: &[(&'static str, &str, i64)]) -> Compiled {
        let mut c = crate::kube::status::tests::compiled_with(vec![], resources);
        c.snapshot.version = version.into();
        c
    }

    fn id(kind: &str, name: &str) -> Ident {
        (kind.into(), "ns".into(), name.into())
    }

    #[test]
    fn a_compile_reconciles_only_what_changed() {
        let a = compiled(
            "v1",
            &[
                ("LLMRoute", "r", 1),
                ("VirtualKey", "k1", 1),
                ("VirtualKey", "k2", 1),
            ],
        );
        let b = compiled(
            "v2",
            &[
                ("LLMRoute", "r", 1),
                ("VirtualKey", "k1", 2),
                ("VirtualKey", "k3", 1),
            ],
        );
        assert_eq!(
            compile_affected(None, &a),
            None,
            "first compile: everything"
        );
        let got = compile_affected(Some(&a), &b).expect("a diff");
        let want: HashSet<Ident> = [
            id("VirtualKey", "k1"),
            id("VirtualKey", "k2"),
            id("VirtualKey", "k3"),
        ]
        .into();
        assert_eq!(got, want);
        // A new diagnostic on an object not in either snapshot.
        let mut c = b.clone();
        c.diagnostics.push(switchyard_crds::Diagnostic {
            resource: switchyard_crds::ResourceKey {
                kind: "LLMRoute",
                namespace: "ns".into(),
                name: "bad".into(),
                generation: 1,
            },
            condition: "Accepted",
            reason: "Invalid",
            message: "x".into(),
        });
        assert_eq!(
            compile_affected(Some(&b), &c),
            Some([id("LLMRoute", "bad")].into())
        );
    }

    #[test]
    fn a_fleet_change_reconciles_what_the_versions_differ_in() {
        let a = compiled("v1", &[("LLMRoute", "r", 1), ("VirtualKey", "k1", 1)]);
        let b = compiled("v2", &[("LLMRoute", "r", 1), ("VirtualKey", "k1", 2)]);
        let mut h = History::default();
        h.record(&a);
        h.record(&b);
        let view = |v: &str, rejected: Vec<Rejection>| NodeView {
            version: v.into(),
            rejected,
        };
        let old = Fleet::from([
            ("dp-a".into(), view("v1", vec![])),
            ("dp-b".into(), view("v2", vec![])),
        ]);
        let new = Fleet::from([
            ("dp-a".into(), view("v2", vec![])),
            ("dp-b".into(), view("v2", vec![])),
        ]);
        assert_eq!(
            fleet_affected(&old, &new, &h),
            Some([id("VirtualKey", "k1")].into())
        );
        // A rejection appearing names its object.
        let rejected = vec![Rejection {
            kind: "LLMRoute".into(),
            namespace: "ns".into(),
            name: "r".into(),
            generation: 1,
            message: "m".into(),
        }];
        let nacked = Fleet::from([
            ("dp-a".into(), view("v2", rejected)),
            ("dp-b".into(), view("v2", vec![])),
        ]);
        assert_eq!(
            fleet_affected(&new, &nacked, &h),
            Some([id("LLMRoute", "r")].into())
        );
        // Membership changes and unknown versions reconcile everything.
        let fewer = Fleet::from([("dp-a".into(), view("v2", vec![]))]);
        assert_eq!(fleet_affected(&new, &fewer, &h), None);
        let unknown = Fleet::from([
            ("dp-a".into(), view("v9", vec![])),
            ("dp-b".into(), view("v2", vec![])),
        ]);
        assert_eq!(fleet_affected(&new, &unknown, &h), None);
    }
}
