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
use crate::server::Nodes;

/// Label on presence Leases.
pub const LABEL: &str = "switchyard.dev/presence";
/// Annotation holding `{node_id: version}` as JSON.
pub const ANNOTATION: &str = "switchyard.dev/data-planes";

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
        let map: BTreeMap<String, String> = nodes
            .snapshot()
            .into_iter()
            .map(|n| (n.node_id, n.acked_version))
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

/// Every live replica's data planes: node id -> version it runs.
pub async fn fleet(
    client: kube::Client,
    namespace: &str,
) -> Result<BTreeMap<String, String>, kube::Error> {
    let api: Api<Lease> = Api::namespaced(client, namespace);
    let leases = api
        .list(&ListParams::default().labels(&format!("{LABEL}=true")))
        .await?;
    Ok(merge(&leases.items, Timestamp::now()))
}

/// Pure: merges live presence Leases.
pub fn merge(leases: &[Lease], now: Timestamp) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
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
        if let Some(map) =
            raw.and_then(|r| serde_json::from_str::<BTreeMap<String, String>>(r).ok())
        {
            out.extend(map);
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
                lease(r#"{"a":"v1"}"#, 1),
                lease(r#"{"b":"v2"}"#, 60),
                lease("garbage", 1),
                lease(r#"{"c":"v1"}"#, 2),
            ],
            Timestamp::now(),
        );
        assert_eq!(
            m,
            BTreeMap::from([
                ("a".to_owned(), "v1".to_owned()),
                ("c".to_owned(), "v1".to_owned())
            ])
        );
    }
}
