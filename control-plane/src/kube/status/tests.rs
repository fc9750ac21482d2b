use super::*;
use crate::kube::presence::NodeView;
use crate::server::Rejection;
use switchyard_crds::{Diagnostic, LLMRoute, World};

/// A fleet of (node, version) with no rejections.
fn fleet(nodes: &[(&str, &str)]) -> Fleet {
    nodes
        .iter()
        .map(|(n, v)| {
            let view = NodeView {
                version: (*v).into(),
                rejected: Vec::new(),
            };
            ((*n).to_owned(), view)
        })
        .collect()
}

/// A compile result (version `v1`) listing `(kind, name, generation)` in namespace `ns`.
pub(crate) fn compiled_with(
    diags: Vec<Diagnostic>,
    resources: &[(&'static str, &str, i64)],
) -> Compiled {
    let mut c = switchyard_crds::compile(&World::default());
    c.diagnostics = diags;
    c.snapshot.version = "v1".into();
    c.snapshot.resources = resources
        .iter()
        .map(|(k, n, g)| switchyard_proto::v1::ResourceRef {
            kind: (*k).into(),
            namespace: "ns".into(),
            name: (*n).into(),
            generation: *g,
        })
        .collect();
    c
}

fn key(kind: &'static str, name: &str, generation: i64) -> ResourceKey {
    ResourceKey {
        kind,
        namespace: "ns".into(),
        name: name.into(),
        generation,
    }
}

fn get<'a>(v: &'a [Condition], t: &str) -> &'a Condition {
    v.iter().find(|c| c.type_ == t).expect("condition present")
}

#[test]
fn accepted_and_programmed_when_every_data_plane_runs_the_generation() {
    let c = compiled_with(vec![], &[("LLMRoute", "r", 3)]);
    let mut h = History::default();
    h.record(&c);
    let fleet = fleet(&[("dp-a", "v1"), ("dp-b", "v1")]);
    let conds = desired_conditions(&key("LLMRoute", "r", 3), &c, &fleet, &h, &[], "T0");
    assert_eq!(get(&conds, "Accepted").status, "True");
    assert_eq!(get(&conds, "ResolvedRefs").status, "True");
    let p = get(&conds, "Programmed");
    assert_eq!(
        (p.status.as_str(), p.reason.as_str()),
        ("True", "Programmed")
    );
    assert_eq!(p.message, "every connected data plane runs generation 3");
    assert!(conds.iter().all(|c| c.observed_generation == Some(3)));

    // One data plane still on an unknown version: pending, with a count.
    let fleet = self::fleet(&[("dp-a", "v1"), ("dp-b", "v0")]);
    let conds = desired_conditions(&key("LLMRoute", "r", 3), &c, &fleet, &h, &[], "T0");
    let p = get(&conds, "Programmed");
    assert_eq!(
        (p.status.as_str(), p.message.as_str()),
        ("False", "1 of 2 data planes run generation 3")
    );

    // A newer generation is not programmed by an old snapshot.
    let conds = desired_conditions(
        &key("LLMRoute", "r", 4),
        &c,
        &self::fleet(&[("a", "v1")]),
        &h,
        &[],
        "T0",
    );
    assert_eq!(get(&conds, "Programmed").status, "False");

    let conds = desired_conditions(&key("LLMRoute", "r", 3), &c, &Fleet::new(), &h, &[], "T0");
    assert_eq!(get(&conds, "Programmed").reason, "NoDataPlanes");
}

#[test]
fn rejected_resources_say_why() {
    let k = key("LLMRoute", "bad", 1);
    let d = Diagnostic {
        resource: k.clone(),
        condition: "ResolvedRefs",
        reason: "PoolNotFound",
        message: "no pool".into(),
    };
    let c = compiled_with(vec![d], &[]);
    let conds = desired_conditions(&k, &c, &Fleet::new(), &History::default(), &[], "T0");
    let a = get(&conds, "Accepted");
    assert_eq!(
        (a.status.as_str(), a.reason.as_str(), a.message.as_str()),
        ("False", "PoolNotFound", "no pool")
    );
    assert_eq!(get(&conds, "ResolvedRefs").status, "False");
    assert_eq!(get(&conds, "Programmed").reason, "NotAccepted");
}

#[test]
fn transition_times_are_kept_while_status_is_unchanged() {
    let c = compiled_with(vec![], &[("LLMRoute", "r", 1)]);
    let first = desired_conditions(
        &key("LLMRoute", "r", 1),
        &c,
        &Fleet::new(),
        &History::default(),
        &[],
        "T0",
    );
    let second = desired_conditions(
        &key("LLMRoute", "r", 1),
        &c,
        &Fleet::new(),
        &History::default(),
        &first,
        "T1",
    );
    assert!(
        second
            .iter()
            .all(|c| c.last_transition_time.as_deref() == Some("T0"))
    );
    assert!(
        same_conditions(&first, &second),
        "a rewrite with only new timestamps is no change"
    );
    let d = Diagnostic {
        resource: key("LLMRoute", "r", 2),
        condition: "Accepted",
        reason: "Invalid",
        message: "x".into(),
    };
    let c2 = compiled_with(vec![d], &[]);
    let third = desired_conditions(
        &key("LLMRoute", "r", 2),
        &c2,
        &Fleet::new(),
        &History::default(),
        &second,
        "T2",
    );
    assert_eq!(
        get(&third, "Accepted").last_transition_time.as_deref(),
        Some("T2")
    );
    assert!(!same_conditions(&second, &third));
}

#[tokio::test]
async fn status_is_written_with_server_side_apply_on_the_status_subresource() {
    use http_body_util::BodyExt;
    let (service, mut handle) = tower_test::mock::pair::<
        http::Request<kube::client::Body>,
        http::Response<kube::client::Body>,
    >();
    let client = kube::Client::new(service, "default");
    let server = tokio::spawn(async move {
        let (req, send) = handle.next_request().await.expect("a request");
        assert_eq!(req.method(), http::Method::PATCH);
        let uri = req.uri().to_string();
        assert!(
            uri.starts_with("/apis/switchyard.dev/v1alpha1/namespaces/ns/llmroutes/r/status?"),
            "{uri}"
        );
        assert!(
            uri.contains("fieldManager=switchyard-control-plane") && uri.contains("force=true"),
            "{uri}"
        );
        assert_eq!(
            req.headers()["content-type"],
            "application/apply-patch+yaml"
        );
        let body = req.into_body().collect().await.expect("body").to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["kind"], "LLMRoute");
        assert_eq!(v["status"]["conditions"][0]["type"], "Accepted");
        let obj = json!({
            "apiVersion": "switchyard.dev/v1alpha1", "kind": "LLMRoute",
            "metadata": {"name": "r", "namespace": "ns"},
            "spec": {"models": ["m"], "backends": [{"pool": "p"}]},
            "status": v["status"],
        });
        send.send_response(
            http::Response::builder()
                .body(kube::client::Body::from(obj.to_string().into_bytes()))
                .expect("response"),
        );
    });
    let c = compiled_with(vec![], &[("LLMRoute", "r", 1)]);
    let conds = desired_conditions(
        &key("LLMRoute", "r", 1),
        &c,
        &Fleet::new(),
        &History::default(),
        &[],
        "T0",
    );
    let api: Api<LLMRoute> = Api::namespaced(client, "ns");
    apply_status(&api, "r", status_patch::<LLMRoute>(&conds, json!({})))
        .await
        .expect("patched");
    server.await.expect("mock server assertions");
}

#[test]
fn a_data_plane_rejection_shows_as_not_programmed_with_its_message_and_count() {
    let c = compiled_with(vec![], &[("ProviderPool", "p", 2), ("LLMRoute", "r", 1)]);
    let mut h = History::default();
    h.record(&c);
    let mut f = fleet(&[("dp-a", "v1"), ("dp-b", "v1"), ("dp-c", "v1")]);
    for node in ["dp-a", "dp-b"] {
        f.get_mut(node).expect("node").rejected.push(Rejection {
            kind: "ProviderPool".into(),
            namespace: "ns".into(),
            name: "p".into(),
            generation: 2,
            message: "no AWS credentials".into(),
        });
    }
    let conds = desired_conditions(&key("ProviderPool", "p", 2), &c, &f, &h, &[], "T0");
    let p = get(&conds, "Programmed");
    assert_eq!(
        (p.status.as_str(), p.reason.as_str(), p.message.as_str()),
        (
            "False",
            "Rejected",
            "rejected by 2 of 3 data planes: no AWS credentials"
        )
    );
    assert_eq!(
        get(&conds, "Accepted").status,
        "True",
        "the compile took it"
    );
    // Another resource of the same snapshot is unaffected.
    let conds = desired_conditions(&key("LLMRoute", "r", 1), &c, &f, &h, &[], "T0");
    assert_eq!(get(&conds, "Programmed").status, "True");
    // A rejection of an older generation does not stick to the new one.
    let conds = desired_conditions(&key("ProviderPool", "p", 3), &c, &f, &h, &[], "T0");
    assert_eq!(get(&conds, "Programmed").reason, "Pending");
}

#[test]
fn a_guardrail_is_programmed_once_the_fleet_runs_it() {
    let c = compiled_with(vec![], &[("Guardrail", "g", 1)]);
    let mut h = History::default();
    h.record(&c);
    let conds = desired_conditions(
        &key("Guardrail", "g", 1),
        &c,
        &fleet(&[("dp-a", "v1")]),
        &h,
        &[],
        "T0",
    );
    assert_eq!(get(&conds, "Accepted").status, "True");
    let p = get(&conds, "Programmed");
    assert_eq!(p.status.as_str(), "True", "{p:?}");
}

/// Writes are fenced on leadership: a replica that does not lead (or whose lease ran out)
/// sends nothing to the API server; the leader sends exactly one status patch.
#[tokio::test]
async fn only_a_replica_holding_the_lease_writes() {
    use crate::kube::context::{Context, no_extra};
    use crate::kube::leader::Leadership;
    use tokio::sync::watch;

    let c = compiled_with(vec![], &[("LLMRoute", "r", 1)]);
    let mut route = LLMRoute::new(
        "r",
        switchyard_crds::LLMRouteSpec {
            models: vec!["m".into()],
            backends: Vec::new(),
            load_balancing: None,
            retries: None,
            fallbacks: Vec::new(),
            key_selector: None,
            key_namespaces: None,
            limits: None,
            audit: None,
            cache: None,
        },
    );
    route.metadata.namespace = Some("ns".into());
    route.metadata.generation = Some(1);
    for leads in [false, true] {
        let (service, mut handle) = tower_test::mock::pair::<
            http::Request<kube::client::Body>,
            http::Response<kube::client::Body>,
        >();
        let client = kube::Client::new(service, "default");
        let (stores, _watches) = crate::kube::watches(&client, None);
        let (_c_tx, compiled) = watch::channel(Some(std::sync::Arc::new(c.clone())));
        let (_f_tx, fleet) = watch::channel(std::sync::Arc::new(Fleet::new()));
        let ctx = Context::new(
            client,
            stores,
            Leadership::fixed(leads),
            std::sync::Arc::default(),
            compiled,
            fleet,
            "test",
        );
        let api = tokio::spawn(async move {
            let next =
                tokio::time::timeout(std::time::Duration::from_millis(300), handle.next_request())
                    .await;
            let Ok(Some((req, send))) = next else {
                return None;
            };
            let path = req.uri().path().to_owned();
            send.send_response(
                http::Response::builder()
                    .body(kube::client::Body::from(
                        json!({"apiVersion": "switchyard.dev/v1alpha1", "kind": "LLMRoute",
                            "metadata": {"name": "r", "namespace": "ns"},
                            "spec": {"models": ["m"], "backends": []}})
                        .to_string()
                        .into_bytes(),
                    ))
                    .expect("response"),
            );
            Some(path)
        });
        reconcile(&route, &ctx, no_extra())
            .await
            .expect("reconciled");
        let sent = api.await.expect("api task");
        if leads {
            assert_eq!(
                sent.as_deref(),
                Some("/apis/switchyard.dev/v1alpha1/namespaces/ns/llmroutes/r/status")
            );
        } else {
            assert_eq!(sent, None, "a follower wrote status");
        }
    }
}
