use super::*;
use switchyard_crds::{Diagnostic, World};

fn compiled_with(diags: Vec<Diagnostic>, resources: &[(&'static str, &str, i64)]) -> Compiled {
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
    let fleet = BTreeMap::from([
        ("dp-a".to_owned(), "v1".to_owned()),
        ("dp-b".to_owned(), "v1".to_owned()),
    ]);
    let conds = desired_conditions(&key("LLMRoute", "r", 3), &c, &fleet, &h, &[], "T0");
    assert_eq!(get(&conds, "Accepted").status, "True");
    assert_eq!(get(&conds, "ResolvedRefs").status, "True");
    let p = get(&conds, "Programmed");
    assert_eq!(
        (p.status.as_str(), p.reason.as_str()),
        ("True", "Programmed")
    );
    assert_eq!(p.message, "2 of 2 data planes run generation 3");
    assert!(conds.iter().all(|c| c.observed_generation == Some(3)));

    // One data plane still on an unknown version: pending, with a count.
    let fleet = BTreeMap::from([
        ("dp-a".to_owned(), "v1".to_owned()),
        ("dp-b".to_owned(), "v0".to_owned()),
    ]);
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
        &BTreeMap::from([("a".into(), "v1".into())]),
        &h,
        &[],
        "T0",
    );
    assert_eq!(get(&conds, "Programmed").status, "False");

    let conds = desired_conditions(
        &key("LLMRoute", "r", 3),
        &c,
        &BTreeMap::new(),
        &h,
        &[],
        "T0",
    );
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
    let conds = desired_conditions(&k, &c, &BTreeMap::new(), &History::default(), &[], "T0");
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
        &BTreeMap::new(),
        &History::default(),
        &[],
        "T0",
    );
    let second = desired_conditions(
        &key("LLMRoute", "r", 1),
        &c,
        &BTreeMap::new(),
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
        &BTreeMap::new(),
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
        &BTreeMap::new(),
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
fn key_status_carries_prefix_and_spend_and_keeps_spend_when_redis_is_away() {
    let mut vk = VirtualKey::new("k", switchyard_crds::VirtualKeySpec::default());
    vk.metadata.namespace = Some("ns".into());
    let spend = |amount: &str| SpendStatus {
        amount: amount.into(),
        period: "2026-11".into(),
        exceeded: false,
    };
    let read = HashMap::from([("ns/k".to_owned(), spend("1.500000"))]);
    let (patch, same) = key_extra(&vk, Some("sk-sy-abc…".into()), Some(&read));
    assert!(!same, "nothing in status yet");
    assert_eq!(patch["keyPrefix"], "sk-sy-abc…");
    assert_eq!(patch["spend"]["amount"], "1.500000");
    vk.status = Some(switchyard_crds::VirtualKeyStatus {
        key_prefix: Some("sk-sy-abc…".into()),
        spend: Some(spend("1.500000")),
        ..Default::default()
    });
    assert!(key_extra(&vk, Some("sk-sy-abc…".into()), Some(&read)).1);
    // Redis unreadable: the spend already in status is applied again, unchanged.
    let (patch, same) = key_extra(&vk, Some("sk-sy-abc…".into()), None);
    assert!(same);
    assert_eq!(patch["spend"]["amount"], "1.500000");
    // More spend: a write.
    let more = HashMap::from([("ns/k".to_owned(), spend("2.000000"))]);
    assert!(!key_extra(&vk, Some("sk-sy-abc…".into()), Some(&more)).1);
    // Budget removed: the spend leaves status.
    let (patch, same) = key_extra(&vk, Some("sk-sy-abc…".into()), Some(&HashMap::new()));
    assert!(!same);
    assert!(patch.get("spend").is_none());
}
