//! Which data planes each replica serves, shared through one Lease per replica so the leader
//! can compute `Programmed` across the whole fleet.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ListParams, ObjectMeta, Patch, PatchParams};

use super::FIELD_MANAGER;
use crate::server::{Nodes, Rejection};

/// Label on presence Leases.
pub const LABEL: &str = "switchyard.dev/presence";
/// Annotation holding `{node_id: {"version": ..., "rejected": [...]}}` as JSON.
pub const ANNOTATION: &str = "switchyard.dev/data-planes";

/// What one data plane runs, as the fleet view shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeView {
    /// The snapshot version it runs.
    pub version: String,
    /// Resources of that version it did not apply, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rejected: Vec<Rejection>,
}

/// Every connected data plane of every live replica, by node id.
pub type Fleet = BTreeMap<String, NodeView>;

/// An entry of the annotation: today's form, or the bare version older replicas wrote.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Entry {
    View(NodeView),
    Version(String),
}

/// Publishes this replica's data planes forever.
pub async fn publish(
    client: kube::Client,
    namespace: String,
    identity: String,
    nodes: Arc<Nodes>,
    duration: Duration,
) {
    let api: Api<Lease> = Api::namespaced(client, &namespace);
    let name = format!("switchyard-presence-{}", super::dns_label(&identity));
    loop {
        let map: Fleet = nodes
            .snapshot()
            .into_iter()
            .map(|n| {
                let view = NodeView {
                    version: n.acked_version,
                    rejected: n.rejected,
                };
                (n.node_id, view)
            })
            .collect();
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(BTreeMap::from([(LABEL.to_owned(), "true".to_owned())])),
                annotations: Some(BTreeMap::from([(
                    ANNOTATION.to_owned(),
                    serde_json::to_string(&map).unwrap_or_default(),
                )])),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(identity.clone()),
                lease_duration_seconds: Some(
                    i32::try_from(duration.as_secs().max(1)).unwrap_or(i32::MAX),
                ),
                renew_time: Some(MicroTime(Timestamp::now())),
                ..Default::default()
            }),
        };
        let mut value = serde_json::to_value(&lease).unwrap_or_default();
        value["apiVersion"] = "coordination.k8s.io/v1".into();
        value["kind"] = "Lease".into();
        if let Err(e) = api
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(value),
            )
            .await
        {
            tracing::warn!(error = %e, "publishing presence failed");
        }
        tokio::time::sleep((duration / 4).max(Duration::from_millis(200))).await;
    }
}

/// Every live replica's data planes.
pub async fn fleet(client: kube::Client, namespace: &str) -> Result<Fleet, kube::Error> {
    let api: Api<Lease> = Api::namespaced(client, namespace);
    let leases = api
        .list(&ListParams::default().labels(&format!("{LABEL}=true")))
        .await?;
    Ok(merge(&leases.items, Timestamp::now()))
}

/// Follows the fleet view: reads the presence Leases every `interval` and publishes the
/// view when it changed. A failed read keeps the last view.
pub fn follow(
    client: kube::Client,
    namespace: String,
    interval: Duration,
) -> tokio::sync::watch::Receiver<Arc<Fleet>> {
    let (tx, rx) = tokio::sync::watch::channel(Arc::new(Fleet::new()));
    tokio::spawn(async move {
        loop {
            match fleet(client.clone(), &namespace).await {
                Ok(view) => {
                    tx.send_if_modified(|current| {
                        let changed = **current != view;
                        if changed {
                            *current = Arc::new(view);
                        }
                        changed
                    });
                }
                Err(e) => tracing::warn!(error = %e, "reading the fleet's presence failed"),
            }
            if tx.is_closed() {
                return;
            }
            tokio::time::sleep(interval).await;
        }
    });
    rx
}

/// Pure: merges live presence Leases.
pub fn merge(leases: &[Lease], now: Timestamp) -> Fleet {
    let mut out = Fleet::new();
    for l in leases {
        let Some(spec) = &l.spec else { continue };
        let live = match (&spec.renew_time, spec.lease_duration_seconds) {
            (Some(MicroTime(t)), Some(secs)) => t
                .checked_add(SignedDuration::from_secs(i64::from(secs)))
                .is_ok_and(|u| u >= now),
            _ => false,
        };
        if !live {
            continue;
        }
        let raw = l
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANNOTATION));
        if let Some(map) = raw.and_then(|r| serde_json::from_str::<BTreeMap<String, Entry>>(r).ok())
        {
            out.extend(map.into_iter().map(|(node, e)| {
                let view = match e {
                    Entry::View(v) => v,
                    Entry::Version(version) => NodeView {
                        version,
                        rejected: Vec::new(),
                    },
                };
                (node, view)
            }));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(nodes: &str, renewed_ago: i64) -> Lease {
        Lease {
            metadata: ObjectMeta {
                annotations: Some(BTreeMap::from([(ANNOTATION.to_owned(), nodes.to_owned())])),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                renew_time: Some(MicroTime(
                    Timestamp::now() - SignedDuration::from_secs(renewed_ago),
                )),
                lease_duration_seconds: Some(10),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn merges_live_leases_only() {
        let m = merge(
            &[
                lease(r#"{"a":{"version":"v1"}}"#, 1),
                lease(r#"{"b":{"version":"v2"}}"#, 60),
                lease("garbage", 1),
                lease(
                    r#"{"c":{"version":"v1","rejected":[{"kind":"ProviderPool","namespace":"ns","name":"p","generation":2,"message":"no AWS credentials"}]}}"#,
                    2,
                ),
                lease(r#"{"d":"v0"}"#, 1),
            ],
            Timestamp::now(),
        );
        let versions: Vec<(&str, &str)> = m
            .iter()
            .map(|(k, v)| (k.as_str(), v.version.as_str()))
            .collect();
        assert_eq!(versions, vec![("a", "v1"), ("c", "v1"), ("d", "v0")]);
        assert_eq!(m["c"].rejected[0].name, "p");
        assert_eq!(m["c"].rejected[0].generation, 2);
        assert!(m["a"].rejected.is_empty());
    }
}
